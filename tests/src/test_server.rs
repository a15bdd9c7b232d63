//! `sonde-test-server`: a small threaded HTTP/1.1 server whose framing the tests control,
//! and [`TestServer`], the guard that runs it as a separate process.
//!
//! Routes: `GET /len/<n>` (n bytes, Content-Length), `GET /chunked/<n>?chunks=k` (chunked, with an
//! `X-Checksum` trailer = n), `POST /echo` (echoes a Content-Length or chunked body, honours
//! `Expect: 100-continue`), `GET /status/<code>`, `GET /slow/<ms>`, `GET /close` (no
//! Content-Length, then close), `HEAD` on any of them (headers only), anything else 404.
//! Connections are kept alive (HTTP/1.1 default) and pipelined requests are answered in order.
//! Each request is logged on stdout as `request <METHOD> <target> body=<n>`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::dirs::TestDir;
use crate::error::{Error, IoContext, Result};
use crate::proc::Proc;

/// Largest request body `/echo` accepts.
const MAX_BODY: u64 = 64 * 1024 * 1024;
/// Largest response `/len` and `/chunked` produce.
const MAX_LEN: u64 = 1024 * 1024 * 1024;

/// A request as the server read it.
#[derive(Debug, Default)]
struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn wants_close(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        conn.contains("close") || (self.version == "HTTP/1.0" && !conn.contains("keep-alive"))
    }
}

fn read_line(r: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.by_ref().take(64 * 1024).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn bad(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

/// Reads the request line and headers; `None` on a clean EOF between requests.
fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut line = match read_line(r)? {
        Some(l) => l,
        None => return Ok(None),
    };
    // Tolerate empty lines between pipelined requests (RFC 9112 §2.2).
    while line.is_empty() {
        line = match read_line(r)? {
            Some(l) => l,
            None => return Ok(None),
        };
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    };
    if !token(method) || !(version == "HTTP/1.1" || version == "HTTP/1.0") || target.is_empty() {
        return Err(bad("malformed request line"));
    }
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        ..Request::default()
    };
    loop {
        let l = read_line(r)?.ok_or_else(|| bad("EOF in headers"))?;
        if l.is_empty() {
            return Ok(Some(req));
        }
        let (k, v) = l.split_once(':').ok_or_else(|| bad("malformed header"))?;
        req.headers
            .push((k.trim().to_string(), v.trim().to_string()));
    }
}

fn read_body(r: &mut impl BufRead, req: &Request) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let line = read_line(r)?.ok_or_else(|| bad("EOF in chunk size"))?;
            let size = u64::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailer section, up to its empty line.
                loop {
                    if read_line(r)?
                        .ok_or_else(|| bad("EOF in trailers"))?
                        .is_empty()
                    {
                        return Ok(body);
                    }
                }
            }
            if (body.len() as u64).saturating_add(size) > MAX_BODY {
                return Err(bad("body too large"));
            }
            r.by_ref().take(size).read_to_end(&mut body)?;
            read_line(r)?;
        }
    }
    if let Some(len) = req.header("content-length") {
        let len: u64 = len.parse().map_err(|_| bad("bad Content-Length"))?;
        if len > MAX_BODY {
            return Err(bad("body too large"));
        }
        r.by_ref().take(len).read_to_end(&mut body)?;
        if (body.len() as u64) < len {
            return Err(bad("EOF in body"));
        }
    }
    Ok(body)
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// Deterministic body bytes: `abc...xyz` repeated.
fn pattern_bytes(n: u64, w: &mut impl Write) -> std::io::Result<()> {
    const ALPHABET: &[u8; 26] = b"abcdefghijklmnopqrstuvwxyz";
    let block: Vec<u8> = ALPHABET.iter().copied().cycle().take(26 * 2048).collect();
    let mut left = n;
    while left > 0 {
        let take = left.min(block.len() as u64);
        let slice = block
            .get(..usize::try_from(take).unwrap_or(0))
            .unwrap_or(&[]);
        w.write_all(slice)?;
        left = left.saturating_sub(take);
    }
    Ok(())
}

fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// Writes the response to `req`; returns whether the connection must close afterwards.
fn respond(req: &Request, w: &mut impl Write) -> std::io::Result<bool> {
    let head = req.method == "HEAD";
    let close = req.wants_close();
    let conn_hdr = if close { "Connection: close\r\n" } else { "" };
    let (path, query) = split_target(&req.target);
    let mut simple = |code: u16, ctype: &str, body: &[u8]| -> std::io::Result<bool> {
        let mut out = format!("HTTP/1.1 {code} {}\r\n", reason(code)).into_bytes();
        if code != 204 && code != 304 {
            out.extend_from_slice(
                format!(
                    "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
                    body.len()
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(conn_hdr.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !head && code != 204 && code != 304 {
            out.extend_from_slice(body);
        }
        w.write_all(&out)?;
        Ok(close)
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET" | "HEAD", ["len", n]) => {
            let Some(n) = n.parse::<u64>().ok().filter(|n| *n <= MAX_LEN) else {
                return simple(400, "text/plain", b"bad length\n");
            };
            w.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n{conn_hdr}\r\n")
                    .as_bytes(),
            )?;
            if !head {
                pattern_bytes(n, w)?;
            }
            Ok(close)
        }
        ("GET" | "HEAD", ["chunked", n]) => {
            let Some(n) = n.parse::<u64>().ok().filter(|n| *n <= MAX_LEN) else {
                return simple(400, "text/plain", b"bad length\n");
            };
            let k = query_param(query, "chunks")
                .and_then(|k| k.parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 1 << 20);
            w.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n{conn_hdr}\r\n"
                )
                .as_bytes(),
            )?;
            if head {
                return Ok(close);
            }
            let base = n / k;
            let mut left = n;
            for i in 0..k {
                let size = if i + 1 == k { left } else { base.min(left) };
                if size == 0 {
                    continue;
                }
                w.write_all(format!("{size:x}\r\n").as_bytes())?;
                pattern_bytes(size, w)?;
                w.write_all(b"\r\n")?;
                left = left.saturating_sub(size);
            }
            w.write_all(format!("0\r\nX-Checksum: {n}\r\n\r\n").as_bytes())?;
            Ok(close)
        }
        ("POST" | "PUT", ["echo"]) => {
            let ctype = req
                .header("content-type")
                .unwrap_or("application/octet-stream")
                .to_string();
            simple(200, &ctype, &req.body)
        }
        ("GET" | "HEAD", ["status", code]) => match code.parse::<u16>() {
            Ok(c) if (200..600).contains(&c) => {
                simple(c, "text/plain", format!("status {c}\n").as_bytes())
            }
            _ => simple(400, "text/plain", b"bad status\n"),
        },
        ("GET" | "HEAD", ["slow", ms]) => {
            let ms = ms.parse::<u64>().unwrap_or(0).min(60_000);
            std::thread::sleep(Duration::from_millis(ms));
            simple(200, "text/plain", format!("slept {ms}\n").as_bytes())
        }
        ("GET" | "HEAD", ["close"]) => {
            let mut out =
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
                    .to_vec();
            if !head {
                out.extend_from_slice(b"close-delimited body\n");
            }
            w.write_all(&out)?;
            Ok(true)
        }
        ("GET" | "HEAD", [""]) => simple(200, "text/plain", b"sonde-test-server\n"),
        _ => simple(404, "text/plain", b"not found\n"),
    }
}

/// Prints `request <METHOD> <target> body=<n>` on stdout, so tests (and the harness's
/// [`Proc::wait_for_line`]) can see what clients such as nginx or an SDK exporter sent.
fn log_request(req: &Request) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "request {} {} body={}",
        req.method,
        req.target,
        req.body.len()
    );
    let _ = out.flush();
}

fn handle(stream: TcpStream) -> std::io::Result<()> {
    // Reads and writes go through the same file descriptor (no try_clone/dup), like most
    // servers: a tracer keyed by (pid, fd) sees one connection.
    let mut writer = std::io::BufWriter::new(&stream);
    let mut reader = BufReader::new(&stream);
    loop {
        let mut req = match read_head(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) => break,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                // Not HTTP/1.x: answer like nginx does, then close.
                writer.write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n",
                )?;
                break;
            }
            Err(e) => return Err(e),
        };
        let expects = req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        if expects && req.version == "HTTP/1.1" {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
            writer.flush()?;
        }
        req.body = read_body(&mut reader, &req)?;
        log_request(&req);
        let close = respond(&req, &mut writer)?;
        // Flush only when no further pipelined request is already buffered, so pipelined
        // responses may share segments as a real server's would.
        if close || reader.buffer().is_empty() {
            writer.flush()?;
        }
        if close {
            break;
        }
    }
    writer.flush()?;
    drop(writer);
    // Lingering close, as nginx does: closing with unread input would send a RST that can
    // destroy the response before the client reads it.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 8192];
    let mut drained = 0usize;
    while drained < 1 << 20 {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained = drained.saturating_add(n),
        }
    }
    Ok(())
}

/// Serves connections from `listener` forever, one thread per connection.
pub fn serve(listener: TcpListener) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                std::thread::spawn(move || {
                    let _ = handle(stream);
                });
            }
            Err(e) => eprintln!("sonde-test-server: accept: {e}"),
        }
    }
}

/// Where `cargo` put the `sonde-test-server` binary: `SONDE_TEST_SERVER_BIN`, else next to the
/// running test executable (`target/<profile>/deps/..`).
pub fn test_server_bin() -> Result<PathBuf> {
    crate::find_target_bin(
        "sonde-test-server",
        "SONDE_TEST_SERVER_BIN",
        "cargo build -p sonde-e2e --bins",
    )
}

/// A running `sonde-test-server` process (killed on drop).
#[derive(Debug)]
pub struct TestServer {
    proc: Proc,
    addr: SocketAddr,
    _dir: TestDir,
}

impl TestServer {
    /// Starts the server on a kernel-chosen port of 127.0.0.1; panics on failure.
    pub fn start() -> TestServer {
        Self::try_start().unwrap_or_else(|e| panic!("TestServer::start: {e}"))
    }

    /// Starts the server on a kernel-chosen port of 127.0.0.1.
    pub fn try_start() -> Result<TestServer> {
        let bin = test_server_bin()?;
        let dir = TestDir::new("testserver")?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--listen", "127.0.0.1:0"]);
        let proc = Proc::spawn("sonde-test-server", cmd, dir.path())?;
        let line = proc.wait_for_line("listening on ", Duration::from_secs(20))?;
        let addr = line
            .trim()
            .trim_start_matches("listening on ")
            .parse()
            .map_err(|_| Error::Setup(format!("cannot parse the address in {line:?}")))?;
        Ok(TestServer {
            proc,
            addr,
            _dir: dir,
        })
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }
}

/// Runs the server binary's main logic: parses `--listen ADDR`, prints `listening on <addr>`.
pub fn main_with_args(args: impl Iterator<Item = String>) -> Result<()> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut args = args.skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .ok_or_else(|| Error::Setup("--listen needs an address".into()))?
            }
            other => {
                return Err(Error::Setup(format!(
                    "unknown argument {other}; usage: sonde-test-server [--listen ADDR]"
                )));
            }
        }
    }
    let listener = TcpListener::bind(&listen).ctx(|| format!("binding {listen}"))?;
    let addr = listener.local_addr().ctx(|| "local_addr".to_string())?;
    let mut out = std::io::stdout();
    writeln!(out, "listening on {addr}").ctx(|| "writing to stdout".to_string())?;
    out.flush().ctx(|| "flushing stdout".to_string())?;
    serve(listener);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{RawHttpClient, http_request};

    fn in_process() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || serve(l));
        addr
    }

    #[test]
    fn routes_answer_as_documented() {
        let base = format!("http://{}", in_process());
        let r = http_request("GET", &format!("{base}/len/100000"), &[], b"").unwrap();
        assert_eq!((r.status, r.body.len(), r.chunked), (200, 100000, false));
        assert!(r.body.starts_with(b"abcdefghijklmnopqrstuvwxyzabc"));
        let r = http_request("GET", &format!("{base}/chunked/1000?chunks=3"), &[], b"").unwrap();
        assert_eq!(
            (r.status, r.body.len(), r.chunked, r.trailer("x-checksum")),
            (200, 1000, true, Some("1000"))
        );
        let r = http_request(
            "POST",
            &format!("{base}/echo"),
            &[("Content-Type", "text/x-test")],
            b"ping",
        )
        .unwrap();
        assert_eq!(
            (r.text().as_str(), r.header("content-type")),
            ("ping", Some("text/x-test"))
        );
        assert_eq!(
            http_request("GET", &format!("{base}/status/503"), &[], b"")
                .unwrap()
                .status,
            503
        );
        assert_eq!(
            http_request("GET", &format!("{base}/status/204"), &[], b"")
                .unwrap()
                .status,
            204
        );
        let t = std::time::Instant::now();
        assert_eq!(
            http_request("GET", &format!("{base}/slow/150"), &[], b"")
                .unwrap()
                .text(),
            "slept 150\n"
        );
        assert!(t.elapsed() >= Duration::from_millis(150));
        let r = http_request("HEAD", &format!("{base}/len/77"), &[], b"").unwrap();
        assert_eq!((r.header("content-length"), r.body.len()), (Some("77"), 0));
        let r = http_request("GET", &format!("{base}/close"), &[], b"").unwrap();
        assert_eq!(
            (r.header("content-length"), r.text().as_str()),
            (None, "close-delimited body\n")
        );
        assert_eq!(
            http_request("GET", &format!("{base}/nope"), &[], b"")
                .unwrap()
                .status,
            404
        );
    }

    #[test]
    fn keep_alive_pipelining_expect_and_chunked_uploads() {
        let addr = in_process();
        let mut c = RawHttpClient::connect(addr).unwrap();
        c.send(b"GET /len/5 HTTP/1.1\r\nHost: t\r\n\r\nHEAD /len/9 HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        let rs = c.read_responses(3).unwrap();
        assert_eq!(
            rs.iter().map(|r| r.status).collect::<Vec<_>>(),
            [200, 200, 200]
        );
        assert_eq!(
            (
                rs[0].text().as_str(),
                rs[1].body.len(),
                rs[2].text().as_str()
            ),
            ("abcde", 0, "abcde")
        );
        // Expect: 100-continue: the interim answer comes before the body is sent.
        c.send(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        assert_eq!(c.read_interim().unwrap(), 100);
        c.send(b"data").unwrap();
        assert_eq!(c.read_response().unwrap().text(), "data");
        // Garbage gets a 400 and the connection is closed.
        let mut g = RawHttpClient::connect(addr).unwrap();
        g.send(b"NOT HTTP AT ALL\r\n\r\n\x00\x01").unwrap();
        assert_eq!(g.read_response().unwrap().status, 400);
        assert!(g.closed_by_peer(Duration::from_secs(5)));
        // Same connection still usable; then an explicit close.
        c.send(b"GET /status/404 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        assert_eq!(c.read_response().unwrap().status, 404);
        assert!(c.closed_by_peer(Duration::from_secs(5)));
    }
}
