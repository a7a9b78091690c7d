//! The node's logs: a `tracing` subscriber writing to standard error, set
//! up by `cohort serve` and `cohort demo` before the node opens.
//!
//! `--log-level LEVEL` (default `info`) sets the level. `RUST_LOG`, when
//! set and not empty, overrides it with its own directives
//! (`RUST_LOG=cohort=debug,raft=info`). Under `--log-level`, two groups of
//! libraries are held back, since their messages come in numbers:
//! raft-rs's (target `raft`: one set of election messages per group, and a
//! node has a group per shard) show only from `debug` on, and the network
//! libraries' (h2, hyper, tonic, tower, rustls) only up to `warn`.
//!
//! raft-rs logs through `slog`
//! ([`TracingDrain`](crate::replication::raft_logger::TracingDrain));
//! raft-engine and rustls log through the `log` crate, which the subscriber
//! takes in too (`tracing-log`).

use std::fmt;
use std::io::IsTerminal as _;
use std::str::FromStr;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;

/// A `--log-level` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLevel(pub LevelFilter);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(LevelFilter::INFO)
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // LevelFilter prints in capitals; the flag takes lower case.
        f.write_str(&self.0.to_string().to_ascii_lowercase())
    }
}

/// The values `--log-level` takes.
pub const LEVELS: &str = "off, error, warn, info, debug, trace";

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let level = match text.trim().to_ascii_lowercase().as_str() {
            "off" => LevelFilter::OFF,
            "error" => LevelFilter::ERROR,
            "warn" | "warning" => LevelFilter::WARN,
            "info" => LevelFilter::INFO,
            "debug" => LevelFilter::DEBUG,
            "trace" => LevelFilter::TRACE,
            _ => return Err(format!("{text:?} is not a log level (one of {LEVELS})")),
        };
        Ok(LogLevel(level))
    }
}

/// Libraries whose messages are held to `warn` under `--log-level`.
const NETWORK_TARGETS: [&str; 8] =
    ["h2", "hyper", "hyper_util", "tonic", "tower", "axum", "rustls", "tokio_rustls"];

/// The filter directives of `--log-level LEVEL` (see the module's
/// documentation).
pub fn directives(level: LogLevel) -> String {
    let level = level.0;
    let raft = if level >= LevelFilter::DEBUG { level } else { level.min(LevelFilter::WARN) };
    let network = level.min(LevelFilter::WARN);
    let name = |l: LevelFilter| l.to_string().to_ascii_lowercase();
    let mut out = vec![name(level), format!("raft={}", name(raft)), format!("raft_engine={}", name(level))];
    out.extend(NETWORK_TARGETS.iter().map(|t| format!("{t}={}", name(network))));
    out.join(",")
}

/// Where the filter came from, for messages.
fn source_of(from_env: bool) -> &'static str {
    if from_env {
        "RUST_LOG"
    } else {
        "--log-level"
    }
}

/// Installs the subscriber: events at or above `level` (or as `RUST_LOG`
/// says, when set) go to standard error, coloured only on a terminal.
/// Fails on a `RUST_LOG` it cannot parse, or when a subscriber is already
/// installed.
pub fn init(level: LogLevel) -> anyhow::Result<()> {
    let env = std::env::var("RUST_LOG").ok().filter(|v| !v.trim().is_empty());
    let text = env.clone().unwrap_or_else(|| directives(level));
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse(&text)
        .map_err(|e| anyhow::anyhow!("{}={text:?} is not a log filter: {e}", source_of(env.is_some())))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot set up the logs: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_others_are_refused() {
        assert_eq!("debug".parse::<LogLevel>(), Ok(LogLevel(LevelFilter::DEBUG)));
        assert_eq!(" WARN ".parse::<LogLevel>(), Ok(LogLevel(LevelFilter::WARN)));
        assert_eq!(LogLevel::default().to_string(), "info");
        let e = "loud".parse::<LogLevel>().unwrap_err();
        assert!(e.contains("\"loud\"") && e.contains(LEVELS), "{e}");
    }

    #[test]
    fn raft_shows_from_debug_on_and_the_network_stays_at_warn() {
        let info = directives(LogLevel(LevelFilter::INFO));
        assert!(info.starts_with("info,raft=warn,raft_engine=info,h2=warn"), "{info}");
        let debug = directives(LogLevel(LevelFilter::DEBUG));
        assert!(debug.starts_with("debug,raft=debug,raft_engine=debug,h2=warn"), "{debug}");
        let error = directives(LogLevel(LevelFilter::ERROR));
        assert!(error.starts_with("error,raft=error,raft_engine=error,h2=error"), "{error}");
        let off = directives(LogLevel(LevelFilter::OFF));
        assert!(off.starts_with("off,raft=off"), "{off}");
        for level in ["off", "error", "warn", "info", "debug", "trace"] {
            let text = directives(level.parse().unwrap());
            assert!(EnvFilter::builder().parse(&text).is_ok(), "{text}");
        }
    }
}
