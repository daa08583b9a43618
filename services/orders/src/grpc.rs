//! The `flashsale.v1.Orders` gRPC server.

use std::{pin::Pin, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::{Stream, StreamExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use flashsale_proto::{
    rules,
    v1::{
        self as pb,
        list_orders_request::Filter,
        orders_server::{Orders, OrdersServer},
    },
};
use flashsale_runtime::{GrpcServer, config::ServerConfig};

use crate::{
    Error,
    convert::{ms, order_pb, status_filter, utc},
    pipeline::Pipeline,
    store::{Cursor, OrderFilter},
};

/// Default and largest ListOrders page.
pub const DEFAULT_PAGE: u32 = 50;
/// Largest ListOrders page.
pub const MAX_PAGE: u32 = 500;
/// How often a WatchOrder stream re-reads the order, in case a change announcement was lost.
const WATCH_POLL: Duration = Duration::from_secs(2);

/// The gRPC face of the order pipeline.
#[derive(Debug, Clone)]
pub struct OrdersApi {
    pipeline: Pipeline,
}

impl OrdersApi {
    /// Serves `pipeline`.
    pub fn new(pipeline: Pipeline) -> Self {
        Self { pipeline }
    }
}

/// A server hosting the Orders service.
pub fn server(pipeline: Pipeline, server: &ServerConfig) -> GrpcServer {
    GrpcServer::new("orders", server).add_service(
        OrdersServer::new(OrdersApi::new(pipeline))
            .max_decoding_message_size(server.max_message_bytes)
            .max_encoding_message_size(server.max_message_bytes),
    )
}

/// Encodes a listing position as an opaque page token.
pub fn page_token(cursor: &Cursor) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}:{}", ms(cursor.created_at), cursor.order_id))
}

/// Decodes a page token.
pub fn parse_page_token(token: &str) -> Result<Cursor, Error> {
    let bad = || Error::invalid("page_token", "is not a token this service issued");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (created, id) = raw.split_once(':').ok_or_else(bad)?;
    Ok(Cursor {
        created_at: utc(created.parse().map_err(|_| bad())?),
        order_id: id.to_owned(),
    })
}

fn is_final(status: i32) -> bool {
    status != pb::OrderStatus::PendingPayment as i32
        && status != pb::OrderStatus::Unspecified as i32
}

/// The stream type of WatchOrder.
pub type OrderStream = Pin<Box<dyn Stream<Item = Result<pb::Order, Status>> + Send>>;

/// Streams `order_id`'s current state, then each change, until a final status (or until the
/// receiver goes away).
pub async fn watch(pipeline: &Pipeline, order_id: String) -> Result<OrderStream, Error> {
    rules::text_id("order_id", &order_id)?;
    // Follow first, then read: no change can fall between the two.
    let mut updates = Box::pin(pipeline.events.follow(&order_id).await?);
    let current = order_pb(&pipeline.store.order(&order_id).await?);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let store = pipeline.store.clone();
    tokio::spawn(async move {
        let mut last = current.status;
        if tx.send(Ok(current)).await.is_err() || is_final(last) {
            return;
        }
        let mut poll = tokio::time::interval(WATCH_POLL);
        poll.tick().await;
        loop {
            let next = tokio::select! {
                update = updates.next() => match update {
                    Some(order) => Some(order),
                    None => return,
                },
                _ = poll.tick() => store.order(&order_id).await.ok().map(|o| order_pb(&o)),
                () = tx.closed() => return,
            };
            if let Some(order) = next.filter(|o| o.status != last) {
                last = order.status;
                if tx.send(Ok(order)).await.is_err() || is_final(last) {
                    return;
                }
            }
        }
    });
    Ok(Box::pin(ReceiverStream::new(rx)))
}

#[tonic::async_trait]
impl Orders for OrdersApi {
    async fn get_order(
        &self,
        request: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let order_id = request.into_inner().order_id;
        rules::text_id("order_id", &order_id).map_err(Error::from)?;
        let order = self.pipeline.store.order(&order_id).await?;
        Ok(Response::new(order_pb(&order)))
    }

    async fn list_orders(
        &self,
        request: Request<pb::ListOrdersRequest>,
    ) -> Result<Response<pb::ListOrdersResponse>, Status> {
        let request = request.into_inner();
        let filter = match request.filter {
            Some(Filter::UserId(user)) => {
                rules::text_id("user_id", &user).map_err(Error::from)?;
                OrderFilter::User(user)
            }
            Some(Filter::SaleId(sale)) => {
                rules::sale_id(&sale).map_err(Error::from)?;
                OrderFilter::Sale(sale)
            }
            None => return Err(Error::invalid("filter", "user_id or sale_id is required").into()),
        };
        let size = match request.page_size {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            n => {
                return Err(Error::invalid("page_size", format!("{n} is above {MAX_PAGE}")).into());
            }
        };
        let status = status_filter(request.status)?;
        let cursor = match request.page_token.as_str() {
            "" => None,
            token => Some(parse_page_token(token)?),
        };
        let mut rows = self
            .pipeline
            .store
            .list_orders(&filter, status, u64::from(size) + 1, cursor.as_ref())
            .await?;
        let next_page_token = if rows.len() > size as usize {
            rows.truncate(size as usize);
            rows.last()
                .map(|last| {
                    page_token(&Cursor {
                        created_at: last.created_at,
                        order_id: last.order_id.clone(),
                    })
                })
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListOrdersResponse {
            orders: rows.iter().map(order_pb).collect(),
            next_page_token,
        }))
    }

    async fn pay(&self, request: Request<pb::PayRequest>) -> Result<Response<pb::Order>, Status> {
        let request = request.into_inner();
        rules::text_id("order_id", &request.order_id).map_err(Error::from)?;
        rules::text_id("user_id", &request.user_id).map_err(Error::from)?;
        if request.payment_reference.is_empty() || request.payment_reference.len() > 256 {
            return Err(Error::invalid("payment_reference", "must be 1..=256 bytes").into());
        }
        let (order, changed) = self
            .pipeline
            .store
            .pay(
                &request.order_id,
                &request.user_id,
                &request.payment_reference,
            )
            .await?;
        if changed {
            crate::metrics::orders("paid", 1);
            self.pipeline.events.publish(&order).await;
            if let Err(e) = self.pipeline.sync_inventory(&order).await {
                tracing::warn!(order_id = %order.order_id, error = %e, "confirm deferred to the lifecycle worker");
            }
        }
        Ok(Response::new(order_pb(&order)))
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        let request = request.into_inner();
        rules::text_id("order_id", &request.order_id).map_err(Error::from)?;
        rules::text_id("user_id", &request.user_id).map_err(Error::from)?;
        let (order, changed) = self
            .pipeline
            .store
            .cancel(&request.order_id, &request.user_id)
            .await?;
        if changed {
            crate::metrics::orders("cancelled", 1);
            self.pipeline.events.publish(&order).await;
            if let Err(e) = self.pipeline.sync_inventory(&order).await {
                tracing::warn!(order_id = %order.order_id, error = %e, "release deferred to the lifecycle worker");
            }
        }
        Ok(Response::new(order_pb(&order)))
    }

    type WatchOrderStream = OrderStream;

    async fn watch_order(
        &self,
        request: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let stream = watch(&self.pipeline, request.into_inner().order_id).await?;
        Ok(Response::new(stream))
    }
}
