//! OTLP/gRPC answers with the tonic client and raw HTTP/2 requests: one test per row of the
//! "OTLP receiver answers" table; after each refusal a good request still succeeds.

// Helpers outside #[test] fns unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use sonde_otlp_receive::Receiver;
use sonde_otlp_receive::status::{RETRY_INFO_TYPE_URL, RetryInfo, RpcStatus};
use tonic::Code;
use tonic::codec::CompressionEncoding;
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;

async fn client(receiver: &Receiver) -> TraceServiceClient<Channel> {
    let addr = receiver.grpc_local_addr().unwrap();
    TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_encoding_message_size(64 * MIB)
}

async fn still_serves(receiver: &Receiver, sink: &RecordingSink) {
    let before = sink.trace_requests();
    let resp = client(receiver).await.export(trace_request("ok", 1)).await;
    assert!(resp.is_ok(), "good request after a bad one: {resp:?}");
    assert_eq!(sink.trace_requests(), before + 1);
}

fn details(status: &tonic::Status) -> RpcStatus {
    RpcStatus::decode(status.details()).expect("google.rpc.Status in grpc-status-details-bin")
}

#[tokio::test]
async fn tonic_client_exports_all_signals_plain_and_gzip() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.grpc_local_addr().unwrap();
    let resp = client(&receiver)
        .await
        .export(trace_request("plain", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp, ExportTraceServiceResponse::default());
    let mut gz = client(&receiver)
        .await
        .send_compressed(CompressionEncoding::Gzip);
    gz.export(trace_request("gzip", 3)).await.unwrap();
    assert_eq!(
        sink.span_names(),
        ["gzip-0", "gzip-1", "gzip-2", "plain-0", "plain-1"]
    );
    let (peer, _, len) = sink.traces.lock().unwrap()[0].clone();
    assert!(peer.ip().is_loopback());
    assert_eq!(len, trace_request("plain", 2).encoded_len());

    let mut metrics = MetricsServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    metrics
        .export(ExportMetricsServiceRequest::default())
        .await
        .unwrap();
    let mut logs = LogsServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    logs.export(ExportLogsServiceRequest::default())
        .await
        .unwrap();
    assert_eq!(sink.metrics.lock().unwrap().len(), 1);
    assert_eq!(sink.logs.lock().unwrap().len(), 1);
    assert_eq!(receiver.stats().traces.items, 5);
    receiver.shutdown().await;
}

#[tokio::test]
async fn undecodable_is_invalid_argument() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.grpc_local_addr().unwrap();
    let answer = grpc_raw(
        addr,
        TRACE_PATH,
        &[],
        grpc_frame(false, b"\xff\xff\xff\xff\xff\x0fgarbage"),
    )
    .await;
    assert_eq!(answer.status.code(), Code::InvalidArgument, "{answer:?}");
    still_serves(&receiver, &sink).await;

    let pb = trace_request("t", 4).encode_to_vec();
    let answer = grpc_raw(
        addr,
        TRACE_PATH,
        &[],
        grpc_frame(false, &pb[..pb.len() - 5]),
    )
    .await;
    assert_eq!(
        answer.status.code(),
        Code::InvalidArgument,
        "truncated protobuf"
    );
    still_serves(&receiver, &sink).await;

    let answer = grpc_raw(addr, TRACE_PATH, &[], b"\0\0\0".to_vec()).await;
    assert_eq!(
        answer.status.code(),
        Code::InvalidArgument,
        "truncated frame"
    );
    let answer = grpc_raw(
        addr,
        TRACE_PATH,
        &[("grpc-encoding", "gzip")],
        grpc_frame(true, b"not gzip"),
    )
    .await;
    assert_eq!(answer.status.code(), Code::InvalidArgument, "bad gzip");
    still_serves(&receiver, &sink).await;
    receiver.shutdown().await;
}

#[tokio::test]
async fn unsupported_encoding_and_unknown_method_are_unimplemented() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.grpc_local_addr().unwrap();
    let pb = trace_request("t", 1).encode_to_vec();
    for encoding in ["snappy", "zstd", "deflate"] {
        let answer = grpc_raw(
            addr,
            TRACE_PATH,
            &[("grpc-encoding", encoding)],
            grpc_frame(true, &pb),
        )
        .await;
        assert_eq!(
            answer.status.code(),
            Code::Unimplemented,
            "{encoding}: {answer:?}"
        );
        assert!(answer.status.message().contains(encoding));
        still_serves(&receiver, &sink).await;
    }
    let answer = grpc_raw(
        addr,
        "/opentelemetry.proto.collector.trace.v1.TraceService/Nope",
        &[],
        grpc_frame(false, &pb),
    )
    .await;
    assert_eq!(answer.status.code(), Code::Unimplemented);
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().traces.refused_unsupported, 3);
    receiver.shutdown().await;
}

#[tokio::test]
async fn oversized_and_gzip_bomb_are_resource_exhausted_without_retry_info() {
    let (receiver, sink) = start(MIB, 64 * MIB).await;
    let addr = receiver.grpc_local_addr().unwrap();

    let big = trace_request("big", 30_000);
    assert!(big.encoded_len() > MIB);
    let status = client(&receiver)
        .await
        .export(big.clone())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        details(&status).details.is_empty(),
        "no RetryInfo: clients must not retry"
    );
    still_serves(&receiver, &sink).await;

    let status = client(&receiver)
        .await
        .send_compressed(CompressionEncoding::Gzip)
        .export(big)
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "compressed but too large once inflated"
    );
    still_serves(&receiver, &sink).await;

    let bomb = gzip(&vec![0u8; 10 * MIB]);
    let started = Instant::now();
    let answer = grpc_raw(
        addr,
        TRACE_PATH,
        &[("grpc-encoding", "gzip")],
        grpc_frame(true, &bomb),
    )
    .await;
    assert_eq!(answer.status.code(), Code::ResourceExhausted);
    assert!(started.elapsed() < Duration::from_secs(2));
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().traces.refused_too_large, 3);
    receiver.shutdown().await;
}

#[tokio::test]
async fn empty_and_partial_success() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.grpc_local_addr().unwrap();
    let answer = grpc_raw(addr, TRACE_PATH, &[], grpc_frame(false, b"")).await;
    assert_eq!((answer.http_status, answer.status.code()), (200, Code::Ok));
    assert_eq!(
        ExportTraceServiceResponse::decode(answer.message.as_slice()).unwrap(),
        Default::default()
    );

    sink.set_mode(Mode::Partial(1, "one span rejected".into()));
    let resp = client(&receiver)
        .await
        .export(trace_request("p", 2))
        .await
        .unwrap()
        .into_inner();
    let partial = resp.partial_success.unwrap();
    assert_eq!(
        (partial.rejected_spans, partial.error_message.as_str()),
        (1, "one span rejected")
    );
    sink.set_mode(Mode::Accept);
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().traces.partial_rejected, 1);
    receiver.shutdown().await;
}

#[tokio::test]
async fn overload_is_unavailable_with_retry_info() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    sink.set_mode(Mode::Overloaded(Duration::from_secs(4)));
    let status = client(&receiver)
        .await
        .export(trace_request("o", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let rpc = details(&status);
    assert_eq!(rpc.code, 14);
    assert_eq!(rpc.details[0].type_url, RETRY_INFO_TYPE_URL);
    let info = RetryInfo::decode(rpc.details[0].value.as_slice()).unwrap();
    assert_eq!(info.retry_delay.unwrap().seconds, 4);
    sink.set_mode(Mode::Accept);
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().traces.refused_overloaded, 1);
    receiver.shutdown().await;
}

#[tokio::test]
async fn python_grpcio_sees_the_codes() {
    // grpcio is what the Python SDK uses: check it reads our trailers-only errors as codes.
    let (receiver, _sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.grpc_local_addr().unwrap();
    let script = r#"
import sys, grpc
ch = grpc.insecure_channel(sys.argv[1])
call = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                      request_serializer=lambda b: b, response_deserializer=lambda b: b)
try:
    call(b"\xff\xff\xff garbage", timeout=5)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name)
print(call(b"", timeout=5) == b"" and "EMPTY_OK")
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(addr.to_string())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "INVALID_ARGUMENT\nEMPTY_OK",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    receiver.shutdown().await;
}

#[tokio::test]
async fn handler_mounts_on_a_plain_tonic_server() {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(receiver.grpc_handler()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    let server = tokio::spawn(server);
    let mut client = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client.export(trace_request("mounted", 2)).await.unwrap();
    let mut bad = trace_request("bad", 1);
    bad.resource_spans[0].scope_spans[0].spans[0].span_id = vec![1, 2, 3];
    let status = client.export(bad).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(sink.span_names(), ["mounted-0", "mounted-1"]);
    let stats = receiver.stats();
    assert_eq!(
        (
            stats.traces.requests,
            stats.traces.items,
            stats.traces.refused_invalid
        ),
        (2, 2, 1)
    );
    server.abort();
    receiver.shutdown().await;
}

#[tokio::test]
async fn memory_budget_overload_is_unavailable_with_retry_info() {
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let (receiver, sink) = start(MIB, 64 * 1024).await;
    let addr = receiver.grpc_local_addr().unwrap();
    // A slow client holds most of the 64 KiB budget: 60 KB of a message it never finishes.
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let req = http::Request::post(format!("http://{addr}{TRACE_PATH}"))
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap();
    let pending = tokio::spawn(async move { sender.send_request(req).await });
    let mut partial = grpc_frame(false, &vec![0u8; 100_000]);
    partial.truncate(60_000);
    tx.send(Ok(Frame::data(Bytes::from(partial))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let status = client(&receiver)
        .await
        .export(trace_request("b", 200))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let rpc = details(&status);
    assert_eq!(rpc.details[0].type_url, RETRY_INFO_TYPE_URL);

    drop(tx);
    drop(pending);
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().inflight_bytes, 0);
    receiver.shutdown().await;
}
