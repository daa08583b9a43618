//! The tower face: a [`RateLimitLayer`] any tonic (or hyper) server can add. It derives
//! descriptors from each call's metadata, asks the [`Limiter`], and answers
//! `RESOURCE_EXHAUSTED` with `retry-after` metadata instead of calling the service when the
//! caller is over a limit.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tower::{Layer, Service};

use crate::{
    Error,
    config::Source,
    limiter::{Code, Descriptor, Limiter, Request},
};

/// The header the sale id travels in, for the `sale` source.
pub const SALE_HEADER: &str = "flashsale-sale-id";

/// The caller's address, for servers that do not record one themselves (the sidecar).
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// Who a call comes from, verified: the user id an `authorization` header's token names once
/// its signature and claims check, else `None`. The sidecar is given the gateway's verifier.
#[derive(Clone)]
pub struct Identify(Arc<VerifyFn>);

/// From an `authorization` header value to the verified user id.
type VerifyFn = dyn Fn(&str) -> Option<String> + Send + Sync;

impl Identify {
    /// A verifier from `authorization` header values to user ids.
    pub fn new(verify: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(verify))
    }

    fn subject(&self, headers: &http::HeaderMap) -> Option<String> {
        let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
        (self.0)(value)
    }
}

impl std::fmt::Debug for Identify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Identify")
    }
}

/// What to ask the limiter for each call.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The rules domain.
    pub domain: String,
    /// Descriptors, each a list of sources.
    pub descriptors: Vec<Vec<Source>>,
    /// Path prefixes never limited.
    pub exempt: Vec<String>,
    /// Trusted proxies appending to `x-forwarded-for` (see
    /// [`crate::config::SidecarConfig::xff_num_trusted_hops`]).
    pub xff_num_trusted_hops: u32,
    /// The token verifier the `user` source needs: without one, or for a token that does not
    /// verify, a call has no user and is charged to its other descriptors only (a forged token
    /// naming someone must never spend that someone's limit).
    pub identify: Option<Identify>,
}

/// Applies a [`Limiter`] in front of a service.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Limiter,
    policy: Arc<Policy>,
}

impl RateLimitLayer {
    /// A layer asking `limiter` as `policy` says.
    pub fn new(limiter: Limiter, policy: Policy) -> Self {
        Self {
            limiter,
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] makes.
#[derive(Debug, Clone)]
pub struct RateLimited<S> {
    inner: S,
    limiter: Limiter,
    policy: Arc<Policy>,
}

/// The caller's address: with `trusted_hops` proxies in front, the address the outermost of them
/// appended to `x-forwarded-for` (the `trusted_hops`-th from the right; what lies to its left
/// the caller wrote and is ignored); else, or when that entry is missing or not an address, the
/// connection's peer.
fn client_ip<B>(request: &http::Request<B>, trusted_hops: u32) -> Option<String> {
    if trusted_hops > 0 {
        let entries: Vec<&str> = request
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let from_right = entries
            .len()
            .checked_sub(trusted_hops as usize)
            .map(|i| entries[i]);
        if let Some(ip) = from_right.and_then(|e| e.parse::<std::net::IpAddr>().ok()) {
            return Some(ip.to_string());
        }
    }
    let ext = request.extensions();
    ext.get::<PeerAddr>()
        .map(|p| p.0)
        .or_else(|| {
            ext.get::<tonic::transport::server::TcpConnectInfo>()
                .and_then(|c| c.remote_addr())
        })
        .map(|a| a.ip().to_string())
}

/// A header's value as descriptor text: absent is `None`; present but not visible ASCII is an
/// error (a value the limiter cannot read must not drop the limit it names).
fn header_text(headers: &http::HeaderMap, name: &str) -> Result<Option<String>, Error> {
    headers
        .get(name)
        .map(|v| {
            v.to_str().map(str::to_owned).map_err(|_| {
                Error::InvalidArgument(format!("header {name} is not visible ASCII text"))
            })
        })
        .transpose()
}

/// The limiter request for one call: a descriptor per configured list, skipping lists with a
/// source the call does not carry (no token, no sale header). A header the call carries but
/// that is not text is an error.
pub fn describe<B>(policy: &Policy, request: &http::Request<B>) -> Result<Request, Error> {
    let headers = request.headers();
    let value = |source: &Source| -> Result<Option<(String, String)>, Error> {
        Ok(match source {
            Source::Method => Some(("method".into(), request.uri().path().to_owned())),
            Source::User => policy
                .identify
                .as_ref()
                .and_then(|identify| identify.subject(headers))
                .map(|s| ("user".into(), s)),
            Source::Ip => {
                client_ip(request, policy.xff_num_trusted_hops).map(|ip| ("ip".into(), ip))
            }
            // A Purchase's own message names its sale (the sidecar reads it); the header only
            // for other calls.
            Source::Sale => match request.extensions().get::<crate::purchase::SaleOfCall>() {
                Some(sale) => Some(("sale".into(), sale.0.clone())),
                None => header_text(headers, SALE_HEADER)?.map(|v| ("sale".into(), v)),
            },
            Source::Header(name) => header_text(headers, name)?.map(|v| (name.clone(), v)),
        })
    };
    let mut descriptors = Vec::with_capacity(policy.descriptors.len());
    for sources in &policy.descriptors {
        let entries: Option<Vec<(String, String)>> = sources
            .iter()
            .map(value)
            .collect::<Result<Vec<_>, Error>>()?
            .into_iter()
            .collect();
        if let Some(entries) = entries {
            descriptors.push(Descriptor {
                entries,
                ..Descriptor::default()
            });
        }
    }
    Ok(Request {
        domain: policy.domain.clone(),
        descriptors,
        hits_addend: 1,
    })
}

impl<S, B, R> Service<http::Request<B>> for RateLimited<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone is the one that was made ready; keep a fresh clone for next time.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let path = request.uri().path();
        if self
            .policy
            .exempt
            .iter()
            .any(|p| path.starts_with(p.as_str()))
        {
            return Box::pin(inner.call(request));
        }
        let limit_request = match describe(&self.policy, &request) {
            Ok(limit_request) => limit_request,
            Err(e) => return Box::pin(async move { Ok(refusal(&e)) }),
        };
        let limiter = self.limiter.clone();
        Box::pin(async move {
            if limit_request.descriptors.is_empty() {
                return inner.call(request).await;
            }
            match limiter.decide(&limit_request).await {
                Ok(decision) if decision.code == Code::OverLimit => {
                    let rule = decision
                        .statuses
                        .iter()
                        .find(|s| s.code == Code::OverLimit)
                        .and_then(|s| s.rule.clone())
                        .unwrap_or_default();
                    let error = Error::RateLimited {
                        rule,
                        retry_after: decision.retry_after().unwrap_or(Duration::from_secs(1)),
                    };
                    Ok(flashsale_runtime::to_status(&error).into_http())
                }
                Ok(_) => inner.call(request).await,
                // Input the limiter cannot judge never unlocks it (Redis being away is decided
                // inside, by the failure mode): refused, with the reason.
                Err(e) => Ok(refusal(&e)),
            }
        })
    }
}

/// A call refused before the service, with the error's status and reason.
fn refusal<R: Default>(error: &Error) -> http::Response<R> {
    tracing::debug!(%error, "call refused by the rate limit layer");
    flashsale_runtime::to_status(error).into_http()
}

#[cfg(test)]
mod tests {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    use super::*;

    #[test]
    fn the_caller_is_the_peer_unless_proxies_are_trusted() {
        let request = |xff: &str| {
            let mut request = http::Request::builder()
                .header("x-forwarded-for", xff)
                .body(())
                .unwrap();
            request
                .extensions_mut()
                .insert(PeerAddr(SocketAddr::from(([192, 0, 2, 1], 4000))));
            request
        };
        let forged = request("198.51.100.66, 203.0.113.9");
        assert_eq!(client_ip(&forged, 0).as_deref(), Some("192.0.2.1"));
        assert_eq!(client_ip(&forged, 1).as_deref(), Some("203.0.113.9"));
        assert_eq!(client_ip(&forged, 2).as_deref(), Some("198.51.100.66"));
        assert_eq!(
            client_ip(&forged, 3).as_deref(),
            Some("192.0.2.1"),
            "fewer entries than trusted hops: the peer"
        );
        let garbage = request("not-an-address");
        assert_eq!(client_ip(&garbage, 1).as_deref(), Some("192.0.2.1"));
    }

    #[test]
    fn descriptors_come_from_metadata() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","aud":"flashsale"}"#);
        let expected = format!("Bearer h.{claims}.sig");
        let request = http::Request::builder()
            .uri("http://gw/flashsale.v1.FlashSale/Purchase")
            .header("authorization", &expected)
            .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
            .header(SALE_HEADER, "s1")
            .body(())
            .unwrap();
        let policy = Policy {
            domain: "flashsale".into(),
            descriptors: vec![
                vec![Source::Method, Source::User],
                vec![Source::Ip],
                vec![Source::Sale],
                vec![Source::Header("x-absent".into())],
            ],
            exempt: vec![],
            xff_num_trusted_hops: 1,
            identify: Some(Identify::new(move |header| {
                (header == expected).then(|| "alice".to_owned())
            })),
        };
        let r = describe(&policy, &request).unwrap();
        let entries: Vec<Vec<(String, String)>> =
            r.descriptors.into_iter().map(|d| d.entries).collect();
        let e = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            entries,
            vec![
                vec![
                    e("method", "/flashsale.v1.FlashSale/Purchase"),
                    e("user", "alice")
                ],
                vec![e("ip", "10.0.0.1")],
                vec![e("sale", "s1")],
            ]
        );
    }
}
