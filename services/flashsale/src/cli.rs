//! The command line.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};
use flashsale_runtime::{ConfigError, Loader};

use crate::config::MeshConfig;

/// flashsale mesh: sell a few thousand items to hundreds of thousands of buyers in the same
/// second, without overselling, losing an order, or falling over.
///
/// Configuration comes from defaults, then the file given with --config (or FLASHSALE_CONFIG),
/// then FLASHSALE_<SECTION>__<KEY> environment variables (e.g.
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
        loader.with_process_env().load()
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run one component's gRPC server until SIGTERM/SIGINT (the first drains in-flight calls,
    /// a second exits at once). Every server answers grpc.health.v1 and reflection.
    Serve(ServeArgs),
    /// Start the whole mesh locally on loopback and check every component answers health.
    Up(UpArgs),
    /// Apply the Postgres schema migrations (idempotent).
    Migrate,
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

#[derive(Debug, Args)]
pub(crate) struct UpArgs {
    /// Stop once every component answered health, instead of running until Ctrl-C.
    #[arg(long)]
    pub(crate) exit: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Load and validate the configuration, then print it (secrets redacted).
    Check,
}
