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
const OPENS: i64 = 1_900_000_000_000;

async fn connect(url: &str, secret: &str) -> WaitingRoom {
    let mut config = redis_config(url);
    config.command_timeout = Duration::from_secs(5);
    WaitingRoom::connect(&config, secret.to_owned().into())
        .await
        .unwrap()
}

fn settings(rate: f64, cap: u32, window_ms: u64) -> RoomSettings {
    RoomSettings {
        rate_per_second: rate,
        active_cap: cap,
        admission_window: Duration::from_millis(window_ms),
        ticket_ttl: Duration::from_secs(3_600),
        opens_at_ms: OPENS,
    }
}

#[derive(Debug, Clone)]
enum Step {
    Join(usize),
    Poll(usize),
    Buy(usize),
    Wait(u64),
    /// A gateway reading the room for its watchers.
    Tick,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..40usize).prop_map(Step::Join),
        3 => (0..40usize).prop_map(Step::Poll),
        2 => (0..40usize).prop_map(Step::Buy),
        2 => (1..3_000u64).prop_map(Step::Wait),
        1 => Just(Step::Tick),
    ]
}

#[test]
fn admission_order_is_arrival_order() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let redis = runtime.block_on(RedisServer::start()).unwrap();
    let raw = runtime.block_on(async {
        let client = Client::new(Config::from_url(&redis.url()).unwrap(), None, None, None);
        client.init().await.unwrap();
        client
    });
    let room = runtime.block_on(connect(&redis.url(), SECRET));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let case = (
        1..40u32,
        1..6u32,
        1_000..5_000u64,
        proptest::collection::vec(step(), 1..160),
    );
    let sale_no = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&case, |(rate, cap, window, steps)| {
            let n = sale_no.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let sale = format!("room-{n}");
            runtime.block_on(check_schedule(
                &room,
                &raw,
                &sale,
                settings(f64::from(rate), cap, window),
                &steps,
            ));
            Ok(())
        })
        .unwrap();
}

async fn check_schedule(
    room: &WaitingRoom,
    raw: &Client,
    sale: &str,
    settings: RoomSettings,
    steps: &[Step],
) {
    room.open(sale, &settings).await.unwrap();
    let window = settings.admission_window;
    let mut now = OPENS - 1_000;
    let mut tickets: Vec<Option<(String, u64)>> = vec![None; 40];
    let mut last_number = 0;
    let mut highest_admitted = 0;
    let mut tokens: Vec<Option<String>> = vec![None; 40];
    let observe = |highest_admitted: &mut u64, user: usize, number: u64, standing: &Standing| {
        match standing {
            Standing::Admitted { .. } => *highest_admitted = (*highest_admitted).max(number),
            Standing::Waiting { position, .. } => {
                assert!(
                    number > *highest_admitted,
                    "user {user} (#{number}) waits after #{highest_admitted} was admitted"
                );
                assert!(*position >= 1);
            }
            Standing::SoldOut => panic!("nothing sells out here"),
        }
    };
    for step in steps {
        match *step {
            Step::Wait(ms) => now += ms as i64,
            Step::Join(user) => {
                let got = room
                    .join(sale, &format!("u{user}"), settings.ticket_ttl, window, now)
                    .await
                    .unwrap();
                match &tickets[user] {
                    Some((_, number)) => {
                        assert_eq!(got.number, *number, "joining again keeps the place")
                    }
                    None => {
                        assert_eq!(got.number, last_number + 1, "numbers follow arrival");
                        last_number = got.number;
                        tickets[user] = Some((got.ticket.clone(), got.number));
                    }
                }
                observe(&mut highest_admitted, user, got.number, &got.standing);
                if let Standing::Admitted { purchase_token, .. } = got.standing {
                    tokens[user] = Some(purchase_token);
                }
            }
            Step::Poll(user) => {
                let Some((ticket, number)) = tickets[user].clone() else {
                    continue;
                };
                match room
                    .status(sale, &format!("u{user}"), &ticket, window, now)
                    .await
                {
                    Ok(standing) => {
                        observe(&mut highest_admitted, user, number, &standing);
                        if let Standing::Admitted { purchase_token, .. } = standing {
                            tokens[user] = Some(purchase_token);
                        }
                    }
                    Err(RoomError::Used) => assert!(number <= highest_admitted),
                    Err(e) => panic!("poll: {e}"),
                }
            }
            Step::Tick => {
                let view = room.tick(sale, now).await.unwrap();
                assert!(
                    view.admitted >= highest_admitted,
                    "the watermark {} fell below #{highest_admitted}",
                    view.admitted
                );
                assert!(!view.sold_out);
                // The reading agrees with what each buyer hears at the same moment.
                for (user, ticket) in tickets.iter().enumerate() {
                    let Some((ticket, number)) = ticket else {
                        continue;
                    };
                    match room
                        .status(sale, &format!("u{user}"), ticket, window, now)
                        .await
                    {
                        Ok(Standing::Waiting { position, .. }) => {
                            assert_eq!(view.waiting(*number).map(|w| w.0), Some(position))
                        }
                        Ok(Standing::Admitted { .. }) | Err(RoomError::Used) => {
                            assert!(*number <= view.admitted, "#{number} ahead of the reading")
                        }
                        other => panic!("user {user}: {other:?}"),
                    }
                }
                highest_admitted = view.admitted;
            }
            Step::Buy(user) => {
                let Some(token) = tokens[user].take() else {
                    continue;
                };
                let spent = room
                    .redeem(sale, &format!("u{user}"), &token, "", now)
                    .await;
                match spent {
                    Ok(number) => assert!(number <= highest_admitted),
                    // An admission window may have passed since the token was issued.
                    Err(RoomError::Refused { reason, .. }) => assert!(reason.contains("expired")),
                    Err(RoomError::Used) => {}
                    Err(e) => panic!("buy: {e}"),
                }
                assert!(
                    matches!(
                        room.redeem(sale, &format!("u{user}"), &token, "", now)
                            .await,
                        Err(RoomError::Used | RoomError::Refused { .. })
                    ),
                    "a purchase token works once"
                );
            }
        }
        // The watermark never passes the arrivals, the credit earned, or the active cap.
        let key = format!("wr:{{wr:{sale}}}:room");
        let admitted: u64 = raw.hget(&key, "admitted").await.unwrap();
        let active: u64 = raw.zcard(format!("wr:{{wr:{sale}}}:active")).await.unwrap();
        assert!(admitted <= last_number);
        assert!(active <= u64::from(settings.active_cap), "{active} active");
        let earned = ((now - OPENS).max(0) as f64 * settings.rate_per_second / 1000.0).floor();
        assert!(
            admitted as f64 <= earned,
            "{admitted} admitted with {earned} earned"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_expired_foreign_and_replayed_tickets_and_tokens_are_refused() {
    let redis = RedisServer::start().await.unwrap();
    let room = connect(&redis.url(), SECRET).await;
    let stranger = connect(&redis.url(), "another-secret-of-at-least-32-bytes!!").await;
    let rules = settings(10.0, 2, 60_000);
    room.open("sale-a", &rules).await.unwrap();
    room.open("sale-b", &rules).await.unwrap();
    let window = rules.admission_window;
    let ttl = Duration::from_secs(60);
    let now = OPENS + 10_000;

    let alice = room
        .join("sale-a", "alice", ttl, window, now)
        .await
        .unwrap();
    let Standing::Admitted { purchase_token, .. } = alice.standing.clone() else {
        panic!("first in an open room is admitted: {:?}", alice.standing);
    };
    let bob = room.join("sale-a", "bob", ttl, window, now).await.unwrap();
    assert_eq!(bob.number, 2);

    let refused = |result: Result<Standing, RoomError>, why: &str| match result {
        Err(RoomError::Refused { reason, .. }) => assert!(reason.contains(why), "{reason}"),
        other => panic!("expected a refusal ({why}), got {other:?}"),
    };
    // Another buyer's ticket, another sale, another key, expired, garbage.
    refused(
        room.status("sale-a", "bob", &alice.ticket, window, now)
            .await,
        "another buyer",
    );
    refused(
        room.status("sale-b", "alice", &alice.ticket, window, now)
            .await,
        "another sale",
    );
    refused(
        stranger
            .status("sale-a", "alice", &alice.ticket, window, now)
            .await,
        "signature",
    );
    refused(
        room.status("sale-a", "alice", &alice.ticket, window, now + 61_000)
            .await,
        "expired",
    );
    for garbage in ["", "x", "a.b", "..", "😀.😀"] {
        assert!(
            room.status("sale-a", "alice", garbage, window, now)
                .await
                .is_err()
        );
    }
    // A forged payload: alice's ticket rewritten to name bob, with alice's signature.
    let (payload, tag) = alice.ticket.split_once('.').unwrap();
    let claims = String::from_utf8(URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    let forged = format!(
        "{}.{tag}",
        URL_SAFE_NO_PAD.encode(claims.replace("alice", "bob"))
    );
    refused(
        room.status("sale-a", "bob", &forged, window, now).await,
        "signature",
    );
    // A ticket is not a purchase token, and the other way round.
    assert!(matches!(
        room.redeem("sale-a", "alice", &alice.ticket, "", now).await,
        Err(RoomError::Refused { reason, .. }) if reason.contains("another kind")
    ));
    refused(
        room.status("sale-a", "alice", &purchase_token, window, now)
            .await,
        "another kind",
    );
    // A token for bob's place (he is admitted too: cap 2) does not buy for alice.
    let Standing::Admitted {
        purchase_token: bobs,
        ..
    } = room
        .status("sale-a", "bob", &bob.ticket, window, now)
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
        room.status("sale-a", "alice", &alice.ticket, window, now)
            .await,
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
    let carol = room
        .join("sale-a", "carol", ttl, window, now)
        .await
        .unwrap();
    room.sold_out("sale-a", now).await.unwrap();
    for (user, ticket) in [("carol", &carol.ticket)] {
        assert_eq!(
            room.status("sale-a", user, ticket, window, now)
                .await
                .unwrap(),
            Standing::SoldOut
        );
    }
    assert!(matches!(
        room.join("sale-a", "dave", ttl, window, now).await,
        Err(RoomError::SoldOut)
    ));
    assert!(matches!(
        room.join("no-room", "dave", ttl, window, now).await,
        Err(RoomError::NoRoom(_))
    ));
}
