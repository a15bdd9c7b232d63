//! Loads the kernel programs, attaches every tracepoint, and hands out the maps the daemon
//! drives (ring buffer, socket table, pid filter, lost-record counters).
//!
//! Every failure says what is wrong and what to do about it: not root, tracefs missing,
//! a kernel too old for ring buffers, a tracepoint that will not attach.
use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use sonde_common::{AcceptArgs, DataArgs, ProbeConfig, SocketState, names};

static PROBES_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sonde-probes"));

/// (program name, tracepoint category, tracepoint name). Programs named after their syscall
/// tracepoint; the accept family shares one pair of programs for accept and accept4, the dup
/// family one exit program.
const ATTACHMENTS: &[(&str, &str, &str)] = &[
    ("sys_enter_dup", "syscalls", "sys_enter_dup"),
    ("sys_enter_dup", "syscalls", "sys_enter_dup2"),
    ("sys_enter_dup", "syscalls", "sys_enter_dup3"),
    ("sys_enter_fcntl", "syscalls", "sys_enter_fcntl"),
    ("sys_exit_dup", "syscalls", "sys_exit_dup"),
    ("sys_exit_dup", "syscalls", "sys_exit_dup2"),
    ("sys_exit_dup", "syscalls", "sys_exit_dup3"),
    ("sys_exit_dup", "syscalls", "sys_exit_fcntl"),
    ("sys_enter_accept", "syscalls", "sys_enter_accept"),
    ("sys_enter_accept", "syscalls", "sys_enter_accept4"),
    ("sys_exit_accept", "syscalls", "sys_exit_accept"),
    ("sys_exit_accept", "syscalls", "sys_exit_accept4"),
    ("sys_enter_connect", "syscalls", "sys_enter_connect"),
    ("sys_exit_connect", "syscalls", "sys_exit_connect"),
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
    ("sys_enter_close", "syscalls", "sys_enter_close"),
    ("sched_process_exit", "sched", "sched_process_exit"),
    ("sched_process_fork", "sched", "sched_process_fork"),
    ("sys_enter_read", "syscalls", "sys_enter_read"),
    ("sys_exit_read", "syscalls", "sys_exit_read"),
    ("sys_enter_recvfrom", "syscalls", "sys_enter_recvfrom"),
    ("sys_exit_recvfrom", "syscalls", "sys_exit_recvfrom"),
    ("sys_enter_readv", "syscalls", "sys_enter_readv"),
    ("sys_exit_readv", "syscalls", "sys_exit_readv"),
    ("sys_enter_recvmsg", "syscalls", "sys_enter_recvmsg"),
    ("sys_exit_recvmsg", "syscalls", "sys_exit_recvmsg"),
    ("sys_enter_write", "syscalls", "sys_enter_write"),
    ("sys_exit_write", "syscalls", "sys_exit_write"),
    ("sys_enter_sendto", "syscalls", "sys_enter_sendto"),
    ("sys_exit_sendto", "syscalls", "sys_exit_sendto"),
    ("sys_enter_writev", "syscalls", "sys_enter_writev"),
    ("sys_exit_writev", "syscalls", "sys_exit_writev"),
    ("sys_enter_sendmsg", "syscalls", "sys_enter_sendmsg"),
    ("sys_exit_sendmsg", "syscalls", "sys_exit_sendmsg"),
    ("sys_enter_sendfile64", "syscalls", "sys_enter_sendfile64"),
    ("sys_exit_sendfile64", "syscalls", "sys_exit_sendfile64"),
];

/// Process lifecycle and TCP health for the metrics (ebpf/probes lifecycle.rs, tcp_health.rs).
const HEALTH_ATTACHMENTS: &[(&str, &str, &str)] = &[
    ("lc_process_exec", "sched", "sched_process_exec"),
    ("lc_process_fork", "sched", "sched_process_fork"),
    ("lc_process_exit", "sched", "sched_process_exit"),
    ("lc_exit_group", "syscalls", "sys_enter_exit_group"),
    ("lc_signal_generate", "signal", "signal_generate"),
    ("lc_oom_mark_victim", "oom", "mark_victim"),
    ("tcp_sock_set_state", "sock", "inet_sock_set_state"),
    ("tcp_retransmit", "tcp", "tcp_retransmit_skb"),
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
];

/// Tracepoints some architectures lack.
const OPTIONAL: &[&str] = &[
    "sys_enter_dup2",
    "sys_exit_dup2",
    "sys_enter_accept",
    "sys_exit_accept",
];

const TRACEFS: &str = "/sys/kernel/tracing";

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "sonde needs root or CAP_BPF and CAP_PERFMON to load eBPF programs and lacks {0}; \
         run it as root (privileged) or grant the missing capabilities (plus CAP_SYS_ADMIN to \
         mount tracefs)"
    )]
    NotPrivileged(String),
    #[error(
        "tracefs is not mounted at {TRACEFS} and mounting it failed ({0}); mount it with \
         `mount -t tracefs tracefs {TRACEFS}` (in Kubernetes: mount the host's /sys/kernel/tracing)"
    )]
    NoTracefs(std::io::Error),
    #[error(
        "tracefs is mounted at {TRACEFS} but sonde may not read it ({0}); its directory is \
         usually mode 0700: grant CAP_DAC_READ_SEARCH (besides CAP_BPF and CAP_PERFMON) or run as root"
    )]
    TracefsUnreadable(std::io::Error),
    #[error("this kernel ({0}) is too old: sonde needs Linux 5.8 or newer (BPF ring buffer)")]
    KernelTooOld(String),
    #[error("loading the eBPF programs failed: {0}")]
    Load(Box<aya::EbpfError>),
    #[error("eBPF program {program} is missing from the object")]
    MissingProgram { program: String },
    #[error("could not load eBPF program {program}: {source}")]
    Verify {
        program: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("could not attach to tracepoint {category}:{name}: {source}")]
    Attach {
        category: String,
        name: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {0}: {1}")]
    Map(&'static str, String),
}

pub struct ProbeSettings {
    pub self_pid: u32,
    pub filter_pids: bool,
    pub capture_bytes: u32,
    pub postgres_capture_bytes: u32,
    pub ring_buffer_bytes: u32,
    pub wakeup_bytes: u32,
    /// Attach programs that return at once (benchmark baseline).
    pub noop: bool,
}

pub struct Probes {
    /// Process lifecycle and TCP health records (`sonde_common::HealthEvent`).
    pub health: RingBuf<MapData>,
    /// Keeps the programs and their links alive; the TLS uprobes are attached later, per
    /// library (`capture/tls.rs`).
    pub ebpf: Ebpf,
    pub events: RingBuf<MapData>,
    pub sockets: BpfHashMap<MapData, u64, SocketState>,
    pub traced_pids: BpfHashMap<MapData, u32, u8>,
    pub lost: PerCpuArray<MapData, u64>,
    pub data_args: BpfHashMap<MapData, u64, DataArgs>,
    pub accept_args: BpfHashMap<MapData, u64, AcceptArgs>,
    /// "category:name" of every attached tracepoint, for the startup summary.
    pub attached: Vec<String>,
}

/// Mounts tracefs if it is missing (needs CAP_SYS_ADMIN); aya attaches tracepoints through it.
pub fn ensure_tracefs() -> Result<(), LoadError> {
    match std::fs::metadata(Path::new(TRACEFS).join("events")) {
        Ok(m) if m.is_dir() => return Ok(()),
        // Mounted but mode 0700 and this process lacks CAP_DAC_READ_SEARCH: mounting again
        // would fail with a misleading "not mounted".
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied || tracefs_mounted() => {
            return Err(LoadError::TracefsUnreadable(e));
        }
        _ => {}
    }
    let src = c"tracefs";
    let target = c"/sys/kernel/tracing";
    // SAFETY: constant NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(LoadError::NoTracefs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Whether /proc/self/mountinfo lists a tracefs at [`TRACEFS`].
fn tracefs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(4) == Some(TRACEFS) && l.contains(" - tracefs "))
    })
}

fn check_kernel() -> Result<(), LoadError> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .trim()
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (5, 8) {
        return Err(LoadError::KernelTooOld(release.trim().to_owned()));
    }
    Ok(())
}

/// Capabilities by bit number (linux/capability.h).
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;
const CAP_CHECKPOINT_RESTORE: u32 = 40;

/// The capabilities missing from an effective set: those without which the probes cannot
/// load (CAP_SYS_ADMIN stands in for both), and those without which some processes cannot be
/// read (their executables, environment, TLS libraries).
fn missing_capabilities(effective: u64) -> (Vec<&'static str>, Vec<&'static str>) {
    let has = |bit: u32| effective & (1u64 << bit) != 0;
    let mut fatal = Vec::new();
    if !has(CAP_SYS_ADMIN) {
        for (bit, name) in [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")] {
            if !has(bit) {
                fatal.push(name);
            }
        }
    }
    let degraded = [
        (CAP_SYS_PTRACE, "CAP_SYS_PTRACE"),
        (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH"),
        (CAP_CHECKPOINT_RESTORE, "CAP_CHECKPOINT_RESTORE"),
    ]
    .into_iter()
    .filter(|(bit, _)| !has(*bit))
    .map(|(_, name)| name)
    .collect();
    (fatal, degraded)
}

/// Checks the effective capabilities (root in a container may lack some): names each missing
/// one, fails without those the probes need.
fn check_privileges() -> Result<(), LoadError> {
    let Some(caps) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
    else {
        // No /proc to tell: let the kernel decide when loading.
        return Ok(());
    };
    let (fatal, degraded) = missing_capabilities(caps);
    if !fatal.is_empty() {
        return Err(LoadError::NotPrivileged(fatal.join(", ")));
    }
    if !degraded.is_empty() {
        eprintln!(
            "sonde: warning: missing {}: processes of other users may lack their executable, \
             environment (OTEL_SERVICE_NAME) or TLS libraries",
            degraded.join(", ")
        );
    }
    Ok(())
}

/// The size the events ring buffer gets for `--ring-buffer-bytes`: the kernel wants a power
/// of two, at least a page (the flag's range keeps the rounding below 2 GiB).
pub fn ring_size(requested: u32) -> u32 {
    requested
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
        .max(4096)
}

pub fn load(settings: &ProbeSettings) -> Result<Probes, LoadError> {
    check_privileges()?;
    check_kernel()?;
    ensure_tracefs()?;
    // Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK.
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: valid pointer to a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK; fine on kernels >= 5.11");
    }

    let config = ProbeConfig {
        self_pid: settings.self_pid,
        filter_pids: u32::from(settings.filter_pids),
        capture_bytes: settings.capture_bytes.min(sonde_common::MAX_CAPTURE_BYTES),
        wakeup_bytes: settings.wakeup_bytes,
        flags: if settings.noop {
            sonde_common::probe_flags::NOOP
        } else {
            0
        },
        postgres_capture_bytes: settings
            .postgres_capture_bytes
            .min(sonde_common::MAX_CAPTURE_BYTES),
    };
    let mut ebpf = EbpfLoader::new()
        .override_global(names::SONDE_CONFIG, &config, true)
        .map_max_entries(names::EVENTS, ring_size(settings.ring_buffer_bytes))
        .load(PROBES_OBJECT)
        .map_err(|e| LoadError::Load(Box::new(e)))?;

    let mut loaded = std::collections::HashSet::new();
    let mut attached = Vec::new();
    for &(program, category, name) in ATTACHMENTS.iter().chain(HEALTH_ATTACHMENTS) {
        let tp: &mut TracePoint = ebpf
            .program_mut(program)
            .ok_or_else(|| LoadError::MissingProgram {
                program: program.to_owned(),
            })?
            .try_into()
            .map_err(|source| LoadError::Verify {
                program: program.to_owned(),
                source: Box::new(source),
            })?;
        if loaded.insert(program) {
            tp.load().map_err(|source| LoadError::Verify {
                program: program.to_owned(),
                source: Box::new(source),
            })?;
        }
        // Syscalls an architecture does not have (dup2 on arm64) are skipped, not fatal.
        if OPTIONAL.contains(&name)
            && !Path::new(TRACEFS)
                .join("events")
                .join(category)
                .join(name)
                .exists()
        {
            tracing::info!("tracepoint {category}:{name} does not exist on this kernel; skipped");
            continue;
        }
        tp.attach(category, name)
            .map_err(|source| LoadError::Attach {
                category: category.to_owned(),
                name: name.to_owned(),
                source: Box::new(source),
            })?;
        attached.push(format!("{category}:{name}"));
    }

    crate::capture::tls::load_programs(&mut ebpf)?;

    let take = |ebpf: &mut Ebpf, name: &'static str| {
        ebpf.take_map(name)
            .ok_or(LoadError::Map(name, "missing from the object".into()))
    };
    let events = RingBuf::try_from(take(&mut ebpf, names::EVENTS)?)
        .map_err(|e| LoadError::Map(names::EVENTS, e.to_string()))?;
    let sockets = BpfHashMap::try_from(take(&mut ebpf, names::SOCKETS)?)
        .map_err(|e| LoadError::Map(names::SOCKETS, e.to_string()))?;
    let traced_pids = BpfHashMap::try_from(take(&mut ebpf, names::TRACED_PIDS)?)
        .map_err(|e| LoadError::Map(names::TRACED_PIDS, e.to_string()))?;
    let lost = PerCpuArray::try_from(take(&mut ebpf, names::LOST)?)
        .map_err(|e| LoadError::Map(names::LOST, e.to_string()))?;
    let data_args = BpfHashMap::try_from(take(&mut ebpf, names::DATA_ARGS)?)
        .map_err(|e| LoadError::Map(names::DATA_ARGS, e.to_string()))?;
    let accept_args = BpfHashMap::try_from(take(&mut ebpf, names::ACCEPT_ARGS)?)
        .map_err(|e| LoadError::Map(names::ACCEPT_ARGS, e.to_string()))?;
    let health = RingBuf::try_from(take(&mut ebpf, names::HEALTH)?)
        .map_err(|e| LoadError::Map(names::HEALTH, e.to_string()))?;
    Ok(Probes {
        ebpf,
        events,
        health,
        sockets,
        traced_pids,
        lost,
        data_args,
        accept_args,
        attached,
    })
}

impl Probes {
    /// Records the ring buffer had no room for, per CPU.
    pub fn lost_per_cpu(&self) -> Vec<u64> {
        self.lost
            .get(&0, 0)
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_size_is_a_power_of_two_of_at_least_a_page() {
        assert_eq!(ring_size(16 * 1024 * 1024), 16 * 1024 * 1024);
        assert_eq!(ring_size(3 * 1024 * 1024), 4 * 1024 * 1024);
        assert_eq!(ring_size(0), 4096);
        assert_eq!(ring_size(100), 4096);
        assert_eq!(ring_size(u32::MAX), 1 << 31);
    }

    #[test]
    fn missing_capabilities_are_named() {
        let least = [2u32, 19, 38, 39, 40]
            .iter()
            .fold(0u64, |a, b| a | (1 << b));
        assert_eq!(missing_capabilities(least), (vec![], vec![]));
        assert_eq!(missing_capabilities(least & !(1 << 39)).0, vec!["CAP_BPF"]);
        assert_eq!(
            missing_capabilities(least & !(1 << 40)).1,
            vec!["CAP_CHECKPOINT_RESTORE"]
        );
        assert_eq!(missing_capabilities(1 << 21).0, Vec::<&str>::new());
        assert_eq!(missing_capabilities(0).0, vec!["CAP_BPF", "CAP_PERFMON"]);
    }

    /// The names the loader opens and attaches exist in the object the build embedded.
    #[test]
    fn every_map_global_and_program_is_in_the_built_object() {
        use object::{Object, ObjectSymbol};
        let file = object::File::parse(PROBES_OBJECT).expect("the embedded object is ELF");
        let symbols: std::collections::HashSet<&str> =
            file.symbols().filter_map(|s| s.name().ok()).collect();
        let mut missing: Vec<&str> = names::MAPS
            .iter()
            .chain([&names::SONDE_CONFIG])
            .copied()
            .chain(ATTACHMENTS.iter().map(|(program, _, _)| *program))
            .filter(|n| !symbols.contains(n))
            .collect();
        missing.dedup();
        assert!(missing.is_empty(), "not in the probes object: {missing:?}");
    }
}
