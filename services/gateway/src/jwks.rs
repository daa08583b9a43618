//! The keys an identity provider publishes as a JSON Web Key Set (RFC 7517): read from a file
//! or fetched from an `https` URL, read again every `auth.jwks_refresh` in the background, and
//! a token's key chosen by its `kid`. During a rotation the provider publishes the new key
//! beside the old one before it signs with it, so tokens of both verify; a refresh that fails
//! or finds no usable key keeps the keys in hand.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use flashsale_runtime::{Shutdown, backoff::Backoff};
use jsonwebtoken::{
    Algorithm, DecodingKey,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse},
};

use crate::{Error, config::AuthConfig};

/// The usable keys of one reading of the set.
#[derive(Clone)]
pub(crate) struct KeySet {
    keys: Vec<(Option<String>, DecodingKey)>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|(id, _)| id).collect();
        f.debug_struct("KeySet").field("kids", &ids).finish()
    }
}

impl KeySet {
    /// The keys of a JWKS document that verify `alg` signatures; an error when none does.
    fn parse(bytes: &[u8], alg: Algorithm) -> Result<Self, String> {
        let set: JwkSet =
            serde_json::from_slice(bytes).map_err(|e| format!("not a JSON Web Key Set: {e}"))?;
        let keys: Vec<_> = set
            .keys
            .iter()
            .filter(|jwk| fits(jwk, alg))
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((jwk.common.key_id.clone(), key))
            })
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "none of its {} keys verifies {alg:?}",
                set.keys.len()
            ));
        }
        Ok(Self { keys })
    }

    /// The key a token's `kid` names; a token without one only when the set has one key.
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<&DecodingKey> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|(id, _)| id.as_deref() == Some(kid))
                .map(|(_, key)| key),
            None => match self.keys.as_slice() {
                [(_, key)] => Some(key),
                _ => None,
            },
        }
    }
}

/// A signing key of the configured algorithm (never a shared secret: a key set is public).
fn fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let kind = match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        _ => false,
    };
    let named = match jwk.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    let signing = !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption));
    kind && named && signing
}

/// Where the set comes from.
enum Source {
    File(PathBuf),
    Url(reqwest::Client, String),
}

impl Source {
    fn new(config: &AuthConfig) -> Result<Self, Error> {
        if !config.jwks.starts_with("https://") {
            return Ok(Self::File(PathBuf::from(&config.jwks)));
        }
        let mut client = reqwest::Client::builder()
            .https_only(true)
            .timeout(Duration::from_secs(10));
        if let Some(path) = &config.jwks_ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            let ca = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
            client = client.add_root_certificate(ca);
        }
        let client = client
            .build()
            .map_err(|e| Error::Config(format!("jwks client: {e}")))?;
        Ok(Self::Url(client, config.jwks.clone()))
    }

    async fn read(&self) -> Result<Vec<u8>, String> {
        match self {
            Self::File(path) => tokio::fs::read(path)
                .await
                .map_err(|e| format!("{}: {e}", path.display())),
            Self::Url(client, url) => {
                let response = client
                    .get(url)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| format!("{url}: {e}"))?;
                let body = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
                Ok(body.to_vec())
            }
        }
    }
}

/// A key set kept fresh.
pub(crate) struct Jwks {
    current: RwLock<Arc<KeySet>>,
    source: Source,
    alg: Algorithm,
}

impl Jwks {
    /// Reads the set once (a gateway with no key to verify with does not start) and keeps
    /// reading it every `jwks_refresh` until `shutdown`.
    pub(crate) async fn load(
        config: &AuthConfig,
        alg: Algorithm,
        shutdown: &Shutdown,
    ) -> Result<Arc<Self>, Error> {
        let source = Source::new(config)?;
        let first = source.read().await.map_err(Error::Config)?;
        let set = KeySet::parse(&first, alg)
            .map_err(|e| Error::Config(format!("{}: {e}", config.jwks)))?;
        let jwks = Arc::new(Self {
            current: RwLock::new(Arc::new(set)),
            source,
            alg,
        });
        shutdown.spawn(
            jwks.clone()
                .keep_fresh(config.jwks_refresh, shutdown.child()),
        );
        Ok(jwks)
    }

    /// The keys in hand.
    pub(crate) fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn keep_fresh(self: Arc<Self>, every: Duration, shutdown: Shutdown) {
        let mut retry = Backoff::new(Duration::from_millis(500), every);
        let mut pause = every;
        loop {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.wait() => return,
            }
            pause = match self.refresh().await {
                Ok(()) => {
                    retry.reset();
                    every
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the token key set failed; the keys in hand stay");
                    retry.next_pause()
                }
            };
        }
    }

    async fn refresh(&self) -> Result<(), String> {
        let set = KeySet::parse(&self.source.read().await?, self.alg)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(set);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P256: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec-1","use":"sig",
        "x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
        "y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}"#;

    #[test]
    fn only_signing_keys_of_the_configured_algorithm_are_kept() {
        let doc = format!(
            r#"{{"keys":[{P256},
              {{"kty":"oct","kid":"shared","k":"c2VjcmV0"}},
              {{"kty":"EC","crv":"P-256","kid":"enc","use":"enc",
                "x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
                "y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}}]}}"#
        );
        let set = KeySet::parse(doc.as_bytes(), Algorithm::ES256).unwrap();
        assert!(set.find(Some("ec-1")).is_some());
        assert!(
            set.find(Some("shared")).is_none(),
            "a shared secret is never taken"
        );
        assert!(
            set.find(Some("enc")).is_none(),
            "an encryption key does not verify"
        );
        assert!(
            set.find(None).is_some(),
            "one usable key serves tokens without a kid"
        );
        let none = KeySet::parse(doc.as_bytes(), Algorithm::RS256).unwrap_err();
        assert!(none.contains("none of its 3 keys"), "{none}");
        assert!(KeySet::parse(b"{}", Algorithm::ES256).is_err());
    }
}
