//! The inventory's domain types, free of Redis and gRPC.

use std::time::Duration;

use crate::Error;

pub use flashsale_proto::sale::{MAX_BUCKETS, MAX_FINGERPRINTS, MAX_STOCK, key_fingerprint};

/// Shortest reservation hold.
pub const MIN_HOLD: Duration = Duration::from_secs(1);
/// Longest reservation hold.
pub const MAX_HOLD: Duration = Duration::from_secs(3600);
/// Reservation hold when a sale does not say.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(60);

/// What the inventory needs to know of a sale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleSpec {
    /// The sale.
    pub sale_id: String,
    /// Units for sale, 1..=[`MAX_STOCK`]; fixed once loaded.
    pub stock: u64,
    /// Most units one buyer may hold and own together, 1..=stock.
    pub per_user_limit: u32,
    /// Buying opens (Unix ms).
    pub starts_at_ms: i64,
    /// Buying closes (Unix ms), after `starts_at_ms`.
    pub ends_at_ms: i64,
    /// How long a reservation is held before its order must be persisted.
    pub reservation_hold: Duration,
    /// Stock buckets, 1..=[`MAX_BUCKETS`] and at most `stock`; fixed once loaded. 1 keeps the
    /// whole sale in one hash slot; more spread a hot item over several Redis Cluster masters
    /// (see [`crate::buckets`]).
    pub stock_buckets: u32,
}

impl SaleSpec {
    /// Checks the spec's rules; the error names the field.
    pub fn validate(&self) -> Result<(), Error> {
        flashsale_proto::rules::sale_id(&self.sale_id)?;
        if !(1..=MAX_STOCK).contains(&self.stock) {
            return Err(Error::invalid(
                "stock",
                format!("{} is outside 1..={MAX_STOCK}", self.stock),
            ));
        }
        if self.per_user_limit == 0 || u64::from(self.per_user_limit) > self.stock {
            return Err(Error::invalid(
                "per_user_limit",
                format!(
                    "{} is outside 1..=stock ({})",
                    self.per_user_limit, self.stock
                ),
            ));
        }
        if self.ends_at_ms <= self.starts_at_ms {
            return Err(Error::invalid("ends_at", "must be after starts_at"));
        }
        if self.stock_buckets == 0
            || self.stock_buckets > MAX_BUCKETS
            || u64::from(self.stock_buckets) > self.stock
        {
            return Err(Error::invalid(
                "stock_buckets",
                format!(
                    "{} is outside 1..={MAX_BUCKETS} or above the stock",
                    self.stock_buckets
                ),
            ));
        }
        if !(MIN_HOLD..=MAX_HOLD).contains(&self.reservation_hold) {
            return Err(Error::invalid(
                "reservation_hold",
                format!("{:?} is outside 1s..=1h", self.reservation_hold),
            ));
        }
        Ok(())
    }
}

/// A request to reserve units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReserveRequest {
    /// The sale.
    pub sale_id: String,
    /// The buyer.
    pub user_id: String,
    /// Units wanted, 1..=the sale's per-user limit.
    pub quantity: u32,
    /// Makes retries safe; empty means none.
    pub idempotency_key: String,
}

impl ReserveRequest {
    /// Checks ids and quantity; the per-user limit is checked by the store.
    pub fn validate(&self) -> Result<(), Error> {
        flashsale_proto::rules::sale_id(&self.sale_id)?;
        flashsale_proto::rules::text_id("user_id", &self.user_id)?;
        flashsale_proto::rules::idempotency_key(&self.idempotency_key)?;
        if self.quantity == 0 {
            return Err(Error::invalid("quantity", "must be at least 1"));
        }
        Ok(())
    }
}

/// What a Reserve call decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Units are reserved; `duplicate` when an earlier call with the same idempotency key
    /// reserved them (the reservation is shown in its current state).
    Reserved {
        /// The reservation.
        reservation: Reservation,
        /// True for an idempotent replay.
        duplicate: bool,
    },
    /// Not enough units available.
    SoldOut,
    /// The buyer's held and sold units plus this request would pass the limit.
    UserLimit,
    /// Outside the sale's window.
    NotActive,
    /// More units than the per-user limit in one request.
    QuantityOverLimit,
    /// The idempotency key made an earlier reservation of another quantity.
    KeyReused,
}

/// The answer to Reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    /// What was decided.
    pub outcome: Outcome,
    /// Units available after the call.
    pub available: u64,
}

/// A reservation's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReservationState {
    /// Stock taken; no order yet.
    Held,
    /// The order is persisted; held until the payment deadline.
    Committed,
    /// Paid. Final.
    Confirmed,
    /// Returned to stock. Final.
    Released,
}

impl ReservationState {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "HELD" => Self::Held,
            "COMMITTED" => Self::Committed,
            "CONFIRMED" => Self::Confirmed,
            "RELEASED" => Self::Released,
            _ => return None,
        })
    }

    /// Upper-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "HELD",
            Self::Committed => "COMMITTED",
            Self::Confirmed => "CONFIRMED",
            Self::Released => "RELEASED",
        }
    }

    /// True while the reservation holds stock (HELD or COMMITTED).
    pub fn holds_stock(self) -> bool {
        matches!(self, Self::Held | Self::Committed)
    }
}

/// What a rebuild's caller saw of the sale in Redis when it read the orders it rebuilds from
/// ([`crate::Inventory::rebuild`] refuses if Redis changed since).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SalePresence {
    /// Redis held the sale.
    Present,
    /// Redis did not (it restarted empty).
    Missing,
}

impl SalePresence {
    /// The name `rebuild.lua` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Present => "PRESENT",
            Self::Missing => "MISSING",
        }
    }
}

/// Why a reservation is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseReason {
    /// No order claimed it within the hold.
    ReservationExpired,
    /// The order's payment deadline passed.
    PaymentExpired,
    /// The buyer cancelled.
    Cancelled,
    /// The purchase could not be queued (compensation).
    PublishFailed,
    /// An operator released it.
    Admin,
}

impl ReleaseReason {
    /// Upper-case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReservationExpired => "RESERVATION_EXPIRED",
            Self::PaymentExpired => "PAYMENT_EXPIRED",
            Self::Cancelled => "CANCELLED",
            Self::PublishFailed => "PUBLISH_FAILED",
            Self::Admin => "ADMIN",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "RESERVATION_EXPIRED" => Self::ReservationExpired,
            "PAYMENT_EXPIRED" => Self::PaymentExpired,
            "CANCELLED" => Self::Cancelled,
            "PUBLISH_FAILED" => Self::PublishFailed,
            "ADMIN" => Self::Admin,
            _ => return None,
        })
    }
}

/// A claim on units of a sale's stock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// Its id (and the order's id).
    pub reservation_id: String,
    /// The sale.
    pub sale_id: String,
    /// The buyer.
    pub user_id: String,
    /// Units.
    pub quantity: u32,
    /// Current state.
    pub state: ReservationState,
    /// When it was made (Unix ms, Redis clock).
    pub created_at_ms: i64,
    /// HELD: when it expires; COMMITTED: the payment deadline; otherwise `None`.
    pub expires_at_ms: Option<i64>,
    /// The idempotency key it was made with; empty if none.
    pub idempotency_key: String,
    /// Why it was released, when RELEASED.
    pub release_reason: Option<ReleaseReason>,
    /// Its order event is in the stream ([`crate::Inventory::mark_queued`]): only the order's
    /// lifecycle may release it, never its hold or a compensation.
    pub queued: bool,
}

/// The result of Commit, Confirm or Release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The reservation after the call.
    pub reservation: Reservation,
    /// False when it was already in the target state (an idempotent repeat).
    pub changed: bool,
}

/// A sale's stock. Always `available + held + sold == total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StockLevel {
    /// Units the sale started with.
    pub total: u64,
    /// Units a new reservation can take.
    pub available: u64,
    /// Units reserved or ordered, not paid.
    pub held: u64,
    /// Units paid for.
    pub sold: u64,
}

impl StockLevel {
    /// True when the figures add up.
    pub fn is_consistent(&self) -> bool {
        self.available + self.held + self.sold == self.total
    }
}

/// What LoadSale did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    /// True when the sale was new to Redis.
    pub created: bool,
    /// Its stock after the call.
    pub stock: StockLevel,
}

/// What one expiry pass over a sale did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expired {
    /// Reservations released by this pass.
    pub released: Vec<String>,
    /// Units available after the pass.
    pub available: u64,
    /// True when the sale is over and nothing is left to expire.
    pub finished: bool,
}

/// A full audit of one sale: the counters and what the reservation records add up to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Audit {
    /// The counters.
    pub stock: StockLevel,
    /// Units in HELD and COMMITTED records.
    pub held_by_records: u64,
    /// Units in CONFIRMED records.
    pub sold_by_records: u64,
    /// Per buyer: units held or sold according to the records.
    pub units_by_user: std::collections::HashMap<String, u64>,
    /// Per buyer: units held or sold according to the per-user counter.
    pub counted_by_user: std::collections::HashMap<String, u64>,
    /// Every reservation, in no particular order.
    pub reservations: Vec<Reservation>,
}

impl Audit {
    /// Everything that must hold: counters add up, records agree with counters, per-user counts
    /// agree with records. Returns the first violation found.
    pub fn check(&self) -> Result<(), String> {
        let s = &self.stock;
        if !s.is_consistent() {
            return Err(format!(
                "available {} + held {} + sold {} != total {}",
                s.available, s.held, s.sold, s.total
            ));
        }
        if s.held != self.held_by_records {
            return Err(format!(
                "held {} but records hold {}",
                s.held, self.held_by_records
            ));
        }
        if s.sold != self.sold_by_records {
            return Err(format!(
                "sold {} but records sold {}",
                s.sold, self.sold_by_records
            ));
        }
        if self.units_by_user != self.counted_by_user {
            return Err("per-user counters disagree with the reservation records".into());
        }
        Ok(())
    }
}

/// Most reservations one CommitMany call takes.
pub const MAX_COMMIT_BATCH: usize = 1000;

/// What committing one reservation did (see `Inventory::commit_many`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// HELD → COMMITTED.
    Committed,
    /// Already COMMITTED or CONFIRMED.
    Unchanged,
    /// Released on expiry (or a reported publish failure) and taken again.
    Revived,
    /// Released and could not be taken again.
    Refused,
    /// No such reservation.
    NotFound,
}

/// The result for one item of a CommitMany.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitResult {
    /// The reservation.
    pub reservation_id: String,
    /// What happened.
    pub outcome: CommitOutcome,
    /// Its state afterwards (`None` when not found).
    pub state: Option<ReservationState>,
    /// Why it was released, when it is RELEASED.
    pub release_reason: Option<ReleaseReason>,
}
