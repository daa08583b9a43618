//! `flashsale serve <component>`: one component's server, drained on SIGTERM.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use flashsale_runtime::{GrpcServer, Shutdown, shutdown::drain, telemetry};
use tokio::net::TcpListener;

use crate::{
    cli::{Component, ServeArgs},
    config::MeshConfig,
};

/// Builds the server for `component` from the configuration.
pub(crate) fn build(component: Component, config: &MeshConfig) -> GrpcServer {
    match component {
        Component::Gateway => flashsale_gateway::grpc::server(&config.server),
        Component::Inventory => flashsale_inventory::grpc::server(&config.server),
        Component::Orders => flashsale_orders::grpc::server(&config.server),
        Component::Limiter => flashsale_limiter::grpc::server(&config.server),
    }
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
    let server = build(args.component, &config);
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
