//! Bad input on every RPC of every service, as raw bytes on the wire: empty, oversized (1 MiB
//! fields, and messages over the server's size limit), negative, unicode edge cases, unknown
//! enum values and malformed protobuf. Each is answered with the expected status; no process
//! panics or dies; Redis, Postgres and JetStream hold exactly what they held before.
//!
//! Malformed protobuf is answered INTERNAL ("failed to decode Protobuf message"), as every gRPC
//! implementation does (grpc-go, grpc-java, tonic); a message over `server.max_message_bytes`
//! OUT_OF_RANGE before it is read.

use std::time::Duration;

use bytes::{Buf, BufMut};
use flashsale_gateway::auth::bearer;
use flashsale_proto::{
    envoy::{
        extensions::common::ratelimit::v3::{
            RateLimitDescriptor,
            rate_limit_descriptor::{Entry, RateLimitOverride},
        },
        service::ratelimit::v3::RateLimitRequest,
    },
    time::{duration, timestamp},
    v1 as pb,
};
use prost::Message;
use sqlx::Connection;
use tonic::{
    Code,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};

use crate::{
    e2e::create_sale,
    mesh::{Extra, Mesh},
};

/// Passes bytes through untouched, so a test can send what no generated client would.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// Who calls.
#[derive(Debug, Clone, Copy)]
enum Caller {
    /// An internal service: no token.
    Service,
    /// A buyer's token.
    Buyer,
    /// An operator's token (admin claim).
    Admin,
}

struct Rpc {
    path: &'static str,
    port: u16,
    caller: Caller,
    streaming: bool,
    cases: Vec<(&'static str, Vec<u8>, Code)>,
}

/// Sends `body` to `path` and returns the status it ended with (OK for an answer).
async fn call(
    channel: Channel,
    path: &'static str,
    body: Vec<u8>,
    token: Option<&str>,
    streaming: bool,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(body);
    request.set_timeout(Duration::from_secs(10));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", bearer(token));
    }
    let path = http::uri::PathAndQuery::from_static(path);
    if streaming {
        match grpc.server_streaming(request, path, Raw).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
                    Ok(Err(status)) => status,
                    Ok(Ok(_)) | Err(_) => tonic::Status::ok(""),
                }
            }
        }
    } else {
        match grpc.unary(request, path, Raw).await {
            Ok(_) => tonic::Status::ok(""),
            Err(status) => status,
        }
    }
}

/// What the stores hold, as digests: every Redis key with its serialized value, every row of
/// `sales` and `orders`, and the JetStream streams' sequence numbers.
async fn snapshot(mesh: &Mesh) -> Vec<String> {
    let digest = "local out = {} \
        for _, k in ipairs(redis.call('KEYS', '*')) do \
          table.insert(out, k .. '=' .. redis.sha1hex(redis.call('DUMP', k))) \
        end \
        table.sort(out) \
        return out";
    let redis = std::process::Command::new("redis-cli")
        .args(["-p", &mesh.redis.port().to_string(), "EVAL", digest, "0"])
        .output()
        .expect("redis-cli runs");
    assert!(redis.status.success(), "{redis:?}");
    let mut state: Vec<String> = String::from_utf8_lossy(&redis.stdout)
        .lines()
        .map(|l| format!("redis {l}"))
        .collect();

    let mut pg = sqlx::PgConnection::connect(&mesh.db_url).await.unwrap();
    for (table, sql) in [
        (
            "sales",
            "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM sales t",
        ),
        (
            "orders",
            "SELECT count(*)::text || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM orders t",
        ),
    ] {
        let digest: String = sqlx::query_scalar(sql).fetch_one(&mut pg).await.unwrap();
        state.push(format!("postgres {table} {digest}"));
    }

    let client = async_nats::connect(mesh.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for name in ["ORDERS", "ORDERS_DLQ"] {
        let info = js
            .get_stream(name)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .clone();
        state.push(format!(
            "jetstream {name} messages {} last {}",
            info.messages, info.last_sequence
        ));
    }
    state
}

/// The generic malformed inputs every RPC gets.
fn malformed() -> Vec<(&'static str, Vec<u8>, Code)> {
    let mut varint = vec![0x08];
    varint.extend([0xff; 10]);
    varint.push(0x01);
    vec![
        // Field 1, length-delimited, says 5 bytes and carries 1.
        ("truncated field", vec![0x0a, 0x05, b'a'], Code::Internal),
        ("varint of 11 bytes", varint, Code::Internal),
        // A group end tag with no group open.
        ("stray end-group tag", vec![0x0c], Code::Internal),
        (
            "message over the size limit (5 MiB)",
            vec![0x7a; 5 << 20],
            Code::OutOfRange,
        ),
    ]
}

/// Field 1 as a string of invalid UTF-8.
fn bad_utf8() -> Vec<u8> {
    vec![0x0a, 0x02, 0xc3, 0x28]
}

/// `uint32` field `number` sent as the varint of -1 (how a careless client encodes a negative).
fn negative_u32(number: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    prost::encoding::encode_key(number, prost::encoding::WireType::Varint, &mut bytes);
    prost::encoding::encode_varint(u64::MAX, &mut bytes);
    bytes
}

fn enc<M: Message>(message: M) -> Vec<u8> {
    message.encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_answers_bad_input_with_a_status_and_changes_nothing() {
    let logs = tempfile::tempdir().unwrap();
    let mut mesh = Mesh::start_with(
        "payment window 10 min",
        Extra {
            log_dir: Some(logs.path().to_path_buf()),
            // WatchOrder of an unknown order waits this long for it to be written.
            env: vec![("FLASHSALE_GATEWAY__WATCH_WAIT".into(), "1s".into())],
            ..Extra::default()
        },
    )
    .await;
    let sale = create_sale(&mesh, 10, 2, 600_000).await;
    let sid = sale.sale_id.clone();
    let big = "x".repeat(1 << 20);
    let now = flashsale_proto::time::now_ms();
    let good_sale = || pb::Sale {
        sale_id: "badinput-sale".into(),
        name: "bad input".into(),
        stock: 5,
        per_user_limit: 1,
        unit_price_minor: 100,
        currency: "EUR".into(),
        starts_at: Some(timestamp(now)),
        ends_at: Some(timestamp(now + 3_600_000)),
        reservation_hold: Some(duration(30_000)),
        payment_window: Some(duration(600_000)),
        state: 0,
        stock_buckets: 0,
        waiting_room: None,
    };
    let sale_with = |edit: fn(&mut pb::Sale)| {
        let mut sale = good_sale();
        edit(&mut sale);
        Some(sale)
    };
    // Sales that must be refused, for CreateSale, LoadSale and Rebuild alike.
    let bad_sales = || -> Vec<(&'static str, Option<pb::Sale>)> {
        vec![
            ("no sale", None),
            ("stock 0", sale_with(|s| s.stock = 0)),
            ("negative price", sale_with(|s| s.unit_price_minor = -1)),
            ("per-user limit 0", sale_with(|s| s.per_user_limit = 0)),
            (
                "ends before it starts",
                sale_with(|s| s.ends_at = Some(timestamp(1_000))),
            ),
            (
                "negative timestamp nanos",
                sale_with(|s| {
                    s.starts_at = Some(prost_types::Timestamp {
                        seconds: 1,
                        nanos: -1,
                    })
                }),
            ),
            (
                "negative hold",
                sale_with(|s| {
                    s.reservation_hold = Some(prost_types::Duration {
                        seconds: -30,
                        nanos: 0,
                    })
                }),
            ),
            ("1 MiB name", sale_with(|s| s.name = "n".repeat(1 << 20))),
            (
                "currency not ISO 4217",
                sale_with(|s| s.currency = "€€".into()),
            ),
            (
                "sale id with unicode",
                sale_with(|s| s.sale_id = "sale-🛒".into()),
            ),
            (
                "sale id with a brace",
                sale_with(|s| s.sale_id = "sale-{x}".into()),
            ),
        ]
    };
    // Ids every id field gets: (what, value, code when the rest is fine).
    let bad_ids = |unicode_ok: Code| -> Vec<(&'static str, String, Code)> {
        vec![
            ("empty id", String::new(), Code::InvalidArgument),
            ("1 MiB id", big.clone(), Code::InvalidArgument),
            ("NUL in id", "a\0b".into(), Code::InvalidArgument),
            ("escape in id", "a\u{1b}[31m".into(), Code::InvalidArgument),
            (
                "right-to-left override in id",
                "a\u{202e}b".into(),
                unicode_ok,
            ),
            ("emoji id", "🛒🛒".into(), unicode_ok),
            ("combining mark id", "e\u{301}".into(), unicode_ok),
        ]
    };
    let id_cases = |unicode_ok: Code, make: &dyn Fn(String) -> Vec<u8>| {
        bad_ids(unicode_ok)
            .into_iter()
            .map(|(what, id, code)| (what, make(id), code))
            .collect::<Vec<_>>()
    };
    // Sale ids allow ASCII only: every unicode one is refused.
    let sale_id_cases = |make: &dyn Fn(String) -> Vec<u8>| id_cases(Code::InvalidArgument, make);

    let p = mesh.ports;
    let mut rpcs: Vec<Rpc> = Vec::new();
    let mut rpc = |path, port, caller, streaming, mut cases: Vec<(&'static str, Vec<u8>, Code)>| {
        cases.extend(malformed());
        rpcs.push(Rpc {
            path,
            port,
            caller,
            streaming,
            cases,
        });
    };

    // The gateway: FlashSale.
    let purchase = |sale_id: String, quantity: u32, key: String| {
        enc(pb::PurchaseRequest {
            sale_id,
            quantity,
            idempotency_key: key,
            purchase_token: String::new(),
        })
    };
    let mut cases = sale_id_cases(&|id| purchase(id, 1, "k".into()));
    cases.extend([
        ("empty request", Vec::new(), Code::InvalidArgument),
        (
            "quantity over the limit",
            purchase(sid.clone(), 3, "k".into()),
            Code::InvalidArgument,
        ),
        (
            "quantity u32::MAX",
            purchase(sid.clone(), u32::MAX, "k".into()),
            Code::InvalidArgument,
        ),
        (
            "quantity -1",
            [purchase(sid.clone(), 1, "k".into()), negative_u32(2)].concat(),
            Code::InvalidArgument,
        ),
        (
            "1 MiB idempotency key",
            purchase(sid.clone(), 1, big.clone()),
            Code::InvalidArgument,
        ),
        (
            "control character in key",
            purchase(sid.clone(), 1, "k\u{7}".into()),
            Code::InvalidArgument,
        ),
        ("invalid UTF-8", bad_utf8(), Code::Internal),
    ]);
    rpc(
        "/flashsale.v1.FlashSale/Purchase",
        p.gateway,
        Caller::Buyer,
        false,
        cases,
    );
    for (path, streaming) in [
        ("/flashsale.v1.FlashSale/GetOrder", false),
        ("/flashsale.v1.FlashSale/WatchOrder", true),
    ] {
        let mut cases = id_cases(Code::NotFound, &|order_id| {
            enc(pb::GetOrderRequest { order_id })
        });
        cases.push(("invalid UTF-8", bad_utf8(), Code::Internal));
        rpc(path, p.gateway, Caller::Buyer, streaming, cases);
    }
    let mut cases = sale_id_cases(&|sale_id| enc(pb::GetSaleRequest { sale_id }));
    cases.push(("invalid UTF-8", bad_utf8(), Code::Internal));
    rpc(
        "/flashsale.v1.FlashSale/GetSale",
        p.gateway,
        Caller::Buyer,
        false,
        cases,
    );
    let mut cases = sale_id_cases(&|sale_id| enc(pb::JoinQueueRequest { sale_id }));
    cases.extend([
        (
            "sale without a waiting room",
            enc(pb::JoinQueueRequest {
                sale_id: sale.sale_id.clone(),
            }),
            Code::FailedPrecondition,
        ),
        (
            "unknown sale",
            enc(pb::JoinQueueRequest {
                sale_id: "no-such-sale".into(),
            }),
            Code::NotFound,
        ),
        ("invalid UTF-8", bad_utf8(), Code::Internal),
    ]);
    rpc(
        "/flashsale.v1.FlashSale/JoinQueue",
        p.gateway,
        Caller::Buyer,
        false,
        cases,
    );
    let queue_status =
        |sale_id: String, ticket: String| enc(pb::QueueStatusRequest { sale_id, ticket });
    for (path, streaming) in [
        ("/flashsale.v1.FlashSale/QueueStatus", false),
        ("/flashsale.v1.FlashSale/WatchQueue", true),
    ] {
        let mut cases = sale_id_cases(&|sale_id| queue_status(sale_id, "t.t".into()));
        cases.extend([
            (
                "empty ticket",
                queue_status(sale.sale_id.clone(), String::new()),
                Code::InvalidArgument,
            ),
            (
                "1 MiB ticket",
                queue_status(sale.sale_id.clone(), big.clone()),
                Code::InvalidArgument,
            ),
            (
                "ticket for a sale without a waiting room",
                queue_status(sale.sale_id.clone(), "a.b".into()),
                Code::FailedPrecondition,
            ),
            ("invalid UTF-8", bad_utf8(), Code::Internal),
        ]);
        rpc(path, p.gateway, Caller::Buyer, streaming, cases);
    }
    let list_sales = |state, page_size, page_token: &str| {
        enc(pb::ListSalesRequest {
            state,
            page_size,
            page_token: page_token.into(),
        })
    };
    rpc(
        "/flashsale.v1.FlashSale/ListSales",
        p.gateway,
        Caller::Buyer,
        false,
        vec![
            ("empty request (all sales)", Vec::new(), Code::Ok),
            (
                "unknown state 99",
                list_sales(99, 10, ""),
                Code::InvalidArgument,
            ),
            (
                "negative state",
                list_sales(-1, 10, ""),
                Code::InvalidArgument,
            ),
            (
                "page size u32::MAX",
                list_sales(0, u32::MAX, ""),
                Code::InvalidArgument,
            ),
            (
                "garbage page token",
                list_sales(0, 10, "not-a-token"),
                Code::InvalidArgument,
            ),
            (
                "1 MiB page token",
                list_sales(0, 10, &big),
                Code::InvalidArgument,
            ),
            (
                "unicode page token",
                list_sales(0, 10, "🛒\u{202e}"),
                Code::InvalidArgument,
            ),
        ],
    );

    // The gateway: SaleAdmin.
    let mut cases: Vec<_> = bad_sales()
        .into_iter()
        .map(|(what, sale)| {
            (
                what,
                enc(pb::CreateSaleRequest { sale }),
                Code::InvalidArgument,
            )
        })
        .collect();
    cases.push((
        "invalid UTF-8 in the name",
        enc(pb::CreateSaleRequest { sale: None })
            .into_iter()
            .chain([0x0a, 0x04, 0x12, 0x02, 0xc3, 0x28])
            .collect(),
        Code::Internal,
    ));
    rpc(
        "/flashsale.v1.SaleAdmin/CreateSale",
        p.gateway,
        Caller::Admin,
        false,
        cases,
    );
    for path in [
        "/flashsale.v1.SaleAdmin/EndSale",
        "/flashsale.v1.SaleAdmin/GetSaleStats",
    ] {
        let mut cases = sale_id_cases(&|sale_id| enc(pb::EndSaleRequest { sale_id }));
        cases.push(("invalid UTF-8", bad_utf8(), Code::Internal));
        rpc(path, p.gateway, Caller::Admin, false, cases);
    }
    let mut cases = sale_id_cases(&|sale_id| {
        enc(pb::ReconcileRequest {
            sale_id,
            repair: true,
        })
    });
    cases.push((
        "unknown sale, repair",
        enc(pb::ReconcileRequest {
            sale_id: "no-such-sale".into(),
            repair: true,
        }),
        Code::NotFound,
    ));
    rpc(
        "/flashsale.v1.SaleAdmin/Reconcile",
        p.gateway,
        Caller::Admin,
        false,
        cases,
    );

    // Orders.
    for (path, streaming) in [
        ("/flashsale.v1.Orders/GetOrder", false),
        ("/flashsale.v1.Orders/WatchOrder", true),
    ] {
        let mut cases = id_cases(Code::NotFound, &|order_id| {
            enc(pb::GetOrderRequest { order_id })
        });
        cases.push(("invalid UTF-8", bad_utf8(), Code::Internal));
        rpc(path, p.orders, Caller::Service, streaming, cases);
    }
    let list = |filter, status, page_size, page_token: &str| {
        enc(pb::ListOrdersRequest {
            filter,
            status,
            page_size,
            page_token: page_token.into(),
        })
    };
    use pb::list_orders_request::Filter;
    let mut cases = id_cases(Code::Ok, &|user| {
        list(Some(Filter::UserId(user)), 0, 10, "")
    });
    cases.extend([
        ("no filter", list(None, 0, 10, ""), Code::InvalidArgument),
        (
            "unknown status 99",
            list(Some(Filter::SaleId(sid.clone())), 99, 10, ""),
            Code::InvalidArgument,
        ),
        (
            "page size 1,000,000",
            list(Some(Filter::SaleId(sid.clone())), 0, 1_000_000, ""),
            Code::InvalidArgument,
        ),
        (
            "garbage page token",
            list(Some(Filter::SaleId(sid.clone())), 0, 10, "%%%"),
            Code::InvalidArgument,
        ),
        (
            "1 MiB page token",
            list(Some(Filter::SaleId(sid.clone())), 0, 10, &big),
            Code::InvalidArgument,
        ),
        (
            "sale filter with unicode",
            list(Some(Filter::SaleId("🛒".into())), 0, 10, ""),
            Code::InvalidArgument,
        ),
    ]);
    rpc(
        "/flashsale.v1.Orders/ListOrders",
        p.orders,
        Caller::Service,
        false,
        cases,
    );
    let pay = |order_id: String, user_id: String, reference: String| {
        enc(pb::PayRequest {
            order_id,
            user_id,
            payment_reference: reference,
        })
    };
    let mut cases = id_cases(Code::NotFound, &|id| pay(id, "buyer".into(), "ref".into()));
    cases.extend([
        ("empty request", Vec::new(), Code::InvalidArgument),
        (
            "1 MiB payment reference",
            pay("o".into(), "buyer".into(), big.clone()),
            Code::InvalidArgument,
        ),
        (
            "NUL in the user",
            pay("o".into(), "a\0".into(), "ref".into()),
            Code::InvalidArgument,
        ),
    ]);
    rpc(
        "/flashsale.v1.Orders/Pay",
        p.orders,
        Caller::Service,
        false,
        cases,
    );
    let mut cases = id_cases(Code::NotFound, &|order_id| {
        enc(pb::CancelRequest {
            order_id,
            user_id: "buyer".into(),
        })
    });
    cases.push(("empty request", Vec::new(), Code::InvalidArgument));
    rpc(
        "/flashsale.v1.Orders/Cancel",
        p.orders,
        Caller::Service,
        false,
        cases,
    );

    // Inventory.
    // The inventory reads neither name, price nor currency (the gateway checked them).
    let inventory_bad_sales = || {
        bad_sales().into_iter().filter(|(what, _)| {
            !["negative price", "1 MiB name", "currency not ISO 4217"].contains(what)
        })
    };
    let cases: Vec<_> = inventory_bad_sales()
        .map(|(what, sale)| {
            (
                what,
                enc(pb::LoadSaleRequest {
                    sale,
                    refresh_only: false,
                }),
                Code::InvalidArgument,
            )
        })
        .collect();
    rpc(
        "/flashsale.v1.Inventory/LoadSale",
        p.inventory,
        Caller::Service,
        false,
        cases,
    );
    let reserve = |sale_id: String, user_id: String, quantity: u32, key: String| {
        enc(pb::ReserveRequest {
            sale_id,
            user_id,
            quantity,
            idempotency_key: key,
        })
    };
    let mut cases = sale_id_cases(&|id| reserve(id, "buyer".into(), 1, String::new()));
    cases.extend(
        bad_ids(Code::Ok)
            .into_iter()
            .filter(|(_, _, code)| *code != Code::Ok)
            .map(|(what, id, code)| (what, reserve(sid.clone(), id, 1, String::new()), code)),
    );
    cases.extend([
        (
            "quantity 0",
            reserve(sid.clone(), "buyer".into(), 0, String::new()),
            Code::InvalidArgument,
        ),
        (
            "quantity over the limit",
            reserve(sid.clone(), "buyer".into(), 3, String::new()),
            Code::InvalidArgument,
        ),
        (
            "quantity -1",
            [
                reserve(sid.clone(), "buyer".into(), 1, String::new()),
                negative_u32(3),
            ]
            .concat(),
            Code::InvalidArgument,
        ),
        (
            "1 MiB idempotency key",
            reserve(sid.clone(), "buyer".into(), 1, big.clone()),
            Code::InvalidArgument,
        ),
    ]);
    rpc(
        "/flashsale.v1.Inventory/Reserve",
        p.inventory,
        Caller::Service,
        false,
        cases,
    );
    let hold = Some(timestamp(now + 60_000));
    let commit = |sale_id: String, reservation_id: String, hold_until| {
        enc(pb::CommitRequest {
            sale_id,
            reservation_id,
            hold_until,
        })
    };
    let mut cases = sale_id_cases(&|id| commit(id, "r".into(), hold));
    cases.extend(id_cases(Code::NotFound, &|id| {
        commit(sid.clone(), id, hold)
    }));
    cases.extend([
        (
            "no hold_until",
            commit(sid.clone(), "r".into(), None),
            Code::InvalidArgument,
        ),
        (
            "negative hold_until",
            commit(
                sid.clone(),
                "r".into(),
                Some(prost_types::Timestamp {
                    seconds: -5,
                    nanos: 0,
                }),
            ),
            Code::InvalidArgument,
        ),
        (
            "nanos out of range",
            commit(
                sid.clone(),
                "r".into(),
                Some(prost_types::Timestamp {
                    seconds: 5,
                    nanos: 2_000_000_000,
                }),
            ),
            Code::InvalidArgument,
        ),
    ]);
    rpc(
        "/flashsale.v1.Inventory/Commit",
        p.inventory,
        Caller::Service,
        false,
        cases,
    );
    let commit_many =
        |sale_id: String, items: Vec<pb::CommitItem>| enc(pb::CommitManyRequest { sale_id, items });
    let item = |reservation_id: &str, hold_until| pb::CommitItem {
        reservation_id: reservation_id.into(),
        hold_until,
    };
    let mut cases = sale_id_cases(&|id| commit_many(id, vec![item("r", hold)]));
    cases.extend([
        (
            "no items",
            commit_many(sid.clone(), Vec::new()),
            Code::InvalidArgument,
        ),
        (
            "an item without an id",
            commit_many(sid.clone(), vec![item("r", hold), item("", hold)]),
            Code::InvalidArgument,
        ),
        (
            "an item with a 1 MiB id",
            commit_many(sid.clone(), vec![item(&big, hold)]),
            Code::InvalidArgument,
        ),
        (
            "an item without hold_until",
            commit_many(sid.clone(), vec![item("r", None)]),
            Code::InvalidArgument,
        ),
        (
            "100,001 items",
            commit_many(sid.clone(), vec![item("r", hold); 100_001]),
            Code::InvalidArgument,
        ),
    ]);
    rpc(
        "/flashsale.v1.Inventory/CommitMany",
        p.inventory,
        Caller::Service,
        false,
        cases,
    );
    let confirm = |sale_id: String, reservation_id: String| {
        enc(pb::ConfirmRequest {
            sale_id,
            reservation_id,
        })
    };
    let mut cases = sale_id_cases(&|id| confirm(id, "r".into()));
    cases.extend(id_cases(Code::NotFound, &|id| confirm(sid.clone(), id)));
    rpc(
        "/flashsale.v1.Inventory/Confirm",
        p.inventory,
        Caller::Service,
        false,
        cases,
    );
    let mark = |sale_id: String, reservation_id: String| {
        enc(pb::MarkQueuedRequest {
            sale_id,
            reservation_id,
        })
    };
    let mut cases = sale_id_cases(&|id| mark(id, "r".into()));
    cases.extend(id_cases(Code::NotFound, &|id| mark(sid.clone(), id)));
    rpc(
        "/flashsale.v1.Inventory/MarkQueued",
        p.inventory,
        Caller::Service,
        false,
        cases,
    );
    let release = |sale_id: String, reservation_id: String, reason: i32| {
        enc(pb::ReleaseRequest {
            sale_id,
            reservation_id,
            reason,
        })
    };
    let mut cases = sale_id_cases(&|id| release(id, "r".into(), 3));
    cases.extend(id_cases(Code::NotFound, &|id| release(sid.clone(), id, 3)));
    cases.extend([
        (
            "no reason",
            release(sid.clone(), "r".into(), 0),
            Code::InvalidArgument,
        ),
        (
            "unknown reason 99",
            release(sid.clone(), "r".into(), 99),
            Code::InvalidArgument,
        ),
        (
            "negative reason",
            release(sid.clone(), "r".into(), -3),
            Code::InvalidArgument,
        ),
    ]);
    rpc(
        "/flashsale.v1.Inventory/Release",
        p.inventory,
        Caller::Service,
        false,
        cases,
    );
    let fingerprints =
        |sale_id: String, limit: u32| enc(pb::KeyFingerprintsRequest { sale_id, limit });
    let mut cases = sale_id_cases(&|id| fingerprints(id, 10));
    cases.extend([
        (
            "no limit",
            fingerprints(sid.clone(), 0),
            Code::InvalidArgument,
        ),
        (
            "a limit above 1,000,000",
            fingerprints(sid.clone(), 1_000_001),
            Code::InvalidArgument,
        ),
        (
            "the largest limit",
            fingerprints(sid.clone(), 1_000_000),
            Code::Ok,
        ),
    ]);
    rpc(
        "/flashsale.v1.Inventory/KeyFingerprints",
        p.inventory,
        Caller::Service,
        false,
        cases,
    );
    let cases = sale_id_cases(&|sale_id| enc(pb::GetStockRequest { sale_id }));
    rpc(
        "/flashsale.v1.Inventory/GetStock",
        p.inventory,
        Caller::Service,
        false,
        cases,
    );
    let mut cases: Vec<_> = inventory_bad_sales()
        .map(|(what, sale)| {
            (
                what,
                enc(pb::RebuildRequest {
                    sale,
                    reservations: Vec::new(),
                    seen: pb::SalePresence::SaleMissing as i32,
                }),
                Code::InvalidArgument,
            )
        })
        .collect();
    let held = pb::Reservation {
        reservation_id: "r".into(),
        sale_id: "badinput-sale".into(),
        user_id: "buyer".into(),
        quantity: 1,
        state: pb::ReservationState::Held as i32,
        created_at: Some(timestamp(now)),
        expires_at: Some(timestamp(now + 60_000)),
        idempotency_key: String::new(),
        ..pb::Reservation::default()
    };
    cases.extend([
        (
            "a HELD reservation",
            enc(pb::RebuildRequest {
                sale: Some(good_sale()),
                reservations: vec![held.clone()],
                seen: pb::SalePresence::SaleMissing as i32,
            }),
            Code::InvalidArgument,
        ),
        (
            "no word on whether Redis held the sale",
            enc(pb::RebuildRequest {
                sale: Some(good_sale()),
                reservations: Vec::new(),
                seen: pb::SalePresence::Unspecified as i32,
            }),
            Code::InvalidArgument,
        ),
        (
            "a RELEASED reservation without its reason",
            enc(pb::RebuildRequest {
                sale: Some(good_sale()),
                reservations: vec![pb::Reservation {
                    state: pb::ReservationState::Released as i32,
                    ..held.clone()
                }],
                seen: pb::SalePresence::SaleMissing as i32,
            }),
            Code::InvalidArgument,
        ),
        (
            "an unknown state",
            enc(pb::RebuildRequest {
                sale: Some(good_sale()),
                reservations: vec![pb::Reservation {
                    state: 42,
                    ..held.clone()
                }],
                seen: pb::SalePresence::SaleMissing as i32,
            }),
            Code::InvalidArgument,
        ),
        (
            "more units than stock",
            enc(pb::RebuildRequest {
                sale: Some(good_sale()),
                reservations: vec![pb::Reservation {
                    state: pb::ReservationState::Committed as i32,
                    quantity: 1_000,
                    ..held.clone()
                }],
                seen: pb::SalePresence::SaleMissing as i32,
            }),
            Code::FailedPrecondition,
        ),
    ]);
    rpc(
        "/flashsale.v1.Inventory/Rebuild",
        p.inventory,
        Caller::Service,
        false,
        cases,
    );

    // The limiter.
    rpc(
        "/flashsale.v1.Limiter/ListRules",
        p.limiter,
        Caller::Service,
        false,
        vec![
            ("empty request (every domain)", Vec::new(), Code::Ok),
            (
                "1 MiB domain",
                enc(pb::ListRulesRequest {
                    domain: big.clone(),
                }),
                Code::Ok,
            ),
            (
                "unicode domain",
                enc(pb::ListRulesRequest {
                    domain: "🛒\u{202e}\0".into(),
                }),
                Code::Ok,
            ),
        ],
    );
    rpc(
        "/flashsale.v1.Limiter/ReloadRules",
        p.limiter,
        Caller::Service,
        false,
        vec![("empty request", Vec::new(), Code::Ok)],
    );
    let descriptor = |entries: Vec<(&str, &str)>, limit| RateLimitDescriptor {
        entries: entries
            .into_iter()
            .map(|(key, value)| Entry {
                key: key.into(),
                value: value.into(),
            })
            .collect(),
        limit,
        hits_addend: None,
    };
    let should = |domain: &str, descriptors| {
        enc(RateLimitRequest {
            domain: domain.into(),
            descriptors,
            hits_addend: 0,
        })
    };
    rpc(
        "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
        p.limiter,
        Caller::Service,
        false,
        vec![
            ("empty request", Vec::new(), Code::InvalidArgument),
            (
                "no descriptors",
                should("flashsale", Vec::new()),
                Code::InvalidArgument,
            ),
            (
                "empty domain",
                should("", vec![descriptor(vec![("user", "a")], None)]),
                Code::InvalidArgument,
            ),
            (
                "a descriptor without entries",
                should("flashsale", vec![descriptor(Vec::new(), None)]),
                Code::InvalidArgument,
            ),
            (
                "an entry without a key",
                should("flashsale", vec![descriptor(vec![("", "a")], None)]),
                Code::InvalidArgument,
            ),
            (
                "1 MiB domain",
                should(&big, vec![descriptor(vec![("user", "a")], None)]),
                Code::InvalidArgument,
            ),
            (
                "1 MiB value",
                should("flashsale", vec![descriptor(vec![("user", &big)], None)]),
                Code::InvalidArgument,
            ),
            (
                "a value one byte over the limiter's bound",
                should(
                    "flashsale",
                    vec![descriptor(vec![("user", &"v".repeat(1_025))], None)],
                ),
                Code::InvalidArgument,
            ),
            (
                "a key one byte over the limiter's bound",
                should(
                    "flashsale",
                    vec![descriptor(vec![(&"k".repeat(1_025), "a")], None)],
                ),
                Code::InvalidArgument,
            ),
            (
                "a descriptor hits_addend of 2^64 - 1",
                should(
                    "flashsale",
                    vec![RateLimitDescriptor {
                        hits_addend: Some(u64::MAX),
                        ..descriptor(vec![("user", "a")], None)
                    }],
                ),
                Code::InvalidArgument,
            ),
            (
                "override with unknown unit 42",
                should(
                    "flashsale",
                    vec![descriptor(
                        vec![("user", "a")],
                        Some(RateLimitOverride {
                            requests_per_unit: 1,
                            unit: 42,
                        }),
                    )],
                ),
                Code::InvalidArgument,
            ),
        ],
    );

    let before = snapshot(&mesh).await;
    let buyer = mesh
        .signer()
        .token("buyer", false, Duration::from_secs(600));
    let admin = mesh
        .signer()
        .token("operator", true, Duration::from_secs(600));
    let mut wrong = Vec::new();
    let mut sent = 0;
    for rpc in &rpcs {
        let channel = mesh.channel(rpc.port).await;
        let token = match rpc.caller {
            Caller::Service => None,
            Caller::Buyer => Some(buyer.as_str()),
            Caller::Admin => Some(admin.as_str()),
        };
        for (what, body, expected) in &rpc.cases {
            sent += 1;
            let status = call(
                channel.clone(),
                rpc.path,
                body.clone(),
                token,
                rpc.streaming,
            )
            .await;
            if status.code() != *expected {
                wrong.push(format!(
                    "{} {what}: {:?} {:?}, expected {expected:?}",
                    rpc.path,
                    status.code(),
                    status.message().chars().take(160).collect::<String>()
                ));
            } else if *expected != Code::Ok && status.message().is_empty() {
                wrong.push(format!(
                    "{} {what}: {expected:?} without a reason",
                    rpc.path
                ));
            }
        }
    }
    let paths: std::collections::HashSet<&str> = rpcs.iter().map(|r| r.path).collect();
    assert_eq!(
        paths.len(),
        30,
        "every RPC of every service is in the table"
    );
    assert!(
        wrong.is_empty(),
        "{sent} calls; wrong answers:\n{}",
        wrong.join("\n")
    );

    // Nothing changed, nothing died, nothing panicked.
    let after = snapshot(&mesh).await;
    assert_eq!(before, after, "bad input changed what the stores hold");
    let wrong = abusive_headers(&mesh, &buyer).await;
    assert!(wrong.is_empty(), "wrong answers:\n{}", wrong.join("\n"));
    // The limiter counted the buyer's calls that reached it; nothing else changed.
    let without_counters = |state: Vec<String>| -> Vec<String> {
        state.into_iter().filter(|l| !l.contains("{rl:")).collect()
    };
    assert_eq!(
        without_counters(before),
        without_counters(snapshot(&mesh).await),
        "abusive headers changed what the stores hold"
    );
    for (component, process) in &mut mesh.processes {
        assert!(process.0.try_wait().unwrap().is_none(), "{component} died");
    }
    for entry in std::fs::read_dir(logs.path()).unwrap() {
        let path = entry.unwrap().path();
        let log = std::fs::read_to_string(&path).unwrap();
        assert!(!log.contains("panicked"), "{}:\n{log}", path.display());
    }
}

/// What is wrong, the RPC, its message, the headers, and the answer it must get.
type HeaderCase = (
    &'static str,
    &'static str,
    Vec<u8>,
    Vec<(&'static str, tonic::metadata::AsciiMetadataValue)>,
    Code,
);

/// Headers a caller shapes, sent to the public port (the limiter sidecar), each with the answer
/// it must get: a value the limiter cannot judge is refused there, and a token of any odd shape
/// is refused by the gateway. The Purchases name a sale that does not exist, so nothing that
/// gets through can change a store.
async fn abusive_headers(mesh: &Mesh, buyer: &str) -> Vec<String> {
    use tonic::metadata::MetadataValue;
    let header = |value: &str| MetadataValue::try_from(value).unwrap();
    let non_ascii = || MetadataValue::try_from("caf\u{e9}".as_bytes()).unwrap();
    let purchase = enc(pb::PurchaseRequest {
        sale_id: "no-such-sale".into(),
        quantity: 1,
        idempotency_key: "k".into(),
        purchase_token: String::new(),
    });
    let get_sale = enc(pb::GetSaleRequest {
        sale_id: "no-such-sale".into(),
    });
    let bearer = |token: &str| header(&format!("Bearer {token}"));
    let unsigned =
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJidXllciIsImF1ZCI6ImZsYXNoc2FsZSIsImV4cCI6OTk5OTk5OTk5OX0.";
    let cases: Vec<HeaderCase> = vec![
        (
            "a sale header one byte over the bound",
            "/flashsale.v1.FlashSale/GetSale",
            get_sale.clone(),
            vec![("flashsale-sale-id", header(&"s".repeat(1_025)))],
            Code::InvalidArgument,
        ),
        (
            "a sale header that is not text",
            "/flashsale.v1.FlashSale/GetSale",
            get_sale.clone(),
            vec![("flashsale-sale-id", non_ascii())],
            Code::InvalidArgument,
        ),
        (
            "a Purchase's sale header over the bound (its sale comes from the message)",
            "/flashsale.v1.FlashSale/Purchase",
            purchase.clone(),
            vec![
                ("flashsale-sale-id", header(&"s".repeat(1_025))),
                ("authorization", bearer(buyer)),
            ],
            Code::NotFound,
        ),
        (
            "a forged x-forwarded-for of 1 KiB",
            "/flashsale.v1.FlashSale/Purchase",
            purchase.clone(),
            vec![
                ("x-forwarded-for", header(&"198.51.100.7,".repeat(80))),
                ("authorization", bearer(buyer)),
            ],
            Code::NotFound,
        ),
        (
            "a token of 8 KiB",
            "/flashsale.v1.FlashSale/Purchase",
            purchase.clone(),
            vec![("authorization", bearer(&"x".repeat(8 << 10)))],
            Code::Unauthenticated,
        ),
        (
            "an authorization that is not text",
            "/flashsale.v1.FlashSale/Purchase",
            purchase.clone(),
            vec![("authorization", non_ascii())],
            Code::Unauthenticated,
        ),
        (
            "a bearer with no token",
            "/flashsale.v1.FlashSale/Purchase",
            purchase.clone(),
            vec![("authorization", header("Bearer "))],
            Code::Unauthenticated,
        ),
        (
            "an unsigned token (alg none)",
            "/flashsale.v1.FlashSale/Purchase",
            purchase.clone(),
            vec![("authorization", bearer(unsigned))],
            Code::Unauthenticated,
        ),
        (
            "a token with its signature cut off",
            "/flashsale.v1.FlashSale/Purchase",
            purchase.clone(),
            vec![(
                "authorization",
                bearer(buyer.rsplit_once('.').map_or(buyer, |(head, _)| head)),
            )],
            Code::Unauthenticated,
        ),
        (
            "the buyer's token, twice",
            "/flashsale.v1.FlashSale/Purchase",
            purchase,
            vec![("authorization", bearer(&format!("{buyer} {buyer}")))],
            Code::Unauthenticated,
        ),
    ];
    let channel = mesh.channel(mesh.ports.sidecar).await;
    let mut wrong = Vec::new();
    for (what, path, body, headers, expected) in cases {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let mut request = tonic::Request::new(body);
        request.set_timeout(Duration::from_secs(10));
        for (key, value) in headers {
            request.metadata_mut().insert(key, value);
        }
        let path_and_query = http::uri::PathAndQuery::from_static(path);
        let status = match grpc.unary(request, path_and_query, Raw).await {
            Ok(_) => tonic::Status::ok(""),
            Err(status) => status,
        };
        if status.code() != expected || status.message().is_empty() {
            wrong.push(format!(
                "sidecar {path} {what}: {:?} {:?}, expected {expected:?} with a reason",
                status.code(),
                status.message()
            ));
        }
    }
    wrong
}
