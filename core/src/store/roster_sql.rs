//! The SQL of a roster import, written once for both dialects. The statements are the
//! same text on SQLite and PostgreSQL (multi-row `VALUES`, `ON CONFLICT`, `RETURNING`); only
//! how an id is bound, read and turned into text differs, and each dialect module passes
//! those in.

/// Expands to `RosterTx`, the [`RosterWriter`](super::roster::RosterWriter) of one dialect.
///
/// - `db`: the sqlx database type;
/// - `enc`: `fn(Uuid) -> T` where `T` is how that dialect binds an id;
/// - `dec`: `fn(&Row, &str) -> StoreResult<Uuid>`;
/// - `as_text`: SQL suffix turning an id column into hyphenated text (`"::text"` or `""`);
/// - `setup`: statements run first in the import's transaction;
/// - `analyze`: whether to refresh a table's statistics inside the transaction each time
///   the import has looked up twice as many of its rows as at the last refresh.
macro_rules! roster_writer {
    (db: $db:ty, enc: $enc:path, dec: $dec:path, as_text: $as_text:literal, setup: [$($setup:literal),*], analyze: $analyze:literal) => {
        use $crate::store::roster::{
            ClassRow, EnrollmentRow, ExistingRow, GuardianLink, GuardianRow,
            RosterContact, RosterTable, RosterWriter, SchoolRow, StaffByEmail, StaffRow,
            StudentRow,
        };

        /// Rows per statement: at most 10 columns × 1,000 rows stays under SQLite's
        /// 32,766 and PostgreSQL's 65,535 bound parameters.
        const BATCH: usize = 1_000;

        pub struct RosterTx {
            tx: sqlx::Transaction<'static, $db>,
            /// Held idle for the whole import where the store has one write connection
            /// (SQLite): the other writes wait their turn behind the import.
            _turn: Option<sqlx::pool::PoolConnection<$db>>,
            district: uuid::Uuid,
            /// Per table: rows looked up so far, and at the last statistics refresh.
            looked_up: std::collections::HashMap<&'static str, (usize, usize)>,
        }

        impl RosterTx {
            /// The import of `district`, in `tx` (on SQLite, one holding the write lock
            /// from its start: the import reads before it writes), holding `turn` until
            /// it ends.
            pub async fn begin(
                mut tx: sqlx::Transaction<'static, $db>,
                turn: Option<sqlx::pool::PoolConnection<$db>>,
                district: uuid::Uuid,
            ) -> $crate::store::StoreResult<Self> {
                $(sqlx::query($setup).execute(&mut *tx).await?;)*
                sqlx::query(
                    "CREATE TEMP TABLE roster_seen (entity TEXT NOT NULL, key TEXT NOT NULL, \
                     line BIGINT NOT NULL, PRIMARY KEY (entity, key))",
                )
                .execute(&mut *tx)
                .await?;
                Ok(Self { tx, _turn: turn, district, looked_up: std::collections::HashMap::new() })
            }

            /// `UPDATE … SET deleted = now WHERE id IN (…)` for one chunk.
            async fn soft_delete_chunk(
                &mut self,
                table: RosterTable,
                ids: &[uuid::Uuid],
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<u64> {
                let column = table.deleted_column();
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "UPDATE {} SET {column} = ",
                    table.table()
                ));
                q.push_bind(at)
                    .push(", updated_at = ")
                    .push_bind(at)
                    .push(" WHERE district_id = ")
                    .push_bind($enc(self.district))
                    .push(format!(" AND {column} IS NULL AND id IN ("));
                let mut list = q.separated(", ");
                for id in ids {
                    list.push_bind($enc(*id));
                }
                q.push(")");
                Ok(q.build().execute(&mut *self.tx).await?.rows_affected())
            }
        }

        /// Guardians of this district that the bundle contains.
        const SEEN_GUARDIANS: &str = "SELECT id FROM guardians WHERE district_id = $1 \
             AND sourced_id IN (SELECT key FROM roster_seen WHERE entity = 'guardians')";

        #[async_trait::async_trait]
        impl RosterWriter for RosterTx {
            async fn district_sourced_id(&mut self) -> $crate::store::StoreResult<Option<String>> {
                Ok(sqlx::query_scalar("SELECT sourced_id FROM districts WHERE id = $1")
                    .bind($enc(self.district))
                    .fetch_one(&mut *self.tx)
                    .await?)
            }

            async fn set_district_sourced_id(&mut self, sourced_id: &str) -> $crate::store::StoreResult<()> {
                sqlx::query("UPDATE districts SET sourced_id = $1 WHERE id = $2")
                    .bind(sourced_id)
                    .bind($enc(self.district))
                    .execute(&mut *self.tx)
                    .await?;
                Ok(())
            }

            async fn mark_seen(
                &mut self,
                entity: &str,
                keys: &[(String, u64)],
            ) -> $crate::store::StoreResult<Vec<(String, u64)>> {
                let mut duplicates = Vec::new();
                for chunk in keys.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new("INSERT INTO roster_seen (entity, key, line) ");
                    q.push_values(chunk, |mut row, (key, line)| {
                        row.push_bind(entity).push_bind(key.as_str()).push_bind(*line as i64);
                    });
                    q.push(" ON CONFLICT (entity, key) DO NOTHING RETURNING key");
                    let inserted: std::collections::HashSet<String> = q
                        .build_query_scalar::<String>()
                        .fetch_all(&mut *self.tx)
                        .await?
                        .into_iter()
                        .collect();
                    let repeated: Vec<&str> = chunk
                        .iter()
                        .map(|(key, _)| key.as_str())
                        .filter(|key| !inserted.contains(*key))
                        .collect();
                    if repeated.is_empty() {
                        continue;
                    }
                    let mut q = sqlx::QueryBuilder::<$db>::new("SELECT key, line FROM roster_seen WHERE entity = ");
                    q.push_bind(entity).push(" AND key IN (");
                    let mut list = q.separated(", ");
                    for key in &repeated {
                        list.push_bind(*key);
                    }
                    q.push(")");
                    for (key, line) in q.build_query_as::<(String, i64)>().fetch_all(&mut *self.tx).await? {
                        duplicates.push((key, line as u64));
                    }
                }
                Ok(duplicates)
            }

            async fn existing(
                &mut self,
                table: RosterTable,
                sourced_ids: &[String],
            ) -> $crate::store::StoreResult<Vec<ExistingRow>> {
                use sqlx::Row;
                // The import fills the table it looks up in: statistics from before it
                // make the planner scan the whole table for every batch of keys (the
                // import then grows with the square of the roster). Refreshed at 10,000
                // rows looked up and at every doubling after, they let it use the index.
                let (seen, refreshed) = self.looked_up.entry(table.table()).or_insert((0, 0));
                *seen += sourced_ids.len();
                if $analyze && *seen >= 10_000 && *seen >= 2 * *refreshed {
                    *refreshed = *seen;
                    sqlx::query(&format!("ANALYZE {}", table.table()))
                        .execute(&mut *self.tx)
                        .await?;
                }
                let mut found = Vec::with_capacity(sourced_ids.len());
                for chunk in sourced_ids.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                        "SELECT sourced_id, id, roster_hash, {} IS NOT NULL AS deleted FROM {} WHERE district_id = ",
                        table.deleted_column(),
                        table.table()
                    ));
                    q.push_bind($enc(self.district)).push(" AND sourced_id IN (");
                    let mut list = q.separated(", ");
                    for sid in chunk {
                        list.push_bind(sid.as_str());
                    }
                    q.push(")");
                    for row in q.build().fetch_all(&mut *self.tx).await? {
                        found.push(ExistingRow {
                            sourced_id: row.try_get("sourced_id")?,
                            id: $dec(&row, "id")?,
                            roster_hash: row.try_get("roster_hash")?,
                            deleted: row.try_get("deleted")?,
                        });
                    }
                }
                Ok(found)
            }

            async fn staff_by_emails(&mut self, emails: &[String]) -> $crate::store::StoreResult<Vec<StaffByEmail>> {
                use sqlx::Row;
                let mut found = Vec::new();
                for chunk in emails.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT email, id, district_id, sourced_id, role FROM staff WHERE email IN (",
                    );
                    let mut list = q.separated(", ");
                    for email in chunk {
                        list.push_bind(email.as_str());
                    }
                    q.push(")");
                    for row in q.build().fetch_all(&mut *self.tx).await? {
                        let role: String = row.try_get("role")?;
                        found.push(StaffByEmail {
                            email: row.try_get("email")?,
                            id: $dec(&row, "id")?,
                            district_id: $dec(&row, "district_id")?,
                            sourced_id: row.try_get("sourced_id")?,
                            role: role.parse().map_err(|e| $crate::store::StoreError::Corrupt(format!("staff.role: {e}")))?,
                        });
                    }
                }
                Ok(found)
            }

            async fn upsert_schools(&mut self, rows: &[SchoolRow], at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<()> {
                for chunk in rows.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO schools (id, district_id, sourced_id, name, roster_hash, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, s| {
                        row.push_bind($enc(s.id)).push_bind($enc(self.district)).push_bind(&s.sourced_id)
                            .push_bind(&s.name).push_bind(&s.hash).push_bind(at).push_bind(at);
                    });
                    q.push(" ON CONFLICT (id) DO UPDATE SET name = excluded.name, roster_hash = excluded.roster_hash, \
                             updated_at = excluded.updated_at, deleted_at = NULL");
                    q.build().execute(&mut *self.tx).await?;
                }
                Ok(())
            }

            async fn upsert_students(&mut self, rows: &[StudentRow], at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<()> {
                for chunk in rows.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO students (id, district_id, sourced_id, school_id, given_name, family_name, grade, \
                         roster_hash, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, s| {
                        row.push_bind($enc(s.id)).push_bind($enc(self.district)).push_bind(&s.sourced_id)
                            .push_bind($enc(s.school_id)).push_bind(&s.given_name).push_bind(&s.family_name)
                            .push_bind(&s.grade).push_bind(&s.hash).push_bind(at).push_bind(at);
                    });
                    q.push(" ON CONFLICT (id) DO UPDATE SET school_id = excluded.school_id, given_name = excluded.given_name, \
                             family_name = excluded.family_name, grade = excluded.grade, roster_hash = excluded.roster_hash, \
                             updated_at = excluded.updated_at, deleted_at = NULL");
                    q.build().execute(&mut *self.tx).await?;
                }
                Ok(())
            }

            async fn upsert_guardians(&mut self, rows: &[GuardianRow], at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<()> {
                for chunk in rows.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO guardians (id, district_id, sourced_id, given_name, family_name, roster_hash, \
                         created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, g| {
                        row.push_bind($enc(g.id)).push_bind($enc(self.district)).push_bind(&g.sourced_id)
                            .push_bind(&g.given_name).push_bind(&g.family_name).push_bind(&g.hash)
                            .push_bind(at).push_bind(at);
                    });
                    q.push(" ON CONFLICT (id) DO UPDATE SET given_name = excluded.given_name, \
                             family_name = excluded.family_name, roster_hash = excluded.roster_hash, \
                             updated_at = excluded.updated_at, deleted_at = NULL");
                    q.build().execute(&mut *self.tx).await?;
                }
                Ok(())
            }

            async fn upsert_staff(&mut self, rows: &[StaffRow], at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<()> {
                for chunk in rows.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO staff (id, district_id, sourced_id, email, display_name, role, roster_hash, \
                         created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, s| {
                        row.push_bind($enc(s.id)).push_bind($enc(self.district)).push_bind(&s.sourced_id)
                            .push_bind(&s.email).push_bind(&s.display_name).push_bind(s.role.as_str())
                            .push_bind(&s.hash).push_bind(at).push_bind(at);
                    });
                    // An import never demotes a district administrator.
                    q.push(" ON CONFLICT (id) DO UPDATE SET sourced_id = excluded.sourced_id, email = excluded.email, \
                             display_name = excluded.display_name, \
                             role = CASE WHEN staff.role = 'district_admin' THEN staff.role ELSE excluded.role END, \
                             roster_hash = excluded.roster_hash, updated_at = excluded.updated_at, disabled_at = NULL");
                    q.build().execute(&mut *self.tx).await?;
                }
                Ok(())
            }

            async fn upsert_classes(&mut self, rows: &[ClassRow], at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<()> {
                for chunk in rows.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO classes (id, district_id, sourced_id, school_id, title, roster_hash, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, c| {
                        row.push_bind($enc(c.id)).push_bind($enc(self.district)).push_bind(&c.sourced_id)
                            .push_bind($enc(c.school_id)).push_bind(&c.title).push_bind(&c.hash)
                            .push_bind(at).push_bind(at);
                    });
                    q.push(" ON CONFLICT (id) DO UPDATE SET school_id = excluded.school_id, title = excluded.title, \
                             roster_hash = excluded.roster_hash, updated_at = excluded.updated_at, deleted_at = NULL");
                    q.build().execute(&mut *self.tx).await?;
                }
                Ok(())
            }

            async fn upsert_enrollments(&mut self, rows: &[EnrollmentRow], at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<()> {
                for chunk in rows.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO enrollments (id, district_id, sourced_id, class_id, role, student_id, staff_id, \
                         roster_hash, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, e| {
                        let role = if e.student_id.is_some() { "student" } else { "teacher" };
                        row.push_bind($enc(e.id)).push_bind($enc(self.district)).push_bind(&e.sourced_id)
                            .push_bind($enc(e.class_id)).push_bind(role)
                            .push_bind(e.student_id.map($enc)).push_bind(e.staff_id.map($enc))
                            .push_bind(&e.hash).push_bind(at).push_bind(at);
                    });
                    q.push(" ON CONFLICT (id) DO UPDATE SET class_id = excluded.class_id, role = excluded.role, \
                             student_id = excluded.student_id, staff_id = excluded.staff_id, \
                             roster_hash = excluded.roster_hash, updated_at = excluded.updated_at, deleted_at = NULL");
                    q.build().execute(&mut *self.tx).await?;
                }
                Ok(())
            }

            async fn add_staff_schools(&mut self, pairs: &[(uuid::Uuid, uuid::Uuid)]) -> $crate::store::StoreResult<()> {
                for chunk in pairs.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new("INSERT INTO staff_schools (district_id, staff_id, school_id) ");
                    q.push_values(chunk, |mut row, (staff, school)| {
                        row.push_bind($enc(self.district)).push_bind($enc(*staff)).push_bind($enc(*school));
                    });
                    q.push(" ON CONFLICT (staff_id, school_id) DO NOTHING");
                    q.build().execute(&mut *self.tx).await?;
                }
                Ok(())
            }

            async fn upsert_links(&mut self, links: &[GuardianLink], at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<()> {
                for chunk in links.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO guardian_students (district_id, guardian_id, student_id, created_at) ",
                    );
                    q.push_values(chunk, |mut row, l| {
                        row.push_bind($enc(self.district)).push_bind($enc(l.guardian_id))
                            .push_bind($enc(l.student_id)).push_bind(at);
                    });
                    q.push(" ON CONFLICT (guardian_id, student_id) DO UPDATE SET deleted_at = NULL \
                             WHERE guardian_students.deleted_at IS NOT NULL");
                    q.build().execute(&mut *self.tx).await?;
                }
                Ok(())
            }

            async fn upsert_contacts(&mut self, contacts: &[RosterContact], at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<()> {
                for chunk in contacts.chunks(BATCH) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO contact_points (id, district_id, guardian_id, kind, address, source, created_at, updated_at) ",
                    );
                    q.push_values(chunk, |mut row, c| {
                        row.push_bind($enc(uuid::Uuid::now_v7())).push_bind($enc(self.district))
                            .push_bind($enc(c.guardian_id)).push_bind(c.kind.as_str()).push_bind(&c.address)
                            .push_bind("roster").push_bind(at).push_bind(at);
                    });
                    q.push(" ON CONFLICT (guardian_id, kind, address) DO UPDATE SET active = true, \
                             inactive_reason = NULL, updated_at = excluded.updated_at \
                             WHERE contact_points.active = false AND contact_points.inactive_reason = 'removed from roster'");
                    q.build().execute(&mut *self.tx).await?;
                }
                Ok(())
            }

            async fn soft_delete(&mut self, table: RosterTable, ids: &[uuid::Uuid], at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<u64> {
                let mut deleted = 0;
                for chunk in ids.chunks(BATCH) {
                    deleted += self.soft_delete_chunk(table, chunk, at).await?;
                }
                Ok(deleted)
            }

            async fn delete_unseen(&mut self, table: RosterTable, at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<u64> {
                let column = table.deleted_column();
                // A district administrator is never disabled by an import.
                let keep = if table == RosterTable::Staff { " AND role <> 'district_admin'" } else { "" };
                let sql = format!(
                    "UPDATE {t} SET {column} = $1, updated_at = $1 WHERE district_id = $2 AND {column} IS NULL \
                     AND sourced_id IS NOT NULL{keep} \
                     AND sourced_id NOT IN (SELECT key FROM roster_seen WHERE entity = '{t}')",
                    t = table.table()
                );
                Ok(sqlx::query(&sql).bind(at).bind($enc(self.district)).execute(&mut *self.tx).await?.rows_affected())
            }

            async fn delete_unseen_links(&mut self, at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<u64> {
                let sql = format!(
                    "UPDATE guardian_students SET deleted_at = $2 WHERE district_id = $1 AND deleted_at IS NULL \
                     AND guardian_id IN ({SEEN_GUARDIANS}) \
                     AND (guardian_id{t} || '|' || student_id{t}) NOT IN (SELECT key FROM roster_seen WHERE entity = 'links')",
                    t = $as_text
                );
                Ok(sqlx::query(&sql).bind($enc(self.district)).bind(at).execute(&mut *self.tx).await?.rows_affected())
            }

            async fn deactivate_unseen_contacts(&mut self, at: chrono::DateTime<chrono::Utc>) -> $crate::store::StoreResult<u64> {
                let sql = format!(
                    "UPDATE contact_points SET active = false, inactive_reason = 'removed from roster', updated_at = $2 \
                     WHERE district_id = $1 AND source = 'roster' AND active \
                     AND guardian_id IN ({SEEN_GUARDIANS}) \
                     AND (guardian_id{t} || '|' || kind || '|' || address) NOT IN \
                         (SELECT key FROM roster_seen WHERE entity = 'contacts')",
                    t = $as_text
                );
                Ok(sqlx::query(&sql).bind($enc(self.district)).bind(at).execute(&mut *self.tx).await?.rows_affected())
            }

            async fn live_count(&mut self, table: RosterTable) -> $crate::store::StoreResult<u64> {
                let sql = format!(
                    "SELECT count(*) FROM {} WHERE district_id = $1 AND {} IS NULL",
                    table.table(),
                    table.deleted_column()
                );
                let n: i64 = sqlx::query_scalar(&sql).bind($enc(self.district)).fetch_one(&mut *self.tx).await?;
                Ok(n as u64)
            }

            async fn rollback(self: Box<Self>) -> $crate::store::StoreResult<()> {
                // The temporary table goes with the transaction.
                self.tx.rollback().await?;
                Ok(())
            }

            async fn commit(mut self: Box<Self>) -> $crate::store::StoreResult<()> {
                sqlx::query("DROP TABLE roster_seen").execute(&mut *self.tx).await?;
                self.tx.commit().await?;
                Ok(())
            }
        }
    };
}

pub(crate) use roster_writer;
