//! The inventory's one error type and its gRPC mapping.

use std::time::Duration;

use flashsale_proto::rules::IdError;
use flashsale_runtime::IntoStatus;
use tonic::Code;

use crate::model::{Reservation, ReservationState};

/// Everything that can go wrong in the inventory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An identifier breaks the rules.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// Another input breaks a rule.
    #[error("{field} {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The sale is not loaded.
    #[error("sale {0} is not loaded")]
    SaleNotFound(String),
    /// No such reservation in this sale.
    #[error("reservation {reservation_id} does not exist in sale {sale_id}")]
    ReservationNotFound {
        /// The sale.
        sale_id: String,
        /// The reservation.
        reservation_id: String,
    },
    /// The transition does not apply to the reservation's state.
    #[error("cannot {action} reservation {}: it is {}{}", .reservation.reservation_id, .reservation.state.as_str(), released_why(.reservation))]
    Refused {
        /// What was attempted: `commit`, `confirm` or `release`.
        action: &'static str,
        /// The reservation as it is.
        reservation: Box<Reservation>,
    },
    /// LoadSale asked to change the stock of a loaded sale.
    #[error("sale {sale_id} is loaded with stock {loaded}; it cannot change to {requested}")]
    StockFixed {
        /// The sale.
        sale_id: String,
        /// Stock in Redis.
        loaded: u64,
        /// Stock asked for.
        requested: u64,
    },
    /// A rebuild would hold or sell more units than the sale has.
    #[error(
        "sale {sale_id}: the orders hold {units} units but the stock is {stock}; nothing changed"
    )]
    Oversold {
        /// The sale.
        sale_id: String,
        /// Units the orders hold or sold.
        units: u64,
        /// The sale's stock.
        stock: u64,
    },
    /// Redis failed or is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    /// Redis did not answer in time.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    /// Redis answered something the scripts never send.
    #[error("unexpected answer from redis: {0}")]
    Protocol(String),
    /// LoadSale asked to change how many stock buckets a loaded sale has.
    #[error(
        "sale {sale_id} is loaded with {loaded} stock buckets; it cannot change to {requested}"
    )]
    BucketsFixed {
        /// The sale.
        sale_id: String,
        /// Buckets in Redis.
        loaded: u32,
        /// Buckets asked for.
        requested: u32,
    },
    /// The replicas did not confirm a write in time; the write may or may not survive a
    /// failover (a retry with the same idempotency key meets it if it does).
    #[error("redis replicas did not confirm the write within {0:?}")]
    NotReplicated(Duration),
    /// Stock kept moving between buckets while a reservation looked for it.
    #[error("sale {0}: stock kept moving between buckets; try again")]
    Contended(String),
    /// A rebuild's caller read the orders while Redis held the sale and Redis lost it since, or
    /// the other way round: the reading cannot be trusted, nothing changed.
    #[error(
        "sale {0}: Redis lost the sale, or got it back, since the orders were read; read them again"
    )]
    RedisChanged(String),
}

fn released_why(reservation: &Reservation) -> String {
    reservation
        .release_reason
        .map(|r| format!(" ({})", r.as_str()))
        .unwrap_or_default()
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// True when the error means Redis is unreachable (retrying later may help).
    pub fn is_unavailable(&self) -> bool {
        self.code() == Code::Unavailable
    }
}

impl IntoStatus for Error {
    fn code(&self) -> Code {
        use fred::error::ErrorKind;
        match self {
            Self::InvalidId(_) | Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::SaleNotFound(_) | Self::ReservationNotFound { .. } => Code::NotFound,
            Self::Refused { .. }
            | Self::StockFixed { .. }
            | Self::BucketsFixed { .. }
            | Self::Oversold { .. } => Code::FailedPrecondition,
            Self::Timeout(_) | Self::NotReplicated(_) => Code::Unavailable,
            Self::Contended(_) | Self::RedisChanged(_) => Code::Aborted,
            Self::Redis(e) => match e.kind() {
                ErrorKind::IO
                | ErrorKind::Timeout
                | ErrorKind::Canceled
                | ErrorKind::Cluster
                | ErrorKind::Routing
                | ErrorKind::Backpressure
                | ErrorKind::Auth => Code::Unavailable,
                _ => Code::Internal,
            },
            Self::Protocol(_) => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidId(_) | Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::SaleNotFound(_) => "SALE_NOT_FOUND",
            Self::ReservationNotFound { .. } => "RESERVATION_NOT_FOUND",
            Self::Refused { reservation, .. } => match reservation.state {
                ReservationState::Confirmed => "RESERVATION_CONFIRMED",
                ReservationState::Released => match reservation.release_reason {
                    Some(crate::ReleaseReason::ReservationExpired) => "RESERVATION_EXPIRED",
                    _ => "RESERVATION_RELEASED",
                },
                ReservationState::Held | ReservationState::Committed => "RESERVATION_ACTIVE",
            },
            Self::StockFixed { .. } => "SALE_STOCK_FIXED",
            Self::BucketsFixed { .. } => "SALE_BUCKETS_FIXED",
            Self::NotReplicated(_) => "REDIS_NOT_REPLICATED",
            Self::Contended(_) => "STOCK_CONTENDED",
            Self::RedisChanged(_) => "REDIS_CHANGED",
            Self::Oversold { .. } => "OVERSOLD",
            Self::Redis(_) | Self::Timeout(_) => match self.code() {
                Code::Unavailable => "REDIS_UNAVAILABLE",
                _ => "REDIS_ERROR",
            },
            Self::Protocol(_) => "REDIS_PROTOCOL",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self.code() {
            Code::Unavailable => Some(Duration::from_secs(1)),
            Code::Aborted => Some(Duration::from_millis(50)),
            _ => None,
        }
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::InvalidArgument { field, .. } => vec![("field", (*field).to_owned())],
            Self::InvalidId(e) => vec![("field", e.field.to_owned())],
            Self::Refused { reservation, .. } => {
                vec![("state", reservation.state.as_str().to_owned())]
            }
            _ => Vec::new(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        flashsale_runtime::to_status(&error)
    }
}
