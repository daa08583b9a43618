//! The review's findings on partial failure, one test each on the real mesh, named by the
//! finding's number (`-E 'test(/finding_/)'` runs them, with those of the other crates): a
//! retry that overlaps its original, a stream that is away while a buyer retries, Postgres
//! away for longer than a reservation hold, idempotency keys that mislead, sales whose amounts
//! overflow. Each failed on the code before its fix.

use std::time::{Duration, Instant};

use flashsale_proto::{
    time::{duration, timestamp},
    v1::{
        self as pb, flash_sale_client::FlashSaleClient, inventory_client::InventoryClient,
        sale_admin_client::SaleAdminClient,
    },
};
use flashsale_runtime::status::reason_of;

use crate::{
    e2e::{authorized, create_sale_with},
    mesh::{Extra, Mesh},
};

/// One purchase of one unit straight at the gateway, as `user` with idempotency key `key`.
async fn buy(
    mesh: &Mesh,
    sale: &pb::Sale,
    user: &str,
    key: &str,
) -> Result<pb::PurchaseAccepted, tonic::Status> {
    buy_units(mesh, sale, user, key, 1).await
}

/// [`buy`] of `quantity` units.
async fn buy_units(
    mesh: &Mesh,
    sale: &pb::Sale,
    user: &str,
    key: &str,
    quantity: u32,
) -> Result<pb::PurchaseAccepted, tonic::Status> {
    let token = mesh.signer().token(user, false, Duration::from_secs(600));
    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.gateway).await);
    client
        .purchase(authorized(
            pb::PurchaseRequest {
                sale_id: sale.sale_id.clone(),
                quantity,
                idempotency_key: key.to_owned(),
                purchase_token: String::new(),
            },
            &token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// `SaleAdmin.Reconcile --repair` of `sale_id` as the operator `token` (a future of its own,
/// to run beside other calls).
fn repair(
    mut admin: SaleAdminClient<tonic::transport::Channel>,
    sale_id: &str,
    token: &str,
) -> impl std::future::Future<Output = Result<tonic::Response<pb::ReconcileReport>, tonic::Status>>
+ Send
+ 'static {
    let request = authorized(
        pb::ReconcileRequest {
            sale_id: sale_id.to_owned(),
            repair: true,
        },
        token,
    );
    async move { admin.reconcile(request).await }
}

/// The order's status in Postgres, waiting up to `limit` for it to be written.
async fn order_status(mesh: &Mesh, order_id: &str, limit: Duration) -> Option<String> {
    let store = mesh.store().await;
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(order) = store.order(order_id).await {
            return Some(format!("{:?}", order.status));
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (up to 20 s) for the order to be written; fails the test if it never is.
async fn assert_written(mesh: &Mesh, order_id: &str) {
    assert!(
        order_status(mesh, order_id, Duration::from_secs(20))
            .await
            .is_some(),
        "order {order_id} is written"
    );
}

/// An operator's token and an admin client at the gateway.
async fn operator(mesh: &Mesh) -> (String, SaleAdminClient<tonic::transport::Channel>) {
    let token = mesh
        .signer()
        .token("operator", true, Duration::from_secs(600));
    let admin = SaleAdminClient::new(mesh.channel(mesh.ports.gateway).await);
    (token, admin)
}

/// The sale's stock as the inventory counts it.
async fn stock(mesh: &Mesh, sale: &pb::Sale) -> pb::StockLevel {
    InventoryClient::new(mesh.channel(mesh.ports.inventory).await)
        .get_stock(pb::GetStockRequest {
            sale_id: sale.sale_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
}

/// Finding 1: the buyer of the only unit is told accepted; the order consumer is paused, so the
/// order is not written yet. The stream goes away and the buyer retries with the same key. The
/// retry must not free the unit (its event is in the stream): another buyer must keep hearing
/// SOLD_OUT, and the first buyer's order must end pending payment, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_01_a_retry_that_cannot_publish_never_frees_an_accepted_unit() {
    let mesh = Mesh::start("finding 1").await;
    let sale = create_sale_with(&mesh, 1, 1, 120_000, |_| {}).await;
    mesh.pause("order-consumer");

    let first = buy(&mesh, &sale, "alice", "key-1")
        .await
        .expect("alice buys the only unit");
    // Past the gateway's sold-out memory, so the retry reaches the inventory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    mesh.nats.pause();
    let retry = buy(&mesh, &sale, "alice", "key-1").await;
    mesh.nats.resume();
    if let Ok(again) = &retry {
        assert_eq!(
            again.order_id, first.order_id,
            "a retry is the same purchase"
        );
    }

    // Long enough for a freed unit to be seen: past the sold-out cache and the signal delay.
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match buy(&mesh, &sale, "bob", &format!("bob-{:?}", Instant::now())).await {
            Ok(sold) => panic!("the unit was sold twice: bob got order {}", sold.order_id),
            Err(status) => assert_eq!(
                reason_of(&status).as_deref(),
                Some("SOLD_OUT"),
                "bob: {status:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    mesh.resume("order-consumer");
    assert_eq!(
        order_status(&mesh, &first.order_id, Duration::from_secs(20))
            .await
            .as_deref(),
        Some("PendingPayment"),
        "alice's accepted order"
    );
    let level = stock(&mesh, &sale).await;
    assert_eq!((level.available, level.held), (0, 1), "{level:?}");
}

/// Finding 10: Postgres is stopped for three reservation holds while buyers are accepted. The
/// accepted purchases wait in the stream; their units must stay theirs until their orders are
/// written, and buyers arriving after the holds passed must hear SOLD_OUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_10_postgres_away_for_three_holds_loses_no_accepted_order() {
    let extra = Extra {
        // The gateway keeps the sale row across the outage (it reads it from Postgres).
        env: vec![("FLASHSALE_GATEWAY__SALE_CACHE_TTL".into(), "120s".into())],
        ..Extra::default()
    };
    let mut mesh = Mesh::start_with("finding 10", extra).await;
    let hold = Duration::from_secs(2);
    let sale = create_sale_with(&mesh, 10, 1, 120_000, |sale| {
        sale.reservation_hold = Some(duration(hold.as_millis() as u64));
    })
    .await;

    let mut accepted = vec![
        buy(&mesh, &sale, "early-0", "k")
            .await
            .expect("the first buyer"),
    ];
    mesh.pg.kill();
    for i in 1..10 {
        let user = format!("early-{i}");
        accepted.push(buy(&mesh, &sale, &user, "k").await.expect("accepted"));
    }
    tokio::time::sleep(hold * 3).await;
    for i in 0..10 {
        let user = format!("late-{i}");
        if let Ok(sold) = buy(&mesh, &sale, &user, "k").await {
            panic!(
                "{user} bought a unit already sold to an accepted buyer: {}",
                sold.order_id
            );
        }
    }
    mesh.pg.restart().await.unwrap();

    for purchase in &accepted {
        assert_eq!(
            order_status(&mesh, &purchase.order_id, Duration::from_secs(30))
                .await
                .as_deref(),
            Some("PendingPayment"),
            "accepted order {}",
            purchase.order_id
        );
    }
    let level = stock(&mesh, &sale).await;
    assert_eq!((level.available, level.held), (0, 10), "{level:?}");
}

/// Finding 7: an idempotency key names one purchase. The same key for another quantity is a
/// clear error, not the original answer in silence; a key whose purchase did not go through
/// (the stream was down, the reservation released) is answered PURCHASE_FAILED, not
/// ALREADY_EXISTS with an order that will never exist; an accepted key gets its original answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_07_a_repeated_key_gets_the_truth_about_its_purchase() {
    let mut mesh = Mesh::start("finding 7").await;
    let sale = create_sale_with(&mesh, 10, 2, 120_000, |_| {}).await;

    let first = buy(&mesh, &sale, "alice", "key-1").await.expect("accepted");
    let again = buy(&mesh, &sale, "alice", "key-1").await.expect("replayed");
    assert_eq!(
        (again.order_id.as_str(), again.duplicate),
        (first.order_id.as_str(), true)
    );
    let other_quantity = buy_units(&mesh, &sale, "alice", "key-1", 2)
        .await
        .unwrap_err();
    assert_eq!(
        other_quantity.code(),
        tonic::Code::InvalidArgument,
        "{other_quantity:?}"
    );
    assert_eq!(
        reason_of(&other_quantity).as_deref(),
        Some("IDEMPOTENCY_KEY_REUSED")
    );

    mesh.nats.kill();
    let failed = buy(&mesh, &sale, "bob", "key-2").await.unwrap_err();
    assert_eq!(failed.code(), tonic::Code::Unavailable, "{failed:?}");
    mesh.nats.restart().await;
    let retried = buy(&mesh, &sale, "bob", "key-2").await.unwrap_err();
    assert_eq!(
        retried.code(),
        tonic::Code::FailedPrecondition,
        "{retried:?}"
    );
    assert_eq!(reason_of(&retried).as_deref(), Some("PURCHASE_FAILED"));
    let fresh = buy(&mesh, &sale, "bob", "key-3")
        .await
        .expect("a new key buys");
    assert_ne!(fresh.order_id, first.order_id);
}

/// Finding 8: price × the most units one buyer may take must fit the order amount; a sale whose
/// largest order would overflow is refused at creation (it used to be created, and its
/// accepted orders then dead-lettered in the consumer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_08_a_sale_whose_amount_would_overflow_is_refused() {
    let mesh = Mesh::start("finding 8").await;
    let mut admin = SaleAdminClient::new(mesh.channel(mesh.ports.gateway).await);
    let token = mesh
        .signer()
        .token("operator", true, Duration::from_secs(600));
    let now = flashsale_proto::time::now_ms();
    let sale = pb::Sale {
        name: "overflow".into(),
        stock: 10_000_000,
        per_user_limit: 10_000_000,
        unit_price_minor: 1_000_000_000_000,
        currency: "CNY".into(),
        starts_at: Some(timestamp(now - 1_000)),
        ends_at: Some(timestamp(now + 3_600_000)),
        ..pb::Sale::default()
    };
    let refused = admin
        .create_sale(authorized(
            pb::CreateSaleRequest { sale: Some(sale) },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("unit_price_minor"),
        "{refused:?}"
    );
}

/// Finding 11: the buyer of the last unit loses the reply and retries with the same key while
/// the gateway answers everyone else SOLD_OUT from memory. The retry must get the original
/// answer, at once, not SOLD_OUT; strangers still hear SOLD_OUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_11_a_retry_of_an_accepted_purchase_is_never_told_sold_out() {
    let mesh = Mesh::start("finding 11").await;
    let sale = create_sale_with(&mesh, 1, 1, 120_000, |_| {}).await;
    let first = buy(&mesh, &sale, "alice", "key-1")
        .await
        .expect("alice buys the last unit");
    for round in 0..5 {
        let stranger = buy(&mesh, &sale, &format!("bob-{round}"), "k")
            .await
            .unwrap_err();
        assert_eq!(reason_of(&stranger).as_deref(), Some("SOLD_OUT"));
        let again = buy(&mesh, &sale, "alice", "key-1")
            .await
            .unwrap_or_else(|e| panic!("round {round}: alice's retry was told {e:?}"));
        assert_eq!(
            (again.order_id.as_str(), again.duplicate),
            (first.order_id.as_str(), true)
        );
    }
}

/// Finding 5: Redis lost the sale while an accepted order waited in the stream; the operator
/// ends the sale before repairing it. Ending must not bring the sale back into Redis with its
/// whole stock, and the order whose commit waits for the repair must keep waiting, not be
/// marked lost; the repair then restores both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_05_ending_a_sale_redis_lost_keeps_its_waiting_orders() {
    let mut mesh = Mesh::start("finding 5").await;
    let sale = create_sale_with(&mesh, 5, 1, 600_000, |_| {}).await;
    let written = buy(&mesh, &sale, "alice", "k").await.expect("accepted");
    assert_written(&mesh, &written.order_id).await;
    mesh.pause("order-consumer");
    let waiting = buy(&mesh, &sale, "bob", "k").await.expect("accepted");
    mesh.redis.restart().await.unwrap();
    mesh.resume("order-consumer");
    // Bob's order is written; its commit waits while Redis lacks the sale.
    assert_written(&mesh, &waiting.order_id).await;

    let (token, mut admin) = operator(&mesh).await;
    admin
        .end_sale(authorized(
            pb::EndSaleRequest {
                sale_id: sale.sale_id.clone(),
            },
            &token,
        ))
        .await
        .expect("the sale ends (Postgres is the source of truth)");
    let recreated = InventoryClient::new(mesh.channel(mesh.ports.inventory).await)
        .get_stock(pb::GetStockRequest {
            sale_id: sale.sale_id.clone(),
        })
        .await;
    assert_eq!(
        recreated.as_ref().map_err(tonic::Status::code).err(),
        Some(tonic::Code::NotFound),
        "ending must not recreate the lost sale with its whole stock: {recreated:?}"
    );
    // The lifecycle retries the waiting commit a few times meanwhile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let row = mesh.store().await.order(&waiting.order_id).await.unwrap();
    assert_eq!(
        format!("{:?}", row.status),
        "PendingPayment",
        "the waiting order is not marked lost: {:?}",
        row.status_reason
    );

    let repaired = repair(admin, &sale.sale_id, &token)
        .await
        .unwrap()
        .into_inner();
    let after = repaired.redis_after.expect("rebuilt");
    assert_eq!((after.available, after.held), (3, 2), "{after:?}");
}

/// Finding 3: `Reconcile --repair` snapshots Postgres, then rebuilds Redis; orders that change
/// in between (here: a buyer cancelling while an operator repairs the ended sale) must not come
/// back to life in Redis: after each repair Redis holds exactly what Postgres says is pending.
/// And a sale on sale that Redis holds is not repaired under its buyers' feet: the repair
/// refuses with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_03_a_repair_while_orders_change_revives_none() {
    let mesh = Mesh::start_with(
        "finding 3",
        Extra {
            proxies: true,
            ..Extra::default()
        },
    )
    .await;
    let sale = create_sale_with(&mesh, 120, 1, 600_000, |_| {}).await;
    let mut orders = Vec::new();
    for i in 0..120 {
        let user = format!("buyer-{i}");
        let accepted = buy(&mesh, &sale, &user, "k").await.expect("accepted");
        orders.push((user, accepted.order_id));
    }
    let store = mesh.store().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while store
        .live_orders(&sale.sale_id)
        .await
        .unwrap()
        .iter()
        .filter(|o| o.inventory_pending.is_none())
        .count()
        < orders.len()
    {
        assert!(Instant::now() < deadline, "orders written and committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (token, admin) = operator(&mesh).await;
    let refused = repair(admin.clone(), &sale.sale_id, &token)
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), reason_of(&refused).as_deref()),
        (tonic::Code::FailedPrecondition, Some("SALE_ACTIVE")),
        "{refused:?}"
    );
    admin
        .clone()
        .end_sale(authorized(
            pb::EndSaleRequest {
                sale_id: sale.sale_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap();

    // The gateway's calls to the inventory arrive late (each chunk held 300 ms), so a repair
    // takes seconds between its snapshot of Postgres and its rebuild of Redis. In each round a
    // buyer cancels at another moment of the repair; when the repair has answered, Redis must
    // hold what Postgres says is pending.
    let hop = &mesh.hops.as_ref().unwrap().gateway_inventory;
    hop.set(flashsale_testkit::Fault::Hold(Duration::from_millis(300)));
    let mut client = flashsale_proto::v1::orders_client::OrdersClient::new(
        mesh.channel(mesh.ports.orders).await,
    );
    let mut pending = orders.len() as u64;
    for (round, (user, order_id)) in orders.iter().take(10).enumerate() {
        let repairing = tokio::spawn(repair(admin.clone(), &sale.sale_id, &token));
        tokio::time::sleep(Duration::from_millis(250 * round as u64)).await;
        client
            .cancel(pb::CancelRequest {
                order_id: order_id.clone(),
                user_id: user.clone(),
            })
            .await
            .unwrap();
        pending -= 1;
        repairing
            .await
            .unwrap()
            .expect("the repair of the ended sale goes through");
        let level = stock(&mesh, &sale).await;
        assert_eq!(
            level.held, pending,
            "round {round}: after the repair Redis holds {} units, Postgres has {pending} pending \
             (a cancelled order came back to life): {level:?}",
            level.held
        );
    }
    hop.heal();
}

/// Finding 11, when Redis lost the sale: a gateway that reads the sale's keys while Redis is
/// empty must not take "no keys" for an answer, and must read them again once the sale is
/// rebuilt; the buyer of the last unit, retrying, never hears SOLD_OUT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_11_a_retry_while_redis_lost_the_sale_is_never_told_sold_out() {
    let extra = Extra {
        // The sold-out memory stays fresh across the whole scenario.
        env: vec![("FLASHSALE_GATEWAY__SOLD_OUT_TTL".into(), "30s".into())],
        ..Extra::default()
    };
    let mut mesh = Mesh::start_with("finding 11 with Redis lost", extra).await;
    let sale = create_sale_with(&mesh, 1, 1, 600_000, |_| {}).await;
    let first = buy(&mesh, &sale, "alice", "key-1").await.expect("accepted");
    assert_written(&mesh, &first.order_id).await;
    // Without a key: the gateway needs no key set for bob, so it has read none yet.
    let stranger = buy(&mesh, &sale, "bob", "").await.unwrap_err();
    assert_eq!(reason_of(&stranger).as_deref(), Some("SOLD_OUT"));

    mesh.redis.restart().await.unwrap();
    let another = buy(&mesh, &sale, "carol", "k").await.unwrap_err();
    let retry = buy(&mesh, &sale, "alice", "key-1").await;
    assert_ne!(
        retry.as_ref().err().and_then(reason_of).as_deref(),
        Some("SOLD_OUT"),
        "alice's retry while Redis lacks the sale: {retry:?} (carol heard {another:?})"
    );

    let (token, admin) = operator(&mesh).await;
    repair(admin, &sale.sale_id, &token)
        .await
        .expect("the lost sale is repaired");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match buy(&mesh, &sale, "alice", "key-1").await {
            Ok(again) => {
                assert_eq!(again.order_id, first.order_id);
                break;
            }
            Err(status) => {
                assert_ne!(
                    reason_of(&status).as_deref(),
                    Some("SOLD_OUT"),
                    "{status:?}"
                );
                assert!(
                    Instant::now() < deadline,
                    "never the original answer: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Found by the model checker (`flashsale-model`, the original repair rule): the rebuild was
/// made from the live orders alone, so the key of a closed order vanished with Redis. Alice
/// buys with key K and cancels; Redis restarts empty and is repaired; her retry with K must get
/// her original order, not a new purchase (nor, once the sale ended, SALE_NOT_ACTIVE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_finding_a_a_closed_orders_key_keeps_its_answer_after_a_repair() {
    let mut mesh = Mesh::start("model finding a").await;
    let sale = create_sale_with(&mesh, 5, 1, 600_000, |_| {}).await;
    let first = buy(&mesh, &sale, "alice", "key-1").await.expect("accepted");
    assert_written(&mesh, &first.order_id).await;
    flashsale_proto::v1::orders_client::OrdersClient::new(mesh.channel(mesh.ports.orders).await)
        .cancel(pb::CancelRequest {
            order_id: first.order_id.clone(),
            user_id: "alice".into(),
        })
        .await
        .expect("alice cancels");
    let deadline = Instant::now() + Duration::from_secs(20);
    while stock(&mesh, &sale).await.available < 5 {
        assert!(Instant::now() < deadline, "the cancelled unit comes back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    mesh.redis.restart().await.unwrap();
    let (token, admin) = operator(&mesh).await;
    repair(admin, &sale.sale_id, &token)
        .await
        .expect("the lost sale is repaired");
    let retry = buy(&mesh, &sale, "alice", "key-1").await;
    assert_eq!(
        retry.as_ref().ok().map(|a| a.order_id.as_str()),
        Some(first.order_id.as_str()),
        "the retry gets the original order: {retry:?}"
    );
    assert_eq!(stock(&mesh, &sale).await.available, 5, "and takes nothing");
}
