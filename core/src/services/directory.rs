//! Editing the directory by hand: contact points and opt-outs that staff enter for a
//! guardian. Each edit and its audit row commit together.

use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::store::{ContactPointView, GuardianDetail, GuardianRef, OptOutView, Scope};
use crate::{Channel, ContactPointId, EmailAddress, GuardianId, PhoneNumber, Role, Staff};

/// District and school administrators edit the directory; teachers and viewers read it.
fn may_edit(staff: &Staff) -> Result<(), Refusal> {
    match staff.role {
        Role::DistrictAdmin | Role::SchoolAdmin => Ok(()),
        Role::Teacher | Role::Viewer => Err(Refusal::Forbidden),
    }
}

fn invalid(message: impl std::fmt::Display) -> Refusal {
    Refusal::Invalid(message.to_string())
}

impl Services {
    /// A guardian the caller may see, by id or sourcedId.
    pub async fn visible_guardian(
        &self,
        caller: &Staff,
        reference: &str,
    ) -> Result<GuardianDetail, ServiceError> {
        Ok(self
            .store
            .guardian_detail(&Scope::of(caller), &GuardianRef::parse(reference))
            .await?
            .ok_or(Refusal::NotFound)?)
    }

    /// Adds (or reactivates) an SMS number or email address of a guardian. A number
    /// without a country code is read in `default_phone_region`.
    pub async fn add_contact_point(
        &self,
        caller: &Staff,
        guardian: &str,
        kind: &str,
        address: &str,
    ) -> Result<ContactPointView, ServiceError> {
        may_edit(caller)?;
        let guardian = self.visible_guardian(caller, guardian).await?;
        let kind: Channel = kind.parse().map_err(invalid)?;
        let address = match kind {
            Channel::Sms => PhoneNumber::parse_in(address, &self.default_phone_region)
                .map_err(invalid)?
                .to_string(),
            Channel::Email => EmailAddress::parse(address).map_err(invalid)?.to_string(),
            Channel::Push => {
                return Err(invalid(
                    "push devices are registered by the guardian app, not by staff",
                )
                .into())
            }
        };
        let guardian_id = GuardianId::from_uuid(guardian.guardian.id);
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        let contact = tx
            .add_contact_point(caller.district_id, guardian_id, kind, &address, at)
            .await?;
        let detail = serde_json::json!({ "guardian_id": guardian_id, "contact_point_id": contact.id, "kind": kind });
        tx.audit(
            caller.district_id,
            &Actor::staff(caller.id),
            "contact_point.add",
            detail,
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(contact)
    }

    /// Deactivates or reactivates one of a guardian's contact points.
    pub async fn change_contact_point(
        &self,
        caller: &Staff,
        guardian: &str,
        contact_point: ContactPointId,
        active: bool,
    ) -> Result<ContactPointView, ServiceError> {
        may_edit(caller)?;
        let guardian = self.visible_guardian(caller, guardian).await?;
        let guardian_id = GuardianId::from_uuid(guardian.guardian.id);
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        let changed = tx
            .set_contact_point_active(guardian_id, contact_point, active, at)
            .await?
            .ok_or(Refusal::NotFound)?;
        let detail = serde_json::json!({ "guardian_id": guardian_id, "contact_point_id": contact_point, "active": active });
        tx.audit(
            caller.district_id,
            &Actor::staff(caller.id),
            "contact_point.change",
            detail,
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Records that the guardian asked not to be contacted on a channel (emergencies
    /// still reach them, except by SMS after a carrier STOP).
    pub async fn add_opt_out(
        &self,
        caller: &Staff,
        guardian: &str,
        channel: &str,
    ) -> Result<OptOutView, ServiceError> {
        may_edit(caller)?;
        let guardian = self.visible_guardian(caller, guardian).await?;
        let channel: Channel = channel.parse().map_err(invalid)?;
        let guardian_id = GuardianId::from_uuid(guardian.guardian.id);
        let actor = Actor::staff(caller.id);
        self.record_opt_out(
            caller.district_id,
            guardian_id,
            channel,
            "staff",
            &actor,
            None,
        )
        .await
    }

    /// A guardian stops email by the unsubscribe link of one (the page's button or a
    /// mail client's one-click unsubscribe): an opt-out of source `guardian` and its
    /// audit row, the guardian's by the link, in one transaction. Twice is once.
    pub async fn unsubscribe_by_link(
        &self,
        district: crate::DistrictId,
        guardian: GuardianId,
        recipient: crate::RecipientId,
    ) -> Result<OptOutView, ServiceError> {
        let actor = Actor::guardian("link:unsubscribe");
        self.record_opt_out(
            district,
            guardian,
            Channel::Email,
            "guardian",
            &actor,
            Some(recipient),
        )
        .await
    }

    /// An opt-out of `source` and its `opt_out.add` audit row by `actor` (naming the
    /// message's recipient it came from, if any), in one transaction.
    async fn record_opt_out(
        &self,
        district: crate::DistrictId,
        guardian: GuardianId,
        channel: Channel,
        source: &str,
        actor: &Actor,
        recipient: Option<crate::RecipientId>,
    ) -> Result<OptOutView, ServiceError> {
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        let opt_out = tx
            .add_opt_out(district, guardian, channel, source, at)
            .await?;
        let mut detail = serde_json::json!({
            "guardian_id": guardian,
            "opt_out_id": opt_out.id,
            "channel": channel,
        });
        if let Some(recipient) = recipient {
            detail["recipient_id"] = serde_json::json!(recipient);
        }
        tx.audit(district, actor, "opt_out.add", detail, at).await?;
        tx.commit().await?;
        Ok(opt_out)
    }

    /// Revokes an opt-out. A carrier STOP cannot be revoked by staff: only the guardian's
    /// START does that.
    pub async fn revoke_opt_out(
        &self,
        caller: &Staff,
        guardian: &str,
        opt_out: uuid::Uuid,
    ) -> Result<(), ServiceError> {
        may_edit(caller)?;
        let guardian = self.visible_guardian(caller, guardian).await?;
        let guardian_id = GuardianId::from_uuid(guardian.guardian.id);
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        let found = tx
            .revoke_opt_out(guardian_id, opt_out, at)
            .await?
            .ok_or(Refusal::NotFound)?;
        if found.source == "carrier" {
            return Err(Refusal::Conflict(
                "this is a carrier STOP: only the guardian can undo it, by texting START".into(),
            )
            .into());
        }
        let detail = serde_json::json!({ "guardian_id": guardian_id, "opt_out_id": opt_out });
        tx.audit(
            caller.district_id,
            &Actor::staff(caller.id),
            "opt_out.revoke",
            detail,
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
