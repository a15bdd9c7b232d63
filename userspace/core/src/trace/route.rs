//! Low-cardinality route templates from raw paths: `/users/42/orders` -> `/users/{id}/orders`.
//!
//! Configured patterns win (`/api/{version}/items/{id}`: `{...}` matches one segment, a
//! trailing `{*}` the rest); otherwise segments that look like identifiers (numbers, UUIDs,
//! hex strings, long tokens mixing letters and digits) become `{id}`.

#[derive(Clone, Debug, Default)]
pub struct RouteTemplates {
    patterns: Vec<Vec<String>>,
}

impl RouteTemplates {
    pub fn new(patterns: &[String]) -> Self {
        Self {
            patterns: patterns
                .iter()
                .map(|p| split(p).map(str::to_owned).collect())
                .collect(),
        }
    }

    /// The route for a request path (without the query string).
    pub fn route(&self, path: &str) -> String {
        let path = path.split(['?', '#']).next().unwrap_or("");
        for pattern in &self.patterns {
            if matches(pattern, path) {
                return format!("/{}", pattern.join("/"));
            }
        }
        infer(path)
    }
}

fn split(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|s| !s.is_empty())
}

fn matches(pattern: &[String], path: &str) -> bool {
    let mut segments = split(path);
    for p in pattern {
        if p == "{*}" {
            return true;
        }
        let Some(seg) = segments.next() else {
            return false;
        };
        let wildcard = p.starts_with('{') && p.ends_with('}');
        if !wildcard && p != seg {
            return false;
        }
    }
    segments.next().is_none()
}

/// Replaces identifier-like segments with `{id}`; keeps a trailing slash.
pub fn infer(path: &str) -> String {
    if path.is_empty() || path == "/" {
        return "/".to_owned();
    }
    if !path.starts_with('/') {
        // Absolute-form or asterisk-form targets have no meaningful route.
        return "/".to_owned();
    }
    let mut out = String::with_capacity(path.len());
    for seg in split(path) {
        out.push('/');
        if looks_like_id(seg) {
            out.push_str("{id}");
        } else {
            out.push_str(seg);
        }
    }
    if path.ends_with('/') {
        out.push('/');
    }
    out
}

fn looks_like_id(seg: &str) -> bool {
    let bytes = seg.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
    // Plain or signed numbers, and numbers with a short suffix/prefix like v2? keep `v2`.
    if digits == bytes.len() {
        return true;
    }
    let hex = bytes.iter().all(|b| b.is_ascii_hexdigit() || *b == b'-');
    // UUIDs and hex digests (at least 8 hex chars and at least one digit).
    if hex && bytes.len() >= 8 && digits > 0 {
        return true;
    }
    // Long opaque tokens: base64-ish ids, slugs with many digits.
    let alnum = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'%' | b'='));
    if alnum && bytes.len() >= 16 && digits >= 2 {
        return true;
    }
    // Mostly digits, e.g. "12345-draft" or "2024-01-05".
    digits * 2 > bytes.len() && bytes.len() >= 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inferred_routes() {
        let cases = [
            ("/", "/"),
            ("", "/"),
            ("/users/42", "/users/{id}"),
            ("/users/42/orders/7?x=1", "/users/{id}/orders/{id}"),
            ("/analysis/123/", "/analysis/{id}/"),
            ("/items/550e8400-e29b-41d4-a716-446655440000", "/items/{id}"),
            ("/blobs/9f86d081884c7d65", "/blobs/{id}"),
            ("/api/v2/health", "/api/v2/health"),
            ("/samples/", "/samples/"),
            ("/static/app.css", "/static/app.css"),
            ("/t/aGVsbG8gd29ybGQxMjM0NTY3", "/t/{id}"),
            ("/days/2024-01-05", "/days/{id}"),
            ("/deadbeef", "/deadbeef"),
            ("http://example.com/x", "/"),
        ];
        let r = RouteTemplates::default();
        for (path, want) in cases {
            assert_eq!(r.route(path), want, "{path}");
        }
    }

    #[test]
    fn configured_patterns_win() {
        let r = RouteTemplates::new(&["/api/{version}/items/{item}".into(), "/files/{*}".into()]);
        assert_eq!(r.route("/api/v1/items/abc"), "/api/{version}/items/{item}");
        assert_eq!(r.route("/files/a/b/c.txt"), "/files/{*}");
        assert_eq!(
            r.route("/api/v1/items/abc/extra"),
            "/api/v1/items/abc/extra"
        );
        assert_eq!(r.route("/users/5"), "/users/{id}");
    }
}
