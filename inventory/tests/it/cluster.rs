//! The inventory on a 3-master Redis Cluster: every script touches one sale's keys only, and
//! they share a hash tag, so each sale lives on one master and keeps every guarantee while
//! different sales spread over the masters.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use flashsale_inventory::{Inventory, Outcome, ReleaseReason, ReservationState};
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
