//! HTTP exchanges to SERVER and CLIENT spans with the stable HTTP semantic conventions.
use std::{borrow::Cow, net::SocketAddr};

use sonde_http1::{Exchange, RequestHead};

use super::{
    context::SpanContext,
    intern, redact,
    route::{RouteTemplates, RoutedPath},
    span::{Attr, AttrValue, Kind, Outcome, SpanParts, int_attr, str_attr},
};
use crate::clock::Clock;

const KNOWN_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY",
];

/// The endpoints of the connection an exchange travelled on, from the traced process's side.
#[derive(Clone, Copy, Debug, Default)]
pub struct Endpoints {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
}

fn method_attrs(method: &str, attrs: &mut Vec<Attr>) -> &'static str {
    match KNOWN_METHODS.iter().find(|m| **m == method) {
        Some(m) => {
            attrs.push(str_attr("http.request.method", *m));
            m
        }
        None => {
            attrs.push(str_attr("http.request.method", "_OTHER"));
            attrs.push(str_attr(
                "http.request.method_original",
                truncate(method, 64),
            ));
            "HTTP"
        }
    }
}

/// The longest prefix length of `s` within `max` bytes that ends on a character boundary.
fn char_floor(s: &str, max: usize) -> usize {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// A copy of at most `max` bytes of `s` (only the part kept is copied).
fn truncate(s: &str, max: usize) -> String {
    s[..char_floor(s, max)].to_owned()
}

/// `s` cut to at most `max` bytes on a character boundary, in place (no second allocation
/// for a value that was just built).
fn truncated(s: impl Into<Cow<'static, str>>, max: usize) -> Cow<'static, str> {
    match s.into() {
        Cow::Borrowed(b) => Cow::Borrowed(b.get(..char_floor(b, max)).unwrap_or(b)),
        Cow::Owned(mut o) => {
            o.truncate(char_floor(&o, max));
            Cow::Owned(o)
        }
    }
}

fn header_str<'a>(head: &'a RequestHead, name: &str) -> Option<&'a str> {
    head.header(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(str::trim)
}

/// Splits a Host header into host and port; the host is interned (`intern::host`).
fn split_host(host: &str) -> (Cow<'static, str>, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[')
        && let Some((h, tail)) = rest.split_once(']')
    {
        return (
            intern::host(h),
            tail.strip_prefix(':').and_then(|p| p.parse().ok()),
        );
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (intern::host(h), p.parse().ok()),
        _ => (intern::host(host), None),
    }
}

fn version(minor: u8) -> &'static str {
    if minor == 0 { "1.0" } else { "1.1" }
}

fn end_ns(ex: &Exchange, fallback_end_ns: u64) -> u64 {
    ex.response_last
        .map(|s| s.ts_ns)
        .unwrap_or(fallback_end_ns.max(ex.request_last.ts_ns))
}

/// Status code, `error.type` and status: statuses from `error_from` up are errors (5xx on a
/// server span, 4xx and 5xx on a client span); no response at all is an error too.
fn outcome(ex: &Exchange, error_from: u16, missing: &str, attrs: &mut Vec<Attr>) -> Outcome {
    let outcome = match &ex.response {
        Some(resp) => {
            attrs.push(int_attr(
                "http.response.status_code",
                i64::from(resp.status),
            ));
            if resp.status >= error_from {
                attrs.push(str_attr("error.type", resp.status.to_string()));
                Outcome::Error(String::new())
            } else {
                Outcome::Unset
            }
        }
        None => {
            attrs.push(str_attr("error.type", "response_missing"));
            Outcome::Error(missing.to_owned())
        }
    };
    if ex.truncated {
        attrs.push(str_attr("sonde.capture.truncated", "true"));
    }
    outcome
}

/// HTTP/1.x's span mapping for the registry: a CLIENT span where sonde traced the client's
/// socket, a SERVER span (with route templates) where it traced the server's.
impl crate::protocols::SpanMapping for sonde_http1::Http1 {
    fn span_parts(
        ex: &Box<Exchange>,
        ctx: SpanContext,
        at: &crate::protocols::MapContext<'_>,
    ) -> SpanParts {
        match at.side {
            sonde_protocol::Side::Client => {
                client_span(ex, at.endpoints, at.routes, ctx, at.clock, at.now_ns)
            }
            sonde_protocol::Side::Server => {
                server_span(ex, at.endpoints, at.routes, ctx, at.clock, at.now_ns)
            }
        }
    }
}

pub fn server_span(
    ex: &Exchange,
    conn: Endpoints,
    routes: &RouteTemplates,
    ctx: SpanContext,
    clock: &Clock,
    fallback_end_ns: u64,
) -> SpanParts {
    let req = &ex.request;
    let mut attrs = Vec::with_capacity(16);
    let method = method_attrs(&req.method, &mut attrs);
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (req.target.as_str(), None),
    };
    let RoutedPath { route, url_path } = routes.route_and_url_path(path);
    attrs.push(str_attr("url.path", truncated(url_path, 2048)));
    if let Some(q) = query {
        attrs.push(str_attr("url.query", truncated(redact::query(q), 2048)));
    }
    attrs.push(str_attr("url.scheme", "http"));
    let mut name = String::with_capacity(method.len() + 1 + route.len());
    name.push_str(method);
    name.push(' ');
    name.push_str(&route);
    attrs.push(str_attr("http.route", route));
    attrs.push(str_attr(
        "network.protocol.version",
        version(req.minor_version),
    ));
    if let Some(host) = header_str(req, "host") {
        let (h, p) = split_host(host);
        attrs.push(str_attr("server.address", h));
        if let Some(p) = p.or(conn.local.map(|l| l.port())) {
            attrs.push(int_attr("server.port", i64::from(p)));
        }
    } else if let Some(local) = conn.local {
        attrs.push(str_attr("server.address", intern::address(local.ip())));
        attrs.push(int_attr("server.port", i64::from(local.port())));
    }
    let forwarded = header_str(req, "x-forwarded-for")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    if let Some(remote) = conn.remote {
        let peer = intern::address(remote.ip());
        attrs.push(str_attr(
            "client.address",
            forwarded.map_or_else(|| peer.clone(), |f| Cow::Owned(f.to_owned())),
        ));
        attrs.push(str_attr("network.peer.address", peer));
        attrs.push(int_attr("network.peer.port", i64::from(remote.port())));
    } else if let Some(f) = forwarded {
        attrs.push(str_attr("client.address", f.to_owned()));
    }
    if let Some(ua) = header_str(req, "user-agent") {
        attrs.push(str_attr("user_agent.original", truncate(ua, 512)));
    }
    let outcome = outcome(
        ex,
        500,
        "the connection ended before a response was sent",
        &mut attrs,
    );
    SpanParts {
        ctx,
        name: name.into(),
        kind: Kind::Server,
        start_unix_ns: clock.to_unix_ns(ex.request_first.ts_ns),
        end_unix_ns: clock.to_unix_ns(end_ns(ex, fallback_end_ns)),
        attributes: attrs,
        outcome,
    }
}

pub fn client_span(
    ex: &Exchange,
    conn: Endpoints,
    routes: &RouteTemplates,
    ctx: SpanContext,
    clock: &Clock,
    fallback_end_ns: u64,
) -> SpanParts {
    let req = &ex.request;
    let mut attrs = Vec::with_capacity(10);
    let method = method_attrs(&req.method, &mut attrs);
    let host_header = header_str(req, "host").map(split_host);
    let server_host = host_header
        .as_ref()
        .map(|(h, _)| h.clone())
        .or_else(|| conn.remote.map(|r| intern::address(r.ip())))
        .unwrap_or_default();
    let server_port = host_header
        .as_ref()
        .and_then(|(_, p)| *p)
        .or(conn.remote.map(|r| r.port()));
    if !server_host.is_empty() {
        attrs.push(str_attr("server.address", server_host.clone()));
    }
    if let Some(p) = server_port {
        attrs.push(int_attr("server.port", i64::from(p)));
    }
    let authority = match server_port {
        Some(80) | None => server_host,
        Some(p) => Cow::Owned(format!("{server_host}:{p}")),
    };
    // The path's tokens are templated like `url.path` on server spans (unless raw paths).
    let target = match req.target.find(['?', '#']) {
        Some(i) => format!("{}{}", routes.url_path(&req.target[..i]), &req.target[i..]),
        None => routes.url_path(&req.target),
    };
    attrs.push(str_attr(
        "url.full",
        truncated(redact::url_full("http", &authority, &target), 4096),
    ));
    attrs.push(str_attr(
        "network.protocol.version",
        version(req.minor_version),
    ));
    if let Some(remote) = conn.remote {
        attrs.push(str_attr(
            "network.peer.address",
            intern::address(remote.ip()),
        ));
        attrs.push(int_attr("network.peer.port", i64::from(remote.port())));
    }
    let outcome = outcome(
        ex,
        400,
        "the connection ended before a response arrived",
        &mut attrs,
    );
    SpanParts {
        ctx,
        name: method.into(),
        kind: Kind::Client,
        start_unix_ns: clock.to_unix_ns(ex.request_first.ts_ns),
        end_unix_ns: clock.to_unix_ns(end_ns(ex, fallback_end_ns)),
        attributes: attrs,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_forms() {
        assert_eq!(
            split_host("example.com:8080"),
            ("example.com".into(), Some(8080))
        );
        assert_eq!(split_host("example.com"), ("example.com".into(), None));
        assert_eq!(split_host("[::1]:80"), ("::1".into(), Some(80)));
        assert_eq!(split_host("::1"), ("::1".into(), None));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncated("ab€".to_owned(), 4), "ab");
        assert_eq!(truncated("ab€".to_owned(), 5), "ab€");
        assert!(matches!(truncated("ab€", 4), Cow::Borrowed("ab")));
    }
}

/// The exchange travelled over TLS (its bytes came from the OpenSSL uprobes): `url.scheme`
/// becomes `https` and `url.full` starts with `https://`, without the default port 443.
pub fn into_https(parts: &mut SpanParts) {
    for attr in &mut parts.attributes {
        let AttrValue::Str(v) = &mut attr.value else {
            continue;
        };
        match attr.key {
            "url.scheme" if v == "http" => *v = "https".into(),
            "url.full" => {
                if let Some(rest) = v.strip_prefix("http://") {
                    let (authority, tail) = match rest.find(['/', '?', '#']) {
                        Some(i) => rest.split_at(i),
                        None => (rest, ""),
                    };
                    let authority = authority.strip_suffix(":443").unwrap_or(authority);
                    *v = format!("https://{authority}{tail}").into();
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod https_tests {
    use super::*;
    use crate::trace::span::Kind;

    fn value(parts: &SpanParts, key: &str) -> String {
        parts
            .attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_str())
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn tls_exchanges_get_the_https_scheme_without_the_default_port() {
        let mut parts = SpanParts {
            ctx: SpanContext {
                trace_id: crate::trace::context::TraceId([1; 16]),
                span_id: crate::trace::context::SpanId([1; 8]),
                parent: None,
                remote_parent: false,
                sampled: true,
            },
            name: "GET".into(),
            kind: Kind::Client,
            start_unix_ns: 0,
            end_unix_ns: 0,
            attributes: vec![
                str_attr("url.scheme", "http"),
                str_attr("url.full", "http://api.example:443/v1?x=REDACTED"),
            ],
            outcome: Outcome::Unset,
        };
        into_https(&mut parts);
        assert_eq!(value(&parts, "url.scheme"), "https");
        assert_eq!(
            value(&parts, "url.full"),
            "https://api.example/v1?x=REDACTED"
        );
        parts.attributes = vec![str_attr("url.full", "http://127.0.0.1:8443/")];
        into_https(&mut parts);
        assert_eq!(value(&parts, "url.full"), "https://127.0.0.1:8443/");
    }
}
