//! Helpers shared by the end-to-end scenario files (`mod common;` in each).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

use std::time::Duration;

use sonde_e2e::Span;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn of_kind<'a>(spans: &'a [Span], kind: &str, port: u16) -> Vec<&'a Span> {
    let mut v: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == kind && s.attr_i64("server.port") == Some(i64::from(port)))
        .collect();
    v.sort_by_key(|s| s.start_ns);
    v
}

pub fn servers(spans: &[Span], port: u16) -> Vec<&Span> {
    of_kind(spans, "SERVER", port)
}

pub fn clients(spans: &[Span], port: u16) -> Vec<&Span> {
    of_kind(spans, "CLIENT", port)
}

/// Waits until exactly `n` SERVER spans for `port` have been printed, then a little longer to
/// make sure no extra ones follow, and returns all spans.
pub fn wait_servers(sonde: &sonde_e2e::Sonde, port: u16, n: usize) -> Vec<Span> {
    sonde.wait_for_spans(|s| servers(s, port).len() >= n, WAIT);
    std::thread::sleep(Duration::from_millis(1500));
    sonde.spans()
}

pub fn assert_well_formed(span: &Span) {
    assert_eq!(span.trace_id.len(), 32, "{span:?}");
    assert_eq!(span.span_id.len(), 16, "{span:?}");
    assert!(span.end_ns >= span.start_ns, "end before start: {span:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let age = now.saturating_sub(span.start_ns);
    assert!(
        age < 600_000_000_000,
        "span start is not wall-clock time now: {span:?}"
    );
    assert!(
        span.start_ns <= now + 1_000_000_000,
        "span starts in the future: {span:?}"
    );
}
