//! `sales.stock_buckets`: how many stock buckets the inventory splits a sale into (1 for every
//! sale created before buckets existed).

use sea_orm_migration::prelude::*;

/// Adds the column.
#[derive(Debug, DeriveMigrationName)]
pub(super) struct Migration;

const UP: &str = "ALTER TABLE sales ADD COLUMN stock_buckets integer NOT NULL DEFAULT 1 \
                  CHECK (stock_buckets BETWEEN 1 AND 64 AND stock_buckets <= stock)";

const DOWN: &str = "ALTER TABLE sales DROP COLUMN stock_buckets";

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
