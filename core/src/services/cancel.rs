//! Recalling a message: deliveries not yet handed to a provider are cancelled, those
//! already sent are counted; the recall and its audit row commit together.

use super::{message_scope, Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::store::CancelOutcome;
use crate::{MessageId, Role, Staff};

impl Services {
    /// Recalls one of the caller's messages.
    pub async fn cancel(
        &self,
        caller: &Staff,
        message: MessageId,
    ) -> Result<CancelOutcome, ServiceError> {
        if caller.role == Role::Viewer {
            return Err(Refusal::Forbidden.into());
        }
        let actor = Actor::staff(caller.id);
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        let outcome = tx
            .cancel_message(&message_scope(caller), message, &actor, at)
            .await?
            .ok_or(Refusal::NotFound)?;
        let detail = serde_json::json!({ "message_id": message, "cancelled": outcome.cancelled, "already_sent": outcome.already_sent });
        tx.audit(caller.district_id, &actor, "message.cancel", detail, at)
            .await?;
        tx.commit().await?;
        Ok(outcome)
    }
}
