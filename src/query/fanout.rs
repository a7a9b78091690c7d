//! The fan-out pool: runs one function over every shard in parallel, with
//! the calling thread as one of the participants.
//!
//! A query is a few hundred microseconds of work spread over the shards, so
//! handing it to sleeping threads and waiting for them costs as much as the
//! work: on the 2-vCPU VMs this runs on, a futex wake-up takes 50–100 µs.
//! Here the caller never waits for a thread to wake. It posts the job to the
//! workers and then claims shards itself from the job's shared counter; a
//! worker that wakes late finds the counter exhausted and goes back to
//! sleep. The caller only ever waits for shards a worker is already
//! evaluating. A worker that has just finished spins for [`SPIN`] (yielding
//! the CPU at each turn past the first few hundred) before it blocks, so
//! the next query of a busy server finds it awake; an idle server sleeps.
//!
//! Deadlines are checked before each shard is claimed; a job past its
//! deadline stops claiming, and the caller returns without waiting for
//! shards still running (their results are dropped when they finish).

use std::hint::spin_loop;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel::{bounded, Receiver, Sender, TryRecvError};
use parking_lot::Mutex;

/// How long an idle worker spins before it blocks.
pub const SPIN: Duration = Duration::from_millis(1);

/// A job as the workers see it.
trait Claimable: Send + Sync {
    /// Claims and runs shards until none is left.
    fn work(&self);
}

/// One fan-out: `n` shards, a shared claim counter, one slot per result.
struct Job<R, F> {
    run: F,
    slots: Vec<Mutex<Option<R>>>,
    next: AtomicUsize,
    finished: AtomicUsize,
    expired: AtomicBool,
    deadline: Option<Instant>,
}

impl<R: Send, F: Fn(usize) -> R + Send + Sync> Claimable for Job<R, F> {
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::AcqRel);
            if i >= self.slots.len() {
                return;
            }
            let late =
                self.expired.load(Ordering::Acquire) || self.deadline.is_some_and(|d| Instant::now() > d);
            if late {
                self.expired.store(true, Ordering::Release);
            } else {
                *self.slots[i].lock() = Some((self.run)(i));
            }
            self.finished.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The pool; dropping it stops the workers once they are idle.
pub struct FanOut {
    workers: Vec<Sender<Arc<dyn Claimable>>>,
}

/// Why a fan-out gave no complete answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FanOutError {
    /// The deadline passed; these shards had not answered.
    Deadline(Vec<usize>),
}

fn recv_spin<T>(rx: &Receiver<T>) -> Option<T> {
    let start = Instant::now();
    let mut turns = 0u32;
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {
                turns = turns.wrapping_add(1);
                if turns < 256 {
                    spin_loop();
                } else {
                    // Yield rather than burn the core: on a busy machine the
                    // thread that will post the next job may need it.
                    std::thread::yield_now();
                    if start.elapsed() > SPIN {
                        return rx.recv().ok();
                    }
                }
            }
        }
    }
}

impl FanOut {
    /// A pool of `participants` threads counting the caller, that is
    /// `participants - 1` workers (none when 1).
    pub fn new(participants: usize) -> FanOut {
        let mut workers = Vec::new();
        for i in 1..participants.max(1) {
            let (tx, rx) = bounded::<Arc<dyn Claimable>>(64);
            let spawned = std::thread::Builder::new().name(format!("query-{i}")).spawn(move || {
                while let Some(job) = recv_spin(&rx) {
                    job.work();
                }
            });
            // A worker that cannot be spawned only costs parallelism: the
            // caller claims every shard itself.
            if spawned.is_ok() {
                workers.push(tx);
            }
        }
        FanOut { workers }
    }

    /// Participants, the caller included.
    pub fn participants(&self) -> usize {
        self.workers.len() + 1
    }

    /// Runs `run(i)` for every `i` in `0..n` in parallel and returns the
    /// results in order, or the shards that had not answered by `deadline`.
    pub fn run<R, F>(&self, n: usize, deadline: Option<Instant>, run: F) -> Result<Vec<R>, FanOutError>
    where
        R: Send + 'static,
        F: Fn(usize) -> R + Send + Sync + 'static,
    {
        let job = Arc::new(Job {
            run,
            slots: (0..n).map(|_| Mutex::new(None)).collect(),
            next: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
            expired: AtomicBool::new(false),
            deadline,
        });
        if n > 1 {
            // Only as many workers as there are shards beyond the caller's.
            for tx in self.workers.iter().take(n - 1) {
                let _ = tx.try_send(job.clone() as Arc<dyn Claimable>);
            }
        }
        job.work();
        // Wait for the shards the workers are still evaluating.
        let mut turns = 0u32;
        while job.finished.load(Ordering::Acquire) < n {
            if deadline.is_some_and(|d| Instant::now() > d) {
                job.expired.store(true, Ordering::Release);
                break;
            }
            turns = turns.wrapping_add(1);
            if turns < 256 {
                spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let mut out = Vec::with_capacity(n);
        let mut missing = Vec::new();
        for (i, slot) in job.slots.iter().enumerate() {
            match slot.lock().take() {
                Some(r) => out.push(r),
                None => missing.push(i),
            }
        }
        if missing.is_empty() {
            Ok(out)
        } else {
            Err(FanOutError::Deadline(missing))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_once_in_order() {
        for participants in [1, 2, 4] {
            let pool = FanOut::new(participants);
            let calls = Arc::new(AtomicUsize::new(0));
            let seen = calls.clone();
            let out = pool
                .run(37, None, move |i| {
                    seen.fetch_add(1, Ordering::Relaxed);
                    i * 10
                })
                .unwrap();
            assert_eq!(out, (0..37).map(|i| i * 10).collect::<Vec<_>>());
            assert_eq!(calls.load(Ordering::Relaxed), 37);
            assert_eq!(pool.run(0, None, |i| i).unwrap(), Vec::<usize>::new());
        }
    }

    #[test]
    fn a_passed_deadline_names_the_missing_shards() {
        let pool = FanOut::new(2);
        let past = Instant::now() - Duration::from_millis(1);
        assert_eq!(pool.run(3, Some(past), |i| i), Err(FanOutError::Deadline(vec![0, 1, 2])));
        // A slow shard runs past the deadline: whoever claimed it, the
        // shards claimed after it are refused and named.
        let out = pool.run(8, Some(Instant::now() + Duration::from_millis(50)), |i| {
            std::thread::sleep(Duration::from_millis(30));
            i
        });
        match out {
            Err(FanOutError::Deadline(missing)) => assert!(!missing.is_empty()),
            other => panic!("expected a deadline error, got {other:?}"),
        }
        // The pool still works afterwards.
        assert_eq!(pool.run(5, None, |i| i + 1).unwrap(), vec![1, 2, 3, 4, 5]);
    }
}
