//! Gateway: the public face of flashsale mesh.
//!
//! It owns buyer authentication, the purchase path (local sold-out flag, Inventory reserve,
//! JetStream publish), and sale administration.
//!
//! - [`config`]: the `[gateway]` configuration section.
//! - [`grpc`]: the `flashsale.v1.FlashSale` and `flashsale.v1.SaleAdmin` gRPC server.

pub mod config;
pub mod grpc;

pub use config::Config;
