//! The baselines a run is measured against, in the same run on the same machine:
//! - `echo`: a bare tonic `FlashSale` server whose Purchase answers at once (the gRPC ceiling);
//! - `naive-postgres`: the design most teams start with, one transaction per attempt
//!   (`UPDATE stock … WHERE n >= q`, then `INSERT` the order), on the same Postgres;
//! - `redis-script`: the inventory's Reserve script called directly (no gRPC, no stream): the
//!   ceiling of stock decisions on this Redis.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Result;
use flashsale_inventory::{Inventory, ReserveRequest, SaleSpec};
use flashsale_proto::v1::{
    self as pb,
    flash_sale_server::{FlashSale, FlashSaleServer},
};
use futures::StreamExt;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use tonic::{Request, Response, Status};

/// Serves `service` on a fresh loopback port until the returned sender is dropped.
async fn serve<S>(
    service: FlashSaleServer<S>,
) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)>
where
    S: FlashSale,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = stopped.await;
                },
            ),
    );
    Ok((addr, stop))
}

fn not_here<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "a benchmark baseline only answers Purchase",
    ))
}

/// Purchase answers at once; nothing else is served.
#[derive(Debug, Clone, Default)]
pub(crate) struct Echo;

#[tonic::async_trait]
impl FlashSale for Echo {
    async fn purchase(
        &self,
        request: Request<pb::PurchaseRequest>,
    ) -> Result<Response<pb::PurchaseAccepted>, Status> {
        Ok(Response::new(pb::PurchaseAccepted {
            order_id: request.into_inner().idempotency_key,
            status: pb::OrderStatus::PendingPayment as i32,
            pay_deadline: None,
            quantity: 1,
            amount_minor: 0,
            duplicate: false,
        }))
    }
    async fn get_order(
        &self,
        _: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        not_here()
    }
    type WatchOrderStream = flashsale_gateway::grpc::OrderStream;
    async fn watch_order(
        &self,
        _: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        not_here()
    }
    async fn get_sale(
        &self,
        _: Request<pb::GetSaleRequest>,
    ) -> Result<Response<pb::SaleView>, Status> {
        not_here()
    }
    async fn list_sales(
        &self,
        _: Request<pb::ListSalesRequest>,
    ) -> Result<Response<pb::ListSalesResponse>, Status> {
        not_here()
    }
    async fn join_queue(
        &self,
        _: Request<pb::JoinQueueRequest>,
    ) -> Result<Response<pb::QueueStanding>, Status> {
        not_here()
    }
    async fn queue_status(
        &self,
        _: Request<pb::QueueStatusRequest>,
    ) -> Result<Response<pb::QueueStanding>, Status> {
        not_here()
    }
    type WatchQueueStream = flashsale_gateway::grpc::QueueStream;
    async fn watch_queue(
        &self,
        _: Request<pb::QueueStatusRequest>,
    ) -> Result<Response<Self::WatchQueueStream>, Status> {
        not_here()
    }
}

/// Starts the echo server.
pub(crate) async fn echo() -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    serve(FlashSaleServer::new(Echo)).await
}

/// One transaction per attempt against a stock row.
#[derive(Debug, Clone)]
pub(crate) struct NaivePostgres {
    db: DatabaseConnection,
}

/// Creates the naive tables (dropping earlier ones) with `stock` units for `sale_id`.
pub(crate) async fn naive_postgres(
    db: DatabaseConnection,
    sale_id: &str,
    stock: u64,
) -> Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    db.execute_unprepared(
        "DROP TABLE IF EXISTS naive_orders; DROP TABLE IF EXISTS naive_stock;
         CREATE TABLE naive_stock (sale_id text PRIMARY KEY, available bigint NOT NULL);
         CREATE TABLE naive_orders (order_id bigserial PRIMARY KEY, sale_id text NOT NULL,
             user_id text NOT NULL, quantity int NOT NULL, created_at timestamptz NOT NULL DEFAULT now());",
    )
    .await?;
    db.execute_raw(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO naive_stock VALUES ($1, $2)",
        [sale_id.into(), (stock as i64).into()],
    ))
    .await?;
    serve(FlashSaleServer::new(NaivePostgres { db })).await
}

fn sold_out() -> Status {
    let mut status = Status::resource_exhausted("sold out");
    status.metadata_mut().insert(
        flashsale_runtime::status::REASON_METADATA,
        "SOLD_OUT".parse().expect("ascii"),
    );
    status
}

#[tonic::async_trait]
impl FlashSale for NaivePostgres {
    async fn purchase(
        &self,
        request: Request<pb::PurchaseRequest>,
    ) -> Result<Response<pb::PurchaseAccepted>, Status> {
        let request = request.into_inner();
        // The naive design keeps no per-user state; the key is recorded with the order.
        let user = request.idempotency_key.clone();
        let quantity = i64::from(request.quantity.max(1));
        let run = async {
            let txn = self.db.begin().await?;
            let taken = txn
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "UPDATE naive_stock SET available = available - $2 WHERE sale_id = $1 AND available >= $2",
                    [request.sale_id.clone().into(), quantity.into()],
                ))
                .await?
                .rows_affected();
            let id = if taken == 1 {
                let row = txn
                    .query_one_raw(Statement::from_sql_and_values(
                        DbBackend::Postgres,
                        "INSERT INTO naive_orders (sale_id, user_id, quantity) VALUES ($1, $2, $3) RETURNING order_id",
                        [request.sale_id.clone().into(), user.into(), (quantity as i32).into()],
                    ))
                    .await?;
                row.and_then(|r| r.try_get_by_index::<i64>(0).ok())
            } else {
                None
            };
            txn.commit().await?;
            Ok::<_, sea_orm::DbErr>(id)
        };
        match run.await {
            Ok(Some(id)) => Ok(Response::new(pb::PurchaseAccepted {
                order_id: id.to_string(),
                status: pb::OrderStatus::PendingPayment as i32,
                pay_deadline: None,
                quantity: quantity as u32,
                amount_minor: 0,
                duplicate: false,
            })),
            Ok(None) => Err(sold_out()),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
    async fn get_order(
        &self,
        _: Request<pb::GetOrderRequest>,
    ) -> Result<Response<pb::Order>, Status> {
        not_here()
    }
    type WatchOrderStream = flashsale_gateway::grpc::OrderStream;
    async fn watch_order(
        &self,
        _: Request<pb::WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        not_here()
    }
    async fn get_sale(
        &self,
        _: Request<pb::GetSaleRequest>,
    ) -> Result<Response<pb::SaleView>, Status> {
        not_here()
    }
    async fn list_sales(
        &self,
        _: Request<pb::ListSalesRequest>,
    ) -> Result<Response<pb::ListSalesResponse>, Status> {
        not_here()
    }
    async fn join_queue(
        &self,
        _: Request<pb::JoinQueueRequest>,
    ) -> Result<Response<pb::QueueStanding>, Status> {
        not_here()
    }
    async fn queue_status(
        &self,
        _: Request<pb::QueueStatusRequest>,
    ) -> Result<Response<pb::QueueStanding>, Status> {
        not_here()
    }
    type WatchQueueStream = flashsale_gateway::grpc::QueueStream;
    async fn watch_queue(
        &self,
        _: Request<pb::QueueStatusRequest>,
    ) -> Result<Response<Self::WatchQueueStream>, Status> {
        not_here()
    }
}

/// Reservations per second when the inventory's Reserve script is called directly, `in_flight`
/// at a time, on a fresh sale with more stock than the calls.
pub(crate) async fn redis_script(
    inventory: &Inventory,
    calls: u32,
    in_flight: usize,
) -> Result<f64> {
    let now = flashsale_proto::time::now_ms();
    let sale = SaleSpec {
        sale_id: format!("bench-redis-{now}"),
        stock: u64::from(calls) + 1,
        per_user_limit: 1,
        starts_at_ms: now - 1_000,
        ends_at_ms: now + 3_600_000,
        reservation_hold: Duration::from_secs(3600),
        stock_buckets: 1,
    };
    inventory.load_sale(&sale).await?;
    let reserved = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    futures::stream::iter(0..calls)
        .for_each_concurrent(in_flight, |i| {
            let (inventory, reserved, sale_id) =
                (inventory.clone(), reserved.clone(), sale.sale_id.clone());
            async move {
                let request = ReserveRequest {
                    sale_id,
                    user_id: format!("u{i}"),
                    quantity: 1,
                    idempotency_key: format!("k{i}"),
                };
                if let Ok(r) = inventory.reserve(&request).await
                    && matches!(r.outcome, flashsale_inventory::Outcome::Reserved { .. })
                {
                    reserved.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await;
    Ok(reserved.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
