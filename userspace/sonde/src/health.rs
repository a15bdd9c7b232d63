//! Decodes the `HEALTH` ring buffer (process lifecycle and TCP health records from
//! ebpf/probes lifecycle.rs and tcp_health.rs) into metrics-registry updates; the daemon also
//! hands execs to the TLS attacher (a new program may map a libssl not hooked yet).
use std::net::{IpAddr, Ipv6Addr};

use sonde_common::{HealthEvent, health_flags, health_kind};
use sonde_metrics::{Exit, TcpEvent};

/// A decoded health record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Exec {
        pid: u32,
    },
    Fork {
        parent: u32,
        child: u32,
    },
    Exit {
        pid: u32,
        exit: Exit,
    },
    OomKill {
        pid: u32,
    },
    /// `pid` 0: the kernel did not know the owner (server-side socket in softirq context).
    Tcp {
        pid: u32,
        event: TcpEvent,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthDecodeError {
    #[error("health record of {0} bytes, expected {1}")]
    Size(usize, usize),
    #[error("unknown health record kind {0}")]
    Kind(u32),
}

fn ip(raw: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(raw);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<Health, HealthDecodeError> {
    let size = size_of::<HealthEvent>();
    if bytes.len() < size {
        return Err(HealthDecodeError::Size(bytes.len(), size));
    }
    // SAFETY: length checked; HealthEvent is a repr(C) plain-old-data layout (sonde-common).
    let e: HealthEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let pid = e.pid;
    Ok(match e.kind {
        health_kind::EXEC => Health::Exec { pid },
        health_kind::FORK => Health::Fork {
            parent: pid,
            child: e.other,
        },
        health_kind::EXIT => Health::Exit {
            pid,
            exit: if e.flags & health_flags::HAS_CODE != 0 {
                Exit::Code(e.code)
            } else if e.flags & health_flags::HAS_SIGNAL != 0 {
                Exit::Signal(e.signal)
            } else {
                Exit::Unknown
            },
        },
        health_kind::OOM_KILL => Health::OomKill { pid },
        health_kind::RETRANSMIT => Health::Tcp {
            pid,
            event: TcpEvent::Retransmit,
        },
        health_kind::RESET_SENT => Health::Tcp {
            pid,
            event: TcpEvent::ResetSent,
        },
        health_kind::RESET_RECEIVED => Health::Tcp {
            pid,
            event: TcpEvent::ResetReceived,
        },
        health_kind::CONNECT_FAILED => Health::Tcp {
            pid,
            event: TcpEvent::FailedConnect(ip(e.daddr), e.dport),
        },
        k => return Err(HealthDecodeError::Kind(k)),
    })
}

/// Whether `pid` is a process (thread-group leader) rather than a thread.
pub fn is_process(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.status())
        .is_ok_and(|s| s.tgid == pid as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(e: &HealthEvent) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain repr(C) value.
        unsafe {
            std::slice::from_raw_parts(
                (e as *const HealthEvent).cast::<u8>(),
                size_of::<HealthEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_exits_and_failed_connects() {
        let mut e = HealthEvent {
            kind: health_kind::EXIT,
            pid: 7,
            code: 3,
            flags: health_flags::HAS_CODE,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes(&e)),
            Ok(Health::Exit {
                pid: 7,
                exit: Exit::Code(3)
            })
        );
        e.flags = health_flags::HAS_SIGNAL;
        e.signal = 9;
        assert_eq!(
            decode(&bytes(&e)),
            Ok(Health::Exit {
                pid: 7,
                exit: Exit::Signal(9)
            })
        );
        let mut daddr = [0u8; 16];
        daddr[10] = 0xff;
        daddr[11] = 0xff;
        daddr[12] = 127;
        daddr[15] = 1;
        let c = HealthEvent {
            kind: health_kind::CONNECT_FAILED,
            pid: 9,
            dport: 1,
            daddr,
            ..Default::default()
        };
        assert_eq!(
            decode(&bytes(&c)),
            Ok(Health::Tcp {
                pid: 9,
                event: TcpEvent::FailedConnect("127.0.0.1".parse().unwrap(), 1)
            })
        );
        assert!(decode(&bytes(&c)[..10]).is_err());
        let bad = HealthEvent {
            kind: 99,
            ..Default::default()
        };
        assert_eq!(decode(&bytes(&bad)), Err(HealthDecodeError::Kind(99)));
    }

    #[test]
    fn this_process_is_a_process() {
        assert!(is_process(std::process::id()));
    }
}
