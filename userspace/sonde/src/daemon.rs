//! Wires the daemon together: probes -> capture loop (tracer) -> exporter, plus the OTLP
//! receiver, the startup summary and a graceful shutdown on SIGINT/SIGTERM.
use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use sonde_common::{SocketState, role, socket_key};
use sonde_otlp_export::{Exporter, Output, Request};
use sonde_otlp_receive::{Receiver, ReceiverConfig};

use crate::{
    capture::{
        event::{KernelEvent, Role, decode},
        loader::{self, ProbeSettings, Probes},
        tls::TlsAttacher,
    },
    clock::{self, Clock},
    config::{Config, PipelineStop},
    discover::{
        ProcHost, inflight,
        process::ResourceCache,
        sockets::{self, SocketResolver},
    },
    merge::{MergeConfig, Merger},
    metrics::{self, CaptureSnapshot},
    metrics_feed::MetricsFeed,
    protocols::{Postgres, Protocol, ProtocolSettings},
    sdk::{self, SdkRequest},
    trace::http::Endpoints,
    tracer::{KernelCommand, Tracer, TracerConfig},
};

/// How long the capture loop sleeps when the kernel does not wake it (batched wake-ups).
const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Spans are handed to the exporter at least this often.
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(5);
/// How often the capture thread publishes its counters for the metrics endpoint.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// `bpf_map_update_elem` flag: only insert, never overwrite what the programs wrote.
const BPF_NOEXIST: u64 = 1;
/// The kernel wakes the reader each time this share of the ring buffer fills (1/8: a 16 MiB
/// ring wakes it every 2 MiB), up to [`MAX_WAKEUP_BYTES`]. Fewer, larger drains cost less
/// per record: nginx under wrk with the default ring kept 158k req/s at 1.58 ms of daemon
/// CPU per 1k requests waking every 64 KiB, 162k / 1.47 every 256 KiB, 166k / 1.38 every
/// 1 MiB and 168k / 1.39 every 2 MiB (alternated in one session). The rest of the ring is
/// headroom for the reader's lag, and the poll tick bounds the wait at low rates. A long
/// drain must yield, though: see [`YIELD_EVERY_RECORDS`].
const WAKEUP_SHARE: u32 = 8;
const MAX_WAKEUP_BYTES: u32 = 2 * 1024 * 1024;
/// Within a drain the capture thread yields the CPU every this many records (a fraction of a
/// millisecond of work). A 2 MiB drain is milliseconds of parsing; without the yield it held a
/// core that long while the traced server's threads waited for it: nginx's p99 under wrk went
/// from 1.15 to 4.2 ms. With it, against the 256 KiB, per-record wake-ups before (alternated,
/// medians of 3): p99 1.18 -> 1.29 ms, 163k -> 172k req/s, 1.50 -> 1.44 ms of daemon CPU per
/// 1k requests, no records lost.
/// When nothing else wants the CPU, `sched_yield` returns at once.
const YIELD_EVERY_RECORDS: usize = 512;

/// Bytes queued between two wake-ups, for a ring buffer of `ring_bytes`.
fn wakeup_bytes(ring_bytes: u32) -> u32 {
    (loader::ring_size(ring_bytes) / WAKEUP_SHARE).clamp(4096, MAX_WAKEUP_BYTES)
}

struct CaptureLoop {
    probes: Probes,
    tracer: Tracer<ProcHost>,
    merger: Merger,
    exporter: Exporter,
    sdk_requests: mpsc::Receiver<sdk::Queued>,
    sdk_queued: sdk::QueuedBytes,
    /// Receiver peers resolved through /proc (the tracer did not see their connection).
    peer_cache: HashMap<SocketAddr, Option<u32>>,
    stop: Arc<AtomicBool>,
    spans_rejected: u64,
    /// Published for the metrics endpoint.
    snapshot: Arc<Mutex<CaptureSnapshot>>,
    /// OpenSSL discovery and uprobe attachment; untraceable TLS accounting.
    tls: TlsAttacher,
    /// Kubernetes identity of processes (inert off Kubernetes) and the pod selection.
    k8s: sonde_k8s::Enricher,
    /// Request/process metrics (None with `--no-metrics`).
    metrics: Option<MetricsFeed>,
    /// A pid filter is set: the kernel follows chosen pids (their processes get process
    /// metrics; TLS discovery looks at the traced pids only).
    filter_pids: bool,
    /// Spans handed to the exporter at once: its batch size, so a flush is one export batch
    /// (a larger hand-over was cut in two again by the exporter, measured twice and copied).
    flush_spans: usize,
    /// `--pipeline-stop` (benchmarks only): where the pipeline is cut, and what was dropped.
    cut: PipelineCut,
}

/// Benchmarks: `--pipeline-stop` cuts the span pipeline after one stage, so the bench can
/// tell what each stage costs. The checks sit at the stage boundaries: [`CaptureLoop::drain`]
/// (drain), `Tracer::set_build_spans` (parse), [`CaptureLoop::flush`] (build) and
/// [`CaptureLoop::export`] (encode). Without a stop none of them does anything.
#[derive(Default)]
struct PipelineCut {
    stop: Option<PipelineStop>,
    /// Ring-buffer data records dropped before the tracer (drain).
    records: u64,
    /// Spans dropped after building (build) or after encoding (encode).
    spans: u64,
    /// Encoded export requests and their protobuf bytes (encode).
    requests: u64,
    bytes: u64,
}

impl PipelineCut {
    fn at(&self, stage: PipelineStop) -> bool {
        self.stop == Some(stage)
    }
}

impl CaptureLoop {
    fn apply_commands(&mut self) {
        apply_commands(&mut self.probes.sockets, &mut self.tracer);
    }

    fn publish(&mut self) {
        let snapshot = CaptureSnapshot {
            lost_per_cpu: self.probes.lost_per_cpu(),
            tracer: self.tracer.stats(),
            merge: self.merger.stats(),
            tls: self.tls.stats(),
        };
        if let Ok(mut guard) = self.snapshot.lock() {
            *guard = snapshot;
        }
    }

    /// Hands finished spans to the exporter, except those the merger holds for SDK spans.
    fn flush(&mut self) {
        let now = clock::monotonic_now_ns();
        let spans = self.tracer.take_spans();
        if self.cut.at(PipelineStop::Build) {
            // --pipeline-stop build: metrics (if on) see the spans, nothing merges or leaves.
            self.cut.spans += spans.len() as u64;
            let own = if self.metrics.is_some() {
                spans
            } else {
                Vec::new() // still forgets processes that exited
            };
            let (own, _) = self.tracer.group(own, Vec::new());
            if let Some(m) = &self.metrics {
                m.observe_own(&own);
            }
            return;
        }
        // Collected in place (same element type): no second buffer, no copy of every span.
        let own: Vec<_> = spans
            .into_iter()
            .filter_map(|(pid, span)| {
                if !self.merger.is_sdk_pid(pid) && self.tracer.is_sdk_candidate(pid) {
                    self.merger.observe_candidate(pid, now);
                }
                if self.merger.should_hold(pid, &span.trace_id, now) {
                    // Held spans may be adopted by an SDK span (ids rewritten): OTLP from here.
                    self.merger.hold(pid, span.into_otlp(), now);
                    None
                } else {
                    Some((pid, span))
                }
            })
            .collect();
        // Groups of traces whose server request is still in flight wait for its end.
        let open = self.tracer.open_server_traces();
        let released = self.merger.poll(now, &|trace| open.contains(trace));
        self.export(own, released);
    }

    /// Groups, enriches, counts and queues sonde's own spans and those the merge released.
    fn export(
        &mut self,
        own: Vec<(u32, sonde_core::trace::span::OwnSpan)>,
        released: Vec<(u32, opentelemetry_proto::tonic::trace::v1::Span)>,
    ) {
        if own.is_empty() && released.is_empty() {
            return;
        }
        let (mut own, mut released) = self.tracer.group(own, released);
        own.retain_mut(|b| self.k8s.enrich(&mut b.resource));
        released.retain_mut(|rs| rs.resource.as_mut().is_none_or(|r| self.k8s.enrich(r)));
        if let Some(m) = &self.metrics {
            m.observe_own(&own);
            m.observe(&released);
        }
        if self.cut.at(PipelineStop::Encode) {
            // --pipeline-stop encode: the protobuf bytes an OTLP exporter would send, dropped.
            self.cut.spans +=
                spans_in(&released) + own.iter().map(|b| b.spans.len() as u64).sum::<u64>();
            let request = Request::Traces(ExportTraceServiceRequest {
                resource_spans: released,
            });
            self.cut.bytes += (request.encode_protobuf().len()
                + sonde_otlp_export::encode_own_traces(&own).len())
                as u64;
            self.cut.requests += 1;
            return;
        }
        if self.exporter.send_own_traces(own).is_err() {
            self.spans_rejected += 1;
        }
        if self.exporter.send_traces(released).is_err() {
            self.spans_rejected += 1;
        }
    }

    fn sender_pid(&mut self, peer: SocketAddr) -> Option<u32> {
        if let Some(hit) = self.peer_cache.get(&peer) {
            return *hit;
        }
        let pid = sockets::pid_of_local_addr(peer);
        if self.peer_cache.len() > 4096 {
            self.peer_cache.clear();
        }
        self.peer_cache.insert(peer, pid);
        pid
    }

    /// The resource of `pid`'s telemetry, with its Kubernetes identity.
    fn resource_of(&mut self, pid: u32) -> opentelemetry_proto::tonic::resource::v1::Resource {
        let mut resource = self.tracer.resource_of(pid);
        self.k8s.enrich(&mut resource);
        resource
    }

    /// SDK telemetry from the receiver: attribute it to its process, give it that process's
    /// resource attributes, let the merger see the spans, forward everything with the room
    /// reserved at admission. Returns the number of requests handled.
    fn handle_sdk_requests(&mut self) -> usize {
        let now = clock::monotonic_now_ns();
        let mut handled = 0;
        for _ in 0..1024 {
            let Ok(sdk::Queued {
                request,
                bytes,
                reservation,
            }) = self.sdk_requests.try_recv()
            else {
                break;
            };
            handled += 1;
            self.sdk_queued.release(bytes);
            let request = match request {
                SdkRequest::Traces(peer, mut req) => {
                    if let Some(pid) = self.sender_pid(peer) {
                        let ours = self.resource_of(pid);
                        for rs in &mut req.resource_spans {
                            sdk::enrich(&mut rs.resource, &ours);
                        }
                        self.merger.observe_sdk(pid, &req, now);
                        if let Some(m) = &self.metrics {
                            m.observe(&req.resource_spans);
                        }
                    }
                    Request::Traces(req)
                }
                SdkRequest::Metrics(peer, mut req) => {
                    if let Some(pid) = self.sender_pid(peer) {
                        let ours = self.resource_of(pid);
                        for rm in &mut req.resource_metrics {
                            sdk::enrich(&mut rm.resource, &ours);
                        }
                    }
                    Request::Metrics(req)
                }
                SdkRequest::Logs(peer, mut req) => {
                    if let Some(pid) = self.sender_pid(peer) {
                        let ours = self.resource_of(pid);
                        for rl in &mut req.resource_logs {
                            sdk::enrich(&mut rl.resource, &ours);
                        }
                    }
                    Request::Logs(req)
                }
            };
            let traces = matches!(request, Request::Traces(_));
            if self.exporter.send_reserved(request, reservation).is_err() && traces {
                self.spans_rejected += 1;
            }
        }
        handled
    }

    /// Drains everything queued in the ring buffer; returns the number of records.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        let drain_only = self.cut.at(PipelineStop::Drain);
        loop {
            let Some(item) = self.probes.events.next() else {
                break;
            };
            match decode(&item) {
                // --pipeline-stop drain: data records are dropped here (decoding one is a
                // header copy). The few connection records still reach the tracer, so its
                // selection (--exe, --port) untracks unselected sockets in the kernel as the
                // full pipeline does, and the probes capture the same traffic.
                Ok(KernelEvent::Data { .. }) if drain_only => self.cut.records += 1,
                Ok(event) => {
                    if let Some(m) = &mut self.metrics {
                        feed_metrics(m, &event);
                    }
                    self.tracer.on_event(event)
                }
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
            if n % YIELD_EVERY_RECORDS == 0 {
                // SAFETY: sched_yield takes no arguments.
                unsafe { libc::sched_yield() };
            }
            // A batch's worth of spans leaves at once, even mid-burst: a flush of a whole
            // burst (thousands of spans) needed buffers over mimalloc's 512 KiB large-object
            // bound, which it maps fresh and the kernel zeroes page by page every time
            // (perf stat: 3-4x the page faults, 10% more daemon CPU at max rate).
            if self.tracer.pending_spans() >= self.flush_spans {
                self.flush();
            }
        }
        self.apply_commands();
        n
    }

    /// Lifecycle and TCP health records, for the metrics; execs also go to the TLS attacher
    /// (a new program may load a libssl sonde has not hooked yet).
    fn drain_health(&mut self) {
        let mut records = Vec::new();
        let now = Instant::now();
        while let Some(item) = self.probes.health.next() {
            match crate::health::decode(&item) {
                Ok(h) => {
                    if let crate::health::Health::Exec { pid } = h {
                        self.tls.on_exec(pid, now);
                    }
                    records.push(h)
                }
                Err(e) => tracing::debug!("health record: {e}"),
            }
        }
        if let Some(mut m) = self.metrics.take() {
            let filter = self.filter_pids;
            m.health(&records, filter, |pid| self.resource_of(pid));
            self.metrics = Some(m);
        }
    }

    /// TLS connections the tracer saw start: hook their process's OpenSSL if it was not yet,
    /// or count them as untraceable. Then the maps of processes that exec'd recently, and the
    /// periodic rescan for late-loaded libssl.
    fn tls_step(&mut self) {
        let started = self.tracer.take_tls_started();
        for start in started {
            if self.tls.on_tls_started(&mut self.probes.ebpf, start) {
                self.tracer.set_tls_untraceable(start.pid);
            }
        }
        self.tls.exec_scans(&mut self.probes.ebpf, Instant::now());
        if self.tls.rescan_due() {
            let pids: Option<Vec<u32>> = self.filter_pids.then(|| {
                self.probes
                    .traced_pids
                    .keys()
                    .filter_map(Result::ok)
                    .collect()
            });
            self.tls.rescan(
                &mut self.probes.ebpf,
                pids.as_deref(),
                crate::capture::tls::EXECUTABLES_PER_RESCAN,
            );
        }
        self.apply_commands();
    }

    fn run(mut self) -> Self {
        let fd = self.probes.events.as_raw_fd();
        let mut last_flush = Instant::now();
        let mut last_housekeeping = Instant::now();
        let mut last_snapshot = Instant::now();
        let mut records_since_housekeeping = 0usize;
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
            records_since_housekeeping = records_since_housekeeping.saturating_add(self.drain());
            self.drain_health();
            self.tls_step();
            let mut handled = self.handle_sdk_requests();
            // At the last pass everything the receiver accepted must reach the exporter.
            while stopping && handled > 0 {
                handled = self.handle_sdk_requests();
            }
            if stopping {
                self.flush();
                let held = self.merger.drain();
                self.export(Vec::new(), held);
                if let Some(mut m) = self.metrics.take() {
                    let exporter = self.exporter.clone();
                    m.flush(|pid| self.resource_of(pid), &exporter);
                    self.metrics = Some(m);
                }
                return self;
            }
            if self.tracer.pending_spans() >= self.flush_spans
                || last_flush.elapsed() >= FLUSH_INTERVAL
            {
                self.flush();
                last_flush = Instant::now();
            }
            if let Some(mut m) = self.metrics.take() {
                let traced: Vec<u32> = if self.filter_pids {
                    self.probes.traced_pids.keys().flatten().collect()
                } else {
                    Vec::new()
                };
                let exporter = self.exporter.clone();
                m.tick(|pid| self.resource_of(pid), traced.into_iter(), &exporter);
                self.metrics = Some(m);
            }
            if last_snapshot.elapsed() >= SNAPSHOT_INTERVAL {
                self.publish();
                last_snapshot = Instant::now();
            }
            if last_housekeeping.elapsed() >= HOUSEKEEPING_INTERVAL {
                self.tracer.set_clock(Clock::sample());
                self.tracer.tick(clock::monotonic_now_ns());
                self.k8s.prune();
                if records_since_housekeeping < IDLE_RECORDS {
                    trim_heap();
                }
                records_since_housekeeping = 0;
                last_housekeeping = Instant::now();
            }
        }
    }
}

/// Spans in grouped resource spans.
fn spans_in(grouped: &[opentelemetry_proto::tonic::trace::v1::ResourceSpans]) -> u64 {
    grouped
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len() as u64)
        .sum()
}

/// Byte counts and exits for the metrics (first chunk of each data syscall counts it whole).
fn feed_metrics(m: &mut MetricsFeed, event: &KernelEvent<'_>) {
    use crate::capture::event::Direction;
    match event {
        KernelEvent::Data {
            hdr,
            direction,
            total_len,
            offset: 0,
            ..
        } => m.data(hdr.pid, *direction == Direction::Ingress, *total_len),
        KernelEvent::ProcessExit(hdr) => m.exited(hdr.pid),
        _ => {}
    }
}

/// An output for the startup summary: protocol and where each signal goes.
fn describe_output(o: &Output) -> String {
    match o {
        Output::Otlp(e) => {
            let urls: Vec<String> = [
                ("traces", &e.traces_url),
                ("metrics", &e.metrics_url),
                ("logs", &e.logs_url),
            ]
            .into_iter()
            .filter_map(|(signal, url)| {
                url.as_ref()
                    .map(|u| format!("{signal} -> {}", crate::trace::redact::url(u)))
            })
            .collect();
            format!("{} ({})", o.kind(), urls.join(", "))
        }
        Output::Text | Output::Json => format!("{} (stdout)", o.kind()),
    }
}

/// Below this many ring-buffer records per housekeeping interval the node counts as idle.
const IDLE_RECORDS: usize = 1000;

/// Gives freed heap back to the kernel when idle, so RSS comes back near idle within one
/// housekeeping interval after a flood (mimalloc also purges on its own after a delay; this
/// makes it prompt, at the cost of a few milliseconds every five seconds).
fn trim_heap() {
    // SAFETY: mi_collect has no preconditions; it only frees and purges unused memory.
    unsafe {
        libmimalloc_sys::mi_collect(true);
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

/// Starts the OTLP receiver. A listen address that is taken (another agent or collector on
/// 4317/4318) does not stop the tracer: that listener is skipped with a clear warning.
async fn start_receiver(
    config: &Config,
    sink: Arc<dyn sonde_otlp_receive::Sink>,
) -> Option<Receiver> {
    let mut receiver_config = ReceiverConfig {
        grpc_addr: config.receiver_grpc,
        http_addr: config.receiver_http,
        max_message_bytes: config.receiver_max_message_bytes,
        max_inflight_bytes: config.receiver_max_inflight_bytes,
    };
    loop {
        if receiver_config.grpc_addr.is_none() && receiver_config.http_addr.is_none() {
            return None;
        }
        match Receiver::start(receiver_config.clone(), sink.clone()).await {
            Ok(r) => return Some(r),
            Err(sonde_otlp_receive::ReceiveError::Bind { addr, hint, .. }) => {
                eprintln!("sonde: warning: OTLP receiver listener {addr} not started: {hint}");
                if receiver_config.grpc_addr == Some(addr) {
                    receiver_config.grpc_addr = None;
                } else {
                    receiver_config.http_addr = None;
                }
            }
            Err(e) => {
                eprintln!("sonde: warning: OTLP receiver not started: {e}");
                return None;
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
                    flags: 0,
                    _pad: 0,
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

/// `pids` plus all their descendants, from the parent links in /proc.
fn with_descendants(pids: &[u32]) -> Vec<u32> {
    if pids.is_empty() {
        return Vec::new();
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.flatten() {
            if let Ok(stat) = p.stat() {
                children
                    .entry(stat.ppid as u32)
                    .or_default()
                    .push(p.pid as u32);
            }
        }
    }
    let mut out: Vec<u32> = pids.to_vec();
    let mut i = 0;
    while i < out.len() {
        if let Some(kids) = children.get(&out[i]) {
            for k in kids {
                if !out.contains(k) {
                    out.push(*k);
                }
            }
        }
        i += 1;
    }
    out
}

fn adopt_preexisting(tracer: &mut Tracer<ProcHost>, pids: &[u32]) -> usize {
    let only = if pids.is_empty() { None } else { Some(pids) };
    let found = sockets::scan_established(std::process::id(), only);
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
    if config.k8s.events {
        return run_k8s_events(config).await;
    }
    let settings = ProbeSettings {
        self_pid: std::process::id(),
        filter_pids: !config.pids.is_empty(),
        capture_bytes: config.capture_bytes,
        postgres_capture_bytes: config.postgres_capture_bytes,
        ring_buffer_bytes: config.ring_buffer_bytes,
        wakeup_bytes: wakeup_bytes(config.ring_buffer_bytes),
        noop: config.noop_probes,
    };
    let mut probes = loader::load(&settings)?;
    // SAFETY: plain syscall on this process.
    if config.nice > 0 && unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, config.nice) } != 0 {
        tracing::warn!(
            "could not lower sonde's priority: {}",
            std::io::Error::last_os_error()
        );
    }
    // A chosen process's existing children are traced too (gunicorn's or nginx's workers);
    // children forked later are added by the kernel program on fork.
    let pids = with_descendants(&config.pids);
    for pid in &pids {
        probes
            .traced_pids
            .insert(*pid, 1, 0)
            .with_context(|| format!("adding pid {pid} to the kernel filter"))?;
    }

    // OpenSSL uprobes before connections are adopted, so TLS connections that predate sonde
    // are read from their next call.
    let mut tls = TlsAttacher::new(std::process::id(), config.tls, &pids);
    tls.attach_system(&mut probes.ebpf);
    // Mapped libraries only: executables (static OpenSSL) are read over the next ticks.
    tls.rescan(
        &mut probes.ebpf,
        (!config.pids.is_empty()).then_some(&pids[..]),
        0,
    );

    let exporter = Exporter::start(config.exporter.clone()).context("starting the exporter")?;
    let host = ProcHost {
        sockets: SocketResolver::default(),
        resources: ResourceCache::new().with_command_line(config.export_command_line),
    };
    // Decoded SDK requests waiting for the capture thread: an eighth of the memory budget.
    let (sink, sdk_requests, sdk_queued) = sdk::sink(
        exporter.clone(),
        (config.memory_budget_bytes / 8).max(1 << 20),
    );
    let receiver = start_receiver(&config, Arc::new(sink)).await.map(Arc::new);
    // Only ports actually bound: connections to them are SDK exports to this daemon.
    let receiver_ports: std::collections::HashSet<u16> = receiver
        .iter()
        .flat_map(|r| [r.grpc_local_addr(), r.http_local_addr()])
        .flatten()
        .map(|a| a.port())
        .collect();
    // Without a receiver no process can export to sonde: nothing waits to be classified.
    let hold_new_processes = !receiver_ports.is_empty();
    // Scrapes of the metrics endpoint are never traced either.
    let own_ports = receiver_ports
        .into_iter()
        .chain(config.metrics_addr.map(|a| a.port()).filter(|p| *p != 0))
        .collect();
    let tracer_config = TracerConfig {
        selection: config.selection.clone(),
        routes: config.routes.clone(),
        // Per-protocol flags reach the parsers through the registry.
        protocols: ProtocolSettings::default()
            .with_capture_bytes(Postgres::NAME, config.postgres_capture_bytes),
        // The OpenSSL uprobes (capture/tls.rs) deliver TLS plaintext: encrypted connections
        // stay tracked, their ciphertext dropped.
        tls_plaintext: config.tls,
        sampler: config.sampler,
        own_ports,
    };
    let mut tracer = Tracer::new(tracer_config, host, Clock::sample());
    // --pipeline-stop parse: parsers run, exchanges are dropped before span building.
    tracer.set_build_spans(config.pipeline_stop != Some(PipelineStop::Parse));
    let preexisting = adopt_preexisting(&mut tracer, &pids);

    let merger = Merger::new(MergeConfig {
        window_ns: config.merge_window.as_nanos().min(u128::from(u64::MAX)) as u64,
        // About 1 KiB a held span: an eighth of the memory budget.
        max_held_spans: (config.memory_budget_bytes / 8 / 1024).max(1024),
        // About 200 bytes a remembered SDK span: a sixteenth of the budget.
        max_sdk_spans: (config.memory_budget_bytes / 16 / 200).max(1024),
        hold_new_processes,
        ..MergeConfig::default()
    });

    let stop = Arc::new(AtomicBool::new(false));
    let mut capture = CaptureLoop {
        probes,
        tracer,
        merger,
        exporter: exporter.clone(),
        sdk_requests,
        sdk_queued,
        peer_cache: HashMap::new(),
        stop: stop.clone(),
        spans_rejected: 0,
        snapshot: Arc::new(Mutex::new(CaptureSnapshot::default())),
        tls,
        k8s: sonde_k8s::start_enricher(&config.k8s).await,
        metrics: config.metrics.enabled.then(|| {
            MetricsFeed::new(
                config.metrics.registry.clone(),
                config.metrics.export_interval,
            )
        }),
        filter_pids: !config.pids.is_empty(),
        flush_spans: config.exporter.batch_max_items.max(1),
        cut: PipelineCut {
            stop: config.pipeline_stop,
            ..PipelineCut::default()
        },
    };
    let registry = capture.metrics.as_ref().map(|m| m.registry.clone());
    capture.apply_commands();
    let blocked = stash_blocked_syscalls(&mut capture.probes, &pids, config.capture_bytes);
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
            format!("pids {:?}", pids)
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
    for o in &config.exporter.outputs {
        eprintln!("  output: {}", describe_output(o));
    }
    if let Some(stage) = config.pipeline_stop {
        eprintln!(
            "  pipeline: stopped after {} (benchmark knob): no spans are exported",
            stage.name()
        );
    }
    match &receiver {
        Some(r) => eprintln!(
            "  OTLP receiver: gRPC {}, HTTP {}",
            r.grpc_local_addr()
                .map_or("off".to_owned(), |a| a.to_string()),
            r.http_local_addr()
                .map_or("off".to_owned(), |a| a.to_string())
        ),
        None => eprintln!("  OTLP receiver: off"),
    }
    let metrics_listener = match config.metrics_addr {
        Some(addr) => match metrics::bind(addr).await {
            Ok(l) => Some((addr, l)),
            Err(e) => {
                // Self-metrics are not worth stopping the tracer for.
                eprintln!("sonde: warning: {e:#}");
                None
            }
        },
        None => None,
    };
    let ready = Arc::new(AtomicBool::new(false));
    let metrics_task = match metrics_listener {
        Some((addr, listener)) => {
            eprintln!(
                "  metrics: http://{}/metrics",
                listener
                    .local_addr()
                    .map_or(addr.to_string(), |a| a.to_string())
            );
            let weak = receiver.as_ref().map(Arc::downgrade);
            let sources = metrics::Sources {
                capture: capture.snapshot.clone(),
                exporter: exporter.clone(),
                receiver: weak.map(
                    |w| -> Arc<dyn Fn() -> sonde_otlp_receive::ReceiverStats + Send + Sync> {
                        Arc::new(move || w.upgrade().map(|r| r.stats()).unwrap_or_default())
                    },
                ),
                memory_budget_bytes: config.memory_budget_bytes,
                ready: ready.clone(),
                registry,
                target: metrics::sonde_target(),
            };
            Some(tokio::spawn(metrics::serve(listener, sources)))
        }
        None => None,
    };
    eprintln!("sonde: ready");
    ready.store(true, Ordering::Relaxed);

    let handle = std::thread::Builder::new()
        .name("sonde-capture".into())
        .spawn(move || capture.run())?;
    let signal = shutdown_signal().await;
    eprintln!(
        "sonde: {signal}, flushing (up to {:?})",
        config.shutdown_timeout
    );
    // Stop taking SDK requests first, so everything accepted is in the queue when the
    // capture thread drains it for the last time.
    if let Some(task) = metrics_task {
        task.abort();
    }
    if let Some(r) = receiver {
        match Arc::try_unwrap(r) {
            Ok(r) => r.shutdown().await,
            // A scrape holds it this instant: dropping it stops the listeners all the same.
            Err(r) => drop(r),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let capture = tokio::task::spawn_blocking(move || handle.join())
        .await?
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))?;
    let lost: u64 = capture.probes.lost_per_cpu().iter().sum();
    let stats = capture.tracer.stats();
    exporter.shutdown(config.shutdown_timeout).await;
    // Printed before the stop line, which a reader may take as the last one.
    if let Some(stage) = capture.cut.stop {
        let c = &capture.cut;
        eprintln!(
            "sonde: pipeline stopped after {}; {} data records dropped, {} exchanges dropped \
             unbuilt, {} spans dropped after {}, {} export requests encoded ({} bytes)",
            stage.name(),
            c.records,
            capture.tracer.exchanges_unbuilt(),
            c.spans,
            stage.name(),
            c.requests,
            c.bytes
        );
    }
    // The summary in spans: what left, what was dropped and why, what the kernel lost.
    let t = exporter.stats().traces;
    eprintln!(
        "sonde: stopped; {} events, {} spans built, {} spans exported, {} spans dropped \
         (queue full {}, undelivered at retry limit or shutdown deadline {}, refused by the backend {}), \
         {} ring buffer records lost in the kernel",
        stats.events,
        stats.spans,
        t.exported_items_total,
        t.dropped_items_total().saturating_add(t.failed_items_total),
        t.dropped_queue_full_items_total,
        t.dropped_retry_exhausted_items_total,
        t.failed_items_total,
        lost
    );
    if capture.spans_rejected > 0 {
        eprintln!(
            "sonde: {} span batches were refused by a full queue (counted above)",
            capture.spans_rejected
        );
    }
    Ok(())
}

/// `sonde run --k8s-events`: the cluster's events as OTLP log records, no probes. The manifests
/// run it in one one-replica Deployment so each event is exported once cluster-wide.
async fn run_k8s_events(config: Config) -> Result<()> {
    let client = sonde_k8s::client(&config.k8s).await.context(
        "--k8s-events needs the Kubernetes API (in-cluster service account or KUBECONFIG)",
    )?;
    let exporter = Exporter::start(config.exporter.clone()).context("starting the exporter")?;
    let ready = Arc::new(AtomicBool::new(true));
    let metrics_task = match config.metrics_addr {
        Some(addr) => {
            let listener = metrics::bind(addr).await?;
            let sources = metrics::Sources {
                capture: Arc::new(Mutex::new(CaptureSnapshot::default())),
                exporter: exporter.clone(),
                receiver: None,
                memory_budget_bytes: config.memory_budget_bytes,
                ready,
                registry: None,
                target: metrics::sonde_target(),
            };
            Some(tokio::spawn(metrics::serve(listener, sources)))
        }
        None => None,
    };
    let sender = exporter.clone();
    let watch = tokio::spawn(sonde_k8s::events::watch(client, move |logs| {
        let _ = sender.send_logs(vec![logs]);
    }));
    eprintln!("sonde: exporting Kubernetes events");
    eprintln!("sonde: ready");
    let signal = shutdown_signal().await;
    eprintln!(
        "sonde: {signal}, flushing (up to {:?})",
        config.shutdown_timeout
    );
    watch.abort();
    if let Some(task) = metrics_task {
        task.abort();
    }
    exporter.shutdown(config.shutdown_timeout).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::wakeup_bytes;

    #[test]
    fn the_reader_wakes_every_eighth_of_the_ring_between_4_kib_and_2_mib() {
        assert_eq!(wakeup_bytes(16 * 1024 * 1024), 2 * 1024 * 1024);
        assert_eq!(wakeup_bytes(4 * 1024 * 1024), 512 * 1024);
        // Rounded up to a power of two first, as the loader sizes the ring.
        assert_eq!(wakeup_bytes(3 * 1024 * 1024), 512 * 1024);
        assert_eq!(wakeup_bytes(1 << 30), 2 * 1024 * 1024);
        assert_eq!(wakeup_bytes(4096), 4096);
        assert_eq!(wakeup_bytes(0), 4096);
        assert_eq!(wakeup_bytes(u32::MAX), 2 * 1024 * 1024);
    }
}
