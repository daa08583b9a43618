//! Limiter tests against a real, throwaway redis-server, over gRPC where the face is gRPC.

// A test reads as one story from set-up to the last assertion; only code outside tests is held
// to one screen a function.
#![allow(clippy::too_many_lines)]

mod cluster;
mod edge;
mod redis_down;
mod reload;
mod rls;
mod sidecar;
mod waiting_room;

use std::{path::Path, time::Duration};

use flashsale_limiter::{Config, Limiter};
use flashsale_proto::envoy::{
    extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor::Entry},
    service::ratelimit::v3::{
        RateLimitRequest, RateLimitResponse, rate_limit_service_client::RateLimitServiceClient,
    },
};
use flashsale_runtime::{Shutdown, config::RedisConfig};
use flashsale_testkit::RedisServer;
use tonic::transport::Channel;

pub(crate) struct World {
    pub(crate) redis: RedisServer,
    pub(crate) limiter: Limiter,
    pub(crate) client: RateLimitServiceClient<Channel>,
    pub(crate) channel: Channel,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) shutdown: Shutdown,
}

impl Drop for World {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

pub(crate) fn redis_config(url: &str) -> RedisConfig {
    RedisConfig {
        url: url.to_owned().into(),
        command_timeout: Duration::from_millis(200),
        pool_size: 2,
        ..Default::default()
    }
}

/// A limiter over `rules` (written to a file it watches), serving RLS on loopback.
pub(crate) async fn world(rules: &str, tweak: impl FnOnce(&mut Config)) -> World {
    flashsale_runtime::telemetry::init_for_tests();
    let redis = RedisServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, rules).unwrap();
    let mut config = Config {
        rules_file: Some(file),
        reload_interval: Duration::from_millis(100),
        ..Config::default()
    };
    tweak(&mut config);
    let limiter = Limiter::new(&config, Some(&redis_config(&redis.url())))
        .await
        .unwrap();
    let shutdown = Shutdown::new();
    tokio::spawn(limiter.clone().watch(shutdown.child()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = flashsale_limiter::rls::server(
        limiter.clone(),
        config.response_headers,
        &Default::default(),
    );
    tokio::spawn(server.serve(listener, shutdown.wait()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    World {
        redis,
        limiter,
        client: RateLimitServiceClient::new(channel.clone()),
        channel,
        dir,
        shutdown,
    }
}

pub(crate) fn descriptor(entries: &[(&str, &str)]) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| Entry {
                key: (*k).into(),
                value: (*v).into(),
            })
            .collect(),
        limit: None,
        hits_addend: None,
    }
}

pub(crate) fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>) -> RateLimitRequest {
    RateLimitRequest {
        domain: domain.into(),
        descriptors,
        hits_addend: 0,
    }
}

impl World {
    pub(crate) async fn ask(&self, request: RateLimitRequest) -> RateLimitResponse {
        self.client
            .clone()
            .should_rate_limit(request)
            .await
            .unwrap()
            .into_inner()
    }

    pub(crate) fn rules_path(&self) -> std::path::PathBuf {
        self.dir.path().join("rules.yaml")
    }
}

/// Replaces a file's content in one step, as a ConfigMap update does.
pub(crate) fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

pub(crate) const OK: i32 = 1;
pub(crate) const OVER: i32 = 2;
