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

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
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

/// What to ask the limiter for each call.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The rules domain.
    pub domain: String,
    /// Descriptors, each a list of sources.
    pub descriptors: Vec<Vec<Source>>,
    /// Path prefixes never limited.
    pub exempt: Vec<String>,
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

/// The unverified `sub` claim of a bearer token.
fn token_subject(headers: &http::HeaderMap) -> Option<String> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

fn client_ip<B>(request: &http::Request<B>) -> Option<String> {
    let forwarded = request
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if let Some(first) = forwarded {
        return Some(first.to_owned());
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

/// The limiter request for one call: a descriptor per configured list, skipping lists with a
/// source the call does not carry (no token, no sale header).
pub fn describe<B>(policy: &Policy, request: &http::Request<B>) -> Request {
    let headers = request.headers();
    let value = |source: &Source| -> Option<(String, String)> {
        match source {
            Source::Method => Some(("method".into(), request.uri().path().to_owned())),
            Source::User => token_subject(headers).map(|s| ("user".into(), s)),
            Source::Ip => client_ip(request).map(|ip| ("ip".into(), ip)),
            Source::Sale => headers
                .get(SALE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(|v| ("sale".into(), v.to_owned())),
            Source::Header(name) => headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .map(|v| (name.clone(), v.to_owned())),
        }
    };
    let descriptors = policy
        .descriptors
        .iter()
        .filter_map(|sources| {
            let entries: Option<Vec<(String, String)>> = sources.iter().map(value).collect();
            entries.map(|entries| Descriptor {
                entries,
                ..Descriptor::default()
            })
        })
        .collect();
    Request {
        domain: policy.domain.clone(),
        descriptors,
        hits_addend: 1,
    }
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
        let limit_request = describe(&self.policy, &request);
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
                Err(e) => {
                    // A call the limiter cannot judge is not the caller's fault: let it through.
                    tracing::warn!(error = %e, "rate limit not judged; allowing the call");
                    inner.call(request).await
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_come_from_metadata() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"alice","aud":"flashsale"}"#);
        let request = http::Request::builder()
            .uri("http://gw/flashsale.v1.FlashSale/Purchase")
            .header("authorization", format!("Bearer h.{claims}.sig"))
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
        };
        let r = describe(&policy, &request);
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
                vec![e("ip", "203.0.113.9")],
                vec![e("sale", "s1")],
            ]
        );
    }
}
