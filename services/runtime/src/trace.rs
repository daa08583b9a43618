//! W3C trace context across process hops that are not gRPC: NATS message headers.
//!
//! [`inject`] writes the current span's context (`traceparent`, `tracestate`) into a header map;
//! [`extract`] reads it back and [`follow`] makes a span its child, so one purchase is one trace
//! from the gateway through JetStream to the order consumer. Without an OpenTelemetry layer
//! installed there is no context and nothing is written.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct NatsInjector<'a>(&'a mut async_nats::HeaderMap);

impl Injector for NatsInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct NatsExtractor<'a>(&'a async_nats::HeaderMap);

impl Extractor for NatsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's trace context into NATS headers.
pub fn inject(headers: &mut async_nats::HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut NatsInjector(headers));
}

/// Reads a trace context from NATS headers (an empty context when there is none).
pub fn extract(headers: Option<&async_nats::HeaderMap>) -> Context {
    match headers {
        Some(headers) => TraceContextPropagator::new().extract(&NatsExtractor(headers)),
        None => Context::new(),
    }
}

/// Makes `span` a child of the trace carried in `headers`, if any.
pub fn follow(span: &tracing::Span, headers: Option<&async_nats::HeaderMap>) {
    let parent = extract(headers);
    use opentelemetry::trace::TraceContextExt;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceContextExt, TracerProvider};
    use tracing_subscriber::prelude::*;

    use super::*;

    #[test]
    fn trace_context_survives_a_header_round_trip() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let publish = tracing::info_span!("publish");
            let mut headers = async_nats::HeaderMap::new();
            let sent = publish.in_scope(|| {
                inject(&mut headers);
                tracing::Span::current()
                    .context()
                    .span()
                    .span_context()
                    .trace_id()
            });
            assert!(headers.get("traceparent").is_some(), "traceparent written");

            let consume = tracing::info_span!("consume");
            follow(&consume, Some(&headers));
            let received = consume.context().span().span_context().trace_id();
            assert_eq!(
                received, sent,
                "the consumer's span is in the publisher's trace"
            );
        });
    }

    #[test]
    fn no_headers_no_parent() {
        let context = extract(None);
        assert!(!context.span().span_context().is_valid());
    }
}
