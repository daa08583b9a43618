//! Stock buckets: one hot item's stock spread over several Redis Cluster masters.
//!
//! One sale normally lives in one hash slot (`{sale_id}`), so one Redis master decides all of
//! its reservations. A sale loaded with `stock_buckets = N > 1` keeps
//!
//! - a **control record** in its own slot, `fs:{sale_id}:sale`: the spec, `buckets = N`, the
//!   refill `batch`, and `pool`, the units no bucket has been given yet (all of them at first);
//! - **N buckets**, bucket `k` tagged `{sale_id#k.s}` (`#` never occurs in a sale id, so no
//!   bucket can share a tag with another sale; `s` is the first suffix that puts the bucket
//!   near the middle of the `k`-th of N equal hash-slot ranges, so buckets spread evenly over
//!   the masters): each is a complete single-slot sale of the ordinary layout (`sale`,
//!   `users`, `idem`, `exp`, `res`) whose `total` is the units it has been given so far; the
//!   ordinary scripts (Reserve, Commit, Confirm, Release, Expire) run on it unchanged;
//! - per slot, a transfer **journal** `:out` (units that left it, not yet confirmed applied)
//!   and, per bucket, the set `:in` of transfer ids it has applied.
//!
//! # Why the per-user limit and atomicity hold
//!
//! A buyer's **home bucket** is `CRC16(user_id) mod N` (Redis's own key-slot hash: fixed by the
//! Redis protocol, so every replica of every version computes the same bucket). Everything about
//! a buyer — the units they hold or own, their idempotency keys, their reservations — lives in
//! their home bucket only, and a reservation is always made there, by the one Reserve script
//! that checks the window, the idempotency key, the per-user limit and the bucket's stock
//! atomically. A buyer never reserves anywhere else, so no other bucket could let them past
//! their limit, and a retry with the same idempotency key always meets the first answer.
//!
//! When the home bucket runs dry, it is not the reservation that moves but the **stock**:
//! units move into the home bucket and the Reserve runs again there. Reservation ids carry their
//! bucket (`<uuid>#k`), so Commit, Confirm and Release go straight to it.
//!
//! # Why no unit is sold twice or lost
//!
//! A transfer moves units between two slots in two atomic steps:
//!
//! 1. **Give** (source slot): take up to `n` units from the pool (or from a bucket's
//!    `available`, lowering its `total`), and record `transfer id -> destination:units` in the
//!    source's journal, in the same script. The units are now in the journal, nowhere else.
//! 2. **Credit** (destination bucket): if the transfer id is not yet in the bucket's `:in` set,
//!    add it and add the units to `total` and `available`, in the same script; a second Credit
//!    of the same transfer changes nothing. Then the journal entry is deleted.
//!
//! So at every moment `pool + Σ bucket totals + Σ journalled-but-not-applied units == stock`,
//! each bucket keeps `available + held + sold == total` on its own, and a unit is in exactly
//! one place. A process that dies between the steps leaves a journal entry; anyone may
//! **settle** it later (the sweeper does, and a buyer does before answering sold out): Credit is
//! idempotent, so settling a transfer another process is finishing is harmless.
//!
//! A rebuild (`Reconcile --repair`) counts every slot afresh from the orders and drops the
//! journals, so a Credit still on its way from before it would add units the pool already
//! has. Every slot carries the sale's **generation** (`gen`); Give records it in the journal
//! entry (`destination:units:generation`), a rebuild gives every slot a new one first, and a
//! Credit of another generation changes nothing.
//!
//! With replicas and `redis.replica_acks > 0`, each step waits (`WAIT`) until the replicas have
//! it before the next begins: a master killed after a Give cannot lose the Give while the
//! Credit survives (that would double the units), and a buyer is answered only once the
//! reservation is on a replica.
//!
//! # Refill, and sold out only when all buckets are empty
//!
//! A dry home bucket first draws a small batch (`batch`, about stock / (16 N), 1..=100, at
//! least the quantity asked) from the pool, so no bucket sits on stock others need. When the
//! pool is empty it takes from another bucket (starting at a random one) at most half of what
//! that bucket has beyond the quantity asked, so the last units spread instead of hopping. In
//! one process one request at a time refills a bucket; the others wait for it and try again.
//! The answer is SOLD_OUT only after the home bucket, the pool and every other bucket were
//! found empty and no journalled transfer was left to settle (requests that waited on that
//! search hear its answer). The sale-wide sold-out signal is sent then, never when one bucket
//! runs dry. Stock released later returns to the reservation's bucket, where any buyer's
//! search finds it.
//!
use std::time::Duration;

use fred::{
    interfaces::{ClusterInterface, ServerInterface},
    prelude::*,
    types::scripts::Script,
};

use crate::Error;

/// Most refill rounds (per bucket of the sale) one Reserve makes before answering ABORTED:
/// each round found units, but other processes' buyers took them first.
pub(crate) const MAX_ROUNDS_PER_BUCKET: u32 = 3;

/// Most times one Reserve waits for another request's refill of its bucket.
pub(crate) const MAX_WAITS: u32 = 10_000;

/// The hash tag of bucket `k` of a sale split into `n`: `sale_id#k.s`, with the smallest `s`
/// whose hash slot falls near the middle of the `k`-th of `n` equal slot ranges (within an
/// eighth of a range of its centre). Slots are handed to masters in contiguous ranges, so the
/// buckets spread evenly over them instead of wherever the hash happens to put them; every
/// process computes the same tag.
pub fn bucket_tag(sale_id: &str, k: u32, n: u32) -> String {
    let n = n.max(1);
    let centre = (2 * k + 1) * SLOTS / (2 * n);
    let reach = (SLOTS / (8 * n)).max(1);
    let near = (centre - reach.min(centre))..(centre + reach);
    let mut tag = format!("{sale_id}#{k}.");
    let prefix = tag.len();
    for s in 0u32.. {
        tag.truncate(prefix);
        tag.push_str(&s.to_string());
        if near.contains(&u32::from(fred::util::redis_keyslot(tag.as_bytes()))) {
            return tag;
        }
    }
    unreachable!("some suffix hashes near every slot")
}

/// Hash slots in a Redis Cluster.
const SLOTS: u32 = 16_384;

/// The buyer's home bucket out of `n`.
pub fn home_bucket(user_id: &str, n: u32) -> u32 {
    u32::from(fred::util::redis_keyslot(user_id.as_bytes())) % n.max(1)
}

/// A new reservation id that names its bucket.
pub(crate) fn reservation_id(uuid: &str, k: u32) -> String {
    format!("{uuid}#{k}")
}

/// The bucket a reservation id names, if it names one below `n`.
pub fn bucket_of(reservation_id: &str, n: u32) -> Option<u32> {
    let (_, text) = reservation_id.rsplit_once('#')?;
    let k: u32 = text.parse().ok()?;
    (k < n && k.to_string() == text).then_some(k)
}

/// The refill batch for a sale: about stock / (16 N), 1..=100.
pub(crate) fn batch_size(stock: u64, buckets: u32) -> u64 {
    (stock / (16 * u64::from(buckets.max(1)))).clamp(1, 100)
}

/// Every slot of a bucketed sale: the control record (the sale id itself), then each bucket.
pub(crate) fn slot_tags(sale_id: &str, buckets: u32) -> impl Iterator<Item = String> + '_ {
    std::iter::once(sale_id.to_owned())
        .chain((0..buckets).map(move |k| bucket_tag(sale_id, k, buckets)))
}

/// The keys of one slot's transfer journal and applied set.
pub(crate) fn journal_key(tag: &str) -> String {
    format!("fs:{{{tag}}}:out")
}

pub(crate) fn applied_key(tag: &str) -> String {
    format!("fs:{{{tag}}}:in")
}

pub(crate) fn hash_key(tag: &str) -> String {
    format!("fs:{{{tag}}}:sale")
}

/// The transfer scripts.
#[derive(Debug)]
pub(crate) struct TransferScripts {
    pub(crate) control_load: Script,
    pub(crate) bucket_load: Script,
    pub(crate) give: Script,
    pub(crate) credit: Script,
}

impl TransferScripts {
    pub(crate) fn new() -> Self {
        Self {
            control_load: Script::from_lua(include_str!("../lua/control_load.lua")),
            bucket_load: Script::from_lua(include_str!("../lua/bucket_load.lua")),
            give: Script::from_lua(include_str!("../lua/give.lua")),
            credit: Script::from_lua(include_str!("../lua/credit.lua")),
        }
    }
}

/// Waits until `replicas` replicas of the master owning `key` have every write this client
/// sent it; false when they did not within `timeout`.
pub(crate) async fn wait_replicas(
    client: &Client,
    key: &str,
    replicas: u32,
    timeout: Duration,
) -> Result<bool, fred::error::Error> {
    if replicas == 0 {
        return Ok(true);
    }
    let ms = timeout.as_millis().max(1) as i64;
    let slot = fred::util::redis_keyslot(key.as_bytes());
    let server = client
        .cached_cluster_state()
        .and_then(|state| state.get_server(slot).cloned());
    let acked: i64 = match server {
        Some(server) => {
            client
                .with_cluster_node(server)
                .wait(i64::from(replicas), ms)
                .await?
        }
        None => client.wait(i64::from(replicas), ms).await?,
    };
    Ok(acked >= i64::from(replicas))
}

/// One journalled transfer: where its units go, how many, and the sale's generation when it
/// was given (see `give.lua`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Journalled {
    pub(crate) to: u32,
    pub(crate) units: u64,
    pub(crate) generation: String,
}

/// Parses `"destination:units:generation"` from a journal entry (`"destination:units"`, an
/// entry written before generations, is of generation `0`).
pub(crate) fn parse_journal(entry: &str) -> Result<Journalled, Error> {
    let mut parts = entry.splitn(3, ':');
    let to = parts.next().and_then(|t| t.parse().ok());
    let units = parts.next().and_then(|n| n.parse().ok());
    let generation = parts.next().unwrap_or("0").to_owned();
    match (to, units) {
        (Some(to), Some(units)) if !generation.is_empty() => Ok(Journalled {
            to,
            units,
            generation,
        }),
        _ => Err(Error::Protocol(format!("journal entry {entry:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_name_their_bucket() {
        let id = reservation_id("0192f0c4-1b2c-7d3e-8f40-0123456789ab", 7);
        assert_eq!(bucket_of(&id, 8), Some(7));
        assert_eq!(bucket_of(&id, 7), None, "bucket beyond the sale's");
        assert_eq!(bucket_of("0192f0c4-1b2c-7d3e-8f40-0123456789ab", 8), None);
        assert_eq!(bucket_of("x#07", 8), None, "not the canonical form");
        assert_eq!(bucket_of("x#+1", 8), None);
        assert_eq!(bucket_of("x#", 8), None);
    }

    #[test]
    fn home_buckets_are_stable_and_spread() {
        assert_eq!(home_bucket("user-1", 8), home_bucket("user-1", 8));
        assert_eq!(home_bucket("anyone", 1), 0);
        let mut seen = [0u32; 8];
        for i in 0..8_000 {
            seen[home_bucket(&format!("user-{i}"), 8) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1200).contains(&n)), "{seen:?}");
    }

    #[test]
    fn bucket_tags_spread_over_the_slot_ranges() {
        for n in [1, 2, 3, 8, 64] {
            for k in 0..n {
                let tag = bucket_tag("sale-1", k, n);
                let slot = u32::from(fred::util::redis_keyslot(tag.as_bytes()));
                assert!(
                    (k * SLOTS / n..(k + 1) * SLOTS / n).contains(&slot),
                    "{tag}"
                );
                assert_eq!(tag, bucket_tag("sale-1", k, n), "stable");
            }
        }
    }

    #[test]
    fn batches_are_small_and_never_zero() {
        assert_eq!(batch_size(5_000, 8), 39);
        assert_eq!(batch_size(3, 2), 1);
        assert_eq!(batch_size(10_000_000, 2), 100);
    }

    #[test]
    fn journal_entries_parse() {
        let old = parse_journal("3:39").unwrap();
        assert_eq!((old.to, old.units, old.generation.as_str()), (3, 39, "0"));
        let new = parse_journal("3:39:0192-ab").unwrap();
        assert_eq!(
            (new.to, new.units, new.generation.as_str()),
            (3, 39, "0192-ab")
        );
        assert!(parse_journal("3").is_err());
        assert!(parse_journal("x:1").is_err());
        assert!(parse_journal("3:39:").is_err());
    }
}
