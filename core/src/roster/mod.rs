//! Roster import: a OneRoster 1.1 CSV bundle becomes the district's directory — schools,
//! students, guardians (linked to their students), staff, classes, enrollments and the
//! guardians' contact points.
//!
//! - **Idempotent.** Rows are upserted by sourcedId; each keeps a hash of its imported
//!   fields, so importing the same bundle twice writes nothing the second time.
//! - **All or nothing.** A bundle is imported in one transaction; an import that fails
//!   half-way leaves the previous directory as it was.
//! - **Nothing silent.** A row that cannot be imported is reported with its file, line,
//!   sourcedId and reason, and the rest of the bundle goes on. A value that cannot be used
//!   (an invalid phone number) is reported as a warning and not stored as deliverable.
//! - **Bounded memory.** Files are streamed in batches; what the bundle contained is kept
//!   in the database transaction, not in memory.
//! - **Careful deletes.** In a `bulk` file, rows that disappeared are soft-deleted (history
//!   is kept), but only when the file was read completely; a file with a broken header
//!   deletes nothing. District administrators are never disabled by an import.

mod bundle;
pub mod oneroster;
mod report;
pub mod synthetic;

use std::collections::{HashMap, HashSet};
use std::io::Read;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use bundle::{Bundle, ZipLimits};
pub use report::{Deletions, EntityCounts, ImportReport, OverLimit, RowProblem};

use crate::store::roster::{
    contact_key, link_key, ClassRow, EnrollmentRow, ExistingRow, GuardianLink, GuardianRow,
    RosterContact, RosterTable, RosterWriter, SchoolRow, StaffRow, StudentRow,
};
use crate::store::StoreError;
use crate::{Channel, DistrictId, EmailAddress, PhoneNumber, Role};
use oneroster::{list, status, CsvFile, Mode, Record, Status};

/// Imports a bundle and keeps the run in the import history — its report, or the error
/// that rolled it back — and in the audit log. A held-back import is audited with what
/// it would have deleted; a forced one says so. A dry run changes nothing and is not in
/// the import history (there is nothing to look back at), but it is audited, with no id.
pub async fn import_recorded(
    store: &dyn crate::store::Store,
    district: DistrictId,
    staff: Option<crate::StaffId>,
    bundle: &Bundle,
    source_name: &str,
    options: &ImportOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<(Option<crate::ImportId>, ImportReport), ImportError> {
    use crate::delivery::Actor;
    let actor = staff.map_or_else(|| Actor::system("cli"), Actor::staff);
    let audit = |action: &'static str, detail: serde_json::Value| {
        let actor = actor.clone();
        async move {
            store
                .audit(district, &actor, action, detail, crate::time::now())
                .await
        }
    };
    if options.dry_run {
        let report = import(store, district, bundle, options, progress).await?;
        let detail = serde_json::json!({
            "source": source_name,
            "entities": report.entities,
            "over_delete_limit": report.over_delete_limit,
        });
        audit("roster.import.dry_run", detail).await?;
        return Ok((None, report));
    }
    let id = crate::ImportId::new();
    let record = crate::store::NewImport {
        id,
        district_id: district,
        staff_id: staff,
        source_name: source_name.to_owned(),
    };
    store.start_import(&record, crate::time::now()).await?;
    match import(store, district, bundle, options, progress).await {
        Ok(report) => {
            let json = serde_json::to_value(&report)
                .map_err(|e| ImportError::Bundle(format!("report: {e}")))?;
            store
                .finish_import(id, Ok(&json), crate::time::now())
                .await?;
            let detail = serde_json::json!({
                "import_id": id,
                "source": source_name,
                "entities": json["entities"],
                "forced": options.force,
                "over_delete_limit": report.over_delete_limit,
            });
            audit("roster.import", detail).await?;
            Ok((Some(id), report))
        }
        Err(error) => {
            let message = crate::store::error_chain(&error);
            store
                .finish_import(id, Err(&message), crate::time::now())
                .await?;
            if let ImportError::HeldBack { over, report } = &error {
                let detail = serde_json::json!({
                    "import_id": id,
                    "source": source_name,
                    "over_delete_limit": over,
                    "entities": report.entities,
                });
                audit("roster.import.held_back", detail).await?;
            }
            Err(error)
        }
    }
}

/// Records per batch: one lookup and one upsert statement per batch and table.
const BATCH: usize = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The import would delete more of the directory than the limit allows, and was not
    /// forced: nothing was changed. The report says what it would have done.
    #[error("import held back, nothing was changed: {over}; if the export is right, import it again forced (CLI: --force, API: force=true)")]
    HeldBack {
        over: OverLimit,
        report: Box<ImportReport>,
    },
    #[error("{0}")]
    Bundle(String),
    #[error("manifest.csv: {0}")]
    Manifest(String),
    #[error(
        "this bundle is for district {bundle:?}, but the district was imported from {stored:?}"
    )]
    WrongDistrict { bundle: String, stored: String },
    #[error("roster import failed")]
    Store(#[from] StoreError),
}

/// The share of any kind of row (schools, students, guardians, staff, classes) an import
/// may delete without being forced, unless configured otherwise.
pub const DEFAULT_MAX_DELETE_PERCENT: u8 = 10;

/// The kinds of row whose deletion can hold an import back (enrollments and links follow
/// from them).
const GUARDED: [(&str, RosterTable); 5] = [
    ("schools", RosterTable::Schools),
    ("students", RosterTable::Students),
    ("guardians", RosterTable::Guardians),
    ("staff", RosterTable::Staff),
    ("classes", RosterTable::Classes),
];

#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Region for phone numbers written without a country code (ISO 3166, e.g. "US").
    pub default_region: String,
    /// Hold the import back (roll it back and fail with [`ImportError::HeldBack`]) when it
    /// would delete more than this percentage of the live rows of any kind that existed
    /// before it; kinds with no live rows before (a first import) never hold it back.
    /// `None`: no limit. The CLI and the API pass the configured limit (by default
    /// [`DEFAULT_MAX_DELETE_PERCENT`]); the library default sets none, for tests and
    /// benchmarks that replace whole synthetic rosters.
    pub max_delete_percent: Option<u8>,
    /// Go ahead whatever the import deletes (it is reported and audited as forced).
    pub force: bool,
    /// Do the whole import in its transaction, report it, and roll it back.
    pub dry_run: bool,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            default_region: "US".into(),
            max_delete_percent: None,
            force: false,
            dry_run: false,
        }
    }
}

/// Imports `bundle` into `district` in one transaction. `progress` is called with the
/// number of rows read so far.
pub async fn import(
    store: &dyn crate::store::Store,
    district: DistrictId,
    bundle: &Bundle,
    options: &ImportOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ImportReport, ImportError> {
    let manifest = match bundle.file("manifest.csv")? {
        Some(file) => oneroster::read_manifest(file).map_err(ImportError::Manifest)?,
        None => return Err(ImportError::Manifest("not found in the bundle".into())),
    };
    if let Some(version) = manifest.get("oneroster.version") {
        if !version.starts_with("1.") {
            return Err(ImportError::Manifest(format!(
                "oneroster.version {version} is not supported (1.1 is)"
            )));
        }
    }
    let mut modes = HashMap::new();
    for name in bundle::FILES.iter().filter(|f| **f != "manifest.csv") {
        let mode = oneroster::mode(&manifest, name).map_err(ImportError::Manifest)?;
        if mode != Mode::Absent && bundle.file(name)?.is_none() {
            return Err(ImportError::Manifest(format!(
                "lists {name} as {mode:?} but the bundle has no such file"
            )));
        }
        modes.insert(*name, mode);
    }

    let mut writer = store.begin_roster_import(district).await?;
    let mut before = HashMap::new();
    if options.max_delete_percent.is_some() {
        for (entity, table) in GUARDED {
            before.insert(entity, writer.live_count(table).await?);
        }
    }
    let mut run = Run {
        writer,
        district: *district.as_uuid(),
        options,
        report: ImportReport::default(),
        at: crate::time::now(),
        rows: 0,
        progress,
        complete: HashSet::new(),
        rejected_user_lines: HashSet::new(),
    };
    if modes["orgs.csv"] != Mode::Absent {
        run.orgs(bundle).await?;
    }
    if modes["users.csv"] != Mode::Absent {
        run.users(bundle).await?;
        run.links(bundle).await?;
    }
    if modes["classes.csv"] != Mode::Absent {
        run.classes(bundle).await?;
    }
    if modes["enrollments.csv"] != Mode::Absent {
        run.enrollments(bundle).await?;
    }
    for name in ["academicSessions.csv", "courses.csv"] {
        if modes[name] != Mode::Absent {
            run.count_only(bundle, name).await?;
        }
    }
    if modes["demographics.csv"] != Mode::Absent {
        run.demographics(bundle).await?;
    }
    run.delete_missing(&modes).await?;
    let Run {
        writer, mut report, ..
    } = run;
    report.dry_run = options.dry_run;
    report.forced = options.force;
    report.over_delete_limit = options
        .max_delete_percent
        .and_then(|max| over_limit(&report, &before, max));
    match (&report.over_delete_limit, options.force, options.dry_run) {
        (_, _, true) => writer.rollback().await?,
        (Some(over), false, false) => {
            writer.rollback().await?;
            return Err(ImportError::HeldBack {
                over: over.clone(),
                report: Box::new(report),
            });
        }
        _ => writer.commit().await?,
    }
    Ok(report)
}

/// The kinds of row `report` deletes more of than `max_percent` of what was live before.
fn over_limit(
    report: &ImportReport,
    before: &HashMap<&'static str, u64>,
    max_percent: u8,
) -> Option<OverLimit> {
    let entities: Vec<Deletions> = GUARDED
        .iter()
        .filter_map(|(entity, _)| {
            let before = before.get(entity).copied().unwrap_or(0);
            let deleted = report.entities.get(entity).map_or(0, |c| c.deleted);
            (before > 0 && deleted * 100 > u64::from(max_percent) * before).then_some(Deletions {
                entity,
                before,
                deleted,
            })
        })
        .collect();
    (!entities.is_empty()).then_some(OverLimit {
        max_delete_percent: max_percent,
        entities,
    })
}

/// The state of one import.
struct Run<'a> {
    writer: Box<dyn RosterWriter>,
    district: Uuid,
    options: &'a ImportOptions,
    report: ImportReport,
    at: DateTime<Utc>,
    rows: u64,
    progress: &'a (dyn Fn(u64) + Send + Sync),
    /// Files read to the end with a valid header: only these may delete missing rows.
    complete: HashSet<&'static str>,
    /// users.csv lines rejected in the first pass, skipped by the second.
    rejected_user_lines: HashSet<u64>,
}

/// What to do with one parsed row, decided against what the directory already has.
enum Plan {
    Create(Uuid),
    Update(Uuid),
    Unchanged,
    Delete(Uuid),
    /// `tobedeleted`, and already deleted.
    AlreadyGone,
    /// `tobedeleted`, and never in the directory.
    Absent,
}

fn plan(existing: Option<&ExistingRow>, status: Status, hash: &str) -> Plan {
    match (existing, status) {
        (Some(row), Status::ToBeDeleted) if !row.deleted => Plan::Delete(row.id),
        (Some(_), Status::ToBeDeleted) => Plan::AlreadyGone,
        (None, Status::ToBeDeleted) => Plan::Absent,
        (Some(row), Status::Active) if !row.deleted && row.roster_hash.as_deref() == Some(hash) => {
            Plan::Unchanged
        }
        (Some(row), Status::Active) => Plan::Update(row.id),
        (None, Status::Active) => Plan::Create(Uuid::now_v7()),
    }
}

/// A short, stable fingerprint of the imported fields of a row.
fn fingerprint(fields: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for field in fields {
        hasher.update(field.as_bytes());
        hasher.update([0x1f]);
    }
    hasher.finalize()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn problem(
    file: &'static str,
    line: u64,
    sourced_id: &str,
    reason: impl Into<String>,
) -> RowProblem {
    RowProblem {
        file,
        line,
        sourced_id: (!sourced_id.is_empty()).then(|| sourced_id.to_owned()),
        reason: reason.into(),
    }
}

impl Run<'_> {
    fn advance(&mut self, file: &'static str, rows: usize) {
        *self.report.rows_read.entry(file).or_default() += rows as u64;
        self.rows += rows as u64;
        (self.progress)(self.rows);
    }

    /// Opens a file and checks its header; a bad header is one rejection for the file.
    fn open(
        &mut self,
        bundle: &Bundle,
        name: &'static str,
        entity: &'static str,
        required: &[&str],
    ) -> Result<Option<CsvFile<impl Read>>, ImportError> {
        let Some(input) = bundle.file(name)? else {
            return Ok(None);
        };
        match CsvFile::open(name, input, required) {
            Ok(file) => Ok(Some(file)),
            Err(reason) => {
                self.report.reject(
                    entity,
                    problem(
                        name,
                        1,
                        "",
                        format!("{reason}; no row of this file was imported"),
                    ),
                );
                Ok(None)
            }
        }
    }

    /// Splits a batch into records with a non-empty sourcedId seen for the first time,
    /// reporting the rest. Duplicates are found through the database, so memory stays
    /// bounded whatever the file size.
    async fn first_sightings<R: Read>(
        &mut self,
        file: &CsvFile<R>,
        entity: &'static str,
        seen_as: &str,
        batch: Vec<Result<Record, (u64, String)>>,
    ) -> Result<Vec<Record>, ImportError> {
        let mut records = Vec::with_capacity(batch.len());
        let mut in_batch: HashMap<String, u64> = HashMap::new();
        for item in batch {
            match item {
                Err((line, reason)) => self
                    .report
                    .reject(entity, problem(file.name, line, "", reason)),
                Ok(record) => {
                    let sid = file.get(&record, "sourcedId").to_owned();
                    if sid.is_empty() {
                        self.report.reject(
                            entity,
                            problem(file.name, record.line, "", "missing sourcedId"),
                        );
                    } else if let Some(first) = in_batch.get(&sid) {
                        let reason = format!("duplicate sourcedId (first on line {first})");
                        self.report
                            .reject(entity, problem(file.name, record.line, &sid, reason));
                    } else {
                        in_batch.insert(sid, record.line);
                        records.push(record);
                    }
                }
            }
        }
        let keys: Vec<(String, u64)> = records
            .iter()
            .map(|r| (file.get(r, "sourcedId").to_owned(), r.line))
            .collect();
        let repeated: HashMap<String, u64> = self
            .writer
            .mark_seen(seen_as, &keys)
            .await?
            .into_iter()
            .collect();
        Ok(records
            .into_iter()
            .filter(|record| {
                let sid = file.get(record, "sourcedId");
                match repeated.get(sid) {
                    Some(first) => {
                        let reason = format!("duplicate sourcedId (first on line {first})");
                        self.report
                            .reject(entity, problem(file.name, record.line, sid, reason));
                        false
                    }
                    None => true,
                }
            })
            .collect())
    }

    async fn lookup(
        &mut self,
        table: RosterTable,
        sids: impl IntoIterator<Item = String>,
    ) -> Result<HashMap<String, ExistingRow>, ImportError> {
        let sids: Vec<String> = sids
            .into_iter()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        Ok(self
            .writer
            .existing(table, &sids)
            .await?
            .into_iter()
            .map(|row| (row.sourced_id.clone(), row))
            .collect())
    }

    /// Counts a planned row and returns the id to upsert under, if any.
    fn tally(
        &mut self,
        entity: &'static str,
        plan: &Plan,
        deletions: &mut Vec<Uuid>,
    ) -> Option<Uuid> {
        let counts = self.report.counts(entity);
        match *plan {
            Plan::Create(id) => {
                counts.created += 1;
                Some(id)
            }
            Plan::Update(id) => {
                counts.updated += 1;
                Some(id)
            }
            Plan::Unchanged | Plan::AlreadyGone => {
                counts.unchanged += 1;
                None
            }
            Plan::Absent => {
                counts.skipped += 1;
                None
            }
            Plan::Delete(id) => {
                counts.deleted += 1;
                deletions.push(id);
                None
            }
        }
    }

    async fn orgs(&mut self, bundle: &Bundle) -> Result<(), ImportError> {
        const F: &str = "orgs.csv";
        let Some(mut file) = self.open(bundle, F, "schools", &["sourcedId", "name", "type"])?
        else {
            return Ok(());
        };
        loop {
            let batch = file.next_batch(BATCH);
            if batch.is_empty() {
                break;
            }
            let read = batch.len();
            let records = self
                .first_sightings(&file, "schools", "schools", batch)
                .await?;
            let mut schools = Vec::new();
            for record in records {
                let sid = file.get(&record, "sourcedId").to_owned();
                let kind = file.get(&record, "type").to_ascii_lowercase();
                let parsed = status(file.get(&record, "status"));
                let name = file.get(&record, "name").to_owned();
                match (kind.as_str(), parsed) {
                    (_, Err(reason)) => self
                        .report
                        .reject("schools", problem(F, record.line, &sid, reason)),
                    ("district", Ok(_)) => {
                        match self.writer.district_sourced_id().await? {
                            None => self.writer.set_district_sourced_id(&sid).await?,
                            Some(stored) if stored == sid => {}
                            Some(stored) => {
                                return Err(ImportError::WrongDistrict {
                                    bundle: sid,
                                    stored,
                                })
                            }
                        }
                        self.report.counts("districts").unchanged += 1;
                    }
                    ("school", Ok(_)) if name.is_empty() => self
                        .report
                        .reject("schools", problem(F, record.line, &sid, "missing name")),
                    ("school", Ok(st)) => schools.push((record.line, sid, name, st)),
                    ("department" | "local" | "state" | "national", Ok(_)) => {
                        self.report.counts("schools").ignored += 1
                    }
                    (other, Ok(_)) => {
                        let reason = format!("invalid type {other:?} (expected district, school, department, local, state or national)");
                        self.report
                            .reject("schools", problem(F, record.line, &sid, reason));
                    }
                }
            }
            let existing = self
                .lookup(RosterTable::Schools, schools.iter().map(|s| s.1.clone()))
                .await?;
            let mut rows = Vec::new();
            let mut deletions = Vec::new();
            for (_, sid, name, st) in schools {
                let hash = fingerprint(&[&name]);
                let plan = plan(existing.get(&sid), st, &hash);
                if let Some(id) = self.tally("schools", &plan, &mut deletions) {
                    rows.push(SchoolRow {
                        id,
                        sourced_id: sid,
                        name,
                        hash,
                    });
                }
            }
            self.writer.upsert_schools(&rows, self.at).await?;
            self.writer
                .soft_delete(RosterTable::Schools, &deletions, self.at)
                .await?;
            self.advance(F, read);
        }
        if file.read_whole() {
            self.complete.insert(F);
        }
        Ok(())
    }

    async fn users(&mut self, bundle: &Bundle) -> Result<(), ImportError> {
        const F: &str = "users.csv";
        let required = [
            "sourcedId",
            "role",
            "givenName",
            "familyName",
            "orgSourcedIds",
        ];
        let Some(mut file) = self.open(bundle, F, "users", &required)? else {
            return Ok(());
        };
        loop {
            let batch = file.next_batch(BATCH);
            if batch.is_empty() {
                break;
            }
            let read = batch.len();
            let before: Vec<u64> = batch
                .iter()
                .map(|r| match r {
                    Ok(rec) => rec.line,
                    Err((l, _)) => *l,
                })
                .collect();
            let records = self.first_sightings(&file, "users", "users", batch).await?;
            let kept: HashSet<u64> = records.iter().map(|r| r.line).collect();
            self.rejected_user_lines
                .extend(before.into_iter().filter(|l| !kept.contains(l)));
            self.users_batch(&file, records).await?;
            self.advance(F, read);
        }
        if file.read_whole() {
            self.complete.insert(F);
        }
        Ok(())
    }

    async fn users_batch<R: Read>(
        &mut self,
        file: &CsvFile<R>,
        records: Vec<Record>,
    ) -> Result<(), ImportError> {
        const F: &str = "users.csv";
        struct User {
            line: u64,
            sid: String,
            status: Status,
            given: String,
            family: String,
            orgs: Vec<String>,
            email: String,
            sms: String,
            phone: String,
            grade: Option<String>,
        }
        let (mut students, mut guardians, mut staff) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen: HashMap<&'static str, Vec<(String, u64)>> = HashMap::new();
        for record in records {
            let sid = file.get(&record, "sourcedId").to_owned();
            let role = file.get(&record, "role").to_ascii_lowercase();
            let entity = match role.as_str() {
                "student" => "students",
                "parent" | "guardian" | "relative" => "guardians",
                "teacher" | "administrator" => "staff",
                "aide" | "proctor" => {
                    self.report.counts("staff").ignored += 1;
                    continue;
                }
                _ => {
                    let reason = format!("invalid role {role:?}");
                    self.report
                        .reject("users", problem(F, record.line, &sid, reason));
                    self.rejected_user_lines.insert(record.line);
                    continue;
                }
            };
            // Marked seen even when rejected below: a bad row leaves the person as they
            // were, it does not delete them.
            seen.entry(entity)
                .or_default()
                .push((sid.clone(), record.line));
            let st = match status(file.get(&record, "status")) {
                Ok(st) => st,
                Err(reason) => {
                    self.report
                        .reject(entity, problem(F, record.line, &sid, reason));
                    self.rejected_user_lines.insert(record.line);
                    continue;
                }
            };
            let user = User {
                line: record.line,
                given: file.get(&record, "givenName").to_owned(),
                family: file.get(&record, "familyName").to_owned(),
                orgs: list(file.get(&record, "orgSourcedIds")),
                email: file.get(&record, "email").to_owned(),
                sms: file.get(&record, "sms").to_owned(),
                phone: file.get(&record, "phone").to_owned(),
                grade: list(file.get(&record, "grades")).into_iter().next(),
                sid,
                status: st,
            };
            if st == Status::Active && (user.given.is_empty() || user.family.is_empty()) {
                self.report.reject(
                    entity,
                    problem(F, user.line, &user.sid, "missing givenName or familyName"),
                );
                self.rejected_user_lines.insert(user.line);
                continue;
            }
            match entity {
                "students" => students.push((user, false)),
                "guardians" => guardians.push(user),
                _ => staff.push((user, role == "administrator")),
            }
        }

        // What the bundle contains, per role, for deleting what it no longer does.
        for (entity, keys) in seen {
            self.writer.mark_seen(entity, &keys).await?;
        }

        // Students: their school is the first of their orgs that is a school.
        let schools = self
            .lookup(
                RosterTable::Schools,
                students
                    .iter()
                    .chain(staff.iter())
                    .flat_map(|(u, _)| u.orgs.clone()),
            )
            .await?;
        let existing = self
            .lookup(
                RosterTable::Students,
                students.iter().map(|(u, _)| u.sid.clone()),
            )
            .await?;
        let (mut rows, mut deletions) = (Vec::new(), Vec::new());
        for (user, _) in students {
            let school = user
                .orgs
                .iter()
                .find_map(|o| schools.get(o).filter(|s| !s.deleted));
            let school = match (school, user.status) {
                (Some(school), _) => school.id,
                (None, Status::ToBeDeleted) => Uuid::nil(),
                (None, Status::Active) => {
                    let reason = format!("unknown reference: none of orgSourcedIds {:?} is a school of this district", user.orgs.join(","));
                    self.report
                        .reject("students", problem(F, user.line, &user.sid, reason));
                    self.rejected_user_lines.insert(user.line);
                    continue;
                }
            };
            let grade = user.grade.clone().unwrap_or_default();
            let hash = fingerprint(&[&school.to_string(), &user.given, &user.family, &grade]);
            let plan = plan(existing.get(&user.sid), user.status, &hash);
            if let Some(id) = self.tally("students", &plan, &mut deletions) {
                rows.push(StudentRow {
                    id,
                    sourced_id: user.sid,
                    school_id: school,
                    given_name: user.given,
                    family_name: user.family,
                    grade: user.grade,
                    hash,
                });
            }
        }
        self.writer.upsert_students(&rows, self.at).await?;
        self.writer
            .soft_delete(RosterTable::Students, &deletions, self.at)
            .await?;

        // Guardians, and the contact points they are reached at.
        let existing = self
            .lookup(
                RosterTable::Guardians,
                guardians.iter().map(|u| u.sid.clone()),
            )
            .await?;
        let (mut rows, mut deletions, mut contacts) = (Vec::new(), Vec::new(), Vec::new());
        for user in guardians {
            let hash = fingerprint(&[&user.given, &user.family]);
            let plan = plan(existing.get(&user.sid), user.status, &hash);
            let upsert = self.tally("guardians", &plan, &mut deletions);
            let id = match (upsert, &plan) {
                (Some(id), _) => id,
                (None, Plan::Unchanged) => existing[&user.sid].id,
                (None, _) => continue,
            };
            contacts.extend(self.contacts_of(
                id,
                &user.sid,
                user.line,
                &user.email,
                &user.sms,
                &user.phone,
            ));
            if upsert.is_some() {
                rows.push(GuardianRow {
                    id,
                    sourced_id: user.sid,
                    given_name: user.given,
                    family_name: user.family,
                    hash,
                });
            }
        }
        self.writer.upsert_guardians(&rows, self.at).await?;
        self.writer
            .soft_delete(RosterTable::Guardians, &deletions, self.at)
            .await?;
        let keys: Vec<(String, u64)> = contacts.iter().map(|c| (contact_key(c), 0)).collect();
        self.writer.mark_seen("contacts", &keys).await?;
        self.writer.upsert_contacts(&contacts, self.at).await?;

        // Staff sign in by email: match by sourcedId, else adopt an account with that email
        // that no import owns yet.
        let existing = self
            .lookup(RosterTable::Staff, staff.iter().map(|(u, _)| u.sid.clone()))
            .await?;
        let emails: Vec<String> = staff
            .iter()
            .filter_map(|(u, _)| EmailAddress::parse(&u.email).ok())
            .map(|e| e.to_string())
            .collect();
        let by_email: HashMap<String, _> = self
            .writer
            .staff_by_emails(&emails)
            .await?
            .into_iter()
            .map(|s| (s.email.clone(), s))
            .collect();
        let district = self.district;
        let (mut rows, mut deletions, mut assignments) = (Vec::new(), Vec::new(), Vec::new());
        for (user, administrator) in staff {
            if user.status == Status::ToBeDeleted {
                let plan = plan(existing.get(&user.sid), Status::ToBeDeleted, "");
                self.tally("staff", &plan, &mut deletions);
                continue;
            }
            let Ok(email) = EmailAddress::parse(&user.email) else {
                let reason = format!(
                    "staff sign in by email, and {:?} is not a usable email address",
                    user.email
                );
                self.report
                    .reject("staff", problem(F, user.line, &user.sid, reason));
                continue;
            };
            let role = if administrator {
                Role::SchoolAdmin
            } else {
                Role::Teacher
            };
            let hash = fingerprint(&[email.as_str(), &user.given, &user.family, role.as_str()]);
            let mut existing_row = existing.get(&user.sid).cloned();
            if let Some(owner) = by_email.get(email.as_str()) {
                let same = existing_row.as_ref().is_some_and(|e| e.id == owner.id);
                let adoptable = owner.sourced_id.is_none() && owner.district_id == district;
                if !same && !adoptable {
                    let reason = format!("email {email} is already used by another staff member");
                    self.report
                        .reject("staff", problem(F, user.line, &user.sid, reason));
                    continue;
                }
                if existing_row.is_none() {
                    existing_row = Some(ExistingRow {
                        sourced_id: user.sid.clone(),
                        id: owner.id,
                        roster_hash: None,
                        deleted: false,
                    });
                }
            }
            let plan = plan(existing_row.as_ref(), Status::Active, &hash);
            let id = match plan {
                Plan::Create(id) | Plan::Update(id) => id,
                _ => existing_row.as_ref().map(|e| e.id).unwrap_or_default(),
            };
            if administrator {
                assignments.extend(
                    user.orgs
                        .iter()
                        .filter_map(|o| schools.get(o))
                        .filter(|s| !s.deleted)
                        .map(|s| (id, s.id)),
                );
            }
            if self.tally("staff", &plan, &mut deletions).is_some() {
                let display_name = format!("{} {}", user.given, user.family);
                rows.push(StaffRow {
                    id,
                    sourced_id: user.sid,
                    email: email.to_string(),
                    display_name,
                    role,
                    hash,
                });
            }
        }
        self.writer.upsert_staff(&rows, self.at).await?;
        self.writer
            .soft_delete(RosterTable::Staff, &deletions, self.at)
            .await?;
        self.writer.add_staff_schools(&assignments).await?;
        Ok(())
    }

    /// A guardian's contact points from their users.csv row. `sms` is preferred for text
    /// messages; `phone` is used when `sms` is blank (most systems put mobiles there).
    fn contacts_of(
        &mut self,
        guardian: Uuid,
        sid: &str,
        line: u64,
        email: &str,
        sms: &str,
        phone: &str,
    ) -> Vec<RosterContact> {
        const F: &str = "users.csv";
        let mut contacts = Vec::new();
        if !email.is_empty() {
            match EmailAddress::parse(email) {
                Ok(address) => contacts.push(RosterContact {
                    guardian_id: guardian,
                    kind: Channel::Email,
                    address: address.to_string(),
                }),
                Err(e) => self
                    .report
                    .warn(problem(F, line, sid, format!("email not stored: {e}"))),
            }
        }
        let (column, number) = if sms.is_empty() {
            ("phone", phone)
        } else {
            ("sms", sms)
        };
        if !number.is_empty() {
            match PhoneNumber::parse_in(number, &self.options.default_region) {
                Ok(number) => contacts.push(RosterContact {
                    guardian_id: guardian,
                    kind: Channel::Sms,
                    address: number.to_string(),
                }),
                Err(e) => {
                    self.report
                        .warn(problem(F, line, sid, format!("{column} not stored: {e}")))
                }
            }
        }
        contacts
    }

    /// Second pass over users.csv: `agentSourcedIds` link guardians and students, written
    /// on either side (a student lists their guardians, or a guardian their students).
    async fn links(&mut self, bundle: &Bundle) -> Result<(), ImportError> {
        const F: &str = "users.csv";
        let Some(mut file) = bundle
            .file(F)?
            .and_then(|input| CsvFile::open(F, input, &["sourcedId", "role"]).ok())
        else {
            return Ok(());
        };
        loop {
            let batch = file.next_batch(BATCH);
            if batch.is_empty() {
                break;
            }
            let mut pairs = Vec::new();
            for record in batch.into_iter().flatten() {
                if self.rejected_user_lines.contains(&record.line)
                    || status(file.get(&record, "status")) != Ok(Status::Active)
                {
                    continue;
                }
                let sid = file.get(&record, "sourcedId").to_owned();
                let agents = list(file.get(&record, "agentSourcedIds"));
                match file.get(&record, "role").to_ascii_lowercase().as_str() {
                    "student" => pairs.extend(
                        agents
                            .into_iter()
                            .map(|g| (record.line, sid.clone(), g, sid.clone())),
                    ),
                    "parent" | "guardian" | "relative" => pairs.extend(
                        agents
                            .into_iter()
                            .map(|s| (record.line, sid.clone(), sid.clone(), s)),
                    ),
                    _ => {}
                }
            }
            let guardians = self
                .lookup(RosterTable::Guardians, pairs.iter().map(|p| p.2.clone()))
                .await?;
            let students = self
                .lookup(RosterTable::Students, pairs.iter().map(|p| p.3.clone()))
                .await?;
            let mut links = Vec::new();
            for (line, row_sid, guardian, student) in pairs {
                let g = guardians.get(&guardian).filter(|g| !g.deleted);
                let s = students.get(&student).filter(|s| !s.deleted);
                match (g, s) {
                    (Some(g), Some(s)) => links.push(GuardianLink { guardian_id: g.id, student_id: s.id }),
                    (None, _) => self.report.warn(problem(F, line, &row_sid, format!("agentSourcedIds: {guardian:?} is not a guardian in this district; link not made"))),
                    (_, None) => self.report.warn(problem(F, line, &row_sid, format!("agentSourcedIds: {student:?} is not a student in this district; link not made"))),
                }
            }
            let unique: HashSet<GuardianLink> = links.into_iter().collect();
            let links: Vec<GuardianLink> = unique.into_iter().collect();
            let keys: Vec<(String, u64)> = links.iter().map(|l| (link_key(l), 0)).collect();
            self.writer.mark_seen("links", &keys).await?;
            self.writer.upsert_links(&links, self.at).await?;
        }
        Ok(())
    }

    async fn classes(&mut self, bundle: &Bundle) -> Result<(), ImportError> {
        const F: &str = "classes.csv";
        let Some(mut file) = self.open(
            bundle,
            F,
            "classes",
            &["sourcedId", "title", "schoolSourcedId"],
        )?
        else {
            return Ok(());
        };
        loop {
            let batch = file.next_batch(BATCH);
            if batch.is_empty() {
                break;
            }
            let read = batch.len();
            let records = self
                .first_sightings(&file, "classes", "classes", batch)
                .await?;
            let schools = self
                .lookup(
                    RosterTable::Schools,
                    records
                        .iter()
                        .map(|r| file.get(r, "schoolSourcedId").to_owned()),
                )
                .await?;
            let existing = self
                .lookup(
                    RosterTable::Classes,
                    records.iter().map(|r| file.get(r, "sourcedId").to_owned()),
                )
                .await?;
            let (mut rows, mut deletions) = (Vec::new(), Vec::new());
            for record in records {
                let sid = file.get(&record, "sourcedId").to_owned();
                let st = match status(file.get(&record, "status")) {
                    Ok(st) => st,
                    Err(reason) => {
                        self.report
                            .reject("classes", problem(F, record.line, &sid, reason));
                        continue;
                    }
                };
                let title = file.get(&record, "title").to_owned();
                let school_sid = file.get(&record, "schoolSourcedId");
                let school = schools.get(school_sid).filter(|s| !s.deleted);
                let school_id = match (school, st) {
                    (Some(school), _) => school.id,
                    (None, Status::ToBeDeleted) => Uuid::nil(),
                    (None, Status::Active) => {
                        let reason = format!("unknown reference: schoolSourcedId {school_sid:?} is not a school of this district");
                        self.report
                            .reject("classes", problem(F, record.line, &sid, reason));
                        continue;
                    }
                };
                if st == Status::Active && title.is_empty() {
                    self.report
                        .reject("classes", problem(F, record.line, &sid, "missing title"));
                    continue;
                }
                let hash = fingerprint(&[&title, &school_id.to_string()]);
                let plan = plan(existing.get(&sid), st, &hash);
                if let Some(id) = self.tally("classes", &plan, &mut deletions) {
                    rows.push(ClassRow {
                        id,
                        sourced_id: sid,
                        school_id,
                        title,
                        hash,
                    });
                }
            }
            self.writer.upsert_classes(&rows, self.at).await?;
            self.writer
                .soft_delete(RosterTable::Classes, &deletions, self.at)
                .await?;
            self.advance(F, read);
        }
        if file.read_whole() {
            self.complete.insert(F);
        }
        Ok(())
    }

    async fn enrollments(&mut self, bundle: &Bundle) -> Result<(), ImportError> {
        const F: &str = "enrollments.csv";
        let required = ["sourcedId", "classSourcedId", "userSourcedId", "role"];
        let Some(mut file) = self.open(bundle, F, "enrollments", &required)? else {
            return Ok(());
        };
        loop {
            let batch = file.next_batch(BATCH);
            if batch.is_empty() {
                break;
            }
            let read = batch.len();
            let records = self
                .first_sightings(&file, "enrollments", "enrollments", batch)
                .await?;
            let classes = self
                .lookup(
                    RosterTable::Classes,
                    records
                        .iter()
                        .map(|r| file.get(r, "classSourcedId").to_owned()),
                )
                .await?;
            let users: Vec<String> = records
                .iter()
                .map(|r| file.get(r, "userSourcedId").to_owned())
                .collect();
            let students = self.lookup(RosterTable::Students, users.clone()).await?;
            let staff = self.lookup(RosterTable::Staff, users).await?;
            let existing = self
                .lookup(
                    RosterTable::Enrollments,
                    records.iter().map(|r| file.get(r, "sourcedId").to_owned()),
                )
                .await?;
            let (mut rows, mut deletions) = (Vec::new(), Vec::new());
            for record in records {
                let sid = file.get(&record, "sourcedId").to_owned();
                let role = file.get(&record, "role").to_ascii_lowercase();
                let st = match (status(file.get(&record, "status")), role.as_str()) {
                    (Err(reason), _) => {
                        self.report
                            .reject("enrollments", problem(F, record.line, &sid, reason));
                        continue;
                    }
                    (Ok(_), "administrator" | "proctor" | "aide") => {
                        self.report.counts("enrollments").ignored += 1;
                        continue;
                    }
                    (Ok(st), "student" | "teacher") => st,
                    (Ok(_), other) => {
                        self.report.reject(
                            "enrollments",
                            problem(F, record.line, &sid, format!("invalid role {other:?}")),
                        );
                        continue;
                    }
                };
                let class_sid = file.get(&record, "classSourcedId");
                let user_sid = file.get(&record, "userSourcedId");
                let class = classes.get(class_sid).filter(|c| !c.deleted);
                let people = if role == "student" { &students } else { &staff };
                let user = people.get(user_sid).filter(|u| !u.deleted);
                let (class_id, user_id) = match (class, user, st) {
                    (Some(c), Some(u), _) => (c.id, u.id),
                    (_, _, Status::ToBeDeleted) => (Uuid::nil(), Uuid::nil()),
                    (None, _, Status::Active) => {
                        let reason = format!("unknown reference: classSourcedId {class_sid:?} is not a class of this district");
                        self.report
                            .reject("enrollments", problem(F, record.line, &sid, reason));
                        continue;
                    }
                    (_, None, Status::Active) => {
                        let reason = format!("unknown reference: userSourcedId {user_sid:?} is not a {role} of this district");
                        self.report
                            .reject("enrollments", problem(F, record.line, &sid, reason));
                        continue;
                    }
                };
                let hash = fingerprint(&[&class_id.to_string(), &user_id.to_string(), &role]);
                let plan = plan(existing.get(&sid), st, &hash);
                if let Some(id) = self.tally("enrollments", &plan, &mut deletions) {
                    let (student_id, staff_id) = if role == "student" {
                        (Some(user_id), None)
                    } else {
                        (None, Some(user_id))
                    };
                    rows.push(EnrollmentRow {
                        id,
                        sourced_id: sid,
                        class_id,
                        student_id,
                        staff_id,
                        hash,
                    });
                }
            }
            self.writer.upsert_enrollments(&rows, self.at).await?;
            self.writer
                .soft_delete(RosterTable::Enrollments, &deletions, self.at)
                .await?;
            self.advance(F, read);
        }
        if file.read_whole() {
            self.complete.insert(F);
        }
        Ok(())
    }

    /// Files Tidings reads but keeps nothing of: terms and courses are not needed to
    /// message anyone, and demographics are student data Tidings has no reason to hold.
    async fn count_only(&mut self, bundle: &Bundle, name: &'static str) -> Result<(), ImportError> {
        let Some(mut file) = self.open(bundle, name, "other", &["sourcedId"])? else {
            return Ok(());
        };
        loop {
            let batch = file.next_batch(BATCH);
            if batch.is_empty() {
                break;
            }
            let read = batch.len();
            for item in batch {
                if let Err((line, reason)) = item {
                    self.report.reject("other", problem(name, line, "", reason));
                }
            }
            self.advance(name, read);
        }
        Ok(())
    }

    /// demographics.csv: Tidings keeps none of it, but each row must name a user of the
    /// district (its sourcedId is the user's), or the export is not what it seems and
    /// the row is reported like any other bad row.
    async fn demographics(&mut self, bundle: &Bundle) -> Result<(), ImportError> {
        const F: &str = "demographics.csv";
        let Some(mut file) = self.open(bundle, F, "demographics", &["sourcedId"])? else {
            return Ok(());
        };
        loop {
            let batch = file.next_batch(BATCH);
            if batch.is_empty() {
                break;
            }
            let read = batch.len();
            let records = self
                .first_sightings(&file, "demographics", "demographics", batch)
                .await?;
            let mut known = HashSet::new();
            for table in [
                RosterTable::Students,
                RosterTable::Guardians,
                RosterTable::Staff,
            ] {
                let found = self
                    .lookup(
                        table,
                        records.iter().map(|r| file.get(r, "sourcedId").to_owned()),
                    )
                    .await?;
                known.extend(
                    found
                        .into_values()
                        .filter(|row| !row.deleted)
                        .map(|row| row.sourced_id),
                );
            }
            for record in records {
                let sid = file.get(&record, "sourcedId");
                match status(file.get(&record, "status")) {
                    Err(reason) => self
                        .report
                        .reject("demographics", problem(F, record.line, sid, reason)),
                    Ok(Status::Active) if !known.contains(sid) => {
                        let reason = format!(
                            "unknown reference: sourcedId {sid:?} is not a user of this district"
                        );
                        self.report
                            .reject("demographics", problem(F, record.line, sid, reason));
                    }
                    Ok(_) => self.report.counts("demographics").ignored += 1,
                }
            }
            self.advance(F, read);
        }
        Ok(())
    }

    /// Soft-deletes what `bulk` files no longer contain — only for files read completely.
    async fn delete_missing(&mut self, modes: &HashMap<&str, Mode>) -> Result<(), ImportError> {
        let bulk =
            |file: &str| modes.get(file) == Some(&Mode::Bulk) && self.complete.contains(file);
        let mut plan = Vec::new();
        if bulk("orgs.csv") {
            plan.push(("schools", RosterTable::Schools));
        }
        if bulk("users.csv") {
            plan.extend([
                ("students", RosterTable::Students),
                ("guardians", RosterTable::Guardians),
                ("staff", RosterTable::Staff),
            ]);
        }
        if bulk("classes.csv") {
            plan.push(("classes", RosterTable::Classes));
        }
        if bulk("enrollments.csv") {
            plan.push(("enrollments", RosterTable::Enrollments));
        }
        let users_bulk = bulk("users.csv");
        for (entity, table) in plan {
            let deleted = self.writer.delete_unseen(table, self.at).await?;
            self.report.counts(entity).deleted += deleted;
        }
        if users_bulk {
            self.writer.delete_unseen_links(self.at).await?;
        }
        if self.complete.contains("users.csv") {
            self.writer.deactivate_unseen_contacts(self.at).await?;
        }
        Ok(())
    }
}
