//! The guardian directory as staff see it: what each role may see, and the shapes the
//! directory is read in.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::dialect::{Args, Columns, Dialect};
use super::{DirectoryCounts, StoreResult};
use crate::{Channel, DistrictId, Role, Staff, StaffId};

/// What part of a district a staff member may see (DESIGN.md §7). Every directory query
/// takes one; none can be run without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// District administrators: everything in the district.
    District(DistrictId),
    /// School administrators and viewers: the schools they are assigned to.
    Schools(DistrictId, StaffId),
    /// Teachers: the classes they teach, those classes' students and their guardians.
    Teacher(DistrictId, StaffId),
}

impl Scope {
    pub fn of(staff: &Staff) -> Self {
        match staff.role {
            Role::DistrictAdmin => Scope::District(staff.district_id),
            Role::SchoolAdmin | Role::Viewer => Scope::Schools(staff.district_id, staff.id),
            Role::Teacher => Scope::Teacher(staff.district_id, staff.id),
        }
    }

    pub fn district(&self) -> DistrictId {
        match *self {
            Scope::District(d) | Scope::Schools(d, _) | Scope::Teacher(d, _) => d,
        }
    }

    /// The staff member scoped to, or the nil id for the whole district.
    pub fn staff(&self) -> Uuid {
        match *self {
            Scope::District(_) => Uuid::nil(),
            Scope::Schools(_, s) | Scope::Teacher(_, s) => *s.as_uuid(),
        }
    }
}

/// One page of a listing: rows after `after` (ids are time-ordered), at most `limit`,
/// optionally matching `search` in names and sourcedIds, and narrowed to one row, school,
/// class or student. Filters never widen the caller's scope.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub after: Option<Uuid>,
    pub limit: u32,
    pub search: Option<String>,
    /// Only the row with this id.
    pub only: Option<Uuid>,
    /// Rows of this school (for guardians: guardians of its students).
    pub school: Option<Uuid>,
    /// Rows of this class (students enrolled, their guardians, its school).
    pub class: Option<Uuid>,
    /// Rows of this student (their guardians, classes, school).
    pub student: Option<Uuid>,
}

impl PageRequest {
    /// The one row with this id, if the scope sees it.
    pub fn only(id: Uuid) -> Self {
        PageRequest {
            only: Some(id),
            limit: 1,
            ..PageRequest::default()
        }
    }

    /// `%search%`, lower-cased, with LIKE's wildcards escaped.
    pub fn pattern(&self) -> Option<String> {
        self.search
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let escaped = s
                    .to_lowercase()
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                format!("%{escaped}%")
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchoolView {
    pub id: Uuid,
    pub sourced_id: Option<String>,
    pub name: String,
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClassView {
    pub id: Uuid,
    pub sourced_id: Option<String>,
    pub school_id: Uuid,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StudentView {
    pub id: Uuid,
    pub sourced_id: Option<String>,
    pub school_id: Uuid,
    pub given_name: String,
    pub family_name: String,
    pub grade: Option<String>,
}

/// A grade level of the district, with how many of its students the caller may see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GradeView {
    pub grade: String,
    /// Students of the district in this grade.
    pub students: i64,
    /// Of those, the ones the caller may see. An audience may name the grade only when
    /// the caller sees them all.
    pub visible: i64,
}

impl GradeView {
    /// The caller may message the whole grade.
    pub fn whole(&self) -> bool {
        self.visible == self.students
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GuardianView {
    pub id: Uuid,
    pub sourced_id: Option<String>,
    pub given_name: String,
    pub family_name: String,
    pub preferred_language: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContactPointView {
    pub id: Uuid,
    pub kind: Channel,
    pub address: String,
    pub active: bool,
    pub inactive_reason: Option<String>,
    /// roster, staff or app.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OptOutView {
    pub id: Uuid,
    pub channel: Channel,
    /// carrier (an SMS STOP), guardian, staff or complaint.
    pub source: String,
    pub created_at: DateTime<Utc>,
}

/// A guardian with everything staff need to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GuardianDetail {
    #[serde(flatten)]
    pub guardian: GuardianView,
    pub students: Vec<StudentView>,
    pub contact_points: Vec<ContactPointView>,
    pub opt_outs: Vec<OptOutView>,
}

/// How to find one guardian.
#[derive(Debug, Clone)]
pub enum GuardianRef {
    Id(Uuid),
    SourcedId(String),
}

impl GuardianRef {
    /// A guardian as people name one: its id, or else the roster's sourcedId.
    pub fn parse(text: &str) -> Self {
        match text.parse::<Uuid>() {
            Ok(id) => GuardianRef::Id(id),
            Err(_) => GuardianRef::SourcedId(text.to_owned()),
        }
    }
}

// The directory's SQL, written once for both databases: the scope of the caller is a
// fragment of the WHERE clause, chosen here, never by a handler.

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

const STUDENT_COLUMNS: &str =
    "x.id, x.sourced_id, x.school_id, x.given_name, x.family_name, x.grade";
const GUARDIAN_COLUMNS: &str =
    "x.id, x.sourced_id, x.given_name, x.family_name, x.preferred_language";
pub(crate) const CONTACT_COLUMNS: &str = "id, kind, address, active, inactive_reason, source";
pub(crate) const OPT_OUT_COLUMNS: &str = "id, channel, source, created_at";

fn student(row: &impl Columns) -> StoreResult<StudentView> {
    Ok(StudentView {
        id: row.id("id")?,
        sourced_id: row.opt_text("sourced_id")?,
        school_id: row.id("school_id")?,
        given_name: row.text("given_name")?,
        family_name: row.text("family_name")?,
        grade: row.opt_text("grade")?,
    })
}

fn guardian(row: &impl Columns) -> StoreResult<GuardianView> {
    Ok(GuardianView {
        id: row.id("id")?,
        sourced_id: row.opt_text("sourced_id")?,
        given_name: row.text("given_name")?,
        family_name: row.text("family_name")?,
        preferred_language: row.opt_text("preferred_language")?,
    })
}

pub(crate) fn contact(row: &impl Columns) -> StoreResult<ContactPointView> {
    Ok(ContactPointView {
        id: row.id("id")?,
        kind: row.parsed("kind")?,
        address: row.text("address")?,
        active: row.flag("active")?,
        inactive_reason: row.opt_text("inactive_reason")?,
        source: row.text("source")?,
    })
}

pub(crate) fn opt_out(row: &impl Columns) -> StoreResult<OptOutView> {
    Ok(OptOutView {
        id: row.id("id")?,
        channel: row.parsed("channel")?,
        source: row.text("source")?,
        created_at: row.time("created_at")?,
    })
}

/// A page of [`page_query`] with its nine parameters bound.
async fn page<D: Dialect>(
    conn: &mut D::Connection,
    sql: &str,
    scope: &Scope,
    page: &PageRequest,
) -> StoreResult<Vec<D::Row>> {
    let args = Args::new()
        .id(*scope.district().as_uuid())
        .id(scope.staff())
        .opt_id(page.after)
        .opt_text(page.pattern())
        .int(page.limit)
        .opt_id(page.only)
        .opt_id(page.school)
        .opt_id(page.class)
        .opt_id(page.student);
    D::fetch_all(conn, sql, args).await
}

pub(crate) async fn schools<D: Dialect>(
    conn: &mut D::Connection,
    scope: &Scope,
    request: &PageRequest,
) -> StoreResult<Vec<SchoolView>> {
    let sql = page_query(
        "x.id, x.sourced_id, x.name, x.timezone",
        "schools",
        school_filter(scope),
        "x.name",
        &SCHOOLS,
    );
    page::<D>(conn, &sql, scope, request)
        .await?
        .iter()
        .map(|row| {
            Ok(SchoolView {
                id: row.id("id")?,
                sourced_id: row.opt_text("sourced_id")?,
                name: row.text("name")?,
                timezone: row.text("timezone")?,
            })
        })
        .collect()
}

pub(crate) async fn classes<D: Dialect>(
    conn: &mut D::Connection,
    scope: &Scope,
    request: &PageRequest,
) -> StoreResult<Vec<ClassView>> {
    let sql = page_query(
        "x.id, x.sourced_id, x.school_id, x.title",
        "classes",
        class_filter(scope),
        "x.title",
        &CLASSES,
    );
    page::<D>(conn, &sql, scope, request)
        .await?
        .iter()
        .map(|row| {
            Ok(ClassView {
                id: row.id("id")?,
                sourced_id: row.opt_text("sourced_id")?,
                school_id: row.id("school_id")?,
                title: row.text("title")?,
            })
        })
        .collect()
}

pub(crate) async fn students<D: Dialect>(
    conn: &mut D::Connection,
    scope: &Scope,
    request: &PageRequest,
) -> StoreResult<Vec<StudentView>> {
    let sql = page_query(
        STUDENT_COLUMNS,
        "students",
        &student_filter(scope, "x"),
        "x.given_name || ' ' || x.family_name",
        &STUDENTS,
    );
    page::<D>(conn, &sql, scope, request)
        .await?
        .iter()
        .map(student)
        .collect()
}

/// The grades of the district that the scope sees students in, in grade order (numbers
/// as numbers: "2" before "10"), each with its students counted.
pub(crate) async fn grades<D: Dialect>(
    conn: &mut D::Connection,
    scope: &Scope,
) -> StoreResult<Vec<GradeView>> {
    let sql = format!(
        "SELECT x.grade, count(*) AS students, \
         sum(CASE WHEN {0} THEN 1 ELSE 0 END) AS visible \
         FROM students x WHERE x.district_id = $1 AND x.deleted_at IS NULL AND x.grade IS NOT NULL \
         GROUP BY x.grade HAVING sum(CASE WHEN {0} THEN 1 ELSE 0 END) > 0",
        student_filter(scope, "x")
    );
    let args = Args::new()
        .id(*scope.district().as_uuid())
        .id(scope.staff());
    let mut grades = D::fetch_all(conn, &sql, args)
        .await?
        .iter()
        .map(|row| {
            Ok(GradeView {
                grade: row.text("grade")?,
                students: row.i64("students")?,
                visible: row.i64("visible")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    grades.sort_by_key(|g| grade_order(&g.grade));
    Ok(grades)
}

/// Sorts grades as a school does: pre-kindergarten and kindergarten first, then numbers
/// by value, then anything else by name.
fn grade_order(grade: &str) -> (u8, u32, String) {
    match grade.trim().to_ascii_uppercase().as_str() {
        "PK" | "PREK" | "PRE-K" => (0, 0, String::new()),
        "K" | "KG" | "KINDERGARTEN" => (1, 0, String::new()),
        other => match other.parse::<u32>() {
            Ok(n) => (2, n, String::new()),
            Err(_) => (3, 0, other.to_owned()),
        },
    }
}

pub(crate) async fn guardians<D: Dialect>(
    conn: &mut D::Connection,
    scope: &Scope,
    request: &PageRequest,
) -> StoreResult<Vec<GuardianView>> {
    let sql = page_query(
        GUARDIAN_COLUMNS,
        "guardians",
        &guardian_filter(scope),
        "x.given_name || ' ' || x.family_name",
        &GUARDIANS,
    );
    page::<D>(conn, &sql, scope, request)
        .await?
        .iter()
        .map(guardian)
        .collect()
}

/// A guardian the scope may see, with the students the scope may see among theirs.
pub(crate) async fn guardian_detail<D: Dialect>(
    conn: &mut D::Connection,
    scope: &Scope,
    which: &GuardianRef,
) -> StoreResult<Option<GuardianDetail>> {
    let in_scope = || {
        Args::new()
            .id(*scope.district().as_uuid())
            .id(scope.staff())
    };
    let (key, args) = match which {
        GuardianRef::Id(id) => ("x.id = $3", in_scope().id(*id)),
        GuardianRef::SourcedId(sid) => ("x.sourced_id = $3", in_scope().text(sid.as_str())),
    };
    let sql = format!(
        "SELECT {GUARDIAN_COLUMNS} FROM guardians x WHERE x.district_id = $1 AND x.deleted_at IS NULL \
         AND ({}) AND {key}",
        guardian_filter(scope)
    );
    let Some(row) = D::fetch_optional(conn, &sql, args).await? else {
        return Ok(None);
    };
    let found = guardian(&row)?;
    let students_sql = format!(
        "SELECT {STUDENT_COLUMNS} FROM students x JOIN guardian_students gs ON gs.student_id = x.id \
         WHERE x.district_id = $1 AND gs.guardian_id = $3 AND gs.deleted_at IS NULL AND x.deleted_at IS NULL \
         AND ({}) ORDER BY x.family_name, x.given_name, x.id",
        student_filter(scope, "x")
    );
    let students = D::fetch_all(conn, &students_sql, in_scope().id(found.id))
        .await?
        .iter()
        .map(student)
        .collect::<StoreResult<Vec<_>>>()?;
    let contacts_sql = format!(
        "SELECT {CONTACT_COLUMNS} FROM contact_points WHERE guardian_id = $1 ORDER BY kind, address"
    );
    let contact_points = D::fetch_all(conn, &contacts_sql, Args::new().id(found.id))
        .await?
        .iter()
        .map(contact)
        .collect::<StoreResult<Vec<_>>>()?;
    let opt_outs_sql = format!(
        "SELECT {OPT_OUT_COLUMNS} FROM opt_outs WHERE guardian_id = $1 AND revoked_at IS NULL \
         ORDER BY created_at"
    );
    let opt_outs = D::fetch_all(conn, &opt_outs_sql, Args::new().id(found.id))
        .await?
        .iter()
        .map(opt_out)
        .collect::<StoreResult<Vec<_>>>()?;
    Ok(Some(GuardianDetail {
        guardian: found,
        students,
        contact_points,
        opt_outs,
    }))
}

/// How much of each kind the district's directory holds.
pub(crate) async fn counts<D: Dialect>(
    conn: &mut D::Connection,
    district: Uuid,
) -> StoreResult<DirectoryCounts> {
    let row = D::fetch_one(
        conn,
        "SELECT \
           (SELECT count(*) FROM schools WHERE district_id = $1 AND deleted_at IS NULL) AS schools, \
           (SELECT count(*) FROM students WHERE district_id = $1 AND deleted_at IS NULL) AS students, \
           (SELECT count(*) FROM guardians WHERE district_id = $1 AND deleted_at IS NULL) AS guardians, \
           (SELECT count(*) FROM staff WHERE district_id = $1 AND disabled_at IS NULL) AS staff, \
           (SELECT count(*) FROM classes WHERE district_id = $1 AND deleted_at IS NULL) AS classes, \
           (SELECT count(*) FROM enrollments WHERE district_id = $1 AND deleted_at IS NULL) AS enrollments, \
           (SELECT count(*) FROM guardian_students WHERE district_id = $1 AND deleted_at IS NULL) AS guardian_links, \
           (SELECT count(*) FROM contact_points WHERE district_id = $1 AND active) AS active_contact_points",
        Args::new().id(district),
    )
    .await?;
    Ok(DirectoryCounts {
        schools: row.i64("schools")?,
        students: row.i64("students")?,
        guardians: row.i64("guardians")?,
        staff: row.i64("staff")?,
        classes: row.i64("classes")?,
        enrollments: row.i64("enrollments")?,
        guardian_links: row.i64("guardian_links")?,
        active_contact_points: row.i64("active_contact_points")?,
    })
}

/// Every district's live schools, students and guardians and enabled staff.
pub(crate) async fn sizes<D: Dialect>(
    conn: &mut D::Connection,
) -> StoreResult<std::collections::HashMap<crate::DistrictId, super::DistrictSize>> {
    let mut sizes = std::collections::HashMap::<crate::DistrictId, super::DistrictSize>::new();
    type Field = fn(&mut super::DistrictSize) -> &mut i64;
    let tables: [(&str, Field); 4] = [
        ("schools WHERE deleted_at IS NULL", |s| &mut s.schools),
        ("students WHERE deleted_at IS NULL", |s| &mut s.students),
        ("guardians WHERE deleted_at IS NULL", |s| &mut s.guardians),
        ("staff WHERE disabled_at IS NULL", |s| &mut s.staff),
    ];
    for (rows, field) in tables {
        let sql = format!("SELECT district_id, count(*) AS n FROM {rows} GROUP BY district_id");
        for row in D::fetch_all(conn, &sql, Args::new()).await? {
            let district = crate::DistrictId::from_uuid(row.id("district_id")?);
            *field(sizes.entry(district).or_default()) = row.i64("n")?;
        }
    }
    Ok(sizes)
}
