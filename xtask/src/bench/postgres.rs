//! `--suite postgres`: a throwaway PostgreSQL (temp dir, 127.0.0.1, fsync off) under
//! `pgbench -S` in simple and prepared query modes, without a tracer, with sonde's empty
//! programs (the floor: the cost of the hooks alone) and with sonde tracing pgbench and
//! exporting over OTLP/gRPC, interleaved in every round.
use std::{
    fs,
    os::unix::{fs::chown, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    Args, measure,
    procs::{self, Proc, Scratch},
    report::{Budget, Limit, Row, Section, col},
    sink::DiscardSink,
    sonde::Sonde,
};

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

#[derive(Debug, Clone, PartialEq)]
pub struct PgbenchResult {
    pub tps: f64,
    pub transactions: u64,
    pub failed: u64,
}

/// Parses pgbench's summary (`number of transactions actually processed: N`, `tps = X (...)`).
pub fn parse_pgbench(out: &str) -> Option<PgbenchResult> {
    let mut tps = None;
    let mut transactions = None;
    let mut failed = 0;
    for line in out.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("tps = ") {
            tps = v.split_whitespace().next().and_then(|n| n.parse().ok());
        } else if let Some(v) = line.strip_prefix("number of transactions actually processed:") {
            // "N" or "N/M" when a transaction count was requested.
            transactions = v
                .trim()
                .split('/')
                .next()
                .and_then(|n| n.trim().parse().ok());
        } else if let Some(v) = line.strip_prefix("number of failed transactions:") {
            failed = v.split_whitespace().next().and_then(|n| n.parse().ok())?;
        }
    }
    Some(PgbenchResult {
        tps: tps?,
        transactions: transactions?,
        failed,
    })
}

fn postgres_ids() -> Result<(u32, u32)> {
    let uid = procs::output(Command::new("id").args(["-u", "postgres"]))?
        .trim()
        .parse()?;
    let gid = procs::output(Command::new("id").args(["-g", "postgres"]))?
        .trim()
        .parse()?;
    Ok((uid, gid))
}

/// A PostgreSQL server in a temp dir, stopped and removed on drop.
pub struct Postgres {
    proc: Option<Proc>,
    _dir: Scratch,
    pub port: u16,
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        let (uid, gid) = postgres_ids().context("the `postgres` OS user is needed")?;
        let dir = Scratch::new("sonde-bench-pg-")?;
        chown(dir.path(), Some(uid), Some(gid))?;
        let data: PathBuf = dir.path().join("data");
        let bin = Path::new(PG_BIN);
        procs::output(
            Command::new(bin.join("initdb"))
                .args([
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--no-sync",
                    "-D",
                ])
                .arg(&data)
                .uid(uid)
                .gid(gid),
        )?;
        let port = measure::free_port()?;
        // TLS available (self-signed); each pgbench run picks it with PGSSLMODE.
        let cert = dir.path().join("server.crt");
        let key = dir.path().join("server.key");
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
        for f in [&cert, &key] {
            chown(f, Some(uid), Some(gid))?;
        }
        let log = fs::File::create(dir.path().join("postgres.log"))?;
        chown(dir.path().join("postgres.log"), Some(uid), Some(gid))?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args([
                "-p",
                &port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .args([
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "max_connections=50",
            ])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args(["-c", "ssl=on", "-c"])
            .arg(format!("ssl_cert_file={}", cert.display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", key.display()))
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let proc = Proc::spawn("postgres", &mut cmd)?;
        let pg = Postgres {
            proc: Some(proc),
            _dir: dir,
            port,
        };
        for _ in 0..100 {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(pg);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("PostgreSQL did not accept connections on port {port}")
    }

    fn pgbench(&self) -> Command {
        let mut c = Command::new(Path::new(PG_BIN).join("pgbench"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        c
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            // SIGINT = fast shutdown; the group is killed after the grace period anyway.
            let _ = p.stop(libc::SIGINT, Duration::from_secs(10));
        }
    }
}

/// `mode` is a pgbench query mode, optionally suffixed `+tls` (sslmode=require; otherwise
/// sslmode=disable).
fn run_pgbench(pg: &Postgres, mode: &str, duration: u64) -> Result<PgbenchResult> {
    let (mode, tls) = match mode.strip_suffix("+tls") {
        Some(m) => (m, true),
        None => (mode, false),
    };
    let out = procs::output(
        pg.pgbench()
            .env("PGSSLMODE", if tls { "require" } else { "disable" })
            .args([
                "-S",
                "-M",
                mode,
                "-c",
                "4",
                "-j",
                "2",
                "-T",
                &duration.to_string(),
                "postgres",
            ]),
    )?;
    parse_pgbench(&out).with_context(|| format!("unparsable pgbench output:\n{out}"))
}

const TRACED: &str = "c: sonde tracing pgbench, OTLP";

pub fn run(args: &Args, sonde_bin: &Path) -> Result<Vec<Section>> {
    let pg = Postgres::start()?;
    procs::output(pg.pgbench().args(["-i", "-s", "1", "-q", "postgres"]))?;
    let sink = DiscardSink::start(None)?;
    let common = [
        "--exe",
        "pgbench",
        "--otlp-grpc-addr",
        "off",
        "--otlp-http-addr",
        "off",
        "--metrics-addr",
        "127.0.0.1:0",
    ];
    // Only this server's connections: other PostgreSQL clients on a shared machine stay out.
    let port = pg.port.to_string();
    let common: Vec<&str> = common.iter().copied().chain(["--port", &port]).collect();
    let endpoint = sink.endpoint();
    let tracing = [
        "--output",
        "otlp",
        "--otlp-protocol",
        "grpc",
        "--otlp-endpoint",
        &endpoint,
    ];
    let noop = ["--noop-probes", "--output", "text"];
    let with = |extra: &[&str]| -> Vec<String> {
        common.iter().chain(extra).map(|a| a.to_string()).collect()
    };
    // In row order: a (no tracer), b (empty programs), c (tracing), with sonde's arguments.
    let variants = [
        ("a", None),
        ("b", Some(with(&noop))),
        ("c", Some(with(&tracing))),
    ];
    let cols = [
        col("tps", "TPS", 0),
        col("tps_ratio", "vs a", 3),
        col("tps_floor_ratio", "vs b", 3),
        col("cpu_ms_per_1k", "sonde CPU ms/1k queries", 2),
        col("rss_mib", "sonde RSS MiB", 1),
        col("lost", "lost", 0),
        col("spans_made", "spans", 0),
        col("spans_exported", "spans at sink", 0),
        col("batches_refused", "refused", 0),
        col("failed", "failed tx", 0),
    ];
    let modes = ["simple", "prepared", "simple+tls"];
    let mut sections: Vec<Section> = modes
        .iter()
        .map(|m| {
            let mut s = Section::new(
                "postgres",
                &match m.strip_suffix("+tls") {
                    Some(m) => {
                        format!("pgbench -S -M {m} -c 4 -j 2 (scale 1) over TLS (sslmode=require)")
                    }
                    None => format!("pgbench -S -M {m} -c 4 -j 2 (scale 1)"),
                },
                &cols,
            );
            s.rows = vec![
                Row::new("a: no tracer"),
                Row::new("b: sonde empty programs"),
                Row::new(TRACED),
            ];
            s
        })
        .collect();
    run_pgbench(&pg, "simple", 1)?; // warm-up: caches, connections
    for round in 1..=args.rounds {
        for (mi, mode) in modes.iter().enumerate() {
            for (vi, (letter, sonde_args)) in variants.iter().enumerate() {
                eprintln!(
                    "[bench] postgres round {round}/{} -M {mode}: {letter}",
                    args.rounds,
                );
                let Some(section) = sections.get_mut(mi) else {
                    continue;
                };
                let Some(row) = section.rows.get_mut(vi) else {
                    continue;
                };
                let Some(sonde_args) = sonde_args else {
                    let r = run_pgbench(&pg, mode, args.duration)?;
                    row.push("tps", r.tps);
                    row.push("failed", r.failed as f64);
                    continue;
                };
                let sonde = Sonde::start(sonde_bin, sonde_args, None)?;
                std::thread::sleep(Duration::from_millis(500));
                let spans_before = sink.spans();
                let cpu_before = sonde.cpu_seconds()?;
                let r = run_pgbench(&pg, mode, args.duration)?;
                let cpu = sonde.cpu_seconds()? - cpu_before;
                let rss = sonde.peak_rss_mib()?;
                let stop = sonde.stop()?;
                // In -S mode every transaction is exactly one SELECT.
                let queries_k = r.transactions.max(1) as f64 / 1000.0;
                row.push("tps", r.tps);
                row.push("failed", r.failed as f64);
                row.push("cpu_ms_per_1k", cpu * 1000.0 / queries_k);
                row.push("rss_mib", rss);
                row.push("lost", stop.lost as f64);
                row.push("spans_made", stop.spans as f64);
                row.push(
                    "spans_exported",
                    sink.spans().saturating_sub(spans_before) as f64,
                );
                row.push("batches_refused", stop.refused as f64);
            }
        }
    }
    for (s, mode) in sections.iter_mut().zip(modes) {
        s.add_ratio(0, "tps");
        s.add_ratio_as(1, "tps", "tps_floor_ratio");
        s.notes.push(format!(
            "{} rounds of {} s, a/b/c interleaved with the other modes; medians; ratios paired per round",
            args.rounds, args.duration
        ));
        s.finish();
        if !mode.ends_with("+tls") {
            let kept = s.median(TRACED, "tps_ratio");
            s.budgets.push(Budget::new(
                "TPS kept of untraced (c / a), issue 11",
                kept,
                Limit::AtLeast(0.85),
                3,
            ));
        }
    }
    Ok(sections)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PGBENCH_15: &str = "pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 1
query mode: prepared
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 123456
number of failed transactions: 0 (0.000%)
latency average = 0.162 ms
initial connection time = 5.123 ms
tps = 24691.234567 (without initial connection time)
";

    #[test]
    fn pgbench_15_output_parses() {
        let r = parse_pgbench(PGBENCH_15).unwrap();
        assert_eq!(r.transactions, 123456);
        assert_eq!(r.failed, 0);
        assert!((r.tps - 24691.234567).abs() < 1e-9);
    }

    #[test]
    fn pgbench_older_and_failed_formats() {
        let old = "number of transactions actually processed: 1000/1000\ntps = 812.5 (including connections establishing)\ntps = 830.1 (excluding connections establishing)\n";
        let r = parse_pgbench(old).unwrap();
        assert_eq!(r.transactions, 1000);
        // The last tps line wins (excluding connection time).
        assert!((r.tps - 830.1).abs() < 1e-9);
        let failed = PGBENCH_15.replace(
            "failed transactions: 0 (0.000%)",
            "failed transactions: 17 (0.014%)",
        );
        assert_eq!(parse_pgbench(&failed).unwrap().failed, 17);
    }

    #[test]
    fn pgbench_incomplete_output_is_rejected() {
        assert_eq!(parse_pgbench("pgbench: error: connection refused"), None);
        let no_tps: String = PGBENCH_15
            .lines()
            .filter(|l| !l.starts_with("tps"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse_pgbench(&no_tps), None);
    }
}
