//! Ordered parallel generation: worker threads turn chunks of consecutive
//! profiles into bytes, and the caller's sink receives the chunks in profile
//! order, so the output is identical for any thread count.
//!
//! Worker `t` of `n` takes chunks `t`, `t + n`, `t + 2n`, ... and hands each
//! over on its own bounded channel; the consumer reads the channels round
//! robin, which restores the chunk order without a reorder buffer. Emptied
//! buffers go back to their worker to be reused. Memory is bounded by
//! about `3 × threads` chunks.

use std::io;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use crate::{csv, json, profile, Config};

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Segment Spec messages, one per line.
    Ndjson,
    /// `profiles.csv` and `events.csv` rows.
    Csv,
}

/// The bytes of a run of consecutive profiles.
#[derive(Debug, Default)]
pub struct Chunk {
    /// Index of the first profile.
    pub first: u64,
    /// Number of profiles.
    pub profiles: u64,
    /// Number of messages (one identify plus one track per event).
    pub messages: u64,
    /// NDJSON lines, or `profiles.csv` rows.
    pub main: Vec<u8>,
    /// `events.csv` rows (empty for NDJSON).
    pub events: Vec<u8>,
}

impl Chunk {
    /// Clears the chunk and fills it with profiles `first..first + count` of
    /// `cfg` in `format`.
    pub fn fill(&mut self, cfg: &Config, format: Format, first: u64, count: u64) {
        self.first = first;
        self.profiles = count;
        self.messages = 0;
        self.main.clear();
        self.events.clear();
        for i in first..first + count {
            let p = profile(cfg, i);
            let n = match format {
                Format::Ndjson => json::write_ndjson(&p, &mut self.main),
                Format::Csv => csv::write_csv_rows(&p, &mut self.main, &mut self.events),
            };
            self.messages += n as u64;
        }
    }
}

/// Default number of profiles per chunk (about 4 MB of NDJSON).
pub const DEFAULT_CHUNK_PROFILES: u64 = 1024;

/// Generates every profile of `cfg` on `threads` worker threads (at least
/// one), in chunks of `chunk_profiles`, and calls `sink` with each chunk in
/// profile order. Stops at the first error of `sink` and returns it.
pub fn generate<F>(
    cfg: &Config,
    format: Format,
    threads: usize,
    chunk_profiles: u64,
    mut sink: F,
) -> io::Result<()>
where
    F: FnMut(&Chunk) -> io::Result<()>,
{
    let threads = threads.max(1);
    let chunk_profiles = chunk_profiles.max(1);
    let n_chunks = cfg.profiles.div_ceil(chunk_profiles);
    let chunk_range = |c: u64| {
        let first = c * chunk_profiles;
        (first, chunk_profiles.min(cfg.profiles - first))
    };

    if threads == 1 {
        let mut chunk = Chunk::default();
        for c in 0..n_chunks {
            let (first, count) = chunk_range(c);
            chunk.fill(cfg, format, first, count);
            sink(&chunk)?;
        }
        return Ok(());
    }

    std::thread::scope(|scope| {
        let mut full_rx: Vec<Receiver<Chunk>> = Vec::with_capacity(threads);
        let mut empty_tx: Vec<SyncSender<Chunk>> = Vec::with_capacity(threads);
        for t in 0..threads {
            let (tx, rx) = sync_channel::<Chunk>(2);
            let (back_tx, back_rx) = sync_channel::<Chunk>(2);
            full_rx.push(rx);
            empty_tx.push(back_tx);
            scope.spawn(move || {
                let mut c = t as u64;
                while c < n_chunks {
                    let mut chunk = back_rx.try_recv().unwrap_or_default();
                    let (first, count) = chunk_range(c);
                    chunk.fill(cfg, format, first, count);
                    if tx.send(chunk).is_err() {
                        // The consumer stopped (sink error): quit quietly.
                        return;
                    }
                    c += threads as u64;
                }
            });
        }
        for c in 0..n_chunks {
            let t = (c % threads as u64) as usize;
            let chunk = full_rx[t].recv().map_err(|_| io::Error::other("generator thread died"))?;
            sink(&chunk)?;
            // Recycle the buffers; if the worker's queue is full or it has
            // finished, the chunk is simply dropped.
            let _ = empty_tx[t].try_send(chunk);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(cfg: &Config, format: Format, threads: usize, chunk: u64) -> (Vec<u8>, Vec<u8>, u64) {
        let (mut main, mut events, mut messages) = (Vec::new(), Vec::new(), 0);
        let mut next = 0;
        generate(cfg, format, threads, chunk, |c| {
            assert_eq!(c.first, next, "chunks out of order");
            next += c.profiles;
            main.extend_from_slice(&c.main);
            events.extend_from_slice(&c.events);
            messages += c.messages;
            Ok(())
        })
        .unwrap();
        assert_eq!(next, cfg.profiles);
        (main, events, messages)
    }

    #[test]
    fn output_is_identical_for_any_thread_count() {
        let cfg = Config { seed: 11, profiles: 1_003, ..Config::default() };
        for format in [Format::Ndjson, Format::Csv] {
            let reference = run(&cfg, format, 1, 1_000_000);
            for (threads, chunk) in [(1, 7), (2, 64), (3, 100), (4, 1)] {
                assert_eq!(run(&cfg, format, threads, chunk), reference, "{threads} threads");
            }
            // Same seed, same bytes; another seed, other bytes.
            assert_eq!(run(&cfg, format, 2, 50), reference);
            let other = Config { seed: 12, ..cfg };
            assert_ne!(run(&other, format, 2, 50).0, reference.0);
        }
    }

    #[test]
    fn message_count_matches_lines() {
        let cfg = Config { profiles: 500, ..Config::default() };
        let (ndjson, _, messages) = run(&cfg, Format::Ndjson, 2, 33);
        assert_eq!(ndjson.iter().filter(|&&b| b == b'\n').count() as u64, messages);
        let (profiles, events, csv_messages) = run(&cfg, Format::Csv, 2, 33);
        let rows = |b: &[u8]| b.iter().filter(|&&b| b == b'\n').count() as u64;
        assert_eq!(rows(&profiles), 500);
        assert_eq!(rows(&profiles) + rows(&events), csv_messages);
        assert_eq!(csv_messages, messages);
        assert!((500 * 11..=500 * 21).contains(&messages));
    }

    #[test]
    fn sink_errors_stop_the_run() {
        let cfg = Config { profiles: 10_000, ..Config::default() };
        let mut calls = 0;
        let err = generate(&cfg, Format::Ndjson, 2, 10, |_| {
            calls += 1;
            if calls == 3 {
                Err(io::Error::other("disk full"))
            } else {
                Ok(())
            }
        });
        assert_eq!(err.unwrap_err().to_string(), "disk full");
        assert_eq!(calls, 3);
    }

    #[test]
    fn empty_dataset_writes_nothing() {
        let cfg = Config { profiles: 0, ..Config::default() };
        assert_eq!(run(&cfg, Format::Ndjson, 2, 10), (Vec::new(), Vec::new(), 0));
    }
}
