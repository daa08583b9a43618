//! `sales`: the source of truth for a sale's definition. Redis holds a working copy of the
//! fields the inventory needs; reconciliation rebuilds it from here.

use sea_orm::entity::prelude::*;

/// One sale.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sales")]
pub struct Model {
    /// The sale's id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub sale_id: String,
    /// Display name.
    pub name: String,
    /// Units for sale.
    pub stock: i64,
    /// Most units one buyer may hold and own.
    pub per_user_limit: i32,
    /// Price of one unit in minor currency units.
    pub unit_price_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Buying opens.
    pub starts_at: DateTimeUtc,
    /// Buying closes (moved to the end time when an admin ends the sale early).
    pub ends_at: DateTimeUtc,
    /// Reservation hold, in milliseconds.
    pub reservation_hold_ms: i64,
    /// Time to pay once ordered, in milliseconds.
    pub payment_window_ms: i64,
    /// Set when an admin ended the sale early.
    pub ended_at: Option<DateTimeUtc>,
    /// When the row was written.
    pub created_at: DateTimeUtc,
    /// Stock buckets in the inventory (1 = the whole sale in one Redis slot).
    pub stock_buckets: i32,
    /// Waiting room: admissions per second, in thousandths (None: no waiting room).
    pub waiting_room_rate_milli: Option<i64>,
    /// Waiting room: most admitted buyers who have not bought yet.
    pub waiting_room_cap: Option<i32>,
    /// Waiting room: how long an admitted buyer has to buy, in milliseconds.
    pub waiting_room_window_ms: Option<i64>,
}

/// No relations are navigated from code.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
