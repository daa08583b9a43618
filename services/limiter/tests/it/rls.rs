use std::time::Duration;

use fred::prelude::*;
use tonic::Code;

use crate::{OK, OVER, World, descriptor, request, world};

const RULES: &str = r#"
domain: flashsale
descriptors:
  - key: user
    rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: sale
    rate_limit: { unit: minute, requests_per_unit: 3 }
  - key: tight
    rate_limit: { unit: minute, requests_per_unit: 1 }
  - key: shadow
    shadow_mode: true
    rate_limit: { unit: minute, requests_per_unit: 2 }
  - key: vip
    unlimited: true
  - key: sliding
    algorithm: sliding_window
    rate_limit: { unit: hour, requests_per_unit: 5 }
  - key: local
    algorithm: local_gcra
    rate_limit: { unit: minute, requests_per_unit: 4 }
  - key: weekly
    rate_limit: { unit: week, requests_per_unit: 2 }
"#;

async fn keys_in_redis(w: &World) -> i64 {
    let client = Builder::from_config(Config::from_url(&w.redis.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    client.dbsize().await.unwrap()
}

#[tokio::test]
async fn a_limit_of_20_per_minute_counts_down_and_the_21st_is_over() {
    let w = world(RULES, |_| {}).await;
    for expected in (0..20).rev() {
        let r = w
            .ask(request("flashsale", vec![descriptor(&[("user", "alice")])]))
            .await;
        assert_eq!(r.overall_code, OK);
        let status = &r.statuses[0];
        assert_eq!(status.limit_remaining, expected);
        let limit = status.current_limit.as_ref().unwrap();
        assert_eq!(
            (limit.requests_per_unit, limit.unit),
            (20, 2),
            "20 per MINUTE"
        );
        let reset = status.duration_until_reset.as_ref().unwrap();
        assert!(reset.seconds <= 60);
    }
    let r = w
        .ask(request("flashsale", vec![descriptor(&[("user", "alice")])]))
        .await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(
        (r.statuses[0].code, r.statuses[0].limit_remaining),
        (OVER, 0)
    );
    let headers: Vec<(&str, &str)> = r
        .response_headers_to_add
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_str()))
        .collect();
    assert!(
        headers.contains(&("ratelimit-limit", "20"))
            && headers.contains(&("ratelimit-remaining", "0")),
        "{headers:?}"
    );
    // Another user has a counter of their own.
    let r = w
        .ask(request("flashsale", vec![descriptor(&[("user", "bob")])]))
        .await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 19));
    let stats = w.limiter.stats();
    let user = stats.iter().find(|s| s.rule == "user").unwrap();
    assert_eq!((user.total, user.over_limit), (22, 1));
    assert!(user.near_limit >= 4, "{user:?}");
}

#[tokio::test]
async fn a_descriptor_over_its_limit_does_not_charge_its_siblings() {
    let w = world(RULES, |_| {}).await;
    let both = || {
        request(
            "flashsale",
            vec![descriptor(&[("sale", "s1")]), descriptor(&[("tight", "t")])],
        )
    };
    let r = w.ask(both()).await;
    assert_eq!(r.overall_code, OK);
    assert_eq!(
        (r.statuses[0].limit_remaining, r.statuses[1].limit_remaining),
        (2, 0)
    );
    for _ in 0..5 {
        let r = w.ask(both()).await;
        assert_eq!(r.overall_code, OVER);
        assert_eq!((r.statuses[0].code, r.statuses[1].code), (OK, OVER));
        assert_eq!(
            r.statuses[0].limit_remaining, 2,
            "the sale counter was not charged for refused requests"
        );
    }
    // The sale limit still has its two requests left.
    for left in [1, 0] {
        let r = w
            .ask(request("flashsale", vec![descriptor(&[("sale", "s1")])]))
            .await;
        assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, left));
    }
    // The same holds with a local (in-memory) sibling.
    let mixed = || {
        request(
            "flashsale",
            vec![descriptor(&[("local", "l")]), descriptor(&[("tight", "t")])],
        )
    };
    for _ in 0..6 {
        assert_eq!(w.ask(mixed()).await.overall_code, OVER);
    }
    let r = w
        .ask(request("flashsale", vec![descriptor(&[("local", "l")])]))
        .await;
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (OK, 3),
        "local counter untouched by refusals"
    );
}

#[tokio::test]
async fn shadow_mode_reports_ok_but_counts() {
    let w = world(RULES, |_| {}).await;
    for i in 0..5 {
        let r = w
            .ask(request("flashsale", vec![descriptor(&[("shadow", "x")])]))
            .await;
        assert_eq!(r.overall_code, OK, "call {i}");
        assert_eq!(r.statuses[0].code, OK);
    }
    let stats = w.limiter.stats();
    let shadow = stats.iter().find(|s| s.rule == "shadow").unwrap();
    assert_eq!(
        (shadow.total, shadow.shadow_mode, shadow.over_limit),
        (5, 3, 0)
    );
}

#[tokio::test]
async fn unlimited_never_touches_redis() {
    let mut w = world(RULES, |_| {}).await;
    for _ in 0..50 {
        let r = w
            .ask(request("flashsale", vec![descriptor(&[("vip", "v")])]))
            .await;
        assert_eq!(r.overall_code, OK);
        assert!(r.statuses[0].current_limit.is_none());
    }
    assert_eq!(keys_in_redis(&w).await, 0);
    w.redis.kill();
    let r = w
        .ask(request("flashsale", vec![descriptor(&[("vip", "v")])]))
        .await;
    assert_eq!(r.overall_code, OK);
    let stats = w.limiter.stats();
    assert_eq!(
        stats.iter().find(|s| s.rule == "vip").unwrap().redis_errors,
        0
    );
}

#[tokio::test]
async fn hits_addend_zero_only_checks_and_others_charge_more() {
    let w = world(RULES, |_| {}).await;
    let mut check = descriptor(&[("user", "carol")]);
    check.hits_addend = Some(0);
    for _ in 0..3 {
        let r = w.ask(request("flashsale", vec![check.clone()])).await;
        assert_eq!(
            (r.overall_code, r.statuses[0].limit_remaining),
            (OK, 20),
            "nothing charged"
        );
    }
    let mut five = descriptor(&[("user", "carol")]);
    five.hits_addend = Some(5);
    let r = w.ask(request("flashsale", vec![five])).await;
    assert_eq!(r.statuses[0].limit_remaining, 15);
    let mut req = request("flashsale", vec![descriptor(&[("user", "carol")])]);
    req.hits_addend = 15;
    let r = w.ask(req.clone()).await;
    assert_eq!((r.overall_code, r.statuses[0].limit_remaining), (OK, 0));
    let r = w.ask(request("flashsale", vec![check])).await;
    assert_eq!(
        r.overall_code, OVER,
        "a check-only call sees the limit reached"
    );
    // The same for a local limit.
    let mut local_check = descriptor(&[("local", "l0")]);
    local_check.hits_addend = Some(0);
    assert_eq!(
        w.ask(request("flashsale", vec![local_check.clone()]))
            .await
            .statuses[0]
            .limit_remaining,
        4
    );
    assert_eq!(
        w.ask(request("flashsale", vec![local_check]))
            .await
            .statuses[0]
            .limit_remaining,
        4
    );
}

#[tokio::test]
async fn sliding_windows_and_weeks_and_overrides() {
    let w = world(RULES, |_| {}).await;
    for _ in 0..5 {
        assert_eq!(
            w.ask(request("flashsale", vec![descriptor(&[("sliding", "s")])]))
                .await
                .overall_code,
            OK
        );
    }
    assert_eq!(
        w.ask(request("flashsale", vec![descriptor(&[("sliding", "s")])]))
            .await
            .overall_code,
        OVER
    );
    let r = w
        .ask(request("flashsale", vec![descriptor(&[("weekly", "w")])]))
        .await;
    assert_eq!(
        r.statuses[0].current_limit.as_ref().unwrap().unit,
        7,
        "WEEK = 7 on the wire"
    );
    // A caller-supplied limit replaces the configured one.
    let mut overridden = descriptor(&[("user", "dave")]);
    overridden.limit = Some(flashsale_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride {
        requests_per_unit: 2,
        unit: 1,
    });
    let r = w.ask(request("flashsale", vec![overridden.clone()])).await;
    assert_eq!(
        r.statuses[0]
            .current_limit
            .as_ref()
            .unwrap()
            .requests_per_unit,
        2
    );
    assert_eq!(r.statuses[0].limit_remaining, 1);
}

#[tokio::test]
async fn unknown_domains_and_descriptors_pass_and_bad_requests_are_refused() {
    let w = world(RULES, |_| {}).await;
    let r = w
        .ask(request("elsewhere", vec![descriptor(&[("user", "a")])]))
        .await;
    assert_eq!((r.overall_code, r.statuses.len()), (OK, 1));
    assert!(r.statuses[0].current_limit.is_none());
    let r = w
        .ask(request(
            "flashsale",
            vec![descriptor(&[("nothing", "matches")])],
        ))
        .await;
    assert_eq!(r.overall_code, OK);
    assert!(r.statuses[0].current_limit.is_none());

    let mut client = w.client.clone();
    for bad in [
        request("", vec![descriptor(&[("user", "a")])]),
        request("flashsale", vec![]),
        request("flashsale", vec![descriptor(&[])]),
    ] {
        let status = client.should_rate_limit(bad).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
    }
    let mut bad_unit = descriptor(&[("user", "a")]);
    bad_unit.limit = Some(flashsale_proto::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::RateLimitOverride {
        requests_per_unit: 2,
        unit: 99,
    });
    let status = client
        .should_rate_limit(request("flashsale", vec![bad_unit]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let _ = Duration::ZERO;
}
