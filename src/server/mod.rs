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
//! - [`auth`]: API keys and roles, checked on both doors.
//! - [`tls`]: TLS for both doors from PEM files.
//! - [`status`]: the one mapping from the layers' errors to gRPC codes
//!   (and HTTP statuses).
//!
//! [`serve`] runs both doors over one node until Ctrl-C or SIGTERM. Before
//! anything is opened, [`Security::prepare`] loads the keys and the TLS
//! files and refuses a door on a non-loopback address that lacks keys or
//! TLS, unless the configuration says `insecure`.

#![allow(clippy::print_stdout)]

pub mod auth;
pub mod demo;
pub mod grpc;
pub mod http;
pub mod ingest_stream;
pub mod status;
pub mod tls;

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::ingest::IngestSink;
use crate::node::{Node, NodeConfig};

/// Opens the node of `config` and serves it until Ctrl-C or SIGTERM. The
/// keys, TLS files and addresses are checked before the node is opened.
pub async fn serve(config: NodeConfig) -> Result<()> {
    let security = Security::prepare(&config).await?;
    let node = Node::open(config).await.context("opening the node")?;
    serve_prepared(node, security).await
}

/// What protects the doors: the API keys and the TLS identity, checked.
#[derive(Debug)]
pub struct Security {
    /// The API keys (none: gRPC is open).
    pub keys: auth::ApiKeys,
    /// The certificate and key both doors serve TLS with, if configured.
    pub tls: Option<tls::TlsIdentity>,
}

/// Why a node will not serve with its configuration's security settings.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// The API keys are unusable.
    #[error(transparent)]
    Keys(#[from] auth::AuthError),
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The files of mutual TLS between nodes are unusable.
    #[error(transparent)]
    PeerTls(#[from] crate::replication::transport::PeerTlsError),
    /// A door on a non-loopback address without keys or TLS.
    #[error("refusing to serve {door} on {addr}, which is not a loopback address, with {missing}: anyone who can reach it could {risk}. Configure {fix}, or pass --insecure (config `insecure = true`) to serve it this way anyway")]
    Exposed {
        /// `gRPC` or `HTTP`.
        door: &'static str,
        /// The configured address.
        addr: String,
        /// What is missing (`no API keys and no TLS`, ...).
        missing: String,
        /// What an outsider could do.
        risk: &'static str,
        /// What to configure.
        fix: String,
    },
}

impl Security {
    /// Loads and checks the keys and TLS files of `config`, and refuses a
    /// door on a non-loopback address that lacks API keys (for HTTP: API
    /// keys or write keys) or TLS, unless `config.insecure`. An address
    /// that does not resolve is left for the bind to report.
    pub async fn prepare(config: &NodeConfig) -> Result<Security, SecurityError> {
        let keys = auth::ApiKeys::new(&config.api_keys)?;
        let tls = tls::TlsIdentity::from_config(config.tls_cert.as_deref(), config.tls_key.as_deref())?;
        let peer_tls = config.peer_tls()?;
        if !config.insecure {
            let http_keyed = !keys.is_empty() || !config.write_keys.is_empty();
            for (door, addr, keyed, keys_name) in [
                ("gRPC", &config.grpc_addr, !keys.is_empty(), "API keys"),
                ("HTTP", &config.http_addr, http_keyed, "API keys or write keys"),
            ] {
                if keyed && tls.is_some() || is_loopback(addr).await {
                    continue;
                }
                let missing = match (keyed, tls.is_some()) {
                    (false, false) => format!("no {keys_name} and no TLS"),
                    (false, true) => format!("no {keys_name}"),
                    _ => "no TLS".to_string(),
                };
                let risk = match (keyed, door) {
                    (false, "gRPC") => "read and change every profile, the schema and the saved segments",
                    (false, _) => "write messages into every profile",
                    _ => "read the keys and the data on the wire",
                };
                let mut fix = Vec::new();
                if !keyed {
                    fix.push("`api_keys` (or COHORT_API_KEYS)");
                }
                if tls.is_none() {
                    fix.push("`tls_cert` and `tls_key` (or --tls-cert and --tls-key)");
                }
                return Err(SecurityError::Exposed {
                    door,
                    addr: addr.clone(),
                    missing,
                    risk,
                    fix: fix.join(" and "),
                });
            }
            if !config.peers.is_empty() && peer_tls.is_none() && !is_loopback(&config.raft_addr).await {
                return Err(SecurityError::Exposed {
                    door: "Raft",
                    addr: config.raft_addr.clone(),
                    missing: "no mutual TLS between nodes".into(),
                    risk: "send raft messages, which raft-rs decodes with rust-protobuf 2 (RUSTSEC-2024-0437), and take over the groups",
                    fix: "`peer_tls_cert`, `peer_tls_key` and `peer_tls_ca` (or --peer-tls-cert, --peer-tls-key and --peer-tls-ca)".into(),
                });
            }
        }
        Ok(Security { keys, tls })
    }
}

/// Whether every address `addr` resolves to is a loopback address
/// (127.0.0.0/8, ::1; `localhost` resolves to them). An address that does
/// not resolve counts as loopback here: binding it fails with its own
/// error.
async fn is_loopback(addr: &str) -> bool {
    match tokio::net::lookup_host(addr).await {
        Ok(resolved) => {
            let resolved: Vec<_> = resolved.collect();
            resolved.iter().all(|a| a.ip().is_loopback())
        }
        Err(_) => true,
    }
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

/// Serves an open node on its configured addresses until Ctrl-C/SIGTERM,
/// after [`Security::prepare`] has checked its settings.
pub async fn serve_node(node: Arc<Node>) -> Result<()> {
    let security = Security::prepare(&node.config).await?;
    serve_prepared(node, security).await
}

/// [`serve_node`] with the security settings already checked.
async fn serve_prepared(node: Arc<Node>, security: Security) -> Result<()> {
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
        "cohort {}: node {} serving gRPC on {} and HTTP on {}{} (data in {}; opened in {:.2} s, {:.2} s of it loading snapshots, with {} profiles)",
        env!("CARGO_PKG_VERSION"),
        node.config.node_id,
        grpc_listener.local_addr().map(|a| a.to_string()).unwrap_or(grpc_addr),
        http_listener.local_addr().map(|a| a.to_string()).unwrap_or(http_addr),
        match (security.tls.is_some(), security.keys.is_empty()) {
            (true, false) => ", over TLS, with API keys",
            (true, true) => ", over TLS",
            (false, false) => ", with API keys",
            (false, true) => "",
        },
        node.config.data_dir.display(),
        node.open_secs,
        node.loaded_secs,
        profiles
    );
    let (stop_tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let router = grpc::router(node.clone(), security.keys.clone(), security.tls.as_ref())
        .map_err(anyhow::Error::msg)?;
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
        api_keys: security.keys.clone(),
        max_message_bytes: node.config.max_message_bytes,
        max_batch_bytes: node.config.max_batch_bytes,
        header_timeout_ms: node.config.http_header_timeout_ms,
        idle_timeout_ms: node.config.http_idle_timeout_ms,
    };
    let mut http_stop = stop_tx.subscribe();
    let sink = node.clone() as Arc<dyn IngestSink>;
    let http_shutdown = async move {
        let _ = http_stop.recv().await;
    };
    let http = match &security.tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(http_listener, tls.http())
                .context("cannot listen for HTTP over TLS")?;
            tokio::spawn(http::serve(listener, sink, http_config, http_shutdown))
        }
        None => tokio::spawn(http::serve(http_listener, sink, http_config, http_shutdown)),
    };
    shutdown_signal().await;
    tracing::info!("shutting down");
    // A cluster node first hands its leaderships over, doors still open
    // (writes that reach it go on to the new leader), so that the others
    // need not wait out an election timeout.
    let still_led = node.hand_off_leadership(std::time::Duration::from_secs(3)).await;
    if still_led > 0 {
        tracing::warn!(
            groups = still_led,
            "could not hand every leadership over within 3 s; the others elect"
        );
    }
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = grpc.await;
        let _ = http.await;
    })
    .await;
    let started = std::time::Instant::now();
    let checkpoint = node.shutdown();
    for failed in &checkpoint.failed {
        tracing::warn!(
            group = failed.group(),
            error = %failed,
            "a snapshot at the stop failed; the log still holds it, and the next start replays it"
        );
    }
    tracing::info!(
        "stopped ({} groups snapshotted in {:.2} s, {} with a short log tail left to replay)",
        checkpoint.written,
        started.elapsed().as_secs_f64(),
        checkpoint.left_to_replay
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{ApiKeyConfig, Role};

    fn config(grpc: &str, http: &str) -> NodeConfig {
        NodeConfig { grpc_addr: grpc.into(), http_addr: http.into(), ..NodeConfig::default() }
    }

    fn refusal(config: &NodeConfig) -> String {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(Security::prepare(config)).map(|_| String::new()).unwrap_or_else(|e| e.to_string())
    }

    #[test]
    fn loopback_addresses_need_neither_keys_nor_tls() {
        for addr in ["127.0.0.1:0", "127.8.9.10:0", "[::1]:0", "localhost:0"] {
            assert_eq!(refusal(&config(addr, addr)), "", "{addr}");
        }
    }

    #[test]
    fn other_addresses_need_keys_and_tls_unless_insecure() {
        let open = config("0.0.0.0:7070", "127.0.0.1:0");
        let err = refusal(&open);
        assert!(err.contains("gRPC on 0.0.0.0:7070") && err.contains("no API keys and no TLS"), "{err}");
        assert!(err.contains("--insecure"), "{err}");
        assert_eq!(refusal(&NodeConfig { insecure: true, ..open.clone() }), "");
        let keyed = NodeConfig {
            api_keys: vec![ApiKeyConfig { key: "k".into(), role: Role::Admin }],
            ..open.clone()
        };
        let err = refusal(&keyed);
        assert!(
            err.contains("with no TLS") && err.contains("`tls_cert`") && !err.contains("`api_keys`"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        let tls = NodeConfig { tls_cert: Some(cert), tls_key: Some(key), ..open.clone() };
        let err = refusal(&tls);
        assert!(err.contains("with no API keys:") && err.contains("`api_keys`"), "{err}");
        assert_eq!(refusal(&NodeConfig { api_keys: keyed.api_keys.clone(), ..tls.clone() }), "");

        // HTTP counts write keys as keys.
        let http = NodeConfig { http_addr: "0.0.0.0:7071".into(), grpc_addr: "127.0.0.1:0".into(), ..tls };
        let err = refusal(&http);
        assert!(err.contains("HTTP on 0.0.0.0:7071") && err.contains("no API keys or write keys"), "{err}");
        assert_eq!(refusal(&NodeConfig { write_keys: vec!["wk".into()], ..http }), "");
    }

    #[test]
    fn a_raft_address_off_loopback_needs_peer_tls_unless_insecure() {
        let peers = vec![crate::node::PeerConfig {
            id: 1,
            raft_addr: "0.0.0.0:7170".into(),
            grpc_addr: "127.0.0.1:7070".into(),
        }];
        let cluster =
            NodeConfig { raft_addr: "0.0.0.0:7170".into(), peers, ..config("127.0.0.1:0", "127.0.0.1:0") };
        let err = refusal(&cluster);
        assert!(err.contains("Raft on 0.0.0.0:7170") && err.contains("`peer_tls_ca`"), "{err}");
        assert_eq!(refusal(&NodeConfig { insecure: true, ..cluster.clone() }), "");

        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, generated.cert.pem()).unwrap();
        std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
        let half = NodeConfig {
            peer_tls_cert: Some(cert.clone()),
            peer_tls_key: Some(key.clone()),
            ..cluster.clone()
        };
        let err = refusal(&half);
        assert!(err.contains("peer_tls_ca is not set"), "{err}");
        let swapped =
            NodeConfig { peer_tls_ca: Some(cert.clone()), peer_tls_key: Some(cert.clone()), ..half.clone() };
        let err = refusal(&swapped);
        assert!(
            err.contains("peer_tls_key") && err.contains("c.pem") && err.contains("private key"),
            "{err}"
        );
        assert_eq!(refusal(&NodeConfig { peer_tls_ca: Some(cert), ..half }), "");
    }
}
