//! A throwaway Postgres cluster made by `initdb` and run by `postgres`.

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::{Context, Result, bail};
use nix::{
    sys::signal::Signal,
    unistd::{Uid, User},
};
use sqlx::{Connection, Executor, PgConnection};

use crate::{
    Dir, LOOPBACK, READY_TIMEOUT,
    process::{Process, Spec},
};

/// A Postgres server on a free loopback port with trust authentication for `postgres`.
///
/// As root, `initdb` and `postgres` refuse to run, so both run as the `postgres` user and the
/// cluster lives in a folder that user owns. The server is started directly (not through
/// `pg_ctl`, which would detach it) so it stays our child: killed with the test, and
/// killable, pausable and restartable by the handle.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    process: Process,
    dir: Dir,
}

/// A database created for one test.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    /// Its name.
    pub name: String,
    /// `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub url: String,
}

/// The folder holding `initdb` and `postgres`: `PG_BIN_DIR`, else the newest
/// `/usr/lib/postgresql/*/bin`, else the folder of `initdb` on `PATH`.
fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR") {
        return Ok(dir.into());
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    crate::which("initdb")
        .and_then(|p| p.parent().map(PathBuf::from))
        .context("Postgres (initdb) not found: run scripts/setup.sh (Debian package postgresql)")
}

/// The user to run Postgres as: `postgres` when we are root, else ourselves.
fn run_as() -> Result<Option<User>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    User::from_name("postgres")?
        .map(Some)
        .context("running as root but there is no `postgres` user to run Postgres as")
}

impl PostgresServer {
    /// Creates a cluster with `initdb` and starts it; waits until it accepts connections.
    /// Commits are not flushed to disk (`fsync=off`): fast, and a killed server process still
    /// loses nothing committed.
    pub async fn start() -> Result<Self> {
        Self::start_with(false).await
    }

    /// Like [`Self::start`], but every commit waits for its WAL flush, as in production: for
    /// benchmarks that compare commit counts.
    pub async fn start_durable() -> Result<Self> {
        Self::start_with(true).await
    }

    /// Starts a server on `port` with its cluster in `dir`, made by `initdb` on first use and
    /// kept across runs (`flashsale up`). Durable (`fsync=on`).
    pub async fn start_at(port: u16, dir: &std::path::Path) -> Result<Self> {
        Self::start_in(Dir::kept(dir)?, true, Some(port)).await
    }

    async fn start_with(durable: bool) -> Result<Self> {
        Self::start_in(Dir::temp("flashsale-pg-")?, durable, None).await
    }

    async fn start_in(dir: Dir, durable: bool, fixed_port: Option<u16>) -> Result<Self> {
        let bin = bin_dir()?;
        let user = run_as()?;
        if let Some(user) = &user {
            std::os::unix::fs::chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw()))?;
        }
        let data = dir.path().join("data");
        let initialised = data.join("PG_VERSION").exists();

        let mut initdb = Command::new("setpriv");
        if let Some(user) = &user {
            initdb
                .arg(format!("--reuid={}", user.uid))
                .arg(format!("--regid={}", user.gid))
                .arg("--init-groups")
                .env("HOME", &user.dir);
        }
        let output = if initialised {
            None
        } else {
            let output = initdb
                .arg("--")
                .arg(bin.join("initdb"))
                .args([
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ])
                .arg("-D")
                .arg(&data)
                .output()
                .context("running initdb")?;
            Some(output)
        };
        if let Some(output) = output.filter(|o| !o.status.success()) {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }

        let mut last = None;
        for _ in 0..3 {
            let port = match fixed_port {
                Some(port) => port,
                None => crate::free_port()?,
            };
            let mut args: Vec<std::ffi::OsString> = vec![
                "-D".into(),
                data.clone().into(),
                "-p".into(),
                port.to_string().into(),
                "-k".into(),
                dir.path().into(),
                "-c".into(),
                format!("listen_addresses={LOOPBACK}").into(),
                "-c".into(),
                "max_connections=200".into(),
            ];
            if !durable {
                // Throwaway clusters trade durability against an OS crash for speed; a killed
                // server process still loses nothing that was committed.
                // (synchronous_commit stays on: with it off, a killed server loses the last
                // commits it acknowledged.)
                for setting in ["fsync=off", "full_page_writes=off"] {
                    args.push("-c".into());
                    args.push(setting.into());
                }
            }
            let spec = Spec {
                program: bin.join("postgres"),
                args,
                run_as: user.clone(),
            };
            let mut process = Process::new("postgres", spec, dir.path().join("postgres.log"));
            match boot(&mut process, port).await {
                Ok(()) => return Ok(Self { port, process, dir }),
                Err(e) => {
                    process.kill();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    async fn connect(&self, database: &str) -> Result<PgConnection> {
        connect(&self.url(database)).await
    }

    /// `postgres://postgres@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        url(self.port, database)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a fresh, empty database and returns its URL.
    pub async fn create_database(&self) -> Result<TestDatabase> {
        let name = crate::unique_name("test");
        let mut conn = self.connect("postgres").await?;
        // The name is ours (letters, digits, underscores), so formatting it in is safe.
        conn.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE \"{name}\""
        ))))
        .await
        .with_context(|| format!("creating database {name}"))?;
        let _ = conn.close().await;
        Ok(TestDatabase {
            url: self.url(&name),
            name,
        })
    }

    /// Kills the server and every backend (SIGKILL, like a crash). Committed data stays.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the server if it runs, then starts it again on the same port and data folder
    /// (Postgres runs crash recovery).
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        // A killed postmaster leaves its pid file; Postgres sees the pid is gone and proceeds.
        boot(&mut self.process, self.port).await
    }

    /// Freezes the server and all its backends (SIGSTOP to the process group).
    pub fn pause(&self) -> Result<()> {
        self.process.signal(Signal::SIGSTOP)
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.process.signal(Signal::SIGCONT)
    }

    /// True while the postmaster runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// The cluster's data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

fn url(port: u16, database: &str) -> String {
    format!("postgres://postgres@{LOOPBACK}:{port}/{database}")
}

async fn connect(url: &str) -> Result<PgConnection> {
    let conn = tokio::time::timeout(Duration::from_secs(2), PgConnection::connect(url))
        .await
        .context("connect timed out")??;
    Ok(conn)
}

async fn boot(process: &mut Process, port: u16) -> Result<()> {
    process.spawn()?;
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut last_error = String::new();
    while tokio::time::Instant::now() < deadline {
        if !process.is_running() {
            bail!("postgres exited:\n{}", process.log_tail());
        }
        match connect(&url(port, "postgres")).await {
            Ok(conn) => {
                let _ = conn.close().await;
                return Ok(());
            }
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "postgres not ready in {READY_TIMEOUT:?} ({last_error}):\n{}",
        process.log_tail()
    )
}
