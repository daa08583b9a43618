//! Persisted orders per second: the batch consumer (JetStream → one transaction per batch →
//! inventory commits) against one transaction per order on the same Postgres, in the same run.
//!
//! `cargo bench -p flashsale-orders --bench persist`
//!
//! Postgres runs with `fsync=on` here, as in production. The consumer's figure includes everything it does per order (fetch, decode, insert, ack,
//! status event, inventory commit over gRPC); the baseline only inserts. The ratio therefore
//! understates what batching alone buys.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream;
use criterion::{Criterion, SamplingMode};
use flashsale_inventory::{Inventory, Outcome, ReserveRequest, SaleSpec};
use flashsale_orders::{
    Config, OrderStore, Pipeline, consumer::Consumer, entity::sales, events::StatusEvents,
    holds::InventoryHolds,
};
use flashsale_proto::{time::timestamp, v1::OrderRequested};
use flashsale_runtime::{
    Shutdown,
    config::{PostgresConfig, RedisConfig},
};
use futures::StreamExt;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};

#[derive(Default)]
struct Tally(Mutex<(Duration, u64)>);

impl Tally {
    fn add(&self, elapsed: Duration, n: u64) {
        let mut t = self.0.lock().unwrap();
        t.0 += elapsed;
        t.1 += n;
    }
    fn per_second(&self) -> f64 {
        let t = self.0.lock().unwrap();
        t.1 as f64 / t.0.as_secs_f64().max(f64::EPSILON)
    }
}

struct World {
    inventory: Inventory,
    js: jetstream::Context,
    config: Config,
    pipeline: Pipeline,
    sale: SaleSpec,
    _servers: (
        flashsale_testkit::PostgresServer,
        flashsale_testkit::NatsServer,
        flashsale_testkit::RedisServer,
    ),
    shutdown: Shutdown,
}

async fn world() -> World {
    let (pg, nats, redis) = tokio::join!(
        // Commits flush the WAL, as in production: that is what batching saves.
        flashsale_testkit::PostgresServer::start_durable(),
        flashsale_testkit::NatsServer::start(),
        flashsale_testkit::RedisServer::start()
    );
    let (pg, nats, redis) = (pg.unwrap(), nats.unwrap(), redis.unwrap());
    let db = pg.create_database().await.unwrap();
    let inventory = Inventory::connect(
        &RedisConfig {
            url: redis.url().into(),
            command_timeout: Duration::from_secs(10),
            pool_size: 4,
            ..Default::default()
        },
        None,
    )
    .await
    .unwrap();
    let shutdown = Shutdown::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        flashsale_inventory::grpc::server(inventory.clone(), &Default::default())
            .serve(listener, shutdown.wait()),
    );
    let config = Config {
        inventory_url: url,
        fetch_wait: Duration::from_millis(50),
        ..Config::default()
    };
    let store = OrderStore::connect(&PostgresConfig {
        url: db.url.clone().into(),
        max_connections: 16,
        connect_timeout: Duration::from_secs(5),
    })
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    flashsale_orders::stream::ensure(&js, &config.stream)
        .await
        .unwrap();
    let pipeline = Pipeline {
        store,
        holds: InventoryHolds::connect_lazy(&config.inventory_url, Duration::from_secs(10), None)
            .unwrap(),
        events: StatusEvents::new(client, config.status_prefix.clone()),
    };
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
    pipeline
        .store
        .create_sale(sales::Model {
            sale_id: "bench".into(),
            name: "bench".into(),
            stock: 10_000_000,
            per_user_limit: 1,
            unit_price_minor: 100,
            currency: "CNY".into(),
            starts_at: flashsale_orders::convert::utc(now - 1000),
            ends_at: flashsale_orders::convert::utc(now + 3_600_000),
            reservation_hold_ms: 3_600_000,
            payment_window_ms: 900_000,
            ended_at: None,
            created_at: chrono::Utc::now(),
            stock_buckets: 1,
            waiting_room_rate_milli: None,
            waiting_room_cap: None,
            waiting_room_window_ms: None,
        })
        .await
        .unwrap();
    World {
        inventory,
        js,
        config,
        pipeline,
        sale,
        _servers: (pg, nats, redis),
        shutdown,
    }
}

fn event(order_id: String, user: String, created_ms: i64) -> OrderRequested {
    OrderRequested {
        order_id,
        sale_id: "bench".into(),
        user_id: user,
        quantity: 1,
        unit_price_minor: 100,
        currency: "CNY".into(),
        requested_at: Some(timestamp(created_ms)),
        pay_deadline: Some(timestamp(created_ms + 900_000)),
        idempotency_key: String::new(),
    }
}

/// `n` real reservations, as the events the gateway would publish.
async fn reserved_events(w: &World, n: u64, next_user: &Mutex<u64>) -> Vec<OrderRequested> {
    let first = {
        let mut u = next_user.lock().unwrap();
        let first = *u;
        *u += n;
        first
    };
    futures::stream::iter(first..first + n)
        .map(|i| async move {
            let r = w
                .inventory
                .reserve(&ReserveRequest {
                    sale_id: w.sale.sale_id.clone(),
                    user_id: format!("u{i}"),
                    quantity: 1,
                    idempotency_key: String::new(),
                })
                .await
                .unwrap();
            let Outcome::Reserved { reservation, .. } = r.outcome else {
                panic!("{r:?}")
            };
            event(
                reservation.reservation_id,
                format!("u{i}"),
                reservation.created_at_ms,
            )
        })
        .buffered(64)
        .collect()
        .await
}

/// True when the stream is empty (every event written and acknowledged) and no order waits
/// for its inventory commit. Both reads are cheap (stream info, a partial index).
async fn settled(w: &World) -> bool {
    use flashsale_orders::entity::orders;
    let pending = flashsale_orders::stream::pending(&w.js, &w.config.stream, None)
        .await
        .unwrap();
    pending == 0
        && orders::Entity::find()
            .filter(orders::Column::InventoryPending.is_not_null())
            .count(w.pipeline.store.db())
            .await
            .unwrap()
            == 0
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = Arc::new(rt.block_on(world()));
    let next_user = Arc::new(Mutex::new(0u64));
    let consumer_tally = Arc::new(Tally::default());
    let single_tally = Arc::new(Tally::default());

    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    let mut group = criterion.benchmark_group("orders/persist");
    group.sampling_mode(SamplingMode::Flat);

    group.bench_function("batch_consumer", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (w, next_user, tally) = (w.clone(), next_user.clone(), consumer_tally.clone());
            async move {
                let events = reserved_events(&w, iters, &next_user).await;
                futures::stream::iter(&events)
                    .for_each_concurrent(256, |e| {
                        let js = w.js.clone();
                        let prefix = w.config.stream.subject_prefix.clone();
                        async move {
                            flashsale_orders::stream::publish_order(&js, &prefix, e)
                                .await
                                .unwrap();
                        }
                    })
                    .await;
                let stop = w.shutdown.child();
                let consumer = Consumer::new(w.js.clone(), w.config.clone(), w.pipeline.clone());
                let started = Instant::now();
                let task = tokio::spawn(consumer.run(stop.clone()));
                let deadline = Instant::now() + Duration::from_secs(300);
                while !settled(&w).await {
                    assert!(Instant::now() < deadline, "orders did not settle");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let elapsed = started.elapsed();
                stop.trigger();
                task.await.unwrap().unwrap();
                tally.add(elapsed, iters);
                elapsed
            }
        });
    });

    group.bench_function("single_row_transactions", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (w, next_user, tally) = (w.clone(), next_user.clone(), single_tally.clone());
            async move {
                let first = {
                    let mut u = next_user.lock().unwrap();
                    let first = *u;
                    *u += iters;
                    first
                };
                let now = flashsale_proto::time::now_ms();
                let started = Instant::now();
                futures::stream::iter(first..first + iters)
                    .for_each_concurrent(16, |i| {
                        let store = w.pipeline.store.clone();
                        async move {
                            let row = flashsale_orders::consumer::row(&event(
                                format!("single-{i}"),
                                format!("u{i}"),
                                now,
                            ));
                            let mut row: flashsale_orders::entity::orders::ActiveModel = row.into();
                            row.inventory_pending = sea_orm::ActiveValue::Set(None);
                            store.insert_batch(vec![row]).await.unwrap();
                        }
                    })
                    .await;
                let elapsed = started.elapsed();
                tally.add(elapsed, iters);
                elapsed
            }
        });
    });
    group.finish();
    criterion.final_summary();

    let consumer = consumer_tally.per_second();
    let single = single_tally.per_second();
    println!("\nPersisted orders/s on the same Postgres, same run:");
    println!(
        "  batch consumer (fetch, 1 tx per batch, ack, inventory commit): {consumer:>8.0} orders/s"
    );
    println!(
        "  one transaction per order (insert only, 16 concurrent):        {single:>8.0} orders/s"
    );
    println!("  ratio batch / single-row = {:.2}x", consumer / single);
    w.shutdown.trigger();
}
