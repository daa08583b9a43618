//! Mutual TLS between the mesh's services (rustls with the ring provider, through tonic).
//!
//! Off unless configured. When `[tls]` names a certificate, its key and a CA bundle, the
//! internal servers (inventory, orders) accept only clients presenting a certificate that chains
//! to the CA, and the mesh's clients of those servers present the same identity and accept only
//! servers whose certificate chains to the CA and names the host they dialled. Their URLs then
//! use `https://`.
//!
//! ```toml
//! [tls]
//! cert = "/etc/flashsale/tls/tls.crt"   # PEM chain this process presents
//! key  = "/etc/flashsale/tls/tls.key"   # its PEM private key
//! ca   = "/etc/flashsale/tls/ca.crt"    # PEM CA bundle peers must chain to
//! ```
//!
//! A cert-manager `Certificate` per component, mounted as a Secret, gives exactly these files.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::{Invalid, Validate};

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
    /// For a server: present the identity, require a client certificate from the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
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
