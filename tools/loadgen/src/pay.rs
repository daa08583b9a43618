//! Paying a share of the accepted orders, as a payment provider would.

use std::time::{Duration, Instant};

use flashsale_proto::v1::{self as pb, orders_client::OrdersClient};
use futures::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tonic::{Code, transport::Channel};

use crate::Accepted;

/// Pays `share` of the accepted orders (once each is persisted and ready); returns the ids paid.
pub async fn pay(
    orders: Channel,
    accepted: &[Accepted],
    share: f64,
    seed: u64,
    patience: Duration,
) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let chosen: Vec<&Accepted> = accepted
        .iter()
        .filter(|_| rng.random_bool(share.clamp(0.0, 1.0)))
        .collect();
    let paid: Vec<Option<String>> = futures::stream::iter(chosen)
        .map(|a| {
            let mut client = OrdersClient::new(orders.clone());
            async move {
                let deadline = Instant::now() + patience;
                loop {
                    let result = client
                        .pay(pb::PayRequest {
                            order_id: a.order_id.clone(),
                            user_id: a.user_id.clone(),
                            payment_reference: format!("pay-{}", a.order_id),
                        })
                        .await;
                    match result {
                        Ok(_) => return Some(a.order_id.clone()),
                        // Not written yet, or its stock commit still landing.
                        Err(s)
                            if matches!(s.code(), Code::NotFound | Code::Unavailable)
                                && Instant::now() < deadline =>
                        {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(s) => {
                            tracing::warn!(order_id = %a.order_id, status = %s, "payment refused");
                            return None;
                        }
                    }
                }
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    paid.into_iter().flatten().collect()
}
