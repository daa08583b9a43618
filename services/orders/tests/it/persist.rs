use std::{collections::HashSet, time::Duration};

use flashsale_inventory::ReservationState;

use crate::{harness, publish_all};

/// 50,000 events of which 10% repeat an earlier id: exactly the distinct ones become rows, none
/// twice, and the stream ends empty. Every order's units end up held in the inventory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_thousand_events_with_duplicates_become_exactly_the_distinct_orders() {
    let h = harness().await;
    let window = Duration::from_secs(900);
    let sale = h.sale(45_000, 1, window).await;
    let users: Vec<String> = (0..45_000).map(|i| format!("user-{i}")).collect();
    let events = h.reserve_many(&sale, &users, window).await;
    // Every tenth publish repeats an earlier event (same message id).
    let mut all = Vec::with_capacity(50_000);
    for (i, event) in events.iter().enumerate() {
        all.push(event.clone());
        if i % 9 == 8 {
            all.push(events[i / 2].clone());
        }
    }
    assert_eq!(all.len(), 50_000);
    let distinct: HashSet<&str> = all.iter().map(|e| e.order_id.as_str()).collect();
    assert_eq!(distinct.len(), 45_000);

    let (stop, task) = h.spawn_consumer();
    publish_all(&h.js, &h.config.stream.subject_prefix, &all, 256).await;
    h.drained(Duration::from_secs(120)).await;

    assert_eq!(
        h.rows(&sale.sale_id).await,
        45_000,
        "exactly the distinct events are rows"
    );
    assert_eq!(h.dead_letters().await, 0);
    // The inventory was told to hold every order (allow the last commits to land).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let audit = h.inventory.audit(&sale.sale_id).await.unwrap();
        audit.check().unwrap();
        let committed = audit
            .reservations
            .iter()
            .filter(|r| r.state == ReservationState::Committed)
            .count();
        if committed == 45_000 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {committed} committed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.trigger();
    task.await.unwrap();
}
