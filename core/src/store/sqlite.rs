//! The SQLite store: the embedded default. One file, WAL journal, foreign keys on.
//! Ids are stored as hyphenated text and timestamps as RFC 3339 text in UTC.
//!
//! Every write takes its turn on a connection of its own, one transaction after another in
//! the order they asked (a roster import holds the turn while it writes through another
//! connection); the other connections read, migrate and checkpoint. SQLite has one
//! write lock per file: writers sharing it through the busy timeout sleep between looks at
//! the lock (up to 100 ms), so the lock sat idle while a send's outcome waited a second or
//! more; each connection's page cache is thrown away whenever another connection has
//! written; and a transaction that read before another connection's commit cannot write
//! after it. One writer keeps its cache and hands over at once. A transaction that reads
//! before it writes begins `IMMEDIATE`, holding the lock from its start (against other
//! processes). The writer leaves copying the journal into the database file (the
//! checkpoint) to the other connections, so that no write waits behind it.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use super::{
    readiness_from, ApiTokenRecord, Backend, CasOutcome, ConnectOptions, District, FirstAdmin,
    Guardian, NewGuardian, NewMessage, NewSchool, NewStaff, Readiness, School, Store, StoreError,
    StoreResult,
};
use crate::delivery::{Actor, Change, Delivery, DeliveryEventRecord, DeliveryState};
use crate::{ApiTokenId, DeliveryId, DistrictId, EmailAddress, Staff};

/// Rows per multi-row INSERT: 15 columns × 2,000 stays under SQLite's 32,766 parameters.
const BULK_ROWS: usize = 2_000;

/// How long a write waits for its turn: behind the writes queued before it in this
/// process, and for another process's write lock. A roster import holds the turn for its
/// whole transaction (about 10 s for 100,000 students); a dispatcher whose outcomes could
/// not be written would send them again, so writes wait rather than fail.
const WRITE_WAIT: Duration = Duration::from_secs(300);

/// The migrations of `migrations/sqlite/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    written: super::dispatch::LogWrites,
    /// The one write connection (see the module's doc).
    writer: SqlitePool,
    /// Wakes the checkpointer: the writer has written.
    wrote: tokio::sync::mpsc::Sender<()>,
}

impl SqliteStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> StoreResult<Self> {
        let connect_error = |source| StoreError::Connect {
            url: super::redact_url(url),
            source,
        };
        let connect_options = SqliteConnectOptions::from_str(url)
            .map_err(connect_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // No checkpoint on the writer (the checkpointer does it), and a statement's undo
        // journal kept in memory rather than spilled to a temporary file: a batch's
        // multi-row update outgrows the 64 KiB SQLite keeps in memory by default.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(WRITE_WAIT)
            .connect_with(
                connect_options
                    .clone()
                    .busy_timeout(WRITE_WAIT)
                    .pragma("wal_autocheckpoint", "0")
                    .pragma("temp_store", "memory"),
            )
            .await
            .map_err(connect_error)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect_options)
            .await
            .map_err(connect_error)?;
        let (wrote, writes) = tokio::sync::mpsc::channel(1);
        tokio::spawn(checkpoint_after_writes(pool.clone(), writes));
        Ok(Self {
            pool,
            written: Default::default(),
            writer,
            wrote,
        })
    }

    /// The write connection, for a write about to be made.
    fn write_pool(&self) -> &SqlitePool {
        // Full means a checkpoint is already coming.
        let _ = self.wrote.try_send(());
        &self.writer
    }

    /// A transaction on the write connection that holds SQLite's write lock from its
    /// start: one that reads before it writes could otherwise not write once another
    /// process has committed after its first read (a read snapshot cannot become a
    /// write).
    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, Sqlite>> {
        Ok(self.write_pool().begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Writes to the log: one process does all the writing on SQLite.
    fn subscribe_log_writes(&self) -> tokio::sync::watch::Receiver<()> {
        self.written.subscribe()
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Copies the writer's transactions from the journal into the database file: a while
/// after each write (time for it to commit, and for more to gather), never more than one
/// at a time, and without blocking writers or readers (a passive checkpoint). Frames a
/// checkpoint missed go with the next one; the last connection to close copies the rest.
/// Ends when the store is dropped.
async fn checkpoint_after_writes(pool: SqlitePool, mut writes: tokio::sync::mpsc::Receiver<()>) {
    while writes.recv().await.is_some() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            tracing::warn!(error = %super::error_chain(&error), "could not checkpoint the SQLite journal");
        }
    }
}

fn text_id(id: impl Into<Uuid>) -> String {
    id.into().hyphenated().to_string()
}

fn uuid(row: &SqliteRow, column: &str) -> StoreResult<Uuid> {
    let raw: String = row.try_get(column)?;
    Uuid::parse_str(&raw).map_err(|e| corrupt(format!("{column}: {e}")))
}

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

fn parse<T: FromStr>(row: &SqliteRow, column: &str) -> StoreResult<T>
where
    T::Err: std::fmt::Display,
{
    let raw: String = row.try_get(column)?;
    raw.parse().map_err(|e| corrupt(format!("{column}: {e}")))
}

use super::directory::district_from_row;
use super::roster::{ImportSettings, RosterTx};
use super::sending::Sending;
use super::writes::{insert_audit, insert_staff, staff_from_row, Write, WriteDialect};
use super::{messages, DELIVERY_COLUMNS};

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn readiness(&self) -> StoreResult<Readiness> {
        let table: Option<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        )
        .fetch_optional(&self.pool)
        .await?;
        let applied: Vec<i64> = match table {
            Some(_) => {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&self.pool)
                    .await?
            }
            None => Vec::new(),
        };
        Ok(readiness_from(Backend::Sqlite, &MIGRATOR, &applied))
    }

    async fn bootstrap(
        &self,
        first: &FirstAdmin,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<(District, Staff)>> {
        let mut tx = self.begin_write().await?;
        // The insert is the transaction's first statement: it takes the write lock, so a
        // second process bootstrapping at the same moment waits and then finds the staff.
        let district = sqlx::query(
            "INSERT INTO districts (id, name, created_at) \
             SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM staff) \
             RETURNING id, name, default_language, timezone, created_at, max_recipients_per_message, max_messages_per_hour",
        )
        .bind(text_id(DistrictId::new()))
        .bind(&first.district_name)
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(district) = district else {
            return Ok(None);
        };
        let district = district_from_row(&district)?;
        let staff = insert_staff::<sqlx::Sqlite>(
            &mut tx,
            &NewStaff {
                district_id: district.id,
                email: first.email.clone(),
                display_name: first.display_name.clone(),
                role: crate::Role::DistrictAdmin,
                password_hash: Some(first.password_hash.clone()),
            },
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(Some((district, staff)))
    }

    async fn create_district(&self, name: &str, at: DateTime<Utc>) -> StoreResult<District> {
        let row = sqlx::query(
            "INSERT INTO districts (id, name, created_at) VALUES ($1, $2, $3) \
             RETURNING id, name, default_language, timezone, created_at, max_recipients_per_message, max_messages_per_hour",
        )
        .bind(text_id(DistrictId::new()))
        .bind(name)
        .bind(at)
        .fetch_one(self.write_pool())
        .await?;
        district_from_row(&row)
    }

    async fn create_school(&self, school: &NewSchool, at: DateTime<Utc>) -> StoreResult<School> {
        let id = crate::SchoolId::new();
        sqlx::query(
            "INSERT INTO schools (id, district_id, sourced_id, name, timezone, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(text_id(id))
        .bind(text_id(school.district_id))
        .bind(&school.sourced_id)
        .bind(&school.name)
        .bind(&school.timezone)
        .bind(at)
        .execute(self.write_pool())
        .await?;
        Ok(School {
            id,
            district_id: school.district_id,
            name: school.name.clone(),
            timezone: school.timezone.clone(),
            sourced_id: school.sourced_id.clone(),
        })
    }

    async fn create_staff(&self, staff: &NewStaff, at: DateTime<Utc>) -> StoreResult<Staff> {
        let mut tx = self.begin_write().await?;
        let staff = insert_staff::<sqlx::Sqlite>(&mut tx, staff, at).await?;
        tx.commit().await?;
        Ok(staff)
    }

    async fn staff_by_email(&self, email: &EmailAddress) -> StoreResult<Option<Staff>> {
        sqlx::query(
            "SELECT id, district_id, email, display_name, role, created_at FROM staff \
             WHERE email = $1 AND disabled_at IS NULL",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(|row| staff_from_row(&row))
        .transpose()
    }

    async fn password_hash(&self, staff: crate::StaffId) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT password_hash FROM staff WHERE id = $1 AND disabled_at IS NULL",
        )
        .bind(text_id(staff))
        .fetch_optional(&self.pool)
        .await?
        .flatten())
    }

    async fn staff_members(&self, district: DistrictId) -> StoreResult<Vec<super::StaffMember>> {
        sqlx::query(
            "SELECT id, district_id, email, display_name, role, created_at, \
                    disabled_at IS NOT NULL AS disabled, password_hash IS NOT NULL AS has_password \
             FROM staff WHERE district_id = $1 ORDER BY email",
        )
        .bind(text_id(district))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| {
            Ok(super::StaffMember {
                staff: staff_from_row(row)?,
                disabled: row.try_get("disabled")?,
                has_password: row.try_get("has_password")?,
            })
        })
        .collect()
    }

    async fn create_api_token(
        &self,
        id: ApiTokenId,
        staff: &Staff,
        name: &str,
        secret_hash: &[u8],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, district_id, staff_id, name, secret_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(text_id(id))
        .bind(text_id(staff.district_id))
        .bind(text_id(staff.id))
        .bind(name)
        .bind(secret_hash)
        .bind(at)
        .execute(self.write_pool())
        .await?;
        Ok(())
    }

    async fn api_token(&self, id: ApiTokenId) -> StoreResult<Option<ApiTokenRecord>> {
        let Some(row) = sqlx::query(
            "SELECT t.id AS token_id, t.name AS token_name, t.secret_hash, t.expires_at, t.revoked_at, \
                    s.id, s.district_id, s.email, s.display_name, s.role, s.created_at \
             FROM api_tokens t JOIN staff s ON s.id = t.staff_id \
             WHERE t.id = $1 AND s.disabled_at IS NULL",
        )
        .bind(text_id(id))
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(ApiTokenRecord {
            id: ApiTokenId::from_uuid(uuid(&row, "token_id")?),
            name: row.try_get("token_name")?,
            staff: staff_from_row(&row)?,
            secret_hash: row.try_get("secret_hash")?,
            expires_at: row.try_get("expires_at")?,
            revoked_at: row.try_get("revoked_at")?,
        }))
    }

    async fn create_guardian(
        &self,
        guardian: &NewGuardian,
        at: DateTime<Utc>,
    ) -> StoreResult<Guardian> {
        let id = crate::GuardianId::new();
        sqlx::query(
            "INSERT INTO guardians (id, district_id, sourced_id, given_name, family_name, \
                                    preferred_language, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(text_id(id))
        .bind(text_id(guardian.district_id))
        .bind(&guardian.sourced_id)
        .bind(&guardian.given_name)
        .bind(&guardian.family_name)
        .bind(&guardian.preferred_language)
        .bind(at)
        .execute(self.write_pool())
        .await?;
        Ok(Guardian {
            id,
            district_id: guardian.district_id,
            given_name: guardian.given_name.clone(),
            family_name: guardian.family_name.clone(),
            preferred_language: guardian.preferred_language.clone(),
            sourced_id: guardian.sourced_id.clone(),
        })
    }

    async fn create_message(&self, message: &NewMessage, at: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.begin_write().await?;
        <sqlx::Sqlite as Sending>::write_message(&mut tx, message, at).await?;
        <sqlx::Sqlite as Sending>::write_recipients(&mut tx, message, &message.recipients, at)
            .await?;
        tx.commit().await?;
        self.written.wrote();
        Ok(())
    }

    async fn read_log(
        &self,
        lane: crate::Lane,
        partition: crate::log::PartitionId,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<crate::log::LogEntry>> {
        let rows = sqlx::query(
            "SELECT \"offset\", district_id, delivery_id FROM log_entries \
             WHERE lane = $1 AND partition = $2 AND \"offset\" > $3 ORDER BY \"offset\" LIMIT $4",
        )
        .bind(lane.as_str())
        .bind(partition.get() as i64)
        .bind(after.unwrap_or(-1))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(crate::log::LogEntry {
                    lane,
                    partition,
                    offset: row.try_get("offset")?,
                    district_id: DistrictId::from_uuid(uuid(row, "district_id")?),
                    delivery_id: DeliveryId::from_uuid(uuid(row, "delivery_id")?),
                })
            })
            .collect()
    }

    async fn delivery(&self, id: DeliveryId) -> StoreResult<Option<Delivery>> {
        sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1"
        ))
        .bind(text_id(id))
        .fetch_optional(&self.pool)
        .await?
        .map(|row| crate::store::deliveries::from_row(&row))
        .transpose()
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
            <Sqlite as super::transitions::Transitions>::lock_deliveries(&mut tx, &ids).await?;
        }
        let outcomes = super::transitions::apply::<Sqlite>(&mut tx, batch).await?;
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn delivery_events(&self, id: DeliveryId) -> StoreResult<Vec<DeliveryEventRecord>> {
        let rows = sqlx::query(
            "SELECT delivery_id, from_state, to_state, version, at, actor_kind, actor_ref, detail \
             FROM delivery_events WHERE delivery_id = $1 ORDER BY version",
        )
        .bind(text_id(id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(DeliveryEventRecord {
                    delivery_id: DeliveryId::from_uuid(uuid(row, "delivery_id")?),
                    from: parse(row, "from_state")?,
                    to: parse(row, "to_state")?,
                    version: row.try_get("version")?,
                    at: row.try_get("at")?,
                    actor: Actor {
                        kind: parse(row, "actor_kind")?,
                        reference: row.try_get("actor_ref")?,
                    },
                    detail: row.try_get("detail")?,
                })
            })
            .collect()
    }

    async fn directory_counts(&self, district: DistrictId) -> StoreResult<super::DirectoryCounts> {
        super::directory::counts::<sqlx::Sqlite>(&mut *self.pool.acquire().await?, district.into())
            .await
    }

    async fn schools(
        &self,
        scope: &super::Scope,
        page: &super::PageRequest,
    ) -> StoreResult<Vec<super::SchoolView>> {
        super::directory::schools::<sqlx::Sqlite>(&mut *self.pool.acquire().await?, scope, page)
            .await
    }

    async fn classes(
        &self,
        scope: &super::Scope,
        page: &super::PageRequest,
    ) -> StoreResult<Vec<super::ClassView>> {
        super::directory::classes::<sqlx::Sqlite>(&mut *self.pool.acquire().await?, scope, page)
            .await
    }

    async fn students(
        &self,
        scope: &super::Scope,
        page: &super::PageRequest,
    ) -> StoreResult<Vec<super::StudentView>> {
        super::directory::students::<sqlx::Sqlite>(&mut *self.pool.acquire().await?, scope, page)
            .await
    }

    async fn guardians(
        &self,
        scope: &super::Scope,
        page: &super::PageRequest,
    ) -> StoreResult<Vec<super::GuardianView>> {
        super::directory::guardians::<sqlx::Sqlite>(&mut *self.pool.acquire().await?, scope, page)
            .await
    }

    async fn guardian_detail(
        &self,
        scope: &super::Scope,
        which: &super::GuardianRef,
    ) -> StoreResult<Option<super::GuardianDetail>> {
        super::directory::guardian_detail::<sqlx::Sqlite>(
            &mut *self.pool.acquire().await?,
            scope,
            which,
        )
        .await
    }

    async fn retire_address(
        &self,
        guardian: crate::GuardianId,
        channel: crate::Channel,
        address: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        super::directory::retire_address::<sqlx::Sqlite>(
            &mut *self.write_pool().acquire().await?,
            guardian.into(),
            channel,
            address,
            reason,
            at,
        )
        .await
    }

    async fn register_device(
        &self,
        district: DistrictId,
        guardian: crate::GuardianId,
        platform: crate::PushPlatform,
        token: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<super::ContactPointView> {
        super::directory::register_device::<sqlx::Sqlite>(
            &mut *self.write_pool().acquire().await?,
            district.into(),
            guardian.into(),
            platform,
            token,
            at,
        )
        .await
    }

    async fn district(&self, id: DistrictId) -> StoreResult<Option<District>> {
        super::directory::district::<sqlx::Sqlite>(&mut *self.pool.acquire().await?, id.into())
            .await
    }

    async fn districts(&self) -> StoreResult<Vec<District>> {
        sqlx::query("SELECT id, name, default_language, timezone, created_at, max_recipients_per_message, max_messages_per_hour FROM districts ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(district_from_row)
            .collect()
    }

    async fn begin_roster_import(
        &self,
        district: DistrictId,
    ) -> StoreResult<Box<dyn super::roster::RosterWriter>> {
        // The import takes the write turn (the writer's connection, held idle until it
        // ends) and writes through a connection of its own: its scratch table of what the
        // bundle held would stay in the writer's memory (`temp_store = memory`), 50-70 MB
        // after an 80,000-student import, with the dispatcher's writes a tenth slower.
        let turn = self.write_pool().acquire().await?;
        let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Box::new(
            RosterTx::begin(tx, Some(turn), *district.as_uuid(), IMPORT).await?,
        ))
    }

    async fn start_import(&self, import: &super::NewImport, at: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO imports (id, district_id, staff_id, format, source_name, status, started_at) \
             VALUES ($1, $2, $3, 'oneroster', $4, 'running', $5)",
        )
        .bind(text_id(import.id))
        .bind(text_id(import.district_id))
        .bind(import.staff_id.map(text_id))
        .bind(&import.source_name)
        .bind(at)
        .execute(self.write_pool())
        .await?;
        Ok(())
    }

    async fn finish_import(
        &self,
        id: crate::ImportId,
        outcome: Result<&serde_json::Value, &str>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let (status, report, error) = match outcome {
            Ok(report) => ("succeeded", Some(report), None),
            Err(error) => ("failed", None, Some(error)),
        };
        sqlx::query("UPDATE imports SET status = $1, report = $2, error = $3, finished_at = $4 WHERE id = $5")
            .bind(status)
            .bind(report.map(|r| r.to_string()))
            .bind(error)
            .bind(at)
            .bind(text_id(id))
            .execute(self.write_pool())
            .await?;
        Ok(())
    }

    async fn import_record(
        &self,
        district: DistrictId,
        id: crate::ImportId,
    ) -> StoreResult<Option<super::ImportRecord>> {
        let Some(row) = sqlx::query(
            "SELECT id, district_id, staff_id, source_name, status, started_at, finished_at, report, error \
             FROM imports WHERE id = $1 AND district_id = $2",
        )
        .bind(text_id(id))
        .bind(text_id(district))
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(super::ImportRecord {
            id: crate::ImportId::from_uuid(uuid(&row, "id")?),
            district_id: DistrictId::from_uuid(uuid(&row, "district_id")?),
            staff_id: row
                .try_get::<Option<String>, _>("staff_id")?
                .map(|s| Uuid::parse_str(&s))
                .transpose()
                .map_err(corrupt)?
                .map(crate::StaffId::from_uuid),
            source_name: row.try_get("source_name")?,
            status: row.try_get("status")?,
            started_at: row.try_get("started_at")?,
            finished_at: row.try_get("finished_at")?,
            report: row
                .try_get::<Option<String>, _>("report")?
                .map(|r| serde_json::from_str(&r))
                .transpose()
                .map_err(corrupt)?,
            error: row.try_get("error")?,
        }))
    }

    async fn begin(&self) -> StoreResult<Box<dyn super::WriteTransaction>> {
        Ok(Box::new(Write::new(
            self.begin_write().await?,
            self.written.clone(),
        )))
    }

    async fn resolve_audience(
        &self,
        scope: &super::Scope,
        audience: &crate::audience::Audience,
    ) -> StoreResult<Result<Vec<crate::audience::AudienceMember>, crate::audience::AudienceProblems>>
    {
        super::audiences::resolve::<sqlx::Sqlite>(&self.pool, scope, audience).await
    }

    async fn message_summary(
        &self,
        scope: &super::MessageScope,
        id: crate::MessageId,
    ) -> StoreResult<Option<super::MessageSummary>> {
        messages::summary::<sqlx::Sqlite>(&mut *self.pool.acquire().await?, scope, id.into()).await
    }

    async fn messages(
        &self,
        scope: &super::MessageScope,
        before: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<super::MessageListItem>> {
        messages::list::<sqlx::Sqlite>(&mut *self.pool.acquire().await?, scope, before, limit).await
    }

    async fn recipients(
        &self,
        scope: &super::MessageScope,
        message: crate::MessageId,
        acked: Option<bool>,
        after: Option<Uuid>,
        limit: u32,
    ) -> StoreResult<Option<Vec<super::RecipientView>>> {
        messages::recipients::<sqlx::Sqlite>(
            &mut *self.pool.acquire().await?,
            scope,
            message.into(),
            acked,
            after,
            limit,
        )
        .await
    }

    async fn message_content(
        &self,
        scope: &super::MessageScope,
        id: crate::MessageId,
    ) -> StoreResult<Option<super::MessageContent>> {
        messages::content::<sqlx::Sqlite>(&mut *self.pool.acquire().await?, scope, id.into()).await
    }

    async fn pending_guardians(&self, id: crate::MessageId) -> StoreResult<Vec<Uuid>> {
        messages::pending_guardians::<sqlx::Sqlite>(&mut *self.pool.acquire().await?, id.into())
            .await
    }

    async fn refresh_directory_statistics(&self) -> StoreResult<()> {
        sqlx::query("ANALYZE").execute(self.write_pool()).await?;
        Ok(())
    }

    async fn settle(&self) -> StoreResult<()> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn measure_raw_insert(&self, rows: usize) -> StoreResult<f64> {
        // From an empty journal: copying what an earlier write left in it (a send, whose
        // journal the checkpointer copies after it) is not the insert's time.
        self.settle().await?;
        let mut tx = self.pool.begin().await?;
        // A table in the database file, like the ones the fan-out writes.
        sqlx::query("CREATE TABLE bench_raw_rows (id TEXT PRIMARY KEY, a TEXT, b TEXT, at TEXT)")
            .execute(&mut *tx)
            .await?;
        let items: Vec<(String, String)> = (0..rows)
            .map(|i| (Uuid::now_v7().to_string(), format!("row-{i}")))
            .collect();
        let at = crate::time::now();
        let started = std::time::Instant::now();
        for chunk in items.chunks(BULK_ROWS) {
            let mut insert =
                QueryBuilder::<Sqlite>::new("INSERT INTO bench_raw_rows (id, a, b, at) ");
            insert.push_values(chunk, |mut row, (id, a)| {
                row.push_bind(id)
                    .push_bind(a)
                    .push_bind("sms")
                    .push_bind(at);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let seconds = started.elapsed().as_secs_f64();
        sqlx::query("DROP TABLE bench_raw_rows")
            .execute(&self.pool)
            .await?;
        Ok(seconds)
    }

    async fn measure_raw_cas(&self, rows: usize) -> StoreResult<f64> {
        sqlx::query("DROP TABLE IF EXISTS bench_cas")
            .execute(&self.pool)
            .await?;
        sqlx::query("CREATE TABLE bench_cas (id BIGINT PRIMARY KEY, state TEXT NOT NULL, version BIGINT NOT NULL)")
            .execute(&self.pool)
            .await?;
        sqlx::query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < $1) INSERT INTO bench_cas SELECT x, $2, 0 FROM c")
            .bind(rows as i64)
            .bind(DeliveryState::Sent.as_str())
            .execute(&self.pool)
            .await?;
        let started = std::time::Instant::now();
        for id in 1..=rows as i64 {
            sqlx::query("UPDATE bench_cas SET state = $2, version = version + 1 WHERE id = $1 AND version = 0 AND state = $3")
                .bind(id)
                .bind(DeliveryState::Delivered.as_str())
                .bind(DeliveryState::Sent.as_str())
                .execute(&self.pool)
                .await?;
        }
        let seconds = started.elapsed().as_secs_f64();
        sqlx::query("DROP TABLE bench_cas")
            .execute(&self.pool)
            .await?;
        Ok(seconds)
    }

    async fn audit_entries(
        &self,
        district: DistrictId,
        limit: u32,
    ) -> StoreResult<Vec<super::AuditEntry>> {
        sqlx::query("SELECT a.staff_id, s.email AS staff_email, a.action, a.detail, a.at FROM audit_log a \
             LEFT JOIN staff s ON s.id = a.staff_id WHERE a.district_id = $1 ORDER BY a.at DESC, a.id DESC LIMIT $2")
            .bind(text_id(district))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| {
                Ok(super::AuditEntry {
                    staff_id: row.try_get::<Option<String>, _>("staff_id")?.map(|s| Uuid::parse_str(&s)).transpose().map_err(corrupt)?.map(crate::StaffId::from_uuid),
                    staff_email: row.try_get("staff_email")?,
                    action: row.try_get("action")?,
                    detail: serde_json::from_str(&row.try_get::<String, _>("detail")?).map_err(corrupt)?,
                    at: row.try_get("at")?,
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
        insert_audit::<sqlx::Sqlite>(
            &mut *self.write_pool().acquire().await?,
            district_id,
            actor,
            action,
            detail,
            at,
        )
        .await
    }
}

impl WriteDialect for sqlx::Sqlite {}

/// SQLite picks the index without statistics, and its ANALYZE reads whole tables.
const IMPORT: ImportSettings = ImportSettings {
    setup: &[],
    analyze: false,
};

/// The send's fast paths the Sqlite way: multi-row `VALUES` in chunks under the bound-parameter limit.
#[async_trait]
impl Sending for sqlx::Sqlite {
    /// The message row (after reserving the hourly quota, when it has one).
    async fn write_message(
        conn: &mut sqlx::SqliteConnection,
        message: &NewMessage,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        if let Some(max) = message.hourly_quota {
            messages::reserve_hourly_quota::<sqlx::Sqlite>(
                &mut *conn,
                *message.district_id.as_uuid(),
                max,
                at,
            )
            .await?;
        }
        sqlx::query(
                "INSERT INTO messages (id, district_id, author_id, kind, lane, delivery_guarantee, \
                                       subject, body, channels, audience, requires_ack, created_at, translations, \
                                       renotify_of, scheduled_at, ack_deadline, fallback_after_seconds) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            )
            .bind(text_id(message.id))
            .bind(text_id(message.district_id))
            .bind(text_id(message.author_id))
            .bind(message.kind.as_str())
            .bind(message.lane.as_str())
            .bind(message.guarantee.as_str())
            .bind(&message.subject)
            .bind(&message.body)
            .bind(serde_json::to_string(&message.channels).map_err(corrupt)?)
            .bind(message.audience.to_string())
            .bind(message.requires_ack)
            .bind(at)
            .bind(message.translations.to_string())
            .bind(message.renotify_of.map(text_id))
            .bind(message.scheduled_at)
            .bind(message.ack_deadline)
            .bind(message.fallback_after.map(|a| a.num_seconds().clamp(1, i64::from(i32::MAX)) as i32))
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Recipients of a message, their deliveries and the deliveries' log entries, in bulk.
    async fn write_recipients(
        conn: &mut sqlx::SqliteConnection,
        message: &NewMessage,
        recipients: &[crate::store::NewRecipient],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        // Multi-row INSERTs in chunks that stay under SQLite's bound-parameter limit.
        let ack_state = if message.requires_ack {
            "pending"
        } else {
            "not_required"
        };
        for chunk in recipients.chunks(BULK_ROWS) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO recipients (id, district_id, message_id, guardian_id, language, ack_state) ",
                );
            insert.push_values(chunk, |mut row, recipient| {
                row.push_bind(text_id(recipient.id))
                    .push_bind(text_id(message.district_id))
                    .push_bind(text_id(message.id))
                    .push_bind(text_id(recipient.guardian_id))
                    .push_bind(&recipient.language)
                    .push_bind(ack_state);
            });
            insert.build().execute(&mut *conn).await?;
        }
        let deliveries: Vec<_> = recipients
            .iter()
            .flat_map(|r| r.deliveries.iter().map(move |d| (r, d)))
            .collect();
        for chunk in deliveries.chunks(BULK_ROWS) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO deliveries (id, district_id, message_id, recipient_id, guardian_id, channel, \
                                             address, state, idempotency_key, suppressed_reason, created_at, \
                                             updated_at, suppressed_at, next_attempt_at, fallback_of, lane) ",
                );
            insert.push_values(chunk, |mut row, (recipient, delivery)| {
                let suppressed = delivery.suppressed_reason.is_some();
                row.push_bind(text_id(delivery.id))
                    .push_bind(text_id(message.district_id))
                    .push_bind(text_id(message.id))
                    .push_bind(text_id(recipient.id))
                    .push_bind(text_id(recipient.guardian_id))
                    .push_bind(delivery.channel.as_str())
                    .push_bind(&delivery.address)
                    .push_bind(
                        if suppressed {
                            DeliveryState::Suppressed
                        } else {
                            DeliveryState::Created
                        }
                        .as_str(),
                    )
                    .push_bind(text_id(delivery.id))
                    .push_bind(&delivery.suppressed_reason)
                    .push_bind(at)
                    .push_bind(at)
                    .push_bind(suppressed.then_some(at))
                    .push_bind(delivery.not_before)
                    .push_bind(delivery.fallback_of.map(text_id))
                    .push_bind(message.lane.as_str());
            });
            insert.build().execute(&mut *conn).await?;
        }
        // The log: SQLite has one writer at a time, so offsets are taken and entries written
        // in the same order they become visible.
        let plan = NewMessage::log_plan_of(recipients, message.partitions);
        if plan.is_empty() {
            // Nothing to send in this chunk (every delivery suppressed, or none planned).
            return Ok(());
        }
        let mut heads =
            QueryBuilder::<Sqlite>::new("INSERT INTO log_heads (lane, partition, next_offset) ");
        heads.push_values(&plan, |mut row, (partition, deliveries)| {
            row.push_bind(message.lane.as_str())
                .push_bind(partition.get() as i64)
                .push_bind(deliveries.len() as i64);
        });
        heads.push(
                " ON CONFLICT (lane, partition) DO UPDATE SET next_offset = log_heads.next_offset + excluded.next_offset \
                 RETURNING partition, next_offset",
            );
        let next: std::collections::HashMap<i64, i64> = if plan.is_empty() {
            std::collections::HashMap::new()
        } else {
            heads
                .build_query_as::<(i64, i64)>()
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect()
        };
        // Each district's last offset per partition, for reading a partition district by
        // district.
        let mut district_heads = QueryBuilder::<Sqlite>::new(
            "INSERT INTO log_district_heads (lane, partition, district_id, last_offset) ",
        );
        district_heads.push_values(&next, |mut row, (partition, next_offset)| {
            row.push_bind(message.lane.as_str())
                .push_bind(*partition)
                .push_bind(text_id(message.district_id))
                .push_bind(next_offset - 1);
        });
        district_heads.push(
            " ON CONFLICT (lane, partition, district_id) \
             DO UPDATE SET last_offset = max(last_offset, excluded.last_offset)",
        );
        district_heads.build().execute(&mut *conn).await?;
        let entries: Vec<(i64, i64, DeliveryId)> = plan
            .iter()
            .flat_map(|(partition, deliveries)| {
                let p = partition.get() as i64;
                let first = next[&p] - deliveries.len() as i64;
                deliveries
                    .iter()
                    .enumerate()
                    .map(move |(i, d)| (p, first + i as i64, *d))
            })
            .collect();
        for chunk in entries.chunks(BULK_ROWS) {
            let mut insert = QueryBuilder::<Sqlite>::new(
                    "INSERT INTO log_entries (lane, partition, \"offset\", district_id, delivery_id, created_at) ",
                );
            insert.push_values(chunk, |mut row, (partition, offset, delivery)| {
                row.push_bind(message.lane.as_str())
                    .push_bind(*partition)
                    .push_bind(*offset)
                    .push_bind(text_id(message.district_id))
                    .push_bind(text_id(*delivery))
                    .push_bind(at);
            });
            insert.build().execute(&mut *conn).await?;
        }
        Ok(())
    }
}

crate::store::dispatch_sql::dispatch_store_impl!(SqliteStore);

/// The dispatcher's queries, bound this dialect's way.
mod dispatching {
    fn enc(id: uuid::Uuid) -> String {
        id.hyphenated().to_string()
    }

    fn dec(row: &sqlx::sqlite::SqliteRow, column: &str) -> crate::store::StoreResult<uuid::Uuid> {
        super::uuid(row, column)
    }

    crate::store::dispatch_sql::dispatch_queries!(db: sqlx::Sqlite, enc: enc, dec: dec);
    crate::store::dispatch_sql::bulk_attempts!(db: sqlx::Sqlite, enc: enc, dec: dec);

    // Even in-process, each statement costs a trip to SQLite's worker thread: a batch is
    // written in a few multi-row statements.
    pub use self::{
        finish_attempts_bulk as finish_attempts, start_attempts_bulk as start_attempts,
    };
}

#[async_trait]
impl super::dialect::Pools for SqliteStore {
    type Db = sqlx::Sqlite;

    fn reads(&self) -> &SqlitePool {
        &self.pool
    }

    fn writes(&self) -> &SqlitePool {
        self.write_pool()
    }

    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Sqlite>> {
        SqliteStore::begin_write(self).await
    }
}
