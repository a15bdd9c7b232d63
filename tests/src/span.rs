//! Spans as the tests see them: parsed from OTLP/JSON (sonde's `--output json` lines, or the
//! Python sink's file), arranged into trees, and asserted on with readable failure messages.
//!
//! The parser accepts both spellings of OTLP/JSON in the wild: the OTLP spec's (camelCase keys,
//! hex ids, integer enums, 64-bit integers as strings) and protobuf's generic JSON mapping as
//! produced by Python's `MessageToDict` (base64 ids, enum names such as `SPAN_KIND_SERVER`,
//! optionally snake_case keys).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use serde_json::Value;

use crate::error::{Error, IoContext, Result};

/// An attribute value (OTLP `AnyValue`).
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// `stringValue`.
    Str(String),
    /// `intValue`.
    Int(i64),
    /// `boolValue`.
    Bool(bool),
    /// `doubleValue`.
    Double(f64),
    /// `bytesValue`, as hex.
    Bytes(String),
    /// `arrayValue`.
    Array(Vec<AttrValue>),
    /// `kvlistValue`.
    Map(BTreeMap<String, AttrValue>),
    /// An `AnyValue` with nothing set.
    Empty,
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => write!(f, "{s:?}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Double(d) => write!(f, "{d}"),
            AttrValue::Bytes(h) => write!(f, "0x{h}"),
            AttrValue::Array(v) => {
                write!(f, "[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{x}")?;
                }
                write!(f, "]")
            }
            AttrValue::Map(m) => {
                write!(f, "{{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                write!(f, "}}")
            }
            AttrValue::Empty => write!(f, "<empty>"),
        }
    }
}

/// A span event.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    /// Event name (e.g. `exception`).
    pub name: String,
    /// Time, ns since the epoch.
    pub time_ns: u64,
    /// Event attributes.
    pub attrs: BTreeMap<String, AttrValue>,
}

/// One span, with its resource's attributes copied in.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// `INTERNAL`, `SERVER`, `CLIENT`, `PRODUCER`, `CONSUMER` or `UNSPECIFIED`.
    pub kind: String,
    /// Start, ns since the epoch.
    pub start_ns: u64,
    /// End, ns since the epoch.
    pub end_ns: u64,
    /// `UNSET`, `OK` or `ERROR`.
    pub status_code: String,
    /// Status message (usually empty).
    pub status_message: String,
    /// Span attributes.
    pub attrs: BTreeMap<String, AttrValue>,
    /// Attributes of the span's resource.
    pub resource: BTreeMap<String, AttrValue>,
    /// Instrumentation scope name.
    pub scope_name: String,
    /// Span events.
    pub events: Vec<SpanEvent>,
}

impl Span {
    /// A string attribute.
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        match self.attrs.get(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute.
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        match self.attrs.get(key) {
            Some(AttrValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    /// A boolean attribute.
    pub fn attr_bool(&self, key: &str) -> Option<bool> {
        match self.attrs.get(key) {
            Some(AttrValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// A double attribute.
    pub fn attr_f64(&self, key: &str) -> Option<f64> {
        match self.attrs.get(key) {
            Some(AttrValue::Double(d)) => Some(*d),
            _ => None,
        }
    }

    /// A string attribute of the resource.
    pub fn resource_str(&self, key: &str) -> Option<&str> {
        match self.resource.get(key) {
            Some(AttrValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer attribute of the resource.
    pub fn resource_i64(&self, key: &str) -> Option<i64> {
        match self.resource.get(key) {
            Some(AttrValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    /// `end - start` (zero if the end is before the start).
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(self.end_ns.saturating_sub(self.start_ns))
    }

    /// Whether the span has no parent.
    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_empty()
    }

    /// `KIND name`.
    pub fn label(&self) -> String {
        format!("{} {}", self.kind, self.name)
    }

    /// One line with everything about the span, for failure messages.
    pub fn summary(&self) -> String {
        let attrs: Vec<String> = self.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut s = format!(
            "{} {:?} trace={} span={} parent={} dur={:?} status={}",
            self.kind,
            self.name,
            self.trace_id,
            self.span_id,
            if self.parent_span_id.is_empty() {
                "-"
            } else {
                &self.parent_span_id
            },
            self.duration(),
            self.status_code,
        );
        if !self.status_message.is_empty() {
            s.push_str(&format!("({:?})", self.status_message));
        }
        s.push_str(&format!(" attrs{{{}}}", attrs.join(", ")));
        if let Some(svc) = self.resource_str("service.name") {
            s.push_str(&format!(" service={svc:?}"));
        }
        if let Some(pid) = self.resource_i64("process.pid") {
            s.push_str(&format!(" pid={pid}"));
        }
        for e in &self.events {
            s.push_str(&format!(" event:{}", e.name));
        }
        s
    }
}

fn field<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel).or_else(|| v.get(snake))
}

fn array<'a>(v: &'a Value, camel: &str, snake: &str) -> &'a [Value] {
    field(v, camel, snake)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn as_str<'a>(v: &'a Value, camel: &str, snake: &str) -> &'a str {
    field(v, camel, snake).and_then(Value::as_str).unwrap_or("")
}

fn as_u64(v: Option<&Value>) -> Result<u64> {
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_u64()
            .ok_or_else(|| Error::Otlp(format!("not a u64: {n}"))),
        Some(Value::String(s)) => s
            .parse()
            .map_err(|_| Error::Otlp(format!("not a u64: {s:?}"))),
        Some(other) => Err(Error::Otlp(format!("not a u64: {other}"))),
    }
}

fn as_i64(v: &Value) -> Result<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| Error::Otlp(format!("not an i64: {n}"))),
        Value::String(s) => s
            .parse()
            .map_err(|_| Error::Otlp(format!("not an i64: {s:?}"))),
        other => Err(Error::Otlp(format!("not an i64: {other}"))),
    }
}

/// Normalizes an id (hex or base64) to lowercase hex of `bytes` bytes; all-zero or empty → "".
pub fn normalize_id(s: &str, bytes: usize) -> Result<String> {
    if s.is_empty() {
        return Ok(String::new());
    }
    let hex = if s.len() == bytes.saturating_mul(2) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        s.to_ascii_lowercase()
    } else {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| Error::Otlp(format!("id {s:?} is neither {bytes}-byte hex nor base64")))?;
        if raw.len() != bytes {
            return Err(Error::Otlp(format!(
                "id {s:?} has {} bytes, expected {bytes}",
                raw.len()
            )));
        }
        raw.iter().map(|b| format!("{b:02x}")).collect()
    };
    Ok(if hex.bytes().all(|b| b == b'0') {
        String::new()
    } else {
        hex
    })
}

fn parse_kind(v: Option<&Value>) -> Result<String> {
    const NAMES: [&str; 6] = [
        "UNSPECIFIED",
        "INTERNAL",
        "SERVER",
        "CLIENT",
        "PRODUCER",
        "CONSUMER",
    ];
    match v {
        None | Some(Value::Null) => Ok("UNSPECIFIED".into()),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| NAMES.get(i))
            .map(|s| s.to_string())
            .ok_or_else(|| Error::Otlp(format!("unknown span kind {n}"))),
        Some(Value::String(s)) => {
            let name = s.strip_prefix("SPAN_KIND_").unwrap_or(s);
            if NAMES.contains(&name) {
                Ok(name.to_string())
            } else {
                Err(Error::Otlp(format!("unknown span kind {s:?}")))
            }
        }
        Some(other) => Err(Error::Otlp(format!("unknown span kind {other}"))),
    }
}

fn parse_status_code(v: Option<&Value>) -> Result<String> {
    const NAMES: [&str; 3] = ["UNSET", "OK", "ERROR"];
    match v {
        None | Some(Value::Null) => Ok("UNSET".into()),
        Some(Value::Number(n)) => n
            .as_u64()
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| NAMES.get(i))
            .map(|s| s.to_string())
            .ok_or_else(|| Error::Otlp(format!("unknown status code {n}"))),
        Some(Value::String(s)) => {
            let name = s.strip_prefix("STATUS_CODE_").unwrap_or(s);
            if NAMES.contains(&name) {
                Ok(name.to_string())
            } else {
                Err(Error::Otlp(format!("unknown status code {s:?}")))
            }
        }
        Some(other) => Err(Error::Otlp(format!("unknown status code {other}"))),
    }
}

/// Parses an OTLP `AnyValue` object.
pub fn parse_any_value(v: &Value) -> Result<AttrValue> {
    if let Some(s) = field(v, "stringValue", "string_value") {
        return s
            .as_str()
            .map(|s| AttrValue::Str(s.to_string()))
            .ok_or_else(|| Error::Otlp(format!("stringValue is not a string: {s}")));
    }
    if let Some(i) = field(v, "intValue", "int_value") {
        return as_i64(i).map(AttrValue::Int);
    }
    if let Some(b) = field(v, "boolValue", "bool_value") {
        return b
            .as_bool()
            .map(AttrValue::Bool)
            .ok_or_else(|| Error::Otlp(format!("boolValue is not a bool: {b}")));
    }
    if let Some(d) = field(v, "doubleValue", "double_value") {
        return match d {
            Value::Number(n) => n
                .as_f64()
                .map(AttrValue::Double)
                .ok_or_else(|| Error::Otlp(format!("bad double {n}"))),
            Value::String(s) => match s.as_str() {
                "NaN" => Ok(AttrValue::Double(f64::NAN)),
                "Infinity" => Ok(AttrValue::Double(f64::INFINITY)),
                "-Infinity" => Ok(AttrValue::Double(f64::NEG_INFINITY)),
                other => other
                    .parse()
                    .map(AttrValue::Double)
                    .map_err(|_| Error::Otlp(format!("bad double {other:?}"))),
            },
            other => Err(Error::Otlp(format!("bad double {other}"))),
        };
    }
    if let Some(b) = field(v, "bytesValue", "bytes_value") {
        let s = b.as_str().unwrap_or("");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| Error::Otlp(format!("bytesValue is not base64: {s:?}")))?;
        return Ok(AttrValue::Bytes(
            raw.iter().map(|b| format!("{b:02x}")).collect(),
        ));
    }
    if let Some(a) = field(v, "arrayValue", "array_value") {
        return array(a, "values", "values")
            .iter()
            .map(parse_any_value)
            .collect::<Result<Vec<_>>>()
            .map(AttrValue::Array);
    }
    if let Some(kv) = field(v, "kvlistValue", "kvlist_value") {
        return parse_attributes(array(kv, "values", "values")).map(AttrValue::Map);
    }
    Ok(AttrValue::Empty)
}

/// Parses an OTLP `KeyValue` list.
pub fn parse_attributes(list: &[Value]) -> Result<BTreeMap<String, AttrValue>> {
    let mut out = BTreeMap::new();
    for kv in list {
        let key = kv
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Otlp(format!("attribute without a key: {kv}")))?;
        let value = match kv.get("value") {
            Some(v) => parse_any_value(v)?,
            None => AttrValue::Empty,
        };
        out.insert(key.to_string(), value);
    }
    Ok(out)
}

fn parse_span(s: &Value, resource: &BTreeMap<String, AttrValue>, scope_name: &str) -> Result<Span> {
    let status = field(s, "status", "status");
    let events = array(s, "events", "events")
        .iter()
        .map(|e| {
            Ok(SpanEvent {
                name: as_str(e, "name", "name").to_string(),
                time_ns: as_u64(field(e, "timeUnixNano", "time_unix_nano"))?,
                attrs: parse_attributes(array(e, "attributes", "attributes"))?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Span {
        trace_id: normalize_id(as_str(s, "traceId", "trace_id"), 16)?,
        span_id: normalize_id(as_str(s, "spanId", "span_id"), 8)?,
        parent_span_id: normalize_id(as_str(s, "parentSpanId", "parent_span_id"), 8)?,
        name: as_str(s, "name", "name").to_string(),
        kind: parse_kind(field(s, "kind", "kind"))?,
        start_ns: as_u64(field(s, "startTimeUnixNano", "start_time_unix_nano"))?,
        end_ns: as_u64(field(s, "endTimeUnixNano", "end_time_unix_nano"))?,
        status_code: parse_status_code(status.and_then(|st| st.get("code")))?,
        status_message: status
            .and_then(|st| st.get("message"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
        attrs: parse_attributes(array(s, "attributes", "attributes"))?,
        resource: resource.clone(),
        scope_name: scope_name.to_string(),
        events,
    })
}

/// Parses one `ExportTraceServiceRequest` (OTLP/JSON) into spans.
pub fn parse_export_request(req: &Value) -> Result<Vec<Span>> {
    let mut out = Vec::new();
    for rs in array(req, "resourceSpans", "resource_spans") {
        let resource = match field(rs, "resource", "resource") {
            Some(r) => parse_attributes(array(r, "attributes", "attributes"))?,
            None => BTreeMap::new(),
        };
        for ss in array(rs, "scopeSpans", "scope_spans") {
            let scope_name = field(ss, "scope", "scope")
                .map(|sc| as_str(sc, "name", "name"))
                .unwrap_or("");
            for s in array(ss, "spans", "spans") {
                out.push(parse_span(s, &resource, scope_name)?);
            }
        }
    }
    Ok(out)
}

/// Complete lines of `text` (a trailing line without its newline may still be being written).
fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    let end = text.rfind('\n').map_or(0, |i| i.saturating_add(1));
    text.get(..end).unwrap_or("").lines()
}

/// Parses every complete line of `text` that is an OTLP/JSON `ExportTraceServiceRequest`
/// (a JSON object with `resourceSpans`) or wraps one as `{"signal": "traces", "request": {..}}`;
/// other lines (logs, metrics) are skipped, but a line that starts with `{` and is not valid
/// JSON is an error.
pub fn parse_json_lines(text: &str) -> Result<Vec<Span>> {
    let mut out = Vec::new();
    for (i, line) in complete_lines(text).enumerate() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            Error::Otlp(format!(
                "line {}: invalid JSON ({e}): {line}",
                i.saturating_add(1)
            ))
        })?;
        if field(&v, "resourceSpans", "resource_spans").is_some() {
            out.extend(parse_export_request(&v)?);
        } else if v.get("signal").and_then(Value::as_str) == Some("traces") {
            // The sink-style wrapper {"signal":"traces","request":{...}} is accepted too.
            if let Some(req) = v.get("request") {
                out.extend(parse_export_request(req)?);
            }
        }
    }
    Ok(out)
}

/// Parses the Python OTLP sink's file: one JSON object per line,
/// `{"signal": "traces", "transport": "grpc"|"http", "request": {...OTLP JSON...}}`;
/// lines of other signals are skipped.
pub fn spans_from_sink_file(path: impl AsRef<Path>) -> Result<Vec<Span>> {
    let path = path.as_ref();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx(|| format!("reading {}", path.display())),
    };
    let mut out = Vec::new();
    for (i, line) in complete_lines(&text).enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| {
            Error::Otlp(format!(
                "{}:{}: invalid JSON ({e})",
                path.display(),
                i.saturating_add(1)
            ))
        })?;
        if v.get("signal").and_then(Value::as_str) == Some("traces")
            && let Some(req) = v.get("request")
        {
            out.extend(parse_export_request(req)?);
        }
    }
    Ok(out)
}

/// Spans arranged by trace and parent.
#[derive(Debug, Clone)]
pub struct SpanTree<'a> {
    spans: Vec<&'a Span>,
}

fn by_start(mut v: Vec<&Span>) -> Vec<&Span> {
    v.sort_by(|a, b| (a.start_ns, &a.name, &a.span_id).cmp(&(b.start_ns, &b.name, &b.span_id)));
    v
}

impl<'a> SpanTree<'a> {
    /// A tree over `spans`.
    pub fn new(spans: &'a [Span]) -> SpanTree<'a> {
        SpanTree {
            spans: spans.iter().collect(),
        }
    }

    fn find(&self, trace_id: &str, span_id: &str) -> Option<&'a Span> {
        self.spans
            .iter()
            .copied()
            .find(|s| s.trace_id == trace_id && s.span_id == span_id)
    }

    /// Spans without a parent, by start time.
    pub fn roots(&self) -> Vec<&'a Span> {
        by_start(self.spans.iter().copied().filter(|s| s.is_root()).collect())
    }

    /// Spans whose parent is set but not among the spans, by start time.
    pub fn orphans(&self) -> Vec<&'a Span> {
        by_start(
            self.spans
                .iter()
                .copied()
                .filter(|s| !s.is_root() && self.find(&s.trace_id, &s.parent_span_id).is_none())
                .collect(),
        )
    }

    /// The direct children of `span`, by start time.
    pub fn children_of(&self, span: &Span) -> Vec<&'a Span> {
        by_start(
            self.spans
                .iter()
                .copied()
                .filter(|s| {
                    s.trace_id == span.trace_id
                        && s.parent_span_id == span.span_id
                        && !span.span_id.is_empty()
                })
                .collect(),
        )
    }

    /// The parent of `span`, if it is among the spans.
    pub fn parent_of(&self, span: &Span) -> Option<&'a Span> {
        if span.is_root() {
            None
        } else {
            self.find(&span.trace_id, &span.parent_span_id)
        }
    }

    /// Spans grouped by trace id, each group by start time.
    pub fn by_trace(&self) -> BTreeMap<String, Vec<&'a Span>> {
        let mut m: BTreeMap<String, Vec<&'a Span>> = BTreeMap::new();
        for s in &self.spans {
            m.entry(s.trace_id.clone()).or_default().push(s);
        }
        m.into_iter().map(|(k, v)| (k, by_start(v))).collect()
    }

    /// Trace ids ordered by the start of their earliest span.
    pub fn trace_ids(&self) -> Vec<String> {
        let mut v: Vec<(u64, String)> = self
            .by_trace()
            .into_iter()
            .map(|(id, spans)| (spans.first().map_or(0, |s| s.start_ns), id))
            .collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }

    /// The top spans of a trace: roots, then spans whose parent was not exported.
    fn tops(&self, trace_id: &str) -> Vec<&'a Span> {
        by_start(
            self.spans
                .iter()
                .copied()
                .filter(|s| {
                    s.trace_id == trace_id
                        && (s.is_root() || self.find(&s.trace_id, &s.parent_span_id).is_none())
                })
                .collect(),
        )
    }

    fn walk(&self, span: &'a Span, depth: usize, out: &mut Vec<(usize, &'a Span)>, guard: usize) {
        out.push((depth, span));
        if guard == 0 {
            return;
        }
        for c in self.children_of(span) {
            self.walk(c, depth.saturating_add(1), out, guard.saturating_sub(1));
        }
    }

    /// The spans of a trace in tree order (depth-first, children by start time), with depths.
    pub fn flatten(&self, trace_id: &str) -> Vec<(usize, &'a Span)> {
        let mut out = Vec::new();
        for top in self.tops(trace_id) {
            self.walk(top, 0, &mut out, 64);
        }
        out
    }

    /// The shape of a trace: one `KIND name` line per span, indented two spaces per level;
    /// a top span whose parent was not exported is prefixed with `^`.
    /// For each key in `keys` the span has, ` key=value` is appended.
    pub fn shape_with(&self, trace_id: &str, keys: &[&str]) -> String {
        let mut s = String::new();
        for (depth, span) in self.flatten(trace_id) {
            s.push_str(&"  ".repeat(depth));
            if depth == 0 && !span.is_root() {
                s.push('^');
            }
            s.push_str(&span.label());
            for k in keys {
                if let Some(v) = span.attrs.get(*k) {
                    s.push_str(&format!(" {k}={v}"));
                }
            }
            s.push('\n');
        }
        s
    }

    /// [`SpanTree::shape_with`] without attributes.
    pub fn shape(&self, trace_id: &str) -> String {
        self.shape_with(trace_id, &[])
    }

    /// Every trace as an indented tree of span summaries: what failure messages print.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} span(s) in {} trace(s)\n",
            self.spans.len(),
            self.by_trace().len()
        );
        for id in self.trace_ids() {
            s.push_str(&format!("trace {id}\n"));
            for (depth, span) in self.flatten(&id) {
                s.push_str(&"  ".repeat(depth.saturating_add(1)));
                s.push_str(&span.summary());
                s.push('\n');
            }
        }
        s
    }
}

/// All spans, readably (see [`SpanTree::render`]).
pub fn dump_spans(spans: &[Span]) -> String {
    SpanTree::new(spans).render()
}

/// Removes blank lines and common indentation, and trailing spaces.
fn normalize_shape(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let indent = lines
        .iter()
        .map(|l| l.len().saturating_sub(l.trim_start().len()))
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("").trim_end()))
        .collect()
}

/// Finds a trace whose shape (see [`SpanTree::shape_with`]) equals `expected` and returns its
/// spans in tree order; panics with every trace's shape and all spans otherwise.
///
/// ```text
/// assert_span_tree_with(&spans, &["http.response.status_code"], "
///     SERVER GET /samples/ http.response.status_code=200
///       CLIENT SELECT lab_sample
///       CLIENT SELECT lab_variant
/// ");
/// ```
pub fn assert_span_tree_with(spans: &[Span], keys: &[&str], expected: &str) -> Vec<Span> {
    let want = normalize_shape(expected);
    let tree = SpanTree::new(spans);
    let ids = tree.trace_ids();
    for id in &ids {
        if tree.shape_with(id, keys) == want {
            return tree
                .flatten(id)
                .into_iter()
                .map(|(_, s)| s.clone())
                .collect();
        }
    }
    let mut msg = format!("no trace has the expected shape:\n{want}\nshapes found:\n");
    for id in &ids {
        msg.push_str(&format!("--- trace {id}\n{}", tree.shape_with(id, keys)));
    }
    msg.push_str(&format!("\nall spans:\n{}", tree.render()));
    panic!("{msg}");
}

/// Every trace whose shape (see [`SpanTree::shape_with`]) equals `expected`, each as its spans
/// in tree order, traces ordered by start time. For "N requests made N identical traces".
pub fn traces_with_shape(spans: &[Span], keys: &[&str], expected: &str) -> Vec<Vec<Span>> {
    let want = normalize_shape(expected);
    let tree = SpanTree::new(spans);
    tree.trace_ids()
        .iter()
        .filter(|id| tree.shape_with(id, keys) == want)
        .map(|id| {
            tree.flatten(id)
                .into_iter()
                .map(|(_, s)| s.clone())
                .collect()
        })
        .collect()
}

/// [`assert_span_tree_with`] comparing only kinds and names.
pub fn assert_span_tree(spans: &[Span], expected: &str) -> Vec<Span> {
    assert_span_tree_with(spans, &[], expected)
}

/// The spans with this kind and name, by start time.
pub fn spans_named<'a>(spans: &'a [Span], kind: &str, name: &str) -> Vec<&'a Span> {
    by_start(
        spans
            .iter()
            .filter(|s| s.kind == kind && s.name == name)
            .collect(),
    )
}

/// The one span with this kind and name; panics (listing all spans) if there are none or several.
pub fn expect_span<'a>(spans: &'a [Span], kind: &str, name: &str) -> &'a Span {
    let found = spans_named(spans, kind, name);
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected exactly one {kind} span named {name:?}, found {}\nall spans:\n{}",
            found.len(),
            dump_spans(spans)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sonde prints with `--output json` (OTLP spec JSON: hex ids, integer enums).
    const SONDE_LINE: &str = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"gunicorn"}},{"key":"process.pid","value":{"intValue":"4242"}}]},"scopeSpans":[{"scope":{"name":"sonde","version":"0.1.0"},"spans":[
{"traceId":"5B8EFFF798038103D269B633813FC60C","spanId":"EEE19B7EC3C1B174","parentSpanId":"","name":"GET /samples/","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000012000000","attributes":[{"key":"http.request.method","value":{"stringValue":"GET"}},{"key":"http.response.status_code","value":{"intValue":200}},{"key":"sampled","value":{"boolValue":true}},{"key":"ratio","value":{"doubleValue":0.5}},{"key":"tags","value":{"arrayValue":{"values":[{"stringValue":"a"},{"intValue":"2"}]}}}],"status":{}},
{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"1111111111111111","parentSpanId":"eee19b7ec3c1b174","name":"SELECT lab_variant","kind":3,"startTimeUnixNano":1700000000005000000,"endTimeUnixNano":1700000000006000000,"attributes":[],"status":{"code":2,"message":"boom"}},
{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"2222222222222222","parentSpanId":"eee19b7ec3c1b174","name":"SELECT lab_sample","kind":3,"startTimeUnixNano":"1700000000001000000","endTimeUnixNano":"1700000000002000000","status":{"code":1}}
]}]}]}"#;

    fn sonde_spans() -> Vec<Span> {
        let text = format!("sonde: ready\n{}\nnot json\n", SONDE_LINE.replace('\n', ""));
        parse_json_lines(&text).unwrap()
    }

    #[test]
    fn parses_otlp_json_lines() {
        let spans = sonde_spans();
        assert_eq!(spans.len(), 3);
        let root = &spans[0];
        assert_eq!(root.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(
            (root.span_id.as_str(), root.parent_span_id.as_str()),
            ("eee19b7ec3c1b174", "")
        );
        assert_eq!(
            (
                root.kind.as_str(),
                root.name.as_str(),
                root.status_code.as_str()
            ),
            ("SERVER", "GET /samples/", "UNSET")
        );
        assert_eq!(root.attr_str("http.request.method"), Some("GET"));
        assert_eq!(root.attr_i64("http.response.status_code"), Some(200));
        assert_eq!(root.attr_bool("sampled"), Some(true));
        assert_eq!(root.attr_f64("ratio"), Some(0.5));
        assert_eq!(
            root.attrs["tags"],
            AttrValue::Array(vec![AttrValue::Str("a".into()), AttrValue::Int(2)])
        );
        assert_eq!(root.duration(), Duration::from_millis(12));
        assert_eq!(root.resource_str("service.name"), Some("gunicorn"));
        assert_eq!(root.resource_i64("process.pid"), Some(4242));
        assert_eq!(root.scope_name, "sonde");
        assert_eq!(
            (
                spans[1].status_code.as_str(),
                spans[1].status_message.as_str()
            ),
            ("ERROR", "boom")
        );
        assert_eq!(spans[2].status_code, "OK");
    }

    #[test]
    fn wrapped_requests_are_parsed_and_other_signals_skipped() {
        let one = SONDE_LINE.replace('\n', "");
        let text = format!(
            "{{\"signal\":\"traces\",\"request\":{one}}}\n{{\"signal\":\"metrics\",\"request\":{{\"resourceMetrics\":[]}}}}\n"
        );
        let spans = parse_json_lines(&text).unwrap();
        assert_eq!(spans.len(), 3);
        assert_eq!(spans[0].name, "GET /samples/");
    }

    #[test]
    fn partial_last_line_is_ignored_and_bad_json_is_an_error() {
        let one = SONDE_LINE.replace('\n', "");
        let cut = one.get(..one.len() / 2).unwrap();
        assert_eq!(parse_json_lines(&format!("{one}\n{cut}")).unwrap().len(), 3);
        assert!(parse_json_lines(&format!("{cut}\n")).is_err());
        assert!(
            parse_json_lines(
                "{\"resourceSpans\":[{\"scopeSpans\":[{\"spans\":[{\"kind\":9}]}]}]}\n"
            )
            .is_err()
        );
    }

    #[test]
    fn parses_protobuf_json_mapping_from_the_sink() {
        // Python's MessageToDict: base64 ids, enum names, int64 as strings.
        let req = r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"djangoapp"}}]},"scopeSpans":[{"scope":{"name":"opentelemetry.instrumentation.django"},"spans":[{"traceId":"W47/95gDgQPSabYzgT/GDA==","spanId":"7uGbfsPBsXQ=","name":"GET samples/","kind":"SPAN_KIND_SERVER","startTimeUnixNano":"1","endTimeUnixNano":"3","status":{"code":"STATUS_CODE_ERROR"},"events":[{"timeUnixNano":"2","name":"exception","attributes":[{"key":"exception.type","value":{"stringValue":"E"}}]}]}]}]}]}"#;
        let dir = crate::dirs::TestDir::new("sinkparse").unwrap();
        let path = dir.join("sink.jsonl");
        let metrics = r#"{"signal":"metrics","transport":"http","request":{"resourceMetrics":[]}}"#;
        std::fs::write(
            &path,
            format!(
                "{metrics}\n{{\"signal\":\"traces\",\"transport\":\"grpc\",\"request\":{req}}}\n"
            ),
        )
        .unwrap();
        let spans = spans_from_sink_file(&path).unwrap();
        assert_eq!(spans.len(), 1);
        let s = &spans[0];
        assert_eq!(s.trace_id, "5b8efff798038103d269b633813fc60c");
        assert_eq!(
            (s.span_id.as_str(), s.parent_span_id.as_str()),
            ("eee19b7ec3c1b174", "")
        );
        assert_eq!(
            (s.kind.as_str(), s.status_code.as_str()),
            ("SERVER", "ERROR")
        );
        assert_eq!(s.events[0].name, "exception");
        assert_eq!(s.events[0].time_ns, 2);
        assert_eq!(s.resource_str("service.name"), Some("djangoapp"));
        assert!(spans_from_sink_file(dir.join("absent")).unwrap().is_empty());
    }

    #[test]
    fn ids_normalize() {
        assert_eq!(normalize_id("0000000000000000", 8).unwrap(), "");
        assert_eq!(normalize_id("AAAAAAAAAAA=", 8).unwrap(), "");
        assert!(normalize_id("abc", 8).is_err());
        assert!(normalize_id("AAAA", 8).is_err());
    }

    #[test]
    fn tree_helpers_and_shape_assertions() {
        let spans = sonde_spans();
        let tree = SpanTree::new(&spans);
        let roots = tree.roots();
        assert_eq!(roots.len(), 1);
        let kids: Vec<&str> = tree
            .children_of(roots[0])
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(kids, ["SELECT lab_sample", "SELECT lab_variant"]);
        assert_eq!(tree.parent_of(&spans[1]).unwrap().span_id, roots[0].span_id);
        assert!(tree.orphans().is_empty());
        assert_eq!(tree.by_trace().len(), 1);
        let matched = assert_span_tree(
            &spans,
            "
            SERVER GET /samples/
              CLIENT SELECT lab_sample
              CLIENT SELECT lab_variant
            ",
        );
        assert_eq!(matched.len(), 3);
        let mut doubled = spans.clone();
        for s in &spans {
            let mut c = s.clone();
            c.trace_id = "ffffffffffffffffffffffffffffffff".into();
            c.start_ns += 1_000_000_000;
            doubled.push(c);
        }
        let shape =
            "SERVER GET /samples/\n  CLIENT SELECT lab_sample\n  CLIENT SELECT lab_variant\n";
        let found = traces_with_shape(&doubled, &[], shape);
        assert_eq!(found.len(), 2);
        assert_eq!(found[1][0].trace_id, "ffffffffffffffffffffffffffffffff");
        assert!(traces_with_shape(&doubled, &[], "SERVER GET /samples/").is_empty());
        assert_span_tree_with(
            &spans,
            &["http.response.status_code"],
            "SERVER GET /samples/ http.response.status_code=200\n  CLIENT SELECT lab_sample\n  CLIENT SELECT lab_variant",
        );
        assert_eq!(
            expect_span(&spans, "CLIENT", "SELECT lab_sample").span_id,
            "2222222222222222"
        );
        // Without its parent the child becomes a marked top span.
        let orphan = vec![spans[1].clone()];
        assert_eq!(
            SpanTree::new(&orphan).shape(&orphan[0].trace_id),
            "^CLIENT SELECT lab_variant\n"
        );
        assert!(dump_spans(&spans).contains("status=ERROR(\"boom\")"));
    }

    #[test]
    fn shape_mismatch_panics_with_all_spans() {
        let spans = sonde_spans();
        let err = std::panic::catch_unwind(|| {
            assert_span_tree(&spans, "SERVER GET /samples/\n  CLIENT SELECT lab_sample")
        })
        .unwrap_err();
        let msg = err.downcast_ref::<String>().unwrap();
        assert!(
            msg.contains("shapes found") && msg.contains("eee19b7ec3c1b174"),
            "{msg}"
        );
        assert!(std::panic::catch_unwind(|| expect_span(&spans, "SERVER", "nope")).is_err());
    }
}
