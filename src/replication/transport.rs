//! Raft messages between nodes over gRPC (`cohort.internal.v1.Raft`,
//! `proto/cohort/internal/v1/raft.proto`).
//!
//! [`GrpcTransport`] is the driver's [`Transport`] on a node with peers.
//! The driver hands it messages on its own thread; each goes into the
//! bounded queue of its destination node and never blocks the driver: a
//! full queue drops the message (Raft sends it again) and reports the peer
//! unreachable, so raft-rs stops streaming entries to it until it answers.
//! One task per peer connects, with backoff from 50 ms to 5 s, and keeps a
//! client stream open (`Send`), writing batches of up to
//! [`MAX_BATCH_BYTES`] of messages for all groups. A snapshot goes on its
//! own call (`Snapshot`), in chunks of [`SNAPSHOT_CHUNK_BYTES`], and its
//! outcome goes back to the driver (`report_snapshot`).
//!
//! [`RaftService`] is the receiving end: it decodes each message (raft-rs's
//! own protobuf encoding), checks that it is for this node, and steps it
//! into the driver.
//!
//! [`PeerTls`] is mutual TLS between nodes: with `peer_tls_cert`,
//! `peer_tls_key` and `peer_tls_ca` set, the service takes only
//! connections whose client certificate the cluster's CA signed, and every
//! node connects with its own certificate, checking the peer's against the
//! same CA. raft-rs 0.7 decodes with rust-protobuf 2 (RUSTSEC-2024-0437),
//! so without it the service must listen only where nothing but peers can
//! reach it (a non-loopback `raft_addr` is refused without `--insecure`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use super::driver::{Driver, SnapshotReport, Traffic, Transport};
use super::snapshot_file::{self, SnapshotFile};
use crate::proto::internal as pb;

/// Messages waiting for one peer; more are dropped.
pub const PEER_QUEUE: usize = 4096;
/// Most bytes of messages in one batch on the stream.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Bytes of snapshot data in one chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Largest gRPC message either end accepts: a batch, or a chunk with the
/// snapshot's message.
pub const MAX_GRPC_MESSAGE: usize = MAX_BATCH_BYTES + (1 << 20);
/// First wait before reconnecting to a peer; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait before reconnecting.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an HTTP/2 ping goes to a peer on an open connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// Least time between two warnings that a peer cannot be reached.
const WARN_INTERVAL: Duration = Duration::from_secs(60);

/// Where the transport reports to: the driver, once it has started (the
/// transport exists before it).
pub type DriverSlot = Arc<OnceLock<Weak<Driver>>>;

fn driver_of(slot: &DriverSlot) -> Option<Arc<Driver>> {
    slot.get().and_then(Weak::upgrade)
}

/// Why the files of mutual TLS between nodes cannot be used.
#[derive(Debug, Error)]
pub enum PeerTlsError {
    /// Some of the three settings are given, not all.
    #[error("mutual TLS between nodes needs peer_tls_cert, peer_tls_key and peer_tls_ca; {missing} is not set (config keys, or --peer-tls-cert, --peer-tls-key and --peer-tls-ca)")]
    Incomplete {
        /// The first setting missing.
        missing: &'static str,
    },
    /// A file cannot be read.
    #[error("cannot read {setting} {}: {source}", path.display())]
    Read {
        /// The setting (`peer_tls_cert`, ...).
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM certificate or key.
    #[error("{setting} {} holds no usable PEM {what}: {reason}", path.display())]
    Pem {
        /// The setting.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// `certificate` or `private key`.
        what: &'static str,
        /// What the PEM reader said.
        reason: String,
    },
}

/// Mutual TLS between nodes: this node's certificate and key, and the CA
/// that signs every node's certificate, as PEM.
#[derive(Clone)]
pub struct PeerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls(..)")
    }
}

impl PeerTls {
    /// Loads the three configured files: `None` when none is set, an error
    /// when only some are or when one holds no PEM certificate (or key).
    pub fn from_config(
        cert: Option<&Path>,
        key: Option<&Path>,
        ca: Option<&Path>,
    ) -> Result<Option<PeerTls>, PeerTlsError> {
        let (cert, key, ca) = match (cert, key, ca) {
            (None, None, None) => return Ok(None),
            (Some(cert), Some(key), Some(ca)) => (cert, key, ca),
            (None, ..) => return Err(PeerTlsError::Incomplete { missing: "peer_tls_cert" }),
            (_, None, _) => return Err(PeerTlsError::Incomplete { missing: "peer_tls_key" }),
            (.., None) => return Err(PeerTlsError::Incomplete { missing: "peer_tls_ca" }),
        };
        let read = |setting, path: &Path| {
            std::fs::read(path).map_err(|source| PeerTlsError::Read {
                setting,
                path: path.to_path_buf(),
                source,
            })
        };
        let pem = |setting, path: &Path, what, reason: String| PeerTlsError::Pem {
            setting,
            path: path.to_path_buf(),
            what,
            reason,
        };
        let tls = PeerTls {
            cert_pem: read("peer_tls_cert", cert)?,
            key_pem: read("peer_tls_key", key)?,
            ca_pem: read("peer_tls_ca", ca)?,
        };
        for (setting, path, bytes) in
            [("peer_tls_cert", cert, &tls.cert_pem), ("peer_tls_ca", ca, &tls.ca_pem)]
        {
            let certs = CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem(setting, path, "certificate", e.to_string()))?;
            if certs.is_empty() {
                return Err(pem(setting, path, "certificate", "no `BEGIN CERTIFICATE` section".into()));
            }
        }
        PrivateKeyDer::from_pem_slice(&tls.key_pem)
            .map_err(|e| pem("peer_tls_key", key, "private key", e.to_string()))?;
        Ok(Some(tls))
    }

    /// The Raft service's TLS: this node's certificate, and a client
    /// certificate signed by the CA required of every connection.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    /// A connection to a peer's Raft service: the peer's certificate
    /// checked against the CA (for the address's host), this node's
    /// certificate offered.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// One message for a peer, encoded.
struct Outbound {
    group: u64,
    bytes: Vec<u8>,
}

/// The Raft transport of a node with peers.
pub struct GrpcTransport {
    node_id: u64,
    /// Per peer: its queue, address and connection flag. A node that
    /// joins is added while the transport runs ([`Transport::set_peer`]).
    peers: parking_lot::RwLock<HashMap<u64, Peer>>,
    driver: DriverSlot,
    runtime: tokio::runtime::Handle,
    tls: Option<PeerTls>,
    counters: Arc<Counters>,
}

/// One peer's end of the transport.
struct Peer {
    queue: mpsc::Sender<Outbound>,
    addr: String,
    /// Whether its stream is connected.
    up: Arc<AtomicBool>,
}

/// [`Traffic`], as the sending tasks count it.
#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
    snapshot_bytes: AtomicU64,
}

impl GrpcTransport {
    /// A transport from node `node_id` to `peers` (Raft id → `host:port` of
    /// their Raft service), with one sending task each on `runtime`, over
    /// mutual TLS when `tls` is set. Give the driver to `driver` once it
    /// has started.
    pub fn new(
        node_id: u64,
        peers: HashMap<u64, String>,
        driver: DriverSlot,
        runtime: tokio::runtime::Handle,
        tls: Option<PeerTls>,
    ) -> GrpcTransport {
        let transport = GrpcTransport {
            node_id,
            peers: parking_lot::RwLock::default(),
            driver,
            runtime,
            tls,
            counters: Arc::new(Counters::default()),
        };
        for (peer, addr) in peers {
            transport.set_peer(peer, &addr);
        }
        transport
    }

    /// A peer's queue, address and flag, with its sending task started.
    fn start_peer(&self, peer: u64, addr: &str) -> Peer {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let up = Arc::new(AtomicBool::new(false));
        let sender = PeerSender {
            from: self.node_id,
            peer,
            addr: addr.to_string(),
            tls: self.tls.clone(),
            counters: self.counters.clone(),
            up: up.clone(),
        };
        self.runtime.spawn(run_peer(sender, rx, self.driver.clone()));
        Peer { queue: tx, addr: addr.to_string(), up }
    }
}

impl Transport for GrpcTransport {
    fn reachable(&self, node: u64) -> bool {
        node == self.node_id || self.peers.read().get(&node).is_some_and(|p| p.up.load(Ordering::Relaxed))
    }

    fn set_peer(&self, node: u64, raft_addr: &str) {
        if node == self.node_id {
            return;
        }
        if self.peers.read().get(&node).is_some_and(|p| p.addr == raft_addr) {
            return;
        }
        // A new address replaces the peer's queue; its old sending task
        // ends once the queue it reads is dropped.
        let peer = self.start_peer(node, raft_addr);
        self.peers.write().insert(node, peer);
    }

    fn traffic(&self) -> Traffic {
        let c = &self.counters;
        Traffic {
            messages: c.messages.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            snapshot_bytes: c.snapshot_bytes.load(Ordering::Relaxed),
        }
    }

    fn send(&self, group: u64, messages: Vec<Message>) {
        for mut m in messages {
            let to = m.to;
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let Some(addr) = self.peers.read().get(&to).map(|p| p.addr.clone()) else {
                    tracing::warn!(group, to, "snapshot for an unknown node dropped");
                    continue;
                };
                let data = m.mut_snapshot().take_data();
                let (from, driver, tls) = (self.node_id, self.driver.clone(), self.tls.clone());
                let counters = self.counters.clone();
                self.runtime.spawn(async move {
                    let sent = send_snapshot(&addr, tls.as_ref(), from, group, &m, &data).await;
                    let report = match sent {
                        Ok(len) => {
                            counters.snapshot_bytes.fetch_add(len, Ordering::Relaxed);
                            SnapshotReport::Finished
                        }
                        Err(e) => {
                            tracing::warn!(group, to, error = %e, "snapshot not delivered; raft-rs sends another");
                            SnapshotReport::Failed
                        }
                    };
                    if let Some(d) = driver_of(&driver) {
                        if report == SnapshotReport::Failed {
                            d.report_unreachable(group, to);
                        }
                        d.report_snapshot(group, to, report);
                    }
                });
                continue;
            }
            let peers = self.peers.read();
            let Some(queue) = peers.get(&to).map(|p| &p.queue) else {
                tracing::warn!(group, to, "raft message for a node this one does not know dropped");
                continue;
            };
            let bytes = match m.write_to_bytes() {
                Ok(bytes) => bytes,
                Err(e) => {
                    tracing::error!(group, to, error = %e, "cannot encode a raft message");
                    continue;
                }
            };
            if queue.try_send(Outbound { group, bytes }).is_err() {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                if let Some(d) = driver_of(&self.driver) {
                    d.report_unreachable(group, to);
                }
            }
        }
    }
}

/// Connects to the Raft service at `addr` (over mutual TLS when `tls` is
/// set), waiting no longer than a second.
pub async fn connect(
    addr: &str,
    tls: Option<&PeerTls>,
) -> Result<pb::raft_client::RaftClient<tonic::transport::Channel>, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        // A peer that stops answering (paused, cut off by a partition)
        // is found within about 3 s and the connection dropped, rather
        // than left to TCP's retransmission backoff.
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.client()).map_err(|e| format!("{addr}: TLS: {e}"))?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{addr}: {}", error_chain(&e)))?;
    Ok(pb::raft_client::RaftClient::new(channel)
        .max_decoding_message_size(MAX_GRPC_MESSAGE)
        .max_encoding_message_size(MAX_GRPC_MESSAGE))
}

/// An error and its sources, as `outer: inner: innermost` (tonic's own
/// text says only "transport error").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Sends `peer`'s queue over one client stream at a time, reconnecting
/// with backoff; while it is not connected, queued messages are dropped and
/// their groups reported unreachable.
/// One peer as its sending task sees it.
struct PeerSender {
    from: u64,
    peer: u64,
    addr: String,
    tls: Option<PeerTls>,
    counters: Arc<Counters>,
    /// Set while the peer's stream is open.
    up: Arc<AtomicBool>,
}

async fn run_peer(sender: PeerSender, mut queue: mpsc::Receiver<Outbound>, driver: DriverSlot) {
    let PeerSender { from, peer, addr, tls, counters, up } = sender;
    let mut backoff = FIRST_BACKOFF;
    // A peer that cannot be reached (a node down or still starting, a
    // refused certificate) is said at `warn` at most once a minute, and
    // at `debug` in between.
    let mut warned: Option<std::time::Instant> = None;
    let mut warn_now = move || {
        let now = std::time::Instant::now();
        let due = warned.is_none_or(|at| now.duration_since(at) >= WARN_INTERVAL);
        if due {
            warned = Some(now);
        }
        due
    };
    loop {
        let mut client = match connect(&addr, tls.as_ref()).await {
            Ok(client) => client,
            Err(e) => {
                if warn_now() {
                    tracing::warn!(peer, addr = %addr, error = %e, "cannot reach a peer; retrying with backoff");
                } else {
                    tracing::debug!(peer, error = %e, "cannot reach a peer; retrying");
                }
                if !drop_queued(&mut queue, peer, &driver, &counters) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let (stream_tx, stream_rx) = mpsc::channel::<pb::RaftBatch>(16);
        let mut call = tokio::spawn(async move { client.send(ReceiverStream::new(stream_rx)).await });
        up.store(true, Ordering::Relaxed);
        // Until the call ends: noticed when it does (the peer closed it, or
        // its keepalive went unanswered), not only at the next send.
        let ended = loop {
            let first = tokio::select! {
                next = queue.recv() => match next {
                    Some(first) => first,
                    None => return,
                },
                ended = &mut call => break Some(ended),
            };
            let mut batch = pb::RaftBatch { from_node: from, messages: Vec::new() };
            let mut bytes = first.bytes.len();
            batch.messages.push(pb::GroupMessage { group: first.group, message: first.bytes });
            while bytes < MAX_BATCH_BYTES {
                let Ok(next) = queue.try_recv() else { break };
                bytes += next.bytes.len();
                batch.messages.push(pb::GroupMessage { group: next.group, message: next.bytes });
            }
            let groups: HashSet<u64> = batch.messages.iter().map(|m| m.group).collect();
            let count = batch.messages.len() as u64;
            if stream_tx.send(batch).await.is_err() {
                // The call ended: the peer went away or refused the stream.
                counters.dropped.fetch_add(count, Ordering::Relaxed);
                report_unreachable(&driver, peer, groups);
                break None;
            }
            counters.messages.fetch_add(count, Ordering::Relaxed);
            counters.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
            backoff = FIRST_BACKOFF;
        };
        up.store(false, Ordering::Relaxed);
        let ended = match ended {
            Some(ended) => ended,
            None => call.await,
        };
        if let Ok(Err(status)) = ended {
            if warn_now() {
                tracing::warn!(peer, addr = %addr, %status, "raft stream to a peer ended; reconnecting");
            } else {
                tracing::debug!(peer, %status, "raft stream to a peer ended");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Drops what is queued for an unreachable peer and reports its groups;
/// false once the transport is gone.
fn drop_queued(
    queue: &mut mpsc::Receiver<Outbound>,
    peer: u64,
    driver: &DriverSlot,
    counters: &Counters,
) -> bool {
    let mut groups = HashSet::new();
    loop {
        match queue.try_recv() {
            Ok(m) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                groups.insert(m.group);
            }
            Err(mpsc::error::TryRecvError::Empty) => break,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
    report_unreachable(driver, peer, groups);
    true
}

fn report_unreachable(driver: &DriverSlot, peer: u64, groups: HashSet<u64>) {
    if let Some(d) = driver_of(driver) {
        for group in groups {
            d.report_unreachable(group, peer);
        }
    }
}

/// Sends one snapshot on its own call: the message without its data, then
/// the data in chunks, read from the file `data` refers to
/// ([`SnapshotFile`]) as they go, or taken from `data` itself. Returns the
/// bytes sent.
async fn send_snapshot(
    addr: &str,
    tls: Option<&PeerTls>,
    from: u64,
    group: u64,
    message: &Message,
    data: &[u8],
) -> Result<u64, String> {
    let mut client = connect(addr, tls).await?;
    let head = message.write_to_bytes().map_err(|e| format!("encoding the snapshot message: {e}"))?;
    let head = |len: u64| pb::SnapshotChunk {
        from_node: from,
        group,
        message: head,
        data_len: len,
        data: Vec::new(),
    };
    let len = match SnapshotFile::from_data(data) {
        Some(file) => {
            let mut reader = tokio::fs::File::open(&file.path)
                .await
                .map_err(|e| format!("opening the snapshot file {}: {e}", file.path.display()))?;
            let len = file.len;
            // A reader task a few chunks ahead of the call: at most that
            // many are in memory, whatever the snapshot's size. A short
            // read ends the stream, and the receiver's count says so.
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let _ = tx.send(head(len)).await;
            let path = file.path.clone();
            tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                loop {
                    let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
                    let mut filled = 0;
                    while filled < buf.len() {
                        match reader.read(&mut buf[filled..]).await {
                            Ok(0) => break,
                            Ok(n) => filled += n,
                            Err(e) => {
                                tracing::warn!(path = %path.display(), error = %e, "reading a snapshot to send");
                                return;
                            }
                        }
                    }
                    if filled == 0 {
                        return;
                    }
                    buf.truncate(filled);
                    if tx.send(pb::SnapshotChunk { data: buf, ..Default::default() }).await.is_err() {
                        return;
                    }
                }
            });
            let chunks = tokio_stream::wrappers::ReceiverStream::new(rx);
            let ack =
                client.snapshot(chunks).await.map_err(|status| format!("{addr}: {status}"))?.into_inner();
            if ack.received != len {
                return Err(format!("{addr} took {} of {len} snapshot bytes", ack.received));
            }
            len
        }
        None => {
            let len = data.len() as u64;
            let mut chunks = vec![head(len)];
            chunks.extend(
                data.chunks(SNAPSHOT_CHUNK_BYTES)
                    .map(|c| pb::SnapshotChunk { data: c.to_vec(), ..Default::default() }),
            );
            let ack = client
                .snapshot(tokio_stream::iter(chunks))
                .await
                .map_err(|status| format!("{addr}: {status}"))?
                .into_inner();
            if ack.received != len {
                return Err(format!("{addr} took {} of {len} snapshot bytes", ack.received));
            }
            len
        }
    };
    Ok(len)
}

/// Why a snapshot stream was not received whole.
enum Received {
    Stream(tonic::Status),
    Io(std::io::Error),
    Past,
    Short(u64),
}

/// Writes a snapshot's chunks (the first one's data `first`, then the
/// stream's) into the file `path` and syncs it; returns the bytes written,
/// which must be `len`.
async fn receive_into(
    path: &Path,
    first: Vec<u8>,
    stream: &mut tonic::Streaming<pb::SnapshotChunk>,
    len: u64,
) -> Result<u64, Received> {
    use tokio::io::AsyncWriteExt;
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(Received::Io)?;
    }
    let mut file = tokio::fs::File::create(path).await.map_err(Received::Io)?;
    let mut written = 0u64;
    let mut next = Some(first);
    loop {
        let data = match next.take() {
            Some(d) => d,
            None => match stream.next().await {
                Some(chunk) => chunk.map_err(Received::Stream)?.data,
                None => break,
            },
        };
        if written + data.len() as u64 > len {
            return Err(Received::Past);
        }
        file.write_all(&data).await.map_err(Received::Io)?;
        written += data.len() as u64;
    }
    if written != len {
        return Err(Received::Short(written));
    }
    file.sync_all().await.map_err(Received::Io)?;
    Ok(written)
}

/// Most bytes of snapshot data a receiver takes in one snapshot.
pub const MAX_SNAPSHOT_BYTES: u64 = 64 << 30;

/// The receiving end of the Raft service: steps what peers send into this
/// node's driver.
#[derive(Clone)]
pub struct RaftService {
    node_id: u64,
    driver: DriverSlot,
    /// Where received snapshots are written.
    transfer_dir: PathBuf,
}

impl RaftService {
    /// The service of node `node_id`, stepping into the driver in `driver`
    /// once it is there (messages before that are dropped: Raft retries),
    /// writing the snapshots it receives into `transfer_dir`.
    pub fn new(node_id: u64, driver: DriverSlot, transfer_dir: PathBuf) -> RaftService {
        RaftService { node_id, driver, transfer_dir }
    }

    /// The tonic server of this service, with its message bound.
    pub fn server(self) -> pb::raft_server::RaftServer<RaftService> {
        pb::raft_server::RaftServer::new(self)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE)
    }

    /// Decodes a peer's message and checks it is for this node.
    fn decode(&self, from: u64, group: u64, bytes: &[u8]) -> Result<Message, tonic::Status> {
        let m = Message::parse_from_bytes(bytes).map_err(|e| {
            tonic::Status::invalid_argument(format!(
                "group {group}: a raft message from node {from} does not decode: {e}"
            ))
        })?;
        if m.to != self.node_id {
            return Err(tonic::Status::invalid_argument(format!(
                "group {group}: a raft message from node {from} for node {} reached node {}",
                m.to, self.node_id
            )));
        }
        Ok(m)
    }
}

type Response<T> = Result<tonic::Response<T>, tonic::Status>;

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn send(&self, request: tonic::Request<tonic::Streaming<pb::RaftBatch>>) -> Response<pb::SendAck> {
        let mut stream = request.into_inner();
        let mut batches = 0;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            batches += 1;
            let Some(driver) = driver_of(&self.driver) else { continue };
            for gm in batch.messages {
                let m = self.decode(batch.from_node, gm.group, &gm.message)?;
                driver.step(gm.group, m);
            }
        }
        Ok(tonic::Response::new(pb::SendAck { batches }))
    }

    async fn snapshot(
        &self,
        request: tonic::Request<tonic::Streaming<pb::SnapshotChunk>>,
    ) -> Response<pb::SnapshotAck> {
        let mut stream = request.into_inner();
        let Some(first) = stream.next().await else {
            return Err(tonic::Status::invalid_argument("an empty snapshot stream"));
        };
        let first = first?;
        let (from, group, len) = (first.from_node, first.group, first.data_len);
        let mut m = self.decode(from, group, &first.message)?;
        if m.get_msg_type() != MessageType::MsgSnapshot {
            return Err(tonic::Status::invalid_argument(format!(
                "group {group}: the snapshot stream from node {from} does not start with a snapshot message"
            )));
        }
        if len > MAX_SNAPSHOT_BYTES {
            return Err(tonic::Status::resource_exhausted(format!(
                "group {group}: a snapshot of {len} bytes from node {from} is over the {MAX_SNAPSHOT_BYTES}-byte bound"
            )));
        }
        // Into a file, a chunk at a time, synced before the driver sees
        // the message; a stream that fails leaves no file behind.
        let path = snapshot_file::incoming_path(&self.transfer_dir, group, from);
        let written = receive_into(&path, first.data, &mut stream, len).await;
        let received = match written {
            Ok(received) => received,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(match e {
                    Received::Stream(status) => status,
                    Received::Io(e) => tonic::Status::resource_exhausted(format!(
                        "group {group}: writing the snapshot from node {from} to {}: {e}",
                        path.display()
                    )),
                    Received::Past => tonic::Status::invalid_argument(format!(
                        "group {group}: the snapshot from node {from} runs past its {len} bytes"
                    )),
                    Received::Short(n) => tonic::Status::invalid_argument(format!(
                        "group {group}: the snapshot from node {from} ended after {n} of {len} bytes"
                    )),
                });
            }
        };
        m.mut_snapshot().set_data(SnapshotFile { path: path.clone(), len }.to_data().into());
        match driver_of(&self.driver) {
            Some(driver) => driver.step(group, m),
            // Not open yet: the leader sends it again.
            None => {
                let _ = tokio::fs::remove_file(&path).await;
            }
        }
        Ok(tonic::Response::new(pb::SnapshotAck { received }))
    }
}
