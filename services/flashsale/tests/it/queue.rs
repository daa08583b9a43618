//! A sale behind a waiting room, through the real processes: buyers join, are admitted in
//! arrival order at the room's rate with at most `active_cap` admitted at once, buy with their
//! single-use purchase token, and hear sold out together; bad tickets and tokens are refused.

use std::{collections::BTreeMap, time::Duration};

use flashsale_proto::{
    time::duration,
    v1::{self as pb, flash_sale_client::FlashSaleClient},
};
use flashsale_runtime::status::reason_of;
use tonic::{Code, transport::Channel};

use crate::{
    e2e::{authorized, create_sale, create_sale_with},
    mesh::Mesh,
};

async fn create_room_sale(mesh: &Mesh, stock: u64) -> pb::Sale {
    create_sale_with(mesh, stock, 1, 600_000, |sale| {
        sale.waiting_room = Some(pb::WaitingRoom {
            admissions_per_second: 20.0,
            active_cap: 4,
            admission_window: Some(duration(30_000)),
        });
    })
    .await
}

struct Buyer {
    user: String,
    token: String,
    ticket: String,
    number: u64,
}

async fn purchase(
    client: &mut FlashSaleClient<Channel>,
    buyer: &Buyer,
    sale_id: &str,
    purchase_token: &str,
    key: &str,
) -> Result<pb::PurchaseAccepted, tonic::Status> {
    client
        .purchase(authorized(
            pb::PurchaseRequest {
                sale_id: sale_id.into(),
                quantity: 1,
                idempotency_key: key.into(),
                purchase_token: purchase_token.into(),
            },
            &buyer.token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_room_admits_in_arrival_order_and_tokens_buy_once() {
    let mesh = Mesh::start("waiting room").await;
    let sale = create_room_sale(&mesh, 10).await;
    assert!(sale.waiting_room.is_some(), "the sale keeps its room");
    let sale_id = sale.sale_id.clone();
    let mut client = FlashSaleClient::new(mesh.channel(mesh.ports.gateway).await);
    let signer = mesh.signer();

    // 30 buyers join one after the other: their numbers are their arrival order.
    let mut buyers = Vec::new();
    for i in 0..30 {
        let user = format!("queued-{i}");
        let token = signer.token(&user, false, Duration::from_secs(600));
        let joined = client
            .join_queue(authorized(
                pb::JoinQueueRequest {
                    sale_id: sale_id.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(joined.number, i + 1);
        let again = client
            .join_queue(authorized(
                pb::JoinQueueRequest {
                    sale_id: sale_id.clone(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.number, i + 1, "joining again keeps the place");
        buyers.push(Buyer {
            user,
            token,
            ticket: joined.ticket,
            number: joined.number,
        });
    }

    // While stock lasts: no purchase without a token, and a ticket is not one.
    let status = purchase(&mut client, &buyers[0], &sale_id, "", "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        reason_of(&status).as_deref(),
        Some("PURCHASE_TOKEN_REQUIRED")
    );
    let status = purchase(&mut client, &buyers[0], &sale_id, &buyers[0].ticket, "")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    // Poll everyone; buy as soon as admitted. Whoever is admitted, everyone before them is.
    let mut admitted_order: Vec<u64> = Vec::new();
    let mut tokens: BTreeMap<u64, String> = BTreeMap::new();
    let mut sold = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sold < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "admitted {admitted_order:?}"
        );
        for buyer in &buyers {
            if tokens.contains_key(&buyer.number) {
                continue;
            }
            let standing = client
                .queue_status(authorized(
                    pb::QueueStatusRequest {
                        sale_id: sale_id.clone(),
                        ticket: buyer.ticket.clone(),
                    },
                    &buyer.token,
                ))
                .await
                .unwrap()
                .into_inner();
            match pb::QueueState::try_from(standing.state).unwrap() {
                pb::QueueState::Admitted => {
                    admitted_order.push(buyer.number);
                    tokens.insert(buyer.number, standing.purchase_token);
                }
                pb::QueueState::Waiting => {
                    assert!(standing.position >= 1);
                    assert!(standing.estimated_wait.is_some());
                }
                other => panic!("{other:?} before the stock is gone"),
            }
        }
        // The admitted ones buy (one at a time, so the active cap shows).
        let ready: Vec<(u64, String)> = tokens
            .iter()
            .filter(|(_, t)| !t.is_empty())
            .map(|(n, t)| (*n, t.clone()))
            .collect();
        for (number, purchase_token) in ready {
            let buyer = &buyers[number as usize - 1];
            if sold >= 10 {
                break;
            }
            let key = format!("buy-{}", buyer.user);
            purchase(&mut client, buyer, &sale_id, &purchase_token, &key)
                .await
                .unwrap();
            sold += 1;
            if sold == 10 {
                // The last unit: from here on Purchase answers SOLD_OUT from memory first.
                break;
            }
            // Spent: once more with another key is refused; the same key is the same purchase.
            let again = purchase(&mut client, buyer, &sale_id, &purchase_token, "other").await;
            let status = again.unwrap_err();
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert_eq!(reason_of(&status).as_deref(), Some("PURCHASE_TOKEN_USED"));
            let retry = purchase(&mut client, buyer, &sale_id, &purchase_token, &key).await;
            assert!(
                retry.is_ok() || retry.as_ref().unwrap_err().code() == Code::AlreadyExists,
                "{retry:?}"
            );
            tokens.insert(number, String::new());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut sorted = admitted_order.clone();
    sorted.sort_unstable();
    assert_eq!(admitted_order, sorted, "admission order is arrival order");
    assert_eq!(
        sorted,
        (1..=admitted_order.len() as u64).collect::<Vec<_>>()
    );

    // Stock gone: every queued buyer hears sold out.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for buyer in buyers.iter().skip(10) {
        loop {
            let standing = client
                .queue_status(authorized(
                    pb::QueueStatusRequest {
                        sale_id: sale_id.clone(),
                        ticket: buyer.ticket.clone(),
                    },
                    &buyer.token,
                ))
                .await;
            match standing.map(|s| pb::QueueState::try_from(s.into_inner().state).unwrap()) {
                Ok(pb::QueueState::SoldOut) => break,
                other => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{} hears {other:?}",
                        buyer.user
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    // Refusals, each with its reason.
    let alice = &buyers[12];
    let bob = &buyers[13];
    let expect =
        |result: Result<tonic::Response<pb::QueueStanding>, tonic::Status>, code, reason: &str| {
            let status = result.unwrap_err();
            assert_eq!(
                (status.code(), reason_of(&status).as_deref()),
                (code, Some(reason)),
                "{status:?}"
            );
        };
    // Another buyer's ticket; a forged one.
    expect(
        client
            .queue_status(authorized(
                pb::QueueStatusRequest {
                    sale_id: sale_id.clone(),
                    ticket: alice.ticket.clone(),
                },
                &bob.token,
            ))
            .await,
        Code::PermissionDenied,
        "QUEUE_TOKEN_REFUSED",
    );
    let (payload, _) = alice.ticket.split_once('.').unwrap();
    expect(
        client
            .queue_status(authorized(
                pb::QueueStatusRequest {
                    sale_id: sale_id.clone(),
                    ticket: format!("{payload}.AAAA"),
                },
                &alice.token,
            ))
            .await,
        Code::PermissionDenied,
        "QUEUE_TOKEN_REFUSED",
    );
    // A sale without a room has no queue.
    let plain = create_sale(&mesh, 5, 1, 600_000).await;
    expect(
        client
            .join_queue(authorized(
                pb::JoinQueueRequest {
                    sale_id: plain.sale_id,
                },
                &alice.token,
            ))
            .await,
        Code::FailedPrecondition,
        "NO_WAITING_ROOM",
    );
}
