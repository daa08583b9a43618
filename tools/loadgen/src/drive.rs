//! Buyers firing purchase attempts: the scenario, closed and open loops, and the report of
//! what they saw.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use flashsale_gateway::auth::{Signer, bearer};
use flashsale_proto::v1::{self as pb, flash_sale_client::FlashSaleClient};
use flashsale_runtime::status::{reason_of, retry_after_of};
use futures::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::{Code, transport::Channel};

use crate::queue::{self, QueueVisit};

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
pub(crate) fn request<T>(message: T, token: &str, sale_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer(token));
    if let Ok(value) = sale_id.parse() {
        request.metadata_mut().insert("flashsale-sale-id", value);
    }
    request
}
