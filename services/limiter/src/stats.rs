//! Per-rule counters: every decision, over limit, near limit, shadow-mode hits, Redis errors.
//! Labels are the domain and the rule's configured path (never a request's values), so their
//! number is bounded by the rules file.

use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;

/// Counters of one rule.
#[derive(Debug, Default)]
pub struct RuleCounters {
    /// Descriptors that matched the rule.
    pub total: AtomicU64,
    /// Of those, over the limit (refused, unless shadow mode).
    pub over_limit: AtomicU64,
    /// Allowed with less than `1 - near_limit_ratio` of the limit left.
    pub near_limit: AtomicU64,
    /// Over the limit but allowed because the rule is in shadow mode.
    pub shadow_mode: AtomicU64,
    /// Decided without Redis because it failed.
    pub redis_errors: AtomicU64,
}

/// A copy of one rule's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Domain.
    pub domain: String,
    /// Rule path.
    pub rule: String,
    /// See [`RuleCounters::total`].
    pub total: u64,
    /// See [`RuleCounters::over_limit`].
    pub over_limit: u64,
    /// See [`RuleCounters::near_limit`].
    pub near_limit: u64,
    /// See [`RuleCounters::shadow_mode`].
    pub shadow_mode: u64,
    /// See [`RuleCounters::redis_errors`].
    pub redis_errors: u64,
}

/// Counters of every rule seen.
#[derive(Debug, Default)]
pub struct Stats {
    rules: DashMap<(String, String), RuleCounters>,
}

impl Stats {
    /// Runs `f` on a rule's counters.
    pub fn with(&self, domain: &str, rule: &str, f: impl FnOnce(&RuleCounters)) {
        let key = (domain.to_owned(), rule.to_owned());
        if let Some(counters) = self.rules.get(&key) {
            return f(&counters);
        }
        f(&self.rules.entry(key).or_default());
    }

    /// A copy of every rule's counters, sorted.
    pub fn snapshot(&self) -> Vec<RuleStats> {
        let mut all: Vec<RuleStats> = self
            .rules
            .iter()
            .map(|e| {
                let c = e.value();
                RuleStats {
                    domain: e.key().0.clone(),
                    rule: e.key().1.clone(),
                    total: c.total.load(Ordering::Relaxed),
                    over_limit: c.over_limit.load(Ordering::Relaxed),
                    near_limit: c.near_limit.load(Ordering::Relaxed),
                    shadow_mode: c.shadow_mode.load(Ordering::Relaxed),
                    redis_errors: c.redis_errors.load(Ordering::Relaxed),
                }
            })
            .collect();
        all.sort_by(|a, b| (&a.domain, &a.rule).cmp(&(&b.domain, &b.rule)));
        all
    }

    /// One rule's counters, if it was ever seen.
    pub fn get(&self, domain: &str, rule: &str) -> Option<RuleStats> {
        self.snapshot()
            .into_iter()
            .find(|s| s.domain == domain && s.rule == rule)
    }
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
