//! Order status changes on core NATS (`<prefix>.<order_id>`), so a WatchOrder stream on any
//! replica sees a change made on any other.

use futures::StreamExt;
use prost::Message;

use flashsale_proto::v1::{Order, OrderStatusChanged};

use crate::{Error, convert::order_pb, entity::orders};

/// Publishes and follows order status changes.
#[derive(Debug, Clone)]
pub struct StatusEvents {
    client: async_nats::Client,
    prefix: String,
}

impl StatusEvents {
    /// Events under `prefix`.
    pub fn new(client: async_nats::Client, prefix: impl Into<String>) -> Self {
        Self {
            client,
            prefix: prefix.into(),
        }
    }

    /// Announces an order's new state. Best-effort: watchers also re-read the database.
    pub async fn publish(&self, order: &orders::Model) {
        let event = OrderStatusChanged {
            order: Some(order_pb(order)),
        };
        let subject = format!("{}.{}", self.prefix, order.order_id);
        if let Err(e) = self
            .client
            .publish(subject, event.encode_to_vec().into())
            .await
        {
            tracing::warn!(order_id = %order.order_id, error = %e, "order status change not published");
        }
    }

    /// The changes of one order, from now on.
    pub async fn follow(
        &self,
        order_id: &str,
    ) -> Result<impl futures::Stream<Item = Order> + Send + use<>, Error> {
        let subscriber = self
            .client
            .subscribe(format!("{}.{order_id}", self.prefix))
            .await
            .map_err(Error::nats)?;
        Ok(subscriber.filter_map(|message| async move {
            OrderStatusChanged::decode(message.payload)
                .ok()
                .and_then(|e| e.order)
        }))
    }

    /// The NATS client, for callers that need one.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}
