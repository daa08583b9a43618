//! Orders: the service that turns won reservations into persisted orders.
//!
//! It owns the JetStream order stream and its consumer, the Postgres schema (through SeaORM),
//! and the order state machine with its payment deadline.
//!
//! - [`config`]: the `[orders]` configuration section.
//! - [`grpc`]: the `flashsale.v1.Orders` gRPC server.

pub mod config;
pub mod grpc;

pub use config::Config;
