//! Criterion benches of the query mix over a small shard set (200k profiles
//! in 4 shards, built once): one group per class, each query evaluated on
//! one shard and over all shards through the pool (compile included, as in
//! `cohort-bench`). Kept short so that `cargo bench -p cohort-bench` stays
//! quick; `cohort-bench` is the benchmark of record.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use cohort::segment::{compile, CheckContext, NoSegments};
use cohort_bench::dataset::{self, shard_of};
use cohort_bench::mix::{member_id, queries, run_query, Class, Kind};
use cohort_bench::pool::Pool;
use cohort_datagen::{Config, DEFAULT_NOW_MS};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

const PROFILES: u64 = 200_000;
const SHARDS: u32 = 4;

fn benches(c: &mut Criterion) {
    let cfg = Config { profiles: PROFILES, ..Config::default() };
    let (shards, _) = dataset::build(&cfg, SHARDS, 2, &|_| {});
    let schema = dataset::schema();
    let pool = Pool::new(Arc::new(shards), 2);
    let ctx = CheckContext { schema: &schema, catalog: &NoSegments, now_ms: DEFAULT_NOW_MS };
    let all = queries();
    for class in Class::ALL {
        let slug: String =
            class.title().chars().map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' }).collect();
        let mut group = c.benchmark_group(format!("{}_{}", class.key(), slug.trim_end_matches('_')));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
        for q in all.iter().filter(|q| q.class == class) {
            let cond = compile(q.text, &ctx).expect("the mix compiles");
            let shard = &pool.shards()[0];
            match q.kind {
                Kind::Count => {
                    group.bench_function(BenchmarkId::new(&q.id, "one_shard"), |b| {
                        b.iter(|| black_box(shard.count(&cond)));
                    });
                }
                Kind::Member => {
                    let mut k = 0u64;
                    group.bench_function(BenchmarkId::new(&q.id, "one_shard"), |b| {
                        b.iter(|| {
                            k += 1;
                            let id = member_id(k % 10_000, PROFILES);
                            let s = &pool.shards()[shard_of(id, SHARDS) as usize];
                            black_box(s.row_of(id).is_some_and(|row| s.row_matches(row, &cond)))
                        });
                    });
                }
                Kind::Breakdown { by, .. } => {
                    group.bench_function(BenchmarkId::new(&q.id, "one_shard"), |b| {
                        b.iter(|| black_box(shard.breakdown(&cond, by).map(|v| v.len())));
                    });
                }
                Kind::Page { limit } => {
                    group.bench_function(BenchmarkId::new(&q.id, "one_shard"), |b| {
                        b.iter(|| black_box(shard.members(&cond, None, limit).len()));
                    });
                }
            }
            if q.kind != Kind::Member {
                group.bench_function(BenchmarkId::new(&q.id, "all_shards"), |b| {
                    b.iter(|| {
                        let r =
                            run_query(&pool, &schema, DEFAULT_NOW_MS, PROFILES, q, 0, 1).expect("query runs");
                        black_box(r.count)
                    });
                });
            }
        }
        group.finish();
    }
}

criterion_group!(queries_bench, benches);
criterion_main!(queries_bench);
