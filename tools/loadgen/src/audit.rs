//! The invariants checked once a run's orders are written.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use flashsale_orders::{OrderStore, entity::orders::Status};
use flashsale_proto::v1::{self as pb, inventory_client::InventoryClient};
use tonic::transport::Channel;

use crate::{Outcome, Report, Verdict, fair_admission};

/// One invariant and whether it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// True when it held.
    pub ok: bool,
    /// The figures behind it.
    pub detail: String,
}

/// The audit of one sale after a run.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    /// Every check.
    pub checks: Vec<Check>,
    /// Redis's figures.
    pub stock: Option<pb::StockLevel>,
    /// Orders in Postgres by status.
    pub orders_by_status: BTreeMap<String, u64>,
    /// Units in Postgres by status.
    pub units_by_status: BTreeMap<String, u64>,
}

impl Audit {
    /// True when every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    /// One line per check.
    pub fn lines(&self) -> Vec<String> {
        self.checks
            .iter()
            .map(|c| {
                format!(
                    "{} {:<28} {}",
                    if c.ok { "PASS" } else { "FAIL" },
                    c.name,
                    c.detail
                )
            })
            .collect()
    }
}

/// Where the audit reads from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Postgres.
    pub store: OrderStore,
    /// The inventory service.
    pub inventory: Channel,
}

/// Waits (up to `patience`) until every accepted order is written, then checks the invariants
/// of `sale` against what the buyers saw: every accepted purchase is an order and there is no
/// other order.
pub async fn audit(
    sources: &Sources,
    sale: &pb::Sale,
    report: &Report,
    patience: Duration,
) -> Audit {
    audit_with(sources, sale, report, patience, false).await
}

/// [`audit`] for a run with faults, where some buyers could not learn their attempt's fate:
/// every accepted purchase is exactly one order, a refused one none, an attempt whose answer
/// was lost (broken connection, timeout) at most one, and no order exists that no attempt asked
/// for. Call it once the order stream has drained.
pub async fn audit_under_faults(
    sources: &Sources,
    sale: &pb::Sale,
    report: &Report,
    patience: Duration,
) -> Audit {
    audit_with(sources, sale, report, patience, true).await
}

async fn audit_with(
    sources: &Sources,
    sale: &pb::Sale,
    report: &Report,
    patience: Duration,
    faults: bool,
) -> Audit {
    let expected: HashSet<&str> = report
        .accepted
        .iter()
        .map(|a| a.order_id.as_str())
        .collect();
    let rows = written_orders(sources, &sale.sale_id, &expected, patience).await;
    let stock = InventoryClient::new(sources.inventory.clone())
        .get_stock(pb::GetStockRequest {
            sale_id: sale.sale_id.clone(),
        })
        .await
        .map(tonic::Response::into_inner)
        .ok();
    let mut audit = Audit {
        stock: stock.clone(),
        ..Audit::default()
    };
    let worst = count_orders(&mut audit, &rows);
    let units = |s: Status| audit.units_by_status.get(s.as_str()).copied().unwrap_or(0);
    let (pending, paid) = (units(Status::PendingPayment), units(Status::Paid));
    let mut check = |name, ok, detail: String| audit.checks.push(Check { name, ok, detail });
    stock_checks(&mut check, stock.as_ref(), pending, paid);
    check(
        "no oversell (Postgres)",
        pending + paid <= sale.stock,
        format!("pending {pending} + paid {paid} <= stock {}", sale.stock),
    );
    check(
        "per-user limit",
        worst <= u64::from(sale.per_user_limit),
        format!(
            "most units held or bought by one buyer: {worst} (limit {})",
            sale.per_user_limit
        ),
    );
    if !report.queue.is_empty() {
        let (ok, detail) = fair_admission(&report.queue);
        check("fair admission", ok, detail);
    }
    let (ok, detail) = key_agreement(&report.outcomes);
    check("a key keeps its answer", ok, detail);
    if faults {
        for (name, ok, detail) in attempt_checks(&report.outcomes, &rows) {
            check(name, ok, detail);
        }
        return audit;
    }
    let present: HashSet<&str> = rows.iter().map(|r| r.order_id.as_str()).collect();
    let missing = expected.iter().filter(|id| !present.contains(*id)).count();
    let written = rows.len();
    check(
        "no loss",
        missing == 0,
        format!(
            "{} accepted, {written} written, {missing} missing",
            expected.len()
        ),
    );
    let unasked = present.iter().filter(|id| !expected.contains(*id)).count();
    check(
        "no order without a purchase",
        unasked == 0 && written == expected.len(),
        format!("{unasked} orders nobody was told about"),
    );
    audit
}

/// The sale's orders once every `expected` one is written and settled with the inventory, or
/// as they are when `patience` runs out.
async fn written_orders(
    sources: &Sources,
    sale_id: &str,
    expected: &HashSet<&str>,
    patience: Duration,
) -> Vec<flashsale_orders::entity::orders::Model> {
    let deadline = Instant::now() + patience;
    let filter = flashsale_orders::store::OrderFilter::Sale(sale_id.to_owned());
    let mut rows = Vec::new();
    while Instant::now() < deadline {
        rows = sources
            .store
            .list_orders(&filter, None, u64::MAX >> 1, None)
            .await
            .unwrap_or_default();
        let present: HashSet<&str> = rows.iter().map(|r| r.order_id.as_str()).collect();
        let written = expected.iter().all(|id| present.contains(id));
        let settled = rows.iter().all(|r| r.inventory_pending.is_none());
        if written && settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rows
}

/// Counts orders and units by status; returns the most units one buyer holds or bought.
fn count_orders(audit: &mut Audit, rows: &[flashsale_orders::entity::orders::Model]) -> u64 {
    let mut units_by_user: HashMap<&str, u64> = HashMap::new();
    for row in rows {
        let status = row.status.as_str().to_owned();
        *audit.orders_by_status.entry(status.clone()).or_default() += 1;
        *audit.units_by_status.entry(status).or_default() += row.quantity as u64;
        if matches!(row.status, Status::PendingPayment | Status::Paid) {
            *units_by_user.entry(row.user_id.as_str()).or_default() += row.quantity as u64;
        }
    }
    units_by_user.values().copied().max().unwrap_or(0)
}

/// Redis's own invariant, and Redis agreeing with Postgres.
fn stock_checks(
    check: &mut impl FnMut(&'static str, bool, String),
    stock: Option<&pb::StockLevel>,
    pending: u64,
    paid: u64,
) {
    let Some(s) = stock else {
        check(
            "no oversell (Redis)",
            false,
            "the inventory did not answer".into(),
        );
        return;
    };
    check(
        "no oversell (Redis)",
        s.held + s.sold <= s.total && s.available + s.held + s.sold == s.total,
        format!(
            "available {} + held {} + sold {} = total {}",
            s.available, s.held, s.sold, s.total
        ),
    );
    check(
        "Redis agrees with Postgres",
        s.sold == paid && s.held == pending,
        format!(
            "Redis held {} sold {}; Postgres pending {} paid {}",
            s.held, s.sold, pending, paid
        ),
    );
}

/// Every answer to an idempotency key agrees with its first accepted answer: the same order,
/// never a refusal of the purchase afterwards (shedding that only says "not now", rate limits
/// and overload, is allowed, and so is an answer lost on the way).
/// A buyer and an idempotency key.
type KeyOf<'a> = (&'a str, &'a str);

fn key_agreement(outcomes: &[Outcome]) -> (bool, String) {
    let mut first: HashMap<KeyOf<'_>, &str> = HashMap::new();
    let mut disagreed: Vec<(KeyOf<'_>, &Outcome)> = Vec::new();
    for outcome in outcomes.iter().filter(|o| !o.idempotency_key.is_empty()) {
        let key = (outcome.user_id.as_str(), outcome.idempotency_key.as_str());
        let contradicts = match (&outcome.answer, first.get(&key)) {
            (Ok(order), None) => {
                first.insert(key, order.as_str());
                false
            }
            (Ok(order), Some(original)) => order != original,
            (Err(reason), Some(_)) => {
                Outcome::refusal(reason)
                    && !matches!(reason.as_str(), "RATE_LIMITED" | "OVERLOADED")
            }
            (Err(_), None) => false,
        };
        if contradicts {
            disagreed.push((key, outcome));
        }
    }
    let detail = match disagreed.first() {
        None => format!(
            "{} accepted keys: every later answer the same order",
            first.len()
        ),
        Some(((user, key), outcome)) => format!(
            "{} answers contradicted their key's accepted order (first: user {user}, key {key}: accepted {}, then {:?})",
            disagreed.len(),
            first[&(*user, *key)],
            outcome.answer
        ),
    };
    (disagreed.is_empty(), detail)
}

/// The per-attempt checks of [`audit_under_faults`]: each key's orders against what its
/// attempts were told.
fn attempt_checks(
    outcomes: &[Outcome],
    rows: &[flashsale_orders::entity::orders::Model],
) -> Vec<(&'static str, bool, String)> {
    // A key's verdict: accepted if any attempt with it was, else unknown if any was, else refused.
    let mut keys: HashMap<(&str, &str), (Verdict, Option<&str>)> = HashMap::new();
    for outcome in outcomes {
        let key = (outcome.user_id.as_str(), outcome.idempotency_key.as_str());
        let verdict = outcome.verdict();
        let entry = keys.entry(key).or_insert((Verdict::Refused, None));
        match verdict {
            Verdict::Accepted => {
                entry.0 = Verdict::Accepted;
                entry.1 = outcome.answer.as_deref().ok();
            }
            Verdict::Unknown if entry.0 != Verdict::Accepted => entry.0 = Verdict::Unknown,
            _ => {}
        }
    }
    let mut orders: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    for row in rows {
        orders
            .entry((row.user_id.as_str(), row.idempotency_key.as_str()))
            .or_default()
            .push(row.order_id.as_str());
    }
    let (mut accepted, mut refused, mut unknown) = (0, 0, 0);
    let (mut lost, mut wrong, mut refused_with_order, mut unknown_twice) = (0, 0, 0, 0);
    let mut unknown_with_order = 0;
    for (key, (verdict, answered)) in &keys {
        let found = orders.get(key).map(Vec::as_slice).unwrap_or_default();
        match verdict {
            Verdict::Accepted => {
                accepted += 1;
                match found {
                    [] => lost += 1,
                    [one] if Some(*one) == *answered => {}
                    _ => wrong += 1,
                }
            }
            Verdict::Refused => {
                refused += 1;
                if !found.is_empty() {
                    refused_with_order += 1;
                }
            }
            Verdict::Unknown => {
                unknown += 1;
                match found.len() {
                    0 => {}
                    1 => unknown_with_order += 1,
                    _ => unknown_twice += 1,
                }
            }
        }
    }
    let unasked = orders.keys().filter(|k| !keys.contains_key(*k)).count();
    vec![
        (
            "every accepted purchase is one order",
            lost == 0 && wrong == 0,
            format!("{accepted} accepted: {lost} without an order, {wrong} with another or more"),
        ),
        (
            "no order for a refused purchase",
            refused_with_order == 0,
            format!("{refused} refused: {refused_with_order} with an order"),
        ),
        (
            "at most one order per unanswered",
            unknown_twice == 0,
            format!(
                "{unknown} unanswered: {unknown_with_order} became an order, {unknown_twice} more than one"
            ),
        ),
        (
            "no order nobody asked for",
            unasked == 0,
            format!("{unasked} orders with a key no attempt carried"),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use flashsale_orders::entity::orders::{Model, Status};

    use super::*;

    fn outcome(user: &str, key: &str, answer: Result<&str, &str>) -> Outcome {
        Outcome {
            uncertain: false,
            user_id: user.into(),
            idempotency_key: key.into(),
            answer: answer.map(str::to_owned).map_err(str::to_owned),
        }
    }

    fn order(id: &str, user: &str, key: &str) -> Model {
        let now = std::time::SystemTime::now().into();
        Model {
            order_id: id.into(),
            sale_id: "sale".into(),
            user_id: user.into(),
            quantity: 1,
            amount_minor: 100,
            currency: "EUR".into(),
            status: Status::PendingPayment,
            status_reason: None,
            idempotency_key: key.into(),
            created_at: now,
            pay_deadline: now,
            paid_at: None,
            payment_reference: None,
            updated_at: now,
            persisted_at: now,
            inventory_pending: None,
            inventory_attempt_at: None,
        }
    }

    fn failed(outcomes: &[Outcome], rows: &[Model]) -> Vec<&'static str> {
        attempt_checks(outcomes, rows)
            .into_iter()
            .filter(|(_, ok, _)| !ok)
            .map(|(name, _, _)| name)
            .collect()
    }

    #[test]
    fn a_key_must_keep_its_accepted_answer() {
        let agrees = |outcomes: &[Outcome]| key_agreement(outcomes).0;
        assert!(agrees(&[
            outcome("a", "1", Err("UNAVAILABLE")),
            outcome("a", "1", Ok("o1")),
            outcome("a", "1", Err("RATE_LIMITED")),
            outcome("a", "1", Err("UNAVAILABLE")),
            outcome("a", "1", Ok("o1")),
            outcome("b", "", Ok("o2")),
            outcome("b", "", Err("SOLD_OUT")),
        ]));
        assert!(!agrees(&[
            outcome("a", "1", Ok("o1")),
            outcome("a", "1", Err("SOLD_OUT"))
        ]));
        assert!(!agrees(&[
            outcome("a", "1", Ok("o1")),
            outcome("a", "1", Ok("o2"))
        ]));
    }

    #[test]
    fn verdicts_follow_what_the_buyer_could_know() {
        assert_eq!(outcome("u", "k", Ok("o")).verdict(), Verdict::Accepted);
        for refused in ["SOLD_OUT", "USER_LIMIT", "RATE_LIMITED", "SALE_NOT_ACTIVE"] {
            assert_eq!(outcome("u", "k", Err(refused)).verdict(), Verdict::Refused);
        }
        for unknown in [
            "UNAVAILABLE",
            "DEADLINE_EXCEEDED",
            "PUBLISH_FAILED",
            "transport",
        ] {
            assert_eq!(outcome("u", "k", Err(unknown)).verdict(), Verdict::Unknown);
        }
        // Refused on a retry after a try nobody answered: that try's fate is still unknown.
        let after_unanswered = Outcome {
            uncertain: true,
            ..outcome("u", "k", Err("SOLD_OUT"))
        };
        assert_eq!(after_unanswered.verdict(), Verdict::Unknown);
    }

    #[test]
    fn a_clean_history_passes_every_check() {
        let outcomes = [
            outcome("a", "1", Ok("o1")),
            // A retry with the same key answered the same order.
            outcome("a", "1", Ok("o1")),
            outcome("b", "2", Err("SOLD_OUT")),
            // Unanswered: both endings are allowed.
            outcome("c", "3", Err("UNAVAILABLE")),
            outcome("d", "4", Err("DEADLINE_EXCEEDED")),
            // Answered after an earlier unanswered try: the key counts as accepted.
            outcome("e", "5", Err("UNAVAILABLE")),
            outcome("e", "5", Ok("o5")),
        ];
        let rows = [
            order("o1", "a", "1"),
            order("o3", "c", "3"),
            order("o5", "e", "5"),
        ];
        assert_eq!(failed(&outcomes, &rows), Vec::<&str>::new());
        let checks = attempt_checks(&outcomes, &rows);
        assert!(
            checks[2].2.starts_with("2 unanswered: 1 became an order"),
            "{checks:?}"
        );
    }

    #[test]
    fn each_kind_of_violation_is_caught() {
        let accepted = [outcome("a", "1", Ok("o1"))];
        // Lost: accepted, no order.
        assert_eq!(
            failed(&accepted, &[]),
            ["every accepted purchase is one order"]
        );
        // Another order than the one answered, or two.
        assert_eq!(
            failed(&accepted, &[order("o9", "a", "1")]),
            ["every accepted purchase is one order"]
        );
        assert_eq!(
            failed(&accepted, &[order("o1", "a", "1"), order("o2", "a", "1")]),
            ["every accepted purchase is one order"]
        );
        // An order for a refused purchase.
        assert_eq!(
            failed(
                &[outcome("b", "2", Err("SOLD_OUT"))],
                &[order("o2", "b", "2")]
            ),
            ["no order for a refused purchase"]
        );
        // Two orders for one unanswered attempt.
        assert_eq!(
            failed(
                &[outcome("c", "3", Err("UNAVAILABLE"))],
                &[order("o3", "c", "3"), order("o4", "c", "3")]
            ),
            ["at most one order per unanswered"]
        );
        // An order nobody asked for.
        assert_eq!(
            failed(&accepted, &[order("o1", "a", "1"), order("o7", "z", "7")]),
            ["no order nobody asked for"]
        );
    }
}
