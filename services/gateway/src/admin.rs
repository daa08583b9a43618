//! Sale administration: create, end, figures, and reconciliation of Redis, JetStream and
//! Postgres.

use std::{
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use flashsale_orders::{
    convert::ms,
    entity::{
        orders::{self, Status},
        sales as sales_entity,
    },
};
use flashsale_proto::{
    rules,
    time::timestamp,
    v1::{self as pb},
};

use flashsale_runtime::status::reason_of;

use crate::{Error, Gateway, sales};

/// Longest Reconcile --repair waits for a sale's queued events to be written (at most half the
/// call's deadline, so the caller hears STREAM_NOT_DRAINED and retries instead of timing out).
const DRAIN_WAIT: Duration = Duration::from_secs(15);

impl Gateway {
    /// `Inventory.LoadSale`; with `refresh_only`, a sale Redis lost is left for the repair.
    async fn load_into_inventory(
        &self,
        sale: &pb::Sale,
        refresh_only: bool,
    ) -> Result<pb::LoadSaleResponse, tonic::Status> {
        Ok(self
            .parts
            .clients
            .inventory
            .clone()
            .load_sale(pb::LoadSaleRequest {
                sale: Some(sale.clone()),
                refresh_only,
            })
            .await?
            .into_inner())
    }

    /// Writes a new sale (validated by [`sales::new_sale`]) to Postgres, the source of truth,
    /// and warms the inventory.
    pub async fn create_sale(
        &self,
        row: sales_entity::Model,
    ) -> Result<sales_entity::Model, Error> {
        self.check_room(&row)?;
        let row = self.parts.clients.store.create_sale(row).await?;
        self.load_into_inventory(&sales::sale_pb(&row), false)
            .await
            .map_err(Error::Upstream)?;
        self.open_room(&row).await?;
        tracing::info!(sale_id = %row.sale_id, stock = row.stock, "sale created");
        Ok(row)
    }

    /// Ends a sale now; its orders keep their lifecycle.
    pub async fn end_sale(&self, sale_id: &str) -> Result<sales_entity::Model, Error> {
        rules::sale_id(sale_id)?;
        let row = self.parts.clients.store.end_sale(sale_id).await?;
        self.forget_sale(sale_id);
        match self.load_into_inventory(&sales::sale_pb(&row), true).await {
            Ok(_) => {}
            // Redis lost the sale: it stays out until `Reconcile --repair` rebuilds it, ended,
            // with its orders (the orders whose commits wait for that keep waiting).
            Err(status) if status.code() == tonic::Code::NotFound => {
                tracing::warn!(
                    sale_id,
                    "sale ended while Redis lacks it; repair it to restore its stock"
                );
            }
            Err(status) => return Err(Error::Upstream(status)),
        }
        Ok(row)
    }

    /// Stock, this replica's purchase counts, and orders by status.
    pub async fn sale_stats(&self, sale_id: &str) -> Result<pb::SaleStats, Error> {
        rules::sale_id(sale_id)?;
        self.sale(sale_id).await?;
        let stock = self.stock(sale_id).await?;
        let totals = self.parts.clients.store.sale_totals(sale_id).await?;
        let counters = self.counters(sale_id);
        Ok(pb::SaleStats {
            sale_id: sale_id.to_owned(),
            stock,
            rejected_by_reason: counters
                .rejected
                .iter()
                .map(|e| ((*e.key()).to_owned(), e.value().load(Ordering::Relaxed)))
                .collect(),
            orders_by_status: totals
                .orders
                .iter()
                .map(|(status, n)| (status.as_str().to_owned(), *n))
                .collect(),
            accepted: counters.accepted.load(Ordering::Relaxed),
        })
    }

    /// The sale's stock from the inventory; `None` when Redis does not hold the sale.
    pub(crate) async fn stock(&self, sale_id: &str) -> Result<Option<pb::StockLevel>, Error> {
        match self
            .parts
            .clients
            .inventory
            .clone()
            .get_stock(pb::GetStockRequest {
                sale_id: sale_id.to_owned(),
            })
            .await
        {
            Ok(stock) => Ok(Some(stock.into_inner())),
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Error::Upstream(status)),
        }
    }

    /// Compares Redis with Postgres and the stream; with `repair`, rebuilds Redis from Postgres
    /// once the sale's queued events are written, again until no order changed under the
    /// rebuild. A sale on sale that Redis holds is refused (`SALE_ACTIVE`): end it first.
    pub async fn reconcile(
        &self,
        sale_id: &str,
        repair: bool,
    ) -> Result<pb::ReconcileReport, Error> {
        rules::sale_id(sale_id)?;
        let sale = self.parts.clients.store.sale(sale_id).await?;
        let redis = self.stock(sale_id).await?;
        let totals = self.parts.clients.store.sale_totals(sale_id).await?;
        let (pg_held, pg_sold) = (
            totals.units(Status::PendingPayment),
            totals.units(Status::Paid),
        );
        let pending = flashsale_orders::stream::pending(
            &self.parts.clients.js,
            &self.parts.clients.stream,
            Some(sale_id),
        )
        .await?;
        let mut discrepancies = Vec::new();
        match &redis {
            None => discrepancies
                .push("the sale is missing from Redis (it restarted empty?)".to_owned()),
            Some(stock) => {
                if stock.available + stock.held + stock.sold != stock.total {
                    discrepancies.push(format!(
                        "Redis counters do not add up: {} + {} + {} != {}",
                        stock.available, stock.held, stock.sold, stock.total
                    ));
                }
                if stock.sold != pg_sold {
                    discrepancies.push(format!(
                        "Redis has {} units sold, Postgres {} paid",
                        stock.sold, pg_sold
                    ));
                }
                if stock.held < pg_held {
                    discrepancies.push(format!(
                        "Redis holds {} units but Postgres has {} pending",
                        stock.held, pg_held
                    ));
                }
                if stock.held > pg_held && pending == 0 {
                    discrepancies.push(format!(
                        "Redis holds {} units more than pending orders and nothing is queued (holds not yet expired or lost orders)",
                        stock.held - pg_held
                    ));
                }
            }
        }
        let mut report = pb::ReconcileReport {
            sale_id: sale_id.to_owned(),
            redis,
            postgres_held: pg_held,
            postgres_sold: pg_sold,
            stream_pending: pending,
            discrepancies,
            repaired: false,
            redis_after: None,
        };
        if !repair {
            return Ok(report);
        }
        // A sale on sale that Redis holds is not rebuilt under its buyers' feet (and a bucketed
        // rebuild is not even atomic across its buckets). One Redis lost is rebuilt at once,
        // once: nothing can be reserved, committed or paid while it is missing, and releases
        // wait for it. A sale off sale is rebuilt again until no order changed under the
        // rebuild.
        let now = flashsale_proto::time::now_ms();
        let active = sales::state(&sale, now) == pb::SaleState::Active;
        if report.redis.is_some() && active {
            return Err(Error::SaleActive(sale_id.to_owned()));
        }
        report.redis_after = Some(self.repair(&sale, active).await?);
        report.repaired = true;
        Ok(report)
    }
}

/// What a repair read: whether Redis held the sale, then (the stream drained) its orders.
struct Reading {
    seen: pb::SalePresence,
    orders: Vec<orders::Model>,
}

impl Gateway {
    /// Rebuilds Redis from Postgres (see `reconcile`). Every reading asks Redis whether it holds
    /// the sale, waits for the sale's queued events to become orders, then reads the orders; a
    /// rebuild that finds Redis changed since (REDIS_CHANGED) reads again. A sale off sale is
    /// rebuilt until a reading equals the one the last rebuild was made from (at most
    /// [`REBUILD_ROUNDS`] rebuilds): an order that changed between a reading and its rebuild
    /// would otherwise stay rebuilt as it was.
    async fn repair(
        &self,
        sale: &sales_entity::Model,
        active: bool,
    ) -> Result<pb::StockLevel, Error> {
        let sale_id = sale.sale_id.as_str();
        let deadline = Instant::now() + DRAIN_WAIT.min(self.parts.request_timeout / 2);
        let mut last: Option<(Vec<orders::Model>, pb::StockLevel)> = None;
        for _ in 0..REBUILD_ROUNDS {
            let reading = self.read_for_repair(sale_id, deadline).await?;
            if active && reading.seen == pb::SalePresence::SalePresent {
                return Err(Error::SaleActive(sale_id.to_owned()));
            }
            if let Some((orders, after)) = last.take() {
                if same_orders(&orders, &reading.orders) {
                    return Ok(after);
                }
                tracing::info!(
                    sale_id,
                    "orders changed during the rebuild; rebuilding again"
                );
            }
            match self.rebuild_from(sale, &reading).await {
                Ok(after) if active => return Ok(after),
                Ok(after) => last = Some((reading.orders, after)),
                Err(Error::Upstream(status))
                    if reason_of(&status).as_deref() == Some("REDIS_CHANGED") =>
                {
                    tracing::info!(
                        sale_id,
                        "Redis changed since the orders were read; reading again"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::RepairUnsettled(sale_id.to_owned()))
    }

    /// One reading of a repair: Redis's presence first, then the drain, then the orders, so
    /// that an order accepted before Redis was lost is among them.
    async fn read_for_repair(&self, sale_id: &str, deadline: Instant) -> Result<Reading, Error> {
        let seen = match self.stock(sale_id).await? {
            Some(_) => pb::SalePresence::SalePresent,
            None => pb::SalePresence::SaleMissing,
        };
        self.wait_for_drain(sale_id, deadline).await?;
        let orders = self.parts.clients.store.sale_orders(sale_id).await?;
        Ok(Reading { seen, orders })
    }

    /// Queued events become orders first: otherwise their units would be missing from the
    /// rebuild (and could be sold twice). Waits until `deadline` (at most half the call's).
    async fn wait_for_drain(&self, sale_id: &str, deadline: Instant) -> Result<(), Error> {
        loop {
            let pending = flashsale_orders::stream::pending(
                &self.parts.clients.js,
                &self.parts.clients.stream,
                Some(sale_id),
            )
            .await?;
            if pending == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::StreamNotDrained {
                    sale_id: sale_id.to_owned(),
                    pending,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn rebuild_from(
        &self,
        sale: &sales_entity::Model,
        reading: &Reading,
    ) -> Result<pb::StockLevel, Error> {
        let (given, refused) = admit(sale, &reading.orders, reading.seen);
        if refused > 0 {
            tracing::warn!(
                sale_id = %sale.sale_id,
                refused,
                "orders written while Redis had lost the sale do not fit the stock; they will be marked lost"
            );
        }
        let after = self
            .parts
            .clients
            .inventory
            .clone()
            .rebuild(pb::RebuildRequest {
                sale: Some(sales::sale_pb(sale)),
                reservations: given,
                seen: reading.seen as i32,
            })
            .await
            .map_err(Error::Upstream)?
            .into_inner();
        tracing::info!(
            sale_id = %sale.sale_id,
            held = after.held,
            sold = after.sold,
            "Redis rebuilt from Postgres"
        );
        Ok(after)
    }
}

/// Most rebuilds one repair makes while orders keep changing under it.
const REBUILD_ROUNDS: usize = 5;

/// The same orders in the same states (what a rebuild is made from).
fn same_orders(a: &[orders::Model], b: &[orders::Model]) -> bool {
    fn key(orders: &[orders::Model]) -> std::collections::BTreeSet<(&str, &str, Option<u8>)> {
        orders
            .iter()
            .map(|o| {
                let pending = o.inventory_pending.map(|p| p as u8);
                (o.order_id.as_str(), o.status.as_str(), pending)
            })
            .collect()
    }
    key(a) == key(b)
}

/// The reservations a rebuild is given, and how many orders it refused.
/// - Closed orders (cancelled, expired) come back as released reservations: no units, but
///   their idempotency keys keep answering with the original order.
/// - Orders whose commit went through come back as they are, all of them (more than the stock
///   is corruption, and the rebuild refuses it).
/// - Orders whose commit is still pending: while Redis holds the sale, its own reservations
///   decide them (the rebuild keeps what it is not given). When Redis lost the sale, nobody can
///   check their holds: they are taken oldest first while the stock and the buyer's limit
///   allow (a hold that expired and was sold again must not be sold twice); the rest stay out
///   of Redis, and their commits then find no reservation and are marked lost.
fn admit(
    sale: &sales_entity::Model,
    orders: &[orders::Model],
    seen: pb::SalePresence,
) -> (Vec<pb::Reservation>, usize) {
    let undecided = |o: &&orders::Model| {
        o.status == Status::PendingPayment
            && o.inventory_pending == Some(orders::InventoryAction::Commit)
    };
    let mut given: Vec<pb::Reservation> = orders
        .iter()
        .filter(|o| !undecided(o))
        .map(reservation_of)
        .collect();
    let mut waiting: Vec<&orders::Model> = orders.iter().filter(undecided).collect();
    if seen == pb::SalePresence::SalePresent {
        return (given, 0);
    }
    waiting.sort_by(|a, b| (a.created_at, &a.order_id).cmp(&(b.created_at, &b.order_id)));
    let holds = |r: &pb::Reservation| r.state != pb::ReservationState::Released as i32;
    let mut units: i64 = given
        .iter()
        .filter(|r| holds(r))
        .map(|r| i64::from(r.quantity))
        .sum();
    let mut per_user: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for r in given.iter().filter(|r| holds(r)) {
        *per_user.entry(r.user_id.clone()).or_default() += i64::from(r.quantity);
    }
    let mut refused = 0;
    for order in waiting {
        let quantity = i64::from(order.quantity);
        let user = per_user.entry(order.user_id.clone()).or_default();
        if units + quantity <= sale.stock && *user + quantity <= i64::from(sale.per_user_limit) {
            units += quantity;
            *user += quantity;
            given.push(reservation_of(order));
        } else {
            refused += 1;
        }
    }
    (given, refused)
}

/// An order as the rebuild takes it: COMMITTED (pending payment), CONFIRMED (paid), or
/// RELEASED (closed; a lost one as its hold's expiry, so its key answers PURCHASE_FAILED).
fn reservation_of(order: &orders::Model) -> pb::Reservation {
    use pb::{ReleaseReason as Why, ReservationState as State};
    let lost = order.status_reason.as_deref() == Some("RESERVATION_LOST");
    let (state, why) = match order.status {
        Status::PendingPayment => (State::Committed, Why::Unspecified),
        Status::Paid => (State::Confirmed, Why::Unspecified),
        Status::Cancelled => (State::Released, Why::Cancelled),
        Status::Expired if lost => (State::Released, Why::ReservationExpired),
        Status::Expired => (State::Released, Why::PaymentExpired),
    };
    pb::Reservation {
        reservation_id: order.order_id.clone(),
        sale_id: order.sale_id.clone(),
        user_id: order.user_id.clone(),
        quantity: order.quantity as u32,
        state: state as i32,
        created_at: Some(timestamp(ms(order.created_at))),
        expires_at: (state == State::Committed).then(|| timestamp(ms(order.pay_deadline))),
        idempotency_key: order.idempotency_key.clone(),
        queued: !lost,
        release_reason: why as i32,
    }
}
