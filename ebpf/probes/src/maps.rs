//! Maps and settings shared by every program, and the ring-buffer output helpers.
use aya_ebpf::{
    helpers::generated::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_ringbuf_output},
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use sonde_common::{DataEvent, ProbeConfig, SocketState};

/// Written by the daemon before load (aya `set_global`).
#[unsafe(no_mangle)]
pub static SONDE_CONFIG: ProbeConfig = ProbeConfig {
    self_pid: 0,
    filter_pids: 0,
    capture_bytes: 4096,
    wakeup_bytes: 256 * 1024,
    flags: 0,
    postgres_capture_bytes: 65536,
};

/// All records for the daemon. Size set by the daemon at load time.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Records the ring buffer had no room for, per CPU (index 0).
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Traced TCP sockets: `socket_key(pid, fd)` -> state. Filled here on accept/connect and by the
/// daemon for connections that existed before it started; the daemon deletes entries it does
/// not want traced.
#[map]
pub static SOCKETS: HashMap<u64, SocketState> = HashMap::with_max_entries(65536, 0);

/// Pids to trace when `filter_pids` is set.
#[map]
pub static TRACED_PIDS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// A data record being built, with room after its payload: small iovecs are packed into one
/// record at a variable position, and the verifier must see that a copy of up to
/// `CHUNK_SIZE` bytes from any position below `CHUNK_SIZE` stays inside the map value.
#[repr(C)]
pub struct DataScratch {
    pub event: DataEvent,
    pub spill: [u8; sonde_common::CHUNK_SIZE],
}

/// Per-CPU scratch for building a data record (too big for the 512-byte stack).
#[map]
pub static SCRATCH: PerCpuArray<DataScratch> = PerCpuArray::with_max_entries(1, 0);

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

#[inline(always)]
pub fn config() -> ProbeConfig {
    // SAFETY: the global lives in .rodata; volatile so the loader's value is read, not the default.
    unsafe { core::ptr::read_volatile(&SONDE_CONFIG) }
}

#[inline(always)]
pub fn pid_tgid() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_get_current_pid_tgid() }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Benchmark baseline mode: the programs do nothing.
#[inline(always)]
pub fn noop() -> bool {
    config().flags & sonde_common::probe_flags::NOOP != 0
}

/// Whether this process may be traced at all (not the daemon, and in the pid filter if set).
#[inline(always)]
pub fn process_wanted(tgid: u32) -> bool {
    let cfg = config();
    if tgid == cfg.self_pid {
        return false;
    }
    if cfg.filter_pids != 0 {
        // SAFETY: read-only lookup of a plain value.
        return unsafe { TRACED_PIDS.get(&tgid) }.is_some();
    }
    true
}

/// Force a wake-up only for the record that takes the queue across a multiple of
/// `wakeup_bytes` ([`sonde_common::forces_wakeup`]); otherwise the reader finds records on its
/// poll tick. Forcing one per record while the queue sat above the threshold cost nginx about
/// 1.4% of its time at max rate, 2.8% of all CPU when the reader lagged (perf:
/// `native_write_msr` under `bpf_ringbuf_output`). Those wake-ups also got the reader running
/// sooner, so its drains were shorter; the daemon now yields the CPU within a long drain
/// instead (`YIELD_EVERY_RECORDS` in `daemon.rs`), or the server's tail latency suffers.
#[inline(always)]
fn wakeup_flags(size: u64) -> u64 {
    let queued = EVENTS.query(BPF_RB_AVAIL_DATA);
    if sonde_common::forces_wakeup(queued, size, config().wakeup_bytes as u64) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn count_lost() {
    if let Some(counter) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU while we run.
        unsafe { *counter += 1 };
    }
}

/// Copy `size` bytes at `data` into the ring buffer.
#[inline(always)]
pub fn output_raw(data: *const u8, size: u64) {
    // SAFETY: `data` points to `size` readable bytes (stack or map value), checked by the verifier.
    let ret = unsafe {
        bpf_ringbuf_output(
            core::ptr::addr_of!(EVENTS).cast_mut().cast(),
            data.cast_mut().cast(),
            size,
            wakeup_flags(size),
        )
    };
    if ret < 0 {
        count_lost();
    }
}

/// Copy a fixed-size record into the ring buffer.
#[inline(always)]
pub fn output<T>(record: &T) {
    output_raw(
        (record as *const T).cast(),
        core::mem::size_of::<T>() as u64,
    );
}
