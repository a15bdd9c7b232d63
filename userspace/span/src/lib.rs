//! sonde's own span: what a traced exchange becomes before it is OTLP.
//!
//! The daemon builds one of these per request on its capture thread. Attribute keys are
//! `&'static str` and constant values are borrowed, so a span costs a handful of allocations
//! instead of two per attribute (opentelemetry-proto's `KeyValue` owns its key and value).
//! The OTLP exporter writes these spans to protobuf directly, and request metrics read them
//! directly; only spans that must meet OTLP structs (held for the SDK merge, text and JSON
//! outputs) are converted, with [`OwnSpan::into_otlp`].
use std::borrow::Cow;

use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode},
};

/// An attribute value: text (borrowed when constant) or an integer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    Str(Cow<'static, str>),
    Int(i64),
}

impl AttrValue {
    /// The value as text when it is text.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            AttrValue::Int(_) => None,
        }
    }

    fn into_otlp(self) -> AnyValue {
        AnyValue {
            value: Some(match self {
                AttrValue::Str(s) => Value::StringValue(s.into_owned()),
                AttrValue::Int(i) => Value::IntValue(i),
            }),
        }
    }
}

/// One span attribute; keys are semantic-convention names, known when sonde is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub key: &'static str,
    pub value: AttrValue,
}

/// A text attribute (`&'static str` values are borrowed, `String`s moved).
pub fn str_attr(key: &'static str, value: impl Into<Cow<'static, str>>) -> Attr {
    Attr {
        key,
        value: AttrValue::Str(value.into()),
    }
}

/// An integer attribute.
pub fn int_attr(key: &'static str, value: i64) -> Attr {
    Attr {
        key,
        value: AttrValue::Int(value),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

impl Kind {
    /// The OTLP `SpanKind` number.
    pub fn otlp(self) -> i32 {
        match self {
            Kind::Server => SpanKind::Server as i32,
            Kind::Client => SpanKind::Client as i32,
        }
    }
}

/// The span status: unset, or an error with an optional message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unset,
    Error(String),
}

/// A finished span of sonde's own, with its trace context.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// The parent came from another process (a `traceparent` header).
    pub remote_parent: bool,
    pub name: Cow<'static, str>,
    pub kind: Kind,
    pub start_unix_ns: u64,
    /// As measured; [`OwnSpan::end`] is the end exported.
    pub end_unix_ns: u64,
    pub attributes: Vec<Attr>,
    pub outcome: Outcome,
}

impl OwnSpan {
    /// The end exported: never before the start (a clock step can put it there).
    pub fn end(&self) -> u64 {
        self.end_unix_ns.max(self.start_unix_ns)
    }

    /// The value of attribute `key`, if the span has it.
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes
            .iter()
            .find(|a| a.key == key)
            .map(|a| &a.value)
    }

    /// W3C trace flags as OTLP span flags: sampled, and whether the parent is remote (bits
    /// 8 and 9 say the remoteness is known and what it is).
    pub fn flags(&self) -> u32 {
        0x01 | 0x100 | if self.remote_parent { 0x200 } else { 0 }
    }

    /// The OTLP status: always present (code unset or error).
    pub fn status(&self) -> Status {
        match &self.outcome {
            Outcome::Unset => Status {
                message: String::new(),
                code: StatusCode::Unset as i32,
            },
            Outcome::Error(m) => Status {
                message: m.clone(),
                code: StatusCode::Error as i32,
            },
        }
    }

    /// The same span as an OTLP struct.
    pub fn into_otlp(self) -> Span {
        let status = self.status();
        let flags = self.flags();
        let end = self.end();
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
            name: self.name.into_owned(),
            kind: self.kind.otlp(),
            start_time_unix_nano: self.start_unix_ns,
            end_time_unix_nano: end,
            attributes: self
                .attributes
                .into_iter()
                .map(|a| KeyValue {
                    key: a.key.to_owned(),
                    value: Some(a.value.into_otlp()),
                    ..Default::default()
                })
                .collect(),
            status: Some(status),
            flags,
            ..Default::default()
        }
    }
}

/// The instrumentation scope of every span sonde builds.
pub fn sonde_scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "sonde".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// One process's own spans under its resource, ready for export.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnBatch {
    pub resource: Resource,
    pub spans: Vec<OwnSpan>,
}

impl OwnBatch {
    /// The batch as OTLP, under [`sonde_scope`].
    pub fn into_otlp(self) -> ResourceSpans {
        ResourceSpans {
            resource: Some(self.resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(sonde_scope()),
                spans: self.spans.into_iter().map(OwnSpan::into_otlp).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span() -> OwnSpan {
        OwnSpan {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: Some([3; 8]),
            remote_parent: true,
            name: "GET /x".into(),
            kind: Kind::Server,
            start_unix_ns: 10,
            end_unix_ns: 5,
            attributes: vec![
                str_attr("http.request.method", "GET"),
                str_attr("url.path", String::from("/x")),
                int_attr("http.response.status_code", 503),
            ],
            outcome: Outcome::Error("down".into()),
        }
    }

    #[test]
    fn converts_to_the_otlp_span_it_stands_for() {
        let s = span().into_otlp();
        assert_eq!(s.trace_id, vec![1; 16]);
        assert_eq!(s.span_id, vec![2; 8]);
        assert_eq!(s.parent_span_id, vec![3; 8]);
        assert_eq!(s.name, "GET /x");
        assert_eq!(s.kind, SpanKind::Server as i32);
        assert_eq!((s.start_time_unix_nano, s.end_time_unix_nano), (10, 10));
        assert_eq!(s.flags, 0x301);
        assert_eq!(s.attributes.len(), 3);
        assert_eq!(s.attributes[0].key, "http.request.method");
        assert_eq!(
            s.attributes[2].value,
            Some(AnyValue {
                value: Some(Value::IntValue(503))
            })
        );
        let status = s.status.expect("status");
        assert_eq!(status.code, StatusCode::Error as i32);
        assert_eq!(status.message, "down");
    }

    #[test]
    fn a_root_span_has_no_parent_bytes_and_a_local_flag() {
        let mut own = span();
        own.parent_span_id = None;
        own.remote_parent = false;
        own.outcome = Outcome::Unset;
        let s = own.into_otlp();
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.flags, 0x101);
        assert_eq!(s.status.map(|st| st.code), Some(StatusCode::Unset as i32));
    }

    #[test]
    fn finds_attributes_by_key() {
        let s = span();
        assert_eq!(s.attr("url.path").and_then(AttrValue::as_str), Some("/x"));
        assert_eq!(
            s.attr("http.response.status_code"),
            Some(&AttrValue::Int(503))
        );
        assert!(s.attr("missing").is_none());
    }

    #[test]
    fn a_batch_carries_the_sonde_scope() {
        let rs = OwnBatch {
            resource: Resource::default(),
            spans: vec![span()],
        }
        .into_otlp();
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().map(|s| s.name.as_str()), Some("sonde"));
        assert_eq!(ss.spans.len(), 1);
    }
}
