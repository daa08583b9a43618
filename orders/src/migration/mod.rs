//! The Postgres schema, as SeaORM migrations (`flashsale migrate` runs them).

use sea_orm_migration::prelude::*;

mod m20261126_000001_sales_and_orders;

/// Every migration, oldest first.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(m20261126_000001_sales_and_orders::Migration)]
    }
}
