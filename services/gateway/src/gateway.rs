//! [`Gateway`]: the parts every use case shares, and how they are put together.
//!
//! A purchase enters at [`Gateway::purchase`] (`purchase.rs`); the buyer views are in
//! `views.rs`, the waiting room in `queue.rs`, sale administration in `admin.rs`. Each part
//! keeps its own state private: the sale cache here, the sold-out view in `sold_out.rs`, the
//! per-sale admission stacks and counters in `purchase.rs`, the waiting rooms in `queue.rs`.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_nats::jetstream;
use dashmap::DashMap;
use flashsale_orders::{OrderStore, config::StreamConfig, entity::sales};
use flashsale_proto::v1::{inventory_client::InventoryClient, orders_client::OrdersClient};
use flashsale_runtime::{Shutdown, tls::MeshTls, trace::TracedChannel};

use crate::{
    Error, config::Config, purchase::Admissions, purchase::Counters, queue::Rooms,
    sold_out::StockWatch,
};

/// The services the gateway talks to.
#[derive(Debug)]
pub struct Backends {
    /// The NATS client (JetStream publish, sold-out signals).
    pub nats: async_nats::Client,
    /// Sales in Postgres.
    pub store: OrderStore,
    /// The order stream's layout (subject prefix).
    pub stream: StreamConfig,
    /// Waiting rooms (Redis), when this gateway has a key to sign tickets with.
    pub room: Option<flashsale_limiter::waiting_room::WaitingRoom>,
    /// Ends the gateway's long-lived streams (WatchQueue) and tracks every task it spawns.
    pub shutdown: Shutdown,
}

/// The clients of the services behind the gateway.
pub(crate) struct Clients {
    pub(crate) inventory: InventoryClient<TracedChannel>,
    pub(crate) orders: OrdersClient<TracedChannel>,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: StreamConfig,
    pub(crate) store: OrderStore,
}

/// Sales read from Postgres, kept for `sale_cache_ttl`.
#[derive(Default)]
pub(crate) struct SaleCache {
    sales: DashMap<String, (sales::Model, Instant)>,
}

impl SaleCache {
    fn fresh(&self, sale_id: &str, ttl: Duration) -> Option<sales::Model> {
        self.sales
            .get(sale_id)
            .filter(|entry| entry.1.elapsed() < ttl)
            .map(|entry| entry.0.clone())
    }

    /// True when the sale was read here (a made-up sale id never is).
    pub(crate) fn knows(&self, sale_id: &str) -> bool {
        self.sales.contains_key(sale_id)
    }
}

/// What the use cases share: configuration, clients, and each part with its own state.
pub(crate) struct Parts {
    pub(crate) config: Config,
    /// The servers' per-call deadline (`server.request_timeout`).
    pub(crate) request_timeout: Duration,
    pub(crate) clients: Clients,
    pub(crate) sales: SaleCache,
    pub(crate) stock: StockWatch,
    pub(crate) admission: Admissions,
    pub(crate) counters: Counters,
    pub(crate) rooms: Rooms,
    pub(crate) shutdown: Shutdown,
}

/// Cheap-to-clone handle on the gateway core.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) parts: Arc<Parts>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("sales_cached", &self.parts.sales.sales.len())
            .finish_non_exhaustive()
    }
}

fn channel(url: &str, timeout: Duration, tls: Option<&MeshTls>) -> Result<TracedChannel, Error> {
    let channel = flashsale_runtime::client::balanced_tls(
        url,
        flashsale_runtime::client::Timeouts::both(timeout),
        tls,
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    Ok(TracedChannel::new(channel))
}

impl Gateway {
    /// A gateway over its backends; clients connect lazily and reconnect as needed, over
    /// mutual TLS when `tls` is given.
    pub async fn new(
        config: Config,
        backends: Backends,
        request_timeout: Duration,
        tls: Option<&MeshTls>,
    ) -> Result<Self, Error> {
        let stock = StockWatch::follow(&backends.nats, &config, &backends.shutdown).await?;
        let clients = Clients {
            inventory: InventoryClient::new(channel(&config.inventory_url, request_timeout, tls)?),
            orders: OrdersClient::new(channel(&config.orders_url, request_timeout, tls)?),
            js: jetstream::new(backends.nats),
            stream: backends.stream,
            store: backends.store,
        };
        Ok(Self {
            parts: Arc::new(Parts {
                request_timeout,
                clients,
                sales: SaleCache::default(),
                stock,
                admission: Admissions::default(),
                counters: Counters::default(),
                rooms: Rooms::new(backends.room),
                shutdown: backends.shutdown,
                config,
            }),
        })
    }

    /// The sale, from memory when read recently.
    pub async fn sale(&self, sale_id: &str) -> Result<sales::Model, Error> {
        let cache = &self.parts.sales;
        if let Some(row) = cache.fresh(sale_id, self.parts.config.sale_cache_ttl) {
            return Ok(row);
        }
        let row = self.parts.clients.store.sale(sale_id).await?;
        cache
            .sales
            .insert(sale_id.to_owned(), (row.clone(), Instant::now()));
        Ok(row)
    }

    /// Forgets a cached sale (after an admin change).
    pub fn forget_sale(&self, sale_id: &str) {
        self.parts.sales.sales.remove(sale_id);
    }
}
