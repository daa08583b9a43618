//! The `flashsale.v1.FlashSale` and `flashsale.v1.SaleAdmin` gRPC server: authenticate, then
//! hand over to the [`Gateway`].

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use flashsale_proto::v1::{
    self as pb,
    flash_sale_server::{FlashSale, FlashSaleServer},
    sale_admin_server::{SaleAdmin, SaleAdminServer},
};
use flashsale_runtime::{GrpcServer, config::ServerConfig};

use crate::{Gateway, auth::Verifier};

/// The gRPC face of the gateway.
#[derive(Debug, Clone)]
pub struct GatewayApi {
    gateway: Gateway,
    verifier: Verifier,
}

impl GatewayApi {
    /// Serves `gateway`, verifying callers with `verifier`.
    pub fn new(gateway: Gateway, verifier: Verifier) -> Self {
        Self { gateway, verifier }
    }
}

/// A server hosting FlashSale and SaleAdmin.
pub fn server(gateway: Gateway, verifier: Verifier, server: &ServerConfig) -> GrpcServer {
    let api = GatewayApi::new(gateway, verifier);
    GrpcServer::new("gateway", server)
        .add_service(
            FlashSaleServer::new(api.clone())
                .max_decoding_message_size(server.max_message_bytes)
                .max_encoding_message_size(server.max_message_bytes),
        )
        .add_service(
            SaleAdminServer::new(api)
                .max_decoding_message_size(server.max_message_bytes)
                .max_encoding_message_size(server.max_message_bytes),
        )
}

/// The stream type of WatchOrder.
pub type OrderStream = Pin<Box<dyn Stream<Item = Result<pb::Order, Status>> + Send>>;

/// The stream type of WatchQueue.
pub type QueueStream = Pin<Box<dyn Stream<Item = Result<pb::QueueStanding, Status>> + Send>>;

#[tonic::async_trait]
impl FlashSale for GatewayApi {
    async fn purchase(
        &self,
        request: Request<pb::PurchaseRequest>,
    ) -> Result<Response<pb::PurchaseAccepted>, Status> {
        let caller = self.verifier.caller(request.metadata())?;
        let accepted = self.gateway.purchase(&caller, request.into_inner()).await?;
        Ok(Response::new(accepted))
    }

    async fn join_queue(
        &self,
        request: Request<pb::JoinQueueRequest>,
    ) -> Result<Response<pb::QueueStanding>, Status> {
        let caller = self.verifier.caller(request.metadata())?;
        let standing = self
            .gateway
            .join_queue(&caller, &request.into_inner().sale_id)
            .await?;
        Ok(Response::new(standing))
    }

    async fn queue_status(
        &self,
        request: Request<pb::QueueStatusRequest>,
    ) -> Result<Response<pb::QueueStanding>, Status> {
        let caller = self.verifier.caller(request.metadata())?;
        let standing = self
            .gateway
            .queue_status(&caller, request.into_inner())
            .await?;
        Ok(Response::new(standing))
    }

    type WatchQueueStream = QueueStream;

    async fn watch_queue(
        &self,
        request: Request<pb::QueueStatusRequest>,
    ) -> Result<Response<Self::WatchQueueStream>, Status> {
        let caller = self.verifier.caller(request.metadata())?;
        let standings = self
            .gateway
            .watch_queue(&caller, request.into_inner())
            .await?;
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(standings)
                .map(|item| item.map_err(Status::from)),
        )))
    }

    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let caller = self.verifier.caller(request.metadata())?;
        let order = self
            .gateway
            .order(&caller, &request.into_inner().order_id)
            .await?;
        Ok(Response::new(order))
    }

    type WatchOrderStream = OrderStream;

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let caller = self.verifier.caller(request.metadata())?;
        let upstream = self
            .gateway
            .watch(&caller, &request.into_inner().order_id)
            .await?;
        Ok(Response::new(Box::pin(upstream.map(|item| item))))
    }

    async fn get_sale(
        &self,
        request: Request<pb::GetSaleRequest>,
    ) -> Result<Response<pb::SaleView>, Status> {
        self.verifier.caller(request.metadata())?;
        let view = self
            .gateway
            .sale_view(&request.into_inner().sale_id)
            .await?;
        Ok(Response::new(view))
    }

    async fn list_sales(
        &self,
        request: Request<pb::ListSalesRequest>,
    ) -> Result<Response<pb::ListSalesResponse>, Status> {
        self.verifier.caller(request.metadata())?;
        let page = self.gateway.list_sales(request.into_inner()).await?;
        Ok(Response::new(page))
    }
}

#[tonic::async_trait]
impl SaleAdmin for GatewayApi {
    async fn create_sale(
        &self,
        request: Request<pb::CreateSaleRequest>,
    ) -> Result<Response<pb::Sale>, Status> {
        self.verifier.admin(request.metadata())?;
        let sale = request
            .into_inner()
            .sale
            .ok_or_else(|| Status::from(crate::Error::invalid("sale", "is required")))?;
        Ok(Response::new(self.gateway.create_sale(&sale).await?))
    }

    async fn end_sale(
        &self,
        request: Request<pb::EndSaleRequest>,
    ) -> Result<Response<pb::Sale>, Status> {
        self.verifier.admin(request.metadata())?;
        Ok(Response::new(
            self.gateway.end_sale(&request.into_inner().sale_id).await?,
        ))
    }

    async fn get_sale_stats(
        &self,
        request: Request<pb::GetSaleStatsRequest>,
    ) -> Result<Response<pb::SaleStats>, Status> {
        self.verifier.admin(request.metadata())?;
        Ok(Response::new(
            self.gateway
                .sale_stats(&request.into_inner().sale_id)
                .await?,
        ))
    }

    async fn reconcile(
        &self,
        request: Request<pb::ReconcileRequest>,
    ) -> Result<Response<pb::ReconcileReport>, Status> {
        self.verifier.admin(request.metadata())?;
        let request = request.into_inner();
        Ok(Response::new(
            self.gateway
                .reconcile(&request.sale_id, request.repair)
                .await?,
        ))
    }
}
