//! A throw-away PostgreSQL 15 cluster: initdb into a temp dir, trust auth, 127.0.0.1 on a free
//! port, unix socket in the temp dir, `fsync=off`. Stopped (`pg_ctl stop -m immediate`) and
//! removed on drop.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the server and initdb run
//! as the `postgres` OS user (the harness switches uid/gid before exec); the data directory is
//! created for that user.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::dirs::TestDir;
use crate::error::{Error, IoContext, Result};
use crate::net::{free_port, wait_for_listen};
use crate::proc::Proc;
use crate::run_command;

/// Where the PostgreSQL binaries are unless `$SONDE_E2E_PG_BIN` says otherwise.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The superuser and default role of the cluster (trust auth, no password).
pub const SUPERUSER: &str = "postgres";

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    server: Option<Proc>,
    port: u16,
    bin: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    owner: Option<(u32, u32)>,
    dir: TestDir,
}

/// uid and gid of `user`, if it exists.
fn lookup_user(user: &str) -> Option<(u32, u32)> {
    let name = CString::new(user).ok()?;
    // SAFETY: getpwnam returns NULL or a pointer to a static struct valid until the next call;
    // the two ids are copied out immediately. Tests call this rarely; a race with another
    // getpwnam in the same process would only yield another user's ids, which initdb rejects.
    unsafe {
        let pw = libc::getpwnam(name.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .ctx(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

impl Postgres {
    /// Starts a fresh cluster; panics (with the server's log) on failure.
    pub fn start() -> Postgres {
        Self::try_start().unwrap_or_else(|e| panic!("Postgres::start: {e}"))
    }

    /// Starts a fresh cluster, retrying with another port if the chosen one was taken.
    pub fn try_start() -> Result<Postgres> {
        let bin = std::env::var_os("SONDE_E2E_PG_BIN")
            .map_or_else(|| PathBuf::from(DEFAULT_PG_BIN), PathBuf::from);
        if !bin.join("postgres").is_file() {
            return Err(Error::Missing {
                what: "PostgreSQL server binaries".into(),
                path: bin,
                hint: "apt-get install postgresql-15 (or set SONDE_E2E_PG_BIN)".into(),
            });
        }
        // SAFETY: geteuid has no preconditions.
        let owner = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user(SUPERUSER).ok_or_else(|| {
                Error::Setup(
                    "running as root but there is no `postgres` OS user to run PostgreSQL as"
                        .into(),
                )
            })?)
        } else {
            None
        };
        let dir = TestDir::new("pg")?;
        let data_dir = dir.join("data");
        let socket_dir = dir.subdir("sock")?;
        fs::create_dir(&data_dir).ctx(|| format!("creating {}", data_dir.display()))?;
        fs::set_permissions(&data_dir, fs::Permissions::from_mode(0o700))
            .ctx(|| "chmod data dir".to_string())?;
        chown(&data_dir, owner)?;
        chown(&socket_dir, owner)?;
        let mut pg = Postgres {
            server: None,
            port: 0,
            bin,
            data_dir,
            socket_dir,
            owner,
            dir,
        };
        pg.initdb()?;
        let mut last_err = None;
        for _ in 0..3 {
            match pg.launch(free_port()) {
                Ok(()) => return Ok(pg),
                Err(e) => {
                    let port_taken = e.to_string().contains("could not bind")
                        || e.to_string().contains("already in use");
                    if let Some(p) = pg.server.take() {
                        p.kill9();
                    }
                    if !port_taken {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| Error::Setup("PostgreSQL did not start".into())))
    }

    fn as_owner(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.owner {
            // std drops supplementary groups itself when it switches uid as root.
            cmd.uid(uid).gid(gid);
            // Avoid "could not change directory" warnings from a cwd the user cannot read.
            cmd.current_dir(self.dir.path());
            cmd.env("HOME", self.dir.path()).env("USER", SUPERUSER);
        }
    }

    fn initdb(&self) -> Result<()> {
        let mut cmd = Command::new(self.bin.join("initdb"));
        cmd.arg("-D").arg(&self.data_dir).args([
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-sync",
            "--encoding=UTF8",
            "--no-locale",
        ]);
        self.as_owner(&mut cmd);
        run_command(&mut cmd).map(|_| ())
    }

    fn launch(&mut self, port: u16) -> Result<()> {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(port.to_string());
        for setting in [
            "listen_addresses=127.0.0.1".to_string(),
            format!("unix_socket_directories={}", self.socket_dir.display()),
            "fsync=off".into(),
            "synchronous_commit=off".into(),
            "full_page_writes=off".into(),
            "shared_buffers=32MB".into(),
            "max_connections=100".into(),
            "logging_collector=off".into(),
            // Django sends `SET TIME ZONE` on every new connection unless the server already
            // reports UTC: keep that statement out of the traces.
            "timezone=UTC".into(),
            "log_timezone=UTC".into(),
            "log_min_messages=warning".into(),
            "log_min_error_statement=error".into(),
        ] {
            cmd.arg("-c").arg(setting);
        }
        self.as_owner(&mut cmd);
        self.port = port;
        let proc = Proc::spawn("postgres", cmd, self.dir.path())?;
        let ready = proc.wait_for_line(
            "database system is ready to accept connections",
            Duration::from_secs(60),
        );
        self.server = Some(proc);
        ready?;
        // The listening sockets exist before that line; check without connecting.
        wait_for_listen(port, Duration::from_secs(10), || Ok(()))
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The postmaster's pid.
    pub fn pid(&self) -> u32 {
        self.server.as_ref().map_or(0, Proc::pid)
    }

    /// The server process (for its logs).
    pub fn proc(&self) -> Option<&Proc> {
        self.server.as_ref()
    }

    /// libpq keyword/value connection string for `db` over TCP.
    pub fn dsn(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={db} user={SUPERUSER}",
            self.port
        )
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    fn psql_cmd(&self, host: &str, db: &str, sql: &str) -> Command {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            SUPERUSER,
            "-h",
            host,
        ])
        .arg("-p")
        .arg(self.port.to_string())
        .arg("-d")
        .arg(db)
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    /// Runs `sql` with psql over the unix socket (no TCP traffic for sonde to see) and returns
    /// its unaligned, tuples-only output with the final newline removed.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String> {
        let host = self.socket_dir.to_string_lossy().into_owned();
        run_command(&mut self.psql_cmd(&host, db, sql))
            .map(|s| s.trim_end_matches('\n').to_string())
    }

    /// [`Postgres::try_psql`] that panics on failure.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql {db}: {e}"))
    }

    /// Like [`Postgres::psql`] but over TCP to 127.0.0.1 (traffic sonde can trace).
    pub fn psql_tcp(&self, db: &str, sql: &str) -> String {
        run_command(&mut self.psql_cmd("127.0.0.1", db, sql))
            .map(|s| s.trim_end_matches('\n').to_string())
            .unwrap_or_else(|e| panic!("psql (tcp) {db}: {e}"))
    }

    /// Creates database `name` (an identifier: letters, digits, `_`) unless it exists.
    pub fn try_create_database(&self, name: &str) -> Result<()> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::Setup(format!("invalid database name {name:?}")));
        }
        let exists = self.try_psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{name}'"),
        )?;
        if exists.trim() != "1" {
            self.try_psql("postgres", &format!("CREATE DATABASE {name}"))?;
        }
        Ok(())
    }

    /// [`Postgres::try_create_database`] that panics on failure.
    pub fn create_database(&self, name: &str) {
        self.try_create_database(name)
            .unwrap_or_else(|e| panic!("create database {name}: {e}"))
    }

    /// Makes the server log every statement it receives (see [`Postgres::statement_log`]):
    /// the ground truth of what a client sent, to compare with what sonde reports.
    pub fn log_all_statements(&self) {
        self.psql("postgres", "ALTER SYSTEM SET log_statement = 'all'");
        self.psql("postgres", "SELECT pg_reload_conf()");
        // The reload is asynchronous: wait until a new session sees it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.psql("postgres", "SHOW log_statement") != "all"
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The statements logged since [`Postgres::log_all_statements`], in order (simple-protocol
    /// `statement:` and extended-protocol `execute <name>:` lines; psql's own sessions too).
    pub fn statement_log(&self) -> Vec<String> {
        let Some(server) = &self.server else {
            return Vec::new();
        };
        server
            .stderr()
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once("LOG:  ")?;
                if let Some(sql) = rest.strip_prefix("statement: ") {
                    return Some(sql.to_string());
                }
                let rest = rest.strip_prefix("execute ")?;
                rest.split_once(": ").map(|(_, sql)| sql.to_string())
            })
            .collect()
    }

    /// Stops the server now (`pg_ctl stop -m immediate`); also done on drop.
    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            if server.is_running() {
                let mut cmd = Command::new(self.bin.join("pg_ctl"));
                cmd.arg("stop").arg("-D").arg(&self.data_dir).args([
                    "-m",
                    "immediate",
                    "-w",
                    "-t",
                    "10",
                ]);
                self.as_owner(&mut cmd);
                if let Err(e) = run_command(&mut cmd) {
                    eprintln!("sonde-e2e: pg_ctl stop failed, killing postgres: {e}");
                }
            }
            // Dropping the guard reaps the postmaster and kills anything left in its group.
            drop(server);
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The server's guard prints its logs if the test is panicking.
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::pid_alive;

    #[test]
    fn starts_queries_and_cleans_up() {
        let mut pg = Postgres::start();
        assert!(pg.port() > 0);
        pg.create_database("lab_test");
        pg.create_database("lab_test"); // idempotent
        pg.psql("lab_test", "CREATE TABLE t (id int primary key, name text)");
        pg.psql("lab_test", "INSERT INTO t VALUES (1, 'a'), (2, 'b')");
        assert_eq!(pg.psql("lab_test", "SELECT count(*) FROM t"), "2");
        assert_eq!(
            pg.psql_tcp("lab_test", "SELECT name FROM t ORDER BY id"),
            "a\nb"
        );
        assert!(
            pg.try_psql("lab_test", "SELEC 1")
                .unwrap_err()
                .to_string()
                .contains("syntax error")
        );
        assert!(pg.dsn("lab_test").contains(&format!("port={}", pg.port())));
        assert_eq!(
            pg.url("x"),
            format!("postgresql://postgres@127.0.0.1:{}/x", pg.port())
        );
        assert!(pg.try_create_database("bad name; --").is_err());
        let pid = pg.pid();
        let data = pg.data_dir.clone();
        assert!(pid_alive(pid));
        pg.stop();
        assert!(!pid_alive(pid));
        drop(pg);
        assert!(!data.exists());
    }
}
