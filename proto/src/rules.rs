//! The identifier rules stated in `flashsale/v1/common.proto`, as code every service checks
//! input against.

use std::fmt;

/// Longest identifier, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Why an identifier is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    /// The field, e.g. `sale_id`.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.reason)
    }
}

impl std::error::Error for IdError {}

fn check_len(field: &'static str, value: &str, allow_empty: bool) -> Result<(), IdError> {
    if value.is_empty() && !allow_empty {
        return Err(IdError {
            field,
            reason: "is required".into(),
        });
    }
    if value.len() > MAX_ID_BYTES {
        return Err(IdError {
            field,
            reason: format!("is {} bytes; at most {MAX_ID_BYTES}", value.len()),
        });
    }
    Ok(())
}

/// A sale id: 1..=128 bytes of ASCII letters, digits, `-`, `_`, `.`, `:` (it sits inside a
/// Redis hash tag, so braces are not allowed).
pub fn sale_id(value: &str) -> Result<(), IdError> {
    check_len("sale_id", value, false)?;
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(IdError {
            field: "sale_id",
            reason: format!("contains {bad:?}; allowed are ASCII letters, digits, - _ . :"),
        });
    }
    Ok(())
}

/// A user id, order id or reservation id: 1..=128 bytes without control characters.
pub fn text_id(field: &'static str, value: &str) -> Result<(), IdError> {
    check_len(field, value, false)?;
    no_control(field, value)
}

/// An idempotency key: 0..=128 bytes without control characters; empty means none.
pub fn idempotency_key(value: &str) -> Result<(), IdError> {
    check_len("idempotency_key", value, true)?;
    no_control("idempotency_key", value)
}

fn no_control(field: &'static str, value: &str) -> Result<(), IdError> {
    if value.chars().any(char::is_control) {
        return Err(IdError {
            field,
            reason: "contains control characters".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sale_ids() {
        assert!(sale_id("spring-2026_drop.1:a").is_ok());
        assert_eq!(sale_id("").unwrap_err().reason, "is required");
        assert!(sale_id("a{b}").is_err());
        assert!(sale_id("a b").is_err());
        assert!(sale_id("é").is_err());
        assert!(sale_id(&"x".repeat(128)).is_ok());
        assert!(
            sale_id(&"x".repeat(129))
                .unwrap_err()
                .reason
                .contains("129 bytes")
        );
    }

    #[test]
    fn text_ids_and_keys() {
        assert!(text_id("user_id", "用户-42 😀").is_ok());
        assert!(text_id("user_id", "").is_err());
        assert!(text_id("user_id", "a\u{0}b").is_err());
        assert!(text_id("user_id", &"é".repeat(65)).is_err(), "130 bytes");
        assert!(idempotency_key("").is_ok());
        assert!(idempotency_key("retry-1").is_ok());
        assert!(idempotency_key("a\nb").is_err());
    }
}
