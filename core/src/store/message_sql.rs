//! The messages' read side and recall, written once for both dialects (see `roster_sql`).

/// Expands to the message queries of one dialect.
macro_rules! message_queries {
    (db: $db:ty, enc: $enc:path, dec: $dec:path) => {
        use sqlx::Row as _;
        use $crate::store::{MessageListItem, MessageScope, RecipientView, StoreError, StoreResult};
        use $crate::{DeliveryEvent, DeliveryState};

        fn parse_col<T: std::str::FromStr>(row: &<$db as sqlx::Database>::Row, column: &str) -> StoreResult<T>
        where
            T::Err: std::fmt::Display,
        {
            let raw: String = row.try_get(column)?;
            raw.parse().map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
        }

        /// Whether the scope may see the message.
        async fn visible(pool: &sqlx::Pool<$db>, scope: &MessageScope, message: uuid::Uuid) -> StoreResult<bool> {
            let (district, author) = scope.parts();
            let found: Option<String> = sqlx::query_scalar(
                "SELECT 'yes' FROM messages WHERE id = $1 AND district_id = $2 AND ($3 IS NULL OR author_id = $3)",
            )
            .bind($enc(message))
            .bind($enc(district))
            .bind(author.map($enc))
            .fetch_optional(pool)
            .await?;
            Ok(found.is_some())
        }

        pub async fn list(
            pool: &sqlx::Pool<$db>,
            scope: &MessageScope,
            before: Option<uuid::Uuid>,
            limit: u32,
        ) -> StoreResult<Vec<MessageListItem>> {
            let (district, author) = scope.parts();
            // Newest first: ids are time-ordered, so paging goes by id downward.
            sqlx::query(
                "SELECT id, kind, subject, author_id, requires_ack, created_at, cancelled_at FROM messages \
                 WHERE district_id = $1 AND ($2 IS NULL OR author_id = $2) AND ($3 IS NULL OR id < $3) \
                 ORDER BY id DESC LIMIT $4",
            )
            .bind($enc(district))
            .bind(author.map($enc))
            .bind(before.map($enc))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(MessageListItem {
                    id: $crate::MessageId::from_uuid($dec(row, "id")?),
                    kind: parse_col(row, "kind")?,
                    subject: row.try_get("subject")?,
                    author_id: $crate::StaffId::from_uuid($dec(row, "author_id")?),
                    requires_ack: row.try_get("requires_ack")?,
                    created_at: row.try_get("created_at")?,
                    cancelled_at: row.try_get("cancelled_at")?,
                })
            })
            .collect()
        }

        /// Recipients of a message the scope may see (`None` otherwise), optionally only the
        /// acknowledged (`Some(true)`) or not yet acknowledged (`Some(false)`) ones.
        pub async fn recipients(
            pool: &sqlx::Pool<$db>,
            scope: &MessageScope,
            message: uuid::Uuid,
            acked: Option<bool>,
            after: Option<uuid::Uuid>,
            limit: u32,
        ) -> StoreResult<Option<Vec<RecipientView>>> {
            if !visible(pool, scope, message).await? {
                return Ok(None);
            }
            let rows = sqlx::query(
                "SELECT r.id, r.guardian_id, g.given_name, g.family_name, r.language, r.ack_state, r.acked_at, r.ack_via \
                 FROM recipients r JOIN guardians g ON g.id = r.guardian_id \
                 WHERE r.message_id = $1 AND ($2 IS NULL OR (r.ack_state = 'acked') = $2) \
                 AND ($3 IS NULL OR r.id > $3) ORDER BY r.id LIMIT $4",
            )
            .bind($enc(message))
            .bind(acked)
            .bind(after.map($enc))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(RecipientView {
                        id: $dec(row, "id")?,
                        guardian_id: $dec(row, "guardian_id")?,
                        given_name: row.try_get("given_name")?,
                        family_name: row.try_get("family_name")?,
                        language: row.try_get("language")?,
                        ack_state: row.try_get("ack_state")?,
                        acked_at: row.try_get("acked_at")?,
                        ack_via: row.try_get("ack_via")?,
                    })
                })
                .collect::<StoreResult<Vec<_>>>()
                .map(Some)
        }

        pub async fn content(
            pool: &sqlx::Pool<$db>,
            scope: &MessageScope,
            message: uuid::Uuid,
        ) -> StoreResult<Option<$crate::store::MessageContent>> {
            let (district, author) = scope.parts();
            let Some(row) = sqlx::query(
                "SELECT kind, delivery_guarantee, subject, body, translations, channels, requires_ack, \
                        fallback_after_seconds FROM messages \
                 WHERE id = $1 AND district_id = $2 AND ($3 IS NULL OR author_id = $3)",
            )
            .bind($enc(message))
            .bind($enc(district))
            .bind(author.map($enc))
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            let json = |column: &str| -> StoreResult<serde_json::Value> {
                // jsonb on PostgreSQL, text on SQLite.
                if let Ok(value) = row.try_get::<serde_json::Value, _>(column) {
                    return Ok(value);
                }
                let text: String = row.try_get(column)?;
                serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
            };
            let channels: Vec<$crate::Channel> = serde_json::from_value(json("channels")?)
                .map_err(|e| StoreError::Corrupt(format!("channels: {e}")))?;
            Ok(Some($crate::store::MessageContent {
                kind: parse_col(&row, "kind")?,
                guarantee: parse_col(&row, "delivery_guarantee")?,
                subject: row.try_get("subject")?,
                body: row.try_get("body")?,
                translations: json("translations")?,
                channels,
                requires_ack: row.try_get("requires_ack")?,
                fallback_after: row
                    .try_get::<Option<i32>, _>("fallback_after_seconds")?
                    .map(|s| chrono::Duration::seconds(i64::from(s))),
            }))
        }

        pub async fn pending_guardians(pool: &sqlx::Pool<$db>, message: uuid::Uuid) -> StoreResult<Vec<uuid::Uuid>> {
            sqlx::query("SELECT guardian_id FROM recipients WHERE message_id = $1 AND ack_state = 'pending' ORDER BY guardian_id")
                .bind($enc(message))
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| $dec(row, "guardian_id"))
                .collect()
        }

        /// Recalls a message: every delivery the state machine lets a cancel move is moved
        /// to CANCELLED by a set compare-and-swap (`WHERE state = <legal>`), with its event
        /// row, in one transaction. Returns `None` if the scope may not see the message,
        /// else (cancelled, left as they were) counts.
        pub async fn cancel(
            tx: &mut sqlx::Transaction<'static, $db>,
            scope: &MessageScope,
            message: uuid::Uuid,
            actor: &$crate::delivery::Actor,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<Option<(u64, u64)>> {
            let (district, author) = scope.parts();
            let found: Option<String> = sqlx::query_scalar(
                "SELECT 'yes' FROM messages WHERE id = $1 AND district_id = $2 AND ($3 IS NULL OR author_id = $3)",
            )
            .bind($enc(message))
            .bind($enc(district))
            .bind(author.map($enc))
            .fetch_optional(&mut **tx)
            .await?;
            if found.is_none() {
                return Ok(None);
            }
            sqlx::query("UPDATE messages SET cancelled_at = COALESCE(cancelled_at, $1) WHERE id = $2")
                .bind(at)
                .bind($enc(message))
                .execute(&mut **tx)
                .await?;
            // Only the deliveries a cancel can move, by the states `next` lets it move
            // (bound as names, not spelled here); each is then decided by `next` itself.
            let movable = DeliveryState::ALL.into_iter().filter(|from| {
                matches!($crate::delivery::next(*from, DeliveryEvent::Cancel), $crate::Decision::Move(_))
            });
            let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                "SELECT {} FROM deliveries WHERE message_id = ",
                $crate::store::DELIVERY_COLUMNS
            ));
            q.push_bind($enc(message));
            q.push(" AND state IN (");
            let mut states = q.separated(", ");
            for state in movable {
                states.push_bind(state.as_str());
            }
            q.push(") ORDER BY id");
            let mut requests = Vec::new();
            for row in q.build().fetch_all(&mut **tx).await? {
                let delivery = super::delivery_from_row(&row)?;
                requests.push((delivery, $crate::delivery::Request::new(DeliveryEvent::Cancel, actor, None, at)));
            }
            let results = $crate::delivery::decide_and_apply(
                &mut $crate::store::transitions::InTx::<$db>(&mut **tx),
                requests,
            )
            .await?;
            let cancelled = results
                .iter()
                .filter(|r| matches!(r, Ok($crate::delivery::Applied::Moved { .. })))
                .count() as u64;
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM deliveries WHERE message_id = $1 AND state NOT IN ('CANCELLED', 'SUPPRESSED')",
            )
            .bind($enc(message))
            .fetch_one(&mut **tx)
            .await?;
            Ok(Some((cancelled, left as u64)))
        }
        /// Claims an idempotency key, or says what it already holds (see `WriteTransaction`).
        pub async fn claim_idempotency_key(
            conn: &mut <$db as sqlx::Database>::Connection,
            scope: &str,
            key: &str,
            request_hash: &[u8],
            keep: chrono::Duration,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<$crate::store::IdempotencyClaim> {
            use $crate::store::IdempotencyClaim;
            // A key older than `keep` is forgotten: the next request with it is a new one.
            sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < $3")
                .bind(scope)
                .bind(key)
                .bind(at - keep)
                .execute(&mut *conn)
                .await?;
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (scope, key) DO NOTHING",
            )
            .bind(scope)
            .bind(key)
            .bind(request_hash)
            .bind(at)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if claimed == 1 {
                return Ok(IdempotencyClaim::Claimed);
            }
            let Some(row) = sqlx::query(
                "SELECT request_hash, CAST(response_status AS INTEGER) AS response_status, response_body \
                 FROM idempotency_keys WHERE scope = $1 AND key = $2",
            )
            .bind(scope)
            .bind(key)
            .fetch_optional(&mut *conn)
            .await?
            else {
                // Forgotten (expired) between our insert and read: the caller may simply
                // try again.
                return Ok(IdempotencyClaim::InFlight);
            };
            let stored: Vec<u8> = row.try_get("request_hash")?;
            if stored != request_hash {
                return Ok(IdempotencyClaim::Mismatch);
            }
            let status: Option<i32> = row.try_get("response_status")?;
            Ok(match status {
                None => IdempotencyClaim::InFlight,
                Some(status) => IdempotencyClaim::Replay {
                    status: status as u16,
                    body: row.try_get::<Option<Vec<u8>>, _>("response_body")?.unwrap_or_default(),
                },
            })
        }

        pub async fn complete_idempotency_key(
            conn: &mut <$db as sqlx::Database>::Connection,
            scope: &str,
            key: &str,
            status: u16,
            body: &[u8],
        ) -> StoreResult<()> {
            sqlx::query("UPDATE idempotency_keys SET response_status = $1, response_body = $2 WHERE scope = $3 AND key = $4")
                .bind(i32::from(status))
                .bind(body)
                .bind(scope)
                .bind(key)
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        pub async fn summary(
            pool: &sqlx::Pool<$db>,
            scope: &MessageScope,
            id: uuid::Uuid,
        ) -> StoreResult<Option<$crate::store::MessageSummary>> {
            let (district, author) = scope.parts();
            let Some(row) = sqlx::query(
                "SELECT id, kind, subject, author_id, requires_ack, created_at, scheduled_at, fallback_after_seconds, \
                        (SELECT count(*) FROM recipients r WHERE r.message_id = m.id) AS recipients, \
                        (SELECT count(*) FROM recipients r WHERE r.message_id = m.id AND r.ack_state = 'acked') AS acknowledged \
                 FROM messages m WHERE id = $3 AND district_id = $1 AND ($2 IS NULL OR author_id = $2)",
            )
            .bind($enc(district))
            .bind(author.map($enc))
            .bind($enc(id))
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            let counts = sqlx::query(
                "SELECT channel, state, count(*) AS n FROM deliveries WHERE message_id = $1 \
                 GROUP BY channel, state ORDER BY channel, state",
            )
            .bind($enc(id))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok($crate::store::DeliveryCount {
                    channel: parse_col(row, "channel")?,
                    state: parse_col(row, "state")?,
                    count: row.try_get("n")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
            let mut suppressed = std::collections::BTreeMap::new();
            for row in sqlx::query(
                "SELECT suppressed_reason, count(*) AS n FROM deliveries \
                 WHERE message_id = $1 AND state = 'SUPPRESSED' GROUP BY suppressed_reason",
            )
            .bind($enc(id))
            .fetch_all(pool)
            .await?
            {
                let reason: Option<String> = row.try_get("suppressed_reason")?;
                suppressed.insert(reason.unwrap_or_else(|| "unknown".into()), row.try_get::<i64, _>("n")?);
            }
            Ok(Some($crate::store::MessageSummary {
                id: $crate::MessageId::from_uuid(id),
                scheduled_at: row.try_get("scheduled_at")?,
                kind: parse_col(&row, "kind")?,
                subject: row.try_get("subject")?,
                author_id: $crate::StaffId::from_uuid($dec(&row, "author_id")?),
                requires_ack: row.try_get("requires_ack")?,
                created_at: row.try_get("created_at")?,
                recipients: row.try_get("recipients")?,
                acknowledged: row.try_get("acknowledged")?,
                fallback_after_minutes: row
                    .try_get::<Option<i32>, _>("fallback_after_seconds")?
                    .map(|s| s / 60),
                counts,
                suppressed,
            }))
        }

        /// Messages of a kind other than emergency the district created since `since`.
        /// Takes the district's row lock (held to commit) and refuses the send when the
        /// district already has `max` non-emergency messages in the hour before `at`: two
        /// concurrent sends at the limit cannot both pass.
        pub async fn reserve_hourly_quota(
            tx: &mut sqlx::Transaction<'_, $db>,
            district: uuid::Uuid,
            max: u32,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<()> {
            sqlx::query("UPDATE districts SET name = name WHERE id = $1")
                .bind($enc(district))
                .execute(&mut **tx)
                .await?;
            let sent: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM messages WHERE district_id = $1 AND created_at >= $2 AND kind <> 'emergency'",
            )
            .bind($enc(district))
            .bind(at - chrono::Duration::hours(1))
            .fetch_one(&mut **tx)
            .await?;
            if sent >= i64::from(max) {
                return Err(StoreError::HourlyQuota { sent, max });
            }
            Ok(())
        }

    };
}

pub(crate) use message_queries;
