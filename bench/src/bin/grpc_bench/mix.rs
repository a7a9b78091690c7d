//! The query mix of `cohort_bench::mix`, over gRPC: Count, Check, Breakdown
//! and Members calls against a node, by one or many concurrent clients.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cohort::proto::v1::query_client::QueryClient;
use cohort::proto::v1::{BreakdownRequest, CheckRequest, CountRequest, MembersRequest};
use cohort_bench::mix::{member_id, Class, Kind, Query};
use tonic::transport::Channel;

use crate::node::connect;

/// One answer, in the form `cohort_bench::mix::QueryResult` and the peers
/// give it: the count (membership: 1 or 0), the page's id sum, the
/// breakdown's `value=count,...`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The count.
    pub count: u64,
    /// Page: the sum of the profile ids.
    pub checksum: u64,
    /// Breakdown: `value=count,...` of the top values.
    pub detail: String,
}

/// One query's figures in one phase.
#[derive(Clone, Debug)]
pub struct QueryStats {
    /// The query.
    pub query: Query,
    /// Its answer (membership: how many of the checked profiles matched).
    pub answer: Answer,
    /// Latency of each recorded run, nanoseconds.
    pub samples_ns: Vec<u64>,
    /// Failed calls and inconsistent answers.
    pub errors: Vec<String>,
}

/// A phase: the whole mix with `clients` concurrent clients.
#[derive(Debug)]
pub struct Phase {
    /// Concurrent clients.
    pub clients: usize,
    /// Per query, in mix order.
    pub queries: Vec<QueryStats>,
    /// Wall clock of each class's measured runs (all clients together).
    pub class_wall: BTreeMap<Class, Duration>,
}

impl Phase {
    /// Every sample of `class`'s queries.
    pub fn class_samples(&self, class: Class) -> Vec<u64> {
        self.queries
            .iter()
            .filter(|q| q.query.class == class)
            .flat_map(|q| q.samples_ns.iter().copied())
            .collect()
    }

    /// Calls per second of `class` with every client busy.
    pub fn class_qps(&self, class: Class) -> f64 {
        let runs = self.class_samples(class).len() as f64;
        self.class_wall.get(&class).map_or(f64::NAN, |w| runs / w.as_secs_f64().max(1e-9))
    }

    /// Calls per second over the whole mix.
    pub fn total_qps(&self) -> f64 {
        let runs: usize = self.queries.iter().map(|q| q.samples_ns.len()).sum();
        let wall: f64 = self.class_wall.values().map(Duration::as_secs_f64).sum();
        runs as f64 / wall.max(1e-9)
    }

    /// Every error of the phase.
    pub fn errors(&self) -> Vec<String> {
        self.queries.iter().flat_map(|q| q.errors.iter().cloned()).collect()
    }
}

/// Recorded runs of a query of `class`: class c gets half (at least 10),
/// as in `cohort-bench`.
pub fn runs_for(class: Class, iterations: usize) -> usize {
    match class {
        Class::Frequency => (iterations / 2).max(10),
        _ => iterations.max(1),
    }
}

/// What a phase needs to know.
#[derive(Clone, Debug)]
pub struct MixConfig {
    /// The node's gRPC address.
    pub addr: String,
    /// `now`, RFC 3339.
    pub now: String,
    /// Dataset size (for membership ids).
    pub profiles: u64,
    /// Recorded runs per query (class c: half).
    pub iterations: usize,
    /// Warm-up runs per query and client.
    pub warmup: usize,
}

/// The value of a breakdown row: its JSON string decoded, or the text as
/// is.
fn value_text(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::String(s)) => s,
        _ => json.to_string(),
    }
}

/// Runs `q` once (membership run `k`).
pub async fn run_one(
    client: &mut QueryClient<Channel>,
    q: &Query,
    k: u64,
    profiles: u64,
    now: &str,
) -> Result<Answer, String> {
    let status = |call: &str, s: tonic::Status| format!("{} {call}: {:?}: {}", q.id, s.code(), s.message());
    match q.kind {
        Kind::Count => {
            let r = client
                .count(CountRequest {
                    expressions: vec![q.text.to_string()],
                    now: now.to_string(),
                    max_staleness_ms: 0,
                    allow_partial: false,
                })
                .await
                .map_err(|s| status("Count", s))?
                .into_inner();
            let count = *r.counts.first().ok_or_else(|| format!("{}: Count gave no count", q.id))?;
            Ok(Answer { count, ..Answer::default() })
        }
        Kind::Member => {
            let i = member_id(k, profiles);
            let r = client
                .check(CheckRequest {
                    profile: format!("u{i}"),
                    expressions: vec![q.text.to_string()],
                    now: now.to_string(),
                })
                .await
                .map_err(|s| status(&format!("Check u{i}"), s))?
                .into_inner();
            if r.profile_id != cohort::demo::profile_id(i) {
                return Err(format!(
                    "{}: Check u{i} answered for profile {}, expected {}",
                    q.id,
                    r.profile_id,
                    cohort::demo::profile_id(i)
                ));
            }
            let hit = *r.matches.first().ok_or_else(|| format!("{}: Check gave no answer", q.id))?;
            Ok(Answer { count: u64::from(hit), ..Answer::default() })
        }
        Kind::Breakdown { by, top } => {
            let r = client
                .breakdown(BreakdownRequest {
                    trait_name: by.to_string(),
                    expression: q.text.to_string(),
                    top: top as u32,
                    now: now.to_string(),
                    max_staleness_ms: 0,
                    allow_partial: false,
                })
                .await
                .map_err(|s| status("Breakdown", s))?
                .into_inner();
            let count = r.rows.iter().map(|row| row.count).sum();
            let detail = r
                .rows
                .iter()
                .map(|row| format!("{}={}", value_text(&row.value), row.count))
                .collect::<Vec<_>>();
            Ok(Answer { count, checksum: 0, detail: detail.join(",") })
        }
        Kind::Page { limit } => {
            let mut stream = client
                .members(MembersRequest {
                    expression: q.text.to_string(),
                    traits: Vec::new(),
                    page_size: limit as u32,
                    cursor: String::new(),
                    limit: limit as u64,
                    now: now.to_string(),
                    max_staleness_ms: 0,
                })
                .await
                .map_err(|s| status("Members", s))?
                .into_inner();
            let mut ids: Vec<u64> = Vec::with_capacity(limit);
            while let Some(page) = stream.message().await.map_err(|s| status("Members (stream)", s))? {
                ids.extend(page.members.iter().map(|m| m.profile_id));
            }
            Ok(Answer { count: ids.len() as u64, checksum: ids.iter().sum(), detail: String::new() })
        }
    }
}

/// One recorded run's outcome: query index, run, latency, answer.
type Outcome = (usize, u64, u64, Result<Answer, String>);

/// Runs the whole mix with `clients` concurrent clients, each on its own
/// connection. Class by class: every client first warms up on each query
/// of the class, then the clients share the class's recorded runs (query
/// after query, round after round) until none is left. Membership run `k`
/// checks profile `u{member_id(k)}`, whichever client runs it, so the
/// number of matches does not depend on the number of clients.
pub async fn run_phase(cfg: &MixConfig, queries: &[Query], clients: usize) -> Result<Phase, String> {
    let clients = clients.max(1);
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(QueryClient::new(connect(&cfg.addr).await?));
    }
    let mut stats: Vec<QueryStats> = queries
        .iter()
        .map(|q| QueryStats {
            query: q.clone(),
            answer: Answer::default(),
            samples_ns: Vec::new(),
            errors: Vec::new(),
        })
        .collect();
    let mut class_wall = BTreeMap::new();
    for class in Class::ALL {
        let idx: Vec<usize> = (0..queries.len()).filter(|&i| queries[i].class == class).collect();
        if idx.is_empty() {
            continue;
        }
        let runs = runs_for(class, cfg.iterations);
        // Warm-up: every client, every query of the class.
        let mut warm = Vec::new();
        for c in &conns {
            let mut c = c.clone();
            let qs: Vec<Query> = idx.iter().map(|&i| queries[i].clone()).collect();
            let (now, n, w) = (cfg.now.clone(), cfg.profiles, cfg.warmup);
            warm.push(tokio::spawn(async move {
                for q in &qs {
                    for it in 0..w {
                        let k = (runs - 1 - it.min(runs - 1)) as u64;
                        run_one(&mut c, q, k, n, &now).await?;
                    }
                }
                Ok::<(), String>(())
            }));
        }
        for t in warm {
            if let Err(e) = t.await.map_err(|e| e.to_string()).and_then(|r| r) {
                eprintln!("warm-up: {e}");
            }
        }
        // Recorded runs.
        let items: Arc<Vec<(usize, u64)>> =
            Arc::new((0..runs as u64).flat_map(|r| idx.iter().map(move |&i| (i, r))).collect());
        let next = Arc::new(AtomicUsize::new(0));
        let qs = Arc::new(queries.to_vec());
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(clients);
        for c in &conns {
            let mut c = c.clone();
            let (items, next, qs) = (items.clone(), next.clone(), qs.clone());
            let (now, n) = (cfg.now.clone(), cfg.profiles);
            tasks.push(tokio::spawn(async move {
                let mut out: Vec<Outcome> = Vec::new();
                loop {
                    let j = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(i, r)) = items.get(j) else { break };
                    let t0 = Instant::now();
                    let a = run_one(&mut c, &qs[i], r, n, &now).await;
                    out.push((i, r, t0.elapsed().as_nanos() as u64, a));
                }
                out
            }));
        }
        let mut outcomes: Vec<Outcome> = Vec::with_capacity(items.len());
        for t in tasks {
            outcomes.extend(t.await.map_err(|e| format!("client task: {e}"))?);
        }
        class_wall.insert(class, start.elapsed());
        outcomes.sort_by_key(|o| (o.0, o.1));
        let mut first: BTreeMap<usize, (u64, Answer)> = BTreeMap::new();
        for (i, r, ns, a) in outcomes {
            let s = &mut stats[i];
            match a {
                Err(e) => {
                    if s.errors.len() < 5 {
                        s.errors.push(e);
                    }
                }
                Ok(a) => {
                    s.samples_ns.push(ns);
                    if s.query.kind == Kind::Member {
                        s.answer.count += a.count;
                        continue;
                    }
                    match first.get(&i) {
                        None => {
                            first.insert(i, (r, a.clone()));
                            s.answer = a;
                        }
                        Some((r0, a0)) if *a0 != a => {
                            if s.errors.len() < 5 {
                                s.errors.push(format!(
                                    "{}: run {r} answered {a:?} but run {r0} answered {a0:?}",
                                    s.query.id
                                ));
                            }
                        }
                        Some(_) => {}
                    }
                }
            }
        }
    }
    Ok(Phase { clients, queries: stats, class_wall })
}
