//! Every `serve` target answers health and reflection, and drains on SIGTERM.

use std::time::Duration;

use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::{Running, flashsale};

async fn connect(addr: &str) -> Channel {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => return channel,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{addr} never came up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Waits until `addr` answers health with SERVING.
pub(crate) async fn wait_serving(addr: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let channel = connect(addr).await;
    let mut health = HealthClient::new(channel);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await;
        if status.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never reported SERVING"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn list_services(channel: Channel) -> Vec<String> {
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("ok");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

/// Throwaway Redis, NATS and Postgres, and the environment that points a process at them:
/// tests never touch the machine's own services.
pub(crate) struct Stores {
    _redis: flashsale_testkit::RedisServer,
    _nats: flashsale_testkit::NatsServer,
    _pg: flashsale_testkit::PostgresServer,
    pub(crate) env: Vec<(&'static str, String)>,
}

pub(crate) async fn stores() -> Stores {
    let (redis, nats, pg) = tokio::join!(
        flashsale_testkit::RedisServer::start(),
        flashsale_testkit::NatsServer::start(),
        flashsale_testkit::PostgresServer::start()
    );
    let (redis, nats, pg) = (redis.unwrap(), nats.unwrap(), pg.unwrap());
    let db = pg.create_database().await.unwrap();
    Stores {
        env: vec![
            ("FLASHSALE_REDIS__URL", redis.url()),
            ("FLASHSALE_NATS__URL", nats.url()),
            ("FLASHSALE_POSTGRES__URL", db.url),
        ],
        _redis: redis,
        _nats: nats,
        _pg: pg,
    }
}

async fn check_target(component: &str, services: &[&str], extra_env: &[(&str, String)]) {
    let stores = Box::pin(stores()).await;
    let env: Vec<(&str, String)> = stores
        .env
        .iter()
        .cloned()
        .chain(extra_env.iter().cloned())
        .collect();
    let env = env.as_slice();
    let port = flashsale_testkit::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let probes = format!("127.0.0.1:{}", flashsale_testkit::free_port().unwrap());
    let mut command = flashsale();
    command.args([
        "serve",
        component,
        "--listen",
        &addr,
        "--health-listen",
        &probes,
    ]);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut server = Running::spawn(&mut command);
    let channel = connect(&addr).await;

    // The same answers on the component's port and on the probes' own.
    for channel in [channel.clone(), connect(&probes).await] {
        let mut health = HealthClient::new(channel);
        for service in std::iter::once(&"").chain(services) {
            let status = health
                .check(HealthCheckRequest {
                    service: (*service).to_owned(),
                })
                .await
                .unwrap_or_else(|e| panic!("{component}: health of {service:?}: {e}"))
                .into_inner()
                .status;
            assert_eq!(
                status,
                ServingStatus::Serving as i32,
                "{component}: {service:?}"
            );
        }
    }
    let unanswered = ServerReflectionClient::new(connect(&probes).await)
        .server_reflection_info(tokio_stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }]))
        .await
        .map(drop)
        .unwrap_err();
    assert_eq!(
        unanswered.code(),
        tonic::Code::Unimplemented,
        "{component}: the probes' port answers health alone"
    );

    let listed = list_services(channel).await;
    let mut expected: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
    expected.push("grpc.health.v1.Health".into());
    expected.push("grpc.reflection.v1.ServerReflection".into());
    expected.sort();
    assert_eq!(listed, expected, "{component}: reflection");

    // What `helm test` and operators run.
    let mut health = flashsale();
    health.args(["health", &addr]);
    if let Some(service) = services.first() {
        health.args(["--service", service]);
    }
    let output = health.output().unwrap();
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{component}: {printed}");
    assert_eq!(printed.trim(), format!("{addr}: SERVING"));

    // A client that keeps its connection open must not hold the drain up.
    server.terminate();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(Duration::from_secs(10));
        (server, status)
    })
    .await
    .unwrap()
    .1
    .unwrap_or_else(|| panic!("{component} did not drain after SIGTERM"));
    assert!(status.success(), "{component} exited with {status}");
}

#[tokio::test]
async fn gateway_serves_health_and_reflection() {
    check_target(
        "gateway",
        &["flashsale.v1.FlashSale", "flashsale.v1.SaleAdmin"],
        &[],
    )
    .await;
}

#[tokio::test]
async fn inventory_serves_health_and_reflection() {
    check_target("inventory", &["flashsale.v1.Inventory"], &[]).await;
}

#[tokio::test]
async fn orders_serves_health_and_reflection() {
    check_target("orders", &["flashsale.v1.Orders"], &[]).await;
}

#[tokio::test]
async fn limiter_serves_health_and_reflection() {
    check_target(
        "limiter",
        &[
            "envoy.service.ratelimit.v3.RateLimitService",
            "flashsale.v1.Limiter",
        ],
        &[],
    )
    .await;
}

#[tokio::test]
async fn order_consumer_serves_health() {
    check_target("order-consumer", &[], &[]).await;
}

/// The sidecar forwards everything, health included, to the service behind it.
#[tokio::test]
async fn limiter_sidecar_forwards_health_to_its_upstream() {
    let stores = Box::pin(stores()).await;
    let gateway_addr = format!("127.0.0.1:{}", flashsale_testkit::free_port().unwrap());
    let _gateway = Running::spawn(flashsale().envs(stores.env.iter().cloned()).args([
        "serve",
        "gateway",
        "--listen",
        &gateway_addr,
    ]));
    connect(&gateway_addr).await;
    let sidecar_addr = format!("127.0.0.1:{}", flashsale_testkit::free_port().unwrap());
    let mut sidecar = Running::spawn(flashsale().envs(stores.env.iter().cloned()).args([
        "serve",
        "limiter-sidecar",
        "--listen",
        &sidecar_addr,
        "--upstream",
        &gateway_addr,
    ]));
    let channel = connect(&sidecar_addr).await;
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "flashsale.v1.FlashSale".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(
        status,
        ServingStatus::Serving as i32,
        "the gateway's own answer, through the proxy"
    );
    let listed = list_services(channel).await;
    assert!(
        listed.contains(&"flashsale.v1.SaleAdmin".to_owned()),
        "{listed:?}"
    );
    sidecar.terminate();
    let status = tokio::task::spawn_blocking(move || sidecar.wait_exit(Duration::from_secs(10)))
        .await
        .unwrap()
        .expect("the sidecar drains");
    assert!(status.success());
}

/// `flashsale health` fails, naming the target, when a server is not there or does not know
/// the service asked about.
#[tokio::test]
async fn health_command_fails_for_an_absent_server_or_unknown_service() {
    let port = flashsale_testkit::free_port().unwrap();
    let closed = format!("127.0.0.1:{port}");
    let output = flashsale()
        .args(["health", &closed, "--timeout", "2s"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.starts_with(&format!("{closed}: UNREACHABLE")),
        "{printed}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("not serving: {closed}")),
        "{stderr}"
    );

    // The order consumer serves health and nothing else.
    let stores = Box::pin(stores()).await;
    let port = flashsale_testkit::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let mut command = flashsale();
    command.args(["serve", "order-consumer", "--listen", &addr]);
    for (key, value) in &stores.env {
        command.env(key, value);
    }
    let _server = Running::spawn(&mut command);
    wait_serving(&addr).await;
    let output = flashsale()
        .args(["health", &addr, "--service", "flashsale.v1.Nope"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(printed.contains("NotFound"), "{printed}");
}
