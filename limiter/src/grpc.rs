//! The Envoy `RateLimitService` and `flashsale.v1.Limiter` gRPC server.

use flashsale_proto::{
    envoy::service::ratelimit::v3::rate_limit_service_server::{
        RateLimitService, RateLimitServiceServer,
    },
    v1::limiter_server::{Limiter, LimiterServer},
};
use flashsale_runtime::{GrpcServer, config::ServerConfig};

/// The gRPC face of the limiter. Methods not built yet answer UNIMPLEMENTED.
#[derive(Debug, Clone, Default)]
pub struct LimiterApi;

impl RateLimitService for LimiterApi {}
impl Limiter for LimiterApi {}

/// A server hosting the RLS and Limiter services.
pub fn server(server: &ServerConfig) -> GrpcServer {
    GrpcServer::new("limiter", server)
        .add_service(
            RateLimitServiceServer::new(LimiterApi)
                .max_decoding_message_size(server.max_message_bytes),
        )
        .add_service(
            LimiterServer::new(LimiterApi).max_decoding_message_size(server.max_message_bytes),
        )
}
