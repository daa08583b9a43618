//! The order pipeline's metrics:
//! - `flashsale_consumer_batch_size`: events per processed batch.
//! - `flashsale_consumer_commit_duration_seconds`: time of the batch's Postgres transaction.
//! - `flashsale_consumer_lag_messages`: events not yet acknowledged (waiting + in flight), read
//!   from the consumer every few seconds — what the HPA scales the consumer on.
//! - `flashsale_consumer_redeliveries_total`: events delivered more than once.
//! - `flashsale_dead_letters_total{reason}`: events set aside, by reason class.
//! - `flashsale_orders_total{status}`: orders reaching a status (pending_payment on write).
//! - `flashsale_backend_errors_total{backend, component}`.
//! - `flashsale_paid_without_stock_total`: Confirms of paid orders the inventory could not
//!   honour (no unit to take back): each is an order to look at.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicU64, Ordering},
};

use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Histogram, ObservableGauge},
};

pub(crate) struct Metrics {
    pub(crate) batch_size: Histogram<u64>,
    pub(crate) commit: Histogram<f64>,
    pub(crate) redeliveries: Counter<u64>,
    pub(crate) dead_letters: Counter<u64>,
    pub(crate) orders: Counter<u64>,
    pub(crate) backend_errors: Counter<u64>,
    pub(crate) paid_without_stock: Counter<u64>,
    pub(crate) lag: Arc<AtomicU64>,
    _lag_gauge: ObservableGauge<u64>,
}

pub(crate) fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = global::meter("flashsale");
        let lag = Arc::new(AtomicU64::new(0));
        let read = lag.clone();
        Metrics {
            batch_size: meter
                .u64_histogram("flashsale_consumer_batch_size")
                .with_description("Events per processed batch")
                .with_boundaries(vec![1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0])
                .build(),
            commit: meter
                .f64_histogram("flashsale_consumer_commit_duration")
                .with_unit("s")
                .with_description("Time of a batch's Postgres transaction")
                .with_boundaries(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                ])
                .build(),
            redeliveries: meter
                .u64_counter("flashsale_consumer_redeliveries")
                .with_description("Events delivered more than once")
                .build(),
            dead_letters: meter
                .u64_counter("flashsale_dead_letters")
                .with_description("Events set aside on the dead-letter stream, by reason")
                .build(),
            orders: meter
                .u64_counter("flashsale_orders")
                .with_description("Orders reaching a status")
                .build(),
            backend_errors: meter
                .u64_counter("flashsale_backend_errors")
                .with_description("Failed calls to a backend, by backend and component")
                .build(),
            paid_without_stock: meter
                .u64_counter("flashsale_paid_without_stock")
                .with_description("Confirms of paid orders the inventory had no unit for")
                .build(),
            _lag_gauge: meter
                .u64_observable_gauge("flashsale_consumer_lag_messages")
                .with_unit("messages")
                .with_description("Order events not yet acknowledged by the consumer")
                .with_callback(move |observer| observer.observe(read.load(Ordering::Relaxed), &[]))
                .build(),
            lag,
        }
    })
}

/// A paid order's Confirm found no unit to take back.
pub(crate) fn paid_without_stock() {
    get().paid_without_stock.add(1, &[]);
}

/// The class of a dead-letter reason (the reason itself holds ids).
pub(crate) fn dead_letter(reason: &str) {
    let class = reason
        .split(':')
        .next()
        .unwrap_or("other")
        .split(' ')
        .next()
        .unwrap_or("other");
    let class: &'static str = match class {
        "undecodable" => "undecodable",
        "invalid" => "invalid",
        "unknown" => "unknown_sale",
        "delivered" => "max_deliveries",
        _ => "other",
    };
    get().dead_letters.add(1, &[KeyValue::new("reason", class)]);
}

/// Counts orders reaching `status`.
pub(crate) fn orders(status: &'static str, n: u64) {
    if n > 0 {
        get().orders.add(n, &[KeyValue::new("status", status)]);
    }
}

/// Counts one failed backend call.
pub(crate) fn backend_error(backend: &'static str, component: &'static str) {
    get().backend_errors.add(
        1,
        &[
            KeyValue::new("backend", backend),
            KeyValue::new("component", component),
        ],
    );
}
