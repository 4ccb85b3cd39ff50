//! What a roster import needs from the database: one transaction per bundle, batched
//! lookups by sourcedId, batched upserts, and a per-import record of which sourcedIds the
//! bundle contained (kept in the database, not in memory, so that an import of any size
//! runs in bounded memory).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use std::collections::{HashMap, HashSet};

use super::dialect::{Args, Columns, Dialect};
use super::StoreResult;
use crate::{Channel, Role};

/// A directory table that rows are imported into, keyed by sourcedId.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RosterTable {
    Schools,
    Students,
    Guardians,
    Staff,
    Classes,
    Enrollments,
}

impl RosterTable {
    pub const ALL: [RosterTable; 6] = [
        RosterTable::Schools,
        RosterTable::Students,
        RosterTable::Guardians,
        RosterTable::Staff,
        RosterTable::Classes,
        RosterTable::Enrollments,
    ];

    pub const fn table(self) -> &'static str {
        match self {
            RosterTable::Schools => "schools",
            RosterTable::Students => "students",
            RosterTable::Guardians => "guardians",
            RosterTable::Staff => "staff",
            RosterTable::Classes => "classes",
            RosterTable::Enrollments => "enrollments",
        }
    }

    /// Staff are disabled, not deleted: their sign-in must stop but their history stays.
    pub const fn deleted_column(self) -> &'static str {
        match self {
            RosterTable::Staff => "disabled_at",
            _ => "deleted_at",
        }
    }
}

/// A row already in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingRow {
    pub sourced_id: String,
    pub id: Uuid,
    pub roster_hash: Option<String>,
    pub deleted: bool,
}

/// A staff member found by email, for matching imported teachers to existing accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffByEmail {
    pub email: String,
    pub id: Uuid,
    pub district_id: Uuid,
    pub sourced_id: Option<String>,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct SchoolRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub name: String,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct StudentRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub school_id: Uuid,
    pub given_name: String,
    pub family_name: String,
    pub grade: Option<String>,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct GuardianRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub given_name: String,
    pub family_name: String,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct StaffRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct ClassRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub school_id: Uuid,
    pub title: String,
    pub hash: String,
}

/// A class membership: a student, or a teacher (a staff member).
#[derive(Debug, Clone)]
pub struct EnrollmentRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub class_id: Uuid,
    pub student_id: Option<Uuid>,
    pub staff_id: Option<Uuid>,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GuardianLink {
    pub guardian_id: Uuid,
    pub student_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RosterContact {
    pub guardian_id: Uuid,
    pub kind: Channel,
    /// E.164 number or lower-cased email address.
    pub address: String,
}

/// The open transaction of one roster import. Nothing is visible to anyone else until
/// [`RosterWriter::commit`]; dropping the writer rolls everything back.
#[async_trait]
pub trait RosterWriter: Send {
    /// The district's own sourcedId, if an import has set it.
    async fn district_sourced_id(&mut self) -> StoreResult<Option<String>>;

    async fn set_district_sourced_id(&mut self, sourced_id: &str) -> StoreResult<()>;

    /// Records that the bundle contains these keys of `entity`; returns those it already
    /// contained, with the line they were first seen on.
    async fn mark_seen(
        &mut self,
        entity: &str,
        keys: &[(String, u64)],
    ) -> StoreResult<Vec<(String, u64)>>;

    /// The rows of `table` in this district with these sourcedIds, deleted ones included.
    async fn existing(
        &mut self,
        table: RosterTable,
        sourced_ids: &[String],
    ) -> StoreResult<Vec<ExistingRow>>;

    async fn staff_by_emails(&mut self, emails: &[String]) -> StoreResult<Vec<StaffByEmail>>;

    // Inserts or updates by id; an updated row is also undeleted.
    async fn upsert_schools(&mut self, rows: &[SchoolRow], at: DateTime<Utc>) -> StoreResult<()>;
    async fn upsert_students(&mut self, rows: &[StudentRow], at: DateTime<Utc>) -> StoreResult<()>;
    async fn upsert_guardians(
        &mut self,
        rows: &[GuardianRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    async fn upsert_staff(&mut self, rows: &[StaffRow], at: DateTime<Utc>) -> StoreResult<()>;
    async fn upsert_classes(&mut self, rows: &[ClassRow], at: DateTime<Utc>) -> StoreResult<()>;
    async fn upsert_enrollments(
        &mut self,
        rows: &[EnrollmentRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Assigns school administrators to schools (never removes an assignment).
    async fn add_staff_schools(&mut self, pairs: &[(Uuid, Uuid)]) -> StoreResult<()>;

    /// Links guardians to students, restoring soft-deleted links.
    async fn upsert_links(&mut self, links: &[GuardianLink], at: DateTime<Utc>) -> StoreResult<()>;

    /// Adds or reactivates roster contact points. An address deactivated for a reason
    /// other than leaving the roster (a bounce, an unregistered device) stays inactive.
    async fn upsert_contacts(
        &mut self,
        contacts: &[RosterContact],
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Soft-deletes rows by id (status `tobedeleted`); returns how many were live.
    async fn soft_delete(
        &mut self,
        table: RosterTable,
        ids: &[Uuid],
        at: DateTime<Utc>,
    ) -> StoreResult<u64>;

    /// Soft-deletes the imported rows of `table` the bundle did not contain.
    async fn delete_unseen(&mut self, table: RosterTable, at: DateTime<Utc>) -> StoreResult<u64>;

    /// Soft-deletes links of guardians in the bundle that the bundle no longer makes.
    async fn delete_unseen_links(&mut self, at: DateTime<Utc>) -> StoreResult<u64>;

    /// Deactivates roster contact points of guardians in the bundle that it no longer lists.
    async fn deactivate_unseen_contacts(&mut self, at: DateTime<Utc>) -> StoreResult<u64>;

    /// Live (not deleted, not disabled) rows of `table` in the district, as this
    /// transaction sees them.
    async fn live_count(&mut self, table: RosterTable) -> StoreResult<u64>;

    /// Records the import in the import history as succeeded, with its report and audit
    /// row, in its transaction: committed with what it imported or not at all.
    async fn record_success(
        &mut self,
        import: &super::NewImport,
        started_at: DateTime<Utc>,
        report: &serde_json::Value,
        audit: &AuditRow<'_>,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    async fn commit(self: Box<Self>) -> StoreResult<()>;

    /// Undoes everything the import wrote (a dry run, or an import held back).
    async fn rollback(self: Box<Self>) -> StoreResult<()>;
}

/// An audit row an import writes with itself.
#[derive(Debug, Clone)]
pub struct AuditRow<'a> {
    pub actor: &'a crate::delivery::Actor,
    pub action: &'a str,
    pub detail: serde_json::Value,
}

/// Keys under which links and contact points are marked seen.
pub fn link_key(link: &GuardianLink) -> String {
    format!(
        "{}|{}",
        link.guardian_id.hyphenated(),
        link.student_id.hyphenated()
    )
}

pub fn contact_key(contact: &RosterContact) -> String {
    format!(
        "{}|{}|{}",
        contact.guardian_id.hyphenated(),
        contact.kind,
        contact.address
    )
}

/// Rows per statement: at most 10 columns × 1,000 rows stays under SQLite's 32,766 and
/// PostgreSQL's 65,535 bound parameters.
const BATCH: usize = 1_000;

/// Guardians of this district that the bundle contains.
const SEEN_GUARDIANS: &str = "SELECT id FROM guardians WHERE district_id = $1 \
     AND sourced_id IN (SELECT key FROM roster_seen WHERE entity = 'guardians')";

/// How a database runs an import.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImportSettings {
    /// Statements run first in the import's transaction.
    pub setup: &'static [&'static str],
    /// Whether to refresh a table's statistics inside the transaction each time the
    /// import has looked up twice as many of its rows as at the last refresh.
    pub analyze: bool,
}

/// The [`RosterWriter`] of both stores: one transaction for the whole bundle.
pub(crate) struct RosterTx<D: Dialect> {
    tx: sqlx::Transaction<'static, D>,
    /// Held idle for the whole import where the store has one write connection (SQLite):
    /// the other writes wait their turn behind the import.
    _turn: Option<sqlx::pool::PoolConnection<D>>,
    district: Uuid,
    settings: ImportSettings,
    /// Per table: rows looked up so far, and at the last statistics refresh.
    looked_up: HashMap<&'static str, (usize, usize)>,
}

impl<D: Dialect> RosterTx<D> {
    /// The import of `district`, in `tx` (on SQLite, one holding the write lock from its
    /// start: the import reads before it writes), holding `turn` until it ends.
    pub async fn begin(
        mut tx: sqlx::Transaction<'static, D>,
        turn: Option<sqlx::pool::PoolConnection<D>>,
        district: Uuid,
        settings: ImportSettings,
    ) -> StoreResult<Self> {
        for statement in settings.setup {
            D::execute(&mut tx, statement, Args::new()).await?;
        }
        D::execute(
            &mut tx,
            "CREATE TEMP TABLE roster_seen (entity TEXT NOT NULL, key TEXT NOT NULL, \
             line BIGINT NOT NULL, PRIMARY KEY (entity, key))",
            Args::new(),
        )
        .await?;
        Ok(Self {
            tx,
            _turn: turn,
            district,
            settings,
            looked_up: HashMap::new(),
        })
    }

    /// One multi-row `INSERT` per batch of `rows`: `insert` is the statement up to
    /// `VALUES`, `row` binds one row, `conflict` follows the values.
    async fn insert_batches<T>(
        &mut self,
        rows: &[T],
        insert: &str,
        conflict: &str,
        row: impl Fn(Args, &T) -> Args,
    ) -> StoreResult<()> {
        for chunk in rows.chunks(BATCH) {
            let mut args = Args::new();
            let values: Vec<String> = chunk
                .iter()
                .map(|item| args.row(|r| row(r, item)))
                .collect();
            let sql = format!("{insert} VALUES {} {conflict}", values.join(", "));
            D::execute(&mut self.tx, &sql, args).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl<D: Dialect> RosterWriter for RosterTx<D> {
    async fn district_sourced_id(&mut self) -> StoreResult<Option<String>> {
        super::districts::sourced_id::<D>(&mut self.tx, crate::DistrictId::from_uuid(self.district))
            .await
    }

    async fn set_district_sourced_id(&mut self, sourced_id: &str) -> StoreResult<()> {
        super::districts::set_sourced_id::<D>(
            &mut self.tx,
            crate::DistrictId::from_uuid(self.district),
            sourced_id,
        )
        .await
    }

    async fn mark_seen(
        &mut self,
        entity: &str,
        keys: &[(String, u64)],
    ) -> StoreResult<Vec<(String, u64)>> {
        let mut duplicates = Vec::new();
        for chunk in keys.chunks(BATCH) {
            let mut args = Args::new();
            let values: Vec<String> = chunk
                .iter()
                .map(|(key, line)| args.row(|r| r.text(entity).text(key).int(*line as i64)))
                .collect();
            let sql = format!(
                "INSERT INTO roster_seen (entity, key, line) VALUES {} \
                 ON CONFLICT (entity, key) DO NOTHING RETURNING key",
                values.join(", ")
            );
            let inserted: HashSet<String> = D::fetch_all(&mut self.tx, &sql, args)
                .await?
                .iter()
                .map(|row| row.text("key"))
                .collect::<StoreResult<_>>()?;
            let repeated: Vec<&str> = chunk
                .iter()
                .map(|(key, _)| key.as_str())
                .filter(|key| !inserted.contains(*key))
                .collect();
            if repeated.is_empty() {
                continue;
            }
            let mut args = Args::new().text(entity);
            let listed = args.texts(repeated);
            let sql = format!(
                "SELECT key, line FROM roster_seen WHERE entity = $1 AND key IN ({listed})"
            );
            for row in D::fetch_all(&mut self.tx, &sql, args).await? {
                duplicates.push((row.text("key")?, row.i64("line")? as u64));
            }
        }
        Ok(duplicates)
    }

    async fn existing(
        &mut self,
        table: RosterTable,
        sourced_ids: &[String],
    ) -> StoreResult<Vec<ExistingRow>> {
        // The import fills the table it looks up in: statistics from before it make the
        // planner scan the whole table for every batch of keys (the import then grows with
        // the square of the roster). Refreshed at 10,000 rows looked up and at every
        // doubling after, they let it use the index.
        let (seen, refreshed) = self.looked_up.entry(table.table()).or_insert((0, 0));
        *seen += sourced_ids.len();
        if self.settings.analyze && *seen >= 10_000 && *seen >= 2 * *refreshed {
            *refreshed = *seen;
            let analyze = format!("ANALYZE {}", table.table());
            D::execute(&mut self.tx, &analyze, Args::new()).await?;
        }
        let mut found = Vec::with_capacity(sourced_ids.len());
        for chunk in sourced_ids.chunks(BATCH) {
            let mut args = Args::new().id(self.district);
            let listed = args.texts(chunk);
            let sql = format!(
                "SELECT sourced_id, id, roster_hash, {} IS NOT NULL AS deleted FROM {} \
                 WHERE district_id = $1 AND sourced_id IN ({listed})",
                table.deleted_column(),
                table.table()
            );
            for row in D::fetch_all(&mut self.tx, &sql, args).await? {
                found.push(ExistingRow {
                    sourced_id: row.text("sourced_id")?,
                    id: row.id("id")?,
                    roster_hash: row.opt_text("roster_hash")?,
                    deleted: row.flag("deleted")?,
                });
            }
        }
        Ok(found)
    }

    async fn staff_by_emails(&mut self, emails: &[String]) -> StoreResult<Vec<StaffByEmail>> {
        let mut found = Vec::new();
        for chunk in emails.chunks(BATCH) {
            let mut args = Args::new();
            let listed = args.texts(chunk);
            let sql = format!(
                "SELECT email, id, district_id, sourced_id, role FROM staff WHERE email IN ({listed})"
            );
            for row in D::fetch_all(&mut self.tx, &sql, args).await? {
                found.push(StaffByEmail {
                    email: row.text("email")?,
                    id: row.id("id")?,
                    district_id: row.id("district_id")?,
                    sourced_id: row.opt_text("sourced_id")?,
                    role: row.parsed("role")?,
                });
            }
        }
        Ok(found)
    }

    async fn upsert_schools(&mut self, rows: &[SchoolRow], at: DateTime<Utc>) -> StoreResult<()> {
        let district = self.district;
        self.insert_batches(
            rows,
            "INSERT INTO schools (id, district_id, sourced_id, name, roster_hash, created_at, updated_at)",
            "ON CONFLICT (id) DO UPDATE SET name = excluded.name, roster_hash = excluded.roster_hash, \
             updated_at = excluded.updated_at, deleted_at = NULL",
            |r, s| {
                r.id(s.id)
                    .id(district)
                    .text(&s.sourced_id)
                    .text(&s.name)
                    .text(&s.hash)
                    .time(at)
                    .time(at)
            },
        )
        .await
    }

    async fn upsert_students(&mut self, rows: &[StudentRow], at: DateTime<Utc>) -> StoreResult<()> {
        let district = self.district;
        self.insert_batches(
            rows,
            "INSERT INTO students (id, district_id, sourced_id, school_id, given_name, family_name, grade, \
             roster_hash, created_at, updated_at)",
            "ON CONFLICT (id) DO UPDATE SET school_id = excluded.school_id, given_name = excluded.given_name, \
             family_name = excluded.family_name, grade = excluded.grade, roster_hash = excluded.roster_hash, \
             updated_at = excluded.updated_at, deleted_at = NULL",
            |r, s| {
                r.id(s.id)
                    .id(district)
                    .text(&s.sourced_id)
                    .id(s.school_id)
                    .text(&s.given_name)
                    .text(&s.family_name)
                    .opt_text(s.grade.as_deref())
                    .text(&s.hash)
                    .time(at)
                    .time(at)
            },
        )
        .await
    }

    async fn upsert_guardians(
        &mut self,
        rows: &[GuardianRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let district = self.district;
        self.insert_batches(
            rows,
            "INSERT INTO guardians (id, district_id, sourced_id, given_name, family_name, roster_hash, \
             created_at, updated_at)",
            "ON CONFLICT (id) DO UPDATE SET given_name = excluded.given_name, \
             family_name = excluded.family_name, roster_hash = excluded.roster_hash, \
             updated_at = excluded.updated_at, deleted_at = NULL",
            |r, g| {
                r.id(g.id)
                    .id(district)
                    .text(&g.sourced_id)
                    .text(&g.given_name)
                    .text(&g.family_name)
                    .text(&g.hash)
                    .time(at)
                    .time(at)
            },
        )
        .await
    }

    async fn upsert_staff(&mut self, rows: &[StaffRow], at: DateTime<Utc>) -> StoreResult<()> {
        let district = self.district;
        self.insert_batches(
            rows,
            "INSERT INTO staff (id, district_id, sourced_id, email, display_name, role, roster_hash, \
             created_at, updated_at)",
            // An import never demotes a district administrator.
            "ON CONFLICT (id) DO UPDATE SET sourced_id = excluded.sourced_id, email = excluded.email, \
             display_name = excluded.display_name, \
             role = CASE WHEN staff.role = 'district_admin' THEN staff.role ELSE excluded.role END, \
             roster_hash = excluded.roster_hash, updated_at = excluded.updated_at, disabled_at = NULL",
            |r, s| {
                r.id(s.id)
                    .id(district)
                    .text(&s.sourced_id)
                    .text(&s.email)
                    .text(&s.display_name)
                    .text(s.role.as_str())
                    .text(&s.hash)
                    .time(at)
                    .time(at)
            },
        )
        .await
    }

    async fn upsert_classes(&mut self, rows: &[ClassRow], at: DateTime<Utc>) -> StoreResult<()> {
        let district = self.district;
        self.insert_batches(
            rows,
            "INSERT INTO classes (id, district_id, sourced_id, school_id, title, roster_hash, created_at, updated_at)",
            "ON CONFLICT (id) DO UPDATE SET school_id = excluded.school_id, title = excluded.title, \
             roster_hash = excluded.roster_hash, updated_at = excluded.updated_at, deleted_at = NULL",
            |r, c| {
                r.id(c.id)
                    .id(district)
                    .text(&c.sourced_id)
                    .id(c.school_id)
                    .text(&c.title)
                    .text(&c.hash)
                    .time(at)
                    .time(at)
            },
        )
        .await
    }

    async fn upsert_enrollments(
        &mut self,
        rows: &[EnrollmentRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let district = self.district;
        self.insert_batches(
            rows,
            "INSERT INTO enrollments (id, district_id, sourced_id, class_id, role, student_id, staff_id, \
             roster_hash, created_at, updated_at)",
            "ON CONFLICT (id) DO UPDATE SET class_id = excluded.class_id, role = excluded.role, \
             student_id = excluded.student_id, staff_id = excluded.staff_id, \
             roster_hash = excluded.roster_hash, updated_at = excluded.updated_at, deleted_at = NULL",
            |r, e| {
                let role = if e.student_id.is_some() { "student" } else { "teacher" };
                r.id(e.id)
                    .id(district)
                    .text(&e.sourced_id)
                    .id(e.class_id)
                    .text(role)
                    .opt_id(e.student_id)
                    .opt_id(e.staff_id)
                    .text(&e.hash)
                    .time(at)
                    .time(at)
            },
        )
        .await
    }

    async fn add_staff_schools(&mut self, pairs: &[(Uuid, Uuid)]) -> StoreResult<()> {
        let district = self.district;
        self.insert_batches(
            pairs,
            "INSERT INTO staff_schools (district_id, staff_id, school_id)",
            "ON CONFLICT (staff_id, school_id) DO NOTHING",
            |r, (staff, school)| r.id(district).id(*staff).id(*school),
        )
        .await
    }

    async fn upsert_links(&mut self, links: &[GuardianLink], at: DateTime<Utc>) -> StoreResult<()> {
        let district = self.district;
        self.insert_batches(
            links,
            "INSERT INTO guardian_students (district_id, guardian_id, student_id, created_at)",
            "ON CONFLICT (guardian_id, student_id) DO UPDATE SET deleted_at = NULL \
             WHERE guardian_students.deleted_at IS NOT NULL",
            |r, l| r.id(district).id(l.guardian_id).id(l.student_id).time(at),
        )
        .await
    }

    async fn upsert_contacts(
        &mut self,
        contacts: &[RosterContact],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let district = self.district;
        self.insert_batches(
            contacts,
            "INSERT INTO contact_points (id, district_id, guardian_id, kind, address, source, created_at, updated_at)",
            "ON CONFLICT (guardian_id, kind, address) DO UPDATE SET active = true, \
             inactive_reason = NULL, updated_at = excluded.updated_at \
             WHERE contact_points.active = false AND contact_points.inactive_reason = 'removed from roster'",
            |r, c| {
                r.id(Uuid::now_v7())
                    .id(district)
                    .id(c.guardian_id)
                    .text(c.kind.as_str())
                    .text(&c.address)
                    .text("roster")
                    .time(at)
                    .time(at)
            },
        )
        .await
    }

    async fn soft_delete(
        &mut self,
        table: RosterTable,
        ids: &[Uuid],
        at: DateTime<Utc>,
    ) -> StoreResult<u64> {
        let column = table.deleted_column();
        let mut deleted = 0;
        for chunk in ids.chunks(BATCH) {
            let mut args = Args::new().time(at).id(self.district);
            let listed = args.ids(chunk);
            let sql = format!(
                "UPDATE {} SET {column} = $1, updated_at = $1 \
                 WHERE district_id = $2 AND {column} IS NULL AND id IN ({listed})",
                table.table()
            );
            deleted += D::execute(&mut self.tx, &sql, args).await?;
        }
        Ok(deleted)
    }

    async fn delete_unseen(&mut self, table: RosterTable, at: DateTime<Utc>) -> StoreResult<u64> {
        let column = table.deleted_column();
        // A district administrator is never disabled by an import.
        let keep = if table == RosterTable::Staff {
            " AND role <> 'district_admin'"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE {t} SET {column} = $1, updated_at = $1 WHERE district_id = $2 AND {column} IS NULL \
             AND sourced_id IS NOT NULL{keep} \
             AND sourced_id NOT IN (SELECT key FROM roster_seen WHERE entity = '{t}')",
            t = table.table()
        );
        D::execute(&mut self.tx, &sql, Args::new().time(at).id(self.district)).await
    }

    async fn delete_unseen_links(&mut self, at: DateTime<Utc>) -> StoreResult<u64> {
        let sql = format!(
            "UPDATE guardian_students SET deleted_at = $2 WHERE district_id = $1 AND deleted_at IS NULL \
             AND guardian_id IN ({SEEN_GUARDIANS}) \
             AND (guardian_id{t} || '|' || student_id{t}) NOT IN \
                 (SELECT key FROM roster_seen WHERE entity = 'links')",
            t = D::AS_TEXT
        );
        D::execute(&mut self.tx, &sql, Args::new().id(self.district).time(at)).await
    }

    async fn deactivate_unseen_contacts(&mut self, at: DateTime<Utc>) -> StoreResult<u64> {
        let sql = format!(
            "UPDATE contact_points SET active = false, inactive_reason = 'removed from roster', updated_at = $2 \
             WHERE district_id = $1 AND source = 'roster' AND active \
             AND guardian_id IN ({SEEN_GUARDIANS}) \
             AND (guardian_id{t} || '|' || kind || '|' || address) NOT IN \
                 (SELECT key FROM roster_seen WHERE entity = 'contacts')",
            t = D::AS_TEXT
        );
        D::execute(&mut self.tx, &sql, Args::new().id(self.district).time(at)).await
    }

    async fn live_count(&mut self, table: RosterTable) -> StoreResult<u64> {
        let sql = format!(
            "SELECT count(*) AS n FROM {} WHERE district_id = $1 AND {} IS NULL",
            table.table(),
            table.deleted_column()
        );
        let n = D::fetch_one(&mut self.tx, &sql, Args::new().id(self.district))
            .await?
            .i64("n")?;
        Ok(n as u64)
    }

    async fn rollback(self: Box<Self>) -> StoreResult<()> {
        // The temporary table goes with the transaction.
        self.tx.rollback().await?;
        Ok(())
    }

    async fn record_success(
        &mut self,
        import: &super::NewImport,
        started_at: DateTime<Utc>,
        report: &serde_json::Value,
        audit: &AuditRow<'_>,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        insert_import::<D>(&mut self.tx, import, started_at, Ok(report), at).await?;
        super::writes::insert_audit::<D>(
            &mut self.tx,
            crate::DistrictId::from_uuid(self.district),
            audit.actor,
            audit.action,
            audit.detail.clone(),
            at,
        )
        .await
    }

    async fn commit(mut self: Box<Self>) -> StoreResult<()> {
        D::execute(&mut self.tx, "DROP TABLE roster_seen", Args::new()).await?;
        self.tx.commit().await?;
        Ok(())
    }
}

/// An import's entry in the import history, as it ended: `succeeded` with its report, or
/// `failed` with the error that stopped it.
pub(crate) async fn insert_import<D: Dialect>(
    conn: &mut D::Connection,
    import: &super::NewImport,
    started_at: DateTime<Utc>,
    outcome: Result<&serde_json::Value, &str>,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    let (status, report, error) = match outcome {
        Ok(report) => ("succeeded", Some(report.clone()), None),
        Err(error) => ("failed", None, Some(error)),
    };
    D::execute(
        conn,
        "INSERT INTO imports (id, district_id, staff_id, format, source_name, status, started_at, \
         finished_at, report, error) VALUES ($1, $2, $3, 'oneroster', $4, $5, $6, $7, $8, $9)",
        Args::new()
            .id(import.id)
            .id(import.district_id)
            .opt_id(import.staff_id)
            .text(&import.source_name)
            .text(status)
            .time(started_at)
            .time(at)
            .opt_json(report)
            .opt_text(error),
    )
    .await?;
    Ok(())
}
