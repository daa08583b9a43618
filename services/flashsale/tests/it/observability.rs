//! One purchase is one trace across the processes and the NATS hop; every process serves
//! metrics that move with the sale; tracing with no collector changes nothing.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use flashsale_gateway::auth::bearer;
use flashsale_loadgen::Scenario;
use flashsale_proto::v1::{self as pb, flash_sale_client::FlashSaleClient};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value,
};

use crate::mesh::{Extra, Mesh};

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent: Vec<u8>,
}

/// A minimal OTLP/gRPC trace collector.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent: span.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn collector() -> (Collector, u16) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (collector, port)
}

async fn buy_one(mesh: &Mesh, sale_id: &str, user: &str) -> pb::PurchaseAccepted {
    let token = mesh.signer().token(user, false, Duration::from_secs(600));
    let mut request = tonic::Request::new(pb::PurchaseRequest {
        sale_id: sale_id.into(),
        quantity: 1,
        idempotency_key: format!("{user}-1"),
        purchase_token: String::new(),
    });
    request
        .metadata_mut()
        .insert("authorization", bearer(&token));
    FlashSaleClient::new(mesh.channel(mesh.ports.sidecar).await)
        .purchase(request)
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_purchase_is_one_trace_across_processes_and_the_nats_hop() {
    let (collector, port) = collector().await;
    let mesh = Mesh::start_with(
        "tracing on",
        Extra {
            telemetry: format!(
                "otlp_endpoint = \"http://127.0.0.1:{port}\"\ntrace_sample_ratio = 1.0"
            ),
            env: vec![("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into())],
            ..Extra::default()
        },
    )
    .await;
    let sale = crate::e2e::create_sale(&mesh, 10, 1, 600_000).await;
    let accepted = buy_one(&mesh, &sale.sale_id, "tracy").await;

    // Wait until the consumer's span (and the rest) arrived.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let trace = loop {
        let spans = collector.spans.lock().unwrap().clone();
        let consumer = spans.iter().find(|s| s.name == "orders process");
        if let Some(consumer) = consumer {
            let trace: Vec<Received> = spans
                .iter()
                .filter(|s| s.trace_id == consumer.trace_id)
                .cloned()
                .collect();
            let services: HashSet<&str> = trace.iter().map(|s| s.service.as_str()).collect();
            if ["limiter-sidecar", "gateway", "inventory", "order-consumer"]
                .iter()
                .all(|s| services.contains(s))
                && trace
                    .iter()
                    .any(|s| s.service == "inventory" && s.name.ends_with("CommitMany"))
            {
                break trace;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no complete trace; got {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let by_id: HashMap<&[u8], &Received> =
        trace.iter().map(|s| (s.span_id.as_slice(), s)).collect();
    let parent_of = |span: &Received| by_id.get(span.parent.as_slice()).copied();
    let find = |service: &str, name: &str| {
        trace
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("no {service} span {name}: {trace:#?}"))
    };

    // sidecar → gateway
    let gateway = find("gateway", "flashsale.v1.FlashSale/Purchase");
    let sidecar = parent_of(gateway).expect("the gateway's span has its parent in the trace");
    assert_eq!(sidecar.service, "limiter-sidecar");
    // gateway → inventory (through the gateway's client span)
    let reserve = find("inventory", "flashsale.v1.Inventory/Reserve");
    let client = parent_of(reserve).expect("Reserve has a parent");
    assert_eq!(
        (
            client.service.as_str(),
            parent_of(client).map(|s| s.span_id.clone())
        ),
        ("gateway", Some(gateway.span_id.clone()))
    );
    // gateway → JetStream → order consumer: the consumer's span is the publish span's child.
    let publish = find("gateway", "orders publish");
    let process = find("order-consumer", "orders process");
    assert_eq!(
        process.parent, publish.span_id,
        "parent link across the NATS hop"
    );
    // consumer → Postgres write and → inventory commit, in the same trace
    let insert = find("order-consumer", "INSERT orders");
    assert_eq!(insert.parent, process.span_id);
    let commit = find("inventory", "flashsale.v1.Inventory/CommitMany");
    let commit_client = parent_of(commit).expect("CommitMany has a parent");
    assert_eq!(commit_client.parent, process.span_id);
    assert!(!accepted.order_id.is_empty());
}

/// Reads `/metrics` of a process.
pub(crate) async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

/// Sum of a series' samples whose labels contain every `needle`.
pub(crate) fn sum(text: &str, name: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_process_serves_metrics_that_move_with_the_sale() {
    let mesh = Mesh::start_with(
        "metrics on",
        Extra {
            metrics: true,
            ..Extra::default()
        },
    )
    .await;
    let sale = crate::e2e::create_sale(&mesh, 50, 1, 600_000).await;
    let scenario = Scenario {
        users: 200,
        attempts: 400,
        concurrency: 8,
        duplicate_ratio: 0.0,
        retries: 0,
        ..Scenario::default()
    };
    let report = mesh.drive(&sale, &scenario).await;
    assert_eq!(report.accepted.len(), 50);
    // Let the consumer write and the sweeper read the stock.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let port = |name: &str| {
        mesh.metrics_ports
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap()
            .1
    };
    let sale_label = format!("sale=\"{}\"", sale.sale_id);

    let gateway = scrape(port("gateway")).await;
    let counted = sum(&gateway, "flashsale_purchases_total", &[&sale_label]);
    assert_eq!(
        counted, 400.0,
        "purchases counted equal purchases made:\n{gateway}"
    );
    assert_eq!(
        sum(
            &gateway,
            "flashsale_purchases_total",
            &[&sale_label, "outcome=\"accepted\""]
        ),
        50.0
    );
    assert!(sum(&gateway, "flashsale_purchase_duration_seconds_count", &[]) >= 400.0);

    let inventory = scrape(port("inventory")).await;
    assert_eq!(
        sum(
            &inventory,
            "flashsale_stock_units",
            &[&sale_label, "state=\"held\""]
        ),
        50.0,
        "{inventory}"
    );
    assert_eq!(
        sum(
            &inventory,
            "flashsale_stock_units",
            &[&sale_label, "state=\"available\""]
        ),
        0.0
    );
    assert!(
        sum(
            &inventory,
            "flashsale_reserve_duration_seconds_count",
            &["outcome=\"reserved\""]
        ) >= 50.0
    );

    let consumer = scrape(port("order-consumer")).await;
    assert_eq!(
        sum(
            &consumer,
            "flashsale_orders_total",
            &["status=\"pending_payment\""]
        ),
        50.0,
        "{consumer}"
    );
    assert!(sum(&consumer, "flashsale_consumer_batch_size_count", &[]) >= 1.0);
    assert!(
        sum(
            &consumer,
            "flashsale_consumer_commit_duration_seconds_count",
            &[]
        ) >= 1.0
    );
    assert!(
        consumer.contains("flashsale_consumer_lag_messages"),
        "{consumer}"
    );

    let sidecar = scrape(port("limiter-sidecar")).await;
    assert!(
        sum(
            &sidecar,
            "flashsale_limiter_decisions_total",
            &["result=\"ok\""]
        ) >= 400.0,
        "{sidecar}"
    );

    let mut everything = String::new();
    for (name, port) in &mesh.metrics_ports {
        let text = scrape(*port).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{name}: {text}");
        everything.push_str(&text);
    }
    // Every series the Grafana dashboard plots is one the services export (counters of rare
    // events appear with their first event).
    let dashboard = std::fs::read_to_string(
        flashsale_testkit::workspace_root().join("helm/flashsale/dashboards/flashsale.json"),
    )
    .unwrap();
    let on_first_event = [
        "flashsale_dead_letters_total",
        "flashsale_consumer_redeliveries_total",
        "flashsale_backend_errors_total",
        // Only sales with a waiting room make these (queue::watchers_* reads them).
        "flashsale_queue_standings_total",
        "flashsale_queue_watchers",
    ];
    let mut names: Vec<&str> = dashboard
        .match_indices("flashsale_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            &rest[..rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len())]
        })
        .filter(|n| n.len() > "flashsale_".len())
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        if on_first_event.contains(&name) {
            continue;
        }
        assert!(
            everything.contains(&format!("{name}{{")) || everything.contains(&format!("{name} ")),
            "the dashboard plots {name}, which nothing exports"
        );
    }
    // And every series the autoscalers' Prometheus adapter rules read.
    let adapter = std::fs::read_to_string(
        flashsale_testkit::workspace_root().join("k8s/monitoring/prometheus-adapter.values.yaml"),
    )
    .unwrap();
    let mut series = 0;
    for line in adapter.lines() {
        let Some(query) = line.trim().strip_prefix("- seriesQuery: '") else {
            continue;
        };
        let name = &query[..query.find('{').unwrap()];
        series += 1;
        assert!(
            everything.contains(&format!("{name}{{")) || everything.contains(&format!("{name} ")),
            "the autoscalers read {name}, which nothing exports"
        );
    }
    assert_eq!(series, 3, "rules for the gateway, inventory and consumer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_on_with_no_collector_changes_nothing() {
    let closed = flashsale_testkit::free_port().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mesh = Mesh::start_with(
        "collector unreachable",
        Extra {
            telemetry: format!("otlp_endpoint = \"http://127.0.0.1:{closed}\""),
            env: vec![
                ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
                ("FLASHSALE_TELEMETRY__LOG_FORMAT".into(), "json".into()),
                ("FLASHSALE_TELEMETRY__LOG_LEVEL".into(), "info".into()),
            ],
            log_dir: Some(logs.path().to_path_buf()),
            ..Extra::default()
        },
    )
    .await;
    let sale = crate::e2e::create_sale(&mesh, 5, 1, 600_000).await;
    for user in ["a", "b", "c"] {
        let accepted = buy_one(&mesh, &sale.sale_id, user).await;
        assert_eq!(accepted.status, pb::OrderStatus::PendingPayment as i32);
    }
    // Export attempts have failed meanwhile; everything still serves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for port in [
        mesh.ports.gateway,
        mesh.ports.inventory,
        mesh.ports.sidecar,
        mesh.ports.consumer,
    ] {
        crate::serve::wait_serving(&format!("127.0.0.1:{port}")).await;
    }
    // Logs are JSON lines, and lines written while serving a call carry its trace id.
    let gateway = std::fs::read_to_string(logs.path().join("gateway.log")).unwrap();
    let created = gateway
        .lines()
        .find(|l| l.contains("sale created"))
        .unwrap_or_else(|| panic!("no `sale created` line in:\n{gateway}"));
    let line: serde_json::Value = serde_json::from_str(created).expect("a JSON line");
    let trace_id = line["spans"][0]["trace_id"].as_str().unwrap_or_default();
    assert_eq!(trace_id.len(), 32, "a W3C trace id on the line: {created}");
    assert_eq!(line["level"], "INFO");
    // No collector is no reason to shout: no error lines about exporting.
    assert!(!gateway.contains("\"level\":\"ERROR\""), "{gateway}");
}
