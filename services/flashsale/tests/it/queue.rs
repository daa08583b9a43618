//! A sale behind a waiting room, through the real processes: buyers join, are admitted in
//! arrival order at the room's rate with at most `active_cap` admitted at once, buy with their
//! single-use purchase token, and hear sold out together; bad tickets and tokens are refused.

use std::{collections::BTreeMap, time::Duration};

use flashsale_proto::{
    time::duration,
    v1::{self as pb, flash_sale_client::FlashSaleClient},
};
use flashsale_runtime::status::reason_of;
use tonic::{Code, transport::Channel};

use crate::{
    e2e::{authorized, create_sale, create_sale_with, distinct_buyers},
    mesh::Mesh,
};

/// A sale behind a waiting room admitting `rate` buyers a second, at most `active_cap` at
/// once, each with 30 s to buy.
async fn create_room_sale(
    mesh: &Mesh,
    stock: u64,
    limit: u32,
    payment_window_ms: u64,
    rate: f64,
    active_cap: u32,
) -> pb::Sale {
    create_sale_with(mesh, stock, limit, payment_window_ms, |sale| {
        sale.waiting_room = Some(pb::WaitingRoom {
            admissions_per_second: rate,
            active_cap,
            admission_window: Some(duration(30_000)),
        });
    })
    .await
}

/// JoinQueue for the holder of `token`.
async fn join(
    client: &mut FlashSaleClient<Channel>,
    sale_id: &str,
    token: &str,
) -> pb::QueueStanding {
    client
        .join_queue(authorized(
            pb::JoinQueueRequest {
                sale_id: sale_id.into(),
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner()
}

/// WatchQueue for the holder of `token` and `ticket`.
async fn watch(
    client: &mut FlashSaleClient<Channel>,
    sale_id: &str,
    ticket: &str,
    token: &str,
) -> Result<tonic::Streaming<pb::QueueStanding>, tonic::Status> {
    client
        .watch_queue(authorized(
            pb::QueueStatusRequest {
                sale_id: sale_id.into(),
                ticket: ticket.into(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// QueueStatus for the holder of `token` and `ticket`.
async fn ask(
    client: &mut FlashSaleClient<Channel>,
    sale_id: &str,
    ticket: &str,
    token: &str,
) -> Result<pb::QueueStanding, tonic::Status> {
    client
        .queue_status(authorized(
            pb::QueueStatusRequest {
                sale_id: sale_id.into(),
                ticket: ticket.into(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

struct Buyer {
    user: String,
    token: String,
    ticket: String,
    number: u64,
}

async fn purchase(
    client: &mut FlashSaleClient<Channel>,
    buyer: &Buyer,
    sale_id: &str,
    purchase_token: &str,
    key: &str,
) -> Result<pb::PurchaseAccepted, tonic::Status> {
    client
        .purchase(authorized(
            pb::PurchaseRequest {
                sale_id: sale_id.into(),
                quantity: 1,
                idempotency_key: key.into(),
                purchase_token: purchase_token.into(),
            },
            &buyer.token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_room_admits_in_arrival_order_and_tokens_buy_once() {
    let mesh = Mesh::start("waiting room").await;
    let sale = create_room_sale(&mesh, 10, 1, 600_000, 20.0, 4).await;
    assert!(sale.waiting_room.is_some(), "the sale keeps its room");
    let sale_id = sale.sale_id.clone();
    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.gateway).await);
    let signer = mesh.signer();

    // 30 buyers join one after the other: their numbers are their arrival order.
    let mut buyers = Vec::new();
    for i in 0..30 {
        let user = format!("queued-{i}");
        let token = signer.token(&user, false, Duration::from_secs(600));
        let joined = join(&mut client, &sale_id, &token).await;
        assert_eq!(joined.number, i + 1);
        let again = join(&mut client, &sale_id, &token).await;
        assert_eq!(again.number, i + 1, "joining again keeps the place");
        buyers.push(Buyer {
            user,
            token,
            ticket: joined.ticket,
            number: joined.number,
        });
    }

    // While stock lasts: no purchase without a token, and a ticket is not one.
    let status = purchase(&mut client, &buyers[0], &sale_id, "", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        reason_of(&status).as_deref(),
        Some("PURCHASE_TOKEN_REQUIRED")
    );
    let status = purchase(&mut client, &buyers[0], &sale_id, &buyers[0].ticket, "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Poll everyone; buy as soon as admitted. Whoever is admitted, everyone before them is.
    let mut admitted_order: Vec<u64> = Vec::new();
    let mut tokens: BTreeMap<u64, String> = BTreeMap::new();
    let mut sold = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sold < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "admitted {admitted_order:?}"
        );
        for buyer in &buyers {
            if tokens.contains_key(&buyer.number) {
                continue;
            }
            let standing = ask(&mut client, &sale_id, &buyer.ticket, &buyer.token)
                .await
                .unwrap();
            match pb::QueueState::try_from(standing.state).unwrap() {
                pb::QueueState::Admitted => {
                    admitted_order.push(buyer.number);
                    tokens.insert(buyer.number, standing.purchase_token);
                }
                pb::QueueState::Waiting => {
                    assert!(standing.position >= 1);
                    assert!(standing.estimated_wait.is_some());
                }
                other => panic!("{other:?} before the stock is gone"),
            }
        }
        // The admitted ones buy (one at a time, so the active cap shows).
        let ready: Vec<(u64, String)> = tokens
            .iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(n, t)| (*n, t.clone()))
            .collect();
        for (number, purchase_token) in ready {
            let buyer = &buyers[number as usize - 1];
            if sold >= 10 {
                break;
            }
            let key = format!("buy-{}", buyer.user);
            purchase(&mut client, buyer, &sale_id, &purchase_token, &key)
                .await
                .unwrap();
            sold += 1;
            if sold == 10 {
                // The last unit: from here on Purchase answers SOLD_OUT from memory first.
                break;
            }
            // Spent: once more with another key is refused; the same key is the same purchase.
            let again = purchase(&mut client, buyer, &sale_id, &purchase_token, "other").await;
            let status = again.unwrap_err();
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert_eq!(reason_of(&status).as_deref(), Some("PURCHASE_TOKEN_USED"));
            let retry = purchase(&mut client, buyer, &sale_id, &purchase_token, &key).await;
            assert!(
                retry.is_ok() || retry.as_ref().unwrap_err().code() == Code::AlreadyExists,
                "{retry:?}"
            );
            tokens.insert(number, String::new());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sorted = admitted_order.clone();
    sorted.sort_unstable();
    assert_eq!(admitted_order, sorted, "admission order is arrival order");
    assert_eq!(
        sorted,
        (1..=admitted_order.len() as u64).collect::<Vec<_>>()
    );

    // Stock gone: every queued buyer hears sold out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for buyer in buyers.iter().skip(10) {
        loop {
            let standing = ask(&mut client, &sale_id, &buyer.ticket, &buyer.token).await;
            match standing.map(|s| pb::QueueState::try_from(s.state).unwrap()) {
                Ok(pb::QueueState::SoldOut) => break,
                other => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} hears {other:?}",
                        buyer.user
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    // Refusals, each with its reason.
    let alice = &buyers[12];
    let bob = &buyers[13];
    let expect = |result: Result<pb::QueueStanding, tonic::Status>, code, reason: &str| {
        let status = result.unwrap_err();
        assert_eq!(
            (status.code(), reason_of(&status).as_deref()),
            (code, Some(reason)),
            "{status:?}"
        );
    };
    // Another buyer's ticket; a forged one.
    expect(
        ask(&mut client, &sale_id, &alice.ticket, &bob.token).await,
        Code::PermissionDenied,
        "QUEUE_TOKEN_REFUSED",
    );
    let (payload, _) = alice.ticket.split_once('.').unwrap();
    expect(
        ask(
            &mut client,
            &sale_id,
            &format!("{payload}.AAAA"),
            &alice.token,
        )
        .await,
        Code::PermissionDenied,
        "QUEUE_TOKEN_REFUSED",
    );
    // A sale without a room has no queue.
    let plain = create_sale(&mesh, 5, 1, 600_000).await;
    expect(
        client
            .join_queue(authorized(
                pb::JoinQueueRequest {
                    sale_id: plain.sale_id,
                },
                &alice.token,
            ))
            .await
            .map(tonic::Response::into_inner),
        Code::FailedPrecondition,
        "NO_WAITING_ROOM",
    );
}

/// Loadgen buyers behind a waiting room, through the sidecar: each queues once, buys with its
/// token, and the audit finds exactly the stock sold, one unit per buyer, every order written,
/// and admission in arrival order as the buyers saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_buyers_queue_in_arrival_order_and_the_audit_holds() {
    let mesh = Mesh::start("waiting room under load").await;
    let sale = create_room_sale(&mesh, 80, 2, 600_000, 200.0, 16).await;
    let scenario = flashsale_loadgen::Scenario {
        users: 400,
        attempts: 1_200,
        concurrency: 64,
        duplicate_ratio: 0.2,
        retries: 3,
        waiting_room: true,
        queue_patience: Duration::from_secs(60),
        ..flashsale_loadgen::Scenario::default()
    };
    let report = mesh.drive(&sale, &scenario).await;

    let units: u32 = report.accepted.iter().map(|a| a.quantity).sum();
    assert_eq!(units, 80, "exactly the stock: {:?}", report.rejected);
    assert_eq!(
        distinct_buyers(&report),
        80,
        "one purchase per admission, so one unit per buyer"
    );
    // A buyer's second purchase with a new key is a second use of their token.
    assert!(
        report.rejected.contains_key("PURCHASE_TOKEN_USED"),
        "{:?}",
        report.rejected
    );
    assert!(
        report.rejected.contains_key("SOLD_OUT"),
        "{:?}",
        report.rejected
    );
    let other: Vec<_> = report
        .rejected
        .keys()
        .filter(|r| !matches!(r.as_str(), "PURCHASE_TOKEN_USED" | "SOLD_OUT"))
        .collect();
    assert!(other.is_empty(), "no other refusal: {:?}", report.rejected);

    // Everyone who attempted came to the room; those who came before the sell-out got the
    // next arrival number, those after it heard SOLD_OUT at the door.
    let visits = &report.queue;
    let attempted: std::collections::HashSet<&str> =
        report.outcomes.iter().map(|o| o.user_id.as_str()).collect();
    assert_eq!(visits.len(), attempted.len());
    let mut numbers: Vec<u64> = visits.iter().map(|v| v.number).filter(|&n| n > 0).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=numbers.len() as u64).collect::<Vec<_>>(),
        "one arrival number per buyer, none skipped"
    );
    assert!(numbers.len() > 80, "more joined than the stock");
    for late in visits.iter().filter(|v| v.number == 0) {
        assert!(late.admitted.is_none() && late.last_told_to_wait.is_none());
    }
    assert!(
        visits.iter().any(|v| v.last_told_to_wait.is_some()),
        "some waited"
    );
    assert!(
        visits.iter().any(|v| v.sold_out_in_line),
        "some heard sold out in line"
    );
    for buyer in &report.accepted {
        let visit = visits.iter().find(|v| v.user_id == buyer.user_id).unwrap();
        assert!(
            visit.admitted.is_some(),
            "{} bought without admission",
            buyer.user_id
        );
    }

    let audit = mesh.audit(&sale, &report).await;
    assert!(audit.passed(), "{:#?}", audit.lines());
    let fair = audit
        .checks
        .iter()
        .find(|c| c.name == "fair admission")
        .expect("the audit checks the room");
    assert!(
        fair.detail.contains("0 told to wait after a later arrival"),
        "{}",
        fair.detail
    );
}

/// `flashsale sale create --waiting-room` puts a sale behind a room; the room's options need it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_a_sale_behind_a_waiting_room() {
    let mesh = Mesh::start("waiting room from the CLI").await;
    let admin = mesh
        .signer()
        .token("operator", true, Duration::from_secs(600));
    let gateway = format!("http://127.0.0.1:{}", mesh.ports.gateway);
    let create = |extra: &[&str]| {
        crate::flashsale()
            .args(["sale", "create", "--gateway", &gateway, "--token", &admin])
            .args(["--name", "queued drop", "--stock", "10"])
            .args(extra)
            .output()
            .unwrap()
    };

    let refused = create(&["--active-cap", "5"]);
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--waiting-room"), "{stderr}");

    let created = create(&[
        "--waiting-room",
        "50",
        "--active-cap",
        "5",
        "--admission-window",
        "45s",
    ]);
    let stdout = String::from_utf8_lossy(&created.stdout);
    assert!(
        created.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(stdout.contains("waiting room 50/s, 5 active"), "{stdout}");
    let sale_id = stdout.split_whitespace().next().unwrap().to_owned();

    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.gateway).await);
    let buyer = mesh
        .signer()
        .token("cli-buyer", false, Duration::from_secs(600));
    let view = client
        .get_sale(authorized(
            pb::GetSaleRequest {
                sale_id: sale_id.clone(),
            },
            &buyer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        view.sale.unwrap().waiting_room,
        Some(pb::WaitingRoom {
            admissions_per_second: 50.0,
            active_cap: 5,
            admission_window: Some(duration(45_000)),
        })
    );
    // The room is open: the first buyer to join gets number 1.
    let joined = client
        .join_queue(authorized(pb::JoinQueueRequest { sale_id }, &buyer))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.number, 1);
}

/// A gateway verifying ES256 tokens (it holds only the issuer's public key) hosts waiting rooms
/// with its own `gateway.waiting_room_secret`: buyers with ES256 tokens join, are admitted and
/// buy with the purchase token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_verifying_es256_tokens_hosts_rooms_with_its_own_key() {
    use flashsale_gateway::auth::Claims;
    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    let dir = tempfile::tempdir().unwrap();
    let issuer_key = rcgen::KeyPair::generate().unwrap();
    let public_key = dir.path().join("issuer.pub.pem");
    std::fs::write(&public_key, issuer_key.public_key_pem()).unwrap();
    let signing = EncodingKey::from_ec_pem(issuer_key.serialize_pem().as_bytes()).unwrap();
    let es256 = |user: &str, admin: bool| {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user.into(),
            exp: now + 600,
            nbf: None,
            aud: "flashsale".into(),
            iss: String::new(),
            admin,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &signing).unwrap()
    };
    let env = |key: &str, value: &str| (key.to_owned(), value.to_owned());
    let mesh = Mesh::start_with(
        "waiting room, ES256 tokens",
        crate::mesh::Extra {
            env: vec![
                env("FLASHSALE_GATEWAY__AUTH__ALGORITHM", "ES256"),
                env(
                    "FLASHSALE_GATEWAY__AUTH__PUBLIC_KEY_FILE",
                    public_key.to_str().unwrap(),
                ),
                env(
                    "FLASHSALE_GATEWAY__WAITING_ROOM_SECRET",
                    "a-room-key-of-its-own-0123456789",
                ),
            ],
            ..crate::mesh::Extra::default()
        },
    )
    .await;
    let channel = mesh.channel(mesh.ports.gateway).await;

    // The HS256 tokens of the other tests are refused here: this gateway verifies ES256.
    let hs256 = mesh
        .signer()
        .token("operator", true, Duration::from_secs(600));
    let mut admin = pb::sale_admin_client::SaleAdminClient::new(channel.clone());
    let now = flashsale_proto::time::now_ms();
    let sale = pb::Sale {
        name: "ES256 room".into(),
        stock: 3,
        per_user_limit: 1,
        unit_price_minor: 500,
        currency: "CNY".into(),
        starts_at: Some(flashsale_proto::time::timestamp(now - 1_000)),
        ends_at: Some(flashsale_proto::time::timestamp(now + 3_600_000)),
        waiting_room: Some(pb::WaitingRoom {
            admissions_per_second: 1_000.0,
            active_cap: 10,
            admission_window: Some(duration(30_000)),
        }),
        ..pb::Sale::default()
    };
    let refused = admin
        .create_sale(authorized(
            pb::CreateSaleRequest {
                sale: Some(sale.clone()),
            },
            &hs256,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let sale = admin
        .create_sale(authorized(
            pb::CreateSaleRequest { sale: Some(sale) },
            &es256("operator", true),
        ))
        .await
        .unwrap()
        .into_inner();

    let mut client = FlashSaleClient::new(channel);
    let buyer = es256("es-buyer", false);
    let joined = join(&mut client, &sale.sale_id, &buyer).await;
    assert_eq!(joined.number, 1);
    let mut standing = joined.clone();
    for _ in 0..100 {
        if standing.state == pb::QueueState::Admitted as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        standing = ask(&mut client, &sale.sale_id, &joined.ticket, &buyer)
            .await
            .unwrap();
    }
    assert_eq!(standing.state, pb::QueueState::Admitted as i32);
    let bought = client
        .purchase(authorized(
            pb::PurchaseRequest {
                sale_id: sale.sale_id.clone(),
                quantity: 1,
                idempotency_key: "es-1".into(),
                purchase_token: standing.purchase_token.clone(),
            },
            &buyer,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bought.quantity, 1);
    let again = client
        .purchase(authorized(
            pb::PurchaseRequest {
                sale_id: sale.sale_id.clone(),
                quantity: 1,
                idempotency_key: "es-2".into(),
                purchase_token: standing.purchase_token,
            },
            &buyer,
        ))
        .await
        .unwrap_err();
    assert_eq!(reason_of(&again).as_deref(), Some("PURCHASE_TOKEN_USED"));
}

/// A command to the mesh's Redis, through `redis-cli`; its answer.
fn redis_cli(mesh: &Mesh, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &mesh.redis.port().to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Script calls Redis has answered so far (EVALSHA and EVAL).
fn script_calls(mesh: &Mesh) -> u64 {
    redis_cli(mesh, &["INFO", "commandstats"])
        .lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split_once("calls=")
                .and_then(|(_, rest)| rest.split(',').next())
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

/// Buyers watch their place with WatchQueue instead of asking: each stream counts down, ends
/// admitted (in arrival order) or sold out, and the gateway reads the room once per tick for
/// all of them rather than once per buyer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_follow_the_line_with_one_room_read_per_tick() {
    const BUYERS: u64 = 60;
    let mesh = Mesh::start_with(
        "waiting room watched",
        crate::mesh::Extra {
            env: vec![
                (
                    "FLASHSALE_GATEWAY__QUEUE_WATCH_INTERVAL".into(),
                    "50ms".into(),
                ),
                // Streams end after a second: buyers still waiting watch again.
                ("FLASHSALE_GATEWAY__QUEUE_WATCH_MAX".into(), "1s".into()),
            ],
            metrics: true,
            ..crate::mesh::Extra::default()
        },
    )
    .await;
    let sale = create_room_sale(&mesh, 10, 1, 600_000, 2.0, 3).await;
    let channel = mesh.channel(mesh.ports.gateway).await;
    let signer = mesh.signer();

    // Everyone joins first, in order; then everyone watches at once and buys when admitted.
    let mut joined = Vec::new();
    for i in 0..BUYERS {
        let token = signer.token(&format!("watcher-{i}"), false, Duration::from_secs(600));
        let standing = join(
            &mut FlashSaleClient::new(channel.clone()),
            &sale.sale_id,
            &token,
        )
        .await;
        assert_eq!(standing.number, i + 1);
        joined.push((token, standing));
    }
    let calls_before = script_calls(&mesh);
    let started = std::time::Instant::now();
    let watchers = joined.into_iter().map(|(token, standing)| {
        let (mut client, sale_id) = (FlashSaleClient::new(channel.clone()), sale.sale_id.clone());
        async move {
            let (mut seen, mut streams) = (Vec::new(), 0);
            loop {
                // A busy machine may answer a watch UNAVAILABLE (a Redis call timed out):
                // the buyer watches again, as a client would.
                let mut stream = match watch(&mut client, &sale_id, &standing.ticket, &token).await
                {
                    Ok(stream) => stream,
                    Err(e) if e.code() == Code::Unavailable => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => panic!("#{}: watch refused: {e}", standing.number),
                };
                streams += 1;
                loop {
                    match stream.message().await {
                        Ok(Some(next)) => seen.push(next),
                        Ok(None) => break,
                        Err(e) if e.code() == Code::Unavailable => break,
                        Err(e) => panic!("#{}: watch failed: {e}", standing.number),
                    }
                }
                if seen
                    .last()
                    .is_some_and(|last| last.state != pb::QueueState::Waiting as i32)
                {
                    break;
                }
            }
            let last = seen.last().cloned().expect("a stream says something");
            let bought = if last.state == pb::QueueState::Admitted as i32 {
                let purchase = pb::PurchaseRequest {
                    sale_id,
                    quantity: 1,
                    idempotency_key: format!("watch-{}", standing.number),
                    purchase_token: last.purchase_token.clone(),
                };
                client.purchase(authorized(purchase, &token)).await.is_ok()
            } else {
                false
            };
            (standing.number, seen, bought, streams)
        }
    });
    let metrics_port = mesh
        .metrics_ports
        .iter()
        .find(|(name, _)| *name == "gateway")
        .unwrap()
        .1;
    let (results, during) = tokio::join!(futures::future::join_all(watchers), async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        crate::observability::scrape(metrics_port).await
    });
    let elapsed = started.elapsed();
    let calls = script_calls(&mesh) - calls_before;

    let mut admitted = Vec::new();
    let (mut bought, mut streams) = (0, 0);
    for (number, seen, got, watches) in &results {
        streams += watches;
        let waiting: Vec<u64> = seen
            .iter()
            .filter(|s| s.state == pb::QueueState::Waiting as i32)
            .map(|s| s.position)
            .collect();
        assert!(
            waiting.windows(2).all(|w| w[1] <= w[0]),
            "{number}: a buyer never moves back: {waiting:?}"
        );
        let last = seen.last().unwrap();
        match pb::QueueState::try_from(last.state).unwrap() {
            pb::QueueState::Admitted => admitted.push(*number),
            pb::QueueState::SoldOut => {}
            other => panic!("{number}: the stream ended {other:?} after {elapsed:?}"),
        }
        bought += usize::from(*got);
    }
    admitted.sort_unstable();
    assert_eq!(bought, 10, "the stock, bought with the watched tokens");
    // In arrival order: below the last number admitted, only buyers admitted in the same
    // tick (at most the active cap) may have heard the sell-out first.
    let highest = admitted.last().copied().unwrap_or(0);
    let passed_over = highest - admitted.len() as u64;
    assert!(passed_over < 3, "admitted in arrival order: {admitted:?}");
    assert!(admitted.len() < BUYERS as usize, "the rest heard sold out");
    // Per stream: its first standing; per buyer: the admitted standing and the purchase
    // (redeem, reservation, commit), with room to spare for the inventory's sweeper (which
    // shares the Redis); per tick: one read of the room. Asking every tick instead would take
    // BUYERS calls per tick.
    let ticks = (elapsed.as_millis() / 50) as u64 + 1;
    let bound = ticks + streams + 4 * BUYERS;
    eprintln!(
        "{calls} script calls in {elapsed:?} ({ticks} ticks, {streams} streams) for {BUYERS} watchers"
    );
    assert!(
        calls <= bound,
        "{calls} script calls in {elapsed:?} ({ticks} ticks, {streams} streams), above {bound}"
    );
    assert!(
        ticks * BUYERS > 3 * bound,
        "the run is long enough to tell: {ticks} ticks"
    );

    // The gateway's metrics: watches open while they ran and none after, and the standings
    // given by state.
    let sale_label = format!("sale=\"{}\"", sale.sale_id);
    let watching =
        |text: &str| crate::observability::sum(text, "flashsale_queue_watchers", &[&sale_label]);
    assert!(watching(&during) >= 1.0, "watches open:\n{during}");
    let after = crate::observability::scrape(metrics_port).await;
    assert_eq!(watching(&after), 0.0, "every watch closed:\n{after}");
    let standings = |state: &str| {
        crate::observability::sum(
            &after,
            "flashsale_queue_standings_total",
            &[&sale_label, &format!("state=\"{state}\"")],
        )
    };
    assert!(standings("admitted") >= admitted.len() as f64, "{after}");
    assert!(
        standings("sold_out") >= (BUYERS as usize - admitted.len()) as f64,
        "{after}"
    );
    assert!(standings("waiting") >= streams as f64 / 2.0, "{after}");
}

/// A sale that ends ends its watches (SALE_NOT_ACTIVE); a gateway that is told to stop ends its
/// WatchQueue streams cleanly (the buyer watches again elsewhere) and exits long before its
/// shutdown grace, instead of holding the drain up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_sale_and_a_draining_gateway_end_their_watches() {
    let mut mesh = Mesh::start("waiting room, gateway drains").await;
    let sale = create_room_sale(&mesh, 10, 1, 600_000, 0.001, 1).await;
    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.gateway).await);
    let signer = mesh.signer();
    let mut watches = Vec::new();
    for i in 0..3 {
        let token = signer.token(&format!("drained-{i}"), false, Duration::from_secs(600));
        let joined = join(&mut client, &sale.sale_id, &token).await;
        let mut stream = watch(&mut client, &sale.sale_id, &joined.ticket, &token)
            .await
            .unwrap();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.state, pb::QueueState::Waiting as i32);
        watches.push(tokio::spawn(async move { stream.message().await }));
    }

    // A sale that ends while buyers watch ends their watches: nobody will be admitted.
    let ending = create_room_sale(&mesh, 10, 1, 600_000, 0.001, 1).await;
    let token = signer.token("ended-watcher", false, Duration::from_secs(600));
    let joined = join(&mut client, &ending.sale_id, &token).await;
    let mut stream = watch(&mut client, &ending.sale_id, &joined.ticket, &token)
        .await
        .unwrap();
    assert_eq!(
        stream.message().await.unwrap().unwrap().state,
        pb::QueueState::Waiting as i32
    );
    let admin = signer.token("operator", true, Duration::from_secs(600));
    pb::sale_admin_client::SaleAdminClient::new(mesh.channel(mesh.ports.gateway).await)
        .end_sale(authorized(
            pb::EndSaleRequest {
                sale_id: ending.sale_id.clone(),
            },
            &admin,
        ))
        .await
        .unwrap();
    let end = stream.message().await.unwrap_err();
    assert_eq!(
        reason_of(&end).as_deref(),
        Some("SALE_NOT_ACTIVE"),
        "{end:?}"
    );

    let started = std::time::Instant::now();
    let status = mesh
        .terminate("gateway", Duration::from_secs(15))
        .await
        .expect("the gateway exits");
    assert!(status.success(), "the gateway exited with {status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drained in {:?}, the grace is 20 s",
        started.elapsed()
    );
    for watch in watches {
        let end = watch.await.unwrap();
        assert!(matches!(end, Ok(None)), "the stream ends cleanly: {end:?}");
    }
}

/// A room closed by a sell-out reopens when units come back: an unpaid order expires, its unit
/// returns to the stock, and a buyer still in line is admitted and buys it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_that_come_back_reopen_a_sold_out_room() {
    let mesh = Mesh::start("waiting room reopens, payment window 1 s").await;
    let sale = create_room_sale(&mesh, 1, 1, 1_000, 100.0, 2).await;
    let sale_id = sale.sale_id.clone();
    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.gateway).await);
    let signer = mesh.signer();
    let token = |user: &str| signer.token(user, false, Duration::from_secs(600));
    let (a, b, c) = (token("reopen-a"), token("reopen-b"), token("reopen-c"));

    // Two admitted at once (the active cap), the third in line.
    let (ja, jb, jc) = (
        join(&mut client, &sale_id, &a).await,
        join(&mut client, &sale_id, &b).await,
        join(&mut client, &sale_id, &c).await,
    );
    assert_eq!(ja.state, pb::QueueState::Admitted as i32, "{ja:?}");
    assert_eq!(jb.state, pb::QueueState::Admitted as i32, "{jb:?}");
    assert_eq!(jc.state, pb::QueueState::Waiting as i32, "{jc:?}");
    let buyer = client.clone();
    let buy = |token: &str, purchase_token: &str, key: &str| {
        let mut client = buyer.clone();
        let request = authorized(
            pb::PurchaseRequest {
                sale_id: sale_id.clone(),
                quantity: 1,
                idempotency_key: key.into(),
                purchase_token: purchase_token.into(),
            },
            token,
        );
        async move { client.purchase(request).await }
    };
    // A buys the one unit; B meets the sell-out at the inventory (once the gateway's
    // remembered sell-out, 500 ms, has lapsed), which closes the room.
    buy(&a, &ja.purchase_token, "a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let refused = buy(&b, &jb.purchase_token, "b").await.unwrap_err();
    assert_eq!(reason_of(&refused).as_deref(), Some("SOLD_OUT"));
    let room_key = format!("wr:{{wr:{sale_id}}}:room");
    let room_flag = || redis_cli(&mesh, &["HGET", &room_key, "soldout"]);
    assert_eq!(room_flag(), "1", "the room is closed");
    let closed = ask(&mut client, &sale_id, &jc.ticket, &c).await.unwrap();
    assert_eq!(closed.state, pb::QueueState::SoldOut as i32, "{closed:?}");

    // A does not pay: after the 1 s payment window the order expires and the unit comes
    // back. C, still holding a ticket, is admitted.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let admitted = loop {
        let standing = ask(&mut client, &sale_id, &jc.ticket, &c).await.unwrap();
        if standing.state == pb::QueueState::Admitted as i32 {
            break standing;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the room never reopened: {standing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(room_flag(), "0", "the room reopened");
    buy(&c, &admitted.purchase_token, "c")
        .await
        .expect("the returned unit sells to the buyer in line");
}
