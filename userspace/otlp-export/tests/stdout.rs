//! The `Text` and `Json` stdout outputs, observed from outside: the test re-runs its own binary
//! as a child that exports through the stdout outputs, and reads the child's stdout.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use sonde_otlp_export::{Exporter, Output};

const MODE_VAR: &str = "SONDE_OTLP_EXPORT_STDOUT_CHILD";

async fn child(mode: &str) {
    let output = if mode == "json" {
        Output::Json
    } else {
        Output::Text
    };
    let exporter = Exporter::start(config(vec![output])).expect("start");
    exporter.send_traces(spans(40, 0, 3)).expect("room");
    exporter.send_metrics(metrics()).expect("room");
    exporter.send_logs(logs()).expect("room");
    exporter.shutdown(Duration::from_secs(5)).await;
    let st = exporter.stats();
    assert_eq!(st.traces.exported_items_total, 3);
    assert_eq!(st.metrics.exported_items_total, 3);
    assert_eq!(st.logs.exported_items_total, 1);
}

fn run_child(mode: &str) -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new(exe)
        .args([
            "stdout_outputs",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE_VAR, mode)
        .output()
        .expect("child runs");
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        // Strip the test harness's own words ("running 1 test", "test x ... ", "ok", "test result").
        .map(|l| match l.split_once(" ... ") {
            Some((head, rest)) if head.starts_with("test ") => rest,
            _ => l,
        })
        .filter(|l| {
            !l.is_empty()
                && *l != "ok"
                && !l.starts_with("running ")
                && !l.starts_with("test result")
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_outputs() {
    if let Ok(mode) = std::env::var(MODE_VAR) {
        child(&mode).await;
        return;
    }

    let text = run_child("text");
    let span_lines: Vec<&String> = text.iter().filter(|l| l.contains(" SERVER ")).collect();
    assert_eq!(span_lines.len(), 3, "{text:#?}");
    assert_eq!(
        span_lines[1].as_str(),
        format!(
            "2026-11-25T15:04:05.123Z SERVER GET /users/{{id}} 12.3ms status=OK trace={} span={} parent=- service=web \
             http.request.method=GET http.route=/users/{{id}} http.response.status_code=200 url.path=/users/1 \
             sonde.test.flag=true sonde.test.index=1 sonde.test.ratio=0.5",
            hex(&trace_id(40, 1)),
            hex(&span_id(1))
        )
    );
    assert!(span_lines[0].contains(&format!("parent={}", hex(&span_id(1_000_000)))));
    let metric_lines: Vec<&String> = text.iter().filter(|l| l.contains(" METRIC ")).collect();
    assert_eq!(metric_lines.len(), 3, "{text:#?}");
    assert!(
        metric_lines[0]
            .contains("METRIC process.cpu.time sum unit=s points=1 value=1.25 service=web"),
        "{}",
        metric_lines[0]
    );
    assert!(
        metric_lines[1].contains("METRIC process.thread.count gauge"),
        "{}",
        metric_lines[1]
    );
    assert!(
        metric_lines[2].contains("histogram unit=s points=1 count=3 sum=0.75"),
        "{}",
        metric_lines[2]
    );
    let log_lines: Vec<&String> = text.iter().filter(|l| l.contains(" LOG ")).collect();
    assert_eq!(log_lines.len(), 1, "{text:#?}");
    assert_eq!(
        log_lines[0].as_str(),
        format!(
            "2026-11-25T15:04:05.000Z LOG INFO \"user 7 logged in\" trace={} span={} service=web user.id=7",
            hex(&trace_id(9, 1)),
            hex(&span_id(1))
        )
    );

    let json = run_child("json");
    let lines: Vec<serde_json::Value> = json
        .iter()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON document"))
        .collect();
    assert_eq!(lines.len(), 3, "{json:#?}");
    let traces = lines
        .iter()
        .find(|l| l.get("resourceSpans").is_some())
        .expect("traces line");
    let s = &traces["resourceSpans"][0]["scopeSpans"][0]["spans"];
    assert_eq!(s.as_array().map(Vec::len), Some(3));
    assert_eq!(s[1]["traceId"], hex(&trace_id(40, 1)));
    assert_eq!(s[1]["spanId"], hex(&span_id(1)));
    assert_eq!(s[1]["kind"], 2);
    assert!(lines.iter().any(|l| l.get("resourceMetrics").is_some()
        && l["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["name"] == "process.cpu.time"));
    assert!(lines.iter().any(|l| l.get("resourceLogs").is_some()));
}
