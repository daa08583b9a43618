//! The `[inventory]` section of the configuration.

use std::{net::SocketAddr, time::Duration};

use flashsale_runtime::{Invalid, Validate, config::check_range};
use serde::{Deserialize, Serialize};

/// Settings of the inventory service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server binds. Loopback unless an operator decides otherwise.
    pub listen: SocketAddr,
    /// Pause between expiry sweeps.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Most reservations one expiry script call releases.
    pub sweep_batch: u32,
    /// NATS subject prefix of sold-out signals (`<prefix>.<sale_id>`).
    pub signal_prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            sweep_interval: Duration::from_millis(250),
            sweep_batch: 500,
            signal_prefix: crate::signal::DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        check_range(
            "sweep_interval",
            self.sweep_interval,
            Duration::from_millis(10),
            Duration::from_secs(60),
        )?;
        if !(1..=10_000).contains(&self.sweep_batch) {
            return Err(Invalid::new("sweep_batch", "must be within 1..=10000"));
        }
        if self.signal_prefix.is_empty()
            || self
                .signal_prefix
                .contains(|c: char| c.is_whitespace() || c == '*' || c == '>')
        {
            return Err(Invalid::new(
                "signal_prefix",
                "must be a NATS subject without wildcards or spaces",
            ));
        }
        Ok(())
    }
}
