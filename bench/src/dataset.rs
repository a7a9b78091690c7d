//! The benchmark dataset inside Cohort: the embedded default's builder
//! ([`cohort::demo`]) with the bench's `u32` shard numbers.

pub use cohort::demo::{build as build_shards, schema, BuildStats, BUILD_BATCH as BATCH};
use cohort::shard::Shard;
use cohort_datagen::Config;

/// The shard of a profile id, as [`cohort::demo::shard_of`] places it.
/// `duckdb_mix.py` computes the same expression to order members pages.
pub fn shard_of(profile: u64, shards: u32) -> u32 {
    cohort::demo::shard_of(profile, shards.max(1) as usize) as u32
}

/// Builds `shards` shards of the dataset on `threads` threads (see
/// [`cohort::demo::build`]).
pub fn build(
    cfg: &Config,
    shards: u32,
    threads: usize,
    progress: &(dyn Fn(f64) + Sync),
) -> (Vec<Shard>, BuildStats) {
    build_shards(cfg, shards as usize, threads, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_build_places_every_profile_once() {
        let cfg = Config { profiles: 2_000, ..Config::default() };
        let (shards, stats) = build(&cfg, 4, 2, &|_| {});
        assert_eq!(stats.rejections, 0);
        assert_eq!(stats.profiles, 2_000);
        assert_eq!(shards.iter().map(Shard::len).sum::<u64>(), 2_000);
        for i in [0u64, 1, 999, 1_999] {
            let id = cohort::demo::profile_id(i);
            let s = &shards[shard_of(id, 4) as usize];
            assert!(s.row_of(id).is_some(), "profile {i}");
        }
        let mut merged = schema();
        for s in &shards {
            merged.merge_from(&s.schema()).expect("shard schema agrees with the declared one");
        }
        assert_eq!(merged, schema());
    }
}
