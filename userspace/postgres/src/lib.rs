//! PostgreSQL wire-protocol v3 parser and SQL sanitizer: pure, incremental, no I/O.
//!
//! The daemon feeds each syscall's bytes of a client connection ([`Connection::feed`], per
//! [`Direction`], in order, possibly cut short with `lost_after` bytes not captured) and gets
//! [`Event`]s back: one [`Operation`] per query execution (a simple-query round trip, or one
//! extended-protocol Execute, also when several are pipelined before one Sync), with SQL
//! whose literals are replaced by `?` ([`sanitize`]).
//!
//! Layers: [`framer`] cuts bytes into messages (bounded reassembly, [`framer::MAX_MESSAGE`]),
//! `conn` matches frontend messages with backend responses, `lexer` tokenizes SQL, and
//! [`sanitize`] turns tokens into sanitized text and a low-cardinality summary.
//!
//! Conventions the caller can rely on:
//! - `Startup.database` falls back to the user name when the client sent none (the server
//!   does the same).
//! - In a pipelined batch, the Execute an ErrorResponse belongs to gets the error (also when
//!   the failing message was its Parse or Bind); the later Executes of the batch, which the
//!   server skips, end right there (or at ReadyForQuery when sent after the error) with
//!   `truncated = true`, `error = None` and no tag.
//! - Operations are reported in `seq` order; every `OperationStarted` is followed by exactly
//!   one `Operation` with the same `seq` (at the latest on [`Connection::close`]).
//! - An Execute of a statement prepared before tracing began has `query_text = "EXECUTE
//!   <name>"`, `summary = "EXECUTE"` and `operation_name` taken from the CommandComplete tag.
//! - `summary` is empty when no statement was recognised (the caller names the span
//!   `postgresql` then).
//!
//! Why not `sqlparser`'s tokenizer: it returns an error on unterminated literals (exactly the
//! truncated text this crate must still sanitize), allocates a `String` per token, and
//! reports line/column locations rather than the byte offsets used here to copy identifiers
//! and operators verbatim. PostgreSQL's
//! lexical rules for literals are small (quotes with doubled-quote escapes, `E''` backslash
//! escapes, `$tag$` dollar quotes, `B''`/`X''`/`U&''`, numbers with `0x`/`_`), so `lexer`
//! implements them in ~300 lines that never fail and never allocate per token.
//!
//! Robustness: bodies nobody reads (DataRow, CopyData, Bind parameters) are skipped by length
//! without copying; lost bytes inside a message are skipped by its length (a cut Query is
//! sanitized as far as it was captured, `truncated = true`); lost bytes across message
//! boundaries drop the direction out of sync until a feed starts with a plausible message
//! (or a backend feed ends with CommandComplete + ReadyForQuery). After a backend gap, the
//! operations of earlier request rounds end `truncated` instead of taking later answers.
//!
//! Known limits: IN-lists of `$n` placeholders are kept as sent (only literal lists
//! collapse); a pipelining client that loses backend bytes may see earlier operations end
//! early; FunctionCall ('F') and replication (CopyBoth) traffic produce no operations.
//!
//! Tests: `cargo test -p sonde-postgres` (table tests, hand-built streams, proptests, and
//! `tests/fixtures/*.txt` captured from PostgreSQL 15 by `tests/capture/capture.py`:
//! psycopg2, psycopg 3 incl. pipelines, Django ORM, pgbench `-M prepared`; re-run the
//! script to refresh them, one `F|B <hex>` line per recv()).
//!
//! Fuzzing (nightly): `cd userspace/postgres/fuzz && cargo +nightly fuzz run parse -- -max_total_time=60`
//! (and `cargo +nightly fuzz run sanitize -- -max_total_time=60`).
// Unit-test builds also see dev-dependencies; the lint is for what the crate ships.
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod conn;
pub mod framer;
mod lexer;
mod protocol;
pub mod sanitize;

pub use conn::{Connection, looks_like_frontend_message, looks_like_startup};
pub use protocol::{Postgres, Query};

/// Which way bytes flowed (`Direction::Frontend`/`Backend` are PostgreSQL's names for
/// `Request`/`Response`), and when: the types shared by every protocol parser.
pub use sonde_protocol::{Direction, Seen};

/// One query execution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// 0-based per connection, in the order operations started.
    pub seq: u64,
    /// Sanitized text (literals -> `?`); `EXECUTE <name>` for a statement prepared before
    /// tracing began.
    pub query_text: String,
    /// `db.query.summary`, e.g. `SELECT auth_user`.
    pub summary: String,
    /// `db.operation.name`, e.g. `SELECT`.
    pub operation_name: Option<String>,
    /// `db.collection.name`, the first/main table.
    pub collection_name: Option<String>,
    /// CommandComplete tag (the last one of a multi-statement query), e.g. `INSERT 0 1`.
    pub command_tag: Option<String>,
    /// DataRow count, or the tag's count for SELECT/FETCH/COPY.
    pub returned_rows: Option<u64>,
    pub error: Option<PgError>,
    /// Extended protocol (Parse/Bind/Execute).
    pub prepared: bool,
    /// First frontend byte of this operation.
    pub first: Seen,
    /// The backend byte that completed it.
    pub last: Seen,
    /// Some bytes of this operation were not seen (cut text, lost responses, connection
    /// closed in flight, skipped after an error in the same pipeline).
    pub truncated: bool,
}

/// An ErrorResponse, without its message text (which can contain literal values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgError {
    pub sqlstate: String,
    pub severity: String,
}

/// What the parser reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Startup seen: user and database (db.namespace), application_name if present.
    Startup {
        user: Option<String>,
        database: Option<String>,
        application_name: Option<String>,
    },
    /// The first bytes of an operation went out: the caller attaches trace context now.
    OperationStarted {
        seq: u64,
        first: Seen,
    },
    Operation(Operation),
    /// SSLRequest/GSSENCRequest answered 'S'/'G' (or a TLS handshake started directly): the
    /// rest of the connection is encrypted and unreadable.
    Encrypted,
    /// Asynchronous NotificationResponse (LISTEN/NOTIFY), between exchanges.
    Notification {
        channel: String,
    },
    /// Not PostgreSQL: gave up on the connection.
    NotPostgres,
}
