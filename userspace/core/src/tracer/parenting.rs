//! The context and parenting policy: which trace and parent each span gets, decided when its
//! operation starts (`traceparent` on an incoming request, then a local client on the
//! mirrored 4-tuple, then a new root; a client call is a child of the request its thread is
//! serving; on an event loop or a helper thread, a child of its process's one request in
//! flight, or of none when several are), and the sampling decision that travels with it. The rules and their limits are
//! in ARCHITECTURE.md ("Parenting rules"); the bookkeeping is `trace::correlate`. A server
//! span that became a root before its local client's write was seen is moved under that
//! client span afterwards: [`Parenting::relink`] rewrites the ids of its trace's finished
//! spans before they leave.
//!
//! Must never: look at bytes or build spans.
use rustc_hash::FxHashMap;

use crate::{
    protocols::{Seen, Side},
    trace::{
        context::{IdGenerator, SpanContext, SpanId, TraceId, parse_traceparent},
        correlate::{Correlator, Incoming, LateLink, Parent},
        http::Endpoints,
        sampler::Sampler,
    },
};

pub struct Parenting {
    ids: IdGenerator,
    correlator: Correlator,
    sampler: Sampler,
    /// Client calls left without a parent: several requests of their process in flight.
    ambiguous: u64,
    /// Server trace -> the late link that moves it under a client span, until the server
    /// span has left (plus one batch, for spans of its trace that end after it).
    late_links: FxHashMap<TraceId, PendingLink>,
    /// Server spans moved under their client span by a late link.
    relinked: u64,
}

struct PendingLink {
    link: LateLink,
    at_ns: u64,
    /// Batches taken since the server span left (0: it has not): the link stays for one more
    /// batch, for spans of its trace that end after it.
    batches_since_server_left: u8,
}

/// Bound on late links waiting for their server span (each is a request in flight).
const MAX_LATE_LINKS: usize = 4096;
/// A late link whose server span never ended (its end was lost) goes after this long.
const LATE_LINK_MAX_AGE_NS: u64 = 600_000_000_000;

impl Parenting {
    pub fn new(sampler: Sampler) -> Self {
        Self {
            ids: IdGenerator::default(),
            correlator: Correlator::default(),
            sampler,
            ambiguous: 0,
            late_links: FxHashMap::default(),
            relinked: 0,
        }
    }

    /// Context of an operation that just started on `pid`'s connection: its first request
    /// byte was seen as `first`.
    pub fn started(
        &mut self,
        pid: u32,
        side: Side,
        endpoints: Endpoints,
        first: Seen,
        traceparent: Option<&[u8]>,
    ) -> SpanContext {
        match side {
            Side::Client => {
                let ctx = self.client_context(pid, first.tid);
                if let (Some(l), Some(r)) = (endpoints.local, endpoints.remote)
                    && let Some(link) = self.correlator.register_outgoing(l, r, &ctx, first.ts_ns)
                {
                    if self.late_links.len() >= MAX_LATE_LINKS {
                        self.late_links.clear();
                    }
                    self.late_links.insert(
                        link.server_trace,
                        PendingLink {
                            link,
                            at_ns: first.ts_ns,
                            batches_since_server_left: 0,
                        },
                    );
                }
                ctx
            }
            Side::Server => {
                // The correlator's queue is consulted even with a `traceparent` (which wins),
                // so that the connection's later requests stay paired with their writes.
                let incoming = match (endpoints.local, endpoints.remote) {
                    (Some(l), Some(r)) => self.correlator.take_incoming(l, r, first.ts_ns),
                    _ => Incoming::Unmatched(None),
                };
                let ids = &mut self.ids;
                let sampler = &self.sampler;
                let ctx = if let Some((trace, parent, sampled)) =
                    traceparent.and_then(parse_traceparent)
                {
                    SpanContext {
                        remote_parent: true,
                        ..child(ids, sampler, trace, parent, sampled)
                    }
                } else if let Some((trace, parent, sampled)) = incoming.client() {
                    child(ids, sampler, trace, parent, sampled)
                } else {
                    let root = root(ids, sampler);
                    incoming.became_root(&root);
                    root
                };
                self.correlator.begin_serving(first.tid, pid, &ctx);
                ctx
            }
        }
    }

    /// Context of an operation that completed: the one decided at its start, or (its start
    /// was not seen) a child of what its thread serves, or a root on the server side. A
    /// server's thread stops serving it.
    pub fn done(
        &mut self,
        pid: u32,
        side: Side,
        first: Seen,
        started: Option<SpanContext>,
    ) -> SpanContext {
        let ctx = match (started, side) {
            (Some(ctx), _) => ctx,
            (None, Side::Client) => self.client_context(pid, first.tid),
            (None, Side::Server) => self.root(),
        };
        if side == Side::Server {
            self.correlator.end_serving(first.tid, ctx.span_id);
        }
        ctx
    }

    /// A client connection ended: its queued cross-process registrations go.
    pub fn connection_closed(&mut self, endpoints: Endpoints) {
        if let (Some(l), Some(r)) = (endpoints.local, endpoints.remote) {
            self.correlator.forget_connection(l, r);
        }
    }

    /// A server request that will never complete (its connection closed or was dropped).
    pub fn request_abandoned(&mut self, pid: u32, span_id: SpanId) {
        self.correlator.end_request(pid, span_id);
    }

    /// The trace `trace`'s spans leave under: the client's when a late link moved it.
    pub fn current_trace(&self, trace: TraceId) -> TraceId {
        self.late_links
            .get(&trace)
            .map_or(trace, |p| p.link.client_trace)
    }

    /// Whether a late link waits for spans of its trace ([`Parenting::relink`]).
    pub fn has_late_links(&self) -> bool {
        !self.late_links.is_empty()
    }

    /// Moves a finished span whose trace a late link claimed under the client span: its
    /// trace id becomes the client's, and the server span gets the client span as parent.
    /// Called on every span of a batch before it leaves, while late links are pending.
    pub fn relink(
        &mut self,
        trace_id: &mut [u8; 16],
        span_id: &[u8; 8],
        parent: &mut Option<[u8; 8]>,
    ) {
        let Some(pending) = self.late_links.get_mut(&TraceId(*trace_id)) else {
            return;
        };
        let link = pending.link;
        *trace_id = link.client_trace.0;
        if *span_id == link.server_span.0 && parent.is_none() {
            *parent = Some(link.client_span.0);
            pending.batches_since_server_left = 1;
            self.relinked += 1;
        }
    }

    /// A batch of spans was relinked and leaves: late links whose server span left in the
    /// batch before go (the spans of its trace have ended by then).
    pub fn batch_left(&mut self) {
        self.late_links
            .retain(|_, p| match p.batches_since_server_left {
                0 => true,
                1 => {
                    p.batches_since_server_left = 2;
                    true
                }
                _ => false,
            });
    }

    /// Server spans moved under their local client span after the client's write was seen.
    pub fn relinked(&self) -> u64 {
        self.relinked
    }

    /// How many client calls got no parent because it could not be known.
    pub fn ambiguous(&self) -> u64 {
        self.ambiguous
    }

    pub fn process_exited(&mut self, pid: u32) {
        self.correlator.forget_thread_of(pid);
    }

    /// Forgets cross-process registrations nobody claimed.
    pub fn expire(&mut self, now_ns: u64) {
        self.correlator.expire(now_ns, 30_000_000_000);
        self.late_links
            .retain(|_, p| now_ns.saturating_sub(p.at_ns) < LATE_LINK_MAX_AGE_NS);
    }

    /// Context for a client call starting on `tid`: a child of the request that thread serves,
    /// or on an event loop of the one request in flight (see `trace::correlate`).
    fn client_context(&mut self, pid: u32, tid: u32) -> SpanContext {
        match self.correlator.parent(pid, tid) {
            Parent::Request(trace, parent, sampled) => {
                child(&mut self.ids, &self.sampler, trace, parent, sampled)
            }
            Parent::None => self.root(),
            Parent::Ambiguous => {
                self.ambiguous += 1;
                self.root()
            }
        }
    }

    fn root(&mut self) -> SpanContext {
        root(&mut self.ids, &self.sampler)
    }
}

/// A new trace, sampled by the configured sampler.
fn root(ids: &mut IdGenerator, sampler: &Sampler) -> SpanContext {
    let ctx = ids.root();
    SpanContext {
        sampled: sampler.sample(&ctx.trace_id, None),
        ..ctx
    }
}

/// A child of `parent`, whose sampling decision a parent-based sampler follows.
fn child(
    ids: &mut IdGenerator,
    sampler: &Sampler,
    trace: TraceId,
    parent: SpanId,
    parent_sampled: bool,
) -> SpanContext {
    let ctx = ids.child_of(trace, parent);
    SpanContext {
        sampled: sampler.sample(&trace, Some(parent_sampled)),
        ..ctx
    }
}
