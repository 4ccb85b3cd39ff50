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
use std::fs::File;
use std::io::BufReader;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use bundle::{Bundle, ZipLimits};
pub use report::{Deletions, EntityCounts, ImportReport, OverLimit, RowProblem};

use crate::store::roster::{
    contact_key, link_key, ClassRow, EnrollmentRow, ExistingRow, GuardianLink, GuardianRow,
    RosterContact, RosterTable, RosterWriter, SchoolRow, StaffByEmail, StaffRow, StudentRow,
};
use crate::store::{StoreError, StoreResult};
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
                .audit(district, &actor, action, detail, options.clock.now())
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
    // Its history entry is written with it, or after its rollback if it fails: never
    // left "running" by a failure or a crash.
    let started_at = options.clock.now();
    let recorded = Recorded {
        import: &record,
        started_at,
        actor: &actor,
    };
    match import_with(store, district, bundle, options, progress, Some(recorded)).await {
        // Its history entry and audit row committed with it.
        Ok(report) => Ok((Some(id), report)),
        Err(error) => {
            let message = crate::store::error_chain(&error);
            store
                .record_failed_import(&record, started_at, &message, options.clock.now())
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
    /// Where the times it records come from (when it started and finished, the rows'
    /// changes, the audit rows).
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            default_region: "US".into(),
            max_delete_percent: None,
            force: false,
            dry_run: false,
            clock: std::sync::Arc::new(crate::clock::SystemClock),
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
    import_with(store, district, bundle, options, progress, None).await
}

/// What a recorded import writes in its own transaction when it commits: the history
/// entry's success and the audit row.
struct Recorded<'a> {
    import: &'a crate::store::NewImport,
    started_at: chrono::DateTime<chrono::Utc>,
    actor: &'a crate::delivery::Actor,
}

async fn import_with(
    store: &dyn crate::store::Store,
    district: DistrictId,
    bundle: &Bundle,
    options: &ImportOptions,
    progress: &(dyn Fn(u64) + Send + Sync),
    recorded: Option<Recorded<'_>>,
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
        at: options.clock.now(),
        rows: 0,
        progress,
        complete: HashSet::new(),
        rejected_user_lines: HashSet::new(),
    };
    if modes["orgs.csv"] != Mode::Absent {
        run.read(bundle, Source::Orgs).await?;
    }
    if modes["users.csv"] != Mode::Absent {
        run.read(bundle, Source::Users).await?;
        run.links(bundle).await?;
    }
    if modes["classes.csv"] != Mode::Absent {
        run.read(bundle, Source::Classes).await?;
    }
    if modes["enrollments.csv"] != Mode::Absent {
        run.read(bundle, Source::Enrollments).await?;
    }
    for name in ["academicSessions.csv", "courses.csv"] {
        if modes[name] != Mode::Absent {
            run.count_only(bundle, name).await?;
        }
    }
    if modes["demographics.csv"] != Mode::Absent {
        run.read(bundle, Source::Demographics).await?;
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
        _ => {
            let mut writer = writer;
            if let Some(recorded) = recorded {
                let json = serde_json::to_value(&report)
                    .map_err(|e| ImportError::Bundle(format!("report: {e}")))?;
                let audit = crate::store::roster::AuditRow {
                    actor: recorded.actor,
                    action: "roster.import",
                    detail: serde_json::json!({
                        "import_id": recorded.import.id,
                        "source": recorded.import.source_name,
                        "entities": json["entities"],
                        "forced": options.force,
                        "over_delete_limit": report.over_delete_limit,
                    }),
                };
                writer
                    .record_success(
                        recorded.import,
                        recorded.started_at,
                        &json,
                        &audit,
                        options.clock.now(),
                    )
                    .await?;
            }
            writer.commit().await?
        }
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

/// The file whose rows are read twice: for people, then for the links between them.
const USERS: &str = "users.csv";

/// A file of the bundle whose rows are read one by one into the directory (or, for
/// demographics, only checked against it).
#[derive(Debug, Clone, Copy)]
enum Source {
    Orgs,
    Users,
    Classes,
    Enrollments,
    Demographics,
}

impl Source {
    /// The file, the report's name for its rows, and the columns it cannot be read without.
    fn file(self) -> (&'static str, &'static str, &'static [&'static str]) {
        match self {
            Source::Orgs => ("orgs.csv", "schools", &["sourcedId", "name", "type"]),
            Source::Users => (
                USERS,
                "users",
                &[
                    "sourcedId",
                    "role",
                    "givenName",
                    "familyName",
                    "orgSourcedIds",
                ],
            ),
            Source::Classes => (
                "classes.csv",
                "classes",
                &["sourcedId", "title", "schoolSourcedId"],
            ),
            Source::Enrollments => (
                "enrollments.csv",
                "enrollments",
                &["sourcedId", "classSourcedId", "userSourcedId", "role"],
            ),
            Source::Demographics => ("demographics.csv", "demographics", &["sourcedId"]),
        }
    }
}

/// A file of the bundle, as [`Bundle::file`] opens it.
type Csv = CsvFile<BufReader<File>>;

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
    Unchanged(Uuid),
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
            Plan::Unchanged(row.id)
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

/// What one row of a file is to the directory.
enum Decision<D> {
    /// A live row: the fingerprint of its imported fields, and what it is made of.
    Keep { hash: String, draft: D },
    /// A live row that takes over a directory row no import owns yet (a staff account
    /// made before the first import, matched by email): an update of that row.
    Adopt { id: Uuid, hash: String, draft: D },
    /// `tobedeleted`: the row goes, if the directory has it.
    Delete,
    /// A row of a kind Tidings does not use: only counted.
    Ignore,
    /// Not imported, for this reason (reported with its file, line and sourcedId).
    Reject(String),
}

/// One kind of directory row (schools, students, guardians, staff, classes, enrollments),
/// as far as it differs from the others: how a row of its file is checked against what
/// the batch refers to, fingerprinted, and written. The rest — planning each row against
/// the directory, counting it, upserting and soft-deleting the batch — is [`Run::sync`].
/// A value of the kind holds what one batch refers to (the schools of its classes, …).
trait Entity {
    /// The report's name for these rows.
    const NAME: &'static str;
    /// The file its rows come from, for rejections.
    const FILE: &'static str;
    const TABLE: RosterTable;
    /// One row as the batch has it: a CSV record, or a user already sorted by role.
    type Item;
    /// A live row waiting for the id its plan gives it.
    type Draft;
    type Row;

    /// The item's line and sourcedId.
    fn key(&self, item: &Self::Item) -> (u64, String);

    /// What the item is, given the row the directory has under its sourcedId.
    fn decide(&mut self, item: Self::Item, existing: Option<&ExistingRow>)
        -> Decision<Self::Draft>;

    /// Sees every row that is live after the import (created, updated or unchanged).
    fn live(&mut self, _report: &mut ImportReport, _id: Uuid, _draft: &Self::Draft) {}

    fn row(id: Uuid, sourced_id: String, hash: String, draft: Self::Draft) -> Self::Row;

    /// Inserts or updates the batch's rows.
    async fn upsert(
        writer: &mut dyn RosterWriter,
        rows: &[Self::Row],
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
}

impl Run<'_> {
    fn advance(&mut self, file: &'static str, rows: usize) {
        *self.report.rows_read.entry(file).or_default() += rows as u64;
        self.rows += rows as u64;
        (self.progress)(self.rows);
    }

    /// Reports a row that is not imported. users.csv is read a second time for its
    /// links, which skip the rows rejected in the first.
    fn reject(&mut self, entity: &'static str, problem: RowProblem) {
        if problem.file == USERS {
            self.rejected_user_lines.insert(problem.line);
        }
        self.report.reject(entity, problem);
    }

    /// Opens a file and checks its header; a bad header is one rejection for the file.
    fn open(
        &mut self,
        bundle: &Bundle,
        name: &'static str,
        entity: &'static str,
        required: &[&str],
    ) -> Result<Option<Csv>, ImportError> {
        let Some(input) = bundle.file(name)? else {
            return Ok(None);
        };
        match CsvFile::open(name, input, required) {
            Ok(file) => Ok(Some(file)),
            Err(reason) => {
                let reason = format!("{reason}; no row of this file was imported");
                self.reject(entity, problem(name, 1, "", reason));
                Ok(None)
            }
        }
    }

    /// Reads a file in batches: rows without a sourcedId, or with one seen before, are
    /// rejected, and the rest of each batch goes to the step of its file.
    async fn read(&mut self, bundle: &Bundle, source: Source) -> Result<(), ImportError> {
        let (name, entity, required) = source.file();
        let Some(mut file) = self.open(bundle, name, entity, required)? else {
            return Ok(());
        };
        loop {
            let batch = file.next_batch(BATCH);
            if batch.is_empty() {
                break;
            }
            let read = batch.len();
            let records = self.first_sightings(&file, entity, batch).await?;
            match source {
                Source::Orgs => self.orgs(&file, records).await?,
                Source::Users => self.users(&file, records).await?,
                Source::Classes => self.classes(&file, records).await?,
                Source::Enrollments => self.enrollments(&file, records).await?,
                Source::Demographics => self.demographics(&file, records).await?,
            }
            self.advance(name, read);
        }
        if file.read_whole() {
            self.complete.insert(name);
        }
        Ok(())
    }

    /// Splits a batch into records with a non-empty sourcedId seen for the first time,
    /// reporting the rest. Duplicates are found through the database, so memory stays
    /// bounded whatever the file size.
    async fn first_sightings(
        &mut self,
        file: &Csv,
        entity: &'static str,
        batch: Vec<Result<Record, (u64, String)>>,
    ) -> Result<Vec<Record>, ImportError> {
        let mut records = Vec::with_capacity(batch.len());
        let mut in_batch: HashMap<String, u64> = HashMap::new();
        for item in batch {
            match item {
                Err((line, reason)) => self.reject(entity, problem(file.name, line, "", reason)),
                Ok(record) => {
                    let sid = file.get(&record, "sourcedId").to_owned();
                    if sid.is_empty() {
                        let missing = problem(file.name, record.line, "", "missing sourcedId");
                        self.reject(entity, missing);
                    } else if let Some(first) = in_batch.get(&sid) {
                        let reason = format!("duplicate sourcedId (first on line {first})");
                        self.reject(entity, problem(file.name, record.line, &sid, reason));
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
            .mark_seen(entity, &keys)
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
                        self.reject(entity, problem(file.name, record.line, sid, reason));
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
            Plan::Unchanged(_) | Plan::AlreadyGone => {
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

    /// One batch of one kind of row: plans each item against the row the directory has
    /// under its sourcedId, counts it, and writes the batch — upserts, then soft-deletes.
    async fn sync<E: Entity>(
        &mut self,
        entity: &mut E,
        items: Vec<E::Item>,
    ) -> Result<(), ImportError> {
        let keys: Vec<(u64, String)> = items.iter().map(|item| entity.key(item)).collect();
        let existing = self
            .lookup(E::TABLE, keys.iter().map(|(_, sid)| sid.clone()))
            .await?;
        let (mut rows, mut deletions) = (Vec::new(), Vec::new());
        for (item, (line, sid)) in items.into_iter().zip(keys) {
            let found = existing.get(&sid);
            let (plan, hash, draft) = match entity.decide(item, found) {
                Decision::Keep { hash, draft } => (plan(found, Status::Active, &hash), hash, draft),
                Decision::Adopt { id, hash, draft } => (Plan::Update(id), hash, draft),
                Decision::Delete => {
                    let plan = plan(found, Status::ToBeDeleted, "");
                    self.tally(E::NAME, &plan, &mut deletions);
                    continue;
                }
                Decision::Ignore => {
                    self.report.counts(E::NAME).ignored += 1;
                    continue;
                }
                Decision::Reject(reason) => {
                    self.reject(E::NAME, problem(E::FILE, line, &sid, reason));
                    continue;
                }
            };
            if let Plan::Create(id) | Plan::Update(id) | Plan::Unchanged(id) = plan {
                entity.live(&mut self.report, id, &draft);
            }
            if let Some(id) = self.tally(E::NAME, &plan, &mut deletions) {
                rows.push(E::row(id, sid, hash, draft));
            }
        }
        E::upsert(&mut *self.writer, &rows, self.at).await?;
        self.writer
            .soft_delete(E::TABLE, &deletions, self.at)
            .await?;
        Ok(())
    }

    /// A batch of orgs.csv: the district's own row, schools, and kinds of org Tidings
    /// does not use.
    async fn orgs(&mut self, file: &Csv, records: Vec<Record>) -> Result<(), ImportError> {
        const F: &str = "orgs.csv";
        let mut schools = Vec::new();
        for record in records {
            let sid = file.get(&record, "sourcedId").to_owned();
            let kind = file.get(&record, "type").to_ascii_lowercase();
            let parsed = status(file.get(&record, "status"));
            let name = file.get(&record, "name").to_owned();
            match (kind.as_str(), parsed) {
                (_, Err(reason)) => self.reject("schools", problem(F, record.line, &sid, reason)),
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
                ("school", Ok(_)) if name.is_empty() => {
                    self.reject("schools", problem(F, record.line, &sid, "missing name"))
                }
                ("school", Ok(status)) => schools.push(School {
                    line: record.line,
                    sid,
                    name,
                    status,
                }),
                ("department" | "local" | "state" | "national", Ok(_)) => {
                    self.report.counts("schools").ignored += 1
                }
                (other, Ok(_)) => {
                    let reason = format!("invalid type {other:?} (expected district, school, department, local, state or national)");
                    self.reject("schools", problem(F, record.line, &sid, reason));
                }
            }
        }
        self.sync(&mut Schools, schools).await
    }

    /// A batch of users.csv: each row sorted by role, then students, guardians (with the
    /// contact points they are reached at) and staff synced in turn.
    async fn users(&mut self, file: &Csv, records: Vec<Record>) -> Result<(), ImportError> {
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
                    self.reject("users", problem(USERS, record.line, &sid, reason));
                    continue;
                }
            };
            // Marked seen even when rejected below: a bad row leaves the person as they
            // were, it does not delete them.
            seen.entry(entity)
                .or_default()
                .push((sid.clone(), record.line));
            let status = match status(file.get(&record, "status")) {
                Ok(status) => status,
                Err(reason) => {
                    self.reject(entity, problem(USERS, record.line, &sid, reason));
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
                administrator: role == "administrator",
                sid,
                status,
            };
            if status == Status::Active && (user.given.is_empty() || user.family.is_empty()) {
                let reason = "missing givenName or familyName";
                self.reject(entity, problem(USERS, user.line, &user.sid, reason));
                continue;
            }
            match entity {
                "students" => students.push(user),
                "guardians" => guardians.push(user),
                _ => staff.push(user),
            }
        }

        // What the bundle contains, per role, for deleting what it no longer does.
        for (entity, keys) in seen {
            self.writer.mark_seen(entity, &keys).await?;
        }

        let schools = self
            .lookup(
                RosterTable::Schools,
                students.iter().chain(&staff).flat_map(|u| u.orgs.clone()),
            )
            .await?;
        self.sync(&mut Students { schools: &schools }, students)
            .await?;

        let options = self.options;
        let mut reached = Guardians {
            default_region: &options.default_region,
            contacts: Vec::new(),
        };
        self.sync(&mut reached, guardians).await?;
        let contacts = reached.contacts;
        let keys: Vec<(String, u64)> = contacts.iter().map(|c| (contact_key(c), 0)).collect();
        self.writer.mark_seen("contacts", &keys).await?;
        self.writer.upsert_contacts(&contacts, self.at).await?;

        let emails: Vec<String> = staff
            .iter()
            .filter_map(|u| EmailAddress::parse(&u.email).ok())
            .map(|e| e.to_string())
            .collect();
        let by_email = self
            .writer
            .staff_by_emails(&emails)
            .await?
            .into_iter()
            .map(|s| (s.email.clone(), s))
            .collect();
        let mut members = Staff {
            district: self.district,
            by_email,
            schools: &schools,
            assignments: Vec::new(),
        };
        self.sync(&mut members, staff).await?;
        self.writer.add_staff_schools(&members.assignments).await?;
        Ok(())
    }

    /// Second pass over users.csv: `agentSourcedIds` link guardians and students, written
    /// on either side (a student lists their guardians, or a guardian their students).
    async fn links(&mut self, bundle: &Bundle) -> Result<(), ImportError> {
        let Some(mut file) = bundle
            .file(USERS)?
            .and_then(|input| CsvFile::open(USERS, input, &["sourcedId", "role"]).ok())
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
                    (None, _) => self.report.warn(problem(USERS, line, &row_sid, format!("agentSourcedIds: {guardian:?} is not a guardian in this district; link not made"))),
                    (_, None) => self.report.warn(problem(USERS, line, &row_sid, format!("agentSourcedIds: {student:?} is not a student in this district; link not made"))),
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

    /// A batch of classes.csv: each class belongs to a school of the district.
    async fn classes(&mut self, file: &Csv, records: Vec<Record>) -> Result<(), ImportError> {
        let schools = self
            .lookup(
                RosterTable::Schools,
                records
                    .iter()
                    .map(|r| file.get(r, "schoolSourcedId").to_owned()),
            )
            .await?;
        self.sync(&mut Classes { file, schools }, records).await
    }

    /// A batch of enrollments.csv: a student or a teacher in a class.
    async fn enrollments(&mut self, file: &Csv, records: Vec<Record>) -> Result<(), ImportError> {
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
        let mut enrollments = Enrollments {
            file,
            classes,
            students,
            staff,
        };
        self.sync(&mut enrollments, records).await
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
                    self.reject("other", problem(name, line, "", reason));
                }
            }
            self.advance(name, read);
        }
        Ok(())
    }

    /// A batch of demographics.csv: Tidings keeps none of it, but each row must name a
    /// user of the district (its sourcedId is the user's), or the export is not what it
    /// seems and the row is reported like any other bad row.
    async fn demographics(&mut self, file: &Csv, records: Vec<Record>) -> Result<(), ImportError> {
        const F: &str = "demographics.csv";
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
                Err(reason) => self.reject("demographics", problem(F, record.line, sid, reason)),
                Ok(Status::Active) if !known.contains(sid) => {
                    let reason = format!(
                        "unknown reference: sourcedId {sid:?} is not a user of this district"
                    );
                    self.reject("demographics", problem(F, record.line, sid, reason));
                }
                Ok(_) => self.report.counts("demographics").ignored += 1,
            }
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
        if bulk(USERS) {
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
        let users_bulk = bulk(USERS);
        for (entity, table) in plan {
            let deleted = self.writer.delete_unseen(table, self.at).await?;
            self.report.counts(entity).deleted += deleted;
        }
        if users_bulk {
            self.writer.delete_unseen_links(self.at).await?;
        }
        if self.complete.contains(USERS) {
            self.writer.deactivate_unseen_contacts(self.at).await?;
        }
        Ok(())
    }
}

/// A school of orgs.csv.
struct School {
    line: u64,
    sid: String,
    name: String,
    status: Status,
}

struct Schools;

impl Entity for Schools {
    const NAME: &'static str = "schools";
    const FILE: &'static str = "orgs.csv";
    const TABLE: RosterTable = RosterTable::Schools;
    type Item = School;
    type Draft = String;
    type Row = SchoolRow;

    fn key(&self, school: &School) -> (u64, String) {
        (school.line, school.sid.clone())
    }

    fn decide(&mut self, school: School, _: Option<&ExistingRow>) -> Decision<String> {
        match school.status {
            Status::ToBeDeleted => Decision::Delete,
            Status::Active => Decision::Keep {
                hash: fingerprint(&[&school.name]),
                draft: school.name,
            },
        }
    }

    fn row(id: Uuid, sourced_id: String, hash: String, name: String) -> SchoolRow {
        SchoolRow {
            id,
            sourced_id,
            name,
            hash,
        }
    }

    async fn upsert(
        writer: &mut dyn RosterWriter,
        rows: &[SchoolRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        writer.upsert_schools(rows, at).await
    }
}

/// A person of users.csv, sorted by role.
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
    /// Staff with the `administrator` role administer their schools.
    administrator: bool,
}

/// Students: their school is the first of their orgs that is a school.
struct Students<'b> {
    schools: &'b HashMap<String, ExistingRow>,
}

impl Entity for Students<'_> {
    const NAME: &'static str = "students";
    const FILE: &'static str = USERS;
    const TABLE: RosterTable = RosterTable::Students;
    type Item = User;
    /// The student's school, and the student.
    type Draft = (Uuid, User);
    type Row = StudentRow;

    fn key(&self, user: &User) -> (u64, String) {
        (user.line, user.sid.clone())
    }

    fn decide(&mut self, user: User, _: Option<&ExistingRow>) -> Decision<(Uuid, User)> {
        if user.status == Status::ToBeDeleted {
            return Decision::Delete;
        }
        let school = user
            .orgs
            .iter()
            .find_map(|o| self.schools.get(o).filter(|s| !s.deleted));
        let Some(school) = school else {
            return Decision::Reject(format!(
                "unknown reference: none of orgSourcedIds {:?} is a school of this district",
                user.orgs.join(",")
            ));
        };
        let grade = user.grade.clone().unwrap_or_default();
        Decision::Keep {
            hash: fingerprint(&[&school.id.to_string(), &user.given, &user.family, &grade]),
            draft: (school.id, user),
        }
    }

    fn row(id: Uuid, sourced_id: String, hash: String, (school, user): (Uuid, User)) -> StudentRow {
        StudentRow {
            id,
            sourced_id,
            school_id: school,
            given_name: user.given,
            family_name: user.family,
            grade: user.grade,
            hash,
        }
    }

    async fn upsert(
        writer: &mut dyn RosterWriter,
        rows: &[StudentRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        writer.upsert_students(rows, at).await
    }
}

/// Guardians, and the contact points they are reached at (kept for the live ones).
struct Guardians<'b> {
    default_region: &'b str,
    contacts: Vec<RosterContact>,
}

impl Entity for Guardians<'_> {
    const NAME: &'static str = "guardians";
    const FILE: &'static str = USERS;
    const TABLE: RosterTable = RosterTable::Guardians;
    type Item = User;
    type Draft = User;
    type Row = GuardianRow;

    fn key(&self, user: &User) -> (u64, String) {
        (user.line, user.sid.clone())
    }

    fn decide(&mut self, user: User, _: Option<&ExistingRow>) -> Decision<User> {
        match user.status {
            Status::ToBeDeleted => Decision::Delete,
            Status::Active => Decision::Keep {
                hash: fingerprint(&[&user.given, &user.family]),
                draft: user,
            },
        }
    }

    /// A live guardian's contact points from their users.csv row. `sms` is preferred for
    /// text messages; `phone` is used when `sms` is blank (most systems put mobiles there).
    fn live(&mut self, report: &mut ImportReport, id: Uuid, user: &User) {
        let warn = |what: String| problem(USERS, user.line, &user.sid, what);
        if !user.email.is_empty() {
            match EmailAddress::parse(&user.email) {
                Ok(address) => self.contacts.push(RosterContact {
                    guardian_id: id,
                    kind: Channel::Email,
                    address: address.to_string(),
                }),
                Err(e) => report.warn(warn(format!("email not stored: {e}"))),
            }
        }
        let (column, number) = if user.sms.is_empty() {
            ("phone", &user.phone)
        } else {
            ("sms", &user.sms)
        };
        if !number.is_empty() {
            match PhoneNumber::parse_in(number, self.default_region) {
                Ok(number) => self.contacts.push(RosterContact {
                    guardian_id: id,
                    kind: Channel::Sms,
                    address: number.to_string(),
                }),
                Err(e) => report.warn(warn(format!("{column} not stored: {e}"))),
            }
        }
    }

    fn row(id: Uuid, sourced_id: String, hash: String, user: User) -> GuardianRow {
        GuardianRow {
            id,
            sourced_id,
            given_name: user.given,
            family_name: user.family,
            hash,
        }
    }

    async fn upsert(
        writer: &mut dyn RosterWriter,
        rows: &[GuardianRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        writer.upsert_guardians(rows, at).await
    }
}

/// Staff sign in by email: matched by sourcedId, else by adopting an account with that
/// email that no import owns yet. Administrators are assigned to their schools.
struct Staff<'b> {
    district: Uuid,
    by_email: HashMap<String, StaffByEmail>,
    schools: &'b HashMap<String, ExistingRow>,
    /// (staff, school) pairs of administrators.
    assignments: Vec<(Uuid, Uuid)>,
}

impl Entity for Staff<'_> {
    const NAME: &'static str = "staff";
    const FILE: &'static str = USERS;
    const TABLE: RosterTable = RosterTable::Staff;
    type Item = User;
    type Draft = (EmailAddress, Role, User);
    type Row = StaffRow;

    fn key(&self, user: &User) -> (u64, String) {
        (user.line, user.sid.clone())
    }

    fn decide(&mut self, user: User, existing: Option<&ExistingRow>) -> Decision<Self::Draft> {
        if user.status == Status::ToBeDeleted {
            return Decision::Delete;
        }
        let Ok(email) = EmailAddress::parse(&user.email) else {
            return Decision::Reject(format!(
                "staff sign in by email, and {:?} is not a usable email address",
                user.email
            ));
        };
        let role = if user.administrator {
            Role::SchoolAdmin
        } else {
            Role::Teacher
        };
        let hash = fingerprint(&[email.as_str(), &user.given, &user.family, role.as_str()]);
        let Some(owner) = self.by_email.get(email.as_str()) else {
            let draft = (email, role, user);
            return Decision::Keep { hash, draft };
        };
        let same = existing.is_some_and(|e| e.id == owner.id);
        let adoptable = owner.sourced_id.is_none() && owner.district_id == self.district;
        if !same && !adoptable {
            return Decision::Reject(format!(
                "email {email} is already used by another staff member"
            ));
        }
        let (id, draft) = (owner.id, (email, role, user));
        match existing {
            Some(_) => Decision::Keep { hash, draft },
            None => Decision::Adopt { id, hash, draft },
        }
    }

    fn live(&mut self, _: &mut ImportReport, id: Uuid, (_, _, user): &Self::Draft) {
        if user.administrator {
            self.assignments.extend(
                user.orgs
                    .iter()
                    .filter_map(|o| self.schools.get(o))
                    .filter(|s| !s.deleted)
                    .map(|s| (id, s.id)),
            );
        }
    }

    fn row(id: Uuid, sourced_id: String, hash: String, draft: Self::Draft) -> StaffRow {
        let (email, role, user) = draft;
        StaffRow {
            id,
            sourced_id,
            email: email.to_string(),
            display_name: format!("{} {}", user.given, user.family),
            role,
            hash,
        }
    }

    async fn upsert(
        writer: &mut dyn RosterWriter,
        rows: &[StaffRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        writer.upsert_staff(rows, at).await
    }
}

/// Classes: each belongs to a school of the district.
struct Classes<'f> {
    file: &'f Csv,
    schools: HashMap<String, ExistingRow>,
}

impl Entity for Classes<'_> {
    const NAME: &'static str = "classes";
    const FILE: &'static str = "classes.csv";
    const TABLE: RosterTable = RosterTable::Classes;
    type Item = Record;
    /// The class's school, and its title.
    type Draft = (Uuid, String);
    type Row = ClassRow;

    fn key(&self, record: &Record) -> (u64, String) {
        (record.line, self.file.get(record, "sourcedId").to_owned())
    }

    fn decide(&mut self, record: Record, _: Option<&ExistingRow>) -> Decision<(Uuid, String)> {
        let file = self.file;
        match status(file.get(&record, "status")) {
            Err(reason) => return Decision::Reject(reason),
            Ok(Status::ToBeDeleted) => return Decision::Delete,
            Ok(Status::Active) => {}
        }
        let school_sid = file.get(&record, "schoolSourcedId");
        let Some(school) = self.schools.get(school_sid).filter(|s| !s.deleted) else {
            return Decision::Reject(format!(
                "unknown reference: schoolSourcedId {school_sid:?} is not a school of this district"
            ));
        };
        let title = file.get(&record, "title").to_owned();
        if title.is_empty() {
            return Decision::Reject("missing title".into());
        }
        Decision::Keep {
            hash: fingerprint(&[&title, &school.id.to_string()]),
            draft: (school.id, title),
        }
    }

    fn row(
        id: Uuid,
        sourced_id: String,
        hash: String,
        (school, title): (Uuid, String),
    ) -> ClassRow {
        ClassRow {
            id,
            sourced_id,
            school_id: school,
            title,
            hash,
        }
    }

    async fn upsert(
        writer: &mut dyn RosterWriter,
        rows: &[ClassRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        writer.upsert_classes(rows, at).await
    }
}

/// Enrollments: a student or a teacher in a class of the district. Other roles
/// (administrators, proctors, aides) are not kept.
struct Enrollments<'f> {
    file: &'f Csv,
    classes: HashMap<String, ExistingRow>,
    students: HashMap<String, ExistingRow>,
    staff: HashMap<String, ExistingRow>,
}

impl Entity for Enrollments<'_> {
    const NAME: &'static str = "enrollments";
    const FILE: &'static str = "enrollments.csv";
    const TABLE: RosterTable = RosterTable::Enrollments;
    type Item = Record;
    /// The class, and the student or the teacher.
    type Draft = (Uuid, Option<Uuid>, Option<Uuid>);
    type Row = EnrollmentRow;

    fn key(&self, record: &Record) -> (u64, String) {
        (record.line, self.file.get(record, "sourcedId").to_owned())
    }

    fn decide(&mut self, record: Record, _: Option<&ExistingRow>) -> Decision<Self::Draft> {
        let file = self.file;
        let role = file.get(&record, "role").to_ascii_lowercase();
        match (status(file.get(&record, "status")), role.as_str()) {
            (Err(reason), _) => return Decision::Reject(reason),
            (Ok(_), "administrator" | "proctor" | "aide") => return Decision::Ignore,
            (Ok(Status::ToBeDeleted), "student" | "teacher") => return Decision::Delete,
            (Ok(Status::Active), "student" | "teacher") => {}
            (Ok(_), other) => return Decision::Reject(format!("invalid role {other:?}")),
        }
        let class_sid = file.get(&record, "classSourcedId");
        let user_sid = file.get(&record, "userSourcedId");
        let people = if role == "student" {
            &self.students
        } else {
            &self.staff
        };
        let class = self.classes.get(class_sid).filter(|c| !c.deleted);
        let user = people.get(user_sid).filter(|u| !u.deleted);
        let (class_id, user_id) = match (class, user) {
            (Some(c), Some(u)) => (c.id, u.id),
            (None, _) => {
                return Decision::Reject(format!(
                "unknown reference: classSourcedId {class_sid:?} is not a class of this district"
            ))
            }
            (_, None) => {
                return Decision::Reject(format!(
                "unknown reference: userSourcedId {user_sid:?} is not a {role} of this district"
            ))
            }
        };
        let hash = fingerprint(&[&class_id.to_string(), &user_id.to_string(), &role]);
        let draft = if role == "student" {
            (class_id, Some(user_id), None)
        } else {
            (class_id, None, Some(user_id))
        };
        Decision::Keep { hash, draft }
    }

    fn row(id: Uuid, sourced_id: String, hash: String, draft: Self::Draft) -> EnrollmentRow {
        let (class_id, student_id, staff_id) = draft;
        EnrollmentRow {
            id,
            sourced_id,
            class_id,
            student_id,
            staff_id,
            hash,
        }
    }

    async fn upsert(
        writer: &mut dyn RosterWriter,
        rows: &[EnrollmentRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        writer.upsert_enrollments(rows, at).await
    }
}
