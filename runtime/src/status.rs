//! The one way a flashsale error becomes a `tonic::Status`.
//!
//! Every crate has one `thiserror` error enum and implements [`IntoStatus`] for it, in one
//! place. [`to_status`] then builds the status the same way everywhere:
//!
//! - the gRPC code from [`IntoStatus::code`];
//! - the error's text as the status message;
//! - a `google.rpc.ErrorInfo` in the status details, with a stable machine-readable
//!   [`IntoStatus::reason`] (e.g. `SOLD_OUT`) and domain `flashsale`;
//! - the same reason in the `flashsale-reason` metadata, for clients that do not decode details;
//! - `retry-after` metadata (whole seconds, at least 1) when retrying later can help.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status, metadata::MetadataValue};
use tonic_types::{ErrorDetails, StatusExt};

/// The ErrorInfo domain of every flashsale error.
pub const ERROR_DOMAIN: &str = "flashsale";

/// Metadata key carrying the machine-readable reason.
pub const REASON_METADATA: &str = "flashsale-reason";

/// Metadata key carrying the seconds after which a retry may succeed.
pub const RETRY_AFTER_METADATA: &str = "retry-after";

/// An error that knows its gRPC code and reason.
pub trait IntoStatus: std::fmt::Display {
    /// The gRPC status code.
    fn code(&self) -> Code;

    /// A stable, upper-snake-case reason, e.g. `SOLD_OUT`, `INVALID_QUANTITY`.
    fn reason(&self) -> &'static str;

    /// When a retry may succeed; `None` when retrying will not help.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// Extra key/value facts for the ErrorInfo (e.g. the original order id of a duplicate).
    fn details(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// Builds the status for an error (see the module docs for what it carries).
pub fn to_status<E: IntoStatus + ?Sized>(error: &E) -> Status {
    let reason = error.reason();
    let facts: HashMap<String, String> = error
        .details()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    let mut status = Status::with_error_details(
        error.code(),
        error.to_string(),
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, facts.clone()),
    );
    let metadata = status.metadata_mut();
    if let Ok(value) = MetadataValue::try_from(reason) {
        metadata.insert(REASON_METADATA, value);
    }
    if let Some(after) = error.retry_after() {
        let secs = after.as_secs_f64().ceil().max(1.0) as u64;
        metadata.insert(RETRY_AFTER_METADATA, MetadataValue::from(secs));
    }
    for (key, value) in facts {
        let name = format!("flashsale-{}", key.replace('_', "-"));
        if let (Ok(name), Ok(value)) = (
            tonic::metadata::AsciiMetadataKey::from_bytes(name.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            metadata.insert(name, value);
        }
    }
    status
}

/// Reads the reason of a status made by [`to_status`] (from the details, else the metadata).
pub fn reason_of(status: &Status) -> Option<String> {
    if let Some(info) = status.get_details_error_info() {
        return Some(info.reason);
    }
    status
        .metadata()
        .get(REASON_METADATA)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Reads a fact of a status made by [`to_status`], e.g. `order_id`.
pub fn detail_of(status: &Status, key: &str) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

/// Reads `retry-after` (seconds) of a status.
pub fn retry_after_of(status: &Status) -> Option<Duration> {
    status
        .metadata()
        .get(RETRY_AFTER_METADATA)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("sale s1 is sold out")]
    struct SoldOut;

    impl IntoStatus for SoldOut {
        fn code(&self) -> Code {
            Code::ResourceExhausted
        }
        fn reason(&self) -> &'static str {
            "SOLD_OUT"
        }
        fn retry_after(&self) -> Option<Duration> {
            Some(Duration::from_millis(1500))
        }
        fn details(&self) -> Vec<(&'static str, String)> {
            vec![("sale_id", "s1".into())]
        }
    }

    #[test]
    fn status_carries_code_reason_retry_and_facts() {
        let status = to_status(&SoldOut);
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "sale s1 is sold out");
        assert_eq!(reason_of(&status).as_deref(), Some("SOLD_OUT"));
        assert_eq!(retry_after_of(&status), Some(Duration::from_secs(2)));
        assert_eq!(detail_of(&status, "sale_id").as_deref(), Some("s1"));
        assert_eq!(
            status
                .metadata()
                .get("flashsale-sale-id")
                .unwrap()
                .to_str()
                .unwrap(),
            "s1"
        );
    }
}
