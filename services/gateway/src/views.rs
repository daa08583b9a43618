//! What buyers read: a sale with its stock, a page of sales, their own orders (one at a time,
//! or followed to their final status).

use std::time::{Duration, Instant};

use flashsale_proto::{rules, v1 as pb};

use crate::{
    Error, Gateway,
    auth::Caller,
    model::{Cursor, MAX_PAGE_SIZE, SaleView, SalesPage, SalesQuery},
};

impl Gateway {
    /// A sale and its stock, for buyers.
    pub async fn sale_view(&self, sale_id: &str) -> Result<SaleView, Error> {
        rules::sale_id(sale_id)?;
        let sale = self.sale(sale_id).await?;
        // A buyer's view shows the sale whatever the inventory says; no figures when it fails.
        let stock = self.stock(sale_id).await.ok().flatten();
        Ok(SaleView { sale, stock })
    }

    /// Sales by start time, a page at a time.
    pub async fn list_sales(&self, query: SalesQuery) -> Result<SalesPage, Error> {
        if !(1..=MAX_PAGE_SIZE).contains(&query.page_size) {
            return Err(Error::invalid(
                "page_size",
                format!("{} is outside 1..={MAX_PAGE_SIZE}", query.page_size),
            ));
        }
        let size = query.page_size as usize;
        let now = flashsale_proto::time::now_ms();
        let read = u64::from(query.page_size) * 2;
        let mut after = query
            .after
            .map(|c| (flashsale_orders::convert::utc(c.starts_at_ms), c.sale_id));
        let mut sales = Vec::with_capacity(size);
        // The state depends on the clock, so it is filtered after reading; read until the page
        // fills or the table ends.
        loop {
            let batch = self
                .parts
                .clients
                .store
                .list_sales(read, after.clone())
                .await?;
            let exhausted = (batch.len() as u64) < read;
            for sale in batch {
                after = Some((sale.starts_at, sale.sale_id.clone()));
                if query
                    .state
                    .is_some_and(|w| crate::sales::state(&sale, now) != w)
                {
                    continue;
                }
                if sales.len() == size {
                    let next = sales.last().map(cursor_after);
                    return Ok(SalesPage { sales, next });
                }
                sales.push(sale);
            }
            if exhausted {
                return Ok(SalesPage { sales, next: None });
            }
        }
    }

    /// The caller's order (another buyer's is NOT_FOUND).
    pub async fn order(&self, caller: &Caller, order_id: &str) -> Result<pb::Order, Error> {
        let order = self.any_order(order_id).await?;
        if order.user_id != caller.user_id {
            return Err(Error::OrderNotFound(order_id.to_owned()));
        }
        Ok(order)
    }

    async fn any_order(&self, order_id: &str) -> Result<pb::Order, Error> {
        rules::text_id("order_id", order_id)?;
        let order = self
            .parts
            .clients
            .orders
            .clone()
            .get_order(pb::GetOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => Error::OrderNotFound(order_id.to_owned()),
                _ => Error::Upstream(status),
            })?
            .into_inner();
        Ok(order)
    }

    /// Follows the caller's order to its final status, waiting a little for a just-accepted
    /// order to be persisted.
    pub async fn watch(
        &self,
        caller: &Caller,
        order_id: &str,
    ) -> Result<tonic::codec::Streaming<pb::Order>, Error> {
        let deadline = Instant::now() + self.parts.config.watch_wait;
        let mut pause = flashsale_runtime::backoff::Backoff::new(
            Duration::from_millis(25),
            Duration::from_millis(500),
        );
        loop {
            match self.any_order(order_id).await {
                Ok(order) if order.user_id == caller.user_id => break,
                // Someone else's order: not found, without waiting for it.
                Ok(_) => return Err(Error::OrderNotFound(order_id.to_owned())),
                Err(Error::OrderNotFound(_)) if Instant::now() < deadline => {
                    tokio::time::sleep(pause.next_pause()).await;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(self
            .parts
            .clients
            .orders
            .clone()
            .watch_order(pb::WatchOrderRequest {
                order_id: order_id.to_owned(),
            })
            .await
            .map_err(Error::Upstream)?
            .into_inner())
    }
}

fn cursor_after(sale: &flashsale_orders::entity::sales::Model) -> Cursor {
    Cursor {
        starts_at_ms: flashsale_orders::convert::ms(sale.starts_at),
        sale_id: sale.sale_id.clone(),
    }
}
