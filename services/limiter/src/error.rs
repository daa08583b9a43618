//! The limiter's one error type and its gRPC mapping.

use std::time::Duration;

use flashsale_runtime::IntoStatus;
use tonic::Code;

use crate::rules::RulesError;

/// Everything that can go wrong in the limiter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request the limiter cannot judge (no domain, no descriptors, a bad unit).
    #[error("{0}")]
    InvalidArgument(String),
    /// The rules file does not parse.
    #[error(transparent)]
    Rules(#[from] RulesError),
    /// The rules file cannot be read.
    #[error("rules file {0}")]
    RulesFile(String),
    /// Redis could not be reached at start-up.
    #[error("redis: {0}")]
    Redis(String),
    /// The caller is over a limit (the tower layer and the sidecar answer with this).
    #[error("rate limited by {rule}; retry after {retry_after:?}")]
    RateLimited {
        /// The rule that refused.
        rule: String,
        /// When a retry may pass.
        retry_after: Duration,
    },
}

impl IntoStatus for Error {
    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) | Self::Rules(_) | Self::RulesFile(_) => Code::InvalidArgument,
            Self::Redis(_) => Code::Unavailable,
            Self::RateLimited { .. } => Code::ResourceExhausted,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "INVALID_ARGUMENT",
            Self::Rules(_) | Self::RulesFile(_) => "RULES_INVALID",
            Self::Redis(_) => "REDIS_UNAVAILABLE",
            Self::RateLimited { .. } => "RATE_LIMITED",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::Redis(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::RateLimited { rule, .. } => vec![("rule", rule.clone())],
            _ => Vec::new(),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        flashsale_runtime::to_status(&error)
    }
}
