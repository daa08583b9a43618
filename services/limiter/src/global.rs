//! Limits shared by every replica: counters in Redis, one Lua script per request.
//!
//! Fixed window: one counter per window. Sliding window (the counter approximation): this
//! window's counter plus the previous one's weighted by how much of it still overlaps. All of a
//! request's descriptors are judged in one script call, so the request is charged everywhere or
//! nowhere. Keys carry the domain as hash tag (`{rl:<domain>}`), so the call is single-slot on a
//! Redis Cluster.

use std::time::Duration;

use fred::{
    prelude::*,
    types::{Value, scripts::Script},
};

use crate::rules::{Algorithm, RateLimit};

/// One descriptor to judge in Redis.
#[derive(Debug, Clone)]
pub struct GlobalCheck {
    /// The counter key (`k=v/k=v`).
    pub key: String,
    /// Fixed or sliding window.
    pub algorithm: Algorithm,
    /// The limit.
    pub limit: RateLimit,
    /// Hits to add (0 = check only).
    pub hits: u64,
    /// Counts but never refuses.
    pub shadow: bool,
}

/// What Redis said about one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalVerdict {
    /// Over the limit (shadow descriptors report it too).
    pub over: bool,
    /// Requests counted in the window (after this one, when it was charged).
    pub count: u64,
    /// Until the window resets.
    pub reset: Duration,
}

/// The Redis side of the limiter.
#[derive(Clone)]
pub struct GlobalLimits {
    redis: Pool,
    script: std::sync::Arc<Script>,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for GlobalLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlobalLimits")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Redis failed or did not answer within the timeout.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct RedisError(pub String);

impl GlobalLimits {
    /// Connects to Redis; calls fail after `timeout` (default tens of milliseconds).
    pub async fn connect(
        config: &flashsale_runtime::config::RedisConfig,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, RedisError> {
        let pool = flashsale_runtime::redis::pool(config, timeout)
            .await
            .map_err(|e| RedisError(e.to_string()))?;
        Ok(Self {
            redis: pool,
            script: std::sync::Arc::new(Script::from_lua(include_str!("../lua/limit.lua"))),
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    /// Judges `checks` together: charged only when none that counts is over and `blocked` is
    /// false. Returns whether it charged, and one verdict per check.
    pub async fn judge(
        &self,
        domain: &str,
        checks: &[GlobalCheck],
        blocked: bool,
        now_ms: u64,
    ) -> Result<(bool, Vec<GlobalVerdict>), RedisError> {
        let mut keys = Vec::with_capacity(checks.len() * 2);
        let mut args: Vec<Value> = vec![
            Value::from(now_ms as i64),
            Value::from(if blocked { "1" } else { "0" }),
        ];
        for check in checks {
            let window = check.limit.unit.duration().as_millis() as u64;
            let slot = now_ms / window;
            let base = format!(
                "{}:{{rl:{domain}}}:{}:{}",
                self.prefix,
                check.algorithm.as_str(),
                check.key
            );
            // The window, not the limit, names the counter: a reload that changes a limit keeps
            // the window's count.
            keys.push(format!("{base}:{window}:{slot}"));
            keys.push(format!("{base}:{window}:{}", slot.wrapping_sub(1)));
            args.push(Value::from(match check.algorithm {
                Algorithm::SlidingWindow => "S",
                _ => "F",
            }));
            args.push(Value::from(i64::from(check.limit.requests_per_unit)));
            args.push(Value::from(window as i64));
            args.push(Value::from(check.hits as i64));
            args.push(Value::from(if check.shadow { "1" } else { "0" }));
        }
        let client = self.redis.next();
        let call = self
            .script
            .evalsha_with_reload::<Value, _, _>(client, keys, args);
        let reply = tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| RedisError(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| RedisError(e.to_string()))?;
        let Value::Array(items) = reply else {
            return Err(RedisError(format!("unexpected reply {reply:?}")));
        };
        let int = |i: usize| {
            items
                .get(i)
                .and_then(Value::as_i64)
                .ok_or_else(|| RedisError(format!("short reply at {i}")))
        };
        let charged = int(0)? == 1;
        let verdicts = (0..checks.len())
            .map(|i| {
                Ok(GlobalVerdict {
                    over: int(1 + i * 3)? == 1,
                    count: int(2 + i * 3)?.max(0) as u64,
                    reset: Duration::from_millis(int(3 + i * 3)?.max(0) as u64),
                })
            })
            .collect::<Result<_, RedisError>>()?;
        Ok((charged, verdicts))
    }
}
