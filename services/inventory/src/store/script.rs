//! The Lua scripts, the keys and arguments they take, and every reply they give parsed into a
//! typed value, here and nowhere else. The reply shapes are the ones `lua/common.lua` and each
//! script document; a reply of another shape is [`Error::Protocol`].

use fred::types::{Value, scripts::Script};

use crate::{
    Error,
    buckets::TransferScripts,
    model::{
        CommitOutcome, Outcome, ReleaseReason, Reservation, ReservationState, ReserveRequest,
        SaleSpec, StockLevel,
    },
};

/// Key of the set of every loaded sale (its own slot: read outside scripts only).
pub(super) const SALES_KEY: &str = "fs:sales";

const COMMON: &str = include_str!("../../lua/common.lua");

/// The scripts, each prefixed with the shared helpers.
#[derive(Debug)]
pub(super) struct Scripts {
    pub(super) load: Script,
    pub(super) reserve: Script,
    pub(super) commit: Script,
    pub(super) commit_many: Script,
    pub(super) confirm: Script,
    pub(super) release: Script,
    pub(super) queued: Script,
    pub(super) expire: Script,
    pub(super) rebuild: Script,
    pub(super) transfer: TransferScripts,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let s = |body: &str| Script::from_lua(format!("{COMMON}\n{body}"));
        Self {
            load: s(include_str!("../../lua/load.lua")),
            reserve: s(include_str!("../../lua/reserve.lua")),
            commit: s(include_str!("../../lua/commit.lua")),
            commit_many: s(include_str!("../../lua/commit_many.lua")),
            confirm: s(include_str!("../../lua/confirm.lua")),
            release: s(include_str!("../../lua/release.lua")),
            queued: s(include_str!("../../lua/queued.lua")),
            expire: s(include_str!("../../lua/expire.lua")),
            rebuild: s(include_str!("../../lua/rebuild.lua")),
            transfer: TransferScripts::new(),
        }
    }
}

/// The keys of one slot: a sale's (tag `sale_id`) or one stock bucket's (tag `sale_id#k.s`),
/// all in the `{tag}` hash slot.
#[derive(Debug, Clone)]
pub(super) struct SlotKeys {
    /// HASH: total, limit, starts, ends, hold, available, held, sold, sigseq.
    pub(super) sale: String,
    /// HASH: user id → units held or sold.
    pub(super) users: String,
    /// HASH: user id `\0` idempotency key → reservation id.
    pub(super) idem: String,
    /// ZSET: reservation id → expiry (ms) of HELD reservations.
    pub(super) exp: String,
    /// HASH: reservation id → the reservation's JSON record.
    pub(super) res: String,
}

impl SlotKeys {
    pub(super) fn of(tag: &str) -> Self {
        let key = |part: &str| format!("fs:{{{tag}}}:{part}");
        Self {
            sale: key("sale"),
            users: key("users"),
            idem: key("idem"),
            exp: key("exp"),
            res: key("res"),
        }
    }

    /// The keys in the order every script names them (`KEYS[1]` .. `KEYS[5]`).
    pub(super) fn for_script(self) -> Vec<String> {
        vec![self.sale, self.users, self.idem, self.exp, self.res]
    }
}

/// How a script changed the stock gateways are told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StockChange {
    /// Nothing to tell.
    None,
    /// The slot's available stock just reached zero.
    SoldOut,
    /// The slot's available stock just came back above zero.
    Restocked,
}

/// A stock change with the slot's available units and the signal's sequence number.
#[derive(Debug, Clone, Copy)]
pub(super) struct Signal {
    pub(super) change: StockChange,
    pub(super) available: u64,
    pub(super) sequence: u64,
}

/// A reply read field by field, each read naming what it expected.
struct Fields<'a>(&'a [Value]);

impl Fields<'_> {
    fn text(&self, i: usize) -> Result<String, Error> {
        self.0
            .get(i)
            .and_then(Value::as_string)
            .ok_or_else(|| Error::Protocol(format!("no text at {i}: {:?}", self.0)))
    }

    fn int(&self, i: usize) -> Result<i64, Error> {
        self.0
            .get(i)
            .and_then(Value::as_i64)
            .ok_or_else(|| Error::Protocol(format!("no integer at {i}: {:?}", self.0)))
    }

    fn uint(&self, i: usize) -> Result<u64, Error> {
        u64::try_from(self.int(i)?).map_err(|_| Error::Protocol(format!("negative at {i}")))
    }

    /// The script's signal code (−1 none, 1 sold out, 0 back in stock) at `i`, with the
    /// available units at `available` and the sequence at `i + 1`.
    fn signal(&self, available: usize, i: usize) -> Result<Signal, Error> {
        let change = match self.int(i)? {
            -1 => StockChange::None,
            1 => StockChange::SoldOut,
            0 => StockChange::Restocked,
            other => return Err(Error::Protocol(format!("signal {other}"))),
        };
        Ok(Signal {
            change,
            available: self.uint(available)?,
            sequence: self.uint(i + 1)?,
        })
    }

    fn stock(&self, from: usize) -> Result<StockLevel, Error> {
        Ok(StockLevel {
            total: self.uint(from)?,
            available: self.uint(from + 1)?,
            held: self.uint(from + 2)?,
            sold: self.uint(from + 3)?,
        })
    }
}

/// What Load (`load.lua`, or `control_load.lua` for a bucketed sale) did.
#[derive(Debug)]
pub(super) enum Load {
    /// The sale is new, or its settings were refreshed.
    Done { created: bool },
    /// A refresh of a sale Redis does not hold.
    Missing,
    /// The sale is loaded with this other stock.
    StockFixed { loaded: u64 },
    /// The sale is loaded with this other number of buckets.
    BucketsFixed { loaded: u32 },
}

impl Load {
    pub(super) fn parse(reply: &[Value]) -> Result<Self, Error> {
        let f = Fields(reply);
        Ok(match f.text(0)?.as_str() {
            "CREATED" => Self::Done { created: true },
            "UPDATED" => Self::Done { created: false },
            "MISSING" => Self::Missing,
            "STOCK_FIXED" => Self::StockFixed { loaded: f.uint(1)? },
            "BUCKETS_FIXED" => Self::BucketsFixed {
                loaded: u32::try_from(f.uint(1)?)
                    .map_err(|_| Error::Protocol("bucket count".into()))?,
            },
            other => return Err(Error::Protocol(format!("load: {other}"))),
        })
    }

    /// The stock figures `load.lua` gives after its status (a one-bucket sale).
    pub(super) fn stock(reply: &[Value]) -> Result<StockLevel, Error> {
        Fields(reply).stock(1)
    }
}

/// A reservation as the scripts return it (`reply` in `lua/common.lua`): the record, the
/// slot's available units and the stock signal.
#[derive(Debug)]
pub(super) struct Record {
    pub(super) reservation: Reservation,
    pub(super) signal: Signal,
}

impl Record {
    /// Fields 1..=12 of a reply: {status, rid, user, qty, state, created, expires, key,
    /// reason, available, signal, seq, queued}.
    fn parse(sale_id: &str, f: &Fields<'_>) -> Result<Self, Error> {
        let state = f.text(4)?;
        let expires = f.int(6)?;
        let reservation = Reservation {
            reservation_id: f.text(1)?,
            sale_id: sale_id.to_owned(),
            user_id: f.text(2)?,
            quantity: u32::try_from(f.int(3)?).map_err(|_| Error::Protocol("quantity".into()))?,
            state: ReservationState::parse(&state)
                .ok_or_else(|| Error::Protocol(format!("state {state}")))?,
            created_at_ms: f.int(5)?,
            expires_at_ms: (expires > 0).then_some(expires),
            idempotency_key: f.text(7)?,
            release_reason: ReleaseReason::parse(&f.text(8)?),
            queued: f.int(12)? == 1,
        };
        Ok(Self {
            reservation,
            signal: f.signal(9, 10)?,
        })
    }
}

/// What Reserve (`reserve.lua`) answered.
#[derive(Debug)]
pub(super) enum Reserve {
    /// A reservation: new, or the one the buyer's key made (`duplicate`).
    Reserved { record: Record, duplicate: bool },
    /// Refused, with the slot's available units.
    Refused { outcome: Outcome, available: u64 },
    /// The slot holds no sale.
    NotFound,
}

impl Reserve {
    pub(super) fn parse(sale_id: &str, reply: &[Value]) -> Result<Self, Error> {
        let f = Fields(reply);
        let status = f.text(0)?;
        let refused = |outcome| -> Result<Self, Error> {
            Ok(Self::Refused {
                outcome,
                available: f.uint(1)?,
            })
        };
        match status.as_str() {
            "RESERVED" | "DUPLICATE" => Ok(Self::Reserved {
                record: Record::parse(sale_id, &f)?,
                duplicate: status == "DUPLICATE",
            }),
            "SOLD_OUT" => refused(Outcome::SoldOut),
            "USER_LIMIT" => refused(Outcome::UserLimit),
            "NOT_ACTIVE" => refused(Outcome::NotActive),
            "INVALID" => refused(Outcome::QuantityOverLimit),
            "KEY_REUSED" => refused(Outcome::KeyReused),
            "NOT_FOUND" => Ok(Self::NotFound),
            other => Err(Error::Protocol(format!("reserve: {other}"))),
        }
    }

    /// A Reserve reply that hands the buyer a reservation (new or the one their key made): a
    /// write replicas must have before the answer.
    pub(super) fn holds_a_reservation(reply: &[Value]) -> bool {
        matches!(
            Fields(reply).text(0).as_deref(),
            Ok("RESERVED" | "DUPLICATE")
        )
    }

    /// True for a SOLD_OUT reply (a bucketed sale then refills the bucket).
    pub(super) fn is_sold_out(reply: &[Value]) -> bool {
        matches!(Fields(reply).text(0).as_deref(), Ok("SOLD_OUT"))
    }

    /// The arguments: user, quantity, key, the new reservation's id.
    pub(super) fn args(request: &ReserveRequest, reservation_id: &str) -> Vec<Value> {
        vec![
            Value::from(request.user_id.as_str()),
            Value::from(i64::from(request.quantity)),
            Value::from(request.idempotency_key.as_str()),
            Value::from(reservation_id),
        ]
    }
}

/// How a transition (commit, confirm, release, queued) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// It changed the reservation (`OK`, `REVIVED`, `RECLAIMED`).
    Changed,
    /// The reservation already was where the transition leads.
    Unchanged,
    /// It does not apply to the reservation's state.
    Refused,
}

/// What a transition script answered.
#[derive(Debug)]
pub(super) enum Transition {
    /// The slot holds no sale.
    NoSale,
    /// The sale holds no such reservation.
    NotFound,
    /// The reservation after the step.
    Done { step: Step, record: Record },
}

impl Transition {
    pub(super) fn parse(action: &str, sale_id: &str, reply: &[Value]) -> Result<Self, Error> {
        let f = Fields(reply);
        let step = match f.text(0)?.as_str() {
            "NO_SALE" => return Ok(Self::NoSale),
            "NOT_FOUND" => return Ok(Self::NotFound),
            "OK" | "REVIVED" | "RECLAIMED" => Step::Changed,
            "UNCHANGED" => Step::Unchanged,
            "REFUSED" => Step::Refused,
            other => return Err(Error::Protocol(format!("{action}: {other}"))),
        };
        Ok(Self::Done {
            step,
            record: Record::parse(sale_id, &f)?,
        })
    }
}

/// One reservation's result in a CommitMany reply.
#[derive(Debug)]
pub(super) struct Committed {
    pub(super) outcome: CommitOutcome,
    pub(super) state: Option<ReservationState>,
    pub(super) release_reason: Option<ReleaseReason>,
}

/// What CommitMany (`commit_many.lua`) answered: `None` when the slot holds no sale.
pub(super) fn commit_many(
    reply: &[Value],
    items: usize,
) -> Result<Option<(Signal, Vec<Committed>)>, Error> {
    let f = Fields(reply);
    if f.text(0)? == "NO_SALE" {
        return Ok(None);
    }
    let results = (0..items)
        .map(|i| {
            let at = 4 + i * 3;
            let outcome = match f.text(at)?.as_str() {
                "OK" => CommitOutcome::Committed,
                "UNCHANGED" => CommitOutcome::Unchanged,
                "REVIVED" => CommitOutcome::Revived,
                "REFUSED" => CommitOutcome::Refused,
                "NOT_FOUND" => CommitOutcome::NotFound,
                other => return Err(Error::Protocol(format!("commit_many: {other}"))),
            };
            Ok(Committed {
                outcome,
                state: ReservationState::parse(&f.text(at + 1)?),
                release_reason: ReleaseReason::parse(&f.text(at + 2)?),
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Some((f.signal(1, 2)?, results)))
}

/// What Expire (`expire.lua`) did in one slot.
#[derive(Debug)]
pub(super) struct Expiry {
    pub(super) released: Vec<String>,
    pub(super) signal: Signal,
    /// The sale has ended and holds no HELD reservation any more.
    pub(super) finished: bool,
}

impl Expiry {
    /// {released count, available, signal, seq, finished, released ids...}.
    pub(super) fn parse(reply: &[Value]) -> Result<Self, Error> {
        let f = Fields(reply);
        Ok(Self {
            released: (5..reply.len())
                .map(|i| f.text(i))
                .collect::<Result<_, _>>()?,
            signal: f.signal(1, 2)?,
            finished: f.int(4)? == 1,
        })
    }
}

/// What Rebuild (`rebuild.lua`) answered.
#[derive(Debug)]
pub(super) enum Rebuild {
    /// Rebuilt: the slot's stock and the sequence of its next signal.
    Done { stock: StockLevel, sequence: u64 },
    /// The reservations hold more units than the stock.
    Oversold { stock: StockLevel },
    /// Redis holds the sale where the caller saw it missing, or the other way round.
    Changed,
}

impl Rebuild {
    pub(super) fn parse(reply: &[Value]) -> Result<Self, Error> {
        let f = Fields(reply);
        Ok(match f.text(0)?.as_str() {
            "OK" => Self::Done {
                stock: f.stock(1)?,
                sequence: f.uint(5)?,
            },
            "OVERSOLD" => Self::Oversold { stock: f.stock(1)? },
            "CHANGED" => Self::Changed,
            other => return Err(Error::Protocol(format!("rebuild: {other}"))),
        })
    }

    /// The arguments (`total` −1: fit a bucket to its reservations; `seen`: see
    /// `rebuild.lua`), then nine per reservation.
    pub(super) fn args(
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
            super::check_ids(&spec.sale_id, &r.reservation_id)?;
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

/// What Give (`give.lua`) moved out of a slot.
#[derive(Debug)]
pub(super) struct Given {
    pub(super) units: u64,
    /// Entries left in the source's journal.
    pub(super) pending: u64,
    /// The source's generation, which the credit must match.
    pub(super) generation: String,
}

impl Given {
    pub(super) fn parse(reply: &[Value]) -> Result<Self, Error> {
        let f = Fields(reply);
        let units = f.uint(0)?;
        Ok(Self {
            units,
            pending: f.uint(1)?,
            generation: if units > 0 { f.text(2)? } else { String::new() },
        })
    }

    /// A Give that moved units: a write replicas must have.
    pub(super) fn moved(reply: &[Value]) -> bool {
        Fields(reply).int(0).is_ok_and(|n| n > 0)
    }
}

/// What Credit (`credit.lua`) did with a journalled transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Credit {
    /// The bucket holds no sale.
    NoSale,
    /// The transfer is from before a rebuild: dropped.
    Stale,
    /// Applied now, or already before.
    Applied,
}

impl Credit {
    pub(super) fn parse(reply: &[Value]) -> Result<Self, Error> {
        Ok(match Fields(reply).int(0)? {
            -1 => Self::NoSale,
            -2 => Self::Stale,
            _ => Self::Applied,
        })
    }

    /// A Credit applied now: a write replicas must have.
    pub(super) fn applied_now(reply: &[Value]) -> bool {
        Fields(reply).int(0).is_ok_and(|n| n == 1)
    }
}

/// A reservation's JSON record (`{u, q, s, c, e, k, r, p}`, see `lua/common.lua`).
pub(super) fn parse_record(
    sale_id: &str,
    reservation_id: &str,
    raw: &str,
) -> Result<Reservation, Error> {
    #[derive(serde::Deserialize)]
    struct Json {
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
    let rec: Json = serde_json::from_str(raw)
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
