//! The gateway started in-process on port 0, as it runs in production: its gRPC face and typed
//! core over a real Postgres and NATS JetStream from the test kit. The inventory and orders
//! services it calls are an address nobody answers, so what these tests see is the gateway's own
//! judgement: authentication, validation, pages of sales, and how an absent backend is told.

mod sales;

use std::{net::SocketAddr, time::Duration};

use flashsale_gateway::{
    Backends, Config, Gateway,
    auth::{Signer, Verifier, bearer},
    grpc,
};
use flashsale_orders::{OrderStore, entity::sales as rows};
use flashsale_proto::v1::{flash_sale_client::FlashSaleClient, sale_admin_client::SaleAdminClient};
use flashsale_runtime::{
    Shutdown,
    config::{PostgresConfig, ServerConfig},
};
use flashsale_testkit::{NatsServer, PostgresServer, TestDatabase};
use secrecy::SecretString;
use tonic::transport::Channel;

/// A gateway serving on loopback, with the servers behind it.
pub(crate) struct Harness {
    _pg: PostgresServer,
    _db: TestDatabase,
    _nats: NatsServer,
    pub(crate) store: OrderStore,
    pub(crate) buyers: FlashSaleClient<Channel>,
    pub(crate) admin: SaleAdminClient<Channel>,
    pub(crate) signer: Signer,
    shutdown: Shutdown,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// An address with nothing listening on it.
fn nobody() -> String {
    let port = flashsale_testkit::free_port().expect("a free port");
    format!("http://127.0.0.1:{port}")
}

pub(crate) async fn harness() -> Harness {
    let (pg, nats) = tokio::join!(PostgresServer::start(), NatsServer::start());
    let (pg, nats) = (pg.unwrap(), nats.unwrap());
    let db = pg.create_database().await.unwrap();
    let postgres = PostgresConfig {
        url: SecretString::from(db.url.clone()),
        ..PostgresConfig::default()
    };
    let store = OrderStore::connect(&postgres).await.unwrap();
    store.migrate().await.unwrap();
    let config = Config {
        inventory_url: nobody(),
        orders_url: nobody(),
        ..Config::default()
    };
    let shutdown = Shutdown::new();
    let verifier = Verifier::load(&config.auth, &shutdown).await.unwrap();
    let signer = Signer::new(&config.auth).unwrap();
    let backends = Backends {
        nats: async_nats::connect(nats.url()).await.unwrap(),
        store: store.clone(),
        stream: flashsale_orders::config::StreamConfig::default(),
        room: None,
        shutdown: shutdown.clone(),
    };
    let gateway = Gateway::new(config, backends, Duration::from_secs(2), None)
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = grpc::server(gateway, verifier, &ServerConfig::default());
    tokio::spawn(server.serve(listener, shutdown.wait()));
    let channel = Channel::from_shared(url).unwrap().connect_lazy();
    Harness {
        _pg: pg,
        _db: db,
        _nats: nats,
        store,
        buyers: FlashSaleClient::new(channel.clone()),
        admin: SaleAdminClient::new(channel),
        signer,
        shutdown,
    }
}

impl Harness {
    /// A request carrying `user`'s token.
    pub(crate) fn as_buyer<T>(&self, user: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let token = self.signer.token(user, false, Duration::from_secs(300));
        request
            .metadata_mut()
            .insert("authorization", bearer(&token));
        request
    }

    /// Writes a sale straight to Postgres: `starts_in_ms` from now, an hour long.
    pub(crate) async fn sale(&self, sale_id: &str, starts_in_ms: i64) -> rows::Model {
        let now = flashsale_proto::time::now_ms();
        let starts = now + starts_in_ms;
        self.store
            .create_sale(rows::Model {
                sale_id: sale_id.to_owned(),
                name: format!("sale {sale_id}"),
                stock: 10,
                per_user_limit: 1,
                unit_price_minor: 990,
                currency: "CNY".into(),
                starts_at: flashsale_orders::convert::utc(starts),
                ends_at: flashsale_orders::convert::utc(starts + 3_600_000),
                reservation_hold_ms: 60_000,
                payment_window_ms: 900_000,
                ended_at: None,
                created_at: chrono::Utc::now(),
                stock_buckets: 1,
                waiting_room_rate_milli: None,
                waiting_room_cap: None,
                waiting_room_window_ms: None,
            })
            .await
            .unwrap()
    }
}

/// The reason a status carries.
pub(crate) fn reason(status: &tonic::Status) -> String {
    flashsale_runtime::status::reason_of(status).unwrap_or_default()
}
