//! The gateway's own model of what buyers ask and are answered, free of protobuf: the gRPC
//! adapter (`grpc.rs`) converts the wire messages to these and back.

use flashsale_orders::entity::sales;
use flashsale_proto::v1 as pb;

/// A purchase as the core takes it; the buyer is the verified caller, never a field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    /// The sale.
    pub sale_id: String,
    /// Units, at least 1.
    pub quantity: u32,
    /// Names this purchase for retries (empty: none).
    pub idempotency_key: String,
    /// The waiting room's single-use admission, for a sale that has one (empty: none).
    pub purchase_token: String,
}

/// An accepted purchase: its order event is in the stream, its order starts PENDING_PAYMENT.
/// Every replay of its idempotency key gets the same answer (with `duplicate` set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The order's id (the reservation's).
    pub order_id: String,
    /// Pay before this (unix ms), or the order expires and its units return.
    pub pay_deadline_ms: i64,
    /// Units bought.
    pub quantity: u32,
    /// Price of the order, in minor units of the sale's currency.
    pub amount_minor: i64,
    /// True when this answer replays an earlier purchase with the same key.
    pub duplicate: bool,
}

/// Where a page of sales starts: after the sale with this start time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last sale's start (unix ms).
    pub starts_at_ms: i64,
    /// The last sale's id.
    pub sale_id: String,
}

/// Most sales one page may ask for.
pub const MAX_PAGE_SIZE: u32 = 200;
/// Sales per page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// One ListSales call: a page of sales by start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SalesQuery {
    /// 1..=[`MAX_PAGE_SIZE`].
    pub page_size: u32,
    /// Only sales in this state now (`None`: every sale).
    pub state: Option<pb::SaleState>,
    /// Continue after this sale (`None`: from the first).
    pub after: Option<Cursor>,
}

/// A page of sales, and where the next one starts (`None` when this is the last).
#[derive(Debug, Clone, PartialEq)]
pub struct SalesPage {
    /// The sales, by start time then id.
    pub sales: Vec<sales::Model>,
    /// Where the next page starts.
    pub next: Option<Cursor>,
}

/// A sale as buyers see it, with its stock when the inventory answered.
#[derive(Debug, Clone, PartialEq)]
pub struct SaleView {
    /// The sale.
    pub sale: sales::Model,
    /// Its stock figures (`None` when the inventory did not answer).
    pub stock: Option<pb::StockLevel>,
}

impl SaleView {
    /// True when the stock figures say nothing is left.
    pub fn sold_out(&self) -> bool {
        self.stock.as_ref().is_some_and(|s| s.available == 0)
    }
}
