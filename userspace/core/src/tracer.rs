//! The heart of sonde: decoded kernel events in, spans out. This file is the dispatch: each
//! kernel event updates the connection table, a connection's first bytes pick its protocol
//! from the registry, its chunks feed that protocol's parser, and the parser's outputs get
//! span contexts and become spans. The other jobs sit beside it:
//!
//! - [`conns`]: the connection table (fd -> connection; dup, close, process exit);
//! - [`parenting`]: the context and parenting policy;
//! - [`group`]: grouping spans per process resource for export;
//! - `crate::protocols`: the registry (detection order, parsers, span mappings).
//!
//! It does no I/O: changes it wants in the kernel's socket table come out as
//! [`KernelCommand`]s, and what it needs from /proc comes through [`HostView`], so it is
//! driven by recorded events in its tests (`tracer/tests.rs`).
//!
//! Must never: parse protocol bytes itself, read /proc or touch kernel maps.
use std::{collections::HashSet, net::SocketAddr};

use opentelemetry_proto::tonic::{
    resource::v1::Resource,
    trace::v1::{ResourceSpans, Span},
};
use rustc_hash::FxHashMap as HashMap;
use sonde_span::OwnBatch;

use crate::{
    clock::Clock,
    event::{Direction, Header, KernelEvent, Role},
    protocols::{
        self, AnyExchange, Chunk, Detection, GiveUp, MapContext, Output, Parser, ProtocolSettings,
        Seen, Side, Source,
    },
    trace::{
        context::SpanContext,
        http::Endpoints,
        resource::ProcessInfo,
        route::RouteTemplates,
        sampler::Sampler,
        span::{OwnSpan, SpanParts},
    },
};

pub mod conns;
pub mod group;
pub mod parenting;
#[cfg(test)]
mod tests;

use conns::{ConnId, ConnTable, Released};
use parenting::Parenting;

/// What the tracer needs to know about the host, behind a trait so tests can fake /proc.
/// The daemon implements it over /proc (`discover::ProcHost`).
pub trait HostView {
    fn endpoints(&mut self, pid: u32, fd: i32) -> Option<TcpEndpoints>;
    /// The single TCP listening address of `pid`, if it has exactly one.
    fn sole_listener(&mut self, pid: u32) -> Option<SocketAddr>;
    fn process(&mut self, pid: u32) -> &ProcessInfo;
    /// Records a process seen by the kernel, named `comm` if /proc no longer has it.
    fn process_seen(&mut self, pid: u32, comm: &str);
    fn resource(&mut self, pid: u32) -> Resource;
    fn forget_process(&mut self, pid: u32);
}

/// A TCP socket's endpoints as the host reports them (/proc's TCP tables in the daemon).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEndpoints {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub established: bool,
}

/// Changes to the kernel's socket table the capture loop applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelCommand {
    /// Stop capturing this socket (filtered out, not a protocol we parse, encrypted).
    Untrack { pid: u32, fd: i32 },
    /// Capture up to `capture_bytes` per syscall on this socket.
    Track {
        pid: u32,
        fd: i32,
        role: Role,
        capture_bytes: u32,
    },
}

/// Which connections to trace, beyond the kernel's pid filter.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    /// Trace only connections with one of these local or remote ports (empty: all).
    pub ports: HashSet<u16>,
    /// Trace only processes whose executable name is one of these (empty: all).
    pub executables: HashSet<String>,
}

#[derive(Clone, Debug)]
pub struct TracerConfig {
    pub selection: Selection,
    pub routes: RouteTemplates,
    /// Per-protocol settings (capture sizes), applied through the registry.
    pub protocols: ProtocolSettings,
    /// A TLS plaintext source exists (uprobes): a connection whose syscall bytes turn out to
    /// be encrypted stays tracked, its ciphertext dropped, waiting for the plaintext.
    pub tls_plaintext: bool,
    /// Head sampling (OTEL_TRACES_SAMPLER).
    pub sampler: Sampler,
    /// Ports of sonde's own OTLP receiver (and metrics endpoint): connections to them on this
    /// host are never traced, and a process whose environment exports OTLP to one of them is
    /// an SDK process before its first export.
    pub own_ports: HashSet<u16>,
}

enum Proto {
    /// No payload seen yet.
    Unknown,
    /// A registered protocol claimed the connection.
    Parsing(Parser),
    /// Not ours to parse (another protocol, the server side of PostgreSQL, encrypted).
    Ignored,
}

/// What the tracer keeps per connection (the table keeps its pid and fds).
struct Conn {
    role: Role,
    endpoints: Endpoints,
    /// Seen from its first byte (false: open before sonde started).
    from_start: bool,
    proto: Proto,
    /// Span contexts of requests in flight, by the parser's sequence number.
    in_flight: HashMap<u64, SpanContext>,
    /// The syscall bytes are ciphertext: dropped, while the socket stays tracked for the
    /// plaintext of its TLS library calls.
    ciphertext: bool,
}

impl Conn {
    fn side(&self) -> Side {
        if self.role == Role::Client {
            Side::Client
        } else {
            Side::Server
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct TracerStats {
    pub events: u64,
    pub data_bytes: u64,
    pub spans: u64,
    /// Spans not built because the sampler dropped their trace.
    pub spans_unsampled: u64,
    pub connections_open: usize,
    pub connections_ignored: u64,
    pub decode_errors: u64,
    /// Client spans left without a parent because several requests of their event-loop
    /// process were in flight (which one they belong to cannot be known).
    pub spans_parent_ambiguous: u64,
    /// Server spans moved under their local client span after the fact: the client's write
    /// record reached sonde after the server's read record.
    pub spans_relinked_late: u64,
}

pub struct Tracer<H: HostView> {
    config: TracerConfig,
    host: H,
    clock: Clock,
    parenting: Parenting,
    conns: ConnTable<Conn>,
    spans: Vec<(u32, OwnSpan)>,
    commands: Vec<KernelCommand>,
    stats: TracerStats,
    /// Reused buffer of the current parser's outputs.
    outputs: Vec<Output<AnyExchange>>,
    /// Processes that exited since the last flush.
    exited: Vec<u32>,
    /// TLS connections that started since the last call (for the daemon's libssl discovery
    /// and untraceable-TLS accounting).
    tls_started: Vec<TlsStart>,
    /// Processes whose TLS sonde cannot read: their TLS connections are untracked at once.
    tls_untraceable: HashSet<u32>,
    /// Benchmark switch (`sonde run --pipeline-stop parse`): when false, finished exchanges
    /// are dropped before span building (contexts and parenting still run).
    build_spans: bool,
    /// Exchanges dropped unbuilt because of `build_spans == false`.
    exchanges_unbuilt: u64,
}

/// A connection turned out to be TLS (a handshake seen in clear, or PostgreSQL's answer to
/// SSLRequest/GSSENCRequest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsStart {
    pub pid: u32,
}

/// The first bytes of a connection are a TLS record: a handshake (`0x16`, version 3.x) for a
/// connection seen from its start; for one open before sonde started, any record type
/// (change-cipher-spec, alert, handshake, application data).
pub fn looks_like_tls_record(payload: &[u8], from_start: bool) -> bool {
    let [kind, major, minor, ..] = *payload else {
        return false;
    };
    let kind_ok = if from_start {
        kind == 0x16
    } else {
        (0x14..=0x17).contains(&kind)
    };
    kind_ok && major == 3 && minor <= 4
}

/// Too short to tell, but could start a TLS handshake record (nginx's one-byte `MSG_PEEK`).
pub fn may_become_tls_record(payload: &[u8]) -> bool {
    matches!(payload, [0x16] | [0x16, 0x03] | [0x16, 0x03, _])
}

fn egress_or_ingress_ts(direction: Direction, hdr: &Header, enter_ts_ns: u64) -> u64 {
    // A request or response "starts" when the sender calls write and "arrives" when the
    // receiver's read returns: writes use the entry time, reads the exit time.
    match direction {
        Direction::Egress => enter_ts_ns,
        Direction::Ingress => hdr.ts_ns,
    }
}

impl<H: HostView> Tracer<H> {
    pub fn new(config: TracerConfig, host: H, clock: Clock) -> Self {
        Self {
            parenting: Parenting::new(config.sampler),
            config,
            host,
            clock,
            conns: ConnTable::default(),
            spans: Vec::new(),
            commands: Vec::new(),
            stats: TracerStats::default(),
            outputs: Vec::new(),
            exited: Vec::new(),
            tls_started: Vec::new(),
            tls_untraceable: HashSet::new(),
            build_spans: true,
            exchanges_unbuilt: 0,
        }
    }

    /// Benchmarking only: `false` drops each finished exchange before its span is built, so
    /// a run measures capture + parsing + connection tracking without span building.
    pub fn set_build_spans(&mut self, build: bool) {
        self.build_spans = build;
    }

    /// Finished exchanges dropped unbuilt (see [`Tracer::set_build_spans`]).
    pub fn exchanges_unbuilt(&self) -> u64 {
        self.exchanges_unbuilt
    }

    /// TLS connections seen starting since the last call.
    pub fn take_tls_started(&mut self) -> Vec<TlsStart> {
        std::mem::take(&mut self.tls_started)
    }

    /// The daemon found that `pid` has no readable TLS library (Go, rustls, no symbols...):
    /// its TLS connections are untracked (their ciphertext is of no use) now and from now on.
    pub fn set_tls_untraceable(&mut self, pid: u32) {
        self.tls_untraceable.insert(pid);
        let ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, e)| {
                e.pid == pid && e.data.ciphertext && matches!(e.data.proto, Proto::Unknown)
            })
            .map(|(id, _)| id)
            .collect();
        for id in ids {
            self.ignore(id);
        }
    }

    /// A connection's bytes turned out to be ciphertext: keep it for the plaintext (or
    /// untrack it if its process's TLS cannot be read).
    fn tls_started(&mut self, id: ConnId) {
        let Some(entry) = self.conns.get_mut(id) else {
            return;
        };
        entry.data.ciphertext = true;
        entry.data.proto = Proto::Unknown;
        entry.data.in_flight.clear();
        let pid = entry.pid;
        self.tls_started.push(TlsStart { pid });
        if self.tls_untraceable.contains(&pid) {
            self.ignore(id);
        }
    }

    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    pub fn stats(&self) -> TracerStats {
        TracerStats {
            connections_open: self.conns.len(),
            spans_parent_ambiguous: self.parenting.ambiguous(),
            spans_relinked_late: self.parenting.relinked(),
            ..self.stats.clone()
        }
    }

    /// Kernel table changes requested since the last call.
    pub fn take_commands(&mut self) -> Vec<KernelCommand> {
        std::mem::take(&mut self.commands)
    }

    pub fn count_decode_error(&mut self) {
        self.stats.decode_errors += 1;
    }

    /// Spans finished since the last call, with the pid of their process.
    pub fn take_spans(&mut self) -> Vec<(u32, OwnSpan)> {
        // The next batch starts at this one's size instead of growing (and copying) from empty.
        let capacity = self.spans.len();
        let mut spans = std::mem::replace(&mut self.spans, Vec::with_capacity(capacity));
        if self.parenting.has_late_links() {
            for (_, span) in &mut spans {
                self.parenting
                    .relink(&mut span.trace_id, &span.span_id, &mut span.parent_span_id);
            }
            self.parenting.batch_left();
        }
        spans
    }

    /// Groups spans under their processes' resources, ready for export: sonde's own spans
    /// as they were built, and `released` (spans that waited for the SDK merge, as OTLP).
    /// Processes that exited are forgotten afterwards (their last spans still needed their
    /// resource).
    pub fn group(
        &mut self,
        own: Vec<(u32, OwnSpan)>,
        released: Vec<(u32, Span)>,
    ) -> (Vec<OwnBatch>, Vec<ResourceSpans>) {
        let own = group::group(own, |pid| self.host.resource(pid))
            .into_iter()
            .map(|(resource, spans)| OwnBatch { resource, spans })
            .collect();
        let released = group::group(released, |pid| self.host.resource(pid))
            .into_iter()
            .map(|(resource, spans)| group::resource_spans(resource, spans))
            .collect();
        for pid in self.exited.drain(..) {
            self.host.forget_process(pid);
        }
        (own, released)
    }

    /// The resource sonde gives `pid`'s spans (to enrich what its SDK sends).
    pub fn resource_of(&mut self, pid: u32) -> Resource {
        self.host.resource(pid)
    }

    /// Whether `pid`'s environment says it exports OTLP to sonde's receiver: an SDK process
    /// before its first export (its first requests must be held for merging too).
    pub fn is_sdk_candidate(&mut self, pid: u32) -> bool {
        if self.config.own_ports.is_empty() {
            return false;
        }
        let info = self.host.process(pid);
        info.otlp_endpoint_ports
            .iter()
            .any(|p| self.config.own_ports.contains(p))
            || (info.otlp_default_endpoint
                && (self.config.own_ports.contains(&4317) || self.config.own_ports.contains(&4318)))
    }

    pub fn pending_spans(&self) -> usize {
        self.spans.len()
    }

    /// Trace ids of the server requests still in flight (their eBPF spans, held for merging,
    /// wait for the request's end: see `Merger::poll`).
    pub fn open_server_traces(&self) -> HashSet<Vec<u8>> {
        self.conns
            .iter()
            .filter(|(_, e)| e.data.role == Role::Server)
            .flat_map(|(_, e)| e.data.in_flight.values())
            // A request a late link moved is open under its client's trace.
            .map(|ctx| self.parenting.current_trace(ctx.trace_id).0.to_vec())
            .collect()
    }

    /// Housekeeping on a timer: forget unclaimed cross-process registrations.
    pub fn tick(&mut self, now_monotonic_ns: u64) {
        self.parenting.expire(now_monotonic_ns);
        // Processes that exited are forgotten at the next export; without spans, here.
        if self.spans.is_empty() {
            for pid in self.exited.drain(..) {
                self.host.forget_process(pid);
            }
        }
    }

    /// A connection that was open before sonde started (found in /proc).
    pub fn adopt_existing(&mut self, pid: u32, fd: i32, role: Role, endpoints: Endpoints) {
        if self.conns.id_of(pid, fd).is_some() || !self.selected(pid, endpoints) {
            return;
        }
        let _ = self.host.process(pid);
        self.insert_conn(pid, fd, role, endpoints, false);
        self.commands.push(KernelCommand::Track {
            pid,
            fd,
            role,
            capture_bytes: 0,
        });
    }

    fn insert_conn(
        &mut self,
        pid: u32,
        fd: i32,
        role: Role,
        endpoints: Endpoints,
        from_start: bool,
    ) {
        self.conns.insert(
            pid,
            fd,
            Conn {
                role,
                endpoints,
                from_start,
                proto: Proto::Unknown,
                in_flight: HashMap::default(),
                ciphertext: false,
            },
        );
    }

    /// `fd` no longer names its connection (closed, or replaced by dup2); the connection ends
    /// with its last fd.
    fn release_fd(&mut self, pid: u32, fd: i32, tid: u32, ts_ns: u64) {
        if let Released::Last(id) = self.conns.release_fd(pid, fd) {
            self.finish(id, tid, ts_ns);
        }
    }

    fn selected(&mut self, pid: u32, endpoints: Endpoints) -> bool {
        // Clients of sonde's own receiver and metrics endpoint on this host are never traced.
        if let Some(remote) = endpoints.remote
            && self.config.own_ports.contains(&remote.port())
            && (remote.ip().is_loopback()
                || remote.ip().is_unspecified()
                || endpoints.local.is_some_and(|l| l.ip() == remote.ip()))
        {
            return false;
        }
        let sel = &self.config.selection;
        if !sel.ports.is_empty() {
            let ports = [
                endpoints.local.map(|a| a.port()),
                endpoints.remote.map(|a| a.port()),
            ];
            if !ports.iter().flatten().any(|p| sel.ports.contains(p)) {
                return false;
            }
        }
        if !self.config.selection.executables.is_empty() {
            let exe = self.host.process(pid).executable.clone();
            if !self.config.selection.executables.contains(&exe) {
                return false;
            }
        }
        true
    }

    pub fn on_event(&mut self, event: KernelEvent<'_>) {
        self.stats.events += 1;
        match event {
            KernelEvent::Connection {
                hdr,
                role,
                local,
                remote,
                comm,
            } => {
                self.host.process_seen(hdr.pid, &comm);
                self.on_connection(hdr, role, local, remote)
            }
            KernelEvent::Data {
                hdr,
                direction,
                enter_ts_ns,
                total_len,
                offset,
                payload,
                last,
                source,
            } => {
                self.stats.data_bytes += payload.len() as u64;
                let lost_after = if last {
                    total_len.saturating_sub(u64::from(offset) + payload.len() as u64)
                } else {
                    0
                };
                let ts = egress_or_ingress_ts(direction, &hdr, enter_ts_ns);
                self.on_data(hdr, direction, payload, lost_after, ts, source);
            }
            KernelEvent::Close(hdr) => {
                self.release_fd(hdr.pid, hdr.fd, hdr.tid, hdr.ts_ns);
            }
            KernelEvent::Dup { hdr, old_fd } => {
                // The probes never report dup2(fd, fd), which changes nothing.
                if old_fd == hdr.fd {
                    return;
                }
                // dup2/dup3 onto an fd that named another connection closes that one.
                self.release_fd(hdr.pid, hdr.fd, hdr.tid, hdr.ts_ns);
                if !self.conns.dup(hdr.pid, old_fd, hdr.fd) {
                    self.commands.push(KernelCommand::Untrack {
                        pid: hdr.pid,
                        fd: hdr.fd,
                    });
                }
            }
            KernelEvent::ProcessExit(hdr) => {
                let pid = hdr.pid;
                for fd in self.conns.fds_of(pid) {
                    self.commands.push(KernelCommand::Untrack { pid, fd });
                    self.release_fd(pid, fd, hdr.tid, hdr.ts_ns);
                }
                self.parenting.process_exited(pid);
                // Its last spans still need its resource: forget it after the next flush.
                self.exited.push(pid);
            }
        }
    }

    fn on_connection(
        &mut self,
        hdr: Header,
        role: Role,
        local: Option<SocketAddr>,
        remote: Option<SocketAddr>,
    ) {
        tracing::debug!(
            pid = hdr.pid,
            fd = hdr.fd,
            ?role,
            ?local,
            ?remote,
            "connection"
        );
        // The fd was reused without us seeing a close: end the old connection.
        self.release_fd(hdr.pid, hdr.fd, hdr.tid, hdr.ts_ns);
        let mut endpoints = Endpoints { local, remote };
        let local_known = local.is_some_and(|l| !l.ip().is_unspecified());
        if !local_known || remote.is_none() {
            match self.host.endpoints(hdr.pid, hdr.fd) {
                Some(ep) => {
                    endpoints.local = Some(ep.local);
                    endpoints.remote = endpoints.remote.or(Some(ep.remote));
                }
                None if remote.is_none() => match self.host.sole_listener(hdr.pid) {
                    // An accept that began before sonde attached, on a connection already
                    // gone from /proc: the process's one TCP listener is its local end.
                    Some(listener) if role == Role::Server => endpoints.local = Some(listener),
                    _ => {
                        // No TCP socket behind the fd: a Unix socket, or gone. Not ours.
                        self.commands.push(KernelCommand::Untrack {
                            pid: hdr.pid,
                            fd: hdr.fd,
                        });
                        self.stats.connections_ignored += 1;
                        return;
                    }
                },
                None => {}
            }
        }
        if !self.selected(hdr.pid, endpoints) {
            self.commands.push(KernelCommand::Untrack {
                pid: hdr.pid,
                fd: hdr.fd,
            });
            self.stats.connections_ignored += 1;
            return;
        }
        self.insert_conn(hdr.pid, hdr.fd, role, endpoints, true);
    }

    fn ignore(&mut self, id: ConnId) {
        if let Some(entry) = self.conns.get_mut(id) {
            entry.data.proto = Proto::Ignored;
            if entry.data.role == Role::Server {
                for ctx in entry.data.in_flight.values() {
                    self.parenting.request_abandoned(entry.pid, ctx.span_id);
                }
            }
            entry.data.in_flight.clear();
            for fd in &entry.fds {
                self.commands.push(KernelCommand::Untrack {
                    pid: entry.pid,
                    fd: *fd,
                });
            }
        }
        self.stats.connections_ignored += 1;
    }

    /// Picks the protocol of a connection from its first captured bytes, asking the
    /// registered protocols in order.
    fn detect(&mut self, id: ConnId, direction: Direction, payload: &[u8]) {
        let Some(entry) = self.conns.get(id) else {
            return;
        };
        let (pid, role, from_start) = (entry.pid, entry.data.role, entry.data.from_start);
        // Who sends first: a client writes (egress), a server reads (ingress).
        let request_side = matches!(
            (role, direction),
            (Role::Client, Direction::Egress) | (Role::Server, Direction::Ingress)
        );
        if !request_side {
            if !from_start {
                // A pre-existing connection seen mid-response: wait for the next request.
                return;
            }
            self.ignore(id);
            return;
        }
        match Parser::detect(payload, entry.data.side(), from_start) {
            Detection::Found(parser) => {
                if let Some(capture_bytes) = parser.capture_bytes(&self.config.protocols) {
                    for fd in &entry.fds {
                        self.commands.push(KernelCommand::Track {
                            pid,
                            fd: *fd,
                            role,
                            capture_bytes,
                        });
                    }
                }
                if let Some(entry) = self.conns.get_mut(id) {
                    entry.data.proto = Proto::Parsing(parser);
                }
            }
            Detection::NeedMore => {}
            Detection::None => self.ignore(id),
        }
    }

    fn on_data(
        &mut self,
        hdr: Header,
        direction: Direction,
        payload: &[u8],
        lost_after: u64,
        ts_ns: u64,
        source: Source,
    ) {
        let Some(id) = self.conns.id_of(hdr.pid, hdr.fd) else {
            return;
        };
        // One connection lookup on the common path (a parsing connection): a data event
        // comes per syscall, and each lookup is a hash of the id.
        let Some(entry) = self.conns.get_mut(id) else {
            return;
        };
        if entry.data.ciphertext && source == Source::Syscall {
            return;
        }
        if source == Source::TlsPlaintext {
            // Plaintext on a connection whose handshake was never seen (open before sonde
            // started): from now on its syscall bytes are ciphertext.
            entry.data.ciphertext = true;
        }
        let entry = if matches!(entry.data.proto, Proto::Unknown) {
            // A connection's first bytes: TLS, or which protocol.
            if self.config.tls_plaintext && source == Source::Syscall {
                if may_become_tls_record(payload) {
                    return; // a one-byte MSG_PEEK (nginx): wait for the record
                }
                if looks_like_tls_record(payload, entry.data.from_start) {
                    self.tls_started(id);
                    return;
                }
            }
            if payload.is_empty() {
                return;
            }
            self.detect(id, direction, payload);
            let Some(entry) = self.conns.get_mut(id) else {
                return;
            };
            entry
        } else {
            entry
        };
        let conn = &mut entry.data;
        let request_dir = matches!(
            (conn.role, direction),
            (Role::Client, Direction::Egress)
                | (Role::Server, Direction::Ingress)
                | (Role::Unknown, Direction::Ingress)
        );
        let Proto::Parsing(parser) = &mut conn.proto else {
            return;
        };
        let mut outputs = std::mem::take(&mut self.outputs);
        parser.feed(
            Chunk {
                direction: if request_dir {
                    protocols::Direction::Request
                } else {
                    protocols::Direction::Response
                },
                bytes: payload,
                lost_after,
                seen: Seen {
                    ts_ns,
                    tid: hdr.tid,
                },
                source,
            },
            &mut outputs,
        );
        self.on_outputs(id, &mut outputs, ts_ns);
        self.outputs = outputs;
    }

    /// The connection ended (its last fd closed, or its process exited): flush what its
    /// parser holds, then forget it.
    fn finish(&mut self, id: ConnId, tid: u32, ts_ns: u64) {
        let Some(entry) = self.conns.get_mut(id) else {
            return;
        };
        if let Proto::Parsing(mut parser) = std::mem::replace(&mut entry.data.proto, Proto::Ignored)
        {
            let mut outputs = std::mem::take(&mut self.outputs);
            parser.close(Seen { ts_ns, tid }, &mut outputs);
            self.on_outputs(id, &mut outputs, ts_ns);
            self.outputs = outputs;
        }
        let Some(entry) = self.conns.remove(id) else {
            return;
        };
        if entry.data.role == Role::Client {
            self.parenting.connection_closed(entry.data.endpoints);
        }
        // Requests never answered end with their connection.
        if entry.data.role == Role::Server {
            for ctx in entry.data.in_flight.values() {
                self.parenting.request_abandoned(entry.pid, ctx.span_id);
            }
        }
    }

    fn emit(&mut self, pid: u32, parts: SpanParts) {
        if !parts.ctx.sampled {
            self.stats.spans_unsampled += 1;
            return;
        }
        self.stats.spans += 1;
        self.spans.push((pid, parts.into_span()));
    }

    /// What a connection's parser reported: span contexts for operations that started,
    /// spans for exchanges that completed, and giving up.
    fn on_outputs(&mut self, id: ConnId, outputs: &mut Vec<Output<AnyExchange>>, now_ns: u64) {
        for output in outputs.drain(..) {
            // One connection lookup per output; the span is emitted once it is released.
            let Some(entry) = self.conns.get_mut(id) else {
                return;
            };
            let (pid, side, endpoints) = (entry.pid, entry.data.side(), entry.data.endpoints);
            match output {
                Output::Started {
                    seq,
                    first,
                    traceparent,
                } => {
                    let ctx =
                        self.parenting
                            .started(pid, side, endpoints, first, traceparent.as_deref());
                    entry.data.in_flight.insert(seq, ctx);
                }
                Output::Done {
                    seq,
                    first,
                    exchange,
                } => {
                    let started = entry.data.in_flight.remove(&seq);
                    let ciphertext = entry.data.ciphertext;
                    let ctx = self.parenting.done(pid, side, first, started);
                    if !self.build_spans {
                        self.exchanges_unbuilt += 1;
                        continue;
                    }
                    let mut parts = exchange.span_parts(
                        ctx,
                        &MapContext {
                            side,
                            endpoints,
                            routes: &self.config.routes,
                            clock: &self.clock,
                            now_ns,
                        },
                    );
                    if ciphertext {
                        // Read through the TLS uprobes: https (no-op for other protocols).
                        crate::trace::http::into_https(&mut parts);
                    }
                    self.emit(pid, parts);
                }
                Output::GiveUp(GiveUp::Encrypted) if self.config.tls_plaintext => {
                    // Keep the socket: its plaintext comes from the TLS uprobes and is
                    // detected afresh; the ciphertext is dropped.
                    self.tls_started(id);
                    return;
                }
                Output::GiveUp(GiveUp::Encrypted | GiveUp::NotThisProtocol) => {
                    self.ignore(id);
                    return;
                }
            }
        }
    }
}
