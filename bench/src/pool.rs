//! A persistent pool that runs one job over every shard in parallel.
//!
//! Shard `s` belongs to participant `s % threads`; participant 0 is the
//! calling thread, the others are long-lived workers fed over crossbeam
//! channels. Spawning threads per query would cost tens of microseconds,
//! more than an attribute count. A worker that has just finished spins for
//! [`SPIN`] before it blocks (as rayon and tokio workers do), so a query
//! that follows closely does not pay a futex wake-up; an idle pool sleeps.
//! Past a few hundred spins it yields the CPU at each turn, so that a
//! spinning thread never starves the one it waits for on a busy machine.
//! The figures are therefore those of a warm server; `--spin-us 0` shows
//! the cost of waking idle workers.

use std::hint::spin_loop;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cohort::shard::eval::Breakdown;
use cohort::shard::{Row, Shard};
use crossbeam::channel::{bounded, Receiver, Sender, TryRecvError};

/// How long a worker (or the caller waiting for workers) spins before
/// blocking, unless [`Pool::with_spin`] says otherwise. On the 2-vCPU VMs
/// this was measured on, a futex wake-up costs 50–100 µs, more than an
/// attribute count; with a shorter spin a closed loop of queries can settle
/// into paying two wake-ups per query.
pub const SPIN: Duration = Duration::from_millis(1);

/// What a job returns for one shard.
#[derive(Clone, Debug, PartialEq)]
pub enum Out {
    /// A count.
    Count(u64),
    /// Rows of the shard.
    Rows(Vec<Row>),
    /// Counts per value.
    Breakdown(Breakdown),
    /// An error, as text.
    Error(String),
}

/// A job: what to compute on one shard.
pub type Job = Arc<dyn Fn(&Shard) -> Out + Send + Sync>;

/// The pool; dropping it stops the workers.
pub struct Pool {
    shards: Arc<Vec<Shard>>,
    threads: usize,
    to_workers: Vec<Sender<Option<Job>>>,
    from_workers: Receiver<Vec<(usize, Out)>>,
    handles: Vec<JoinHandle<()>>,
    spin: Duration,
}

fn recv_spin<T>(rx: &Receiver<T>, spin: Duration) -> Option<T> {
    if spin.is_zero() {
        return rx.recv().ok();
    }
    let start = Instant::now();
    let mut n = 0u32;
    loop {
        match rx.try_recv() {
            Ok(v) => return Some(v),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {
                n = n.wrapping_add(1);
                if n < 256 {
                    spin_loop();
                } else {
                    // Yield rather than burn the CPU: when the machine is
                    // busy the thread we wait for may need this very core.
                    std::thread::yield_now();
                    if start.elapsed() > spin {
                        return rx.recv().ok();
                    }
                }
            }
        }
    }
}

fn run_slice(shards: &[Shard], part: usize, threads: usize, job: &Job) -> Vec<(usize, Out)> {
    (part..shards.len()).step_by(threads).map(|s| (s, job(&shards[s]))).collect()
}

impl Pool {
    /// A pool of `threads` participants (the caller and `threads - 1`
    /// workers) over `shards`.
    pub fn new(shards: Arc<Vec<Shard>>, threads: usize) -> Pool {
        Pool::with_spin(shards, threads, SPIN)
    }

    /// A pool whose threads spin for `spin` before blocking.
    pub fn with_spin(shards: Arc<Vec<Shard>>, threads: usize, spin: Duration) -> Pool {
        let threads = threads.clamp(1, shards.len().max(1));
        let (done_tx, from_workers) = bounded(threads);
        let mut to_workers = Vec::new();
        let mut handles = Vec::new();
        for part in 1..threads {
            let (tx, rx) = bounded::<Option<Job>>(1);
            let done = done_tx.clone();
            let shards = Arc::clone(&shards);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("pool-{part}"))
                    .spawn(move || {
                        while let Some(Some(job)) = recv_spin(&rx, spin) {
                            if done.send(run_slice(&shards, part, threads, &job)).is_err() {
                                break;
                            }
                        }
                    })
                    .expect("spawn pool worker"),
            );
            to_workers.push(tx);
        }
        Pool { shards, threads, to_workers, from_workers, handles, spin }
    }

    /// The shards, in id order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Participants, the caller included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job` on every shard in parallel; the result of shard `s` is at
    /// index `s`.
    pub fn run(&self, job: Job) -> Vec<Out> {
        for tx in &self.to_workers {
            tx.send(Some(Arc::clone(&job))).expect("pool worker gone");
        }
        let mut out: Vec<Option<Out>> = vec![None; self.shards.len()];
        for (s, o) in run_slice(&self.shards, 0, self.threads, &job) {
            out[s] = Some(o);
        }
        for _ in &self.to_workers {
            for (s, o) in recv_spin(&self.from_workers, self.spin).expect("pool worker gone") {
                out[s] = Some(o);
            }
        }
        out.into_iter().map(|o| o.expect("every shard answered")).collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for tx in &self.to_workers {
            let _ = tx.send(None);
        }
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
