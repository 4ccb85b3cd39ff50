//! A guardian's data requests, made through their district: everything held about them
//! as JSON, and their erasure (see `store::guardian_data`). District administrators (and
//! the install's operators) of the guardian's district, or the command line; each
//! request audited with the guardian's id and what went, never their data.

use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::store::directory::GuardianRef;
use crate::store::guardian_data::{EraseOutcome, Erased, GuardianExport};
use crate::{DistrictId, GuardianId, Role, Staff};

/// Who may make a guardian's data requests from the API: the district's administrators
/// and the install's operators.
fn data_officer(caller: &Staff) -> Result<Actor, Refusal> {
    if caller.role == Role::DistrictAdmin || caller.operator {
        Ok(Actor::staff(caller.id))
    } else {
        Err(Refusal::Forbidden)
    }
}

impl Services {
    /// Everything held about a guardian of the caller's district.
    pub async fn export_own_guardian(
        &self,
        caller: &Staff,
        guardian: &str,
    ) -> Result<GuardianExport, ServiceError> {
        let by = data_officer(caller)?;
        self.export_guardian(&by, caller.district_id, guardian)
            .await
    }

    /// Erases a guardian of the caller's district.
    pub async fn erase_own_guardian(
        &self,
        caller: &Staff,
        guardian: &str,
    ) -> Result<Erased, ServiceError> {
        let by = data_officer(caller)?;
        self.erase_guardian(&by, caller.district_id, guardian).await
    }

    /// Everything held about a guardian of `district` (by id or sourcedId); audited
    /// `guardian.export`.
    pub async fn export_guardian(
        &self,
        by: &Actor,
        district: DistrictId,
        guardian: &str,
    ) -> Result<GuardianExport, ServiceError> {
        let now = self.clock.now();
        let export = self
            .store
            .guardian_export(district, &GuardianRef::parse(guardian), now)
            .await?
            .ok_or(Refusal::NotFound)?;
        let detail = serde_json::json!({ "guardian_id": export.guardian.guardian.id });
        let mut tx = self.store.begin().await?;
        tx.audit(district, by, "guardian.export", detail, now)
            .await?;
        tx.commit().await?;
        Ok(export)
    }

    /// Erases a guardian of `district` (by id or sourcedId), keeping a carrier STOP as a
    /// hash of the number; refused while deliveries to them wait to be sent. Audited
    /// `guardian.erase` with the counts of what went, in the same transaction.
    pub async fn erase_guardian(
        &self,
        by: &Actor,
        district: DistrictId,
        guardian: &str,
    ) -> Result<Erased, ServiceError> {
        let now = self.clock.now();
        let id = match GuardianRef::parse(guardian) {
            GuardianRef::Id(id) => id,
            sourced => {
                self.store
                    .guardian_detail(&crate::store::Scope::District(district), &sourced)
                    .await?
                    .ok_or(Refusal::NotFound)?
                    .guardian
                    .id
            }
        };
        let mut tx = self.store.begin().await?;
        let erased = match tx
            .erase_guardian(district, GuardianId::from_uuid(id), now)
            .await?
        {
            EraseOutcome::Erased(erased) => erased,
            EraseOutcome::NotFound => return Err(Refusal::NotFound.into()),
            EraseOutcome::Sending(waiting) => {
                return Err(Refusal::Conflict(format!(
                    "{waiting} deliveries to this guardian still wait to be sent: cancel \
                     their messages, or erase the guardian once they have gone"
                ))
                .into())
            }
        };
        let detail = serde_json::to_value(erased).unwrap_or_default();
        tx.audit(district, by, "guardian.erase", detail, now)
            .await?;
        tx.commit().await?;
        Ok(erased)
    }
}
