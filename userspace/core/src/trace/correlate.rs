//! Who is whose parent, decided from what the probes see, without touching bytes on the wire:
//!
//! - **In-process nesting**: while a thread is serving an HTTP request (from the request head
//!   until the response is complete), client calls it starts (database queries, outgoing
//!   HTTP) are children of that request's server span. This holds for thread-per-request
//!   servers (gunicorn sync and gthread workers, Django's runserver); event loops that
//!   multiplex requests on one thread (asyncio) are not nested (see ARCHITECTURE.md).
//! - **Across processes on one node**: a client request written on a connection whose other
//!   end is a traced server on this machine is queued under the connection's 4-tuple; the
//!   server side takes it when it reads the request, and its span becomes the client span's
//!   child.
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use super::context::{SpanContext, SpanId, TraceId};

#[derive(Clone, Copy, Debug)]
struct Serving {
    pid: u32,
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

#[derive(Clone, Copy, Debug)]
struct Outgoing {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    at_ns: u64,
}

#[derive(Default)]
pub struct Correlator {
    serving: HashMap<u32, Serving>,
    /// (client local, client remote) -> client spans written, oldest first.
    outgoing: HashMap<(SocketAddr, SocketAddr), VecDeque<Outgoing>>,
}

/// Bound on remembered outgoing requests per connection (pipelining depth we keep).
const MAX_QUEUED_PER_CONN: usize = 64;

impl Correlator {
    pub fn begin_serving(&mut self, tid: u32, pid: u32, ctx: &SpanContext) {
        let serving = Serving {
            pid,
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            sampled: ctx.sampled,
        };
        self.serving.insert(tid, serving);
    }

    /// Ends `span_id`'s claim on `tid` (a newer request on the thread keeps its own claim).
    pub fn end_serving(&mut self, tid: u32, span_id: SpanId) {
        if self.serving.get(&tid).is_some_and(|s| s.span_id == span_id) {
            self.serving.remove(&tid);
        }
    }

    /// The server span `tid` of `pid` is serving right now, if any: (trace, span, sampled).
    pub fn serving(&self, pid: u32, tid: u32) -> Option<(TraceId, SpanId, bool)> {
        self.serving
            .get(&tid)
            .filter(|s| s.pid == pid)
            .map(|s| (s.trace_id, s.span_id, s.sampled))
    }

    pub fn forget_thread_of(&mut self, pid: u32) {
        self.serving.retain(|_, s| s.pid != pid);
    }

    pub fn register_outgoing(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        ctx: &SpanContext,
        at_ns: u64,
    ) {
        let q = self.outgoing.entry((local, remote)).or_default();
        if q.len() >= MAX_QUEUED_PER_CONN {
            q.pop_front();
        }
        q.push_back(Outgoing {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            sampled: ctx.sampled,
            at_ns,
        });
    }

    /// For a server that read a request on (local, remote): the client span on this machine
    /// that wrote it, if the client side is traced.
    pub fn take_incoming(
        &mut self,
        server_local: SocketAddr,
        server_remote: SocketAddr,
    ) -> Option<(TraceId, SpanId, bool)> {
        let key = (server_remote, server_local);
        let q = self.outgoing.get_mut(&key)?;
        let hit = q.pop_front().map(|o| (o.trace_id, o.span_id, o.sampled));
        if q.is_empty() {
            self.outgoing.remove(&key);
        }
        hit
    }

    /// Drops what a client connection registered (it closed).
    pub fn forget_connection(&mut self, local: SocketAddr, remote: SocketAddr) {
        self.outgoing.remove(&(local, remote));
    }

    /// Drops outgoing entries nobody claimed within `max_age_ns` (the server is not traced).
    pub fn expire(&mut self, now_ns: u64, max_age_ns: u64) {
        self.outgoing.retain(|_, q| {
            q.retain(|o| now_ns.saturating_sub(o.at_ns) < max_age_ns);
            !q.is_empty()
        });
    }

    pub fn len(&self) -> (usize, usize) {
        (self.serving.len(), self.outgoing.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_claims_are_per_thread_and_per_process() {
        let mut c = Correlator::default();
        let (t, s1, s2) = (TraceId([1; 16]), SpanId([1; 8]), SpanId([2; 8]));
        let ctx = |s| SpanContext {
            trace_id: t,
            span_id: s,
            parent: None,
            remote_parent: false,
            sampled: true,
        };
        c.begin_serving(10, 100, &ctx(s1));
        assert_eq!(c.serving(100, 10), Some((t, s1, true)));
        assert_eq!(c.serving(101, 10), None);
        c.begin_serving(10, 100, &ctx(s2));
        c.end_serving(10, s1); // stale end does not remove the newer claim
        assert_eq!(c.serving(100, 10), Some((t, s2, true)));
        c.end_serving(10, s2);
        assert_eq!(c.serving(100, 10), None);
    }

    #[test]
    fn outgoing_matches_the_mirrored_tuple_in_order() {
        let mut c = Correlator::default();
        let cl: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let sv: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let ctx = |n: u8| SpanContext {
            trace_id: TraceId([n; 16]),
            span_id: SpanId([n; 8]),
            parent: None,
            remote_parent: false,
            sampled: n != 2,
        };
        c.register_outgoing(cl, sv, &ctx(1), 0);
        c.register_outgoing(cl, sv, &ctx(2), 0);
        assert_eq!(c.take_incoming(sv, cl).map(|x| x.1), Some(SpanId([1; 8])));
        assert_eq!(
            c.take_incoming(sv, cl),
            Some((TraceId([2; 16]), SpanId([2; 8]), false))
        );
        assert_eq!(c.take_incoming(sv, cl), None);
        c.register_outgoing(cl, sv, &ctx(3), 0);
        c.expire(10, 5);
        assert_eq!(c.take_incoming(sv, cl), None);
    }
}
