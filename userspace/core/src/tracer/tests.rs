//! The tracer driven by recorded kernel-event sequences (what the probes emit, in order) with
//! a fake host, asserting the spans that come out: their names, kinds and who is whose parent.
use std::{collections::HashMap as StdHashMap, net::SocketAddr};

use opentelemetry_proto::tonic::{
    common::v1::any_value::Value,
    resource::v1::Resource,
    trace::v1::{Span, span::SpanKind, status::StatusCode},
};

use super::*;
use crate::{event::Source, trace::resource::ProcessInfo};

#[derive(Default)]
struct FakeHost {
    endpoints: StdHashMap<(u32, i32), TcpEndpoints>,
    processes: StdHashMap<u32, ProcessInfo>,
    forgotten: Vec<u32>,
    unknown: ProcessInfo,
}

impl HostView for FakeHost {
    fn endpoints(&mut self, pid: u32, fd: i32) -> Option<TcpEndpoints> {
        self.endpoints.get(&(pid, fd)).copied()
    }
    fn sole_listener(&mut self, _pid: u32) -> Option<SocketAddr> {
        None
    }
    fn process(&mut self, pid: u32) -> &ProcessInfo {
        self.processes.get(&pid).unwrap_or(&self.unknown)
    }
    fn process_seen(&mut self, pid: u32, comm: &str) {
        self.processes.entry(pid).or_insert_with(|| ProcessInfo {
            pid,
            executable: comm.to_owned(),
            service_name: comm.to_owned(),
            ..Default::default()
        });
    }
    fn resource(&mut self, pid: u32) -> Resource {
        crate::trace::resource::to_resource(self.process(pid), "node", false)
    }
    fn forget_process(&mut self, pid: u32) {
        self.forgotten.push(pid);
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn config() -> TracerConfig {
    TracerConfig {
        selection: Selection::default(),
        routes: RouteTemplates::new(&[]),
        protocols: ProtocolSettings::default(),
        tls_plaintext: false,
        sampler: Sampler::default(),
        own_ports: HashSet::new(),
    }
}

/// A recorded event sequence, replayed with increasing timestamps.
struct Replay {
    tracer: Tracer<FakeHost>,
    ts: u64,
}

const SERVER: u32 = 100;
const CLIENT: u32 = 200;

impl Replay {
    fn new() -> Self {
        Self::with(config())
    }

    fn with(config: TracerConfig) -> Self {
        Self {
            tracer: Tracer::new(config, FakeHost::default(), Clock::with_offset(0)),
            ts: 1_000_000,
        }
    }

    fn hdr(&mut self, pid: u32, tid: u32, fd: i32) -> Header {
        self.ts += 1_000;
        Header {
            pid,
            tid,
            fd,
            ts_ns: self.ts,
        }
    }

    fn connect(&mut self, pid: u32, fd: i32, role: Role, local: &str, remote: &str) {
        let hdr = self.hdr(pid, pid, fd);
        self.tracer.on_event(KernelEvent::Connection {
            hdr,
            role,
            local: Some(addr(local)),
            remote: Some(addr(remote)),
            comm: format!("proc{pid}"),
        });
    }

    fn data(&mut self, pid: u32, tid: u32, fd: i32, direction: Direction, bytes: &[u8]) {
        self.data_from(pid, tid, fd, direction, bytes, Source::Syscall);
    }

    fn data_from(
        &mut self,
        pid: u32,
        tid: u32,
        fd: i32,
        direction: Direction,
        bytes: &[u8],
        source: Source,
    ) {
        let hdr = self.hdr(pid, tid, fd);
        self.tracer.on_event(KernelEvent::Data {
            hdr,
            direction,
            enter_ts_ns: hdr.ts_ns - 500,
            total_len: bytes.len() as u64,
            offset: 0,
            payload: bytes,
            last: true,
            source,
        });
    }

    /// A write whose syscall started at `enter_ts_ns`, delivered now (its record reached the
    /// ring buffer after records of later syscalls on other CPUs).
    fn late_write(&mut self, pid: u32, tid: u32, fd: i32, bytes: &[u8], enter_ts_ns: u64) {
        let now = self.ts;
        self.ts = enter_ts_ns - 1_000;
        self.write(pid, tid, fd, bytes);
        self.ts = now;
    }

    fn read(&mut self, pid: u32, tid: u32, fd: i32, bytes: &[u8]) {
        self.data(pid, tid, fd, Direction::Ingress, bytes);
    }

    fn write(&mut self, pid: u32, tid: u32, fd: i32, bytes: &[u8]) {
        self.data(pid, tid, fd, Direction::Egress, bytes);
    }

    fn close(&mut self, pid: u32, fd: i32) {
        let hdr = self.hdr(pid, pid, fd);
        self.tracer.on_event(KernelEvent::Close(hdr));
    }

    fn dup(&mut self, pid: u32, old_fd: i32, new_fd: i32) {
        let hdr = self.hdr(pid, pid, new_fd);
        self.tracer.on_event(KernelEvent::Dup { hdr, old_fd });
    }

    fn exit(&mut self, pid: u32) {
        let hdr = self.hdr(pid, pid, -1);
        self.tracer.on_event(KernelEvent::ProcessExit(hdr));
    }

    fn spans(&mut self) -> Vec<(u32, Span)> {
        self.tracer
            .take_spans()
            .into_iter()
            .map(|(pid, span)| (pid, span.into_otlp()))
            .collect()
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        })
}

/// One line per span: `pid KIND name <- parent` where the parent is named by its span's
/// name (or `root`), `remote` for a `traceparent` parent; children share the parent's trace.
fn snapshot(spans: &[(u32, Span)]) -> Vec<String> {
    spans
        .iter()
        .map(|(pid, s)| {
            let kind = match SpanKind::try_from(s.kind) {
                Ok(SpanKind::Server) => "SERVER",
                Ok(SpanKind::Client) => "CLIENT",
                _ => "OTHER",
            };
            let parent = if s.parent_span_id.is_empty() {
                "root".to_owned()
            } else {
                match spans.iter().find(|(_, p)| p.span_id == s.parent_span_id) {
                    Some((_, p)) => {
                        assert_eq!(p.trace_id, s.trace_id, "child in another trace");
                        p.name.clone()
                    }
                    None => "remote".to_owned(),
                }
            };
            format!("{pid} {kind} {} <- {parent}", s.name)
        })
        .collect()
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n").into_bytes()
}

fn response(status: u16, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn pg_startup() -> Vec<u8> {
    let mut body = 0x0003_0000u32.to_be_bytes().to_vec();
    for s in ["user", "app", "database", "shop", ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut m = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

const PG_READY: &[u8] = b"R\x00\x00\x00\x08\x00\x00\x00\x00Z\x00\x00\x00\x05I";

fn pg_query(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q'];
    m.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    m
}

fn pg_done(tag: &str) -> Vec<u8> {
    let mut m = vec![b'C'];
    m.extend_from_slice(&((tag.len() + 5) as u32).to_be_bytes());
    m.extend_from_slice(tag.as_bytes());
    m.push(0);
    m.extend_from_slice(b"Z\x00\x00\x00\x05I");
    m
}

/// A server connection of SERVER's fd 5, from a client outside the node.
fn accepted(r: &mut Replay, fd: i32) {
    r.connect(SERVER, fd, Role::Server, "10.0.0.1:8080", "10.0.0.9:50000");
}

#[test]
fn keep_alive_requests_are_separate_root_spans() {
    let mut r = Replay::new();
    accepted(&mut r, 5);
    for path in ["/a", "/b", "/c"] {
        r.read(SERVER, 101, 5, &request(path));
        r.write(SERVER, 101, 5, &response(200, "ok"));
    }
    let spans = r.spans();
    assert_eq!(
        snapshot(&spans),
        [
            "100 SERVER GET /a <- root",
            "100 SERVER GET /b <- root",
            "100 SERVER GET /c <- root"
        ]
    );
    let paths: Vec<_> = spans.iter().map(|(_, s)| attr(s, "url.path")).collect();
    assert_eq!(
        paths,
        [Some("/a".into()), Some("/b".into()), Some("/c".into())]
    );
    assert_ne!(spans[0].1.trace_id, spans[1].1.trace_id);
    assert_eq!(r.tracer.stats().connections_open, 1);
}

#[test]
fn pipelined_requests_are_paired_in_order() {
    let mut r = Replay::new();
    accepted(&mut r, 5);
    let mut both = request("/one");
    both.extend_from_slice(&request("/two"));
    r.read(SERVER, 101, 5, &both);
    let mut answers = response(200, "1");
    answers.extend_from_slice(&response(404, "22"));
    r.write(SERVER, 101, 5, &answers);
    let spans = r.spans();
    let got: Vec<_> = spans
        .iter()
        .map(|(_, s)| (attr(s, "url.path"), attr(s, "http.response.status_code")))
        .collect();
    assert_eq!(
        got,
        [
            (Some("/one".into()), Some("200".into())),
            (Some("/two".into()), Some("404".into()))
        ]
    );
}

#[test]
fn a_connection_older_than_sonde_waits_for_the_next_request() {
    let mut r = Replay::new();
    r.tracer.adopt_existing(
        SERVER,
        5,
        Role::Server,
        Endpoints {
            local: Some(addr("10.0.0.1:8080")),
            remote: Some(addr("10.0.0.9:50000")),
        },
    );
    assert_eq!(
        r.tracer.take_commands(),
        [KernelCommand::Track {
            pid: SERVER,
            fd: 5,
            role: Role::Server,
            capture_bytes: 0
        }]
    );
    // The tail of a response whose request came before sonde: nothing to pair, not ignored.
    r.write(SERVER, 101, 5, b"tail of an old body");
    r.read(SERVER, 101, 5, &request("/later"));
    r.write(SERVER, 101, 5, &response(200, "ok"));
    assert_eq!(snapshot(&r.spans()), ["100 SERVER GET /later <- root"]);
    assert!(r.tracer.take_commands().is_empty());
}

#[test]
fn a_dup_fd_keeps_the_connection_until_its_last_fd_closes() {
    let mut r = Replay::new();
    accepted(&mut r, 5);
    r.dup(SERVER, 5, 9);
    r.close(SERVER, 5);
    assert_eq!(r.tracer.stats().connections_open, 1);
    r.read(SERVER, 101, 9, &request("/dup"));
    r.write(SERVER, 101, 9, &response(200, "ok"));
    assert_eq!(snapshot(&r.spans()), ["100 SERVER GET /dup <- root"]);
    r.close(SERVER, 9);
    assert_eq!(r.tracer.stats().connections_open, 0);
    // A dup of an fd sonde does not trace is untracked in the kernel.
    r.dup(SERVER, 40, 41);
    assert_eq!(
        r.tracer.take_commands(),
        [KernelCommand::Untrack {
            pid: SERVER,
            fd: 41
        }]
    );
}

#[test]
fn client_and_server_on_one_node_make_one_trace() {
    let mut r = Replay::new();
    r.connect(CLIENT, 3, Role::Client, "127.0.0.1:40000", "127.0.0.1:8080");
    r.connect(SERVER, 5, Role::Server, "127.0.0.1:8080", "127.0.0.1:40000");
    in_order(&mut r, "/x");
    let spans = r.spans();
    let mut lines = snapshot(&spans);
    lines.sort();
    assert_eq!(
        lines,
        ["100 SERVER GET /x <- GET", "200 CLIENT GET <- root"]
    );
}

/// CLIENT's fd 3 connected to SERVER's fd 5 on one node, SERVER with its database, and the
/// time a late client write is said to have entered its syscall (before what follows).
fn late_write_setup() -> (Replay, u64) {
    let mut r = Replay::new();
    with_database(&mut r);
    r.connect(CLIENT, 3, Role::Client, "127.0.0.1:40000", "127.0.0.1:8080");
    r.connect(SERVER, 5, Role::Server, "127.0.0.1:8080", "127.0.0.1:40000");
    r.ts += 10_000;
    let written_at = r.ts;
    r.ts += 10_000;
    (r, written_at)
}

/// One request from CLIENT to SERVER with every record in order.
fn in_order(r: &mut Replay, path: &str) {
    r.write(CLIENT, 201, 3, &request(path));
    r.read(SERVER, 101, 5, &request(path));
    r.write(SERVER, 101, 5, &response(200, "ok"));
    r.read(CLIENT, 201, 3, &response(200, "ok"));
}

/// The server's read record reaches sonde before its client's write record (both emitted at
/// syscall exit, on different CPUs): the server span starts as a root, and is moved with its
/// trace's other spans (its query) under the client span before they leave, even when the
/// write is seen after the server answered, or in the next batch. The requests after it on
/// the connection pair in order, and the move is counted.
#[test]
fn a_server_read_seen_before_its_client_write_still_makes_one_trace() {
    // Request 1: the client's write (entered before the read) is seen after the server's
    // whole request, and after the client's read of the answer was not yet seen.
    let (mut r, written_at) = late_write_setup();
    request_with_query(&mut r, 5, 101, "/a", "SELECT 1");
    let server_side = r.spans();
    assert_eq!(server_side.len(), 2, "the server's spans leave first");
    r.late_write(CLIENT, 201, 3, &request("/a"), written_at);
    r.read(CLIENT, 201, 3, &response(200, "ok"));
    in_order(&mut r, "/b");
    let mut spans = server_side;
    spans.extend(r.spans());
    let mut lines = snapshot(&spans);
    lines.sort();
    assert_eq!(
        lines,
        [
            "100 CLIENT SELECT <- GET /a",
            "100 SERVER GET /a <- root",
            "100 SERVER GET /b <- GET",
            "200 CLIENT GET <- root",
            "200 CLIENT GET <- root",
        ],
        "spans that left before the client's write was seen cannot be moved"
    );

    // The same, with the client's write seen before the batch leaves.
    let (mut r, written_at) = late_write_setup();
    r.read(SERVER, 101, 5, &request("/a"));
    r.write(SERVER, 101, 6, &pg_query("SELECT 1"));
    r.read(SERVER, 101, 6, &pg_done("SELECT 1"));
    // A batch leaves with the query only: the next batch still moves the server span, and
    // the query follows it because its trace is the one the link names.
    let query = r.spans();
    assert_eq!(query.len(), 1);
    r.late_write(CLIENT, 201, 3, &request("/a"), written_at);
    r.write(SERVER, 101, 5, &response(200, "ok"));
    r.read(CLIENT, 201, 3, &response(200, "ok"));
    in_order(&mut r, "/b");
    let spans = r.spans();
    let mut lines = snapshot(&spans);
    lines.sort();
    assert_eq!(
        lines,
        [
            "100 SERVER GET /a <- GET",
            "100 SERVER GET /b <- GET",
            "200 CLIENT GET <- root",
            "200 CLIENT GET <- root",
        ]
    );
    let server_a = spans.iter().find(|(_, s)| s.name == "GET /a").unwrap();
    let client_a = spans
        .iter()
        .find(|(_, s)| s.span_id == server_a.1.parent_span_id)
        .unwrap();
    assert_eq!(server_a.1.trace_id, client_a.1.trace_id);
    assert_ne!(
        query[0].1.trace_id, server_a.1.trace_id,
        "the query left before the link was known"
    );
    assert_eq!(r.tracer.stats().spans_relinked_late, 1);

    // Seen before anything leaves: one trace of three spans.
    let (mut r, written_at) = late_write_setup();
    r.read(SERVER, 101, 5, &request("/a"));
    r.write(SERVER, 101, 6, &pg_query("SELECT 1"));
    r.late_write(CLIENT, 201, 3, &request("/a"), written_at);
    // The request in flight is open under the client's trace (the merge holds by it).
    let open = r.tracer.open_server_traces();
    r.read(SERVER, 101, 6, &pg_done("SELECT 1"));
    // A query started after the link is known gets the client's trace at once.
    r.write(SERVER, 101, 6, &pg_query("SELECT 2"));
    r.read(SERVER, 101, 6, &pg_done("SELECT 1"));
    r.write(SERVER, 101, 5, &response(200, "ok"));
    r.read(CLIENT, 201, 3, &response(200, "ok"));
    let spans = r.spans();
    let mut lines = snapshot(&spans);
    lines.sort();
    assert_eq!(
        lines,
        [
            "100 CLIENT SELECT <- GET /a",
            "100 CLIENT SELECT <- GET /a",
            "100 SERVER GET /a <- GET",
            "200 CLIENT GET <- root",
        ]
    );
    assert!(spans.iter().all(|(_, s)| s.trace_id == spans[0].1.trace_id));
    assert!(open.contains(&spans[0].1.trace_id), "{open:?}");
}

#[test]
fn incoming_traceparent_wins() {
    let mut r = Replay::new();
    accepted(&mut r, 5);
    r.read(
        SERVER,
        101,
        5,
        b"GET / HTTP/1.1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n",
    );
    r.write(SERVER, 101, 5, &response(200, ""));
    let spans = r.spans();
    assert_eq!(snapshot(&spans), ["100 SERVER GET / <- remote"]);
    assert_eq!(
        hex::encode(&spans[0].1.trace_id),
        "0af7651916cd43dd8448eb211c80319c"
    );
}

/// SERVER's thread `tid` serves `path` on `fd` and runs `sql` on its database connection 6.
fn request_with_query(r: &mut Replay, fd: i32, tid: u32, path: &str, sql: &str) {
    r.read(SERVER, tid, fd, &request(path));
    r.write(SERVER, tid, 6, &pg_query(sql));
    r.read(SERVER, tid, 6, &pg_done("SELECT 1"));
    r.write(SERVER, tid, fd, &response(200, "ok"));
}

fn with_database(r: &mut Replay) {
    r.connect(SERVER, 6, Role::Client, "10.0.0.1:41000", "10.0.0.2:5432");
    r.write(SERVER, 101, 6, &pg_startup());
    r.read(SERVER, 101, 6, PG_READY);
    assert_eq!(
        r.tracer.take_commands(),
        [KernelCommand::Track {
            pid: SERVER,
            fd: 6,
            role: Role::Client,
            capture_bytes: 65536
        }],
        "the registry raises a PostgreSQL socket's capture size"
    );
}

#[test]
fn database_queries_are_children_of_the_request_their_thread_serves() {
    let mut r = Replay::new();
    with_database(&mut r);
    accepted(&mut r, 5);
    request_with_query(&mut r, 5, 101, "/users", "SELECT * FROM users WHERE id = 7");
    let spans = r.spans();
    assert_eq!(
        snapshot(&spans),
        [
            "100 CLIENT SELECT users <- GET /users",
            "100 SERVER GET /users <- root"
        ]
    );
    assert_eq!(
        attr(&spans[0].1, "db.query.text").as_deref(),
        Some("SELECT * FROM users WHERE id = ?")
    );
    assert_eq!(attr(&spans[0].1, "db.namespace").as_deref(), Some("shop"));
}

#[test]
fn without_span_building_exchanges_are_parsed_and_dropped() {
    let mut r = Replay::new();
    r.tracer.set_build_spans(false);
    // Parsing still runs: the PostgreSQL detection asks for a larger capture.
    with_database(&mut r);
    accepted(&mut r, 5);
    request_with_query(&mut r, 5, 101, "/users", "SELECT 1");
    request_with_query(&mut r, 5, 101, "/orders", "SELECT 2");
    assert!(r.spans().is_empty());
    assert_eq!(r.tracer.exchanges_unbuilt(), 4);
    assert_eq!(r.tracer.stats().spans, 0);
    assert_eq!(r.tracer.stats().connections_open, 2);
    // The parenting state stayed consistent: spans built afterwards nest as usual.
    r.tracer.set_build_spans(true);
    request_with_query(&mut r, 5, 101, "/again", "SELECT 3");
    assert_eq!(
        snapshot(&r.spans()),
        [
            "100 CLIENT SELECT <- GET /again",
            "100 SERVER GET /again <- root"
        ]
    );
    assert_eq!(r.tracer.exchanges_unbuilt(), 4);
}

#[test]
fn a_thread_reused_across_requests_parents_each_query_to_its_own_request() {
    let mut r = Replay::new();
    with_database(&mut r);
    accepted(&mut r, 5);
    r.connect(SERVER, 7, Role::Server, "10.0.0.1:8080", "10.0.0.8:50001");
    request_with_query(&mut r, 5, 101, "/first", "SELECT 1");
    request_with_query(&mut r, 7, 101, "/second", "SELECT 2");
    // A query after both responses, on the same thread, belongs to neither.
    r.write(SERVER, 101, 6, &pg_query("SELECT 3"));
    r.read(SERVER, 101, 6, &pg_done("SELECT 1"));
    let spans = r.spans();
    assert_eq!(spans.len(), 5);
    let parent_path = |i: usize| {
        spans
            .iter()
            .find(|(_, p)| p.span_id == spans[i].1.parent_span_id)
            .and_then(|(_, p)| attr(p, "url.path"))
    };
    assert_eq!(parent_path(0).as_deref(), Some("/first"));
    assert_eq!(parent_path(2).as_deref(), Some("/second"));
    assert!(spans[4].1.parent_span_id.is_empty(), "a root of its own");
}

#[test]
fn a_process_exiting_mid_request_ends_its_span_as_an_error() {
    let mut r = Replay::new();
    accepted(&mut r, 5);
    r.read(SERVER, 101, 5, &request("/slow"));
    assert!(r.spans().is_empty());
    r.exit(SERVER);
    let spans = r.spans();
    assert_eq!(snapshot(&spans), ["100 SERVER GET /slow <- root"]);
    let status = spans[0].1.status.as_ref().map(|s| s.code);
    assert_eq!(status, Some(StatusCode::Error as i32));
    assert_eq!(
        r.tracer.take_commands(),
        [KernelCommand::Untrack { pid: SERVER, fd: 5 }]
    );
    assert_eq!(r.tracer.stats().connections_open, 0);
    // Its resource is forgotten only after its last spans were grouped.
    let (own, released) = r.tracer.group(Vec::new(), spans);
    assert_eq!((own.len(), released.len()), (0, 1));
    assert_eq!(r.tracer.host.forgotten, [SERVER]);
}

#[test]
fn garbage_bytes_untrack_the_connection() {
    let mut r = Replay::new();
    accepted(&mut r, 5);
    r.read(
        SERVER,
        101,
        5,
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
    );
    r.read(SERVER, 101, 5, &request("/after"));
    assert!(r.spans().is_empty());
    assert_eq!(
        r.tracer.take_commands(),
        [KernelCommand::Untrack { pid: SERVER, fd: 5 }]
    );
    assert_eq!(r.tracer.stats().connections_ignored, 1);
}

#[test]
fn a_protocol_switch_mid_stream_is_refused() {
    let mut r = Replay::new();
    accepted(&mut r, 5);
    r.read(
        SERVER,
        101,
        5,
        b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    r.write(
        SERVER,
        101,
        5,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    // After the switch: neither HTTP nor a new detection, even of another protocol.
    r.read(SERVER, 101, 5, &pg_startup());
    r.read(SERVER, 101, 5, &request("/not-http-anymore"));
    r.write(SERVER, 101, 5, &response(200, "ok"));
    let spans = r.spans();
    assert_eq!(snapshot(&spans), ["100 SERVER GET /ws <- root"]);
    assert_eq!(
        attr(&spans[0].1, "http.response.status_code").as_deref(),
        Some("101")
    );
}

#[test]
fn the_postgres_server_side_is_never_a_second_set_of_spans() {
    let mut r = Replay::new();
    r.connect(SERVER, 5, Role::Server, "10.0.0.2:5432", "10.0.0.1:41000");
    r.read(SERVER, 101, 5, &pg_startup());
    assert_eq!(
        r.tracer.take_commands(),
        [KernelCommand::Untrack { pid: SERVER, fd: 5 }]
    );
}

fn ssl_accepted(r: &mut Replay) {
    r.connect(CLIENT, 6, Role::Client, "10.0.0.1:41000", "10.0.0.2:5432");
    r.write(CLIENT, 201, 6, b"\x00\x00\x00\x08\x04\xd2\x16\x2f");
    r.read(CLIENT, 201, 6, b"S");
    r.write(
        CLIENT,
        201,
        6,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    );
}

#[test]
fn encrypted_connections_are_untracked_without_a_plaintext_source() {
    let mut r = Replay::new();
    ssl_accepted(&mut r);
    let commands = r.tracer.take_commands();
    assert_eq!(
        commands.last(),
        Some(&KernelCommand::Untrack { pid: CLIENT, fd: 6 })
    );
}

#[test]
fn with_a_plaintext_source_ciphertext_is_dropped_and_the_socket_kept() {
    let mut r = Replay::with(TracerConfig {
        tls_plaintext: true,
        ..config()
    });
    ssl_accepted(&mut r);
    let commands = r.tracer.take_commands();
    assert!(
        !commands.contains(&KernelCommand::Untrack { pid: CLIENT, fd: 6 }),
        "{commands:?}"
    );
    // More ciphertext is dropped; the plaintext of the TLS library is parsed.
    r.write(CLIENT, 201, 6, b"\x17\x03\x03\x00\x20garbage-ciphertext");
    let tls = |r: &mut Replay, direction, bytes: &[u8]| {
        r.data_from(CLIENT, 201, 6, direction, bytes, Source::TlsPlaintext)
    };
    tls(&mut r, Direction::Egress, &pg_startup());
    tls(&mut r, Direction::Ingress, PG_READY);
    tls(&mut r, Direction::Egress, &pg_query("SELECT 1"));
    tls(&mut r, Direction::Ingress, &pg_done("SELECT 1"));
    assert_eq!(snapshot(&r.spans()), ["200 CLIENT SELECT <- root"]);
}

#[test]
fn selection_by_port_untracks_other_connections() {
    let mut r = Replay::with(TracerConfig {
        selection: Selection {
            ports: [8080].into_iter().collect(),
            ..Default::default()
        },
        ..config()
    });
    r.connect(SERVER, 5, Role::Server, "10.0.0.1:9090", "10.0.0.9:50000");
    assert_eq!(
        r.tracer.take_commands(),
        [KernelCommand::Untrack { pid: SERVER, fd: 5 }]
    );
    accepted(&mut r, 6);
    assert!(r.tracer.take_commands().is_empty());
}

#[test]
fn a_tls_server_peek_and_handshake_keep_the_socket_and_its_plaintext_spans_are_https() {
    let mut r = Replay::with(TracerConfig {
        tls_plaintext: true,
        ..config()
    });
    accepted(&mut r, 6);
    // nginx peeks at one byte, then OpenSSL reads the ClientHello (in clear, outside SSL_read).
    r.read(SERVER, 101, 6, &[0x16]);
    r.read(
        SERVER,
        101,
        6,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    );
    r.write(SERVER, 101, 6, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76");
    assert!(
        !r.tracer
            .take_commands()
            .iter()
            .any(|c| matches!(c, KernelCommand::Untrack { .. })),
    );
    assert_eq!(r.tracer.take_tls_started(), [TlsStart { pid: SERVER }]);
    r.data_from(
        SERVER,
        101,
        6,
        Direction::Ingress,
        &request("/a?key=s"),
        Source::TlsPlaintext,
    );
    r.read(SERVER, 101, 6, b"\x17\x03\x03\x00\x20stray-ciphertext");
    r.data_from(
        SERVER,
        101,
        6,
        Direction::Egress,
        &response(200, "ok"),
        Source::TlsPlaintext,
    );
    let spans = r.spans();
    assert_eq!(spans.len(), 1, "{:?}", snapshot(&spans));
    assert_eq!(attr(&spans[0].1, "url.scheme").as_deref(), Some("https"));
}

#[test]
fn tls_connections_of_untraceable_processes_are_untracked() {
    let mut r = Replay::with(TracerConfig {
        tls_plaintext: true,
        ..config()
    });
    r.connect(CLIENT, 6, Role::Client, "127.0.0.1:50000", "127.0.0.1:443");
    r.write(
        CLIENT,
        201,
        6,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    );
    assert_eq!(r.tracer.take_tls_started(), [TlsStart { pid: CLIENT }]);
    r.tracer.set_tls_untraceable(CLIENT);
    assert_eq!(
        r.tracer.take_commands().last(),
        Some(&KernelCommand::Untrack { pid: CLIENT, fd: 6 })
    );
    // The next TLS connection of that process is untracked at its handshake.
    r.connect(CLIENT, 7, Role::Client, "127.0.0.1:50001", "127.0.0.1:443");
    r.write(
        CLIENT,
        201,
        7,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    );
    assert_eq!(
        r.tracer.take_commands().last(),
        Some(&KernelCommand::Untrack { pid: CLIENT, fd: 7 })
    );
}

#[test]
fn tls_record_recognition() {
    assert!(looks_like_tls_record(&[0x16, 0x03, 0x01, 0x02], true));
    assert!(looks_like_tls_record(&[0x17, 0x03, 0x03, 0, 5], false));
    assert!(!looks_like_tls_record(&[0x17, 0x03, 0x03, 0, 5], true));
    assert!(!looks_like_tls_record(b"GET / HTTP/1.1\r\n", true));
    assert!(!looks_like_tls_record(&[0, 0, 0, 8, 4, 210, 22, 47], true));
    assert!(may_become_tls_record(&[0x16]));
    assert!(!may_become_tls_record(b"G"));
}

#[test]
fn an_event_loop_nests_under_its_only_request_and_counts_what_it_cannot_know() {
    let mut r = Replay::new();
    with_database(&mut r);
    // uvicorn: loop thread 101 reads requests, asgiref's thread 102 runs the sync view.
    accepted(&mut r, 5);
    r.read(SERVER, 101, 5, &request("/one"));
    r.write(SERVER, 102, 6, &pg_query("SELECT 1"));
    r.read(SERVER, 102, 6, &pg_done("SELECT 1"));
    r.write(SERVER, 101, 5, &response(200, "ok"));
    // Two requests in flight on the loop: a query on either thread gets no parent.
    r.connect(SERVER, 7, Role::Server, "10.0.0.1:8080", "10.0.0.9:50001");
    r.read(SERVER, 101, 5, &request("/two"));
    r.read(SERVER, 101, 7, &request("/three"));
    r.write(SERVER, 101, 6, &pg_query("SELECT 2"));
    r.read(SERVER, 101, 6, &pg_done("SELECT 1"));
    r.write(SERVER, 101, 5, &response(200, "ok"));
    // /three is alone again: the loop's next query is its.
    r.write(SERVER, 101, 6, &pg_query("SELECT 3"));
    r.read(SERVER, 101, 6, &pg_done("SELECT 1"));
    r.write(SERVER, 101, 7, &response(200, "ok"));
    let spans = r.spans();
    assert_eq!(
        snapshot(&spans),
        [
            "100 CLIENT SELECT <- GET /one",
            "100 SERVER GET /one <- root",
            "100 CLIENT SELECT <- root",
            "100 SERVER GET /two <- root",
            "100 CLIENT SELECT <- GET /three",
            "100 SERVER GET /three <- root"
        ]
    );
    assert_eq!(r.tracer.stats().spans_parent_ambiguous, 1);
}
