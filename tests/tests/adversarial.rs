//! End-to-end checks from an adversarial run (issue 12): secrets in a traced process's argv
//! and in URL paths never reach any output.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::{process::Command, time::Duration};

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
