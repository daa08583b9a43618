//! Event decoding on arbitrary bytes, as the order consumer and the gateway meet them on NATS:
//! nothing panics, and an order event the consumer accepts becomes a row that says the same.

#![no_main]

use flashsale_proto::{time::unix_ms, v1 as pb};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    match flashsale_orders::consumer::decode_payload(data) {
        Ok(event) => {
            let row = flashsale_orders::consumer::row(&event);
            assert_eq!(row.order_id, event.order_id);
            assert!(row.quantity > 0);
            assert_eq!(u32::try_from(row.quantity).ok(), Some(event.quantity));
            assert_eq!(
                row.amount_minor,
                event.unit_price_minor * i64::from(event.quantity)
            );
            let requested = event.requested_at.as_ref().and_then(unix_ms).unwrap();
            let deadline = event.pay_deadline.as_ref().and_then(unix_ms).unwrap();
            assert_eq!(
                row.created_at.timestamp_millis(),
                requested,
                "requested_at was changed"
            );
            assert_eq!(
                row.pay_deadline.timestamp_millis(),
                deadline,
                "pay_deadline was changed"
            );
            assert!(row.pay_deadline > row.created_at);
        }
        Err(reason) => assert!(!reason.is_empty()),
    }
    // The other events on the bus decode or fail, never panic.
    let _ = pb::StockSignal::decode(data);
    let _ = pb::OrderStatusChanged::decode(data);
    let _ = pb::DeadLetter::decode(data);
});
