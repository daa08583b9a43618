//! Conversions between protobuf well-known time types and Unix milliseconds, the unit every
//! flashsale store uses.

use prost_types::{Duration, Timestamp};

/// A Unix time in milliseconds as a protobuf `Timestamp`.
pub fn timestamp(unix_ms: i64) -> Timestamp {
    Timestamp {
        seconds: unix_ms.div_euclid(1000),
        nanos: (unix_ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// Earliest valid `Timestamp.seconds` (0001-01-01T00:00:00Z), as `timestamp.proto` defines it.
pub const MIN_TIMESTAMP_SECONDS: i64 = -62_135_596_800;
/// Latest valid `Timestamp.seconds` (9999-12-31T23:59:59Z).
pub const MAX_TIMESTAMP_SECONDS: i64 = 253_402_300_799;

/// A protobuf `Timestamp` as Unix milliseconds (sub-millisecond parts are dropped); `None` when
/// it is outside the range `timestamp.proto` allows (years 1 to 9999, nanos below a second), so
/// every accepted time converts to a calendar date and back unchanged.
pub fn unix_ms(ts: &Timestamp) -> Option<i64> {
    if !(0..1_000_000_000).contains(&ts.nanos)
        || !(MIN_TIMESTAMP_SECONDS..=MAX_TIMESTAMP_SECONDS).contains(&ts.seconds)
    {
        return None;
    }
    ts.seconds
        .checked_mul(1000)?
        .checked_add(i64::from(ts.nanos / 1_000_000))
}

/// A protobuf `Duration` as milliseconds; `None` when negative or out of range.
pub fn duration_ms(d: &Duration) -> Option<u64> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return None;
    }
    u64::try_from(d.seconds)
        .ok()?
        .checked_mul(1000)?
        .checked_add(u64::try_from(d.nanos / 1_000_000).ok()?)
}

/// Milliseconds as a protobuf `Duration`.
pub fn duration(ms: u64) -> Duration {
    Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// The current Unix time in milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for ms in [0, 1, 999, 1_764_130_000_123, -1, -1001] {
            assert_eq!(unix_ms(&timestamp(ms)), Some(ms), "{ms}");
        }
        assert_eq!(duration_ms(&duration(61_500)), Some(61_500));
        assert_eq!(
            duration_ms(&Duration {
                seconds: -1,
                nanos: 0
            }),
            None
        );
        assert_eq!(
            unix_ms(&Timestamp {
                seconds: 1,
                nanos: -5
            }),
            None
        );
        assert_eq!(
            unix_ms(&Timestamp {
                seconds: i64::MAX,
                nanos: 0
            }),
            None
        );
        // Year 10000 is past what timestamp.proto allows (and past what a calendar type takes).
        let edge = |seconds| unix_ms(&Timestamp { seconds, nanos: 0 });
        assert_eq!(
            edge(MAX_TIMESTAMP_SECONDS),
            Some(MAX_TIMESTAMP_SECONDS * 1000)
        );
        assert_eq!(edge(MAX_TIMESTAMP_SECONDS + 1), None);
        assert_eq!(edge(MIN_TIMESTAMP_SECONDS - 1), None);
    }
}
