//! Conversions between the order rows and protobuf.

use chrono::{DateTime, TimeZone, Utc};
use flashsale_proto::{time::timestamp, v1 as pb};

use crate::entity::orders::{self, Status};

/// Unix milliseconds of a database time.
pub fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// A database time from Unix milliseconds.
pub fn utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// An order status as protobuf.
pub fn status_pb(status: Status) -> pb::OrderStatus {
    match status {
        Status::PendingPayment => pb::OrderStatus::PendingPayment,
        Status::Paid => pb::OrderStatus::Paid,
        Status::Cancelled => pb::OrderStatus::Cancelled,
        Status::Expired => pb::OrderStatus::Expired,
    }
}

/// A protobuf status filter; `None` for UNSPECIFIED (any).
pub fn status_filter(value: i32) -> Result<Option<Status>, crate::Error> {
    match pb::OrderStatus::try_from(value) {
        Ok(pb::OrderStatus::Unspecified) => Ok(None),
        Ok(pb::OrderStatus::PendingPayment) => Ok(Some(Status::PendingPayment)),
        Ok(pb::OrderStatus::Paid) => Ok(Some(Status::Paid)),
        Ok(pb::OrderStatus::Cancelled) => Ok(Some(Status::Cancelled)),
        Ok(pb::OrderStatus::Expired) => Ok(Some(Status::Expired)),
        Err(_) => Err(crate::Error::invalid(
            "status",
            format!("{value} is not an OrderStatus"),
        )),
    }
}

/// An order row as protobuf.
pub fn order_pb(order: &orders::Model) -> pb::Order {
    pb::Order {
        order_id: order.order_id.clone(),
        sale_id: order.sale_id.clone(),
        user_id: order.user_id.clone(),
        quantity: order.quantity as u32,
        amount_minor: order.amount_minor,
        currency: order.currency.clone(),
        status: status_pb(order.status) as i32,
        created_at: Some(timestamp(ms(order.created_at))),
        pay_deadline: Some(timestamp(ms(order.pay_deadline))),
        paid_at: order.paid_at.map(|t| timestamp(ms(t))),
        payment_reference: order.payment_reference.clone().unwrap_or_default(),
        updated_at: Some(timestamp(ms(order.updated_at))),
    }
}
