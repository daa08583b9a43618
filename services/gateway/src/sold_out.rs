//! Which sales are sold out, as this gateway knows it: stock signals from the inventory
//! (`flashsale_proto::sale::signal`), and what the inventory's own answers showed.
//!
//! Signals are best-effort; each carries a per-sale sequence so a late one never overrides a
//! newer one, and [`SoldOutFlags::observe`] takes direct observations (a SOLD_OUT answer from
//! Reserve, a stock reading).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::Instant,
};

use dashmap::DashMap;
use futures::StreamExt;
use prost::Message;

use flashsale_proto::{
    sale::{key_fingerprint, signal},
    v1::{self as pb, StockSignal},
};
use flashsale_runtime::Shutdown;

use crate::{Error, Gateway, config::Config};

/// Most key fingerprints a gateway keeps for one sold-out sale (8 bytes each); a sale with
/// more sends every keyed purchase to the inventory while it is sold out.
const MAX_KEY_FINGERPRINTS: u32 = 200_000;

/// What a gateway knows of a sold-out sale's idempotency keys (see [`Gateway::sold_out_for`]).
#[derive(Debug, Clone)]
struct KeySet {
    /// The sold-out spell it was read in ([`SoldOutFlags::sold_out_episode`]).
    episode: u64,
    /// The fingerprints; `None` when the sale had too many to keep.
    fingerprints: Option<Arc<HashSet<u64>>>,
}

/// The gateway's sold-out view: the flags, when this replica last saw each sale sold out
/// itself, and per sold-out sale the fingerprints of the keys that made reservations in it.
pub(crate) struct StockWatch {
    flags: SoldOutFlags,
    seen: DashMap<String, Instant>,
    key_sets: DashMap<String, KeySet>,
    /// One read of a sale's key fingerprints at a time.
    key_reads: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

impl StockWatch {
    /// A view following the stock signals under `config.signal_prefix`.
    pub(crate) async fn follow(
        nats: &async_nats::Client,
        config: &Config,
        shutdown: &Shutdown,
    ) -> Result<Self, Error> {
        let flags = SoldOutFlags::subscribe(nats, &config.signal_prefix, shutdown)
            .await
            .map_err(|e| Error::Config(format!("subscribing to sold-out signals: {e}")))?;
        Ok(Self {
            flags,
            seen: DashMap::new(),
            key_sets: DashMap::new(),
            key_reads: DashMap::new(),
        })
    }

    /// The sold-out signal says the sale is sold out now (without this replica's own sighting).
    pub(crate) fn sold_out_now(&self, sale_id: &str) -> bool {
        self.flags.is_sold_out(sale_id)
    }

    fn known_keys(&self, sale_id: &str, episode: u64) -> Option<Option<Arc<HashSet<u64>>>> {
        self.key_sets
            .get(sale_id)
            .filter(|k| k.episode == episode)
            .map(|k| k.fingerprints.clone())
    }
}

impl Gateway {
    fn sold_out_in_memory(&self, sale_id: &str) -> bool {
        let stock = &self.parts.stock;
        stock.flags.is_sold_out(sale_id)
            && stock
                .seen
                .get(sale_id)
                .is_some_and(|seen| seen.elapsed() < self.parts.config.sold_out_ttl)
    }

    /// The sold-out signal says the sale is sold out now (without this replica's own sighting).
    pub(crate) fn sold_out_now(&self, sale_id: &str) -> bool {
        self.parts.stock.sold_out_now(sale_id)
    }

    /// True when SOLD_OUT may be answered from memory: the sale is sold out and this buyer's
    /// key made no reservation in it. A retry of a purchase the buyer made goes on to the
    /// inventory, which answers it as the first time, on every replica and at any moment.
    pub(crate) async fn sold_out_for(&self, sale_id: &str, user_id: &str, key: &str) -> bool {
        if !self.sold_out_in_memory(sale_id) {
            return false;
        }
        if key.is_empty() {
            return true;
        }
        let Some(episode) = self.parts.stock.flags.sold_out_episode(sale_id) else {
            return false;
        };
        match self.key_set(sale_id, episode).await {
            Some(keys) => !keys.contains(&key_fingerprint(user_id, key)),
            None => false,
        }
    }

    /// The sale's key fingerprints as of this sold-out spell, read once per spell; `None` when
    /// they cannot be had (too many, or the inventory did not answer: then ask it each time).
    async fn key_set(&self, sale_id: &str, episode: u64) -> Option<Arc<HashSet<u64>>> {
        let stock = &self.parts.stock;
        if let Some(keys) = stock.known_keys(sale_id, episode) {
            return keys;
        }
        let gate = stock
            .key_reads
            .entry(sale_id.to_owned())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if let Some(keys) = stock.known_keys(sale_id, episode) {
            return keys;
        }
        let read = self
            .parts
            .clients
            .inventory
            .clone()
            .key_fingerprints(pb::KeyFingerprintsRequest {
                sale_id: sale_id.to_owned(),
                limit: MAX_KEY_FINGERPRINTS,
            })
            .await;
        let fingerprints = match read {
            Ok(found) => {
                let found = found.into_inner();
                found
                    .complete
                    .then(|| Arc::new(found.fingerprints.into_iter().collect()))
            }
            Err(status) => {
                tracing::debug!(sale_id, error = %status, "key fingerprints not read");
                return None;
            }
        };
        let set = KeySet {
            episode,
            fingerprints: fingerprints.clone(),
        };
        stock.key_sets.insert(sale_id.to_owned(), set);
        fingerprints
    }

    /// Records what the inventory said of a sale's available stock.
    pub(crate) fn observe_stock(&self, sale_id: &str, available: u64) {
        self.parts.stock.observe(sale_id, available, false);
    }

    /// Records a Reserve answer: the available stock after it, and whether it made a new
    /// reservation.
    pub(crate) fn observe_reserve(&self, sale_id: &str, available: u64, reserved: bool) {
        self.parts.stock.observe(sale_id, available, reserved);
    }
}

impl StockWatch {
    fn observe(&self, sale_id: &str, available: u64, reserved: bool) {
        if reserved {
            // A unit was there a moment ago, whatever the flag said: a stock signal may still
            // be on its way. Seeing it back starts a new spell, so the key set is read again.
            self.flags.observe(sale_id, false);
        }
        let sold_out = available == 0;
        self.flags.observe(sale_id, sold_out);
        if sold_out {
            self.seen.insert(sale_id.to_owned(), Instant::now());
        }
    }
}

/// One sale's flag.
#[derive(Debug, Clone, Copy)]
struct Flag {
    sold_out: bool,
    sequence: u64,
    /// Changes whenever the stock is seen coming back (sold out → not) and with every newer
    /// signal: what a gateway keys its snapshots of a sold-out sale on (one from before is
    /// stale).
    episode: u64,
}

impl Flag {
    fn set(&mut self, sold_out: bool) {
        if self.sold_out && !sold_out {
            self.episode += 1;
        }
        self.sold_out = sold_out;
    }
}

/// A gateway's local view of which sales are sold out, fed by stock signals.
#[derive(Debug, Clone, Default)]
pub(crate) struct SoldOutFlags {
    flags: Arc<RwLock<HashMap<String, Flag>>>,
}

impl SoldOutFlags {
    /// Flags fed by signals under `prefix` until the subscription ends or `shutdown` fires (the
    /// follower is one of `shutdown`'s tracked tasks).
    pub(crate) async fn subscribe(
        client: &async_nats::Client,
        prefix: &str,
        shutdown: &Shutdown,
    ) -> Result<Self, async_nats::SubscribeError> {
        let flags = Self::default();
        let mut subscriber = client.subscribe(signal::every_sale(prefix)).await?;
        let feed = flags.clone();
        let stop = shutdown.wait();
        shutdown.spawn(async move {
            tokio::pin!(stop);
            loop {
                let message = tokio::select! {
                    () = &mut stop => break,
                    message = subscriber.next() => match message {
                        Some(message) => message,
                        None => break,
                    },
                };
                match StockSignal::decode(message.payload) {
                    Ok(signal) => feed.apply(&signal),
                    Err(e) => {
                        tracing::warn!(subject = %message.subject, error = %e, "undecodable stock signal")
                    }
                }
            }
        });
        Ok(flags)
    }

    /// Applies a signal unless a newer one for the same sale was seen.
    pub(crate) fn apply(&self, signal: &StockSignal) {
        let mut flags = self.flags.write().unwrap_or_else(|e| e.into_inner());
        let entry = flags.entry(signal.sale_id.clone()).or_insert(Flag {
            sold_out: signal.sold_out,
            sequence: 0,
            episode: 0,
        });
        if signal.sequence >= entry.sequence {
            // A newer signal may come from a sale Redis rebuilt: whatever the flag says, what
            // a gateway read of the sale before it is stale.
            if signal.sequence > entry.sequence {
                entry.episode += 1;
            }
            entry.set(signal.sold_out);
            entry.sequence = signal.sequence;
        }
    }

    /// Records what an answer from the inventory showed (no sequence: it keeps the flag's).
    pub(crate) fn observe(&self, sale_id: &str, sold_out: bool) {
        let mut flags = self.flags.write().unwrap_or_else(|e| e.into_inner());
        flags
            .entry(sale_id.to_owned())
            .and_modify(|f| f.set(sold_out))
            .or_insert(Flag {
                sold_out,
                sequence: 0,
                episode: 0,
            });
    }

    /// While the sale is sold out: which sold-out spell this is (it changes every time the
    /// stock is seen coming back, and with every newer signal, a rebuilt sale's included).
    /// `None` when the sale is not sold out.
    pub(crate) fn sold_out_episode(&self, sale_id: &str) -> Option<u64> {
        self.flags
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(sale_id)
            .filter(|f| f.sold_out)
            .map(|f| f.episode)
    }

    /// True when the sale is known to be sold out.
    pub(crate) fn is_sold_out(&self, sale_id: &str) -> bool {
        self.flags
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(sale_id)
            .is_some_and(|f| f.sold_out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signal(sold_out: bool, sequence: u64) -> StockSignal {
        StockSignal {
            sale_id: "s".into(),
            sold_out,
            available: u64::from(!sold_out),
            sequence,
        }
    }

    #[test]
    fn late_signals_do_not_override_newer_ones() {
        let flags = SoldOutFlags::default();
        assert!(!flags.is_sold_out("s"));
        flags.apply(&signal(true, 1));
        assert!(flags.is_sold_out("s"));
        flags.apply(&signal(false, 2));
        assert!(!flags.is_sold_out("s"));
        flags.apply(&signal(true, 1));
        assert!(!flags.is_sold_out("s"), "signal 1 arrived late");
        flags.observe("s", true);
        assert!(flags.is_sold_out("s"));
    }

    /// A unit came back (a hold expired) and this gateway's own Reserve took it before any
    /// stock signal said so: the key set read earlier in the spell lacks the new key, so a
    /// retry of that accepted purchase must not be answered SOLD_OUT from it.
    #[test]
    fn a_reservation_made_while_the_flag_says_sold_out_starts_a_new_spell() {
        let watch = StockWatch {
            flags: SoldOutFlags::default(),
            seen: DashMap::new(),
            key_sets: DashMap::new(),
            key_reads: DashMap::new(),
        };
        watch.flags.apply(&signal(true, 1));
        let before = watch.flags.sold_out_episode("s").expect("sold out");
        watch.observe("s", 0, true);
        let after = watch.flags.sold_out_episode("s");
        assert!(
            after.is_some(),
            "the reservation took the last unit: still sold out"
        );
        assert_ne!(
            after,
            Some(before),
            "a key set read before this reservation is stale"
        );
        watch.observe("s", 0, false);
        assert_eq!(
            watch.flags.sold_out_episode("s"),
            after,
            "a refusal changes nothing"
        );
    }

    #[test]
    fn every_return_of_stock_starts_a_new_sold_out_spell() {
        let flags = SoldOutFlags::default();
        assert_eq!(flags.sold_out_episode("s"), None);
        flags.apply(&signal(true, 1));
        let first = flags.sold_out_episode("s").expect("sold out");
        flags.observe("s", true);
        assert_eq!(
            flags.sold_out_episode("s"),
            Some(first),
            "still the same spell"
        );
        flags.observe("s", false);
        assert_eq!(flags.sold_out_episode("s"), None);
        flags.apply(&signal(true, 3));
        let second = flags.sold_out_episode("s");
        assert_ne!(second, Some(first), "a new spell");
        flags.apply(&signal(true, 9));
        assert_ne!(
            flags.sold_out_episode("s"),
            second,
            "a newer signal (a rebuilt sale's) starts a new spell even while sold out"
        );
    }
}
