//! Building OTLP spans and attributes: the one place the daemon's spans take their wire shape.
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, Status, span::SpanKind, status::StatusCode},
};

use super::context::SpanContext;

pub fn str_attr(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// An address as text, as `Display` writes it. IPv4 (every span has one or two) is written
/// digit by digit: going through `fmt` cost more than the rest of the attribute.
pub fn ip_text(ip: std::net::IpAddr) -> String {
    let std::net::IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

pub fn int_attr(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(Value::IntValue(value)),
        }),
        ..Default::default()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Unset,
    Error(String),
}

/// A span before it is grouped under its process's resource.
pub struct SpanParts {
    pub ctx: SpanContext,
    pub name: String,
    pub kind: Kind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<KeyValue>,
    pub outcome: Outcome,
}

impl SpanParts {
    pub fn into_otlp(self) -> Span {
        let (code, message) = match self.outcome {
            Outcome::Unset => (StatusCode::Unset, String::new()),
            Outcome::Error(m) => (StatusCode::Error, m),
        };
        Span {
            trace_id: self.ctx.trace_id.0.to_vec(),
            span_id: self.ctx.span_id.0.to_vec(),
            parent_span_id: self.ctx.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
            name: self.name,
            kind: match self.kind {
                Kind::Server => SpanKind::Server,
                Kind::Client => SpanKind::Client,
            } as i32,
            start_time_unix_nano: self.start_unix_ns,
            end_time_unix_nano: self.end_unix_ns.max(self.start_unix_ns),
            attributes: self.attributes,
            status: Some(Status {
                message,
                code: code as i32,
            }),
            // W3C flags: sampled, and whether the parent is remote (OTLP span flags bits 8/9).
            flags: 0x01 | 0x100 | if self.ctx.remote_parent { 0x200 } else { 0 },
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::ip_text;

    #[test]
    fn ip_text_writes_what_display_writes() {
        for octets in [
            [0, 0, 0, 0],
            [127, 0, 0, 1],
            [10, 9, 99, 100],
            [255, 254, 200, 101],
        ] {
            let ip = IpAddr::V4(Ipv4Addr::from(octets));
            assert_eq!(ip_text(ip), ip.to_string());
        }
        for v4 in (0..=255u8).map(|b| Ipv4Addr::new(b, b.wrapping_mul(7), 1, b)) {
            assert_eq!(ip_text(IpAddr::V4(v4)), v4.to_string());
        }
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        assert_eq!(ip_text(v6), "::1");
    }
}
