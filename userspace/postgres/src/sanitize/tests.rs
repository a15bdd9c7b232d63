//! Sanitizer and summarizer table tests.

use super::*;

const CASES: &[(&str, &str)] = &[
    // Strings.
    ("SELECT 'abc'", "SELECT ?"),
    ("SELECT 'it''s'", "SELECT ?"),
    ("SELECT ''", "SELECT ?"),
    ("SELECT E'a\\'b' , 1", "SELECT ? , ?"),
    ("SELECT e'\\\\'", "SELECT ?"),
    ("SELECT 'a\\' FROM t", "SELECT ? FROM t"),
    ("SELECT N'x', U&'d\\0061t'", "SELECT ?, ?"),
    ("SELECT 'a' 'b'", "SELECT ? ?"),
    // Dollar quotes.
    ("SELECT $$it's$$", "SELECT ?"),
    ("SELECT $fn$ body 'x' $fn$ AS b", "SELECT ? AS b"),
    ("DO $$BEGIN RAISE 'x'; END$$", "DO ?"),
    ("SELECT $a$ $b$ nested $b$ $a$", "SELECT ?"),
    // Bit strings and hex.
    ("SELECT B'1010', X'1F', b'0'", "SELECT ?, ?, ?"),
    ("SELECT 0x1F, 0o17, 0b101", "SELECT ?, ?, ?"),
    // Numbers.
    (
        "SELECT 1, 2.5, .5, 1e10, 1.5E-3, 1_000",
        "SELECT ?, ?, ?, ?, ?, ?",
    ),
    (
        "SELECT * FROM t WHERE a = -1",
        "SELECT * FROM t WHERE a = ?",
    ),
    ("SELECT * FROM t WHERE a=-1.5", "SELECT * FROM t WHERE a=?"),
    ("SELECT a - 1 FROM t", "SELECT a - ? FROM t"),
    ("SELECT a-1, -2, +3", "SELECT a-?, ?, ?"),
    (
        "SELECT col1, t2.col_3 FROM t2",
        "SELECT col1, t2.col_3 FROM t2",
    ),
    ("SELECT a[1:2] FROM t", "SELECT a[?:?] FROM t"),
    // Booleans, NULL.
    (
        "UPDATE t SET a = TRUE, b = false WHERE c IS NULL",
        "UPDATE t SET a = ?, b = ? WHERE c IS NULL",
    ),
    // Casts and typed literals.
    ("SELECT '1'::int, 2::text", "SELECT ?::int, ?::text"),
    (
        "SELECT DATE '2024-01-01', INTERVAL '1 day'",
        "SELECT DATE ?, INTERVAL ?",
    ),
    // Placeholders are kept.
    (
        "SELECT * FROM t WHERE a = $1 AND b = $12",
        "SELECT * FROM t WHERE a = $1 AND b = $12",
    ),
    (
        "SELECT * FROM t WHERE a = %s",
        "SELECT * FROM t WHERE a = %s",
    ),
    // Quoted identifiers are not literals.
    (
        "SELECT \"a'b\", \"x\"\"y\" FROM \"T\"",
        "SELECT \"a'b\", \"x\"\"y\" FROM \"T\"",
    ),
    // Comments are removed.
    ("SELECT 1 -- secret 42\nFROM t", "SELECT ? FROM t"),
    (
        "SELECT /* 'x' /* nested */ 7 */ a FROM t",
        "SELECT a FROM t",
    ),
    ("/*traceparent='00-ab'*/ SELECT 1", "SELECT ?"),
    // Whitespace is normalised.
    ("SELECT\n\t a ,\r\n b  FROM t", "SELECT a , b FROM t"),
    // IN lists collapse.
    (
        "SELECT * FROM t WHERE id IN (1, 2, 3)",
        "SELECT * FROM t WHERE id IN (?)",
    ),
    (
        "SELECT * FROM t WHERE id in ('a','b')",
        "SELECT * FROM t WHERE id in (?)",
    ),
    (
        "SELECT * FROM t WHERE id IN (-1, 2)",
        "SELECT * FROM t WHERE id IN (?)",
    ),
    (
        "SELECT * FROM t WHERE id IN ($1, $2)",
        "SELECT * FROM t WHERE id IN ($1, $2)",
    ),
    (
        "SELECT * FROM t WHERE id IN (SELECT a FROM u)",
        "SELECT * FROM t WHERE id IN (SELECT a FROM u)",
    ),
    (
        "SELECT * FROM t WHERE id = ANY(ARRAY[1, 2, 3])",
        "SELECT * FROM t WHERE id = ANY(ARRAY[?])",
    ),
    // VALUES rows collapse when identical after sanitizing.
    (
        "INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y'), (3, 'z')",
        "INSERT INTO t (a, b) VALUES (?, ?)",
    ),
    (
        "INSERT INTO t VALUES (1, now()), (2, now())",
        "INSERT INTO t VALUES (?, now())",
    ),
    (
        "INSERT INTO t VALUES ($1, $2), ($3, $4)",
        "INSERT INTO t VALUES ($1, $2), ($3, $4)",
    ),
    (
        "INSERT INTO t VALUES (1, 2), (3, DEFAULT)",
        "INSERT INTO t VALUES (?, ?), (?, DEFAULT)",
    ),
    // Multi-statement.
    (
        "BEGIN; UPDATE t SET a = 1 WHERE id = 2; COMMIT;",
        "BEGIN; UPDATE t SET a = ? WHERE id = ?; COMMIT;",
    ),
    // Django ORM style.
    (
        "SELECT \"auth_user\".\"id\", \"auth_user\".\"username\" FROM \"auth_user\" WHERE \"auth_user\".\"username\" = 'admin' LIMIT 21",
        "SELECT \"auth_user\".\"id\", \"auth_user\".\"username\" FROM \"auth_user\" WHERE \"auth_user\".\"username\" = ? LIMIT ?",
    ),
    // Operators that contain ?, jsonb.
    (
        "SELECT d->>'k', d @> '{\"a\":1}' FROM t",
        "SELECT d->>?, d @> ? FROM t",
    ),
    // Truncated text: nothing after an open quote leaks.
    (
        "SELECT * FROM t WHERE a = 'secret",
        "SELECT * FROM t WHERE a = ?",
    ),
    (
        "SELECT * FROM t WHERE a = 'x' AND b = E'sec\\'ret",
        "SELECT * FROM t WHERE a = ? AND b = ?",
    ),
    ("SELECT $$ secret", "SELECT ?"),
    ("SELECT \"unterminated ident 'x", "SELECT ?"),
    ("SELECT 1 /* unterminated 'x'", "SELECT ?"),
    ("SELECT 12", "SELECT ?"),
    // Garbage still comes out with literals removed.
    ("}{ 'x' 5 \\ $ ", "}{ ? ? \\ $"),
    ("", ""),
];

#[test]
fn sanitize_table() {
    assert!(CASES.len() >= 40);
    for (input, want) in CASES {
        assert_eq!(sanitize(input), *want, "input: {input:?}");
    }
}

#[test]
fn sanitized_text_never_contains_literal_values() {
    let secret_queries = [
        "SELECT * FROM u WHERE pw = 'hunter2' AND pin = 4242",
        "INSERT INTO u VALUES (E'hunter2', $q$hunter2$q$, x'4242', 4242.0e1)",
        "UPDATE u SET pw = 'hunter2' -- 4242",
        "SELECT 'hunter2",
    ];
    for q in secret_queries {
        let s = sanitize(q);
        assert!(!s.contains("hunter2") && !s.contains("4242"), "{q} -> {s}");
    }
}

#[test]
fn output_is_bounded_and_valid_utf8() {
    let long = format!("SELECT {} FROM t", "\"é\", ".repeat(50_000));
    let (s, cut) = sanitize_bounded(&long, 1000);
    assert!(cut);
    assert!(s.len() <= 1000);
    assert!(s.starts_with("SELECT \"é\""));
    let (s, cut) = sanitize_bounded("SELECT 1", 1000);
    assert_eq!((s.as_str(), cut), ("SELECT ?", false));
}

/// Found by the `sanitize` fuzz target after ~1.4M executions: invalid UTF-8 around `? FROM`
/// grew past the bound once each bad byte became a 3-byte U+FFFD.
#[test]
fn fuzz_regression_bound_counts_replacement_chars() {
    let input = include_bytes!("../../fuzz/regressions/sanitize/bound-invalid-utf8.bin");
    for max in [0, 1, 2, 3, 7, 100, 1000, 4096, MAX_SANITIZED_LEN] {
        let (text, _, cut) = analyze(input, max);
        assert!(text.len() <= max, "max {max}: {} bytes", text.len());
        if !cut {
            assert_eq!(text, analyze(input, usize::MAX).0);
        }
    }
    // The cut text is as long as the bound allows (less at most one 3-byte character).
    let (text, _, cut) = analyze(input, 4096);
    assert!(cut);
    assert!(text.len() + 3 > 4096, "{} bytes", text.len());
}

#[test]
fn cut_never_splits_a_replacement_char() {
    // "SELECT " then U+FFFD (3 bytes) per invalid byte: a bound inside a U+FFFD steps back.
    let (text, _, cut) = analyze(b"SELECT \xff\xff\xff", 8);
    assert!(cut);
    assert_eq!(text, "SELECT ");
    let (text, _, cut) = analyze(b"SELECT \xff\xff\xff", 10);
    assert!(cut);
    assert_eq!(text, "SELECT \u{fffd}");
    let (text, _, cut) = analyze(b"SELECT \xff\xff\xff", 16);
    assert!(!cut);
    assert_eq!(text, "SELECT \u{fffd}\u{fffd}\u{fffd}");
}

#[test]
fn invalid_utf8_is_replaced_not_rejected() {
    let (s, sum, _) = analyze(b"SELECT \xff\xfe FROM t WHERE a = 'x\xff'", 1000);
    assert!(s.starts_with("SELECT "));
    assert!(s.ends_with("FROM t WHERE a = ?"));
    assert_eq!(sum.summary, "SELECT t");
}

#[test]
fn large_values_lists_collapse() {
    let rows: Vec<String> = (0..10_000).map(|i| format!("({i}, 'name{i}')")).collect();
    let q = format!("INSERT INTO big (id, name) VALUES {}", rows.join(", "));
    assert_eq!(sanitize(&q), "INSERT INTO big (id, name) VALUES (?, ?)");
}

fn sum(sql: &str) -> (Option<String>, Option<String>, String) {
    let s = summarize(sql);
    (s.operation, s.collection, s.summary)
}

fn s3(
    op: Option<&str>,
    coll: Option<&str>,
    summary: &str,
) -> (Option<String>, Option<String>, String) {
    (
        op.map(str::to_string),
        coll.map(str::to_string),
        summary.to_string(),
    )
}

#[test]
fn summarize_table() {
    type Want<'a> = (Option<&'a str>, Option<&'a str>, &'a str);
    let cases: &[(&str, Want)] = &[
        (
            "SELECT \"auth_user\".\"id\" FROM \"auth_user\" WHERE \"auth_user\".\"id\" = 1 LIMIT 21",
            (Some("SELECT"), Some("auth_user"), "SELECT auth_user"),
        ),
        (
            "select * from Variants v join x on x.id = v.id",
            (Some("SELECT"), Some("Variants"), "SELECT Variants"),
        ),
        (
            "SELECT a FROM public.orders",
            (
                Some("SELECT"),
                Some("public.orders"),
                "SELECT public.orders",
            ),
        ),
        (
            "SELECT a FROM \"my\".\"t\"\"q\"",
            (Some("SELECT"), Some("my.t\"q"), "SELECT my.t\"q"),
        ),
        (
            "SELECT (SELECT max(a) FROM inner_t), b FROM outer_t",
            (Some("SELECT"), Some("outer_t"), "SELECT outer_t"),
        ),
        (
            "SELECT * FROM (SELECT * FROM sub) s",
            (Some("SELECT"), Some("sub"), "SELECT sub"),
        ),
        (
            "SELECT EXTRACT(YEAR FROM now())",
            (Some("SELECT"), None, "SELECT"),
        ),
        (
            "SELECT a IS DISTINCT FROM b",
            (Some("SELECT"), None, "SELECT"),
        ),
        ("SELECT 1", (Some("SELECT"), None, "SELECT")),
        (
            "(SELECT a FROM t1) UNION (SELECT a FROM t2)",
            (Some("SELECT"), Some("t1"), "SELECT t1"),
        ),
        (
            "INSERT INTO orders (a) VALUES (1)",
            (Some("INSERT"), Some("orders"), "INSERT orders"),
        ),
        (
            "UPDATE ONLY items SET a = 1",
            (Some("UPDATE"), Some("items"), "UPDATE items"),
        ),
        (
            "DELETE FROM \"django_session\" WHERE 1=1",
            (
                Some("DELETE"),
                Some("django_session"),
                "DELETE django_session",
            ),
        ),
        (
            "WITH recent AS (SELECT * FROM orders WHERE ts > now()) SELECT count(*) FROM recent",
            (Some("SELECT"), Some("recent"), "SELECT recent"),
        ),
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n+1 FROM r) , x AS (SELECT 2) INSERT INTO dst SELECT n FROM r",
            (Some("INSERT"), Some("dst"), "INSERT dst"),
        ),
        (
            "MERGE INTO stock s USING x ON true WHEN MATCHED THEN DELETE",
            (Some("MERGE"), Some("stock"), "MERGE stock"),
        ),
        ("BEGIN", (Some("BEGIN"), None, "BEGIN")),
        ("commit", (Some("COMMIT"), None, "COMMIT")),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            (Some("START TRANSACTION"), None, "START TRANSACTION"),
        ),
        (
            "BEGIN; UPDATE t SET a = 1",
            (None, Some("t"), "BEGIN UPDATE t"),
        ),
        (
            "INSERT INTO t VALUES (1); INSERT INTO t VALUES (2);",
            (Some("INSERT"), Some("t"), "INSERT t"),
        ),
        (
            "CREATE TABLE IF NOT EXISTS foo (id int)",
            (Some("CREATE TABLE"), Some("foo"), "CREATE TABLE foo"),
        ),
        (
            "CREATE UNIQUE INDEX CONCURRENTLY idx ON ONLY bar (a)",
            (Some("CREATE INDEX"), Some("bar"), "CREATE INDEX bar"),
        ),
        (
            "DROP TABLE IF EXISTS foo CASCADE",
            (Some("DROP TABLE"), Some("foo"), "DROP TABLE foo"),
        ),
        (
            "ALTER TABLE foo ADD COLUMN b int",
            (Some("ALTER TABLE"), Some("foo"), "ALTER TABLE foo"),
        ),
        (
            "CREATE MATERIALIZED VIEW mv AS SELECT 1",
            (
                Some("CREATE MATERIALIZED VIEW"),
                None,
                "CREATE MATERIALIZED VIEW",
            ),
        ),
        (
            "COPY orders (a, b) FROM STDIN",
            (Some("COPY"), Some("orders"), "COPY orders"),
        ),
        ("COPY (SELECT 1) TO STDOUT", (Some("COPY"), None, "COPY")),
        (
            "TRUNCATE TABLE a, b",
            (Some("TRUNCATE"), Some("a"), "TRUNCATE a"),
        ),
        ("SET search_path TO public", (Some("SET"), None, "SET")),
        ("SHOW server_version", (Some("SHOW"), None, "SHOW")),
        ("EXECUTE stmt(1, 2)", (Some("EXECUTE"), None, "EXECUTE")),
        (
            "/* c */ -- x\n SELECT a FROM t",
            (Some("SELECT"), Some("t"), "SELECT t"),
        ),
        ("TABLE t", (Some("SELECT"), Some("t"), "SELECT t")),
        ("VALUES (1), (2)", (Some("VALUES"), None, "VALUES")),
        ("frobnicate the database", (None, None, "")),
        ("'just a string'", (None, None, "")),
        ("", (None, None, "")),
        (
            "SELECT * FROM \"unterminated",
            (Some("SELECT"), None, "SELECT"),
        ),
    ];
    for (sql, (op, coll, summary)) in cases {
        assert_eq!(sum(sql), s3(*op, *coll, summary), "sql: {sql:?}");
    }
}

#[test]
fn summary_is_bounded() {
    let many: Vec<String> = (0..200)
        .map(|i| format!("SELECT a FROM table_number_{i}"))
        .collect();
    let s = summarize(&many.join("; "));
    assert!(s.summary.len() <= MAX_SUMMARY_LEN);
    assert!(
        s.summary
            .starts_with("SELECT table_number_0 SELECT table_number_1")
    );
    let long_name = format!("SELECT a FROM \"{}\"", "x".repeat(10_000));
    assert!(summarize(&long_name).summary.len() <= MAX_SUMMARY_LEN);
}

#[test]
fn summary_never_contains_literals() {
    let s = summarize("SELECT 'secret' FROM 'secret2'; INSERT INTO 'x' VALUES (1)");
    assert!(
        !s.summary.contains("secret") && !s.summary.contains('x'),
        "{s:?}"
    );
}

/// Bytes that stress the bound: SQL tokens, quotes and bytes that are not valid UTF-8.
fn sqlish_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    let piece = prop_oneof![
        any::<u8>().prop_map(|b| vec![b]),
        Just(b"\xff".to_vec()),
        Just(b"\xe2\x82".to_vec()),
        Just("é".as_bytes().to_vec()),
        Just(b" ? FROM ".to_vec()),
        Just(b"SELECT ".to_vec()),
        Just(b"'x'".to_vec()),
        Just(b"IN (1, 2, 3)".to_vec()),
        Just(b"VALUES (1), (2)".to_vec()),
        Just(b";".to_vec()),
    ];
    proptest::collection::vec(piece, 0..300).prop_map(|v| v.concat())
}

proptest::proptest! {
    #[test]
    fn bound_holds_for_any_bytes_and_limit(
        bytes in proptest::prop_oneof![
            proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
            sqlish_bytes(),
        ],
        max in 0usize..700,
    ) {
        let (text, _, cut) = analyze(&bytes, max);
        proptest::prop_assert!(text.len() <= max, "{} > {}", text.len(), max);
        if !cut {
            proptest::prop_assert_eq!(text, analyze(&bytes, usize::MAX).0);
        }
    }

    #[test]
    fn sanitize_never_panics_and_is_bounded(s in ".{0,400}") {
        let (out, _) = sanitize_bounded(&s, 200);
        proptest::prop_assert!(out.len() <= 200);
        let _ = summarize(&s);
    }

    #[test]
    fn quoted_values_never_leak(v in "[a-z]{6,12}", prefix in "(SELECT|INSERT INTO t VALUES \\(|UPDATE t SET a =) ?") {
        for q in [format!("{prefix} '{v}'"), format!("{prefix} E'{v}"), format!("{prefix} $x${v}$x$")] {
            let out = sanitize(&q);
            proptest::prop_assert!(!out.contains(&v), "{} -> {}", q, out);
        }
    }
}
