//! Random schedules of reserves (with idempotency-key retries), commits, confirms and releases,
//! run in concurrent waves: the invariants hold at the end of every case.

use std::collections::HashMap;

use flashsale_inventory::{Error, Inventory, Outcome, ReleaseReason, ReservationState};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

use crate::{inventory, open_sale, request};

#[derive(Debug, Clone)]
enum Op {
    Reserve { user: u8, qty: u32, key: Option<u8> },
    Commit(usize),
    Confirm(usize),
    Release(usize, ReleaseReason),
}

fn op() -> impl Strategy<Value = Op> {
    let reason = prop_oneof![
        Just(ReleaseReason::ReservationExpired),
        Just(ReleaseReason::PaymentExpired),
        Just(ReleaseReason::Cancelled),
        Just(ReleaseReason::PublishFailed),
    ];
    prop_oneof![
        5 => (0u8..6, 1u32..4, proptest::option::of(0u8..3))
            .prop_map(|(user, qty, key)| Op::Reserve { user, qty, key }),
        2 => any::<usize>().prop_map(Op::Commit),
        2 => any::<usize>().prop_map(Op::Confirm),
        2 => (any::<usize>(), reason).prop_map(|(i, r)| Op::Release(i, r)),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    stock: u64,
    limit: u32,
    waves: Vec<Vec<Op>>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1u64..15,
        1u32..4,
        prop::collection::vec(prop::collection::vec(op(), 1..8), 1..10),
    )
        .prop_map(|(stock, limit, waves)| Case {
            stock,
            limit: limit.min(stock as u32),
            waves,
        })
}

async fn run_case(inv: &Inventory, case: Case) -> Result<(), String> {
    let sale = open_sale(case.stock, case.limit);
    inv.load_sale(&sale).await.map_err(|e| e.to_string())?;
    let mut ids: Vec<String> = Vec::new();
    let mut first_answer: HashMap<(u8, u8), String> = HashMap::new();

    for wave in case.waves {
        let known = ids.clone();
        let pick = |i: usize| (!known.is_empty()).then(|| known[i % known.len()].clone());
        let calls = wave.into_iter().map(|op| {
            let inv = inv.clone();
            let sale_id = sale.sale_id.clone();
            let sale = sale.clone();
            let target = match &op {
                Op::Commit(i) | Op::Confirm(i) | Op::Release(i, _) => pick(*i),
                Op::Reserve { .. } => None,
            };
            async move {
                match op {
                    Op::Reserve { user, qty, key } => {
                        let key_text = key.map(|k| format!("key{k}")).unwrap_or_default();
                        let r = inv
                            .reserve(&request(&sale, &format!("user{user}"), qty, &key_text))
                            .await;
                        (
                            Some((user, key)),
                            r.map(|r| r.outcome).map_err(|e| e.to_string()),
                        )
                    }
                    Op::Commit(_) | Op::Confirm(_) | Op::Release(..) => {
                        let Some(id) = target else {
                            return (None, Ok(Outcome::NotActive));
                        };
                        let deadline = flashsale_proto::time::now_ms() + 60_000;
                        let result = match op {
                            Op::Commit(_) => inv.commit(&sale_id, &id, deadline).await,
                            Op::Confirm(_) => inv.confirm(&sale_id, &id).await,
                            Op::Release(_, reason) => inv.release(&sale_id, &id, reason).await,
                            Op::Reserve { .. } => unreachable!(),
                        };
                        match result {
                            Ok(_) | Err(Error::Refused { .. }) => (None, Ok(Outcome::NotActive)),
                            Err(e) => (None, Err(e.to_string())),
                        }
                    }
                }
            }
        });
        for (reserve, result) in futures::future::join_all(calls).await {
            let outcome = result?;
            if let (
                Some((user, key)),
                Outcome::Reserved {
                    reservation,
                    duplicate,
                },
            ) = (reserve, &outcome)
            {
                if let Some(key) = key {
                    let first = first_answer
                        .entry((user, key))
                        .or_insert_with(|| reservation.reservation_id.clone());
                    if *first != reservation.reservation_id {
                        return Err(format!(
                            "key{key} of user{user} answered {} then {}",
                            first, reservation.reservation_id
                        ));
                    }
                } else if *duplicate {
                    return Err("a request without a key was answered as a duplicate".into());
                }
                if !ids.contains(&reservation.reservation_id) {
                    ids.push(reservation.reservation_id.clone());
                }
            }
        }
        // The invariant holds after every wave, not only at the end.
        let audit = inv.audit(&sale.sale_id).await.map_err(|e| e.to_string())?;
        audit.check()?;
        if let Some((user, units)) = audit
            .units_by_user
            .iter()
            .find(|(_, u)| **u > u64::from(case.limit))
        {
            return Err(format!("{user} holds {units} > limit {}", case.limit));
        }
        let live: u64 = audit
            .reservations
            .iter()
            .filter(|r| r.state != ReservationState::Released)
            .map(|r| u64::from(r.quantity))
            .sum();
        if live > case.stock {
            return Err(format!("oversold: {live} > {}", case.stock));
        }
    }
    Ok(())
}

#[test]
fn random_interleavings_keep_every_invariant() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (_redis, inv) = rt.block_on(inventory(None));
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| {
        rt.block_on(run_case(&inv, case))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
