//! The lifecycle worker: expires unpaid orders at their deadline and retries inventory actions
//! that did not get through. Every orders replica may run it: rows are claimed with
//! `FOR UPDATE SKIP LOCKED`, and every inventory action is idempotent.

use std::time::Duration;

use flashsale_runtime::Shutdown;

use crate::{Error, pipeline::Pipeline};

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Orders moved to EXPIRED.
    pub expired: usize,
    /// Inventory actions retried.
    pub retried: usize,
}

/// How long an inventory action must have been pending before the worker retries it (the
/// call that set it usually completes it first).
pub const RETRY_LEASE: Duration = Duration::from_secs(2);

/// One pass: expire what is due, then retry inventory actions.
pub async fn pass(pipeline: &Pipeline, batch: u64, lease: Duration) -> Result<PassReport, Error> {
    let mut report = PassReport::default();
    let expired = pipeline.store.expire_due(batch).await?;
    report.expired = expired.len();
    crate::metrics::orders("expired", expired.len() as u64);
    for order in &expired {
        pipeline.events.publish(order).await;
        if let Err(e) = pipeline.sync_inventory(order).await {
            tracing::warn!(order_id = %order.order_id, error = %e, "release deferred");
        }
    }
    let due = pipeline.store.claim_inventory_due(batch, lease).await?;
    report.retried = due.len();
    for order in &due {
        if let Err(e) = pipeline.sync_inventory(order).await {
            tracing::warn!(order_id = %order.order_id, error = %e, "inventory still unavailable");
        }
    }
    Ok(report)
}

/// Runs passes every `interval` until `shutdown`.
pub async fn run(pipeline: Pipeline, interval: Duration, batch: u64, shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            _ = ticker.tick() => {}
        }
        match pass(&pipeline, batch, RETRY_LEASE).await {
            Ok(report) if report.expired + report.retried > 0 => {
                tracing::info!(
                    expired = report.expired,
                    retried = report.retried,
                    "lifecycle pass"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "lifecycle pass failed; retrying next tick"),
        }
    }
}
