//! The gRPC face: bad input gets INVALID_ARGUMENT / NOT_FOUND with a reason, Redis down gets
//! UNAVAILABLE within a bounded time.

use std::time::{Duration, Instant};

use flashsale_inventory::Inventory;
use flashsale_proto::{
    time::{duration, timestamp},
    v1::{self as pb, inventory_client::InventoryClient},
};
use flashsale_runtime::{Shutdown, config::ServerConfig, status::reason_of};
use tonic::{Code, transport::Channel};

use crate::{inventory, redis_config};

async fn serve(inv: Inventory) -> (InventoryClient<Channel>, Shutdown) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = flashsale_inventory::grpc::server(inv, &ServerConfig::default());
    tokio::spawn(server.serve(listener, shutdown.wait()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (InventoryClient::new(channel), shutdown)
}

fn sale(id: &str, stock: u64, limit: u32) -> pb::Sale {
    let now = flashsale_proto::time::now_ms();
    pb::Sale {
        sale_id: id.into(),
        name: "test".into(),
        stock,
        per_user_limit: limit,
        unit_price_minor: 100,
        currency: "CNY".into(),
        starts_at: Some(timestamp(now - 1000)),
        ends_at: Some(timestamp(now + 3_600_000)),
        reservation_hold: Some(duration(30_000)),
        payment_window: None,
        state: 0,
        stock_buckets: 0,
        waiting_room: None,
    }
}

fn reserve(sale_id: &str, user: &str, quantity: u32) -> pb::ReserveRequest {
    pb::ReserveRequest {
        sale_id: sale_id.into(),
        user_id: user.into(),
        quantity,
        idempotency_key: String::new(),
    }
}

#[tokio::test]
async fn reserve_commit_confirm_over_grpc() {
    let (_redis, inv) = inventory(None).await;
    let (mut client, _shutdown) = serve(inv).await;
    let loaded = client
        .load_sale(pb::LoadSaleRequest {
            sale: Some(sale("g1", 5, 2)),
            refresh_only: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(loaded.created);
    let r = client
        .reserve(reserve("g1", "alice", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, pb::ReserveOutcome::Reserved as i32);
    assert_eq!(r.available, 3);
    let res = r.reservation.unwrap();
    let c = client
        .commit(pb::CommitRequest {
            sale_id: "g1".into(),
            reservation_id: res.reservation_id.clone(),
            hold_until: Some(timestamp(flashsale_proto::time::now_ms() + 60_000)),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(c.state, pb::ReservationState::Committed as i32);
    let p = client
        .confirm(pb::ConfirmRequest {
            sale_id: "g1".into(),
            reservation_id: res.reservation_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.state, pb::ReservationState::Confirmed as i32);
    let refused = client
        .release(pb::ReleaseRequest {
            sale_id: "g1".into(),
            reservation_id: res.reservation_id,
            reason: pb::ReleaseReason::Cancelled as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        reason_of(&refused).as_deref(),
        Some("RESERVATION_CONFIRMED")
    );
    let stock = client
        .get_stock(pb::GetStockRequest {
            sale_id: "g1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (stock.total, stock.available, stock.held, stock.sold),
        (5, 3, 0, 2)
    );
    let sold_out = client
        .reserve(reserve("g1", "bob", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sold_out.outcome, pb::ReserveOutcome::Reserved as i32);
    let sold_out = client
        .reserve(reserve("g1", "carol", 2))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sold_out.outcome, pb::ReserveOutcome::SoldOut as i32);
    assert!(sold_out.reservation.is_none());
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_and_changes_nothing() {
    let (_redis, inv) = inventory(None).await;
    let (mut client, _shutdown) = serve(inv.clone()).await;
    client
        .load_sale(pb::LoadSaleRequest {
            sale: Some(sale("g2", 5, 2)),
            refresh_only: false,
        })
        .await
        .unwrap();

    let long = "x".repeat(129);
    let cases: Vec<(pb::ReserveRequest, Code, &str)> = vec![
        (reserve("", "u", 1), Code::InvalidArgument, "sale_id"),
        (reserve(&long, "u", 1), Code::InvalidArgument, "sale_id"),
        (reserve("g2", "", 1), Code::InvalidArgument, "user_id"),
        (reserve("g2", &long, 1), Code::InvalidArgument, "user_id"),
        (reserve("g2", "u", 0), Code::InvalidArgument, "quantity"),
        (reserve("g2", "u", 3), Code::InvalidArgument, "quantity"),
        (reserve("unknown-sale", "u", 1), Code::NotFound, ""),
    ];
    for (request, code, field) in cases {
        let status = client.reserve(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), code, "{request:?}: {status:?}");
        assert!(reason_of(&status).is_some(), "has a reason: {status:?}");
        if !field.is_empty() {
            assert_eq!(
                flashsale_runtime::status::detail_of(&status, "field").as_deref(),
                Some(field)
            );
        }
    }
    let mut no_window = sale("g3", 5, 1);
    no_window.ends_at = None;
    let status = client
        .load_sale(pb::LoadSaleRequest {
            sale: Some(no_window),
            refresh_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .load_sale(pb::LoadSaleRequest {
            sale: None,
            refresh_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .release(pb::ReleaseRequest {
            sale_id: "g2".into(),
            reservation_id: "r".into(),
            reason: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .commit(pb::CommitRequest {
            sale_id: "g2".into(),
            reservation_id: "r".into(),
            hold_until: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let stock = inv.stock("g2").await.unwrap();
    assert_eq!((stock.available, stock.held), (5, 0), "nothing changed");
}

#[tokio::test]
async fn redis_down_is_unavailable_within_the_timeout_and_recovers() {
    let (mut redis, _) = inventory(None).await;
    let mut config = redis_config(&redis.url());
    config.command_timeout = Duration::from_millis(200);
    let inv = Inventory::connect(&config, None).await.unwrap();
    let (mut client, _shutdown) = serve(inv).await;
    client
        .load_sale(pb::LoadSaleRequest {
            sale: Some(sale("g4", 5, 1)),
            refresh_only: false,
        })
        .await
        .unwrap();

    redis.kill();
    for _ in 0..3 {
        let started = Instant::now();
        let status = client.reserve(reserve("g4", "u", 1)).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(reason_of(&status).as_deref(), Some("REDIS_UNAVAILABLE"));
        assert!(
            took < Duration::from_millis(1_000),
            "answered in {took:?}, bound is 2x 200ms + slack"
        );
    }

    redis.restart().await.unwrap();
    // Redis came back empty: the sale must be loaded again (reconciliation's job); the
    // service answers again without a restart of its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client
            .load_sale(pb::LoadSaleRequest {
                sale: Some(sale("g4", 5, 1)),
                refresh_only: false,
            })
            .await
        {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.code(), Code::Unavailable);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("did not recover: {e:?}"),
        }
    }
    let r = client
        .reserve(reserve("g4", "u", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, pb::ReserveOutcome::Reserved as i32);
}
