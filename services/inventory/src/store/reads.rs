//! What the inventory reads without changing anything: the sales it holds, one reservation,
//! the fingerprints of a sale's idempotency keys, and the audit of a whole sale.

use std::collections::HashMap;

use fred::{
    prelude::*,
    types::{Value, scripts::Script},
};

use super::{
    Inventory, check_ids,
    script::{SALES_KEY, SlotKeys, parse_record},
};
use crate::{
    Error, buckets,
    model::{Audit, MAX_FINGERPRINTS, Reservation, ReservationState, key_fingerprint},
};

impl Inventory {
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

    /// Reads one reservation.
    pub async fn reservation(
        &self,
        sale_id: &str,
        reservation_id: &str,
    ) -> Result<Reservation, Error> {
        check_ids(sale_id, reservation_id)?;
        let tag = self.reservation_tag(sale_id, reservation_id).await?;
        let raw: Option<String> = self
            .command(
                self.inner
                    .redis
                    .hget(SlotKeys::of(&tag).res, reservation_id),
            )
            .await?;
        let raw = raw.ok_or_else(|| Error::ReservationNotFound {
            sale_id: sale_id.to_owned(),
            reservation_id: reservation_id.to_owned(),
        })?;
        parse_record(sale_id, reservation_id, &raw)
    }

    /// The fingerprints ([`key_fingerprint`]) of every buyer's key that made a reservation in
    /// the sale; `None` when there are more than `limit`. A sale Redis does not hold is
    /// [`Error::SaleNotFound`].
    pub async fn key_fingerprints(
        &self,
        sale_id: &str,
        limit: u32,
    ) -> Result<Option<Vec<u64>>, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        if !(1..=MAX_FINGERPRINTS).contains(&limit) {
            return Err(Error::invalid(
                "limit",
                format!("{limit} is outside 1..={MAX_FINGERPRINTS}"),
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
            let idem = SlotKeys::of(&tag).idem;
            let count: u64 = self.command(self.inner.redis.hlen(&idem)).await?;
            if fingerprints.len() as u64 + count > u64::from(limit) {
                return Ok(None);
            }
            let keys: Vec<String> = self.command(self.inner.redis.hkeys(&idem)).await?;
            fingerprints.extend(keys.iter().filter_map(|k| {
                let (user, key) = k.split_once('\0')?;
                Some(key_fingerprint(user, key))
            }));
        }
        Ok(Some(fingerprints))
    }

    /// Reads every counter and record of a sale and adds them up (for tests, benchmarks and
    /// reconciliation; it reads the whole sale, so it is not for the hot path).
    /// A bucketed sale's buckets are added up together.
    pub async fn audit(&self, sale_id: &str) -> Result<Audit, Error> {
        let stock = self.stock(sale_id).await?;
        let mut audit = Audit {
            stock,
            ..Audit::default()
        };
        let mut records: HashMap<String, String> = HashMap::new();
        for tag in self.tags(sale_id).await? {
            let keys = SlotKeys::of(&tag);
            let counted: HashMap<String, u64> =
                self.command(self.inner.redis.hgetall(&keys.users)).await?;
            for (user, units) in counted {
                *audit.counted_by_user.entry(user).or_default() += units;
            }
            let slot: HashMap<String, String> =
                self.command(self.inner.redis.hgetall(&keys.res)).await?;
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
