//! Runs the Python client tests (`tests/python/run.sh`): the official
//! Segment and RudderStack SDKs and a grpcio client against a real
//! `cohort serve`. The script makes its own virtualenv from PyPI on first
//! use; it fails, never skips, when Python or PyPI is missing.

#[test]
fn python_clients_against_a_real_server() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/run.sh");
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg("-q")
        .env("COHORT_BIN", env!("CARGO_BIN_EXE_cohort"))
        .output()
        .expect("run tests/python/run.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "tests/python/run.sh failed:\n{text}");
    assert!(text.contains(" passed"), "no pytest summary:\n{text}");
}
