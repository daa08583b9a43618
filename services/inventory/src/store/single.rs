//! The one-slot layout: a sale's whole stock, its buyers, keys and reservations in the slot
//! tagged with the sale id. Every operation is one script call there.

use fred::types::Value;

use super::{
    Inventory, Layout,
    script::{Load, Rebuild, Reserve, SlotKeys},
};
use crate::{
    Error,
    model::{Loaded, Reservation, ReserveRequest, Reserved, SalePresence, SaleSpec, StockLevel},
};

impl Inventory {
    /// Load of a one-slot sale (`load.lua`).
    pub(super) async fn load_single(
        &self,
        spec: &SaleSpec,
        refresh_only: bool,
    ) -> Result<Loaded, Error> {
        let args = vec![
            Value::from(spec.stock as i64),
            Value::from(i64::from(spec.per_user_limit)),
            Value::from(spec.starts_at_ms),
            Value::from(spec.ends_at_ms),
            Value::from(spec.reservation_hold.as_millis() as i64),
            Value::from(i64::from(refresh_only)),
        ];
        let reply = self
            .eval(&self.inner.scripts.load, &spec.sale_id, args)
            .await?;
        match Load::parse(&reply)? {
            Load::Done { created } => Ok(Loaded {
                created,
                stock: Load::stock(&reply)?,
            }),
            Load::Missing => Err(Error::SaleNotFound(spec.sale_id.clone())),
            Load::StockFixed { loaded } => Err(Error::StockFixed {
                sale_id: spec.sale_id.clone(),
                loaded,
                requested: spec.stock,
            }),
            Load::BucketsFixed { loaded } => Err(Error::BucketsFixed {
                sale_id: spec.sale_id.clone(),
                loaded,
                requested: 1,
            }),
        }
    }

    /// Reserve in a one-slot sale: one script call.
    pub(super) async fn reserve_single(&self, request: &ReserveRequest) -> Result<Reserved, Error> {
        let reservation_id = uuid::Uuid::now_v7().to_string();
        let reply = self
            .eval_acked(
                &self.inner.scripts.reserve,
                SlotKeys::of(&request.sale_id).for_script(),
                Reserve::args(request, &reservation_id),
                Reserve::holds_a_reservation,
            )
            .await?;
        self.reserved(request, &reply, Layout::Single).await
    }

    /// Rebuild of a one-slot sale: one script call; gateways learn at once whether the
    /// rebuilt sale has stock.
    pub(super) async fn rebuild_single(
        &self,
        spec: &SaleSpec,
        reservations: &[Reservation],
        seen: SalePresence,
    ) -> Result<StockLevel, Error> {
        let args = Rebuild::args(spec, spec.stock as i64, seen.as_str(), reservations)?;
        let (stock, seq) = self.rebuild_slot(spec, &spec.sale_id, args).await?;
        self.publish_signal(&spec.sale_id, stock.available == 0, stock.available, seq)
            .await;
        Ok(stock)
    }
}
