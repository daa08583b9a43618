//! Each step of the protocol as the code takes it, one function per action, named after the
//! function or script it mirrors.

use super::{Answer, LIMIT, Pc, Protocol, Publish, PurchaseModel, Rec, Record, State, Status, Why};

impl PurchaseModel {
    /// `sold_out_for` + `reserve.lua` + `replay()`.
    pub(super) fn arrive(&self, s: &mut State, req: u8, reply_lost: bool) {
        let buyer = self.requests[req as usize];
        let key_used = s.key_used(buyer);
        // The sold-out memory: the original answered before looking at the key; the current
        // one only to buyers whose key made no reservation.
        if s.sold_out_memory && !(self.current() && key_used) {
            return s.answer(req, Answer::SoldOut);
        }
        // `NO_SALE`: STOCK_UNAVAILABLE.
        if !s.present {
            return s.answer(req, Answer::Unavailable);
        }
        if let Some(rid) = s.idem[buyer.index()] {
            s.sold_out_memory = s.available == 0;
            if reply_lost {
                return s.answer(req, Answer::Unavailable);
            }
            return self.replay(s, req, rid);
        }
        if !s.on_sale {
            let answer = if reply_lost {
                Answer::Unavailable
            } else {
                Answer::NotActive
            };
            return s.answer(req, answer);
        }
        if !s.take_units(buyer) {
            s.sold_out_memory = s.available == 0;
            let refusal = if s.users[buyer.index()] >= LIMIT {
                Answer::UserLimit
            } else {
                Answer::SoldOut
            };
            return s.answer(
                req,
                if reply_lost {
                    Answer::Unavailable
                } else {
                    refusal
                },
            );
        }
        s.records[req as usize] = Some(Record {
            buyer,
            state: Rec::Held,
            queued: false,
        });
        s.idem[buyer.index()] = Some(req);
        if self.repair.is_some() {
            s.created.push(req);
        }
        s.sold_out_memory = s.available == 0;
        if reply_lost {
            return s.answer(req, Answer::Unavailable);
        }
        s.pcs[req as usize] = Pc::Publishing {
            rid: req,
            dup: false,
        };
    }

    /// What a repeated key gets (`replay()` in the gateway).
    pub(super) fn replay(&self, s: &mut State, req: u8, rid: u8) {
        let Some(record) = s.find(rid) else {
            unreachable!("idem names records Redis has (rebuild.lua writes both)")
        };
        let publish = Pc::Publishing { rid, dup: true };
        let next = match (self.protocol, record.state) {
            (Protocol::Current, Rec::Held) if !record.queued => publish,
            (Protocol::Current, Rec::Released(Why::Expired | Why::PublishFailed))
                if !record.queued =>
            {
                return s.answer(req, Answer::PurchaseFailed);
            }
            (Protocol::Current, _) => return s.answer(req, Answer::Accepted(rid)),
            (Protocol::Original, Rec::Held) => publish,
            (Protocol::Original, Rec::Committed) => return s.answer(req, Answer::Accepted(rid)),
            (Protocol::Original, _) => return s.answer(req, Answer::AlreadyExists(rid)),
        };
        s.pcs[req as usize] = next;
    }

    pub(super) fn publish(&self, s: &mut State, req: u8, outcome: Publish) {
        let Pc::Publishing { rid, dup } = s.pcs[req as usize] else {
            unreachable!("only offered while publishing")
        };
        match outcome {
            Publish::Acked => {
                s.stream[rid as usize] = true;
                if self.current() {
                    s.pcs[req as usize] = Pc::Marking { rid };
                } else {
                    s.answer(req, Answer::Accepted(rid));
                }
                return;
            }
            Publish::AckLost => s.stream[rid as usize] = true,
            Publish::InFlight => s.wire[rid as usize] = true,
        }
        // Failed as far as the gateway knows: only the attempt that made the reservation
        // compensates (the original protocol compensated from every attempt).
        if self.current() && dup {
            s.answer(req, Answer::Unavailable);
        } else {
            s.pcs[req as usize] = Pc::Compensating { rid };
        }
    }

    /// `release.lua` with PUBLISH_FAILED.
    pub(super) fn compensate(&self, s: &mut State, req: u8) {
        let Pc::Compensating { rid } = s.pcs[req as usize] else {
            unreachable!("only offered while compensating")
        };
        // `NO_SALE` or `NOT_FOUND` (rebuilt without it): nothing to release.
        let releasable = s.present
            && s.find(rid).is_some_and(|record| {
                record.state == Rec::Held && !(self.current() && record.queued)
            });
        if releasable {
            s.release_units(rid, Why::PublishFailed);
        }
        s.answer(req, Answer::Unavailable);
    }

    /// `queued.lua`.
    pub(super) fn mark(&self, s: &mut State, req: u8, reply_lost: bool) {
        let Pc::Marking { rid } = s.pcs[req as usize] else {
            unreachable!("only offered while marking")
        };
        let record = s.find(rid).filter(|_| s.present);
        let ok = match record.map(|r| r.state) {
            // `NO_SALE`, or `NOT_FOUND` after a rebuild without it: an error, UNAVAILABLE.
            None => false,
            Some(Rec::Held | Rec::Committed | Rec::Confirmed) => {
                s.record(rid).queued = true;
                true
            }
            // Released first: refused; the consumer's commit decides it. (Reviving it here was
            // the checker's first find in the current protocol: the consumer could already
            // have written the order as lost.)
            Some(Rec::Released(_)) => false,
        };
        let answer = if ok && !reply_lost {
            Answer::Accepted(rid)
        } else {
            Answer::Unavailable
        };
        s.answer(req, answer);
    }

    /// `expire.lua`.
    pub(super) fn expire(&self, s: &mut State, rid: u8) {
        s.release_units(rid, Why::Expired);
    }

    /// `commit_one` in `commit_many.lua`, then `mark_lost` when refused.
    pub(super) fn commit(&self, s: &mut State, rid: u8) {
        let found = s.find(rid);
        let row = s.rows[rid as usize].as_mut().expect("a written order");
        row.needs_commit = false;
        // `NOT_FOUND`: Redis was rebuilt without it (RESERVATION_UNKNOWN), `mark_lost`.
        let Some(record) = found else {
            row.status = Status::Lost;
            return;
        };
        match record.state {
            Rec::Held => s.record(rid).state = Rec::Committed,
            Rec::Committed | Rec::Confirmed => {}
            Rec::Released(_) if record.revivable() && s.take_units(record.buyer) => {
                s.record(rid).state = Rec::Committed;
            }
            Rec::Released(_) => {
                s.rows[rid as usize].as_mut().expect("written").status = Status::Lost;
            }
        }
    }

    /// `confirm.lua`: HELD or COMMITTED → CONFIRMED; a released one takes its unit back when
    /// stock and the limit allow, else the Confirm stays pending (the pipeline keeps it).
    pub(super) fn confirm(&self, s: &mut State, rid: u8) {
        // `NOT_FOUND`: the rebuild counted the order already (`holds::apply`), done.
        let done = match s.find(rid) {
            None => true,
            Some(record) => match record.state {
                Rec::Held | Rec::Committed | Rec::Confirmed => true,
                Rec::Released(_) => s.take_units(record.buyer),
            },
        };
        if done {
            if let Some(record) = s.records[rid as usize].as_mut() {
                record.state = Rec::Confirmed;
            }
            s.rows[rid as usize]
                .as_mut()
                .expect("written")
                .needs_confirm = false;
        }
    }

    /// `expire_due` then `release.lua` with PAYMENT_EXPIRED (which also closes a revivable one).
    pub(super) fn expire_payment(&self, s: &mut State, rid: u8) {
        let present = s.present;
        let row = s.rows[rid as usize].as_mut().expect("written");
        row.status = Status::Expired;
        row.needs_commit = false;
        row.needs_release = !present;
        if present {
            self.release(s, rid);
        }
    }

    /// `release.lua` with PAYMENT_EXPIRED; `NOT_FOUND` (rebuilt without it) is done.
    pub(super) fn release(&self, s: &mut State, rid: u8) {
        s.rows[rid as usize]
            .as_mut()
            .expect("written")
            .needs_release = false;
        let Some(record) = s.find(rid) else { return };
        match record.state {
            Rec::Held | Rec::Committed => s.release_units(rid, Why::PaymentExpired),
            Rec::Released(_) => s.record(rid).state = Rec::Released(Why::PaymentExpired),
            Rec::Confirmed => {}
        }
    }
}
