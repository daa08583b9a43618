//! The purchase protocol checked exhaustively: the current protocol keeps every property under
//! every fault; the original one loses an accepted order (finding 1), and more.

use flashsale_model::repair::RepairRule;
use flashsale_model::{Action, Protocol, PurchaseModel};
use stateright::{Checker, HasDiscoveries, Model};

const SAFETY: [&str; 6] = [
    "no oversell",
    "an accepted purchase keeps its unit",
    "an accepted purchase becomes its order",
    "a key keeps its answer",
    "per-user limit",
    "a paid order owns its unit",
];

fn check(model: PurchaseModel) -> impl Checker<PurchaseModel> {
    model.checker().threads(2).spawn_bfs().join()
}

/// One thread: the same counterexample every run (the one printed in the docs and notes).
fn check_alone(model: PurchaseModel) -> impl Checker<PurchaseModel> {
    model.checker().threads(1).spawn_bfs().join()
}

/// The discovered path cut at the first state where `property` fails (the checker reports the
/// last violating state it met, which may be deep past the first).
fn first_violation(
    model: &PurchaseModel,
    property: &str,
    path: stateright::Path<flashsale_model::State, Action>,
) -> Vec<Action> {
    let condition = model
        .properties()
        .into_iter()
        .find(|p| p.name == property)
        .expect("a property of the model")
        .condition;
    let mut actions = Vec::new();
    for (state, action) in path.into_vec() {
        if !condition(model, &state) {
            break;
        }
        actions.extend(action);
    }
    actions
}

fn trace(actions: Vec<Action>) -> String {
    actions
        .iter()
        .enumerate()
        .map(|(i, a)| format!("  {}. {a}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_current_protocol_keeps_every_property_under_every_fault() {
    let checker = check(PurchaseModel::new(Protocol::Current, true));
    println!(
        "current protocol: {} states ({} unique), depth {}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth()
    );
    for property in SAFETY {
        if let Some(path) = checker.discovery(property) {
            let model = PurchaseModel::new(Protocol::Current, true);
            panic!(
                "{property} fails:\n{}",
                trace(first_violation(&model, property, path))
            );
        }
    }
    // Not vacuous: the happy paths are reachable.
    for example in [
        "a purchase is accepted and paid",
        "a retry gets the original answer",
    ] {
        assert!(
            checker.discovery(example).is_some(),
            "{example} never happens"
        );
    }
    assert!(checker.unique_state_count() > 10_000, "the model explores");
}

#[test]
fn the_original_protocol_loses_an_accepted_order_to_a_retry_finding_1() {
    // Holds never pass here, so what the checker finds is the retry alone.
    let model = PurchaseModel::new(Protocol::Original, false);
    let checker = check_alone(model.clone());
    let path = checker
        .discovery("an accepted purchase keeps its unit")
        .expect("the checker finds finding 1");
    let actions = first_violation(&model, "an accepted purchase keeps its unit", path);
    println!(
        "finding 1, found in {} unique states:\n{}",
        checker.unique_state_count(),
        trace(actions.clone())
    );
    let compensations: Vec<u8> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Compensate { req } => Some(*req),
            _ => None,
        })
        .collect();
    assert!(!compensations.is_empty(), "a compensation freed the unit");
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Publish { req, .. } if !compensations.contains(req))),
        "another attempt with the key published first"
    );
}

#[test]
fn the_original_protocol_also_fails_long_outages_and_retries_at_the_sell_out() {
    let model = PurchaseModel::new(Protocol::Original, true);
    let checker = check_alone(model.clone());
    let keeps = "an accepted purchase keeps its unit";
    let lost = first_violation(&model, keeps, checker.discovery(keeps).expect("found"));
    println!("a loss with holds passing:\n{}", trace(lost));
    let agree = "a key keeps its answer";
    let answer = first_violation(&model, agree, checker.discovery(agree).expect("found too"));
    println!(
        "a retry told otherwise (finding 11):\n{}",
        trace(answer.clone())
    );
    assert!(
        answer
            .iter()
            .any(|a| matches!(a, Action::Arrive { req: 1, .. }))
    );
}

/// The repair's checks: the sale ends, Redis may restart empty, `Reconcile --repair` races
/// every other step; any one fault per run.
#[test]
fn the_repair_keeps_every_property_under_any_one_fault() {
    let model = PurchaseModel::with_repair(RepairRule::Current, 1);
    let checker = check(model.clone());
    println!(
        "current repair, one fault: {} states ({} unique), depth {}",
        checker.state_count(),
        checker.unique_state_count(),
        checker.max_depth()
    );
    for property in SAFETY {
        if let Some(path) = checker.discovery(property) {
            panic!(
                "{property} fails:\n{}",
                trace(first_violation(&model, property, path))
            );
        }
    }
    assert!(
        checker
            .discovery("a purchase is accepted and paid")
            .is_some()
    );
    assert!(checker.unique_state_count() > 100_000, "the model explores");
}

#[test]
fn the_original_repair_loses_accepted_orders_and_their_keys() {
    let model = PurchaseModel::with_repair(RepairRule::Original, 1);
    let found = [
        "an accepted purchase keeps its unit",
        "a key keeps its answer",
    ];
    let checker = model
        .clone()
        .checker()
        .threads(1)
        .finish_when(HasDiscoveries::AllOf(found.into()))
        .spawn_bfs()
        .join();
    for property in found {
        let path = checker.discovery(property).expect("the checker finds it");
        let actions = first_violation(&model, property, path);
        println!(
            "original repair, {property} fails:\n{}",
            trace(actions.clone())
        );
        assert!(actions.contains(&Action::Rebuild), "a rebuild did it");
    }
}

/// RELIABILITY.md's double fault: a hold passed (an outage) and its late event waits beside an
/// accepted one when Redis restarts empty; nothing says which of the two the buyer was told
/// was accepted, and the rebuild admits the older.
#[test]
fn a_double_fault_can_still_lose_an_accepted_order_when_redis_restarts_empty() {
    let model = PurchaseModel::with_repair(RepairRule::Current, 2);
    let keeps = "an accepted purchase keeps its unit";
    let checker = model
        .clone()
        .checker()
        .threads(1)
        .finish_when(HasDiscoveries::AnyOf([keeps].into()))
        .spawn_bfs()
        .join();
    let actions = first_violation(&model, keeps, checker.discovery(keeps).expect("found"));
    println!(
        "two faults, found in {} unique states:\n{}",
        checker.unique_state_count(),
        trace(actions.clone())
    );
    assert!(actions.contains(&Action::LoseRedis));
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Expire { .. } | Action::Publish { .. }))
    );
}
