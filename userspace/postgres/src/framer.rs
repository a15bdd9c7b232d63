//! Message framing for one direction of a connection: turns syscall-sized byte chunks into
//! whole wire messages (tag + length + body), reassembling across feeds with a bounded
//! buffer, skipping bodies nobody reads (DataRow, CopyData) without copying, and accounting
//! for bytes the kernel moved but did not capture.

use crate::Seen;

/// Largest message body kept in memory; bigger messages are delivered cut and skipped.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Lengths beyond this are not PostgreSQL (the server's own limit is 1 GiB).
const MAX_PLAUSIBLE_LEN: u32 = 1 << 30;

/// One framed message handed to the protocol state machine.
#[derive(Debug)]
pub(crate) struct Msg<'a> {
    /// Type byte; 0 for an untagged startup-phase message, `SINGLE` for the one-byte answer
    /// to SSLRequest/GSSENCRequest.
    pub tag: u8,
    /// Body (after the length); may be cut when `complete` is false.
    pub body: &'a [u8],
    /// False when the body is cut (oversized, or bytes lost) or not kept on purpose.
    pub complete: bool,
    /// When the message's first byte was seen.
    pub first: Seen,
}

/// Tag used for the one-byte SSL/GSS answer.
pub(crate) const SINGLE: u8 = 0xFF;
/// Tag used to show the caller bytes that are not a startup-phase message (TLS, garbage).
pub(crate) const GARBAGE: u8 = 0xFE;

/// What the framer wants next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Regular messages: tag byte + int32 length.
    Tagged,
    /// Startup phase: int32 length, no tag (frontend only).
    Untagged,
    /// One byte, no framing (backend answer to SSLRequest/GSSENCRequest).
    SingleByte,
}

/// Result of checking a header.
pub(crate) enum Framed {
    Ok,
    /// Not a plausible message: the caller resynchronises or gives up.
    Bad,
}

pub(crate) struct Framer {
    frontend: bool,
    pub mode: Mode,
    buf: Vec<u8>,
    /// Total size (header included) of the message being buffered, once its header is known.
    need: usize,
    /// How many bytes (header included) of the message being buffered are kept.
    limit: usize,
    /// Bytes still to discard (the rest of a message delivered early).
    skip: u64,
    first: Seen,
    pub synced: bool,
}

/// How much of a message's body the state machine reads: bodies are bounded by what is
/// needed (statement and portal names sit at the start of Bind; SQL text may be long).
fn body_limit(frontend: bool, tag: u8) -> usize {
    match (frontend, tag) {
        (true, b'Q' | b'P') => MAX_MESSAGE,
        (true, 0) => 10_000,
        (false, b'E') => 16 * 1024,
        _ => 1024,
    }
}

/// Message types whose body the state machine reads.
fn keeps_body(frontend: bool, tag: u8) -> bool {
    if frontend {
        matches!(tag, 0 | b'Q' | b'P' | b'B' | b'E' | b'D' | b'C')
    } else {
        matches!(tag, b'C' | b'E' | b'A')
    }
}

pub(crate) fn frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'Q' | b'P'
            | b'B'
            | b'E'
            | b'D'
            | b'S'
            | b'H'
            | b'C'
            | b'X'
            | b'd'
            | b'c'
            | b'f'
            | b'p'
            | b'F'
    )
}

pub(crate) fn backend_tag(tag: u8) -> bool {
    matches!(
        tag,
        b'R' | b'S'
            | b'K'
            | b'Z'
            | b'T'
            | b'D'
            | b'C'
            | b'I'
            | b'E'
            | b'N'
            | b'A'
            | b'1'
            | b'2'
            | b'3'
            | b'n'
            | b's'
            | b't'
            | b'G'
            | b'H'
            | b'W'
            | b'd'
            | b'c'
            | b'V'
            | b'v'
    )
}

/// Fixed body lengths (length field value) where the protocol defines one.
fn fixed_len(frontend: bool, tag: u8) -> Option<u32> {
    if frontend {
        match tag {
            b'S' | b'H' | b'X' | b'c' => Some(4),
            _ => None,
        }
    } else {
        match tag {
            b'1' | b'2' | b'3' | b'n' | b'I' | b'c' => Some(4),
            b'Z' => Some(5),
            // BackendKeyData is longer from protocol 3.2 on (variable-length cancel key).
            _ => None,
        }
    }
}

/// Whether `tag` + `len` is a plausible message header for this direction.
pub(crate) fn plausible(frontend: bool, tag: u8, len: u32) -> bool {
    let known = if frontend {
        frontend_tag(tag)
    } else {
        backend_tag(tag)
    };
    known
        && (4..MAX_PLAUSIBLE_LEN).contains(&len)
        && fixed_len(frontend, tag).is_none_or(|f| f == len)
}

fn be32(b: &[u8]) -> Option<u32> {
    let a: [u8; 4] = b.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(a))
}

/// Parses a header at the start of `d`: (tag, total size including header).
fn header(mode: Mode, d: &[u8]) -> Option<(u8, u32)> {
    match mode {
        Mode::Untagged => be32(d).map(|l| (0, l)),
        _ => Some((*d.first()?, be32(d.get(1..)?)?)),
    }
}

fn header_len(mode: Mode) -> usize {
    if mode == Mode::Untagged { 4 } else { 5 }
}

impl Framer {
    pub(crate) fn new(frontend: bool, mode: Mode, synced: bool) -> Self {
        Self {
            frontend,
            mode,
            buf: Vec::new(),
            need: 0,
            limit: 0,
            skip: 0,
            first: Seen::default(),
            synced,
        }
    }

    /// Bytes currently held for a message split across feeds.
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        self.buf.capacity()
    }

    /// Forgets partial state and waits for a plausible message at the start of a later feed.
    pub(crate) fn desync(&mut self) {
        self.buf = Vec::new();
        self.need = 0;
        self.skip = 0;
        self.synced = false;
        self.mode = Mode::Tagged;
    }

    fn check(&self, tag: u8, len: u32) -> Framed {
        let ok = match self.mode {
            Mode::Untagged => (8..=10_000).contains(&len),
            Mode::SingleByte => true,
            Mode::Tagged => plausible(self.frontend, tag, len),
        };
        if ok { Framed::Ok } else { Framed::Bad }
    }

    /// Feeds one syscall's captured bytes followed by `lost` uncaptured ones. `on_msg` gets
    /// each message and may return the mode for what follows (startup phase, SSL answer).
    /// Returns `Err(Framed::Bad)` when the stream lost its message boundaries (implausible
    /// header, or bytes lost across a boundary); the framer then waits to resynchronise.
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        lost: u64,
        seen: Seen,
        on_msg: &mut dyn FnMut(Msg<'_>) -> Option<Mode>,
    ) -> Result<(), Framed> {
        let mut d = data;
        if self.skip > 0 {
            let n = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(d.len());
            d = d.get(n..).unwrap_or_default();
            self.skip = self.skip.saturating_sub(n as u64);
        }
        let mut bad = false;
        while !d.is_empty() {
            if !self.buf.is_empty() {
                d = self.continue_partial(d, on_msg);
                continue;
            }
            if self.mode == Mode::SingleByte {
                let (b, rest) = d.split_at(1);
                let m = on_msg(Msg {
                    tag: SINGLE,
                    body: b,
                    complete: true,
                    first: seen,
                });
                self.mode = m.unwrap_or(Mode::Tagged);
                d = rest;
                continue;
            }
            let hl = header_len(self.mode);
            let Some((tag, len)) = header(self.mode, d) else {
                // Header split across feeds.
                self.start_partial(d, 0, 0, seen);
                d = &[];
                continue;
            };
            if let Framed::Bad = self.check(tag, len) {
                if self.mode == Mode::Untagged {
                    // Let the caller look at these bytes (TLS, garbage).
                    on_msg(Msg {
                        tag: GARBAGE,
                        body: d,
                        complete: false,
                        first: seen,
                    });
                }
                bad = true;
                break;
            }
            let total = (len as usize).saturating_add(hl - 4);
            if d.len() >= total {
                let (m, rest) = d.split_at(total);
                let next = on_msg(Msg {
                    tag,
                    body: m.get(hl..).unwrap_or_default(),
                    complete: true,
                    first: seen,
                });
                if let Some(mode) = next {
                    self.mode = mode;
                }
                d = rest;
            } else if !keeps_body(self.frontend, tag) {
                // Deliver now, drop the body as it streams in.
                let next = on_msg(Msg {
                    tag,
                    body: &[],
                    complete: false,
                    first: seen,
                });
                if let Some(mode) = next {
                    self.mode = mode;
                }
                self.skip = total.saturating_sub(d.len()) as u64;
                d = &[];
            } else if d.len() >= body_limit(self.frontend, tag).saturating_add(hl) {
                // Longer than what is read: deliver the bounded prefix, skip the rest by length.
                let limit = body_limit(self.frontend, tag).saturating_add(hl);
                let next = on_msg(Msg {
                    tag,
                    body: d.get(hl..limit).unwrap_or_default(),
                    complete: false,
                    first: seen,
                });
                if let Some(mode) = next {
                    self.mode = mode;
                }
                self.skip = total.saturating_sub(d.len()) as u64;
                d = &[];
            } else {
                let limit = total.min(body_limit(self.frontend, tag).saturating_add(hl));
                self.start_partial(d, total, limit, seen);
                d = &[];
            }
        }
        if bad {
            self.desync();
            return Err(Framed::Bad);
        }
        if lost > 0 {
            return self.lose(lost, on_msg);
        }
        Ok(())
    }

    fn start_partial(&mut self, d: &[u8], total: usize, limit: usize, seen: Seen) {
        self.first = seen;
        self.need = total;
        self.limit = limit;
        self.buf.clear();
        self.buf.extend_from_slice(d);
    }

    /// Appends to the message being buffered; delivers it when complete. Returns the rest.
    fn continue_partial<'d>(
        &mut self,
        d: &'d [u8],
        on_msg: &mut dyn FnMut(Msg<'_>) -> Option<Mode>,
    ) -> &'d [u8] {
        let hl = header_len(self.mode);
        if self.need == 0 {
            // Header incomplete: complete it first.
            let want = hl.saturating_sub(self.buf.len()).min(d.len());
            let (h, rest) = d.split_at(want);
            self.buf.extend_from_slice(h);
            let Some((tag, len)) = header(self.mode, &self.buf) else {
                return rest;
            };
            if let Framed::Bad = self.check(tag, len) {
                // Drop it; the caller sees garbage as a lost boundary at the next check.
                self.desync();
                return &[];
            }
            self.need = (len as usize).saturating_add(hl - 4);
            self.limit = self
                .need
                .min(body_limit(self.frontend, tag).saturating_add(hl));
            if !keeps_body(self.frontend, tag) {
                let first = self.first;
                let next = on_msg(Msg {
                    tag,
                    body: &[],
                    complete: false,
                    first,
                });
                if let Some(mode) = next {
                    self.mode = mode;
                }
                self.skip = self.need.saturating_sub(self.buf.len()) as u64;
                self.buf.clear();
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                self.skip = self.skip.saturating_sub(n as u64);
                return rest.get(n..).unwrap_or_default();
            }
            return rest;
        }
        let limit = self.limit.min(self.need);
        let want = limit.saturating_sub(self.buf.len()).min(d.len());
        let (part, rest) = d.split_at(want);
        self.buf.extend_from_slice(part);
        if self.buf.len() >= limit {
            let need = self.need;
            let complete = self.buf.len() == need;
            self.deliver(complete, on_msg);
            if !complete {
                let left = need.saturating_sub(limit) as u64;
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                self.skip = left.saturating_sub(n as u64);
                return rest.get(n..).unwrap_or_default();
            }
        }
        rest
    }

    fn deliver(&mut self, complete: bool, on_msg: &mut dyn FnMut(Msg<'_>) -> Option<Mode>) {
        let hl = header_len(self.mode);
        let buf = std::mem::take(&mut self.buf);
        if let Some((tag, _)) = header(self.mode, &buf) {
            let next = on_msg(Msg {
                tag,
                body: buf.get(hl..).unwrap_or_default(),
                complete,
                first: self.first,
            });
            if let Some(mode) = next {
                self.mode = mode;
            }
        }
        self.buf = buf;
        self.buf.clear();
        if self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
        self.need = 0;
        self.limit = 0;
    }

    /// `lost` bytes after this feed were not captured.
    fn lose(
        &mut self,
        lost: u64,
        on_msg: &mut dyn FnMut(Msg<'_>) -> Option<Mode>,
    ) -> Result<(), Framed> {
        if self.skip > 0 {
            if lost <= self.skip {
                self.skip = self.skip.saturating_sub(lost);
                return Ok(());
            }
            self.desync();
            return Err(Framed::Bad);
        }
        if !self.buf.is_empty() && self.need > 0 {
            let remaining = self.need.saturating_sub(self.buf.len()) as u64;
            self.deliver(false, on_msg);
            if lost <= remaining {
                self.skip = remaining.saturating_sub(lost);
                return Ok(());
            }
        }
        self.desync();
        Err(Framed::Bad)
    }
}
