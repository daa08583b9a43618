//! `flashsale up`: the whole mesh on loopback in one process.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use flashsale_runtime::{Shutdown, shutdown::drain, telemetry};
use tokio::net::TcpListener;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    cli::{Component, UpArgs},
    config::MeshConfig,
    serve::{build, listen_addr, run_sidecar},
};

pub(crate) async fn run(args: UpArgs, config: MeshConfig) -> Result<()> {
    let _telemetry = telemetry::init("flashsale-up", &config.telemetry);
    let shutdown = Shutdown::on_signals().context("installing signal handlers")?;

    let mut servers = Vec::new();
    let mut endpoints = Vec::new();
    for component in Component::ALL {
        let addr = listen_addr(component, &config);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("{}: cannot listen on {addr}", component.name()))?;
        let addr = listener.local_addr()?;
        if component == Component::LimiterSidecar {
            let (config, shutdown) = (config.clone(), shutdown.clone());
            servers.push(tokio::spawn(async move {
                run_sidecar(&config, None, listener, &shutdown).await
            }));
            endpoints.push((component, addr, vec!["(proxy to the gateway)"]));
            continue;
        }
        let server = build(component, &config, &shutdown).await?;
        let names: Vec<&'static str> = server.service_names().to_vec();
        let stop = shutdown.wait();
        servers.push(tokio::spawn(async move {
            server
                .serve(listener, stop)
                .await
                .map_err(anyhow::Error::from)
        }));
        endpoints.push((component, addr, names));
    }

    println!("flashsale mesh is up:");
    for (component, addr, names) in &endpoints {
        let status = health(*addr).await;
        println!(
            "  {:<10} http://{addr:<21} {:<11} {}",
            component.name(),
            status.as_str_name(),
            names.join(", ")
        );
        if status != ServingStatus::Serving {
            shutdown.trigger();
            bail!("{} does not report SERVING", component.name());
        }
    }

    if args.exit {
        shutdown.trigger();
    } else {
        println!("Press Ctrl-C to stop.");
    }
    let all = futures::future::join_all(servers);
    let (_, results) = drain(all, &shutdown, config.server.shutdown_grace).await;
    for result in results.into_iter().flatten() {
        result.context("server task panicked")??;
    }
    Ok(())
}

async fn health(addr: std::net::SocketAddr) -> ServingStatus {
    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .ok()?
            .connect()
            .await
            .ok()?;
        let mut client = HealthClient::new(channel);
        let response = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    };
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .ok()
        .flatten()
        .unwrap_or(ServingStatus::Unknown)
}
