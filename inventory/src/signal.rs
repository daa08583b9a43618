//! The sold-out signal: published on core NATS when a sale's available stock reaches zero and
//! when it comes back, so gateways can answer "sold out" from memory.
//!
//! Subject: `<prefix>.<sale_id>` (default prefix `flashsale.stock`), payload a protobuf
//! [`StockSignal`]. Signals are best-effort (core NATS, no persistence); each carries a
//! per-sale sequence so a late signal never overrides a newer one, and [`SoldOutFlags`] also
//! accepts direct observations (e.g. a SOLD_OUT answer from Reserve).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use futures::StreamExt;
use prost::Message;

use flashsale_proto::v1::StockSignal;

/// Default subject prefix of stock signals.
pub const DEFAULT_PREFIX: &str = "flashsale.stock";

/// Publishes stock signals.
#[derive(Debug, Clone)]
pub struct Signals {
    client: async_nats::Client,
    prefix: String,
}

impl Signals {
    /// Publishes on `<prefix>.<sale_id>`.
    pub fn new(client: async_nats::Client, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
        }
    }

    /// Publishes one signal; failures are logged, never returned (the signal is an
    /// optimisation, stock itself is decided in Redis).
    pub async fn publish(&self, sale_id: &str, sold_out: bool, available: u64, sequence: u64) {
        let signal = StockSignal {
            sale_id: sale_id.to_owned(),
            sold_out,
            available,
            sequence,
        };
        let subject = format!("{}.{sale_id}", self.prefix);
        match self
            .client
            .publish(subject, signal.encode_to_vec().into())
            .await
        {
            Ok(()) => tracing::debug!(sale_id, sold_out, available, sequence, "stock signal"),
            Err(e) => tracing::warn!(sale_id, error = %e, "stock signal not published"),
        }
    }
}

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
pub struct SoldOutFlags {
    flags: Arc<RwLock<HashMap<String, Flag>>>,
}

impl SoldOutFlags {
    /// Flags fed by signals under `prefix` until the subscription ends.
    pub async fn subscribe(
        client: &async_nats::Client,
        prefix: &str,
    ) -> Result<Self, async_nats::SubscribeError> {
        let flags = Self::default();
        let mut subscriber = client.subscribe(format!("{prefix}.>")).await?;
        let feed = flags.clone();
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
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
    pub fn apply(&self, signal: &StockSignal) {
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
    pub fn observe(&self, sale_id: &str, sold_out: bool) {
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
    pub fn sold_out_episode(&self, sale_id: &str) -> Option<u64> {
        self.flags
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(sale_id)
            .filter(|f| f.sold_out)
            .map(|f| f.episode)
    }

    /// True when the sale is known to be sold out.
    pub fn is_sold_out(&self, sale_id: &str) -> bool {
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
