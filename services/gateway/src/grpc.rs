//! The `flashsale.v1.FlashSale` and `flashsale.v1.SaleAdmin` gRPC server: authenticate, convert
//! the request to the core's types ([`crate::model`]), hand over to the [`Gateway`], convert the
//! answer back. Wire conventions (a zero quantity meaning 1, page tokens, default page sizes)
//! live here and nowhere else.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use flashsale_proto::time::timestamp;
use flashsale_proto::v1::{
    self as pb,
    flash_sale_server::{FlashSale, FlashSaleServer},
    sale_admin_server::{SaleAdmin, SaleAdminServer},
};
use flashsale_runtime::{GrpcServer, config::ServerConfig};

use crate::{
    Error, Gateway,
    auth::Verifier,
    model::{Accepted, DEFAULT_PAGE_SIZE, Purchase, SaleView, SalesPage, SalesQuery},
    sales::{new_sale, sale_pb},
};

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
        let accepted = self
            .gateway
            .purchase(&caller, purchase(request.into_inner()))
            .await?;
        Ok(Response::new(accepted_pb(accepted)))
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
        Ok(Response::new(sale_view_pb(view)))
    }

    async fn list_sales(
        &self,
        request: Request<pb::ListSalesRequest>,
    ) -> Result<Response<pb::ListSalesResponse>, Status> {
        self.verifier.caller(request.metadata())?;
        let query = sales_query(&request.into_inner())?;
        let page = self.gateway.list_sales(query).await?;
        Ok(Response::new(sales_page_pb(page)))
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
            .ok_or_else(|| Error::invalid("sale", "is required"))?;
        let created = self.gateway.create_sale(new_sale(&sale)?).await?;
        Ok(Response::new(sale_pb(&created)))
    }

    async fn end_sale(
        &self,
        request: Request<pb::EndSaleRequest>,
    ) -> Result<Response<pb::Sale>, Status> {
        self.verifier.admin(request.metadata())?;
        let ended = self.gateway.end_sale(&request.into_inner().sale_id).await?;
        Ok(Response::new(sale_pb(&ended)))
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

fn purchase(request: pb::PurchaseRequest) -> Purchase {
    Purchase {
        sale_id: request.sale_id,
        // The wire's default: an unset quantity buys one unit.
        quantity: request.quantity.max(1),
        idempotency_key: request.idempotency_key,
        purchase_token: request.purchase_token,
    }
}

fn accepted_pb(accepted: Accepted) -> pb::PurchaseAccepted {
    pb::PurchaseAccepted {
        order_id: accepted.order_id,
        status: pb::OrderStatus::PendingPayment as i32,
        pay_deadline: Some(timestamp(accepted.pay_deadline_ms)),
        quantity: accepted.quantity,
        amount_minor: accepted.amount_minor,
        duplicate: accepted.duplicate,
    }
}

fn sale_view_pb(view: SaleView) -> pb::SaleView {
    pb::SaleView {
        sold_out: view.sold_out(),
        sale: Some(sale_pb(&view.sale)),
        stock: view.stock,
    }
}

fn sales_query(request: &pb::ListSalesRequest) -> Result<SalesQuery, Error> {
    let state = match pb::SaleState::try_from(request.state) {
        Ok(pb::SaleState::Unspecified) => None,
        Ok(state) => Some(state),
        Err(_) => {
            let why = format!("{} is not a SaleState", request.state);
            return Err(Error::invalid("state", why));
        }
    };
    Ok(SalesQuery {
        page_size: match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n,
        },
        state,
        after: page_token::decode(&request.page_token)?,
    })
}

fn sales_page_pb(page: SalesPage) -> pb::ListSalesResponse {
    pb::ListSalesResponse {
        sales: page.sales.iter().map(sale_pb).collect(),
        next_page_token: page
            .next
            .as_ref()
            .map(page_token::encode)
            .unwrap_or_default(),
    }
}

/// ListSales page tokens: `<starts_at ms>:<sale id>` of the page's last sale, base64url.
mod page_token {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

    use crate::{Error, model::Cursor};

    pub(super) fn encode(cursor: &Cursor) -> String {
        URL_SAFE_NO_PAD.encode(format!("{}:{}", cursor.starts_at_ms, cursor.sale_id))
    }

    /// The cursor a token names; an empty token starts from the first sale.
    pub(super) fn decode(token: &str) -> Result<Option<Cursor>, Error> {
        if token.is_empty() {
            return Ok(None);
        }
        let bad = || Error::invalid("page_token", "is not a token this service issued");
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        let raw = String::from_utf8(raw).map_err(|_| bad())?;
        let (starts, sale_id) = raw.split_once(':').ok_or_else(bad)?;
        Ok(Some(Cursor {
            starts_at_ms: starts.parse().map_err(|_| bad())?,
            sale_id: sale_id.to_owned(),
        }))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_token_names_the_cursor_it_was_made_from_and_nothing_else_decodes() {
            let cursor = Cursor {
                starts_at_ms: 1_767_225_600_000,
                sale_id: "sale:with-colon".into(),
            };
            assert_eq!(decode(&encode(&cursor)).unwrap(), Some(cursor));
            assert_eq!(decode("").unwrap(), None);
            for bad in ["!!!", "bm9jb2xvbg", "eDox"] {
                assert!(decode(bad).is_err(), "{bad}");
            }
        }
    }
}
