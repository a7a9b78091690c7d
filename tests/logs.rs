//! The node's logs on standard error: `--log-level`, `RUST_LOG` over it,
//! raft-rs's own messages routed to them, and a bad level refused.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{free_port, serve_refused};

/// Starts `cohort serve` on `data_dir` with `args` and `env`, standard
/// output and error piped; returns the child, a channel of its stdout lines
/// and one of its stderr lines.
fn spawn(
    data_dir: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Child, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .args(["--grpc-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port()), "--shards", "2"])
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cohort serve");
    let lines = |pipe: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        rx
    };
    let stdout = lines(Box::new(child.stdout.take().unwrap()));
    let stderr = lines(Box::new(child.stderr.take().unwrap()));
    (child, stdout, stderr)
}

/// Waits up to 60 s for a line of `rx` that contains `needle`; returns the
/// lines read, or panics with them.
fn wait_for(rx: &mpsc::Receiver<String>, needle: &str, what: &str) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(_) => panic!("no {what} line with {needle:?} within 60 s; read:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn debug_shows_raft_rs_messages_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, _stdout, stderr) = spawn(dir.path(), &["--log-level", "debug"], &[]);
    let seen = wait_for(&stderr, "became leader", "stderr");
    let _ = child.kill();
    let _ = child.wait();
    let line = seen.last().unwrap();
    // raft-rs's record, at its own level, under the target `raft`, with
    // its key-values and the group it is about.
    assert!(line.contains("INFO") && line.contains("raft:"), "{line}");
    assert!(line.contains("raft_id=1") && line.contains("group="), "{line}");
}

#[test]
fn rust_log_overrides_the_flag_and_info_hides_elections() {
    for (args, env) in [
        // RUST_LOG wins over --log-level.
        (vec!["--log-level", "debug"], vec![("RUST_LOG", "warn")]),
        // At info, raft-rs's per-group election messages are held back.
        (vec![], vec![]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, stdout, stderr) = spawn(dir.path(), &args, &env);
        // The node is serving: its groups have elected themselves.
        wait_for(&stdout, "serving gRPC", "stdout");
        let _ = child.kill();
        let _ = child.wait();
        // The pipe closed with the process: every line is in.
        let logged: Vec<String> = stderr.iter().collect();
        assert!(!logged.iter().any(|l| l.contains("became leader")), "{args:?} {env:?}: {logged:#?}");
        if env.is_empty() {
            assert!(
                logged.iter().any(|l| l.contains("INFO") && l.contains("snapshots loaded")),
                "{logged:#?}"
            );
        } else {
            assert!(!logged.iter().any(|l| l.contains("INFO") || l.contains("DEBUG")), "{logged:#?}");
        }
    }
}

#[test]
fn a_bad_log_level_is_refused_naming_the_levels() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (status, stderr) = serve_refused(&["--data-dir", data, "--log-level", "loud"], &[]);
    assert!(status.is_some_and(|s| !s.success()), "{status:?}: {stderr}");
    assert!(stderr.contains("--log-level") && stderr.contains("\"loud\" is not a log level"), "{stderr}");
    assert!(stderr.contains("off, error, warn, info, debug, trace"), "{stderr}");
    assert!(!dir.path().join("raft").exists(), "nothing is opened: {stderr}");
}
