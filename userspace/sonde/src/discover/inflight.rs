//! Threads that were already inside a syscall when the probes attached (a server blocked in
//! `accept`, a keep-alive worker blocked in `read`): the kernel programs never saw those
//! syscalls enter, so their exits would be dropped and the first request after start lost.
//! The daemon reads each blocked thread's syscall and arguments from
//! `/proc/<pid>/task/<tid>/syscall` and writes the entry the programs would have stashed.
use sonde_common::{buf_kind, direction};

/// What a blocked syscall is, for the entry to stash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocked {
    Data {
        fd: i32,
        buf_kind: u32,
        direction: u32,
        ptr: u64,
        count: u64,
    },
    Accept {
        sockaddr: u64,
    },
}

/// Syscall numbers of the host architecture.
#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: i64 = 0;
    pub const WRITE: i64 = 1;
    pub const READV: i64 = 19;
    pub const WRITEV: i64 = 20;
    pub const ACCEPT: i64 = 43;
    pub const SENDTO: i64 = 44;
    pub const RECVFROM: i64 = 45;
    pub const SENDMSG: i64 = 46;
    pub const RECVMSG: i64 = 47;
    pub const ACCEPT4: i64 = 288;
}
#[cfg(target_arch = "aarch64")]
mod nr {
    pub const READ: i64 = 63;
    pub const WRITE: i64 = 64;
    pub const READV: i64 = 65;
    pub const WRITEV: i64 = 66;
    pub const ACCEPT: i64 = 202;
    pub const SENDTO: i64 = 206;
    pub const RECVFROM: i64 = 207;
    pub const SENDMSG: i64 = 211;
    pub const RECVMSG: i64 = 212;
    pub const ACCEPT4: i64 = 242;
}

/// Parses a `/proc/<pid>/task/<tid>/syscall` line: `nr arg0 .. arg5 sp pc` (hex args), or
/// `running` / `-1 ...` for a thread not in a syscall.
pub fn parse_syscall_line(line: &str) -> Option<(i64, [u64; 6])> {
    let mut parts = line.split_whitespace();
    let nr: i64 = parts.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        let s = parts.next()?;
        *a = u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()?;
    }
    Some((nr, args))
}

/// Classifies a blocked syscall, if it is one the probes care about.
pub fn classify(nr: i64, args: [u64; 6]) -> Option<Blocked> {
    use direction::{EGRESS, INGRESS};
    let data = |kind, dir| {
        Some(Blocked::Data {
            fd: args[0] as i32,
            buf_kind: kind,
            direction: dir,
            ptr: args[1],
            count: args[2],
        })
    };
    match nr {
        nr::READ | nr::RECVFROM => data(buf_kind::PLAIN, INGRESS),
        nr::WRITE | nr::SENDTO => data(buf_kind::PLAIN, EGRESS),
        nr::READV => data(buf_kind::IOVEC, INGRESS),
        nr::WRITEV => data(buf_kind::IOVEC, EGRESS),
        nr::RECVMSG => data(buf_kind::MSGHDR, INGRESS),
        nr::SENDMSG => data(buf_kind::MSGHDR, EGRESS),
        nr::ACCEPT | nr::ACCEPT4 => Some(Blocked::Accept { sockaddr: args[1] }),
        _ => None,
    }
}

/// A thread of `pid` blocked in a syscall of interest.
#[derive(Clone, Copy, Debug)]
pub struct BlockedThread {
    pub pid: u32,
    pub tid: u32,
    pub syscall: Blocked,
    /// The raw line, to check later that the thread is still in the same call.
    pub nr: i64,
    pub args: [u64; 6],
}

pub fn read_thread(pid: u32, tid: u32) -> Option<(i64, [u64; 6])> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    parse_syscall_line(&line)
}

/// Blocked threads of every process (or only `only_pids`), except `exclude_pid`.
pub fn scan(exclude_pid: u32, only_pids: Option<&[u32]>) -> Vec<BlockedThread> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in procs.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == exclude_pid || only_pids.is_some_and(|only| !only.contains(&pid)) {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Some(tid) = task
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some((nr, args)) = read_thread(pid, tid) else {
                continue;
            };
            if let Some(syscall) = classify(nr, args) {
                out.push(BlockedThread {
                    pid,
                    tid,
                    syscall,
                    nr,
                    args,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_blocked_and_running_threads() {
        assert_eq!(
            parse_syscall_line("45 0x4 0x7ffd1000 0x2000 0x0 0x0 0x0 0x7ffd0f00 0x7f00aa"),
            Some((45, [4, 0x7ffd1000, 0x2000, 0, 0, 0]))
        );
        assert_eq!(parse_syscall_line("running"), None);
        assert_eq!(parse_syscall_line("-1 0x7ffd0f00 0x7f00aa"), None);
        assert_eq!(parse_syscall_line("0 0x4"), None);
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn classifies_socket_syscalls() {
        let args = [5, 0x1000, 0x2000, 0, 0, 0];
        assert_eq!(
            classify(45, args),
            Some(Blocked::Data {
                fd: 5,
                buf_kind: buf_kind::PLAIN,
                direction: direction::INGRESS,
                ptr: 0x1000,
                count: 0x2000
            })
        );
        assert_eq!(
            classify(20, args),
            Some(Blocked::Data {
                fd: 5,
                buf_kind: buf_kind::IOVEC,
                direction: direction::EGRESS,
                ptr: 0x1000,
                count: 0x2000
            })
        );
        assert_eq!(
            classify(288, args),
            Some(Blocked::Accept { sockaddr: 0x1000 })
        );
        assert_eq!(classify(7, args), None); // poll
    }
}
