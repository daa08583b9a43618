//! `flashsale serve <component>`: one component's server, drained on SIGTERM.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use flashsale_runtime::{GrpcServer, Shutdown, shutdown::drain, telemetry};
use tokio::net::TcpListener;

use crate::{
    cli::{Component, ServeArgs},
    config::MeshConfig,
};

/// Connects `component` to its stores, starts its background work (stopped by `shutdown`)
/// and returns its server, ready to serve.
pub(crate) async fn build(
    component: Component,
    config: &MeshConfig,
    shutdown: &Shutdown,
) -> Result<GrpcServer> {
    Ok(match component {
        Component::Gateway => flashsale_gateway::grpc::server(&config.server),
        Component::Inventory => inventory(config, shutdown).await?,
        Component::Orders => flashsale_orders::grpc::server(&config.server),
        Component::Limiter => flashsale_limiter::grpc::server(&config.server),
    })
}

async fn inventory(config: &MeshConfig, shutdown: &Shutdown) -> Result<GrpcServer> {
    use flashsale_inventory::{Inventory, Signals, sweeper};
    let nats = flashsale_runtime::nats::connect(&config.nats, "inventory")
        .await
        .context("connecting to NATS")?;
    let signals = Signals::new(nats, config.inventory.signal_prefix.clone());
    let inventory = Inventory::connect(&config.redis, Some(signals))
        .await
        .context("connecting to Redis")?;
    tokio::spawn(sweeper::run(
        inventory.clone(),
        sweeper::SweepConfig {
            interval: config.inventory.sweep_interval,
            batch: config.inventory.sweep_batch,
        },
        shutdown.child(),
    ));
    Ok(flashsale_inventory::grpc::server(inventory, &config.server))
}

/// The configured listen address of `component`.
pub(crate) fn listen_addr(component: Component, config: &MeshConfig) -> SocketAddr {
    match component {
        Component::Gateway => config.gateway.listen,
        Component::Inventory => config.inventory.listen,
        Component::Orders => config.orders.listen,
        Component::Limiter => config.limiter.listen,
    }
}

pub(crate) async fn run(args: ServeArgs, config: MeshConfig) -> Result<()> {
    let _telemetry = telemetry::init(args.component.name(), &config.telemetry);
    let addr = args
        .listen
        .unwrap_or_else(|| listen_addr(args.component, &config));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    let server = build(args.component, &config, &shutdown).await?;
    let (_, served) = drain(
        server.serve(listener, shutdown.wait()),
        &shutdown,
        config.server.shutdown_grace,
    )
    .await;
    if let Some(result) = served {
        result?;
    }
    Ok(())
}
