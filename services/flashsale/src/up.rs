//! `flashsale up`: the whole mesh on loopback in one process, with a demo flash sale.
//!
//! Redis, NATS and Postgres are used where the configuration points when they answer, and
//! started as local processes (files under `--data-dir`) when they do not. Then the database and
//! its schema, every component (limiter sidecar in front of the gateway), a demo sale run through
//! the sidecar, and the audit of its invariants.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use anyhow::{Context, Result, bail};
use flashsale_gateway::auth::{Signer, bearer};
use flashsale_loadgen::{Scenario, Sources};
use flashsale_orders::OrderStore;
use flashsale_proto::{
    time::{duration, timestamp},
    v1::{self as pb, sale_admin_client::SaleAdminClient},
};
use flashsale_runtime::{Shutdown, shutdown::drain, telemetry};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    cli::{Component, UpArgs},
    config::MeshConfig,
    local,
    serve::{build, listen_addr, run_sidecar},
};

/// Limits the demo applies through the sidecar when no rules file is configured.
const DEMO_RULES: &str = "\
# Written by `flashsale up` for its demo: each buyer may try to purchase 5 times a second.
domain: flashsale
descriptors:
  - key: method
    value: /flashsale.v1.FlashSale/Purchase
    descriptors:
      - key: user
        rate_limit: { unit: second, requests_per_unit: 5 }
";

async fn connect(addr: SocketAddr) -> Result<Channel> {
    Ok(tonic::transport::Endpoint::from_shared(local::url(addr))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?)
}

pub(crate) async fn run(args: UpArgs, mut config: MeshConfig) -> Result<()> {
    // The demo prints its own story; service logs only for what goes wrong, unless asked.
    let mut logs = config.telemetry.clone();
    if logs.log_level == flashsale_runtime::telemetry::TelemetryConfig::default().log_level {
        logs.log_level = "warn".into();
    }
    let _telemetry = telemetry::init("flashsale-up", &logs);
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;

    println!("flashsale mesh: starting on loopback");
    let started = local::ensure(&config, &args.data_dir).await?;
    for line in started.describe() {
        println!("  {line}");
    }
    prepare(&args, &mut config).await?;
    let mesh = start(&mut config, &shutdown).await?;
    if let Err(e) = mesh.check_health().await {
        shutdown.trigger();
        return Err(e);
    }

    let signer = Signer::new(&config.gateway.auth)?;
    let outcome = if args.no_demo {
        Ok(true)
    } else {
        demo(&config, &args, &signer, &mesh).await
    };
    if args.exit {
        shutdown.trigger();
    } else {
        let token = signer.token("operator", true, Duration::from_secs(24 * 3600));
        println!(
            "\nThe mesh keeps running; buyers connect to the sidecar at {}.",
            local::url(mesh.sidecar)
        );
        println!("Admin token (24 h): {token}");
        println!(
            "Try: flashsale sale list --gateway {}   ·   Ctrl-C stops everything.",
            local::url(mesh.gateway)
        );
    }
    let all = futures::future::join_all(mesh.servers);
    let (_, results) = drain(all, &shutdown, config.server.shutdown_grace).await;
    for result in results.into_iter().flatten() {
        result.context("server task panicked")??;
    }
    drop(started);
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => bail!("the demo sale's audit failed"),
        Err(e) => Err(e),
    }
}

/// The database and its schema, and the demo's rules when none are configured.
async fn prepare(args: &UpArgs, config: &mut MeshConfig) -> Result<()> {
    if OrderStore::create_database_if_missing(&config.postgres).await? {
        println!("  created the database");
    }
    OrderStore::connect(&config.postgres)
        .await?
        .migrate()
        .await
        .context("applying migrations")?;
    println!("  migrations applied");
    if config.limiter.rules_file.is_none() {
        std::fs::create_dir_all(&args.data_dir)?;
        let rules = args.data_dir.join("limits.yaml");
        std::fs::write(&rules, DEMO_RULES)?;
        config.limiter.rules_file = Some(rules);
    }
    Ok(())
}

/// The mesh as `up` runs it: every component's server task and where each listens.
struct Mesh {
    servers: Vec<tokio::task::JoinHandle<Result<()>>>,
    /// (component, address, the gRPC services it answers).
    endpoints: Vec<(Component, SocketAddr, Vec<String>)>,
    inventory: SocketAddr,
    orders: SocketAddr,
    gateway: SocketAddr,
    sidecar: SocketAddr,
}

/// Binds every listener first, so each component is told where the others really are, then
/// starts every component in this process.
async fn start(config: &mut MeshConfig, shutdown: &Shutdown) -> Result<Mesh> {
    let mut listeners = Vec::new();
    for component in Component::ALL {
        let addr = listen_addr(component, config);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("{}: cannot listen on {addr}", component.name()))?;
        listeners.push((component, listener.local_addr()?, listener));
    }
    let addr_of = |c: Component| {
        listeners
            .iter()
            .find(|(k, _, _)| *k == c)
            .map(|(_, a, _)| *a)
            .with_context(|| c.name())
    };
    let mut mesh = Mesh {
        servers: Vec::new(),
        endpoints: Vec::new(),
        inventory: addr_of(Component::Inventory)?,
        orders: addr_of(Component::Orders)?,
        gateway: addr_of(Component::Gateway)?,
        sidecar: addr_of(Component::LimiterSidecar)?,
    };
    config.gateway.inventory_url = local::url(mesh.inventory);
    config.gateway.orders_url = local::url(mesh.orders);
    config.orders.inventory_url = local::url(mesh.inventory);
    config.limiter.sidecar.upstream = local::url(mesh.gateway);
    for (component, addr, listener) in listeners {
        if component == Component::LimiterSidecar {
            let (config, shutdown) = (config.clone(), shutdown.clone());
            mesh.servers.push(tokio::spawn(async move {
                run_sidecar(&config, None, listener, &shutdown).await
            }));
            let names = vec!["proxy to the gateway".to_owned()];
            mesh.endpoints.push((component, addr, names));
            continue;
        }
        let server = build(component, config, shutdown).await?;
        let names: Vec<String> = server
            .service_names()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let stop = shutdown.wait();
        mesh.servers.push(tokio::spawn(async move {
            server
                .serve(listener, stop)
                .await
                .map_err(anyhow::Error::from)
        }));
        mesh.endpoints.push((component, addr, names));
    }
    Ok(mesh)
}

impl Mesh {
    /// Prints each component's health; an error names the first that is not SERVING.
    async fn check_health(&self) -> Result<()> {
        println!("\nComponents:");
        for (component, addr, names) in &self.endpoints {
            let status = health(*addr).await;
            println!(
                "  {:<16} {:<22} {:<11} {}",
                component.name(),
                addr,
                status.as_str_name(),
                names.join(", ")
            );
            if status != ServingStatus::Serving {
                bail!("{} does not report SERVING", component.name());
            }
        }
        Ok(())
    }
}

/// Runs the demo sale and prints its outcome; `Ok(false)` when the audit failed.
async fn demo(config: &MeshConfig, args: &UpArgs, signer: &Signer, mesh: &Mesh) -> Result<bool> {
    let now = flashsale_proto::time::now_ms();
    let sale = pb::Sale {
        sale_id: format!("demo-{}", now / 1000),
        name: "Demo flash sale".into(),
        stock: args.stock,
        per_user_limit: 2,
        unit_price_minor: 9_900,
        currency: "CNY".into(),
        starts_at: Some(timestamp(now)),
        ends_at: Some(timestamp(now + 3_600_000)),
        reservation_hold: Some(duration(30_000)),
        payment_window: Some(duration(600_000)),
        state: 0,
        stock_buckets: args.stock_buckets,
        waiting_room: args.room.to_pb(),
    };
    let mut admin = SaleAdminClient::new(connect(mesh.gateway).await?);
    let mut create = tonic::Request::new(pb::CreateSaleRequest { sale: Some(sale) });
    create.metadata_mut().insert(
        "authorization",
        bearer(&signer.token("operator", true, Duration::from_secs(600))),
    );
    let sale = admin
        .create_sale(create)
        .await
        .context("creating the demo sale")?
        .into_inner();
    println!("\nDemo sale: {}", crate::admin::describe(&sale));
    println!(
        "  {} attempts by {} buyers through the limiter sidecar, 64 in flight, 10% repeated idempotency keys{}",
        args.attempts,
        args.users,
        if sale.waiting_room.is_some() {
            "; each buyer queues once for a purchase token"
        } else {
            ""
        }
    );

    let scenario = Scenario {
        users: args.users,
        attempts: args.attempts,
        concurrency: 64,
        waiting_room: sale.waiting_room.is_some(),
        ..Scenario::default()
    };
    let report = flashsale_loadgen::drive(
        connect(mesh.sidecar).await?,
        signer.clone(),
        &sale.sale_id,
        &scenario,
    )
    .await;
    let paid = flashsale_loadgen::pay(
        connect(mesh.orders).await?,
        &report.accepted,
        0.5,
        11,
        Duration::from_secs(30),
    )
    .await;
    let sources = Sources {
        store: OrderStore::connect(&config.postgres).await?,
        inventory: connect(mesh.inventory).await?,
    };
    let audit = flashsale_loadgen::audit(&sources, &sale, &report, Duration::from_secs(60)).await;

    print_outcome(&report, paid.len(), &audit);
    Ok(audit.passed())
}

/// The demo's outcome: answers by kind, latency, stock, orders and the audit.
fn print_outcome(
    report: &flashsale_loadgen::Report,
    paid: usize,
    audit: &flashsale_loadgen::Audit,
) {
    println!(
        "\nOutcome ({:.1} s, {:.0} attempts/s):",
        report.elapsed.as_secs_f64(),
        report.attempts as f64 / report.elapsed.as_secs_f64()
    );
    let rejected: BTreeMap<_, _> = report.rejected.iter().collect();
    let w = rejected
        .keys()
        .map(|reason| reason.len() + 9)
        .max()
        .unwrap_or(0)
        .max(19);
    println!(
        "  {:<w$} {:>7}  ({} more answers repeated an earlier purchase)",
        "accepted",
        report.accepted.len(),
        report.duplicates_answered
    );
    for (reason, n) in rejected {
        println!("  {:<w$} {n:>7}", format!("rejected {reason}"));
    }
    println!("  {:<w$} {:>7}", "paid", paid);
    println!(
        "  latency p50 {:?}  p99 {:?}  max {:?}",
        report.latency(0.5),
        report.latency(0.99),
        report.latency(1.0)
    );
    if let Some(s) = &audit.stock {
        println!(
            "  stock (Redis)       available {}  held {}  sold {}  of {}",
            s.available, s.held, s.sold, s.total
        );
    }
    println!(
        "  orders (Postgres)   {}",
        audit
            .orders_by_status
            .iter()
            .map(|(status, n)| format!("{status} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\nInvariant audit:");
    for line in audit.lines() {
        println!("  {line}");
    }
    println!(
        "  {}",
        if audit.passed() {
            "All invariants hold."
        } else {
            "AUDIT FAILED"
        }
    );
}

async fn health(addr: SocketAddr) -> ServingStatus {
    let check = async {
        let mut client = HealthClient::new(connect(addr).await.ok()?);
        let response = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .ok()
        .flatten()
        .unwrap_or(ServingStatus::Unknown)
}
