//! Pages of sales and purchases, judged by the gateway itself.

use flashsale_proto::v1::{self as pb};
use tonic::Code;

use crate::{harness, reason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sales_page_through_in_start_order_and_a_forged_token_unlocks_nothing() {
    let mut h = harness().await;
    // Five sales: two scheduled (later), three active (started), inserted out of order.
    for (id, starts_in) in [
        ("s-c", -3_000),
        ("s-e", 60_000),
        ("s-a", -5_000),
        ("s-d", 30_000),
        ("s-b", -4_000),
    ] {
        h.sale(id, starts_in).await;
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let request = h.as_buyer(
            "alice",
            pb::ListSalesRequest {
                page_size: 2,
                page_token: token.clone(),
                ..Default::default()
            },
        );
        let page = h.buyers.list_sales(request).await.unwrap().into_inner();
        pages += 1;
        seen.extend(page.sales.into_iter().map(|s| s.sale_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        ["s-a", "s-b", "s-c", "s-d", "s-e"],
        "every sale once, by start time"
    );
    assert_eq!(pages, 3);

    let request = h.as_buyer(
        "alice",
        pb::ListSalesRequest {
            state: pb::SaleState::Scheduled as i32,
            ..Default::default()
        },
    );
    let scheduled = h.buyers.list_sales(request).await.unwrap().into_inner();
    let ids: Vec<_> = scheduled.sales.iter().map(|s| s.sale_id.as_str()).collect();
    assert_eq!(ids, ["s-d", "s-e"]);

    for (page_token, page_size, state) in [
        ("not-a-token".to_owned(), 2, 0),
        // "1:1": well formed, a position before every sale (see below).
        (String::from("MTox"), 2, 0),
        (String::new(), 201, 0),
        (String::new(), 2, 99),
    ] {
        let request = h.as_buyer(
            "alice",
            pb::ListSalesRequest {
                page_size,
                page_token: page_token.clone(),
                state,
            },
        );
        match h.buyers.list_sales(request).await {
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::InvalidArgument,
                    "{page_token} {page_size} {state}"
                );
                assert_eq!(reason(&status), "INVALID_ARGUMENT");
            }
            // A well-formed cursor is only a position: it shows sales after it, nothing more.
            Ok(page) => {
                assert_eq!(page_token, "MTox");
                let ids: Vec<_> = page
                    .into_inner()
                    .sales
                    .into_iter()
                    .map(|s| s.sale_id)
                    .collect();
                assert_eq!(ids, ["s-a", "s-b"], "a position before every sale");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_is_judged_before_any_backend_and_an_absent_inventory_is_unavailable() {
    let mut h = harness().await;
    h.sale("open", -1_000).await;
    let buy = |sale_id: &str, key: &str| pb::PurchaseRequest {
        sale_id: sale_id.to_owned(),
        quantity: 0,
        idempotency_key: key.to_owned(),
        purchase_token: String::new(),
    };

    let anonymous = h
        .buyers
        .purchase(tonic::Request::new(buy("open", "k1")))
        .await;
    assert_eq!(anonymous.unwrap_err().code(), Code::Unauthenticated);

    let bad_key = h
        .buyers
        .purchase(h.as_buyer("bob", buy("open", "bad key\n")))
        .await;
    let status = bad_key.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let unknown = h
        .buyers
        .purchase(h.as_buyer("bob", buy("no-such-sale", "k1")))
        .await;
    let status = unknown.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // The sale is real and open; the inventory is not there: nothing was decided, so the buyer
    // hears UNAVAILABLE (retry with the same key), never a refusal or an acceptance.
    let absent = h
        .buyers
        .purchase(h.as_buyer("bob", buy("open", "k1")))
        .await;
    let status = absent.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "UNAVAILABLE");

    let view = h
        .buyers
        .get_sale(h.as_buyer(
            "bob",
            pb::GetSaleRequest {
                sale_id: "open".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(view.sale.unwrap().sale_id, "open");
    assert!(
        view.stock.is_none() && !view.sold_out,
        "no stock figures, and not called sold out"
    );

    let not_admin = h
        .admin
        .end_sale(h.as_buyer(
            "bob",
            pb::EndSaleRequest {
                sale_id: "open".into(),
            },
        ))
        .await;
    assert_eq!(not_admin.unwrap_err().code(), Code::PermissionDenied);
}
