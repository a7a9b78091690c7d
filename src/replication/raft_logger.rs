//! raft-rs's own log records, forwarded to `tracing`.
//!
//! raft-rs 0.7 logs through `slog` (elections, leadership changes, refused
//! messages, snapshot handling). [`TracingDrain`] hands each record to
//! `tracing` under the target `raft`, at the matching level, with the
//! record's key-value pairs (the group, raft-rs's `raft_id`, terms and
//! indexes) as one `kv` field: `tracing` wants field names known at compile
//! time, and raft-rs's keys are not.

use std::fmt::{self, Write as _};

use tracing::Level;

/// The `tracing` target raft-rs's records are logged under
/// (`RUST_LOG=raft=debug` selects them).
pub const TARGET: &str = "raft";

/// A `slog` drain that forwards every record to `tracing`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingDrain;

/// The `tracing` level of a `slog` level (`slog` has a `Critical` above
/// `Error`; `tracing` has none).
pub fn level_of(level: slog::Level) -> Level {
    match level {
        slog::Level::Critical | slog::Level::Error => Level::ERROR,
        slog::Level::Warning => Level::WARN,
        slog::Level::Info => Level::INFO,
        slog::Level::Debug => Level::DEBUG,
        slog::Level::Trace => Level::TRACE,
    }
}

/// Whether `tracing` would record an event of raft-rs at `level`. The
/// macros need the level as a constant, hence one call per level.
fn enabled(level: Level) -> bool {
    match level {
        Level::ERROR => tracing::enabled!(target: TARGET, Level::ERROR),
        Level::WARN => tracing::enabled!(target: TARGET, Level::WARN),
        Level::INFO => tracing::enabled!(target: TARGET, Level::INFO),
        Level::DEBUG => tracing::enabled!(target: TARGET, Level::DEBUG),
        Level::TRACE => tracing::enabled!(target: TARGET, Level::TRACE),
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let level = level_of(record.level());
        if !enabled(level) {
            return Ok(());
        }
        let mut kv = KeyValues(String::new());
        // Writing into a String cannot fail; a value's own formatting
        // error leaves that value out.
        let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
        let _ = slog::KV::serialize(values, record, &mut kv);
        let (message, kv) = (record.msg(), kv.0);
        match level {
            Level::ERROR => tracing::error!(target: TARGET, kv = %kv, "{message}"),
            Level::WARN => tracing::warn!(target: TARGET, kv = %kv, "{message}"),
            Level::INFO => tracing::info!(target: TARGET, kv = %kv, "{message}"),
            Level::DEBUG => tracing::debug!(target: TARGET, kv = %kv, "{message}"),
            Level::TRACE => tracing::trace!(target: TARGET, kv = %kv, "{message}"),
        }
        Ok(())
    }

    fn is_enabled(&self, level: slog::Level) -> bool {
        enabled(level_of(level))
    }
}

/// A record's key-value pairs as `key=value key=value`.
struct KeyValues(String);

impl slog::Serializer for KeyValues {
    fn emit_arguments(&mut self, key: slog::Key, value: &fmt::Arguments<'_>) -> slog::Result {
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        write!(self.0, "{key}={value}").map_err(|_| slog::Error::Other)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer that keeps what a subscriber writes.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn slog_records_reach_tracing_at_their_level_with_their_key_values() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let logger = slog::Logger::root(TracingDrain, slog::o!("group" => 3));
            slog::info!(logger, "became leader at term {}", 2; "raft_id" => 1);
            slog::warn!(logger, "a warning");
            slog::debug!(logger, "filtered out");
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].contains("INFO") && lines[0].contains("raft: became leader at term 2"), "{text}");
        assert!(lines[0].contains("raft_id=1") && lines[0].contains("group=3"), "{text}");
        assert!(lines[1].contains("WARN") && lines[1].contains("a warning"), "{text}");
        assert_eq!(level_of(slog::Level::Critical), Level::ERROR);
        assert_eq!(level_of(slog::Level::Trace), Level::TRACE);
    }
}
