//! [`Inventory`]: the stock core over Redis. One Lua script per operation, loaded once and
//! called by SHA (reloaded automatically after a Redis restart).

use std::{collections::HashMap, sync::Arc, time::Duration};

use fred::{
    prelude::*,
    types::{Value, scripts::Script},
};
use secrecy::ExposeSecret;

use crate::{
    Error,
    model::{
        Audit, CommitOutcome, CommitResult, Expired, Loaded, MAX_COMMIT_BATCH, Outcome,
        ReleaseReason, Reservation, ReservationState, ReserveRequest, Reserved, SaleSpec,
        StockLevel, Transition,
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
    expire: Script,
    rebuild: Script,
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
            expire: s(include_str!("../lua/expire.lua")),
            rebuild: s(include_str!("../lua/rebuild.lua")),
        }
    }
}

/// The keys of one sale, all in the `{sale_id}` hash slot, in the order the scripts expect.
fn sale_keys(sale_id: &str) -> Vec<String> {
    ["sale", "users", "idem", "exp", "res"]
        .iter()
        .map(|part| format!("fs:{{{sale_id}}}:{part}"))
        .collect()
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
        let redis_config = Config::from_url(config.url.expose_secret())?;
        let timeout = config.command_timeout;
        let pool = Builder::from_config(redis_config)
            .with_connection_config(|c| {
                c.connection_timeout = timeout.max(Duration::from_millis(250));
                c.internal_command_timeout = timeout.max(Duration::from_millis(250));
                c.max_command_attempts = 2;
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                };
            })
            .with_performance_config(|p| p.default_command_timeout = timeout)
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .build_pool(config.pool_size)?;
        pool.connect();
        match tokio::time::timeout(Duration::from_secs(2), pool.wait_for_connect()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis not reachable yet; retrying in the background")
            }
            Err(_) => tracing::warn!("redis not reachable yet; retrying in the background"),
        }
        Ok(Self {
            inner: Arc::new(Inner {
                redis: pool,
                scripts: Scripts::new(),
                signals,
                timeout,
            }),
        })
    }

    async fn eval(
        &self,
        script: &Script,
        sale_id: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, Error> {
        let client = self.inner.redis.next();
        let call = script.evalsha_with_reload::<Value, _, _>(client, sale_keys(sale_id), args);
        let value = tokio::time::timeout(self.inner.timeout, call)
            .await
            .map_err(|_| Error::Timeout(self.inner.timeout))
            .and_then(|r| r.map_err(Error::from))
            .inspect_err(|_| crate::metrics::redis_error())?;
        match value {
            Value::Array(items) => Ok(items),
            other => Err(Error::Protocol(format!("expected an array, got {other:?}"))),
        }
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
        spec.validate()?;
        let args = vec![
            Value::from(spec.stock as i64),
            Value::from(i64::from(spec.per_user_limit)),
            Value::from(spec.starts_at_ms),
            Value::from(spec.ends_at_ms),
            Value::from(spec.reservation_hold.as_millis() as i64),
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
            "STOCK_FIXED" => {
                return Err(Error::StockFixed {
                    sale_id: spec.sale_id.clone(),
                    loaded: stock.total,
                    requested: spec.stock,
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
            },
            Err(_) => "error",
        };
        crate::metrics::reserve(outcome, started.elapsed().as_secs_f64());
        reserved
    }

    async fn reserve_inner(&self, request: &ReserveRequest) -> Result<Reserved, Error> {
        request.validate()?;
        let reservation_id = uuid::Uuid::now_v7().to_string();
        let args = vec![
            Value::from(request.user_id.as_str()),
            Value::from(i64::from(request.quantity)),
            Value::from(request.idempotency_key.as_str()),
            Value::from(reservation_id.as_str()),
        ];
        let reply = self
            .eval(&self.inner.scripts.reserve, &request.sale_id, args)
            .await?;
        let status = text(&reply, 0)?;
        let refused = |outcome| -> Result<Reserved, Error> {
            Ok(Reserved {
                outcome,
                available: uint(&reply, 1)?,
            })
        };
        match status.as_str() {
            "RESERVED" | "DUPLICATE" => {
                let (reservation, available) =
                    self.transition_reply(&request.sale_id, &reply).await?;
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
        let args = vec![Value::from(reservation_id), Value::from(hold_until_ms)];
        let reply = self.eval(&self.inner.scripts.commit, sale_id, args).await?;
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
        let mut args = Vec::with_capacity(items.len() * 2);
        for (reservation_id, hold_until_ms) in items {
            flashsale_proto::rules::text_id("reservation_id", reservation_id)?;
            args.push(Value::from(reservation_id.as_str()));
            args.push(Value::from(*hold_until_ms));
        }
        let reply = self
            .eval(&self.inner.scripts.commit_many, sale_id, args)
            .await?;
        if text(&reply, 0)? == "NO_SALE" {
            return Err(Error::SaleNotFound(sale_id.to_owned()));
        }
        self.signal(sale_id, int(&reply, 2)?, uint(&reply, 1)?, uint(&reply, 3)?)
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

    /// The reservation is paid: its units are sold. Refused once released.
    pub async fn confirm(&self, sale_id: &str, reservation_id: &str) -> Result<Transition, Error> {
        check_ids(sale_id, reservation_id)?;
        let args = vec![Value::from(reservation_id)];
        let reply = self
            .eval(&self.inner.scripts.confirm, sale_id, args)
            .await?;
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
        let args = vec![Value::from(reservation_id), Value::from(reason.as_str())];
        let reply = self
            .eval(&self.inner.scripts.release, sale_id, args)
            .await?;
        self.finish_transition("release", sale_id, reservation_id, &reply)
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
        let (reservation, _) = self.transition_reply(sale_id, reply).await?;
        match status.as_str() {
            "OK" | "REVIVED" => Ok(Transition {
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
        };
        let available = uint(reply, 9)?;
        self.signal(sale_id, int(reply, 10)?, available, uint(reply, 11)?)
            .await;
        Ok((reservation, available))
    }

    async fn signal(&self, sale_id: &str, signal: i64, available: u64, sequence: u64) {
        if signal < 0 {
            return;
        }
        if let Some(signals) = &self.inner.signals {
            signals
                .publish(sale_id, signal == 1, available, sequence)
                .await;
        }
    }

    /// Releases HELD reservations of `sale_id` whose hold has passed, at most `batch` of them.
    pub async fn expire_due(&self, sale_id: &str, batch: u32) -> Result<Expired, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        let reply = self
            .eval(
                &self.inner.scripts.expire,
                sale_id,
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
        self.signal(sale_id, int(&reply, 2)?, available, uint(&reply, 3)?)
            .await;
        Ok(expired)
    }

    /// Replaces the sale's state with `reservations` (COMMITTED or CONFIRMED, from Postgres),
    /// keeping HELD reservations Redis has that are not among them. Refused, changing nothing,
    /// if the units would exceed the stock.
    pub async fn rebuild(
        &self,
        spec: &SaleSpec,
        reservations: &[Reservation],
    ) -> Result<StockLevel, Error> {
        spec.validate()?;
        let mut args = vec![
            Value::from(spec.stock as i64),
            Value::from(i64::from(spec.per_user_limit)),
            Value::from(spec.starts_at_ms),
            Value::from(spec.ends_at_ms),
            Value::from(spec.reservation_hold.as_millis() as i64),
        ];
        for r in reservations {
            check_ids(&spec.sale_id, &r.reservation_id)?;
            flashsale_proto::rules::text_id("user_id", &r.user_id)?;
            if !matches!(
                r.state,
                ReservationState::Committed | ReservationState::Confirmed
            ) {
                return Err(Error::invalid(
                    "reservations",
                    format!(
                        "{} is {}; only COMMITTED and CONFIRMED are rebuilt",
                        r.reservation_id,
                        r.state.as_str()
                    ),
                ));
            }
            args.extend([
                Value::from(r.reservation_id.as_str()),
                Value::from(r.user_id.as_str()),
                Value::from(i64::from(r.quantity)),
                Value::from(r.state.as_str()),
                Value::from(r.created_at_ms),
                Value::from(r.expires_at_ms.unwrap_or(0)),
                Value::from(r.idempotency_key.as_str()),
            ]);
        }
        let reply = self
            .eval(&self.inner.scripts.rebuild, &spec.sale_id, args)
            .await?;
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
                Ok(stock)
            }
            "OVERSOLD" => Err(Error::Oversold {
                sale_id: spec.sale_id.clone(),
                units: stock.held + stock.sold,
                stock: stock.total,
            }),
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
    pub async fn stock(&self, sale_id: &str) -> Result<StockLevel, Error> {
        flashsale_proto::rules::sale_id(sale_id)?;
        let key = &sale_keys(sale_id)[0];
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
        let key = &sale_keys(sale_id)[4];
        let raw: Option<String> = self
            .command(self.inner.redis.hget(key, reservation_id))
            .await?;
        let raw = raw.ok_or_else(|| Error::ReservationNotFound {
            sale_id: sale_id.to_owned(),
            reservation_id: reservation_id.to_owned(),
        })?;
        parse_record(sale_id, reservation_id, &raw)
    }

    /// Reads every counter and record of a sale and adds them up (for tests, benchmarks and
    /// reconciliation; it reads the whole sale, so it is not for the hot path).
    pub async fn audit(&self, sale_id: &str) -> Result<Audit, Error> {
        let keys = sale_keys(sale_id);
        let stock = self.stock(sale_id).await?;
        let counted: HashMap<String, u64> =
            self.command(self.inner.redis.hgetall(&keys[1])).await?;
        let records: HashMap<String, String> =
            self.command(self.inner.redis.hgetall(&keys[4])).await?;
        let mut audit = Audit {
            stock,
            counted_by_user: counted,
            ..Audit::default()
        };
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
