//! Replaying a dead letter: a failed delivery goes back in the queue, due now, with the
//! whole retry schedule ahead of it, and the replay is audited.

use super::{Refusal, ServiceError, Services};
use crate::delivery::{Actor, Delivery};
use crate::services::renotify::message_scope;
use crate::store::dispatch::Replay;
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
        let delivery = match self
            .store
            .replay_dead_letter(&message_scope(caller), delivery, &actor, at)
            .await?
        {
            Replay::Requeued(delivery) => delivery,
            Replay::NotFailed(delivery) => {
                return Err(Refusal::Conflict(format!(
                    "the delivery is {}; only FAILED deliveries are replayed",
                    delivery.state
                ))
                .into())
            }
            Replay::NotFound => return Err(Refusal::NotFound.into()),
        };
        let detail = serde_json::json!({ "delivery_id": delivery.id, "message_id": delivery.message_id, "after_attempts": delivery.attempts });
        self.store
            .audit(caller.district_id, &actor, "delivery.replay", detail, at)
            .await?;
        Ok(delivery)
    }
}
