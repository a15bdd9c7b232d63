//! The sonde daemon under test: `sonde run --output json <args>`, ready when it prints
//! `sonde: ready` on stderr; its stdout (one OTLP/JSON `ExportTraceServiceRequest` per line)
//! is parsed into [`Span`]s.
//!
//! The binary is `$SONDE_BIN`, else `sonde` next to the test executable's target directory,
//! else `<workspace>/target/debug/sonde`.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use crate::dirs::TestDir;
use crate::error::Result;
use crate::proc::Proc;
use crate::span::{Span, dump_spans, parse_json_lines};

/// How long [`Sonde::start`] waits for `sonde: ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How many lines of the span dump a panicking test prints.
pub const PANIC_SPAN_LINES: usize = 300;
/// How long [`Sonde::stop`] waits for the daemon to flush and exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// A running sonde daemon.
#[derive(Debug)]
pub struct Sonde {
    proc: Proc,
    exit: Option<ExitStatus>,
    _dir: TestDir,
}

/// Where the daemon binary is.
pub fn sonde_bin() -> Result<PathBuf> {
    crate::find_target_bin("sonde", "SONDE_BIN", "cargo build -p sonde")
}

/// Where the kernel's tracefs is mounted on a node.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Mounts tracefs at [`TRACEFS`] unless it is there (the tests run as root), as on a node
/// where a restricted daemon is given the host's tracefs. A test that runs sonde without
/// CAP_SYS_ADMIN must call this first: otherwise whether tracefs is mounted depends on whether
/// a root daemon of another test mounted it already, and on a fresh machine it is not.
pub fn ensure_tracefs_mounted() {
    let mounted = || std::path::Path::new(TRACEFS).join("events").is_dir();
    if mounted() {
        return;
    }
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", TRACEFS])
        .status();
    // A concurrent test may have mounted it between the check and the mount.
    assert!(
        status.as_ref().is_ok_and(ExitStatus::success) || mounted(),
        "mounting tracefs at {TRACEFS} for the test failed: {status:?}"
    );
}

impl Sonde {
    /// Starts `sonde run --output json <args>` and waits until it is ready; panics with its
    /// stderr on failure.
    pub fn start(args: &[&str]) -> Sonde {
        Self::try_start_with_env(args, &[]).unwrap_or_else(|e| panic!("Sonde::start: {e}"))
    }

    /// [`Sonde::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Sonde {
        Self::try_start_with_env(args, env).unwrap_or_else(|e| panic!("Sonde::start: {e}"))
    }

    /// Starts the daemon and waits for `sonde: ready`.
    pub fn try_start_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<Sonde> {
        let bin = sonde_bin()?;
        let dir = TestDir::new("sonde")?;
        let mut cmd = Command::new(&bin);
        // The OTLP receiver and metrics endpoint are off unless a test asks (their default ports would collide
        // between tests running in parallel); later flags override these.
        cmd.args([
            "run",
            "--output",
            "json",
            "--otlp-grpc-addr",
            "off",
            "--otlp-http-addr",
            "off",
            "--metrics-addr",
            "off",
        ])
        .args(args);
        // Plain logs in the captured stderr (tracing-subscriber colours them otherwise).
        cmd.env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let proc = Proc::spawn("sonde", cmd, dir.path())?;
        // On a panic the spans are printed as a tree by Sonde's drop, not as raw JSON.
        proc.skip_stdout_on_panic();
        proc.wait_for_line("sonde: ready", READY_TIMEOUT)?;
        Ok(Sonde {
            proc,
            exit: None,
            _dir: dir,
        })
    }

    /// The daemon process (pid, logs, signals).
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its stderr so far (logs).
    pub fn stderr(&self) -> String {
        self.proc.stderr()
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    /// All spans printed so far; errors on malformed OTLP/JSON.
    pub fn try_spans(&self) -> Result<Vec<Span>> {
        parse_json_lines(&self.proc.stdout())
    }

    /// All spans printed so far; panics (with the output) on malformed OTLP/JSON.
    pub fn spans(&self) -> Vec<Span> {
        self.try_spans().unwrap_or_else(|e| {
            panic!(
                "sonde printed invalid OTLP/JSON: {e}\n{}",
                self.proc.logs_tail(50)
            )
        })
    }

    /// Polls [`Sonde::spans`] until `pred` holds and returns them; panics after `timeout` (or
    /// when the daemon exits); the drop of this guard then prints every span and sonde's stderr.
    pub fn wait_for_spans(&self, pred: impl Fn(&[Span]) -> bool, timeout: Duration) -> Vec<Span> {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.proc.try_status();
            let spans = self.spans();
            if pred(&spans) {
                return spans;
            }
            // The spans (as a tree) and sonde's stderr are printed by the guards' drops.
            if let Some(status) = exited {
                panic!(
                    "sonde exited ({status}) before the expected spans appeared ({} spans printed; \
                     they and sonde's stderr follow)",
                    spans.len()
                );
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for the expected spans ({} printed; they and \
                     sonde's stderr follow)",
                    spans.len()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Sends SIGTERM, waits for the daemon to flush and exit, and returns all spans.
    pub fn try_stop(&mut self) -> Result<Vec<Span>> {
        if self.exit.is_none() {
            let status = self.proc.stop_gracefully(STOP_TIMEOUT)?;
            self.exit = Some(status);
        }
        self.try_spans()
    }

    /// [`Sonde::try_stop`] that panics (with the logs) if sonde does not exit in time.
    pub fn stop(&mut self) -> Vec<Span> {
        match self.try_stop() {
            Ok(spans) => spans,
            Err(e) => panic!("stopping sonde: {e}"),
        }
    }

    /// The exit status after [`Sonde::stop`].
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit.or_else(|| self.proc.try_status())
    }
}

impl Drop for Sonde {
    fn drop(&mut self) {
        // Proc's own drop kills the group and prints stderr; here: the spans, readably.
        if std::thread::panicking() {
            match self.try_spans() {
                Ok(spans) => {
                    let text = dump_spans(&spans);
                    let lines: Vec<&str> = text.lines().collect();
                    let skip = lines.len().saturating_sub(PANIC_SPAN_LINES);
                    eprintln!(
                        "----- sonde (pid {}) spans printed so far (last {} of {} lines) -----",
                        self.proc.pid(),
                        lines.len().saturating_sub(skip),
                        lines.len()
                    );
                    for l in lines.iter().skip(skip) {
                        eprintln!("{l}");
                    }
                }
                Err(e) => eprintln!("----- sonde stdout is not valid OTLP/JSON: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in daemon (a shell script) checks the harness's start/parse/stop logic.
    #[test]
    fn drives_a_stand_in_daemon() {
        let dir = TestDir::new("fake-sonde").unwrap();
        let script = dir.join("sonde");
        let line = r#"{"resourceSpans":[{"resource":{"attributes":[]},"scopeSpans":[{"spans":[{"traceId":"0102030405060708090a0b0c0d0e0f10","spanId":"0102030405060708","name":"GET /x","kind":2,"startTimeUnixNano":"1","endTimeUnixNano":"2"}]}]}]}"#;
        std::fs::write(
            dir.join("flushed.json"),
            format!("{}\n", line.replace("GET /x", "GET /flushed")),
        )
        .unwrap();
        let body = format!(
            "#!/bin/sh\n[ \"$1 $2 $3\" = 'run --output json' ] || {{ echo bad args \"$@\" >&2; exit 2; }}\n\
             echo 'sonde: ready' >&2\necho '{line}'\nflush() {{ cat '{}'; exit 0; }}\ntrap flush TERM\n\
             while :; do sleep 0.1; done\n",
            dir.join("flushed.json").display()
        );
        std::fs::write(&script, body).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        // Built by hand rather than through SONDE_BIN, which would race with parallel tests.
        let proc = {
            let mut cmd = Command::new(&script);
            cmd.args(["run", "--output", "json", "--extra"]);
            Proc::spawn("sonde", cmd, dir.path()).unwrap()
        };
        proc.wait_for_line("sonde: ready", READY_TIMEOUT).unwrap();
        let mut sonde = Sonde {
            proc,
            exit: None,
            _dir: TestDir::new("fake-sonde-logs").unwrap(),
        };
        let spans = sonde.wait_for_spans(|s| s.len() == 1, Duration::from_secs(10));
        assert_eq!(spans[0].name, "GET /x");
        let all = sonde.stop();
        assert_eq!(
            all.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["GET /x", "GET /flushed"]
        );
        assert!(sonde.exit_status().unwrap().success());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sonde.wait_for_spans(|s| s.len() > 5, Duration::from_secs(5))
        }));
        assert!(r.is_err(), "an exited daemon must fail the wait at once");
    }
}
