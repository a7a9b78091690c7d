//! Fuzz target `raft_log`: the body is [`cohort::fuzzing::raft_log`],
//! damaging the small log of `fuzz/seeds/raft-log` (written by a node, see
//! `tests/fuzz_regressions.rs`), in a scratch directory of this process.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use cohort::fuzzing::{LogImage, Scratch};

static STATE: OnceLock<(LogImage, Scratch)> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (base, scratch) = STATE.get_or_init(|| {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/raft-log");
        let base = LogImage::load(&seeds).expect("the undamaged log in fuzz/seeds/raft-log");
        (base, Scratch::new("raft_log").expect("a scratch directory"))
    });
    cohort::fuzzing::raft_log(base, scratch.path(), data)
});
