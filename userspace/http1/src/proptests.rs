//! Property tests: any split and interleaving of generated traffic yields the exchanges the
//! generator expects, and arbitrary bytes never panic.

use proptest::prelude::*;

use crate::{
    Connection, Direction, Event, Exchange, Header, Headers, RequestHead, ResponseHead, Seen,
    looks_like_request, looks_like_response,
};

#[derive(Clone, Debug)]
enum BodySpec {
    None,
    Length(Vec<u8>),
    /// Chunks (non-empty), whether to add extensions, trailer lines.
    Chunked(Vec<Vec<u8>>, bool, Vec<(String, String)>),
    /// Only for the last response: no length, ends at close.
    UntilClose(Vec<u8>),
}

impl BodySpec {
    fn payload_len(&self) -> u64 {
        match self {
            BodySpec::None => 0,
            BodySpec::Length(b) | BodySpec::UntilClose(b) => b.len() as u64,
            BodySpec::Chunked(chunks, ..) => chunks.iter().map(|c| c.len() as u64).sum(),
        }
    }

    fn framing_headers(&self) -> Vec<Header> {
        let h = |n: &str, v: String| Header {
            name: n.to_owned().into(),
            value: v.as_bytes().into(),
        };
        match self {
            BodySpec::None | BodySpec::UntilClose(_) => vec![],
            BodySpec::Length(b) => vec![h("Content-Length", b.len().to_string())],
            BodySpec::Chunked(..) => vec![h("Transfer-Encoding", "chunked".into())],
        }
    }

    /// Appends the body to `out` and the ranges of `out` holding payload to `data`.
    fn write_body(&self, out: &mut Vec<u8>, data: &mut Vec<(usize, usize)>) {
        match self {
            BodySpec::None => {}
            BodySpec::Length(b) | BodySpec::UntilClose(b) => {
                data.push((out.len(), out.len() + b.len()));
                out.extend_from_slice(b);
            }
            BodySpec::Chunked(chunks, ext, trailers) => {
                for c in chunks {
                    out.extend_from_slice(format!("{:x}", c.len()).as_bytes());
                    if *ext {
                        out.extend_from_slice(b";name=\"v\"");
                    }
                    out.extend_from_slice(b"\r\n");
                    data.push((out.len(), out.len() + c.len()));
                    out.extend_from_slice(c);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(b"0\r\n");
                for (n, v) in trailers {
                    out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                }
                out.extend_from_slice(b"\r\n");
            }
        }
    }
}

#[derive(Clone, Debug)]
struct ExchangeSpec {
    method: String,
    target: String,
    minor: u8,
    req_headers: Vec<(String, String)>,
    req_body: BodySpec,
    interim: Vec<u16>,
    status: u16,
    resp_headers: Vec<(String, String)>,
    resp_body: BodySpec,
    /// For bodiless responses: a Content-Length header that must be ignored.
    bogus_length: Option<u64>,
}

fn write_head(start: &str, headers: &[Header], out: &mut Vec<u8>) {
    out.extend_from_slice(start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in headers {
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(&h.value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The headers a parsed head keeps, under the names it keeps them by.
fn keep_as_parsed(headers: &mut Headers, kept: fn(&str) -> Option<&'static str>) {
    headers.retain_mut(|h| match kept(&h.name) {
        Some(kept) => {
            h.name = kept.into();
            true
        }
        None => false,
    });
}

fn to_headers(pairs: &[(String, String)]) -> Vec<Header> {
    pairs
        .iter()
        .map(|(n, v)| Header {
            name: n.clone().into(),
            value: v.as_bytes().into(),
        })
        .collect()
}

impl ExchangeSpec {
    fn request_head(&self) -> RequestHead {
        let mut headers = to_headers(&self.req_headers);
        headers.extend(self.req_body.framing_headers());
        RequestHead {
            method: self.method.clone().into(),
            target: self.target.clone(),
            minor_version: self.minor,
            headers,
        }
    }

    fn response_head(&self) -> ResponseHead {
        let mut headers = to_headers(&self.resp_headers);
        match self.bogus_length {
            Some(n) => headers.push(Header {
                name: "Content-Length".into(),
                value: n.to_string().as_bytes().into(),
            }),
            None => headers.extend(self.resp_body.framing_headers()),
        }
        ResponseHead {
            status: self.status,
            reason: "Reason Phrase".into(),
            minor_version: self.minor,
            headers,
        }
    }

    fn request_bytes(&self, data: &mut Vec<(usize, usize)>) -> Vec<u8> {
        let head = self.request_head();
        let mut out = Vec::new();
        let line = format!(
            "{} {} HTTP/1.{}",
            head.method, head.target, head.minor_version
        );
        write_head(&line, &head.headers, &mut out);
        self.req_body.write_body(&mut out, data);
        out
    }

    fn response_bytes(&self, data: &mut Vec<(usize, usize)>) -> Vec<u8> {
        let mut out = Vec::new();
        for s in &self.interim {
            write_head(&format!("HTTP/1.1 {s} Interim"), &[], &mut out);
        }
        let head = self.response_head();
        let line = format!(
            "HTTP/1.{} {} {}",
            head.minor_version, head.status, head.reason
        );
        write_head(&line, &head.headers, &mut out);
        self.resp_body.write_body(&mut out, data);
        out
    }

    fn expected(&self, seq: u64) -> Exchange {
        // The parser keeps only the headers sonde reads.
        let mut request = self.request_head();
        keep_as_parsed(&mut request.headers, crate::kept_header);
        let mut response = self.response_head();
        keep_as_parsed(&mut response.headers, crate::head::response_kept_header);
        Exchange {
            seq,
            request,
            request_body_bytes: self.req_body.payload_len(),
            request_first: Seen::default(),
            request_last: Seen::default(),
            response: Some(response),
            response_body_bytes: self.resp_body.payload_len(),
            response_first: Some(Seen::default()),
            response_last: Some(Seen::default()),
            informational: self.interim.clone(),
            truncated: false,
        }
    }
}

fn header_pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop::sample::select(vec![
                "Host",
                "Accept",
                "User-Agent",
                "traceparent",
                "X-Request-Id",
                "Cookie",
            ]),
            "[a-zA-Z0-9/=;,.-]{1,12}",
        )
            .prop_map(|(n, v)| (n.to_owned(), v)),
        0..4,
    )
}

fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 1..40)
}

fn body_spec() -> impl Strategy<Value = BodySpec> {
    prop_oneof![
        Just(BodySpec::None),
        body_bytes().prop_map(BodySpec::Length),
        (
            prop::collection::vec(body_bytes(), 1..4),
            any::<bool>(),
            prop::collection::vec(
                ("X-[A-Za-z]{1,6}", "[a-z0-9]{1,6}").prop_map(|(n, v)| (n, v)),
                0..2
            ),
        )
            .prop_map(|(c, e, t)| BodySpec::Chunked(c, e, t)),
    ]
}

fn exchange_spec() -> impl Strategy<Value = ExchangeSpec> {
    (
        prop::sample::select(vec![
            "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "PURGE", "MKCOL",
        ]),
        "/[a-zA-Z0-9/?=&._-]{0,20}",
        0u8..2,
        header_pairs(),
        body_spec(),
        prop::collection::vec(prop::sample::select(vec![100u16, 102, 103]), 0..2),
        prop::sample::select(vec![200u16, 201, 204, 304, 400, 404, 500, 503]),
        header_pairs(),
        body_spec(),
        0u64..5000,
    )
        .prop_map(
            |(
                method,
                target,
                minor,
                req_headers,
                req_body,
                interim,
                status,
                resp_headers,
                rb,
                bl,
            )| {
                let bodiless = method == "HEAD" || status == 204 || status == 304;
                let (resp_body, bogus_length) = if bodiless {
                    (BodySpec::None, Some(bl))
                } else if matches!(rb, BodySpec::None) {
                    // Without a length a response runs to the close: only the last may do that.
                    (BodySpec::Length(Vec::new()), None)
                } else {
                    (rb, None)
                };
                ExchangeSpec {
                    method: method.to_owned(),
                    target,
                    minor,
                    req_headers,
                    req_body,
                    interim,
                    status,
                    resp_headers,
                    resp_body,
                    bogus_length,
                }
            },
        )
}

/// Generated traffic plus the exchanges it should produce.
fn traffic() -> impl Strategy<Value = (Vec<ExchangeSpec>, bool, Vec<u8>)> {
    (
        prop::collection::vec(exchange_spec(), 1..6),
        any::<bool>(),
        body_bytes(),
    )
        .prop_map(|(mut specs, close_delimited, tail)| {
            if close_delimited
                && let Some(last) = specs.last_mut()
                && last.bogus_length.is_none()
            {
                last.resp_body = BodySpec::UntilClose(tail.clone());
            }
            (specs, close_delimited, tail)
        })
}

/// Splits `len` bytes at `cuts` (taken modulo `len`) into consecutive ranges.
fn split(len: usize, cuts: &[usize]) -> Vec<(usize, usize)> {
    let mut points: Vec<usize> = cuts.iter().filter(|_| len > 0).map(|c| c % len).collect();
    points.push(0);
    points.push(len);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| (w[0], w[1])).collect()
}

fn strip_seen(x: &Exchange) -> Exchange {
    let mut x = x.clone();
    x.request_first = Seen::default();
    x.request_last = Seen::default();
    x.response_first = x.response_first.map(|_| Seen::default());
    x.response_last = x.response_last.map(|_| Seen::default());
    x
}

/// One direction's bytes, where each exchange's part ends, and which ranges are payload.
struct Stream {
    bytes: Vec<u8>,
    starts: Vec<usize>,
    ends: Vec<usize>,
    payload: Vec<(usize, usize)>,
}

impl Stream {
    fn build(specs: &[ExchangeSpec], request: bool) -> Self {
        let mut s = Stream {
            bytes: Vec::new(),
            starts: Vec::new(),
            ends: Vec::new(),
            payload: Vec::new(),
        };
        for spec in specs {
            let mut ranges = Vec::new();
            let part = if request {
                spec.request_bytes(&mut ranges)
            } else {
                spec.response_bytes(&mut ranges)
            };
            let base = s.bytes.len();
            s.payload
                .extend(ranges.iter().map(|(a, b)| (a + base, b + base)));
            s.starts.push(base);
            s.bytes.extend(part);
            s.ends.push(s.bytes.len());
        }
        s
    }

    /// Index of the exchange whose bytes include offset `at`.
    fn owner(&self, at: usize) -> usize {
        self.starts.iter().rposition(|&s| s <= at).unwrap_or(0)
    }

    /// Splits `(a, b)` into captured `(a, m)` and lost `m..b` when `m..b` lies in one payload range.
    fn lossy(&self, (a, b): (usize, usize), pick: Option<usize>) -> (usize, usize, usize) {
        if let Some(p) = pick
            && b > a + 1
        {
            let m = a + 1 + p % (b - a - 1);
            if self.payload.iter().any(|&(s, e)| s <= m && b <= e) {
                return (a, m, b - m);
            }
        }
        (a, b, 0)
    }
}

/// Feeds the traffic split at the given points and interleaved by `choices`, keeping every
/// response after its request; `losses` turns the tail of some feeds that lies inside payload
/// into uncaptured bytes. Returns the events and, per exchange, whether bytes were lost.
fn drive(
    specs: &[ExchangeSpec],
    req_cuts: &[usize],
    resp_cuts: &[usize],
    choices: &[bool],
    losses: &[Option<usize>],
) -> (Vec<Event>, Vec<bool>) {
    let req = Stream::build(specs, true);
    let resp = Stream::build(specs, false);
    let req_chunks = split(req.bytes.len(), req_cuts);
    let resp_chunks = split(resp.bytes.len(), resp_cuts);
    // A response chunk may go once the requests of every response it touches are fed.
    let needs = |end: usize| req.ends[resp.owner(end.saturating_sub(1))];
    let mut lossy = vec![false; specs.len()];
    let mut conn = Connection::new();
    let mut out = Vec::new();
    let (mut ri, mut si, mut fed, mut ts) = (0usize, 0usize, 0usize, 0u64);
    let mut choice = choices.iter().cycle();
    let mut loss = losses.iter().cycle();
    while ri < req_chunks.len() || si < resp_chunks.len() {
        ts += 1;
        let seen = Seen { ts_ns: ts, tid: 1 };
        let resp_ok = si < resp_chunks.len() && needs(resp_chunks[si].1) <= fed;
        let want_resp = choice.next().copied().unwrap_or(true);
        let pick = loss.next().copied().flatten();
        if resp_ok && (want_resp || ri >= req_chunks.len()) {
            let (a, m, lost) = resp.lossy(resp_chunks[si], pick);
            if lost > 0 {
                lossy[resp.owner(m)] = true;
            }
            conn.feed(
                Direction::Response,
                &resp.bytes[a..m],
                lost as u64,
                seen,
                &mut out,
            );
            si += 1;
        } else {
            let (a, m, lost) = req.lossy(req_chunks[ri], pick);
            if lost > 0 {
                lossy[req.owner(m)] = true;
            }
            conn.feed(
                Direction::Request,
                &req.bytes[a..m],
                lost as u64,
                seen,
                &mut out,
            );
            fed = req_chunks[ri].1;
            ri += 1;
        }
    }
    conn.close(
        Seen {
            ts_ns: ts + 1,
            tid: 1,
        },
        &mut out,
    );
    (out, lossy)
}

fn check_events(
    specs: &[ExchangeSpec],
    events: &[Event],
    lossy: &[bool],
) -> Result<(), TestCaseError> {
    let expected: Vec<Exchange> = specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut x = s.expected(i as u64);
            x.truncated = lossy[i];
            x
        })
        .collect();
    let got: Vec<Exchange> = events
        .iter()
        .filter_map(|e| match e {
            Event::Exchange(x) => Some(strip_seen(x)),
            _ => None,
        })
        .collect();
    prop_assert_eq!(got, expected);
    // Each request head is announced once, in order, before its exchange.
    let mut announced = 0u64;
    for e in events {
        match e {
            Event::RequestHead { seq, head, .. } => {
                prop_assert_eq!(*seq, announced);
                let mut expected = specs[announced as usize].request_head();
                keep_as_parsed(&mut expected.headers, crate::kept_header);
                prop_assert_eq!(&**head, &expected);
                announced += 1;
            }
            Event::Exchange(x) => prop_assert!(x.seq < announced),
            Event::NotHttp { .. } => prop_assert!(false, "NotHttp on valid traffic"),
        }
    }
    // Seen values are ordered as the feeds were.
    for e in events {
        if let Event::Exchange(x) = e {
            prop_assert!(x.request_first.ts_ns <= x.request_last.ts_ns);
            let (Some(rf), Some(rl)) = (x.response_first, x.response_last) else {
                return Err(TestCaseError::fail("response without Seen"));
            };
            prop_assert!(x.request_last.ts_ns <= rf.ts_ns && rf.ts_ns <= rl.ts_ns);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn any_split_gives_the_same_exchanges(
        (specs, _close, _tail) in traffic(),
        req_cuts in prop::collection::vec(any::<usize>(), 0..40),
        resp_cuts in prop::collection::vec(any::<usize>(), 0..40),
        choices in prop::collection::vec(any::<bool>(), 1..40),
    ) {
        let (events, lossy) = drive(&specs, &req_cuts, &resp_cuts, &choices, &[None]);
        prop_assert!(lossy.iter().all(|l| !l));
        check_events(&specs, &events, &lossy)?;
    }

    #[test]
    fn payload_lost_in_any_split_is_counted(
        (specs, _close, _tail) in traffic(),
        req_cuts in prop::collection::vec(any::<usize>(), 0..40),
        resp_cuts in prop::collection::vec(any::<usize>(), 0..40),
        choices in prop::collection::vec(any::<bool>(), 1..40),
        losses in prop::collection::vec(prop::option::of(any::<usize>()), 1..10),
    ) {
        let (events, lossy) = drive(&specs, &req_cuts, &resp_cuts, &choices, &losses);
        check_events(&specs, &events, &lossy)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        unsynced in any::<bool>(),
        ops in prop::collection::vec(
            (any::<bool>(), prop::collection::vec(any::<u8>(), 0..64), prop::option::of(0u64..100)),
            0..30,
        ),
    ) {
        let mut conn = if unsynced { Connection::new_unsynced() } else { Connection::new() };
        let mut out = Vec::new();
        for (i, (req, data, lost)) in ops.iter().enumerate() {
            let dir = if *req { Direction::Request } else { Direction::Response };
            let seen = Seen { ts_ns: i as u64, tid: 0 };
            conn.feed(dir, data, lost.unwrap_or(0), seen, &mut out);
            prop_assert!(conn.buffered_bytes() <= crate::MAX_HEAD_BYTES * 2);
        }
        conn.close(Seen::default(), &mut out);
        let not_http = out.iter().filter(|e| matches!(e, Event::NotHttp { .. })).count();
        prop_assert!(not_http <= 1);
        prop_assert_eq!(conn.is_http(), not_http == 0);
        let _ = looks_like_request(&ops.first().map(|o| o.1.clone()).unwrap_or_default());
        let _ = looks_like_response(&ops.last().map(|o| o.1.clone()).unwrap_or_default());
    }

    #[test]
    fn http_shaped_fragments_never_panic(
        unsynced in any::<bool>(),
        ops in prop::collection::vec(
            (
                any::<bool>(),
                prop::collection::vec(
                    prop::sample::select(vec![
                        &b"GET / HTTP/1.1\r\n"[..], b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 100 Continue\r\n",
                        b"HTTP/1.1 101 Switching\r\n", b"Content-Length: 3\r\n", b"Content-Length: x\r\n",
                        b"Transfer-Encoding: chunked\r\n", b"Upgrade: websocket\r\n", b"\r\n", b"\n",
                        b"3\r\nabc\r\n", b"0\r\n", b"ffffffffffffffffff\r\n", b"5;e=1\r\n", b"HEAD /h HTTP/1.0\r\n",
                        b"CONNECT a:1 HTTP/1.1\r\n", b"abc", b"\x00\xff", b"X: y\r\n",
                    ]),
                    0..8,
                ),
                prop::option::of(0u64..50),
            ),
            0..30,
        ),
    ) {
        let mut conn = if unsynced { Connection::new_unsynced() } else { Connection::new() };
        let mut out = Vec::new();
        for (i, (req, parts, lost)) in ops.iter().enumerate() {
            let dir = if *req { Direction::Request } else { Direction::Response };
            let data = parts.concat();
            conn.feed(dir, &data, lost.unwrap_or(0), Seen { ts_ns: i as u64, tid: 0 }, &mut out);
        }
        conn.close(Seen::default(), &mut out);
        // Every exchange was announced first, and announced at most once.
        let mut announced = std::collections::HashSet::new();
        for e in &out {
            match e {
                Event::RequestHead { seq, .. } => prop_assert!(announced.insert(*seq)),
                Event::Exchange(x) => prop_assert!(announced.contains(&x.seq)),
                Event::NotHttp { .. } => {}
            }
        }
    }
}

/// Pipelined `GET /<i>` requests answered with the distinct status `210 + i` (no 204/205: those have no body) and a body of
/// `bodies[i]` bytes; noise bytes optionally follow request `noise_after`.
fn pipelined_streams(
    bodies: &[usize],
    noise_after: Option<usize>,
) -> (Vec<u8>, Vec<usize>, Vec<u8>) {
    let mut req = Vec::new();
    let mut req_ends = Vec::new();
    let mut resp = Vec::new();
    for (i, len) in bodies.iter().enumerate() {
        req.extend_from_slice(format!("GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        if noise_after == Some(i) {
            req.extend_from_slice(b"\x16\x03\x01 not http\r\n\r\n");
        }
        req_ends.push(req.len());
        resp.extend_from_slice(
            format!("HTTP/1.1 {} X\r\nContent-Length: {len}\r\n\r\n", 210 + i).as_bytes(),
        );
        resp.extend(std::iter::repeat_n(b'x', *len));
    }
    (req, req_ends, resp)
}

/// Feeds both streams cut at `cuts`, interleaved by `choices` (a response byte is only fed
/// once every request up to its exchange was: servers answer what they have read), each chunk
/// truncated to a prefix when `truncate` says so (the rest reported lost, as a capture limit
/// does). Returns (target, status) of every exchange.
fn feed_pipelined(
    bodies: &[usize],
    noise_after: Option<usize>,
    cuts: &[usize],
    choices: &[bool],
    truncate: &[Option<usize>],
) -> Vec<(String, Option<u16>)> {
    let (req, req_ends, resp) = pipelined_streams(bodies, noise_after);
    let chunks = |len: usize, salt: usize| -> Vec<(usize, usize)> {
        let mut points: Vec<usize> = cuts.iter().map(|c| (c ^ salt) % (len + 1)).collect();
        points.extend([0, len]);
        points.sort_unstable();
        points.dedup();
        points.windows(2).map(|w| (w[0], w[1])).collect()
    };
    let (rq, rs) = (chunks(req.len(), 0), chunks(resp.len(), 0x5a5a));
    // The exchange a response offset belongs to, by the response layout.
    let mut resp_owner_end = Vec::new();
    let mut at = 0;
    for (i, len) in bodies.iter().enumerate() {
        at += format!("HTTP/1.1 {} X\r\nContent-Length: {len}\r\n\r\n", 210 + i).len() + len;
        resp_owner_end.push(at);
    }
    let owner = |offset: usize| resp_owner_end.iter().position(|e| offset < *e).unwrap_or(0);
    let mut conn = Connection::new();
    let mut out = Vec::new();
    let (mut qi, mut si, mut step) = (0, 0, 0usize);
    while qi < rq.len() || si < rs.len() {
        let want_resp = choices
            .get(step % choices.len().max(1))
            .copied()
            .unwrap_or(false);
        let resp_ok = si < rs.len() && {
            let (_, b) = rs[si];
            let need = req_ends[owner(b.saturating_sub(1))];
            qi >= rq.len() || rq[qi].0 >= need
        };
        let (dir, (a, b)) = if (want_resp && resp_ok) || (qi >= rq.len() && si < rs.len()) {
            si += 1;
            (Direction::Response, rs[si - 1])
        } else {
            qi += 1;
            (Direction::Request, rq[qi - 1])
        };
        let data = if dir == Direction::Request {
            &req
        } else {
            &resp
        };
        let keep = match truncate
            .get(step % truncate.len().max(1))
            .copied()
            .flatten()
        {
            Some(k) if b > a => a + k % (b - a),
            _ => b,
        };
        let seen = Seen {
            ts_ns: step as u64 + 1,
            tid: 1,
        };
        conn.feed(dir, &data[a..keep], (b - keep) as u64, seen, &mut out);
        step += 1;
    }
    conn.close(
        Seen {
            ts_ns: 1_000_000,
            tid: 1,
        },
        &mut out,
    );
    out.iter()
        .filter_map(|e| match e {
            Event::Exchange(x) => Some((
                x.request.target.clone(),
                x.response.as_ref().map(|r| r.status),
            )),
            _ => None,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, .. ProptestConfig::default() })]

    /// Never wrong: whatever the cuts, interleaving, truncation and noise, a status on an
    /// exchange is the one sent for that very request, and exchanges come in request order.
    #[test]
    fn pipelined_statuses_are_never_wrong(
        bodies in prop::collection::vec(0usize..300, 1..12),
        noise_after in prop::option::of(0usize..12),
        cuts in prop::collection::vec(any::<usize>(), 0..30),
        choices in prop::collection::vec(any::<bool>(), 1..30),
        truncate in prop::collection::vec(prop::option::weighted(0.2, any::<usize>()), 1..10),
    ) {
        let got = feed_pipelined(&bodies, noise_after, &cuts, &choices, &truncate);
        let mut last = None;
        for (target, status) in &got {
            let Some(i) = target.strip_prefix('/').and_then(|t| t.parse::<usize>().ok()) else {
                prop_assert!(false, "unexpected target {target}: {got:?}");
                continue;
            };
            prop_assert!(last.is_none_or(|l| l < i), "out of order: {got:?}");
            last = Some(i);
            if let Some(s) = status {
                prop_assert_eq!(usize::from(*s), 210 + i, "{:?}", got);
            }
        }
        // Without truncation or noise every request has its status.
        if truncate.iter().all(Option::is_none) && noise_after.is_none() {
            prop_assert_eq!(got.len(), bodies.len());
            prop_assert!(got.iter().all(|(_, s)| s.is_some()), "{:?}", got);
        }
    }
}
