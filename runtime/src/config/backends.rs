//! The sections every component shares: gRPC serving, and the Redis, NATS and Postgres
//! connections, each with its defaults and its checks.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{Invalid, Validate, check_range, serialize_redacted};

/// Settings every gRPC server shares.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// How long a draining server may take to finish in-flight calls after SIGTERM before it
    /// exits anyway. Keep it below the pod's `terminationGracePeriodSeconds`.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Largest request or response message, in bytes.
    pub max_message_bytes: usize,
    /// Deadline applied to every unary call that does not carry a shorter `grpc-timeout`.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most concurrent requests one connection may have in flight.
    pub concurrency_per_connection: usize,
    /// Where a plaintext listener answers gRPC health checks and nothing else, beside the
    /// component's own (kubelet's gRPC probes speak no TLS and cannot reach a loopback-only
    /// listener). Unset: health on the component's listener only. One per host: components
    /// sharing a host set `--health-listen` each.
    pub health_listen: Option<std::net::SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            shutdown_grace: Duration::from_secs(20),
            max_message_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            concurrency_per_connection: 1024,
            health_listen: None,
        }
    }
}

impl Validate for ServerConfig {
    fn validate(&self) -> Result<(), Invalid> {
        check_range(
            "shutdown_grace",
            self.shutdown_grace,
            Duration::from_millis(100),
            Duration::from_secs(600),
        )?;
        check_range(
            "request_timeout",
            self.request_timeout,
            Duration::from_millis(1),
            Duration::from_secs(3600),
        )?;
        if !(1024..=64 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(Invalid::new(
                "max_message_bytes",
                format!("{} is outside 1024..=67108864", self.max_message_bytes),
            ));
        }
        if self.concurrency_per_connection == 0 {
            return Err(Invalid::new(
                "concurrency_per_connection",
                "must be at least 1",
            ));
        }
        Ok(())
    }
}

/// Where Redis is and how long a command may take.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]`, `rediss://` for TLS, or
    /// `redis-cluster://host:port,host:port` for a cluster. May hold a password, so it is a
    /// secret.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: SecretString,
    /// Most time one Redis command may take before the caller gives up and reports UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Replicas that must have a write before the inventory acknowledges it (Redis `WAIT`);
    /// 0 acknowledges what the master has. With replicas configured, 1 means a master killed
    /// right after an answer cannot take that answer's write with it: a failover promotes a
    /// replica that has it. A write the replicas do not confirm in time answers UNAVAILABLE
    /// (retry with the same idempotency key).
    pub replica_acks: u32,
    /// Most time to wait for `replica_acks` replicas.
    #[serde(with = "humantime_serde")]
    pub replica_ack_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("redis://127.0.0.1:6379"),
            command_timeout: Duration::from_millis(500),
            pool_size: 4,
            replica_acks: 0,
            replica_ack_timeout: Duration::from_millis(200),
        }
    }
}

impl Validate for RedisConfig {
    fn validate(&self) -> Result<(), Invalid> {
        let url = self.url.expose_secret();
        if ![
            "redis://",
            "rediss://",
            "redis-cluster://",
            "rediss-cluster://",
        ]
        .iter()
        .any(|scheme| url.starts_with(scheme))
        {
            return Err(Invalid::new(
                "url",
                "must start with redis://, rediss://, redis-cluster:// or rediss-cluster://",
            ));
        }
        check_range(
            "command_timeout",
            self.command_timeout,
            Duration::from_millis(1),
            Duration::from_secs(60),
        )?;
        if !(1..=256).contains(&self.pool_size) {
            return Err(Invalid::new("pool_size", "must be within 1..=256"));
        }
        if self.replica_acks > 16 {
            return Err(Invalid::new("replica_acks", "must be within 0..=16"));
        }
        check_range(
            "replica_ack_timeout",
            self.replica_ack_timeout,
            Duration::from_millis(1),
            Duration::from_secs(10),
        )?;
        Ok(())
    }
}

/// Where NATS is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:port`; several servers separated by commas.
    pub url: String,
    /// Optional token or `user:password` credentials; empty means none.
    #[serde(serialize_with = "serialize_redacted")]
    pub auth: SecretString,
    /// Most time a publish may wait for JetStream's acknowledgement.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            auth: SecretString::from(""),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl Validate for NatsConfig {
    fn validate(&self) -> Result<(), Invalid> {
        for server in self.url.split(',') {
            let server = server.trim();
            // The URL is not a secret (clients log it): credentials go in `auth`. Checked
            // first, so the message below never echoes a password.
            let authority = server.split_once("://").map_or(server, |(_, rest)| rest);
            if authority
                .split('/')
                .next()
                .unwrap_or_default()
                .contains('@')
            {
                return Err(Invalid::new(
                    "url",
                    "holds credentials; put them in nats.auth (`user:password` or a token), which is kept out of logs",
                ));
            }
            if !(server.starts_with("nats://") || server.starts_with("tls://")) {
                return Err(Invalid::new(
                    "url",
                    format!("`{server}` must start with nats:// or tls://"),
                ));
            }
        }
        check_range(
            "request_timeout",
            self.request_timeout,
            Duration::from_millis(10),
            Duration::from_secs(120),
        )
    }
}

/// Where Postgres is.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user[:password]@host:port/database`; a secret.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: SecretString,
    /// Most connections in the pool.
    pub max_connections: u32,
    /// Most time to wait for a connection.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/flashsale"),
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl Validate for PostgresConfig {
    fn validate(&self) -> Result<(), Invalid> {
        let url = self.url.expose_secret();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Invalid::new(
                "url",
                "must start with postgres:// or postgresql://",
            ));
        }
        if !(1..=1000).contains(&self.max_connections) {
            return Err(Invalid::new("max_connections", "must be within 1..=1000"));
        }
        check_range(
            "connect_timeout",
            self.connect_timeout,
            Duration::from_millis(10),
            Duration::from_secs(120),
        )
    }
}
