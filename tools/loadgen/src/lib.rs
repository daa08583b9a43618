//! Drives a flash sale against a running mesh, and audits the invariants afterwards.
//!
//! - [`drive`]: buyers (each with a token) fire purchase attempts with a bounded number in
//!   flight, retrying shed or unavailable attempts with the same idempotency key and reusing
//!   earlier keys on purpose (a client that retries after a lost answer).
//! - [`pay`]: pays a share of the accepted orders through the Orders service, as a payment
//!   provider would.
//! - [`audit`]: once the orders are written, checks what must hold: no oversell, every accepted
//!   purchase exactly one order, no order for a refused purchase, the per-user limit, Redis
//!   agreeing with Postgres, and for a sale behind a waiting room, admission in arrival order.
//!
//! For a sale with a waiting room ([`Scenario::waiting_room`]) each buyer joins the line on
//! their first attempt, asks where they stand until admitted, and buys with the purchase
//! token ([`queue`]).
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

pub mod queue;

pub use queue::{QueueVisit, fair_admission};

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
    /// The sale has a waiting room: buyers queue for a purchase token first.
    pub waiting_room: bool,
    /// How long a buyer waits in line for admission before giving up (`QUEUE_TIMEOUT`).
    pub queue_patience: Duration,
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
            waiting_room: false,
            queue_patience: Duration::from_secs(120),
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
    /// Answers the buyers retried (UNAVAILABLE and the like), by reason.
    pub retried: BTreeMap<String, u64>,
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
    /// Every attempt's final answer, in the order they came.
    pub outcomes: Vec<Outcome>,
    /// For a sale with a waiting room: every buyer's visit, by arrival number.
    pub queue: Vec<QueueVisit>,
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
    room: Option<queue::Room>,
    /// Answers that were retried, by reason.
    retried: Mutex<BTreeMap<String, u64>>,
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

/// What one attempt ended with: the buyer, its key, and the accepted purchase or the refusal's
/// reason.
/// (buyer, key, final answer, whether a try before it went unanswered)
type Answer = (String, String, Result<pb::PurchaseAccepted, String>, bool);

/// One attempt as its buyer saw it in the end (after its retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The buyer.
    pub user_id: String,
    /// The idempotency key the attempt (and its retries) carried.
    pub idempotency_key: String,
    /// The order id, or the reason (`SOLD_OUT`, `UNAVAILABLE`, ...).
    pub answer: Result<String, String>,
    /// A try before the final answer could not learn its fate (UNAVAILABLE and the like): a
    /// refusal after it does not say that try left nothing behind (Redis may have lost what
    /// the try did), so the attempt counts as unanswered.
    pub uncertain: bool,
}

/// What an answer tells about whether an order can exist for the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted: exactly one order must exist.
    Accepted,
    /// Refused before anything was reserved or published: no order may exist.
    Refused,
    /// The buyer cannot know (the connection broke, a timeout, a publish that failed after
    /// maybe landing): at most one order may exist.
    Unknown,
}

impl Outcome {
    /// What the answer says about the order.
    pub fn verdict(&self) -> Verdict {
        match &self.answer {
            Ok(_) => Verdict::Accepted,
            Err(reason) if Self::refusal(reason) && !self.uncertain => Verdict::Refused,
            Err(_) => Verdict::Unknown,
        }
    }

    /// Whether a reason is a refusal made before anything was reserved or published.
    pub fn refusal(reason: &str) -> bool {
        matches!(
            reason,
            "SOLD_OUT"
                | "USER_LIMIT"
                | "RATE_LIMITED"
                | "OVERLOADED"
                | "SALE_NOT_ACTIVE"
                | "SALE_NOT_FOUND"
                | "INVALID_ARGUMENT"
                | "UNAUTHENTICATED"
                | "PURCHASE_TOKEN_REQUIRED"
                | "PURCHASE_TOKEN_USED"
                | "QUEUE_TOKEN_REFUSED"
                | "NO_WAITING_ROOM"
                | "QUEUE_TIMEOUT"
        )
    }
}

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

/// One attempt's answer as it is tallied: when it completed (since the start), its latency
/// (from its intended send time), and the buyer, key, answer and whether it is uncertain.
type Answered = (Duration, Duration, Answer);

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
    let started = Instant::now();
    let buyers = Arc::new(Buyers {
        signer,
        tokens: Mutex::new(HashMap::new()),
        room: scenario
            .waiting_room
            .then(|| queue::Room::new(started, scenario.queue_patience, scenario.retries)),
        retried: Mutex::new(BTreeMap::new()),
    });
    let (quantity, retries) = (scenario.quantity, scenario.retries);
    let one = {
        let (buyers, sale_id) = (buyers.clone(), sale_id.to_owned());
        move |plan: Plan, intended: Instant| {
            let (buyers, target, sale_id) = (buyers.clone(), target.clone(), sale_id.clone());
            let progress = progress.clone();
            async move {
                let (answer, uncertain) =
                    attempt(target, &buyers, &sale_id, &plan, quantity, retries).await;
                let done = Instant::now();
                if let Some(p) = &progress {
                    p.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                let answer = (user_id(plan.user), plan.key, answer, uncertain);
                (done - started, done - intended, answer)
            }
        }
    };
    let answers: Vec<Answered> = match load {
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
            let sends = plans
                .into_iter()
                .zip(times)
                .map(|(p, at)| (p, started + at));
            fire_open(sends, max_in_flight, one).await
        }
    };
    let report = Report {
        accepted: Vec::new(),
        duplicates_answered: 0,
        rejected: BTreeMap::new(),
        retried: buyers
            .retried
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
        attempts: u64::from(scenario.attempts),
        elapsed: started.elapsed(),
        histogram: histogram(),
        timeline: Vec::new(),
        first_sold_out: None,
        last_accepted: None,
        outcomes: Vec::new(),
        queue: buyers
            .room
            .as_ref()
            .map(queue::Room::visits)
            .unwrap_or_default(),
    };
    tally(report, answers)
}

/// Open loop: each attempt sent at its intended time whatever the answers, at most
/// `max_in_flight` at once.
async fn fire_open<F, Fut>(
    sends: impl Iterator<Item = (Plan, Instant)>,
    max_in_flight: usize,
    one: F,
) -> Vec<Answered>
where
    F: Fn(Plan, Instant) -> Fut,
    Fut: std::future::Future<Output = Answered> + Send + 'static,
{
    let gate = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (plan, intended) in sends {
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
    let mut answers = Vec::with_capacity(tasks.len());
    while let Some(result) = tasks.join_next().await {
        if let Ok(answer) = result {
            answers.push(answer);
        }
    }
    answers
}

/// Adds the answers up: what was accepted and refused, latencies, and the per-second timeline.
fn tally(mut report: Report, answers: Vec<Answered>) -> Report {
    let mut seconds: BTreeMap<u32, (Tick, hdrhistogram::Histogram<u64>)> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (at, latency, answer) in answers {
        let micros = (latency.as_micros() as u64).clamp(1, 120_000_000);
        report.histogram.saturating_record(micros);
        let second = at.as_secs() as u32;
        let (tick, hist) = seconds.entry(second).or_insert_with(|| {
            let tick = Tick {
                second,
                ..Tick::default()
            };
            (tick, histogram())
        });
        tick.completed += 1;
        hist.saturating_record(micros);
        let (user, key, answer, uncertain) = answer;
        report.outcomes.push(Outcome {
            user_id: user.clone(),
            idempotency_key: key,
            answer: answer
                .as_ref()
                .map(|a| a.order_id.clone())
                .map_err(Clone::clone),
            uncertain,
        });
        match answer {
            Ok(accepted) => {
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
) -> (Result<pb::PurchaseAccepted, String>, bool) {
    let token = buyers.token(plan.user);
    let purchase_token = match &buyers.room {
        Some(room) => match room
            .purchase_token(target.clone(), &user_id(plan.user), &token, sale_id)
            .await
        {
            Ok(token) => token,
            Err(reason) => return (Err(reason), false),
        },
        None => String::new(),
    };
    let mut client = FlashSaleClient::new(target);
    let (mut tries, mut uncertain) = (0, false);
    loop {
        let purchase = pb::PurchaseRequest {
            sale_id: sale_id.to_owned(),
            quantity,
            idempotency_key: plan.key.clone(),
            purchase_token: purchase_token.clone(),
        };
        match client.purchase(request(purchase, &token, sale_id)).await {
            Ok(response) => return (Ok(response.into_inner()), uncertain),
            Err(status) => {
                let reason = reason_of(&status).unwrap_or_else(|| format!("{:?}", status.code()));
                let retryable = matches!(status.code(), Code::Unavailable)
                    || reason == "OVERLOADED"
                    || (reason == "RATE_LIMITED" && tries == 0);
                if retryable && tries < retries {
                    tries += 1;
                    uncertain |= !Outcome::refusal(&reason);
                    *buyers
                        .retried
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(reason)
                        .or_default() += 1;
                    let pause = retry_after_of(&status)
                        .unwrap_or(Duration::from_millis(20))
                        .min(Duration::from_millis(50));
                    tokio::time::sleep(pause).await;
                    continue;
                }
                return (Err(reason), uncertain);
            }
        }
    }
}

/// A buyer's call: their token, and the sale id for the limiter sidecar's descriptors.
fn request<T>(message: T, token: &str, sale_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer(token));
    if let Ok(value) = sale_id.parse() {
        request.metadata_mut().insert("flashsale-sale-id", value);
    }
    request
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
