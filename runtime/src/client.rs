//! Client channels that spread calls over every address a service name resolves to.
//!
//! A gRPC client keeps one HTTP/2 connection and multiplexes every call over it. Behind a
//! Kubernetes ClusterIP Service that pins all of one gateway's calls to whichever inventory pod
//! it first reached, and pods the autoscaler adds get no traffic. So the mesh's clients resolve
//! the backend's name themselves (a *headless* Service answers with every ready pod's address),
//! keep a connection to each, and balance calls across them (power of two choices), resolving
//! again every [`RESOLVE_EVERY`] to follow pods as they come and go.
//!
//! A URL whose host is an IP address gets one plain connection. A name that cannot be resolved
//! yet is still dialled by name, so calls fail fast with UNAVAILABLE instead of waiting, and a
//! failed or empty resolution keeps the addresses known so far.

use std::{
    collections::BTreeSet,
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::sync::mpsc::Sender;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, channel::Change};

/// How often a backend's name is resolved again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// A URL a client cannot use.
#[derive(Debug, thiserror::Error)]
#[error("`{url}`: {reason}")]
pub struct BadUrl {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The per-connection settings every backend connection shares.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Most time to establish a connection.
    pub connect: Duration,
    /// Most time one call may take.
    pub request: Duration,
}

impl Timeouts {
    /// The same bound for connecting and for each call.
    pub fn both(limit: Duration) -> Self {
        Self {
            connect: limit,
            request: limit,
        }
    }
}

/// A channel to `url` that connects on first use and balances over every address the host
/// resolves to, re-resolving in the background. Must be called within a Tokio runtime.
pub fn balanced(url: &str, timeouts: Timeouts) -> Result<Channel, BadUrl> {
    balanced_tls(url, timeouts, None)
}

/// [`balanced`] over mutual TLS when `tls` is given (the URL must then be `https://`): every
/// connection presents this process's certificate and checks that the server's names the
/// URL's host, whichever pod address it dials.
pub fn balanced_tls(
    url: &str,
    timeouts: Timeouts,
    tls: Option<&crate::tls::MeshTls>,
) -> Result<Channel, BadUrl> {
    let target = Target::parse_with(url, timeouts, tls)?;
    if target.host.parse::<IpAddr>().is_ok() {
        return Ok(target.by_name.connect_lazy());
    }
    let lookup = format!("{}:{}", target.host, target.port);
    Ok(balanced_with(target, RESOLVE_EVERY, move || {
        let lookup = lookup.clone();
        async move { Ok(tokio::net::lookup_host(lookup).await?.collect()) }
    }))
}

/// What a URL names: its connection template and where to look it up.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    scheme: String,
    host: String,
    port: u16,
    timeouts: Timeouts,
    /// The URL itself as an endpoint, dialled by name.
    by_name: Endpoint,
    /// Client TLS for every connection, when mutual TLS is on.
    tls: Option<ClientTlsConfig>,
}

impl Target {
    #[cfg(test)]
    fn parse(url: &str, timeouts: Timeouts) -> Result<Self, BadUrl> {
        Self::parse_with(url, timeouts, None)
    }

    fn parse_with(
        url: &str,
        timeouts: Timeouts,
        tls: Option<&crate::tls::MeshTls>,
    ) -> Result<Self, BadUrl> {
        let bad = |reason: String| BadUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|e| bad(format!("{e}")))?;
        let scheme = uri
            .scheme_str()
            .ok_or_else(|| bad("needs a scheme, e.g. http://".into()))?
            .to_owned();
        let host = uri
            .host()
            .ok_or_else(|| bad("needs a host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri
            .port_u16()
            .or(match scheme.as_str() {
                "http" => Some(80),
                "https" => Some(443),
                _ => None,
            })
            .ok_or_else(|| bad("needs a port".into()))?;
        match (tls.is_some(), scheme.as_str()) {
            (true, "https") | (false, "http") => {}
            (true, _) => return Err(bad("mutual TLS is on: the URL must be https://".into())),
            (false, _) => {
                return Err(bad(
                    "https:// needs mutual TLS configured ([tls] cert, key, ca)".into(),
                ));
            }
        }
        let tls = tls.map(|tls| tls.client(&host));
        let by_name = configure(
            Endpoint::from_shared(url.to_owned()).map_err(|e| bad(e.to_string()))?,
            timeouts,
            tls.as_ref(),
        )
        .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            url: url.to_owned(),
            scheme,
            host,
            port,
            timeouts,
            by_name,
            tls,
        })
    }

    fn endpoint_for(&self, addr: SocketAddr) -> Option<Endpoint> {
        let endpoint = Endpoint::from_shared(format!("{}://{addr}", self.scheme)).ok()?;
        // Requests keep naming the service, whichever pod answers them.
        let endpoint = endpoint.origin(self.url.parse().ok()?);
        configure(endpoint, self.timeouts, self.tls.as_ref()).ok()
    }
}

fn configure(
    endpoint: Endpoint,
    timeouts: Timeouts,
    tls: Option<&ClientTlsConfig>,
) -> Result<Endpoint, tonic::transport::Error> {
    let endpoint = endpoint
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.request)
        .tcp_nodelay(true);
    match tls {
        Some(tls) => endpoint.tls_config(tls.clone()),
        None => Ok(endpoint),
    }
}

/// Which connection a [`Change`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Key {
    /// The URL dialled by name, used until a resolution succeeds.
    ByName,
    /// One resolved address.
    Addr(SocketAddr),
}

/// [`balanced`] with the resolver and its period given: the seam the tests use.
fn balanced_with<R, F>(target: Target, every: Duration, mut resolve: R) -> Channel
where
    R: FnMut() -> F + Send + 'static,
    F: Future<Output = io::Result<Vec<SocketAddr>>> + Send,
{
    let (channel, changes) = Channel::balance_channel::<Key>(64);
    tokio::spawn(async move {
        let mut current = BTreeSet::new();
        // Dial by name until the first resolution, so no call waits for an empty set.
        if changes
            .send(Change::Insert(Key::ByName, target.by_name.clone()))
            .await
            .is_err()
        {
            return;
        }
        current.insert(Key::ByName);
        loop {
            match resolve().await {
                Ok(addrs) if !addrs.is_empty() => {
                    let wanted: BTreeSet<Key> = addrs.into_iter().map(Key::Addr).collect();
                    if apply(&target, &changes, &mut current, wanted)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(_) => {
                    tracing::warn!(url = %target.url, "resolved to no address; keeping the last known")
                }
                Err(e) => {
                    tracing::warn!(url = %target.url, error = %e, "cannot resolve; keeping the last known addresses");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = changes.closed() => return,
            }
        }
    });
    channel
}

/// Moves the balanced set from `current` to `wanted`: additions first, so it is never empty.
async fn apply(
    target: &Target,
    changes: &Sender<Change<Key, Endpoint>>,
    current: &mut BTreeSet<Key>,
    wanted: BTreeSet<Key>,
) -> Result<(), ()> {
    for key in wanted.difference(current) {
        let Key::Addr(addr) = key else { continue };
        let Some(endpoint) = target.endpoint_for(*addr) else {
            continue;
        };
        changes
            .send(Change::Insert(*key, endpoint))
            .await
            .map_err(drop)?;
        tracing::debug!(url = %target.url, %addr, "backend address added");
    }
    for key in current.difference(&wanted) {
        changes.send(Change::Remove(*key)).await.map_err(drop)?;
        tracing::debug!(url = %target.url, ?key, "backend address removed");
    }
    *current = wanted;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    };

    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    use super::*;

    /// A health server on loopback that counts the calls it answers.
    struct Backend {
        addr: SocketAddr,
        calls: Arc<AtomicUsize>,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    async fn backend() -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let health = tonic_health::server::HealthService::from_health_reporter(
            tonic_health::server::HealthReporter::new(),
        );
        let health = tonic_health::pb::health_server::HealthServer::with_interceptor(
            health,
            move |request| {
                counted.fetch_add(1, Ordering::Relaxed);
                Ok(request)
            },
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Backend {
            addr,
            calls,
            _stop: stop,
        }
    }

    async fn call_many(channel: &Channel, n: usize) -> usize {
        let mut client = HealthClient::new(channel.clone());
        let mut ok = 0;
        for _ in 0..n {
            if client.check(HealthCheckRequest::default()).await.is_ok() {
                ok += 1;
            }
        }
        ok
    }

    fn take(backend: &Backend) -> usize {
        backend.calls.swap(0, Ordering::Relaxed)
    }

    #[tokio::test]
    async fn calls_spread_over_every_address_and_follow_resolution() {
        let (a, b, c) = (backend().await, backend().await, backend().await);
        let answer = Arc::new(Mutex::new(Ok(vec![a.addr, b.addr])));
        let target = Target::parse(
            "http://inventory.flashsale.svc:50052",
            Timeouts::both(Duration::from_secs(2)),
        )
        .unwrap();
        let resolved = answer.clone();
        let channel = balanced_with(target, Duration::from_millis(50), move || {
            let answer = match &*resolved.lock().unwrap() {
                Ok(addrs) => Ok(addrs.clone()),
                Err(kind) => Err(io::Error::from(*kind)),
            };
            async move { answer }
        });
        let settle = || tokio::time::sleep(Duration::from_millis(300));

        settle().await;
        assert_eq!(call_many(&channel, 200).await, 200);
        let (on_a, on_b, on_c) = (take(&a), take(&b), take(&c));
        assert!(on_a >= 20 && on_b >= 20, "a={on_a} b={on_b}: both serve");
        assert_eq!(on_c, 0, "c is not resolved yet");

        // A pod goes away and another arrives.
        *answer.lock().unwrap() = Ok(vec![b.addr, c.addr]);
        settle().await;
        assert_eq!(call_many(&channel, 200).await, 200);
        let (on_a, on_b, on_c) = (take(&a), take(&b), take(&c));
        assert_eq!(on_a, 0, "a was removed");
        assert!(on_b >= 20 && on_c >= 20, "b={on_b} c={on_c}: both serve");

        // DNS trouble keeps the last known addresses rather than emptying the set.
        *answer.lock().unwrap() = Err(io::ErrorKind::TimedOut);
        settle().await;
        assert_eq!(call_many(&channel, 50).await, 50);
        *answer.lock().unwrap() = Ok(vec![]);
        settle().await;
        assert_eq!(call_many(&channel, 50).await, 50);
        assert_eq!(take(&a), 0);
        assert_eq!(take(&b) + take(&c), 100);
    }

    #[tokio::test]
    async fn an_unresolvable_name_fails_fast_instead_of_waiting() {
        let target = Target::parse(
            "http://no-such-backend.invalid:50052",
            Timeouts::both(Duration::from_secs(1)),
        )
        .unwrap();
        let channel = balanced_with(target, Duration::from_millis(50), || async {
            Err(io::Error::from(io::ErrorKind::NotFound))
        });
        let started = tokio::time::Instant::now();
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn an_ip_address_needs_no_resolution() {
        let a = backend().await;
        let channel = balanced(
            &format!("http://{}", a.addr),
            Timeouts::both(Duration::from_secs(2)),
        )
        .unwrap();
        assert_eq!(call_many(&channel, 5).await, 5);
        assert_eq!(take(&a), 5);
    }

    #[test]
    fn urls_without_scheme_or_port_are_refused() {
        let timeouts = Timeouts::both(Duration::from_secs(1));
        let err = Target::parse("inventory:50052", timeouts).unwrap_err();
        assert!(err.to_string().contains("inventory:50052"), "{err}");
        assert!(Target::parse("grpc://inventory", timeouts).is_err());
        let ok = Target::parse("http://inventory", timeouts).unwrap();
        assert_eq!((ok.host.as_str(), ok.port), ("inventory", 80));
    }
}
