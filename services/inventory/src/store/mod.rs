//! [`Inventory`]: the stock core over Redis. One Lua script per operation, loaded once and
//! called by SHA (reloaded automatically after a Redis restart).
//!
//! A sale has one of two layouts, fixed when it is loaded: one slot holding its whole stock
//! (`single.rs`), or stock buckets on several slots behind a control record (`bucketed.rs`,
//! see [`crate::buckets`]). The public operations here look the layout up once and hand over
//! to the layout's module; what both share (running a script with the replica acknowledgement
//! it needs, the transitions of one reservation, the stock signals) stays here. The scripts,
//! their keys, arguments and typed replies are in `script.rs`; the read-only views (audit, key
//! fingerprints, records) in `reads.rs`.

mod bucketed;
mod reads;
mod script;
mod single;

use std::{collections::HashMap, sync::Arc, time::Duration};

use fred::{
    prelude::*,
    types::{Value, scripts::Script},
};

use self::script::{Record, Reserve, SALES_KEY, Scripts, Signal, SlotKeys, Step, StockChange};
use crate::{
    Error, buckets,
    model::{
        CommitResult, Expired, Loaded, MAX_COMMIT_BATCH, Outcome, ReleaseReason, Reservation,
        ReserveRequest, Reserved, SalePresence, SaleSpec, StockLevel, Transition,
    },
    signal::Signals,
};

/// A bucketed sale's shape (fixed once loaded).
#[derive(Debug, Clone, Copy)]
struct Buckets {
    n: u32,
    batch: u64,
}

/// Where a sale's stock lives.
#[derive(Debug, Clone, Copy)]
enum Layout {
    /// One slot, tagged with the sale id (also what a sale not loaded yet is taken for).
    Single,
    /// Stock buckets behind a control record.
    Bucketed(Buckets),
}

/// Cheap-to-clone handle on the inventory of every sale.
#[derive(Clone)]
pub struct Inventory {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Pool,
    scripts: Scripts,
    signals: Option<Signals>,
    timeout: Duration,
    replica_acks: u32,
    replica_ack_timeout: Duration,
    /// Sale -> layout, for sales seen loaded (a sale's layout never changes).
    layouts: std::sync::RwLock<HashMap<String, Layout>>,
    /// (sale, bucket) -> the refill lock of a bucketed sale's bucket (`bucketed.rs`).
    refill_gates: dashmap::DashMap<(String, u32), bucketed::RefillGate>,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("timeout", &self.inner.timeout)
            .field("signals", &self.inner.signals.is_some())
            .finish_non_exhaustive()
    }
}

impl Inventory {
    /// Connects to Redis. A Redis that is down does not stop start-up: calls answer
    /// UNAVAILABLE within `command_timeout` until it is back.
    pub async fn connect(
        config: &flashsale_runtime::config::RedisConfig,
        signals: Option<Signals>,
    ) -> Result<Self, Error> {
        let timeout = config.command_timeout;
        let pool = flashsale_runtime::redis::pool(config, timeout).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                redis: pool,
                scripts: Scripts::new(),
                signals,
                timeout,
                replica_acks: config.replica_acks,
                replica_ack_timeout: config.replica_ack_timeout,
                layouts: Default::default(),
                refill_gates: Default::default(),
            }),
        })
    }

    /// Runs a script over the keys of one slot and waits for the replicas
    /// `redis.replica_acks` asks for.
    async fn eval(
        &self,
        script: &Script,
        tag: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, Error> {
        self.eval_acked(script, SlotKeys::of(tag).for_script(), args, |_| true)
            .await
    }

    /// Runs a script; when `changed` says its reply reports a write, waits until
    /// `redis.replica_acks` replicas have it (on the same connection, so `WAIT` covers it).
    /// An answer that changed nothing needs no replica.
    async fn eval_acked(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
        changed: fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>, Error> {
        let client = self.inner.redis.next();
        // WAIT goes to the master of the first key; nothing to keep when no replica is awaited.
        let first = if self.inner.replica_acks > 0 {
            keys.first().cloned().unwrap_or_default()
        } else {
            String::new()
        };
        let call = async {
            let value = script
                .evalsha_with_reload::<Value, _, _>(client, keys, args)
                .await?;
            let wrote = match &value {
                Value::Array(items) => changed(items),
                _ => true,
            };
            let replicas = if wrote { self.inner.replica_acks } else { 0 };
            let acked =
                buckets::wait_replicas(client, &first, replicas, self.inner.replica_ack_timeout)
                    .await?;
            Ok::<_, fred::error::Error>((value, acked))
        };
        let (value, acked) =
            tokio::time::timeout(self.inner.timeout + self.inner.replica_ack_timeout, call)
                .await
                .map_err(|_| Error::Timeout(self.inner.timeout))
                .and_then(|r| r.map_err(Error::from))
                .inspect_err(|_| crate::metrics::redis_error())?;
        if !acked {
            crate::metrics::redis_error();
            return Err(Error::NotReplicated(self.inner.replica_ack_timeout));
        }
        match value {
            Value::Array(items) => Ok(items),
            Value::Integer(n) => Ok(vec![Value::Integer(n)]),
            other => Err(Error::Protocol(format!("expected an array, got {other:?}"))),
        }
    }

    /// One plain Redis command, within the command timeout.
    async fn command<T, F>(&self, call: F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, fred::error::Error>>,
    {
        tokio::time::timeout(self.inner.timeout, call)
            .await
            .map_err(|_| Error::Timeout(self.inner.timeout))?
            .map_err(Error::from)
    }

    /// The sale's layout: [`Layout::Single`] for an ordinary sale (or one not loaded yet).
    async fn layout(&self, sale_id: &str) -> Result<Layout, Error> {
        if let Some(layout) = self.inner.layouts.read().expect("poisoned").get(sale_id) {
            return Ok(*layout);
        }
        let fields: Vec<Option<u64>> = self
            .command(self.inner.redis.hmget(
                buckets::hash_key(sale_id),
                vec!["total", "buckets", "batch"],
            ))
            .await?;
        let layout = match fields.as_slice() {
            [Some(_), Some(n), batch] if *n > 1 => Layout::Bucketed(Buckets {
                n: *n as u32,
                batch: batch.unwrap_or(1),
            }),
            [Some(_), _, _] => Layout::Single,
            _ => return Ok(Layout::Single),
        };
        self.inner
            .layouts
            .write()
            .expect("poisoned")
            .insert(sale_id.to_owned(), layout);
        Ok(layout)
    }

    /// The slot holding a reservation of `sale_id`.
    async fn reservation_tag(&self, sale_id: &str, reservation_id: &str) -> Result<String, Error> {
        match self.layout(sale_id).await? {
            Layout::Single => Ok(sale_id.to_owned()),
            Layout::Bucketed(b) => buckets::bucket_of(reservation_id, b.n)
                .map(|k| buckets::bucket_tag(sale_id, k, b.n))
                .ok_or_else(|| Error::ReservationNotFound {
                    sale_id: sale_id.to_owned(),
                    reservation_id: reservation_id.to_owned(),
                }),
        }
    }

    /// Every slot holding the sale's reservations: the sale's own, or its buckets'.
    async fn tags(&self, sale_id: &str) -> Result<Vec<String>, Error> {
        Ok(match self.layout(sale_id).await? {
            Layout::Single => vec![sale_id.to_owned()],
            Layout::Bucketed(b) => (0..b.n)
                .map(|k| buckets::bucket_tag(sale_id, k, b.n))
                .collect(),
        })
    }

    /// Adds the sale to the set the sweeper walks.
    async fn remember(&self, sale_id: &str) -> Result<(), Error> {
        self.command(self.inner.redis.sadd::<i64, _, _>(SALES_KEY, sale_id))
            .await
            .map(drop)
    }

    /// Loads a sale, or refreshes the limit, window and hold of a loaded one. Never touches its
    /// stock counters; a different `stock` for a loaded sale is refused.
    pub async fn load_sale(&self, spec: &SaleSpec) -> Result<Loaded, Error> {
        self.load(spec, false).await
    }

    /// [`Self::load_sale`] for a sale Redis holds only: one Redis lost is not created again
    /// (with its whole stock); it answers [`Error::SaleNotFound`] and changes nothing. Only a
    /// rebuild (`Reconcile --repair`) brings a lost sale back, with its orders.
    pub async fn refresh_sale(&self, spec: &SaleSpec) -> Result<Loaded, Error> {
        self.load(spec, true).await
    }

    async fn load(&self, spec: &SaleSpec, refresh_only: bool) -> Result<Loaded, Error> {
        spec.validate()?;
        let loaded = if spec.stock_buckets > 1 {
            self.load_bucketed(spec, refresh_only).await?
        } else {
            self.load_single(spec, refresh_only).await?
        };
        self.remember(&spec.sale_id).await?;
        Ok(loaded)
    }

    /// Tries to reserve units (see [`Outcome`] for the answers that are not errors).
    pub async fn reserve(&self, request: &ReserveRequest) -> Result<Reserved, Error> {
        let started = std::time::Instant::now();
        let reserved = self.reserve_in_layout(request).await;
        let outcome = match &reserved {
            Ok(r) => match r.outcome {
                Outcome::Reserved {
                    duplicate: false, ..
                } => "reserved",
                Outcome::Reserved {
                    duplicate: true, ..
                } => "duplicate",
                Outcome::SoldOut => "sold_out",
                Outcome::UserLimit => "user_limit",
                Outcome::NotActive => "not_active",
                Outcome::QuantityOverLimit => "invalid",
                Outcome::KeyReused => "key_reused",
            },
            Err(_) => "error",
        };
        crate::metrics::reserve(outcome, started.elapsed().as_secs_f64());
        reserved
    }

    async fn reserve_in_layout(&self, request: &ReserveRequest) -> Result<Reserved, Error> {
        request.validate()?;
        match self.layout(&request.sale_id).await? {
            Layout::Single => self.reserve_single(request).await,
            Layout::Bucketed(b) => self.reserve_bucketed(request, b).await,
        }
    }

    /// A Reserve reply as the buyer's answer, its stock signal published.
    async fn reserved(
        &self,
        request: &ReserveRequest,
        reply: &[Value],
        layout: Layout,
    ) -> Result<Reserved, Error> {
        match Reserve::parse(&request.sale_id, reply)? {
            Reserve::Reserved { record, duplicate } => {
                let available = record.signal.available;
                let reservation = self.announced(&request.sale_id, layout, record).await;
                Ok(Reserved {
                    outcome: Outcome::Reserved {
                        reservation,
                        duplicate,
                    },
                    available,
                })
            }
            Reserve::Refused { outcome, available } => Ok(Reserved { outcome, available }),
            Reserve::NotFound => Err(Error::SaleNotFound(request.sale_id.clone())),
        }
    }

    /// The order for the reservation is persisted: hold its units until `hold_until_ms` (the
    /// payment deadline). A reservation released because it expired (or because its publish
    /// was reported failed) is taken again when stock and the buyer's limit allow.
    pub async fn commit(
        &self,
        sale_id: &str,
        reservation_id: &str,
        hold_until_ms: i64,
    ) -> Result<Transition, Error> {
        let args = vec![Value::from(reservation_id), Value::from(hold_until_ms)];
        let script = &self.inner.scripts.commit;
        self.transition("commit", script, sale_id, reservation_id, args)
            .await
    }

    /// [`Self::commit`] for up to [`MAX_COMMIT_BATCH`] reservations of one sale in one atomic
    /// script call per slot; each gets its own result, in order.
    pub async fn commit_many(
        &self,
        sale_id: &str,
        items: &[(String, i64)],
    ) -> Result<Vec<CommitResult>, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        if items.is_empty() || items.len() > MAX_COMMIT_BATCH {
            return Err(Error::invalid(
                "items",
                format!("must hold 1..={MAX_COMMIT_BATCH} reservations"),
            ));
        }
        for (reservation_id, _) in items {
            flashsale_proto::rules::text_id("reservation_id", reservation_id)?;
        }
        match self.layout(sale_id).await? {
            layout @ Layout::Single => self.commit_slot(sale_id, sale_id, layout, items).await,
            Layout::Bucketed(b) => self.commit_many_bucketed(sale_id, b, items).await,
        }
    }

    /// CommitMany over the reservations of one slot.
    async fn commit_slot(
        &self,
        sale_id: &str,
        tag: &str,
        layout: Layout,
        items: &[(String, i64)],
    ) -> Result<Vec<CommitResult>, Error> {
        let mut args = Vec::with_capacity(items.len() * 2);
        for (reservation_id, hold_until_ms) in items {
            args.push(Value::from(reservation_id.as_str()));
            args.push(Value::from(*hold_until_ms));
        }
        let reply = self
            .eval(&self.inner.scripts.commit_many, tag, args)
            .await?;
        let Some((signal, results)) = script::commit_many(&reply, items.len())? else {
            return Err(Error::SaleNotFound(sale_id.to_owned()));
        };
        self.announce(sale_id, layout, signal).await;
        Ok(items
            .iter()
            .zip(results)
            .map(|((reservation_id, _), r)| CommitResult {
                reservation_id: reservation_id.clone(),
                outcome: r.outcome,
                state: r.state,
                release_reason: r.release_reason,
            })
            .collect())
    }

    /// The reservation is paid: its units are sold. A released one takes its units back when
    /// stock and the buyer's limit allow (the order is paid); otherwise refused.
    pub async fn confirm(&self, sale_id: &str, reservation_id: &str) -> Result<Transition, Error> {
        let args = vec![Value::from(reservation_id)];
        let script = &self.inner.scripts.confirm;
        self.transition("confirm", script, sale_id, reservation_id, args)
            .await
    }

    /// Returns the reservation's units to stock and to the buyer, exactly once. Refused once
    /// confirmed.
    pub async fn release(
        &self,
        sale_id: &str,
        reservation_id: &str,
        reason: ReleaseReason,
    ) -> Result<Transition, Error> {
        let args = vec![Value::from(reservation_id), Value::from(reason.as_str())];
        let script = &self.inner.scripts.release;
        self.transition("release", script, sale_id, reservation_id, args)
            .await
    }

    /// JetStream holds the reservation's order event: keep its units until the order decides
    /// (no expiry, no compensation). A reservation already released is refused, unchanged
    /// (the order consumer's commit decides it).
    pub async fn mark_queued(
        &self,
        sale_id: &str,
        reservation_id: &str,
    ) -> Result<Transition, Error> {
        let args = vec![Value::from(reservation_id)];
        let script = &self.inner.scripts.queued;
        self.transition("queue", script, sale_id, reservation_id, args)
            .await
    }

    /// Runs one reservation's transition script in the slot holding it.
    async fn transition(
        &self,
        action: &'static str,
        script: &Script,
        sale_id: &str,
        reservation_id: &str,
        args: Vec<Value>,
    ) -> Result<Transition, Error> {
        check_ids(sale_id, reservation_id)?;
        let tag = self.reservation_tag(sale_id, reservation_id).await?;
        let reply = self.eval(script, &tag, args).await?;
        let (step, record) = match script::Transition::parse(action, sale_id, &reply)? {
            script::Transition::NoSale => return Err(Error::SaleNotFound(sale_id.to_owned())),
            script::Transition::NotFound => {
                return Err(Error::ReservationNotFound {
                    sale_id: sale_id.to_owned(),
                    reservation_id: reservation_id.to_owned(),
                });
            }
            script::Transition::Done { step, record } => (step, record),
        };
        let layout = self.layout(sale_id).await?;
        let reservation = self.announced(sale_id, layout, record).await;
        match step {
            Step::Changed | Step::Unchanged => Ok(Transition {
                reservation,
                changed: step == Step::Changed,
            }),
            Step::Refused => Err(Error::Refused {
                action,
                reservation: Box::new(reservation),
            }),
        }
    }

    /// A record's reservation, once its stock signal is published.
    async fn announced(&self, sale_id: &str, layout: Layout, record: Record) -> Reservation {
        self.announce(sale_id, layout, record.signal).await;
        record.reservation
    }

    /// Publishes a script's stock signal. In a one-slot sale every change is the sale's. A
    /// bucket running dry says nothing of a bucketed sale (its sold-out is announced by the
    /// Reserve that finds every bucket empty); a bucket whose stock comes back does, numbered
    /// by the sale's own sequence.
    async fn announce(&self, sale_id: &str, layout: Layout, signal: Signal) {
        if signal.change == StockChange::None || self.inner.signals.is_none() {
            return;
        }
        match (layout, signal.change) {
            (Layout::Single, change) => {
                let sold_out = change == StockChange::SoldOut;
                self.publish_signal(sale_id, sold_out, signal.available, signal.sequence)
                    .await;
            }
            (Layout::Bucketed(_), StockChange::Restocked) => {
                self.announce_restocked(sale_id, signal.available).await;
            }
            (Layout::Bucketed(_), _) => {}
        }
    }

    async fn publish_signal(&self, sale_id: &str, sold_out: bool, available: u64, seq: u64) {
        if let Some(signals) = &self.inner.signals {
            signals.publish(sale_id, sold_out, available, seq).await;
        }
    }

    /// Releases HELD reservations of `sale_id` whose hold has passed, at most `batch` of them.
    /// For a bucketed sale, each bucket gets a pass and journalled transfers are settled.
    pub async fn expire_due(&self, sale_id: &str, batch: u32) -> Result<Expired, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        match self.layout(sale_id).await? {
            layout @ Layout::Single => self.expire_slot(sale_id, sale_id, layout, batch).await,
            Layout::Bucketed(b) => self.expire_bucketed(sale_id, b, batch).await,
        }
    }

    /// Expire in one slot.
    async fn expire_slot(
        &self,
        sale_id: &str,
        tag: &str,
        layout: Layout,
        batch: u32,
    ) -> Result<Expired, Error> {
        let args = vec![Value::from(i64::from(batch))];
        let reply = self.eval(&self.inner.scripts.expire, tag, args).await?;
        let expiry = script::Expiry::parse(&reply)?;
        self.announce(sale_id, layout, expiry.signal).await;
        Ok(Expired {
            released: expiry.released,
            available: expiry.signal.available,
            finished: expiry.finished,
        })
    }

    /// Replaces the sale's state with `reservations` (COMMITTED, CONFIRMED or RELEASED, from
    /// Postgres), keeping the reservations Redis has that are not among them as they are.
    /// Refused, changing nothing, if the units would exceed the stock, or if Redis holds the
    /// sale where the caller saw it missing or the other way round (`seen`).
    pub async fn rebuild(
        &self,
        spec: &SaleSpec,
        reservations: &[Reservation],
        seen: SalePresence,
    ) -> Result<StockLevel, Error> {
        spec.validate()?;
        if spec.stock_buckets > 1 {
            return self.rebuild_bucketed(spec, reservations, seen).await;
        }
        self.rebuild_single(spec, reservations, seen).await
    }

    /// Rebuild of one slot; the sale is remembered for the sweeper once it is rebuilt.
    async fn rebuild_slot(
        &self,
        spec: &SaleSpec,
        tag: &str,
        args: Vec<Value>,
    ) -> Result<(StockLevel, u64), Error> {
        let reply = self.eval(&self.inner.scripts.rebuild, tag, args).await?;
        match script::Rebuild::parse(&reply)? {
            script::Rebuild::Done { stock, sequence } => {
                self.remember(&spec.sale_id).await?;
                Ok((stock, sequence))
            }
            script::Rebuild::Oversold { stock } => Err(Error::Oversold {
                sale_id: spec.sale_id.clone(),
                units: stock.held + stock.sold,
                stock: stock.total,
            }),
            script::Rebuild::Changed => Err(Error::RedisChanged(spec.sale_id.clone())),
        }
    }

    /// A sale's stock counters.
    /// For a bucketed sale: the pool, every bucket and the units journalled between them.
    pub async fn stock(&self, sale_id: &str) -> Result<StockLevel, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        match self.layout(sale_id).await? {
            Layout::Single => self.slot_stock(sale_id, sale_id).await,
            Layout::Bucketed(b) => Ok(self.bucket_stock(sale_id, b).await?.0),
        }
    }

    /// The stock of a bucketed sale and of each of its buckets (of a one-slot sale: its
    /// stock).
    pub async fn bucket_levels(&self, sale_id: &str) -> Result<Vec<StockLevel>, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        match self.layout(sale_id).await? {
            Layout::Single => Ok(vec![self.slot_stock(sale_id, sale_id).await?]),
            Layout::Bucketed(b) => Ok(self.bucket_stock(sale_id, b).await?.1),
        }
    }

    /// One slot's stock counters.
    async fn slot_stock(&self, sale_id: &str, tag: &str) -> Result<StockLevel, Error> {
        let fields: Vec<Option<u64>> = self
            .command(self.inner.redis.hmget(
                SlotKeys::of(tag).sale,
                vec!["total", "available", "held", "sold"],
            ))
            .await?;
        match fields.as_slice() {
            [Some(total), Some(available), Some(held), Some(sold)] => Ok(StockLevel {
                total: *total,
                available: *available,
                held: *held,
                sold: *sold,
            }),
            _ => Err(Error::SaleNotFound(sale_id.to_owned())),
        }
    }
}

fn check_ids(sale_id: &str, reservation_id: &str) -> Result<(), Error> {
    flashsale_proto::rules::sale_id(sale_id)?;
    flashsale_proto::rules::text_id("reservation_id", reservation_id)?;
    Ok(())
}
