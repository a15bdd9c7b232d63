//! TCP health for the metrics: retransmits, resets sent and received, and failed connects
//! (`SYN_SENT -> CLOSE`), into the `HEALTH` ring buffer. These tracepoints often run in
//! softirq context where the current task is not the socket's owner, so the owner of each
//! client socket is remembered when it connects (process context) and looked up by the
//! socket's address; otherwise the record carries pid 0 and the local port, and the daemon
//! attributes it to the process listening there.
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::LruHashMap,
    programs::TracePointContext,
};
use sonde_common::{HealthEvent, health_kind};

use crate::{
    lifecycle::emit,
    maps::{config, noop, now_ns, pid_tgid, process_wanted},
};

const AF_INET: u16 = 2;
const IPPROTO_TCP: u16 = 6;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

/// Client socket (`struct sock *`) -> owning process, from its connect.
#[map]
static SOCK_OWNER: LruHashMap<u64, u32> = LruHashMap::with_max_entries(16384, 0);

#[inline(always)]
fn arg<T>(ctx: &TracePointContext, offset: usize) -> Option<T> {
    // SAFETY: offsets come from the tracepoint format; read_at checks via the helper.
    unsafe { ctx.read_at::<T>(offset) }.ok()
}

#[inline(always)]
fn owner(skaddr: u64) -> u32 {
    // SAFETY: read-only lookup of a plain value.
    unsafe { SOCK_OWNER.get(&skaddr) }.copied().unwrap_or(0)
}

/// Whether a record attributed to `pid` (0: unknown yet) should go out.
#[inline(always)]
fn wanted(pid: u32) -> bool {
    if pid == 0 {
        // Userspace attributes it by port, and drops what it cannot.
        return true;
    }
    pid != config().self_pid && process_wanted(pid)
}

/// An address field pair (v4 at `v4`, v6 at `v6`) as IPv4-mapped IPv6.
#[inline(always)]
fn addr(ctx: &TracePointContext, family: u16, v4: usize, v6: usize) -> [u8; 16] {
    if family == AF_INET {
        let a: [u8; 4] = arg(ctx, v4).unwrap_or([0; 4]);
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    } else {
        arg(ctx, v6).unwrap_or([0; 16])
    }
}

#[tracepoint]
pub fn tcp_sock_set_state(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let protocol: u16 = arg(&ctx, 30).unwrap_or(0);
    if protocol != IPPROTO_TCP {
        return 0;
    }
    let skaddr: u64 = arg(&ctx, 8).unwrap_or(0);
    let old: i32 = arg(&ctx, 16).unwrap_or(0);
    let new: i32 = arg(&ctx, 20).unwrap_or(0);
    if old == TCP_CLOSE && new == TCP_SYN_SENT {
        // connect(): process context.
        let tgid = (pid_tgid() >> 32) as u32;
        if process_wanted(tgid) {
            let _ = SOCK_OWNER.insert(&skaddr, &tgid, 0);
        }
        return 0;
    }
    if new != TCP_CLOSE {
        return 0;
    }
    let pid = owner(skaddr);
    let _ = SOCK_OWNER.remove(&skaddr);
    if old != TCP_SYN_SENT || pid == 0 {
        return 0;
    }
    let family: u16 = arg(&ctx, 28).unwrap_or(0);
    let ev = HealthEvent {
        kind: health_kind::CONNECT_FAILED,
        pid,
        ts_ns: now_ns(),
        sport: arg(&ctx, 24).unwrap_or(0),
        dport: arg(&ctx, 26).unwrap_or(0),
        daddr: addr(&ctx, family, 36, 56),
        ..Default::default()
    };
    emit(&ev);
    0
}

#[tracepoint]
pub fn tcp_retransmit(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let skaddr: u64 = arg(&ctx, 16).unwrap_or(0);
    let pid = owner(skaddr);
    if !wanted(pid) {
        return 0;
    }
    let family: u16 = arg(&ctx, 32).unwrap_or(0);
    emit(&HealthEvent {
        kind: health_kind::RETRANSMIT,
        pid,
        ts_ns: now_ns(),
        sport: arg(&ctx, 28).unwrap_or(0),
        dport: arg(&ctx, 30).unwrap_or(0),
        daddr: addr(&ctx, family, 38, 58),
        ..Default::default()
    });
    0
}

#[tracepoint]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let skaddr: u64 = arg(&ctx, 16).unwrap_or(0);
    let pid = owner(skaddr);
    if !wanted(pid) {
        return 0;
    }
    // saddr/daddr are a struct sockaddr_in or sockaddr_in6 (port big-endian at offset 2).
    let sport: u16 = u16::from_be(arg(&ctx, 32 + 2).unwrap_or(0));
    let dport: u16 = u16::from_be(arg(&ctx, 60 + 2).unwrap_or(0));
    let family: u16 = arg(&ctx, 60).unwrap_or(0);
    let daddr = if family == AF_INET {
        let a: [u8; 4] = arg(&ctx, 60 + 4).unwrap_or([0; 4]);
        [
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3],
        ]
    } else {
        arg(&ctx, 60 + 8).unwrap_or([0; 16])
    };
    emit(&HealthEvent {
        kind: health_kind::RESET_SENT,
        pid,
        ts_ns: now_ns(),
        sport,
        dport,
        daddr,
        ..Default::default()
    });
    0
}

#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let skaddr: u64 = arg(&ctx, 8).unwrap_or(0);
    let pid = owner(skaddr);
    if !wanted(pid) {
        return 0;
    }
    let family: u16 = arg(&ctx, 20).unwrap_or(0);
    emit(&HealthEvent {
        kind: health_kind::RESET_RECEIVED,
        pid,
        ts_ns: now_ns(),
        sport: arg(&ctx, 16).unwrap_or(0),
        dport: arg(&ctx, 18).unwrap_or(0),
        daddr: addr(&ctx, family, 26, 46),
        ..Default::default()
    });
    0
}
