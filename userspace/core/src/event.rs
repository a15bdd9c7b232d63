//! Decodes ring-buffer records (the `sonde-common` wire layouts) into [`KernelEvent`]s.
//!
//! Pure: bytes in, event out. A short or unknown record is an error, never a panic.
use std::net::{Ipv6Addr, SocketAddr};

use sonde_common::{
    ConnEvent, DATA_FLAG_LAST_CHUNK, DATA_FLAG_TLS, DATA_HEADER_SIZE, DataEvent, EventHeader,
    direction, kind, role,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown record kind {0}")]
    UnknownKind(u32),
    #[error("data record claims {claimed} payload bytes but carries {carried}")]
    BadLength { claimed: u32, carried: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// Where a data event's bytes come from: the syscall, or the TLS uprobes (plaintext).
pub use sonde_protocol::Source;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub pid: u32,
    pub tid: u32,
    pub fd: i32,
    pub ts_ns: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum KernelEvent<'a> {
    /// A new connection. Addresses the kernel could not learn are None.
    Connection {
        hdr: Header,
        role: Role,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
        /// The process's command name as the kernel saw it.
        comm: String,
    },
    Data {
        hdr: Header,
        direction: Direction,
        /// CLOCK_MONOTONIC at syscall entry.
        enter_ts_ns: u64,
        /// Bytes the syscall transferred.
        total_len: u64,
        /// Where `payload` starts within them.
        offset: u32,
        payload: &'a [u8],
        /// Last chunk of the syscall: bytes of `total_len` after it were not captured.
        last: bool,
        /// Where the bytes come from: the syscall, or the OpenSSL uprobes (TLS plaintext).
        source: Source,
    },
    Close(Header),
    ProcessExit(Header),
    /// `hdr.fd` is a duplicate of `old_fd`.
    Dup {
        hdr: Header,
        old_fd: i32,
    },
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; T is a repr(C) plain-old-data layout from sonde-common.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn addr(ip: [u8; 16], port: u16) -> Option<SocketAddr> {
    if port == 0 && ip == [0; 16] {
        return None;
    }
    let v6 = Ipv6Addr::from(ip);
    let ip = match v6.to_ipv4_mapped() {
        Some(v4) => std::net::IpAddr::V4(v4),
        None => std::net::IpAddr::V6(v6),
    };
    Some(SocketAddr::new(ip, port))
}

pub fn decode(bytes: &[u8]) -> Result<KernelEvent<'_>, DecodeError> {
    let raw: EventHeader = read(bytes)?;
    let hdr = Header {
        pid: raw.pid,
        tid: raw.tid,
        fd: raw.fd,
        ts_ns: raw.ts_ns,
    };
    match raw.kind {
        kind::ACCEPT | kind::CONNECT => {
            let ev: ConnEvent = read(bytes)?;
            let role = match ev.role {
                role::SERVER => Role::Server,
                role::CLIENT => Role::Client,
                _ => Role::Unknown,
            };
            Ok(KernelEvent::Connection {
                hdr,
                role,
                local: addr(ev.local_addr, ev.local_port),
                remote: addr(ev.remote_addr, ev.remote_port),
                comm: comm(&ev.comm),
            })
        }
        kind::DATA => {
            if bytes.len() < DATA_HEADER_SIZE {
                return Err(DecodeError::Short(bytes.len()));
            }
            // Only the header and `len` payload bytes are in the record: read the header part.
            let mut head = [0u8; DATA_HEADER_SIZE];
            head.copy_from_slice(&bytes[..DATA_HEADER_SIZE]);
            let direction_raw =
                u32::from_ne_bytes(field(&head, std::mem::offset_of!(DataEvent, direction)));
            let len = u32::from_ne_bytes(field(&head, std::mem::offset_of!(DataEvent, len)));
            let offset = u32::from_ne_bytes(field(&head, std::mem::offset_of!(DataEvent, offset)));
            let flags = u32::from_ne_bytes(field(&head, std::mem::offset_of!(DataEvent, flags)));
            let total_len =
                u64::from_ne_bytes(field(&head, std::mem::offset_of!(DataEvent, total_len)));
            let enter_ts_ns =
                u64::from_ne_bytes(field(&head, std::mem::offset_of!(DataEvent, enter_ts_ns)));
            let payload = bytes
                .get(DATA_HEADER_SIZE..DATA_HEADER_SIZE + len as usize)
                .ok_or(DecodeError::BadLength {
                    claimed: len,
                    carried: bytes.len() - DATA_HEADER_SIZE,
                })?;
            Ok(KernelEvent::Data {
                hdr,
                direction: if direction_raw == direction::EGRESS {
                    Direction::Egress
                } else {
                    Direction::Ingress
                },
                enter_ts_ns,
                total_len,
                offset,
                payload,
                last: flags & DATA_FLAG_LAST_CHUNK != 0,
                source: if flags & DATA_FLAG_TLS != 0 {
                    Source::TlsPlaintext
                } else {
                    Source::Syscall
                },
            })
        }
        kind::CLOSE => Ok(KernelEvent::Close(hdr)),
        kind::DUP => {
            let ev: sonde_common::DupEvent = read(bytes)?;
            Ok(KernelEvent::Dup {
                hdr,
                old_fd: ev.old_fd,
            })
        }
        kind::PROCESS_EXIT => Ok(KernelEvent::ProcessExit(hdr)),
        other => Err(DecodeError::UnknownKind(other)),
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

fn field<const N: usize>(head: &[u8; DATA_HEADER_SIZE], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&head[at..at + N]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_bytes<T>(v: &T) -> &[u8] {
        // SAFETY: test-only view of a repr(C) POD value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast(), size_of::<T>()) }
    }

    #[test]
    fn decodes_a_data_record_with_only_its_payload() {
        let mut ev = DataEvent {
            hdr: EventHeader {
                kind: kind::DATA,
                pid: 7,
                tid: 8,
                fd: 3,
                ts_ns: 99,
            },
            direction: direction::EGRESS,
            len: 5,
            offset: 4096,
            flags: DATA_FLAG_LAST_CHUNK,
            total_len: 10000,
            enter_ts_ns: 90,
            data: [0; sonde_common::CHUNK_SIZE],
        };
        ev.data[..5].copy_from_slice(b"hello");
        let bytes = &as_bytes(&ev)[..DATA_HEADER_SIZE + 5];
        let KernelEvent::Data {
            hdr,
            direction,
            payload,
            total_len,
            offset,
            last,
            enter_ts_ns,
            source,
        } = decode(bytes).unwrap()
        else {
            panic!("not data")
        };
        assert_eq!(
            hdr,
            Header {
                pid: 7,
                tid: 8,
                fd: 3,
                ts_ns: 99
            }
        );
        assert_eq!(direction, Direction::Egress);
        assert_eq!(payload, b"hello");
        assert_eq!(source, Source::Syscall);
        assert_eq!(
            (total_len, offset, last, enter_ts_ns),
            (10000, 4096, true, 90)
        );
    }

    #[test]
    fn short_and_lying_records_are_errors() {
        assert_eq!(decode(&[1, 2, 3]), Err(DecodeError::Short(3)));
        let mut ev = DataEvent {
            hdr: EventHeader {
                kind: kind::DATA,
                ..Default::default()
            },
            direction: 1,
            len: 100,
            offset: 0,
            flags: 0,
            total_len: 100,
            enter_ts_ns: 0,
            data: [0; sonde_common::CHUNK_SIZE],
        };
        ev.len = 100;
        assert!(matches!(
            decode(&as_bytes(&ev)[..DATA_HEADER_SIZE + 10]),
            Err(DecodeError::BadLength { .. })
        ));
        let hdr = EventHeader {
            kind: 77,
            ..Default::default()
        };
        assert_eq!(decode(as_bytes(&hdr)), Err(DecodeError::UnknownKind(77)));
    }

    #[test]
    fn conn_addresses_are_unmapped_from_v6() {
        let mut ev = ConnEvent {
            hdr: EventHeader {
                kind: kind::CONNECT,
                pid: 1,
                ..Default::default()
            },
            role: role::CLIENT,
            local_port: 40000,
            remote_port: 5432,
            ..Default::default()
        };
        ev.remote_addr[10] = 0xff;
        ev.remote_addr[11] = 0xff;
        ev.remote_addr[12] = 127;
        ev.remote_addr[15] = 1;
        let KernelEvent::Connection {
            remote,
            local,
            role,
            comm,
            ..
        } = decode(as_bytes(&ev)).unwrap()
        else {
            panic!()
        };
        assert_eq!(remote, Some("127.0.0.1:5432".parse().unwrap()));
        assert_eq!(local, Some("[::]:40000".parse().unwrap()));
        assert_eq!(role, Role::Client);
        assert_eq!(comm, "");
    }
}
