use flashsale_inventory::{
    Error, Outcome, ReleaseReason, Reservation, ReservationState, SalePresence, SaleSpec,
};

use crate::{assert_consistent, inventory, open_sale, request};

async fn reserve(
    inventory: &flashsale_inventory::Inventory,
    sale: &SaleSpec,
    user: &str,
    qty: u32,
) -> Reservation {
    match inventory
        .reserve(&request(sale, user, qty, ""))
        .await
        .unwrap()
        .outcome
    {
        Outcome::Reserved { reservation, .. } => reservation,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn commit_confirm_is_final_and_idempotent() {
    let (_redis, inv) = inventory(None).await;
    let sale = open_sale(10, 5);
    inv.load_sale(&sale).await.unwrap();
    let r = reserve(&inv, &sale, "a", 2).await;
    assert_eq!(r.state, ReservationState::Held);
    assert!(r.expires_at_ms.unwrap() > r.created_at_ms);

    let deadline = flashsale_proto::time::now_ms() + 900_000;
    let c = inv
        .commit(&sale.sale_id, &r.reservation_id, deadline)
        .await
        .unwrap();
    assert!(c.changed);
    assert_eq!(
        (c.reservation.state, c.reservation.expires_at_ms),
        (ReservationState::Committed, Some(deadline))
    );
    assert!(
        !inv.commit(&sale.sale_id, &r.reservation_id, deadline)
            .await
            .unwrap()
            .changed
    );

    let p = inv.confirm(&sale.sale_id, &r.reservation_id).await.unwrap();
    assert!(p.changed);
    assert_eq!(p.reservation.state, ReservationState::Confirmed);
    assert!(
        !inv.confirm(&sale.sale_id, &r.reservation_id)
            .await
            .unwrap()
            .changed
    );

    let refused = inv
        .release(&sale.sale_id, &r.reservation_id, ReleaseReason::Cancelled)
        .await;
    match refused {
        Err(e @ Error::Refused { .. }) => {
            assert_eq!(
                flashsale_runtime::IntoStatus::reason(&e),
                "RESERVATION_CONFIRMED"
            );
            assert_eq!(
                flashsale_runtime::IntoStatus::code(&e),
                tonic::Code::FailedPrecondition
            );
        }
        other => panic!("releasing a confirmed reservation must be refused: {other:?}"),
    }
    let stock = assert_consistent(&inv, &sale.sale_id).await.stock;
    assert_eq!((stock.available, stock.held, stock.sold), (8, 0, 2));
}

#[tokio::test]
async fn release_returns_units_exactly_once() {
    let (_redis, inv) = inventory(None).await;
    let sale = open_sale(3, 3);
    inv.load_sale(&sale).await.unwrap();
    let r = reserve(&inv, &sale, "a", 3).await;
    assert_eq!(inv.stock(&sale.sale_id).await.unwrap().available, 0);

    let releases =
        (0..8).map(|_| inv.release(&sale.sale_id, &r.reservation_id, ReleaseReason::Cancelled));
    let results = futures::future::join_all(releases).await;
    let changed = results
        .iter()
        .filter(|r| r.as_ref().unwrap().changed)
        .count();
    assert_eq!(changed, 1, "eight concurrent releases, one transition");
    let stock = assert_consistent(&inv, &sale.sale_id).await.stock;
    assert_eq!(stock.available, 3);

    // The buyer's allowance came back too.
    reserve(&inv, &sale, "a", 3).await;

    match inv.confirm(&sale.sale_id, &r.reservation_id).await {
        Err(e @ Error::Refused { .. }) => {
            assert_eq!(
                flashsale_runtime::IntoStatus::reason(&e),
                "RESERVATION_RELEASED"
            )
        }
        other => panic!("confirming a released reservation must be refused: {other:?}"),
    }
    assert!(
        matches!(
            inv.commit(
                &sale.sale_id,
                &r.reservation_id,
                flashsale_proto::time::now_ms() + 1000
            )
            .await,
            Err(Error::Refused { .. })
        ),
        "a cancelled reservation is never revived"
    );
    assert!(matches!(
        inv.release(&sale.sale_id, "no-such-id", ReleaseReason::Admin)
            .await,
        Err(Error::ReservationNotFound { .. })
    ));
    assert_consistent(&inv, &sale.sale_id).await;
}

#[tokio::test]
async fn commit_revives_an_expired_reservation_only_when_stock_allows() {
    let (_redis, inv) = inventory(None).await;
    let sale = open_sale(3, 1);
    inv.load_sale(&sale).await.unwrap();
    let late = reserve(&inv, &sale, "late", 1).await;
    // The hold passed before the order was persisted (the sweeper released it).
    inv.release(
        &sale.sale_id,
        &late.reservation_id,
        ReleaseReason::ReservationExpired,
    )
    .await
    .unwrap();

    let deadline = flashsale_proto::time::now_ms() + 60_000;
    let revived = inv
        .commit(&sale.sale_id, &late.reservation_id, deadline)
        .await
        .unwrap();
    assert!(revived.changed);
    assert_eq!(revived.reservation.state, ReservationState::Committed);
    assert_consistent(&inv, &sale.sale_id).await;

    // Once more, but this time the unit went to someone else in between.
    let other = reserve(&inv, &sale, "other", 1).await;
    let later = reserve(&inv, &sale, "later", 1).await;

    inv.release(
        &sale.sale_id,
        &later.reservation_id,
        ReleaseReason::ReservationExpired,
    )
    .await
    .unwrap();
    reserve(&inv, &sale, "third", 1).await;
    match inv
        .commit(&sale.sale_id, &later.reservation_id, deadline)
        .await
    {
        Err(e @ Error::Refused { .. }) => {
            assert_eq!(
                flashsale_runtime::IntoStatus::reason(&e),
                "RESERVATION_EXPIRED"
            )
        }
        other => panic!("no stock to revive with: {other:?}"),
    }
    let stock = assert_consistent(&inv, &sale.sale_id).await.stock;
    assert_eq!(
        (stock.available, stock.held),
        (0, 3),
        "no oversell: {other:?}"
    );
}

#[tokio::test]
async fn a_release_for_a_dead_order_closes_an_expired_reservation_for_good() {
    let (_redis, inv) = inventory(None).await;
    let sale = open_sale(2, 1);
    inv.load_sale(&sale).await.unwrap();
    let lost = reserve(&inv, &sale, "lost", 1).await;
    // The hold passed; the order pipeline then gave the order up (its commit was refused) and
    // released it for good while another worker's commit of it was still on the way.
    inv.release(
        &sale.sale_id,
        &lost.reservation_id,
        ReleaseReason::ReservationExpired,
    )
    .await
    .unwrap();
    let unchanged = inv
        .release(
            &sale.sale_id,
            &lost.reservation_id,
            ReleaseReason::PaymentExpired,
        )
        .await
        .unwrap();
    assert!(!unchanged.changed);
    // A late revivable release does not reopen it either.
    inv.release(
        &sale.sale_id,
        &lost.reservation_id,
        ReleaseReason::PublishFailed,
    )
    .await
    .unwrap();

    let deadline = flashsale_proto::time::now_ms() + 60_000;
    assert!(
        matches!(
            inv.commit(&sale.sale_id, &lost.reservation_id, deadline)
                .await,
            Err(Error::Refused { .. })
        ),
        "stock was there, but the order is gone"
    );
    let stock = assert_consistent(&inv, &sale.sale_id).await.stock;
    assert_eq!((stock.available, stock.held), (2, 0));
}

#[tokio::test]
async fn a_late_publish_failure_does_not_release_a_committed_order() {
    let (_redis, inv) = inventory(None).await;
    let sale = open_sale(2, 1);
    inv.load_sale(&sale).await.unwrap();
    let r = reserve(&inv, &sale, "slow-ack", 1).await;
    // The publish went through but its acknowledgement timed out: the order was written and
    // committed before the gateway's compensation arrives.
    let deadline = flashsale_proto::time::now_ms() + 60_000;
    inv.commit(&sale.sale_id, &r.reservation_id, deadline)
        .await
        .unwrap();
    for reason in [
        ReleaseReason::PublishFailed,
        ReleaseReason::ReservationExpired,
    ] {
        let answer = inv
            .release(&sale.sale_id, &r.reservation_id, reason)
            .await
            .unwrap();
        assert!(!answer.changed, "{reason:?}");
        assert_eq!(answer.reservation.state, ReservationState::Committed);
    }
    let stock = assert_consistent(&inv, &sale.sale_id).await.stock;
    assert_eq!((stock.available, stock.held), (1, 1));
    // The order's own release still goes through.
    let cancelled = inv
        .release(&sale.sale_id, &r.reservation_id, ReleaseReason::Cancelled)
        .await
        .unwrap();
    assert!(cancelled.changed);
}

#[tokio::test]
async fn rebuild_restores_a_sale_redis_lost_and_keeps_newer_holds() {
    let (mut redis, inv) = inventory(None).await;
    let sale = open_sale(10, 3);
    inv.load_sale(&sale).await.unwrap();
    let paid = reserve(&inv, &sale, "a", 2).await;
    inv.confirm(&sale.sale_id, &paid.reservation_id)
        .await
        .unwrap();
    let pending = reserve(&inv, &sale, "b", 3).await;
    let deadline = flashsale_proto::time::now_ms() + 60_000;
    let pending = inv
        .commit(&sale.sale_id, &pending.reservation_id, deadline)
        .await
        .unwrap()
        .reservation;
    let paid = inv
        .reservation(&sale.sale_id, &paid.reservation_id)
        .await
        .unwrap();

    // Redis keeps nothing on disk: after a restart the sale is gone.
    redis.restart().await.unwrap();
    assert!(matches!(
        inv.stock(&sale.sale_id).await,
        Err(Error::SaleNotFound(_))
    ));
    assert!(
        matches!(
            inv.reserve(&request(&sale, "c", 1, "")).await,
            Err(Error::SaleNotFound(_))
        ),
        "nothing can be sold until the sale is rebuilt"
    );

    let stock = inv
        .rebuild(
            &sale,
            &[paid.clone(), pending.clone()],
            SalePresence::Missing,
        )
        .await
        .unwrap();
    assert_eq!((stock.available, stock.held, stock.sold), (5, 3, 2));
    // A purchase made after the rebuild (HELD, not in Postgres yet) survives a second rebuild.
    let fresh = reserve(&inv, &sale, "c", 1).await;
    let stock = inv
        .rebuild(
            &sale,
            &[paid.clone(), pending.clone()],
            SalePresence::Present,
        )
        .await
        .unwrap();
    assert_eq!((stock.available, stock.held, stock.sold), (4, 4, 2));
    assert_eq!(
        inv.reservation(&sale.sale_id, &fresh.reservation_id)
            .await
            .unwrap()
            .state,
        ReservationState::Held
    );
    // Per-user counts came back: b holds 3 of a limit of 3.
    assert_eq!(
        inv.reserve(&request(&sale, "b", 1, ""))
            .await
            .unwrap()
            .outcome,
        Outcome::UserLimit
    );
    let audit = assert_consistent(&inv, &sale.sale_id).await;
    assert_eq!(audit.reservations.len(), 3);

    // More units than stock: refused, nothing changed.
    let mut big = pending.clone();
    big.reservation_id = "too-many".into();
    big.quantity = 9;
    assert!(matches!(
        inv.rebuild(&sale, &[paid, pending, big], SalePresence::Present)
            .await,
        Err(Error::Oversold { .. })
    ));
    assert_eq!(inv.stock(&sale.sale_id).await.unwrap().available, 4);
}

/// Found by the model checker (`flashsale-model`, the original repair rule): a repair reads
/// Postgres before an order's commit, the commit goes through, then the rebuild runs from the
/// reading. The rebuild kept only the HELD records it was not given, so the COMMITTED one was
/// dropped and its unit went back on sale under an accepted order. What Redis has and the
/// reading lacks must stay as Redis has it.
#[tokio::test]
async fn model_finding_b_a_rebuild_keeps_what_redis_decided_after_the_reading() {
    let (_redis, inv) = inventory(None).await;
    let sale = open_sale(1, 1);
    inv.load_sale(&sale).await.unwrap();
    let accepted = reserve(&inv, &sale, "alice", 1).await;
    let deadline = flashsale_proto::time::now_ms() + 60_000;
    inv.commit(&sale.sale_id, &accepted.reservation_id, deadline)
        .await
        .unwrap();

    // The repair's reading was taken before the order was written: it gives nothing.
    let stock = inv
        .rebuild(&sale, &[], SalePresence::Present)
        .await
        .unwrap();
    assert_eq!(
        (stock.available, stock.held),
        (0, 1),
        "the committed unit stays with its order: {stock:?}"
    );
    let kept = inv
        .reservation(&sale.sale_id, &accepted.reservation_id)
        .await
        .unwrap();
    assert_eq!(kept.state, ReservationState::Committed);
    assert_consistent(&inv, &sale.sale_id).await;
}

/// A rebuild is made from a reading of Postgres taken while Redis held the sale, or while it did
/// not; if Redis changed in between (it restarted empty, or the sale was rebuilt by another
/// repair), the reading is stale and the rebuild is refused, changing nothing.
#[tokio::test]
async fn a_rebuild_refuses_a_reading_redis_changed_since() {
    let (mut redis, inv) = inventory(None).await;
    let sale = open_sale(3, 1);
    inv.load_sale(&sale).await.unwrap();
    let held = reserve(&inv, &sale, "alice", 1).await;
    let refused = inv.rebuild(&sale, &[], SalePresence::Missing).await;
    assert!(
        matches!(refused, Err(Error::RedisChanged(_))),
        "{refused:?}"
    );
    assert_eq!(inv.stock(&sale.sale_id).await.unwrap().held, 1);
    assert!(
        inv.reservation(&sale.sale_id, &held.reservation_id)
            .await
            .is_ok()
    );

    redis.restart().await.unwrap();
    let refused = inv.rebuild(&sale, &[], SalePresence::Present).await;
    assert!(
        matches!(refused, Err(Error::RedisChanged(_))),
        "{refused:?}"
    );
    assert!(matches!(
        inv.stock(&sale.sale_id).await,
        Err(Error::SaleNotFound(_))
    ));
    assert_eq!(
        tonic::Status::from(refused.unwrap_err()).code(),
        tonic::Code::Aborted
    );
}
