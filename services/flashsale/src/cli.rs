//! The command line.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use flashsale_runtime::{ConfigError, Loader};

use crate::config::MeshConfig;

/// flashsale mesh: sell a few thousand items to hundreds of thousands of buyers in the same
/// second, without overselling, losing an order, or falling over.
///
/// Configuration comes from defaults, then the file given with --config (or FLASHSALE_CONFIG),
/// then the secret files in --secrets-dir (or FLASHSALE_SECRETS_DIR), then
/// FLASHSALE_<SECTION>__<KEY> environment variables (e.g.
/// FLASHSALE_REDIS__URL=redis://127.0.0.1:6379).
#[derive(Debug, Parser)]
#[command(name = "flashsale", version, propagate_version = true)]
pub(crate) struct Cli {
    /// A TOML configuration file.
    #[arg(
        long,
        short,
        global = true,
        env = "FLASHSALE_CONFIG",
        value_name = "FILE"
    )]
    pub(crate) config: Option<PathBuf>,

    /// A directory of secret files, each named by the key it sets (e.g. `postgres.url`):
    /// a mounted Kubernetes Secret. Applied over the file, under the environment.
    #[arg(long, global = true, env = "FLASHSALE_SECRETS_DIR", value_name = "DIR")]
    pub(crate) secrets_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

impl Cli {
    /// Defaults → file → environment, validated.
    pub(crate) fn load_config(&self) -> Result<MeshConfig, ConfigError> {
        let mut loader = Loader::new();
        if let Some(path) = &self.config {
            loader = loader.with_file(path);
        }
        if let Some(dir) = &self.secrets_dir {
            loader = loader.with_secrets_dir(dir);
        }
        loader.with_process_env().load()
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run one component's gRPC server until SIGTERM/SIGINT (the first drains in-flight calls,
    /// a second exits at once). Every server answers grpc.health.v1 and reflection.
    Serve(ServeArgs),
    /// Start the whole mesh locally on loopback and check every component answers health.
    #[cfg(feature = "local")]
    Up(UpArgs),
    /// Ask servers for their grpc.health.v1 status; exits 0 only when every one is SERVING
    /// (for `helm test`, container checks and operators).
    Health(HealthArgs),
    /// Apply the Postgres schema migrations (idempotent).
    Migrate,
    /// Mint a development token (HS256 with the configured secret) for a buyer or an operator.
    Token(TokenArgs),
    /// Run a whole flash sale under load against a mesh it starts, with baselines measured in
    /// the same run, and write a report (text and HTML with plots).
    #[cfg(feature = "local")]
    Bench(BenchArgs),
    /// Operate sales on a running gateway (needs an admin token; minted from the configured
    /// secret when none is given).
    #[command(subcommand)]
    Sale(SaleCommand),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The component to run.
    #[arg(value_enum)]
    pub(crate) component: Component,

    /// Listen on this address instead of the configured `<component>.listen`.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<SocketAddr>,

    /// limiter-sidecar only: the service to forward to, e.g. 127.0.0.1:50051 (instead of the
    /// configured `limiter.sidecar.upstream`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) upstream: Option<String>,

    /// Serve Prometheus `/metrics` on this address (instead of `telemetry.metrics_listen`).
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics_listen: Option<SocketAddr>,

    /// Answer gRPC health checks, in plaintext and nothing else, on this address too (instead
    /// of `server.health_listen`): for kubelet probes, which speak no TLS.
    #[arg(long, value_name = "ADDR")]
    pub(crate) health_listen: Option<SocketAddr>,
}

/// The components `serve` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Component {
    /// The public API: FlashSale for buyers, SaleAdmin for operators.
    Gateway,
    /// Stock decisions in Redis (flashsale.v1.Inventory).
    Inventory,
    /// Persisted orders and their lifecycle (flashsale.v1.Orders).
    Orders,
    /// Rate-limit decisions: Envoy RLS v3 and flashsale.v1.Limiter.
    Limiter,
    /// The JetStream → Postgres order writer (health only on its gRPC port).
    OrderConsumer,
    /// A gRPC proxy that applies rate limits in front of a service in the same pod.
    LimiterSidecar,
}

impl Component {
    /// Every component, in start-up order.
    #[cfg(feature = "local")]
    pub(crate) const ALL: [Component; 6] = [
        Component::Inventory,
        Component::Orders,
        Component::OrderConsumer,
        Component::Limiter,
        Component::Gateway,
        Component::LimiterSidecar,
    ];

    /// The name used in logs and on the command line.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Component::Gateway => "gateway",
            Component::Inventory => "inventory",
            Component::Orders => "orders",
            Component::Limiter => "limiter",
            Component::OrderConsumer => "order-consumer",
            Component::LimiterSidecar => "limiter-sidecar",
        }
    }
}

#[cfg(feature = "local")]
#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Stop after the demo sale, instead of running until Ctrl-C.
    #[arg(long)]
    pub(crate) exit: bool,

    /// Start the mesh without running the demo sale.
    #[arg(long)]
    pub(crate) no_demo: bool,

    /// Units in the demo sale.
    #[arg(long, default_value_t = 200)]
    pub(crate) stock: u64,

    /// Purchase attempts in the demo sale.
    #[arg(long, default_value_t = 5_000)]
    pub(crate) attempts: u32,

    /// Distinct buyers in the demo sale.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) users: u32,

    /// Stock buckets of the demo sale (1..=64; more than 1 pays off on a Redis Cluster).
    #[arg(long, default_value_t = 1)]
    pub(crate) stock_buckets: u32,

    #[command(flatten)]
    pub(crate) room: RoomArgs,

    /// Where Redis, NATS and Postgres keep their files when `up` has to start them.
    #[arg(long, default_value = ".flashsale", value_name = "DIR")]
    pub(crate) data_dir: PathBuf,
}

/// A sale's waiting room.
#[derive(Debug, Clone, Args)]
pub(crate) struct RoomArgs {
    /// Put the sale behind a fair waiting room admitting this many buyers per second
    /// (0.001..=100000); buyers queue for a single-use purchase token.
    #[arg(long, value_name = "PER_SECOND")]
    pub(crate) waiting_room: Option<f64>,

    /// With `--waiting-room`: most admitted buyers who have not bought yet.
    #[arg(long, default_value_t = 100, requires = "waiting_room")]
    pub(crate) active_cap: u32,

    /// With `--waiting-room`: how long an admitted buyer has to buy.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration, requires = "waiting_room")]
    pub(crate) admission_window: std::time::Duration,
}

impl RoomArgs {
    /// The sale's `waiting_room` field.
    pub(crate) fn to_pb(&self) -> Option<flashsale_proto::v1::WaitingRoom> {
        self.waiting_room
            .map(|rate| flashsale_proto::v1::WaitingRoom {
                admissions_per_second: rate,
                active_cap: self.active_cap,
                admission_window: Some(flashsale_proto::time::duration(
                    self.admission_window.as_millis() as u64,
                )),
            })
    }
}

#[derive(Debug, Args)]
pub(crate) struct HealthArgs {
    /// Servers to ask, as `host:port` or `http://host:port`.
    #[arg(required = true, value_name = "ADDR")]
    pub(crate) targets: Vec<String>,

    /// The service to ask about; empty means the server as a whole.
    #[arg(long, default_value = "")]
    pub(crate) service: String,

    /// How long to wait for each answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub(crate) struct TokenArgs {
    /// The user id (the token's subject).
    #[arg(long)]
    pub(crate) user: String,

    /// Grant operator rights (SaleAdmin).
    #[arg(long)]
    pub(crate) admin: bool,

    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub(crate) ttl: std::time::Duration,
}

/// Where the gateway is and who is asking.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// The gateway (or its sidecar), e.g. http://127.0.0.1:50051; default: `gateway.listen`.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) gateway: Option<String>,

    /// An admin token; default: one minted from the configured HS256 secret.
    #[arg(long, global = true, env = "FLASHSALE_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SaleCommand {
    /// Create a sale.
    Create {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The sale id; default: assigned.
        #[arg(long)]
        id: Option<String>,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Units for sale.
        #[arg(long)]
        stock: u64,
        /// Most units per buyer.
        #[arg(long, default_value_t = 1)]
        limit: u32,
        /// Price of one unit in minor units (e.g. fen).
        #[arg(long, default_value_t = 9_900)]
        price: i64,
        /// ISO 4217 currency.
        #[arg(long, default_value = "CNY")]
        currency: String,
        /// When buying opens, from now.
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        starts_in: std::time::Duration,
        /// How long buying stays open.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Reservation hold before the order must be persisted.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        hold: std::time::Duration,
        /// Time to pay once ordered.
        #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
        payment_window: std::time::Duration,
        /// Stock buckets for a hot item: more than 1 spreads its stock over several Redis
        /// Cluster masters (1..=64, at most the stock).
        #[arg(long, default_value_t = 1)]
        stock_buckets: u32,
        #[command(flatten)]
        room: RoomArgs,
    },
    /// List sales.
    List {
        #[command(flatten)]
        gateway: GatewayArgs,
    },
    /// Stock and counts of a sale.
    Stats {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The sale.
        sale_id: String,
    },
    /// End a sale now.
    End {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The sale.
        sale_id: String,
    },
    /// Compare Redis with Postgres and the stream; `--repair` rebuilds Redis from Postgres.
    Reconcile {
        #[command(flatten)]
        gateway: GatewayArgs,
        /// The sale.
        sale_id: String,
        /// Rebuild Redis from Postgres.
        #[arg(long)]
        repair: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Load and validate the configuration and the limiter rules file it names, then print
    /// the configuration (secrets redacted).
    Check,
}

/// What `flashsale bench` runs.
#[cfg(feature = "local")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchScenario {
    /// 1,000 units, 10,000 buyers, 50,000 attempts.
    Quick,
    /// 10,000 units, 200,000 buyers, 1,000,000 attempts.
    Standard,
    /// One item's reservations on a Redis Cluster, 1 vs 8 stock buckets.
    HotItem,
}

#[cfg(feature = "local")]
impl std::fmt::Display for BenchScenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = self.to_possible_value().expect("every scenario has a name");
        f.write_str(value.get_name())
    }
}

/// A baseline `flashsale bench` measures, or all or none of them.
#[cfg(feature = "local")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BaselineChoice {
    /// Every baseline.
    All,
    /// None.
    None,
    /// A gRPC server that answers at once: the transport's ceiling.
    Echo,
    /// One Postgres transaction per purchase: the naive design.
    NaivePostgres,
    /// The Reserve script called directly on Redis.
    RedisScript,
}

#[cfg(feature = "local")]
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// `quick` (1,000 units, 10,000 buyers, 50,000 attempts), `standard` (10,000 units,
    /// 200,000 buyers, 1,000,000 attempts), or `hot-item` (one item's reservations on a
    /// 3-master Redis Cluster with 1 vs 8 stock buckets: `--stock` units per sale, default
    /// 50,000; `--attempts` more after the sell-out, default 20,000; `--rounds` of each).
    #[arg(long, value_enum, default_value_t = BenchScenario::Quick)]
    pub(crate) scenario: BenchScenario,

    /// Units for sale (overrides the scenario).
    #[arg(long)]
    pub(crate) stock: Option<u64>,

    /// Distinct buyers (overrides the scenario).
    #[arg(long)]
    pub(crate) users: Option<u32>,

    /// Purchase attempts (overrides the scenario).
    #[arg(long)]
    pub(crate) attempts: Option<u32>,

    /// Most units per buyer.
    #[arg(long, default_value_t = 2)]
    pub(crate) limit: u32,

    /// Attempts in flight (closed loop), or the bound on them (open loop).
    #[arg(long, default_value_t = 256)]
    pub(crate) concurrency: usize,

    /// Send at this many attempts per second whatever the answers (open loop); latency is
    /// measured from each attempt's intended send time.
    #[arg(long)]
    pub(crate) rate: Option<f64>,

    /// Open-loop arrival shape: steady, all-at-once, ramp:DURATION, bursts:EVERY/LASTING.
    #[arg(long, default_value = "steady", value_parser = crate::bench::parse_arrival)]
    pub(crate) arrival: flashsale_loadgen::Arrival,

    /// Share of attempts that reuse the buyer's previous idempotency key.
    #[arg(long, default_value_t = 0.1)]
    pub(crate) duplicate_ratio: f64,

    /// Retries of a shed or unavailable attempt.
    #[arg(long, default_value_t = 2)]
    pub(crate) retries: u32,

    /// Share of accepted orders paid.
    #[arg(long, default_value_t = 0.5)]
    pub(crate) pay_ratio: f64,

    /// Baselines to measure: all, none, or a comma list of echo, naive-postgres, redis-script.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub(crate) baseline: Vec<BaselineChoice>,

    /// Length of the open-loop run at half the peak rate (0s skips it).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub(crate) half_peak: std::time::Duration,

    /// Where the report goes (default target/bench/<scenario>-<time>).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: Option<PathBuf>,

    /// Rounds of each configuration (`hot-item`), interleaved.
    #[arg(long, default_value_t = 3)]
    pub(crate) rounds: u32,
}
