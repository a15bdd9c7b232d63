//! Shared measurement helpers: /proc sampling (CPU time, peak RSS), medians, paired ratios and
//! free ports. Parsers take the file text so they are unit-tested without a live process.
use std::{fs, net::TcpListener, time::Duration};

use anyhow::{Context, Result};

/// utime + stime in clock ticks from the text of `/proc/<pid>/stat` (fields 14 and 15).
/// The command name (field 2) may contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // After the name: field 3 (state) is index 0, so utime (14) is index 11, stime (15) index 12.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// A `kB` field such as `VmHWM` or `VmRSS` from the text of `/proc/<pid>/status`, in KiB.
pub fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        let mut parts = value.split_whitespace();
        let n = parts.next()?.parse().ok()?;
        (parts.next() == Some("kB")).then_some(n)
    })
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU seconds (user + system, all threads) a live process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let ticks = parse_stat_cpu_ticks(&text).with_context(|| format!("parse {path}"))?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// Peak resident set size (VmHWM) of a live process, in MiB.
pub fn peak_rss_mib(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let kib = parse_status_kib(&text, "VmHWM").with_context(|| format!("no VmHWM in {path}"))?;
    Ok(kib as f64 / 1024.0)
}

/// Median of the finite samples; `None` when there are none.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid.checked_sub(1)?)? + v.get(mid)?) / 2.0)
    }
}

/// Per-round ratios `variant[i] / baseline[i]` (rounds paired because the machine is noisy);
/// rounds where either side is missing or the baseline is zero are skipped.
pub fn paired_ratios(variant: &[f64], baseline: &[f64]) -> Vec<f64> {
    variant
        .iter()
        .zip(baseline)
        .filter(|(_, b)| **b != 0.0)
        .map(|(v, b)| v / b)
        .filter(|r| r.is_finite())
        .collect()
}

/// Percentile (0..=100) of an ascending-sorted slice by nearest rank.
pub fn percentile_sorted(sorted: &[u64], pct: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_cpu_ticks_counts_from_the_last_paren() {
        let stat = "4242 (my (odd) exe) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    123 45 0 0 20 0 3 0 100 1000000 200 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(168));
    }

    #[test]
    fn stat_cpu_ticks_rejects_truncated_text() {
        assert_eq!(parse_stat_cpu_ticks("4242 (x) S 1 2 3"), None);
        assert_eq!(parse_stat_cpu_ticks("no paren here"), None);
        assert_eq!(parse_stat_cpu_ticks(""), None);
    }

    #[test]
    fn live_self_stat_parses() {
        let text = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat_cpu_ticks(&text).is_some());
        assert!(peak_rss_mib(std::process::id()).unwrap() > 0.0);
    }

    #[test]
    fn status_fields_in_kib() {
        let status =
            "Name:\tsonde\nVmPeak:\t  900000 kB\nVmHWM:\t   40960 kB\nVmRSS:\t   30000 kB\n";
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(40960));
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(30000));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
        assert_eq!(parse_status_kib("VmHWM:\tlots kB\n", "VmHWM"), None);
        // A field whose name is a prefix of another is not confused with it.
        assert_eq!(parse_status_kib("VmHWMx:\t1 kB\n", "VmHWM"), None);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
    }

    #[test]
    fn ratios_are_paired_by_round() {
        assert_eq!(
            paired_ratios(&[90.0, 50.0, 10.0], &[100.0, 0.0, 20.0]),
            vec![0.9, 0.5]
        );
        assert!(paired_ratios(&[1.0], &[]).is_empty());
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile_sorted(&v, 50.0), Some(50));
        assert_eq!(percentile_sorted(&v, 99.0), Some(99));
        assert_eq!(percentile_sorted(&v, 100.0), Some(100));
        assert_eq!(percentile_sorted(&v, 0.0), Some(1));
        assert_eq!(percentile_sorted(&[], 50.0), None);
    }
}
