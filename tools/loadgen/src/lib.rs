//! Drives a flash sale against a running mesh, and audits the invariants afterwards.
//!
//! - [`drive`]: buyers (each with a token) fire purchase attempts with a bounded number in
//!   flight, retrying shed or unavailable attempts with the same idempotency key and reusing
//!   earlier keys on purpose (a client that retries after a lost answer).
//! - [`pay`]: pays a share of the accepted orders through the Orders service, as a payment
//!   provider would.
//! - [`audit`]: once the orders are written, checks what must hold: no oversell, every accepted
//!   purchase exactly one order, no order for a refused purchase, the per-user limit, Redis
//!   agreeing with Postgres, and for a sale behind a waiting room, admission in arrival order.
//!
//! For a sale with a waiting room ([`Scenario::waiting_room`]) each buyer joins the line on
//! their first attempt, asks where they stand until admitted, and buys with the purchase
//! token ([`queue`]).
//!
//! `flashsale up`, the end-to-end tests and `flashsale bench` all use it.

mod audit;
mod drive;
mod pay;
pub mod queue;

pub use audit::{Audit, Check, Sources, audit, audit_under_faults};
pub use drive::{
    Accepted, Arrival, Load, Outcome, Report, Scenario, Tick, Verdict, drive, run, schedule,
    user_id,
};
pub use pay::pay;
pub use queue::{QueueVisit, fair_admission};
