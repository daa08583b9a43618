use std::time::{Duration, Instant};

use flashsale_limiter::config::FailureMode;

use crate::{OK, OVER, World, descriptor, request, world};

const RULES: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 8 }\n";
const TIMEOUT: Duration = Duration::from_millis(40);

async fn timed(w: &World, key: &str) -> (i32, Duration) {
    let started = Instant::now();
    let r = w.ask(request("d", vec![descriptor(&[("k", key)])])).await;
    (r.overall_code, started.elapsed())
}

async fn outage(mode: FailureMode) -> Vec<i32> {
    let mut w = world(RULES, |c| {
        c.failure_mode = mode;
        c.redis_timeout = TIMEOUT;
        c.fallback_share = 0.5;
    })
    .await;
    assert_eq!(timed(&w, "warm").await.0, OK);
    w.redis.kill();
    let mut codes = Vec::new();
    for _ in 0..6 {
        let (code, took) = timed(&w, "x").await;
        // Bounded by the Redis timeout, not by a reconnect: without the
        // timeout a call would wait for Redis to come back. The slack is for
        // the gRPC round trip on a busy 2-core machine.
        assert!(
            took < 2 * TIMEOUT + Duration::from_millis(400),
            "{mode:?}: answered in {took:?}"
        );
        codes.push(code);
    }
    let errors = w
        .limiter
        .stats()
        .into_iter()
        .find(|s| s.rule == "k")
        .unwrap()
        .redis_errors;
    assert_eq!(
        errors, 6,
        "{mode:?}: every decision without Redis is counted"
    );

    w.redis.restart().await.unwrap();
    // A fresh key per try: a try that Redis counted but answered after the
    // timeout (the first script load on a cold server can take that long on a
    // busy machine) fell back locally, and must not spoil the next try's
    // count. Only Redis answers 7 for a fresh key: the fallbacks answer 8
    // (allow), 0 (deny) or 3 (half the limit, locally).
    let deadline = Instant::now() + Duration::from_secs(20);
    for attempt in 0.. {
        let key = format!("after-{attempt}");
        let r = w.ask(request("d", vec![descriptor(&[("k", &key)])])).await;
        if r.statuses[0].limit_remaining == 7 {
            break; // counted in Redis again
        }
        assert!(Instant::now() < deadline, "{mode:?}: never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    codes
}

#[tokio::test]
async fn fail_open_allows_while_redis_is_away() {
    assert_eq!(outage(FailureMode::Allow).await, vec![OK; 6]);
}

#[tokio::test]
async fn fail_closed_refuses_while_redis_is_away() {
    assert_eq!(outage(FailureMode::Deny).await, vec![OVER; 6]);
}

#[tokio::test]
async fn local_fallback_applies_a_share_of_the_limit() {
    // 8 per minute with a 0.5 share: 4 pass locally, then refusals.
    assert_eq!(
        outage(FailureMode::Local).await,
        vec![OK, OK, OK, OK, OVER, OVER]
    );
}
