//! Serving gRPC: every server gets `grpc.health.v1` and reflection, serves on a listener the
//! caller bound, and drains when a shutdown future resolves.
//!
//! ```no_run
//! # async fn run(routes: flashsale_runtime::server::GrpcServer) -> Result<(), Box<dyn std::error::Error>> {
//! use flashsale_runtime::shutdown::Shutdown;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let shutdown = Shutdown::new();
//! routes.serve(listener, shutdown.wait()).await?;
//! # Ok(()) }
//! ```

use std::{convert::Infallible, future::Future, net::SocketAddr};

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{
    body::Body,
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::Server,
};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tower::Service;

use crate::config::ServerConfig;

/// A server could not start or failed while serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listener's address could not be read.
    #[error("listener: {0}")]
    Listener(#[from] std::io::Error),
    /// Reflection could not be built from the descriptor sets.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A gRPC server under construction: the services it hosts plus health and reflection.
pub struct GrpcServer {
    component: &'static str,
    config: ServerConfig,
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    health: HealthReporter,
    health_service: HealthServer<HealthService>,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("component", &self.component)
            .field("services", &self.names)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl GrpcServer {
    /// A server for `component` (a name for logs, e.g. `inventory`) with shared settings.
    pub fn new(component: &'static str, config: &ServerConfig) -> Self {
        let health = HealthReporter::new();
        let health_service = HealthServer::new(HealthService::from_health_reporter(health.clone()));
        let mut routes = RoutesBuilder::default();
        routes.add_service(health_service.clone());
        Self {
            component,
            config: config.clone(),
            routes,
            names: Vec::new(),
            health,
            health_service,
            tls: None,
        }
    }

    /// Serves mutual TLS when `tls` is given: only clients with a certificate from its CA get
    /// in (see [`crate::tls`]).
    #[must_use]
    pub fn with_tls(mut self, tls: Option<&crate::tls::MeshTls>) -> Self {
        self.tls = tls.map(crate::tls::MeshTls::server);
        self
    }

    /// Hosts a generated tonic service; it is reported SERVING and listed by reflection.
    #[must_use]
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.names.push(S::NAME);
        self
    }

    /// The health reporter, so the component can flip a service to NOT_SERVING (e.g. when its
    /// store is down) and back.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// The same health answers, served alone and in plaintext (see
    /// [`ServerConfig::health_listen`]).
    pub fn health_only(&self) -> HealthOnly {
        HealthOnly {
            component: self.component,
            service: self.health_service.clone(),
        }
    }

    /// The names of the hosted services (without health and reflection).
    pub fn service_names(&self) -> &[&'static str] {
        &self.names
    }

    /// Serves on `listener` until `shutdown` resolves, then reports NOT_SERVING, stops accepting
    /// and waits for in-flight calls. Bound the wait with [`crate::shutdown::drain`].
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        let local: SocketAddr = listener.local_addr()?;
        let tls = self.tls.clone();
        let routes = self.into_routes().await?;
        let GrpcRoutes {
            component,
            config,
            routes,
            names,
            health,
        } = routes;
        tracing::info!(%component, addr = %local, services = ?names, tls = tls.is_some(), "serving gRPC");

        let on_shutdown = async move {
            shutdown.await;
            for name in &names {
                health
                    .set_service_status(*name, ServingStatus::NotServing)
                    .await;
            }
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            tracing::info!(%component, "stopped accepting; draining in-flight calls");
        };

        let mut builder = Server::builder();
        let mutual = tls.is_some();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        builder
            .timeout(config.request_timeout)
            .concurrency_limit_per_connection(config.concurrency_per_connection)
            .tcp_nodelay(true)
            .layer(crate::trace::ServerTraceLayer)
            .layer(crate::tls::RequireClientCert { enabled: mutual })
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), on_shutdown)
            .await?;
        tracing::info!(%component, "drained");
        Ok(())
    }

    /// Finishes the routes (health set to SERVING, reflection added) without serving, for
    /// callers that need their own transport setup.
    pub async fn into_routes(self) -> Result<GrpcRoutes, ServeError> {
        let Self {
            component,
            config,
            mut routes,
            names,
            health,
            tls: _,
            health_service: _,
        } = self;
        let mut reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(flashsale_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(tonic_health_service_name())
            .with_service_name(REFLECTION_SERVICE);
        for name in &names {
            reflection = reflection.with_service_name(*name);
        }
        routes.add_service(reflection.build_v1()?);
        for name in &names {
            health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        health.set_service_status("", ServingStatus::Serving).await;
        Ok(GrpcRoutes {
            component,
            config,
            routes: routes.routes(),
            names,
            health,
        })
    }
}

/// A [`GrpcServer`]'s health service on a listener of its own.
#[derive(Debug, Clone)]
pub struct HealthOnly {
    component: &'static str,
    service: HealthServer<HealthService>,
}

impl HealthOnly {
    /// Answers health checks on `listener` until `shutdown` resolves; the statuses are the
    /// server's own, NOT_SERVING included while it drains.
    pub async fn serve<F>(self, listener: TcpListener, shutdown: F) -> Result<(), ServeError>
    where
        F: Future<Output = ()> + Send,
    {
        tracing::info!(component = %self.component, addr = %listener.local_addr()?, "answering health checks");
        Server::builder()
            .add_service(self.service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
            .await?;
        Ok(())
    }
}

/// Finished routes of a [`GrpcServer`].
#[derive(Debug)]
pub struct GrpcRoutes {
    /// The component name, for logs.
    pub component: &'static str,
    /// Shared server settings.
    pub config: ServerConfig,
    /// The routes, health and reflection included.
    pub routes: Routes,
    /// The hosted service names.
    pub names: Vec<&'static str>,
    /// The health reporter.
    pub health: HealthReporter,
}

/// The path prefix of every `grpc.health.v1` call: what probes ask, answered to anyone and never
/// traced or rate-limited.
pub const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// The path prefix of every reflection call.
pub const REFLECTION_PATH_PREFIX: &str = "/grpc.reflection.";

/// The reflection service's own name, listed beside the hosted services.
const REFLECTION_SERVICE: &str = "grpc.reflection.v1.ServerReflection";

fn tonic_health_service_name() -> &'static str {
    <tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService> as NamedService>::NAME
}
