//! The limiter's rules parser on arbitrary text: it never panics, and what it accepts is
//! consistent (every domain found by name, limits positive, the digest is the text's).

#![no_main]

use flashsale_limiter::RuleSet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(rules) = RuleSet::parse(text, "fuzz") else {
        return;
    };
    assert_eq!(rules.digest.len(), 64, "a hex SHA-256");
    // Words of the text as descriptor entries: matching never panics, whatever it is given.
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ':')
        .filter(|w| !w.is_empty())
        .take(8)
        .collect();
    let entries: Vec<(&str, &str)> = words
        .chunks(2)
        .map(|p| (p[0], *p.last().unwrap()))
        .collect();
    for domain in rules.domains() {
        assert!(!domain.name.is_empty());
        assert!(
            rules.domain(&domain.name).is_some(),
            "{} is listed but not found",
            domain.name
        );
        for rule in domain.rules() {
            if let Some(limit) = &rule.limit {
                assert!(
                    limit.requests_per_unit > 0,
                    "{}: a zero limit was accepted",
                    rule.path
                );
                assert!(!rule.unlimited);
            }
        }
        if let Some(matched) = domain.matching(&entries) {
            assert!(domain.rules().iter().any(|r| r.path == matched.rule.path));
        }
    }
});
