//! [`OtlpSink`]: runs the independent Python OTLP sink (`tests/sink/otlp_sink.py`) on free
//! ports and reads what it accepted as [`Span`]s.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dirs::TestDir;
use crate::error::{Error, Result};
use crate::http::http_request;
use crate::proc::Proc;
use crate::span::{Span, dump_spans, spans_from_sink_file};
use crate::{e2e_dir, python};

/// A running OTLP sink (gRPC + HTTP + control port, all on 127.0.0.1).
#[derive(Debug)]
pub struct OtlpSink {
    proc: Proc,
    grpc_port: u16,
    http_port: u16,
    control_port: u16,
    out: PathBuf,
    _dir: TestDir,
}

fn port_of(line: &str, key: &str) -> Option<u16> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|p| p.parse().ok())
}

impl OtlpSink {
    /// Starts the sink; panics (with its logs) on failure.
    pub fn start() -> OtlpSink {
        Self::try_start(None).unwrap_or_else(|e| panic!("OtlpSink::start: {e}"))
    }

    /// Starts the sink with an initial fault (`--fail-mode`, e.g. `status=503,count=2`).
    pub fn start_failing(fail_mode: &str) -> OtlpSink {
        Self::try_start(Some(fail_mode)).unwrap_or_else(|e| panic!("OtlpSink::start: {e}"))
    }

    /// Starts the sink, waiting for its `ready` line.
    pub fn try_start(fail_mode: Option<&str>) -> Result<OtlpSink> {
        let script = e2e_dir().join("sink").join("otlp_sink.py");
        if !script.is_file() {
            return Err(Error::Missing {
                what: "the OTLP sink".into(),
                path: script,
                hint: "run from a full checkout".into(),
            });
        }
        let dir = TestDir::new("sink")?;
        let out = dir.join("otlp.jsonl");
        let mut cmd = Command::new(python());
        cmd.arg("-u")
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
            .env("PYTHONDONTWRITEBYTECODE", "1");
        if let Some(f) = fail_mode {
            cmd.args(["--fail-mode", f]);
        }
        let proc = Proc::spawn("otlp-sink", cmd, dir.path())?;
        proc.wait_for_line("ready", Duration::from_secs(30))?;
        let line = proc.wait_for_line("ports grpc=", Duration::from_secs(1))?;
        let (Some(grpc_port), Some(http_port), Some(control_port)) = (
            port_of(&line, "grpc"),
            port_of(&line, "http"),
            port_of(&line, "control"),
        ) else {
            return Err(Error::Setup(format!(
                "cannot parse the sink's ports from {line:?}"
            )));
        };
        Ok(OtlpSink {
            proc,
            grpc_port,
            http_port,
            control_port,
            out,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<grpc port>` (OTLP/gRPC, plaintext).
    pub fn grpc_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// `http://127.0.0.1:<http port>` (OTLP/HTTP base URL; `/v1/traces` etc. below it).
    pub fn http_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `http://127.0.0.1:<http port>/v1/traces`: the full URL for exporters that take the
    /// signal's URL rather than a base URL.
    pub fn http_traces_url(&self) -> String {
        format!("{}/v1/traces", self.http_endpoint())
    }

    /// The gRPC port.
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// The HTTP port.
    pub fn http_port(&self) -> u16 {
        self.http_port
    }

    /// The file the sink appends accepted requests to.
    pub fn out_path(&self) -> &std::path::Path {
        &self.out
    }

    /// The sink process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Every span accepted so far; panics on a malformed file.
    pub fn spans(&self) -> Vec<Span> {
        spans_from_sink_file(&self.out).unwrap_or_else(|e| panic!("reading the sink's output: {e}"))
    }

    /// Polls [`OtlpSink::spans`] until `pred` holds; panics after `timeout` with all spans.
    pub fn wait_for_spans(&self, pred: impl Fn(&[Span]) -> bool, timeout: Duration) -> Vec<Span> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for spans at the sink\n{}\n{}",
                    dump_spans(&spans),
                    self.proc.logs_tail(50)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The raw JSON lines accepted so far.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `POST /control` with `json` (fault injection; see the sink's docstring).
    pub fn control(&self, json: &str) -> Result<()> {
        let url = format!("http://127.0.0.1:{}/control", self.control_port);
        let r = http_request(
            "POST",
            &url,
            &[("Content-Type", "application/json")],
            json.as_bytes(),
        )?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(Error::Http(format!(
                "POST /control answered {}: {}",
                r.status,
                r.text()
            )))
        }
    }

    /// `GET /stats` as JSON.
    pub fn stats(&self) -> Result<serde_json::Value> {
        let url = format!("http://127.0.0.1:{}/stats", self.control_port);
        let r = http_request("GET", &url, &[], b"")?;
        serde_json::from_slice(&r.body)
            .map_err(|e| Error::Http(format!("/stats is not JSON ({e}): {}", r.text())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::django::{Django, DjangoOpts};
    use crate::http::http_get;
    use crate::postgres::Postgres;

    /// The Django app's SDK mode, both exporters, against the independent sink.
    #[test]
    fn django_sdk_spans_reach_the_sink_over_grpc_and_http() {
        let sink = OtlpSink::start();
        let pg = Postgres::start();
        let grpc = Django::start(
            &pg,
            DjangoOpts::default()
                .workers(1)
                .otel("grpc", &sink.grpc_endpoint())
                .otel_psycopg2()
                .otel_delay_ms(100)
                .env("OTEL_SERVICE_NAME", "dj-grpc"),
        );
        let http = Django::start(
            &pg,
            DjangoOpts::default()
                .workers(1)
                .seed(false)
                .otel("http", &sink.http_endpoint())
                .otel_delay_ms(100)
                .env("OTEL_SERVICE_NAME", "dj-http"),
        );
        assert_eq!(http_get(&grpc.url("/samples/")).0, 200);
        assert_eq!(http_get(&http.url("/analysis/1")).0, 200);
        let spans = sink.wait_for_spans(
            |s| {
                s.iter().any(|x| {
                    x.resource_str("service.name") == Some("dj-grpc") && x.kind == "SERVER"
                }) && s.iter().any(|x| {
                    x.resource_str("service.name") == Some("dj-http") && x.kind == "SERVER"
                })
            },
            Duration::from_secs(30),
        );
        let g = spans
            .iter()
            .find(|x| x.resource_str("service.name") == Some("dj-grpc") && x.kind == "SERVER")
            .unwrap();
        assert_eq!(
            g.attr_i64("http.status_code")
                .or(g.attr_i64("http.response.status_code")),
            Some(200)
        );
        // psycopg2 instrumentation: client spans under the server span, for the grpc app only.
        let tree = crate::span::SpanTree::new(&spans);
        let db: Vec<&Span> = tree
            .children_of(g)
            .into_iter()
            .filter(|c| c.kind == "CLIENT")
            .collect();
        assert_eq!(db.len(), 2, "{}", dump_spans(&spans));
        assert!(
            spans
                .iter()
                .filter(|x| x.resource_str("service.name") == Some("dj-http"))
                .all(|x| x.kind == "SERVER"),
            "{}",
            dump_spans(&spans)
        );
        let transports: Vec<String> = sink
            .lines()
            .iter()
            .filter_map(|l| l["transport"].as_str().map(String::from))
            .collect();
        assert!(
            transports.contains(&"grpc".to_string()) && transports.contains(&"http".to_string())
        );
        assert!(sink.stats().unwrap()["accepted"].as_u64().unwrap_or(0) >= 2);
    }
}
