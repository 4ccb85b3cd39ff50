//! Resolving an audience, and the idempotency keys of the messages API, written once for
//! both dialects (see `roster_sql`).

/// Expands to the audience and idempotency queries of one dialect.
/// `as_text` turns an id column into hyphenated text (`"::text"` or `""`); `id_type` is
/// the column type of ids (`"uuid"` or `"TEXT"`).
macro_rules! audience_queries {
    (db: $db:ty, enc: $enc:path, dec: $dec:path, as_text: $as_text:literal, id_type: $id_type:literal) => {
        use std::collections::HashMap;

        use futures_util::TryStreamExt as _;
        use sqlx::Row as _;
        use $crate::audience::{Audience, AudienceMember, AudienceProblems, MemberContact};
        use $crate::store::directory::Scope;
        use $crate::store::directory_sql::{class_filter, guardian_filter, school_filter, student_filter};
        use $crate::store::StoreResult;

        const CHUNK: usize = 1_000;


        /// Resolves `references` (ids or sourcedIds) of `table` in the district: their ids,
        /// and the references that are unknown or outside the scope.
        async fn references(
            tx: &mut sqlx::Transaction<'_, $db>,
            scope: &Scope,
            table: &str,
            visible: &str,
            label: &str,
            references: &[String],
            problems: &mut AudienceProblems,
        ) -> StoreResult<Vec<uuid::Uuid>> {
            let mut found: HashMap<String, (uuid::Uuid, bool)> = HashMap::new();
            for chunk in references.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::<$db>::new(format!(
                    "SELECT x.id, x.id{t} AS id_text, x.sourced_id, ({visible}) AS visible FROM {table} x \
                     WHERE x.deleted_at IS NULL AND x.district_id = ",
                    t = $as_text
                ));
                q.push_bind($enc(*scope.district().as_uuid()));
                // `$2` in the scope filters is the staff id: bound second, whatever the text.
                q.push(" AND (x.id IS NOT NULL OR x.id = ").push_bind($enc(scope.staff())).push(")");
                q.push(format!(" AND (x.id{} IN (", $as_text));
                let mut list = q.separated(", ");
                for r in chunk {
                    list.push_bind(r.to_lowercase());
                }
                q.push(") OR x.sourced_id IN (");
                let mut list = q.separated(", ");
                for r in chunk {
                    list.push_bind(r.as_str());
                }
                q.push("))");
                for row in q.build().fetch_all(&mut **tx).await? {
                    let id = $dec(&row, "id")?;
                    let visible: bool = row.try_get("visible")?;
                    let id_text: String = row.try_get("id_text")?;
                    found.insert(id_text, (id, visible));
                    if let Some(sid) = row.try_get::<Option<String>, _>("sourced_id")? {
                        found.insert(sid, (id, visible));
                    }
                }
            }
            let mut ids = Vec::new();
            for r in references {
                match found.get(r.as_str()).or_else(|| found.get(&r.to_lowercase())) {
                    Some((id, true)) => ids.push(*id),
                    Some((_, false)) => problems.forbidden.push(format!("{label}:{r}")),
                    None => problems.unknown.push(format!("{label}:{r}")),
                }
            }
            Ok(ids)
        }

        /// Checks `grades` like the other references: a grade no student of the district is
        /// in is unknown; one with a student outside the scope is forbidden (a teacher
        /// naming a grade is refused, not narrowed to their own classes without a word).
        async fn grades(
            tx: &mut sqlx::Transaction<'_, $db>,
            scope: &Scope,
            grades: &[String],
            problems: &mut AudienceProblems,
        ) -> StoreResult<()> {
            if grades.is_empty() {
                return Ok(());
            }
            let mut counted: HashMap<String, (i64, i64)> = HashMap::new();
            for visible in [false, true] {
                for chunk in grades.chunks(CHUNK) {
                    let mut q = sqlx::QueryBuilder::<$db>::new(
                        "SELECT s.grade, count(*) AS n FROM students s WHERE s.deleted_at IS NULL AND s.district_id = ",
                    );
                    q.push_bind($enc(*scope.district().as_uuid()));
                    // `$2` in the scope filter is the staff id: bound second, whatever the text.
                    q.push(" AND (s.id IS NOT NULL OR s.id = ").push_bind($enc(scope.staff())).push(")");
                    if visible {
                        q.push(format!(" AND ({})", student_filter(scope, "s")));
                    }
                    q.push(" AND s.grade IN (");
                    let mut list = q.separated(", ");
                    for grade in chunk {
                        list.push_bind(grade.as_str());
                    }
                    q.push(") GROUP BY s.grade");
                    for row in q.build().fetch_all(&mut **tx).await? {
                        let grade: String = row.try_get("grade")?;
                        let n: i64 = row.try_get("n")?;
                        let entry = counted.entry(grade).or_default();
                        if visible {
                            entry.1 = n;
                        } else {
                            entry.0 = n;
                        }
                    }
                }
            }
            for grade in grades {
                match counted.get(grade.as_str()) {
                    None => problems.unknown.push(format!("grades:{grade}")),
                    Some((total, visible)) if visible < total => {
                        problems.forbidden.push(format!("grades:{grade}"))
                    }
                    Some(_) => {}
                }
            }
            Ok(())
        }

        fn push_ids(q: &mut sqlx::QueryBuilder<'_, $db>, ids: &[uuid::Uuid]) {
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind($enc(*id));
            }
        }

        /// Puts the guardians an audience reaches within `scope` into the transaction's
        /// temporary table `audience_targets`, each once; or says what is wrong with the
        /// audience. Returns how many there are.
        pub async fn resolve_targets(
            tx: &mut sqlx::Transaction<'_, $db>,
            scope: &Scope,
            audience: &Audience,
        ) -> StoreResult<Result<usize, AudienceProblems>> {
            let mut problems = AudienceProblems::default();
            if audience.district && !matches!(scope, Scope::District(_)) {
                problems.forbidden.push("district".into());
            }
            let schools = references(tx, scope, "schools", school_filter(scope), "schools", &audience.schools, &mut problems).await?;
            let classes = references(tx, scope, "classes", class_filter(scope), "classes", &audience.classes, &mut problems).await?;
            let students = references(tx, scope, "students", &student_filter(scope, "x"), "students", &audience.students, &mut problems).await?;
            let guardians = references(tx, scope, "guardians", &guardian_filter(scope), "guardians", &audience.guardians, &mut problems).await?;
            grades(tx, scope, &audience.grades, &mut problems).await?;
            if !problems.is_empty() {
                return Ok(Err(problems));
            }

            // The reached guardians go into a temporary table on the transaction's
            // connection, and the details are read by joining it, a chunk of guardians at
            // a time: four statements per chunk whatever the audience size.
            sqlx::query(concat!("CREATE TEMP TABLE audience_targets (id ", $id_type, " PRIMARY KEY)"))
                .execute(&mut **tx)
                .await?;
            let through_students = !schools.is_empty() || !classes.is_empty() || !students.is_empty() || !audience.grades.is_empty();
            if through_students {
                let mut q = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO audience_targets (id) \
                     SELECT DISTINCT gs.guardian_id FROM guardian_students gs JOIN students s ON s.id = gs.student_id \
                     JOIN guardians g ON g.id = gs.guardian_id \
                     WHERE gs.deleted_at IS NULL AND s.deleted_at IS NULL AND g.deleted_at IS NULL AND s.district_id = ",
                );
                q.push_bind($enc(*scope.district().as_uuid()));
                q.push(" AND (s.id IS NOT NULL OR s.id = ").push_bind($enc(scope.staff())).push(")");
                q.push(format!(" AND ({}) AND (FALSE", student_filter(scope, "s")));
                if !schools.is_empty() {
                    q.push(" OR s.school_id IN (");
                    push_ids(&mut q, &schools);
                    q.push(")");
                }
                if !audience.grades.is_empty() {
                    q.push(" OR s.grade IN (");
                    let mut list = q.separated(", ");
                    for grade in &audience.grades {
                        list.push_bind(grade.as_str());
                    }
                    q.push(")");
                }
                if !classes.is_empty() {
                    q.push(" OR s.id IN (SELECT student_id FROM enrollments WHERE role = 'student' AND deleted_at IS NULL AND class_id IN (");
                    push_ids(&mut q, &classes);
                    q.push("))");
                }
                if !students.is_empty() {
                    q.push(" OR s.id IN (");
                    push_ids(&mut q, &students);
                    q.push(")");
                }
                q.push(") ON CONFLICT (id) DO NOTHING");
                q.build().execute(&mut **tx).await?;
            }
            if audience.district {
                sqlx::query(
                    "INSERT INTO audience_targets (id) SELECT id FROM guardians WHERE district_id = $1 AND deleted_at IS NULL \
                     ON CONFLICT (id) DO NOTHING",
                )
                .bind($enc(*scope.district().as_uuid()))
                .execute(&mut **tx)
                .await?;
            }
            for chunk in guardians.chunks(CHUNK) {
                let mut q = sqlx::QueryBuilder::<$db>::new("INSERT INTO audience_targets (id) ");
                q.push_values(chunk, |mut row, id| {
                    row.push_bind($enc(*id));
                });
                q.push(" ON CONFLICT (id) DO NOTHING");
                q.build().execute(&mut **tx).await?;
            }
            let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audience_targets")
                .fetch_one(&mut **tx)
                .await?;
            Ok(Ok(count as usize))
        }

        /// The next `limit` guardians of `audience_targets` after `after` (in id order), with
        /// their active contact points, opt-outs and quiet hours.
        pub async fn members(
            tx: &mut sqlx::Transaction<'_, $db>,
            after: Option<uuid::Uuid>,
            limit: usize,
        ) -> StoreResult<Vec<AudienceMember>> {
            let mut members: HashMap<uuid::Uuid, AudienceMember> = HashMap::new();
            // Rows are streamed, not collected: memory holds the members, not the result sets.
            let mut rows = sqlx::query(
                "SELECT g.id, g.preferred_language FROM audience_targets t JOIN guardians g ON g.id = t.id \
                 WHERE t.id > $1 ORDER BY t.id LIMIT $2",
            )
            // A plain range from the nil id (below every real one): an index range scan,
            // where an `IS NULL OR` would scan the whole table for every chunk.
            .bind($enc(after.unwrap_or(uuid::Uuid::nil())))
            .bind(limit as i64)
            .fetch(&mut **tx);
            while let Some(row) = rows.try_next().await? {
                let id = $dec(&row, "id")?;
                members.insert(id, AudienceMember {
                    guardian_id: id,
                    preferred_language: row.try_get("preferred_language")?,
                    contacts: Vec::new(),
                    opt_outs: Vec::new(),
                    quiet: None,
                });
            }
            drop(rows);
            let (Some(first), Some(last)) = (members.keys().min().copied(), members.keys().max().copied()) else {
                return Ok(Vec::new());
            };
            let mut rows = sqlx::query(
                // A device is addressed as `platform:token`, so that push reaches the
                // right provider (APNs or FCM).
                "SELECT c.id, c.guardian_id, c.kind, \
                 CASE WHEN c.kind = 'push' THEN c.push_platform || ':' || c.address ELSE c.address END AS address \
                 FROM contact_points c \
                 JOIN audience_targets t ON t.id = c.guardian_id WHERE c.active AND t.id >= $1 AND t.id <= $2 \
                 ORDER BY c.created_at, c.id",
            )
            .bind($enc(first))
            .bind($enc(last))
            .fetch(&mut **tx);
            while let Some(row) = rows.try_next().await? {
                let guardian = $dec(&row, "guardian_id")?;
                let kind: String = row.try_get("kind")?;
                if let (Some(member), Ok(kind)) = (members.get_mut(&guardian), kind.parse()) {
                    member.contacts.push(MemberContact { id: $dec(&row, "id")?, kind, address: row.try_get("address")? });
                }
            }
            drop(rows);
            let mut rows = sqlx::query(
                "SELECT o.guardian_id, o.channel, o.source FROM opt_outs o \
                 JOIN audience_targets t ON t.id = o.guardian_id WHERE o.revoked_at IS NULL \
                 AND t.id >= $1 AND t.id <= $2",
            )
            .bind($enc(first))
            .bind($enc(last))
            .fetch(&mut **tx);
            while let Some(row) = rows.try_next().await? {
                let guardian = $dec(&row, "guardian_id")?;
                let channel: String = row.try_get("channel")?;
                if let (Some(member), Ok(channel)) = (members.get_mut(&guardian), channel.parse()) {
                    member.opt_outs.push((channel, row.try_get("source")?));
                }
            }
            // Quiet hours: the guardian's own window, else that of their first school that
            // has one, in that school's time zone.
            drop(rows);
            let mut rows = sqlx::query(
                "SELECT gs.guardian_id, sch.timezone, \
                        CAST(sch.quiet_start_minute AS INTEGER) AS s_start, CAST(sch.quiet_end_minute AS INTEGER) AS s_end, \
                        CAST(g.quiet_start_minute AS INTEGER) AS g_start, CAST(g.quiet_end_minute AS INTEGER) AS g_end \
                 FROM audience_targets t JOIN guardian_students gs ON gs.guardian_id = t.id \
                 JOIN students s ON s.id = gs.student_id JOIN schools sch ON sch.id = s.school_id \
                 JOIN guardians g ON g.id = gs.guardian_id \
                 WHERE gs.deleted_at IS NULL AND s.deleted_at IS NULL AND t.id >= $1 AND t.id <= $2 \
                 AND (g.quiet_start_minute IS NOT NULL OR sch.quiet_start_minute IS NOT NULL) \
                 ORDER BY gs.guardian_id, sch.id",
            )
            .bind($enc(first))
            .bind($enc(last))
            .fetch(&mut **tx);
            while let Some(row) = rows.try_next().await? {
                let guardian = $dec(&row, "guardian_id")?;
                let Some(member) = members.get_mut(&guardian) else { continue };
                if member.quiet.is_some() {
                    continue;
                }
                let timezone: String = row.try_get("timezone")?;
                let window = |a: Option<i32>, b: Option<i32>| match (a, b) {
                    (Some(a), Some(b)) => $crate::quiet_hours::QuietHours::new(&timezone, a as u16, b as u16).ok(),
                    _ => None,
                };
                member.quiet = window(row.try_get("g_start")?, row.try_get("g_end")?)
                    .or(window(row.try_get("s_start")?, row.try_get("s_end")?));
            }
            drop(rows);
            let mut members: Vec<AudienceMember> = members.into_values().collect();
            members.sort_by_key(|m| m.guardian_id);
            Ok(members)
        }

        /// The guardians an audience reaches within `scope`, each once, with their active
        /// contact points and opt-outs; or what is wrong with the audience.
        pub async fn resolve(
            pool: &sqlx::Pool<$db>,
            scope: &Scope,
            audience: &Audience,
        ) -> StoreResult<Result<Vec<AudienceMember>, AudienceProblems>> {
            let mut tx = pool.begin().await?;
            if let Err(problems) = resolve_targets(&mut tx, scope, audience).await? {
                return Ok(Err(problems));
            }
            let mut all = Vec::new();
            loop {
                let chunk = members(&mut tx, all.last().map(|m: &AudienceMember| m.guardian_id), $crate::store::SEND_CHUNK).await?;
                if chunk.is_empty() {
                    break;
                }
                all.extend(chunk);
            }
            // Nothing was written but the temporary table: rolling back discards it.
            tx.rollback().await?;
            Ok(Ok(all))
        }
    };
}

pub(crate) use audience_queries;
