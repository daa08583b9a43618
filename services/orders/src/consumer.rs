//! The order consumer: JetStream → Postgres in batches.
//!
//! Each fetch of up to `batch_size` events becomes one transaction of
//! `INSERT … ON CONFLICT (order_id) DO NOTHING`; the events are acknowledged only after it
//! commits, then the inventory is told to hold the new orders' units until their payment
//! deadline. A replayed event (redelivery after a crash, a duplicate publish outside the
//! window) finds its row and writes nothing.
//!
//! Poison events (undecodable, invalid, unknown sale) go to the dead-letter stream with the
//! reason and are acknowledged off the main stream. When Postgres is down the batch in hand is
//! retried with backoff while its delivery is kept alive with progress acks, so good events are
//! neither redelivered nor dead-lettered; the consumer never exits over it. On shutdown it stops
//! fetching, finishes the batch in hand (unless Postgres is down: then the batch is left to be
//! redelivered) and returns.

use std::{collections::HashSet, sync::Mutex, time::Duration};

use async_nats::jetstream::{self, AckKind, Message, consumer::PullConsumer};
use futures::StreamExt;
use prost::Message as _;
use sea_orm::IntoActiveModel;

use flashsale_proto::{
    rules,
    time::unix_ms,
    v1::{DeadLetter, OrderRequested},
};
use flashsale_runtime::{Shutdown, backoff::Backoff};

use crate::{
    Error,
    config::Config,
    convert::utc,
    entity::orders::{self, InventoryAction, Status},
    pipeline::Pipeline,
    stream,
};

/// The consumer and what it needs.
#[derive(Debug)]
pub struct Consumer {
    js: jetstream::Context,
    config: Config,
    pipeline: Pipeline,
    known_sales: Mutex<HashSet<String>>,
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Events fetched.
    pub fetched: usize,
    /// New order rows written.
    pub inserted: usize,
    /// Events set aside on the dead-letter stream.
    pub dead_lettered: usize,
}

/// A valid event and the message it came in.
struct Valid {
    message: Message,
    event: OrderRequested,
}

impl Consumer {
    /// A consumer writing through `pipeline`.
    pub fn new(js: jetstream::Context, config: Config, pipeline: Pipeline) -> Self {
        Self {
            js,
            config,
            pipeline,
            known_sales: Mutex::new(HashSet::new()),
        }
    }

    /// Sets up the streams and runs until `shutdown`.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), Error> {
        // NATS may not be up yet: keep trying until it is (or until shutdown).
        let mut retry = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let consumer = loop {
            match stream::ensure(&self.js, &self.config.stream).await {
                Ok(consumer) => break consumer,
                Err(e) => {
                    tracing::warn!(error = %e, "setting up the order stream failed; retrying");
                    if !retry.wait(&shutdown).await {
                        return Ok(());
                    }
                }
            }
        };
        tracing::info!(stream = %self.config.stream.name, consumer = %self.config.stream.consumer, "order consumer running");
        let mut idle_backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut lag_read = tokio::time::Instant::now() - Duration::from_secs(60);
        let mut consumer = consumer;
        while !shutdown.is_triggered() {
            if lag_read.elapsed() >= Duration::from_secs(2) {
                if let Ok(info) = consumer.info().await {
                    let lag = info.num_pending + info.num_ack_pending as u64;
                    crate::metrics::get()
                        .lag
                        .store(lag, std::sync::atomic::Ordering::Relaxed);
                }
                lag_read = tokio::time::Instant::now();
            }
            let batch = tokio::select! {
                batch = self.fetch(&consumer) => batch,
                () = shutdown.wait() => break,
            };
            match batch {
                Ok(batch) if batch.is_empty() => {}
                Ok(batch) => {
                    idle_backoff.reset();
                    self.process(batch, &shutdown).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fetching order events failed; retrying");
                    if !idle_backoff.wait(&shutdown).await {
                        break;
                    }
                }
            }
        }
        tracing::info!("order consumer stopped");
        Ok(())
    }

    async fn fetch(&self, consumer: &PullConsumer) -> Result<Vec<Message>, Error> {
        let mut messages = consumer
            .batch()
            .max_messages(self.config.batch_size)
            .expires(self.config.fetch_wait)
            .messages()
            .await
            .map_err(Error::nats)?;
        let mut batch = Vec::with_capacity(self.config.batch_size);
        while let Some(message) = messages.next().await {
            match message {
                Ok(message) => batch.push(message),
                Err(e) => tracing::debug!(error = %e, "fetch ended"),
            }
        }
        Ok(batch)
    }

    /// Handles one batch end to end (public for tests and benchmarks).
    ///
    /// The batch runs in one consumer span: a child of the first event's trace (so a lone
    /// purchase is one trace from the gateway to Postgres and back to the inventory), linked to
    /// the traces of the others.
    pub async fn process(&self, batch: Vec<Message>, shutdown: &Shutdown) -> BatchReport {
        use opentelemetry::trace::TraceContextExt;
        use tracing::Instrument;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let span = tracing::info_span!(
            "orders process",
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.batch.message_count = batch.len(),
        );
        let mut parented = false;
        for message in &batch {
            let context = flashsale_runtime::trace::extract(message.headers.as_ref());
            let remote = context.span().span_context().clone();
            if !remote.is_valid() {
                continue;
            }
            if parented {
                span.add_link(remote);
            } else {
                let _ = span.set_parent(context);
                parented = true;
            }
        }
        self.process_batch(batch, shutdown).instrument(span).await
    }

    async fn process_batch(&self, batch: Vec<Message>, shutdown: &Shutdown) -> BatchReport {
        let started = tokio::time::Instant::now();
        let mut report = BatchReport {
            fetched: batch.len(),
            ..BatchReport::default()
        };
        let metrics = crate::metrics::get();
        metrics.batch_size.record(batch.len() as u64, &[]);
        let redelivered = batch
            .iter()
            .filter(|m| m.info().is_ok_and(|i| i.delivered > 1))
            .count();
        if redelivered > 0 {
            metrics.redeliveries.add(redelivered as u64, &[]);
        }
        let mut valid = Vec::with_capacity(batch.len());
        for message in batch {
            match decode(&message) {
                Ok(event) => valid.push(Valid { message, event }),
                Err(reason) => {
                    if self.set_aside(&message, reason).await {
                        report.dead_lettered += 1;
                    }
                }
            }
        }

        let Some((inserted, unknown)) = self.write_with_retry(&valid, shutdown).await else {
            return report; // shutting down with Postgres away: leave the batch to redelivery
        };
        let mut written = Vec::with_capacity(valid.len());
        for item in valid {
            if unknown.contains(&item.event.sale_id) {
                let reason = format!("unknown sale {}", item.event.sale_id);
                if self.set_aside(&item.message, reason).await {
                    report.dead_lettered += 1;
                }
            } else {
                if let Err(e) = item.message.ack().await {
                    tracing::warn!(error = %e, "ack failed; the event will be redelivered and skipped");
                }
                written.push(item);
            }
        }
        report.inserted = inserted.len();
        let written_at = started.elapsed();

        // The rows are committed and the events acknowledged; now hold the new orders' units.
        let inserted: HashSet<String> = inserted.into_iter().collect();
        let new_orders: Vec<orders::Model> = written
            .iter()
            .filter(|i| inserted.contains(&i.event.order_id))
            .map(|item| row(&item.event))
            .collect();
        futures::stream::iter(&new_orders)
            .for_each_concurrent(64, |order| self.pipeline.events.publish(order))
            .await;
        if let Err(e) = self.pipeline.sync_inventory_many(new_orders).await {
            tracing::warn!(error = %e, "inventory commits deferred to the lifecycle worker");
        }
        tracing::debug!(
            fetched = report.fetched,
            inserted = report.inserted,
            dead_lettered = report.dead_lettered,
            write_ms = written_at.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
        report
    }

    /// Checks the sales and inserts the rows, retrying while Postgres is away. Returns the ids
    /// inserted and the unknown sale ids, or `None` if shutdown came first.
    async fn write_with_retry(
        &self,
        valid: &[Valid],
        shutdown: &Shutdown,
    ) -> Option<(Vec<String>, HashSet<String>)> {
        let first_ack = self
            .config
            .stream
            .backoff
            .first()
            .copied()
            .unwrap_or(self.config.stream.ack_wait)
            .min(self.config.stream.ack_wait);
        let keep_alive = (first_ack / 2).max(Duration::from_millis(50));
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut last_progress = tokio::time::Instant::now();
        loop {
            let pause = match self.write(valid).await {
                Ok(done) => return Some(done),
                Err(e) => {
                    let pause = backoff.next_pause();
                    tracing::warn!(error = %e, retry_in = ?pause, events = valid.len(), "writing orders failed; holding the batch");
                    pause
                }
            };
            let wake = tokio::time::Instant::now() + pause;
            while tokio::time::Instant::now() < wake {
                if last_progress.elapsed() >= keep_alive {
                    for item in valid {
                        let _ = item.message.ack_with(AckKind::Progress).await;
                    }
                    last_progress = tokio::time::Instant::now();
                }
                tokio::select! {
                    () = tokio::time::sleep(keep_alive.min(wake - tokio::time::Instant::now())) => {}
                    () = shutdown.wait() => return None,
                }
            }
        }
    }

    async fn write(&self, valid: &[Valid]) -> Result<(Vec<String>, HashSet<String>), Error> {
        let wanted: Vec<String> = {
            let known = self.known_sales.lock().unwrap_or_else(|e| e.into_inner());
            let mut ids: Vec<String> = valid
                .iter()
                .map(|v| v.event.sale_id.clone())
                .filter(|id| !known.contains(id))
                .collect();
            ids.sort();
            ids.dedup();
            ids
        };
        let found = self.pipeline.store.known_sales(&wanted).await?;
        self.known_sales
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(found.iter().cloned());
        let unknown: HashSet<String> = wanted
            .into_iter()
            .filter(|id| !found.contains(id))
            .collect();
        let rows = valid
            .iter()
            .filter(|v| !unknown.contains(&v.event.sale_id))
            .map(|v| row(&v.event).into_active_model())
            .collect();
        let span = tracing::info_span!(
            "INSERT orders",
            otel.kind = "client",
            db.system = "postgresql",
            db.operation.name = "INSERT",
            db.collection.name = "orders",
        );
        let started = std::time::Instant::now();
        let inserted = {
            use tracing::Instrument;
            self.pipeline
                .store
                .insert_batch(rows)
                .instrument(span)
                .await
                .inspect_err(|_| crate::metrics::backend_error("postgres", "order-consumer"))?
        };
        crate::metrics::get()
            .commit
            .record(started.elapsed().as_secs_f64(), &[]);
        crate::metrics::orders("pending_payment", inserted.len() as u64);
        Ok((inserted, unknown))
    }

    /// Dead-letters a message and acks it off the main stream. False (and no ack) when the
    /// dead-letter stream could not take it: the event stays and is tried again.
    async fn set_aside(&self, message: &Message, reason: String) -> bool {
        let (sequence, deliveries) = message
            .info()
            .map(|i| (i.stream_sequence, i.delivered as u64))
            .unwrap_or((0, 0));
        let letter = DeadLetter {
            reason,
            subject: message.subject.to_string(),
            stream_sequence: sequence,
            deliveries,
            payload: message.payload.to_vec(),
            dead_lettered_at: Some(flashsale_proto::time::timestamp(
                flashsale_proto::time::now_ms(),
            )),
        };
        let reason = letter.reason.clone();
        match stream::dead_letter(&self.js, &self.config.stream, letter).await {
            Ok(()) => {
                crate::metrics::dead_letter(&reason);
                if let Err(e) = message.ack().await {
                    tracing::warn!(error = %e, "ack of a dead-lettered event failed");
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "dead-letter stream unavailable; the event stays");
                false
            }
        }
    }
}

/// Decodes and checks an event; the error is the dead-letter reason.
pub fn decode(message: &Message) -> Result<OrderRequested, String> {
    decode_payload(&message.payload)
}

/// [`decode`] for a message's payload.
pub fn decode_payload(payload: &[u8]) -> Result<OrderRequested, String> {
    let event = OrderRequested::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
    validate(&event)?;
    Ok(event)
}

/// The rules an order event must meet to become a row.
pub fn validate(event: &OrderRequested) -> Result<(), String> {
    rules::text_id("order_id", &event.order_id).map_err(|e| format!("invalid: {e}"))?;
    rules::sale_id(&event.sale_id).map_err(|e| format!("invalid: {e}"))?;
    rules::text_id("user_id", &event.user_id).map_err(|e| format!("invalid: {e}"))?;
    rules::idempotency_key(&event.idempotency_key).map_err(|e| format!("invalid: {e}"))?;
    if event.quantity == 0 || event.quantity > i32::MAX as u32 {
        return Err(format!("invalid: quantity {}", event.quantity));
    }
    if event.unit_price_minor < 0 {
        return Err("invalid: negative unit price".into());
    }
    if event
        .unit_price_minor
        .checked_mul(i64::from(event.quantity))
        .is_none()
    {
        return Err("invalid: amount overflows".into());
    }
    if event.currency.len() != 3 || !event.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(format!("invalid: currency {:?}", event.currency));
    }
    let requested = event
        .requested_at
        .as_ref()
        .and_then(unix_ms)
        .ok_or("invalid: requested_at missing or out of range")?;
    let deadline = event
        .pay_deadline
        .as_ref()
        .and_then(unix_ms)
        .ok_or("invalid: pay_deadline missing or out of range")?;
    if deadline <= requested {
        return Err("invalid: pay_deadline not after requested_at".into());
    }
    Ok(())
}

/// The row a (valid) event becomes.
pub fn row(event: &OrderRequested) -> orders::Model {
    let requested = event
        .requested_at
        .as_ref()
        .and_then(unix_ms)
        .unwrap_or_default();
    let deadline = event
        .pay_deadline
        .as_ref()
        .and_then(unix_ms)
        .unwrap_or_default();
    let now = chrono::Utc::now();
    orders::Model {
        order_id: event.order_id.clone(),
        sale_id: event.sale_id.clone(),
        user_id: event.user_id.clone(),
        quantity: event.quantity as i32,
        amount_minor: event.unit_price_minor * i64::from(event.quantity),
        currency: event.currency.clone(),
        status: Status::PendingPayment,
        status_reason: None,
        idempotency_key: event.idempotency_key.clone(),
        created_at: utc(requested),
        pay_deadline: utc(deadline),
        paid_at: None,
        payment_reference: None,
        updated_at: now,
        persisted_at: now,
        inventory_pending: Some(InventoryAction::Commit),
        inventory_attempt_at: Some(now),
    }
}

#[cfg(test)]
mod tests {
    use flashsale_proto::time::timestamp;

    use super::*;

    fn event() -> OrderRequested {
        OrderRequested {
            order_id: "01a216ac-470e-71fb-b2b6-60044dc7cc2f".into(),
            sale_id: "sale-1".into(),
            user_id: "buyer-7".into(),
            quantity: 2,
            unit_price_minor: 1_999,
            currency: "CNY".into(),
            requested_at: Some(timestamp(1_795_676_718_000)),
            pay_deadline: Some(timestamp(1_795_677_318_000)),
            idempotency_key: "attempt-1".into(),
        }
    }

    #[test]
    fn a_valid_event_becomes_the_row_it_describes() {
        let event = event();
        let bytes = event.encode_to_vec();
        let decoded = decode_payload(&bytes).unwrap();
        let row = row(&decoded);
        assert_eq!(row.amount_minor, 3_998);
        assert_eq!(row.created_at.timestamp_millis(), 1_795_676_718_000);
        assert_eq!(row.pay_deadline.timestamp_millis(), 1_795_677_318_000);
    }

    #[test]
    fn times_outside_the_calendar_are_refused_not_turned_into_1970() {
        // Year ~300,000: a valid i64 of milliseconds, but no calendar date.
        let far = timestamp(9_000_000_000_000_000);
        let mut late = event();
        late.pay_deadline = Some(far);
        assert_eq!(
            decode_payload(&late.encode_to_vec()).unwrap_err(),
            "invalid: pay_deadline missing or out of range"
        );
    }
}
