//! `flashsale bench --scenario hot-item`: one hot item's reservations on a 3-master Redis
//! Cluster, with its stock in 1 bucket (one master decides every reservation) against 8
//! buckets (spread over the masters), measured in the same run, rounds interleaved.
//!
//! It drives the inventory core (the tier buckets change) from this process: each attempt
//! is one buyer's Reserve; a round sells the whole stock (accepted reservations/s while
//! selling), then keeps asking for a while (sold-out answers/s). Every round's sale is
//! audited: exactly its stock held, counters consistent.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use flashsale_inventory::{Inventory, Outcome, ReserveRequest, SaleSpec};
use flashsale_runtime::config::RedisConfig;
use flashsale_testkit::RedisCluster;
use futures::StreamExt;

use super::report::human;
use crate::cli::BenchArgs;

/// One measured round.
#[derive(Debug, Clone, Copy)]
struct Round {
    buckets: u32,
    accepted_per_second: f64,
    sold_out_per_second: f64,
    selling: Duration,
    /// CPU microseconds the busiest master spent per accepted reservation.
    busiest_master_us: f64,
}

/// Runs the scenario and prints (and writes) its summary.
pub(crate) async fn run(args: &BenchArgs) -> Result<()> {
    let stock = args.stock.unwrap_or(50_000);
    let rounds = args.rounds.max(1);
    let after = u64::from(args.attempts.unwrap_or(20_000));
    let concurrency = args.concurrency.max(1);
    println!(
        "flashsale bench: scenario hot-item — {stock} units per sale, limit 1, 1 vs 8 stock \
         buckets, {rounds} round(s) each, {concurrency} reserves in flight"
    );
    let mut cluster = RedisCluster::start(3, 0).await?;
    let config = RedisConfig {
        url: cluster.url().into(),
        command_timeout: Duration::from_secs(30),
        pool_size: 8,
        ..Default::default()
    };
    let inventory = Inventory::connect(&config, None).await?;
    let masters: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid()).collect();
    println!("  Redis Cluster up: 3 masters on loopback; the inventory core in this process");

    let mut results = Vec::new();
    for round in 0..rounds {
        for buckets in [1, 8] {
            let r = measure(
                &inventory,
                &masters,
                stock,
                buckets,
                after,
                concurrency,
                round,
            )
            .await?;
            println!(
                "  round {} · {} bucket(s): {:.0} accepted reservations/s (sold out after {}), \
                 {:.0} sold-out answers/s, busiest master {:.1} µs CPU per reservation",
                round + 1,
                buckets,
                r.accepted_per_second,
                human(r.selling),
                r.sold_out_per_second,
                r.busiest_master_us
            );
            results.push(r);
        }
    }

    let lines = summary(&results, stock, concurrency, rounds);
    for line in &lines {
        println!("{line}");
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)?;
        std::fs::write(out.join("summary.txt"), lines.join("\n"))?;
    }
    Ok(())
}

/// The summary: medians per layout and the ratios of 8 buckets to 1.
fn summary(results: &[Round], stock: u64, concurrency: usize, rounds: u32) -> Vec<String> {
    let median = |buckets: u32, f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = results
            .iter()
            .filter(|r| r.buckets == buckets)
            .map(f)
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ratio = |f: fn(&Round) -> f64| {
        let mut v: Vec<f64> = results
            .chunks(2)
            .map(|pair| f(&pair[1]) / f(&pair[0]))
            .collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut lines = vec![
        String::new(),
        format!(
            "Hot item on a 3-master Redis Cluster: {stock} units, limit 1, {concurrency} in flight, \
             {rounds} interleaved round(s)"
        ),
        format!(
            "  1 bucket    {:>8.0} accepted reservations/s   {:>8.0} sold-out answers/s (medians)",
            median(1, |r| r.accepted_per_second),
            median(1, |r| r.sold_out_per_second)
        ),
        format!(
            "  8 buckets   {:>8.0} accepted reservations/s   {:>8.0} sold-out answers/s (medians)",
            median(8, |r| r.accepted_per_second),
            median(8, |r| r.sold_out_per_second)
        ),
        "Ratios (same run, same machine; median of the per-round ratios):".into(),
        format!(
            "  accepted reservations/s, 8 buckets ÷ 1 bucket = {:.2}",
            ratio(|r| r.accepted_per_second)
        ),
        format!(
            "  sold-out answers/s, 8 buckets ÷ 1 bucket = {:.2}",
            ratio(|r| r.sold_out_per_second)
        ),
        format!(
            "  busiest master's CPU per reservation, 1 bucket ÷ 8 buckets = {:.2} (the ceiling \
             gain once Redis, not the client, is the limit)",
            1.0 / ratio(|r| r.busiest_master_us)
        ),
    ];
    lines.push(format!(
        "  (this machine: {} CPU(s) shared by the 3 Redis masters and the client)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    ));
    lines
}

/// Sends `attempts` reserves from distinct buyers (numbered from `first`), `concurrency` at
/// a time; returns how many were accepted.
async fn drive(
    inventory: &Inventory,
    sale_id: &str,
    first: u64,
    attempts: u64,
    concurrency: usize,
) -> Result<u64> {
    let answers = futures::stream::iter(first..first + attempts)
        .map(|i| {
            let inventory = inventory.clone();
            let request = ReserveRequest {
                sale_id: sale_id.to_owned(),
                user_id: format!("buyer-{i}"),
                quantity: 1,
                idempotency_key: String::new(),
            };
            async move {
                match inventory.reserve(&request).await?.outcome {
                    Outcome::Reserved { .. } => Ok(1),
                    Outcome::SoldOut => Ok(0),
                    other => bail!("unexpected answer {other:?}"),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<Result<u64>>>()
        .await;
    answers.into_iter().sum()
}

/// CPU time of each master so far.
fn master_cpu(masters: &[u32]) -> Vec<Duration> {
    masters
        .iter()
        .map(|&pid| super::procs::usage(pid).map_or(Duration::ZERO, |u| u.cpu))
        .collect()
}

/// The largest CPU time any master spent between two readings.
fn busiest(before: &[Duration], after: &[Duration]) -> Duration {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| a.saturating_sub(*b))
        .max()
        .unwrap_or_default()
}

/// Sells one sale of `stock` units in `buckets` bucket(s) to `stock` distinct buyers (each
/// must get a unit), then asks `after` more times (each must hear sold out); audits the sale.
async fn measure(
    inventory: &Inventory,
    masters: &[u32],
    stock: u64,
    buckets: u32,
    after: u64,
    concurrency: usize,
    round: u32,
) -> Result<Round> {
    let now = flashsale_proto::time::now_ms();
    let sale = SaleSpec {
        sale_id: format!("hot-{buckets}-{round}-{now}"),
        stock,
        per_user_limit: 1,
        starts_at_ms: now - 1_000,
        ends_at_ms: now + 3_600_000,
        reservation_hold: Duration::from_secs(3_600),
        stock_buckets: buckets,
    };
    inventory.load_sale(&sale).await?;
    let cpu_before = master_cpu(masters);
    let started = Instant::now();
    let sold = drive(inventory, &sale.sale_id, 0, stock, concurrency).await?;
    let selling = started.elapsed();
    let cpu_selling = master_cpu(masters);
    let tail_started = Instant::now();
    let late = drive(inventory, &sale.sale_id, stock, after, concurrency).await?;
    let tail = tail_started.elapsed().max(Duration::from_millis(1));
    let audit = inventory.audit(&sale.sale_id).await?;
    if sold != stock || late != 0 || audit.stock.held != stock || audit.check().is_err() {
        bail!(
            "{buckets} bucket(s): {sold} + {late} accepted, {:?} in Redis: {:?}",
            audit.stock,
            audit.check()
        );
    }
    Ok(Round {
        buckets,
        accepted_per_second: stock as f64 / selling.as_secs_f64().max(1e-3),
        sold_out_per_second: after as f64 / tail.as_secs_f64(),
        selling,
        busiest_master_us: busiest(&cpu_before, &cpu_selling).as_secs_f64() * 1e6 / stock as f64,
    })
}
