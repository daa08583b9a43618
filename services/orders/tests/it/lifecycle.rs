use std::{collections::HashMap, time::Duration};

use flashsale_inventory::ReservationState;
use flashsale_orders::{Error, entity::orders::Status, lifecycle};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

use crate::{Harness, harness, publish_all};

async fn persisted(
    h: &Harness,
    sale: &flashsale_inventory::SaleSpec,
    users: usize,
    window: Duration,
) -> Vec<String> {
    let users: Vec<String> = (0..users).map(|i| format!("u{i}")).collect();
    let events = h.reserve_many(sale, &users, window).await;
    publish_all(&h.js, &h.config.stream.subject_prefix, &events, 64).await;
    let (stop, task) = h.spawn_consumer();
    h.drained(Duration::from_secs(30)).await;
    stop.trigger();
    task.await.unwrap();
    // Wait for the inventory commits (done right after the batch).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let audit = h.inventory.audit(&sale.sale_id).await.unwrap();
        if audit
            .reservations
            .iter()
            .all(|r| r.state == ReservationState::Committed)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "commits did not land"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    events.into_iter().map(|e| e.order_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pay_cancel_and_expiry_move_orders_and_stock() {
    let h = harness().await;
    let window = Duration::from_secs(2);
    let sale = h.sale(3, 1, window).await;
    let ids = persisted(&h, &sale, 3, window).await;
    let store = &h.pipeline.store;

    // u0 pays (twice: the same reference is idempotent, another one is refused).
    let (paid, changed) = store.pay(&ids[0], "u0", "ref-0").await.unwrap();
    assert!(changed && paid.status == Status::Paid);
    h.pipeline.sync_inventory(&paid).await.unwrap();
    assert!(!store.pay(&ids[0], "u0", "ref-0").await.unwrap().1);
    assert!(matches!(
        store.pay(&ids[0], "u0", "other").await,
        Err(Error::Conflict {
            reason: "ORDER_PAID",
            ..
        })
    ));
    // Someone else's order is not found.
    assert!(matches!(
        store.pay(&ids[1], "u0", "ref").await,
        Err(Error::OrderNotFound(_))
    ));

    // u1 cancels.
    let (cancelled, changed) = store.cancel(&ids[1], "u1").await.unwrap();
    assert!(changed && cancelled.status == Status::Cancelled);
    h.pipeline.sync_inventory(&cancelled).await.unwrap();
    assert!(matches!(
        store.pay(&ids[1], "u1", "r").await,
        Err(Error::Conflict {
            reason: "ORDER_CANCELLED",
            ..
        })
    ));

    // u2 never pays: after the deadline the worker expires it.
    tokio::time::sleep(window + Duration::from_millis(200)).await;
    assert!(matches!(
        store.pay(&ids[2], "u2", "late").await,
        Err(Error::Conflict {
            reason: "PAYMENT_DEADLINE_PASSED",
            ..
        })
    ));
    let report = lifecycle::pass(&h.pipeline, 100, lifecycle::RETRY_LEASE)
        .await
        .unwrap();
    assert_eq!(report.expired, 1);
    assert_eq!(store.order(&ids[2]).await.unwrap().status, Status::Expired);
    assert!(matches!(
        store.pay(&ids[2], "u2", "late").await,
        Err(Error::Conflict {
            reason: "ORDER_EXPIRED",
            ..
        })
    ));

    let audit = h.inventory.audit(&sale.sale_id).await.unwrap();
    audit.check().unwrap();
    assert_eq!(
        (audit.stock.available, audit.stock.held, audit.stock.sold),
        (2, 0, 1)
    );
}

/// Pay racing the expiry worker (and a second worker replica) at the deadline: every order ends
/// in exactly one final state, and its stock is released iff it EXPIRED or was CANCELLED.
#[test]
fn pay_racing_expiry_has_exactly_one_winner() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let h = rt.block_on(harness());
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    // For each of 8 orders: pay? cancel? and when, around a 1 s deadline.
    let plan = prop::collection::vec((any::<bool>(), any::<bool>(), 700u64..1300), 8);
    let result = runner.run(&plan, |plan| {
        rt.block_on(race_case(&h, plan))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

async fn race_case(h: &Harness, plan: Vec<(bool, bool, u64)>) -> Result<(), String> {
    let window = Duration::from_secs(1);
    let sale = h.sale(plan.len() as u64, 1, window).await;
    let ids = persisted(h, &sale, plan.len(), window).await;
    let store = &h.pipeline.store;
    let started = tokio::time::Instant::now();

    let buyers = plan.iter().enumerate().map(|(i, &(pay, cancel, at_ms))| {
        let id = ids[i].clone();
        let pipeline = h.pipeline.clone();
        async move {
            tokio::time::sleep_until(started + Duration::from_millis(at_ms)).await;
            let user = format!("u{i}");
            let result = if pay {
                pipeline.store.pay(&id, &user, &format!("ref-{i}")).await
            } else if cancel {
                pipeline.store.cancel(&id, &user).await
            } else {
                return;
            };
            if let Ok((order, true)) = result {
                let _ = pipeline.sync_inventory(&order).await;
            }
        }
    });
    let workers = (0..2).map(|_| {
        let pipeline = h.pipeline.clone();
        async move {
            let until = started + Duration::from_millis(1_600);
            while tokio::time::Instant::now() < until {
                lifecycle::pass(&pipeline, 100, Duration::ZERO)
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });
    tokio::join!(
        futures::future::join_all(buyers),
        futures::future::join_all(workers)
    );
    // Let any deferred inventory action through.
    lifecycle::pass(&h.pipeline, 100, Duration::ZERO)
        .await
        .map_err(|e| e.to_string())?;

    let audit = h
        .inventory
        .audit(&sale.sale_id)
        .await
        .map_err(|e| e.to_string())?;
    audit.check()?;
    let reservations: HashMap<&str, ReservationState> = audit
        .reservations
        .iter()
        .map(|r| (r.reservation_id.as_str(), r.state))
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let order = store.order(id).await.map_err(|e| e.to_string())?;
        if !order.status.is_final() {
            return Err(format!(
                "order {i} still {:?} after its deadline",
                order.status
            ));
        }
        if order.inventory_pending.is_some() {
            return Err(format!(
                "order {i} still has {:?} pending",
                order.inventory_pending
            ));
        }
        let expected = match order.status {
            Status::Paid => ReservationState::Confirmed,
            Status::Expired | Status::Cancelled => ReservationState::Released,
            Status::PendingPayment => unreachable!(),
        };
        if reservations[id.as_str()] != expected {
            return Err(format!(
                "order {i} is {:?} but its reservation is {:?} (plan {:?})",
                order.status,
                reservations[id.as_str()],
                plan[i]
            ));
        }
    }
    Ok(())
}

/// Finding 4: a paid order whose reservation Redis had released (here by an operator, as a
/// repair gone wrong would) must take its units back when it is confirmed, not leave them for
/// sale while only logging the refusal; and when the units are gone the Confirm stays pending
/// instead of being dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_04_a_paid_order_takes_its_units_back_when_its_confirm_is_refused() {
    let h = harness().await;
    let window = Duration::from_secs(600);
    let sale = h.sale(2, 1, window).await;
    let ids = persisted(&h, &sale, 2, window).await;
    let store = &h.pipeline.store;
    for id in &ids {
        h.inventory
            .release(&sale.sale_id, id, flashsale_inventory::ReleaseReason::Admin)
            .await
            .unwrap();
    }
    // One released unit is sold to a stranger meanwhile.
    let stranger = flashsale_inventory::ReserveRequest {
        sale_id: sale.sale_id.clone(),
        user_id: "stranger".into(),
        quantity: 1,
        idempotency_key: String::new(),
    };
    h.inventory.reserve(&stranger).await.unwrap();

    let (first, _) = store.pay(&ids[0], "u0", "ref-0").await.unwrap();
    h.pipeline.sync_inventory(&first).await.unwrap();
    let stock = h.inventory.stock(&sale.sale_id).await.unwrap();
    assert_eq!(
        (stock.available, stock.held, stock.sold),
        (0, 1, 1),
        "the paid unit is taken back, not left for sale"
    );

    // No unit is left for the second paid order: its Confirm stays pending for the lifecycle
    // (and reconciliation) instead of being cleared.
    let (second, _) = store.pay(&ids[1], "u1", "ref-1").await.unwrap();
    h.pipeline.sync_inventory(&second).await.unwrap();
    let row = store.order(&ids[1]).await.unwrap();
    assert_eq!(
        row.inventory_pending,
        Some(flashsale_orders::entity::orders::InventoryAction::Confirm),
        "the refused confirm of a paid order stays pending"
    );
}
