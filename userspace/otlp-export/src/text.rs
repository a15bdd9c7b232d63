//! Human-readable stdout lines: one per span, one per metric, one per log record.
//!
//! Span line: `<start, RFC 3339 UTC ms> <KIND> <name> <duration> status=<UNSET|OK|ERROR>
//! trace=<32 hex> span=<16 hex> parent=<16 hex or -> service=<service.name>` followed by the
//! span attributes as `key=value`: the well-known HTTP/DB ones first in a fixed order, then the
//! rest sorted by key. Values with spaces, quotes, `=` or nothing in them are JSON-quoted.

use std::fmt::Write;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, metric, number_data_point};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, span, status};

/// Attributes shown first, in this order.
const IMPORTANT: &[&str] = &[
    "http.request.method",
    "http.route",
    "http.response.status_code",
    "url.path",
    "url.query",
    "url.full",
    "db.system.name",
    "db.namespace",
    "db.query.summary",
    "db.query.text",
    "db.response.status_code",
    "error.type",
    "server.address",
    "server.port",
    "client.address",
];

/// Appends one line per span to `out`.
pub fn format_spans(spans: &[ResourceSpans], out: &mut String) {
    for rs in spans {
        let service = service_name(rs.resource.as_ref());
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                push_timestamp(out, s.start_time_unix_nano);
                out.push(' ');
                out.push_str(kind_name(s.kind));
                out.push(' ');
                out.push_str(if s.name.is_empty() { "-" } else { &s.name });
                out.push(' ');
                push_duration(
                    out,
                    s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano),
                );
                let (code, message) = match &s.status {
                    Some(st) => (st.code, st.message.as_str()),
                    None => (0, ""),
                };
                out.push_str(" status=");
                out.push_str(match status::StatusCode::try_from(code) {
                    Ok(status::StatusCode::Ok) => "OK",
                    Ok(status::StatusCode::Error) => "ERROR",
                    _ => "UNSET",
                });
                if !message.is_empty() {
                    out.push_str(" status.message=");
                    push_str_value(out, message);
                }
                out.push_str(" trace=");
                push_hex(out, &s.trace_id);
                out.push_str(" span=");
                push_hex(out, &s.span_id);
                out.push_str(" parent=");
                if s.parent_span_id.is_empty() {
                    out.push('-');
                } else {
                    push_hex(out, &s.parent_span_id);
                }
                out.push_str(" service=");
                push_str_value(out, service);
                push_attributes(out, &s.attributes);
                if !s.events.is_empty() {
                    let _ = write!(out, " events={}", s.events.len());
                }
                if !s.links.is_empty() {
                    let _ = write!(out, " links={}", s.links.len());
                }
                out.push('\n');
            }
        }
    }
}

/// Appends one line per metric (`<time> METRIC <name> <type> points=<n> ... service=...`).
pub fn format_metrics(metrics: &[ResourceMetrics], out: &mut String) {
    for rm in metrics {
        let service = service_name(rm.resource.as_ref());
        for sm in &rm.scope_metrics {
            for m in &sm.metrics {
                let (kind, points, time, summary) = metric_summary(m.data.as_ref());
                push_timestamp(out, time);
                out.push_str(" METRIC ");
                out.push_str(&m.name);
                out.push(' ');
                out.push_str(kind);
                if !m.unit.is_empty() {
                    out.push_str(" unit=");
                    push_str_value(out, &m.unit);
                }
                let _ = write!(out, " points={points}");
                out.push_str(&summary);
                out.push_str(" service=");
                push_str_value(out, service);
                out.push('\n');
            }
        }
    }
}

/// Appends one line per log record (`<time> LOG <severity> <body> trace=.. span=.. service=.. attrs`).
pub fn format_logs(logs: &[ResourceLogs], out: &mut String) {
    for rl in logs {
        let service = service_name(rl.resource.as_ref());
        for sl in &rl.scope_logs {
            for r in &sl.log_records {
                let t = if r.time_unix_nano != 0 {
                    r.time_unix_nano
                } else {
                    r.observed_time_unix_nano
                };
                push_timestamp(out, t);
                out.push_str(" LOG ");
                if r.severity_text.is_empty() {
                    let _ = write!(out, "SEV{}", r.severity_number);
                } else {
                    out.push_str(&r.severity_text);
                }
                out.push(' ');
                match &r.body {
                    Some(b) => push_value(out, b),
                    None => out.push_str("\"\""),
                }
                if !r.trace_id.is_empty() {
                    out.push_str(" trace=");
                    push_hex(out, &r.trace_id);
                }
                if !r.span_id.is_empty() {
                    out.push_str(" span=");
                    push_hex(out, &r.span_id);
                }
                out.push_str(" service=");
                push_str_value(out, service);
                push_attributes(out, &r.attributes);
                out.push('\n');
            }
        }
    }
}

fn metric_summary(data: Option<&metric::Data>) -> (&'static str, usize, u64, String) {
    let mut s = String::new();
    let num = |v: &Option<number_data_point::Value>| match v {
        Some(number_data_point::Value::AsDouble(d)) => format!("{d}"),
        Some(number_data_point::Value::AsInt(i)) => format!("{i}"),
        None => "-".to_string(),
    };
    match data {
        Some(metric::Data::Gauge(g)) => {
            if let [p] = g.data_points.as_slice() {
                let _ = write!(s, " value={}", num(&p.value));
            }
            let t = g.data_points.first().map_or(0, |p| p.time_unix_nano);
            ("gauge", g.data_points.len(), t, s)
        }
        Some(metric::Data::Sum(m)) => {
            if let [p] = m.data_points.as_slice() {
                let _ = write!(s, " value={}", num(&p.value));
            }
            let t = m.data_points.first().map_or(0, |p| p.time_unix_nano);
            ("sum", m.data_points.len(), t, s)
        }
        Some(metric::Data::Histogram(h)) => {
            let count: u64 = h.data_points.iter().map(|p| p.count).sum();
            let sum: f64 = h.data_points.iter().filter_map(|p| p.sum).sum();
            let _ = write!(s, " count={count} sum={sum}");
            let t = h.data_points.first().map_or(0, |p| p.time_unix_nano);
            ("histogram", h.data_points.len(), t, s)
        }
        Some(metric::Data::ExponentialHistogram(h)) => {
            let count: u64 = h.data_points.iter().map(|p| p.count).sum();
            let _ = write!(s, " count={count}");
            let t = h.data_points.first().map_or(0, |p| p.time_unix_nano);
            ("exponential_histogram", h.data_points.len(), t, s)
        }
        Some(metric::Data::Summary(m)) => {
            let t = m.data_points.first().map_or(0, |p| p.time_unix_nano);
            ("summary", m.data_points.len(), t, s)
        }
        None => ("empty", 0, 0, s),
    }
}

fn service_name(resource: Option<&Resource>) -> &str {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(any_value::Value::StringValue(s)) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("-")
}

fn kind_name(kind: i32) -> &'static str {
    match span::SpanKind::try_from(kind) {
        Ok(span::SpanKind::Server) => "SERVER",
        Ok(span::SpanKind::Client) => "CLIENT",
        Ok(span::SpanKind::Producer) => "PRODUCER",
        Ok(span::SpanKind::Consumer) => "CONSUMER",
        Ok(span::SpanKind::Internal) => "INTERNAL",
        _ => "UNSPECIFIED",
    }
}

fn push_attributes(out: &mut String, attrs: &[KeyValue]) {
    for key in IMPORTANT {
        if let Some(kv) = attrs.iter().find(|kv| kv.key == *key) {
            push_kv(out, kv);
        }
    }
    let mut rest: Vec<&KeyValue> = attrs
        .iter()
        .filter(|kv| !IMPORTANT.contains(&kv.key.as_str()))
        .collect();
    rest.sort_by(|a, b| a.key.cmp(&b.key));
    for kv in rest {
        push_kv(out, kv);
    }
}

fn push_kv(out: &mut String, kv: &KeyValue) {
    out.push(' ');
    out.push_str(&kv.key);
    out.push('=');
    match &kv.value {
        Some(v) => push_value(out, v),
        None => out.push_str("\"\""),
    }
}

fn push_value(out: &mut String, v: &AnyValue) {
    match &v.value {
        Some(any_value::Value::StringValue(s)) => push_str_value(out, s),
        Some(any_value::Value::BoolValue(b)) => {
            let _ = write!(out, "{b}");
        }
        Some(any_value::Value::IntValue(i)) => {
            let _ = write!(out, "{i}");
        }
        Some(any_value::Value::DoubleValue(d)) => {
            let _ = write!(out, "{d}");
        }
        Some(any_value::Value::BytesValue(b)) => push_hex(out, b),
        Some(any_value::Value::ArrayValue(a)) => {
            out.push('[');
            for (i, item) in a.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                push_value(out, item);
            }
            out.push(']');
        }
        Some(any_value::Value::KvlistValue(l)) => {
            out.push('{');
            for (i, kv) in l.values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&kv.key);
                out.push('=');
                match &kv.value {
                    Some(v) => push_value(out, v),
                    None => out.push_str("\"\""),
                }
            }
            out.push('}');
        }
        // Dictionary reference (profiles signal); no dictionary here.
        Some(any_value::Value::StringValueStrindex(i)) => {
            let _ = write!(out, "strindex:{i}");
        }
        None => out.push_str("\"\""),
    }
}

/// Bare when unambiguous, else JSON-quoted (escapes newlines and quotes).
fn push_str_value(out: &mut String, s: &str) {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '"' && c != '=');
    if plain {
        out.push_str(s);
    } else {
        match serde_json::to_string(s) {
            Ok(q) => out.push_str(&q),
            Err(_) => out.push_str("\"?\""),
        }
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

fn push_duration(out: &mut String, nanos: u64) {
    if nanos < 1_000_000 {
        let _ = write!(out, "{}µs", nanos / 1000);
    } else if nanos < 10_000_000_000 {
        let _ = write!(out, "{:.1}ms", nanos as f64 / 1e6);
    } else {
        let _ = write!(out, "{:.2}s", nanos as f64 / 1e9);
    }
}

/// RFC 3339 UTC with milliseconds, from Unix nanoseconds.
fn push_timestamp(out: &mut String, unix_nanos: u64) {
    let secs = unix_nanos / 1_000_000_000;
    let millis = (unix_nanos % 1_000_000_000) / 1_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let _ = write!(
        out,
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    );
}

/// Howard Hinnant's days-to-civil algorithm for days since 1970-01-01 (non-negative).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::ArrayValue;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span, Status};

    fn kv(k: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..KeyValue::default()
        }
    }

    #[test]
    fn timestamps() {
        let mut s = String::new();
        push_timestamp(&mut s, 0);
        assert_eq!(s, "1970-01-01T00:00:00.000Z");
        s.clear();
        // 2026-11-25T15:04:05.123Z
        push_timestamp(&mut s, 1_795_619_045_123_000_000);
        assert_eq!(s, "2026-11-25T15:04:05.123Z");
        s.clear();
        push_timestamp(&mut s, 951_782_400_000_000_000); // 2000-02-29
        assert_eq!(s, "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn span_line() {
        let spans = vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("web".into()),
                )],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    name: "GET /users/{id}".into(),
                    kind: span::SpanKind::Server as i32,
                    trace_id: vec![0x4b; 16],
                    span_id: vec![0x00, 0xf0, 1, 2, 3, 4, 5, 6],
                    start_time_unix_nano: 1_795_619_045_123_000_000,
                    end_time_unix_nano: 1_795_619_045_135_300_000,
                    status: Some(Status {
                        code: status::StatusCode::Ok as i32,
                        message: String::new(),
                    }),
                    attributes: vec![
                        kv("zeta", any_value::Value::BoolValue(true)),
                        kv("url.path", any_value::Value::StringValue("/users/7".into())),
                        kv("http.response.status_code", any_value::Value::IntValue(200)),
                        kv(
                            "user_agent.original",
                            any_value::Value::StringValue("curl/8 x".into()),
                        ),
                        kv(
                            "tags",
                            any_value::Value::ArrayValue(ArrayValue {
                                values: vec![AnyValue {
                                    value: Some(any_value::Value::IntValue(1)),
                                }],
                            }),
                        ),
                    ],
                    ..Span::default()
                }],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }];
        let mut out = String::new();
        format_spans(&spans, &mut out);
        assert_eq!(
            out,
            "2026-11-25T15:04:05.123Z SERVER GET /users/{id} 12.3ms status=OK \
             trace=4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b span=00f0010203040506 parent=- service=web \
             http.response.status_code=200 url.path=/users/7 tags=[1] \
             user_agent.original=\"curl/8 x\" zeta=true\n"
        );
    }
}
