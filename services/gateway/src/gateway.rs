//! [`Gateway`]: the purchase path and the sale views, over the inventory, the order stream and
//! the orders service.
//!
//! Purchase: the local sold-out flag answers first (memory, no network) to every buyer whose
//! idempotency key made no reservation in the sale (a fingerprint set read once per sold-out
//! spell; a retry of a purchase the buyer made goes on and gets its original answer); then the sale's
//! admission stack (a tower concurrency limit behind a load shedder) sheds what exceeds the
//! in-flight bound; then `Inventory.Reserve`, then the JetStream publish keyed on the
//! reservation id, then `Inventory.MarkQueued` (from then on only the order's lifecycle frees
//! the unit), then the answer. A publish that fails releases the reservation (only the attempt
//! that made it) and answers UNAVAILABLE.
//!
//! Idempotency keys (per sale and buyer) name one purchase: a repeat with the same quantity
//! gets the original answer whatever happened since (the order may have been paid or
//! expired: the order id tells); a repeat while the first attempt is still held publishes
//! again; a key whose purchase did not go through is spent (`PURCHASE_FAILED`); the same key
//! with another quantity is `INVALID_ARGUMENT IDEMPOTENCY_KEY_REUSED`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_nats::jetstream;
use dashmap::DashMap;
use flashsale_orders::{OrderStore, config::StreamConfig, entity::sales};
use flashsale_proto::{
    rules,
    time::{timestamp, unix_ms},
    v1::{self as pb, inventory_client::InventoryClient, orders_client::OrdersClient},
};
use flashsale_runtime::{tls::MeshTls, trace::TracedChannel};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

use crate::{Error, auth::Caller, config::Config, sold_out::SoldOutFlags};

/// What a purchase needs to know of its sale (cached in memory).
#[derive(Debug, Clone)]
pub struct SaleInfo {
    /// The row.
    pub row: sales::Model,
    /// When it was read.
    fetched: Instant,
}

/// One purchase on its way through the admission stack.
#[derive(Debug, Clone)]
struct Job {
    sale: Arc<sales::Model>,
    user_id: String,
    quantity: u32,
    idempotency_key: String,
}

type Admission = BoxCloneSyncService<Job, pb::PurchaseAccepted, BoxError>;

/// Most key fingerprints a gateway keeps for one sold-out sale (8 bytes each); a sale with
/// more sends every keyed purchase to the inventory while it is sold out.
const MAX_KEY_FINGERPRINTS: u32 = 200_000;

/// What a gateway knows of a sold-out sale's idempotency keys (see [`Gateway::sold_out_for`]).
#[derive(Debug, Clone)]
struct KeySet {
    /// The sold-out spell it was read in ([`SoldOutFlags::sold_out_episode`]).
    episode: u64,
    /// The fingerprints; `None` when the sale had too many to keep.
    fingerprints: Option<Arc<std::collections::HashSet<u64>>>,
}

/// Purchases of one sale counted by this replica.
#[derive(Debug, Default)]
pub struct SaleCounters {
    /// Accepted (queued).
    pub accepted: AtomicU64,
    /// Refused, by reason.
    pub rejected: DashMap<&'static str, AtomicU64>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// The servers' per-call deadline (`server.request_timeout`).
    pub(crate) request_timeout: Duration,
    pub(crate) inventory: InventoryClient<TracedChannel>,
    pub(crate) orders: OrdersClient<TracedChannel>,
    pub(crate) js: jetstream::Context,
    pub(crate) stream: StreamConfig,
    pub(crate) store: OrderStore,
    pub(crate) room: Option<flashsale_limiter::waiting_room::WaitingRoom>,
    /// Per sale with buyers watching its waiting room: the latest reading, shared by them.
    pub(crate) room_views: std::sync::Mutex<
        std::collections::HashMap<String, tokio::sync::watch::Sender<crate::queue::Reading>>,
    >,
    /// When a sold-out room was last checked against the inventory, per sale.
    pub(crate) room_rechecks: DashMap<String, Instant>,
    pub(crate) shutdown: flashsale_runtime::Shutdown,
    sold_out: SoldOutFlags,
    sold_out_seen: DashMap<String, Instant>,
    /// Per sold-out sale: the fingerprints of the keys that made reservations in it.
    key_sets: DashMap<String, KeySet>,
    /// One read of a sale's key fingerprints at a time.
    key_reads: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
    sales: DashMap<String, SaleInfo>,
    admission: DashMap<String, Admission>,
    pub(crate) counters: DashMap<String, Arc<SaleCounters>>,
}

/// Cheap-to-clone handle on the gateway core.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("sales_cached", &self.inner.sales.len())
            .finish_non_exhaustive()
    }
}

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
    /// Ends the gateway's long-lived streams (WatchQueue) when it shuts down.
    pub shutdown: flashsale_runtime::Shutdown,
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

/// The metric label of purchases for sales this replica does not know.
const UNKNOWN_SALE: &str = "unknown";

impl Gateway {
    /// A gateway over its backends; clients connect lazily and reconnect as needed, over
    /// mutual TLS when `tls` is given.
    pub async fn new(
        config: Config,
        backends: Backends,
        request_timeout: Duration,
        tls: Option<&MeshTls>,
    ) -> Result<Self, Error> {
        let sold_out =
            SoldOutFlags::subscribe(&backends.nats, &config.signal_prefix, &backends.shutdown)
                .await
                .map_err(|e| Error::Config(format!("subscribing to sold-out signals: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                inventory: InventoryClient::new(channel(
                    &config.inventory_url,
                    request_timeout,
                    tls,
                )?),
                orders: OrdersClient::new(channel(&config.orders_url, request_timeout, tls)?),
                js: jetstream::new(backends.nats),
                stream: backends.stream,
                store: backends.store,
                room: backends.room,
                room_views: std::sync::Mutex::new(std::collections::HashMap::new()),
                room_rechecks: DashMap::new(),
                shutdown: backends.shutdown,
                request_timeout,
                sold_out,
                sold_out_seen: DashMap::new(),
                key_sets: DashMap::new(),
                key_reads: DashMap::new(),
                sales: DashMap::new(),
                admission: DashMap::new(),
                counters: DashMap::new(),
                config,
            }),
        })
    }

    pub(crate) fn counters(&self, sale_id: &str) -> Arc<SaleCounters> {
        if let Some(c) = self.inner.counters.get(sale_id) {
            return c.clone();
        }
        self.inner
            .counters
            .entry(sale_id.to_owned())
            .or_default()
            .clone()
    }

    fn count(&self, sale_id: &str, outcome: &Result<pb::PurchaseAccepted, Error>) {
        let counters = self.counters(sale_id);
        match outcome {
            Ok(_) => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters
                    .rejected
                    .entry(e.reason_name())
                    .or_default()
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The sale, from memory when read recently.
    pub async fn sale(&self, sale_id: &str) -> Result<sales::Model, Error> {
        if let Some(cached) = self.inner.sales.get(sale_id)
            && cached.fetched.elapsed() < self.inner.config.sale_cache_ttl
        {
            return Ok(cached.row.clone());
        }
        let row = self.inner.store.sale(sale_id).await?;
        self.inner.sales.insert(
            sale_id.to_owned(),
            SaleInfo {
                row: row.clone(),
                fetched: Instant::now(),
            },
        );
        Ok(row)
    }

    /// Forgets a cached sale (after an admin change).
    pub fn forget_sale(&self, sale_id: &str) {
        self.inner.sales.remove(sale_id);
    }

    /// The sold-out signal says the sale is sold out now (without this replica's own sighting).
    pub(crate) fn sold_out_now(&self, sale_id: &str) -> bool {
        self.inner.sold_out.is_sold_out(sale_id)
    }

    fn sold_out_in_memory(&self, sale_id: &str) -> bool {
        self.inner.sold_out.is_sold_out(sale_id)
            && self
                .inner
                .sold_out_seen
                .get(sale_id)
                .is_some_and(|seen| seen.elapsed() < self.inner.config.sold_out_ttl)
    }

    /// True when SOLD_OUT may be answered from memory: the sale is sold out and this buyer's
    /// key made no reservation in it. A retry of a purchase the buyer made goes on to the
    /// inventory, which answers it as the first time, on every replica and at any moment.
    async fn sold_out_for(&self, sale_id: &str, user_id: &str, key: &str) -> bool {
        if !self.sold_out_in_memory(sale_id) {
            return false;
        }
        if key.is_empty() {
            return true;
        }
        let Some(episode) = self.inner.sold_out.sold_out_episode(sale_id) else {
            return false;
        };
        match self.key_set(sale_id, episode).await {
            Some(keys) => !keys.contains(&flashsale_proto::sale::key_fingerprint(user_id, key)),
            None => false,
        }
    }

    /// The sale's key fingerprints as of this sold-out spell, read once per spell; `None` when
    /// they cannot be had (too many, or the inventory did not answer: then ask it each time).
    async fn key_set(
        &self,
        sale_id: &str,
        episode: u64,
    ) -> Option<Arc<std::collections::HashSet<u64>>> {
        let known = |gateway: &Self| {
            gateway
                .inner
                .key_sets
                .get(sale_id)
                .filter(|k| k.episode == episode)
                .map(|k| k.fingerprints.clone())
        };
        if let Some(keys) = known(self) {
            return keys;
        }
        let gate = self
            .inner
            .key_reads
            .entry(sale_id.to_owned())
            .or_default()
            .clone();
        let _one = gate.lock().await;
        if let Some(keys) = known(self) {
            return keys;
        }
        let read = self
            .inner
            .inventory
            .clone()
            .key_fingerprints(pb::KeyFingerprintsRequest {
                sale_id: sale_id.to_owned(),
                limit: MAX_KEY_FINGERPRINTS,
            })
            .await;
        let fingerprints = match read {
            Ok(found) => {
                let found = found.into_inner();
                found
                    .complete
                    .then(|| Arc::new(found.fingerprints.into_iter().collect()))
            }
            Err(status) => {
                tracing::debug!(sale_id, error = %status, "key fingerprints not read");
                return None;
            }
        };
        self.inner.key_sets.insert(
            sale_id.to_owned(),
            KeySet {
                episode,
                fingerprints: fingerprints.clone(),
            },
        );
        fingerprints
    }

    pub(crate) fn observe_stock(&self, sale_id: &str, available: u64) {
        let sold_out = available == 0;
        self.inner.sold_out.observe(sale_id, sold_out);
        if sold_out {
            self.inner
                .sold_out_seen
                .insert(sale_id.to_owned(), Instant::now());
        }
    }

    fn admission(&self, sale_id: &str) -> Admission {
        if let Some(a) = self.inner.admission.get(sale_id) {
            return a.clone();
        }
        let gateway = self.clone();
        let stack = ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(self.inner.config.max_in_flight_per_sale)
            .service_fn(move |job: Job| {
                let gateway = gateway.clone();
                async move {
                    gateway
                        .reserve_and_publish(job)
                        .await
                        .map_err(BoxError::from)
                }
            });
        self.inner
            .admission
            .entry(sale_id.to_owned())
            .or_insert_with(|| BoxCloneSyncService::new(stack))
            .clone()
    }

    /// Buys for `caller` (see the module docs for the path).
    pub async fn purchase(
        &self,
        caller: &Caller,
        request: pb::PurchaseRequest,
    ) -> Result<pb::PurchaseAccepted, Error> {
        rules::sale_id(&request.sale_id)?;
        let sale_id = request.sale_id.clone();
        let started = Instant::now();
        let outcome = self.purchase_inner(caller, request).await;
        let label = match &outcome {
            Ok(_) => "accepted".to_owned(),
            Err(e) => e.reason_name().to_ascii_lowercase(),
        };
        // Only a sale this replica knows gets counters and a metric label of its own: a made-up
        // sale id must cost nothing that lasts.
        let known =
            self.inner.sales.contains_key(&sale_id) || self.inner.sold_out.is_sold_out(&sale_id);
        let sale_label = if known {
            self.count(&sale_id, &outcome);
            sale_id.as_str()
        } else {
            UNKNOWN_SALE
        };
        crate::metrics::purchase(sale_label, &label, started.elapsed().as_secs_f64());
        outcome
    }

    async fn purchase_inner(
        &self,
        caller: &Caller,
        request: pb::PurchaseRequest,
    ) -> Result<pb::PurchaseAccepted, Error> {
        rules::idempotency_key(&request.idempotency_key)?;
        let quantity = if request.quantity == 0 {
            1
        } else {
            request.quantity
        };
        if self
            .sold_out_for(&request.sale_id, &caller.user_id, &request.idempotency_key)
            .await
        {
            return Err(self.sold_out(&request.sale_id));
        }
        let sale = Arc::new(self.sale(&request.sale_id).await?);
        if crate::sales::room_settings(&sale).is_some() {
            self.spend_purchase_token(
                &sale.sale_id,
                &caller.user_id,
                &request.purchase_token,
                &request.idempotency_key,
            )
            .await?;
        }
        let job = Job {
            sale,
            user_id: caller.user_id.clone(),
            quantity,
            idempotency_key: request.idempotency_key,
        };
        let mut admission = self.admission(&request.sale_id);
        // Load shedding: a full stack answers at once instead of queuing.
        let ready = admission
            .ready()
            .await
            .map_err(|e| unbox(e, &request.sale_id))?;
        ready
            .call(job)
            .await
            .map_err(|e| unbox(e, &request.sale_id))
    }

    /// Reserve, publish, mark queued, answer (see the module docs). The buyer hears
    /// "accepted" only once the inventory knows the stream holds the order event, so no expiry
    /// and no compensation can free the unit of an accepted purchase.
    async fn reserve_and_publish(&self, job: Job) -> Result<pb::PurchaseAccepted, Error> {
        let sale = &job.sale;
        let (reservation, duplicate) = self.reserve(&job).await?;
        let accepted = accepted_answer(sale, &reservation, duplicate);
        if duplicate {
            match replay(&reservation) {
                Replay::Answer => return Ok(accepted),
                Replay::Failed => {
                    return Err(Error::PurchaseFailed {
                        order_id: reservation.reservation_id,
                    });
                }
                // The first attempt may have died before its publish, or be publishing now:
                // publish again (JetStream and the consumer drop the copy).
                Replay::Publish => {}
            }
        }
        let event = order_event(sale, &job.user_id, &reservation, &accepted);
        if let Err(publish_error) = flashsale_orders::stream::publish_order(
            &self.inner.js,
            &self.inner.stream.subject_prefix,
            &event,
        )
        .await
        {
            crate::metrics::backend_error("nats");
            // Only the attempt that made the reservation compensates: a retry's failed publish
            // says nothing of the first attempt's, which may have reached the stream. A hold
            // nobody queued expires by itself.
            if !duplicate {
                self.compensate(&sale.sale_id, &event.order_id, &publish_error)
                    .await;
            }
            return Err(Error::QueueUnavailable(publish_error.to_string()));
        }
        self.mark_queued(&sale.sale_id, &event.order_id).await?;
        Ok(accepted)
    }

    /// `Inventory.Reserve`; every outcome but a reservation becomes the buyer's refusal.
    async fn reserve(&self, job: &Job) -> Result<(pb::Reservation, bool), Error> {
        let sale = &job.sale;
        let reserved = self
            .inner
            .inventory
            .clone()
            .reserve(pb::ReserveRequest {
                sale_id: sale.sale_id.clone(),
                user_id: job.user_id.clone(),
                quantity: job.quantity,
                idempotency_key: job.idempotency_key.clone(),
            })
            .await
            .map_err(|status| match status.code() {
                // The sale is in Postgres (it was just read) but not in Redis: lost with a
                // Redis restart, not yet restored. Not a refusal: nothing was decided.
                tonic::Code::NotFound => Error::StockUnavailable(sale.sale_id.clone()),
                _ => Error::Upstream(status),
            })?
            .into_inner();
        self.observe_stock(&sale.sale_id, reserved.available);
        match pb::ReserveOutcome::try_from(reserved.outcome) {
            Ok(pb::ReserveOutcome::Reserved) => {}
            Ok(pb::ReserveOutcome::SoldOut) => {
                self.close_room(sale).await;
                return Err(self.sold_out(&sale.sale_id));
            }
            Ok(pb::ReserveOutcome::UserLimit) => {
                return Err(Error::UserLimit(sale.sale_id.clone()));
            }
            Ok(pb::ReserveOutcome::NotActive) => {
                return Err(Error::NotActive(sale.sale_id.clone()));
            }
            Ok(pb::ReserveOutcome::KeyReused) => return Err(Error::KeyReused),
            _ => {
                return Err(Error::invalid(
                    "quantity",
                    "is over the sale's per-user limit",
                ));
            }
        }
        let reservation = reserved.reservation.ok_or_else(|| {
            Error::Upstream(tonic::Status::internal("RESERVED without a reservation"))
        })?;
        Ok((reservation, reserved.duplicate))
    }

    fn sold_out(&self, sale_id: &str) -> Error {
        Error::SoldOut {
            sale_id: sale_id.to_owned(),
            retry_after: self.inner.config.sold_out_ttl.max(Duration::from_secs(1)),
        }
    }

    /// The publish failed: return the units (`Release(PUBLISH_FAILED)`). The inventory
    /// refuses it for a reservation a retry has queued meanwhile.
    async fn compensate(&self, sale_id: &str, order_id: &str, error: &impl std::fmt::Display) {
        tracing::warn!(order_id, %error, "publish failed; releasing the reservation");
        let released = self
            .inner
            .inventory
            .clone()
            .release(pb::ReleaseRequest {
                sale_id: sale_id.to_owned(),
                reservation_id: order_id.to_owned(),
                reason: pb::ReleaseReason::PublishFailed as i32,
            })
            .await;
        if let Err(e) = released {
            // The hold expires by itself; the sweeper returns the units.
            tracing::warn!(order_id, error = %e, "compensating release failed; the hold will expire");
        }
    }

    /// `Inventory.MarkQueued`: the stream holds the event. When the mark fails (the hold had
    /// passed and its units went to others, or Redis is away) the outcome is unknown, not a
    /// refusal: the event is in the stream, and its order is honoured if stock comes back or a
    /// repair admits it. The buyer hears UNAVAILABLE and may retry with the same key.
    async fn mark_queued(&self, sale_id: &str, order_id: &str) -> Result<(), Error> {
        self.inner
            .inventory
            .clone()
            .mark_queued(pb::MarkQueuedRequest {
                sale_id: sale_id.to_owned(),
                reservation_id: order_id.to_owned(),
            })
            .await
            .map(drop)
            .map_err(|status| {
                tracing::warn!(order_id, error = %status, "queued but not marked");
                Error::QueueUnavailable(format!(
                    "the purchase could not be confirmed: {}",
                    status.message()
                ))
            })
    }

    /// A sale and its stock, for buyers.
    pub async fn sale_view(&self, sale_id: &str) -> Result<pb::SaleView, Error> {
        rules::sale_id(sale_id)?;
        let sale = self.sale(sale_id).await?;
        let stock = self
            .inner
            .inventory
            .clone()
            .get_stock(pb::GetStockRequest {
                sale_id: sale_id.to_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
            .ok();
        let sold_out = stock.as_ref().is_some_and(|s| s.available == 0);
        Ok(pb::SaleView {
            sale: Some(crate::sales::sale_pb(&sale)),
            stock,
            sold_out,
        })
    }

    /// The caller's order (another buyer's is NOT_FOUND).
    pub async fn order(&self, caller: &Caller, order_id: &str) -> Result<pb::Order, Error> {
        let order = self.any_order(order_id).await?;
        if order.user_id != caller.user_id {
            return Err(Error::OrderNotFound(order_id.to_owned()));
        }
        Ok(order)
    }

    async fn any_order(&self, order_id: &str) -> Result<pb::Order, Error> {
        rules::text_id("order_id", order_id)?;
        let order = self
            .inner
            .orders
            .clone()
            .get_order(pb::GetOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => Error::OrderNotFound(order_id.to_owned()),
                _ => Error::Upstream(status),
            })?
            .into_inner();
        Ok(order)
    }

    /// Follows the caller's order to its final status, waiting a little for a just-accepted
    /// order to be persisted.
    pub async fn watch(
        &self,
        caller: &Caller,
        order_id: &str,
    ) -> Result<tonic::codec::Streaming<pb::Order>, Error> {
        let deadline = Instant::now() + self.inner.config.watch_wait;
        let mut pause = flashsale_runtime::backoff::Backoff::new(
            Duration::from_millis(25),
            Duration::from_millis(500),
        );
        loop {
            match self.any_order(order_id).await {
                Ok(order) if order.user_id == caller.user_id => break,
                // Someone else's order: not found, without waiting for it.
                Ok(_) => return Err(Error::OrderNotFound(order_id.to_owned())),
                Err(Error::OrderNotFound(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(pause.next_pause()).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self
            .inner
            .orders
            .clone()
            .watch_order(pb::WatchOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await
            .map_err(Error::Upstream)?
            .into_inner())
    }

    /// Sales by start time, a page at a time.
    pub async fn list_sales(
        &self,
        request: pb::ListSalesRequest,
    ) -> Result<pb::ListSalesResponse, Error> {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let size = match request.page_size {
            0 => 50,
            n if n <= 200 => n,
            n => return Err(Error::invalid("page_size", format!("{n} is above 200"))),
        };
        let wanted = match pb::SaleState::try_from(request.state) {
            Ok(pb::SaleState::Unspecified) => None,
            Ok(state) => Some(state),
            Err(_) => {
                return Err(Error::invalid(
                    "state",
                    format!("{} is not a SaleState", request.state),
                ));
            }
        };
        let bad_token = || Error::invalid("page_token", "is not a token this service issued");
        let mut after = match request.page_token.as_str() {
            "" => None,
            token => {
                let raw =
                    String::from_utf8(URL_SAFE_NO_PAD.decode(token).map_err(|_| bad_token())?)
                        .map_err(|_| bad_token())?;
                let (starts, id) = raw.split_once(':').ok_or_else(bad_token)?;
                Some((
                    flashsale_orders::convert::utc(starts.parse().map_err(|_| bad_token())?),
                    id.to_owned(),
                ))
            }
        };
        let now = flashsale_proto::time::now_ms();
        let read = u64::from(size) * 2;
        let mut sales: Vec<pb::Sale> = Vec::new();
        let mut next_page_token = String::new();
        // The state depends on the clock, so it is filtered after reading; read until the page
        // fills or the table ends.
        'pages: loop {
            let batch = self.inner.store.list_sales(read, after.clone()).await?;
            let exhausted = (batch.len() as u64) < read;
            for sale in batch {
                after = Some((sale.starts_at, sale.sale_id.clone()));
                if wanted.is_some_and(|w| crate::sales::state(&sale, now) != w) {
                    continue;
                }
                if sales.len() == size as usize {
                    let last = &sales[sales.len() - 1];
                    let last_starts = last
                        .starts_at
                        .as_ref()
                        .and_then(unix_ms)
                        .unwrap_or_default();
                    next_page_token =
                        URL_SAFE_NO_PAD.encode(format!("{last_starts}:{}", last.sale_id));
                    break 'pages;
                }
                sales.push(crate::sales::sale_pb(&sale));
            }
            if exhausted {
                break;
            }
        }
        Ok(pb::ListSalesResponse {
            sales,
            next_page_token,
        })
    }
}

/// What a repeated idempotency key gets, from the state of the reservation it made.
#[derive(Debug, PartialEq, Eq)]
enum Replay {
    /// The original answer: the purchase was accepted (its order is queued, written, paid, or
    /// ended by its own lifecycle).
    Answer,
    /// The reservation is held but not known to be queued: publish (again) and mark it.
    Publish,
    /// The reservation was released before its order was queued (its publish failed, or its
    /// hold passed unqueued): the purchase was not confirmed, and the key is spent.
    Failed,
}

fn replay(reservation: &pb::Reservation) -> Replay {
    use pb::{ReleaseReason as Why, ReservationState as State};
    match State::try_from(reservation.state).unwrap_or_default() {
        State::Held if !reservation.queued => Replay::Publish,
        State::Released if !reservation.queued => {
            match Why::try_from(reservation.release_reason).unwrap_or_default() {
                Why::ReservationExpired | Why::PublishFailed => Replay::Failed,
                _ => Replay::Answer,
            }
        }
        _ => Replay::Answer,
    }
}

/// The answer a buyer gets for `reservation`, the same for every replay of its key.
fn accepted_answer(
    sale: &sales::Model,
    reservation: &pb::Reservation,
    duplicate: bool,
) -> pb::PurchaseAccepted {
    let created = created_ms(reservation);
    pb::PurchaseAccepted {
        order_id: reservation.reservation_id.clone(),
        status: pb::OrderStatus::PendingPayment as i32,
        pay_deadline: Some(timestamp(created + sale.payment_window_ms)),
        quantity: reservation.quantity,
        amount_minor: sale.unit_price_minor * i64::from(reservation.quantity),
        duplicate,
    }
}

fn created_ms(reservation: &pb::Reservation) -> i64 {
    reservation
        .created_at
        .as_ref()
        .and_then(unix_ms)
        .unwrap_or_default()
}

/// The order event for an accepted reservation.
fn order_event(
    sale: &sales::Model,
    user_id: &str,
    reservation: &pb::Reservation,
    accepted: &pb::PurchaseAccepted,
) -> pb::OrderRequested {
    pb::OrderRequested {
        order_id: reservation.reservation_id.clone(),
        sale_id: sale.sale_id.clone(),
        user_id: user_id.to_owned(),
        quantity: reservation.quantity,
        unit_price_minor: sale.unit_price_minor,
        currency: sale.currency.clone(),
        requested_at: Some(timestamp(created_ms(reservation))),
        pay_deadline: accepted.pay_deadline,
        idempotency_key: reservation.idempotency_key.clone(),
    }
}

/// The gateway's error inside an admission stack's box: shed load, or what the purchase failed
/// with.
fn unbox(error: BoxError, sale_id: &str) -> Error {
    if error.is::<tower::load_shed::error::Overloaded>() {
        return Error::Overloaded(sale_id.to_owned());
    }
    match error.downcast::<Error>() {
        Ok(e) => *e,
        Err(other) => Error::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use flashsale_runtime::status::{IntoStatus, to_status};
    use tonic::Code;

    use super::*;

    #[test]
    fn an_unexpected_error_in_the_admission_stack_is_internal_not_a_misconfiguration() {
        let shed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert_eq!(unbox(shed, "s").reason(), "OVERLOADED");
        let ours: BoxError = Box::new(Error::NotActive("s".into()));
        assert_eq!(unbox(ours, "s").reason(), "SALE_NOT_ACTIVE");
        let stranger: BoxError = Box::new(std::io::Error::other("a layer's own failure"));
        let status = to_status(&unbox(stranger, "s"));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            flashsale_runtime::status::reason_of(&status).as_deref(),
            Some("INTERNAL")
        );
        assert!(status.message().contains("a layer's own failure"));
    }
}
