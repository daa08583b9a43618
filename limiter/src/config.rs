//! The `[limiter]` section of the configuration.

use std::net::SocketAddr;

use flashsale_runtime::{Invalid, Validate};
use serde::{Deserialize, Serialize};

/// Settings of the limiter server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server binds. Loopback unless an operator decides otherwise.
    pub listen: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50054)),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        if self.listen.ip().is_multicast() {
            return Err(Invalid::new(
                "listen",
                format!("{} is a multicast address", self.listen),
            ));
        }
        Ok(())
    }
}
