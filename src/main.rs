//! The `cohort` program: a node (`cohort serve`, `cohort demo`) and the
//! operator's client commands; everything lives in [`cohort::cli`].

use std::process::ExitCode;

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
