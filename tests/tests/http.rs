//! End-to-end HTTP/1.x capture: the real daemon with real probes against real servers
//! (our test server, nginx, Python's http.server) and real clients (curl, a raw socket
//! client), asserting exact span counts, attributes, kinds and timing order.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::{io::Write, net::TcpStream, time::Duration};

use common::*;
use sonde_e2e::{
    Nginx, NginxOpts, OtlpSink, PyHttpServer, RawHttpClient, Sonde, TestServer, curl, http_get,
    spans_from_sink_file,
};

fn port_arg(port: u16) -> String {
    port.to_string()
}

#[test]
fn keep_alive_connection_with_many_requests() {
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &port_arg(server.port())]);
    let mut client = RawHttpClient::connect(server.addr()).unwrap();
    for i in 0..50 {
        client
            .send(format!("GET /len/{i}?token=secret&i={i} HTTP/1.1\r\nHost: test.local\r\nUser-Agent: sonde-e2e\r\n\r\n").as_bytes())
            .unwrap();
        let resp = client.read_response().unwrap();
        assert_eq!(resp.status, 200);
    }
    let spans = wait_servers(&sonde, server.port(), 50);
    let srv = servers(&spans, server.port());
    assert_eq!(srv.len(), 50, "{}", sonde_e2e::dump_spans(&spans));
    for (i, s) in srv.iter().enumerate() {
        assert_well_formed(s);
        assert_eq!(s.name, "GET /len/{id}");
        assert_eq!(s.attr_str("http.request.method"), Some("GET"));
        assert_eq!(s.attr_str("url.path"), Some(format!("/len/{i}").as_str()));
        assert_eq!(
            s.attr_str("url.query"),
            Some(format!("token=REDACTED&i={i}").as_str())
        );
        assert_eq!(s.attr_str("http.route"), Some("/len/{id}"));
        assert_eq!(s.attr_i64("http.response.status_code"), Some(200));
        assert_eq!(s.attr_str("server.address"), Some("test.local"));
        assert_eq!(s.attr_str("client.address"), Some("127.0.0.1"));
        assert_eq!(s.attr_str("network.protocol.version"), Some("1.1"));
        assert_eq!(s.attr_str("user_agent.original"), Some("sonde-e2e"));
        assert_eq!(s.status_code, "UNSET");
        assert!(
            s.resource_str("service.name")
                .is_some_and(|n| !n.is_empty())
        );
        assert_eq!(s.resource_i64("process.pid"), Some(i64::from(server.pid())));
    }
    // In order, not overlapping: one connection, one request at a time.
    for w in srv.windows(2) {
        assert!(
            w[0].end_ns <= w[1].start_ns,
            "{:?} overlaps {:?}",
            w[0],
            w[1]
        );
    }
    // The test process is the client, traced too: 50 CLIENT spans, each the parent of its
    // server span. When the server's read record reaches sonde before the client's write
    // record (both are emitted at syscall exit, on different CPUs), the server span is moved
    // under its client span when the write arrives (a late link, ARCHITECTURE.md "Parenting
    // rules"); only if the server span left in a flush before that does it stay a root, never
    // another request's child.
    let cl = clients(&spans, server.port());
    assert_eq!(cl.len(), 50);
    let mut unlinked = 0;
    for (c, s) in cl.iter().zip(&srv) {
        assert_eq!(c.name, "GET");
        assert!(
            c.start_ns <= s.start_ns && s.end_ns <= c.end_ns,
            "server span not inside client span"
        );
        if s.parent_span_id.is_empty() {
            unlinked += 1;
            continue;
        }
        assert_eq!(s.trace_id, c.trace_id);
        assert_eq!(s.parent_span_id, c.span_id);
    }
    assert!(
        unlinked <= 2,
        "{unlinked} of 50 server spans lost their client parent"
    );
}

#[test]
fn pipelined_requests_are_paired_in_order() {
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &port_arg(server.port())]);
    let mut client = RawHttpClient::connect(server.addr()).unwrap();
    client
        .send(b"GET /len/1 HTTP/1.1\r\nHost: a\r\n\r\nGET /status/404 HTTP/1.1\r\nHost: a\r\n\r\nGET /len/3 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let resps = client.read_responses(3).unwrap();
    assert_eq!(
        resps.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![200, 404, 200]
    );
    let spans = wait_servers(&sonde, server.port(), 3);
    let srv = servers(&spans, server.port());
    assert_eq!(srv.len(), 3, "{}", sonde_e2e::dump_spans(&spans));
    let statuses: Vec<_> = srv
        .iter()
        .map(|s| s.attr_i64("http.response.status_code").unwrap())
        .collect();
    assert_eq!(statuses, vec![200, 404, 200]);
    assert_eq!(
        srv[1].status_code, "UNSET",
        "4xx is not an error on a server span"
    );
    let paths: Vec<_> = srv
        .iter()
        .map(|s| s.attr_str("url.path").unwrap().to_owned())
        .collect();
    assert_eq!(paths, vec!["/len/1", "/status/404", "/len/3"]);
    let cl = clients(&spans, server.port());
    assert_eq!(cl.len(), 3);
    assert_eq!(
        cl[1].status_code, "ERROR",
        "4xx is an error on a client span"
    );
}

#[test]
fn chunked_responses_and_one_mebibyte_bodies_both_ways() {
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &port_arg(server.port())]);
    let mut client = RawHttpClient::connect(server.addr()).unwrap();
    client
        .send(b"GET /chunked/100000?chunks=7 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let r = client.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 100_000);
    let body = vec![b'x'; 1 << 20];
    let mut req = format!(
        "POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    client.send(&req).unwrap();
    let r = client.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 1 << 20);
    // After both large bodies the stream must still be in sync.
    client
        .send(b"GET /len/5 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);

    let spans = wait_servers(&sonde, server.port(), 3);
    let srv = servers(&spans, server.port());
    assert_eq!(
        srv.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["GET /chunked/{id}", "POST /echo", "GET /len/{id}"]
    );
    for s in &srv {
        assert_eq!(s.attr_i64("http.response.status_code"), Some(200));
        assert_well_formed(s);
    }
    assert_eq!(clients(&spans, server.port()).len(), 3);
}

#[test]
fn expect_continue_and_head_requests() {
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &port_arg(server.port())]);
    let mut client = RawHttpClient::connect(server.addr()).unwrap();
    client
        .send(
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
    assert_eq!(client.read_interim().unwrap(), 100);
    client.send(b"hello").unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    // HEAD: the response carries Content-Length but no body; the GET after it must parse.
    client
        .send(b"HEAD /len/100 HTTP/1.1\r\nHost: a\r\n\r\nGET /len/2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let spans = wait_servers(&sonde, server.port(), 3);
    let srv = servers(&spans, server.port());
    assert_eq!(
        srv.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        vec!["POST /echo", "HEAD /len/{id}", "GET /len/{id}"]
    );
    assert!(
        srv.iter()
            .all(|s| s.attr_i64("http.response.status_code") == Some(200))
    );
}

#[test]
fn a_hundred_concurrent_connections() {
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &port_arg(server.port())]);
    let addr = server.addr();
    let threads: Vec<_> = (0..120)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = RawHttpClient::connect(addr).unwrap();
                c.send(
                    format!("GET /slow/200?n={i} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .unwrap();
                c.read_response().unwrap().status
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 200);
    }
    let spans = wait_servers(&sonde, server.port(), 120);
    let srv = servers(&spans, server.port());
    assert_eq!(srv.len(), 120, "{}", sonde_e2e::dump_spans(&spans));
    let mut queries: Vec<_> = srv
        .iter()
        .map(|s| s.attr_str("url.query").unwrap().to_owned())
        .collect();
    queries.sort();
    queries.dedup();
    assert_eq!(queries.len(), 120, "every request exactly once");
    for s in &srv {
        assert!(
            s.duration() >= Duration::from_millis(190),
            "slow request too fast: {s:?}"
        );
    }
    assert_eq!(clients(&spans, server.port()).len(), 120);
}

#[test]
fn connection_opened_before_sonde_started() {
    let server = TestServer::start();
    let mut client = RawHttpClient::connect(server.addr()).unwrap();
    client
        .send(b"GET /len/1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    assert_eq!(client.read_response().unwrap().status, 200);
    let sonde = Sonde::start(&["--port", &port_arg(server.port())]);
    assert!(sonde.stderr().contains("adopted"), "{}", sonde.stderr());
    for i in 0..3 {
        client
            .send(format!("GET /len/{} HTTP/1.1\r\nHost: a\r\n\r\n", 10 + i).as_bytes())
            .unwrap();
        assert_eq!(client.read_response().unwrap().status, 200);
    }
    let spans = wait_servers(&sonde, server.port(), 3);
    let srv = servers(&spans, server.port());
    assert_eq!(
        srv.iter()
            .map(|s| s.attr_str("url.path").unwrap())
            .collect::<Vec<_>>(),
        vec!["/len/10", "/len/11", "/len/12"]
    );
    assert_eq!(clients(&spans, server.port()).len(), 3);
}

#[test]
fn curl_and_server_both_traced_make_one_trace_and_traceparent_is_honoured() {
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &port_arg(server.port())]);
    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        &format!("{}/len/10", server.base_url()),
    ]);
    assert!(out.status.success());
    let tp_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let tp_span = "00f067aa0ba902b7";
    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-H",
        &format!("traceparent: 00-{tp_trace}-{tp_span}-01"),
        &format!("{}/len/20", server.base_url()),
    ]);
    assert!(out.status.success());
    let spans = wait_servers(&sonde, server.port(), 2);
    let srv = servers(&spans, server.port());
    let cl = clients(&spans, server.port());
    assert_eq!(
        (srv.len(), cl.len()),
        (2, 2),
        "{}",
        sonde_e2e::dump_spans(&spans)
    );
    assert_eq!(cl[0].resource_str("service.name"), Some("curl"));
    assert_eq!(srv[0].trace_id, cl[0].trace_id);
    assert_eq!(srv[0].parent_span_id, cl[0].span_id);
    assert!(cl[0].is_root());
    // An incoming traceparent wins: the server span joins the caller's trace.
    assert_eq!(srv[1].trace_id, tp_trace);
    assert_eq!(srv[1].parent_span_id, tp_span);
}

#[test]
fn garbage_on_a_traced_port_is_ignored() {
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &port_arg(server.port())]);
    {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        let mut junk = vec![0u8; 64 * 1024];
        for (i, b) in junk.iter_mut().enumerate() {
            *b = (i * 7 % 251) as u8;
        }
        let _ = s.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
        let _ = s.write_all(&junk);
        std::thread::sleep(Duration::from_millis(200));
    }
    {
        let mut s = TcpStream::connect(server.addr()).unwrap();
        let _ = s.write_all(b"NOT HTTP AT ALL\r\n\r\n\x00\x01\x02");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (status, _) = http_get(&format!("{}/len/3", server.base_url()));
    assert_eq!(status, 200);
    let spans = wait_servers(&sonde, server.port(), 1);
    let srv = servers(&spans, server.port());
    assert_eq!(srv.len(), 1, "{}", sonde_e2e::dump_spans(&spans));
    assert_eq!(srv[0].attr_str("url.path"), Some("/len/3"));
    assert!(
        sonde.proc().is_running(),
        "sonde died on garbage input:\n{}",
        sonde.stderr()
    );
}

#[test]
fn server_killed_mid_request_ends_its_span_as_an_error() {
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &port_arg(server.port())]);
    let addr = server.addr();
    let client = std::thread::spawn(move || {
        let mut c = RawHttpClient::connect(addr).unwrap();
        c.send(b"GET /slow/10000 HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap();
        c.read_response().is_err()
    });
    std::thread::sleep(Duration::from_millis(700));
    server.proc().signal_group(libc::SIGKILL).unwrap();
    assert!(
        client.join().unwrap(),
        "the client should see the connection die"
    );
    let spans = wait_servers(&sonde, server.port(), 1);
    let srv = servers(&spans, server.port());
    assert_eq!(srv.len(), 1, "{}", sonde_e2e::dump_spans(&spans));
    assert_eq!(srv[0].status_code, "ERROR");
    assert_eq!(srv[0].attr_str("error.type"), Some("response_missing"));
    assert!(
        srv[0].duration() >= Duration::from_millis(500)
            && srv[0].duration() < Duration::from_secs(9),
        "{:?}",
        srv[0]
    );
    let cl = clients(&spans, server.port());
    assert_eq!(cl.len(), 1);
    assert_eq!(cl[0].status_code, "ERROR");
}

#[test]
fn nginx_and_python_http_server() {
    let nginx = Nginx::start(NginxOpts::default().static_file("big.bin", 300_000));
    let py = PyHttpServer::start(&[("file.txt", 1000)]);
    let sonde = Sonde::start(&[
        "--port",
        &port_arg(nginx.port()),
        "--port",
        &port_arg(py.port()),
    ]);
    for _ in 0..3 {
        assert_eq!(http_get(&nginx.url("/")).0, 200);
    }
    assert_eq!(http_get(&nginx.url("/big.bin")).0, 200);
    assert_eq!(http_get(&nginx.url("/missing/42")).0, 404);
    assert_eq!(http_get(&py.url("/file.txt")).0, 200);
    let out = curl(&["-s", "-o", "/dev/null", &py.url("/nope/123")]);
    assert!(out.status.success());
    let spans = wait_servers(&sonde, nginx.port(), 5);
    let ng = servers(&spans, nginx.port());
    assert_eq!(ng.len(), 5, "{}", sonde_e2e::dump_spans(&spans));
    assert_eq!(
        ng.iter()
            .map(|s| s.attr_i64("http.response.status_code").unwrap())
            .collect::<Vec<_>>(),
        vec![200, 200, 200, 200, 404]
    );
    assert_eq!(ng[0].resource_str("process.executable.name"), Some("nginx"));
    let spans = wait_servers(&sonde, py.port(), 2);
    let ps = servers(&spans, py.port());
    assert_eq!(ps.len(), 2);
    assert_eq!(ps[0].attr_str("network.protocol.version"), Some("1.1"));
    assert_eq!(ps[1].name, "GET /nope/{id}");
    assert_eq!(ps[1].attr_i64("http.response.status_code"), Some(404));
}

fn export_to_sink(protocol: &str) {
    let sink = OtlpSink::start();
    let server = TestServer::start();
    let endpoint = if protocol == "grpc" {
        sink.grpc_endpoint()
    } else {
        sink.http_endpoint()
    };
    let mut sonde = Sonde::start(&[
        "--port",
        &port_arg(server.port()),
        "--output",
        "otlp",
        "--otlp-endpoint",
        &endpoint,
        "--otlp-protocol",
        protocol,
    ]);
    for i in 0..5 {
        assert_eq!(http_get(&format!("{}/len/{i}", server.base_url())).0, 200);
    }
    let spans = sink.wait_for_spans(|s| servers(s, server.port()).len() >= 5, WAIT);
    let srv = servers(&spans, server.port());
    assert_eq!(srv.len(), 5);
    assert!(srv.iter().all(|s| s.name == "GET /len/{id}"));
    sonde.stop();
    let after = spans_from_sink_file(sink.out_path()).unwrap();
    assert_eq!(
        servers(&after, server.port()).len(),
        5,
        "no duplicates after the shutdown flush"
    );
}

#[test]
fn export_over_otlp_grpc_to_an_independent_sink() {
    export_to_sink("grpc");
}

#[test]
fn export_over_otlp_http_to_an_independent_sink() {
    export_to_sink("http/protobuf");
}

#[test]
fn text_output_is_the_default_and_flushes_on_sigterm() {
    let server = TestServer::start();
    let dir = sonde_e2e::TestDir::new("sonde-text").unwrap();
    let mut cmd = std::process::Command::new(sonde_e2e::sonde::sonde_bin().unwrap());
    cmd.args([
        "run",
        "--port",
        &port_arg(server.port()),
        "--otlp-grpc-addr",
        "off",
        "--otlp-http-addr",
        "off",
        "--batch-timeout-ms",
        "60000",
    ]);
    let proc = sonde_e2e::Proc::spawn("sonde-text", cmd, dir.path()).unwrap();
    proc.wait_for_line("sonde: ready", Duration::from_secs(60))
        .unwrap();
    assert_eq!(http_get(&format!("{}/len/7", server.base_url())).0, 200);
    std::thread::sleep(Duration::from_millis(500));
    // The batch timeout is a minute: the span can only appear through the SIGTERM flush.
    let status = proc.stop_gracefully(Duration::from_secs(30)).unwrap();
    assert!(status.success(), "{}", proc.stderr());
    let out = proc.stdout();
    let line = out
        .lines()
        .find(|l| l.contains("SERVER GET /len/{id}"))
        .unwrap_or_else(|| panic!("no server span line in:\n{out}"));
    assert!(line.contains("http.response.status_code=200"), "{line}");
}

#[test]
fn self_metrics_are_exposed_and_promtool_clean() {
    let server = TestServer::start();
    let metrics_port = sonde_e2e::free_port();
    let sonde = Sonde::start(&[
        "--port",
        &port_arg(server.port()),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    for i in 0..10 {
        assert_eq!(http_get(&format!("{}/len/{i}", server.base_url())).0, 200);
    }
    wait_servers(&sonde, server.port(), 10);
    let (status, body) = http_get(&format!("http://127.0.0.1:{metrics_port}/metrics"));
    assert_eq!(status, 200);
    let value = |name: &str| -> u64 {
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert!(value("sonde_tracer_spans_total") >= 20, "{body}");
    assert_eq!(value("sonde_ringbuf_lost_records_total"), 0);
    assert!(
        body.contains("sonde_ringbuf_lost_records_total{cpu=\"0\"}"),
        "lost records are per CPU"
    );
    assert!(value("sonde_exporter_exported_items_total") >= 10, "{body}");
    let mut check = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ipv6_loopback_and_child_processes_of_a_chosen_pid() {
    let py = PyHttpServer::start(&[("six.txt", 10)]);
    // A server on ::1, traced by pid: http.server is one process; --pid also covers the
    // workers of servers that fork (tested with gunicorn in django.rs via its master pid).
    let dir = sonde_e2e::TestDir::new("v6").unwrap();
    let port = sonde_e2e::free_port();
    let mut cmd = std::process::Command::new(sonde_e2e::python());
    cmd.args(["-m", "http.server", "--bind", "::1", &port.to_string()])
        .current_dir(dir.path());
    let server = sonde_e2e::Proc::spawn("v6-server", cmd, dir.path()).unwrap();
    server
        .wait_for_line("Serving HTTP", Duration::from_secs(20))
        .unwrap();
    let sonde = Sonde::start(&[
        "--pid",
        &server.pid().to_string(),
        "--pid",
        &py.pid().to_string(),
    ]);
    let out = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-g",
        &format!("http://[::1]:{port}/"),
    ]);
    assert!(out.status.success());
    let spans = wait_servers(&sonde, port, 1);
    let srv = servers(&spans, port);
    assert_eq!(srv.len(), 1, "{}", sonde_e2e::dump_spans(&spans));
    assert_eq!(srv[0].attr_str("network.peer.address"), Some("::1"));
    assert_eq!(clients(&spans, port).len(), 0, "curl is not a chosen pid");
}

#[test]
fn bad_configuration_and_missing_privileges_are_clear_errors() {
    let bin = sonde_e2e::sonde::sonde_bin().unwrap();
    let out = std::process::Command::new(&bin)
        .args(["run", "--capture-bytes", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capture-bytes"));
    let out = std::process::Command::new(&bin)
        .args(["run", "--otlp-grpc-addr", "999.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("otlp-grpc-addr"));
    let out = std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(&bin)
        .args([
            "run",
            "--otlp-grpc-addr",
            "off",
            "--otlp-http-addr",
            "off",
            "--metrics-addr",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs root") && err.contains("CAP_BPF"),
        "{err}"
    );
}

#[test]
fn tracefs_missing_is_mounted_by_the_daemon() {
    // In a private mount namespace without tracefs, the daemon mounts it itself and starts.
    let bin = sonde_e2e::sonde::sonde_bin().unwrap();
    let script = format!(
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug/tracing 2>/dev/null; test ! -e /sys/kernel/tracing/events || exit 90; \
         timeout -s INT 8 {} run --port 1 --otlp-grpc-addr off --otlp-http-addr off --metrics-addr off",
        bin.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(
        out.status.code(),
        Some(90),
        "could not set up a namespace without tracefs"
    );
    assert!(
        err.contains("mounted tracefs") && err.contains("sonde: ready"),
        "{err}"
    );
}

#[test]
fn head_sampling_follows_otel_traces_sampler_and_the_callers_decision() {
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &port_arg(server.port())]);
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    let sampled = "00-5bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for tp in [unsampled, sampled] {
        let mut c = RawHttpClient::connect(server.addr()).unwrap();
        c.send(format!("GET /len/1 HTTP/1.1\r\nHost: a\r\ntraceparent: {tp}\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(c.read_response().unwrap().status, 200);
    }
    let spans = wait_servers(&sonde, server.port(), 1);
    let srv = servers(&spans, server.port());
    assert_eq!(
        srv.len(),
        1,
        "the caller's unsampled decision is followed\n{}",
        sonde_e2e::dump_spans(&spans)
    );
    assert_eq!(srv[0].trace_id, "5bf92f3577b34da6a3ce929d0e0e4736");

    let mut off = Sonde::start_with_env(
        &["--port", &port_arg(server.port())],
        &[("OTEL_TRACES_SAMPLER", "always_off")],
    );
    for i in 0..5 {
        assert_eq!(http_get(&format!("{}/len/{i}", server.base_url())).0, 200);
    }
    std::thread::sleep(Duration::from_millis(1500));
    let spans = off.stop();
    assert!(
        spans.is_empty(),
        "always_off exports nothing\n{}",
        sonde_e2e::dump_spans(&spans)
    );
    assert!(off.stderr().contains(" 0 spans"), "{}", off.stderr());
}
