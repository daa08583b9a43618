//! Who is calling: a bearer JWT in the `authorization` metadata, verified against the
//! configured key (a shared secret, a PEM public key, or the identity provider's key set, see
//! [`crate::jwks`]), with `exp`, `nbf` and `aud` (and `iss` when configured) checked. The
//! buyer's identity is the token's `sub`, never a request field; operators carry `admin: true`.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;

use crate::{Error, config::AuthConfig, jwks::Jwks};

/// The claims this gateway reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Not before (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Audience: one, or several (RFC 7519 allows an array; Keycloak and Auth0 send one).
    pub aud: Audience,
    /// Issuer.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub iss: String,
    /// Operator rights (SaleAdmin).
    #[serde(default)]
    pub admin: bool,
}

/// The `aud` claim: a string or an array of strings. The verifier accepts a token whose
/// audiences include the configured one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "flashsale"`.
    One(String),
    /// `"aud": ["flashsale", "account"]`.
    Many(Vec<String>),
}

impl From<&str> for Audience {
    fn from(aud: &str) -> Self {
        Self::One(aud.to_owned())
    }
}

impl From<String> for Audience {
    fn from(aud: String) -> Self {
        Self::One(aud)
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user id (`sub`).
    pub user_id: String,
    /// Operator rights.
    pub admin: bool,
}

/// Verifies bearer tokens.
#[derive(Clone)]
pub struct Verifier {
    keys: Keys,
    validation: Validation,
}

/// What a token's signature is checked with.
#[derive(Clone)]
enum Keys {
    /// The HS256 secret or the PEM public key.
    One(DecodingKey),
    /// The identity provider's key set, a token's key named by its `kid`.
    Set(Arc<Jwks>),
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

fn algorithm(name: &str) -> Result<Algorithm, Error> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        other => Err(Error::Config(format!(
            "unsupported token algorithm {other}"
        ))),
    }
}

/// The RS256/ES256 public key of `public_key_file`.
fn pem_key(config: &AuthConfig, alg: Algorithm) -> Result<DecodingKey, Error> {
    let path = config
        .public_key_file
        .as_ref()
        .ok_or_else(|| Error::Config("no public key file".into()))?;
    let pem = std::fs::read(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    match alg {
        Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
        _ => DecodingKey::from_ec_pem(&pem),
    }
    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

impl Verifier {
    /// A verifier for the configured algorithm and key; with `jwks`, the key set is read now
    /// (no key, no start) and again every `jwks_refresh` until `shutdown`.
    pub async fn load(
        config: &AuthConfig,
        shutdown: &flashsale_runtime::Shutdown,
    ) -> Result<Self, Error> {
        let alg = algorithm(&config.algorithm)?;
        let keys = match alg {
            Algorithm::HS256 => Keys::One(DecodingKey::from_secret(
                config.secret.expose_secret().as_bytes(),
            )),
            _ if !config.jwks.is_empty() => Keys::Set(Jwks::load(config, alg, shutdown).await?),
            _ => Keys::One(pem_key(config, alg)?),
        };
        let mut validation = Validation::new(alg);
        validation.set_audience(&[config.audience.as_str()]);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        if !config.issuer.is_empty() {
            validation.set_issuer(&[config.issuer.as_str()]);
        }
        Ok(Self { keys, validation })
    }

    /// The caller of a request, from its `authorization: Bearer <jwt>` metadata.
    pub fn caller(&self, metadata: &MetadataMap) -> Result<Caller, Error> {
        let header = metadata
            .get("authorization")
            .ok_or(Error::Unauthenticated("no bearer token"))?
            .to_str()
            .map_err(|_| Error::Unauthenticated("authorization is not text"))?;
        self.verify(header)
    }

    /// The caller an `authorization` header's value names, once its token verifies (the
    /// sidecar charges a buyer's limit only to a caller verified so).
    pub fn verify(&self, header: &str) -> Result<Caller, Error> {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(Error::Unauthenticated(
                "authorization is not a bearer token",
            ))?;
        let decode =
            |key: &DecodingKey| jsonwebtoken::decode::<Claims>(token, key, &self.validation);
        let decoded = match &self.keys {
            Keys::One(key) => decode(key),
            Keys::Set(jwks) => {
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|_| Error::Unauthenticated("token is not valid"))?;
                let set = jwks.current();
                let key = set
                    .find(header.kid.as_deref())
                    .ok_or(Error::Unauthenticated(
                        "token signed by a key not in the key set",
                    ))?;
                decode(key)
            }
        };
        let data = decoded.map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Error::Unauthenticated(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::ImmatureSignature => "token not valid yet",
                ErrorKind::InvalidAudience => "token is for another audience",
                ErrorKind::InvalidIssuer => "token from another issuer",
                ErrorKind::InvalidSignature => "token signature does not verify",
                ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                _ => "token is not valid",
            })
        })?;
        flashsale_proto::rules::text_id("sub", &data.claims.sub)
            .map_err(|_| Error::Unauthenticated("token subject is not a valid user id"))?;
        Ok(Caller {
            user_id: data.claims.sub,
            admin: data.claims.admin,
        })
    }

    /// The caller, who must be an operator.
    pub fn admin(&self, metadata: &MetadataMap) -> Result<Caller, Error> {
        let caller = self.caller(metadata)?;
        if !caller.admin {
            return Err(Error::PermissionDenied("SaleAdmin needs the admin claim"));
        }
        Ok(caller)
    }
}

/// Mints HS256 tokens with the configured secret: for `flashsale up`, the load generator and
/// tests. A real deployment gets its tokens from its identity provider.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    audience: String,
    issuer: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for an HS256 configuration.
    pub fn new(config: &AuthConfig) -> Result<Self, Error> {
        if config.algorithm != "HS256" {
            return Err(Error::Config("tokens can only be minted for HS256".into()));
        }
        Ok(Self {
            key: EncodingKey::from_secret(config.secret.expose_secret().as_bytes()),
            audience: config.audience.clone(),
            issuer: config.issuer.clone(),
        })
    }

    /// A token for `user`, valid for `ttl`.
    pub fn token(&self, user: &str, admin: bool, ttl: std::time::Duration) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        self.sign(&Claims {
            sub: user.to_owned(),
            exp: now + ttl.as_secs(),
            nbf: Some(now.saturating_sub(1)),
            aud: self.audience.clone().into(),
            iss: self.issuer.clone(),
            admin,
        })
    }

    /// Signs arbitrary claims (tests use it for expired or foreign-audience tokens).
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.key).unwrap_or_default()
    }
}

/// `authorization` metadata for a token.
pub fn bearer(token: &str) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static(""))
}
