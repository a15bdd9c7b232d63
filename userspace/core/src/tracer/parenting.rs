//! The context and parenting policy: which trace and parent each span gets, decided when its
//! operation starts (`traceparent` on an incoming request, then a local client on the
//! mirrored 4-tuple, then a new root; a client call is a child of the request its thread is
//! serving; on an event loop or a helper thread, a child of its process's one request in
//! flight, or of none when several are), and the sampling decision that travels with it. The rules and their limits are
//! in ARCHITECTURE.md ("Parenting rules"); the bookkeeping is `trace::correlate`.
//!
//! Must never: look at bytes or build spans.
use crate::{
    protocols::{Seen, Side},
    trace::{
        context::{IdGenerator, SpanContext, SpanId, TraceId, parse_traceparent},
        correlate::{Correlator, Parent},
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
}

impl Parenting {
    pub fn new(sampler: Sampler) -> Self {
        Self {
            ids: IdGenerator::default(),
            correlator: Correlator::default(),
            sampler,
            ambiguous: 0,
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
                if let (Some(l), Some(r)) = (endpoints.local, endpoints.remote) {
                    self.correlator.register_outgoing(l, r, &ctx, first.ts_ns);
                }
                ctx
            }
            Side::Server => {
                let from_local_client = match (endpoints.local, endpoints.remote) {
                    (Some(l), Some(r)) => self.correlator.take_incoming(l, r, first.ts_ns),
                    _ => None,
                };
                let ctx = if let Some((trace, parent, sampled)) =
                    traceparent.and_then(parse_traceparent)
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
    }

    /// Context for a client call starting on `tid`: a child of the request that thread serves,
    /// or on an event loop of the one request in flight (see `trace::correlate`).
    fn client_context(&mut self, pid: u32, tid: u32) -> SpanContext {
        match self.correlator.parent(pid, tid) {
            Parent::Request(trace, parent, sampled) => self.child(trace, parent, sampled),
            Parent::None => self.root(),
            Parent::Ambiguous => {
                self.ambiguous += 1;
                self.root()
            }
        }
    }

    /// A new trace, sampled by the configured sampler.
    fn root(&mut self) -> SpanContext {
        let ctx = self.ids.root();
        SpanContext {
            sampled: self.sampler.sample(&ctx.trace_id, None),
            ..ctx
        }
    }

    /// A child of `parent`, whose sampling decision a parent-based sampler follows.
    fn child(&mut self, trace: TraceId, parent: SpanId, parent_sampled: bool) -> SpanContext {
        let ctx = self.ids.child_of(trace, parent);
        SpanContext {
            sampled: self.sampler.sample(&trace, Some(parent_sampled)),
            ..ctx
        }
    }
}
