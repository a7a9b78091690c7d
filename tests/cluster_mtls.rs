//! Mutual TLS between nodes (`--peer-tls-cert`, `--peer-tls-key`,
//! `--peer-tls-ca`): three `cohort serve` processes whose certificates one
//! CA made here signed form a cluster that replicates a write; their Raft
//! service refuses a plaintext client, a TLS client with no certificate
//! and one whose certificate another CA signed, and answers a client with
//! a certificate of the cluster's CA.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cohort::proto::internal as pb;
use cohort::replication::transport::PeerTls;
use common::{free_port, Server};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// A CA, written as `DIR/NAME-ca.pem`, that signs certificates for
/// 127.0.0.1.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, format!("{name} CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { issuer: Issuer::new(params, key), pem }
    }

    /// A certificate for 127.0.0.1 and its key: (cert, key) files.
    fn sign(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (crt, k) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}-key.pem")));
        std::fs::write(&crt, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (crt, k)
    }
}

struct Addrs {
    grpc: String,
    http: String,
    raft: String,
}

/// An empty `Send` stream to the Raft service at `addr` through
/// `endpoint`: what a peer's first call looks like, with no message.
async fn empty_send(endpoint: Endpoint) -> Result<u64, String> {
    let channel =
        endpoint.connect_timeout(Duration::from_secs(2)).connect().await.map_err(|e| format!("{e:?}"))?;
    let mut client = pb::raft_client::RaftClient::new(channel);
    let call = client.send(tokio_stream::iter(Vec::<pb::RaftBatch>::new()));
    match tokio::time::timeout(Duration::from_secs(5), call).await {
        Ok(Ok(ack)) => Ok(ack.into_inner().batches),
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_talk_over_mutual_tls_and_the_raft_service_refuses_whoever_has_no_certificate_of_the_ca() {
    let root = tempfile::tempdir().unwrap();
    let certs = root.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let ca = Ca::new(&certs, "cluster");
    let addrs: HashMap<u64, Addrs> = (1..=3)
        .map(|id| {
            let port = || format!("127.0.0.1:{}", free_port());
            (id, Addrs { grpc: port(), http: port(), raft: port() })
        })
        .collect();
    let starting: Vec<_> = (1..=3u64)
        .map(|id| {
            let (cert, key) = ca.sign(&certs, &format!("node{id}"));
            let me = &addrs[&id];
            let mut args: Vec<String> = vec![
                "--node-id".into(),
                id.to_string(),
                "--raft-addr".into(),
                me.raft.clone(),
                "--peer-tls-cert".into(),
                cert.display().to_string(),
                "--peer-tls-key".into(),
                key.display().to_string(),
                "--peer-tls-ca".into(),
                ca.pem.display().to_string(),
            ];
            for (peer, a) in &addrs {
                args.push("--peer".into());
                args.push(format!("{peer}={},{}", a.raft, a.grpc));
            }
            let (dir, grpc, http) =
                (root.path().join(format!("node-{id}")), me.grpc.clone(), me.http.clone());
            std::thread::spawn(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                (id, Server::start_at(&dir, 2, &grpc, &http, &args, &[]))
            })
        })
        .collect();
    let nodes: HashMap<u64, Server> = starting.into_iter().map(|t| t.join().unwrap()).collect();

    // The cluster works over mutual TLS: a write through the catalog's
    // leader reaches every node.
    let messages: Vec<String> = (0..20)
        .map(|i| {
            format!(r#"{{"type":"identify","userId":"t{i}","messageId":"t{i}","traits":{{"plan":"pro"}}}}"#)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    'written: loop {
        for node in nodes.values() {
            if node.ingest(messages.clone()).await.is_ok() {
                break 'written;
            }
        }
        assert!(Instant::now() < deadline, "no node took the write within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (id, node) in &nodes {
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.universe().await != 20 {
            assert!(Instant::now() < deadline, "node {id} does not count the 20 profiles");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let raft = &addrs[&1].raft;
    let https = || Endpoint::from_shared(format!("https://{raft}")).unwrap();
    // A plaintext client.
    let plain = empty_send(Endpoint::from_shared(format!("http://{raft}")).unwrap()).await;
    assert!(plain.is_err(), "a plaintext client was answered: {plain:?}");
    // TLS that trusts the CA but shows no certificate.
    let ca_only =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(&ca.pem).unwrap()));
    let anonymous = empty_send(https().tls_config(ca_only).unwrap()).await;
    assert!(anonymous.is_err(), "a client with no certificate was answered: {anonymous:?}");
    // A certificate another CA signed.
    let other = Ca::new(&certs, "other");
    let (cert, key) = other.sign(&certs, "intruder");
    let intruder = PeerTls::from_config(Some(&cert), Some(&key), Some(&ca.pem)).unwrap().unwrap();
    let refused = empty_send(https().tls_config(intruder.client()).unwrap()).await;
    assert!(refused.is_err(), "a client whose certificate another CA signed was answered: {refused:?}");
    // And a certificate of the cluster's CA is answered.
    let (cert, key) = ca.sign(&certs, "node4");
    let member = PeerTls::from_config(Some(&cert), Some(&key), Some(&ca.pem)).unwrap().unwrap();
    assert_eq!(empty_send(https().tls_config(member.client()).unwrap()).await, Ok(0));
}
