//! The waiting room on a real Redis: admission order is arrival order under any schedule of
//! joins, polls, purchases and time (property test), and forged, expired, foreign and
//! replayed tickets and tokens are refused.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use flashsale_limiter::waiting_room::{RoomError, RoomSettings, Standing, WaitingRoom};
use flashsale_testkit::RedisServer;
use fred::prelude::*;
use proptest::prelude::*;

use crate::redis_config;

const SECRET: &str = "0123456789abcdef0123456789abcdef-room";

async fn connect(url: &str, secret: &str) -> WaitingRoom {
    let mut config = redis_config(url);
    config.command_timeout = Duration::from_secs(5);
    WaitingRoom::connect(&config, secret.to_owned().into())
        .await
        .unwrap()
}

/// A room opening at `opens` (Unix ms, Redis's clock).
fn settings(rate: f64, cap: u32, window_ms: u64, opens: i64) -> RoomSettings {
    RoomSettings {
        rate_per_second: rate,
        active_cap: cap,
        admission_window: Duration::from_millis(window_ms),
        ticket_ttl: Duration::from_secs(3_600),
        opens_at_ms: opens,
    }
}

/// The gateways' clocks: one 4 s slow, one right, one 4 s fast. Every call below is one
/// gateway's, made with its clock; what the room decides must not depend on which.
const SKEWS_MS: [i64; 3] = [-4_000, 0, 4_000];
const SLOW: usize = 0;
const USERS: usize = 10;

/// The machine's clock, which is also Redis's (the same host).
fn clock() -> i64 {
    flashsale_proto::time::now_ms()
}

#[derive(Debug, Clone)]
enum Step {
    /// Joining asks no gateway clock: the ticket's expiry is Redis's.
    Join(usize),
    Poll {
        user: usize,
        gateway: usize,
    },
    Buy {
        user: usize,
        gateway: usize,
    },
    /// The buyer lets their admission window pass, asks where they stand, and buys with what
    /// they hold through the slow gateway (whose own clock still finds the token fresh).
    BuyLate(usize),
    Wait(u64),
    /// A gateway reading the room for its watchers.
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    let (user, gateway) = (0..USERS, 0..SKEWS_MS.len());
    prop_oneof![
        3 => user.clone().prop_map(Step::Join),
        3 => (user.clone(), gateway.clone()).prop_map(|(user, gateway)| Step::Poll { user, gateway }),
        2 => (user.clone(), gateway).prop_map(|(user, gateway)| Step::Buy { user, gateway }),
        1 => user.prop_map(Step::BuyLate),
        2 => (20..1_200u64).prop_map(Step::Wait),
        1 => Just(Step::Tick),
    ]
}

/// One room's settings and what happens to it.
type Schedule = (u32, u32, u64, Vec<Step>);

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        1..20u32,
        1..4u32,
        1_000..2_000u64,
        proptest::collection::vec(step(), 1..40),
    )
}

/// Runs in real time (the room keeps Redis's clock), three rooms at once to keep it short.
#[test]
fn admission_order_is_arrival_order_whatever_the_gateways_clocks() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = runtime.block_on(RedisServer::start()).unwrap();
    let raw = runtime.block_on(async {
        let client = Client::new(Config::from_url(&redis.url()).unwrap(), None, None, None);
        client.init().await.unwrap();
        client
    });
    let room = runtime.block_on(connect(&redis.url(), SECRET));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 8,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let sale_no = std::sync::atomic::AtomicU32::new(0);
    let check = |schedule: Schedule| {
        let n = sale_no.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        check_schedule(&room, &raw, format!("room-{n}"), schedule)
    };
    runner
        .run(&(schedule(), schedule(), schedule()), |(a, b, c)| {
            runtime.block_on(async { tokio::join!(check(a), check(b), check(c)) });
            Ok(())
        })
        .unwrap();
}

fn room_key(sale: &str) -> String {
    format!("wr:{{wr:{sale}}}:room")
}

/// A buyer as the test follows them.
#[derive(Debug, Clone)]
struct Buyer {
    ticket: String,
    number: u64,
    token: Option<String>,
    /// A moment by which they were surely admitted (the first time they heard it).
    admitted_by: Option<i64>,
}

impl Buyer {
    fn hears(&mut self, highest_admitted: &mut u64, standing: Standing) {
        let number = self.number;
        match standing {
            Standing::Admitted { purchase_token, .. } => {
                *highest_admitted = (*highest_admitted).max(number);
                self.admitted_by.get_or_insert_with(clock);
                self.token = Some(purchase_token);
            }
            Standing::Waiting { position, .. } => {
                assert!(
                    number > *highest_admitted,
                    "#{number} waits after #{highest_admitted} was admitted"
                );
                assert!(position >= 1);
            }
            Standing::SoldOut => panic!("nothing sells out here"),
        }
    }
}

async fn check_schedule(room: &WaitingRoom, raw: &Client, sale: String, schedule: Schedule) {
    let (rate, cap, window_ms, steps) = schedule;
    let opens = clock() + 300;
    let settings = settings(f64::from(rate), cap, window_ms, opens);
    room.open(&sale, &settings).await.unwrap();
    let window = settings.admission_window;
    let mut buyers: Vec<Option<Buyer>> = vec![None; USERS];
    let mut last_number = 0;
    let mut highest_admitted = 0;
    for step in steps {
        match step {
            Step::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            Step::Join(user) => {
                let got = match room
                    .join(&sale, &format!("u{user}"), settings.ticket_ttl)
                    .await
                {
                    Ok(got) => got,
                    // They bought with their place: joining again gives no second one.
                    Err(RoomError::Used) => {
                        assert!(
                            buyers[user]
                                .as_ref()
                                .is_some_and(|b| b.number <= highest_admitted)
                        );
                        continue;
                    }
                    Err(e) => panic!("join: {e}"),
                };
                let known = buyers[user].as_ref().map(|b| b.number);
                if known != Some(got.number) {
                    // A first arrival, or a buyer whose window passed unused: the next place.
                    assert_eq!(got.number, last_number + 1, "numbers follow arrival");
                    if let Some(old) = known {
                        let watermark: u64 = raw.hget(room_key(&sale), "admitted").await.unwrap();
                        assert!(old <= watermark, "#{old} lost its place unadmitted");
                    }
                    last_number = got.number;
                    buyers[user] = Some(Buyer {
                        ticket: got.ticket.clone(),
                        number: got.number,
                        token: None,
                        admitted_by: None,
                    });
                }
                let buyer = buyers[user].as_mut().unwrap();
                buyer.hears(&mut highest_admitted, got.standing);
            }
            Step::Poll { user, gateway } => {
                let Some(buyer) = buyers[user].as_mut() else {
                    continue;
                };
                let now = clock() + SKEWS_MS[gateway];
                match room
                    .status(&sale, &format!("u{user}"), &buyer.ticket, now)
                    .await
                {
                    Ok(standing) => buyer.hears(&mut highest_admitted, standing),
                    Err(RoomError::Used | RoomError::Lapsed) => {
                        assert!(buyer.number <= highest_admitted)
                    }
                    Err(e) => panic!("poll: {e}"),
                }
            }
            Step::Tick => {
                let view = room.tick(&sale).await.unwrap();
                assert!(
                    view.admitted >= highest_admitted,
                    "the watermark {} fell below #{highest_admitted}",
                    view.admitted
                );
                assert!(!view.sold_out);
                // The reading agrees with what each buyer hears just after it.
                for (user, buyer) in buyers.iter().enumerate() {
                    let Some(Buyer { ticket, number, .. }) = buyer else {
                        continue;
                    };
                    match room
                        .status(&sale, &format!("u{user}"), ticket, clock())
                        .await
                    {
                        // Admission only moves on between the reading and the question.
                        Ok(Standing::Waiting { position, .. }) => {
                            let read = view.waiting(*number).map(|w| w.0);
                            assert!(read >= Some(position), "#{number}: {read:?} < {position}")
                        }
                        Ok(Standing::Admitted { .. })
                        | Err(RoomError::Used | RoomError::Lapsed) => {}
                        other => panic!("user {user}: {other:?}"),
                    }
                }
                highest_admitted = view.admitted;
            }
            Step::Buy { user, gateway } => {
                buy(
                    room,
                    &sale,
                    user,
                    gateway,
                    window,
                    &mut buyers,
                    highest_admitted,
                )
                .await
            }
            Step::BuyLate(user) => {
                let Some(by) = buyers[user].as_ref().and_then(|b| b.admitted_by) else {
                    continue;
                };
                let late = by + window.as_millis() as i64 + 20;
                tokio::time::sleep(Duration::from_millis((late - clock()).max(0) as u64)).await;
                let buyer = buyers[user].as_mut().unwrap();
                let asked = room
                    .status(&sale, &format!("u{user}"), &buyer.ticket, clock())
                    .await;
                if let Ok(standing) = asked {
                    buyer.hears(&mut highest_admitted, standing);
                }
                buy(
                    room,
                    &sale,
                    user,
                    SLOW,
                    window,
                    &mut buyers,
                    highest_admitted,
                )
                .await
            }
        }
        // The watermark never passes the arrivals, the credit earned, or the active cap.
        let admitted: u64 = raw.hget(room_key(&sale), "admitted").await.unwrap();
        let active: u64 = raw.zcard(format!("wr:{{wr:{sale}}}:active")).await.unwrap();
        assert!(admitted <= last_number);
        assert!(active <= u64::from(settings.active_cap), "{active} active");
        let earned = ((clock() - opens).max(0) as f64 * settings.rate_per_second / 1000.0).floor();
        assert!(
            admitted as f64 <= earned,
            "{admitted} admitted with {earned} earned"
        );
    }
}

/// Spends the buyer's token through `gateway`: it buys only inside the admission window (so
/// never more buyers than the active cap), and only once.
async fn buy(
    room: &WaitingRoom,
    sale: &str,
    user: usize,
    gateway: usize,
    window: Duration,
    buyers: &mut [Option<Buyer>],
    highest_admitted: u64,
) {
    let Some(buyer) = buyers[user].as_mut() else {
        return;
    };
    let Some(token) = buyer.token.take() else {
        return;
    };
    let name = format!("u{user}");
    let before = clock();
    match room
        .redeem(sale, &name, &token, "", before + SKEWS_MS[gateway])
        .await
    {
        Ok(number) => {
            assert!(number <= highest_admitted);
            let closes = buyer.admitted_by.unwrap() + window.as_millis() as i64;
            assert!(
                before < closes,
                "#{number} bought at {before}, its window closed by {closes}"
            );
            assert!(
                matches!(
                    room.redeem(sale, &name, &token, "", clock()).await,
                    Err(RoomError::Used | RoomError::Refused { .. })
                ),
                "a purchase token works once"
            );
        }
        // A fast gateway finds a token stale early: the buyer still holds it.
        Err(RoomError::Refused { reason, .. }) => {
            assert!(reason.contains("expired"), "{reason}");
            buyer.token = Some(token);
        }
        Err(RoomError::Used | RoomError::Lapsed) => {}
        Err(e) => panic!("buy: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_foreign_and_replayed_tickets_and_tokens_are_refused() {
    let redis = RedisServer::start().await.unwrap();
    let room = connect(&redis.url(), SECRET).await;
    let stranger = connect(&redis.url(), "another-secret-of-at-least-32-bytes!!").await;
    let now = clock();
    let rules = settings(10.0, 2, 60_000, now - 10_000);
    room.open("sale-a", &rules).await.unwrap();
    room.open("sale-b", &rules).await.unwrap();
    let ttl = Duration::from_secs(60);

    let alice = room.join("sale-a", "alice", ttl).await.unwrap();
    let Standing::Admitted { purchase_token, .. } = alice.standing.clone() else {
        panic!("first in an open room is admitted: {:?}", alice.standing);
    };
    let bob = room.join("sale-a", "bob", ttl).await.unwrap();
    assert_eq!(bob.number, 2);

    let refused = |result: Result<Standing, RoomError>, why: &str| match result {
        Err(RoomError::Refused { reason, .. }) => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected a refusal ({why}), got {other:?}"),
    };
    // Another buyer's ticket, another sale, another key, expired, garbage.
    refused(
        room.status("sale-a", "bob", &alice.ticket, now).await,
        "another buyer",
    );
    refused(
        room.status("sale-b", "alice", &alice.ticket, now).await,
        "another sale",
    );
    refused(
        stranger.status("sale-a", "alice", &alice.ticket, now).await,
        "signature",
    );
    refused(
        room.status("sale-a", "alice", &alice.ticket, now + 61_000)
            .await,
        "expired",
    );
    for garbage in ["", "x", "a.b", "..", "😀.😀"] {
        assert!(room.status("sale-a", "alice", garbage, now).await.is_err());
    }
    // A forged payload: alice's ticket rewritten to name bob, with alice's signature.
    let (payload, tag) = alice.ticket.split_once('.').unwrap();
    let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let forged = format!(
        "{}.{tag}",
        URL_SAFE_NO_PAD.encode(claims.replace("alice", "bob"))
    );
    refused(
        room.status("sale-a", "bob", &forged, now).await,
        "signature",
    );
    // A ticket is not a purchase token, and the other way round.
    assert!(matches!(
        room.redeem("sale-a", "alice", &alice.ticket, "", now).await,
        Err(RoomError::Refused { reason, .. }) if reason.contains("another kind")
    ));
    refused(
        room.status("sale-a", "alice", &purchase_token, now).await,
        "another kind",
    );
    // A token for bob's place (he is admitted too: cap 2) does not buy for alice.
    let Standing::Admitted {
        purchase_token: bobs,
        ..
    } = room
        .status("sale-a", "bob", &bob.ticket, now)
        .await
        .unwrap()
    else {
        panic!("bob is admitted");
    };
    assert!(
        room.redeem("sale-a", "alice", &bobs, "", now)
            .await
            .is_err()
    );
    // A retry of the same purchase (same idempotency key) passes; another purchase does not.
    assert_eq!(
        room.redeem("sale-a", "bob", &bobs, "buy-1", now)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        room.redeem("sale-a", "bob", &bobs, "buy-1", now)
            .await
            .unwrap(),
        2
    );
    assert!(matches!(
        room.redeem("sale-a", "bob", &bobs, "buy-2", now).await,
        Err(RoomError::Used)
    ));
    assert!(matches!(
        room.redeem("sale-a", "bob", &bobs, "", now).await,
        Err(RoomError::Used)
    ));

    // The purchase token works once; the ticket is spent with it.
    assert_eq!(
        room.redeem("sale-a", "alice", &purchase_token, "", now)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        room.redeem("sale-a", "alice", &purchase_token, "", now)
            .await,
        Err(RoomError::Used)
    ));
    assert!(matches!(
        room.status("sale-a", "alice", &alice.ticket, now).await,
        Err(RoomError::Used)
    ));
    assert!(
        matches!(
            room.redeem("sale-a", "alice", &purchase_token, "", now + 120_000)
                .await,
            Err(RoomError::Refused { .. })
        ),
        "expired tokens are refused before anything else"
    );

    // Sold out: every queued buyer hears it at once; nobody joins any more.
    let carol = room.join("sale-a", "carol", ttl).await.unwrap();
    room.sold_out("sale-a").await.unwrap();
    for (user, ticket) in [("carol", &carol.ticket)] {
        assert_eq!(
            room.status("sale-a", user, ticket, now).await.unwrap(),
            Standing::SoldOut
        );
    }
    assert!(matches!(
        room.join("sale-a", "dave", ttl).await,
        Err(RoomError::SoldOut)
    ));
    assert!(matches!(
        room.join("no-room", "dave", ttl).await,
        Err(RoomError::NoRoom(_))
    ));
}

/// The attack the room once let through: a cap of one, and a buyer who keeps asking so her
/// token keeps being renewed, buying after the slot went to the next buyer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_ends_at_its_deadline_however_often_the_buyer_asks() {
    let redis = RedisServer::start().await.unwrap();
    let room = connect(&redis.url(), SECRET).await;
    room.open("sale", &settings(50.0, 1, 1_000, clock() - 1_000))
        .await
        .unwrap();
    let ttl = Duration::from_secs(60);
    let alice = room.join("sale", "alice", ttl).await.unwrap();
    let Standing::Admitted { expires_at_ms, .. } = alice.standing else {
        panic!("alice is first: {:?}", alice.standing);
    };
    let bob = room.join("sale", "bob", ttl).await.unwrap();
    assert!(matches!(
        bob.standing,
        Standing::Waiting { position: 1, .. }
    ));

    tokio::time::sleep(Duration::from_millis(400)).await;
    let Standing::Admitted {
        purchase_token,
        expires_at_ms: again,
    } = room
        .status("sale", "alice", &alice.ticket, clock())
        .await
        .unwrap()
    else {
        panic!("alice is still admitted");
    };
    assert_eq!(again, expires_at_ms, "asking again gives the same deadline");

    tokio::time::sleep(Duration::from_millis(
        (expires_at_ms - clock()).max(0) as u64 + 50,
    ))
    .await;
    assert!(matches!(
        room.status("sale", "alice", &alice.ticket, clock()).await,
        Err(RoomError::Lapsed)
    ));
    assert!(matches!(
        room.status("sale", "bob", &bob.ticket, clock()).await,
        Ok(Standing::Admitted { .. })
    ));
    // A gateway whose clock runs 4 s slow finds her token fresh; Redis does not.
    assert!(matches!(
        room.redeem("sale", "alice", &purchase_token, "k", clock() - 4_000)
            .await,
        Err(RoomError::Lapsed)
    ));
    // She may queue again, behind bob.
    assert_eq!(room.join("sale", "alice", ttl).await.unwrap().number, 3);
}
