//! Fault schedules on the real mesh: while buyers buy, a nemesis crashes processes and stops,
//! freezes or empties the stores; once everything is healed and drained, a checker holds the
//! mesh to its invariants against what every buyer was told.
//!
//! The default test command runs one schedule per kind of fault. The long run draws random
//! schedules from a seed and is opt-in:
//!
//! ```text
//! FLASHSALE_CHAOS_SCHEDULES=200 FLASHSALE_CHAOS_SEED=1 \
//!   cargo nextest run -p flashsale --run-ignored only -E 'test(chaos::random_schedules)' --no-capture
//! ```

use std::{fmt, time::Duration};

use flashsale_loadgen::{Arrival, Load, Report, Scenario, Verdict};
use flashsale_proto::{
    time::{duration, timestamp},
    v1::{self as pb, sale_admin_client::SaleAdminClient},
};
use rand::{Rng, SeedableRng, rngs::StdRng};

use flashsale_testkit::Fault as Net;

use crate::mesh::{Extra, Mesh};

/// How long orphaned holds live: short, so the drain does not wait long for them.
const HOLD_MS: u64 = 2_000;
/// How long the buyers buy.
const LOAD: Duration = Duration::from_secs(5);

/// One fault: break something, keep it broken for a while, heal it.
#[derive(Debug, Clone, PartialEq)]
enum Fault {
    /// SIGKILL the order consumer, start it again after `down`.
    KillConsumer { down: Duration },
    /// Freeze NATS so purchases wait between their Reserve and their publish, SIGKILL the
    /// gateway with them in flight, thaw NATS, start the gateway again after `down`.
    KillGatewayMidPurchase { down: Duration },
    /// Kill Postgres and start it again after `down` (its data is kept).
    StopPostgres { down: Duration },
    /// SIGSTOP Redis for `down`.
    PauseRedis { down: Duration },
    /// Restart Redis with nothing in it, then `Reconcile --repair` the sale from Postgres.
    RestartRedisEmpty,
    /// SIGKILL one node of the 3-node NATS cluster, start it again after `down`.
    KillNatsNode { node: usize, down: Duration },
    /// Fault one hop through its proxy for `down`, both ends running (lost replies after the
    /// server acted, delays past the callers' timeouts, blackholes, resets, a trickle, a cut).
    Network {
        hop: Hop,
        fault: Net,
        down: Duration,
    },
}

/// A hop of the mesh with a fault proxy on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hop {
    /// Every component to Redis.
    Redis,
    /// Every component to NATS.
    Nats,
    /// Every component to Postgres.
    Postgres,
    /// Gateway, orders and consumer to the inventory's gRPC server.
    Inventory,
    /// Every component to the node of the 3-node NATS cluster the mesh's clients connected to
    /// most (clients pick a node at random; the node itself stays in the cluster: cut off, it
    /// is a node the mesh cannot reach).
    NatsNode,
}

impl Hop {
    const ALL: [Hop; 4] = [Hop::Redis, Hop::Nats, Hop::Postgres, Hop::Inventory];
}

impl Fault {
    fn needs_proxies(&self) -> bool {
        matches!(self, Fault::Network { .. })
    }

    /// The fault's kind, for the long run's tally.
    fn kind(&self) -> String {
        match self {
            Fault::KillConsumer { .. } => "kill consumer".into(),
            Fault::KillGatewayMidPurchase { .. } => "kill gateway mid-purchase".into(),
            Fault::StopPostgres { .. } => "stop postgres".into(),
            Fault::PauseRedis { .. } => "pause redis".into(),
            Fault::RestartRedisEmpty => "restart redis empty + repair".into(),
            Fault::KillNatsNode { .. } => "kill a nats node".into(),
            Fault::Network { hop, fault, .. } => {
                let name = format!("{fault:?}");
                let name = name.split('(').next().unwrap_or_default();
                format!("{hop:?} hop {name}")
            }
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: &Duration| d.as_millis();
        match self {
            Fault::KillConsumer { down } => write!(f, "kill consumer {}ms", ms(down)),
            Fault::KillGatewayMidPurchase { down } => {
                write!(f, "kill gateway mid-purchase {}ms", ms(down))
            }
            Fault::StopPostgres { down } => write!(f, "stop postgres {}ms", ms(down)),
            Fault::PauseRedis { down } => write!(f, "pause redis {}ms", ms(down)),
            Fault::RestartRedisEmpty => write!(f, "restart redis empty + repair"),
            Fault::KillNatsNode { node, down } => {
                write!(f, "kill nats node {node} {}ms", ms(down))
            }
            Fault::Network { hop, fault, down } => {
                write!(f, "{hop:?} hop {fault:?} {}ms", ms(down))
            }
        }
    }
}

/// Faults at offsets from the start of the load, applied one after another.
#[derive(Debug, Clone)]
struct Schedule {
    seed: u64,
    cluster: bool,
    steps: Vec<(Duration, Fault)>,
}

impl Schedule {
    fn one(fault: Fault, at: Duration) -> Self {
        let cluster = matches!(
            fault,
            Fault::KillNatsNode { .. }
                | Fault::Network {
                    hop: Hop::NatsNode,
                    ..
                }
        );
        Self {
            seed: 0,
            cluster,
            steps: vec![(at, fault)],
        }
    }

    /// Proxies on the hops: schedules with one NATS server have them, and cluster schedules
    /// with a hop fault (the random cluster schedules draw none).
    fn proxies(&self) -> bool {
        !self.cluster || self.steps.iter().any(|(_, f)| f.needs_proxies())
    }

    /// Two to four faults at random moments of the load, from `seed`.
    fn random(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let cluster = rng.random_bool(0.5);
        let count = rng.random_range(2..=4);
        let mut at = Duration::from_millis(rng.random_range(200..800));
        let mut steps = Vec::new();
        for _ in 0..count {
            let down = Duration::from_millis(rng.random_range(200..1_500));
            // Process faults on either kind; node kills with the cluster, hop faults without.
            let fault = match rng.random_range(0..if cluster { 6 } else { 11 }) {
                0 => Fault::KillConsumer { down },
                1 => Fault::KillGatewayMidPurchase { down },
                2 => Fault::StopPostgres { down },
                3 => Fault::PauseRedis { down },
                4 => Fault::RestartRedisEmpty,
                5 if cluster => Fault::KillNatsNode {
                    node: rng.random_range(0..3),
                    down,
                },
                kind => Fault::Network {
                    hop: Hop::ALL[rng.random_range(0..Hop::ALL.len())],
                    fault: match kind {
                        5 => Net::LoseReplies,
                        6 => Net::Delay(Duration::from_millis(rng.random_range(600..2_500))),
                        7 => Net::Blackhole,
                        8 => Net::Reset,
                        9 => Net::Bandwidth(rng.random_range(1_000..20_000)),
                        _ => Net::Cut,
                    },
                    down,
                },
            };
            steps.push((at, fault));
            at += Duration::from_millis(rng.random_range(300..1_500));
        }
        Self {
            seed,
            cluster,
            steps,
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} ({}): ",
            self.seed,
            if self.cluster {
                "3-node NATS"
            } else {
                "1 NATS"
            }
        )?;
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(at, fault)| format!("@{}ms {fault}", at.as_millis()))
            .collect();
        write!(f, "{}", steps.join(", "))
    }
}

/// What one schedule did and found.
struct Outcome {
    report: Report,
    faults: usize,
    /// What the hop faults did to traffic (lost replies, resets, held chunks), all proxies.
    struck: u64,
    failed_checks: Vec<String>,
    lines: Vec<String>,
}

async fn create_sale(mesh: &Mesh, stock: u64, limit: u32) -> pb::Sale {
    let mut admin = SaleAdminClient::new(mesh.channel(mesh.ports.gateway).await);
    let token = mesh
        .signer()
        .token("operator", true, Duration::from_secs(600));
    let now = flashsale_proto::time::now_ms();
    let mut request = tonic::Request::new(pb::CreateSaleRequest {
        sale: Some(pb::Sale {
            sale_id: String::new(),
            name: "chaos".into(),
            stock,
            per_user_limit: limit,
            unit_price_minor: 1_000,
            currency: "CNY".into(),
            starts_at: Some(timestamp(now - 1_000)),
            ends_at: Some(timestamp(now + 3_600_000)),
            reservation_hold: Some(duration(HOLD_MS)),
            payment_window: Some(duration(600_000)),
            state: 0,
            stock_buckets: 0,
            waiting_room: None,
        }),
    });
    request
        .metadata_mut()
        .insert("authorization", flashsale_gateway::auth::bearer(&token));
    admin.create_sale(request).await.unwrap().into_inner()
}

/// Rebuilds the sale's stock in Redis from Postgres, as an operator would after Redis lost it.
async fn repair(mesh: &Mesh, sale_id: &str) {
    let token = mesh
        .signer()
        .token("operator", true, Duration::from_secs(600));
    // Generous: the order consumer drains the stream first, and CI runs other tests beside.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut admin = SaleAdminClient::new(mesh.channel(mesh.ports.gateway).await);
        let mut request = tonic::Request::new(pb::ReconcileRequest {
            sale_id: sale_id.to_owned(),
            repair: true,
        });
        request
            .metadata_mut()
            .insert("authorization", flashsale_gateway::auth::bearer(&token));
        match admin.reconcile(request).await {
            Ok(report) if report.get_ref().repaired => return,
            // Redis was emptied just before: the sale is back in it only through a rebuild, so
            // an earlier attempt whose answer was lost (past its deadline) did the repair.
            Err(status)
                if flashsale_runtime::status::reason_of(&status).as_deref()
                    == Some("SALE_ACTIVE") =>
            {
                return;
            }
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the repair never went through: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn inject(mesh: &mut Mesh, sale_id: &str, fault: &Fault) {
    match fault {
        Fault::KillConsumer { down } => {
            mesh.kill("order-consumer");
            tokio::time::sleep(*down).await;
            mesh.respawn("order-consumer").await;
        }
        Fault::KillGatewayMidPurchase { down } => {
            mesh.nats.pause();
            // Purchases reserve, then wait on a publish that cannot be acknowledged.
            tokio::time::sleep(Duration::from_millis(300)).await;
            mesh.kill("gateway");
            mesh.nats.resume();
            tokio::time::sleep(*down).await;
            mesh.respawn("gateway").await;
        }
        Fault::StopPostgres { down } => {
            mesh.pg.kill();
            tokio::time::sleep(*down).await;
            mesh.pg.restart().await.unwrap();
        }
        Fault::PauseRedis { down } => {
            mesh.redis.pause().unwrap();
            tokio::time::sleep(*down).await;
            mesh.redis.resume().unwrap();
        }
        Fault::RestartRedisEmpty => {
            mesh.redis.restart().await.unwrap();
            repair(mesh, sale_id).await;
        }
        Fault::KillNatsNode { node, down } => {
            let crate::mesh::Nats::Cluster(cluster) = &mut mesh.nats else {
                panic!("a NATS node fault needs the cluster");
            };
            cluster.node(*node).kill();
            tokio::time::sleep(*down).await;
            cluster.node(*node).restart().await.unwrap();
        }
        Fault::Network { hop, fault, down } => {
            let hops = mesh.hops.as_ref().expect("hop faults need the proxies");
            let proxies = match hop {
                Hop::Redis => vec![&hops.redis],
                Hop::Nats => hops.nats.iter().collect(),
                Hop::NatsNode => hops
                    .nats
                    .iter()
                    .max_by_key(|p| p.connections())
                    .into_iter()
                    .collect(),
                Hop::Postgres => vec![&hops.postgres],
                Hop::Inventory => vec![&hops.inventory, &hops.gateway_inventory],
            };
            proxies.iter().for_each(|p| p.set(*fault));
            tokio::time::sleep(*down).await;
            proxies.iter().for_each(|p| p.heal());
        }
    }
}

/// Waits until the order stream holds nothing the consumer has not acknowledged.
async fn drain(mesh: &Mesh) {
    let servers: Vec<async_nats::ServerAddr> = mesh
        .nats
        .url()
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let client = async_nats::connect(servers).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let pending = async {
            let stream = js.get_stream("ORDERS").await.ok()?;
            let info = stream
                .get_consumer::<async_nats::jetstream::consumer::pull::Config>("orders-writer")
                .await
                .ok()?
                .info()
                .await
                .ok()?
                .clone();
            Some(info.num_pending + info.num_ack_pending as u64)
        }
        .await;
        if pending == Some(0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the order stream never drained ({pending:?} left)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn run(schedule: &Schedule) -> Outcome {
    eprintln!("chaos: {schedule}");
    // The processes' logs go to files, kept when a check fails.
    let logs = tempfile::Builder::new()
        .prefix("flashsale-chaos-")
        .tempdir()
        .unwrap();
    assert!(
        schedule.proxies() || !schedule.steps.iter().any(|(_, f)| f.needs_proxies()),
        "{schedule}: hop faults need the proxies"
    );
    let mut mesh = Mesh::start_with(
        "chaos",
        Extra {
            log_dir: Some(logs.path().to_path_buf()),
            nats_cluster: schedule.cluster,
            proxies: schedule.proxies(),
            // Calls give up within 2 s, so a delayed hop outlasts its callers' timeouts.
            env: vec![("FLASHSALE_SERVER__REQUEST_TIMEOUT".into(), "2s".into())],
            config: if schedule.cluster {
                "[orders.stream]\nreplicas = 3\n".into()
            } else {
                String::new()
            },
            ..Extra::default()
        },
    )
    .await;
    // Demand (about 1,900 units) exceeds the stock, which lasts about 3 s of the 5 s of load:
    // faults land while units are still being sold.
    let sale = create_sale(&mesh, 1_200, 2).await;
    let scenario = Scenario {
        users: 1_000,
        attempts: 3_000,
        concurrency: 32,
        duplicate_ratio: 0.1,
        retries: 4,
        seed: schedule.seed,
        ..Scenario::default()
    };
    let buyers = {
        let target = mesh.channel(mesh.ports.sidecar).await;
        let (signer, sale_id) = (mesh.signer(), sale.sale_id.clone());
        tokio::spawn(async move {
            flashsale_loadgen::run(
                target,
                signer,
                &sale_id,
                &scenario,
                Load::Open {
                    rate: f64::from(scenario.attempts) / LOAD.as_secs_f64(),
                    arrival: Arrival::Steady,
                    max_in_flight: 64,
                },
                None,
            )
            .await
        })
    };
    let started = tokio::time::Instant::now();
    for (at, fault) in &schedule.steps {
        tokio::time::sleep_until(started + *at).await;
        inject(&mut mesh, &sale.sale_id, fault).await;
    }
    let report = buyers.await.unwrap();

    // Healed: let orphaned holds expire, and every queued event become an order.
    drain(&mesh).await;
    tokio::time::sleep(Duration::from_millis(HOLD_MS + 1_000)).await;
    drain(&mesh).await;
    let sources = mesh.sources().await;
    let audit =
        flashsale_loadgen::audit_under_faults(&sources, &sale, &report, Duration::from_secs(60))
            .await;
    let mut lines = audit.lines();
    if !audit.passed() {
        lines.extend(diagnose(&mesh, &sale.sale_id).await);
        lines.push(format!("process logs kept in {}", logs.keep().display()));
    }
    let struck = mesh.hops.as_ref().map_or(0, |h| {
        [&h.redis, &h.postgres, &h.inventory, &h.gateway_inventory]
            .into_iter()
            .chain(&h.nats)
            .map(|p| p.struck())
            .sum()
    });
    Outcome {
        faults: schedule.steps.len(),
        struck,
        failed_checks: audit
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect(),
        lines,
        report,
    }
}

/// For a failed check: every live order whose reservation Redis does not hold as live.
async fn diagnose(mesh: &Mesh, sale_id: &str) -> Vec<String> {
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &mesh.redis.port().to_string(), "--no-raw", "HGETALL"])
        .arg(format!("fs:{{{sale_id}}}:res"))
        .output();
    let Ok(output) = output else {
        return vec!["(redis-cli not found)".into()];
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let fields: Vec<String> = text
        .lines()
        .map(|l| {
            let value = l.split_once(") ").map_or(l, |(_, v)| v);
            value.trim_matches('"').replace("\\\"", "\"")
        })
        .collect();
    let mut in_redis = std::collections::HashMap::new();
    for pair in fields.chunks(2) {
        if let [rid, rec] = pair {
            in_redis.insert(rid.clone(), rec.clone());
        }
    }
    let rows = mesh
        .store()
        .await
        .live_orders(sale_id)
        .await
        .unwrap_or_default();
    let mut lines = vec![format!(
        "{} reservations in Redis, {} live orders in Postgres",
        in_redis.len(),
        rows.len()
    )];
    let live_ids: std::collections::HashSet<&str> =
        rows.iter().map(|r| r.order_id.as_str()).collect();
    for (rid, rec) in &in_redis {
        let live = rec.contains("HELD") || rec.contains("COMMITTED") || rec.contains("CONFIRMED");
        if live && !live_ids.contains(rid.as_str()) {
            let row = mesh.store().await.order(rid).await.ok();
            lines.push(format!(
                "reservation {rid} live in Redis {rec} but not in Postgres: {:?}",
                row.map(|r| (r.status, r.status_reason, r.inventory_pending, r.updated_at))
            ));
        }
    }
    for row in rows {
        let state = in_redis.get(&row.order_id);
        let live = state.is_some_and(|r| {
            r.contains("HELD") || r.contains("COMMITTED") || r.contains("CONFIRMED")
        });
        if !live {
            lines.push(format!(
                "order {} user {} key {} created {} updated {} status {:?} pending {:?}: Redis {:?}",
                row.order_id,
                row.user_id,
                row.idempotency_key,
                row.created_at,
                row.updated_at,
                row.status,
                row.inventory_pending,
                state
            ));
        }
    }
    lines
}

fn unknown(report: &Report) -> usize {
    report
        .outcomes
        .iter()
        .filter(|o| o.verdict() == Verdict::Unknown)
        .count()
}

/// Runs one schedule and fails with everything the checker said when an invariant broke.
async fn check(schedule: Schedule) -> Outcome {
    let outcome = run(&schedule).await;
    assert!(
        outcome.failed_checks.is_empty(),
        "{schedule}\n  {}\n  answers: {} accepted, {:?}",
        outcome.lines.join("\n  "),
        outcome.report.accepted.len(),
        outcome.report.rejected
    );
    assert!(
        !outcome.report.accepted.is_empty(),
        "{schedule}: nothing was sold"
    );
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_and_restarted() {
    check(Schedule::one(
        Fault::KillConsumer {
            down: Duration::from_millis(1_500),
        },
        Duration::from_millis(1_000),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_between_reserve_and_publish() {
    // Early in the sale, so purchases still reach the stream when NATS is paused: at 1 s a fast
    // run had already sold out, and nothing was in flight to be cut.
    let outcome = check(Schedule::one(
        Fault::KillGatewayMidPurchase {
            down: Duration::from_millis(500),
        },
        Duration::from_millis(200),
    ))
    .await;
    assert!(
        unknown(&outcome.report) > 0,
        "purchases were in flight when the gateway died: {:?}",
        outcome.report.rejected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_seconds() {
    check(Schedule::one(
        Fault::StopPostgres {
            down: Duration::from_secs(2),
        },
        Duration::from_millis(1_000),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused() {
    let outcome = check(Schedule::one(
        Fault::PauseRedis {
            down: Duration::from_millis(1_500),
        },
        Duration::from_millis(1_000),
    ))
    .await;
    // Buyers waited through the pause (their retries outlasted it).
    assert!(
        outcome.report.histogram.max() >= 1_000_000,
        "slowest answer {} µs",
        outcome.report.histogram.max()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_then_repaired() {
    let outcome = check(Schedule::one(
        Fault::RestartRedisEmpty,
        Duration::from_millis(1_500),
    ))
    .await;
    assert!(
        outcome.report.rejected.contains_key("STOCK_UNAVAILABLE")
            || outcome.report.retried.contains_key("STOCK_UNAVAILABLE"),
        "purchases met the empty Redis (and heard UNAVAILABLE, not a refusal): {:?} {:?}",
        outcome.report.rejected,
        outcome.report.retried
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_node_killed_in_a_three_node_cluster() {
    check(Schedule::one(
        Fault::KillNatsNode {
            node: 0,
            down: Duration::from_secs(2),
        },
        Duration::from_millis(1_000),
    ))
    .await;
}

/// The first random schedule from seed 11 with two faults or more and no Redis data loss.
/// Redis losing its data is checked on its own (`redis_restarted_empty_then_repaired`): drawn
/// together with faults that leave late events in the stream (a gateway killed mid-purchase),
/// it is the double fault RELIABILITY.md lists where the promises end, and seed 11 itself drew
/// exactly that (it failed "a key keeps its answer" in 2 runs of 4 once the repair had to mark
/// orders lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_schedule() {
    let schedule = (11..)
        .map(Schedule::random)
        .find(|s| {
            s.steps.len() >= 2
                && !s
                    .steps
                    .iter()
                    .any(|(_, f)| matches!(f, Fault::RestartRedisEmpty))
        })
        .expect("some seed draws such a schedule");
    check(schedule).await;
}

/// Postgres stopped for more than three reservation holds in the middle of the sale: every
/// accepted purchase waits in the stream and keeps its unit, becomes exactly one order once
/// Postgres is back, and no unit is sold twice (the audit checks it all against every answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_for_three_holds() {
    let outcome = check(Schedule::one(
        Fault::StopPostgres {
            down: Duration::from_millis(3 * HOLD_MS + 500),
        },
        Duration::from_millis(500),
    ))
    .await;
    assert!(
        outcome.report.accepted.len() > 100,
        "purchases were accepted during the outage"
    );
}

/// One hop fault in the middle of the load; it must strike traffic.
async fn hop_fault(hop: Hop, fault: Net, down_ms: u64, at_ms: u64) {
    let down = Duration::from_millis(down_ms);
    let schedule = Schedule::one(
        Fault::Network { hop, fault, down },
        Duration::from_millis(at_ms),
    );
    let outcome = check(schedule).await;
    assert!(
        outcome.struck > 0,
        "the {hop:?} hop fault struck no traffic"
    );
}

/// Redis runs scripts and its replies are lost (every connection drops when Redis answers):
/// no script may run twice, no reservation may be answered both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_replies_lost_after_the_scripts_ran() {
    hop_fault(Hop::Redis, Net::LoseReplies, 800, 1_200).await;
}

/// JetStream stores the events and the acks are lost: the gateways compensate what they can,
/// retries meet what was stored, and nothing accepted is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_acks_lost_after_storing() {
    hop_fault(Hop::Nats, Net::LoseReplies, 800, 1_200).await;
}

/// The inventory answers later than its callers wait (the Reserve ran; the gateway gave up).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_answers_after_the_callers_gave_up() {
    hop_fault(
        Hop::Inventory,
        Net::Delay(Duration::from_millis(2_500)),
        1_500,
        1_000,
    )
    .await;
}

/// One node of the 3-node JetStream cluster (stream replicas 3) is cut off from the mesh: its
/// client connections reset, new ones refused, while it stays in the cluster. Publishers and
/// the consumer fail over to the other two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_node_cut_off_from_the_mesh() {
    hop_fault(Hop::NatsNode, Net::Cut, 1_500, 1_000).await;
}

/// Postgres is cut off (open connections reset, new ones refused) while orders are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off() {
    hop_fault(Hop::Postgres, Net::Cut, 1_500, 1_000).await;
}

/// The long run: `FLASHSALE_CHAOS_SCHEDULES` random schedules (default 200) from
/// `FLASHSALE_CHAOS_SEED` (default 1); prints one line a schedule and the totals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run by hand (see the module docs)"]
async fn random_schedules() {
    let count: u64 = std::env::var("FLASHSALE_CHAOS_SCHEDULES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let first: u64 = std::env::var("FLASHSALE_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let started = std::time::Instant::now();
    let (mut faults, mut attempts, mut accepted, mut unknown_total) = (0, 0, 0, 0);
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    let mut violations = Vec::new();
    for seed in first..first + count {
        let schedule = Schedule::random(seed);
        for (_, fault) in &schedule.steps {
            *kinds.entry(fault.kind()).or_default() += 1;
        }
        let outcome = run(&schedule).await;
        faults += outcome.faults;
        attempts += outcome.report.attempts;
        accepted += outcome.report.accepted.len();
        unknown_total += unknown(&outcome.report);
        println!(
            "{schedule} → {} accepted, {} unanswered, {}",
            outcome.report.accepted.len(),
            unknown(&outcome.report),
            if outcome.failed_checks.is_empty() {
                "ok".to_owned()
            } else {
                format!("VIOLATED: {}", outcome.failed_checks.join("; "))
            }
        );
        if !outcome.failed_checks.is_empty() {
            violations.push(format!("{schedule}: {}", outcome.failed_checks.join("; ")));
        }
    }
    println!(
        "chaos: {count} schedules, {faults} faults, {attempts} purchase attempts, {accepted} accepted, \
         {unknown_total} unanswered, {} violations, {:.0}s",
        violations.len(),
        started.elapsed().as_secs_f64()
    );
    for (kind, n) in &kinds {
        println!("  {n:>4}  {kind}");
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
