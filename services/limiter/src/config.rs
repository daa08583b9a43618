//! The `[limiter]` section of the configuration.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use flashsale_runtime::{Invalid, Validate, config::check_range};
use serde::{Deserialize, Serialize};

/// What to answer for global (Redis) limits when Redis fails or is slow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Allow the request (and count the error): availability over strictness.
    #[default]
    Allow,
    /// Refuse the request.
    Deny,
    /// Apply the limit locally, scaled by `fallback_share`, until Redis is back.
    Local,
}

/// Settings of the limiter (RLS server) and of the sidecar that applies it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the RLS/Limiter gRPC server binds.
    pub listen: SocketAddr,
    /// The YAML rules file (Envoy ratelimit format); none means nothing is limited.
    pub rules_file: Option<PathBuf>,
    /// How often the rules file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Most time a Redis decision may take before the failure mode applies.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
    /// What to answer when Redis fails.
    pub failure_mode: FailureMode,
    /// With `failure_mode = "local"`: the share of each global limit one replica enforces
    /// alone (1 / expected replicas).
    pub fallback_share: f64,
    /// A request counts as near the limit when more than this share of it is used.
    pub near_limit_ratio: f64,
    /// Prefix of Redis keys.
    pub key_prefix: String,
    /// Add `RateLimit-*` response headers to RLS answers.
    pub response_headers: bool,
    /// The sidecar proxy.
    pub sidecar: SidecarConfig,
}

/// Where a descriptor entry's value comes from, for the tower layer and the sidecar.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The gRPC method path, e.g. `/flashsale.v1.FlashSale/Purchase` (key `method`).
    Method,
    /// The `sub` claim of the bearer token, unverified (key `user`). Verification is the
    /// gateway's job; keying a limit on a forged identity only limits the forger.
    User,
    /// The caller's address: the first `x-forwarded-for` hop, else the peer (key `ip`).
    Ip,
    /// The `flashsale-sale-id` request header (key `sale`).
    Sale,
    /// Any request header (key: the header name).
    Header(String),
}

/// The sidecar: a gRPC proxy in front of one service that applies limits to every call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SidecarConfig {
    /// Address the proxy binds.
    pub listen: SocketAddr,
    /// The service behind it, e.g. `http://127.0.0.1:50051`.
    pub upstream: String,
    /// The rules domain the sidecar asks about.
    pub domain: String,
    /// The descriptors derived from each call: each inner list is one descriptor's entries.
    pub descriptors: Vec<Vec<Source>>,
    /// Paths never limited (health checks, reflection), as prefixes.
    pub exempt: Vec<String>,
    /// Proxies in front of the sidecar that append the address they saw to `x-forwarded-for`
    /// (Envoy's `xff_num_trusted_hops`). 0: the caller is the connection's peer and the header
    /// is ignored; N: the Nth address from the right end of the header (the one the outermost
    /// trusted proxy appended), or the peer when the header has fewer.
    pub xff_num_trusted_hops: u32,
}

/// Most trusted proxy hops [`SidecarConfig::xff_num_trusted_hops`] may name.
pub const MAX_TRUSTED_HOPS: u32 = 16;

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50054)),
            rules_file: None,
            reload_interval: Duration::from_secs(2),
            redis_timeout: Duration::from_millis(50),
            failure_mode: FailureMode::Allow,
            fallback_share: 0.25,
            near_limit_ratio: 0.8,
            key_prefix: "fs".into(),
            response_headers: true,
            sidecar: SidecarConfig::default(),
        }
    }
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50050)),
            upstream: "http://127.0.0.1:50051".into(),
            domain: "flashsale".into(),
            descriptors: vec![
                vec![Source::Method, Source::User],
                vec![Source::Ip],
                vec![Source::Sale],
            ],
            exempt: vec![
                flashsale_runtime::server::HEALTH_PATH_PREFIX.into(),
                flashsale_runtime::server::REFLECTION_PATH_PREFIX.into(),
            ],
            xff_num_trusted_hops: 0,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        check_range(
            "reload_interval",
            self.reload_interval,
            Duration::from_millis(50),
            Duration::from_secs(3600),
        )?;
        check_range(
            "redis_timeout",
            self.redis_timeout,
            Duration::from_millis(1),
            Duration::from_secs(10),
        )?;
        if !(self.fallback_share > 0.0 && self.fallback_share <= 1.0) {
            return Err(Invalid::new("fallback_share", "must be within (0, 1]"));
        }
        if !(self.near_limit_ratio > 0.0 && self.near_limit_ratio <= 1.0) {
            return Err(Invalid::new("near_limit_ratio", "must be within (0, 1]"));
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err(Invalid::new(
                "key_prefix",
                "must be non-empty and without braces",
            ));
        }
        self.sidecar.validate().map_err(|e| e.within("sidecar"))
    }
}

impl Validate for SidecarConfig {
    fn validate(&self) -> Result<(), Invalid> {
        if !(self.upstream.starts_with("http://") || self.upstream.starts_with("https://")) {
            return Err(Invalid::new(
                "upstream",
                "must start with http:// or https://",
            ));
        }
        if self.upstream.parse::<http::Uri>().is_err() {
            return Err(Invalid::new("upstream", "is not a URI"));
        }
        if self.domain.is_empty() {
            return Err(Invalid::new("domain", "must not be empty"));
        }
        if self.descriptors.iter().any(Vec::is_empty) {
            return Err(Invalid::new(
                "descriptors",
                "each descriptor needs at least one source",
            ));
        }
        if self.xff_num_trusted_hops > MAX_TRUSTED_HOPS {
            return Err(Invalid::new(
                "xff_num_trusted_hops",
                format!("at most {MAX_TRUSTED_HOPS}"),
            ));
        }
        Ok(())
    }
}
