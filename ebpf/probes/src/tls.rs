//! OpenSSL uprobes: plaintext of `SSL_read`/`SSL_write` (and the `_ex`/`_ex2` variants) as data
//! records flagged `DATA_FLAG_TLS`, on the socket the library used.
//!
//! The `SSL*` is tied to its socket without reading any OpenSSL struct (`ssl->rbio->num` moved
//! in 3.2 and 3.2.4, and libpq uses its own BIO): while a thread is inside `SSL_read` the read
//! syscalls it makes on a traced socket name the fd (writes inside `SSL_write` likewise; the
//! other direction is never learned, since renegotiation and key updates write inside reads).
//! The fd is remembered per (pid, `SSL*`) for calls OpenSSL serves from its buffer without a
//! syscall. Writes are emitted at their first nested write syscall (before the peer can read
//! them, which keeps cross-process parenting right), reads at the return. The ciphertext of those nested syscalls is not emitted at all (see
//! `syscalls::enter_data`); handshake ciphertext outside the hooked calls reaches userspace,
//! which recognises TLS records and drops them without untracking the socket.
use aya_ebpf::{
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, LruHashMap},
    programs::{ProbeContext, RetProbeContext},
};
use sonde_common::{DataArgs, MAX_CAPTURE_BYTES, buf_kind, data_flags, direction, socket_key};

use crate::{
    maps::{SOCKETS, config, noop, now_ns, pid_tgid, process_wanted},
    syscalls::emit_data,
};

/// Plain `SSL_read`/`SSL_write`: `int` return, the byte count (signed 32-bit).
const CALL_PLAIN: u32 = 0;
/// `SSL_read_ex`/`SSL_write_ex`/`SSL_write_ex2`: return 1 on success, count in `*len_ptr`.
const CALL_EX: u32 = 1;

/// An `SSL_*` call in flight on a thread (`pid_tgid`).
#[repr(C)]
#[derive(Clone, Copy)]
struct SslCall {
    ssl: u64,
    buf: u64,
    /// `size_t *` of the `_ex` variants (0 for the plain ones).
    len_ptr: u64,
    enter_ts_ns: u64,
    /// Bytes asked for (`num`).
    num: u64,
    /// Socket learned from a syscall inside this call (-1: none yet).
    fd: i32,
    direction: u32,
    kind: u32,
    /// Nested hooked calls on the same `SSL*` and buffer (`SSL_write_ex` -> `SSL_write_ex2`
    /// in OpenSSL 3.3+): only the outermost one emits.
    depth: u32,
    /// A write whose plaintext was already emitted at its first nested write syscall.
    emitted: u32,
    _pad: u32,
}

/// Plaintext of a write emitted before the call returned: `[start, end)` of the caller's
/// buffer. A retry after WANT_WRITE (same buffer) or the rest of a partial write (a suffix of
/// it) is not emitted again; a call that ends at `end` clears it.
#[repr(C)]
#[derive(Clone, Copy)]
struct WriteSpan {
    start: u64,
    end: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct SslKey {
    pid: u32,
    _pad: u32,
    ssl: u64,
}

#[map]
static SSL_CALLS: HashMap<u64, SslCall> = HashMap::with_max_entries(16384, 0);

/// Last socket seen under each (pid, `SSL*`). LRU: `SSL_free` is not hooked.
#[map]
static SSL_FDS: LruHashMap<SslKey, i32> = LruHashMap::with_max_entries(65536, 0);

#[map]
static PENDING_WRITES: LruHashMap<SslKey, WriteSpan> = LruHashMap::with_max_entries(16384, 0);

/// Called by the data syscall entry on a traced socket: inside a hooked `SSL_*` call of the
/// same direction, remember the fd and tell the caller to skip the ciphertext. The first write
/// inside `SSL_write` emits the plaintext right away (before the peer can read it, so a
/// server's request never reaches userspace before the client's), `capture` bytes at most.
#[inline(always)]
pub fn inside_ssl_call(id: u64, fd: i32, dir: u32, capture: u32) -> bool {
    let Some(call) = SSL_CALLS.get_ptr_mut(&id) else {
        return false;
    };
    // SAFETY: the entry belongs to this thread; nothing else writes it concurrently.
    let call = unsafe { &mut *call };
    if call.direction != dir {
        return false;
    }
    call.fd = fd;
    if dir == direction::EGRESS && call.emitted == 0 {
        call.emitted = 1;
        let key = SslKey {
            pid: (id >> 32) as u32,
            _pad: 0,
            ssl: call.ssl,
        };
        let _ = SSL_FDS.insert(&key, &fd, 0);
        if !covered_by_pending(&key, call.buf, call.num) {
            let span = WriteSpan {
                start: call.buf,
                end: call.buf.wrapping_add(call.num),
            };
            let _ = PENDING_WRITES.insert(&key, &span, 0);
            emit_plaintext(id, fd, call, capture, call.num);
        }
    }
    true
}

/// Whether `[buf, buf + num)` is the tail of a write already emitted.
#[inline(always)]
fn covered_by_pending(key: &SslKey, buf: u64, num: u64) -> bool {
    // SAFETY: read-only lookup of a plain value.
    match unsafe { PENDING_WRITES.get(key) } {
        Some(p) => buf >= p.start && buf.wrapping_add(num) == p.end,
        None => false,
    }
}

#[inline(always)]
fn emit_plaintext(id: u64, fd: i32, call: &SslCall, capture: u32, count: u64) {
    let args = DataArgs {
        fd,
        buf_kind: buf_kind::PLAIN,
        ptr: call.buf,
        iov_count: 0,
        direction: call.direction,
        capture_bytes: if capture > MAX_CAPTURE_BYTES {
            MAX_CAPTURE_BYTES
        } else {
            capture
        },
        enter_ts_ns: call.enter_ts_ns,
        flags: data_flags::TLS,
        _pad: 0,
    };
    emit_data(id, &args, count);
}

#[inline(always)]
fn enter(ctx: &ProbeContext, dir: u32, kind: u32, len_arg: usize) -> u32 {
    if noop() {
        return 0;
    }
    let id = pid_tgid();
    if !process_wanted((id >> 32) as u32) {
        return 0;
    }
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    if let Some(outer) = SSL_CALLS.get_ptr_mut(&id) {
        // SAFETY: this thread's entry.
        let outer = unsafe { &mut *outer };
        if outer.ssl == ssl && outer.buf == buf && outer.direction == dir {
            outer.depth += 1;
            return 0;
        }
        // Otherwise a stale entry (its return was never seen): replaced below.
    }
    let call = SslCall {
        ssl,
        buf,
        num: ctx.arg(2).unwrap_or(0),
        emitted: 0,
        _pad: 0,
        len_ptr: if kind == CALL_EX {
            ctx.arg(len_arg).unwrap_or(0)
        } else {
            0
        },
        enter_ts_ns: now_ns(),
        fd: -1,
        direction: dir,
        kind,
        depth: 0,
    };
    let _ = SSL_CALLS.insert(&id, &call, 0);
    0
}

#[inline(always)]
fn exit(ctx: &RetProbeContext) -> u32 {
    let id = pid_tgid();
    let Some(entry) = SSL_CALLS.get_ptr_mut(&id) else {
        return 0;
    };
    // SAFETY: this thread's entry.
    let entry = unsafe { &mut *entry };
    if entry.depth > 0 {
        entry.depth -= 1;
        return 0;
    }
    let call = *entry;
    let _ = SSL_CALLS.remove(&id);

    let ret: i64 = ctx.ret();
    let count: u64 = if call.kind == CALL_PLAIN {
        // `int`: keep it signed 32-bit (the upper half of rax is not part of the value).
        let n = ret as i32;
        if n <= 0 {
            return 0;
        }
        n as u64
    } else {
        if ret as i32 != 1 || call.len_ptr == 0 {
            return 0;
        }
        match read_user_u64(call.len_ptr) {
            Some(n) if n > 0 => n,
            _ => return 0,
        }
    };

    let pid = (id >> 32) as u32;
    let key = SslKey {
        pid,
        _pad: 0,
        ssl: call.ssl,
    };
    if call.direction == direction::EGRESS {
        let covered = covered_by_pending(&key, call.buf, call.num);
        // SAFETY: read-only lookup of a plain value.
        let pending_end = unsafe { PENDING_WRITES.get(&key) }.map(|p| p.end);
        if pending_end == Some(call.buf.wrapping_add(count)) {
            let _ = PENDING_WRITES.remove(&key);
        }
        if call.emitted != 0 || covered {
            // Emitted at its first write syscall (or by the call this one retries).
            return 0;
        }
    }
    let fd = if call.fd >= 0 {
        let _ = SSL_FDS.insert(&key, &call.fd, 0);
        call.fd
    } else {
        // Served from OpenSSL's buffer: the socket this SSL* used last.
        // SAFETY: read-only lookup of a plain value.
        match unsafe { SSL_FDS.get(&key) } {
            Some(fd) => *fd,
            None => return 0,
        }
    };
    // SAFETY: read-only lookup of a plain value.
    let Some(state) = (unsafe { SOCKETS.get(&socket_key(pid, fd as u32)) }).copied() else {
        return 0; // not (or no longer) a traced socket
    };
    let capture = if state.capture_bytes != 0 {
        state.capture_bytes
    } else {
        config().capture_bytes
    };
    emit_plaintext(id, fd, &call, capture, count);
    0
}

#[inline(always)]
fn read_user_u64(src: u64) -> Option<u64> {
    // SAFETY: the helper fails on a bad pointer.
    unsafe { aya_ebpf::helpers::bpf_probe_read_user(src as *const u64) }.ok()
}

#[uprobe]
pub fn ssl_read_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::INGRESS, CALL_PLAIN, 0)
}

#[uprobe]
pub fn ssl_write_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::EGRESS, CALL_PLAIN, 0)
}

/// `int SSL_read_ex(SSL *s, void *buf, size_t num, size_t *readbytes)`.
#[uprobe]
pub fn ssl_read_ex_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::INGRESS, CALL_EX, 3)
}

/// `int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::EGRESS, CALL_EX, 3)
}

/// `int SSL_write_ex2(SSL *s, const void *buf, size_t num, uint64_t flags, size_t *written)`.
#[uprobe]
pub fn ssl_write_ex2_enter(ctx: ProbeContext) -> u32 {
    enter(&ctx, direction::EGRESS, CALL_EX, 4)
}

/// Return of every hooked call: the thread's `SslCall` says which one it was.
#[uretprobe]
pub fn ssl_exit(ctx: RetProbeContext) -> u32 {
    exit(&ctx)
}
