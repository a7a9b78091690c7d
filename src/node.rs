//! A node: the groups, the ingest pipeline and the planner, assembled.
//!
//! Opening a node opens the Raft log (one raft-engine per node, in
//! `DATA_DIR/raft`), the catalog and shard state machines from their latest
//! snapshots (`DATA_DIR/snapshots`), replays the committed log tail into
//! them, finishes the ingest steps a crash interrupted, and only then
//! answers. The doors in `server` call the node; the node knows nothing of
//! gRPC or HTTP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use thiserror::Error;

mod reads;
pub use reads::{BrokenDown, Counted};

use crate::cluster::catalog::{AdminError, CatalogCommand, CatalogError, CatalogMachine, CatalogResult};
use crate::cluster::forward::{ForwardService, Forwarder, LocalWrites, WritesSlot};
use crate::cluster::membership::{self, Member, MemberState, Members};
use crate::cluster::placement::{all_groups, shard_group, Placement, CATALOG_GROUP};
use crate::datadir::{self, DataDirMeta, DiskGuard};
use crate::ingest::pipeline::Pipeline;
use crate::ingest::{BoxFuture, IngestError, IngestReport, IngestSink, Source};
use crate::model::SchemaLimits;
use crate::query::remote::Latencies;
use crate::query::Planner;
use crate::replication::driver::{
    Addresses, Checkpoint, Driver, DriverConfig, GroupSpec, Membership, NoPeers, SnapshotPolicy,
    StateMachine, Transport,
};
use crate::replication::error::MachineError;
use crate::replication::manifest::{Manifest, ManifestError, ManifestState};
use crate::replication::shard_machine::{ShardApplied, ShardMachine, ShardMachineError};
use crate::replication::storage::{LogStore, StorageError};
use crate::replication::transport::{DriverSlot, GrpcTransport, PeerTls, PeerTlsError, RaftService};
use crate::replication::ReplicationError;

/// Why a node could not be opened, or a stopped node's data directory
/// checked or upgraded. Each names the file, the group or the setting.
#[derive(Debug, Error)]
pub enum NodeError {
    /// The configuration's shard count is out of range.
    #[error("shards must be between 1 and 4096, not {shards}")]
    ShardCount {
        /// What the configuration says.
        shards: u32,
    },
    /// The data directory failed its checks: every problem found, each
    /// naming its file.
    #[error("{problems}")]
    DataDir {
        /// The problems, one a line.
        problems: String,
    },
    /// The data directory belongs to another node or shard count.
    #[error("{dir} was created for node {found_node} with {found_shards} shards; the configuration says node {node} with {shards} shards")]
    OtherNode {
        /// The data directory.
        dir: String,
        /// The node it was created for.
        found_node: u64,
        /// The shards it was created with.
        found_shards: u32,
        /// The configured node.
        node: u64,
        /// The configured shards.
        shards: u32,
    },
    /// A file or directory could not be read or created.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The data directory's meta file is not what this build writes.
    #[error("{path}: {source}")]
    Meta {
        /// The file.
        path: String,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// An offline command found the log locked (or unopenable).
    #[error("{dir}: is a node running on it? {source}")]
    LogInUse {
        /// The log's directory.
        dir: String,
        /// The log store's error.
        #[source]
        source: StorageError,
    },
    /// The raft log could not be opened.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The manifest could not be read or written.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The catalog's snapshot could not be loaded.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A shard's snapshot could not be loaded.
    #[error(transparent)]
    ShardMachine(#[from] ShardMachineError),
    /// The groups could not be started or their log replayed.
    #[error(transparent)]
    Replication(#[from] ReplicationError),
    /// The ingest steps a crash interrupted could not be finished.
    #[error(transparent)]
    Ingest(#[from] IngestError),
    /// The configuration's schema caps could not be put in force.
    #[error("setting the schema caps of the configuration: {source}")]
    SchemaCaps {
        /// Why.
        #[source]
        source: CatalogError,
    },
    /// An offline snapshot rewrite failed for group `group`.
    #[error("group {group}: rewriting its snapshot: {source}")]
    Rewrite {
        /// The group.
        group: u64,
        /// The machine's error.
        #[source]
        source: MachineError,
    },
    /// The `peers` of the configuration do not describe a cluster this
    /// node is in.
    #[error("the peers of the configuration: {problem}")]
    Peers {
        /// What is wrong.
        problem: String,
    },
    /// A new node could not join the cluster through the member at `at`.
    #[error("joining the cluster through {at}: {reason}")]
    Join {
        /// The Raft address asked (`join`).
        at: String,
        /// Why not (the member's answer, or why it could not be reached).
        reason: String,
    },
    /// The files of mutual TLS between nodes cannot be used.
    #[error(transparent)]
    PeerTls(#[from] PeerTlsError),
    /// The Raft service cannot serve with the TLS files given.
    #[error(
        "the Raft service cannot use the peer TLS files (peer_tls_cert, peer_tls_key, peer_tls_ca): {reason}"
    )]
    PeerTlsSetup {
        /// tonic's reason.
        reason: String,
    },
    /// A worker thread or task panicked.
    #[error("{what} panicked")]
    Panicked {
        /// Which (`a snapshot loader`).
        what: &'static str,
    },
}

impl NodeError {
    fn data_dir(problems: &[datadir::Problem]) -> NodeError {
        NodeError::DataDir { problems: datadir::describe(problems) }
    }
}

/// A node's settings: the top level of the TOML file of
/// `cohort serve --config`, every key optional.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where the Raft log and snapshots live.
    pub data_dir: PathBuf,
    /// This node's Raft id.
    pub node_id: u64,
    /// Shards (fixed when the data directory is created).
    pub shards: u32,
    /// gRPC listen address.
    pub grpc_addr: String,
    /// Segment-compatible HTTP listen address.
    pub http_addr: String,
    /// Accepted HTTP write keys; empty accepts any.
    pub write_keys: Vec<String>,
    /// Largest HTTP message, bytes.
    pub max_message_bytes: usize,
    /// Largest HTTP batch, bytes.
    pub max_batch_bytes: usize,
    /// Longest wait for an HTTP request's header, in full, milliseconds; 0
    /// turns it off.
    pub http_header_timeout_ms: u64,
    /// Longest time an HTTP connection may move no byte, milliseconds; 0
    /// turns it off.
    pub http_idle_timeout_ms: u64,
    /// Free disk space kept for the log, bytes: client writes are refused
    /// while the data directory's disk has less ([`DiskGuard`]); 0 turns
    /// the guard off.
    pub min_free_disk_bytes: u64,
    /// `messageId` deduplication window, hours.
    pub dedup_window_hours: i64,
    /// Raft entries between snapshots of a group.
    pub snapshot_entries: u64,
    /// Raft log bytes between snapshots of a group (bounds what a restart
    /// replays).
    pub snapshot_log_bytes: u64,
    /// Threads that answer queries.
    pub query_threads: usize,
    /// How stale, in milliseconds, a count, breakdown or members page may
    /// read on a node of a cluster: each group's replica must have been
    /// confirmed current by its leader (ReadIndex, renewed in the
    /// background every quarter of the bound) within it, or the read
    /// first waits for a confirmation, and fails naming the group when
    /// none comes within the bound. The reply says the staleness it met.
    pub read_staleness_ms: u64,
    /// Voters of each group in a cluster (every node when there are
    /// fewer): set from the configuration of the cluster's first catalog
    /// leader, then kept in the catalog ([`crate::cluster::placement`]).
    pub replication_factor: u32,
    /// This node's zone (a rack, an availability zone): placement puts
    /// each group's replicas in as many zones as there are. Recorded in
    /// the catalog by the node itself.
    pub zone: Option<String>,
    /// Most traits the schema holds (new names beyond are refused).
    pub max_traits: usize,
    /// Most event names the schema holds.
    pub max_events: usize,
    /// Most properties of one event.
    pub max_properties_per_event: usize,
    /// Most properties of all events together.
    pub max_properties: usize,
    /// Longest new trait, event or property name, bytes.
    pub max_name_bytes: usize,
    /// API keys and their roles (`[[api_keys]]` tables); merged with the
    /// ones of `COHORT_API_KEYS`. None: gRPC is open and HTTP takes any
    /// write key unless `write_keys` are set.
    pub api_keys: Vec<ApiKeyConfig>,
    /// PEM file of the certificate chain both doors serve TLS with.
    pub tls_cert: Option<PathBuf>,
    /// PEM file of the private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve a non-loopback address even without API keys or without TLS.
    pub insecure: bool,
    /// Listen address of the Raft service between nodes (used when
    /// `peers` is set).
    pub raft_addr: String,
    /// Every founding node of the cluster, this one included
    /// (`[[peers]]` tables): each group starts replicated on all of them.
    /// Empty: a single node, or one that joins (`join`).
    pub peers: Vec<PeerConfig>,
    /// The Raft address of a member of a running cluster, which a new
    /// node (an empty data directory, no `peers`) asks to join: it is
    /// added to the member table, follows the catalog as a learner, and
    /// takes the replicas the placement gives it. A node that already
    /// joined starts from its data and needs it no more.
    pub join: Option<String>,
    /// Where the shard groups' leaders go: `catalog` (with the catalog's
    /// leader, where the ingest stepper runs: its proposals are local) or
    /// `spread` (shard `s` on the `s mod n`-th node; each step goes to its
    /// leader over the Forward service).
    pub shard_leaders: ShardLeaders,
    /// PEM certificate chain this node shows the other nodes (mutual TLS
    /// on the Raft service; with `peer_tls_key` and `peer_tls_ca`).
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key of `peer_tls_cert`.
    pub peer_tls_key: Option<PathBuf>,
    /// PEM certificate of the CA that signs every node's `peer_tls_cert`:
    /// only connections with a certificate it signed are served.
    pub peer_tls_ca: Option<PathBuf>,
}

/// Where the shard groups' leaders go in a cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ShardLeaders {
    /// With the catalog's leader. While every group has every node as a
    /// voter, every node applies every entry anyway, and this saves the
    /// stepper a network round trip per step.
    #[default]
    Catalog,
    /// Spread over the nodes: shard `s` prefers the `s mod n`-th voter in
    /// id order.
    Spread,
}

/// A node of the cluster as the others reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Its Raft id (`node_id` in its own configuration).
    pub id: u64,
    /// Where its Raft service listens (its `raft_addr`).
    pub raft_addr: String,
    /// Where its gRPC door listens, for "not leader" answers.
    pub grpc_addr: String,
}

impl std::str::FromStr for PeerConfig {
    type Err = String;

    /// `ID=RAFT_ADDR,GRPC_ADDR`, as `cohort serve --peer` takes it.
    fn from_str(text: &str) -> Result<PeerConfig, String> {
        let bad = || {
            format!("{text:?} is not a peer: write ID=RAFT_ADDR,GRPC_ADDR (as 2=10.0.0.2:7170,10.0.0.2:7070)")
        };
        let (id, addrs) = text.split_once('=').ok_or_else(bad)?;
        let (raft_addr, grpc_addr) = addrs.split_once(',').ok_or_else(bad)?;
        let id: u64 = id.trim().parse().map_err(|_| bad())?;
        if id == 0 || raft_addr.trim().is_empty() || grpc_addr.trim().is_empty() {
            return Err(bad());
        }
        Ok(PeerConfig { id, raft_addr: raft_addr.trim().into(), grpc_addr: grpc_addr.trim().into() })
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            data_dir: PathBuf::from("cohort-data"),
            node_id: 1,
            shards: 8,
            grpc_addr: "127.0.0.1:7070".into(),
            http_addr: "127.0.0.1:7071".into(),
            write_keys: Vec::new(),
            max_message_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
            min_free_disk_bytes: 256 << 20,
            dedup_window_hours: 24,
            snapshot_entries: 5_000,
            snapshot_log_bytes: 128 << 20,
            query_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_traits: SchemaLimits::default().max_traits,
            max_events: SchemaLimits::default().max_events,
            max_properties_per_event: SchemaLimits::default().max_properties_per_event,
            max_properties: SchemaLimits::default().max_properties,
            max_name_bytes: SchemaLimits::default().max_name_bytes,
            api_keys: Vec::new(),
            tls_cert: None,
            tls_key: None,
            insecure: false,
            raft_addr: "127.0.0.1:7170".into(),
            peers: Vec::new(),
            join: None,
            read_staleness_ms: 1000,
            replication_factor: crate::cluster::placement::DEFAULT_REPLICATION_FACTOR,
            zone: None,
            shard_leaders: ShardLeaders::Catalog,
            peer_tls_cert: None,
            peer_tls_key: None,
            peer_tls_ca: None,
        }
    }
}

impl NodeConfig {
    /// The mutual TLS between nodes this configuration asks for, loaded.
    pub fn peer_tls(&self) -> Result<Option<PeerTls>, PeerTlsError> {
        PeerTls::from_config(
            self.peer_tls_cert.as_deref(),
            self.peer_tls_key.as_deref(),
            self.peer_tls_ca.as_deref(),
        )
    }

    /// The caps on the schema's growth this configuration asks for.
    pub fn schema_limits(&self) -> SchemaLimits {
        SchemaLimits {
            max_traits: self.max_traits,
            max_events: self.max_events,
            max_properties_per_event: self.max_properties_per_event,
            max_properties: self.max_properties,
            max_name_bytes: self.max_name_bytes,
        }
    }
}

/// A running node.
pub struct Node {
    /// Its settings.
    pub config: NodeConfig,
    /// The Raft driver.
    pub driver: Arc<Driver>,
    /// The catalog.
    pub catalog: Arc<CatalogMachine>,
    /// The shards.
    pub shards: Arc<Vec<Arc<ShardMachine>>>,
    /// The planner.
    pub planner: Planner,
    /// The data directory's manifest.
    pub manifest: Arc<Manifest>,
    /// Keeps client writes off a nearly full disk.
    pub disk: DiskGuard,
    pipeline: Pipeline,
    /// Hands writes to the catalog's leader when it is another node (none
    /// on a single node).
    forwarder: Option<Arc<Forwarder>>,
    /// What carries Raft messages to the other nodes (its counters).
    pub transport: Arc<dyn Transport>,
    /// Every node's gRPC door, shared with the driver for "not leader"
    /// answers; the membership task adds those of nodes that join.
    addresses: Addresses,
    /// When each group's replica was last confirmed current.
    freshness: Freshness,
    /// How fast the other nodes answer reads of their replicas.
    latencies: Arc<Latencies>,
    /// When it started.
    pub started: Instant,
    /// How long opening took (replay included).
    pub open_secs: f64,
    /// Of which loading the snapshots.
    pub loaded_secs: f64,
}

impl Node {
    /// Opens (or creates) the node's data and starts its groups.
    pub async fn open(config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        let started = Instant::now();
        if config.shards == 0 || config.shards > 4096 {
            return Err(NodeError::ShardCount { shards: config.shards });
        }
        let peer_tls = config.peer_tls()?;
        let dir = &config.data_dir;
        let snapshots = dir.join("snapshots");
        let mut checked = datadir::check_files(dir).map_err(|p| NodeError::data_dir(&p))?;
        // Snapshots in transfer when the node stopped are sent again.
        crate::replication::snapshot_file::clear_transfers(&snapshots.join("transfer"));
        for torn in &checked.log.torn {
            tracing::warn!(file = %torn, "a torn last record (a crash in the middle of a write); it is cut");
        }
        for cut in &checked.log.cuts {
            cut.apply().map_err(|source| NodeError::Io {
                path: format!("cutting the torn log tail, {cut}"),
                source,
            })?;
        }
        let meta = DataDirMeta { node_id: config.node_id, shards: config.shards, manifest: true };
        match &checked.meta {
            Some(found) if (found.node_id, found.shards) != (meta.node_id, meta.shards) => {
                return Err(NodeError::OtherNode {
                    dir: dir.display().to_string(),
                    found_node: found.node_id,
                    found_shards: found.shards,
                    node: meta.node_id,
                    shards: meta.shards,
                });
            }
            Some(found) if !found.manifest => {
                tracing::warn!(
                    dir = %dir.display(),
                    "the data directory was written by an older build that kept no manifest; its files are taken as they are and a manifest is written now"
                );
            }
            _ => {}
        }
        // A new node that joins asks before it writes anything, so that a
        // refusal (another shard count, a taken id) leaves no directory
        // behind that would hold it to this attempt.
        let joined = match config.join.as_deref().filter(|_| checked.meta.is_none()) {
            Some(at) => Some(join_cluster(&config, at, peer_tls.as_ref()).await?),
            None => None,
        };
        std::fs::create_dir_all(&snapshots)
            .map_err(|source| NodeError::Io { path: snapshots.display().to_string(), source })?;
        let store = Arc::new(LogStore::open(&dir.join("raft"))?);
        for group in drop_moved_away_replicas(&store, &snapshots, config.node_id, config.shards)? {
            // Nothing of it is left to check against the manifest.
            if let Some(manifest) = checked.manifest.as_mut() {
                manifest.groups.remove(&group);
            }
        }
        let (catalog, shards) = load_snapshots(&snapshots, config.shards, config.dedup_window_hours)?;
        let records = {
            let loaded = datadir::loaded_groups(&*catalog, shards.iter().map(|m| &**m as &dyn StateMachine));
            datadir::check_groups(checked.manifest.as_ref(), &store, &loaded)
                .map_err(|p| NodeError::data_dir(&p))?
        };
        // The directory is whole: record what it holds, then mark it as
        // one that keeps a manifest.
        let manifest =
            Arc::new(Manifest::create(dir, ManifestState { groups: records, ..ManifestState::default() })?);
        if checked.meta.as_ref().is_none_or(|m| !m.manifest) {
            datadir::write_meta(dir, &meta).map_err(|problems| NodeError::DataDir { problems })?;
        }
        let loaded_secs = started.elapsed().as_secs_f64();
        let groups = group_specs(&catalog, &shards);
        let members = joined.unwrap_or_else(|| catalog.state.read().members.clone());
        let cluster = Cluster::from_config(&config, &members)?;
        let addresses: Addresses = Arc::new(parking_lot::RwLock::new(cluster.grpc_addrs.clone()));
        let driver_config = DriverConfig {
            node_id: config.node_id,
            voters: cluster.voters.clone(),
            snapshot: SnapshotPolicy { entries: config.snapshot_entries, bytes: config.snapshot_log_bytes },
            manifest: Some(manifest.clone()),
            addresses: addresses.clone(),
            ..Default::default()
        };
        let slot: DriverSlot = Arc::default();
        let forwarded: WritesSlot = Arc::default();
        let transport: Arc<dyn Transport> = if !cluster.clustered {
            Arc::new(NoPeers)
        } else {
            serve_raft(&config, peer_tls.as_ref(), slot.clone(), forwarded.clone()).await?;
            Arc::new(GrpcTransport::new(
                config.node_id,
                cluster.raft_addrs.clone(),
                slot.clone(),
                tokio::runtime::Handle::current(),
                peer_tls.clone(),
            ))
        };
        let raft_transport = transport.clone();
        let driver =
            tokio::task::spawn_blocking(move || Driver::start(store, groups, transport, driver_config))
                .await
                .map_err(|_| NodeError::Panicked { what: "the start of the raft driver" })??;
        let driver = Arc::new(driver);
        let _ = slot.set(Arc::downgrade(&driver));
        if cluster.clustered {
            match config.shard_leaders {
                ShardLeaders::Catalog => start_leader_colocation(&driver, &catalog, config.shards),
                ShardLeaders::Spread => start_leader_spread(&driver, &catalog, config.shards),
            }
        }
        let forwarder = cluster
            .clustered
            .then(|| Arc::new(Forwarder::new(config.node_id, cluster.raft_addrs.clone(), peer_tls.clone())));
        let peers = forwarder.clone().map(|f| f as Arc<dyn crate::ingest::pipeline::ShardPeers>);
        let pipeline = Pipeline::start(driver.clone(), peers, catalog.clone(), shards.clone()).await?;
        let planner = Planner::new(catalog.clone(), shards.clone(), config.query_threads);
        manifest.flush()?;
        start_manifest_flusher(&manifest);
        let disk = DiskGuard::new(&config.data_dir, config.min_free_disk_bytes);
        let node = Arc::new(Node {
            manifest,
            disk,
            forwarder,
            transport: raft_transport,
            addresses,
            freshness: Freshness::new(config.shards),
            latencies: Arc::default(),
            config,
            driver,
            catalog,
            shards,
            planner,
            pipeline,
            started,
            open_secs: started.elapsed().as_secs_f64(),
            loaded_secs,
        });
        let _ = forwarded.set(Arc::downgrade(&node) as Weak<dyn LocalWrites>);
        if cluster.clustered {
            start_membership(&node);
            start_freshness(&node);
        }
        node.set_schema_limits().await?;
        Ok(node)
    }

    /// Brings the caps on the schema in force to those of the
    /// configuration, through the catalog's log, before any door is open:
    /// entries before the change were typed under the caps of their time
    /// and are replayed under them; entries after it under the new ones.
    async fn set_schema_limits(&self) -> Result<(), NodeError> {
        let wanted = self.config.schema_limits();
        let in_force = self.catalog.state.read().limits;
        if in_force == wanted {
            return Ok(());
        }
        // In a cluster the catalog's leader sets the caps of its own
        // configuration (the nodes of a cluster share one); a single node
        // leads at once.
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let leader = loop {
            match self.driver.leader_of(CATALOG_GROUP) {
                Some(leader) => break leader,
                None if Instant::now() < deadline => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await
                }
                None => {
                    tracing::warn!(
                        "no catalog leader within 10 s; the schema caps of the configuration are not applied"
                    );
                    return Ok(());
                }
            }
        };
        if leader != self.config.node_id {
            tracing::info!(leader, "the schema caps in force are the catalog leader's");
            return Ok(());
        }
        self.admin_here(CatalogCommand::SetLimits(wanted))
            .await
            .map_err(|source| NodeError::SchemaCaps { source })?;
        let changed: Vec<String> = [
            ("max_traits", in_force.max_traits, wanted.max_traits),
            ("max_events", in_force.max_events, wanted.max_events),
            ("max_properties_per_event", in_force.max_properties_per_event, wanted.max_properties_per_event),
            ("max_properties", in_force.max_properties, wanted.max_properties),
            ("max_name_bytes", in_force.max_name_bytes, wanted.max_name_bytes),
        ]
        .iter()
        .filter(|(_, was, now)| was != now)
        .map(|(key, was, now)| format!("{key} {was} -> {now}"))
        .collect();
        tracing::info!(changed = %changed.join(", "), "schema caps set from the configuration");
        Ok(())
    }

    /// Ingests messages given as JSON text: here when this node leads the
    /// catalog (or knows no other leader), else forwarded to the node that
    /// does.
    pub async fn ingest_text(
        &self,
        messages: Vec<String>,
        received_ms: i64,
        source: Source,
    ) -> Result<IngestReport, IngestError> {
        let Some(forwarder) = &self.forwarder else {
            return self.ingest_here(messages, received_ms, source).await;
        };
        self.refuse_if_removed()?;
        // A batch refused before anything was appended (the catalog's
        // leadership moving: an election, a hand-over, a removal) goes
        // again to whichever node leads, for about an election, so that a
        // leader change costs the client a delay rather than an error.
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let me = self.config.node_id;
            let leader = match self.driver.leader_of(CATALOG_GROUP).filter(|&l| l != me) {
                Some(leader) => self.reachable_leader(leader).await,
                // This node leads, or knows no leader (then the pipeline
                // says so).
                None => me,
            };
            let answer = if leader == me {
                self.ingest_here(messages.clone(), received_ms, source).await
            } else {
                forwarder.ingest(leader, messages.clone(), received_ms, source).await
            };
            match answer {
                Err(e) if e.nothing_appended() && Instant::now() < deadline => {
                    tracing::debug!(leader, error = %e, "batch refused before it was appended; sending it again");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                answer => return answer,
            }
        }
    }

    /// Ingests messages here, through this node's pipeline (a node that
    /// does not lead the catalog answers "not leader").
    async fn ingest_here(
        &self,
        messages: Vec<String>,
        received_ms: i64,
        source: Source,
    ) -> Result<IngestReport, IngestError> {
        self.disk.check().map_err(IngestError::DiskFull)?;
        self.pipeline.ingest(messages, received_ms, source).await
    }

    /// Proposes an administrative change to the catalog, here when this
    /// node leads it (or knows no other leader), else through the node
    /// that does.
    async fn admin(&self, command: CatalogCommand) -> Result<(), CatalogError> {
        let Some(forwarder) = &self.forwarder else {
            return self.admin_here(command).await;
        };
        let leader = match self.driver.leader_of(CATALOG_GROUP).filter(|&l| l != self.config.node_id) {
            Some(leader) => self.reachable_leader(leader).await,
            // As for ingest: a "not leader" of the catalog was refused
            // before anything was appended.
            None => match self.admin_here(command.clone()).await {
                Err(CatalogError::Replication(ReplicationError::NotLeader {
                    group: CATALOG_GROUP,
                    leader: Some(leader),
                    ..
                })) if leader != self.config.node_id => leader,
                answer => return answer,
            },
        };
        if leader == self.config.node_id {
            // The election while waiting made this node the leader.
            return self.admin_here(command).await;
        }
        let applied = forwarder.admin(leader, command).await?;
        // Answer once this node's catalog holds the change, so that the
        // caller reads it here (a change is small: this is a replication
        // delay, bounded in case this node falls behind).
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while self.catalog_applied() < applied && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// The catalog's leader to forward to: `leader`, unless this node's
    /// connection to it is down (the leader died or is cut off), in which
    /// case a write waits (at most [`LEADER_WAIT`]) for the election that
    /// follows rather than failing at once; then whoever is known.
    async fn reachable_leader(&self, mut leader: u64) -> u64 {
        let deadline = Instant::now() + LEADER_WAIT;
        while !self.transport.reachable(leader) && Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            leader = self.driver.leader_of(CATALOG_GROUP).unwrap_or(leader);
        }
        leader
    }

    /// The index of the last catalog entry this node applied (its state
    /// includes it).
    fn catalog_applied(&self) -> u64 {
        self.catalog.applied_index()
    }

    /// Proposes an administrative change to the catalog here: a proposal
    /// that is not committed is a [`CatalogError::Replication`] (not
    /// leader, shutting down, ...), one the catalog refuses a
    /// [`CatalogError::Refused`]. A segment is refused here when one of
    /// its name exists, by the node that proposes it (whose catalog is
    /// the leader's).
    async fn admin_here(&self, command: CatalogCommand) -> Result<(), CatalogError> {
        if let CatalogCommand::CreateSegment { name, .. } = &command {
            if self.catalog.state.read().segments.contains_key(name) {
                return Err(
                    AdminError::Exists(format!("a saved segment {name:?} exists; delete it first")).into()
                );
            }
        }
        self.disk.check().map_err(AdminError::DiskFull)?;
        let result = self.driver.propose(CATALOG_GROUP, command.encode()).await?;
        match result.downcast::<CatalogResult>().map(|r| *r) {
            Ok(CatalogResult::Done(r)) => Ok(r?),
            Ok(CatalogResult::Ingested { index, .. }) => Err(CatalogError::UnexpectedResult { index }),
            Err(_) => Err(CatalogError::UnexpectedResult { index: 0 }),
        }
    }

    /// Declares trait types.
    pub async fn apply_schema(&self, json: String) -> Result<(), CatalogError> {
        self.admin(CatalogCommand::ApplySchema(json)).await
    }

    /// Saves a segment.
    pub async fn create_segment(
        &self,
        name: String,
        expression: String,
        description: String,
        now_ms: i64,
    ) -> Result<(), CatalogError> {
        self.admin(CatalogCommand::CreateSegment { name, expression, description, now_ms }).await
    }

    /// Deletes a saved segment.
    pub async fn delete_segment(&self, name: String) -> Result<(), CatalogError> {
        self.admin(CatalogCommand::DeleteSegment(name)).await
    }

    /// Points the transport, the forwarder and the "not leader" answers
    /// at every member's addresses.
    fn learn_addresses(&self, members: &Members) {
        for m in members.values().filter(|m| m.id != self.config.node_id) {
            self.transport.set_peer(m.id, &m.raft_addr);
            if let Some(f) = &self.forwarder {
                f.set_addr(m.id, &m.raft_addr);
            }
            if self.addresses.read().get(&m.id) != Some(&m.grpc_addr) {
                self.addresses.write().insert(m.id, m.grpc_addr.clone());
            }
        }
    }

    /// On the catalog's leader: records in the member table the founding
    /// nodes (`peers`) it does not list yet. Returns whether all are.
    async fn record_founders(&self, members: &Members, placement: &Placement) -> bool {
        let mut all = true;
        if placement.replication_factor == 0 {
            let factor = CatalogCommand::SetReplicationFactor(self.config.replication_factor);
            if let Err(e) = self.admin_here(factor).await {
                tracing::warn!(error = %e, "replication factor not recorded yet");
                all = false;
            }
        }
        let unrecorded: Vec<_> = self.config.peers.iter().filter(|p| !members.contains_key(&p.id)).collect();
        for p in &unrecorded {
            let founder = Member {
                id: p.id,
                raft_addr: p.raft_addr.clone(),
                grpc_addr: p.grpc_addr.clone(),
                state: MemberState::Active,
            };
            if let Err(e) = self.admin_here(CatalogCommand::SetMember(founder)).await {
                tracing::warn!(node = p.id, error = %e, "founding node not recorded in the member table yet");
                all = false;
            }
        }
        // More founders than voters per group: the ones recorded last got
        // no replica; spread the groups over all of them.
        let factor = self.catalog.state.read().placement.factor();
        if all && !unrecorded.is_empty() && self.config.peers.len() > factor {
            if let Err(e) = self.admin_here(CatalogCommand::Rebalance).await {
                tracing::warn!(error = %e, "the founders' placement is not rebalanced yet");
                all = false;
            }
        }
        all
    }

    /// Moves one group's replica from node `from` to node `to` (the
    /// group's leader then adds `to` as a learner and, once it has caught
    /// up, swaps it in for `from` in one joint configuration change).
    pub async fn move_replica(&self, group: u64, from: u64, to: u64) -> Result<(), CatalogError> {
        self.admin(CatalogCommand::MoveReplica(crate::cluster::placement::ReplicaMove { group, from, to }))
            .await
    }

    /// Evens the replicas over the active members.
    pub async fn rebalance(&self) -> Result<(), CatalogError> {
        self.admin(CatalogCommand::Rebalance).await
    }

    /// The placement as this node's catalog has it.
    pub fn placement(&self) -> Placement {
        self.catalog.state.read().placement.clone()
    }

    /// Adds a node to the member table or changes its addresses (an
    /// `active` member), or marks it removed; every group's leader then
    /// brings its configuration to the table. Answers once this node's
    /// table has the change; [`Node::configurations`] shows when the
    /// groups do.
    pub async fn set_member(&self, member: Member) -> Result<(), CatalogError> {
        let member = match member.state {
            MemberState::Active => member,
            MemberState::Removed => {
                let known = self.catalog.state.read().members.get(&member.id).cloned();
                Member { state: MemberState::Removed, ..known.unwrap_or(member) }
            }
        };
        self.admin(CatalogCommand::SetMember(member)).await
    }

    /// Whether this node is part of a cluster (founding peers or a join).
    pub fn is_clustered(&self) -> bool {
        self.forwarder.is_some()
    }

    /// The member table as this node's catalog has it.
    pub fn members(&self) -> Vec<Member> {
        self.catalog.state.read().members.values().cloned().collect()
    }

    /// Every group's configuration as this node has it (the catalog
    /// first, then the shards in order).
    pub async fn configurations(&self) -> Vec<(u64, crate::replication::driver::Membership)> {
        let mut out = Vec::new();
        for group in std::iter::once(CATALOG_GROUP).chain((0..self.config.shards).map(shard_group)) {
            if let Some(m) = self.driver.membership(group).await {
                out.push((group, m));
            }
        }
        out
    }

    /// Waits until this node has applied what the leaders had committed
    /// when it was called, in the groups a read of the profile `address`
    /// names needs: the catalog (its identity directory) and the
    /// profile's shard (raft-rs ReadIndex), so that the read sees every
    /// write acknowledged before it, whichever node took the write. The
    /// shard is known from this node's directory before the catalog's
    /// answer, so both requests usually go at once; a profile this node
    /// did not know yet (or that moved with a merge) costs a second
    /// request for its shard. Nothing to wait for on a single node, whose
    /// groups answer writes once applied.
    pub async fn read_barrier(&self, address: &str) -> Result<(), ReplicationError> {
        if self.forwarder.is_none() {
            return Ok(());
        }
        self.refuse_if_removed()?;
        let shard_now = || self.planner.locate(address).ok().map(|(_, shard)| shard);
        let held = |shard: u32| if self.holds_shard(shard) { Ok(shard) } else { Err(self.no_replica(shard)) };
        let catalog = self.driver.read_barrier(CATALOG_GROUP);
        let guessed = shard_now();
        let shard = guessed.map(held).transpose()?.map(|s| self.driver.read_barrier(shard_group(s)));
        catalog.await?;
        if let Some(shard) = shard {
            shard.await?;
        }
        match shard_now() {
            Some(s) if Some(s) != guessed => self.driver.read_barrier(shard_group(held(s)?)).await,
            _ => Ok(()),
        }
    }

    /// Before a graceful stop: hands every group this node leads to
    /// another voter, and waits (at most `within`) until it leads none, so
    /// that a stopping node costs the cluster no election timeout. Returns
    /// how many groups it still leads (0 on a single node, which has no
    /// one to hand them to).
    pub async fn hand_off_leadership(&self, within: std::time::Duration) -> usize {
        if self.forwarder.is_none() {
            return 0;
        }
        // The others must not hand leaderships back meanwhile.
        self.driver.refuse_leadership();
        let me = self.config.node_id;
        let deadline = Instant::now() + within;
        loop {
            let led: Vec<u64> =
                self.driver.status().iter().filter(|g| g.leader == me).map(|g| g.id).collect();
            if led.is_empty() || Instant::now() >= deadline {
                return led.len();
            }
            let asks: Vec<_> = led.iter().map(|&group| self.driver.hand_off(group)).collect();
            let mut started = false;
            for ask in asks {
                started |= ask.await;
            }
            if !started {
                // No other voter is active: nobody to hand them to.
                return led.len();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Stops the Raft loop (pending proposals fail with "shutting down"),
    /// snapshots every group whose log tail would be slower to replay than
    /// its snapshot is to write (so that the next start loads snapshots
    /// rather than replaying a long tail) and closes the log. Nothing
    /// acknowledged is lost: it is in the log, and a failed snapshot leaves
    /// the log as it was.
    pub fn shutdown(&self) -> Checkpoint {
        let mut checkpoint = self.driver.stop_with_snapshots();
        if let Err(e) = self.manifest.flush() {
            checkpoint.failed.push(ReplicationError::WriteManifest { source: Arc::new(e) });
        }
        checkpoint
    }
}

/// The cluster a node's configuration describes.
struct Cluster {
    /// Whether this node is part of a cluster (founding peers, or a
    /// join); false on a single node.
    clustered: bool,
    /// Every group's founding voters (none on a node that joins).
    voters: Vec<u64>,
    /// The other nodes' Raft services, as the configuration and the
    /// member table have them.
    raft_addrs: HashMap<u64, String>,
    /// Every node's gRPC door, for "not leader" answers.
    grpc_addrs: HashMap<u64, String>,
}

impl Cluster {
    /// From the configuration and the member table (`members`: the
    /// catalog's, or the one a join was answered with).
    fn from_config(config: &NodeConfig, members: &Members) -> Result<Cluster, NodeError> {
        if config.peers.is_empty() && config.join.is_none() {
            return Ok(Cluster {
                clustered: false,
                voters: vec![config.node_id],
                raft_addrs: HashMap::new(),
                grpc_addrs: HashMap::new(),
            });
        }
        if !config.peers.is_empty() && config.join.is_some() {
            return Err(NodeError::Peers {
                problem: "give the founding nodes (peers) or a node to join (join), not both".into(),
            });
        }
        let mut voters: Vec<u64> = config.peers.iter().map(|p| p.id).collect();
        voters.sort_unstable();
        if voters.windows(2).any(|w| w[0] == w[1]) {
            return Err(NodeError::Peers { problem: format!("a node id is listed twice ({voters:?})") });
        }
        if !voters.is_empty() && !voters.contains(&config.node_id) {
            return Err(NodeError::Peers {
                problem: format!(
                    "this node ({}) is not among them ({voters:?}): list every node, this one included",
                    config.node_id
                ),
            });
        }
        let mut raft_addrs: HashMap<u64, String> =
            members.values().map(|m| (m.id, m.raft_addr.clone())).collect();
        let mut grpc_addrs: HashMap<u64, String> =
            members.values().map(|m| (m.id, m.grpc_addr.clone())).collect();
        for p in &config.peers {
            raft_addrs.insert(p.id, p.raft_addr.clone());
            grpc_addrs.insert(p.id, p.grpc_addr.clone());
        }
        raft_addrs.remove(&config.node_id);
        Ok(Cluster { clustered: true, voters, raft_addrs, grpc_addrs })
    }
}

/// Asks the member at `at` to add this node to the cluster; returns the
/// member table it answered with.
async fn join_cluster(config: &NodeConfig, at: &str, tls: Option<&PeerTls>) -> Result<Members, NodeError> {
    // Once the join is recorded the leaders make this node a voter within
    // a second: a node that then fails to listen would count against
    // every quorum. So its addresses are tried first.
    for (key, addr) in
        [("raft_addr", &config.raft_addr), ("grpc_addr", &config.grpc_addr), ("http_addr", &config.http_addr)]
    {
        if let Err(e) = std::net::TcpListener::bind(addr.as_str()) {
            return Err(NodeError::Join {
                at: at.to_string(),
                reason: format!("this node cannot listen on {addr} ({key}): {e}; nothing was asked"),
            });
        }
    }
    let me = Member {
        id: config.node_id,
        raft_addr: config.raft_addr.clone(),
        grpc_addr: config.grpc_addr.clone(),
        state: MemberState::Active,
    };
    let table = crate::cluster::forward::ask_to_join(at, tls, &me, config.shards)
        .await
        .map_err(|reason| NodeError::Join { at: at.to_string(), reason })?;
    tracing::info!(at, members = table.len(), "joined the cluster; the catalog's leader adds this node as a learner, and replicas placed on it follow");
    Ok(table.into_iter().map(|m| (m.id, m)).collect())
}

/// Binds the Raft service between nodes to `config.raft_addr` and serves
/// it on a task (over mutual TLS when `tls` is set), with the Forward
/// service beside it; messages reach the driver once `slot` holds it, and
/// forwarded batches the node once `forwarded` does.
async fn serve_raft(
    config: &NodeConfig,
    tls: Option<&PeerTls>,
    slot: DriverSlot,
    forwarded: WritesSlot,
) -> Result<(), NodeError> {
    let addr = config.raft_addr.clone();
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(crate::replication::transport::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(crate::replication::transport::KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls.server())
            .map_err(|e| NodeError::PeerTlsSetup { reason: format!("{e:?}") })?;
    }
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| NodeError::Io { path: format!("binding the Raft service to {addr}"), source })?;
    let transfer = config.data_dir.join("snapshots").join("transfer");
    let service = RaftService::new(config.node_id, slot, transfer).server();
    let forward = ForwardService::new(forwarded).server();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        if let Err(e) = builder.add_service(service).add_service(forward).serve_with_incoming(incoming).await
        {
            tracing::error!(addr = %addr, error = %e, "the Raft service stopped");
        }
    });
    Ok(())
}

/// When each group's replica on this node was last confirmed current:
/// per group (the catalog, then the shards), the time a ReadIndex that
/// completed was asked, in milliseconds since `origin`, plus one (0:
/// never). Applied indexes only grow, so a replica confirmed at `t` holds
/// everything committed before `t`.
struct Freshness {
    origin: Instant,
    asked_ms: Vec<std::sync::atomic::AtomicU64>,
}

impl Freshness {
    fn new(shards: u32) -> Freshness {
        Freshness {
            origin: Instant::now(),
            asked_ms: (0..=shards).map(|_| std::sync::atomic::AtomicU64::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// The slot of group `group`.
    fn slot(group: u64) -> usize {
        (group - CATALOG_GROUP) as usize
    }

    fn confirmed(&self, group: u64, asked_ms: u64) {
        if let Some(a) = self.asked_ms.get(Freshness::slot(group)) {
            a.fetch_max(asked_ms + 1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// How long ago group `group` was confirmed current (`None`: never).
    fn age_ms(&self, group: u64, now_ms: u64) -> Option<u64> {
        let asked = self.asked_ms.get(Freshness::slot(group))?.load(std::sync::atomic::Ordering::Relaxed);
        (asked > 0).then(|| now_ms.saturating_sub(asked - 1))
    }
}

/// Renews every group's confirmation (a ReadIndex) every quarter of the
/// staleness bound, so that bounded reads rarely wait.
fn start_freshness(node: &Arc<Node>) {
    let weak = Arc::downgrade(node);
    let every = std::time::Duration::from_millis((node.config.read_staleness_ms / 4).clamp(25, 1000));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(node) = weak.upgrade() else { return };
            for group in all_groups(node.config.shards).into_iter().filter(|&g| node.driver.holds(g)) {
                let asked = node.freshness.now_ms();
                let barrier = node.driver.read_barrier(group);
                let weak = Arc::downgrade(&node);
                tokio::spawn(async move {
                    if barrier.await.is_ok() {
                        if let Some(node) = weak.upgrade() {
                            node.freshness.confirmed(group, asked);
                        }
                    }
                });
            }
        }
    });
}

/// How often each node brings the groups it leads toward the member
/// table, and learns the addresses of nodes that joined.
const MEMBERSHIP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(300);

/// Runs the membership task of a node in a cluster
/// ([`crate::cluster::membership`]): it keeps the transport, the
/// forwarder and the "not leader" addresses in step with the member
/// table; on the catalog's leader it records the founding nodes the table
/// does not list yet; and for every group this node leads it takes the
/// next step of [`membership::plan`].
fn start_membership(node: &Arc<Node>) {
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        let mut recorded_founders = false;
        loop {
            tokio::time::sleep(MEMBERSHIP_INTERVAL).await;
            let Some(node) = weak.upgrade() else { return };
            let (members, placement) = {
                let state = node.catalog.state.read();
                (state.members.clone(), state.placement.clone())
            };
            node.learn_addresses(&members);
            let me = node.config.node_id;
            if !recorded_founders && node.driver.leader_of(CATALOG_GROUP) == Some(me) {
                recorded_founders = node.record_founders(&members, &placement).await;
            }
            if members.is_empty() {
                continue;
            }
            let zone = node.config.zone.clone().unwrap_or_default();
            let recorded = placement.zones.get(&me).cloned().unwrap_or_default();
            if zone != recorded && members.get(&me).is_some_and(|m| m.state == MemberState::Active) {
                let node = node.clone();
                tokio::spawn(async move {
                    match node.admin(CatalogCommand::SetZone { node: me, zone: zone.clone() }).await {
                        Ok(()) => tracing::info!(zone = %zone, "this node's zone recorded"),
                        Err(e) => tracing::warn!(error = %e, "this node's zone is not recorded yet"),
                    }
                });
            }
            for group in all_groups(node.config.shards) {
                let Some(state) = node.driver.membership(group).await else { continue };
                if group != CATALOG_GROUP && moved_away(me, &state, &placement, group) {
                    // Its memory and files are freed now, not at the next
                    // start.
                    if let Err(e) = node.driver.drop_replica(group).await {
                        tracing::warn!(group, error = %e, "this node's moved-away replica is not dropped yet");
                    }
                    continue;
                }
                let wanted =
                    membership::Wanted::of(placement.wanted(group), &members, group == CATALOG_GROUP);
                match membership::plan(me, &state, &members, &wanted) {
                    None => {}
                    Some(membership::Step::Compact) => node.driver.compact_for_join(group),
                    Some(membership::Step::HandOver(to)) => {
                        if group == CATALOG_GROUP && !node.pipeline.drained_for_hand_over() {
                            // Every batch this node took is stepped first.
                            continue;
                        }
                        tracing::info!(
                            group,
                            to,
                            "this node leaves the group (removed, or its replica placed elsewhere): handing the group's leadership over"
                        );
                        node.driver.transfer_leader(group, to);
                    }
                    Some(membership::Step::Change(change)) => {
                        let what = membership::describe(&change);
                        let proposed = node.driver.propose_conf_change(group, change);
                        tokio::spawn(async move {
                            match proposed.await {
                                Ok(()) => tracing::info!(group, change = %what, "configuration changed"),
                                Err(e) => {
                                    tracing::warn!(group, change = %what, error = %e, "configuration change not made; tried again")
                                }
                            }
                        });
                    }
                }
            }
        }
    });
}

/// A node's Raft groups: the catalog (first: `Driver::start`
/// bootstraps it last), then every shard.
pub fn group_specs(catalog: &Arc<CatalogMachine>, shards: &[Arc<ShardMachine>]) -> Vec<GroupSpec> {
    let mut groups = vec![GroupSpec {
        id: CATALOG_GROUP,
        name: "catalog".into(),
        machine: catalog.clone() as Arc<dyn StateMachine>,
    }];
    for (s, m) in shards.iter().enumerate() {
        groups.push(GroupSpec {
            id: shard_group(s as u32),
            name: format!("shard {s}"),
            machine: m.clone() as Arc<dyn StateMachine>,
        });
    }
    groups
}

/// Whether this node's replica of shard group `group` moved to other
/// nodes: the configuration this node applied has members and holds it
/// neither as voter nor as learner (so the change that removed it is
/// committed), and the placement does not want it back.
fn moved_away(me: u64, state: &Membership, placement: &Placement, group: u64) -> bool {
    let configured = !state.voters.is_empty() || !state.learners.is_empty();
    let listed = [&state.voters, &state.learners, &state.voters_outgoing].iter().any(|ids| ids.contains(&me));
    configured && !listed && !placement.wanted(group).is_some_and(|w| w.contains(&me))
}

/// Longest a write waits, at a node that does not lead the catalog, for a
/// leader it can reach ([`Node::reachable_leader`]): about an election.
const LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How often a node hands the shard groups it leads to the catalog's
/// leader.
const COLOCATION_INTERVAL: std::time::Duration = std::time::Duration::from_millis(300);

/// Keeps every shard group's leader on the catalog's leader, where the
/// ingest stepper runs (`shard_leaders = "catalog"`): each node hands the
/// shard groups it leads to the catalog's leader when that is another
/// node. Until they move, the stepper proposes to them where they are.
fn start_leader_colocation(driver: &Arc<Driver>, catalog: &Arc<CatalogMachine>, shards: u32) {
    let weak = Arc::downgrade(driver);
    let catalog = Arc::downgrade(catalog);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(COLOCATION_INTERVAL).await;
            let Some(driver) = weak.upgrade() else { return };
            let me = driver.node_id();
            let Some(catalog_leader) = driver.leader_of(CATALOG_GROUP) else { continue };
            if catalog_leader == me {
                continue;
            }
            let status = driver.status();
            let Some(placement) = catalog.upgrade().map(|c| c.state.read().placement.clone()) else { return };
            for s in 0..shards {
                let group = shard_group(s);
                // Only where the catalog's leader holds a replica that
                // stays (never back to a voter on its way out, which has
                // just handed the group over): the other groups keep
                // their leaders, and the stepper proposes to them over
                // the Forward service.
                let stays = placement.wanted(group).is_none_or(|w| w.contains(&catalog_leader));
                let votes_there =
                    stays && status.iter().any(|g| g.id == group && g.voters.contains(&catalog_leader));
                if driver.leader_of(group) == Some(me) && votes_there {
                    driver.transfer_leader(group, catalog_leader);
                }
            }
        }
    });
}

/// How often a node hands the shard groups it leads to their preferred
/// leaders (`shard_leaders = "spread"`).
const SPREAD_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Spreads the shard groups' leaders over the nodes: shard `s` prefers
/// the `s mod n`-th of its group's `n` voters that the placement keeps (in id order), and a node that leads
/// a shard group it is not preferred for hands it to the preferred node
/// when that node is active (the driver transfers only to a voter that
/// answered recently). The ingest stepper, on the catalog's leader,
/// proposes to shard leaders on other nodes through their Forward service.
fn start_leader_spread(driver: &Arc<Driver>, catalog: &Arc<CatalogMachine>, shards: u32) {
    let weak = Arc::downgrade(driver);
    let catalog = Arc::downgrade(catalog);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(SPREAD_INTERVAL).await;
            let Some(driver) = weak.upgrade() else { return };
            let Some(placement) = catalog.upgrade().map(|c| c.state.read().placement.clone()) else { return };
            let me = driver.node_id();
            let status = driver.status();
            for s in 0..shards {
                let group = shard_group(s);
                let Some(g) = status.iter().find(|g| g.id == group && !g.voters.is_empty()) else { continue };
                // Among the voters that stay (a voter on its way out has
                // just handed the group over).
                let mut voters: Vec<u64> = g
                    .voters
                    .iter()
                    .copied()
                    .filter(|id| placement.wanted(group).is_none_or(|w| w.contains(id)))
                    .collect();
                if voters.is_empty() {
                    continue;
                }
                voters.sort_unstable();
                let preferred = voters[s as usize % voters.len()];
                if preferred != me && driver.leader_of(group) == Some(me) {
                    driver.transfer_leader(group, preferred);
                }
            }
        }
    });
}

/// How often the applied indexes are written to the manifest.
const MANIFEST_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes the manifest's applied indexes once a second, on a thread of its
/// own (an fsync), until the manifest is dropped.
fn start_manifest_flusher(manifest: &Arc<Manifest>) {
    let weak = Arc::downgrade(manifest);
    let spawned = std::thread::Builder::new().name("manifest".into()).spawn(move || loop {
        std::thread::sleep(MANIFEST_FLUSH_INTERVAL);
        let Some(manifest) = weak.upgrade() else { return };
        if let Err(e) = manifest.flush() {
            tracing::warn!(error = %e, "writing the manifest failed; retrying in a second");
        }
    });
    if let Err(e) = spawned {
        tracing::warn!(
            error = %e,
            "cannot start the manifest writer; applied indexes are recorded at snapshots only"
        );
    }
}

/// The wall clock, ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl LocalWrites for Node {
    fn ingest_here(
        &self,
        messages: Vec<String>,
        received_ms: i64,
        source: Source,
    ) -> BoxFuture<'_, Result<IngestReport, IngestError>> {
        Box::pin(Node::ingest_here(self, messages, received_ms, source))
    }

    fn propose_here(
        &self,
        group: u64,
        data: Vec<u8>,
        relay: bool,
    ) -> BoxFuture<'_, Result<(bool, bool), ReplicationError>> {
        Box::pin(async move {
            if group == CATALOG_GROUP || group > shard_group(self.config.shards - 1) {
                return Err(ReplicationError::NoSuchGroup { group });
            }
            let me = self.config.node_id;
            let leader = self.driver.leader_of(group).filter(|&l| l != me);
            if let (true, Some(leader), Some(forwarder)) = (relay, leader, &self.forwarder) {
                // Once: the leader does not hand it on again.
                return forwarder.propose(leader, group, data, false).await;
            }
            let applied = self.driver.propose(group, data).await?;
            Ok(applied.downcast::<ShardApplied>().map_or((false, false), |a| (a.skipped, a.gap)))
        })
    }

    fn admin_here(&self, command: CatalogCommand) -> BoxFuture<'_, Result<u64, CatalogError>> {
        Box::pin(async move {
            Node::admin_here(self, command).await?;
            Ok(self.catalog_applied())
        })
    }

    fn read_here(
        &self,
        request: Vec<u8>,
        deadline: Option<Instant>,
    ) -> BoxFuture<'_, Result<Vec<u8>, tonic::Status>> {
        Box::pin(async move {
            Node::read_here(self, request, deadline).await.map_err(crate::server::status::status)
        })
    }

    fn join(&self, member: Member, shards: u32) -> BoxFuture<'_, Result<Vec<Member>, CatalogError>> {
        Box::pin(async move {
            if shards != self.config.shards {
                return Err(AdminError::Invalid(format!(
                    "node {} has {shards} shards and this cluster {}: start it with --shards {}",
                    member.id, self.config.shards, self.config.shards
                ))
                .into());
            }
            let taken = self.catalog.state.read().members.get(&member.id).cloned();
            if let Some(known) =
                taken.filter(|k| k.state == MemberState::Active && k.raft_addr != member.raft_addr)
            {
                return Err(AdminError::Exists(format!(
                    "node {} is a member at {}; a new node takes a new id",
                    known.id, known.raft_addr
                ))
                .into());
            }
            self.admin(CatalogCommand::SetMember(member)).await?;
            Ok(self.catalog.state.read().members.values().cloned().collect())
        })
    }
}

impl IngestSink for Node {
    fn ingest(
        &self,
        messages: Vec<Json>,
        received_ms: i64,
        source: Source,
    ) -> BoxFuture<'_, Result<IngestReport, IngestError>> {
        let texts = messages.iter().map(|m| m.to_string()).collect();
        Box::pin(self.ingest_text(texts, received_ms, source))
    }
}

/// Drops, before anything is loaded, the shard replicas that this node's
/// log shows were moved to other nodes: a shard group whose applied
/// configuration holds this node neither as a voter nor as a learner (a
/// committed change removed it; a group this node never held has no
/// configuration at all). Its snapshot file goes first, then its log, so
/// that a crash in between leaves a log that still says so and the next
/// start finishes the job. Returns the groups dropped. A later move back
/// starts from a snapshot, as for a node that never held the shard.
fn drop_moved_away_replicas(
    store: &LogStore,
    snapshots: &Path,
    me: u64,
    shards: u32,
) -> Result<Vec<u64>, NodeError> {
    let mut dropped = Vec::new();
    for shard in 0..shards {
        let group = shard_group(shard);
        let conf = store.group(group)?.conf_state();
        let listed = |ids: &[u64]| ids.contains(&me);
        let configured = !conf.voters.is_empty() || !conf.learners.is_empty();
        if !configured
            || listed(&conf.voters)
            || listed(&conf.learners)
            || listed(&conf.voters_outgoing)
            || listed(&conf.learners_next)
        {
            continue;
        }
        let file = snapshots.join(format!("shard-{shard:03}.snap"));
        if file.exists() {
            let io = |source| NodeError::Io { path: file.display().to_string(), source };
            std::fs::remove_file(&file).map_err(io)?;
            std::fs::File::open(snapshots).and_then(|d| d.sync_all()).map_err(io)?;
        }
        store.clean_group(group)?;
        tracing::info!(
            shard,
            voters = ?conf.voters,
            "this node's replica of the shard was moved to other nodes: its data is dropped"
        );
        dropped.push(group);
    }
    Ok(dropped)
}

/// The catalog and every shard of a data directory's `snapshots` folder,
/// loaded in parallel on as many threads as there are cores.
#[allow(clippy::type_complexity)]
fn load_snapshots(
    snapshots: &Path,
    shards: u32,
    dedup_window_hours: i64,
) -> Result<(Arc<CatalogMachine>, Arc<Vec<Arc<ShardMachine>>>), NodeError> {
    // Snapshots load in parallel, on as many threads as there are cores:
    // item 0 is the catalog (the largest, so it starts first), item
    // `s + 1` shard `s`; each thread claims the next item when done.
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, shards as usize + 1);
    let next = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|scope| {
        let t = Instant::now();
        let loaders: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let (mut catalog, mut mine) = (None, Vec::new());
                    loop {
                        let item = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if item == 0 {
                            let t = Instant::now();
                            catalog = Some(CatalogMachine::open(snapshots, shards, dedup_window_hours)?);
                            tracing::info!(
                                secs = format_args!("{:.2}", t.elapsed().as_secs_f64()),
                                "catalog snapshot loaded"
                            );
                        } else if item <= shards {
                            mine.push(ShardMachine::open(snapshots, item - 1)?);
                        } else {
                            return Ok::<_, NodeError>((catalog, mine));
                        }
                    }
                })
            })
            .collect();
        let (mut catalog, mut loaded) = (None, Vec::new());
        for l in loaders {
            let (c, mine) = l.join().map_err(|_| NodeError::Panicked { what: "a snapshot loader" })??;
            catalog = catalog.or(c);
            loaded.extend(mine);
        }
        loaded.sort_by_key(|m| m.shard_id);
        tracing::info!(
            shards = loaded.len(),
            threads,
            secs = format_args!("{:.2}", t.elapsed().as_secs_f64()),
            "the catalog and the shard snapshots loaded"
        );
        // Item 0, the catalog, is always claimed first, and a loader that
        // fails returns its error above.
        let catalog = catalog.ok_or(NodeError::Panicked { what: "the catalog loader" })?;
        Ok::<_, NodeError>((
            Arc::new(catalog),
            Arc::new(loaded.into_iter().map(Arc::new).collect::<Vec<_>>()),
        ))
    })
}

/// Checks the data directory `dir` of a stopped node as `Node::open` would
/// (`cohort check-data`), without starting it and without writing: the meta
/// file, the manifest, every log file, every snapshot and every group's log
/// range. Returns a report, or every problem found.
pub fn check_data_dir(dir: &Path) -> Result<String, NodeError> {
    let checked = datadir::check_files(dir).map_err(|p| NodeError::data_dir(&p))?;
    if checked.fresh {
        return Ok(format!("{} is a new, empty data directory: a node starts on it empty", dir.display()));
    }
    let meta = checked.meta.as_ref().ok_or_else(|| NodeError::DataDir {
        problems: format!("{}: no {}", dir.display(), datadir::META_FILE),
    })?;
    let mut report = format!(
        "{}: node {}, {} shards; {} log files ({} bytes of records verified)",
        dir.display(),
        meta.node_id,
        meta.shards,
        checked.log.files,
        checked.log.bytes
    );
    if !checked.log.torn.is_empty() {
        for torn in &checked.log.torn {
            report
                .push_str(&format!("\nwarning: {torn}: a torn last record; the node cuts it when it starts"));
        }
        report.push_str(
            "\nthe snapshots and each group's log range are checked once the torn record is cut, when the node starts",
        );
        return Ok(report);
    }
    // Opening the log takes its lock: a running node makes this fail.
    let store = open_offline(dir)?;
    let (catalog, shards) =
        load_snapshots(&dir.join("snapshots"), meta.shards, NodeConfig::default().dedup_window_hours)?;
    let loaded = datadir::loaded_groups(&*catalog, shards.iter().map(|m| &**m as &dyn StateMachine));
    datadir::check_groups(checked.manifest.as_ref(), &store, &loaded).map_err(|p| NodeError::data_dir(&p))?;
    // As a start does: every entry of every group's log reads back.
    for id in store.groups() {
        store.group(id)?.check_readable()?;
    }
    if !meta.manifest {
        report.push_str(
            "\nwarning: no manifest (written by an older build): the node writes one when it starts",
        );
    }
    report.push_str(&format!("\nthe catalog and {} shard snapshots are whole, and every group's log reaches its recorded index and reads back: no problem found", shards.len()));
    Ok(report)
}

/// Rewrites every snapshot of the data directory `dir` in this build's
/// formats (`cohort upgrade`), for a node that is not running: each is
/// loaded (older formats are read) and written again at the same applied
/// index, so nothing is replayed differently. Returns what it did.
pub fn rewrite_snapshots(dir: &Path) -> Result<String, NodeError> {
    let meta_path = dir.join("cohort-node.json");
    let shown = meta_path.display().to_string();
    let text = std::fs::read_to_string(&meta_path)
        .map_err(|source| NodeError::Io { path: shown.clone(), source })?;
    let meta: DataDirMeta =
        serde_json::from_str(&text).map_err(|source| NodeError::Meta { path: shown, source })?;
    let snapshots = dir.join("snapshots");
    // Opening the log takes its lock: a node serving this directory makes
    // this fail instead of having its newer snapshots overwritten.
    let _log = open_offline(dir)?;
    let started = Instant::now();
    let (catalog, shards) =
        load_snapshots(&snapshots, meta.shards, NodeConfig::default().dedup_window_hours)?;
    let loaded = started.elapsed().as_secs_f64();
    let written = Instant::now();
    // Only files that exist are rewritten: writing one for a group that
    // never snapshotted would fix settings the node takes from its
    // configuration until then (the catalog's deduplication window).
    let mut machines: Vec<(u64, Arc<dyn StateMachine>)> = Vec::new();
    if catalog.snapshot_file().exists() {
        machines.push((CATALOG_GROUP, catalog.clone()));
    }
    let catalog_rewritten = !machines.is_empty();
    machines.extend(
        shards
            .iter()
            .filter(|m| m.snapshot_file().exists())
            .map(|m| (shard_group(m.shard_id), m.clone() as Arc<dyn StateMachine>)),
    );
    let manifest = Manifest::create(dir, Manifest::read(dir)?.unwrap_or_default())?;
    let shards_rewritten = machines.len() - usize::from(catalog_rewritten);
    let next = std::sync::atomic::AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| loop {
                    let item = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match machines.get(item) {
                        Some((id, m)) => {
                            let index =
                                m.snapshot().map_err(|source| NodeError::Rewrite { group: *id, source })?;
                            manifest.record_snapshot(*id, m.snapshot_file(), index)?;
                        }
                        None => return Ok::<(), NodeError>(()),
                    };
                })
            })
            .collect();
        writers
            .into_iter()
            .try_for_each(|w| w.join().map_err(|_| NodeError::Panicked { what: "a snapshot writer" })?)
    })?;
    Ok(format!(
        "rewrote {} and {shards_rewritten} shard snapshots of {} (loaded in {loaded:.2} s, written in {:.2} s)",
        if catalog_rewritten { "the catalog" } else { "no catalog (it has no snapshot yet)" },
        dir.display(),
        written.elapsed().as_secs_f64()
    ))
}

/// Opens the raft log of a stopped node's data directory `dir`, for an
/// offline command; the log's lock makes this fail while a node runs on it.
fn open_offline(dir: &Path) -> Result<LogStore, NodeError> {
    let raft = dir.join("raft");
    LogStore::open(&raft).map_err(|source| NodeError::LogInUse { dir: raft.display().to_string(), source })
}

/// What an API key may do. `Admin` may do everything; `Ingest` and `Read`
/// only what their name says (an ingest key cannot query, a read key cannot
/// write).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Send messages: `Ingest.*` and the Segment HTTP endpoints.
    Ingest,
    /// Ask questions: `Query.*`, reading saved segments, the schema and the
    /// node's status.
    Read,
    /// Everything, including the schema, saved segments and the operator's
    /// lists.
    Admin,
}

impl Role {
    /// Every role, weakest first.
    pub const ALL: [Role; 3] = [Role::Ingest, Role::Read, Role::Admin];

    /// The role's name as configured.
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    /// The role of a configured name, if it is one.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name.trim().to_ascii_lowercase())
    }

    /// Whether a key of this role may do what `needed` requires.
    pub fn allows(self, needed: Role) -> bool {
        self == Role::Admin || self == needed
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One API key of the configuration: `[[api_keys]] key = "..." role =
/// "read"`. Its `Debug` hides the key, so that printing a configuration
/// does not leak it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The secret a client presents.
    pub key: String,
    /// What it may do.
    pub role: Role,
}

impl std::fmt::Debug for ApiKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeyConfig").field("key", &"<hidden>").field("role", &self.role).finish()
    }
}
