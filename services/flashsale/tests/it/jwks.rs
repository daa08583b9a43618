//! An identity provider as the tests need one: ES256 signing keys with their `kid`, and their
//! public halves published as a JSON Web Key Set over https on loopback, changeable while the
//! mesh runs (a key rotation).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use flashsale_gateway::auth::Claims;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// One of the provider's signing keys.
pub(crate) struct IssuerKey {
    kid: String,
    key: rcgen::KeyPair,
    signing: EncodingKey,
}

impl IssuerKey {
    pub(crate) fn new(kid: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        Self {
            kid: kid.to_owned(),
            key,
            signing,
        }
    }

    /// The public half as a JWK (P-256: the uncompressed point is 0x04 ‖ x ‖ y).
    fn jwk(&self) -> serde_json::Value {
        let point = self.key.public_key_raw();
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// A token for `user`, its audiences an array as Keycloak and Auth0 send them.
    pub(crate) fn token(&self, user: &str, admin: bool) -> String {
        let claims = Claims {
            sub: user.into(),
            exp: jsonwebtoken::get_current_timestamp() + 600,
            nbf: None,
            aud: flashsale_gateway::auth::Audience::Many(vec![
                "account".into(),
                "flashsale".into(),
            ]),
            iss: String::new(),
            admin,
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.signing).unwrap()
    }
}

/// A JWKS served over https on loopback, from a CA of the test's own.
pub(crate) struct JwksServer {
    pub(crate) url: String,
    /// The CA the server's certificate chains to.
    pub(crate) ca: PathBuf,
    document: Arc<Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl JwksServer {
    pub(crate) async fn start(dir: &Path, keys: &[&IssuerKey]) -> Self {
        let ca = crate::tls::ca("identity provider CA");
        std::fs::write(dir.join("idp-ca.crt"), ca.pem()).unwrap();
        crate::tls::leaf(&ca, &["127.0.0.1"], dir, "idp");
        let acceptor = acceptor(dir);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/certs", listener.local_addr().unwrap());
        let document = Arc::new(Mutex::new(String::new()));
        let served = document.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, served) = (acceptor.clone(), served.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        let body = served.lock().unwrap().clone();
                        answer(tls, &body).await;
                    }
                });
            }
        });
        let server = Self {
            url,
            ca: dir.join("idp-ca.crt"),
            document,
            task,
        };
        server.publish(keys);
        server
    }

    /// From now on the set holds exactly `keys`.
    pub(crate) fn publish(&self, keys: &[&IssuerKey]) {
        let keys: Vec<_> = keys.iter().map(|k| k.jwk()).collect();
        *self.document.lock().unwrap() = serde_json::json!({ "keys": keys }).to_string();
    }
}

fn acceptor(dir: &Path) -> tokio_rustls::TlsAcceptor {
    let cert = CertificateDer::from_pem_file(dir.join("idp.crt")).unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("idp.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// Reads one HTTP/1.1 request's head and answers it with the set, closing the connection.
async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    body: &str,
) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}
