//! Drives a flash sale against a running mesh, and audits the invariants afterwards.
//!
//! - [`drive`]: buyers (each with a token) fire purchase attempts with a bounded number in
//!   flight, retrying shed or unavailable attempts with the same idempotency key and reusing
//!   earlier keys on purpose (a client that retries after a lost answer).
//! - [`pay`]: pays a share of the accepted orders through the Orders service, as a payment
//!   provider would.
//! - [`audit`]: once the orders are written, checks what must hold: no oversell, every accepted
//!   purchase exactly one order, no order for a refused purchase, the per-user limit, and Redis
//!   agreeing with Postgres.
//!
//! `flashsale up`, the end-to-end tests and `flashsale bench` all use it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use flashsale_gateway::auth::{Signer, bearer};
use flashsale_orders::{OrderStore, entity::orders::Status};
use flashsale_proto::v1::{
    self as pb, flash_sale_client::FlashSaleClient, inventory_client::InventoryClient,
    orders_client::OrdersClient,
};
use flashsale_runtime::status::{reason_of, retry_after_of};
use futures::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::{Code, transport::Channel};

/// How the buyers behave.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Distinct buyers.
    pub users: u32,
    /// Purchase attempts in all.
    pub attempts: u32,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// Units per attempt.
    pub quantity: u32,
    /// Share of attempts that reuse the buyer's previous idempotency key.
    pub duplicate_ratio: f64,
    /// Retries of a shed or unavailable attempt (same key).
    pub retries: u32,
    /// Seed of the buyers' choices.
    pub seed: u64,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            users: 1_000,
            attempts: 5_000,
            concurrency: 64,
            quantity: 1,
            duplicate_ratio: 0.1,
            retries: 3,
            seed: 7,
        }
    }
}

/// A purchase the mesh accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The order id.
    pub order_id: String,
    /// The buyer.
    pub user_id: String,
    /// Units.
    pub quantity: u32,
}

/// What the buyers saw.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Accepted purchases, one per distinct order id.
    pub accepted: Vec<Accepted>,
    /// Answers that repeated an earlier accepted purchase (same key).
    pub duplicates_answered: u64,
    /// Refusals by reason (`SOLD_OUT`, `USER_LIMIT`, `RATE_LIMITED`, ...).
    pub rejected: BTreeMap<String, u64>,
    /// Attempts made (retries not counted).
    pub attempts: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of each attempt (final answer, retries included).
    pub latencies: Vec<Duration>,
}

impl Report {
    /// Accepted purchases per second over the run.
    pub fn accepted_per_second(&self) -> f64 {
        self.accepted.len() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

struct Buyers {
    signer: Signer,
    tokens: Mutex<HashMap<u32, String>>,
}

impl Buyers {
    fn token(&self, user: u32) -> String {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .entry(user)
            .or_insert_with(|| {
                self.signer
                    .token(&user_id(user), false, Duration::from_secs(3600))
            })
            .clone()
    }
}

/// The user id of buyer `n`.
pub fn user_id(n: u32) -> String {
    format!("buyer-{n}")
}

/// What one attempt ended with: the buyer and the accepted purchase, or the refusal's reason.
type Answer = Result<(String, pb::PurchaseAccepted), String>;

/// One attempt's plan.
struct Plan {
    user: u32,
    key: String,
}

/// Fires the scenario's attempts at `target` (the gateway or its sidecar).
pub async fn drive(target: Channel, signer: Signer, sale_id: &str, scenario: &Scenario) -> Report {
    let mut rng = StdRng::seed_from_u64(scenario.seed);
    let mut last_key: HashMap<u32, String> = HashMap::new();
    let plans: Vec<Plan> = (0..scenario.attempts)
        .map(|i| {
            let user = rng.random_range(0..scenario.users.max(1));
            let key = match last_key.get(&user) {
                Some(previous) if rng.random_bool(scenario.duplicate_ratio.clamp(0.0, 1.0)) => {
                    previous.clone()
                }
                _ => format!("attempt-{i}"),
            };
            last_key.insert(user, key.clone());
            Plan { user, key }
        })
        .collect();
    let buyers = Arc::new(Buyers {
        signer,
        tokens: Mutex::new(HashMap::new()),
    });
    let started = Instant::now();
    let answers: Vec<(Duration, Answer)> = futures::stream::iter(plans)
        .map(|plan| {
            let (buyers, target, sale_id) = (buyers.clone(), target.clone(), sale_id.to_owned());
            let (quantity, retries) = (scenario.quantity, scenario.retries);
            async move {
                let begun = Instant::now();
                let answer = attempt(target, &buyers, &sale_id, &plan, quantity, retries).await;
                (begun.elapsed(), answer.map(|a| (user_id(plan.user), a)))
            }
        })
        .buffer_unordered(scenario.concurrency.max(1))
        .collect()
        .await;
    let mut report = Report {
        attempts: u64::from(scenario.attempts),
        elapsed: started.elapsed(),
        ..Report::default()
    };
    let mut seen = HashSet::new();
    for (latency, answer) in answers {
        report.latencies.push(latency);
        match answer {
            Ok((user, accepted)) => {
                if seen.insert(accepted.order_id.clone()) {
                    report.accepted.push(Accepted {
                        order_id: accepted.order_id,
                        user_id: user,
                        quantity: accepted.quantity,
                    });
                } else {
                    report.duplicates_answered += 1;
                }
            }
            Err(reason) => *report.rejected.entry(reason).or_default() += 1,
        }
    }
    report
}

async fn attempt(
    target: Channel,
    buyers: &Buyers,
    sale_id: &str,
    plan: &Plan,
    quantity: u32,
    retries: u32,
) -> Result<pb::PurchaseAccepted, String> {
    let mut client = FlashSaleClient::new(target);
    let mut tries = 0;
    loop {
        let mut request = tonic::Request::new(pb::PurchaseRequest {
            sale_id: sale_id.to_owned(),
            quantity,
            idempotency_key: plan.key.clone(),
            purchase_token: String::new(),
        });
        request
            .metadata_mut()
            .insert("authorization", bearer(&buyers.token(plan.user)));
        if let Ok(value) = sale_id.parse() {
            request.metadata_mut().insert("flashsale-sale-id", value);
        }
        match client.purchase(request).await {
            Ok(response) => return Ok(response.into_inner()),
            Err(status) => {
                let reason = reason_of(&status).unwrap_or_else(|| format!("{:?}", status.code()));
                let retryable = matches!(status.code(), Code::Unavailable)
                    || reason == "OVERLOADED"
                    || (reason == "RATE_LIMITED" && tries == 0);
                if retryable && tries < retries {
                    tries += 1;
                    let pause = retry_after_of(&status)
                        .unwrap_or(Duration::from_millis(20))
                        .min(Duration::from_millis(50));
                    tokio::time::sleep(pause).await;
                    continue;
                }
                return Err(reason);
            }
        }
    }
}

/// Pays `share` of the accepted orders (once each is persisted and ready); returns the ids paid.
pub async fn pay(
    orders: Channel,
    accepted: &[Accepted],
    share: f64,
    seed: u64,
    patience: Duration,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let chosen: Vec<&Accepted> = accepted
        .iter()
        .filter(|_| rng.random_bool(share.clamp(0.0, 1.0)))
        .collect();
    let paid: Vec<Option<String>> = futures::stream::iter(chosen)
        .map(|a| {
            let mut client = OrdersClient::new(orders.clone());
            async move {
                let deadline = Instant::now() + patience;
                loop {
                    let result = client
                        .pay(pb::PayRequest {
                            order_id: a.order_id.clone(),
                            user_id: a.user_id.clone(),
                            payment_reference: format!("pay-{}", a.order_id),
                        })
                        .await;
                    match result {
                        Ok(_) => return Some(a.order_id.clone()),
                        // Not written yet, or its stock commit still landing.
                        Err(s)
                            if matches!(s.code(), Code::NotFound | Code::Unavailable)
                                && Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(s) => {
                            tracing::warn!(order_id = %a.order_id, status = %s, "payment refused");
                            return None;
                        }
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    paid.into_iter().flatten().collect()
}

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
/// of `sale` against what the buyers saw.
pub async fn audit(
    sources: &Sources,
    sale: &pb::Sale,
    report: &Report,
    patience: Duration,
) -> Audit {
    let deadline = Instant::now() + patience;
    let expected: HashSet<&str> = report
        .accepted
        .iter()
        .map(|a| a.order_id.as_str())
        .collect();
    let mut rows = Vec::new();
    while Instant::now() < deadline {
        rows = sources
            .store
            .list_orders(
                &flashsale_orders::store::OrderFilter::Sale(sale.sale_id.clone()),
                None,
                u64::MAX >> 1,
                None,
            )
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
    let mut units_by_user: HashMap<&str, u64> = HashMap::new();
    for row in &rows {
        *audit
            .orders_by_status
            .entry(row.status.as_str().to_owned())
            .or_default() += 1;
        *audit
            .units_by_status
            .entry(row.status.as_str().to_owned())
            .or_default() += row.quantity as u64;
        if matches!(row.status, Status::PendingPayment | Status::Paid) {
            *units_by_user.entry(row.user_id.as_str()).or_default() += row.quantity as u64;
        }
    }
    let units = |s: Status| audit.units_by_status.get(s.as_str()).copied().unwrap_or(0);
    let (pending, paid) = (units(Status::PendingPayment), units(Status::Paid));
    let mut check = |name, ok, detail: String| audit.checks.push(Check { name, ok, detail });

    match &stock {
        Some(s) => {
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
        None => check(
            "no oversell (Redis)",
            false,
            "the inventory did not answer".into(),
        ),
    }
    check(
        "no oversell (Postgres)",
        pending + paid <= sale.stock,
        format!("pending {pending} + paid {paid} <= stock {}", sale.stock),
    );
    let present: HashSet<&str> = rows.iter().map(|r| r.order_id.as_str()).collect();
    let missing = expected.iter().filter(|id| !present.contains(*id)).count();
    check(
        "no loss",
        missing == 0,
        format!(
            "{} accepted, {} written, {missing} missing",
            expected.len(),
            rows.len()
        ),
    );
    let unasked = present.iter().filter(|id| !expected.contains(*id)).count();
    check(
        "no order without a purchase",
        unasked == 0 && rows.len() == expected.len(),
        format!("{unasked} orders nobody was told about"),
    );
    let worst = units_by_user.values().copied().max().unwrap_or(0);
    check(
        "per-user limit",
        worst <= u64::from(sale.per_user_limit),
        format!(
            "most units held or bought by one buyer: {worst} (limit {})",
            sale.per_user_limit
        ),
    );
    audit
}
