//! Request validation on arbitrary protobuf bytes: the first byte picks a request type, the rest
//! is decoded as it and checked the way the services check it. Nothing panics, and what is
//! accepted keeps the promises the services build on.

#![no_main]

use flashsale_proto::{rules, time::unix_ms, v1 as pb};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 6 {
        // CreateSale at the gateway: an accepted sale is a row the rest of the mesh can use.
        0 => {
            let Ok(request) = pb::CreateSaleRequest::decode(bytes) else {
                return;
            };
            let Some(sale) = request.sale else { return };
            if let Ok(model) = flashsale_gateway::sales::new_sale(&sale) {
                assert!(rules::sale_id(&model.sale_id).is_ok());
                assert!(model.stock > 0 && model.per_user_limit > 0);
                assert!(model.unit_price_minor >= 0);
                assert!(model.ends_at > model.starts_at);
                // What the gateway accepts, the inventory must accept too.
                let back = flashsale_gateway::sales::sale_pb(&model);
                assert!(
                    flashsale_inventory::grpc::sale_spec(&back).is_ok(),
                    "the gateway accepted a sale the inventory refuses: {back:?}"
                );
            }
        }
        // LoadSale at the inventory.
        1 => {
            let Ok(request) = pb::LoadSaleRequest::decode(bytes) else {
                return;
            };
            let Some(sale) = request.sale else { return };
            if let Ok(spec) = flashsale_inventory::grpc::sale_spec(&sale) {
                assert!(spec.validate().is_ok());
                assert!(spec.ends_at_ms > spec.starts_at_ms);
            }
        }
        // Reserve at the inventory.
        2 => {
            let Ok(r) = pb::ReserveRequest::decode(bytes) else {
                return;
            };
            let request = flashsale_inventory::ReserveRequest {
                sale_id: r.sale_id,
                user_id: r.user_id,
                quantity: r.quantity,
                idempotency_key: r.idempotency_key,
            };
            if request.validate().is_ok() {
                assert!(request.quantity > 0);
                assert!(
                    !request.sale_id.contains(['{', '}']),
                    "breaks the Redis hash tag"
                );
                assert!(request.sale_id.len() <= rules::MAX_ID_BYTES);
            }
        }
        // Purchase at the gateway: the id rules it applies before anything else.
        3 => {
            let Ok(r) = pb::PurchaseRequest::decode(bytes) else {
                return;
            };
            if rules::sale_id(&r.sale_id).is_ok()
                && rules::idempotency_key(&r.idempotency_key).is_ok()
            {
                assert!(r.sale_id.is_ascii());
                assert!(!r.idempotency_key.chars().any(char::is_control));
            }
        }
        // ListOrders page tokens: what parses, round-trips.
        4 => {
            let Ok(token) = std::str::from_utf8(bytes) else {
                return;
            };
            if let Ok(cursor) = flashsale_orders::grpc::parse_page_token(token) {
                let again = flashsale_orders::grpc::parse_page_token(
                    &flashsale_orders::grpc::page_token(&cursor),
                )
                .expect("a token we issue parses");
                assert_eq!(again, cursor);
            }
        }
        // Commit's hold_until and other timestamps: conversion never overflows or panics.
        _ => {
            let Ok(r) = pb::CommitRequest::decode(bytes) else {
                return;
            };
            if let Some(ms) = r.hold_until.as_ref().and_then(unix_ms) {
                let ts = flashsale_proto::time::timestamp(ms);
                assert_eq!(unix_ms(&ts), Some(ms));
            }
        }
    }
});
