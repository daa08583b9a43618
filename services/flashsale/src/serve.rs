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
        Component::Gateway => gateway(config, shutdown).await?,
        Component::Inventory => inventory(config, shutdown).await?,
        Component::Orders => orders(config, shutdown).await?,
        Component::OrderConsumer => order_consumer(config, shutdown).await?,
        Component::Limiter => {
            let limiter = limiter(config, shutdown).await?;
            flashsale_limiter::rls::server(limiter, config.limiter.response_headers, &config.server)
        }
        Component::LimiterSidecar => {
            anyhow::bail!("the sidecar is a proxy, not a gRPC server: use run_sidecar")
        }
    })
}

/// The mutual-TLS material, when configured (validated with the configuration already).
fn mesh_tls(config: &MeshConfig) -> Result<Option<flashsale_runtime::tls::MeshTls>> {
    config
        .tls
        .load()
        .map_err(|e| flashsale_runtime::ConfigError::from(e.within("tls")).into())
}

/// The limiter core with its rules watcher.
async fn limiter(config: &MeshConfig, shutdown: &Shutdown) -> Result<flashsale_limiter::Limiter> {
    let limiter = flashsale_limiter::Limiter::new(&config.limiter, Some(&config.redis))
        .await
        .context("starting the limiter")?;
    shutdown.spawn(limiter.clone().watch(shutdown.child()));
    Ok(limiter)
}

/// Runs the sidecar proxy on `listener` until `shutdown`.
pub(crate) async fn run_sidecar(
    config: &MeshConfig,
    upstream: Option<String>,
    listener: TcpListener,
    shutdown: &Shutdown,
) -> Result<()> {
    let limiter = limiter(config, shutdown).await?;
    let mut sidecar = config.limiter.sidecar.clone();
    if let Some(upstream) = upstream {
        sidecar.upstream = if upstream.contains("://") {
            upstream
        } else {
            format!("http://{upstream}")
        };
    }
    // The same verifier as the gateway's: a buyer's limit is charged only to a verified caller.
    let verifier = flashsale_gateway::auth::Verifier::load(&config.gateway.auth, shutdown).await?;
    let identify = flashsale_limiter::layer::Identify::new(move |header| {
        verifier.verify(header).ok().map(|caller| caller.user_id)
    });
    flashsale_limiter::sidecar::serve(
        limiter,
        sidecar,
        Some(identify),
        listener,
        shutdown.wait(),
        config.server.shutdown_grace,
    )
    .await?;
    // Its rules watcher and metrics endpoint end with the trigger.
    drain(
        shutdown.tasks_done(),
        shutdown,
        config.server.shutdown_grace,
    )
    .await;
    Ok(())
}

async fn pipeline(
    config: &MeshConfig,
    name: &str,
) -> Result<(flashsale_orders::Pipeline, async_nats::Client)> {
    use flashsale_orders::{OrderStore, Pipeline, events::StatusEvents, holds::InventoryHolds};
    let nats = flashsale_runtime::nats::connect(&config.nats, name)
        .await
        .context("connecting to NATS")?;
    let store = OrderStore::connect(&config.postgres)
        .await
        .context("connecting to Postgres")?;
    let tls = mesh_tls(config)?;
    let holds = InventoryHolds::connect_lazy(
        &config.orders.inventory_url,
        config.server.request_timeout,
        tls.as_ref(),
    )?;
    let events = StatusEvents::new(nats.clone(), config.orders.status_prefix.clone());
    Ok((
        Pipeline {
            store,
            holds,
            events,
        },
        nats,
    ))
}

async fn orders(config: &MeshConfig, shutdown: &Shutdown) -> Result<GrpcServer> {
    let (pipeline, _) = pipeline(config, "orders").await?;
    shutdown.spawn(flashsale_orders::lifecycle::run(
        pipeline.clone(),
        config.orders.lifecycle_interval,
        config.orders.lifecycle_batch,
        shutdown.child(),
    ));
    Ok(flashsale_orders::grpc::server(pipeline, &config.server)
        .with_tls(mesh_tls(config)?.as_ref()))
}

async fn order_consumer(config: &MeshConfig, shutdown: &Shutdown) -> Result<GrpcServer> {
    let (pipeline, nats) = pipeline(config, "order-consumer").await?;
    let js = async_nats::jetstream::new(nats.clone());
    let consumer =
        flashsale_orders::consumer::Consumer::new(js.clone(), config.orders.clone(), pipeline);
    let stop = shutdown.child();
    // Tracked: on SIGTERM the process waits for the batch in hand (see `run`).
    shutdown.spawn(async move {
        if let Err(e) = consumer.run(stop).await {
            tracing::error!(error = %e, "order consumer stopped");
        }
    });
    let stream = config.orders.stream.clone();
    let stop = shutdown.child();
    shutdown.spawn(async move {
        // The advisory watcher needs the stream; the consumer creates it.
        loop {
            match flashsale_orders::stream::watch_max_deliveries(
                js.clone(),
                nats.clone(),
                stream.clone(),
                stop.clone(),
            )
            .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "max-deliveries watcher waiting for the stream");
                    tokio::select! {
                        () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                        () = stop.wait() => break,
                    }
                }
            }
        }
    });
    // The consumer serves no API; its gRPC port answers health for the orchestrator.
    Ok(GrpcServer::new("order-consumer", &config.server))
}

/// `flashsale migrate`.
pub(crate) async fn migrate(config: MeshConfig) -> Result<()> {
    let _telemetry = telemetry::init("migrate", &config.telemetry);
    let store = flashsale_orders::OrderStore::connect(&config.postgres).await?;
    store.migrate().await.context("applying migrations")?;
    println!("migrations applied");
    Ok(())
}

async fn gateway(config: &MeshConfig, shutdown: &Shutdown) -> Result<GrpcServer> {
    use flashsale_gateway::{Backends, Gateway, auth::Verifier};
    let verifier = Verifier::load(&config.gateway.auth, shutdown).await?;
    let nats = flashsale_runtime::nats::connect(&config.nats, "gateway")
        .await
        .context("connecting to NATS")?;
    let store = flashsale_orders::OrderStore::connect(&config.postgres).await?;
    // The order stream must exist before the first purchase is published; set it up (the
    // consumer does the same, idempotently) and keep trying while NATS is away.
    let (js, stream, stop) = (
        async_nats::jetstream::new(nats.clone()),
        config.orders.stream.clone(),
        shutdown.child(),
    );
    shutdown.spawn(async move {
        let mut retry = flashsale_runtime::backoff::Backoff::new(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(5),
        );
        while !stop.is_triggered() {
            match flashsale_orders::stream::ensure(&js, &stream).await {
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "setting up the order stream failed; retrying");
                    retry.wait(&stop).await;
                }
            }
        }
    });
    // Waiting rooms sign tickets with `gateway.waiting_room_secret`, else the HS256 key (the
    // signing input is domain-separated from JWTs).
    let room = match config.gateway.room_secret() {
        Some(secret) => Some(
            flashsale_limiter::waiting_room::WaitingRoom::connect(&config.redis, secret)
                .await
                .context("waiting rooms")?,
        ),
        None => None,
    };
    let gateway = Gateway::new(
        config.gateway.clone(),
        Backends {
            nats,
            store,
            stream: config.orders.stream.clone(),
            room,
            shutdown: shutdown.child(),
        },
        config.server.request_timeout,
        mesh_tls(config)?.as_ref(),
    )
    .await?;
    Ok(flashsale_gateway::grpc::server(
        gateway,
        verifier,
        &config.server,
    ))
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
    shutdown.spawn(sweeper::run(
        inventory.clone(),
        sweeper::SweepConfig {
            interval: config.inventory.sweep_interval,
            batch: config.inventory.sweep_batch,
        },
        shutdown.child(),
    ));
    Ok(flashsale_inventory::grpc::server(inventory, &config.server)
        .with_tls(mesh_tls(config)?.as_ref()))
}

/// The configured listen address of `component`.
pub(crate) fn listen_addr(component: Component, config: &MeshConfig) -> SocketAddr {
    match component {
        Component::Gateway => config.gateway.listen,
        Component::Inventory => config.inventory.listen,
        Component::Orders => config.orders.listen,
        Component::OrderConsumer => config.orders.consumer_listen,
        Component::Limiter => config.limiter.listen,
        Component::LimiterSidecar => config.limiter.sidecar.listen,
    }
}

pub(crate) async fn run(args: ServeArgs, config: MeshConfig) -> Result<()> {
    let _telemetry = telemetry::init(args.component.name(), &config.telemetry);
    let addr = args
        .listen
        .unwrap_or_else(|| listen_addr(args.component, &config));
    if args.component == Component::Gateway {
        config
            .gateway
            .check_listen(addr)
            .map_err(|e| flashsale_runtime::ConfigError::from(e.within("gateway")))?;
    }
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;
    if let Some(addr) = args.metrics_listen.or(config.telemetry.metrics_listen) {
        let metrics = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        shutdown.spawn(flashsale_runtime::telemetry::serve_metrics(
            metrics,
            shutdown.wait(),
        ));
    }
    if args.component == Component::LimiterSidecar {
        return run_sidecar(&config, args.upstream, listener, &shutdown).await;
    }
    let server = build(args.component, &config, &shutdown).await?;
    if let Some(addr) = args.health_listen.or(config.server.health_listen) {
        let health = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot answer health checks on {addr}"))?;
        shutdown.spawn(server.health_only().serve(health, shutdown.wait()));
    }
    // The server drains its calls, then every tracked task finishes what it has in hand (the
    // consumer its batch), all within the grace.
    let work = async {
        let served = server.serve(listener, shutdown.wait()).await;
        if served.is_err() {
            shutdown.trigger();
        }
        shutdown.tasks_done().await;
        served
    };
    let (_, served) = drain(work, &shutdown, config.server.shutdown_grace).await;
    if let Some(result) = served {
        result?;
    }
    Ok(())
}
