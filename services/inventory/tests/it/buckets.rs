//! Stock buckets on one Redis: the layout, the per-user limit across buckets, stock moving
//! between them, journalled transfers settled exactly once, and rebuild.

use std::collections::HashMap;

use flashsale_inventory::{
    Error, Inventory, Outcome, ReleaseReason, ReservationState, SalePresence, SaleSpec,
    buckets::{bucket_of, bucket_tag, home_bucket},
};
use fred::prelude::*;
use futures::future::join_all;

use crate::{assert_consistent, inventory, open_sale, request};

fn bucketed(stock: u64, limit: u32, buckets: u32) -> SaleSpec {
    SaleSpec {
        stock_buckets: buckets,
        ..open_sale(stock, limit)
    }
}

async fn raw(url: &str) -> Client {
    let client = Client::new(Config::from_url(url).unwrap(), None, None, None);
    client.init().await.unwrap();
    client
}

/// Every attempt concurrently; the reservations made, by user.
async fn attempts(
    inventory: &Inventory,
    sale: &SaleSpec,
    users: usize,
    per_user: usize,
) -> (HashMap<String, Vec<String>>, usize) {
    let calls = (0..users * per_user).map(|i| {
        let inventory = inventory.clone();
        let request = request(sale, &format!("user-{}", i % users), 1, "");
        tokio::spawn(async move { inventory.reserve(&request).await })
    });
    let (mut held, mut sold_out) = (HashMap::<String, Vec<String>>::new(), 0);
    for result in join_all(calls).await {
        match result.unwrap().unwrap().outcome {
            Outcome::Reserved { reservation, .. } => held
                .entry(reservation.user_id.clone())
                .or_default()
                .push(reservation.reservation_id),
            Outcome::SoldOut => sold_out += 1,
            Outcome::UserLimit => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    (held, sold_out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_sale_sells_exactly_its_stock_and_keeps_every_buyer_in_one_bucket() {
    let (_redis, inventory) = inventory(None).await;
    let sale = bucketed(60, 2, 4);
    let loaded = inventory.load_sale(&sale).await.unwrap();
    assert!(loaded.created);
    assert_eq!(loaded.stock.total, 60);
    assert_eq!(loaded.stock.available, 60, "all of it in the pool at first");

    let (held, sold_out) = attempts(&inventory, &sale, 300, 3).await;
    let units: usize = held.values().map(Vec::len).sum();
    assert_eq!(units, 60, "exactly the stock");
    assert!(sold_out > 0);
    for (user, ids) in &held {
        assert!(ids.len() <= 2, "{user} holds {}", ids.len());
        for id in ids {
            assert_eq!(
                bucket_of(id, 4),
                Some(home_bucket(user, 4)),
                "{id} of {user}"
            );
        }
    }
    let audit = assert_consistent(&inventory, &sale.sale_id).await;
    assert_eq!(audit.stock.held, 60);
    let levels = inventory.bucket_levels(&sale.sale_id).await.unwrap();
    assert_eq!(levels.len(), 4);
    assert!(
        levels.iter().all(|l| l.available == 0),
        "a buyer was told sold out, so no bucket may keep stock: {levels:?}"
    );
    assert_eq!(levels.iter().map(|l| l.total).sum::<u64>(), 60);

    // Transitions find the reservation's bucket from its id.
    let (user, ids) = held.iter().next().unwrap();
    let id = &ids[0];
    let committed = inventory
        .commit(&sale.sale_id, id, flashsale_proto::time::now_ms() + 60_000)
        .await
        .unwrap();
    assert_eq!(committed.reservation.state, ReservationState::Committed);
    assert_eq!(committed.reservation.user_id, *user);
    let released = inventory
        .release(&sale.sale_id, id, ReleaseReason::Cancelled)
        .await
        .unwrap();
    assert_eq!(released.reservation.state, ReservationState::Released);
    assert!(matches!(
        inventory.confirm(&sale.sale_id, "no-bucket").await,
        Err(Error::ReservationNotFound { .. })
    ));

    // The unit came back in that buyer's bucket; a buyer whose home is elsewhere gets it.
    let home = home_bucket(user, 4);
    let stranger = (0..)
        .map(|i| format!("stranger-{i}"))
        .find(|u| home_bucket(u, 4) != home)
        .unwrap();
    let got = inventory
        .reserve(&request(&sale, &stranger, 1, "k"))
        .await
        .unwrap();
    let Outcome::Reserved { reservation, .. } = got.outcome else {
        panic!("the released unit must be found: {:?}", got.outcome);
    };
    assert_eq!(
        bucket_of(&reservation.reservation_id, 4),
        Some(home_bucket(&stranger, 4))
    );
    // An idempotent retry meets the first answer, in the same bucket.
    let again = inventory
        .reserve(&request(&sale, &stranger, 1, "k"))
        .await
        .unwrap();
    assert!(matches!(
        again.outcome,
        Outcome::Reserved { duplicate: true, reservation: ref r } if r.reservation_id == reservation.reservation_id
    ));
    assert_eq!(
        inventory
            .reserve(&request(&sale, "late", 1, ""))
            .await
            .unwrap()
            .outcome,
        Outcome::SoldOut
    );
    let audit = assert_consistent(&inventory, &sale.sale_id).await;
    assert_eq!(audit.stock.held, 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_counts_and_stock_are_fixed_once_loaded() {
    let (_redis, inventory) = inventory(None).await;
    let sale = bucketed(100, 1, 8);
    inventory.load_sale(&sale).await.unwrap();
    let reloaded = inventory.load_sale(&sale).await.unwrap();
    assert!(!reloaded.created);
    for (buckets, stock) in [(4, 100), (1, 100), (8, 99)] {
        let changed = SaleSpec {
            stock_buckets: buckets,
            stock,
            ..sale.clone()
        };
        let err = inventory.load_sale(&changed).await.unwrap_err();
        assert!(
            matches!(err, Error::BucketsFixed { .. } | Error::StockFixed { .. }),
            "{buckets} buckets, stock {stock}: {err}"
        );
    }
    let plain = open_sale(10, 1);
    inventory.load_sale(&plain).await.unwrap();
    let err = inventory
        .load_sale(&SaleSpec {
            stock_buckets: 2,
            ..plain
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::BucketsFixed { loaded: 1, .. }),
        "{err}"
    );
    for (buckets, stock) in [(0, 10), (65, 100), (11, 10)] {
        let err = bucketed(stock, 1, buckets).validate().unwrap_err();
        assert!(err.to_string().contains("stock_buckets"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_cut_in_half_is_settled_exactly_once() {
    let (redis, inventory) = inventory(None).await;
    let sale = bucketed(40, 1, 4);
    inventory.load_sale(&sale).await.unwrap();
    let sid = &sale.sale_id;
    let client = raw(&redis.url()).await;

    // A process took 5 units from the pool for bucket 2 and died before crediting them.
    let _: i64 = client
        .hincrby(format!("fs:{{{sid}}}:sale"), "pool", -5)
        .await
        .unwrap();
    let _: i64 = client
        .hset(format!("fs:{{{sid}}}:out"), ("t-1", "2:5"))
        .await
        .unwrap();
    let stock = inventory.stock(sid).await.unwrap();
    assert_eq!(
        stock.available, 40,
        "units in flight still count: {stock:?}"
    );

    assert_eq!(inventory.settle(sid).await.unwrap(), 5);
    assert_eq!(inventory.settle(sid).await.unwrap(), 0, "nothing left");
    let levels = inventory.bucket_levels(sid).await.unwrap();
    assert_eq!(levels[2].total, 5);
    assert_eq!(levels[2].available, 5);

    // The same transfer journalled again (a retry of a settle that had already credited it)
    // adds nothing.
    let _: i64 = client
        .hset(format!("fs:{{{sid}}}:out"), ("t-1", "2:5"))
        .await
        .unwrap();
    assert_eq!(inventory.stock(sid).await.unwrap().available, 40);
    inventory.settle(sid).await.unwrap();
    assert_eq!(inventory.bucket_levels(sid).await.unwrap()[2].total, 5);
    assert_consistent(&inventory, sid).await;

    // And everything still sells, exactly.
    let (held, _) = attempts(&inventory, &sale, 100, 1).await;
    assert_eq!(held.values().map(Vec::len).sum::<usize>(), 40);
    assert_consistent(&inventory, sid).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucketed_sale_is_rebuilt_from_its_orders() {
    let (redis, inventory) = inventory(None).await;
    let sale = bucketed(30, 1, 3);
    inventory.load_sale(&sale).await.unwrap();
    let (held, _) = attempts(&inventory, &sale, 20, 1).await;
    let mut orders = Vec::new();
    for (i, ids) in held.values().enumerate() {
        let id = &ids[0];
        inventory
            .commit(&sale.sale_id, id, flashsale_proto::time::now_ms() + 600_000)
            .await
            .unwrap();
        if i % 2 == 0 {
            inventory.confirm(&sale.sale_id, id).await.unwrap();
        }
        orders.push(inventory.reservation(&sale.sale_id, id).await.unwrap());
    }
    let client = raw(&redis.url()).await;
    let _: () = client.flushall(false).await.unwrap();

    let stock = inventory
        .rebuild(&sale, &orders, SalePresence::Missing)
        .await
        .unwrap();
    assert_eq!(stock.total, 30);
    assert_eq!(stock.held + stock.sold, 20);
    assert_eq!(stock.available, 10);
    assert_consistent(&inventory, &sale.sale_id).await;
    // The rebuilt buyers are still at their limit; the rest of the stock sells.
    for user in held.keys() {
        assert_eq!(
            inventory
                .reserve(&request(&sale, user, 1, ""))
                .await
                .unwrap()
                .outcome,
            Outcome::UserLimit
        );
    }
    let (late, _) = attempts(&inventory, &sale, 50, 1).await;
    assert_eq!(late.values().map(Vec::len).sum::<usize>(), 10);
    assert!(late.keys().all(|u| !held.contains_key(u)));
    let audit = assert_consistent(&inventory, &sale.sale_id).await;
    assert_eq!(audit.stock.available, 0);
    assert_eq!(audit.stock.held + audit.stock.sold, 30);

    // Orders naming no bucket of the sale are refused before anything changes.
    let mut stray = orders[0].clone();
    stray.reservation_id = "0192-no-bucket".into();
    assert!(matches!(
        inventory
            .rebuild(&sale, &[stray], SalePresence::Present)
            .await,
        Err(Error::InvalidArgument { .. })
    ));
}

/// The remaining repair race: a transfer between a bucketed sale's slots is two scripts (Give,
/// then Credit). A Credit delayed across a repair (held on a connection while Redis restarts
/// empty and the sale is rebuilt) landed on the rebuilt bucket and added units that the
/// rebuild had already given to the pool: more units than stock. A rebuild starts a new
/// generation of the sale; a Credit of an older one changes nothing.
#[tokio::test]
async fn a_credit_from_before_a_rebuild_creates_no_units() {
    let (mut redis, inventory) = inventory(None).await;
    let sale = bucketed(30, 1, 3);
    inventory.load_sale(&sale).await.unwrap();
    let client = raw(&redis.url()).await;
    let control = format!("fs:{{{}}}:sale", sale.sale_id);
    let tid = "transfer-in-flight";
    let give: Vec<Value> = client
        .eval(
            include_str!("../../lua/give.lua"),
            vec![control.clone(), format!("fs:{{{}}}:out", sale.sale_id)],
            vec!["1", "1", "5", "pool", "1"],
        )
        .await
        .unwrap();
    let units = give[0].as_i64().unwrap();
    assert_eq!(units, 5, "the Give took five units from the pool: {give:?}");
    let generation = give.get(2).and_then(Value::as_i64).unwrap_or(0);

    redis.restart().await.unwrap();
    inventory
        .rebuild(&sale, &[], SalePresence::Missing)
        .await
        .unwrap();

    let bucket = bucket_tag(&sale.sale_id, 1, 3);
    let client = raw(&redis.url()).await;
    let credit: Vec<Value> = client
        .eval(
            include_str!("../../lua/credit.lua"),
            vec![
                format!("fs:{{{bucket}}}:sale"),
                format!("fs:{{{bucket}}}:in"),
            ],
            vec![tid.to_owned(), units.to_string(), generation.to_string()],
        )
        .await
        .unwrap();
    let audit = assert_consistent(&inventory, &sale.sale_id).await;
    assert_eq!(
        audit.stock.total, 30,
        "the late Credit ({credit:?}) must not add units: {:?}",
        audit.stock
    );
    assert_eq!(audit.stock.available, 30);
}
