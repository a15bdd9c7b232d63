//! What travels through the queues: one signal's resource-level messages plus their item count
//! and encoded size, and the batch that merges several of them into one export request.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::ResourceLogs;
use opentelemetry_proto::tonic::metrics::v1::{Metric, ResourceMetrics, metric};
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use prost::Message;
use sonde_span::{OwnBatch, sonde_scope};

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
    /// Spans already encoded by the sender's thread (see [`EncodedTraces`]).
    EncodedTraces(EncodedTraces),
    Metrics(Vec<ResourceMetrics>),
    Logs(Vec<ResourceLogs>),
}

/// `resource_spans` fields encoded as in an `ExportTraceServiceRequest`, and their span count.
///
/// When every trace output sends protobuf, the daemon's spans are encoded on the thread that
/// built them and only these bytes cross to the exporter: the span structs are then freed
/// where they were allocated (freeing them on the exporter's thread, and measuring them once
/// more for the queue's byte budget, cost more than encoding). A request's only field is
/// repeated, so batches concatenate; splitting one (rare: a batch over the byte bound) and
/// the text and JSON outputs decode it again.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct EncodedTraces {
    pub(crate) bytes: Vec<u8>,
    pub(crate) items: u64,
}

impl EncodedTraces {
    /// All of `spans` as one request.
    pub(crate) fn encode(spans: &[ResourceSpans]) -> Self {
        EncodedTraces {
            bytes: encode_traces(spans),
            items: count_spans(spans),
        }
    }

    /// The resource messages again. Undecodable bytes (this crate wrote them, so never in
    /// practice) give none, logged, rather than a panic.
    pub(crate) fn decode(&self) -> Vec<ResourceSpans> {
        match ExportTraceServiceRequest::decode(self.bytes.as_slice()) {
            Ok(r) => r.resource_spans,
            Err(e) => {
                tracing::error!(items = self.items, error = %e, "cannot decode encoded spans; dropped");
                Vec::new()
            }
        }
    }

    fn extend(&mut self, other: &EncodedTraces) {
        self.bytes.extend_from_slice(&other.bytes);
        self.items = self.items.saturating_add(other.items);
    }
}

/// Bytes of a length-delimited field `tag` holding `len` bytes: tag, length, body.
fn delimited(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag)
        .saturating_add(prost::encoding::encoded_len_varint(len as u64))
        .saturating_add(len)
}

/// A bytes or string field as proto3 writes it: nothing when empty.
fn bytes_field_len(tag: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        delimited(tag, b.len())
    }
}

/// A length-delimited field's tag and length. Tags below 16 and lengths below 128 (nearly
/// every field of a span) take one byte each, written together.
#[inline]
fn write_head(tag: u32, len: usize, buf: &mut Vec<u8>) {
    let key = (tag << 3) | prost::encoding::WireType::LengthDelimited as u32;
    if key < 0x80 && len < 0x80 {
        buf.extend_from_slice(&[key as u8, len as u8]);
        return;
    }
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(len as u64, buf);
}

/// Bytes of the field that wraps each resource message in the request.
fn field_len(len: usize) -> usize {
    delimited(1, len)
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
        if let Payload::EncodedTraces(e) = self {
            *self = Payload::Traces(e.decode());
        }
        match self {
            Payload::Traces(v) => {
                Payload::Traces(take_front!(v, max_items, scope_spans, spans, |_: &_| 1u64))
            }
            Payload::EncodedTraces(_) => Payload::Traces(Vec::new()), // decoded just above
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
            Payload::Traces(_) | Payload::EncodedTraces(_) => Signal::Traces,
            Payload::Metrics(_) => Signal::Metrics,
            Payload::Logs(_) => Signal::Logs,
        }
    }

    /// Items (spans, data points, log records).
    pub(crate) fn items(&self) -> u64 {
        match self {
            Payload::Traces(v) => count_spans(v),
            Payload::EncodedTraces(e) => e.items,
            Payload::Metrics(v) => count_data_points(v),
            Payload::Logs(v) => count_log_records(v),
        }
    }

    /// Size these messages add to an export request (prost `encoded_len`).
    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            Payload::Traces(v) => v.iter().map(|m| field_len(m.encoded_len())).sum(),
            Payload::EncodedTraces(e) => e.bytes.len(),
            Payload::Metrics(v) => v.iter().map(|m| field_len(m.encoded_len())).sum(),
            Payload::Logs(v) => v.iter().map(|m| field_len(m.encoded_len())).sum(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Payload::Traces(v) => v.is_empty(),
            Payload::EncodedTraces(e) => e.bytes.is_empty(),
            Payload::Metrics(v) => v.is_empty(),
            Payload::Logs(v) => v.is_empty(),
        }
    }

    /// Appends `other` (same signal; a different one is returned back as an error).
    /// Encoded and struct spans mix in one lane (the daemon's own are encoded early, SDK
    /// requests are not): the result is encoded when either side is.
    pub(crate) fn append(&mut self, other: Payload) -> Result<(), Payload> {
        if let (Payload::Traces(a), Payload::EncodedTraces(_)) = (&*self, &other) {
            *self = Payload::EncodedTraces(EncodedTraces::encode(a));
        }
        match (self, other) {
            (Payload::Traces(a), Payload::Traces(mut b)) => a.append(&mut b),
            (Payload::EncodedTraces(a), Payload::EncodedTraces(b)) => a.extend(&b),
            (Payload::EncodedTraces(a), Payload::Traces(b)) => a.extend(&EncodedTraces::encode(&b)),
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
            Payload::EncodedTraces(e) => Request::Traces(ExportTraceServiceRequest {
                resource_spans: e.decode(),
            }),
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

impl Payload {
    /// The protobuf export request these messages make (encoded spans as they are).
    pub(crate) fn into_protobuf(self) -> Vec<u8> {
        match self {
            Payload::EncodedTraces(e) => e.bytes,
            other => Request::from(other).encode_protobuf(),
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
    encode_traces_in_batches(resource_spans, u64::MAX, usize::MAX)
        .pop()
        .map(|e| e.bytes)
        .unwrap_or_default()
}

/// sonde's own span batches encoded as one `ExportTraceServiceRequest`, the same bytes as
/// prost's for the batches converted to OTLP.
pub fn encode_own_traces(batches: &[OwnBatch]) -> Vec<u8> {
    encode_traces_in_batches(&OwnTree::new(batches), u64::MAX, usize::MAX)
        .pop()
        .map(|e| e.bytes)
        .unwrap_or_default()
}

/// A run of one scope's spans in a batch: (scope index, span indices).
type ScopePart = (usize, std::ops::Range<usize>);

/// Resources, their scopes and the scopes' spans, as the batch encoder walks them: OTLP
/// `ResourceSpans` (SDK spans, spans released by the merge) or sonde's own span batches.
pub(crate) trait SpanTree {
    fn resources(&self) -> usize;
    fn scopes(&self, r: usize) -> usize;
    fn spans(&self, r: usize, s: usize) -> usize;
    /// Encoded length of resource `r`'s own fields (resource and schema URL).
    fn resource_own_len(&self, r: usize) -> usize;
    /// Encoded length of scope `s`'s own fields (scope and schema URL).
    fn scope_own_len(&self, r: usize, s: usize) -> usize;
    fn span_len(&self, r: usize, s: usize, i: usize) -> usize;
    /// Writes the resource field (before the scopes).
    fn write_resource(&self, r: usize, buf: &mut Vec<u8>);
    /// Writes the resource's schema URL (after the scopes).
    fn write_resource_tail(&self, r: usize, buf: &mut Vec<u8>);
    /// Writes the scope field (before the spans).
    fn write_scope(&self, r: usize, s: usize, buf: &mut Vec<u8>);
    /// Writes the scope's schema URL (after the spans).
    fn write_scope_tail(&self, r: usize, s: usize, buf: &mut Vec<u8>);
    fn write_span(&self, r: usize, s: usize, i: usize, buf: &mut Vec<u8>);
}

impl SpanTree for [ResourceSpans] {
    fn resources(&self) -> usize {
        self.len()
    }
    fn scopes(&self, r: usize) -> usize {
        self[r].scope_spans.len()
    }
    fn spans(&self, r: usize, s: usize) -> usize {
        self[r].scope_spans[s].spans.len()
    }
    fn resource_own_len(&self, r: usize) -> usize {
        let rs = &self[r];
        rs.resource
            .as_ref()
            .map_or(0, |res| delimited(1, res.encoded_len()))
            + bytes_field_len(3, rs.schema_url.as_bytes())
    }
    fn scope_own_len(&self, r: usize, s: usize) -> usize {
        let ss = &self[r].scope_spans[s];
        ss.scope
            .as_ref()
            .map_or(0, |sc| delimited(1, sc.encoded_len()))
            + bytes_field_len(3, ss.schema_url.as_bytes())
    }
    fn span_len(&self, r: usize, s: usize, i: usize) -> usize {
        span_codec::span_len(&self[r].scope_spans[s].spans[i])
    }
    fn write_resource(&self, r: usize, buf: &mut Vec<u8>) {
        if let Some(res) = &self[r].resource {
            prost::encoding::message::encode(1, res, buf);
        }
    }
    fn write_resource_tail(&self, r: usize, buf: &mut Vec<u8>) {
        if !self[r].schema_url.is_empty() {
            prost::encoding::string::encode(3, &self[r].schema_url, buf);
        }
    }
    fn write_scope(&self, r: usize, s: usize, buf: &mut Vec<u8>) {
        if let Some(scope) = &self[r].scope_spans[s].scope {
            prost::encoding::message::encode(1, scope, buf);
        }
    }
    fn write_scope_tail(&self, r: usize, s: usize, buf: &mut Vec<u8>) {
        let ss = &self[r].scope_spans[s];
        if !ss.schema_url.is_empty() {
            prost::encoding::string::encode(3, &ss.schema_url, buf);
        }
    }
    fn write_span(&self, r: usize, s: usize, i: usize, buf: &mut Vec<u8>) {
        span_codec::encode_span(&self[r].scope_spans[s].spans[i], buf);
    }
}

/// sonde's own span batches, each one resource with one scope (sonde's).
pub(crate) struct OwnTree<'a> {
    batches: &'a [OwnBatch],
    scope: InstrumentationScope,
    scope_len: usize,
}

impl<'a> OwnTree<'a> {
    pub(crate) fn new(batches: &'a [OwnBatch]) -> Self {
        let scope = sonde_scope();
        let scope_len = delimited(1, scope.encoded_len());
        OwnTree {
            batches,
            scope,
            scope_len,
        }
    }
}

impl SpanTree for OwnTree<'_> {
    fn resources(&self) -> usize {
        self.batches.len()
    }
    fn scopes(&self, _: usize) -> usize {
        1
    }
    fn spans(&self, r: usize, _: usize) -> usize {
        self.batches[r].spans.len()
    }
    fn resource_own_len(&self, r: usize) -> usize {
        delimited(1, self.batches[r].resource.encoded_len())
    }
    fn scope_own_len(&self, _: usize, _: usize) -> usize {
        self.scope_len
    }
    fn span_len(&self, r: usize, _: usize, i: usize) -> usize {
        span_codec::own_span_len(&self.batches[r].spans[i])
    }
    fn write_resource(&self, r: usize, buf: &mut Vec<u8>) {
        prost::encoding::message::encode(1, &self.batches[r].resource, buf);
    }
    fn write_resource_tail(&self, _: usize, _: &mut Vec<u8>) {}
    fn write_scope(&self, _: usize, _: usize, buf: &mut Vec<u8>) {
        prost::encoding::message::encode(1, &self.scope, buf);
    }
    fn write_scope_tail(&self, _: usize, _: usize, _: &mut Vec<u8>) {}
    fn write_span(&self, r: usize, _: usize, i: usize, buf: &mut Vec<u8>) {
        span_codec::encode_own_span(&self.batches[r].spans[i], buf);
    }
}

/// `tree` encoded as export requests of at most `max_items` spans and about `max_bytes`
/// bytes each (a span larger than that goes alone), in order. A resource or scope cut
/// between two batches is repeated in both, as [`Payload::split_front`] does. Each span is
/// measured once, for both the cutting and the writing.
pub(crate) fn encode_traces_in_batches<T: SpanTree + ?Sized>(
    tree: &T,
    max_items: u64,
    max_bytes: usize,
) -> Vec<EncodedTraces> {
    let field = delimited;
    // What a resource's and a scope's own fields (without spans) take; the spans' lengths.
    let resources = tree.resources();
    let mut resource_own = Vec::with_capacity(resources);
    let mut scope_own: Vec<Vec<usize>> = Vec::with_capacity(resources);
    let mut span_lens: Vec<Vec<Vec<usize>>> = Vec::with_capacity(resources);
    for r in 0..resources {
        resource_own.push(tree.resource_own_len(r));
        let scopes = tree.scopes(r);
        scope_own.push((0..scopes).map(|s| tree.scope_own_len(r, s)).collect());
        span_lens.push(
            (0..scopes)
                .map(|s| {
                    (0..tree.spans(r, s))
                        .map(|i| tree.span_len(r, s, i))
                        .collect()
                })
                .collect(),
        );
    }
    // Upper bound of a length-delimited field's tag and length bytes.
    const WRAP: usize = 11;

    // Plan the batches: per batch, per resource part, its scope parts.
    let mut plans: Vec<Vec<(usize, Vec<ScopePart>)>> = Vec::new();
    let mut plan: Vec<(usize, Vec<ScopePart>)> = Vec::new();
    let (mut items, mut bytes) = (0u64, 0usize);
    for r in 0..resources {
        plan.push((r, Vec::new()));
        bytes += resource_own[r] + WRAP;
        for (s, lens) in span_lens[r].iter().enumerate() {
            let own = scope_own[r][s] + WRAP;
            bytes += own;
            let mut first = 0;
            for (i, &span_len) in lens.iter().enumerate() {
                let len = field(2, span_len);
                let full = items >= max_items || bytes.saturating_add(len) > max_bytes;
                if full && items > 0 {
                    match plan.last_mut() {
                        Some((_, scopes)) if first < i => scopes.push((s, first..i)),
                        // This resource has nothing in the batch being closed.
                        Some((_, scopes)) if scopes.is_empty() => {
                            plan.pop();
                        }
                        _ => {}
                    }
                    plans.push(std::mem::replace(&mut plan, vec![(r, Vec::new())]));
                    first = i;
                    items = 0;
                    bytes = resource_own[r] + WRAP + own;
                }
                items += 1;
                bytes += len;
            }
            if let Some((_, scopes)) = plan.last_mut() {
                scopes.push((s, first..lens.len()));
            }
        }
    }
    if !plan.is_empty() {
        plans.push(plan);
    }

    // Write each batch with its exact lengths.
    plans
        .into_iter()
        .map(|plan| {
            let scope_len = |r: usize, (s, spans): &ScopePart| {
                scope_own[r][*s]
                    + spans
                        .clone()
                        .map(|i| field(2, span_lens[r][*s][i]))
                        .sum::<usize>()
            };
            let resource_len = |r: usize, scopes: &[ScopePart]| {
                resource_own[r]
                    + scopes
                        .iter()
                        .map(|p| field(2, scope_len(r, p)))
                        .sum::<usize>()
            };
            let total: usize = plan
                .iter()
                .map(|(r, sc)| field(1, resource_len(*r, sc)))
                .sum();
            let mut buf = Vec::with_capacity(total);
            let mut items = 0u64;
            for (r, scopes) in &plan {
                write_head(1, resource_len(*r, scopes), &mut buf);
                tree.write_resource(*r, &mut buf);
                for part in scopes {
                    write_head(2, scope_len(*r, part), &mut buf);
                    tree.write_scope(*r, part.0, &mut buf);
                    for i in part.1.clone() {
                        write_head(2, span_lens[*r][part.0][i], &mut buf);
                        tree.write_span(*r, part.0, i, &mut buf);
                        items += 1;
                    }
                    tree.write_scope_tail(*r, part.0, &mut buf);
                }
                tree.write_resource_tail(*r, &mut buf);
            }
            EncodedTraces { bytes: buf, items }
        })
        .collect()
}

/// A span's protobuf encoding, written by hand: prost's measures each attribute again at
/// every level it writes (key-value, then any-value), which made span encoding most of the
/// exporter's cost. Scalar attributes (all sonde's own) are measured by arithmetic here;
/// anything else (arrays, maps, bytes, string-table references, events, links) goes
/// through prost. Fields are written in tag order, as prost writes them: the bytes are the
/// same (tested).
mod span_codec {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
    use opentelemetry_proto::tonic::trace::v1::{Span, status::StatusCode};
    use prost::Message;
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
    use sonde_span::{Attr, AttrValue, Outcome, OwnSpan};

    use super::{bytes_field_len, delimited, write_head as head};

    fn bytes_if_any(tag: u32, b: &[u8], buf: &mut Vec<u8>) {
        if !b.is_empty() {
            head(tag, b.len(), buf);
            buf.extend_from_slice(b);
        }
    }

    fn varint_if_any(tag: u32, v: u64, buf: &mut Vec<u8>) {
        if v != 0 {
            encode_key(tag, WireType::Varint, buf);
            encode_varint(v, buf);
        }
    }

    fn varint_len(tag: u32, v: u64) -> usize {
        if v == 0 {
            0
        } else {
            key_len(tag) + encoded_len_varint(v)
        }
    }

    /// The length of a scalar value's `AnyValue`; None for the others.
    fn scalar_len(v: &AnyValue) -> Option<usize> {
        Some(match &v.value {
            None => 0,
            // A oneof member is written even when it holds the default.
            Some(Value::StringValue(s)) => delimited(1, s.len()),
            Some(Value::BoolValue(_)) => 2,
            Some(Value::IntValue(i)) => 1 + encoded_len_varint(*i as u64),
            Some(Value::DoubleValue(_)) => 9,
            Some(_) => return None,
        })
    }

    /// The length of a key-value whose value is scalar; None for the others.
    fn fast_kv_len(kv: &KeyValue) -> Option<usize> {
        if kv.key_strindex != 0 {
            return None;
        }
        let key = bytes_field_len(1, kv.key.as_bytes());
        let value = match &kv.value {
            None => 0,
            Some(v) => delimited(2, scalar_len(v)?),
        };
        Some(key + value)
    }

    fn kv_len(kv: &KeyValue) -> usize {
        fast_kv_len(kv).unwrap_or_else(|| kv.encoded_len())
    }

    fn encode_kv(kv: &KeyValue, buf: &mut Vec<u8>) {
        let Some(len) = fast_kv_len(kv) else {
            prost::encoding::message::encode(9, kv, buf);
            return;
        };
        head(9, len, buf);
        bytes_if_any(1, kv.key.as_bytes(), buf);
        let Some(v) = &kv.value else { return };
        head(2, scalar_len(v).unwrap_or_default(), buf);
        match &v.value {
            Some(Value::StringValue(s)) => {
                head(1, s.len(), buf);
                buf.extend_from_slice(s.as_bytes());
            }
            Some(Value::BoolValue(b)) => {
                encode_key(2, WireType::Varint, buf);
                buf.push(u8::from(*b));
            }
            Some(Value::IntValue(i)) => {
                encode_key(3, WireType::Varint, buf);
                encode_varint(*i as u64, buf);
            }
            Some(Value::DoubleValue(d)) => {
                encode_key(4, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&d.to_le_bytes());
            }
            _ => {}
        }
    }

    /// `span.encoded_len()`, measured once.
    pub(super) fn span_len(span: &Span) -> usize {
        let bytes = bytes_field_len;
        let fixed64 = |v: u64| if v == 0 { 0 } else { 9 };
        bytes(1, &span.trace_id)
            + bytes(2, &span.span_id)
            + bytes(3, span.trace_state.as_bytes())
            + bytes(4, &span.parent_span_id)
            + bytes(5, span.name.as_bytes())
            + varint_len(6, span.kind as i64 as u64)
            + fixed64(span.start_time_unix_nano)
            + fixed64(span.end_time_unix_nano)
            + span
                .attributes
                .iter()
                .map(|kv| delimited(9, kv_len(kv)))
                .sum::<usize>()
            + varint_len(10, u64::from(span.dropped_attributes_count))
            + prost::encoding::message::encoded_len_repeated(11, &span.events)
            + varint_len(12, u64::from(span.dropped_events_count))
            + prost::encoding::message::encoded_len_repeated(13, &span.links)
            + varint_len(14, u64::from(span.dropped_links_count))
            + span
                .status
                .as_ref()
                .map_or(0, |st| delimited(15, st.encoded_len()))
            + if span.flags == 0 { 0 } else { key_len(16) + 4 }
    }

    /// `span.encode_raw(buf)`.
    pub(super) fn encode_span(span: &Span, buf: &mut Vec<u8>) {
        bytes_if_any(1, &span.trace_id, buf);
        bytes_if_any(2, &span.span_id, buf);
        bytes_if_any(3, span.trace_state.as_bytes(), buf);
        bytes_if_any(4, &span.parent_span_id, buf);
        bytes_if_any(5, span.name.as_bytes(), buf);
        varint_if_any(6, span.kind as i64 as u64, buf);
        for (tag, v) in [(7, span.start_time_unix_nano), (8, span.end_time_unix_nano)] {
            if v != 0 {
                encode_key(tag, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        for kv in &span.attributes {
            encode_kv(kv, buf);
        }
        varint_if_any(10, u64::from(span.dropped_attributes_count), buf);
        for e in &span.events {
            prost::encoding::message::encode(11, e, buf);
        }
        varint_if_any(12, u64::from(span.dropped_events_count), buf);
        for l in &span.links {
            prost::encoding::message::encode(13, l, buf);
        }
        varint_if_any(14, u64::from(span.dropped_links_count), buf);
        if let Some(st) = &span.status {
            prost::encoding::message::encode(15, st, buf);
        }
        if span.flags != 0 {
            encode_key(16, WireType::ThirtyTwoBit, buf);
            buf.extend_from_slice(&span.flags.to_le_bytes());
        }
    }

    /// The `AnyValue` length of one of sonde's own attribute values.
    fn own_value_len(v: &AttrValue) -> usize {
        match v {
            AttrValue::Str(s) => delimited(1, s.len()),
            AttrValue::Int(i) => 1 + encoded_len_varint(*i as u64),
        }
    }

    fn own_kv_len(a: &Attr) -> usize {
        bytes_field_len(1, a.key.as_bytes()) + delimited(2, own_value_len(&a.value))
    }

    /// The OTLP `Status` length of an outcome (`message` = 2, `code` = 3).
    fn own_status_len(outcome: &Outcome) -> usize {
        match outcome {
            Outcome::Unset => 0,
            Outcome::Error(m) => bytes_field_len(2, m.as_bytes()) + 2,
        }
    }

    /// One attribute as a `KeyValue` field (tag 9). When the whole key-value is under 128
    /// bytes (every length in it then takes one byte) its heads are written in two runs
    /// instead of a varint call per tag and length.
    fn encode_own_attr(a: &Attr, buf: &mut Vec<u8>) {
        let kv_len = own_kv_len(a);
        let key = a.key.as_bytes();
        if kv_len >= 0x80 || key.is_empty() {
            head(9, kv_len, buf);
            bytes_if_any(1, key, buf);
            head(2, own_value_len(&a.value), buf);
            match &a.value {
                AttrValue::Str(s) => {
                    head(1, s.len(), buf);
                    buf.extend_from_slice(s.as_bytes());
                }
                AttrValue::Int(i) => {
                    encode_key(3, WireType::Varint, buf);
                    encode_varint(*i as u64, buf);
                }
            }
            return;
        }
        // KeyValue (9, LEN), key (1, LEN) and its bytes.
        buf.extend_from_slice(&[0x4a, kv_len as u8, 0x0a, key.len() as u8]);
        buf.extend_from_slice(key);
        let value_len = own_value_len(&a.value) as u8;
        match &a.value {
            // value (2, LEN), string_value (1, LEN) and its bytes.
            AttrValue::Str(s) => {
                buf.extend_from_slice(&[0x12, value_len, 0x0a, s.len() as u8]);
                buf.extend_from_slice(s.as_bytes());
            }
            // value (2, LEN), int_value (3, VARINT).
            AttrValue::Int(i) => {
                buf.extend_from_slice(&[0x12, value_len, 0x18]);
                encode_varint(*i as u64, buf);
            }
        }
    }

    /// `span.clone().into_otlp().encoded_len()`, without building the OTLP span.
    pub(super) fn own_span_len(span: &OwnSpan) -> usize {
        let fixed64 = |v: u64| if v == 0 { 0 } else { 9 };
        delimited(1, span.trace_id.len())
            + delimited(2, span.span_id.len())
            + span.parent_span_id.map_or(0, |p| delimited(4, p.len()))
            + bytes_field_len(5, span.name.as_bytes())
            + varint_len(6, span.kind.otlp() as u64)
            + fixed64(span.start_unix_ns)
            + fixed64(span.end())
            + span
                .attributes
                .iter()
                .map(|a| delimited(9, own_kv_len(a)))
                .sum::<usize>()
            + delimited(15, own_status_len(&span.outcome))
            + key_len(16)
            + 4
    }

    /// `span.clone().into_otlp().encode_raw(buf)`, without building the OTLP span.
    pub(super) fn encode_own_span(span: &OwnSpan, buf: &mut Vec<u8>) {
        bytes_if_any(1, &span.trace_id, buf);
        bytes_if_any(2, &span.span_id, buf);
        if let Some(parent) = &span.parent_span_id {
            bytes_if_any(4, parent, buf);
        }
        bytes_if_any(5, span.name.as_bytes(), buf);
        varint_if_any(6, span.kind.otlp() as u64, buf);
        for (tag, v) in [(7, span.start_unix_ns), (8, span.end())] {
            if v != 0 {
                encode_key(tag, WireType::SixtyFourBit, buf);
                buf.extend_from_slice(&v.to_le_bytes());
            }
        }
        for a in &span.attributes {
            encode_own_attr(a, buf);
        }
        head(15, own_status_len(&span.outcome), buf);
        if let Outcome::Error(m) = &span.outcome {
            bytes_if_any(2, m.as_bytes(), buf);
            encode_key(3, WireType::Varint, buf);
            encode_varint(StatusCode::Error as u64, buf);
        }
        encode_key(16, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&span.flags().to_le_bytes());
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

    /// A span with every field and attribute kind the hand-written span encoder treats
    /// apart: scalar values (empty, negative, zero), no value, string-table references,
    /// arrays, maps and bytes, events, links, dropped counts, a negative kind.
    fn odd_span() -> Span {
        use opentelemetry_proto::tonic::common::v1::{
            AnyValue, ArrayValue, KeyValue, KeyValueList, any_value::Value,
        };
        use opentelemetry_proto::tonic::trace::v1::span::{Event, Link};
        let kv = |key: &str, value: Option<Value>| KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value }),
            ..Default::default()
        };
        Span {
            trace_id: vec![1; 16],
            span_id: vec![2; 8],
            trace_state: "k=v".into(),
            kind: -3,
            start_time_unix_nano: 5,
            attributes: vec![
                kv("s", Some(Value::StringValue(String::new()))),
                kv("", Some(Value::StringValue("v".repeat(300)))),
                kv("b", Some(Value::BoolValue(false))),
                kv("t", Some(Value::BoolValue(true))),
                kv("i", Some(Value::IntValue(-1))),
                kv("z", Some(Value::IntValue(0))),
                kv("d", Some(Value::DoubleValue(-2.5))),
                kv("e", None),
                KeyValue {
                    key: "none".into(),
                    ..Default::default()
                },
                KeyValue {
                    key_strindex: -2,
                    ..Default::default()
                },
                kv("x", Some(Value::StringValueStrindex(7))),
                kv("y", Some(Value::BytesValue(vec![0, 1]))),
                kv(
                    "a",
                    Some(Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(Value::IntValue(3)),
                        }],
                    })),
                ),
                kv(
                    "m",
                    Some(Value::KvlistValue(KeyValueList {
                        values: vec![kv("k", Some(Value::DoubleValue(1.5)))],
                    })),
                ),
            ],
            dropped_attributes_count: 3,
            events: vec![Event {
                name: "ev".into(),
                time_unix_nano: 9,
                ..Default::default()
            }],
            dropped_events_count: 300,
            links: vec![Link {
                trace_id: vec![3; 16],
                span_id: vec![4; 8],
                ..Default::default()
            }],
            dropped_links_count: 1,
            ..Default::default()
        }
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
                            spans: vec![Span::default(), span(3), odd_span()],
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

    /// The daemon's spans arrive encoded, SDK spans as structs, in one lane: whatever the mix,
    /// a batch is the bytes, size and count the all-struct batch would have.
    #[test]
    fn encoded_and_struct_spans_batch_as_one_request() {
        let shapes = varied_requests();
        for (i, a) in shapes.iter().enumerate() {
            let b = &shapes[(i + 1) % shapes.len()];
            let c = spans(i + 1);
            let mut all = a.clone();
            all.extend(b.iter().cloned());
            all.extend(c.iter().cloned());
            let expected = Payload::Traces(all.clone());
            let starts: [Payload; 2] = [
                Payload::Traces(a.clone()),
                Payload::EncodedTraces(EncodedTraces::encode(a)),
            ];
            for start in starts {
                let mut p = start;
                assert!(
                    p.append(Payload::EncodedTraces(EncodedTraces::encode(b)))
                        .is_ok()
                );
                assert!(p.append(Payload::Traces(c.clone())).is_ok());
                assert!(matches!(p, Payload::EncodedTraces(_)));
                assert_eq!(p.items(), expected.items());
                assert_eq!(p.encoded_len(), expected.encoded_len());
                assert_eq!(Request::from(p.clone()), Request::from(expected.clone()));
                assert_eq!(p.into_protobuf(), encode_traces(&all));
            }
        }
    }

    /// Every span with its resource and scope (empty resources and scopes say nothing).
    fn flat(v: &[ResourceSpans]) -> Vec<String> {
        v.iter()
            .flat_map(|r| {
                r.scope_spans.iter().flat_map(move |s| {
                    s.spans.iter().map(move |span| {
                        format!(
                            "{:?} {} {:?} {} {:?}",
                            r.resource, r.schema_url, s.scope, s.schema_url, span
                        )
                    })
                })
            })
            .collect()
    }

    /// Encoding in batches cuts where `split_front` cuts (same resource and scope headers in
    /// each part), stays within the bounds, and loses or reorders nothing.
    #[test]
    fn batches_are_what_split_front_makes() {
        let mut shapes = varied_requests();
        let mut mixed = spans(5);
        mixed.extend(shapes.iter().flatten().cloned());
        mixed.extend(spans(3));
        shapes.push(mixed);
        for v in shapes {
            for max_items in [1u64, 2, 3, 7, 512] {
                let batches = encode_traces_in_batches(v.as_slice(), max_items, usize::MAX);
                let mut rest = Payload::Traces(v.clone());
                for b in &batches {
                    assert!(b.items <= max_items && b.items >= 1 || count_spans(&v) == 0);
                    let Payload::Traces(expected) = rest.split_front(max_items) else {
                        panic!("traces")
                    };
                    assert_eq!(Payload::Traces(b.decode()).items(), b.items);
                    assert_eq!(flat(&b.decode()), flat(&expected));
                    assert_eq!(b.bytes, encode_traces(&b.decode()));
                }
                assert_eq!(rest.items(), 0);
            }
            // By bytes: every batch with more than one span fits.
            let max_bytes = 600;
            let mut all = Vec::new();
            for b in encode_traces_in_batches(v.as_slice(), u64::MAX, max_bytes) {
                assert!(
                    b.items <= 1 || b.bytes.len() <= max_bytes,
                    "{} bytes",
                    b.bytes.len()
                );
                all.extend(flat(&b.decode()));
            }
            assert_eq!(all, flat(&v));
        }
    }

    /// sonde's own spans in every shape the span builders make: root and child, local and
    /// remote parent, server and client, unset and error status (with and without message),
    /// text and integer values (empty, negative, large), empty name, zero times.
    fn own_batches() -> Vec<OwnBatch> {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
        use opentelemetry_proto::tonic::resource::v1::Resource;
        use sonde_span::{Kind, Outcome, OwnSpan, int_attr, str_attr};
        let span = |i: u8| OwnSpan {
            trace_id: [i; 16],
            span_id: [i.wrapping_add(1); 8],
            parent_span_id: i.is_multiple_of(2).then_some([7; 8]),
            remote_parent: i.is_multiple_of(3),
            name: if i == 4 {
                "".into()
            } else {
                format!("GET /items/{i}").into()
            },
            kind: if i.is_multiple_of(2) {
                Kind::Server
            } else {
                Kind::Client
            },
            start_unix_ns: if i == 5 {
                0
            } else {
                1_700_000_000_000_000_000 + u64::from(i)
            },
            end_unix_ns: if i == 6 { 0 } else { 1_700_000_000_500_000_000 },
            attributes: vec![
                str_attr("http.request.method", "GET"),
                str_attr("url.path", "/x".repeat(usize::from(i) * 40)),
                str_attr("empty", ""),
                int_attr("http.response.status_code", 200 + i64::from(i)),
                int_attr("negative", -i64::from(i) - 1),
                int_attr("large", i64::MAX),
            ],
            outcome: match i % 3 {
                0 => Outcome::Unset,
                1 => Outcome::Error(String::new()),
                _ => Outcome::Error("the connection ended".into()),
            },
        };
        let resource = |pid: i64| Resource {
            attributes: vec![KeyValue {
                key: "process.pid".into(),
                value: Some(AnyValue {
                    value: Some(Value::IntValue(pid)),
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        vec![
            OwnBatch {
                resource: resource(1),
                spans: (0..7).map(span).collect(),
            },
            OwnBatch {
                resource: Resource::default(),
                spans: Vec::new(),
            },
            OwnBatch {
                resource: resource(2),
                spans: (7..10).map(span).collect(),
            },
        ]
    }

    fn own_as_otlp(batches: &[OwnBatch]) -> Vec<ResourceSpans> {
        batches.iter().cloned().map(OwnBatch::into_otlp).collect()
    }

    #[test]
    fn own_spans_encode_as_their_otlp_conversion_does() {
        let batches = own_batches();
        let expected = ExportTraceServiceRequest {
            resource_spans: own_as_otlp(&batches),
        }
        .encode_to_vec();
        assert_eq!(encode_own_traces(&batches), expected);
        assert!(encode_own_traces(&[]).is_empty());
    }

    #[test]
    fn own_spans_batch_as_their_otlp_conversion_does() {
        let batches = own_batches();
        let otlp = own_as_otlp(&batches);
        for (max_items, max_bytes) in [(1, usize::MAX), (3, usize::MAX), (512, 700), (2, 900)] {
            let own = encode_traces_in_batches(&OwnTree::new(&batches), max_items, max_bytes);
            let converted = encode_traces_in_batches(otlp.as_slice(), max_items, max_bytes);
            assert_eq!(own, converted, "{max_items} items, {max_bytes} bytes");
        }
    }

    #[test]
    fn encoded_spans_split_as_struct_spans_do() {
        let mut v = spans(3);
        v.extend(varied_requests().pop().unwrap_or_default());
        let mut encoded = Payload::EncodedTraces(EncodedTraces::encode(&v));
        let mut structs = Payload::Traces(v);
        while structs.items() > 0 {
            assert_eq!(encoded.split_front(4), structs.split_front(4));
            assert_eq!(encoded.items(), structs.items());
        }
        assert_eq!(encoded.items(), 0);
    }

    #[test]
    fn undecodable_encoded_spans_give_none_without_panicking() {
        let garbage = EncodedTraces {
            bytes: vec![0x0a, 0xff, 0xff, 0x01],
            items: 3,
        };
        assert!(garbage.decode().is_empty());
        let mut p = Payload::EncodedTraces(garbage);
        assert_eq!(p.split_front(1).items(), 0);
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
