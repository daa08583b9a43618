//! [`OrderStore`]: sales and orders in Postgres through SeaORM. Every status change is a
//! compare-and-set `UPDATE … WHERE status = … RETURNING *`, so concurrent callers (a payment
//! racing the expiry worker, two replicas of the worker) have exactly one winner.

use std::{collections::HashSet, time::Duration};

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, Condition, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbBackend, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use sea_orm_migration::MigratorTrait;
use secrecy::ExposeSecret;

use crate::{
    Error,
    entity::{
        orders::{self, InventoryAction, Status},
        sales,
    },
    migration::Migrator,
};

/// The Postgres advisory lock key that serializes schema migrations ("fsmigr" in ASCII).
const MIGRATION_LOCK: i64 = 0x6673_6d69_6772;

/// Whose orders to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderFilter {
    /// One buyer's.
    User(String),
    /// One sale's.
    Sale(String),
}

/// A position in a newest-first order listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at` of the last order seen.
    pub created_at: DateTime<Utc>,
    /// Its id (ties on `created_at` are broken by id).
    pub order_id: String,
}

/// Units and orders of one sale, by status, as Postgres has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaleTotals {
    /// Orders per status.
    pub orders: Vec<(Status, u64)>,
    /// Units per status.
    pub units: Vec<(Status, u64)>,
}

impl SaleTotals {
    /// Units in orders of `status`.
    pub fn units(&self, status: Status) -> u64 {
        self.units
            .iter()
            .find(|(s, _)| *s == status)
            .map_or(0, |(_, n)| *n)
    }
}

/// Sales and orders in Postgres.
#[derive(Debug, Clone)]
pub struct OrderStore {
    db: DatabaseConnection,
}

impl OrderStore {
    /// A pool that connects on first use (a Postgres that is down does not stop start-up).
    /// Does not run migrations (see [`Self::migrate`]).
    pub async fn connect(
        config: &flashsale_runtime::config::PostgresConfig,
    ) -> Result<Self, Error> {
        let mut options = ConnectOptions::new(config.url.expose_secret().to_owned());
        options
            .max_connections(config.max_connections)
            .min_connections(1)
            .connect_timeout(config.connect_timeout)
            .acquire_timeout(config.connect_timeout)
            .connect_lazy(true)
            .sqlx_logging(false);
        Ok(Self {
            db: Database::connect(options).await?,
        })
    }

    /// Creates the configured database if it does not exist (for `flashsale up` on a fresh
    /// Postgres); connects to the server's `postgres` database to do it.
    pub async fn create_database_if_missing(
        config: &flashsale_runtime::config::PostgresConfig,
    ) -> Result<bool, Error> {
        let url = config.url.expose_secret();
        let (server, name) = url
            .rsplit_once('/')
            .filter(|(_, name)| !name.is_empty() && !name.contains('?'))
            .ok_or_else(|| Error::invalid("postgres.url", "must name a database"))?;
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(Error::invalid(
                "postgres.url",
                "the database name must be letters, digits or _",
            ));
        }
        let mut options = ConnectOptions::new(format!("{server}/postgres"));
        options
            .max_connections(1)
            .connect_timeout(config.connect_timeout)
            .sqlx_logging(false);
        let admin = Database::connect(options).await?;
        let exists = admin
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 FROM pg_database WHERE datname = $1",
                [name.into()],
            ))
            .await?
            .is_some();
        if !exists {
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await?;
        }
        let _ = admin.close().await;
        Ok(!exists)
    }

    /// A store over an existing connection.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// The connection, for queries this type does not offer.
    pub fn db(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Applies every pending migration.
    ///
    /// Safe to run from many processes at once (every orders and consumer pod migrates as it
    /// starts): the migrations run in one transaction holding a Postgres advisory lock, so the
    /// others wait, then find nothing left to do.
    pub async fn migrate(&self) -> Result<(), Error> {
        let txn = self.db.begin().await?;
        txn.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"))
            .await?;
        Migrator::up(&txn, None).await?;
        txn.commit().await?;
        Ok(())
    }

    // ---- sales ----

    /// Writes a new sale; ALREADY_EXISTS when the id is taken.
    pub async fn create_sale(&self, sale: sales::Model) -> Result<sales::Model, Error> {
        let id = sale.sale_id.clone();
        let active = sales::ActiveModel {
            sale_id: Set(sale.sale_id),
            name: Set(sale.name),
            stock: Set(sale.stock),
            per_user_limit: Set(sale.per_user_limit),
            unit_price_minor: Set(sale.unit_price_minor),
            currency: Set(sale.currency),
            starts_at: Set(sale.starts_at),
            ends_at: Set(sale.ends_at),
            reservation_hold_ms: Set(sale.reservation_hold_ms),
            payment_window_ms: Set(sale.payment_window_ms),
            ended_at: Set(None),
            created_at: Set(Utc::now()),
            stock_buckets: Set(sale.stock_buckets),
            waiting_room_rate_milli: Set(sale.waiting_room_rate_milli),
            waiting_room_cap: Set(sale.waiting_room_cap),
            waiting_room_window_ms: Set(sale.waiting_room_window_ms),
        };
        match sales::Entity::insert(active)
            .on_conflict_do_nothing()
            .exec_with_returning(&self.db)
            .await?
        {
            sea_orm::TryInsertResult::Inserted(model) => Ok(model),
            _ => Err(Error::SaleExists(id)),
        }
    }

    /// One sale.
    pub async fn sale(&self, sale_id: &str) -> Result<sales::Model, Error> {
        sales::Entity::find_by_id(sale_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| Error::SaleNotFound(sale_id.to_owned()))
    }

    /// Ends a sale now: its window closes (if still open) and `ended_at` is set. Idempotent.
    pub async fn end_sale(&self, sale_id: &str) -> Result<sales::Model, Error> {
        let updated = sales::Entity::update_many()
            .col_expr(sales::Column::EndedAt, Expr::current_timestamp())
            .col_expr(
                sales::Column::EndsAt,
                Expr::cust("LEAST(ends_at, GREATEST(now(), starts_at + interval '1 millisecond'))"),
            )
            .filter(sales::Column::SaleId.eq(sale_id))
            .filter(sales::Column::EndedAt.is_null())
            .exec_with_returning(&self.db)
            .await?;
        match updated.into_iter().next() {
            Some(sale) => Ok(sale),
            None => self.sale(sale_id).await,
        }
    }

    /// Sales by start time, `limit` after the cursor `(starts_at, sale_id)`.
    pub async fn list_sales(
        &self,
        limit: u64,
        after: Option<(DateTime<Utc>, String)>,
    ) -> Result<Vec<sales::Model>, Error> {
        let mut query = sales::Entity::find()
            .order_by_asc(sales::Column::StartsAt)
            .order_by_asc(sales::Column::SaleId)
            .limit(limit);
        if let Some((starts, id)) = after {
            query = query.filter(
                Condition::any()
                    .add(sales::Column::StartsAt.gt(starts))
                    .add(
                        Condition::all()
                            .add(sales::Column::StartsAt.eq(starts))
                            .add(sales::Column::SaleId.gt(id)),
                    ),
            );
        }
        Ok(query.all(&self.db).await?)
    }

    /// Which of `sale_ids` exist.
    pub async fn known_sales(&self, sale_ids: &[String]) -> Result<HashSet<String>, Error> {
        if sale_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let found = sales::Entity::find()
            .select_only()
            .column(sales::Column::SaleId)
            .filter(sales::Column::SaleId.is_in(sale_ids.iter().cloned()))
            .into_tuple::<String>()
            .all(&self.db)
            .await?;
        Ok(found.into_iter().collect())
    }

    // ---- orders ----

    /// Writes a batch in one transaction, skipping orders that exist. Returns the ids written
    /// by this call.
    pub async fn insert_batch(
        &self,
        batch: Vec<orders::ActiveModel>,
    ) -> Result<Vec<String>, Error> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.db.begin().await?;
        let inserted = match orders::Entity::insert_many(batch)
            .on_conflict_do_nothing()
            .exec_with_returning_keys(&txn)
            .await
        {
            Ok(sea_orm::TryInsertResult::Inserted(ids)) => ids,
            Ok(_) | Err(DbErr::RecordNotInserted) => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        txn.commit().await?;
        Ok(inserted)
    }

    /// One order.
    pub async fn order(&self, order_id: &str) -> Result<orders::Model, Error> {
        orders::Entity::find_by_id(order_id)
            .one(&self.db)
            .await?
            .ok_or_else(|| Error::OrderNotFound(order_id.to_owned()))
    }

    /// Orders newest first, `limit` after the cursor.
    pub async fn list_orders(
        &self,
        filter: &OrderFilter,
        status: Option<Status>,
        limit: u64,
        after: Option<&Cursor>,
    ) -> Result<Vec<orders::Model>, Error> {
        let mut query = orders::Entity::find()
            .order_by_desc(orders::Column::CreatedAt)
            .order_by_desc(orders::Column::OrderId)
            .limit(limit);
        query = match filter {
            OrderFilter::User(user) => query.filter(orders::Column::UserId.eq(user.as_str())),
            OrderFilter::Sale(sale) => query.filter(orders::Column::SaleId.eq(sale.as_str())),
        };
        if let Some(status) = status {
            query = query.filter(orders::Column::Status.eq(status));
        }
        if let Some(cursor) = after {
            query = query.filter(
                Condition::any()
                    .add(orders::Column::CreatedAt.lt(cursor.created_at))
                    .add(
                        Condition::all()
                            .add(orders::Column::CreatedAt.eq(cursor.created_at))
                            .add(orders::Column::OrderId.lt(cursor.order_id.as_str())),
                    ),
            );
        }
        Ok(query.all(&self.db).await?)
    }

    /// PENDING_PAYMENT → PAID, once. Returns the order and whether this call paid it (a repeat
    /// with the same reference returns the paid order unchanged).
    pub async fn pay(
        &self,
        order_id: &str,
        user_id: &str,
        reference: &str,
    ) -> Result<(orders::Model, bool), Error> {
        let paid = orders::Entity::update_many()
            .set(orders::ActiveModel {
                status: Set(Status::Paid),
                payment_reference: Set(Some(reference.to_owned())),
                inventory_pending: Set(Some(InventoryAction::Confirm)),
                ..Default::default()
            })
            .col_expr(orders::Column::PaidAt, Expr::current_timestamp())
            .col_expr(orders::Column::UpdatedAt, Expr::current_timestamp())
            .col_expr(
                orders::Column::InventoryAttemptAt,
                Expr::current_timestamp(),
            )
            .filter(orders::Column::OrderId.eq(order_id))
            .filter(orders::Column::UserId.eq(user_id))
            .filter(orders::Column::Status.eq(Status::PendingPayment))
            .filter(Expr::col(orders::Column::PayDeadline).gt(Expr::current_timestamp()))
            .filter(
                Condition::any()
                    .add(orders::Column::InventoryPending.is_null())
                    .add(orders::Column::InventoryPending.ne(InventoryAction::Commit)),
            )
            .exec_with_returning(&self.db)
            .await?;
        if let Some(order) = paid.into_iter().next() {
            return Ok((order, true));
        }
        let order = self.owned_order(order_id, user_id).await?;
        match order.status {
            Status::Paid if order.payment_reference.as_deref() == Some(reference) => {
                Ok((order, false))
            }
            Status::Paid => Err(conflict(&order, "ORDER_PAID")),
            Status::Cancelled => Err(conflict(&order, "ORDER_CANCELLED")),
            Status::Expired => Err(conflict(&order, "ORDER_EXPIRED")),
            Status::PendingPayment if order.inventory_pending == Some(InventoryAction::Commit) => {
                Err(Error::NotReady(order.order_id))
            }
            Status::PendingPayment => Err(conflict(&order, "PAYMENT_DEADLINE_PASSED")),
        }
    }

    /// PENDING_PAYMENT → CANCELLED. A repeat returns the cancelled order unchanged.
    pub async fn cancel(
        &self,
        order_id: &str,
        user_id: &str,
    ) -> Result<(orders::Model, bool), Error> {
        let cancelled = orders::Entity::update_many()
            .set(orders::ActiveModel {
                status: Set(Status::Cancelled),
                status_reason: Set(Some("CANCELLED_BY_BUYER".into())),
                inventory_pending: Set(Some(InventoryAction::Release)),
                ..Default::default()
            })
            .col_expr(orders::Column::UpdatedAt, Expr::current_timestamp())
            .col_expr(
                orders::Column::InventoryAttemptAt,
                Expr::current_timestamp(),
            )
            .filter(orders::Column::OrderId.eq(order_id))
            .filter(orders::Column::UserId.eq(user_id))
            .filter(orders::Column::Status.eq(Status::PendingPayment))
            .exec_with_returning(&self.db)
            .await?;
        if let Some(order) = cancelled.into_iter().next() {
            return Ok((order, true));
        }
        let order = self.owned_order(order_id, user_id).await?;
        match order.status {
            Status::Cancelled => Ok((order, false)),
            Status::Paid => Err(conflict(&order, "ORDER_PAID")),
            Status::Expired => Err(conflict(&order, "ORDER_EXPIRED")),
            Status::PendingPayment => Err(Error::Database(DbErr::Custom(
                "cancel lost a race it cannot lose".into(),
            ))),
        }
    }

    async fn owned_order(&self, order_id: &str, user_id: &str) -> Result<orders::Model, Error> {
        match self.order(order_id).await {
            Ok(order) if order.user_id == user_id => Ok(order),
            // Someone else's order is reported as missing: ids reveal nothing.
            Ok(_) | Err(Error::OrderNotFound(_)) => Err(Error::OrderNotFound(order_id.to_owned())),
            Err(e) => Err(e),
        }
    }

    /// PENDING_PAYMENT → EXPIRED for up to `limit` orders past their deadline. Replicas may run
    /// it at once: each row is taken by one of them (`FOR UPDATE SKIP LOCKED`).
    pub async fn expire_due(&self, limit: u64) -> Result<Vec<orders::Model>, Error> {
        let sql = "UPDATE orders SET status = 'EXPIRED', status_reason = 'PAYMENT_DEADLINE', \
                   updated_at = now(), inventory_pending = 'RELEASE', inventory_attempt_at = now() \
                   WHERE order_id IN (SELECT order_id FROM orders \
                       WHERE status = 'PENDING_PAYMENT' AND pay_deadline <= now() \
                       ORDER BY pay_deadline LIMIT $1 FOR UPDATE SKIP LOCKED) \
                   AND status = 'PENDING_PAYMENT' RETURNING *";
        self.raw_orders(sql, vec![(limit as i64).into()]).await
    }

    /// The order's units could not be held (its reservation expired and the stock went to
    /// someone else before the order was written): PENDING_PAYMENT → EXPIRED, only while its
    /// commit is still pending (another worker may have committed it meanwhile). The row then
    /// asks for a release: should a concurrent commit have revived the hold after all, its
    /// units go back to stock; otherwise the release changes nothing.
    pub async fn mark_lost(&self, order_id: &str) -> Result<Option<orders::Model>, Error> {
        let lost = orders::Entity::update_many()
            .set(orders::ActiveModel {
                status: Set(Status::Expired),
                status_reason: Set(Some("RESERVATION_LOST".into())),
                inventory_pending: Set(Some(InventoryAction::Release)),
                ..Default::default()
            })
            .col_expr(orders::Column::UpdatedAt, Expr::current_timestamp())
            .filter(orders::Column::OrderId.eq(order_id))
            .filter(orders::Column::Status.eq(Status::PendingPayment))
            .filter(orders::Column::InventoryPending.eq(InventoryAction::Commit))
            .exec_with_returning(&self.db)
            .await?;
        Ok(lost.into_iter().next())
    }

    /// Takes up to `limit` orders whose inventory action was last attempted more than `lease`
    /// ago, stamping the attempt (replicas skip rows another one holds).
    pub async fn claim_inventory_due(
        &self,
        limit: u64,
        lease: Duration,
    ) -> Result<Vec<orders::Model>, Error> {
        let sql = "UPDATE orders SET inventory_attempt_at = now() \
                   WHERE order_id IN (SELECT order_id FROM orders \
                       WHERE inventory_pending IS NOT NULL \
                       AND (inventory_attempt_at IS NULL \
                            OR inventory_attempt_at < now() - make_interval(secs => $2)) \
                       ORDER BY inventory_attempt_at NULLS FIRST LIMIT $1 FOR UPDATE SKIP LOCKED) \
                   RETURNING *";
        self.raw_orders(sql, vec![(limit as i64).into(), lease.as_secs_f64().into()])
            .await
    }

    /// Clears `action` once the inventory has done it (unless a newer action replaced it).
    pub async fn inventory_done(
        &self,
        order_id: &str,
        action: InventoryAction,
    ) -> Result<(), Error> {
        orders::Entity::update_many()
            .col_expr(
                orders::Column::InventoryPending,
                Expr::value(Option::<String>::None),
            )
            .filter(orders::Column::OrderId.eq(order_id))
            .filter(orders::Column::InventoryPending.eq(action))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// [`Self::inventory_done`] for many orders at once.
    pub async fn inventory_done_many(
        &self,
        order_ids: Vec<String>,
        action: InventoryAction,
    ) -> Result<(), Error> {
        if order_ids.is_empty() {
            return Ok(());
        }
        orders::Entity::update_many()
            .col_expr(
                orders::Column::InventoryPending,
                Expr::value(Option::<String>::None),
            )
            .filter(orders::Column::OrderId.is_in(order_ids))
            .filter(orders::Column::InventoryPending.eq(action))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Every order of a sale that holds or sold units (PENDING_PAYMENT or PAID), for
    /// reconciliation.
    pub async fn live_orders(&self, sale_id: &str) -> Result<Vec<orders::Model>, Error> {
        self.orders_of_sale(sale_id, true).await
    }

    /// Every order of one sale, closed ones too (a repair rebuilds their idempotency keys).
    pub async fn sale_orders(&self, sale_id: &str) -> Result<Vec<orders::Model>, Error> {
        self.orders_of_sale(sale_id, false).await
    }

    async fn orders_of_sale(
        &self,
        sale_id: &str,
        live_only: bool,
    ) -> Result<Vec<orders::Model>, Error> {
        let live = [Status::PendingPayment, Status::Paid];
        let mut query = orders::Entity::find().filter(orders::Column::SaleId.eq(sale_id));
        if live_only {
            query = query.filter(orders::Column::Status.is_in(live));
        }
        Ok(query.all(&self.db).await?)
    }

    /// Orders and units of one sale by status.
    pub async fn sale_totals(&self, sale_id: &str) -> Result<SaleTotals, Error> {
        #[derive(FromQueryResult)]
        struct Row {
            status: String,
            orders: i64,
            units: i64,
        }
        let rows = Row::find_by_statement(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT status, count(*) AS orders, COALESCE(sum(quantity), 0)::bigint AS units \
             FROM orders WHERE sale_id = $1 GROUP BY status",
            [sale_id.into()],
        ))
        .all(&self.db)
        .await?;
        let mut totals = SaleTotals::default();
        for row in rows {
            let status = match row.status.as_str() {
                "PENDING_PAYMENT" => Status::PendingPayment,
                "PAID" => Status::Paid,
                "CANCELLED" => Status::Cancelled,
                "EXPIRED" => Status::Expired,
                other => {
                    return Err(Error::Database(DbErr::Custom(format!(
                        "unknown status {other}"
                    ))));
                }
            };
            totals.orders.push((status, row.orders as u64));
            totals.units.push((status, row.units as u64));
        }
        Ok(totals)
    }

    async fn raw_orders(
        &self,
        sql: &str,
        values: Vec<sea_orm::Value>,
    ) -> Result<Vec<orders::Model>, Error> {
        Ok(orders::Entity::find()
            .from_raw_sql(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .all(&self.db)
            .await?)
    }

    /// True when Postgres answers.
    pub async fn ping(&self) -> bool {
        self.db.ping().await.is_ok()
    }

    /// Runs a statement (for tests and tools).
    pub async fn execute(&self, sql: &str) -> Result<u64, Error> {
        Ok(self.db.execute_unprepared(sql).await?.rows_affected())
    }
}

fn conflict(order: &orders::Model, reason: &'static str) -> Error {
    Error::Conflict {
        order_id: order.order_id.clone(),
        status: order.status.as_str(),
        reason,
    }
}
