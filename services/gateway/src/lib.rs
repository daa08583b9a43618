//! Gateway: the public face of flashsale mesh.
//!
//! It owns buyer authentication ([`auth`]: a verified JWT; the buyer is the token's subject),
//! the purchase path ([`gateway`]: local sold-out flag → per-sale admission with load shedding →
//! Inventory.Reserve → JetStream publish, releasing the reservation if the publish fails), the
//! buyer views of sales and orders, and sale administration ([`admin`]: create, end, figures,
//! and reconciliation of Redis with Postgres and the stream).
//!
//! A sale may have a fair waiting room in front of it (`queue`): JoinQueue, QueueStatus and
//! WatchQueue over [`flashsale_limiter::waiting_room`] (watchers of a sale share one reading
//! of the room per tick), and Purchase then needs the single-use purchase token admission
//! gives.
//!
//! - [`config`]: the `[gateway]` section.
//! - [`sales`]: sale validation and conversions.
//! - [`grpc`]: the `FlashSale` and `SaleAdmin` servers.

pub mod admin;
pub mod auth;
pub mod config;
mod error;
pub mod gateway;
pub mod grpc;
mod jwks;
mod metrics;
mod queue;
pub mod sales;
mod sold_out;

pub use config::Config;
pub use error::Error;
pub use gateway::{Backends, Gateway};
