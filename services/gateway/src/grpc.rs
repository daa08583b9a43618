//! The `flashsale.v1.FlashSale` and `flashsale.v1.SaleAdmin` gRPC server.

use flashsale_proto::v1::{
    flash_sale_server::{FlashSale, FlashSaleServer},
    sale_admin_server::{SaleAdmin, SaleAdminServer},
};
use flashsale_runtime::{GrpcServer, config::ServerConfig};

/// The gRPC face of the gateway. Methods not built yet answer UNIMPLEMENTED.
#[derive(Debug, Clone, Default)]
pub struct GatewayApi;

impl FlashSale for GatewayApi {}
impl SaleAdmin for GatewayApi {}

/// A server hosting FlashSale and SaleAdmin.
pub fn server(server: &ServerConfig) -> GrpcServer {
    GrpcServer::new("gateway", server)
        .add_service(
            FlashSaleServer::new(GatewayApi).max_decoding_message_size(server.max_message_bytes),
        )
        .add_service(
            SaleAdminServer::new(GatewayApi).max_decoding_message_size(server.max_message_bytes),
        )
}
