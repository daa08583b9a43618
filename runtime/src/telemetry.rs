//! Logs, traces and metrics for a service process.
//!
//! [`init`] installs, once per process:
//! - logs through `tracing` (text or JSON lines; JSON lines carry the trace id of the span they
//!   were written in);
//! - traces through OpenTelemetry, exported over OTLP/gRPC when `otlp_endpoint` is set (off by
//!   default). An unreachable collector costs nothing but dropped spans: exports time out in
//!   seconds and the exporter's own complaints are silenced unless asked for;
//! - metrics through the OpenTelemetry SDK into a Prometheus registry, served by
//!   [`serve_metrics`] on its own port (`/metrics`).
//!
//! It returns a [`TelemetryGuard`] that flushes traces on drop, within a bounded time. Tests
//! call [`init_for_tests`], which stays silent unless `TEST_LOG` is set.

use std::{
    future::Future,
    io::IsTerminal,
    net::SocketAddr,
    sync::{Once, OnceLock},
    time::Duration,
};

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    Resource,
    metrics::SdkMeterProvider,
    trace::{Sampler, SdkTracerProvider},
};
use serde::{Deserialize, Serialize};
use tracing_subscriber::{EnvFilter, Layer, fmt, prelude::*};

use crate::config::{Invalid, Validate};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors, with the spans (and their trace ids).
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
    /// OTLP/gRPC collector for traces, e.g. `http://otel-collector:4317`; empty means no traces
    /// are exported.
    pub otlp_endpoint: String,
    /// Share of new traces that are sampled, 0..=1 (a caller's decision is followed).
    pub trace_sample_ratio: f64,
    /// Where the Prometheus `/metrics` endpoint listens; unset means no endpoint.
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: "info".into(),
            log_format: LogFormat::Text,
            otlp_endpoint: String::new(),
            trace_sample_ratio: 1.0,
            metrics_listen: None,
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self) -> Result<(), Invalid> {
        EnvFilter::try_new(&self.log_level)
            .map(drop)
            .map_err(|e| Invalid::new("log_level", format!("not a log filter: {e}")))?;
        let endpoint = &self.otlp_endpoint;
        if !(endpoint.is_empty()
            || endpoint.starts_with("http://")
            || endpoint.starts_with("https://"))
        {
            return Err(Invalid::new(
                "otlp_endpoint",
                "must start with http:// or https://",
            ));
        }
        if !(0.0..=1.0).contains(&self.trace_sample_ratio) {
            return Err(Invalid::new("trace_sample_ratio", "must be within 0..=1"));
        }
        Ok(())
    }
}

/// Keeps telemetry running; flushes buffered spans when dropped (at most a few seconds).
#[derive(Debug)]
#[must_use = "telemetry stops when the guard is dropped"]
pub struct TelemetryGuard {
    tracer: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(tracer) = self.tracer.take() {
            // Shutting down flushes; bound it so an absent collector never holds up an exit.
            let (done, wait) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = tracer.shutdown();
                let _ = done.send(());
            });
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }
}

/// The process's Prometheus registry, filled by the OpenTelemetry metrics SDK.
fn registry() -> &'static prometheus::Registry {
    static REGISTRY: OnceLock<prometheus::Registry> = OnceLock::new();
    REGISTRY.get_or_init(prometheus::Registry::new)
}

/// Installs the metrics pipeline once: instruments created through
/// `opentelemetry::global::meter` land in the Prometheus registry.
fn install_metrics(service: &'static str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let exporter = match opentelemetry_prometheus::exporter()
            .with_registry(registry().clone())
            .without_target_info()
            .build()
        {
            Ok(exporter) => exporter,
            Err(e) => {
                eprintln!("metrics disabled: {e}");
                return;
            }
        };
        let provider = SdkMeterProvider::builder()
            .with_reader(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        opentelemetry::global::set_meter_provider(provider);
    });
}

/// Text of every metric, in the Prometheus exposition format.
pub fn metrics_text() -> String {
    use prometheus::Encoder;
    let mut buffer = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&registry().gather(), &mut buffer);
    String::from_utf8(buffer).unwrap_or_default()
}

/// Serves `/metrics` (Prometheus text) and `/healthz` on `listener` until `shutdown`.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::{Router, http::header, routing::get};
    let app = Router::new()
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics_text(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }));
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn tracer(service: &'static str, config: &TelemetryConfig) -> Option<SdkTracerProvider> {
    if config.otlp_endpoint.is_empty() {
        return None;
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(config.otlp_endpoint.clone())
        .with_timeout(Duration::from_secs(3))
        .build();
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("traces disabled: {e}");
            return None;
        }
    };
    // The exporter speaks gRPC through tonic, so its batches go out on the Tokio runtime.
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.trace_sample_ratio,
        ))))
        .with_resource(
            Resource::builder()
                .with_service_name(service)
                .with_attribute(KeyValue::new("service.namespace", "flashsale"))
                .build(),
        )
        .build();
    Some(provider)
}

/// The filter for `level`, with the telemetry exporters' own chatter off unless named.
fn filter(level: &str) -> EnvFilter {
    let mut directives = level.to_owned();
    for noisy in [
        "opentelemetry",
        "opentelemetry_sdk",
        "opentelemetry_otlp",
        "h2",
        "tower",
        "hyper_util",
    ] {
        if !level.contains(noisy) {
            directives.push_str(&format!(",{noisy}=off"));
        }
    }
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs logging, tracing and metrics for `service`. A second call (in-process tests, `up`)
/// keeps the first subscriber and still returns a guard.
pub fn init(service: &'static str, config: &TelemetryConfig) -> TelemetryGuard {
    install_metrics(service);
    let provider = tracer(service, config);
    // Spans go to the exporter at `info` whatever the log level: a quiet log must not mean a
    // blind trace. Each layer filters on its own.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_filter(filter("info"))
    });
    let logs = match config.log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(true)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let installed = tracing_subscriber::registry()
        .with(otel)
        .with(logs.with_filter(filter(&config.log_level)))
        .try_init();
    if installed.is_ok() {
        tracing::debug!(service, tracing = provider.is_some(), "telemetry installed");
        TelemetryGuard { tracer: provider }
    } else {
        // Another subscriber was installed first; its exporter (if any) stays in charge.
        if let Some(p) = provider {
            let _ = p.shutdown();
        }
        TelemetryGuard { tracer: None }
    }
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
            .with(filter(&level))
            .with(fmt::layer().with_test_writer())
            .try_init();
    });
}
