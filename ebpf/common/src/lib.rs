//! Wire layouts shared by the kernel programs (`sonde-probes`) and the daemon.
//!
//! Everything here crosses the kernel/user boundary byte for byte: `#[repr(C)]`, no implicit
//! padding (checked by the size asserts at the bottom), only fixed-width integers and byte
//! arrays, never `bool`, `Option` or Rust enums.
#![no_std]

/// Bytes of payload one ring-buffer record carries; a larger transfer is split into chunks.
pub const CHUNK_SIZE: usize = 4096;
/// Upper bound on chunks per syscall, so the kernel loop is bounded for the verifier.
pub const MAX_CHUNKS: u32 = 16;
/// Largest capture per syscall the kernel can be asked for.
pub const MAX_CAPTURE_BYTES: u32 = CHUNK_SIZE as u32 * MAX_CHUNKS;
/// iovec entries of a readv/writev/recvmsg/sendmsg the kernel looks at.
pub const MAX_IOVECS: u32 = 8;

/// `EventHeader::kind` values.
pub mod kind {
    /// A TCP connection this process accepted (server side).
    pub const ACCEPT: u32 = 1;
    /// A TCP connection this process initiated (client side).
    pub const CONNECT: u32 = 2;
    /// Bytes read from or written to a traced socket.
    pub const DATA: u32 = 3;
    /// A traced socket was closed.
    pub const CLOSE: u32 = 4;
    /// A process (thread-group leader) exited.
    pub const PROCESS_EXIT: u32 = 5;
    /// A traced socket's fd was duplicated (dup, dup2, dup3, fcntl F_DUPFD): `hdr.fd` is the
    /// new fd, another name for the same connection.
    pub const DUP: u32 = 6;
}

/// `DataEvent::direction` values, from the traced process's point of view.
pub mod direction {
    pub const INGRESS: u32 = 1;
    pub const EGRESS: u32 = 2;
}

/// `SocketState::role` values.
pub mod role {
    pub const UNKNOWN: u32 = 0;
    pub const SERVER: u32 = 1;
    pub const CLIENT: u32 = 2;
}

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventHeader {
    pub kind: u32,
    /// Thread-group id (the process id userspace sees).
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    pub fd: i32,
    /// `bpf_ktime_get_ns`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
}

/// A new TCP connection on `hdr.fd`. Addresses are IPv4-mapped IPv6 when `family` is AF_INET.
/// A field the kernel could not learn is all zero; userspace fills it from /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnEvent {
    pub hdr: EventHeader,
    pub role: u32,
    pub family: u16,
    pub local_port: u16,
    pub remote_port: u16,
    pub _pad: [u16; 3],
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    /// The process's command name (`comm`), for processes gone before userspace reads /proc.
    pub comm: [u8; 16],
}

/// `kind::DUP`: `hdr.fd` now refers to the same socket as `old_fd`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DupEvent {
    pub hdr: EventHeader,
    pub old_fd: i32,
    pub _pad: u32,
}

/// One chunk of the bytes one syscall transferred on a traced socket.
///
/// `total_len` is what the syscall returned; `offset` is where this chunk starts within it;
/// `len` is how many bytes of `data` are valid. Bytes of `total_len` that no chunk covers were
/// not captured (over the capture limit); userspace must account for them as lost.
/// Only `DATA_HEADER_SIZE + len` bytes of a record are written to the ring buffer.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct DataEvent {
    pub hdr: EventHeader,
    pub direction: u32,
    pub len: u32,
    pub offset: u32,
    /// Bit 0: last chunk of this syscall.
    pub flags: u32,
    pub total_len: u64,
    /// CLOCK_MONOTONIC at syscall entry for a write. The probes read the clock once per
    /// syscall: for a write `hdr.ts_ns` is this entry time too, for a read both are the exit
    /// time (userspace times writes by their entry and reads by their exit).
    pub enter_ts_ns: u64,
    pub data: [u8; CHUNK_SIZE],
}

pub const DATA_FLAG_LAST_CHUNK: u32 = 1;
/// Bit 1: the bytes are TLS plaintext captured by the OpenSSL uprobes (`SSL_read`/`SSL_write`),
/// not what a syscall moved. `hdr.fd` is the socket the library read or wrote.
pub const DATA_FLAG_TLS: u32 = 2;
pub const DATA_HEADER_SIZE: usize = core::mem::size_of::<DataEvent>() - CHUNK_SIZE;

/// Value of the kernel's per-socket map, keyed by `socket_key(pid, fd)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SocketState {
    pub role: u32,
    /// Bytes to capture per syscall on this socket (userspace raises it for protocols with long
    /// messages, e.g. PostgreSQL queries); 0 means the global default.
    pub capture_bytes: u32,
}

/// How a data syscall described its buffers (`DataArgs::buf_kind`).
pub mod buf_kind {
    pub const PLAIN: u32 = 0;
    pub const IOVEC: u32 = 1;
    pub const MSGHDR: u32 = 2;
    pub const NONE: u32 = 3;
}

/// A data syscall in flight, by thread (`pid_tgid`): stashed on entry, used on exit. The
/// daemon writes entries itself for threads that were already blocked in a syscall on a
/// traced socket when the programs attached (their entry was never seen).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DataArgs {
    pub fd: i32,
    pub buf_kind: u32,
    pub ptr: u64,
    pub iov_count: u64,
    pub direction: u32,
    pub capture_bytes: u32,
    pub enter_ts_ns: u64,
    /// `data_flags` bits.
    pub flags: u32,
    pub _pad: u32,
}

/// `DataArgs::flags` bits.
pub mod data_flags {
    /// A client socket with no protocol-specific capture size yet: look at what it writes.
    pub const SNIFF: u32 = 1;
    /// TLS plaintext from the OpenSSL uprobes: the record carries `DATA_FLAG_TLS`.
    pub const TLS: u32 = 2;
}

/// An accept in flight, by thread; written by the daemon too, as for [`DataArgs`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptArgs {
    pub sockaddr: u64,
}

/// Key of the per-socket map.
#[inline(always)]
pub const fn socket_key(pid: u32, fd: u32) -> u64 {
    ((pid as u64) << 32) | fd as u64
}

/// Whether a record of `size` bytes, added to a ring buffer holding `queued` unread bytes,
/// should force a wake-up of the reader: once per `step` bytes queued, when the record takes
/// the queue across a multiple of `step` (`step` 0: every record).
///
/// Not while the queue merely sits above `step`: then the reader is busy, not asleep, and
/// each forced wake-up is an irq_work (on a VM an APIC write that exits to the hypervisor,
/// in the traced process's syscall). The reader loses nothing: `poll` looks for data before
/// it sleeps and the reader drains the buffer empty. A crossing missed by a racing CPU is
/// made up at the next multiple, or by the reader's poll timeout.
#[inline(always)]
pub const fn forces_wakeup(queued: u64, size: u64, step: u64) -> bool {
    step == 0 || queued / step != queued.saturating_add(size) / step
}

/// Settings the daemon writes into the programs' read-only data before loading.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeConfig {
    /// The daemon's own pid: its traffic is never traced.
    pub self_pid: u32,
    /// Non-zero: only pids present in the pid filter map are traced.
    pub filter_pids: u32,
    /// Default bytes captured per syscall (at most `MAX_CAPTURE_BYTES`).
    pub capture_bytes: u32,
    /// A record wakes the reader when it takes the unread bytes in the ring buffer across a
    /// multiple of this; other records wait for the reader's own poll tick (batched wake-ups).
    pub wakeup_bytes: u32,
    /// `probe_flags` bits.
    pub flags: u32,
    /// Capture size for a client socket whose first write is a PostgreSQL startup or
    /// SSLRequest (set in the kernel, so the first query is already captured whole).
    pub postgres_capture_bytes: u32,
}

/// `ProbeConfig::flags` bits.
pub mod probe_flags {
    /// Every program returns at once: the cost floor of having the tracepoints attached
    /// (used by the benchmark's "empty programs" baseline).
    pub const NOOP: u32 = 1;
}

const _: () = assert!(core::mem::size_of::<EventHeader>() == 24);
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 88);
const _: () = assert!(DATA_HEADER_SIZE == 56);
const _: () = assert!(core::mem::size_of::<DupEvent>() == 32);
const _: () = assert!(core::mem::size_of::<SocketState>() == 8);
const _: () = assert!(core::mem::size_of::<DataArgs>() == 48);
const _: () = assert!(core::mem::size_of::<AcceptArgs>() == 8);
const _: () = assert!(core::mem::size_of::<ProbeConfig>() == 24);

/// `HealthEvent::kind` values (ring buffer `HEALTH`, separate from `EVENTS`: process
/// lifecycle and TCP health for the metrics, never on the data path).
pub mod health_kind {
    /// `pid` called execve.
    pub const EXEC: u32 = 1;
    /// `pid` forked `other` (a new process).
    pub const FORK: u32 = 2;
    /// Process `pid` ended: `code` from exit_group, or killed by `signal` (0: unknown).
    pub const EXIT: u32 = 3;
    /// The OOM killer chose `pid`.
    pub const OOM_KILL: u32 = 4;
    /// A TCP segment of `pid`'s socket was retransmitted.
    pub const RETRANSMIT: u32 = 5;
    /// A TCP reset was sent from local port `sport`.
    pub const RESET_SENT: u32 = 6;
    /// A TCP reset was received on local port `sport`.
    pub const RESET_RECEIVED: u32 = 7;
    /// `pid`'s connect to `daddr`:`dport` failed (SYN_SENT -> CLOSE).
    pub const CONNECT_FAILED: u32 = 8;
}

/// `HealthEvent::flags` bits.
pub mod health_flags {
    /// `code` is valid (the process called exit_group).
    pub const HAS_CODE: u32 = 1;
    /// `signal` is valid (a fatal signal was delivered).
    pub const HAS_SIGNAL: u32 = 2;
}

/// A lifecycle or TCP health record. `pid` is 0 when the kernel ran it outside the owning
/// process (softirq) and no owner was remembered: userspace attributes it by `sport`.
/// Addresses are IPv4-mapped IPv6 for AF_INET.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HealthEvent {
    pub kind: u32,
    pub pid: u32,
    /// FORK: the child's pid.
    pub other: u32,
    pub code: i32,
    pub signal: i32,
    pub flags: u32,
    pub ts_ns: u64,
    /// Local and remote ports (host order).
    pub sport: u16,
    pub dport: u16,
    pub _pad: u32,
    pub daddr: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<HealthEvent>() == 56);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain-old-data: repr(C), integer and byte-array fields, no padding (asserted above).
    unsafe impl aya::Pod for super::SocketState {}
    unsafe impl aya::Pod for super::ProbeConfig {}
    unsafe impl aya::Pod for super::DataArgs {}
    unsafe impl aya::Pod for super::AcceptArgs {}
    unsafe impl aya::Pod for super::HealthEvent {}
}

/// Names of the maps and the global the daemon opens by name. aya's `#[map]` takes no
/// constant, so the probes' `static`s are spelled the same by hand; a test of the daemon's
/// loader checks every name here (and every program it attaches) against the built object.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const SOCKETS: &str = "SOCKETS";
    pub const TRACED_PIDS: &str = "TRACED_PIDS";
    pub const DATA_ARGS: &str = "DATA_ARGS";
    pub const ACCEPT_ARGS: &str = "ACCEPT_ARGS";
    /// Process lifecycle and TCP health records (their own ring buffer).
    pub const HEALTH: &str = "HEALTH";
    /// The `ProbeConfig` global the loader overrides.
    pub const SONDE_CONFIG: &str = "SONDE_CONFIG";
    /// Every map the loader takes.
    pub const MAPS: &[&str] = &[
        EVENTS,
        LOST,
        SOCKETS,
        TRACED_PIDS,
        DATA_ARGS,
        ACCEPT_ARGS,
        HEALTH,
    ];
}

#[cfg(test)]
mod tests {
    use super::forces_wakeup;

    const STEP: u64 = 256 * 1024;

    #[test]
    fn only_the_record_crossing_a_step_wakes_the_reader() {
        assert!(!forces_wakeup(0, 300, STEP));
        assert!(!forces_wakeup(STEP - 301, 300, STEP));
        assert!(forces_wakeup(STEP - 100, 300, STEP));
        assert!(
            forces_wakeup(STEP - 300, 300, STEP),
            "landing on the step counts"
        );
        // Above the step (the reader is busy draining): quiet until the next multiple.
        assert!(!forces_wakeup(STEP, 300, STEP));
        assert!(!forces_wakeup(STEP + 1000, 300, STEP));
        assert!(forces_wakeup(2 * STEP - 1, 300, STEP));
    }

    #[test]
    fn a_stream_of_records_wakes_once_per_step() {
        let (mut queued, mut wakeups) = (0u64, 0u64);
        for _ in 0..100_000 {
            wakeups += u64::from(forces_wakeup(queued, 330, STEP));
            queued += 330;
        }
        assert_eq!(wakeups, queued / STEP);
    }

    #[test]
    fn a_zero_step_wakes_on_every_record() {
        assert!(forces_wakeup(0, 1, 0));
        assert!(forces_wakeup(u64::MAX, 1, 0));
        // A full queue does not overflow the arithmetic.
        assert!(!forces_wakeup(u64::MAX, 1, STEP));
    }
}
