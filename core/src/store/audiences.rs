//! The audiences repository: resolving an audience (district, schools, grades, classes,
//! students, guardians) within what the caller may see into the guardians it reaches,
//! each once, with their contact points, opt-outs and quiet hours. Written once for both
//! databases over [`Dialect`].

use std::collections::HashMap;

use uuid::Uuid;

use super::dialect::{Args, Columns, Dialect};
use super::directory::{class_filter, guardian_filter, school_filter, student_filter, Scope};
use super::StoreResult;
use crate::audience::{Audience, AudienceMember, AudienceProblems, MemberContact};
use crate::quiet_hours::QuietHours;
use crate::Channel;

/// References resolved per statement.
const CHUNK: usize = 1_000;

/// The district as `$1` and the staff id as `$2`, which the scope filters name (bound
/// whatever the filter, and used harmlessly where it does not).
fn in_district(scope: &Scope, alias: &str) -> (Args, String) {
    let args = Args::new()
        .id(*scope.district().as_uuid())
        .id(scope.staff());
    let filter =
        format!("{alias}.district_id = $1 AND ({alias}.id IS NOT NULL OR {alias}.id = $2)");
    (args, filter)
}

/// Resolves `references` (ids or sourcedIds) of `table` in the district: their ids, and
/// the references that are unknown or outside the scope.
#[allow(clippy::too_many_arguments)]
async fn references<D: Dialect>(
    conn: &mut D::Connection,
    scope: &Scope,
    table: &str,
    visible: &str,
    label: &str,
    references: &[String],
    problems: &mut AudienceProblems,
) -> StoreResult<Vec<Uuid>> {
    let mut found: HashMap<String, (Uuid, bool)> = HashMap::new();
    for chunk in references.chunks(CHUNK) {
        let (mut args, in_district) = in_district(scope, "x");
        let ids = args.texts(chunk.iter().map(|r| r.to_lowercase()));
        let sourced = args.texts(chunk);
        let sql = format!(
            "SELECT x.id, x.id{t} AS id_text, x.sourced_id, ({visible}) AS visible FROM {table} x \
             WHERE x.deleted_at IS NULL AND {in_district} \
             AND (x.id{t} IN ({ids}) OR x.sourced_id IN ({sourced}))",
            t = D::AS_TEXT
        );
        for row in D::fetch_all(conn, &sql, args).await? {
            let id = row.id("id")?;
            let visible = row.flag("visible")?;
            found.insert(row.text("id_text")?, (id, visible));
            if let Some(sid) = row.opt_text("sourced_id")? {
                found.insert(sid, (id, visible));
            }
        }
    }
    let mut ids = Vec::new();
    for r in references {
        match found
            .get(r.as_str())
            .or_else(|| found.get(&r.to_lowercase()))
        {
            Some((id, true)) => ids.push(*id),
            Some((_, false)) => problems.forbidden.push(format!("{label}:{r}")),
            None => problems.unknown.push(format!("{label}:{r}")),
        }
    }
    Ok(ids)
}

/// Checks `grades` like the other references: a grade no student of the district is in is
/// unknown; one with a student outside the scope is forbidden (a teacher naming a grade is
/// refused, not narrowed to their own classes without a word).
async fn grades<D: Dialect>(
    conn: &mut D::Connection,
    scope: &Scope,
    grades: &[String],
    problems: &mut AudienceProblems,
) -> StoreResult<()> {
    // Per grade: (students in the district, students the scope sees).
    let mut counted: HashMap<String, (i64, i64)> = HashMap::new();
    for visible in [false, true] {
        for chunk in grades.chunks(CHUNK) {
            let (mut args, in_district) = in_district(scope, "s");
            let listed = args.texts(chunk);
            let only_visible = if visible {
                format!(" AND ({})", student_filter(scope, "s"))
            } else {
                String::new()
            };
            let sql = format!(
                "SELECT s.grade, count(*) AS n FROM students s WHERE s.deleted_at IS NULL AND {in_district}\
                 {only_visible} AND s.grade IN ({listed}) GROUP BY s.grade"
            );
            for row in D::fetch_all(conn, &sql, args).await? {
                let n = row.i64("n")?;
                let entry = counted.entry(row.text("grade")?).or_default();
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

/// Puts the guardians an audience reaches within `scope` into the transaction's temporary
/// table `audience_targets`, each once; or says what is wrong with the audience. Returns
/// how many there are. The caller drops the table ([`drop_targets`]) before it commits.
pub(crate) async fn resolve_targets<D: Dialect>(
    conn: &mut D::Connection,
    scope: &Scope,
    audience: &Audience,
) -> StoreResult<Result<usize, AudienceProblems>> {
    let mut problems = AudienceProblems::default();
    if audience.district && !matches!(scope, Scope::District(_)) {
        problems.forbidden.push("district".into());
    }
    let students_visible = student_filter(scope, "x");
    let guardians_visible = guardian_filter(scope);
    let kinds = [
        ("schools", school_filter(scope), &audience.schools),
        ("classes", class_filter(scope), &audience.classes),
        ("students", students_visible.as_str(), &audience.students),
        ("guardians", guardians_visible.as_str(), &audience.guardians),
    ];
    let mut resolved = Vec::new();
    for (table, visible, named) in kinds {
        resolved
            .push(references::<D>(conn, scope, table, visible, table, named, &mut problems).await?);
    }
    grades::<D>(conn, scope, &audience.grades, &mut problems).await?;
    if !problems.is_empty() {
        return Ok(Err(problems));
    }
    let [schools, classes, students, guardians] = <[Vec<Uuid>; 4]>::try_from(resolved)
        .unwrap_or_else(|_| unreachable!("four kinds of reference were resolved"));

    // The reached guardians go into a temporary table on the transaction's connection, and
    // the details are read by joining it, a chunk of guardians at a time: four statements
    // per chunk whatever the audience size.
    let create = format!(
        "CREATE TEMP TABLE audience_targets (id {} PRIMARY KEY)",
        D::ID_TYPE
    );
    D::execute(conn, &create, Args::new()).await?;
    let through_students = !schools.is_empty()
        || !classes.is_empty()
        || !students.is_empty()
        || !audience.grades.is_empty();
    if through_students {
        let (mut args, in_district) = in_district(scope, "s");
        let mut any = vec!["FALSE".to_owned()];
        if !schools.is_empty() {
            any.push(format!("s.school_id IN ({})", args.ids(&schools)));
        }
        if !audience.grades.is_empty() {
            any.push(format!("s.grade IN ({})", args.texts(&audience.grades)));
        }
        if !classes.is_empty() {
            any.push(format!(
                "s.id IN (SELECT student_id FROM enrollments WHERE role = 'student' \
                 AND deleted_at IS NULL AND class_id IN ({}))",
                args.ids(&classes)
            ));
        }
        if !students.is_empty() {
            any.push(format!("s.id IN ({})", args.ids(&students)));
        }
        let sql = format!(
            "INSERT INTO audience_targets (id) \
             SELECT DISTINCT gs.guardian_id FROM guardian_students gs JOIN students s ON s.id = gs.student_id \
             JOIN guardians g ON g.id = gs.guardian_id \
             WHERE gs.deleted_at IS NULL AND s.deleted_at IS NULL AND g.deleted_at IS NULL AND {in_district} \
             AND ({}) AND ({}) ON CONFLICT (id) DO NOTHING",
            student_filter(scope, "s"),
            any.join(" OR ")
        );
        D::execute(conn, &sql, args).await?;
    }
    if audience.district {
        D::execute(
            conn,
            "INSERT INTO audience_targets (id) SELECT id FROM guardians \
             WHERE district_id = $1 AND deleted_at IS NULL ON CONFLICT (id) DO NOTHING",
            Args::new().id(*scope.district().as_uuid()),
        )
        .await?;
    }
    for chunk in guardians.chunks(CHUNK) {
        let mut args = Args::new();
        let rows = chunk
            .iter()
            .map(|id| format!("({})", args.ids(std::slice::from_ref(id))))
            .collect::<Vec<_>>()
            .join(", ");
        let sql =
            format!("INSERT INTO audience_targets (id) VALUES {rows} ON CONFLICT (id) DO NOTHING");
        D::execute(conn, &sql, args).await?;
    }
    let count = D::fetch_one(
        conn,
        "SELECT count(*) AS n FROM audience_targets",
        Args::new(),
    )
    .await?
    .i64("n")?;
    Ok(Ok(count as usize))
}

/// Drops `audience_targets`: temporary tables outlive a commit on their connection.
pub(crate) async fn drop_targets<D: Dialect>(conn: &mut D::Connection) -> StoreResult<()> {
    D::execute(conn, "DROP TABLE IF EXISTS audience_targets", Args::new()).await?;
    Ok(())
}

/// The next `limit` guardians of `audience_targets` after `after` (in id order), with
/// their active contact points, opt-outs and quiet hours.
pub(crate) async fn members<D: Dialect>(
    conn: &mut D::Connection,
    after: Option<Uuid>,
    limit: usize,
) -> StoreResult<Vec<AudienceMember>> {
    let mut members: HashMap<Uuid, AudienceMember> = HashMap::new();
    for row in D::fetch_all(
        conn,
        "SELECT g.id, g.preferred_language FROM audience_targets t JOIN guardians g ON g.id = t.id \
         WHERE t.id > $1 ORDER BY t.id LIMIT $2",
        // A plain range from the nil id (below every real one): an index range scan, where
        // an `IS NULL OR` would scan the whole table for every chunk.
        Args::new()
            .id(after.unwrap_or(Uuid::nil()))
            .int(limit as i64),
    )
    .await?
    {
        let id = row.id("id")?;
        members.insert(
            id,
            AudienceMember {
                guardian_id: id,
                preferred_language: row.opt_text("preferred_language")?,
                contacts: Vec::new(),
                opt_outs: Vec::new(),
                quiet: None,
            },
        );
    }
    let (Some(first), Some(last)) = (members.keys().min().copied(), members.keys().max().copied())
    else {
        return Ok(Vec::new());
    };
    let range = || Args::new().id(first).id(last);
    for row in D::fetch_all(
        conn,
        // A device is addressed as `platform:token`, so that push reaches the right
        // provider (APNs or FCM).
        "SELECT c.id, c.guardian_id, c.kind, \
         CASE WHEN c.kind = 'push' THEN c.push_platform || ':' || c.address ELSE c.address END AS address \
         FROM contact_points c \
         JOIN audience_targets t ON t.id = c.guardian_id WHERE c.active AND t.id >= $1 AND t.id <= $2 \
         ORDER BY c.created_at, c.id",
        range(),
    )
    .await?
    {
        let guardian = row.id("guardian_id")?;
        if let (Some(member), Ok(kind)) = (members.get_mut(&guardian), row.parsed("kind")) {
            member.contacts.push(MemberContact {
                id: row.id("id")?,
                kind,
                address: row.text("address")?,
            });
        }
    }
    for row in D::fetch_all(
        conn,
        "SELECT o.guardian_id, o.channel, o.source FROM opt_outs o \
         JOIN audience_targets t ON t.id = o.guardian_id WHERE o.revoked_at IS NULL \
         AND t.id >= $1 AND t.id <= $2",
        range(),
    )
    .await?
    {
        let guardian = row.id("guardian_id")?;
        if let (Some(member), Ok(channel)) = (members.get_mut(&guardian), row.parsed("channel")) {
            member.opt_outs.push((channel, row.text("source")?));
        }
    }
    // Quiet hours: the guardian's own window, else that of their first school that has
    // one, in that school's time zone.
    for row in D::fetch_all(
        conn,
        "SELECT gs.guardian_id, sch.timezone, \
                CAST(sch.quiet_start_minute AS INTEGER) AS s_start, CAST(sch.quiet_end_minute AS INTEGER) AS s_end, \
                CAST(g.quiet_start_minute AS INTEGER) AS g_start, CAST(g.quiet_end_minute AS INTEGER) AS g_end \
         FROM audience_targets t JOIN guardian_students gs ON gs.guardian_id = t.id \
         JOIN students s ON s.id = gs.student_id JOIN schools sch ON sch.id = s.school_id \
         JOIN guardians g ON g.id = gs.guardian_id \
         WHERE gs.deleted_at IS NULL AND s.deleted_at IS NULL AND t.id >= $1 AND t.id <= $2 \
         AND (g.quiet_start_minute IS NOT NULL OR sch.quiet_start_minute IS NOT NULL) \
         ORDER BY gs.guardian_id, sch.id",
        range(),
    )
    .await?
    {
        let guardian = row.id("guardian_id")?;
        let Some(member) = members.get_mut(&guardian) else {
            continue;
        };
        if member.quiet.is_some() {
            continue;
        }
        let timezone = row.text("timezone")?;
        let window = |start: Option<i32>, end: Option<i32>| match (start, end) {
            (Some(start), Some(end)) => QuietHours::new(&timezone, start as u16, end as u16).ok(),
            _ => None,
        };
        member.quiet = window(row.opt_i32("g_start")?, row.opt_i32("g_end")?)
            .or(window(row.opt_i32("s_start")?, row.opt_i32("s_end")?));
    }
    // A number whose guardian was erased after a carrier STOP is never texted: it is
    // left out, and a guardian left with no other number has the STOP as their own.
    let (district, stops) = super::guardian_data::erased_stops::<D>(conn, first).await?;
    if let (Some(district), false) = (district, stops.is_empty()) {
        for member in members.values_mut() {
            let before = member.contacts.len();
            member.contacts.retain(|c| {
                c.kind != Channel::Sms
                    || !stops.contains(&super::guardian_data::stop_hash(district, &c.address)[..])
            });
            let stopped = member.contacts.len() < before;
            if stopped && !member.contacts.iter().any(|c| c.kind == Channel::Sms) {
                member.opt_outs.push((Channel::Sms, "carrier".to_owned()));
            }
        }
    }
    let mut members: Vec<AudienceMember> = members.into_values().collect();
    members.sort_by_key(|m| m.guardian_id);
    Ok(members)
}

/// The guardians an audience reaches within `scope`, each once, with their active contact
/// points and opt-outs; or what is wrong with the audience. Reads only: the transaction
/// that holds the temporary table is rolled back.
pub(crate) async fn resolve<D: Dialect>(
    pool: &sqlx::Pool<D>,
    scope: &Scope,
    audience: &Audience,
) -> StoreResult<Result<Vec<AudienceMember>, AudienceProblems>> {
    let mut tx = pool.begin().await?;
    if let Err(problems) = resolve_targets::<D>(&mut tx, scope, audience).await? {
        return Ok(Err(problems));
    }
    let mut all: Vec<AudienceMember> = Vec::new();
    loop {
        let after = all.last().map(|m| m.guardian_id);
        let chunk = members::<D>(&mut tx, after, super::SEND_CHUNK).await?;
        if chunk.is_empty() {
            break;
        }
        all.extend(chunk);
    }
    tx.rollback().await?;
    Ok(Ok(all))
}
