//! Retention and purging: how long a district keeps its records (each change audited)
//! and the purge that takes away what is older, in short batches with a pause between
//! them so that live sending keeps the database.

use std::time::Duration;

use super::accounts::administrator;
use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::retention::{Purged, Retention};
use crate::{DistrictId, Staff};

/// How a purge goes: rows of each kind per batch, and the least pause after each batch.
/// The pause is at least as long as the batch took, so that a purge has the database
/// (SQLite's one writer above all) at most half the time while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgePace {
    pub batch: u32,
    pub pause: Duration,
}

impl Default for PurgePace {
    fn default() -> Self {
        Self {
            batch: 1_000,
            pause: Duration::from_millis(20),
        }
    }
}

/// What a purge of one district did (or, in a dry run, would do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PurgeReport {
    pub district: DistrictId,
    pub dry_run: bool,
    pub retention: RetentionDays,
    pub purged: Purged,
    /// Transactions it took (0 in a dry run).
    pub batches: u32,
}

/// Days kept of each kind, as in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RetentionDays {
    pub messages_days: u32,
    pub replies_days: u32,
    pub callbacks_days: u32,
    pub audit_days: u32,
}

impl From<&Retention> for RetentionDays {
    fn from(r: &Retention) -> Self {
        use crate::retention::{AUDIT, CALLBACKS, MESSAGES, REPLIES};
        Self {
            messages_days: r.days(MESSAGES),
            replies_days: r.days(REPLIES),
            callbacks_days: r.days(CALLBACKS),
            audit_days: r.days(AUDIT),
        }
    }
}

impl Services {
    /// The caller's district's retention as set; district administrators.
    pub async fn own_retention(&self, caller: &Staff) -> Result<Retention, ServiceError> {
        administrator(caller)?;
        self.retention(caller.district_id).await
    }

    /// Sets the caller's district's retention; district administrators.
    pub async fn set_own_retention(
        &self,
        caller: &Staff,
        retention: Retention,
    ) -> Result<(), ServiceError> {
        administrator(caller)?;
        self.set_retention(&Actor::staff(caller.id), caller.district_id, retention)
            .await
    }

    /// Purges the caller's district now (or counts what would go); district
    /// administrators.
    pub async fn purge_own(
        &self,
        caller: &Staff,
        dry_run: bool,
    ) -> Result<PurgeReport, ServiceError> {
        administrator(caller)?;
        self.purge(
            &Actor::staff(caller.id),
            caller.district_id,
            dry_run,
            PurgePace::default(),
        )
        .await
    }

    /// A district's retention as set (`None` where the default holds).
    pub async fn retention(&self, district: DistrictId) -> Result<Retention, ServiceError> {
        self.store
            .retention(district)
            .await?
            .ok_or(ServiceError::Refused(Refusal::NotFound))
    }

    /// Sets how long `district` keeps its records; refused under a minimum.
    pub async fn set_retention(
        &self,
        by: &Actor,
        district: DistrictId,
        retention: Retention,
    ) -> Result<(), ServiceError> {
        retention
            .check()
            .map_err(|short| Refusal::Invalid(short.to_string()))?;
        let mut tx = self.store.begin().await?;
        if !tx.set_district_retention(district, &retention).await? {
            return Err(Refusal::NotFound.into());
        }
        let detail = serde_json::to_value(retention).unwrap_or_default();
        tx.audit(district, by, "district.retention", detail, self.clock.now())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Purges what `district` keeps past its retention, batch after batch until nothing
    /// is left, or with `dry_run` counts what would go. A purge that took something is
    /// audited with what it took.
    pub async fn purge(
        &self,
        by: &Actor,
        district: DistrictId,
        dry_run: bool,
        pace: PurgePace,
    ) -> Result<PurgeReport, ServiceError> {
        let retention = self.retention(district).await?;
        let cutoffs = retention.cutoffs(self.clock.now());
        let mut report = PurgeReport {
            district,
            dry_run,
            retention: RetentionDays::from(&retention),
            purged: Purged::default(),
            batches: 0,
        };
        if dry_run {
            report.purged = self.store.purge_plan(district, &cutoffs).await?;
            return Ok(report);
        }
        loop {
            let started = std::time::Instant::now();
            let batch = self
                .store
                .purge_batch(district, &cutoffs, pace.batch)
                .await?;
            if batch.is_empty() {
                break;
            }
            report.batches += 1;
            report.purged.add(batch);
            tokio::time::sleep(pace.pause.max(started.elapsed())).await;
        }
        if !report.purged.is_empty() {
            let detail = serde_json::to_value(report.purged).unwrap_or_default();
            let mut tx = self.store.begin().await?;
            tx.audit(district, by, "district.purge", detail, self.clock.now())
                .await?;
            tx.commit().await?;
        }
        Ok(report)
    }
}
