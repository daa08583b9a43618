//! `flashsale bench`: a whole flash sale under load, with baselines measured in the same run,
//! a text summary and an HTML report with plots.
//!
//! By default it starts its own mesh — throwaway redis-server, nats-server and Postgres (with
//! `fsync` on), and every component as a separate process of this binary, so each one's CPU and
//! memory can be read — creates a sale, drives it (closed-loop with N buyers in flight, or
//! open-loop at a fixed rate with an arrival shape), pays a share of the orders, audits the
//! invariants, then measures the baselines and an open-loop run at half the peak rate.

mod baselines;
mod hot_item;
mod procs;
mod report;
mod standard;

use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use flashsale_gateway::auth::{Signer, bearer};
use flashsale_loadgen::{Arrival, Load, Report, Scenario};
use flashsale_orders::OrderStore;
use flashsale_proto::{
    time::{duration, timestamp},
    v1::{self as pb, inventory_client::InventoryClient, sale_admin_client::SaleAdminClient},
};
use flashsale_testkit::{NatsServer, PostgresServer, RedisServer, free_port};
use tonic::transport::Channel;

use crate::{
    cli::{BaselineChoice, BenchArgs, BenchScenario},
    config::MeshConfig,
};
use report::StockSample;

/// The secret the benchmark's own mesh signs tokens with.
const SECRET: &str = "benchmark-secret-not-for-production";

/// A service process, killed when dropped.
struct Service {
    name: &'static str,
    child: Child,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The mesh the benchmark started.
struct OwnMesh {
    _stores: (RedisServer, NatsServer, PostgresServer),
    services: Vec<Service>,
    config: MeshConfig,
    sidecar: u16,
    gateway: u16,
    orders: u16,
    inventory: u16,
}

async fn channel(addr: &str) -> Result<Channel> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    tonic::transport::Endpoint::from_shared(url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {url}"))
}

async fn wait_serving(port: u16) -> Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(ch) = channel(&format!("127.0.0.1:{port}")).await {
            let mut health = HealthClient::new(ch);
            if health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == 1)
            {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the service on port {port} never reported SERVING");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start_mesh(out: &std::path::Path) -> Result<OwnMesh> {
    let (redis, nats, pg) = tokio::join!(
        RedisServer::start(),
        NatsServer::start(),
        PostgresServer::start_durable()
    );
    let (redis, nats, pg) = (redis?, nats?, pg?);
    let db = pg.create_database().await?;
    let port = || free_port().context("no free port");
    let (gw, inv, ord, cons, lim, side) = (port()?, port()?, port()?, port()?, port()?, port()?);
    let text = format!(
        r#"[telemetry]
log_level = "warn"
[redis]
url = "{redis}"
pool_size = 8
[nats]
url = "{nats}"
[postgres]
url = "{pg}"
max_connections = 16
[gateway]
listen = "127.0.0.1:{gw}"
inventory_url = "http://127.0.0.1:{inv}"
orders_url = "http://127.0.0.1:{ord}"
max_in_flight_per_sale = 4096
[gateway.auth]
secret = "{SECRET}"
[inventory]
listen = "127.0.0.1:{inv}"
[orders]
listen = "127.0.0.1:{ord}"
consumer_listen = "127.0.0.1:{cons}"
inventory_url = "http://127.0.0.1:{inv}"
fetch_wait = "50ms"
[limiter]
listen = "127.0.0.1:{lim}"
[limiter.sidecar]
listen = "127.0.0.1:{side}"
upstream = "http://127.0.0.1:{gw}"
"#,
        redis = redis.url(),
        nats = nats.url(),
        pg = db.url,
    );
    let file = out.join("mesh.toml");
    std::fs::write(&file, &text)?;
    let config: MeshConfig = flashsale_runtime::Loader::new().with_file(&file).load()?;
    let exe = std::env::current_exe()?;
    // The benchmark's mesh is described by its file alone: no FLASHSALE_* override reaches it.
    let command = |exe: &std::path::Path| {
        let mut command = Command::new(exe);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FLASHSALE_") {
                command.env_remove(key);
            }
        }
        command.arg("--config").arg(&file);
        command
    };
    let status = command(&exe)
        .arg("migrate")
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("migrations failed");
    }
    let mut services = Vec::new();
    for (name, port) in [
        ("inventory", inv),
        ("orders", ord),
        ("order-consumer", cons),
        ("limiter", lim),
        ("gateway", gw),
        ("limiter-sidecar", side),
    ] {
        let log = std::fs::File::create(out.join(format!("{name}.log")))?;
        let child = command(&exe)
            .args(["serve", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        services.push(Service { name, child });
        wait_serving(port).await?;
    }
    Ok(OwnMesh {
        _stores: (redis, nats, pg),
        services,
        config,
        sidecar: side,
        gateway: gw,
        orders: ord,
        inventory: inv,
    })
}

fn usage_of(services: &[Service]) -> BTreeMap<String, procs::Usage> {
    services
        .iter()
        .filter_map(|s| procs::usage(s.child.id()).map(|u| (s.name.to_owned(), u)))
        .collect()
}

async fn create_sale(
    gateway: Channel,
    signer: &Signer,
    name: &str,
    stock: u64,
    limit: u32,
) -> Result<pb::Sale> {
    let now = flashsale_proto::time::now_ms();
    let mut request = tonic::Request::new(pb::CreateSaleRequest {
        sale: Some(pb::Sale {
            sale_id: format!("bench-{name}-{now}"),
            name: format!("benchmark: {name}"),
            stock,
            per_user_limit: limit,
            unit_price_minor: 9_900,
            currency: "CNY".into(),
            starts_at: Some(timestamp(now - 1_000)),
            ends_at: Some(timestamp(now + 6 * 3_600_000)),
            reservation_hold: Some(duration(120_000)),
            payment_window: Some(duration(3_600_000)),
            state: 0,
            stock_buckets: 0,
            waiting_room: None,
        }),
    });
    request.metadata_mut().insert(
        "authorization",
        bearer(&signer.token("bench", true, Duration::from_secs(3600))),
    );
    Ok(SaleAdminClient::new(gateway)
        .create_sale(request)
        .await?
        .into_inner())
}

/// Samples stock and written orders every 250 ms until stopped.
fn sample_stock(
    inventory: Channel,
    store: OrderStore,
    sale_id: String,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<StockSample>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut client = InventoryClient::new(inventory);
        while !stop.load(Ordering::Relaxed) {
            let stock = client
                .get_stock(pb::GetStockRequest {
                    sale_id: sale_id.clone(),
                })
                .await
                .map(tonic::Response::into_inner)
                .unwrap_or_default();
            let persisted = store
                .sale_totals(&sale_id)
                .await
                .map(|t| t.orders.iter().map(|(_, n)| n).sum())
                .unwrap_or(0);
            samples.push(StockSample {
                at: started.elapsed().as_secs_f64(),
                available: stock.available,
                held: stock.held,
                sold: stock.sold,
                persisted,
            });
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        samples
    })
}

fn progress_bar(
    total: u64,
    label: &str,
) -> (
    indicatif::ProgressBar,
    Arc<AtomicU64>,
    tokio::task::JoinHandle<()>,
) {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:>18} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_owned());
    let counter = Arc::new(AtomicU64::new(0));
    let (b, c) = (bar.clone(), counter.clone());
    let ticker = tokio::spawn(async move {
        loop {
            let n = c.load(Ordering::Relaxed);
            b.set_position(n);
            if n >= total {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (bar, counter, ticker)
}

async fn drive_with_bar(
    target: Channel,
    signer: Signer,
    sale_id: &str,
    scenario: &Scenario,
    load: Load,
    label: &str,
) -> Report {
    let (bar, counter, ticker) = progress_bar(u64::from(scenario.attempts), label);
    let report =
        flashsale_loadgen::run(target, signer, sale_id, scenario, load, Some(counter)).await;
    ticker.abort();
    bar.finish();
    report
}

/// The baselines a `--baseline` list names (`all` and `none` expanded).
fn chosen(list: &[BaselineChoice]) -> Vec<BaselineChoice> {
    use BaselineChoice as B;
    if list.contains(&B::None) {
        return Vec::new();
    }
    if list.contains(&B::All) {
        return vec![B::Echo, B::NaivePostgres, B::RedisScript];
    }
    list.to_vec()
}

/// `--arrival`: steady, all-at-once, ramp:DURATION or bursts:EVERY/LASTING.
pub(crate) fn parse_arrival(text: &str) -> Result<Arrival, String> {
    arrival(text).map_err(|e| e.to_string())
}

fn arrival(text: &str) -> Result<Arrival> {
    Ok(match text.split_once(':') {
        None if text == "steady" => Arrival::Steady,
        None if text == "all-at-once" => Arrival::AllAtOnce,
        Some(("ramp", secs)) => Arrival::Ramp(humantime::parse_duration(secs)?),
        Some(("bursts", spec)) => {
            let (every, lasting) = spec
                .split_once('/')
                .context("bursts:EVERY/LASTING, e.g. bursts:1s/200ms")?;
            Arrival::Bursts {
                every: humantime::parse_duration(every)?,
                lasting: humantime::parse_duration(lasting)?,
            }
        }
        _ => bail!("arrival must be steady, all-at-once, ramp:DURATION or bursts:EVERY/LASTING"),
    })
}

/// `flashsale bench`.
pub(crate) async fn run(args: BenchArgs, config: MeshConfig) -> Result<()> {
    // The bench starts its own mesh, configured apart from the one `--config` describes.
    let _ = config;
    match args.scenario {
        BenchScenario::HotItem => hot_item::run(&args).await,
        BenchScenario::Quick | BenchScenario::Standard => Box::pin(standard::run(args)).await,
    }
}
