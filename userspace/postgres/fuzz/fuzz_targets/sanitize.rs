//! Fuzzes the sanitizer and summarizer with a configured limit: never panics, the text never
//! exceeds the limit (counting U+FFFD for invalid UTF-8), and no quoted value leaks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde_postgres::sanitize;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the limit (0..=8191, small ones often), the rest is the query.
    let (max, sql) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b]) & 0x1fff), rest),
        _ => (4096, data),
    };
    let (text, summary, cut) = sanitize::analyze(sql, max);
    assert!(text.len() <= max, "{} > {max}", text.len());
    if !cut {
        assert_eq!(text, sanitize::analyze(sql, usize::MAX).0);
    }
    assert!(summary.summary.len() <= sanitize::MAX_SUMMARY_LEN);
    let (text, _, _) = sanitize::analyze(data, 4096);
    assert!(text.len() <= 4096);
    // A marker inside a closed string literal must never survive.
    let sql = format!(
        "SELECT '{}zq9marker' FROM t",
        String::from_utf8_lossy(data).replace('\'', "''")
    );
    assert!(!sanitize::sanitize(&sql).contains("zq9marker"));
});
