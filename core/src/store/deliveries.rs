//! The deliveries repository: reading a delivery and its state changes, the same on both
//! databases. (Its writes are the batched transitions of `store::transitions`.)

use super::dialect::{Args, Columns, Dialect};
use super::dispatch::AttemptRecord;
use super::{CasOutcome, Store, StoreError, StoreResult};
use crate::delivery::{
    decide_and_apply, Actor, Applied, ApplyError, Change, Delivery, DeliveryEvent,
    DeliveryEventRecord, Request, WriteChanges,
};
use crate::{DeliveryId, DistrictId, GuardianId, MessageId, RecipientId};

/// The columns a [`Delivery`] is read from.
pub(crate) const DELIVERY_COLUMNS: &str = "id, district_id, message_id, recipient_id, guardian_id, channel, \
     address, state, version, attempts, next_attempt_at, idempotency_key, provider_ref, last_error, \
     suppressed_reason, created_at, updated_at";

/// [`DELIVERY_COLUMNS`] of the table aliased `alias` (for joins).
pub(crate) fn delivery_columns(alias: &str) -> String {
    DELIVERY_COLUMNS
        .split(',')
        .map(|c| format!("{alias}.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The column that records when a delivery entered `state`.
pub(crate) const fn state_timestamp_column(state: crate::DeliveryState) -> &'static str {
    match state {
        crate::DeliveryState::Created => "created_at",
        crate::DeliveryState::Queued => "queued_at",
        crate::DeliveryState::Sent => "sent_at",
        crate::DeliveryState::Delivered => "delivered_at",
        crate::DeliveryState::Acked => "acked_at",
        crate::DeliveryState::Failed => "failed_at",
        crate::DeliveryState::Cancelled => "cancelled_at",
        crate::DeliveryState::Suppressed => "suppressed_at",
    }
}

/// Each batch in a transaction of its own.
struct InStore<'a>(pub &'a dyn Store);

#[async_trait::async_trait]
impl WriteChanges for InStore<'_> {
    type Error = StoreError;

    async fn write_changes(&mut self, batch: &[Change]) -> Result<Vec<CasOutcome>, StoreError> {
        self.0.apply_transitions(batch).await
    }
}

/// Applies one event to a delivery, as happened `at`: reads it, decides with
/// [`crate::delivery::next`], and compare-and-swaps the decision in.
pub async fn apply_event(
    store: &dyn Store,
    id: DeliveryId,
    event: DeliveryEvent,
    actor: &Actor,
    detail: Option<&str>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Applied, ApplyError<StoreError>> {
    let delivery = store.delivery(id).await?.ok_or(ApplyError::NotFound(id))?;
    let request = Request::new(event, actor, detail, at);
    decide_and_apply(&mut InStore(store), vec![(delivery, request)])
        .await?
        .remove(0)
}

/// A delivery from a row of [`DELIVERY_COLUMNS`].
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

/// Every state change of a delivery, in order.
pub(crate) async fn events<D: Dialect>(
    conn: &mut D::Connection,
    id: uuid::Uuid,
) -> StoreResult<Vec<DeliveryEventRecord>> {
    D::fetch_all(
        conn,
        &format!(
            "SELECT {EVENT_COLUMNS} FROM delivery_events WHERE delivery_id = $1 ORDER BY version"
        ),
        Args::new().id(id),
    )
    .await?
    .iter()
    .map(event_from_row)
    .collect()
}

/// The columns of `delivery_events` [`event_from_row`] reads.
pub(crate) const EVENT_COLUMNS: &str =
    "delivery_id, from_state, to_state, version, at, actor_kind, actor_ref, detail";

pub(crate) fn event_from_row(row: &impl Columns) -> StoreResult<DeliveryEventRecord> {
    Ok(DeliveryEventRecord {
        delivery_id: DeliveryId::from_uuid(row.id("delivery_id")?),
        from: row.parsed("from_state")?,
        to: row.parsed("to_state")?,
        version: row.i64("version")?,
        at: row.time("at")?,
        actor: Actor {
            kind: row.parsed("actor_kind")?,
            reference: row.text("actor_ref")?,
        },
        detail: row.opt_text("detail")?,
    })
}

/// The columns of `delivery_attempts` [`attempt_from_row`] reads.
pub(crate) const ATTEMPT_COLUMNS: &str =
    "delivery_id, attempt, provider, started_at, finished_at, outcome, error";

pub(crate) fn attempt_from_row(row: &impl Columns) -> StoreResult<AttemptRecord> {
    Ok(AttemptRecord {
        attempt: row.i32("attempt")?,
        provider: row.text("provider")?,
        started_at: row.time("started_at")?,
        finished_at: row.opt_time("finished_at")?,
        outcome: row.text("outcome")?,
        error: row.opt_text("error")?,
    })
}
