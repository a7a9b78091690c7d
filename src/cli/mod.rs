//! The operator's command line: `cohort serve`, `cohort demo`, and the
//! client commands that talk to a node over gRPC (`load`, `count`, `check`,
//! `members`, `breakdown`, `profile`, `segment`, `schema`, `status`,
//! `rejected`, `merges`).
//!
//! - [`mod@self`]: the clap definitions, the connection to a node and the
//!   dispatch; [`main`] runs a command and turns its failure into
//!   `error: ...` on standard error and exit code 1 (clap exits with 2 on a
//!   usage error by itself).
//! - [`output`]: aligned tables, key/value blocks, formatters, JSON output.
//! - [`load`]: NDJSON (and gzip) files to `Ingest.IngestBatch` calls, with
//!   rejections mapped back to file lines.
//! - [`commands`]: every other command.
//! - [`logs`]: the node's logs (`--log-level`, `RUST_LOG`) for `serve`
//!   and `demo`.
//!
//! Every client command takes `--addr` (default `http://127.0.0.1:7070`, or
//! `COHORT_ADDR`) and `--json`, which replaces the tables with one JSON
//! document on standard output. `--api-key` (or `COHORT_API_KEY`) is sent
//! as `authorization: Bearer KEY` on every call; an `https://` address, or
//! `--tls-ca FILE` (or `COHORT_TLS_CA`) to trust a CA of one's own,
//! connects over TLS.

#![allow(clippy::print_stdout)]

pub mod commands;
pub mod load;
pub mod logs;
pub mod output;

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tonic::codegen::InterceptedService;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::proto::v1::admin_client::AdminClient;
use crate::proto::v1::ingest_client::IngestClient;
use crate::proto::v1::query_client::QueryClient;
use crate::proto::v1::segments_client::SegmentsClient;

/// The default address of a node's gRPC door.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";

/// Largest reply the CLI accepts, bytes. tonic's default (4 MiB) is too
/// small for a page of 10,000 members with several traits each.
const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;

/// Largest `--timeout`: a gRPC timeout has at most 8 digits, and tonic
/// panics on a duration it cannot write in 8 digits of hours.
const MAX_TIMEOUT_SECS: u64 = 99_999_999;

/// How long connecting to a node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `cohort`: the command-line program.
#[derive(Debug, Parser)]
#[command(
    name = "cohort",
    version,
    about = "Cohort: an in-memory profile database for customer data",
    long_about = "Cohort: an in-memory profile database for customer data.\n\n\
        `cohort serve` runs a node; `cohort demo` runs one loaded with generated \
        data. The other commands are clients of a running node's gRPC door \
        (--addr, default http://127.0.0.1:7070)."
)]
pub struct Cli {
    /// The node's gRPC address.
    #[arg(long, global = true, env = "COHORT_ADDR", default_value = DEFAULT_ADDR)]
    pub addr: String,
    /// Print one JSON document on standard output instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for each answer from the node (each batch for
    /// `load`, each page for `members`); at most 99999999, the largest a
    /// gRPC timeout can say in seconds.
    #[arg(long, global = true, default_value_t = 60, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(0..=MAX_TIMEOUT_SECS))]
    pub timeout: u64,
    /// The API key sent with every call (`authorization: Bearer KEY`),
    /// needed when the node has API keys configured.
    #[arg(long, global = true, env = "COHORT_API_KEY", hide_env_values = true, value_name = "KEY")]
    pub api_key: Option<String>,
    /// A PEM file of the CA to trust for the node's TLS certificate (one's
    /// own CA or a self-signed certificate); implies TLS. Without it, an
    /// `https://` address trusts the system's CAs.
    #[arg(long, global = true, env = "COHORT_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node: gRPC and Segment-compatible HTTP doors over a data
    /// directory (default ./cohort-data), until Ctrl-C or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Run a node loaded with generated profiles and events, print example
    /// segments, and keep serving (unless --no-serve).
    Demo(DemoArgs),
    /// Rewrite a stopped node's snapshots in this build's formats, so that
    /// it restarts at full speed after an upgrade (older formats are read,
    /// more slowly, in any case).
    Upgrade {
        /// The node's data directory.
        #[arg(long, value_name = "DIR", default_value = "cohort-data")]
        data_dir: PathBuf,
    },
    /// Check a stopped node's data directory as a start would (manifest,
    /// every log file, every snapshot, each group's log range) and report
    /// every problem found, without starting the node or writing anything.
    /// Exits non-zero when the node would refuse to start.
    CheckData {
        /// The node's data directory.
        #[arg(value_name = "DIR", default_value = "cohort-data")]
        data_dir: PathBuf,
    },
    /// The commands that talk to a running node.
    #[command(flatten)]
    Client(ClientCommand),
}

/// The commands that are clients of a node's gRPC door.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Load NDJSON files (one Segment Spec message a line, gzip allowed).
    Load(LoadArgs),
    /// Show or declare the schema of traits and events.
    Schema {
        /// What to do.
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Count the profiles in each segment.
    Count {
        /// The query time, RFC 3339 (default: the node's clock).
        #[arg(long, value_parser = parse_now)]
        now: Option<String>,
        /// In a cluster: answer from the shards that can, listing those
        /// that cannot, rather than failing.
        #[arg(long)]
        partial: bool,
        /// Segment expressions, or `segment:NAME` for a saved segment.
        #[arg(required = true, value_name = "EXPR")]
        expressions: Vec<String>,
    },
    /// Tell whether one profile is in each segment.
    Check {
        /// The query time, RFC 3339 (default: the node's clock).
        #[arg(long, value_parser = parse_now)]
        now: Option<String>,
        /// The profile: `user_id:V`, `anonymous_id:V` or a bare user id.
        id: String,
        /// Segment expressions, or `segment:NAME` for a saved segment.
        #[arg(required = true, value_name = "EXPR")]
        expressions: Vec<String>,
    },
    /// List the profiles in a segment, page by page.
    Members(MembersArgs),
    /// Count the members of a segment per value of a trait.
    Breakdown {
        /// How many values, the most frequent first.
        #[arg(long, default_value_t = 10)]
        top: u32,
        /// In a cluster: answer from the shards that can, listing those
        /// that cannot, rather than failing.
        #[arg(long)]
        partial: bool,
        /// The query time, RFC 3339 (default: the node's clock).
        #[arg(long, value_parser = parse_now)]
        now: Option<String>,
        /// The trait to break down by.
        #[arg(value_name = "TRAIT")]
        trait_name: String,
        /// The segment expression, or `segment:NAME`.
        #[arg(value_name = "EXPR")]
        expression: String,
    },
    /// Show everything about one profile.
    Profile {
        /// How many of the latest events to show.
        #[arg(long, default_value_t = 20)]
        events: u32,
        /// The profile: `user_id:V`, `anonymous_id:V` or a bare user id.
        id: String,
    },
    /// Create, list, show or delete saved segments.
    Segment {
        /// What to do.
        #[command(subcommand)]
        command: SegmentCommand,
    },
    /// Show the node's state: counters and its Raft groups.
    Status,
    /// The cluster as a whole: every node's state and every group's
    /// leader, term and replicas.
    Cluster {
        /// What to do.
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// List the latest rejected messages and fields, newest last.
    Rejected {
        /// How many to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// List the latest profile merges, newest last.
    Merges {
        /// How many to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

/// `cohort serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML file whose top-level keys are the node's settings (data_dir,
    /// node_id, shards, grpc_addr, http_addr, write_keys,
    /// max_message_bytes, max_batch_bytes, http_header_timeout_ms,
    /// http_idle_timeout_ms, dedup_window_hours, snapshot_entries,
    /// snapshot_log_bytes, query_threads, read_staleness_ms, replication_factor, zone, max_traits, max_events,
    /// max_properties_per_event, max_properties, max_name_bytes, api_keys,
    /// tls_cert, tls_key, insecure, raft_addr, peers, join, peer_tls_cert,
    /// peer_tls_key, peer_tls_ca, shard_leaders). Flags override it; COHORT_API_KEYS
    /// (`key:role,key:role`) adds API keys to the file's.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the Raft log and snapshots live [default: ./cohort-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    pub grpc_addr: Option<String>,
    /// Segment-compatible HTTP listen address [default: 127.0.0.1:7071].
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// Shards, fixed when the data directory is created [default: 8].
    #[arg(long, value_name = "N")]
    pub shards: Option<u32>,
    /// PEM certificate chain to serve both doors over TLS with.
    #[arg(long, env = "COHORT_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "COHORT_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Serve a non-loopback address even without API keys or without TLS
    /// (refused otherwise).
    #[arg(long)]
    pub insecure: bool,
    /// This node's Raft id in its cluster [default: 1].
    #[arg(long, value_name = "N")]
    pub node_id: Option<u64>,
    /// Listen address of the Raft service between nodes
    /// [default: 127.0.0.1:7170].
    #[arg(long, value_name = "ADDR")]
    pub raft_addr: Option<String>,
    /// A node of the cluster, this one included, as ID=RAFT_ADDR,GRPC_ADDR;
    /// once per node. Every group is replicated on --replication-factor of
    /// them.
    #[arg(long = "peer", value_name = "ID=RAFT,GRPC")]
    pub peers: Vec<crate::node::PeerConfig>,
    /// Join a running cluster through the member whose Raft service is at
    /// ADDR (a new node: empty data directory, a new --node-id, no
    /// --peer). It follows the catalog as a learner and takes the replicas
    /// the placement gives it (`cohort cluster rebalance`, `move-replica`,
    /// or a group short of voters), each as a learner until it has caught
    /// up, then as a voter.
    #[arg(long, value_name = "ADDR", conflicts_with = "peers")]
    pub join: Option<String>,
    /// In a cluster: how stale (milliseconds) a count, breakdown or
    /// members page may read [default: 1000].
    #[arg(long, value_name = "MS")]
    pub read_staleness_ms: Option<u64>,
    /// Voters of each group when this node founds a cluster (every node
    /// when there are fewer); the cluster keeps the first leader's
    /// [default: 3].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub replication_factor: Option<u32>,
    /// This node's zone (a rack, an availability zone): each group's
    /// replicas go to as many zones as there are.
    #[arg(long, value_name = "ZONE")]
    pub zone: Option<String>,
    /// Where the shard groups' leaders go in a cluster: with the catalog's
    /// leader, or spread over the nodes [default: catalog].
    #[arg(long, value_enum, value_name = "PLACEMENT")]
    pub shard_leaders: Option<crate::node::ShardLeaders>,
    /// PEM certificate chain this node shows the other nodes: mutual TLS
    /// on the Raft service, with --peer-tls-key and --peer-tls-ca.
    #[arg(long, env = "COHORT_PEER_TLS_CERT", value_name = "FILE")]
    pub peer_tls_cert: Option<PathBuf>,
    /// PEM private key of --peer-tls-cert.
    #[arg(long, env = "COHORT_PEER_TLS_KEY", value_name = "FILE")]
    pub peer_tls_key: Option<PathBuf>,
    /// PEM certificate of the CA that signs every node's certificate; the
    /// Raft service serves only connections with a certificate it signed.
    #[arg(long, env = "COHORT_PEER_TLS_CA", value_name = "FILE")]
    pub peer_tls_ca: Option<PathBuf>,
    /// Log level on standard error: off, error, warn, info, debug, trace.
    /// RUST_LOG, when set, overrides it.
    #[arg(long, value_name = "LEVEL", default_value_t)]
    pub log_level: logs::LogLevel,
}

/// `cohort demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Generated profiles.
    #[arg(long, default_value_t = 1_000_000)]
    pub profiles: u64,
    /// Shards.
    #[arg(long, default_value_t = 8)]
    pub shards: u32,
    /// Seed of the generated data.
    #[arg(long, default_value_t = cohort_datagen::DEFAULT_SEED)]
    pub seed: u64,
    /// Build the node's data in this directory, which must be new or empty
    /// (default: a new directory under the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    pub grpc_addr: Option<String>,
    /// Segment-compatible HTTP listen address [default: 127.0.0.1:7071].
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// Print the examples and exit instead of serving.
    #[arg(long)]
    pub no_serve: bool,
    /// Serve a non-loopback address (the demo has no API keys and no TLS).
    #[arg(long)]
    pub insecure: bool,
    /// Log level on standard error: off, error, warn, info, debug, trace.
    /// RUST_LOG, when set, overrides it.
    #[arg(long, value_name = "LEVEL", default_value_t)]
    pub log_level: logs::LogLevel,
}

/// `cohort load`.
#[derive(Debug, Args)]
pub struct LoadArgs {
    /// NDJSON files, gzip-compressed when the name ends in `.gz` or the
    /// data starts with the gzip magic; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Messages per `IngestBatch` call (a batch is also cut at 2 MiB).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
}

/// `cohort members`.
#[derive(Debug, Args)]
pub struct MembersArgs {
    /// Traits to show with each member, comma-separated.
    #[arg(long, value_delimiter = ',', value_name = "A,B")]
    pub traits: Vec<String>,
    /// Stop after this many members (0: all of them).
    #[arg(long, default_value_t = 100)]
    pub limit: u64,
    /// Members per page from the node (default: the node's, 1000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page_size: Option<u32>,
    /// Resume after this cursor, printed by an earlier run.
    #[arg(long)]
    pub cursor: Option<String>,
    /// The query time, RFC 3339 (default: the node's clock).
    #[arg(long, value_parser = parse_now)]
    pub now: Option<String>,
    /// The segment expression, or `segment:NAME`.
    #[arg(value_name = "EXPR")]
    pub expression: String,
}

/// `cohort schema ...`.
#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Show the traits and event properties with their types (read page
    /// by page from the node), and the caps on the schema.
    Show {
        /// Only traits and events whose names start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Entries asked for per page (the node caps it at 10000).
        #[arg(long, default_value_t = 1000)]
        page_size: u32,
    },
    /// Declare trait types from a JSON file: `{"traits": {"name": "type"}}`
    /// (`-` reads standard input); prints the resulting schema.
    Apply {
        /// The JSON file.
        file: PathBuf,
    },
}

/// `cohort cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Ask the node of --addr for the cluster's nodes, then each node for
    /// its state: which are up, which node leads each group, and how far
    /// each replica has applied.
    Status,
    /// Add a node to the cluster (the node itself starts with `cohort
    /// serve --join`, which does the same): it follows the catalog as a
    /// learner, and takes the replicas of groups short of the replication
    /// factor; `rebalance` then gives it its share. Waits until every
    /// group matches the placement.
    AddNode {
        /// Its node id (never used before in this cluster).
        node_id: u64,
        /// Its Raft service address.
        #[arg(long, value_name = "ADDR")]
        raft_addr: String,
        /// Its gRPC address.
        #[arg(long, value_name = "ADDR")]
        grpc_addr: String,
    },
    /// Remove a node from the cluster: each of its replicas moves to the
    /// node with the fewest (a learner that catches up, then swapped in),
    /// every group it leads hands its leadership over first. Waits until
    /// no group holds it; then stop the node.
    RemoveNode {
        /// Its node id.
        node_id: u64,
    },
    /// Move one group's replica from node FROM to node TO: TO joins as a
    /// learner, catches up from a snapshot and the log, then one joint
    /// configuration change makes it a voter and removes FROM. Reads and
    /// writes go on meanwhile. Waits until every group matches the
    /// placement.
    MoveReplica {
        /// The shard (0, 1, ...), `catalog`, or group:N.
        shard: String,
        /// The node that gives its replica up.
        from: u64,
        /// The node that takes it.
        to: u64,
    },
    /// Even the replicas over the nodes (after an add-node): the placement
    /// moves replicas from the node with the most to the node with the
    /// fewest until no two differ by more than one, and each group moves
    /// as `move-replica` does. Waits until every group matches.
    Rebalance,
}

/// `cohort segment ...`.
#[derive(Debug, Subcommand)]
pub enum SegmentCommand {
    /// Save a segment under a name.
    Create {
        /// The segment's name.
        name: String,
        /// Its expression.
        #[arg(value_name = "EXPR")]
        expression: String,
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List the saved segments.
    List,
    /// Show one saved segment.
    Show {
        /// The segment's name.
        name: String,
    },
    /// Delete a saved segment.
    Delete {
        /// The segment's name.
        name: String,
    },
}

/// Checks an RFC 3339 `--now` before anything is sent.
fn parse_now(text: &str) -> Result<String, String> {
    match crate::model::parse_rfc3339_ms(text) {
        Some(_) => Ok(text.trim().to_string()),
        None => Err(format!("{text:?} is not an RFC 3339 time (like 2026-11-01T00:00:00Z)")),
    }
}

/// Parses the command line, runs the command and returns the exit code:
/// 0 on success, 1 on failure (after printing `error: ...` on standard
/// error). Usage errors exit with 2 inside the parser.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): nothing to report.
        Err(e) if e.downcast_ref::<output::Closed>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// Prints a failure on standard error: the error and its causes, and for a
/// query error that names a position, the expression with a caret under it.
fn report(e: &anyhow::Error) {
    eprintln!("error: {}", error_text(e));
    if let Some(rpc) = e.downcast_ref::<RpcError>() {
        if let (Some(expr), Some(pos)) = (&rpc.expression, position_in(rpc.status.message())) {
            let (line, under) = caret(expr, pos);
            eprintln!("  {line}");
            eprintln!("  {under}");
        }
    }
}

/// Most characters of an expression shown above the caret.
const CARET_WINDOW_CHARS: usize = 100;

/// The expression (or, when long, a window of [`CARET_WINDOW_CHARS`]
/// characters around the 1-based character `position`, `…` marking what is
/// left out), and the line with a caret under the position.
fn caret(expr: &str, position: usize) -> (String, String) {
    let total = expr.chars().count();
    let at = position.saturating_sub(1);
    if total <= CARET_WINDOW_CHARS {
        return (expr.to_string(), format!("{}^", " ".repeat(at)));
    }
    let first = at.saturating_sub(CARET_WINDOW_CHARS / 4).min(total - CARET_WINDOW_CHARS);
    let window: String = expr.chars().skip(first).take(CARET_WINDOW_CHARS).collect();
    let before = if first > 0 { "…" } else { "" };
    let after = if first + CARET_WINDOW_CHARS < total { "…" } else { "" };
    let offset = at.saturating_sub(first) + before.chars().count();
    (format!("{before}{window}{after}"), format!("{}^", " ".repeat(offset)))
}

/// An error and its causes joined by `: `, each said once (tonic's transport
/// errors repeat themselves: `tcp connect error: tcp connect error: ...`).
fn error_text(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if parts.last().is_none_or(|last| !last.ends_with(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// The 1-based character position a segment error names (`... at position
/// 12 ...`), if any.
fn position_in(message: &str) -> Option<usize> {
    let rest = &message[message.find("position ")? + "position ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|p| *p > 0)
}

/// Runs one parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let json = cli.json;
    let timeout = Duration::from_secs(cli.timeout.max(1));
    let command = match cli.command {
        Command::Serve(args) => {
            logs::init(args.log_level)?;
            return commands::serve(*args).await;
        }
        Command::Demo(args) => {
            logs::init(args.log_level)?;
            return commands::demo(args).await;
        }
        Command::Upgrade { data_dir } => {
            let report = tokio::task::spawn_blocking(move || crate::node::rewrite_snapshots(&data_dir))
                .await
                .map_err(|e| anyhow::anyhow!("the upgrade stopped: {e}"))??;
            println!("{report}");
            return Ok(());
        }
        Command::CheckData { data_dir } => {
            let report = tokio::task::spawn_blocking(move || crate::node::check_data_dir(&data_dir))
                .await
                .map_err(|e| anyhow::anyhow!("the check stopped: {e}"))??;
            println!("{report}");
            return Ok(());
        }
        Command::Client(command) => command,
    };
    if let ClientCommand::Load(args) = &command {
        // A missing file is reported before anything else, node or not.
        load::check_files(&args.files)?;
    }
    let access = Access { api_key: cli.api_key.clone(), tls_ca: cli.tls_ca.clone() };
    let node = Node::connect(&cli.addr, timeout, &access).await?;
    match command {
        ClientCommand::Load(args) => load::run(&node, &args, json).await,
        ClientCommand::Schema { command: SchemaCommand::Show { prefix, page_size } } => {
            commands::schema_show(&node, &prefix, page_size, json).await
        }
        ClientCommand::Schema { command: SchemaCommand::Apply { file } } => {
            commands::schema_apply(&node, &file, json).await
        }
        ClientCommand::Count { now, partial, expressions } => {
            commands::count(&node, now, partial, expressions, json).await
        }
        ClientCommand::Check { now, id, expressions } => {
            commands::check(&node, now, id, expressions, json).await
        }
        ClientCommand::Members(args) => commands::members(&node, args, json).await,
        ClientCommand::Breakdown { top, partial, now, trait_name, expression } => {
            commands::breakdown(&node, top, partial, now, trait_name, expression, json).await
        }
        ClientCommand::Profile { events, id } => commands::profile(&node, events, id, json).await,
        ClientCommand::Segment { command } => commands::segment(&node, command, json).await,
        ClientCommand::Status => commands::status(&node, json).await,
        ClientCommand::Cluster { command: ClusterCommand::Status } => {
            commands::cluster_status(&node, &access, timeout, json).await
        }
        ClientCommand::Cluster { command: ClusterCommand::AddNode { node_id, raft_addr, grpc_addr } } => {
            commands::cluster_set_member(&node, &access, timeout, node_id, raft_addr, grpc_addr, false, json)
                .await
        }
        ClientCommand::Cluster { command: ClusterCommand::RemoveNode { node_id } } => {
            let none = String::new();
            commands::cluster_set_member(&node, &access, timeout, node_id, none.clone(), none, true, json)
                .await
        }
        ClientCommand::Cluster { command: ClusterCommand::MoveReplica { shard, from, to } } => {
            commands::cluster_move_replica(&node, &access, timeout, &shard, from, to, json).await
        }
        ClientCommand::Cluster { command: ClusterCommand::Rebalance } => {
            commands::cluster_rebalance(&node, &access, timeout, json).await
        }
        ClientCommand::Rejected { limit } => commands::rejected(&node, limit, json).await,
        ClientCommand::Merges { limit } => commands::merges(&node, limit, json).await,
    }
}

/// How the CLI proves who it is and whom it trusts.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The API key sent with every call.
    pub api_key: Option<String>,
    /// The CA file to trust for TLS.
    pub tls_ca: Option<PathBuf>,
}

/// Puts the API key on every outgoing call.
#[derive(Clone)]
pub struct SendKey(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for SendKey {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// The channel every client uses: the connection with the key added.
pub type Transport = InterceptedService<Channel, SendKey>;

/// A connection to a node's gRPC door, with the per-call time limit.
pub struct Node {
    channel: Channel,
    key: SendKey,
    addr: String,
    timeout: Duration,
}

impl Node {
    /// Connects to `addr` (`http://` is assumed when no scheme is given,
    /// `https://` when `access` names a CA), over TLS for `https://`.
    pub async fn connect(addr: &str, timeout: Duration, access: &Access) -> anyhow::Result<Node> {
        let addr = match (addr.contains("://"), &access.tls_ca) {
            (true, _) => addr.to_string(),
            (false, Some(_)) => format!("https://{addr}"),
            (false, None) => format!("http://{addr}"),
        };
        let mut endpoint = Endpoint::from_shared(addr.clone())
            .with_context(|| format!("--addr {addr:?} is not a valid address"))?
            .connect_timeout(CONNECT_TIMEOUT);
        let https = addr.starts_with("https://");
        match (&access.tls_ca, https) {
            (Some(ca), true) => {
                let pem = std::fs::read(ca)
                    .with_context(|| format!("cannot read the CA certificate {} (--tls-ca)", ca.display()))?;
                endpoint = endpoint
                    .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                    .context("cannot set up TLS")?;
            }
            (Some(_), false) => {
                anyhow::bail!("--tls-ca (or COHORT_TLS_CA) is for TLS, but the address {addr} says http://; use https://")
            }
            (None, true) => {
                endpoint = endpoint
                    .tls_config(ClientTlsConfig::new().with_native_roots())
                    .context("cannot set up TLS")?;
            }
            (None, false) => {}
        }
        let key = match &access.api_key {
            None => SendKey(None),
            Some(key) => SendKey(Some(format!("Bearer {}", key.trim()).parse().map_err(|_| {
                anyhow::anyhow!("the API key (--api-key or COHORT_API_KEY) holds characters that cannot be sent in a header")
            })?)),
        };
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach a Cohort node at {addr} (is `cohort serve` running there? see --addr or COHORT_ADDR{})", if https { "; for TLS, --tls-ca or COHORT_TLS_CA" } else { "" }))?;
        Ok(Node { channel, key, addr, timeout })
    }

    fn transport(&self) -> Transport {
        InterceptedService::new(self.channel.clone(), self.key.clone())
    }

    /// The address connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// A client of the Ingest service.
    pub fn ingest(&self) -> IngestClient<Transport> {
        IngestClient::new(self.transport()).max_decoding_message_size(MAX_REPLY_BYTES)
    }

    /// A client of the Query service.
    pub fn query(&self) -> QueryClient<Transport> {
        QueryClient::new(self.transport()).max_decoding_message_size(MAX_REPLY_BYTES)
    }

    /// A client of the Segments service.
    pub fn segments(&self) -> SegmentsClient<Transport> {
        SegmentsClient::new(self.transport()).max_decoding_message_size(MAX_REPLY_BYTES)
    }

    /// A client of the Admin service.
    pub fn admin(&self) -> AdminClient<Transport> {
        AdminClient::new(self.transport()).max_decoding_message_size(MAX_REPLY_BYTES)
    }

    /// A request carrying the time limit as its `grpc-timeout`, which the
    /// node turns into the query's deadline.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Awaits one call (or one page of a stream) within the time limit.
    pub async fn call<T>(&self, call: impl Future<Output = Result<T, tonic::Status>>) -> Result<T, RpcError> {
        let late = || {
            let message = format!("no answer within {} s (see --timeout)", self.timeout.as_secs());
            RpcError::new(tonic::Status::deadline_exceeded(message), &self.addr)
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(reply)) => Ok(reply),
            // tonic's own enforcement of the request's `grpc-timeout`.
            Ok(Err(status))
                if status.code() == tonic::Code::Cancelled && status.message() == "Timeout expired" =>
            {
                Err(late())
            }
            Ok(Err(status)) => Err(RpcError::new(status, &self.addr)),
            Err(_) => Err(late()),
        }
    }
}

/// A call the node refused or could not answer: the gRPC status, and the
/// expression it was about when there was one (to point at a position).
#[derive(Debug)]
pub struct RpcError {
    /// The status returned (or made up for a timeout).
    pub status: tonic::Status,
    /// The node's address.
    pub addr: String,
    /// The single expression the call carried, if any.
    pub expression: Option<String>,
}

impl RpcError {
    fn new(status: tonic::Status, addr: &str) -> RpcError {
        RpcError { status, addr: addr.to_string(), expression: None }
    }

    /// Attaches the expression the call was about.
    pub fn about(mut self, expression: &str) -> RpcError {
        self.expression = Some(expression.to_string());
        self
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = code_name(self.status.code());
        let message = self.status.message();
        if message.is_empty() {
            write!(f, "{} ({code})", self.status.code().description())?;
        } else {
            write!(f, "{message} ({code})")?;
        }
        if self.status.code() == tonic::Code::Unavailable {
            write!(f, "; is the node at {} still running?", self.addr)?;
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

/// The canonical gRPC name of a status code, as the proto's comments use.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn positions_are_found_in_segment_errors() {
        assert_eq!(position_in("unknown trait `contry` at position 1"), Some(1));
        assert_eq!(position_in("syntax error at position 12: expected a value, found end"), Some(12));
        assert_eq!(position_in("no position here"), None);
        assert_eq!(position_in("unknown segment \"x\""), None);
    }

    #[test]
    fn the_caret_points_at_the_position_of_short_and_long_expressions() {
        assert_eq!(caret("country = ", 11), ("country = ".to_string(), format!("{}^", " ".repeat(10))));
        let long = format!("{}country = ", "a OR ".repeat(4_000));
        let position = long.chars().count() + 1;
        let (line, under) = caret(&long, position);
        assert!(line.starts_with('…') && line.ends_with("country = "), "{line}");
        assert!(line.chars().count() <= CARET_WINDOW_CHARS + 2);
        // The caret stands just past the window's last character.
        assert_eq!(under.chars().count(), line.chars().count() + 1);
        let (line, under) = caret(&long, 3);
        assert!(line.starts_with("a OR a") && line.ends_with('…'), "{line}");
        assert_eq!(under, "  ^");
    }

    #[test]
    fn repeated_causes_are_said_once() {
        let e = anyhow::anyhow!("refused").context("tcp connect error").context("tcp connect error");
        assert_eq!(error_text(&e.context("cannot reach")), "cannot reach: tcp connect error: refused");
        let e = anyhow::anyhow!("refused").context("tcp connect error: refused").context("cannot reach");
        assert_eq!(error_text(&e), "cannot reach: tcp connect error: refused");
    }

    #[test]
    fn now_must_be_rfc3339() {
        assert_eq!(parse_now("2026-11-01T00:00:00Z").as_deref(), Ok("2026-11-01T00:00:00Z"));
        assert!(parse_now("yesterday").is_err());
    }

    #[test]
    fn rpc_errors_show_message_and_code() {
        let e = RpcError::new(tonic::Status::not_found("no saved segment \"x\""), "http://h:1");
        assert_eq!(e.to_string(), "no saved segment \"x\" (NOT_FOUND)");
        let e = RpcError::new(tonic::Status::unavailable("shard 3 cannot answer"), "http://h:1");
        assert_eq!(
            e.to_string(),
            "shard 3 cannot answer (UNAVAILABLE); is the node at http://h:1 still running?"
        );
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = Cli::try_parse_from(["cohort", "count", "--json", "a = 1", "--addr", "h:1"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.addr, "h:1");
        let cli = Cli::try_parse_from(["cohort", "members", "--traits", "a,b", "x = 1"]).unwrap();
        match cli.command {
            Command::Client(ClientCommand::Members(m)) => assert_eq!(m.traits, vec!["a", "b"]),
            other => panic!("parsed as {other:?}"),
        }
    }
}
