//! [`Pipeline`]: the store, the inventory client and the status events, shared by the consumer,
//! the lifecycle worker and the gRPC service; and the one place an order's inventory action is
//! carried out.

use futures::StreamExt;

use crate::{
    Error,
    entity::orders::{self, InventoryAction},
    events::StatusEvents,
    holds::{HoldOutcome, InventoryHolds},
    store::OrderStore,
};

/// What every part of the order pipeline works with.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Sales and orders in Postgres.
    pub store: OrderStore,
    /// The inventory.
    pub holds: InventoryHolds,
    /// Status change announcements.
    pub events: StatusEvents,
}

/// Inventory calls in flight at once when many orders are synced together.
const SYNC_CONCURRENCY: usize = 64;
/// Reservations per CommitMany call.
const COMMIT_CHUNK: usize = 1000;

impl Pipeline {
    /// [`Self::sync_inventory`] for many orders: inventory calls run concurrently and the rows
    /// that went through are cleared in one statement per action. Orders whose call failed keep
    /// their pending action for the lifecycle worker.
    pub async fn sync_inventory_many(&self, orders: Vec<orders::Model>) -> Result<(), Error> {
        // Commits (the consumer's bulk) go per sale in one CommitMany call each; the rest one
        // by one, concurrently.
        let (commits, others): (Vec<_>, Vec<_>) = orders
            .into_iter()
            .partition(|o| o.inventory_pending == Some(InventoryAction::Commit));
        let mut by_sale: std::collections::BTreeMap<String, Vec<orders::Model>> =
            Default::default();
        for order in commits {
            by_sale
                .entry(order.sale_id.clone())
                .or_default()
                .push(order);
        }
        let mut outcomes: Vec<(orders::Model, Result<Option<HoldOutcome>, Error>)> = Vec::new();
        for (sale_id, orders) in by_sale {
            for chunk in orders.chunks(COMMIT_CHUNK) {
                match self.holds.commit_many(&sale_id, chunk).await {
                    Ok(results) => outcomes.extend(
                        chunk
                            .iter()
                            .cloned()
                            .zip(results.into_iter().map(|r| Ok(Some(r)))),
                    ),
                    Err(e) => {
                        tracing::warn!(%sale_id, error = %e, "inventory commits deferred to the lifecycle worker");
                    }
                }
            }
        }
        let singles: Vec<(orders::Model, Result<Option<HoldOutcome>, Error>)> =
            futures::stream::iter(others)
                .map(|order| async move {
                    let outcome = self.holds.apply(&order).await;
                    (order, outcome)
                })
                .buffer_unordered(SYNC_CONCURRENCY)
                .collect()
                .await;
        outcomes.extend(singles);
        let mut done: Vec<(InventoryAction, String)> = Vec::new();
        for (order, outcome) in outcomes {
            match (order.inventory_pending, outcome) {
                (Some(action), Ok(None | Some(HoldOutcome::Done))) => {
                    done.push((action, order.order_id))
                }
                (None, _) => {}
                (Some(_), Ok(Some(HoldOutcome::Refused(reason)))) => {
                    self.refused(&order, reason).await?
                }
                (Some(_), Err(e)) => {
                    tracing::warn!(order_id = %order.order_id, error = %e, "inventory action deferred to the lifecycle worker");
                }
            }
        }
        for action in [
            InventoryAction::Commit,
            InventoryAction::Confirm,
            InventoryAction::Release,
        ] {
            let ids: Vec<String> = done
                .iter()
                .filter(|(a, _)| *a == action)
                .map(|(_, id)| id.clone())
                .collect();
            self.store.inventory_done_many(ids, action).await?;
        }
        Ok(())
    }

    /// Tells the inventory what the order's row says it must know, then clears the row's
    /// pending action. On an inventory outage the action stays pending and the lifecycle worker
    /// retries it.
    pub async fn sync_inventory(&self, order: &orders::Model) -> Result<(), Error> {
        let Some(action) = order.inventory_pending else {
            return Ok(());
        };
        match self.holds.apply(order).await? {
            None | Some(HoldOutcome::Done) => {
                self.store.inventory_done(&order.order_id, action).await
            }
            Some(HoldOutcome::Refused(reason)) => self.refused(order, reason).await,
        }
    }

    async fn refused(&self, order: &orders::Model, reason: String) -> Result<(), Error> {
        let Some(action) = order.inventory_pending else {
            return Ok(());
        };
        match reason {
            reason if action == InventoryAction::Commit => {
                // The hold expired before the order was written and its units were sold to
                // someone else: the order cannot be honoured.
                tracing::warn!(order_id = %order.order_id, %reason, "stock lost before the order was persisted");
                if let Some(lost) = self.store.mark_lost(&order.order_id).await? {
                    self.events.publish(&lost).await;
                    // The release it now asks for; on failure the lifecycle worker retries it.
                    if let Err(e) = Box::pin(self.sync_inventory(&lost)).await {
                        tracing::warn!(order_id = %lost.order_id, error = %e, "release of a lost order deferred");
                    }
                    Ok(())
                } else {
                    // Paid or cancelled meanwhile; its own action supersedes this one.
                    self.store.inventory_done(&order.order_id, action).await
                }
            }
            reason if action == InventoryAction::Confirm => {
                // Paid, and no unit to give it (the inventory takes a released one back when
                // it can). The Confirm stays pending: the lifecycle tries again as units come
                // back, and the order shows in reconciliation until then.
                crate::metrics::paid_without_stock();
                tracing::error!(
                    order_id = %order.order_id,
                    %reason,
                    "a paid order has no unit in the inventory; its confirm stays pending"
                );
                Ok(())
            }
            reason => {
                tracing::error!(
                    order_id = %order.order_id,
                    ?action,
                    %reason,
                    "inventory refused an order transition; reconciliation must look at this sale"
                );
                self.store.inventory_done(&order.order_id, action).await
            }
        }
    }
}
