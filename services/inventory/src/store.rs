//! [`Inventory`]: the stock core over Redis. One Lua script per operation, loaded once and
//! called by SHA (reloaded automatically after a Redis restart).

use std::{collections::HashMap, sync::Arc, time::Duration};

use fred::{
    prelude::*,
    types::{Value, scripts::Script},
};

use crate::{
    Error,
    buckets::{self, TransferScripts},
    model::{
        Audit, CommitOutcome, CommitResult, Expired, Loaded, MAX_COMMIT_BATCH, Outcome,
        ReleaseReason, Reservation, ReservationState, ReserveRequest, Reserved, SalePresence,
        SaleSpec, StockLevel, Transition,
    },
    signal::Signals,
};

/// Key of the set of every loaded sale (its own slot: read outside scripts only).
const SALES_KEY: &str = "fs:sales";

const COMMON: &str = include_str!("../lua/common.lua");

/// The scripts, each prefixed with the shared helpers.
#[derive(Debug)]
struct Scripts {
    load: Script,
    reserve: Script,
    commit: Script,
    commit_many: Script,
    confirm: Script,
    release: Script,
    queued: Script,
    expire: Script,
    rebuild: Script,
    transfer: TransferScripts,
}

impl Scripts {
    fn new() -> Self {
        let s = |body: &str| Script::from_lua(format!("{COMMON}\n{body}"));
        Self {
            load: s(include_str!("../lua/load.lua")),
            reserve: s(include_str!("../lua/reserve.lua")),
            commit: s(include_str!("../lua/commit.lua")),
            commit_many: s(include_str!("../lua/commit_many.lua")),
            confirm: s(include_str!("../lua/confirm.lua")),
            release: s(include_str!("../lua/release.lua")),
            queued: s(include_str!("../lua/queued.lua")),
            expire: s(include_str!("../lua/expire.lua")),
            rebuild: s(include_str!("../lua/rebuild.lua")),
            transfer: TransferScripts::new(),
        }
    }
}

/// The keys of one sale (or of one stock bucket, whose tag is `sale_id#k`), all in the
/// `{tag}` hash slot, in the order the scripts expect.
fn sale_keys(tag: &str) -> Vec<String> {
    ["sale", "users", "idem", "exp", "res"]
        .iter()
        .map(|part| format!("fs:{{{tag}}}:{part}"))
        .collect()
}

/// What the store remembers of a bucketed sale (fixed once loaded).
#[derive(Debug, Clone, Copy)]
struct Layout {
    buckets: u32,
    batch: u64,
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
    /// Sale -> layout, for sales seen loaded (a sale's bucket count never changes).
    layouts: std::sync::RwLock<HashMap<String, Layout>>,
    /// (sale, bucket) -> the refill lock of [`Inventory::refill_gate`].
    refill_gates: dashmap::DashMap<(String, u32), RefillGate>,
}

type RefillGate = Arc<tokio::sync::Mutex<Option<std::time::Instant>>>;

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

    /// Runs a script over the keys of one sale (or bucket) tag and waits for the replicas
    /// `redis.replica_acks` asks for.
    async fn eval(
        &self,
        script: &Script,
        tag: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, Error> {
        self.eval_keys(script, sale_keys(tag), args).await
    }

    async fn eval_keys(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, Error> {
        self.eval_acked(script, keys, args, |_| true).await
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

    /// The sale's layout: 1 bucket for an ordinary sale (or one not loaded yet).
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
            [Some(_), buckets, batch] => Layout {
                buckets: buckets.unwrap_or(1) as u32,
                batch: batch.unwrap_or(1),
            },
            _ => {
                return Ok(Layout {
                    buckets: 1,
                    batch: 1,
                });
            }
        };
        self.inner
            .layouts
            .write()
            .expect("poisoned")
            .insert(sale_id.to_owned(), layout);
        Ok(layout)
    }

    /// The hash tag holding a reservation of `sale_id`.
    async fn reservation_tag(&self, sale_id: &str, reservation_id: &str) -> Result<String, Error> {
        let layout = self.layout(sale_id).await?;
        if layout.buckets <= 1 {
            return Ok(sale_id.to_owned());
        }
        buckets::bucket_of(reservation_id, layout.buckets)
            .map(|k| buckets::bucket_tag(sale_id, k, layout.buckets))
            .ok_or_else(|| Error::ReservationNotFound {
                sale_id: sale_id.to_owned(),
                reservation_id: reservation_id.to_owned(),
            })
    }

    async fn command<T, F>(&self, call: F) -> Result<T, Error>
    where
        F: std::future::Future<Output = Result<T, fred::error::Error>>,
    {
        tokio::time::timeout(self.inner.timeout, call)
            .await
            .map_err(|_| Error::Timeout(self.inner.timeout))?
            .map_err(Error::from)
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
        if spec.stock_buckets > 1 {
            return self.load_bucketed(spec, refresh_only).await;
        }
        let args = vec![
            Value::from(spec.stock as i64),
            Value::from(i64::from(spec.per_user_limit)),
            Value::from(spec.starts_at_ms),
            Value::from(spec.ends_at_ms),
            Value::from(spec.reservation_hold.as_millis() as i64),
            Value::from(i64::from(refresh_only)),
        ];
        let reply = self
            .eval(&self.inner.scripts.load, &spec.sale_id, args)
            .await?;
        let status = text(&reply, 0)?;
        let stock = StockLevel {
            total: uint(&reply, 1)?,
            available: uint(&reply, 2)?,
            held: uint(&reply, 3)?,
            sold: uint(&reply, 4)?,
        };
        let created = match status.as_str() {
            "CREATED" => true,
            "UPDATED" => false,
            "MISSING" => return Err(Error::SaleNotFound(spec.sale_id.clone())),
            "STOCK_FIXED" => {
                return Err(Error::StockFixed {
                    sale_id: spec.sale_id.clone(),
                    loaded: stock.total,
                    requested: spec.stock,
                });
            }
            "BUCKETS_FIXED" => {
                return Err(Error::BucketsFixed {
                    sale_id: spec.sale_id.clone(),
                    loaded: stock.total as u32,
                    requested: 1,
                });
            }
            other => return Err(Error::Protocol(format!("load: {other}"))),
        };
        self.command(
            self.inner
                .redis
                .sadd::<i64, _, _>(SALES_KEY, spec.sale_id.as_str()),
        )
        .await?;
        Ok(Loaded { created, stock })
    }

    /// [`Self::load_sale`] for a sale split into stock buckets: the control record first (it
    /// decides whether the sale exists), then each bucket, created empty.
    async fn load_bucketed(&self, spec: &SaleSpec, refresh_only: bool) -> Result<Loaded, Error> {
        let n = spec.stock_buckets;
        let batch = buckets::batch_size(spec.stock, n);
        let hold = spec.reservation_hold.as_millis() as i64;
        let scripts = &self.inner.scripts.transfer;
        let reply = self
            .eval_keys(
                &scripts.control_load,
                vec![buckets::hash_key(&spec.sale_id)],
                vec![
                    Value::from(spec.stock as i64),
                    Value::from(i64::from(spec.per_user_limit)),
                    Value::from(spec.starts_at_ms),
                    Value::from(spec.ends_at_ms),
                    Value::from(hold),
                    Value::from(i64::from(n)),
                    Value::from(batch as i64),
                    Value::from(i64::from(refresh_only)),
                ],
            )
            .await?;
        let created = match text(&reply, 0)?.as_str() {
            "CREATED" => true,
            "UPDATED" => false,
            "MISSING" => return Err(Error::SaleNotFound(spec.sale_id.clone())),
            "STOCK_FIXED" => {
                return Err(Error::StockFixed {
                    sale_id: spec.sale_id.clone(),
                    loaded: uint(&reply, 1)?,
                    requested: spec.stock,
                });
            }
            "BUCKETS_FIXED" => {
                return Err(Error::BucketsFixed {
                    sale_id: spec.sale_id.clone(),
                    loaded: uint(&reply, 1)? as u32,
                    requested: n,
                });
            }
            other => return Err(Error::Protocol(format!("control load: {other}"))),
        };
        for k in 0..n {
            self.eval_keys(
                &scripts.bucket_load,
                vec![buckets::hash_key(&buckets::bucket_tag(&spec.sale_id, k, n))],
                vec![
                    Value::from(i64::from(spec.per_user_limit)),
                    Value::from(spec.starts_at_ms),
                    Value::from(spec.ends_at_ms),
                    Value::from(hold),
                ],
            )
            .await?;
        }
        self.command(
            self.inner
                .redis
                .sadd::<i64, _, _>(SALES_KEY, spec.sale_id.as_str()),
        )
        .await?;
        Ok(Loaded {
            created,
            stock: self.stock(&spec.sale_id).await?,
        })
    }

    /// Tries to reserve units (see [`Outcome`] for the answers that are not errors).
    pub async fn reserve(&self, request: &ReserveRequest) -> Result<Reserved, Error> {
        let started = std::time::Instant::now();
        let reserved = self.reserve_inner(request).await;
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

    async fn reserve_inner(&self, request: &ReserveRequest) -> Result<Reserved, Error> {
        request.validate()?;
        let layout = self.layout(&request.sale_id).await?;
        if layout.buckets > 1 {
            return self.reserve_bucketed(request, layout).await;
        }
        let reservation_id = uuid::Uuid::now_v7().to_string();
        let reply = self
            .eval_acked(
                &self.inner.scripts.reserve,
                sale_keys(&request.sale_id),
                reserve_args(request, &reservation_id),
                holds_a_reservation,
            )
            .await?;
        self.reserve_reply(request, &reply, 1).await
    }

    /// Reserve for a bucketed sale (see [`crate::buckets`]): always in the buyer's home
    /// bucket; a dry home bucket is refilled and the Reserve runs again; SOLD_OUT only when
    /// the pool and every bucket are empty.
    async fn reserve_bucketed(
        &self,
        request: &ReserveRequest,
        layout: Layout,
    ) -> Result<Reserved, Error> {
        let home = buckets::home_bucket(&request.user_id, layout.buckets);
        let tag = buckets::bucket_tag(&request.sale_id, home, layout.buckets);
        let reservation_id = buckets::reservation_id(&uuid::Uuid::now_v7().to_string(), home);
        let args = reserve_args(request, &reservation_id);
        let gate = self.refill_gate(&request.sale_id, home);
        let wanted = u64::from(request.quantity);
        let reserve = || {
            self.eval_acked(
                &self.inner.scripts.reserve,
                sale_keys(&tag),
                args.clone(),
                holds_a_reservation,
            )
        };
        // Every wait below ends with another request's refill, which moved units that were
        // then sold, so waits are bounded by the stock; the bound here is only a backstop.
        for _ in 0..buckets::MAX_WAITS {
            let asked = std::time::Instant::now();
            let reply = reserve().await?;
            if text(&reply, 0)? != "SOLD_OUT" {
                return self.reserve_reply(request, &reply, layout.buckets).await;
            }
            // One refill of a bucket at a time in this process: the others wait for it and
            // try again, or hear sold out from a search that ended after they asked.
            let Ok(mut guard) = gate.try_lock() else {
                let searched = *gate.lock().await;
                if searched.is_some_and(|at| at > asked) {
                    return Ok(Reserved {
                        outcome: Outcome::SoldOut,
                        available: 0,
                    });
                }
                continue;
            };
            // The refiller keeps the lock until it has its reservation or the search is over.
            for _ in 0..layout.buckets * buckets::MAX_ROUNDS_PER_BUCKET {
                if !self.refill(&request.sale_id, layout, home, wanted).await? {
                    *guard = Some(std::time::Instant::now());
                    drop(guard);
                    let seq = self
                        .command(self.inner.redis.hincrby::<u64, _, _>(
                            buckets::hash_key(&request.sale_id),
                            "sigseq",
                            1,
                        ))
                        .await?;
                    self.publish_signal(&request.sale_id, true, 0, seq).await;
                    return Ok(Reserved {
                        outcome: Outcome::SoldOut,
                        available: 0,
                    });
                }
                let reply = reserve().await?;
                if text(&reply, 0)? != "SOLD_OUT" {
                    drop(guard);
                    return self.reserve_reply(request, &reply, layout.buckets).await;
                }
            }
            break;
        }
        Err(Error::Contended(request.sale_id.clone()))
    }

    /// The lock one process's refills of one bucket take turns on; it remembers when a search
    /// last found nothing anywhere.
    fn refill_gate(&self, sale_id: &str, bucket: u32) -> RefillGate {
        self.inner
            .refill_gates
            .entry((sale_id.to_owned(), bucket))
            .or_default()
            .clone()
    }

    /// Moves units into bucket `home`: a batch from the pool, else the units wanted from
    /// another bucket, else whatever journalled transfers are left to settle. False when
    /// there was nothing anywhere.
    async fn refill(
        &self,
        sale_id: &str,
        layout: Layout,
        home: u32,
        wanted: u64,
    ) -> Result<bool, Error> {
        let (given, mut journalled) = self
            .transfer(
                sale_id,
                layout.buckets,
                sale_id,
                "pool",
                home,
                (layout.batch.max(wanted), wanted),
            )
            .await?;
        if given > 0 {
            return Ok(true);
        }
        let n = layout.buckets;
        let offset = rand::random_range(0..n);
        for i in 0..n {
            let k = (offset + i) % n;
            if k == home {
                continue;
            }
            let tag = buckets::bucket_tag(sale_id, k, n);
            let (given, pending) = self
                .transfer(
                    sale_id,
                    n,
                    &tag,
                    "available",
                    home,
                    (layout.batch.max(wanted), wanted),
                )
                .await?;
            if given > 0 {
                return Ok(true);
            }
            journalled += pending;
        }
        let home_tag = buckets::bucket_tag(sale_id, home, n);
        journalled += self
            .command(
                self.inner
                    .redis
                    .hlen::<u64, _>(buckets::journal_key(&home_tag)),
            )
            .await?;
        Ok(journalled > 0 && self.settle(sale_id).await? > 0)
    }

    /// Gives up to `want` units from the slot `from_tag` (its `field`) to bucket `to` and
    /// credits them there. Returns the units moved and the entries left in the source's
    /// journal.
    async fn transfer(
        &self,
        sale_id: &str,
        buckets: u32,
        from_tag: &str,
        field: &str,
        to: u32,
        (want, least): (u64, u64),
    ) -> Result<(u64, u64), Error> {
        let transfer_id = uuid::Uuid::now_v7().to_string();
        let reply = self
            .eval_acked(
                &self.inner.scripts.transfer.give,
                vec![buckets::hash_key(from_tag), buckets::journal_key(from_tag)],
                vec![
                    Value::from(transfer_id.as_str()),
                    Value::from(i64::from(to)),
                    Value::from(want as i64),
                    Value::from(field),
                    Value::from(least as i64),
                ],
                |reply| int(reply, 0).is_ok_and(|n| n > 0),
            )
            .await?;
        let given = uint(&reply, 0)?;
        let pending = uint(&reply, 1)?;
        if given == 0 {
            return Ok((0, pending));
        }
        let journalled = buckets::Journalled {
            to,
            units: given,
            generation: text(&reply, 2)?,
        };
        let credited = self
            .credit(sale_id, buckets, from_tag, &transfer_id, &journalled)
            .await?;
        Ok((if credited { given } else { 0 }, pending))
    }

    /// Applies a journalled transfer to its bucket (once, however often it is called) and
    /// clears the journal entry. False when the transfer is stale (a rebuild ran since its
    /// Give and counted its units afresh): nothing is credited, the entry is cleared.
    async fn credit(
        &self,
        sale_id: &str,
        buckets: u32,
        from_tag: &str,
        transfer_id: &str,
        journalled: &buckets::Journalled,
    ) -> Result<bool, Error> {
        let to_tag = buckets::bucket_tag(sale_id, journalled.to, buckets);
        let reply = self
            .eval_acked(
                &self.inner.scripts.transfer.credit,
                vec![buckets::hash_key(&to_tag), buckets::applied_key(&to_tag)],
                vec![
                    Value::from(transfer_id),
                    Value::from(journalled.units as i64),
                    Value::from(journalled.generation.as_str()),
                ],
                |reply| int(reply, 0).is_ok_and(|n| n == 1),
            )
            .await?;
        let applied = match int(&reply, 0)? {
            -1 => return Err(Error::SaleNotFound(to_tag)),
            -2 => {
                tracing::info!(
                    sale_id,
                    transfer_id,
                    "a transfer from before a rebuild is dropped"
                );
                false
            }
            _ => true,
        };
        self.command(
            self.inner
                .redis
                .hdel::<i64, _, _>(buckets::journal_key(from_tag), transfer_id),
        )
        .await?;
        Ok(applied)
    }

    /// Finishes every journalled transfer of a bucketed sale (left by a process that died
    /// between Give and Credit, or still under way elsewhere). Returns the units credited.
    pub async fn settle(&self, sale_id: &str) -> Result<u64, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        let layout = self.layout(sale_id).await?;
        if layout.buckets <= 1 {
            return Ok(0);
        }
        let mut moved = 0;
        let tags = buckets::slot_tags(sale_id, layout.buckets);
        for tag in tags {
            let entries: HashMap<String, String> = self
                .command(self.inner.redis.hgetall(buckets::journal_key(&tag)))
                .await?;
            for (transfer_id, entry) in entries {
                let journalled = buckets::parse_journal(&entry)?;
                if self
                    .credit(sale_id, layout.buckets, &tag, &transfer_id, &journalled)
                    .await?
                {
                    moved += journalled.units;
                }
            }
        }
        Ok(moved)
    }

    async fn reserve_reply(
        &self,
        request: &ReserveRequest,
        reply: &[Value],
        buckets: u32,
    ) -> Result<Reserved, Error> {
        let status = text(reply, 0)?;
        let refused = |outcome| -> Result<Reserved, Error> {
            Ok(Reserved {
                outcome,
                available: uint(reply, 1)?,
            })
        };
        match status.as_str() {
            "RESERVED" | "DUPLICATE" => {
                let (reservation, available) = self
                    .transition_reply(&request.sale_id, reply, buckets)
                    .await?;
                Ok(Reserved {
                    outcome: Outcome::Reserved {
                        reservation,
                        duplicate: status == "DUPLICATE",
                    },
                    available,
                })
            }
            "SOLD_OUT" => refused(Outcome::SoldOut),
            "USER_LIMIT" => refused(Outcome::UserLimit),
            "NOT_ACTIVE" => refused(Outcome::NotActive),
            "INVALID" => refused(Outcome::QuantityOverLimit),
            "KEY_REUSED" => refused(Outcome::KeyReused),
            "NOT_FOUND" => Err(Error::SaleNotFound(request.sale_id.clone())),
            other => Err(Error::Protocol(format!("reserve: {other}"))),
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
        check_ids(sale_id, reservation_id)?;
        let tag = self.reservation_tag(sale_id, reservation_id).await?;
        let args = vec![Value::from(reservation_id), Value::from(hold_until_ms)];
        let reply = self.eval(&self.inner.scripts.commit, &tag, args).await?;
        self.finish_transition("commit", sale_id, reservation_id, &reply)
            .await
    }

    /// [`Self::commit`] for up to [`MAX_COMMIT_BATCH`] reservations of one sale in one atomic
    /// script call; each gets its own result.
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
        let layout = self.layout(sale_id).await?;
        if layout.buckets <= 1 {
            return self.commit_group(sale_id, sale_id, 1, items).await;
        }
        // One atomic call per bucket; an id naming no bucket of the sale does not exist.
        let mut groups: HashMap<u32, Vec<(String, i64)>> = HashMap::new();
        for item in items {
            if let Some(k) = buckets::bucket_of(&item.0, layout.buckets) {
                groups.entry(k).or_default().push(item.clone());
            }
        }
        let mut results: HashMap<String, CommitResult> = HashMap::new();
        for (k, group) in groups {
            let tag = buckets::bucket_tag(sale_id, k, layout.buckets);
            for result in self
                .commit_group(sale_id, &tag, layout.buckets, &group)
                .await?
            {
                results.insert(result.reservation_id.clone(), result);
            }
        }
        Ok(items
            .iter()
            .map(|(reservation_id, _)| {
                results
                    .get(reservation_id)
                    .cloned()
                    .unwrap_or(CommitResult {
                        reservation_id: reservation_id.clone(),
                        outcome: CommitOutcome::NotFound,
                        state: None,
                        release_reason: None,
                    })
            })
            .collect())
    }

    /// CommitMany over the reservations of one slot.
    async fn commit_group(
        &self,
        sale_id: &str,
        tag: &str,
        buckets: u32,
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
        if text(&reply, 0)? == "NO_SALE" {
            return Err(Error::SaleNotFound(sale_id.to_owned()));
        }
        self.signal(
            sale_id,
            buckets,
            int(&reply, 2)?,
            uint(&reply, 1)?,
            uint(&reply, 3)?,
        )
        .await;
        items
            .iter()
            .enumerate()
            .map(|(i, (reservation_id, _))| {
                let at = 4 + i * 3;
                let status = text(&reply, at)?;
                let outcome = match status.as_str() {
                    "OK" => CommitOutcome::Committed,
                    "UNCHANGED" => CommitOutcome::Unchanged,
                    "REVIVED" => CommitOutcome::Revived,
                    "REFUSED" => CommitOutcome::Refused,
                    "NOT_FOUND" => CommitOutcome::NotFound,
                    other => return Err(Error::Protocol(format!("commit_many: {other}"))),
                };
                Ok(CommitResult {
                    reservation_id: reservation_id.clone(),
                    outcome,
                    state: ReservationState::parse(&text(&reply, at + 1)?),
                    release_reason: ReleaseReason::parse(&text(&reply, at + 2)?),
                })
            })
            .collect()
    }

    /// The reservation is paid: its units are sold. A released one takes its units back when
    /// stock and the buyer's limit allow (the order is paid); otherwise refused.
    pub async fn confirm(&self, sale_id: &str, reservation_id: &str) -> Result<Transition, Error> {
        check_ids(sale_id, reservation_id)?;
        let tag = self.reservation_tag(sale_id, reservation_id).await?;
        let args = vec![Value::from(reservation_id)];
        let reply = self.eval(&self.inner.scripts.confirm, &tag, args).await?;
        self.finish_transition("confirm", sale_id, reservation_id, &reply)
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
        check_ids(sale_id, reservation_id)?;
        let tag = self.reservation_tag(sale_id, reservation_id).await?;
        let args = vec![Value::from(reservation_id), Value::from(reason.as_str())];
        let reply = self.eval(&self.inner.scripts.release, &tag, args).await?;
        self.finish_transition("release", sale_id, reservation_id, &reply)
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
        check_ids(sale_id, reservation_id)?;
        let tag = self.reservation_tag(sale_id, reservation_id).await?;
        let args = vec![Value::from(reservation_id)];
        let reply = self.eval(&self.inner.scripts.queued, &tag, args).await?;
        self.finish_transition("queue", sale_id, reservation_id, &reply)
            .await
    }

    async fn finish_transition(
        &self,
        action: &'static str,
        sale_id: &str,
        reservation_id: &str,
        reply: &[Value],
    ) -> Result<Transition, Error> {
        let status = text(reply, 0)?;
        match status.as_str() {
            "NO_SALE" => return Err(Error::SaleNotFound(sale_id.to_owned())),
            "NOT_FOUND" => {
                return Err(Error::ReservationNotFound {
                    sale_id: sale_id.to_owned(),
                    reservation_id: reservation_id.to_owned(),
                });
            }
            _ => {}
        }
        let buckets = self.layout(sale_id).await?.buckets;
        let (reservation, _) = self.transition_reply(sale_id, reply, buckets).await?;
        match status.as_str() {
            "OK" | "REVIVED" | "RECLAIMED" => Ok(Transition {
                reservation,
                changed: true,
            }),
            "UNCHANGED" => Ok(Transition {
                reservation,
                changed: false,
            }),
            "REFUSED" => Err(Error::Refused {
                action,
                reservation: Box::new(reservation),
            }),
            other => Err(Error::Protocol(format!("{action}: {other}"))),
        }
    }

    /// Parses a reservation reply and publishes its stock signal, if any.
    async fn transition_reply(
        &self,
        sale_id: &str,
        reply: &[Value],
        buckets: u32,
    ) -> Result<(Reservation, u64), Error> {
        let state = text(reply, 4)?;
        let expires = int(reply, 6)?;
        let reason = text(reply, 8)?;
        let reservation = Reservation {
            reservation_id: text(reply, 1)?,
            sale_id: sale_id.to_owned(),
            user_id: text(reply, 2)?,
            quantity: u32::try_from(int(reply, 3)?)
                .map_err(|_| Error::Protocol("quantity".into()))?,
            state: ReservationState::parse(&state)
                .ok_or_else(|| Error::Protocol(format!("state {state}")))?,
            created_at_ms: int(reply, 5)?,
            expires_at_ms: (expires > 0).then_some(expires),
            idempotency_key: text(reply, 7)?,
            release_reason: ReleaseReason::parse(&reason),
            queued: int(reply, 12)? == 1,
        };
        let available = uint(reply, 9)?;
        self.signal(
            sale_id,
            buckets,
            int(reply, 10)?,
            available,
            uint(reply, 11)?,
        )
        .await;
        Ok((reservation, available))
    }

    /// Publishes a script's stock signal. A bucket running dry says nothing of the sale (its
    /// sold-out is announced by the Reserve that finds every bucket empty); a bucket whose
    /// stock comes back does, numbered by the sale's own sequence.
    async fn signal(&self, sale_id: &str, buckets: u32, signal: i64, available: u64, seq: u64) {
        if signal < 0 || self.inner.signals.is_none() {
            return;
        }
        if buckets <= 1 {
            self.publish_signal(sale_id, signal == 1, available, seq)
                .await;
            return;
        }
        if signal == 1 {
            return;
        }
        let seq = self
            .command(
                self.inner
                    .redis
                    .hincrby::<u64, _, _>(buckets::hash_key(sale_id), "sigseq", 1),
            )
            .await;
        match seq {
            Ok(seq) => self.publish_signal(sale_id, false, available, seq).await,
            Err(e) => tracing::warn!(sale_id, error = %e, "back-in-stock signal not numbered"),
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
        let layout = self.layout(sale_id).await?;
        if layout.buckets <= 1 {
            return self.expire_slot(sale_id, sale_id, 1, batch).await;
        }
        let mut all = Expired {
            finished: true,
            ..Expired::default()
        };
        for k in 0..layout.buckets {
            let tag = buckets::bucket_tag(sale_id, k, layout.buckets);
            let expired = self
                .expire_slot(sale_id, &tag, layout.buckets, batch)
                .await?;
            all.released.extend(expired.released);
            all.available += expired.available;
            all.finished &= expired.finished;
        }
        self.settle(sale_id).await?;
        Ok(all)
    }

    async fn expire_slot(
        &self,
        sale_id: &str,
        tag: &str,
        buckets: u32,
        batch: u32,
    ) -> Result<Expired, Error> {
        let reply = self
            .eval(
                &self.inner.scripts.expire,
                tag,
                vec![Value::from(i64::from(batch))],
            )
            .await?;
        let available = uint(&reply, 1)?;
        let expired = Expired {
            released: (5..reply.len())
                .map(|i| text(&reply, i))
                .collect::<Result<_, _>>()?,
            available,
            finished: int(&reply, 4)? == 1,
        };
        self.signal(
            sale_id,
            buckets,
            int(&reply, 2)?,
            available,
            uint(&reply, 3)?,
        )
        .await;
        Ok(expired)
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
        let args = rebuild_args(spec, spec.stock as i64, seen.as_str(), reservations)?;
        let (stock, seq) = self.finish_rebuild(spec, &spec.sale_id, args).await?;
        // Gateways learn at once whether the rebuilt sale has stock.
        self.publish_signal(&spec.sale_id, stock.available == 0, stock.available, seq)
            .await;
        Ok(stock)
    }

    /// [`Self::rebuild`] of a bucketed sale, bucket by bucket (each reservation id names its
    /// bucket): every bucket is rebuilt to exactly the units its orders and its own other
    /// reservations have, journalled transfers are dropped, and the pool gets the rest. Not
    /// atomic across buckets: it is an operator's repair, run while the sale takes no traffic.
    async fn rebuild_bucketed(
        &self,
        spec: &SaleSpec,
        reservations: &[Reservation],
        seen: SalePresence,
    ) -> Result<StockLevel, Error> {
        let n = spec.stock_buckets;
        let present = match self.stock(&spec.sale_id).await {
            Ok(_) => SalePresence::Present,
            Err(Error::SaleNotFound(_)) => SalePresence::Missing,
            Err(e) => return Err(e),
        };
        if present != seen {
            return Err(Error::RedisChanged(spec.sale_id.clone()));
        }
        let units: u64 = reservations
            .iter()
            .filter(|r| r.state != ReservationState::Released)
            .map(|r| u64::from(r.quantity))
            .sum();
        if units > spec.stock {
            return Err(Error::Oversold {
                sale_id: spec.sale_id.clone(),
                units,
                stock: spec.stock,
            });
        }
        let mut groups: Vec<Vec<Reservation>> = vec![Vec::new(); n as usize];
        for r in reservations {
            let k = buckets::bucket_of(&r.reservation_id, n).ok_or_else(|| {
                Error::invalid(
                    "reservations",
                    format!("{} names no stock bucket of the sale", r.reservation_id),
                )
            })?;
            groups[k as usize].push(r.clone());
        }
        let args: Vec<Vec<Value>> = groups
            .iter()
            .map(|group| rebuild_args(spec, -1, "ANY", group))
            .collect::<Result<_, _>>()?;
        self.load_sale(spec).await?;
        self.new_generation(&spec.sale_id, n).await?;
        let mut given = 0;
        for (k, args) in args.into_iter().enumerate() {
            let tag = buckets::bucket_tag(&spec.sale_id, k as u32, n);
            given += self.finish_rebuild(spec, &tag, args).await?.0.total;
        }
        let tags = buckets::slot_tags(&spec.sale_id, n);
        for tag in tags {
            self.command(self.inner.redis.del::<i64, _>(buckets::journal_key(&tag)))
                .await?;
        }
        let Some(pool) = spec.stock.checked_sub(given) else {
            return Err(Error::Oversold {
                sale_id: spec.sale_id.clone(),
                units: given,
                stock: spec.stock,
            });
        };
        self.command(
            self.inner
                .redis
                .hset::<i64, _, _>(buckets::hash_key(&spec.sale_id), ("pool", pool as i64)),
        )
        .await?;
        let stock = self.stock(&spec.sale_id).await?;
        // A bucketed sale announces stock that is back (its sold-out comes from Reserve).
        if stock.available > 0 {
            self.signal(&spec.sale_id, n, 0, stock.available, 0).await;
        }
        Ok(stock)
    }

    /// Gives every slot of a bucketed sale a new generation: a transfer given before it (its
    /// units counted afresh by the rebuild) credits nothing after it.
    async fn new_generation(&self, sale_id: &str, buckets: u32) -> Result<(), Error> {
        let generation = uuid::Uuid::now_v7().to_string();
        let tags = buckets::slot_tags(sale_id, buckets);
        for tag in tags {
            self.command(
                self.inner
                    .redis
                    .hset::<i64, _, _>(buckets::hash_key(&tag), ("gen", generation.as_str())),
            )
            .await?;
        }
        Ok(())
    }

    async fn finish_rebuild(
        &self,
        spec: &SaleSpec,
        tag: &str,
        args: Vec<Value>,
    ) -> Result<(StockLevel, u64), Error> {
        let reply = self.eval(&self.inner.scripts.rebuild, tag, args).await?;
        let stock = StockLevel {
            total: uint(&reply, 1)?,
            available: uint(&reply, 2)?,
            held: uint(&reply, 3)?,
            sold: uint(&reply, 4)?,
        };
        match text(&reply, 0)?.as_str() {
            "OK" => {
                self.command(
                    self.inner
                        .redis
                        .sadd::<i64, _, _>(SALES_KEY, spec.sale_id.as_str()),
                )
                .await?;
                Ok((stock, uint(&reply, 5)?))
            }
            "OVERSOLD" => Err(Error::Oversold {
                sale_id: spec.sale_id.clone(),
                units: stock.held + stock.sold,
                stock: stock.total,
            }),
            "CHANGED" => Err(Error::RedisChanged(spec.sale_id.clone())),
            other => Err(Error::Protocol(format!("rebuild: {other}"))),
        }
    }

    /// Every sale loaded and not yet finished (see [`Self::forget_finished`]).
    pub async fn sales(&self) -> Result<Vec<String>, Error> {
        self.command(self.inner.redis.smembers::<Vec<String>, _>(SALES_KEY))
            .await
    }

    /// Drops a finished sale from the set the sweeper walks (its data stays).
    pub async fn forget_finished(&self, sale_id: &str) -> Result<(), Error> {
        self.command(self.inner.redis.srem::<i64, _, _>(SALES_KEY, sale_id))
            .await
            .map(drop)
    }

    /// A sale's stock counters.
    /// For a bucketed sale: the pool, every bucket and the units journalled between them.
    pub async fn stock(&self, sale_id: &str) -> Result<StockLevel, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        let layout = self.layout(sale_id).await?;
        if layout.buckets > 1 {
            return Ok(self.bucket_stock(sale_id, layout).await?.0);
        }
        self.slot_stock(sale_id, sale_id).await
    }

    /// The stock of a bucketed sale and of each of its buckets.
    pub async fn bucket_levels(&self, sale_id: &str) -> Result<Vec<StockLevel>, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        let layout = self.layout(sale_id).await?;
        if layout.buckets <= 1 {
            return Ok(vec![self.stock(sale_id).await?]);
        }
        Ok(self.bucket_stock(sale_id, layout).await?.1)
    }

    async fn bucket_stock(
        &self,
        sale_id: &str,
        layout: Layout,
    ) -> Result<(StockLevel, Vec<StockLevel>), Error> {
        let control: Vec<Option<u64>> = self
            .command(
                self.inner
                    .redis
                    .hmget(buckets::hash_key(sale_id), vec!["total", "pool"]),
            )
            .await?;
        let [Some(total), Some(pool)] = control.as_slice() else {
            return Err(Error::SaleNotFound(sale_id.to_owned()));
        };
        let mut sale = StockLevel {
            total: *total,
            available: *pool,
            held: 0,
            sold: 0,
        };
        let mut levels = Vec::with_capacity(layout.buckets as usize);
        let tags = buckets::slot_tags(sale_id, layout.buckets);
        for (i, tag) in tags.enumerate() {
            if i > 0 {
                let level = self.slot_stock(sale_id, &tag).await?;
                sale.available += level.available;
                sale.held += level.held;
                sale.sold += level.sold;
                levels.push(level);
            }
            let journal: HashMap<String, String> = self
                .command(self.inner.redis.hgetall(buckets::journal_key(&tag)))
                .await?;
            for (transfer_id, entry) in journal {
                let journalled = buckets::parse_journal(&entry)?;
                let to = buckets::bucket_tag(sale_id, journalled.to, layout.buckets);
                let applied: bool = self
                    .command(
                        self.inner
                            .redis
                            .sismember(buckets::applied_key(&to), transfer_id),
                    )
                    .await?;
                if !applied {
                    sale.available += journalled.units;
                }
            }
        }
        Ok((sale, levels))
    }

    async fn slot_stock(&self, sale_id: &str, tag: &str) -> Result<StockLevel, Error> {
        let key = &sale_keys(tag)[0];
        let fields: Vec<Option<u64>> = self
            .command(
                self.inner
                    .redis
                    .hmget(key, vec!["total", "available", "held", "sold"]),
            )
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

    /// Reads one reservation.
    pub async fn reservation(
        &self,
        sale_id: &str,
        reservation_id: &str,
    ) -> Result<Reservation, Error> {
        check_ids(sale_id, reservation_id)?;
        let tag = self.reservation_tag(sale_id, reservation_id).await?;
        let key = &sale_keys(&tag)[4];
        let raw: Option<String> = self
            .command(self.inner.redis.hget(key, reservation_id))
            .await?;
        let raw = raw.ok_or_else(|| Error::ReservationNotFound {
            sale_id: sale_id.to_owned(),
            reservation_id: reservation_id.to_owned(),
        })?;
        parse_record(sale_id, reservation_id, &raw)
    }

    /// The fingerprints ([`crate::model::key_fingerprint`]) of every buyer's key that made a
    /// reservation in the sale; `None` when there are more than `limit`. A sale Redis does not
    /// hold is [`Error::SaleNotFound`].
    pub async fn key_fingerprints(
        &self,
        sale_id: &str,
        limit: u32,
    ) -> Result<Option<Vec<u64>>, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        if !(1..=crate::model::MAX_FINGERPRINTS).contains(&limit) {
            return Err(Error::invalid(
                "limit",
                format!("{limit} is outside 1..={}", crate::model::MAX_FINGERPRINTS),
            ));
        }
        // A sale Redis lost has no keys to tell: not an empty set (that would let a gateway
        // answer SOLD_OUT from memory to a buyer whose accepted purchase is being restored).
        let loaded: bool = self
            .command(self.inner.redis.exists(buckets::hash_key(sale_id)))
            .await?;
        if !loaded {
            return Err(Error::SaleNotFound(sale_id.to_owned()));
        }
        let mut fingerprints = Vec::new();
        for tag in self.tags(sale_id).await? {
            let idem = &sale_keys(&tag)[2];
            let count: u64 = self.command(self.inner.redis.hlen(idem)).await?;
            if fingerprints.len() as u64 + count > u64::from(limit) {
                return Ok(None);
            }
            let keys: Vec<String> = self.command(self.inner.redis.hkeys(idem)).await?;
            fingerprints.extend(keys.iter().filter_map(|k| {
                let (user, key) = k.split_once('\0')?;
                Some(crate::model::key_fingerprint(user, key))
            }));
        }
        Ok(Some(fingerprints))
    }

    /// Every hash tag holding the sale's reservations: the sale's own, or its buckets'.
    async fn tags(&self, sale_id: &str) -> Result<Vec<String>, Error> {
        let layout = self.layout(sale_id).await?;
        Ok(if layout.buckets <= 1 {
            vec![sale_id.to_owned()]
        } else {
            (0..layout.buckets)
                .map(|k| buckets::bucket_tag(sale_id, k, layout.buckets))
                .collect()
        })
    }

    /// Reads every counter and record of a sale and adds them up (for tests, benchmarks and
    /// reconciliation; it reads the whole sale, so it is not for the hot path).
    /// A bucketed sale's buckets are added up together.
    pub async fn audit(&self, sale_id: &str) -> Result<Audit, Error> {
        let stock = self.stock(sale_id).await?;
        let tags = self.tags(sale_id).await?;
        let mut audit = Audit {
            stock,
            ..Audit::default()
        };
        let mut records: HashMap<String, String> = HashMap::new();
        for tag in tags {
            let keys = sale_keys(&tag);
            let counted: HashMap<String, u64> =
                self.command(self.inner.redis.hgetall(&keys[1])).await?;
            for (user, units) in counted {
                *audit.counted_by_user.entry(user).or_default() += units;
            }
            let slot: HashMap<String, String> =
                self.command(self.inner.redis.hgetall(&keys[4])).await?;
            records.extend(slot);
        }
        for (id, raw) in records {
            let r = parse_record(sale_id, &id, &raw)?;
            let units = u64::from(r.quantity);
            match r.state {
                ReservationState::Held | ReservationState::Committed => {
                    audit.held_by_records += units
                }
                ReservationState::Confirmed => audit.sold_by_records += units,
                ReservationState::Released => {}
            }
            if r.state != ReservationState::Released {
                *audit.units_by_user.entry(r.user_id.clone()).or_default() += units;
            }
            audit.reservations.push(r);
        }
        Ok(audit)
    }

    /// Runs a trivial script on the same connection pool: the floor any script call pays
    /// (for benchmarks).
    pub async fn ping_script(&self, script: &Script) -> Result<i64, Error> {
        let client = self.inner.redis.next();
        let call = script.evalsha_with_reload::<i64, _, _>(
            client,
            Vec::<String>::new(),
            Vec::<Value>::new(),
        );
        self.command(call).await
    }
}

/// The Rebuild script's arguments (`total` -1: fit a bucket to its reservations; `seen`: see
/// `rebuild.lua`).
fn rebuild_args(
    spec: &SaleSpec,
    total: i64,
    seen: &str,
    reservations: &[Reservation],
) -> Result<Vec<Value>, Error> {
    let mut args = vec![
        Value::from(total),
        Value::from(i64::from(spec.per_user_limit)),
        Value::from(spec.starts_at_ms),
        Value::from(spec.ends_at_ms),
        Value::from(spec.reservation_hold.as_millis() as i64),
        Value::from(seen),
    ];
    for r in reservations {
        check_ids(&spec.sale_id, &r.reservation_id)?;
        flashsale_proto::rules::text_id("user_id", &r.user_id)?;
        let reason = rebuilt_reason(r)?;
        args.extend([
            Value::from(r.reservation_id.as_str()),
            Value::from(r.user_id.as_str()),
            Value::from(i64::from(r.quantity)),
            Value::from(r.state.as_str()),
            Value::from(r.created_at_ms),
            Value::from(r.expires_at_ms.unwrap_or(0)),
            Value::from(r.idempotency_key.as_str()),
            Value::from(reason),
            Value::from(i64::from(r.queued)),
        ]);
    }
    Ok(args)
}

/// The release reason a rebuilt reservation is stored with: COMMITTED and CONFIRMED have none,
/// RELEASED (a closed order) must have one; HELD is never rebuilt (Postgres knows no holds).
fn rebuilt_reason(r: &Reservation) -> Result<&'static str, Error> {
    match (r.state, r.release_reason) {
        (ReservationState::Committed | ReservationState::Confirmed, None) => Ok(""),
        (ReservationState::Released, Some(reason)) => Ok(reason.as_str()),
        _ => Err(Error::invalid(
            "reservations",
            format!(
                "{} is {} with release reason {:?}; rebuilt are COMMITTED and CONFIRMED without \
                 one and RELEASED with one",
                r.reservation_id,
                r.state.as_str(),
                r.release_reason.map(ReleaseReason::as_str)
            ),
        )),
    }
}

/// A Reserve reply that hands the buyer a reservation (new or the one their key made).
fn holds_a_reservation(reply: &[Value]) -> bool {
    matches!(text(reply, 0).as_deref(), Ok("RESERVED" | "DUPLICATE"))
}

fn reserve_args(request: &ReserveRequest, reservation_id: &str) -> Vec<Value> {
    vec![
        Value::from(request.user_id.as_str()),
        Value::from(i64::from(request.quantity)),
        Value::from(request.idempotency_key.as_str()),
        Value::from(reservation_id),
    ]
}

fn check_ids(sale_id: &str, reservation_id: &str) -> Result<(), Error> {
    flashsale_proto::rules::sale_id(sale_id)?;
    flashsale_proto::rules::text_id("reservation_id", reservation_id)?;
    Ok(())
}

fn parse_record(sale_id: &str, reservation_id: &str, raw: &str) -> Result<Reservation, Error> {
    #[derive(serde::Deserialize)]
    struct Record {
        u: String,
        q: u32,
        s: String,
        c: f64,
        e: f64,
        k: String,
        r: String,
        #[serde(default)]
        p: u8,
    }
    let rec: Record = serde_json::from_str(raw)
        .map_err(|e| Error::Protocol(format!("record {reservation_id}: {e}")))?;
    let expires = rec.e as i64;
    Ok(Reservation {
        reservation_id: reservation_id.to_owned(),
        sale_id: sale_id.to_owned(),
        user_id: rec.u,
        quantity: rec.q,
        state: ReservationState::parse(&rec.s)
            .ok_or_else(|| Error::Protocol(format!("state {}", rec.s)))?,
        created_at_ms: rec.c as i64,
        expires_at_ms: (expires > 0).then_some(expires),
        idempotency_key: rec.k,
        release_reason: ReleaseReason::parse(&rec.r),
        queued: rec.p == 1,
    })
}

fn text(reply: &[Value], i: usize) -> Result<String, Error> {
    reply
        .get(i)
        .and_then(Value::as_string)
        .ok_or_else(|| Error::Protocol(format!("no text at {i}: {reply:?}")))
}

fn int(reply: &[Value], i: usize) -> Result<i64, Error> {
    reply
        .get(i)
        .and_then(Value::as_i64)
        .ok_or_else(|| Error::Protocol(format!("no integer at {i}: {reply:?}")))
}

fn uint(reply: &[Value], i: usize) -> Result<u64, Error> {
    u64::try_from(int(reply, i)?).map_err(|_| Error::Protocol(format!("negative at {i}")))
}
