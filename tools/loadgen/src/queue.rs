//! Buyers of a sale behind a waiting room: each joins once, waits in line asking where they
//! stand, and buys with the purchase token admission gives; and the audit's check that the
//! room admitted in arrival order, judged from what the buyers were told and when.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use flashsale_proto::{
    time::duration_ms,
    v1::{self as pb, flash_sale_client::FlashSaleClient},
};
use flashsale_runtime::status::{reason_of, retry_after_of};
use tonic::{Code, transport::Channel};

/// What one buyer went through in the waiting room (times since the run started).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueVisit {
    /// The buyer.
    pub user_id: String,
    /// Their arrival number (1 = first).
    pub number: u64,
    /// When they first heard they were admitted (the answer's arrival).
    pub admitted: Option<Duration>,
    /// When they last asked and were told to wait (the question's sending).
    pub last_told_to_wait: Option<Duration>,
    /// They heard the sale sold out while still in line.
    pub sold_out_in_line: bool,
}

/// Where one buyer is: their ticket, their purchase token once admitted, or how their visit
/// ended without one.
#[derive(Default)]
struct Pass {
    ticket: Option<String>,
    token: Option<String>,
    ended: Option<String>,
    visit: QueueVisit,
}

/// Every buyer's pass for one run; a buyer's attempts take turns with their pass, so each buyer
/// joins once and holds one purchase token.
pub(crate) struct Room {
    started: Instant,
    patience: Duration,
    retries: u32,
    passes: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Pass>>>>,
}

impl Room {
    pub(crate) fn new(started: Instant, patience: Duration, retries: u32) -> Self {
        Self {
            started,
            patience,
            retries,
            passes: Mutex::new(HashMap::new()),
        }
    }

    /// The buyer's purchase token: joins the line on their first attempt and waits for
    /// admission (at most the patience); `Err` carries the reason they cannot buy
    /// (`SOLD_OUT`, `QUEUE_TIMEOUT`, or the refusal's reason).
    pub(crate) async fn purchase_token(
        &self,
        target: Channel,
        user_id: &str,
        bearer: &str,
        sale_id: &str,
    ) -> Result<String, String> {
        let pass = self
            .passes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(user_id.to_owned())
            .or_default()
            .clone();
        let mut pass = pass.lock().await;
        if let Some(token) = &pass.token {
            return Ok(token.clone());
        }
        if let Some(reason) = &pass.ended {
            return Err(reason.clone());
        }
        pass.visit.user_id = user_id.to_owned();
        let client = FlashSaleClient::new(target);
        let deadline = Instant::now() + self.patience;
        loop {
            let asked = self.started.elapsed();
            let answer = match pass.ticket.clone() {
                None => {
                    let join = pb::JoinQueueRequest {
                        sale_id: sale_id.to_owned(),
                    };
                    self.call(|| {
                        let (mut client, request) = (
                            client.clone(),
                            crate::drive::request(join.clone(), bearer, sale_id),
                        );
                        async move { client.join_queue(request).await }
                    })
                    .await
                }
                Some(ticket) => {
                    let status = pb::QueueStatusRequest {
                        sale_id: sale_id.to_owned(),
                        ticket,
                    };
                    self.call(|| {
                        let (mut client, request) = (
                            client.clone(),
                            crate::drive::request(status.clone(), bearer, sale_id),
                        );
                        async move { client.queue_status(request).await }
                    })
                    .await
                }
            };
            let standing = match answer {
                Ok(standing) => standing,
                Err(reason) => {
                    // A refusal stays; a passing failure (the mesh was unavailable through
                    // every retry) leaves the buyer's next attempt free to try again.
                    if crate::Outcome::refusal(&reason) {
                        pass.ended = Some(reason.clone());
                    }
                    return Err(reason);
                }
            };
            if !standing.ticket.is_empty() {
                pass.ticket = Some(standing.ticket.clone());
                pass.visit.number = standing.number;
            }
            match pb::QueueState::try_from(standing.state).unwrap_or_default() {
                pb::QueueState::Admitted => {
                    pass.visit.admitted = Some(self.started.elapsed());
                    pass.token = Some(standing.purchase_token.clone());
                    return Ok(standing.purchase_token);
                }
                pb::QueueState::SoldOut => {
                    pass.visit.sold_out_in_line = pass.ticket.is_some();
                    pass.ended = Some("SOLD_OUT".into());
                    return Err("SOLD_OUT".into());
                }
                pb::QueueState::Waiting if Instant::now() < deadline => {
                    pass.visit.last_told_to_wait = Some(asked);
                    let wait = standing
                        .estimated_wait
                        .as_ref()
                        .and_then(duration_ms)
                        .map_or(Duration::from_millis(100), |ms| {
                            Duration::from_millis(ms / 2)
                        });
                    tokio::time::sleep(
                        wait.clamp(Duration::from_millis(25), Duration::from_millis(500)),
                    )
                    .await;
                }
                pb::QueueState::Waiting => {
                    pass.visit.last_told_to_wait = Some(asked);
                    pass.ended = Some("QUEUE_TIMEOUT".into());
                    return Err("QUEUE_TIMEOUT".into());
                }
                pb::QueueState::Unspecified => {
                    pass.ended = Some("QUEUE_STATE_UNSPECIFIED".into());
                    return Err("QUEUE_STATE_UNSPECIFIED".into());
                }
            }
        }
    }

    /// One queue call, retried with a pause while the mesh is unavailable or shedding.
    async fn call<F, Fut>(&self, mut send: F) -> Result<pb::QueueStanding, String>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<tonic::Response<pb::QueueStanding>, tonic::Status>>,
    {
        let mut tries = 0;
        loop {
            match send().await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => {
                    let reason =
                        reason_of(&status).unwrap_or_else(|| format!("{:?}", status.code()));
                    let retryable = matches!(status.code(), Code::Unavailable)
                        || matches!(reason.as_str(), "OVERLOADED" | "RATE_LIMITED");
                    if !retryable || tries >= self.retries {
                        return Err(reason);
                    }
                    tries += 1;
                    let pause = retry_after_of(&status)
                        .unwrap_or(Duration::from_millis(20))
                        .min(Duration::from_millis(100));
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Every buyer's visit, by arrival number (buyers who never got a number come first).
    pub(crate) fn visits(&self) -> Vec<QueueVisit> {
        let passes: Vec<_> = self
            .passes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut visits: Vec<QueueVisit> = passes
            .iter()
            .filter_map(|pass| pass.try_lock().ok().map(|p| p.visit.clone()))
            .collect();
        visits.sort_by(|a, b| (a.number, &a.user_id).cmp(&(b.number, &b.user_id)));
        visits
    }
}

/// Whether the room admitted in arrival order, as far as its buyers can tell: no buyer was told
/// to wait by a question sent after a later arrival had heard it was admitted, and no two buyers
/// shared a number. Returns the verdict and its figures.
pub fn fair_admission(visits: &[QueueVisit]) -> (bool, String) {
    let mut numbered: Vec<&QueueVisit> = visits.iter().filter(|v| v.number > 0).collect();
    numbered.sort_by_key(|v| v.number);
    let shared = numbered
        .windows(2)
        .filter(|pair| pair[0].number == pair[1].number)
        .count();
    // From the last arrival back: the earliest admission among the later arrivals.
    let mut earliest_later_admission: Option<Duration> = None;
    let mut passed_over = 0;
    for visit in numbered.iter().rev() {
        if let (Some(waiting), Some(later)) = (visit.last_told_to_wait, earliest_later_admission)
            && later < waiting
        {
            passed_over += 1;
        }
        earliest_later_admission = match (earliest_later_admission, visit.admitted) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    let admitted = numbered.iter().filter(|v| v.admitted.is_some()).count();
    let sold_out = numbered.iter().filter(|v| v.sold_out_in_line).count();
    (
        shared == 0 && passed_over == 0,
        format!(
            "{} joined, {admitted} admitted, {sold_out} heard sold out in line; \
             {passed_over} told to wait after a later arrival was admitted, {shared} numbers shared",
            numbered.len()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visit(number: u64, admitted: Option<u64>, waiting: Option<u64>) -> QueueVisit {
        QueueVisit {
            user_id: format!("buyer-{number}"),
            number,
            admitted: admitted.map(Duration::from_millis),
            last_told_to_wait: waiting.map(Duration::from_millis),
            sold_out_in_line: admitted.is_none(),
        }
    }

    #[test]
    fn arrival_order_passes() {
        let visits = [
            visit(1, Some(10), None),
            visit(2, Some(30), Some(5)),
            // Admitted in order but heard it before an earlier arrival asked: allowed.
            visit(3, Some(20), Some(15)),
            visit(4, None, Some(40)),
            visit(5, None, Some(45)),
        ];
        let (ok, detail) = fair_admission(&visits);
        assert!(ok, "{detail}");
        assert!(detail.starts_with("5 joined, 3 admitted, 2 heard sold out in line; 0 told"));
    }

    #[test]
    fn a_buyer_passed_over_fails() {
        // Number 2 was still told to wait by a question sent after number 3 was admitted.
        let visits = [
            visit(1, Some(10), None),
            visit(2, None, Some(25)),
            visit(3, Some(20), Some(5)),
        ];
        let (ok, detail) = fair_admission(&visits);
        assert!(!ok);
        assert!(
            detail.contains("1 told to wait after a later arrival"),
            "{detail}"
        );
    }

    #[test]
    fn a_shared_number_fails() {
        let (ok, detail) = fair_admission(&[visit(1, Some(1), None), visit(1, Some(2), None)]);
        assert!(!ok);
        assert!(detail.ends_with("1 numbers shared"), "{detail}");
    }
}
