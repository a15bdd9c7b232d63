//! `cargo xtask bench`: overhead and throughput of sonde against its issue budgets.
//!
//! Suites: `http` (nginx under wrk: no tracer / empty programs / tracing, plain and over TLS
//! in the same rounds, plus fixed-rate runs), `postgres` (pgbench -S simple and prepared, and
//! simple over TLS, without and with sonde) and `otlp` (sonde forwarding OTLP
//! from a Rust load generator to a discard sink). The machine is small and noisy, so variants
//! are interleaved in every round and each figure is a median over rounds, with ratios paired
//! per round against the baseline measured in the same run. Every process started is killed
//! and every temp dir removed at the end, on error and on Ctrl-C.
//!
//! Why not existing tools: wrk cannot hold a fixed rate and wrk2/oha are not packaged here
//! (oha from crates.io builds for minutes), so the fixed-rate HTTP client is ~100 lines in
//! `fixedrate.rs`; telemetrygen (Go) is not installable offline, so the OTLP load generator
//! and the discard sink are small tonic programs in `loadgen.rs` and `sink.rs`. The Python
//! test sink is not used: turning every request into JSON it would be the bottleneck at these
//! rates and take one of the two cores from the processes being measured.
mod fixedrate;
mod http;
mod loadgen;
mod measure;
mod otlp;
mod postgres;
mod procs;
mod report;
mod sink;
mod sonde;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    Http,
    Postgres,
    Otlp,
    All,
}

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Which suite to run.
    #[arg(long, value_enum, default_value = "all")]
    pub suite: Suite,
    /// Rounds; variants are interleaved in each round and medians reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,
    /// Seconds per measured run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Also write every sample and median to this JSON file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The sonde binary (default: the release build in the cargo target dir).
    #[arg(long)]
    pub sonde: Option<PathBuf>,
    /// Request rate of the fixed-rate HTTP run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub http_rate: u32,
    /// Request rate of the fixed-rate HTTPS run (through nginx's TLS gateway).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub https_rate: u32,
    /// Skip bootstrap and the release build; use the binaries already built.
    #[arg(long)]
    pub no_build: bool,
    /// Span rate of the fixed-rate OTLP run.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub otlp_rate: u32,
    /// Run no benchmark: serve the discard OTLP/gRPC sink on this address until interrupted
    /// (for profiling sonde by hand against the same sink the benchmarks use).
    #[arg(long, value_name = "ADDR")]
    pub serve_sink: Option<std::net::SocketAddr>,
}

/// Pins the calling thread to one CPU (best effort: a machine with fewer CPUs just ignores it).
pub(crate) fn pin_current_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it (CPU_SET ignores
    // out-of-range CPUs); sched_setaffinity(0) addresses the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn default_sonde(root: &Path) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join("release/sonde")
}

/// `--serve-sink`: the benchmarks' discard sink alone, printing the spans it counted every 5 s.
fn serve_sink(addr: std::net::SocketAddr) -> Result<()> {
    let sink = sink::DiscardSink::start_on(addr, None)?;
    eprintln!("[bench] discard OTLP/gRPC sink on {}", sink.endpoint());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(5));
        eprintln!("[bench] spans so far: {}", sink.spans());
    }
}

/// `cargo xtask` is a debug build, too slow to generate OTLP load or pace HTTP requests: build
/// xtask with `--release` and hand the same arguments over to it.
fn reexec_release(root: &Path) -> Result<()> {
    let status = std::process::Command::new("cargo")
        .current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "xtask"])
        .status()
        .context("cargo build --release -p xtask")?;
    if !status.success() {
        bail!("cargo build --release -p xtask failed: {status}");
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if !argv.iter().any(|a| a == "--no-build") {
        argv.push("--no-build".into());
    }
    eprintln!("[bench] continuing in the release build of xtask");
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(target.join("release/xtask")).args(argv),
    );
    Err(err).context("exec the release xtask")
}

/// Runs the chosen suites and prints one table per section.
pub fn run(args: &Args, root: &Path) -> Result<()> {
    if cfg!(debug_assertions) {
        return reexec_release(root);
    }
    if let Some(addr) = args.serve_sink {
        return serve_sink(addr);
    }
    let sonde_bin = args.sonde.clone().unwrap_or_else(|| default_sonde(root));
    if !sonde_bin.is_file() {
        bail!(
            "no sonde binary at {} (build it with cargo build --release -p sonde)",
            sonde_bin.display()
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmarks load eBPF programs and run PostgreSQL as `postgres`: run as root");
    }
    procs::install_signal_cleanup()?;
    let suites: &[Suite] = match args.suite {
        Suite::All => &[Suite::Http, Suite::Postgres, Suite::Otlp],
        Suite::Http => &[Suite::Http],
        Suite::Postgres => &[Suite::Postgres],
        Suite::Otlp => &[Suite::Otlp],
    };
    let mut sections = Vec::new();
    let mut failures = Vec::new();
    for suite in suites {
        let result = match suite {
            Suite::Http => http::run(args, &sonde_bin),
            Suite::Postgres => postgres::run(args, &sonde_bin),
            Suite::Otlp => otlp::run(args, &sonde_bin),
            Suite::All => continue,
        };
        match result {
            Ok(s) => {
                for section in &s {
                    println!("{}", section.render());
                }
                sections.extend(s);
            }
            Err(e) => {
                eprintln!("[bench] {suite:?} suite failed: {e:#}");
                failures.push(format!("{suite:?}: {e:#}"));
            }
        }
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "rounds": args.rounds,
            "duration_s": args.duration,
            "sections": sections,
            "failures": failures,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if !failures.is_empty() {
        bail!(
            "{} suite(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}
