//! The pure OTLP/HTTP decode path: (signal, Content-Type, Content-Encoding, body bytes, limit)
//! -> a validated request or a typed refusal. No I/O; the fuzz target drives this directly.
//!
//! gzip is inflated in a stream with a cap, so a gzip bomb costs at most `max_bytes + 1` bytes
//! of output before it is refused. Validation checks the id lengths that downstream code relies
//! on (trace id 16 bytes, span id 8 bytes) and counts the items for the receiver's statistics.

use std::io::Read;

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::Exemplar;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;

use crate::json;

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// `/v1/traces`, `TraceService/Export`.
    Traces,
    /// `/v1/metrics`, `MetricsService/Export`.
    Metrics,
    /// `/v1/logs`, `LogsService/Export`.
    Logs,
}

impl Signal {
    /// All signals, in a fixed order.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// The OTLP/HTTP path of this signal.
    pub fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }

    /// The gRPC method path of this signal's Export call.
    pub fn grpc_path(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        }
    }

    /// The signal served at an OTLP/HTTP path.
    pub fn from_http_path(path: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.http_path() == path)
    }

    /// The signal served at a gRPC method path.
    pub fn from_grpc_path(path: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.grpc_path() == path)
    }

    /// Lower-case name for logs and errors.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    /// What an item of this signal is called in OTLP.
    pub fn item_name(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Metrics => "data points",
            Signal::Logs => "log records",
        }
    }
}

/// Body encoding of an OTLP/HTTP request (and of its response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json`.
    Json,
}

impl Format {
    /// Parses a Content-Type header value; parameters such as `charset` are ignored.
    pub fn from_content_type(value: &str) -> Option<Format> {
        let media = value.split(';').next().unwrap_or("").trim();
        if media.eq_ignore_ascii_case("application/x-protobuf")
            || media.eq_ignore_ascii_case("application/protobuf")
        {
            Some(Format::Protobuf)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Format::Json)
        } else {
            None
        }
    }

    /// The Content-Type to answer with.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Protobuf => "application/x-protobuf",
            Format::Json => "application/json",
        }
    }
}

/// Content-Encoding of a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// No compression.
    Identity,
    /// gzip.
    Gzip,
}

impl Encoding {
    /// Parses a Content-Encoding (or grpc-encoding) value; `None` means unsupported.
    pub fn parse(value: Option<&str>) -> Option<Encoding> {
        let value = value.map(str::trim).unwrap_or("");
        if value.is_empty() || value.eq_ignore_ascii_case("identity") {
            Some(Encoding::Identity)
        } else if value.eq_ignore_ascii_case("gzip") || value.eq_ignore_ascii_case("x-gzip") {
            Some(Encoding::Gzip)
        } else {
            None
        }
    }
}

/// A decoded export request of one signal.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalRequest {
    /// Traces.
    Traces(ExportTraceServiceRequest),
    /// Metrics.
    Metrics(ExportMetricsServiceRequest),
    /// Logs.
    Logs(ExportLogsServiceRequest),
}

impl SignalRequest {
    /// The signal of this request.
    pub fn signal(&self) -> Signal {
        match self {
            SignalRequest::Traces(_) => Signal::Traces,
            SignalRequest::Metrics(_) => Signal::Metrics,
            SignalRequest::Logs(_) => Signal::Logs,
        }
    }
}

/// A decoded and validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The request.
    pub request: SignalRequest,
    /// Encoding of the body, and of the answer.
    pub format: Format,
    /// Size of the payload after decompression.
    pub encoded_len: usize,
    /// Spans, data points or log records in the request.
    pub items: u64,
}

/// Why a body was refused; each maps to one row of the OTLP answers table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Content-Type is neither protobuf nor JSON (HTTP 415).
    #[error("unsupported media type {0:?}: use application/x-protobuf or application/json")]
    UnsupportedMediaType(String),
    /// Content-Encoding other than gzip or identity (HTTP 415, gRPC UNIMPLEMENTED).
    #[error("unsupported content encoding {0:?}: use gzip or identity")]
    UnsupportedEncoding(String),
    /// Payload larger than the limit after decompression (HTTP 413, gRPC RESOURCE_EXHAUSTED).
    #[error("message larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The payload cannot be decoded or fails validation (HTTP 400, gRPC INVALID_ARGUMENT).
    #[error("invalid {signal} payload: {reason}")]
    Invalid {
        /// Signal name.
        signal: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Decodes an OTLP/HTTP body. `max_bytes` bounds the payload after decompression.
pub fn decode_http(
    signal: Signal,
    content_type: Option<&str>,
    content_encoding: Option<&str>,
    body: &[u8],
    max_bytes: usize,
) -> Result<Decoded, DecodeError> {
    let content_type = content_type.unwrap_or("");
    let format = Format::from_content_type(content_type)
        .ok_or_else(|| DecodeError::UnsupportedMediaType(truncate(content_type)))?;
    let encoding = Encoding::parse(content_encoding).ok_or_else(|| {
        DecodeError::UnsupportedEncoding(truncate(content_encoding.unwrap_or("")))
    })?;
    let payload = decompress(signal, encoding, body, max_bytes)?;
    decode_payload(signal, format, &payload)
}

/// gRPC length-prefixed message header: compressed flag + big-endian u32 length.
pub const GRPC_FRAME_HEADER: usize = 5;

/// Splits a unary gRPC request body into (compressed flag, message). Exactly one message is
/// allowed: the declared length must cover the rest of the body. The message is always
/// `body[GRPC_FRAME_HEADER..]`.
pub fn split_grpc_frame(signal: Signal, body: &[u8]) -> Result<(bool, &[u8]), DecodeError> {
    let (Some(&flag), Some(len), Some(message)) = (
        body.first(),
        body.get(1..GRPC_FRAME_HEADER),
        body.get(GRPC_FRAME_HEADER..),
    ) else {
        return Err(invalid(signal, "truncated gRPC message header".to_owned()));
    };
    let len = <[u8; 4]>::try_from(len)
        .map(u32::from_be_bytes)
        .map_err(|_| invalid(signal, "truncated gRPC message header".to_owned()))?;
    if usize::try_from(len).ok() != Some(message.len()) {
        return Err(invalid(
            signal,
            "gRPC message length does not match the body (one message per unary call)".to_owned(),
        ));
    }
    match flag {
        0 => Ok((false, message)),
        1 => Ok((true, message)),
        _ => Err(invalid(signal, "invalid gRPC compressed flag".to_owned())),
    }
}

/// Undoes `encoding`, refusing output above `max_bytes` as soon as it is produced.
pub fn decompress(
    signal: Signal,
    encoding: Encoding,
    body: &[u8],
    max_bytes: usize,
) -> Result<std::borrow::Cow<'_, [u8]>, DecodeError> {
    decompress_within(signal, encoding, body, max_bytes, &mut |_| true)
}

/// [`decompress`], asking `grow` before each allocation of inflated output; when it says no,
/// inflating stops with [`DecodeError::TooLarge`] (the caller knows it refused and why).
pub(crate) fn decompress_within<'a>(
    signal: Signal,
    encoding: Encoding,
    body: &'a [u8],
    max_bytes: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<std::borrow::Cow<'a, [u8]>, DecodeError> {
    match encoding {
        Encoding::Identity => {
            if body.len() > max_bytes {
                return Err(DecodeError::TooLarge { limit: max_bytes });
            }
            Ok(std::borrow::Cow::Borrowed(body))
        }
        Encoding::Gzip => {
            inflate_capped(signal, body, max_bytes, grow).map(std::borrow::Cow::Owned)
        }
    }
}

fn inflate_capped(
    signal: Signal,
    body: &[u8],
    max_bytes: usize,
    grow: &mut dyn FnMut(usize) -> bool,
) -> Result<Vec<u8>, DecodeError> {
    const CHUNK: usize = 64 * 1024;
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    // Grow geometrically but never beyond the cap, so memory stays within max_bytes + a chunk.
    let mut out: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(invalid(signal, format!("gzip: {e}"))),
        };
        let chunk = buf.get(..n).unwrap_or_default();
        let needed = out.len().saturating_add(chunk.len());
        if needed > max_bytes {
            return Err(DecodeError::TooLarge { limit: max_bytes });
        }
        if needed > out.capacity() {
            let want = out
                .capacity()
                .saturating_mul(2)
                .clamp(CHUNK, max_bytes.max(1))
                .max(needed);
            if !grow(want.saturating_sub(out.capacity())) {
                return Err(DecodeError::TooLarge { limit: max_bytes });
            }
            out.reserve_exact(want.saturating_sub(out.len()));
        }
        out.extend_from_slice(chunk);
    }
    Ok(out)
}

/// Decodes an uncompressed payload of `signal` in `format` and validates it.
pub fn decode_payload(
    signal: Signal,
    format: Format,
    payload: &[u8],
) -> Result<Decoded, DecodeError> {
    let request = match (signal, format) {
        (Signal::Traces, Format::Protobuf) => SignalRequest::Traces(
            ExportTraceServiceRequest::decode(payload)
                .map_err(|e| invalid(signal, e.to_string()))?,
        ),
        (Signal::Metrics, Format::Protobuf) => SignalRequest::Metrics(
            ExportMetricsServiceRequest::decode(payload)
                .map_err(|e| invalid(signal, e.to_string()))?,
        ),
        (Signal::Logs, Format::Protobuf) => SignalRequest::Logs(
            ExportLogsServiceRequest::decode(payload)
                .map_err(|e| invalid(signal, e.to_string()))?,
        ),
        (_, Format::Json) if payload.iter().all(u8::is_ascii_whitespace) => empty_request(signal),
        (Signal::Traces, Format::Json) => {
            SignalRequest::Traces(json::from_slice(payload).map_err(|e| invalid(signal, e))?)
        }
        (Signal::Metrics, Format::Json) => {
            SignalRequest::Metrics(json::from_slice(payload).map_err(|e| invalid(signal, e))?)
        }
        (Signal::Logs, Format::Json) => {
            SignalRequest::Logs(json::from_slice(payload).map_err(|e| invalid(signal, e))?)
        }
    };
    let items = validate(&request).map_err(|e| invalid(signal, e))?;
    Ok(Decoded {
        request,
        format,
        encoded_len: payload.len(),
        items,
    })
}

fn empty_request(signal: Signal) -> SignalRequest {
    match signal {
        Signal::Traces => SignalRequest::Traces(ExportTraceServiceRequest::default()),
        Signal::Metrics => SignalRequest::Metrics(ExportMetricsServiceRequest::default()),
        Signal::Logs => SignalRequest::Logs(ExportLogsServiceRequest::default()),
    }
}

fn invalid(signal: Signal, reason: String) -> DecodeError {
    DecodeError::Invalid {
        signal: signal.name(),
        reason,
    }
}

fn truncate(value: &str) -> String {
    value.chars().take(64).collect()
}

fn check_id(what: &str, id: &[u8], len: usize, may_be_empty: bool) -> Result<(), String> {
    if id.len() == len || (may_be_empty && id.is_empty()) {
        Ok(())
    } else {
        Err(format!("{what} must be {len} bytes, got {}", id.len()))
    }
}

/// Checks the exemplar ids of each data point; returns the number of points.
fn check_points<'a>(points: impl Iterator<Item = &'a Vec<Exemplar>>) -> Result<usize, String> {
    let mut count = 0usize;
    for exemplars in points {
        for exemplar in exemplars {
            check_id("exemplar trace id", &exemplar.trace_id, 16, true)?;
            check_id("exemplar span id", &exemplar.span_id, 8, true)?;
        }
        count = count.saturating_add(1);
    }
    Ok(count)
}

/// Checks id lengths and counts items.
pub fn validate(request: &SignalRequest) -> Result<u64, String> {
    let mut items: u64 = 0;
    match request {
        SignalRequest::Traces(req) => {
            for span in req
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                check_id("trace id", &span.trace_id, 16, false)?;
                check_id("span id", &span.span_id, 8, false)?;
                check_id("parent span id", &span.parent_span_id, 8, true)?;
                for link in &span.links {
                    check_id("link trace id", &link.trace_id, 16, false)?;
                    check_id("link span id", &link.span_id, 8, false)?;
                }
                items = items.saturating_add(1);
            }
        }
        SignalRequest::Metrics(req) => {
            for metric in req
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
            {
                let points = match &metric.data {
                    None => 0,
                    Some(Data::Gauge(g)) => {
                        check_points(g.data_points.iter().map(|p| &p.exemplars))?
                    }
                    Some(Data::Sum(s)) => check_points(s.data_points.iter().map(|p| &p.exemplars))?,
                    Some(Data::Histogram(h)) => {
                        check_points(h.data_points.iter().map(|p| &p.exemplars))?
                    }
                    Some(Data::ExponentialHistogram(h)) => {
                        check_points(h.data_points.iter().map(|p| &p.exemplars))?
                    }
                    Some(Data::Summary(s)) => s.data_points.len(),
                };
                items = items.saturating_add(u64::try_from(points).unwrap_or(u64::MAX));
            }
        }
        SignalRequest::Logs(req) => {
            for record in req
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
            {
                check_id("log trace id", &record.trace_id, 16, true)?;
                check_id("log span id", &record.span_id, 8, true)?;
                items = items.saturating_add(1);
            }
        }
    }
    Ok(items)
}

/// The empty (fully accepted) or partial-success answer of `signal`, encoded in `format`.
pub fn encode_response(signal: Signal, format: Format, rejected: i64, message: &str) -> Vec<u8> {
    fn enc<T: Message + serde::Serialize>(format: Format, response: &T) -> Vec<u8> {
        match format {
            Format::Protobuf => response.encode_to_vec(),
            Format::Json => serde_json::to_vec(response).unwrap_or_else(|_| b"{}".to_vec()),
        }
    }
    let partial = rejected != 0 || !message.is_empty();
    if !partial && format == Format::Json {
        return b"{}".to_vec();
    }
    let error_message = message.to_owned();
    use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
    match signal {
        Signal::Traces => enc(
            format,
            &ExportTraceServiceResponse {
                partial_success: partial.then_some(trace::v1::ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message,
                }),
            },
        ),
        Signal::Metrics => enc(
            format,
            &ExportMetricsServiceResponse {
                partial_success: partial.then_some(metrics::v1::ExportMetricsPartialSuccess {
                    rejected_data_points: rejected,
                    error_message,
                }),
            },
        ),
        Signal::Logs => enc(
            format,
            &ExportLogsServiceResponse {
                partial_success: partial.then_some(logs::v1::ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message,
                }),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const PB: Option<&str> = Some("application/x-protobuf");
    const JSON: Option<&str> = Some("application/json");

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn traces(d: Decoded) -> ExportTraceServiceRequest {
        match d.request {
            SignalRequest::Traces(r) => r,
            other => panic!("not traces: {other:?}"),
        }
    }

    /// The example from the OTLP specification (examples/trace.json), lightly trimmed.
    const SPEC_TRACE_JSON: &str = r#"{
      "resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
        "scopeSpans": [{
          "scope": {"name": "my.library", "version": "1.0.0",
                    "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "some scope attribute"}}]},
          "spans": [{
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "EEE19B7EC3C1B174",
            "parentSpanId": "EEE19B7EC3C1B173",
            "name": "I'm a server span",
            "startTimeUnixNano": "1544712660000000000",
            "endTimeUnixNano": "1544712661000000000",
            "kind": 2,
            "attributes": [
              {"key": "my.span.attr", "value": {"stringValue": "some value"}},
              {"key": "count", "value": {"intValue": "42"}},
              {"key": "ratio", "value": {"doubleValue": 0.5}},
              {"key": "ok", "value": {"boolValue": true}},
              {"key": "list", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": 7}]}}}
            ],
            "status": {"code": 2, "message": "boom"}
          }]
        }]
      }]
    }"#;

    #[test]
    fn spec_json_example_decodes() {
        let d = decode_http(
            Signal::Traces,
            JSON,
            None,
            SPEC_TRACE_JSON.as_bytes(),
            1 << 20,
        )
        .unwrap();
        assert_eq!(d.items, 1);
        assert_eq!(d.format, Format::Json);
        let req = traces(d);
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.name, "I'm a server span");
        assert_eq!(span.trace_id.len(), 16);
        assert_eq!(span.start_time_unix_nano, 1_544_712_660_000_000_000);
        assert_eq!(span.kind, 2);
        assert_eq!(span.attributes.len(), 5);
        assert_eq!(span.status.as_ref().unwrap().code, 2);
    }

    #[test]
    fn snake_case_json_and_enum_names_decode() {
        let body = r#"{"resource_spans":[{"scope_spans":[{"spans":[{
            "trace_id":"5b8efff798038103d269b633813fc60c","span_id":"eee19b7ec3c1b174",
            "name":"s","kind":"SPAN_KIND_CLIENT","start_time_unix_nano":1,"end_time_unix_nano":2,
            "status":null}]}]}]}"#;
        let req =
            traces(decode_http(Signal::Traces, JSON, None, body.as_bytes(), 1 << 20).unwrap());
        let span = &req.resource_spans[0].scope_spans[0].spans[0];
        assert_eq!(span.kind, 3);
        assert_eq!(span.end_time_unix_nano, 2);
    }

    #[test]
    fn metrics_and_logs_json_decode() {
        let metrics = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[
            {"name":"requests","sum":{"aggregationTemporality":2,"isMonotonic":true,
              "dataPoints":[{"asInt":"5","timeUnixNano":"1"},{"asDouble":1.5}]}},
            {"name":"latency","histogram":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_DELTA",
              "dataPoints":[{"count":"3","sum":1.5,"bucketCounts":["1","2"],"explicitBounds":[1.0]}]}}]}]}]}"#;
        let d = decode_http(Signal::Metrics, JSON, None, metrics.as_bytes(), 1 << 20).unwrap();
        assert_eq!(d.items, 3);
        let logs = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[
            {"timeUnixNano":"1","severityNumber":9,"severityText":"INFO","body":{"stringValue":"hi"},
             "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174"},
            {"severityNumber":"SEVERITY_NUMBER_ERROR","body":{"kvlistValue":{"values":[{"key":"a","value":{"bytesValue":"aGk="}}]}}}]}]}]}"#;
        let d = decode_http(Signal::Logs, JSON, None, logs.as_bytes(), 1 << 20).unwrap();
        assert_eq!(d.items, 2);
        match d.request {
            SignalRequest::Logs(r) => assert_eq!(
                r.resource_logs[0].scope_logs[0].log_records[1].severity_number,
                17
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn protobuf_round_trip_and_gzip() {
        let req = traces(
            decode_http(
                Signal::Traces,
                JSON,
                None,
                SPEC_TRACE_JSON.as_bytes(),
                1 << 20,
            )
            .unwrap(),
        );
        let pb = req.encode_to_vec();
        let d = decode_http(Signal::Traces, PB, None, &pb, 1 << 20).unwrap();
        assert_eq!(d.encoded_len, pb.len());
        assert_eq!(traces(d), req);
        let d = decode_http(Signal::Traces, PB, Some("gzip"), &gzip(&pb), 1 << 20).unwrap();
        assert_eq!(traces(d), req);
    }

    #[test]
    fn empty_bodies_are_empty_requests() {
        for ct in [PB, JSON] {
            let d = decode_http(Signal::Logs, ct, None, b"", 10).unwrap();
            assert_eq!(d.items, 0);
        }
        let d = decode_http(Signal::Metrics, JSON, None, b"{}", 10).unwrap();
        assert_eq!(
            d.request,
            SignalRequest::Metrics(ExportMetricsServiceRequest::default())
        );
    }

    #[test]
    fn refusals_map_to_the_right_errors() {
        let garbage = b"\xff\xff\xff\xff\x0f garbage";
        assert!(matches!(
            decode_http(Signal::Traces, PB, None, garbage, 1 << 20),
            Err(DecodeError::Invalid { .. })
        ));
        let pb = traces(
            decode_http(
                Signal::Traces,
                JSON,
                None,
                SPEC_TRACE_JSON.as_bytes(),
                1 << 20,
            )
            .unwrap(),
        )
        .encode_to_vec();
        let truncated = pb.get(..pb.len() - 3).unwrap();
        assert!(matches!(
            decode_http(Signal::Traces, PB, None, truncated, 1 << 20),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            decode_http(Signal::Traces, Some("text/plain"), None, &pb, 1 << 20),
            Err(DecodeError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            decode_http(Signal::Traces, None, None, &pb, 1 << 20),
            Err(DecodeError::UnsupportedMediaType(_))
        ));
        assert!(matches!(
            decode_http(Signal::Traces, PB, Some("br"), &pb, 1 << 20),
            Err(DecodeError::UnsupportedEncoding(_))
        ));
        assert!(matches!(
            decode_http(Signal::Traces, PB, None, &pb, 10),
            Err(DecodeError::TooLarge { limit: 10 })
        ));
        assert!(matches!(
            decode_http(Signal::Traces, PB, Some("gzip"), b"not gzip", 1 << 20),
            Err(DecodeError::Invalid { .. })
        ));
        let bad_id = SPEC_TRACE_JSON.replace("EEE19B7EC3C1B174", "EEE19B");
        assert!(matches!(
            decode_http(Signal::Traces, JSON, None, bad_id.as_bytes(), 1 << 20),
            Err(DecodeError::Invalid { .. })
        ));
        let bad_hex = SPEC_TRACE_JSON.replace("EEE19B7EC3C1B174", "EEE19B7EC3C1B17Z");
        assert!(matches!(
            decode_http(Signal::Traces, JSON, None, bad_hex.as_bytes(), 1 << 20),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn gzip_bomb_stops_at_the_cap() {
        let bomb = gzip(&vec![0u8; 10 * 1024 * 1024]);
        assert!(bomb.len() < 64 * 1024);
        let start = std::time::Instant::now();
        let err = decode_http(Signal::Traces, PB, Some("gzip"), &bomb, 1024 * 1024).unwrap_err();
        assert_eq!(err, DecodeError::TooLarge { limit: 1024 * 1024 });
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn partial_success_responses_encode() {
        let pb = encode_response(Signal::Traces, Format::Protobuf, 3, "bad spans");
        let r = ExportTraceServiceResponse::decode(pb.as_slice()).unwrap();
        assert_eq!(r.partial_success.unwrap().rejected_spans, 3);
        assert!(encode_response(Signal::Logs, Format::Protobuf, 0, "").is_empty());
        assert_eq!(encode_response(Signal::Metrics, Format::Json, 0, ""), b"{}");
        let json: serde_json::Value =
            serde_json::from_slice(&encode_response(Signal::Metrics, Format::Json, 2, "x"))
                .unwrap();
        assert_eq!(json["partialSuccess"]["errorMessage"], "x");
    }
}
