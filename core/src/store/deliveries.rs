//! The deliveries repository: reading a delivery row, the same on both databases. (Its
//! writes are the batched transitions of `store::transitions`.)

use super::dialect::Columns;
use super::StoreResult;
use crate::delivery::Delivery;
use crate::{DeliveryId, DistrictId, GuardianId, MessageId, RecipientId};

/// A delivery from a row of [`super::DELIVERY_COLUMNS`].
pub(crate) fn from_row(row: &impl Columns) -> StoreResult<Delivery> {
    Ok(Delivery {
        id: DeliveryId::from_uuid(row.id("id")?),
        district_id: DistrictId::from_uuid(row.id("district_id")?),
        message_id: MessageId::from_uuid(row.id("message_id")?),
        recipient_id: RecipientId::from_uuid(row.id("recipient_id")?),
        guardian_id: GuardianId::from_uuid(row.id("guardian_id")?),
        channel: row.parsed("channel")?,
        address: row.opt_text("address")?,
        state: row.parsed("state")?,
        version: row.i64("version")?,
        attempts: row.i32("attempts")?,
        next_attempt_at: row.opt_time("next_attempt_at")?,
        idempotency_key: row.text("idempotency_key")?,
        provider_ref: row.opt_text("provider_ref")?,
        last_error: row.opt_text("last_error")?,
        suppressed_reason: row.opt_text("suppressed_reason")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}
