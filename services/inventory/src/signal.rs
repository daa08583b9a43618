//! The sold-out signal: published on core NATS when a sale's available stock reaches zero and
//! when it comes back, so gateways can answer "sold out" from memory.
//!
//! Subject: `<prefix>.<sale_id>` (default prefix `flashsale.stock`,
//! [`flashsale_proto::sale::signal`]), payload a protobuf [`StockSignal`]. Signals are
//! best-effort (core NATS, no persistence); each carries a per-sale sequence so a late signal
//! never overrides a newer one. The gateways follow them (their `sold_out` module).

use prost::Message;

use flashsale_proto::{sale::signal, v1::StockSignal};

pub use flashsale_proto::sale::signal::DEFAULT_PREFIX;

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
        let subject = signal::subject(&self.prefix, sale_id);
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
