//! Logs (and, later, traces and metrics) for a service process.
//!
//! [`init`] installs the global subscriber once and returns a [`TelemetryGuard`] that flushes
//! on drop. Tests call [`init_for_tests`], which stays silent unless `TEST_LOG` is set.

use std::{io::IsTerminal, sync::Once};

use serde::{Deserialize, Serialize};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::{Invalid, Validate};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Telemetry settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// A `tracing` filter, e.g. `info` or `info,flashsale_inventory=debug`.
    pub log_level: String,
    /// Line format.
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Text,
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), Invalid> {
        EnvFilter::try_new(&self.log_level)
            .map(drop)
            .map_err(|e| Invalid::new("log_level", format!("not a log filter: {e}")))
    }
}

/// Keeps telemetry running; flushes what is buffered when dropped.
#[derive(Debug)]
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    service: &'static str,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        tracing::debug!(service = self.service, "telemetry flushed");
    }
}

/// Installs logging for `service`. A second call (e.g. in-process tests) keeps the first
/// subscriber and still returns a guard.
pub fn init(service: &'static str, config: &TelemetryConfig) -> TelemetryGuard {
    let filter = EnvFilter::try_new(&config.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let installed = match config.log_format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(true),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if installed.is_ok() {
        tracing::debug!(service, "telemetry installed");
    }
    TelemetryGuard { service }
}

/// Logging for tests: silent unless `TEST_LOG` is set (to a filter, or `1` for `debug`).
pub fn init_for_tests() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(level) = std::env::var("TEST_LOG") else {
            return;
        };
        let level = if level == "1" || level.is_empty() {
            "debug".to_owned()
        } else {
            level
        };
        let _ = tracing_subscriber::registry()
            .with(EnvFilter::new(level))
            .with(fmt::layer().with_test_writer())
            .try_init();
    });
}
