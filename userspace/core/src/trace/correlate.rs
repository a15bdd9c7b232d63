//! Who is whose parent, decided from what the probes see, without touching bytes on the wire:
//!
//! - **In-process nesting**: while a thread is serving an HTTP request (from the request head
//!   until the response is complete), client calls it starts (database queries, outgoing
//!   HTTP) are children of that request's server span. This holds for thread-per-request
//!   servers (gunicorn sync and gthread workers, Django's runserver).
//! - **Event loops and helper threads** (uvicorn, Django under ASGI): a thread that reads a
//!   request while still serving another is an event loop, and a thread that never served a
//!   request is a helper (asgiref's executor running sync views). A client call on either is a
//!   child of the process's server request when exactly one is in flight; with several in
//!   flight it cannot be known, so the call gets no parent ([`Parent::Ambiguous`], counted)
//!   rather than a possibly wrong one.
//! - **Across processes on one node**: a client request written on a connection whose other
//!   end is a traced server on this machine is queued under the connection's 4-tuple; the
//!   server side takes it when it reads the request, and its span becomes the client span's
//!   child. When the client's write record arrives after the server's read record (both are
//!   emitted at syscall exit, on different CPUs), the server span has already become a root:
//!   the write is matched to that read by time, and a [`LateLink`] says which root and trace
//!   move under the client span.
use std::{collections::VecDeque, net::SocketAddr};

use hashbrown::HashMap;
use rustc_hash::FxHashMap;
use smallvec::SmallVec;

use super::context::{SpanContext, SpanId, TraceId};

#[derive(Clone, Copy, Debug)]
struct Serving {
    pid: u32,
    tid: u32,
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
}

/// A process's requests in flight: inline up to two (a thread-per-request server between two
/// requests, or pipelining), so the common case allocates nothing per request.
type InFlight = SmallVec<[Serving; 2]>;

#[derive(Clone, Copy, Debug)]
struct Outgoing {
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    at_ns: u64,
}

/// A server read that found no client span queued on its connection.
#[derive(Debug)]
struct UnmatchedRead {
    read_ns: u64,
    /// The requests that read started, oldest first (pipelined requests share a read), with
    /// the root each became: (trace, span, sampled); None when a `traceparent` header gave
    /// it a parent (nothing to move).
    requests: SmallVec<[Option<(TraceId, SpanId, bool)>; 1]>,
}

/// A server span that became a root because its client's write record reached sonde after
/// its read record: the span, and every span of its trace, belong under the client span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LateLink {
    pub server_trace: TraceId,
    pub server_span: SpanId,
    pub client_trace: TraceId,
    pub client_span: SpanId,
}

/// What a server's read of a request found on its connection ([`Correlator::take_incoming`]).
pub enum Incoming<'a> {
    /// The client span on this machine that wrote the request: (trace, span, sampled).
    Client(TraceId, SpanId, bool),
    /// No client span queued (yet): where to say which root the request became, so that a
    /// late client write can claim it (None: too many requests in one read to remember).
    Unmatched(Option<&'a mut Option<(TraceId, SpanId, bool)>>),
}

impl Incoming<'_> {
    /// The client span that wrote the request, if it was seen.
    pub fn client(&self) -> Option<(TraceId, SpanId, bool)> {
        match *self {
            Incoming::Client(trace, span, sampled) => Some((trace, span, sampled)),
            Incoming::Unmatched(_) => None,
        }
    }

    /// The request became the root `ctx` (no client span, no `traceparent`).
    pub fn became_root(self, ctx: &SpanContext) {
        if let Incoming::Unmatched(Some(slot)) = self {
            *slot = Some((ctx.trace_id, ctx.span_id, ctx.sampled));
        }
    }
}

/// The parent of a client call, as far as it can be known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parent {
    /// The server request it belongs to: (trace, span, sampled).
    Request(TraceId, SpanId, bool),
    /// No request of its process is in flight (or its thread serves none): a root.
    None,
    /// Several requests of its event-loop process are in flight: no parent rather than a guess.
    Ambiguous,
}

/// The maps keyed by local thread and process ids use FxHash (touched several times per
/// request; ids are not chosen by remote peers). The ones keyed by addresses, which remote
/// peers choose, use hashbrown's default foldhash: seeded at random per process like SipHash,
/// and several times cheaper on the two addresses hashed for every request a server reads.
#[derive(Default)]
pub struct Correlator {
    /// tid -> the newest request that thread read and has not answered.
    serving: FxHashMap<u32, Serving>,
    /// pid -> every server request of the process in flight (several on an event loop).
    in_flight: FxHashMap<u32, InFlight>,
    /// Threads that have read a request (tid -> pid): thread-per-request workers or loops.
    server_threads: FxHashMap<u32, u32>,
    /// Threads that read a request while serving another (tid -> pid): event loops.
    multiplexing: FxHashMap<u32, u32>,
    /// (client local, client remote) -> client spans written, oldest first.
    outgoing: HashMap<(SocketAddr, SocketAddr), VecDeque<Outgoing>>,
    /// (client local, client remote) -> the last server read there that found no client span
    /// queued. The client's write record can reach the ring buffer after the server's read
    /// record (both are emitted at syscall exit, on different CPUs): that write belongs to
    /// the request already read, whose root it adopts ([`LateLink`]); queued, it would be
    /// paired with the next request and shift every later pair by one (wrong parents).
    unmatched_reads: HashMap<(SocketAddr, SocketAddr), UnmatchedRead>,
}

/// Bound on remembered unmatched server reads (connections whose client is not traced).
const MAX_UNMATCHED_READS: usize = 16_384;

/// Bound on remembered outgoing requests per connection (pipelining depth we keep).
const MAX_QUEUED_PER_CONN: usize = 64;
/// Bound on server requests in flight remembered per process.
const MAX_IN_FLIGHT_PER_PROCESS: usize = 4096;
/// Bound on threads remembered as servers (runserver starts a thread per request); past it
/// only the threads serving now are kept, the others are learnt again at their next request.
const MAX_SERVER_THREADS: usize = 65_536;

impl Correlator {
    pub fn begin_serving(&mut self, tid: u32, pid: u32, ctx: &SpanContext) {
        let serving = Serving {
            pid,
            tid,
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            sampled: ctx.sampled,
        };
        if self.in_flight.len() >= MAX_SERVER_THREADS && !self.in_flight.contains_key(&pid) {
            // Processes whose exit went unseen: only their empty lists go.
            self.in_flight.retain(|_, list| !list.is_empty());
        }
        let list = self.in_flight.entry(pid).or_default();
        if list.iter().any(|s| s.tid == tid) {
            self.multiplexing.insert(tid, pid);
        }
        // Bounded: requests whose end was never seen must not pile up.
        if list.len() >= MAX_IN_FLIGHT_PER_PROCESS {
            list.remove(0);
        }
        list.push(serving);
        if self.server_threads.len() >= MAX_SERVER_THREADS {
            let serving_now = &self.serving;
            self.server_threads
                .retain(|t, _| serving_now.contains_key(t));
        }
        self.server_threads.insert(tid, pid);
        self.serving.insert(tid, serving);
    }

    /// Ends `span_id`'s claim on `tid` (a newer request on the thread keeps its own claim).
    pub fn end_serving(&mut self, tid: u32, span_id: SpanId) {
        let pid = match self.serving.get(&tid) {
            Some(s) if s.span_id == span_id => Some(s.pid),
            _ => self.server_threads.get(&tid).copied(),
        };
        if let Some(pid) = pid {
            self.end_request(pid, span_id);
        }
    }

    /// Ends request `span_id` of `pid` in flight (answered, or its connection closed).
    pub fn end_request(&mut self, pid: u32, span_id: SpanId) {
        let Some(list) = self.in_flight.get_mut(&pid) else {
            return;
        };
        let Some(i) = list.iter().position(|s| s.span_id == span_id) else {
            return;
        };
        // An emptied list stays for the process's next request (removing it and inserting it
        // again cost two hash-table updates per request); `forget_thread_of` drops it.
        let tid = list.remove(i).tid;
        if self.serving.get(&tid).is_some_and(|s| s.span_id == span_id) {
            self.serving.remove(&tid);
        }
    }

    /// The parent of a client call `tid` of `pid` starts now (see the module docs).
    pub fn parent(&self, pid: u32, tid: u32) -> Parent {
        let claim = self.serving.get(&tid).filter(|s| s.pid == pid);
        let event_loop = self.multiplexing.get(&tid) == Some(&pid);
        match claim {
            Some(s) if !event_loop => return Parent::Request(s.trace_id, s.span_id, s.sampled),
            // A thread-per-request worker between requests: its own work (e.g. after the
            // response), not another thread's request.
            None if !event_loop && self.server_threads.get(&tid) == Some(&pid) => {
                return Parent::None;
            }
            _ => {}
        }
        match self.in_flight.get(&pid).map(|l| l.as_slice()) {
            Some([only]) => Parent::Request(only.trace_id, only.span_id, only.sampled),
            Some([_, _, ..]) => Parent::Ambiguous,
            _ => Parent::None,
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
        self.in_flight.remove(&pid);
        self.server_threads.retain(|_, p| *p != pid);
        self.multiplexing.retain(|_, p| *p != pid);
    }

    /// A client span `ctx` wrote a request on (local, remote) at `at_ns`: queued for the
    /// server that reads it, or, when a server already read it as a root, the link to make.
    pub fn register_outgoing(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
        ctx: &SpanContext,
        at_ns: u64,
    ) -> Option<LateLink> {
        // Written before a server read on this connection that found nothing queued: the
        // oldest request that read started is this one (see `unmatched_reads`), and the next
        // writes stay in step.
        if let Some(read) = self.unmatched_reads.get_mut(&(local, remote))
            && at_ns < read.read_ns
        {
            let request = if read.requests.is_empty() {
                None
            } else {
                read.requests.remove(0)
            };
            if read.requests.is_empty() {
                self.unmatched_reads.remove(&(local, remote));
            }
            let (server_trace, server_span, sampled) = request?;
            // A sampled root under an unsampled client span would hang from a span nobody
            // exports (and the reverse has no spans to move).
            if sampled != ctx.sampled {
                return None;
            }
            self.retrace(server_span, ctx.trace_id);
            return Some(LateLink {
                server_trace,
                server_span,
                client_trace: ctx.trace_id,
                client_span: ctx.span_id,
            });
        }
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
        None
    }

    /// Server request `span_id` now belongs to `trace_id`: client calls it starts from now on
    /// get that trace (a late link; rare, so the scan is fine).
    fn retrace(&mut self, span_id: SpanId, trace_id: TraceId) {
        for s in self.serving.values_mut() {
            if s.span_id == span_id {
                s.trace_id = trace_id;
            }
        }
        for list in self.in_flight.values_mut() {
            for s in list.iter_mut().filter(|s| s.span_id == span_id) {
                s.trace_id = trace_id;
            }
        }
    }

    /// For a server that read a request on (local, remote) at `read_ns`: the client span on
    /// this machine that wrote it, if the client side is traced and its write was seen.
    pub fn take_incoming(
        &mut self,
        server_local: SocketAddr,
        server_remote: SocketAddr,
        read_ns: u64,
    ) -> Incoming<'_> {
        let key = (server_remote, server_local);
        // One lookup when nothing is queued (the common case: an untraced client).
        let hit = match self.outgoing.get_mut(&key) {
            Some(queue) => {
                let hit = queue.pop_front();
                if queue.is_empty() {
                    self.outgoing.remove(&key);
                }
                hit
            }
            None => None,
        };
        if let Some(o) = hit {
            return Incoming::Client(o.trace_id, o.span_id, o.sampled);
        }
        if self.unmatched_reads.len() >= MAX_UNMATCHED_READS {
            self.unmatched_reads.clear();
        }
        let entry = self.unmatched_reads.entry(key).or_insert(UnmatchedRead {
            read_ns,
            requests: SmallVec::new(),
        });
        if entry.read_ns != read_ns {
            entry.read_ns = read_ns;
            entry.requests.clear();
        }
        if entry.requests.len() >= MAX_QUEUED_PER_CONN {
            return Incoming::Unmatched(None);
        }
        entry.requests.push(None);
        Incoming::Unmatched(entry.requests.last_mut())
    }

    /// Drops what a client connection registered (it closed).
    pub fn forget_connection(&mut self, local: SocketAddr, remote: SocketAddr) {
        self.outgoing.remove(&(local, remote));
        self.unmatched_reads.remove(&(local, remote));
    }

    /// Drops outgoing entries nobody claimed within `max_age_ns` (the server is not traced).
    pub fn expire(&mut self, now_ns: u64, max_age_ns: u64) {
        self.outgoing.retain(|_, q| {
            q.retain(|o| now_ns.saturating_sub(o.at_ns) < max_age_ns);
            !q.is_empty()
        });
        self.unmatched_reads
            .retain(|_, read| now_ns.saturating_sub(read.read_ns) < max_age_ns);
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

    fn ctx(n: u8) -> SpanContext {
        SpanContext {
            trace_id: TraceId([n; 16]),
            span_id: SpanId([n; 8]),
            parent: None,
            remote_parent: false,
            sampled: true,
        }
    }

    fn request(n: u8) -> Parent {
        Parent::Request(TraceId([n; 16]), SpanId([n; 8]), true)
    }

    #[test]
    fn thread_per_request_servers_stay_exact_per_thread() {
        let mut c = Correlator::default();
        // gthread: two pool threads of pid 100 serve a request each.
        c.begin_serving(10, 100, &ctx(1));
        c.begin_serving(11, 100, &ctx(2));
        assert_eq!(c.parent(100, 10), request(1));
        assert_eq!(c.parent(100, 11), request(2));
        c.end_serving(10, SpanId([1; 8]));
        // Thread 10 after its response (Django's post-response `SELECT 1`): no parent, even
        // though request 2 is the only one in flight.
        assert_eq!(c.parent(100, 10), Parent::None);
        assert_eq!(c.parent(100, 11), request(2));
        c.end_serving(11, SpanId([2; 8]));
        assert_eq!(c.parent(100, 11), Parent::None);
        assert!(c.in_flight.values().all(|list| list.is_empty()));
    }

    #[test]
    fn a_helper_thread_joins_the_only_request_in_flight() {
        let mut c = Correlator::default();
        // uvicorn: loop thread 20 reads the request; asgiref's thread 21 runs the sync view.
        c.begin_serving(20, 200, &ctx(1));
        assert_eq!(c.parent(200, 21), request(1));
        assert_eq!(c.parent(200, 20), request(1), "an async view on the loop");
        assert_eq!(c.parent(201, 21), Parent::None, "another process");
        c.end_serving(20, SpanId([1; 8]));
        assert_eq!(c.parent(200, 21), Parent::None);
    }

    #[test]
    fn several_requests_on_one_loop_give_no_parent_rather_than_a_wrong_one() {
        let mut c = Correlator::default();
        c.begin_serving(20, 200, &ctx(1));
        c.begin_serving(20, 200, &ctx(2));
        // The loop thread's newest claim is request 2, but the call may belong to either.
        assert_eq!(c.parent(200, 20), Parent::Ambiguous);
        assert_eq!(c.parent(200, 21), Parent::Ambiguous);
        // Request 2 ends first; 1 is then the only one: the loop thread's calls are its.
        c.end_serving(20, SpanId([2; 8]));
        assert_eq!(c.parent(200, 20), request(1));
        assert_eq!(c.parent(200, 21), request(1));
        c.end_serving(20, SpanId([1; 8]));
        assert_eq!(c.parent(200, 20), Parent::None);
        // A closed connection ends its request too.
        c.begin_serving(20, 200, &ctx(3));
        c.begin_serving(20, 200, &ctx(4));
        c.end_request(200, SpanId([3; 8]));
        assert_eq!(c.parent(200, 21), request(4));
        c.forget_thread_of(200);
        assert_eq!(c.parent(200, 20), Parent::None);
        assert!(c.multiplexing.is_empty() && c.server_threads.is_empty());
    }

    /// A client and a server endpoint of one local connection.
    fn tuple() -> (SocketAddr, SocketAddr) {
        let cl = "127.0.0.1:40000".parse().unwrap();
        let sv = "127.0.0.1:8000".parse().unwrap();
        (cl, sv)
    }

    /// Context `n` (all id bytes `n`), sampled unless told otherwise.
    fn numbered(n: u8, sampled: bool) -> SpanContext {
        SpanContext {
            trace_id: TraceId([n; 16]),
            span_id: SpanId([n; 8]),
            parent: None,
            remote_parent: false,
            sampled,
        }
    }

    #[test]
    fn outgoing_matches_the_mirrored_tuple_in_order() {
        let mut c = Correlator::default();
        let (cl, sv) = tuple();
        let ctx = |n: u8| numbered(n, n != 2);
        c.register_outgoing(cl, sv, &ctx(1), 0);
        c.register_outgoing(cl, sv, &ctx(2), 0);
        assert_eq!(
            c.take_incoming(sv, cl, 0).client().map(|x| x.1),
            Some(SpanId([1; 8]))
        );
        assert_eq!(
            c.take_incoming(sv, cl, 0).client(),
            Some((TraceId([2; 16]), SpanId([2; 8]), false))
        );
        assert_eq!(c.take_incoming(sv, cl, 0).client(), None);
        c.register_outgoing(cl, sv, &ctx(3), 0);
        c.expire(10, 5);
        assert_eq!(c.take_incoming(sv, cl, 0).client(), None);
    }

    /// A keep-alive client's write record that reaches the tracer after the server's read of
    /// the same request claims the root that request became (a late link), and every later
    /// request still pairs with its own client span (it used to pair with the previous one,
    /// to the end of the connection).
    #[test]
    fn a_late_client_write_does_not_shift_later_pairs() {
        let mut c = Correlator::default();
        let (cl, sv) = tuple();
        let ctx = |n: u8| numbered(n, true);
        // Request 1 in order: write at 10, read at 11.
        c.register_outgoing(cl, sv, &ctx(1), 10);
        assert_eq!(
            c.take_incoming(sv, cl, 11).client().map(|x| x.1),
            Some(SpanId([1; 8]))
        );
        // Request 2: the server's read (at 21) is seen before the client's write (at 20). The
        // server thread 9 serves it as root 22 meanwhile; the link moves its claim too.
        let read = c.take_incoming(sv, cl, 21);
        assert_eq!(read.client(), None);
        read.became_root(&ctx(22));
        c.begin_serving(9, 90, &ctx(22));
        assert_eq!(
            c.register_outgoing(cl, sv, &ctx(2), 20),
            Some(LateLink {
                server_trace: TraceId([22; 16]),
                server_span: SpanId([22; 8]),
                client_trace: TraceId([2; 16]),
                client_span: SpanId([2; 8]),
            })
        );
        assert_eq!(
            c.parent(90, 9),
            Parent::Request(TraceId([2; 16]), SpanId([22; 8]), true),
            "the server's client calls join the client's trace"
        );
        // Requests 3 and 4 in order again: each pairs with its own client span.
        c.register_outgoing(cl, sv, &ctx(3), 30);
        assert_eq!(
            c.take_incoming(sv, cl, 31).client().map(|x| x.1),
            Some(SpanId([3; 8]))
        );
        c.register_outgoing(cl, sv, &ctx(4), 40);
        assert_eq!(
            c.take_incoming(sv, cl, 41).client().map(|x| x.1),
            Some(SpanId([4; 8]))
        );
        // Two pipelined requests in one read, both seen before the writes that sent them: the
        // first had a `traceparent` (nothing to move), the second became root 66; request 7
        // still pairs with its own client span.
        assert_eq!(c.take_incoming(sv, cl, 61).client(), None);
        let read = c.take_incoming(sv, cl, 61);
        assert_eq!(read.client(), None);
        read.became_root(&ctx(66));
        assert_eq!(c.register_outgoing(cl, sv, &ctx(5), 60), None);
        assert_eq!(
            c.register_outgoing(cl, sv, &ctx(6), 60)
                .map(|l| l.server_span),
            Some(SpanId([66; 8]))
        );
        // An unsampled client does not claim a sampled root.
        let read = c.take_incoming(sv, cl, 65);
        assert_eq!(read.client(), None);
        read.became_root(&ctx(67));
        assert_eq!(c.register_outgoing(cl, sv, &numbered(8, false), 64), None);
        c.register_outgoing(cl, sv, &ctx(7), 70);
        assert_eq!(
            c.take_incoming(sv, cl, 71).client().map(|x| x.1),
            Some(SpanId([7; 8]))
        );
        // A server whose client is not traced leaves nothing behind once it expires.
        let other: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(c.take_incoming(sv, other, 80).client(), None);
        c.expire(80 + 100, 100);
        assert!(c.unmatched_reads.is_empty());
    }
}
