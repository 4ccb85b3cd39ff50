//! The write transaction of an application service ([`WriteTransaction`]), implemented
//! once for both stores over the Dialect: every write a service makes, its audit row and
//! its idempotency record commit together or not at all.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::dialect::{Args, Dialect};
use super::dispatch::LogWrites;
use super::sending::Sending;
use super::transitions::Transitions;
use super::{api_tokens, contacts, districts, schools, staff};
use super::{
    messages, CancelOutcome, CasOutcome, ContactPointView, District, IdempotencyClaim,
    MessageScope, NewMessage, NewStaff, OptOutView, PlanChunk, Scope, SendRefusal, SendSummary,
    StoreResult, WriteTransaction,
};
use crate::audience::Audience;
use crate::delivery::{Actor, ActorKind, Change};
use crate::quiet_hours::QuietHours;
use crate::{
    ApiTokenId, Channel, ContactPointId, DistrictId, GuardianId, MessageId, Role, SchoolId, Staff,
    StaffId,
};

/// What a database must do for a write transaction, with what only some do differently.
#[async_trait]
pub(crate) trait WriteDialect: Dialect + Sending + Transitions {
    /// Claims an idempotency key (see [`WriteTransaction::claim_idempotency_key`]).
    async fn claim_idempotency_key(
        conn: &mut Self::Connection,
        scope: &str,
        key: &str,
        request_hash: &[u8],
        keep: Duration,
        at: DateTime<Utc>,
    ) -> StoreResult<IdempotencyClaim> {
        messages::claim_idempotency_key::<Self>(conn, scope, key, request_hash, keep, at).await
    }
}

/// A write transaction, and the log's subscribers to tell when it commits.
pub(crate) struct Write<D: sqlx::Database> {
    tx: sqlx::Transaction<'static, D>,
    written: LogWrites,
}

impl<D: WriteDialect> Write<D> {
    pub fn new(tx: sqlx::Transaction<'static, D>, written: LogWrites) -> Self {
        Self { tx, written }
    }
}

/// Writes an audit row on `conn`.
pub(crate) async fn insert_audit<D: Dialect>(
    conn: &mut D::Connection,
    district_id: DistrictId,
    actor: &Actor,
    action: &str,
    detail: serde_json::Value,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    let staff_id = match actor.kind {
        ActorKind::Staff => actor.reference.parse::<Uuid>().ok(),
        _ => None,
    };
    D::execute(
        conn,
        "INSERT INTO audit_log (id, district_id, staff_id, action, detail, at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        Args::new()
            .id(Uuid::now_v7())
            .id(district_id)
            .opt_id(staff_id)
            .text(action)
            .json(detail)
            .time(at),
    )
    .await?;
    Ok(())
}

#[async_trait]
impl<D: WriteDialect> WriteTransaction for Write<D> {
    async fn claim_idempotency_key(
        &mut self,
        scope: &str,
        key: &str,
        request_hash: &[u8],
        keep: Duration,
        at: DateTime<Utc>,
    ) -> StoreResult<IdempotencyClaim> {
        D::claim_idempotency_key(&mut self.tx, scope, key, request_hash, keep, at).await
    }

    async fn complete_idempotency_key(
        &mut self,
        scope: &str,
        key: &str,
        status: u16,
        body: &[u8],
    ) -> StoreResult<()> {
        messages::complete_idempotency_key::<D>(&mut self.tx, scope, key, status, body).await
    }

    async fn send_message(
        &mut self,
        message: &NewMessage,
        scope: &Scope,
        audience: &Audience,
        max_recipients: Option<usize>,
        plan: &PlanChunk,
        chunk: usize,
        at: DateTime<Utc>,
    ) -> StoreResult<Result<SendSummary, SendRefusal>> {
        super::sending::send_streamed::<D>(
            &mut self.tx,
            message,
            scope,
            audience,
            max_recipients,
            plan,
            chunk,
            at,
        )
        .await
    }

    async fn audit(
        &mut self,
        district_id: DistrictId,
        actor: &Actor,
        action: &str,
        detail: serde_json::Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        insert_audit::<D>(&mut self.tx, district_id, actor, action, detail, at).await
    }

    async fn add_contact_point(
        &mut self,
        district: DistrictId,
        guardian: GuardianId,
        kind: Channel,
        address: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ContactPointView> {
        let (district, guardian) = (district.into(), guardian.into());
        contacts::add_contact_point::<D>(&mut self.tx, district, guardian, kind, address, at).await
    }

    async fn register_device(
        &mut self,
        district: DistrictId,
        guardian: GuardianId,
        platform: crate::PushPlatform,
        token: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ContactPointView> {
        let (district, guardian) = (district.into(), guardian.into());
        contacts::register_device::<D>(&mut self.tx, district, guardian, platform, token, at).await
    }

    async fn retire_address(
        &mut self,
        guardian: GuardianId,
        channel: Channel,
        address: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        contacts::retire_address::<D>(&mut self.tx, guardian.into(), channel, address, reason, at)
            .await
    }

    async fn set_contact_point_active(
        &mut self,
        guardian: GuardianId,
        contact_point: ContactPointId,
        active: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<ContactPointView>> {
        let (guardian, contact_point) = (guardian.into(), contact_point.into());
        contacts::set_contact_point_active::<D>(&mut self.tx, guardian, contact_point, active, at)
            .await
    }

    async fn add_opt_out(
        &mut self,
        district: DistrictId,
        guardian: GuardianId,
        channel: Channel,
        source: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<OptOutView> {
        let (district, guardian) = (district.into(), guardian.into());
        contacts::add_opt_out::<D>(&mut self.tx, district, guardian, channel, source, at).await
    }

    async fn set_guardian_preferences(
        &mut self,
        guardian: GuardianId,
        language: Option<&str>,
        quiet: Option<(u16, u16)>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        super::guardian::set_preferences::<D>(&mut self.tx, guardian.into(), language, quiet, at)
            .await
    }

    async fn end_sibling_session(
        &mut self,
        session: Uuid,
        other: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        super::guardian::end_sibling_session::<D>(&mut self.tx, session, other, at).await
    }

    async fn revoke_opt_out(
        &mut self,
        guardian: GuardianId,
        opt_out: Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<OptOutView>> {
        contacts::revoke_opt_out::<D>(&mut self.tx, guardian.into(), opt_out, at).await
    }

    async fn set_school_quiet_hours(
        &mut self,
        district: DistrictId,
        school: &str,
        quiet: Option<QuietHours>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        schools::set_quiet_hours::<D>(&mut self.tx, district, school, quiet, at).await
    }

    async fn create_district(
        &mut self,
        name: &str,
        timezone: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<District> {
        districts::insert::<D>(&mut self.tx, name, Some(timezone), at).await
    }

    async fn set_district_locale(
        &mut self,
        district: DistrictId,
        default_language: &str,
        timezone: &str,
    ) -> StoreResult<bool> {
        districts::set_locale::<D>(&mut self.tx, district, default_language, timezone).await
    }

    async fn rename_district(&mut self, district: DistrictId, name: &str) -> StoreResult<bool> {
        districts::rename::<D>(&mut self.tx, district, name).await
    }

    async fn set_district_suspended(
        &mut self,
        district: DistrictId,
        suspended_at: Option<DateTime<Utc>>,
    ) -> StoreResult<bool> {
        districts::set_suspended::<D>(&mut self.tx, district, suspended_at).await
    }

    async fn set_operator(&mut self, staff: StaffId, operator: bool) -> StoreResult<bool> {
        staff::set_operator::<D>(&mut self.tx, staff, operator).await
    }

    async fn set_district_quotas(
        &mut self,
        district: DistrictId,
        max_recipients_per_message: Option<i32>,
        max_messages_per_hour: Option<i32>,
    ) -> StoreResult<()> {
        districts::set_quotas::<D>(
            &mut self.tx,
            district,
            max_recipients_per_message,
            max_messages_per_hour,
        )
        .await
    }

    async fn rewind_partition(
        &mut self,
        lane: crate::Lane,
        partition: crate::log::PartitionId,
        from_offset: i64,
        at: DateTime<Utc>,
    ) -> StoreResult<super::rewind::RewindOutcome> {
        super::rewind::rewind::<D>(&mut self.tx, lane, partition, from_offset, at).await
    }

    async fn erase_guardian(
        &mut self,
        district: DistrictId,
        guardian: GuardianId,
        at: DateTime<Utc>,
    ) -> StoreResult<super::guardian_data::EraseOutcome> {
        super::guardian_data::erase::<D>(&mut self.tx, district, guardian, at).await
    }

    async fn set_district_retention(
        &mut self,
        district: DistrictId,
        retention: &crate::retention::Retention,
    ) -> StoreResult<bool> {
        districts::set_retention::<D>(&mut self.tx, district, retention).await
    }

    async fn set_district_sso(
        &mut self,
        district: DistrictId,
        issuer: &str,
        client_id: &str,
        client_secret_sealed: &[u8],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        districts::set_sso::<D>(
            &mut self.tx,
            district,
            issuer,
            client_id,
            client_secret_sealed,
            at,
        )
        .await
    }

    async fn remove_district_sso(&mut self, district: DistrictId) -> StoreResult<bool> {
        districts::remove_sso::<D>(&mut self.tx, district).await
    }

    async fn create_token(
        &mut self,
        id: ApiTokenId,
        staff: &Staff,
        name: &str,
        secret_hash: &[u8],
        at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        api_tokens::insert::<D>(&mut self.tx, id, staff, name, secret_hash, at, expires_at).await
    }

    async fn revoke_api_token(
        &mut self,
        id: ApiTokenId,
        staff: StaffId,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        api_tokens::revoke::<D>(&mut self.tx, id, staff, at).await
    }

    async fn create_staff(&mut self, staff: &NewStaff, at: DateTime<Utc>) -> StoreResult<Staff> {
        staff::insert::<D>(&mut self.tx, staff, at).await
    }

    async fn set_staff_schools(
        &mut self,
        district: DistrictId,
        staff: StaffId,
        schools: &[SchoolId],
    ) -> StoreResult<()> {
        staff::set_schools::<D>(&mut self.tx, district, staff, schools).await
    }

    async fn set_staff_role(
        &mut self,
        district: DistrictId,
        staff: StaffId,
        role: Role,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        staff::set_role::<D>(&mut self.tx, district, staff, role, at).await
    }

    async fn set_staff_disabled(
        &mut self,
        district: DistrictId,
        staff: StaffId,
        disabled: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        staff::set_disabled::<D>(&mut self.tx, district, staff, disabled, at).await
    }

    async fn set_password_hash(
        &mut self,
        staff: StaffId,
        hash: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        staff::set_password_hash::<D>(&mut self.tx, staff, hash, at).await
    }

    async fn revoke_tokens_named(
        &mut self,
        staff: StaffId,
        name: &str,
        keep: Option<ApiTokenId>,
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        api_tokens::revoke_named::<D>(&mut self.tx, staff, name, keep, at).await
    }

    async fn cancel_message(
        &mut self,
        scope: &MessageScope,
        message: MessageId,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<CancelOutcome>> {
        Ok(
            messages::cancel::<D>(&mut self.tx, scope, message.into(), actor, at)
                .await?
                .map(|(cancelled, already_sent)| CancelOutcome {
                    cancelled,
                    already_sent,
                }),
        )
    }

    async fn apply_transitions(&mut self, batch: &[Change]) -> StoreResult<Vec<CasOutcome>> {
        super::transitions::apply::<D>(&mut self.tx, batch).await
    }

    async fn commit(self: Box<Self>) -> StoreResult<()> {
        self.tx.commit().await?;
        self.written.wrote();
        Ok(())
    }
}
