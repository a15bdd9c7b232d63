//! The protocol registry: which protocols the tracer knows, in which order it asks them about
//! a connection's first bytes, and the one place where each protocol's exchanges meet their
//! span mapping. The tracer itself only sees [`Output`]s of [`AnyExchange`].
//!
//! Adding a protocol: a parser crate implementing [`Protocol`], a [`SpanMapping`] in one file
//! under `trace/`, and one line in the `registry!` invocation below (its place is its
//! detection order).
//!
//! Must never: hold per-connection state beyond the parser, or know a protocol's details
//! (those live in the parser crate and its mapping file).
pub use sonde_http1::Http1;
pub use sonde_postgres::Postgres;
pub use sonde_protocol::{Chunk, Direction, GiveUp, Output, Protocol, Seen, Side, Source, Verdict};

use crate::{
    clock::Clock,
    trace::{context::SpanContext, http::Endpoints, route::RouteTemplates, span::SpanParts},
};

/// What a span mapping knows besides the exchange and its context.
pub struct MapContext<'a> {
    /// Which end of the connection sonde traced: CLIENT or SERVER span.
    pub side: Side,
    pub endpoints: Endpoints,
    pub routes: &'a RouteTemplates,
    pub clock: &'a Clock,
    /// Kernel time of the event that completed the exchange (end of spans with no end).
    pub now_ns: u64,
}

/// How one protocol's exchanges become span parts (its semantic conventions), in one file
/// per protocol under `trace/`.
pub trait SpanMapping: Protocol {
    fn span_parts(exchange: &Self::Exchange, ctx: SpanContext, at: &MapContext<'_>) -> SpanParts;
}

/// Per-protocol settings from the command line.
#[derive(Clone, Debug, Default)]
pub struct ProtocolSettings {
    /// Capture sizes overriding a protocol's [`Protocol::CAPTURE_BYTES`], by protocol name.
    capture_bytes: Vec<(&'static str, u32)>,
}

impl ProtocolSettings {
    /// Sets the capture size of the protocol called `name` (`--postgres-capture-bytes`).
    pub fn with_capture_bytes(mut self, name: &'static str, bytes: u32) -> Self {
        self.capture_bytes.retain(|(n, _)| *n != name);
        self.capture_bytes.push((name, bytes));
        self
    }

    fn capture_bytes_of<P: Protocol>(&self) -> Option<u32> {
        self.capture_bytes
            .iter()
            .find(|(n, _)| *n == P::NAME)
            .map(|(_, b)| *b)
            .or(P::CAPTURE_BYTES)
    }
}

/// The answer of the registry to a connection's first bytes.
pub enum Detection {
    Found(Parser),
    /// A protocol needs more bytes before it can tell.
    NeedMore,
    /// No registered protocol claims them.
    None,
}

/// A parser with its own output buffer (reused across feeds).
pub struct Slot<P: Protocol> {
    parser: P,
    out: Vec<Output<P::Exchange>>,
}

fn wrap<E, F: Fn(E) -> AnyExchange>(output: Output<E>, f: F) -> Output<AnyExchange> {
    match output {
        Output::Started {
            seq,
            first,
            traceparent,
        } => Output::Started {
            seq,
            first,
            traceparent,
        },
        Output::Done {
            seq,
            first,
            exchange,
        } => Output::Done {
            seq,
            first,
            exchange: f(exchange),
        },
        Output::GiveUp(g) => Output::GiveUp(g),
    }
}

macro_rules! registry {
    ($($variant:ident => $ty:ty),+ $(,)?) => {
        /// A connection's parser: one variant per registered protocol.
        pub enum Parser {
            $($variant(Box<Slot<$ty>>)),+
        }

        /// A completed exchange of any registered protocol.
        #[derive(Debug)]
        pub enum AnyExchange {
            $($variant(<$ty as Protocol>::Exchange)),+
        }

        /// Registered protocol names, in detection order.
        pub const NAMES: &[&str] = &[$(<$ty as Protocol>::NAME),+];

        impl Parser {
            /// Asks each protocol in registry order whether `first` (the first captured bytes
            /// of the request direction) is theirs.
            pub fn detect(first: &[u8], side: Side, from_start: bool) -> Detection {
                $(
                    match <$ty as Protocol>::detect(first, side, from_start) {
                        Verdict::Mine => {
                            return Detection::Found(Parser::$variant(Box::new(Slot {
                                parser: <$ty as Protocol>::new(from_start),
                                out: Vec::new(),
                            })));
                        }
                        Verdict::NeedMore => return Detection::NeedMore,
                        Verdict::NotMine => {}
                    }
                )+
                Detection::None
            }

            pub fn name(&self) -> &'static str {
                match self {
                    $(Parser::$variant(_) => <$ty as Protocol>::NAME),+
                }
            }

            /// The capture size this connection's sockets need, if not the default.
            pub fn capture_bytes(&self, settings: &ProtocolSettings) -> Option<u32> {
                match self {
                    $(Parser::$variant(_) => settings.capture_bytes_of::<$ty>()),+
                }
            }

            pub fn feed(&mut self, chunk: Chunk<'_>, out: &mut Vec<Output<AnyExchange>>) {
                match self {
                    $(Parser::$variant(slot) => {
                        let Slot { parser, out: buf } = &mut **slot;
                        parser.feed(chunk, buf);
                        out.extend(buf.drain(..).map(|o| wrap(o, AnyExchange::$variant)));
                    }),+
                }
            }

            pub fn close(&mut self, seen: Seen, out: &mut Vec<Output<AnyExchange>>) {
                match self {
                    $(Parser::$variant(slot) => {
                        let Slot { parser, out: buf } = &mut **slot;
                        parser.close(seen, buf);
                        out.extend(buf.drain(..).map(|o| wrap(o, AnyExchange::$variant)));
                    }),+
                }
            }
        }

        impl AnyExchange {
            pub fn span_parts(&self, ctx: SpanContext, at: &MapContext<'_>) -> SpanParts {
                match self {
                    $(AnyExchange::$variant(e) => <$ty as SpanMapping>::span_parts(e, ctx, at)),+
                }
            }
        }
    };
}

// The detection order. HTTP first: a request line is cheap to recognise and never a
// PostgreSQL message.
registry! {
    Http => Http1,
    Postgres => Postgres,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_follows_the_registry() {
        assert_eq!(NAMES, ["http", "postgresql"]);
        let http = Parser::detect(b"GET / HTTP/1.1\r\n", Side::Server, true);
        assert!(matches!(http, Detection::Found(ref p) if p.name() == "http"));
        let startup = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";
        let pg = Parser::detect(startup, Side::Client, true);
        assert!(matches!(pg, Detection::Found(ref p) if p.name() == "postgresql"));
        // The server's side of a PostgreSQL connection and garbage are nobody's.
        assert!(matches!(
            Parser::detect(startup, Side::Server, true),
            Detection::None
        ));
        assert!(matches!(
            Parser::detect(b"\x16\x03\x01garbage", Side::Client, true),
            Detection::None
        ));
    }

    #[test]
    fn capture_size_comes_from_the_settings_or_the_protocol() {
        let Detection::Found(pg) =
            Parser::detect(b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Side::Client, true)
        else {
            panic!("not detected")
        };
        let Detection::Found(http) = Parser::detect(b"GET / HTTP/1.1\r\n", Side::Client, true)
        else {
            panic!("not detected")
        };
        let defaults = ProtocolSettings::default();
        assert_eq!(pg.capture_bytes(&defaults), Some(65536));
        assert_eq!(http.capture_bytes(&defaults), None);
        let set = defaults.with_capture_bytes(Postgres::NAME, 4096);
        assert_eq!(pg.capture_bytes(&set), Some(4096));
        assert_eq!(http.capture_bytes(&set), None);
    }
}
