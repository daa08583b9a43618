//! Partial failures between the inventory and Redis, through a fault proxy on the hop.

use crate::{assert_consistent, open_sale, redis_config, request};

/// Finding 2: the connection drops after Redis ran a Reserve and before its reply arrived (a
/// fault proxy between the inventory and Redis loses that one reply). The Redis client must not
/// send the script again: a Reserve without an idempotency key would take the units and the
/// buyer's allowance twice and keep one record. The caller hears an error; Redis stays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_02_a_lost_reply_never_runs_a_script_twice() {
    flashsale_runtime::telemetry::init_for_tests();
    let redis = flashsale_testkit::RedisServer::start().await.unwrap();
    let proxy = flashsale_testkit::FaultProxy::to_port(redis.port())
        .await
        .unwrap();
    let config = redis_config(&format!("redis://127.0.0.1:{}", proxy.port()));
    let inventory = flashsale_inventory::Inventory::connect(&config, None)
        .await
        .unwrap();
    let sale = open_sale(10, 5);
    inventory.load_sale(&sale).await.unwrap();
    inventory
        .reserve(&request(&sale, "warm", 1, ""))
        .await
        .unwrap();

    proxy.set(flashsale_testkit::Fault::LoseNextReply);
    let lost = inventory.reserve(&request(&sale, "alice", 1, "")).await;
    assert_eq!(proxy.replies_lost(), 1, "the fault struck: {lost:?}");
    assert!(
        lost.is_err(),
        "a lost reply is an error, not a second run: {lost:?}"
    );

    let audit = assert_consistent(&inventory, &sale.sale_id).await;
    let alice = audit.counted_by_user.get("alice").copied().unwrap_or(0);
    assert_eq!(alice, 1, "alice's allowance was charged once");
    assert_eq!(audit.stock.held, 2, "one unit for warm, one for alice");
}
