//! Compiles `proto/cohort/v1/*.proto` (the public API) and
//! `proto/cohort/internal/v1/*.proto` (between nodes) with the protoc shipped by
//! `protoc-bin-vendored`, so no step relies on a protoc installed by hand.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("cohort_descriptor.bin"))
        .compile_protos(&["proto/cohort/v1/cohort.proto"], &["proto"])?;
    tonic_prost_build::configure().compile_protos(&["proto/cohort/internal/v1/raft.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
