//! Sales as the gateway sees them: validation for CreateSale, conversions between the `sales`
//! row and protobuf, and the state a sale is in.

use std::time::Duration;

use chrono::Utc;
use flashsale_orders::{
    convert::{ms, utc},
    entity::sales,
};
use flashsale_proto::{
    rules,
    time::{duration, duration_ms, timestamp, unix_ms},
    v1 as pb,
};

use flashsale_limiter::waiting_room::RoomSettings;

use crate::Error;

/// Default time a reservation is held before its order is persisted.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(60);
/// Default time a buyer has to pay.
pub const DEFAULT_PAYMENT_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Most units per sale.
pub const MAX_STOCK: u64 = flashsale_proto::sale::MAX_STOCK;

/// A sale's lifecycle state at `now_ms`.
pub fn state(sale: &sales::Model, now_ms: i64) -> pb::SaleState {
    if sale.ended_at.is_some() || ms(sale.ends_at) <= now_ms {
        pb::SaleState::Ended
    } else if ms(sale.starts_at) > now_ms {
        pb::SaleState::Scheduled
    } else {
        pb::SaleState::Active
    }
}

/// A sale row as protobuf.
pub fn sale_pb(sale: &sales::Model) -> pb::Sale {
    pb::Sale {
        sale_id: sale.sale_id.clone(),
        name: sale.name.clone(),
        stock: sale.stock as u64,
        per_user_limit: sale.per_user_limit as u32,
        unit_price_minor: sale.unit_price_minor,
        currency: sale.currency.clone(),
        starts_at: Some(timestamp(ms(sale.starts_at))),
        ends_at: Some(timestamp(ms(sale.ends_at))),
        reservation_hold: Some(duration(sale.reservation_hold_ms as u64)),
        payment_window: Some(duration(sale.payment_window_ms as u64)),
        state: state(sale, flashsale_proto::time::now_ms()) as i32,
        stock_buckets: sale.stock_buckets as u32,
        waiting_room: room_settings(sale).map(|room| pb::WaitingRoom {
            admissions_per_second: room.rate_per_second,
            active_cap: room.active_cap,
            admission_window: Some(duration(room.admission_window.as_millis() as u64)),
        }),
    }
}

/// Default time an admitted buyer has to buy.
pub const DEFAULT_ADMISSION_WINDOW: Duration = Duration::from_secs(120);

/// The sale's waiting room, if it has one (`ticket_ttl` is the gateway's to set).
pub fn room_settings(sale: &sales::Model) -> Option<RoomSettings> {
    let (Some(rate), Some(cap), Some(window)) = (
        sale.waiting_room_rate_milli,
        sale.waiting_room_cap,
        sale.waiting_room_window_ms,
    ) else {
        return None;
    };
    Some(RoomSettings {
        rate_per_second: rate as f64 / 1000.0,
        active_cap: cap as u32,
        admission_window: Duration::from_millis(window as u64),
        ticket_ttl: Duration::from_secs(1_800),
        opens_at_ms: ms(sale.starts_at),
    })
}

/// A waiting room's columns: rate in thousandths per second, cap, window in ms.
type RoomColumns = (Option<i64>, Option<i32>, Option<i64>);

/// Checks a CreateSale waiting room.
fn new_room(room: Option<&pb::WaitingRoom>) -> Result<RoomColumns, Error> {
    let Some(room) = room else {
        return Ok((None, None, None));
    };
    let rate = room.admissions_per_second;
    if !(rate.is_finite() && (0.001..=100_000.0).contains(&rate)) {
        return Err(Error::invalid(
            "waiting_room.admissions_per_second",
            "must be within 0.001..=100000",
        ));
    }
    if !(1..=1_000_000).contains(&room.active_cap) {
        return Err(Error::invalid(
            "waiting_room.active_cap",
            "must be within 1..=1000000",
        ));
    }
    let window = optional_duration(
        "waiting_room.admission_window",
        room.admission_window.as_ref(),
        DEFAULT_ADMISSION_WINDOW,
    )?;
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&window) {
        return Err(Error::invalid(
            "waiting_room.admission_window",
            "must be within 1s..=1h",
        ));
    }
    Ok((
        Some((rate * 1000.0).round() as i64),
        Some(room.active_cap as i32),
        Some(window.as_millis() as i64),
    ))
}

/// Checks a CreateSale request and makes the row (assigning an id when none is given).
pub fn new_sale(sale: &pb::Sale) -> Result<sales::Model, Error> {
    let sale_id = if sale.sale_id.is_empty() {
        format!("sale-{}", uuid::Uuid::now_v7())
    } else {
        sale.sale_id.clone()
    };
    rules::sale_id(&sale_id)?;
    if sale.name.is_empty() || sale.name.len() > 256 || sale.name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "must be 1..=256 bytes without control characters",
        ));
    }
    let buckets = check_stock(sale)?;
    let (room_rate, room_cap, room_window) = new_room(sale.waiting_room.as_ref())?;
    check_price(sale)?;
    let times = check_times(sale)?;
    Ok(sales::Model {
        sale_id,
        name: sale.name.clone(),
        stock: sale.stock as i64,
        per_user_limit: sale.per_user_limit as i32,
        unit_price_minor: sale.unit_price_minor,
        currency: sale.currency.clone(),
        starts_at: utc(times.starts_ms),
        ends_at: utc(times.ends_ms),
        reservation_hold_ms: times.hold.as_millis() as i64,
        payment_window_ms: times.payment_window.as_millis() as i64,
        ended_at: None,
        created_at: Utc::now(),
        stock_buckets: buckets as i32,
        waiting_room_rate_milli: room_rate,
        waiting_room_cap: room_cap,
        waiting_room_window_ms: room_window,
    })
}

/// Stock, per-user limit and buckets; returns the buckets (0 means 1).
fn check_stock(sale: &pb::Sale) -> Result<u32, Error> {
    if !(1..=MAX_STOCK).contains(&sale.stock) {
        return Err(Error::invalid(
            "stock",
            format!("{} is outside 1..={MAX_STOCK}", sale.stock),
        ));
    }
    if sale.per_user_limit == 0 || u64::from(sale.per_user_limit) > sale.stock {
        return Err(Error::invalid("per_user_limit", "must be within 1..=stock"));
    }
    let buckets = sale.stock_buckets.max(1);
    if buckets > flashsale_proto::sale::MAX_BUCKETS || u64::from(buckets) > sale.stock {
        return Err(Error::invalid(
            "stock_buckets",
            format!(
                "must be within 1..={} and at most the stock",
                flashsale_proto::sale::MAX_BUCKETS
            ),
        ));
    }
    Ok(buckets)
}

/// Unit price and currency: the largest order one buyer can make must have an amount the
/// orders can hold.
fn check_price(sale: &pb::Sale) -> Result<(), Error> {
    if !(0..=1_000_000_000_000).contains(&sale.unit_price_minor) {
        return Err(Error::invalid(
            "unit_price_minor",
            "must be within 0..=10^12",
        ));
    }
    if sale
        .unit_price_minor
        .checked_mul(i64::from(sale.per_user_limit))
        .is_none()
    {
        return Err(Error::invalid(
            "unit_price_minor",
            format!(
                "times per_user_limit ({}) overflows the order amount (at most {})",
                sale.per_user_limit,
                i64::MAX
            ),
        ));
    }
    if sale.currency.len() != 3 || !sale.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Error::invalid(
            "currency",
            "must be an ISO 4217 code like CNY",
        ));
    }
    Ok(())
}

/// A new sale's window, reservation hold and payment window.
struct Times {
    starts_ms: i64,
    ends_ms: i64,
    hold: Duration,
    payment_window: Duration,
}

fn check_times(sale: &pb::Sale) -> Result<Times, Error> {
    let starts_ms = sale
        .starts_at
        .as_ref()
        .and_then(unix_ms)
        .ok_or_else(|| Error::invalid("starts_at", "is required"))?;
    let ends_ms = sale
        .ends_at
        .as_ref()
        .and_then(unix_ms)
        .ok_or_else(|| Error::invalid("ends_at", "is required"))?;
    if ends_ms <= starts_ms {
        return Err(Error::invalid("ends_at", "must be after starts_at"));
    }
    if ends_ms <= flashsale_proto::time::now_ms() {
        return Err(Error::invalid("ends_at", "is in the past"));
    }
    let hold = optional_duration(
        "reservation_hold",
        sale.reservation_hold.as_ref(),
        DEFAULT_HOLD,
    )?;
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&hold) {
        return Err(Error::invalid("reservation_hold", "must be within 1s..=1h"));
    }
    let payment_window = optional_duration(
        "payment_window",
        sale.payment_window.as_ref(),
        DEFAULT_PAYMENT_WINDOW,
    )?;
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&payment_window) {
        return Err(Error::invalid("payment_window", "must be within 1s..=24h"));
    }
    Ok(Times {
        starts_ms,
        ends_ms,
        hold,
        payment_window,
    })
}

fn optional_duration(
    field: &'static str,
    value: Option<&prost_types::Duration>,
    default: Duration,
) -> Result<Duration, Error> {
    match value {
        None => Ok(default),
        Some(d) => duration_ms(d)
            .map(Duration::from_millis)
            .ok_or_else(|| Error::invalid(field, "must not be negative")),
    }
}
