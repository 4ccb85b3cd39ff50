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
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

use super::{
    readiness_from, Backend, ConnectOptions, NewMessage, Readiness, StoreError, StoreResult,
};
use crate::{DeliveryId, DistrictId};

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
            .before_acquire(|conn, _| Box::pin(out_of_transaction(conn)))
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
            .before_acquire(|conn, _| Box::pin(out_of_transaction(conn)))
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

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// Whether an idle connection is out of any transaction, and so fit to be used again.
/// SQLite rolls a transaction back by itself on some errors (a full disk, an I/O error);
/// the rollback sent after it then fails, and the connection would count itself still in
/// the transaction: its next transaction would be a savepoint inside one that never
/// ends, holding the write lock while each of its commits only released a savepoint —
/// writes that seem to succeed, seen by no one, until the process stops. Such a
/// connection is closed instead (closing rolls back whatever is open). Asked as a
/// connection leaves the idle pool: the pool's own check when it was given back has
/// carried out the rollback of a transaction dropped uncommitted by then.
async fn out_of_transaction(conn: &mut sqlx::SqliteConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection as _;
    if conn.is_in_transaction() {
        tracing::warn!(
            "closing an SQLite connection left in a transaction that could not be rolled back"
        );
        return Ok(false);
    }
    Ok(true)
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

fn corrupt(what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

use super::engine::Engine;
use super::messages;
use super::roster::{ImportSettings, RosterTx};
use super::sending::Sending;
use super::writes::WriteDialect;

#[async_trait]
impl Engine for SqliteStore {
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

    fn written(&self) -> &super::dispatch::LogWrites {
        &self.written
    }

    /// Writes to the log: one process does all the writing on SQLite.
    fn subscribe_log_writes(&self) -> tokio::sync::watch::Receiver<()> {
        self.written.subscribe()
    }

    async fn lock_bootstrap(&self, _conn: &mut sqlx::SqliteConnection) -> StoreResult<()> {
        // The transaction holds SQLite's write lock from its start.
        Ok(())
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
                                       renotify_of, scheduled_at, ack_deadline, fallback_after_seconds, \
                                       traceparent) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
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
            // The span writing it: the request's, when traces are exported.
            .bind(crate::telemetry::traceparent())
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
                    .push_bind(delivery.initial_state().as_str())
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

/// SQLite takes a batch of attempts as multi-row `VALUES`: the defaults.
impl super::dispatching::Dispatching for sqlx::Sqlite {}

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

#[async_trait]
impl super::raw_speed::RawSpeed for SqliteStore {
    async fn measure_raw_insert(&self, rows: usize) -> StoreResult<f64> {
        // From an empty journal: copying what an earlier write left in it (a send, whose
        // journal the checkpointer copies after it) is not the insert's time.
        Engine::settle(self).await?;
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
        super::raw_speed::measure_cas::<Sqlite>(&self.pool, rows).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Connection as _;

    /// SQLite ends a transaction by itself on a full disk; the transactions after it on
    /// the write connection still commit, and other connections see what they wrote.
    #[tokio::test]
    async fn a_transaction_sqlite_ended_by_itself_does_not_swallow_the_next_ones() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = SqliteStore::connect(&url, &ConnectOptions::default())
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)")
            .execute(&store.writer)
            .await
            .unwrap();
        {
            let mut tx = store.writer.begin().await.unwrap();
            // As SQLite does on SQLITE_FULL: the transaction is gone, and the rollback
            // sent when `tx` is dropped fails.
            sqlx::query("ROLLBACK").execute(&mut *tx).await.unwrap();
        }
        {
            let mut tx = store.writer.begin().await.unwrap();
            sqlx::query("INSERT INTO t VALUES (1)")
                .execute(&mut *tx)
                .await
                .unwrap();
            // Dropped uncommitted, as a batch that failed.
        }
        let mut tx = store.writer.begin().await.unwrap();
        sqlx::query("INSERT INTO t VALUES (2)")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let mut reader = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let seen: Vec<i64> = sqlx::query_scalar("SELECT x FROM t")
            .fetch_all(&mut reader)
            .await
            .unwrap();
        assert_eq!(seen, vec![2]);
        // And the write lock is free.
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut reader)
            .await
            .unwrap();
        sqlx::query("ROLLBACK").execute(&mut reader).await.unwrap();
    }
}
