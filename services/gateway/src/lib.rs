//! Gateway: the public face of flashsale mesh.
//!
//! A typed core ([`Gateway`], over the types of [`model`]) with a thin gRPC face ([`grpc`],
//! the only place protobuf requests and answers are converted). The core's files are named by
//! use case:
//!
//! - `purchase.rs`: where a buyer's purchase enters ([`Gateway::purchase`]): local sold-out
//!   answer → waiting-room token → per-sale admission with load shedding → Inventory.Reserve →
//!   JetStream publish → Inventory.MarkQueued, releasing the reservation if the publish fails.
//! - `views.rs`: a sale with its stock, pages of sales, the buyer's own orders.
//! - `queue.rs`: the waiting room as buyers meet it.
//! - [`admin`]: create, end, figures, and reconciliation of Redis with Postgres and the stream.
//! - `sold_out.rs`: which sales are sold out, from the inventory's stock signals.
//! - [`gateway`]: the parts the use cases share and how they are put together.
//!
//! Buyers are authenticated by [`auth`] (a verified JWT; the buyer is the token's subject).
//!
//! A sale may have a fair waiting room in front of it (`queue`): JoinQueue, QueueStatus and
//! WatchQueue over [`flashsale_limiter::waiting_room`] (watchers of a sale share one reading
//! of the room per tick), and Purchase then needs the single-use purchase token admission
//! gives.
//!
//! - [`config`]: the `[gateway]` section.
//! - [`sales`]: sale validation, conversions of the `sales` row, and a sale's state.

pub mod admin;
pub mod auth;
pub mod config;
mod error;
pub mod gateway;
pub mod grpc;
mod jwks;
mod metrics;
pub mod model;
mod purchase;
mod queue;
pub mod sales;
mod sold_out;
mod views;

pub use config::Config;
pub use error::Error;
pub use gateway::{Backends, Gateway};
