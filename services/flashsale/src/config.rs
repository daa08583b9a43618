//! The whole configuration document every `flashsale` command reads.

use flashsale_runtime::{
    Invalid, Validate,
    config::{NatsConfig, PostgresConfig, RedisConfig, ServerConfig},
    telemetry::TelemetryConfig,
    tls::TlsConfig,
};
use serde::{Deserialize, Serialize};

/// One document for the whole mesh; each component reads the sections it needs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MeshConfig {
    /// Logging.
    pub(crate) telemetry: TelemetryConfig,
    /// Settings every gRPC server shares (grace, message size, deadline).
    pub(crate) server: ServerConfig,
    /// Redis (inventory stock, limiter counters).
    pub(crate) redis: RedisConfig,
    /// NATS JetStream (order events, signals).
    pub(crate) nats: NatsConfig,
    /// Postgres (sales and orders).
    pub(crate) postgres: PostgresConfig,
    /// The public gateway.
    pub(crate) gateway: flashsale_gateway::Config,
    /// The inventory service.
    pub(crate) inventory: flashsale_inventory::Config,
    /// The orders service.
    pub(crate) orders: flashsale_orders::Config,
    /// The limiter.
    pub(crate) limiter: flashsale_limiter::Config,
    /// Mutual TLS between the services (inventory and orders serve it, their clients present
    /// it); off unless configured.
    pub(crate) tls: TlsConfig,
}

impl Validate for MeshConfig {
    fn validate(&self) -> Result<(), Invalid> {
        self.telemetry
            .validate()
            .map_err(|e| e.within("telemetry"))?;
        self.server.validate().map_err(|e| e.within("server"))?;
        self.redis.validate().map_err(|e| e.within("redis"))?;
        self.nats.validate().map_err(|e| e.within("nats"))?;
        self.postgres.validate().map_err(|e| e.within("postgres"))?;
        self.gateway.validate().map_err(|e| e.within("gateway"))?;
        self.inventory
            .validate()
            .map_err(|e| e.within("inventory"))?;
        self.orders.validate().map_err(|e| e.within("orders"))?;
        self.limiter.validate().map_err(|e| e.within("limiter"))?;
        self.tls.validate().map_err(|e| e.within("tls"))?;
        // The internal URLs follow the choice: https:// with mutual TLS, http:// without.
        let (scheme, why) = if self.tls.enabled() {
            ("https://", "mutual TLS is on ([tls])")
        } else {
            (
                "http://",
                "https:// needs mutual TLS configured ([tls] cert, key, ca)",
            )
        };
        for (key, url) in [
            ("gateway.inventory_url", &self.gateway.inventory_url),
            ("gateway.orders_url", &self.gateway.orders_url),
            ("orders.inventory_url", &self.orders.inventory_url),
        ] {
            if !url.starts_with(scheme) {
                return Err(Invalid::new(
                    key,
                    format!("must start with {scheme}: {why}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens beyond this machine unless the configuration says so.
    #[test]
    fn every_default_listener_is_loopback() {
        let config = MeshConfig::default();
        let listeners = [
            ("gateway.listen", config.gateway.listen),
            ("inventory.listen", config.inventory.listen),
            ("orders.listen", config.orders.listen),
            ("orders.consumer_listen", config.orders.consumer_listen),
            ("limiter.listen", config.limiter.listen),
            ("limiter.sidecar.listen", config.limiter.sidecar.listen),
        ];
        for (key, addr) in listeners {
            assert!(addr.ip().is_loopback(), "{key} defaults to {addr}");
        }
        assert!(
            config
                .telemetry
                .metrics_listen
                .is_none_or(|addr| addr.ip().is_loopback())
        );
        assert!(!config.tls.enabled(), "mutual TLS is opt-in");
        config.validate().expect("the defaults are valid");
    }
}
