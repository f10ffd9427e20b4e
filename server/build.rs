//! Compiles `proto/` without a system `protoc`: protox parses the .proto files in pure Rust, and
//! tonic-prost-build generates the messages, client and server into `OUT_DIR`. The encoded file
//! descriptor set is written there too, for gRPC server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/backgroundtransfer/v1/backgroundtransfer.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("backgroundtransfer_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // Our codec is prost's, except that a request that does not decode is INVALID_ARGUMENT.
    tonic_prost_build::configure()
        .codec_path("crate::grpc::codec::ProtoCodec")
        // Result chunks are handed from the file read to the wire without a copy.
        .bytes(".backgroundtransfer.v1.ResultChunk.data")
        .compile_fds(fds)?;
    Ok(())
}
