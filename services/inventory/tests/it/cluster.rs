//! The inventory on a 3-master Redis Cluster: every script touches one sale's keys only, and
//! they share a hash tag, so each sale lives on one master and keeps every guarantee while
//! different sales spread over the masters.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use flashsale_inventory::{
    Inventory, Outcome, ReleaseReason, ReservationState, buckets::bucket_tag,
};
use flashsale_testkit::RedisCluster;
use futures::future::join_all;

use crate::{assert_consistent, open_sale, redis_config, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_spread_over_a_three_master_cluster_keep_every_guarantee() {
    flashsale_runtime::telemetry::init_for_tests();
    let cluster = RedisCluster::start(3, 0).await.expect("cluster starts");
    let mut config = redis_config(&cluster.url());
    config.command_timeout = Duration::from_secs(30);
    let inventory = Inventory::connect(&config, None)
        .await
        .expect("inventory connects to the cluster");

    // One sale on each master.
    let (mut sales, mut masters) = (Vec::new(), BTreeSet::new());
    while masters.len() < 3 {
        let sale = open_sale(300, 1);
        let master = cluster
            .master_of(&format!("fs:{{{}}}:sale", sale.sale_id))
            .await
            .unwrap();
        if masters.insert(master) {
            sales.push(sale);
        }
    }
    for sale in &sales {
        inventory.load_sale(sale).await.unwrap();
    }

    // 3,000 concurrent reserves per sale from 1,000 buyers each.
    let calls = sales.iter().flat_map(|sale| {
        let inventory = inventory.clone();
        (0..3_000).map(move |i| {
            let inventory = inventory.clone();
            let request = request(sale, &format!("user-{}", i % 1_000), 1, "");
            tokio::spawn(async move { inventory.reserve(&request).await })
        })
    });
    let mut held: HashMap<String, Vec<String>> = HashMap::new();
    for result in join_all(calls).await {
        if let Outcome::Reserved { reservation, .. } = result.unwrap().unwrap().outcome {
            held.entry(reservation.sale_id.clone())
                .or_default()
                .push(reservation.reservation_id);
        }
    }
    for sale in &sales {
        let ids = &held[&sale.sale_id];
        assert_eq!(
            ids.len(),
            300,
            "sale {} sold exactly its stock",
            sale.sale_id
        );
        // The rest of a reservation's life goes through the cluster too.
        let deadline = flashsale_proto::time::now_ms() + 60_000;
        inventory
            .commit(&sale.sale_id, &ids[0], deadline)
            .await
            .unwrap();
        let paid = inventory.confirm(&sale.sale_id, &ids[0]).await.unwrap();
        assert_eq!(paid.reservation.state, ReservationState::Confirmed);
        inventory
            .release(&sale.sale_id, &ids[1], ReleaseReason::Cancelled)
            .await
            .unwrap();
        let audit = assert_consistent(&inventory, &sale.sale_id).await;
        assert_eq!(
            (audit.stock.available, audit.stock.held, audit.stock.sold),
            (1, 298, 1)
        );
    }
}

/// The outcome of a run of attempts against one sale.
#[derive(Debug, Default)]
struct Run {
    /// Reservations the buyers were told they have, by user.
    reserved: HashMap<String, Vec<String>>,
    sold_out: usize,
    user_limit: usize,
    errors: usize,
}

/// `attempts` reserves of one unit from `users` buyers, 256 at a time; `done` counts them.
async fn run_attempts(
    inventory: Inventory,
    sale: flashsale_inventory::SaleSpec,
    attempts: usize,
    users: usize,
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Run {
    use futures::StreamExt;
    let mut answers = futures::stream::iter(0..attempts)
        .map(|i| {
            let inventory = inventory.clone();
            let request = request(&sale, &format!("buyer-{}", i % users), 1, "");
            let done = done.clone();
            async move {
                let answer = inventory.reserve(&request).await;
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                answer
            }
        })
        .buffer_unordered(256);
    let mut run = Run::default();
    while let Some(answer) = answers.next().await {
        match answer.map(|a| a.outcome) {
            Ok(Outcome::Reserved { reservation, .. }) => run
                .reserved
                .entry(reservation.user_id.clone())
                .or_default()
                .push(reservation.reservation_id),
            Ok(Outcome::SoldOut) => run.sold_out += 1,
            Ok(Outcome::UserLimit) => run.user_limit += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => run.errors += 1,
        }
    }
    run
}

/// A hot-item sale: 8 buckets, which spread over every master.
async fn hot_sale(cluster: &RedisCluster, stock: u64) -> flashsale_inventory::SaleSpec {
    let sale = flashsale_inventory::SaleSpec {
        stock_buckets: 8,
        ..open_sale(stock, 1)
    };
    let mut per_master = HashMap::<usize, u32>::new();
    for k in 0..8 {
        let key = format!("fs:{{{}}}:sale", bucket_tag(&sale.sale_id, k, 8));
        *per_master
            .entry(cluster.master_of(&key).await.unwrap())
            .or_default() += 1;
    }
    let mut spread: Vec<u32> = per_master.into_values().collect();
    spread.sort_unstable();
    assert_eq!(spread, [2, 3, 3], "8 buckets spread evenly over 3 masters");
    sale
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_item_in_eight_buckets_on_three_masters_sells_exactly_its_stock() {
    flashsale_runtime::telemetry::init_for_tests();
    let cluster = RedisCluster::start(3, 0).await.expect("cluster starts");
    let mut config = redis_config(&cluster.url());
    config.command_timeout = Duration::from_secs(30);
    let inventory = Inventory::connect(&config, None).await.unwrap();
    let sale = hot_sale(&cluster, 5_000).await;
    inventory.load_sale(&sale).await.unwrap();

    let run = run_attempts(
        inventory.clone(),
        sale.clone(),
        100_000,
        50_000,
        Default::default(),
    )
    .await;
    let units: usize = run.reserved.values().map(Vec::len).sum();
    assert_eq!(run.errors, 0, "{run:?}");
    assert_eq!(units, 5_000, "exactly the stock is sold");
    assert_eq!(run.reserved.len(), 5_000, "no buyer twice");
    assert!(
        run.sold_out > 0 && run.user_limit > 0,
        "{} sold out, {} at their limit",
        run.sold_out,
        run.user_limit
    );

    // Buyers were told sold out: then no bucket (nor the pool) may have kept a unit.
    let levels = inventory.bucket_levels(&sale.sale_id).await.unwrap();
    assert_eq!(levels.len(), 8);
    assert!(levels.iter().all(|l| l.available == 0), "{levels:?}");
    assert!(
        levels.iter().all(|l| l.held > 0),
        "every bucket sold some: {levels:?}"
    );
    let audit = assert_consistent(&inventory, &sale.sale_id).await;
    assert_eq!((audit.stock.available, audit.stock.held), (0, 5_000));
    assert!(audit.units_by_user.values().all(|&u| u == 1));
    for (user, ids) in &run.reserved {
        let held = inventory.reservation(&sale.sale_id, &ids[0]).await.unwrap();
        assert_eq!(held.user_id, *user);
        assert_eq!(held.state, ReservationState::Held);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_sale_oversells_nothing() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    flashsale_runtime::telemetry::init_for_tests();
    let mut cluster = RedisCluster::start(3, 1).await.expect("cluster starts");
    let mut config = redis_config(&cluster.url());
    config.command_timeout = Duration::from_secs(2);
    // An answer is given only once a replica has the write.
    config.replica_acks = 1;
    config.replica_ack_timeout = Duration::from_millis(500);
    let inventory = Inventory::connect(&config, None).await.unwrap();
    let sale = hot_sale(&cluster, 5_000).await;
    inventory.load_sale(&sale).await.unwrap();
    let victim = cluster
        .master_of(&format!("fs:{{{}}}:sale", bucket_tag(&sale.sale_id, 0, 8)))
        .await
        .unwrap();

    let done = Arc::new(AtomicUsize::new(0));
    // 30,000 attempts from 15,000 buyers: three buyers for each unit, so the sale sells out
    // after the failover (the 100,000-attempt run without a kill is the test above; with
    // replicas on two cores each sold-out answer costs more, and this keeps the run short).
    let load = tokio::spawn(run_attempts(
        inventory.clone(),
        sale.clone(),
        30_000,
        15_000,
        done.clone(),
    ));
    while done.load(Ordering::Relaxed) < 2_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster.nodes()[victim].kill();
    // Its replica takes over; the killed node comes back (as a pod would) and rejoins as the
    // new master's replica, so writes there can be acknowledged again.
    let key = format!("fs:{{{}}}:sale", bucket_tag(&sale.sale_id, 0, 8));
    while !cluster.master_of(&key).await.is_ok_and(|m| m != victim) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.wait_ok().await.unwrap();
    cluster.nodes()[victim].restart().await.unwrap();
    cluster.wait_ok().await.unwrap();
    cluster.wait_replicas_synced().await.unwrap();
    let run = load.await.unwrap();
    // Journalled transfers the failover cut in half are settled, as the sweeper would.
    inventory.settle(&sale.sale_id).await.unwrap();

    let units: usize = run.reserved.values().map(Vec::len).sum();
    let audit = assert_consistent(&inventory, &sale.sale_id).await;
    assert!(units <= 5_000, "oversold: {units} reservations answered");
    assert!(
        run.reserved.values().all(|ids| ids.len() == 1),
        "a buyer twice"
    );
    assert!(
        audit.stock.held <= 5_000 && audit.stock.total == 5_000,
        "{:?}",
        audit.stock
    );
    assert!(audit.units_by_user.values().all(|&u| u == 1));
    // Every answered reservation survived the failover.
    for (user, ids) in &run.reserved {
        let held = inventory.reservation(&sale.sale_id, &ids[0]).await.unwrap();
        assert_eq!((&held.user_id, held.state), (user, ReservationState::Held));
    }
    assert!(run.errors > 0, "the kill was felt: {run:?}");
    eprintln!(
        "answered {units} reservations, {} sold out, {} at their limit, {} errors; Redis holds {} of 5,000",
        run.sold_out, run.user_limit, run.errors, audit.stock.held
    );
}
