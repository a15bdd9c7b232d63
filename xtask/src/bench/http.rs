//! `--suite http`: nginx (one worker, `return 200`) under wrk, without a tracer, with sonde's
//! empty programs, and with sonde tracing nginx and exporting over OTLP/gRPC; then a fixed-rate
//! run (sonde's own open-loop client, since wrk cannot pace) to check for lost events.
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
    report::{Row, Section, col},
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

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    NoTracer,
    Noop,
    Tracing,
    /// Tracing with request/process metrics off (`--no-metrics`): their cost is c minus d.
    TracingNoMetrics,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::NoTracer => "a: no tracer",
            Variant::Noop => "b: sonde empty programs",
            Variant::Tracing => "c: sonde tracing + metrics, OTLP",
            Variant::TracingNoMetrics => "d: sonde tracing, no metrics",
        }
    }

    fn sonde_args(self, sink: &DiscardSink) -> Option<Vec<String>> {
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
            Variant::Tracing | Variant::TracingNoMetrics => args.extend(
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
        if self == Variant::TracingNoMetrics {
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
}

/// Starts sonde for `variant` (if any), runs `load`, stops sonde and collects its figures.
fn with_sonde<T>(
    bin: &Path,
    variant: Variant,
    sink: &DiscardSink,
    load: impl FnOnce() -> Result<T>,
) -> Result<(T, Option<SondeFigures>)> {
    let Some(args) = variant.sonde_args(sink) else {
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
}

pub fn run(args: &Args, sonde_bin: &Path) -> Result<Vec<Section>> {
    let nginx = Nginx::start()?;
    let sink = DiscardSink::start(None)?;
    let url = nginx.url();
    // Warm-up (page cache, nginx worker, CPU frequency) that no variant pays for.
    run_wrk(&url, 1)?;

    let variants = [
        Variant::NoTracer,
        Variant::Noop,
        Variant::Tracing,
        Variant::TracingNoMetrics,
    ];
    let cols = [
        col("rps", "req/s", 0),
        col("rps_ratio", "vs a", 3),
        col("p50_ms", "p50 ms", 3),
        col("p99_ms", "p99 ms", 3),
        col("cpu_ms_per_1k", "sonde CPU ms/1k req", 2),
        col("cpu_ms_per_1k_ratio", "CPU vs d", 3),
        col("rss_mib", "sonde RSS MiB", 1),
        col("lost", "lost", 0),
        col("spans_made", "spans", 0),
        col("spans_exported", "spans at sink", 0),
        col("batches_refused", "refused", 0),
    ];
    let mut max = Section::new("http", "nginx under wrk -t1 -c32 (max rate)", &cols);
    max.rows = variants.iter().map(|v| Row::new(v.name())).collect();
    // HTTPS in the same run: wrk over TLS (OpenSSL) against nginx's TLS listener; sonde
    // reads both sides' plaintext through the OpenSSL uprobes.
    let tls_url = nginx.tls_url();
    run_wrk(&tls_url, 1)?;
    let mut tls_max = Section::new(
        "https",
        "nginx over TLS under wrk -t1 -c32 (max rate, keep-alive)",
        &cols,
    );
    tls_max.rows = variants.iter().map(|v| Row::new(v.name())).collect();
    for round in 1..=args.rounds {
        for (section, target, label) in
            [(&mut max, &url, "http"), (&mut tls_max, &tls_url, "https")]
        {
            for (i, v) in variants.iter().enumerate() {
                eprintln!(
                    "[bench] {label} round {round}/{}: {}",
                    args.rounds,
                    v.name()
                );
                let (w, fig) = with_sonde(sonde_bin, *v, &sink, || run_wrk(target, args.duration))?;
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
    for section in [&mut max, &mut tls_max] {
        section.add_ratio(0, "rps");
        section.add_ratio(0, "p99_ms");
        section.add_ratio(3, "cpu_ms_per_1k");
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
            let (r, fig) = with_sonde(sonde_bin, *v, &sink, load)?;
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
            let (r, fig) = with_sonde(sonde_bin, *v, &sink, load)?;
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
    Ok(vec![max, tls_max, fixed, tls_fixed])
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
