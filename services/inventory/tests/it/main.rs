//! Inventory tests against a real, throwaway redis-server (and nats-server for signals).

mod buckets;
mod cluster;
mod expiry;
mod grpc;
mod lifecycle;
mod partial;
mod property;
mod reserve;

use std::time::Duration;

use flashsale_inventory::{Inventory, ReserveRequest, SaleSpec, Signals};
use flashsale_runtime::config::RedisConfig;
use flashsale_testkit::RedisServer;

/// A Redis config pointing at a test server.
pub(crate) fn redis_config(url: &str) -> RedisConfig {
    RedisConfig {
        url: url.to_owned().into(),
        command_timeout: Duration::from_millis(500),
        pool_size: 4,
        ..Default::default()
    }
}

/// A throwaway Redis and an inventory on it.
pub(crate) async fn inventory(signals: Option<Signals>) -> (RedisServer, Inventory) {
    inventory_with(signals, Duration::from_millis(500)).await
}

/// The same, with a given command timeout (calls queued behind thousands of others need more
/// than one alone).
pub(crate) async fn inventory_with(
    signals: Option<Signals>,
    timeout: Duration,
) -> (RedisServer, Inventory) {
    flashsale_runtime::telemetry::init_for_tests();
    let redis = RedisServer::start().await.expect("redis-server starts");
    let mut config = redis_config(&redis.url());
    config.command_timeout = timeout;
    let inventory = Inventory::connect(&config, signals)
        .await
        .expect("inventory connects");
    (redis, inventory)
}

/// A sale open now for an hour.
pub(crate) fn open_sale(stock: u64, per_user_limit: u32) -> SaleSpec {
    let now = flashsale_proto::time::now_ms();
    SaleSpec {
        sale_id: flashsale_testkit::unique_name("sale"),
        stock,
        per_user_limit,
        starts_at_ms: now - 1_000,
        ends_at_ms: now + 3_600_000,
        reservation_hold: Duration::from_secs(60),
        stock_buckets: 1,
    }
}

pub(crate) fn request(sale: &SaleSpec, user: &str, quantity: u32, key: &str) -> ReserveRequest {
    ReserveRequest {
        sale_id: sale.sale_id.clone(),
        user_id: user.to_owned(),
        quantity,
        idempotency_key: key.to_owned(),
    }
}

/// Asserts every invariant of a sale: counters add up and agree with the records.
pub(crate) async fn assert_consistent(
    inventory: &Inventory,
    sale_id: &str,
) -> flashsale_inventory::Audit {
    let audit = inventory.audit(sale_id).await.expect("audit");
    if let Err(violation) = audit.check() {
        panic!("sale {sale_id}: {violation}: {:?}", audit.stock);
    }
    audit
}
