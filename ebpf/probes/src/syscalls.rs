//! Syscall tracepoints: socket lifecycle (accept, connect, close), data transfer (read/write
//! family, sendfile) and process exit, plus `sock:inet_sock_set_state` to learn a client
//! socket's local address and that it is TCP.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, generated::bpf_probe_read_user},
    macros::{map, tracepoint},
    maps::{HashMap, LruHashMap},
    programs::TracePointContext,
};
use sonde_common::{
    AcceptArgs, CHUNK_SIZE, ConnEvent, DATA_FLAG_LAST_CHUNK, DATA_HEADER_SIZE, DataArgs, DupEvent,
    EventHeader, MAX_CAPTURE_BYTES, MAX_CHUNKS, MAX_IOVECS, SocketState, direction, kind, role,
    socket_key,
};

use crate::maps::{
    DataScratch, SCRATCH, SOCKETS, TRACED_PIDS, config, noop, now_ns, output, output_raw, pid_tgid,
    process_wanted,
};

// Offsets in the syscall tracepoint records (stable: see events/syscalls/*/format).
const ARG0: usize = 16;
const ARG1: usize = 24;
const ARG2: usize = 32;
const RET: usize = 16;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const EINPROGRESS: i64 = 115;
const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_SYN_RECV: i32 = 3;
const TCP_CLOSE: i32 = 7;

use sonde_common::buf_kind::{
    IOVEC as BUF_IOVEC, MSGHDR as BUF_MSGHDR, NONE as BUF_NONE, PLAIN as BUF_PLAIN,
};

#[repr(C)]
#[derive(Clone, Copy)]
struct ConnectArgs {
    fd: i32,
    is_tcp: u32,
    family: u16,
    remote_port: u16,
    remote_addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy)]
struct IoVec {
    base: u64,
    len: u64,
}

/// One end of a TCP connection (v4-mapped v6 address).
#[repr(C)]
#[derive(Clone, Copy)]
struct Endpoint {
    addr: [u8; 16],
    port: u16,
    _pad: [u8; 6],
}

/// Server-side connections the kernel just established, by their remote endpoint, giving the
/// local endpoint. Filled from softirq context (so for every process), read by accept, which
/// only learns the remote endpoint from its sockaddr. LRU: entries nobody accepts age out.
#[map]
static ESTABLISHED: LruHashMap<Endpoint, Endpoint> = LruHashMap::with_max_entries(16384, 0);

/// Data syscalls on traced sockets, by thread (`pid_tgid`): written at entry, read at exit.
/// An entry stays while its thread lives (removed at thread exit) and is marked consumed
/// (`fd = -1`) at syscall exit: updating it in place costs a lookup, where inserting and
/// deleting it per syscall was the probes' largest cost in a busy server's syscalls.
#[map]
pub static DATA_ARGS: HashMap<u64, DataArgs> = HashMap::with_max_entries(32768, 0);
#[map]
pub static ACCEPT_ARGS: HashMap<u64, AcceptArgs> = HashMap::with_max_entries(16384, 0);
#[map]
static CONNECT_ARGS: HashMap<u64, ConnectArgs> = HashMap::with_max_entries(16384, 0);
/// Client sockets between SYN sent and established, by `struct sock` address: the connection
/// record is completed (local port) and emitted when the handshake completes.
#[map]
static CONNECTING: LruHashMap<u64, ConnEvent> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn arg<T>(ctx: &TracePointContext, offset: usize) -> Option<T> {
    // SAFETY: offsets come from the tracepoint format; read_at bounds-checks via the helper.
    unsafe { ctx.read_at::<T>(offset) }.ok()
}

#[inline(always)]
fn read_user<T: Copy>(src: u64) -> Option<T> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper copies at most size_of::<T>() bytes and fails on a bad pointer.
    let ret = unsafe {
        bpf_probe_read_user(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            src as *const core::ffi::c_void,
        )
    };
    if ret < 0 {
        return None;
    }
    // SAFETY: fully written by the helper on success.
    Some(unsafe { value.assume_init() })
}

#[inline(always)]
fn header(kind: u32, id: u64, fd: i32) -> EventHeader {
    EventHeader {
        kind,
        pid: (id >> 32) as u32,
        tid: id as u32,
        fd,
        ts_ns: now_ns(),
    }
}

/// Reads a sockaddr_in / sockaddr_in6 into (family, port, v6-mapped address).
#[inline(always)]
fn read_sockaddr(ptr: u64) -> Option<(u16, u16, [u8; 16])> {
    if ptr == 0 {
        return None;
    }
    let family: u16 = read_user(ptr)?;
    let port_be: u16 = read_user(ptr + 2)?;
    let mut addr = [0u8; 16];
    match family {
        AF_INET => {
            let v4: [u8; 4] = read_user(ptr + 4)?;
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12] = v4[0];
            addr[13] = v4[1];
            addr[14] = v4[2];
            addr[15] = v4[3];
        }
        AF_INET6 => addr = read_user(ptr + 8)?,
        _ => return Some((family, 0, addr)),
    }
    Some((family, u16::from_be(port_be), addr))
}

// ---------------------------------------------------------------- accept

#[tracepoint]
pub fn sys_enter_accept(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let id = pid_tgid();
    if !process_wanted((id >> 32) as u32) {
        return 0;
    }
    let sockaddr = arg::<u64>(&ctx, ARG1).unwrap_or(0);
    let _ = ACCEPT_ARGS.insert(&id, &AcceptArgs { sockaddr }, 0);
    0
}

#[tracepoint]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    exit_accept(&ctx)
}

#[inline(always)]
fn exit_accept(ctx: &TracePointContext) -> u32 {
    let id = pid_tgid();
    // SAFETY: copy out of the map before removing the entry.
    let args = match (unsafe { ACCEPT_ARGS.get(&id) }).copied() {
        Some(args) => {
            let _ = ACCEPT_ARGS.remove(&id);
            args
        }
        // The accept started before sonde attached and the daemon could not stash its
        // arguments: no address (userspace reads /proc).
        None if process_wanted((id >> 32) as u32) => AcceptArgs { sockaddr: 0 },
        None => return 0,
    };
    let ret = arg::<i64>(ctx, RET).unwrap_or(-1);
    if ret < 0 {
        return 0;
    }
    let fd = ret as i32;
    let mut event = ConnEvent {
        hdr: header(kind::ACCEPT, id, fd),
        role: role::SERVER,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..ConnEvent::default()
    };
    if let Some((family, port, addr)) = read_sockaddr(args.sockaddr) {
        if family != AF_INET && family != AF_INET6 {
            return 0; // AF_UNIX and friends: not TCP
        }
        event.family = family;
        event.remote_port = port;
        event.remote_addr = addr;
        let key = Endpoint {
            addr,
            port,
            _pad: [0; 6],
        };
        // SAFETY: copy out of the map before removing the entry.
        if let Some(local) = (unsafe { ESTABLISHED.get(&key) }).copied() {
            event.local_addr = local.addr;
            event.local_port = local.port;
            let _ = ESTABLISHED.remove(&key);
        }
    }
    let state = SocketState {
        role: role::SERVER,
        capture_bytes: 0,
    };
    let _ = SOCKETS.insert(&socket_key(event.hdr.pid, fd as u32), &state, 0);
    output(&event);
    0
}

// ---------------------------------------------------------------- connect

#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let id = pid_tgid();
    if !process_wanted((id >> 32) as u32) {
        return 0;
    }
    let fd = arg::<i64>(&ctx, ARG0).unwrap_or(-1) as i32;
    let Some((family, port, addr)) = read_sockaddr(arg::<u64>(&ctx, ARG1).unwrap_or(0)) else {
        return 0;
    };
    if family != AF_INET && family != AF_INET6 {
        return 0;
    }
    let args = ConnectArgs {
        fd,
        is_tcp: 0,
        family,
        remote_port: port,
        remote_addr: addr,
    };
    let _ = CONNECT_ARGS.insert(&id, &args, 0);
    0
}

/// Fires in the connecting thread when the kernel sends the SYN: proves the socket is TCP and
/// gives its local address and port.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let old: i32 = arg(&ctx, 16).unwrap_or(0);
    let new: i32 = arg(&ctx, 20).unwrap_or(0);
    let protocol: u16 = arg(&ctx, 30).unwrap_or(0);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let family: u16 = arg(&ctx, 28).unwrap_or(0);
    let v6_field = |offset_v4: usize, offset_v6: usize| -> [u8; 16] {
        let mut a = [0u8; 16];
        if family == AF_INET {
            let v4: [u8; 4] = arg(&ctx, offset_v4).unwrap_or([0; 4]);
            a[10] = 0xff;
            a[11] = 0xff;
            a[12] = v4[0];
            a[13] = v4[1];
            a[14] = v4[2];
            a[15] = v4[3];
        } else {
            a = arg(&ctx, offset_v6).unwrap_or([0; 16]);
        }
        a
    };
    let sport: u16 = arg(&ctx, 24).unwrap_or(0);
    if old == TCP_SYN_RECV && new == TCP_ESTABLISHED {
        // A server-side connection completed its handshake (softirq: any process).
        let dport: u16 = arg(&ctx, 26).unwrap_or(0);
        let remote = Endpoint {
            addr: v6_field(36, 56),
            port: dport,
            _pad: [0; 6],
        };
        let local = Endpoint {
            addr: v6_field(32, 40),
            port: sport,
            _pad: [0; 6],
        };
        let _ = ESTABLISHED.insert(&remote, &local, 0);
        return 0;
    }
    let skaddr: u64 = arg(&ctx, 8).unwrap_or(0);
    if old == TCP_SYN_SENT {
        // The handshake finished (or failed): emit the completed record, now with the local port.
        // SAFETY: copy out of the map before removing the entry.
        if let Some(mut event) = (unsafe { CONNECTING.get(&skaddr) }).copied() {
            let _ = CONNECTING.remove(&skaddr);
            if new == TCP_ESTABLISHED {
                event.local_port = sport;
                event.local_addr = v6_field(32, 40);
                event.hdr.ts_ns = now_ns();
                output(&event);
            }
        }
        return 0;
    }
    if old != TCP_CLOSE || new != TCP_SYN_SENT {
        return 0;
    }
    // In the connecting thread, while the kernel sends the SYN: proves the socket is TCP.
    let id = pid_tgid();
    let Some(args) = CONNECT_ARGS.get_ptr_mut(&id) else {
        return 0;
    };
    // SAFETY: the entry belongs to this thread; nothing else writes it concurrently.
    let args = unsafe { &mut *args };
    args.is_tcp = 1;
    let event = ConnEvent {
        hdr: header(kind::CONNECT, id, args.fd),
        role: role::CLIENT,
        family: args.family,
        local_port: 0,
        remote_port: args.remote_port,
        _pad: [0; 3],
        local_addr: v6_field(32, 40),
        remote_addr: args.remote_addr,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let _ = CONNECTING.insert(&skaddr, &event, 0);
    0
}

#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let id = pid_tgid();
    // SAFETY: copy out before removing.
    let Some(args) = (unsafe { CONNECT_ARGS.get(&id) }).copied() else {
        return 0;
    };
    let _ = CONNECT_ARGS.remove(&id);
    let ret = arg::<i64>(&ctx, RET).unwrap_or(-1);
    if (ret != 0 && ret != -EINPROGRESS) || args.is_tcp == 0 {
        return 0;
    }
    // The connection record itself is emitted when the handshake completes (inet_sock_set_state).
    let state = SocketState {
        role: role::CLIENT,
        capture_bytes: 0,
    };
    let _ = SOCKETS.insert(&socket_key((id >> 32) as u32, args.fd as u32), &state, 0);
    0
}

// ---------------------------------------------------------------- close and exit

#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let id = pid_tgid();
    let fd = arg::<i64>(&ctx, ARG0).unwrap_or(-1) as i32;
    let key = socket_key((id >> 32) as u32, fd as u32);
    // SAFETY: read-only lookup.
    if unsafe { SOCKETS.get(&key) }.is_none() {
        return 0;
    }
    let _ = SOCKETS.remove(&key);
    output(&header(kind::CLOSE, id, fd));
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    // Every thread: its data-syscall slot goes with it.
    let id = pid_tgid();
    let _ = DATA_ARGS.remove(&id);
    let group_dead: u8 = arg(&ctx, 32).unwrap_or(0);
    if group_dead == 0 {
        return 0;
    }
    output(&header(kind::PROCESS_EXIT, id, -1));
    0
}

// ---------------------------------------------------------------- data

/// Remembers a data syscall's buffers on entry if its fd is a traced socket.
#[inline(always)]
fn enter_data(ctx: &TracePointContext, buf_kind: u32, dir: u32) -> u32 {
    let id = pid_tgid();
    let fd = arg::<i64>(ctx, ARG0).unwrap_or(-1) as i32;
    let key = socket_key((id >> 32) as u32, fd as u32);
    // SAFETY: read-only lookup of a plain value.
    let Some(state) = (unsafe { SOCKETS.get(&key) }).copied() else {
        return 0;
    };
    let cfg = config();
    let capture = if state.capture_bytes != 0 {
        state.capture_bytes
    } else {
        cfg.capture_bytes
    };
    // Ciphertext that OpenSSL moves inside SSL_read/SSL_write: the uprobes emit the plaintext.
    if crate::tls::inside_ssl_call(id, fd, dir, capture) {
        return 0;
    }
    let args = DataArgs {
        fd,
        buf_kind,
        ptr: arg::<u64>(ctx, ARG1).unwrap_or(0),
        iov_count: if buf_kind == BUF_IOVEC {
            arg::<u64>(ctx, ARG2).unwrap_or(0)
        } else {
            0
        },
        direction: dir,
        capture_bytes: if capture > MAX_CAPTURE_BYTES {
            MAX_CAPTURE_BYTES
        } else {
            capture
        },
        // One clock read per syscall: userspace times a write by its entry and a read by its
        // exit (`emit_data`), and a read that returns nothing then costs none (reading the
        // clock was the probes' largest single cost in nginx's syscalls under load).
        enter_ts_ns: if dir == direction::EGRESS {
            now_ns()
        } else {
            0
        },
        flags: if state.capture_bytes == 0 && state.role == role::CLIENT && dir == direction::EGRESS
        {
            sonde_common::data_flags::SNIFF
        } else {
            0
        },
        _pad: 0,
    };
    match DATA_ARGS.get_ptr_mut(&id) {
        // SAFETY: this thread's own entry; only this thread writes it while it runs.
        Some(slot) => unsafe { *slot = args },
        None => {
            let _ = DATA_ARGS.insert(&id, &args, 0);
        }
    }
    0
}

/// Copies what the syscall transferred into the ring buffer on exit.
#[inline(always)]
fn exit_data(ctx: &TracePointContext) -> u32 {
    let id = pid_tgid();
    let Some(slot) = DATA_ARGS.get_ptr_mut(&id) else {
        return 0;
    };
    // SAFETY: this thread's own entry (see DATA_ARGS); copied out, then marked consumed so a
    // later syscall whose entry was not stashed (an untraced fd) finds nothing.
    let mut args = unsafe { *slot };
    if args.fd < 0 {
        return 0;
    }
    unsafe { (*slot).fd = -1 };
    let ret = arg::<i64>(ctx, RET).unwrap_or(-1);
    if ret <= 0 {
        return 0;
    }
    if args.flags & sonde_common::data_flags::SNIFF != 0 && args.buf_kind == BUF_PLAIN && ret >= 8 {
        sniff_postgres(id, &args);
    }
    if args.buf_kind == BUF_MSGHDR {
        // struct user_msghdr { void *name; int namelen; struct iovec *iov; size_t iovlen; ... }
        args.iov_count = read_user::<u64>(args.ptr + 24).unwrap_or(0);
        args.ptr = read_user::<u64>(args.ptr + 16).unwrap_or(0);
        args.buf_kind = BUF_IOVEC;
    }
    emit_data(id, &args, ret as u64);
    0
}

/// A client's write that is a PostgreSQL StartupMessage (protocol 3.0) or SSLRequest: raise
/// the socket's capture size now, so the queries that follow (long ORM SQL) arrive whole
/// without waiting for the daemon to notice.
#[inline(always)]
fn sniff_postgres(id: u64, args: &DataArgs) {
    let Some(head) = read_user::<[u8; 8]>(args.ptr) else {
        return;
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let startup = code == 196_608 && (8..10_000).contains(&len);
    let ssl_request = code == 80_877_103 && len == 8;
    if !startup && !ssl_request {
        return;
    }
    let key = socket_key((id >> 32) as u32, args.fd as u32);
    let state = SocketState {
        role: role::CLIENT,
        capture_bytes: config().postgres_capture_bytes,
    };
    let _ = SOCKETS.insert(&key, &state, 0);
}

#[inline(always)]
pub(crate) fn emit_data(id: u64, args: &DataArgs, total: u64) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: per-CPU scratch slot, exclusively ours while this program runs.
    let scratch = unsafe { &mut *scratch };
    let event = &mut scratch.event;
    // A write's entry time stands for both ends (userspace uses only it); a read is timed here.
    let ts_ns = if args.direction == direction::EGRESS && args.enter_ts_ns != 0 {
        args.enter_ts_ns
    } else {
        now_ns()
    };
    event.hdr = EventHeader {
        kind: kind::DATA,
        pid: (id >> 32) as u32,
        tid: id as u32,
        fd: args.fd,
        ts_ns,
    };
    event.direction = args.direction;
    event.total_len = total;
    event.enter_ts_ns = if args.enter_ts_ns != 0 {
        args.enter_ts_ns
    } else {
        ts_ns
    };
    let source = if args.flags & sonde_common::data_flags::TLS != 0 {
        sonde_common::DATA_FLAG_TLS
    } else {
        0
    };
    event.flags = source;

    let captured = if total < args.capture_bytes as u64 {
        total as u32
    } else {
        args.capture_bytes
    };
    if args.buf_kind == BUF_NONE || captured == 0 {
        event.offset = 0;
        event.len = 0;
        event.flags = source | DATA_FLAG_LAST_CHUNK;
        output_raw(
            (event as *const sonde_common::DataEvent).cast(),
            DATA_HEADER_SIZE as u64,
        );
        return;
    }

    if args.buf_kind == BUF_IOVEC {
        emit_iovecs(scratch, args.ptr, args.iov_count, captured);
    } else {
        emit_buffer(event, args.ptr, captured);
    }
}

/// Copies `len` (1..=CHUNK_SIZE after masking) bytes from `src` and outputs one record.
/// Returns false if the user memory could not be read.
#[inline(always)]
fn emit_chunk(
    event: &mut sonde_common::DataEvent,
    src: u64,
    len: u32,
    offset: u32,
    last: bool,
) -> bool {
    // Bound for the verifier: 1..=CHUNK_SIZE.
    let len = (len.wrapping_sub(1) & (CHUNK_SIZE as u32 - 1)) + 1;
    // SAFETY: `len` <= CHUNK_SIZE = size of `data`; the helper fails on a bad user pointer.
    let ret = unsafe {
        bpf_probe_read_user(
            event.data.as_mut_ptr().cast(),
            len,
            src as *const core::ffi::c_void,
        )
    };
    if ret < 0 {
        return false;
    }
    output_packed(event, len, offset, last);
    true
}

/// One contiguous buffer: up to MAX_CHUNKS records.
#[inline(always)]
fn emit_buffer(event: &mut sonde_common::DataEvent, base: u64, captured: u32) {
    for i in 0..MAX_CHUNKS {
        let offset = i * CHUNK_SIZE as u32;
        if offset >= captured {
            break;
        }
        let remaining = captured - offset;
        let len = if remaining > CHUNK_SIZE as u32 {
            CHUNK_SIZE as u32
        } else {
            remaining
        };
        if !emit_chunk(
            event,
            base + offset as u64,
            len,
            offset,
            remaining <= CHUNK_SIZE as u32,
        ) {
            break;
        }
    }
}

/// An iovec array: each iovec's first CHUNK_SIZE bytes, in order, stopping at the first iovec
/// that is not copied whole so that uncaptured bytes are only ever at the end (userspace
/// counts them as lost after the last record). Consecutive iovecs are packed into one record
/// while they fit in a chunk: a server's head and small body written by one `writev` (nginx)
/// then cost the daemon one record, not one per iovec.
#[inline(always)]
fn emit_iovecs(scratch: &mut DataScratch, iov_ptr: u64, iov_count: u64, captured: u32) {
    // Bytes of the transfer already sent in records, and bytes packed in the open record.
    let mut offset: u32 = 0;
    let mut fill: u32 = 0;
    for j in 0..MAX_IOVECS {
        if j as u64 >= iov_count || offset + fill >= captured {
            break;
        }
        let Some(iov) = read_user::<IoVec>(iov_ptr + j as u64 * 16) else {
            break;
        };
        if iov.len == 0 {
            continue;
        }
        let remaining = captured - offset - fill;
        let mut len = if iov.len > CHUNK_SIZE as u64 {
            CHUNK_SIZE as u32
        } else {
            iov.len as u32
        };
        if len > remaining {
            len = remaining;
        }
        if fill > 0 && fill + len > CHUNK_SIZE as u32 {
            output_packed(&mut scratch.event, fill, offset, false);
            offset += fill;
            fill = 0;
        }
        if !copy_packed(scratch, fill, iov.base, len) {
            break;
        }
        fill += len;
        let whole = len as u64 == iov.len;
        let last =
            !whole || offset + fill >= captured || j as u64 + 1 >= iov_count || j + 1 >= MAX_IOVECS;
        if last {
            output_packed(&mut scratch.event, fill, offset, true);
            return;
        }
    }
    // A copy failed (or only empty iovecs followed): what was packed still goes out, last.
    if fill > 0 {
        output_packed(&mut scratch.event, fill, offset, true);
    }
}

/// Copies `len` (1..=CHUNK_SIZE after masking) user bytes to the record's payload at `at`
/// (below CHUNK_SIZE after masking; the scratch's spill keeps the copy in bounds).
#[inline(always)]
fn copy_packed(scratch: &mut DataScratch, at: u32, src: u64, len: u32) -> bool {
    let at = (at & (CHUNK_SIZE as u32 - 1)) as usize;
    let len = (len.wrapping_sub(1) & (CHUNK_SIZE as u32 - 1)) + 1;
    let base: *mut u8 = scratch.event.data.as_mut_ptr();
    // SAFETY: `at` < CHUNK_SIZE and `len` <= CHUNK_SIZE, and `spill` (CHUNK_SIZE bytes)
    // follows `data` in the same #[repr(C)] value; the helper fails on a bad user pointer.
    let ret =
        unsafe { bpf_probe_read_user(base.add(at).cast(), len, src as *const core::ffi::c_void) };
    ret >= 0
}

/// Outputs the record packed so far: `len` (1..=CHUNK_SIZE after masking) payload bytes
/// starting at byte `offset` of the transfer.
#[inline(always)]
fn output_packed(event: &mut sonde_common::DataEvent, len: u32, offset: u32, last: bool) {
    let len = (len.wrapping_sub(1) & (CHUNK_SIZE as u32 - 1)) + 1;
    event.offset = offset;
    event.len = len;
    event.flags =
        (event.flags & sonde_common::DATA_FLAG_TLS) | if last { DATA_FLAG_LAST_CHUNK } else { 0 };
    output_raw(
        (event as *const sonde_common::DataEvent).cast(),
        DATA_HEADER_SIZE as u64 + len as u64,
    );
}

macro_rules! data_syscall {
    ($enter:ident, $exit:ident, $buf:expr, $dir:expr) => {
        #[tracepoint]
        pub fn $enter(ctx: TracePointContext) -> u32 {
            if noop() {
                return 0;
            }
            enter_data(&ctx, $buf, $dir)
        }
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            if noop() {
                return 0;
            }
            exit_data(&ctx)
        }
    };
}

data_syscall!(sys_enter_read, sys_exit_read, BUF_PLAIN, direction::INGRESS);
data_syscall!(
    sys_enter_recvfrom,
    sys_exit_recvfrom,
    BUF_PLAIN,
    direction::INGRESS
);
data_syscall!(
    sys_enter_readv,
    sys_exit_readv,
    BUF_IOVEC,
    direction::INGRESS
);
data_syscall!(
    sys_enter_recvmsg,
    sys_exit_recvmsg,
    BUF_MSGHDR,
    direction::INGRESS
);
data_syscall!(
    sys_enter_write,
    sys_exit_write,
    BUF_PLAIN,
    direction::EGRESS
);
data_syscall!(
    sys_enter_sendto,
    sys_exit_sendto,
    BUF_PLAIN,
    direction::EGRESS
);
data_syscall!(
    sys_enter_writev,
    sys_exit_writev,
    BUF_IOVEC,
    direction::EGRESS
);
data_syscall!(
    sys_enter_sendmsg,
    sys_exit_sendmsg,
    BUF_MSGHDR,
    direction::EGRESS
);

/// sendfile(out_fd, in_fd, ...): the bytes come from a file, so only their count is reported.
#[tracepoint]
pub fn sys_enter_sendfile64(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    enter_data(&ctx, BUF_NONE, direction::EGRESS)
}

#[tracepoint]
pub fn sys_exit_sendfile64(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    exit_data(&ctx)
}

/// With a pid filter, children forked by a traced process are traced too (gunicorn workers
/// forked after sonde started, for example).
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    if noop() || config().filter_pids == 0 {
        return 0;
    }
    let parent = (pid_tgid() >> 32) as u32;
    // SAFETY: read-only lookup.
    if unsafe { TRACED_PIDS.get(&parent) }.is_none() {
        return 0;
    }
    let child: u32 = arg(&ctx, 20).unwrap_or(0);
    if child != 0 {
        let _ = TRACED_PIDS.insert(&child, &1, 0);
    }
    0
}

// ---------------------------------------------------------------- dup

const F_DUPFD: u64 = 0;
const F_DUPFD_CLOEXEC: u64 = 1030;

/// Threads in a dup-family syscall on a traced socket: pid_tgid -> old fd.
#[map]
static DUP_ARGS: HashMap<u64, i32> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
fn enter_dup(old_fd: i32) -> u32 {
    let id = pid_tgid();
    // SAFETY: read-only lookup.
    if unsafe { SOCKETS.get(&socket_key((id >> 32) as u32, old_fd as u32)) }.is_some() {
        let _ = DUP_ARGS.insert(&id, &old_fd, 0);
    }
    0
}

#[tracepoint]
pub fn sys_enter_dup(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    enter_dup(arg::<i64>(&ctx, ARG0).unwrap_or(-1) as i32)
}

#[tracepoint]
pub fn sys_enter_fcntl(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let cmd = arg::<u64>(&ctx, ARG1).unwrap_or(u64::MAX);
    if cmd != F_DUPFD && cmd != F_DUPFD_CLOEXEC {
        return 0;
    }
    enter_dup(arg::<i64>(&ctx, ARG0).unwrap_or(-1) as i32)
}

/// Exit of dup, dup2, dup3 and fcntl: the new fd names the same socket.
#[tracepoint]
pub fn sys_exit_dup(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let id = pid_tgid();
    // SAFETY: copy out before removing.
    let Some(old_fd) = (unsafe { DUP_ARGS.get(&id) }).copied() else {
        return 0;
    };
    let _ = DUP_ARGS.remove(&id);
    let ret = arg::<i64>(&ctx, RET).unwrap_or(-1);
    if ret < 0 || ret as i32 == old_fd {
        return 0;
    }
    let pid = (id >> 32) as u32;
    // SAFETY: copy out of the map.
    let Some(state) = (unsafe { SOCKETS.get(&socket_key(pid, old_fd as u32)) }).copied() else {
        return 0;
    };
    let _ = SOCKETS.insert(&socket_key(pid, ret as u32), &state, 0);
    output(&DupEvent {
        hdr: header(kind::DUP, id, ret as i32),
        old_fd,
        _pad: 0,
    });
    0
}
