//! Low-cardinality route templates from raw paths: `/users/42/orders` -> `/users/{id}/orders`.
//!
//! Configured patterns win (`/api/{version}/items/{id}`: `{...}` matches one segment, a
//! trailing `{*}` the rest); otherwise segments that look like identifiers (numbers, UUIDs,
//! hex strings) become `{id}` and high-entropy segments (mixed-case tokens, base64, JWTs,
//! emails) become `{token}`. A cardinality guard then collapses a path position into `{value}`
//! once it has seen more than N distinct values, so neither a token the heuristics miss nor an
//! unbounded set of slugs can explode the number of routes.
use std::{
    borrow::Cow,
    sync::{Arc, Mutex},
};

// hashbrown for lookups by borrowed keys (`entry_ref`), with its randomly seeded default
// hasher: the keys are request paths, which clients choose.
use hashbrown::{HashMap, HashSet};

use super::intern;

/// Distinct values a path position may take before it collapses into `{value}`.
pub const DEFAULT_MAX_SEGMENT_VALUES: usize = 100;
/// Path positions (prefixes) the guard remembers; beyond that, new positions collapse at once.
const MAX_GUARDED_POSITIONS: usize = 10_000;
/// Distinct request paths whose route and `url.path` are remembered; the cache starts over
/// when it is full (a service has far fewer distinct paths than requests; one that mints a
/// path per request pays a lookup and an insert, against the inference it runs anyway).
const MAX_CACHED_PATHS: usize = 4096;

#[derive(Clone, Debug, Default)]
pub struct RouteTemplates {
    patterns: Vec<Vec<String>>,
    guard: Option<Arc<Mutex<CardinalityGuard>>>,
    /// Export `url.path` as received (opt-in) instead of with its tokens templated.
    pub raw_paths: bool,
}

/// Distinct values seen per path position (the templated prefix before it), and the
/// routes already worked out under what it has seen.
#[derive(Debug, Default)]
struct CardinalityGuard {
    max_values: usize,
    seen: HashMap<String, Position>,
    /// Route and `url.path` by request path. Exact, not approximate: a path's route changes
    /// only when one of its positions collapses (values are never forgotten, a collapsed
    /// position never reopens, a position refused for a full guard stays refused), and every
    /// collapse clears the cache.
    paths: HashMap<String, RoutedPath>,
    max_paths: usize,
}

/// What [`RouteTemplates::route_and_url_path`] gives for one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutedPath {
    pub route: Cow<'static, str>,
    pub url_path: Cow<'static, str>,
}

#[derive(Debug)]
enum Position {
    Open(HashSet<String>),
    Collapsed,
}

impl CardinalityGuard {
    fn new(max_values: usize, max_paths: usize) -> Self {
        Self {
            max_values,
            seen: HashMap::new(),
            paths: HashMap::new(),
            max_paths,
        }
    }

    /// Whether `seg` under `prefix` keeps its value (false: it collapses to `{value}`).
    fn admit(&mut self, prefix: &str, seg: &str) -> bool {
        let full = self.seen.len() >= MAX_GUARDED_POSITIONS;
        // The prefix is copied only for a new position (every request walks its positions).
        let pos = match self.seen.entry_ref(prefix) {
            hashbrown::hash_map::EntryRef::Occupied(e) => e.into_mut(),
            hashbrown::hash_map::EntryRef::Vacant(_) if full => return false,
            hashbrown::hash_map::EntryRef::Vacant(e) => e.insert(Position::Open(HashSet::new())),
        };
        let max = self.max_values;
        match pos {
            Position::Collapsed => false,
            Position::Open(values) => {
                if values.contains(seg) {
                    return true;
                }
                if values.len() >= max {
                    *pos = Position::Collapsed;
                    // Cached routes that kept a value here are stale now.
                    self.paths.clear();
                    return false;
                }
                values.insert(seg.to_owned());
                true
            }
        }
    }
}

impl RouteTemplates {
    pub fn new(patterns: &[String]) -> Self {
        Self::with_guard(patterns, DEFAULT_MAX_SEGMENT_VALUES, false)
    }

    /// `max_values`: distinct values per path position before it collapses (0: no guard).
    pub fn with_guard(patterns: &[String], max_values: usize, raw_paths: bool) -> Self {
        Self {
            patterns: patterns
                .iter()
                .map(|p| split(p).map(str::to_owned).collect())
                .collect(),
            guard: (max_values > 0).then(|| {
                Arc::new(Mutex::new(CardinalityGuard::new(
                    max_values,
                    MAX_CACHED_PATHS,
                )))
            }),
            raw_paths,
        }
    }

    /// The route for a request path (without the query string).
    pub fn route(&self, path: &str) -> String {
        match &self.guard {
            Some(guard) => self.route_guarded(path, &mut lock(guard)),
            None => self.route_unguarded(path),
        }
    }

    /// A server span's route and `url.path` for a request path (without the query string),
    /// worked out once per distinct path: the same as [`Self::route`] and [`Self::url_path`].
    /// Cached texts are interned ([`intern::text`]): a hit then copies nothing.
    pub fn route_and_url_path(&self, path: &str) -> RoutedPath {
        let Some(guard) = &self.guard else {
            return RoutedPath {
                route: self.route_unguarded(path).into(),
                url_path: self.url_path(path).into(),
            };
        };
        let mut g = lock(guard);
        if let Some(hit) = g.paths.get(path) {
            return hit.clone();
        }
        let routed = RoutedPath {
            route: intern::text(self.route_guarded(path, &mut g)),
            url_path: intern::text(self.url_path(path)),
        };
        if g.paths.len() >= g.max_paths {
            g.paths.clear();
        }
        g.paths.insert(path.to_owned(), routed.clone());
        routed
    }

    /// A configured pattern's route, if one matches `path` (already without its query).
    fn configured(&self, path: &str) -> Option<String> {
        let pattern = self.patterns.iter().find(|p| matches(p, path))?;
        Some(format!("/{}", pattern.join("/")))
    }

    fn route_unguarded(&self, path: &str) -> String {
        let path = without_query(path);
        self.configured(path).unwrap_or_else(|| infer(path))
    }

    fn route_guarded(&self, path: &str, guard: &mut CardinalityGuard) -> String {
        let path = without_query(path);
        self.configured(path)
            .unwrap_or_else(|| collapse(infer(path), guard))
    }

    /// `url.path` as exported: tokens templated (numbers kept) unless raw paths are opted in.
    pub fn url_path(&self, path: &str) -> String {
        if self.raw_paths {
            path.to_owned()
        } else {
            template_tokens(path)
        }
    }
}

/// `path` up to its query string or fragment.
fn without_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or("")
}

/// The guard, also after a panic elsewhere poisoned its lock (no update of it leaves a
/// half-made entry: the worst a panic leaves is a value or path not yet recorded).
fn lock(guard: &Mutex<CardinalityGuard>) -> std::sync::MutexGuard<'_, CardinalityGuard> {
    guard
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies the cardinality guard to an inferred route, position by position. A route with
/// nothing to collapse (nearly every request) is returned as it came: the guard's prefixes are
/// then slices of it, and a new string is built only from the first collapsed position on.
fn collapse(route: String, guard: &mut CardinalityGuard) -> String {
    // `Some` from the first collapsed segment on: the route as rewritten so far.
    let mut out: Option<String> = None;
    for seg in split(&route) {
        // Where `seg` starts in `route` (a subslice of it); the prefix ends before its '/'.
        let start = seg.as_ptr() as usize - route.as_ptr() as usize;
        let unchanged = route.get(..start.saturating_sub(1)).unwrap_or_default();
        let prefix = out.as_deref().unwrap_or(unchanged);
        let keep = seg.starts_with('{') || guard.admit(prefix, seg);
        if keep && out.is_none() {
            continue;
        }
        let o = out.get_or_insert_with(|| {
            let mut o = String::with_capacity(route.len());
            o.push_str(unchanged);
            o
        });
        o.push('/');
        o.push_str(if keep { seg } else { "{value}" });
    }
    let Some(mut out) = out else {
        return route;
    };
    if out.is_empty() || route.ends_with('/') {
        out.push('/');
    }
    out
}

/// A path with its high-entropy segments (and hex/UUID ids) replaced by `{token}`; decimal
/// numbers and dates stay (they identify, they do not authenticate).
pub fn template_tokens(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for (i, seg) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        let numeric = seg.bytes().all(|b| b.is_ascii_digit() || b == b'-');
        if !numeric && (is_token(seg) || looks_like_id(seg)) {
            out.push_str("{token}");
        } else {
            out.push_str(seg);
        }
    }
    out
}

/// High-entropy strings that are credentials or unbounded identifiers: emails, JWT-like dotted
/// tokens, long hex, and base64/base64url or alphanumeric strings mixing classes of characters
/// in a way words do not.
pub fn is_token(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.len() < 8 {
        return false;
    }
    if let Some((local, domain)) = seg.split_once('@').or_else(|| seg.split_once("%40"))
        && !local.is_empty()
        && domain.contains('.')
        && !domain.contains(['/', ' '])
    {
        return true;
    }
    let b64 = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'=' | b'~');
    // JWT-like: three or more dot-separated base64 parts, two of them long (counted in one
    // pass: this runs on every path segment of every request).
    if b.len() >= 24 {
        let (mut parts, mut long) = (0, 0);
        let all_b64 = seg.split('.').all(|p| {
            parts += 1;
            long += usize::from(p.len() >= 10);
            !p.is_empty() && p.bytes().all(b64)
        });
        if all_b64 && parts >= 3 && long >= 2 {
            return true;
        }
    }
    if !b.iter().all(|&c| b64(c)) {
        return false;
    }
    if b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    let digits = b.iter().filter(|c| c.is_ascii_digit()).count();
    let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    let lower = b.iter().filter(|c| c.is_ascii_lowercase()).count();
    let letters = upper + lower;
    let class = |c: u8| match c {
        b'a'..=b'z' => 0,
        b'A'..=b'Z' => 1,
        b'0'..=b'9' => 2,
        _ => 3,
    };
    let transitions = b.windows(2).filter(|w| class(w[0]) != class(w[1])).count();
    // Short tokens (`Qz7Xm2Lp9V`): letters and digits alternating far more than in words.
    if b.len() >= 10 && digits >= 2 && letters >= 2 && transitions * 2 >= b.len() {
        return true;
    }
    if b.len() < 16 || !(upper > 0 && lower > 0 || digits > 0 && letters > 0) {
        return false;
    }
    !wordy(seg)
}

/// Whether a long segment reads like words (`getUserProfileSettings`, `OAuthCallback`) rather
/// than random characters: no digits, few capitals, and every camel-case piece a pronounceable
/// run of at least three letters.
fn wordy(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.iter().any(u8::is_ascii_digit) {
        return false;
    }
    let upper = b.iter().filter(|c| c.is_ascii_uppercase()).count();
    let letters = b.iter().filter(|c| c.is_ascii_alphabetic()).count();
    if upper * 3 > letters {
        return false;
    }
    let mut pieces: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for i in 0..=b.len() {
        let boundary = i == b.len()
            || !b[i].is_ascii_alphabetic()
            || (i > start && b[i].is_ascii_uppercase() && b[i - 1].is_ascii_lowercase());
        if boundary {
            if i > start {
                pieces.push(&b[start..i]);
            }
            start = if i < b.len() && !b[i].is_ascii_alphabetic() {
                i + 1
            } else {
                i
            };
        }
    }
    pieces.iter().all(|p| {
        p.len() >= 3
            && p.iter().any(|c| {
                matches!(
                    c.to_ascii_lowercase(),
                    b'a' | b'e' | b'i' | b'o' | b'u' | b'y'
                )
            })
    })
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

/// Replaces identifier-like segments with `{id}` and high-entropy ones with `{token}`; keeps a
/// trailing slash.
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
        let hex_or_number = seg.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if hex_or_number && looks_like_id(seg) {
            out.push_str("{id}");
        } else if is_token(seg) {
            out.push_str("{token}");
        } else if looks_like_id(seg) {
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
            ("/t/aGVsbG8gd29ybGQxMjM0NTY3", "/t/{token}"),
            ("/reset/Qz7Xm2Lp9Vb4Nk8R", "/reset/{token}"),
            ("/invite/dGhpcyBpcyBhbiBpbnZpdGU", "/invite/{token}"),
            ("/u/alice@example.com/x", "/u/{token}/x"),
            ("/api/getUserProfileSettings", "/api/getUserProfileSettings"),
            ("/auth/OAuth2Callback", "/auth/OAuth2Callback"),
            ("/static/app.min.js", "/static/app.min.js"),
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
    fn jwt_like_paths_are_tokens() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(infer(&format!("/verify/{jwt}")), "/verify/{token}");
    }

    #[test]
    fn cardinality_guard_collapses_a_position() {
        let r = RouteTemplates::with_guard(&[], 3, false);
        for name in ["alpha", "beta", "gamma"] {
            assert_eq!(
                r.route(&format!("/blog/{name}/edit")),
                format!("/blog/{name}/edit")
            );
        }
        assert_eq!(r.route("/blog/delta/edit"), "/blog/{value}/edit");
        assert_eq!(r.route("/blog/alpha/edit"), "/blog/{value}/edit");
        // Other positions are independent.
        assert_eq!(r.route("/shop/alpha"), "/shop/alpha");
        assert_eq!(r.route("/users/42"), "/users/{id}");
    }

    #[test]
    fn url_path_templates_tokens_unless_raw() {
        let r = RouteTemplates::default();
        assert_eq!(r.url_path("/reset/Qz7Xm2Lp9Vb4Nk8R"), "/reset/{token}");
        assert_eq!(r.url_path("/users/42/"), "/users/42/");
        let raw = RouteTemplates::with_guard(&[], 100, true);
        assert_eq!(
            raw.url_path("/reset/Qz7Xm2Lp9Vb4Nk8R"),
            "/reset/Qz7Xm2Lp9Vb4Nk8R"
        );
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

#[cfg(test)]
mod proptests {
    use base64::Engine as _;
    use proptest::prelude::*;

    use super::*;

    fn b64(bytes: &[u8], url: bool) -> String {
        if url {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        } else {
            base64::engine::general_purpose::STANDARD.encode(bytes)
        }
    }

    /// Tokens as services mint them: 16+ random bytes in base64/base64url/hex, JWTs, random
    /// mixed-case alphanumerics, emails.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 16..48),
                any::<bool>()
            )
                .prop_map(|(b, url)| b64(&b, url).replace('/', "_")),
            proptest::collection::vec(any::<u8>(), 8..32)
                .prop_map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>()),
            (
                proptest::collection::vec(any::<u8>(), 12..40),
                proptest::collection::vec(any::<u8>(), 20..80),
                proptest::collection::vec(any::<u8>(), 32..33)
            )
                .prop_map(|(h, p, s)| format!(
                    "{}.{}.{}",
                    b64(&h, true),
                    b64(&p, true),
                    b64(&s, true)
                )),
            "[A-Za-z0-9]{24,40}".prop_filter("mixed classes", |s| {
                s.bytes().any(|c| c.is_ascii_digit()) && s.bytes().any(|c| c.is_ascii_alphabetic())
            }),
            "[a-z][a-z0-9._]{2,20}@[a-z]{2,12}\\.(com|org|io)",
        ]
    }

    /// `collapse` as it was before it reused unchanged routes: always rebuilt.
    fn collapse_rebuilt(route: &str, guard: &mut CardinalityGuard) -> String {
        let mut out = String::with_capacity(route.len());
        for seg in split(route) {
            let keep = seg.starts_with('{') || guard.admit(&out, seg);
            out.push('/');
            out.push_str(if keep { seg } else { "{value}" });
        }
        if out.is_empty() || route.ends_with('/') {
            out.push('/');
        }
        out
    }

    proptest! {
        /// Reusing the route when nothing collapses changes no result: any sequence of
        /// paths (few segment values, so that positions fill and collapse) gives the routes
        /// the rebuilding version gives, with guards kept in step.
        #[test]
        fn collapsing_in_place_matches_rebuilding(
            paths in proptest::collection::vec(
                proptest::collection::vec("(a|b|c|d|e|42|x1)", 0..5)
                    .prop_flat_map(|segs| (Just(segs), any::<bool>()))
                    .prop_map(|(segs, slash)| {
                        let mut p = format!("/{}", segs.join("/"));
                        if slash && !segs.is_empty() {
                            p.push('/');
                        }
                        p
                    }),
                1..60,
            ),
            max_values in 1usize..4,
        ) {
            let guard = || CardinalityGuard::new(max_values, MAX_CACHED_PATHS);
            let (mut reused, mut rebuilt) = (guard(), guard());
            for path in &paths {
                let inferred = infer(path);
                let expected = collapse_rebuilt(&inferred, &mut rebuilt);
                prop_assert_eq!(collapse(inferred, &mut reused), expected, "{}", path);
            }
        }

        /// The path cache changes no result: any sequence of paths (few segment values, so
        /// that positions fill and collapse and cached routes go stale; a tiny cache, so
        /// that it starts over too) gives the routes and `url.path`s of the uncached calls.
        #[test]
        fn cached_routes_match_uncached(
            paths in proptest::collection::vec(
                proptest::collection::vec("(a|b|c|d|42|x1|p|q|Zx9kQ2mP7vL4nR8t)", 0..4)
                    .prop_map(|segs| format!("/{}", segs.join("/"))),
                1..80,
            ),
            max_values in 1usize..4,
            max_paths in 1usize..6,
        ) {
            let templates = |max_paths| RouteTemplates {
                patterns: vec![split("/p/{x}/q").map(str::to_owned).collect()],
                guard: Some(Arc::new(Mutex::new(CardinalityGuard::new(max_values, max_paths)))),
                raw_paths: false,
            };
            let (cached, uncached) = (templates(max_paths), templates(0));
            for path in &paths {
                let expected = RoutedPath {
                    route: uncached.route(path).into(),
                    url_path: uncached.url_path(path).into(),
                };
                prop_assert_eq!(cached.route_and_url_path(path), expected, "{}", path);
            }
        }

        #[test]
        fn generated_tokens_never_reach_routes_or_paths(
            prefix in "(/[a-z]{1,8}){0,3}",
            tok in token(),
            suffix in "(/[a-z]{1,8}){0,2}",
        ) {
            let path = format!("{prefix}/{tok}{suffix}");
            let r = RouteTemplates::default();
            let route = r.route(&path);
            prop_assert!(!route.contains(&tok), "{path} -> {route}");
            let url_path = r.url_path(&path);
            prop_assert!(!url_path.contains(&tok), "{path} -> {url_path}");
        }

        #[test]
        fn guard_bounds_distinct_routes(names in proptest::collection::vec("[a-z]{3,10}", 1..300)) {
            let r = RouteTemplates::with_guard(&[], 20, false);
            let routes: HashSet<String> = names.iter().map(|n| r.route(&format!("/p/{n}"))).collect();
            prop_assert!(routes.len() <= 21, "{}", routes.len());
        }
    }
}
