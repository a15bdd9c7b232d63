//! Throughput of the exporter on ONE core (current-thread runtime), reported in spans/s:
//! 1. encode only: `encoded_len` + protobuf encoding of 512-span requests;
//! 2. the whole pipeline: `send_traces` (8 spans per call) -> queue -> batch -> protobuf ->
//!    HTTP POST to an in-process server that discards the body (server cost included), plain
//!    and gzip; and the same over gRPC is left to the integration tests.
//!
//! Run: `cargo bench -p sonde-otlp-export --bench throughput` (budget: >= 100k spans/s).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
use prost::Message;
use sonde_otlp_export::{
    Compression, Exporter, ExporterConfig, OtlpEndpoint, Output, Protocol, RetryPolicy,
};

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

/// A realistic sonde HTTP server span (~10 attributes).
fn span(i: u64) -> Span {
    let s = |v: &str| any_value::Value::StringValue(v.into());
    Span {
        trace_id: (i as u128).to_be_bytes().to_vec(),
        span_id: i.to_be_bytes().to_vec(),
        parent_span_id: (i + 1).to_be_bytes().to_vec(),
        name: "GET /users/{id}".into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: 1_795_619_045_123_000_000 + i,
        end_time_unix_nano: 1_795_619_045_135_300_000 + i,
        attributes: vec![
            kv("http.request.method", s("GET")),
            kv("http.route", s("/users/{id}")),
            kv("url.path", s(&format!("/users/{}", i % 1000))),
            kv("url.scheme", s("http")),
            kv("http.response.status_code", any_value::Value::IntValue(200)),
            kv("server.address", s("web.default.svc")),
            kv("server.port", any_value::Value::IntValue(8080)),
            kv("client.address", s("10.1.2.3")),
            kv("network.protocol.version", s("1.1")),
            kv("user_agent.original", s("python-requests/2.32")),
        ],
        ..Span::default()
    }
}

fn resource_spans(first: u64, n: u64) -> Vec<ResourceSpans> {
    vec![ResourceSpans {
        resource: Some(Resource {
            attributes: vec![
                kv("service.name", any_value::Value::StringValue("web".into())),
                kv("host.name", any_value::Value::StringValue("node-1".into())),
            ],
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans: (first..first + n).map(span).collect(),
            ..ScopeSpans::default()
        }],
        ..ResourceSpans::default()
    }]
}

fn bench_encode() {
    let batch = resource_spans(0, 512);
    let iters = 400u64;
    let t0 = Instant::now();
    let mut total = 0usize;
    for _ in 0..iters {
        let req = ExportTraceServiceRequest {
            resource_spans: batch.clone(),
        };
        total += req.encoded_len();
        total += req.encode_to_vec().len();
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "encode (clone + encoded_len + encode, 512-span requests): {:>10.0} spans/s  ({} bytes/span)",
        (iters * 512) as f64 / secs,
        total / (2 * 512 * iters as usize)
    );
}

async fn discard_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn bench_pipeline(compression: Compression) {
    let addr = discard_server().await;
    let mut endpoint =
        OtlpEndpoint::for_base_url(&format!("http://{addr}"), Protocol::HttpProtobuf);
    endpoint.compression = compression;
    let exporter = Exporter::start(ExporterConfig {
        outputs: vec![Output::Otlp(endpoint)],
        queue_max_bytes: 256 * 1024 * 1024,
        batch_max_items: 512,
        batch_max_bytes: 4 * 1024 * 1024,
        batch_timeout: Duration::from_millis(200),
        retry: RetryPolicy::default(),
        shutdown_timeout: Duration::from_secs(30),
        max_concurrent_batches: 4,
    })
    .expect("start");
    let total = 200_000u64;
    let per_call = 8u64;
    // Build the input first: the daemon has the spans already, we measure the exporter.
    let inputs: Vec<Vec<ResourceSpans>> = (0..total / per_call)
        .map(|k| resource_spans(k * per_call, per_call))
        .collect();
    let t0 = Instant::now();
    for (k, input) in inputs.into_iter().enumerate() {
        exporter.send_traces(input).expect("queue has room");
        if k % 64 == 0 {
            // Let the worker run on this single thread, as the daemon's other tasks would.
            tokio::task::yield_now().await;
        }
    }
    exporter.shutdown(Duration::from_secs(60)).await;
    let secs = t0.elapsed().as_secs_f64();
    let st = exporter.stats();
    assert_eq!(st.traces.exported_items_total, total, "{st:?}");
    println!(
        "pipeline send->batch->protobuf->HTTP ({compression:?}): {:>10.0} spans/s  ({} requests, {:.1} MB)",
        total as f64 / secs,
        st.traces.exported_requests_total,
        st.traces.exported_bytes_total as f64 / 1e6
    );
}

fn main() {
    // `cargo test --benches` passes `--bench`-less args; run quickly either way.
    bench_encode();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench_pipeline(Compression::None));
    rt.block_on(bench_pipeline(Compression::Gzip));
}
