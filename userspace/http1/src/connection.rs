//! One TCP connection's HTTP/1.x state: a reader per direction, the queue of requests waiting
//! for their responses, and the rules that turn them into [`Event`]s.
//!
//! Invariants: the request reader always works on the newest queued entry; the response reader
//! always works on the oldest entry without a complete response (or on a response it skips);
//! entries leave the queue from the front, in order, once both halves are complete.

use std::{collections::VecDeque, sync::Arc};

use crate::chunked::Chunked;
use crate::head::{self, Framing, Parsed};
use crate::{
    Direction, Event, Exchange, MAX_HEAD_BYTES, MAX_INFORMATIONAL, MAX_PENDING, RequestHead,
    ResponseHead, Seen,
};

/// How a body in flight ends.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked(Chunked),
    /// Response bodies with no length: the connection close ends them.
    UntilClose,
    /// A chunked body whose framing was lost (uncaptured or malformed bytes). It ends at a feed
    /// that ends with the last-chunk marker, at a feed that starts like the next message, or at
    /// the close. Its bytes are counted raw.
    Unframed,
}

/// Whether a feed ends with the last chunk and an empty trailer section.
fn ends_chunked_body(data: &[u8]) -> bool {
    data == b"0\r\n\r\n" || data.ends_with(b"\r\n0\r\n\r\n")
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Stage {
    /// Position lost: skip feeds until one starts like a new message.
    Resync,
    /// Reading a head (possibly with some of it in the buffer).
    Head,
    Body(Body),
}

/// The reader of one direction.
#[derive(Debug)]
struct Half {
    stage: Stage,
    /// Bytes of an incomplete head, never more than `MAX_HEAD_BYTES`.
    buf: Vec<u8>,
}

impl Half {
    fn new(stage: Stage) -> Self {
        Self {
            stage,
            buf: Vec::new(),
        }
    }

    fn reset_buf(&mut self) {
        self.buf.clear();
        // A rare huge head should not pin its memory for the connection's lifetime.
        if self.buf.capacity() > 4096 {
            self.buf = Vec::new();
        }
    }
}

/// What [`Connection::take_head`] made of a feed's head bytes.
enum HeadStep<T> {
    /// All bytes buffered (this many); the head is not complete yet.
    More(usize),
    /// The head, and how many bytes of this feed it used.
    Done(T, usize),
    /// Over the size or header-count limit: the message cannot be used.
    Lost,
    /// Not HTTP/1.x.
    NotHttp,
}

/// Empty lines between messages are allowed (RFC 9112 section 2.2): how many bytes of them
/// start `data`, when a new head begins there.
fn blank_lines(at_message_start: bool, data: &[u8]) -> usize {
    if !at_message_start {
        return 0;
    }
    data.iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count()
}

/// A request whose exchange is not emitted yet.
#[derive(Debug)]
struct Pending {
    seq: u64,
    /// None: a placeholder for a request whose head was lost; its response is parsed and dropped.
    /// Shared with the [`Event::RequestHead`] that announced it, which is normally dropped
    /// long before the exchange completes, so the head is moved out, not copied.
    request: Option<Arc<RequestHead>>,
    is_head: bool,
    is_connect: bool,
    /// CONNECT or an `Upgrade` offer: the client may switch protocols after this request.
    switches: bool,
    request_body_bytes: u64,
    request_first: Seen,
    request_last: Seen,
    request_done: bool,
    response: Option<ResponseHead>,
    response_body_bytes: u64,
    response_first: Option<Seen>,
    response_last: Option<Seen>,
    response_done: bool,
    informational: Vec<u16>,
    truncated: bool,
}

impl Pending {
    fn new(seq: u64, request: Option<Arc<RequestHead>>, first: Seen) -> Self {
        let method = request.as_ref().map(|r| r.method.as_ref()).unwrap_or("");
        Self {
            seq,
            is_head: method.eq_ignore_ascii_case("HEAD"),
            is_connect: method.eq_ignore_ascii_case("CONNECT"),
            switches: false,
            request,
            request_body_bytes: 0,
            request_first: first,
            request_last: first,
            request_done: false,
            response: None,
            response_body_bytes: 0,
            response_first: None,
            response_last: None,
            response_done: false,
            informational: Vec::new(),
            truncated: false,
        }
    }

    /// Boxed: an exchange passes through several queues on its way to a span (this
    /// parser's events, the tracer's outputs), and moving a pointer costs less than moving
    /// ~270 bytes each time (measured: the copies were 13% of the parse stage's CPU).
    fn into_exchange(self) -> Option<Box<Exchange>> {
        Some(Box::new(Exchange {
            seq: self.seq,
            request: Arc::try_unwrap(self.request?).unwrap_or_else(|shared| (*shared).clone()),
            request_body_bytes: self.request_body_bytes,
            request_first: self.request_first,
            request_last: self.request_last,
            response: self.response,
            response_body_bytes: self.response_body_bytes,
            response_first: self.response_first,
            response_last: self.response_last,
            informational: self.informational,
            truncated: self.truncated,
        }))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Active,
    /// After `101 Switching Protocols` or a successful `CONNECT`: the bytes are not HTTP any more.
    Tunnel,
    NotHttp,
    Closed,
}

/// Who the response being read belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// The oldest entry without a complete response.
    Entry,
    /// A response to a request dropped from the queue: parse it to find its end, then drop it.
    Skip,
}

/// What a body step did with the input.
enum BodyStep {
    /// `consumed` bytes belonged to the body, `counted` of them payload; `done` if it ended.
    Progress {
        consumed: usize,
        counted: u64,
        done: bool,
    },
    /// The framing is broken; the position in the stream is lost.
    Broken,
}

fn body_step(body: &mut Body, data: &[u8]) -> BodyStep {
    match body {
        Body::Length(remaining) => {
            let take = usize::try_from(*remaining).map_or(data.len(), |r| r.min(data.len()));
            let counted = take as u64;
            *remaining = remaining.saturating_sub(counted);
            BodyStep::Progress {
                consumed: take,
                counted,
                done: *remaining == 0,
            }
        }
        Body::Chunked(chunked) => match chunked.feed(data) {
            Ok(p) => BodyStep::Progress {
                consumed: p.consumed,
                counted: p.data_bytes,
                done: p.done,
            },
            Err(_) => BodyStep::Broken,
        },
        Body::UntilClose => BodyStep::Progress {
            consumed: data.len(),
            counted: data.len() as u64,
            done: false,
        },
        Body::Unframed => BodyStep::Progress {
            consumed: data.len(),
            counted: data.len() as u64,
            done: ends_chunked_body(data),
        },
    }
}

/// How uncaptured body bytes fit the framing.
enum LostStep {
    /// All `n` bytes were body; `done` if the body ended exactly there.
    Inside { done: bool },
    /// The body ended after `counted` of them; the rest starts the next message.
    Overflow { counted: u64, rest: u64 },
    /// The position in the framing is lost.
    Broken,
}

fn body_lost(body: &mut Body, n: u64) -> LostStep {
    match body {
        Body::Length(remaining) => {
            if n <= *remaining {
                *remaining = remaining.saturating_sub(n);
                LostStep::Inside {
                    done: *remaining == 0,
                }
            } else {
                let counted = *remaining;
                *remaining = 0;
                LostStep::Overflow {
                    counted,
                    rest: n.saturating_sub(counted),
                }
            }
        }
        Body::Chunked(chunked) => match chunked.skip_lost(n) {
            Some(_) => LostStep::Inside { done: false },
            None => LostStep::Broken,
        },
        Body::UntilClose | Body::Unframed => LostStep::Inside { done: false },
    }
}

/// The HTTP/1.x state of one TCP connection.
#[derive(Debug)]
pub struct Connection {
    req: Half,
    resp: Half,
    pending: VecDeque<Pending>,
    next_seq: u64,
    /// Responses still to come for requests dropped from the queue.
    skip_responses: u64,
    /// Who the response being read belongs to (meaningful outside `Resync`/empty `Head`).
    resp_target: Target,
    /// Seen of the first byte of the request head being read.
    req_first: Option<Seen>,
    desyncs: u64,
    status: Status,
    /// Bytes that are not HTTP followed requests on this connection: the server answers them
    /// (or not) in ways that cannot be known, so no later request is paired with a response.
    request_noise: bool,
    /// Response bytes were lost where they may hold whole responses: the next response seen
    /// may belong to any later request, so no further response is paired.
    response_uncertain: bool,
}

impl Default for Connection {
    fn default() -> Self {
        Self::new()
    }
}

impl Connection {
    /// A connection seen from its start: first request byte expected at the first feed.
    pub fn new() -> Self {
        Self::with_stage(Stage::Head)
    }

    /// A connection that was already open when tracing began: skip bytes until a feed that starts
    /// with something that looks like a request line (method token, space, target, space,
    /// "HTTP/1.") and resynchronise there; response bytes before the first synced request are
    /// discarded.
    pub fn new_unsynced() -> Self {
        Self::with_stage(Stage::Resync)
    }

    fn with_stage(stage: Stage) -> Self {
        Self {
            req: Half::new(stage.clone()),
            resp: Half::new(stage),
            pending: VecDeque::new(),
            next_seq: 0,
            skip_responses: 0,
            resp_target: Target::Entry,
            req_first: None,
            desyncs: 0,
            status: Status::Active,
            request_noise: false,
            response_uncertain: false,
        }
    }

    /// False once [`Event::NotHttp`] was emitted.
    pub fn is_http(&self) -> bool {
        self.status != Status::NotHttp
    }

    /// True when further feeds are ignored: closed, not HTTP, or switched to another protocol
    /// (`101 Switching Protocols`, `CONNECT` tunnel). The caller may drop the connection state.
    pub fn is_finished(&self) -> bool {
        self.status != Status::Active
    }

    /// Times response bytes arrived with no request to match, or a response was given up on.
    pub fn desyncs(&self) -> u64 {
        self.desyncs
    }

    /// Bytes held for incomplete heads (for memory accounting).
    pub fn buffered_bytes(&self) -> usize {
        self.req.buf.len().saturating_add(self.resp.buf.len())
    }

    /// Bytes moved in one syscall, in order. `lost_after` = bytes of the same syscall that
    /// followed `data` but were not captured: skip them (body bytes: count them and mark truncated;
    /// inside a head: the message is unusable, mark truncated and resynchronise at a later message
    /// boundary).
    pub fn feed(
        &mut self,
        direction: Direction,
        data: &[u8],
        lost_after: u64,
        seen: Seen,
        out: &mut Vec<Event>,
    ) {
        if self.status != Status::Active {
            return;
        }
        match direction {
            Direction::Request => self.feed_request(data, seen, out),
            Direction::Response => self.feed_response(data, seen, out),
        }
        if lost_after > 0 && self.status == Status::Active {
            match direction {
                Direction::Request => self.request_lost(lost_after, seen, out),
                Direction::Response => self.response_lost(lost_after, seen, out),
            }
        }
    }

    /// The connection closed (or the process died): finish a close-delimited response body;
    /// requests still waiting get an Exchange with response None (or the partial response,
    /// truncated=true).
    pub fn close(&mut self, seen: Seen, out: &mut Vec<Event>) {
        // A close-delimited body ends at its last byte, whose Seen is already recorded.
        let _ = seen;
        if self.status == Status::Active {
            let cut_head = self.resp.stage == Stage::Head && !self.resp.buf.is_empty();
            let open_ended = matches!(
                self.resp.stage,
                Stage::Body(Body::UntilClose | Body::Unframed)
            );
            if open_ended && let Some(entry) = self.target_entry() {
                entry.response_done = true;
            } else if cut_head && let Some(entry) = self.target_entry() {
                entry.truncated = true;
            }
            self.flush_all(out);
        }
        if self.status != Status::NotHttp {
            self.status = Status::Closed;
        }
        self.req.reset_buf();
        self.resp.reset_buf();
    }

    // ----- request direction -----

    fn feed_request(&mut self, data: &[u8], seen: Seen, out: &mut Vec<Event>) {
        let mut rest = data;
        let mut at_start = true;
        while !rest.is_empty() && self.status == Status::Active {
            let consumed = match &mut self.req.stage {
                Stage::Resync => {
                    if at_start && !self.request_noise && head::looks_like_request(rest) {
                        self.req.stage = Stage::Head;
                        0
                    } else {
                        return;
                    }
                }
                Stage::Head => match self.request_head(rest, seen, out) {
                    Some(n) => n,
                    None => return,
                },
                Stage::Body(Body::Unframed) if at_start && head::looks_like_request(rest) => {
                    // The lost body ended before this new request; its last byte came earlier.
                    let last = self.pending.back().map_or(seen, |e| e.request_last);
                    self.request_complete(last, false, out);
                    0
                }
                Stage::Body(body) => match body_step(body, rest) {
                    BodyStep::Progress {
                        consumed,
                        counted,
                        done,
                    } => {
                        if let Some(entry) = self.pending.back_mut() {
                            entry.request_body_bytes =
                                entry.request_body_bytes.saturating_add(counted);
                            entry.request_last = seen;
                        }
                        if done {
                            self.request_complete(seen, false, out);
                        }
                        consumed
                    }
                    BodyStep::Broken => {
                        if let Some(entry) = self.pending.back_mut() {
                            entry.truncated = true;
                        }
                        self.req.stage = Stage::Body(Body::Unframed);
                        0
                    }
                },
            };
            rest = rest.get(consumed..).unwrap_or_default();
            at_start = false;
        }
    }

    /// Reads head bytes from `data`. Returns how many bytes were consumed, or None when the rest
    /// of the feed is to be dropped.
    fn request_head(&mut self, data: &[u8], seen: Seen, out: &mut Vec<Event>) -> Option<usize> {
        let skipped = blank_lines(self.req.buf.is_empty(), data);
        let data = data.get(skipped..).unwrap_or_default();
        if data.is_empty() {
            return Some(skipped);
        }
        if self.req.buf.is_empty() {
            self.req_first = Some(seen);
        }
        match self.take_head(Direction::Request, data, head::parse_request) {
            HeadStep::More(n) => Some(skipped.saturating_add(n)),
            HeadStep::Done(head, n) => {
                self.start_request(head, seen, out);
                Some(skipped.saturating_add(n))
            }
            HeadStep::Lost => {
                self.request_head_lost(seen, out);
                None
            }
            HeadStep::NotHttp if self.next_seq > 0 => {
                // Noise after requests on an HTTP connection: the requests before it keep
                // their responses (they come first, in order); nothing after it is parsed,
                // since the server's answers to the noise would be paired with later requests.
                self.request_noise = true;
                self.desyncs = self.desyncs.saturating_add(1);
                self.req.stage = Stage::Resync;
                self.req.reset_buf();
                None
            }
            HeadStep::NotHttp => {
                self.not_http(Direction::Request, out);
                None
            }
        }
    }

    /// Accumulates head bytes in `direction`'s buffer and parses the head once complete. Shared
    /// by both directions; callers do their own start-of-message bookkeeping.
    fn take_head<T>(
        &mut self,
        direction: Direction,
        data: &[u8],
        parse: fn(&[u8]) -> Parsed<T>,
    ) -> HeadStep<T> {
        let half = match direction {
            Direction::Request => &mut self.req,
            Direction::Response => &mut self.resp,
        };
        let prev = half.buf.len();
        // A new head is parsed straight away: when it ends in this feed (the common case) the
        // parser finds its end, no scan for it first; when its first bytes are garbage this is
        // where it is recognised. Anything else takes the path below.
        if prev == 0 {
            match parse(data) {
                Parsed::Complete(head, len) if len <= MAX_HEAD_BYTES => {
                    return HeadStep::Done(head, len);
                }
                Parsed::Invalid => return HeadStep::NotHttp,
                _ => {}
            }
        }
        let Some(end) = head::find_head_end(&half.buf, data) else {
            if prev.saturating_add(data.len()) > MAX_HEAD_BYTES {
                self.buffer_up_to_limit(direction, data);
                return HeadStep::Lost;
            }
            // A new head's first bytes were checked above; later feeds are checked when the
            // head is complete (re-parsing each time is quadratic).
            half.buf.extend_from_slice(data);
            return HeadStep::More(data.len());
        };
        if prev.saturating_add(end) > MAX_HEAD_BYTES {
            self.buffer_up_to_limit(direction, data);
            return HeadStep::Lost;
        }
        let parsed = if prev == 0 {
            parse(data.get(..end).unwrap_or_default())
        } else {
            half.buf
                .extend_from_slice(data.get(..end).unwrap_or_default());
            parse(&half.buf)
        };
        match parsed {
            Parsed::Complete(head, len) if len > prev => {
                half.reset_buf();
                HeadStep::Done(head, len.saturating_sub(prev))
            }
            Parsed::TooManyHeaders => HeadStep::Lost,
            Parsed::Complete(..) | Parsed::Partial | Parsed::Invalid => HeadStep::NotHttp,
        }
    }

    fn buffer_up_to_limit(&mut self, direction: Direction, data: &[u8]) {
        let half = match direction {
            Direction::Request => &mut self.req,
            Direction::Response => &mut self.resp,
        };
        let room = MAX_HEAD_BYTES.saturating_sub(half.buf.len());
        half.buf
            .extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
    }

    /// A request head was parsed: announce it, queue it, and set up its body.
    fn start_request(&mut self, head: RequestHead, seen: Seen, out: &mut Vec<Event>) {
        let framing = head::framing(&head.headers);
        let switches = head.header("upgrade").is_some();
        self.open_request(Some(head), seen, out);
        let is_connect = self.pending.back().is_some_and(|e| e.is_connect);
        let body = if is_connect {
            None
        } else {
            match framing {
                Framing::None | Framing::Unspecified => None,
                Framing::Length(n) => Some(Body::Length(n)),
                Framing::Chunked => Some(Body::Chunked(Chunked::new())),
                Framing::OtherEncoding | Framing::BadLength => {
                    // A request body that cannot be delimited: keep the head, lose the position.
                    if let Some(entry) = self.pending.back_mut() {
                        entry.truncated = true;
                    }
                    self.request_complete(seen, true, out);
                    return;
                }
            }
        };
        if let Some(entry) = self.pending.back_mut() {
            entry.switches = switches || is_connect;
        }
        match body {
            Some(body) => self.req.stage = Stage::Body(body),
            None => self.request_complete(seen, false, out),
        }
    }

    /// Queues a request (None: a placeholder for a lost head) and announces a real one.
    fn open_request(&mut self, head: Option<RequestHead>, seen: Seen, out: &mut Vec<Event>) {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        let first = self.req_first.take().unwrap_or(seen);
        let head = head.map(Arc::new);
        if let Some(head) = &head {
            out.push(Event::RequestHead {
                seq,
                head: Arc::clone(head),
                first,
            });
        }
        let mut entry = Pending::new(seq, head, first);
        entry.request_last = seen;
        if self.pending.len() >= MAX_PENDING {
            // Responses are not showing up; give the queue up rather than grow it.
            let waiting = self.pending.iter().filter(|p| !p.response_done).count() as u64;
            self.skip_responses = self.skip_responses.saturating_add(waiting);
            for p in self.pending.iter_mut() {
                p.truncated = true;
            }
            self.flush_all(out);
            self.resp.stage = Stage::Resync;
            self.resp.reset_buf();
        }
        self.pending.push_back(entry);
    }

    /// The newest request is complete; `resync` when the position in the stream is lost.
    fn request_complete(&mut self, seen: Seen, resync: bool, out: &mut Vec<Event>) {
        let mut switches = false;
        if let Some(entry) = self.pending.back_mut() {
            entry.request_done = true;
            entry.request_last = seen;
            switches = entry.switches;
        }
        // After CONNECT or an upgrade offer the next client bytes may be another protocol: only a
        // feed that starts like a request is read as HTTP again.
        self.req.stage = if resync || switches {
            Stage::Resync
        } else {
            Stage::Head
        };
        self.req.reset_buf();
        self.flush(out);
    }

    /// The head being read cannot be completed: keep what is readable, then resynchronise.
    fn request_head_lost(&mut self, seen: Seen, out: &mut Vec<Event>) {
        let salvaged = head::salvage_request(&self.req.buf);
        self.req.reset_buf();
        self.open_request(salvaged, seen, out);
        if let Some(entry) = self.pending.back_mut() {
            entry.truncated = true;
        }
        self.request_complete(seen, true, out);
    }

    fn request_lost(&mut self, n: u64, seen: Seen, out: &mut Vec<Event>) {
        let step = match &mut self.req.stage {
            Stage::Resync => return,
            Stage::Head => {
                if self.req.buf.is_empty() {
                    // The lost bytes start a new request: hold its place in the response order.
                    self.req_first = Some(seen);
                }
                self.request_head_lost(seen, out);
                // The lost bytes may hold more requests: their responses would shift every
                // later pairing, so no later request is parsed (earlier ones keep theirs).
                self.request_noise = true;
                return;
            }
            Stage::Body(body) => body_lost(body, n),
        };
        let counted = match step {
            LostStep::Inside { .. } => n,
            LostStep::Overflow { counted, .. } => counted,
            LostStep::Broken => 0,
        };
        if let Some(entry) = self.pending.back_mut() {
            entry.request_body_bytes = entry.request_body_bytes.saturating_add(counted);
            entry.truncated = true;
            entry.request_last = seen;
        }
        match step {
            LostStep::Inside { done: false } => {}
            LostStep::Inside { done: true } => self.request_complete(seen, false, out),
            LostStep::Overflow { rest, .. } => {
                self.request_complete(seen, false, out);
                if self.req.stage == Stage::Head {
                    self.request_lost(rest, seen, out);
                }
            }
            LostStep::Broken => {
                self.req.stage = Stage::Body(Body::Unframed);
                self.request_noise = true;
            }
        }
    }

    // ----- response direction -----

    fn has_response_target(&self) -> bool {
        self.skip_responses > 0 || self.pending.iter().any(|p| !p.response_done)
    }

    fn response_entry(&mut self) -> Option<&mut Pending> {
        self.pending.iter_mut().find(|p| !p.response_done)
    }

    /// Picks who a response starting now belongs to; false if nobody is waiting for one.
    fn begin_response(&mut self, seen: Seen) -> bool {
        if self.response_uncertain {
            self.desyncs = self.desyncs.saturating_add(1);
            return false;
        }
        if self.skip_responses > 0 {
            self.resp_target = Target::Skip;
            return true;
        }
        self.resp_target = Target::Entry;
        match self.response_entry() {
            Some(entry) => {
                entry.response_first.get_or_insert(seen);
                true
            }
            None => {
                self.desyncs = self.desyncs.saturating_add(1);
                false
            }
        }
    }

    fn feed_response(&mut self, data: &[u8], seen: Seen, out: &mut Vec<Event>) {
        let mut rest = data;
        let mut at_start = true;
        while !rest.is_empty() && self.status == Status::Active {
            let consumed = match &mut self.resp.stage {
                Stage::Resync => {
                    if at_start && head::looks_like_response(rest) && self.has_response_target() {
                        self.resp.stage = Stage::Head;
                        0
                    } else {
                        return;
                    }
                }
                Stage::Head => match self.response_head(rest, seen, out) {
                    Some(n) => n,
                    None => return,
                },
                Stage::Body(Body::Unframed) if at_start && head::looks_like_response(rest) => {
                    // The lost body ended before this new response; its last byte came earlier.
                    let last = self
                        .target_entry()
                        .and_then(|e| e.response_last)
                        .unwrap_or(seen);
                    self.response_complete(last, false, out);
                    0
                }
                Stage::Body(body) => match body_step(body, rest) {
                    BodyStep::Progress {
                        consumed,
                        counted,
                        done,
                    } => {
                        self.count_response_body(counted, seen);
                        if done {
                            self.response_complete(seen, false, out);
                        }
                        consumed
                    }
                    BodyStep::Broken => {
                        self.mark_response_truncated();
                        self.resp.stage = Stage::Body(Body::Unframed);
                        0
                    }
                },
            };
            rest = rest.get(consumed..).unwrap_or_default();
            at_start = false;
        }
    }

    fn count_response_body(&mut self, counted: u64, seen: Seen) {
        if let Some(entry) = self.target_entry() {
            entry.response_body_bytes = entry.response_body_bytes.saturating_add(counted);
            entry.response_last = Some(seen);
        }
    }

    fn mark_response_truncated(&mut self) {
        if let Some(entry) = self.target_entry() {
            entry.truncated = true;
        }
    }

    /// Reads response head bytes; like [`Self::request_head`].
    fn response_head(&mut self, data: &[u8], seen: Seen, out: &mut Vec<Event>) -> Option<usize> {
        let skipped = blank_lines(self.resp.buf.is_empty(), data);
        let data = data.get(skipped..).unwrap_or_default();
        if data.is_empty() {
            return Some(skipped);
        }
        if self.resp.buf.is_empty() && !self.begin_response(seen) {
            // Nobody asked: these bytes cannot be matched; wait for a clean message start.
            self.resp.stage = Stage::Resync;
            return None;
        }
        match self.take_head(Direction::Response, data, head::parse_response) {
            HeadStep::More(n) => Some(skipped.saturating_add(n)),
            HeadStep::Done(head, n) => {
                self.response_head_done(head, seen, out);
                Some(skipped.saturating_add(n))
            }
            HeadStep::Lost => {
                self.response_head_lost(seen, out);
                None
            }
            HeadStep::NotHttp => {
                self.not_http(Direction::Response, out);
                None
            }
        }
    }

    fn response_head_done(&mut self, head: ResponseHead, seen: Seen, out: &mut Vec<Event>) {
        let status = head.status;
        let interim = (100..200).contains(&status) && status != 101;
        let framing = head::framing(&head.headers);
        let mut no_body = interim || status == 204 || status == 304;
        let mut tunnel = status == 101;
        if self.resp_target == Target::Entry {
            let Some(entry) = self.response_entry() else {
                self.resp.stage = Stage::Resync;
                return;
            };
            if interim {
                if entry.informational.len() < MAX_INFORMATIONAL {
                    entry.informational.push(status);
                }
                entry.response_last = Some(seen);
                return;
            }
            no_body = no_body || entry.is_head;
            tunnel = tunnel || (entry.is_connect && (200..300).contains(&status));
            entry.response = Some(head);
        } else if interim {
            return;
        }
        if tunnel {
            self.response_complete(seen, false, out);
            self.enter_tunnel(out);
            return;
        }
        if no_body {
            self.response_complete(seen, false, out);
            return;
        }
        let body = match framing {
            Framing::None => None,
            Framing::Length(n) => Some(Body::Length(n)),
            Framing::Chunked => Some(Body::Chunked(Chunked::new())),
            Framing::OtherEncoding | Framing::Unspecified | Framing::BadLength => {
                Some(Body::UntilClose)
            }
        };
        match body {
            Some(body) => {
                if let Some(entry) = self.target_entry() {
                    entry.response_last = Some(seen);
                }
                self.resp.stage = Stage::Body(body);
            }
            None => self.response_complete(seen, false, out),
        }
    }

    fn target_entry(&mut self) -> Option<&mut Pending> {
        match self.resp_target {
            Target::Entry => self.response_entry(),
            Target::Skip => None,
        }
    }

    /// The response being read is over; `resync` when the position in the stream is lost.
    fn response_complete(&mut self, seen: Seen, resync: bool, out: &mut Vec<Event>) {
        match self.resp_target {
            Target::Entry => {
                if let Some(entry) = self.response_entry() {
                    entry.response_done = true;
                    entry.response_last = Some(seen);
                }
            }
            Target::Skip => self.skip_responses = self.skip_responses.saturating_sub(1),
        }
        self.resp.stage = if resync { Stage::Resync } else { Stage::Head };
        self.resp.reset_buf();
        self.flush(out);
    }

    /// The head being read cannot be completed: keep what is readable, then resynchronise.
    fn response_head_lost(&mut self, seen: Seen, out: &mut Vec<Event>) {
        let salvaged = head::salvage_response(&self.resp.buf);
        self.resp.reset_buf();
        let status = salvaged.as_ref().map(|h| h.status);
        let interim = status.is_some_and(|s| (100..200).contains(&s) && s != 101);
        if interim {
            // The final response is still to come, on a later feed.
            if let Some(entry) = self.target_entry() {
                entry.truncated = true;
                if let Some(s) = status
                    && entry.informational.len() < MAX_INFORMATIONAL
                {
                    entry.informational.push(s);
                }
            }
            self.resp.stage = Stage::Resync;
            return;
        }
        let mut tunnel = status == Some(101);
        if let Some(entry) = self.target_entry() {
            entry.truncated = true;
            tunnel =
                tunnel || (entry.is_connect && status.is_some_and(|s| (200..300).contains(&s)));
            entry.response = salvaged;
        }
        self.response_complete(seen, true, out);
        if tunnel {
            self.enter_tunnel(out);
        }
    }

    fn response_lost(&mut self, n: u64, seen: Seen, out: &mut Vec<Event>) {
        let step = match &mut self.resp.stage {
            Stage::Resync => return,
            Stage::Head => {
                if self.resp.buf.is_empty() && !self.begin_response(seen) {
                    self.resp.stage = Stage::Resync;
                    return;
                }
                self.response_head_lost(seen, out);
                // The lost bytes may hold more responses (pipelined answers in one write):
                // later ones cannot be paired with certainty.
                self.response_uncertain = true;
                return;
            }
            Stage::Body(body) => body_lost(body, n),
        };
        let counted = match step {
            LostStep::Inside { .. } => n,
            LostStep::Overflow { counted, .. } => counted,
            LostStep::Broken => 0,
        };
        self.count_response_body(counted, seen);
        self.mark_response_truncated();
        match step {
            LostStep::Inside { done: false } => {}
            LostStep::Inside { done: true } => self.response_complete(seen, false, out),
            LostStep::Overflow { rest, .. } => {
                self.response_complete(seen, false, out);
                self.response_lost(rest, seen, out);
            }
            LostStep::Broken => {
                self.resp.stage = Stage::Body(Body::Unframed);
                self.response_uncertain = true;
            }
        }
    }

    // ----- both directions -----

    /// Emits the exchanges at the front of the queue that are complete, in order.
    fn flush(&mut self, out: &mut Vec<Event>) {
        while self
            .pending
            .front()
            .is_some_and(|p| p.request_done && p.response_done)
        {
            if let Some(exchange) = self.pending.pop_front().and_then(Pending::into_exchange) {
                out.push(Event::Exchange(exchange));
            }
        }
    }

    /// Emits every queued exchange as it stands; unfinished parts mark it truncated.
    fn flush_all(&mut self, out: &mut Vec<Event>) {
        for mut p in self.pending.drain(..) {
            if !p.request_done || (p.response.is_some() && !p.response_done) {
                p.truncated = true;
            }
            if let Some(exchange) = p.into_exchange() {
                out.push(Event::Exchange(exchange));
            }
        }
    }

    fn enter_tunnel(&mut self, out: &mut Vec<Event>) {
        self.flush_all(out);
        self.status = Status::Tunnel;
        self.req.reset_buf();
        self.resp.reset_buf();
    }

    fn not_http(&mut self, direction: Direction, out: &mut Vec<Event>) {
        self.flush_all(out);
        out.push(Event::NotHttp { direction });
        self.status = Status::NotHttp;
        self.req.reset_buf();
        self.resp.reset_buf();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Direction::{Request as Req, Response as Resp};

    fn at(ts: u64) -> Seen {
        Seen { ts_ns: ts, tid: 7 }
    }

    /// Feeds `(direction, bytes, lost_after)` steps with Seen ts = step index + 1; then closes
    /// (Seen ts = 1000) when `close` is set. Returns all events.
    fn run(conn: &mut Connection, steps: &[(Direction, &[u8], u64)], close: bool) -> Vec<Event> {
        let mut out = Vec::new();
        for (i, (dir, data, lost)) in steps.iter().enumerate() {
            conn.feed(*dir, data, *lost, at(i as u64 + 1), &mut out);
        }
        if close {
            conn.close(at(1000), &mut out);
        }
        out
    }

    fn exchanges(events: &[Event]) -> Vec<Exchange> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Exchange(x) => Some((**x).clone()),
                _ => None,
            })
            .collect()
    }

    fn heads(events: &[Event]) -> Vec<(u64, String, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::RequestHead { seq, head, .. } => {
                    Some((*seq, head.method.to_string(), head.target.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn status(x: &Exchange) -> Option<u16> {
        x.response.as_ref().map(|r| r.status)
    }

    #[test]
    fn noise_after_pipelined_requests_never_shifts_a_status() {
        // Two requests, noise, one more request; the server answers 200, 200, then 400 to the
        // noise and 204 to the last request. Only the first two can be paired with certainty.
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Req,
                    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n\x01\x02noise\r\n\r\n",
                    0,
                ),
                (Req, b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n", 0),
                (
                    Resp,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                    0,
                ),
                (Resp, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 204 No Content\r\n\r\n", 0),
            ],
            true,
        );
        let ex = exchanges(&ev);
        let got: Vec<(String, Option<u16>)> = ex
            .iter()
            .map(|e| {
                (
                    e.request.target.clone(),
                    e.response.as_ref().map(|r| r.status),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![("/a".into(), Some(200)), ("/b".into(), Some(200))],
            "{ev:?}"
        );
    }

    #[test]
    fn simple_get_with_content_length() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Req,
                    b"GET /users?id=1 HTTP/1.1\r\nHost: a\r\nTraceparent: 00-ab\r\n\r\n",
                    0,
                ),
                (
                    Resp,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
                    0,
                ),
            ],
            false,
        );
        assert_eq!(ev.len(), 2);
        let Event::RequestHead { seq, head, first } = &ev[0] else {
            panic!("first event {:?}", ev[0]);
        };
        assert_eq!((*seq, *first), (0, at(1)));
        assert_eq!(head.header("traceparent"), Some(&b"00-ab"[..]));
        assert_eq!(head.header("TRACEPARENT"), Some(&b"00-ab"[..]));
        let x = &exchanges(&ev)[0];
        assert_eq!(x.request.method, "GET");
        assert_eq!(x.request.target, "/users?id=1");
        assert_eq!(x.request.minor_version, 1);
        assert_eq!(status(x), Some(200));
        assert_eq!(x.response.as_ref().unwrap().reason, "OK");
        assert_eq!(x.response_body_bytes, 5);
        assert_eq!((x.request_first, x.request_last), (at(1), at(1)));
        assert_eq!(
            (x.response_first, x.response_last),
            (Some(at(2)), Some(at(2)))
        );
        assert!(!x.truncated);
        assert!(c.is_http());
    }

    #[test]
    fn head_split_at_every_byte() {
        let req = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc";
        let resp = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        let mut c = Connection::new();
        let mut out = Vec::new();
        for (i, b) in req.iter().enumerate() {
            c.feed(Req, std::slice::from_ref(b), 0, at(i as u64), &mut out);
        }
        assert_eq!(heads(&out).len(), 1);
        for (i, b) in resp.iter().enumerate() {
            c.feed(
                Resp,
                std::slice::from_ref(b),
                0,
                at(100 + i as u64),
                &mut out,
            );
        }
        let x = &exchanges(&out)[0];
        assert_eq!(x.request_body_bytes, 3);
        assert_eq!(x.response_body_bytes, 2);
        assert_eq!(x.request_first, at(0));
        assert_eq!(x.request_last, at(req.len() as u64 - 1));
        assert_eq!(x.response_first, Some(at(100)));
        assert_eq!(x.response_last, Some(at(100 + resp.len() as u64 - 1)));
        assert_eq!(c.buffered_bytes(), 0);
    }

    #[test]
    fn http10_close_delimited_response() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET / HTTP/1.0\r\n\r\n", 0),
                (Resp, b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\npart1", 0),
                (Resp, b"part2", 0),
            ],
            true,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 1);
        let x = &xs[0];
        assert_eq!(x.request.minor_version, 0);
        assert_eq!(x.response_body_bytes, 10);
        assert_eq!(x.response_last, Some(at(3)));
        assert!(!x.truncated);
        assert!(c.is_finished());
    }

    #[test]
    fn chunked_request_and_response_with_extensions_and_trailers() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Req,
                    b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nabcd\r\n",
                    0,
                ),
                (Req, b"2\r\nef\r\n0\r\nX-Sum: 1\r\n\r\n", 0),
                (
                    Resp,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nxyz\r\n",
                    0,
                ),
                (Resp, b"0\r\n\r\n", 0),
            ],
            false,
        );
        let x = &exchanges(&ev)[0];
        assert_eq!(x.request_body_bytes, 6);
        assert_eq!(x.request_last, at(2));
        assert_eq!(x.response_body_bytes, 3);
        assert_eq!(x.response_last, Some(at(4)));
        assert!(!x.truncated);
    }

    #[test]
    fn keep_alive_many_requests() {
        let mut c = Connection::new();
        let mut out = Vec::new();
        for i in 0..100u64 {
            c.feed(
                Req,
                b"GET /k HTTP/1.1\r\nHost: a\r\n\r\n",
                0,
                at(2 * i),
                &mut out,
            );
            c.feed(
                Resp,
                b"HTTP/1.1 204 No Content\r\n\r\n",
                0,
                at(2 * i + 1),
                &mut out,
            );
        }
        let xs = exchanges(&out);
        assert_eq!(xs.len(), 100);
        for (i, x) in xs.iter().enumerate() {
            assert_eq!(x.seq, i as u64);
            assert_eq!(x.request_first, at(2 * i as u64));
            assert_eq!(x.response_last, Some(at(2 * i as u64 + 1)));
        }
    }

    #[test]
    fn pipelining_matches_in_order() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Req,
                    b"GET /a HTTP/1.1\r\n\r\nHEAD /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 1\r\n\r\nZ",
                    0,
                ),
                (
                    Resp,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nAHTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n",
                    0,
                ),
                (Resp, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 0),
            ],
            false,
        );
        assert_eq!(heads(&ev).len(), 3);
        let xs = exchanges(&ev);
        let got: Vec<_> = xs
            .iter()
            .map(|x| {
                (
                    x.seq,
                    x.request.target.as_str(),
                    status(x),
                    x.response_body_bytes,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (0, "/a", Some(200), 1),
                (1, "/b", Some(200), 0),
                (2, "/c", Some(404), 0)
            ]
        );
        assert_eq!(xs[2].request_body_bytes, 1);
    }

    #[test]
    fn expect_100_continue() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Req,
                    b"PUT /f HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
                    0,
                ),
                (Resp, b"HTTP/1.1 100 Continue\r\n\r\n", 0),
                (Req, b"data", 0),
                (
                    Resp,
                    b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
                    0,
                ),
            ],
            false,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 1);
        let x = &xs[0];
        assert_eq!(x.informational, vec![100]);
        assert_eq!(status(x), Some(201));
        assert_eq!(x.request_last, at(3));
        assert_eq!(x.response_first, Some(at(2)));
        assert_eq!(x.response_last, Some(at(4)));
    }

    #[test]
    fn bodiless_responses_ignore_content_length() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Req,
                    b"HEAD / HTTP/1.1\r\n\r\nGET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
                    0,
                ),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", 0),
                (
                    Resp,
                    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\n\r\n",
                    0,
                ),
                (
                    Resp,
                    b"HTTP/1.1 204 No Content\r\nContent-Length: 1000\r\n\r\n",
                    0,
                ),
            ],
            false,
        );
        let xs = exchanges(&ev);
        assert_eq!(
            xs.iter().map(status).collect::<Vec<_>>(),
            vec![Some(200), Some(304), Some(204)]
        );
        assert!(
            xs.iter()
                .all(|x| x.response_body_bytes == 0 && !x.truncated)
        );
        assert_eq!(xs[2].response_last, Some(at(4)));
    }

    #[test]
    fn websocket_upgrade_goes_quiet() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Req,
                    b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: x\r\n\r\n",
                    0,
                ),
                (Resp, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello", 0),
                (Req, b"\x81\x85\x00\x00\x00\x00hello", 0),
                (Resp, b"\x88\x00", 0),
            ],
            true,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 1);
        assert_eq!(status(&xs[0]), Some(101));
        assert!(!xs[0].truncated);
        assert!(!ev.iter().any(|e| matches!(e, Event::NotHttp { .. })));
        assert!(c.is_http());
        assert!(c.is_finished());
    }

    #[test]
    fn client_frames_before_101_are_not_garbage() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 0),
                (Req, b"\x81\x85\x00\x00\x00\x00hello", 0),
                (Resp, b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 0),
            ],
            false,
        );
        assert_eq!(exchanges(&ev).len(), 1);
        assert!(c.is_http());
    }

    #[test]
    fn refused_upgrade_stays_http() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
                (Req, b"GET /next HTTP/1.1\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
            ],
            false,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 2);
        assert_eq!(xs[1].request.target, "/next");
    }

    #[test]
    fn connect_tunnel() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Req,
                    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                    0,
                ),
                (Resp, b"HTTP/1.1 200 Connection Established\r\n\r\n", 0),
                (Req, b"\x16\x03\x01\x00\xa5\x01\x00", 0),
                (Resp, b"\x16\x03\x03\x00\x5a", 0),
            ],
            true,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 1);
        assert_eq!(xs[0].request.method, "CONNECT");
        assert_eq!(xs[0].request.target, "example.com:443");
        assert!(!ev.iter().any(|e| matches!(e, Event::NotHttp { .. })));
    }

    #[test]
    fn refused_connect_continues() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"CONNECT a:443 HTTP/1.1\r\n\r\n", 0),
                (
                    Resp,
                    b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 2\r\n\r\nno",
                    0,
                ),
                (
                    Req,
                    b"CONNECT a:443 HTTP/1.1\r\nProxy-Authorization: x\r\n\r\n",
                    0,
                ),
                (Resp, b"HTTP/1.1 200 OK\r\n\r\n", 0),
            ],
            false,
        );
        let xs = exchanges(&ev);
        assert_eq!(
            xs.iter().map(status).collect::<Vec<_>>(),
            vec![Some(407), Some(200)]
        );
        assert!(c.is_finished());
    }

    #[test]
    fn lost_body_bytes_are_counted() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Req,
                    b"POST /u HTTP/1.1\r\nContent-Length: 10000\r\n\r\n0123",
                    9996,
                ),
                (
                    Resp,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nab",
                    4998,
                ),
                (Req, b"GET /next HTTP/1.1\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
            ],
            false,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 2);
        assert_eq!(xs[0].request_body_bytes, 10000);
        assert_eq!(xs[0].response_body_bytes, 5000);
        assert_eq!(xs[0].request_last, at(1));
        assert_eq!(xs[0].response_last, Some(at(2)));
        assert!(xs[0].truncated);
        assert!(!xs[1].truncated);
        assert_eq!(xs[1].request.target, "/next");
    }

    #[test]
    fn lost_chunk_data_is_counted() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET / HTTP/1.1\r\n\r\n", 0),
                (
                    Resp,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1000\r\nab",
                    4094,
                ),
                (Resp, b"\r\n0\r\n\r\n", 0),
            ],
            false,
        );
        let x = &exchanges(&ev)[0];
        assert_eq!(x.response_body_bytes, 4096);
        assert!(x.truncated);
        assert_eq!(x.response_last, Some(at(3)));
    }

    #[test]
    fn chunked_framing_lost_ends_at_last_chunk_marker() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET /a HTTP/1.1\r\n\r\n", 0),
                // Capture stops inside the first chunk; the write also held later chunks.
                (
                    Resp,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123",
                    100,
                ),
                (Resp, b"5\r\nabcde\r\n", 0),
                (Resp, b"0\r\n\r\n", 0),
                (Req, b"GET /b HTTP/1.1\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx", 0),
            ],
            false,
        );
        let xs = exchanges(&ev);
        // The lost tail may have held more responses: /b is not paired (never a wrong status).
        assert_eq!(xs.len(), 1);
        assert!(xs[0].truncated);
        assert_eq!(xs[0].response_last, Some(at(4)));
        assert!(xs[0].response_body_bytes >= 16);
        let mut out = Vec::new();
        c.close(at(1000), &mut out);
        let rest = exchanges(&out);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].request.target, "/b");
        assert_eq!(status(&rest[0]), None);
    }

    #[test]
    fn chunked_framing_lost_ends_at_next_response() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 0),
                (
                    Resp,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n",
                    0,
                ),
                (Resp, b"more", 0),
                (
                    Resp,
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                    0,
                ),
            ],
            true,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 2);
        assert!(xs[0].truncated);
        assert_eq!(xs[0].response_last, Some(at(3)));
        assert_eq!(status(&xs[1]), Some(404));
        assert!(c.is_http());
    }

    #[test]
    fn cut_request_head_is_salvaged_and_resynced() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET /big HTTP/1.1\r\nHost: a\r\nCookie: aaaa", 20000),
                (
                    Req,
                    b"more of the same syscall? no: next syscall body junk",
                    0,
                ),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0),
                (Req, b"GET /after HTTP/1.1\r\n\r\n", 0),
                (
                    Resp,
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
                    0,
                ),
            ],
            false,
        );
        // The lost 20000 bytes may have held more requests: nothing after them is parsed,
        // since their responses would shift the pairing of /after.
        assert_eq!(heads(&ev).len(), 1);
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 1);
        assert_eq!(xs[0].request.target, "/big");
        assert_eq!(xs[0].request.header("host"), Some(&b"a"[..]));
        assert!(xs[0].truncated);
        assert_eq!(status(&xs[0]), Some(200));
        assert!(c.is_http());
    }

    #[test]
    fn request_head_lost_whole_keeps_response_order() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                // The second request's head is entirely in the uncaptured tail.
                (Req, b"POST /a HTTP/1.1\r\nContent-Length: 2\r\n\r\nxy", 30),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n", 0),
                (Req, b"GET /c HTTP/1.1\r\n\r\n", 0),
                (
                    Resp,
                    b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
                    0,
                ),
            ],
            false,
        );
        let xs = exchanges(&ev);
        let got: Vec<_> = xs
            .iter()
            .map(|x| (x.seq, x.request.target.as_str(), status(x)))
            .collect();
        // The lost tail may have held several requests: /c is not parsed (its response could
        // be any of the later ones).
        assert_eq!(got, vec![(0, "/a", Some(200))]);
    }

    #[test]
    fn cut_response_head() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET / HTTP/1.1\r\n\r\n", 0),
                (
                    Resp,
                    b"HTTP/1.1 503 Busy\r\nContent-Length: 20\r\nX-Big: aaaa",
                    5000,
                ),
                (Req, b"GET /2 HTTP/1.1\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
            ],
            false,
        );
        let xs = exchanges(&ev);
        // The lost 5000 bytes may have held more responses: /2 is not paired.
        assert_eq!(xs.len(), 1);
        assert_eq!(status(&xs[0]), Some(503));
        assert!(xs[0].truncated);
        assert_eq!(xs[0].response_last, Some(at(2)));
    }

    #[test]
    fn garbage_emits_not_http_once() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 0),
                (Req, b"GET / HTTP/1.1\r\n\r\n", 0),
                (Resp, b"\x16\x03\x03", 0),
            ],
            true,
        );
        assert_eq!(ev, vec![Event::NotHttp { direction: Req }]);
        assert!(!c.is_http());
    }

    #[test]
    fn garbage_response_flushes_pending_then_not_http() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET / HTTP/1.1\r\n\r\n", 0),
                (Resp, b"SSH-2.0-OpenSSH\r\n", 0),
            ],
            false,
        );
        assert_eq!(heads(&ev).len(), 1);
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 1);
        assert_eq!(xs[0].response, None);
        assert_eq!(ev.last(), Some(&Event::NotHttp { direction: Resp }));
    }

    #[test]
    fn http2_prior_knowledge_is_not_http1() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[(Req, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 0)],
            false,
        );
        assert_eq!(ev, vec![Event::NotHttp { direction: Req }]);
    }

    #[test]
    fn unknown_method_is_parsed() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"PURGE /cache HTTP/1.1\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
            ],
            false,
        );
        assert_eq!(exchanges(&ev)[0].request.method, "PURGE");
    }

    #[test]
    fn response_without_request_is_ignored() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Resp,
                    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 5\r\n\r\nbye",
                    0,
                ),
                (Resp, b"!!", 0),
                (Req, b"GET / HTTP/1.1\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
            ],
            false,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 1);
        assert_eq!(status(&xs[0]), Some(200));
        assert!(c.desyncs() >= 1);
        assert!(c.is_http());
    }

    #[test]
    fn unsynced_skips_until_request_line() {
        let mut c = Connection::new_unsynced();
        let ev = run(
            &mut c,
            &[
                (Req, b"tail of some earlier body", 0),
                (Resp, b"ody of an earlier response", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", 0),
                (Req, b"DELETE /x HTTP/1.1\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 204 No Content\r\n\r\n", 0),
            ],
            false,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 1);
        assert_eq!(xs[0].seq, 0);
        assert_eq!(xs[0].request.method, "DELETE");
        assert_eq!(status(&xs[0]), Some(204));
    }

    #[test]
    fn unsynced_discards_rest_of_response_in_flight() {
        let mut c = Connection::new_unsynced();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET /1 HTTP/1.1\r\n\r\n", 0),
                // The response to a request sent before tracing started, still streaming.
                (Resp, b"more body of an old response", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA", 0),
            ],
            false,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 1);
        assert_eq!(xs[0].response_body_bytes, 1);
    }

    #[test]
    fn close_with_pending_requests() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nPOST /c HTTP/1.1\r\nContent-Length: 9\r\n\r\nab", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0),
            ],
            true,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 3);
        assert_eq!(status(&xs[0]), Some(200));
        assert!(xs[0].truncated);
        assert_eq!(xs[0].response_body_bytes, 3);
        assert_eq!(xs[1].response, None);
        assert!(!xs[1].truncated);
        assert_eq!(xs[2].response, None);
        assert!(xs[2].truncated);
        let mut out = Vec::new();
        c.feed(Req, b"GET / HTTP/1.1\r\n\r\n", 0, at(5), &mut out);
        c.close(at(6), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn close_inside_response_head_marks_truncated() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"GET / HTTP/1.1\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Le", 0),
            ],
            true,
        );
        let xs = exchanges(&ev);
        assert_eq!(xs.len(), 1);
        assert_eq!(xs[0].response, None);
        assert!(xs[0].truncated);
        assert_eq!(xs[0].response_first, Some(at(2)));
    }

    #[test]
    fn head_size_limit() {
        let mut c = Connection::new();
        let mut out = Vec::new();
        c.feed(Req, b"GET /h HTTP/1.1\r\n", 0, at(1), &mut out);
        let line = [b"X-Fill: ".as_slice(), &[b'a'; 1000], b"\r\n"].concat();
        for i in 0..100 {
            c.feed(Req, &line, 0, at(2 + i), &mut out);
            assert!(c.buffered_bytes() <= MAX_HEAD_BYTES);
        }
        assert!(c.is_http());
        c.feed(Req, b"GET /next HTTP/1.1\r\n\r\n", 0, at(200), &mut out);
        c.feed(
            Resp,
            b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n",
            0,
            at(201),
            &mut out,
        );
        c.feed(
            Resp,
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
            0,
            at(202),
            &mut out,
        );
        let xs = exchanges(&out);
        let got: Vec<_> = xs
            .iter()
            .map(|x| (x.request.target.as_str(), status(x), x.truncated))
            .collect();
        assert_eq!(
            got,
            vec![("/h", Some(431), true), ("/next", Some(200), false)]
        );
    }

    #[test]
    fn too_many_headers_is_not_a_panic() {
        let mut head = b"GET /many HTTP/1.1\r\n".to_vec();
        for i in 0..500 {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let mut c = Connection::new();
        let ev = run(&mut c, &[(Req, &head, 0)], false);
        assert!(c.is_http());
        assert!(heads(&ev).is_empty() || exchanges(&ev).iter().all(|x| x.truncated));
    }

    #[test]
    fn pending_queue_is_bounded() {
        let mut c = Connection::new();
        let mut out = Vec::new();
        for i in 0..(MAX_PENDING as u64 + 10) {
            c.feed(Req, b"GET / HTTP/1.1\r\n\r\n", 0, at(i), &mut out);
        }
        assert!(c.pending.len() <= MAX_PENDING);
        assert_eq!(exchanges(&out).len(), MAX_PENDING);
        assert!(
            exchanges(&out)
                .iter()
                .all(|x| x.truncated && x.response.is_none())
        );
    }

    #[test]
    fn leading_blank_lines_between_messages() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (Req, b"POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nx\r\n", 0),
                (Req, b"\r\nGET /2 HTTP/1.1\r\n\r\n", 0),
                (Resp, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0),
            ],
            false,
        );
        assert_eq!(exchanges(&ev).len(), 2);
    }

    #[test]
    fn early_response_before_request_body_ends() {
        let mut c = Connection::new();
        let ev = run(
            &mut c,
            &[
                (
                    Req,
                    b"POST /big HTTP/1.1\r\nContent-Length: 100\r\n\r\nab",
                    0,
                ),
                (
                    Resp,
                    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n",
                    0,
                ),
            ],
            false,
        );
        assert!(exchanges(&ev).is_empty());
        let mut out = Vec::new();
        c.close(at(9), &mut out);
        let xs = exchanges(&out);
        assert_eq!(status(&xs[0]), Some(413));
        assert!(xs[0].truncated);
    }
}
