//! Fuzz target `shard_snapshot`: the body is [`cohort::fuzzing::shard_snapshot`], given a
//! scratch directory of this process (left behind in the system's temporary
//! directory when libFuzzer exits).
#![no_main]

use std::sync::OnceLock;

use cohort::fuzzing::Scratch;

static SCRATCH: OnceLock<Scratch> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let scratch = SCRATCH.get_or_init(|| Scratch::new("shard_snapshot").expect("a scratch directory"));
    cohort::fuzzing::shard_snapshot(scratch.path(), data)
});
