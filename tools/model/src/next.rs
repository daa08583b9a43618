//! What a gateway may do next with a purchase in a state, which actions are faults (the fault
//! budget counts them), and how actions print in a counterexample.

use std::fmt;

use super::{Action, Pc, Publish, PurchaseModel, Rec, State, Status};

impl PurchaseModel {
    /// What the gateway may do next with request `req`.
    pub(super) fn gateway_actions(&self, req: u8, pc: Pc, fault: bool, actions: &mut Vec<Action>) {
        let lossy: &[bool] = if fault { &[false, true] } else { &[false] };
        match pc {
            Pc::Waiting => {
                for &reply_lost in lossy {
                    actions.push(Action::Arrive { req, reply_lost });
                }
            }
            Pc::Publishing { .. } => {
                actions.push(Action::Publish {
                    req,
                    outcome: Publish::Acked,
                });
                if fault {
                    for outcome in [Publish::AckLost, Publish::InFlight] {
                        actions.push(Action::Publish { req, outcome });
                    }
                }
            }
            Pc::Compensating { .. } => actions.push(Action::Compensate { req }),
            Pc::Marking { .. } => {
                for &reply_lost in lossy {
                    actions.push(Action::Mark { req, reply_lost });
                }
            }
            Pc::Done => {}
        }
        if fault && !matches!(pc, Pc::Waiting | Pc::Done) {
            actions.push(Action::Crash { req });
        }
    }

    /// What the stream, the sweeper, the consumer and the lifecycle may do with reservation
    /// `rid` and its order. Scripts that find no sale in Redis wait (commits, confirms,
    /// releases) or find nothing to do (the sweeper).
    pub(super) fn order_actions(&self, s: &State, rid: u8, fault: bool, actions: &mut Vec<Action>) {
        let i = rid as usize;
        if s.wire[i] {
            actions.push(Action::Land { rid });
            actions.push(Action::Drop { rid });
        }
        if let Some(record) = s.records[i] {
            let expirable = record.state == Rec::Held && !(self.current() && record.queued);
            if self.expiry && fault && expirable {
                actions.push(Action::Expire { rid });
            }
        }
        if s.stream[i] {
            if s.rows[i].is_none() {
                actions.push(Action::Insert { rid });
            } else {
                actions.push(Action::Ack { rid });
            }
        }
        let Some(row) = s.rows[i] else { return };
        if row.needs_commit && s.present {
            actions.push(Action::Commit { rid });
        }
        if row.status == Status::Pending && !row.needs_commit {
            actions.push(Action::Pay { rid });
        }
        if row.status == Status::Pending {
            actions.push(Action::ExpirePayment { rid });
        }
        if row.needs_confirm && s.present {
            actions.push(Action::Confirm { rid });
        }
        if row.needs_release && s.present {
            actions.push(Action::Release { rid });
        }
    }
}

/// The steps that are faults (the budget counts them): lost replies, lost acks, timed-out
/// publishes, crashes, holds passing (an outage longer than the hold), Redis restarting empty.
pub(super) fn is_fault(action: Action) -> bool {
    matches!(
        action,
        Action::Arrive {
            reply_lost: true,
            ..
        } | Action::Mark {
            reply_lost: true,
            ..
        } | Action::Publish {
            outcome: Publish::AckLost | Publish::InFlight,
            ..
        } | Action::Crash { .. }
            | Action::Expire { .. }
            | Action::LoseRedis
    )
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Arrive { req, reply_lost } => write!(
                f,
                "request {req} arrives: sold-out memory, reserve.lua{}",
                if *reply_lost { " (reply lost)" } else { "" }
            ),
            Action::Publish { req, outcome } => write!(f, "request {req} publishes: {outcome:?}"),
            Action::Land { rid } => write!(f, "the timed-out publish of {rid} reaches the stream"),
            Action::Drop { rid } => write!(f, "the timed-out publish of {rid} is dropped"),
            Action::Compensate { req } => {
                write!(f, "request {req} compensates: release.lua PUBLISH_FAILED")
            }
            Action::Mark { req, reply_lost } => write!(
                f,
                "request {req} marks queued: queued.lua{}",
                if *reply_lost { " (reply lost)" } else { "" }
            ),
            Action::Crash { req } => write!(f, "the gateway dies during request {req}"),
            Action::Forget => write!(f, "the gateway's sold-out memory lapses"),
            Action::Expire { rid } => write!(f, "the hold of {rid} passes: expire.lua"),
            Action::Insert { rid } => write!(f, "the consumer inserts order {rid}"),
            Action::Ack { rid } => write!(f, "the consumer acks event {rid}"),
            Action::Commit { rid } => write!(f, "commit_many.lua for order {rid}"),
            Action::Pay { rid } => write!(f, "order {rid} is paid"),
            Action::Confirm { rid } => write!(f, "confirm.lua for order {rid}"),
            Action::ExpirePayment { rid } => {
                write!(
                    f,
                    "order {rid}'s payment deadline passes: release.lua PAYMENT_EXPIRED"
                )
            }
            Action::Release { rid } => write!(f, "the pending release of order {rid} runs"),
            Action::End => write!(f, "the sale ends"),
            Action::LoseRedis => write!(f, "Redis restarts empty"),
            Action::RepairStart => write!(f, "reconcile --repair: GetStock"),
            Action::ReadOrders => write!(f, "reconcile --repair: drained, reads the orders"),
            Action::Rebuild => write!(f, "reconcile --repair: admit() and rebuild.lua"),
            Action::Recheck => write!(f, "reconcile --repair: reads the orders again"),
        }
    }
}
