//! Replaying a dead letter: a failed delivery goes back in the queue, due now, with the
//! whole retry schedule ahead of it; the move and its audit row commit together.

use super::{message_scope, Refusal, ServiceError, Services};
use crate::delivery::{Actor, Delivery};
use crate::store::dispatch::replay_change;
use crate::store::CasOutcome;
use crate::{DeliveryId, Role, Staff};

impl Services {
    /// Requeues one of the caller's failed deliveries; the delivery as it is now.
    pub async fn replay_dead_letter(
        &self,
        caller: &Staff,
        delivery: DeliveryId,
    ) -> Result<Delivery, ServiceError> {
        if caller.role == Role::Viewer {
            return Err(Refusal::Forbidden.into());
        }
        let actor = Actor::staff(caller.id);
        let at = self.clock.now();
        let (seen, _) = self
            .store
            .delivery_attempts(&message_scope(caller), delivery)
            .await?
            .ok_or(Refusal::NotFound)?;
        let not_failed = |now: &Delivery| {
            Refusal::Conflict(format!(
                "the delivery is {}; only FAILED deliveries are replayed",
                now.state
            ))
        };
        // Decided by the state machine: only a FAILED delivery can be replayed.
        let change = replay_change(&seen, &actor, at).ok_or_else(|| not_failed(&seen))?;
        let mut tx = self.store.begin().await?;
        let delivery = match tx.apply_transitions(&[change]).await?.remove(0) {
            CasOutcome::Applied(delivery) => delivery,
            CasOutcome::Conflict(now) => return Err(not_failed(&now).into()),
            CasOutcome::NotFound => return Err(Refusal::NotFound.into()),
        };
        let detail = serde_json::json!({ "delivery_id": delivery.id, "message_id": delivery.message_id, "after_attempts": delivery.attempts });
        tx.audit(caller.district_id, &actor, "delivery.replay", detail, at)
            .await?;
        tx.commit().await?;
        Ok(delivery)
    }
}
