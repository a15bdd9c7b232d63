//! SQL sanitizer and summarizer: literals become `?` before any text leaves this crate, and a
//! low-cardinality `db.query.summary` ("SELECT auth_user") is derived from keywords and table
//! names only. Both run in one pass of the crate's lexer and never fail.

use crate::lexer::{Kind, Lexer, Tok};

/// Upper bound on sanitized text, in bytes (longer output is cut at a character boundary).
pub const MAX_SANITIZED_LEN: usize = 64 * 1024;
/// Upper bound on a summary, in bytes.
pub const MAX_SUMMARY_LEN: usize = 255;
const MAX_STATEMENTS: usize = 32;
const MAX_NAME_LEN: usize = 128;

/// `db.operation.name`, `db.collection.name` and `db.query.summary` of a query text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Main operation, e.g. `SELECT`, `CREATE TABLE`; `None` when unknown or mixed.
    pub operation: Option<String>,
    /// First/main table, quotes removed, e.g. `auth_user` or `public.orders`.
    pub collection: Option<String>,
    /// `"{operation} {collection}"`, or the statements' summaries joined by spaces; empty when
    /// no statement was recognised.
    pub summary: String,
}

/// Replaces every literal in `sql` with `?` (see the crate docs for the rules).
pub fn sanitize(sql: &str) -> String {
    analyze(sql.as_bytes(), MAX_SANITIZED_LEN).0
}

/// Like [`sanitize`] with an explicit output bound; returns the text and whether it was cut.
pub fn sanitize_bounded(sql: &str, max: usize) -> (String, bool) {
    let (s, _, cut) = analyze(sql.as_bytes(), max);
    (s, cut)
}

/// Derives the operation, main collection and summary of `sql`.
pub fn summarize(sql: &str) -> Summary {
    let mut sum = Summarizer::default();
    let bytes = sql.as_bytes();
    for tok in Lexer::new(bytes) {
        sum.push(bytes, tok);
    }
    sum.finish()
}

/// Sanitizes and summarizes raw query bytes (any encoding; invalid UTF-8 is replaced) in one
/// pass. Returns (sanitized text, summary, whether the text was cut at `max`).
pub fn analyze(sql: &[u8], max: usize) -> (String, Summary, bool) {
    let mut san = Sanitizer::new(sql.len().min(max));
    let mut sum = Summarizer::default();
    let mut lexer = Lexer::new(sql).peekable();
    let mut cut = false;
    while let Some(tok) = lexer.next() {
        sum.push(sql, tok);
        if cut || san.stopped {
            continue;
        }
        // A sign directly before a number, where a value is expected, is part of the literal.
        let op = sql.get(tok.start..tok.end).unwrap_or_default();
        let signed = tok.kind == Kind::Op
            && !san.prev_is_value()
            && (op == b"-" || op == b"+")
            && lexer
                .peek()
                .is_some_and(|n| n.kind == Kind::Number && !n.space_before);
        if signed {
            if let Some(next) = lexer.next() {
                sum.push(sql, next);
            }
            san.literal(tok.space_before);
        } else {
            san.push(sql, tok);
        }
        // Replacing invalid UTF-8 never makes the text shorter, so once the raw bytes pass
        // `max` the final text will too: stop sanitizing (the summary still sees every token).
        if san.out.len() > max {
            cut = true;
        }
    }
    let (text, cut_here) = bounded_text(san.out, max);
    (text, sum.finish(), cut || cut_here)
}

/// Turns the sanitizer's raw bytes into text of at most `max` bytes. The bound applies to the
/// text after invalid UTF-8 became U+FFFD (3 bytes for as little as 1 input byte), and the cut
/// lands on a character boundary. Returns the text and whether it was cut.
fn bounded_text(mut raw: Vec<u8>, max: usize) -> (String, bool) {
    // Raw byte i ends up at text offset >= i, so bytes past max + 3 cannot reach the first
    // `max` bytes of text; the 3 spare bytes keep a sequence split by this cut from turning
    // into a replacement character that the full text would not have.
    raw.truncate(max.saturating_add(4));
    let mut text = match String::from_utf8(raw) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    if text.len() <= max {
        return (text, false);
    }
    let mut n = max;
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    text.truncate(n);
    (text, true)
}

fn is_kw(word: &[u8], kw: &str) -> bool {
    word.eq_ignore_ascii_case(kw.as_bytes())
}

/// Keywords (uppercase) after which a `-`/`+` starts a signed number. A `match` on the
/// uppercased word (length first, then bytes) rather than a scan of a keyword list with a
/// case-insensitive compare per entry: keyword tests were a sixth of sanitizing.
fn is_value_keyword(upper: &[u8]) -> bool {
    matches!(
        upper,
        b"SELECT"
            | b"WHERE"
            | b"AND"
            | b"OR"
            | b"NOT"
            | b"THEN"
            | b"ELSE"
            | b"WHEN"
            | b"VALUES"
            | b"BY"
            | b"LIMIT"
            | b"OFFSET"
            | b"IN"
            | b"IS"
            | b"BETWEEN"
            | b"LIKE"
            | b"ILIKE"
            | b"RETURN"
            | b"SET"
            | b"CASE"
            | b"ON"
            | b"HAVING"
            | b"TO"
            | b"DEFAULT"
            | b"RETURNING"
            | b"ANY"
            | b"ALL"
            | b"SOME"
            | b"FETCH"
            | b"ROWS"
    )
}

/// A word in ASCII uppercase, on the stack, for matching keywords; empty for words longer
/// than any keyword the sanitizer tests.
struct UpperWord {
    buf: [u8; 16],
    len: usize,
}

impl UpperWord {
    fn of(word: &[u8]) -> Self {
        let mut buf = [0u8; 16];
        let len = if word.len() <= buf.len() {
            for (b, c) in buf.iter_mut().zip(word) {
                *b = c.to_ascii_uppercase();
            }
            word.len()
        } else {
            0
        };
        UpperWord { buf, len }
    }

    fn as_bytes(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or_default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    Start,
    Value,
    NonValue,
    In,
    Array,
    Values,
}

/// A flat list `( ?, ?, ? )` after IN or `[ ?, ? ]` after ARRAY, being watched for collapse.
struct ListState {
    start: usize,
    items: u32,
    expect_item: bool,
    close: u8,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ValuesPhase {
    AwaitFirst,
    InFirst,
    AfterRow,
    AwaitRow,
    InRow,
}

/// VALUES (...), (...): rows identical (after sanitizing) to the first are dropped.
struct ValuesState {
    depth: i32,
    phase: ValuesPhase,
    first: (usize, usize),
    comma: usize,
    row: usize,
}

struct Sanitizer {
    out: Vec<u8>,
    prev: Prev,
    depth: i32,
    list: Option<ListState>,
    values: Option<ValuesState>,
    stopped: bool,
}

impl Sanitizer {
    fn new(cap: usize) -> Self {
        Self {
            out: Vec::with_capacity(cap.min(4096)),
            prev: Prev::Start,
            depth: 0,
            list: None,
            values: None,
            stopped: false,
        }
    }

    fn prev_is_value(&self) -> bool {
        self.prev == Prev::Value
    }

    fn space(&mut self, space_before: bool) {
        if space_before && !self.out.is_empty() {
            self.out.push(b' ');
        }
    }

    fn literal(&mut self, space_before: bool) {
        self.space(space_before);
        self.out.push(b'?');
        self.prev = Prev::Value;
        if let Some(l) = self.list.as_mut() {
            if l.expect_item {
                l.items += 1;
                l.expect_item = false;
            } else {
                self.list = None;
            }
        }
        self.values_other();
    }

    fn values_other(&mut self) {
        if let Some(v) = &self.values
            && matches!(
                v.phase,
                ValuesPhase::AwaitFirst | ValuesPhase::AfterRow | ValuesPhase::AwaitRow
            )
        {
            self.values = None;
        }
    }

    fn push(&mut self, sql: &[u8], tok: Tok) {
        if self.stopped {
            return;
        }
        let text = sql.get(tok.start..tok.end).unwrap_or_default();
        match tok.kind {
            Kind::Str | Kind::Number => self.literal(tok.space_before),
            Kind::Unterminated => {
                // Truncated text: nothing after an open quote may leak.
                self.literal(tok.space_before);
                self.stopped = true;
            }
            Kind::Punct => self.punct(tok, text),
            kind => {
                let upper = UpperWord::of(if kind == Kind::Word { text } else { b"" });
                let word = upper.as_bytes();
                if word == b"TRUE" || word == b"FALSE" {
                    self.literal(tok.space_before);
                    return;
                }
                self.space(tok.space_before);
                self.out.extend_from_slice(text);
                self.list = None;
                self.values_other();
                self.prev = match kind {
                    Kind::Word => match word {
                        b"IN" => Prev::In,
                        b"ARRAY" => Prev::Array,
                        b"VALUES" => Prev::Values,
                        w if is_value_keyword(w) => Prev::NonValue,
                        _ => Prev::Value,
                    },
                    Kind::QuotedIdent | Kind::Param => Prev::Value,
                    _ => Prev::NonValue,
                };
                if self.prev == Prev::Values {
                    self.values = Some(ValuesState {
                        depth: self.depth,
                        phase: ValuesPhase::AwaitFirst,
                        first: (0, 0),
                        comma: 0,
                        row: 0,
                    });
                }
            }
        }
    }

    fn punct(&mut self, tok: Tok, text: &[u8]) {
        let c = text.first().copied().unwrap_or(b' ');
        let prev = self.prev;
        self.space(tok.space_before);
        let pos = self.out.len();
        self.out.extend_from_slice(text);
        match c {
            b'(' | b'[' => {
                self.depth = self.depth.saturating_add(1);
                self.list = match (c, prev) {
                    (b'(', Prev::In) => Some((b')', pos + 1)),
                    (b'[', Prev::Array) => Some((b']', pos + 1)),
                    _ => None,
                }
                .map(|(close, start)| ListState {
                    start,
                    items: 0,
                    expect_item: true,
                    close,
                });
                if let Some(v) = self.values.as_mut() {
                    if c == b'(' && self.depth == v.depth + 1 {
                        match v.phase {
                            ValuesPhase::AwaitFirst => {
                                v.first.0 = pos;
                                v.phase = ValuesPhase::InFirst;
                            }
                            ValuesPhase::AwaitRow => {
                                v.row = pos;
                                v.phase = ValuesPhase::InRow;
                            }
                            _ => {}
                        }
                    } else if matches!(v.phase, ValuesPhase::AwaitFirst | ValuesPhase::AwaitRow) {
                        self.values = None;
                    }
                }
                self.prev = Prev::NonValue;
            }
            b')' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if let Some(l) = self.list.take()
                    && l.close == c
                    && !l.expect_item
                    && l.items > 1
                {
                    self.out.truncate(l.start);
                    self.out.push(b'?');
                    self.out.push(c);
                }
                if let Some(v) = self.values.as_mut() {
                    if self.depth == v.depth {
                        match v.phase {
                            ValuesPhase::InFirst => {
                                v.first.1 = self.out.len();
                                v.phase = ValuesPhase::AfterRow;
                            }
                            ValuesPhase::InRow => {
                                let row = self.out.get(v.row..).unwrap_or_default();
                                let first = self.out.get(v.first.0..v.first.1).unwrap_or_default();
                                if row == first {
                                    self.out.truncate(v.comma);
                                }
                                v.phase = ValuesPhase::AfterRow;
                            }
                            _ => self.values = None,
                        }
                    } else if self.depth < v.depth {
                        self.values = None;
                    }
                }
                self.prev = Prev::Value;
            }
            b',' => {
                if let Some(l) = self.list.as_mut() {
                    if l.expect_item {
                        self.list = None;
                    } else {
                        l.expect_item = true;
                    }
                }
                if let Some(v) = self.values.as_mut()
                    && self.depth == v.depth
                {
                    if v.phase == ValuesPhase::AfterRow {
                        v.comma = if tok.space_before {
                            pos.saturating_sub(1)
                        } else {
                            pos
                        };
                        v.phase = ValuesPhase::AwaitRow;
                    } else {
                        self.values = None;
                    }
                }
                self.prev = Prev::NonValue;
            }
            _ => {
                self.list = None;
                self.values_other();
                if c == b';' {
                    self.depth = 0;
                    self.values = None;
                }
                self.prev = if c == b'.' {
                    Prev::Value
                } else {
                    Prev::NonValue
                };
            }
        }
    }
}

/// What the summarizer of one statement is waiting for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Want {
    /// The first keyword.
    Op,
    /// WITH ...: the main statement keyword at the base depth.
    MainAfterWith,
    /// SELECT: FROM at the base depth (or any depth when `any`).
    From {
        any: bool,
    },
    /// A table name (skipping ONLY, IF, NOT, EXISTS, TABLE, INTO, LATERAL, FROM).
    Name,
    /// Inside a (possibly qualified) name: a `.` continues it.
    NameDot,
    /// After `.`: the next part.
    NamePart,
    /// CREATE INDEX ...: waiting for ON.
    On,
    /// CREATE/ALTER/DROP: the object keyword.
    Object,
    Done,
}

#[derive(Default)]
struct Stmt {
    op: Option<String>,
    collection: Option<String>,
}

struct Summarizer {
    stmts: Vec<Stmt>,
    cur: Stmt,
    want: Want,
    depth: i32,
    base: i32,
    prev_distinct: bool,
    name: String,
}

impl Default for Summarizer {
    fn default() -> Self {
        Self {
            stmts: Vec::new(),
            cur: Stmt::default(),
            want: Want::Op,
            depth: 0,
            base: 0,
            prev_distinct: false,
            name: String::new(),
        }
    }
}

const SIMPLE_OPS: &[&str] = &[
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "END",
    "ABORT",
    "SAVEPOINT",
    "RELEASE",
    "SET",
    "SHOW",
    "RESET",
    "LISTEN",
    "NOTIFY",
    "UNLISTEN",
    "DECLARE",
    "FETCH",
    "MOVE",
    "CLOSE",
    "PREPARE",
    "EXECUTE",
    "DEALLOCATE",
    "DO",
    "CALL",
    "GRANT",
    "REVOKE",
    "VACUUM",
    "ANALYZE",
    "ANALYSE",
    "DISCARD",
    "COMMENT",
    "REFRESH",
    "CHECKPOINT",
    "CLUSTER",
    "REINDEX",
    "EXPLAIN",
    "VALUES",
    "SECURITY",
    "LOAD",
    "IMPORT",
    "REASSIGN",
];

const OBJECTS: &[&str] = &[
    "TABLE",
    "INDEX",
    "VIEW",
    "SEQUENCE",
    "SCHEMA",
    "FUNCTION",
    "PROCEDURE",
    "TRIGGER",
    "TYPE",
    "EXTENSION",
    "DATABASE",
    "ROLE",
    "USER",
    "DOMAIN",
    "POLICY",
    "PUBLICATION",
    "SUBSCRIPTION",
    "AGGREGATE",
    "COLLATION",
    "CONVERSION",
    "OPERATOR",
    "RULE",
    "SERVER",
    "TABLESPACE",
];

const NAME_SKIP: &[&str] = &[
    "ONLY", "IF", "NOT", "EXISTS", "TABLE", "INTO", "LATERAL", "FROM",
];

fn upper(word: &[u8]) -> String {
    word.iter()
        .map(|c| c.to_ascii_uppercase() as char)
        .collect()
}

/// An identifier's name: a word as written, a quoted one without its quotes (a doubled quote
/// is one quote). Borrowed from the query unless it needed changing.
fn ident_part(sql: &[u8], tok: Tok) -> Option<std::borrow::Cow<'_, str>> {
    let raw = sql.get(tok.start..tok.end)?;
    let inner = match tok.kind {
        Kind::Word => raw,
        Kind::QuotedIdent => {
            let q = raw.iter().position(|&c| c == b'"')?;
            raw.get(q + 1..raw.len().saturating_sub(1))?
        }
        _ => return None,
    };
    let s = String::from_utf8_lossy(inner);
    if s.contains("\"\"") {
        return Some(s.replace("\"\"", "\"").into());
    }
    Some(s)
}

impl Summarizer {
    fn push(&mut self, sql: &[u8], tok: Tok) {
        let text = sql.get(tok.start..tok.end).unwrap_or_default();
        if tok.kind == Kind::Punct && text == b";" {
            self.end_stmt();
            return;
        }
        // Name accumulation states consume `.` and identifier parts.
        match self.want {
            Want::NameDot if tok.kind == Kind::Punct && text == b"." => {
                self.want = Want::NamePart;
                return;
            }
            Want::NamePart => {
                if let Some(part) = ident_part(sql, tok) {
                    self.add_name_part(&part);
                    self.want = Want::NameDot;
                    return;
                }
                self.finish_name();
            }
            Want::NameDot => self.finish_name(),
            _ => {}
        }
        if tok.kind == Kind::Punct && (text == b"(" || text == b"[") {
            self.depth = self.depth.saturating_add(1);
            if self.want == Want::Name && self.depth == self.base + 1 {
                // FROM (subquery): take the first FROM inside.
                if self.cur.op.as_deref() == Some("SELECT") {
                    self.want = Want::From { any: true };
                } else {
                    self.want = Want::Done;
                }
            }
            return;
        }
        if tok.kind == Kind::Punct && (text == b")" || text == b"]") {
            self.depth = self.depth.saturating_sub(1);
            return;
        }
        let is_word = tok.kind == Kind::Word;
        match self.want {
            Want::Op => {
                if is_word {
                    self.base = self.depth;
                    self.start_op(text);
                } else if tok.kind == Kind::Punct || tok.kind == Kind::Op {
                    // Leading parentheses are allowed; anything else is not SQL we know.
                } else {
                    self.want = Want::Done;
                }
            }
            Want::MainAfterWith => {
                if is_word && self.depth == self.base {
                    for kw in [
                        "SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "VALUES", "TABLE",
                    ] {
                        if is_kw(text, kw) {
                            self.start_op(text);
                            break;
                        }
                    }
                }
            }
            Want::From { any } => {
                if is_word
                    && is_kw(text, "FROM")
                    && !self.prev_distinct
                    && (any || self.depth == self.base)
                {
                    self.want = Want::Name;
                }
            }
            Want::Name => {
                if is_word && NAME_SKIP.iter().any(|k| is_kw(text, k)) {
                } else if let Some(part) = ident_part(sql, tok) {
                    self.name.clear();
                    self.add_name_part(&part);
                    self.want = Want::NameDot;
                } else {
                    self.want = Want::Done;
                }
            }
            Want::On => {
                if is_word && is_kw(text, "ON") && self.depth == self.base {
                    self.want = Want::Name;
                }
            }
            Want::Object => {
                if !is_word {
                    self.want = Want::Done;
                    return;
                }
                let skip = [
                    "OR",
                    "REPLACE",
                    "GLOBAL",
                    "LOCAL",
                    "TEMP",
                    "TEMPORARY",
                    "UNLOGGED",
                    "UNIQUE",
                    "MATERIALIZED",
                    "RECURSIVE",
                    "CONSTRAINT",
                    "DEFAULT",
                    "TRUSTED",
                    "PROCEDURAL",
                ];
                if skip.iter().any(|k| is_kw(text, k)) {
                    if is_kw(text, "MATERIALIZED") {
                        self.append_op(" MATERIALIZED");
                    }
                    return;
                }
                if let Some(obj) = OBJECTS.iter().find(|k| is_kw(text, k)) {
                    self.append_op(" ");
                    self.append_op(obj);
                    self.want = match *obj {
                        "TABLE" => Want::Name,
                        "INDEX"
                            if self
                                .cur
                                .op
                                .as_deref()
                                .is_some_and(|o| o.starts_with("CREATE")) =>
                        {
                            Want::On
                        }
                        _ => Want::Done,
                    };
                } else {
                    // e.g. "DROP MATERIALIZED x": keep only what we know.
                    if let Some(op) = self.cur.op.as_mut()
                        && op.ends_with(" MATERIALIZED")
                    {
                        op.truncate(op.len() - " MATERIALIZED".len());
                    }
                    self.want = Want::Done;
                }
            }
            Want::Done | Want::NameDot | Want::NamePart => {}
        }
        self.prev_distinct = is_word && is_kw(text, "DISTINCT");
    }

    fn append_op(&mut self, s: &str) {
        if let Some(op) = self.cur.op.as_mut() {
            op.push_str(s);
        }
    }

    fn start_op(&mut self, word: &[u8]) {
        let w = |k: &str| is_kw(word, k);
        let (op, want) = if w("SELECT") {
            ("SELECT".to_string(), Want::From { any: false })
        } else if w("WITH") {
            // The operation is the main statement's, found after the CTE list.
            self.want = Want::MainAfterWith;
            return;
        } else if w("INSERT")
            || w("UPDATE")
            || w("MERGE")
            || w("TRUNCATE")
            || w("LOCK")
            || w("COPY")
        {
            (upper(word), Want::Name)
        } else if w("DELETE") {
            ("DELETE".to_string(), Want::Name)
        } else if w("TABLE") {
            ("SELECT".to_string(), Want::Name)
        } else if w("CREATE") || w("ALTER") || w("DROP") {
            (upper(word), Want::Object)
        } else if w("START") {
            ("START TRANSACTION".to_string(), Want::Done)
        } else if let Some(k) = SIMPLE_OPS.iter().find(|k| w(k)) {
            (k.to_string(), Want::Done)
        } else {
            self.want = Want::Done;
            return;
        };
        self.cur.op = Some(op);
        self.want = want;
    }

    fn add_name_part(&mut self, part: &str) {
        if !self.name.is_empty() {
            self.name.push('.');
        }
        if self.name.len() + part.len() <= MAX_NAME_LEN {
            self.name.push_str(part);
            return;
        }
        for ch in part.chars() {
            if self.name.len() + ch.len_utf8() > MAX_NAME_LEN {
                break;
            }
            self.name.push(ch);
        }
    }

    fn finish_name(&mut self) {
        let name = std::mem::take(&mut self.name);
        if !name.is_empty() {
            self.cur.collection = Some(name);
        }
        self.want = Want::Done;
    }

    fn end_stmt(&mut self) {
        if matches!(self.want, Want::NameDot | Want::NamePart) {
            self.finish_name();
        }
        let stmt = std::mem::take(&mut self.cur);
        if stmt.op.is_some() && self.stmts.len() < MAX_STATEMENTS {
            self.stmts.push(stmt);
        }
        self.want = Want::Op;
        self.depth = 0;
        self.base = 0;
        self.prev_distinct = false;
    }

    fn finish(mut self) -> Summary {
        self.end_stmt();
        let mut summary = String::new();
        let mut last = String::new();
        for s in &self.stmts {
            let Some(op) = &s.op else { continue };
            let one = match &s.collection {
                Some(c) => format!("{op} {c}"),
                None => op.clone(),
            };
            if one == last {
                continue;
            }
            let extra = if summary.is_empty() { 0 } else { 1 };
            if summary.len() + extra + one.len() > MAX_SUMMARY_LEN {
                if summary.is_empty() {
                    let mut cut = MAX_SUMMARY_LEN;
                    while !one.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    summary.push_str(one.get(..cut).unwrap_or(""));
                }
                break;
            }
            if extra == 1 {
                summary.push(' ');
            }
            summary.push_str(&one);
            last = one;
        }
        let first_op = self.stmts.first().and_then(|s| s.op.clone());
        let operation = if self.stmts.iter().all(|s| s.op == first_op) {
            first_op
        } else {
            None
        };
        let mut colls = self.stmts.iter().filter_map(|s| s.collection.as_ref());
        let first_coll = colls.next().cloned();
        let collection = if colls.all(|c| Some(c) == first_coll.as_ref()) {
            first_coll
        } else {
            None
        };
        Summary {
            operation,
            collection,
            summary,
        }
    }
}

#[cfg(test)]
mod tests;
