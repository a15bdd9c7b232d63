//! Connection tests from hand-built byte streams: startup variants, encryption, resync,
//! unknown statements, reassembly, lost bytes and bounds.

use super::*;

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn untagged(code: u32, rest: &[u8]) -> Vec<u8> {
    let mut v = ((rest.len() + 8) as u32).to_be_bytes().to_vec();
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(rest);
    v
}

fn startup(user: &str, db: Option<&str>) -> Vec<u8> {
    let mut rest = format!("user\0{user}\0").into_bytes();
    if let Some(db) = db {
        rest.extend_from_slice(format!("database\0{db}\0").as_bytes());
    }
    rest.push(0);
    untagged(196_608, &rest)
}

fn q(sql: &str) -> Vec<u8> {
    msg(b'Q', format!("{sql}\0").as_bytes())
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    msg(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    // One text parameter whose value must never surface.
    let mut b = format!("{portal}\0{stmt}\0").into_bytes();
    b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 6]);
    b.extend_from_slice(b"SECRET");
    b.extend_from_slice(&[0, 0]);
    msg(b'B', &b)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut b = format!("{portal}\0").into_bytes();
    b.extend_from_slice(&[0, 0, 0, 0]);
    msg(b'E', &b)
}

fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

fn complete(tag: &str) -> Vec<u8> {
    msg(b'C', format!("{tag}\0").as_bytes())
}

fn ready() -> Vec<u8> {
    msg(b'Z', b"I")
}

fn row() -> Vec<u8> {
    msg(b'D', &[0, 1, 0, 0, 0, 1, b'7'])
}

fn row_desc() -> Vec<u8> {
    let mut b = vec![0, 1];
    b.extend_from_slice(b"a\0");
    b.extend_from_slice(&[0; 18]);
    msg(b'T', &b)
}

fn error(code: &str) -> Vec<u8> {
    msg(
        b'E',
        format!("SERROR\0VERROR\0C{code}\0Mvalue 'SECRET' is bad\0\0").as_bytes(),
    )
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn at(ts: u64) -> Seen {
    Seen { ts_ns: ts, tid: 7 }
}

struct Run {
    c: Connection,
    out: Vec<Event>,
    ts: u64,
}

impl Run {
    fn new(c: Connection) -> Self {
        Self {
            c,
            out: Vec::new(),
            ts: 0,
        }
    }
    fn fe(&mut self, b: &[u8]) -> &mut Self {
        self.ts += 1;
        self.c
            .feed(Direction::Frontend, b, 0, at(self.ts), &mut self.out);
        self
    }
    fn be(&mut self, b: &[u8]) -> &mut Self {
        self.ts += 1;
        self.c
            .feed(Direction::Backend, b, 0, at(self.ts), &mut self.out);
        self
    }
    fn ops(&self) -> Vec<Operation> {
        self.out
            .iter()
            .filter_map(|e| match e {
                Event::Operation(o) => Some(o.clone()),
                _ => None,
            })
            .collect()
    }
    fn started(&self) -> usize {
        self.out
            .iter()
            .filter(|e| matches!(e, Event::OperationStarted { .. }))
            .count()
    }
}

fn simple_exchange(r: &mut Run) {
    r.fe(&q("SELECT a FROM t WHERE b = 'x'"));
    r.be(&cat(&[
        row_desc(),
        row(),
        row(),
        complete("SELECT 2"),
        ready(),
    ]));
}

#[test]
fn startup_reports_user_database_and_application() {
    let mut r = Run::new(Connection::new());
    let mut rest = b"user\0bob\0application_name\0web\0".to_vec();
    rest.push(0);
    r.fe(&untagged(196_608, &rest));
    assert_eq!(
        r.out,
        vec![Event::Startup {
            user: Some("bob".into()),
            database: Some("bob".into()),
            application_name: Some("web".into())
        }]
    );
    assert_eq!(r.c.database(), Some("bob"));
    assert!(r.c.is_postgres());
    // Authentication is skipped: R, password, ParameterStatus, BackendKeyData, Z.
    r.be(&msg(b'R', &[0, 0, 0, 3]));
    r.fe(&msg(b'p', b"pw\0"));
    r.be(&cat(&[
        msg(b'R', &[0, 0, 0, 0]),
        msg(b'S', b"a\0b\0"),
        msg(b'K', &[0; 8]),
        ready(),
    ]));
    simple_exchange(&mut r);
    let ops = r.ops();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].query_text, "SELECT a FROM t WHERE b = ?");
    assert_eq!(ops[0].returned_rows, Some(2));
    assert_eq!((ops[0].first, ops[0].last), (at(5), at(6)));
}

#[test]
fn ssl_request_answered_n_continues() {
    let mut r = Run::new(Connection::new());
    r.fe(&untagged(SSL_REQUEST, &[])).be(b"N");
    r.fe(&startup("u", Some("d")));
    r.be(&ready());
    simple_exchange(&mut r);
    assert!(matches!(r.out.first(), Some(Event::Startup { .. })));
    assert_eq!(r.ops().len(), 1);
    assert_eq!(r.c.database(), Some("d"));
}

#[test]
fn ssl_request_answered_s_fed_ciphertext_is_encrypted_and_nothing_else_is_parsed() {
    let mut r = Run::new(Connection::new());
    r.fe(&untagged(SSL_REQUEST, &[])).be(b"S");
    // TLS records that happen to contain protocol-looking bytes.
    r.fe(&[0x16, 0x03, 0x01, 0x00, 0x10])
        .fe(&q("SELECT 1"))
        .be(&cat(&[complete("SELECT 1"), ready()]));
    r.c.close(at(99), &mut r.out);
    assert_eq!(r.out, vec![Event::TlsStarted, Event::Encrypted]);
}

#[test]
fn ssl_request_answered_s_continues_with_the_plaintext_startup() {
    let mut r = Run::new(Connection::new());
    r.fe(&untagged(SSL_REQUEST, &[])).be(b"S");
    assert_eq!(r.out, vec![Event::TlsStarted]);
    // What the OpenSSL uprobes deliver: the startup message, then the protocol as usual.
    r.fe(&startup("u", Some("shop")));
    r.be(&ready());
    simple_exchange(&mut r);
    assert!(matches!(r.out.get(1), Some(Event::Startup { database: Some(d), .. }) if d == "shop"));
    assert_eq!(r.ops().len(), 1);
    assert_eq!(r.c.database(), Some("shop"));
}

#[test]
fn ssl_request_and_startup_in_one_write_answered_n_in_the_same_read_as_the_next_answer() {
    let mut r = Run::new(Connection::new());
    r.fe(&cat(&[untagged(SSL_REQUEST, &[]), startup("u", Some("d"))]));
    r.be(&cat(&[b"N".to_vec(), ready()]));
    simple_exchange(&mut r);
    assert!(!r.out.contains(&Event::Encrypted));
    assert!(!r.out.contains(&Event::TlsStarted));
    assert_eq!(r.ops().len(), 1);
    assert_eq!(r.c.database(), Some("d"));
}

#[test]
fn gssenc_request_answered_g_is_encrypted_and_n_continues() {
    let mut r = Run::new(Connection::new());
    r.fe(&untagged(GSSENC_REQUEST, &[]))
        .be(b"G")
        .fe(&q("SELECT 1"));
    assert_eq!(r.out, vec![Event::Encrypted]);

    let mut r = Run::new(Connection::new());
    r.fe(&untagged(GSSENC_REQUEST, &[])).be(b"N");
    // Then an SSLRequest, answered N, then plaintext.
    r.fe(&untagged(SSL_REQUEST, &[]))
        .be(b"N")
        .fe(&startup("u", None))
        .be(&ready());
    simple_exchange(&mut r);
    assert_eq!(r.ops().len(), 1);
    assert!(!r.out.contains(&Event::Encrypted));
}

#[test]
fn direct_tls_is_encrypted() {
    let mut r = Run::new(Connection::new());
    r.fe(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]);
    assert_eq!(r.out, vec![Event::Encrypted]);
}

#[test]
fn cancel_request_is_postgres_without_operations() {
    let mut r = Run::new(Connection::new());
    r.fe(&untagged(CANCEL_REQUEST, &[0, 0, 0, 42, 1, 2, 3, 4]));
    r.c.close(at(9), &mut r.out);
    assert!(r.out.is_empty());
    assert!(r.c.is_postgres());
    assert!(looks_like_startup(&untagged(CANCEL_REQUEST, &[0; 8])));
}

#[test]
fn not_postgres_gives_up() {
    let mut r = Run::new(Connection::new());
    r.fe(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .fe(&q("SELECT 1"));
    assert_eq!(r.out, vec![Event::NotPostgres]);
    assert!(!r.c.is_postgres());
    assert!(!looks_like_startup(b"GET / HTTP/1.1\r\n"));

    // Unsynced connections give up after many implausible feeds.
    let mut r = Run::new(Connection::new_unsynced());
    for _ in 0..MAX_UNSYNCED_FEEDS {
        r.fe(b"\x01\x02garbage that is not a message");
    }
    assert_eq!(r.out, vec![Event::NotPostgres]);
}

#[test]
fn unsynced_start_mid_stream_resynchronises() {
    let mut r = Run::new(Connection::new_unsynced());
    // The tail of a query sent before tracing, and its response.
    r.fe(b"ERE id = 5\0")
        .be(&cat(&[row(), complete("SELECT 1"), ready()]));
    // A backend feed starting mid-message is ignored until a boundary shows up.
    r.be(&[0, 0, 1, 2, 3]);
    assert!(r.out.is_empty());
    simple_exchange(&mut r);
    let ops = r.ops();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].summary, "SELECT t");
    assert_eq!(ops[0].seq, 0);
    assert!(r.c.is_postgres());
    assert_eq!(r.c.database(), None);
}

#[test]
fn unknown_prepared_statement_is_execute_name() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&cat(&[bind("", "S_7"), execute(""), sync()]));
    r.be(&cat(&[
        msg(b'2', &[]),
        row(),
        row(),
        row(),
        complete("SELECT 3"),
        ready(),
    ]));
    let ops = r.ops();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].query_text, "EXECUTE S_7");
    assert_eq!(ops[0].summary, "EXECUTE");
    assert_eq!(ops[0].operation_name.as_deref(), Some("SELECT"));
    assert_eq!(ops[0].returned_rows, Some(3));
    assert!(ops[0].prepared);
    assert!(!format!("{:?}", r.out).contains("SECRET"));

    // An Execute of a portal never bound in sight.
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&cat(&[execute("p1"), sync()]))
        .be(&cat(&[complete("UPDATE 2"), ready()]));
    let ops = r.ops();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].query_text, "EXECUTE");
    assert_eq!(ops[0].operation_name.as_deref(), Some("UPDATE"));
}

#[test]
fn named_statements_portals_and_close() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&cat(&[parse("s1", "SELECT * FROM a WHERE x = $1"), sync()]));
    r.be(&cat(&[msg(b'1', &[]), ready()]));
    r.fe(&cat(&[
        bind("", "s1"),
        execute(""),
        bind("", "s1"),
        execute(""),
        sync(),
    ]));
    r.be(&cat(&[
        msg(b'2', &[]),
        row(),
        complete("SELECT 1"),
        msg(b'2', &[]),
        complete("SELECT 0"),
        ready(),
    ]));
    let close = msg(b'C', b"Ss1\0");
    r.fe(&cat(&[close, sync()]))
        .be(&cat(&[msg(b'3', &[]), ready()]));
    r.fe(&cat(&[bind("", "s1"), execute(""), sync()]))
        .be(&cat(&[msg(b'2', &[]), complete("SELECT 0"), ready()]));
    let ops = r.ops();
    assert_eq!(ops.len(), 3);
    assert_eq!(ops[0].query_text, "SELECT * FROM a WHERE x = $1");
    assert_eq!(ops[0].returned_rows, Some(1));
    assert_eq!(ops[1].returned_rows, Some(0));
    assert_eq!(ops[2].query_text, "EXECUTE s1");
}

#[test]
fn parse_error_in_pipeline_errors_its_execute_and_skips_the_rest() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&cat(&[
        parse("", "SELECT 1"),
        bind("", ""),
        execute(""),
        parse("", "SELEC oops"),
        bind("", ""),
        execute(""),
        parse("", "SELECT 3"),
        bind("", ""),
        execute(""),
        sync(),
    ]));
    r.be(&cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        row(),
        complete("SELECT 1"),
        error("42601"),
    ]));
    let ops = r.ops();
    assert_eq!(ops.len(), 3);
    assert_eq!(ops[0].error, None);
    assert_eq!(ops[1].query_text, "SELEC oops");
    assert_eq!(
        ops[1].error.as_ref().map(|e| e.sqlstate.as_str()),
        Some("42601")
    );
    assert!(ops[2].truncated && ops[2].error.is_none());
    r.be(&ready());
    assert_eq!(r.ops().len(), 3);
    // The connection is usable afterwards.
    simple_exchange(&mut r);
    assert_eq!(r.ops().len(), 4);
    assert!(!format!("{:?}", r.out).contains("SECRET"));
}

#[test]
fn execute_sent_after_the_error_ends_at_ready_for_query() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&cat(&[
        parse("", "SELECT x FROM t"),
        bind("", ""),
        execute(""),
        msg(b'H', &[]),
    ]));
    r.be(&error("42703"));
    r.fe(&cat(&[
        parse("", "SELECT 2"),
        bind("", ""),
        execute(""),
        sync(),
    ]));
    r.be(&ready());
    let ops = r.ops();
    assert_eq!(ops.len(), 2);
    assert_eq!(
        ops[0].error.as_ref().map(|e| e.sqlstate.as_str()),
        Some("42703")
    );
    assert!(ops[1].truncated);
    assert_eq!(r.started(), 2);
}

#[test]
fn portal_suspended_and_empty_query() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&cat(&[
        parse("", "SELECT * FROM big"),
        bind("c", ""),
        execute("c"),
        execute("c"),
        sync(),
    ]));
    r.be(&cat(&[
        msg(b'1', &[]),
        msg(b'2', &[]),
        row(),
        row(),
        msg(b's', &[]),
        row(),
        complete("SELECT 1"),
        ready(),
    ]));
    r.fe(&q("")).be(&cat(&[msg(b'I', &[]), ready()]));
    let ops = r.ops();
    assert_eq!(ops.len(), 3);
    assert_eq!(
        (ops[0].returned_rows, ops[0].command_tag.as_deref()),
        (Some(2), None)
    );
    assert_eq!(
        (ops[1].returned_rows, ops[1].command_tag.as_deref()),
        (Some(1), Some("SELECT 1"))
    );
    assert_eq!((ops[2].summary.as_str(), ops[2].truncated), ("", false));
}

#[test]
fn multi_statement_simple_query_sums_rows() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&q("SELECT 1; SELECT 2 FROM t; UPDATE t SET a = 3"));
    r.be(&cat(&[
        row_desc(),
        row(),
        complete("SELECT 1"),
        row_desc(),
        row(),
        row(),
        complete("SELECT 2"),
        complete("UPDATE 5"),
        ready(),
    ]));
    let ops = r.ops();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].returned_rows, Some(3));
    assert_eq!(ops[0].command_tag.as_deref(), Some("UPDATE 5"));
    assert_eq!(ops[0].summary, "SELECT SELECT t UPDATE t");
}

#[test]
fn large_query_reassembles_across_feeds() {
    let cols: Vec<String> = (0..2500).map(|i| format!("col_{i:04}")).collect();
    let sql = format!("SELECT {} FROM wide WHERE k = 'v'", cols.join(", "));
    assert!(sql.len() > 20 * 1024);
    let bytes = q(&sql);
    let mut r = Run::new(Connection::new_unsynced());
    for part in bytes.chunks(4096) {
        r.fe(part);
    }
    r.be(&cat(&[complete("SELECT 0"), ready()]));
    let ops = r.ops();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].query_text, sql.replace("'v'", "?"));
    assert!(!ops[0].truncated);
    assert_eq!(ops[0].first, at(1));
}

#[test]
fn lost_tail_of_a_query_is_sanitized_and_truncated() {
    let sql = format!("INSERT INTO t (a) VALUES ('{}')", "s".repeat(100));
    let bytes = q(&sql);
    let mut c = Connection::new_unsynced();
    let mut out = Vec::new();
    // The kernel captured 40 bytes of this write and reports the rest as lost.
    let (cap, _) = bytes.split_at(40);
    c.feed(
        Direction::Frontend,
        cap,
        (bytes.len() - 40) as u64,
        at(1),
        &mut out,
    );
    // The next write is captured whole and must still be framed correctly.
    c.feed(Direction::Frontend, &q("SELECT 2"), 0, at(2), &mut out);
    c.feed(
        Direction::Backend,
        &cat(&[complete("INSERT 0 1"), ready()]),
        0,
        at(3),
        &mut out,
    );
    c.feed(
        Direction::Backend,
        &cat(&[complete("SELECT 1"), ready()]),
        0,
        at(4),
        &mut out,
    );
    let ops: Vec<&Operation> = out
        .iter()
        .filter_map(|e| {
            if let Event::Operation(o) = e {
                Some(o)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[0].query_text, "INSERT INTO t (a) VALUES (?");
    assert_eq!(ops[0].summary, "INSERT t");
    assert!(ops[0].truncated);
    assert_eq!(ops[1].query_text, "SELECT ?");
    assert!(!ops[1].truncated);
}

#[test]
fn lost_backend_rows_are_skipped_by_length() {
    let mut c = Connection::new_unsynced();
    let mut out = Vec::new();
    c.feed(
        Direction::Frontend,
        &q("SELECT * FROM t"),
        0,
        at(1),
        &mut out,
    );
    let big = msg(b'D', &vec![b'x'; 100_000]);
    let mut resp = cat(&[row_desc(), row()]);
    resp.extend_from_slice(&big);
    // Capture ends inside the big row; the rest of that row is lost.
    let captured = resp.len() - 60_000;
    c.feed(
        Direction::Backend,
        &resp[..captured],
        60_000,
        at(2),
        &mut out,
    );
    c.feed(
        Direction::Backend,
        &cat(&[row(), complete("SELECT 3"), ready()]),
        0,
        at(3),
        &mut out,
    );
    let ops: Vec<&Operation> = out
        .iter()
        .filter_map(|e| {
            if let Event::Operation(o) = e {
                Some(o)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].returned_rows, Some(3));
    assert!(!ops[0].truncated);
}

#[test]
fn lost_bytes_across_messages_resync_and_mark_truncated() {
    let mut c = Connection::new_unsynced();
    let mut out = Vec::new();
    c.feed(
        Direction::Frontend,
        &q("SELECT * FROM t"),
        0,
        at(1),
        &mut out,
    );
    // A row, then bytes lost at a boundary (unknown messages).
    c.feed(Direction::Backend, &row(), 5000, at(2), &mut out);
    c.feed(
        Direction::Backend,
        &cat(&[complete("SELECT 40"), ready()]),
        0,
        at(3),
        &mut out,
    );
    let ops: Vec<&Operation> = out
        .iter()
        .filter_map(|e| {
            if let Event::Operation(o) = e {
                Some(o)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(ops.len(), 1);
    assert!(ops[0].truncated);
    assert_eq!(ops[0].returned_rows, Some(40));
}

#[test]
fn oversized_message_is_cut_and_skipped() {
    let sql = format!(
        "SELECT '{}', a FROM t",
        "x".repeat(framer::MAX_MESSAGE + 10)
    );
    let bytes = q(&sql);
    let mut r = Run::new(Connection::new_unsynced());
    for part in bytes.chunks(64 * 1024) {
        r.fe(part);
    }
    r.fe(&q("SELECT 2"));
    r.be(&cat(&[
        complete("SELECT 1"),
        ready(),
        complete("SELECT 1"),
        ready(),
    ]));
    let ops = r.ops();
    assert_eq!(ops.len(), 2);
    assert_eq!(ops[0].query_text, "SELECT ?");
    assert!(ops[0].truncated);
    assert_eq!(ops[1].query_text, "SELECT ?");
    assert!(!ops[1].truncated);
}

#[test]
fn copy_in_is_one_operation_and_data_is_not_kept() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&q("COPY t FROM STDIN"));
    r.be(&msg(b'G', &[0, 0, 1, 0, 0]));
    r.fe(&cat(&[
        msg(b'd', b"SECRET\t1\n"),
        msg(b'd', b"SECRET\t2\n"),
        msg(b'c', &[]),
    ]));
    r.be(&cat(&[complete("COPY 2"), ready()]));
    let ops = r.ops();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].returned_rows, Some(2));
    assert!(!format!("{:?}", r.out).contains("SECRET"));
}

#[test]
fn notification_between_exchanges() {
    let mut r = Run::new(Connection::new_unsynced());
    simple_exchange(&mut r);
    r.be(&msg(b'A', b"\0\0\0\x2achan\0payload SECRET\0"));
    assert_eq!(
        r.out.last(),
        Some(&Event::Notification {
            channel: "chan".into()
        })
    );
    assert!(!format!("{:?}", r.out).contains("SECRET"));
}

#[test]
fn close_ends_in_flight_operations_truncated() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&q("SELECT pg_sleep(10)"));
    r.fe(&cat(&[
        parse("", "SELECT 1"),
        bind("", ""),
        execute(""),
        sync(),
    ]));
    r.c.close(at(50), &mut r.out);
    let ops = r.ops();
    assert_eq!(ops.len(), 2);
    assert!(ops.iter().all(|o| o.truncated && o.last == at(50)));
    assert_eq!(r.started(), 2);
}

#[test]
fn error_message_text_is_not_kept() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&q("SELECT 1"));
    r.be(&cat(&[error("XX000"), ready()]));
    let ops = r.ops();
    assert_eq!(
        ops[0].error,
        Some(PgError {
            sqlstate: "XX000".into(),
            severity: "ERROR".into()
        })
    );
    assert!(!format!("{:?}", r.out).contains("SECRET"));
}

#[test]
fn looks_like_frontend_message_accepts_real_starts_only() {
    assert!(looks_like_frontend_message(&q("SELECT 1")));
    assert!(looks_like_frontend_message(&parse("", "SELECT 1")));
    assert!(looks_like_frontend_message(&cat(&[
        bind("", "s"),
        execute(""),
        sync()
    ])));
    assert!(looks_like_frontend_message(&sync()));
    assert!(!looks_like_frontend_message(b"Q\xff\xff\xff\xffSELECT"));
    assert!(!looks_like_frontend_message(b"ERE id = 5\0"));
    assert!(!looks_like_frontend_message(b"S\0\0\0\x05x"));
    assert!(!looks_like_frontend_message(&msg(b'd', b"copy data")));
    assert!(!looks_like_frontend_message(b"Q\0"));
}

#[test]
fn many_pipelined_executes_stay_bounded() {
    let mut r = Run::new(Connection::new_unsynced());
    let batch = cat(&[bind("", "s"), execute("")]);
    for _ in 0..(MAX_PENDING + 10) {
        r.fe(&batch);
    }
    // The oldest ones were given up on, truncated; nothing grows without bound.
    assert!(r.c.p.pending.len() <= MAX_PENDING);
    assert!(r.ops().iter().all(|o| o.truncated));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(
        feeds in proptest::collection::vec((proptest::bool::ANY, proptest::collection::vec(proptest::num::u8::ANY, 0..64), 0u64..100), 0..30),
        unsynced in proptest::bool::ANY,
    ) {
        let mut c = if unsynced { Connection::new_unsynced() } else { Connection::new() };
        let mut out = Vec::new();
        for (fe, bytes, lost) in feeds {
            let d = if fe { Direction::Frontend } else { Direction::Backend };
            c.feed(d, &bytes, lost, Seen::default(), &mut out);
        }
        c.close(Seen::default(), &mut out);
    }

    #[test]
    fn protocol_shaped_bytes_never_panic(
        parts in proptest::collection::vec((proptest::bool::ANY, 0usize..14, proptest::collection::vec(proptest::num::u8::ANY, 0..12)), 0..40),
    ) {
        let mut c = Connection::new_unsynced();
        let mut out = Vec::new();
        for (fe, kind, junk) in parts {
            let junk_s = String::from_utf8_lossy(&junk).into_owned();
            let bytes = match kind {
                0 => q(&junk_s),
                1 => parse(&junk_s, "SELECT 1"),
                2 => bind("", &junk_s),
                3 => execute(""),
                4 => sync(),
                5 => complete(&junk_s),
                6 => ready(),
                7 => row(),
                8 => error(&junk_s),
                9 => msg(b'1', &[]),
                10 => msg(b'2', &[]),
                11 => msg(b'n', &[]),
                12 => msg(b'E', &junk),
                _ => junk,
            };
            let d = if fe { Direction::Frontend } else { Direction::Backend };
            c.feed(d, &bytes, 0, Seen::default(), &mut out);
        }
        c.close(Seen::default(), &mut out);
        let started = out.iter().filter(|e| matches!(e, Event::OperationStarted { .. })).count();
        let seqs: Vec<u64> = out
            .iter()
            .filter_map(|e| if let Event::Operation(o) = e { Some(o.seq) } else { None })
            .collect();
        proptest::prop_assert_eq!(started, seqs.len());
        proptest::prop_assert!(seqs.iter().enumerate().all(|(i, s)| *s == i as u64));
    }
}

#[test]
fn large_bind_parameters_are_not_buffered() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&cat(&[
        parse("s2", "INSERT INTO blobs (data) VALUES ($1)"),
        sync(),
    ]));
    r.be(&cat(&[msg(b'1', &[]), ready()]));
    let mut b = b"\0s2\0\0\0\0\x01".to_vec();
    b.extend_from_slice(&(3_000_000u32).to_be_bytes());
    b.extend(std::iter::repeat_n(b'S', 3_000_000));
    b.extend_from_slice(&[0, 0]);
    let bytes = cat(&[msg(b'B', &b), execute(""), sync()]);
    for part in bytes.chunks(64 * 1024) {
        r.fe(part);
        assert!(r.c.fe.buffered() <= 64 * 1024);
    }
    r.be(&cat(&[msg(b'2', &[]), complete("INSERT 0 1"), ready()]));
    let ops = r.ops();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].query_text, "INSERT INTO blobs (data) VALUES ($1)");
    assert_eq!(ops[0].command_tag.as_deref(), Some("INSERT 0 1"));
    assert!(!ops[0].truncated);
}

#[test]
fn connection_moves_between_threads() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Connection>();
    send_sync::<Event>();
}

#[test]
fn lost_answer_does_not_shift_later_answers() {
    let mut c = Connection::new_unsynced();
    let mut out = Vec::new();
    c.feed(
        Direction::Frontend,
        &q("SELECT * FROM big"),
        0,
        at(1),
        &mut out,
    );
    // The start of a large answer, then a read that starts mid-row: its end (C, Z) is unseen.
    let mut first = cat(&[row_desc(), row()]);
    first.extend_from_slice(&msg(b'D', &[b'x'; 300])[..100]);
    c.feed(Direction::Backend, &first, 400, at(2), &mut out);
    c.feed(Direction::Backend, &[b'x'; 50], 0, at(3), &mut out);
    // The next round trip is seen whole and must be matched with its own request.
    c.feed(
        Direction::Frontend,
        &q("UPDATE t SET a = 1"),
        0,
        at(4),
        &mut out,
    );
    c.feed(
        Direction::Backend,
        &cat(&[complete("UPDATE 1"), ready()]),
        0,
        at(5),
        &mut out,
    );
    let ops: Vec<&Operation> = out
        .iter()
        .filter_map(|e| {
            if let Event::Operation(o) = e {
                Some(o)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(ops.len(), 2);
    assert_eq!(
        (ops[0].summary.as_str(), ops[0].truncated),
        ("SELECT big", true)
    );
    assert_eq!((ops[0].command_tag.as_deref(), ops[0].last), (None, at(3)));
    assert_eq!(ops[1].summary, "UPDATE t");
    assert_eq!(ops[1].command_tag.as_deref(), Some("UPDATE 1"));
    assert_eq!((ops[1].truncated, ops[1].last), (false, at(5)));
}

#[test]
fn end_of_a_large_answer_after_a_gap_still_completes_it() {
    let mut c = Connection::new();
    let mut out = Vec::new();
    c.feed(
        Direction::Frontend,
        &startup("u", Some("d")),
        0,
        at(1),
        &mut out,
    );
    c.feed(Direction::Backend, &ready(), 0, at(2), &mut out);
    c.feed(
        Direction::Frontend,
        &q("SELECT * FROM big"),
        0,
        at(3),
        &mut out,
    );
    // Many rows per read; the kernel captured only the first bytes of each read.
    let rows: Vec<u8> = (0..1000).flat_map(|_| row()).collect();
    let mut answer = cat(&[row_desc(), rows.clone(), rows.clone()]);
    answer.extend_from_slice(&cat(&[complete("SELECT 2000"), ready()]));
    let reads: Vec<&[u8]> = answer.chunks(5000).collect();
    let mut reads_iter = reads.iter().peekable();
    let mut ts = 4;
    while let Some(read) = reads_iter.next() {
        let last = reads_iter.peek().is_none();
        let cap = if last { read.len() } else { 100 };
        c.feed(
            Direction::Backend,
            &read[..cap],
            (read.len() - cap) as u64,
            at(ts),
            &mut out,
        );
        ts += 1;
    }
    let ops: Vec<&Operation> = out
        .iter()
        .filter_map(|e| {
            if let Event::Operation(o) = e {
                Some(o)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].command_tag.as_deref(), Some("SELECT 2000"));
    assert_eq!(ops[0].returned_rows, Some(2000));
    assert!(ops[0].truncated);
    assert_eq!(ops[0].last, at(ts - 1));
}

#[test]
fn flush_based_prepare_then_execute() {
    // asyncpg: Parse + Describe + Flush, then Bind + Execute + Sync.
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&cat(&[
        parse("__asyncpg_stmt_1__", "SELECT name FROM users WHERE id = $1"),
        msg(b'D', b"S__asyncpg_stmt_1__\0"),
        msg(b'H', &[]),
    ]));
    r.be(&cat(&[
        msg(b'1', &[]),
        msg(b't', &[0, 1, 0, 0, 0, 23]),
        row_desc(),
    ]));
    assert_eq!(r.ops().len(), 0);
    r.fe(&cat(&[bind("", "__asyncpg_stmt_1__"), execute(""), sync()]));
    r.be(&cat(&[
        msg(b'2', &[]),
        row(),
        complete("SELECT 1"),
        ready(),
    ]));
    let ops = r.ops();
    assert_eq!(ops.len(), 1);
    assert_eq!(ops[0].query_text, "SELECT name FROM users WHERE id = $1");
    assert_eq!(ops[0].returned_rows, Some(1));
    assert!(r.c.p.pending.is_empty());
}

#[test]
fn copy_fail_is_an_errored_operation() {
    let mut r = Run::new(Connection::new_unsynced());
    r.fe(&q("COPY t FROM STDIN"));
    r.be(&msg(b'G', &[0, 0, 0]));
    r.fe(&cat(&[msg(b'd', b"1\n"), msg(b'f', b"client gave up\0")]));
    r.be(&cat(&[error("57014"), ready()]));
    simple_exchange(&mut r);
    let ops = r.ops();
    assert_eq!(ops.len(), 2);
    assert_eq!(
        ops[0].error.as_ref().map(|e| e.sqlstate.as_str()),
        Some("57014")
    );
    assert_eq!(ops[1].error, None);
}
