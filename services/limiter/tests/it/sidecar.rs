use std::time::Duration;

use flashsale_limiter::config::{SidecarConfig, Source};
use flashsale_runtime::status::{reason_of, retry_after_of};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::world;

const RULES: &str = "domain: flashsale\ndescriptors:\n  - key: ip\n    rate_limit: { unit: minute, requests_per_unit: 6 }\n";

/// The sidecar over `w`'s limiter, as `config` says, on a port of its own (no token verifier).
pub(crate) async fn proxy(w: &crate::World, config: SidecarConfig) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(flashsale_limiter::sidecar::serve(
        w.limiter.clone(),
        config,
        None,
        listener,
        w.shutdown.wait(),
        Duration::from_secs(1),
    ));
    addr
}

/// A service to stand behind the sidecar: health, which has a unary and a server-streaming call.
pub(crate) async fn upstream() -> (std::net::SocketAddr, tonic_health::server::HealthReporter) {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("svc", tonic_health::ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (addr, reporter)
}

async fn client(addr: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
    HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

#[tokio::test]
async fn sidecar_forwards_unary_and_streams_and_refuses_over_limit_callers() {
    let w = world(RULES, |_| {}).await;
    let (upstream_addr, reporter) = upstream().await;
    let config = SidecarConfig {
        upstream: format!("http://{upstream_addr}"),
        domain: "flashsale".into(),
        descriptors: vec![vec![Source::Ip]],
        exempt: vec![],
        ..SidecarConfig::default()
    };
    let proxy_addr = proxy(&w, config).await;

    let mut direct = client(upstream_addr).await;
    let mut proxied = client(proxy_addr).await;

    // Unary: the same answer, metadata included.
    for service in ["", "svc", "missing"] {
        let a = direct
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await;
        let b = proxied
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await;
        match (a, b) {
            (Ok(a), Ok(b)) => assert_eq!(a.into_inner(), b.into_inner()),
            (Err(a), Err(b)) => assert_eq!(
                (a.code(), a.message()),
                (b.code(), b.message()),
                "errors and trailers forwarded"
            ),
            (a, b) => panic!("{service}: direct {a:?} vs proxied {b:?}"),
        }
    }

    // Server streaming: every message, in order, as the status changes.
    let mut stream = proxied
        .watch(HealthCheckRequest {
            service: "svc".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.status, 1, "SERVING");
    reporter
        .set_service_status("svc", tonic_health::ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.status, 2, "NOT_SERVING arrives through the proxy");
    drop(stream);

    // 6 per minute per IP: 3 unary + 1 stream so far; two more pass, then refusals.
    for _ in 0..2 {
        proxied
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
    }
    let refused = proxied
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason_of(&refused).as_deref(), Some("RATE_LIMITED"));
    let after = retry_after_of(&refused).expect("retry-after metadata");
    assert!(
        after >= Duration::from_secs(1) && after <= Duration::from_secs(60),
        "{after:?}"
    );
    // Direct calls are not limited: the sidecar is the only gate.
    direct
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
}
