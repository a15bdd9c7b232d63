//! The Kubernetes install (deploy/kubernetes): every variant renders with `kubectl kustomize`
//! and validates with `kubernetes-validate --strict`, the security invariants of each
//! variant hold, the PrometheusRule passes `promtool check rules` and its unit tests (fast
//! burn fires on a failing series, quiet on a healthy one), and every rule and dashboard query
//! names only metrics sonde exports: against deploy/kubernetes/metric-names.txt, and against a
//! live `/metrics` scrape of the real daemon tracing real HTTP, PostgreSQL and TCP traffic.
//! The checks are in deploy/kubernetes/tests/check.py (YAML is Python's home ground); this
//! file puts them in the suite.
use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use sonde_e2e::{OtlpSink, Postgres, Sonde, TestServer, free_port, http_get};

/// Runs `check.py <args>`: Ok(output) when it passes, Err(output) when it fails.
fn run_check(args: &[&str]) -> Result<String, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf();
    let out = Command::new("python3")
        .arg(root.join("deploy/kubernetes/tests/check.py"))
        .args(args)
        .output()
        .expect("python3 runs (installed by xtask/bootstrap.sh)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

fn check(what: &str) {
    if let Err(text) = run_check(&[what]) {
        panic!("check.py {what} failed:\n{text}");
    }
}

#[test]
fn every_variant_renders() {
    check("render");
}

#[test]
fn every_rendered_object_validates_strictly() {
    check("validate");
}

#[test]
fn security_invariants_of_each_variant() {
    check("security");
}

#[test]
fn prometheus_rules_check_and_burn_rate_alerts_fire_as_specified() {
    check("rules");
}

#[test]
fn queries_use_only_exported_metric_names() {
    check("metrics");
}

/// Labels the queries may use that cannot appear off-cluster, each with the reason. They come
/// from a process's Kubernetes identity: userspace/k8s/src/pod.rs sets `service.namespace` and
/// `k8s.*` resource attributes from the pod, `identity` in userspace/metrics/src/request.rs
/// keeps exactly those (and `service.name`) as metric labels, and expo.rs names them
/// (`k8s.pod.name` -> `k8s_pod_name`). A host process, like every process in this test, is in
/// no pod, so it has none of them. Nothing else is exempt: every other label must be on one of
/// the query's metrics in the live scrape (Prometheus' own `instance`/`job` aside).
const CLUSTER_ONLY_LABELS: &[(&str, &str)] = &[
    (
        "service_namespace",
        "pod namespace (or its service.namespace annotation); a host process has none",
    ),
    (
        "k8s_pod_name",
        "the pod's name; a host process is in no pod",
    ),
];

/// The traced client: HTTP requests to the test server (a 200, a 503 and a slow one, so the
/// client and server request metrics carry `error_type`), PostgreSQL statements over TCP (one
/// on a table, one failing, so the db metrics carry `db_collection_name` and
/// `db_response_status_code`) and a connect to a closed port (`tcp_failed_connects_total`,
/// `tcp_resets_received_total`). It waits for a line on stdin before the traffic so the
/// daemon sees all of it, then stays alive so its process metrics are sampled.
const CLIENT: &str = r#"
import socket, sys, time, urllib.error, urllib.request
import psycopg
base, dsn, closed = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
sys.stdin.readline()
for path in ("/status/200", "/status/503", "/slow/20"):
    try:
        urllib.request.urlopen(base + path, timeout=10).read()
    except urllib.error.HTTPError:
        pass
with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
    conn.execute("CREATE TABLE IF NOT EXISTS deploy_live_items (id int)")
    conn.execute("INSERT INTO deploy_live_items VALUES (1)")
    conn.execute("SELECT id FROM deploy_live_items WHERE id = 1").fetchall()
    try:
        conn.execute("SELECT id FROM deploy_live_no_such_table")
    except psycopg.errors.UndefinedTable:
        pass
try:
    socket.create_connection(("127.0.0.1", closed), timeout=5)
except OSError:
    pass
print("done", flush=True)
time.sleep(600)
"#;

/// Kills the client when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_line(r: &mut impl BufRead) -> String {
    let mut line = String::new();
    r.read_line(&mut line).expect("read the client's stdout");
    line.trim().to_owned()
}

#[test]
fn queries_use_only_names_and_labels_a_live_scrape_exports() {
    let server = TestServer::start();
    let pg = Postgres::start();
    // A port nobody listens on (bound, then closed by free_port).
    let closed = free_port();
    let mut client = KillOnDrop(
        Command::new(sonde_e2e::python())
            .args(["-u", "-c", CLIENT])
            .arg(server.base_url())
            .arg(pg.dsn("postgres"))
            .arg(closed.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs"),
    );
    let mut out = BufReader::new(client.0.stdout.take().expect("piped stdout"));
    assert_eq!(read_line(&mut out), "ready", "the client started");

    // Only the client and the test server are traced (other engineers' traffic is not). The
    // spans go over OTLP to a real sink, so the exporter's self-metrics (per signal) exist.
    let sink = OtlpSink::start();
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let (client_pid, server_pid) = (client.0.id().to_string(), server.pid().to_string());
    let _sonde = Sonde::start(&[
        "--output",
        "otlp",
        "--otlp-endpoint",
        &sink.http_endpoint(),
        "--metrics-addr",
        &metrics_addr,
        "--pid",
        &client_pid,
        "--pid",
        &server_pid,
    ]);
    let mut stdin = client.0.stdin.take().expect("piped stdin");
    stdin
        .write_all(b"go\n")
        .expect("start the client's traffic");
    stdin.flush().expect("start the client's traffic");
    assert_eq!(read_line(&mut out), "done", "the client's traffic ran");

    // Series appear as the daemon pairs requests and samples processes: poll (bounded) until
    // the check passes; on timeout, fail with the last problems and the scrape.
    let url = format!("http://{metrics_addr}/metrics");
    let mut args = vec!["metrics", "--live", url.as_str()];
    for (label, _why) in CLUSTER_ONLY_LABELS {
        args.extend(["--cluster-only-label", label]);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match run_check(&args) {
            Ok(_) => break,
            Err(problems) if Instant::now() >= deadline => {
                let (_, scrape) = http_get(&url);
                panic!("check.py metrics --live failed:\n{problems}\nscrape:\n{scrape}");
            }
            Err(_) => std::thread::sleep(Duration::from_secs(2)),
        }
    }
}
