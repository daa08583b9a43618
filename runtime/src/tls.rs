//! Mutual TLS between the mesh's services (rustls with the ring provider, through tonic).
//!
//! Off unless configured. When `[tls]` names a certificate, its key and a CA bundle, the
//! internal servers (inventory, orders) answer only clients presenting a certificate that chains
//! to the CA, and the mesh's clients of those servers present the same identity and accept only
//! servers whose certificate chains to the CA and names the host they dialled. Their URLs then
//! use `https://`. A certificate from another CA fails the handshake; a caller with none is told
//! why, call by call ([`RequireClientCert`]: `UNAUTHENTICATED CLIENT_CERTIFICATE_REQUIRED`),
//! except for health checks, which anyone may ask.
//!
//! ```toml
//! [tls]
//! cert = "/etc/flashsale/tls/tls.crt"   # PEM chain this process presents
//! key  = "/etc/flashsale/tls/tls.key"   # its PEM private key
//! ca   = "/etc/flashsale/tls/ca.crt"    # PEM CA bundle peers must chain to
//! ```
//!
//! A cert-manager `Certificate` per component, mounted as a Secret, gives exactly these files.

use std::{
    path::{Path, PathBuf},
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use serde::{Deserialize, Serialize};
use tonic::transport::{
    Certificate, ClientTlsConfig, Identity, ServerTlsConfig,
    server::{TcpConnectInfo, TlsConnectInfo},
};

use crate::{
    Invalid, Validate,
    status::{IntoStatus, to_status},
};

/// Where this process's identity and the trusted CA are (all three, or none for plaintext).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain presented to peers.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// PEM CA bundle a peer's certificate must chain to.
    pub ca: Option<PathBuf>,
}

impl TlsConfig {
    /// Whether mutual TLS is configured.
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some()
    }

    /// Reads the files: `None` when TLS is off. [`Validate`] has checked them already; this
    /// reads them again, so a rotated certificate is picked up on the next start.
    pub fn load(&self) -> Result<Option<MeshTls>, Invalid> {
        let (Some(cert), Some(key), Some(ca)) = (&self.cert, &self.key, &self.ca) else {
            return if self.enabled() {
                Err(self.incomplete())
            } else {
                Ok(None)
            };
        };
        let cert_pem = read_pem("cert", cert, "CERTIFICATE")?;
        let key_pem = read_pem("key", key, "PRIVATE KEY")?;
        let ca_pem = read_pem("ca", ca, "CERTIFICATE")?;
        Ok(Some(MeshTls {
            identity: Identity::from_pem(cert_pem, key_pem),
            ca: Certificate::from_pem(ca_pem),
        }))
    }

    fn incomplete(&self) -> Invalid {
        let missing: Vec<&str> = [
            ("cert", self.cert.is_none()),
            ("key", self.key.is_none()),
            ("ca", self.ca.is_none()),
        ]
        .into_iter()
        .filter(|(_, missing)| *missing)
        .map(|(name, _)| name)
        .collect();
        Invalid::new(
            missing[0],
            format!(
                "mutual TLS needs cert, key and ca together; missing: {}",
                missing.join(", ")
            ),
        )
    }
}

impl Validate for TlsConfig {
    fn validate(&self) -> Result<(), Invalid> {
        self.load().map(|_| ())
    }
}

/// Reads a PEM file and checks it holds a block of the expected kind. Never echoes the
/// contents (a key is a secret).
fn read_pem(key: &str, path: &Path, kind: &str) -> Result<Vec<u8>, Invalid> {
    let bytes = std::fs::read(path)
        .map_err(|e| Invalid::new(key, format!("cannot read {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    let found = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(kind) && l.ends_with("-----"));
    if !found {
        return Err(Invalid::new(
            key,
            format!("{} holds no PEM {kind} block", path.display()),
        ));
    }
    Ok(bytes)
}

/// Loaded mutual-TLS material.
#[derive(Debug, Clone)]
pub struct MeshTls {
    identity: Identity,
    ca: Certificate,
}

impl MeshTls {
    /// For a server: present the identity, verify any client certificate against the CA. A
    /// client without one gets through the handshake so that [`RequireClientCert`] can tell it
    /// why its calls are refused.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(true)
    }

    /// For a client of `host`: present the identity, accept only a server certificate from
    /// the CA that names `host` (also when the connection goes to a resolved pod address).
    pub fn client(&self, host: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(self.identity.clone())
            .ca_certificate(self.ca.clone())
            .domain_name(host)
    }
}

/// A call refused for who is calling.
#[derive(Debug, thiserror::Error)]
pub enum CallerRefused {
    /// The connection carries no client certificate.
    #[error(
        "this service answers only callers presenting a client certificate from the mesh CA (tls.ca)"
    )]
    NoCertificate,
}

impl IntoStatus for CallerRefused {
    fn code(&self) -> tonic::Code {
        tonic::Code::Unauthenticated
    }

    fn reason(&self) -> &'static str {
        "CLIENT_CERTIFICATE_REQUIRED"
    }
}

/// On a mutual-TLS server, refuses every call but health checks from a connection without a
/// verified client certificate; does nothing when `enabled` is false (plaintext).
#[derive(Debug, Clone, Copy)]
pub struct RequireClientCert {
    /// Whether the server speaks mutual TLS.
    pub enabled: bool,
}

impl<S> tower::Layer<S> for RequireClientCert {
    type Service = RequireClientCertService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireClientCertService {
            inner,
            enabled: self.enabled,
        }
    }
}

/// The service [`RequireClientCert`] makes.
#[derive(Debug, Clone)]
pub struct RequireClientCertService<S> {
    inner: S,
    enabled: bool,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequireClientCertService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, Ready<Result<S::Response, S::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let certified = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .is_some_and(|certs| !certs.is_empty());
        let health = request
            .uri()
            .path()
            .starts_with(crate::server::HEALTH_PATH_PREFIX);
        if !self.enabled || certified || health {
            return Either::Left(self.inner.call(request));
        }
        Either::Right(ready(Ok(
            to_status(&CallerRefused::NoCertificate).into_http()
        )))
    }
}
