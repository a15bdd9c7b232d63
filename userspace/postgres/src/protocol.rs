//! PostgreSQL behind the tracer's [`Protocol`] seam: detection by the StartupMessage (or, on
//! a connection older than sonde, any plausible frontend message), and the parser's events
//! as protocol-neutral [`Output`]s.
//!
//! Only the client's side of a connection is PostgreSQL to sonde: the server's side of the
//! same connection would describe the same queries a second time, so `detect` refuses it.
use sonde_protocol::{Chunk, GiveUp, Output, Protocol, Seen, Side, Verdict};

use crate::{Connection, Event, Operation, looks_like_frontend_message, looks_like_startup};

/// One query execution and the database it ran in (`db.namespace`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub operation: Operation,
    /// From the StartupMessage; None on connections older than sonde.
    pub database: Option<String>,
}

/// One PostgreSQL client connection as the tracer drives it.
pub struct Postgres {
    conn: Connection,
    events: Vec<Event>,
}

impl Postgres {
    fn drain(&mut self, out: &mut Vec<Output<Box<Query>>>) {
        for event in self.events.drain(..) {
            match event {
                Event::OperationStarted { seq, first } => out.push(Output::Started {
                    seq,
                    first,
                    traceparent: None,
                }),
                Event::Operation(operation) => out.push(Output::Done {
                    seq: operation.seq,
                    first: operation.first,
                    // Boxed, as HTTP's exchanges: the tracer's queues move a pointer.
                    exchange: Box::new(Query {
                        database: self.conn.database().map(str::to_owned),
                        operation,
                    }),
                }),
                // 'S' (TLS: the tracer re-detects on the plaintext) or 'G' (GSSAPI).
                Event::Encrypted | Event::TlsStarted => out.push(Output::GiveUp(GiveUp::Encrypted)),
                Event::NotPostgres => out.push(Output::GiveUp(GiveUp::NotThisProtocol)),
                Event::Startup { .. } | Event::Notification { .. } => {}
            }
        }
    }
}

impl Protocol for Postgres {
    type Exchange = Box<Query>;
    const NAME: &'static str = "postgresql";
    /// Long ORM queries: the whole Query/Parse message, up to the kernel's largest capture.
    const CAPTURE_BYTES: Option<u32> = Some(65536);

    fn detect(first: &[u8], side: Side, from_start: bool) -> Verdict {
        if side == Side::Server {
            return Verdict::NotMine;
        }
        if looks_like_startup(first) || (!from_start && looks_like_frontend_message(first)) {
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

    fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Output<Box<Query>>>) {
        self.conn.feed(
            chunk.direction,
            chunk.bytes,
            chunk.lost_after,
            chunk.seen,
            &mut self.events,
        );
        self.drain(out);
    }

    fn close(&mut self, seen: Seen, out: &mut Vec<Output<Box<Query>>>) {
        self.conn.close(seen, &mut self.events);
        self.drain(out);
    }
}

#[cfg(test)]
mod tests {
    use sonde_protocol::{Direction, Source};

    use super::*;

    fn startup(database: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&0x0003_0000u32.to_be_bytes());
        for s in ["user", "app", "database", database, ""] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        m.extend_from_slice(&body);
        m
    }

    fn chunk(direction: Direction, bytes: &[u8]) -> Chunk<'_> {
        Chunk {
            direction,
            bytes,
            lost_after: 0,
            seen: Seen { ts_ns: 5, tid: 9 },
            source: Source::Syscall,
        }
    }

    #[test]
    fn only_the_client_side_is_detected() {
        let s = startup("shop");
        assert_eq!(Postgres::detect(&s, Side::Client, true), Verdict::Mine);
        assert_eq!(Postgres::detect(&s, Side::Server, true), Verdict::NotMine);
        let q = b"Q\x00\x00\x00\x0eSELECT 1;\x00";
        assert_eq!(Postgres::detect(q, Side::Client, true), Verdict::NotMine);
        assert_eq!(Postgres::detect(q, Side::Client, false), Verdict::Mine);
        assert_eq!(
            Postgres::detect(b"GET / HTTP/1.1\r\n", Side::Client, true),
            Verdict::NotMine
        );
    }

    #[test]
    fn a_query_is_started_then_done_with_its_database() {
        let mut p = Postgres::new(true);
        let mut out = Vec::new();
        p.feed(chunk(Direction::Frontend, &startup("shop")), &mut out);
        p.feed(
            chunk(
                Direction::Backend,
                b"R\x00\x00\x00\x08\x00\x00\x00\x00Z\x00\x00\x00\x05I",
            ),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        p.feed(
            chunk(Direction::Frontend, b"Q\x00\x00\x00\x0eSELECT 1;\x00"),
            &mut out,
        );
        assert!(
            matches!(
                out[..],
                [Output::Started {
                    seq: 0,
                    traceparent: None,
                    ..
                }]
            ),
            "{out:?}"
        );
        out.clear();
        p.feed(
            chunk(
                Direction::Backend,
                b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I",
            ),
            &mut out,
        );
        let [
            Output::Done {
                seq: 0, exchange, ..
            },
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(exchange.database.as_deref(), Some("shop"));
        assert_eq!(exchange.operation.seq, 0);
    }

    #[test]
    fn ssl_accepted_is_encrypted_not_garbage() {
        let mut p = Postgres::new(true);
        let mut out = Vec::new();
        p.feed(
            chunk(Direction::Frontend, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
            &mut out,
        );
        p.feed(chunk(Direction::Backend, b"S"), &mut out);
        p.feed(
            chunk(
                Direction::Frontend,
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            ),
            &mut out,
        );
        assert!(out.contains(&Output::GiveUp(GiveUp::Encrypted)), "{out:?}");
    }
}
