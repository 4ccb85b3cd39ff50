//! The dispatcher's queries, written once for both dialects (see `roster_sql`). The
//! invoking module's parent provides `DELIVERY_COLUMNS`; rows are read by `deliveries::from_row`.

/// Expands to the dispatcher queries of one dialect.
macro_rules! dispatch_queries {
    (db: $db:ty, enc: $enc:path, dec: $dec:path) => {
        use chrono::{DateTime, Utc};
        use sqlx::Row as _;
        use $crate::delivery::Delivery;
        use $crate::log::PartitionId;
        use $crate::store::dispatch::{AttemptRecord, AttemptResult, AttemptStart, Lease, Outbound, Replay};
        use $crate::store::{CasOutcome, MessageScope, StoreError, StoreResult};
        use $crate::{DeliveryId, Lane};

        type Tx<'c> = sqlx::Transaction<'c, $db>;

        fn parse_col<T: std::str::FromStr>(row: &<$db as sqlx::Database>::Row, column: &str) -> StoreResult<T>
        where
            T::Err: std::fmt::Display,
        {
            let raw: String = row.try_get(column)?;
            raw.parse().map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
        }

        /// Renews `owner`'s presence and leases, and balances: with `n` live dispatchers each
        /// holds at most ⌈wanted / n⌉ partitions, handing back what is over (others take it
        /// at once) and taking free or expired ones up to its share. A change of owner
        /// increments the fencing token; a renewal keeps it. Returns the leases of `wanted`
        /// that `owner` holds.
        /// Per (lane, partition) with entries: how many the group has not committed yet.
        pub async fn lag(pool: &sqlx::Pool<$db>, group: &str) -> StoreResult<Vec<(Lane, PartitionId, i64)>> {
            let rows = sqlx::query(
                "SELECT h.lane, h.partition, h.next_offset - 1 - COALESCE(o.committed_offset, -1) AS lag \
                 FROM log_heads h LEFT JOIN consumer_offsets o \
                   ON o.consumer_group = $1 AND o.lane = h.lane AND o.partition = h.partition \
                 ORDER BY h.lane, h.partition",
            )
            .bind(group)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        parse_col(row, "lane")?,
                        PartitionId::new(row.try_get::<i32, _>("partition")? as u32),
                        row.try_get::<i64, _>("lag")?.max(0),
                    ))
                })
                .collect()
        }

        pub async fn live(pool: &sqlx::Pool<$db>, at: DateTime<Utc>) -> StoreResult<u64> {
            let live: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatchers WHERE expires_at > $1")
                .bind(at)
                .fetch_one(pool)
                .await?;
            Ok(live.max(0) as u64)
        }

        pub async fn claim(
            pool: &sqlx::Pool<$db>,
            owner: &str,
            wanted: &[(Lane, PartitionId)],
            ttl: chrono::Duration,
            at: DateTime<Utc>,
        ) -> StoreResult<Vec<Lease>> {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO dispatchers (owner, expires_at) VALUES ($1, $2) \
                 ON CONFLICT (owner) DO UPDATE SET expires_at = excluded.expires_at",
            )
            .bind(owner)
            .bind(at + ttl)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM dispatchers WHERE expires_at < $1")
                .bind(at - chrono::Duration::hours(1))
                .execute(&mut *tx)
                .await?;
            let live: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatchers WHERE expires_at > $1")
                .bind(at)
                .fetch_one(&mut *tx)
                .await?;
            let share = wanted.len().div_ceil(live.max(1) as usize);
            let rows = sqlx::query("SELECT lane, partition, owner, expires_at > $1 AS live FROM partition_leases")
                .bind(at)
                .fetch_all(&mut *tx)
                .await?;
            let mut mine = Vec::new();
            let mut taken = std::collections::HashSet::new();
            for row in &rows {
                let key: (Lane, PartitionId) = (
                    parse_col(row, "lane")?,
                    PartitionId::new(row.try_get::<i32, _>("partition")? as u32),
                );
                let row_owner: String = row.try_get("owner")?;
                if row.try_get::<bool, _>("live")? {
                    if row_owner == owner && wanted.contains(&key) {
                        mine.push(key);
                    } else {
                        taken.insert(key);
                    }
                }
            }
            mine.sort();
            // Over the share: the last ones go back.
            for (lane, partition) in mine.split_off(share.min(mine.len())) {
                sqlx::query(
                    "UPDATE partition_leases SET expires_at = $1 WHERE lane = $2 AND partition = $3 AND owner = $4",
                )
                .bind(at)
                .bind(lane.as_str())
                .bind(partition.get() as i32)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            }
            // Up to the share: free ones, starting at a place of our own so that two
            // dispatchers starting together mostly ask for different partitions.
            let start = owner.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
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
                let mut insert = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO partition_leases (lane, partition, owner, fencing_token, expires_at) ",
                );
                insert.push_values(chunk, |mut row, (lane, partition)| {
                    row.push_bind(lane.as_str())
                        .push_bind(partition.get() as i32)
                        .push_bind(owner)
                        .push_bind(1_i64)
                        .push_bind(at + ttl);
                });
                insert.push(
                    " ON CONFLICT (lane, partition) DO UPDATE SET \
                       fencing_token = partition_leases.fencing_token \
                           + CASE WHEN partition_leases.owner = excluded.owner THEN 0 ELSE 1 END, \
                       owner = excluded.owner, expires_at = excluded.expires_at \
                     WHERE partition_leases.owner = excluded.owner OR partition_leases.expires_at <= ",
                );
                insert.push_bind(at);
                insert.build().execute(&mut *tx).await?;
            }
            let rows = sqlx::query(
                "SELECT lane, partition, fencing_token FROM partition_leases \
                 WHERE owner = $1 AND expires_at > $2 ORDER BY lane, partition",
            )
            .bind(owner)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let mut held = Vec::new();
            for row in &rows {
                let lease = Lease {
                    lane: parse_col(row, "lane")?,
                    partition: PartitionId::new(row.try_get::<i32, _>("partition")? as u32),
                    fencing_token: row.try_get("fencing_token")?,
                };
                if wanted.contains(&(lease.lane, lease.partition)) {
                    held.push(lease);
                }
            }
            Ok(held)
        }

        /// Lets `owner`'s leases expire now, so that others take them at once.
        pub async fn release(pool: &sqlx::Pool<$db>, owner: &str, at: DateTime<Utc>) -> StoreResult<()> {
            let mut tx = pool.begin().await?;
            sqlx::query("UPDATE partition_leases SET expires_at = $1 WHERE owner = $2 AND expires_at > $1")
                .bind(at)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM dispatchers WHERE owner = $1")
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }

        /// Refuses the transaction's writes unless `lease` is still the partition's
        /// current one; holds the lease row until commit so no takeover slips in between.
        async fn fence(tx: &mut Tx<'_>, lease: &Lease) -> StoreResult<()> {
            let held = sqlx::query(
                "UPDATE partition_leases SET fencing_token = fencing_token \
                 WHERE lane = $1 AND partition = $2 AND fencing_token = $3",
            )
            .bind(lease.lane.as_str())
            .bind(lease.partition.get() as i32)
            .bind(lease.fencing_token)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if held == 0 {
                return Err(StoreError::Fenced {
                    lane: lease.lane,
                    partition: lease.partition,
                });
            }
            Ok(())
        }

        pub async fn committed_offset(
            pool: &sqlx::Pool<$db>,
            group: &str,
            lane: Lane,
            partition: PartitionId,
        ) -> StoreResult<Option<i64>> {
            Ok(sqlx::query_scalar(
                "SELECT committed_offset FROM consumer_offsets \
                 WHERE consumer_group = $1 AND lane = $2 AND partition = $3",
            )
            .bind(group)
            .bind(lane.as_str())
            .bind(partition.get() as i32)
            .fetch_optional(pool)
            .await?)
        }

        /// Moves the group's offset of the lease's partition forward to `offset`.
        pub async fn commit_offset(
            pool: &sqlx::Pool<$db>,
            group: &str,
            lease: &Lease,
            offset: i64,
            at: DateTime<Utc>,
        ) -> StoreResult<()> {
            let mut tx = pool.begin().await?;
            fence(&mut tx, lease).await?;
            write_offset(&mut tx, group, lease, offset, at).await?;
            tx.commit().await?;
            Ok(())
        }

        /// Moves the group's offset of the lease's partition forward to `offset` (never
        /// back), in a transaction that has checked the lease's fencing token.
        async fn write_offset(
            tx: &mut Tx<'_>,
            group: &str,
            lease: &Lease,
            offset: i64,
            at: DateTime<Utc>,
        ) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO consumer_offsets (consumer_group, lane, partition, committed_offset, fencing_token, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (consumer_group, lane, partition) DO UPDATE SET \
                    committed_offset = excluded.committed_offset, fencing_token = excluded.fencing_token, \
                    updated_at = excluded.updated_at \
                 WHERE consumer_offsets.committed_offset < excluded.committed_offset",
            )
            .bind(group)
            .bind(lease.lane.as_str())
            .bind(lease.partition.get() as i32)
            .bind(offset)
            .bind(lease.fencing_token)
            .bind(at)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        /// The deliveries of `ids` that exist, as they are now, by id.
        async fn now_of(
            tx: &mut Tx<'_>,
            ids: &[uuid::Uuid],
        ) -> StoreResult<std::collections::HashMap<uuid::Uuid, Delivery>> {
            if ids.is_empty() {
                return Ok(std::collections::HashMap::new());
            }
            <$db as $crate::store::transitions::Transitions>::deliveries_now(&mut **tx, ids).await
        }

        /// Applies `changes` through the one write of delivery state; returns the
        /// deliveries that moved and, for every other id of `ids`, the delivery as it is now.
        async fn apply_changes(
            tx: &mut Tx<'_>,
            ids: impl Iterator<Item = uuid::Uuid>,
            changes: &[$crate::delivery::Change],
        ) -> StoreResult<(std::collections::HashMap<uuid::Uuid, Delivery>, std::collections::HashMap<uuid::Uuid, Delivery>)> {
            let outcomes = $crate::store::transitions::apply::<$db>(&mut **tx, changes).await?;
            let (moved, mut now) = $crate::store::dispatch::split_outcomes(outcomes);
            let stale: Vec<uuid::Uuid> = ids.filter(|id| !moved.contains_key(id) && !now.contains_key(id)).collect();
            now.extend(now_of(tx, &stale).await?);
            Ok((moved, now))
        }

        /// Starting a batch's attempts, the same on both dialects: each delivery that may
        /// still be sent is QUEUED with its attempt counted (see `start_change`). Returns
        /// the deliveries that moved, and the others as they are now.
        async fn start_changes(
            tx: &mut Tx<'_>,
            items: &[(&Delivery, &str)],
            actor: &str,
            recover_at: DateTime<Utc>,
            at: DateTime<Utc>,
        ) -> StoreResult<(std::collections::HashMap<uuid::Uuid, Delivery>, std::collections::HashMap<uuid::Uuid, Delivery>)> {
            let actor = $crate::delivery::Actor::dispatcher(actor);
            let changes: Vec<$crate::delivery::Change> = items
                .iter()
                .filter_map(|(seen, provider)| $crate::store::dispatch::start_change(seen, provider, &actor, recover_at, at))
                .collect();
            apply_changes(tx, items.iter().map(|(seen, _)| *seen.id.as_uuid()), &changes).await
        }

        /// The end of recording a batch's outcomes, the same on both dialects once the
        /// attempts are closed (`closed`: the deliveries whose attempt this batch closed):
        /// their deliveries moved as each result decides, the current rows of the ones that
        /// did not move, the consumer offset when one is to be committed, the commit.
        async fn close_finish(
            mut tx: Tx<'_>,
            lease: &Lease,
            items: &[(&Delivery, i32, &AttemptResult)],
            closed: &std::collections::HashSet<uuid::Uuid>,
            actor: &str,
            commit: Option<(&str, i64)>,
            at: DateTime<Utc>,
        ) -> StoreResult<Vec<CasOutcome>> {
            let actor = $crate::delivery::Actor::dispatcher(actor);
            let changes: Vec<$crate::delivery::Change> = items
                .iter()
                .filter(|(seen, _, _)| closed.contains(seen.id.as_uuid()))
                .map(|(seen, _, result)| result.change(seen, &actor, at))
                .collect();
            let (applied, now_rows) =
                apply_changes(&mut tx, items.iter().map(|(seen, _, _)| *seen.id.as_uuid()), &changes).await?;
            if let Some((group, offset)) = commit {
                write_offset(&mut tx, group, lease, offset, at).await?;
            }
            tx.commit().await?;
            $crate::store::dispatch::finishes_in_order(
                items.iter().map(|(seen, _, _)| *seen.id.as_uuid()),
                applied,
                now_rows,
            )
        }

        /// A row of `guardian_id`, `channel`, `created_at` (the earliest) and `due` (the
        /// latest retry), as both dialects' retry checks answer.
        fn retrying_from_row(row: &<$db as sqlx::Database>::Row) -> StoreResult<$crate::store::dispatch::Retrying> {
            Ok($crate::store::dispatch::Retrying {
                guardian_id: $crate::GuardianId::from_uuid($dec(row, "guardian_id")?),
                channel: parse_col(row, "channel")?,
                first_created_at: row.try_get("created_at")?,
                due: row.try_get("due")?,
            })
        }

        fn outbound_select() -> String {
            outbound_select_of("deliveries")
        }

        /// `outbound_select` with the deliveries `d` taken from `deliveries` (a table or
        /// a subquery).
        fn outbound_select_of(deliveries: &str) -> String {
            let delivery_columns = $crate::store::delivery_columns("d");
            format!(
                "SELECT {delivery_columns}, l.lane, l.partition, l.\"offset\", m.kind, m.delivery_guarantee, \
                        m.requires_ack, m.subject, m.body, m.translations, r.language, d.attempt_base, \
                        (SELECT max(a.attempt) FROM delivery_attempts a \
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

        fn outbound_from_row(row: &<$db as sqlx::Database>::Row, from_log: bool) -> StoreResult<Outbound> {
            let language: String = row.try_get("language")?;
            let translations: sqlx::types::Json<serde_json::Value> = row.try_get("translations")?;
            let translated = |field: &str| {
                translations
                    .get(&language)
                    .and_then(|t| t.get(field))
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            Ok(Outbound {
                delivery: crate::store::deliveries::from_row(row)?,
                lane: parse_col(row, "lane")?,
                partition: PartitionId::new(row.try_get::<i32, _>("partition")? as u32),
                offset: if from_log { Some(row.try_get("offset")?) } else { None },
                kind: parse_col(row, "kind")?,
                guarantee: parse_col(row, "delivery_guarantee")?,
                requires_ack: row.try_get("requires_ack")?,
                subject: translated("subject").map_or_else(|| row.try_get("subject"), Ok)?,
                body: translated("body").map_or_else(|| row.try_get("body"), Ok)?,
                language: language.clone(),
                unfinished_attempt: row.try_get("unfinished_attempt")?,
                attempt_base: row.try_get("attempt_base")?,
                backs_up: match row.try_get::<Option<String>, _>("backs_up_channel")? {
                    None => None,
                    Some(channel) => Some($crate::store::dispatch::BackedUp {
                        channel: channel.parse().map_err(|e| StoreError::Corrupt(format!("backs_up_channel: {e}")))?,
                        state: parse_col(row, "backs_up_state")?,
                        suppressed_reason: row.try_get("backs_up_reason")?,
                        standby: row.try_get("backs_up_standby")?,
                    }),
                },
            })
        }

        /// The log's entries of one partition after `after`, with their deliveries.
        pub async fn read_outbound(
            pool: &sqlx::Pool<$db>,
            lane: Lane,
            partition: PartitionId,
            after: Option<i64>,
            limit: u32,
        ) -> StoreResult<Vec<Outbound>> {
            let rows = sqlx::query(&format!(
                "{} WHERE l.lane = $1 AND l.partition = $2 AND l.\"offset\" > $3 ORDER BY l.\"offset\" LIMIT $4",
                outbound_select()
            ))
            .bind(lane.as_str())
            .bind(partition.get() as i32)
            .bind(after.unwrap_or(-1))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter().map(|row| outbound_from_row(row, true)).collect()
        }

        /// Per partition: where its visible entries end, and each district's last entry in
        /// it. One statement, so every district's entries up to a partition's `last` are
        /// visible.
        pub async fn partition_heads(
            pool: &sqlx::Pool<$db>,
        ) -> StoreResult<Vec<(Lane, PartitionId, $crate::store::dispatch::PartitionDistricts)>> {
            let rows = sqlx::query(
                "SELECT h.lane, h.partition, h.next_offset, dh.district_id, dh.last_offset \
                 FROM log_heads h \
                 LEFT JOIN log_district_heads dh ON dh.lane = h.lane AND dh.partition = h.partition \
                 ORDER BY h.lane, h.partition",
            )
            .fetch_all(pool)
            .await?;
            let mut heads: Vec<(Lane, PartitionId, $crate::store::dispatch::PartitionDistricts)> = Vec::new();
            for row in &rows {
                let lane: Lane = parse_col(row, "lane")?;
                let partition = PartitionId::new(row.try_get::<i32, _>("partition")? as u32);
                let last = row.try_get::<i64, _>("next_offset")? - 1;
                if heads.last().is_none_or(|(l, p, _)| (*l, *p) != (lane, partition)) {
                    heads.push((lane, partition, $crate::store::dispatch::PartitionDistricts { last, districts: Vec::new() }));
                }
                if let (Some(district_last), Some((_, _, partition_heads))) =
                    (row.try_get::<Option<i64>, _>("last_offset")?, heads.last_mut())
                {
                    let district = $crate::DistrictId::from_uuid($dec(row, "district_id")?);
                    partition_heads.districts.push((district, district_last.min(last)));
                }
            }
            Ok(heads)
        }

        /// Per district, the partition's entries after that district's offset and up to
        /// `through`, at most `limit_each` of each, in offset order per district: one
        /// statement with an index range per district.
        pub async fn read_outbound_of_districts(
            pool: &sqlx::Pool<$db>,
            lane: Lane,
            partition: PartitionId,
            through: i64,
            after: &[($crate::DistrictId, i64)],
            limit_each: u32,
        ) -> StoreResult<Vec<Outbound>> {
            if after.is_empty() {
                return Ok(Vec::new());
            }
            let select = outbound_select();
            let parts: Vec<String> = (0..after.len())
                .map(|i| {
                    let (district, offset) = (5 + 2 * i, 6 + 2 * i);
                    format!(
                        "SELECT * FROM ({select} WHERE l.lane = $1 AND l.partition = $2 AND l.district_id = ${district} \
                           AND l.\"offset\" > ${offset} AND l.\"offset\" <= $3 ORDER BY l.\"offset\" LIMIT $4) AS d{i}"
                    )
                })
                .collect();
            let sql = parts.join(" UNION ALL ");
            let mut query = sqlx::query(&sql)
                .bind(lane.as_str())
                .bind(partition.get() as i32)
                .bind(through)
                .bind(i64::from(limit_each));
            for (district, offset) in after {
                query = query.bind($enc(*district.as_uuid())).bind(*offset);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter().map(|row| outbound_from_row(row, true)).collect()
        }

        /// The condition of a delivery waiting for a time that has come by `$1`: a retry, a
        /// scheduled send, quiet hours that ended, an attempt whose dispatcher stopped
        /// before recording it. `deliveries_due` holds exactly these, by district and time.
        const DUE: &str = "state IN ('CREATED', 'QUEUED') AND next_attempt_at IS NOT NULL AND next_attempt_at <= $1";

        /// A delivery waiting for a time, come or not: what `deliveries_due` holds.
        const WAITING: &str = "state IN ('CREATED', 'QUEUED') AND next_attempt_at IS NOT NULL";

        /// Districts' lanes read per statement: one index range each, well under SQLite's
        /// limit of 500 terms in a compound select.
        const DISTRICTS_AT_ONCE: usize = 100;

        /// Per district and lane with deliveries due by `at`, how many (up to `cap`), in
        /// one statement: the districts with anything waiting at all are found by
        /// skipping through `deliveries_due` from one district to the next (one probe
        /// each, however many districts the installation has), then each of their lanes'
        /// index range is counted, stopping at `cap`.
        pub async fn due_counts(
            pool: &sqlx::Pool<$db>,
            at: DateTime<Utc>,
            cap: u32,
        ) -> StoreResult<Vec<$crate::store::dispatch::DueCount>> {
            let rows = sqlx::query(&format!(
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
            ))
            .bind(at)
            .bind(i64::from(cap))
            .fetch_all(pool)
            .await?;
            let mut counts = Vec::new();
            for row in &rows {
                let n: i64 = row.try_get("n")?;
                if n > 0 {
                    counts.push($crate::store::dispatch::DueCount {
                        district: $crate::DistrictId::from_uuid($dec(row, "id")?),
                        lane: parse_col(row, "lane")?,
                        deliveries: u32::try_from(n).unwrap_or(u32::MAX),
                    });
                }
            }
            Ok(counts)
        }

        /// Per district and lane of `shares`, its oldest deliveries due by `at`, at most its
        /// share: the due deliveries first, through their index, then their log entries by
        /// delivery (joined the other way round, the planner may scan the whole log to
        /// find a handful of them). Most urgent lane first, then oldest first.
        pub async fn due(
            pool: &sqlx::Pool<$db>,
            at: DateTime<Utc>,
            shares: &[$crate::store::dispatch::DueCount],
        ) -> StoreResult<Vec<Outbound>> {
            let mut due = Vec::new();
            for chunk in shares.chunks(DISTRICTS_AT_ONCE) {
                let sql = (0..chunk.len())
                    .map(|i| {
                        let (district, lane, share) = (2 + 3 * i, 3 + 3 * i, 4 + 3 * i);
                        let select = outbound_select_of(&format!(
                            "(SELECT * FROM deliveries WHERE district_id = ${district} AND lane = ${lane} AND {DUE} \
                              ORDER BY next_attempt_at LIMIT ${share})"
                        ));
                        format!("SELECT * FROM ({select}) AS d{i}")
                    })
                    .collect::<Vec<_>>()
                    .join(" UNION ALL ");
                let mut query = sqlx::query(&sql).bind(at);
                for share in chunk {
                    query = query
                        .bind($enc(*share.district.as_uuid()))
                        .bind(share.lane.as_str())
                        .bind(i64::from(share.deliveries));
                }
                for row in query.fetch_all(pool).await? {
                    due.push(outbound_from_row(&row, false)?);
                }
            }
            due.sort_by_key(|o: &Outbound| (o.lane, o.delivery.next_attempt_at));
            Ok(due)
        }

        /// Moves each of `items` (delivery as read, new time) to a later `next_attempt_at`
        /// without an attempt (compare and swap), under the lease: for a provider whose
        /// circuit is open, or a guardian's earlier delivery still being retried.
        pub async fn defer(
            pool: &sqlx::Pool<$db>,
            lease: &Lease,
            items: &[(&Delivery, DateTime<Utc>)],
            at: DateTime<Utc>,
        ) -> StoreResult<Vec<bool>> {
            let mut tx = pool.begin().await?;
            fence(&mut tx, lease).await?;
            let actor = $crate::delivery::Actor::system("deferred");
            let changes: Vec<$crate::delivery::Change> = items
                .iter()
                .filter_map(|(seen, until)| $crate::store::dispatch::defer_change(seen, *until, &actor, at))
                .collect();
            let outcomes = $crate::store::transitions::apply::<$db>(&mut *tx, &changes).await?;
            tx.commit().await?;
            let (moved, _) = $crate::store::dispatch::split_outcomes(outcomes);
            Ok(items.iter().map(|(seen, _)| moved.contains_key(seen.id.as_uuid())).collect())
        }

        /// Suppresses each standby of `items` (as read) whose delivery before it reached the
        /// guardian (compare and swap, with its event), under the lease; whether each moved.
        pub async fn skip_standbys(
            pool: &sqlx::Pool<$db>,
            lease: &Lease,
            items: &[&Delivery],
            actor: &str,
            at: DateTime<Utc>,
        ) -> StoreResult<Vec<bool>> {
            let mut tx = pool.begin().await?;
            fence(&mut tx, lease).await?;
            let actor = $crate::delivery::Actor::dispatcher(actor);
            let changes: Vec<$crate::delivery::Change> = items
                .iter()
                .filter_map(|seen| $crate::store::dispatch::skip_change(seen, &actor, at))
                .collect();
            let outcomes = $crate::store::transitions::apply::<$db>(&mut *tx, &changes).await?;
            tx.commit().await?;
            let (moved, _) = $crate::store::dispatch::split_outcomes(outcomes);
            Ok(items.iter().map(|seen| moved.contains_key(seen.id.as_uuid())).collect())
        }

        fn scoped_deliveries() -> String {
            let columns = $crate::store::delivery_columns("d");
            format!(
                "SELECT {columns} FROM deliveries d JOIN messages m ON m.id = d.message_id \
                 WHERE d.district_id = $1 AND ($2 IS NULL OR m.author_id = $2)"
            )
        }

        pub async fn delivery_attempts(
            pool: &sqlx::Pool<$db>,
            scope: &MessageScope,
            id: DeliveryId,
        ) -> StoreResult<Option<(Delivery, Vec<AttemptRecord>)>> {
            let (district, author) = scope.parts();
            let Some(row) = sqlx::query(&format!("{} AND d.id = $3", scoped_deliveries()))
                .bind($enc(district))
                .bind(author.map($enc))
                .bind($enc(*id.as_uuid()))
                .fetch_optional(pool)
                .await?
            else {
                return Ok(None);
            };
            let delivery = crate::store::deliveries::from_row(&row)?;
            let attempts = sqlx::query(
                "SELECT attempt, provider, started_at, finished_at, outcome, error FROM delivery_attempts \
                 WHERE delivery_id = $1 ORDER BY attempt",
            )
            .bind($enc(*id.as_uuid()))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(AttemptRecord {
                    attempt: row.try_get("attempt")?,
                    provider: row.try_get("provider")?,
                    started_at: row.try_get("started_at")?,
                    finished_at: row.try_get("finished_at")?,
                    outcome: row.try_get("outcome")?,
                    error: row.try_get("error")?,
                })
            })
            .collect::<StoreResult<_>>()?;
            Ok(Some((delivery, attempts)))
        }

        pub async fn dead_letters(
            pool: &sqlx::Pool<$db>,
            scope: &MessageScope,
            before: Option<DeliveryId>,
            limit: u32,
        ) -> StoreResult<Vec<Delivery>> {
            let (district, author) = scope.parts();
            sqlx::query(&format!(
                "{} AND d.state = 'FAILED' AND ($3 IS NULL OR d.id < $3) ORDER BY d.id DESC LIMIT $4",
                scoped_deliveries()
            ))
            .bind($enc(district))
            .bind(author.map($enc))
            .bind(before.map(|b| $enc(*b.as_uuid())))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| crate::store::deliveries::from_row(row))
            .collect()
        }

        pub async fn replay(
            pool: &sqlx::Pool<$db>,
            scope: &MessageScope,
            id: DeliveryId,
            actor: &$crate::delivery::Actor,
            at: DateTime<Utc>,
        ) -> StoreResult<Replay> {
            let Some((seen, _)) = delivery_attempts(pool, scope, id).await? else {
                return Ok(Replay::NotFound);
            };
            let Some(change) = $crate::store::dispatch::replay_change(&seen, actor, at) else {
                return Ok(Replay::NotFailed(seen));
            };
            let mut tx = pool.begin().await?;
            let outcome = $crate::store::transitions::apply::<$db>(&mut *tx, &[change]).await?.remove(0);
            tx.commit().await?;
            Ok(match outcome {
                CasOutcome::Applied(delivery) => Replay::Requeued(delivery),
                CasOutcome::Conflict(now) => Replay::NotFailed(now),
                CasOutcome::NotFound => Replay::NotFound,
            })
        }

        pub async fn attempt_outcomes(pool: &sqlx::Pool<$db>) -> StoreResult<std::collections::BTreeMap<String, i64>> {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT outcome, count(*) FROM delivery_attempts GROUP BY outcome")
                    .fetch_all(pool)
                    .await?;
            Ok(rows.into_iter().collect())
        }
    };
}

/// Expands to `impl DispatchStore for $store` (a store with a `pool`), calling the
/// module `dispatching` made by `dispatch_queries!`.
macro_rules! dispatch_store_impl {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl crate::store::dispatch::DispatchStore for $store {
            fn log_writes(&self) -> tokio::sync::watch::Receiver<()> {
                self.subscribe_log_writes()
            }

            async fn claim_leases(
                &self,
                owner: &str,
                wanted: &[(crate::Lane, crate::log::PartitionId)],
                ttl: chrono::Duration,
                at: DateTime<Utc>,
            ) -> StoreResult<Vec<crate::store::dispatch::Lease>> {
                dispatching::claim(self.write_pool(), owner, wanted, ttl, at).await
            }

            async fn release_leases(&self, owner: &str, at: DateTime<Utc>) -> StoreResult<()> {
                dispatching::release(self.write_pool(), owner, at).await
            }

            async fn committed_offset(
                &self,
                group: &str,
                lane: crate::Lane,
                partition: crate::log::PartitionId,
            ) -> StoreResult<Option<i64>> {
                dispatching::committed_offset(&self.pool, group, lane, partition).await
            }

            async fn commit_offset(
                &self,
                group: &str,
                lease: &crate::store::dispatch::Lease,
                offset: i64,
                at: DateTime<Utc>,
            ) -> StoreResult<()> {
                dispatching::commit_offset(self.write_pool(), group, lease, offset, at).await
            }

            async fn read_outbound(
                &self,
                lane: crate::Lane,
                partition: crate::log::PartitionId,
                after: Option<i64>,
                limit: u32,
            ) -> StoreResult<Vec<crate::store::dispatch::Outbound>> {
                dispatching::read_outbound(&self.pool, lane, partition, after, limit).await
            }

            async fn partition_heads(
                &self,
            ) -> StoreResult<
                Vec<(
                    crate::Lane,
                    crate::log::PartitionId,
                    crate::store::dispatch::PartitionDistricts,
                )>,
            > {
                dispatching::partition_heads(&self.pool).await
            }

            async fn read_outbound_of_districts(
                &self,
                lane: crate::Lane,
                partition: crate::log::PartitionId,
                through: i64,
                after: &[(crate::DistrictId, i64)],
                limit_each: u32,
            ) -> StoreResult<Vec<crate::store::dispatch::Outbound>> {
                dispatching::read_outbound_of_districts(
                    &self.pool, lane, partition, through, after, limit_each,
                )
                .await
            }

            async fn due_counts(
                &self,
                at: DateTime<Utc>,
                cap: u32,
            ) -> StoreResult<Vec<crate::store::dispatch::DueCount>> {
                dispatching::due_counts(&self.pool, at, cap).await
            }

            async fn due_outbound(
                &self,
                at: DateTime<Utc>,
                shares: &[crate::store::dispatch::DueCount],
            ) -> StoreResult<Vec<crate::store::dispatch::Outbound>> {
                dispatching::due(&self.pool, at, shares).await
            }

            async fn start_attempts(
                &self,
                lease: &crate::store::dispatch::Lease,
                items: &[(&Delivery, &str)],
                actor: &str,
                recover_at: DateTime<Utc>,
                at: DateTime<Utc>,
            ) -> StoreResult<Vec<crate::store::dispatch::AttemptStart>> {
                dispatching::start_attempts(self.write_pool(), lease, items, actor, recover_at, at)
                    .await
            }

            async fn defer_deliveries(
                &self,
                lease: &crate::store::dispatch::Lease,
                items: &[(&Delivery, DateTime<Utc>)],
                at: DateTime<Utc>,
            ) -> StoreResult<Vec<bool>> {
                dispatching::defer(self.write_pool(), lease, items, at).await
            }

            async fn consumer_lag(
                &self,
                group: &str,
            ) -> StoreResult<Vec<(crate::Lane, crate::log::PartitionId, i64)>> {
                dispatching::lag(&self.pool, group).await
            }

            async fn live_dispatchers(&self, at: DateTime<Utc>) -> StoreResult<u64> {
                dispatching::live(&self.pool, at).await
            }

            async fn skip_standbys(
                &self,
                lease: &crate::store::dispatch::Lease,
                items: &[&Delivery],
                actor: &str,
                at: DateTime<Utc>,
            ) -> StoreResult<Vec<bool>> {
                dispatching::skip_standbys(self.write_pool(), lease, items, actor, at).await
            }

            async fn retrying(
                &self,
                pairs: &[(crate::GuardianId, crate::Channel)],
                lane: crate::Lane,
                at: DateTime<Utc>,
            ) -> StoreResult<Vec<crate::store::dispatch::Retrying>> {
                dispatching::retrying(&self.pool, pairs, lane, at).await
            }

            async fn finish_attempts(
                &self,
                lease: &crate::store::dispatch::Lease,
                items: &[(&Delivery, i32, &crate::store::dispatch::AttemptResult)],
                actor: &str,
                commit: Option<(&str, i64)>,
                at: DateTime<Utc>,
            ) -> StoreResult<Vec<CasOutcome>> {
                dispatching::finish_attempts(self.write_pool(), lease, items, actor, commit, at)
                    .await
            }

            async fn delivery_attempts(
                &self,
                scope: &crate::store::MessageScope,
                id: crate::DeliveryId,
            ) -> StoreResult<Option<(Delivery, Vec<crate::store::dispatch::AttemptRecord>)>> {
                dispatching::delivery_attempts(&self.pool, scope, id).await
            }

            async fn dead_letters(
                &self,
                scope: &crate::store::MessageScope,
                before: Option<crate::DeliveryId>,
                limit: u32,
            ) -> StoreResult<Vec<Delivery>> {
                dispatching::dead_letters(&self.pool, scope, before, limit).await
            }

            async fn replay_dead_letter(
                &self,
                scope: &crate::store::MessageScope,
                id: crate::DeliveryId,
                actor: &crate::delivery::Actor,
                at: DateTime<Utc>,
            ) -> StoreResult<crate::store::dispatch::Replay> {
                let replay = dispatching::replay(self.write_pool(), scope, id, actor, at).await?;
                // Due at once: no need to wait for the dispatcher's next look.
                self.written.wrote();
                Ok(replay)
            }

            async fn attempt_outcomes(
                &self,
            ) -> StoreResult<std::collections::BTreeMap<String, i64>> {
                dispatching::attempt_outcomes(&self.pool).await
            }
        }
    };
}

/// Expands to `start_attempts_bulk` and `finish_attempts_bulk`: the attempt writers in
/// a few multi-row statements per batch (`WITH x AS (VALUES …) UPDATE … FROM x`), not a
/// statement per row; and to `retrying`, with the pairs it looks for as row values. For a
/// dialect without arrays (SQLite); in the `dispatch_queries!` module, with its `enc` and
/// `dec`.
macro_rules! bulk_attempts {
    (db: $db:ty, enc: $enc:path, dec: $dec:path) => {
        /// Rows per statement: well under either dialect's limit on parameters.
        const BULK: usize = 400;

        /// For each (guardian, channel) of `pairs`, its deliveries in `lane` or a more
        /// urgent one that wait for a retry or are at the provider now: when the earliest
        /// was created, and when the last retry is due (an attempt at the provider has no
        /// outcome yet; its delivery's time is only when it would be taken up again).
        pub async fn retrying(
            pool: &sqlx::Pool<$db>,
            pairs: &[($crate::GuardianId, $crate::Channel)],
            lane: $crate::Lane,
            at: DateTime<Utc>,
        ) -> StoreResult<Vec<$crate::store::dispatch::Retrying>> {
            let mut found = Vec::new();
            for chunk in pairs.chunks(300) {
                let mut query = sqlx::QueryBuilder::<$db>::new(
                    "SELECT d.guardian_id, d.channel, min(d.created_at) AS created_at, \
                            max(CASE WHEN a.outcome = 'in_flight' THEN NULL ELSE d.next_attempt_at END) AS due \
                     FROM deliveries d \
                     LEFT JOIN delivery_attempts a ON a.delivery_id = d.id AND a.attempt = d.attempts \
                     WHERE d.state = 'QUEUED' AND d.attempts > 0 AND d.next_attempt_at > ",
                );
                query.push_bind(at);
                query.push(" AND d.lane IN (");
                let mut lanes = query.separated(", ");
                for urgent in lane.and_more_urgent() {
                    lanes.push_bind(urgent.as_str());
                }
                query.push(") AND (d.guardian_id, d.channel) IN (");
                let mut separated = query.separated(", ");
                for (guardian, channel) in chunk {
                    separated.push("(");
                    separated.push_bind_unseparated($enc(*guardian.as_uuid()));
                    separated.push_unseparated(", ");
                    separated.push_bind_unseparated(channel.as_str());
                    separated.push_unseparated(")");
                }
                query.push(") GROUP BY d.guardian_id, d.channel");
                for row in query.build().fetch_all(pool).await? {
                    found.push(retrying_from_row(&row)?);
                }
            }
            Ok(found)
        }

        /// Starts an attempt for each of `items` (delivery as read, provider) in one
        /// transaction under the lease, before the provider is called: attempt
        /// `attempts + 1` is recorded in flight and the delivery QUEUED (compare and swap on
        /// the version read); an unfinished earlier attempt is recorded as in doubt.
        /// `recover_at` is when the delivery comes due again should its outcome never be
        /// recorded.
        pub async fn start_attempts_bulk(
            pool: &sqlx::Pool<$db>,
            lease: &Lease,
            items: &[(&Delivery, &str)],
            actor: &str,
            recover_at: DateTime<Utc>,
            at: DateTime<Utc>,
        ) -> StoreResult<Vec<AttemptStart>> {
            let mut tx = pool.begin().await?;
            fence(&mut tx, lease).await?;
            let (moved, now_rows) = start_changes(&mut tx, items, actor, recover_at, at).await?;
            let moved_ids: Vec<uuid::Uuid> = moved.keys().copied().collect();
            let mut in_doubt = std::collections::HashSet::new();
            for chunk in moved_ids.chunks(BULK) {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "UPDATE delivery_attempts SET outcome = 'in_doubt', \
                     error = 'unfinished: the dispatcher stopped before recording the outcome', finished_at = ",
                );
                q.push_bind(at);
                q.push(" WHERE outcome = 'in_flight' AND delivery_id IN (");
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind($enc(*id));
                }
                q.push(") RETURNING delivery_id");
                for row in q.build().fetch_all(&mut *tx).await? {
                    in_doubt.insert($dec(&row, "delivery_id")?);
                }
            }
            let new: Vec<(&Delivery, &str)> = items
                .iter()
                .filter_map(|(seen, provider)| Some((moved.get(seen.id.as_uuid())?, *provider)))
                .collect();
            for chunk in new.chunks(BULK) {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO delivery_attempts (district_id, delivery_id, attempt, idempotency_key, provider, \
                                                    started_at, outcome) ",
                );
                q.push_values(chunk, |mut row, (d, provider)| {
                    row.push_bind($enc(*d.district_id.as_uuid()))
                        .push_bind($enc(*d.id.as_uuid()))
                        .push_bind(d.attempts)
                        .push_bind(d.idempotency_key.clone())
                        .push_bind(provider.to_string())
                        .push_bind(at)
                        .push_bind("in_flight");
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            $crate::store::dispatch::starts_in_order(
                items.iter().map(|(seen, _)| *seen.id.as_uuid()),
                moved,
                &in_doubt,
                now_rows,
            )
        }

        /// Records how each of `items` (delivery as read, attempt, result) ended and moves
        /// the delivery accordingly (compare and swap on the version read), in one
        /// transaction under the lease. An attempt someone else already closed (recovered
        /// as in doubt) changes nothing: `Conflict` with the delivery as it is.
        pub async fn finish_attempts_bulk(
            pool: &sqlx::Pool<$db>,
            lease: &Lease,
            items: &[(&Delivery, i32, &AttemptResult)],
            actor: &str,
            commit: Option<(&str, i64)>,
            at: DateTime<Utc>,
        ) -> StoreResult<Vec<CasOutcome>> {
            let mut tx = pool.begin().await?;
            fence(&mut tx, lease).await?;
            let parts: Vec<_> = items.iter().map(|(_, _, result)| result.parts()).collect();
            let errors: Vec<Option<&str>> = parts.iter().map(|p| (p.1 != "sent").then_some(p.2)).collect();
            let indexed: Vec<usize> = (0..items.len()).collect();
            let mut closed = std::collections::HashSet::new();
            for chunk in indexed.chunks(BULK) {
                let mut q = sqlx::QueryBuilder::<$db>::new("WITH x (xid, xattempt, xoutcome, xerror) AS (");
                q.push_values(chunk, |mut row, &i| {
                    row.push_bind($enc(*items[i].0.id.as_uuid()))
                        .push_bind(items[i].1)
                        .push_bind(parts[i].0)
                        .push_bind(errors[i].map(str::to_owned));
                });
                q.push(") UPDATE delivery_attempts SET outcome = x.xoutcome, error = x.xerror, finished_at = ");
                q.push_bind(at);
                q.push(
                    " FROM x WHERE delivery_id = x.xid AND attempt = x.xattempt AND outcome = 'in_flight' \
                     RETURNING delivery_id",
                );
                for row in q.build().fetch_all(&mut *tx).await? {
                    closed.insert($dec(&row, "delivery_id")?);
                }
            }
            close_finish(tx, lease, items, &closed, actor, commit, at).await
        }
    };
}

pub(crate) use {bulk_attempts, dispatch_queries, dispatch_store_impl};
