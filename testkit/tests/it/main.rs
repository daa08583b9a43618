//! The test kit's own tests: each server starts for real, serves, dies, comes back.

mod nats;
mod postgres;
mod redis;
