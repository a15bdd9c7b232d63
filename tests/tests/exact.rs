//! End-to-end exactness of traces (issue 11), against a real Django app, real PostgreSQL and the
//! real OpenTelemetry Python SDK:
//!
//! - an SDK configured in code (no `OTEL_*` variable, `BatchSpanProcessor` defaults: 5 s delay),
//!   gunicorn sync and gthread, requests fired as soon as the workers accept: exactly one server
//!   span per request (the SDK's) with the database spans under it, over gRPC and HTTP;
//! - a 20 s request with the SDK: one server span (the SDK's) with its database children;
//! - Django under ASGI (gunicorn's uvicorn workers, and uvicorn itself) with sync views (run on
//!   asgiref's executor thread) and async views (psycopg 3 `AsyncConnection` on the event loop):
//!   exact trees one request at a time; under concurrency 4 and 16 no database span has a wrong
//!   parent (each statement carries its request id as a column alias, `rid_<N>`, so every span
//!   can be matched to the request that sent it) and the share correctly nested is printed.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::{Duration, Instant};

use sonde_e2e::{
    DbDriver, Django, DjangoOpts, Postgres, Sonde, Span, dump_spans, free_port, http_get,
};

fn is_sdk(span: &Span) -> bool {
    span.scope_name != "sonde"
}

fn path_of(span: &Span) -> Option<&str> {
    span.attr_str("url.path")
        .or(span.attr_str("http.target"))
        .map(|t| t.split('?').next().unwrap_or(t))
}

/// The request id a database span's statement carries (`AS rid_<N>`).
fn rid_of_query(span: &Span) -> Option<u32> {
    let text = span.attr_str("db.query.text")?;
    let at = text.find("rid_")?;
    let digits: String = text[at + 4..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Server spans for `/rid/<rid>/<view>`.
fn servers_of<'a>(spans: &'a [Span], rid: u32, view: &str) -> Vec<&'a Span> {
    let path = format!("/rid/{rid}/{view}");
    spans
        .iter()
        .filter(|s| s.kind == "SERVER" && path_of(s) == Some(path.as_str()))
        .collect()
}

fn queries_of(spans: &[Span], rid: u32) -> Vec<&Span> {
    spans
        .iter()
        .filter(|s| s.kind == "CLIENT" && rid_of_query(s) == Some(rid))
        .collect()
}

/// Starts sonde on the app's processes with its receiver on the given ports and its metrics
/// on `metrics`.
fn start_sonde(django: &Django, grpc: u16, http: u16, metrics: u16) -> Sonde {
    let mut args: Vec<String> = vec![
        "--otlp-grpc-addr".into(),
        format!("127.0.0.1:{grpc}"),
        "--otlp-http-addr".into(),
        format!("127.0.0.1:{http}"),
        "--metrics-addr".into(),
        format!("127.0.0.1:{metrics}"),
    ];
    for pid in django.pids() {
        args.push("--pid".into());
        args.push(pid.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Sonde::start(&args)
}

/// Fires `/rid/<first..first+n>/<view>` from `concurrency` client threads.
fn fire(django: &Django, view: &str, first: u32, n: u32, concurrency: u32) {
    let base = django.base_url();
    let next = std::sync::atomic::AtomicU32::new(first);
    std::thread::scope(|s| {
        for _ in 0..concurrency {
            s.spawn(|| {
                loop {
                    let rid = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if rid >= first + n {
                        break;
                    }
                    let (status, body) = http_get(&format!("{base}/rid/{rid}/{view}"));
                    assert_eq!(status, 200, "{body}");
                }
            });
        }
    });
}

/// Whether request `rid` is exact: one server span, `want_sdk` says whose, and its two
/// database spans are its children in its trace. Err: what is wrong.
fn check_exact(spans: &[Span], rid: u32, view: &str, want_sdk: bool) -> Result<(), String> {
    let servers = servers_of(spans, rid, view);
    if servers.len() != 1 {
        return Err(format!("rid {rid}: {} server spans", servers.len()));
    }
    let server = servers[0];
    if is_sdk(server) != want_sdk {
        return Err(format!(
            "rid {rid}: the server span is not the expected one"
        ));
    }
    let queries = queries_of(spans, rid);
    if queries.len() != 2 {
        return Err(format!("rid {rid}: {} database spans", queries.len()));
    }
    for q in queries {
        if q.parent_span_id != server.span_id || q.trace_id != server.trace_id {
            return Err(format!(
                "rid {rid}: database span {} is not a child of the server span",
                q.span_id
            ));
        }
    }
    Ok(())
}

/// Django with the SDK set up in code, `threads` 0 for sync workers; 10 requests fired at once.
fn first_requests_merge(protocol: &str, threads: u32) {
    let pg = Postgres::start();
    let (grpc, http) = (free_port(), free_port());
    let endpoint = format!("127.0.0.1:{}", if protocol == "grpc" { grpc } else { http });
    let mut opts = DjangoOpts::default()
        .workers(2)
        .sdk_in_code(protocol, &endpoint);
    opts = if threads == 0 {
        opts.sync()
    } else {
        opts.gthread(threads)
    };
    let django = Django::start(&pg, opts);
    let sonde = start_sonde(&django, grpc, http, free_port());
    let n = 10;
    fire(&django, "sync", 1, n, 2);
    // Every request's SDK server span and both queries exported (the queries are held until
    // merged or the window ends); then a little longer for any late duplicate.
    sonde.wait_for_spans(
        |s| {
            (1..=n).all(|rid| {
                servers_of(s, rid, "sync").iter().any(|x| is_sdk(x))
                    && queries_of(s, rid).len() >= 2
            })
        },
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(2));
    let spans = sonde.spans();
    let bad: Vec<String> = (1..=n)
        .filter_map(|rid| check_exact(&spans, rid, "sync", true).err())
        .collect();
    eprintln!(
        "exact: first requests, {protocol}, {}: {}/{n} exact",
        if threads == 0 { "sync" } else { "gthread" },
        n as usize - bad.len()
    );
    assert!(bad.is_empty(), "{bad:#?}\n{}", dump_spans(&spans));
}

#[test]
fn first_requests_merge_grpc_sync_workers() {
    first_requests_merge("grpc", 0);
}

#[test]
fn first_requests_merge_http_sync_workers() {
    first_requests_merge("http", 0);
}

#[test]
fn first_requests_merge_grpc_gthread_workers() {
    first_requests_merge("grpc", 4);
}

#[test]
fn first_requests_merge_http_gthread_workers() {
    first_requests_merge("http", 4);
}

#[test]
fn a_20s_request_keeps_one_server_span_with_its_database_children() {
    let pg = Postgres::start();
    let (grpc, http) = (free_port(), free_port());
    let django = Django::start(
        &pg,
        DjangoOpts::default()
            .workers(1)
            .sdk_in_code("grpc", &format!("127.0.0.1:{grpc}")),
    );
    let sonde = start_sonde(&django, grpc, http, free_port());
    // A first request, so the process is known to export before the long one starts.
    fire(&django, "sync", 1, 1, 1);
    sonde.wait_for_spans(
        |s| servers_of(s, 1, "sync").iter().any(|x| is_sdk(x)),
        Duration::from_secs(60),
    );
    let t = Instant::now();
    let (status, _) = http_get(&django.url("/rid/2/sync?sleep_ms=20000"));
    assert_eq!(status, 200);
    assert!(t.elapsed() >= Duration::from_secs(20));
    sonde.wait_for_spans(
        |s| servers_of(s, 2, "sync").iter().any(|x| is_sdk(x)) && queries_of(s, 2).len() >= 2,
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_secs(2));
    let spans = sonde.spans();
    let verdict = check_exact(&spans, 2, "sync", true);
    eprintln!("exact: 20 s request: {verdict:?}");
    assert!(verdict.is_ok(), "{verdict:?}\n{}", dump_spans(&spans));
}

/// Per view: (database spans correctly nested, without a parent, under a wrong parent, total).
#[derive(Debug, Default, Clone, Copy)]
struct Nesting {
    nested: usize,
    orphan: usize,
    wrong: usize,
    total: usize,
}

fn nesting(spans: &[Span], view: &str, rids: std::ops::Range<u32>) -> Nesting {
    let mut n = Nesting::default();
    for rid in rids {
        let servers = servers_of(spans, rid, view);
        for q in queries_of(spans, rid) {
            n.total += 1;
            if q.parent_span_id.is_empty() {
                n.orphan += 1;
            } else if servers
                .iter()
                .any(|s| s.span_id == q.parent_span_id && s.trace_id == q.trace_id)
            {
                n.nested += 1;
            } else {
                n.wrong += 1;
            }
        }
    }
    n
}

/// A counter's value on sonde's /metrics.
fn metric(port: u16, name: &str) -> u64 {
    let (status, body) = http_get(&format!("http://127.0.0.1:{port}/metrics"));
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Runs `n` requests per view at `concurrency` against an ASGI Django; returns the nesting.
fn asgi_run(opts: DjangoOpts, n: u32, concurrency: u32) -> Vec<(&'static str, Nesting, Vec<Span>)> {
    let pg = Postgres::start();
    let django = Django::start(&pg, opts);
    let metrics_port = free_port();
    let sonde = start_sonde(&django, free_port(), free_port(), metrics_port);
    let mut out = Vec::new();
    for (view, first) in [("sync", 1000), ("async", 2000)] {
        fire(&django, view, first, n, concurrency);
        let rids = first..first + n;
        sonde.wait_for_spans(
            |s| {
                rids.clone().all(|rid| {
                    !servers_of(s, rid, view).is_empty() && queries_of(s, rid).len() >= 2
                })
            },
            Duration::from_secs(60),
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    let spans = sonde.spans();
    // Every database span left without a parent was counted as ambiguous.
    let orphans: usize = [("sync", 1000), ("async", 2000)]
        .iter()
        .map(|(view, first)| nesting(&spans, view, *first..*first + n).orphan)
        .sum();
    let ambiguous = metric(metrics_port, "sonde_tracer_spans_parent_ambiguous_total");
    assert!(
        ambiguous >= orphans as u64,
        "{ambiguous} counted ambiguous, {orphans} database spans without a parent"
    );
    for (view, first) in [("sync", 1000), ("async", 2000)] {
        let nest = nesting(&spans, view, first..first + n);
        eprintln!(
            "exact: {:?} c={concurrency} {view} views: {}/{} database spans correctly nested \
             ({:.0}%), {} without parent, {} under a wrong parent",
            django.opts().server,
            nest.nested,
            nest.total,
            100.0 * nest.nested as f64 / nest.total.max(1) as f64,
            nest.orphan,
            nest.wrong
        );
        out.push((view, nest, spans.clone()));
    }
    out
}

/// psycopg 3 (its async API is what async views use; Django then uses it too).
fn asgi_opts() -> DjangoOpts {
    DjangoOpts::default().db_driver(DbDriver::Psycopg3)
}

#[test]
fn asgi_trees_are_exact_one_request_at_a_time() {
    for opts in [
        asgi_opts().uvicorn_worker().workers(2),
        asgi_opts().uvicorn(),
    ] {
        let server = opts.server;
        for (view, nest, spans) in asgi_run(opts, 8, 1) {
            assert_eq!(
                (nest.nested, nest.total),
                (16, 16),
                "{server:?} {view}: {nest:?}\n{}",
                dump_spans(&spans)
            );
            let first = if view == "sync" { 1000 } else { 2000 };
            for rid in first..first + 8 {
                let verdict = check_exact(&spans, rid, view, false);
                assert!(verdict.is_ok(), "{verdict:?}\n{}", dump_spans(&spans));
            }
        }
    }
}

fn asgi_under_concurrency(concurrency: u32) {
    let opts = asgi_opts().uvicorn_worker().workers(2);
    for (view, nest, spans) in asgi_run(opts, 48, concurrency) {
        assert_eq!(
            nest.wrong,
            0,
            "{view} views at concurrency {concurrency}: {nest:?}\n{}",
            dump_spans(&spans)
        );
        assert_eq!(nest.total, 96, "{view}: {nest:?}");
    }
}

#[test]
fn asgi_under_concurrency_4_no_span_has_a_wrong_parent() {
    asgi_under_concurrency(4);
}

#[test]
fn asgi_under_concurrency_16_no_span_has_a_wrong_parent() {
    asgi_under_concurrency(16);
}
