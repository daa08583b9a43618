//! The limiter's hot paths, in one run:
//! - an in-process decision against a local (GCRA) rule, ns/op, beside governor's own check;
//! - RLS `ShouldRateLimit` over gRPC against a global (Redis) rule and a local one, beside a bare
//!   tonic server that answers the same RPC at once (the gRPC ceiling here), as ratios.
//!
//! `cargo bench -p flashsale-limiter --bench limiter`

use std::{
    num::NonZeroU32,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use criterion::Criterion;
use flashsale_limiter::{Config, Descriptor, Limiter, Request, RuleSet, global::GlobalLimits};
use flashsale_proto::envoy::{
    extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry},
    service::ratelimit::v3::{
        RateLimitRequest, RateLimitResponse,
        rate_limit_service_client::RateLimitServiceClient,
        rate_limit_service_server::{RateLimitService, RateLimitServiceServer},
    },
};
use futures::{StreamExt, stream};
use tonic::transport::Channel;

const RULES: &str = r#"
domain: bench
descriptors:
  - key: global
    rate_limit: { unit: second, requests_per_unit: 100000000 }
  - key: local
    algorithm: local_gcra
    rate_limit: { unit: second, requests_per_unit: 100000000 }
"#;

/// Answers every ShouldRateLimit with OK at once.
#[derive(Clone, Default)]
struct Echo;

#[tonic::async_trait]
impl RateLimitService for Echo {
    async fn should_rate_limit(
        &self,
        _: tonic::Request<RateLimitRequest>,
    ) -> Result<tonic::Response<RateLimitResponse>, tonic::Status> {
        Ok(tonic::Response::new(RateLimitResponse {
            overall_code: 1,
            ..Default::default()
        }))
    }
}

#[derive(Default)]
struct Tally(Mutex<(Duration, u64)>);

impl Tally {
    fn add(&self, d: Duration, n: u64) {
        let mut t = self.0.lock().unwrap();
        t.0 += d;
        t.1 += n;
    }
    fn per_second(&self) -> f64 {
        let t = self.0.lock().unwrap();
        t.1 as f64 / t.0.as_secs_f64().max(f64::EPSILON)
    }
}

fn rls_request(key: &str) -> RateLimitRequest {
    RateLimitRequest {
        domain: "bench".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![Entry {
                key: key.into(),
                value: "v".into(),
            }],
            limit: None,
            hits_addend: None,
        }],
        hits_addend: 1,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (redis, limiter, rls_channel, echo_channel) = rt.block_on(setup());

    let mut criterion = Criterion::default()
        .configure_from_args()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));

    // In-process decisions.
    let mut group = criterion.benchmark_group("limiter/in_process");
    let local_request = Request {
        domain: "bench".into(),
        descriptors: vec![Descriptor {
            entries: vec![("local".into(), "v".into())],
            ..Descriptor::default()
        }],
        hits_addend: 1,
    };
    group.bench_function("decide_local_gcra", |b| {
        b.iter(|| futures::executor::block_on(limiter.decide(&local_request)).unwrap());
    });
    let governor = governor::RateLimiter::keyed(governor::Quota::per_second(
        NonZeroU32::new(100_000_000).unwrap(),
    ));
    let key = "local=v".to_owned();
    group.bench_function("governor_check_key_alone", |b| {
        b.iter(|| governor.check_key(&key).is_ok())
    });
    group.finish();

    // Over gRPC, 64 calls in flight.
    let tallies: Vec<(&str, Arc<Tally>)> = vec![
        ("echo", Arc::default()),
        ("rls_global_redis", Arc::default()),
        ("rls_local_gcra", Arc::default()),
    ];
    let mut group = criterion.benchmark_group("limiter/grpc_64_in_flight");
    for (name, tally) in &tallies {
        let channel = if *name == "echo" {
            echo_channel.clone()
        } else {
            rls_channel.clone()
        };
        let key = if *name == "rls_local_gcra" {
            "local"
        } else {
            "global"
        };
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (channel, tally) = (channel.clone(), tally.clone());
                async move {
                    let elapsed = calls(&channel, key, iters).await;
                    tally.add(elapsed, iters);
                    elapsed
                }
            });
        });
    }
    group.finish();
    criterion.final_summary();

    let echo = tallies[0].1.per_second();
    println!("\nShouldRateLimit over gRPC on loopback, 64 in flight, same run:");
    for (name, tally) in &tallies {
        let rps = tally.per_second();
        println!(
            "  {name:<18} {rps:>9.0} calls/s   ratio to echo = {:.2}",
            rps / echo
        );
    }
    drop(redis);
}

/// A throwaway Redis, the limiter over it, and channels to its RLS server and to the echo
/// baseline, both on loopback.
async fn setup() -> (flashsale_testkit::RedisServer, Limiter, Channel, Channel) {
    let redis = flashsale_testkit::RedisServer::start().await.unwrap();
    let config = Config {
        redis_timeout: Duration::from_secs(1),
        ..Config::default()
    };
    let redis_config = flashsale_runtime::config::RedisConfig {
        url: redis.url().into(),
        command_timeout: Duration::from_secs(1),
        pool_size: 4,
        ..Default::default()
    };
    let global = GlobalLimits::connect(&redis_config, "bench", Duration::from_secs(1))
        .await
        .unwrap();
    let limiter = Limiter::with_rules(
        &config,
        RuleSet::parse(RULES, "bench").unwrap(),
        Some(global),
    );

    // Two servers on loopback: the real RLS and the echo baseline.
    let (rls_channel, echo_channel) = async {
        let rls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rls_addr = rls_listener.local_addr().unwrap();
        let server = flashsale_limiter::rls::server(limiter.clone(), false, &Default::default());
        tokio::spawn(server.serve(rls_listener, std::future::pending()));
        let echo_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = echo_listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RateLimitServiceServer::new(Echo))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                    echo_listener,
                )),
        );
        let connect = |addr: std::net::SocketAddr| async move {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap()
        };
        (connect(rls_addr).await, connect(echo_addr).await)
    }
    .await;
    (redis, limiter, rls_channel, echo_channel)
}

/// `iters` ShouldRateLimit calls for `key`, 64 in flight; each must be allowed.
async fn calls(channel: &Channel, key: &'static str, iters: u64) -> Duration {
    let started = Instant::now();
    stream::iter(0..iters)
        .for_each_concurrent(64, |_| {
            let mut client = RateLimitServiceClient::new(channel.clone());
            async move {
                let r = client
                    .should_rate_limit(rls_request(key))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.overall_code, 1);
            }
        })
        .await;
    started.elapsed()
}
