use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use flashsale_proto::v1::StockSignal;
use futures::StreamExt;
use prost::Message;

use flashsale_inventory::{Outcome, ReservationState, Signals, sweeper};
use flashsale_testkit::NatsServer;

use crate::{assert_consistent, inventory, open_sale, request};

/// The newest stock signal per sale, as published: what a gateway following them would know.
#[derive(Clone, Default)]
struct SoldOutFlags(Arc<Mutex<HashMap<String, StockSignal>>>);

impl SoldOutFlags {
    async fn subscribe(client: &async_nats::Client, prefix: &str) -> Self {
        let mut signals = client
            .subscribe(flashsale_proto::sale::signal::every_sale(prefix))
            .await
            .unwrap();
        let flags = Self::default();
        let feed = flags.clone();
        tokio::spawn(async move {
            while let Some(message) = signals.next().await {
                let signal = StockSignal::decode(message.payload).expect("a StockSignal");
                let mut newest = feed.0.lock().unwrap();
                let known = newest.entry(signal.sale_id.clone()).or_default();
                if signal.sequence >= known.sequence {
                    *known = signal;
                }
            }
        });
        flags
    }

    fn is_sold_out(&self, sale_id: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .get(sale_id)
            .is_some_and(|s| s.sold_out)
    }
}

/// An inventory publishing its stock signals on a throwaway NATS, and flags following them as
/// a gateway's would.
async fn signalled() -> (
    NatsServer,
    flashsale_testkit::RedisServer,
    flashsale_inventory::Inventory,
    SoldOutFlags,
) {
    let nats = NatsServer::start().await.unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let flags = SoldOutFlags::subscribe(&client, "test.stock").await;
    client.flush().await.unwrap();
    let (redis, inv) = inventory(Some(Signals::new(client, "test.stock"))).await;
    (nats, redis, inv, flags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweepers_release_expired_reservations_once_and_clear_sold_out() {
    let (_nats, _redis, inv, flags) = signalled().await;

    let mut sale = open_sale(200, 1);
    sale.reservation_hold = Duration::from_secs(1);
    inv.load_sale(&sale).await.unwrap();

    let mut ids = Vec::new();
    for i in 0..200 {
        match inv
            .reserve(&request(&sale, &format!("u{i}"), 1, ""))
            .await
            .unwrap()
            .outcome
        {
            Outcome::Reserved { reservation, .. } => ids.push(reservation.reservation_id),
            other => panic!("{other:?}"),
        }
    }
    // Commit a quarter: persisted orders are not the sweeper's to release.
    let deadline = flashsale_proto::time::now_ms() + 600_000;
    for id in &ids[..50] {
        inv.commit(&sale.sale_id, id, deadline).await.unwrap();
    }
    assert_eq!(inv.stock(&sale.sale_id).await.unwrap().available, 0);
    wait_until(|| flags.is_sold_out(&sale.sale_id)).await;

    // Nothing is due yet.
    assert_eq!(sweeper::sweep_once(&inv, 1000).await.unwrap().released, 0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    // Two sweepers at once, with small batches so they interleave.
    let (a, b) = tokio::join!(sweeper::sweep_once(&inv, 7), sweeper::sweep_once(&inv, 7));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.released + b.released,
        150,
        "each expired reservation released exactly once"
    );

    let audit = assert_consistent(&inv, &sale.sale_id).await;
    assert_eq!((audit.stock.available, audit.stock.held), (150, 50));
    for r in &audit.reservations {
        let expected = if ids[..50].contains(&r.reservation_id) {
            ReservationState::Committed
        } else {
            ReservationState::Released
        };
        assert_eq!(r.state, expected);
    }
    assert_eq!(
        sweeper::sweep_once(&inv, 1000).await.unwrap().released,
        0,
        "nothing twice"
    );
    wait_until(|| !flags.is_sold_out(&sale.sale_id)).await;
}

#[tokio::test(start_paused = false)]
async fn sweeper_task_runs_until_shutdown() {
    let (_redis, inv) = inventory(None).await;
    let mut sale = open_sale(3, 1);
    sale.reservation_hold = Duration::from_secs(1);
    inv.load_sale(&sale).await.unwrap();
    inv.reserve(&request(&sale, "a", 1, "")).await.unwrap();

    let shutdown = flashsale_runtime::Shutdown::new();
    let task = tokio::spawn(sweeper::run(
        inv.clone(),
        sweeper::SweepConfig {
            interval: Duration::from_millis(50),
            batch: 100,
        },
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while inv.stock(&sale.sale_id).await.unwrap().available < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweeper never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert_consistent(&inv, &sale.sale_id).await;
}

async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Finding 9 (the sweeper): one sale whose expiry fails (here its expiry set is not a sorted
/// set) must not keep the other sales' expired reservations from being released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_09_one_failing_sale_does_not_halt_the_sweep() {
    let (redis, inv) = inventory(None).await;
    let mut sales = Vec::new();
    for _ in 0..4 {
        let mut sale = open_sale(10, 1);
        sale.reservation_hold = Duration::from_secs(1);
        inv.load_sale(&sale).await.unwrap();
        for user in ["a", "b"] {
            inv.reserve(&request(&sale, user, 1, "")).await.unwrap();
        }
        sales.push(sale);
    }
    // The broken sale: its expiry set replaced by a string, so its Expire script fails.
    let broken = format!("fs:{{{}}}:exp", sales[0].sale_id);
    let set = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "SET", &broken, "garbage"])
        .output()
        .unwrap();
    assert!(set.status.success());
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    let report = sweeper::sweep_once(&inv, 1000)
        .await
        .expect("a pass over every sale, whatever one of them does");
    assert_eq!((report.sales, report.released, report.failed), (4, 6, 1));
    for sale in &sales[1..] {
        assert_eq!(inv.stock(&sale.sale_id).await.unwrap().available, 10);
    }
}

/// Finding 6: Redis loses a sale after its stock signal was numbered a few times; the sale is
/// rebuilt with its stock back. Gateways must follow the rebuilt sale's signals: hear that the
/// stock is back, and hear it when it sells out again (a numbering restarted at 0 was ignored
/// as older, so a flag stuck at sold out, or never rose).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_06_signals_of_a_rebuilt_sale_are_not_taken_for_old_ones() {
    let (_nats, redis, inv, flags) = signalled().await;
    let sale = open_sale(1, 1);
    inv.load_sale(&sale).await.unwrap();

    // Sold out, back, sold out again: the signal is numbered 3.
    let reserve = |user: &'static str| {
        let inv = inv.clone();
        let request = request(&sale, user, 1, "");
        async move {
            match inv.reserve(&request).await.unwrap().outcome {
                Outcome::Reserved { reservation, .. } => reservation.reservation_id,
                other => panic!("{other:?}"),
            }
        }
    };
    let first = reserve("a").await;
    inv.release(
        &sale.sale_id,
        &first,
        flashsale_inventory::ReleaseReason::Cancelled,
    )
    .await
    .unwrap();
    reserve("b").await;
    wait_until(|| flags.is_sold_out(&sale.sale_id)).await;

    // Redis loses everything; the repair rebuilds the sale from no orders: the unit is back.
    let flushed = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port().to_string(), "FLUSHALL"])
        .output()
        .unwrap();
    assert!(flushed.status.success());
    let stock = inv
        .rebuild(&sale, &[], flashsale_inventory::SalePresence::Missing)
        .await
        .unwrap();
    assert_eq!(stock.available, 1);
    wait_until(|| !flags.is_sold_out(&sale.sale_id)).await;

    // And it sells out again.
    reserve("c").await;
    wait_until(|| flags.is_sold_out(&sale.sale_id)).await;
}
