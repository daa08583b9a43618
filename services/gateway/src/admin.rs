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
            .inner
            .inventory
            .clone()
            .load_sale(pb::LoadSaleRequest {
                sale: Some(sale.clone()),
                refresh_only,
            })
            .await?
            .into_inner())
    }

    /// Validates, writes the sale to Postgres (the source of truth) and warms the inventory.
    pub async fn create_sale(&self, sale: &pb::Sale) -> Result<pb::Sale, Error> {
        let row = sales::new_sale(sale)?;
        self.check_room(&row)?;
        let row = self.inner.store.create_sale(row).await?;
        let created = sales::sale_pb(&row);
        self.load_into_inventory(&created, false)
            .await
            .map_err(Error::Upstream)?;
        self.open_room(&row).await?;
        tracing::info!(sale_id = %row.sale_id, stock = row.stock, "sale created");
        Ok(created)
    }

    /// Ends a sale now; its orders keep their lifecycle.
    pub async fn end_sale(&self, sale_id: &str) -> Result<pb::Sale, Error> {
        rules::sale_id(sale_id)?;
        let row = self.inner.store.end_sale(sale_id).await?;
        self.forget_sale(sale_id);
        let ended = sales::sale_pb(&row);
        match self.load_into_inventory(&ended, true).await {
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
        Ok(ended)
    }

    /// Stock, this replica's purchase counts, and orders by status.
    pub async fn sale_stats(&self, sale_id: &str) -> Result<pb::SaleStats, Error> {
        rules::sale_id(sale_id)?;
        self.sale(sale_id).await?;
        let stock = self.stock(sale_id).await?;
        let totals = self.inner.store.sale_totals(sale_id).await?;
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

    pub(crate) async fn stock(&self, sale_id: &str) -> Result<Option<pb::StockLevel>, Error> {
        match self
            .inner
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
        let sale = self.inner.store.sale(sale_id).await?;
        let redis = self.stock(sale_id).await?;
        let totals = self.inner.store.sale_totals(sale_id).await?;
        let (pg_held, pg_sold) = (
            totals.units(Status::PendingPayment),
            totals.units(Status::Paid),
        );
        let pending =
            flashsale_orders::stream::pending(&self.inner.js, &self.inner.stream, Some(sale_id))
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
        // A sale on sale that Redis holds is not rebuilt under its buyers' feet: a rebuild
        // replaces every record (and a bucketed one is not even atomic across its buckets).
        // One Redis lost is rebuilt at once, once: nothing can be reserved, committed or paid
        // while it is missing, and releases wait for it. A sale off sale is rebuilt again
        // until no order changed under the rebuild.
        let now = flashsale_proto::time::now_ms();
        let active = sales::state(&sale, now) == pb::SaleState::Active;
        if report.redis.is_some() && active {
            return Err(Error::SaleActive(sale_id.to_owned()));
        }
        self.wait_for_drain(sale_id, pending).await?;
        let after = if active {
            let orders = self.inner.store.live_orders(sale_id).await?;
            self.rebuild_from(&sale, orders).await?
        } else {
            self.rebuild_until_stable(&sale).await?
        };
        report.repaired = true;
        report.redis_after = Some(after);
        Ok(report)
    }
}

impl Gateway {
    /// Queued events become orders first: otherwise their units would be missing from the
    /// rebuild (and could be sold twice). Waits at most half the call's deadline.
    async fn wait_for_drain(&self, sale_id: &str, mut pending: u64) -> Result<(), Error> {
        let deadline = Instant::now() + DRAIN_WAIT.min(self.inner.request_timeout / 2);
        while pending > 0 {
            if Instant::now() > deadline {
                return Err(Error::StreamNotDrained {
                    sale_id: sale_id.to_owned(),
                    pending,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            pending = flashsale_orders::stream::pending(
                &self.inner.js,
                &self.inner.stream,
                Some(sale_id),
            )
            .await?;
        }
        Ok(())
    }

    /// Rebuilds Redis from a snapshot of the sale's live orders, then reads them again: an
    /// order that changed in between (written, paid, cancelled, expired) would be rebuilt as
    /// it was, so the rebuild is done again from the new snapshot, until a rebuild is
    /// bracketed by two equal snapshots (at most [`REBUILD_ROUNDS`] times). Only for a sale
    /// off sale: a later round must not replace reservations buyers made since the first.
    async fn rebuild_until_stable(
        &self,
        sale: &sales_entity::Model,
    ) -> Result<pb::StockLevel, Error> {
        let sale_id = sale.sale_id.as_str();
        let mut snapshot = self.inner.store.live_orders(sale_id).await?;
        for _ in 0..REBUILD_ROUNDS {
            let after = self.rebuild_from(sale, snapshot.clone()).await?;
            let now = self.inner.store.live_orders(sale_id).await?;
            if same_orders(&snapshot, &now) {
                return Ok(after);
            }
            tracing::info!(
                sale_id,
                "orders changed during the rebuild; rebuilding again"
            );
            snapshot = now;
        }
        Err(Error::RepairUnsettled(sale_id.to_owned()))
    }

    async fn rebuild_from(
        &self,
        sale: &sales_entity::Model,
        orders: Vec<orders::Model>,
    ) -> Result<pb::StockLevel, Error> {
        let (kept, waiting) = admit(sale, orders);
        if !waiting.is_empty() {
            tracing::warn!(
                sale_id = %sale.sale_id,
                refused = waiting.len(),
                "orders written while Redis had lost the sale do not fit the stock; they will be marked lost"
            );
        }
        let after = self
            .inner
            .inventory
            .clone()
            .rebuild(pb::RebuildRequest {
                sale: Some(sales::sale_pb(sale)),
                reservations: kept.iter().map(reservation_of).collect(),
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

/// Which live orders the rebuilt stock holds. Orders whose commit went through before Redis was
/// lost come first, all of them (more than the stock is corruption, and the rebuild refuses it).
/// Orders written since, whose holds nobody could check, are then taken oldest first while the
/// stock and the buyer's limit allow: a hold that expired and was sold again must not be sold
/// twice. The rest stay out of Redis; their commits then find no reservation and the order
/// pipeline marks them lost, as it does for any hold that expired before its order was written.
fn admit(
    sale: &flashsale_orders::entity::sales::Model,
    orders: Vec<orders::Model>,
) -> (Vec<orders::Model>, Vec<orders::Model>) {
    let (mut kept, mut undecided): (Vec<_>, Vec<_>) = orders
        .into_iter()
        .partition(|o| o.inventory_pending != Some(orders::InventoryAction::Commit));
    undecided.sort_by(|a, b| (a.created_at, &a.order_id).cmp(&(b.created_at, &b.order_id)));
    let mut units: i64 = kept.iter().map(|o| i64::from(o.quantity)).sum();
    let mut per_user: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    for order in &kept {
        *per_user.entry(order.user_id.clone()).or_default() += i64::from(order.quantity);
    }
    let mut refused = Vec::new();
    for order in undecided {
        let quantity = i64::from(order.quantity);
        let user = per_user.entry(order.user_id.clone()).or_default();
        if units + quantity <= sale.stock && *user + quantity <= i64::from(sale.per_user_limit) {
            units += quantity;
            *user += quantity;
            kept.push(order);
        } else {
            refused.push(order);
        }
    }
    (kept, refused)
}

fn reservation_of(order: &orders::Model) -> pb::Reservation {
    let paid = order.status == Status::Paid;
    pb::Reservation {
        reservation_id: order.order_id.clone(),
        sale_id: order.sale_id.clone(),
        user_id: order.user_id.clone(),
        quantity: order.quantity as u32,
        state: if paid {
            pb::ReservationState::Confirmed
        } else {
            pb::ReservationState::Committed
        } as i32,
        created_at: Some(timestamp(ms(order.created_at))),
        expires_at: (!paid).then(|| timestamp(ms(order.pay_deadline))),
        idempotency_key: order.idempotency_key.clone(),
        queued: true,
        release_reason: pb::ReleaseReason::Unspecified as i32,
    }
}
