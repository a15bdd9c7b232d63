//! HTTP/1.x behind the tracer's [`Protocol`] seam: detection by the request line, and the
//! parser's events as protocol-neutral [`Output`]s.
use sonde_protocol::{Chunk, GiveUp, Output, Protocol, Seen, Side, Verdict};

use crate::{Connection, Event, Exchange, looks_like_request};

/// One HTTP/1.x connection as the tracer drives it.
#[derive(Debug)]
pub struct Http1 {
    conn: Connection,
    events: Vec<Event>,
}

impl Http1 {
    fn drain(&mut self, out: &mut Vec<Output<Box<Exchange>>>) {
        for event in self.events.drain(..) {
            out.push(match event {
                Event::RequestHead { seq, head, first } => Output::Started {
                    seq,
                    first,
                    traceparent: head.header("traceparent").map(<[u8]>::to_vec),
                },
                Event::Exchange(exchange) => Output::Done {
                    seq: exchange.seq,
                    first: exchange.request_first,
                    exchange,
                },
                Event::NotHttp { .. } => Output::GiveUp(GiveUp::NotThisProtocol),
            });
        }
    }
}

impl Protocol for Http1 {
    type Exchange = Box<Exchange>;
    const NAME: &'static str = "http";

    /// A request line's method and target (either side: the client writes it, the server
    /// reads it).
    fn detect(first: &[u8], _side: Side, _from_start: bool) -> Verdict {
        if looks_like_request(first) {
            Verdict::Mine
        } else {
            Verdict::NotMine
        }
    }

    fn new(from_start: bool) -> Self {
        Self {
            conn: if from_start {
                Connection::new()
            } else {
                Connection::new_unsynced()
            },
            events: Vec::new(),
        }
    }

    fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Output<Box<Exchange>>>) {
        self.conn.feed(
            chunk.direction,
            chunk.bytes,
            chunk.lost_after,
            chunk.seen,
            &mut self.events,
        );
        self.drain(out);
    }

    fn close(&mut self, seen: Seen, out: &mut Vec<Output<Box<Exchange>>>) {
        self.conn.close(seen, &mut self.events);
        self.drain(out);
    }
}

#[cfg(test)]
mod tests {
    use sonde_protocol::{Direction, Source};

    use super::*;

    fn chunk(direction: Direction, bytes: &[u8], tid: u32) -> Chunk<'_> {
        Chunk {
            direction,
            bytes,
            lost_after: 0,
            seen: Seen { ts_ns: 1, tid },
            source: Source::Syscall,
        }
    }

    #[test]
    fn detects_request_lines_only() {
        assert_eq!(
            Http1::detect(b"GET / HTTP/1.1\r\n", Side::Server, true),
            Verdict::Mine
        );
        assert_eq!(
            Http1::detect(b"\x16\x03\x01\x02\x00", Side::Server, true),
            Verdict::NotMine
        );
    }

    #[test]
    fn started_carries_traceparent_and_done_ends_it() {
        let mut p = Http1::new(true);
        let mut out = Vec::new();
        p.feed(
            chunk(
                Direction::Request,
                b"GET /a HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
                7,
            ),
            &mut out,
        );
        assert!(matches!(
            &out[..],
            [Output::Started { seq: 0, first: Seen { tid: 7, .. }, traceparent: Some(t) }]
                if t.starts_with(b"00-0af7")
        ));
        out.clear();
        p.feed(
            chunk(Direction::Response, b"HTTP/1.1 204 No Content\r\n\r\n", 7),
            &mut out,
        );
        assert!(matches!(
            &out[..],
            [Output::Done { seq: 0, first: Seen { tid: 7, .. }, exchange }]
                if exchange.response.as_ref().map(|r| r.status) == Some(204)
        ));
    }

    #[test]
    fn garbage_gives_up_as_not_this_protocol() {
        let mut p = Http1::new(true);
        let mut out = Vec::new();
        p.feed(
            chunk(Direction::Request, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", 1),
            &mut out,
        );
        p.feed(
            chunk(Direction::Response, b"\x00\x01garbage\r\n\r\n", 1),
            &mut out,
        );
        assert_eq!(out.last(), Some(&Output::GiveUp(GiveUp::NotThisProtocol)));
    }
}
