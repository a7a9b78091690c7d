//! The `cohort` program: a node (`cohort serve`, `cohort demo`) and the
//! operator's client commands; everything lives in [`cohort::cli`].

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc. Measured at 10M profiles (see
/// bench/RESULTS.md): a warm restart loads its ~5 GB of snapshot images in
/// 1.9-2.2 s instead of 4.8 s, ingest is about 6% faster (glibc's malloc and
/// free were about 17% of the node's CPU during ingest), frequency counts
/// about 12% faster; the cost is about 12% more RSS per profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cohort::cli::main())
}
