//! Inventory: the service that decides stock.
//!
//! It owns every sale's stock in Redis, the per-user purchase counts, idempotency keys and
//! reservations with their expiry, and the sold-out signal gateways cache.
//!
//! - [`config`]: the `[inventory]` configuration section.
//! - [`grpc`]: the `flashsale.v1.Inventory` gRPC server.

pub mod config;
pub mod grpc;

pub use config::Config;
