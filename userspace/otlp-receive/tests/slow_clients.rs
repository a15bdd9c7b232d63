//! Slow-loris clients: headers or bodies trickled in, or never finished, must not pin memory
//! or connections; the receiver keeps serving others meanwhile.

// Helpers outside #[test] fns unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use sonde_otlp_receive::{Limits, Receiver, ReceiverConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn start_fast_timeouts() -> (Receiver, std::sync::Arc<RecordingSink>) {
    let sink = RecordingSink::new();
    let config = ReceiverConfig {
        grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        max_message_bytes: 1 << 20,
        max_inflight_bytes: 8 << 20,
    };
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        body_idle_timeout: Duration::from_millis(500),
        body_total_timeout: Duration::from_secs(2),
        max_connections: 64,
    };
    let receiver = Receiver::start_with_limits(config, limits, sink.clone())
        .await
        .unwrap();
    (receiver, sink)
}

/// Reads until the server closes the connection; returns what it said and how long it took.
async fn wait_closed(stream: &mut TcpStream) -> (Vec<u8>, Duration) {
    let started = Instant::now();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "connection still open after 10 s");
    (out, started.elapsed())
}

#[tokio::test]
async fn unfinished_headers_are_cut_off() {
    let (receiver, sink) = start_fast_timeouts().await;
    let addr = receiver.http_local_addr().unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Ty")
        .await
        .unwrap();
    let (_, took) = wait_closed(&mut stream).await;
    assert!(took < Duration::from_secs(3), "closed after {took:?}");
    let resp = post_pb(
        addr,
        "/v1/traces",
        &trace_request("after", 1).encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(sink.span_names(), ["after-0"]);
    receiver.shutdown().await;
}

#[tokio::test]
async fn stalled_and_trickled_bodies_time_out_and_release_the_budget() {
    let (receiver, sink) = start_fast_timeouts().await;
    let addr = receiver.http_local_addr().unwrap();

    // Stalled: half the declared body, then silence.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    let head = http_request(
        "POST",
        "/v1/traces",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Length", "1000"),
        ],
        &[0u8; 500],
    );
    stalled.write_all(&head).await.unwrap();

    // Trickled: one byte every 300 ms stays under the idle timeout but not the total one.
    let mut trickle = TcpStream::connect(addr).await.unwrap();
    let head = http_request(
        "POST",
        "/v1/traces",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Length", "100"),
        ],
        b"",
    );
    trickle.write_all(&head).await.unwrap();
    let trickler = tokio::spawn(async move {
        for _ in 0..100 {
            if trickle.write_all(b"\0").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), trickle.read_to_end(&mut out)).await;
        out
    });

    // Meanwhile others are served.
    let resp = post_pb(
        addr,
        "/v1/traces",
        &trace_request("meanwhile", 1).encode_to_vec(),
    )
    .await;
    assert_eq!(resp.status, 200);

    let (answer, took) = wait_closed(&mut stalled).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(took < Duration::from_secs(3));
    let answer = trickler.await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_eq!(receiver.stats().inflight_bytes, 0);
    // Timeouts are counted as timeouts, not as internal errors.
    assert_eq!(receiver.stats().traces.refused_timeout, 2);
    assert_eq!(receiver.stats().traces.refused_internal, 0);
    assert_eq!(sink.span_names(), ["meanwhile-0"]);
    receiver.shutdown().await;
}
