//! Measures the decode path on one core: `cargo run --release -p sonde-otlp-receive --example
//! decode_throughput`. Batches look like SDK output: 512 spans, 10 attributes each.

use std::io::Write;
use std::time::Instant;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use sonde_otlp_receive::{ExportTraceServiceRequest, Signal, decode_http};

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn batch(spans: usize) -> ExportTraceServiceRequest {
    let spans = (0..spans)
        .map(|i| Span {
            trace_id: vec![7; 16],
            span_id: (i as u64 + 1).to_be_bytes().to_vec(),
            parent_span_id: vec![9; 8],
            name: "GET /api/users/{id}".into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_001_000_000,
            attributes: vec![
                kv("http.request.method", "GET"),
                kv("url.path", "/api/users/12345"),
                kv("url.scheme", "http"),
                kv("http.route", "/api/users/{id}"),
                kv("server.address", "users.default.svc"),
                kv("client.address", "10.1.2.3"),
                kv("network.peer.address", "10.1.2.3"),
                kv("network.protocol.version", "1.1"),
                kv("user_agent.original", "python-requests/2.31"),
                KeyValue {
                    key: "http.response.status_code".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::IntValue(200)),
                    }),
                    ..Default::default()
                },
            ],
            status: Some(Status::default()),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv("service.name", "users"), kv("host.name", "node-1")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: None,
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn strip_nulls(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spans_per_batch = 512;
    let pb = batch(spans_per_batch).encode_to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&pb)?;
    let gz = gz.finish()?;
    // SDKs omit unset fields; the derives write them as null.
    let mut json = serde_json::to_value(batch(spans_per_batch))?;
    strip_nulls(&mut json);
    let json = serde_json::to_vec(&json)?;
    let cases: [(&str, &str, Option<&str>, &[u8]); 3] = [
        ("protobuf", "application/x-protobuf", None, &pb),
        ("protobuf+gzip", "application/x-protobuf", Some("gzip"), &gz),
        ("json", "application/json", None, &json),
    ];
    for (name, ct, enc, body) in cases {
        let rounds = 200;
        let started = Instant::now();
        for _ in 0..rounds {
            let decoded = decode_http(Signal::Traces, Some(ct), enc, body, 64 << 20)?;
            assert_eq!(decoded.items, spans_per_batch as u64);
        }
        let secs = started.elapsed().as_secs_f64();
        let spans = (rounds * spans_per_batch) as f64;
        println!(
            "{name:>14}: {:>10.0} spans/s ({} bytes per batch)",
            spans / secs,
            body.len()
        );
    }
    Ok(())
}
