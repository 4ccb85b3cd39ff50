//! The log's consumers: the dispatchers present (`dispatchers`), the partition leases
//! and their fencing tokens (`partition_leases`), and how far each group has read each
//! partition (`consumer_offsets`). Plain functions over one connection or transaction,
//! the same on both databases; the caller owns the transaction.

use chrono::{DateTime, Utc};
use std::collections::HashSet;

use super::dialect::{Args, Columns, Dialect};
use super::dispatch::{Lease, PartitionWatch};
use super::{StoreError, StoreResult};
use crate::log::PartitionId;
use crate::Lane;

/// A lease's lane and partition as a row reads them.
pub(crate) fn lane_partition(row: &impl Columns) -> StoreResult<(Lane, PartitionId)> {
    Ok((
        row.parsed("lane")?,
        PartitionId::new(row.i32("partition")? as u32),
    ))
}

/// Refuses the transaction's writes unless `lease` is still the partition's current one;
/// holds the lease row until commit so no takeover slips in between.
pub(crate) async fn fence<D: Dialect>(conn: &mut D::Connection, lease: &Lease) -> StoreResult<()> {
    let held = D::execute(
        conn,
        "UPDATE partition_leases SET fencing_token = fencing_token \
         WHERE lane = $1 AND partition = $2 AND fencing_token = $3",
        Args::new()
            .text(lease.lane.as_str())
            .int(lease.partition.get())
            .int(lease.fencing_token),
    )
    .await?;
    if held == 0 {
        return Err(StoreError::Fenced {
            lane: lease.lane,
            partition: lease.partition,
        });
    }
    Ok(())
}

/// Moves the group's offset of the lease's partition forward to `offset` (never back),
/// in a transaction that has checked the lease's fencing token.
pub(crate) async fn write_offset<D: Dialect>(
    conn: &mut D::Connection,
    group: &str,
    lease: &Lease,
    offset: i64,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    D::execute(
        conn,
        "INSERT INTO consumer_offsets (consumer_group, lane, partition, committed_offset, fencing_token, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (consumer_group, lane, partition) DO UPDATE SET \
            committed_offset = excluded.committed_offset, fencing_token = excluded.fencing_token, \
            updated_at = excluded.updated_at \
         WHERE consumer_offsets.committed_offset < excluded.committed_offset",
        Args::new()
            .text(group)
            .text(lease.lane.as_str())
            .int(lease.partition.get())
            .int(offset)
            .int(lease.fencing_token)
            .time(at),
    )
    .await?;
    Ok(())
}

/// Renews `owner`'s presence and leases, and balances: with `n` live dispatchers each
/// holds at most ⌈wanted / n⌉ partitions, handing back what is over (others take it at
/// once) and taking free or expired ones up to its share. A change of owner increments
/// the fencing token; a renewal keeps it. Returns the leases `owner` holds of `wanted`.
pub(crate) async fn claim<D: Dialect>(
    conn: &mut D::Connection,
    owner: &str,
    wanted: &[(Lane, PartitionId)],
    ttl: chrono::Duration,
    at: DateTime<Utc>,
) -> StoreResult<Vec<Lease>> {
    D::execute(
        conn,
        "INSERT INTO dispatchers (owner, expires_at) VALUES ($1, $2) \
             ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at",
        Args::new().text(owner).time(at + ttl),
    )
    .await?;
    D::execute(
        conn,
        "DELETE FROM dispatchers WHERE expires_at < $1",
        Args::new().time(at - chrono::Duration::hours(1)),
    )
    .await?;
    let live = live::<D>(conn, at).await?;
    let share = wanted.len().div_ceil(live.max(1) as usize);
    let rows = D::fetch_all(
        conn,
        "SELECT lane, partition, owner, expires_at > $1 AS live FROM partition_leases",
        Args::new().time(at),
    )
    .await?;
    let mut mine = Vec::new();
    let mut taken = HashSet::new();
    for row in &rows {
        let key = lane_partition(row)?;
        if row.flag("live")? {
            if row.text("owner")? == owner && wanted.contains(&key) {
                mine.push(key);
            } else {
                taken.insert(key);
            }
        }
    }
    mine.sort();
    // Over the share: the last ones go back.
    for (lane, partition) in mine.split_off(share.min(mine.len())) {
        D::execute(
            conn,
            "UPDATE partition_leases SET expires_at = $1 \
                 WHERE lane = $2 AND partition = $3 AND owner = $4",
            Args::new()
                .time(at)
                .text(lane.as_str())
                .int(partition.get())
                .text(owner),
        )
        .await?;
    }
    // Up to the share: free ones, starting at a place of our own so that two
    // dispatchers starting together mostly ask for different partitions.
    let start = owner
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    let free = (0..wanted.len())
        .map(|i| wanted[(start + i) % wanted.len().max(1)])
        .filter(|key| !taken.contains(key) && !mine.contains(key));
    let mut claim: Vec<(Lane, PartitionId)> = mine
        .iter()
        .copied()
        .chain(free.take(share.saturating_sub(mine.len())))
        .collect();
    // Written in key order, as every dispatcher writes them, so that two claiming at
    // once never wait on each other's rows until the deadlock detector steps in.
    claim.sort_by_key(|(lane, partition)| (lane.as_str(), partition.get()));
    for chunk in claim.chunks(200) {
        let mut args = Args::new().time(at);
        let rows: Vec<String> = chunk
            .iter()
            .map(|(lane, partition)| {
                args.row(|a| {
                    a.text(lane.as_str())
                        .int(partition.get())
                        .text(owner)
                        .int(1)
                        .time(at + ttl)
                })
            })
            .collect();
        let sql = format!(
                "INSERT INTO partition_leases (lane, partition, owner, fencing_token, expires_at) VALUES {} \
                 ON CONFLICT (lane, partition) DO UPDATE SET \
                   fencing_token = partition_leases.fencing_token \
                       + CASE WHEN partition_leases.owner = excluded.owner THEN 0 ELSE 1 END, \
                   owner = excluded.owner, expires_at = excluded.expires_at \
                 WHERE partition_leases.owner = excluded.owner OR partition_leases.expires_at <= $1",
                rows.join(", ")
            );
        D::execute(conn, &sql, args).await?;
    }
    let rows = D::fetch_all(
        conn,
        "SELECT lane, partition, fencing_token FROM partition_leases \
             WHERE owner = $1 AND expires_at > $2 ORDER BY lane, partition",
        Args::new().text(owner).time(at),
    )
    .await?;
    let mut held = Vec::new();
    for row in &rows {
        let (lane, partition) = lane_partition(row)?;
        if wanted.contains(&(lane, partition)) {
            held.push(Lease {
                lane,
                partition,
                fencing_token: row.i64("fencing_token")?,
            });
        }
    }
    Ok(held)
}

/// Lets `owner`'s leases expire now, so that others take them at once, and takes its
/// presence away.
pub(crate) async fn release<D: Dialect>(
    conn: &mut D::Connection,
    owner: &str,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    D::execute(
        conn,
        "UPDATE partition_leases SET expires_at = $1 WHERE owner = $2 AND expires_at > $1",
        Args::new().time(at).text(owner),
    )
    .await?;
    D::execute(
        conn,
        "DELETE FROM dispatchers WHERE owner = $1",
        Args::new().text(owner),
    )
    .await?;
    Ok(())
}

/// The dispatchers present at `at`.
pub(crate) async fn live<D: Dialect>(
    conn: &mut D::Connection,
    at: DateTime<Utc>,
) -> StoreResult<u64> {
    let live = D::fetch_one(
        conn,
        "SELECT count(*) AS n FROM dispatchers WHERE expires_at > $1",
        Args::new().time(at),
    )
    .await?
    .i64("n")?;
    Ok(live.max(0) as u64)
}

/// How far `group` has read the partition, if it has read any of it.
pub(crate) async fn committed_offset<D: Dialect>(
    conn: &mut D::Connection,
    group: &str,
    lane: Lane,
    partition: PartitionId,
) -> StoreResult<Option<i64>> {
    D::fetch_optional(
        conn,
        "SELECT committed_offset FROM consumer_offsets \
         WHERE consumer_group = $1 AND lane = $2 AND partition = $3",
        Args::new()
            .text(group)
            .text(lane.as_str())
            .int(partition.get()),
    )
    .await?
    .map(|row| row.i64("committed_offset"))
    .transpose()
}

/// Each partition of the log as `group` stands on it: how many entries wait, since when,
/// and whether a live dispatcher holds it.
pub(crate) async fn watch<D: Dialect>(
    conn: &mut D::Connection,
    group: &str,
    at: DateTime<Utc>,
) -> StoreResult<Vec<PartitionWatch>> {
    D::fetch_all(
        conn,
        "SELECT h.lane, h.partition, \
                    h.next_offset - 1 - COALESCE(o.committed_offset, -1) AS waiting, \
                    e.created_at AS oldest, l.expires_at AS lease_expires_at \
             FROM log_heads h \
             LEFT JOIN consumer_offsets o \
               ON o.consumer_group = $1 AND o.lane = h.lane AND o.partition = h.partition \
             LEFT JOIN log_entries e ON e.lane = h.lane AND e.partition = h.partition \
               AND e.\"offset\" = COALESCE(o.committed_offset, -1) + 1 \
             LEFT JOIN partition_leases l ON l.lane = h.lane AND l.partition = h.partition \
             ORDER BY h.lane, h.partition",
        Args::new().text(group),
    )
    .await?
    .iter()
    .map(|row| {
        let (lane, partition) = lane_partition(row)?;
        let waiting = row.i64("waiting")?.max(0);
        Ok(PartitionWatch {
            lane,
            partition,
            waiting,
            oldest: if waiting > 0 {
                row.opt_time("oldest")?
            } else {
                None
            },
            held: row
                .opt_time("lease_expires_at")?
                .is_some_and(|expires| expires > at),
        })
    })
    .collect()
}

/// Moves `group`'s offset of the partition to `offset`, back as well as forward, and
/// notes when (a rewind; see `store::rewind`).
pub(crate) async fn rewind_offset<D: Dialect>(
    conn: &mut D::Connection,
    group: &str,
    lane: Lane,
    partition: PartitionId,
    offset: i64,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    D::execute(
        conn,
        "UPDATE consumer_offsets SET committed_offset = $4, rewound_at = $5, updated_at = $5 \
         WHERE consumer_group = $1 AND lane = $2 AND partition = $3",
        Args::new()
            .text(group)
            .text(lane.as_str())
            .int(partition.get())
            .int(offset)
            .time(at),
    )
    .await?;
    Ok(())
}

/// Fences out whoever holds the partition: their next write under the lease is refused,
/// and their next renewal takes it up with a new token.
pub(crate) async fn fence_out<D: Dialect>(
    conn: &mut D::Connection,
    lane: Lane,
    partition: PartitionId,
) -> StoreResult<()> {
    D::execute(
        conn,
        "UPDATE partition_leases SET fencing_token = fencing_token + 1 \
         WHERE lane = $1 AND partition = $2",
        Args::new().text(lane.as_str()).int(partition.get()),
    )
    .await?;
    Ok(())
}
