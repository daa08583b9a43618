//! `orders`: one row per accepted purchase. The id is the reservation id, so a replayed event
//! can never make a second row.

use sea_orm::entity::prelude::*;

/// An order's lifecycle status, stored as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum Status {
    /// Waiting for payment; holds stock.
    #[sea_orm(string_value = "PENDING_PAYMENT")]
    PendingPayment,
    /// Paid. Final.
    #[sea_orm(string_value = "PAID")]
    Paid,
    /// Cancelled by the buyer. Final.
    #[sea_orm(string_value = "CANCELLED")]
    Cancelled,
    /// The payment deadline passed, or the stock was lost before the order was persisted. Final.
    #[sea_orm(string_value = "EXPIRED")]
    Expired,
}

impl Status {
    /// True for PAID, CANCELLED and EXPIRED.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::PendingPayment)
    }

    /// Upper-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PendingPayment => "PENDING_PAYMENT",
            Self::Paid => "PAID",
            Self::Cancelled => "CANCELLED",
            Self::Expired => "EXPIRED",
        }
    }
}

/// What the inventory still has to be told about an order (at-least-once, retried by the
/// lifecycle worker until it succeeds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum InventoryAction {
    /// Hold the units until the payment deadline.
    #[sea_orm(string_value = "COMMIT")]
    Commit,
    /// The units are sold.
    #[sea_orm(string_value = "CONFIRM")]
    Confirm,
    /// The units go back to stock.
    #[sea_orm(string_value = "RELEASE")]
    Release,
}

/// One order.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    /// The order's id (= the reservation id).
    #[sea_orm(primary_key, auto_increment = false)]
    pub order_id: String,
    /// The sale.
    pub sale_id: String,
    /// The buyer.
    pub user_id: String,
    /// Units bought.
    pub quantity: i32,
    /// Total price in minor currency units.
    pub amount_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// Lifecycle status.
    pub status: Status,
    /// Why a final status was reached when it is not obvious (e.g. `RESERVATION_LOST`).
    pub status_reason: Option<String>,
    /// The purchase's idempotency key; empty if none.
    pub idempotency_key: String,
    /// When the purchase was accepted (the reservation time).
    pub created_at: DateTimeUtc,
    /// Pay before this instant.
    pub pay_deadline: DateTimeUtc,
    /// When payment was recorded.
    pub paid_at: Option<DateTimeUtc>,
    /// The payment provider's reference.
    pub payment_reference: Option<String>,
    /// When the status last changed.
    pub updated_at: DateTimeUtc,
    /// When the row was written.
    pub persisted_at: DateTimeUtc,
    /// What the inventory still has to be told, if anything.
    pub inventory_pending: Option<InventoryAction>,
    /// When telling it was last attempted (a lease: retries wait a moment after it).
    pub inventory_attempt_at: Option<DateTimeUtc>,
}

/// No relations are navigated from code.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
