//! End-to-end export against the independent Python sink: every protocol and compression, the
//! exact spans on the other side, metrics and logs, fan-out, partial success.

mod common;

use std::time::Duration;

use common::*;
use sonde_otlp_export::{Compression, Exporter, Output, Protocol};

async fn round_trip(protocol: Protocol, compression: Compression, tag: u8) {
    let sink = Sink::start();
    let exporter = Exporter::start(config(vec![Output::Otlp(
        sink.endpoint(protocol, compression),
    )]))
    .expect("start");
    // 250 spans in calls of 25: several batches (batch_max_items = 100).
    for k in 0..10 {
        exporter.send_traces(spans(tag, k * 25, 25)).expect("room");
    }
    let got = sink.wait_spans(250, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 250, "{protocol:?} {compression:?}");
    assert_eq!(indexes(&got), (0..250).collect::<Vec<i64>>());
    let lines = sink.lines();
    let transport = if protocol == Protocol::Grpc {
        "grpc"
    } else {
        "http"
    };
    assert!(
        lines
            .iter()
            .all(|l| l["transport"] == transport && l["signal"] == "traces")
    );
    assert!(
        lines.len() >= 3,
        "batched into >= 3 requests, got {}",
        lines.len()
    );
    for l in &lines {
        let rs = &l["request"]["resourceSpans"];
        assert_eq!(rs[0]["resource"]["attributes"][0]["key"], "service.name");
        assert_eq!(
            rs[0]["resource"]["attributes"][0]["value"]["stringValue"],
            "web"
        );
    }
    // One span in full.
    let s7 = got
        .iter()
        .find(|s| s["spanId"] == hex(&span_id(7)))
        .expect("span 7");
    assert_eq!(s7["traceId"], hex(&trace_id(tag, 7)));
    assert_eq!(s7["name"], "GET /users/{id}");
    assert_eq!(s7["kind"], 2);
    assert_eq!(s7["startTimeUnixNano"], "1795619045123000007");
    assert_eq!(s7["endTimeUnixNano"], "1795619045135300007");
    assert_eq!(s7["status"]["code"], 1);
    assert!(s7.get("parentSpanId").is_none());
    let s8 = got
        .iter()
        .find(|s| s["spanId"] == hex(&span_id(8)))
        .expect("span 8");
    assert_eq!(s8["parentSpanId"], hex(&span_id(1_000_008)));
    let attrs = s7["attributes"].as_array().expect("attributes");
    let attr = |k: &str| {
        attrs
            .iter()
            .find(|a| a["key"] == k)
            .map(|a| a["value"].clone())
            .unwrap_or_default()
    };
    assert_eq!(attr("http.request.method")["stringValue"], "GET");
    assert_eq!(attr("url.path")["stringValue"], "/users/7");
    assert_eq!(attr("http.response.status_code")["intValue"], "200");
    assert_eq!(attr("sonde.test.ratio")["doubleValue"], 0.5);
    assert_eq!(attr("sonde.test.flag")["boolValue"], true);
    assert_eq!(attrs.len(), 7);

    wait_until(Duration::from_secs(5), || {
        exporter.stats().traces.exported_items_total == 250
    })
    .await;
    let stats = exporter.stats();
    assert_eq!(stats.traces.exported_items_total, 250);
    assert_eq!(stats.traces.exported_requests_total, lines.len() as u64);
    assert!(stats.traces.exported_bytes_total > 0);
    assert_eq!(stats.traces.dropped_items_total(), 0);
    assert_eq!(stats.traces.failed_items_total, 0);
    exporter.shutdown(Duration::from_secs(2)).await;
    assert_eq!(exporter.stats().queue_bytes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_plain() {
    round_trip(Protocol::Grpc, Compression::None, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_gzip() {
    round_trip(Protocol::Grpc, Compression::Gzip, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_plain() {
    round_trip(Protocol::HttpProtobuf, Compression::None, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_gzip() {
    round_trip(Protocol::HttpProtobuf, Compression::Gzip, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_plain() {
    round_trip(Protocol::HttpJson, Compression::None, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_json_gzip() {
    round_trip(Protocol::HttpJson, Compression::Gzip, 6).await;
}

/// Metrics and logs over every protocol; the JSON encoding of metric oneofs and log bodies must
/// be what a protobuf JSON parser accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_logs_every_protocol() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf, Protocol::HttpJson] {
        let sink = Sink::start();
        let exporter = Exporter::start(config(vec![Output::Otlp(
            sink.endpoint(protocol, Compression::None),
        )]))
        .expect("start");
        exporter.send_metrics(metrics()).expect("room");
        exporter.send_logs(logs()).expect("room");
        let lines = sink.wait_lines(2, Duration::from_secs(10)).await;
        assert_eq!(lines.len(), 2, "{protocol:?}: {lines:?}");
        let m = lines
            .iter()
            .find(|l| l["signal"] == "metrics")
            .expect("metrics line");
        let ms = &m["request"]["resourceMetrics"][0]["scopeMetrics"][0]["metrics"];
        assert_eq!(ms[0]["name"], "process.cpu.time");
        assert_eq!(ms[0]["sum"]["dataPoints"][0]["asDouble"], 1.25);
        assert_eq!(ms[0]["sum"]["isMonotonic"], true);
        assert_eq!(ms[0]["sum"]["aggregationTemporality"], 2);
        assert_eq!(ms[1]["gauge"]["dataPoints"][0]["asInt"], "7");
        let h = &ms[2]["histogram"]["dataPoints"][0];
        assert_eq!(h["count"], "3");
        assert_eq!(h["sum"], 0.75);
        assert_eq!(h["bucketCounts"], serde_json::json!(["1", "2", "0"]));
        assert_eq!(h["explicitBounds"], serde_json::json!([0.1, 0.5]));
        let l = lines
            .iter()
            .find(|l| l["signal"] == "logs")
            .expect("logs line");
        let rec = &l["request"]["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0];
        assert_eq!(rec["body"]["stringValue"], "user 7 logged in");
        assert_eq!(rec["severityText"], "INFO");
        assert_eq!(rec["severityNumber"], 9);
        assert_eq!(rec["traceId"], hex(&trace_id(9, 1)));
        assert_eq!(rec["spanId"], hex(&span_id(1)));
        wait_until(Duration::from_secs(5), || {
            let st = exporter.stats();
            st.metrics.exported_items_total == 3 && st.logs.exported_items_total == 1
        })
        .await;
        let st = exporter.stats();
        assert_eq!(st.metrics.exported_items_total, 3);
        assert_eq!(st.logs.exported_items_total, 1);
        exporter.shutdown(Duration::from_secs(2)).await;
    }
}

/// Fan-out: a gRPC and an HTTP destination both get everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_outputs_both_receive_everything() {
    let a = Sink::start();
    let b = Sink::start();
    let exporter = Exporter::start(config(vec![
        Output::Otlp(a.endpoint(Protocol::Grpc, Compression::Gzip)),
        Output::Otlp(b.endpoint(Protocol::HttpProtobuf, Compression::None)),
    ]))
    .expect("start");
    for k in 0..20 {
        exporter.send_traces(spans(10, k * 10, 10)).expect("room");
    }
    exporter.send_logs(logs()).expect("room");
    let got_a = a.wait_spans(200, Duration::from_secs(10)).await;
    let got_b = b.wait_spans(200, Duration::from_secs(10)).await;
    assert_eq!(indexes(&got_a), (0..200).collect::<Vec<i64>>());
    assert_eq!(indexes(&got_b), (0..200).collect::<Vec<i64>>());
    assert_eq!(got_a.len(), 200);
    assert_eq!(got_b.len(), 200);
    let la = a
        .wait_lines(a.lines().len() + 1, Duration::from_secs(2))
        .await;
    assert!(la.iter().any(|l| l["signal"] == "logs"));
    wait_until(Duration::from_secs(5), || {
        exporter.stats().traces.exported_items_total == 400
    })
    .await;
    let st = exporter.stats();
    assert_eq!(st.outputs.len(), 2);
    assert_eq!(st.outputs[0].traces.exported_items_total, 200);
    assert_eq!(st.outputs[1].traces.exported_items_total, 200);
    assert_eq!(st.traces.exported_items_total, 400);
    exporter.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_is_counted_not_retried() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf, Protocol::HttpJson] {
        let sink = Sink::start();
        sink.control(r#"{"partial_rejected": 2, "count": 1}"#);
        let exporter = Exporter::start(config(vec![Output::Otlp(
            sink.endpoint(protocol, Compression::None),
        )]))
        .expect("start");
        exporter.send_traces(spans(11, 0, 5)).expect("room");
        exporter.shutdown(Duration::from_secs(5)).await;
        let st = exporter.stats();
        assert_eq!(st.traces.rejected_items_total, 2, "{protocol:?}");
        assert_eq!(st.traces.exported_items_total, 3, "{protocol:?}");
        assert_eq!(st.traces.retries_total, 0, "{protocol:?}");
        assert_eq!(sink.lines().len(), 1, "{protocol:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_and_user_agent_reach_the_destination() {
    for protocol in [Protocol::Grpc, Protocol::HttpProtobuf, Protocol::HttpJson] {
        let sink = Sink::start();
        let mut e = sink.endpoint(protocol, Compression::Gzip);
        e.headers = vec![
            ("X-Tenant".into(), "t1".into()),
            ("authorization".into(), "Bearer abc".into()),
        ];
        let exporter = Exporter::start(config(vec![Output::Otlp(e.clone())])).expect("start");
        exporter.send_traces(spans(12, 0, 3)).expect("room");
        assert_eq!(sink.wait_spans(3, Duration::from_secs(10)).await.len(), 3);
        let line = &sink.lines()[0];
        assert_eq!(line["headers"]["x-tenant"], "t1", "{protocol:?}: {line}");
        assert_eq!(
            line["headers"]["authorization"], "Bearer abc",
            "{protocol:?}"
        );
        let ua = line["headers"]["user-agent"].as_str().unwrap_or_default();
        assert!(ua.contains("sonde-otlp-export/"), "{protocol:?}: {ua}");
        if protocol != Protocol::Grpc {
            assert_eq!(line["headers"]["content-encoding"], "gzip");
            let ct = if protocol == Protocol::HttpJson {
                "application/json"
            } else {
                "application/x-protobuf"
            };
            assert_eq!(line["headers"]["content-type"], ct);
        }
        exporter.shutdown(Duration::from_secs(2)).await;
        e.headers = vec![("bad header".into(), "v".into())];
        assert!(Exporter::start(config(vec![Output::Otlp(e)])).is_err());
    }
}

/// One huge `send_traces` (an SDK request of 1050 spans) leaves in batches of at most
/// `batch_max_items`, in order, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_send_is_split_into_bounded_batches() {
    let sink = Sink::start();
    let exporter = Exporter::start(config(vec![Output::Otlp(
        sink.endpoint(Protocol::HttpProtobuf, Compression::None),
    )]))
    .expect("start");
    let mut big = spans(13, 0, 600);
    big.extend(spans(13, 600, 450));
    exporter.send_traces(big).expect("room");
    let got = sink.wait_spans(1050, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1050);
    assert_eq!(indexes(&got), (0..1050).collect::<Vec<i64>>());
    let lines = sink.lines();
    assert_eq!(lines.len(), 11);
    for l in &lines {
        let n: usize = l["request"]["resourceSpans"]
            .as_array()
            .expect("resourceSpans")
            .iter()
            .flat_map(|r| r["scopeSpans"].as_array().cloned().unwrap_or_default())
            .map(|s| s["spans"].as_array().map_or(0, Vec::len))
            .sum();
        assert!(n <= 100, "{n}");
        // Every part keeps its resource.
        assert_eq!(
            l["request"]["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "web"
        );
    }
    exporter.shutdown(Duration::from_secs(2)).await;
    assert_eq!(exporter.stats().queue_bytes, 0);
    assert_eq!(exporter.stats().traces.exported_items_total, 1050);
}
