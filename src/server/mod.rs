//! The server layer: the doors through which clients reach a node. Each
//! door turns its wire format into the ingestion layer's messages and hands
//! them to an [`IngestSink`](crate::ingest::IngestSink), or asks the node's
//! planner.
//!
//! - [`grpc`]: `cohort.v1` (Ingest, Query, Segments, Admin), health and
//!   reflection.
//! - [`http`]: the Segment-compatible HTTP endpoint.
//! - [`ingest_stream`]: the gRPC `IngestStream`, read ahead and joined.
//! - [`demo`]: `cohort demo`, a node started on generated data.
//!
//! [`serve`] runs both doors over one node until Ctrl-C or SIGTERM.

#![allow(clippy::print_stdout)]

pub mod demo;
pub mod grpc;
pub mod http;
pub mod ingest_stream;

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::ingest::IngestSink;
use crate::node::{Node, NodeConfig};

/// Opens the node of `config` and serves it until Ctrl-C or SIGTERM.
pub async fn serve(config: NodeConfig) -> Result<()> {
    let node = Node::open(config).await.map_err(anyhow::Error::msg).context("opening the node")?;
    serve_node(node).await
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// Serves an open node on its configured addresses until Ctrl-C/SIGTERM.
pub async fn serve_node(node: Arc<Node>) -> Result<()> {
    let grpc_addr = node.config.grpc_addr.clone();
    let http_addr = node.config.http_addr.clone();
    let grpc_listener = tokio::net::TcpListener::bind(&grpc_addr)
        .await
        .with_context(|| format!("cannot listen for gRPC on {grpc_addr}"))?;
    let http_listener = tokio::net::TcpListener::bind(&http_addr)
        .await
        .with_context(|| format!("cannot listen for HTTP on {http_addr}"))?;
    let profiles: u64 = node.shards.iter().map(|s| s.read_state().shard.len()).sum();
    println!(
        "cohort {}: node {} serving gRPC on {} and HTTP on {} (data in {}; opened in {:.2} s, {:.2} s of it loading snapshots, with {} profiles)",
        env!("CARGO_PKG_VERSION"),
        node.config.node_id,
        grpc_listener.local_addr().map(|a| a.to_string()).unwrap_or(grpc_addr),
        http_listener.local_addr().map(|a| a.to_string()).unwrap_or(http_addr),
        node.config.data_dir.display(),
        node.open_secs,
        node.loaded_secs,
        profiles
    );
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let router = grpc::router(node.clone()).map_err(anyhow::Error::msg)?;
    let mut grpc_stop = stop_tx.subscribe();
    let grpc = tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(
                // Without TCP_NODELAY a small reply can wait ~40 ms for
                // delayed ACKs (Nagle).
                tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
                async move {
                    let _ = grpc_stop.recv().await;
                },
            )
            .await
    });
    let http_config = http::HttpConfig {
        write_keys: node.config.write_keys.clone(),
        max_message_bytes: node.config.max_message_bytes,
        max_batch_bytes: node.config.max_batch_bytes,
        header_timeout_ms: node.config.http_header_timeout_ms,
        idle_timeout_ms: node.config.http_idle_timeout_ms,
    };
    let mut http_stop = stop_tx.subscribe();
    let sink = node.clone() as Arc<dyn IngestSink>;
    let http = tokio::spawn(http::serve(http_listener, sink, http_config, async move {
        let _ = http_stop.recv().await;
    }));
    shutdown_signal().await;
    eprintln!("cohort: shutting down");
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = grpc.await;
        let _ = http.await;
    })
    .await;
    let started = std::time::Instant::now();
    let checkpoint = node.shutdown();
    for failed in &checkpoint.failed {
        eprintln!("warning: {failed}; the log still holds it, and the next start replays it");
    }
    eprintln!(
        "cohort: stopped ({} groups snapshotted in {:.2} s, {} with a short log tail left to replay)",
        checkpoint.written,
        started.elapsed().as_secs_f64(),
        checkpoint.left_to_replay
    );
    Ok(())
}
