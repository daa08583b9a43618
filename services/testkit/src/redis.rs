//! A throwaway `redis-server`.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    Dir, LOOPBACK, READY_TIMEOUT,
    process::{Process, Spec},
};

/// A `redis-server` on a free loopback port that keeps nothing on disk.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    process: Process,
    _dir: Dir,
}

fn binary() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("REDIS_SERVER_BIN") {
        return Ok(bin.into());
    }
    crate::which("redis-server")
        .context("redis-server not found: run scripts/setup.sh (Debian package redis-server)")
}

impl RedisServer {
    /// Starts a server and waits until it answers PING.
    pub async fn start() -> Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(crate::free_port()?).await {
                Ok(server) => return Ok(server),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// Starts a server on `port` with its files in `dir` (kept; Redis still saves nothing).
    pub async fn start_at(port: u16, dir: &std::path::Path) -> Result<Self> {
        Self::try_start_in(port, Dir::kept(dir)?).await
    }

    async fn try_start(port: u16) -> Result<Self> {
        Self::try_start_in(port, Dir::temp("flashsale-redis-")?).await
    }

    async fn try_start_in(port: u16, dir: Dir) -> Result<Self> {
        let args = [
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            LOOPBACK.to_string(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--protected-mode".into(),
            "yes".into(),
        ];
        let spec = Spec {
            program: binary()?,
            args: args.into_iter().map(Into::into).collect(),
            run_as: None,
        };
        let process = Process::new("redis-server", spec, dir.path().join("redis.log"));
        let mut server = Self {
            port,
            process,
            _dir: dir,
        };
        server.boot().await?;
        Ok(server)
    }

    async fn boot(&mut self) -> Result<()> {
        self.process.spawn()?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if !self.process.is_running() {
                bail!("redis-server exited:\n{}", self.process.log_tail());
            }
            if ping(self.port).await {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let tail = self.process.log_tail();
        self.process.kill();
        bail!("redis-server not ready in {READY_TIMEOUT:?}:\n{tail}")
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://{LOOPBACK}:{}", self.port)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL, like a crash). Its data is gone.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the server if it runs, then starts a fresh, empty one on the same port.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        self.boot().await
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) -> Result<()> {
        self.process.signal(Signal::SIGSTOP)
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.process.signal(Signal::SIGCONT)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

async fn ping(port: u16) -> bool {
    let attempt = async {
        let mut stream = TcpStream::connect((LOOPBACK, port)).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await?;
        Ok::<bool, std::io::Error>(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), attempt).await,
        Ok(Ok(true))
    )
}
