//! The JetStream side of the order pipeline: streams and consumer owned by code, the publish
//! helper, and the dead-letter stream.
//!
//! - `ORDERS` (work-queue retention, file storage, duplicate window): one subject per sale,
//!   `<subject_prefix>.<sale_id>`. Work-queue retention means an acknowledged event is gone: the
//!   stream holds exactly the events not yet persisted. A full stream refuses new events
//!   (`discard: new`) rather than dropping old ones.
//! - `ORDERS_DLQ`: events that can never be persisted, each wrapped in a `DeadLetter` with the
//!   reason. Nothing is retried forever and nothing is dropped silently.
//! - the durable pull consumer `orders-writer`: explicit ack, bounded ack-pending, redelivery
//!   with backoff, a bounded number of deliveries.

use async_nats::{
    HeaderMap,
    jetstream::{self, consumer, stream},
};
use prost::Message;
use std::time::Duration;

use flashsale_proto::v1::{DeadLetter, OrderRequested};

use crate::{Error, config::StreamConfig};

/// The header JetStream deduplicates on.
pub const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Creates or updates both streams and the consumer to match `config`. Safe to run from every
/// replica at every start.
pub async fn ensure(
    js: &jetstream::Context,
    config: &StreamConfig,
) -> Result<consumer::PullConsumer, Error> {
    js.create_or_update_stream(stream::Config {
        name: config.name.clone(),
        description: Some("flashsale: accepted purchases waiting to become orders".into()),
        subjects: vec![format!("{}.>", config.subject_prefix)],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::New,
        duplicate_window: config.duplicate_window,
        num_replicas: config.replicas,
        max_bytes: config.max_bytes,
        ..Default::default()
    })
    .await
    .map_err(Error::nats)?;
    js.create_or_update_stream(stream::Config {
        name: config.dead_letter_name.clone(),
        description: Some(
            "flashsale: order events that could not be persisted, with reasons".into(),
        ),
        subjects: vec![config.dead_letter_subject.clone()],
        retention: stream::RetentionPolicy::Limits,
        storage: stream::StorageType::File,
        num_replicas: config.replicas,
        ..Default::default()
    })
    .await
    .map_err(Error::nats)?;
    let orders = js.get_stream(&config.name).await.map_err(Error::nats)?;
    orders
        .create_consumer(consumer::pull::Config {
            durable_name: Some(config.consumer.clone()),
            description: Some("flashsale: writes orders to Postgres".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            max_deliver: config.max_deliver,
            backoff: config.backoff.clone(),
            max_ack_pending: config.max_ack_pending,
            filter_subject: format!("{}.>", config.subject_prefix),
            ..Default::default()
        })
        .await
        .map_err(Error::nats)
}

/// Publishes an order event and waits until JetStream has stored it. The message id is the
/// order id, so a re-publish inside the duplicate window is dropped by JetStream; such a
/// duplicate acknowledgement counts as success. The current trace context travels in headers.
pub async fn publish_order(
    js: &jetstream::Context,
    subject_prefix: &str,
    event: &OrderRequested,
) -> Result<Published, Error> {
    use tracing::Instrument;
    let subject = format!("{subject_prefix}.{}", event.sale_id);
    let span = tracing::info_span!(
        "orders publish",
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %event.order_id,
    );
    let mut headers = HeaderMap::new();
    headers.insert(MSG_ID_HEADER, event.order_id.as_str());
    span.in_scope(|| flashsale_runtime::trace::inject(&mut headers));
    async {
        let ack = js
            .publish_with_headers(subject, headers, event.encode_to_vec().into())
            .await
            .map_err(Error::nats)?
            .await
            .map_err(Error::nats)?;
        Ok(Published {
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }
    .instrument(span)
    .await
}

/// What JetStream said to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The event's sequence in the stream (the original's, for a duplicate).
    pub sequence: u64,
    /// True when JetStream already had an event with this id.
    pub duplicate: bool,
}

/// Wraps `payload` in a [`DeadLetter`] and stores it on the dead-letter stream; returns once
/// JetStream has it.
pub async fn dead_letter(
    js: &jetstream::Context,
    config: &StreamConfig,
    letter: DeadLetter,
) -> Result<(), Error> {
    tracing::warn!(
        reason = %letter.reason,
        subject = %letter.subject,
        sequence = letter.stream_sequence,
        "order event set aside on the dead-letter stream"
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        MSG_ID_HEADER,
        format!("dlq-{}-{}", config.name, letter.stream_sequence).as_str(),
    );
    js.publish_with_headers(
        config.dead_letter_subject.clone(),
        headers,
        letter.encode_to_vec().into(),
    )
    .await
    .map_err(Error::nats)?
    .await
    .map_err(Error::nats)?;
    Ok(())
}

/// Events waiting in the stream (work-queue retention: exactly the unpersisted ones), per sale
/// subject when `sale_id` is given.
pub async fn pending(
    js: &jetstream::Context,
    config: &StreamConfig,
    sale_id: Option<&str>,
) -> Result<u64, Error> {
    let mut stream = js.get_stream(&config.name).await.map_err(Error::nats)?;
    match sale_id {
        None => Ok(stream.info().await.map_err(Error::nats)?.state.messages),
        Some(sale_id) => {
            let subject = format!("{}.{sale_id}", config.subject_prefix);
            let info = stream
                .info_with_subjects(&subject)
                .await
                .map_err(Error::nats)?;
            use futures::TryStreamExt;
            let subjects: Vec<(String, usize)> = info.try_collect().await.map_err(Error::nats)?;
            Ok(subjects.into_iter().map(|(_, n)| n as u64).sum())
        }
    }
}

/// The advisory JetStream publishes when an event of `consumer` reached `max_deliver`.
pub fn max_deliveries_subject(config: &StreamConfig) -> String {
    format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        config.name, config.consumer
    )
}

/// Moves every event that reached `max_deliver` to the dead-letter stream (JetStream has no
/// dead-letter queue of its own: it announces such events and stops delivering them, and with
/// work-queue retention they would sit in the stream forever). Runs until `shutdown`.
pub async fn watch_max_deliveries(
    js: jetstream::Context,
    client: async_nats::Client,
    config: StreamConfig,
    shutdown: flashsale_runtime::Shutdown,
) -> Result<(), Error> {
    use futures::StreamExt;
    #[derive(serde::Deserialize)]
    struct Advisory {
        stream_seq: u64,
        deliveries: u64,
    }
    let mut advisories = client
        .subscribe(max_deliveries_subject(&config))
        .await
        .map_err(Error::nats)?;
    let orders = js.get_stream(&config.name).await.map_err(Error::nats)?;
    loop {
        let message = tokio::select! {
            m = advisories.next() => match m { Some(m) => m, None => break },
            () = shutdown.wait() => break,
        };
        let Ok(advisory) = serde_json::from_slice::<Advisory>(&message.payload) else {
            tracing::warn!("unreadable max-deliveries advisory");
            continue;
        };
        let original = match orders.get_raw_message(advisory.stream_seq).await {
            Ok(original) => original,
            Err(e) => {
                tracing::warn!(sequence = advisory.stream_seq, error = %e, "event behind an advisory is gone");
                continue;
            }
        };
        let letter = DeadLetter {
            reason: format!(
                "delivered {} times without being persisted",
                advisory.deliveries
            ),
            subject: original.subject.to_string(),
            stream_sequence: advisory.stream_seq,
            deliveries: advisory.deliveries,
            payload: original.payload.to_vec(),
            dead_lettered_at: Some(flashsale_proto::time::timestamp(
                flashsale_proto::time::now_ms(),
            )),
        };
        // The advisory is not sent again: the event is set aside, or it sits in the stream
        // forever (max_deliver reached, never delivered again). Keep trying until shutdown.
        let mut backoff = flashsale_runtime::backoff::Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
        );
        while let Err(e) = dead_letter(&js, &config, letter.clone()).await {
            tracing::warn!(sequence = advisory.stream_seq, error = %e, "dead-letter publish failed; retrying");
            if !backoff.wait(&shutdown).await {
                return Ok(());
            }
        }
        crate::metrics::dead_letter("delivered");
        if let Err(e) = orders.delete_message(advisory.stream_seq).await {
            tracing::warn!(sequence = advisory.stream_seq, error = %e, "dead-lettered event not removed");
        }
    }
    Ok(())
}
