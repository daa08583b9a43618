//! The purchase path: where a buyer's `Purchase` enters the core ([`Gateway::purchase`]).
//!
//! The local sold-out view answers first (memory, no network) to every buyer whose
//! idempotency key made no reservation in the sale (`sold_out.rs`); then a sale with a waiting
//! room spends the buyer's purchase token (`queue.rs`); then the sale's admission stack (a
//! tower concurrency limit behind a load shedder) sheds what exceeds the in-flight bound; then
//! `Inventory.Reserve`, the JetStream publish keyed on the reservation id,
//! `Inventory.MarkQueued` (from then on only the order's lifecycle frees the unit), and the
//! answer. A publish that fails releases the reservation (only the attempt that made it) and
//! answers UNAVAILABLE.
//!
//! Idempotency keys (per sale and buyer) name one purchase: a repeat with the same quantity
//! gets the original answer whatever happened since (the order may have been paid or
//! expired: the order id tells); a repeat while the first attempt is still held publishes
//! again; a key whose purchase did not go through is spent (`PURCHASE_FAILED`); the same key
//! with another quantity is `INVALID_ARGUMENT IDEMPOTENCY_KEY_REUSED`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dashmap::DashMap;
use flashsale_orders::entity::sales;
use flashsale_proto::{
    rules,
    time::{timestamp, unix_ms},
    v1 as pb,
};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt, util::BoxCloneSyncService};

use crate::{
    Error, Gateway,
    auth::Caller,
    model::{Accepted, Purchase},
};

/// One purchase on its way through the admission stack.
#[derive(Debug, Clone)]
struct Job {
    sale: Arc<sales::Model>,
    user_id: String,
    quantity: u32,
    idempotency_key: String,
}

type Admission = BoxCloneSyncService<Job, Accepted, BoxError>;

/// Each sale's admission stack, built on its first purchase here.
#[derive(Default)]
pub(crate) struct Admissions {
    stacks: DashMap<String, Admission>,
}

/// Purchases of one sale counted by this replica.
#[derive(Debug, Default)]
pub(crate) struct SaleCounters {
    /// Accepted (queued).
    pub(crate) accepted: AtomicU64,
    /// Refused, by reason.
    pub(crate) rejected: DashMap<&'static str, AtomicU64>,
}

/// Per sale this replica knows: its purchase counts.
#[derive(Default)]
pub(crate) struct Counters {
    sales: DashMap<String, Arc<SaleCounters>>,
}

/// The metric label of purchases for sales this replica does not know.
const UNKNOWN_SALE: &str = "unknown";

impl Gateway {
    /// This replica's counts for a sale.
    pub(crate) fn counters(&self, sale_id: &str) -> Arc<SaleCounters> {
        let sales = &self.parts.counters.sales;
        if let Some(c) = sales.get(sale_id) {
            return c.clone();
        }
        sales.entry(sale_id.to_owned()).or_default().clone()
    }

    fn count(&self, sale_id: &str, outcome: &Result<Accepted, Error>) {
        let counters = self.counters(sale_id);
        match outcome {
            Ok(_) => {
                counters.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters
                    .rejected
                    .entry(e.reason_name())
                    .or_default()
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Buys for `caller` (see the module docs for the path).
    pub async fn purchase(&self, caller: &Caller, purchase: Purchase) -> Result<Accepted, Error> {
        rules::sale_id(&purchase.sale_id)?;
        let sale_id = purchase.sale_id.clone();
        let started = Instant::now();
        let outcome = self.admit(caller, purchase).await;
        let label = match &outcome {
            Ok(_) => "accepted".to_owned(),
            Err(e) => e.reason_name().to_ascii_lowercase(),
        };
        // Only a sale this replica knows gets counters and a metric label of its own: a made-up
        // sale id must cost nothing that lasts.
        let known = self.parts.sales.knows(&sale_id) || self.parts.stock.sold_out_now(&sale_id);
        let sale_label = if known {
            self.count(&sale_id, &outcome);
            sale_id.as_str()
        } else {
            UNKNOWN_SALE
        };
        crate::metrics::purchase(sale_label, &label, started.elapsed().as_secs_f64());
        outcome
    }

    /// Everything before the stock is touched: the sold-out answer from memory, the purchase
    /// token, the admission stack.
    async fn admit(&self, caller: &Caller, purchase: Purchase) -> Result<Accepted, Error> {
        rules::idempotency_key(&purchase.idempotency_key)?;
        if purchase.quantity == 0 {
            return Err(Error::invalid("quantity", "must be at least 1"));
        }
        let key = &purchase.idempotency_key;
        if self
            .sold_out_for(&purchase.sale_id, &caller.user_id, key)
            .await
        {
            return Err(self.sold_out(&purchase.sale_id));
        }
        let sale = Arc::new(self.sale(&purchase.sale_id).await?);
        if crate::sales::room_settings(&sale).is_some() {
            self.spend_purchase_token(
                &sale.sale_id,
                &caller.user_id,
                &purchase.purchase_token,
                key,
            )
            .await?;
        }
        let job = Job {
            sale,
            user_id: caller.user_id.clone(),
            quantity: purchase.quantity,
            idempotency_key: purchase.idempotency_key,
        };
        let mut admission = self.admission(&purchase.sale_id);
        // Load shedding: a full stack answers at once instead of queuing.
        let ready = admission
            .ready()
            .await
            .map_err(|e| unbox(e, &purchase.sale_id))?;
        ready
            .call(job)
            .await
            .map_err(|e| unbox(e, &purchase.sale_id))
    }

    fn admission(&self, sale_id: &str) -> Admission {
        let stacks = &self.parts.admission.stacks;
        if let Some(a) = stacks.get(sale_id) {
            return a.clone();
        }
        let gateway = self.clone();
        let stack = ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(self.parts.config.max_in_flight_per_sale)
            .service_fn(move |job: Job| {
                let gateway = gateway.clone();
                async move {
                    gateway
                        .reserve_and_publish(job)
                        .await
                        .map_err(BoxError::from)
                }
            });
        stacks
            .entry(sale_id.to_owned())
            .or_insert_with(|| BoxCloneSyncService::new(stack))
            .clone()
    }

    /// Reserve, publish, mark queued, answer (see the module docs). The buyer hears
    /// "accepted" only once the inventory knows the stream holds the order event, so no expiry
    /// and no compensation can free the unit of an accepted purchase.
    async fn reserve_and_publish(&self, job: Job) -> Result<Accepted, Error> {
        let sale = &job.sale;
        let (reservation, duplicate) = self.reserve(&job).await?;
        let accepted = accepted_answer(sale, &reservation, duplicate);
        if duplicate {
            match replay(&reservation) {
                Replay::Answer => return Ok(accepted),
                Replay::Failed => {
                    return Err(Error::PurchaseFailed {
                        order_id: reservation.reservation_id,
                    });
                }
                // The first attempt may have died before its publish, or be publishing now:
                // publish again (JetStream and the consumer drop the copy).
                Replay::Publish => {}
            }
        }
        let event = order_event(sale, &job.user_id, &reservation, &accepted);
        let clients = &self.parts.clients;
        let published = flashsale_orders::stream::publish_order(
            &clients.js,
            &clients.stream.subject_prefix,
            &event,
        )
        .await;
        if let Err(publish_error) = published {
            crate::metrics::backend_error("nats");
            // Only the attempt that made the reservation compensates: a retry's failed publish
            // says nothing of the first attempt's, which may have reached the stream. A hold
            // nobody queued expires by itself.
            if !duplicate {
                self.compensate(&sale.sale_id, &event.order_id, &publish_error)
                    .await;
            }
            return Err(Error::QueueUnavailable(publish_error.to_string()));
        }
        self.mark_queued(&sale.sale_id, &event.order_id).await?;
        Ok(accepted)
    }

    /// `Inventory.Reserve`; every outcome but a reservation becomes the buyer's refusal.
    async fn reserve(&self, job: &Job) -> Result<(pb::Reservation, bool), Error> {
        let sale = &job.sale;
        let reserved = self
            .parts
            .clients
            .inventory
            .clone()
            .reserve(pb::ReserveRequest {
                sale_id: sale.sale_id.clone(),
                user_id: job.user_id.clone(),
                quantity: job.quantity,
                idempotency_key: job.idempotency_key.clone(),
            })
            .await
            .map_err(|status| match status.code() {
                // The sale is in Postgres (it was just read) but not in Redis: lost with a
                // Redis restart, not yet restored. Not a refusal: nothing was decided.
                tonic::Code::NotFound => Error::StockUnavailable(sale.sale_id.clone()),
                _ => Error::Upstream(status),
            })?
            .into_inner();
        let made = reserved.outcome == pb::ReserveOutcome::Reserved as i32 && !reserved.duplicate;
        self.observe_reserve(&sale.sale_id, reserved.available, made);
        match pb::ReserveOutcome::try_from(reserved.outcome) {
            Ok(pb::ReserveOutcome::Reserved) => {}
            Ok(pb::ReserveOutcome::SoldOut) => {
                self.close_room(sale).await;
                return Err(self.sold_out(&sale.sale_id));
            }
            Ok(pb::ReserveOutcome::UserLimit) => {
                return Err(Error::UserLimit(sale.sale_id.clone()));
            }
            Ok(pb::ReserveOutcome::NotActive) => {
                return Err(Error::NotActive(sale.sale_id.clone()));
            }
            Ok(pb::ReserveOutcome::KeyReused) => return Err(Error::KeyReused),
            _ => {
                return Err(Error::invalid(
                    "quantity",
                    "is over the sale's per-user limit",
                ));
            }
        }
        let reservation = reserved.reservation.ok_or_else(|| {
            Error::Upstream(tonic::Status::internal("RESERVED without a reservation"))
        })?;
        Ok((reservation, reserved.duplicate))
    }

    pub(crate) fn sold_out(&self, sale_id: &str) -> Error {
        Error::SoldOut {
            sale_id: sale_id.to_owned(),
            retry_after: self.parts.config.sold_out_ttl.max(Duration::from_secs(1)),
        }
    }

    /// The publish failed: return the units (`Release(PUBLISH_FAILED)`). The inventory
    /// refuses it for a reservation a retry has queued meanwhile.
    async fn compensate(&self, sale_id: &str, order_id: &str, error: &impl std::fmt::Display) {
        tracing::warn!(order_id, %error, "publish failed; releasing the reservation");
        let released = self
            .parts
            .clients
            .inventory
            .clone()
            .release(pb::ReleaseRequest {
                sale_id: sale_id.to_owned(),
                reservation_id: order_id.to_owned(),
                reason: pb::ReleaseReason::PublishFailed as i32,
            })
            .await;
        if let Err(e) = released {
            // The hold expires by itself; the sweeper returns the units.
            tracing::warn!(order_id, error = %e, "compensating release failed; the hold will expire");
        }
    }

    /// `Inventory.MarkQueued`: the stream holds the event. When the mark fails (the hold had
    /// passed and its units went to others, or Redis is away) the outcome is unknown, not a
    /// refusal: the event is in the stream, and its order is honoured if stock comes back or a
    /// repair admits it. The buyer hears UNAVAILABLE and may retry with the same key.
    async fn mark_queued(&self, sale_id: &str, order_id: &str) -> Result<(), Error> {
        self.parts
            .clients
            .inventory
            .clone()
            .mark_queued(pb::MarkQueuedRequest {
                sale_id: sale_id.to_owned(),
                reservation_id: order_id.to_owned(),
            })
            .await
            .map(drop)
            .map_err(|status| {
                tracing::warn!(order_id, error = %status, "queued but not marked");
                Error::QueueUnavailable(format!(
                    "the purchase could not be confirmed: {}",
                    status.message()
                ))
            })
    }
}

/// What a repeated idempotency key gets, from the state of the reservation it made.
#[derive(Debug, PartialEq, Eq)]
enum Replay {
    /// The original answer: the purchase was accepted (its order is queued, written, paid, or
    /// ended by its own lifecycle).
    Answer,
    /// The reservation is held but not known to be queued: publish (again) and mark it.
    Publish,
    /// The reservation was released before its order was queued (its publish failed, or its
    /// hold passed unqueued): the purchase was not confirmed, and the key is spent.
    Failed,
}

fn replay(reservation: &pb::Reservation) -> Replay {
    use pb::{ReleaseReason as Why, ReservationState as State};
    match State::try_from(reservation.state).unwrap_or_default() {
        State::Held if !reservation.queued => Replay::Publish,
        State::Released if !reservation.queued => {
            match Why::try_from(reservation.release_reason).unwrap_or_default() {
                Why::ReservationExpired | Why::PublishFailed => Replay::Failed,
                _ => Replay::Answer,
            }
        }
        _ => Replay::Answer,
    }
}

/// The answer a buyer gets for `reservation`, the same for every replay of its key.
fn accepted_answer(
    sale: &sales::Model,
    reservation: &pb::Reservation,
    duplicate: bool,
) -> Accepted {
    Accepted {
        order_id: reservation.reservation_id.clone(),
        pay_deadline_ms: created_ms(reservation) + sale.payment_window_ms,
        quantity: reservation.quantity,
        amount_minor: sale.unit_price_minor * i64::from(reservation.quantity),
        duplicate,
    }
}

fn created_ms(reservation: &pb::Reservation) -> i64 {
    reservation
        .created_at
        .as_ref()
        .and_then(unix_ms)
        .unwrap_or_default()
}

/// The order event for an accepted reservation.
fn order_event(
    sale: &sales::Model,
    user_id: &str,
    reservation: &pb::Reservation,
    accepted: &Accepted,
) -> pb::OrderRequested {
    pb::OrderRequested {
        order_id: reservation.reservation_id.clone(),
        sale_id: sale.sale_id.clone(),
        user_id: user_id.to_owned(),
        quantity: reservation.quantity,
        unit_price_minor: sale.unit_price_minor,
        currency: sale.currency.clone(),
        requested_at: Some(timestamp(created_ms(reservation))),
        pay_deadline: Some(timestamp(accepted.pay_deadline_ms)),
        idempotency_key: reservation.idempotency_key.clone(),
    }
}

/// The gateway's error inside an admission stack's box: shed load, or what the purchase failed
/// with.
fn unbox(error: BoxError, sale_id: &str) -> Error {
    if error.is::<tower::load_shed::error::Overloaded>() {
        return Error::Overloaded(sale_id.to_owned());
    }
    match error.downcast::<Error>() {
        Ok(e) => *e,
        Err(other) => Error::Internal(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use flashsale_runtime::status::{IntoStatus, to_status};
    use tonic::Code;

    use super::*;

    #[test]
    fn an_unexpected_error_in_the_admission_stack_is_internal_not_a_misconfiguration() {
        let shed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        assert_eq!(unbox(shed, "s").reason(), "OVERLOADED");
        let ours: BoxError = Box::new(Error::NotActive("s".into()));
        assert_eq!(unbox(ours, "s").reason(), "SALE_NOT_ACTIVE");
        let stranger: BoxError = Box::new(std::io::Error::other("a layer's own failure"));
        let status = to_status(&unbox(stranger, "s"));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(
            flashsale_runtime::status::reason_of(&status).as_deref(),
            Some("INTERNAL")
        );
        assert!(status.message().contains("a layer's own failure"));
    }
}
