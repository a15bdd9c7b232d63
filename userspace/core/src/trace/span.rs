//! Building sonde's spans and attributes (the span type itself is `sonde-span`'s).
pub use sonde_span::{Attr, AttrValue, Kind, Outcome, OwnSpan, int_attr, str_attr};

use super::context::SpanContext;

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

/// A span before it is grouped under its process's resource.
pub struct SpanParts {
    pub ctx: SpanContext,
    pub name: std::borrow::Cow<'static, str>,
    pub kind: Kind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<Attr>,
    pub outcome: Outcome,
}

impl SpanParts {
    /// The span as sonde exports it.
    pub fn into_span(self) -> OwnSpan {
        OwnSpan {
            trace_id: self.ctx.trace_id.0,
            span_id: self.ctx.span_id.0,
            parent_span_id: self.ctx.parent.map(|p| p.0),
            remote_parent: self.ctx.remote_parent,
            name: self.name,
            kind: self.kind,
            start_unix_ns: self.start_unix_ns,
            end_unix_ns: self.end_unix_ns,
            attributes: self.attributes,
            outcome: self.outcome,
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
