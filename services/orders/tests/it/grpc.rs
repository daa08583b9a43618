use std::time::Duration;

use flashsale_proto::v1::{self as pb, list_orders_request::Filter, orders_client::OrdersClient};
use flashsale_runtime::status::reason_of;
use futures::StreamExt;
use tonic::{Code, transport::Channel};

use crate::{Harness, harness, publish_all};

async fn serve(h: &Harness) -> OrdersClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = flashsale_orders::grpc::server(h.pipeline.clone(), &Default::default());
    tokio::spawn(server.serve(listener, h.shutdown.wait()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    OrdersClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_through_every_order_once() {
    let h = harness().await;
    let window = Duration::from_secs(900);
    let sale = h.sale(120, 120, window).await;
    let mut events = Vec::new();
    for _ in 0..45 {
        events.push(h.reserve(&sale, "buyer", window).await);
    }
    for i in 0..5 {
        events.push(h.reserve(&sale, &format!("other{i}"), window).await);
    }
    publish_all(&h.js, &h.config.stream.subject_prefix, &events, 32).await;
    let (stop, task) = h.spawn_consumer();
    h.drained(Duration::from_secs(30)).await;
    stop.trigger();
    task.await.unwrap();

    let mut client = serve(&h).await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_orders(pb::ListOrdersRequest {
                filter: Some(Filter::UserId("buyer".into())),
                status: 0,
                page_size: 10,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.orders.len() <= 10);
        seen.extend(page.orders.into_iter().map(|o| {
            (
                o.created_at.unwrap().seconds,
                o.created_at.unwrap().nanos,
                o.order_id,
            )
        }));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 45);
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(seen, sorted, "newest first");
    sorted.dedup();
    assert_eq!(sorted.len(), 45, "no order twice");

    let by_sale = client
        .list_orders(pb::ListOrdersRequest {
            filter: Some(Filter::SaleId(sale.sale_id.clone())),
            status: pb::OrderStatus::PendingPayment as i32,
            page_size: 500,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_sale.orders.len(), 50);

    for bad in [
        pb::ListOrdersRequest {
            filter: None,
            status: 0,
            page_size: 0,
            page_token: String::new(),
        },
        pb::ListOrdersRequest {
            filter: Some(Filter::UserId("b".into())),
            status: 0,
            page_size: 501,
            page_token: String::new(),
        },
        pb::ListOrdersRequest {
            filter: Some(Filter::UserId("b".into())),
            status: 42,
            page_size: 0,
            page_token: String::new(),
        },
        pb::ListOrdersRequest {
            filter: Some(Filter::UserId("b".into())),
            status: 0,
            page_size: 0,
            page_token: "%%%".into(),
        },
        pb::ListOrdersRequest {
            filter: Some(Filter::SaleId("{bad}".into())),
            status: 0,
            page_size: 0,
            page_token: String::new(),
        },
    ] {
        let status = client.list_orders(bad.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_order_follows_to_the_final_state() {
    let h = harness().await;
    let window = Duration::from_secs(900);
    let sale = h.sale(5, 1, window).await;
    let event = h.reserve(&sale, "w", window).await;
    let mut client = serve(&h).await;

    let missing = client
        .watch_order(pb::WatchOrderRequest {
            order_id: event.order_id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);

    publish_all(
        &h.js,
        &h.config.stream.subject_prefix,
        std::slice::from_ref(&event),
        1,
    )
    .await;
    let (stop, task) = h.spawn_consumer();
    h.drained(Duration::from_secs(30)).await;

    let mut updates = client
        .watch_order(pb::WatchOrderRequest {
            order_id: event.order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = updates.next().await.unwrap().unwrap();
    assert_eq!(first.status, pb::OrderStatus::PendingPayment as i32);

    // Pay through the service (retry while the inventory commit is still landing).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match client
            .pay(pb::PayRequest {
                order_id: event.order_id.clone(),
                user_id: "w".into(),
                payment_reference: "pay-1".into(),
            })
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == Code::Unavailable && tokio::time::Instant::now() < deadline => {
                assert_eq!(reason_of(&e).as_deref(), Some("ORDER_NOT_READY"));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    let last = tokio::time::timeout(Duration::from_secs(5), updates.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(last.status, pb::OrderStatus::Paid as i32);
    assert_eq!(last.payment_reference, "pay-1");
    assert!(
        updates.next().await.is_none(),
        "the stream ends after a final status"
    );

    let wrong_user = client
        .cancel(pb::CancelRequest {
            order_id: event.order_id.clone(),
            user_id: "someone-else".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_user.code(), Code::NotFound);
    let paid_again = client
        .cancel(pb::CancelRequest {
            order_id: event.order_id.clone(),
            user_id: "w".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (paid_again.code(), reason_of(&paid_again).as_deref()),
        (Code::FailedPrecondition, Some("ORDER_PAID"))
    );
    stop.trigger();
    task.await.unwrap();
}
