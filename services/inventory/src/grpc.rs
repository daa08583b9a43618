//! The `flashsale.v1.Inventory` gRPC server: converts protobuf to the core's types and back.

use std::time::Duration;

use flashsale_proto::{
    time::{duration_ms, timestamp, unix_ms},
    v1::{
        self as pb,
        inventory_server::{Inventory as InventoryRpc, InventoryServer},
    },
};
use flashsale_runtime::{GrpcServer, config::ServerConfig};
use tonic::{Request, Response, Status};

use crate::{
    Error, Inventory,
    model::{
        CommitOutcome, DEFAULT_HOLD, Outcome, ReleaseReason, Reservation, ReservationState,
        ReserveRequest, SalePresence, SaleSpec, StockLevel,
    },
};

/// The gRPC face of an [`Inventory`].
#[derive(Debug, Clone)]
pub struct InventoryApi {
    inventory: Inventory,
}

impl InventoryApi {
    /// Serves `inventory`.
    pub fn new(inventory: Inventory) -> Self {
        Self { inventory }
    }
}

/// A server hosting the Inventory service.
pub fn server(inventory: Inventory, server: &ServerConfig) -> GrpcServer {
    GrpcServer::new("inventory", server).add_service(
        InventoryServer::new(InventoryApi::new(inventory))
            .max_decoding_message_size(server.max_message_bytes)
            .max_encoding_message_size(server.max_message_bytes),
    )
}

/// A commit's `hold_until`: a valid timestamp after the epoch.
fn hold_until(ts: &prost_types::Timestamp) -> Result<i64, Error> {
    match unix_ms(ts) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(Error::invalid(
            "hold_until",
            "must be a valid time after 1970-01-01",
        )),
    }
}

/// The sale fields the inventory needs, checked.
pub fn sale_spec(sale: &pb::Sale) -> Result<SaleSpec, Error> {
    let starts = sale
        .starts_at
        .as_ref()
        .and_then(unix_ms)
        .ok_or_else(|| Error::invalid("starts_at", "is required"))?;
    let ends = sale
        .ends_at
        .as_ref()
        .and_then(unix_ms)
        .ok_or_else(|| Error::invalid("ends_at", "is required"))?;
    let hold = match &sale.reservation_hold {
        None => DEFAULT_HOLD,
        Some(d) => Duration::from_millis(
            duration_ms(d)
                .ok_or_else(|| Error::invalid("reservation_hold", "must not be negative"))?,
        ),
    };
    let spec = SaleSpec {
        sale_id: sale.sale_id.clone(),
        stock: sale.stock,
        per_user_limit: sale.per_user_limit,
        starts_at_ms: starts,
        ends_at_ms: ends,
        reservation_hold: hold,
        stock_buckets: sale.stock_buckets.max(1),
    };
    spec.validate()?;
    Ok(spec)
}

/// A reservation as protobuf.
pub fn reservation_pb(r: &Reservation) -> pb::Reservation {
    pb::Reservation {
        reservation_id: r.reservation_id.clone(),
        sale_id: r.sale_id.clone(),
        user_id: r.user_id.clone(),
        quantity: r.quantity,
        state: state_pb(r.state) as i32,
        created_at: Some(timestamp(r.created_at_ms)),
        expires_at: r.expires_at_ms.map(timestamp),
        idempotency_key: r.idempotency_key.clone(),
        queued: r.queued,
        release_reason: r
            .release_reason
            .map_or(pb::ReleaseReason::Unspecified, reason_pb) as i32,
    }
}

fn reason_pb(reason: ReleaseReason) -> pb::ReleaseReason {
    match reason {
        ReleaseReason::ReservationExpired => pb::ReleaseReason::ReservationExpired,
        ReleaseReason::PaymentExpired => pb::ReleaseReason::PaymentExpired,
        ReleaseReason::Cancelled => pb::ReleaseReason::Cancelled,
        ReleaseReason::PublishFailed => pb::ReleaseReason::PublishFailed,
        ReleaseReason::Admin => pb::ReleaseReason::Admin,
    }
}

fn state_pb(state: ReservationState) -> pb::ReservationState {
    match state {
        ReservationState::Held => pb::ReservationState::Held,
        ReservationState::Committed => pb::ReservationState::Committed,
        ReservationState::Confirmed => pb::ReservationState::Confirmed,
        ReservationState::Released => pb::ReservationState::Released,
    }
}

/// Stock figures as protobuf.
pub fn stock_pb(sale_id: &str, s: &StockLevel) -> pb::StockLevel {
    pb::StockLevel {
        sale_id: sale_id.to_owned(),
        total: s.total,
        available: s.available,
        held: s.held,
        sold: s.sold,
    }
}

/// One of a Rebuild's reservations: COMMITTED, CONFIRMED, or RELEASED with its reason.
fn rebuilt_reservation(sale_id: &str, r: pb::Reservation) -> Result<Reservation, Error> {
    let (state, release_reason) = match pb::ReservationState::try_from(r.state) {
        Ok(pb::ReservationState::Committed) => (ReservationState::Committed, None),
        Ok(pb::ReservationState::Confirmed) => (ReservationState::Confirmed, None),
        Ok(pb::ReservationState::Released) => (
            ReservationState::Released,
            Some(release_reason(r.release_reason)?),
        ),
        _ => {
            return Err(Error::invalid(
                "reservations",
                "only COMMITTED, CONFIRMED and RELEASED are rebuilt",
            ));
        }
    };
    Ok(Reservation {
        reservation_id: r.reservation_id,
        sale_id: sale_id.to_owned(),
        user_id: r.user_id,
        quantity: r.quantity,
        state,
        created_at_ms: r.created_at.as_ref().and_then(unix_ms).unwrap_or(0),
        expires_at_ms: r.expires_at.as_ref().and_then(unix_ms),
        idempotency_key: r.idempotency_key,
        release_reason,
        queued: r.queued,
    })
}

fn release_reason(value: i32) -> Result<ReleaseReason, Error> {
    match pb::ReleaseReason::try_from(value) {
        Ok(pb::ReleaseReason::ReservationExpired) => Ok(ReleaseReason::ReservationExpired),
        Ok(pb::ReleaseReason::PaymentExpired) => Ok(ReleaseReason::PaymentExpired),
        Ok(pb::ReleaseReason::Cancelled) => Ok(ReleaseReason::Cancelled),
        Ok(pb::ReleaseReason::PublishFailed) => Ok(ReleaseReason::PublishFailed),
        Ok(pb::ReleaseReason::Admin) => Ok(ReleaseReason::Admin),
        Ok(pb::ReleaseReason::Unspecified) => Err(Error::invalid("reason", "is required")),
        Err(_) => Err(Error::invalid(
            "reason",
            format!("{value} is not a ReleaseReason"),
        )),
    }
}

#[tonic::async_trait]
impl InventoryRpc for InventoryApi {
    async fn load_sale(
        &self,
        request: Request<pb::LoadSaleRequest>,
    ) -> Result<Response<pb::LoadSaleResponse>, Status> {
        let request = request.into_inner();
        let sale = request
            .sale
            .ok_or_else(|| Error::invalid("sale", "is required"))?;
        let spec = sale_spec(&sale)?;
        let loaded = if request.refresh_only {
            self.inventory.refresh_sale(&spec).await?
        } else {
            self.inventory.load_sale(&spec).await?
        };
        Ok(Response::new(pb::LoadSaleResponse {
            created: loaded.created,
            stock: Some(stock_pb(&spec.sale_id, &loaded.stock)),
        }))
    }

    async fn reserve(
        &self,
        request: Request<pb::ReserveRequest>,
    ) -> Result<Response<pb::ReserveResponse>, Status> {
        let r = request.into_inner();
        let request = ReserveRequest {
            sale_id: r.sale_id,
            user_id: r.user_id,
            quantity: r.quantity,
            idempotency_key: r.idempotency_key,
        };
        let reserved = self.inventory.reserve(&request).await?;
        let (outcome, reservation, duplicate) = match &reserved.outcome {
            Outcome::Reserved {
                reservation,
                duplicate,
            } => (
                pb::ReserveOutcome::Reserved,
                Some(reservation_pb(reservation)),
                *duplicate,
            ),
            Outcome::SoldOut => (pb::ReserveOutcome::SoldOut, None, false),
            Outcome::UserLimit => (pb::ReserveOutcome::UserLimit, None, false),
            Outcome::NotActive => (pb::ReserveOutcome::NotActive, None, false),
            Outcome::KeyReused => (pb::ReserveOutcome::KeyReused, None, false),
            Outcome::QuantityOverLimit => {
                return Err(Error::invalid(
                    "quantity",
                    format!("{} is over the sale's per-user limit", request.quantity),
                )
                .into());
            }
        };
        Ok(Response::new(pb::ReserveResponse {
            outcome: outcome as i32,
            reservation,
            duplicate,
            available: reserved.available,
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let r = request.into_inner();
        let hold_until = r
            .hold_until
            .as_ref()
            .map(hold_until)
            .unwrap_or_else(|| Err(Error::invalid("hold_until", "is required")))?;
        let t = self
            .inventory
            .commit(&r.sale_id, &r.reservation_id, hold_until)
            .await?;
        Ok(Response::new(reservation_pb(&t.reservation)))
    }

    async fn commit_many(
        &self,
        request: Request<pb::CommitManyRequest>,
    ) -> Result<Response<pb::CommitManyResponse>, Status> {
        let r = request.into_inner();
        let items = r
            .items
            .into_iter()
            .map(|item| {
                let hold_until = item
                    .hold_until
                    .as_ref()
                    .map(hold_until)
                    .unwrap_or_else(|| Err(Error::invalid("hold_until", "is required")))?;
                Ok((item.reservation_id, hold_until))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let results = self.inventory.commit_many(&r.sale_id, &items).await?;
        Ok(Response::new(pb::CommitManyResponse {
            results: results
                .into_iter()
                .map(|result| pb::CommitResult {
                    reservation_id: result.reservation_id,
                    outcome: match result.outcome {
                        CommitOutcome::Committed => pb::CommitOutcome::Committed,
                        CommitOutcome::Unchanged => pb::CommitOutcome::Unchanged,
                        CommitOutcome::Revived => pb::CommitOutcome::Revived,
                        CommitOutcome::Refused => pb::CommitOutcome::Refused,
                        CommitOutcome::NotFound => pb::CommitOutcome::NotFound,
                    } as i32,
                    state: result
                        .state
                        .map_or(pb::ReservationState::Unspecified, state_pb)
                        as i32,
                })
                .collect(),
        }))
    }

    async fn confirm(
        &self,
        request: Request<pb::ConfirmRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let r = request.into_inner();
        let t = self
            .inventory
            .confirm(&r.sale_id, &r.reservation_id)
            .await?;
        Ok(Response::new(reservation_pb(&t.reservation)))
    }

    async fn mark_queued(
        &self,
        request: Request<pb::MarkQueuedRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let r = request.into_inner();
        let t = self
            .inventory
            .mark_queued(&r.sale_id, &r.reservation_id)
            .await?;
        Ok(Response::new(reservation_pb(&t.reservation)))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let r = request.into_inner();
        let reason = release_reason(r.reason)?;
        let t = self
            .inventory
            .release(&r.sale_id, &r.reservation_id, reason)
            .await?;
        Ok(Response::new(reservation_pb(&t.reservation)))
    }

    async fn rebuild(
        &self,
        request: Request<pb::RebuildRequest>,
    ) -> Result<Response<pb::StockLevel>, Status> {
        let request = request.into_inner();
        let sale = request
            .sale
            .ok_or_else(|| Error::invalid("sale", "is required"))?;
        let spec = sale_spec(&sale)?;
        let seen = match pb::SalePresence::try_from(request.seen) {
            Ok(pb::SalePresence::SalePresent) => SalePresence::Present,
            Ok(pb::SalePresence::SaleMissing) => SalePresence::Missing,
            _ => {
                return Err(Error::invalid(
                    "seen",
                    "is required: SALE_PRESENT or SALE_MISSING, as Redis was when the orders were read",
                )
                .into());
            }
        };
        let reservations = request
            .reservations
            .into_iter()
            .map(|r| rebuilt_reservation(&spec.sale_id, r))
            .collect::<Result<Vec<_>, Error>>()?;
        let stock = self.inventory.rebuild(&spec, &reservations, seen).await?;
        Ok(Response::new(stock_pb(&spec.sale_id, &stock)))
    }

    async fn key_fingerprints(
        &self,
        request: Request<pb::KeyFingerprintsRequest>,
    ) -> Result<Response<pb::KeyFingerprintsResponse>, Status> {
        let r = request.into_inner();
        let found = self.inventory.key_fingerprints(&r.sale_id, r.limit).await?;
        Ok(Response::new(pb::KeyFingerprintsResponse {
            complete: found.is_some(),
            fingerprints: found.unwrap_or_default(),
        }))
    }

    async fn get_stock(
        &self,
        request: Request<pb::GetStockRequest>,
    ) -> Result<Response<pb::StockLevel>, Status> {
        let sale_id = request.into_inner().sale_id;
        let stock = self.inventory.stock(&sale_id).await?;
        Ok(Response::new(stock_pb(&sale_id, &stock)))
    }
}
