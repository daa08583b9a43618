//! Order pipeline tests against real, throwaway nats-server, Postgres and redis-server (with
//! the real Inventory gRPC service in front of Redis).

mod faults;
mod grpc;
mod lifecycle;
mod persist;
mod poison;

use std::time::Duration;

use async_nats::jetstream;
use chrono::Utc;
use flashsale_inventory::{Inventory, Outcome, ReserveRequest, SaleSpec};
use flashsale_orders::{
    Config, OrderStore, Pipeline, consumer::Consumer, entity::sales, events::StatusEvents,
    holds::InventoryHolds,
};
use flashsale_proto::{time::timestamp, v1::OrderRequested};
use flashsale_runtime::{Shutdown, config::RedisConfig};
use flashsale_testkit::{NatsServer, PostgresServer, RedisServer, TestDatabase};

/// Everything an order-pipeline test needs, all real.
pub(crate) struct Harness {
    pub(crate) pg: PostgresServer,
    pub(crate) _db: TestDatabase,
    pub(crate) _nats: NatsServer,
    pub(crate) _redis: RedisServer,
    pub(crate) inventory: Inventory,
    pub(crate) js: jetstream::Context,
    pub(crate) client: async_nats::Client,
    pub(crate) config: Config,
    pub(crate) pipeline: Pipeline,
    pub(crate) shutdown: Shutdown,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// The configuration tests run with: short timers so redelivery happens within a test.
pub(crate) fn test_config() -> Config {
    let defaults = Config::default();
    Config {
        fetch_wait: Duration::from_millis(100),
        lifecycle_interval: Duration::from_millis(100),
        stream: flashsale_orders::config::StreamConfig {
            ack_wait: Duration::from_secs(2),
            backoff: vec![Duration::from_millis(1500), Duration::from_secs(2)],
            max_deliver: 5,
            ..defaults.stream.clone()
        },
        ..defaults
    }
}

pub(crate) async fn harness() -> Harness {
    // Boxed: the start-up future holds every server and would make each test's future large.
    Box::pin(start_harness()).await
}

async fn start_harness() -> Harness {
    flashsale_runtime::telemetry::init_for_tests();
    let (pg, nats, redis) = tokio::join!(
        PostgresServer::start(),
        NatsServer::start(),
        RedisServer::start()
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
    let inventory_url = format!("http://{}", listener.local_addr().unwrap());
    let server = flashsale_inventory::grpc::server(inventory.clone(), &Default::default());
    tokio::spawn(server.serve(listener, shutdown.wait()));

    let mut config = test_config();
    config.inventory_url = inventory_url;
    let store = OrderStore::connect(&flashsale_runtime::config::PostgresConfig {
        url: db.url.clone().into(),
        max_connections: 10,
        connect_timeout: Duration::from_secs(2),
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
        holds: InventoryHolds::connect_lazy(&config.inventory_url, Duration::from_secs(5), None)
            .unwrap(),
        events: StatusEvents::new(client.clone(), config.status_prefix.clone()),
    };
    Harness {
        pg,
        _db: db,
        _nats: nats,
        _redis: redis,
        inventory,
        js,
        client,
        config,
        pipeline,
        shutdown,
    }
}

impl Harness {
    /// A sale open now, in Postgres and in the inventory.
    pub(crate) async fn sale(&self, stock: u64, limit: u32, payment_window: Duration) -> SaleSpec {
        let now = Utc::now();
        let spec = SaleSpec {
            sale_id: flashsale_testkit::unique_name("sale"),
            stock,
            per_user_limit: limit,
            starts_at_ms: now.timestamp_millis() - 1000,
            ends_at_ms: now.timestamp_millis() + 3_600_000,
            reservation_hold: Duration::from_secs(600),
            stock_buckets: 1,
        };
        self.pipeline
            .store
            .create_sale(sales::Model {
                sale_id: spec.sale_id.clone(),
                name: "test".into(),
                stock: stock as i64,
                per_user_limit: limit as i32,
                unit_price_minor: 990,
                currency: "CNY".into(),
                starts_at: flashsale_orders::convert::utc(spec.starts_at_ms),
                ends_at: flashsale_orders::convert::utc(spec.ends_at_ms),
                reservation_hold_ms: 600_000,
                payment_window_ms: payment_window.as_millis() as i64,
                ended_at: None,
                created_at: now,
                stock_buckets: 1,
                waiting_room_rate_milli: None,
                waiting_room_cap: None,
                waiting_room_window_ms: None,
            })
            .await
            .unwrap();
        self.inventory.load_sale(&spec).await.unwrap();
        spec
    }

    /// Reserves one unit for `user` and returns the event the gateway would publish.
    pub(crate) async fn reserve(
        &self,
        sale: &SaleSpec,
        user: &str,
        payment_window: Duration,
    ) -> OrderRequested {
        let reserved = self
            .inventory
            .reserve(&ReserveRequest {
                sale_id: sale.sale_id.clone(),
                user_id: user.to_owned(),
                quantity: 1,
                idempotency_key: String::new(),
            })
            .await
            .unwrap();
        let Outcome::Reserved { reservation, .. } = reserved.outcome else {
            panic!("{reserved:?}");
        };
        OrderRequested {
            order_id: reservation.reservation_id,
            sale_id: sale.sale_id.clone(),
            user_id: user.to_owned(),
            quantity: 1,
            unit_price_minor: 990,
            currency: "CNY".into(),
            requested_at: Some(timestamp(reservation.created_at_ms)),
            pay_deadline: Some(timestamp(
                reservation.created_at_ms + payment_window.as_millis() as i64,
            )),
            idempotency_key: String::new(),
        }
    }

    /// Reserves one unit for each of `users` (64 at a time), in user order.
    pub(crate) async fn reserve_many(
        &self,
        sale: &SaleSpec,
        users: &[String],
        payment_window: Duration,
    ) -> Vec<OrderRequested> {
        use futures::StreamExt;
        futures::stream::iter(users)
            .map(|user| self.reserve(sale, user, payment_window))
            .buffered(64)
            .collect()
            .await
    }

    pub(crate) fn consumer(&self) -> Consumer {
        Consumer::new(self.js.clone(), self.config.clone(), self.pipeline.clone())
    }

    /// Runs a consumer task until the returned trigger is pulled.
    pub(crate) fn spawn_consumer(&self) -> (Shutdown, tokio::task::JoinHandle<()>) {
        let stop = self.shutdown.child();
        let consumer = self.consumer();
        let task_stop = stop.clone();
        let task = tokio::spawn(async move {
            consumer.run(task_stop).await.unwrap();
        });
        (stop, task)
    }

    /// Events still in the order stream.
    pub(crate) async fn pending(&self) -> u64 {
        flashsale_orders::stream::pending(&self.js, &self.config.stream, None)
            .await
            .unwrap()
    }

    /// Events on the dead-letter stream.
    pub(crate) async fn dead_letters(&self) -> u64 {
        let mut stream = self
            .js
            .get_stream(&self.config.stream.dead_letter_name)
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Waits until the stream is empty, up to `limit`.
    pub(crate) async fn drained(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let pending = self.pending().await;
            if pending == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{pending} events still pending"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Order rows of a sale.
    pub(crate) async fn rows(&self, sale_id: &str) -> i64 {
        use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
        flashsale_orders::entity::orders::Entity::find()
            .filter(flashsale_orders::entity::orders::Column::SaleId.eq(sale_id))
            .count(self.pipeline.store.db())
            .await
            .unwrap() as i64
    }
}

/// Publishes many events, `in_flight` at a time, waiting for every acknowledgement.
pub(crate) async fn publish_all(
    js: &jetstream::Context,
    prefix: &str,
    events: &[OrderRequested],
    in_flight: usize,
) {
    use futures::StreamExt;
    futures::stream::iter(events)
        .for_each_concurrent(in_flight, |event| async move {
            flashsale_orders::stream::publish_order(js, prefix, event)
                .await
                .unwrap();
        })
        .await;
}
