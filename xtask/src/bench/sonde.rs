//! Starting the daemon under test, sampling it, and reading its final `sonde: stopped` line.
use std::{
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    measure,
    procs::{Lines, Proc},
};

/// Counters from the daemon's last line, `sonde: stopped; N events, N spans built, N spans
/// exported, N spans dropped (queue full N, undelivered at retry limit or shutdown deadline N,
/// refused by the backend N), N ring buffer records lost in the kernel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StopLine {
    pub events: u64,
    pub spans: u64,
    pub lost: u64,
    /// Spans refused by a full exporter queue.
    pub refused: u64,
    /// With `--pipeline-stop`: what was dropped at the cut (data records after drain,
    /// exchanges after parse, spans after build or encode), from the line before.
    pub dropped_at_cut: Option<u64>,
}

/// The number written just before `label` in `text` (`"12 events"` -> 12 for `" events"`).
fn number_before(text: &str, label: &str) -> Option<u64> {
    let head = &text[..text.find(label)?];
    let digits = head.rsplit(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// The number written just after `label` in `text` (`"queue full 3"` -> 3).
fn number_after(text: &str, label: &str) -> Option<u64> {
    let tail = &text[text.find(label)? + label.len()..];
    let digits: String = tail
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

pub fn parse_stop_line(line: &str) -> Option<StopLine> {
    let rest = line.trim().strip_prefix("sonde: stopped;")?;
    Some(StopLine {
        events: number_before(rest, " events")?,
        spans: number_before(rest, " spans built")?,
        lost: number_before(rest, " ring buffer records lost")?,
        refused: number_after(rest, "queue full")?,
        dropped_at_cut: None,
    })
}

/// What `sonde: pipeline stopped after <stage>; N data records dropped, N exchanges dropped
/// unbuilt, N spans dropped after <stage>, N export requests encoded (N bytes)` says was
/// dropped at the cut (only the cut stage's count is non-zero).
pub fn parse_cut_line(line: &str) -> Option<u64> {
    let rest = line.trim().strip_prefix("sonde: pipeline stopped after ")?;
    let records = number_before(rest, " data records dropped")?;
    let exchanges = number_before(rest, " exchanges dropped")?;
    let spans = number_before(rest, " spans dropped after")?;
    records.checked_add(exchanges)?.checked_add(spans)
}

/// A running `sonde run ...`.
pub struct Sonde {
    proc: Proc,
    stderr: Lines,
}

impl Sonde {
    /// Starts sonde (pinned to `cpu` with taskset when given) and waits for `sonde: ready`.
    pub fn start(bin: &Path, args: &[String], cpu: Option<usize>) -> Result<Sonde> {
        let mut cmd = match cpu {
            Some(c) => {
                let mut t = Command::new("taskset");
                t.arg("-c").arg(c.to_string()).arg(bin);
                t
            }
            None => Command::new(bin),
        };
        cmd.arg("run")
            .args(args)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn("sonde", &mut cmd)?;
        let stderr = proc.child_mut().stderr.take().context("sonde stderr")?;
        let stderr = Lines::follow(stderr, None);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if stderr.find(|l| l.trim() == "sonde: ready").is_some() {
                return Ok(Sonde { proc, stderr });
            }
            if let Some(status) = proc.exited() {
                thread::sleep(Duration::from_millis(100));
                bail!(
                    "sonde exited before ready ({status}); args {args:?}; stderr:\n{}",
                    stderr.tail(15)
                );
            }
            if Instant::now() > deadline {
                bail!("sonde not ready after 90 s; stderr:\n{}", stderr.tail(15));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    pub fn cpu_seconds(&self) -> Result<f64> {
        measure::cpu_seconds(self.pid())
    }

    pub fn peak_rss_mib(&self) -> Result<f64> {
        measure::peak_rss_mib(self.pid())
    }

    /// SIGTERM, wait for the flush, and return the counters of the final line.
    pub fn stop(mut self) -> Result<StopLine> {
        let status = self.proc.stop(libc::SIGTERM, Duration::from_secs(40))?;
        // The reader thread may still be draining the pipe.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(line) = self.stderr.find(|l| l.starts_with("sonde: stopped;")) {
                let mut stop = parse_stop_line(&line)
                    .with_context(|| format!("unparsable stop line: {line}"))?;
                stop.dropped_at_cut = self
                    .stderr
                    .find(|l| l.starts_with("sonde: pipeline stopped after "))
                    .and_then(|l| parse_cut_line(&l));
                return Ok(stop);
            }
            if Instant::now() > deadline {
                bail!(
                    "sonde exited ({status}) without a stop line; stderr:\n{}",
                    self.stderr.tail(15)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_line_parses() {
        let line = "sonde: stopped; 120034 events, 60010 spans built, 60000 spans exported, \
                    10 spans dropped (queue full 2, undelivered at retry limit or shutdown \
                    deadline 8, refused by the backend 0), 7 ring buffer records lost in the kernel";
        assert_eq!(
            parse_stop_line(line),
            Some(StopLine {
                events: 120034,
                spans: 60010,
                lost: 7,
                refused: 2,
                dropped_at_cut: None,
            })
        );
        let cut = "sonde: pipeline stopped after parse; 0 data records dropped, 5012 exchanges \
                   dropped unbuilt, 0 spans dropped after parse, 0 export requests encoded (0 bytes)";
        assert_eq!(parse_cut_line(cut), Some(5012));
        assert_eq!(parse_cut_line(line), None);
        assert_eq!(
            parse_cut_line("sonde: pipeline stopped after drain; 12 data records dropped"),
            None
        );
    }

    #[test]
    fn stop_line_rejects_other_lines() {
        assert_eq!(parse_stop_line("sonde: ready"), None);
        assert_eq!(
            parse_stop_line("sonde: stopped; 1 events, 2 spans built"),
            None
        );
        assert_eq!(
            parse_stop_line(
                "sonde: stopped; x events, 2 spans built, 0 spans exported, 0 spans dropped \
                 (queue full 0), 0 ring buffer records lost in the kernel"
            ),
            None
        );
    }
}
