//! `cargo xtask`: the developer entry points (bootstrap, build-ebpf, run, test, bench, fuzz).
//!
//! Every command that needs tools first runs the idempotent bootstrap, so a fresh machine goes
//! from nothing to running with `cargo xtask run` and `cargo xtask test`.
use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod bench;
mod fuzz;

/// The pinned eBPF toolchain: `channel` in ebpf/probes/rust-toolchain.toml, the one place it
/// is written (build.rs and bootstrap.sh read it too).
fn ebpf_toolchain() -> Result<String> {
    let file = root().join("ebpf/probes/rust-toolchain.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
    text.lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("channel")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_owned())
        })
        .with_context(|| format!("no `channel` in {}", file.display()))
}

/// [`ebpf_toolchain`] where a command is being built: an unreadable pin is reported and
/// leaves a name no rustup knows, so the command fails visibly.
fn ebpf_toolchain_name() -> String {
    ebpf_toolchain().unwrap_or_else(|e| {
        eprintln!("xtask: {e:#}");
        "unpinned-see-ebpf-probes-rust-toolchain-toml".to_owned()
    })
}

#[derive(Parser)]
#[command(name = "cargo xtask", about = "sonde developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install every prerequisite (apt, rustup, bpf-linker, pip). Idempotent.
    Bootstrap,
    /// Build the kernel programs into target/ebpf.
    BuildEbpf,
    /// Build and run the daemon (`sonde run`), printing spans to the terminal by default.
    Run {
        /// Arguments passed to `sonde run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The whole suite: formatting, clippy, unit, property and end-to-end tests, then every
    /// fuzz target for $SONDE_FUZZ_SECONDS (default 20) seconds.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// fmt --check and clippy -D warnings.
    Lint,
    /// Benchmarks: HTTP, PostgreSQL and OTLP-forwarding overhead against the issue budgets.
    Bench(bench::Args),
    /// Runs every cargo-fuzz target (userspace/*/fuzz) for a time budget on its seed corpus.
    Fuzz(fuzz::Args),
}

/// Seconds per fuzz target in `cargo xtask test` (override with this environment variable).
const TEST_FUZZ_SECONDS_ENV: &str = "SONDE_FUZZ_SECONDS";
const TEST_FUZZ_SECONDS: u64 = 20;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("[xtask] {cmd:?}");
    let status = cmd.status().with_context(|| format!("spawn {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn bootstrap() -> Result<()> {
    run(Command::new("bash").arg(root().join("xtask/bootstrap.sh")))
}

fn build_ebpf() -> Result<()> {
    run(Command::new("cargo")
        .current_dir(root().join("ebpf/probes"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .arg(format!("+{}", ebpf_toolchain()?))
        .args([
            "build",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
            "--release",
        ])
        .arg("--target-dir")
        .arg(root().join("target/ebpf")))
}

fn lint() -> Result<()> {
    run(Command::new("cargo")
        .current_dir(root())
        .args(["fmt", "--all", "--check"]))?;
    // The kernel programs are outside the workspace: check their formatting too.
    // rustfmt comes from the stable toolchain: the pinned eBPF nightly is installed without it.
    run(Command::new("cargo")
        .current_dir(root().join("ebpf/probes"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["+stable", "fmt", "--check"]))?;
    run(Command::new("cargo").current_dir(root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The fuzz crates are outside the workspace: lint them too so they cannot rot.
    fuzz::lint(&root())
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Bootstrap => bootstrap(),
        Cmd::BuildEbpf => {
            bootstrap()?;
            build_ebpf()
        }
        Cmd::Lint => lint(),
        Cmd::Run { args } => {
            bootstrap()?;
            build_ebpf()?;
            run(Command::new("cargo").current_dir(root()).args([
                "build",
                "--release",
                "-p",
                "sonde",
            ]))?;
            let mut cmd = if nix_is_root() {
                Command::new(root().join("target/release/sonde"))
            } else {
                let mut c = Command::new("sudo");
                c.arg(root().join("target/release/sonde"));
                c
            };
            run(cmd.arg("run").args(args))
        }
        Cmd::Test { args } => {
            bootstrap()?;
            build_ebpf()?;
            lint()?;
            // Binaries the end-to-end tests run (the daemon, the test server) are built first.
            run(Command::new("cargo").current_dir(root()).args([
                "build",
                "--workspace",
                "--bins",
            ]))?;
            run(Command::new("cargo")
                .current_dir(root())
                .args(["test", "--workspace", "--no-fail-fast"])
                .args(args))?;
            let seconds = match std::env::var(TEST_FUZZ_SECONDS_ENV) {
                Ok(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|&n| n > 0)
                    .with_context(|| format!("{TEST_FUZZ_SECONDS_ENV}={v:?}: want seconds > 0"))?,
                Err(_) => TEST_FUZZ_SECONDS,
            };
            fuzz::run(
                &fuzz::Args {
                    seconds,
                    targets: Vec::new(),
                    sanitizer: "none".to_owned(),
                },
                &root(),
            )
        }
        Cmd::Fuzz(args) => {
            bootstrap()?;
            fuzz::run(&args, &root())
        }
        Cmd::Bench(args) => {
            if !args.no_build && args.serve_sink.is_none() {
                bootstrap()?;
                build_ebpf()?;
                run(Command::new("cargo").current_dir(root()).args([
                    "build",
                    "--release",
                    "--workspace",
                    "--bins",
                ]))?;
            }
            bench::run(&args, &root())
        }
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}
