//! [`Limiter`]: the one core every face (RLS server, tower layer, sidecar) calls.
//!
//! A request is judged as a whole: every descriptor is matched to its rule, local (GCRA)
//! descriptors are *peeked*, the global ones are judged in one Redis script that charges them
//! only if nothing is over, and the local ones are charged last, only if nothing was over. A
//! request refused by one descriptor therefore costs the others nothing (Envoy's ratelimit
//! charges them anyway).

use std::{
    collections::HashSet,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use flashsale_runtime::Shutdown;

use crate::{
    Error,
    config::{Config, FailureMode},
    global::{GlobalCheck, GlobalLimits},
    local::{LocalLimits, LocalVerdict},
    rules::{Algorithm, RateLimit, Rule, RuleSet},
    stats::{RuleStats, Stats, bump},
};

/// One descriptor of a request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Entries, outermost first.
    pub entries: Vec<(String, String)>,
    /// Hits for this descriptor; `None` uses the request's. `Some(0)` only checks.
    pub hits: Option<u64>,
    /// A limit supplied by the caller, replacing the configured one.
    pub limit: Option<RateLimit>,
}

/// A request to judge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    /// The rules domain.
    pub domain: String,
    /// What to judge.
    pub descriptors: Vec<Descriptor>,
    /// Hits for every descriptor without its own; 0 means 1 (Envoy's rule).
    pub hits_addend: u32,
}

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Under the limit (or in shadow mode, or no limit).
    Ok,
    /// Over the limit.
    OverLimit,
}

/// The verdict on one descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The verdict.
    pub code: Code,
    /// The limit that applied and the rule's name; `None` when nothing matched.
    pub limit: Option<(RateLimit, Option<String>)>,
    /// Requests left in the window.
    pub remaining: u32,
    /// Until the window resets (or, over a GCRA limit, until the hits would fit).
    pub reset: Option<Duration>,
    /// The path of the rule that applied; `None` when nothing matched.
    pub rule: Option<String>,
}

impl Status {
    fn unlimited() -> Self {
        Self {
            code: Code::Ok,
            limit: None,
            remaining: 0,
            reset: None,
            rule: None,
        }
    }
}

/// The verdict on a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// OverLimit when any descriptor is.
    pub code: Code,
    /// One status per request descriptor, in order.
    pub statuses: Vec<Status>,
}

impl Decision {
    /// When a refused caller may try again: the longest reset among the refusing descriptors.
    pub fn retry_after(&self) -> Option<Duration> {
        self.statuses
            .iter()
            .filter(|s| s.code == Code::OverLimit)
            .filter_map(|s| s.reset)
            .max()
    }

    /// The most constrained status with a limit (fewest requests left), for `RateLimit-*`
    /// headers.
    pub fn tightest(&self) -> Option<&Status> {
        self.statuses
            .iter()
            .filter(|s| s.limit.is_some())
            .min_by_key(|s| (s.code == Code::Ok, s.remaining))
    }
}

struct Plan {
    rule: Rule,
    key: String,
    limit: RateLimit,
    hits: u64,
    /// Decided without Redis (it failed): apply this scaled limit locally.
    fallback: Option<RateLimit>,
    status: Status,
    over: bool,
}

struct Inner {
    rules: ArcSwap<RuleSet>,
    rules_file: Option<PathBuf>,
    local: LocalLimits,
    fallback: LocalLimits,
    global: Option<GlobalLimits>,
    stats: Arc<Stats>,
    config: Config,
    _metrics: crate::metrics::Registered,
}

/// Cheap-to-clone handle on the limiter core.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("rules_file", &self.inner.rules_file)
            .field("digest", &self.inner.rules.load().digest)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads and parses a rules file.
pub fn read_rules(path: &std::path::Path) -> Result<RuleSet, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::RulesFile(format!("{}: {e}", path.display())))?;
    Ok(RuleSet::parse(&text, &path.display().to_string())?)
}

/// Longest domain or descriptor key a request may carry, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Longest descriptor value a request may carry, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024;

impl Limiter {
    /// A limiter over the rules in `config.rules_file` (an invalid file is an error here) and,
    /// when `redis` is given, global counters in Redis. Without Redis, global rules are applied
    /// locally.
    pub async fn new(
        config: &Config,
        redis: Option<&flashsale_runtime::config::RedisConfig>,
    ) -> Result<Self, Error> {
        let rules = match &config.rules_file {
            Some(path) => read_rules(path)?,
            None => RuleSet::empty(),
        };
        let global = match redis {
            Some(redis) => Some(
                GlobalLimits::connect(redis, &config.key_prefix, config.redis_timeout)
                    .await
                    .map_err(|e| Error::Redis(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Self::assemble(config, rules, global))
    }

    /// A limiter over given rules (tests, embedding).
    pub fn with_rules(config: &Config, rules: RuleSet, global: Option<GlobalLimits>) -> Self {
        Self::assemble(config, rules, global)
    }

    fn assemble(config: &Config, rules: RuleSet, global: Option<GlobalLimits>) -> Self {
        tracing::info!(
            digest = %rules.digest,
            rules = rules.domains().map(|d| d.rules().len()).sum::<usize>(),
            "limit rules loaded"
        );
        let stats = Arc::new(Stats::default());
        Self {
            inner: Arc::new(Inner {
                rules: ArcSwap::from_pointee(rules),
                rules_file: config.rules_file.clone(),
                local: LocalLimits::default(),
                fallback: LocalLimits::default(),
                global,
                _metrics: crate::metrics::register(stats.clone()),
                stats,
                config: config.clone(),
            }),
        }
    }

    /// The rules in force.
    pub fn rules(&self) -> Arc<RuleSet> {
        self.inner.rules.load_full()
    }

    /// Every rule's counters.
    pub fn stats(&self) -> Vec<RuleStats> {
        self.inner.stats.snapshot()
    }

    /// Re-reads the rules file. A file that does not parse is refused and the rules in force
    /// stay; returns the digest in force.
    pub fn reload(&self) -> Result<String, Error> {
        let Some(path) = &self.inner.rules_file else {
            return Ok(self.rules().digest.clone());
        };
        let rules = read_rules(path)?;
        let digest = rules.digest.clone();
        if digest != self.rules().digest {
            self.inner.rules.store(Arc::new(rules));
            tracing::info!(%digest, file = %path.display(), "limit rules reloaded");
        }
        Ok(digest)
    }

    /// Watches the rules file (polling its content every `reload_interval`, which also follows
    /// Kubernetes ConfigMap symlink swaps) and sweeps idle local counters, until `shutdown`.
    pub async fn watch(self, shutdown: Shutdown) {
        let mut ticker = tokio::time::interval(self.inner.config.reload_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_bad = String::new();
        let mut last_sweep = tokio::time::Instant::now();
        loop {
            tokio::select! {
                () = shutdown.wait() => break,
                _ = ticker.tick() => {}
            }
            if let Some(path) = &self.inner.rules_file {
                match std::fs::read_to_string(path) {
                    Ok(text) => {
                        use sha2::Digest;
                        let digest: String = sha2::Sha256::digest(text.as_bytes())
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect();
                        if digest != self.rules().digest && digest != last_bad {
                            match self.reload() {
                                Ok(_) => last_bad.clear(),
                                Err(e) => {
                                    tracing::error!(error = %e, "new rules file refused; the rules in force stay");
                                    last_bad = digest;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(file = %path.display(), error = %e, "rules file unreadable; the rules in force stay")
                    }
                }
            }
            if last_sweep.elapsed() > Duration::from_secs(60) {
                let dropped = self.inner.local.sweep() + self.inner.fallback.sweep();
                tracing::debug!(dropped, "idle local counters dropped");
                last_sweep = tokio::time::Instant::now();
            }
        }
    }

    /// Judges a request (see the module docs): check it, match each descriptor to its rule,
    /// then the local limits (peeked), the global ones (one Redis script, charged only if
    /// nothing is over yet), the local ones charged only if nothing refused the request, and
    /// the verdicts with their counters.
    pub async fn decide(&self, request: &Request) -> Result<Decision, Error> {
        check(request)?;
        let rules = self.rules();
        let Some(domain) = rules.domain(&request.domain) else {
            return Ok(Decision {
                code: Code::Ok,
                statuses: vec![Status::unlimited(); request.descriptors.len()],
            });
        };
        let mut plans = plans(domain, request);
        let mut blocked = self.peek_local(&mut plans);
        blocked |= self.judge_global(request, &mut plans, blocked).await;
        if !blocked {
            self.charge_local(&mut plans);
        }
        Ok(self.verdicts(&request.domain, plans))
    }

    /// Phase 1, local limits: peek only. True when one that counts is over.
    fn peek_local(&self, plans: &mut [Option<Plan>]) -> bool {
        let mut blocked = false;
        for plan in plans
            .iter_mut()
            .flatten()
            .filter(|p| !p.rule.unlimited && !p.rule.algorithm.is_global())
        {
            let v = self
                .inner
                .local
                .peek(plan.limit, &plan.key, clamp(plan.hits));
            apply_local(plan, v);
            blocked |= plan.over && plan.counts();
        }
        blocked
    }

    /// Phase 2, global limits: one script for all of them, charged only if nothing is over
    /// (`blocked`). True when one that counts is over.
    async fn judge_global(
        &self,
        request: &Request,
        plans: &mut [Option<Plan>],
        blocked: bool,
    ) -> bool {
        let global_ids: Vec<usize> = plans
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                p.as_ref()
                    .filter(|p| !p.rule.unlimited && p.rule.algorithm.is_global())
                    .map(|_| i)
            })
            .collect();
        if global_ids.is_empty() {
            return false;
        }
        let checks: Vec<GlobalCheck> = global_ids
            .iter()
            .filter_map(|&i| plans[i].as_ref())
            .map(|p| GlobalCheck {
                key: p.key.clone(),
                algorithm: p.rule.algorithm,
                limit: p.limit,
                hits: p.hits,
                shadow: p.rule.shadow_mode,
            })
            .collect();
        let verdicts = match &self.inner.global {
            Some(global) => {
                global
                    .judge(&request.domain, &checks, blocked, now_ms())
                    .await
            }
            None => Err(crate::global::RedisError("no Redis configured".into())),
        };
        let mut over = false;
        match verdicts {
            Ok((_, verdicts)) => {
                for (&i, v) in global_ids.iter().zip(verdicts) {
                    if let Some(plan) = plans[i].as_mut() {
                        plan.over = v.over;
                        plan.status.remaining = if v.over {
                            0
                        } else {
                            u64::from(plan.limit.requests_per_unit).saturating_sub(v.count) as u32
                        };
                        plan.status.reset = Some(v.reset);
                        over |= plan.over && plan.counts();
                    }
                }
            }
            Err(e) => {
                let mode = self.failure_mode();
                tracing::warn!(error = %e, ?mode, "global limits decided without Redis");
                for &i in &global_ids {
                    if let Some(plan) = plans[i].as_mut() {
                        self.without_redis(&request.domain, plan, mode);
                        over |= plan.over && plan.counts();
                    }
                }
            }
        }
        over
    }

    /// How global limits are decided while Redis fails: locally when there is no Redis at all.
    fn failure_mode(&self) -> FailureMode {
        if self.inner.global.is_none() {
            FailureMode::Local
        } else {
            self.inner.config.failure_mode
        }
    }

    /// Decides one global limit without Redis, as `mode` says.
    fn without_redis(&self, domain: &str, plan: &mut Plan, mode: FailureMode) {
        if self.inner.global.is_some() {
            self.inner
                .stats
                .with(domain, &plan.rule.path, |c| bump(&c.redis_errors));
        }
        match mode {
            FailureMode::Allow => {}
            FailureMode::Deny => {
                plan.over = true;
                plan.status.remaining = 0;
                plan.status.reset =
                    Some(self.inner.config.redis_timeout.max(Duration::from_secs(1)));
            }
            FailureMode::Local => {
                let share = if self.inner.global.is_none() {
                    1.0
                } else {
                    self.inner.config.fallback_share
                };
                let scaled = RateLimit {
                    unit: plan.limit.unit,
                    requests_per_unit: ((f64::from(plan.limit.requests_per_unit) * share).ceil()
                        as u32)
                        .max(1),
                };
                plan.fallback = Some(scaled);
                let v = self
                    .inner
                    .fallback
                    .peek(scaled, &plan.key, clamp(plan.hits));
                apply_local(plan, v);
            }
        }
    }

    /// Phase 3: charge the local limits (and the local stand-ins of global ones decided
    /// without Redis); run only when nothing refused the request.
    fn charge_local(&self, plans: &mut [Option<Plan>]) {
        for plan in plans
            .iter_mut()
            .flatten()
            .filter(|p| !p.rule.unlimited && p.hits > 0)
        {
            let (store, limit) = match (plan.rule.algorithm, plan.fallback) {
                (Algorithm::LocalGcra, _) => (&self.inner.local, plan.limit),
                (_, Some(scaled)) => (&self.inner.fallback, scaled),
                _ => continue,
            };
            let v = store.take(limit, &plan.key, clamp(plan.hits));
            if !plan.over {
                // Lost a race since the peek: the request is refused after all.
                apply_local(plan, v);
            }
        }
    }

    /// Phase 4: each descriptor's status, the overall code, and the per-rule counters.
    fn verdicts(&self, domain: &str, plans: Vec<Option<Plan>>) -> Decision {
        let near = self.inner.config.near_limit_ratio;
        let mut statuses = Vec::with_capacity(plans.len());
        let mut code = Code::Ok;
        for plan in plans {
            let Some(mut plan) = plan else {
                statuses.push(Status::unlimited());
                continue;
            };
            self.inner.stats.with(domain, &plan.rule.path, |c| {
                bump(&c.total);
                if plan.over && plan.rule.shadow_mode {
                    bump(&c.shadow_mode);
                } else if plan.over {
                    bump(&c.over_limit);
                } else if !plan.rule.unlimited && plan.used_beyond(near) {
                    bump(&c.near_limit);
                }
            });
            if plan.over && !plan.rule.shadow_mode && !plan.rule.unlimited {
                plan.status.code = Code::OverLimit;
                code = Code::OverLimit;
            }
            statuses.push(plan.status);
        }
        Decision { code, statuses }
    }
}

impl Plan {
    /// Whether this rule's verdict can refuse the request (not unlimited, not shadow mode).
    fn counts(&self) -> bool {
        !self.rule.unlimited && !self.rule.shadow_mode
    }

    /// True when more than `share` of the limit is used.
    fn used_beyond(&self, share: f64) -> bool {
        let per_unit = self.limit.requests_per_unit;
        f64::from(per_unit - self.status.remaining.min(per_unit)) > f64::from(per_unit) * share
    }
}

/// Refuses a request the limiter cannot judge (fails closed: an error, never "unlimited").
fn check(request: &Request) -> Result<(), Error> {
    if request.domain.is_empty() {
        return Err(Error::InvalidArgument("domain must not be empty".into()));
    }
    if request.domain.len() > MAX_NAME_BYTES {
        return Err(Error::InvalidArgument(format!(
            "domain is {} bytes; at most {MAX_NAME_BYTES}",
            request.domain.len()
        )));
    }
    if request.descriptors.is_empty() {
        return Err(Error::InvalidArgument(
            "at least one descriptor is required".into(),
        ));
    }
    for (i, d) in request.descriptors.iter().enumerate() {
        if d.entries.is_empty() || d.entries.iter().any(|(k, _)| k.is_empty()) {
            return Err(Error::InvalidArgument(format!(
                "descriptor {i} needs at least one entry, each with a key"
            )));
        }
        if let Some(hits) = d.hits.filter(|h| *h > u64::from(u32::MAX)) {
            return Err(Error::InvalidArgument(format!(
                "descriptor {i}: hits_addend {hits} is more than any limit holds (at most {})",
                u32::MAX
            )));
        }
        // Each actual value may become a counter key in Redis: bound what a caller can make
        // the limiter store.
        if let Some((key, value)) = d
            .entries
            .iter()
            .find(|(k, v)| k.len() > MAX_NAME_BYTES || v.len() > MAX_VALUE_BYTES)
        {
            return Err(Error::InvalidArgument(format!(
                "descriptor {i}: entry {:?} is {} + {} bytes; keys take at most {MAX_NAME_BYTES}, values {MAX_VALUE_BYTES}",
                key.chars().take(32).collect::<String>(),
                key.len(),
                value.len()
            )));
        }
    }
    Ok(())
}

/// Each descriptor's plan: its rule and limit, or `None` when no rule matches it or a rule
/// that matched another descriptor replaces its rule.
fn plans(domain: &crate::rules::Domain, request: &Request) -> Vec<Option<Plan>> {
    let default_hits = if request.hits_addend == 0 {
        1
    } else {
        u64::from(request.hits_addend)
    };
    let mut plans: Vec<Option<Plan>> = request
        .descriptors
        .iter()
        .map(|d| {
            let entries: Vec<(&str, &str)> = d
                .entries
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let matched = domain.matching(&entries)?;
            let rule = matched.rule.clone();
            let limit = d.limit.or(rule.limit);
            Some(Plan {
                key: matched.key,
                hits: d.hits.unwrap_or(default_hits),
                fallback: None,
                status: Status {
                    code: Code::Ok,
                    limit: limit.map(|l| (l, rule.name.clone())),
                    remaining: limit.map_or(0, |l| l.requests_per_unit),
                    reset: None,
                    rule: Some(rule.path.clone()),
                },
                over: false,
                limit: limit.unwrap_or(RateLimit {
                    unit: crate::rules::Unit::Second,
                    requests_per_unit: u32::MAX,
                }),
                rule,
            })
        })
        .collect();
    // A matched rule that another matched rule replaces does not apply.
    let replaced: HashSet<String> = plans
        .iter()
        .flatten()
        .flat_map(|p| p.rule.replaces.clone())
        .collect();
    for plan in &mut plans {
        if plan
            .as_ref()
            .is_some_and(|p| p.rule.name.as_ref().is_some_and(|n| replaced.contains(n)))
        {
            *plan = None;
        }
    }
    plans
}

fn clamp(hits: u64) -> u32 {
    u32::try_from(hits).unwrap_or(u32::MAX)
}

fn apply_local(plan: &mut Plan, v: LocalVerdict) {
    plan.over = !v.allowed;
    plan.status.remaining = v.remaining;
    plan.status.reset = Some(v.reset);
}
