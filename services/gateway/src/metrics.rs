//! The gateway's metrics (Prometheus names after the exporter's suffixes):
//! - `flashsale_purchases_total{sale, outcome}`: purchases answered, by outcome (`accepted` or
//!   the refusal's reason in lower case). Bounded: sales are few, outcomes a fixed set.
//! - `flashsale_purchase_duration_seconds{outcome}`: time to answer a purchase.
//! - `flashsale_backend_errors_total{backend, component}`: failed calls to NATS / Postgres /
//!   the inventory.
//! - `flashsale_queue_standings_total{sale, state}`: waiting-room standings given (JoinQueue,
//!   QueueStatus, each WatchQueue message), by state (`waiting`, `admitted`, `sold_out`).
//! - `flashsale_queue_watchers{sale}`: WatchQueue streams open on this replica.

use std::sync::OnceLock;

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Histogram, UpDownCounter},
};

pub(crate) struct Metrics {
    pub(crate) purchases: Counter<u64>,
    pub(crate) duration: Histogram<f64>,
    pub(crate) backend_errors: Counter<u64>,
    pub(crate) queue_standings: Counter<u64>,
    pub(crate) queue_watchers: UpDownCounter<i64>,
}

pub(crate) fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = global::meter("flashsale");
        Metrics {
            purchases: meter
                .u64_counter("flashsale_purchases")
                .with_description("Purchases answered, by sale and outcome")
                .build(),
            duration: meter
                .f64_histogram("flashsale_purchase_duration")
                .with_unit("s")
                .with_description("Time to answer a purchase")
                .with_boundaries(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ])
                .build(),
            backend_errors: meter
                .u64_counter("flashsale_backend_errors")
                .with_description("Failed calls to a backend, by backend and component")
                .build(),
            queue_standings: meter
                .u64_counter("flashsale_queue_standings")
                .with_description("Waiting-room standings given, by sale and state")
                .build(),
            queue_watchers: meter
                .i64_up_down_counter("flashsale_queue_watchers")
                .with_description("WatchQueue streams open, by sale")
                .build(),
        }
    })
}

/// Counts one purchase answer.
pub(crate) fn purchase(sale_id: &str, outcome: &str, seconds: f64) {
    let m = get();
    m.purchases.add(
        1,
        &[
            KeyValue::new("sale", sale_id.to_owned()),
            KeyValue::new("outcome", outcome.to_owned()),
        ],
    );
    let class = if outcome == "accepted" {
        "accepted"
    } else {
        "rejected"
    };
    m.duration
        .record(seconds, &[KeyValue::new("outcome", class)]);
}

/// Counts one failed backend call.
pub(crate) fn backend_error(backend: &'static str) {
    get().backend_errors.add(
        1,
        &[
            KeyValue::new("backend", backend),
            KeyValue::new("component", "gateway"),
        ],
    );
}

/// Counts one waiting-room standing given to a buyer.
pub(crate) fn queue_standing(sale_id: &str, state: i32) {
    let state = match flashsale_proto::v1::QueueState::try_from(state) {
        Ok(flashsale_proto::v1::QueueState::Waiting) => "waiting",
        Ok(flashsale_proto::v1::QueueState::Admitted) => "admitted",
        Ok(flashsale_proto::v1::QueueState::SoldOut) => "sold_out",
        _ => "unspecified",
    };
    get().queue_standings.add(
        1,
        &[
            KeyValue::new("sale", sale_id.to_owned()),
            KeyValue::new("state", state),
        ],
    );
}

/// One WatchQueue stream open for its lifetime.
pub(crate) struct Watcher(KeyValue);

impl Watcher {
    pub(crate) fn open(sale_id: &str) -> Self {
        let sale = KeyValue::new("sale", sale_id.to_owned());
        get().queue_watchers.add(1, std::slice::from_ref(&sale));
        Self(sale)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        get().queue_watchers.add(-1, std::slice::from_ref(&self.0));
    }
}
