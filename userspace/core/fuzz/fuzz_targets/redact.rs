//! Fuzzes the HTTP and command-line redactors: never panics, and a `password` query value
//! never survives `redact::query`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_core::trace::redact;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let q = redact::query(&text);
    for pair in q.split('&') {
        if let Some((k, v)) = pair.split_once('=')
            && k.eq_ignore_ascii_case("password")
        {
            assert_eq!(v, "REDACTED", "{text:?} -> {q:?}");
        }
    }
    let mut parts = text.splitn(3, '\n');
    let (scheme, host, target) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let _ = redact::url_full(scheme, host, target);
    let args: Vec<String> = text.split('\0').map(str::to_owned).collect();
    let _ = redact::argv(&args);
    let _ = redact::text(&text);
});
