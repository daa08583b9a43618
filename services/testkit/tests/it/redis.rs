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
