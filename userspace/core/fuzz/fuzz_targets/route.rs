//! Fuzzes the route templater: the first line of the input is a configured pattern, the rest
//! a request path. Never panics; a route always starts with `/`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_core::trace::route::{RouteTemplates, infer, template_tokens};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (pattern, path) = text.split_once('\n').unwrap_or(("", &text));
    let patterns = if pattern.is_empty() {
        Vec::new()
    } else {
        vec![pattern.to_owned()]
    };
    // A tiny guard so the collapse into `{value}` is reached too.
    let routes = RouteTemplates::with_guard(&patterns, 2, false);
    for p in [path, "/a/1", "/a/2", "/a/3"] {
        let r = routes.route(p);
        assert!(r.starts_with('/'), "{p:?} -> {r:?}");
    }
    let _ = routes.url_path(path);
    let _ = infer(path);
    let _ = template_tokens(path);
});
