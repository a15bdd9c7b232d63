//! A real Prometheus server (Debian's `prometheus` package) scraping given targets every
//! second from a temporary config and data directory, and PromQL queries over its HTTP API;
//! plus `promtool check metrics` on an exposition.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::dirs::TestDir;
use crate::error::{Error, IoContext, Result};
use crate::http::http_request;
use crate::net::free_port;
use crate::proc::Proc;

/// A running Prometheus; killed and its data removed on drop.
#[derive(Debug)]
pub struct Prometheus {
    proc: Proc,
    port: u16,
    _dir: TestDir,
}

/// One result of an instant query: its labels and value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub labels: serde_json::Map<String, Value>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).and_then(Value::as_str)
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`/metrics`) every second; panics on failure.
    pub fn start(targets: &[SocketAddr]) -> Prometheus {
        Self::try_start(targets).unwrap_or_else(|e| panic!("Prometheus::start: {e}"))
    }

    pub fn try_start(targets: &[SocketAddr]) -> Result<Prometheus> {
        let dir = TestDir::new("prometheus")?;
        let port = free_port();
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: sonde\n    static_configs:\n      - targets: [{}]\n",
            list.join(", ")
        );
        let cfg = dir.path().join("prometheus.yml");
        std::fs::write(&cfg, config).ctx(|| "writing prometheus.yml".to_string())?;
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=info");
        let proc = Proc::spawn("prometheus", cmd, dir.path())?;
        proc.wait_for_line(
            "Server is ready to receive web requests",
            Duration::from_secs(60),
        )?;
        Ok(Prometheus {
            proc,
            port,
            _dir: dir,
        })
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// An instant PromQL query; errors on a failed request or an error answer.
    pub fn query(&self, promql: &str) -> Result<Vec<Sample>> {
        let url = format!(
            "http://127.0.0.1:{}/api/v1/query?query={}",
            self.port,
            percent_encode(promql)
        );
        let resp = http_request("GET", &url, &[], b"")?;
        let v: Value = serde_json::from_str(&resp.text()).map_err(|e| {
            Error::Http(format!(
                "Prometheus answered non-JSON ({e}): {}",
                resp.text()
            ))
        })?;
        if v.get("status").and_then(Value::as_str) != Some("success") {
            return Err(Error::Http(format!("query {promql}: {v}")));
        }
        let mut out = Vec::new();
        for r in v
            .pointer("/data/result")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let labels = r
                .get("metric")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let value = r
                .pointer("/value/1")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(f64::NAN);
            out.push(Sample { labels, value });
        }
        Ok(out)
    }

    /// Polls `promql` until `pred` holds on its result and returns it; panics after `timeout`
    /// with the last result.
    pub fn wait_for(
        &self,
        promql: &str,
        pred: impl Fn(&[Sample]) -> bool,
        timeout: Duration,
    ) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(promql);
            if let Ok(s) = &r
                && pred(s)
            {
                return s.clone();
            }
            if Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting on {promql}: last result {r:?}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The value of a query returning exactly one series (panics otherwise).
    pub fn scalar(&self, promql: &str) -> f64 {
        let r = self
            .query(promql)
            .unwrap_or_else(|e| panic!("query {promql}: {e}"));
        assert_eq!(r.len(), 1, "{promql} should give one series: {r:?}");
        r[0].value
    }
}

/// Runs `promtool check metrics` on an exposition; Err with its output unless it is clean.
pub fn promtool_check(exposition: &str) -> Result<()> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ctx(|| "running promtool".to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(exposition.as_bytes())
            .ctx(|| "writing to promtool".to_string())?;
    }
    let out = child
        .wait_with_output()
        .ctx(|| "waiting for promtool".to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && text.trim().is_empty() {
        Ok(())
    } else {
        Err(Error::Setup(format!(
            "promtool check metrics: {}\n{text}",
            out.status
        )))
    }
}
