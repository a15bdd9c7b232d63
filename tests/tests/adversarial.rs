//! End-to-end checks from an adversarial run (issue 12): secrets in a traced process's argv
//! and in URL paths never reach any output; what the receiver answers OK is delivered.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use sonde_e2e::{
    OtlpSink, Proc, Sonde, TestDir, TestServer, curl, free_port, python, wait_for_port,
};

/// Secrets placed in the traced server's argv: none may appear in any output.
const ARGV_SECRETS: &[&str] = &[
    "Hunter2Secret",
    "pgRolePw77",
    "Ak9ZqW3xLm5Np7Rt",
    "tok3nV4lue",
];

/// A Python HTTP server whose command line holds passwords, a SQL password and an API key.
fn server_with_secrets_in_argv(dir: &TestDir) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.args([
        "-c",
        "import http.server,sys; http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), \
         http.server.SimpleHTTPRequestHandler).serve_forever()",
        &port.to_string(),
        "--db-password=Hunter2Secret",
        "ALTER ROLE app PASSWORD 'pgRolePw77'",
        "--api-key",
        "Ak9ZqW3xLm5Np7Rt",
        "token=tok3nV4lue",
        "--workers=2",
    ])
    .current_dir(dir.path());
    let proc = Proc::spawn("argv-server", cmd, dir.path()).unwrap();
    wait_for_port(
        sonde_e2e::net::localhost(port),
        Duration::from_secs(20),
        || proc.ensure_running(),
    )
    .unwrap();
    (proc, port)
}

fn assert_no_secret(what: &str, text: &str) {
    for s in ARGV_SECRETS {
        assert!(!text.contains(s), "{what} leaks {s:?}:\n{text}");
    }
}

fn get(port: u16, path: &str) {
    let out = curl(&["-o", "/dev/null", &format!("http://127.0.0.1:{port}{path}")]);
    assert!(out.success, "{}", out.stderr);
}

#[test]
fn argv_secrets_never_leave_in_any_output() {
    let dir = TestDir::new("argv-secrets").unwrap();
    let (_server, port) = server_with_secrets_in_argv(&dir);
    let port_s = port.to_string();

    // Default (json): no command line at all.
    let mut sonde = Sonde::start(&["--port", &port_s]);
    get(port, "/");
    let spans = wait_servers(&sonde, port, 1);
    let srv = servers(&spans, port);
    assert!(
        srv[0].resource_str("process.command_line").is_none(),
        "{:?}",
        srv[0]
    );
    assert!(srv[0].resource_str("process.executable.name").is_some());
    sonde.stop();
    assert_no_secret("--output json (default)", &sonde.stdout());

    // Opted in (json): the command line is there, redacted.
    let mut sonde = Sonde::start(&["--port", &port_s, "--export-command-line"]);
    get(port, "/");
    let spans = wait_servers(&sonde, port, 1);
    let cmdline = servers(&spans, port)[0]
        .resource_str("process.command_line")
        .unwrap()
        .to_owned();
    assert!(cmdline.contains("--db-password=REDACTED"), "{cmdline}");
    assert!(cmdline.contains("PASSWORD 'REDACTED'"), "{cmdline}");
    assert!(cmdline.contains("--workers=2"), "{cmdline}");
    sonde.stop();
    assert_no_secret("--output json --export-command-line", &sonde.stdout());

    // OTLP to an independent sink.
    let sink = OtlpSink::start();
    let mut sonde = Sonde::start(&[
        "--port",
        &port_s,
        "--export-command-line",
        "--output",
        "otlp",
        "--otlp-endpoint",
        &sink.http_endpoint(),
    ]);
    get(port, "/");
    sink.wait_for_spans(|s| !servers(s, port).is_empty(), WAIT);
    sonde.stop();
    let raw = std::fs::read_to_string(sink.out_path()).unwrap();
    assert!(raw.contains("process.command_line"), "{raw}");
    assert_no_secret("OTLP", &raw);

    // Text output.
    let mut sonde = Sonde::start(&[
        "--port",
        &port_s,
        "--export-command-line",
        "--output",
        "text",
    ]);
    get(port, "/");
    std::thread::sleep(Duration::from_secs(2));
    sonde.stop();
    let out = sonde.stdout();
    assert!(out.contains("SERVER GET /"), "{out}");
    assert_no_secret("--output text", &out);
    assert_no_secret("sonde's logs", &sonde.stderr());
}

#[test]
fn token_paths_are_templated_in_names_routes_and_urls() {
    let server = TestServer::start();
    let sonde = Sonde::start(&["--port", &server.port().to_string()]);
    let tokens = [
        ("reset", "Qz7Xm2Lp9Vb4Nk8R"),
        ("invite", "aW52aXRlLWZvci1hbGljZS0yMDI2"),
        (
            "verify",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        ),
        ("unsubscribe", "alice.smith@example.com"),
    ];
    for (prefix, tok) in tokens {
        let out = curl(&[
            "-o",
            "/dev/null",
            &format!("{}/{prefix}/{tok}", server.base_url()),
        ]);
        assert!(out.success, "{}", out.stderr);
    }
    let spans = sonde.wait_for_spans(
        |s| servers(s, server.port()).len() >= 4 && clients(s, server.port()).len() >= 4,
        WAIT,
    );
    std::thread::sleep(Duration::from_millis(1500));
    let out = sonde.stdout();
    for (prefix, tok) in tokens {
        assert!(!out.contains(tok), "token {tok} leaked:\n{out}");
        let name = format!("GET /{prefix}/{{token}}");
        let s = sonde_e2e::expect_span(&spans, "SERVER", &name);
        assert_eq!(s.attr_str("http.route"), Some(&name[4..]));
        assert_eq!(s.attr_str("url.path"), Some(&name[4..]));
    }
    for c in clients(&spans, server.port()) {
        assert!(
            c.attr_str("url.full").unwrap().contains("/{token}"),
            "{c:?}"
        );
    }
}

/// An OTLP/JSON traces request with `n` spans named `name`.
fn flood_request(n: usize, name: &str, seed: u64) -> String {
    let spans: Vec<String> = (0..n)
        .map(|i| {
            let id = seed.wrapping_mul(1_000_003).wrapping_add(i as u64 + 1);
            format!(
                r#"{{"traceId":"{id:032x}","spanId":"{id:016x}","name":"{name}","kind":2,"startTimeUnixNano":"1700000000000000000","endTimeUnixNano":"1700000000001000000","attributes":[{{"key":"i","value":{{"intValue":"{i}"}}}}]}}"#
            )
        })
        .collect();
    format!(
        r#"{{"resourceSpans":[{{"resource":{{"attributes":[{{"key":"service.name","value":{{"stringValue":"flood"}}}}]}},"scopeSpans":[{{"scope":{{"name":"flood"}},"spans":[{}]}}]}}]}}"#,
        spans.join(",")
    )
}

/// What a flood got: spans in requests answered OK, requests refused with a retry hint, and
/// spans in requests whose answer never arrived (connection reset under load: unknown fate).
struct Flood {
    ok_spans: u64,
    refused: u64,
    unknown_spans: u64,
}

/// `clients` threads POST `spans_per_request`-span requests to `url` for `duration`; a refusal
/// (503/429 with Retry-After) is counted and retried after a short pause, as an SDK would.
fn flood(url: &str, clients: usize, spans_per_request: usize, duration: Duration) -> Flood {
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let unknown = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + duration;
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (ok, refused, unknown) = (ok.clone(), refused.clone(), unknown.clone());
            let url = url.to_owned();
            std::thread::spawn(move || {
                let mut seed = (c as u64 + 1) << 40;
                while Instant::now() < end {
                    seed += 1;
                    let body = flood_request(spans_per_request, "flood", seed);
                    let resp = match sonde_e2e::http::http_request(
                        "POST",
                        &url,
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    ) {
                        Ok(r) => r,
                        Err(e) => {
                            eprintln!("flood: {e}");
                            unknown.fetch_add(spans_per_request as u64, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    };
                    match resp.status {
                        200 => {
                            ok.fetch_add(spans_per_request as u64, Ordering::Relaxed);
                        }
                        503 | 429 => {
                            assert!(resp.header("retry-after").is_some(), "no retry hint");
                            refused.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        s => panic!("unexpected status {s}: {}", resp.text()),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    Flood {
        ok_spans: ok.load(Ordering::Relaxed),
        refused: refused.load(Ordering::Relaxed),
        unknown_spans: unknown.load(Ordering::Relaxed),
    }
}

/// Spans answered OK == spans delivered (requests whose answer was lost may or may not be).
fn assert_delivered(f: &Flood, delivered: u64) {
    assert!(
        delivered >= f.ok_spans && delivered <= f.ok_spans + f.unknown_spans,
        "answered OK {} spans (+{} unknown), delivered {delivered}",
        f.ok_spans,
        f.unknown_spans
    );
}

fn receiver_args(http_port: u16) -> Vec<String> {
    [
        "--otlp-http-addr",
        &format!("127.0.0.1:{http_port}"),
        // Nothing else is traced: only the flood reaches the output.
        "--port",
        &free_port().to_string(),
        "--memory-budget-mib",
        "8",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[test]
fn receiver_flood_against_terminal_output_delivers_everything_it_accepted() {
    let http_port = free_port();
    let args = receiver_args(http_port);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sonde = Sonde::start(&args);
    let url = format!("http://127.0.0.1:{http_port}/v1/traces");
    let f = flood(&url, 4, 1000, Duration::from_secs(10));
    let spans = sonde.stop();
    let delivered = spans.iter().filter(|s| s.name == "flood").count() as u64;
    eprintln!(
        "terminal: answered OK {} spans, delivered {delivered}, refused {} requests",
        f.ok_spans, f.refused
    );
    assert!(f.ok_spans > 0);
    assert_delivered(&f, delivered);
    assert!(
        sonde.stderr().contains("0 spans dropped"),
        "{}",
        sonde.stderr()
    );
}

#[test]
fn receiver_flood_against_a_slow_sink_delivers_everything_it_accepted() {
    let sink = OtlpSink::start_failing("delay_s=0.3");
    let http_port = free_port();
    let mut args = receiver_args(http_port);
    args.extend(["--output", "otlp", "--otlp-endpoint"].map(str::to_owned));
    args.push(sink.http_endpoint());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut sonde = Sonde::start(&args);
    let url = format!("http://127.0.0.1:{http_port}/v1/traces");
    let f = flood(&url, 4, 3000, Duration::from_secs(10));
    sonde.stop();
    let delivered = sonde_e2e::spans_from_sink_file(sink.out_path())
        .unwrap()
        .iter()
        .filter(|s| s.name == "flood")
        .count() as u64;
    eprintln!(
        "slow sink: answered OK {} spans, delivered {delivered}, refused {} requests",
        f.ok_spans, f.refused
    );
    assert!(
        f.refused > 0,
        "the flood never filled the queue: the test proves nothing"
    );
    assert_delivered(&f, delivered);
}

#[test]
fn a_sink_outage_is_reported_while_it_lasts_and_when_it_ends() {
    let sink = OtlpSink::start();
    let server = TestServer::start();
    let mut sonde = Sonde::start(&[
        "--port",
        &server.port().to_string(),
        "--output",
        "otlp",
        "--otlp-endpoint",
        &sink.http_endpoint(),
        "--batch-timeout-ms",
        "200",
    ]);
    let startup = sonde.stderr();
    assert!(
        startup.contains(&format!(
            "otlp-http-protobuf (traces -> {}/v1/traces",
            sink.http_endpoint()
        )),
        "the startup summary names the endpoint and protocol:\n{startup}"
    );
    sink.control(r#"{"down_s": 15}"#).unwrap();
    let down_at = Instant::now();
    let mut warned_after = None;
    let mut recovered_after = None;
    let mut i = 0;
    while down_at.elapsed() < Duration::from_secs(60) && recovered_after.is_none() {
        if down_at.elapsed() < Duration::from_secs(20) {
            assert_eq!(
                sonde_e2e::http_get(&format!("{}/len/{i}", server.base_url())).0,
                200
            );
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(250));
        let log = sonde.stderr();
        if warned_after.is_none() && log.contains("is failing") {
            warned_after = Some(down_at.elapsed());
        }
        if log.contains("recovered after") {
            recovered_after = Some(down_at.elapsed());
        }
    }
    let log = sonde.stderr();
    let warned = warned_after.unwrap_or_else(|| panic!("no warning about the outage:\n{log}"));
    assert!(
        warned <= Duration::from_secs(10),
        "warned only after {warned:?}:\n{log}"
    );
    let recovered = recovered_after.unwrap_or_else(|| panic!("no recovery line:\n{log}"));
    eprintln!("outage: warned after {warned:?}, recovery logged after {recovered:?}");
    let failing_line = log.lines().find(|l| l.contains("is failing")).unwrap();
    assert!(
        failing_line.contains(&sink.http_endpoint()),
        "{failing_line}"
    );
    sonde.stop();
    let log = sonde.stderr();
    let summary = log.lines().find(|l| l.contains("sonde: stopped")).unwrap();
    assert!(summary.contains("spans exported"), "{summary}");
    assert!(summary.contains("spans dropped"), "{summary}");
    assert!(summary.contains("lost in the kernel"), "{summary}");
}

/// Resident memory of a process in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[test]
fn memory_returns_near_idle_within_a_minute_after_a_flood() {
    let http_port = free_port();
    let mut sonde = Sonde::start(&[
        "--otlp-http-addr",
        &format!("127.0.0.1:{http_port}"),
        "--port",
        &free_port().to_string(),
    ]);
    std::thread::sleep(Duration::from_secs(3));
    let idle = rss_kib(sonde.pid());
    let peak = Arc::new(AtomicU64::new(idle));
    let pid = sonde.pid();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let url = format!("http://127.0.0.1:{http_port}/v1/traces");
    let f = flood(&url, 2, 5000, Duration::from_secs(10));
    sampling.store(false, Ordering::Relaxed);
    sampler.join().unwrap();
    let peak = peak.load(Ordering::Relaxed);
    let ended = Instant::now();
    // Near idle: within a quarter of what the flood added, and at most 64 MiB above idle.
    let limit = idle + ((peak.saturating_sub(idle)) / 4).min(64 * 1024);
    let mut after = rss_kib(pid);
    while after > limit && ended.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_secs(2));
        after = rss_kib(pid);
    }
    eprintln!(
        "RSS: idle {} MiB, peak {} MiB, {:?} after the flood {} MiB (flood: {} spans accepted)",
        idle / 1024,
        peak / 1024,
        ended.elapsed(),
        after / 1024,
        f.ok_spans
    );
    assert!(
        peak > idle + 20 * 1024,
        "the flood did not load the daemon: peak {peak} KiB"
    );
    assert!(
        after <= limit,
        "RSS {after} KiB a minute after the flood; idle {idle} KiB, peak {peak} KiB"
    );
    sonde.stop();
}

#[test]
fn clients_of_sondes_own_receiver_and_metrics_ports_are_never_traced() {
    let server = TestServer::start();
    let (http_port, metrics_port) = (free_port(), free_port());
    let sonde = Sonde::start(&[
        "--otlp-http-addr",
        &format!("127.0.0.1:{http_port}"),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
        "--port",
        &http_port.to_string(),
        "--port",
        &metrics_port.to_string(),
        "--port",
        &server.port().to_string(),
    ]);
    for _ in 0..3 {
        let body = flood_request(2, "sdk-span", 7);
        let out = curl(&[
            "-o",
            "/dev/null",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &body,
            &format!("http://127.0.0.1:{http_port}/v1/traces"),
        ]);
        assert!(out.success, "{}", out.stderr);
        let out = curl(&[
            "-o",
            "/dev/null",
            &format!("http://127.0.0.1:{metrics_port}/metrics"),
        ]);
        assert!(out.success, "{}", out.stderr);
        let out = curl(&["-o", "/dev/null", &format!("{}/len/1", server.base_url())]);
        assert!(out.success, "{}", out.stderr);
    }
    // The test server's exchanges prove tracing works; by then the others would be there too.
    let spans = sonde.wait_for_spans(
        |s| servers(s, server.port()).len() >= 3 && clients(s, server.port()).len() >= 3,
        WAIT,
    );
    std::thread::sleep(Duration::from_secs(2));
    let spans = [spans, sonde.spans()].concat();
    for port in [http_port, metrics_port] {
        let own: Vec<_> = spans
            .iter()
            .filter(|s| s.attr_i64("server.port") == Some(i64::from(port)))
            .collect();
        assert!(
            own.is_empty(),
            "connections to sonde's port {port} were traced: {own:?}"
        );
    }
    assert!(
        spans.iter().any(|s| s.name == "sdk-span"),
        "the SDK spans were received"
    );
}

/// `sonde run` as an unprivileged user holding exactly `caps` (setpriv), for at most 8 s.
fn run_with_caps(caps: &str) -> (Option<i32>, String) {
    let bin = sonde_e2e::sonde::sonde_bin().unwrap();
    let out = Command::new("timeout")
        .args([
            "-s", "INT", "8", "setpriv", "--reuid", "65534", "--regid", "65534",
        ])
        .args([
            "--clear-groups",
            "--inh-caps",
            caps,
            "--ambient-caps",
            caps,
            "--bounding-set",
            caps,
        ])
        .arg(&bin)
        .args([
            "run",
            "--port",
            "1",
            "--otlp-grpc-addr",
            "off",
            "--otlp-http-addr",
            "off",
        ])
        .args(["--metrics-addr", "off"])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unreadable_tracefs_names_the_missing_capability() {
    // Mounted, as on a node: without CAP_SYS_ADMIN an unmounted tracefs is a different error.
    sonde_e2e::sonde::ensure_tracefs_mounted();
    let (code, err) = run_with_caps("-all,+bpf,+perfmon");
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("CAP_DAC_READ_SEARCH"), "{err}");
    assert!(!err.contains("not mounted"), "{err}");
    // With that capability added, the same user starts.
    let (_, err) = run_with_caps("-all,+bpf,+perfmon,+dac_read_search");
    assert!(err.contains("sonde: ready"), "{err}");
}

/// nginx answers `return 200` to 100 pipelined requests per connection, sent in one write
/// followed by a half-close. Statuses on spans must never be wrong (every span that states a
/// status states 200); the counts are printed for the report.
#[test]
fn pipelined_requests_with_half_close_against_nginx_never_get_a_wrong_status() {
    let nginx = sonde_e2e::Nginx::start(
        sonde_e2e::NginxOpts::default()
            .extra("location = /ok { return 200 \"ok\\n\"; }\nkeepalive_requests 10000;"),
    );
    let sonde = Sonde::start(&["--port", &nginx.port().to_string()]);
    // Two clients at once, 40 connections each: 8,000 requests, as in the adversarial run.
    let connections = 40;
    let port = nginx.port();
    let clients: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut answered = 0usize;
                for _ in 0..connections {
                    let mut client =
                        sonde_e2e::RawHttpClient::connect(("127.0.0.1", port)).unwrap();
                    let mut batch = Vec::new();
                    for i in 0..100 {
                        batch.extend_from_slice(
                            format!(
                                "GET /ok?i={i} HTTP/1.1\r\nHost: n\r\nUser-Agent: pipeline\r\n\r\n"
                            )
                            .as_bytes(),
                        );
                    }
                    client.send(&batch).unwrap();
                    client.shutdown_write().unwrap();
                    let resps = client.read_responses(100).unwrap();
                    answered += resps.iter().filter(|r| r.status == 200).count();
                }
                answered
            })
        })
        .collect();
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert_eq!(answered, 2 * connections * 100);
    let spans = sonde.wait_for_spans(|s| servers(s, nginx.port()).len() >= answered, WAIT);
    std::thread::sleep(Duration::from_secs(2));
    let spans = sonde.spans().into_iter().chain(spans).collect::<Vec<_>>();
    let srv: Vec<_> = servers(&spans, nginx.port())
        .into_iter()
        .filter(|s| s.attr_str("user_agent.original") == Some("pipeline"))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let srv: Vec<_> = srv
        .into_iter()
        .filter(|s| seen.insert(s.span_id.clone()))
        .collect();
    let with_200 = srv
        .iter()
        .filter(|s| s.attr_i64("http.response.status_code") == Some(200))
        .count();
    let wrong: Vec<_> = srv
        .iter()
        .filter(|s| {
            s.attr_i64("http.response.status_code")
                .is_some_and(|c| c != 200)
        })
        .collect();
    eprintln!(
        "pipelined: answered {answered}, server spans {}, spans with 200 {with_200}, wrong {}",
        srv.len(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "statuses nginx never sent: {wrong:?}");
    assert_eq!(srv.len(), answered, "every answered request has its span");
    assert_eq!(
        with_200, answered,
        "every span carries the status nginx sent"
    );
}

/// Noise on pipelined connections to nginx: garbage after a request, an oversized head. Every
/// span's status must be the one nginx sent for that very request (matched by its query), and
/// requests nginx never answered must not carry a status.
#[test]
fn noise_on_pipelined_connections_never_yields_a_wrong_status() {
    let nginx = sonde_e2e::Nginx::start(
        sonde_e2e::NginxOpts::default()
            .extra("location = /ok { return 200 \"ok\\n\"; }\nkeepalive_requests 10000;"),
    );
    let sonde = Sonde::start(&["--port", &nginx.port().to_string()]);
    let req = |c: usize, i: usize, extra: &str| {
        format!("GET /ok?c={c}&i={i} HTTP/1.1\r\nHost: n\r\nUser-Agent: noise\r\n{extra}\r\n")
    };
    let mut sent_status = std::collections::HashMap::new();
    for c in 0..30 {
        let mut batch = String::new();
        for i in 0..5 {
            batch.push_str(&req(c, i, ""));
        }
        match c % 3 {
            0 => batch.push_str("\u{1}\u{2}this is not http at all\r\n\r\n"),
            1 => batch.push_str(&req(c, 5, &format!("X-Big: {}\r\n", "a".repeat(40_000)))),
            _ => batch.push_str("GET /ok?c=x HTTP/1.1 trailing-noise\r\nHost: n\r\n\r\n"),
        }
        for i in 6..9 {
            batch.push_str(&req(c, i, ""));
        }
        let mut client = sonde_e2e::RawHttpClient::connect(("127.0.0.1", nginx.port())).unwrap();
        client.send(batch.as_bytes()).unwrap();
        client.shutdown_write().unwrap();
        // Responses in order until nginx closes; they belong to requests 0, 1, 2, ...
        let mut statuses = Vec::new();
        while let Ok(r) = client.read_response() {
            statuses.push(r.status);
        }
        for (i, st) in statuses.iter().enumerate().take(5) {
            sent_status.insert(format!("c={c}&i={i}"), i64::from(*st));
        }
    }
    std::thread::sleep(Duration::from_secs(3));
    let spans = sonde.spans();
    let srv: Vec<_> = servers(&spans, nginx.port())
        .into_iter()
        .filter(|s| s.attr_str("user_agent.original") == Some("noise"))
        .collect();
    let mut wrong = Vec::new();
    let mut with_status = 0;
    for s in &srv {
        let Some(code) = s.attr_i64("http.response.status_code") else {
            continue;
        };
        with_status += 1;
        if let Some(sent) = s.attr_str("url.query").and_then(|q| sent_status.get(q))
            && *sent != code
        {
            wrong.push(format!(
                "{:?}: span says {code}, nginx sent {sent}",
                s.attr_str("url.query")
            ));
        }
    }
    eprintln!(
        "noise: {} requests answered before the noise, {} spans, {with_status} with a status, {} wrong",
        sent_status.len(),
        srv.len(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "{wrong:#?}");
    let answered_ok: Vec<_> = sent_status.iter().filter(|(_, st)| **st == 200).collect();
    assert_eq!(
        answered_ok.len(),
        150,
        "nginx answered the 5 requests before the noise"
    );
}
