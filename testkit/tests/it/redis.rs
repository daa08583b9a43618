use std::time::Duration;

use anyhow::Result;
use flashsale_testkit::RedisServer;
use fred::prelude::*;

async fn client(url: &str) -> Result<Client> {
    let client = Builder::from_config(Config::from_url(url)?)
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .build()?;
    client.init().await?;
    Ok(client)
}

#[tokio::test]
async fn redis_starts_kills_restarts_empty_and_pauses() -> Result<()> {
    flashsale_runtime::telemetry::init_for_tests();
    let mut redis = RedisServer::start().await?;
    let port = redis.port();

    let c = client(&redis.url()).await?;
    c.set::<(), _, _>("k", "v", None, None, false).await?;
    assert_eq!(c.get::<Option<String>, _>("k").await?.as_deref(), Some("v"));
    c.quit().await?;

    redis.kill();
    assert!(!redis.is_running());
    assert!(
        client(&redis.url()).await.is_err(),
        "a killed server refuses connections"
    );

    redis.restart().await?;
    assert_eq!(redis.port(), port, "same port after restart");
    let c = client(&redis.url()).await?;
    assert_eq!(
        c.get::<Option<String>, _>("k").await?,
        None,
        "Redis keeps nothing on disk: a restart comes back empty"
    );
    c.set::<(), _, _>("k2", "v2", None, None, false).await?;

    redis.pause()?;
    let stalled =
        tokio::time::timeout(Duration::from_millis(300), c.get::<Option<String>, _>("k2")).await;
    assert!(stalled.is_err(), "a paused server answers nothing");
    redis.resume()?;
    assert_eq!(
        c.get::<Option<String>, _>("k2").await?.as_deref(),
        Some("v2")
    );
    Ok(())
}

/// Three masters with a replica each: fred reaches every slot through one URL, and when the
/// master of a key is killed its replica takes over with the data.
#[tokio::test]
async fn a_cluster_spreads_slots_and_survives_a_master_loss() -> Result<()> {
    flashsale_runtime::telemetry::init_for_tests();
    let mut cluster = flashsale_testkit::RedisCluster::start(3, 1).await?;
    let c = Builder::from_config(Config::from_url(&cluster.url())?)
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
        // Reconnecting is what makes fred read the new cluster layout after a failover.
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()?;
    c.init().await?;
    // Keys with different hash tags land on different masters.
    let keys: Vec<String> = (0..30).map(|i| format!("{{tag-{i}}}:k")).collect();
    for key in &keys {
        c.set::<(), _, _>(key, "v", None, None, false).await?;
    }
    let mut masters = std::collections::BTreeSet::new();
    for key in &keys {
        masters.insert(cluster.master_of(key).await?);
    }
    assert_eq!(masters.len(), 3, "30 tags over 3 masters: {masters:?}");

    // Replication is asynchronous: give the replicas a moment, then kill the first key's master.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let victim = cluster.master_of(&keys[0]).await?;
    cluster.nodes()[victim].kill();
    tokio::time::sleep(flashsale_testkit::CLUSTER_NODE_TIMEOUT * 2).await;
    cluster.wait_ok().await?;
    let promoted = cluster.master_of(&keys[0]).await?;
    assert_ne!(promoted, victim, "a replica took over");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match c.get::<Option<String>, _>(&keys[0]).await {
            Ok(value) => {
                assert_eq!(value.as_deref(), Some("v"), "the replica had the data");
                break;
            }
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "waiting for the client to follow the failover");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    c.quit().await?;
    Ok(())
}
