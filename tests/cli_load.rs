//! The generated dataset loaded through the CLI (`cohort schema apply`,
//! `cohort load` of plain and gzip NDJSON) into a real server, every count
//! of a query mix compared with the brute-force evaluator of tests/oracle
//! over the same profiles.

mod common;
mod oracle;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::Command;

use cohort::demo;
use cohort::segment::parse;
use common::Server;
use oracle::Model;

const QUERIES: &[&str] = &[
    r#"country = "FR""#,
    r#"country IN ("FR", "BE", "CH") AND age BETWEEN 25 AND 34 AND plan != "free""#,
    r#"tags CONTAINS "vip" OR ltv > 500"#,
    r#"newsletter = true AND NOT country = "US""#,
    r#"signup_at > "2026-06-01T00:00:00Z""#,
    r#"email = "nobody@example.com""#,
    r#"age < 30 OR age >= 60"#,
    r#"city EXISTS AND NOT tags CONTAINS "churned""#,
    r#"DID "purchase" IN LAST 30 DAYS"#,
    r#"DID "purchase" IN LAST 30 DAYS AND NOT DID "email_open" IN LAST 7 DAYS"#,
    r#"DID "app_open" AT LEAST 3 TIMES IN LAST 90 DAYS"#,
    r#"DID "purchase" WHERE amount > 100 AND category = "shoes" AT LEAST 2 TIMES IN LAST 90 DAYS"#,
    r#"DID "add_to_cart" IN LAST 14 DAYS AND NOT DID "purchase" IN LAST 14 DAYS"#,
    r#"DID "email_click" AT MOST 1 TIMES IN LAST 60 DAYS"#,
    r#"last_seen < NOW - 14 DAYS AND user_id EXISTS"#,
    r#"first_seen > NOW - 180 DAYS"#,
    r#"anonymous_id EXISTS"#,
];

fn cohort(server: &Server, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cohort"))
        .args(["--addr", &format!("http://{}", server.grpc)])
        .args(args)
        .output()
        .expect("run cohort");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "cohort {args:?} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_data_loaded_by_the_cli_counts_like_the_oracle() {
    let cfg = cohort_datagen::Config { seed: 11, profiles: 3_000, now_ms: cohort_datagen::DEFAULT_NOW_MS };
    let dir = tempfile::tempdir().unwrap();
    // First half plain, second half gzip.
    let (mut plain, mut zipped) = (Vec::new(), Vec::new());
    let mut model = Model::new(1);
    let schema = demo::schema();
    let mut messages = 0;
    for i in 0..cfg.profiles {
        let p = cohort_datagen::profile(&cfg, i);
        messages +=
            cohort_datagen::write_ndjson(&p, if i < cfg.profiles / 2 { &mut plain } else { &mut zipped });
        for mut cmd in demo::profile_commands(&schema, &p) {
            model.stamp(&mut cmd);
            model.apply(&cmd);
        }
    }
    let plain_path = dir.path().join("first.ndjson");
    std::fs::write(&plain_path, &plain).unwrap();
    let gz_path = dir.path().join("second.ndjson.gz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&zipped).unwrap();
    std::fs::write(&gz_path, gz.finish().unwrap()).unwrap();
    let schema_path = dir.path().join("schema.json");
    let declared: BTreeMap<&str, &str> = cohort_datagen::schema().into_iter().collect();
    std::fs::write(&schema_path, serde_json::json!({ "traits": declared }).to_string()).unwrap();

    let server = Server::start(&dir.path().join("data"), 4, &[]);
    cohort(&server, &["schema", "apply", schema_path.to_str().unwrap()]);
    let out = cohort(&server, &["--json", "load", plain_path.to_str().unwrap(), gz_path.to_str().unwrap()]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let text = report.to_string();
    assert!(text.contains(&format!("\"applied\":{messages}")), "load report: {text}");

    let now = "2026-11-01T00:00:00Z";
    let catalog = BTreeMap::new();
    let mut exprs: Vec<&str> = QUERIES.to_vec();
    exprs.sort();
    let counts = server.count(&exprs).await;
    for (q, got) in exprs.iter().zip(counts) {
        let expr = parse(q).unwrap();
        let want = model.count(0, &expr, cfg.now_ms, &schema, &catalog);
        assert_eq!(got, want, "{q}");
    }
    assert_eq!(server.universe().await, cfg.profiles);
    // The CLI's human count agrees too.
    let human = cohort(&server, &["count", "--now", now, QUERIES[0]]);
    let want = model.count(0, &parse(QUERIES[0]).unwrap(), cfg.now_ms, &schema, &catalog);
    assert!(human.contains(&want.to_string()), "{human}");
    // Loading the same files again: everything is a duplicate.
    let out = cohort(&server, &["--json", "load", plain_path.to_str().unwrap()]);
    assert!(out.contains("\"applied\":0") || out.contains("\"applied\": 0"), "{out}");
}
