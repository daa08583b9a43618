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

struct HttpInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HttpExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

use opentelemetry::trace::TraceContextExt as _;

/// Writes the current span's trace context into HTTP (gRPC) headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    let context = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&context, &mut HttpInjector(headers));
}

/// The gRPC service and method of a request path `/pkg.Service/Method`.
fn rpc_names(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    path.split_once('/').unwrap_or((path, ""))
}

/// Paths that get no span of their own (probes would fill traces with noise).
fn untraced(path: &str) -> bool {
    path.starts_with(crate::server::HEALTH_PATH_PREFIX)
        || path.starts_with(crate::server::REFLECTION_PATH_PREFIX)
}

/// A server span per gRPC call, child of the caller's span when the call carries
/// `traceparent`; named and attributed after OpenTelemetry's RPC conventions.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTraceLayer;

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

/// The service [`ServerTraceLayer`] makes.
#[derive(Debug, Clone)]
pub struct ServerTrace<S> {
    inner: S,
}

/// The server span for a request (disabled for health and reflection).
pub fn server_span(headers: &http::HeaderMap, path: &str) -> tracing::Span {
    if untraced(path) {
        return tracing::Span::none();
    }
    let (service, method) = rpc_names(path);
    let span = tracing::info_span!(
        "grpc.server",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        trace_id = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HttpExtractor(headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

impl<S, B> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let span = server_span(request.headers(), request.uri().path());
        self.inner.call(request).instrument(span)
    }
}

/// A tonic channel that opens a client span per call and sends its trace context along, so
/// the server's span becomes its child.
#[derive(Debug, Clone)]
pub struct TracedChannel {
    inner: tonic::transport::Channel,
}

impl TracedChannel {
    /// Traces calls over `channel`.
    pub fn new(channel: tonic::transport::Channel) -> Self {
        Self { inner: channel }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for TracedChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = tracing::instrument::Instrumented<tonic::transport::channel::ResponseFuture>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        use tracing::Instrument;
        let path = request.uri().path().to_owned();
        let (service, method) = rpc_names(&path);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        );
        span.in_scope(|| inject_http(request.headers_mut()));
        tower::Service::call(&mut self.inner, request).instrument(span)
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
