//! End-to-end: the gRPC edge as a hostile or careless client meets it: what the server does
//! with its sockets, and how it answers input it must refuse.

mod common;

use common::*;
use tonic::Code;

/// Accepted gRPC connections have TCP_NODELAY, read from the server's own socket (through
/// pidfd_getfd), so small responses on a multiplexed connection never wait for delayed ACKs.
#[tokio::test]
async fn accepted_connections_have_tcp_nodelay() {
    let h = Harness::start(&[]).await;
    h.system_status().await;
    common::sockets::assert_accepted_sockets_have_nodelay(&h.server);
}

/// A huge guid, header name or path is refused with the right code and a message that repeats
/// only the start of it, so the answer fits in gRPC metadata for any client.
#[tokio::test]
async fn messages_never_echo_unbounded_input() {
    let h = Harness::start(&[]).await;
    let huge = "x".repeat(20_000);
    let err = h.client.get(&huge).await.expect_err("an unknown guid");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().len() < 300, "{}", err.message());
    assert!(err.message().contains("20000 bytes"), "{}", err.message());

    let ok = "http://127.0.0.1:9/file";
    let mut headers = pb::CreateDownloadRequest {
        request_headers: [(format!("{huge} name"), "v".to_string())].into(),
        ..create_request(ok, "a")
    };
    let err = h
        .client
        .create(headers.clone())
        .await
        .expect_err("a bad header name");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().len() < 300, "{}", err.message());
    headers.request_headers.clear();
    headers.result_file = format!("{huge}/a");
    let err = h.client.create(headers).await.expect_err("a path too long");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().len() < 300, "{}", err.message());
    assert!(h.list_guids().await.is_empty());
}

/// Only page tokens the server handed out are accepted; anything else is INVALID_ARGUMENT
/// rather than a silent first page.
#[tokio::test]
async fn page_tokens_the_server_never_issued_are_refused() {
    let h = Harness::start(&[]).await;
    for i in 0..3 {
        h.create("http://127.0.0.1:9/file", &format!("f{i}")).await;
    }
    let first = h.client.list(None, 2, "").await.expect("the first page");
    assert_eq!(first.downloads.len(), 2);
    let second = h
        .client
        .list(None, 2, &first.next_page_token)
        .await
        .expect("the token the server issued");
    assert_eq!(second.downloads.len(), 1);
    for bad in [
        "18446744073709551615",
        "+1",
        "-1",
        "01",
        "abc",
        "4",
        "99999999",
    ] {
        let err = h.client.list(None, 2, bad).await.expect_err(bad);
        assert_eq!(err.code(), Code::InvalidArgument, "{bad}: {err:?}");
        assert!(err.message().contains("not a token"), "{bad}: {err:?}");
    }
}

/// Sends raw bytes as a request, bypassing protobuf encoding.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        buf: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(buf, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        buf: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let len = bytes::Buf::remaining(buf);
        Ok(Some(bytes::Buf::copy_to_bytes(buf, len).to_vec()))
    }
}

/// A request body that is not valid protobuf is INVALID_ARGUMENT with a readable message, on a
/// unary call and on a streaming one, and nothing is stored.
#[tokio::test]
async fn a_request_that_is_not_protobuf_is_invalid_argument() {
    let h = Harness::start(&[]).await;
    let channel = h.server.channel().await;
    let service = "/backgroundtransfer.v1.BackgroundTransferService";
    // Field 1 with wire type 7, which does not exist; then a truncated length-delimited field.
    for (method, body) in [
        ("CreateDownload", vec![0x0f, 0x01]),
        ("GetDownload", vec![0x0a, 0x05, b'a']),
        ("WatchDownload", vec![0x0f]),
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let path = format!("{service}/{method}").parse().unwrap();
        let err = if method == "WatchDownload" {
            grpc.server_streaming(tonic::Request::new(body), path, RawCodec)
                .await
                .map(|_| ())
                .expect_err(method)
        } else {
            grpc.unary(tonic::Request::new(body), path, RawCodec)
                .await
                .map(|_| ())
                .expect_err(method)
        };
        assert_eq!(err.code(), Code::InvalidArgument, "{method}: {err:?}");
        assert!(
            err.message()
                .contains("not a valid backgroundtransfer.v1 message"),
            "{method}: {err:?}"
        );
    }
    assert!(h.list_guids().await.is_empty());
}

/// A call to a service or method this server does not serve is UNIMPLEMENTED, whatever part of
/// the path is wrong, and the server goes on serving.
#[tokio::test]
async fn a_call_nobody_serves_is_unimplemented() {
    let h = Harness::start(&[]).await;
    let channel = h.server.channel().await;
    for path in [
        "/no.such.v1.Service/Call",
        "/backgroundtransfer.v1.BackgroundTransferService/NoSuchMethod",
        "/backgroundtransfer.v1.TransferSystemService/NoSuchMethod",
        "/grpc.health.v1.Health/NoSuchMethod",
        "/backgroundtransfer.v1.BackgroundTransferService",
        "/backgroundtransfer.v1.BackgroundTransferService/",
        "/",
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let err = grpc
            .unary(
                tonic::Request::new(Vec::new()),
                path.parse().unwrap(),
                RawCodec,
            )
            .await
            .map(|_| ())
            .expect_err(path);
        assert_eq!(err.code(), Code::Unimplemented, "{path}: {err:?}");
    }
    assert!(h.list_guids().await.is_empty());
}
