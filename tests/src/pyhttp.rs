//! `python3 -m http.server` serving a temp dir of generated files on 127.0.0.1:<free port>
//! (an HTTP/1.0, close-per-request server written in Python).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dirs::TestDir;
use crate::error::{Error, IoContext, Result};
use crate::net::{free_port, wait_for_listen};
use crate::proc::Proc;
use crate::python;

/// Writes `size` bytes of a repeating `abc..z` pattern to `path`.
pub fn write_pattern_file(path: &Path, size: usize) -> Result<()> {
    let data: Vec<u8> = b"abcdefghijklmnopqrstuvwxyz"
        .iter()
        .copied()
        .cycle()
        .take(size)
        .collect();
    std::fs::write(path, data).ctx(|| format!("writing {}", path.display()))
}

/// A running `python3 -m http.server`.
#[derive(Debug)]
pub struct PyHttpServer {
    proc: Proc,
    port: u16,
    dir: TestDir,
}

impl PyHttpServer {
    /// Serves files `(name, size)`; panics on failure.
    pub fn start(files: &[(&str, usize)]) -> PyHttpServer {
        Self::try_start(files).unwrap_or_else(|e| panic!("PyHttpServer::start: {e}"))
    }

    /// Serves files `(name, size)` (names may not contain `/`).
    pub fn try_start(files: &[(&str, usize)]) -> Result<PyHttpServer> {
        let mut last_err = None;
        for _ in 0..3 {
            let dir = TestDir::new("pyhttp")?;
            let root = dir.subdir("www")?;
            for (name, size) in files {
                if name.contains('/') || name.is_empty() {
                    return Err(Error::Setup(format!("invalid file name {name:?}")));
                }
                write_pattern_file(&root.join(name), *size)?;
            }
            let port = free_port();
            let mut cmd = Command::new(python());
            cmd.args([
                "-u",
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(&root)
            .env("PYTHONDONTWRITEBYTECODE", "1");
            let proc = Proc::spawn("http.server", cmd, dir.path())?;
            let srv = PyHttpServer { proc, port, dir };
            match srv.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return Ok(srv),
                Err(e) => {
                    if !srv.proc.stderr().contains("Address already in use") {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Setup("http.server did not start".into())))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let alive = || self.proc.ensure_running();
        // Printed right after the socket is bound.
        self.proc.wait_for_line("Serving HTTP on", timeout)?;
        wait_for_listen(
            self.port,
            deadline.saturating_duration_since(Instant::now()),
            alive,
        )
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `base_url() + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The server process.
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The served directory.
    pub fn root(&self) -> std::path::PathBuf {
        self.dir.join("www")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::http_request;

    #[test]
    fn serves_generated_files() {
        let srv = PyHttpServer::start(&[("a.txt", 10), ("big.bin", 70_000)]);
        assert!(
            !srv.proc().stderr().contains("GET"),
            "start-up must send no request"
        );
        let r = http_request("GET", &srv.url("/a.txt"), &[], b"").unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "abcdefghij"));
        assert_eq!(
            http_request("GET", &srv.url("/big.bin"), &[], b"")
                .unwrap()
                .body
                .len(),
            70_000
        );
        assert_eq!(
            http_request("GET", &srv.url("/missing"), &[], b"")
                .unwrap()
                .status,
            404
        );
        assert!(PyHttpServer::try_start(&[("../x", 1)]).is_err());
    }
}
