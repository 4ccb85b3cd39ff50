//! Guardian access written once for both dialects (see `roster_sql`): link pages, the
//! app's messages, sign-in codes, sessions, and the link-key fingerprints.

/// Expands to the guardian-access queries of one dialect.
macro_rules! guardian_queries {
    (db: $db:ty, enc: $enc:path, dec: $dec:path) => {
        use sqlx::Row as _;
        use $crate::store::guardian::{GuardianMessage, GuardianMessageRef, GuardianSession, SignIn};
        use $crate::store::{StoreError, StoreResult};

        fn parse_col<T: std::str::FromStr>(row: &<$db as sqlx::Database>::Row, column: &str) -> StoreResult<T>
        where
            T::Err: std::fmt::Display,
        {
            let raw: String = row.try_get(column)?;
            raw.parse().map_err(|e| StoreError::Corrupt(format!("{column}: {e}")))
        }

        const MESSAGE_SELECT: &str =
            "SELECT r.id AS recipient_id, r.message_id, r.district_id, x.name AS district_name, r.guardian_id, \
                    m.kind, m.subject, m.body, m.translations, r.language, m.created_at, r.ack_state, r.acked_at, r.ack_via \
             FROM recipients r JOIN messages m ON m.id = r.message_id JOIN districts x ON x.id = r.district_id ";

        fn message(row: &<$db as sqlx::Database>::Row) -> StoreResult<GuardianMessage> {
            let language: String = row.try_get("language")?;
            let translations: sqlx::types::Json<serde_json::Value> = row.try_get("translations")?;
            let translated = |field: &str| -> StoreResult<String> {
                match translations.get(&language).and_then(|t| t.get(field)).and_then(|v| v.as_str()) {
                    Some(text) => Ok(text.to_owned()),
                    None => Ok(row.try_get(field)?),
                }
            };
            Ok(GuardianMessage {
                recipient_id: $crate::RecipientId::from_uuid($dec(row, "recipient_id")?),
                message_id: $crate::MessageId::from_uuid($dec(row, "message_id")?),
                district_id: $crate::DistrictId::from_uuid($dec(row, "district_id")?),
                district_name: row.try_get("district_name")?,
                guardian_id: $crate::GuardianId::from_uuid($dec(row, "guardian_id")?),
                kind: parse_col(row, "kind")?,
                subject: translated("subject")?,
                body: translated("body")?,
                sent_at: row.try_get("created_at")?,
                ack_state: row.try_get("ack_state")?,
                acked_at: row.try_get("acked_at")?,
                ack_via: row.try_get("ack_via")?,
                language,
            })
        }

        /// Guardians (district, id) an active contact point belongs to.
        pub async fn guardians_at(
            pool: &sqlx::Pool<$db>,
            channel: $crate::Channel,
            address: &str,
        ) -> StoreResult<Vec<($crate::DistrictId, $crate::GuardianId)>> {
            let rows = sqlx::query(
                "SELECT c.district_id, c.guardian_id FROM contact_points c JOIN guardians g ON g.id = c.guardian_id \
                 WHERE c.kind = $1 AND c.address = $2 AND c.active = $3 AND g.deleted_at IS NULL ORDER BY c.guardian_id",
            )
            .bind(channel.as_str())
            .bind(address)
            .bind(true)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok((
                        $crate::DistrictId::from_uuid($dec(row, "district_id")?),
                        $crate::GuardianId::from_uuid($dec(row, "guardian_id")?),
                    ))
                })
                .collect()
        }

        pub async fn guardian_message(
            pool: &sqlx::Pool<$db>,
            which: GuardianMessageRef,
            guardians: &[$crate::GuardianId],
        ) -> StoreResult<Vec<GuardianMessage>> {
            let rows = match which {
                GuardianMessageRef::Recipient(id) => {
                    sqlx::query(&format!("{MESSAGE_SELECT} WHERE r.id = $1"))
                        .bind($enc(*id.as_uuid()))
                        .fetch_all(pool)
                        .await?
                }
                GuardianMessageRef::Message(id) => {
                    let mut rows = Vec::new();
                    for guardian in guardians {
                        rows.extend(
                            sqlx::query(&format!("{MESSAGE_SELECT} WHERE r.message_id = $1 AND r.guardian_id = $2"))
                                .bind($enc(*id.as_uuid()))
                                .bind($enc(*guardian.as_uuid()))
                                .fetch_optional(pool)
                                .await?,
                        );
                    }
                    rows
                }
            };
            rows.iter().map(message).collect()
        }

        /// These guardians' messages, newest first, older than `before` (a message id).
        pub async fn guardian_messages(
            pool: &sqlx::Pool<$db>,
            guardians: &[$crate::GuardianId],
            before: Option<$crate::MessageId>,
            limit: u32,
        ) -> StoreResult<Vec<GuardianMessage>> {
            // Few guardians per session (usually one): a query each, merged.
            let mut all = Vec::new();
            for guardian in guardians {
                let rows = sqlx::query(&format!(
                    "{MESSAGE_SELECT} WHERE r.guardian_id = $1 AND ($2 IS NULL OR r.message_id < $2) \
                     AND m.cancelled_at IS NULL ORDER BY r.message_id DESC LIMIT $3"
                ))
                .bind($enc(*guardian.as_uuid()))
                .bind(before.map(|b| $enc(*b.as_uuid())))
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?;
                for row in &rows {
                    all.push(message(row)?);
                }
            }
            all.sort_by(|a, b| b.message_id.cmp(&a.message_id).then(a.guardian_id.cmp(&b.guardian_id)));
            all.truncate(limit as usize);
            Ok(all)
        }

        /// Records fingerprints not seen before; returns the key ids whose recorded
        /// fingerprint differs from the one given.
        pub async fn check_link_keys(
            pool: &sqlx::Pool<$db>,
            keys: &[(u8, String)],
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<Vec<u8>> {
            let mut differing = Vec::new();
            for (id, fingerprint) in keys {
                sqlx::query(
                    "INSERT INTO link_keys (key_id, fingerprint, created_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (key_id) DO NOTHING",
                )
                .bind(i32::from(*id))
                .bind(fingerprint)
                .bind(at)
                .execute(pool)
                .await?;
                let recorded: String = sqlx::query_scalar("SELECT fingerprint FROM link_keys WHERE key_id = $1")
                    .bind(i32::from(*id))
                    .fetch_one(pool)
                    .await?;
                if &recorded != fingerprint {
                    differing.push(*id);
                }
            }
            Ok(differing)
        }

        /// Keeps a new sign-in code unless `max_per_hour` were issued to the address in
        /// the past hour; returns whether it was kept.
        pub async fn create_sign_in(
            pool: &sqlx::Pool<$db>,
            channel: $crate::Channel,
            address: &str,
            code_hash: &str,
            expires_at: chrono::DateTime<chrono::Utc>,
            max_per_hour: u32,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<Option<uuid::Uuid>> {
            let mut tx = pool.begin().await?;
            // A new code replaces any open one. Written first: the write takes SQLite's
            // lock before the count is read, so concurrent requests queue instead of
            // failing on a stale snapshot (nothing of it stays if the cap refuses).
            sqlx::query(
                "UPDATE guardian_sign_ins SET used_at = $1 WHERE channel = $2 AND address = $3 AND used_at IS NULL",
            )
            .bind(at)
            .bind(channel.as_str())
            .bind(address)
            .execute(&mut *tx)
            .await?;
            let recent: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM guardian_sign_ins WHERE channel = $1 AND address = $2 AND created_at > $3",
            )
            .bind(channel.as_str())
            .bind(address)
            .bind(at - chrono::Duration::hours(1))
            .fetch_one(&mut *tx)
            .await?;
            if recent >= i64::from(max_per_hour) {
                return Ok(None);
            }
            let id = uuid::Uuid::now_v7();
            sqlx::query(
                "INSERT INTO guardian_sign_ins (id, channel, address, code_hash, expires_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind($enc(id))
            .bind(channel.as_str())
            .bind(address)
            .bind(code_hash)
            .bind(expires_at)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(id))
        }

        /// The address's unused, unexpired code, if any.
        pub async fn open_sign_in(
            pool: &sqlx::Pool<$db>,
            channel: $crate::Channel,
            address: &str,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<Option<SignIn>> {
            let row = sqlx::query(
                "SELECT id, code_hash, attempts FROM guardian_sign_ins \
                 WHERE channel = $1 AND address = $2 AND used_at IS NULL AND expires_at > $3 \
                 ORDER BY created_at DESC LIMIT 1",
            )
            .bind(channel.as_str())
            .bind(address)
            .bind(at)
            .fetch_optional(pool)
            .await?;
            row.map(|row| {
                Ok(SignIn {
                    id: $dec(&row, "id")?,
                    code_hash: row.try_get("code_hash")?,
                    attempts: row.try_get("attempts")?,
                })
            })
            .transpose()
        }

        /// Spends a try of a code: a right code is used up (true only for the one caller
        /// that used it, and only while tries remain); a wrong one counts against it.
        pub async fn sign_in_attempt(
            pool: &sqlx::Pool<$db>,
            id: uuid::Uuid,
            right: bool,
            max_attempts: u32,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<bool> {
            let sql = if right {
                "UPDATE guardian_sign_ins SET used_at = $1, attempts = attempts + 1 \
                 WHERE id = $2 AND used_at IS NULL AND attempts < $3"
            } else {
                "UPDATE guardian_sign_ins SET attempts = attempts + 1, \
                 used_at = CASE WHEN attempts + 1 >= $3 THEN $1 ELSE used_at END \
                 WHERE id = $2 AND used_at IS NULL"
            };
            let changed = sqlx::query(sql)
                .bind(at)
                .bind($enc(id))
                .bind(i32::try_from(max_attempts).unwrap_or(i32::MAX))
                .execute(pool)
                .await?
                .rows_affected();
            Ok(right && changed == 1)
        }

        pub async fn create_guardian_session(
            pool: &sqlx::Pool<$db>,
            session: &GuardianSession,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO guardian_sessions (id, channel, address, secret_hash, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind($enc(session.id))
            .bind(session.channel.as_str())
            .bind(&session.address)
            .bind(&session.secret_hash)
            .bind(at)
            .bind(session.expires_at)
            .execute(pool)
            .await?;
            Ok(())
        }

        pub async fn guardian_session(pool: &sqlx::Pool<$db>, id: uuid::Uuid) -> StoreResult<Option<GuardianSession>> {
            let row = sqlx::query(
                "SELECT id, channel, address, secret_hash, expires_at, revoked_at FROM guardian_sessions WHERE id = $1",
            )
            .bind($enc(id))
            .fetch_optional(pool)
            .await?;
            row.map(|row| {
                Ok(GuardianSession {
                    id: $dec(&row, "id")?,
                    channel: parse_col(&row, "channel")?,
                    address: row.try_get("address")?,
                    secret_hash: row.try_get("secret_hash")?,
                    expires_at: row.try_get("expires_at")?,
                    revoked_at: row.try_get("revoked_at")?,
                })
            })
            .transpose()
        }

        pub async fn end_guardian_session(
            pool: &sqlx::Pool<$db>,
            id: uuid::Uuid,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<()> {
            sqlx::query("UPDATE guardian_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(at)
                .bind($enc(id))
                .execute(pool)
                .await?;
            Ok(())
        }
    };
}

pub(crate) use guardian_queries;

/// Expands to `GuardianAccess` for a store whose `pool` the queries of `$queries` (a
/// `guardian_queries!` module) take.
macro_rules! guardian_access {
    ($store:ty, $queries:path) => {
        #[async_trait::async_trait]
        impl $crate::store::guardian::GuardianAccess for $store {
            async fn guardians_at(
                &self,
                channel: $crate::Channel,
                address: &str,
            ) -> $crate::store::StoreResult<Vec<($crate::DistrictId, $crate::GuardianId)>> {
                use $queries as q;
                q::guardians_at(&self.pool, channel, address).await
            }

            async fn guardian_message(
                &self,
                which: $crate::store::guardian::GuardianMessageRef,
                guardians: &[$crate::GuardianId],
            ) -> $crate::store::StoreResult<Vec<$crate::store::guardian::GuardianMessage>> {
                use $queries as q;
                q::guardian_message(&self.pool, which, guardians).await
            }

            async fn guardian_messages(
                &self,
                guardians: &[$crate::GuardianId],
                before: Option<$crate::MessageId>,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::guardian::GuardianMessage>> {
                use $queries as q;
                q::guardian_messages(&self.pool, guardians, before, limit).await
            }

            async fn check_link_keys(
                &self,
                keys: &[(u8, String)],
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<Vec<u8>> {
                use $queries as q;
                q::check_link_keys(self.write_pool(), keys, at).await
            }

            async fn create_sign_in(
                &self,
                channel: $crate::Channel,
                address: &str,
                code_hash: &str,
                expires_at: chrono::DateTime<chrono::Utc>,
                max_per_hour: u32,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<uuid::Uuid>> {
                use $queries as q;
                q::create_sign_in(
                    self.write_pool(),
                    channel,
                    address,
                    code_hash,
                    expires_at,
                    max_per_hour,
                    at,
                )
                .await
            }

            async fn open_sign_in(
                &self,
                channel: $crate::Channel,
                address: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<$crate::store::guardian::SignIn>> {
                use $queries as q;
                q::open_sign_in(&self.pool, channel, address, at).await
            }

            async fn sign_in_attempt(
                &self,
                id: uuid::Uuid,
                right: bool,
                max_attempts: u32,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<bool> {
                use $queries as q;
                q::sign_in_attempt(self.write_pool(), id, right, max_attempts, at).await
            }

            async fn create_guardian_session(
                &self,
                session: &$crate::store::guardian::GuardianSession,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                use $queries as q;
                q::create_guardian_session(self.write_pool(), session, at).await
            }

            async fn guardian_session(
                &self,
                id: uuid::Uuid,
            ) -> $crate::store::StoreResult<Option<$crate::store::guardian::GuardianSession>> {
                use $queries as q;
                q::guardian_session(&self.pool, id).await
            }

            async fn end_guardian_session(
                &self,
                id: uuid::Uuid,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<()> {
                use $queries as q;
                q::end_guardian_session(self.write_pool(), id, at).await
            }
        }
    };
}

pub(crate) use guardian_access;
