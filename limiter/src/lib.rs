//! Limiter: rate-limit decisions for everything behind it.
//!
//! It owns the limit rules, local in-memory GCRA buckets and global counters in Redis, and
//! serves them three ways: the Envoy RLS v3 API, a tower layer, and a sidecar proxy.
//!
//! - [`config`]: the `[limiter]` configuration section.
//! - [`grpc`]: the RLS and `flashsale.v1.Limiter` gRPC server.

pub mod config;
pub mod grpc;

pub use config::Config;
