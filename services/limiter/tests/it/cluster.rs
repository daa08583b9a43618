//! Global windows on a 3-master Redis Cluster: each domain's counters share its hash tag, so
//! one script call stays single-slot, domains spread over the masters, and two limiter
//! replicas together admit exactly a window's limit per domain.

use std::collections::BTreeSet;

use flashsale_limiter::{
    global::{GlobalCheck, GlobalLimits},
    rules::{Algorithm, RateLimit, Unit},
};
use flashsale_testkit::RedisCluster;
use futures::future::join_all;

use crate::redis_config;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_windows_hold_exactly_on_a_cluster_across_replicas() {
    flashsale_runtime::telemetry::init_for_tests();
    let cluster = RedisCluster::start(3, 0).await.expect("cluster starts");
    let config = redis_config(&cluster.url());
    let timeout = std::time::Duration::from_secs(10);
    let replicas = [
        GlobalLimits::connect(&config, "fs", timeout).await.unwrap(),
        GlobalLimits::connect(&config, "fs", timeout).await.unwrap(),
    ];

    let now_ms = flashsale_proto::time::now_ms() as u64;
    for algorithm in [Algorithm::FixedWindow, Algorithm::SlidingWindow] {
        // Domains until every master holds one's counters.
        let (mut domains, mut masters) = (Vec::new(), BTreeSet::new());
        for i in 0.. {
            let domain = format!("shop-{i}-{}", algorithm.as_str());
            masters.insert(
                cluster
                    .master_of(&format!("{{rl:{domain}}}"))
                    .await
                    .unwrap(),
            );
            domains.push(domain);
            if masters.len() == 3 && domains.len() >= 6 {
                break;
            }
        }
        // 300 requests per domain, split over both replicas, each charging the sale's window
        // and the buyer's own (limit 50 per hour per sale, 2 per buyer).
        let replicas = &replicas;
        let calls = domains.iter().flat_map(|domain| {
            (0..300).map(move |i| {
                let limits = replicas[i % 2].clone();
                let checks = vec![
                    GlobalCheck {
                        key: "sale=hot".into(),
                        algorithm,
                        limit: RateLimit {
                            unit: Unit::Hour,
                            requests_per_unit: 50,
                        },
                        hits: 1,
                        shadow: false,
                    },
                    GlobalCheck {
                        key: format!("sale=hot/user=u{}", i % 100),
                        algorithm,
                        limit: RateLimit {
                            unit: Unit::Hour,
                            requests_per_unit: 2,
                        },
                        hits: 1,
                        shadow: false,
                    },
                ];
                let domain = domain.clone();
                async move {
                    let (charged, _) = limits.judge(&domain, &checks, false, now_ms).await.unwrap();
                    (domain, charged)
                }
            })
        });
        let mut admitted = std::collections::HashMap::<String, u32>::new();
        for (domain, charged) in join_all(calls).await {
            *admitted.entry(domain).or_default() += u32::from(charged);
        }
        assert_eq!(admitted.len(), domains.len());
        for (domain, n) in admitted {
            assert_eq!(n, 50, "{domain}: the window admits exactly its limit");
        }
    }
}
