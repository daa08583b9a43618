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

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use flashsale_gateway::auth::{Signer, bearer};
use flashsale_loadgen::{Arrival, Load, Report, Scenario, Sources};
use flashsale_orders::OrderStore;
use flashsale_proto::{
    time::{duration, timestamp},
    v1::{self as pb, inventory_client::InventoryClient, sale_admin_client::SaleAdminClient},
};
use flashsale_testkit::{NatsServer, PostgresServer, RedisServer, free_port};
use secrecy::ExposeSecret;
use tonic::transport::Channel;

use crate::{
    cli::{BaselineChoice, BenchArgs, BenchScenario},
    config::MeshConfig,
};
use report::{Series, StockSample, human};

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
    let (stock, users, attempts) = match args.scenario {
        BenchScenario::HotItem => return hot_item::run(&args).await,
        BenchScenario::Standard => (10_000, 200_000, 1_000_000),
        BenchScenario::Quick => (1_000, 10_000, 50_000),
    };
    let (stock, users, attempts) = (
        args.stock.unwrap_or(stock),
        args.users.unwrap_or(users),
        args.attempts.unwrap_or(attempts),
    );
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "target/bench/{}-{}",
            args.scenario,
            flashsale_proto::time::now_ms() / 1000
        ))
    });
    std::fs::create_dir_all(&out)?;
    let baselines = chosen(&args.baseline);

    println!(
        "flashsale bench: scenario {} — {stock} units, {users} buyers, {attempts} attempts",
        args.scenario
    );
    let mesh = Box::pin(start_mesh(&out)).await?;
    println!(
        "  mesh up: 6 services as separate processes; Redis, NATS JetStream, Postgres (fsync on) on loopback"
    );
    let auth = flashsale_gateway::config::AuthConfig {
        secret: SECRET.to_owned().into(),
        ..Default::default()
    };
    let signer = Signer::new(&auth)?;
    let _ = config;
    let target = channel(&format!("127.0.0.1:{}", mesh.sidecar)).await?;
    let gateway = channel(&format!("127.0.0.1:{}", mesh.gateway)).await?;
    let inventory = channel(&format!("127.0.0.1:{}", mesh.inventory)).await?;
    let store = OrderStore::connect(&mesh.config.postgres).await?;

    let scenario = Scenario {
        users,
        attempts,
        concurrency: args.concurrency,
        quantity: 1,
        duplicate_ratio: args.duplicate_ratio,
        retries: args.retries,
        seed: 42,
        ..Scenario::default()
    };
    let load = match args.rate {
        Some(rate) => Load::Open {
            rate,
            arrival: args.arrival,
            max_in_flight: args.concurrency.max(1) * 8,
        },
        None => Load::Closed {
            concurrency: args.concurrency,
        },
    };

    // The sale.
    let sale = create_sale(gateway.clone(), &signer, "sale", stock, args.limit).await?;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_stock(
        inventory.clone(),
        store.clone(),
        sale.sale_id.clone(),
        started,
        stop.clone(),
    );
    let before = usage_of(&mesh.services);
    let report = drive_with_bar(
        target.clone(),
        signer.clone(),
        &sale.sale_id,
        &scenario,
        load,
        "flash sale",
    )
    .await;
    let after = usage_of(&mesh.services);
    let paid = flashsale_loadgen::pay(
        channel(&format!("127.0.0.1:{}", mesh.orders)).await?,
        &report.accepted,
        args.pay_ratio,
        5,
        Duration::from_secs(60),
    )
    .await;
    let sources = Sources {
        store: store.clone(),
        inventory: inventory.clone(),
    };
    let audit = flashsale_loadgen::audit(&sources, &sale, &report, Duration::from_secs(300)).await;
    let last_order_at = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let stock_samples = sampler.await.unwrap_or_default();
    let usage = procs::delta(&before, &after);
    let all_written_at = stock_samples
        .iter()
        .find(|s| s.persisted as usize >= report.accepted.len())
        .map_or(last_order_at, |s| Duration::from_secs_f64(s.at));

    // Selling phase and sold-out phase.
    let selling = report
        .last_accepted
        .unwrap_or(report.elapsed)
        .max(Duration::from_millis(1));
    let accepted_per_second = report.accepted.len() as f64 / selling.as_secs_f64();
    let sold_out_answers = report.rejected.get("SOLD_OUT").copied().unwrap_or(0);
    let sold_out_span = report
        .elapsed
        .saturating_sub(report.first_sold_out.unwrap_or(report.elapsed));
    let sold_out_rps = if sold_out_span > Duration::from_millis(500) {
        sold_out_answers as f64 / sold_out_span.as_secs_f64()
    } else {
        0.0
    };

    let mut lines = Vec::new();
    let mut say = |line: String| {
        println!("{line}");
        lines.push(line);
    };
    say(String::new());
    say(format!(
        "Flash sale: {stock} units, limit {} per buyer, {users} buyers, {attempts} attempts, {}",
        args.limit,
        match load {
            Load::Closed { concurrency } => format!("closed loop, {concurrency} in flight"),
            Load::Open { rate, arrival, .. } => format!("open loop at {rate:.0}/s ({arrival:?})"),
        }
    ));
    say(format!(
        "  whole sale           {}  ({:.0} attempts/s)",
        human(report.elapsed),
        report.attempts_per_second()
    ));
    say(format!(
        "  accepted             {}  ({:.0}/s while selling, sold out after {})",
        report.accepted.len(),
        accepted_per_second,
        human(selling)
    ));
    for (reason, n) in &report.rejected {
        say(format!("  rejected {reason:<12} {n}"));
    }
    say(format!(
        "  sold-out answers     {sold_out_rps:.0}/s after the sell-out"
    ));
    say(format!(
        "  latency              p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        human(report.latency(0.5)),
        human(report.latency(0.9)),
        human(report.latency(0.99)),
        human(report.latency(0.999)),
        human(report.latency(1.0))
    ));
    say(format!(
        "  orders written       {} ({:.0}/s); the last one {} after the start",
        report.accepted.len(),
        report.accepted.len() as f64 / all_written_at.as_secs_f64().max(0.001),
        human(all_written_at)
    ));
    say(format!("  paid                 {}", paid.len()));
    say("  per service (CPU during the sale, memory now / peak):".into());
    for (name, u) in &usage {
        say(format!(
            "    {name:<16} cpu {:>7}  rss {:>6.1} MiB / {:>6.1} MiB",
            human(u.cpu),
            u.rss as f64 / 1048576.0,
            u.peak_rss as f64 / 1048576.0
        ));
    }
    say("  invariant audit:".into());
    for line in audit.lines() {
        say(format!("    {line}"));
    }

    // Baselines, same machine, same run.
    let mut ratios = Vec::new();
    if baselines.contains(&BaselineChoice::Echo) {
        let (addr, _stop) = baselines::echo().await?;
        let echo_attempts = attempts.min(200_000);
        let echo_scenario = Scenario {
            attempts: echo_attempts,
            ..scenario.clone()
        };
        let echo = drive_with_bar(
            channel(&addr.to_string()).await?,
            signer.clone(),
            "echo",
            &echo_scenario,
            Load::Closed {
                concurrency: args.concurrency,
            },
            "echo baseline",
        )
        .await;
        let echo_rps = echo.attempts_per_second();
        say(format!(
            "Baseline echo: bare tonic Purchase answering at once: {echo_rps:.0}/s at {} in flight",
            args.concurrency
        ));
        if sold_out_rps > 0.0 {
            ratios.push(format!(
                "sold-out answers/s ÷ echo/s = {sold_out_rps:.0} ÷ {echo_rps:.0} = {:.2}",
                sold_out_rps / echo_rps
            ));
        }
        ratios.push(format!(
            "all attempts/s ÷ echo/s = {:.0} ÷ {echo_rps:.0} = {:.2}",
            report.attempts_per_second(),
            report.attempts_per_second() / echo_rps
        ));
    }
    if baselines.contains(&BaselineChoice::RedisScript) {
        let redis = flashsale_runtime::config::RedisConfig {
            url: mesh.config.redis.url.expose_secret().to_owned().into(),
            command_timeout: Duration::from_secs(10),
            pool_size: 8,
            ..Default::default()
        };
        let core = flashsale_inventory::Inventory::connect(&redis, None).await?;
        let rate = baselines::redis_script(&core, 50_000, args.concurrency).await?;
        say(format!(
            "Baseline redis-script: the Reserve script called directly, {} in flight: {rate:.0} reservations/s",
            args.concurrency
        ));
        ratios.push(format!(
            "accepted reservations/s ÷ raw script/s = {accepted_per_second:.0} ÷ {rate:.0} = {:.2}",
            accepted_per_second / rate
        ));
    }
    if baselines.contains(&BaselineChoice::NaivePostgres) {
        let naive_sale = format!("naive-{}", sale.sale_id);
        let (addr, _stop) =
            baselines::naive_postgres(store.db().clone(), &naive_sale, stock).await?;
        let naive = drive_with_bar(
            channel(&addr.to_string()).await?,
            signer.clone(),
            &naive_sale,
            &scenario,
            Load::Closed {
                concurrency: args.concurrency,
            },
            "naive-postgres",
        )
        .await;
        let naive_accepted = naive.accepted.len();
        say(format!(
            "Baseline naive-postgres: one transaction per attempt: whole sale {} ({:.0} attempts/s), {} accepted, p99 {}",
            human(naive.elapsed),
            naive.attempts_per_second(),
            naive_accepted,
            human(naive.latency(0.99))
        ));
        ratios.push(format!(
            "whole-sale time mesh ÷ naive-postgres = {} ÷ {} = {:.2}",
            human(report.elapsed),
            human(naive.elapsed),
            report.elapsed.as_secs_f64() / naive.elapsed.as_secs_f64()
        ));
    }
    if args.half_peak > Duration::ZERO {
        let peak = report.attempts_per_second();
        let rate = peak / 2.0;
        let half_attempts = ((rate * args.half_peak.as_secs_f64()) as u32).max(1);
        let half_sale =
            create_sale(gateway.clone(), &signer, "half-peak", stock, args.limit).await?;
        let half_scenario = Scenario {
            attempts: half_attempts,
            seed: 43,
            ..scenario.clone()
        };
        let half = drive_with_bar(
            target.clone(),
            signer.clone(),
            &half_sale.sale_id,
            &half_scenario,
            Load::Open {
                rate,
                arrival: Arrival::Steady,
                max_in_flight: args.concurrency * 8,
            },
            "half-peak",
        )
        .await;
        say(format!(
            "Open loop at half the peak ({rate:.0}/s of {peak:.0}/s) for {}: p50 {}  p99 {}  p99.9 {}",
            human(args.half_peak),
            human(half.latency(0.5)),
            human(half.latency(0.99)),
            human(half.latency(0.999))
        ));
        ratios.push(format!(
            "p99 at half the peak rate = {}",
            human(half.latency(0.99))
        ));
    }
    if !ratios.is_empty() {
        say("Ratios (same run, same machine):".into());
        for r in &ratios {
            say(format!("  {r}"));
        }
    }

    let series = Series {
        ticks: report.timeline.clone(),
        stock: stock_samples,
    };
    let page = report::write(
        &out,
        &format!("flashsale bench — {}", args.scenario),
        &lines.join("\n"),
        &series,
        stock,
    )?;
    println!("\nReport: {}", page.display());
    drop(mesh);
    if !audit.passed() {
        bail!("the invariant audit failed");
    }
    Ok(())
}
