use std::time::Duration;

use async_nats::HeaderMap;
use flashsale_proto::v1::DeadLetter;
use futures::StreamExt;
use prost::Message;

use crate::{harness, publish_all};

async fn dead_letters(h: &crate::Harness) -> Vec<DeadLetter> {
    let stream =
        h.js.get_stream(&h.config.stream.dead_letter_name)
            .await
            .unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(100).messages().await.unwrap();
    let mut letters = Vec::new();
    while let Some(m) = batch.next().await {
        let m = m.unwrap();
        letters.push(DeadLetter::decode(m.payload.clone()).unwrap());
        m.ack().await.unwrap();
    }
    letters
}

/// Undecodable, invalid and unknown-sale events go to the dead-letter stream with a reason and
/// leave the main stream; the good ones around them are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_with_a_reason() {
    let h = harness().await;
    let window = Duration::from_secs(900);
    let sale = h.sale(10, 1, window).await;
    let good = vec![
        h.reserve(&sale, "a", window).await,
        h.reserve(&sale, "b", window).await,
    ];

    let prefix = &h.config.stream.subject_prefix;
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", "garbage-1");
    h.js.publish_with_headers(
        format!("{prefix}.x"),
        headers,
        vec![0xff, 0xff, 0xff].into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let mut unknown = good[0].clone();
    unknown.order_id = "order-of-unknown-sale".into();
    unknown.sale_id = "no-such-sale".into();
    let mut invalid = good[1].clone();
    invalid.order_id = "order-with-zero-quantity".into();
    invalid.quantity = 0;
    publish_all(&h.js, prefix, &[unknown, invalid], 2).await;
    publish_all(&h.js, prefix, &good, 2).await;

    let (stop, task) = h.spawn_consumer();
    h.drained(Duration::from_secs(30)).await;
    stop.trigger();
    task.await.unwrap();

    assert_eq!(
        h.rows(&sale.sale_id).await,
        2,
        "the good events were written"
    );
    let mut reasons: Vec<String> = dead_letters(&h)
        .await
        .into_iter()
        .map(|l| l.reason)
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].starts_with("invalid: quantity 0"), "{reasons:?}");
    assert!(reasons[1].starts_with("undecodable"), "{reasons:?}");
    assert_eq!(reasons[2], "unknown sale no-such-sale");
}

/// An event that keeps failing to be delivered reaches `max_deliver`; the advisory watcher
/// moves it to the dead-letter stream instead of leaving it in limbo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_past_max_deliver_are_dead_lettered() {
    let h = harness().await;
    let PastMaxDeliver { watcher, event, .. } = past_max_deliver(&h, false).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.dead_letters().await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let letters = dead_letters(&h).await;
    assert!(
        letters[0].reason.contains("delivered 2 times"),
        "{:?}",
        letters[0].reason
    );
    assert_eq!(
        flashsale_proto::v1::OrderRequested::decode(letters[0].payload.as_slice()).unwrap(),
        event
    );
    h.drained(Duration::from_secs(5)).await;
    h.shutdown.trigger();
    watcher.await.unwrap().unwrap();
}

/// An event that reached `max_deliver` (2) with the max-deliveries watcher running; with
/// `no_dead_letters`, the dead-letter stream is deleted first, so the watcher's publish fails.
async fn past_max_deliver(h: &crate::Harness, no_dead_letters: bool) -> PastMaxDeliver {
    let mut config = h.config.stream.clone();
    config.max_deliver = 2;
    config.backoff = vec![Duration::from_millis(200), Duration::from_millis(200)];
    let consumer = flashsale_orders::stream::ensure(&h.js, &config)
        .await
        .unwrap();
    if no_dead_letters {
        h.js.delete_stream(&config.dead_letter_name).await.unwrap();
    }
    let watcher = tokio::spawn(flashsale_orders::stream::watch_max_deliveries(
        h.js.clone(),
        h.client.clone(),
        config.clone(),
        h.shutdown.child(),
    ));
    h.client.flush().await.unwrap();
    let window = Duration::from_secs(900);
    let sale = h.sale(10, 1, window).await;
    let event = h.reserve(&sale, "a", window).await;
    publish_all(
        &h.js,
        &config.subject_prefix,
        std::slice::from_ref(&event),
        1,
    )
    .await;
    fail_twice(&consumer).await;
    PastMaxDeliver {
        config,
        watcher,
        event,
    }
}

/// What [`past_max_deliver`] set up.
struct PastMaxDeliver {
    config: flashsale_orders::config::StreamConfig,
    watcher: tokio::task::JoinHandle<Result<(), flashsale_orders::Error>>,
    event: flashsale_proto::v1::OrderRequested,
}

/// A consumer that keeps failing: receives twice, never acknowledges; then the pull on which
/// the server notices the limit (and sends the advisory).
async fn fail_twice(consumer: &async_nats::jetstream::consumer::PullConsumer) {
    for _ in 0..2 {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        assert!(batch.next().await.is_some());
        drop(batch);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut after = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    while let Some(extra) = after.next().await {
        assert!(extra.is_err(), "nothing is delivered a third time");
    }
}

/// Finding 9 (the max-deliveries watcher): a dead-letter publish that fails (the dead-letter
/// stream is away) must neither end the watcher nor drop the event: JetStream sends the
/// advisory once, and an event past `max_deliver` is never delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finding_09_a_failed_dead_letter_publish_is_retried_not_fatal() {
    let h = harness().await;
    let PastMaxDeliver {
        config,
        watcher,
        event,
    } = past_max_deliver(&h, true).await;

    // The advisory has come and its publish failed; the dead-letter stream comes back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!watcher.is_finished(), "the watcher keeps running");
    flashsale_orders::stream::ensure(&h.js, &config)
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while h.dead_letters().await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the event was never set aside (watcher finished: {})",
            watcher.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        flashsale_proto::v1::OrderRequested::decode(dead_letters(&h).await[0].payload.as_slice())
            .unwrap(),
        event
    );
    h.drained(Duration::from_secs(5)).await;
    h.shutdown.trigger();
    watcher.await.unwrap().unwrap();
}
