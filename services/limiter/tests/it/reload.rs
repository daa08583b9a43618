use std::time::Duration;

use flashsale_proto::v1::{ListRulesRequest, ReloadRulesRequest, limiter_client::LimiterClient};
use tonic::Code;

use crate::{OK, OVER, descriptor, replace, request, world};

const TWO: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 2 }\n";
const FIVE: &str =
    "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: hour, requests_per_unit: 5 }\n";
const BROKEN: &str = "domain: d\ndescriptors:\n  - key: k\n    rate_limit: { unit: fortnight, requests_per_unit: 5 }\n";

/// The file is edited while the limiter runs: a valid edit takes effect, a broken one is
/// refused and the rules in force stay.
#[tokio::test]
async fn reload_picks_up_good_files_and_keeps_the_old_rules_on_a_bad_one() {
    let w = world(TWO, |_| {}).await;
    let mut admin = LimiterClient::new(w.channel.clone());
    let first = admin
        .list_rules(ListRulesRequest {
            domain: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.rules.len(), 1);
    assert_eq!(
        (
            first.rules[0].requests_per_unit,
            first.rules[0].unit.as_str()
        ),
        (2, "minute")
    );

    replace(&w.rules_path(), BROKEN);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let still = admin
        .list_rules(ListRulesRequest {
            domain: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        still.digest, first.digest,
        "the broken file was not applied"
    );
    let refused = admin.reload_rules(ReloadRulesRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("fortnight"),
        "{}",
        refused.message()
    );
    // The old limit still limits.
    for _ in 0..2 {
        assert_eq!(
            w.ask(request("d", vec![descriptor(&[("k", "v")])]))
                .await
                .overall_code,
            OK
        );
    }
    assert_eq!(
        w.ask(request("d", vec![descriptor(&[("k", "v")])]))
            .await
            .overall_code,
        OVER
    );

    replace(&w.rules_path(), FIVE);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = admin
            .list_rules(ListRulesRequest { domain: "d".into() })
            .await
            .unwrap()
            .into_inner();
        if now.rules[0].requests_per_unit == 5 {
            assert_ne!(now.digest, first.digest);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new file was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = w.ask(request("d", vec![descriptor(&[("k", "v")])])).await;
    assert_eq!(
        (r.overall_code, r.statuses[0].limit_remaining),
        (OK, 4),
        "the new limit applies"
    );
}
