//! The heart of the daemon: decoded kernel events in, spans out.
//!
//! Owns the connection table (one entry per traced socket: its endpoints, its protocol parser
//! and the span contexts of its in-flight requests), decides each connection's protocol from
//! its first bytes, feeds the parsers, builds spans and groups them per process. It does no
//! kernel I/O itself: changes it wants in the kernel's socket table come out as
//! [`KernelCommand`]s, and what it needs from /proc comes through [`HostView`], so it can be
//! driven by recorded events in tests.
use std::{collections::HashSet, net::SocketAddr};

// The connection and fd tables are looked up for every ring-buffer record: a fast,
// non-cryptographic hash (keys are pids, fds and ids we assign, not attacker-chosen).
use rustc_hash::FxHashMap as HashMap;

use opentelemetry_proto::tonic::{
    common::v1::InstrumentationScope,
    trace::v1::{ResourceSpans, ScopeSpans, Span},
};

use crate::{
    capture::{
        event::{Direction, Header, KernelEvent, Role},
        sockets::{SocketResolver, TcpEndpoints},
    },
    clock::Clock,
    trace::{
        context::{IdGenerator, SpanContext, SpanId, TraceId, parse_traceparent},
        correlate::Correlator,
        http::{self, Endpoints},
        postgres,
        resource::{ProcessInfo, ResourceCache},
        route::RouteTemplates,
        sampler::Sampler,
        span::SpanParts,
    },
};

/// What the tracer needs to know about the host, behind a trait so tests can fake /proc.
pub trait HostView {
    fn endpoints(&mut self, pid: u32, fd: i32) -> Option<TcpEndpoints>;
    /// The single TCP listening address of `pid`, if it has exactly one.
    fn sole_listener(&mut self, pid: u32) -> Option<SocketAddr>;
    fn process(&mut self, pid: u32) -> &ProcessInfo;
    /// Records a process seen by the kernel, named `comm` if /proc no longer has it.
    fn process_seen(&mut self, pid: u32, comm: &str);
    fn resource(&mut self, pid: u32) -> opentelemetry_proto::tonic::resource::v1::Resource;
    fn forget_process(&mut self, pid: u32);
}

/// The real host: /proc.
pub struct ProcHost {
    pub sockets: SocketResolver,
    pub resources: ResourceCache,
}

impl HostView for ProcHost {
    fn endpoints(&mut self, pid: u32, fd: i32) -> Option<TcpEndpoints> {
        self.sockets.lookup(pid, fd)
    }
    fn process(&mut self, pid: u32) -> &ProcessInfo {
        self.resources.info(pid)
    }
    fn sole_listener(&mut self, pid: u32) -> Option<SocketAddr> {
        self.sockets.sole_listener(pid)
    }
    fn process_seen(&mut self, pid: u32, comm: &str) {
        self.resources.info_or_comm(pid, comm);
    }
    fn resource(&mut self, pid: u32) -> opentelemetry_proto::tonic::resource::v1::Resource {
        self.resources.resource(pid)
    }
    fn forget_process(&mut self, pid: u32) {
        self.resources.forget(pid);
    }
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
    /// Capture size for PostgreSQL connections (long ORM queries).
    pub postgres_capture_bytes: u32,
    /// Head sampling (OTEL_TRACES_SAMPLER).
    pub sampler: Sampler,
    /// Ports of sonde's own OTLP receiver and metrics endpoint: connections to them on this host
    /// are never traced.
    pub own_ports: HashSet<u16>,
}

enum Proto {
    /// No payload seen yet.
    Unknown,
    Http(Box<sonde_http1::Connection>),
    Postgres(Box<sonde_postgres::Connection>),
    /// Not ours to parse (another protocol, the server side of PostgreSQL, encrypted).
    Ignored,
}

struct Conn {
    pid: u32,
    role: Role,
    endpoints: Endpoints,
    /// Seen from its first byte (false: open before sonde started).
    from_start: bool,
    proto: Proto,
    /// Span contexts of requests in flight, by the parser's sequence number.
    in_flight: HashMap<u64, SpanContext>,
    /// The process's fds naming this socket (more than one after dup).
    fds: Vec<i32>,
}

/// Identifies a connection independently of its fds (which dup multiplies and close reuses).
type ConnId = u64;

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
}

pub struct Tracer<H: HostView> {
    config: TracerConfig,
    host: H,
    clock: Clock,
    ids: IdGenerator,
    correlator: Correlator,
    conns: HashMap<ConnId, Conn>,
    fds: HashMap<(u32, i32), ConnId>,
    next_conn: ConnId,
    spans: Vec<(u32, Span)>,
    commands: Vec<KernelCommand>,
    stats: TracerStats,
    http_events: Vec<sonde_http1::Event>,
    pg_events: Vec<sonde_postgres::Event>,
    last_ts_ns: u64,
    /// Processes that exited since the last flush.
    exited: Vec<u32>,
    /// Processes that send SDK spans to the receiver (from the merger).
    sdk_pids: HashSet<u32>,
    /// Traces that went through a server span of an SDK process: their eBPF spans wait for
    /// the merger. Value: when marked (monotonic ns).
    marked: HashMap<TraceId, u64>,
    /// Local address of a connection to sonde's receiver -> the process that opened it.
    peer_pids: HashMap<SocketAddr, u32>,
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
            config,
            host,
            clock,
            ids: IdGenerator::default(),
            correlator: Correlator::default(),
            conns: HashMap::default(),
            fds: HashMap::default(),
            next_conn: 0,
            spans: Vec::new(),
            commands: Vec::new(),
            stats: TracerStats::default(),
            http_events: Vec::new(),
            pg_events: Vec::new(),
            last_ts_ns: 0,
            exited: Vec::new(),
            sdk_pids: HashSet::new(),
            marked: HashMap::default(),
            peer_pids: HashMap::default(),
        }
    }

    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    pub fn stats(&self) -> TracerStats {
        TracerStats {
            connections_open: self.conns.len(),
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
    pub fn take_spans(&mut self) -> Vec<(u32, Span)> {
        std::mem::take(&mut self.spans)
    }

    /// Groups spans under their processes' resources, ready for export. Processes that exited
    /// are forgotten afterwards (their last spans still needed their resource).
    pub fn group(&mut self, spans: Vec<(u32, Span)>) -> Vec<ResourceSpans> {
        let mut by_pid: HashMap<u32, Vec<Span>> = HashMap::default();
        for (pid, span) in spans {
            by_pid.entry(pid).or_default().push(span);
        }
        let mut out = Vec::with_capacity(by_pid.len());
        for (pid, spans) in by_pid {
            out.push(ResourceSpans {
                resource: Some(self.host.resource(pid)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "sonde".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            });
        }
        for pid in self.exited.drain(..) {
            self.host.forget_process(pid);
        }
        out
    }

    /// The resource sonde gives `pid`'s spans (to enrich what its SDK sends).
    pub fn resource_of(&mut self, pid: u32) -> opentelemetry_proto::tonic::resource::v1::Resource {
        self.host.resource(pid)
    }

    /// The process behind a connection to sonde's receiver, by the connection's local address.
    pub fn pid_of_receiver_peer(&self, peer: SocketAddr) -> Option<u32> {
        self.peer_pids.get(&peer).copied()
    }

    pub fn set_sdk_pids(&mut self, pids: HashSet<u32>) {
        self.sdk_pids = pids;
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

    /// Whether `trace_id` went through a server span of an SDK process.
    pub fn is_marked(&self, trace_id: &[u8]) -> bool {
        <[u8; 16]>::try_from(trace_id).is_ok_and(|t| self.marked.contains_key(&TraceId(t)))
    }

    pub fn pending_spans(&self) -> usize {
        self.spans.len()
    }

    /// Housekeeping on a timer: forget unclaimed cross-process registrations.
    pub fn tick(&mut self, now_monotonic_ns: u64) {
        self.correlator.expire(now_monotonic_ns, 30_000_000_000);
        // Marks only need to outlive the merge window of the requests that started them.
        self.marked
            .retain(|_, at| now_monotonic_ns.saturating_sub(*at) < 60_000_000_000);
        // Processes that exited are forgotten at the next export; without spans, here.
        if self.spans.is_empty() {
            for pid in self.exited.drain(..) {
                self.host.forget_process(pid);
            }
        }
        if self.peer_pids.len() > 65_536 {
            self.peer_pids.clear();
        }
    }

    /// A connection that was open before sonde started (found in /proc).
    pub fn adopt_existing(&mut self, pid: u32, fd: i32, role: Role, endpoints: Endpoints) {
        if self.fds.contains_key(&(pid, fd)) || !self.selected(pid, endpoints) {
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
        let id = self.next_conn;
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                pid,
                role,
                endpoints,
                from_start,
                proto: Proto::Unknown,
                in_flight: HashMap::default(),
                fds: vec![fd],
            },
        );
        self.fds.insert((pid, fd), id);
    }

    /// `fd` no longer names its connection (closed, or replaced by dup2); the connection ends
    /// with its last fd.
    fn release_fd(&mut self, pid: u32, fd: i32, tid: u32, ts_ns: u64) {
        let Some(id) = self.fds.remove(&(pid, fd)) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.fds.retain(|f| *f != fd);
        if conn.fds.is_empty() {
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
            } => {
                self.last_ts_ns = self.last_ts_ns.max(hdr.ts_ns);
                self.stats.data_bytes += payload.len() as u64;
                let lost_after = if last {
                    total_len.saturating_sub(u64::from(offset) + payload.len() as u64)
                } else {
                    0
                };
                let ts = egress_or_ingress_ts(direction, &hdr, enter_ts_ns);
                self.on_data(hdr, direction, payload, lost_after, ts);
            }
            KernelEvent::Close(hdr) => {
                self.last_ts_ns = self.last_ts_ns.max(hdr.ts_ns);
                self.release_fd(hdr.pid, hdr.fd, hdr.tid, hdr.ts_ns);
            }
            KernelEvent::Dup { hdr, old_fd } => {
                // dup2/dup3 onto an fd that named another connection closes that one.
                self.release_fd(hdr.pid, hdr.fd, hdr.tid, hdr.ts_ns);
                match self.fds.get(&(hdr.pid, old_fd)).copied() {
                    Some(id) => {
                        self.fds.insert((hdr.pid, hdr.fd), id);
                        if let Some(conn) = self.conns.get_mut(&id) {
                            conn.fds.push(hdr.fd);
                        }
                    }
                    None => self.commands.push(KernelCommand::Untrack {
                        pid: hdr.pid,
                        fd: hdr.fd,
                    }),
                }
            }
            KernelEvent::ProcessExit(hdr) => {
                let pid = hdr.pid;
                let keys: Vec<_> = self
                    .fds
                    .keys()
                    .filter(|(p, _)| *p == pid)
                    .copied()
                    .collect();
                for (p, fd) in keys {
                    self.commands.push(KernelCommand::Untrack { pid: p, fd });
                    self.release_fd(p, fd, hdr.tid, hdr.ts_ns);
                }
                self.correlator.forget_thread_of(pid);
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
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.proto = Proto::Ignored;
            conn.in_flight.clear();
            for fd in &conn.fds {
                self.commands.push(KernelCommand::Untrack {
                    pid: conn.pid,
                    fd: *fd,
                });
            }
        }
        self.stats.connections_ignored += 1;
    }

    /// Picks the protocol of a connection from its first captured bytes.
    fn detect(&mut self, id: ConnId, direction: Direction, payload: &[u8]) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (pid, role, from_start) = (conn.pid, conn.role, conn.from_start);
        // Who sends first: a client writes (egress), a server reads (ingress).
        let request_side = matches!(
            (role, direction),
            (Role::Client, Direction::Egress) | (Role::Server, Direction::Ingress)
        );
        let proto = if request_side && sonde_http1::looks_like_request(payload) {
            Some(Proto::Http(Box::new(if from_start {
                sonde_http1::Connection::new()
            } else {
                sonde_http1::Connection::new_unsynced()
            })))
        } else if request_side
            && (sonde_postgres::looks_like_startup(payload)
                || (!from_start && sonde_postgres::looks_like_frontend_message(payload)))
        {
            if role == Role::Server {
                // The PostgreSQL server's side of a connection whose client we trace (or not):
                // client spans come from the client side only, never twice.
                None
            } else {
                let pg = if from_start {
                    sonde_postgres::Connection::new()
                } else {
                    sonde_postgres::Connection::new_unsynced()
                };
                for fd in &conn.fds {
                    self.commands.push(KernelCommand::Track {
                        pid,
                        fd: *fd,
                        role,
                        capture_bytes: self.config.postgres_capture_bytes,
                    });
                }
                Some(Proto::Postgres(Box::new(pg)))
            }
        } else if !from_start && !request_side {
            // A pre-existing connection seen mid-response: wait for the next request.
            return;
        } else {
            None
        };
        match proto {
            Some(p) => {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.proto = p;
                }
            }
            None => self.ignore(id),
        }
    }

    fn on_data(
        &mut self,
        hdr: Header,
        direction: Direction,
        payload: &[u8],
        lost_after: u64,
        ts_ns: u64,
    ) {
        let Some(&id) = self.fds.get(&(hdr.pid, hdr.fd)) else {
            return;
        };
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if matches!(conn.proto, Proto::Unknown) {
            if payload.is_empty() {
                return;
            }
            self.detect(id, direction, payload);
        }
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let role = conn.role;
        let request_dir = matches!(
            (role, direction),
            (Role::Client, Direction::Egress)
                | (Role::Server, Direction::Ingress)
                | (Role::Unknown, Direction::Ingress)
        );
        match &mut conn.proto {
            Proto::Http(parser) => {
                let dir = if request_dir {
                    sonde_http1::Direction::Request
                } else {
                    sonde_http1::Direction::Response
                };
                let mut events = std::mem::take(&mut self.http_events);
                parser.feed(
                    dir,
                    payload,
                    lost_after,
                    sonde_http1::Seen {
                        ts_ns,
                        tid: hdr.tid,
                    },
                    &mut events,
                );
                self.on_http_events(id, &mut events, ts_ns);
                self.http_events = events;
            }
            Proto::Postgres(parser) => {
                let dir = if request_dir {
                    sonde_postgres::Direction::Frontend
                } else {
                    sonde_postgres::Direction::Backend
                };
                let mut events = std::mem::take(&mut self.pg_events);
                parser.feed(
                    dir,
                    payload,
                    lost_after,
                    sonde_postgres::Seen {
                        ts_ns,
                        tid: hdr.tid,
                    },
                    &mut events,
                );
                self.on_pg_events(id, &mut events, ts_ns);
                self.pg_events = events;
            }
            Proto::Unknown | Proto::Ignored => {}
        }
    }

    /// The connection ended (its last fd closed, or its process exited): flush what its
    /// parser holds, then forget it.
    fn finish(&mut self, id: ConnId, tid: u32, ts_ns: u64) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        match std::mem::replace(&mut conn.proto, Proto::Ignored) {
            Proto::Http(mut parser) => {
                let mut events = std::mem::take(&mut self.http_events);
                parser.close(sonde_http1::Seen { ts_ns, tid }, &mut events);
                self.on_http_events(id, &mut events, ts_ns);
                self.http_events = events;
            }
            Proto::Postgres(mut parser) => {
                let mut events = std::mem::take(&mut self.pg_events);
                parser.close(sonde_postgres::Seen { ts_ns, tid }, &mut events);
                let database = parser.database().map(str::to_owned);
                self.on_pg_events_with_db(id, &mut events, ts_ns, database);
                self.pg_events = events;
            }
            Proto::Unknown | Proto::Ignored => {}
        }
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        for fd in &conn.fds {
            self.fds.remove(&(conn.pid, *fd));
        }
        if conn.role == Role::Client
            && let (Some(l), Some(r)) = (conn.endpoints.local, conn.endpoints.remote)
        {
            self.correlator.forget_connection(l, r);
        }
    }

    fn emit(&mut self, pid: u32, parts: SpanParts) {
        if !parts.ctx.sampled {
            self.stats.spans_unsampled += 1;
            return;
        }
        self.stats.spans += 1;
        self.spans.push((pid, parts.into_otlp()));
    }

    /// Context for a client call starting on `tid`: a child of the request that thread serves.
    fn client_context(&mut self, pid: u32, tid: u32) -> SpanContext {
        match self.correlator.serving(pid, tid) {
            Some((trace, parent, sampled)) => self.child(trace, parent, sampled),
            None => self.root(),
        }
    }

    /// A new trace, sampled by the configured sampler.
    fn root(&mut self) -> SpanContext {
        let ctx = self.ids.root();
        SpanContext {
            sampled: self.config.sampler.sample(&ctx.trace_id, None),
            ..ctx
        }
    }

    /// A child of `parent`, whose sampling decision a parent-based sampler follows.
    fn child(&mut self, trace: TraceId, parent: SpanId, parent_sampled: bool) -> SpanContext {
        let ctx = self.ids.child_of(trace, parent);
        SpanContext {
            sampled: self.config.sampler.sample(&trace, Some(parent_sampled)),
            ..ctx
        }
    }

    fn on_http_events(&mut self, id: ConnId, events: &mut Vec<sonde_http1::Event>, now_ns: u64) {
        for event in events.drain(..) {
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            let (pid, role, endpoints) = (conn.pid, conn.role, conn.endpoints);
            match event {
                sonde_http1::Event::RequestHead { seq, head, first } => {
                    let ctx = if role == Role::Client {
                        let ctx = self.client_context(pid, first.tid);
                        if let (Some(l), Some(r)) = (endpoints.local, endpoints.remote) {
                            self.correlator.register_outgoing(l, r, &ctx, first.ts_ns);
                        }
                        ctx
                    } else {
                        let from_local_client = match (endpoints.local, endpoints.remote) {
                            (Some(l), Some(r)) => self.correlator.take_incoming(l, r),
                            _ => None,
                        };
                        let ctx = if let Some((trace, parent, sampled)) =
                            head.header("traceparent").and_then(parse_traceparent)
                        {
                            SpanContext {
                                remote_parent: true,
                                ..self.child(trace, parent, sampled)
                            }
                        } else if let Some((trace, parent, sampled)) = from_local_client {
                            self.child(trace, parent, sampled)
                        } else {
                            self.root()
                        };
                        self.correlator.begin_serving(first.tid, pid, &ctx);
                        ctx
                    };
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.in_flight.insert(seq, ctx);
                    }
                }
                sonde_http1::Event::Exchange(ex) => {
                    let ctx = self
                        .conns
                        .get_mut(&id)
                        .and_then(|c| c.in_flight.remove(&ex.seq))
                        .unwrap_or_else(|| self.root());
                    let parts = if role == Role::Client {
                        http::client_span(
                            &ex,
                            endpoints,
                            &self.config.routes,
                            ctx,
                            &self.clock,
                            now_ns,
                        )
                    } else {
                        self.correlator
                            .end_serving(ex.request_first.tid, ctx.span_id);
                        http::server_span(
                            &ex,
                            endpoints,
                            &self.config.routes,
                            ctx,
                            &self.clock,
                            now_ns,
                        )
                    };
                    self.emit(pid, parts);
                }
                sonde_http1::Event::NotHttp { .. } => {
                    self.ignore(id);
                    return;
                }
            }
        }
    }

    fn on_pg_events(&mut self, id: ConnId, events: &mut Vec<sonde_postgres::Event>, now_ns: u64) {
        if events.is_empty() {
            return;
        }
        let database = match self.conns.get(&id).map(|c| &c.proto) {
            Some(Proto::Postgres(p)) => p.database().map(str::to_owned),
            _ => None,
        };
        self.on_pg_events_with_db(id, events, now_ns, database);
    }

    fn on_pg_events_with_db(
        &mut self,
        id: ConnId,
        events: &mut Vec<sonde_postgres::Event>,
        now_ns: u64,
        database: Option<String>,
    ) {
        for event in events.drain(..) {
            let Some(conn) = self.conns.get(&id) else {
                return;
            };
            let (pid, endpoints) = (conn.pid, conn.endpoints);
            match event {
                sonde_postgres::Event::OperationStarted { seq, first } => {
                    let ctx = self.client_context(pid, first.tid);
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.in_flight.insert(seq, ctx);
                    }
                }
                sonde_postgres::Event::Operation(op) => {
                    let ctx = match self
                        .conns
                        .get_mut(&id)
                        .and_then(|c| c.in_flight.remove(&op.seq))
                    {
                        Some(ctx) => ctx,
                        None => self.client_context(pid, op.first.tid),
                    };
                    let parts = postgres::client_span(
                        &op,
                        database.as_deref(),
                        endpoints,
                        ctx,
                        &self.clock,
                        now_ns,
                    );
                    self.emit(pid, parts);
                }
                sonde_postgres::Event::Encrypted | sonde_postgres::Event::NotPostgres => {
                    self.ignore(id);
                    return;
                }
                sonde_postgres::Event::Startup { .. }
                | sonde_postgres::Event::Notification { .. } => {}
            }
        }
    }
}
