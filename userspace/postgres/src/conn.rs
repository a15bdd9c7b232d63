//! Per-connection protocol state: frontend messages queue what the backend will answer
//! (`Expect`), backend messages are matched against that queue in order, and each simple
//! query or Execute becomes one [`Operation`]. Prepared statements and portals are tracked by
//! name; bind parameter values are never read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::framer::{self, Framer, GARBAGE, Mode, Msg, SINGLE};
use crate::sanitize::{self, Summary};
use crate::{Direction, Event, Operation, PgError, Seen};

const MAX_STATEMENTS: usize = 4096;
const MAX_PORTALS: usize = 1024;
const MAX_PENDING: usize = 4096;
const MAX_FIELD: usize = 256;
const MAX_NAME: usize = 63;
/// Frontend feeds without a plausible message before an unsynced connection is given up.
const MAX_UNSYNCED_FEEDS: u32 = 64;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// A statement's sanitized text and summary, shared by portals and operations.
#[derive(Debug)]
struct Prepared {
    text: String,
    summary: Summary,
    cut: bool,
    /// Prepared before tracing began: only its name is known.
    unknown: bool,
}

impl Prepared {
    fn parse(sql: &[u8], cut: bool) -> Self {
        let (text, summary, over) = sanitize::analyze(sql, sanitize::MAX_SANITIZED_LEN);
        Self {
            text,
            summary,
            cut: cut || over,
            unknown: false,
        }
    }

    fn unknown(name: &[u8]) -> Self {
        let text = if name.is_empty() {
            "EXECUTE".to_string()
        } else {
            format!("EXECUTE {}", display_name(name))
        };
        Self {
            text,
            summary: Summary {
                operation: None,
                collection: None,
                summary: "EXECUTE".to_string(),
            },
            cut: false,
            unknown: true,
        }
    }
}

/// Statement and portal names are chosen by drivers (`_pg3_0`, `S_1`); keep them bounded
/// and printable.
fn display_name(name: &[u8]) -> String {
    name.iter()
        .take(MAX_NAME)
        .map(|&c| {
            if c.is_ascii_alphanumeric() || matches!(c, b'_' | b'$' | b'.' | b'-') {
                c as char
            } else {
                '_'
            }
        })
        .collect()
}

#[derive(Debug)]
struct OpBuild {
    seq: u64,
    stmt: Arc<Prepared>,
    prepared: bool,
    first: Seen,
    rows: u64,
    rows_known: bool,
    cur_rows: u64,
    cur_saw_rows: bool,
    tag: Option<String>,
    error: Option<PgError>,
    truncated: bool,
    /// Frontend round (request burst) that sent it; see `Proto::backend_resynced`.
    round: u64,
}

impl OpBuild {
    /// One statement (of possibly several in a simple query) ended.
    fn end_statement(&mut self, tag: Option<&str>) {
        let n = match tag.and_then(tag_row_count) {
            Some(n) => Some(n),
            None if self.cur_saw_rows => Some(self.cur_rows),
            None => None,
        };
        if let Some(n) = n {
            self.rows = self.rows.saturating_add(n);
            self.rows_known = true;
        }
        self.cur_rows = 0;
        self.cur_saw_rows = false;
    }

    fn into_operation(mut self, last: Seen) -> Operation {
        if self.cur_saw_rows {
            self.end_statement(None);
        }
        let s = &self.stmt;
        let operation_name = if s.unknown {
            self.tag.as_deref().and_then(tag_operation)
        } else {
            s.summary.operation.clone()
        };
        Operation {
            seq: self.seq,
            query_text: s.text.clone(),
            summary: s.summary.summary.clone(),
            operation_name,
            collection_name: s.summary.collection.clone(),
            command_tag: self.tag,
            returned_rows: self.rows_known.then_some(self.rows),
            error: self.error,
            prepared: self.prepared,
            first: self.first,
            last,
            truncated: self.truncated || s.cut,
        }
    }
}

/// Rows reported by a CommandComplete tag for commands that return rows.
fn tag_row_count(tag: &str) -> Option<u64> {
    let mut words = tag.split(' ');
    let cmd = words.next()?;
    if matches!(cmd, "SELECT" | "FETCH" | "COPY") {
        words.next_back()?.parse().ok()
    } else {
        None
    }
}

/// `INSERT 0 1` -> `INSERT`, `CREATE TABLE` -> `CREATE TABLE`.
fn tag_operation(tag: &str) -> Option<String> {
    let op: Vec<&str> = tag
        .split(' ')
        .take_while(|w| !w.is_empty() && !w.bytes().all(|c| c.is_ascii_digit()))
        .collect();
    (!op.is_empty()).then(|| op.join(" "))
}

/// What the backend will answer, in order.
#[derive(Debug)]
enum Expect {
    /// 'Q': everything up to ReadyForQuery.
    Simple(Box<OpBuild>),
    /// 'E': DataRow* then CommandComplete/EmptyQuery/PortalSuspended/Error.
    Execute(Box<OpBuild>),
    Parse,
    Bind,
    Close,
    Describe,
    Sync,
    /// 'F': FunctionCallResponse then ReadyForQuery.
    FunctionCall,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Waiting for StartupMessage/SSLRequest/GSSENCRequest/CancelRequest.
    Startup,
    /// SSLRequest or GSSENCRequest sent; waiting for the one-byte answer.
    Negotiating,
    Running,
    /// Encrypted or not PostgreSQL: nothing more is parsed.
    Dead,
}

struct Proto {
    life: Life,
    seq: u64,
    stmts: HashMap<Box<[u8]>, Arc<Prepared>>,
    portals: HashMap<Box<[u8]>, Arc<Prepared>>,
    pending: VecDeque<Expect>,
    batch_first: Option<Seen>,
    database: Option<String>,
    is_pg: bool,
    /// A mode the backend framer must switch to (after SSLRequest/GSSENCRequest).
    be_mode: Option<Mode>,
    unsynced_feeds: u32,
    /// Counts request bursts: incremented by a frontend feed that follows a backend one.
    round: u64,
    last_was_backend: bool,
    /// When backend bytes were last seen (ends operations whose answer was lost).
    last_backend_seen: Seen,
}

/// The PostgreSQL protocol state of one client connection.
pub struct Connection {
    fe: Framer,
    be: Framer,
    p: Proto,
}

impl Default for Connection {
    fn default() -> Self {
        Self::new()
    }
}

fn cstr(b: &[u8]) -> (&[u8], &[u8], bool) {
    match b.iter().position(|&c| c == 0) {
        Some(i) => (
            b.get(..i).unwrap_or_default(),
            b.get(i + 1..).unwrap_or_default(),
            true,
        ),
        None => (b, &[], false),
    }
}

fn bounded(b: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(b.get(..b.len().min(max)).unwrap_or(b));
    s.trim_end_matches('\u{FFFD}').to_string()
}

fn be32(b: &[u8]) -> Option<u32> {
    let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(a))
}

/// A StartupMessage (protocol 3.x), SSLRequest, GSSENCRequest or CancelRequest at offset 0.
pub fn looks_like_startup(data: &[u8]) -> bool {
    let (Some(len), Some(code)) = (be32(data), data.get(4..).and_then(be32)) else {
        return false;
    };
    match code {
        SSL_REQUEST | GSSENC_REQUEST => len == 8,
        // Protocol 3.2 (PostgreSQL 18) allows cancel keys up to 256 bytes.
        CANCEL_REQUEST => (16..=264).contains(&len),
        c if c >> 16 == 3 => {
            (9..=10_000).contains(&len)
                && data
                    .get((len as usize).saturating_sub(1))
                    .is_none_or(|&last| last == 0)
        }
        _ => false,
    }
}

/// A plausible frontend message that can start an exchange ('Q', 'P', 'B', 'E', 'D', 'S',
/// 'H', 'C', 'X', 'F') at offset 0, for connections opened before tracing began.
pub fn looks_like_frontend_message(data: &[u8]) -> bool {
    let (Some(&tag), Some(len)) = (data.first(), data.get(1..).and_then(be32)) else {
        return false;
    };
    if !matches!(
        tag,
        b'Q' | b'P' | b'B' | b'E' | b'D' | b'S' | b'H' | b'C' | b'X' | b'F'
    ) || !framer::plausible(true, tag, len)
    {
        return false;
    }
    let total = len as usize + 1;
    let body = data.get(5..total.min(data.len())).unwrap_or_default();
    let body_ok = match tag {
        b'Q' => {
            body.first()
                .is_none_or(|&c| c.is_ascii_graphic() || c.is_ascii_whitespace() || c >= 0x80)
                && (data.len() < total || body.last() == Some(&0))
        }
        b'P' | b'B' | b'E' | b'C' | b'D' => data.len() < total || body.contains(&0),
        _ => true,
    };
    // The next message, if captured, must be plausible too.
    let next_ok = match data.get(total..) {
        Some(rest) if rest.len() >= 5 => {
            let t = rest.first().copied().unwrap_or(0);
            rest.get(1..)
                .and_then(be32)
                .is_some_and(|l| framer::plausible(true, t, l))
        }
        _ => true,
    };
    body_ok && next_ok
}

fn looks_like_backend_message(data: &[u8]) -> bool {
    let (Some(&tag), Some(len)) = (data.first(), data.get(1..).and_then(be32)) else {
        return false;
    };
    framer::plausible(false, tag, len)
}

/// When a backend feed that is out of sync ends with ReadyForQuery (always the last message
/// of an answer), the tail starting at it, or at the CommandComplete right before it.
fn answer_tail(data: &[u8], lost_after: u64) -> Option<&[u8]> {
    if lost_after > 0 || data.len() < 6 {
        return None;
    }
    let z_at = data.len() - 6;
    let z = data.get(z_at..)?;
    if !(z.starts_with(b"Z\0\0\0\x05") && matches!(z.get(5), Some(b'I' | b'T' | b'E'))) {
        return None;
    }
    // CommandComplete: 'C', length, a short NUL-terminated tag, ending where Z starts.
    let from = z_at.saturating_sub(80);
    let c_at = (from..z_at.saturating_sub(5)).find(|&i| {
        data.get(i) == Some(&b'C')
            && data.get(i + 1..).and_then(be32).map(|l| l as usize + 1) == Some(z_at - i)
            && data.get(z_at.saturating_sub(1)) == Some(&0)
    });
    data.get(c_at.unwrap_or(z_at)..)
}

fn parse_error(body: &[u8]) -> PgError {
    let mut sqlstate = String::new();
    let mut severity = None;
    let mut severity_loc = None;
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let (val, next, _) = cstr(after);
        match code {
            b'C' => {
                sqlstate = val
                    .iter()
                    .take(5)
                    .filter(|c| c.is_ascii_alphanumeric())
                    .map(|&c| c as char)
                    .collect();
            }
            b'V' => severity = Some(bounded(val, 16)),
            b'S' => severity_loc = Some(bounded(val, 16)),
            _ => {}
        }
        rest = next;
    }
    PgError {
        sqlstate,
        severity: severity.or(severity_loc).unwrap_or_default(),
    }
}

impl Connection {
    /// A connection seen from its first byte.
    pub fn new() -> Self {
        Self {
            fe: Framer::new(true, Mode::Untagged, true),
            be: Framer::new(false, Mode::Tagged, true),
            p: Proto::new(Life::Startup),
        }
    }

    /// A connection already open when tracing began: resynchronises on message boundaries.
    pub fn new_unsynced() -> Self {
        Self {
            fe: Framer::new(true, Mode::Tagged, false),
            be: Framer::new(false, Mode::Tagged, false),
            p: Proto::new(Life::Running),
        }
    }

    /// The database name from the StartupMessage, if seen.
    pub fn database(&self) -> Option<&str> {
        self.p.database.as_deref()
    }

    /// Whether the bytes seen so far are PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        self.p.is_pg
    }

    /// Feeds one syscall's captured bytes; `lost_after` more bytes moved but were not captured.
    pub fn feed(
        &mut self,
        direction: Direction,
        data: &[u8],
        lost_after: u64,
        seen: Seen,
        out: &mut Vec<Event>,
    ) {
        if self.p.life == Life::Dead {
            return;
        }
        let p = &mut self.p;
        match direction {
            Direction::Request => {
                if p.last_was_backend {
                    p.round = p.round.saturating_add(1);
                    p.last_was_backend = false;
                }
                if !self.fe.synced {
                    if looks_like_startup(data) {
                        self.fe.synced = true;
                        self.fe.mode = Mode::Untagged;
                        p.life = Life::Startup;
                    } else if looks_like_frontend_message(data) {
                        self.fe.synced = true;
                        p.is_pg = true;
                    } else {
                        p.unsynced_feeds = p.unsynced_feeds.saturating_add(1);
                        if !p.is_pg && p.unsynced_feeds >= MAX_UNSYNCED_FEEDS {
                            p.life = Life::Dead;
                            out.push(Event::NotPostgres);
                        }
                        return;
                    }
                }
                let r = self
                    .fe
                    .feed(data, lost_after, seen, &mut |m| p.on_frontend(m, seen, out));
                if r.is_err() && p.life == Life::Startup {
                    // Garbage where the startup packet belongs (already reported if seen).
                    if p.life != Life::Dead {
                        p.life = Life::Dead;
                        out.push(Event::NotPostgres);
                    }
                }
                if let Some(mode) = p.be_mode.take() {
                    self.be.mode = mode;
                }
            }
            Direction::Response => {
                p.last_was_backend = true;
                let previous = std::mem::replace(&mut p.last_backend_seen, seen);
                let mut data = data;
                if !self.be.synced {
                    if looks_like_backend_message(data) {
                        self.be.synced = true;
                        p.backend_resynced(previous, out);
                    } else if let Some(tail) = answer_tail(data, lost_after) {
                        // The end of an answer whose start was lost: CommandComplete and
                        // ReadyForQuery still end the current operation.
                        self.be.synced = true;
                        p.backend_resynced(previous, out);
                        p.backend_lost();
                        data = tail;
                    } else {
                        return;
                    }
                }
                let r = self
                    .be
                    .feed(data, lost_after, seen, &mut |m| p.on_backend(m, seen, out));
                if r.is_err() {
                    p.backend_lost();
                }
            }
        }
    }

    /// The connection closed: operations in flight end, truncated.
    pub fn close(&mut self, seen: Seen, out: &mut Vec<Event>) {
        while let Some(e) = self.p.pending.pop_front() {
            if let Expect::Simple(mut op) | Expect::Execute(mut op) = e {
                op.truncated = true;
                out.push(Event::Operation(op.into_operation(seen)));
            }
        }
        self.p.stmts.clear();
        self.p.portals.clear();
    }
}

impl Proto {
    fn new(life: Life) -> Self {
        Self {
            life,
            seq: 0,
            stmts: HashMap::new(),
            portals: HashMap::new(),
            pending: VecDeque::new(),
            batch_first: None,
            database: None,
            is_pg: false,
            be_mode: None,
            unsynced_feeds: 0,
            round: 0,
            last_was_backend: false,
            last_backend_seen: Seen::default(),
        }
    }

    fn push(&mut self, e: Expect, seen: Seen, out: &mut Vec<Event>) {
        if self.pending.len() >= MAX_PENDING
            && let Some(Expect::Simple(mut op) | Expect::Execute(mut op)) = self.pending.pop_front()
        {
            op.truncated = true;
            out.push(Event::Operation(op.into_operation(seen)));
        }
        self.pending.push_back(e);
    }

    fn start_op(
        &mut self,
        stmt: Arc<Prepared>,
        prepared: bool,
        first: Seen,
        cut: bool,
    ) -> Box<OpBuild> {
        let seq = self.seq;
        self.seq = self.seq.saturating_add(1);
        Box::new(OpBuild {
            seq,
            stmt,
            prepared,
            first,
            rows: 0,
            rows_known: false,
            cur_rows: 0,
            cur_saw_rows: false,
            tag: None,
            error: None,
            truncated: cut,
            round: self.round,
        })
    }

    fn on_frontend(&mut self, m: Msg<'_>, seen: Seen, out: &mut Vec<Event>) -> Option<Mode> {
        if self.life == Life::Dead {
            return None;
        }
        match m.tag {
            0 => return self.on_startup(m, out),
            GARBAGE => {
                self.life = Life::Dead;
                if m.body.starts_with(&[0x16, 0x03]) {
                    // TLS ClientHello without SSLRequest (direct SSL negotiation).
                    self.is_pg = true;
                    out.push(Event::Encrypted);
                } else {
                    out.push(Event::NotPostgres);
                }
                return None;
            }
            _ => {}
        }
        self.life = Life::Running;
        self.is_pg = true;
        let body = m.body;
        match m.tag {
            b'Q' => {
                let (sql, _, ended) = cstr(body);
                let stmt = Arc::new(Prepared::parse(sql, !ended || !m.complete));
                let mut op = self.start_op(stmt, false, m.first, false);
                op.truncated = op.stmt.cut;
                out.push(Event::OperationStarted {
                    seq: op.seq,
                    first: op.first,
                });
                self.push(Expect::Simple(op), seen, out);
            }
            b'P' => {
                self.batch_first.get_or_insert(m.first);
                let (name, rest, named) = cstr(body);
                let (sql, _, ended) = cstr(rest);
                let stmt = Arc::new(Prepared::parse(sql, !named || !ended));
                if let Some(slot) = self.stmts.get_mut(name) {
                    *slot = stmt;
                } else {
                    if self.stmts.len() >= MAX_STATEMENTS {
                        // Statements deallocated by SQL (DEALLOCATE) are never seen: make room.
                        let victim = self.stmts.keys().next().cloned();
                        if let Some(k) = victim {
                            self.stmts.remove(&k);
                        }
                    }
                    self.stmts.insert(name.into(), stmt);
                }
                self.push(Expect::Parse, seen, out);
            }
            b'B' => {
                self.batch_first.get_or_insert(m.first);
                let (portal, rest, _) = cstr(body);
                let (name, _, _) = cstr(rest);
                let stmt = match self.stmts.get(name) {
                    Some(s) => s.clone(),
                    None => Arc::new(Prepared::unknown(name)),
                };
                if let Some(slot) = self.portals.get_mut(portal) {
                    *slot = stmt;
                } else if self.portals.len() < MAX_PORTALS {
                    self.portals.insert(portal.into(), stmt);
                }
                self.push(Expect::Bind, seen, out);
            }
            b'D' => {
                self.batch_first.get_or_insert(m.first);
                self.push(Expect::Describe, seen, out);
            }
            b'E' => {
                let (portal, _, _) = cstr(body);
                let stmt = match self.portals.get(portal) {
                    Some(s) => s.clone(),
                    None => Arc::new(Prepared::unknown(b"")),
                };
                let first = self.batch_first.take().unwrap_or(m.first);
                let op = self.start_op(stmt, true, first, false);
                out.push(Event::OperationStarted { seq: op.seq, first });
                self.push(Expect::Execute(op), seen, out);
            }
            b'S' => {
                self.batch_first = None;
                self.push(Expect::Sync, seen, out);
            }
            b'C' => {
                let (kind, rest) = body.split_first().unwrap_or((&0, &[]));
                let (name, _, _) = cstr(rest);
                match kind {
                    b'S' => {
                        self.stmts.remove(name);
                    }
                    b'P' => {
                        self.portals.remove(name);
                    }
                    _ => {}
                }
                self.push(Expect::Close, seen, out);
            }
            b'F' => self.push(Expect::FunctionCall, seen, out),
            _ => {}
        }
        None
    }

    fn on_startup(&mut self, m: Msg<'_>, out: &mut Vec<Event>) -> Option<Mode> {
        let code = be32(m.body).unwrap_or(0);
        match code {
            SSL_REQUEST | GSSENC_REQUEST => {
                self.is_pg = true;
                self.life = Life::Negotiating;
                self.be_mode = Some(Mode::SingleByte);
                Some(Mode::Untagged)
            }
            CANCEL_REQUEST => {
                self.is_pg = true;
                self.life = Life::Running;
                Some(Mode::Tagged)
            }
            c if c >> 16 == 3 => {
                self.is_pg = true;
                self.life = Life::Running;
                let mut user = None;
                let mut database = None;
                let mut application_name = None;
                let mut rest = m.body.get(4..).unwrap_or_default();
                while !rest.is_empty() {
                    let (k, r, _) = cstr(rest);
                    if k.is_empty() {
                        break;
                    }
                    let (v, r, _) = cstr(r);
                    let v = Some(bounded(v, MAX_FIELD));
                    match k {
                        b"user" => user = v,
                        b"database" => database = v,
                        b"application_name" => application_name = v,
                        _ => {}
                    }
                    rest = r;
                }
                let database = database.filter(|d| !d.is_empty()).or_else(|| user.clone());
                self.database = database.clone();
                out.push(Event::Startup {
                    user,
                    database,
                    application_name,
                });
                Some(Mode::Tagged)
            }
            _ => {
                self.life = Life::Dead;
                out.push(Event::NotPostgres);
                None
            }
        }
    }

    /// Drops queued acknowledgements that will not come, up to the first operation or Sync.
    fn skip_acks(&mut self) {
        while matches!(
            self.pending.front(),
            Some(Expect::Parse | Expect::Bind | Expect::Close | Expect::Describe)
        ) {
            self.pending.pop_front();
        }
    }

    /// An acknowledgement arrived: pop the matching expectation (and lost ones before it).
    fn ack(&mut self, is: fn(&Expect) -> bool) {
        while let Some(front) = self.pending.front() {
            if is(front) {
                self.pending.pop_front();
                return;
            }
            if !matches!(
                front,
                Expect::Parse | Expect::Bind | Expect::Close | Expect::Describe
            ) {
                return;
            }
            self.pending.pop_front();
        }
    }

    fn current_op(&mut self) -> Option<&mut OpBuild> {
        self.skip_acks();
        match self.pending.front_mut() {
            Some(Expect::Simple(op) | Expect::Execute(op)) => Some(op),
            _ => None,
        }
    }

    /// The current Execute ended (CommandComplete, EmptyQuery, PortalSuspended).
    fn end_current(&mut self, tag: Option<String>, seen: Seen, out: &mut Vec<Event>) {
        self.skip_acks();
        match self.pending.front_mut() {
            Some(Expect::Simple(op)) => {
                op.end_statement(tag.as_deref());
                if tag.is_some() {
                    op.tag = tag;
                }
            }
            Some(Expect::Execute(op)) => {
                op.end_statement(tag.as_deref());
                op.tag = tag;
                if let Some(Expect::Execute(op)) = self.pending.pop_front() {
                    out.push(Event::Operation(op.into_operation(seen)));
                }
            }
            _ => {}
        }
    }

    fn on_backend(&mut self, m: Msg<'_>, seen: Seen, out: &mut Vec<Event>) -> Option<Mode> {
        if self.life == Life::Dead {
            return None;
        }
        let body = m.body;
        match m.tag {
            SINGLE => {
                let b = body.first().copied().unwrap_or(0);
                if matches!(b, b'S' | b'G') {
                    self.life = Life::Dead;
                    out.push(Event::Encrypted);
                } else {
                    self.life = Life::Startup;
                }
                return Some(Mode::Tagged);
            }
            b'A' => {
                let (channel, _, _) = cstr(body.get(4..).unwrap_or_default());
                out.push(Event::Notification {
                    channel: bounded(channel, MAX_FIELD),
                });
            }
            b'1' => self.ack(|e| matches!(e, Expect::Parse)),
            b'2' => self.ack(|e| matches!(e, Expect::Bind)),
            b'3' => self.ack(|e| matches!(e, Expect::Close)),
            b'T' | b'n' => {
                if matches!(self.pending.front(), Some(Expect::Describe)) {
                    self.pending.pop_front();
                } else if m.tag == b'T'
                    && let Some(op) = self.current_op()
                {
                    op.cur_saw_rows = true;
                }
            }
            b'D' => {
                if let Some(op) = self.current_op() {
                    op.cur_rows = op.cur_rows.saturating_add(1);
                    op.cur_saw_rows = true;
                }
            }
            b'C' => {
                let (tag, _, _) = cstr(body);
                let tag = bounded(tag, 64);
                self.end_current(Some(tag), seen, out);
            }
            b'I' | b's' => self.end_current(None, seen, out),
            b'E' => self.on_error(parse_error(body), seen, out),
            b'Z' => self.on_ready(seen, out),
            _ => {}
        }
        None
    }

    fn on_error(&mut self, err: PgError, seen: Seen, out: &mut Vec<Event>) {
        match self.pending.front_mut() {
            None | Some(Expect::Sync | Expect::FunctionCall) => {}
            Some(Expect::Simple(op)) => {
                op.end_statement(None);
                op.error.get_or_insert(err);
            }
            Some(_) => {
                // Extended protocol: the server now skips to Sync. The failing Execute (or the
                // one whose Parse/Bind failed) carries the error; the rest of the batch ends.
                let mut err = Some(err);
                loop {
                    match self.pending.front() {
                        Some(Expect::Parse | Expect::Bind | Expect::Close | Expect::Describe) => {
                            self.pending.pop_front();
                        }
                        Some(Expect::Execute(_)) => {
                            if let Some(Expect::Execute(mut op)) = self.pending.pop_front() {
                                match err.take() {
                                    Some(e) => op.error = Some(e),
                                    None => op.truncated = true,
                                }
                                out.push(Event::Operation(op.into_operation(seen)));
                            }
                        }
                        _ => break,
                    }
                }
            }
        }
    }

    fn on_ready(&mut self, seen: Seen, out: &mut Vec<Event>) {
        while let Some(e) = self.pending.pop_front() {
            match e {
                Expect::Simple(op) => {
                    out.push(Event::Operation(op.into_operation(seen)));
                    return;
                }
                Expect::Execute(mut op) => {
                    // Skipped by the server after an error, or its response was lost.
                    op.truncated = true;
                    out.push(Event::Operation(op.into_operation(seen)));
                }
                Expect::Sync | Expect::FunctionCall => return,
                Expect::Parse | Expect::Bind | Expect::Close | Expect::Describe => {}
            }
        }
    }

    /// The backend stream is readable again after lost bytes (or for the first time on a
    /// connection opened before tracing). Responses to requests of earlier rounds were lost
    /// with the gap: a client that is not pipelining sends a new request only after the
    /// previous answer ended. Without this, every later answer would be matched to the
    /// request before its own.
    fn backend_resynced(&mut self, seen: Seen, out: &mut Vec<Event>) {
        loop {
            match self.pending.front() {
                Some(Expect::Simple(op) | Expect::Execute(op)) if op.round >= self.round => return,
                None => return,
                Some(_) => {}
            }
            if let Some(Expect::Simple(mut op) | Expect::Execute(mut op)) = self.pending.pop_front()
            {
                op.truncated = true;
                out.push(Event::Operation(op.into_operation(seen)));
            }
        }
    }

    /// Backend bytes were lost across message boundaries: what is in flight is incomplete.
    fn backend_lost(&mut self) {
        for e in self.pending.iter_mut() {
            if let Expect::Simple(op) | Expect::Execute(op) = e {
                op.truncated = true;
            }
        }
    }
}

#[cfg(test)]
mod tests;
