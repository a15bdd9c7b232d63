//! nginx (1 master + 1 worker, `daemon off`) with its config, pid file, logs and temp paths in
//! its own temp dir, on 127.0.0.1:<free port>.
//!
//! Locations: exactly `/` answers `200 "hello\n"`; the files of [`NginxOpts::static_file`] are
//! served as `/<name>` and `/static/<name>` (anything else is nginx's 404); with
//! [`NginxOpts::proxy_to`], `/proxy/<rest>` is proxied to `<upstream>/<rest>` (so nginx also
//! acts as an HTTP client).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::dirs::TestDir;
use crate::error::{Error, IoContext, Result};
use crate::net::{free_port, wait_for_listen};
use crate::proc::{Proc, children_of};
use crate::pyhttp::write_pattern_file;

/// How to configure nginx.
#[derive(Debug, Clone)]
pub struct NginxOpts {
    /// Upstream base URL for `/proxy/` (e.g. `http://127.0.0.1:8000`).
    pub proxy_to: Option<String>,
    /// Files served as `/<name>` and `/static/<name>`: (name, size in bytes).
    pub static_files: Vec<(String, usize)>,
    /// Keep upstream connections alive (an `upstream` block with `keepalive 8`).
    pub upstream_keepalive: bool,
    /// Extra directives inside the `server` block.
    pub extra_server_conf: String,
}

impl Default for NginxOpts {
    fn default() -> Self {
        NginxOpts {
            proxy_to: None,
            static_files: vec![("file.txt".into(), 1024)],
            upstream_keepalive: false,
            extra_server_conf: String::new(),
        }
    }
}

impl NginxOpts {
    /// Proxies `/proxy/` to this base URL.
    pub fn proxy_to(mut self, upstream: &str) -> Self {
        self.proxy_to = Some(upstream.trim_end_matches('/').to_string());
        self
    }

    /// Adds a static file of `size` bytes, served as `/<name>` and `/static/<name>`.
    pub fn static_file(mut self, name: &str, size: usize) -> Self {
        self.static_files.push((name.to_string(), size));
        self
    }

    /// Keeps upstream connections alive.
    pub fn upstream_keepalive(mut self) -> Self {
        self.upstream_keepalive = true;
        self
    }

    /// Adds raw directives to the `server` block.
    pub fn extra(mut self, conf: &str) -> Self {
        self.extra_server_conf.push_str(conf);
        self.extra_server_conf.push('\n');
        self
    }
}

/// A running nginx.
#[derive(Debug)]
pub struct Nginx {
    proc: Proc,
    port: u16,
    dir: TestDir,
}

/// The nginx binary: `$SONDE_E2E_NGINX`, else /usr/sbin/nginx.
pub fn nginx_bin() -> PathBuf {
    std::env::var_os("SONDE_E2E_NGINX")
        .map_or_else(|| PathBuf::from("/usr/sbin/nginx"), PathBuf::from)
}

fn config(dir: &TestDir, port: u16, opts: &NginxOpts) -> String {
    let d = dir.path().display();
    let mut c = String::new();
    let _ = writeln!(
        c,
        "worker_processes 1;\nmaster_process on;\ndaemon off;\npid {d}/nginx.pid;\nerror_log stderr notice;"
    );
    let _ = writeln!(c, "events {{ worker_connections 256; }}");
    let _ = writeln!(c, "http {{");
    let _ = writeln!(c, "  access_log /dev/stdout;");
    for t in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
        let _ = writeln!(c, "  {t}_temp_path {d}/tmp/{t};");
    }
    let _ = writeln!(
        c,
        "  default_type application/octet-stream;\n  keepalive_timeout 60s;"
    );
    if let (Some(_), true) = (&opts.proxy_to, opts.upstream_keepalive) {
        let hostport = opts
            .proxy_to
            .as_deref()
            .unwrap_or("")
            .trim_start_matches("http://")
            .to_string();
        let _ = writeln!(
            c,
            "  upstream sonde_upstream {{ server {hostport}; keepalive 8; }}"
        );
    }
    let _ = writeln!(
        c,
        "  server {{\n    listen 127.0.0.1:{port};\n    server_name localhost;"
    );
    let _ = writeln!(c, "    location = / {{ return 200 \"hello\\n\"; }}");
    let _ = writeln!(c, "    location / {{ root {d}/static; }}");
    let _ = writeln!(c, "    location /static/ {{ alias {d}/static/; }}");
    if let Some(up) = &opts.proxy_to {
        let target = if opts.upstream_keepalive {
            "http://sonde_upstream".to_string()
        } else {
            up.clone()
        };
        let _ = writeln!(
            c,
            "    location /proxy/ {{ proxy_pass {target}/; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}"
        );
    }
    c.push_str(&opts.extra_server_conf);
    let _ = writeln!(c, "  }}\n}}");
    c
}

impl Nginx {
    /// Starts nginx; panics (with its logs) on failure.
    pub fn start(opts: NginxOpts) -> Nginx {
        Self::try_start(opts).unwrap_or_else(|e| panic!("Nginx::start: {e}"))
    }

    /// Starts nginx, retrying with another port if the chosen one was taken.
    pub fn try_start(opts: NginxOpts) -> Result<Nginx> {
        let bin = nginx_bin();
        if !bin.is_file() {
            return Err(Error::Missing {
                what: "nginx".into(),
                path: bin,
                hint: "apt-get install nginx-light (or set SONDE_E2E_NGINX)".into(),
            });
        }
        let mut last_err = None;
        for _ in 0..3 {
            let dir = TestDir::new("nginx")?;
            dir.subdir("tmp")?;
            let static_dir = dir.subdir("static")?;
            for (name, size) in &opts.static_files {
                write_pattern_file(&static_dir.join(name), *size)?;
            }
            let port = free_port();
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, config(&dir, port, &opts))
                .ctx(|| "writing nginx.conf".to_string())?;
            let mut cmd = Command::new(&bin);
            cmd.arg("-p")
                .arg(dir.path())
                .arg("-c")
                .arg(&conf_path)
                .arg("-e")
                .arg("stderr");
            let proc = Proc::spawn("nginx", cmd, dir.path())?;
            let nginx = Nginx { proc, port, dir };
            match nginx.wait_ready(Duration::from_secs(30)) {
                Ok(()) => return Ok(nginx),
                Err(e) => {
                    if !nginx.proc.stderr().contains("Address already in use") {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Setup("nginx did not start".into())))
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let alive = || self.proc.ensure_running();
        // The master binds before it forks the worker, which logs "start worker process".
        self.proc.wait_for_line("start worker process", timeout)?;
        wait_for_listen(
            self.port,
            deadline.saturating_duration_since(Instant::now()),
            alive,
        )?;
        while self.worker_pids().is_empty() {
            alive()?;
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "the nginx worker".into(),
                    timeout,
                    details: self.proc.logs_tail(50),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
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

    /// The master's pid.
    pub fn master_pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The worker pids.
    pub fn worker_pids(&self) -> Vec<u32> {
        children_of(self.proc.pid())
    }

    /// The nginx process (logs: access log on stdout, error log on stderr).
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The generated configuration.
    pub fn config_text(&self) -> String {
        std::fs::read_to_string(self.dir.join("nginx.conf")).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{http_get, http_request};
    use crate::test_server::TestServer;

    #[test]
    fn serves_hello_static_and_proxies() {
        let upstream = TestServer::start();
        let ng = Nginx::start(
            NginxOpts::default()
                .static_file("big.bin", 100_000)
                .proxy_to(&upstream.base_url()),
        );
        assert_eq!(ng.proc().stdout(), "", "start-up must send no request");
        assert_eq!(http_get(&ng.url("/")), (200, "hello\n".to_string()));
        let r = http_request("GET", &ng.url("/static/big.bin"), &[], b"").unwrap();
        assert_eq!((r.status, r.body.len()), (200, 100_000));
        assert_eq!(http_get(&ng.url("/static/file.txt")).1.len(), 1024);
        assert_eq!(http_get(&ng.url("/big.bin")).1.len(), 100_000);
        assert_eq!(http_get(&ng.url("/missing/42")).0, 404);
        assert_eq!(
            http_get(&ng.url("/proxy/len/10")),
            (200, "abcdefghij".to_string())
        );
        assert_eq!(http_get(&ng.url("/proxy/status/503")).0, 503);
        assert_eq!(ng.worker_pids().len(), 1);
        let master = ng.master_pid();
        let workers = ng.worker_pids();
        drop(ng);
        assert!(!crate::proc::pid_alive(master));
        assert!(workers.iter().all(|w| !crate::proc::pid_alive(*w)));
        // Upstream keep-alive variant.
        let ng = Nginx::start(
            NginxOpts::default()
                .proxy_to(&upstream.base_url())
                .upstream_keepalive(),
        );
        assert!(ng.config_text().contains("keepalive 8"));
        assert_eq!(http_get(&ng.url("/proxy/echo")).0, 404);
        assert_eq!(
            http_get(&ng.url("/proxy/chunked/100?chunks=4")).1.len(),
            100
        );
    }
}
