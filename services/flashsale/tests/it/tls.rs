//! Mutual TLS between the services: the whole purchase path runs with the inventory and orders
//! serving mTLS (gateway → inventory, gateway → orders, order consumer → inventory), and those
//! servers turn away plaintext, clients whose certificate another CA signed, and clients that
//! expect another server name; a client without a certificate is told why
//! (`UNAUTHENTICATED CLIENT_CERTIFICATE_REQUIRED`), except for health checks.

use std::{path::Path, time::Duration};

use flashsale_proto::v1::{self as pb, inventory_client::InventoryClient};
use flashsale_runtime::{
    client::{Timeouts, balanced_tls},
    tls::{MeshTls, TlsConfig},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    e2e::create_sale,
    mesh::{Extra, Mesh},
};

pub(crate) fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes `<name>.crt` and `<name>.key` for a certificate naming `sans`, signed by `issuer`.
pub(crate) fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    sans: &[&str],
    dir: &Path,
    name: &str,
) {
    let mut params =
        CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
}

fn load(dir: &Path, name: &str, ca: &str) -> MeshTls {
    TlsConfig {
        cert: Some(dir.join(format!("{name}.crt"))),
        key: Some(dir.join(format!("{name}.key"))),
        ca: Some(dir.join(ca)),
    }
    .load()
    .unwrap()
    .unwrap()
}

/// Waits until the server on `port` answers health SERVING over mutual TLS.
pub(crate) async fn wait_serving_tls(port: u16, tls: &MeshTls) {
    let url = format!("https://127.0.0.1:{port}");
    let channel = balanced_tls(&url, Timeouts::both(Duration::from_secs(2)), Some(tls)).unwrap();
    let mut health = HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = health.check(HealthCheckRequest::default()).await;
        if status.is_ok_and(|s| s.into_inner().status == ServingStatus::Serving as i32) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} never reported SERVING over mutual TLS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The call never reached the service: the handshake failed or the connection was torn down.
/// How the client learns it varies (with TLS 1.3 a refused client certificate shows only when
/// the server closes the connection; plaintext meets a GOAWAY), so any transport failure
/// counts, but never an answer from the service itself.
fn refused_at_the_door(status: &tonic::Status) {
    use std::error::Error as _;
    assert!(
        matches!(
            status.code(),
            tonic::Code::Unavailable
                | tonic::Code::Cancelled
                | tonic::Code::Internal
                | tonic::Code::Unknown
        ),
        "{status:?}"
    );
    assert!(
        status.metadata().get("flashsale-reason").is_none(),
        "the service answered: {status:?}"
    );
    let transport = status
        .source()
        .is_some_and(|e| e.downcast_ref::<tonic::transport::Error>().is_some());
    assert!(transport, "not a transport failure: {status:?}");
}

/// GetStock of `sale_id` on the inventory at `url` through `tls` (or plaintext).
async fn stock(url: &str, tls: Option<&MeshTls>, sale_id: &str) -> Result<u64, tonic::Status> {
    let channel = match balanced_tls(url, Timeouts::both(Duration::from_secs(3)), tls) {
        Ok(channel) => channel,
        Err(e) => return Err(tonic::Status::invalid_argument(e.to_string())),
    };
    InventoryClient::new(channel)
        .get_stock(pb::GetStockRequest {
            sale_id: sale_id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().total)
}

/// GetStock through a hand-made client TLS configuration.
async fn raw_stock(
    url: &str,
    tls: tonic::transport::ClientTlsConfig,
    sale_id: &str,
) -> Result<u64, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .timeout(Duration::from_secs(3))
        .tls_config(tls)
        .unwrap()
        .connect_lazy();
    InventoryClient::new(channel)
        .get_stock(pb::GetStockRequest {
            sale_id: sale_id.to_owned(),
        })
        .await
        .map(|r| r.into_inner().total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_speak_mutual_tls_and_turn_strangers_away() {
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    let mesh_ca = ca("flashsale mesh CA");
    std::fs::write(dir.join("ca.crt"), mesh_ca.pem()).unwrap();
    // One identity for every component here; in a cluster each has its own from the same CA.
    leaf(&mesh_ca, &["127.0.0.1", "localhost"], dir, "node");

    let rogue_ca = ca("somebody else's CA");
    std::fs::write(dir.join("rogue-ca.crt"), rogue_ca.pem()).unwrap();
    leaf(&rogue_ca, &["127.0.0.1"], dir, "rogue");

    let mesh = Mesh::start_with(
        "payment window 10 min",
        Extra {
            tls: Some(dir.to_path_buf()),
            ..Extra::default()
        },
    )
    .await;

    // The whole purchase path: gateway → inventory (Reserve) and the consumer → inventory
    // (CommitMany) over mutual TLS; then the gateway → orders (GetOrder).
    let sale = create_sale(&mesh, 5, 1, 600_000).await;
    let report = flashsale_loadgen::drive(
        mesh.channel(mesh.ports.sidecar).await,
        mesh.signer(),
        &sale.sale_id,
        &flashsale_loadgen::Scenario {
            users: 20,
            attempts: 40,
            concurrency: 8,
            ..flashsale_loadgen::Scenario::default()
        },
    )
    .await;
    assert_eq!(report.accepted.len(), 5, "{:?}", report.rejected);
    let sources = flashsale_loadgen::Sources {
        store: mesh.store().await,
        inventory: {
            let url = format!("https://127.0.0.1:{}", mesh.ports.inventory);
            balanced_tls(
                &url,
                Timeouts::both(Duration::from_secs(5)),
                mesh.tls().as_ref(),
            )
            .unwrap()
        },
    };
    let audit = flashsale_loadgen::audit(&sources, &sale, &report, Duration::from_secs(30)).await;
    assert!(audit.passed(), "{}", audit.lines().join("\n"));

    let inventory = format!("https://127.0.0.1:{}", mesh.ports.inventory);
    let node = load(dir, "node", "ca.crt");
    assert_eq!(
        stock(&inventory, Some(&node), &sale.sale_id).await.unwrap(),
        5
    );

    // Strangers.
    let plaintext = stock(
        &format!("http://127.0.0.1:{}", mesh.ports.inventory),
        None,
        &sale.sale_id,
    )
    .await
    .unwrap_err();
    // Plaintext HTTP/2 meets a TLS listener: the connection is torn down, never answered.
    refused_at_the_door(&plaintext);

    let pem = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let our_ca = || tonic::transport::Certificate::from_pem(pem("ca.crt"));
    // Trusts our CA but presents no certificate.
    let no_identity = raw_stock(
        &inventory,
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(our_ca())
            .domain_name("127.0.0.1"),
        &sale.sale_id,
    )
    .await
    .unwrap_err();
    told_a_certificate_is_required(&no_identity);

    // A certificate from another CA (which trusts our server's CA, to isolate the client side).
    let rogue = load(dir, "rogue", "ca.crt");
    let refused = stock(&inventory, Some(&rogue), &sale.sale_id)
        .await
        .unwrap_err();
    refused_at_the_door(&refused);

    // A client that trusts only another CA does not accept our server.
    let distrustful = load(dir, "rogue", "rogue-ca.crt");
    let refused = stock(&inventory, Some(&distrustful), &sale.sale_id)
        .await
        .unwrap_err();
    refused_at_the_door(&refused);

    // Our CA and identity, but expecting a server name the certificate does not carry.
    let wrong_name = raw_stock(
        &inventory,
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(our_ca())
            .identity(tonic::transport::Identity::from_pem(
                pem("node.crt"),
                pem("node.key"),
            ))
            .domain_name("inventory.elsewhere.svc"),
        &sale.sale_id,
    )
    .await
    .unwrap_err();
    refused_at_the_door(&wrong_name);

    // The orders service, too.
    let plain_orders = HealthClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", mesh.ports.orders))
            .unwrap()
            .timeout(Duration::from_secs(3))
            .connect_lazy(),
    )
    .check(HealthCheckRequest::default())
    .await
    .unwrap_err();
    refused_at_the_door(&plain_orders);
    wait_serving_tls(mesh.ports.orders, &node).await;

    // Orders, reached by a caller without a certificate: Pay is refused, saying why, before
    // anything of the order is read; health checks answer anyone.
    let uncertified =
        tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{}", mesh.ports.orders))
            .unwrap()
            .timeout(Duration::from_secs(3))
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(our_ca())
                    .domain_name("127.0.0.1"),
            )
            .unwrap()
            .connect_lazy();
    let order_id = report.accepted[0].order_id.clone();
    let pay = pb::orders_client::OrdersClient::new(uncertified.clone())
        .pay(pb::PayRequest {
            order_id,
            user_id: report.accepted[0].user_id.clone(),
            payment_reference: "pay-1".into(),
        })
        .await
        .unwrap_err();
    told_a_certificate_is_required(&pay);
    let health = HealthClient::new(uncertified)
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
}

/// A caller without a client certificate hears why from the service itself.
fn told_a_certificate_is_required(status: &tonic::Status) {
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    assert_eq!(
        flashsale_runtime::status::reason_of(status).as_deref(),
        Some("CLIENT_CERTIFICATE_REQUIRED"),
        "{status:?}"
    );
    assert!(
        status.message().contains("client certificate"),
        "{status:?}"
    );
}
