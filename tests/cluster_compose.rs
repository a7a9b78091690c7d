//! `cluster/docker-compose.yml` brings up a three-node cluster that takes a
//! write and answers a Count on every node. The image is built from the
//! test's own `cohort` binary (`cluster/build-image.sh BINARY`), the
//! project gets a name of its own and is taken down, volumes and image
//! included, whatever happens. Skipped, with a message saying so, where
//! Docker or docker-compose is absent.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, Client};

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Takes the compose project down and removes the image when dropped.
struct Project {
    name: String,
    image: String,
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = Command::new("docker-compose")
            .args(["-p", &self.name, "-f", "cluster/docker-compose.yml", "down", "-v", "-t", "2"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = Command::new("docker").args(["rmi", "-f", &self.image]).stdout(Stdio::null()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_brings_up_a_cluster_that_answers_a_count() {
    if !works("docker", &["info"]) || !works("docker-compose", &["version"]) {
        eprintln!("cluster_compose: SKIPPED (no usable docker and docker-compose on this machine)");
        return;
    }
    let id = std::process::id();
    let project = Project { name: format!("cohort-test-{id}"), image: format!("cohort:test-{id}") };
    let root = env!("CARGO_MANIFEST_DIR");
    let built = Command::new("cluster/build-image.sh")
        .arg(env!("CARGO_BIN_EXE_cohort"))
        .env("IMAGE", &project.image)
        .current_dir(root)
        .status()
        .unwrap();
    assert!(built.success(), "cluster/build-image.sh failed");
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut up = Command::new("docker-compose");
    up.args(["-p", &project.name, "-f", "cluster/docker-compose.yml", "up", "-d"])
        .env("COHORT_IMAGE", &project.image)
        .current_dir(root);
    for (n, (grpc, http)) in ports.iter().enumerate() {
        up.env(format!("COHORT_GRPC_PORT_{}", n + 1), grpc.to_string());
        up.env(format!("COHORT_HTTP_PORT_{}", n + 1), http.to_string());
    }
    assert!(up.status().unwrap().success(), "docker-compose up failed");

    // The containers' doors, as clients on the host reach them.
    let nodes: Vec<String> = ports.iter().map(|(grpc, _)| format!("127.0.0.1:{grpc}")).collect();
    let messages: Vec<String> = (0..50)
        .map(|i| {
            format!(r#"{{"type":"identify","userId":"c{i}","messageId":"c{i}","traits":{{"plan":"pro"}}}}"#)
        })
        .collect();
    // The leader takes the write; the others answer UNAVAILABLE.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    'written: loop {
        for addr in &nodes {
            let node = Client { grpc: addr.clone() };
            match tokio::time::timeout(Duration::from_secs(5), node.ingest(messages.clone())).await {
                // A retry of a batch an earlier try had written in part
                // (its answer lost in a leader change) finds duplicates.
                Ok(Ok(reply)) if reply.applied + reply.duplicates == 50 => break 'written,
                Ok(Ok(reply)) => panic!("{addr} applied {reply:?}"),
                Ok(Err(status)) => last = format!("{addr}: {status}"),
                Err(_) => last = format!("{addr}: no answer within 5 s"),
            }
        }
        assert!(Instant::now() < deadline, "no node took the write within 90 s; last: {last}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Every node counts them, from its own replicas.
    for addr in &nodes {
        let node = Client { grpc: addr.clone() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let counts = node.try_count(&["plan = \"pro\""]).await;
            if counts.as_deref().is_ok_and(|c| c == [50]) {
                break;
            }
            assert!(Instant::now() < deadline, "{addr} counts {counts:?} after 30 s, not 50");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
