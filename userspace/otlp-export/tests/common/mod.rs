//! Test helpers: run the independent Python OTLP sink (tests/sink/otlp_sink.py) on free ports,
//! steer its faults, read what it received; build spans, metrics and logs.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
    Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span, status,
};
use serde_json::Value;
use sonde_otlp_export::{Compression, ExporterConfig, OtlpEndpoint, Output, Protocol, RetryPolicy};

pub struct Sink {
    child: Child,
    pub grpc_port: u16,
    pub http_port: u16,
    pub control_port: u16,
    pub out: PathBuf,
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

impl Sink {
    pub fn start() -> Sink {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Sink {
        // RUST_LOG=sonde_otlp_export=debug shows the exporter's retries while debugging a test.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/sink/otlp_sink.py");
        let out = std::env::temp_dir().join(format!(
            "sonde-otlp-export-test-{}-{}.jsonl",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&out);
        let mut child = Command::new("python3")
            .arg(&script)
            .args([
                "--grpc-port",
                "0",
                "--http-port",
                "0",
                "--control-port",
                "0",
                "--out",
            ])
            .arg(&out)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 runs the sink");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut ports = None;
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("sink prints ready within 20 s");
            if let Some(rest) = line.strip_prefix("ports ") {
                let get = |k: &str| -> u16 {
                    rest.split(' ')
                        .find_map(|kv| kv.strip_prefix(k))
                        .and_then(|v| v.parse().ok())
                        .expect("port in ports line")
                };
                ports = Some((get("grpc="), get("http="), get("control=")));
            }
            if line == "ready" {
                break;
            }
        }
        let (grpc_port, http_port, control_port) = ports.expect("ports line before ready");
        Sink {
            child,
            grpc_port,
            http_port,
            control_port,
            out,
        }
    }

    pub fn grpc_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    pub fn http_base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn endpoint(&self, protocol: Protocol, compression: Compression) -> OtlpEndpoint {
        let base = match protocol {
            Protocol::Grpc => self.grpc_base(),
            _ => self.http_base(),
        };
        let mut e = OtlpEndpoint::for_base_url(&base, protocol);
        e.compression = compression;
        e.timeout = Duration::from_secs(5);
        e
    }

    fn control_request(&self, method: &str, path: &str, body: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.control_port)).expect("control port");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).expect("write control");
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read control");
        assert!(
            resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200"),
            "{resp}"
        );
        resp.split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_string()
    }

    /// POST /control with a JSON command.
    pub fn control(&self, json: &str) {
        self.control_request("POST", "/control", json);
    }

    pub fn stats(&self) -> Value {
        serde_json::from_str(&self.control_request("GET", "/stats", "")).expect("stats JSON")
    }

    /// Every accepted request so far. The sink appends one line per request
    /// while the test reads, so a last line without its newline is a write
    /// still under way: it is left for the next read, not parsed.
    pub fn lines(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("sink writes JSON lines"))
            .collect()
    }

    /// All spans received (flattened), with their request's transport.
    pub fn spans(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for line in self.lines() {
            if line["signal"] != "traces" {
                continue;
            }
            for rs in line["request"]["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                for ss in rs["scopeSpans"].as_array().cloned().unwrap_or_default() {
                    for s in ss["spans"].as_array().cloned().unwrap_or_default() {
                        out.push(s);
                    }
                }
            }
        }
        out
    }

    /// Waits until at least `n` spans arrived (or the timeout), returns them.
    pub async fn wait_spans(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let spans = self.spans();
            if spans.len() >= n || start.elapsed() > timeout {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_lines(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let lines = self.lines();
            if lines.len() >= n || start.elapsed() > timeout {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        initial: Duration::from_millis(100),
        multiplier: 1.5,
        max_interval: Duration::from_millis(500),
        max_elapsed: Duration::from_secs(30),
        jitter: 0.2,
    }
}

pub fn config(outputs: Vec<Output>) -> ExporterConfig {
    ExporterConfig {
        outputs,
        queue_max_bytes: 16 * 1024 * 1024,
        batch_max_items: 100,
        batch_max_bytes: 1024 * 1024,
        batch_timeout: Duration::from_millis(50),
        retry: fast_retry(),
        shutdown_timeout: Duration::from_secs(5),
        max_concurrent_batches: 4,
    }
}

pub fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

pub fn s(v: &str) -> any_value::Value {
    any_value::Value::StringValue(v.into())
}

pub fn resource(service: &str) -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv("service.name", s(service))],
        ..Resource::default()
    })
}

/// Trace id of span `i` in test `tag`: distinct and recognisable.
pub fn trace_id(tag: u8, i: u32) -> Vec<u8> {
    let mut id = vec![
        0x4b, tag, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92,
    ];
    id.extend_from_slice(&i.to_be_bytes());
    id
}

pub fn span_id(i: u32) -> Vec<u8> {
    let mut id = vec![0x00, 0xf0, 0x67, 0xaa];
    id.extend_from_slice(&i.to_be_bytes());
    id
}

pub fn server_span(tag: u8, i: u32) -> Span {
    Span {
        trace_id: trace_id(tag, i),
        span_id: span_id(i),
        parent_span_id: if i.is_multiple_of(2) {
            span_id(i + 1_000_000)
        } else {
            Vec::new()
        },
        name: "GET /users/{id}".into(),
        kind: span::SpanKind::Server as i32,
        start_time_unix_nano: 1_795_619_045_123_000_000 + u64::from(i),
        end_time_unix_nano: 1_795_619_045_135_300_000 + u64::from(i),
        attributes: vec![
            kv("http.request.method", s("GET")),
            kv("http.route", s("/users/{id}")),
            kv("url.path", s(&format!("/users/{i}"))),
            kv("http.response.status_code", any_value::Value::IntValue(200)),
            kv("sonde.test.index", any_value::Value::IntValue(i64::from(i))),
            kv("sonde.test.ratio", any_value::Value::DoubleValue(0.5)),
            kv("sonde.test.flag", any_value::Value::BoolValue(true)),
        ],
        status: Some(Status {
            code: status::StatusCode::Ok as i32,
            message: String::new(),
        }),
        ..Span::default()
    }
}

/// `n` spans numbered from `first`, in one ResourceSpans.
pub fn spans(tag: u8, first: u32, n: u32) -> Vec<ResourceSpans> {
    vec![ResourceSpans {
        resource: resource("web"),
        scope_spans: vec![ScopeSpans {
            spans: (first..first + n).map(|i| server_span(tag, i)).collect(),
            ..ScopeSpans::default()
        }],
        ..ResourceSpans::default()
    }]
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Span indexes (the `sonde.test.index` attribute) of received spans, sorted, deduplicated.
pub fn indexes(spans: &[Value]) -> Vec<i64> {
    let mut v: Vec<i64> = spans
        .iter()
        .filter_map(|s| {
            s["attributes"].as_array()?.iter().find_map(|kv| {
                if kv["key"] == "sonde.test.index" {
                    kv["value"]["intValue"].as_str()?.parse().ok()
                } else {
                    None
                }
            })
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

pub fn metrics() -> Vec<ResourceMetrics> {
    let point = |v: number_data_point::Value| NumberDataPoint {
        attributes: vec![kv("cpu.mode", s("user"))],
        start_time_unix_nano: 1_795_619_000_000_000_000,
        time_unix_nano: 1_795_619_045_000_000_000,
        value: Some(v),
        ..NumberDataPoint::default()
    };
    vec![ResourceMetrics {
        resource: resource("web"),
        scope_metrics: vec![ScopeMetrics {
            metrics: vec![
                Metric {
                    name: "process.cpu.time".into(),
                    unit: "s".into(),
                    data: Some(metric::Data::Sum(Sum {
                        data_points: vec![point(number_data_point::Value::AsDouble(1.25))],
                        aggregation_temporality: 2,
                        is_monotonic: true,
                    })),
                    ..Metric::default()
                },
                Metric {
                    name: "process.thread.count".into(),
                    unit: "{thread}".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![point(number_data_point::Value::AsInt(7))],
                    })),
                    ..Metric::default()
                },
                Metric {
                    name: "http.server.request.duration".into(),
                    unit: "s".into(),
                    data: Some(metric::Data::Histogram(Histogram {
                        data_points: vec![HistogramDataPoint {
                            start_time_unix_nano: 1,
                            time_unix_nano: 2,
                            count: 3,
                            sum: Some(0.75),
                            bucket_counts: vec![1, 2, 0],
                            explicit_bounds: vec![0.1, 0.5],
                            ..HistogramDataPoint::default()
                        }],
                        aggregation_temporality: 2,
                    })),
                    ..Metric::default()
                },
            ],
            ..ScopeMetrics::default()
        }],
        ..ResourceMetrics::default()
    }]
}

pub fn logs() -> Vec<ResourceLogs> {
    vec![ResourceLogs {
        resource: resource("web"),
        scope_logs: vec![ScopeLogs {
            log_records: vec![LogRecord {
                time_unix_nano: 1_795_619_045_000_000_000,
                severity_number: 9,
                severity_text: "INFO".into(),
                body: Some(AnyValue {
                    value: Some(s("user 7 logged in")),
                }),
                attributes: vec![kv("user.id", any_value::Value::IntValue(7))],
                trace_id: trace_id(9, 1),
                span_id: span_id(1),
                ..LogRecord::default()
            }],
            ..ScopeLogs::default()
        }],
        ..ResourceLogs::default()
    }]
}
