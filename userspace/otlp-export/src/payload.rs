//! What travels through the queues: one signal's resource-level messages plus their item count
//! and encoded size, and the batch that merges several of them into one export request.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, metric};
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
        .map(|m| {
            let n = match &m.data {
                Some(metric::Data::Gauge(g)) => g.data_points.len(),
                Some(metric::Data::Sum(s)) => s.data_points.len(),
                Some(metric::Data::Histogram(h)) => h.data_points.len(),
                Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(metric::Data::Summary(s)) => s.data_points.len(),
                None => 0,
            };
            n.max(1) as u64
        })
        .sum()
}

/// Log records in `logs`.
pub fn count_log_records(logs: &[ResourceLogs]) -> u64 {
    logs.iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len() as u64)
        .sum()
}

impl Payload {
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

impl Request {
    /// Protobuf encoding.
    pub fn encode_protobuf(&self) -> Vec<u8> {
        match self {
            Request::Traces(r) => r.encode_to_vec(),
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
    fn append_refuses_other_signal() {
        let mut p = Payload::Traces(spans(1));
        assert!(p.append(Payload::Logs(Vec::new())).is_err());
    }
}
