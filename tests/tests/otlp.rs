//! End-to-end OTLP layer: a real Django app with the real OpenTelemetry Python SDK sends to
//! sonde's receiver while sonde also traces it with eBPF; the exported trace must be one
//! correct trace (the SDK's server span with sonde's PostgreSQL spans as children, no duplicate
//! server span; with psycopg2 instrumentation on, no duplicate database spans). Also: the
//! daemon keeps serving after garbage, and loses nothing accepted while its sink is down.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::time::Duration;

use common::WAIT;
use sonde_e2e::{
    Django, DjangoOpts, OtlpSink, Postgres, Sonde, Span, SpanTree, TestServer, dump_spans,
    free_port, http_get, http_request,
};

struct Setup {
    _pg: Postgres,
    django: Django,
    sonde: Sonde,
}

fn start(protocol: &str, psycopg2: bool) -> Setup {
    let pg = Postgres::start();
    let (grpc, http) = (free_port(), free_port());
    let endpoint = if protocol == "grpc" {
        format!("http://127.0.0.1:{grpc}")
    } else {
        format!("http://127.0.0.1:{http}")
    };
    let mut opts = DjangoOpts::default()
        .workers(2)
        .otel(protocol, &endpoint)
        .otel_delay_ms(500);
    if psycopg2 {
        opts = opts.otel_psycopg2();
    }
    let django = Django::start(&pg, opts);
    let mut args: Vec<String> = vec![
        "--otlp-grpc-addr".into(),
        format!("127.0.0.1:{grpc}"),
        "--otlp-http-addr".into(),
        format!("127.0.0.1:{http}"),
        "--merge-window-ms".into(),
        "8000".into(),
    ];
    for pid in django.pids() {
        args.push("--pid".into());
        args.push(pid.to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sonde = Sonde::start(&args);
    Setup {
        _pg: pg,
        django,
        sonde,
    }
}

fn is_sdk(span: &Span) -> bool {
    span.scope_name != "sonde"
}

/// Requests /analysis/1 and returns the trace of its SDK server span, once complete.
fn analysis_trace(setup: &Setup, db_children: usize) -> (Span, Vec<Span>) {
    let (status, _) = http_get(&setup.django.url("/analysis/1"));
    assert_eq!(status, 200);
    let pred = |spans: &[Span]| {
        spans
            .iter()
            .filter(|s| is_sdk(s) && s.kind == "SERVER")
            .any(|server| {
                spans
                    .iter()
                    .filter(|c| {
                        c.parent_span_id == server.span_id
                            && c.attr_str("db.system.name")
                                .or(c.attr_str("db.system"))
                                .is_some()
                    })
                    .count()
                    >= db_children
            })
    };
    setup.sonde.wait_for_spans(pred, WAIT);
    std::thread::sleep(Duration::from_millis(2000));
    let spans = setup.sonde.spans();
    let server = spans
        .iter()
        .find(|s| is_sdk(s) && s.kind == "SERVER")
        .cloned()
        .unwrap_or_else(|| panic!("{}", dump_spans(&spans)));
    let trace: Vec<Span> = spans
        .iter()
        .filter(|s| s.trace_id == server.trace_id)
        .cloned()
        .collect();
    (server, trace)
}

fn check_merged_trace(setup: &Setup) {
    let (server, trace) = analysis_trace(setup, 3);
    // The SDK's span is the only server span for the request: the eBPF one was dropped.
    let servers: Vec<_> = setup
        .sonde
        .spans()
        .into_iter()
        .filter(|s| {
            s.kind == "SERVER"
                && s.attr_str("url.path").or(s.attr_str("http.target")) == Some("/analysis/1")
        })
        .collect();
    assert_eq!(
        servers.len(),
        1,
        "duplicate server span\n{}",
        dump_spans(&setup.sonde.spans())
    );
    assert!(is_sdk(&servers[0]));
    let tree = SpanTree::new(&trace);
    let children = tree.children_of(&server);
    let db: Vec<_> = children
        .iter()
        .filter(|s| s.attr_str("db.system.name") == Some("postgresql"))
        .collect();
    assert_eq!(
        db.len(),
        3,
        "sonde's PostgreSQL spans are the SDK server span's children\n{}",
        dump_spans(&trace)
    );
    for d in &db {
        assert_eq!(d.scope_name, "sonde");
        assert_eq!(d.trace_id, server.trace_id);
        assert!(
            d.start_ns + 20_000_000 >= server.start_ns && d.end_ns <= server.end_ns + 20_000_000
        );
    }
    // The SDK span got sonde's resource attributes for its process.
    assert!(
        server.resource_i64("process.pid").is_some(),
        "{:?}",
        server.resource
    );
    assert!(server.resource_str("host.name").is_some());
}

#[test]
fn sdk_over_grpc_and_ebpf_make_one_trace() {
    let setup = start("grpc", false);
    check_merged_trace(&setup);
}

#[test]
fn sdk_over_http_and_ebpf_make_one_trace() {
    let setup = start("http", false);
    check_merged_trace(&setup);
}

#[test]
fn with_psycopg2_instrumentation_there_are_no_duplicate_database_spans() {
    let setup = start("grpc", true);
    let (server, trace) = analysis_trace(&setup, 3);
    let db: Vec<_> = trace
        .iter()
        .filter(|s| {
            s.kind == "CLIENT"
                && (s.attr_str("db.system").is_some() || s.attr_str("db.system.name").is_some())
        })
        .collect();
    assert_eq!(
        db.len(),
        3,
        "one span per query, the SDK's\n{}",
        dump_spans(&trace)
    );
    assert!(db.iter().all(|s| is_sdk(s)), "{}", dump_spans(&trace));
    assert!(db.iter().all(|s| s.parent_span_id == server.span_id));
    // Nowhere else either: no eBPF database span for these queries in any trace.
    let all = setup.sonde.spans();
    let during: Vec<_> = all
        .iter()
        .filter(|s| {
            s.attr_str("db.system")
                .or(s.attr_str("db.system.name"))
                .is_some()
        })
        .filter(|s| {
            s.start_ns + 20_000_000 >= server.start_ns && s.end_ns <= server.end_ns + 20_000_000
        })
        .collect();
    assert_eq!(
        during.len(),
        3,
        "duplicate database spans\n{}",
        dump_spans(&all)
    );
}

#[test]
fn processes_without_an_sdk_keep_full_ebpf_traces_next_to_sdk_ones() {
    let plain = TestServer::start();
    let setup = start("grpc", false);
    let mut sonde = Sonde::start(&["--port", &plain.port().to_string()]);
    assert_eq!(http_get(&format!("{}/len/3", plain.base_url())).0, 200);
    check_merged_trace(&setup);
    let spans = sonde.stop();
    assert!(
        spans
            .iter()
            .any(|s| s.kind == "SERVER"
                && s.attr_i64("server.port") == Some(i64::from(plain.port())))
    );
}

#[test]
fn receiver_refuses_garbage_and_keeps_serving() {
    let setup = start("http", false);
    let port = setup
        .sonde
        .stderr()
        .lines()
        .find_map(|l| {
            l.split("HTTP 127.0.0.1:")
                .nth(1)
                .map(|p| p.trim().to_owned())
        })
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/traces");
    let garbage = http_request(
        "POST",
        &url,
        &[("Content-Type", "application/x-protobuf")],
        b"\xff\xfe\x00garbage",
    )
    .unwrap();
    assert_eq!(garbage.status, 400);
    let wrong = http_request("POST", &url, &[("Content-Type", "text/plain")], b"hi").unwrap();
    assert_eq!(wrong.status, 415);
    let get = http_request("GET", &url, &[], b"").unwrap();
    assert_eq!(get.status, 405);
    let empty = http_request(
        "POST",
        &url,
        &[("Content-Type", "application/x-protobuf")],
        b"",
    )
    .unwrap();
    assert_eq!(empty.status, 200);
    // Still serving: the SDK's spans still arrive and merge.
    check_merged_trace(&setup);
}

#[test]
fn nothing_accepted_is_lost_while_the_sink_is_down() {
    let sink = OtlpSink::start();
    let server = TestServer::start();
    let mut sonde = Sonde::start(&[
        "--port",
        &server.port().to_string(),
        "--output",
        "otlp",
        "--otlp-endpoint",
        &sink.grpc_endpoint(),
        "--otlp-protocol",
        "grpc",
        "--batch-timeout-ms",
        "200",
    ]);
    sink.control(r#"{"down_s": 8}"#).unwrap();
    for i in 0..20 {
        assert_eq!(http_get(&format!("{}/len/{i}", server.base_url())).0, 200);
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        common::servers(&sink.spans(), server.port()).is_empty(),
        "the sink was supposed to be down"
    );
    let spans = sink.wait_for_spans(
        |s| common::servers(s, server.port()).len() >= 20,
        Duration::from_secs(60),
    );
    let mut paths: Vec<_> = common::servers(&spans, server.port())
        .iter()
        .map(|s| s.attr_str("url.path").unwrap().to_owned())
        .collect();
    paths.sort();
    paths.dedup();
    assert_eq!(
        paths.len(),
        20,
        "every span delivered after the sink came back"
    );
    sonde.stop();
}

#[test]
fn a_taken_receiver_port_does_not_stop_the_tracer() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let server = TestServer::start();
    let sonde = Sonde::start(&[
        "--port",
        &server.port().to_string(),
        "--otlp-grpc-addr",
        &format!("127.0.0.1:{port}"),
        "--otlp-http-addr",
        "127.0.0.1:0",
    ]);
    assert!(sonde.stderr().contains("not started"), "{}", sonde.stderr());
    assert_eq!(http_get(&format!("{}/len/1", server.base_url())).0, 200);
    sonde.wait_for_spans(|s| common::servers(s, server.port()).len() == 1, WAIT);
}
