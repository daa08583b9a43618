//! The sidecar: a gRPC proxy in the same pod as a service. It applies the [`RateLimitLayer`] to
//! every call and forwards everything else unchanged — unary and streaming, headers, bodies and
//! trailers frame by frame — to the service behind it over HTTP/2.

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::{ServiceExt, service_fn};

use crate::{
    config::SidecarConfig,
    layer::{Identify, PeerAddr, Policy, RateLimitLayer},
    limiter::Limiter,
    purchase::ReadAhead,
};

type Upstream = Client<HttpConnector, ReadAhead>;

/// Forwards one call to the upstream.
async fn forward(
    client: Upstream,
    upstream: (Option<http::uri::Scheme>, Option<http::uri::Authority>),
    mut request: http::Request<ReadAhead>,
) -> Result<http::Response<tonic::body::Body>, Infallible> {
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = upstream.0;
    parts.authority = upstream.1;
    match http::Uri::from_parts(parts) {
        Ok(uri) => *request.uri_mut() = uri,
        Err(e) => {
            return Ok(
                tonic::Status::internal(format!("cannot address upstream: {e}")).into_http(),
            );
        }
    }
    // The upstream's span becomes a child of this proxy's span.
    flashsale_runtime::trace::inject_http(request.headers_mut());
    match client.request(request).await {
        Ok(response) => Ok(response.map(tonic::body::Body::new)),
        Err(e) => {
            tracing::warn!(error = %e, "upstream unreachable");
            Ok(tonic::Status::unavailable(format!("upstream unreachable: {e}")).into_http())
        }
    }
}

/// Serves the proxy on `listener` until `shutdown`, then lets open calls finish for up to
/// `grace`.
pub async fn serve(
    limiter: Limiter,
    config: SidecarConfig,
    identify: Option<Identify>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()> {
    let upstream = config
        .upstream
        .parse::<http::Uri>()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let upstream = (upstream.scheme().cloned(), upstream.authority().cloned());
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Upstream = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let layer = RateLimitLayer::new(
        limiter,
        Policy {
            domain: config.domain.clone(),
            descriptors: config.descriptors.clone(),
            exempt: config.exempt.clone(),
            xff_num_trusted_hops: config.xff_num_trusted_hops,
            identify,
        },
    );
    let server = auto::Builder::new(TokioExecutor::new()).http2_only();
    let graceful = GracefulShutdown::new();
    tracing::info!(addr = %listener.local_addr()?, upstream = %config.upstream, "sidecar proxying");
    tokio::pin!(shutdown);
    loop {
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let upstream = upstream.clone();
        let limited = tower::ServiceBuilder::new()
            .layer(flashsale_runtime::trace::ServerTraceLayer)
            .layer(layer.clone())
            .service(service_fn(move |request: http::Request<ReadAhead>| {
                forward(client.clone(), upstream.clone(), request)
            }));
        // The peer and a Purchase's sale go into the request before the limit layer looks.
        let service = service_fn(move |mut request: http::Request<Incoming>| {
            let limited = limited.clone();
            async move {
                request.extensions_mut().insert(PeerAddr(peer));
                match crate::purchase::read_sale(request).await {
                    Ok(request) => limited.oneshot(request).await,
                    Err(status) => Ok(status.into_http()),
                }
            }
        });
        let connection =
            server.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    tracing::info!("sidecar draining");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("sidecar drain exceeded its grace period");
    }
    Ok(())
}
