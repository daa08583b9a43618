//! The `quick` and `standard` scenarios: one whole flash sale through the mesh, then the
//! baselines and an open-loop run at half the peak rate, each figure quoted as a ratio against
//! a baseline measured in the same run.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use flashsale_gateway::auth::Signer;
use flashsale_loadgen::{Arrival, Audit, Load, Report, Scenario, Sources};
use flashsale_orders::OrderStore;
use flashsale_proto::v1 as pb;
use secrecy::ExposeSecret;
use tonic::transport::Channel;

use super::{
    OwnMesh, SECRET, baselines, channel, chosen, create_sale, drive_with_bar, procs,
    report::{self, Series, StockSample, human},
    sample_stock, start_mesh, usage_of,
};
use crate::cli::{BaselineChoice, BenchArgs, BenchScenario};

/// What every phase of the run shares: the mesh, its clients and the buyers' behaviour.
struct Bench {
    args: BenchArgs,
    stock: u64,
    scenario: Scenario,
    load: Load,
    signer: Signer,
    mesh: OwnMesh,
    target: Channel,
    gateway: Channel,
    inventory: Channel,
    store: OrderStore,
}

/// The sale under load, and what was measured around it.
struct SaleRun {
    sale: pb::Sale,
    report: Report,
    paid: usize,
    audit: Audit,
    usage: BTreeMap<String, procs::Usage>,
    stock_samples: Vec<StockSample>,
    all_written_at: Duration,
}

/// The summary's lines, printed as they are said.
#[derive(Default)]
struct Lines(Vec<String>);

impl Lines {
    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        println!("{line}");
        self.0.push(line);
    }
}

/// `flashsale bench --scenario quick|standard`.
pub(super) async fn run(args: BenchArgs) -> Result<()> {
    let (stock, users, attempts) = match args.scenario {
        BenchScenario::Standard => (10_000, 200_000, 1_000_000),
        _ => (1_000, 10_000, 50_000),
    };
    let (stock, users, attempts) = (
        args.stock.unwrap_or(stock),
        args.users.unwrap_or(users),
        args.attempts.unwrap_or(attempts),
    );
    let out = args.out.clone().unwrap_or_else(|| {
        let now = flashsale_proto::time::now_ms() / 1000;
        PathBuf::from(format!("target/bench/{}-{now}", args.scenario))
    });
    std::fs::create_dir_all(&out)?;
    println!(
        "flashsale bench: scenario {} — {stock} units, {users} buyers, {attempts} attempts",
        args.scenario
    );
    let bench = Box::pin(Bench::start(args, stock, users, attempts, &out)).await?;
    let run = bench.sell().await?;
    let mut lines = Lines::default();
    let figures = Figures::of(&run.report);
    bench.describe(&run, &figures, &mut lines);
    let ratios = bench.baselines(&run, &figures, &mut lines).await?;
    if !ratios.is_empty() {
        lines.say("Ratios (same run, same machine):");
        for r in &ratios {
            lines.say(format!("  {r}"));
        }
    }
    let series = Series {
        ticks: run.report.timeline.clone(),
        stock: run.stock_samples,
    };
    let title = format!("flashsale bench — {}", bench.args.scenario);
    let page = report::write(&out, &title, &lines.0.join("\n"), &series, stock)?;
    println!("\nReport: {}", page.display());
    drop(bench);
    if !run.audit.passed() {
        bail!("the invariant audit failed");
    }
    Ok(())
}

impl Bench {
    async fn start(
        args: BenchArgs,
        stock: u64,
        users: u32,
        attempts: u32,
        out: &std::path::Path,
    ) -> Result<Self> {
        let mesh = Box::pin(start_mesh(out)).await?;
        println!(
            "  mesh up: 6 services as separate processes; Redis, NATS JetStream, Postgres (fsync on) on loopback"
        );
        let auth = flashsale_gateway::config::AuthConfig {
            secret: SECRET.to_owned().into(),
            ..Default::default()
        };
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
        Ok(Self {
            signer: Signer::new(&auth)?,
            target: channel(&format!("127.0.0.1:{}", mesh.sidecar)).await?,
            gateway: channel(&format!("127.0.0.1:{}", mesh.gateway)).await?,
            inventory: channel(&format!("127.0.0.1:{}", mesh.inventory)).await?,
            store: OrderStore::connect(&mesh.config.postgres).await?,
            mesh,
            args,
            stock,
            scenario,
            load,
        })
    }

    fn closed(&self) -> Load {
        Load::Closed {
            concurrency: self.args.concurrency,
        }
    }

    /// The sale: driven, paid, audited, with the stock sampled and each process's usage.
    async fn sell(&self) -> Result<SaleRun> {
        let (gateway, signer) = (self.gateway.clone(), &self.signer);
        let sale = create_sale(gateway, signer, "sale", self.stock, self.args.limit).await?;
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let sampler = sample_stock(
            self.inventory.clone(),
            self.store.clone(),
            sale.sale_id.clone(),
            started,
            stop.clone(),
        );
        let before = usage_of(&self.mesh.services);
        let (target, signer) = (self.target.clone(), self.signer.clone());
        let report = drive_with_bar(
            target,
            signer,
            &sale.sale_id,
            &self.scenario,
            self.load,
            "flash sale",
        )
        .await;
        let after = usage_of(&self.mesh.services);
        let orders = channel(&format!("127.0.0.1:{}", self.mesh.orders)).await?;
        let paid = flashsale_loadgen::pay(
            orders,
            &report.accepted,
            self.args.pay_ratio,
            5,
            Duration::from_secs(60),
        )
        .await;
        let sources = Sources {
            store: self.store.clone(),
            inventory: self.inventory.clone(),
        };
        let audit =
            flashsale_loadgen::audit(&sources, &sale, &report, Duration::from_secs(300)).await;
        let last_order_at = started.elapsed();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let stock_samples = sampler.await.unwrap_or_default();
        let all_written_at = stock_samples
            .iter()
            .find(|s| s.persisted as usize >= report.accepted.len())
            .map_or(last_order_at, |s| Duration::from_secs_f64(s.at));
        Ok(SaleRun {
            sale,
            paid: paid.len(),
            audit,
            usage: procs::delta(&before, &after),
            stock_samples,
            all_written_at,
            report,
        })
    }

    /// The sale's summary.
    fn describe(&self, run: &SaleRun, figures: &Figures, lines: &mut Lines) {
        let (report, args) = (&run.report, &self.args);
        lines.say("");
        lines.say(format!(
            "Flash sale: {} units, limit {} per buyer, {} buyers, {} attempts, {}",
            self.stock,
            args.limit,
            self.scenario.users,
            self.scenario.attempts,
            match self.load {
                Load::Closed { concurrency } => format!("closed loop, {concurrency} in flight"),
                Load::Open { rate, arrival, .. } =>
                    format!("open loop at {rate:.0}/s ({arrival:?})"),
            }
        ));
        lines.say(format!(
            "  whole sale           {}  ({:.0} attempts/s)",
            human(report.elapsed),
            report.attempts_per_second()
        ));
        lines.say(format!(
            "  accepted             {}  ({:.0}/s while selling, sold out after {})",
            report.accepted.len(),
            figures.accepted_per_second,
            human(figures.selling)
        ));
        for (reason, n) in &report.rejected {
            lines.say(format!("  rejected {reason:<12} {n}"));
        }
        lines.say(format!(
            "  sold-out answers     {:.0}/s after the sell-out",
            figures.sold_out_rps
        ));
        lines.say(format!(
            "  latency              p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            human(report.latency(0.5)),
            human(report.latency(0.9)),
            human(report.latency(0.99)),
            human(report.latency(0.999)),
            human(report.latency(1.0))
        ));
        lines.say(format!(
            "  orders written       {} ({:.0}/s); the last one {} after the start",
            report.accepted.len(),
            report.accepted.len() as f64 / run.all_written_at.as_secs_f64().max(0.001),
            human(run.all_written_at)
        ));
        lines.say(format!("  paid                 {}", run.paid));
        lines.say("  per service (CPU during the sale, memory now / peak):");
        for (name, u) in &run.usage {
            lines.say(format!(
                "    {name:<16} cpu {:>7}  rss {:>6.1} MiB / {:>6.1} MiB",
                human(u.cpu),
                u.rss as f64 / 1048576.0,
                u.peak_rss as f64 / 1048576.0
            ));
        }
        lines.say("  invariant audit:");
        for line in run.audit.lines() {
            lines.say(format!("    {line}"));
        }
    }

    /// The baselines `--baseline` names and the half-peak run; returns the ratios.
    async fn baselines(
        &self,
        run: &SaleRun,
        figures: &Figures,
        lines: &mut Lines,
    ) -> Result<Vec<String>> {
        let chosen = chosen(&self.args.baseline);
        let mut ratios = Vec::new();
        if chosen.contains(&BaselineChoice::Echo) {
            ratios.extend(self.echo(&run.report, figures, lines).await?);
        }
        if chosen.contains(&BaselineChoice::RedisScript) {
            ratios.push(self.redis_script(figures, lines).await?);
        }
        if chosen.contains(&BaselineChoice::NaivePostgres) {
            ratios.push(self.naive_postgres(run, lines).await?);
        }
        if self.args.half_peak > Duration::ZERO {
            ratios.push(self.half_peak(&run.report, lines).await?);
        }
        Ok(ratios)
    }

    /// A bare tonic server answering Purchase at once: the transport's ceiling.
    async fn echo(
        &self,
        report: &Report,
        figures: &Figures,
        lines: &mut Lines,
    ) -> Result<Vec<String>> {
        let (addr, _stop) = baselines::echo().await?;
        let scenario = Scenario {
            attempts: self.scenario.attempts.min(200_000),
            ..self.scenario.clone()
        };
        let echo = channel(&addr.to_string()).await?;
        let signer = self.signer.clone();
        let echo = drive_with_bar(
            echo,
            signer,
            "echo",
            &scenario,
            self.closed(),
            "echo baseline",
        )
        .await;
        let echo_rps = echo.attempts_per_second();
        lines.say(format!(
            "Baseline echo: bare tonic Purchase answering at once: {echo_rps:.0}/s at {} in flight",
            self.args.concurrency
        ));
        let mut ratios = Vec::new();
        let sold_out_rps = figures.sold_out_rps;
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
        Ok(ratios)
    }

    /// The Reserve script called directly on the mesh's Redis.
    async fn redis_script(&self, figures: &Figures, lines: &mut Lines) -> Result<String> {
        let redis = flashsale_runtime::config::RedisConfig {
            url: self.mesh.config.redis.url.expose_secret().to_owned().into(),
            command_timeout: Duration::from_secs(10),
            pool_size: 8,
            ..Default::default()
        };
        let core = flashsale_inventory::Inventory::connect(&redis, None).await?;
        let rate = baselines::redis_script(&core, 50_000, self.args.concurrency).await?;
        lines.say(format!(
            "Baseline redis-script: the Reserve script called directly, {} in flight: {rate:.0} reservations/s",
            self.args.concurrency
        ));
        let accepted = figures.accepted_per_second;
        Ok(format!(
            "accepted reservations/s ÷ raw script/s = {accepted:.0} ÷ {rate:.0} = {:.2}",
            accepted / rate
        ))
    }

    /// One Postgres transaction per attempt: the naive design.
    async fn naive_postgres(&self, run: &SaleRun, lines: &mut Lines) -> Result<String> {
        let naive_sale = format!("naive-{}", run.sale.sale_id);
        let db = self.store.db().clone();
        let (addr, _stop) = baselines::naive_postgres(db, &naive_sale, self.stock).await?;
        let naive = channel(&addr.to_string()).await?;
        let signer = self.signer.clone();
        let (scenario, load) = (&self.scenario, self.closed());
        let naive =
            drive_with_bar(naive, signer, &naive_sale, scenario, load, "naive-postgres").await;
        lines.say(format!(
            "Baseline naive-postgres: one transaction per attempt: whole sale {} ({:.0} attempts/s), {} accepted, p99 {}",
            human(naive.elapsed),
            naive.attempts_per_second(),
            naive.accepted.len(),
            human(naive.latency(0.99))
        ));
        let report = &run.report;
        Ok(format!(
            "whole-sale time mesh ÷ naive-postgres = {} ÷ {} = {:.2}",
            human(report.elapsed),
            human(naive.elapsed),
            report.elapsed.as_secs_f64() / naive.elapsed.as_secs_f64()
        ))
    }

    /// An open-loop run on a fresh sale at half the peak attempt rate.
    async fn half_peak(&self, report: &Report, lines: &mut Lines) -> Result<String> {
        let peak = report.attempts_per_second();
        let rate = peak / 2.0;
        let attempts = ((rate * self.args.half_peak.as_secs_f64()) as u32).max(1);
        let (gateway, signer) = (self.gateway.clone(), &self.signer);
        let sale = create_sale(gateway, signer, "half-peak", self.stock, self.args.limit).await?;
        let scenario = Scenario {
            attempts,
            seed: 43,
            ..self.scenario.clone()
        };
        let load = Load::Open {
            rate,
            arrival: Arrival::Steady,
            max_in_flight: self.args.concurrency * 8,
        };
        let (target, signer) = (self.target.clone(), self.signer.clone());
        let half =
            drive_with_bar(target, signer, &sale.sale_id, &scenario, load, "half-peak").await;
        lines.say(format!(
            "Open loop at half the peak ({rate:.0}/s of {peak:.0}/s) for {}: p50 {}  p99 {}  p99.9 {}",
            human(self.args.half_peak),
            human(half.latency(0.5)),
            human(half.latency(0.99)),
            human(half.latency(0.999))
        ));
        Ok(format!(
            "p99 at half the peak rate = {}",
            human(half.latency(0.99))
        ))
    }
}

/// The selling phase and the sold-out phase, from the sale's report.
struct Figures {
    /// Until the last accepted purchase.
    selling: Duration,
    accepted_per_second: f64,
    /// Sold-out answers per second after the first one (0 when that phase is too short).
    sold_out_rps: f64,
}

impl Figures {
    fn of(report: &Report) -> Self {
        let selling = report
            .last_accepted
            .unwrap_or(report.elapsed)
            .max(Duration::from_millis(1));
        let sold_out_answers = report.rejected.get("SOLD_OUT").copied().unwrap_or(0);
        let sold_out_span = report
            .elapsed
            .saturating_sub(report.first_sold_out.unwrap_or(report.elapsed));
        let sold_out_rps = if sold_out_span > Duration::from_millis(500) {
            sold_out_answers as f64 / sold_out_span.as_secs_f64()
        } else {
            0.0
        };
        Self {
            selling,
            accepted_per_second: report.accepted.len() as f64 / selling.as_secs_f64(),
            sold_out_rps,
        }
    }
}
