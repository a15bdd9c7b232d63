//! End-to-end TLS capture through the OpenSSL uprobes: real nginx terminating TLS (system
//! libssl), curl and Python as HTTPS clients, PostgreSQL 15 with `ssl=on` and psycopg2's own
//! vendored libssl, with self-signed certificates made by `openssl` here. Asserts the spans
//! are the plaintext ones (https scheme), that the ciphertext gives no garbage or duplicate
//! spans, that a connection opened before sonde started is traced from its next request, and
//! that a seccomp-filtered process that forbids the uretprobe syscall survives the probes.
//! A Django app under gunicorn with libpq's default sslmode gives the plaintext Django span
//! trees, on a pooled connection opened before sonde and on one opened after.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]
mod common;

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use sonde_e2e::{
    Django, DjangoOpts, Nginx, NginxOpts, Postgres, Sonde, Span, SpanTree, TestDir, curl,
    dump_spans, http_get, python,
};

/// Runs `cmd` to completion; panics with its output if it fails. Returns its stdout.
fn run_ok(cmd: &mut Command) -> String {
    sonde_e2e::run_command(cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// The spans once `n` SERVER and `n` CLIENT spans arrived, plus 1.5 s for any extra one (the
/// tests then assert exact counts).
fn settled_exchanges(sonde: &Sonde, n: usize) -> Vec<Span> {
    sonde.wait_for_spans(
        |s| all_kind(s, "SERVER").len() >= n && all_kind(s, "CLIENT").len() >= n,
        WAIT,
    );
    std::thread::sleep(Duration::from_millis(1500));
    sonde.spans()
}

/// A self-signed certificate and key for `localhost` / 127.0.0.1.
fn self_signed(dir: &TestDir) -> (PathBuf, PathBuf) {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            // An end-entity certificate (rustls refuses a CA as the server certificate).
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    );
    (cert, key)
}

/// nginx with a second, TLS listener on a free port; returns (nginx, tls port).
fn nginx_tls(dir: &TestDir) -> (Nginx, u16) {
    let (cert, key) = self_signed(dir);
    let port = sonde_e2e::free_port();
    let nginx = Nginx::start(
        NginxOpts::default()
            .static_file("big.bin", 1 << 20)
            .extra(&format!(
                "    listen 127.0.0.1:{port} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};",
                cert.display(),
                key.display()
            )),
    );
    (nginx, port)
}

fn all_kind<'a>(spans: &'a [Span], kind: &str) -> Vec<&'a Span> {
    let mut v: Vec<&Span> = spans.iter().filter(|s| s.kind == kind).collect();
    v.sort_by_key(|s| s.start_ns);
    v
}

#[test]
fn https_nginx_server_and_curl_client_keep_alive_and_one_mebibyte() {
    let dir = TestDir::new("tls-nginx").unwrap();
    let (nginx, port) = nginx_tls(&dir);
    let sonde = Sonde::start(&["--port", &port.to_string()]);
    // A process started after sonde: curl, three requests on one keep-alive connection,
    // the last one a 1 MiB body.
    let base = format!("https://127.0.0.1:{port}");
    let out = curl(&[
        "-sk",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        "-o",
        "/dev/null",
        &format!("{base}/?token=secret"),
        &format!("{base}/file.txt"),
        &format!("{base}/big.bin"),
    ]);
    assert!(out.status.success());
    let spans = settled_exchanges(&sonde, 3);
    let srv = all_kind(&spans, "SERVER");
    let cl = all_kind(&spans, "CLIENT");
    assert_eq!((srv.len(), cl.len()), (3, 3), "{}", dump_spans(&spans));
    for s in &srv {
        assert_well_formed(s);
        assert_eq!(s.attr_str("url.scheme"), Some("https"), "{s:?}");
        assert_eq!(s.attr_i64("http.response.status_code"), Some(200));
        assert_eq!(
            s.resource_i64("process.pid").map(|p| p as u32),
            nginx.worker_pids().first().copied()
        );
    }
    assert_eq!(srv[0].attr_str("url.query"), Some("token=REDACTED"));
    assert_eq!(srv[2].attr_str("url.path"), Some("/big.bin"));
    let urls: Vec<_> = cl
        .iter()
        .map(|c| c.attr_str("url.full").unwrap_or(""))
        .collect();
    assert_eq!(
        urls,
        vec![
            format!("{base}/?token=REDACTED"),
            format!("{base}/file.txt"),
            format!("{base}/big.bin"),
        ],
        "{}",
        dump_spans(&spans)
    );
    // One trace per request across curl and nginx: the 4-tuple correlation works over TLS
    // because a write's plaintext is emitted at its first write syscall, before the peer
    // can read it.
    for (c, s) in cl.iter().zip(&srv) {
        assert_eq!(c.resource_str("service.name"), Some("curl"));
        assert_eq!(s.trace_id, c.trace_id, "{}", dump_spans(&spans));
        assert_eq!(s.parent_span_id, c.span_id);
    }
}

/// A Python HTTPS client (system libssl through `_ssl`) that connects and sends one request
/// BEFORE sonde starts, waits for a line on stdin, then sends `n` more on the same keep-alive
/// connection. With `seccomp`, it first installs a filter that kills the process on the
/// uretprobe syscall (x86_64 335): if the kernel let that filter see uretprobe returns, the
/// process would die with SIGSYS.
const PY_CLIENT: &str = r#"
import ctypes, http.client, ssl, struct, sys
port, n, use_seccomp = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if use_seccomp:
    libc = ctypes.CDLL(None, use_errno=True)
    # BPF: A = seccomp_data.nr; if A == 335 -> KILL_PROCESS else ALLOW
    insns = [(0x20, 0, 0, 0), (0x15, 0, 1, 335), (0x06, 0, 0, 0x80000000), (0x06, 0, 0, 0x7fff0000)]
    raw = b"".join(struct.pack("HBBI", *i) for i in insns)
    buf = ctypes.create_string_buffer(raw)
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = Prog(len(insns), ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
conn.request("GET", "/file.txt?before=1")
conn.getresponse().read()
print("connected", flush=True)
sys.stdin.readline()
for i in range(n):
    conn.request("GET", f"/file.txt?i={i}")
    r = conn.getresponse()
    r.read()
    assert r.status == 200
print("done", flush=True)
"#;

/// Installs a filter that kills the process on syscall `nr`, then makes that syscall.
const SECCOMP_CONTROL: &str = r#"
import ctypes, struct, sys
nr = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
insns = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x80000000), (0x06, 0, 0, 0x7fff0000)]
raw = b"".join(struct.pack("HBBI", *i) for i in insns)
buf = ctypes.create_string_buffer(raw)
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
prog = Prog(len(insns), ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0
libc.syscall(nr)
"#;

/// The filter used below works (getpid is killed with SIGSYS), and on this kernel it never
/// sees the uretprobe syscall: called directly outside the trampoline, 335 gets the kernel's
/// SIGILL, not the filter's SIGSYS ("seccomp: passthrough uretprobe systemcall").
#[test]
fn seccomp_filters_do_not_see_the_uretprobe_syscall_on_this_kernel() {
    use std::os::unix::process::ExitStatusExt;
    let dir = TestDir::new("seccomp").unwrap();
    let script = dir.join("control.py");
    std::fs::write(&script, SECCOMP_CONTROL).unwrap();
    let signal = |nr: &str| {
        Command::new(python())
            .arg(&script)
            .arg(nr)
            .status()
            .unwrap()
            .signal()
    };
    assert_eq!(signal("39"), Some(libc_sig::SIGSYS));
    assert_eq!(signal("335"), Some(libc_sig::SIGILL));
}

mod libc_sig {
    pub const SIGILL: i32 = 4;
    pub const SIGSYS: i32 = 31;
}

#[test]
fn tls_connection_opened_before_sonde_and_uretprobes_spare_seccomp_filtered_processes() {
    let dir = TestDir::new("tls-pre").unwrap();
    let (_nginx, port) = nginx_tls(&dir);
    let script = dir.join("client.py");
    std::fs::write(&script, PY_CLIENT).unwrap();
    let mut child = Command::new(python())
        .arg(&script)
        .args([&port.to_string(), "20", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "connected");
    let sonde = Sonde::start(&["--port", &port.to_string()]);
    writeln!(child.stdin.as_mut().unwrap()).unwrap();
    let done = lines.next().map(|l| l.unwrap_or_default());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        status.success() && done.as_deref() == Some("done"),
        "the seccomp-filtered client died with the uretprobes attached: {status:?} {stderr}"
    );
    let spans = settled_exchanges(&sonde, 20);
    let srv = all_kind(&spans, "SERVER");
    let cl = all_kind(&spans, "CLIENT");
    // Exactly the 20 requests after sonde started, on both sides; none for the one before.
    assert_eq!((srv.len(), cl.len()), (20, 20), "{}", dump_spans(&spans));
    for (i, (c, s)) in cl.iter().zip(&srv).enumerate() {
        assert_eq!(s.attr_str("url.scheme"), Some("https"));
        assert_eq!(s.attr_str("url.query"), Some(format!("i={i}").as_str()));
        assert_eq!(
            c.attr_str("url.full"),
            Some(format!("https://127.0.0.1:{port}/file.txt?i={i}").as_str())
        );
    }
}

/// Enables TLS on a running cluster with a fresh self-signed certificate.
fn enable_ssl(pg: &Postgres, dir: &TestDir) {
    let (cert, key) = self_signed(dir);
    for f in [&cert, &key] {
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(f)
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    // The directory must be reachable by the postgres user.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    pg.psql(
        "postgres",
        &format!("ALTER SYSTEM SET ssl_cert_file = '{}'", cert.display()),
    );
    pg.psql(
        "postgres",
        &format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
    );
    pg.psql("postgres", "ALTER SYSTEM SET ssl = on");
    pg.psql("postgres", "SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(500));
}

const PG_CLIENT: &str = r#"
import sys, time
driver, dsn, tag = sys.argv[1], sys.argv[2], sys.argv[3]
if driver == "psycopg2":
    import psycopg2 as pg
else:
    import psycopg as pg
# Like an application that imports its driver at start and queries later: the vendored
# libssl the import just loaded is found by sonde (its exec scans, else the 1 s rescan) first.
time.sleep(1.5)
conn = pg.connect(dsn)
cur = conn.cursor()
cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
print(cur.fetchone()[0], flush=True)
for i in range(3):
    cur.execute("SELECT %s::text AS tag, %s::int AS i", (tag, i))
    cur.fetchall()
conn.commit()
conn.close()
"#;

fn pg_client(dir: &TestDir, driver: &str, dsn: &str, tag: &str) -> String {
    let script = dir.join("pgclient.py");
    std::fs::write(&script, PG_CLIENT).unwrap();
    let stdout = run_ok(Command::new(python()).arg(&script).args([driver, dsn, tag]));
    stdout.trim().to_owned()
}

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

#[test]
fn postgres_over_tls_psycopg2_vendored_libssl_psycopg3_and_refused_ssl() {
    let dir = TestDir::new("tls-pg").unwrap();
    let mut plain = Postgres::start();
    let pg = Postgres::start();
    enable_ssl(&pg, &dir);
    pg.create_database("shop");
    plain.create_database("shop");
    let sonde = Sonde::start(&[
        "--port",
        &pg.port().to_string(),
        "--port",
        &plain.port().to_string(),
    ]);
    // Default sslmode (prefer) with psycopg2's own libssl (psycopg2_binary.libs), loaded by a
    // process that starts after sonde; then sslmode=require with psycopg 3 (system libssl).
    let dsn = pg.dsn("shop");
    assert_eq!(pg_client(&dir, "psycopg2", &dsn, "p2"), "True");
    assert_eq!(
        pg_client(&dir, "psycopg", &format!("{dsn} sslmode=require"), "p3"),
        "True"
    );
    // The server without ssl answers the SSLRequest 'N': the startup follows in clear.
    assert_eq!(
        pg_client(&dir, "psycopg2", &plain.dsn("shop"), "plain"),
        "False"
    );
    let want =
        |s: &[Span]| db_spans(s, pg.port()).len() >= 8 && db_spans(s, plain.port()).len() >= 4;
    sonde.wait_for_spans(want, WAIT);
    std::thread::sleep(Duration::from_millis(1500));
    let spans = sonde.spans();
    let tls = db_spans(&spans, pg.port());
    let clear = db_spans(&spans, plain.port());
    // Per client: the pg_stat_ssl query and three SELECTs (+ COMMIT for psycopg2/psycopg).
    // psycopg 3 binds server-side ($1), psycopg2 interpolates (sanitized to ?).
    let selects = |v: &[&Span]| {
        v.iter()
            .filter(|s| {
                s.name == "SELECT"
                    && s.attr_str("db.query.text")
                        .is_some_and(|q| q.ends_with("::int AS i"))
            })
            .count()
    };
    assert_eq!(selects(&tls), 6, "{}", dump_spans(&spans));
    assert_eq!(selects(&clear), 3, "{}", dump_spans(&spans));
    assert_eq!(
        tls.iter()
            .filter(|s| s.name == "SELECT pg_stat_ssl")
            .count(),
        2,
        "{}",
        dump_spans(&spans)
    );
    for s in tls.iter().chain(&clear) {
        assert_well_formed(s);
        assert_eq!(s.attr_str("db.namespace"), Some("shop"), "{s:?}");
    }
    plain.stop();
}

#[test]
fn a_rustls_client_gives_no_spans_and_is_counted_as_untraceable() {
    let dir = TestDir::new("tls-rustls").unwrap();
    let (_nginx, port) = nginx_tls(&dir);
    let metrics_port = sonde_e2e::free_port();
    let sonde = Sonde::start(&[
        "--port",
        &port.to_string(),
        "--metrics-addr",
        &format!("127.0.0.1:{metrics_port}"),
    ]);
    let bin = sonde_e2e::find_target_bin(
        "sonde-rustls-client",
        "SONDE_RUSTLS_CLIENT",
        "cargo build -p sonde-e2e",
    )
    .unwrap();
    let der = dir.join("server.der");
    let st = Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(dir.join("server.crt"))
        .arg("-out")
        .arg(&der)
        .status()
        .unwrap();
    assert!(st.success());
    let stdout = run_ok(Command::new(bin).arg(port.to_string()).arg(&der));
    assert!(stdout.contains("200"));
    let metric = "sonde_tls_untraceable_connections_total{executable=\"sonde-rustls-client\",reason=\"rustls\"} 1";
    let mut text = String::new();
    for _ in 0..100 {
        text = curl(&["-s", &format!("http://127.0.0.1:{metrics_port}/metrics")]).stdout;
        if text.contains(metric) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(text.contains(metric), "{text}");
    // nginx's side of the same connection is read through libssl: one server span, and no
    // client span from the rustls process.
    let spans = sonde.wait_for_spans(|s| !all_kind(s, "SERVER").is_empty(), WAIT);
    std::thread::sleep(Duration::from_millis(1000));
    drop(spans);
    let spans = sonde.spans();
    assert_eq!(
        all_kind(&spans, "CLIENT").len(),
        0,
        "{}",
        dump_spans(&spans)
    );
    assert_eq!(
        all_kind(&spans, "SERVER").len(),
        1,
        "{}",
        dump_spans(&spans)
    );
}

const PY_TLS_SERVER: &str = r#"
import http.server, ssl, sys
cert, key, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
httpd = http.server.HTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
print("listening", flush=True)
httpd.serve_forever()
"#;

const PY_REQUESTS: &str = r#"
import sys, requests, urllib3
urllib3.disable_warnings()
port, n = int(sys.argv[1]), int(sys.argv[2])
with requests.Session() as s:
    for i in range(n):
        r = s.get(f"https://127.0.0.1:{port}/items/{i}?api_key=secret", verify=False)
        assert r.status_code == 200 and r.text == "hello\n"
"#;

#[test]
fn python_http_server_wrapped_in_ssl_and_requests_client() {
    let dir = TestDir::new("tls-py").unwrap();
    let (cert, key) = self_signed(&dir);
    let port = sonde_e2e::free_port();
    let sonde = Sonde::start(&["--port", &port.to_string()]);
    let server_py = dir.join("server.py");
    std::fs::write(&server_py, PY_TLS_SERVER).unwrap();
    let mut server = Command::new(python())
        .arg(&server_py)
        .arg(&cert)
        .arg(&key)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "listening");
    let client_py = dir.join("client.py");
    std::fs::write(&client_py, PY_REQUESTS).unwrap();
    run_ok(
        Command::new(python())
            .arg(&client_py)
            .args([&port.to_string(), "10"]),
    );
    let spans = settled_exchanges(&sonde, 10);
    let _ = server.kill();
    let _ = server.wait();
    let srv = all_kind(&spans, "SERVER");
    let cl = all_kind(&spans, "CLIENT");
    assert_eq!((srv.len(), cl.len()), (10, 10), "{}", dump_spans(&spans));
    for (i, (c, s)) in cl.iter().zip(&srv).enumerate() {
        assert_eq!(s.attr_str("url.scheme"), Some("https"));
        assert_eq!(s.attr_str("url.path"), Some(format!("/items/{i}").as_str()));
        assert_eq!(s.attr_str("url.query"), Some("api_key=REDACTED"));
        assert_eq!(
            c.attr_str("url.full"),
            Some(format!("https://127.0.0.1:{port}/items/{i}?api_key=REDACTED").as_str())
        );
        assert_eq!(s.trace_id, c.trace_id, "{}", dump_spans(&spans));
        assert_eq!(s.parent_span_id, c.span_id);
    }
}

/// The server span of the request to `path` on `port`, and its children in start order.
fn request_tree<'a>(spans: &'a [Span], port: u16, path: &str) -> (&'a Span, Vec<&'a Span>) {
    let server = servers(spans, port)
        .into_iter()
        .find(|s| s.attr_str("url.path") == Some(path))
        .unwrap_or_else(|| panic!("no server span for {path}\n{}", dump_spans(spans)));
    let mut children = SpanTree::new(spans).children_of(server);
    children.sort_by_key(|s| s.start_ns);
    (server, children)
}

/// Waits for the request to `path` with at least `children` children, then a little longer.
fn wait_for_tree(sonde: &Sonde, port: u16, path: &str, children: usize) -> Vec<Span> {
    sonde.wait_for_spans(
        |spans| {
            servers(spans, port)
                .into_iter()
                .find(|s| s.attr_str("url.path") == Some(path))
                .is_some_and(|s| SpanTree::new(spans).children_of(s).len() >= children)
        },
        WAIT,
    );
    std::thread::sleep(Duration::from_millis(1500));
    sonde.spans()
}

/// The request's tree is the plaintext Django tests' one: the server span, then exactly the
/// database children named `names`, nested in time, sanitized, on `pg_port`, with
/// `db.namespace` = `namespace` (None: not asserted, see the caller), and no duplicate.
fn assert_django_tree(
    spans: &[Span],
    django_port: u16,
    pg_port: u16,
    path: &str,
    names: &[&str],
    namespace: Option<&str>,
) {
    let (server, children) = request_tree(spans, django_port, path);
    assert_eq!(server.attr_str("url.scheme"), Some("http"));
    assert_eq!(server.attr_i64("http.response.status_code"), Some(200));
    assert_eq!(
        children.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        names,
        "{}",
        dump_spans(spans)
    );
    for c in &children {
        assert_well_formed(c);
        assert_eq!(c.kind, "CLIENT");
        assert_eq!(c.trace_id, server.trace_id);
        assert_eq!(c.parent_span_id, server.span_id);
        assert!(
            c.start_ns >= server.start_ns && c.end_ns <= server.end_ns,
            "{c:?}"
        );
        assert_eq!(c.attr_str("db.system.name"), Some("postgresql"));
        assert_eq!(c.attr_i64("server.port"), Some(i64::from(pg_port)));
        assert_eq!(c.status_code, "UNSET");
        let text = c.attr_str("db.query.text").unwrap();
        assert!(
            !text.contains(" 2") && !text.contains('\''),
            "literal in {text}"
        );
        if let Some(ns) = namespace {
            assert_eq!(c.attr_str("db.namespace"), Some(ns), "{c:?}");
        }
    }
    let all_db = spans
        .iter()
        .filter(|s| s.attr_str("db.system.name").is_some() && s.trace_id == server.trace_id)
        .count();
    assert_eq!(all_db, names.len(), "duplicates\n{}", dump_spans(spans));
    // The test's own client span is the server span's parent.
    assert!(
        clients(spans, django_port)
            .iter()
            .any(|c| c.span_id == server.parent_span_id),
        "{}",
        dump_spans(spans)
    );
}

/// Whether each client backend connected to `db` uses TLS (pg_stat_ssl), in pid order.
fn backends_ssl(pg: &Postgres, db: &str) -> String {
    pg.psql(
        "postgres",
        &format!(
            "SELECT coalesce(string_agg(s.ssl::text, ',' ORDER BY a.pid), '') FROM pg_stat_ssl s \
             JOIN pg_stat_activity a USING (pid) WHERE a.datname = '{db}' \
             AND a.backend_type = 'client backend'"
        ),
    )
}

/// Issue 8: a Debian-style cluster (`ssl=on`, self-signed certificate) and a Django app under
/// gunicorn with psycopg2's binary wheel (its vendored libssl) and libpq's default sslmode
/// (prefer, so every query is encrypted) gives the plaintext Django tests' span trees: on a
/// pooled connection (CONN_MAX_AGE) opened before sonde started, and on the connection a
/// worker started after sonde opens (whose startup message gives `db.namespace`).
#[test]
fn django_gunicorn_over_tls_default_sslmode_pooled_connection_from_before_sonde() {
    let dir = TestDir::new("tls-django").unwrap();
    let pg = Postgres::start();
    enable_ssl(&pg, &dir);
    // One sync worker, so the connection opened before sonde is the one the requests use.
    let django = Django::start(
        &pg,
        DjangoOpts::default()
            .workers(1)
            .sync()
            .conn_max_age(600)
            .env("DB_SSLMODE", ""),
    );
    assert_eq!(http_get(&django.url("/samples/")).0, 200);
    assert_eq!(
        backends_ssl(&pg, "djangoapp"),
        "true",
        "not pooled or not TLS"
    );
    let old_worker = django.worker_pids();
    assert_eq!(old_worker.len(), 1);
    let sonde = Sonde::start(&[
        "--port",
        &django.port().to_string(),
        "--port",
        &pg.port().to_string(),
    ]);

    // The pooled TLS connection from before sonde: read from its next query on. Its startup
    // message was never seen, so db.namespace is not asserted here.
    assert_eq!(http_get(&django.url("/samples/")).0, 200);
    let spans = wait_for_tree(&sonde, django.port(), "/samples/", 2);
    assert_django_tree(
        &spans,
        django.port(),
        pg.port(),
        "/samples/",
        &["SELECT lab_sample", "SELECT lab_variant"],
        None,
    );
    let (_, children) = request_tree(&spans, django.port(), "/samples/");
    assert_eq!(
        children[0].attr_str("db.query.text"),
        Some(r#"SELECT COUNT(*) AS "__count" FROM "lab_sample""#)
    );
    assert!(
        children[1]
            .attr_str("db.query.text")
            .unwrap()
            .contains("LIMIT ?")
    );
    assert_eq!(children[0].attr_i64("db.response.returned_rows"), Some(1));
    assert_eq!(children[1].attr_i64("db.response.returned_rows"), Some(6));
    for c in &children {
        assert!(
            c.attr_str("db.namespace").is_none_or(|n| n == "djangoapp"),
            "{c:?}"
        );
    }

    // gunicorn replaces a worker that exits: the new one opens its connection after sonde
    // started (SSLRequest and 'S' in clear, the startup message through the uprobes).
    // SAFETY: kill(2) on a child of the gunicorn master this test started.
    assert_eq!(
        unsafe { libc::kill(old_worker[0] as i32, libc::SIGTERM) },
        0
    );
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let now = django.worker_pids();
        if now.len() == 1 && now != old_worker {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no new worker");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(&django.url("/analysis/2")).0, 200);
    let spans = wait_for_tree(&sonde, django.port(), "/analysis/2", 3);
    assert_django_tree(
        &spans,
        django.port(),
        pg.port(),
        "/analysis/2",
        &[
            "SELECT lab_analysis",
            "SELECT lab_sample",
            "SELECT lab_variant",
        ],
        Some("djangoapp"),
    );
    let (server, _) = request_tree(&spans, django.port(), "/analysis/2");
    assert_eq!(server.name, "GET /analysis/{id}");
    assert_eq!(
        backends_ssl(&pg, "djangoapp"),
        "true",
        "not pooled or not TLS"
    );
    // The new pooled connection keeps serving: a later request on it, same tree.
    assert_eq!(http_get(&django.url("/samples/")).0, 200);
    let spans = sonde.wait_for_spans(
        |spans| {
            servers(spans, django.port())
                .iter()
                .filter(|s| s.attr_str("url.path") == Some("/samples/"))
                .nth(1)
                .is_some_and(|s| SpanTree::new(spans).children_of(s).len() >= 2)
        },
        WAIT,
    );
    let mut samples: Vec<&Span> = servers(&spans, django.port())
        .into_iter()
        .filter(|s| s.attr_str("url.path") == Some("/samples/"))
        .collect();
    samples.sort_by_key(|s| s.start_ns);
    let children = SpanTree::new(&spans).children_of(samples[1]);
    assert_eq!(children.len(), 2, "{}", dump_spans(&spans));
    for c in &children {
        assert_eq!(c.attr_str("db.namespace"), Some("djangoapp"), "{c:?}");
    }
}

/// Loads libssl at import, and makes its first HTTPS request 250 ms later (an application's
/// start-up work; a quarter of the 1 s rescan interval). Fails if the libssl it loaded is not
/// the copy in `expect` (LD_LIBRARY_PATH).
const PY_QUICK_CLIENT: &str = r#"
import ssl, http.client, sys, time
port, n, expect = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
time.sleep(0.25)
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
for i in range(n):
    conn.request("GET", f"/file.txt?quick={i}")
    r = conn.getresponse()
    r.read()
    assert r.status == 200
maps = open("/proc/self/maps").read()
assert expect in maps, "libssl copy not loaded"
"#;

/// A process started after sonde that loads a libssl sonde has never seen (a private copy:
/// its own inode, like a vendored wheel's) and sends its first HTTPS request soon after is
/// traced from that first request: its exec is reported by the lifecycle probe and its maps
/// are read at once and every tick for the next 100 ms (then sparser), so the library is
/// hooked within a tick or two of being mapped instead of by the 1 s rescan. (A request
/// within a few tens of milliseconds of the mapping can still race the attach: measured here
/// under load, the attach lands 10-20 ms after `import ssl`.)
#[test]
fn a_process_started_after_sonde_with_an_unseen_libssl_is_traced_from_its_first_request() {
    let dir = TestDir::new("tls-exec").unwrap();
    let (_nginx, port) = nginx_tls(&dir);
    let lib = dir.join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    let copy = lib.join("libssl.so.3");
    std::fs::copy("/usr/lib/x86_64-linux-gnu/libssl.so.3", &copy).unwrap();
    let script = dir.join("quick.py");
    std::fs::write(&script, PY_QUICK_CLIENT).unwrap();
    let sonde = Sonde::start(&["--port", &port.to_string()]);
    let n = 3;
    run_ok(
        Command::new(python())
            .arg(&script)
            .args([&port.to_string(), &n.to_string()])
            .arg(&copy)
            .env("LD_LIBRARY_PATH", &lib),
    );
    let spans = settled_exchanges(&sonde, n);
    let cl = all_kind(&spans, "CLIENT");
    let urls: Vec<_> = cl
        .iter()
        .map(|c| c.attr_str("url.full").unwrap_or(""))
        .collect();
    let want: Vec<String> = (0..n)
        .map(|i| format!("https://127.0.0.1:{port}/file.txt?quick={i}"))
        .collect();
    assert_eq!(urls, want, "{}", dump_spans(&spans));
    assert_eq!(all_kind(&spans, "SERVER").len(), n);
}
