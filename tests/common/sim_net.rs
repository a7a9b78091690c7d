//! The in-process network of the fault simulations (`tests/simulation.rs`,
//! `tests/pipeline_simulation.rs`): it carries the drivers' Raft messages
//! through one delivery thread that drops, duplicates and delays them (and
//! so reorders them), and delivers nothing over a cut link or to a node
//! that is down; a seeded RNG picks every fault.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort::replication::driver::{Driver, SnapshotReport, Transport};
use parking_lot::{Condvar, Mutex, RwLock};
use raft::eraftpb::{Message, MessageType};

/// SplitMix64: small, seedable, good enough to pick faults.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// A message on its way, delivered at `at`.
struct InFlight {
    at: Instant,
    seq: u64,
    from: u64,
    to: u64,
    group: u64,
    message: Message,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// The network: drivers by node, cut links, and the messages in flight.
pub struct SimNet {
    pub drivers: RwLock<HashMap<u64, Arc<Driver>>>,
    /// Directed links that deliver nothing.
    pub cut: RwLock<HashSet<(u64, u64)>>,
    pub rng: Mutex<Rng>,
    queue: Mutex<BinaryHeap<Reverse<InFlight>>>,
    pub wake: Condvar,
    seq: AtomicU64,
    pub stop: AtomicBool,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
}

/// Drop, duplicate and delay rates of the network.
const DROP: f64 = 0.05;
const DUPLICATE: f64 = 0.03;
const MAX_DELAY_MS: u64 = 25;

impl SimNet {
    pub fn new(seed: u64) -> Arc<SimNet> {
        let net = Arc::new(SimNet {
            drivers: RwLock::default(),
            cut: RwLock::default(),
            rng: Mutex::new(Rng(seed ^ 0x5151)),
            queue: Mutex::default(),
            wake: Condvar::new(),
            seq: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
        });
        let deliverer = net.clone();
        std::thread::spawn(move || deliverer.deliver());
        net
    }

    /// What the network did to the messages, for a seed's report.
    pub fn summary(&self) -> String {
        format!(
            "{} messages dropped, {} duplicated",
            self.dropped.load(Ordering::Relaxed),
            self.duplicated.load(Ordering::Relaxed)
        )
    }

    /// Stops the delivery thread.
    pub fn shut(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake.notify_all();
    }

    pub fn linked(&self, from: u64, to: u64) -> bool {
        !self.cut.read().contains(&(from, to))
    }

    /// Delivers messages when they are due, to the nodes that are up and
    /// still linked to the sender.
    fn deliver(&self) {
        loop {
            let due = {
                let mut queue = self.queue.lock();
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match queue.peek() {
                        Some(Reverse(m)) if m.at <= Instant::now() => break queue.pop().map(|Reverse(m)| m),
                        Some(Reverse(m)) => {
                            let wait = m.at.saturating_duration_since(Instant::now());
                            self.wake.wait_for(&mut queue, wait);
                        }
                        None => {
                            self.wake.wait_for(&mut queue, Duration::from_millis(50));
                        }
                    }
                }
            };
            let Some(m) = due else { continue };
            let drivers = self.drivers.read();
            let snapshot = m.message.get_msg_type() == MessageType::MsgSnapshot;
            let delivered = self.linked(m.from, m.to) && drivers.contains_key(&m.to);
            if delivered {
                drivers[&m.to].step(m.group, m.message);
            }
            if let Some(sender) = drivers.get(&m.from) {
                if !delivered {
                    sender.report_unreachable(m.group, m.to);
                }
                if snapshot {
                    let report = if delivered { SnapshotReport::Finished } else { SnapshotReport::Failed };
                    sender.report_snapshot(m.group, m.to, report);
                }
            }
        }
    }

    fn post(&self, from: u64, to: u64, group: u64, message: Message, delay_ms: u64) {
        let at = Instant::now() + Duration::from_millis(delay_ms);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.queue.lock().push(Reverse(InFlight { at, seq, from, to, group, message }));
        self.wake.notify_one();
    }
}

/// One node's end of the network.
pub struct Port {
    pub net: Arc<SimNet>,
    pub from: u64,
}

impl Transport for Port {
    fn send(&self, group: u64, messages: Vec<Message>) {
        for mut m in messages {
            let to = m.to;
            let snapshot = m.get_msg_type() == MessageType::MsgSnapshot;
            // In memory: the snapshot's bytes, not a file the sender's next
            // snapshot would replace.
            cohort::replication::snapshot_file::inline(&mut m).expect("read the snapshot to send");
            let (drop, dup, delay, dup_delay) = {
                let mut rng = self.net.rng.lock();
                // A snapshot is not dropped on the way: its transfer fails
                // or finishes as a whole (the transport reports which).
                let drop = !snapshot && rng.chance(DROP);
                let dup = !snapshot && rng.chance(DUPLICATE);
                (drop, dup, rng.below(MAX_DELAY_MS + 1), rng.below(MAX_DELAY_MS + 1))
            };
            if drop {
                self.net.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if dup {
                self.net.duplicated.fetch_add(1, Ordering::Relaxed);
                self.net.post(self.from, to, group, m.clone(), dup_delay);
            }
            self.net.post(self.from, to, group, m, delay);
        }
    }
}

/// The seeds to run: `COHORT_SIM_SEED=S` replays one; else
/// `COHORT_SIM_SEEDS=N` (default `default`) from `COHORT_SIM_FIRST`
/// (default 1).
pub fn seeds(default: u64) -> Vec<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    if let Some(seed) = var("COHORT_SIM_SEED") {
        return vec![seed];
    }
    let first = var("COHORT_SIM_FIRST").unwrap_or(1);
    (first..first + var("COHORT_SIM_SEEDS").unwrap_or(default)).collect()
}

/// Prints a seed's summary, or fails with its problem and how to replay
/// it (`test`: the test binary's name).
pub fn report(test: &str, seed: u64, verdict: Result<String, String>, events: &str, network: &str) {
    let label = test.replace('_', " ");
    match verdict {
        Ok(summary) => eprintln!("{label}: seed {seed}: {summary}; {network}; {events}"),
        Err(problem) => panic!(
            "seed {seed}: {problem}\n  events: {events}\n  {network}\n  replay: COHORT_SIM_SEED={seed} cargo test --test {test}"
        ),
    }
}
