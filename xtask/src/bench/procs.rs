//! Child processes and scratch directories that are always cleaned up: on drop (normal end and
//! errors) and on Ctrl-C/SIGTERM (a watcher thread stops every registered process group and
//! removes every registered directory before exiting).
use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Process groups and directories alive right now, for the signal watcher.
static LIVE_GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static LIVE_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill has no memory-safety preconditions; a negative pid addresses the group.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// Starts a thread that, on SIGINT or SIGTERM, stops everything registered and exits 130.
pub fn install_signal_cleanup() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            rt.block_on(async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            });
            eprintln!("[bench] interrupted: stopping every process started and removing temp dirs");
            cleanup_everything();
            std::process::exit(130);
        })?;
    Ok(())
}

fn cleanup_everything() {
    let groups: Vec<i32> = lock(&LIVE_GROUPS).clone();
    for g in &groups {
        signal_group(*g, libc::SIGTERM);
    }
    thread::sleep(Duration::from_millis(1500));
    for g in &groups {
        signal_group(*g, libc::SIGKILL);
    }
    for d in lock(&LIVE_DIRS).iter() {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// A child started in its own process group (so a terminal Ctrl-C reaches only us and we stop
/// it in order), killed with its whole group when dropped.
pub struct Proc {
    name: String,
    child: Child,
    reaped: bool,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Proc> {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("start {name}: {cmd:?}"))?;
        let pgid = i32::try_from(child.id()).unwrap_or(0);
        lock(&LIVE_GROUPS).push(pgid);
        Ok(Proc {
            name: name.to_owned(),
            child,
            reaped: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Has it exited already? (Reaps it if so.)
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let status = self.child.try_wait().ok().flatten();
        if status.is_some() {
            self.reaped = true;
        }
        status
    }

    /// Sends `sig` to the main process only, waits up to `grace`, then kills the group.
    pub fn stop(&mut self, sig: i32, grace: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.exited() {
            return Ok(s);
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, sig);
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.exited() {
                self.kill_group();
                return Ok(s);
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill_group();
        let status = self.child.wait()?;
        self.reaped = true;
        bail!(
            "{} did not stop within {grace:?} after signal {sig}; killed ({status})",
            self.name
        )
    }

    fn kill_group(&mut self) {
        let pgid = i32::try_from(self.child.id()).unwrap_or(0);
        signal_group(pgid, libc::SIGKILL);
        lock(&LIVE_GROUPS).retain(|g| *g != pgid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
        if !self.reaped {
            let _ = self.child.wait();
        }
    }
}

/// Collects a child's stderr (or stdout) lines on a thread; lets callers wait for a marker.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn follow(
        reader: impl std::io::Read + Send + 'static,
        echo_prefix: Option<String>,
    ) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                if let Some(p) = &echo_prefix {
                    eprintln!("{p}{line}");
                }
                lock(&sink.0).push(line);
            }
        });
        lines
    }

    pub fn find(&self, pred: impl Fn(&str) -> bool) -> Option<String> {
        lock(&self.0).iter().find(|l| pred(l)).cloned()
    }

    pub fn tail(&self, n: usize) -> String {
        let v = lock(&self.0);
        v.iter()
            .skip(v.len().saturating_sub(n))
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A temporary directory removed on drop and on Ctrl-C.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new(prefix: &str) -> Result<Scratch> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("create temp dir")?;
        lock(&LIVE_DIRS).push(dir.path().to_owned());
        Ok(Scratch { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let p = self.dir.path().to_owned();
        lock(&LIVE_DIRS).retain(|d| *d != p);
    }
}

/// Runs a command to completion (registered for Ctrl-C cleanup), capturing stdout; fails with
/// its stderr on a non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let child = cmd.spawn().with_context(|| format!("run {cmd:?}"))?;
    let pgid = i32::try_from(child.id()).unwrap_or(0);
    lock(&LIVE_GROUPS).push(pgid);
    let out = child.wait_with_output();
    lock(&LIVE_GROUPS).retain(|g| *g != pgid);
    let out = out.with_context(|| format!("wait for {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
