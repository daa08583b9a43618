//! `Reserve` through the inventory core, beside a raw `EVALSHA` of a trivial script on the same
//! Redis and the same connection pool, in the same run. Prints the ratio of their mean times,
//! one call at a time (latency) and 64 in flight (throughput).
//!
//! `cargo bench -p flashsale-inventory --bench reserve`

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::Criterion;
use flashsale_inventory::{Inventory, ReserveRequest, SaleSpec};
use flashsale_runtime::config::RedisConfig;
use fred::types::scripts::Script;
use futures::{StreamExt, stream};

/// Mean time per call across every batch criterion ran (warm-up included).
#[derive(Default)]
struct Tally(Mutex<(Duration, u64)>);

impl Tally {
    fn add(&self, elapsed: Duration, calls: u64) {
        let mut t = self.0.lock().unwrap();
        t.0 += elapsed;
        t.1 += calls;
    }
    fn mean(&self) -> Duration {
        let t = self.0.lock().unwrap();
        t.0 / u32::try_from(t.1.max(1)).unwrap_or(u32::MAX)
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (redis, inventory) = rt.block_on(setup());
    let trivial = Arc::new(Script::from_lua("return 1"));
    let users = Arc::new(AtomicU64::new(0));

    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    let mut results = Vec::new();
    for in_flight in [1usize, 64] {
        let mut group = criterion.benchmark_group(format!("inventory/in_flight_{in_flight}"));
        let raw = Arc::new(Tally::default());
        let core = Arc::new(Tally::default());

        group.bench_function("raw_evalsha_trivial", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (inventory, trivial, raw) = (inventory.clone(), trivial.clone(), raw.clone());
                async move {
                    let elapsed = concurrently(iters, in_flight, |_| {
                        let (inventory, trivial) = (inventory.clone(), trivial.clone());
                        async move {
                            inventory.ping_script(&trivial).await.unwrap();
                        }
                    })
                    .await;
                    raw.add(elapsed, iters);
                    elapsed
                }
            });
        });

        group.bench_function("reserve_core", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (inventory, users, core) = (inventory.clone(), users.clone(), core.clone());
                async move {
                    let elapsed = concurrently(iters, in_flight, |_| {
                        let inventory = inventory.clone();
                        let user = users.fetch_add(1, Ordering::Relaxed);
                        async move {
                            let request = ReserveRequest {
                                sale_id: "bench".into(),
                                user_id: format!("u{user}"),
                                quantity: 1,
                                idempotency_key: format!("k{user}"),
                            };
                            inventory.reserve(&request).await.unwrap();
                        }
                    })
                    .await;
                    core.add(elapsed, iters);
                    elapsed
                }
            });
        });
        group.finish();
        results.push((in_flight, raw.mean(), core.mean()));
    }
    criterion.final_summary();

    let stock = rt.block_on(inventory.audit("bench")).unwrap();
    assert!(
        stock.check().is_ok(),
        "invariants after the benchmark: {:?}",
        stock.check()
    );
    print_ratios(&results);
    drop(redis);
}

/// A throwaway Redis and the inventory over it, with one big sale loaded.
async fn setup() -> (flashsale_testkit::RedisServer, Inventory) {
    let redis = flashsale_testkit::RedisServer::start()
        .await
        .expect("redis-server");
    let config = RedisConfig {
        url: redis.url().into(),
        command_timeout: Duration::from_secs(5),
        pool_size: 4,
        ..Default::default()
    };
    let inventory = Inventory::connect(&config, None).await.unwrap();
    let now = flashsale_proto::time::now_ms();
    let sale = SaleSpec {
        sale_id: "bench".into(),
        stock: 10_000_000,
        per_user_limit: 1,
        starts_at_ms: now - 1000,
        ends_at_ms: now + 3_600_000,
        reservation_hold: Duration::from_secs(3600),
        stock_buckets: 1,
    };
    inventory.load_sale(&sale).await.unwrap();
    (redis, inventory)
}

/// Runs `iters` calls, `in_flight` at a time; returns how long they took.
async fn concurrently<F, Fut>(iters: u64, in_flight: usize, call: F) -> Duration
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    stream::iter(0..iters)
        .for_each_concurrent(in_flight, call)
        .await;
    started.elapsed()
}

fn print_ratios(results: &[(usize, Duration, Duration)]) {
    println!("\nReserve through the core vs raw EVALSHA of `return 1`, same Redis, same pool:");
    for (in_flight, raw, core) in results {
        println!(
            "  {in_flight:>2} in flight: reserve {:>9.1} µs/op ({:>7.0} op/s), raw evalsha {:>9.1} µs/op ({:>7.0} op/s), ratio reserve/raw = {:.2}x",
            core.as_secs_f64() * 1e6,
            1.0 / core.as_secs_f64(),
            raw.as_secs_f64() * 1e6,
            1.0 / raw.as_secs_f64(),
            core.as_secs_f64() / raw.as_secs_f64()
        );
    }
}
