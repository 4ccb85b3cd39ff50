//! The PostgreSQL store: production, and several dispatcher processes sharing one
//! database.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::dispatch::Retrying;
use super::dispatching::{retrying_from_row, Closing, Dispatching, UNFINISHED};
use super::{
    readiness_from, Backend, ConnectOptions, NewMessage, Readiness, StoreError, StoreResult,
};
use crate::delivery::Delivery;
use crate::{Channel, DistrictId, GuardianId, Lane};

/// The migrations of `migrations/postgres/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Serialises first-run bootstrap between processes starting on the same empty database.
const BOOTSTRAP_LOCK: i64 = 0x7469_6469_6e67_0001;

#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    written: super::dispatch::LogWrites,
    /// Listens for other processes' writes to the log while anyone subscribes to them.
    listener: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// The channel a fan-out notifies on commit.
const LOG_CHANNEL: &str = "tidings_log";

impl PostgresStore {
    pub async fn connect(url: &str, options: &ConnectOptions) -> StoreResult<Self> {
        let connect_error = |source| StoreError::Connect {
            url: super::redact_url(url),
            source,
        };
        // No JIT compilation: Tidings' statements are short, and the server's cost
        // estimates for them (stale just after a broadcast is written) can pass the JIT
        // threshold, which then spent 55-400 ms compiling a query that runs in under 8.
        let connect_options = PgConnectOptions::from_str(url)
            .map_err(connect_error)?
            .options([("jit", "off")]);
        // One direct connection first: a pool would retry until its timeout and then
        // report only "timed out", hiding "connection refused" or "password failed".
        let probe = tokio::time::timeout(
            CONNECT_TIMEOUT,
            PgConnection::connect_with(&connect_options),
        )
        .await
        .map_err(|_| connect_error(sqlx::Error::PoolTimedOut))?
        .map_err(connect_error)?;
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(connect_options);
        Ok(Self {
            pool,
            written: Default::default(),
            listener: Default::default(),
        })
    }

    /// Where writes go: the pool (PostgreSQL's writers do not share one lock).
    fn write_pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

use super::engine::Engine;
use super::messages;
use super::roster::{ImportSettings, RosterTx};
use super::sending::Sending;
use super::writes::WriteDialect;

#[async_trait]
impl Engine for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn readiness(&self) -> StoreResult<Readiness> {
        let table: Option<String> =
            sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations')::text")
                .fetch_one(&self.pool)
                .await?;
        let applied: Vec<i64> = match table {
            Some(_) => {
                sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                    .fetch_all(&self.pool)
                    .await?
            }
            None => Vec::new(),
        };
        Ok(readiness_from(Backend::Postgres, &MIGRATOR, &applied))
    }

    async fn begin_roster_import(
        &self,
        district: DistrictId,
    ) -> StoreResult<Box<dyn super::roster::RosterWriter>> {
        Ok(Box::new(
            RosterTx::begin(self.pool.begin().await?, None, *district.as_uuid(), IMPORT).await?,
        ))
    }

    async fn settle(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn refresh_directory_statistics(&self) -> StoreResult<()> {
        sqlx::query("ANALYZE schools, students, guardians, guardian_students, contact_points, opt_outs, staff, staff_schools, classes, enrollments").execute(&self.pool).await?;
        Ok(())
    }

    fn written(&self) -> &super::dispatch::LogWrites {
        &self.written
    }

    /// Writes to the log by this process at once, and those of other processes as their
    /// notifications arrive (on a connection of its own, opened by the first subscriber
    /// and closed when none is left).
    fn subscribe_log_writes(&self) -> tokio::sync::watch::Receiver<()> {
        let writes = self.written.subscribe();
        let mut listener = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if listener.as_ref().is_none_or(|task| task.is_finished()) {
            let options = (*self.pool.connect_options()).clone();
            let written = self.written.clone();
            *listener = Some(tokio::spawn(async move {
                tokio::select! {
                    () = listen_for_log_writes(options, &written) => {}
                    () = written.unwatched() => {}
                }
            }));
        }
        writes
    }

    async fn lock_bootstrap(&self, conn: &mut sqlx::PgConnection) -> StoreResult<()> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(BOOTSTRAP_LOCK)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

// The import fills tables inside one transaction, where statistics still describe the
// tables as they were before it: a cached generic plan chosen for a near-empty table
// turns every batched lookup into a sequential scan (measured: 122 s instead of ~20 s
// for 100,000 students). Custom plans see the tables' current size.
// Even so, with the default random_page_cost of 4 a lookup of 1,000 sourcedIds
// scans the whole table (25 ms at 100,000 students, ten times that at a million: the
// import grew with the square of the roster) rather than probing the
// (district_id, sourced_id) index (4-15 ms, whatever the size). Lookups by key in a
// table the import itself keeps in cache cost what 1.1 says; the writer also refreshes
// the statistics of the tables it fills as they grow.
const IMPORT: ImportSettings = ImportSettings {
    setup: &[
        "SET LOCAL plan_cache_mode = force_custom_plan",
        "SET LOCAL random_page_cost = 1.1",
    ],
    analyze: true,
};

/// Passes the log's commit notifications on to `written`, reconnecting after a lost
/// connection (and counting that as a write: some may have been missed meanwhile).
async fn listen_for_log_writes(options: PgConnectOptions, written: &super::dispatch::LogWrites) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(options);
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(LOG_CHANNEL).await?;
            written.wrote();
            loop {
                listener.recv().await?;
                written.wrote();
            }
        };
        let Err::<std::convert::Infallible, sqlx::Error>(error) = listening.await;
        tracing::warn!(error = %error, "not hearing of other processes' log writes; retrying in 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The send's fast paths the Postgres way: arrays bound once and `unnest`ed, one statement per table.
#[async_trait]
impl Sending for sqlx::Postgres {
    /// The message row (after reserving the hourly quota, when it has one).
    async fn write_message(
        conn: &mut sqlx::PgConnection,
        message: &NewMessage,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        // Delivered to listening dispatchers when (and only if) the message commits.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(LOG_CHANNEL)
            .execute(&mut *conn)
            .await?;
        if let Some(max) = message.hourly_quota {
            messages::reserve_hourly_quota::<sqlx::Postgres>(
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
            .bind(Uuid::from(message.id))
            .bind(Uuid::from(message.district_id))
            .bind(Uuid::from(message.author_id))
            .bind(message.kind.as_str())
            .bind(message.lane.as_str())
            .bind(message.guarantee.as_str())
            .bind(&message.subject)
            .bind(&message.body)
            .bind(sqlx::types::Json(&message.channels))
            .bind(&message.audience)
            .bind(message.requires_ack)
            .bind(at)
            .bind(&message.translations)
            .bind(message.renotify_of.map(Uuid::from))
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
        conn: &mut sqlx::PgConnection,
        message: &NewMessage,
        recipients: &[crate::store::NewRecipient],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        // One statement per table, whatever the audience size: arrays in, unnest out.
        let ack_state = if message.requires_ack {
            "pending"
        } else {
            "not_required"
        };
        let (ids, guardians, languages): (Vec<Uuid>, Vec<Uuid>, Vec<&str>) = recipients
            .iter()
            .map(|r| {
                (
                    Uuid::from(r.id),
                    Uuid::from(r.guardian_id),
                    r.language.as_str(),
                )
            })
            .fold(
                (Vec::new(), Vec::new(), Vec::new()),
                |mut acc, (a, b, c)| {
                    acc.0.push(a);
                    acc.1.push(b);
                    acc.2.push(c);
                    acc
                },
            );
        sqlx::query(
            "INSERT INTO recipients (id, district_id, message_id, guardian_id, language, ack_state) \
                 SELECT id, $1, $2, guardian_id, language, $3 \
                 FROM unnest($4::uuid[], $5::uuid[], $6::text[]) AS r(id, guardian_id, language)",
        )
        .bind(Uuid::from(message.district_id))
        .bind(Uuid::from(message.id))
        .bind(ack_state)
        .bind(&ids)
        .bind(&guardians)
        .bind(&languages)
        .execute(&mut *conn)
        .await?;

        let mut d_ids = Vec::new();
        let mut d_recipients = Vec::new();
        let mut d_guardians = Vec::new();
        let mut d_channels = Vec::new();
        let mut d_addresses: Vec<Option<String>> = Vec::new();
        let mut d_states = Vec::new();
        let mut d_reasons: Vec<Option<String>> = Vec::new();
        let mut d_not_before: Vec<Option<DateTime<Utc>>> = Vec::new();
        let mut d_fallback_of: Vec<Option<Uuid>> = Vec::new();
        for recipient in recipients {
            for delivery in &recipient.deliveries {
                d_ids.push(Uuid::from(delivery.id));
                d_recipients.push(Uuid::from(recipient.id));
                d_guardians.push(Uuid::from(recipient.guardian_id));
                d_channels.push(delivery.channel.as_str());
                d_addresses.push(delivery.address.clone());
                d_states.push(delivery.initial_state().as_str());
                d_reasons.push(delivery.suppressed_reason.clone());
                d_not_before.push(delivery.not_before);
                d_fallback_of.push(delivery.fallback_of.map(Uuid::from));
            }
        }
        sqlx::query(
                "INSERT INTO deliveries (id, district_id, message_id, recipient_id, guardian_id, channel, \
                                         address, state, idempotency_key, suppressed_reason, created_at, \
                                         updated_at, suppressed_at, next_attempt_at, fallback_of, lane) \
                 SELECT id, $1, $2, recipient_id, guardian_id, channel, address, state, id::text, reason, \
                        $3, $3, CASE WHEN reason IS NOT NULL THEN $3::timestamptz END, not_before, fallback_of, $13 \
                 FROM unnest($4::uuid[], $5::uuid[], $6::uuid[], $7::text[], $8::text[], $9::text[], $10::text[], \
                             $11::timestamptz[], $12::uuid[]) \
                      AS d(id, recipient_id, guardian_id, channel, address, state, reason, not_before, fallback_of)",
            )
            .bind(Uuid::from(message.district_id))
            .bind(Uuid::from(message.id))
            .bind(at)
            .bind(&d_ids)
            .bind(&d_recipients)
            .bind(&d_guardians)
            .bind(&d_channels)
            .bind(&d_addresses)
            .bind(&d_states)
            .bind(&d_reasons)
            .bind(&d_not_before)
            .bind(&d_fallback_of)
            .bind(message.lane.as_str())
            .execute(&mut *conn)
            .await?;
        // The log: take offsets from the partitions' head rows (ascending, locked until
        // commit), then write every entry in one statement.
        let plan = NewMessage::log_plan_of(recipients, message.partitions);
        let partitions: Vec<i32> = plan.keys().map(|p| p.get() as i32).collect();
        let counts: Vec<i64> = plan.values().map(|d| d.len() as i64).collect();
        let heads: Vec<(i32, i64)> = sqlx::query_as(
                "INSERT INTO log_heads (lane, partition, next_offset) \
                 SELECT $1, p, n FROM unnest($2::int[], $3::bigint[]) AS h(p, n) ORDER BY p \
                 ON CONFLICT (lane, partition) DO UPDATE SET next_offset = log_heads.next_offset + excluded.next_offset \
                 RETURNING partition, next_offset",
            )
            .bind(message.lane.as_str())
            .bind(&partitions)
            .bind(&counts)
            .fetch_all(&mut *conn)
            .await?;
        // Each district's last offset per partition, for reading a partition district by
        // district (the head rows are ours until commit, so these only move forward).
        let (h_partitions, h_next): (Vec<i32>, Vec<i64>) = heads.iter().copied().unzip();
        sqlx::query(
                "INSERT INTO log_district_heads (lane, partition, district_id, last_offset) \
                 SELECT $1, p, $2, n - 1 FROM unnest($3::int[], $4::bigint[]) AS h(p, n) ORDER BY p \
                 ON CONFLICT (lane, partition, district_id) \
                 DO UPDATE SET last_offset = greatest(log_district_heads.last_offset, excluded.last_offset)",
            )
            .bind(message.lane.as_str())
            .bind(Uuid::from(message.district_id))
            .bind(&h_partitions)
            .bind(&h_next)
            .execute(&mut *conn)
            .await?;
        let next: std::collections::HashMap<i32, i64> = heads.into_iter().collect();
        let (mut e_partitions, mut e_offsets, mut e_deliveries) =
            (Vec::new(), Vec::new(), Vec::new());
        for (partition, deliveries) in &plan {
            let p = partition.get() as i32;
            let first = next[&p] - deliveries.len() as i64;
            for (i, delivery) in deliveries.iter().enumerate() {
                e_partitions.push(p);
                e_offsets.push(first + i as i64);
                e_deliveries.push(Uuid::from(*delivery));
            }
        }
        sqlx::query(
                "INSERT INTO log_entries (lane, partition, \"offset\", district_id, delivery_id, created_at) \
                 SELECT $1, p, o, $2, d, $3 FROM unnest($4::int[], $5::bigint[], $6::uuid[]) AS e(p, o, d)",
            )
            .bind(message.lane.as_str())
            .bind(Uuid::from(message.district_id))
            .bind(at)
            .bind(&e_partitions)
            .bind(&e_offsets)
            .bind(&e_deliveries)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }
}

/// PostgreSQL takes a batch of attempts as arrays: one statement each, whatever its size.
#[async_trait]
impl Dispatching for sqlx::Postgres {
    async fn abandon_unfinished(
        conn: &mut PgConnection,
        ids: &[Uuid],
        at: DateTime<Utc>,
    ) -> StoreResult<HashSet<Uuid>> {
        Ok(sqlx::query_scalar(
            "UPDATE delivery_attempts SET outcome = 'in_doubt', error = $1, finished_at = $2 \
             WHERE delivery_id = ANY($3) AND outcome = 'in_flight' RETURNING delivery_id",
        )
        .bind(UNFINISHED)
        .bind(at)
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect())
    }

    async fn insert_attempts(
        conn: &mut PgConnection,
        started: &[(&Delivery, &str)],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let districts: Vec<Uuid> = started
            .iter()
            .map(|(d, _)| *d.district_id.as_uuid())
            .collect();
        let deliveries: Vec<Uuid> = started.iter().map(|(d, _)| *d.id.as_uuid()).collect();
        let attempts: Vec<i32> = started.iter().map(|(d, _)| d.attempts).collect();
        let keys: Vec<&str> = started
            .iter()
            .map(|(d, _)| d.idempotency_key.as_str())
            .collect();
        let providers: Vec<&str> = started.iter().map(|(_, p)| *p).collect();
        sqlx::query(
            "INSERT INTO delivery_attempts (district_id, delivery_id, attempt, idempotency_key, provider, \
                                            started_at, outcome) \
             SELECT district_id, delivery_id, attempt, key, provider, $1, 'in_flight' \
             FROM unnest($2::uuid[], $3::uuid[], $4::int[], $5::text[], $6::text[]) \
                  AS a(district_id, delivery_id, attempt, key, provider)",
        )
        .bind(at)
        .bind(&districts)
        .bind(&deliveries)
        .bind(&attempts)
        .bind(&keys)
        .bind(&providers)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    async fn close_attempts(
        conn: &mut PgConnection,
        closing: &[Closing<'_>],
        at: DateTime<Utc>,
    ) -> StoreResult<HashSet<Uuid>> {
        let ids: Vec<Uuid> = closing.iter().map(|c| c.delivery).collect();
        let attempts: Vec<i32> = closing.iter().map(|c| c.attempt).collect();
        let outcomes: Vec<&str> = closing.iter().map(|c| c.outcome).collect();
        let errors: Vec<Option<&str>> = closing.iter().map(|c| c.error).collect();
        Ok(sqlx::query_scalar(
            "UPDATE delivery_attempts a SET outcome = x.outcome, error = x.error, finished_at = $1 \
             FROM unnest($2::uuid[], $3::int[], $4::text[], $5::text[]) AS x(delivery_id, attempt, outcome, error) \
             WHERE a.delivery_id = x.delivery_id AND a.attempt = x.attempt AND a.outcome = 'in_flight' \
             RETURNING a.delivery_id",
        )
        .bind(at)
        .bind(&ids)
        .bind(&attempts)
        .bind(&outcomes)
        .bind(&errors)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .collect())
    }

    /// One index probe per pair: the QUEUED index also holds entries of rows that have
    /// moved on (until vacuum), so a scan over all of it grows with the broadcast being
    /// sent.
    async fn retrying(
        conn: &mut PgConnection,
        pairs: &[(GuardianId, Channel)],
        lane: Lane,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<Retrying>> {
        let guardians: Vec<Uuid> = pairs.iter().map(|(g, _)| *g.as_uuid()).collect();
        let channels: Vec<&str> = pairs.iter().map(|(_, c)| c.as_str()).collect();
        let lanes: Vec<&str> = lane.and_more_urgent().map(|l| l.as_str()).collect();
        let rows = sqlx::query(
            "SELECT p.guardian_id, p.channel, w.created_at, w.due \
             FROM unnest($1::uuid[], $2::text[]) AS p(guardian_id, channel) \
             CROSS JOIN LATERAL ( \
                 SELECT min(d.created_at) AS created_at, \
                        max(CASE WHEN a.outcome = 'in_flight' THEN NULL ELSE d.next_attempt_at END) AS due \
                 FROM deliveries d \
                 LEFT JOIN delivery_attempts a ON a.delivery_id = d.id AND a.attempt = d.attempts \
                 WHERE d.guardian_id = p.guardian_id AND d.channel = p.channel AND d.state = 'QUEUED' \
                   AND d.attempts > 0 AND d.next_attempt_at > $3 AND d.lane = ANY($4)) AS w \
             WHERE w.created_at IS NOT NULL",
        )
        .bind(&guardians)
        .bind(&channels)
        .bind(at)
        .bind(&lanes)
        .fetch_all(&mut *conn)
        .await?;
        rows.iter().map(retrying_from_row).collect()
    }
}

#[async_trait]
impl super::dialect::Pools for PostgresStore {
    type Db = sqlx::Postgres;

    fn reads(&self) -> &PgPool {
        &self.pool
    }

    fn writes(&self) -> &PgPool {
        self.write_pool()
    }

    async fn begin_write(&self) -> StoreResult<sqlx::Transaction<'static, sqlx::Postgres>> {
        Ok(self.pool.begin().await?)
    }
}

/// How long a request waits for another transaction holding its idempotency key before
/// it is told the key is in flight.
const IDEMPOTENCY_WAIT: &str = "200ms";

/// PostgreSQL's `lock_not_available`: a lock wait ran past `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// A transaction that holds the same idempotency key has not committed yet: its insert
/// would make ours wait for as long as its whole send takes. Waits briefly, then says so.
#[async_trait]
impl WriteDialect for sqlx::Postgres {
    async fn claim_idempotency_key(
        conn: &mut sqlx::PgConnection,
        scope: &str,
        key: &str,
        request_hash: &[u8],
        keep: chrono::Duration,
        at: DateTime<Utc>,
    ) -> StoreResult<super::IdempotencyClaim> {
        // A transaction that holds the same key has not committed yet: its insert would
        // make ours wait for as long as its whole send takes. Wait briefly, then say so.
        let previous: String = sqlx::query_scalar("SELECT current_setting('lock_timeout')")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(IDEMPOTENCY_WAIT)
            .execute(&mut *conn)
            .await?;
        let claim = messages::claim_idempotency_key::<sqlx::Postgres>(
            conn,
            scope,
            key,
            request_hash,
            keep,
            at,
        )
        .await;
        match claim {
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) =>
            {
                // The transaction is aborted; the caller drops it.
                Ok(super::IdempotencyClaim::InFlight)
            }
            Err(e) => Err(e),
            Ok(claim) => {
                sqlx::query("SELECT set_config('lock_timeout', $1, true)")
                    .bind(previous)
                    .execute(&mut *conn)
                    .await?;
                Ok(claim)
            }
        }
    }
}

#[async_trait]
impl super::raw_speed::RawSpeed for PostgresStore {
    async fn measure_raw_insert(&self, rows: usize) -> StoreResult<f64> {
        let mut tx = self.pool.begin().await?;
        // A real (logged) table, like the ones the fan-out writes; dropped with the test.
        sqlx::query(
            "CREATE TABLE bench_raw_rows (id uuid PRIMARY KEY, a text, b text, at timestamptz)",
        )
        .execute(&mut *tx)
        .await?;
        let ids: Vec<Uuid> = (0..rows).map(|_| Uuid::now_v7()).collect();
        let a: Vec<String> = (0..rows).map(|i| format!("row-{i}")).collect();
        let started = std::time::Instant::now();
        // Same shape as the fan-out: arrays in, one statement per 100,000 rows.
        for ((ids, a), _) in ids.chunks(100_000).zip(a.chunks(100_000)).zip(0..) {
            sqlx::query("INSERT INTO bench_raw_rows SELECT id, a, 'sms', $3 FROM unnest($1::uuid[], $2::text[]) AS r(id, a)")
                .bind(ids)
                .bind(a)
                .bind(crate::time::now())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let seconds = started.elapsed().as_secs_f64();
        sqlx::query("DROP TABLE bench_raw_rows")
            .execute(&self.pool)
            .await?;
        Ok(seconds)
    }

    async fn measure_raw_cas(&self, rows: usize) -> StoreResult<f64> {
        super::raw_speed::measure_cas::<sqlx::Postgres>(&self.pool, rows).await
    }
}
