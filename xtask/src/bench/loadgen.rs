//! OTLP/gRPC load generator: sends ExportTraceServiceRequests of realistic HTTP server and
//! PostgreSQL client spans, either as fast as the receiver answers (a fixed number of requests
//! in flight) or at a fixed span rate (open loop: a slow receiver does not slow the schedule).
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{ExportTraceServiceRequest, trace_service_client::TraceServiceClient},
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status as SpanStatus, span::SpanKind},
};
use tokio::sync::Mutex;

pub struct LoadConfig {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub spans_per_request: usize,
    /// Spans per second; `None` = as fast as possible.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// Requests in flight in max-rate mode.
    pub concurrency: usize,
}

#[derive(Debug, Default, Clone)]
pub struct LoadResult {
    pub requests_failed: u64,
    pub spans_accepted: u64,
    pub elapsed: Duration,
    pub first_error: Option<String>,
}

fn kv(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

/// One request of `spans` spans; `seq` varies trace and span ids between requests.
pub fn build_request(seq: u64, spans: usize) -> ExportTraceServiceRequest {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let routes = [
        "/api/v1/users/{id}",
        "/api/v1/orders",
        "/health",
        "/api/v1/items/{id}/reviews",
    ];
    let spans = (0..spans as u64)
        .map(|i| {
            let mut trace_id = [0u8; 16];
            trace_id[..8].copy_from_slice(&seq.to_be_bytes());
            trace_id[8..].copy_from_slice(&(i / 2).to_be_bytes());
            let span_id = (seq.wrapping_mul(1 << 20) ^ i)
                .wrapping_add(1)
                .to_be_bytes()
                .to_vec();
            let start = now.saturating_sub(2_000_000);
            if i % 2 == 0 {
                let route = routes
                    .get((i as usize / 2) % routes.len())
                    .copied()
                    .unwrap_or("/");
                Span {
                    trace_id: trace_id.to_vec(),
                    span_id,
                    name: format!("GET {route}"),
                    kind: SpanKind::Server as i32,
                    start_time_unix_nano: start,
                    end_time_unix_nano: now,
                    attributes: vec![
                        kv("http.request.method", s("GET")),
                        kv("http.route", s(route)),
                        kv("url.path", s("/api/v1/users/12345")),
                        kv("url.scheme", s("http")),
                        kv("http.response.status_code", Value::IntValue(200)),
                        kv("server.address", s("shop.example.internal")),
                        kv("server.port", Value::IntValue(8080)),
                        kv("client.address", s("10.0.3.17")),
                        kv("network.peer.address", s("10.0.3.17")),
                        kv("network.peer.port", Value::IntValue(51234)),
                        kv("network.protocol.version", s("1.1")),
                        kv(
                            "user_agent.original",
                            s("Mozilla/5.0 (X11; Linux x86_64) bench/1.0"),
                        ),
                    ],
                    status: Some(SpanStatus::default()),
                    ..Default::default()
                }
            } else {
                Span {
                    trace_id: trace_id.to_vec(),
                    span_id,
                    parent_span_id: (seq.wrapping_mul(1 << 20) ^ (i - 1))
                        .wrapping_add(1)
                        .to_be_bytes()
                        .to_vec(),
                    name: "SELECT auth_user".into(),
                    kind: SpanKind::Client as i32,
                    start_time_unix_nano: start.saturating_add(100_000),
                    end_time_unix_nano: now.saturating_sub(100_000),
                    attributes: vec![
                        kv("db.system.name", s("postgresql")),
                        kv("db.namespace", s("shop")),
                        kv(
                            "db.query.text",
                            s("SELECT id, username, email FROM auth_user WHERE id = ?"),
                        ),
                        kv("db.query.summary", s("SELECT auth_user")),
                        kv("db.operation.name", s("SELECT")),
                        kv("db.collection.name", s("auth_user")),
                        kv("db.response.returned_rows", Value::IntValue(1)),
                        kv("server.address", s("db.example.internal")),
                        kv("server.port", Value::IntValue(5432)),
                    ],
                    status: Some(SpanStatus::default()),
                    ..Default::default()
                }
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", s("bench-shop")),
                    kv("service.instance.id", s("bench-shop-7d9f8-abcde")),
                    kv("host.name", s("bench-node-1")),
                    kv("process.pid", Value::IntValue(4242)),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "bench".into(),
                    version: "1.0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[derive(Default)]
struct Shared {
    failed: AtomicU64,
    spans: AtomicU64,
    seq: AtomicU64,
    first_error: Mutex<Option<String>>,
}

async fn send_one(
    client: &mut TraceServiceClient<tonic::transport::Channel>,
    shared: &Shared,
    spans: usize,
) {
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let req = build_request(seq, spans);
    match client.export(req).await {
        Ok(resp) => {
            let rejected = resp
                .get_ref()
                .partial_success
                .as_ref()
                .map_or(0, |p| p.rejected_spans.max(0) as u64);
            shared
                .spans
                .fetch_add((spans as u64).saturating_sub(rejected), Ordering::Relaxed);
        }
        Err(status) => {
            shared.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = shared.first_error.lock().await;
            if first.is_none() {
                *first = Some(format!("{:?}: {}", status.code(), status.message()));
            }
        }
    }
}

/// Runs the load on its own runtime (threads pinned to `cpu` when given).
pub fn run(cfg: &LoadConfig, cpu: Option<usize>) -> Result<LoadResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .on_thread_start(move || {
            if let Some(c) = cpu {
                super::pin_current_thread(c);
            }
        })
        .build()?;
    rt.block_on(run_async(cfg))
}

async fn run_async(cfg: &LoadConfig) -> Result<LoadResult> {
    let client = TraceServiceClient::connect(cfg.endpoint.clone())
        .await
        .with_context(|| format!("connect to {}", cfg.endpoint))?
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let end = start + cfg.duration;
    let spans = cfg.spans_per_request.max(1);
    let mut tasks = Vec::new();
    match cfg.rate {
        None => {
            for _ in 0..cfg.concurrency.max(1) {
                let mut client = client.clone();
                let shared = shared.clone();
                tasks.push(tokio::spawn(async move {
                    while Instant::now() < end {
                        send_one(&mut client, &shared, spans).await;
                    }
                }));
            }
        }
        Some(rate) => {
            let period =
                Duration::from_secs_f64((spans as f64 / rate.max(1.0)).clamp(1e-6, 3600.0));
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            while Instant::now() < end {
                tick.tick().await;
                let mut client = client.clone();
                let shared = shared.clone();
                tasks.push(tokio::spawn(async move {
                    send_one(&mut client, &shared, spans).await
                }));
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let first_error = shared.first_error.lock().await.clone();
    Ok(LoadResult {
        requests_failed: shared.failed.load(Ordering::Relaxed),
        spans_accepted: shared.spans.load(Ordering::Relaxed),
        elapsed,
        first_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn requests_have_the_asked_span_count_and_distinct_ids() {
        let a = build_request(1, 512);
        let b = build_request(2, 512);
        let spans =
            |r: &ExportTraceServiceRequest| r.resource_spans[0].scope_spans[0].spans.clone();
        assert_eq!(spans(&a).len(), 512);
        assert_ne!(spans(&a)[0].trace_id, spans(&b)[0].trace_id);
        let ids: std::collections::HashSet<_> =
            spans(&a).iter().map(|s| s.span_id.clone()).collect();
        assert_eq!(ids.len(), 512);
        // Realistic size: a few hundred bytes per span.
        let per_span = a.encoded_len() / 512;
        assert!((150..1500).contains(&per_span), "{per_span} bytes per span");
    }
}
