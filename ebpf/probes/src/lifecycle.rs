//! Process lifecycle for the metrics: exec, fork, exit with its exit code or fatal signal,
//! and OOM kills, from scheduler/signal/oom tracepoints, into the `HEALTH` ring buffer (not
//! `EVENTS`: these records are few and never on the data path). Only processes the daemon
//! may trace are reported (`process_wanted`).
use aya_ebpf::{
    macros::{map, tracepoint},
    maps::{LruHashMap, RingBuf},
    programs::TracePointContext,
};
use sonde_common::{HealthEvent, health_flags, health_kind};

use crate::maps::{noop, now_ns, pid_tgid, process_wanted};

/// Lifecycle and TCP health records for the daemon's metrics.
#[map]
pub static HEALTH: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// exit_group's code per process, until its exit is reported.
#[map]
static EXIT_CODES: LruHashMap<u32, i32> = LruHashMap::with_max_entries(8192, 0);

/// Last fatal-by-default signal delivered to a process, until its exit is reported.
#[map]
static FATAL_SIGNALS: LruHashMap<u32, i32> = LruHashMap::with_max_entries(8192, 0);

#[inline(always)]
fn arg<T>(ctx: &TracePointContext, offset: usize) -> Option<T> {
    // SAFETY: offsets come from the tracepoint format; read_at checks via the helper.
    unsafe { ctx.read_at::<T>(offset) }.ok()
}

/// `BPF_RB_NO_WAKEUP`: nothing sleeps on this ring (the capture loop drains it on each pass
/// of the events ring), so a wake-up would only cost an irq_work.
const BPF_RB_NO_WAKEUP: u64 = 1;

#[inline(always)]
pub fn emit(ev: &HealthEvent) {
    let _ = HEALTH.output::<HealthEvent>(ev, BPF_RB_NO_WAKEUP);
}

#[inline(always)]
fn event(kind: u32, pid: u32) -> HealthEvent {
    HealthEvent {
        kind,
        pid,
        ts_ns: now_ns(),
        ..Default::default()
    }
}

#[tracepoint]
pub fn lc_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = (pid_tgid() >> 32) as u32;
    if noop() || !process_wanted(tgid) {
        return 0;
    }
    emit(&event(health_kind::EXEC, tgid));
    0
}

#[tracepoint]
pub fn lc_process_fork(ctx: TracePointContext) -> u32 {
    let parent = (pid_tgid() >> 32) as u32;
    // Thread creation fires this too: only new processes (child pid == its tgid) count, and
    // the child's tgid is not readable here, so userspace checks /proc.
    if noop() || !process_wanted(parent) {
        return 0;
    }
    let child: i32 = arg(&ctx, 20).unwrap_or(0);
    let mut ev = event(health_kind::FORK, parent);
    ev.other = child as u32;
    emit(&ev);
    0
}

#[tracepoint]
pub fn lc_exit_group(ctx: TracePointContext) -> u32 {
    let tgid = (pid_tgid() >> 32) as u32;
    if noop() || !process_wanted(tgid) {
        return 0;
    }
    let code: u64 = arg(&ctx, 16).unwrap_or(0);
    let _ = EXIT_CODES.insert(&tgid, &((code & 0xff) as i32), 0);
    0
}

#[tracepoint]
pub fn lc_signal_generate(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let sig: i32 = arg(&ctx, 8).unwrap_or(0);
    let target: i32 = arg(&ctx, 36).unwrap_or(0);
    let result: i32 = arg(&ctx, 44).unwrap_or(1);
    // Signals whose default action ends the process; result 0 = delivered.
    let fatal = matches!(
        sig,
        1 | 2 | 3 | 4 | 6 | 7 | 8 | 9 | 11 | 13 | 14 | 15 | 24 | 25
    );
    if result != 0 || !fatal || target <= 0 || !process_wanted(target as u32) {
        return 0;
    }
    let _ = FATAL_SIGNALS.insert(&(target as u32), &sig, 0);
    0
}

#[tracepoint]
pub fn lc_process_exit(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let group_dead: u8 = arg(&ctx, 32).unwrap_or(0);
    let tgid = (pid_tgid() >> 32) as u32;
    if group_dead == 0 || !process_wanted(tgid) {
        return 0;
    }
    let mut ev = event(health_kind::EXIT, tgid);
    // SAFETY: read-only lookups of plain values.
    if let Some(code) = unsafe { EXIT_CODES.get(&tgid) } {
        ev.code = *code;
        ev.flags |= health_flags::HAS_CODE;
    } else if let Some(sig) = unsafe { FATAL_SIGNALS.get(&tgid) } {
        ev.signal = *sig;
        ev.flags |= health_flags::HAS_SIGNAL;
    }
    let _ = EXIT_CODES.remove(&tgid);
    let _ = FATAL_SIGNALS.remove(&tgid);
    emit(&ev);
    0
}

#[tracepoint]
pub fn lc_oom_mark_victim(ctx: TracePointContext) -> u32 {
    if noop() {
        return 0;
    }
    let victim: i32 = arg(&ctx, 8).unwrap_or(0);
    if victim <= 0 || !process_wanted(victim as u32) {
        return 0;
    }
    emit(&event(health_kind::OOM_KILL, victim as u32));
    0
}
