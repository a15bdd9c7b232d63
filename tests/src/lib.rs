//! Harness shared by the end-to-end tests: real servers (PostgreSQL, a Django app under
//! gunicorn, nginx, Python's http.server, our own HTTP/1.1 test server, the Python OTLP sink),
//! the sonde daemon,
//! HTTP clients, and OTLP/JSON span parsing with span-tree assertions.
//!
//! Every server is a guard: it runs in its own process group with its output captured in its
//! own temporary directory, binds 127.0.0.1 on a free port, and is killed (the whole group)
//! and its directory removed when dropped, also when the test panics. While a test panics,
//! each process prints the last 50 lines of its stdout and stderr, so the failure comes with
//! the servers' logs. Tests run as root in parallel; nothing here uses a fixed port or path.
//! Do not keep these guards in `static`s: statics are never dropped, so their processes leak.
//!
//! Readiness is read from the servers' own log lines and `/proc/net/tcp`, never probed with a
//! request, so the first request a scenario sends is the first a server (and sonde) sees.
//! Set-up that does talk: `Django::start` runs `migrate` and `seed` against PostgreSQL over TCP
//! (start sonde afterwards unless the test wants those spans); `Postgres::psql` and
//! `create_database` use the unix socket (`psql_tcp` goes over TCP on purpose).
//!
//! A scenario reads like this:
//!
//! ```no_run
//! use std::time::Duration;
//! use sonde_e2e::{Django, DjangoOpts, Postgres, Sonde, assert_span_tree, http_get};
//!
//! let pg = Postgres::start();
//! let app = Django::start(&pg, DjangoOpts::default()); // gunicorn, 2 sync workers
//! let sonde = Sonde::start(&["--port", &app.port().to_string()]);
//! assert_eq!(http_get(&app.url("/samples/")).0, 200);
//! let spans = sonde.wait_for_spans(|s| s.len() >= 4, Duration::from_secs(30));
//! // The test process's own request is traced too: it is the root.
//! assert_span_tree(&spans, "
//!     CLIENT GET
//!       SERVER GET /samples/
//!         CLIENT SELECT lab_sample
//!         CLIENT SELECT lab_variant
//! ");
//! ```
//!
//! Why no crates for process control or HTTP: `std::process` with `process_group(0)` plus
//! `libc::kill` is all the group handling needs (crates like `command-group` add async and
//! Windows layers we don't use), and the HTTP client must expose connection-level control
//! (pipelining, `Expect`, close-delimited bodies) that `ureq`/`reqwest` deliberately hide; see
//! [`http`]. Dependencies are `serde_json`, `regex-lite`, `tempfile`, `base64`, `libc` and
//! `thiserror`.

pub mod dirs;
pub mod django;
pub mod error;
pub mod http;
pub mod net;
pub mod nginx;
pub mod postgres;
pub mod proc;
pub mod prometheus;
pub mod pyhttp;
pub mod sink;
pub mod sonde;
pub mod span;
pub mod test_server;

use std::path::PathBuf;
use std::sync::OnceLock;

pub use dirs::TestDir;
pub use django::{DbDriver, Django, DjangoOpts, DjangoServer, WorkerClass};
pub use error::{Error, Result};
pub use http::{
    CurlOutput, HttpResponse, RawHttpClient, curl, curl_status, http_get, http_post,
    http_post_json, http_request,
};
pub use net::{free_port, wait_for_port};
pub use nginx::{Nginx, NginxOpts};
pub use postgres::Postgres;
pub use proc::{LineMatch, Proc};
pub use prometheus::{Prometheus, promtool_check};
pub use pyhttp::PyHttpServer;
pub use sink::OtlpSink;
pub use sonde::Sonde;
pub use span::{
    AttrValue, Span, SpanEvent, SpanTree, assert_span_tree, assert_span_tree_with, dump_spans,
    expect_span, parse_json_lines, spans_from_sink_file, spans_named, traces_with_shape,
};
pub use test_server::TestServer;

/// The `tests/` directory of the repository (this crate's manifest directory).
pub fn e2e_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace root (parent of `tests/`).
pub fn workspace_dir() -> PathBuf {
    let e2e = e2e_dir();
    e2e.parent().map(PathBuf::from).unwrap_or(e2e)
}

/// `tests/apps`.
pub fn apps_dir() -> PathBuf {
    e2e_dir().join("apps")
}

/// Finds a binary of this workspace: `$<env_var>`, else next to the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`, which also honours
/// `CARGO_TARGET_DIR`), else `<workspace>/target/debug/<name>`.
pub fn find_target_bin(name: &str, env_var: &str, build_hint: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(Error::Missing {
                what: format!("{name} (from ${env_var})"),
                path: p,
                hint: format!("fix ${env_var} or unset it"),
            })
        };
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(name));
        }
    }
    candidates.push(workspace_dir().join("target").join("debug").join(name));
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    Err(Error::Missing {
        what: name.to_string(),
        path: candidates.last().cloned().unwrap_or_default(),
        hint: format!(
            "build it first (`{build_hint}`) or set ${env_var}; also looked at {candidates:?}"
        ),
    })
}

/// The Python interpreter the apps run under: `$SONDE_E2E_PYTHON`, else the real executable
/// behind `python3` on PATH (resolving pyenv-style shims, so the traced process is Python
/// itself and not a shell wrapper).
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        if let Some(p) = std::env::var_os("SONDE_E2E_PYTHON") {
            return PathBuf::from(p);
        }
        std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .map_or_else(|| PathBuf::from("python3"), PathBuf::from)
    })
    .clone()
}

/// Runs a command to completion and returns its stdout, or [`Error::Command`] with both outputs.
pub fn run_command(cmd: &mut std::process::Command) -> Result<String> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::io(format!("running {cmd:?}"), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(Error::Command {
            command: format!("{cmd:?}"),
            status: out.status.to_string(),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_python_and_reports_missing_binaries() {
        assert!(python().is_absolute() || python() == std::path::Path::new("python3"));
        let err = find_target_bin("no-such-binary-xyz", "SONDE_E2E_NO_SUCH_VAR", "cargo build")
            .unwrap_err();
        assert!(err.to_string().contains("no-such-binary-xyz"));
        let out = run_command(
            std::process::Command::new("sh").args(["-c", "echo out; echo err >&2; exit 2"]),
        );
        let msg = out.unwrap_err().to_string();
        assert!(msg.contains("out") && msg.contains("err"), "{msg}");
    }
}
