//! For `flashsale up`: Redis, NATS and Postgres where the configuration says, started as local
//! processes (files under the data folder) when nothing answers there.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context, Result, bail};
use flashsale_testkit::{NatsServer, PostgresServer, RedisServer};
use secrecy::ExposeSecret;

use crate::config::MeshConfig;

/// The servers `up` started itself (stopped when dropped).
#[derive(Debug, Default)]
pub(crate) struct Started {
    redis: Option<RedisServer>,
    nats: Option<NatsServer>,
    postgres: Option<PostgresServer>,
}

impl Started {
    /// What was started, for the summary.
    pub(crate) fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(r) = &self.redis {
            lines.push(format!("started redis-server on {}", r.url()));
        }
        if let Some(n) = &self.nats {
            lines.push(format!("started nats-server -js on {}", n.url()));
        }
        if let Some(p) = &self.postgres {
            lines.push(format!("started postgres on 127.0.0.1:{}", p.port()));
        }
        lines
    }
}

/// `host:port` of a URL like `redis://[user:pass@]host:port[/path]`.
fn address(url: &str, default_port: u16) -> Option<(String, u16)> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split(['/', '?', ',']).next()?;
    match host_port.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((host_port.to_owned(), default_port)),
    }
}

async fn reachable(host: &str, port: u16) -> bool {
    let target = format!("{host}:{port}");
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(&target)
        )
        .await,
        Ok(Ok(_))
    )
}

fn is_local(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Makes sure each store answers where configured, starting local ones where nothing does.
pub(crate) async fn ensure(config: &MeshConfig, data_dir: &Path) -> Result<Started> {
    let mut started = Started::default();
    let redis_url = config.redis.url.expose_secret().to_owned();
    let (host, port) = address(&redis_url, 6379).context("redis.url has no host")?;
    if !reachable(&host, port).await {
        if !is_local(&host) {
            bail!("Redis at {host}:{port} does not answer");
        }
        started.redis = Some(RedisServer::start_at(port, &data_dir.join("redis")).await?);
    }
    let (host, port) = address(&config.nats.url, 4222).context("nats.url has no host")?;
    if !reachable(&host, port).await {
        if !is_local(&host) {
            bail!("NATS at {host}:{port} does not answer");
        }
        started.nats = Some(NatsServer::start_at(port, &data_dir.join("nats")).await?);
    }
    let pg_url = config.postgres.url.expose_secret().to_owned();
    let (host, port) = address(&pg_url, 5432).context("postgres.url has no host")?;
    if !reachable(&host, port).await {
        if !is_local(&host) {
            bail!("Postgres at {host}:{port} does not answer");
        }
        started.postgres = Some(PostgresServer::start_at(port, &data_dir.join("postgres")).await?);
    }
    Ok(started)
}

/// The gRPC address components listen on, as a URL.
pub(crate) fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_of_store_urls() {
        assert_eq!(
            super::address("redis://127.0.0.1:6379", 1),
            Some(("127.0.0.1".into(), 6379))
        );
        assert_eq!(
            super::address("redis://:pw@h:7000/0", 1),
            Some(("h".into(), 7000))
        );
        assert_eq!(
            super::address("postgres://u:p@db:5433/flashsale", 1),
            Some(("db".into(), 5433))
        );
        assert_eq!(
            super::address("nats://n1:4222,nats://n2:4222", 1),
            Some(("n1".into(), 4222))
        );
        assert_eq!(super::address("nats://n1", 4222), Some(("n1".into(), 4222)));
    }
}
