//! Message heads: finding where a head ends, parsing it into owned types (plainly
//! well-formed heads by hand, kept headers only; every other head with `httparse`), salvaging
//! the readable part of a cut-off head, body framing from headers, and cheap sniffing.

use crate::{Header, Headers, RequestHead, ResponseHead};

/// Most header lines accepted in one head; more makes the head unusable.
pub(crate) const MAX_HEADERS: usize = 128;
/// Longest method token `looks_like_request` accepts.
const MAX_METHOD_LEN: usize = 24;

/// Result of parsing a buffer that holds (at least) a complete head.
#[derive(Debug)]
pub(crate) enum Parsed<T> {
    /// The head and its length in bytes.
    Complete(T, usize),
    /// More bytes are needed.
    Partial,
    /// The bytes are not an HTTP/1.x head.
    Invalid,
    /// The head is HTTP but over [`MAX_HEADERS`].
    TooManyHeaders,
}

fn config() -> httparse::ParserConfig {
    // Tracing must see what real servers accept, so be as lenient as httparse allows.
    let mut c = httparse::ParserConfig::default();
    c.allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .ignore_invalid_headers_in_requests(true)
        .ignore_invalid_headers_in_responses(true);
    c
}

/// The headers a parsed request head keeps: body framing, protocol switches, trace context,
/// and what the span attributes use. The others are never copied out of the captured bytes: copying
/// every header into two allocations was a large share of parsing at high request rates, and
/// cookies and credentials then never enter the daemon's memory at all.
pub const KEPT_HEADERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "traceparent",
    "tracestate",
    "host",
    "user-agent",
    "x-forwarded-for",
];

/// Whether a head keeps header `name` (see [`KEPT_HEADERS`]).
pub fn is_kept_header(name: &str) -> bool {
    kept_header(name).is_some()
}

/// The [`KEPT_HEADERS`] entry for header `name` (any case), if a head keeps it.
pub fn kept_header(name: &str) -> Option<&'static str> {
    entry_of(KEPT_HEADERS, name)
}

/// The entry of `list` that is `name` in any case.
fn entry_of(list: &[&'static str], name: &str) -> Option<&'static str> {
    entry_of_bytes(list, name.as_bytes())
}

/// [`entry_of`] for a name still in bytes. Length and first letter rule out nearly every
/// entry before a whole compare (a compare per entry was most of the cost of a request line).
fn entry_of_bytes(list: &[&'static str], name: &[u8]) -> Option<&'static str> {
    let first = name.first()?.to_ascii_lowercase();
    list.iter()
        .find(|k| {
            k.len() == name.len()
                && k.as_bytes().first() == Some(&first)
                && k.as_bytes().eq_ignore_ascii_case(name)
        })
        .copied()
}

/// The headers a parsed response keeps: a response's headers are read only for its body
/// framing, so each is matched against two names, not all of [`KEPT_HEADERS`] (callgrind:
/// 0.6% of a request's instructions with nginx's five-header response).
pub const RESPONSE_KEPT_HEADERS: &[&str] = &[CONTENT_LENGTH, TRANSFER_ENCODING];
const CONTENT_LENGTH: &str = "content-length";
const TRANSFER_ENCODING: &str = "transfer-encoding";

/// The [`RESPONSE_KEPT_HEADERS`] entry for header `name` (any case), if a response keeps it.
pub fn response_kept_header(name: &str) -> Option<&'static str> {
    entry_of(RESPONSE_KEPT_HEADERS, name)
}

fn owned_headers(
    headers: &[httparse::Header<'_>],
    kept: impl Fn(&str) -> Option<&'static str>,
) -> Headers {
    headers
        .iter()
        .filter_map(|h| {
            Some(Header {
                name: kept(h.name)?.into(),
                value: crate::HeaderValue::from_slice(h.value),
            })
        })
        .collect()
}

/// The standard methods, borrowed rather than copied from every request.
const STANDARD_METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
];

fn method_text(method: &str) -> std::borrow::Cow<'static, str> {
    match STANDARD_METHODS.iter().find(|m| **m == method) {
        Some(m) => (*m).into(),
        None => method.to_owned().into(),
    }
}

pub(crate) fn parse_request(buf: &[u8]) -> Parsed<RequestHead> {
    if let Some((head, len)) = plain_request(buf) {
        return Parsed::Complete(head, len);
    }
    match parse_request_strict(buf) {
        Parsed::Invalid => reparse_with_encoded_target(buf).unwrap_or(Parsed::Invalid),
        other => other,
    }
}

/// Some clients send raw non-UTF-8 bytes (e.g. Latin-1) in the target, which `httparse`
/// rejects; percent-encode them in a copy of the request line and parse again.
fn reparse_with_encoded_target(buf: &[u8]) -> Option<Parsed<RequestHead>> {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let (line, rest) = buf.split_at(line_end);
    // Only the target may be fixed up: a method with such bytes is not HTTP.
    let method_end = line.iter().position(|&b| b == b' ')?;
    if line.iter().take(method_end).any(|&b| b >= 0x80) {
        return None;
    }
    let high = line.iter().filter(|&&b| b >= 0x80).count();
    if high == 0 {
        return None;
    }
    let added = high.checked_mul(2)?;
    let mut copy = Vec::with_capacity(buf.len().checked_add(added)?);
    for &b in line {
        if b >= 0x80 {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            copy.push(b'%');
            copy.push(HEX[usize::from(b >> 4)]);
            copy.push(HEX[usize::from(b & 0x0f)]);
        } else {
            copy.push(b);
        }
    }
    copy.extend_from_slice(rest);
    Some(match parse_request_strict(&copy) {
        Parsed::Complete(head, len) => Parsed::Complete(head, len.checked_sub(added)?),
        other => other,
    })
}

/// A line of a head read by hand (`plain_request`, `plain_response`).
enum HeadLine<'a> {
    /// The empty line that ends the head.
    End,
    /// A header line without its line end, and whether it is clean (see [`clean_line_end`]).
    Header(&'a [u8], bool),
}

/// The line of `buf` at `*at`, moving `*at` past it and counting header lines in `*lines`.
/// `None` where httparse must decide: no line end in `buf`, a NUL or a bare CR (httparse
/// refuses the whole head), a line starting with a space or tab (folding, or a space before
/// a name), or more lines than [`MAX_HEADERS`].
#[inline(always)]
fn next_head_line<'a>(buf: &'a [u8], at: &mut usize, lines: &mut usize) -> Option<HeadLine<'a>> {
    let rest = buf.get(*at..)?;
    let (lf, clean) = clean_line_end(rest)?;
    let line = rest.get(..lf)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    *at += lf + 1;
    let Some(&first) = line.first() else {
        return Some(HeadLine::End);
    };
    *lines += 1;
    if *lines > MAX_HEADERS || first == b' ' || first == b'\t' {
        return None;
    }
    Some(HeadLine::Header(line, clean))
}

/// A kept header's value from what follows its colon, trimmed as httparse trims it; `None`
/// when its line is not clean (a control byte or DEL: httparse drops the header).
#[inline(always)]
fn kept_value(after_colon: &[u8], clean: bool) -> Option<crate::HeaderValue> {
    clean.then(|| crate::HeaderValue::from_slice(trim(after_colon)))
}

/// A request head read without httparse when it is plainly well formed: an upper-case
/// method, one space, an ASCII target, one space, `HTTP/1.0` or `HTTP/1.1`, and header
/// lines with no NUL and no bare CR (httparse refuses the whole head for those). Only the
/// lines whose name is one of [`KEPT_HEADERS`] are looked into; for requests httparse (as
/// configured here) drops an invalid line, and a name followed by anything but `:` is
/// invalid, so a line whose text before its first `:` is not a kept name is passed over
/// whole, as it is dropped there or its header discarded. Anything else, or a head that
/// does not end in `buf`, is `None`, for httparse (property-tested against it, like
/// [`plain_response`]).
fn plain_request(buf: &[u8]) -> Option<(RequestHead, usize)> {
    let (line_end, _) = clean_line_end(buf)?;
    let line = buf.get(..line_end)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let method_len = line.iter().position(|&b| b == b' ')?;
    let (target, version) = line.get(method_len + 1..)?.split_last_chunk::<9>()?;
    let minor_version = match version {
        b" HTTP/1.0" => 0,
        b" HTTP/1.1" => 1,
        _ => return None,
    };
    let method = line.get(..method_len)?;
    if method.is_empty()
        || method.len() > MAX_METHOD_LEN
        || !method.iter().all(u8::is_ascii_uppercase)
        || target.is_empty()
        || !target.iter().all(|&b| (0x21..=0x7e).contains(&b))
    {
        return None;
    }
    let method = std::str::from_utf8(method).ok()?;
    let target = std::str::from_utf8(target).ok()?;
    let mut headers = Headers::new();
    let mut at = line_end + 1;
    let mut lines = 0usize;
    while let HeadLine::Header(line, clean) = next_head_line(buf, &mut at, &mut lines)? {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = line.get(..colon)?;
        let Some(kept) = entry_of_bytes(KEPT_HEADERS, name) else {
            continue;
        };
        headers.push(Header {
            name: kept.into(),
            value: kept_value(line.get(colon + 1..)?, clean)?,
        });
    }
    Some((
        RequestHead {
            method: method_text(method),
            target: target.to_owned(),
            minor_version,
            headers,
        },
        at,
    ))
}

/// Room for httparse's borrowed headers. Left uninitialised: initialising 128 empty headers
/// (4 KiB) per parse was a tenth of the daemon's CPU at max rate.
fn header_slots<'b>() -> [std::mem::MaybeUninit<httparse::Header<'b>>; MAX_HEADERS] {
    [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS]
}

fn parse_request_strict(buf: &[u8]) -> Parsed<RequestHead> {
    let mut slots = header_slots();
    let mut req = httparse::Request::new(&mut []);
    match config().parse_request_with_uninit_headers(&mut req, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => match (req.method, req.path, req.version) {
            (Some(method), Some(target), Some(minor_version)) => Parsed::Complete(
                RequestHead {
                    method: method_text(method),
                    target: target.to_owned(),
                    minor_version,
                    headers: owned_headers(req.headers, kept_header),
                },
                len,
            ),
            _ => Parsed::Invalid,
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::TooManyHeaders,
        Err(_) => Parsed::Invalid,
    }
}

/// Reason phrases common enough to be borrowed rather than copied from every response.
const COMMON_REASONS: &[&str] = &[
    "OK",
    "Created",
    "Accepted",
    "No Content",
    "Moved Permanently",
    "Found",
    "Not Modified",
    "Bad Request",
    "Unauthorized",
    "Forbidden",
    "Not Found",
    "Internal Server Error",
    "Bad Gateway",
    "Service Unavailable",
    "Gateway Timeout",
    "",
];

fn reason_phrase(reason: &str) -> std::borrow::Cow<'static, str> {
    match COMMON_REASONS.iter().find(|r| **r == reason) {
        Some(r) => std::borrow::Cow::Borrowed(r),
        None => std::borrow::Cow::Owned(reason.to_owned()),
    }
}

pub(crate) fn parse_response(buf: &[u8]) -> Parsed<ResponseHead> {
    match plain_response(buf) {
        Some((head, len)) => Parsed::Complete(head, len),
        None => parse_response_httparse(buf),
    }
}

/// The index of the LF that ends the line at the start of `rest`, and whether the line is
/// clean (no control byte but HTAB, no DEL: every byte may stand in a header value), if
/// the line holds no NUL and no CR but one right before that LF (httparse refuses the whole
/// head for those). Eight bytes are looked at a time (SWAR): a word with no control byte
/// and no DEL is passed over whole.
fn clean_line_end(rest: &[u8]) -> Option<(usize, bool)> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut clean = true;
    let mut from = 0;
    while let Some(word) = rest.get(from..from + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        let x = u64::from_le_bytes(bytes);
        let del = x ^ (ONES * 0x7f);
        // The lowest set bit of each term marks the first byte below 0x20, or the first DEL
        // (a borrow can only mark bytes above it), so the lowest of both is exact.
        let marks = ((x.wrapping_sub(ONES * 0x20) & !x) | (del.wrapping_sub(ONES) & !del)) & HIGHS;
        if marks == 0 {
            from += 8;
            continue;
        }
        let at = from + (marks.trailing_zeros() / 8) as usize;
        match line_byte(rest, at, &mut clean) {
            Scan::Go => from = at + 1,
            Scan::End(end) => return end.map(|e| (e, clean)),
        }
    }
    for at in from..rest.len() {
        if let Scan::End(end) = line_byte(rest, at, &mut clean) {
            return end.map(|e| (e, clean));
        }
    }
    None
}

/// What byte `at` of a line means to [`clean_line_end`].
enum Scan {
    Go,
    End(Option<usize>),
}

fn line_byte(rest: &[u8], at: usize, clean: &mut bool) -> Scan {
    match rest.get(at) {
        Some(b'\n') => Scan::End(Some(at)),
        Some(b'\r') => Scan::End((rest.get(at + 1) == Some(&b'\n')).then_some(at + 1)),
        Some(0) | None => Scan::End(None),
        Some(b'\t') => Scan::Go,
        Some(&b) => {
            *clean &= b >= 0x20 && b != 0x7f;
            Scan::Go
        }
    }
}

/// Whether `line` starts with `name` (lowercase letters and `-`, 8 bytes or more) in any
/// case, compared eight bytes at a time (the last word overlaps the one before). OR-ing 0x20
/// folds case; it also folds CR onto `-`, which is why it is only used on a line that
/// [`clean_line_end`] passed (no CR inside).
fn starts_with_folded(line: &[u8], name: &[u8]) -> bool {
    fn word(bytes: &[u8], at: usize) -> Option<u64> {
        let mut w = [0u8; 8];
        w.copy_from_slice(bytes.get(at..at + 8)?);
        Some(u64::from_le_bytes(w))
    }
    const FOLD: u64 = 0x2020_2020_2020_2020;
    if line.len() < name.len() || name.len() < 8 {
        return false;
    }
    let last = name.len() - 8;
    (0..last).step_by(8).chain(std::iter::once(last)).all(|at| {
        match (word(line, at), word(name, at)) {
            (Some(l), Some(n)) => l | FOLD == n,
            _ => false,
        }
    })
}

/// A response head read without httparse when it is plainly well formed: `HTTP/1.0` or
/// `HTTP/1.1`, one space, three digits, an ASCII reason, and header lines with no NUL, no
/// bare CR and no folding. A response's headers are read only for its body framing, so
/// only `Content-Length` and `Transfer-Encoding` lines are looked into; the other lines are
/// skipped whole (eight bytes at a time to the next LF) instead of validated byte by byte: httparse with
/// this crate's configuration ignores an invalid line it would have dropped anyway, so the
/// result is the same. Anything else, or a head that does not end in `buf`, is `None`, and
/// httparse decides (`parse_response_httparse`). The two agree wherever this one answers
/// (property-tested against each other). On nginx's five-header response this takes about
/// 1,000 instructions where httparse and the copy-out took 1,950 (callgrind, pipeline bench).
fn plain_response(buf: &[u8]) -> Option<(ResponseHead, usize)> {
    let minor_version = match buf.get(..9)? {
        b"HTTP/1.0 " => 0,
        b"HTTP/1.1 " => 1,
        _ => return None,
    };
    let code = buf.get(9..12)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let status_end = 12 + clean_line_end(buf.get(12..)?)?.0;
    let after_code = buf.get(12..status_end)?;
    let after_code = after_code.strip_suffix(b"\r").unwrap_or(after_code);
    let reason: &[u8] = match after_code.split_first() {
        None => b"",
        Some((b' ', rest)) => {
            let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
            rest.get(start..)?
        }
        Some(_) => return None,
    };
    // Also refuses a bare CR, and obs-text (httparse then reports an empty reason).
    if !reason
        .iter()
        .all(|&b| b == b'\t' || (0x20..=0x7e).contains(&b))
    {
        return None;
    }
    let reason = std::str::from_utf8(reason).ok()?;
    let mut headers = Headers::new();
    let mut at = status_end + 1;
    let mut lines = 0usize;
    while let HeadLine::Header(line, clean) = next_head_line(buf, &mut at, &mut lines)? {
        // Only `c…` and `t…` lines can be kept: the others cost one compare.
        let name = match line.first().map(|b| b | 0x20) {
            Some(b'c') => CONTENT_LENGTH,
            Some(b't') => TRANSFER_ENCODING,
            _ => continue,
        };
        if !starts_with_folded(line, name.as_bytes()) {
            continue;
        }
        let after_name = line.get(name.len()..).unwrap_or_default();
        let value = match after_name.split_first() {
            Some((b':', value)) => value,
            // `Content-Length : 5` is this header to httparse (spaces after a name).
            Some((b' ' | b'\t', _)) => return None,
            // A longer name (`Content-Lengths`): another header, skipped.
            _ => continue,
        };
        headers.push(Header {
            name: name.into(),
            value: kept_value(value, clean)?,
        });
    }
    Some((
        ResponseHead {
            status,
            reason: reason_phrase(reason),
            minor_version,
            headers,
        },
        at,
    ))
}

/// A response head as httparse reads it (every head [`plain_response`] does not answer).
fn parse_response_httparse(buf: &[u8]) -> Parsed<ResponseHead> {
    let mut slots = header_slots();
    let mut resp = httparse::Response::new(&mut []);
    match config().parse_response_with_uninit_headers(&mut resp, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => match (resp.code, resp.version) {
            (Some(status), Some(minor_version)) => Parsed::Complete(
                ResponseHead {
                    status,
                    reason: reason_phrase(resp.reason.unwrap_or_default()),
                    minor_version,
                    headers: owned_headers(resp.headers, response_kept_header),
                },
                len,
            ),
            _ => Parsed::Invalid,
        },
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::TooManyHeaders,
        Err(_) => Parsed::Invalid,
    }
}

/// The complete header lines of a head that was cut off, closed with an empty line, so that
/// the start line and the headers that did arrive can still be parsed.
fn complete_lines(buf: &[u8]) -> Option<Vec<u8>> {
    let last_lf = buf.iter().rposition(|&b| b == b'\n')?;
    let mut owned = Vec::with_capacity(last_lf.saturating_add(3));
    owned.extend_from_slice(buf.get(..=last_lf)?);
    owned.extend_from_slice(b"\r\n");
    Some(owned)
}

/// Start line and complete header lines of a request head whose end was lost.
pub(crate) fn salvage_request(buf: &[u8]) -> Option<RequestHead> {
    match parse_request(&complete_lines(buf)?) {
        Parsed::Complete(head, _) => Some(head),
        _ => None,
    }
}

/// Status line and complete header lines of a response head whose end was lost.
pub(crate) fn salvage_response(buf: &[u8]) -> Option<ResponseHead> {
    match parse_response(&complete_lines(buf)?) {
        Parsed::Complete(head, _) => Some(head),
        _ => None,
    }
}

/// Where the empty line that ends a head finishes in `data`, given the last bytes already
/// buffered (`tail`, which itself holds no complete empty line). Returns the index just past it.
pub(crate) fn find_head_end(tail: &[u8], data: &[u8]) -> Option<usize> {
    // An end marker (`\n\n` or `\n\r\n`) may straddle the tail and data.
    let keep = tail.len().min(2);
    let tail = tail
        .get(tail.len().saturating_sub(keep)..)
        .unwrap_or_default();
    if !tail.is_empty() {
        let mut window = [0u8; 4];
        let from_data = data.len().min(2);
        let mut n = 0usize;
        for (slot, &b) in window
            .iter_mut()
            .zip(tail.iter().chain(data.iter().take(from_data)))
        {
            *slot = b;
            n = n.saturating_add(1);
        }
        let window = window.get(..n).unwrap_or_default();
        for start in 0..keep {
            if let Some(end) = marker_end(window, start)
                && end > keep
            {
                return Some(end.saturating_sub(keep));
            }
        }
    }
    // Line by line: memchr finds each newline with SIMD (a byte loop here was a fifth of
    // head parsing).
    memchr::memchr_iter(b'\n', data).find_map(|at| marker_end(data, at))
}

/// If an end-of-head marker starts at `at`, the index just past it.
fn marker_end(bytes: &[u8], at: usize) -> Option<usize> {
    if bytes.get(at) != Some(&b'\n') {
        return None;
    }
    match (
        bytes.get(at.saturating_add(1)),
        bytes.get(at.saturating_add(2)),
    ) {
        (Some(b'\n'), _) => Some(at.saturating_add(2)),
        (Some(b'\r'), Some(b'\n')) => Some(at.saturating_add(3)),
        _ => None,
    }
}

/// How a message body is delimited, from its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// `Transfer-Encoding` whose final coding is not chunked (delimited by close for responses).
    OtherEncoding,
    /// No length information (delimited by close for responses).
    Unspecified,
    /// `Content-Length` that is not a number or disagrees with itself.
    BadLength,
}

pub(crate) fn framing(headers: &[Header]) -> Framing {
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last header's last coding is what counts.
            transfer_encoding = Some(&h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for part in h.value.split(|&b| b == b',') {
                let Some(v) = parse_decimal(trim(part)) else {
                    return Framing::BadLength;
                };
                match length {
                    Some(prev) if prev != v => return Framing::BadLength,
                    _ => length = Some(v),
                }
            }
        }
    }
    if let Some(te) = transfer_encoding {
        let last = te
            .rsplit(|&b| b == b',')
            .next()
            .map(trim)
            .unwrap_or_default();
        return if last.eq_ignore_ascii_case(b"chunked") {
            Framing::Chunked
        } else {
            Framing::OtherEncoding
        };
    }
    match length {
        Some(0) => Framing::None,
        Some(n) => Framing::Length(n),
        None => Framing::Unspecified,
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p.saturating_add(1));
    bytes.get(start..end).unwrap_or_default()
}

fn parse_decimal(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() {
        return None;
    }
    bytes.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

const KNOWN_METHODS: [&[u8]; 9] = [
    b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];

/// Whether `data` starts like an HTTP/1.x request line: method token, space, target, space,
/// `HTTP/1.`. When `data` ends early, a well-known method followed by a plausible prefix counts.
pub fn looks_like_request(data: &[u8]) -> bool {
    let method_len = data.iter().take_while(|&&b| is_tchar(b)).count();
    if method_len == 0 || method_len > MAX_METHOD_LEN {
        return false;
    }
    let known = data
        .get(..method_len)
        .is_some_and(|m| KNOWN_METHODS.contains(&m));
    let Some(rest) = data.get(method_len..) else {
        return false;
    };
    match rest.first() {
        None => return known,
        Some(b' ') => {}
        Some(_) => return false,
    }
    let rest = rest.get(1..).unwrap_or_default();
    let target_len = rest.iter().take_while(|&&b| b > b' ' && b != 0x7f).count();
    let Some(after) = rest.get(target_len..) else {
        return false;
    };
    match after.first() {
        None => return known,
        Some(b' ') if target_len > 0 => {}
        Some(_) => return false,
    }
    let version = after.get(1..).unwrap_or_default();
    const PREFIX: &[u8] = b"HTTP/1.";
    if version.len() >= PREFIX.len() {
        version.starts_with(PREFIX)
    } else {
        known && PREFIX.starts_with(version)
    }
}

/// Whether `data` starts like an HTTP/1.x status line: `HTTP/1.x NNN`. A shorter `data` counts
/// when it is a prefix of that shape at least `HTTP/1.` long.
pub fn looks_like_response(data: &[u8]) -> bool {
    const PREFIX: &[u8] = b"HTTP/1.";
    if data.len() < PREFIX.len() || !data.starts_with(PREFIX) {
        return false;
    }
    let shape = |i: usize, b: u8| match i {
        7 | 9..=11 => b.is_ascii_digit(),
        8 => b == b' ',
        _ => true,
    };
    data.iter()
        .take(12)
        .enumerate()
        .skip(PREFIX.len())
        .all(|(i, &b)| shape(i, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_header_values_are_kept_inline_and_long_ones_whole() {
        let raw = b"GET /a HTTP/1.1\r\nHost: 127.0.0.1:18080\r\nUser-Agent: Mozilla/5.0 \
                    (X11; Linux x86_64) Firefox/120.0\r\n\r\n";
        let Parsed::Complete(head, _) = parse_request(raw) else {
            panic!("not parsed");
        };
        assert!(matches!(head.method, std::borrow::Cow::Borrowed("GET")));
        assert!(!head.headers[0].value.spilled());
        assert!(head.headers[1].value.spilled());
        assert_eq!(
            std::mem::size_of::<crate::HeaderValue>(),
            std::mem::size_of::<Vec<u8>>()
        );
        assert_eq!(head.header("host"), Some(&b"127.0.0.1:18080"[..]));
        assert_eq!(
            head.header("user-agent"),
            Some(&b"Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"[..])
        );
        let Parsed::Complete(other, _) = parse_request(b"PURGE /x HTTP/1.1\r\n\r\n") else {
            panic!("not parsed");
        };
        assert_eq!(other.method, "PURGE");
        // Repeated and many kept headers are all kept, in order.
        let many = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\
                     Connection: keep-alive\r\nUpgrade: h2c\r\nTraceparent: x\r\n\r\n";
        let Parsed::Complete(req, _) = parse_request(many) else {
            panic!("not parsed");
        };
        let names: Vec<&str> = req.headers.iter().map(|h| h.name.as_ref()).collect();
        assert_eq!(
            names,
            [
                "content-length",
                "content-length",
                "connection",
                "upgrade",
                "traceparent"
            ]
        );
        assert_eq!(framing(&req.headers), Framing::Length(1));
        // A response keeps its framing headers only, repeated ones too.
        let resp_head = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\
                          Content-length: 1\r\nTransfer-Encoding: chunked\r\n\
                          Traceparent: x\r\n\r\n";
        let Parsed::Complete(resp, _) = parse_response(resp_head) else {
            panic!("not parsed");
        };
        let names: Vec<&str> = resp.headers.iter().map(|h| h.name.as_ref()).collect();
        assert_eq!(
            names,
            ["content-length", "content-length", "transfer-encoding"]
        );
        assert_eq!(framing(&resp.headers), Framing::Chunked);
        assert!(
            RESPONSE_KEPT_HEADERS
                .iter()
                .all(|h| KEPT_HEADERS.contains(h) && response_kept_header(h) == Some(*h))
        );
    }

    #[test]
    fn heads_keep_only_the_headers_sonde_reads() {
        let raw = b"POST /login HTTP/1.1\r\nHost: api\r\nCookie: session=s3cret\r\n\
                    Authorization: Bearer t0ken\r\nUser-Agent: curl\r\nContent-Length: 2\r\n\
                    X-Other: 1\r\n\r\n";
        let Parsed::Complete(head, len) = parse_request(raw) else {
            panic!("not parsed");
        };
        assert_eq!(len, raw.len());
        let names: Vec<&str> = head.headers.iter().map(|h| h.name.as_ref()).collect();
        assert_eq!(names, ["host", "user-agent", "content-length"]);
        let Parsed::Complete(resp, _) =
            parse_response(b"HTTP/1.1 200 OK\r\nSet-Cookie: a=b\r\nContent-Length: 0\r\n\r\n")
        else {
            panic!("not parsed");
        };
        assert_eq!(resp.headers.len(), 1);
        assert_eq!(resp.header("content-length"), Some(&b"0"[..]));
    }

    #[test]
    fn head_end_inside_data() {
        assert_eq!(find_head_end(b"", b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_head_end(b"", b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(find_head_end(b"", b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn head_end_straddles_feeds() {
        assert_eq!(find_head_end(b"A: b\r\n", b"\r\nrest"), Some(2));
        assert_eq!(find_head_end(b"A: b\r\n\r", b"\nrest"), Some(1));
        assert_eq!(find_head_end(b"A: b\r", b"\n\r\nrest"), Some(3));
        assert_eq!(find_head_end(b"A: b\n", b"\nrest"), Some(1));
        assert_eq!(find_head_end(b"A: b\r\n", b"B: c\r\n"), None);
        assert_eq!(find_head_end(b"\n", b""), None);
    }

    #[test]
    fn framing_rules() {
        let h = |n: &str, v: &str| Header {
            name: n.to_owned().into(),
            value: v.as_bytes().into(),
        };
        assert_eq!(framing(&[h("Content-Length", "12")]), Framing::Length(12));
        assert_eq!(framing(&[h("content-length", "7, 7")]), Framing::Length(7));
        assert_eq!(framing(&[h("content-length", "7, 8")]), Framing::BadLength);
        assert_eq!(framing(&[h("content-length", "-1")]), Framing::BadLength);
        assert_eq!(framing(&[h("content-length", "0")]), Framing::None);
        assert_eq!(
            framing(&[
                h("Content-Length", "3"),
                h("Transfer-Encoding", "gzip, Chunked")
            ]),
            Framing::Chunked
        );
        assert_eq!(
            framing(&[h("Transfer-Encoding", "gzip")]),
            Framing::OtherEncoding
        );
        assert_eq!(framing(&[]), Framing::Unspecified);
    }

    #[test]
    fn sniff_requests() {
        assert!(looks_like_request(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_request(b"PURGE /x HTTP/1.0\r\n"));
        assert!(looks_like_request(b"GET /very/long/pa"));
        assert!(looks_like_request(b"POST / HTT"));
        assert!(!looks_like_request(b"PURGE /x HTT"));
        assert!(!looks_like_request(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        assert!(!looks_like_request(b"\x16\x03\x01\x02\x00\x01"));
        assert!(!looks_like_request(b"HTTP/1.1 200 OK\r\n"));
        assert!(!looks_like_request(b""));
        assert!(!looks_like_request(b"GET  HTTP/1.1"));
    }

    #[test]
    fn sniff_responses() {
        assert!(looks_like_response(b"HTTP/1.1 200 OK\r\n"));
        assert!(looks_like_response(b"HTTP/1.0 404"));
        assert!(looks_like_response(b"HTTP/1.1 2"));
        assert!(!looks_like_response(b"HTTP/1.1 2x0 OK"));
        assert!(!looks_like_response(b"HTTP/2 200"));
        assert!(!looks_like_response(b"GET / HTTP/1.1"));
    }

    #[test]
    fn non_utf8_target_is_percent_encoded() {
        let buf = b"GET /caf\xe9?q=\xff HTTP/1.1\r\nHost: a\r\n\r\nrest";
        let Parsed::Complete(head, len) = parse_request(buf) else {
            panic!("not parsed");
        };
        assert_eq!(head.target, "/caf%E9?q=%FF");
        assert_eq!(&buf[len..], b"rest");
        assert!(matches!(parse_request(b"GET /caf\xe9"), Parsed::Partial));
        let Parsed::Complete(head, _) = parse_request("GET /café HTTP/1.1\r\n\r\n".as_bytes())
        else {
            panic!("not parsed");
        };
        assert_eq!(head.target, "/café");
        assert!(matches!(
            parse_request(b"\xff\xfe / HTTP/1.1\r\n"),
            Parsed::Invalid
        ));
    }

    #[test]
    fn salvage_cut_head() {
        let head = salvage_request(b"GET /a?b=c HTTP/1.1\r\nHost: x\r\nCookie: abcdef").unwrap();
        assert_eq!(head.method, "GET");
        assert_eq!(head.target, "/a?b=c");
        assert_eq!(head.headers.len(), 1);
        assert!(salvage_request(b"GET /a?b=c HTT").is_none());
        let resp = salvage_response(b"HTTP/1.1 200 OK\r\nServer: y\r\nX-Lo").unwrap();
        assert_eq!(resp.status, 200);
    }

    /// Kept headers as plain pairs, for comparing heads.
    fn pairs(headers: &Headers) -> Vec<(String, Vec<u8>)> {
        headers
            .iter()
            .map(|x| (x.name.to_string(), x.value.to_vec()))
            .collect()
    }

    /// A generated head: its start line, header lines, how the head ends, then body bytes.
    fn assemble(start: String, lines: &[Vec<u8>], end: &[u8], body: &[u8]) -> Vec<u8> {
        let mut head = start.into_bytes();
        head.extend_from_slice(b"\r\n");
        for l in lines {
            head.extend_from_slice(l);
        }
        head.extend_from_slice(end);
        head.extend_from_slice(body);
        head
    }

    /// One generated header line: an optional leading space, name, separator, value, end.
    fn header_line(lead: bool, name: &str, sep: &str, value: &[u8], eol: &[u8]) -> Vec<u8> {
        let mut line = Vec::new();
        if lead {
            line.push(b' ');
        }
        line.extend_from_slice(name.as_bytes());
        line.extend_from_slice(sep.as_bytes());
        line.extend_from_slice(value);
        line.extend_from_slice(eol);
        line
    }

    /// What `parse_response` answers, as (status, reason, minor, kept headers, length).
    type Answer = Option<(u16, String, u8, Vec<(String, Vec<u8>)>, usize)>;

    fn answer(parsed: Parsed<ResponseHead>) -> Answer {
        let Parsed::Complete(h, len) = parsed else {
            return None;
        };
        let headers = pairs(&h.headers);
        Some((
            h.status,
            h.reason.into_owned(),
            h.minor_version,
            headers,
            len,
        ))
    }

    #[test]
    fn common_responses_take_the_plain_path() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 15:00:00 GMT\r\n\
               Content-Type: text/plain\r\nContent-Length: 6\r\nConnection: keep-alive\r\n\r\nhello\n"[..],
            b"HTTP/1.0 404 Not Found\nTransfer-Encoding: gzip, chunked\n\n",
            b"HTTP/1.1 204\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length:\t12 \t\r\nX: \x80\x01\r\n\r\n",
        ] {
            let plain = plain_response(head).map(|(h, len)| answer(Parsed::Complete(h, len)));
            assert!(plain.is_some(), "{:?}", String::from_utf8_lossy(head));
            assert_eq!(plain.unwrap(), answer(parse_response_httparse(head)));
        }
        let (head, len) =
            plain_response(b"HTTP/1.1 200 OK\r\ncontent-length:\t12 \t\r\n\r\nx").unwrap();
        assert_eq!(
            (
                head.headers[0].name.as_ref(),
                &head.headers[0].value[..],
                len
            ),
            ("content-length", &b"12"[..], 41)
        );
    }

    #[test]
    fn unusual_responses_are_left_to_httparse() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"[..], // not ended
            b"HTTP/1.1  200 OK\r\n\r\n",                      // two spaces
            b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n", // space before the colon
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n 6\r\n\r\n", // folded
            b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",            // bare CR
            b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",            // NUL
            b"HTTP/1.1 200 \xe9t\xe9\r\n\r\n",                // obs-text reason
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\x7f\r\n\r\n", // DEL in a kept value
            b"\r\nHTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
        ] {
            assert!(
                plain_response(head).is_none(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    fn response_line() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let name = prop_oneof![
            Just("Content-Length".to_owned()),
            Just("content-LENGTH".to_owned()),
            Just("Transfer-Encoding".to_owned()),
            Just("transfer-encodings".to_owned()),
            Just("Content-Lengt".to_owned()),
            Just("Server".to_owned()),
            "[ -~\t]{0,6}",
        ];
        let sep = prop_oneof![
            Just(":"),
            Just(": "),
            Just(" :"),
            Just(":\t "),
            Just("\t:"),
            Just("")
        ];
        let value = prop_oneof![
            6 => "[0-9]{1,4}( ,[0-9]{1,2})?[ \t]?".prop_map(String::into_bytes),
            3 => Just(b"chunked".to_vec()),
            2 => Just(b"gzip, chunked".to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..6),
            1 => proptest::collection::vec(
                prop_oneof![
                    Just(b' '),
                    Just(b'\t'),
                    Just(b'5'),
                    Just(0x7f),
                    Just(0x80),
                    Just(b'\r'),
                    Just(0)
                ],
                0..5
            ),
        ];
        let eol =
            prop_oneof![6 => Just(&b"\r\n"[..]), 2 => Just(&b"\n"[..]), 1 => Just(&b"\r\r\n"[..])];
        (proptest::bool::weighted(0.1), name, sep, value, eol)
            .prop_map(|(fold, name, sep, value, eol)| header_line(fold, &name, sep, &value, eol))
    }

    /// What `parse_request` answers, as (method, target, minor, kept headers, length).
    type RequestAnswer = Option<(String, String, u8, Vec<(String, Vec<u8>)>, usize)>;

    fn request_answer(parsed: Parsed<RequestHead>) -> RequestAnswer {
        let Parsed::Complete(h, len) = parsed else {
            return None;
        };
        let headers = pairs(&h.headers);
        Some((
            h.method.into_owned(),
            h.target,
            h.minor_version,
            headers,
            len,
        ))
    }

    #[test]
    fn common_requests_take_the_plain_path() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n"[..],
            b"POST /analysis/123/ HTTP/1.1\r\nHost: api.internal:8000\r\nContent-Length: 0\r\n\
              traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n{}",
            b"GET /search?q=a%20b HTTP/1.0\nUser-Agent:  curl/8 \t\nCookie: a=b\nX:\x01\n\n",
            b"PATCH /x HTTP/1.1\r\nhost : skipped\r\n: odd\r\nHOST:\r\n\r\n",
        ] {
            let plain =
                plain_request(head).map(|(h, len)| request_answer(Parsed::Complete(h, len)));
            assert!(plain.is_some(), "{:?}", String::from_utf8_lossy(head));
            assert_eq!(plain.unwrap(), request_answer(parse_request_strict(head)));
        }
    }

    #[test]
    fn unusual_requests_are_left_to_httparse() {
        for head in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n"[..],     // not ended
            b"GET  / HTTP/1.1\r\n\r\n",                // two spaces
            b"get / HTTP/1.1\r\n\r\n",                 // lower-case method
            b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",      // non-ASCII target
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",      // bare CR
            b"GET / HTTP/1.1\r\nX: a\0b\r\n\r\n",      // NUL
            b"GET / HTTP/1.1\r\n Host: x\r\n\r\n",     // leading space
            b"GET / HTTP/1.1\r\nHost: a\x7fb\r\n\r\n", // DEL in a kept value
            b"GET / HTTP/2.0\r\n\r\n",
        ] {
            assert!(
                plain_request(head).is_none(),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    fn request_line_strategy() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let name = prop_oneof![
            Just("Host".to_owned()),
            Just("content-LENGTH".to_owned()),
            Just("Traceparent".to_owned()),
            Just("User-Agent".to_owned()),
            Just("X-Forwarded-For".to_owned()),
            Just("Cookie".to_owned()),
            Just("Hostx".to_owned()),
            "[ -~\t]{0,6}",
        ];
        let sep = prop_oneof![6 => Just(":"), 6 => Just(": "), 1 => Just(" :"), 2 => Just(":\t "), 1 => Just("")];
        let value = prop_oneof![
            8 => "[ -~]{0,12}".prop_map(String::into_bytes),
            1 => proptest::collection::vec(any::<u8>(), 0..6),
            1 => proptest::collection::vec(prop_oneof![Just(b' '), Just(b'\t'), Just(b':'), Just(0x7f), Just(0x80), Just(b'\r'), Just(0)], 0..5),
        ];
        let eol =
            prop_oneof![6 => Just(&b"\r\n"[..]), 2 => Just(&b"\n"[..]), 1 => Just(&b"\r\r\n"[..])];
        (proptest::bool::weighted(0.1), name, sep, value, eol)
            .prop_map(|(lead, name, sep, value, eol)| header_line(lead, &name, sep, &value, eol))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4000, ..Default::default() })]

        /// Wherever the plain request reader answers, httparse gives the same head and length.
        #[test]
        fn the_plain_request_reader_agrees_with_httparse(
            start in proptest::prop_oneof![
                proptest::strategy::Just("GET / HTTP/1.1".to_owned()),
                "[A-Z]{1,7} /[!-~]{0,12} HTTP/1\\.[01]",
                "[A-Za-z!#]{0,4} {1,2}[ -~\u{80}]{0,6} {1,2}HTTP/[12]\\.[01a]\r?",
            ],
            lines in proptest::collection::vec(request_line_strategy(), 0..6),
            end in proptest::prop_oneof![
                proptest::strategy::Just(&b"\r\n"[..]),
                proptest::strategy::Just(&b"\n"[..]),
                proptest::strategy::Just(&b""[..]),
            ],
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
        ) {
            let head = assemble(start, &lines, end, &body);
            if let Some((h, len)) = plain_request(&head) {
                proptest::prop_assert_eq!(request_answer(Parsed::Complete(h, len)), request_answer(parse_request_strict(&head)));
            }
        }

        /// The eight-at-a-time line scan finds what a byte loop finds.
        #[test]
        fn the_line_scan_is_a_byte_loop(
            bytes in proptest::collection::vec(proptest::prop_oneof![
                proptest::prelude::any::<u8>(),
                proptest::strategy::Just(b'a'),
                proptest::strategy::Just(b'\n'),
                proptest::strategy::Just(b'\r'),
                proptest::strategy::Just(b'\t'),
                proptest::strategy::Just(0x7f),
                proptest::strategy::Just(0x1f),
            ], 0..40),
        ) {
            let naive = bytes.iter().position(|&b| matches!(b, b'\n' | b'\r' | 0)).and_then(|i| {
                let clean = bytes[..i].iter().all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f));
                match bytes[i] {
                    b'\n' => Some((i, clean)),
                    b'\r' => (bytes.get(i + 1) == Some(&b'\n')).then_some((i + 1, clean)),
                    _ => None,
                }
            });
            proptest::prop_assert_eq!(clean_line_end(&bytes), naive);
        }

        /// The folded compare is `eq_ignore_ascii_case` on lines with no CR.
        #[test]
        fn the_folded_compare_ignores_case(
            line in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Strategy::prop_filter(proptest::prelude::any::<u8>(), "no CR", |b| *b != b'\r'),
                proptest::sample::select(b"contentCONTENT-lengthLENGTHtransferTRANSFERencoding".to_vec()),
            ], 0..24),
        ) {
            for name in RESPONSE_KEPT_HEADERS {
                let naive = line.get(..name.len()).is_some_and(|h| h.eq_ignore_ascii_case(name.as_bytes()));
                proptest::prop_assert_eq!(starts_with_folded(&line, name.as_bytes()), naive);
            }
        }

        /// Wherever the plain reader answers, httparse gives the same head and length.
        #[test]
        fn the_plain_reader_agrees_with_httparse(
            start in proptest::prop_oneof![
                proptest::strategy::Just("HTTP/1.1 200 OK".to_owned()),
                proptest::strategy::Just("HTTP/1.0 503".to_owned()),
                "HTTP/1\\.[01] [0-9]{3}[ -~\t]{0,8}",
                "HTTP/1\\.[0-9a] {1,2}[0-9a]{2,4}[ -~\t\u{80}\r]{0,4}",
            ],
            lines in proptest::collection::vec(response_line(), 0..6),
            end in proptest::prop_oneof![
                proptest::strategy::Just(&b"\r\n"[..]),
                proptest::strategy::Just(&b"\n"[..]),
                proptest::strategy::Just(&b""[..]),
            ],
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
        ) {
            let head = assemble(start, &lines, end, &body);
            if let Some((h, len)) = plain_response(&head) {
                proptest::prop_assert_eq!(answer(Parsed::Complete(h, len)), answer(parse_response_httparse(&head)));
            }
        }
    }
}
