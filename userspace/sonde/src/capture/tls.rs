//! TLS plaintext capture: attaches the OpenSSL uprobes (`ebpf/probes/src/tls.rs`) to every
//! libssl and statically linked OpenSSL the traced processes use, once per file (device and
//! inode), and accounts for the TLS connections sonde cannot read.
//!
//! Discovery runs at startup (well-known system paths plus every process's maps), every
//! [`RESCAN_INTERVAL`] (Python and libpq load libssl late), for a process that just exec'd
//! (the lifecycle probe's `sched_process_exec` record: its maps are read at once and again
//! on the [`EXEC_SCAN_SCHEDULE`], since the dynamic loader and `import ssl` map libssl after
//! the exec), and at once for a process whose TLS handshake the tracer just saw without
//! knowing its library. Files inside containers
//! are reached through `/proc/<pid>/root`. A uprobe on a file fires in every process that
//! maps it, so a process started later with an already-attached library needs nothing.
//!
//! Return probes: uretprobes. On kernels with the uretprobe syscall (6.11+) those were
//! reported to kill seccomp-filtered processes; since "seccomp: passthrough uretprobe
//! systemcall without filtering" the kernel lets that syscall through every filter. The
//! end-to-end test `tls_uretprobes_spare_seccomp_filtered_processes` proves it on the kernel
//! it runs on: a process whose filter kills the uretprobe syscall makes HTTPS calls while the
//! probes are attached, survives, and its spans arrive.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    programs::{UProbe, uprobe::UProbeScope},
};
use procfs::FromRead;

use crate::{
    capture::loader::LoadError,
    discover::libssl::{self, ElfTls, SSL_SYMBOLS, Untraceable},
    tracer::TlsStart,
};

/// How often every traced process is looked at for newly loaded libssl copies: its maps are
/// re-read when its address-space size changed since the last read, or [`FULL_RESCAN_INTERVAL`]
/// after it.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// A process whose address-space size stayed the same still has its maps re-read this often:
/// a library mapped while another mapping of exactly its size went away would not show in the
/// size.
pub const FULL_RESCAN_INTERVAL: Duration = Duration::from_secs(30);

/// New executables read (for statically linked OpenSSL) per rescan: reading them is the
/// expensive part of discovery (debug builds weigh hundreds of MiB), so it is spread over
/// ticks and kept off the startup path.
pub const EXECUTABLES_PER_RESCAN: usize = 2;
/// Executables larger than this are not read during rescans (only when one of their TLS
/// connections has to be classified).
const MAX_RESCAN_EXECUTABLE_BYTES: u64 = 32 << 20;

/// When a process's maps are read after its exec, counted from when the daemon saw the exec:
/// densely at first (the dynamic loader maps `DT_NEEDED` libraries within milliseconds,
/// `import ssl` within tens to hundreds), then sparser; the periodic rescan takes over after.
pub const EXEC_SCAN_SCHEDULE: [Duration; 10] = [
    Duration::from_millis(0),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(75),
    Duration::from_millis(100),
    Duration::from_millis(150),
    Duration::from_millis(200),
    Duration::from_millis(300),
    Duration::from_millis(500),
    Duration::from_millis(800),
];
/// Exec-triggered map reads per tick at most (the others wait for the next tick), so an exec
/// storm costs bounded time per tick.
pub const EXEC_SCANS_PER_TICK: usize = 16;
/// Processes followed after their exec at most; execs beyond are left to the rescan.
const MAX_EXEC_WATCHED: usize = 2048;

/// Entry program per hooked symbol (same order as [`SSL_SYMBOLS`]).
const ENTRY_PROGRAMS: [(&str, &str); 5] = [
    ("ssl_read_enter", "SSL_read"),
    ("ssl_write_enter", "SSL_write"),
    ("ssl_read_ex_enter", "SSL_read_ex"),
    ("ssl_write_ex_enter", "SSL_write_ex"),
    ("ssl_write_ex2_enter", "SSL_write_ex2"),
];
/// The return program shared by every hooked symbol.
const RETURN_PROGRAM: &str = "ssl_exit";

/// System libssl locations attached at startup even if nothing maps them yet.
const SYSTEM_LIBSSL: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
    "/usr/lib/x86_64-linux-gnu/libssl.so.1.1",
    "/usr/lib/aarch64-linux-gnu/libssl.so.3",
    "/usr/lib/aarch64-linux-gnu/libssl.so.1.1",
    "/usr/lib64/libssl.so.3",
    "/usr/lib64/libssl.so.1.1",
    "/lib/libssl.so.3",
    "/usr/lib/libssl.so.3",
];

/// Loads the uprobe programs (attached later, per library). Called by the loader.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    let names = ENTRY_PROGRAMS
        .iter()
        .map(|(p, _)| *p)
        .chain([RETURN_PROGRAM]);
    for program in names {
        let verify = |source| LoadError::Verify {
            program: program.to_owned(),
            source: Box::new(source),
        };
        let p: &mut UProbe = ebpf
            .program_mut(program)
            .ok_or_else(|| LoadError::MissingProgram {
                program: program.to_owned(),
            })?
            .try_into()
            .map_err(verify)?;
        p.load().map_err(verify)?;
    }
    Ok(())
}

pub use sonde_core::tracer::{looks_like_tls_record, may_become_tls_record};

enum Inspected {
    Elf(Option<ElfTls>),
    /// Over this rescan's budget: read on a later tick (or on demand).
    Later,
}

/// What sonde knows about one process's TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProcessTls {
    /// OpenSSL found and hooked (shared or static).
    OpenSsl,
    Untraceable(Untraceable),
}

/// Counters for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct TlsStats {
    /// Files (libssl or executables) with the uprobes attached.
    pub files_attached: u64,
    /// Files whose attach failed (named in the log).
    pub attach_failures: u64,
    /// TLS connections sonde cannot read, by (executable, reason).
    pub untraceable: BTreeMap<(String, &'static str), u64>,
}

type FileKey = (u64, u64);

pub struct TlsAttacher {
    self_pid: u32,
    /// `--no-tls`: nothing is attached.
    enabled: bool,
    /// With a pid filter, uprobes fire only in those processes (`UProbeScope::OneProcess`):
    /// every other process using the same libssl pays no trap. Empty: all processes.
    scope_pids: Vec<u32>,
    attached: HashSet<FileKey>,
    failed: HashSet<FileKey>,
    /// Executables already inspected, by file.
    executables: HashMap<FileKey, Option<ElfTls>>,
    /// Per process with a verdict: what it uses, and when its maps were read.
    processes: HashMap<u32, KnownProcess>,
    logged: HashSet<(String, &'static str)>,
    stats: TlsStats,
    last_scan: Option<Instant>,
    /// Processes that exec'd recently: when the daemon saw the exec, and how many of the
    /// [`EXEC_SCAN_SCHEDULE`] reads are done.
    exec_watch: HashMap<u32, (Instant, usize)>,
}

impl TlsAttacher {
    pub fn new(self_pid: u32, enabled: bool, filter_pids: &[u32]) -> Self {
        Self {
            self_pid,
            enabled,
            scope_pids: filter_pids.to_vec(),
            attached: HashSet::new(),
            failed: HashSet::new(),
            executables: HashMap::new(),
            processes: HashMap::new(),
            logged: HashSet::new(),
            stats: TlsStats::default(),
            last_scan: None,
            exec_watch: HashMap::new(),
        }
    }

    pub fn stats(&self) -> TlsStats {
        self.stats.clone()
    }

    /// Attaches the well-known system libssl files, whoever maps them (or will).
    pub fn attach_system(&mut self, ebpf: &mut Ebpf) {
        if !self.enabled {
            return;
        }
        for path in SYSTEM_LIBSSL {
            let path = Path::new(path);
            if path.exists() {
                self.attach_file(ebpf, path, None);
            }
        }
    }

    pub fn rescan_due(&self) -> bool {
        self.enabled
            && self
                .last_scan
                .is_none_or(|t| t.elapsed() >= RESCAN_INTERVAL)
    }

    /// Re-reads the maps of `pids` (every process when `None`); reads at most
    /// `max_executables` executables not inspected before.
    pub fn rescan(&mut self, ebpf: &mut Ebpf, pids: Option<&[u32]>, max_executables: usize) {
        if !self.enabled {
            return;
        }
        self.last_scan = Some(Instant::now());
        let mut budget = max_executables;
        let all;
        let pids = match pids {
            Some(p) => p,
            None => {
                all = all_pids();
                &all
            }
        };
        let now = Instant::now();
        let mut alive = HashSet::new();
        for &pid in pids {
            if pid == self.self_pid {
                continue;
            }
            alive.insert(pid);
            let pages = address_space_pages(pid);
            let last_read = self.processes.get(&pid).and_then(|p| p.maps_read);
            if !maps_may_have_changed(last_read.as_ref(), pages, now) {
                continue;
            }
            let read = pages.map(|pages| MapsRead { pages, at: now });
            self.scan_pid(ebpf, pid, Some(&mut budget), read);
        }
        self.processes.retain(|pid, _| alive.contains(pid));
    }

    /// `pid` just exec'd: its maps are read on the [`EXEC_SCAN_SCHEDULE`] (see
    /// [`TlsAttacher::exec_scans`]) until a libssl in them is hooked.
    pub fn on_exec(&mut self, pid: u32, now: Instant) {
        if !self.enabled || pid == self.self_pid {
            return;
        }
        // A new program: what the old one used says nothing.
        self.processes.remove(&pid);
        if self.exec_watch.len() >= MAX_EXEC_WATCHED && !self.exec_watch.contains_key(&pid) {
            tracing::debug!(pid, "too many recent execs followed; left to the rescan");
            return;
        }
        self.exec_watch.insert(pid, (now, 0));
    }

    #[cfg(test)]
    fn exec_watched(&self) -> usize {
        self.exec_watch.len()
    }

    /// The exec-triggered reads that are due at `now`, at most [`EXEC_SCANS_PER_TICK`], most
    /// overdue first; returns how many were done. Executables are not read here (the rescan
    /// does, within its budget): only mapped libraries are hooked.
    pub fn exec_scans(&mut self, ebpf: &mut Ebpf, now: Instant) -> usize {
        let mut due: Vec<(Instant, u32)> = self
            .exec_watch
            .iter()
            .filter_map(|(&pid, &(seen, done))| {
                let at = seen + *EXEC_SCAN_SCHEDULE.get(done)?;
                (at <= now).then_some((at, pid))
            })
            .collect();
        due.sort_unstable();
        due.truncate(EXEC_SCANS_PER_TICK);
        for &(_, pid) in &due {
            let mut no_executables = 0;
            let state = self.scan_pid(ebpf, pid, Some(&mut no_executables), None);
            let gone = state.is_none() && !Path::new(&format!("/proc/{pid}")).exists();
            let finished = match self.exec_watch.get_mut(&pid) {
                Some((_, done)) => {
                    *done += 1;
                    *done >= EXEC_SCAN_SCHEDULE.len()
                }
                None => true,
            };
            if finished || gone || state == Some(ProcessTls::OpenSsl) {
                self.exec_watch.remove(&pid);
            }
        }
        due.len()
    }

    /// Finds and hooks the OpenSSL of one process; returns what it uses.
    /// `exe_budget`: how many unknown executables may still be read (None: no limit).
    /// `read`: the process's address-space size now, kept with a new verdict so the rescan
    /// can skip its maps while it does not move (None: the next rescan reads them).
    fn scan_pid(
        &mut self,
        ebpf: &mut Ebpf,
        pid: u32,
        exe_budget: Option<&mut usize>,
        read: Option<MapsRead>,
    ) -> Option<ProcessTls> {
        let name = executable_name(pid);
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
        let mapped = libssl::parse_maps(&maps);
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        let mut hooked = false;
        for lib in &mapped.libssl {
            // Inside the process's mount namespace (containers): its root. The host's path
            // when it is the same file: it outlives the process (a short-lived client may
            // exit while its library is being read and attached).
            let in_root = root.join(lib.trim_start_matches('/'));
            let path = same_file(Path::new(lib), &in_root).unwrap_or(in_root);
            hooked |= self.attach_file(ebpf, &path, Some(pid));
        }
        let state = if hooked {
            ProcessTls::OpenSsl
        } else {
            let exe = PathBuf::from(format!("/proc/{pid}/exe"));
            let elf = match self.inspect_executable(&exe, exe_budget) {
                Inspected::Elf(elf) => elf,
                // Not read this time: no new verdict, and the next rescan looks again.
                Inspected::Later => {
                    let known = self.processes.get_mut(&pid)?;
                    known.maps_read = None;
                    return Some(known.tls);
                }
            };
            match elf {
                Some(e) if e.has_openssl() && self.attach_file(ebpf, &exe, Some(pid)) => {
                    ProcessTls::OpenSsl
                }
                _ => ProcessTls::Untraceable(libssl::untraceable_reason(&mapped, elf.as_ref())),
            }
        };
        let known = KnownProcess {
            tls: state,
            executable: name,
            maps_read: read,
        };
        self.processes.insert(pid, known);
        Some(state)
    }

    fn inspect_executable(&mut self, exe: &Path, budget: Option<&mut usize>) -> Inspected {
        let Ok(meta) = std::fs::metadata(exe) else {
            return Inspected::Elf(None);
        };
        let key = (meta.dev(), meta.ino());
        if let Some(known) = self.executables.get(&key) {
            return Inspected::Elf(known.clone());
        }
        if let Some(budget) = budget {
            if *budget == 0 || meta.len() > MAX_RESCAN_EXECUTABLE_BYTES {
                return Inspected::Later;
            }
            *budget -= 1;
        }
        let found = std::fs::read(exe)
            .ok()
            .and_then(|b| libssl::inspect_elf(&b));
        self.executables.insert(key, found.clone());
        Inspected::Elf(found)
    }

    /// Attaches every hooked symbol the file defines, once per file. True if the file is
    /// (now or already) hooked.
    fn attach_file(&mut self, ebpf: &mut Ebpf, path: &Path, pid: Option<u32>) -> bool {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        let key = (meta.dev(), meta.ino());
        if self.attached.contains(&key) {
            return true;
        }
        if self.failed.contains(&key) {
            return false;
        }
        let symbols = match std::fs::read(path)
            .ok()
            .and_then(|b| libssl::inspect_elf(&b))
        {
            Some(elf) if elf.has_openssl() => elf.ssl_symbols,
            _ => {
                self.failed.insert(key);
                return false;
            }
        };
        match attach_symbols(ebpf, path, &symbols, &self.scope_pids) {
            Ok(()) => {
                tracing::info!(
                    path = %path.display(),
                    pid = ?pid,
                    symbols = ?symbols,
                    "OpenSSL uprobes attached"
                );
                self.attached.insert(key);
                self.stats.files_attached += 1;
                true
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), "could not attach the OpenSSL uprobes: {e}");
                self.failed.insert(key);
                self.stats.attach_failures += 1;
                false
            }
        }
    }

    /// A TLS connection started in `start.pid`. Returns true if the process's TLS cannot be
    /// read (the tracer then untracks its TLS connections); counts and logs it.
    pub fn on_tls_started(&mut self, ebpf: &mut Ebpf, start: TlsStart) -> bool {
        let state = {
            let cached = self.processes.get(&start.pid).map(|p| p.tls);
            match cached {
                Some(ProcessTls::OpenSsl) => ProcessTls::OpenSsl,
                // Unknown, or untraceable at the last look: libssl may have been loaded since.
                _ => match (self.scan_pid(ebpf, start.pid, None, None), cached) {
                    (Some(s), _) => s,
                    // Already gone: what the last rescan found.
                    (None, Some(s)) => s,
                    (None, None) => return false,
                },
            }
        };
        let ProcessTls::Untraceable(reason) = state else {
            return false;
        };
        let exe = match self.processes.get(&start.pid) {
            Some(known) => known.executable.clone(),
            None => executable_name(start.pid),
        };
        let label = reason.label();
        *self
            .stats
            .untraceable
            .entry((exe.clone(), label))
            .or_default() += 1;
        if self.logged.insert((exe.clone(), label)) {
            tracing::warn!(
                executable = %exe,
                pid = start.pid,
                reason = label,
                "TLS connections of this executable cannot be read (no OpenSSL sonde can hook); \
                 they produce no spans and are counted in sonde_tls_untraceable_connections_total"
            );
        }
        true
    }
}

fn attach_symbols(
    ebpf: &mut Ebpf,
    path: &Path,
    symbols: &[&'static str],
    scope_pids: &[u32],
) -> Result<(), String> {
    let scopes: Vec<UProbeScope> = if scope_pids.is_empty() {
        vec![UProbeScope::AllProcesses]
    } else {
        scope_pids
            .iter()
            .filter_map(|p| std::num::NonZeroU32::new(*p))
            .map(UProbeScope::OneProcess)
            .collect()
    };
    for (program, symbol) in ENTRY_PROGRAMS {
        if !symbols.contains(&symbol) {
            continue;
        }
        debug_assert!(SSL_SYMBOLS.contains(&symbol));
        for name in [program, RETURN_PROGRAM] {
            let p: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or_else(|| format!("program {name} missing"))?
                .try_into()
                .map_err(|e| format!("{name}: {e}"))?;
            for scope in &scopes {
                p.attach(symbol, path, *scope).map_err(|e| {
                    let hint = if e.to_string().contains("ermission") {
                        " (uprobes need CAP_PERFMON or CAP_SYS_ADMIN, and reading files in \
                         containers CAP_SYS_PTRACE for /proc/<pid>/root)"
                    } else {
                        ""
                    };
                    format!("{symbol} ({name}): {e}{hint}")
                })?;
            }
        }
    }
    Ok(())
}

/// `host` if it is the same file (device and inode) as `in_root`.
fn same_file(host: &Path, in_root: &Path) -> Option<PathBuf> {
    let a = std::fs::metadata(host).ok()?;
    let b = std::fs::metadata(in_root).ok()?;
    (a.dev() == b.dev() && a.ino() == b.ino()).then(|| host.to_path_buf())
}

/// What the attacher knows of one process.
#[derive(Debug)]
struct KnownProcess {
    tls: ProcessTls,
    /// Its executable's name, kept: short-lived clients are often gone by the time their
    /// connection is counted.
    executable: String,
    /// When its maps were read for this verdict. The kernel formats maps by walking every
    /// mapping with its path; statm is a few counters, so an unchanged process costs almost
    /// nothing.
    maps_read: Option<MapsRead>,
}

/// When a process's maps were last read, and its address-space size then.
#[derive(Clone, Copy, Debug)]
struct MapsRead {
    pages: u64,
    at: Instant,
}

/// Whether a process's maps must be read again at `now`: never read with a verdict, its
/// address-space size (`pages`) moved (a library mapped or unmapped; also any heap growth,
/// which only costs a read), its size is unreadable, or [`FULL_RESCAN_INTERVAL`] passed.
fn maps_may_have_changed(last: Option<&MapsRead>, pages: Option<u64>, now: Instant) -> bool {
    match (last, pages) {
        (Some(last), Some(pages)) => {
            pages != last.pages || now.saturating_duration_since(last.at) >= FULL_RESCAN_INTERVAL
        }
        _ => true,
    }
}

/// The process's address-space size in pages (`/proc/<pid>/statm`).
fn address_space_pages(pid: u32) -> Option<u64> {
    procfs::process::StatM::from_file(format!("/proc/{pid}/statm"))
        .ok()
        .map(|statm| statm.size)
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// The executable's file name (for the metric label), else its command name.
fn executable_name(pid: u32) -> String {
    if let Ok(target) = std::fs::read_link(format!("/proc/{pid}/exe"))
        && let Some(name) = target.file_name().and_then(|n| n.to_str())
    {
        return name.trim_end_matches(" (deleted)").to_owned();
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execs_are_followed_within_bounds() {
        let now = Instant::now();
        let mut off = TlsAttacher::new(1, false, &[]);
        off.on_exec(5, now);
        assert_eq!(off.exec_watched(), 0, "--no-tls follows nothing");
        let mut t = TlsAttacher::new(1, true, &[]);
        t.on_exec(1, now);
        assert_eq!(t.exec_watched(), 0, "sonde itself is never scanned");
        for pid in 2..(MAX_EXEC_WATCHED as u32 + 100) {
            t.on_exec(pid, now);
        }
        assert_eq!(t.exec_watched(), MAX_EXEC_WATCHED);
        // A process exec'ing again restarts its schedule, within the bound.
        t.on_exec(2, now);
        assert_eq!(t.exec_watched(), MAX_EXEC_WATCHED);
        assert!(EXEC_SCAN_SCHEDULE.windows(2).all(|w| w[0] < w[1]));
        assert!(EXEC_SCAN_SCHEDULE[EXEC_SCAN_SCHEDULE.len() - 1] < RESCAN_INTERVAL);
    }

    #[test]
    fn maps_are_reread_when_the_address_space_moves_or_every_full_interval() {
        let t0 = Instant::now();
        let last = MapsRead {
            pages: 1000,
            at: t0,
        };
        let soon = t0 + Duration::from_secs(5);
        assert!(maps_may_have_changed(None, Some(1000), soon), "never read");
        assert!(!maps_may_have_changed(Some(&last), Some(1000), soon));
        assert!(
            maps_may_have_changed(Some(&last), Some(1064), soon),
            "libssl mapped"
        );
        assert!(
            maps_may_have_changed(Some(&last), Some(900), soon),
            "something unmapped"
        );
        assert!(
            maps_may_have_changed(Some(&last), None, soon),
            "statm unreadable"
        );
        let late = t0 + FULL_RESCAN_INTERVAL;
        assert!(maps_may_have_changed(Some(&last), Some(1000), late));
        assert!(FULL_RESCAN_INTERVAL > RESCAN_INTERVAL);
    }

    #[test]
    fn address_space_size_is_read_from_statm() {
        let own = address_space_pages(std::process::id()).expect("own statm");
        assert!(own > 0);
        assert_eq!(address_space_pages(u32::MAX), None, "no such process");
    }

    #[test]
    fn tls_records_are_recognised_and_plaintext_is_not() {
        let hello = [0x16, 0x03, 0x01, 0x02, 0x00, 0x01];
        assert!(looks_like_tls_record(&hello, true));
        assert!(looks_like_tls_record(&[0x17, 0x03, 0x03, 0, 5], false));
        assert!(!looks_like_tls_record(&[0x17, 0x03, 0x03, 0, 5], true));
        assert!(!looks_like_tls_record(b"GET / HTTP/1.1\r\n", true));
        assert!(!looks_like_tls_record(&[0, 0, 0, 8, 4, 210, 22, 47], true));
        assert!(!looks_like_tls_record(&[0x16, 0x03], true));
        assert!(may_become_tls_record(&[0x16]));
        assert!(!may_become_tls_record(b"G"));
        assert!(!may_become_tls_record(&hello));
    }
}
