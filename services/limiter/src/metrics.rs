//! The limiter's decisions as metrics, read from its per-rule counters when scraped:
//! `flashsale_limiter_decisions_total{domain, rule, result}` with result `ok`, `over_limit`,
//! `near_limit` (allowed, but close) or `shadow_mode` (over, allowed in shadow mode), and
//! `flashsale_limiter_redis_errors_total{domain, rule}`. Labels are configured rule paths, never
//! request values, so their number is bounded by the rules file.

use std::sync::Arc;

use opentelemetry::{KeyValue, global, metrics::ObservableCounter};

use crate::stats::Stats;

/// Keeps the instruments registered for as long as the limiter lives.
pub(crate) struct Registered {
    _decisions: ObservableCounter<u64>,
    _redis_errors: ObservableCounter<u64>,
}

impl std::fmt::Debug for Registered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registered")
    }
}

pub(crate) fn register(stats: Arc<Stats>) -> Registered {
    let meter = global::meter("flashsale");
    let read = stats.clone();
    let decisions = meter
        .u64_observable_counter("flashsale_limiter_decisions")
        .with_description("Limiter decisions per rule, by result")
        .with_callback(move |observer| {
            for s in read.snapshot() {
                let ok = s.total - s.over_limit - s.shadow_mode;
                for (result, value) in [
                    ("ok", ok),
                    ("over_limit", s.over_limit),
                    ("near_limit", s.near_limit),
                    ("shadow_mode", s.shadow_mode),
                ] {
                    observer.observe(
                        value,
                        &[
                            KeyValue::new("domain", s.domain.clone()),
                            KeyValue::new("rule", s.rule.clone()),
                            KeyValue::new("result", result),
                        ],
                    );
                }
            }
        })
        .build();
    let redis_errors = meter
        .u64_observable_counter("flashsale_limiter_redis_errors")
        .with_description("Limiter decisions made without Redis, per rule")
        .with_callback(move |observer| {
            for s in stats.snapshot() {
                observer.observe(
                    s.redis_errors,
                    &[
                        KeyValue::new("domain", s.domain.clone()),
                        KeyValue::new("rule", s.rule.clone()),
                    ],
                );
            }
        })
        .build();
    Registered {
        _decisions: decisions,
        _redis_errors: redis_errors,
    }
}
