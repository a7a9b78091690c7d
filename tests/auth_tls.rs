//! Authentication, roles and TLS of a real `cohort serve` process: API keys
//! on every gRPC method and HTTP route, the CLI's `--api-key` and
//! `COHORT_API_KEY`, TLS on both doors with a certificate made here, the
//! refusal to serve a non-loopback address unprotected without
//! `--insecure`, and `Status` keeping the data directory for admins.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cohort::proto::v1 as pb;
use common::{free_port, http_exchange, http_request, serve_refused, Server};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Request, Status};

/// The keys most tests configure, one per role, by environment.
const KEYS_ENV: &str = "ik-0123456789:ingest,rk-0123456789:read,ak-0123456789:admin";
const INGEST_KEY: &str = "ik-0123456789";
const READ_KEY: &str = "rk-0123456789";
const ADMIN_KEY: &str = "ak-0123456789";

fn start_keyed(dir: &Path, extra: &[&str]) -> Server {
    Server::start_with_env(dir, 2, extra, &[("COHORT_API_KEYS", KEYS_ENV)])
}

/// How a call presents its key.
#[derive(Clone, Copy, Debug)]
enum Key<'a> {
    /// No key.
    None,
    /// `authorization: Bearer KEY`.
    Bearer(&'a str),
    /// `x-api-key: KEY`.
    Header(&'a str),
}

fn with_key<T>(message: T, key: Key<'_>) -> Request<T> {
    let mut request = Request::new(message);
    match key {
        Key::None => {}
        Key::Bearer(k) => {
            request.metadata_mut().insert("authorization", format!("Bearer {k}").parse().unwrap());
        }
        Key::Header(k) => {
            request.metadata_mut().insert("x-api-key", k.parse().unwrap());
        }
    }
    request
}

/// Every method of the four services, with the role it needs.
const METHODS: &[(&str, &str)] = &[
    ("Ingest/IngestBatch", "ingest"),
    ("Ingest/IngestStream", "ingest"),
    ("Query/Count", "read"),
    ("Query/Check", "read"),
    ("Query/Members", "read"),
    ("Query/Breakdown", "read"),
    ("Query/GetProfile", "read"),
    ("Segments/CreateSegment", "admin"),
    ("Segments/GetSegment", "read"),
    ("Segments/ListSegments", "read"),
    ("Segments/DeleteSegment", "admin"),
    ("Admin/Status", "read"),
    ("Admin/GetSchema", "read"),
    ("Admin/ApplySchema", "admin"),
    ("Admin/ListRejected", "admin"),
    ("Admin/ListMerges", "admin"),
];

/// Calls `method` with `key`; the status of a refusal, `Ok` otherwise.
async fn call(channel: &Channel, method: &str, key: Key<'_>, n: usize) -> Result<(), Status> {
    let mut ingest = pb::ingest_client::IngestClient::new(channel.clone());
    let mut query = pb::query_client::QueryClient::new(channel.clone());
    let mut segments = pb::segments_client::SegmentsClient::new(channel.clone());
    let mut admin = pb::admin_client::AdminClient::new(channel.clone());
    let message = format!(r#"{{"type":"identify","userId":"u{n}","traits":{{"plan":"pro"}}}}"#);
    match method {
        "Ingest/IngestBatch" => ingest
            .ingest_batch(with_key(pb::IngestBatchRequest { messages: vec![message] }, key))
            .await
            .map(drop),
        "Ingest/IngestStream" => {
            let batches = tokio_stream::iter(vec![pb::IngestBatchRequest { messages: vec![message] }]);
            ingest.ingest_stream(with_key(batches, key)).await.map(drop)
        }
        "Query/Count" => query
            .count(with_key(
                pb::CountRequest {
                    expressions: vec!["user_id EXISTS".into()],
                    now: String::new(),
                    max_staleness_ms: 0,
                    allow_partial: false,
                },
                key,
            ))
            .await
            .map(drop),
        "Query/Check" => query
            .check(with_key(
                pb::CheckRequest {
                    profile: "u0".into(),
                    expressions: vec!["user_id EXISTS".into()],
                    now: String::new(),
                },
                key,
            ))
            .await
            .map(drop),
        "Query/Members" => {
            let request =
                pb::MembersRequest { expression: "user_id EXISTS".into(), limit: 5, ..Default::default() };
            let mut stream = query.members(with_key(request, key)).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        }
        "Query/Breakdown" => query
            .breakdown(with_key(
                pb::BreakdownRequest {
                    trait_name: "plan".into(),
                    expression: "user_id EXISTS".into(),
                    ..Default::default()
                },
                key,
            ))
            .await
            .map(drop),
        "Query/GetProfile" => query
            .get_profile(with_key(pb::GetProfileRequest { profile: "u0".into(), recent_events: 5 }, key))
            .await
            .map(drop),
        "Segments/CreateSegment" => segments
            .create_segment(with_key(
                pb::CreateSegmentRequest {
                    name: format!("s{n}"),
                    expression: "user_id EXISTS".into(),
                    description: String::new(),
                },
                key,
            ))
            .await
            .map(drop),
        "Segments/GetSegment" => {
            segments.get_segment(with_key(pb::GetSegmentRequest { name: "s0".into() }, key)).await.map(drop)
        }
        "Segments/ListSegments" => {
            segments.list_segments(with_key(pb::ListSegmentsRequest {}, key)).await.map(drop)
        }
        "Segments/DeleteSegment" => segments
            .delete_segment(with_key(pb::DeleteSegmentRequest { name: format!("s{n}") }, key))
            .await
            .map(drop),
        "Admin/Status" => admin.status(with_key(pb::StatusRequest {}, key)).await.map(drop),
        "Admin/GetSchema" => admin.get_schema(with_key(pb::GetSchemaRequest::default(), key)).await.map(drop),
        "Admin/ApplySchema" => admin
            .apply_schema(with_key(
                pb::ApplySchemaRequest { json: r#"{"traits":{"plan":"keyword"}}"#.into() },
                key,
            ))
            .await
            .map(drop),
        "Admin/ListRejected" => {
            admin.list_rejected(with_key(pb::ListRejectedRequest { limit: 5 }, key)).await.map(drop)
        }
        "Admin/ListMerges" => {
            admin.list_merges(with_key(pb::ListMergesRequest { limit: 5 }, key)).await.map(drop)
        }
        other => panic!("no call for {other}"),
    }
}

/// Whether a role may do what `needed` requires: admin may do everything.
fn allows(role: &str, needed: &str) -> bool {
    role == "admin" || role == needed
}

fn is_auth_refusal(status: &Status) -> bool {
    matches!(status.code(), Code::Unauthenticated | Code::PermissionDenied)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_method_needs_a_key_with_its_role() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_keyed(dir.path(), &[]);
    let channel = s.channel().await;
    for (n, (method, needed)) in METHODS.iter().enumerate() {
        // No key, and keys the node does not know, in both places.
        for key in [Key::None, Key::Bearer("not-a-key"), Key::Header("rk-012345678"), Key::Bearer("")] {
            let status = call(&channel, method, key, n).await.expect_err(&format!("{method} with {key:?}"));
            assert_eq!(status.code(), Code::Unauthenticated, "{method} with {key:?}: {status:?}");
            assert!(!status.message().contains("rk-0123"), "a key is never echoed: {status:?}");
        }
        for (role, key) in [("ingest", INGEST_KEY), ("read", READ_KEY), ("admin", ADMIN_KEY)] {
            for presented in [Key::Bearer(key), Key::Header(key)] {
                let result = call(&channel, method, presented, n).await;
                if allows(role, needed) {
                    if let Err(status) = &result {
                        assert!(!is_auth_refusal(status), "{method} with the {role} key: {status:?}");
                    }
                } else {
                    let status = result.expect_err(&format!("{method} with the {role} key"));
                    assert_eq!(
                        status.code(),
                        Code::PermissionDenied,
                        "{method} with the {role} key: {status:?}"
                    );
                    assert!(
                        status.message().contains(&format!("the {needed} role"))
                            && status.message().contains(&format!("has the {role} role")),
                        "{method} with the {role} key: {status:?}"
                    );
                    assert!(!status.message().contains(key), "a key is never echoed: {status:?}");
                }
            }
        }
    }
    // What the ingest key wrote, the read key sees.
    let mut query = pb::query_client::QueryClient::new(channel.clone());
    let reply = query
        .count(with_key(
            pb::CountRequest {
                expressions: vec![r#"plan = "pro""#.into()],
                now: String::new(),
                max_staleness_ms: 0,
                allow_partial: false,
            },
            Key::Bearer(READ_KEY),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(reply.counts[0] >= 2, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_come_from_the_config_file_and_the_environment_merged() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cohort.toml");
    std::fs::write(&config, "[[api_keys]]\nkey = \"file-admin-key\"\nrole = \"admin\"\n").unwrap();
    let config = config.to_str().unwrap();
    let s = Server::start_with_env(
        &dir.path().join("data"),
        2,
        &["--config", config],
        &[("COHORT_API_KEYS", "env-read-key:read")],
    );
    let channel = s.channel().await;
    assert_eq!(call(&channel, "Admin/Status", Key::None, 0).await.unwrap_err().code(), Code::Unauthenticated);
    call(&channel, "Admin/ApplySchema", Key::Bearer("file-admin-key"), 0).await.unwrap();
    call(&channel, "Query/Count", Key::Bearer("env-read-key"), 0).await.unwrap();
    let denied = call(&channel, "Admin/ApplySchema", Key::Bearer("env-read-key"), 0).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    drop(s);

    // A role that does not exist stops the start, naming it and the roles.
    let data = dir.path().join("data2");
    let data = data.to_str().unwrap();
    let (status, stderr) = serve_refused(
        &["--data-dir", data, "--grpc-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"],
        &[("COHORT_API_KEYS", "k1:read,k2:superuser")],
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?}: {stderr}");
    assert!(
        stderr.contains("COHORT_API_KEYS")
            && stderr.contains("superuser")
            && stderr.contains("ingest, read, admin"),
        "{stderr}"
    );
    assert!(!stderr.contains("k1"), "keys are not echoed: {stderr}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[api_keys]]\nkey = \"k3\"\nrole = \"root\"\n").unwrap();
    let (status, stderr) = serve_refused(
        &[
            "--config",
            bad.to_str().unwrap(),
            "--data-dir",
            data,
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ],
        &[],
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?}: {stderr}");
    assert!(stderr.contains("bad.toml") && stderr.contains("root") && stderr.contains("admin"), "{stderr}");
}

/// The first count of `cohort --json count` output.
fn first_count(out: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["counts"][0]["count"].as_u64().unwrap_or_else(|| panic!("no count in {out}"))
}

/// Runs the CLI against `server` with these extra environment variables;
/// returns (success, stdout, stderr).
fn cli(addr: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["--addr", addr])
        .args(args)
        .env_remove("COHORT_API_KEY")
        .env_remove("COHORT_TLS_CA")
        .envs(env.iter().copied())
        .output()
        .expect("run cohort");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sends_the_key_of_api_key_or_cohort_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = start_keyed(&dir.path().join("data"), &[]);
    let addr = format!("http://{}", s.grpc);
    let file = dir.path().join("m.ndjson");
    std::fs::write(
        &file,
        "{\"type\":\"identify\",\"userId\":\"c1\",\"traits\":{\"plan\":\"pro\"}}\n\
         {\"type\":\"identify\",\"userId\":\"c2\",\"traits\":{\"plan\":\"pro\"}}\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let (ok, _, err) = cli(&addr, &["load", file], &[]);
    assert!(!ok && err.contains("UNAUTHENTICATED"), "{err}");
    let (ok, _, err) = cli(&addr, &["--api-key", READ_KEY, "load", file], &[]);
    assert!(!ok && err.contains("PERMISSION_DENIED") && err.contains("ingest"), "{err}");
    let (ok, out, err) = cli(&addr, &["--json", "--api-key", INGEST_KEY, "load", file], &[]);
    assert!(ok, "{out}{err}");
    let (ok, out, err) = cli(&addr, &["--json", "load", file], &[("COHORT_API_KEY", ADMIN_KEY)]);
    assert!(ok, "{out}{err}");

    let (ok, _, err) = cli(&addr, &["count", r#"plan = "pro""#], &[]);
    assert!(!ok && err.contains("UNAUTHENTICATED"), "{err}");
    let (ok, out, err) = cli(&addr, &["--json", "--api-key", READ_KEY, "count", r#"plan = "pro""#], &[]);
    assert!(ok && first_count(&out) == 2, "{out}{err}");
    let (ok, out, err) = cli(&addr, &["--json", "count", r#"plan = "pro""#], &[("COHORT_API_KEY", READ_KEY)]);
    assert!(ok && first_count(&out) == 2, "{out}{err}");
    // Members streams its pages with the key too.
    let (ok, out, err) = cli(&addr, &["members", "user_id EXISTS"], &[("COHORT_API_KEY", READ_KEY)]);
    assert!(ok && out.contains("c1") && out.contains("c2"), "{out}{err}");
    let (ok, _, err) =
        cli(&addr, &["segment", "create", "pro", r#"plan = "pro""#], &[("COHORT_API_KEY", READ_KEY)]);
    assert!(!ok && err.contains("PERMISSION_DENIED") && err.contains("admin role"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_take_api_keys_and_write_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cohort.toml");
    std::fs::write(&config, "write_keys = [\"wk-live-1\"]\n").unwrap();
    let s = start_keyed(&dir.path().join("data"), &["--config", config.to_str().unwrap()]);
    let batch = r#"{"batch":[{"type":"identify","userId":"h1","traits":{"plan":"pro"}}]}"#;
    let track = r#"{"userId":"h1","event":"signup"}"#;
    let basic = |user: &str| {
        // Base64 of "user:" for the keys used here (ASCII).
        let text = format!("{user}:");
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for chunk in text.as_bytes().chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(table[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        format!("Basic {out}")
    };
    let bearer = |k: &str| format!("Bearer {k}");
    // Path, headers, body, expected status.
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, u16);
    let cases: Vec<Case> = vec![
        ("/v1/batch", vec![], batch, 401),
        ("/v1/batch", vec![("Authorization", basic("wk-live-1"))], batch, 200),
        ("/v1/batch", vec![("X-Write-Key", "wk-live-1".into())], batch, 200),
        ("/v1/batch", vec![("Authorization", bearer(INGEST_KEY))], batch, 200),
        ("/v1/batch", vec![("X-Api-Key", ADMIN_KEY.into())], batch, 200),
        // An SDK that sends only a write key can send an ingest API key as one.
        ("/v1/batch", vec![("Authorization", basic(INGEST_KEY))], batch, 200),
        ("/v1/batch", vec![("Authorization", bearer(READ_KEY))], batch, 403),
        ("/v1/batch", vec![("X-Api-Key", READ_KEY.into())], batch, 403),
        ("/v1/batch", vec![("Authorization", bearer("unknown-key"))], batch, 401),
        ("/v1/batch", vec![("Authorization", basic("wk-wrong"))], batch, 401),
        ("/v1/track", vec![("Authorization", bearer(INGEST_KEY))], track, 200),
        ("/v1/t", vec![("X-Api-Key", READ_KEY.into())], track, 403),
        ("/v1/t", vec![], track, 401),
    ];
    for (path, headers, body, expected) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, reply) = http_request(&s.http, "POST", path, &headers, body).await.unwrap();
        assert_eq!(status, *expected, "{path} with {headers:?}: {reply}");
        if status == 403 {
            assert!(reply.contains("ingest role") && reply.contains("read role"), "{reply}");
        }
        assert!(!reply.contains("k-0123") && !reply.contains("wk-"), "keys are never echoed: {reply}");
    }
    let (status, _) = http_request(&s.http, "GET", "/health", &[], "").await.unwrap();
    assert_eq!(status, 200, "health stays open for probes");
    drop(s);

    // API keys alone (no write keys): a key is required on HTTP too.
    let s = start_keyed(&dir.path().join("data2"), &[]);
    let (status, reply) = http_request(&s.http, "POST", "/v1/batch", &[], batch).await.unwrap();
    assert_eq!(status, 401, "{reply}");
    let (status, reply) =
        http_request(&s.http, "POST", "/v1/batch", &[("Authorization", &bearer(INGEST_KEY))], batch)
            .await
            .unwrap();
    assert_eq!(status, 200, "{reply}");
    let (status, reply) =
        http_request(&s.http, "POST", "/v1/batch", &[("X-Write-Key", "anything")], batch).await.unwrap();
    assert_eq!(status, 401, "{reply}");
}

/// A CA and a server certificate it signed for 127.0.0.1 and localhost,
/// written as PEM files in `dir`: (ca, cert, key).
fn make_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.distinguished_name.push(DnType::CommonName, "cohort test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "cohort test node");
    let cert = params.signed_by(&server_key, &issuer).unwrap();
    let (ca, crt, key) = (dir.join("ca.pem"), dir.join("node.pem"), dir.join("node-key.pem"));
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&key, server_key.serialize_pem()).unwrap();
    (ca, crt, key)
}

async fn tls_channel(addr: &str, ca: &Path) -> Result<Channel, tonic::transport::Error> {
    let ca = Certificate::from_pem(std::fs::read(ca).unwrap());
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(ca))?
        .connect()
        .await
}

fn rustls_client(ca: &Path) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_on_both_doors_with_a_certificate_made_here() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certificates(dir.path());
    let s = Server::start(
        &dir.path().join("data"),
        2,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()],
    );

    // gRPC: a TLS client that trusts the CA is answered; plaintext is not.
    let channel = tls_channel(&s.grpc, &ca).await.expect("TLS connection");
    call(&channel, "Ingest/IngestBatch", Key::None, 1).await.unwrap();
    call(&channel, "Admin/Status", Key::None, 1).await.unwrap();
    let plain = Channel::from_shared(format!("http://{}", s.grpc)).unwrap().connect().await;
    match plain {
        Err(_) => {}
        Ok(plain) => {
            // The server closes the connection: depending on when, the
            // client sees it as unavailable, cancelled or a broken reply.
            let status =
                call(&plain, "Admin/Status", Key::None, 1).await.expect_err("plaintext gRPC must fail");
            assert!(
                matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled),
                "{status:?}"
            );
        }
    }

    // The CLI: https:// with --tls-ca or COHORT_TLS_CA; without the CA the
    // certificate is not trusted; a plaintext address fails.
    let https = format!("https://{}", s.grpc);
    let ca_path = ca.to_str().unwrap();
    let (ok, out, err) = cli(&https, &["--tls-ca", ca_path, "--json", "status"], &[]);
    assert!(ok && out.contains("\"node_id\""), "{out}{err}");
    let (ok, out, err) = cli(&https, &["--json", "count", "user_id EXISTS"], &[("COHORT_TLS_CA", ca_path)]);
    assert!(ok && first_count(&out) == 1, "{out}{err}");
    let (ok, out, err) = cli(&s.grpc, &["--tls-ca", ca_path, "--json", "status"], &[]);
    assert!(ok, "an address without a scheme takes TLS from --tls-ca: {out}{err}");
    let (ok, _, err) = cli(&https, &["status"], &[]);
    assert!(!ok, "a certificate from an unknown CA is refused: {err}");
    let (ok, _, err) = cli(&format!("http://{}", s.grpc), &["status"], &[]);
    assert!(!ok, "plaintext to a TLS door fails: {err}");

    // HTTP: the same over rustls, and a plaintext request gets no answer.
    let tcp = tokio::net::TcpStream::connect(&s.http).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = rustls_client(&ca).connect(name, tcp).await.expect("TLS handshake with the HTTP door");
    let body = r#"{"batch":[{"type":"identify","userId":"t2","traits":{"plan":"pro"}}]}"#;
    let (status, reply) = http_exchange(tls, "POST", "/v1/batch", &[], body).await.unwrap();
    assert_eq!(status, 200, "{reply}");
    let plain = http_request(&s.http, "POST", "/v1/batch", &[], body).await;
    assert!(plain.is_err(), "plaintext HTTP to the TLS door must fail: {plain:?}");
    let count = call(&channel, "Query/Count", Key::None, 1).await;
    assert!(count.is_ok(), "{count:?}");
    let mut query = pb::query_client::QueryClient::new(channel);
    let reply = query
        .count(pb::CountRequest {
            expressions: vec!["user_id EXISTS".into()],
            now: String::new(),
            max_staleness_ms: 0,
            allow_partial: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.counts, vec![2]);

    // Half a TLS configuration is refused.
    let data = dir.path().join("data2");
    let (status, stderr) = serve_refused(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
        ],
        &[],
    );
    assert!(status.is_some_and(|s| !s.success()) && stderr.contains("tls_key"), "{status:?}: {stderr}");
    // A key file that holds no key is named.
    let (status, stderr) = serve_refused(
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            cert.to_str().unwrap(),
        ],
        &[],
    );
    assert!(status.is_some_and(|s| !s.success()) && stderr.contains("node.pem"), "{status:?}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_loopback_address_needs_keys_and_tls_or_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (_, cert, key) = make_certificates(dir.path());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let loopback_http = format!("127.0.0.1:{}", free_port());

    // gRPC on every interface, nothing configured.
    let (status, stderr) =
        serve_refused(&["--data-dir", data, "--grpc-addr", "0.0.0.0:0", "--http-addr", &loopback_http], &[]);
    assert!(status.is_some_and(|s| !s.success()), "it must refuse to start: {status:?} {stderr}");
    assert!(
        stderr.contains("0.0.0.0:0")
            && stderr.contains("not a loopback address")
            && stderr.contains("no API keys")
            && stderr.contains("no TLS")
            && stderr.contains("--insecure"),
        "{stderr}"
    );
    // Keys but no TLS: says TLS is what is missing.
    let (status, stderr) = serve_refused(
        &["--data-dir", data, "--grpc-addr", "0.0.0.0:0", "--http-addr", &loopback_http],
        &[("COHORT_API_KEYS", KEYS_ENV)],
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?} {stderr}");
    assert!(stderr.contains("no TLS") && !stderr.contains("no API keys"), "{stderr}");
    // TLS but no keys.
    let (status, stderr) = serve_refused(
        &[
            "--data-dir",
            data,
            "--grpc-addr",
            "0.0.0.0:0",
            "--http-addr",
            &loopback_http,
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
        &[],
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?} {stderr}");
    assert!(stderr.contains("no API keys") && !stderr.contains("no TLS"), "{stderr}");
    // The HTTP door is held to the same rule.
    let (status, stderr) = serve_refused(
        &[
            "--data-dir",
            data,
            "--grpc-addr",
            &format!("127.0.0.1:{}", free_port()),
            "--http-addr",
            "0.0.0.0:0",
        ],
        &[],
    );
    assert!(status.is_some_and(|s| !s.success()), "{status:?} {stderr}");
    assert!(stderr.contains("HTTP") && stderr.contains("--insecure"), "{stderr}");

    // Keys and TLS together: it starts.
    let started = start_on(
        data,
        &["--grpc-addr", "0.0.0.0:0", "--tls-cert", cert, "--tls-key", key],
        &[("COHORT_API_KEYS", KEYS_ENV)],
    );
    assert!(started, "keys and TLS are enough to serve every interface");
    // --insecure, or `insecure = true` in the file: it starts.
    assert!(
        start_on(data, &["--grpc-addr", "0.0.0.0:0", "--insecure"], &[]),
        "--insecure overrides the rule"
    );
    let config = dir.path().join("insecure.toml");
    std::fs::write(&config, "insecure = true\n").unwrap();
    assert!(
        start_on(data, &["--grpc-addr", "0.0.0.0:0", "--config", config.to_str().unwrap()], &[]),
        "insecure = true overrides the rule"
    );
}

/// Starts `cohort serve` on `data` with loopback HTTP and `args`, and says
/// whether it came up serving (it is stopped again either way).
fn start_on(data: &str, args: &[&str], env: &[(&str, &str)]) -> bool {
    use std::io::{BufRead, BufReader};
    let http = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["serve", "--data-dir", data, "--http-addr", &http])
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("spawn cohort serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("cohort ") {
                let _ = tx.send(line);
            }
        }
    });
    let served = rx.recv_timeout(std::time::Duration::from_secs(60)).is_ok();
    let _ = child.kill();
    let _ = child.wait();
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_data_directory_to_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = start_keyed(&data, &[]);
    let channel = s.channel().await;
    let mut admin = pb::admin_client::AdminClient::new(channel);
    let as_reader =
        admin.status(with_key(pb::StatusRequest {}, Key::Bearer(READ_KEY))).await.unwrap().into_inner();
    assert_eq!(as_reader.data_dir, "", "a read key does not see the data directory: {as_reader:?}");
    assert!(
        as_reader.profiles == 0 && as_reader.node_id == 1 && !as_reader.groups.is_empty(),
        "{as_reader:?}"
    );
    let as_admin =
        admin.status(with_key(pb::StatusRequest {}, Key::Header(ADMIN_KEY))).await.unwrap().into_inner();
    assert_eq!(as_admin.data_dir, data.display().to_string());
    // The CLI says why it is not shown.
    let (ok, out, err) = cli(&format!("http://{}", s.grpc), &["status"], &[("COHORT_API_KEY", READ_KEY)]);
    assert!(ok && out.contains("admin role") && !out.contains(&data.display().to_string()), "{out}{err}");
    drop(s);

    // With no keys configured the node is open, as on loopback before.
    let s = Server::start(&data, 2, &[]);
    let mut admin = pb::admin_client::AdminClient::new(s.channel().await);
    let open = admin.status(pb::StatusRequest {}).await.unwrap().into_inner();
    assert_eq!(open.data_dir, data.display().to_string());
}
