//! Compiles `veil/v1/inference.proto` and `veil/v1/attestation.proto` with the pure-Rust `protox` (no `protoc` needed) and
//! generates messages, client and server with `tonic-prost-build`. The encoded file descriptor
//! set is written to `OUT_DIR/veil_descriptor.bin` for gRPC reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["veil/v1/inference.proto", "veil/v1/attestation.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(protos, ["."])?;
    std::fs::write(out_dir.join("veil_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // prost's codec, except that a request that does not decode is INVALID_ARGUMENT naming
        // the field (src/codec.rs).
        .codec_path("crate::codec::VeilCodec")
        .compile_fds(fds)?;
    Ok(())
}
