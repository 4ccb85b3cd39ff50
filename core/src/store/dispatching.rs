//! The dispatcher's repository, written once for both databases: attempts
//! (`delivery_attempts`, every write of them), and the reads that turn log entries and due
//! deliveries into [`Outbound`] sends; the leases and offsets it works under are
//! [`leases`]'. Delivery state is written only through [`transitions::apply`], as every
//! other writer does.
//!
//! A batch's attempts are written in a few statements whatever its size; how a batch
//! reaches the database is [`Dispatching`]'s: multi-row `VALUES` by default (SQLite),
//! arrays through `unnest` on PostgreSQL.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::deliveries::delivery_columns;
use super::dialect::{Args, Columns, Dialect, Pools};
use super::dispatch::{
    defer_change, finishes_in_order, replay_change, skip_change, split_outcomes, start_change,
    starts_in_order, AttemptRecord, AttemptResult, AttemptStart, BackedUp, DispatchStore, DueCount,
    Lease, Outbound, PartitionDistricts, PartitionWatch, Replay, Retrying,
};
use super::engine::Engine;
use super::leases;
use super::transitions::{self, Transitions};
use super::{deliveries, messages, CasOutcome, MessageScope, StoreError, StoreResult};
use crate::delivery::{Actor, Change, Delivery};
use crate::log::PartitionId;
use crate::{Channel, DeliveryId, DistrictId, GuardianId, Lane};

/// Rows per multi-row statement: well under either database's limit on parameters.
const BULK: usize = 400;

/// Districts' lanes read per statement: one index range each, well under SQLite's limit
/// of 500 terms in a compound select.
const DISTRICTS_AT_ONCE: usize = 100;

/// The condition of a delivery waiting for a time that has come by `$1`: a retry, a
/// scheduled send, quiet hours that ended, an attempt whose dispatcher stopped before
/// recording it. `deliveries_due` holds exactly these, by district and time.
const DUE: &str =
    "state IN ('CREATED', 'QUEUED') AND next_attempt_at IS NOT NULL AND next_attempt_at <= $1";

/// A delivery waiting for a time, come or not: what `deliveries_due` holds.
const WAITING: &str = "state IN ('CREATED', 'QUEUED') AND next_attempt_at IS NOT NULL";

/// What an unfinished attempt is recorded with when a later one starts.
pub(crate) const UNFINISHED: &str =
    "unfinished: the dispatcher stopped before recording the outcome";

/// One attempt to close: the delivery, the attempt, its outcome and error.
pub(crate) struct Closing<'a> {
    pub delivery: Uuid,
    pub attempt: i32,
    pub outcome: &'static str,
    pub error: Option<&'a str>,
}

/// How a batch of attempt rows reaches the database. The defaults are multi-row
/// `VALUES`, a few statements per batch; PostgreSQL binds arrays instead.
#[async_trait]
pub(crate) trait Dispatching: Dialect + Transitions {
    /// Records every attempt of `ids` still in flight as in doubt; returns their
    /// deliveries.
    async fn abandon_unfinished(
        conn: &mut Self::Connection,
        ids: &[Uuid],
        at: DateTime<Utc>,
    ) -> StoreResult<HashSet<Uuid>> {
        let mut in_doubt = HashSet::new();
        for chunk in ids.chunks(BULK) {
            let mut args = Args::new().text(UNFINISHED).time(at);
            let list = args.ids(chunk);
            let sql = format!(
                "UPDATE delivery_attempts SET outcome = 'in_doubt', error = $1, finished_at = $2 \
                 WHERE outcome = 'in_flight' AND delivery_id IN ({list}) RETURNING delivery_id"
            );
            for row in Self::fetch_all(conn, &sql, args).await? {
                in_doubt.insert(row.id("delivery_id")?);
            }
        }
        Ok(in_doubt)
    }

    /// Records a new attempt in flight for each delivery (as moved: its `attempts` is the
    /// new attempt's number) with the provider it goes to.
    async fn insert_attempts(
        conn: &mut Self::Connection,
        started: &[(&Delivery, &str)],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        for chunk in started.chunks(BULK) {
            let mut args = Args::new();
            let rows: Vec<String> = chunk
                .iter()
                .map(|(d, provider)| {
                    args.row(|a| {
                        a.id(d.district_id)
                            .id(d.id)
                            .int(d.attempts)
                            .text(d.idempotency_key.as_str())
                            .text(*provider)
                            .time(at)
                            .text("in_flight")
                    })
                })
                .collect();
            let sql = format!(
                "INSERT INTO delivery_attempts (district_id, delivery_id, attempt, idempotency_key, provider, \
                                                started_at, outcome) VALUES {}",
                rows.join(", ")
            );
            Self::execute(conn, &sql, args).await?;
        }
        Ok(())
    }

    /// Closes each attempt of `closing` that is still in flight; returns the deliveries
    /// whose attempt this closed.
    async fn close_attempts(
        conn: &mut Self::Connection,
        closing: &[Closing<'_>],
        at: DateTime<Utc>,
    ) -> StoreResult<HashSet<Uuid>> {
        let mut closed = HashSet::new();
        for chunk in closing.chunks(BULK) {
            let mut args = Args::new().time(at);
            let rows: Vec<String> = chunk
                .iter()
                .map(|c| {
                    args.row(|a| {
                        a.id(c.delivery)
                            .int(c.attempt)
                            .text(c.outcome)
                            .opt_text(c.error)
                    })
                })
                .collect();
            let sql = format!(
                "WITH x (xid, xattempt, xoutcome, xerror) AS (VALUES {}) \
                 UPDATE delivery_attempts SET outcome = x.xoutcome, error = x.xerror, finished_at = $1 \
                 FROM x WHERE delivery_id = x.xid AND attempt = x.xattempt AND outcome = 'in_flight' \
                 RETURNING delivery_id",
                rows.join(", ")
            );
            for row in Self::fetch_all(conn, &sql, args).await? {
                closed.insert(row.id("delivery_id")?);
            }
        }
        Ok(closed)
    }

    /// For each (guardian, channel) of `pairs`, its deliveries in `lane` or a more urgent
    /// one that wait for a retry after `at` or are at the provider now: when the earliest
    /// was created, and when the last retry is due (an attempt at the provider has no
    /// outcome yet; its delivery's time is only when it would be taken up again).
    async fn retrying(
        conn: &mut Self::Connection,
        pairs: &[(GuardianId, Channel)],
        lane: Lane,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<Retrying>> {
        let mut found = Vec::new();
        for chunk in pairs.chunks(300) {
            let mut args = Args::new().time(at);
            let lanes = args.texts(lane.and_more_urgent().map(|l| l.as_str()));
            let rows: Vec<String> = chunk
                .iter()
                .map(|(guardian, channel)| args.row(|a| a.id(*guardian).text(channel.as_str())))
                .collect();
            let sql = format!(
                "SELECT d.guardian_id, d.channel, min(d.created_at) AS created_at, \
                        max(CASE WHEN a.outcome = 'in_flight' THEN NULL ELSE d.next_attempt_at END) AS due \
                 FROM deliveries d \
                 LEFT JOIN delivery_attempts a ON a.delivery_id = d.id AND a.attempt = d.attempts \
                 WHERE d.state = 'QUEUED' AND d.attempts > 0 AND d.next_attempt_at > $1 \
                   AND d.lane IN ({lanes}) AND (d.guardian_id, d.channel) IN ({}) \
                 GROUP BY d.guardian_id, d.channel",
                rows.join(", ")
            );
            for row in Self::fetch_all(conn, &sql, args).await? {
                found.push(retrying_from_row(&row)?);
            }
        }
        Ok(found)
    }
}

/// Closes as sent the attempts of `ids` still in flight: deliveries a provider's report
/// has moved on from QUEUED, whose dispatcher never recorded the provider's answer.
pub(crate) async fn close_as_sent<D: Dialect>(
    conn: &mut D::Connection,
    ids: &[Uuid],
    at: DateTime<Utc>,
) -> StoreResult<()> {
    for chunk in ids.chunks(BULK) {
        let mut args = Args::new().time(at);
        let listed = args.ids(chunk);
        let sql = format!(
            "UPDATE delivery_attempts SET outcome = 'sent', finished_at = $1 \
             WHERE outcome = 'in_flight' AND delivery_id IN ({listed})"
        );
        D::execute(conn, &sql, args).await?;
    }
    Ok(())
}

/// A row of `guardian_id`, `channel`, `created_at` (the earliest) and `due` (the latest
/// retry), as every retry check answers.
pub(crate) fn retrying_from_row(row: &impl Columns) -> StoreResult<Retrying> {
    Ok(Retrying {
        guardian_id: GuardianId::from_uuid(row.id("guardian_id")?),
        channel: row.parsed("channel")?,
        first_created_at: row.time("created_at")?,
        due: row.opt_time("due")?,
    })
}

/// Applies `changes` through the one write of delivery state; returns the deliveries
/// that moved and, for every other id of `ids`, the delivery as it is now.
async fn apply_changes<D: Transitions>(
    conn: &mut D::Connection,
    ids: impl Iterator<Item = Uuid>,
    changes: &[Change],
) -> StoreResult<(HashMap<Uuid, Delivery>, HashMap<Uuid, Delivery>)> {
    let outcomes = transitions::apply::<D>(conn, changes).await?;
    let (moved, mut now) = split_outcomes(outcomes);
    let stale: Vec<Uuid> = ids
        .filter(|id| !moved.contains_key(id) && !now.contains_key(id))
        .collect();
    if !stale.is_empty() {
        now.extend(D::deliveries_now(conn, &stale).await?);
    }
    Ok((moved, now))
}

/// The select of [`Outbound`] rows, with the deliveries `d` taken from `deliveries` (a
/// table or a subquery).
fn outbound_select(deliveries: &str) -> String {
    let delivery_columns = delivery_columns("d");
    format!(
        "SELECT {delivery_columns}, l.lane, l.partition, l.\"offset\", m.kind, m.delivery_guarantee, \
                m.requires_ack, m.subject, m.body, m.translations, m.traceparent, r.language, \
                d.attempt_base, (SELECT max(a.attempt) FROM delivery_attempts a \
                 WHERE a.delivery_id = d.id AND a.outcome = 'in_flight') AS unfinished_attempt, \
                b.channel AS backs_up_channel, b.state AS backs_up_state, b.suppressed_reason AS backs_up_reason, \
                (b.fallback_of IS NOT NULL) AS backs_up_standby \
         FROM log_entries l \
         JOIN {deliveries} d ON d.id = l.delivery_id \
         JOIN messages m ON m.id = d.message_id \
         JOIN recipients r ON r.id = d.recipient_id \
         LEFT JOIN deliveries b ON b.id = d.fallback_of "
    )
}

fn outbound_from_row(row: &impl Columns, from_log: bool) -> StoreResult<Outbound> {
    let words = messages::words(row)?;
    Ok(Outbound {
        delivery: deliveries::from_row(row)?,
        lane: row.parsed("lane")?,
        partition: PartitionId::new(row.i32("partition")? as u32),
        offset: if from_log {
            Some(row.i64("offset")?)
        } else {
            None
        },
        kind: row.parsed("kind")?,
        guarantee: row.parsed("delivery_guarantee")?,
        requires_ack: row.flag("requires_ack")?,
        subject: words.subject,
        body: words.body,
        unfinished_attempt: row.opt_i32("unfinished_attempt")?,
        attempt_base: row.i32("attempt_base")?,
        backs_up: match row.opt_text("backs_up_channel")? {
            None => None,
            Some(channel) => Some(BackedUp {
                channel: channel
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("backs_up_channel: {e}")))?,
                state: row.parsed("backs_up_state")?,
                suppressed_reason: row.opt_text("backs_up_reason")?,
                standby: row.flag("backs_up_standby")?,
            }),
        },
        language: words.language,
        traceparent: row.opt_text("traceparent")?,
    })
}

/// Deliveries of the caller's scope (`$1` district, `$2` author or NULL).
fn scoped_deliveries() -> String {
    format!(
        "SELECT {} FROM deliveries d JOIN messages m ON m.id = d.message_id \
         WHERE d.district_id = $1 AND ($2 IS NULL OR m.author_id = $2)",
        delivery_columns("d")
    )
}

fn scope_args(scope: &MessageScope) -> Args {
    let (district, author) = scope.parts();
    Args::new().id(district).opt_id(author)
}

#[async_trait]
impl<S> DispatchStore for S
where
    S: Engine + 'static,
{
    fn log_writes(&self) -> tokio::sync::watch::Receiver<()> {
        self.subscribe_log_writes()
    }

    /// See [`leases::claim`]: in one transaction.
    async fn claim_leases(
        &self,
        owner: &str,
        wanted: &[(Lane, PartitionId)],
        ttl: chrono::Duration,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<Lease>> {
        let mut tx = self.writes().begin().await?;
        let held = leases::claim::<S::Db>(&mut tx, owner, wanted, ttl, at).await?;
        tx.commit().await?;
        Ok(held)
    }

    async fn watch_partitions(
        &self,
        group: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<PartitionWatch>> {
        let mut conn = self.reads().acquire().await?;
        leases::watch::<S::Db>(&mut conn, group, at).await
    }

    async fn dead_letter_counts(&self) -> StoreResult<Vec<(DistrictId, u64)>> {
        let mut conn = self.reads().acquire().await?;
        S::Db::fetch_all(
            &mut conn,
            "SELECT district_id, count(*) AS n FROM deliveries WHERE state = 'FAILED' \
             GROUP BY district_id ORDER BY district_id",
            Args::new(),
        )
        .await?
        .iter()
        .map(|row| {
            let district = DistrictId::from_uuid(row.id("district_id")?);
            Ok((district, row.i64("n")?.max(0) as u64))
        })
        .collect()
    }

    async fn live_dispatchers(&self, at: DateTime<Utc>) -> StoreResult<u64> {
        let mut conn = self.reads().acquire().await?;
        leases::live::<S::Db>(&mut conn, at).await
    }

    /// See [`leases::release`]: in one transaction.
    async fn release_leases(&self, owner: &str, at: DateTime<Utc>) -> StoreResult<()> {
        let mut tx = self.writes().begin().await?;
        leases::release::<S::Db>(&mut tx, owner, at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn committed_offset(
        &self,
        group: &str,
        lane: Lane,
        partition: PartitionId,
    ) -> StoreResult<Option<i64>> {
        let mut conn = self.reads().acquire().await?;
        leases::committed_offset::<S::Db>(&mut conn, group, lane, partition).await
    }

    async fn commit_offset(
        &self,
        group: &str,
        lease: &Lease,
        offset: i64,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut tx = self.writes().begin().await?;
        leases::fence::<S::Db>(&mut tx, lease).await?;
        leases::write_offset::<S::Db>(&mut tx, group, lease, offset, at).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn read_outbound(
        &self,
        lane: Lane,
        partition: PartitionId,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<Outbound>> {
        let mut conn = self.reads().acquire().await?;
        let sql = format!(
            "{} WHERE l.lane = $1 AND l.partition = $2 AND l.\"offset\" > $3 ORDER BY l.\"offset\" LIMIT $4",
            outbound_select("deliveries")
        );
        S::Db::fetch_all(
            &mut conn,
            &sql,
            Args::new()
                .text(lane.as_str())
                .int(partition.get())
                .int(after.unwrap_or(-1))
                .int(limit),
        )
        .await?
        .iter()
        .map(|row| outbound_from_row(row, true))
        .collect()
    }

    /// One statement, so every district's entries up to a partition's `last` are visible.
    async fn partition_heads(&self) -> StoreResult<Vec<(Lane, PartitionId, PartitionDistricts)>> {
        let mut conn = self.reads().acquire().await?;
        let rows = S::Db::fetch_all(
            &mut conn,
            "SELECT h.lane, h.partition, h.next_offset, dh.district_id, dh.last_offset \
             FROM log_heads h \
             LEFT JOIN log_district_heads dh ON dh.lane = h.lane AND dh.partition = h.partition \
             ORDER BY h.lane, h.partition",
            Args::new(),
        )
        .await?;
        let mut heads: Vec<(Lane, PartitionId, PartitionDistricts)> = Vec::new();
        for row in &rows {
            let (lane, partition) = leases::lane_partition(row)?;
            let last = row.i64("next_offset")? - 1;
            if heads
                .last()
                .is_none_or(|(l, p, _)| (*l, *p) != (lane, partition))
            {
                heads.push((
                    lane,
                    partition,
                    PartitionDistricts {
                        last,
                        districts: Vec::new(),
                    },
                ));
            }
            if let (Some(district_last), Some((_, _, partition_heads))) =
                (row.opt_i64("last_offset")?, heads.last_mut())
            {
                let district = DistrictId::from_uuid(row.id("district_id")?);
                partition_heads
                    .districts
                    .push((district, district_last.min(last)));
            }
        }
        Ok(heads)
    }

    /// One statement with an index range per district.
    async fn read_outbound_of_districts(
        &self,
        lane: Lane,
        partition: PartitionId,
        through: i64,
        after: &[(DistrictId, i64)],
        limit_each: u32,
    ) -> StoreResult<Vec<Outbound>> {
        if after.is_empty() {
            return Ok(Vec::new());
        }
        let select = outbound_select("deliveries");
        let mut args = Args::new()
            .text(lane.as_str())
            .int(partition.get())
            .int(through)
            .int(limit_each);
        let mut parts = Vec::with_capacity(after.len());
        for (i, (district, offset)) in after.iter().enumerate() {
            let (district_at, offset_at) = (args.len() + 1, args.len() + 2);
            args = args.id(*district).int(*offset);
            parts.push(format!(
                "SELECT * FROM ({select} WHERE l.lane = $1 AND l.partition = $2 \
                   AND l.district_id = ${district_at} AND l.\"offset\" > ${offset_at} \
                   AND l.\"offset\" <= $3 ORDER BY l.\"offset\" LIMIT $4) AS d{i}"
            ));
        }
        let mut conn = self.reads().acquire().await?;
        S::Db::fetch_all(&mut conn, &parts.join(" UNION ALL "), args)
            .await?
            .iter()
            .map(|row| outbound_from_row(row, true))
            .collect()
    }

    /// The districts with anything waiting at all are found by skipping through
    /// `deliveries_due` from one district to the next (one probe each, however many
    /// districts the installation has), then each of their lanes' index range is counted,
    /// stopping at `cap`.
    async fn due_counts(&self, at: DateTime<Utc>, cap: u32) -> StoreResult<Vec<DueCount>> {
        let mut conn = self.reads().acquire().await?;
        let sql = format!(
            "WITH RECURSIVE waiting (id) AS ( \
                 SELECT (SELECT district_id FROM deliveries WHERE {WAITING} \
                         ORDER BY district_id LIMIT 1) \
                 UNION ALL \
                 SELECT (SELECT d.district_id FROM deliveries d WHERE {WAITING} AND d.district_id > w.id \
                         ORDER BY d.district_id LIMIT 1) \
                 FROM waiting w WHERE w.id IS NOT NULL) \
             SELECT t.id, l.lane, \
                    (SELECT count(*) FROM (SELECT 1 FROM deliveries \
                                           WHERE district_id = t.id AND lane = l.lane AND {DUE} LIMIT $2) AS c) AS n \
             FROM waiting t \
             CROSS JOIN (SELECT 'emergency' AS lane UNION ALL SELECT 'normal' UNION ALL SELECT 'bulk') AS l \
             WHERE t.id IS NOT NULL"
        );
        let mut counts = Vec::new();
        for row in S::Db::fetch_all(&mut conn, &sql, Args::new().time(at).int(cap)).await? {
            let n = row.i64("n")?;
            if n > 0 {
                counts.push(DueCount {
                    district: DistrictId::from_uuid(row.id("id")?),
                    lane: row.parsed("lane")?,
                    deliveries: u32::try_from(n).unwrap_or(u32::MAX),
                });
            }
        }
        Ok(counts)
    }

    /// The due deliveries first, through their index, then their log entries by delivery
    /// (joined the other way round, the planner may scan the whole log to find a handful
    /// of them).
    async fn due_outbound(
        &self,
        at: DateTime<Utc>,
        shares: &[DueCount],
    ) -> StoreResult<Vec<Outbound>> {
        let mut conn = self.reads().acquire().await?;
        let mut due = Vec::new();
        for chunk in shares.chunks(DISTRICTS_AT_ONCE) {
            let mut args = Args::new().time(at);
            let mut parts = Vec::with_capacity(chunk.len());
            for (i, share) in chunk.iter().enumerate() {
                let n = args.len();
                let (district, lane, limit) = (n + 1, n + 2, n + 3);
                args = args
                    .id(share.district)
                    .text(share.lane.as_str())
                    .int(share.deliveries);
                let select = outbound_select(&format!(
                    "(SELECT * FROM deliveries WHERE district_id = ${district} AND lane = ${lane} \
                      AND {DUE} ORDER BY next_attempt_at LIMIT ${limit})"
                ));
                parts.push(format!("SELECT * FROM ({select}) AS d{i}"));
            }
            let sql = parts.join(" UNION ALL ");
            for row in S::Db::fetch_all(&mut conn, &sql, args).await? {
                due.push(outbound_from_row(&row, false)?);
            }
        }
        due.sort_by_key(|o: &Outbound| (o.lane, o.delivery.next_attempt_at));
        Ok(due)
    }

    /// Starts an attempt for each of `items` in one transaction under the lease: each
    /// delivery that may still be sent is QUEUED with its attempt counted (see
    /// `start_change`), an unfinished earlier attempt is recorded as in doubt, and the new
    /// attempt is recorded in flight.
    async fn start_attempts(
        &self,
        lease: &Lease,
        items: &[(&Delivery, &str)],
        actor: &str,
        recover_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<AttemptStart>> {
        let mut tx = self.writes().begin().await?;
        leases::fence::<S::Db>(&mut tx, lease).await?;
        let ids: Vec<Uuid> = items.iter().map(|(d, _)| *d.id.as_uuid()).collect();
        S::Db::lock_deliveries(&mut tx, &ids).await?;
        let actor = Actor::dispatcher(actor);
        let changes: Vec<Change> = items
            .iter()
            .filter_map(|(seen, provider)| start_change(seen, provider, &actor, recover_at, at))
            .collect();
        let (moved, now) = apply_changes::<S::Db>(&mut tx, ids.iter().copied(), &changes).await?;
        let moved_ids: Vec<Uuid> = moved.keys().copied().collect();
        let in_doubt = if moved_ids.is_empty() {
            HashSet::new()
        } else {
            S::Db::abandon_unfinished(&mut tx, &moved_ids, at).await?
        };
        let started: Vec<(&Delivery, &str)> = items
            .iter()
            .filter_map(|(seen, provider)| Some((moved.get(seen.id.as_uuid())?, *provider)))
            .collect();
        if !started.is_empty() {
            S::Db::insert_attempts(&mut tx, &started, at).await?;
        }
        tx.commit().await?;
        starts_in_order(ids.into_iter(), moved, &in_doubt, now)
    }

    /// Closes each attempt still in flight and moves its delivery as the result decides,
    /// in one transaction under the lease, with the consumer offset when one is given. An
    /// attempt someone else already closed (recovered as in doubt) changes nothing.
    async fn finish_attempts(
        &self,
        lease: &Lease,
        items: &[(&Delivery, i32, &AttemptResult)],
        actor: &str,
        commit: Option<(&str, i64)>,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<CasOutcome>> {
        let mut tx = self.writes().begin().await?;
        leases::fence::<S::Db>(&mut tx, lease).await?;
        let ids: Vec<Uuid> = items.iter().map(|(d, _, _)| *d.id.as_uuid()).collect();
        S::Db::lock_deliveries(&mut tx, &ids).await?;
        let closing: Vec<Closing> = items
            .iter()
            .map(|(seen, attempt, result)| {
                let (outcome, update, text, _) = result.parts();
                Closing {
                    delivery: *seen.id.as_uuid(),
                    attempt: *attempt,
                    outcome,
                    error: (update != "sent").then_some(text),
                }
            })
            .collect();
        let closed = if closing.is_empty() {
            HashSet::new()
        } else {
            S::Db::close_attempts(&mut tx, &closing, at).await?
        };
        let actor = Actor::dispatcher(actor);
        let changes: Vec<Change> = items
            .iter()
            .filter(|(seen, _, _)| closed.contains(seen.id.as_uuid()))
            .map(|(seen, _, result)| result.change(seen, &actor, at))
            .collect();
        let (applied, now) = apply_changes::<S::Db>(&mut tx, ids.iter().copied(), &changes).await?;
        if let Some((group, offset)) = commit {
            leases::write_offset::<S::Db>(&mut tx, group, lease, offset, at).await?;
        }
        tx.commit().await?;
        finishes_in_order(ids.into_iter(), applied, now)
    }

    /// For a provider whose circuit is open, or a guardian's earlier delivery still being
    /// retried.
    async fn defer_deliveries(
        &self,
        lease: &Lease,
        items: &[(&Delivery, DateTime<Utc>)],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>> {
        let actor = Actor::system("deferred");
        let changes: Vec<Change> = items
            .iter()
            .filter_map(|(seen, until)| defer_change(seen, *until, &actor, at))
            .collect();
        let moved = apply_under_lease(self, lease, &changes).await?;
        Ok(items
            .iter()
            .map(|(seen, _)| moved.contains_key(seen.id.as_uuid()))
            .collect())
    }

    async fn skip_standbys(
        &self,
        lease: &Lease,
        items: &[&Delivery],
        actor: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>> {
        let actor = Actor::dispatcher(actor);
        let changes: Vec<Change> = items
            .iter()
            .filter_map(|seen| skip_change(seen, &actor, at))
            .collect();
        let moved = apply_under_lease(self, lease, &changes).await?;
        Ok(items
            .iter()
            .map(|seen| moved.contains_key(seen.id.as_uuid()))
            .collect())
    }

    async fn retrying(
        &self,
        pairs: &[(GuardianId, Channel)],
        lane: Lane,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<Retrying>> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.reads().acquire().await?;
        S::Db::retrying(&mut conn, pairs, lane, at).await
    }

    async fn attempt_outcomes(&self) -> StoreResult<std::collections::BTreeMap<String, i64>> {
        let mut conn = self.reads().acquire().await?;
        S::Db::fetch_all(
            &mut conn,
            "SELECT outcome, count(*) AS n FROM delivery_attempts GROUP BY outcome",
            Args::new(),
        )
        .await?
        .iter()
        .map(|row| Ok((row.text("outcome")?, row.i64("n")?)))
        .collect()
    }

    async fn delivery_attempts(
        &self,
        scope: &MessageScope,
        id: DeliveryId,
    ) -> StoreResult<Option<(Delivery, Vec<AttemptRecord>)>> {
        let mut conn = self.reads().acquire().await?;
        let Some(row) = S::Db::fetch_optional(
            &mut conn,
            &format!("{} AND d.id = $3", scoped_deliveries()),
            scope_args(scope).id(id),
        )
        .await?
        else {
            return Ok(None);
        };
        let delivery = deliveries::from_row(&row)?;
        let attempts = S::Db::fetch_all(
            &mut conn,
            &format!(
                "SELECT {} FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
                deliveries::ATTEMPT_COLUMNS
            ),
            Args::new().id(id),
        )
        .await?
        .iter()
        .map(deliveries::attempt_from_row)
        .collect::<StoreResult<_>>()?;
        Ok(Some((delivery, attempts)))
    }

    async fn dead_letters(
        &self,
        scope: &MessageScope,
        before: Option<DeliveryId>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>> {
        let mut conn = self.reads().acquire().await?;
        S::Db::fetch_all(
            &mut conn,
            &format!(
                "{} AND d.state = 'FAILED' AND ($3 IS NULL OR d.id < $3) ORDER BY d.id DESC LIMIT $4",
                scoped_deliveries()
            ),
            scope_args(scope).opt_id(before).int(limit),
        )
        .await?
        .iter()
        .map(deliveries::from_row)
        .collect()
    }

    async fn replay_dead_letter(
        &self,
        scope: &MessageScope,
        id: DeliveryId,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<Replay> {
        let Some((seen, _)) = self.delivery_attempts(scope, id).await? else {
            return Ok(Replay::NotFound);
        };
        let Some(change) = replay_change(&seen, actor, at) else {
            return Ok(Replay::NotFailed(seen));
        };
        let mut tx = self.writes().begin().await?;
        let outcome = transitions::apply::<S::Db>(&mut tx, &[change])
            .await?
            .remove(0);
        tx.commit().await?;
        // Due at once: no need to wait for the dispatcher's next look.
        self.written().wrote();
        Ok(match outcome {
            CasOutcome::Applied(delivery) => Replay::Requeued(delivery),
            CasOutcome::Conflict(now) => Replay::NotFailed(now),
            CasOutcome::NotFound => Replay::NotFound,
        })
    }
}

/// Applies `changes`, decided by the dispatcher outside an attempt, in one transaction
/// under `lease`; returns the deliveries that moved.
async fn apply_under_lease<S: Pools>(
    store: &S,
    lease: &Lease,
    changes: &[Change],
) -> StoreResult<HashMap<Uuid, Delivery>> {
    let mut tx = store.writes().begin().await?;
    leases::fence::<S::Db>(&mut tx, lease).await?;
    let outcomes = transitions::apply::<S::Db>(&mut tx, changes).await?;
    tx.commit().await?;
    Ok(split_outcomes(outcomes).0)
}
