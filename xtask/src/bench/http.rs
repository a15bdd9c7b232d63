//! `--suite http`: nginx (one worker, `return 200`) under wrk, without a tracer, with sonde's
//! empty programs, and with sonde tracing nginx and exporting over OTLP/gRPC; then a fixed-rate
//! run (sonde's own open-loop client, since wrk cannot pace) to check for lost events.
//!
//! At max rate, sonde also runs cut after each stage of its pipeline (`--pipeline-stop`:
//! capture + drain, parse, build spans, encode), each adding one step over the previous and
//! ending at the full pipeline, so the report says where the daemon's time goes. The issue's
//! budgets are judged on the same run in a last section.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    Args, fixedrate, measure,
    procs::{self, Proc, Scratch},
    report::{Budget, Limit, Row, Section, col},
    sink::DiscardSink,
    sonde::Sonde,
};

/// What wrk printed that we use.
#[derive(Debug, Clone, PartialEq)]
pub struct WrkResult {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub non_2xx: u64,
    pub socket_errors: u64,
}

/// A wrk duration such as `66.00us`, `1.20ms`, `2.00s`, `1.00m`, in microseconds.
fn parse_wrk_duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        "h" => 3600e6,
        _ => return None,
    };
    Some(n * scale)
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(out: &str) -> Option<WrkResult> {
    let mut requests = None;
    let mut rps = None;
    let mut p50 = None;
    let mut p99 = None;
    let mut non_2xx = 0;
    let mut socket_errors = 0;
    for line in out.lines().map(str::trim) {
        let mut words = line.split_whitespace();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if line.contains(" requests in ") {
            requests = words.next().and_then(|w| w.parse().ok());
        } else if line.starts_with("50%") {
            p50 = words.nth(1).and_then(parse_wrk_duration_us);
        } else if line.starts_with("99%") {
            p99 = words.nth(1).and_then(parse_wrk_duration_us);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            non_2xx = v.trim().parse().ok()?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // connect 0, read 0, write 0, timeout 0
            socket_errors = v
                .split(',')
                .filter_map(|p| p.split_whitespace().nth(1)?.parse::<u64>().ok())
                .fold(0u64, u64::saturating_add);
        }
    }
    Some(WrkResult {
        requests: requests?,
        rps: rps?,
        p50_us: p50?,
        p99_us: p99?,
        non_2xx,
        socket_errors,
    })
}

/// nginx with one worker answering `hello` on 127.0.0.1:`port`, the same over TLS on
/// `tls_port` (self-signed certificate, system libssl), and on `gateway_port` a plain listener
/// that proxies to the TLS one over kept-alive upstream connections (so sonde's plain-TCP
/// fixed-rate client can drive TLS traffic: nginx is then TLS client and server).
pub struct Nginx {
    _proc: Proc,
    _dir: Scratch,
    pub port: u16,
    pub tls_port: u16,
    pub gateway_port: u16,
}

/// A self-signed certificate and key in `dir`.
fn self_signed(dir: &Path) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    procs::output(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert),
    )?;
    Ok((cert, key))
}

impl Nginx {
    pub fn start() -> Result<Nginx> {
        let dir = Scratch::new("sonde-bench-nginx-")?;
        let port = measure::free_port()?;
        let tls_port = measure::free_port()?;
        let gateway_port = measure::free_port()?;
        let (cert, key) = self_signed(dir.path())?;
        let (cert, key) = (cert.display(), key.display());
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process on;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n\
             access_log off;\nkeepalive_requests 100000000;\nclient_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello\\n\"; }} }}\n\
             server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n\
             location / {{ return 200 \"hello\\n\"; }} }}\n\
             upstream tls_upstream {{ server 127.0.0.1:{tls_port}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{gateway_port}; location / {{ proxy_pass https://tls_upstream;\n\
             proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_ssl_session_reuse on; }} }}\n}}\n"
        );
        let conf_path = dir.path().join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let mut cmd = Command::new("/usr/sbin/nginx");
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null());
        let proc = Proc::spawn("nginx", &mut cmd)?;
        for p in [port, tls_port, gateway_port] {
            measure::wait_for_port(p, Duration::from_secs(10)).context("nginx did not start")?;
        }
        Ok(Nginx {
            _proc: proc,
            _dir: dir,
            port,
            tls_port,
            gateway_port,
        })
    }

    pub fn tls_url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.tls_port)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }
}

pub fn run_wrk(url: &str, duration: u64) -> Result<WrkResult> {
    let out = procs::output(Command::new("wrk").args([
        "-t1",
        "-c32",
        &format!("-d{duration}s"),
        "--latency",
        url,
    ]))?;
    let r = parse_wrk(&out).with_context(|| format!("unparsable wrk output:\n{out}"))?;
    if r.non_2xx > 0 || r.socket_errors > 0 {
        eprintln!(
            "[bench] wrk: {} non-2xx, {} socket errors",
            r.non_2xx, r.socket_errors
        );
    }
    Ok(r)
}

/// A stage of sonde's span pipeline, after which `--pipeline-stop` cuts it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Stage {
    /// Probes + ring-buffer draining; data records dropped before the tracer.
    Drain,
    /// + decoding and the tracer (connections, HTTP parser); no spans built.
    Parse,
    /// + span building; spans dropped before merge/encode/export.
    Build,
    /// + OTLP protobuf encoding; nothing sent.
    Encode,
}

impl Stage {
    fn arg(self) -> &'static str {
        match self {
            Stage::Drain => "drain",
            Stage::Parse => "parse",
            Stage::Build => "build",
            Stage::Encode => "encode",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Variant {
    NoTracer,
    Noop,
    /// The full probes with `--no-metrics`, the pipeline cut after a stage.
    StopAfter(Stage),
    Tracing,
    /// Tracing with request/process metrics off (`--no-metrics`): their cost is c minus d.
    TracingNoMetrics,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::NoTracer => "a: no tracer",
            Variant::Noop => "b: sonde empty programs",
            Variant::StopAfter(Stage::Drain) => "c1: capture + drain only",
            Variant::StopAfter(Stage::Parse) => "c2: + parse",
            Variant::StopAfter(Stage::Build) => "c3: + build spans",
            Variant::StopAfter(Stage::Encode) => "c4: + encode",
            Variant::Tracing => "c: sonde tracing + metrics, OTLP",
            Variant::TracingNoMetrics => "d: sonde tracing, no metrics",
        }
    }

    /// What this variant adds over the previous one in the breakdown.
    fn step(self) -> &'static str {
        match self {
            Variant::NoTracer => "a: no tracer",
            Variant::Noop => "b: empty programs (the floor)",
            Variant::StopAfter(Stage::Drain) => "c1: + probes, ring-buffer drain",
            Variant::StopAfter(Stage::Parse) => "c2: + decode, tracer, HTTP parser",
            Variant::StopAfter(Stage::Build) => "c3: + span building",
            Variant::StopAfter(Stage::Encode) => "c4: + merge, group, OTLP encoding",
            Variant::TracingNoMetrics => "d: + export over gRPC",
            Variant::Tracing => "c: + request metrics",
        }
    }

    /// sonde's arguments; `ports` are the bench nginx's (other nginx processes on a shared
    /// machine stay out of the figures; the selection is sonde's userspace one, as `--exe`).
    fn sonde_args(self, sink: &DiscardSink, ports: &[u16]) -> Option<Vec<String>> {
        let mut args: Vec<String> = [
            "--exe",
            "nginx",
            "--otlp-grpc-addr",
            "off",
            "--otlp-http-addr",
            "off",
            "--metrics-addr",
            "127.0.0.1:0",
        ]
        .map(String::from)
        .to_vec();
        match self {
            Variant::NoTracer => return None,
            Variant::Noop => args.extend(["--noop-probes", "--output", "text"].map(String::from)),
            Variant::Tracing | Variant::TracingNoMetrics | Variant::StopAfter(_) => args.extend(
                [
                    "--output",
                    "otlp",
                    "--otlp-protocol",
                    "grpc",
                    "--otlp-endpoint",
                    &sink.endpoint(),
                ]
                .map(String::from),
            ),
        }
        for p in ports {
            args.extend(["--port".into(), p.to_string()]);
        }
        if let Variant::StopAfter(stage) = self {
            args.extend(["--pipeline-stop".into(), stage.arg().into()]);
        }
        if matches!(self, Variant::TracingNoMetrics | Variant::StopAfter(_)) {
            args.push("--no-metrics".into());
        }
        Some(args)
    }
}

/// Sonde-side figures of one measured run.
struct SondeFigures {
    cpu_s: f64,
    rss_mib: f64,
    lost: u64,
    spans_sink: u64,
    spans_made: u64,
    refused: u64,
    dropped_at_cut: Option<u64>,
}

/// Starts sonde for `variant` (if any), runs `load`, stops sonde and collects its figures.
fn with_sonde<T>(
    bin: &Path,
    variant: Variant,
    sink: &DiscardSink,
    ports: &[u16],
    load: impl FnOnce() -> Result<T>,
) -> Result<(T, Option<SondeFigures>)> {
    let Some(args) = variant.sonde_args(sink, ports) else {
        return Ok((load()?, None));
    };
    let sonde = Sonde::start(bin, &args, None)?;
    // Let the attach settle (adopting existing connections) before measuring.
    std::thread::sleep(Duration::from_millis(500));
    let spans_before = sink.spans();
    let cpu_before = sonde.cpu_seconds()?;
    let result = load()?;
    let cpu_s = sonde.cpu_seconds()? - cpu_before;
    let rss_mib = sonde.peak_rss_mib()?;
    let stop = sonde.stop()?;
    let spans_sink = sink.spans().saturating_sub(spans_before);
    Ok((
        result,
        Some(SondeFigures {
            cpu_s,
            rss_mib,
            lost: stop.lost,
            spans_sink,
            spans_made: stop.spans,
            refused: stop.refused,
            dropped_at_cut: stop.dropped_at_cut,
        }),
    ))
}

fn push_sonde(row: &mut Row, f: &SondeFigures, requests: u64) {
    let k = requests.max(1) as f64 / 1000.0;
    row.push("cpu_ms_per_1k", f.cpu_s * 1000.0 / k);
    row.push("rss_mib", f.rss_mib);
    row.push("lost", f.lost as f64);
    row.push("spans_made", f.spans_made as f64);
    row.push("spans_exported", f.spans_sink as f64);
    row.push("batches_refused", f.refused as f64);
    if let Some(n) = f.dropped_at_cut {
        row.push("dropped_at_cut", n as f64);
    }
}

/// The max-rate variants: the two baselines, the pipeline cut after each stage, then the
/// full pipeline without and with metrics (each row adds one step over the one above).
const MAX_VARIANTS: [Variant; 8] = [
    Variant::NoTracer,
    Variant::Noop,
    Variant::StopAfter(Stage::Drain),
    Variant::StopAfter(Stage::Parse),
    Variant::StopAfter(Stage::Build),
    Variant::StopAfter(Stage::Encode),
    Variant::TracingNoMetrics,
    Variant::Tracing,
];

/// "Where the daemon's time goes": per stage of `MAX_VARIANTS` from the floor on, req/s
/// against the untraced and the empty-programs runs, daemon CPU per 1k requests, and what
/// each step adds over the previous one (paired per round, then medians).
fn breakdown(max: &Section, variants: &[Variant]) -> Section {
    let cols = [
        col("rps_ratio", "req/s vs a", 3),
        col("rps_floor_ratio", "vs b (floor)", 3),
        col("floor_step", "step vs b", 3),
        col("cpu_ms_per_1k", "CPU ms/1k req", 2),
        col("cpu_step", "step CPU ms/1k", 2),
    ];
    let mut out = Section::new(
        "http",
        "where the daemon's time goes (max rate; each row adds one step to the row above)",
        &cols,
    );
    let samples = |v: Variant, key: &str| -> Vec<f64> {
        max.row(v.name())
            .map(|r| r.samples(key).to_vec())
            .unwrap_or_default()
    };
    let floor_ratio = |v: Variant| -> Vec<f64> {
        if v == Variant::Noop {
            // The floor against itself.
            samples(v, "rps").iter().map(|_| 1.0).collect()
        } else {
            samples(v, "rps_floor_ratio")
        }
    };
    let mut previous: Option<Variant> = None;
    for v in variants.iter().copied().skip_while(|v| *v != Variant::Noop) {
        let mut row = Row::new(v.step());
        for x in samples(v, "rps_ratio") {
            row.push("rps_ratio", x);
        }
        for x in floor_ratio(v) {
            row.push("rps_floor_ratio", x);
        }
        for x in samples(v, "cpu_ms_per_1k") {
            row.push("cpu_ms_per_1k", x);
        }
        if let Some(p) = previous {
            for (x, y) in floor_ratio(v).iter().zip(floor_ratio(p)) {
                row.push("floor_step", x - y);
            }
            for (x, y) in samples(v, "cpu_ms_per_1k")
                .iter()
                .zip(samples(p, "cpu_ms_per_1k"))
            {
                row.push("cpu_step", x - y);
            }
        }
        out.rows.push(row);
        previous = Some(v);
    }
    out.notes.push(
        "c1..c4 and d run with --no-metrics; c1..c4 export nothing (`sonde run --pipeline-stop`)"
            .into(),
    );
    out.notes.push(
        "the probes' own time runs in nginx's and wrk's syscalls: it shows in req/s, not in sonde's CPU".into(),
    );
    out.finish();
    out
}

/// The budgets for HTTP, judged on this run (`c`, the default configuration).
fn budgets(max: &Section, fixed: &Section, rate: u32) -> Section {
    let c = Variant::Tracing.name();
    let d = Variant::TracingNoMetrics.name();
    let worst_lost = [c, d]
        .iter()
        .filter_map(|v| fixed.row(v))
        .flat_map(|r| r.samples("lost").iter().copied())
        .reduce(f64::max);
    let mut out = Section::new("http", "budgets (issue 11), judged on this run", &[]);
    out.budgets = vec![
        Budget::new(
            "req/s kept of the empty-programs floor at max rate (c / b)",
            max.median(c, "rps_floor_ratio"),
            Limit::AtLeast(0.80),
            3,
        ),
        Budget::new(
            "daemon CPU ms per 1k requests at max rate (c)",
            max.median(c, "cpu_ms_per_1k"),
            Limit::AtMost(2.5),
            2,
        ),
        Budget::new(
            &format!("p99 at a fixed {rate} req/s vs untraced (c / a)"),
            fixed.median(c, "p99_ms_ratio"),
            Limit::AtMost(2.0),
            2,
        ),
        Budget::new(
            &format!("ring-buffer records lost at a fixed {rate} req/s (c and d, worst round)"),
            worst_lost,
            Limit::AtMost(0.0),
            0,
        ),
    ];
    out
}

pub fn run(args: &Args, sonde_bin: &Path) -> Result<Vec<Section>> {
    let nginx = Nginx::start()?;
    let sink = DiscardSink::start(None)?;
    let url = nginx.url();
    let ports = [nginx.port, nginx.tls_port, nginx.gateway_port];
    // Warm-up (page cache, nginx worker, CPU frequency) that no variant pays for.
    run_wrk(&url, 1)?;

    // TLS at max rate without the stage cuts (run time).
    let tls_variants = [
        Variant::NoTracer,
        Variant::Noop,
        Variant::Tracing,
        Variant::TracingNoMetrics,
    ];
    let cols = [
        col("rps", "req/s", 0),
        col("rps_ratio", "vs a", 3),
        col("rps_floor_ratio", "vs b", 3),
        col("p50_ms", "p50 ms", 3),
        col("p99_ms", "p99 ms", 3),
        col("cpu_ms_per_1k", "sonde CPU ms/1k req", 2),
        col("cpu_ms_per_1k_ratio", "CPU vs d", 3),
        col("rss_mib", "sonde RSS MiB", 1),
        col("lost", "lost", 0),
        col("spans_made", "spans", 0),
        col("spans_exported", "spans at sink", 0),
        col("batches_refused", "refused", 0),
        col("dropped_at_cut", "dropped at cut", 0),
    ];
    let mut max = Section::new("http", "nginx under wrk -t1 -c32 (max rate)", &cols);
    max.rows = MAX_VARIANTS.iter().map(|v| Row::new(v.name())).collect();
    // HTTPS in the same run: wrk over TLS (OpenSSL) against nginx's TLS listener; sonde
    // reads both sides' plaintext through the OpenSSL uprobes.
    let tls_url = nginx.tls_url();
    run_wrk(&tls_url, 1)?;
    let mut tls_max = Section::new(
        "https",
        "nginx over TLS under wrk -t1 -c32 (max rate, keep-alive)",
        &cols,
    );
    tls_max.rows = tls_variants.iter().map(|v| Row::new(v.name())).collect();
    for round in 1..=args.rounds {
        for (section, target, label, variants) in [
            (&mut max, &url, "http", &MAX_VARIANTS[..]),
            (&mut tls_max, &tls_url, "https", &tls_variants[..]),
        ] {
            for (i, v) in variants.iter().enumerate() {
                eprintln!(
                    "[bench] {label} round {round}/{}: {}",
                    args.rounds,
                    v.name()
                );
                let (w, fig) = with_sonde(sonde_bin, *v, &sink, &ports, || {
                    run_wrk(target, args.duration)
                })?;
                let Some(row) = section.rows.get_mut(i) else {
                    continue;
                };
                row.push("rps", w.rps);
                row.push("p50_ms", w.p50_us / 1000.0);
                row.push("p99_ms", w.p99_us / 1000.0);
                if let Some(f) = &fig {
                    push_sonde(row, f, w.requests);
                }
            }
        }
    }
    for (section, variants) in [
        (&mut max, &MAX_VARIANTS[..]),
        (&mut tls_max, &tls_variants[..]),
    ] {
        section.add_ratio(0, "rps");
        section.add_ratio_as(1, "rps", "rps_floor_ratio");
        section.add_ratio(0, "p99_ms");
        if let Some(d) = variants
            .iter()
            .position(|v| *v == Variant::TracingNoMetrics)
        {
            section.add_ratio(d, "cpu_ms_per_1k");
        }
        section.notes.push(format!(
            "{} rounds of {} s, variants interleaved (plain and TLS in the same rounds); medians; ratios paired per round; spans go to an in-process discard OTLP/gRPC sink",
            args.rounds, args.duration
        ));
    }
    max.notes.push(
        "metrics cost = sonde CPU per request of c (metrics on, the default) over d (--no-metrics); budget < 1.10"
            .into(),
    );
    tls_max.notes.push(
        "budget: c >= 0.85 of a; each SSL_read/SSL_write adds a uprobe and a uretprobe".into(),
    );
    max.notes.push(
        "sonde selects --exe nginx --port <this nginx's ports>: other nginx processes on a shared machine stay out".into(),
    );
    max.notes.push(
        "c1..c4: the full probes with --no-metrics and the pipeline cut after one stage (see the next table); dropped at cut = data records (c1), exchanges (c2), spans (c3, c4)".into(),
    );
    let breakdown = breakdown(&max, &MAX_VARIANTS);
    max.finish();
    tls_max.finish();

    // Fixed rate: sonde's own open-loop client (wrk has no rate limit), a vs c.
    let rate = args.http_rate;
    let fixed_cols = [
        col("rps", "req/s", 0),
        col("p50_ms", "p50 ms", 3),
        col("p99_ms", "p99 ms", 3),
        col("p99_ms_ratio", "p99 vs a", 3),
        col("errors", "errors", 0),
        col("cpu_ms_per_1k", "sonde CPU ms/1k req", 2),
        col("cpu_ms_per_1k_ratio", "CPU vs d", 3),
        col("rss_mib", "sonde RSS MiB", 1),
        col("lost", "lost", 0),
        col("spans_made", "spans", 0),
        col("spans_exported", "spans at sink", 0),
    ];
    let mut fixed = Section::new(
        "http",
        &format!("nginx at a fixed {rate} req/s (32 connections, open loop)"),
        &fixed_cols,
    );
    let fixed_variants = [
        Variant::NoTracer,
        Variant::Tracing,
        Variant::TracingNoMetrics,
    ];
    fixed.rows = fixed_variants.iter().map(|v| Row::new(v.name())).collect();
    for round in 1..=args.rounds {
        for (i, v) in fixed_variants.iter().enumerate() {
            eprintln!(
                "[bench] http fixed {rate}/s round {round}/{}: {}",
                args.rounds,
                v.name()
            );
            let load = || fixedrate::run(nginx.port, rate, 32, Duration::from_secs(args.duration));
            let (r, fig) = with_sonde(sonde_bin, *v, &sink, &ports, load)?;
            let Some(row) = fixed.rows.get_mut(i) else {
                continue;
            };
            row.push("rps", r.achieved_rps());
            row.push("p50_ms", r.p50_us as f64 / 1000.0);
            row.push("p99_ms", r.p99_us as f64 / 1000.0);
            row.push("errors", r.errors as f64);
            if let Some(f) = &fig {
                push_sonde(row, f, r.completed);
            }
        }
    }
    fixed.add_ratio(0, "p99_ms");
    fixed.add_ratio(2, "cpu_ms_per_1k");
    fixed.notes.push(
        "latency measured from each request's scheduled send time (no coordinated omission)".into(),
    );
    if fixed
        .rows
        .iter()
        .any(|r| r.samples("rps").iter().any(|x| *x < rate as f64 * 0.97))
    {
        fixed.notes.push(format!(
            "the client did not sustain {rate} req/s in every run: see req/s"
        ));
    }
    fixed.finish();

    // TLS at a fixed rate: the open-loop client -> nginx's plain gateway -> kept-alive TLS
    // upstream connections -> nginx's TLS server (nginx is TLS client and server, both read
    // through the uprobes: two spans per request). Budget: no lost events.
    let tls_rate = args.https_rate;
    let mut tls_fixed = Section::new(
        "https",
        &format!("nginx TLS gateway at a fixed {tls_rate} req/s (32 connections, open loop)"),
        &fixed_cols,
    );
    tls_fixed.rows = fixed_variants.iter().map(|v| Row::new(v.name())).collect();
    for round in 1..=args.rounds {
        for (i, v) in fixed_variants.iter().enumerate() {
            eprintln!(
                "[bench] https fixed {tls_rate}/s round {round}/{}: {}",
                args.rounds,
                v.name()
            );
            let load = || {
                fixedrate::run(
                    nginx.gateway_port,
                    tls_rate,
                    32,
                    Duration::from_secs(args.duration),
                )
            };
            let (r, fig) = with_sonde(sonde_bin, *v, &sink, &ports, load)?;
            let Some(row) = tls_fixed.rows.get_mut(i) else {
                continue;
            };
            row.push("rps", r.achieved_rps());
            row.push("p50_ms", r.p50_us as f64 / 1000.0);
            row.push("p99_ms", r.p99_us as f64 / 1000.0);
            row.push("errors", r.errors as f64);
            if let Some(f) = &fig {
                push_sonde(row, f, r.completed);
            }
        }
    }
    tls_fixed.add_ratio(0, "p99_ms");
    tls_fixed.notes.push(
        "spans: a CLIENT span (nginx's upstream TLS call) and a SERVER span per request, plus the gateway's plain SERVER span".into(),
    );
    tls_fixed.finish();
    if max.rows.iter().all(|r| r.samples("rps").is_empty()) {
        bail!("no http run completed");
    }
    let budgets = budgets(&max, &fixed, rate);
    Ok(vec![max, breakdown, tls_max, fixed, tls_fixed, budgets])
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 1s test @ http://127.0.0.1:18089/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   106.11us  284.92us   6.39ms   99.09%
    Req/Sec   230.02k     5.75k  236.99k    72.73%
  Latency Distribution
     50%   66.00us
     75%  116.00us
     90%  129.00us
     99%    1.20ms
  250942 requests in 1.10s, 36.61MB read
Requests/sec: 228118.51
Transfer/sec:     33.28MB
";

    /// A max-rate section with two rounds: req/s and daemon CPU per variant.
    fn max_section() -> Section {
        let mut max = Section::new("http", "max", &[]);
        let figures: [(f64, f64); 8] = [
            (100.0, 0.0), // a
            (90.0, 0.1),  // b
            (81.0, 1.0),  // c1
            (72.0, 2.0),  // c2
            (63.0, 3.0),  // c3
            (54.0, 3.5),  // c4
            (45.0, 4.0),  // d
            (36.0, 5.0),  // c
        ];
        for (v, (rps, cpu)) in MAX_VARIANTS.iter().zip(figures) {
            let mut row = Row::new(v.name());
            for round in [1.0, 2.0] {
                row.push("rps", rps * round);
                if *v != Variant::NoTracer {
                    row.push("cpu_ms_per_1k", cpu);
                }
            }
            max.rows.push(row);
        }
        max.add_ratio(0, "rps");
        max.add_ratio_as(1, "rps", "rps_floor_ratio");
        max
    }

    #[test]
    fn the_breakdown_adds_one_step_per_row() {
        let max = max_section();
        let b = breakdown(&max, &MAX_VARIANTS);
        let rows: Vec<&str> = b.rows.iter().map(|r| r.variant.as_str()).collect();
        assert_eq!(rows.len(), 7, "{rows:?}");
        assert!(
            rows[0].starts_with("b:") && rows[6].starts_with("c:"),
            "{rows:?}"
        );
        let m = |v: Variant, key: &str| b.median(v.step(), key);
        assert_eq!(m(Variant::Noop, "rps_floor_ratio"), Some(1.0));
        assert_eq!(m(Variant::Noop, "cpu_step"), None);
        assert_eq!(m(Variant::StopAfter(Stage::Drain), "rps_ratio"), Some(0.81));
        assert_eq!(
            m(Variant::StopAfter(Stage::Drain), "rps_floor_ratio"),
            Some(0.9)
        );
        assert_eq!(
            m(Variant::StopAfter(Stage::Drain), "floor_step"),
            Some(0.9 - 1.0)
        );
        assert_eq!(m(Variant::StopAfter(Stage::Parse), "cpu_step"), Some(1.0));
        assert_eq!(m(Variant::TracingNoMetrics, "cpu_step"), Some(0.5));
        // c (metrics) steps from d.
        assert_eq!(m(Variant::Tracing, "cpu_step"), Some(1.0));
        assert_eq!(m(Variant::Tracing, "rps_floor_ratio"), Some(0.4));
        assert!(b.render().contains("step CPU ms/1k"));
    }

    #[test]
    fn budgets_read_c_at_max_and_fixed_rate() {
        let mut max = max_section();
        max.finish();
        let mut fixed = Section::new("http", "fixed", &[]);
        for (v, p99, lost) in [
            (Variant::NoTracer, 0.3, None),
            (Variant::Tracing, 0.5, Some(0.0)),
            (Variant::TracingNoMetrics, 0.4, Some(3.0)),
        ] {
            let mut row = Row::new(v.name());
            row.push("p99_ms", p99);
            if let Some(l) = lost {
                row.push("lost", l);
            }
            fixed.rows.push(row);
        }
        fixed.add_ratio(0, "p99_ms");
        fixed.finish();
        let b = budgets(&max, &fixed, 10_000);
        let verdicts: Vec<(Option<f64>, Option<bool>)> =
            b.budgets.iter().map(|b| (b.measured, b.met)).collect();
        assert_eq!(
            verdicts,
            [
                (Some(0.4), Some(false)),
                (Some(5.0), Some(false)),
                (Some(0.5 / 0.3), Some(true)),
                (Some(3.0), Some(false)),
            ]
        );
        let text = b.render();
        assert!(text.contains("at a fixed 10000 req/s"), "{text}");
        assert_eq!(text.matches("NOT MET").count(), 3, "{text}");
    }

    #[test]
    fn stage_variants_cut_the_pipeline_without_metrics() {
        let sink = DiscardSink::start(None).unwrap();
        let args = Variant::StopAfter(Stage::Build)
            .sonde_args(&sink, &[8080, 8443])
            .unwrap();
        let text = args.join(" ");
        assert!(text.contains("--pipeline-stop build"), "{text}");
        assert!(text.contains("--no-metrics"), "{text}");
        assert!(text.contains("--output otlp"), "{text}");
        assert!(text.contains("--port 8080 --port 8443"), "{text}");
        let full = Variant::Tracing.sonde_args(&sink, &[]).unwrap().join(" ");
        assert!(!full.contains("--pipeline-stop") && !full.contains("--no-metrics"));
        assert_eq!(Variant::NoTracer.sonde_args(&sink, &[]), None);
    }

    #[test]
    fn wrk_output_parses() {
        let r = parse_wrk(WRK).unwrap();
        assert_eq!(r.requests, 250942);
        assert!((r.rps - 228118.51).abs() < 1e-6);
        assert!((r.p50_us - 66.0).abs() < 1e-9);
        assert!((r.p99_us - 1200.0).abs() < 1e-9);
        assert_eq!((r.non_2xx, r.socket_errors), (0, 0));
    }

    #[test]
    fn wrk_errors_are_counted() {
        let out = format!(
            "{WRK}  Non-2xx or 3xx responses: 12\n  Socket errors: connect 0, read 3, write 1, timeout 2\n"
        );
        let r = parse_wrk(&out).unwrap();
        assert_eq!((r.non_2xx, r.socket_errors), (12, 6));
    }

    #[test]
    fn wrk_without_latency_distribution_is_rejected() {
        let out: String = WRK
            .lines()
            .filter(|l| !l.contains('%') || l.contains("Stdev"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse_wrk(&out), None);
        assert_eq!(parse_wrk(""), None);
    }

    #[test]
    fn wrk_durations() {
        assert_eq!(parse_wrk_duration_us("66.00us"), Some(66.0));
        assert_eq!(parse_wrk_duration_us("1.50ms"), Some(1500.0));
        assert_eq!(parse_wrk_duration_us("2.00s"), Some(2e6));
        assert_eq!(parse_wrk_duration_us("1.00m"), Some(60e6));
        assert_eq!(parse_wrk_duration_us("3.00parsecs"), None);
        assert_eq!(parse_wrk_duration_us("ms"), None);
    }
}
