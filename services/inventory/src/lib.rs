//! Inventory: the service that decides stock.
//!
//! It owns every sale's stock in Redis, the per-user purchase counts, idempotency keys,
//! reservations with their expiry, and the sold-out signal gateways follow.
//!
//! Each operation is one Lua script (`lua/`), loaded once and called by SHA, over the keys of
//! one sale; all of them carry the hash tag `{sale_id}`, so every script is single-slot on a
//! Redis Cluster. Scripts use Redis's clock, so replicas agree on time. Every script keeps
//! `available + held + sold == total` and never lets `available` go below zero: Redis runs a
//! script atomically, so no interleaving of calls can oversell.
//!
//! A reservation moves `HELD → COMMITTED → CONFIRMED`, or to `RELEASED` from `HELD` or
//! `COMMITTED`. Each transition is a compare-and-set inside its script, idempotent when repeated,
//! refused when it does not apply. A `HELD` reservation becomes *queued* once the gateway knows
//! the order stream holds its event (`queued.lua`, [`Inventory::mark_queued`]): from then on
//! neither its hold's expiry nor a compensation releases it, only its order's lifecycle. That is
//! what lets the gateway answer "accepted" and keep the promise however long the order takes
//! to be written. `RELEASED` is final except for the order consumer's commit, which takes back
//! a reservation released by its hold or a compensation when stock allows, and Confirm, which
//! does the same for a paid order.
//!
//! A hot item may split its stock into buckets on different slots, so several Redis Cluster
//! masters share its reservations; [`buckets`] explains why the per-user limit, atomicity and
//! the stock invariant still hold.
//!
//! - [`buckets`]: stock buckets for hot items (layout, transfers, the argument).
//! - [`model`]: domain types ([`SaleSpec`], [`Reservation`], [`Outcome`], ...).
//! - [`store`]: [`Inventory`], the core over Redis that tests and benchmarks call.
//! - [`sweeper`]: releases reservations whose hold passed; replicas may run it at once.
//! - [`signal`]: sold-out signals over NATS, which the gateways follow.
//! - [`grpc`]: the `flashsale.v1.Inventory` server over the core.
//! - [`config`]: the `[inventory]` configuration section.

pub mod buckets;
pub mod config;
mod error;
pub mod grpc;
mod metrics;
pub mod model;
pub mod signal;
pub mod store;
pub mod sweeper;

pub use config::Config;
pub use error::Error;
pub use model::{
    Audit, CommitOutcome, CommitResult, Outcome, ReleaseReason, Reservation, ReservationState,
    ReserveRequest, Reserved, SalePresence, SaleSpec, StockLevel, Transition, key_fingerprint,
};
pub use signal::Signals;
pub use store::Inventory;
