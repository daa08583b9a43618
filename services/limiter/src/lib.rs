//! Limiter: rate-limit decisions for everything behind it.
//!
//! One core, [`Limiter`], judges a request's descriptors against rules in Envoy ratelimit's
//! YAML shape ([`rules`]): local limits with GCRA in memory ([`local`], the `governor` crate),
//! global limits in Redis with a fixed or sliding window ([`global`], one Lua script per
//! request). A request is judged as a whole: when any descriptor is over its limit, no
//! descriptor is charged. When Redis fails or is slower than its timeout (tens of
//! milliseconds), the configured failure mode answers: allow, deny, or a local share of the
//! limit.
//!
//! Three faces over that core:
//! - [`rls`]: Envoy's RLS v3 `ShouldRateLimit` (plus `flashsale.v1.Limiter` to list and reload
//!   rules), for Envoy and Istio;
//! - [`layer`]: a tower layer any tonic server adds, answering `RESOURCE_EXHAUSTED` with
//!   `retry-after`;
//! - [`sidecar`]: a gRPC proxy that applies the layer in front of a service in the same pod.
//!
//! [`stats`] counts decisions per rule; [`config`] is the `[limiter]` section.
//!
//! [`waiting_room`] is admission of another kind: a fair FIFO queue per sale, with signed
//! tickets and single-use purchase tokens.

pub mod config;
mod error;
pub mod global;
pub mod layer;
pub mod limiter;
pub mod local;
mod metrics;
pub mod purchase;
pub mod rls;
pub mod rules;
pub mod sidecar;
pub mod stats;
pub mod waiting_room;

pub use config::Config;
pub use error::Error;
pub use limiter::{Code, Decision, Descriptor, Limiter, Request};
pub use rules::RuleSet;
