//! The `[orders]` section of the configuration.

use std::{net::SocketAddr, time::Duration};

use flashsale_runtime::{Invalid, Validate, config::check_range};
use serde::{Deserialize, Serialize};

/// Settings of the orders API, the order consumer and the lifecycle worker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server binds. Loopback unless an operator decides otherwise.
    pub listen: SocketAddr,
    /// Address the order consumer's health endpoint binds.
    pub consumer_listen: SocketAddr,
    /// Where the inventory's gRPC server is.
    pub inventory_url: String,
    /// The JetStream streams and consumer.
    pub stream: StreamConfig,
    /// Most events written in one transaction.
    pub batch_size: usize,
    /// How long one fetch waits for events before the consumer looks around again.
    #[serde(with = "humantime_serde")]
    pub fetch_wait: Duration,
    /// Pause between passes of the lifecycle worker (payment expiry, inventory retries).
    #[serde(with = "humantime_serde")]
    pub lifecycle_interval: Duration,
    /// Most orders one lifecycle pass handles per kind of work.
    pub lifecycle_batch: u64,
    /// NATS subject prefix of order status changes (`<prefix>.<order_id>`).
    pub status_prefix: String,
}

/// The JetStream layout of the order pipeline.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// The order event stream (work-queue retention, file storage).
    pub name: String,
    /// Subject prefix of order events: `<prefix>.<sale_id>`.
    pub subject_prefix: String,
    /// The dead-letter stream.
    pub dead_letter_name: String,
    /// Subject of dead letters.
    pub dead_letter_subject: String,
    /// The durable pull consumer that writes orders.
    pub consumer: String,
    /// A re-published event with the same id inside this window is dropped by JetStream.
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// Stream replicas (3 on a JetStream cluster).
    pub replicas: usize,
    /// Most bytes the stream keeps before it refuses new events (backpressure, not loss).
    pub max_bytes: i64,
    /// How long a delivered event may stay unacknowledged before redelivery.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Redelivery delays, one per delivery; the last repeats.
    #[serde(with = "flashsale_runtime::config::durations")]
    pub backoff: Vec<Duration>,
    /// Deliveries before an event is set aside on the dead-letter stream.
    pub max_deliver: i64,
    /// Most events delivered and not yet acknowledged, across every consumer replica.
    pub max_ack_pending: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            consumer_listen: SocketAddr::from(([127, 0, 0, 1], 50055)),
            inventory_url: "http://127.0.0.1:50052".into(),
            stream: StreamConfig::default(),
            batch_size: 500,
            fetch_wait: Duration::from_millis(500),
            lifecycle_interval: Duration::from_millis(500),
            lifecycle_batch: 500,
            status_prefix: "flashsale.order".into(),
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            name: "ORDERS".into(),
            subject_prefix: "flashsale.orders.requested".into(),
            dead_letter_name: "ORDERS_DLQ".into(),
            dead_letter_subject: "flashsale.orders.dead".into(),
            consumer: "orders-writer".into(),
            duplicate_window: Duration::from_secs(120),
            replicas: 1,
            max_bytes: 1 << 30,
            ack_wait: Duration::from_secs(30),
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(5),
                Duration::from_secs(30),
            ],
            max_deliver: 10,
            max_ack_pending: 20_000,
        }
    }
}

fn check_subject(key: &str, subject: &str) -> Result<(), Invalid> {
    if subject.is_empty() || subject.contains(|c: char| c.is_whitespace() || c == '*' || c == '>') {
        return Err(Invalid::new(
            key,
            "must be a NATS subject without wildcards or spaces",
        ));
    }
    Ok(())
}

impl Validate for StreamConfig {
    fn validate(&self) -> Result<(), Invalid> {
        for (key, name) in [
            ("name", &self.name),
            ("dead_letter_name", &self.dead_letter_name),
            ("consumer", &self.consumer),
        ] {
            if name.is_empty()
                || name.contains(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            {
                return Err(Invalid::new(key, "must be letters, digits, - or _"));
            }
        }
        check_subject("subject_prefix", &self.subject_prefix)?;
        check_subject("dead_letter_subject", &self.dead_letter_subject)?;
        if self.dead_letter_subject.starts_with(&self.subject_prefix) {
            return Err(Invalid::new(
                "dead_letter_subject",
                "must not be under subject_prefix",
            ));
        }
        check_range(
            "duplicate_window",
            self.duplicate_window,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        )?;
        check_range(
            "ack_wait",
            self.ack_wait,
            Duration::from_millis(100),
            Duration::from_secs(3600),
        )?;
        if !matches!(self.replicas, 1 | 3 | 5) {
            return Err(Invalid::new("replicas", "must be 1, 3 or 5"));
        }
        if self.max_bytes < 1 << 20 {
            return Err(Invalid::new("max_bytes", "must be at least 1 MiB"));
        }
        if self.max_deliver < 2 {
            return Err(Invalid::new("max_deliver", "must be at least 2"));
        }
        if self.backoff.len() as i64 > self.max_deliver {
            return Err(Invalid::new(
                "backoff",
                "must not have more entries than max_deliver",
            ));
        }
        if self.max_ack_pending < 1 {
            return Err(Invalid::new("max_ack_pending", "must be at least 1"));
        }
        Ok(())
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        self.stream.validate().map_err(|e| e.within("stream"))?;
        if !(self.inventory_url.starts_with("http://")
            || self.inventory_url.starts_with("https://"))
        {
            return Err(Invalid::new(
                "inventory_url",
                "must start with http:// or https://",
            ));
        }
        if !(1..=10_000).contains(&self.batch_size) {
            return Err(Invalid::new("batch_size", "must be within 1..=10000"));
        }
        check_range(
            "fetch_wait",
            self.fetch_wait,
            Duration::from_millis(10),
            Duration::from_secs(60),
        )?;
        check_range(
            "lifecycle_interval",
            self.lifecycle_interval,
            Duration::from_millis(10),
            Duration::from_secs(600),
        )?;
        if !(1..=100_000).contains(&self.lifecycle_batch) {
            return Err(Invalid::new("lifecycle_batch", "must be within 1..=100000"));
        }
        check_subject("status_prefix", &self.status_prefix)
    }
}
