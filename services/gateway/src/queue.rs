//! The waiting room as buyers meet it: JoinQueue, QueueStatus, and the purchase token a sale
//! with a room requires (the room itself is [`flashsale_limiter::waiting_room`], in Redis, shared
//! by every gateway replica).

use std::time::Duration;

use flashsale_limiter::waiting_room::{Standing, WaitingRoom};
use flashsale_orders::entity::sales;
use flashsale_proto::{
    rules,
    time::{duration, timestamp},
    v1 as pb,
};

use crate::{Error, Gateway, auth::Caller, sales::room_settings};

impl Gateway {
    fn room(&self, sale_id: &str) -> Result<&WaitingRoom, Error> {
        self.inner
            .room
            .as_ref()
            .ok_or_else(|| Error::NoWaitingRoom(sale_id.to_owned()))
    }

    /// Refuses a sale with a waiting room this gateway cannot serve (before it is written).
    pub(crate) fn check_room(&self, sale: &sales::Model) -> Result<(), Error> {
        if room_settings(sale).is_some() {
            self.room(&sale.sale_id)?;
        }
        Ok(())
    }

    /// Opens a new sale's waiting room, if it has one.
    pub(crate) async fn open_room(&self, sale: &sales::Model) -> Result<(), Error> {
        if let Some(settings) = room_settings(sale) {
            self.room(&sale.sale_id)?
                .open(&sale.sale_id, &settings)
                .await?;
        }
        Ok(())
    }

    /// Tells the sale's waiting room it sold out (every queued buyer hears it); best effort:
    /// the sold-out flags answer QueueStatus from memory meanwhile.
    pub(crate) async fn close_room(&self, sale: &sales::Model) {
        if room_settings(sale).is_none() {
            return;
        }
        if let Some(room) = &self.inner.room
            && let Err(e) = room
                .sold_out(&sale.sale_id, flashsale_proto::time::now_ms())
                .await
        {
            tracing::warn!(sale_id = %sale.sale_id, error = %e, "waiting room not told of the sell-out");
        }
    }

    /// Spends the caller's purchase token for a sale with a waiting room.
    pub(crate) async fn spend_purchase_token(
        &self,
        sale_id: &str,
        user_id: &str,
        token: &str,
        idempotency_key: &str,
    ) -> Result<(), Error> {
        if token.is_empty() {
            return Err(Error::PurchaseTokenRequired(sale_id.to_owned()));
        }
        if token.len() > 4096 {
            return Err(Error::invalid(
                "purchase_token",
                "is longer than 4096 bytes",
            ));
        }
        self.room(sale_id)?
            .redeem(
                sale_id,
                user_id,
                token,
                idempotency_key,
                flashsale_proto::time::now_ms(),
            )
            .await?;
        Ok(())
    }

    /// JoinQueue.
    pub async fn join_queue(
        &self,
        caller: &Caller,
        sale_id: &str,
    ) -> Result<pb::QueueStanding, Error> {
        rules::sale_id(sale_id)?;
        let sale = self.sale(sale_id).await?;
        let settings =
            room_settings(&sale).ok_or_else(|| Error::NoWaitingRoom(sale_id.to_owned()))?;
        if self.sold_out_now(sale_id) {
            return Ok(sold_out(0, String::new()));
        }
        let ticket = self
            .room(sale_id)?
            .join(
                sale_id,
                &caller.user_id,
                settings.ticket_ttl,
                settings.admission_window,
                flashsale_proto::time::now_ms(),
            )
            .await?;
        Ok(standing_pb(ticket.number, ticket.ticket, ticket.standing))
    }

    /// QueueStatus.
    pub async fn queue_status(
        &self,
        caller: &Caller,
        request: pb::QueueStatusRequest,
    ) -> Result<pb::QueueStanding, Error> {
        rules::sale_id(&request.sale_id)?;
        if request.ticket.is_empty() || request.ticket.len() > 4096 {
            return Err(Error::invalid("ticket", "must be 1..=4096 bytes"));
        }
        let sale = self.sale(&request.sale_id).await?;
        let settings =
            room_settings(&sale).ok_or_else(|| Error::NoWaitingRoom(request.sale_id.clone()))?;
        let standing = self
            .room(&request.sale_id)?
            .status(
                &request.sale_id,
                &caller.user_id,
                &request.ticket,
                settings.admission_window,
                flashsale_proto::time::now_ms(),
            )
            .await?;
        // The sold-out signal reaches every gateway at once; queued buyers hear it from it
        // even before the room itself is told.
        if self.sold_out_now(&request.sale_id) {
            return Ok(sold_out(0, String::new()));
        }
        Ok(standing_pb(0, String::new(), standing))
    }
}

fn sold_out(number: u64, ticket: String) -> pb::QueueStanding {
    standing_pb(number, ticket, Standing::SoldOut)
}

fn standing_pb(number: u64, ticket: String, standing: Standing) -> pb::QueueStanding {
    let mut out = pb::QueueStanding {
        ticket,
        number,
        ..Default::default()
    };
    match standing {
        Standing::Waiting { position, eta } => {
            out.state = pb::QueueState::Waiting as i32;
            out.position = position;
            out.estimated_wait = Some(duration(
                eta.min(Duration::from_secs(86_400 * 365)).as_millis() as u64,
            ));
        }
        Standing::Admitted {
            purchase_token,
            expires_at_ms,
        } => {
            out.state = pb::QueueState::Admitted as i32;
            out.purchase_token = purchase_token;
            out.purchase_token_expires_at = Some(timestamp(expires_at_ms));
        }
        Standing::SoldOut => out.state = pb::QueueState::SoldOut as i32,
    }
    out
}
