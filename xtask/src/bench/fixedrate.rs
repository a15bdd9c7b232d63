//! A fixed-rate HTTP/1.1 keep-alive client (wrk cannot pace its requests). Each connection
//! sends on its own schedule; latency counts from the scheduled send time, so a stalled
//! server shows up in the percentiles instead of silently lowering the rate (beyond the
//! timer's own slack, see `TIMER_SLACK`).
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::measure::percentile_sorted;

const TIMER_SLACK: Duration = Duration::from_millis(2);

#[derive(Debug, Default)]
pub struct FixedRateResult {
    pub completed: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl FixedRateResult {
    pub fn achieved_rps(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The first complete response in `buf`: its length and whether the server closes after it.
#[derive(Debug, PartialEq, Eq)]
pub struct Framed {
    pub len: usize,
    pub close: bool,
}

/// Frames the first complete response in `buf`, if there is one.
pub fn complete_response_len(buf: &[u8]) -> Result<Option<Framed>> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf).context("bad HTTP response")? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(head) => {
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .context("response without Content-Length")?;
            let close = resp.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("connection") && h.value.eq_ignore_ascii_case(b"close")
            });
            let total = head.checked_add(len).context("absurd Content-Length")?;
            Ok((buf.len() >= total).then_some(Framed { len: total, close }))
        }
    }
}

async fn connect(port: u16) -> Result<TcpStream> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends one request and reads its response; `Ok(false)` if the server closes afterwards.
async fn exchange(stream: &mut TcpStream, buf: &mut Vec<u8>, errors: &mut u64) -> Result<bool> {
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: sonde-bench\r\n\r\n";
    let mut chunk = [0u8; 4096];
    stream.write_all(REQUEST).await?;
    loop {
        if let Some(f) = complete_response_len(buf)? {
            if !buf.starts_with(b"HTTP/1.1 200") {
                *errors += 1;
            }
            buf.drain(..f.len);
            return Ok(!f.close);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            anyhow::bail!("server closed the connection mid-response");
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
}

async fn connection(
    port: u16,
    first: Instant,
    period: Duration,
    end: Instant,
) -> Result<(Vec<u64>, u64)> {
    let mut stream = connect(port).await?;
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut buf = Vec::with_capacity(4096);
    let mut due = first;
    while due < end {
        tokio::time::sleep_until(due.into()).await;
        // tokio's timer wakes up to ~1 ms late; lateness within that slack is the client's,
        // beyond it the connection is backlogged and latency counts from the schedule.
        let sent = Instant::now();
        let from = if sent.saturating_duration_since(due) <= TIMER_SLACK {
            sent
        } else {
            due
        };
        match exchange(&mut stream, &mut buf, &mut errors).await {
            Ok(keep) => {
                latencies.push(u64::try_from(from.elapsed().as_micros()).unwrap_or(u64::MAX));
                if !keep {
                    stream = connect(port).await?;
                }
            }
            Err(e) => {
                // Counted, then a fresh connection keeps the schedule going.
                eprintln!("[bench] fixed-rate request failed: {e:#}");
                errors += 1;
                buf.clear();
                stream = connect(port).await?;
            }
        }
        due += period;
    }
    Ok((latencies, errors))
}

/// Sends `rate` requests per second over `connections` keep-alive connections for `duration`.
pub fn run(port: u16, rate: u32, connections: u32, duration: Duration) -> Result<FixedRateResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let connections = connections.max(1);
        let period = Duration::from_secs_f64(f64::from(connections) / f64::from(rate.max(1)));
        let start = Instant::now() + Duration::from_millis(50);
        let end = start + duration;
        let tasks: Vec<_> = (0..connections)
            .map(|i| {
                let first = start + period.mul_f64(f64::from(i) / f64::from(connections));
                tokio::spawn(connection(port, first, period, end))
            })
            .collect();
        let mut all = Vec::new();
        let mut errors = 0u64;
        for t in tasks {
            match t.await {
                Ok(Ok((lat, e))) => {
                    all.extend(lat);
                    errors += e;
                }
                Ok(Err(e)) => {
                    eprintln!("[bench] fixed-rate connection failed: {e:#}");
                    errors += 1;
                }
                Err(e) => eprintln!("[bench] fixed-rate task: {e}"),
            }
        }
        // A server that falls behind stretches the run: the achieved rate drops below `rate`.
        let elapsed = start.elapsed().max(duration);
        all.sort_unstable();
        Ok(FixedRateResult {
            completed: all.len() as u64,
            errors,
            elapsed,
            p50_us: percentile_sorted(&all, 50.0).unwrap_or(0),
            p99_us: percentile_sorted(&all, 99.0).unwrap_or(0),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_framing() {
        let one = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 6\r\n\r\nhello\n";
        let framed = |len, close| Some(Framed { len, close });
        assert_eq!(
            complete_response_len(one).unwrap(),
            framed(one.len(), false)
        );
        assert_eq!(complete_response_len(&one[..one.len() - 1]).unwrap(), None);
        assert_eq!(complete_response_len(&one[..10]).unwrap(), None);
        let mut two = one.to_vec();
        two.extend_from_slice(one);
        assert_eq!(
            complete_response_len(&two).unwrap(),
            framed(one.len(), false)
        );
        let last = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert_eq!(
            complete_response_len(last).unwrap(),
            framed(last.len(), true)
        );
        assert!(complete_response_len(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(complete_response_len(b"\x00\x01garbage\r\n\r\n").is_err());
    }

    /// A keep-alive server that closes every connection after 5 responses, like nginx after
    /// `keepalive_requests`: the client reconnects and keeps its rate.
    #[test]
    fn holds_the_rate_across_server_closes() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    for i in 1..=5 {
                        let Ok(n) = conn.read(&mut buf) else { return };
                        if n == 0 {
                            return;
                        }
                        let close = if i == 5 { "Connection: close\r\n" } else { "" };
                        let resp =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n{close}\r\nhello\n");
                        if conn.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let r = run(port, 400, 4, Duration::from_secs(1)).unwrap();
        assert_eq!(r.errors, 0);
        assert!((380..=420).contains(&r.completed), "{r:?}");
        assert!(r.achieved_rps() > 300.0, "{r:?}");
        assert!(r.p99_us < 100_000, "{r:?}");
    }
}
