//! A model of the purchase protocol, checked exhaustively with [stateright].
//!
//! It owns no production code: it restates, step by step, what the gateway, the inventory's Lua
//! scripts, JetStream, the order consumer and the order lifecycle do with one unit of stock,
//! and lets the checker try every interleaving of a few purchases with every fault the
//! protocol must survive. Each [`Action`] names the function or script it mirrors, so a change
//! to one of them shows here.
//!
//! What may go wrong, at any step:
//! - **loss**: a reply is lost after the server acted (Reserve, MarkQueued), a publish is
//!   stored but its ack lost, a compensation never arrives;
//! - **duplication**: a buyer retries with the same idempotency key while the first attempt is
//!   still running, or after it answered; JetStream redelivers until acked;
//! - **reordering**: a publish that timed out reaches the stream later (or never), after the
//!   retry, after the compensation; the consumer inserts, acks and commits as separate steps,
//!   interleaved with everything else;
//! - **crashes**: a gateway dies at any step of a purchase (no answer, no compensation); the
//!   consumer dies between any two of its steps (its work is redone from the stream and the
//!   rows: crashing is "not yet doing the next step");
//! - **time**: a hold may pass at any moment (an outage longer than the hold), a payment
//!   deadline too, and the gateway's sold-out memory may be fresh or forgotten.
//!
//! [`Protocol::Original`] is the protocol as it was before the partial-failure round (a retry
//! republished and compensated, holds expired whatever the stream held, the sold-out memory
//! answered before the key was looked up); [`Protocol::Current`] is the one the code runs. The
//! checker finds the review's finding 1 in the first and nothing in the second (the tests say
//! how many states that takes).
//!
//! With [`PurchaseModel::with_repair`] the sale also ends, Redis may restart empty (losing the
//! sale) and an operator runs `Reconcile --repair` (see [`repair`]): the rebuild races every
//! other step. A fault budget bounds how many faults one run may have, so the checker shows
//! what a single fault can do and what a double fault still can (RELIABILITY.md).
//!
//! Not modelled: stock buckets (their transfers have their own argument in the inventory's
//! crate docs), more than one unit or more than two buyers (every property here concerns one
//! unit and the buyers competing for it).

use stateright::{Model, Property};

mod next;
pub mod repair;
mod steps;

use next::is_fault;
use repair::{Repair, RepairRule};

/// Units for sale.
pub const STOCK: u8 = 1;
/// Units one buyer may hold and own together.
pub const LIMIT: u8 = 1;

/// Which protocol the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Before the partial-failure round.
    Original,
    /// What the code does now.
    Current,
}

/// The buyers; each has one idempotency key, shared by all its requests (retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Buyer {
    /// Buys first and retries.
    A,
    /// Competes for the unit.
    B,
}

impl Buyer {
    fn index(self) -> usize {
        self as usize
    }
}

/// Why a reservation was released (`release.lua`'s reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Why {
    /// RESERVATION_EXPIRED (the sweeper).
    Expired,
    /// PUBLISH_FAILED (the gateway's compensation).
    PublishFailed,
    /// PAYMENT_EXPIRED (the order lifecycle).
    PaymentExpired,
}

/// A reservation record's state (`fs:{sid}:res`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rec {
    /// HELD.
    Held,
    /// COMMITTED: its order is written.
    Committed,
    /// CONFIRMED: paid.
    Confirmed,
    /// RELEASED: its unit went back to stock.
    Released(Why),
}

/// A reservation record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Record {
    /// Whose.
    pub buyer: Buyer,
    /// Its state.
    pub state: Rec,
    /// `p = 1`: the stream holds its order event (`queued.lua`).
    pub queued: bool,
}

impl Row {
    /// The order owns a unit in Postgres's view: committed and awaiting payment, or paid.
    fn owns(&self) -> bool {
        match self.status {
            Status::Pending => !self.needs_commit,
            Status::Paid => true,
            Status::Expired | Status::Lost => false,
        }
    }
}

impl Record {
    fn holds(&self) -> bool {
        matches!(self.state, Rec::Held | Rec::Committed | Rec::Confirmed)
    }

    /// Released by its hold or a compensation: the commit may take it again (`commit_one`).
    fn revivable(&self) -> bool {
        matches!(self.state, Rec::Released(Why::Expired | Why::PublishFailed))
    }
}

/// An order row's status in Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// PENDING_PAYMENT.
    Pending,
    /// PAID.
    Paid,
    /// EXPIRED (PAYMENT_DEADLINE).
    Expired,
    /// EXPIRED (RESERVATION_LOST): its unit was gone when it was written.
    Lost,
}

/// An order row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Row {
    /// Its status.
    pub status: Status,
    /// `inventory_pending = COMMIT`: the hold is not committed yet.
    pub needs_commit: bool,
    /// `inventory_pending = CONFIRM`: paid, Confirm not done yet.
    pub needs_confirm: bool,
    /// `inventory_pending = RELEASE`: expired, its release waits for Redis to hold the sale.
    pub needs_release: bool,
}

/// Where one purchase request is in the gateway (`Gateway::reserve_and_publish`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pc {
    /// Not arrived yet.
    Waiting,
    /// Reserved; publishing the event (`dup`: the reservation is the key's earlier one).
    Publishing {
        /// The reservation.
        rid: u8,
        /// A replay of the key.
        dup: bool,
    },
    /// The publish failed; the compensating Release is on its way.
    Compensating {
        /// The reservation.
        rid: u8,
    },
    /// Published; MarkQueued is on its way.
    Marking {
        /// The reservation.
        rid: u8,
    },
    /// Answered, or died.
    Done,
}

/// What a buyer was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Accepted, with this order (= reservation) id.
    Accepted(u8),
    /// SOLD_OUT.
    SoldOut,
    /// USER_LIMIT.
    UserLimit,
    /// UNAVAILABLE: the buyer cannot know.
    Unavailable,
    /// PURCHASE_FAILED: the key's reservation was released before its order was queued.
    PurchaseFailed,
    /// ALREADY_EXISTS with this order id (the original protocol's answer to a closed key).
    AlreadyExists(u8),
    /// FAILED_PRECONDITION SALE_NOT_ACTIVE: the sale ended.
    NotActive,
}

/// What a publish did (`stream::publish_order`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Publish {
    /// Stored and acknowledged.
    Acked,
    /// Stored; the ack was lost (the gateway sees a failure).
    AckLost,
    /// Timed out on the way: it may reach the stream later, or never.
    InFlight,
}

/// One step of the system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `Gateway::purchase`: the sold-out memory (`sold_out_for`), then `reserve.lua`, then
    /// `replay()` for a repeated key. `reply_lost`: the script ran, its reply was lost.
    Arrive {
        /// The request.
        req: u8,
        /// The Reserve reply never reached the gateway.
        reply_lost: bool,
    },
    /// `stream::publish_order`.
    Publish {
        /// The request.
        req: u8,
        /// What happened to it.
        outcome: Publish,
    },
    /// A publish that timed out reaches JetStream (dedupe by Nats-Msg-Id).
    Land {
        /// The reservation it carries.
        rid: u8,
    },
    /// ... or is dropped for good.
    Drop {
        /// The reservation it carries.
        rid: u8,
    },
    /// `Gateway::compensate`: `release.lua` with PUBLISH_FAILED, then UNAVAILABLE.
    Compensate {
        /// The request.
        req: u8,
    },
    /// `Gateway::mark_queued`: `queued.lua`, then the answer. `reply_lost`: it ran, the gateway
    /// did not hear.
    Mark {
        /// The request.
        req: u8,
        /// The reply never reached the gateway.
        reply_lost: bool,
    },
    /// The gateway dies mid-purchase: no answer, nothing more sent.
    Crash {
        /// The request.
        req: u8,
    },
    /// The gateway's sold-out memory lapses (`gateway.sold_out_ttl`).
    Forget,
    /// `expire.lua`, from the sweeper: the hold passed.
    Expire {
        /// The reservation.
        rid: u8,
    },
    /// The consumer's `INSERT … ON CONFLICT DO NOTHING` (`consumer::write`).
    Insert {
        /// The event's reservation.
        rid: u8,
    },
    /// The consumer's ack: JetStream (work queue) drops the event.
    Ack {
        /// The event's reservation.
        rid: u8,
    },
    /// `commit_many.lua` (`commit_one`) for a row whose commit is pending, by the consumer or
    /// the lifecycle's retry; refused → `OrderStore::mark_lost`.
    Commit {
        /// The order.
        rid: u8,
    },
    /// `OrderStore::pay`: PENDING → PAID once committed.
    Pay {
        /// The order.
        rid: u8,
    },
    /// `confirm.lua` for a paid order.
    Confirm {
        /// The order.
        rid: u8,
    },
    /// `OrderStore::expire_due` then `release.lua` with PAYMENT_EXPIRED (the release waits
    /// while Redis lacks the sale).
    ExpirePayment {
        /// The order.
        rid: u8,
    },
    /// The pipeline's pending RELEASE (`holds::apply`), once Redis holds the sale again.
    Release {
        /// The order.
        rid: u8,
    },
    /// The sale's end passes (`reserve.lua` answers NOT_ACTIVE to a new key).
    End,
    /// Redis restarts empty: every key of the sale is gone (`NO_SALE` to every script).
    LoseRedis,
    /// `Gateway::reconcile` with `repair`: `GetStock`, refused for a sale on sale that Redis
    /// holds.
    RepairStart,
    /// `wait_for_drain`, then the sale's orders read from Postgres.
    ReadOrders,
    /// `rebuild_from`: `admit()` then `rebuild.lua` from the snapshot.
    Rebuild,
    /// `rebuild_until_stable`: reads the orders again; the same → done, else rebuild again.
    Recheck,
}

/// The whole system: Redis, the stream, Postgres, the gateway's requests, the answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct State {
    /// `available`.
    pub available: u8,
    /// `fs:{sid}:users`: units per buyer.
    pub users: [u8; 2],
    /// `fs:{sid}:idem`: the reservation each buyer's key made.
    pub idem: [Option<u8>; 2],
    /// `fs:{sid}:res`, by reservation id (= the request that made it).
    pub records: Vec<Option<Record>>,
    /// Events in the stream, by reservation id.
    pub stream: Vec<bool>,
    /// Publishes still on the wire, by reservation id.
    pub wire: Vec<bool>,
    /// Order rows, by reservation id.
    pub rows: Vec<Option<Row>>,
    /// Each request's step.
    pub pcs: Vec<Pc>,
    /// The gateway's sold-out memory.
    pub sold_out_memory: bool,
    /// Every answer, in the order given.
    pub answers: Vec<(u8, Answer)>,
    /// Redis holds the sale (false once it restarted empty, until a rebuild).
    pub present: bool,
    /// The sale is on sale (its end has not passed).
    pub on_sale: bool,
    /// Faults so far (counted only under a fault budget).
    pub faults: u8,
    /// Reservation ids in the order they were made (`created_at`; kept only with repairs, the
    /// one step that reads it).
    pub created: Vec<u8>,
    /// The keys in the gateway's fingerprint set when Redis was lost (it keeps its copy).
    pub cached_keys: [bool; 2],
    /// Where the operator's repair is.
    pub repair: Repair,
}

/// The model: which protocol, which buyers send the requests, which faults are on.
#[derive(Debug, Clone)]
pub struct PurchaseModel {
    /// The protocol.
    pub protocol: Protocol,
    /// Request `i` is sent by `requests[i]` with that buyer's key.
    pub requests: Vec<Buyer>,
    /// Holds may pass (outages longer than the hold).
    pub expiry: bool,
    /// At most this many faults in one run (`None`: any number).
    pub max_faults: Option<u8>,
    /// The sale ends, Redis may lose it, and an operator repairs it.
    pub repair: Option<RepairRule>,
}

impl PurchaseModel {
    /// A buyer who buys and retries, and a rival.
    pub fn new(protocol: Protocol, expiry: bool) -> Self {
        Self {
            protocol,
            requests: vec![Buyer::A, Buyer::A, Buyer::B],
            expiry,
            max_faults: None,
            repair: None,
        }
    }

    /// The current protocol with the sale's end, Redis's loss and `Reconcile --repair`, under
    /// at most `max_faults` faults (Redis's loss is one).
    pub fn with_repair(rule: RepairRule, max_faults: u8) -> Self {
        Self {
            max_faults: Some(max_faults),
            repair: Some(rule),
            ..Self::new(Protocol::Current, true)
        }
    }

    fn rule(&self) -> RepairRule {
        self.repair
            .expect("repair steps are offered only with a rule")
    }

    /// Whether one more fault may happen.
    fn may_fault(&self, s: &State) -> bool {
        self.max_faults.is_none_or(|most| s.faults < most)
    }

    fn current(&self) -> bool {
        self.protocol == Protocol::Current
    }
}

impl State {
    fn answer(&mut self, req: u8, answer: Answer) {
        self.pcs[req as usize] = Pc::Done;
        self.answers.push((req, answer));
    }

    fn record(&mut self, rid: u8) -> &mut Record {
        self.records[rid as usize]
            .as_mut()
            .expect("a reservation the model made")
    }

    /// `release_units`: the record's units back to stock and to its buyer's allowance.
    fn release_units(&mut self, rid: u8, why: Why) {
        let buyer = self.record(rid).buyer;
        self.available += 1;
        self.users[buyer.index()] -= 1;
        self.record(rid).state = Rec::Released(why);
    }

    /// `take_units`: the buyer's limit and the stock allow one more unit.
    fn take_units(&mut self, buyer: Buyer) -> bool {
        if self.users[buyer.index()] >= LIMIT || self.available == 0 {
            return false;
        }
        self.available -= 1;
        self.users[buyer.index()] += 1;
        true
    }

    /// The record, if Redis has it.
    fn find(&self, rid: u8) -> Option<Record> {
        self.records[rid as usize]
    }

    /// Whether the gateway sees a reservation for this buyer's key: Redis's `idem` (the
    /// fingerprint set), or the gateway's copy while Redis lacks the sale.
    fn key_used(&self, buyer: Buyer) -> bool {
        if self.present {
            self.idem[buyer.index()].is_some()
        } else {
            self.cached_keys[buyer.index()]
        }
    }

    fn holding(&self) -> u8 {
        self.records.iter().flatten().filter(|r| r.holds()).count() as u8
    }

    fn quiet(&self) -> bool {
        self.pcs.iter().all(|pc| matches!(pc, Pc::Done))
            && !self.stream.iter().any(|e| *e)
            && !self.wire.iter().any(|e| *e)
            && self.rows.iter().flatten().all(|r| !r.needs_commit)
    }
}

impl Model for PurchaseModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let n = self.requests.len();
        vec![State {
            available: STOCK,
            users: [0; 2],
            idem: [None; 2],
            records: vec![None; n],
            stream: vec![false; n],
            wire: vec![false; n],
            rows: vec![None; n],
            pcs: vec![Pc::Waiting; n],
            sold_out_memory: false,
            answers: Vec::new(),
            present: true,
            on_sale: true,
            faults: 0,
            created: Vec::new(),
            cached_keys: [false; 2],
            repair: Repair::Idle,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let fault = self.may_fault(s);
        for (i, pc) in s.pcs.iter().enumerate() {
            self.gateway_actions(i as u8, *pc, fault, actions);
        }
        if s.sold_out_memory {
            actions.push(Action::Forget);
        }
        for rid in 0..s.records.len() as u8 {
            self.order_actions(s, rid, fault, actions);
        }
        if let Some(rule) = self.repair {
            repair::actions(rule, s, fault, actions);
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        if self.max_faults.is_some() && is_fault(action) {
            s.faults += 1;
        }
        match action {
            Action::Arrive { req, reply_lost } => self.arrive(&mut s, req, reply_lost),
            Action::Publish { req, outcome } => self.publish(&mut s, req, outcome),
            Action::Land { rid } => {
                s.wire[rid as usize] = false;
                // JetStream drops a copy of an event it holds (Nats-Msg-Id); a copy of one the
                // consumer already acked lands again (outside the window, or not: the consumer's
                // ON CONFLICT DO NOTHING makes it harmless).
                s.stream[rid as usize] = true;
            }
            Action::Drop { rid } => s.wire[rid as usize] = false,
            Action::Compensate { req } => self.compensate(&mut s, req),
            Action::Mark { req, reply_lost } => self.mark(&mut s, req, reply_lost),
            Action::Crash { req } => s.pcs[req as usize] = Pc::Done,
            Action::Forget => s.sold_out_memory = false,
            Action::Expire { rid } => self.expire(&mut s, rid),
            Action::Insert { rid } => {
                s.rows[rid as usize] = Some(Row {
                    status: Status::Pending,
                    needs_commit: true,
                    needs_confirm: false,
                    needs_release: false,
                });
            }
            Action::Ack { rid } => s.stream[rid as usize] = false,
            Action::Commit { rid } => self.commit(&mut s, rid),
            Action::Pay { rid } => {
                let row = s.rows[rid as usize].as_mut().expect("written");
                row.status = Status::Paid;
                row.needs_confirm = true;
            }
            Action::Confirm { rid } => self.confirm(&mut s, rid),
            Action::ExpirePayment { rid } => self.expire_payment(&mut s, rid),
            Action::Release { rid } => self.release(&mut s, rid),
            Action::End => s.on_sale = false,
            Action::LoseRedis => repair::lose_redis(&mut s),
            Action::RepairStart => repair::start(&mut s),
            Action::ReadOrders => repair::read_orders(self.rule(), &mut s),
            Action::Rebuild => repair::rebuild(self, self.rule(), &mut s),
            Action::Recheck => repair::recheck(self.rule(), &mut s),
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no oversell", |_, s: &State| {
                let redis =
                    !s.present || (s.holding() <= STOCK && s.available + s.holding() == STOCK);
                let owning = s.rows.iter().flatten().filter(|r| r.owns()).count() as u8;
                redis && owning <= STOCK
            }),
            Property::always("an accepted purchase keeps its unit", |_, s: &State| {
                accepted(s).all(|rid| keeps_unit(s, rid))
            }),
            Property::always("an accepted purchase becomes its order", |_, s: &State| {
                !s.quiet() || accepted(s).all(|rid| s.rows[rid as usize].is_some())
            }),
            Property::always("a key keeps its answer", |m: &PurchaseModel, s: &State| {
                keys_agree(m, s)
            }),
            Property::always("per-user limit", |_, s: &State| {
                !s.present
                    || [Buyer::A, Buyer::B].iter().all(|b| {
                        let held = s
                            .records
                            .iter()
                            .flatten()
                            .filter(|r| r.buyer == *b && r.holds())
                            .count() as u8;
                        held <= LIMIT && s.users[b.index()] == held
                    })
            }),
            Property::always("a paid order owns its unit", |_, s: &State| {
                !s.present
                    || s.rows.iter().enumerate().all(|(i, row)| {
                        row.is_none_or(|r| r.status != Status::Paid)
                            || s.records[i].is_some_and(|rec| rec.holds())
                    })
            }),
            Property::sometimes("a purchase is accepted and paid", |_, s: &State| {
                s.rows.iter().flatten().any(|r| r.status == Status::Paid) && accepted(s).count() > 0
            }),
            Property::sometimes(
                "a retry gets the original answer",
                |m: &PurchaseModel, s: &State| {
                    let accepted_a = s
                        .answers
                        .iter()
                        .filter(|(req, a)| {
                            m.requests[*req as usize] == Buyer::A
                                && matches!(a, Answer::Accepted(_))
                        })
                        .count();
                    accepted_a >= 2
                },
            ),
        ]
    }
}

/// An accepted purchase's unit is not taken from it: its order is not lost, and its record (if
/// Redis has one) was not released by an expiry or a compensation. Redis may lack the record
/// while it lacks the sale, or once the order expired and the rebuild left it out.
fn keeps_unit(s: &State, rid: u8) -> bool {
    let row = s.rows[rid as usize];
    if row.is_some_and(|r| r.status == Status::Lost) {
        return false;
    }
    match s.find(rid) {
        Some(record) => !matches!(
            record.state,
            Rec::Released(Why::Expired | Why::PublishFailed)
        ),
        None => !s.present || row.is_some_and(|r| r.status == Status::Expired),
    }
}

/// The reservation ids buyers were told were accepted.
fn accepted(s: &State) -> impl Iterator<Item = u8> + '_ {
    s.answers.iter().filter_map(|(_, a)| match a {
        Answer::Accepted(rid) => Some(*rid),
        _ => None,
    })
}

/// After a key's first accepted answer, every answer to it is the same order or UNAVAILABLE.
fn keys_agree(m: &PurchaseModel, s: &State) -> bool {
    let mut first: [Option<u8>; 2] = [None; 2];
    s.answers.iter().all(|(req, answer)| {
        let buyer = m.requests[*req as usize].index();
        match (first[buyer], answer) {
            (None, Answer::Accepted(rid)) => {
                first[buyer] = Some(*rid);
                true
            }
            (None, _) => true,
            (Some(rid), Answer::Accepted(other) | Answer::AlreadyExists(other)) => rid == *other,
            (Some(_), Answer::Unavailable) => true,
            (Some(_), _) => false,
        }
    })
}
