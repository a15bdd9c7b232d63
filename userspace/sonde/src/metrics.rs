//! The Prometheus endpoint (`/metrics`): the request, process and TCP metrics of the traced
//! processes (`sonde-metrics`), `target_info` for sonde itself, and sonde's own telemetry
//! (lost ring-buffer records per CPU, capture and tracer counters, the merger, the OTLP
//! receiver and exporter) under `sonde_*`.
//!
//! Self-metric names follow `sonde_<component>_<what>_<unit>[_total]`. A scrape renders the
//! latest snapshots (the components keep their own lock-free counters), so the hot paths
//! never touch a metrics library. The classic text format is written unless the scraper asks
//! for OpenMetrics in `Accept` (see `sonde_metrics::expo` for why not the `prometheus` crate).
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use sonde_otlp_export::{Exporter, SignalStats};
use sonde_otlp_receive::ReceiverStats;

use sonde_metrics::{Encoder, Format, Kind, Registry};

use crate::{merge::MergeStats, tracer::TracerStats};

/// What the capture thread publishes (refreshed about once a second).
#[derive(Clone, Debug, Default)]
pub struct CaptureSnapshot {
    pub lost_per_cpu: Vec<u64>,
    pub tracer: TracerStats,
    pub merge: MergeStats,
    pub tls: crate::capture::tls::TlsStats,
}

/// Everything a scrape reads.
#[derive(Clone)]
pub struct Sources {
    pub capture: Arc<Mutex<CaptureSnapshot>>,
    pub exporter: Exporter,
    pub receiver: Option<Arc<dyn Fn() -> ReceiverStats + Send + Sync>>,
    pub memory_budget_bytes: usize,
    /// Set once the probes are attached: `/readyz` answers 503 before.
    pub ready: Arc<std::sync::atomic::AtomicBool>,
    /// Request, process and TCP metrics (None with `--no-metrics`).
    pub registry: Option<Arc<Mutex<Registry>>>,
    /// `target_info` labels: sonde's own resource.
    pub target: sonde_metrics::Labels,
}

/// `target_info` labels: sonde's own resource.
pub fn sonde_target() -> sonde_metrics::Labels {
    vec![
        ("service.name".into(), "sonde".into()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
        ("process.pid".into(), std::process::id().to_string()),
    ]
}

/// Self-metrics exposition, one family at a time, in the scraper's format.
struct Exposition {
    enc: Encoder,
}

impl Exposition {
    fn family(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: &[(Vec<(&str, String)>, u64)],
    ) {
        let k = if kind == "counter" {
            Kind::Counter
        } else {
            Kind::Gauge
        };
        self.enc.family(name, k, help);
        for (labels, value) in samples {
            let l: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            self.enc.sample(name, &[], &l, &value.to_string());
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help, &[(vec![], value)]);
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "gauge", help, &[(vec![], value)]);
    }
}

/// Renders the exposition in `format`.
pub fn render(sources: &Sources, format: Format) -> String {
    let capture = sources
        .capture
        .lock()
        .map(|s| s.clone())
        .unwrap_or_default();
    let mut e = Exposition {
        enc: Encoder::new(format),
    };
    e.enc.family("target_info", Kind::Info, "sonde itself.");
    e.enc.sample("target_info", &[&sources.target], &[], "1");
    if let Some(registry) = &sources.registry
        && let Ok(r) = registry.lock()
    {
        r.render(&mut e.enc);
    }
    let lost: Vec<_> = capture
        .lost_per_cpu
        .iter()
        .enumerate()
        .map(|(cpu, n)| (vec![("cpu", cpu.to_string())], *n))
        .collect();
    e.family(
        "sonde_ringbuf_lost_records_total",
        "counter",
        "Kernel records dropped because the ring buffer was full, per CPU.",
        &lost,
    );
    let t = &capture.tracer;
    e.counter(
        "sonde_capture_events_total",
        "Records read from the ring buffer.",
        t.events,
    );
    e.counter(
        "sonde_capture_payload_bytes_total",
        "Payload bytes captured from traced sockets.",
        t.data_bytes,
    );
    e.counter(
        "sonde_capture_decode_errors_total",
        "Ring buffer records that could not be decoded.",
        t.decode_errors,
    );
    e.counter(
        "sonde_tracer_spans_total",
        "Spans built from captured traffic.",
        t.spans,
    );
    e.gauge(
        "sonde_tracer_connections_open",
        "Traced connections currently open.",
        t.connections_open as u64,
    );
    e.counter(
        "sonde_tracer_connections_ignored_total",
        "Connections not traced (filtered, not HTTP or PostgreSQL, encrypted).",
        t.connections_ignored,
    );
    let tls = &capture.tls;
    let untraceable: Vec<_> = tls
        .untraceable
        .iter()
        .map(|((exe, reason), n)| {
            (
                vec![
                    ("executable", exe.clone()),
                    ("reason", (*reason).to_owned()),
                ],
                *n,
            )
        })
        .collect();
    e.family(
        "sonde_tls_untraceable_connections_total",
        "counter",
        "TLS connections sonde cannot read (no OpenSSL it can hook: Go crypto/tls, rustls, \
         GnuTLS, Java, static builds without symbols), by \
         executable and reason.",
        &untraceable,
    );
    e.gauge(
        "sonde_tls_libraries_attached",
        "Files (libssl or executables with OpenSSL linked in) with the TLS uprobes attached.",
        tls.files_attached,
    );
    e.counter(
        "sonde_tls_attach_failures_total",
        "Files where attaching the TLS uprobes failed (see the log).",
        tls.attach_failures,
    );
    e.counter(
        "sonde_tracer_spans_parent_ambiguous_total",
        "Client spans emitted without a parent: several requests of their event-loop process \
         were in flight and which one they belong to cannot be known.",
        t.spans_parent_ambiguous,
    );
    e.counter(
        "sonde_tracer_spans_relinked_late_total",
        "Server spans moved under their local client span after the fact: the client's \
         write record reached sonde after the server's read record.",
        t.spans_relinked_late,
    );
    let m = &capture.merge;
    e.counter(
        "sonde_merge_duplicate_spans_dropped_total",
        "eBPF spans dropped as duplicates of SDK spans.",
        m.ebpf_duplicates_dropped,
    );
    e.counter(
        "sonde_merge_spans_reparented_total",
        "eBPF spans moved under an SDK span.",
        m.ebpf_spans_reparented,
    );
    e.gauge(
        "sonde_merge_held_spans",
        "eBPF spans waiting for SDK spans to merge with.",
        m.held_spans as u64,
    );
    e.gauge(
        "sonde_memory_budget_bytes",
        "The daemon's memory budget.",
        sources.memory_budget_bytes as u64,
    );

    if let Some(stats) = sources.receiver.as_ref().map(|f| f()) {
        let signals = [
            ("traces", &stats.traces),
            ("metrics", &stats.metrics),
            ("logs", &stats.logs),
        ];
        let per = |f: fn(&sonde_otlp_receive::SignalStats) -> u64| -> Vec<_> {
            signals
                .iter()
                .map(|(sig, s)| (vec![("signal", (*sig).to_owned())], f(s)))
                .collect()
        };
        e.family(
            "sonde_receiver_requests_total",
            "counter",
            "OTLP export requests received.",
            &per(|s| s.requests),
        );
        e.family(
            "sonde_receiver_items_total",
            "counter",
            "Spans, data points and log records received.",
            &per(|s| s.items),
        );
        e.family(
            "sonde_receiver_partially_rejected_items_total",
            "counter",
            "Items rejected in partial successes.",
            &per(|s| s.partial_rejected),
        );
        let mut refused = Vec::new();
        for (sig, s) in signals {
            for (reason, n) in [
                ("invalid", s.refused_invalid),
                ("too_large", s.refused_too_large),
                ("overloaded", s.refused_overloaded),
                ("unsupported", s.refused_unsupported),
                ("internal", s.refused_internal),
                ("timeout", s.refused_timeout),
            ] {
                refused.push((
                    vec![("signal", sig.to_owned()), ("reason", reason.to_owned())],
                    n,
                ));
            }
        }
        e.family(
            "sonde_receiver_refused_requests_total",
            "counter",
            "OTLP requests refused, by reason.",
            &refused,
        );
        e.gauge(
            "sonde_receiver_inflight_bytes",
            "Bytes of requests being read and decoded.",
            stats.inflight_bytes,
        );
    }

    let stats = sources.exporter.stats();
    let (mut exported, mut failed, mut dropped, mut retries, mut queue, mut queue_max) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for out in &stats.outputs {
        let index = out.index.to_string();
        for (signal, s) in [
            ("traces", &out.traces),
            ("metrics", &out.metrics),
            ("logs", &out.logs),
        ] {
            let s: &SignalStats = s;
            let l = vec![
                ("output", index.clone()),
                ("kind", out.kind.to_owned()),
                ("signal", signal.to_owned()),
            ];
            exported.push((l.clone(), s.exported_items_total));
            failed.push((l.clone(), s.failed_items_total));
            retries.push((l.clone(), s.retries_total));
            let mut full = l.clone();
            full.push(("reason", "queue_full".to_owned()));
            dropped.push((full, s.dropped_queue_full_items_total));
            let mut gave_up = l;
            gave_up.push(("reason", "retries_exhausted".to_owned()));
            dropped.push((gave_up, s.dropped_retry_exhausted_items_total));
        }
        let l = vec![("output", index), ("kind", out.kind.to_owned())];
        queue.push((l.clone(), out.queue_bytes));
        queue_max.push((l, out.queue_max_bytes));
    }
    e.family(
        "sonde_exporter_exported_items_total",
        "counter",
        "Items delivered to an output.",
        &exported,
    );
    e.family(
        "sonde_exporter_failed_items_total",
        "counter",
        "Items refused permanently by an output.",
        &failed,
    );
    e.family(
        "sonde_exporter_dropped_items_total",
        "counter",
        "Items dropped: queue full or retries exhausted.",
        &dropped,
    );
    e.family(
        "sonde_exporter_retries_total",
        "counter",
        "Export attempts retried.",
        &retries,
    );
    e.family(
        "sonde_exporter_queue_bytes",
        "gauge",
        "Bytes queued for an output.",
        &queue,
    );
    e.family(
        "sonde_exporter_queue_max_bytes",
        "gauge",
        "Byte bound of an output's queue.",
        &queue_max,
    );
    e.enc.finish()
}

/// Liveness (`/healthz`: the process answers) and readiness (`/readyz`: probes attached).
fn health(path: &str, ready: bool) -> Option<(u16, &'static str)> {
    match (path, ready) {
        ("/healthz", _) => Some((200, "ok\n")),
        ("/readyz", true) => Some((200, "ready\n")),
        ("/readyz", false) => Some((503, "probes not attached yet\n")),
        _ => None,
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, sources: Sources) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let sources = sources.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let sources = sources.clone();
                async move {
                    let ready = sources.ready.load(std::sync::atomic::Ordering::Relaxed);
                    let response = if let Some((status, body)) = health(req.uri().path(), ready) {
                        Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from(body)))
                    } else if req.uri().path() == "/metrics" {
                        let format = Format::from_accept(
                            req.headers()
                                .get(hyper::header::ACCEPT)
                                .and_then(|v| v.to_str().ok()),
                        );
                        Response::builder()
                            .header("Content-Type", format.content_type())
                            .body(Full::new(Bytes::from(render(&sources, format))))
                    } else {
                        Response::builder()
                            .status(404)
                            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
                    };
                    Ok::<_, Infallible>(
                        response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Binds the metrics listener (errors say which flag to change; the daemon goes on without).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("metrics endpoint {addr}: {e}; set --metrics-addr (or `off`)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_endpoints() {
        assert_eq!(health("/healthz", false).map(|h| h.0), Some(200));
        assert_eq!(health("/readyz", false).map(|h| h.0), Some(503));
        assert_eq!(health("/readyz", true).map(|h| h.0), Some(200));
        assert_eq!(health("/metrics", true), None);
    }

    #[test]
    fn exposition_escapes_and_shapes_families() {
        let mut e = Exposition {
            enc: Encoder::new(Format::Classic),
        };
        e.family(
            "x_total",
            "counter",
            "Help.",
            &[(vec![("a", "q\"uo\\te\n".to_owned())], 3)],
        );
        e.gauge("y", "Gauge.", 5);
        assert_eq!(
            e.enc.finish(),
            "# HELP x_total Help.\n# TYPE x_total counter\nx_total{a=\"q\\\"uo\\\\te\\n\"} 3\n# HELP y Gauge.\n# TYPE y gauge\ny 5\n"
        );
    }
}
