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
