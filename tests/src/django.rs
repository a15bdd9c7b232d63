//! The uninstrumented Django test app (`tests/apps/djangoapp`) against a [`Postgres`], under
//! gunicorn (sync or gthread workers) or Django's runserver, on 127.0.0.1:<free port>.
//!
//! `start` creates the database, runs the committed migrations and the `seed` command, starts
//! the server and returns once every worker has loaded the app. It sends no request itself, so
//! the first request a scenario sends is the first the app (and sonde) sees.
//! The OpenTelemetry SDK is enabled only through [`DjangoOpts::otel`].

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::dirs::TestDir;
use crate::error::{Error, Result};
use crate::net::{free_port, wait_for_listen};
use crate::postgres::{Postgres, SUPERUSER};
use crate::proc::{Proc, children_of};
use crate::{apps_dir, python, run_command};

/// Which server runs the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DjangoServer {
    /// `gunicorn` with a master and [`DjangoOpts::workers`] worker processes.
    Gunicorn,
    /// `manage.py runserver --noreload`: one process, a thread per request.
    Runserver,
    /// gunicorn with `-k uvicorn.workers.UvicornWorker` on `djangoapp.asgi:application`:
    /// [`DjangoOpts::workers`] event-loop workers (sync views on asgiref's executor thread).
    UvicornWorker,
    /// `uvicorn djangoapp.asgi:application`: one process, one event loop.
    Uvicorn,
}

/// gunicorn's worker class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerClass {
    /// One request at a time per worker process.
    Sync,
    /// A thread pool of this size per worker process.
    Gthread {
        /// Threads per worker.
        threads: u32,
    },
}

/// The PostgreSQL client library Django uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbDriver {
    /// psycopg2 (libpq, simple query protocol); what `otel_psycopg2` instruments.
    Psycopg2,
    /// psycopg 3.
    Psycopg3,
}

/// How to run the app; `DjangoOpts::default()` is gunicorn, 2 sync workers, psycopg2, seeded
/// database `djangoapp`.
#[derive(Debug, Clone)]
pub struct DjangoOpts {
    /// The server.
    pub server: DjangoServer,
    /// gunicorn worker processes.
    pub workers: u32,
    /// gunicorn worker class.
    pub worker_class: WorkerClass,
    /// Extra environment (applied last, so it can override anything).
    pub env: Vec<(String, String)>,
    /// Database name (created if missing).
    pub db_name: String,
    /// Whether to run `manage.py seed` (3 samples, 6 variants, 3 analyses).
    pub seed: bool,
    /// Django's `CONN_MAX_AGE` in seconds (0: a new connection per request).
    pub conn_max_age: u32,
    /// The PostgreSQL client library.
    pub db_driver: DbDriver,
}

impl Default for DjangoOpts {
    fn default() -> Self {
        DjangoOpts {
            server: DjangoServer::Gunicorn,
            workers: 2,
            worker_class: WorkerClass::Sync,
            env: Vec::new(),
            db_name: "djangoapp".into(),
            seed: true,
            conn_max_age: 0,
            db_driver: DbDriver::Psycopg2,
        }
    }
}

impl DjangoOpts {
    /// Number of gunicorn workers.
    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    /// gunicorn sync workers (the default).
    pub fn sync(mut self) -> Self {
        self.worker_class = WorkerClass::Sync;
        self
    }

    /// gunicorn gthread workers with `threads` threads each.
    pub fn gthread(mut self, threads: u32) -> Self {
        self.worker_class = WorkerClass::Gthread { threads };
        self
    }

    /// Django under ASGI: gunicorn with uvicorn workers.
    pub fn uvicorn_worker(mut self) -> Self {
        self.server = DjangoServer::UvicornWorker;
        self
    }

    /// Django under ASGI: uvicorn itself, one process.
    pub fn uvicorn(mut self) -> Self {
        self.server = DjangoServer::Uvicorn;
        self
    }

    /// The OpenTelemetry SDK set up in the app's code (a `TracerProvider` with a default
    /// `BatchSpanProcessor`, 5 s delay), exporting over `protocol` (`grpc` or `http`) to
    /// `endpoint` (`127.0.0.1:<port>`), with no `OTEL_*` variable in its environment.
    pub fn sdk_in_code(self, protocol: &str, endpoint: &str) -> Self {
        self.env("SONDE_TEST_SDK_IN_CODE", protocol)
            .env("SONDE_TEST_SDK_ENDPOINT", endpoint)
    }

    /// Django's runserver instead of gunicorn.
    pub fn runserver(mut self) -> Self {
        self.server = DjangoServer::Runserver;
        self
    }

    /// One more environment variable (e.g. `DOWNSTREAM_URL`, `OTEL_SERVICE_NAME`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// The database name.
    pub fn db_name(mut self, name: &str) -> Self {
        self.db_name = name.to_string();
        self
    }

    /// Whether to seed rows.
    pub fn seed(mut self, seed: bool) -> Self {
        self.seed = seed;
        self
    }

    /// Django's persistent-connection lifetime in seconds.
    pub fn conn_max_age(mut self, secs: u32) -> Self {
        self.conn_max_age = secs;
        self
    }

    /// The PostgreSQL client library.
    pub fn db_driver(mut self, driver: DbDriver) -> Self {
        self.db_driver = driver;
        self
    }

    /// Enables the OpenTelemetry SDK in the app: `protocol` is `grpc` or `http`, `endpoint` the
    /// base URL of the OTLP receiver (e.g. `http://127.0.0.1:4318`; the HTTP exporter appends
    /// `/v1/traces`). DjangoInstrumentor is enabled; see also [`DjangoOpts::otel_psycopg2`].
    pub fn otel(self, protocol: &str, endpoint: &str) -> Self {
        let s = self
            .env("SONDE_TEST_OTEL", protocol)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
        if protocol == "grpc" {
            s.env("OTEL_EXPORTER_OTLP_INSECURE", "true")
        } else {
            s
        }
    }

    /// Also instruments psycopg2 (SDK client spans for every query).
    pub fn otel_psycopg2(self) -> Self {
        self.env("SONDE_TEST_OTEL_PSYCOPG2", "1")
    }

    /// The SDK's BatchSpanProcessor schedule delay (default 1000 ms).
    pub fn otel_delay_ms(self, ms: u32) -> Self {
        self.env("SONDE_TEST_OTEL_DELAY_MS", &ms.to_string())
    }
}

/// The running app.
#[derive(Debug)]
pub struct Django {
    server: Proc,
    port: u16,
    opts: DjangoOpts,
    _dir: TestDir,
}

/// What gunicorn.conf.py's `post_worker_init` hook prints for each worker.
const WORKER_READY: &str = "sonde-e2e: worker ready pid=";

/// `tests/apps/djangoapp`.
pub fn django_app_dir() -> PathBuf {
    apps_dir().join("djangoapp")
}

/// Whether this gunicorn knows `--no-control-socket` (gunicorn ≥ 25 opens a control socket at a
/// fixed path by default, which parallel tests would fight over).
fn gunicorn_has_control_socket() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        Command::new(python())
            .args(["-m", "gunicorn", "--help"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("--no-control-socket"))
            .unwrap_or(false)
    })
}

impl Django {
    /// Starts the app; panics (with its logs) on failure.
    pub fn start(pg: &Postgres, opts: DjangoOpts) -> Django {
        Self::try_start(pg, opts).unwrap_or_else(|e| panic!("Django::start: {e}"))
    }

    fn python_cmd(pg: &Postgres, opts: &DjangoOpts) -> Command {
        let app = django_app_dir();
        let mut cmd = Command::new(python());
        cmd.current_dir(&app)
            .env_remove("SONDE_TEST_OTEL")
            .env_remove("SONDE_TEST_OTEL_PSYCOPG2")
            .env_remove("SONDE_TEST_SDK_IN_CODE")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .env("DJANGO_SETTINGS_MODULE", "djangoapp.settings")
            .env("DB_HOST", "127.0.0.1")
            .env("DB_PORT", pg.port().to_string())
            .env("DB_NAME", &opts.db_name)
            .env("DB_USER", SUPERUSER)
            .env("DB_CONN_MAX_AGE", opts.conn_max_age.to_string())
            .env(
                "DB_DRIVER",
                match opts.db_driver {
                    DbDriver::Psycopg2 => "psycopg2",
                    DbDriver::Psycopg3 => "psycopg",
                },
            );
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the app.
    pub fn try_start(pg: &Postgres, opts: DjangoOpts) -> Result<Django> {
        let app = django_app_dir();
        if !app.join("manage.py").is_file() {
            return Err(Error::Missing {
                what: "the Django test app".into(),
                path: app,
                hint: "run from a full checkout".into(),
            });
        }
        pg.try_create_database(&opts.db_name)?;
        let mut migrate = Self::python_cmd(pg, &opts);
        migrate.args(["manage.py", "migrate", "--noinput", "-v", "0"]);
        // The SDK is not wanted in management commands.
        migrate
            .env_remove("SONDE_TEST_OTEL")
            .env_remove("SONDE_TEST_SDK_IN_CODE");
        run_command(&mut migrate)?;
        if opts.seed {
            let mut seed = Self::python_cmd(pg, &opts);
            seed.args(["manage.py", "seed"])
                .env_remove("SONDE_TEST_OTEL")
                .env_remove("SONDE_TEST_SDK_IN_CODE");
            run_command(&mut seed)?;
        }
        let mut last_err = None;
        for _ in 0..3 {
            let dir = TestDir::new("django")?;
            let port = free_port();
            let mut cmd = Self::python_cmd(pg, &opts);
            let name = match opts.server {
                DjangoServer::Gunicorn | DjangoServer::UvicornWorker => {
                    let entry = if opts.server == DjangoServer::Gunicorn {
                        "djangoapp.wsgi:application"
                    } else {
                        "djangoapp.asgi:application"
                    };
                    cmd.args(["-m", "gunicorn", entry, "-c"])
                        .arg(app.join("gunicorn.conf.py"))
                        .arg("--bind")
                        .arg(format!("127.0.0.1:{port}"))
                        .arg("--workers")
                        .arg(opts.workers.max(1).to_string())
                        .args([
                            "--access-logfile",
                            "-",
                            "--error-logfile",
                            "-",
                            "--log-level",
                            "info",
                        ])
                        .args(["--timeout", "120", "--graceful-timeout", "10"]);
                    match opts.worker_class {
                        _ if opts.server == DjangoServer::UvicornWorker => {
                            cmd.args(["--worker-class", "uvicorn.workers.UvicornWorker"]);
                        }
                        WorkerClass::Sync => {
                            cmd.args(["--worker-class", "sync"]);
                        }
                        WorkerClass::Gthread { threads } => {
                            cmd.args(["--worker-class", "gthread", "--threads"])
                                .arg(threads.max(1).to_string());
                        }
                    }
                    if gunicorn_has_control_socket() {
                        cmd.arg("--no-control-socket");
                    }
                    "gunicorn"
                }
                DjangoServer::Runserver => {
                    cmd.args(["manage.py", "runserver", "--noreload"])
                        .arg(format!("127.0.0.1:{port}"));
                    "runserver"
                }
                DjangoServer::Uvicorn => {
                    cmd.args([
                        "-m",
                        "uvicorn",
                        "djangoapp.asgi:application",
                        "--host",
                        "127.0.0.1",
                        "--port",
                    ])
                    .arg(port.to_string())
                    .args(["--log-level", "info", "--no-access-log"]);
                    "uvicorn"
                }
            };
            let server = Proc::spawn(name, cmd, dir.path())?;
            let django = Django {
                server,
                port,
                opts: opts.clone(),
                _dir: dir,
            };
            match django.wait_ready(Duration::from_secs(90)) {
                Ok(()) => return Ok(django),
                Err(e) => {
                    let logs = django.server.stderr() + &django.server.stdout();
                    if !logs.contains("Address already in use")
                        && !logs.contains("That port is already in use")
                        && !logs.contains("address already in use")
                    {
                        return Err(e);
                    }
                    // Another test took the port between free_port() and bind: try another.
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Setup("the Django app did not start".into())))
    }

    /// Waits for the server's own readiness lines; sends no HTTP request, so neither sonde nor
    /// an SDK exporter ever sees warm-up traffic.
    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let alive = || self.server.ensure_running();
        match self.opts.server {
            DjangoServer::Gunicorn | DjangoServer::UvicornWorker => {
                self.server.wait_for_line(
                    format!("Listening at: http://127.0.0.1:{}", self.port),
                    timeout,
                )?;
                let want = usize::try_from(self.opts.workers.max(1)).unwrap_or(1);
                loop {
                    // Printed by the post_worker_init hook once a worker has loaded the app.
                    let ready = self.server.stdout().matches(WORKER_READY).count();
                    if ready >= want && self.worker_pids().len() >= want {
                        return Ok(());
                    }
                    alive()?;
                    if Instant::now() >= deadline {
                        return Err(Error::Timeout {
                            what: format!("{want} gunicorn workers to load the app ({ready} did)"),
                            timeout,
                            details: self.server.logs_tail(50),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            DjangoServer::Runserver => {
                self.server.wait_for_line(
                    format!(
                        "Starting development server at http://127.0.0.1:{}/",
                        self.port
                    ),
                    timeout,
                )?;
                wait_for_listen(
                    self.port,
                    deadline.saturating_duration_since(Instant::now()),
                    alive,
                )
            }
            DjangoServer::Uvicorn => {
                // Printed once the app is imported and the socket is bound.
                self.server.wait_for_line(
                    format!("Uvicorn running on http://127.0.0.1:{}", self.port),
                    timeout,
                )?;
                wait_for_listen(
                    self.port,
                    deadline.saturating_duration_since(Instant::now()),
                    alive,
                )
            }
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `base_url() + path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The options it runs with.
    pub fn opts(&self) -> &DjangoOpts {
        &self.opts
    }

    /// The gunicorn master's (or runserver's) pid.
    pub fn master_pid(&self) -> u32 {
        self.server.pid()
    }

    /// The gunicorn worker pids (empty under runserver and uvicorn), read from /proc.
    pub fn worker_pids(&self) -> Vec<u32> {
        match self.opts.server {
            DjangoServer::Gunicorn | DjangoServer::UvicornWorker => children_of(self.server.pid()),
            DjangoServer::Runserver | DjangoServer::Uvicorn => Vec::new(),
        }
    }

    /// Master pid first, then the worker pids.
    pub fn pids(&self) -> Vec<u32> {
        let mut v = vec![self.server.pid()];
        v.extend(self.worker_pids());
        v
    }

    /// The server process (logs, signals).
    pub fn proc(&self) -> &Proc {
        &self.server
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{http_get, http_post_json};
    use crate::pyhttp::PyHttpServer;

    fn json(body: &str) -> serde_json::Value {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
    }

    #[test]
    fn gunicorn_serves_every_view() {
        let pg = Postgres::start();
        let downstream = PyHttpServer::start(&[("file.bin", 1234)]);
        let dj = Django::start(
            &pg,
            DjangoOpts::default().env(
                "DOWNSTREAM_URL",
                &format!("{}/file.bin", downstream.base_url()),
            ),
        );
        let pids = dj.pids();
        assert_eq!(pids.len(), 3, "master + 2 workers: {pids:?}");
        assert_eq!(pids[0], dj.master_pid());
        assert!(
            !dj.proc().stdout().contains("HTTP/1.1\""),
            "start-up must send no request"
        );

        let (s, b) = http_get(&dj.url("/health"));
        assert_eq!(
            (s, json(&b)["status"].as_str(), json(&b)["driver"].as_str()),
            (200, Some("ok"), Some("psycopg2"))
        );
        pg.log_all_statements();
        let (s, b) = http_get(&dj.url("/samples/"));
        let log = pg.statement_log();
        let sent: Vec<&String> = log.iter().filter(|s| s.contains("lab_")).collect();
        assert_eq!(sent.len(), 2, "{log:#?}");
        assert!(
            sent[0].starts_with("SELECT COUNT(*)") && sent[1].contains("INNER JOIN \"lab_sample\""),
            "{log:#?}"
        );
        assert!(!log.iter().any(|s| s.contains("TIME ZONE")), "{log:#?}");
        let v = json(&b);
        assert_eq!(
            (
                s,
                v["count"].as_i64(),
                v["variants"].as_array().map(Vec::len)
            ),
            (200, Some(3), Some(6))
        );
        let (s, b) = http_get(&dj.url("/analysis/1"));
        assert_eq!(
            (s, json(&b)["variants"].as_array().map(Vec::len)),
            (200, Some(2))
        );
        assert_eq!(http_get(&dj.url("/analysis/999")).0, 404);
        let (s, b) = http_post_json(&dj.url("/analysis/"), r#"{"sample_id": 2, "score": 1.5}"#);
        assert_eq!((s, json(&b)["sample_id"].as_i64()), (201, Some(2)));
        assert_eq!(
            pg.psql("djangoapp", "SELECT count(*) FROM lab_analysis"),
            "4"
        );
        assert_eq!(http_get(&dj.url("/fail/db")).0, 500);
        let (s, b) = http_get(&dj.url("/fail/unique"));
        assert_eq!(
            (s, json(&b)["error"].as_str()),
            (409, Some("duplicate variant key"))
        );
        let (s, b) = http_get(&dj.url("/call-downstream"));
        let v = json(&b);
        assert_eq!(
            (
                s,
                v["downstream_status"].as_i64(),
                v["downstream_bytes"].as_i64()
            ),
            (200, Some(200), Some(1234))
        );
        let t = Instant::now();
        assert_eq!(http_get(&dj.url("/sleep?ms=200")).0, 200);
        assert!(t.elapsed() >= Duration::from_millis(200));
        let t = Instant::now();
        assert_eq!(http_get(&dj.url("/sql-sleep?ms=200")).0, 200);
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert_eq!(http_get(&dj.url("/nope")).0, 404);

        // Everything is gone after drop.
        drop(dj);
        for pid in pids {
            assert!(!crate::proc::pid_alive(pid), "pid {pid} leaked");
        }
    }

    #[test]
    fn otel_sdk_mode_exports_to_the_configured_endpoint() {
        let pg = Postgres::start();
        // The test server answers the exporter's POST /v1/traces with 404 (not retried) and logs it.
        let receiver = crate::test_server::TestServer::start();
        let dj = Django::start(
            &pg,
            DjangoOpts::default()
                .workers(1)
                .otel("http", &receiver.base_url())
                .otel_psycopg2()
                .otel_delay_ms(100)
                .env("OTEL_SERVICE_NAME", "djangoapp-sdk"),
        );
        assert_eq!(http_get(&dj.url("/samples/")).0, 200);
        receiver
            .proc()
            .wait_for_line(
                crate::proc::LineMatch::regex(r"^request POST /v1/traces body=[1-9]"),
                Duration::from_secs(20),
            )
            .unwrap();
        // Without the option the app stays uninstrumented: nothing more is exported.
        let plain = Django::start(&pg, DjangoOpts::default().workers(1).seed(false));
        assert_eq!(http_get(&plain.url("/samples/")).0, 200);
        std::thread::sleep(Duration::from_millis(500));
        let exports = receiver.proc().stdout().matches("POST /v1/traces").count();
        assert!(exports >= 1);
        drop(dj);
        std::thread::sleep(Duration::from_millis(300));
        let after = receiver.proc().stdout().matches("POST /v1/traces").count();
        assert_eq!(http_get(&plain.url("/health")).0, 200);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(
            receiver.proc().stdout().matches("POST /v1/traces").count(),
            after
        );
    }

    #[test]
    fn gthread_and_runserver_variants_start() {
        let pg = Postgres::start();
        let dj = Django::start(
            &pg,
            DjangoOpts::default()
                .workers(1)
                .gthread(4)
                .db_name("gthreaddb"),
        );
        assert_eq!(dj.worker_pids().len(), 1);
        assert_eq!(http_get(&dj.url("/samples/")).0, 200);
        let rs = Django::start(
            &pg,
            DjangoOpts::default()
                .runserver()
                .db_name("gthreaddb")
                .seed(false)
                .db_driver(DbDriver::Psycopg3),
        );
        assert_eq!(
            json(&http_get(&rs.url("/health")).1)["driver"].as_str(),
            Some("psycopg")
        );
        assert_eq!(rs.pids(), vec![rs.master_pid()]);
        let (s, b) = http_get(&rs.url("/samples/"));
        assert_eq!((s, json(&b)["count"].as_i64()), (200, Some(3)));
    }
}
