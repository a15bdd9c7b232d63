//! OTLP/JSON encoding (opentelemetry-proto's `with-serde`: lowerCamelCase keys, hex trace/span
//! ids, enums as integers, 64-bit integers as strings) and the stdout `Json` output line.
//!
//! Checked against the spec by the tests (a protobuf JSON parser on the sink side accepts it):
//! no fix-up is needed. Unset message fields come out as `null` and defaults are not omitted;
//! the proto3 JSON mapping accepts both, so they are left as they are (cheaper than a rewrite).

use crate::payload::Request;

/// The request as an OTLP/JSON body.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, serde_json::Error> {
    match req {
        Request::Traces(r) => serde_json::to_vec(r),
        Request::Metrics(r) => serde_json::to_vec(r),
        Request::Logs(r) => serde_json::to_vec(r),
    }
}

/// One OTLP/JSON export request followed by a newline: the stdout `Json` output line, the
/// format of the OpenTelemetry file exporter (`{"resourceSpans":[...]}`,
/// `{"resourceMetrics":[...]}` or `{"resourceLogs":[...]}`, so the key tells the signal).
pub fn encode_line(req: &Request, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match req {
        Request::Traces(r) => serde_json::to_writer(&mut *out, r)?,
        Request::Metrics(r) => serde_json::to_writer(&mut *out, r)?,
        Request::Logs(r) => serde_json::to_writer(&mut *out, r)?,
    }
    out.push(b'\n');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    #[test]
    fn otlp_json_conventions() {
        let req = Request::Traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: vec![Span {
                        name: "x".into(),
                        trace_id: vec![0xab; 16],
                        span_id: vec![0x0f; 8],
                        kind: 3,
                        start_time_unix_nano: u64::MAX,
                        attributes: vec![KeyValue {
                            key: "n".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::IntValue(-5)),
                            }),
                            ..KeyValue::default()
                        }],
                        ..Span::default()
                    }],
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        });
        let mut out = Vec::new();
        assert!(encode_line(&req, &mut out).is_ok());
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        let span = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "ab".repeat(16));
        assert_eq!(span["spanId"], "0f".repeat(8));
        assert_eq!(span["kind"], 3);
        assert_eq!(span["startTimeUnixNano"], u64::MAX.to_string());
        assert_eq!(span["attributes"][0]["value"]["intValue"], "-5");
        let body = encode_request(&req).unwrap_or_default();
        let direct: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(direct, v, "the line is exactly the OTLP/JSON request");
    }
}
