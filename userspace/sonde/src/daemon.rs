//! Wires the daemon together: probes -> capture loop (tracer) -> exporter, plus the OTLP
//! receiver, the startup summary and a graceful shutdown on SIGINT/SIGTERM.
use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use sonde_common::{SocketState, role, socket_key};
use sonde_otlp_export::Exporter;

use crate::{
    capture::{
        event::{Role, decode},
        inflight,
        loader::{self, ProbeSettings, Probes},
        preexisting,
        sockets::SocketResolver,
    },
    clock::{self, Clock},
    config::Config,
    trace::{http::Endpoints, resource::ResourceCache},
    tracer::{KernelCommand, ProcHost, Tracer, TracerConfig},
};

/// How long the capture loop sleeps when the kernel does not wake it (batched wake-ups).
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Spans are handed to the exporter at least this often.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
const FLUSH_SPANS: usize = 1024;
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
/// `bpf_map_update_elem` flag: only insert, never overwrite what the programs wrote.
const BPF_NOEXIST: u64 = 1;
/// Wake the reader when this much is queued in the ring buffer.
const WAKEUP_BYTES: u32 = 256 * 1024;

struct CaptureLoop {
    probes: Probes,
    tracer: Tracer<ProcHost>,
    exporter: Exporter,
    stop: Arc<AtomicBool>,
    spans_rejected: u64,
}

impl CaptureLoop {
    fn apply_commands(&mut self) {
        apply_commands(&mut self.probes.sockets, &mut self.tracer);
    }

    fn flush(&mut self) {
        let spans = self.tracer.take_spans();
        if !spans.is_empty() && self.exporter.send_traces(spans).is_err() {
            self.spans_rejected += 1;
        }
    }

    /// Drains everything queued in the ring buffer; returns the number of records.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(item) = self.probes.events.next() {
            match decode(&item) {
                Ok(event) => self.tracer.on_event(event),
                Err(e) => {
                    tracing::debug!("undecodable ring buffer record: {e}");
                    self.tracer.count_decode_error();
                }
            }
            drop(item);
            n += 1;
            // Keep kernel table updates timely during long bursts.
            if n % 4096 == 0 {
                apply_commands(&mut self.probes.sockets, &mut self.tracer);
            }
        }
        self.apply_commands();
        n
    }

    fn run(mut self) -> Self {
        let fd = self.probes.events.as_raw_fd();
        let mut last_flush = Instant::now();
        let mut last_housekeeping = Instant::now();
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            if !stopping {
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, POLL_INTERVAL.as_millis() as i32) };
            }
            self.drain();
            if stopping {
                self.flush();
                return self;
            }
            if self.tracer.pending_spans() >= FLUSH_SPANS || last_flush.elapsed() >= FLUSH_INTERVAL
            {
                self.flush();
                last_flush = Instant::now();
            }
            if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                self.tracer.set_clock(Clock::sample());
                self.tracer.tick(clock::monotonic_now_ns());
                last_housekeeping = Instant::now();
            }
        }
    }
}

/// Applies the tracer's requested changes to the kernel's socket table.
fn apply_commands(
    sockets: &mut aya::maps::HashMap<aya::maps::MapData, u64, SocketState>,
    tracer: &mut Tracer<ProcHost>,
) {
    for cmd in tracer.take_commands() {
        match cmd {
            KernelCommand::Untrack { pid, fd } => {
                let _ = sockets.remove(&socket_key(pid, fd as u32));
            }
            KernelCommand::Track {
                pid,
                fd,
                role: r,
                capture_bytes,
            } => {
                let state = SocketState {
                    role: match r {
                        Role::Server => role::SERVER,
                        Role::Client => role::CLIENT,
                        Role::Unknown => role::UNKNOWN,
                    },
                    capture_bytes,
                };
                if let Err(e) = sockets.insert(socket_key(pid, fd as u32), state, 0) {
                    tracing::debug!("socket table update for pid {pid} fd {fd}: {e}");
                }
            }
        }
    }
}

/// Stashes the arguments of syscalls that threads were already blocked in when the probes
/// attached, so their exits are not dropped (see `capture::inflight`).
fn stash_blocked_syscalls(probes: &mut Probes, pids: &[u32], default_capture: u32) -> usize {
    let only = if pids.is_empty() { None } else { Some(pids) };
    let mut stashed = 0;
    for b in inflight::scan(std::process::id(), only) {
        let key = (u64::from(b.pid) << 32) | u64::from(b.tid);
        let inserted = match b.syscall {
            inflight::Blocked::Data {
                fd,
                buf_kind,
                direction,
                ptr,
                count,
            } => {
                let Ok(state) = probes.sockets.get(&socket_key(b.pid, fd as u32), 0) else {
                    continue;
                };
                let args = sonde_common::DataArgs {
                    fd,
                    buf_kind,
                    ptr,
                    iov_count: if buf_kind == sonde_common::buf_kind::PLAIN {
                        0
                    } else {
                        count
                    },
                    direction,
                    capture_bytes: if state.capture_bytes != 0 {
                        state.capture_bytes
                    } else {
                        default_capture
                    },
                    enter_ts_ns: clock::monotonic_now_ns(),
                };
                probes.data_args.insert(key, args, BPF_NOEXIST).is_ok()
            }
            inflight::Blocked::Accept { sockaddr } => probes
                .accept_args
                .insert(key, sonde_common::AcceptArgs { sockaddr }, BPF_NOEXIST)
                .is_ok(),
        };
        if !inserted {
            continue;
        }
        // The thread may have left that syscall meanwhile: then the entry would be stale.
        if inflight::read_thread(b.pid, b.tid) != Some((b.nr, b.args)) {
            let _ = probes.data_args.remove(&key);
            let _ = probes.accept_args.remove(&key);
            continue;
        }
        stashed += 1;
    }
    stashed
}

fn adopt_preexisting(tracer: &mut Tracer<ProcHost>, pids: &[u32]) -> usize {
    let only = if pids.is_empty() { None } else { Some(pids) };
    let found = preexisting::scan_established(std::process::id(), only);
    let n = found.len();
    for s in found {
        let role = if s.accepted {
            Role::Server
        } else {
            Role::Client
        };
        tracer.adopt_existing(
            s.pid,
            s.fd,
            role,
            Endpoints {
                local: Some(s.endpoints.local),
                remote: Some(s.endpoints.remote),
            },
        );
    }
    n
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}

pub async fn run(config: Config) -> Result<()> {
    let settings = ProbeSettings {
        self_pid: std::process::id(),
        filter_pids: !config.pids.is_empty(),
        capture_bytes: config.capture_bytes,
        ring_buffer_bytes: config.ring_buffer_bytes,
        wakeup_bytes: WAKEUP_BYTES,
        noop: config.noop_probes,
    };
    let mut probes = loader::load(&settings)?;
    for pid in &config.pids {
        probes
            .traced_pids
            .insert(*pid, 1, 0)
            .with_context(|| format!("adding pid {pid} to the kernel filter"))?;
    }

    let exporter = Exporter::start(config.exporter.clone()).context("starting the exporter")?;
    let host = ProcHost {
        sockets: SocketResolver::default(),
        resources: ResourceCache::new(),
    };
    let tracer_config = TracerConfig {
        selection: config.selection.clone(),
        routes: config.routes.clone(),
        postgres_capture_bytes: config.postgres_capture_bytes,
    };
    let mut tracer = Tracer::new(tracer_config, host, Clock::sample());
    let preexisting = adopt_preexisting(&mut tracer, &config.pids);

    let stop = Arc::new(AtomicBool::new(false));
    let mut capture = CaptureLoop {
        probes,
        tracer,
        exporter: exporter.clone(),
        stop: stop.clone(),
        spans_rejected: 0,
    };
    capture.apply_commands();
    let blocked = stash_blocked_syscalls(&mut capture.probes, &config.pids, config.capture_bytes);
    let attached = capture.probes.attached.len();

    eprintln!(
        "sonde {}: attached {attached} tracepoints",
        env!("CARGO_PKG_VERSION")
    );
    eprintln!(
        "  tracing: {}{}{}",
        if config.pids.is_empty() {
            "all processes".to_owned()
        } else {
            format!("pids {:?}", config.pids)
        },
        if config.selection.ports.is_empty() {
            String::new()
        } else {
            format!(", ports {:?}", config.selection.ports)
        },
        if config.selection.executables.is_empty() {
            String::new()
        } else {
            format!(", executables {:?}", config.selection.executables)
        },
    );
    eprintln!(
        "  capture: {} bytes per syscall (PostgreSQL {}), ring buffer {} KiB",
        config.capture_bytes,
        config.postgres_capture_bytes,
        config.ring_buffer_bytes / 1024
    );
    eprintln!(
        "  connections open before start: {preexisting} adopted; {blocked} threads already blocked in socket syscalls"
    );
    eprintln!(
        "  output: {}",
        config
            .exporter
            .outputs
            .iter()
            .map(|o| o.kind())
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("sonde: ready");

    let handle = std::thread::Builder::new()
        .name("sonde-capture".into())
        .spawn(move || capture.run())?;
    let signal = shutdown_signal().await;
    eprintln!(
        "sonde: {signal}, flushing (up to {:?})",
        config.shutdown_timeout
    );
    stop.store(true, Ordering::Relaxed);
    let capture = tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))?;
    let lost: u64 = capture.probes.lost_per_cpu().iter().sum();
    let stats = capture.tracer.stats();
    exporter.shutdown(config.shutdown_timeout).await;
    eprintln!(
        "sonde: stopped; {} events, {} spans, {} ring buffer records lost, {} span batches refused by a full queue",
        stats.events, stats.spans, lost, capture.spans_rejected
    );
    Ok(())
}
