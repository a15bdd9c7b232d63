//! A small HTTP/1.1 client over `std::net`, plus a raw-socket client for keep-alive and
//! pipelining tests and a `curl` wrapper.
//!
//! Why not `ureq`: sonde sees the bytes on the wire, so the tests need to know exactly which
//! connection carries which request (ureq pools connections and hides that), and the
//! pipelining/`Expect`/close-delimited cases need byte-level control anyway. One ~300-line
//! parser serves both the convenience functions and [`RawHttpClient`].

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::process::Command;
use std::time::Duration;

use crate::error::{Error, IoContext, Result};

/// Largest header section or chunk-size line the client accepts.
const MAX_LINE: u64 = 64 * 1024;

/// A parsed HTTP response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Status code.
    pub status: u16,
    /// Reason phrase.
    pub reason: String,
    /// Headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// Status codes of interim (1xx) responses received before this one.
    pub interim: Vec<u16>,
    /// Whether the body was chunked.
    pub chunked: bool,
}

impl HttpResponse {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first trailer field with this name (case-insensitive).
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn read_line(r: &mut impl BufRead) -> Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE)
        .read_until(b'\n', &mut buf)
        .ctx(|| "reading an HTTP line".to_string())?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(Error::Http("line too long or truncated".into()));
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn read_fields(r: &mut impl BufRead) -> Result<Vec<(String, String)>> {
    let mut fields = Vec::new();
    loop {
        let line = read_line(r)?
            .ok_or_else(|| Error::Http("connection closed inside the header section".into()))?;
        if line.is_empty() {
            return Ok(fields);
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| Error::Http(format!("malformed header line {line:?}")))?;
        fields.push((k.trim().to_string(), v.trim().to_string()));
    }
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

fn content_length(headers: &[(String, String)]) -> Result<Option<u64>> {
    match headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        None => Ok(None),
        Some((_, v)) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::Http(format!("bad Content-Length {v:?}"))),
    }
}

/// Header or trailer fields in order.
type Fields = Vec<(String, String)>;

/// Reads a chunked body; returns (body, trailers).
fn read_chunked(r: &mut impl BufRead) -> Result<(Vec<u8>, Fields)> {
    let mut body = Vec::new();
    loop {
        let line = read_line(r)?
            .ok_or_else(|| Error::Http("connection closed inside a chunked body".into()))?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| Error::Http(format!("bad chunk size {line:?}")))?;
        if size == 0 {
            let trailers = read_fields(r)?;
            return Ok((body, trailers));
        }
        let before = body.len();
        r.by_ref()
            .take(size)
            .read_to_end(&mut body)
            .ctx(|| "reading a chunk".to_string())?;
        if (body.len().saturating_sub(before) as u64) < size {
            return Err(Error::Http("connection closed inside a chunk".into()));
        }
        let crlf = read_line(r)?;
        if crlf.as_deref() != Some("") {
            return Err(Error::Http(format!("chunk not followed by CRLF: {crlf:?}")));
        }
    }
}

/// Reads one final response (collecting interim 1xx responses) from `r`.
/// `head` says the request was HEAD, whose response has no body whatever its headers say.
pub fn read_response(r: &mut impl BufRead, head: bool) -> Result<HttpResponse> {
    let mut interim = Vec::new();
    loop {
        let line = read_line(r)?
            .ok_or_else(|| Error::Http("connection closed before a response".into()))?;
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Http(format!("malformed status line {line:?}")))?;
        let reason = parts.next().unwrap_or("").to_string();
        if !version.starts_with("HTTP/") {
            return Err(Error::Http(format!("malformed status line {line:?}")));
        }
        let headers = read_fields(r)?;
        if (100..200).contains(&status) && status != 101 {
            interim.push(status);
            continue;
        }
        let mut resp = HttpResponse {
            version,
            status,
            reason,
            headers,
            interim,
            ..HttpResponse::default()
        };
        if head || status == 204 || status == 304 || status == 101 {
            return Ok(resp);
        }
        if has_token(&resp.headers, "transfer-encoding", "chunked") {
            let (body, trailers) = read_chunked(r)?;
            resp.body = body;
            resp.trailers = trailers;
            resp.chunked = true;
        } else if let Some(len) = content_length(&resp.headers)? {
            r.by_ref()
                .take(len)
                .read_to_end(&mut resp.body)
                .ctx(|| "reading a body".to_string())?;
            if (resp.body.len() as u64) < len {
                return Err(Error::Http(format!(
                    "body truncated: {} of {len} bytes",
                    resp.body.len()
                )));
            }
        } else {
            r.read_to_end(&mut resp.body)
                .ctx(|| "reading a close-delimited body".to_string())?;
        }
        return Ok(resp);
    }
}

/// Splits `http://host[:port]/path?query` into (host, port, path-and-query).
pub fn parse_url(url: &str) -> Result<(String, u16, String)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::Http(format!("only http:// URLs are supported: {url}")))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (rest.get(..i).unwrap_or(""), rest.get(i..).unwrap_or("/")),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| Error::Http(format!("bad port in {url}")))?,
        ),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(Error::Http(format!("no host in {url}")));
    }
    Ok((host.to_string(), port, path))
}

/// Sends one request on a fresh connection (`Connection: close`) and reads the response.
/// A `Content-Length` header is added when `body` is not empty or the method usually has one.
pub fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpResponse> {
    let (host, port, path) = parse_url(url)?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .ctx(|| format!("resolving {host}"))?
        .next()
        .ok_or_else(|| Error::Http(format!("{host} did not resolve")))?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .ctx(|| format!("connecting to {addr}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .ctx(|| "setting a read timeout".to_string())?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n");
    let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
    if !has("user-agent") {
        req.push_str("User-Agent: sonde-e2e\r\n");
    }
    if !has("connection") {
        req.push_str("Connection: close\r\n");
    }
    if !has("content-length")
        && !has("transfer-encoding")
        && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH"))
    {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    let mut w = &stream;
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    w.write_all(&bytes)
        .ctx(|| format!("sending {method} {url}"))?;
    let mut reader = BufReader::new(&stream);
    read_response(&mut reader, method.eq_ignore_ascii_case("HEAD"))
}

/// `GET url` → (status, body); panics when no response can be had.
pub fn http_get(url: &str) -> (u16, String) {
    match http_request("GET", url, &[], b"") {
        Ok(r) => (r.status, r.text()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// `POST url` with a body of `content_type` → (status, body); panics when no response can be had.
pub fn http_post(url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    match http_request("POST", url, &[("Content-Type", content_type)], body) {
        Ok(r) => (r.status, r.text()),
        Err(e) => panic!("POST {url}: {e}"),
    }
}

/// `POST url` with a JSON body → (status, body); panics when no response can be had.
pub fn http_post_json(url: &str, json: &str) -> (u16, String) {
    http_post(url, "application/json", json.as_bytes())
}

/// Tracks the requests written on a connection so that responses to HEAD are read without body.
#[derive(Debug, Default)]
struct RequestScanner {
    pending: Vec<u8>,
    heads: VecDeque<bool>,
}

impl RequestScanner {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while let Some(used) = self.one_request() {
            self.pending.drain(..used.min(self.pending.len()));
        }
    }

    /// Length of the first complete request in `pending`, recording whether it is HEAD.
    fn one_request(&mut self) -> Option<usize> {
        let end = self
            .pending
            .windows(4)
            .position(|w| w == b"\r\n\r\n")?
            .checked_add(4)?;
        let head_text = String::from_utf8_lossy(self.pending.get(..end)?).into_owned();
        let mut r = head_text.as_bytes();
        let request_line = read_line(&mut r).ok()??;
        let fields = read_fields(&mut r).ok()?;
        let is_head = request_line.starts_with("HEAD ");
        let body_end = if has_token(&fields, "transfer-encoding", "chunked") {
            let mut rest = self.pending.get(end..)?;
            let before = rest.len();
            read_chunked(&mut rest).ok()?;
            end.checked_add(before.checked_sub(rest.len())?)?
        } else {
            let len = usize::try_from(content_length(&fields).ok()?.unwrap_or(0)).ok()?;
            let total = end.checked_add(len)?;
            if self.pending.len() < total {
                return None;
            }
            total
        };
        self.heads.push_back(is_head);
        Some(body_end)
    }
}

/// One TCP connection on which the test writes raw bytes and reads parsed responses:
/// for keep-alive, pipelining, `Expect: 100-continue` and split-write scenarios.
#[derive(Debug)]
pub struct RawHttpClient {
    /// The socket, written through `get_mut` and read through the buffer: one file
    /// descriptor for both directions (no `try_clone`), as most clients do.
    reader: BufReader<TcpStream>,
    scanner: RequestScanner,
}

impl RawHttpClient {
    /// Connects to `addr` (e.g. `"127.0.0.1:8080"`); reads time out after 30 s.
    pub fn connect(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<RawHttpClient> {
        let stream = TcpStream::connect(&addr).ctx(|| format!("connecting to {addr:?}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .ctx(|| "setting a read timeout".to_string())?;
        stream
            .set_nodelay(true)
            .ctx(|| "setting TCP_NODELAY".to_string())?;
        Ok(RawHttpClient {
            reader: BufReader::new(stream),
            scanner: RequestScanner::default(),
        })
    }

    /// The underlying socket (e.g. to read its local port).
    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    /// Writes `bytes` as they are (one write call; may hold any number of partial requests).
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.scanner.feed(bytes);
        let stream = self.reader.get_mut();
        stream
            .write_all(bytes)
            .ctx(|| "writing to the connection".to_string())?;
        stream.flush().ctx(|| "flushing the connection".to_string())
    }

    /// Reads the next response; it has no body if the matching request written was HEAD.
    pub fn read_response(&mut self) -> Result<HttpResponse> {
        let head = self.scanner.heads.pop_front().unwrap_or(false);
        read_response(&mut self.reader, head)
    }

    /// Reads the next `n` responses in order.
    pub fn read_responses(&mut self, n: usize) -> Result<Vec<HttpResponse>> {
        (0..n).map(|_| self.read_response()).collect()
    }

    /// Reads one interim response's status line and headers (e.g. `100 Continue`) without
    /// waiting for the final response; returns its status code.
    pub fn read_interim(&mut self) -> Result<u16> {
        let line =
            read_line(&mut self.reader)?.ok_or_else(|| Error::Http("connection closed".into()))?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Http(format!("malformed status line {line:?}")))?;
        read_fields(&mut self.reader)?;
        Ok(status)
    }

    /// Whether the server closes the connection within `timeout` (reads until EOF or timeout;
    /// unexpected bytes count as "not closed").
    pub fn closed_by_peer(&mut self, timeout: Duration) -> bool {
        let _ = self.reader.get_ref().set_read_timeout(Some(timeout));
        let mut buf = [0u8; 1];
        let closed = matches!(self.reader.read(&mut buf), Ok(0));
        let _ = self
            .reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)));
        closed
    }

    /// Half-closes the connection (no more requests).
    pub fn shutdown_write(&self) -> Result<()> {
        self.reader
            .get_ref()
            .shutdown(Shutdown::Write)
            .ctx(|| "shutting down the write side".to_string())
    }
}

/// What a `curl` run printed.
#[derive(Debug, Clone)]
pub struct CurlOutput {
    /// curl's exit status.
    pub status: std::process::ExitStatus,
    /// Whether curl exited 0.
    pub success: bool,
    /// curl's exit code (-1 if killed by a signal).
    pub code: i32,
    /// Its stdout (the body unless redirected).
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs `curl -sS --max-time 60 <args>`; panics only if curl cannot be started.
pub fn curl(args: &[&str]) -> CurlOutput {
    let out = match Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("cannot run curl (apt-get install curl): {e}"),
    };
    CurlOutput {
        status: out.status,
        success: out.status.success(),
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The status code curl got for `curl <extra args> <url>`; panics if curl failed.
pub fn curl_status(url: &str, extra: &[&str]) -> u16 {
    let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    args.extend_from_slice(extra);
    args.push(url);
    let out = curl(&args);
    match out.stdout.trim().parse() {
        Ok(code) if out.success => code,
        _ => panic!(
            "curl {url} failed (exit {}): {}{}",
            out.code, out.stdout, out.stderr
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/a/b?c=1").unwrap(),
            ("127.0.0.1".into(), 8080, "/a/b?c=1".into())
        );
        assert_eq!(
            parse_url("http://example.invalid").unwrap(),
            ("example.invalid".into(), 80, "/".into())
        );
        assert_eq!(parse_url("http://h:1?q").unwrap().2, "/?q");
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("http://h:notaport/").is_err());
    }

    #[test]
    fn reads_all_body_framings() {
        let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nab\r\n1\r\nc\r\n0\r\nX-Sum: 3\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.0 200 OK\r\n\r\nuntil close";
        let mut r: &[u8] = wire;
        let a = read_response(&mut r, false).unwrap();
        assert_eq!(
            (a.status, a.text().as_str(), a.interim.clone()),
            (200, "abc", vec![100])
        );
        let b = read_response(&mut r, false).unwrap();
        assert!(b.chunked);
        assert_eq!((b.text().as_str(), b.trailer("x-sum")), ("abc", Some("3")));
        let c = read_response(&mut r, true).unwrap();
        assert_eq!(
            (c.status, c.body.len(), c.header("content-length")),
            (200, 0, Some("10"))
        );
        assert_eq!(read_response(&mut r, false).unwrap().status, 204);
        assert_eq!(read_response(&mut r, false).unwrap().text(), "until close");
        assert!(read_response(&mut r, false).is_err());
        let mut truncated: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab";
        assert!(read_response(&mut truncated, false).is_err());
    }

    #[test]
    fn scanner_tracks_head_requests_across_split_writes() {
        let mut s = RequestScanner::default();
        s.feed(b"GET / HTTP/1.1\r\n\r\nHEAD /x HTTP/1.1\r\nHost: a\r\n");
        assert_eq!(s.heads, [false]);
        s.feed(b"\r\nPOST /echo HTTP/1.1\r\nContent-Length: 5\r\n\r\nHEA");
        assert_eq!(s.heads, [false, true]);
        s.feed(b"D!POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\nHEAD / HTTP/1.1\r\n\r\n");
        assert_eq!(s.heads, [false, true, false, false, true]);
        assert!(s.pending.is_empty());
    }
}
