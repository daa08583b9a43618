use std::collections::HashMap;

use flashsale_inventory::{Error, Outcome, ReservationState};
use futures::future::join_all;

use crate::{assert_consistent, inventory, inventory_with, open_sale, request};

/// The acceptance scenario: 20,000 concurrent Reserve calls from 5,000 users against stock
/// 1,000 with limit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_concurrent_reserves_never_oversell() {
    // All 20,000 are in flight at once: the last wait behind the others, so give them time.
    let (_redis, inventory) = inventory_with(None, std::time::Duration::from_secs(30)).await;
    let sale = open_sale(1_000, 1);
    inventory.load_sale(&sale).await.unwrap();

    let calls = (0..20_000).map(|i| {
        let inventory = inventory.clone();
        let request = request(&sale, &format!("user-{}", i % 5_000), 1, "");
        tokio::spawn(async move { inventory.reserve(&request).await })
    });
    let results: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();

    let mut reserved_by_user: HashMap<String, u32> = HashMap::new();
    let mut sold_out = 0;
    let mut user_limit = 0;
    for r in &results {
        match &r.outcome {
            Outcome::Reserved {
                reservation,
                duplicate,
            } => {
                assert!(!duplicate);
                *reserved_by_user
                    .entry(reservation.user_id.clone())
                    .or_default() += reservation.quantity;
            }
            Outcome::SoldOut => sold_out += 1,
            Outcome::UserLimit => user_limit += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    let reserved: u32 = reserved_by_user.values().sum();
    assert_eq!(reserved, 1_000, "exactly the stock is reserved");
    assert!(
        reserved_by_user.values().all(|&n| n == 1),
        "no user holds 2"
    );
    assert_eq!(reserved as usize + sold_out + user_limit, 20_000);

    let audit = assert_consistent(&inventory, &sale.sale_id).await;
    assert_eq!(audit.stock.available, 0);
    assert_eq!(audit.stock.held, 1_000);
    assert_eq!(audit.reservations.len(), 1_000, "refusals wrote nothing");
}

#[tokio::test]
async fn idempotency_key_returns_the_original_reservation() {
    let (_redis, inventory) = inventory(None).await;
    let sale = open_sale(10, 3);
    inventory.load_sale(&sale).await.unwrap();

    let first = inventory
        .reserve(&request(&sale, "alice", 2, "k1"))
        .await
        .unwrap();
    let Outcome::Reserved {
        reservation: original,
        duplicate: false,
    } = first.outcome
    else {
        panic!("{first:?}");
    };
    // Same key, same quantity: the original answer, no stock taken.
    let again = inventory
        .reserve(&request(&sale, "alice", 2, "k1"))
        .await
        .unwrap();
    assert_eq!(
        again.outcome,
        Outcome::Reserved {
            reservation: original.clone(),
            duplicate: true
        }
    );
    // Same key, another quantity: a key names one purchase; refused, nothing taken.
    let other = inventory
        .reserve(&request(&sale, "alice", 1, "k1"))
        .await
        .unwrap();
    assert_eq!(other.outcome, Outcome::KeyReused);
    assert_eq!(inventory.stock(&sale.sale_id).await.unwrap().available, 8);

    // The key is per buyer: bob's k1 is a new attempt.
    let bob = inventory
        .reserve(&request(&sale, "bob", 1, "k1"))
        .await
        .unwrap();
    assert!(matches!(
        bob.outcome,
        Outcome::Reserved {
            duplicate: false,
            ..
        }
    ));

    // After a release the key still names the original reservation, in its new state.
    inventory
        .release(
            &sale.sale_id,
            &original.reservation_id,
            flashsale_inventory::ReleaseReason::Cancelled,
        )
        .await
        .unwrap();
    let replay = inventory
        .reserve(&request(&sale, "alice", 2, "k1"))
        .await
        .unwrap();
    match replay.outcome {
        Outcome::Reserved {
            reservation,
            duplicate: true,
        } => {
            assert_eq!(reservation.reservation_id, original.reservation_id);
            assert_eq!(reservation.state, ReservationState::Released);
        }
        other => panic!("{other:?}"),
    }
    assert_consistent(&inventory, &sale.sale_id).await;
}

#[tokio::test]
async fn user_limit_counts_held_and_sold_units() {
    let (_redis, inventory) = inventory(None).await;
    let sale = open_sale(10, 2);
    inventory.load_sale(&sale).await.unwrap();

    let a = inventory
        .reserve(&request(&sale, "u", 1, ""))
        .await
        .unwrap();
    let Outcome::Reserved { reservation: a, .. } = a.outcome else {
        panic!()
    };
    inventory
        .confirm(&sale.sale_id, &a.reservation_id)
        .await
        .unwrap();
    assert!(matches!(
        inventory
            .reserve(&request(&sale, "u", 1, ""))
            .await
            .unwrap()
            .outcome,
        Outcome::Reserved { .. }
    ));
    assert_eq!(
        inventory
            .reserve(&request(&sale, "u", 1, ""))
            .await
            .unwrap()
            .outcome,
        Outcome::UserLimit
    );
    assert_eq!(
        inventory
            .reserve(&request(&sale, "u", 3, ""))
            .await
            .unwrap()
            .outcome,
        Outcome::QuantityOverLimit
    );
    assert_consistent(&inventory, &sale.sale_id).await;
}

#[tokio::test]
async fn sold_out_and_window_refusals_take_nothing() {
    let (_redis, inventory) = inventory(None).await;
    let sale = open_sale(2, 2);
    inventory.load_sale(&sale).await.unwrap();
    let r = inventory
        .reserve(&request(&sale, "a", 2, ""))
        .await
        .unwrap();
    assert_eq!(r.available, 0);
    let r = inventory
        .reserve(&request(&sale, "b", 1, ""))
        .await
        .unwrap();
    assert_eq!((r.outcome, r.available), (Outcome::SoldOut, 0));

    let mut later = open_sale(5, 1);
    later.starts_at_ms += 600_000;
    inventory.load_sale(&later).await.unwrap();
    assert_eq!(
        inventory
            .reserve(&request(&later, "a", 1, ""))
            .await
            .unwrap()
            .outcome,
        Outcome::NotActive
    );
    // Ending a sale = loading it again with a window that is over.
    let mut ended = open_sale(5, 1);
    inventory.load_sale(&ended).await.unwrap();
    ended.ends_at_ms = flashsale_proto::time::now_ms() - 1;
    ended.starts_at_ms = ended.ends_at_ms - 10_000;
    assert!(!inventory.load_sale(&ended).await.unwrap().created);
    assert_eq!(
        inventory
            .reserve(&request(&ended, "a", 1, ""))
            .await
            .unwrap()
            .outcome,
        Outcome::NotActive
    );
    for id in [&sale.sale_id, &later.sale_id, &ended.sale_id] {
        assert_consistent(&inventory, id).await;
    }
    assert_eq!(inventory.stock(&later.sale_id).await.unwrap().available, 5);
}

#[tokio::test]
async fn loading_twice_never_resets_stock() {
    let (_redis, inventory) = inventory(None).await;
    let mut sale = open_sale(5, 5);
    assert!(inventory.load_sale(&sale).await.unwrap().created);
    let r = inventory
        .reserve(&request(&sale, "a", 3, ""))
        .await
        .unwrap();
    let Outcome::Reserved { reservation, .. } = r.outcome else {
        panic!()
    };
    inventory
        .confirm(&sale.sale_id, &reservation.reservation_id)
        .await
        .unwrap();
    inventory
        .reserve(&request(&sale, "b", 1, ""))
        .await
        .unwrap();

    sale.per_user_limit = 1;
    let again = inventory.load_sale(&sale).await.unwrap();
    assert!(!again.created);
    assert_eq!(
        (again.stock.available, again.stock.held, again.stock.sold),
        (1, 1, 3)
    );
    assert_eq!(
        inventory
            .reserve(&request(&sale, "c", 2, ""))
            .await
            .unwrap()
            .outcome,
        Outcome::QuantityOverLimit,
        "the refreshed limit applies"
    );

    sale.stock = 50;
    assert!(matches!(
        inventory.load_sale(&sale).await,
        Err(Error::StockFixed {
            loaded: 5,
            requested: 50,
            ..
        })
    ));
    assert_consistent(&inventory, &sale.sale_id).await;
}

#[tokio::test]
async fn bad_input_is_refused_before_redis() {
    let (_redis, inventory) = inventory(None).await;
    let sale = open_sale(5, 1);
    inventory.load_sale(&sale).await.unwrap();
    let cases = [
        request(&sale, "", 1, ""),
        request(&sale, &"u".repeat(129), 1, ""),
        request(&sale, "u", 0, ""),
        request(&sale, "u", 1, &"k".repeat(129)),
        request(&sale, "u\u{7}", 1, ""),
    ];
    for case in cases {
        assert!(
            matches!(
                inventory.reserve(&case).await,
                Err(Error::InvalidId(_) | Error::InvalidArgument { .. })
            ),
            "{case:?}"
        );
    }
    let mut unknown = request(&sale, "u", 1, "");
    unknown.sale_id = "no-such-sale".into();
    assert!(matches!(
        inventory.reserve(&unknown).await,
        Err(Error::SaleNotFound(_))
    ));
    let mut bad = open_sale(5, 6);
    assert!(
        inventory.load_sale(&bad).await.is_err(),
        "limit above stock"
    );
    bad.per_user_limit = 1;
    bad.sale_id = "has{brace}".into();
    assert!(matches!(
        inventory.load_sale(&bad).await,
        Err(Error::InvalidId(_))
    ));
    assert_consistent(&inventory, &sale.sale_id).await;
}
