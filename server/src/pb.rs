//! The generated protobuf and gRPC code, and nothing else. Domain types never derive prost; the
//! gRPC layer converts at the edge.
#![allow(missing_docs, clippy::all)]

/// `backgroundtransfer.v1`: messages, and the clients and servers of `BackgroundTransferService`
/// and `TransferSystemService`.
pub mod backgroundtransfer {
    /// Version 1 of the contract.
    pub mod v1 {
        tonic::include_proto!("backgroundtransfer.v1");
    }
}

/// Encoded file descriptor set of `proto/`, served by gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
    env!("OUT_DIR"),
    "/backgroundtransfer_descriptor.bin"
));
