//! The edge under attack: requests shaped to slip past a limit, each tried against the sidecar
//! or the RLS on a real Redis. Each test failed on the code before its fix.

use std::time::Duration;

use flashsale_limiter::{
    config::{SidecarConfig, Source},
    layer::SALE_HEADER,
};
use flashsale_proto::v1::{ListRulesRequest, limiter_client::LimiterClient};
use tonic::{Code, metadata::MetadataValue};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{OK, OVER, descriptor, replace, request, world};

const SALE_LIMIT: &str = "domain: flashsale\ndescriptors:\n  - key: sale\n    rate_limit: { unit: hour, requests_per_unit: 3 }\n";

/// A health service behind a sidecar asking for `descriptors`, with `hops` trusted proxies in
/// front of it; the sidecar's address.
async fn sidecar(
    w: &crate::World,
    descriptors: Vec<Vec<Source>>,
    hops: u32,
) -> std::net::SocketAddr {
    let (upstream_addr, _reporter) = crate::sidecar::upstream().await;
    let config = SidecarConfig {
        upstream: format!("http://{upstream_addr}"),
        domain: "flashsale".into(),
        descriptors,
        exempt: vec![],
        xff_num_trusted_hops: hops,
        ..SidecarConfig::default()
    };
    crate::sidecar::proxy(w, config).await
}

/// Ten calls with the sale header set to `value`: how many passed, and the codes of the rest.
async fn ten_calls(
    addr: std::net::SocketAddr,
    value: MetadataValue<tonic::metadata::Ascii>,
) -> (usize, Vec<Code>) {
    ten_calls_with(addr, |_| vec![(SALE_HEADER, value.clone())]).await
}

/// Ten calls, the `i`th with the headers `headers(i)`: how many passed, and the codes of the
/// rest.
async fn ten_calls_with(
    addr: std::net::SocketAddr,
    headers: impl Fn(usize) -> Vec<(&'static str, MetadataValue<tonic::metadata::Ascii>)>,
) -> (usize, Vec<Code>) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let (mut passed, mut refused) = (0, Vec::new());
    for i in 0..10 {
        let mut call = tonic::Request::new(HealthCheckRequest::default());
        for (name, value) in headers(i) {
            call.metadata_mut().insert(name, value);
        }
        match client.check(call).await {
            Ok(_) => passed += 1,
            Err(status) => refused.push(status.code()),
        }
    }
    (passed, refused)
}

/// Finding 1 (and the non-ASCII half of finding 2): a descriptor value the limiter cannot judge
/// (over its size bound, or not text) made the layer let the call through unchecked. Ten calls
/// with such a header get nothing past the limit of 3; a well-formed value still gets exactly 3.
#[tokio::test]
async fn attack_01_a_header_the_limiter_cannot_judge_unlocks_no_limit() {
    let w = world(SALE_LIMIT, |_| {}).await;
    let addr = sidecar(&w, vec![vec![Source::Sale]], 0).await;
    let unjudgeable = [
        (
            "an oversized",
            MetadataValue::try_from("s".repeat(1_025)).unwrap(),
        ),
        (
            "a non-ASCII",
            MetadataValue::try_from("caf\u{e9}".as_bytes()).unwrap(),
        ),
    ];
    for (what, value) in unjudgeable {
        let (passed, refused) = ten_calls(addr, value).await;
        assert!(passed <= 3, "{what} sale header let {passed} of 10 through");
        assert!(
            refused.iter().all(|c| *c == Code::InvalidArgument),
            "{refused:?}"
        );
    }

    let (passed, refused) = ten_calls(addr, MetadataValue::from_static("sale-1")).await;
    assert_eq!(passed, 3, "{refused:?}");
    assert!(
        refused.iter().all(|c| *c == Code::ResourceExhausted),
        "{refused:?}"
    );
}

/// Finding 4: the first `x-forwarded-for` entry was taken as the caller, so a caller writing a
/// new address into it each time had a fresh budget each time. With no trusted proxy the
/// caller is the connection's peer; with one, the address that proxy appended, whatever the
/// caller wrote to its left.
#[tokio::test]
async fn attack_04_a_forged_forwarded_for_buys_no_fresh_budget() {
    let rules = "domain: flashsale\ndescriptors:\n  - key: ip\n    rate_limit: { unit: hour, requests_per_unit: 6 }\n";
    let w = world(rules, |_| {}).await;
    let forged = |i: usize| {
        let xff = format!("198.51.100.{i}");
        vec![("x-forwarded-for", MetadataValue::try_from(xff).unwrap())]
    };
    let direct = sidecar(&w, vec![vec![Source::Ip]], 0).await;
    let (passed, refused) = ten_calls_with(direct, forged).await;
    assert_eq!(passed, 6, "one budget for the peer: {refused:?}");

    let behind_a_proxy = sidecar(&w, vec![vec![Source::Ip]], 1).await;
    let (passed, refused) = ten_calls_with(behind_a_proxy, |i| {
        let xff = format!("198.51.100.{i}, 203.0.113.7");
        vec![("x-forwarded-for", MetadataValue::try_from(xff).unwrap())]
    })
    .await;
    assert_eq!(
        passed, 6,
        "one budget for the address the proxy saw: {refused:?}"
    );
}

/// Finding 9: the counter's key held the limit, so a rules reload that changed
/// `requests_per_unit` started the window's count from zero.
#[tokio::test]
async fn attack_09_a_reload_keeps_the_count_of_a_changed_limit() {
    let five = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: hour, requests_per_unit: 5 }\n";
    let four = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: hour, requests_per_unit: 4 }\n";
    let w = world(five, |_| {}).await;
    for _ in 0..3 {
        let r = w.ask(request("d", vec![descriptor(&[("k", "v")])])).await;
        assert_eq!(r.overall_code, OK);
    }
    let mut admin = LimiterClient::new(w.channel.clone());
    let digest = |admin: &mut LimiterClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            admin
                .list_rules(ListRulesRequest::default())
                .await
                .unwrap()
                .into_inner()
                .digest
        }
    };
    let before = digest(&mut admin).await;
    replace(&w.rules_path(), four);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while digest(&mut admin).await == before {
        assert!(std::time::Instant::now() < deadline, "the new rules load");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = w.ask(request("d", vec![descriptor(&[("k", "v")])])).await;
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (OK, 0),
        "the fourth call of the hour is the last the new limit allows"
    );
    let r = w.ask(request("d", vec![descriptor(&[("k", "v")])])).await;
    assert_eq!(r.overall_code, OVER);
}

/// Finding 9: a descriptor's `hits_addend` above `i64::MAX` turned negative on its way to
/// Redis and was never over the limit. An addend no limit can hold is refused with a reason.
#[tokio::test]
async fn attack_09_an_absurd_hits_addend_is_refused() {
    let w = world(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: hour, requests_per_unit: 5 }\n",
        |_| {},
    )
    .await;
    for hits in [u64::MAX, i64::MAX as u64 + 1, u64::from(u32::MAX) + 1] {
        let mut absurd = descriptor(&[("k", "v")]);
        absurd.hits_addend = Some(hits);
        let answer = w
            .client
            .clone()
            .should_rate_limit(request("d", vec![absurd]))
            .await;
        match answer {
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{status:?}"),
            Ok(r) => panic!("hits_addend {hits} was judged: {:?}", r.into_inner()),
        }
    }
    let r = w.ask(request("d", vec![descriptor(&[("k", "v")])])).await;
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (OK, 4),
        "nothing was charged by the refused calls"
    );
}
