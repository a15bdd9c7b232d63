//! Incremental HTTP/1.x parser: byte streams in, request/response exchanges out.
//!
//! The daemon hands a [`Connection`] the bytes each syscall moved on a TCP socket, per direction
//! and in order, possibly cut short (`lost_after`: bytes the kernel did not capture). The
//! connection emits [`Event`]s: a [`Event::RequestHead`] as soon as a request head is parsed (so
//! trace context can be read while the request is in flight), an [`Event::Exchange`] once a
//! request and its response are both complete, and [`Event::NotHttp`] when a direction turns out
//! not to be HTTP/1.x. There is no I/O here; everything is testable with byte slices.
//!
//! What it handles: HTTP/1.0 and 1.1, heads split over any number of feeds, `Content-Length`,
//! chunked bodies (extensions, trailers), keep-alive, pipelining (responses matched in order),
//! `Expect: 100-continue` and other 1xx interim responses, bodiless responses (HEAD, 1xx, 204,
//! 304), close-delimited responses, `CONNECT` and `101 Switching Protocols` (the stream stops
//! being HTTP; the parser goes quiet), uncaptured bytes, garbage, and hostile sizes.
//!
//! Costs: heads are parsed in place from the feed when they arrive whole; only an incomplete head
//! is buffered (at most [`MAX_HEAD_BYTES`]). Bodies are counted, never copied. Chunked framing is
//! walked per byte only on size lines and trailers. The pending-request queue is bounded by
//! [`MAX_PENDING`].
//!
//! Semantics worth knowing:
//! - Body byte counts are payload bytes: the `Content-Length` bytes, or the decoded chunk data of a
//!   chunked body (size lines and trailers excluded). Uncaptured body bytes are counted and mark the
//!   exchange `truncated`.
//! - A head cut off by `lost_after` is salvaged when its start line arrived: the start line and the
//!   complete header lines before the cut are kept and the exchange is `truncated`. The direction
//!   then resynchronises at the next feed that starts like a new message. A request head lost whole
//!   leaves a placeholder so the next response is not matched to the wrong request.
//! - A chunked body whose framing is lost (uncaptured bytes past the current chunk, or malformed
//!   framing) is followed loosely: it ends at a feed ending with `0\r\n\r\n`, at a feed that
//!   starts like the next message, or at the close; its bytes are then counted raw (`truncated`).
//! - `response_last` of a close-delimited response is the Seen of the feed that carried its last
//!   byte (not of the close), which is when the server finished sending it.
//! - Response bytes with no request waiting are ignored and counted in [`Connection::desyncs`].
//! - `seq` also counts requests whose head was lost, so a gap in `seq` means lost requests.
//! - A new connection's direction is declared not HTTP only when a head fails to parse; while
//!   resynchronising (`new_unsynced`, after a loss) non-matching feeds are skipped silently.
//!
//! Why not an existing crate: `httparse` (used here for heads) is not incremental across feeds and
//! has no body framing or request/response matching; `hyper`/`h1` parsers own I/O and copy bodies;
//! `llhttp`/`http-parser` bindings are C code. Framing, matching and resynchronisation on lossy
//! captures are specific to tracing, so they are written here (about a thousand lines with tests).
//!
//! Fuzzing (from this crate's folder): `cargo +nightly fuzz run parse -- -max_total_time=60`
// Unit-test builds also see dev-dependencies; the lint is for what the crate ships.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod chunked;
mod connection;
mod head;
mod protocol;

#[cfg(test)]
mod proptests;

pub use connection::Connection;
pub use head::{
    KEPT_HEADERS, RESPONSE_KEPT_HEADERS, is_kept_header, kept_header, looks_like_request,
    looks_like_response, response_kept_header,
};
pub use protocol::Http1;

/// Largest request or response head (start line plus headers) buffered; a longer head is
/// treated like a cut-off one.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most requests waiting for their response on one connection; beyond it the oldest are emitted
/// with no response and the response side resynchronises.
pub const MAX_PENDING: usize = 256;
/// Most 1xx statuses recorded per exchange.
pub const MAX_INFORMATIONAL: usize = 16;

/// Which way bytes moved, and when: the types shared by every protocol parser.
pub use sonde_protocol::{Direction, Seen};

/// One header line; the value as raw bytes. Request heads keep only the headers in
/// [`KEPT_HEADERS`], response heads those in [`RESPONSE_KEPT_HEADERS`], under their lowercase
/// name from that list (borrowed: a parsed head allocates nothing for
/// its header names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub name: std::borrow::Cow<'static, str>,
    pub value: HeaderValue,
}

/// A header value, inline up to 16 bytes (a length, a coding, `host:port`, a trace state
/// key): most kept values cost no allocation, in the space a `Vec<u8>` takes (tested; a
/// larger inline head made every exchange costlier to move than the allocations it saved).
pub type HeaderValue = smallvec::SmallVec<[u8; 16]>;

/// A head's kept headers.
pub type Headers = Vec<Header>;

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| &h.value[..])
}

/// A parsed request line and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    /// Borrowed for the standard methods (no copy per request).
    pub method: std::borrow::Cow<'static, str>,
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Headers,
}

impl RequestHead {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

/// A parsed status line and headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    /// Borrowed when it is the standard phrase of a common status (no copy per response).
    pub reason: std::borrow::Cow<'static, str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Headers,
}

impl ResponseHead {
    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

/// A request and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// 0-based index of this request on the connection (since the parser synchronised).
    pub seq: u64,
    pub request: RequestHead,
    pub request_body_bytes: u64,
    /// Seen of the feed that carried the first request byte.
    pub request_first: Seen,
    /// Seen of the feed that carried the last request byte.
    pub request_last: Seen,
    /// None: connection closed / parse gave up before a final response.
    pub response: Option<ResponseHead>,
    pub response_body_bytes: u64,
    /// Seen of the feed that carried the first response byte (interim responses included).
    pub response_first: Option<Seen>,
    /// Seen of the feed that carried the last response byte.
    pub response_last: Option<Seen>,
    /// 1xx interim responses seen before the final one (100-continue).
    pub informational: Vec<u16>,
    /// Some bytes of this exchange were not captured or not parsed.
    pub truncated: bool,
}

/// What a [`Connection`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A request head is complete (emitted as soon as the head is parsed, before body/response) so
    /// the caller can set up trace context (e.g. read `traceparent`) while the request is in
    /// flight.
    RequestHead {
        seq: u64,
        /// Shared with the parser's pending request (an `Arc`, not a copy of every field).
        head: std::sync::Arc<RequestHead>,
        first: Seen,
    },
    /// A request and its response (or None) are complete (boxed: see `Pending::into_exchange`).
    Exchange(Box<Exchange>),
    /// The bytes in this direction are not HTTP/1.x; the parser gave up on the connection.
    NotHttp { direction: Direction },
}
