//! The bucketed layout (see [`crate::buckets`] for the argument): a control record in the
//! sale's own slot holds the pool, and each stock bucket its share of the units, its buyers and
//! their reservations. A buyer always reserves in their home bucket; a dry bucket is refilled
//! from the pool or another bucket through journalled transfers (Give, then Credit).

use std::{collections::HashMap, sync::Arc};

use fred::{prelude::*, types::Value};

use super::{
    Buckets, Inventory, Layout,
    script::{Credit, Given, Load, Rebuild, Reserve, SlotKeys},
};
use crate::{
    Error, buckets,
    model::{
        CommitOutcome, CommitResult, Expired, Loaded, Outcome, Reservation, ReservationState,
        ReserveRequest, Reserved, SalePresence, SaleSpec, StockLevel,
    },
};

/// The lock one process's refills of one bucket take turns on; it remembers when a search last
/// found nothing anywhere.
pub(super) type RefillGate = Arc<tokio::sync::Mutex<Option<std::time::Instant>>>;

impl Inventory {
    /// Load of a bucketed sale: the control record first (it decides whether the sale exists),
    /// then each bucket, created empty.
    pub(super) async fn load_bucketed(
        &self,
        spec: &SaleSpec,
        refresh_only: bool,
    ) -> Result<Loaded, Error> {
        let n = spec.stock_buckets;
        let batch = buckets::batch_size(spec.stock, n);
        let hold = spec.reservation_hold.as_millis() as i64;
        let scripts = &self.inner.scripts.transfer;
        let control = vec![
            Value::from(spec.stock as i64),
            Value::from(i64::from(spec.per_user_limit)),
            Value::from(spec.starts_at_ms),
            Value::from(spec.ends_at_ms),
            Value::from(hold),
            Value::from(i64::from(n)),
            Value::from(batch as i64),
            Value::from(i64::from(refresh_only)),
        ];
        let keys = vec![buckets::hash_key(&spec.sale_id)];
        let reply = self
            .eval_acked(&scripts.control_load, keys, control, |_| true)
            .await?;
        let created = match Load::parse(&reply)? {
            Load::Done { created } => created,
            Load::Missing => return Err(Error::SaleNotFound(spec.sale_id.clone())),
            Load::StockFixed { loaded } => {
                return Err(Error::StockFixed {
                    sale_id: spec.sale_id.clone(),
                    loaded,
                    requested: spec.stock,
                });
            }
            Load::BucketsFixed { loaded } => {
                return Err(Error::BucketsFixed {
                    sale_id: spec.sale_id.clone(),
                    loaded,
                    requested: n,
                });
            }
        };
        for k in 0..n {
            let keys = vec![buckets::hash_key(&buckets::bucket_tag(&spec.sale_id, k, n))];
            let args = vec![
                Value::from(i64::from(spec.per_user_limit)),
                Value::from(spec.starts_at_ms),
                Value::from(spec.ends_at_ms),
                Value::from(hold),
            ];
            self.eval_acked(&scripts.bucket_load, keys, args, |_| true)
                .await?;
        }
        let layout = Buckets { n, batch };
        Ok(Loaded {
            created,
            stock: self.bucket_stock(&spec.sale_id, layout).await?.0,
        })
    }

    /// Reserve in a bucketed sale: always in the buyer's home bucket; a dry home bucket is
    /// refilled and the Reserve runs again; SOLD_OUT only when the pool and every bucket are
    /// empty.
    pub(super) async fn reserve_bucketed(
        &self,
        request: &ReserveRequest,
        layout: Buckets,
    ) -> Result<Reserved, Error> {
        let home = buckets::home_bucket(&request.user_id, layout.n);
        let tag = buckets::bucket_tag(&request.sale_id, home, layout.n);
        let reservation_id = buckets::reservation_id(&uuid::Uuid::now_v7().to_string(), home);
        let args = Reserve::args(request, &reservation_id);
        let gate = self.refill_gate(&request.sale_id, home);
        let reserve = || {
            self.eval_acked(
                &self.inner.scripts.reserve,
                SlotKeys::of(&tag).for_script(),
                args.clone(),
                Reserve::holds_a_reservation,
            )
        };
        let answer = |reply: Vec<Value>| async move {
            self.reserved(request, &reply, Layout::Bucketed(layout))
                .await
        };
        // Every wait below ends with another request's refill, which moved units that were
        // then sold, so waits are bounded by the stock; the bound here is only a backstop.
        for _ in 0..buckets::MAX_WAITS {
            let asked = std::time::Instant::now();
            let reply = reserve().await?;
            if !Reserve::is_sold_out(&reply) {
                return answer(reply).await;
            }
            // One refill of a bucket at a time in this process: the others wait for it and
            // try again, or hear sold out from a search that ended after they asked.
            let Ok(mut guard) = gate.try_lock() else {
                let searched = *gate.lock().await;
                if searched.is_some_and(|at| at > asked) {
                    return Ok(sold_out());
                }
                continue;
            };
            // The refiller keeps the lock until it has its reservation or the search is over.
            for _ in 0..layout.n * buckets::MAX_ROUNDS_PER_BUCKET {
                if !self.refill(request, layout, home).await? {
                    *guard = Some(std::time::Instant::now());
                    drop(guard);
                    self.announce_sold_out(&request.sale_id).await?;
                    return Ok(sold_out());
                }
                let reply = reserve().await?;
                if !Reserve::is_sold_out(&reply) {
                    drop(guard);
                    return answer(reply).await;
                }
            }
            break;
        }
        Err(Error::Contended(request.sale_id.clone()))
    }

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
        request: &ReserveRequest,
        layout: Buckets,
        home: u32,
    ) -> Result<bool, Error> {
        let sale_id = &request.sale_id;
        let wanted = u64::from(request.quantity);
        let amounts = (layout.batch.max(wanted), wanted);
        let n = layout.n;
        let (given, mut journalled) = self
            .transfer(sale_id, n, sale_id, "pool", home, amounts)
            .await?;
        if given > 0 {
            return Ok(true);
        }
        let offset = rand::random_range(0..n);
        for k in (0..n).map(|i| (offset + i) % n).filter(|k| *k != home) {
            let tag = buckets::bucket_tag(sale_id, k, n);
            let (given, pending) = self
                .transfer(sale_id, n, &tag, "available", home, amounts)
                .await?;
            if given > 0 {
                return Ok(true);
            }
            journalled += pending;
        }
        let home_journal = buckets::journal_key(&buckets::bucket_tag(sale_id, home, n));
        journalled += self
            .command(self.inner.redis.hlen::<u64, _>(home_journal))
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
        let keys = vec![buckets::hash_key(from_tag), buckets::journal_key(from_tag)];
        let args = vec![
            Value::from(transfer_id.as_str()),
            Value::from(i64::from(to)),
            Value::from(want as i64),
            Value::from(field),
            Value::from(least as i64),
        ];
        let give = &self.inner.scripts.transfer.give;
        let reply = self.eval_acked(give, keys, args, Given::moved).await?;
        let given = Given::parse(&reply)?;
        if given.units == 0 {
            return Ok((0, given.pending));
        }
        let journalled = buckets::Journalled {
            to,
            units: given.units,
            generation: given.generation,
        };
        let credited = self
            .credit(sale_id, buckets, from_tag, &transfer_id, &journalled)
            .await?;
        Ok((if credited { given.units } else { 0 }, given.pending))
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
        let keys = vec![buckets::hash_key(&to_tag), buckets::applied_key(&to_tag)];
        let args = vec![
            Value::from(transfer_id),
            Value::from(journalled.units as i64),
            Value::from(journalled.generation.as_str()),
        ];
        let script = &self.inner.scripts.transfer.credit;
        let reply = self
            .eval_acked(script, keys, args, Credit::applied_now)
            .await?;
        let applied = match Credit::parse(&reply)? {
            Credit::NoSale => return Err(Error::SaleNotFound(to_tag)),
            Credit::Stale => {
                tracing::info!(
                    sale_id,
                    transfer_id,
                    "a transfer from before a rebuild is dropped"
                );
                false
            }
            Credit::Applied => true,
        };
        let journal = buckets::journal_key(from_tag);
        self.command(self.inner.redis.hdel::<i64, _, _>(journal, transfer_id))
            .await?;
        Ok(applied)
    }

    /// Finishes every journalled transfer of a bucketed sale (left by a process that died
    /// between Give and Credit, or still under way elsewhere). Returns the units credited; 0
    /// for a one-slot sale.
    pub async fn settle(&self, sale_id: &str) -> Result<u64, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        let Layout::Bucketed(layout) = self.layout(sale_id).await? else {
            return Ok(0);
        };
        let mut moved = 0;
        for tag in buckets::slot_tags(sale_id, layout.n) {
            let entries: HashMap<String, String> = self
                .command(self.inner.redis.hgetall(buckets::journal_key(&tag)))
                .await?;
            for (transfer_id, entry) in entries {
                let journalled = buckets::parse_journal(&entry)?;
                if self
                    .credit(sale_id, layout.n, &tag, &transfer_id, &journalled)
                    .await?
                {
                    moved += journalled.units;
                }
            }
        }
        Ok(moved)
    }

    /// Numbers and publishes the sale's sold-out (every bucket and the pool are empty).
    async fn announce_sold_out(&self, sale_id: &str) -> Result<(), Error> {
        let control = buckets::hash_key(sale_id);
        let seq = self
            .command(self.inner.redis.hincrby::<u64, _, _>(control, "sigseq", 1))
            .await?;
        self.publish_signal(sale_id, true, 0, seq).await;
        Ok(())
    }

    /// Numbers and publishes a bucket's stock coming back as the sale's.
    pub(super) async fn announce_restocked(&self, sale_id: &str, available: u64) {
        if self.inner.signals.is_none() {
            return;
        }
        let control = buckets::hash_key(sale_id);
        let seq = self
            .command(self.inner.redis.hincrby::<u64, _, _>(control, "sigseq", 1))
            .await;
        match seq {
            Ok(seq) => self.publish_signal(sale_id, false, available, seq).await,
            Err(e) => tracing::warn!(sale_id, error = %e, "back-in-stock signal not numbered"),
        }
    }

    /// CommitMany in a bucketed sale: one atomic call per bucket; an id naming no bucket of
    /// the sale does not exist.
    pub(super) async fn commit_many_bucketed(
        &self,
        sale_id: &str,
        layout: Buckets,
        items: &[(String, i64)],
    ) -> Result<Vec<CommitResult>, Error> {
        let mut groups: HashMap<u32, Vec<(String, i64)>> = HashMap::new();
        for item in items {
            if let Some(k) = buckets::bucket_of(&item.0, layout.n) {
                groups.entry(k).or_default().push(item.clone());
            }
        }
        let mut results: HashMap<String, CommitResult> = HashMap::new();
        for (k, group) in groups {
            let tag = buckets::bucket_tag(sale_id, k, layout.n);
            let committed = self
                .commit_slot(sale_id, &tag, Layout::Bucketed(layout), &group)
                .await?;
            for result in committed {
                results.insert(result.reservation_id.clone(), result);
            }
        }
        let not_found = |reservation_id: &String| CommitResult {
            reservation_id: reservation_id.clone(),
            outcome: CommitOutcome::NotFound,
            state: None,
            release_reason: None,
        };
        Ok(items
            .iter()
            .map(|(id, _)| results.get(id).cloned().unwrap_or_else(|| not_found(id)))
            .collect())
    }

    /// Expire in every bucket, then settle the journalled transfers.
    pub(super) async fn expire_bucketed(
        &self,
        sale_id: &str,
        layout: Buckets,
        batch: u32,
    ) -> Result<Expired, Error> {
        let mut all = Expired {
            finished: true,
            ..Expired::default()
        };
        for k in 0..layout.n {
            let tag = buckets::bucket_tag(sale_id, k, layout.n);
            let expired = self
                .expire_slot(sale_id, &tag, Layout::Bucketed(layout), batch)
                .await?;
            all.released.extend(expired.released);
            all.available += expired.available;
            all.finished &= expired.finished;
        }
        self.settle(sale_id).await?;
        Ok(all)
    }

    /// Rebuild of a bucketed sale, bucket by bucket (each reservation id names its bucket):
    /// every bucket is rebuilt to exactly the units its orders and its own other reservations
    /// have, journalled transfers are dropped, and the pool gets the rest. Not atomic across
    /// buckets: it is an operator's repair, run while the sale takes no traffic.
    pub(super) async fn rebuild_bucketed(
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
        let args = rebuild_args_per_bucket(spec, reservations)?;
        self.load_sale(spec).await?;
        self.new_generation(&spec.sale_id, n).await?;
        let mut given = 0;
        for (k, args) in args.into_iter().enumerate() {
            let tag = buckets::bucket_tag(&spec.sale_id, k as u32, n);
            given += self.rebuild_slot(spec, &tag, args).await?.0.total;
        }
        for tag in buckets::slot_tags(&spec.sale_id, n) {
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
        let control = buckets::hash_key(&spec.sale_id);
        self.command(
            self.inner
                .redis
                .hset::<i64, _, _>(control, ("pool", pool as i64)),
        )
        .await?;
        let stock = self.stock(&spec.sale_id).await?;
        // A bucketed sale announces stock that is back (its sold-out comes from Reserve).
        if stock.available > 0 {
            self.announce_restocked(&spec.sale_id, stock.available)
                .await;
        }
        Ok(stock)
    }

    /// Gives every slot of a bucketed sale a new generation: a transfer given before it (its
    /// units counted afresh by the rebuild) credits nothing after it.
    async fn new_generation(&self, sale_id: &str, buckets: u32) -> Result<(), Error> {
        let generation = uuid::Uuid::now_v7().to_string();
        for tag in buckets::slot_tags(sale_id, buckets) {
            let field = ("gen", generation.as_str());
            self.command(
                self.inner
                    .redis
                    .hset::<i64, _, _>(buckets::hash_key(&tag), field),
            )
            .await?;
        }
        Ok(())
    }

    /// The stock of a bucketed sale (the pool, every bucket and the units journalled between
    /// them) and of each of its buckets.
    pub(super) async fn bucket_stock(
        &self,
        sale_id: &str,
        layout: Buckets,
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
        let mut levels = Vec::with_capacity(layout.n as usize);
        for (i, tag) in buckets::slot_tags(sale_id, layout.n).enumerate() {
            if i > 0 {
                let level = self.slot_stock(sale_id, &tag).await?;
                sale.available += level.available;
                sale.held += level.held;
                sale.sold += level.sold;
                levels.push(level);
            }
            sale.available += self.in_transit(sale_id, layout, &tag).await?;
        }
        Ok((sale, levels))
    }

    /// Units given out of slot `tag` and not yet credited to their bucket.
    async fn in_transit(&self, sale_id: &str, layout: Buckets, tag: &str) -> Result<u64, Error> {
        let journal: HashMap<String, String> = self
            .command(self.inner.redis.hgetall(buckets::journal_key(tag)))
            .await?;
        let mut units = 0;
        for (transfer_id, entry) in journal {
            let journalled = buckets::parse_journal(&entry)?;
            let to = buckets::bucket_tag(sale_id, journalled.to, layout.n);
            let applied: bool = self
                .command(
                    self.inner
                        .redis
                        .sismember(buckets::applied_key(&to), transfer_id),
                )
                .await?;
            if !applied {
                units += journalled.units;
            }
        }
        Ok(units)
    }
}

/// The Rebuild arguments of each bucket, once the units are checked against the stock.
fn rebuild_args_per_bucket(
    spec: &SaleSpec,
    reservations: &[Reservation],
) -> Result<Vec<Vec<Value>>, Error> {
    let n = spec.stock_buckets;
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
    groups
        .iter()
        .map(|group| Rebuild::args(spec, -1, "ANY", group))
        .collect()
}

fn sold_out() -> Reserved {
    Reserved {
        outcome: Outcome::SoldOut,
        available: 0,
    }
}
