//! `sales` and `orders`, with the indexes ListOrders, the expiry worker, the inventory retry
//! and reconciliation read through.

use sea_orm_migration::prelude::*;

/// Creates the two tables.
#[derive(Debug, DeriveMigrationName)]
pub(super) struct Migration;

const UP: &str = r#"
CREATE TABLE sales (
    sale_id             text PRIMARY KEY CHECK (length(sale_id) BETWEEN 1 AND 128),
    name                text NOT NULL,
    stock               bigint NOT NULL CHECK (stock > 0),
    per_user_limit      integer NOT NULL CHECK (per_user_limit > 0 AND per_user_limit <= stock),
    unit_price_minor    bigint NOT NULL CHECK (unit_price_minor >= 0),
    currency            char(3) NOT NULL,
    starts_at           timestamptz NOT NULL,
    ends_at             timestamptz NOT NULL CHECK (ends_at > starts_at),
    reservation_hold_ms bigint NOT NULL CHECK (reservation_hold_ms > 0),
    payment_window_ms   bigint NOT NULL CHECK (payment_window_ms > 0),
    ended_at            timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sales_by_start ON sales (starts_at, sale_id);

CREATE TABLE orders (
    order_id          text PRIMARY KEY CHECK (length(order_id) BETWEEN 1 AND 128),
    sale_id           text NOT NULL REFERENCES sales (sale_id),
    user_id           text NOT NULL,
    quantity          integer NOT NULL CHECK (quantity > 0),
    amount_minor      bigint NOT NULL CHECK (amount_minor >= 0),
    currency          char(3) NOT NULL,
    status            text NOT NULL
                      CHECK (status IN ('PENDING_PAYMENT', 'PAID', 'CANCELLED', 'EXPIRED')),
    status_reason     text,
    idempotency_key   text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL,
    pay_deadline      timestamptz NOT NULL,
    paid_at           timestamptz,
    payment_reference text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    persisted_at      timestamptz NOT NULL DEFAULT now(),
    inventory_pending text CHECK (inventory_pending IN ('COMMIT', 'CONFIRM', 'RELEASE')),
    inventory_attempt_at timestamptz,
    CHECK ((status = 'PAID') = (paid_at IS NOT NULL AND payment_reference IS NOT NULL))
);
-- ListOrders by buyer and by sale, newest first, keyset-paginated on (created_at, order_id).
CREATE INDEX orders_by_user ON orders (user_id, created_at DESC, order_id DESC);
CREATE INDEX orders_by_sale ON orders (sale_id, created_at DESC, order_id DESC);
-- Reconciliation: units per sale and status.
CREATE INDEX orders_by_sale_status ON orders (sale_id, status);
-- The expiry worker: only pending orders, by deadline.
CREATE INDEX orders_pending_deadline ON orders (pay_deadline) WHERE status = 'PENDING_PAYMENT';
-- The inventory retry: only rows with something left to tell.
CREATE INDEX orders_inventory_pending ON orders (inventory_attempt_at)
    WHERE inventory_pending IS NOT NULL;
"#;

const DOWN: &str = "DROP TABLE orders; DROP TABLE sales;";

#[allow(elided_lifetimes_in_paths)] // the trait's own signature elides it
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::execute(manager, UP).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        super::execute(manager, DOWN).await
    }
}
