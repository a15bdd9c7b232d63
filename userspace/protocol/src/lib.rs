//! The one seam between the tracer and every protocol parser (HTTP/1.x, PostgreSQL, and the
//! ones on the roadmap): the [`Protocol`] trait and the types it speaks. No dependencies, no
//! I/O, so a parser crate depends on this and nothing of the tracer.
//!
//! The tracer sees a connection's bytes as [`Chunk`]s (one per captured piece of a syscall or
//! of a TLS library call), asks the registered protocols in order whether the first bytes are
//! theirs ([`Protocol::detect`]), feeds the one that said [`Verdict::Mine`], and gets
//! [`Output`]s back: an operation [`Output::Started`] (so trace context is set up while it is
//! in flight), an exchange [`Output::Done`], or [`Output::GiveUp`] (the bytes are not this
//! protocol, or they are encrypted). What an exchange means as a span is the tracer's side of
//! the seam (`sonde_core::protocols`).
// Unit-test builds also see dev-dependencies; the lint is for what the crate ships.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

/// Which way bytes moved on a connection, whichever end sonde traces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client to server (HTTP requests, PostgreSQL frontend messages).
    Request,
    /// Server to client (HTTP responses, PostgreSQL backend messages).
    Response,
}

#[allow(non_upper_case_globals)]
impl Direction {
    /// PostgreSQL's name for [`Direction::Request`].
    pub const Frontend: Direction = Direction::Request;
    /// PostgreSQL's name for [`Direction::Response`].
    pub const Backend: Direction = Direction::Response;
}

/// When and on which thread a piece of bytes was seen; opaque to parsers, passed through to
/// the exchanges they report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// CLOCK_MONOTONIC: a write's syscall entry, a read's exit.
    pub ts_ns: u64,
    pub tid: u32,
}

/// Where a chunk's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// What a read/write-family syscall moved (ciphertext, on a TLS connection).
    Syscall,
    /// Plaintext of a TLS library's read/write on the same connection (uprobes).
    TlsPlaintext,
}

/// Which end of the connection the traced socket is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// One captured piece of a connection's byte stream.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub direction: Direction,
    pub bytes: &'a [u8],
    /// Bytes that followed `bytes` in the same call but were not captured.
    pub lost_after: u64,
    pub seen: Seen,
    pub source: Source,
}

/// A protocol's answer to the first bytes of a connection's request direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Mine,
    NotMine,
    /// Cannot tell yet: wait for the next chunk (nothing else is asked meanwhile).
    NeedMore,
}

/// Why a parser stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GiveUp {
    /// The bytes are not this protocol (garbage, or a protocol switch the parser refused).
    NotThisProtocol,
    /// The bytes it was fed are encrypted: the connection may still be readable as TLS
    /// plaintext, so the tracer keeps the socket when it has a plaintext source.
    Encrypted,
}

/// What a parser reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output<E> {
    /// An operation's first bytes went out: its trace context is decided now.
    Started {
        /// The parser's sequence number, repeated by the [`Output::Done`] that ends it.
        seq: u64,
        first: Seen,
        /// A W3C `traceparent` the operation carries (an HTTP header), raw.
        traceparent: Option<Vec<u8>>,
    },
    /// An operation and its answer (or what is left of it) are complete.
    Done {
        seq: u64,
        /// Seen of the first request byte.
        first: Seen,
        exchange: E,
    },
    /// The parser gave up; it reports nothing more.
    GiveUp(GiveUp),
}

/// An incremental, I/O-free parser of one connection's two byte streams.
///
/// Implementations never panic on any input, bound their buffers, and resynchronise on
/// connections seen mid-stream (`from_start == false`).
pub trait Protocol: Sized {
    /// What one completed operation is (an HTTP request and its response, a query).
    type Exchange;
    /// The protocol's name, as in `--<name>-capture-bytes`'s settings and in diagnostics.
    const NAME: &'static str;
    /// Bytes per call the kernel should capture on this protocol's sockets, when more than the
    /// default (`--capture-bytes`) is needed; overridable per protocol in the tracer's config.
    const CAPTURE_BYTES: Option<u32> = None;

    /// Whether `first`, the first captured bytes of the request direction, are this
    /// protocol's. `from_start`: the connection was seen from its first byte (false: open
    /// before sonde started, so `first` can be any message).
    fn detect(first: &[u8], side: Side, from_start: bool) -> Verdict;
    fn new(from_start: bool) -> Self;
    fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Output<Self::Exchange>>);
    /// The connection ended: report what is still in flight.
    fn close(&mut self, seen: Seen, out: &mut Vec<Output<Self::Exchange>>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_names_are_the_same_directions() {
        assert_eq!(Direction::Frontend, Direction::Request);
        assert_eq!(Direction::Backend, Direction::Response);
        // Usable in patterns, as the PostgreSQL parser's tests do.
        assert!(matches!(Direction::Request, Direction::Frontend));
    }
}
