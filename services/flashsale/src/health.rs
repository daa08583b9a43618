//! `flashsale health`: the grpc.health.v1 status of one or more servers.

use anyhow::{Result, bail};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::cli::HealthArgs;

/// Asks every target in turn and prints one line each; fails unless all are SERVING.
pub(crate) async fn run(args: &HealthArgs) -> Result<()> {
    let mut failed = Vec::new();
    for target in &args.targets {
        match check(target, &args.service, args.timeout).await {
            Ok(ServingStatus::Serving) => println!("{target}: SERVING"),
            Ok(status) => {
                println!("{target}: {}", status.as_str_name());
                failed.push(target.as_str());
            }
            Err(reason) => {
                println!("{target}: UNREACHABLE ({reason})");
                failed.push(target.as_str());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("not serving: {}", failed.join(", "))
    }
}

async fn check(
    target: &str,
    service: &str,
    timeout: std::time::Duration,
) -> Result<ServingStatus, String> {
    let url = if target.contains("://") {
        target.to_owned()
    } else {
        format!("http://{target}")
    };
    let endpoint = tonic::transport::Endpoint::from_shared(url)
        .map_err(|e| format!("not an address: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            reason = format!("{reason}: {cause}");
            source = cause.source();
        }
        reason
    })?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown))
}
