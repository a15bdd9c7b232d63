//! OTLP/HTTP answers, one test per row of the "OTLP receiver answers" table, with raw requests;
//! after each refusal the receiver must still accept a good request.

// Helpers outside #[test] fns unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use sonde_otlp_receive::Receiver;
use sonde_otlp_receive::status::{RETRY_INFO_TYPE_URL, RetryInfo, RpcStatus};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;

async fn still_serves(receiver: &Receiver, sink: &RecordingSink) {
    let before = sink.trace_requests();
    let resp = post_pb(
        receiver.http_local_addr().unwrap(),
        "/v1/traces",
        &trace_request("ok", 2).encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status, 200, "good request after a bad one: {resp:?}");
    assert_eq!(sink.trace_requests(), before + 1);
}

fn rpc_status(resp: &RawResponse) -> RpcStatus {
    assert_eq!(resp.header("content-type"), Some("application/x-protobuf"));
    RpcStatus::decode(resp.body.as_slice()).expect("google.rpc.Status body")
}

#[tokio::test]
async fn accepts_protobuf_and_json_and_empty_requests() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.http_local_addr().unwrap();

    let resp = post_pb(addr, "/v1/traces", &trace_request("pb", 3).encode_to_vec()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/x-protobuf"));
    assert_eq!(
        ExportTraceServiceResponse::decode(resp.body.as_slice()).unwrap(),
        Default::default()
    );

    let json = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c",
        "spanId":"eee19b7ec3c1b174","name":"json-span","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2",
        "attributes":[{"key":"http.route","value":{"stringValue":"/users/{id}"}}]}]}]}]}"#;
    let req = http_request(
        "POST",
        "/v1/traces",
        &[("Content-Type", "application/json")],
        json.as_bytes(),
    );
    let resp = http_raw(addr, &req).await;
    assert_eq!(resp.status, 200, "{resp:?}");
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert_eq!(resp.body, b"{}");

    let gz = gzip(&trace_request("gz", 2).encode_to_vec());
    let req = http_request(
        "POST",
        "/v1/traces",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
        &gz,
    );
    assert_eq!(http_raw(addr, &req).await.status, 200);

    for path in ["/v1/traces", "/v1/metrics", "/v1/logs"] {
        assert_eq!(
            post_pb(addr, path, b"").await.status,
            200,
            "empty protobuf to {path}"
        );
        let req = http_request("POST", path, &[("Content-Type", "application/json")], b"{}");
        let resp = http_raw(addr, &req).await;
        assert_eq!(
            (resp.status, resp.body.as_slice()),
            (200, b"{}".as_slice()),
            "empty JSON to {path}"
        );
    }
    assert_eq!(
        sink.span_names(),
        ["gz-0", "gz-1", "json-span", "pb-0", "pb-1", "pb-2"]
    );
    assert_eq!(sink.metrics.lock().unwrap().len(), 2);
    assert_eq!(sink.logs.lock().unwrap().len(), 2);
    let stats = receiver.stats();
    assert_eq!(stats.traces.items, 6);
    assert_eq!(stats.traces.requests, 5);
    receiver.shutdown().await;
}

#[tokio::test]
async fn undecodable_payloads_are_400_with_status() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.http_local_addr().unwrap();

    let resp = post_pb(addr, "/v1/traces", b"\xff\xff\xff\xff\xff\x0fgarbage").await;
    assert_eq!(resp.status, 400);
    assert_eq!(rpc_status(&resp).code, 3);
    still_serves(&receiver, &sink).await;

    let pb = trace_request("t", 5).encode_to_vec();
    let resp = post_pb(addr, "/v1/traces", &pb[..pb.len() - 7]).await;
    assert_eq!(resp.status, 400, "truncated protobuf");
    still_serves(&receiver, &sink).await;

    let req = http_request(
        "POST",
        "/v1/logs",
        &[("Content-Type", "application/json")],
        b"{\"resourceLogs\": [",
    );
    let resp = http_raw(addr, &req).await;
    assert_eq!(resp.status, 400);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let status: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(status["code"], 3);
    assert!(status["message"].as_str().unwrap().contains("JSON"));

    let req = http_request(
        "POST",
        "/v1/metrics",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
        b"definitely not gzip",
    );
    assert_eq!(http_raw(addr, &req).await.status, 400);
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().traces.refused_invalid, 2);
    receiver.shutdown().await;
}

#[tokio::test]
async fn wrong_method_path_media_type_and_encoding() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.http_local_addr().unwrap();

    let resp = http_raw(addr, &http_request("GET", "/v1/traces", &[], b"")).await;
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("POST"));
    still_serves(&receiver, &sink).await;

    let resp = post_pb(addr, "/v1/spans", b"").await;
    assert_eq!(resp.status, 404);
    assert_eq!(rpc_status(&resp).code, 5);
    assert_eq!(post_pb(addr, "/", b"").await.status, 404);
    still_serves(&receiver, &sink).await;

    let req = http_request(
        "POST",
        "/v1/traces",
        &[("Content-Type", "text/plain")],
        b"hello",
    );
    assert_eq!(http_raw(addr, &req).await.status, 415);
    let req = http_request("POST", "/v1/traces", &[], b"hello");
    assert_eq!(http_raw(addr, &req).await.status, 415, "no content type");
    still_serves(&receiver, &sink).await;

    let req = http_request(
        "POST",
        "/v1/traces",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "br"),
        ],
        b"xx",
    );
    let resp = http_raw(addr, &req).await;
    assert_eq!(resp.status, 415);
    assert!(String::from_utf8_lossy(&rpc_status(&resp).message.into_bytes()).contains("br"));
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().traces.refused_unsupported, 4);
    assert_eq!(receiver.stats().unknown_path, 2);
    receiver.shutdown().await;
}

#[tokio::test]
async fn too_large_bodies_and_gzip_bombs_are_413() {
    let (receiver, sink) = start(MIB, 64 * MIB).await;
    let addr = receiver.http_local_addr().unwrap();

    // 10 MiB of zeros compressed to ~10 KiB, against a 1 MiB limit.
    let bomb = gzip(&vec![0u8; 10 * MIB]);
    let req = http_request(
        "POST",
        "/v1/traces",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
        &bomb,
    );
    let started = Instant::now();
    let resp = http_raw(addr, &req).await;
    assert_eq!(resp.status, 413);
    assert_eq!(rpc_status(&resp).code, 8);
    assert!(
        rpc_status(&resp).details.is_empty(),
        "413 carries no RetryInfo"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bomb took {:?}",
        started.elapsed()
    );
    still_serves(&receiver, &sink).await;

    // A plain body over the limit.
    let big = trace_request("big", 30_000).encode_to_vec();
    assert!(big.len() > MIB);
    assert_eq!(post_pb(addr, "/v1/traces", &big).await.status, 413);
    still_serves(&receiver, &sink).await;

    // A Content-Length over the limit is refused before any body byte is sent.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = http_request(
        "POST",
        "/v1/traces",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Length", "1000000000"),
        ],
        b"",
    );
    stream.write_all(&head).await.unwrap();
    let resp = read_response(&mut stream).await;
    assert_eq!(resp.status, 413);
    still_serves(&receiver, &sink).await;

    // Chunked transfer without a length is cut off at the limit too.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nTransfer-Encoding: chunked\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    for _ in 0..20 {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    assert_eq!(read_response(&mut stream).await.status, 413);
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().traces.refused_too_large, 4);
    assert_eq!(receiver.stats().inflight_bytes, 0);
    receiver.shutdown().await;
}

#[tokio::test]
async fn partial_success_is_200_with_rejected_count() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.http_local_addr().unwrap();
    sink.set_mode(Mode::Partial(2, "2 spans had no name".into()));
    let resp = post_pb(addr, "/v1/traces", &trace_request("p", 3).encode_to_vec()).await;
    assert_eq!(resp.status, 200);
    let partial = ExportTraceServiceResponse::decode(resp.body.as_slice())
        .unwrap()
        .partial_success
        .unwrap();
    assert_eq!(
        (partial.rejected_spans, partial.error_message.as_str()),
        (2, "2 spans had no name")
    );

    let req = http_request(
        "POST",
        "/v1/logs",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    let resp = http_raw(addr, &req).await;
    let json: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(
        json["partialSuccess"]["errorMessage"],
        "2 spans had no name"
    );
    sink.set_mode(Mode::Accept);
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().traces.partial_rejected, 2);
    receiver.shutdown().await;
}

#[tokio::test]
async fn sink_overload_is_503_with_retry_after() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.http_local_addr().unwrap();
    sink.set_mode(Mode::Overloaded(Duration::from_millis(2500)));
    let resp = post_pb(addr, "/v1/traces", &trace_request("o", 1).encode_to_vec()).await;
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("retry-after"), Some("3"));
    let status = rpc_status(&resp);
    assert_eq!(status.code, 14);
    assert_eq!(status.details[0].type_url, RETRY_INFO_TYPE_URL);
    let info = RetryInfo::decode(status.details[0].value.as_slice()).unwrap();
    assert_eq!(info.retry_delay.unwrap().seconds, 2);

    let req = http_request(
        "POST",
        "/v1/metrics",
        &[("Content-Type", "application/json")],
        b"{}",
    );
    let resp = http_raw(addr, &req).await;
    assert_eq!(resp.status, 503);
    let json: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(json["details"][0]["retryDelay"], "2.5s");
    sink.set_mode(Mode::Accept);
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().traces.refused_overloaded, 1);
    receiver.shutdown().await;
}

#[tokio::test]
async fn memory_budget_overload_is_503() {
    let (receiver, sink) = start(MIB, 64 * 1024).await;
    let addr = receiver.http_local_addr().unwrap();
    // A slow client holds 60 KB of the 64 KiB budget by declaring it and sending half.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = http_request(
        "POST",
        "/v1/traces",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Length", "60000"),
        ],
        &[0u8; 1000],
    );
    slow.write_all(&head).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let body = trace_request("b", 200).encode_to_vec();
    assert!(body.len() > 4 * 1024);
    let resp = post_pb(addr, "/v1/traces", &body).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.header("retry-after").is_some());
    assert_eq!(
        rpc_status(&resp).details.len(),
        1,
        "RetryInfo in the status"
    );
    drop(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    still_serves(&receiver, &sink).await;
    assert_eq!(
        receiver.stats().inflight_bytes,
        0,
        "budget released after the client left"
    );
    receiver.shutdown().await;
}

#[tokio::test]
async fn bind_conflict_names_the_flag() {
    let (receiver, _sink) = start(MIB, 8 * MIB).await;
    let taken = receiver.grpc_local_addr().unwrap();
    let config = sonde_otlp_receive::ReceiverConfig {
        grpc_addr: Some(taken),
        http_addr: None,
        ..Default::default()
    };
    let err = Receiver::start(config, RecordingSink::new())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("address {taken} already in use: set --otlp-grpc-addr")
    );
    receiver.shutdown().await;
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests() {
    let (receiver, sink) = start(MIB, 8 * MIB).await;
    let addr = receiver.http_local_addr().unwrap();
    sink.set_mode(Mode::Slow(Duration::from_millis(500)));
    let pending = tokio::spawn(async move {
        post_pb(addr, "/v1/traces", &trace_request("s", 1).encode_to_vec()).await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    receiver.shutdown().await;
    assert_eq!(pending.await.unwrap().status, 200);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn inflating_counts_against_the_memory_budget() {
    let (receiver, sink) = start(8 * MIB, MIB).await;
    let addr = receiver.http_local_addr().unwrap();
    let inflates_to_4_mib = gzip(&vec![0u8; 4 * MIB]);
    let req = http_request(
        "POST",
        "/v1/traces",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "gzip"),
        ],
        &inflates_to_4_mib,
    );
    // Another request in flight holds part of the budget: inflating 4 MiB must not fit.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = http_request(
        "POST",
        "/v1/logs",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Length", "600000"),
        ],
        &[0u8; 1000],
    );
    slow.write_all(&head).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = http_raw(addr, &req).await;
    assert_eq!(resp.status, 503, "{resp:?}");
    assert!(resp.header("retry-after").is_some());
    drop(slow);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Alone, the same body inflates (it is within the message limit) and fails to decode.
    assert_eq!(http_raw(addr, &req).await.status, 400);
    still_serves(&receiver, &sink).await;
    assert_eq!(receiver.stats().inflight_bytes, 0);
    receiver.shutdown().await;
}
