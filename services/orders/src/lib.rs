//! Orders: the service that turns won reservations into persisted orders.
//!
//! Accepted purchases arrive as `OrderRequested` events on JetStream (published by the gateway
//! with the order id as `Nats-Msg-Id`). The [`consumer`] writes them to Postgres in batches,
//! one transaction each, idempotently (the order id is the primary key), acknowledges them, and
//! tells the inventory to hold their units until the payment deadline. Orders then move
//! `PENDING_PAYMENT → PAID | CANCELLED | EXPIRED`, each step a compare-and-set in SQL; the
//! inventory is told afterwards, at least once ([`pipeline`], [`lifecycle`]).
//!
//! - [`config`]: the `[orders]` section.
//! - [`entity`], [`migration`]: the `sales` and `orders` tables (SeaORM).
//! - [`store`]: [`OrderStore`], every query and transition.
//! - [`stream`]: streams and consumer owned by code, the publish helper, the dead-letter stream.
//! - [`consumer`]: JetStream → Postgres.
//! - [`lifecycle`]: payment expiry and inventory retries, safe on many replicas.
//! - [`holds`]: the Inventory client; [`events`]: status changes on NATS for WatchOrder.
//! - [`grpc`]: the `flashsale.v1.Orders` server.

pub mod config;
pub mod consumer;
pub mod convert;
pub mod entity;
mod error;
pub mod events;
pub mod grpc;
pub mod holds;
pub mod lifecycle;
mod metrics;
pub mod migration;
pub mod pipeline;
pub mod store;
pub mod stream;

pub use config::Config;
pub use error::Error;
pub use pipeline::Pipeline;
pub use store::OrderStore;
