//! The gateway's one error type and its gRPC mapping. Every refusal a buyer can meet has its own
//! status and reason.

use std::time::Duration;

use flashsale_proto::rules::IdError;
use flashsale_runtime::IntoStatus;
use tonic::Code;

/// Everything the gateway can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No valid token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(&'static str),
    /// A valid token without the needed rights.
    #[error("permission denied: {0}")]
    PermissionDenied(&'static str),
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
    /// No such sale.
    #[error("sale {0} not found")]
    SaleNotFound(String),
    /// A sale with this id exists.
    #[error("sale {0} already exists")]
    SaleExists(String),
    /// No such order (or not the caller's).
    #[error("order {0} not found")]
    OrderNotFound(String),
    /// No stock left.
    #[error("sale {sale_id} is sold out")]
    SoldOut {
        /// The sale.
        sale_id: String,
        /// Stock may come back when holds expire.
        retry_after: Duration,
    },
    /// The buyer holds or bought as many as the sale allows.
    #[error("the per-user limit of sale {0} is reached")]
    UserLimit(String),
    /// Outside the sale's window.
    #[error("sale {0} is not active")]
    NotActive(String),
    /// Too many purchases of this sale in flight here; shed instead of queued.
    #[error("sale {0} is busy; retry shortly")]
    Overloaded(String),
    /// The idempotency key made a purchase that was not confirmed (its reservation was
    /// released before its order was queued): the key is spent; buy again with a new one.
    #[error(
        "the purchase made with this idempotency key was not confirmed (reservation {order_id} was released before its order was queued); buy again with a new key"
    )]
    PurchaseFailed {
        /// The reservation the key made.
        order_id: String,
    },
    /// The idempotency key was used for a purchase of another quantity.
    #[error(
        "this idempotency key was used for a purchase of another quantity; a key names one purchase"
    )]
    KeyReused,
    /// The sale exists but the inventory does not have its stock (Redis lost it and a repair
    /// has not restored it yet): nothing is decided; retry shortly.
    #[error("the stock of sale {0} is being restored; retry shortly")]
    StockUnavailable(String),
    /// The purchase could not be queued; its reservation was released.
    #[error("the order queue is unavailable: {0}")]
    QueueUnavailable(String),
    /// Reconcile --repair needs the sale's queued events written first.
    #[error("sale {sale_id} still has {pending} queued events; retry once they are written")]
    StreamNotDrained {
        /// The sale.
        sale_id: String,
        /// Events still queued.
        pending: u64,
    },
    /// Reconcile --repair of a sale on sale whose stock Redis holds.
    #[error(
        "sale {0} is on sale and Redis holds its stock: end it first to repair it (a sale Redis lost is repaired while on sale)"
    )]
    SaleActive(String),
    /// Reconcile --repair gave up: the sale's orders kept changing under every rebuild.
    #[error("sale {0}: orders kept changing during the repair; retry")]
    RepairUnsettled(String),
    /// The order pipeline failed (Postgres, NATS, the inventory, an order's state): reported
    /// with its own code and reason.
    #[error(transparent)]
    Orders(flashsale_orders::Error),
    /// The sale has no waiting room (or this gateway has no key to sign for one: it verifies
    /// RS256/ES256 tokens and `waiting_room_secret` is empty).
    #[error("sale {0} has no waiting room")]
    NoWaitingRoom(String),
    /// The sale has a waiting room and the purchase came without a purchase token.
    #[error(
        "sale {0} admits buyers through its waiting room: JoinQueue, then buy with the purchase token QueueStatus gives"
    )]
    PurchaseTokenRequired(String),
    /// The waiting room refused a ticket or purchase token, or failed.
    #[error("waiting room: {0}")]
    Queue(#[from] flashsale_limiter::waiting_room::RoomError),
    /// A service behind the gateway answered with an error, or could not be reached. Its own
    /// status is passed on when it carries a reason; one made by the transport (a refused
    /// connection, a deadline) gets the reason its code implies.
    #[error("a service behind the gateway: {}", .0.message())]
    Upstream(tonic::Status),
    /// The gateway is misconfigured.
    #[error("configuration: {0}")]
    Config(String),
    /// Something failed that no other variant foresees.
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// The reason a buyer-facing refusal is counted under.
    pub fn reason_name(&self) -> &'static str {
        self.reason()
    }
}

impl From<flashsale_orders::Error> for Error {
    fn from(e: flashsale_orders::Error) -> Self {
        match e {
            flashsale_orders::Error::SaleNotFound(id) => Self::SaleNotFound(id),
            flashsale_orders::Error::SaleExists(id) => Self::SaleExists(id),
            flashsale_orders::Error::OrderNotFound(id) => Self::OrderNotFound(id),
            flashsale_orders::Error::InvalidId(e) => Self::InvalidId(e),
            other => Self::Orders(other),
        }
    }
}

impl IntoStatus for Error {
    fn code(&self) -> Code {
        match self {
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::PermissionDenied(_) => Code::PermissionDenied,
            Self::InvalidId(_) | Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::SaleNotFound(_) | Self::OrderNotFound(_) => Code::NotFound,
            Self::SaleExists(_) => Code::AlreadyExists,
            Self::KeyReused => Code::InvalidArgument,
            Self::PurchaseFailed { .. } => Code::FailedPrecondition,
            Self::SoldOut { .. } | Self::UserLimit(_) | Self::Overloaded(_) => {
                Code::ResourceExhausted
            }
            Self::NotActive(_) | Self::StreamNotDrained { .. } | Self::SaleActive(_) => {
                Code::FailedPrecondition
            }
            Self::RepairUnsettled(_) => Code::Aborted,
            Self::NoWaitingRoom(_) | Self::PurchaseTokenRequired(_) => Code::FailedPrecondition,
            Self::Queue(e) => {
                use flashsale_limiter::waiting_room::RoomError as R;
                match e {
                    R::Invalid(_) => Code::InvalidArgument,
                    R::Refused { .. } => Code::PermissionDenied,
                    R::Used | R::NotAdmitted | R::Lapsed | R::NoRoom(_) => Code::FailedPrecondition,
                    R::SoldOut => Code::ResourceExhausted,
                    R::Redis(_) => Code::Unavailable,
                }
            }
            Self::QueueUnavailable(_) | Self::StockUnavailable(_) => Code::Unavailable,
            Self::Orders(e) => e.code(),
            Self::Upstream(status) => status.code(),
            Self::Config(_) | Self::Internal(_) => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::PermissionDenied(_) => "PERMISSION_DENIED",
            Self::InvalidId(_) | Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::SaleNotFound(_) => "SALE_NOT_FOUND",
            Self::SaleExists(_) => "SALE_EXISTS",
            Self::OrderNotFound(_) => "ORDER_NOT_FOUND",
            Self::SoldOut { .. } => "SOLD_OUT",
            Self::UserLimit(_) => "USER_LIMIT",
            Self::NotActive(_) => "SALE_NOT_ACTIVE",
            Self::Overloaded(_) => "OVERLOADED",
            Self::PurchaseFailed { .. } => "PURCHASE_FAILED",
            Self::KeyReused => "IDEMPOTENCY_KEY_REUSED",
            Self::QueueUnavailable(_) => "QUEUE_UNAVAILABLE",
            Self::StockUnavailable(_) => "STOCK_UNAVAILABLE",
            Self::StreamNotDrained { .. } => "STREAM_NOT_DRAINED",
            Self::SaleActive(_) => "SALE_ACTIVE",
            Self::RepairUnsettled(_) => "REPAIR_UNSETTLED",
            Self::Orders(e) => e.reason(),
            Self::NoWaitingRoom(_) => "NO_WAITING_ROOM",
            Self::PurchaseTokenRequired(_) => "PURCHASE_TOKEN_REQUIRED",
            Self::Queue(e) => {
                use flashsale_limiter::waiting_room::RoomError as R;
                match e {
                    R::Invalid(_) => "INVALID_ARGUMENT",
                    R::Refused { .. } => "QUEUE_TOKEN_REFUSED",
                    R::Used => "PURCHASE_TOKEN_USED",
                    R::NotAdmitted => "NOT_ADMITTED",
                    R::Lapsed => "ADMISSION_LAPSED",
                    R::NoRoom(_) => "NO_WAITING_ROOM",
                    R::SoldOut => "SOLD_OUT",
                    R::Redis(_) => "REDIS_UNAVAILABLE",
                }
            }
            Self::Upstream(status) => match status.code() {
                Code::InvalidArgument => "INVALID_ARGUMENT",
                Code::NotFound => "NOT_FOUND",
                Code::Unavailable | Code::DeadlineExceeded => "UNAVAILABLE",
                _ => "UPSTREAM_ERROR",
            },
            Self::Config(_) => "MISCONFIGURED",
            Self::Internal(_) => "INTERNAL",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::SoldOut { retry_after, .. } => Some(*retry_after),
            Self::Overloaded(_)
            | Self::QueueUnavailable(_)
            | Self::StockUnavailable(_)
            | Self::StreamNotDrained { .. }
            | Self::RepairUnsettled(_) => Some(Duration::from_secs(1)),
            Self::Queue(flashsale_limiter::waiting_room::RoomError::Redis(_)) => {
                Some(Duration::from_secs(1))
            }
            Self::Upstream(status)
                if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) =>
            {
                Some(Duration::from_secs(1))
            }
            Self::Orders(e) => e.retry_after(),
            _ => None,
        }
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::PurchaseFailed { order_id } => vec![("order_id", order_id.clone())],
            Self::InvalidArgument { field, .. } => vec![("field", (*field).to_owned())],
            Self::InvalidId(e) => vec![("field", e.field.to_owned())],
            Self::SoldOut { sale_id, .. }
            | Self::UserLimit(sale_id)
            | Self::NotActive(sale_id)
            | Self::Overloaded(sale_id) => {
                vec![("sale_id", sale_id.clone())]
            }
            Self::Orders(e) => e.details(),
            _ => Vec::new(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        match error {
            // Keep the upstream's own reason and details, when it gave them.
            Error::Upstream(status) if flashsale_runtime::status::reason_of(&status).is_some() => {
                status
            }
            other => flashsale_runtime::to_status(&other),
        }
    }
}

#[cfg(test)]
mod tests {
    use flashsale_runtime::status::{reason_of, to_status};
    use tonic::Code;

    use super::*;

    /// An orders-crate error keeps the code and reason it has in its own crate: a NATS, an
    /// inventory or a state failure is not reported as Postgres being down.
    #[test]
    fn an_orders_error_keeps_its_own_code_and_reason() {
        use flashsale_orders::Error as E;
        let cases = [
            (
                E::Nats("no route".into()),
                Code::Unavailable,
                "NATS_UNAVAILABLE",
            ),
            (
                E::Inventory(tonic::Status::unavailable("gone")),
                Code::Unavailable,
                "INVENTORY_UNAVAILABLE",
            ),
            (
                E::Conflict {
                    order_id: "o".into(),
                    status: "PAID",
                    reason: "ORDER_PAID",
                },
                Code::FailedPrecondition,
                "ORDER_PAID",
            ),
            (
                E::NotReady("o".into()),
                Code::Unavailable,
                "ORDER_NOT_READY",
            ),
            (
                E::InvalidArgument {
                    field: "page_size",
                    reason: "too big".into(),
                },
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (
                E::SaleNotFound("s".into()),
                Code::NotFound,
                "SALE_NOT_FOUND",
            ),
        ];
        for (source, code, reason) in cases {
            let text = source.to_string();
            let status = to_status(&Error::from(source));
            assert_eq!(
                (status.code(), reason_of(&status).as_deref()),
                (code, Some(reason)),
                "{text}"
            );
            assert!(status.message().contains(&text), "{status:?}");
        }
    }
}
