//! Telling the inventory what happened to an order: commit its hold, confirm it, or release it.
//! Calls go to the Inventory gRPC service; each is idempotent there, so retries are safe.

use std::time::Duration;

use flashsale_proto::{
    time::timestamp,
    v1::{self as pb, inventory_client::InventoryClient},
};
use flashsale_runtime::status::reason_of;
use flashsale_runtime::trace::TracedChannel;
use tonic::Code;

use crate::{
    Error,
    convert::ms,
    entity::orders::{self, InventoryAction, Status},
};

/// What the inventory said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldOutcome {
    /// Done (or had been done).
    Done,
    /// Refused for good, with the inventory's reason (e.g. `RESERVATION_EXPIRED`).
    Refused(String),
}

/// A client of the Inventory service.
#[derive(Debug, Clone)]
pub struct InventoryHolds {
    client: InventoryClient<TracedChannel>,
}

impl InventoryHolds {
    /// A client of the inventory at `url`; connects on first use, reconnects as needed and
    /// balances over every address the name resolves to. Call within a Tokio runtime.
    /// With `tls`, over mutual TLS (the URL is then `https://`).
    pub fn connect_lazy(
        url: &str,
        timeout: Duration,
        tls: Option<&flashsale_runtime::tls::MeshTls>,
    ) -> Result<Self, Error> {
        let channel = flashsale_runtime::client::balanced_tls(
            url,
            flashsale_runtime::client::Timeouts::both(timeout),
            tls,
        )
        .map_err(|e| Error::invalid("inventory_url", e.to_string()))?;
        let channel = TracedChannel::new(channel);
        Ok(Self {
            client: InventoryClient::new(channel),
        })
    }

    /// Commits the holds of many orders of one sale in one call (at most
    /// `flashsale_inventory::model::MAX_COMMIT_BATCH`); one outcome per order, in order.
    pub async fn commit_many(
        &self,
        sale_id: &str,
        orders: &[orders::Model],
    ) -> Result<Vec<HoldOutcome>, Error> {
        let request = pb::CommitManyRequest {
            sale_id: sale_id.to_owned(),
            items: orders
                .iter()
                .map(|o| pb::CommitItem {
                    reservation_id: o.order_id.clone(),
                    hold_until: Some(timestamp(ms(o.pay_deadline))),
                })
                .collect(),
        };
        let response = match self.client.clone().commit_many(request).await {
            Ok(response) => response.into_inner(),
            // The sale itself is gone from Redis (restarted empty). Whether these holds still
            // stand cannot be told any more: the commits wait, and `Reconcile --repair`
            // decides which of them the rebuilt stock can honour.
            Err(status) if status.code() == Code::NotFound => {
                tracing::warn!(
                    sale_id,
                    orders = orders.len(),
                    "inventory does not know the sale (Redis lost it?): commits wait for a reconcile --repair"
                );
                return Err(Error::Inventory(status));
            }
            Err(status) => return Err(Error::Inventory(status)),
        };
        if response.results.len() != orders.len() {
            return Err(Error::Inventory(tonic::Status::internal(
                "CommitMany answered a different count",
            )));
        }
        Ok(response
            .results
            .into_iter()
            .map(|r| match pb::CommitOutcome::try_from(r.outcome) {
                Ok(pb::CommitOutcome::Refused) => {
                    HoldOutcome::Refused("RESERVATION_RELEASED".into())
                }
                // Redis was rebuilt without it: its units are not counted, so honouring it
                // could oversell.
                Ok(pb::CommitOutcome::NotFound) => {
                    HoldOutcome::Refused("RESERVATION_UNKNOWN".into())
                }
                _ => HoldOutcome::Done,
            })
            .collect())
    }

    /// Carries out the order's pending inventory action, if any.
    pub async fn apply(&self, order: &orders::Model) -> Result<Option<HoldOutcome>, Error> {
        let Some(action) = order.inventory_pending else {
            return Ok(None);
        };
        let mut client = self.client.clone();
        let sale_id = order.sale_id.clone();
        let reservation_id = order.order_id.clone();
        let result = match action {
            InventoryAction::Commit => client
                .commit(pb::CommitRequest {
                    sale_id,
                    reservation_id,
                    hold_until: Some(timestamp(ms(order.pay_deadline))),
                })
                .await
                .map(drop),
            InventoryAction::Confirm => client
                .confirm(pb::ConfirmRequest {
                    sale_id,
                    reservation_id,
                })
                .await
                .map(drop),
            InventoryAction::Release => client
                .release(pb::ReleaseRequest {
                    sale_id,
                    reservation_id,
                    reason: match order.status {
                        Status::Cancelled => pb::ReleaseReason::Cancelled,
                        _ => pb::ReleaseReason::PaymentExpired,
                    } as i32,
                })
                .await
                .map(drop),
        };
        match result {
            Ok(()) => Ok(Some(HoldOutcome::Done)),
            Err(status) if status.code() == Code::FailedPrecondition => {
                Ok(Some(HoldOutcome::Refused(
                    reason_of(&status).unwrap_or_else(|| status.message().to_owned()),
                )))
            }
            // The whole sale is gone from Redis: wait for `Reconcile --repair`, as above.
            Err(status)
                if status.code() == Code::NotFound
                    && reason_of(&status).as_deref() == Some("SALE_NOT_FOUND") =>
            {
                Err(Error::Inventory(status))
            }
            // A commit of a hold Redis does not know (rebuilt without it) cannot be honoured.
            Err(status) if status.code() == Code::NotFound && action == InventoryAction::Commit => {
                Ok(Some(HoldOutcome::Refused("RESERVATION_UNKNOWN".into())))
            }
            Err(status) if status.code() == Code::NotFound => {
                // Confirming or releasing a reservation the rebuilt Redis does not hold: the
                // rebuild counted the order from this table already, nothing left to tell.
                tracing::warn!(
                    order_id = %order.order_id,
                    ?action,
                    "inventory does not know the reservation; the rebuild accounted for it"
                );
                Ok(Some(HoldOutcome::Done))
            }
            Err(status) => Err(Error::Inventory(status)),
        }
    }
}
