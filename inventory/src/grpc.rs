//! The `flashsale.v1.Inventory` gRPC server.

use flashsale_proto::v1::inventory_server::{Inventory, InventoryServer};
use flashsale_runtime::{GrpcServer, config::ServerConfig};

/// The gRPC face of the inventory. Methods not built yet answer UNIMPLEMENTED.
#[derive(Debug, Clone, Default)]
pub struct InventoryApi;

impl Inventory for InventoryApi {}

/// A server hosting the Inventory service.
pub fn server(server: &ServerConfig) -> GrpcServer {
    GrpcServer::new("inventory", server).add_service(
        InventoryServer::new(InventoryApi)
            .max_decoding_message_size(server.max_message_bytes)
            .max_encoding_message_size(server.max_message_bytes),
    )
}
