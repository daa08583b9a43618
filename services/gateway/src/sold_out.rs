//! Which sales are sold out, as this gateway knows it: stock signals from the inventory
//! (`flashsale_proto::sale::signal`), and what the inventory's own answers showed.
//!
//! Signals are best-effort; each carries a per-sale sequence so a late one never overrides a
//! newer one, and [`SoldOutFlags::observe`] takes direct observations (a SOLD_OUT answer from
//! Reserve, a stock reading).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use futures::StreamExt;
use prost::Message;

use flashsale_proto::{sale::signal, v1::StockSignal};
use flashsale_runtime::Shutdown;

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
