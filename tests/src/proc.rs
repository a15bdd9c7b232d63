//! Child processes that cannot leak: each runs in its own process group, its output goes to
//! log files, and dropping the guard terminates the whole group (SIGTERM, SIGKILL after 3 s).
//!
//! When a test panics, every `Proc` dropped during unwinding prints the last 50 lines of its
//! stdout and stderr, so the failure message is followed by the logs of all servers involved.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, IoContext, Result};

/// How long [`Drop`] waits after SIGTERM before it sends SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);
/// How many lines of each log a panicking test prints per process.
pub const PANIC_TAIL_LINES: usize = 50;

/// What [`Proc::wait_for_line`] looks for.
#[derive(Debug, Clone)]
pub enum LineMatch {
    /// The line contains this text.
    Substring(String),
    /// The line matches this regular expression.
    Regex(regex_lite::Regex),
}

impl LineMatch {
    /// A regular-expression matcher; panics on an invalid pattern (a bug in the test).
    pub fn regex(pattern: &str) -> LineMatch {
        match regex_lite::Regex::new(pattern) {
            Ok(re) => LineMatch::Regex(re),
            Err(e) => panic!("invalid regex {pattern:?}: {e}"),
        }
    }

    /// Whether `line` matches.
    pub fn is_match(&self, line: &str) -> bool {
        match self {
            LineMatch::Substring(s) => line.contains(s.as_str()),
            LineMatch::Regex(re) => re.is_match(line),
        }
    }
}

impl From<&str> for LineMatch {
    fn from(s: &str) -> Self {
        LineMatch::Substring(s.to_string())
    }
}

impl From<String> for LineMatch {
    fn from(s: String) -> Self {
        LineMatch::Substring(s)
    }
}

impl From<regex_lite::Regex> for LineMatch {
    fn from(re: regex_lite::Regex) -> Self {
        LineMatch::Regex(re)
    }
}

/// A child process in its own process group whose output is captured to files.
#[derive(Debug)]
pub struct Proc {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    /// Whether a panicking drop prints stdout too (off for machine-readable output).
    dump_stdout: std::sync::atomic::AtomicBool,
}

impl Proc {
    /// Spawns `cmd` in a new process group with stdin from /dev/null and stdout/stderr written
    /// to `<log_dir>/<name>.stdout.log` and `<log_dir>/<name>.stderr.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Proc> {
        let safe: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let stdout_path = log_dir.join(format!("{safe}.stdout.log"));
        let stderr_path = log_dir.join(format!("{safe}.stderr.log"));
        let out =
            fs::File::create(&stdout_path).ctx(|| format!("creating {}", stdout_path.display()))?;
        let err =
            fs::File::create(&stderr_path).ctx(|| format!("creating {}", stderr_path.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().ctx(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            pid: child.id(),
            child: Mutex::new(child),
            status: Mutex::new(None),
            stdout_path,
            stderr_path,
            dump_stdout: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The harness's name for this process.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also its process-group id).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Path of the captured stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// Path of the captured stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the process printed on stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the process printed on stderr so far (lossy UTF-8).
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// The exit status if the process has exited (reaps it), else `None`.
    pub fn try_status(&self) -> Option<ExitStatus> {
        let mut status = lock(&self.status);
        if status.is_none()
            && let Ok(Some(s)) = lock(&self.child).try_wait()
        {
            *status = Some(s);
        }
        *status
    }

    /// Whether the process (the group leader) is still running.
    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// `Ok` while the process runs; once it exited, an error with its status and last logs.
    pub fn ensure_running(&self) -> Result<()> {
        match self.try_status() {
            None => Ok(()),
            Some(status) => Err(Error::Exited {
                name: self.name.clone(),
                status: status.to_string(),
                logs: self.logs_tail(50),
            }),
        }
    }

    /// Waits until a line of stdout or stderr matches `pattern` and returns that line.
    /// Fails early, with the logs, if the process exits first.
    pub fn wait_for_line(
        &self,
        pattern: impl Into<LineMatch>,
        timeout: Duration,
    ) -> Result<String> {
        let pattern = pattern.into();
        let deadline = Instant::now() + timeout;
        loop {
            // Check the exit status before reading, so a line printed just before exiting is seen.
            let exited = self.try_status();
            for text in [self.stderr(), self.stdout()] {
                if let Some(line) = text.lines().find(|l| pattern.is_match(l)) {
                    return Ok(line.to_string());
                }
            }
            if let Some(status) = exited {
                return Err(Error::Exited {
                    name: self.name.clone(),
                    status: status.to_string(),
                    logs: format!(
                        "while waiting for a line matching {pattern:?}\n{}",
                        self.logs_tail(PANIC_TAIL_LINES)
                    ),
                });
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} to print a line matching {pattern:?}", self.name),
                    timeout,
                    details: self.logs_tail(PANIC_TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of stdout and of stderr, with headers naming the process and files.
    pub fn logs_tail(&self, n: usize) -> String {
        let mut s = tail_of(&self.name, self.pid, "stdout", &self.stdout_path, n);
        s.push_str(&tail_of(
            &self.name,
            self.pid,
            "stderr",
            &self.stderr_path,
            n,
        ));
        s
    }

    /// Prints the last 50 lines of stdout and stderr to the test's stderr.
    pub fn dump_logs(&self) {
        eprintln!("{}", self.logs_tail(PANIC_TAIL_LINES));
    }

    /// Makes a panicking drop print only stderr (for processes whose stdout is data that the
    /// owner prints more readably itself, like sonde's OTLP/JSON).
    pub fn skip_stdout_on_panic(&self) {
        self.dump_stdout
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sends `signal` to the process (the group leader only).
    pub fn signal(&self, signal: i32) -> Result<()> {
        let pid = pid_t(self.pid)?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::io(
                format!("kill({pid}, {signal})"),
                std::io::Error::last_os_error(),
            ))
        }
    }

    /// Sends `signal` to every process of the group.
    pub fn signal_group(&self, signal: i32) -> Result<()> {
        let pid = pid_t(self.pid)?;
        // SAFETY: kill(2) has no memory-safety preconditions.
        let rc = unsafe { libc::kill(-pid, signal) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Error::io(
                format!("kill(-{pid}, {signal})"),
                std::io::Error::last_os_error(),
            ))
        }
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_status() {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{} (pid {}) to exit", self.name, self.pid),
                    timeout,
                    details: self.logs_tail(PANIC_TAIL_LINES),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM to the process and waits up to `timeout` for it to exit.
    /// The rest of the group is left alone (a master process shuts its workers down itself);
    /// whatever is left is killed on drop.
    pub fn stop_gracefully(&self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.try_status() {
            return Ok(s);
        }
        self.signal(libc::SIGTERM)?;
        self.wait_exit(timeout)
    }

    /// Sends SIGKILL to the whole group and reaps the leader.
    pub fn kill9(&self) {
        let _ = self.signal_group(libc::SIGKILL);
        let _ = self.wait_exit(Duration::from_secs(10));
    }

    /// The live (non-zombie) processes of this process group.
    pub fn group_members(&self) -> Vec<u32> {
        list_processes()
            .into_iter()
            .filter(|p| p.pgrp == self.pid && p.state != 'Z')
            .map(|p| p.pid)
            .collect()
    }

    /// SIGTERM to the group, SIGKILL after [`TERM_GRACE`]; returns when the group is empty.
    pub fn terminate_group(&self) {
        if self.is_running() || !self.group_members().is_empty() {
            let _ = self.signal_group(libc::SIGTERM);
        }
        let deadline = Instant::now() + TERM_GRACE;
        loop {
            let leader_gone = !self.is_running();
            if leader_gone && self.group_members().is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.signal_group(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while (self.is_running() || !self.group_members().is_empty()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if self.dump_stdout.load(std::sync::atomic::Ordering::Relaxed) {
                self.dump_logs();
            } else {
                eprintln!(
                    "{}",
                    tail_of(
                        &self.name,
                        self.pid,
                        "stderr",
                        &self.stderr_path,
                        PANIC_TAIL_LINES
                    )
                );
            }
        }
        self.terminate_group();
    }
}

/// One line of `/proc/<pid>/stat`, the fields the harness needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: u32,
    /// Parent process id.
    pub ppid: u32,
    /// Process-group id.
    pub pgrp: u32,
    /// State letter (R, S, D, Z, ...).
    pub state: char,
    /// The command name (at most 15 bytes, from the kernel).
    pub comm: String,
}

/// Parses the content of `/proc/<pid>/stat`.
pub fn parse_stat(text: &str) -> Option<ProcInfo> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let comm = text.get(open.checked_add(1)?..close)?.to_string();
    let mut rest = text.get(close.checked_add(1)?..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgrp,
        state,
        comm,
    })
}

/// Every process visible in /proc (processes that vanish while listing are skipped).
pub fn list_processes() -> Vec<ProcInfo> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter_map(|t| parse_stat(&t))
        .collect()
}

/// The live direct children of `pid`, sorted by pid.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = list_processes()
        .into_iter()
        .filter(|p| p.ppid == pid && p.state != 'Z')
        .map(|p| p.pid)
        .collect();
    v.sort_unstable();
    v
}

/// Whether a live (non-zombie) process with this pid exists.
pub fn pid_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_stat(&t))
        .is_some_and(|p| p.state != 'Z')
}

fn pid_t(pid: u32) -> Result<libc::pid_t> {
    libc::pid_t::try_from(pid).map_err(|_| Error::Setup(format!("pid {pid} out of range")))
}

/// The last `n` lines of a log file under a header naming the process and the file.
fn tail_of(name: &str, pid: u32, label: &str, path: &Path, n: usize) -> String {
    let text = read_lossy(path);
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(n);
    let mut s = format!(
        "----- {name} (pid {pid}) {label}, last {} of {} lines: {} -----\n",
        lines.len().saturating_sub(skip),
        lines.len(),
        path.display()
    );
    for l in lines.iter().skip(skip) {
        s.push_str(l);
        s.push('\n');
    }
    s
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dirs::TestDir;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn parses_stat_with_odd_comm() {
        let p = parse_stat("42 (a (b) c) S 1 42 42 0 -1 4194560").unwrap();
        assert_eq!(
            p,
            ProcInfo {
                pid: 42,
                ppid: 1,
                pgrp: 42,
                state: 'S',
                comm: "a (b) c".into()
            }
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn waits_for_lines_and_captures_output() {
        let dir = TestDir::new("proc").unwrap();
        let p = Proc::spawn(
            "echoer",
            sh("echo hello; echo 'err line 7' >&2; sleep 30"),
            dir.path(),
        )
        .unwrap();
        assert_eq!(
            p.wait_for_line("hello", Duration::from_secs(10)).unwrap(),
            "hello"
        );
        let l = p
            .wait_for_line(LineMatch::regex(r"line \d+"), Duration::from_secs(10))
            .unwrap();
        assert_eq!(l, "err line 7");
        assert!(
            p.wait_for_line("never printed", Duration::from_millis(200))
                .is_err()
        );
        assert!(p.logs_tail(1).contains("err line 7"));
    }

    #[test]
    fn early_exit_is_reported_with_logs() {
        let dir = TestDir::new("proc").unwrap();
        let p = Proc::spawn("quitter", sh("echo bye-bye >&2; exit 3"), dir.path()).unwrap();
        let err = p
            .wait_for_line("ready", Duration::from_secs(10))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exited early") && err.contains("bye-bye"),
            "{err}"
        );
    }

    #[test]
    fn drop_kills_the_whole_group_even_when_term_is_ignored() {
        let dir = TestDir::new("proc").unwrap();
        // A grandchild that ignores SIGTERM: only SIGKILL to the group removes it.
        let p = Proc::spawn(
            "stubborn",
            sh("trap '' TERM; (trap '' TERM; sleep 60; :) & echo child=$!; sleep 60; :"),
            dir.path(),
        )
        .unwrap();
        let line = p.wait_for_line("child=", Duration::from_secs(10)).unwrap();
        let child: u32 = line.trim_start_matches("child=").parse().unwrap();
        let leader = p.pid();
        assert!(pid_alive(child) && pid_alive(leader));
        assert!(p.group_members().len() >= 2);
        let t = Instant::now();
        drop(p);
        assert!(!pid_alive(child), "grandchild {child} leaked");
        assert!(!pid_alive(leader), "leader {leader} leaked");
        assert!(
            t.elapsed() >= TERM_GRACE,
            "SIGKILL came before the grace period"
        );
    }

    #[test]
    fn graceful_stop_and_kill9() {
        let dir = TestDir::new("proc").unwrap();
        let p = Proc::spawn("sleeper", sh("exec sleep 60"), dir.path()).unwrap();
        let s = p.stop_gracefully(Duration::from_secs(5)).unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&s),
            Some(libc::SIGTERM)
        );
        let q = Proc::spawn("victim", sh("trap '' TERM; sleep 60; :"), dir.path()).unwrap();
        let pid = q.pid();
        q.kill9();
        assert!(!q.is_running());
        assert!(!pid_alive(pid));
    }
}
