//! The one way a component connects to Redis: a `fred` pool with one retry policy.
//!
//! - **A command is never re-sent by the client** (`max_command_attempts = 1`). The mesh's
//!   scripts change state, and one that ran but lost its reply (the connection dropped) would
//!   run twice: a Reserve without an idempotency key, a Give, a spent waiting-room token, a
//!   counted hit. The caller hears an error within its timeout and retries itself, with an
//!   idempotency key where the call is not idempotent.
//! - **Connections come back by themselves**: reconnects in the background, 50 ms doubling to
//!   1 s, forever. A Redis that is down at start-up does not stop the component: calls answer
//!   UNAVAILABLE until it is back.
//! - TCP_NODELAY; connecting and the client's own commands time out like a call (at least
//!   250 ms).

use std::time::Duration;

use fred::{
    error::Error,
    prelude::{Builder, ClientLike, Config, Pool, ReconnectPolicy, TcpConfig},
};
use secrecy::ExposeSecret;

use crate::config::RedisConfig;

/// A pool of `config.pool_size` connections to `config.url` whose calls give up after
/// `timeout`, connected (or still connecting, after 2 s) when it returns.
pub async fn pool(config: &RedisConfig, timeout: Duration) -> Result<Pool, Error> {
    let pool = Builder::from_config(Config::from_url(config.url.expose_secret())?)
        .with_connection_config(|c| {
            c.connection_timeout = timeout.max(Duration::from_millis(250));
            c.internal_command_timeout = timeout.max(Duration::from_millis(250));
            c.max_command_attempts = 1;
            c.tcp = TcpConfig {
                nodelay: Some(true),
                ..Default::default()
            };
        })
        .with_performance_config(|p| p.default_command_timeout = timeout)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
        .build_pool(config.pool_size)?;
    pool.connect();
    match tokio::time::timeout(Duration::from_secs(2), pool.wait_for_connect()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "redis not reachable yet; retrying in the background")
        }
        Err(_) => tracing::warn!("redis not reachable yet; retrying in the background"),
    }
    Ok(pool)
}
