//! What every flashsale service process shares.
//!
//! - [`config`]: typed configuration layered defaults → TOML file → `FLASHSALE_*` environment,
//!   validated before any port is bound; the sections every service reads (Redis, NATS,
//!   Postgres, gRPC server settings).
//! - [`backoff`]: the one exponential backoff every retry loop paces itself with.
//! - [`client`]: channels to backends that balance over every address a name resolves to.
//! - [`nats`]: connecting to NATS with the configured credentials.
//! - [`redis`]: the one Redis pool builder, with the one retry policy.
//! - [`telemetry`]: logging set up once per process, with a guard that flushes on drop.
//! - [`server`]: a gRPC server with `grpc.health.v1` and reflection, serving on a listener the
//!   caller bound and draining on a shutdown future.
//! - [`shutdown`]: SIGTERM/SIGINT handling (first drains, second exits) and bounded draining.
//! - [`trace`]: W3C trace context in NATS message headers.
//! - [`status`]: the one mapping from a crate's error to a `tonic::Status` with a reason.

pub mod backoff;
pub mod client;
pub mod config;

pub mod nats;
pub mod redis;
pub mod server;
pub mod shutdown;
pub mod status;
pub mod telemetry;
pub mod tls;
pub mod trace;

pub use config::{ConfigError, Invalid, Loader, Validate};
pub use server::{GrpcServer, ServeError};
pub use shutdown::Shutdown;
pub use status::{IntoStatus, to_status};
