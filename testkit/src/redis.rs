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

/// More arguments for one server (a cluster node's settings).
type Extra = Vec<String>;

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
        Self::try_start_in(port, Dir::kept(dir)?, Vec::new()).await
    }

    async fn try_start(port: u16) -> Result<Self> {
        Self::try_start_in(port, Dir::temp("flashsale-redis-")?, Vec::new()).await
    }

    /// A server started with `extra` arguments on `port`.
    async fn start_extra(port: u16, extra: Extra) -> Result<Self> {
        Self::try_start_in(port, Dir::temp("flashsale-redis-")?, extra).await
    }

    async fn try_start_in(port: u16, dir: Dir, extra: Extra) -> Result<Self> {
        let mut args: Vec<String> = vec![
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
        args.extend(extra);
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

    /// The server's process id while it runs (to read its CPU time).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
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

/// A Redis Cluster on loopback: `masters` masters (the hash slots split evenly) and
/// `replicas` replicas of each, created with `redis-cli --cluster create`. A killed master's
/// replica takes over after the node timeout ([`CLUSTER_NODE_TIMEOUT`]).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    /// Replicas in all (masters × replicas per master).
    replicas: usize,
}

/// How long the cluster waits before failing over from a master that stopped answering.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1_000);

/// A free port whose cluster bus port (+10000) is free too.
fn cluster_port() -> Result<u16> {
    for _ in 0..100 {
        let port = crate::free_port()?;
        if port < 55_000 && std::net::TcpListener::bind((LOOPBACK, port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port with a free cluster bus port found")
}

impl RedisCluster {
    /// Starts the nodes, joins them and waits until every node reports `cluster_state:ok`.
    pub async fn start(masters: usize, replicas: usize) -> Result<Self> {
        anyhow::ensure!(masters >= 3, "Redis Cluster needs at least 3 masters");
        let mut nodes = Vec::new();
        for _ in 0..masters * (1 + replicas) {
            let port = cluster_port()?;
            let extra = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT.as_millis().to_string(),
                // A replica may take over however long it lagged: tests kill masters at will.
                "--cluster-replica-validity-factor",
                "0",
                // Replicas sync at once instead of after the default 5 s diskless delay.
                "--repl-diskless-sync-delay",
                "0",
            ]
            .map(str::to_owned)
            .to_vec();
            nodes.push(RedisServer::start_extra(port, extra).await?);
        }
        let mut create = tokio::process::Command::new(cli()?);
        create.args(["--cluster", "create"]);
        for node in &nodes {
            create.arg(format!("{LOOPBACK}:{}", node.port));
        }
        let output = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .await
            .context("running redis-cli --cluster create")?;
        if !output.status.success() {
            bail!(
                "redis-cli --cluster create failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let cluster = Self {
            nodes,
            replicas: masters * replicas,
        };
        cluster.wait_ok().await?;
        cluster.wait_replicas_synced().await?;
        Ok(cluster)
    }

    /// Waits until every replica is a replica with its master's data
    /// (`master_link_status:up`), so a master killed from now on loses nothing that was
    /// written before. (Right after `--cluster create`, a node meant as a replica may still
    /// call itself a master for a moment: the count of linked replicas decides.)
    pub async fn wait_replicas_synced(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let mut linked = 0;
            for node in &self.nodes {
                if let Ok(info) = cli_output(node.port, &["INFO", "replication"]).await {
                    linked += usize::from(info.contains("master_link_status:up"));
                }
            }
            if linked >= self.replicas {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{linked} of {} replicas synced with their masters",
                    self.replicas
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node reports `cluster_state:ok`.
    pub async fn wait_ok(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let mut all = true;
            for node in &self.nodes {
                let info = cli_output(node.port, &["CLUSTER", "INFO"]).await;
                // A killed node does not answer; the others decide.
                if let Ok(info) = info {
                    all &= info.contains("cluster_state:ok");
                }
            }
            if all {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the cluster never reached cluster_state:ok");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The URL fred takes: `redis-cluster://first?node=second&node=...`.
    pub fn url(&self) -> String {
        let mut nodes = self.nodes.iter().map(|n| format!("{LOOPBACK}:{}", n.port));
        let first = nodes.next().unwrap_or_default();
        let rest: Vec<String> = nodes.map(|n| format!("node={n}")).collect();
        format!("redis-cluster://{first}?{}", rest.join("&"))
    }

    /// Every node, masters and replicas.
    pub fn nodes(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }

    /// The index of the node that is the master of `key`'s hash slot now.
    pub async fn master_of(&self, key: &str) -> Result<usize> {
        // Any node that answers knows the slot (the first may be the one a test killed).
        let mut slot = None;
        for node in &self.nodes {
            if let Ok(answer) = cli_output(node.port, &["CLUSTER", "KEYSLOT", key]).await {
                slot = Some(answer);
                break;
            }
        }
        let slot = slot.context("no node answers")?;
        let slot: u16 = slot.trim().parse().context("CLUSTER KEYSLOT")?;
        for (i, node) in self.nodes.iter().enumerate() {
            let Ok(role) = cli_output(node.port, &["ROLE"]).await else {
                continue;
            };
            if !role.starts_with("master") {
                continue;
            }
            let Ok(nodes) = cli_output(node.port, &["CLUSTER", "NODES"]).await else {
                continue;
            };
            let me = nodes.lines().find(|l| l.contains("myself"));
            if me.is_some_and(|line| owns(line, slot)) {
                return Ok(i);
            }
        }
        bail!("no master serves slot {slot}")
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges.
fn owns(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let (from, to) = range.split_once('-').unwrap_or((range, range));
        matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(a), Ok(b)) if (a..=b).contains(&slot))
    })
}

fn cli() -> Result<PathBuf> {
    crate::which("redis-cli")
        .context("redis-cli not found: run scripts/setup.sh (Debian package redis-tools)")
}

/// `redis-cli -p PORT ARGS...`'s output, or an error when the node does not answer.
async fn cli_output(port: u16, args: &[&str]) -> Result<String> {
    let output = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::process::Command::new(cli()?)
            .args(["-h", &LOOPBACK.to_string(), "-p", &port.to_string()])
            .args(args)
            .output(),
    )
    .await
    .context("redis-cli timed out")??;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() || text.starts_with("Could not connect") || text.starts_with("ERR")
    {
        bail!("redis-cli on {port}: {text}");
    }
    Ok(text)
}
