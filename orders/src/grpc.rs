//! The `flashsale.v1.Orders` gRPC server.

use flashsale_proto::v1::orders_server::{Orders, OrdersServer};
use flashsale_runtime::{GrpcServer, config::ServerConfig};

/// The gRPC face of the order pipeline. Methods not built yet answer UNIMPLEMENTED.
#[derive(Debug, Clone, Default)]
pub struct OrdersApi;

impl Orders for OrdersApi {}

/// A server hosting the Orders service.
pub fn server(server: &ServerConfig) -> GrpcServer {
    GrpcServer::new("orders", server).add_service(
        OrdersServer::new(OrdersApi)
            .max_decoding_message_size(server.max_message_bytes)
            .max_encoding_message_size(server.max_message_bytes),
    )
}
