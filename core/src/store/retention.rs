//! Purging what a district keeps past its retention (`crate::retention`): old messages
//! with everything about their deliveries, guardians' old texts, old audit entries, and
//! the delivery log's consumed entries. Each call deletes one bounded batch in one short
//! transaction, so that a purge of millions of rows never holds a lock for long nor takes
//! the write path from live sending for more than a moment; the caller loops.
//!
//! A message goes only once none of its deliveries is still waiting to be sent (created
//! or queued): its deliveries first, with their events, attempts and log entries, a
//! batch at a time; then its recipients; then the message with its report counts.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::dialect::{Args, Columns, Dialect, Pools};
use super::StoreResult;
use crate::retention::{Cutoffs, Purged, Retention};
use crate::DistrictId;

/// Rows per statement listing ids.
const CHUNK: usize = 500;

/// Old messages of the district none of whose deliveries waits to be sent (a read).
const FINISHED_OLD_MESSAGES: &str = "m.district_id = $1 AND m.created_at < $2 \
     AND NOT EXISTS (SELECT 1 FROM deliveries w WHERE w.message_id = m.id \
                     AND w.state IN ('CREATED', 'QUEUED'))";

/// A kind of record that goes by its age alone: a district's rows of `table` whose `at`
/// column is before `$2` (and that meet `also`, if given), `$1` the district.
struct ByAge {
    table: &'static str,
    at: &'static str,
    also: &'static str,
}

/// Guardians' texts.
const REPLIES: ByAge = ByAge {
    table: "inbound_messages",
    at: "received_at",
    also: "",
};
/// Provider reports on the district's deliveries, once applied.
const CALLBACKS: ByAge = ByAge {
    table: "callback_inbox",
    at: "received_at",
    also: " AND status <> 'pending'",
};
/// The audit log.
const AUDIT: ByAge = ByAge {
    table: "audit_log",
    at: "at",
    also: "",
};

impl ByAge {
    fn filter(&self) -> String {
        format!("district_id = $1 AND {} < $2{}", self.at, self.also)
    }

    /// How many are old enough.
    fn count(&self) -> String {
        format!(
            "SELECT count(*) AS n FROM {} WHERE {}",
            self.table,
            self.filter()
        )
    }

    /// Deletes at most `$3` of those old enough.
    fn delete(&self) -> String {
        let (table, filter) = (self.table, self.filter());
        format!("DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {filter} LIMIT $3)")
    }
}

#[async_trait]
pub trait Purging: Send + Sync {
    /// A district's retention as set; `None` when there is no such district.
    async fn retention(&self, district: DistrictId) -> StoreResult<Option<Retention>>;

    /// What a purge at `cutoffs` would take from `district` now.
    async fn purge_plan(&self, district: DistrictId, cutoffs: &Cutoffs) -> StoreResult<Purged>;

    /// Deletes at most about `limit` rows of each kind older than `cutoffs` from
    /// `district`, in one transaction; returns what went. Nothing left when it returns
    /// an empty [`Purged`].
    async fn purge_batch(
        &self,
        district: DistrictId,
        cutoffs: &Cutoffs,
        limit: u32,
    ) -> StoreResult<Purged>;

    /// Deletes at most `limit` entries of the delivery log written before `before` that
    /// every dispatcher has consumed; returns how many.
    async fn purge_log(&self, before: DateTime<Utc>, limit: u32) -> StoreResult<u64>;
}

#[async_trait]
impl<S: Pools> Purging for S {
    async fn retention(&self, district: DistrictId) -> StoreResult<Option<Retention>> {
        let mut conn = self.reads().acquire().await?;
        let row = S::Db::fetch_optional(
            &mut conn,
            "SELECT retain_messages_days, retain_replies_days, retain_audit_days, \
             retain_callbacks_days FROM districts WHERE id = $1",
            Args::new().id(district),
        )
        .await?;
        row.map(|row| {
            Ok(Retention {
                messages_days: days(&row, "retain_messages_days")?,
                replies_days: days(&row, "retain_replies_days")?,
                callbacks_days: days(&row, "retain_callbacks_days")?,
                audit_days: days(&row, "retain_audit_days")?,
            })
        })
        .transpose()
    }

    async fn purge_plan(&self, district: DistrictId, cutoffs: &Cutoffs) -> StoreResult<Purged> {
        let mut conn = self.reads().acquire().await?;
        let count =
            |sql: String, before: DateTime<Utc>| (sql, Args::new().id(district).time(before));
        let queries = [
            count(
                format!("SELECT count(*) AS n FROM messages m WHERE {FINISHED_OLD_MESSAGES}"),
                cutoffs.messages,
            ),
            count(
                format!(
                    "SELECT count(*) AS n FROM recipients r JOIN messages m ON m.id = r.message_id \
                     WHERE {FINISHED_OLD_MESSAGES}"
                ),
                cutoffs.messages,
            ),
            count(
                format!(
                    "SELECT count(*) AS n FROM deliveries d JOIN messages m ON m.id = d.message_id \
                     WHERE {FINISHED_OLD_MESSAGES}"
                ),
                cutoffs.messages,
            ),
            count(REPLIES.count(), cutoffs.replies),
            count(AUDIT.count(), cutoffs.audit),
            count(CALLBACKS.count(), cutoffs.callbacks),
        ];
        let mut counts = [0u64; 6];
        for (n, (sql, args)) in counts.iter_mut().zip(queries) {
            *n = S::Db::fetch_one(&mut conn, &sql, args)
                .await?
                .i64("n")?
                .max(0) as u64;
        }
        Ok(Purged {
            messages: counts[0],
            recipients: counts[1],
            deliveries: counts[2],
            replies: counts[3],
            audit_entries: counts[4],
            callbacks: counts[5],
        })
    }

    async fn purge_batch(
        &self,
        district: DistrictId,
        cutoffs: &Cutoffs,
        limit: u32,
    ) -> StoreResult<Purged> {
        let limit = i64::from(limit.max(1));
        // It reads before it writes: on SQLite, with the write lock from its start (a
        // snapshot read before another process's commit could not write after it).
        let mut tx = self.begin_write().await?;
        let mut purged = Purged::default();

        // Finished old messages one after the other, oldest first, each taken apart
        // through its own indexes: its deliveries with what hangs on each, then its
        // recipients, then the message with its report counts; at most `limit` rows of
        // deliveries and recipients in all.
        let mut budget = limit;
        let mut seen = std::collections::HashSet::new();
        while budget > 0 {
            let sql = format!(
                "SELECT m.id FROM messages m WHERE {FINISHED_OLD_MESSAGES} \
                 ORDER BY m.created_at, m.id LIMIT 1"
            );
            let args = Args::new().id(district).time(cutoffs.messages);
            let Some(message) = ids::<S::Db>(&mut tx, &sql, args, "id").await?.pop() else {
                break;
            };
            if !seen.insert(message) {
                break; // not taken apart in this transaction: left for the next batch
            }
            let deliveries = ids::<S::Db>(
                &mut tx,
                "SELECT id FROM deliveries WHERE message_id = $1 LIMIT $2",
                Args::new().id(message).int(budget),
                "id",
            )
            .await?;
            budget -= deliveries.len() as i64;
            for chunk in deliveries.chunks(CHUNK) {
                for table in ["delivery_events", "delivery_attempts", "log_entries"] {
                    let mut args = Args::new();
                    let listed = args.ids(chunk);
                    let sql = format!("DELETE FROM {table} WHERE delivery_id IN ({listed})");
                    S::Db::execute(&mut tx, &sql, args).await?;
                }
                let mut args = Args::new();
                let listed = args.ids(chunk);
                purged.deliveries += S::Db::execute(
                    &mut tx,
                    &format!("DELETE FROM deliveries WHERE id IN ({listed})"),
                    args,
                )
                .await?;
            }
            if budget == 0 {
                break;
            }
            let recipients = S::Db::execute(
                &mut tx,
                "DELETE FROM recipients WHERE id IN \
                 (SELECT id FROM recipients WHERE message_id = $1 LIMIT $2)",
                Args::new().id(message).int(budget),
            )
            .await?;
            purged.recipients += recipients;
            budget -= recipients as i64;
            if budget == 0 {
                break;
            }
            // Nothing left under it: the message goes, and a newer message that
            // re-notified it no longer points at it.
            S::Db::execute(
                &mut tx,
                "UPDATE messages SET renotify_of = NULL WHERE renotify_of = $1",
                Args::new().id(message),
            )
            .await?;
            for table in ["message_moves", "message_starts"] {
                let sql = format!("DELETE FROM {table} WHERE message_id = $1");
                S::Db::execute(&mut tx, &sql, Args::new().id(message)).await?;
            }
            purged.messages += S::Db::execute(
                &mut tx,
                "DELETE FROM messages WHERE id = $1",
                Args::new().id(message),
            )
            .await?;
        }

        for (kind, before, purged) in [
            (REPLIES, cutoffs.replies, &mut purged.replies),
            (CALLBACKS, cutoffs.callbacks, &mut purged.callbacks),
            (AUDIT, cutoffs.audit, &mut purged.audit_entries),
        ] {
            let args = Args::new().id(district).time(before).int(limit);
            *purged = S::Db::execute(&mut tx, &kind.delete(), args).await?;
        }
        tx.commit().await?;
        Ok(purged)
    }

    async fn purge_log(&self, before: DateTime<Utc>, limit: u32) -> StoreResult<u64> {
        let mut conn = self.writes().acquire().await?;
        S::Db::execute(
            &mut conn,
            "DELETE FROM log_entries WHERE (lane, partition, \"offset\") IN ( \
                 SELECT e.lane, e.partition, e.\"offset\" FROM log_entries e \
                 JOIN consumer_offsets c ON c.lane = e.lane AND c.partition = e.partition \
                 WHERE e.created_at < $1 AND e.\"offset\" <= c.committed_offset \
                   AND NOT EXISTS (SELECT 1 FROM consumer_offsets o \
                                   WHERE o.lane = e.lane AND o.partition = e.partition \
                                     AND o.committed_offset < e.\"offset\") \
                 LIMIT $2)",
            Args::new().time(before).int(i64::from(limit.max(1))),
        )
        .await
    }
}

/// Days in `column`, if set.
fn days(row: &impl Columns, column: &str) -> StoreResult<Option<u32>> {
    Ok(row.opt_i32(column)?.map(|d| d.max(0) as u32))
}

/// The ids in `column` of what `sql` reads, in the caller's transaction.
async fn ids<D: Dialect>(
    conn: &mut D::Connection,
    sql: &str,
    args: Args,
    column: &str,
) -> StoreResult<Vec<Uuid>> {
    D::fetch_all(conn, sql, args)
        .await?
        .iter()
        .map(|row| row.id(column))
        .collect()
}
