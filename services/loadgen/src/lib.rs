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

/// How attempts are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// N buyers at a time, each sending the next attempt when the last is answered.
    Closed {
        /// Attempts in flight.
        concurrency: usize,
    },
    /// Attempts sent on a schedule whatever the answers (latency is measured from the intended
    /// send time, so a slow system cannot hide its queueing: no coordinated omission).
    Open {
        /// Mean attempts per second.
        rate: f64,
        /// The schedule's shape.
        arrival: Arrival,
        /// A safety bound on attempts in flight (a late send still counts from its intended
        /// time).
        max_in_flight: usize,
    },
}

/// The shape of an open-loop schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Evenly spaced at the rate.
    Steady,
    /// Everyone at the same instant: the moment a flash sale opens.
    AllAtOnce,
    /// The rate grows linearly from zero to the target over this long, then holds.
    Ramp(Duration),
    /// On/off: within every `every`, all of it arrives in the first `lasting` (same mean rate).
    Bursts {
        /// Period.
        every: Duration,
        /// Burst length within each period.
        lasting: Duration,
    },
}

/// Intended send times (offsets from the start) of `n` attempts.
pub fn schedule(n: u32, rate: f64, arrival: Arrival) -> Vec<Duration> {
    let rate = rate.max(f64::MIN_POSITIVE);
    (0..n)
        .map(|i| {
            let k = f64::from(i);
            let secs = match arrival {
                Arrival::Steady => k / rate,
                Arrival::AllAtOnce => 0.0,
                Arrival::Ramp(ramp) => {
                    let d = ramp.as_secs_f64();
                    let during = rate * d / 2.0;
                    if k < during {
                        (2.0 * k * d / rate).sqrt()
                    } else {
                        d + (k - during) / rate
                    }
                }
                Arrival::Bursts { every, lasting } => {
                    let per_period = rate * every.as_secs_f64();
                    let period = (k / per_period).floor();
                    let within = k - period * per_period;
                    period * every.as_secs_f64() + within / per_period * lasting.as_secs_f64()
                }
            };
            Duration::from_secs_f64(secs)
        })
        .collect()
}

/// One second of a run, by completion time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tick {
    /// Seconds since the start.
    pub second: u32,
    /// Attempts answered in this second.
    pub completed: u64,
    /// Of those, accepted.
    pub accepted: u64,
    /// Of those, refused.
    pub rejected: u64,
    /// Median latency of those answers, microseconds.
    pub p50_us: u64,
    /// 99th percentile latency, microseconds.
    pub p99_us: u64,
}

/// What the buyers saw.
#[derive(Debug, Clone)]
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
    /// Latency of each attempt (final answer, retries included), microseconds, from its
    /// intended send time.
    pub histogram: hdrhistogram::Histogram<u64>,
    /// Per-second figures.
    pub timeline: Vec<Tick>,
    /// When the first SOLD_OUT answer came.
    pub first_sold_out: Option<Duration>,
    /// When the last new purchase was accepted (repeats of earlier ones not counted).
    pub last_accepted: Option<Duration>,
}

impl Report {
    /// Accepted purchases per second over the run.
    pub fn accepted_per_second(&self) -> f64 {
        self.accepted.len() as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Attempts answered per second over the run.
    pub fn attempts_per_second(&self) -> f64 {
        self.attempts as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }

    /// Latency at a quantile.
    pub fn latency(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.histogram.value_at_quantile(quantile))
    }
}

fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
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

fn plans(scenario: &Scenario) -> Vec<Plan> {
    let mut rng = StdRng::seed_from_u64(scenario.seed);
    let mut last_key: HashMap<u32, String> = HashMap::new();
    (0..scenario.attempts)
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
        .collect()
}

/// Fires the scenario's attempts at `target` (the gateway or its sidecar), closed-loop with the
/// scenario's concurrency.
pub async fn drive(target: Channel, signer: Signer, sale_id: &str, scenario: &Scenario) -> Report {
    run(
        target,
        signer,
        sale_id,
        scenario,
        Load::Closed {
            concurrency: scenario.concurrency,
        },
        None,
    )
    .await
}

/// Fires the scenario's attempts with the given load; `progress` counts answers as they come.
pub async fn run(
    target: Channel,
    signer: Signer,
    sale_id: &str,
    scenario: &Scenario,
    load: Load,
    progress: Option<Arc<std::sync::atomic::AtomicU64>>,
) -> Report {
    let plans = plans(scenario);
    let buyers = Arc::new(Buyers {
        signer,
        tokens: Mutex::new(HashMap::new()),
    });
    let started = Instant::now();
    let (quantity, retries) = (scenario.quantity, scenario.retries);
    // (completed at, latency, answer)
    let one = {
        let (buyers, target, sale_id) = (buyers.clone(), target.clone(), sale_id.to_owned());
        let progress = progress.clone();
        move |plan: Plan, intended: Instant| {
            let (buyers, target, sale_id, progress) = (
                buyers.clone(),
                target.clone(),
                sale_id.clone(),
                progress.clone(),
            );
            async move {
                let answer = attempt(target, &buyers, &sale_id, &plan, quantity, retries).await;
                let done = Instant::now();
                if let Some(p) = &progress {
                    p.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                (
                    done - started,
                    done - intended,
                    answer.map(|a| (user_id(plan.user), a)),
                )
            }
        }
    };
    let answers: Vec<(Duration, Duration, Answer)> = match load {
        Load::Closed { concurrency } => {
            futures::stream::iter(plans)
                .map(|plan| one(plan, Instant::now()))
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await
        }
        Load::Open {
            rate,
            arrival,
            max_in_flight,
        } => {
            let times = schedule(scenario.attempts, rate, arrival);
            let gate = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
            let mut tasks = tokio::task::JoinSet::new();
            for (plan, at) in plans.into_iter().zip(times) {
                let intended = started + at;
                tokio::time::sleep_until(intended.into()).await;
                let permit = gate
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore never closes");
                let task = one(plan, intended);
                tasks.spawn(async move {
                    let result = task.await;
                    drop(permit);
                    result
                });
            }
            let mut answers = Vec::with_capacity(scenario.attempts as usize);
            while let Some(result) = tasks.join_next().await {
                if let Ok(answer) = result {
                    answers.push(answer);
                }
            }
            answers
        }
    };

    let mut report = Report {
        accepted: Vec::new(),
        duplicates_answered: 0,
        rejected: BTreeMap::new(),
        attempts: u64::from(scenario.attempts),
        elapsed: started.elapsed(),
        histogram: histogram(),
        timeline: Vec::new(),
        first_sold_out: None,
        last_accepted: None,
    };
    let mut seconds: BTreeMap<u32, (Tick, hdrhistogram::Histogram<u64>)> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (at, latency, answer) in answers {
        let micros = (latency.as_micros() as u64).clamp(1, 120_000_000);
        report.histogram.saturating_record(micros);
        let second = at.as_secs() as u32;
        let (tick, hist) = seconds.entry(second).or_insert_with(|| {
            (
                Tick {
                    second,
                    ..Tick::default()
                },
                histogram(),
            )
        });
        tick.completed += 1;
        hist.saturating_record(micros);
        match answer {
            Ok((user, accepted)) => {
                tick.accepted += 1;
                if seen.insert(accepted.order_id.clone()) {
                    report.last_accepted = report.last_accepted.max(Some(at));
                    report.accepted.push(Accepted {
                        order_id: accepted.order_id,
                        user_id: user,
                        quantity: accepted.quantity,
                    });
                } else {
                    report.duplicates_answered += 1;
                }
            }
            Err(reason) => {
                tick.rejected += 1;
                if reason == "SOLD_OUT" {
                    report.first_sold_out = Some(report.first_sold_out.map_or(at, |f| f.min(at)));
                }
                *report.rejected.entry(reason).or_default() += 1;
            }
        }
    }
    report.timeline = seconds
        .into_values()
        .map(|(mut tick, hist)| {
            tick.p50_us = hist.value_at_quantile(0.5);
            tick.p99_us = hist.value_at_quantile(0.99);
            tick
        })
        .collect();
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
