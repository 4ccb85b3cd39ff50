//! Roster imports: a district administrator uploads the student information system's
//! OneRoster zip, watches the rows go in, and reads the report, row by row for what was
//! rejected. A dry run shows what an import would do and changes nothing. Imports run in
//! the background through the roster service (the API's, with the same history and
//! audit); the page refreshes itself until the import is done.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use askama::Template;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tidings_api::AppState;
use tidings_core::roster::Bundle;
use tidings_core::services::roster::{Imported, RosterUpload};
use tidings_core::services::{Refusal, ServiceError};
use tidings_core::{DistrictId, ImportId, Role};
use uuid::Uuid;

use crate::form::said_in;
use crate::i18n::Lang;
use crate::messages::{failed, html, Frame};
use crate::session::SignedIn;
use crate::Web;

/// Imports of this process, running or finished, for their progress pages.
#[derive(Debug, Default)]
pub struct Jobs(Mutex<HashMap<Uuid, Arc<Job>>>);

/// How long a finished import's progress page is kept.
const KEEP_FINISHED: chrono::TimeDelta = chrono::TimeDelta::hours(1);

impl Jobs {
    /// Adds `job`, forgetting the jobs that finished [`KEEP_FINISHED`] before `now`.
    fn add(&self, job: Job, now: DateTime<Utc>) -> Arc<Job> {
        let job = Arc::new(job);
        let mut jobs = self.0.lock().expect("import jobs lock");
        jobs.retain(|_, j| j.finished().is_none_or(|(at, _)| now - at < KEEP_FINISHED));
        jobs.insert(job.id, job.clone());
        job
    }

    fn get(&self, id: Uuid, district: DistrictId) -> Option<Arc<Job>> {
        let jobs = self.0.lock().expect("import jobs lock");
        jobs.get(&id).filter(|j| j.district == district).cloned()
    }

    /// The district's jobs, newest first.
    fn of(&self, district: DistrictId) -> Vec<Arc<Job>> {
        let jobs = self.0.lock().expect("import jobs lock");
        let mut found: Vec<Arc<Job>> = jobs
            .values()
            .filter(|j| j.district == district)
            .cloned()
            .collect();
        found.sort_by_key(|j| std::cmp::Reverse(j.started_at));
        found
    }
}

/// One upload being imported.
#[derive(Debug)]
pub struct Job {
    id: Uuid,
    district: DistrictId,
    file_name: String,
    dry_run: bool,
    started_at: DateTime<Utc>,
    /// Rows read so far.
    rows: AtomicU64,
    outcome: Mutex<Option<(DateTime<Utc>, Outcome)>>,
}

/// How an import ended.
#[derive(Debug, Clone)]
enum Outcome {
    Recorded(ImportId),
    DryRun(ReportView),
    /// Held back, with what it would have deleted and its report.
    HeldBack(String, ReportView),
    /// Refused (a bundle that is not one, another district's): the words.
    Refused(String),
    /// Failed on our side.
    Failed,
}

impl Job {
    fn finished(&self) -> Option<(DateTime<Utc>, Outcome)> {
        self.outcome.lock().expect("import job lock").clone()
    }

    fn rows(&self) -> u64 {
        self.rows.load(Ordering::Relaxed)
    }
}

/// An import's report as the pages show it: read from what is stored (JSON), so that a
/// report looks the same fresh or years later.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReportView {
    entities: BTreeMap<String, Counts>,
    rejected: Vec<RowView>,
    warnings: Vec<RowView>,
    unlisted: u64,
    rows_read: BTreeMap<String, u64>,
    dry_run: bool,
    forced: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct Counts {
    created: u64,
    updated: u64,
    deleted: u64,
    unchanged: u64,
    rejected: u64,
    ignored: u64,
    skipped: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
struct RowView {
    file: String,
    line: u64,
    sourced_id: Option<String>,
    reason: String,
}

impl ReportView {
    fn of(report: &impl serde::Serialize) -> Self {
        serde_json::to_value(report)
            .ok()
            .and_then(|value| serde_json::from_value(value).ok())
            .unwrap_or_default()
    }

    fn rows_read_total(&self) -> u64 {
        self.rows_read.values().sum()
    }
}

#[derive(Template)]
#[template(path = "imports.html")]
struct ImportsPage {
    frame: Frame,
    error: Option<String>,
    jobs: Vec<JobLine>,
    max_delete_percent: u8,
}

/// A job as the imports page lists it.
struct JobLine {
    id: Uuid,
    file_name: String,
    dry_run: bool,
    started_at: DateTime<Utc>,
    state: &'static str,
}

/// Where a job is, in `lang`.
fn state_of(job: &Job, lang: Lang) -> &'static str {
    match job.finished() {
        None => lang.t("running"),
        Some((_, Outcome::Recorded(_))) => lang.t("imported"),
        Some((_, Outcome::DryRun(_))) => lang.t("tried (dry run)"),
        Some((_, Outcome::HeldBack(..))) => lang.t("held back"),
        Some((_, Outcome::Refused(_))) => lang.t("refused"),
        Some((_, Outcome::Failed)) => lang.t("failed"),
    }
}

fn only_district_admins(signed_in: &SignedIn) -> Option<Response> {
    (signed_in.staff.role != Role::DistrictAdmin).then(|| {
        (
            StatusCode::FORBIDDEN,
            signed_in
                .lang
                .t("Only district administrators import rosters."),
        )
            .into_response()
    })
}

fn imports_page(
    state: &AppState,
    web: &Web,
    signed_in: &SignedIn,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let jobs = web
        .imports
        .of(signed_in.staff.district_id)
        .iter()
        .map(|job| JobLine {
            id: job.id,
            file_name: job.file_name.clone(),
            dry_run: job.dry_run,
            started_at: job.started_at,
            state: state_of(job, signed_in.lang),
        })
        .collect();
    html(
        status,
        ImportsPage {
            frame: Frame::of(signed_in),
            error,
            jobs,
            max_delete_percent: state.roster_max_delete_percent,
        },
    )
}

pub async fn page(
    State(state): State<AppState>,
    axum::Extension(web): axum::Extension<Arc<Web>>,
    signed_in: SignedIn,
) -> Response {
    if let Some(refused) = only_district_admins(&signed_in) {
        return refused;
    }
    imports_page(&state, &web, &signed_in, StatusCode::OK, None)
}

/// The upload form's fields.
#[derive(Debug, Default)]
struct Upload {
    csrf: String,
    dry_run: bool,
    force: bool,
    file_name: String,
    zip: Option<axum::body::Bytes>,
}

async fn read_upload(request: Request, state: &AppState) -> Result<Upload, String> {
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|rejection| rejection.body_text())?;
    let mut upload = Upload::default();
    while let Some(field) = form.next_field().await.map_err(|e| e.body_text())? {
        match field.name().unwrap_or_default() {
            "csrf" => upload.csrf = field.text().await.map_err(|e| e.body_text())?,
            "dry_run" => upload.dry_run = true,
            "force" => upload.force = true,
            "file" => {
                upload.file_name = field.file_name().unwrap_or("upload").to_owned();
                upload.zip = Some(field.bytes().await.map_err(|e| e.body_text())?);
            }
            _ => {}
        }
    }
    Ok(upload)
}

/// Starts an import of the uploaded zip and shows its progress.
pub async fn upload(
    State(state): State<AppState>,
    axum::Extension(web): axum::Extension<Arc<Web>>,
    signed_in: SignedIn,
    request: Request,
) -> Response {
    if let Some(refused) = only_district_admins(&signed_in) {
        return refused;
    }
    let lang = signed_in.lang;
    let again = |status, error: String| imports_page(&state, &web, &signed_in, status, Some(error));
    let upload = match read_upload(request, &state).await {
        Ok(upload) => upload,
        Err(error) => {
            return again(
                StatusCode::BAD_REQUEST,
                lang.tf("The upload could not be read: {}", &[&error]),
            )
        }
    };
    if !signed_in.csrf_ok(&upload.csrf) {
        return (
            StatusCode::FORBIDDEN,
            signed_in.lang.t("This form has expired. Please reload it."),
        )
            .into_response();
    }
    let Some(zip) = upload.zip.filter(|zip| !zip.is_empty()) else {
        return again(
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.t("Choose the roster's zip file.").into(),
        );
    };
    let bundle = match Bundle::from_zip(std::io::Cursor::new(zip)) {
        Ok(bundle) => bundle,
        Err(error) => {
            return again(
                StatusCode::UNPROCESSABLE_ENTITY,
                lang.tf(
                    "This is not a OneRoster zip Tidings can read: {}",
                    &[&error],
                ),
            )
        }
    };
    let started_at = state.clock.now();
    let job = web.imports.add(
        Job {
            id: Uuid::now_v7(),
            district: signed_in.staff.district_id,
            file_name: upload.file_name,
            dry_run: upload.dry_run,
            started_at,
            rows: AtomicU64::new(0),
            outcome: Mutex::new(None),
        },
        started_at,
    );
    let clock = state.clock.clone();
    let (services, staff) = (state.services(), signed_in.staff.clone());
    let (running, max_delete_percent) = (job.clone(), state.roster_max_delete_percent);
    let force = upload.force;
    tokio::spawn(async move {
        let source_name = format!("upload: {}", running.file_name);
        let request = RosterUpload {
            bundle: &bundle,
            source_name: &source_name,
            dry_run: running.dry_run,
            force,
            max_delete_percent,
        };
        let progress = |rows: u64| running.rows.store(rows, Ordering::Relaxed);
        let outcome = match services.import_roster(&staff, request, &progress).await {
            Ok(Imported::Recorded(id, _)) => Outcome::Recorded(id),
            Ok(Imported::DryRun(report)) => Outcome::DryRun(ReportView::of(&report)),
            Err(ServiceError::Refused(Refusal::ImportHeldBack { over, report })) => {
                Outcome::HeldBack(over.to_string(), ReportView::of(&report))
            }
            Err(ServiceError::Refused(refusal)) => Outcome::Refused(said_in(&refusal, lang).1),
            Err(error) => {
                tracing::error!(error = %error, import = %running.id, "a roster import failed");
                Outcome::Failed
            }
        };
        *running.outcome.lock().expect("import job lock") = Some((clock.now(), outcome));
    });
    Redirect::to(&format!("/imports/running/{}", job.id)).into_response()
}

#[derive(Template)]
#[template(path = "import_job.html")]
struct JobPage {
    frame: Frame,
    file_name: String,
    dry_run: bool,
    started_at: DateTime<Utc>,
    rows: u64,
    /// Seconds since it started.
    seconds: i64,
    outcome: Option<Outcome>,
}

/// A running import's progress (the page looks again every second), or how it ended.
pub async fn running(
    State(state): State<AppState>,
    axum::Extension(web): axum::Extension<Arc<Web>>,
    signed_in: SignedIn,
    Path(id): Path<Uuid>,
) -> Response {
    if let Some(refused) = only_district_admins(&signed_in) {
        return refused;
    }
    let Some(job) = web.imports.get(id, signed_in.staff.district_id) else {
        return (
            StatusCode::NOT_FOUND,
            signed_in
                .lang
                .t("No such import running here (finished imports are under Imports)."),
        )
            .into_response();
    };
    let outcome = job.finished();
    if let Some((_, Outcome::Recorded(import))) = &outcome {
        return Redirect::to(&format!("/imports/{import}")).into_response();
    }
    let until = outcome
        .as_ref()
        .map_or_else(|| state.clock.now(), |(at, _)| *at);
    html(
        StatusCode::OK,
        JobPage {
            frame: Frame::of(&signed_in),
            file_name: job.file_name.clone(),
            dry_run: job.dry_run,
            started_at: job.started_at,
            rows: job.rows(),
            seconds: (until - job.started_at).num_seconds(),
            outcome: outcome.map(|(_, o)| o),
        },
    )
}

#[derive(Template)]
#[template(path = "import.html")]
struct ImportPage {
    frame: Frame,
    source_name: String,
    status: String,
    started_at: DateTime<Utc>,
    /// How long it took, when it finished.
    seconds: Option<i64>,
    error: Option<String>,
    report: Option<ReportView>,
}

/// A recorded import and its report.
pub async fn report(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<Uuid>,
) -> Response {
    if let Some(refused) = only_district_admins(&signed_in) {
        return refused;
    }
    match state
        .store
        .import_record(signed_in.staff.district_id, ImportId::from_uuid(id))
        .await
    {
        Ok(Some(record)) => html(
            StatusCode::OK,
            ImportPage {
                frame: Frame::of(&signed_in),
                report: record
                    .report
                    .and_then(|value| serde_json::from_value(value).ok()),
                source_name: record.source_name,
                status: record.status,
                started_at: record.started_at,
                seconds: record
                    .finished_at
                    .map(|at| (at - record.started_at).num_seconds()),
                error: record.error,
            },
        ),
        Ok(None) => (StatusCode::NOT_FOUND, "No such import.").into_response(),
        Err(error) => failed(error),
    }
}
