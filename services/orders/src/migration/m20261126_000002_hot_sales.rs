//! Hot sales: `sales.stock_buckets`, how many stock buckets the inventory splits a sale into
//! (1 for every sale created before buckets existed), and the optional waiting room (rate in
//! thousandths of an admission per second, active cap, admission window; all NULL = none).

use sea_orm_migration::prelude::*;

/// Adds the columns.
#[derive(Debug, DeriveMigrationName)]
pub(super) struct Migration;

const UP: &str = r#"
ALTER TABLE sales
    ADD COLUMN stock_buckets integer NOT NULL DEFAULT 1
        CHECK (stock_buckets BETWEEN 1 AND 64 AND stock_buckets <= stock),
    ADD COLUMN waiting_room_rate_milli bigint CHECK (waiting_room_rate_milli > 0),
    ADD COLUMN waiting_room_cap integer CHECK (waiting_room_cap > 0),
    ADD COLUMN waiting_room_window_ms bigint CHECK (waiting_room_window_ms > 0),
    ADD CONSTRAINT waiting_room_whole CHECK (
        (waiting_room_rate_milli IS NULL) = (waiting_room_cap IS NULL)
        AND (waiting_room_cap IS NULL) = (waiting_room_window_ms IS NULL));
"#;

const DOWN: &str = "ALTER TABLE sales DROP CONSTRAINT waiting_room_whole, \
                    DROP COLUMN waiting_room_window_ms, DROP COLUMN waiting_room_cap, \
                    DROP COLUMN waiting_room_rate_milli, DROP COLUMN stock_buckets";

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
