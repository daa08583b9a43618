//! The whole mesh as separate processes of the real binary, on throwaway servers.

use std::{path::PathBuf, time::Duration};

use flashsale_gateway::auth::Signer;
use flashsale_testkit::{
    FaultProxy, NatsCluster, NatsServer, PostgresServer, RedisServer, free_port,
};
use tonic::transport::Channel;

use crate::{Running, flashsale_configured};

/// Ports of every component.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub(crate) gateway: u16,
    pub(crate) inventory: u16,
    pub(crate) orders: u16,
    pub(crate) consumer: u16,
    pub(crate) limiter: u16,
    pub(crate) sidecar: u16,
}

/// What a test adds to the mesh's configuration.
#[derive(Debug, Default, Clone)]
pub(crate) struct Extra {
    /// More TOML for the `[telemetry]` table.
    pub(crate) telemetry: String,
    /// Environment for every process.
    pub(crate) env: Vec<(String, String)>,
    /// Serve `/metrics` from every process, each on its own port.
    pub(crate) metrics: bool,
    /// Write each process's log to `<dir>/<component>.log` instead of the test's output.
    pub(crate) log_dir: Option<PathBuf>,
    /// Run NATS as a 3-node JetStream cluster (the order stream then keeps 3 replicas).
    pub(crate) nats_cluster: bool,
    /// More TOML at the end of the configuration (new tables only).
    pub(crate) config: String,
    /// Mutual TLS between the services: a directory holding `ca.crt`, `node.crt`, `node.key`.
    pub(crate) tls: Option<PathBuf>,
    /// Put a fault proxy on every hop to Redis, NATS (one server), Postgres and the inventory's
    /// gRPC port, so a test can fault one hop while both ends run.
    pub(crate) proxies: bool,
    /// The sidecar's limit rules instead of the generous default.
    pub(crate) rules: Option<&'static str>,
}

/// The fault proxies on the mesh's hops (see [`Extra::proxies`]).
pub(crate) struct Hops {
    /// Every component → Redis.
    pub(crate) redis: FaultProxy,
    /// Every component → NATS: one proxy per node.
    pub(crate) nats: Vec<FaultProxy>,
    /// Every component → Postgres.
    pub(crate) postgres: FaultProxy,
    /// Orders and order consumer → the inventory's gRPC server.
    pub(crate) inventory: FaultProxy,
    /// The gateway → the inventory's gRPC server.
    pub(crate) gateway_inventory: FaultProxy,
}

/// NATS: one server, or a cluster.
pub(crate) enum Nats {
    Single(Box<NatsServer>),
    Cluster(NatsCluster),
}

impl Nats {
    pub(crate) fn url(&self) -> String {
        match self {
            Nats::Single(server) => server.url(),
            Nats::Cluster(cluster) => cluster.url(),
        }
    }

    /// Freezes every node.
    pub(crate) fn pause(&self) {
        match self {
            Nats::Single(server) => server.pause().unwrap(),
            Nats::Cluster(cluster) => cluster.pause().unwrap(),
        }
    }

    /// SIGKILLs the one server (a single-node mesh only).
    pub(crate) fn kill(&mut self) {
        match self {
            Nats::Single(server) => server.kill(),
            Nats::Cluster(_) => panic!("kill a node of the cluster instead"),
        }
    }

    /// Restarts the one server on its port and store (a single-node mesh only).
    pub(crate) async fn restart(&mut self) {
        match self {
            Nats::Single(server) => server.restart().await.unwrap(),
            Nats::Cluster(_) => panic!("restart a node of the cluster instead"),
        }
    }

    /// Thaws every node.
    pub(crate) fn resume(&self) {
        match self {
            Nats::Single(server) => server.resume().unwrap(),
            Nats::Cluster(cluster) => cluster.resume().unwrap(),
        }
    }
}

pub(crate) struct Mesh {
    pub(crate) redis: RedisServer,
    pub(crate) nats: Nats,
    pub(crate) pg: PostgresServer,
    pub(crate) db_url: String,
    pub(crate) ports: Ports,
    pub(crate) config: PathBuf,
    pub(crate) _dir: tempfile::TempDir,
    pub(crate) processes: Vec<(&'static str, Running)>,
    pub(crate) extra: Extra,
    /// The `/metrics` port of each component, when asked for.
    pub(crate) metrics_ports: Vec<(&'static str, u16)>,
    /// The fault proxies, when asked for.
    pub(crate) hops: Option<Hops>,
}

pub(crate) const SECRET: &str = "end-to-end-test-secret-0123456789";

/// Limits the sidecar applies: generous, so the purchase path is what the tests exercise.
const RULES: &str = "domain: flashsale
descriptors:
  - key: method
    value: /flashsale.v1.FlashSale/Purchase
    descriptors:
      - key: user
        rate_limit: { unit: second, requests_per_unit: 1000 }
";

impl Mesh {
    /// Starts the servers, writes the configuration, migrates, starts every component and waits
    /// until each answers health.
    pub(crate) async fn start(payment_window_hint: &str) -> Mesh {
        Self::start_with(payment_window_hint, Extra::default()).await
    }

    /// [`Self::start`] with additions.
    pub(crate) async fn start_with(payment_window_hint: &str, extra: Extra) -> Mesh {
        // Boxed: the start-up future holds every server and would make each test's future large.
        Box::pin(Self::boot(payment_window_hint, extra)).await
    }

    async fn boot(payment_window_hint: &str, extra: Extra) -> Mesh {
        flashsale_runtime::telemetry::init_for_tests();
        let nats = async {
            if extra.nats_cluster {
                NatsCluster::start(3).await.map(Nats::Cluster)
            } else {
                NatsServer::start()
                    .await
                    .map(|server| Nats::Single(Box::new(server)))
            }
        };
        let (redis, nats, pg) = tokio::join!(RedisServer::start(), nats, PostgresServer::start());
        let (redis, nats, pg) = (redis.unwrap(), nats.unwrap(), pg.unwrap());
        let db = pg.create_database().await.unwrap();
        let ports = Ports {
            gateway: free_port().unwrap(),
            inventory: free_port().unwrap(),
            orders: free_port().unwrap(),
            consumer: free_port().unwrap(),
            limiter: free_port().unwrap(),
            sidecar: free_port().unwrap(),
        };
        let hops = if extra.proxies {
            let nats_ports = match &nats {
                Nats::Single(server) => vec![server.port()],
                Nats::Cluster(cluster) => cluster.ports(),
            };
            let mut nats_hops = Vec::new();
            for port in nats_ports {
                nats_hops.push(FaultProxy::to_port(port).await.unwrap());
            }
            Some(Hops {
                redis: FaultProxy::to_port(redis.port()).await.unwrap(),
                nats: nats_hops,
                postgres: FaultProxy::to_port(pg.port()).await.unwrap(),
                inventory: FaultProxy::to_port(ports.inventory).await.unwrap(),
                gateway_inventory: FaultProxy::to_port(ports.inventory).await.unwrap(),
            })
        } else {
            None
        };
        // What the components dial: the servers, or the proxies in front of them.
        let (redis_url, nats_url, pg_url, inventory_port, gateway_inventory_port) = match &hops {
            Some(h) => (
                format!("redis://127.0.0.1:{}", h.redis.port()),
                h.nats
                    .iter()
                    .map(|p| format!("nats://127.0.0.1:{}", p.port()))
                    .collect::<Vec<_>>()
                    .join(","),
                db.url.replacen(
                    &format!(":{}/", pg.port()),
                    &format!(":{}/", h.postgres.port()),
                    1,
                ),
                h.inventory.port(),
                h.gateway_inventory.port(),
            ),
            None => (
                redis.url(),
                nats.url(),
                db.url.clone(),
                ports.inventory,
                ports.inventory,
            ),
        };
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("limits.yaml");
        std::fs::write(&rules, extra.rules.unwrap_or(RULES)).unwrap();
        let config = dir.path().join("mesh.toml");
        std::fs::write(
            &config,
            format!(
                r#"# {payment_window_hint}
[telemetry]
{telemetry}

[server]
shutdown_grace = "5s"

[redis]
url = "{redis}"

[nats]
url = "{nats}"

[postgres]
url = "{pg}"

[gateway]
listen = "127.0.0.1:{gw}"
inventory_url = "{scheme}://127.0.0.1:{gw_inv_hop}"
orders_url = "{scheme}://127.0.0.1:{ord}"
[gateway.auth]
secret = "{SECRET}"

[inventory]
listen = "127.0.0.1:{inv}"
sweep_interval = "100ms"

[orders]
listen = "127.0.0.1:{ord}"
consumer_listen = "127.0.0.1:{cons}"
inventory_url = "{scheme}://127.0.0.1:{inv_hop}"
lifecycle_interval = "200ms"
fetch_wait = "100ms"

[limiter]
listen = "127.0.0.1:{lim}"
rules_file = "{rules}"
[limiter.sidecar]
listen = "127.0.0.1:{side}"
upstream = "http://127.0.0.1:{gw}"

{tls}

{more}
"#,
                scheme = if extra.tls.is_some() { "https" } else { "http" },
                tls = extra.tls.as_ref().map_or(String::new(), |dir| format!(
                    "[tls]\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n",
                    dir.join("node.crt").display(),
                    dir.join("node.key").display(),
                    dir.join("ca.crt").display()
                )),
                redis = redis_url,
                nats = nats_url,
                pg = pg_url,
                inv_hop = inventory_port,
                gw_inv_hop = gateway_inventory_port,
                gw = ports.gateway,
                inv = ports.inventory,
                ord = ports.orders,
                cons = ports.consumer,
                lim = ports.limiter,
                side = ports.sidecar,
                rules = rules.display(),
                telemetry = extra.telemetry,
                more = extra.config,
            ),
        )
        .unwrap();
        let migrate = flashsale_configured()
            .arg("--config")
            .arg(&config)
            .arg("migrate")
            .output()
            .unwrap();
        assert!(
            migrate.status.success(),
            "{}",
            String::from_utf8_lossy(&migrate.stderr)
        );

        let mut mesh = Mesh {
            redis,
            nats,
            pg,
            db_url: db.url,
            ports,
            config,
            _dir: dir,
            processes: Vec::new(),
            extra,
            metrics_ports: Vec::new(),
            hops,
        };
        for component in [
            "inventory",
            "orders",
            "order-consumer",
            "limiter",
            "gateway",
            "limiter-sidecar",
        ] {
            mesh.spawn(component);
        }
        if let Some(tls) = mesh.tls() {
            for port in [ports.inventory, ports.orders] {
                crate::tls::wait_serving_tls(port, &tls).await;
            }
        } else {
            for port in [ports.inventory, ports.orders] {
                crate::serve::wait_serving(&format!("127.0.0.1:{port}")).await;
            }
        }
        for port in [ports.consumer, ports.limiter, ports.gateway, ports.sidecar] {
            crate::serve::wait_serving(&format!("127.0.0.1:{port}")).await;
        }
        mesh
    }

    /// Starts (or restarts) one component as its own process.
    pub(crate) fn spawn(&mut self, component: &'static str) {
        self.processes.retain(|(name, _)| *name != component);
        let mut command = flashsale_configured();
        command
            .arg("--config")
            .arg(&self.config)
            .args(["serve", component]);
        for (key, value) in &self.extra.env {
            command.env(key, value);
        }
        if self.extra.metrics {
            let port = match self
                .metrics_ports
                .iter()
                .find(|(name, _)| *name == component)
            {
                Some((_, port)) => *port,
                None => {
                    let port = free_port().unwrap();
                    self.metrics_ports.push((component, port));
                    port
                }
            };
            command.args(["--metrics-listen", &format!("127.0.0.1:{port}")]);
        }
        let process = match &self.extra.log_dir {
            Some(dir) => {
                Running::spawn_logging(&mut command, &dir.join(format!("{component}.log")))
            }
            None => Running::spawn(&mut command),
        };
        self.processes.push((component, process));
    }

    /// SIGKILLs one component, like a crash: no drain, no goodbye.
    pub(crate) fn kill(&mut self, component: &'static str) {
        if let Some(i) = self
            .processes
            .iter()
            .position(|(name, _)| *name == component)
        {
            let (_, mut process) = self.processes.remove(i);
            let _ = process.0.kill();
            let _ = process.0.wait();
        }
    }

    /// Freezes one component (SIGSTOP): its connections stay open and nothing answers.
    pub(crate) fn pause(&self, component: &'static str) {
        self.process(component)
            .signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Thaws a component frozen by [`Self::pause`].
    pub(crate) fn resume(&self, component: &'static str) {
        self.process(component)
            .signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn process(&self, component: &'static str) -> &Running {
        self.processes
            .iter()
            .find(|(name, _)| *name == component)
            .map(|(_, process)| process)
            .expect("the component runs")
    }

    /// SIGTERMs one component and waits (up to `limit`) for it to drain and exit.
    pub(crate) async fn terminate(
        &mut self,
        component: &'static str,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        self.signal_term(component);
        self.exited(component, limit).await
    }

    /// SIGTERMs one component without waiting for it (see [`Self::exited`]).
    pub(crate) fn signal_term(&self, component: &'static str) {
        self.process(component).terminate();
    }

    /// Waits (up to `limit`) for one component to exit, and forgets it.
    pub(crate) async fn exited(
        &mut self,
        component: &'static str,
        limit: Duration,
    ) -> Option<std::process::ExitStatus> {
        let i = self
            .processes
            .iter()
            .position(|(name, _)| *name == component)?;
        let (_, mut process) = self.processes.remove(i);
        tokio::task::spawn_blocking(move || process.wait_exit(limit))
            .await
            .unwrap()
    }

    /// Restarts a component and waits until it answers health.
    pub(crate) async fn respawn(&mut self, component: &'static str) {
        self.spawn(component);
        let port = match component {
            "gateway" => self.ports.gateway,
            "inventory" => self.ports.inventory,
            "orders" => self.ports.orders,
            "order-consumer" => self.ports.consumer,
            "limiter" => self.ports.limiter,
            _ => self.ports.sidecar,
        };
        crate::serve::wait_serving(&format!("127.0.0.1:{port}")).await;
    }

    /// The services' mutual-TLS material, when the mesh runs with it.
    pub(crate) fn tls(&self) -> Option<flashsale_runtime::tls::MeshTls> {
        let dir = self.extra.tls.as_ref()?;
        flashsale_runtime::tls::TlsConfig {
            cert: Some(dir.join("node.crt")),
            key: Some(dir.join("node.key")),
            ca: Some(dir.join("ca.crt")),
        }
        .load()
        .unwrap()
    }

    pub(crate) fn signer(&self) -> Signer {
        let auth = flashsale_gateway::config::AuthConfig {
            secret: SECRET.to_owned().into(),
            ..Default::default()
        };
        Signer::new(&auth).unwrap()
    }

    /// Loadgen buyers through the limiter sidecar, as the outside world reaches the mesh.
    pub(crate) async fn drive(
        &self,
        sale: &flashsale_proto::v1::Sale,
        scenario: &flashsale_loadgen::Scenario,
    ) -> flashsale_loadgen::Report {
        flashsale_loadgen::drive(
            self.channel(self.ports.sidecar).await,
            self.signer(),
            &sale.sale_id,
            scenario,
        )
        .await
    }

    /// Where the audit reads: this mesh's Postgres and inventory.
    pub(crate) async fn sources(&self) -> flashsale_loadgen::Sources {
        flashsale_loadgen::Sources {
            store: self.store().await,
            inventory: self.channel(self.ports.inventory).await,
        }
    }

    /// The loadgen audit of a run, once its orders are written (up to 30 s).
    pub(crate) async fn audit(
        &self,
        sale: &flashsale_proto::v1::Sale,
        report: &flashsale_loadgen::Report,
    ) -> flashsale_loadgen::Audit {
        flashsale_loadgen::audit(&self.sources().await, sale, report, Duration::from_secs(30)).await
    }

    /// Pays `share` of the accepted orders through the Orders service, as a payment provider
    /// would (seeded, waiting up to 15 s for each order to be persisted).
    pub(crate) async fn pay(
        &self,
        accepted: &[flashsale_loadgen::Accepted],
        share: f64,
    ) -> Vec<String> {
        flashsale_loadgen::pay(
            self.channel(self.ports.orders).await,
            accepted,
            share,
            3,
            Duration::from_secs(15),
        )
        .await
    }

    pub(crate) async fn channel(&self, port: u16) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .timeout(Duration::from_secs(10))
            .connect()
            .await
            .unwrap()
    }

    pub(crate) async fn store(&self) -> flashsale_orders::OrderStore {
        flashsale_orders::OrderStore::connect(&flashsale_runtime::config::PostgresConfig {
            url: self.db_url.clone().into(),
            max_connections: 4,
            connect_timeout: Duration::from_secs(5),
        })
        .await
        .unwrap()
    }
}
