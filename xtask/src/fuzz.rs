//! `cargo xtask fuzz`: runs every cargo-fuzz target of the repository for a time budget.
//!
//! Targets are discovered, not listed: every `userspace/*/fuzz` directory with a `Cargo.toml`
//! is a cargo-fuzz crate (kept out of the main workspace, with its own `Cargo.lock`), and
//! `cargo fuzz list` names its targets. Each crate builds into its own `target/fuzz/<crate>`
//! so fuzz builds (nightly, sanitizer-coverage) never invalidate the main target dir.
//!
//! Each target runs with the pinned nightly on three corpus directories: a working corpus in
//! `target/fuzz/corpus/<crate>/<target>` (first, so libFuzzer writes what it finds there and it
//! grows from run to run), the committed seeds `<crate>/fuzz/corpus/<target>` (real captures)
//! and the committed regressions `<crate>/fuzz/regressions/<target>` (every input that ever
//! failed, replayed before any mutation). A crash is minimised with `cargo fuzz tmin` and the
//! report says where to commit it. The full libFuzzer log of each target is kept in
//! `target/fuzz/logs/`.
//!
//! The sanitizer defaults to `none`: the fuzzed crates are safe Rust, so AddressSanitizer
//! finds nothing more there and costs about half the executions; `--sanitizer address` is
//! available for code with `unsafe`. Debug assertions (overflow checks) stay on.
use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Seconds of fuzzing per target (libFuzzer `-max_total_time`).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub seconds: u64,
    /// Only this target: `parse` (in every crate that has one) or `postgres/parse`. Repeatable.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// libFuzzer sanitizer: `none` (fastest; the targets are safe Rust) or `address`.
    #[arg(long, default_value = "none")]
    pub sanitizer: String,
}

/// One cargo-fuzz crate: `userspace/<name>/fuzz`.
pub struct FuzzCrate {
    /// The parent crate's directory name (`postgres`).
    pub name: String,
    /// The fuzz crate's directory.
    pub dir: PathBuf,
}

/// Every cargo-fuzz crate under `userspace/*/fuzz`, sorted by name.
pub fn crates(root: &Path) -> Result<Vec<FuzzCrate>> {
    let userspace = root.join("userspace");
    let mut found = Vec::new();
    for entry in fs::read_dir(&userspace).with_context(|| format!("read {userspace:?}"))? {
        let dir = entry?.path().join("fuzz");
        if dir.join("Cargo.toml").is_file() {
            let name = dir
                .parent()
                .and_then(Path::file_name)
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            found.push(FuzzCrate { name, dir });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// What one target's run produced.
struct Outcome {
    label: String,
    executions: Option<u64>,
    exec_per_sec: Option<u64>,
    new_units: Option<u64>,
    seconds: f64,
    finding: Option<String>,
}

fn cargo_fuzz(root: &Path, krate: &FuzzCrate, sub: &str, sanitizer: &str) -> Command {
    let toolchain = crate::ebpf_toolchain_name();
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        // rustup would otherwise prefer the toolchain of the shell that runs xtask.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .arg(format!("+{toolchain}"))
        .args(["fuzz", sub, "--fuzz-dir"])
        .arg(&krate.dir)
        .arg("--target-dir")
        .arg(root.join("target/fuzz").join(&krate.name))
        // Release code with overflow checks, no sanitizer unless asked: same flags for build,
        // run and tmin, so nothing is rebuilt between them.
        .args(["-O", "-a", "--sanitizer", sanitizer]);
    cmd
}

fn list_targets(root: &Path, krate: &FuzzCrate) -> Result<Vec<String>> {
    let toolchain = crate::ebpf_toolchain_name();
    let out = Command::new("cargo")
        .current_dir(root)
        .env_remove("RUSTUP_TOOLCHAIN")
        .arg(format!("+{toolchain}"))
        .args(["fuzz", "list", "--fuzz-dir"])
        .arg(&krate.dir)
        .output()
        .context("cargo fuzz list (is cargo-fuzz installed? run `cargo xtask bootstrap`)")?;
    if !out.status.success() {
        bail!(
            "cargo fuzz list in {:?} failed: {}",
            krate.dir,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

fn selected(filters: &[String], krate: &str, target: &str) -> bool {
    filters.is_empty()
        || filters
            .iter()
            .any(|f| f == target || *f == format!("{krate}/{target}"))
}

/// Runs the selected targets for `args.seconds` each; fails when a target found something.
pub fn run(args: &Args, root: &Path) -> Result<()> {
    let mut plan = Vec::new();
    for krate in crates(root)? {
        let targets: Vec<String> = list_targets(root, &krate)?
            .into_iter()
            .filter(|t| selected(&args.targets, &krate.name, t))
            .collect();
        if !targets.is_empty() {
            plan.push((krate, targets));
        }
    }
    if plan.is_empty() {
        bail!("no fuzz target matches {:?}", args.targets);
    }
    for (krate, _) in &plan {
        crate::run(&mut cargo_fuzz(root, krate, "build", &args.sanitizer))?;
    }
    let mut outcomes = Vec::new();
    for (krate, targets) in &plan {
        for target in targets {
            outcomes.push(run_target(args, root, krate, target)?);
        }
    }
    eprintln!();
    eprintln!(
        "{:<28} {:>8} {:>14} {:>10} {:>10}  result",
        "target", "seconds", "executions", "exec/s", "new units"
    );
    let show = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
    for o in &outcomes {
        eprintln!(
            "{:<28} {:>8.0} {:>14} {:>10} {:>10}  {}",
            o.label,
            o.seconds,
            show(o.executions),
            show(o.exec_per_sec),
            show(o.new_units),
            if o.finding.is_some() {
                "FINDING"
            } else {
                "clean"
            }
        );
    }
    let findings: Vec<&str> = outcomes
        .iter()
        .filter_map(|o| o.finding.as_deref())
        .collect();
    if !findings.is_empty() {
        for f in &findings {
            eprintln!("\n{f}");
        }
        bail!("{} fuzz target(s) found a failing input", findings.len());
    }
    Ok(())
}

fn run_target(args: &Args, root: &Path, krate: &FuzzCrate, target: &str) -> Result<Outcome> {
    let label = format!("{}/{target}", krate.name);
    let work = root
        .join("target/fuzz/corpus")
        .join(&krate.name)
        .join(target);
    let artifacts = root
        .join("target/fuzz/artifacts")
        .join(&krate.name)
        .join(target);
    let logs = root.join("target/fuzz/logs");
    for d in [&work, &artifacts, &logs] {
        fs::create_dir_all(d).with_context(|| format!("create {d:?}"))?;
    }
    let log_path = logs.join(format!("{}-{target}.log", krate.name));
    let mut cmd = cargo_fuzz(root, krate, "run", &args.sanitizer);
    cmd.arg(target).arg(&work);
    for committed in ["corpus", "regressions"] {
        let d = krate.dir.join(committed).join(target);
        if d.is_dir() {
            cmd.arg(d);
        }
    }
    let mut prefix = artifacts.clone().into_os_string();
    prefix.push("/");
    cmd.arg("--")
        .arg(format!("-max_total_time={}", args.seconds))
        .arg("-print_final_stats=1")
        .arg("-rss_limit_mb=2048")
        .arg("-timeout=10")
        .arg({
            let mut a = std::ffi::OsString::from("-artifact_prefix=");
            a.push(&prefix);
            a
        });
    eprintln!("[xtask] fuzz {label} for {} s: {cmd:?}", args.seconds);
    let started = Instant::now();
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    // libFuzzer reports on stderr; stdout carries the target's own prints, if any.
    let stdout = child.stdout.take();
    let echo_stdout = std::thread::spawn(move || {
        if let Some(out) = stdout {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("  | {line}");
            }
        }
    });
    let mut log = Vec::new();
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            // Progress lines (`#1234 NEW ...`) and the recommended dictionary go to the log.
            if !line.starts_with('#') && !line.starts_with('"') {
                eprintln!("  | {line}");
            }
            log.push(line);
        }
    }
    let status = child.wait().context("wait for cargo fuzz run")?;
    let _ = echo_stdout.join();
    let seconds = started.elapsed().as_secs_f64();
    fs::write(&log_path, log.join("\n")).with_context(|| format!("write {log_path:?}"))?;
    let stat = |name: &str| {
        log.iter()
            .rev()
            .find_map(|l| l.strip_prefix(&format!("stat::{name}:")))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let mut outcome = Outcome {
        label: label.clone(),
        executions: stat("number_of_executed_units"),
        exec_per_sec: stat("average_exec_per_sec"),
        new_units: stat("new_units_added"),
        seconds,
        finding: None,
    };
    if status.success() {
        return Ok(outcome);
    }
    let artifact = log
        .iter()
        .find_map(|l| l.split_once("Test unit written to ").map(|(_, p)| p.trim()))
        .map(PathBuf::from);
    let Some(artifact) = artifact else {
        outcome.finding = Some(format!(
            "{label}: cargo fuzz run failed ({status}) without an artifact; see {log_path:?}"
        ));
        return Ok(outcome);
    };
    outcome.finding = Some(minimise(root, krate, target, &artifact, &args.sanitizer));
    Ok(outcome)
}

/// Minimises a crashing input and says how to turn it into a regression test.
fn minimise(root: &Path, krate: &FuzzCrate, target: &str, artifact: &Path, san: &str) -> String {
    let toolchain = crate::ebpf_toolchain_name();
    let mut cmd = cargo_fuzz(root, krate, "tmin", san);
    let mut prefix = std::ffi::OsString::from("-artifact_prefix=");
    if let Some(dir) = artifact.parent() {
        prefix.push(dir);
        prefix.push("/");
    }
    cmd.arg(target)
        .arg(artifact)
        .args(["--runs", "10000", "--", "-max_total_time=60"])
        // After cargo-fuzz's own prefix: libFuzzer keeps the last, so the result lands here.
        .arg(prefix);
    eprintln!("[xtask] minimising {artifact:?}: {cmd:?}");
    // tmin writes a `minimized-from-<sha1>` next to the artifact at each step that still
    // crashes; the smallest written by this run is the result. It exits non-zero by design, so
    // its status says nothing.
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(2);
    let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    let minimized = artifact.parent().and_then(|dir| {
        fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("minimized-from-")
            })
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                (meta.modified().ok()? >= started).then(|| (meta.len(), e.path()))
            })
            .min()
            .map(|(_, p)| p)
    });
    let input = minimized.as_deref().unwrap_or(artifact);
    let rel = krate
        .dir
        .strip_prefix(root)
        .unwrap_or(&krate.dir)
        .display()
        .to_string();
    format!(
        "{}/{target} FOUND A FAILING INPUT: {}{}\n\
         Replay it:   cargo +{toolchain} fuzz run {target} --fuzz-dir {rel} {}\n\
         Make it a regression test:\n  \
           1. cp {} {rel}/regressions/{target}/<what-it-breaks>.bin (replayed by every fuzz run)\n  \
           2. add a unit test beside the code that fails on it, e.g. \
              include_bytes!(\"../fuzz/regressions/{target}/<what-it-breaks>.bin\")\n     \
              (see userspace/postgres/src/sanitize/tests.rs, fuzz_regression_*)\n  \
           3. fix the code, then `cargo xtask fuzz --target {}/{target}` until clean",
        krate.name,
        input.display(),
        if minimized.is_some() {
            " (minimised)"
        } else {
            " (tmin could not make it smaller)"
        },
        input.display(),
        input.display(),
        krate.name,
    )
}

/// Clippy (and rustfmt) on every fuzz crate, so the targets cannot rot while nobody fuzzes.
/// Uses the main target dir: the library crates they depend on are already checked there.
/// Not `--locked`: a new dependency of a library crate updates the fuzz crate's Cargo.lock
/// (commit it) instead of failing the lint.
pub fn lint(root: &Path) -> Result<()> {
    for krate in crates(root)? {
        let manifest = krate.dir.join("Cargo.toml");
        crate::run(
            Command::new("cargo")
                .current_dir(root)
                .args(["fmt", "--check", "--manifest-path"])
                .arg(&manifest),
        )?;
        crate::run(
            Command::new("cargo")
                .current_dir(root)
                .args(["clippy", "--all-targets", "--manifest-path"])
                .arg(&manifest)
                .arg("--target-dir")
                .arg(root.join("target"))
                .args(["--", "-D", "warnings"]),
        )?;
    }
    Ok(())
}
