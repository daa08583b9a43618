//! A fair waiting room per sale, shared by every gateway replica through Redis.
//!
//! Before a sale opens, and while demand exceeds what the sale admits per second, a buyer
//! joins the room and gets a **ticket**: their arrival number, signed (HMAC-SHA256) together
//! with the user, the sale and an expiry. Admission releases arrival numbers strictly in
//! order: a watermark rises with the credit `rate` earns per second (at most `cap` saved up)
//! as far as there are free **active** slots (at most `cap` admitted buyers who have not bought
//! yet; a slot frees when its buyer buys or their admission `window` passes). A buyer asks
//! where they are: waiting (position and an estimated wait), admitted (with a **purchase
//! token**: signed, bound to user, sale and the admission's deadline, good for one purchase),
//! or sold out — once the sale is sold out every queued buyer hears it on their next question.
//! Asking again while admitted gives the same deadline, never a later one; once it passes
//! unused the slot is someone else's, the token buys nothing, and the buyer may join again at
//! the back of the line.
//!
//! A ticket or token that was changed, signed with another key, is of another kind, another
//! user or another sale, or has expired is refused before Redis is asked; a purchase token
//! works once (Redis remembers spent arrival numbers), and a spent ticket cannot be admitted
//! again.
//!
//! One Lua script (`lua/room.lua`) keeps each sale's room in one hash slot `{wr:<sale>}` and
//! keeps Redis's clock (`TIME`): admission, deadlines and the tickets' expiries are the same
//! whichever gateway asks, whatever its own clock says. A gateway's clock only checks a
//! ticket's or token's expiry before Redis is asked, so a fast clock can refuse a token early
//! but no clock can make one buy late: Redis refuses a purchase after the deadline.

use std::time::Duration;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use fred::{
    prelude::*,
    types::{Value, scripts::Script},
};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Shortest secret the room signs with (128 bits, as for the gateway's HS256 key).
pub const MIN_SECRET_BYTES: usize = 16;

/// How a sale's room admits buyers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoomSettings {
    /// Buyers admitted per second.
    pub rate_per_second: f64,
    /// Most admitted buyers who have not bought yet (also the most credit saved up).
    pub active_cap: u32,
    /// How long an admitted buyer has to buy (and the purchase token lives).
    pub admission_window: Duration,
    /// How long a ticket stays valid.
    pub ticket_ttl: Duration,
    /// When admission starts (Unix ms): the sale's opening.
    pub opens_at_ms: i64,
}

impl RoomSettings {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), RoomError> {
        if !(self.rate_per_second.is_finite() && self.rate_per_second > 0.0) {
            return Err(RoomError::Invalid("rate_per_second must be above 0"));
        }
        if self.active_cap == 0 {
            return Err(RoomError::Invalid("active_cap must be at least 1"));
        }
        if self.admission_window < Duration::from_secs(1)
            || self.ticket_ttl < Duration::from_secs(1)
        {
            return Err(RoomError::Invalid(
                "admission_window and ticket_ttl must be at least 1s",
            ));
        }
        Ok(())
    }
}

/// Where a buyer stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Standing {
    /// Still queued.
    Waiting {
        /// Buyers admitted before them still to go (1 = next).
        position: u64,
        /// Estimated wait at the admission rate.
        eta: Duration,
    },
    /// Admitted: the token to buy with, once.
    Admitted {
        /// The signed single-use purchase token.
        purchase_token: String,
        /// When it expires (Unix ms).
        expires_at_ms: i64,
    },
    /// The sale sold out.
    SoldOut,
}

/// A room as a whole, as [`WaitingRoom::tick`] reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoomView {
    /// Arrival numbers up to this one are admitted.
    pub admitted: u64,
    /// Admissions per second.
    pub rate: f64,
    /// The sale sold out.
    pub sold_out: bool,
}

impl RoomView {
    /// Where arrival number `number` stands, if still waiting: (position, estimated wait).
    pub fn waiting(&self, number: u64) -> Option<(u64, Duration)> {
        (number > self.admitted && !self.sold_out).then(|| {
            let position = number - self.admitted;
            (
                position,
                Duration::from_secs_f64(position as f64 / self.rate.max(1e-9)),
            )
        })
    }
}

/// A ticket handed out on joining.
#[derive(Debug, Clone, PartialEq)]
pub struct Ticket {
    /// The signed ticket.
    pub ticket: String,
    /// The arrival number (1 = first).
    pub number: u64,
    /// Where the buyer stands now.
    pub standing: Standing,
}

/// Why the room refused.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// Settings break a rule.
    #[error("waiting room: {0}")]
    Invalid(&'static str),
    /// The sale has no waiting room.
    #[error("sale {0} has no waiting room")]
    NoRoom(String),
    /// A ticket or token is malformed, forged, expired, or not this buyer's for this sale.
    #[error("{kind} refused: {reason}")]
    Refused {
        /// `ticket` or `purchase token`.
        kind: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The ticket's purchase token was already spent.
    #[error("already used")]
    Used,
    /// Not admitted yet.
    #[error("not admitted yet")]
    NotAdmitted,
    /// Admitted, but the admission window passed without a purchase: the slot went to the next
    /// buyer in line.
    #[error("the admission window passed without a purchase; join the queue again")]
    Lapsed,
    /// The sale sold out.
    #[error("sold out")]
    SoldOut,
    /// Redis failed or did not answer in time.
    #[error("redis: {0}")]
    Redis(String),
}

/// What a ticket or a purchase token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claims {
    /// `t` ticket, `p` purchase token.
    k: String,
    /// Sale.
    s: String,
    /// User.
    u: String,
    /// Arrival number.
    n: u64,
    /// Expiry (Unix ms).
    e: i64,
}

/// The rooms of every sale.
#[derive(Clone)]
pub struct WaitingRoom {
    redis: Pool,
    script: std::sync::Arc<Script>,
    secret: SecretString,
    timeout: Duration,
}

impl std::fmt::Debug for WaitingRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitingRoom")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn keys(sale_id: &str) -> Vec<String> {
    ["room", "numbers", "order", "active", "used"]
        .iter()
        .map(|part| format!("wr:{{wr:{sale_id}}}:{part}"))
        .collect()
}

impl WaitingRoom {
    /// Connects to Redis; tickets and tokens are signed with `secret` (at least 16 bytes).
    pub async fn connect(
        config: &flashsale_runtime::config::RedisConfig,
        secret: SecretString,
    ) -> Result<Self, RoomError> {
        if secret.expose_secret().len() < MIN_SECRET_BYTES {
            return Err(RoomError::Invalid(
                "the signing secret needs 16 bytes or more",
            ));
        }
        let redis = flashsale_runtime::redis::pool(config, config.command_timeout)
            .await
            .map_err(|e| RoomError::Redis(e.to_string()))?;
        Ok(Self {
            redis,
            script: std::sync::Arc::new(Script::from_lua(include_str!("../lua/room.lua"))),
            secret,
            timeout: config.command_timeout,
        })
    }

    /// Runs the room script and parses its reply.
    async fn call(&self, sale_id: &str, args: Vec<Value>) -> Result<Reply, RoomError> {
        let client = self.redis.next();
        let call = self
            .script
            .evalsha_with_reload::<Value, _, _>(client, keys(sale_id), args);
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(RoomError::Redis(format!(
                "no answer within {:?}",
                self.timeout
            ))),
            Ok(Err(e)) => Err(RoomError::Redis(e.to_string())),
            Ok(Ok(Value::Array(items))) => Reply::parse(sale_id, &items),
            Ok(Ok(other)) => Err(RoomError::Redis(format!("unexpected answer {other:?}"))),
        }
    }

    /// Opens (or re-configures) a sale's room.
    pub async fn open(&self, sale_id: &str, settings: &RoomSettings) -> Result<(), RoomError> {
        settings.validate()?;
        self.call(
            sale_id,
            vec![
                "OPEN".into(),
                settings.rate_per_second.to_string().into(),
                i64::from(settings.active_cap).into(),
                (settings.admission_window.as_millis() as i64).into(),
                settings.opens_at_ms.into(),
            ],
        )
        .await
        .map(drop)
    }

    /// Joins `user` to the sale's queue and signs a ticket valid for `ticket_ttl` (by Redis's
    /// clock). Joining again keeps the place, unless an admission passed unused: then the
    /// buyer takes the next place at the back.
    pub async fn join(
        &self,
        sale_id: &str,
        user: &str,
        ticket_ttl: Duration,
    ) -> Result<Ticket, RoomError> {
        let reply = self.call(sale_id, vec!["JOIN".into(), user.into()]).await?;
        if reply.status == "SOLD_OUT" {
            return Err(RoomError::SoldOut);
        }
        let ticket = self.sign(&Claims {
            k: "t".into(),
            s: sale_id.into(),
            u: user.into(),
            n: reply.number,
            e: reply.now_ms + ticket_ttl.as_millis() as i64,
        });
        Ok(Ticket {
            ticket,
            number: reply.number,
            standing: self.standing(sale_id, user, &reply)?,
        })
    }

    /// Where the holder of `ticket` stands. Refused when the ticket is not `user`'s for
    /// `sale_id`, is forged or expired (by `now_ms`, the caller's clock), its purchase token was
    /// spent, or its admission passed unused.
    pub async fn status(
        &self,
        sale_id: &str,
        user: &str,
        ticket: &str,
        now_ms: i64,
    ) -> Result<Standing, RoomError> {
        let claims = self.verify("t", "ticket", ticket, sale_id, user, now_ms)?;
        let args = vec!["STATUS".into(), user.into(), (claims.n as i64).into()];
        let reply = self.call(sale_id, args).await?;
        self.standing(sale_id, user, &reply)
    }

    /// A STATUS or JOIN reply as the buyer hears it; an admitted buyer's token expires at the
    /// admission's deadline in Redis, however often they ask.
    fn standing(&self, sale_id: &str, user: &str, reply: &Reply) -> Result<Standing, RoomError> {
        match reply.status.as_str() {
            "ADMITTED" => Ok(Standing::Admitted {
                purchase_token: self.sign(&Claims {
                    k: "p".into(),
                    s: sale_id.into(),
                    u: user.into(),
                    n: reply.number,
                    e: reply.deadline_ms,
                }),
                expires_at_ms: reply.deadline_ms,
            }),
            "WAITING" => {
                let view = RoomView {
                    admitted: reply.admitted,
                    rate: reply.rate,
                    sold_out: false,
                };
                let (position, eta) = view.waiting(reply.number).unwrap_or_default();
                Ok(Standing::Waiting { position, eta })
            }
            "SOLD_OUT" => Ok(Standing::SoldOut),
            other => Err(reply.refusal(other)),
        }
    }

    /// Spends a purchase token: `user`'s, for `sale_id`, signed by this room, its admission
    /// still open by Redis's clock (and unexpired by `now_ms`, the caller's), and never spent
    /// before — except by a retry of the same purchase (the same non-empty `idempotency_key`),
    /// which the inventory then answers with the original reservation. Returns the arrival
    /// number it was issued for.
    pub async fn redeem(
        &self,
        sale_id: &str,
        user: &str,
        token: &str,
        idempotency_key: &str,
        now_ms: i64,
    ) -> Result<u64, RoomError> {
        let claims = self.verify("p", "purchase token", token, sale_id, user, now_ms)?;
        let args = vec![
            "REDEEM".into(),
            user.into(),
            (claims.n as i64).into(),
            idempotency_key.into(),
        ];
        let reply = self.call(sale_id, args).await?;
        match reply.status.as_str() {
            "REDEEMED" => Ok(reply.number),
            other => Err(reply.refusal(other)),
        }
    }

    /// Units came back after a sell-out (holds that expired, orders not paid): admission
    /// resumes where it stopped, so buyers still in line are admitted again.
    pub async fn restock(&self, sale_id: &str) -> Result<(), RoomError> {
        self.call(sale_id, vec!["RESTOCK".into()]).await.map(drop)
    }

    /// Runs admission and reads the room as a whole: how far it has admitted, at what rate, and
    /// whether it sold out. What a gateway asks once per tick for every buyer watching.
    pub async fn tick(&self, sale_id: &str) -> Result<RoomView, RoomError> {
        let reply = self.call(sale_id, vec!["TICK".into()]).await?;
        Ok(RoomView {
            admitted: reply.admitted,
            rate: reply.rate,
            sold_out: reply.status == "SOLD_OUT",
        })
    }

    /// The arrival number a ticket holds, once it is checked to be `user`'s for `sale_id`,
    /// signed by this room and unexpired (no Redis call).
    pub fn ticket_number(
        &self,
        sale_id: &str,
        user: &str,
        ticket: &str,
        now_ms: i64,
    ) -> Result<u64, RoomError> {
        self.verify("t", "ticket", ticket, sale_id, user, now_ms)
            .map(|claims| claims.n)
    }

    /// The sale sold out: every queued buyer hears it from now on, and nobody more is admitted.
    pub async fn sold_out(&self, sale_id: &str) -> Result<(), RoomError> {
        self.call(sale_id, vec!["SOLDOUT".into()]).await.map(drop)
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(self.secret.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length")
    }

    fn sign(&self, claims: &Claims) -> String {
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let mut mac = self.mac();
        mac.update(b"flashsale-waiting-room\0");
        mac.update(payload.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{payload}.{tag}")
    }

    fn verify(
        &self,
        kind: &str,
        name: &'static str,
        token: &str,
        sale_id: &str,
        user: &str,
        now_ms: i64,
    ) -> Result<Claims, RoomError> {
        let refused = |reason| RoomError::Refused { kind: name, reason };
        let (payload, tag) = token
            .split_once('.')
            .ok_or_else(|| refused("it is not a signed token"))?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| refused("its signature is not base64url"))?;
        let mut mac = self.mac();
        mac.update(b"flashsale-waiting-room\0");
        mac.update(payload.as_bytes());
        mac.verify_slice(&tag)
            .map_err(|_| refused("its signature does not match"))?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(payload)
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| refused("its content is unreadable"))?;
        if claims.k != kind {
            return Err(refused("it is another kind of token"));
        }
        if claims.s != sale_id {
            return Err(refused("it is for another sale"));
        }
        if claims.u != user {
            return Err(refused("it belongs to another buyer"));
        }
        if claims.e <= now_ms {
            return Err(refused("it has expired"));
        }
        Ok(claims)
    }
}

/// A room script's reply.
#[derive(Debug)]
struct Reply {
    status: String,
    /// The buyer's arrival number (0 when the call is not a buyer's).
    number: u64,
    /// The admitted watermark.
    admitted: u64,
    /// Admissions per second.
    rate: f64,
    /// When an admitted buyer's window closes (Unix ms, Redis's clock).
    deadline_ms: i64,
    /// Redis's clock when the script ran (Unix ms).
    now_ms: i64,
}

impl Reply {
    fn parse(sale_id: &str, reply: &[Value]) -> Result<Self, RoomError> {
        let text = |i: usize| reply.get(i).and_then(Value::as_string);
        let int = |i: usize| reply.get(i).and_then(Value::as_i64);
        let unexpected = || RoomError::Redis(format!("unexpected answer {reply:?}"));
        let status = text(0).ok_or_else(unexpected)?;
        if status == "NO_ROOM" {
            return Err(RoomError::NoRoom(sale_id.to_owned()));
        }
        let count = |i: usize| int(i).and_then(|v| u64::try_from(v).ok());
        Ok(Self {
            status,
            number: count(1).ok_or_else(unexpected)?,
            admitted: count(2).ok_or_else(unexpected)?,
            rate: text(3)
                .and_then(|r| r.parse().ok())
                .ok_or_else(unexpected)?,
            deadline_ms: int(4).ok_or_else(unexpected)?,
            now_ms: int(5).ok_or_else(unexpected)?,
        })
    }

    /// Why a buyer's call was refused, from a status other than the one it hoped for.
    fn refusal(&self, status: &str) -> RoomError {
        match status {
            "USED" => RoomError::Used,
            "WAITING" => RoomError::NotAdmitted,
            "LAPSED" => RoomError::Lapsed,
            "SOLD_OUT" => RoomError::SoldOut,
            "NOT_YOURS" => RoomError::Refused {
                kind: "ticket",
                reason: "it is not this buyer's place in the queue",
            },
            _ => RoomError::Redis(format!("unexpected answer {self:?}")),
        }
    }
}
