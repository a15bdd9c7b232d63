//! End-to-end metrics: a real Prometheus scrapes the real daemon's `/metrics` while a test
//! server with known behaviour (known sleeps, statuses and request counts per route) is
//! traced; PromQL over the scraped data, and the OTLP metrics an independent sink (the Python
//! OTLP sink) receives, must equal what was sent. Also: `promtool check metrics`, the
//! series-limit overflow under a path explosion, and process metrics of processes with known
//! behaviour (CPU burner, allocator, open files, exit code).
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use sonde_e2e::{
    OtlpSink, Prometheus, Sonde, TestServer, free_port, http_get, http_request, promtool_check,
};

const WAIT: Duration = Duration::from_secs(60);

/// Starts sonde filtered to `port` with its metrics endpoint on a free port.
fn sonde_with_metrics(extra: &[&str], env: &[(&str, &str)]) -> (Sonde, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut args = vec!["--metrics-addr".to_owned(), addr.to_string()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    (Sonde::start_with_env(&args, env), addr)
}

/// `{k}="v"` pairs of an OTLP/JSON attribute list.
fn attrs(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for kv in v.as_array().into_iter().flatten() {
        let key = kv["key"].as_str().unwrap_or_default().to_owned();
        let val = &kv["value"];
        let s = val["stringValue"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| val["intValue"].as_str().map(str::to_owned))
            .or_else(|| val["intValue"].as_i64().map(|i| i.to_string()))
            .unwrap_or_default();
        out.insert(key, s);
    }
    out
}

fn as_u64(v: &Value) -> u64 {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// Highest cumulative count per (route, status) of `metric` in the sink's OTLP metrics
/// (exports are cumulative, so the highest is the latest).
fn sink_counts(sink: &OtlpSink, metric: &str, service: &str) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for line in sink.lines() {
        if line["signal"] != "metrics" {
            continue;
        }
        for rm in line["request"]["resourceMetrics"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let res = attrs(&rm["resource"]["attributes"]);
            if res.get("service.name").map(String::as_str) != Some(service) {
                continue;
            }
            for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                for m in sm["metrics"].as_array().into_iter().flatten() {
                    if m["name"] != metric {
                        continue;
                    }
                    assert_eq!(
                        m["histogram"]["aggregationTemporality"], 2,
                        "cumulative temporality"
                    );
                    for dp in m["histogram"]["dataPoints"]
                        .as_array()
                        .into_iter()
                        .flatten()
                    {
                        let a = attrs(&dp["attributes"]);
                        let key = (
                            a.get("http.route").cloned().unwrap_or_default(),
                            a.get("http.response.status_code")
                                .cloned()
                                .unwrap_or_default(),
                        );
                        let n = as_u64(&dp["count"]);
                        let e = out.entry(key).or_insert(0);
                        *e = (*e).max(n);
                    }
                }
            }
        }
    }
    out
}

#[test]
fn prometheus_and_otlp_metrics_equal_the_requests_sent() {
    let server = TestServer::start();
    let sink = OtlpSink::start();
    let port = server.port().to_string();
    let (sonde, metrics_addr) = sonde_with_metrics(
        &[
            "--port",
            &port,
            "--output",
            "otlp",
            "--otlp-endpoint",
            &sink.http_endpoint(),
        ],
        &[("OTEL_METRIC_EXPORT_INTERVAL", "1000")],
    );
    let prom = Prometheus::start(&[metrics_addr]);
    let base = format!("http://{}", server.addr());
    // (path, times): statuses and sleeps are known.
    let plan: &[(&str, usize)] = &[
        ("/status/200", 7),
        ("/status/503", 3),
        ("/status/404", 2),
        // 150 ms: in (0.1, 0.25]; 350 ms: in (0.25, 0.5] (wide margins for a loaded machine).
        ("/slow/150", 4),
        ("/slow/350", 2),
    ];
    for (path, n) in plan {
        for _ in 0..*n {
            http_get(&format!("{base}{path}"));
        }
    }
    let total = 18.0;
    let sel = "job=\"sonde\",service_name=\"sonde-test-server\"";
    let q_total = format!("sum(http_server_request_duration_seconds_count{{{sel}}})");
    prom.wait_for(
        &q_total,
        |r| r.first().is_some_and(|s| s.value == total),
        WAIT,
    );

    let per = prom
        .query(&format!(
            "sum by (http_route, http_response_status_code) (http_server_request_duration_seconds_count{{{sel}}})"
        ))
        .unwrap();
    let got: BTreeMap<(String, String), u64> = per
        .iter()
        .map(|s| {
            (
                (
                    s.label("http_route").unwrap_or_default().to_owned(),
                    s.label("http_response_status_code")
                        .unwrap_or_default()
                        .to_owned(),
                ),
                s.value as u64,
            )
        })
        .collect();
    let expected: BTreeMap<(String, String), u64> = [
        (("/status/{id}", "200"), 7),
        (("/status/{id}", "503"), 3),
        (("/status/{id}", "404"), 2),
        (("/slow/{id}", "200"), 6),
    ]
    .into_iter()
    .map(|((r, s), n)| ((r.to_owned(), s.to_owned()), n))
    .collect();
    assert_eq!(got, expected, "counts per route and status");

    // Error ratio: 5xx are server errors (404 is not).
    let ratio = prom.scalar(&format!(
        "sum(http_server_request_duration_seconds_count{{{sel},error_type!=\"\"}}) / sum(http_server_request_duration_seconds_count{{{sel}}})"
    ));
    assert!((ratio - 3.0 / 18.0).abs() < 1e-9, "error ratio {ratio}");

    // The bucket each known latency falls in.
    let bucket = |le: &str| {
        prom.scalar(&format!(
            "sum(http_server_request_duration_seconds_bucket{{{sel},http_route=\"/slow/{{id}}\",le=\"{le}\"}})"
        ))
    };
    assert_eq!(bucket("0.1"), 0.0);
    assert_eq!(bucket("0.25"), 4.0);
    assert_eq!(bucket("0.5"), 6.0);
    assert_eq!(bucket("+Inf"), 6.0);
    let p99 = prom.scalar(&format!(
        "histogram_quantile(0.99, sum by (le) (http_server_request_duration_seconds_bucket{{{sel},http_route=\"/slow/{{id}}\"}}))"
    ));
    assert!((0.25..=0.5).contains(&p99), "p99 {p99}");

    // Prometheus scraped OpenMetrics (it asks for it); the classic format is promtool-clean.
    let (status, text) = http_get(&format!("http://{metrics_addr}/metrics"));
    assert_eq!(status, 200);
    promtool_check(&text).unwrap();
    assert!(text.contains("target_info{service_name=\"sonde\""));
    assert!(!text.contains("url_path") && !text.contains("client_address"));
    let om = http_request(
        "GET",
        &format!("http://{metrics_addr}/metrics"),
        &[("Accept", "application/openmetrics-text; version=1.0.0")],
        b"",
    )
    .unwrap();
    assert!(
        om.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text"))
    );
    assert!(om.text().ends_with("# EOF\n"));
    let up = prom.scalar("up{job=\"sonde\"}");
    assert_eq!(up, 1.0, "Prometheus parses sonde's exposition");

    // The OTLP metrics stream agrees.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let c = sink_counts(&sink, "http.server.request.duration", "sonde-test-server");
        if c == expected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "OTLP metrics {c:?} != {expected:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(sonde);
}

#[test]
fn series_limit_folds_a_path_explosion_into_the_overflow_series() {
    let server = TestServer::start();
    let port = server.port().to_string();
    let (_sonde, metrics_addr) =
        sonde_with_metrics(&["--port", &port, "--metrics-series-limit", "5"], &[]);
    let prom = Prometheus::start(&[metrics_addr]);
    let base = format!("http://{}", server.addr());
    // 20 distinct routes (letters only: none looks like an id), 404 each.
    let words: Vec<String> = (0..20u8)
        .map(|i| format!("/w{}{}", (b'a' + i) as char, (b'a' + (i * 7) % 26) as char))
        .collect();
    for w in &words {
        http_get(&format!("{base}{w}"));
    }
    let sel = "job=\"sonde\"";
    let q = format!("sum(http_server_request_duration_seconds_count{{{sel}}})");
    prom.wait_for(&q, |r| r.first().is_some_and(|s| s.value == 20.0), WAIT);
    let normal = prom.scalar(&format!(
        "count(http_server_request_duration_seconds_count{{{sel},otel_metric_overflow=\"\"}})"
    ));
    assert_eq!(normal, 5.0);
    let folded = prom.scalar(&format!(
        "sum(http_server_request_duration_seconds_count{{{sel},otel_metric_overflow=\"true\"}})"
    ));
    assert_eq!(folded, 15.0);
    let counted = prom.scalar(&format!(
        "sonde_metrics_overflow_measurements_total{{{sel},metric=\"http.server.request.duration\",reason=\"series_limit\"}}"
    ));
    assert_eq!(counted, 15.0);
}

/// A Python process with known behaviour, then idle (so /proc can be sampled).
fn python(code: &str) -> std::process::Child {
    Command::new("python3")
        .args(["-c", code])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_ready(child: &mut std::process::Child) {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
}

#[test]
fn process_metrics_match_processes_with_known_behaviour() {
    let mut burner = python(
        "import time,sys\nt=time.process_time()\nwhile time.process_time()-t<1.0: pass\nprint('ready',flush=True)\ntime.sleep(600)",
    );
    let mut alloc = python(
        "import time\nb=bytearray(200*1024*1024)\nfor i in range(0,len(b),4096): b[i]=1\nprint('ready',flush=True)\ntime.sleep(600)",
    );
    let mut files = python(
        "import time\nfs=[open('/dev/null') for _ in range(50)]\nprint('ready',flush=True)\ntime.sleep(600)",
    );
    let mut exiter =
        python("import sys\nprint('ready',flush=True)\nsys.stdin.readline()\nsys.exit(3)");
    for c in [&mut burner, &mut alloc, &mut files, &mut exiter] {
        wait_ready(c);
    }
    let pids: Vec<String> = [&burner, &alloc, &files, &exiter]
        .iter()
        .map(|c| c.id().to_string())
        .collect();
    let mut args = Vec::new();
    for p in &pids {
        args.push("--pid");
        args.push(p.as_str());
    }
    let (_sonde, metrics_addr) = sonde_with_metrics(&args, &[]);
    let prom = Prometheus::start(&[metrics_addr]);
    let pid_sel = |p: &str| format!("job=\"sonde\",process_pid=\"{p}\"");

    let cpu = prom.wait_for(
        &format!(
            "sum(process_cpu_time_seconds_total{{{}}})",
            pid_sel(&pids[0])
        ),
        |r| r.first().is_some_and(|s| s.value >= 1.0),
        WAIT,
    );
    assert!(
        cpu[0].value < 1.5,
        "burned 1 s of CPU, got {}",
        cpu[0].value
    );
    let rss = prom.wait_for(
        &format!("process_memory_usage_bytes{{{}}}", pid_sel(&pids[1])),
        |r| !r.is_empty(),
        WAIT,
    );
    assert!(
        (200.0 * 1048576.0..300.0 * 1048576.0).contains(&rss[0].value),
        "allocated 200 MiB, RSS {}",
        rss[0].value
    );
    let fds = prom.wait_for(
        &format!("process_unix_file_descriptors{{{}}}", pid_sel(&pids[2])),
        |r| !r.is_empty(),
        WAIT,
    );
    // 50 files plus stdin/stdout/stderr (and nothing else much).
    assert!(
        (53.0..=56.0).contains(&fds[0].value),
        "fds {}",
        fds[0].value
    );
    for name in [
        "process_memory_virtual_bytes",
        "process_threads",
        "process_uptime_seconds",
        "process_context_switches_total",
        "process_paging_faults_total",
        "process_disk_io_bytes_total",
    ] {
        prom.wait_for(
            &format!("{name}{{{}}}", pid_sel(&pids[0])),
            |r| !r.is_empty(),
            WAIT,
        );
    }
    // The exiter leaves exit code 3 once sonde knows it (we reap it only afterwards, so /proc
    // shows the zombie's status).
    prom.wait_for(
        &format!("process_uptime_seconds{{{}}}", pid_sel(&pids[3])),
        |r| !r.is_empty(),
        WAIT,
    );
    {
        use std::io::Write;
        let mut stdin = exiter.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
    }
    prom.wait_for(
        "sum(process_exits_total{job=\"sonde\",process_exit_code=\"3\"})",
        |r| r.first().is_some_and(|s| s.value == 1.0),
        WAIT,
    );
    let _ = exiter.wait();
    for mut c in [burner, alloc, files] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Writes a line to a child's stdin (its cue to act).
fn cue(child: &mut std::process::Child) {
    use std::io::Write;
    let stdin = child.stdin.as_mut().unwrap();
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
}

#[test]
fn tcp_failed_connects_and_peer_resets_are_counted() {
    // A port nobody listens on (bound then closed), and an untraced peer that resets.
    let closed = free_port();
    let mut peer = python(
        "import socket,struct,sys\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen()\nprint(s.getsockname()[1],flush=True)\nc,_=s.accept()\nc.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0))\nc.close()\nsys.stdin.readline()",
    );
    let peer_port: u16 = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(peer.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().parse().unwrap()
    };
    let mut client = python(&format!(
        "import socket,sys,time\nprint('ready',flush=True)\nsys.stdin.readline()\ntry:\n  socket.create_connection(('127.0.0.1',{closed}))\nexcept OSError: pass\nsys.stdin.readline()\nc=socket.create_connection(('127.0.0.1',{peer_port}))\ntry:\n  c.recv(10)\nexcept OSError: pass\ntime.sleep(600)"
    ));
    wait_ready(&mut client);
    let pid = client.id().to_string();
    let (_sonde, metrics_addr) = sonde_with_metrics(&["--pid", &pid], &[]);
    let prom = Prometheus::start(&[metrics_addr]);
    cue(&mut client);
    let failed = prom.wait_for(
        &format!(
            "tcp_failed_connects_total{{job=\"sonde\",server_address=\"127.0.0.1\",server_port=\"{closed}\"}}"
        ),
        |r| !r.is_empty(),
        WAIT,
    );
    assert_eq!(failed[0].value, 1.0);
    cue(&mut client);
    prom.wait_for(
        "sum(tcp_resets_received_total{job=\"sonde\"})",
        |r| r.first().is_some_and(|s| s.value >= 2.0),
        WAIT,
    );
    // One reset answered the connect to the closed port, one came from the peer.
    assert_eq!(
        prom.scalar("sum(tcp_resets_received_total{job=\"sonde\"})"),
        2.0
    );
    for mut c in [client, peer] {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A memory cgroup (v1) with a limit, removed on drop.
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/memory/sonde-e2e-oom-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        // Without swap here this is belt and braces; with swap it stops the escape.
        let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
        MemoryCgroup(dir)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn oom_kill_in_a_memory_limited_cgroup_is_counted_with_its_signal() {
    let cgroup = MemoryCgroup::new(64 << 20);
    let mut victim = python(
        "import sys\nprint('ready',flush=True)\nsys.stdin.readline()\nb=[]\nwhile True: b.append(bytearray(8<<20))",
    );
    wait_ready(&mut victim);
    cgroup.add(victim.id());
    let pid = victim.id().to_string();
    let (_sonde, metrics_addr) = sonde_with_metrics(&["--pid", &pid], &[]);
    let prom = Prometheus::start(&[metrics_addr]);
    prom.wait_for(
        &format!("process_uptime_seconds{{job=\"sonde\",process_pid=\"{pid}\"}}"),
        |r| !r.is_empty(),
        WAIT,
    );
    cue(&mut victim);
    let status = victim.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "the OOM killer sends SIGKILL");
    prom.wait_for(
        "sum(process_oom_kills_total{job=\"sonde\"})",
        |r| r.first().is_some_and(|s| s.value == 1.0),
        WAIT,
    );
    prom.wait_for(
        "sum(process_exits_total{job=\"sonde\",process_exit_signal=\"9\"})",
        |r| r.first().is_some_and(|s| s.value == 1.0),
        WAIT,
    );
}

/// Django + PostgreSQL traced by sonde, optionally with the OpenTelemetry SDK (and its
/// psycopg2 instrumentation) exporting to sonde's receiver; returns after `n` requests to
/// /analysis/1 are answered.
fn django_requests(sdk: bool, n: usize) -> (Vec<sonde_e2e::Span>, Prometheus, DjangoSetup) {
    use sonde_e2e::{Django, DjangoOpts, Postgres};
    let pg = Postgres::start();
    let (grpc, http) = (free_port(), free_port());
    let mut opts = DjangoOpts::default().workers(2);
    if sdk {
        opts = opts
            .otel("http", &format!("http://127.0.0.1:{http}"))
            .otel_delay_ms(500)
            .otel_psycopg2();
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
    let (sonde, metrics_addr) = sonde_with_metrics(&args, &[]);
    let prom = Prometheus::start(&[metrics_addr]);
    for _ in 0..n {
        assert_eq!(http_get(&django.url("/analysis/1")).0, 200);
    }
    let q = "sum(http_server_request_duration_seconds_count{job=\"sonde\"})";
    prom.wait_for(q, |r| r.first().is_some_and(|s| s.value >= n as f64), WAIT);
    // Let late SDK batches and held eBPF spans settle, then two more scrapes.
    std::thread::sleep(Duration::from_secs(if sdk { 10 } else { 3 }));
    let spans = sonde.spans();
    (
        spans,
        prom,
        DjangoSetup {
            _pg: pg,
            _django: django,
            _sonde: sonde,
        },
    )
}

struct DjangoSetup {
    _pg: sonde_e2e::Postgres,
    _django: sonde_e2e::Django,
    _sonde: Sonde,
}

fn is_db(s: &sonde_e2e::Span) -> bool {
    s.kind == "CLIENT"
        && (s.attr_str("db.system.name").is_some() || s.attr_str("db.system").is_some())
}

#[test]
fn django_db_operation_counts_equal_the_queries_issued() {
    let n = 5;
    let (spans, prom, _setup) = django_requests(false, n);
    let queries = spans.iter().filter(|s| is_db(s)).count();
    // Each /analysis/1 issues 3 queries (and nothing else runs against this database).
    assert_eq!(queries, 3 * n, "{}", sonde_e2e::dump_spans(&spans));
    let db = prom.scalar(
        "sum(db_client_operation_duration_seconds_count{job=\"sonde\",db_system_name=\"postgresql\"})",
    );
    assert_eq!(db as usize, queries);
    let http = prom.scalar("sum(http_server_request_duration_seconds_count{job=\"sonde\"})");
    assert_eq!(http as usize, n);
}

#[test]
fn with_the_sdk_merged_each_request_and_query_is_counted_once() {
    let n = 4;
    let (spans, prom, _setup) = django_requests(true, n);
    let servers = spans.iter().filter(|s| s.kind == "SERVER").count();
    assert_eq!(servers, n, "one server span per request after merging");
    let http = prom.scalar("sum(http_server_request_duration_seconds_count{job=\"sonde\"})");
    assert_eq!(http as usize, n, "requests counted once");
    let queries = spans.iter().filter(|s| is_db(s)).count();
    assert_eq!(queries, 3 * n, "{}", sonde_e2e::dump_spans(&spans));
    let db = prom.scalar("sum(db_client_operation_duration_seconds_count{job=\"sonde\"})");
    assert_eq!(db as usize, 3 * n, "queries counted once");
}

#[test]
fn a_service_restart_is_counted_from_kernel_lifecycle_events() {
    // A supervisor (traced) that restarts its worker once: the worker exits with 7 twice.
    let mut sup = python(
        "import subprocess,sys,time\nprint('ready',flush=True)\nsys.stdin.readline()\nfor _ in range(2):\n  subprocess.run([sys.executable,'-c','import time,sys; time.sleep(0.5); sys.exit(7)'])\ntime.sleep(600)",
    );
    wait_ready(&mut sup);
    let pid = sup.id().to_string();
    let (_sonde, metrics_addr) = sonde_with_metrics(&["--pid", &pid], &[]);
    let prom = Prometheus::start(&[metrics_addr]);
    prom.wait_for(
        &format!("process_uptime_seconds{{job=\"sonde\",process_pid=\"{pid}\"}}"),
        |r| !r.is_empty(),
        WAIT,
    );
    cue(&mut sup);
    let exits = prom.wait_for(
        "sum(process_exits_total{job=\"sonde\",process_exit_code=\"7\"})",
        |r| r.first().is_some_and(|s| s.value >= 2.0),
        WAIT,
    );
    assert_eq!(exits[0].value, 2.0);
    // The supervisor and the worker twice: a restart is a start after an exit.
    assert_eq!(prom.scalar("sum(process_starts_total{job=\"sonde\"})"), 3.0);
    let _ = sup.kill();
    let _ = sup.wait();
}
