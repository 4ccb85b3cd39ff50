//! The [`Store`] of both databases, written once: everything but how a database starts,
//! migrates, imports, settles and measures itself ([`Engine`], implemented by
//! `SqliteStore` and `PostgresStore`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::deliveries::DELIVERY_COLUMNS;
use super::dialect::{Args, Columns, Dialect, Pools};
use super::dispatch::LogWrites;
use super::dispatching::Dispatching;
use super::districts;
use super::roster::RosterWriter;
use super::sending::Sending;
use super::staff::{staff_from_row, STAFF_COLUMNS};
use super::transitions::Transitions;
use super::writes::{insert_audit, Write, WriteDialect};
use super::{api_tokens, schools, staff};
use super::{
    audiences, directory, messages, ApiTokenRecord, ApiTokenView, AuditEntry, Backend, CasOutcome,
    ClassView, DirectoryCounts, District, DistrictSso, FirstAdmin, GradeView, Guardian,
    GuardianDetail, GuardianRef, GuardianView, ImportRecord, MessageContent, MessageListItem,
    MessageScope, MessageSummary, NewGuardian, NewImport, NewMessage, NewSchool, NewStaff,
    PageRequest, Readiness, RecipientView, School, SchoolView, Scope, StaffMember, Store,
    StoreResult, StudentView, WriteTransaction,
};
use super::{DeliveryCount, RecipientTimeline, ReplyView, StateSeries};
use crate::audience::{Audience, AudienceMember, AudienceProblems};
use crate::delivery::{Actor, Change, Delivery, DeliveryEventRecord};
use crate::log::{LogEntry, PartitionId};
use crate::{
    ApiTokenId, DeliveryId, DistrictId, EmailAddress, ImportId, Lane, MessageId, RecipientId, Role,
    SchoolId, Staff, StaffId,
};

/// What a store does its own way.
#[async_trait]
pub(crate) trait Engine: Pools<Db: WriteDialect + Dispatching> {
    fn backend(&self) -> Backend;

    /// Subscribers to the log's writes, told when a write transaction commits.
    fn written(&self) -> &LogWrites;

    /// A new subscription to the log's writes: this process's, and (on PostgreSQL) other
    /// processes' as their notifications arrive.
    fn subscribe_log_writes(&self) -> tokio::sync::watch::Receiver<()>;

    async fn migrate(&self) -> StoreResult<()>;

    async fn readiness(&self) -> StoreResult<Readiness>;

    /// Serializes first-start bootstraps of several processes, in `conn`'s transaction.
    async fn lock_bootstrap(
        &self,
        conn: &mut <Self::Db as sqlx::Database>::Connection,
    ) -> StoreResult<()>;

    async fn begin_roster_import(&self, district: DistrictId)
        -> StoreResult<Box<dyn RosterWriter>>;

    async fn refresh_directory_statistics(&self) -> StoreResult<()>;

    async fn settle(&self) -> StoreResult<()>;
}

#[async_trait]
impl<S: Engine + 'static> Store for S
where
    S: super::dispatch::DispatchStore,
{
    fn backend(&self) -> Backend {
        Engine::backend(self)
    }

    async fn migrate(&self) -> StoreResult<()> {
        Engine::migrate(self).await
    }

    async fn readiness(&self) -> StoreResult<Readiness> {
        Engine::readiness(self).await
    }

    async fn bootstrap(
        &self,
        first: &FirstAdmin,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<(District, Staff)>> {
        let mut tx = self.begin_write().await?;
        self.lock_bootstrap(&mut tx).await?;
        let staff =
            S::Db::fetch_optional(&mut tx, "SELECT id FROM staff LIMIT 1", Args::new()).await?;
        if staff.is_some() {
            return Ok(None);
        }
        let district = districts::insert::<S::Db>(&mut tx, &first.district_name, None, at).await?;
        let admin = NewStaff {
            district_id: district.id,
            email: first.email.clone(),
            display_name: first.display_name.clone(),
            role: Role::DistrictAdmin,
            password_hash: Some(first.password_hash.clone()),
        };
        let mut staff = staff::insert::<S::Db>(&mut tx, &admin, at).await?;
        // The install's first administrator operates it (creates the other districts).
        staff::set_operator::<S::Db>(&mut tx, staff.id, true).await?;
        staff.operator = true;
        tx.commit().await?;
        Ok(Some((district, staff)))
    }

    async fn create_district(&self, name: &str, at: DateTime<Utc>) -> StoreResult<District> {
        districts::insert::<S::Db>(&mut *self.writes().acquire().await?, name, None, at).await
    }

    async fn create_school(&self, school: &NewSchool, at: DateTime<Utc>) -> StoreResult<School> {
        schools::insert::<S::Db>(&mut *self.writes().acquire().await?, school, at).await
    }

    async fn create_staff(&self, staff: &NewStaff, at: DateTime<Utc>) -> StoreResult<Staff> {
        let mut tx = self.begin_write().await?;
        let staff = staff::insert::<S::Db>(&mut tx, staff, at).await?;
        tx.commit().await?;
        Ok(staff)
    }

    async fn staff_by_email(&self, email: &EmailAddress) -> StoreResult<Option<Staff>> {
        let sql =
            format!("SELECT {STAFF_COLUMNS} FROM staff WHERE email = $1 AND disabled_at IS NULL");
        S::Db::fetch_optional(
            &mut *self.reads().acquire().await?,
            &sql,
            Args::new().text(email.as_str()),
        )
        .await?
        .as_ref()
        .map(staff_from_row)
        .transpose()
    }

    async fn password_hash(&self, staff: StaffId) -> StoreResult<Option<String>> {
        Ok(S::Db::fetch_optional(
            &mut *self.reads().acquire().await?,
            "SELECT password_hash FROM staff WHERE id = $1 AND disabled_at IS NULL",
            Args::new().id(staff),
        )
        .await?
        .map(|row| row.opt_text("password_hash"))
        .transpose()?
        .flatten())
    }

    async fn staff_members(&self, district: DistrictId) -> StoreResult<Vec<StaffMember>> {
        let all = PageRequest {
            limit: u32::MAX,
            ..PageRequest::default()
        };
        let mut conn = self.reads().acquire().await?;
        staff_members::<S::Db>(&mut conn, district, &all).await
    }

    async fn staff_page(
        &self,
        district: DistrictId,
        page: &PageRequest,
    ) -> StoreResult<Vec<StaffMember>> {
        let mut conn = self.reads().acquire().await?;
        staff_members::<S::Db>(&mut conn, district, page).await
    }

    async fn staff_member_by_email(
        &self,
        district: DistrictId,
        email: &EmailAddress,
    ) -> StoreResult<Option<StaffMember>> {
        let mut conn = self.reads().acquire().await?;
        let sql = staff_members_where("district_id = $1 AND email = $2");
        let found = S::Db::fetch_optional(
            &mut conn,
            &sql,
            Args::new().id(district).text(email.as_str()),
        )
        .await?
        .as_ref()
        .map(staff_member_from_row)
        .transpose()?;
        let mut members: Vec<StaffMember> = found.into_iter().collect();
        assign_schools::<S::Db>(&mut conn, &mut members).await?;
        Ok(members.pop())
    }

    async fn api_token(&self, id: ApiTokenId) -> StoreResult<Option<ApiTokenRecord>> {
        let Some(row) = S::Db::fetch_optional(
            &mut *self.reads().acquire().await?,
            "SELECT t.id AS token_id, t.name AS token_name, t.secret_hash, t.expires_at, t.revoked_at, \
                    t.last_used_at, \
                    s.id, s.district_id, s.email, s.display_name, s.role, s.created_at, s.operator, \
                    d.suspended_at AS district_suspended_at \
             FROM api_tokens t JOIN staff s ON s.id = t.staff_id JOIN districts d ON d.id = s.district_id \
             WHERE t.id = $1 AND s.disabled_at IS NULL",
            Args::new().id(id),
        )
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(ApiTokenRecord {
            id: ApiTokenId::from_uuid(row.id("token_id")?),
            name: row.text("token_name")?,
            staff: staff_from_row(&row)?,
            secret_hash: row.opt_bytes("secret_hash")?.unwrap_or_default(),
            expires_at: row.opt_time("expires_at")?,
            revoked_at: row.opt_time("revoked_at")?,
            last_used_at: row.opt_time("last_used_at")?,
            district_suspended_at: row.opt_time("district_suspended_at")?,
        }))
    }

    async fn token_used(
        &self,
        id: ApiTokenId,
        at: DateTime<Utc>,
        granularity: chrono::Duration,
    ) -> StoreResult<()> {
        api_tokens::mark_used::<S::Db>(&mut *self.writes().acquire().await?, id, at, granularity)
            .await
    }

    async fn api_tokens(
        &self,
        district: DistrictId,
        owner: Option<StaffId>,
        excluding: &[&str],
    ) -> StoreResult<Vec<ApiTokenView>> {
        let mut args = Args::new().id(district).opt_id(owner);
        let excluded = if excluding.is_empty() {
            String::new()
        } else {
            format!(
                " AND t.name NOT IN ({})",
                args.texts(excluding.iter().copied())
            )
        };
        let sql = format!(
            "SELECT t.id, t.name, t.staff_id, s.email, t.created_at, t.last_used_at, t.expires_at, \
                    t.revoked_at \
             FROM api_tokens t JOIN staff s ON s.id = t.staff_id \
             WHERE t.district_id = $1 AND ($2 IS NULL OR t.staff_id = $2){excluded} \
             ORDER BY t.created_at DESC, t.id DESC"
        );
        S::Db::fetch_all(&mut *self.reads().acquire().await?, &sql, args)
            .await?
            .iter()
            .map(|row| {
                Ok(ApiTokenView {
                    id: ApiTokenId::from_uuid(row.id("id")?),
                    name: row.text("name")?,
                    owner_id: StaffId::from_uuid(row.id("staff_id")?),
                    owner_email: row.text("email")?,
                    created_at: row.time("created_at")?,
                    last_used_at: row.opt_time("last_used_at")?,
                    expires_at: row.opt_time("expires_at")?,
                    revoked_at: row.opt_time("revoked_at")?,
                })
            })
            .collect()
    }

    async fn create_guardian(
        &self,
        guardian: &NewGuardian,
        at: DateTime<Utc>,
    ) -> StoreResult<Guardian> {
        super::guardian::insert::<S::Db>(&mut *self.writes().acquire().await?, guardian, at).await
    }

    async fn create_message(&self, message: &NewMessage, at: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        S::Db::write_message(&mut tx, message, at).await?;
        super::sending::write_chunk::<S::Db>(&mut tx, message, &message.recipients, at).await?;
        tx.commit().await?;
        self.written().wrote();
        Ok(())
    }

    async fn delivery(&self, id: DeliveryId) -> StoreResult<Option<Delivery>> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1");
        S::Db::fetch_optional(
            &mut *self.reads().acquire().await?,
            &sql,
            Args::new().id(id),
        )
        .await?
        .as_ref()
        .map(super::deliveries::from_row)
        .transpose()
    }

    async fn read_log(
        &self,
        lane: Lane,
        partition: PartitionId,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<LogEntry>> {
        S::Db::fetch_all(
            &mut *self.reads().acquire().await?,
            "SELECT \"offset\", district_id, delivery_id FROM log_entries \
             WHERE lane = $1 AND partition = $2 AND \"offset\" > $3 ORDER BY \"offset\" LIMIT $4",
            Args::new()
                .text(lane.as_str())
                .int(partition.get() as i64)
                .int(after.unwrap_or(-1))
                .int(limit),
        )
        .await?
        .iter()
        .map(|row| {
            Ok(LogEntry {
                lane,
                partition,
                offset: row.i64("offset")?,
                district_id: DistrictId::from_uuid(row.id("district_id")?),
                delivery_id: DeliveryId::from_uuid(row.id("delivery_id")?),
            })
        })
        .collect()
    }

    async fn apply_transitions(&self, batch: &[Change]) -> StoreResult<Vec<CasOutcome>> {
        let mut tx = self.begin_write().await?;
        let mut ids: Vec<Uuid> = batch
            .iter()
            .map(|c| *c.transition.delivery_id.as_uuid())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > 1 {
            <S::Db as Transitions>::lock_deliveries(&mut tx, &ids).await?;
        }
        let outcomes = super::transitions::apply::<S::Db>(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn delivery_events(&self, id: DeliveryId) -> StoreResult<Vec<DeliveryEventRecord>> {
        super::deliveries::events::<S::Db>(&mut *self.reads().acquire().await?, id.into()).await
    }

    async fn directory_counts(&self, district: DistrictId) -> StoreResult<DirectoryCounts> {
        directory::counts::<S::Db>(&mut *self.reads().acquire().await?, district.into()).await
    }

    async fn district_sizes(
        &self,
    ) -> StoreResult<std::collections::HashMap<DistrictId, super::DistrictSize>> {
        directory::sizes::<S::Db>(&mut *self.reads().acquire().await?).await
    }

    async fn schools(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Vec<SchoolView>> {
        directory::schools::<S::Db>(&mut *self.reads().acquire().await?, scope, page).await
    }

    async fn classes(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Vec<ClassView>> {
        directory::classes::<S::Db>(&mut *self.reads().acquire().await?, scope, page).await
    }

    async fn students(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Vec<StudentView>> {
        directory::students::<S::Db>(&mut *self.reads().acquire().await?, scope, page).await
    }

    async fn guardians(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Vec<GuardianView>> {
        directory::guardians::<S::Db>(&mut *self.reads().acquire().await?, scope, page).await
    }

    async fn grades(&self, scope: &Scope) -> StoreResult<Vec<GradeView>> {
        directory::grades::<S::Db>(&mut *self.reads().acquire().await?, scope).await
    }

    async fn guardian_detail(
        &self,
        scope: &Scope,
        which: &GuardianRef,
    ) -> StoreResult<Option<GuardianDetail>> {
        directory::guardian_detail::<S::Db>(&mut *self.reads().acquire().await?, scope, which).await
    }

    async fn district(&self, id: DistrictId) -> StoreResult<Option<District>> {
        districts::get::<S::Db>(&mut *self.reads().acquire().await?, id).await
    }

    async fn districts(&self) -> StoreResult<Vec<District>> {
        districts::all::<S::Db>(&mut *self.reads().acquire().await?).await
    }

    async fn district_sso(&self, district: DistrictId) -> StoreResult<Option<DistrictSso>> {
        districts::sso::<S::Db>(&mut *self.reads().acquire().await?, district).await
    }

    async fn sso_districts(&self) -> StoreResult<Vec<District>> {
        districts::sso_districts::<S::Db>(&mut *self.reads().acquire().await?).await
    }

    async fn begin_roster_import(
        &self,
        district: DistrictId,
    ) -> StoreResult<Box<dyn RosterWriter>> {
        Engine::begin_roster_import(self, district).await
    }

    async fn record_failed_import(
        &self,
        import: &NewImport,
        started_at: DateTime<Utc>,
        error: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut conn = self.writes().acquire().await?;
        super::roster::insert_import::<S::Db>(&mut conn, import, started_at, Err(error), at).await
    }

    async fn import_record(
        &self,
        district: DistrictId,
        id: ImportId,
    ) -> StoreResult<Option<ImportRecord>> {
        let Some(row) = S::Db::fetch_optional(
            &mut *self.reads().acquire().await?,
            "SELECT id, district_id, staff_id, source_name, status, started_at, finished_at, report, error \
             FROM imports WHERE id = $1 AND district_id = $2",
            Args::new().id(id).id(district),
        )
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(ImportRecord {
            id: ImportId::from_uuid(row.id("id")?),
            district_id: DistrictId::from_uuid(row.id("district_id")?),
            staff_id: row.opt_id("staff_id")?.map(StaffId::from_uuid),
            source_name: row.text("source_name")?,
            status: row.text("status")?,
            started_at: row.time("started_at")?,
            finished_at: row.opt_time("finished_at")?,
            report: row.opt_json("report")?,
            error: row.opt_text("error")?,
        }))
    }

    async fn resolve_audience(
        &self,
        scope: &Scope,
        audience: &Audience,
    ) -> StoreResult<Result<Vec<AudienceMember>, AudienceProblems>> {
        audiences::resolve::<S::Db>(self.reads(), scope, audience).await
    }

    async fn begin(&self) -> StoreResult<Box<dyn WriteTransaction>> {
        Ok(Box::new(Write::new(
            self.begin_write().await?,
            self.written().clone(),
        )))
    }

    async fn message_summary(
        &self,
        scope: &MessageScope,
        id: MessageId,
    ) -> StoreResult<Option<MessageSummary>> {
        messages::summary::<S::Db>(&mut *self.reads().acquire().await?, scope, id.into()).await
    }

    async fn messages(
        &self,
        scope: &MessageScope,
        before: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<MessageListItem>> {
        messages::list::<S::Db>(&mut *self.reads().acquire().await?, scope, before, limit).await
    }

    async fn recipients(
        &self,
        scope: &MessageScope,
        message: MessageId,
        acked: Option<bool>,
        after: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Option<Vec<RecipientView>>> {
        let mut conn = self.reads().acquire().await?;
        messages::recipients::<S::Db>(&mut conn, scope, message.into(), acked, after, limit).await
    }

    async fn message_content(
        &self,
        scope: &MessageScope,
        id: MessageId,
    ) -> StoreResult<Option<MessageContent>> {
        messages::content::<S::Db>(&mut *self.reads().acquire().await?, scope, id.into()).await
    }

    async fn pending_guardians(&self, id: MessageId) -> StoreResult<Vec<Uuid>> {
        messages::pending_guardians::<S::Db>(&mut *self.reads().acquire().await?, id.into()).await
    }

    async fn recipient_timeline(
        &self,
        scope: &MessageScope,
        message: MessageId,
        recipient: RecipientId,
    ) -> StoreResult<Option<RecipientTimeline>> {
        let mut conn = self.reads().acquire().await?;
        messages::recipient_timeline::<S::Db>(&mut conn, scope, message.into(), recipient.into())
            .await
    }

    async fn state_series(
        &self,
        scope: &MessageScope,
        message: MessageId,
        now: &[DeliveryCount],
        steps: u32,
    ) -> StoreResult<Option<StateSeries>> {
        let mut conn = self.reads().acquire().await?;
        messages::state_series::<S::Db>(&mut conn, scope, message.into(), now, steps).await
    }

    async fn message_replies(
        &self,
        scope: &MessageScope,
        message: MessageId,
        limit: u32,
    ) -> StoreResult<Option<Vec<ReplyView>>> {
        messages::replies::<S::Db>(
            &mut *self.reads().acquire().await?,
            scope,
            message.into(),
            limit,
        )
        .await
    }

    async fn refresh_directory_statistics(&self) -> StoreResult<()> {
        Engine::refresh_directory_statistics(self).await
    }

    async fn settle(&self) -> StoreResult<()> {
        Engine::settle(self).await
    }

    async fn audit_entries(
        &self,
        district: DistrictId,
        limit: u32,
    ) -> StoreResult<Vec<AuditEntry>> {
        S::Db::fetch_all(
            &mut *self.reads().acquire().await?,
            "SELECT a.staff_id, s.email AS staff_email, a.action, a.detail, a.at FROM audit_log a \
             LEFT JOIN staff s ON s.id = a.staff_id WHERE a.district_id = $1 \
             ORDER BY a.at DESC, a.id DESC LIMIT $2",
            Args::new().id(district).int(limit),
        )
        .await?
        .iter()
        .map(|row| {
            Ok(AuditEntry {
                staff_id: row.opt_id("staff_id")?.map(StaffId::from_uuid),
                staff_email: row.opt_text("staff_email")?,
                action: row.text("action")?,
                detail: row.json("detail")?,
                at: row.time("at")?,
            })
        })
        .collect()
    }

    async fn audit(
        &self,
        district_id: DistrictId,
        actor: &Actor,
        action: &str,
        detail: serde_json::Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut conn = self.writes().acquire().await?;
        insert_audit::<S::Db>(&mut conn, district_id, actor, action, detail, at).await
    }
}

/// A new district, on `conn`.
/// Staff members as administrators see them, `condition` choosing which
/// ([`staff_member_from_row`] reads them).
fn staff_members_where(condition: &str) -> String {
    format!(
        "SELECT {STAFF_COLUMNS}, disabled_at IS NOT NULL AS disabled, \
                password_hash IS NOT NULL AS has_password, \
                (SELECT max(t.created_at) FROM api_tokens t \
                 WHERE t.staff_id = staff.id AND t.name = '{session}') AS last_sign_in \
         FROM staff WHERE {condition}",
        session = crate::services::accounts::SESSION_NAME
    )
}

/// A page of a district's staff members in email order: those after the member
/// `page.after`, whose name or email contains `page.search`, or only `page.only`.
async fn staff_members<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    page: &PageRequest,
) -> StoreResult<Vec<StaffMember>> {
    // Ids bound as ids, as the directory's pages do: the primary key finds the row
    // after which the page starts.
    let sql = staff_members_where(
        "district_id = $1 \
         AND ($2 IS NULL OR email > (SELECT email FROM staff WHERE id = $2)) \
         AND ($3 IS NULL OR lower(display_name) LIKE $3 ESCAPE '\\' OR email LIKE $3 ESCAPE '\\') \
         AND ($4 IS NULL OR id = $4) \
         ORDER BY email LIMIT $5",
    );
    let args = Args::new()
        .id(district)
        .opt_id(page.after)
        .opt_text(page.pattern())
        .opt_id(page.only)
        .int(i64::from(page.limit));
    let mut members = D::fetch_all(conn, &sql, args)
        .await?
        .iter()
        .map(staff_member_from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    assign_schools::<D>(conn, &mut members).await?;
    Ok(members)
}

/// Fills in the schools each of `members` is assigned to.
async fn assign_schools<D: Dialect>(
    conn: &mut D::Connection,
    members: &mut [StaffMember],
) -> StoreResult<()> {
    let Some(first) = members.first() else {
        return Ok(());
    };
    let mut args = Args::new().id(first.staff.district_id);
    let ids = args.ids(
        &members
            .iter()
            .map(|m| *m.staff.id.as_uuid())
            .collect::<Vec<_>>(),
    );
    let sql = format!(
        "SELECT staff_id, school_id FROM staff_schools WHERE district_id = $1 AND staff_id IN ({ids}) \
         ORDER BY school_id"
    );
    let mut schools = std::collections::HashMap::<Uuid, Vec<SchoolId>>::new();
    for row in &D::fetch_all(conn, &sql, args).await? {
        schools
            .entry(row.id("staff_id")?)
            .or_default()
            .push(SchoolId::from_uuid(row.id("school_id")?));
    }
    for member in members {
        member.schools = schools
            .remove(member.staff.id.as_uuid())
            .unwrap_or_default();
    }
    Ok(())
}

fn staff_member_from_row(row: &impl Columns) -> StoreResult<StaffMember> {
    Ok(StaffMember {
        staff: staff_from_row(row)?,
        disabled: row.flag("disabled")?,
        has_password: row.flag("has_password")?,
        last_sign_in: row.opt_time("last_sign_in")?,
        schools: Vec::new(),
    })
}
