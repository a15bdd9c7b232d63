//! What travels through the queues: one signal's resource-level messages plus their item count
//! and encoded size, and the batch that merges several of them into one export request.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, metric};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Metric data points.
    Metrics,
    /// Log records.
    Logs,
}

impl Signal {
    /// All signals, in lane order.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// `traces`, `metrics`, `logs` (the OTLP/HTTP path segment and the stats label).
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Signal::Traces => 0,
            Signal::Metrics => 1,
            Signal::Logs => 2,
        }
    }
}

/// Resource-level messages of one signal.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Payload {
    Traces(Vec<ResourceSpans>),
    Metrics(Vec<ResourceMetrics>),
    Logs(Vec<ResourceLogs>),
}

/// Bytes of the length-delimited field that wraps each resource message in the request.
fn field_len(len: usize) -> usize {
    // 1 tag byte + varint length + body.
    prost::length_delimiter_len(len)
        .saturating_add(1)
        .saturating_add(len)
}

/// Spans in `spans`.
pub fn count_spans(spans: &[ResourceSpans]) -> u64 {
    spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .map(|s| s.spans.len() as u64)
        .sum()
}

/// Data points in `metrics` (a metric without points counts as one item).
pub fn count_data_points(metrics: &[ResourceMetrics]) -> u64 {
    metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .map(count_data_points_of)
        .sum()
}

/// Data points of one metric (at least one, so that an empty metric still counts).
fn count_data_points_of(m: &Metric) -> u64 {
    let n = match &m.data {
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(metric::Data::Summary(s)) => s.data_points.len(),
        None => 0,
    };
    n.max(1) as u64
}

/// Log records in `logs`.
pub fn count_log_records(logs: &[ResourceLogs]) -> u64 {
    logs.iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum()
}

/// Moves up to `max` leaf items (a leaf weighs `weight(leaf)`, at least one leaf is always taken)
/// from the front of a resource -> scope -> leaf tree into a new tree; resource and scope
/// headers are copied into the part taken.
macro_rules! take_front {
    ($v:expr, $max:expr, $scopes:ident, $leaves:ident, $weight:expr) => {{
        let weight = $weight;
        let max: u64 = $max;
        let v = $v;
        let mut out = Vec::new();
        let mut taken: u64 = 0;
        while taken < max {
            let Some(first) = v.first_mut() else { break };
            let total: u64 = first
                .$scopes
                .iter()
                .flat_map(|s| s.$leaves.iter())
                .map(&weight)
                .sum();
            if taken.saturating_add(total) <= max {
                out.extend(v.drain(..1));
                taken = taken.saturating_add(total);
                continue;
            }
            // Clone the resource header only, not its scopes.
            let scopes = std::mem::take(&mut first.$scopes);
            let mut part = first.clone();
            first.$scopes = scopes;
            while taken < max {
                let Some(scope) = first.$scopes.first_mut() else {
                    break;
                };
                let n: u64 = scope.$leaves.iter().map(&weight).sum();
                if taken.saturating_add(n) <= max {
                    part.$scopes.extend(first.$scopes.drain(..1));
                    taken = taken.saturating_add(n);
                    continue;
                }
                let mut k = 0usize;
                for leaf in &scope.$leaves {
                    let w = weight(leaf);
                    if taken.saturating_add(w) > max && !(taken == 0 && k == 0) {
                        break;
                    }
                    taken = taken.saturating_add(w);
                    k = k.saturating_add(1);
                }
                let leaves = std::mem::take(&mut scope.$leaves);
                let mut head = scope.clone();
                scope.$leaves = leaves;
                head.$leaves = scope.$leaves.drain(..k).collect();
                part.$scopes.push(head);
                break;
            }
            out.push(part);
            break;
        }
        out
    }};
}

impl Payload {
    /// Splits off the first `max_items` items (at least one leaf), leaving the rest in `self`.
    pub(crate) fn split_front(&mut self, max_items: u64) -> Payload {
        match self {
            Payload::Traces(v) => {
                Payload::Traces(take_front!(v, max_items, scope_spans, spans, |_: &_| 1u64))
            }
            Payload::Metrics(v) => Payload::Metrics(take_front!(
                v,
                max_items,
                scope_metrics,
                metrics,
                count_data_points_of
            )),
            Payload::Logs(v) => Payload::Logs(take_front!(
                v,
                max_items,
                scope_logs,
                log_records,
                |_: &_| 1u64
            )),
        }
    }

    pub(crate) fn signal(&self) -> Signal {
        match self {
            Payload::Traces(_) => Signal::Traces,
            Payload::Metrics(_) => Signal::Metrics,
            Payload::Logs(_) => Signal::Logs,
        }
    }

    /// Items (spans, data points, log records).
    pub(crate) fn items(&self) -> u64 {
        match self {
            Payload::Traces(v) => count_spans(v),
            Payload::Metrics(v) => count_data_points(v),
            Payload::Logs(v) => count_log_records(v),
        }
    }

    /// Size these messages add to an export request (prost `encoded_len`).
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Payload::Traces(v) => v.iter().map(|m| field_len(m.encoded_len())).sum(),
            Payload::Metrics(v) => v.iter().map(|m| field_len(m.encoded_len())).sum(),
            Payload::Logs(v) => v.iter().map(|m| field_len(m.encoded_len())).sum(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Payload::Traces(v) => v.is_empty(),
            Payload::Metrics(v) => v.is_empty(),
            Payload::Logs(v) => v.is_empty(),
        }
    }

    /// Appends `other` (same signal; a different one is returned back as an error).
    pub(crate) fn append(&mut self, other: Payload) -> Result<(), Payload> {
        match (self, other) {
            (Payload::Traces(a), Payload::Traces(mut b)) => a.append(&mut b),
            (Payload::Metrics(a), Payload::Metrics(mut b)) => a.append(&mut b),
            (Payload::Logs(a), Payload::Logs(mut b)) => a.append(&mut b),
            (_, other) => return Err(other),
        }
        Ok(())
    }
}

/// A full export request of one signal.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `ExportTraceServiceRequest`.
    Traces(ExportTraceServiceRequest),
    /// `ExportMetricsServiceRequest`.
    Metrics(ExportMetricsServiceRequest),
    /// `ExportLogsServiceRequest`.
    Logs(ExportLogsServiceRequest),
}

impl From<Payload> for Request {
    fn from(p: Payload) -> Self {
        match p {
            Payload::Traces(resource_spans) => {
                Request::Traces(ExportTraceServiceRequest { resource_spans })
            }
            Payload::Metrics(resource_metrics) => {
                Request::Metrics(ExportMetricsServiceRequest { resource_metrics })
            }
            Payload::Logs(resource_logs) => {
                Request::Logs(ExportLogsServiceRequest { resource_logs })
            }
        }
    }
}

impl From<Request> for Payload {
    fn from(r: Request) -> Self {
        match r {
            Request::Traces(r) => Payload::Traces(r.resource_spans),
            Request::Metrics(r) => Payload::Metrics(r.resource_metrics),
            Request::Logs(r) => Payload::Logs(r.resource_logs),
        }
    }
}

impl Request {
    /// Protobuf encoding.
    pub fn encode_protobuf(&self) -> Vec<u8> {
        match self {
            Request::Traces(r) => encode_traces(&r.resource_spans),
            Request::Metrics(r) => r.encode_to_vec(),
            Request::Logs(r) => r.encode_to_vec(),
        }
    }

    /// The signal of this request.
    pub fn signal(&self) -> Signal {
        match self {
            Request::Traces(_) => Signal::Traces,
            Request::Metrics(_) => Signal::Metrics,
            Request::Logs(_) => Signal::Logs,
        }
    }
}

/// An `ExportTraceServiceRequest` holding `resource_spans`, encoded: the same bytes as prost's
/// `encode_to_vec`, with each span's length computed once.
///
/// prost writes a nested message as its length then its fields, and computes that length from
/// scratch at every level: a span attribute's value was measured five times per export (request,
/// resource spans, scope spans, span, key-value), which made encoding the exporter's largest
/// cost at high span rates. Here the span lengths are measured once into a table, the levels
/// above are summed from it, and prost encodes from the span level down.
pub fn encode_traces(resource_spans: &[ResourceSpans]) -> Vec<u8> {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

    fn field(tag: u32, len: usize) -> usize {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
    fn string_field(tag: u32, s: &str) -> usize {
        if s.is_empty() { 0 } else { field(tag, s.len()) }
    }
    fn head(tag: u32, len: usize, buf: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
    }

    // Pass 1: every span's length, then each scope's and resource's, in encoding order.
    let mut span_lens: Vec<usize> = Vec::new();
    let mut scope_lens: Vec<usize> = Vec::new();
    let mut resource_lens: Vec<usize> = Vec::with_capacity(resource_spans.len());
    for rs in resource_spans {
        let mut rs_len = rs
            .resource
            .as_ref()
            .map_or(0, |r| field(1, r.encoded_len()));
        for ss in &rs.scope_spans {
            let mut ss_len = ss.scope.as_ref().map_or(0, |s| field(1, s.encoded_len()));
            for span in &ss.spans {
                let len = span.encoded_len();
                span_lens.push(len);
                ss_len += field(2, len);
            }
            ss_len += string_field(3, &ss.schema_url);
            scope_lens.push(ss_len);
            rs_len += field(2, ss_len);
        }
        rs_len += string_field(3, &rs.schema_url);
        resource_lens.push(rs_len);
    }
    let total: usize = resource_lens.iter().map(|&l| field(1, l)).sum();

    // Pass 2: write, taking the lengths in the same order.
    let mut buf = Vec::with_capacity(total);
    let (mut spans, mut scopes) = (span_lens.iter(), scope_lens.iter());
    for (rs, &rs_len) in resource_spans.iter().zip(&resource_lens) {
        head(1, rs_len, &mut buf);
        if let Some(r) = &rs.resource {
            prost::encoding::message::encode(1, r, &mut buf);
        }
        for ss in &rs.scope_spans {
            head(2, scopes.next().copied().unwrap_or_default(), &mut buf);
            if let Some(scope) = &ss.scope {
                prost::encoding::message::encode(1, scope, &mut buf);
            }
            for span in &ss.spans {
                head(2, spans.next().copied().unwrap_or_default(), &mut buf);
                span.encode_raw(&mut buf);
            }
            if !ss.schema_url.is_empty() {
                prost::encoding::string::encode(3, &ss.schema_url, &mut buf);
            }
        }
        if !rs.schema_url.is_empty() {
            prost::encoding::string::encode(3, &rs.schema_url, &mut buf);
        }
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::{ScopeSpans, Span};

    fn spans(n: usize) -> Vec<ResourceSpans> {
        vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..n)
                    .map(|i| Span {
                        name: format!("span {i}"),
                        trace_id: vec![1; 16],
                        span_id: vec![2; 8],
                        ..Span::default()
                    })
                    .collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }]
    }

    /// Shapes that exercise every branch of `encode_traces`: no resource, no scope, empty
    /// levels, schema URLs, and values whose lengths cross varint size boundaries.
    fn varied_requests() -> Vec<Vec<ResourceSpans>> {
        use opentelemetry_proto::tonic::common::v1::{
            AnyValue, InstrumentationScope, KeyValue, any_value::Value,
        };
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use opentelemetry_proto::tonic::trace::v1::{Status, span::Event};
        let attr = |k: &str, n: usize| KeyValue {
            key: k.to_owned(),
            value: Some(AnyValue {
                value: Some(Value::StringValue("x".repeat(n))),
            }),
            ..Default::default()
        };
        let span = |n: usize| Span {
            name: "GET /{id}".into(),
            trace_id: vec![7; 16],
            span_id: vec![8; 8],
            parent_span_id: vec![9; 8],
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_123_456,
            flags: 0x301,
            attributes: vec![attr("url.path", n), attr("http.route", 3)],
            events: vec![Event {
                name: "e".into(),
                ..Default::default()
            }],
            status: Some(Status {
                message: "boom".into(),
                code: 2,
            }),
            ..Default::default()
        };
        let resource = Some(Resource {
            attributes: vec![attr("service.name", 5)],
            ..Default::default()
        });
        let scope = Some(InstrumentationScope {
            name: "sonde".into(),
            version: "1".into(),
            ..Default::default()
        });
        vec![
            vec![],
            vec![ResourceSpans::default()],
            vec![ResourceSpans {
                scope_spans: vec![ScopeSpans::default()],
                schema_url: "r".into(),
                ..Default::default()
            }],
            vec![
                ResourceSpans {
                    resource: resource.clone(),
                    scope_spans: vec![
                        ScopeSpans {
                            scope: scope.clone(),
                            spans: [0, 1, 100, 127, 128, 16_383, 16_384, 70_000]
                                .into_iter()
                                .map(span)
                                .collect(),
                            schema_url: "https://opentelemetry.io/schemas/1.37.0".into(),
                        },
                        ScopeSpans {
                            scope: None,
                            spans: vec![Span::default(), span(3)],
                            schema_url: String::new(),
                        },
                    ],
                    schema_url: String::new(),
                },
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![ScopeSpans {
                        scope,
                        spans: vec![span(200)],
                        schema_url: String::new(),
                    }],
                    schema_url: "x".repeat(130),
                },
            ],
        ]
    }

    #[test]
    fn encode_traces_writes_the_bytes_prost_writes() {
        for resource_spans in varied_requests() {
            let expected = ExportTraceServiceRequest {
                resource_spans: resource_spans.clone(),
            }
            .encode_to_vec();
            assert_eq!(encode_traces(&resource_spans), expected);
        }
    }

    #[test]
    fn encoded_len_matches_request_encoding() {
        let mut p = Payload::Traces(spans(3));
        let q = Payload::Traces(spans(200));
        let expected = p.encoded_len() + q.encoded_len();
        assert!(p.append(q).is_ok());
        assert_eq!(p.encoded_len(), expected);
        assert_eq!(p.items(), 203);
        let req = Request::from(p);
        assert_eq!(req.encode_protobuf().len(), expected);
    }

    #[test]
    fn split_front_keeps_order_headers_and_counts() {
        let mut v = spans(3);
        v.extend(spans(5));
        v[0].schema_url = "r0".into();
        v[1].scope_spans[0].schema_url = "s1".into();
        let total: Vec<String> = v
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.name.clone())
            .collect();
        let mut p = Payload::Traces(v);
        let mut parts = Vec::new();
        while !p.is_empty() && p.items() > 0 {
            let head = p.split_front(2);
            assert!(head.items() <= 2 && head.items() >= 1);
            parts.push(head);
        }
        assert_eq!(parts.len(), 4);
        let mut names = Vec::new();
        for part in &parts {
            let Payload::Traces(rs) = part else {
                panic!("traces")
            };
            for r in rs {
                for s in &r.scope_spans {
                    names.extend(s.spans.iter().map(|s| s.name.clone()));
                }
            }
        }
        assert_eq!(names, total);
        // The second part straddles both resources: it keeps each resource's header.
        let Payload::Traces(second) = &parts[1] else {
            panic!("traces")
        };
        assert_eq!(second.len(), 2);
        assert_eq!(second[0].schema_url, "r0");
        assert_eq!(second[1].scope_spans[0].schema_url, "s1");
    }

    #[test]
    fn split_front_takes_one_oversized_leaf() {
        use opentelemetry_proto::tonic::metrics::v1::{Gauge, NumberDataPoint, ScopeMetrics};
        let metric = |points: usize| Metric {
            name: format!("m{points}"),
            data: Some(metric::Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint::default(); points],
            })),
            ..Metric::default()
        };
        let mut p = Payload::Metrics(vec![ResourceMetrics {
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![metric(5), metric(1), metric(1)],
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }]);
        assert_eq!(p.split_front(2).items(), 5);
        assert_eq!(p.split_front(2).items(), 2);
        assert_eq!(p.items(), 0);
    }

    #[test]
    fn append_refuses_other_signal() {
        let mut p = Payload::Traces(spans(1));
        assert!(p.append(Payload::Logs(Vec::new())).is_err());
    }
}
