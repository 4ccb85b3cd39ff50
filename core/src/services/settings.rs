//! District settings: quotas and schools' quiet hours, each change with its audit row.

use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::quiet_hours::QuietHours;
use crate::DistrictId;

impl Services {
    /// Sets a district's quotas (`None` removes a limit).
    pub async fn set_district_quotas(
        &self,
        by: &Actor,
        district: DistrictId,
        max_recipients_per_message: Option<i32>,
        max_messages_per_hour: Option<i32>,
    ) -> Result<(), ServiceError> {
        let mut tx = self.store.begin().await?;
        tx.set_district_quotas(district, max_recipients_per_message, max_messages_per_hour)
            .await?;
        let detail = serde_json::json!({
            "max_recipients_per_message": max_recipients_per_message,
            "max_messages_per_hour": max_messages_per_hour,
        });
        tx.audit(district, by, "district.quotas", detail, self.clock.now())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets a school's time zone and quiet hours (`None` removes them); the school named
    /// by id or sourcedId.
    pub async fn set_school_quiet_hours(
        &self,
        by: &Actor,
        district: DistrictId,
        school: &str,
        quiet: Option<QuietHours>,
    ) -> Result<(), ServiceError> {
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx
            .set_school_quiet_hours(district, school, quiet, at)
            .await?
        {
            return Err(Refusal::NotFound.into());
        }
        let detail = serde_json::json!({
            "school": school,
            "quiet_hours": quiet.map(|q| serde_json::json!({"timezone": q.timezone.name(), "start_minute": q.start_minute, "end_minute": q.end_minute})),
        });
        tx.audit(district, by, "school.quiet_hours", detail, at)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
