//! End-to-end: an uninstrumented Django app under gunicorn (sync and gthread workers) and
//! Django's runserver, against a real PostgreSQL 15, traced by the real daemon. Asserts the
//! exact span tree per request: the server span, its database children with sanitized text,
//! durations nested inside the parent, error statuses, and an outgoing HTTP call nested the
//! same way down to the downstream server's span.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::Duration;

use common::*;
use sonde_e2e::{
    Django, DjangoOpts, Postgres, Sonde, Span, SpanTree, TestServer, dump_spans, http_get,
    http_post_json,
};

struct App {
    _pg: Postgres,
    django: Django,
    sonde: Sonde,
    pg_port: u16,
}

fn start(opts: DjangoOpts) -> App {
    let pg = Postgres::start();
    let django = Django::start(&pg, opts);
    let pg_port = pg.port();
    let sonde = Sonde::start(&[
        "--port",
        &django.port().to_string(),
        "--port",
        &pg_port.to_string(),
    ]);
    App {
        _pg: pg,
        django,
        sonde,
        pg_port,
    }
}

/// The server span of the request to `path`, and its children in start order.
fn request_tree<'a>(spans: &'a [Span], django_port: u16, path: &str) -> (&'a Span, Vec<&'a Span>) {
    let server = servers(spans, django_port)
        .into_iter()
        .find(|s| s.attr_str("url.path") == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path}\n{}", dump_spans(spans)));
    let tree = SpanTree::new(spans);
    let mut children = tree.children_of(server);
    children.sort_by_key(|s| s.start_ns);
    (server, children)
}

fn assert_nested(parent: &Span, children: &[&Span]) {
    for c in children {
        assert_eq!(c.trace_id, parent.trace_id, "{c:?}");
        assert_eq!(c.parent_span_id, parent.span_id, "{c:?}");
        assert!(
            c.start_ns >= parent.start_ns && c.end_ns <= parent.end_ns,
            "child {:?} [{}, {}] not inside parent [{}, {}]",
            c.name,
            c.start_ns,
            c.end_ns,
            parent.start_ns,
            parent.end_ns
        );
    }
}

fn db_children<'a>(children: &[&'a Span]) -> Vec<&'a Span> {
    children
        .iter()
        .copied()
        .filter(|s| s.attr_str("db.system.name") == Some("postgresql"))
        .collect()
}

fn wait_for_path(app: &App, path: &str, children: usize) -> Vec<Span> {
    let port = app.django.port();
    app.sonde.wait_for_spans(
        |spans| {
            let Some(server) = servers(spans, port)
                .into_iter()
                .find(|s| s.attr_str("url.path") == Some(path))
            else {
                return false;
            };
            SpanTree::new(spans).children_of(server).len() >= children
        },
        WAIT,
    );
    std::thread::sleep(Duration::from_millis(1500));
    app.sonde.spans()
}

fn check_samples_request(app: &App) {
    let (status, _) = http_get(&app.django.url("/samples/"));
    assert_eq!(status, 200);
    let spans = wait_for_path(app, "/samples/", 2);
    let (server, children) = request_tree(&spans, app.django.port(), "/samples/");
    assert_eq!(server.name, "GET /samples/");
    assert_eq!(server.attr_i64("http.response.status_code"), Some(200));
    let db = db_children(&children);
    assert_eq!(
        children.len(),
        2,
        "exactly the two queries\n{}",
        dump_spans(&spans)
    );
    assert_eq!(db.len(), 2);
    assert_nested(server, &children);
    assert_eq!(db[0].name, "SELECT lab_sample");
    assert_eq!(
        db[0].attr_str("db.query.text"),
        Some(r#"SELECT COUNT(*) AS "__count" FROM "lab_sample""#)
    );
    assert_eq!(db[0].attr_str("db.operation.name"), Some("SELECT"));
    assert_eq!(db[0].attr_str("db.collection.name"), Some("lab_sample"));
    assert_eq!(db[0].attr_i64("db.response.returned_rows"), Some(1));
    assert!(
        db[1].name.starts_with("SELECT lab_variant"),
        "{}",
        db[1].name
    );
    assert!(
        db[1].attr_str("db.query.text").unwrap().contains("LIMIT ?"),
        "literal left in {:?}",
        db[1].attr_str("db.query.text")
    );
    assert_eq!(db[1].attr_i64("db.response.returned_rows"), Some(6));
    for s in &db {
        assert_eq!(s.kind, "CLIENT");
        assert_eq!(s.attr_str("db.namespace"), Some("djangoapp"));
        assert_eq!(s.attr_i64("server.port"), Some(i64::from(app.pg_port)));
        assert_eq!(s.status_code, "UNSET");
    }
    // Exactly one set of database spans: the PostgreSQL server's side produces none.
    let all_db: Vec<_> = spans
        .iter()
        .filter(|s| s.attr_str("db.system.name").is_some() && s.trace_id == server.trace_id)
        .collect();
    assert_eq!(
        all_db.len(),
        2,
        "duplicate database spans\n{}",
        dump_spans(&spans)
    );
    // The test process is traced too: its client span is the server span's parent.
    let client = clients(&spans, app.django.port())
        .into_iter()
        .find(|c| c.span_id == server.parent_span_id);
    assert!(
        client.is_some(),
        "server span should be a child of the test's client span\n{}",
        dump_spans(&spans)
    );
}

#[test]
fn gunicorn_sync_workers_nest_queries_under_requests() {
    let app = start(DjangoOpts::default().workers(2).sync());
    check_samples_request(&app);

    let (status, _) = http_get(&app.django.url("/analysis/2"));
    assert_eq!(status, 200);
    let spans = wait_for_path(&app, "/analysis/2", 3);
    let (server, children) = request_tree(&spans, app.django.port(), "/analysis/2");
    assert_eq!(server.name, "GET /analysis/{id}");
    assert_eq!(server.attr_str("http.route"), Some("/analysis/{id}"));
    assert_eq!(
        children.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec![
            "SELECT lab_analysis",
            "SELECT lab_sample",
            "SELECT lab_variant"
        ]
    );
    assert_nested(server, &children);
    for c in &children {
        let text = c.attr_str("db.query.text").unwrap();
        assert!(
            !text.contains(" 2") && !text.contains("'"),
            "literal in {text}"
        );
    }

    let (status, _) = http_post_json(
        &app.django.url("/analysis/"),
        r#"{"status": "secret-status-value", "score": 0.75}"#,
    );
    assert_eq!(status, 201);
    let spans = wait_for_path(&app, "/analysis/", 4);
    let (server, children) = request_tree(&spans, app.django.port(), "/analysis/");
    assert_eq!(server.name, "POST /analysis/");
    assert_eq!(
        children.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec![
            "BEGIN",
            "SELECT lab_sample",
            "INSERT lab_analysis",
            "COMMIT"
        ]
    );
    assert_nested(server, &children);
    let insert = children[2].attr_str("db.query.text").unwrap();
    assert!(
        !insert.contains("secret-status-value") && !insert.contains("0.75"),
        "literal leaked: {insert}"
    );
    let out = format!("{:?}", app.sonde.spans());
    assert!(
        !out.contains("secret-status-value"),
        "a literal reached the output"
    );
}

#[test]
fn database_errors_mark_the_spans() {
    let app = start(DjangoOpts::default());
    let (status, _) = http_get(&app.django.url("/fail/db"));
    assert_eq!(status, 500);
    let spans = wait_for_path(&app, "/fail/db", 1);
    let (server, children) = request_tree(&spans, app.django.port(), "/fail/db");
    assert_eq!(
        server.status_code, "ERROR",
        "5xx is an error on a server span"
    );
    assert_eq!(server.attr_str("error.type"), Some("500"));
    let db = db_children(&children);
    assert_eq!(db.len(), 1, "{}", dump_spans(&spans));
    assert_eq!(db[0].status_code, "ERROR");
    assert_eq!(db[0].attr_str("db.response.status_code"), Some("42601"));
    assert_eq!(db[0].attr_str("error.type"), Some("42601"));
    assert_nested(server, &children);

    let (status, _) = http_get(&app.django.url("/fail/unique"));
    assert_eq!(status, 409);
    let spans = wait_for_path(&app, "/fail/unique", 4);
    let (server, children) = request_tree(&spans, app.django.port(), "/fail/unique");
    assert_eq!(
        server.status_code, "UNSET",
        "409 is not an error on a server span"
    );
    let insert = children
        .iter()
        .find(|s| s.name == "INSERT lab_variant")
        .unwrap_or_else(|| panic!("{}", dump_spans(&spans)));
    assert_eq!(insert.attr_str("db.response.status_code"), Some("23505"));
    assert_eq!(insert.status_code, "ERROR");
    assert_nested(server, &children);
}

#[test]
fn gthread_workers_and_outgoing_http_calls_nest() {
    let downstream = TestServer::start();
    let pg = Postgres::start();
    let django = Django::start(
        &pg,
        DjangoOpts::default().gthread(4).env(
            "DOWNSTREAM_URL",
            &format!("{}/len/42", downstream.base_url()),
        ),
    );
    let sonde = Sonde::start(&[
        "--port",
        &django.port().to_string(),
        "--port",
        &pg.port().to_string(),
        "--port",
        &downstream.port().to_string(),
    ]);
    let app = App {
        _pg: pg,
        django,
        sonde,
        pg_port: 0,
    };
    let (status, _) = http_get(&app.django.url("/call-downstream"));
    assert_eq!(status, 200);
    let spans = wait_for_path(&app, "/call-downstream", 1);
    let (server, children) = request_tree(&spans, app.django.port(), "/call-downstream");
    assert_eq!(children.len(), 1, "{}", dump_spans(&spans));
    let call = children[0];
    assert_eq!(call.kind, "CLIENT");
    assert_eq!(call.name, "GET");
    assert_eq!(
        call.attr_str("url.full"),
        Some(format!("{}/len/42", downstream.base_url()).as_str())
    );
    assert_nested(server, &children);
    // The downstream server is traced too: its span is the child of the Django client span.
    let down = servers(&spans, downstream.port());
    assert_eq!(down.len(), 1);
    assert_eq!(down[0].trace_id, server.trace_id);
    assert_eq!(down[0].parent_span_id, call.span_id);

    // Concurrent requests on gthread workers: each query lands under its own request.
    let threads: Vec<_> = (1..=3)
        .map(|i| {
            let url = app.django.url(&format!("/analysis/{i}"));
            std::thread::spawn(move || http_get(&url).0)
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    for i in 1..=3 {
        let path = format!("/analysis/{i}");
        let spans = wait_for_path(&app, &path, 3);
        let (server, children) = request_tree(&spans, app.django.port(), &path);
        assert_eq!(children.len(), 3, "{}", dump_spans(&spans));
        assert_nested(server, &children);
    }
}

#[test]
fn django_runserver_nests_queries() {
    let app = start(DjangoOpts::default().runserver());
    check_samples_request(&app);
}

#[test]
fn slow_query_dominates_the_request() {
    let app = start(DjangoOpts::default());
    let (status, _) = http_get(&app.django.url("/sql-sleep?ms=400"));
    assert_eq!(status, 200);
    let spans = wait_for_path(&app, "/sql-sleep", 1);
    let (server, children) = request_tree(&spans, app.django.port(), "/sql-sleep");
    let sleep = db_children(&children);
    assert_eq!(sleep.len(), 1, "{}", dump_spans(&spans));
    assert!(
        sleep[0].duration() >= Duration::from_millis(390),
        "{:?}",
        sleep[0]
    );
    assert!(server.duration() >= sleep[0].duration());
    assert_eq!(server.attr_str("url.query"), Some("ms=400"));
    assert_nested(server, &children);
}
