//! The directory's SQL, written once for both dialects (like `roster_sql`): the scope of
//! the caller is a fragment of the WHERE clause, chosen here, never by a handler.

use super::directory::Scope;

/// Students (aliased `alias`) the scope may see. Uses `$2` for the staff id.
pub(crate) fn student_filter(scope: &Scope, alias: &str) -> String {
    match scope {
        Scope::District(_) => "TRUE".to_owned(),
        Scope::Schools(..) => format!("{alias}.school_id IN (SELECT school_id FROM staff_schools WHERE staff_id = $2)"),
        Scope::Teacher(..) => format!(
            "{alias}.id IN (SELECT e.student_id FROM enrollments e JOIN enrollments t ON t.class_id = e.class_id \
             WHERE t.staff_id = $2 AND t.role = 'teacher' AND t.deleted_at IS NULL \
             AND e.role = 'student' AND e.deleted_at IS NULL)"
        ),
    }
}

pub(crate) fn school_filter(scope: &Scope) -> &'static str {
    match scope {
        Scope::District(_) => "TRUE",
        Scope::Schools(..) => "x.id IN (SELECT school_id FROM staff_schools WHERE staff_id = $2)",
        Scope::Teacher(..) => {
            "x.id IN (SELECT c.school_id FROM classes c JOIN enrollments t ON t.class_id = c.id \
             WHERE t.staff_id = $2 AND t.role = 'teacher' AND t.deleted_at IS NULL AND c.deleted_at IS NULL)"
        }
    }
}

pub(crate) fn class_filter(scope: &Scope) -> &'static str {
    match scope {
        Scope::District(_) => "TRUE",
        Scope::Schools(..) => "x.school_id IN (SELECT school_id FROM staff_schools WHERE staff_id = $2)",
        Scope::Teacher(..) => {
            "x.id IN (SELECT class_id FROM enrollments WHERE staff_id = $2 AND role = 'teacher' AND deleted_at IS NULL)"
        }
    }
}

pub(crate) fn guardian_filter(scope: &Scope) -> String {
    match scope {
        Scope::District(_) => "TRUE".to_owned(),
        other => format!(
            "x.id IN (SELECT gs.guardian_id FROM guardian_students gs JOIN students s ON s.id = gs.student_id \
             WHERE gs.deleted_at IS NULL AND s.deleted_at IS NULL AND {})",
            student_filter(other, "s")
        ),
    }
}

/// How one table is narrowed by the optional filters `$6` id, `$7` school, `$8` class and
/// `$9` student: the condition each imposes on a row `x` when given.
pub(crate) struct Related {
    pub school: &'static str,
    pub class: &'static str,
    pub student: &'static str,
}

pub(crate) const SCHOOLS: Related = Related {
    school: "x.id = $7",
    class: "x.id IN (SELECT school_id FROM classes WHERE id = $8)",
    student: "x.id IN (SELECT school_id FROM students WHERE id = $9)",
};

pub(crate) const CLASSES: Related = Related {
    school: "x.school_id = $7",
    class: "x.id = $8",
    student:
        "x.id IN (SELECT class_id FROM enrollments WHERE student_id = $9 AND deleted_at IS NULL)",
};

pub(crate) const STUDENTS: Related = Related {
    school: "x.school_id = $7",
    class: "x.id IN (SELECT student_id FROM enrollments WHERE class_id = $8 AND role = 'student' AND deleted_at IS NULL)",
    student: "x.id = $9",
};

pub(crate) const GUARDIANS: Related = Related {
    school: "x.id IN (SELECT gs.guardian_id FROM guardian_students gs JOIN students s7 ON s7.id = gs.student_id \
             WHERE s7.school_id = $7 AND gs.deleted_at IS NULL AND s7.deleted_at IS NULL)",
    class: "x.id IN (SELECT gs.guardian_id FROM guardian_students gs JOIN enrollments e8 ON e8.student_id = gs.student_id \
            WHERE e8.class_id = $8 AND e8.role = 'student' AND e8.deleted_at IS NULL AND gs.deleted_at IS NULL)",
    student: "x.id IN (SELECT guardian_id FROM guardian_students WHERE student_id = $9 AND deleted_at IS NULL)",
};

/// `SELECT … FROM table x` scoped, filtered and paged: `$1` district, `$2` staff, `$3`
/// after, `$4` search pattern, `$5` limit, `$6`–`$9` the filters of [`Related`].
pub(crate) fn page_query(
    columns: &str,
    table: &str,
    filter: &str,
    name: &str,
    related: &Related,
) -> String {
    format!(
        "SELECT {columns} FROM {table} x WHERE x.district_id = $1 AND x.deleted_at IS NULL AND ({filter}) \
         AND ($3 IS NULL OR x.id > $3) \
         AND ($4 IS NULL OR lower({name}) LIKE $4 ESCAPE '\\' OR lower(x.sourced_id) LIKE $4 ESCAPE '\\') \
         AND ($6 IS NULL OR x.id = $6) AND ($7 IS NULL OR {}) AND ($8 IS NULL OR {}) AND ($9 IS NULL OR {}) \
         ORDER BY x.id LIMIT $5",
        related.school, related.class, related.student
    )
}

/// Expands to `Directory`, the directory queries of one dialect, as free functions on a
/// pool. Parameters as for `roster_writer!`.
macro_rules! directory_queries {
    (db: $db:ty, enc: $enc:path, dec: $dec:path, as_text: $as_text:literal) => {
        use $crate::store::directory::{
            ClassView, ContactPointView, GuardianDetail, GuardianRef, GuardianView, OptOutView, PageRequest,
            SchoolView, Scope, StudentView,
        };
        use $crate::store::directory_sql::{
            class_filter, guardian_filter, page_query, school_filter, student_filter, CLASSES, GUARDIANS, SCHOOLS, STUDENTS,
        };
        use $crate::store::StoreResult;

        type Row = <$db as sqlx::Database>::Row;
        #[allow(unused_imports)]
        use sqlx::Row as _RowTrait;

        fn parse_col<T: std::str::FromStr>(row: &Row, column: &str) -> StoreResult<T>
        where
            T::Err: std::fmt::Display,
        {
            let raw: String = row.try_get(column)?;
            raw.parse().map_err(|e| $crate::store::StoreError::Corrupt(format!("{column}: {e}")))
        }

        fn student(row: &Row) -> StoreResult<StudentView> {
            Ok(StudentView {
                id: $dec(row, "id")?,
                sourced_id: row.try_get("sourced_id")?,
                school_id: $dec(row, "school_id")?,
                given_name: row.try_get("given_name")?,
                family_name: row.try_get("family_name")?,
                grade: row.try_get("grade")?,
            })
        }

        fn guardian(row: &Row) -> StoreResult<GuardianView> {
            Ok(GuardianView {
                id: $dec(row, "id")?,
                sourced_id: row.try_get("sourced_id")?,
                given_name: row.try_get("given_name")?,
                family_name: row.try_get("family_name")?,
                preferred_language: row.try_get("preferred_language")?,
            })
        }

        fn contact(row: &Row) -> StoreResult<ContactPointView> {
            Ok(ContactPointView {
                id: $dec(row, "id")?,
                kind: parse_col(row, "kind")?,
                address: row.try_get("address")?,
                active: row.try_get("active")?,
                inactive_reason: row.try_get("inactive_reason")?,
                source: row.try_get("source")?,
            })
        }

        fn opt_out(row: &Row) -> StoreResult<OptOutView> {
            Ok(OptOutView {
                id: $dec(row, "id")?,
                channel: parse_col(row, "channel")?,
                source: row.try_get("source")?,
                created_at: row.try_get("created_at")?,
            })
        }

        const STUDENT_COLUMNS: &str = "x.id, x.sourced_id, x.school_id, x.given_name, x.family_name, x.grade";
        const GUARDIAN_COLUMNS: &str = "x.id, x.sourced_id, x.given_name, x.family_name, x.preferred_language";

        async fn page(
            pool: &sqlx::Pool<$db>,
            sql: &str,
            scope: &Scope,
            page: &PageRequest,
        ) -> StoreResult<Vec<Row>> {
            Ok(sqlx::query(sql)
                .bind($enc(*scope.district().as_uuid()))
                .bind($enc(scope.staff()))
                .bind(page.after.map($enc))
                .bind(page.pattern())
                .bind(i64::from(page.limit))
                .bind(page.only.map($enc))
                .bind(page.school.map($enc))
                .bind(page.class.map($enc))
                .bind(page.student.map($enc))
                .fetch_all(pool)
                .await?)
        }

        pub async fn schools(pool: &sqlx::Pool<$db>, scope: &Scope, request: &PageRequest) -> StoreResult<Vec<SchoolView>> {
            let sql = page_query("x.id, x.sourced_id, x.name, x.timezone", "schools", school_filter(scope), "x.name", &SCHOOLS);
            page(pool, &sql, scope, request).await?.iter().map(|row| Ok(SchoolView {
                id: $dec(row, "id")?,
                sourced_id: row.try_get("sourced_id")?,
                name: row.try_get("name")?,
                timezone: row.try_get("timezone")?,
            })).collect()
        }

        pub async fn classes(pool: &sqlx::Pool<$db>, scope: &Scope, request: &PageRequest) -> StoreResult<Vec<ClassView>> {
            let sql = page_query("x.id, x.sourced_id, x.school_id, x.title", "classes", class_filter(scope), "x.title", &CLASSES);
            page(pool, &sql, scope, request).await?.iter().map(|row| Ok(ClassView {
                id: $dec(row, "id")?,
                sourced_id: row.try_get("sourced_id")?,
                school_id: $dec(row, "school_id")?,
                title: row.try_get("title")?,
            })).collect()
        }

        pub async fn students(pool: &sqlx::Pool<$db>, scope: &Scope, request: &PageRequest) -> StoreResult<Vec<StudentView>> {
            let sql = page_query(STUDENT_COLUMNS, "students", &student_filter(scope, "x"), "x.given_name || ' ' || x.family_name", &STUDENTS);
            page(pool, &sql, scope, request).await?.iter().map(student).collect()
        }

        pub async fn guardians(pool: &sqlx::Pool<$db>, scope: &Scope, request: &PageRequest) -> StoreResult<Vec<GuardianView>> {
            let sql = page_query(GUARDIAN_COLUMNS, "guardians", &guardian_filter(scope), "x.given_name || ' ' || x.family_name", &GUARDIANS);
            page(pool, &sql, scope, request).await?.iter().map(guardian).collect()
        }

        /// A guardian the scope may see, with the students the scope may see among theirs.
        pub async fn guardian_detail(pool: &sqlx::Pool<$db>, scope: &Scope, which: &GuardianRef) -> StoreResult<Option<GuardianDetail>> {
            let key = match which {
                GuardianRef::Id(_) => "x.id = $3",
                GuardianRef::SourcedId(_) => "x.sourced_id = $3",
            };
            let sql = format!(
                "SELECT {GUARDIAN_COLUMNS} FROM guardians x WHERE x.district_id = $1 AND x.deleted_at IS NULL \
                 AND ({}) AND {key}",
                guardian_filter(scope)
            );
            let query = sqlx::query(&sql).bind($enc(*scope.district().as_uuid())).bind($enc(scope.staff()));
            let query = match which {
                GuardianRef::Id(id) => query.bind($enc(*id)),
                GuardianRef::SourcedId(sid) => query.bind(sid.as_str()),
            };
            let Some(row) = query.fetch_optional(pool).await? else {
                return Ok(None);
            };
            let found = guardian(&row)?;
            let students_sql = format!(
                "SELECT {STUDENT_COLUMNS} FROM students x JOIN guardian_students gs ON gs.student_id = x.id \
                 WHERE x.district_id = $1 AND gs.guardian_id = $3 AND gs.deleted_at IS NULL AND x.deleted_at IS NULL \
                 AND ({}) ORDER BY x.family_name, x.given_name, x.id",
                student_filter(scope, "x")
            );
            let students = sqlx::query(&students_sql)
                .bind($enc(*scope.district().as_uuid()))
                .bind($enc(scope.staff()))
                .bind($enc(found.id))
                .fetch_all(pool)
                .await?
                .iter()
                .map(student)
                .collect::<StoreResult<Vec<_>>>()?;
            let contact_points = sqlx::query(
                "SELECT id, kind, address, active, inactive_reason, source FROM contact_points \
                 WHERE guardian_id = $1 ORDER BY kind, address",
            )
            .bind($enc(found.id))
            .fetch_all(pool)
            .await?
            .iter()
            .map(contact)
            .collect::<StoreResult<Vec<_>>>()?;
            let opt_outs = sqlx::query(
                "SELECT id, channel, source, created_at FROM opt_outs \
                 WHERE guardian_id = $1 AND revoked_at IS NULL ORDER BY created_at",
            )
            .bind($enc(found.id))
            .fetch_all(pool)
            .await?
            .iter()
            .map(opt_out)
            .collect::<StoreResult<Vec<_>>>()?;
            Ok(Some(GuardianDetail { guardian: found, students, contact_points, opt_outs }))
        }

        pub async fn add_contact_point(
            conn: &mut <$db as sqlx::Database>::Connection,
            district: uuid::Uuid,
            guardian: uuid::Uuid,
            kind: $crate::Channel,
            address: &str,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<ContactPointView> {
            let row = sqlx::query(
                "INSERT INTO contact_points (id, district_id, guardian_id, kind, address, source, verified, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'staff', false, $6, $6) \
                 ON CONFLICT (guardian_id, kind, address) DO UPDATE SET active = true, inactive_reason = NULL, \
                 updated_at = excluded.updated_at \
                 RETURNING id, kind, address, active, inactive_reason, source",
            )
            .bind($enc(uuid::Uuid::now_v7()))
            .bind($enc(district))
            .bind($enc(guardian))
            .bind(kind.as_str())
            .bind(address)
            .bind(at)
            .fetch_one(&mut *conn)
            .await?;
            contact(&row)
        }

        pub async fn retire_address(
            pool: &sqlx::Pool<$db>,
            guardian: uuid::Uuid,
            kind: $crate::Channel,
            address: &str,
            reason: &str,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<u64> {
            Ok(sqlx::query(
                "UPDATE contact_points SET active = false, inactive_reason = $1, updated_at = $2 \
                 WHERE guardian_id = $3 AND kind = $4 AND address = $5 AND active",
            )
            .bind(reason)
            .bind(at)
            .bind($enc(guardian))
            .bind(kind.as_str())
            .bind(address)
            .execute(pool)
            .await?
            .rows_affected())
        }

        pub async fn register_device(
            pool: &sqlx::Pool<$db>,
            district: uuid::Uuid,
            guardian: uuid::Uuid,
            platform: $crate::PushPlatform,
            token: &str,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<ContactPointView> {
            let row = sqlx::query(
                "INSERT INTO contact_points (id, district_id, guardian_id, kind, address, push_platform, \
                 source, verified, created_at, updated_at) VALUES ($1, $2, $3, 'push', $4, $5, 'app', true, $6, $6) \
                 ON CONFLICT (guardian_id, kind, address) DO UPDATE SET active = true, inactive_reason = NULL, \
                 push_platform = excluded.push_platform, updated_at = excluded.updated_at \
                 RETURNING id, kind, address, active, inactive_reason, source",
            )
            .bind($enc(uuid::Uuid::now_v7()))
            .bind($enc(district))
            .bind($enc(guardian))
            .bind(token)
            .bind(platform.as_str())
            .bind(at)
            .fetch_one(pool)
            .await?;
            contact(&row)
        }

        pub async fn set_contact_point_active(
            conn: &mut <$db as sqlx::Database>::Connection,
            guardian: uuid::Uuid,
            contact_point: uuid::Uuid,
            active: bool,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<Option<ContactPointView>> {
            let row = sqlx::query(
                "UPDATE contact_points SET active = $1, \
                 inactive_reason = CASE WHEN $1 THEN NULL ELSE 'deactivated by staff' END, updated_at = $2 \
                 WHERE id = $3 AND guardian_id = $4 \
                 RETURNING id, kind, address, active, inactive_reason, source",
            )
            .bind(active)
            .bind(at)
            .bind($enc(contact_point))
            .bind($enc(guardian))
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(contact).transpose()
        }

        pub async fn add_opt_out(
            conn: &mut <$db as sqlx::Database>::Connection,
            district: uuid::Uuid,
            guardian: uuid::Uuid,
            channel: $crate::Channel,
            source: &str,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<OptOutView> {
            sqlx::query(
                "INSERT INTO opt_outs (id, district_id, guardian_id, channel, source, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (guardian_id, channel, source) WHERE revoked_at IS NULL DO NOTHING",
            )
            .bind($enc(uuid::Uuid::now_v7()))
            .bind($enc(district))
            .bind($enc(guardian))
            .bind(channel.as_str())
            .bind(source)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            let row = sqlx::query(
                "SELECT id, channel, source, created_at FROM opt_outs \
                 WHERE guardian_id = $1 AND channel = $2 AND source = $3 AND revoked_at IS NULL",
            )
            .bind($enc(guardian))
            .bind(channel.as_str())
            .bind(source)
            .fetch_one(&mut *conn)
            .await?;
            opt_out(&row)
        }

        /// Revokes an opt-out that is not a carrier STOP; returns the opt-out as it was.
        pub async fn revoke_opt_out(
            conn: &mut <$db as sqlx::Database>::Connection,
            guardian: uuid::Uuid,
            id: uuid::Uuid,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<Option<OptOutView>> {
            let row = sqlx::query(
                "SELECT id, channel, source, created_at FROM opt_outs \
                 WHERE id = $1 AND guardian_id = $2 AND revoked_at IS NULL",
            )
            .bind($enc(id))
            .bind($enc(guardian))
            .fetch_optional(&mut *conn)
            .await?;
            let Some(found) = row.as_ref().map(opt_out).transpose()? else {
                return Ok(None);
            };
            if found.source != "carrier" {
                sqlx::query("UPDATE opt_outs SET revoked_at = $1 WHERE id = $2")
                    .bind(at)
                    .bind($enc(id))
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(Some(found))
        }
        pub async fn counts(pool: &sqlx::Pool<$db>, district: uuid::Uuid) -> StoreResult<$crate::store::DirectoryCounts> {
            let row = sqlx::query(
                "SELECT \
                   (SELECT count(*) FROM schools WHERE district_id = $1 AND deleted_at IS NULL) AS schools, \
                   (SELECT count(*) FROM students WHERE district_id = $1 AND deleted_at IS NULL) AS students, \
                   (SELECT count(*) FROM guardians WHERE district_id = $1 AND deleted_at IS NULL) AS guardians, \
                   (SELECT count(*) FROM staff WHERE district_id = $1 AND disabled_at IS NULL) AS staff, \
                   (SELECT count(*) FROM classes WHERE district_id = $1 AND deleted_at IS NULL) AS classes, \
                   (SELECT count(*) FROM enrollments WHERE district_id = $1 AND deleted_at IS NULL) AS enrollments, \
                   (SELECT count(*) FROM guardian_students WHERE district_id = $1 AND deleted_at IS NULL) AS guardian_links, \
                   (SELECT count(*) FROM contact_points WHERE district_id = $1 AND active) AS active_contact_points",
            )
            .bind($enc(district))
            .fetch_one(pool)
            .await?;
            Ok($crate::store::DirectoryCounts {
                schools: row.try_get("schools")?,
                students: row.try_get("students")?,
                guardians: row.try_get("guardians")?,
                staff: row.try_get("staff")?,
                classes: row.try_get("classes")?,
                enrollments: row.try_get("enrollments")?,
                guardian_links: row.try_get("guardian_links")?,
                active_contact_points: row.try_get("active_contact_points")?,
            })
        }

        /// Sets a school's time zone and quiet hours; the school by id or sourcedId.
        pub async fn set_school_quiet_hours(
            conn: &mut <$db as sqlx::Database>::Connection,
            district: uuid::Uuid,
            school: &str,
            quiet: Option<$crate::quiet_hours::QuietHours>,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<bool> {
            let updated = sqlx::query(&format!(
                "UPDATE schools SET timezone = COALESCE($1, timezone), quiet_start_minute = $2, quiet_end_minute = $3, \
                 updated_at = $4 WHERE district_id = $5 AND deleted_at IS NULL AND (id{} = $6 OR sourced_id = $7)",
                $as_text
            ))
            .bind(quiet.map(|q| q.timezone.name().to_owned()))
            .bind(quiet.map(|q| q.start_minute as i16))
            .bind(quiet.map(|q| q.end_minute as i16))
            .bind(at)
            .bind($enc(district))
            .bind(school.trim().to_lowercase())
            .bind(school.trim())
            .execute(&mut *conn)
            .await?
            .rows_affected();
            Ok(updated > 0)
        }

        pub async fn district(pool: &sqlx::Pool<$db>, id: uuid::Uuid) -> StoreResult<Option<$crate::store::District>> {
            let Some(row) = sqlx::query(
                "SELECT id, name, default_language, timezone, created_at, max_recipients_per_message, \
                 max_messages_per_hour FROM districts WHERE id = $1",
            )
            .bind($enc(id))
            .fetch_optional(pool)
            .await?
            else {
                return Ok(None);
            };
            Ok(Some($crate::store::District {
                id: $crate::DistrictId::from_uuid($dec(&row, "id")?),
                name: row.try_get("name")?,
                default_language: row.try_get("default_language")?,
                timezone: row.try_get("timezone")?,
                created_at: row.try_get("created_at")?,
                max_recipients_per_message: row.try_get("max_recipients_per_message")?,
                max_messages_per_hour: row.try_get("max_messages_per_hour")?,
            }))
        }

        pub async fn set_district_quotas(
            conn: &mut <$db as sqlx::Database>::Connection,
            district: uuid::Uuid,
            max_recipients_per_message: Option<i32>,
            max_messages_per_hour: Option<i32>,
        ) -> StoreResult<()> {
            sqlx::query("UPDATE districts SET max_recipients_per_message = $1, max_messages_per_hour = $2 WHERE id = $3")
                .bind(max_recipients_per_message)
                .bind(max_messages_per_hour)
                .bind($enc(district))
                .execute(&mut *conn)
                .await?;
            Ok(())
        }

        pub async fn record_inbound(
            pool: &sqlx::Pool<$db>,
            sms: &$crate::store::InboundSms,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<Option<Vec<(uuid::Uuid, uuid::Uuid)>>> {
            let rows = sqlx::query(
                "SELECT DISTINCT district_id, guardian_id FROM contact_points WHERE kind = 'sms' AND address = $1",
            )
            .bind(&sms.from)
            .fetch_all(pool)
            .await?;
            let guardians = rows
                .iter()
                .map(|row| Ok(($dec(row, "district_id")?, $dec(row, "guardian_id")?)))
                .collect::<StoreResult<Vec<_>>>()?;
            let first = guardians.first().copied();
            let inserted = sqlx::query(
                "INSERT INTO inbound_messages (id, provider, provider_message_id, district_id, guardian_id, \
                 from_address, to_address, body, keyword, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (provider, provider_message_id) DO NOTHING",
            )
            .bind($enc(uuid::Uuid::now_v7()))
            .bind(&sms.provider)
            .bind(&sms.provider_message_id)
            .bind(first.map(|(d, _)| $enc(d)))
            .bind(first.map(|(_, g)| $enc(g)))
            .bind(&sms.from)
            .bind(&sms.to)
            .bind(&sms.body)
            .bind(sms.keyword)
            .bind(at)
            .execute(pool)
            .await?
            .rows_affected();
            Ok((inserted == 1).then_some(guardians))
        }

        pub async fn acknowledge(
            pool: &sqlx::Pool<$db>,
            recipient: uuid::Uuid,
            via: $crate::Channel,
            actor: &$crate::delivery::Actor,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<$crate::store::AckOutcome> {
            use $crate::{DeliveryEvent, DeliveryState};
            let mut tx = pool.begin().await?;
            let acked = sqlx::query(
                "UPDATE recipients SET ack_state = 'acked', acked_at = $1, ack_via = $2 \
                 WHERE id = $3 AND ack_state = 'pending'",
            )
            .bind(at)
            .bind(via.as_str())
            .bind($enc(recipient))
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if acked == 0 {
                let state: Option<String> = sqlx::query_scalar("SELECT ack_state FROM recipients WHERE id = $1")
                    .bind($enc(recipient))
                    .fetch_optional(&mut *tx)
                    .await?;
                return Ok(match state.as_deref() {
                    None => $crate::store::AckOutcome::NotFound,
                    Some("acked") => $crate::store::AckOutcome::AlreadyAcked,
                    Some(_) => $crate::store::AckOutcome::NotRequired,
                });
            }
            // The same message re-sent (re-notifications of it, or the message a
            // re-notification re-sends): acknowledged once is acknowledged for all of them.
            let family = "WITH RECURSIVE up (id, parent) AS ( \
                     SELECT m.id, m.renotify_of FROM messages m JOIN recipients r ON r.message_id = m.id WHERE r.id = $1 \
                     UNION ALL SELECT m.id, m.renotify_of FROM messages m JOIN up ON m.id = up.parent), \
                 down (id) AS ( \
                     SELECT id FROM up WHERE parent IS NULL \
                     UNION ALL SELECT m.id FROM messages m JOIN down ON m.renotify_of = down.id) ";
            let related: Vec<uuid::Uuid> = sqlx::query(&format!(
                "{family} SELECT r.id FROM recipients r \
                 WHERE r.guardian_id = (SELECT guardian_id FROM recipients WHERE id = $1) \
                 AND r.message_id IN (SELECT id FROM down) AND r.ack_state = 'pending' AND r.id <> $1"
            ))
            .bind($enc(recipient))
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|row| $dec(row, "id"))
            .collect::<StoreResult<_>>()?;
            for other in &related {
                sqlx::query(
                    "UPDATE recipients SET ack_state = 'acked', acked_at = $1, ack_via = $2 \
                     WHERE id = $3 AND ack_state = 'pending'",
                )
                .bind(at)
                .bind(via.as_str())
                .bind($enc(*other))
                .execute(&mut *tx)
                .await?;
            }
            // Found by message and guardian, through the index that keeps them unique per
            // channel: deliveries have no index of their own on the recipient.
            let mut deliveries_of = sqlx::QueryBuilder::<$db>::new(format!(
                "SELECT {} FROM recipients r JOIN deliveries d \
                      ON d.message_id = r.message_id AND d.guardian_id = r.guardian_id AND d.recipient_id = r.id \
                 WHERE r.id IN (",
                $crate::store::delivery_columns("d")
            ));
            let mut list = deliveries_of.separated(", ");
            for r in std::iter::once(&recipient).chain(&related) {
                list.push_bind($enc(*r));
            }
            deliveries_of.push(") ORDER BY d.id");
            let rows = deliveries_of.build().fetch_all(&mut *tx).await?;
            let mut requests = Vec::with_capacity(rows.len());
            for row in &rows {
                let delivery = crate::store::deliveries::from_row(row)?;
                // The delivery the acknowledgment came through is ACKED; the guardian's
                // other deliveries of the message (and of its re-sends) that have not gone
                // out are cancelled.
                let event = if *delivery.recipient_id.as_uuid() == recipient && delivery.channel == via {
                    DeliveryEvent::Acknowledged
                } else {
                    DeliveryEvent::Cancel
                };
                let mut request = $crate::delivery::Request::new(event, actor, Some(&format!("acknowledged by {via}")), at);
                request.effects.next_attempt_at = Some(None);
                requests.push((delivery, request));
            }
            let results = $crate::delivery::decide_and_apply(
                &mut $crate::store::transitions::InTx::<$db>(&mut *tx),
                requests,
            )
            .await?;
            let (mut acked_delivery, mut cancelled, mut untouched) = (None, 0, 0);
            for result in results {
                match result {
                    Ok($crate::delivery::Applied::Moved { delivery, .. }) if delivery.state == DeliveryState::Acked => {
                        acked_delivery = Some(delivery.id);
                    }
                    Ok($crate::delivery::Applied::Moved { .. }) => cancelled += 1,
                    Ok($crate::delivery::Applied::Ignored { .. }) | Err(_) => untouched += 1,
                }
            }
            tx.commit().await?;
            Ok($crate::store::AckOutcome::Acked {
                delivery: acked_delivery,
                cancelled,
                untouched,
            })
        }

        pub async fn open_ack(
            pool: &sqlx::Pool<$db>,
            guardian: uuid::Uuid,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<Option<uuid::Uuid>> {
            let row = sqlx::query(
                "SELECT r.id FROM recipients r JOIN messages m ON m.id = r.message_id \
                 WHERE r.guardian_id = $1 AND r.ack_state = 'pending' AND m.requires_ack = $2 \
                 AND (m.ack_deadline IS NULL OR m.ack_deadline > $3) \
                 ORDER BY m.created_at DESC, m.id DESC LIMIT 1",
            )
            .bind($enc(guardian))
            .bind(true)
            .bind(at)
            .fetch_optional(pool)
            .await?;
            row.map(|r| $dec(&r, "id")).transpose()
        }

        pub async fn replies(
            pool: &sqlx::Pool<$db>,
            scope: &Scope,
            before: Option<uuid::Uuid>,
            limit: u32,
        ) -> StoreResult<Vec<$crate::store::ReplyView>> {
            let older = if before.is_some() { "AND m.id < $3" } else { "" };
            let limit_param = if before.is_some() { "$4" } else { "$3" };
            let sql = format!(
                "SELECT m.id, m.guardian_id, x.given_name, x.family_name, m.from_address, m.body, m.keyword, m.received_at \
                 FROM inbound_messages m JOIN guardians x ON x.id = m.guardian_id \
                 WHERE m.district_id = $1 AND x.deleted_at IS NULL AND ({}) {older} \
                 ORDER BY m.id DESC LIMIT {limit_param}",
                guardian_filter(scope)
            );
            let mut query = sqlx::query(&sql)
                .bind($enc(*scope.district().as_uuid()))
                .bind($enc(scope.staff()));
            if let Some(before) = before {
                query = query.bind($enc(before));
            }
            let rows = query.bind(i64::from(limit)).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    Ok($crate::store::ReplyView {
                        id: $dec(row, "id")?,
                        guardian_id: $dec(row, "guardian_id")?,
                        guardian_name: format!(
                            "{} {}",
                            row.try_get::<String, _>("given_name")?,
                            row.try_get::<String, _>("family_name")?
                        ),
                        from: row.try_get("from_address")?,
                        body: row.try_get("body")?,
                        keyword: row.try_get("keyword")?,
                        received_at: row.try_get("received_at")?,
                    })
                })
                .collect()
        }

        pub async fn resubscribe(
            pool: &sqlx::Pool<$db>,
            guardian: uuid::Uuid,
            channel: $crate::Channel,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<u64> {
            Ok(sqlx::query(
                "UPDATE opt_outs SET revoked_at = $1 WHERE guardian_id = $2 AND channel = $3 \
                 AND source = 'carrier' AND revoked_at IS NULL",
            )
            .bind(at)
            .bind($enc(guardian))
            .bind(channel.as_str())
            .execute(pool)
            .await?
            .rows_affected())
        }

        // The callback inbox: provider events kept before they are answered, applied
        // afterwards (kept beside the directory for its id encoding).

        pub async fn apply_inbox_batch(
            pool: &sqlx::Pool<$db>,
            items: &[$crate::store::InboxApply],
        ) -> StoreResult<Vec<Option<&'static str>>> {
            // A few statements per batch, not per event: multi-row VALUES throughout.
            const CHUNK: usize = 500;
            let mut tx = pool.begin().await?;
            let asking: Vec<usize> = (0..items.len()).filter(|&i| items[i].request.is_some()).collect();
            let requests: Vec<_> = asking.iter().filter_map(|&i| items[i].request.clone()).collect();
            let results = $crate::delivery::decide_and_apply(
                &mut $crate::store::transitions::InTx::<$db>(&mut *tx),
                requests,
            )
            .await?;
            let mut marks: Vec<Option<(&'static str, String)>> =
                items.iter().map(|item| Some((item.status, item.outcome.clone()))).collect();
            for (&index, result) in asking.iter().zip(&results) {
                marks[index] = $crate::store::inbox::inbox_mark(result);
            }
            let done: Vec<(uuid::Uuid, &'static str, &str)> = items
                .iter()
                .zip(&marks)
                .filter_map(|(item, mark)| mark.as_ref().map(|(status, outcome)| (item.inbox_id, *status, outcome.as_str())))
                .collect();
            let at = chrono::Utc::now();
            for chunk in done.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::<$db>::new("WITH v (iid, new_status, new_outcome) AS (");
                q.push_values(chunk, |mut row, (id, status, outcome)| {
                    row.push_bind($enc(*id))
                        .push_bind(*status)
                        .push_bind(outcome.to_string());
                });
                q.push(") UPDATE callback_inbox SET status = v.new_status, outcome = v.new_outcome, applied_at = ");
                q.push_bind(at);
                q.push(" FROM v WHERE id = v.iid AND status = 'pending'");
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(marks.into_iter().map(|mark| mark.map(|(status, _)| status)).collect())
        }

        /// Deliveries by id (those that exist), in no particular order.
        pub async fn deliveries_by_ids(
            conn: &mut <$db as sqlx::Database>::Connection,
            ids: &[$crate::DeliveryId],
        ) -> StoreResult<Vec<$crate::delivery::Delivery>> {
            let mut found = Vec::with_capacity(ids.len());
            for chunk in ids.chunks(500) {
                let mut query = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT {} FROM deliveries WHERE id IN (",
                    $crate::store::DELIVERY_COLUMNS
                ));
                let mut list = query.separated(", ");
                for id in chunk {
                    list.push_bind($enc(*id.as_uuid()));
                }
                query.push(")");
                for row in query.build().fetch_all(&mut *conn).await? {
                    found.push(crate::store::deliveries::from_row(&row)?);
                }
            }
            Ok(found)
        }

        pub async fn inbox_put_many(
            pool: &sqlx::Pool<$db>,
            events: &[$crate::store::InboxPut],
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<Vec<bool>> {
            let mut tx = pool.begin().await?;
            let mut inserted: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
            for chunk in events.chunks(500) {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO callback_inbox (id, provider, event_id, received_at, payload, status, applied_at, outcome) ",
                );
                q.push_values(chunk, |mut row, e| {
                    row.push_bind($enc(uuid::Uuid::now_v7()))
                        .push_bind(e.provider.clone())
                        .push_bind(e.event_id.clone())
                        .push_bind(at)
                        .push_bind(e.payload.clone())
                        .push_bind(e.status)
                        .push_bind((e.status != "pending").then_some(at))
                        .push_bind(e.outcome.clone());
                });
                q.push(" ON CONFLICT (provider, event_id) DO NOTHING RETURNING provider, event_id");
                for row in q.build().fetch_all(&mut *tx).await? {
                    inserted.insert((row.try_get("provider")?, row.try_get("event_id")?));
                }
            }
            tx.commit().await?;
            // The same event twice in one batch: the first is new, the second a duplicate.
            Ok(events
                .iter()
                .map(|e| inserted.remove(&(e.provider.clone(), e.event_id.clone())))
                .collect())
        }

        pub async fn inbox_pending(pool: &sqlx::Pool<$db>, limit: u32) -> StoreResult<Vec<$crate::store::InboxItem>> {
            let rows = sqlx::query(
                "SELECT id, provider, event_id, payload FROM callback_inbox WHERE status = 'pending' \
                 ORDER BY received_at, id LIMIT $1",
            )
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok($crate::store::InboxItem {
                        id: $dec(row, "id")?,
                        provider: row.try_get("provider")?,
                        event_id: row.try_get("event_id")?,
                        payload: row.try_get("payload")?,
                    })
                })
                .collect()
        }

        pub async fn inbox_counts(pool: &sqlx::Pool<$db>) -> StoreResult<std::collections::BTreeMap<String, i64>> {
            let rows = sqlx::query("SELECT status, count(*) AS n FROM callback_inbox GROUP BY status")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| Ok((row.try_get::<String, _>("status")?, row.try_get::<i64, _>("n")?)))
                .collect()
        }

        pub async fn sent_through(
            pool: &sqlx::Pool<$db>,
            ids: &[$crate::DeliveryId],
        ) -> StoreResult<Vec<$crate::store::inbox::SentThrough>> {
            use $crate::store::inbox::SentThrough;
            let mut found: std::collections::BTreeMap<uuid::Uuid, SentThrough> = Default::default();
            for chunk in ids.chunks(500) {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "SELECT d.id, d.channel, d.provider_ref, d.provider AS recorded, a.provider AS attempted \
                     FROM deliveries d LEFT JOIN delivery_attempts a ON a.delivery_id = d.id WHERE d.id IN (",
                );
                let mut list = q.separated(", ");
                for id in chunk {
                    list.push_bind($enc(*id.as_uuid()));
                }
                q.push(")");
                for row in q.build().fetch_all(pool).await? {
                    let id: uuid::Uuid = $dec(&row, "id")?;
                    let entry = match found.entry(id) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => e.insert(SentThrough {
                            delivery_id: $crate::DeliveryId::from_uuid(id),
                            channel: parse_col(&row, "channel")?,
                            provider_ref: row.try_get("provider_ref")?,
                            providers: Vec::new(),
                        }),
                    };
                    for column in ["recorded", "attempted"] {
                        if let Some(provider) = row.try_get::<Option<String>, _>(column)? {
                            entry.providers.push(provider);
                        }
                    }
                }
            }
            Ok(found
                .into_values()
                .map(|mut s| {
                    s.providers.sort_unstable();
                    s.providers.dedup();
                    s
                })
                .collect())
        }

        pub async fn claim_webhook_token(
            pool: &sqlx::Pool<$db>,
            provider: &str,
            token: &str,
            event_key: &str,
            at: chrono::DateTime<chrono::Utc>,
        ) -> StoreResult<$crate::store::inbox::TokenClaim> {
            use $crate::store::inbox::TokenClaim;
            let inserted = sqlx::query(
                "INSERT INTO webhook_tokens (provider, token, event_key, seen_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (provider, token) DO NOTHING",
            )
            .bind(provider)
            .bind(token)
            .bind(event_key)
            .bind(at)
            .execute(pool)
            .await?
            .rows_affected();
            if inserted == 1 {
                return Ok(TokenClaim::New);
            }
            let seen: Option<String> =
                sqlx::query_scalar("SELECT event_key FROM webhook_tokens WHERE provider = $1 AND token = $2")
                    .bind(provider)
                    .bind(token)
                    .fetch_optional(pool)
                    .await?;
            Ok(match seen {
                Some(key) if key == event_key => TokenClaim::Repeat,
                // Pruned between the two statements: it was stale anyway.
                Some(_) | None => TokenClaim::Reused,
            })
        }

        pub async fn prune_inbox(
            pool: &sqlx::Pool<$db>,
            retention: &$crate::store::inbox::InboxRetention,
        ) -> StoreResult<$crate::store::inbox::Pruned> {
            let limit = i64::from(retention.limit);
            let events = |statuses: &'static str, before: chrono::DateTime<chrono::Utc>| async move {
                Ok::<u64, $crate::store::StoreError>(
                    sqlx::query(&format!(
                        "DELETE FROM callback_inbox WHERE id IN (SELECT id FROM callback_inbox \
                         WHERE status IN ({statuses}) AND received_at < $1 ORDER BY received_at LIMIT $2)"
                    ))
                    .bind(before)
                    .bind(limit)
                    .execute(pool)
                    .await?
                    .rows_affected(),
                )
            };
            let finished = events("'applied', 'ignored'", retention.finished_before).await?;
            let rejected = events("'rejected'", retention.rejected_before).await?;
            let tokens = sqlx::query(
                "DELETE FROM webhook_tokens WHERE seen_at < $1 AND token IN \
                 (SELECT token FROM webhook_tokens WHERE seen_at < $2 ORDER BY seen_at LIMIT $3)",
            )
            .bind(retention.tokens_before)
            .bind(retention.tokens_before)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected();
            Ok($crate::store::inbox::Pruned { finished, rejected, tokens })
        }
    };
}

pub(crate) use directory_queries;
