//! What the services agree on about a sale beyond the message shapes: its limits, the
//! fingerprint of a buyer's idempotency key, and where stock signals are published.
//!
//! The inventory enforces these and the gateway checks them before calling it; both read them
//! from here, so neither links the other.

/// Most units one sale may have.
pub const MAX_STOCK: u64 = 10_000_000;

/// Most stock buckets one sale may be split into (see the inventory's `buckets` module).
pub const MAX_BUCKETS: u32 = 64;

/// Most key fingerprints one `Inventory.KeyFingerprints` call hands out.
pub const MAX_FINGERPRINTS: u32 = 1_000_000;

/// The fingerprint of a buyer's idempotency key, as `Inventory.KeyFingerprints` returns them:
/// the first 8 bytes (big-endian) of SHA-256 over `user_id`, a zero byte and `key`. Gateways
/// compare fingerprints, not keys, so a sale's whole set fits in a few bytes per reservation; a
/// collision only sends a buyer to the inventory.
pub fn key_fingerprint(user_id: &str, key: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(user_id.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("SHA-256 has 32 bytes"))
}

/// Stock signals ([`crate::v1::StockSignal`]) on core NATS: published by the inventory when a
/// sale's available stock reaches zero and when it comes back, followed by every gateway.
pub mod signal {
    /// Default subject prefix of stock signals.
    pub const DEFAULT_PREFIX: &str = "flashsale.stock";

    /// The subject one sale's signals are published on: `<prefix>.<sale_id>`.
    pub fn subject(prefix: &str, sale_id: &str) -> String {
        format!("{prefix}.{sale_id}")
    }

    /// The subject that follows every sale's signals under `prefix`.
    pub fn every_sale(prefix: &str) -> String {
        format!("{prefix}.>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_separates_the_buyer_from_the_key() {
        assert_ne!(key_fingerprint("ab", "c"), key_fingerprint("a", "bc"));
        assert_eq!(key_fingerprint("a", "k"), key_fingerprint("a", "k"));
    }

    #[test]
    fn one_sales_subject_is_under_the_every_sale_wildcard() {
        let every = signal::every_sale(signal::DEFAULT_PREFIX);
        let one = signal::subject(signal::DEFAULT_PREFIX, "s-1");
        assert_eq!(every.trim_end_matches('>'), &one[..one.len() - "s-1".len()]);
    }
}
