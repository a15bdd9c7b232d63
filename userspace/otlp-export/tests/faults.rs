//! Fault handling against the Python sink: destination down then back, 503 + Retry-After,
//! 429, gRPC RetryInfo, 400 dropped, slow destination and per-attempt timeout, full queue,
//! shutdown flush and shutdown deadline.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sonde_otlp_export::{Compression, Exporter, Output, Protocol, RetryPolicy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_down_then_back_loses_nothing() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let sink = Sink::start();
        let exporter = Exporter::start(config(vec![Output::Otlp(
            sink.endpoint(protocol, Compression::None),
        )]))
        .expect("start");
        exporter.send_traces(spans(20, 0, 10)).expect("room");
        assert_eq!(sink.wait_spans(10, Duration::from_secs(10)).await.len(), 10);
        sink.control(r#"{"listen": false}"#);
        for k in 1..30 {
            exporter
                .send_traces(spans(20, k * 10, 10))
                .expect("room while down");
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let during = exporter.stats();
        assert!(
            during.traces.retries_total > 0,
            "{protocol:?}: retried while down"
        );
        assert!(during.queue_bytes > 0, "{protocol:?}: data held while down");
        sink.control(r#"{"listen": true}"#);
        let got = sink.wait_spans(300, Duration::from_secs(15)).await;
        assert_eq!(
            indexes(&got),
            (0..300).collect::<Vec<i64>>(),
            "{protocol:?}"
        );
        exporter.shutdown(Duration::from_secs(5)).await;
        let st = exporter.stats();
        assert_eq!(st.traces.exported_items_total, 300, "{protocol:?}");
        assert_eq!(st.traces.dropped_items_total(), 0, "{protocol:?}");
        assert_eq!(st.queue_bytes, 0);
    }
}

/// The down/up cycle driven by the sink itself (`down_s`), as a restart of the collector looks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destination_restart_window() {
    let sink = Sink::start();
    let exporter = Exporter::start(config(vec![Output::Otlp(
        sink.endpoint(Protocol::HttpJson, Compression::Gzip),
    )]))
    .expect("start");
    sink.control(r#"{"down_s": 1.5}"#);
    for k in 0..10 {
        exporter.send_traces(spans(21, k * 10, 10)).expect("room");
    }
    let got = sink.wait_spans(100, Duration::from_secs(15)).await;
    assert_eq!(indexes(&got), (0..100).collect::<Vec<i64>>());
    exporter.shutdown(Duration::from_secs(2)).await;
}

async fn retry_after_is_honoured(protocol: Protocol, fault: &str) {
    let sink = Sink::start();
    sink.control(fault);
    let mut cfg = config(vec![Output::Otlp(
        sink.endpoint(protocol, Compression::None),
    )]);
    // Own backoff 100 ms; the server's hint (2 s) is below the cap and must win.
    cfg.retry.max_interval = Duration::from_secs(5);
    let exporter = Exporter::start(cfg).expect("start");
    let t0 = Instant::now();
    exporter.send_traces(spans(22, 0, 5)).expect("room");
    let got = sink.wait_spans(5, Duration::from_secs(10)).await;
    let took = t0.elapsed();
    assert_eq!(got.len(), 5, "{protocol:?}");
    wait_until(Duration::from_secs(5), || {
        exporter.stats().traces.exported_items_total == 5
    })
    .await;
    // Our own backoff would retry after ~100 ms; the server asked for 2 s.
    assert!(
        took >= Duration::from_millis(1900),
        "{protocol:?}: retried after {took:?}"
    );
    assert!(took < Duration::from_secs(6), "{protocol:?}: {took:?}");
    let st = exporter.stats();
    assert_eq!(st.traces.retries_total, 1, "{protocol:?}");
    assert_eq!(st.traces.exported_items_total, 5);
    exporter.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_retry_after_honoured() {
    retry_after_is_honoured(
        Protocol::HttpProtobuf,
        r#"{"status": 503, "retry_after": 2, "count": 1}"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_retry_info_honoured() {
    retry_after_is_honoured(
        Protocol::Grpc,
        r#"{"status": 503, "retry_after": 2, "count": 1}"#,
    )
    .await;
}

/// RESOURCE_EXHAUSTED is retried only with RetryInfo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resource_exhausted_with_retry_info_is_retried() {
    retry_after_is_honoured(
        Protocol::Grpc,
        r#"{"status": 429, "retry_after": 2, "count": 1}"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_resource_exhausted_without_retry_info_is_permanent() {
    let sink = Sink::start();
    sink.control(r#"{"grpc_code": "RESOURCE_EXHAUSTED", "count": 1}"#);
    let exporter = Exporter::start(config(vec![Output::Otlp(
        sink.endpoint(Protocol::Grpc, Compression::None),
    )]))
    .expect("start");
    exporter.send_traces(spans(23, 0, 4)).expect("room");
    exporter.shutdown(Duration::from_secs(3)).await;
    let st = exporter.stats();
    assert_eq!(st.traces.failed_items_total, 4);
    assert_eq!(st.traces.retries_total, 0);
    assert!(sink.lines().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_is_retried_with_backoff() {
    // The fault comes from the sink's command line this time.
    let sink = Sink::start_with(&["--fail-mode", "status=429,count=2"]);
    let exporter = Exporter::start(config(vec![Output::Otlp(
        sink.endpoint(Protocol::HttpProtobuf, Compression::Gzip),
    )]))
    .expect("start");
    exporter.send_traces(spans(24, 0, 5)).expect("room");
    let got = sink.wait_spans(5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 5);
    wait_until(Duration::from_secs(5), || {
        exporter.stats().traces.exported_items_total == 5
    })
    .await;
    let st = exporter.stats();
    assert_eq!(st.traces.retries_total, 2);
    assert_eq!(st.traces.exported_items_total, 5);
    assert_eq!(sink.stats()["failed"], 2);
    exporter.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_400_is_dropped_and_counted() {
    for protocol in [Protocol::HttpProtobuf, Protocol::HttpJson, Protocol::Grpc] {
        let sink = Sink::start();
        sink.control(r#"{"status": 400, "count": 1}"#);
        let mut cfg = config(vec![Output::Otlp(
            sink.endpoint(protocol, Compression::None),
        )]);
        cfg.batch_timeout = Duration::from_millis(10);
        let exporter = Exporter::start(cfg).expect("start");
        exporter.send_traces(spans(25, 0, 7)).expect("room");
        // Wait until the first batch was refused before sending the next one.
        let t0 = Instant::now();
        while exporter.stats().traces.failed_items_total == 0
            && t0.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        exporter.send_traces(spans(25, 100, 3)).expect("room");
        let got = sink.wait_spans(3, Duration::from_secs(10)).await;
        assert_eq!(indexes(&got), vec![100, 101, 102], "{protocol:?}");
        wait_until(Duration::from_secs(5), || {
            exporter.stats().traces.exported_items_total == 3
        })
        .await;
        let st = exporter.stats();
        assert_eq!(st.traces.failed_items_total, 7, "{protocol:?}");
        assert_eq!(st.traces.retries_total, 0, "{protocol:?}");
        assert_eq!(st.traces.exported_items_total, 3, "{protocol:?}");
        exporter.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_destination_times_out_then_succeeds() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let sink = Sink::start();
        sink.control(r#"{"delay_s": 2, "count": 1}"#);
        let mut endpoint = sink.endpoint(protocol, Compression::None);
        endpoint.timeout = Duration::from_millis(400);
        let exporter = Exporter::start(config(vec![Output::Otlp(endpoint)])).expect("start");
        let t0 = Instant::now();
        exporter.send_traces(spans(26, 0, 5)).expect("room");
        let t = Instant::now();
        while exporter.stats().traces.exported_items_total < 5
            && t.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t0.elapsed();
        let st = exporter.stats();
        assert_eq!(st.traces.exported_items_total, 5, "{protocol:?}");
        assert!(st.traces.retries_total >= 1, "{protocol:?}");
        // Exported by the retry, long before the slow first answer (2 s) came back.
        assert!(took < Duration::from_millis(1800), "{protocol:?}: {took:?}");
        // The slow answer may land too (at-least-once): the spans are there once or twice.
        let got = sink.wait_spans(5, Duration::from_secs(5)).await;
        assert_eq!(indexes(&got), (0..5).collect::<Vec<i64>>());
        exporter.shutdown(Duration::from_secs(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_drops_newest_and_counts() {
    let sink = Sink::start();
    sink.control(r#"{"listen": false}"#);
    let one = spans(27, 0, 10);
    let one_bytes: usize = {
        use prost::Message;
        one.iter().map(|r| r.encoded_len() + 3).sum()
    };
    let mut cfg = config(vec![Output::Otlp(
        sink.endpoint(Protocol::HttpProtobuf, Compression::None),
    )]);
    cfg.queue_max_bytes = one_bytes * 5;
    let exporter = Exporter::start(cfg).expect("start");
    let mut accepted = Vec::new();
    let mut rejected = 0u64;
    for k in 0..12u32 {
        match exporter.send_traces(spans(27, k * 10, 10)) {
            Ok(()) => accepted.push(k),
            Err(r) => {
                assert_eq!(r.items, 10);
                rejected += r.items;
            }
        }
    }
    // The oldest stay, the newest are refused.
    assert!(accepted.len() >= 4 && accepted.len() <= 5, "{accepted:?}");
    assert_eq!(accepted, (0..accepted.len() as u32).collect::<Vec<u32>>());
    assert!(!exporter.has_room(one_bytes));
    let st = exporter.stats();
    assert_eq!(st.traces.dropped_queue_full_items_total, rejected);
    assert_eq!(st.rejected_sends_total, rejected / 10);
    assert!(st.queue_bytes as usize <= one_bytes * 5);
    sink.control(r#"{"listen": true}"#);
    let want: Vec<i64> = accepted
        .iter()
        .flat_map(|k| (i64::from(*k) * 10)..(i64::from(*k) * 10 + 10))
        .collect();
    let got = sink.wait_spans(want.len(), Duration::from_secs(15)).await;
    assert_eq!(indexes(&got), want);
    // Room again once delivered.
    let t = Instant::now();
    while !exporter.has_room(one_bytes) && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    exporter
        .send_traces(spans(27, 500, 10))
        .expect("room after drain");
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(sink.spans().len(), want.len() + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_within_deadline() {
    let sink = Sink::start();
    let mut cfg = config(vec![Output::Otlp(
        sink.endpoint(Protocol::Grpc, Compression::Gzip),
    )]);
    // Nothing would leave on its own for a minute.
    cfg.batch_timeout = Duration::from_secs(60);
    cfg.batch_max_items = 10_000;
    let exporter = Exporter::start(cfg).expect("start");
    for k in 0..50 {
        exporter.send_traces(spans(28, k * 20, 20)).expect("room");
    }
    exporter.send_metrics(metrics()).expect("room");
    exporter.send_logs(logs()).expect("room");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.lines().is_empty(), "nothing sent before shutdown");
    let t0 = Instant::now();
    exporter.shutdown(Duration::from_secs(5)).await;
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eq!(indexes(&sink.spans()), (0..1000).collect::<Vec<i64>>());
    let lines = sink.lines();
    assert!(lines.iter().any(|l| l["signal"] == "metrics"));
    assert!(lines.iter().any(|l| l["signal"] == "logs"));
    let st = exporter.stats();
    assert_eq!(st.traces.exported_items_total, 1000);
    assert_eq!(st.queue_bytes, 0);
    // After shutdown nothing is accepted.
    assert!(exporter.send_traces(spans(28, 0, 1)).is_err());
    assert!(!exporter.has_room(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_deadline_bounds_a_dead_destination() {
    let sink = Sink::start();
    sink.control(r#"{"listen": false}"#);
    let mut cfg = config(vec![Output::Otlp(
        sink.endpoint(Protocol::HttpProtobuf, Compression::None),
    )]);
    cfg.retry = RetryPolicy {
        initial: Duration::from_secs(5),
        ..cfg.retry
    };
    let exporter = Exporter::start(cfg).expect("start");
    for k in 0..5 {
        exporter.send_traces(spans(29, k * 10, 10)).expect("room");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    exporter.shutdown(Duration::from_secs(1)).await;
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    let st = exporter.stats();
    assert_eq!(st.traces.exported_items_total, 0);
    assert_eq!(st.traces.dropped_retry_exhausted_items_total, 50);
    assert_eq!(st.queue_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_max_elapsed() {
    let sink = Sink::start();
    sink.control(r#"{"status": 503}"#);
    let mut cfg = config(vec![Output::Otlp(
        sink.endpoint(Protocol::HttpProtobuf, Compression::None),
    )]);
    cfg.retry = RetryPolicy {
        initial: Duration::from_millis(100),
        multiplier: 2.0,
        max_interval: Duration::from_millis(300),
        max_elapsed: Duration::from_secs(1),
        jitter: 0.0,
    };
    let exporter = Exporter::start(cfg).expect("start");
    exporter.send_traces(spans(30, 0, 6)).expect("room");
    let t = Instant::now();
    while exporter.stats().traces.dropped_retry_exhausted_items_total == 0
        && t.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = exporter.stats();
    assert_eq!(st.traces.dropped_retry_exhausted_items_total, 6);
    assert!(st.traces.retries_total >= 3, "{}", st.traces.retries_total);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(sink.lines().is_empty());
    exporter.shutdown(Duration::from_secs(1)).await;
}

/// One dead destination does not hold back the healthy one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_independent() {
    let alive = Sink::start();
    let dead = Sink::start();
    dead.control(r#"{"listen": false}"#);
    let mut cfg = config(vec![
        Output::Otlp(dead.endpoint(Protocol::Grpc, Compression::None)),
        Output::Otlp(alive.endpoint(Protocol::HttpProtobuf, Compression::None)),
    ]);
    // About half of what is sent: the dead output fills up, the live one never lags that much.
    cfg.queue_max_bytes = 60_000;
    let exporter = Exporter::start(cfg).expect("start");
    let mut sent = 0;
    for k in 0..40 {
        if exporter.send_traces(spans(31, k * 10, 10)).is_ok() {
            sent += 10;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(sent, 400, "the healthy output keeps accepting");
    let got = alive.wait_spans(400, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 400);
    wait_until(Duration::from_secs(5), || {
        exporter.stats().outputs[1].traces.exported_items_total == 400
    })
    .await;
    let st = exporter.stats();
    assert!(st.outputs[0].traces.dropped_queue_full_items_total > 0);
    assert_eq!(st.outputs[1].traces.dropped_items_total(), 0);
    exporter.shutdown(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_retry_after_as_http_date() {
    // Five seconds out: the date has one-second resolution and the sink takes up to ~1.5 s to
    // start after it is computed; the wait must still be above the 1.9 s the check expects.
    let at = std::time::SystemTime::now() + Duration::from_secs(5);
    let date = httpdate::fmt_http_date(at);
    retry_after_is_honoured(
        Protocol::HttpJson,
        &format!(r#"{{"status": 503, "retry_after": "{date}", "count": 1}}"#),
    )
    .await;
}

/// A server asking for 30 s is capped by `max_interval`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_capped_by_max_interval() {
    for protocol in [Protocol::HttpProtobuf, Protocol::Grpc] {
        let sink = Sink::start();
        sink.control(r#"{"status": 503, "retry_after": 30, "count": 1}"#);
        let mut cfg = config(vec![Output::Otlp(
            sink.endpoint(protocol, Compression::None),
        )]);
        cfg.retry.max_interval = Duration::from_millis(700);
        let exporter = Exporter::start(cfg).expect("start");
        let t0 = Instant::now();
        exporter.send_traces(spans(32, 0, 2)).expect("room");
        let got = sink.wait_spans(2, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 2, "{protocol:?}");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(650) && took < Duration::from_secs(3),
            "{protocol:?}: {took:?}"
        );
        exporter.shutdown(Duration::from_secs(2)).await;
    }
}

/// The destination goes away in the middle of a request (connection cut, no answer): retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_request_is_retried() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf] {
        let sink = Sink::start();
        sink.control(r#"{"delay_s": 1.5, "count": 1}"#);
        let exporter = Exporter::start(config(vec![Output::Otlp(
            sink.endpoint(protocol, Compression::None),
        )]))
        .expect("start");
        exporter.send_traces(spans(33, 0, 4)).expect("room");
        tokio::time::sleep(Duration::from_millis(400)).await;
        sink.control(r#"{"down_s": 0.5}"#);
        assert!(
            wait_until(Duration::from_secs(10), || {
                exporter.stats().traces.exported_items_total == 4
            })
            .await,
            "{protocol:?}: {:?}",
            exporter.stats()
        );
        let st = exporter.stats();
        assert!(st.traces.retries_total >= 1, "{protocol:?}");
        assert_eq!(st.traces.failed_items_total, 0, "{protocol:?}");
        assert_eq!(indexes(&sink.spans()), vec![0, 1, 2, 3], "{protocol:?}");
        exporter.shutdown(Duration::from_secs(2)).await;
    }
}
