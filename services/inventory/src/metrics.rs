//! The inventory's metrics:
//! - `flashsale_reserve_duration_seconds{outcome}`: time of a Reserve through the core.
//! - `flashsale_stock_units{sale, state}`: available / held / sold units of each loaded sale,
//!   as the last sweep read them.
//! - `flashsale_backend_errors_total{backend="redis", component="inventory"}`.

use std::sync::{Arc, OnceLock};

use dashmap::DashMap;
use opentelemetry::{
    KeyValue, global,
    metrics::{Counter, Histogram, ObservableGauge},
};

use crate::StockLevel;

pub(crate) struct Metrics {
    pub(crate) reserve: Histogram<f64>,
    pub(crate) redis_errors: Counter<u64>,
    pub(crate) stock: Arc<DashMap<String, StockLevel>>,
    _stock_gauge: ObservableGauge<u64>,
}

pub(crate) fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let meter = global::meter("flashsale");
        let stock: Arc<DashMap<String, StockLevel>> = Arc::default();
        let read = stock.clone();
        Metrics {
            reserve: meter
                .f64_histogram("flashsale_reserve_duration")
                .with_unit("s")
                .with_description("Time of a Reserve in Redis, by outcome")
                .with_boundaries(vec![
                    0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                ])
                .build(),
            redis_errors: meter
                .u64_counter("flashsale_backend_errors")
                .with_description("Failed calls to a backend, by backend and component")
                .build(),
            _stock_gauge: meter
                .u64_observable_gauge("flashsale_stock_units")
                .with_description("Units of a sale by state, as of the last sweep")
                .with_callback(move |observer| {
                    for entry in read.iter() {
                        let sale = KeyValue::new("sale", entry.key().clone());
                        let s = entry.value();
                        for (state, value) in [
                            ("available", s.available),
                            ("held", s.held),
                            ("sold", s.sold),
                        ] {
                            observer.observe(value, &[sale.clone(), KeyValue::new("state", state)]);
                        }
                    }
                })
                .build(),
            stock,
        }
    })
}

/// Records one Reserve.
pub(crate) fn reserve(outcome: &'static str, seconds: f64) {
    get()
        .reserve
        .record(seconds, &[KeyValue::new("outcome", outcome)]);
}

/// Counts one failed Redis call.
pub(crate) fn redis_error() {
    get().redis_errors.add(
        1,
        &[
            KeyValue::new("backend", "redis"),
            KeyValue::new("component", "inventory"),
        ],
    );
}

/// Remembers a sale's stock for the gauge.
pub(crate) fn stock(sale_id: &str, level: StockLevel) {
    get().stock.insert(sale_id.to_owned(), level);
}

/// Forgets a finished sale.
pub(crate) fn forget(sale_id: &str) {
    get().stock.remove(sale_id);
}
