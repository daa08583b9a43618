//! The expiry sweeper: releases reservations whose hold passed without an order.
//!
//! Every inventory replica may run one. Each pass walks the loaded sales and runs the expiry
//! script on each; the script re-checks state and expiry atomically, so parallel sweepers never
//! release a reservation twice. A sale that is over with nothing left to expire is dropped from
//! the walk.

use std::time::Duration;

use flashsale_runtime::Shutdown;

use crate::Inventory;

/// How the sweeper paces itself.
#[derive(Debug, Clone, Copy)]
pub struct SweepConfig {
    /// Pause between passes.
    pub interval: Duration,
    /// Most reservations one script call releases (bounds the time Redis is busy).
    pub batch: u32,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Sales visited.
    pub sales: usize,
    /// Reservations released.
    pub released: usize,
    /// Sales whose sweep failed this pass (logged; the next pass tries them again). One sale
    /// failing never keeps the others from being swept.
    pub failed: usize,
}

/// Runs one pass over every loaded sale.
pub async fn sweep_once(inventory: &Inventory, batch: u32) -> Result<SweepReport, crate::Error> {
    let mut report = SweepReport::default();
    for sale_id in inventory.sales().await? {
        report.sales += 1;
        match sweep_sale(inventory, &sale_id, batch).await {
            Ok(released) => report.released += released,
            Err(e) => {
                report.failed += 1;
                tracing::warn!(sale_id, error = %e, "sweeping a sale failed; the others go on");
            }
        }
    }
    Ok(report)
}

/// Releases every due reservation of one sale, a batch at a time; returns how many.
async fn sweep_sale(
    inventory: &Inventory,
    sale_id: &str,
    batch: u32,
) -> Result<usize, crate::Error> {
    let mut released = 0;
    loop {
        let expired = inventory.expire_due(sale_id, batch).await?;
        released += expired.released.len();
        if expired.finished {
            inventory.forget_finished(sale_id).await?;
            crate::metrics::forget(sale_id);
        }
        if expired.released.len() < batch as usize {
            break;
        }
    }
    if let Ok(level) = inventory.stock(sale_id).await {
        crate::metrics::stock(sale_id, level);
    }
    Ok(released)
}

/// Sweeps every `interval` until `shutdown`; errors are logged and the next pass retries.
pub async fn run(inventory: Inventory, config: SweepConfig, shutdown: Shutdown) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.wait() => break,
            _ = ticker.tick() => {}
        }
        match sweep_once(&inventory, config.batch).await {
            Ok(report) if report.released > 0 => {
                tracing::info!(
                    released = report.released,
                    sales = report.sales,
                    "expired reservations released"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "expiry sweep failed; retrying next pass"),
        }
    }
    tracing::debug!("expiry sweeper stopped");
}
