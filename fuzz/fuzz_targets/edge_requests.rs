//! What the limiter sidecar reads from a caller, on arbitrary bytes: a Purchase's first gRPC
//! frame, and the headers a caller writes. Nothing panics; a sale is read only from a frame
//! that decodes as a `PurchaseRequest` naming one; a described request carries no user without
//! a verifier, and the sale exactly as the caller sent it.

#![no_main]

use flashsale_limiter::{
    config::Source,
    layer::{Policy, SALE_HEADER, describe},
    purchase::sale_of,
};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    match sale_of(data) {
        Ok(sale) => {
            assert!(!sale.is_empty());
            let len = 5 + u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
            let request = flashsale_proto::v1::PurchaseRequest::decode(&data[5..len]).unwrap();
            assert_eq!(request.sale_id, sale);
        }
        Err(status) => assert!(!status.message().is_empty()),
    }

    // The same bytes as the headers a caller writes.
    let (a, b) = data.split_at(data.len() / 2);
    let mut builder = http::Request::builder().uri("http://gw/flashsale.v1.FlashSale/QueueStatus");
    for (name, value) in [
        (SALE_HEADER, a),
        ("x-forwarded-for", b),
        ("authorization", a),
    ] {
        if let Ok(value) = http::HeaderValue::from_bytes(value) {
            builder = builder.header(name, value);
        }
    }
    let request = builder.body(()).unwrap();
    let policy = Policy {
        domain: "flashsale".into(),
        descriptors: vec![vec![Source::Sale], vec![Source::Ip], vec![Source::User]],
        exempt: vec![],
        xff_num_trusted_hops: 2,
        identify: None,
    };
    if let Ok(described) = describe(&policy, &request) {
        for (key, value) in described.descriptors.iter().flat_map(|d| &d.entries) {
            assert_ne!(key, "user", "no verifier, no user");
            if key == "sale" {
                assert_eq!(value.as_bytes(), a);
            }
        }
    }
});
