//! `Reconcile --repair`, and what calls for it: the sale's end and Redis restarting empty.
//!
//! Mirrors the gateway's `Gateway::reconcile` (refused for a sale on sale that Redis holds),
//! `wait_for_drain`, `rebuild_until_stable`, `admit()` and `reservation_of`, and the
//! inventory's `rebuild.lua`. The repair reads the orders, rebuilds, and (for a sale off sale)
//! reads them again, each a separate step, so every other step of the system can run between.

use crate::{Action, Buyer, LIMIT, PurchaseModel, Rec, Record, Row, STOCK, State, Status, Why};

/// Which rebuild the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RepairRule {
    /// As the repair was first written: the rebuild is made from the live orders alone (closed
    /// ones and their keys are dropped), orders whose commit is pending are admitted oldest
    /// first even while Redis holds their reservations, `rebuild.lua` keeps only the HELD
    /// records it is not given, nothing checks that Redis still is as it was when the orders
    /// were read, and only the first reading waits for the stream to drain.
    Original,
    /// What the code does now: closed orders keep their keys (as released records), Redis's
    /// own records decide the orders whose commit is pending while it holds the sale,
    /// `rebuild.lua` keeps every record it is not given and refuses (REDIS_CHANGED) a reading
    /// taken while Redis was otherwise, and every reading follows a drain.
    Current,
}

/// Where the operator's repair is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Repair {
    /// Not started.
    Idle,
    /// Asked the inventory whether Redis holds the sale (`GetStock`); the drain and the
    /// reading of the orders come next.
    Seen {
        /// Redis held the sale.
        present: bool,
        /// Rebuilt until stable, else once.
        again: bool,
        /// The reading the last rebuild was made from (a reading equal to it ends the repair).
        previous: Option<Vec<Option<Row>>>,
    },
    /// The orders were read; the rebuild from them comes next. `again`: the sale is off sale,
    /// so the orders are read again after the rebuild, until two readings agree.
    Read {
        /// What was read.
        rows: Vec<Option<Row>>,
        /// Rebuilt until stable (`rebuild_until_stable`), else once.
        again: bool,
        /// Redis held the sale when they were read (the rebuild's `sale_present`).
        present: bool,
    },
    /// Rebuilt from these orders; reading them again comes next.
    Rebuilt {
        /// What the rebuild was made from.
        rows: Vec<Option<Row>>,
    },
    /// Finished (or refused by `rebuild.lua` as OVERSOLD).
    Done,
}

/// The sale's end, Redis's loss (a fault) and the repair's steps, when they may happen.
pub(crate) fn actions(rule: RepairRule, s: &State, fault: bool, actions: &mut Vec<Action>) {
    if s.on_sale {
        actions.push(Action::End);
    }
    if fault && s.present {
        actions.push(Action::LoseRedis);
    }
    // Every reading waits for the sale's queued events to become orders (`wait_for_drain`);
    // the original repair waited only before its first.
    let drained = !s.stream.iter().any(|e| *e);
    let drained_again = drained || rule == RepairRule::Original;
    match s.repair {
        // Refused (SALE_ACTIVE) for a sale on sale that Redis holds.
        Repair::Idle if !s.present || !s.on_sale => actions.push(Action::RepairStart),
        Repair::Seen { .. } if drained => actions.push(Action::ReadOrders),
        Repair::Read { .. } => actions.push(Action::Rebuild),
        Repair::Rebuilt { .. } if drained_again => actions.push(Action::Recheck),
        _ => {}
    }
}

/// Redis restarts empty. The gateway keeps its copy of the sale's key fingerprints.
pub(crate) fn lose_redis(s: &mut State) {
    s.cached_keys = [s.idem[0].is_some(), s.idem[1].is_some()];
    s.present = false;
    s.available = 0;
    s.users = [0; 2];
    s.idem = [None; 2];
    s.records.iter_mut().for_each(|r| *r = None);
}

/// `reconcile`: `GetStock` says whether Redis holds the sale. A lost sale on sale is rebuilt
/// once; one off sale until no order changed under the rebuild.
pub(crate) fn start(s: &mut State) {
    s.repair = Repair::Seen {
        present: s.present,
        again: !s.on_sale,
        previous: None,
    };
}

/// The drain done, the orders read (`sale_orders`). Redis held the sale of a sale on sale:
/// refused (SALE_ACTIVE). The same orders as the last rebuild's: done.
pub(crate) fn read_orders(rule: RepairRule, s: &mut State) {
    let Repair::Seen {
        present,
        again,
        previous,
    } = s.repair.clone()
    else {
        unreachable!("only offered once the presence is known")
    };
    let rows = reading(rule, &s.rows);
    let refused = present && s.on_sale && rule == RepairRule::Current;
    s.repair = if refused || previous.as_ref() == Some(&rows) {
        Repair::Done
    } else {
        Repair::Read {
            rows,
            again,
            present,
        }
    };
}

/// What the repair reads of the orders: the live ones (`live_orders`), and under the current
/// rule the closed ones too (their keys must survive the rebuild).
fn reading(rule: RepairRule, rows: &[Option<Row>]) -> Vec<Option<Row>> {
    rows.iter()
        .map(|row| {
            row.filter(|r| {
                rule == RepairRule::Current || matches!(r.status, Status::Pending | Status::Paid)
            })
        })
        .collect()
}

/// `rebuild_from`: `admit()` then `rebuild.lua`.
pub(crate) fn rebuild(m: &PurchaseModel, rule: RepairRule, s: &mut State) {
    let Repair::Read {
        rows,
        again,
        present,
    } = s.repair.clone()
    else {
        unreachable!("only offered after a reading")
    };
    // Redis lost the sale, or got it back, since the reading: `rebuild.lua` refuses
    // (REDIS_CHANGED) and the repair starts over, from the drain.
    if rule == RepairRule::Current && present != s.present {
        s.repair = Repair::Seen {
            present: s.present,
            again,
            previous: None,
        };
        return;
    }
    let given = admit(m, rule, &rows, present, &s.created);
    apply(rule, s, &given);
    s.repair = if again {
        Repair::Rebuilt { rows }
    } else {
        Repair::Done
    };
}

/// After a rebuild of a sale off sale: the current repair asks for the presence, drains and
/// reads again (then the same orders → done, else rebuild from the new reading); the original
/// one read the orders at once.
pub(crate) fn recheck(rule: RepairRule, s: &mut State) {
    let Repair::Rebuilt { rows } = s.repair.clone() else {
        unreachable!("only offered after a rebuild")
    };
    if rule == RepairRule::Current {
        s.repair = Repair::Seen {
            present: s.present,
            again: true,
            previous: Some(rows),
        };
        return;
    }
    let now = reading(rule, &s.rows);
    s.repair = if now == rows {
        Repair::Done
    } else {
        Repair::Read {
            rows: now,
            again: true,
            present: s.present,
        }
    };
}

/// `admit()` and `reservation_of`: the records the rebuild is given, by reservation id.
/// Orders whose commit went through come first, all of them; those whose commit is pending
/// are then taken oldest first while the stock and the limit allow (the original rule always;
/// the current one only when Redis lost the sale: otherwise its own records decide them).
fn admit(
    m: &PurchaseModel,
    rule: RepairRule,
    rows: &[Option<Row>],
    present: bool,
    created: &[u8],
) -> Vec<(u8, Record)> {
    let buyer_of = |rid: u8| m.requests[rid as usize];
    let mut given = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let Some(row) = row else { continue };
        let rid = i as u8;
        let state = match row.status {
            Status::Pending if row.needs_commit => continue,
            Status::Pending => Rec::Committed,
            Status::Paid => Rec::Confirmed,
            Status::Expired => Rec::Released(Why::PaymentExpired),
            Status::Lost => Rec::Released(Why::Expired),
        };
        let queued = row.status != Status::Lost;
        given.push((rid, record(buyer_of(rid), state, queued)));
    }
    if rule == RepairRule::Current && present {
        return given;
    }
    let mut units = given.iter().filter(|(_, r)| r.holds()).count() as u8;
    let mut per_user = [0u8; 2];
    for (_, r) in given.iter().filter(|(_, r)| r.holds()) {
        per_user[r.buyer.index()] += 1;
    }
    for &rid in created {
        let undecided =
            rows[rid as usize].is_some_and(|r| r.status == Status::Pending && r.needs_commit);
        let buyer = buyer_of(rid);
        if undecided && units < STOCK && per_user[buyer.index()] < LIMIT {
            units += 1;
            per_user[buyer.index()] += 1;
            given.push((rid, record(buyer, Rec::Committed, true)));
        }
    }
    given
}

fn record(buyer: Buyer, state: Rec, queued: bool) -> Record {
    Record {
        buyer,
        state,
        queued,
    }
}

/// `rebuild.lua`: the given records, plus the ones Redis has that it was not given (HELD ones
/// under the original rule, every one under the current rule); OVERSOLD changes nothing.
fn apply(rule: RepairRule, s: &mut State, given: &[(u8, Record)]) {
    let mut records: Vec<Option<Record>> = s
        .records
        .iter()
        .map(|r| r.filter(|r| rule == RepairRule::Current || r.state == Rec::Held))
        .collect();
    for (rid, r) in given {
        records[*rid as usize] = Some(*r);
    }
    let holding = records.iter().flatten().filter(|r| r.holds()).count() as u8;
    if holding > STOCK {
        return;
    }
    s.idem = [None; 2];
    s.users = [0; 2];
    for &rid in &s.created {
        if let Some(r) = records[rid as usize] {
            s.idem[r.buyer.index()] = Some(rid);
            if r.holds() {
                s.users[r.buyer.index()] += 1;
            }
        }
    }
    s.records = records;
    s.available = STOCK - holding;
    s.present = true;
    // The rebuild announces its stock (a signal the gateways follow).
    s.sold_out_memory = s.available == 0;
}
