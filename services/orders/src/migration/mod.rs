//! The Postgres schema, as SeaORM migrations (`flashsale migrate` runs them).

use sea_orm_migration::prelude::*;

mod m20261126_000001_sales_and_orders;
mod m20261126_000002_hot_sales;

/// Every migration, oldest first.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_sales_and_orders::Migration),
            Box::new(m20261126_000002_hot_sales::Migration),
        ]
    }
}

/// Runs one migration's SQL.
async fn execute(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    manager
        .get_connection()
        .execute_unprepared(sql)
        .await
        .map(drop)
}
