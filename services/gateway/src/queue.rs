//! The waiting room as buyers meet it: JoinQueue, QueueStatus, and the purchase token a sale
//! with a room requires (the room itself is [`flashsale_limiter::waiting_room`], in Redis, shared
//! by every gateway replica).

use std::time::Duration;

use flashsale_limiter::waiting_room::{RoomError, RoomView, Standing, WaitingRoom};
use flashsale_orders::entity::sales;
use flashsale_proto::{
    rules,
    time::{duration, timestamp},
    v1 as pb,
};
use tokio::sync::{mpsc, watch};

use crate::{Error, Gateway, auth::Caller, sales::room_settings};

/// The waiting rooms as this gateway serves them.
pub(crate) struct Rooms {
    /// The rooms (Redis), when this gateway has a key to sign tickets with.
    room: Option<WaitingRoom>,
    /// Per sale with buyers watching its room: the latest reading, shared by them.
    views: std::sync::Mutex<std::collections::HashMap<String, watch::Sender<Reading>>>,
    /// When a sold-out room was last checked against the inventory, per sale.
    rechecks: dashmap::DashMap<String, std::time::Instant>,
}

impl Rooms {
    pub(crate) fn new(room: Option<WaitingRoom>) -> Self {
        Self {
            room,
            views: std::sync::Mutex::default(),
            rechecks: dashmap::DashMap::new(),
        }
    }
}

impl Gateway {
    fn room(&self, sale_id: &str) -> Result<&WaitingRoom, Error> {
        self.parts
            .rooms
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
        if let Some(room) = &self.parts.rooms.room
            && let Err(e) = room.sold_out(&sale.sale_id).await
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
        ended(&sale)?;
        if self.sold_out_now(sale_id) {
            return Ok(counted(sale_id, sold_out(0, String::new())));
        }
        let ticket = self
            .room(sale_id)?
            .join(sale_id, &caller.user_id, settings.ticket_ttl)
            .await?;
        Ok(counted(
            sale_id,
            standing_pb(ticket.number, ticket.ticket, ticket.standing),
        ))
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
        if room_settings(&sale).is_none() {
            return Err(Error::NoWaitingRoom(request.sale_id.clone()));
        }
        ended(&sale)?;
        let room = self.room(&request.sale_id)?;
        let status = || {
            room.status(
                &request.sale_id,
                &caller.user_id,
                &request.ticket,
                flashsale_proto::time::now_ms(),
            )
        };
        let mut standing = status().await?;
        if standing == Standing::SoldOut && self.reopen_if_restocked(&sale).await {
            standing = status().await?;
        }
        // The sold-out signal reaches every gateway at once; queued buyers hear it from it
        // even before the room itself is told.
        if self.sold_out_now(&request.sale_id) {
            return Ok(counted(&request.sale_id, sold_out(0, String::new())));
        }
        Ok(counted(
            &request.sale_id,
            standing_pb(0, String::new(), standing),
        ))
    }
}

/// Queue calls for a sale that has ended are refused (SALE_NOT_ACTIVE): nobody will be
/// admitted any more.
fn ended(sale: &sales::Model) -> Result<(), Error> {
    if crate::sales::state(sale, flashsale_proto::time::now_ms()) == pb::SaleState::Ended {
        return Err(Error::NotActive(sale.sale_id.clone()));
    }
    Ok(())
}

impl Gateway {
    /// A room closed as sold out, while this gateway's stock signals say units came back
    /// (holds that expired, orders not paid), asks the inventory: units available reopen the
    /// room, so queued buyers are admitted again and no returned unit is stranded behind a
    /// closed room; none confirm the sell-out here too. At most once a second per sale.
    pub(crate) async fn reopen_if_restocked(&self, sale: &sales::Model) -> bool {
        if self.sold_out_now(&sale.sale_id) {
            return false;
        }
        let now = std::time::Instant::now();
        match self.parts.rooms.rechecks.entry(sale.sale_id.clone()) {
            dashmap::Entry::Occupied(last)
                if now.duration_since(*last.get()) < Duration::from_secs(1) =>
            {
                return false;
            }
            dashmap::Entry::Occupied(mut last) => {
                last.insert(now);
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(now);
            }
        }
        let Ok(Some(stock)) = self.stock(&sale.sale_id).await else {
            return false;
        };
        self.observe_stock(&sale.sale_id, stock.available);
        if stock.available == 0 {
            return false;
        }
        let Some(room) = &self.parts.rooms.room else {
            return false;
        };
        match room.restock(&sale.sale_id).await {
            Ok(()) => {
                tracing::info!(sale_id = %sale.sale_id, available = stock.available, "units came back: the waiting room admits again");
                true
            }
            Err(e) => {
                tracing::warn!(sale_id = %sale.sale_id, error = %e, "waiting room not reopened");
                false
            }
        }
    }
}

/// What a WatchQueue stream carries.
pub(crate) type Standings = mpsc::Receiver<Result<pb::QueueStanding, Error>>;

impl Gateway {
    /// WatchQueue: the standing now (from Redis, refusing what QueueStatus refuses), then a
    /// new one whenever the position moves, read from the room once per tick for every
    /// watcher of the sale; ends once admitted (the purchase token comes from Redis) or sold
    /// out, after `queue_watch_max`, or when the gateway shuts down.
    pub async fn watch_queue(
        &self,
        caller: &Caller,
        request: pb::QueueStatusRequest,
    ) -> Result<Standings, Error> {
        let first = self.queue_status(caller, request.clone()).await?;
        let number = self.room(&request.sale_id)?.ticket_number(
            &request.sale_id,
            &caller.user_id,
            &request.ticket,
            flashsale_proto::time::now_ms(),
        )?;
        let (tx, rx) = mpsc::channel(4);
        self.parts.shutdown.spawn(
            self.clone()
                .follow(caller.clone(), request, number, first, tx),
        );
        Ok(rx)
    }

    async fn follow(
        self,
        caller: Caller,
        request: pb::QueueStatusRequest,
        number: u64,
        first: pb::QueueStanding,
        tx: mpsc::Sender<Result<pb::QueueStanding, Error>>,
    ) {
        let config = &self.parts.config;
        let deadline = tokio::time::Instant::now() + config.queue_watch_max;
        let shutdown = self.parts.shutdown.wait();
        tokio::pin!(shutdown);
        // Every send races the shutdown and the deadline: a client that stops reading must
        // not hold the drain up.
        macro_rules! deliver {
            ($item:expr) => {{
                let item = $item;
                tokio::select! {
                    biased;
                    sent = tx.send(item) => sent.is_ok(),
                    () = &mut shutdown => false,
                    () = tokio::time::sleep_until(deadline) => false,
                }
            }};
        }
        let _watcher = crate::metrics::Watcher::open(&request.sale_id);
        let waiting = first.state == pb::QueueState::Waiting as i32;
        let mut last = first.clone();
        if !deliver!(Ok(first)) || !waiting {
            return;
        }
        let mut last_sent = tokio::time::Instant::now();
        let mut readings = self.room_view(&request.sale_id);
        loop {
            tokio::select! {
                changed = readings.changed() => if changed.is_err() { return },
                () = tx.closed() => return,
                () = &mut shutdown => return,
                () = tokio::time::sleep_until(deadline) => return,
            }
            let reading = *readings.borrow_and_update();
            if reading.ended {
                deliver!(Err(Error::NotActive(request.sale_id.clone())));
                return;
            }
            if let Some(since) = reading.failing_since
                && since.elapsed() >= ROOM_UNREACHABLE
            {
                deliver!(Err(Error::Queue(RoomError::Redis(format!(
                    "the waiting room has not answered for {:?}",
                    since.elapsed()
                )))));
                return;
            }
            let Some(view) = reading.view else {
                continue;
            };
            if view.sold_out || self.sold_out_now(&request.sale_id) {
                deliver!(Ok(counted(&request.sale_id, sold_out(0, String::new()))));
                return;
            }
            match view.waiting(number) {
                // A reading older than the last standing sent (the first one came straight
                // from Redis) would move the buyer back: positions only count down.
                Some((position, _)) if position >= last.position => {
                    if last_sent.elapsed() >= KEEPALIVE {
                        // Nothing moved for a while: say so, so idle proxies keep the stream.
                        if !deliver!(Ok(counted(&request.sale_id, last.clone()))) {
                            return;
                        }
                        last_sent = tokio::time::Instant::now();
                    }
                }
                Some((position, eta)) => {
                    last = standing_pb(0, String::new(), Standing::Waiting { position, eta });
                    if !deliver!(Ok(counted(&request.sale_id, last.clone()))) {
                        return;
                    }
                    last_sent = tokio::time::Instant::now();
                }
                None => {
                    // Admitted: the purchase token, and a last look at the ticket, from Redis.
                    let admitted = self.queue_status(&caller, request).await;
                    deliver!(admitted);
                    return;
                }
            }
        }
    }

    /// The latest reading of a sale's room, shared by everyone watching it on this gateway;
    /// the first watcher starts the reading.
    fn room_view(&self, sale_id: &str) -> watch::Receiver<Reading> {
        let mut views = self
            .parts
            .rooms
            .views
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = views.get(sale_id) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Reading::default());
        views.insert(sale_id.to_owned(), tx.clone());
        self.parts
            .shutdown
            .spawn(self.clone().read_room(sale_id.to_owned(), tx));
        rx
    }

    /// Reads a sale's room once per `queue_watch_interval` while anyone watches it, and wakes
    /// the watchers every tick, answered or not.
    async fn read_room(self, sale_id: String, tx: watch::Sender<Reading>) {
        let mut every = tokio::time::interval(self.parts.config.queue_watch_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            {
                // Under the lock a new watcher subscribes with, so none is left unserved.
                let mut views = self
                    .parts
                    .rooms
                    .views
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                if tx.receiver_count() == 0 {
                    views.remove(&sale_id);
                    return;
                }
            }
            let Some(room) = &self.parts.rooms.room else {
                return;
            };
            let mut reading = *tx.borrow();
            // One look at the sale per tick for all its watchers (from memory, mostly).
            let sale = self.sale(&sale_id).await.ok();
            if let Some(sale) = &sale {
                reading.ended = ended(sale).is_err();
            }
            match room.tick(&sale_id).await {
                Ok(view) => {
                    reading.view = Some(view);
                    reading.failing_since = None;
                    if view.sold_out
                        && let Some(sale) = &sale
                    {
                        self.reopen_if_restocked(sale).await;
                    }
                }
                Err(e) => {
                    if reading.failing_since.is_none() {
                        tracing::warn!(%sale_id, error = %e, "reading the waiting room failed; watchers keep the last standing");
                        reading.failing_since = Some(std::time::Instant::now());
                    }
                }
            }
            tx.send_replace(reading);
        }
    }
}

/// A room's reading as a gateway's watchers share it.
#[derive(Debug, Clone, Copy, Default)]
struct Reading {
    /// The latest answer, once there is one.
    view: Option<RoomView>,
    /// Since when Redis has not answered.
    failing_since: Option<std::time::Instant>,
    /// The sale has ended: nobody will be admitted any more.
    ended: bool,
}

/// A watch whose room has not answered this long ends UNAVAILABLE (the buyer watches again).
const ROOM_UNREACHABLE: Duration = Duration::from_secs(5);

/// A watch whose position has not moved says so at least this often.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// A standing, counted in `flashsale_queue_standings_total` as it goes out.
fn counted(sale_id: &str, standing: pb::QueueStanding) -> pb::QueueStanding {
    crate::metrics::queue_standing(sale_id, standing.state);
    standing
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
