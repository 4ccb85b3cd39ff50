//! Rewinding a partition of the delivery log: its consumer offset moved back, so that the
//! dispatchers read its entries from an earlier offset again — to rebuild after an entry
//! was passed over without being sent. Reading again sends only what still waits
//! (created or queued, an unfinished attempt taken up under its idempotency key);
//! deliveries already sent, failed or cancelled are read and left alone.
//!
//! Refused when the range holds an at-most-once delivery that was already attempted (it
//! must never go twice), when entries of the range are no longer on the log (purged),
//! and when the partition was rewound less than [`REWIND_EVERY`] ago. The holder of the
//! partition is fenced (its lease's token moves on), so it reads the offset again
//! instead of committing over the rewind.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::dialect::{Args, Columns, Dialect};
use super::{leases, StoreResult};
use crate::log::{PartitionId, CONSUMER_GROUP};
use crate::Lane;

/// How long after a rewind the same partition may be rewound again.
pub const REWIND_EVERY: chrono::Duration = chrono::Duration::minutes(10);

/// A rewind done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rewound {
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub lane: Lane,
    #[cfg_attr(feature = "openapi", schema(value_type = u32))]
    pub partition: PartitionId,
    /// The first offset read again.
    pub from_offset: i64,
    /// The offset committed before the rewind.
    pub was_committed: i64,
    /// Entries read again.
    pub entries: u64,
    /// Of their deliveries, those still waiting to be sent (sent now).
    pub waiting: u64,
    /// Districts with entries in the range (each has the rewind in its audit log).
    #[serde(skip)]
    pub districts: Vec<Uuid>,
}

/// How a rewind went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewindOutcome {
    Rewound(Rewound),
    /// Nothing consumed at or after the offset (the committed offset, if any).
    NothingConsumed(Option<i64>),
    /// Entries of the range are no longer on the log (the oldest left, if any).
    Purged(Option<i64>),
    /// At-most-once deliveries already attempted in the range (how many).
    AtMostOnceAttempted(u64),
    /// Rewound too recently: again from this time.
    TooSoon(DateTime<Utc>),
}

/// Moves the dispatchers' offset of `(lane, partition)` back so that `from_offset` is read
/// again, in the caller's transaction (see the module's doc).
pub(crate) async fn rewind<D: Dialect>(
    conn: &mut D::Connection,
    lane: Lane,
    partition: PartitionId,
    from_offset: i64,
    at: DateTime<Utc>,
) -> StoreResult<RewindOutcome> {
    let key = || {
        Args::new()
            .text(CONSUMER_GROUP)
            .text(lane.as_str())
            .int(partition.get())
    };
    let Some(row) = D::fetch_optional(
        &mut *conn,
        "SELECT committed_offset, rewound_at FROM consumer_offsets \
         WHERE consumer_group = $1 AND lane = $2 AND partition = $3",
        key(),
    )
    .await?
    else {
        return Ok(RewindOutcome::NothingConsumed(None));
    };
    let committed = row.i64("committed_offset")?;
    if from_offset > committed || from_offset < 0 {
        return Ok(RewindOutcome::NothingConsumed(Some(committed)));
    }
    if let Some(last) = row.opt_time("rewound_at")? {
        if last + REWIND_EVERY > at {
            return Ok(RewindOutcome::TooSoon(last + REWIND_EVERY));
        }
    }
    let range = || {
        Args::new()
            .text(lane.as_str())
            .int(partition.get())
            .int(from_offset)
            .int(committed)
    };
    // Entries are taken off the log once consumed and old (`purge_log`): a rewind reaches
    // back only as far as the oldest left. (An erased guardian's entries leave holes,
    // which are no obstacle.)
    let oldest = D::fetch_one(
        &mut *conn,
        "SELECT min(\"offset\") AS oldest FROM log_entries WHERE lane = $1 AND partition = $2",
        Args::new().text(lane.as_str()).int(partition.get()),
    )
    .await?
    .opt_i64("oldest")?;
    if oldest.is_none_or(|oldest| oldest > from_offset) {
        return Ok(RewindOutcome::Purged(oldest));
    }
    // The range, per district: its entries, how many of their deliveries still wait, and
    // how many are at-most-once deliveries already attempted.
    let (mut entries, mut waiting, mut attempted, mut districts) = (0, 0, 0, Vec::new());
    for row in D::fetch_all(
        &mut *conn,
        "SELECT l.district_id, count(*) AS n, \
                sum(CASE WHEN d.state IN ('CREATED', 'QUEUED') THEN 1 ELSE 0 END) AS waiting, \
                sum(CASE WHEN m.delivery_guarantee = 'at_most_once' AND EXISTS \
                    (SELECT 1 FROM delivery_attempts a WHERE a.delivery_id = d.id) \
                    THEN 1 ELSE 0 END) AS attempted \
         FROM log_entries l JOIN deliveries d ON d.id = l.delivery_id \
         JOIN messages m ON m.id = d.message_id \
         WHERE l.lane = $1 AND l.partition = $2 AND l.\"offset\" >= $3 AND l.\"offset\" <= $4 \
         GROUP BY l.district_id",
        range(),
    )
    .await?
    {
        districts.push(row.id("district_id")?);
        entries += row.i64("n")?.max(0) as u64;
        waiting += row.i64("waiting")?.max(0) as u64;
        attempted += row.i64("attempted")?.max(0) as u64;
    }
    if attempted > 0 {
        return Ok(RewindOutcome::AtMostOnceAttempted(attempted));
    }
    leases::rewind_offset::<D>(conn, CONSUMER_GROUP, lane, partition, from_offset - 1, at).await?;
    // Whoever holds the partition is fenced, and reads the rewound offset on renewal.
    leases::fence_out::<D>(conn, lane, partition).await?;
    Ok(RewindOutcome::Rewound(Rewound {
        lane,
        partition,
        from_offset,
        was_committed: committed,
        entries,
        waiting,
        districts,
    }))
}
