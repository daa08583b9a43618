//! Limit rules in the YAML shape users of Envoy's ratelimit service know, and how a request's
//! descriptors are matched against them.
//!
//! ```yaml
//! domain: flashsale
//! algorithm: fixed_window          # default for this domain: fixed_window | sliding_window | local_gcra
//! descriptors:
//!   - key: sale                    # no value: every sale gets its own counter
//!     rate_limit: { unit: second, requests_per_unit: 2000 }
//!     descriptors:
//!       - key: user
//!         rate_limit: { unit: minute, requests_per_unit: 20 }
//!   - key: ip
//!     algorithm: local_gcra        # per pod, in memory
//!     rate_limit: { unit: second, requests_per_unit: 50 }
//!   - key: ip
//!     value: "10.1.*"              # trailing * matches a prefix; each value its own counter
//!     unlimited: true
//!   - key: method
//!     value: /flashsale.v1.FlashSale/Purchase
//!     name: purchase
//!     shadow_mode: true            # count, report, never refuse
//!     rate_limit: { unit: second, requests_per_unit: 5000 }
//! ```
//!
//! A file may hold several domains as separate YAML documents (`---`). Unknown keys, duplicate
//! keys, bad units and bad algorithms are refused with the line and column; rules that parse but
//! make no sense (a limit of 0, both `unlimited` and a limit, the same key and value twice under
//! one parent) are refused with their path.

use std::{collections::HashMap, fmt, time::Duration};

use serde::Deserialize;

/// A rate-limit time unit (Envoy's names, lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One day.
    Day,
    /// Seven days.
    Week,
    /// Thirty days.
    Month,
    /// 365 days.
    Year,
}

impl Unit {
    /// The window length.
    pub fn duration(self) -> Duration {
        Duration::from_secs(match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Week => 7 * 86_400,
            Self::Month => 30 * 86_400,
            Self::Year => 365 * 86_400,
        })
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }
}

/// How a limit is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// A counter per window in Redis, shared by every replica (Envoy ratelimit's only one).
    #[default]
    FixedWindow,
    /// Redis counters of this and the previous window, weighted: no burst at window edges.
    SlidingWindow,
    /// GCRA in this process's memory: per pod, no Redis round trip.
    LocalGcra,
}

impl Algorithm {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FixedWindow => "fixed_window",
            Self::SlidingWindow => "sliding_window",
            Self::LocalGcra => "local_gcra",
        }
    }

    /// True for algorithms counted in Redis.
    pub fn is_global(self) -> bool {
        !matches!(self, Self::LocalGcra)
    }
}

/// A limit: `requests_per_unit` per `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// The window.
    pub unit: Unit,
    /// Requests allowed per window.
    pub requests_per_unit: u32,
}

/// A reference to a named rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replaces {
    /// The replaced rule's `name`.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDescriptor {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    algorithm: Option<Algorithm>,
    #[serde(default)]
    unlimited: bool,
    #[serde(default)]
    shadow_mode: bool,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    replaces: Vec<Replaces>,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDomain {
    domain: String,
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default)]
    descriptors: Vec<RawDescriptor>,
}

/// A rules file that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// The YAML does not parse into rules (unknown or duplicate keys, bad units, ...).
    #[error("{origin}: {message}")]
    Parse {
        /// The file (or `<inline>`).
        origin: String,
        /// serde's message, with line and column.
        message: String,
    },
    /// A rule parses but breaks a rule of its own.
    #[error("{origin}: {path}: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// Where, e.g. `domain flashsale: descriptors[1].descriptors[0]`.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// One matched rule: what limits a descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The descriptor path of the rule, values as configured: `sale/user`, `ip=10.1.*`.
    pub path: String,
    /// The limit; `None` when `unlimited`.
    pub limit: Option<RateLimit>,
    /// How it is counted.
    pub algorithm: Algorithm,
    /// Counts but never refuses.
    pub shadow_mode: bool,
    /// Never limits.
    pub unlimited: bool,
    /// The rule's name, for `replaces`.
    pub name: Option<String>,
    /// Names of rules this one replaces when both match one request.
    pub replaces: Vec<String>,
}

#[derive(Debug, Clone)]
struct Node {
    rule: Option<Rule>,
    /// Exact `key=value` children.
    exact: HashMap<(String, String), Node>,
    /// `key=prefix*` children, in file order.
    prefix: Vec<(String, String, Node)>,
    /// `key` children without a value (match any value).
    any: HashMap<String, Node>,
}

/// Every rule of one domain.
#[derive(Debug, Clone)]
pub struct Domain {
    /// The domain name.
    pub name: String,
    root: Node,
    rules: Vec<Rule>,
}

/// Every domain, as loaded from one file.
#[derive(Debug, Clone)]
pub struct RuleSet {
    domains: HashMap<String, Domain>,
    /// Hex SHA-256 of the file's bytes.
    pub digest: String,
}

/// What a descriptor matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    /// The rule.
    pub rule: &'a Rule,
    /// The counter key: the descriptor's actual entries, `k=v/k=v`.
    pub key: String,
}

impl RuleSet {
    /// Parses a rules file's text. `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, RulesError> {
        use sha2::Digest;
        let mut domains = HashMap::new();
        for document in serde_yaml_ng::Deserializer::from_str(text) {
            let raw = RawDomain::deserialize(document).map_err(|e| RulesError::Parse {
                origin: origin.to_owned(),
                message: e.to_string(),
            })?;
            let invalid = |path: String, message: String| RulesError::Invalid {
                origin: origin.to_owned(),
                path,
                message,
            };
            if raw.domain.is_empty() {
                return Err(invalid("domain".into(), "must not be empty".into()));
            }
            if domains.contains_key(&raw.domain) {
                return Err(invalid(
                    format!("domain {}", raw.domain),
                    "appears twice".into(),
                ));
            }
            let mut rules = Vec::new();
            let root = build(
                &raw.descriptors,
                raw.algorithm,
                "",
                &format!("domain {}: descriptors", raw.domain),
                &mut rules,
            )
            .map_err(|(path, message)| invalid(path, message))?;
            let names: Vec<&str> = rules.iter().filter_map(|r| r.name.as_deref()).collect();
            for rule in &rules {
                for replaced in &rule.replaces {
                    if !names.contains(&replaced.as_str()) {
                        return Err(invalid(
                            format!("domain {}: {}", raw.domain, rule.path),
                            format!("replaces unknown rule `{replaced}`"),
                        ));
                    }
                }
            }
            let mut seen = std::collections::HashSet::new();
            for name in &names {
                if !seen.insert(*name) {
                    return Err(invalid(
                        format!("domain {}", raw.domain),
                        format!("rule name `{name}` is used twice"),
                    ));
                }
            }
            domains.insert(
                raw.domain.clone(),
                Domain {
                    name: raw.domain,
                    root,
                    rules,
                },
            );
        }
        let digest = sha2::Sha256::digest(text.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Self { domains, digest })
    }

    /// An empty rule set (nothing is limited).
    pub fn empty() -> Self {
        Self {
            domains: HashMap::new(),
            digest: String::new(),
        }
    }

    /// A domain's rules.
    pub fn domain(&self, name: &str) -> Option<&Domain> {
        self.domains.get(name)
    }

    /// Every domain.
    pub fn domains(&self) -> impl Iterator<Item = &Domain> {
        self.domains.values()
    }
}

/// Builds one level of the tree; errors carry (path, message).
fn build(
    raw: &[RawDescriptor],
    inherited: Algorithm,
    parent_path: &str,
    error_path: &str,
    rules: &mut Vec<Rule>,
) -> Result<Node, (String, String)> {
    let mut node = Node {
        rule: None,
        exact: HashMap::new(),
        prefix: Vec::new(),
        any: HashMap::new(),
    };
    for (i, d) in raw.iter().enumerate() {
        let here = format!("{error_path}[{i}]");
        if d.key.is_empty() {
            return Err((here, "key must not be empty".into()));
        }
        if d.unlimited && d.rate_limit.is_some() {
            return Err((here, "unlimited and rate_limit exclude each other".into()));
        }
        if let Some(limit) = d.rate_limit
            && limit.requests_per_unit == 0
        {
            return Err((here, "requests_per_unit must be at least 1 (use unlimited: false and omit the descriptor to block nothing)".into()));
        }
        let segment = match &d.value {
            Some(v) => format!("{}={v}", d.key),
            None => d.key.clone(),
        };
        let path = if parent_path.is_empty() {
            segment
        } else {
            format!("{parent_path}/{segment}")
        };
        let algorithm = d.algorithm.unwrap_or(inherited);
        let mut child = build(
            &d.descriptors,
            algorithm,
            &path,
            &format!("{here}.descriptors"),
            rules,
        )?;
        if d.rate_limit.is_some() || d.unlimited {
            let rule = Rule {
                path: path.clone(),
                limit: d.rate_limit,
                algorithm,
                shadow_mode: d.shadow_mode,
                unlimited: d.unlimited,
                name: d.name.clone(),
                replaces: d.replaces.iter().map(|r| r.name.clone()).collect(),
            };
            rules.push(rule.clone());
            child.rule = Some(rule);
        } else if d.shadow_mode || d.name.is_some() || !d.replaces.is_empty() {
            return Err((
                here,
                "shadow_mode, name and replaces need a rate_limit or unlimited".into(),
            ));
        }
        let duplicate = match &d.value {
            None => node.any.insert(d.key.clone(), child).is_some(),
            Some(v) if v.ends_with('*') => {
                let prefix = v.trim_end_matches('*').to_owned();
                let dup = node
                    .prefix
                    .iter()
                    .any(|(k, p, _)| *k == d.key && *p == prefix);
                node.prefix.push((d.key.clone(), prefix, child));
                dup
            }
            Some(v) => node
                .exact
                .insert((d.key.clone(), v.clone()), child)
                .is_some(),
        };
        if duplicate {
            return Err((
                here,
                format!("`{}` appears twice under the same parent", path),
            ));
        }
    }
    Ok(node)
}

impl Domain {
    /// Every rule, in file order (depth first).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The most specific rule for a descriptor's entries, Envoy-style: at each level an exact
    /// `key=value` child wins, then the longest matching `key=prefix*`, then a `key` child without
    /// a value. `None` when some level has no match or the last node has no limit.
    pub fn matching(&self, entries: &[(&str, &str)]) -> Option<Matched<'_>> {
        let mut node = &self.root;
        for (key, value) in entries {
            node = node
                .exact
                .get(&((*key).to_owned(), (*value).to_owned()))
                .or_else(|| {
                    node.prefix
                        .iter()
                        .filter(|(k, p, _)| k == key && value.starts_with(p.as_str()))
                        .max_by_key(|(_, p, _)| p.len())
                        .map(|(_, _, n)| n)
                })
                .or_else(|| node.any.get(*key))?;
        }
        let rule = node.rule.as_ref()?;
        let key = entries
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("/");
        Some(Matched { rule, key })
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.limit {
            Some(limit) => write!(
                f,
                "{}: {}/{} ({})",
                self.path,
                limit.requests_per_unit,
                limit.unit.as_str(),
                self.algorithm.as_str()
            ),
            None => write!(f, "{}: unlimited", self.path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
domain: flashsale
algorithm: sliding_window
descriptors:
  - key: sale
    rate_limit: { unit: second, requests_per_unit: 100 }
    descriptors:
      - key: user
        rate_limit: { unit: minute, requests_per_unit: 20 }
  - key: sale
    value: vip
    unlimited: true
  - key: ip
    value: "10.1.*"
    algorithm: local_gcra
    rate_limit: { unit: week, requests_per_unit: 7 }
  - key: ip
    value: "10.*"
    rate_limit: { unit: hour, requests_per_unit: 1 }
  - key: method
    value: purchase
    name: purchase
    shadow_mode: true
    rate_limit: { unit: second, requests_per_unit: 5 }
  - key: burst
    replaces: [{ name: purchase }]
    rate_limit: { unit: second, requests_per_unit: 9 }
---
domain: other
descriptors:
  - key: k
    rate_limit: { unit: day, requests_per_unit: 1 }
"#;

    #[test]
    fn matching_follows_envoy_precedence() {
        let set = RuleSet::parse(GOOD, "good.yaml").unwrap();
        let d = set.domain("flashsale").unwrap();
        let m = d.matching(&[("sale", "s1")]).unwrap();
        assert_eq!((m.rule.path.as_str(), m.key.as_str()), ("sale", "sale=s1"));
        assert_eq!(
            m.rule.algorithm,
            Algorithm::SlidingWindow,
            "inherited from the domain"
        );
        let m = d.matching(&[("sale", "s1"), ("user", "u9")]).unwrap();
        assert_eq!(m.rule.path, "sale/user");
        assert_eq!(m.key, "sale=s1/user=u9");
        assert!(
            d.matching(&[("sale", "vip")]).unwrap().rule.unlimited,
            "exact beats any"
        );
        assert!(
            d.matching(&[("sale", "vip"), ("user", "u")]).is_none(),
            "no child under vip"
        );
        let m = d.matching(&[("ip", "10.1.2.3")]).unwrap();
        assert_eq!(
            (m.rule.path.as_str(), m.rule.algorithm),
            ("ip=10.1.*", Algorithm::LocalGcra)
        );
        assert_eq!(
            m.rule.limit.unwrap().unit.duration(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            d.matching(&[("ip", "10.2.0.1")]).unwrap().rule.path,
            "ip=10.*",
            "longest prefix"
        );
        assert!(d.matching(&[("ip", "192.168.0.1")]).is_none());
        assert!(d.matching(&[("unknown", "x")]).is_none());
        assert!(set.domain("nope").is_none());
        assert_eq!(set.domain("other").unwrap().rules().len(), 1);
        assert_eq!(set.digest.len(), 64);
    }

    fn error_of(text: &str) -> String {
        RuleSet::parse(text, "rules.yaml").unwrap_err().to_string()
    }

    #[test]
    fn invalid_files_are_refused_with_a_location() {
        let cases: &[(&str, &str, &[&str])] = &[
            (
                "unknown key",
                "domain: d\ndescriptors:\n  - key: a\n    rate_limitt: { unit: second, requests_per_unit: 1 }\n",
                &["unknown field `rate_limitt`", "line 4 column 5"],
            ),
            (
                "unknown top-level key",
                "domain: d\ndescriptor: []\n",
                &["unknown field `descriptor`", "line 2"],
            ),
            (
                "duplicate mapping key",
                "domain: d\ndescriptors:\n  - key: a\n    key: b\n",
                &["duplicate field `key`", "line 3"],
            ),
            (
                "bad unit",
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: fortnight, requests_per_unit: 1 }\n",
                &["unknown variant `fortnight`", "line 4"],
            ),
            (
                "bad algorithm",
                "domain: d\nalgorithm: leaky\n",
                &["unknown variant `leaky`", "line 2"],
            ),
            (
                "negative limit",
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: -1 }\n",
                &["line 4"],
            ),
            (
                "zero limit",
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 0 }\n",
                &["descriptors[0]", "at least 1"],
            ),
            (
                "unlimited with a limit",
                "domain: d\ndescriptors:\n  - key: a\n    unlimited: true\n    rate_limit: { unit: second, requests_per_unit: 1 }\n",
                &["descriptors[0]", "exclude each other"],
            ),
            (
                "same key twice under one parent",
                "domain: d\ndescriptors:\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 1 }\n  - key: a\n    rate_limit: { unit: second, requests_per_unit: 2 }\n",
                &["descriptors[1]", "appears twice"],
            ),
            (
                "empty domain",
                "domain: \"\"\n",
                &["domain", "must not be empty"],
            ),
            (
                "domain twice",
                "domain: d\n---\ndomain: d\n",
                &["domain d", "appears twice"],
            ),
            (
                "replaces an unknown rule",
                "domain: d\ndescriptors:\n  - key: a\n    replaces: [{ name: ghost }]\n    rate_limit: { unit: second, requests_per_unit: 1 }\n",
                &["replaces unknown rule `ghost`"],
            ),
            (
                "shadow mode without a limit",
                "domain: d\ndescriptors:\n  - key: a\n    shadow_mode: true\n",
                &["need a rate_limit"],
            ),
            ("not yaml", "domain: [\n", &["rules.yaml"]),
        ];
        for (name, text, needles) in cases {
            let error = error_of(text);
            for needle in *needles {
                assert!(error.contains(needle), "{name}: `{error}` lacks `{needle}`");
            }
            assert!(error.starts_with("rules.yaml"), "{name}: {error}");
        }
    }
}
