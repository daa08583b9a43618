//! The wire contracts of flashsale mesh.
//!
//! This crate owns the `.proto` files under `proto/` and the Rust code `tonic-prost-build`
//! generates from them (with the vendored `protoc`, so no system package is needed):
//!
//! - [`flashsale::v1`]: the `FlashSale` and `SaleAdmin` public APIs, the internal `Inventory`,
//!   `Orders` and `Limiter` services, and the events carried on NATS (`OrderRequested`, ...).
//! - [`envoy`]: Envoy's rate-limit service v3 (`envoy.service.ratelimit.v3.RateLimitService`),
//!   field for field as Envoy publishes it, so Envoy and Istio can call our limiter.
//!
//! Client code is behind the `client` feature and server code behind `server` (both default).
//! [`FILE_DESCRIPTOR_SET`] feeds gRPC reflection; [`rules`] checks the identifier rules the
//! protos state; [`sale`] holds the limits and derived values the services agree on (stock and
//! bucket limits, key fingerprints, stock-signal subjects).

#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    rust_2018_idioms
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/mod.rs"));
}

pub mod rules;
pub mod sale;
pub mod time;

pub use generated::{envoy, flashsale};

/// The encoded `FileDescriptorSet` of every `.proto` in this crate, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flashsale_descriptor.bin"));

/// The `flashsale.v1` package, re-exported at a short path: `flashsale_proto::v1::Sale`.
pub use generated::flashsale::v1;

/// The names of the gRPC services this crate defines, as reflection lists them.
pub mod service_names {
    /// `flashsale.v1.FlashSale`
    pub const FLASH_SALE: &str = "flashsale.v1.FlashSale";
    /// `flashsale.v1.SaleAdmin`
    pub const SALE_ADMIN: &str = "flashsale.v1.SaleAdmin";
    /// `flashsale.v1.Inventory`
    pub const INVENTORY: &str = "flashsale.v1.Inventory";
    /// `flashsale.v1.Orders`
    pub const ORDERS: &str = "flashsale.v1.Orders";
    /// `flashsale.v1.Limiter`
    pub const LIMITER: &str = "flashsale.v1.Limiter";
    /// `envoy.service.ratelimit.v3.RateLimitService`
    pub const RATE_LIMIT_SERVICE: &str = "envoy.service.ratelimit.v3.RateLimitService";
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn envoy_field_numbers_match_the_published_api() {
        use envoy::service::ratelimit::v3::rate_limit_response::rate_limit::Unit;
        assert_eq!(Unit::Week as i32, 7);
        assert_eq!(Unit::Year as i32, 6);
        assert_eq!(envoy::r#type::v3::RateLimitUnit::Week as i32, 7);

        // Per-descriptor hits_addend is field 3, a google.protobuf.UInt64Value:
        // tag (3 << 3 | 2) = 0x1a, then a length-delimited wrapper whose field 1 is the value.
        let descriptor = envoy::extensions::common::ratelimit::v3::RateLimitDescriptor {
            entries: vec![],
            limit: None,
            hits_addend: Some(5),
        };
        assert_eq!(descriptor.encode_to_vec(), vec![0x1a, 0x02, 0x08, 0x05]);

        let request = envoy::service::ratelimit::v3::RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![],
            hits_addend: 2,
        };
        assert_eq!(request.encode_to_vec(), vec![0x0a, 0x01, b'd', 0x18, 0x02]);
    }

    #[test]
    fn descriptor_set_names_every_service() {
        let set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("decodes");
        let mut services: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| {
                let package = f.package().to_owned();
                f.service
                    .iter()
                    .map(move |s| format!("{package}.{}", s.name()))
            })
            .collect();
        services.sort();
        assert_eq!(
            services,
            [
                service_names::RATE_LIMIT_SERVICE,
                service_names::FLASH_SALE,
                service_names::INVENTORY,
                service_names::LIMITER,
                service_names::ORDERS,
                service_names::SALE_ADMIN,
            ]
        );
    }
}
