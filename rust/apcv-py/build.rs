//! Generates the Rust types of the public contract, protos/apcv/verify/v1/verifier.proto (the
//! single source of truth, shared with the Python and Go code), for src/wire.rs: protox parses
//! the file (no protoc on the build machine), prost-build writes the types to OUT_DIR.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest.join("../../protos");
    let proto = root.join("apcv/verify/v1/verifier.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    let files = protox::compile([&proto], [&root])?;
    prost_build::Config::new().compile_fds(files)?;
    Ok(())
}
