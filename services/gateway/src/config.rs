//! The `[gateway]` section of the configuration.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use flashsale_runtime::{Invalid, Validate, config::check_range};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Settings of the public gateway.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the gRPC server binds. Loopback unless an operator decides otherwise.
    pub listen: SocketAddr,
    /// Where the inventory's gRPC server is.
    pub inventory_url: String,
    /// Where the orders' gRPC server is.
    pub orders_url: String,
    /// How buyers and operators prove who they are.
    pub auth: AuthConfig,
    /// Most Purchase calls of one sale in flight in this replica; more are shed at once with
    /// RESOURCE_EXHAUSTED and a retry-after instead of queuing.
    pub max_in_flight_per_sale: usize,
    /// How long a sale's definition is served from memory before it is read again.
    #[serde(with = "humantime_serde")]
    pub sale_cache_ttl: Duration,
    /// How long a sold-out flag answers from memory before the inventory is asked again (stock
    /// comes back when holds expire).
    #[serde(with = "humantime_serde")]
    pub sold_out_ttl: Duration,
    /// NATS subject prefix of the inventory's sold-out signals.
    pub signal_prefix: String,
    /// How long WatchOrder waits for a just-accepted order to be persisted.
    #[serde(with = "humantime_serde")]
    pub watch_wait: Duration,
    /// How often a gateway reads a waiting room for the buyers watching it (WatchQueue): one
    /// Redis call per sale per tick, however many watch.
    #[serde(with = "humantime_serde")]
    pub queue_watch_interval: Duration,
    /// Longest a WatchQueue stream lasts before it ends (the buyer watches again), so streams
    /// spread over new gateway replicas.
    #[serde(with = "humantime_serde")]
    pub queue_watch_max: Duration,
    /// The key waiting-room tickets and purchase tokens are signed with (HMAC-SHA256, at least
    /// 16 bytes, the same on every gateway replica). Empty: the HS256 `auth.secret`, so a
    /// gateway verifying RS256/ES256 tokens hosts no waiting rooms unless this is set.
    #[serde(serialize_with = "flashsale_runtime::config::serialize_redacted")]
    pub waiting_room_secret: SecretString,
}

/// Token verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `HS256` (shared secret) or `RS256` / `ES256` (public key).
    pub algorithm: String,
    /// The HS256 secret; empty with RS256/ES256.
    #[serde(serialize_with = "flashsale_runtime::config::serialize_redacted")]
    pub secret: SecretString,
    /// PEM file with the RS256/ES256 public key.
    pub public_key_file: Option<PathBuf>,
    /// The identity provider's keys instead (RS256/ES256): a JWKS file, or an `https://` URL
    /// (e.g. Keycloak's `.../protocol/openid-connect/certs`); a token's key is chosen by its
    /// `kid`. Empty: `public_key_file`.
    pub jwks: String,
    /// How often the key set is read again (a rotation publishes the new key this long, at
    /// least, before signing with it).
    #[serde(with = "humantime_serde")]
    pub jwks_refresh: Duration,
    /// A PEM CA bundle the `jwks` URL's server may chain to, besides the system's roots.
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `aud` claim.
    pub audience: String,
    /// Required `iss` claim; empty means any.
    pub issuer: String,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
}

impl Config {
    /// The key waiting rooms sign with: `waiting_room_secret`, else the HS256 secret; none for
    /// a gateway verifying RS256/ES256 tokens without a `waiting_room_secret`.
    pub fn room_secret(&self) -> Option<SecretString> {
        if !self.waiting_room_secret.expose_secret().is_empty() {
            Some(self.waiting_room_secret.clone())
        } else if self.auth.algorithm == "HS256" {
            Some(self.auth.secret.clone())
        } else {
            None
        }
    }

    /// Checked before a gateway binds `listen`: the development secret the defaults carry
    /// verifies tokens anyone can mint, so it may only serve on loopback. (Other components
    /// read the same document without serving buyers, so this is not part of `validate`.)
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), Invalid> {
        if !listen.ip().is_loopback()
            && self.auth.algorithm == "HS256"
            && self.auth.secret.expose_secret() == DEV_SECRET
        {
            return Err(Invalid::new(
                "auth.secret",
                "the development secret may only be used on loopback; set one in the secrets directory or FLASHSALE_GATEWAY__AUTH__SECRET",
            ));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            inventory_url: "http://127.0.0.1:50052".into(),
            orders_url: "http://127.0.0.1:50053".into(),
            auth: AuthConfig::default(),
            max_in_flight_per_sale: 512,
            sale_cache_ttl: Duration::from_secs(5),
            sold_out_ttl: Duration::from_millis(500),
            signal_prefix: flashsale_proto::sale::signal::DEFAULT_PREFIX.into(),
            watch_wait: Duration::from_secs(10),
            queue_watch_interval: Duration::from_millis(200),
            queue_watch_max: Duration::from_secs(60),
            waiting_room_secret: SecretString::from(""),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            // A development secret, refused outside loopback by `Config::check_listen`.
            secret: SecretString::from("flashsale-dev-secret-change-me"),
            public_key_file: None,
            jwks: String::new(),
            jwks_refresh: Duration::from_secs(60),
            jwks_ca_file: None,
            audience: "flashsale".into(),
            issuer: String::new(),
            leeway: Duration::from_secs(30),
        }
    }
}

/// The secret the defaults carry; a gateway listening beyond loopback must not use it.
pub const DEV_SECRET: &str = "flashsale-dev-secret-change-me";

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        for (key, url) in [
            ("inventory_url", &self.inventory_url),
            ("orders_url", &self.orders_url),
        ] {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Invalid::new(key, "must start with http:// or https://"));
            }
        }
        self.auth.validate().map_err(|e| e.within("auth"))?;
        let room_secret = self.waiting_room_secret.expose_secret().len();
        if room_secret > 0 && room_secret < flashsale_limiter::waiting_room::MIN_SECRET_BYTES {
            return Err(Invalid::new(
                "waiting_room_secret",
                format!(
                    "must be empty or at least {} bytes",
                    flashsale_limiter::waiting_room::MIN_SECRET_BYTES
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_in_flight_per_sale) {
            return Err(Invalid::new(
                "max_in_flight_per_sale",
                "must be within 1..=1000000",
            ));
        }
        check_range(
            "sale_cache_ttl",
            self.sale_cache_ttl,
            Duration::from_millis(10),
            Duration::from_secs(3600),
        )?;
        check_range(
            "sold_out_ttl",
            self.sold_out_ttl,
            Duration::from_millis(10),
            Duration::from_secs(600),
        )?;
        check_range(
            "queue_watch_interval",
            self.queue_watch_interval,
            Duration::from_millis(10),
            Duration::from_secs(10),
        )?;
        check_range(
            "queue_watch_max",
            self.queue_watch_max,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        check_range(
            "watch_wait",
            self.watch_wait,
            Duration::ZERO,
            Duration::from_secs(600),
        )
    }
}

impl Validate for AuthConfig {
    fn validate(&self) -> Result<(), Invalid> {
        match self.algorithm.as_str() {
            "HS256" => {
                if self.secret.expose_secret().len() < 16 {
                    return Err(Invalid::new(
                        "secret",
                        "HS256 needs a secret of at least 16 bytes",
                    ));
                }
            }
            "RS256" | "ES256" => {
                if self.public_key_file.is_none() && self.jwks.is_empty() {
                    return Err(Invalid::new(
                        "public_key_file",
                        format!("{} needs a public key file or a jwks", self.algorithm),
                    ));
                }
                self.validate_jwks()?;
            }
            other => {
                return Err(Invalid::new(
                    "algorithm",
                    format!("`{other}` is not one of HS256, RS256, ES256"),
                ));
            }
        }
        if self.algorithm == "HS256" && !self.jwks.is_empty() {
            return Err(Invalid::new(
                "jwks",
                "a key set holds public keys: use it with RS256 or ES256",
            ));
        }
        if self.audience.is_empty() {
            return Err(Invalid::new("audience", "must not be empty"));
        }
        check_range(
            "leeway",
            self.leeway,
            Duration::ZERO,
            Duration::from_secs(600),
        )
    }
}

impl AuthConfig {
    fn validate_jwks(&self) -> Result<(), Invalid> {
        if self.jwks.contains("://") && !self.jwks.starts_with("https://") {
            return Err(Invalid::new(
                "jwks",
                "a key set URL must be https:// (anyone on the path could swap the keys)",
            ));
        }
        if self.jwks_ca_file.is_some() && !self.jwks.starts_with("https://") {
            return Err(Invalid::new(
                "jwks_ca_file",
                "applies only to an https:// jwks",
            ));
        }
        check_range(
            "jwks_refresh",
            self.jwks_refresh,
            Duration::from_secs(1),
            Duration::from_secs(86_400),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_development_secret_serves_only_on_loopback() {
        let config = Config::default();
        assert!(config.validate().is_ok());
        assert!(config.check_listen(config.listen).is_ok());
        let open: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let refused = config.check_listen(open).unwrap_err();
        assert_eq!(refused.key, "auth.secret");

        let mut config = Config::default();
        config.auth.secret = SecretString::from("a-real-secret-0123456789");
        assert!(config.check_listen(open).is_ok());
    }

    #[test]
    fn waiting_rooms_sign_with_their_own_key_or_the_hs256_secret() {
        let secret = |c: &Config| c.room_secret().map(|s| s.expose_secret().to_owned());
        let mut config = Config::default();
        assert_eq!(secret(&config).as_deref(), Some(DEV_SECRET));

        config.auth.algorithm = "ES256".into();
        config.auth.public_key_file = Some("issuer.pem".into());
        assert!(config.validate().is_ok());
        assert_eq!(secret(&config), None, "no key: no rooms");

        config.waiting_room_secret = SecretString::from("room-key-0123456789");
        assert!(config.validate().is_ok());
        assert_eq!(secret(&config).as_deref(), Some("room-key-0123456789"));

        config.waiting_room_secret = SecretString::from("short");
        assert_eq!(config.validate().unwrap_err().key, "waiting_room_secret");
    }
}
