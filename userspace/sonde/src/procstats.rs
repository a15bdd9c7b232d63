//! Process resource use for the metrics registry, read from /proc through `procfs` (exact
//! values: the kernel's own counters), and whether a traced process still exists.
use procfs::{Current, FromRead, process::Process};
use sonde_metrics::ProcessSample;

/// One sample of `pid`, or None when it is gone (or /proc refuses us).
pub fn sample(pid: u32) -> Option<ProcessSample> {
    let p = Process::new(pid as i32).ok()?;
    let stat = p.stat().ok()?;
    if stat.state == 'Z' || stat.state == 'X' {
        return None;
    }
    let ticks = procfs::ticks_per_second().max(1) as f64;
    let page = procfs::page_size();
    let status = p.status().ok();
    let io = p.io().ok();
    let uptime = procfs::Uptime::current().map(|u| u.uptime).unwrap_or(0.0);
    Some(ProcessSample {
        cpu_user_seconds: stat.utime as f64 / ticks,
        cpu_system_seconds: stat.stime as f64 / ticks,
        memory_rss_bytes: stat.rss.saturating_mul(page),
        memory_virtual_bytes: stat.vsize,
        threads: u64::try_from(stat.num_threads).unwrap_or(0),
        open_fds: p.fd_count().map_or(0, |n| n as u64),
        disk_read_bytes: io.as_ref().map_or(0, |i| i.read_bytes),
        disk_write_bytes: io.as_ref().map_or(0, |i| i.write_bytes),
        voluntary_context_switches: status
            .as_ref()
            .and_then(|s| s.voluntary_ctxt_switches)
            .unwrap_or(0),
        involuntary_context_switches: status
            .as_ref()
            .and_then(|s| s.nonvoluntary_ctxt_switches)
            .unwrap_or(0),
        minor_faults: stat.minflt,
        major_faults: stat.majflt,
        uptime_seconds: (uptime - stat.starttime as f64 / ticks).max(0.0),
    })
}

/// The exit status of a zombie not yet reaped (`/proc/<pid>/stat` field 52), if readable.
pub fn zombie_exit(pid: u32) -> Option<sonde_metrics::Exit> {
    let stat = procfs::process::Stat::from_file(format!("/proc/{pid}/stat")).ok()?;
    let code = stat.exit_code?;
    if stat.state != 'Z' {
        return None;
    }
    Some(if code & 0x7f != 0 {
        sonde_metrics::Exit::Signal(code & 0x7f)
    } else {
        sonde_metrics::Exit::Code((code >> 8) & 0xff)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn samples_this_process() {
        let s = super::sample(std::process::id()).expect("own /proc entry");
        assert!(s.threads >= 1);
        assert!(s.open_fds >= 1);
        assert!(s.memory_rss_bytes > 0);
        assert!(super::sample(u32::MAX - 1).is_none());
    }
}
