//! End-to-end PostgreSQL capture with real drivers and tools: psycopg2 (simple query,
//! client-side binding), psycopg 3 (server-side binding, prepared statements, pipeline mode),
//! pgbench in all three query modes, errors, COPY, LISTEN/NOTIFY, and a connection pooled
//! before sonde started. Span counts must equal statements run, with sanitized text.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use common::WAIT;
use sonde_e2e::{Postgres, Sonde, Span, dump_spans, python};

fn db_spans(spans: &[Span], port: u16) -> Vec<&Span> {
    let mut v: Vec<&Span> = spans
        .iter()
        .filter(|s| {
            s.attr_str("db.system.name") == Some("postgresql")
                && s.attr_i64("server.port") == Some(i64::from(port))
        })
        .collect();
    v.sort_by_key(|s| s.start_ns);
    v
}

fn named<'a>(spans: &[&'a Span], name: &str) -> Vec<&'a Span> {
    spans.iter().copied().filter(|s| s.name == name).collect()
}

fn workload(pg: &Postgres, scenario: &str) {
    let script = sonde_e2e::apps_dir().join("pgclients/workload.py");
    let out = Command::new(python())
        .arg(script)
        .arg(pg.dsn("postgres"))
        .arg(scenario)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{scenario} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn settle(sonde: &Sonde, port: u16, pred: impl Fn(&[&Span]) -> bool) -> Vec<Span> {
    sonde.wait_for_spans(|s| pred(&db_spans(s, port)), WAIT);
    std::thread::sleep(Duration::from_millis(1500));
    sonde.spans()
}

#[test]
fn psycopg2_simple_protocol_errors_copy_and_notify() {
    let pg = Postgres::start();
    let sonde = Sonde::start(&["--port", &pg.port().to_string()]);
    workload(&pg, "psycopg2_simple");
    let spans = settle(&sonde, pg.port(), |db| {
        db.iter()
            .any(|s| s.attr_str("db.query.text") == Some("SELECT count(*) FROM items"))
    });
    let db = db_spans(&spans, pg.port());
    let inserts = named(&db, "INSERT items");
    assert_eq!(
        inserts.len(),
        4,
        "3 inserts + 1 duplicate\n{}",
        dump_spans(&spans)
    );
    assert_eq!(
        inserts[0].attr_str("db.query.text"),
        Some("INSERT INTO items VALUES (?, ?, ?)")
    );
    assert_eq!(
        inserts[3].attr_str("db.response.status_code"),
        Some("23505")
    );
    assert_eq!(inserts[3].status_code, "ERROR");
    let select = named(&db, "SELECT items");
    assert_eq!(select.len(), 2, "{}", dump_spans(&spans));
    assert_eq!(
        select[0].attr_str("db.query.text"),
        Some("SELECT name FROM items WHERE id = ? AND name <> ?")
    );
    assert_eq!(select[0].attr_i64("db.response.returned_rows"), Some(1));
    let syntax: Vec<_> = db
        .iter()
        .filter(|s| s.attr_str("db.response.status_code") == Some("42601"))
        .collect();
    assert_eq!(syntax.len(), 1);
    let copies: Vec<_> = db
        .iter()
        .filter(|s| s.attr_str("db.operation.name") == Some("COPY"))
        .collect();
    assert_eq!(
        copies.len(),
        2,
        "COPY TO and COPY FROM\n{}",
        dump_spans(&spans)
    );
    assert!(
        db.iter()
            .any(|s| s.attr_str("db.query.text") == Some("LISTEN jobs"))
    );
    assert!(db.iter().any(|s| {
        s.attr_str("db.query.text")
            .is_some_and(|t| t.starts_with("NOTIFY jobs"))
    }));
    for s in &db {
        assert_eq!(s.kind, "CLIENT");
        assert_eq!(s.attr_str("db.namespace"), Some("postgres"));
        let text = s.attr_str("db.query.text").unwrap_or("");
        assert!(
            !text.contains("secret-name")
                && !text.contains("hidden-literal")
                && !text.contains("9.99")
                && !text.contains("payload"),
            "literal leaked: {text}"
        );
    }
    let dump = format!("{spans:?}");
    assert!(
        !dump.contains("secret-name") && !dump.contains("copied"),
        "data leaked into spans"
    );
}

#[test]
fn psycopg3_prepared_statements_and_pipeline_give_one_span_per_execute() {
    let pg = Postgres::start();
    let sonde = Sonde::start(&["--port", &pg.port().to_string()]);
    workload(&pg, "psycopg3_prepared");
    let spans = settle(&sonde, pg.port(), |db| named(db, "SELECT kv").len() >= 4);
    let db = db_spans(&spans, pg.port());
    let inserts = named(&db, "INSERT kv");
    assert_eq!(inserts.len(), 5, "{}", dump_spans(&spans));
    for s in &inserts {
        assert_eq!(
            s.attr_str("db.query.text"),
            Some("INSERT INTO kv VALUES ($1, $2)")
        );
    }
    let selects = named(&db, "SELECT kv");
    assert_eq!(
        selects.len(),
        4,
        "one span per pipelined execute\n{}",
        dump_spans(&spans)
    );
    for s in &selects {
        assert_eq!(
            s.attr_str("db.query.text"),
            Some("SELECT v FROM kv WHERE k = $1")
        );
        assert_eq!(s.attr_i64("db.response.returned_rows"), Some(1));
    }
    let dump = format!("{spans:?}");
    assert!(
        !dump.contains("value-3"),
        "bind parameter values must never be exported"
    );
}

/// Runs pgbench against `pg`'s `bench` database with `args` before the connection options.
fn pgbench(pg: &Postgres, args: &[&str]) {
    let port = pg.port().to_string();
    let out = Command::new("/usr/lib/postgresql/15/bin/pgbench")
        .args(args)
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "postgres", "bench"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pgbench {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pgbench_span_count_equals_statements_run_in_every_mode() {
    let pg = Postgres::start();
    pg.create_database("bench");
    pgbench(&pg, &["-i", "-s", "1", "-q"]);
    let sonde = Sonde::start(&["--port", &pg.port().to_string()]);
    let mut expected = 0;
    for mode in ["simple", "extended", "prepared"] {
        pgbench(
            &pg,
            &["-n", "-S", "-M", mode, "-c", "2", "-j", "1", "-t", "100"],
        );
        expected += 200;
        let spans = settle(&sonde, pg.port(), |db| {
            named(db, "SELECT pgbench_accounts").len() >= expected
        });
        let db = db_spans(&spans, pg.port());
        let selects = named(&db, "SELECT pgbench_accounts");
        assert_eq!(
            selects.len(),
            expected,
            "mode {mode}: 2 clients x 100 transactions"
        );
        let last = selects.last().unwrap();
        let want = if mode == "simple" {
            "SELECT abalance FROM pgbench_accounts WHERE aid = ?"
        } else {
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        };
        // pgbench sends its script line as is, with the trailing semicolon.
        assert_eq!(
            last.attr_str("db.query.text")
                .map(|t| t.trim_end_matches(';')),
            Some(want),
            "mode {mode}"
        );
        assert_eq!(last.attr_str("db.namespace"), Some("bench"));
    }
    assert!(!sonde.stderr().contains("lost"), "{}", sonde.stderr());
}

#[test]
fn connection_pooled_before_sonde_started() {
    let pg = Postgres::start();
    let script = sonde_e2e::apps_dir().join("pgclients/workload.py");
    let mut child = Command::new(python())
        .arg(script)
        .arg(pg.dsn("postgres"))
        .arg("pooled")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert_eq!(line.trim(), "connected");
    let sonde = Sonde::start(&["--port", &pg.port().to_string()]);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(child.wait().unwrap().success());
    let spans = settle(&sonde, pg.port(), |db| db.len() >= 4);
    let db = db_spans(&spans, pg.port());
    assert_eq!(
        db.len(),
        4,
        "three queries and one execution of a statement prepared before start\n{}",
        dump_spans(&spans)
    );
    for s in &db[..3] {
        assert_eq!(s.name, "SELECT pool_t");
        assert_eq!(
            s.attr_str("db.query.text"),
            Some("SELECT count(*) FROM pool_t WHERE id > $1")
        );
    }
    assert_eq!(
        db[3]
            .attr_str("db.query.text")
            .map(|t| t.starts_with("EXECUTE")),
        Some(true),
        "{:?}",
        db[3]
    );
}

#[test]
fn a_20_kib_orm_query_is_captured_whole() {
    let pg = Postgres::start();
    let sonde = Sonde::start(&["--port", &pg.port().to_string()]);
    let columns: Vec<String> = (0..900)
        .map(|i| format!("'value-{i:04}' AS \"column_{i:04}\""))
        .collect();
    let sql = format!(
        "SELECT {} FROM pg_class WHERE relname = 'pg_type'",
        columns.join(", ")
    );
    assert!(sql.len() > 20 * 1024, "{}", sql.len());
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            &sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = settle(&sonde, pg.port(), |db| {
        db.iter().any(|s| s.name == "SELECT pg_class")
    });
    let db = db_spans(&spans, pg.port());
    let big = named(&db, "SELECT pg_class");
    assert_eq!(big.len(), 1, "{}", dump_spans(&spans));
    let text = big[0].attr_str("db.query.text").unwrap();
    assert!(
        text.ends_with("FROM pg_class WHERE relname = ?"),
        "cut short: ...{}",
        &text[text.len().saturating_sub(80)..]
    );
    assert!(
        text.contains("AS \"column_0899\""),
        "middle of the query missing"
    );
    assert!(!text.contains("value-"), "literal leaked");
    assert_eq!(big[0].attr_i64("db.response.returned_rows"), Some(1));
}
