//! `flashsale token` and `flashsale sale …`: operating a running gateway from the shell.

use std::time::Duration;

use anyhow::{Context, Result};
use flashsale_gateway::auth::{Signer, bearer};
use flashsale_proto::{
    time::{duration, timestamp, unix_ms},
    v1::{self as pb, sale_admin_client::SaleAdminClient},
};
use tonic::transport::Channel;

use crate::{
    cli::{GatewayArgs, SaleCommand, TokenArgs},
    config::MeshConfig,
};

pub(crate) fn token(args: &TokenArgs, config: &MeshConfig) -> Result<()> {
    let signer = Signer::new(&config.gateway.auth)?;
    println!("{}", signer.token(&args.user, args.admin, args.ttl));
    Ok(())
}

/// A channel to the gateway and the admin token to call it with.
pub(crate) async fn admin_client(
    args: &GatewayArgs,
    config: &MeshConfig,
) -> Result<(Channel, String)> {
    let url = args
        .gateway
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.gateway.listen));
    let channel = tonic::transport::Endpoint::from_shared(url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("connecting to the gateway at {url}"))?;
    let token = match &args.token {
        Some(token) => token.clone(),
        None => {
            Signer::new(&config.gateway.auth)?.token("operator", true, Duration::from_secs(600))
        }
    };
    Ok((channel, token))
}

fn authorized<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer(token));
    request
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    let reason = flashsale_runtime::status::reason_of(&status).unwrap_or_default();
    anyhow::anyhow!("{:?} {reason}: {}", status.code(), status.message())
}

pub(crate) fn describe(sale: &pb::Sale) -> String {
    let at = |t: &Option<prost_types::Timestamp>| {
        t.as_ref()
            .and_then(unix_ms)
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default()
    };
    let mut extras = String::new();
    if sale.stock_buckets > 1 {
        extras.push_str(&format!("  {} stock buckets", sale.stock_buckets));
    }
    if let Some(room) = &sale.waiting_room {
        extras.push_str(&format!(
            "  waiting room {}/s, {} active",
            room.admissions_per_second, room.active_cap
        ));
    }
    format!(
        "{}  {:?}  {:>8} units  limit {}  {} {}.{:02}  {} → {}{extras}  \"{}\"",
        sale.sale_id,
        pb::SaleState::try_from(sale.state).unwrap_or_default(),
        sale.stock,
        sale.per_user_limit,
        sale.currency,
        sale.unit_price_minor / 100,
        sale.unit_price_minor % 100,
        at(&sale.starts_at),
        at(&sale.ends_at),
        sale.name
    )
}

pub(crate) async fn sale(command: SaleCommand, config: &MeshConfig) -> Result<()> {
    match command {
        SaleCommand::Create {
            gateway,
            id,
            name,
            stock,
            limit,
            price,
            currency,
            starts_in,
            duration: open_for,
            hold,
            payment_window,
            stock_buckets,
            room,
        } => {
            let (channel, token) = admin_client(&gateway, config).await?;
            let mut client = SaleAdminClient::new(channel);
            let starts = flashsale_proto::time::now_ms() + starts_in.as_millis() as i64;
            let sale = pb::Sale {
                sale_id: id.unwrap_or_default(),
                name,
                stock,
                per_user_limit: limit,
                unit_price_minor: price,
                currency,
                starts_at: Some(timestamp(starts)),
                ends_at: Some(timestamp(starts + open_for.as_millis() as i64)),
                reservation_hold: Some(duration(hold.as_millis() as u64)),
                payment_window: Some(duration(payment_window.as_millis() as u64)),
                state: 0,
                stock_buckets,
                waiting_room: room.to_pb(),
            };
            let created = client
                .create_sale(authorized(
                    pb::CreateSaleRequest { sale: Some(sale) },
                    &token,
                ))
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", describe(&created));
        }
        SaleCommand::List { gateway } => list(&gateway, config).await?,
        SaleCommand::Stats { gateway, sale_id } => {
            let (channel, token) = admin_client(&gateway, config).await?;
            let mut client = SaleAdminClient::new(channel);
            let stats = client
                .get_sale_stats(authorized(pb::GetSaleStatsRequest { sale_id }, &token))
                .await
                .map_err(status_error)?
                .into_inner();
            print_stats(&stats);
        }
        SaleCommand::End { gateway, sale_id } => {
            let (channel, token) = admin_client(&gateway, config).await?;
            let mut client = SaleAdminClient::new(channel);
            let ended = client
                .end_sale(authorized(pb::EndSaleRequest { sale_id }, &token))
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", describe(&ended));
        }
        SaleCommand::Reconcile {
            gateway,
            sale_id,
            repair,
        } => {
            let (channel, token) = admin_client(&gateway, config).await?;
            let mut client = SaleAdminClient::new(channel);
            let report = client
                .reconcile(authorized(pb::ReconcileRequest { sale_id, repair }, &token))
                .await
                .map_err(status_error)?
                .into_inner();
            print_report(&report);
        }
    }
    Ok(())
}

/// Every sale, page after page.
async fn list(gateway: &GatewayArgs, config: &MeshConfig) -> Result<()> {
    let (channel, token) = admin_client(gateway, config).await?;
    let mut buyer = pb::flash_sale_client::FlashSaleClient::new(channel);
    let mut page_token = String::new();
    loop {
        let page = buyer
            .list_sales(authorized(
                pb::ListSalesRequest {
                    state: 0,
                    page_size: 200,
                    page_token: page_token.clone(),
                },
                &token,
            ))
            .await
            .map_err(status_error)?
            .into_inner();
        for sale in &page.sales {
            println!("{}", describe(sale));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(())
}

/// A Reconcile report, one line a source.
fn print_report(report: &pb::ReconcileReport) {
    let show = |s: &Option<pb::StockLevel>| match s {
        Some(s) => format!(
            "available {} held {} sold {} of {}",
            s.available, s.held, s.sold, s.total
        ),
        None => "missing".into(),
    };
    println!("Redis:     {}", show(&report.redis));
    println!(
        "Postgres:  pending {} units, paid {} units",
        report.postgres_held, report.postgres_sold
    );
    println!("Stream:    {} events waiting", report.stream_pending);
    if report.discrepancies.is_empty() {
        println!("Consistent.");
    }
    for d in &report.discrepancies {
        println!("  - {d}");
    }
    if report.repaired {
        println!("Repaired:  {}", show(&report.redis_after));
    }
}

pub(crate) fn print_stats(stats: &pb::SaleStats) {
    if let Some(s) = &stats.stock {
        println!(
            "stock     available {}  held {}  sold {}  of {}",
            s.available, s.held, s.sold, s.total
        );
    }
    println!("accepted  {}", stats.accepted);
    let mut rejected: Vec<_> = stats.rejected_by_reason.iter().collect();
    rejected.sort();
    for (reason, n) in rejected {
        println!("rejected  {reason:<20} {n}");
    }
    let mut orders: Vec<_> = stats.orders_by_status.iter().collect();
    orders.sort();
    for (status, n) in orders {
        println!("orders    {status:<20} {n}");
    }
}
