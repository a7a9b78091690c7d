//! The `cohort` program: a node (`cohort serve`, `cohort demo`) and the
//! operator's client commands; everything lives in [`cohort::cli`].

use std::ffi::{c_int, c_long};
use std::process::ExitCode;

/// mimalloc rather than glibc's malloc. Measured at 10M profiles (see
/// bench/RESULTS.md): a warm restart loads its ~5 GB of snapshot images in
/// 1.9-2.2 s instead of 4.8 s, ingest is about 6% faster (glibc's malloc and
/// free were about 17% of the node's CPU during ingest), frequency counts
/// about 12% faster; the cost is about 12% more RSS per profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's option interface (exported by the library the allocator links).
extern "C" {
    fn mi_option_get(option: c_int) -> c_long;
    fn mi_option_set(option: c_int, value: c_long);
}

/// `mi_option_purge_delay` in mimalloc 3's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: c_int = 15;
/// mimalloc 3's default purge delay, in ms: how the option is recognised.
const MIMALLOC_DEFAULT_PURGE_DELAY_MS: c_long = 1_000;
/// The purge delay the node runs with, in ms.
const PURGE_DELAY_MS: c_long = 10_000;

/// Freed memory goes back to the OS after 10 s unused rather than 1 s.
/// An ingest frees and reallocates its batches' memory all the time; with
/// the default, mimalloc returned it and took it back within seconds, and
/// each return split the transparent huge pages: 280-310 thousand page
/// faults per 8 M messages instead of 40 thousand, and about 15% more CPU
/// per message (see bench/RESULTS.md). `MIMALLOC_PURGE_DELAY` in the
/// environment still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: plain reads and writes of mimalloc's option table, which it
    // reads on every purge; an option index it does not know is ignored.
    unsafe {
        // Set only when the slot holds the default, so that a mimalloc whose
        // options are numbered otherwise is left alone.
        if mi_option_get(MI_OPTION_PURGE_DELAY) == MIMALLOC_DEFAULT_PURGE_DELAY_MS {
            mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
        }
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            // The program's own failure, printed as the CLI prints every
            // error (no log subscriber exists yet: `serve` sets it up).
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cohort::cli::main())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails when a mimalloc upgrade renumbers or re-defaults its options,
    /// which would make `tune_allocator` a silent no-op.
    #[test]
    fn the_purge_delay_option_is_found_and_set() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: as in `tune_allocator`.
        let before = unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert!(
            before == MIMALLOC_DEFAULT_PURGE_DELAY_MS || before == PURGE_DELAY_MS,
            "option {MI_OPTION_PURGE_DELAY} holds {before}: not mimalloc 3's purge delay"
        );
        tune_allocator();
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, PURGE_DELAY_MS);
    }
}
