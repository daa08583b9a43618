use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream::{self, stream};
use flashsale_testkit::NatsServer;

async fn jetstream(url: &str) -> Result<jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await?;
    Ok(jetstream::new(client))
}

#[tokio::test]
async fn nats_jetstream_keeps_streams_across_kill_and_restart() -> Result<()> {
    flashsale_runtime::telemetry::init_for_tests();
    let mut nats = NatsServer::start().await?;
    let port = nats.port();

    let js = jetstream(&nats.url()).await?;
    js.create_stream(stream::Config {
        name: "KIT".into(),
        subjects: vec!["kit.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    js.publish("kit.one", "first".into()).await?.await?;

    nats.kill();
    assert!(!nats.is_running());

    nats.restart().await?;
    assert_eq!(nats.port(), port, "same port after restart");
    let js = jetstream(&nats.url()).await?;
    let ack = js.publish("kit.two", "second".into()).await?.await?;
    assert_eq!(
        ack.sequence, 2,
        "the stream and its first message survived the restart"
    );
    let mut stream = js.get_stream("KIT").await?;
    assert_eq!(stream.info().await?.state.messages, 2);
    let first = stream.get_raw_message(1).await?;
    assert_eq!(&first.payload[..], b"first");

    nats.pause()?;
    let stalled = tokio::time::timeout(
        Duration::from_millis(300),
        js.publish("kit.three", "third".into()),
    )
    .await;
    let acked = match stalled {
        Err(_) => false,
        Ok(Err(_)) => false,
        Ok(Ok(pending)) => tokio::time::timeout(Duration::from_millis(300), pending)
            .await
            .is_ok_and(|r| r.is_ok()),
    };
    assert!(!acked, "a paused server acknowledges nothing");
    nats.resume()?;
    Ok(())
}

/// Three routed nodes keep a 3-replica stream writable with one node dead, and the node
/// catches up when it comes back.
#[tokio::test]
async fn a_three_node_cluster_keeps_a_replicated_stream_through_a_node_loss() -> Result<()> {
    flashsale_runtime::telemetry::init_for_tests();
    let mut cluster = flashsale_testkit::NatsCluster::start(3).await?;
    assert_eq!(cluster.len(), 3);
    assert_eq!(cluster.url().split(',').count(), 3);

    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(cluster.servers())
        .await?;
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "KIT3".into(),
        subjects: vec!["kit3.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await?;
    js.publish("kit3.a", "one".into()).await?.await?;

    for victim in 0..3 {
        cluster.node(victim).kill();
        // Quorum is two of three: publishing goes on (the client fails over if it was on the
        // dead node; a new stream leader may take a moment to be elected).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(3), async {
                js.publish(format!("kit3.n{victim}"), "during".into())
                    .await?
                    .await
                    .map_err(anyhow::Error::from)
            })
            .await;
            match attempt {
                Ok(Ok(_)) => break,
                _ if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                other => panic!("no publish with node {victim} down: {other:?}"),
            }
        }
        cluster.node(victim).restart().await?;
        // The next kill may only come once the restarted node has caught up again: with it
        // still behind, losing another would leave no quorum.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let caught_up = async {
                let info = js.get_stream("KIT3").await?.info().await?.clone();
                let replicas = info.cluster.map(|c| c.replicas).unwrap_or_default();
                anyhow::Ok(replicas.len() == 2 && replicas.iter().all(|r| r.current && !r.offline))
            };
            if tokio::time::timeout(Duration::from_secs(3), caught_up)
                .await
                .is_ok_and(|r| r.is_ok_and(|ok| ok))
            {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "node {victim} never caught up after its restart"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut stream = js.get_stream("KIT3").await?;
    let info = stream.info().await?;
    assert!(info.state.messages >= 4, "{:?}", info.state);
    assert_eq!(info.config.num_replicas, 3);
    Ok(())
}
