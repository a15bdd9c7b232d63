//! Fuzzes the sanitizer and summarizer: never panics, output bounded, no quoted value leaks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_postgres::sanitize;

fuzz_target!(|data: &[u8]| {
    let (text, summary, _) = sanitize::analyze(data, 4096);
    assert!(text.len() <= 4096);
    assert!(summary.summary.len() <= sanitize::MAX_SUMMARY_LEN);
    // A marker inside a closed string literal must never survive.
    let sql = format!("SELECT '{}zq9marker' FROM t", String::from_utf8_lossy(data).replace('\'', "''"));
    assert!(!sanitize::sanitize(&sql).contains("zq9marker"));
});
