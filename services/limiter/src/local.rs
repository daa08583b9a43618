//! Per-pod limits: GCRA in memory with the `governor` crate.
//!
//! A request is judged as a whole, so the limiter must be able to ask "would these hits fit?"
//! without taking them, and take them only when every descriptor of the request fits. governor
//! has no such peek, but it lets the caller supply the state store: [`PeekableStore`] is a
//! `DashMap` of GCRA states that, inside [`peek`], computes governor's decision without storing
//! it. Entries unseen for longer than their window are dropped by [`LocalLimits::sweep`].

use std::{
    cell::Cell,
    num::{NonZeroU32, NonZeroU64},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use governor::{
    Quota, RateLimiter,
    clock::{Clock, DefaultClock},
    middleware::StateInformationMiddleware,
    nanos::Nanos,
    state::StateStore,
};

use crate::rules::RateLimit;

thread_local! {
    /// Set while [`peek`] runs: the store computes decisions without storing them. governor's
    /// check is synchronous, so the flag never spans an await.
    static DRY_RUN: Cell<bool> = const { Cell::new(false) };
}

#[derive(Debug)]
struct Entry {
    /// governor's GCRA state: the theoretical arrival time, in nanoseconds since the limiter
    /// started; 0 = no state yet.
    tat: AtomicU64,
    /// When the entry was last used, in seconds since the store was made.
    seen: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    map: DashMap<String, Entry>,
    origin: Instant,
}

/// A governor state store whose decisions can be computed without being stored. Cheap to
/// clone: governor holds one handle, [`LocalLimits`] another (for sweeping).
#[derive(Debug, Clone)]
pub struct PeekableStore(Arc<Shared>);

impl PeekableStore {
    fn new() -> Self {
        Self(Arc::new(Shared {
            map: DashMap::new(),
            origin: Instant::now(),
        }))
    }

    fn now_secs(&self) -> u64 {
        self.0.origin.elapsed().as_secs()
    }
}

fn nanos(raw: u64) -> Option<Nanos> {
    NonZeroU64::new(raw).map(|n| Nanos::from(n.get()))
}

impl StateStore for PeekableStore {
    type Key = String;

    fn measure_and_replace<T, F, E>(&self, key: &String, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if DRY_RUN.with(Cell::get) {
            let prev = self
                .0
                .map
                .get(key)
                .map_or(0, |e| e.tat.load(Ordering::Acquire));
            return f(nanos(prev)).map(|(t, _)| t);
        }
        let now = self.now_secs();
        let run = |entry: &Entry| {
            entry.seen.store(now, Ordering::Relaxed);
            let mut prev = entry.tat.load(Ordering::Acquire);
            loop {
                let (t, next) = f(nanos(prev))?;
                match entry.tat.compare_exchange_weak(
                    prev,
                    next.as_u64(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return Ok(t),
                    Err(actual) => prev = actual,
                }
            }
        };
        if let Some(entry) = self.0.map.get(key) {
            return run(&entry);
        }
        let entry = self.0.map.entry(key.clone()).or_insert_with(|| Entry {
            tat: AtomicU64::new(0),
            seen: AtomicU64::new(now),
        });
        run(&entry)
    }
}

type Gcra = RateLimiter<String, PeekableStore, DefaultClock, StateInformationMiddleware>;

/// What a local check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalVerdict {
    /// The hits fit.
    pub allowed: bool,
    /// Hits left right after (0 when not allowed).
    pub remaining: u32,
    /// Until the limit is fully replenished (allowed) or the hits would fit (not allowed).
    pub reset: Duration,
}

/// One GCRA limiter per distinct limit, keyed by counter key.
#[derive(Debug, Default)]
pub struct LocalLimits {
    limiters: DashMap<RateLimit, (Arc<Gcra>, PeekableStore)>,
    /// One clock for all (making a `quanta` clock calibrates it: far too slow per call).
    clock: DefaultClock,
}

fn quota(limit: RateLimit) -> Quota {
    let burst = NonZeroU32::new(limit.requests_per_unit).unwrap_or(NonZeroU32::MIN);
    let period = limit.unit.duration() / burst.get();
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .unwrap_or_else(|| Quota::per_second(burst))
        .allow_burst(burst)
}

impl LocalLimits {
    fn limiter(&self, limit: RateLimit) -> Arc<Gcra> {
        if let Some(existing) = self.limiters.get(&limit) {
            return existing.0.clone();
        }
        self.limiters
            .entry(limit)
            .or_insert_with(|| {
                let store = PeekableStore::new();
                let gcra: Gcra = RateLimiter::<
                    String,
                    PeekableStore,
                    DefaultClock,
                    StateInformationMiddleware,
                >::new(
                    quota(limit), store.clone(), self.clock.clone()
                );
                (Arc::new(gcra), store)
            })
            .0
            .clone()
    }

    fn judge(&self, limit: RateLimit, key: &str, hits: u32) -> LocalVerdict {
        let gcra = self.limiter(limit);
        let key = key.to_owned();
        let clock = &self.clock;
        let period = limit.unit.duration() / limit.requests_per_unit.max(1);
        match NonZeroU32::new(hits.max(1)).map(|n| gcra.check_key_n(&key, n)) {
            Some(Ok(Ok(snapshot))) => {
                let remaining = snapshot.remaining_burst_capacity();
                LocalVerdict {
                    allowed: true,
                    remaining,
                    reset: period
                        * (limit.requests_per_unit - remaining.min(limit.requests_per_unit)),
                }
            }
            Some(Ok(Err(not_until))) => LocalVerdict {
                allowed: false,
                remaining: 0,
                reset: not_until.wait_time_from(clock.now()),
            },
            // More hits than the limit can ever hold.
            Some(Err(_)) | None => LocalVerdict {
                allowed: false,
                remaining: 0,
                reset: limit.unit.duration(),
            },
        }
    }

    /// Would `hits` fit under `limit` for `key`? Takes nothing. `hits == 0` asks about one.
    pub fn peek(&self, limit: RateLimit, key: &str, hits: u32) -> LocalVerdict {
        DRY_RUN.with(|d| d.set(true));
        let mut verdict = self.judge(limit, key, hits);
        DRY_RUN.with(|d| d.set(false));
        if hits == 0 && verdict.allowed {
            // The check asked about one hit it does not take: that one is still left.
            verdict.remaining += 1;
        }
        verdict
    }

    /// Takes `hits` (at least one) if they fit.
    pub fn take(&self, limit: RateLimit, key: &str, hits: u32) -> LocalVerdict {
        self.judge(limit, key, hits)
    }

    /// Drops counters unseen for longer than their window (they would be full again anyway).
    pub fn sweep(&self) -> usize {
        let mut dropped = 0;
        for limiter in self.limiters.iter() {
            let window = limiter.key().unit.duration().as_secs().max(1);
            let store = &limiter.value().1;
            let now = store.now_secs();
            let before = store.0.map.len();
            store
                .0
                .map
                .retain(|_, e| now.saturating_sub(e.seen.load(Ordering::Relaxed)) <= window);
            dropped += before - store.0.map.len();
        }
        dropped
    }

    /// Counters held.
    pub fn len(&self) -> usize {
        self.limiters.iter().map(|l| l.value().1.0.map.len()).sum()
    }

    /// True when no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Unit;

    const FIVE_PER_MINUTE: RateLimit = RateLimit {
        unit: Unit::Minute,
        requests_per_unit: 5,
    };

    #[test]
    fn peek_takes_nothing_and_take_counts_down() {
        let limits = LocalLimits::default();
        for _ in 0..10 {
            let v = limits.peek(FIVE_PER_MINUTE, "k", 1);
            assert!(v.allowed);
            assert_eq!(v.remaining, 4, "peeking never consumes");
        }
        assert_eq!(limits.peek(FIVE_PER_MINUTE, "k", 0).remaining, 5);
        for left in (0..5).rev() {
            let v = limits.take(FIVE_PER_MINUTE, "k", 1);
            assert!(v.allowed);
            assert_eq!(v.remaining, left);
        }
        let over = limits.take(FIVE_PER_MINUTE, "k", 1);
        assert!(!over.allowed);
        assert!(over.reset > Duration::from_secs(5) && over.reset <= Duration::from_secs(12));
        assert!(
            !limits.peek(FIVE_PER_MINUTE, "k", 0).allowed,
            "check-only sees it too"
        );
        assert!(
            limits.take(FIVE_PER_MINUTE, "other", 5).allowed,
            "keys are separate"
        );
        assert!(
            !limits.take(FIVE_PER_MINUTE, "third", 6).allowed,
            "more than the limit never fits"
        );
        assert_eq!(limits.len(), 2, "a refused first request stores nothing");
    }
}
