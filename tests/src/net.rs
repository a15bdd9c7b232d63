//! Ports on 127.0.0.1: picking free ones and waiting until a server answers on one.

use std::collections::HashSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A port on 127.0.0.1 that was free a moment ago and that this test process has not handed
/// out before (so parallel tests in one binary never race for the same port).
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    for _ in 0..100 {
        let port = match TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
            Ok(addr) => addr.port(),
            Err(e) => panic!("cannot bind 127.0.0.1:0: {e}"),
        };
        let mut set = given.lock().unwrap_or_else(|p| p.into_inner());
        if set.insert(port) {
            return port;
        }
    }
    panic!("no fresh free port after 100 attempts")
}

/// `127.0.0.1:<port>` as a socket address.
pub fn localhost(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Whether a TCP connection to `addr` succeeds right now.
pub fn port_open(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Whether some socket listens on TCP `port` (any address), read from /proc/net/tcp{,6}:
/// a readiness check that sends no traffic a tracer could see.
pub fn is_listening(port: u16) -> bool {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let local = cols.nth(1);
                let state = cols.nth(1);
                state == Some("0A")
                    && local
                        .and_then(|l| l.rsplit_once(':'))
                        .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                        == Some(port)
            })
        })
    })
}

/// Polls [`is_listening`] until `port` listens; `alive` is asked between attempts and may abort
/// the wait with an error (typically: the server process exited).
pub fn wait_for_listen(
    port: u16,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if is_listening(port) {
            return Ok(());
        }
        alive()?;
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("something to listen on port {port}"),
                timeout,
                details: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until a TCP connection to `addr` succeeds; `alive` is asked between attempts and may
/// abort the wait with an error (typically: the server process exited).
pub fn wait_for_port(
    addr: SocketAddr,
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if port_open(addr) {
            return Ok(());
        }
        alive()?;
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("{addr} to accept connections"),
                timeout,
                details: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_bindable() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        assert!(!is_listening(a));
        let l = TcpListener::bind(localhost(a)).unwrap();
        assert!(is_listening(a));
        wait_for_listen(a, Duration::from_secs(1), || Ok(())).unwrap();
        assert!(port_open(localhost(a)));
        drop(l);
        let err = wait_for_port(localhost(b), Duration::from_millis(300), || Ok(())).unwrap_err();
        assert!(err.to_string().contains("timed out"));
    }
}
