//! The order pipeline's one error type and its gRPC mapping.

use std::time::Duration;

use flashsale_proto::rules::IdError;
use flashsale_runtime::IntoStatus;
use tonic::Code;

/// Everything that can go wrong in the order pipeline.
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
    /// No such order (or it belongs to someone else).
    #[error("order {0} not found")]
    OrderNotFound(String),
    /// No such sale.
    #[error("sale {0} not found")]
    SaleNotFound(String),
    /// A sale with this id exists already.
    #[error("sale {0} already exists")]
    SaleExists(String),
    /// The order is not in a state that allows the call.
    #[error("order {order_id} is {status}: {reason}")]
    Conflict {
        /// The order.
        order_id: String,
        /// Its status.
        status: &'static str,
        /// Why the call does not apply, as a stable reason (e.g. `ORDER_EXPIRED`).
        reason: &'static str,
    },
    /// The order exists but its stock is not confirmed held yet; retry shortly.
    #[error("order {0} is still being recorded; retry shortly")]
    NotReady(String),
    /// Postgres failed or is unreachable.
    #[error("postgres: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// NATS / JetStream failed or is unreachable.
    #[error("nats: {0}")]
    Nats(String),
    /// The inventory failed or is unreachable.
    #[error("inventory: {0}")]
    Inventory(tonic::Status),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        Self::Nats(e.to_string())
    }
}

impl IntoStatus for Error {
    fn code(&self) -> Code {
        match self {
            Self::InvalidId(_) | Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::OrderNotFound(_) | Self::SaleNotFound(_) => Code::NotFound,
            Self::SaleExists(_) => Code::AlreadyExists,
            Self::Conflict { .. } => Code::FailedPrecondition,
            Self::NotReady(_) | Self::Database(_) | Self::Nats(_) => Code::Unavailable,
            Self::Inventory(status) => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded => Code::Unavailable,
                _ => Code::Internal,
            },
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidId(_) | Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::OrderNotFound(_) => "ORDER_NOT_FOUND",
            Self::SaleNotFound(_) => "SALE_NOT_FOUND",
            Self::SaleExists(_) => "SALE_EXISTS",
            Self::Conflict { reason, .. } => reason,
            Self::NotReady(_) => "ORDER_NOT_READY",
            Self::Database(_) => "POSTGRES_UNAVAILABLE",
            Self::Nats(_) => "NATS_UNAVAILABLE",
            Self::Inventory(_) => "INVENTORY_UNAVAILABLE",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        (self.code() == Code::Unavailable).then_some(Duration::from_secs(1))
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::InvalidArgument { field, .. } => vec![("field", (*field).to_owned())],
            Self::InvalidId(e) => vec![("field", e.field.to_owned())],
            Self::Conflict { status, .. } => vec![("status", (*status).to_owned())],
            _ => Vec::new(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        flashsale_runtime::to_status(&error)
    }
}
