//! The real OpenTelemetry Python SDK exports to the receiver over gRPC and HTTP/protobuf
//! (plain and gzip); the test asserts what the recording sink got.

// Helpers outside #[test] fns unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::*;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;

const MIB: usize = 1024 * 1024;

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

async fn export_with_sdk(protocol: &str, compression: &str) {
    let (receiver, sink) = start(64 * MIB, 256 * MIB).await;
    let endpoint = match protocol {
        "grpc" => format!("http://{}", receiver.grpc_local_addr().unwrap()),
        _ => format!("http://{}", receiver.http_local_addr().unwrap()),
    };
    let service = format!("sdk-{protocol}-{compression}");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdk_export.py");
    let out = tokio::process::Command::new("python3")
        .args([script, protocol, &endpoint, compression, &service])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SDK_DISABLED")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "python failed: {stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "flushed",
        "stderr: {stderr}"
    );
    assert!(
        !stderr.contains("Failed to export"),
        "SDK reported an export failure: {stderr}"
    );

    // Traces.
    assert_eq!(sink.span_names(), ["POST /checkout", "SELECT orders"]);
    let traces = sink.traces.lock().unwrap().clone();
    let rs = &traces[0].1.resource_spans[0];
    let resource = rs.resource.as_ref().unwrap();
    assert_eq!(
        attr(&resource.attributes, "service.name"),
        Some(&Value::StringValue(service.clone()))
    );
    let scope = &rs.scope_spans[0];
    assert_eq!(scope.scope.as_ref().unwrap().version, "1.2.3");
    let server = scope
        .spans
        .iter()
        .find(|s| s.name == "POST /checkout")
        .unwrap();
    let client = scope
        .spans
        .iter()
        .find(|s| s.name == "SELECT orders")
        .unwrap();
    assert_eq!((server.kind, client.kind), (2, 3));
    assert_eq!(
        attr(&server.attributes, "order.id"),
        Some(&Value::IntValue(42))
    );
    assert_eq!(
        attr(&server.attributes, "http.route"),
        Some(&Value::StringValue("/checkout".into()))
    );
    assert_eq!(client.parent_span_id, server.span_id);
    assert_eq!(client.trace_id, server.trace_id);
    assert_eq!(client.status.as_ref().unwrap().code, 2);
    assert!(traces[0].2 > 0, "encoded_len");
    drop(traces);

    // Metrics.
    let metrics = sink.metrics.lock().unwrap().clone();
    let all: Vec<_> = metrics
        .iter()
        .flat_map(|(_, r, _)| &r.resource_metrics)
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .collect();
    let names: BTreeSet<&str> = all.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["latency", "orders"]));
    let orders = all.iter().find(|m| m.name == "orders").unwrap();
    let Some(Data::Sum(sum)) = &orders.data else {
        panic!("orders is not a sum: {orders:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.data_points[0].value,
        Some(number_data_point::Value::AsInt(3))
    );
    assert_eq!(
        attr(&sum.data_points[0].attributes, "route"),
        Some(&Value::StringValue("/checkout".into()))
    );
    let latency = all.iter().find(|m| m.name == "latency").unwrap();
    let Some(Data::Histogram(h)) = &latency.data else {
        panic!("latency is not a histogram")
    };
    assert_eq!(
        (h.data_points[0].count, h.data_points[0].sum),
        (1, Some(0.25))
    );
    // force_flush and shutdown may each export the cumulative points: count what arrived.
    let points: usize = all
        .iter()
        .map(|m| match &m.data {
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            _ => 0,
        })
        .sum();
    assert!(points >= 2);
    drop(metrics);

    // Logs.
    let logs = sink.logs.lock().unwrap().clone();
    let records: Vec<_> = logs
        .iter()
        .flat_map(|(_, r, _)| &r.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .collect();
    assert_eq!(records.len(), 1);
    let record = records[0];
    assert_eq!(
        record.body.as_ref().and_then(|b| b.value.as_ref()),
        Some(&Value::StringValue("hello from python".into()))
    );
    assert_eq!(record.severity_number, 13, "WARN");
    assert_eq!(
        attr(&record.attributes, "user.id"),
        Some(&Value::StringValue("u1".into()))
    );
    drop(logs);

    let stats = receiver.stats();
    assert_eq!(stats.traces.items, 2);
    assert_eq!(stats.logs.items, 1);
    assert_eq!(stats.metrics.items, points as u64);
    receiver.shutdown().await;
}

#[tokio::test]
async fn python_sdk_grpc() {
    export_with_sdk("grpc", "none").await;
}

#[tokio::test]
async fn python_sdk_grpc_gzip() {
    export_with_sdk("grpc", "gzip").await;
}

#[tokio::test]
async fn python_sdk_http_protobuf() {
    export_with_sdk("http", "none").await;
}

#[tokio::test]
async fn python_sdk_http_protobuf_gzip() {
    export_with_sdk("http", "gzip").await;
}
