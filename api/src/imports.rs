//! Roster imports over HTTP: a district administrator uploads the SIS's OneRoster zip,
//! and the import's report is kept and can be read back. An upload that would delete more
//! of the directory than allowed is held back (409) unless forced; a dry run reports what
//! the import would do and changes nothing.

use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use tidings_core::roster::{self, Bundle};
use tidings_core::services::roster::{Imported, RosterUpload};
use tidings_core::store::ImportRecord;
use tidings_core::{ImportId, Role};
use uuid::Uuid;

use crate::extract::{Path, Query};
use crate::{ApiError, AppState, Caller};

/// Largest roster zip accepted: a 100,000-student district exports about 40 MB.
pub const MAX_ROSTER_BYTES: usize = 256 * 1024 * 1024;

/// The zip, sent as the body (`Content-Type: application/zip`) or as the `file` field of a
/// multipart form.
async fn zip_of(request: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let multipart = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let too_large = |status: StatusCode| {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::InvalidBody("unreadable body".into())
        }
    };
    if !multipart {
        return Bytes::from_request(request, state)
            .await
            .map_err(|r| too_large(r.status()));
    }
    let mut form = Multipart::from_request(request, state)
        .await
        .map_err(|r| ApiError::InvalidBody(r.body_text()))?;
    while let Some(field) = form.next_field().await.map_err(|e| too_large(e.status()))? {
        if field.name() == Some("file") {
            return field.bytes().await.map_err(|e| too_large(e.status()));
        }
    }
    Err(ApiError::InvalidBody("the form has no `file` field".into()))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ImportQuery {
    /// Go ahead even if the import deletes more than 10 % of the district's schools,
    /// students, guardians, staff or classes (otherwise it is held back: 409).
    #[serde(default)]
    pub force: bool,
    /// Do the whole import, answer with its report (200), and roll it back.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an import would do; nothing was changed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DryRun {
    /// Always true.
    pub dry_run: bool,
    /// The report the import would have: counts per entity, rejected rows, warnings, and
    /// `over_delete_limit` when it would be held back.
    #[schema(value_type = Object)]
    pub report: roster::ImportReport,
}

/// Imports a OneRoster 1.1 CSV bundle (zip) into the caller's district, in one
/// transaction, and answers with the import's report. District administrators only.
#[utoipa::path(post, path = "/api/v1/imports/oneroster", tag = "imports", security(("bearer" = [])), params(ImportQuery),
    request_body(content = Vec<u8>, content_type = "application/zip", description = "The bundle, or a multipart form with a `file` field"),
    responses(
        (status = 201, description = "Imported; the report lists every rejected row", body = tidings_core::store::ImportRecord),
        (status = 200, description = "A dry run: what the import would do; nothing changed", body = DryRun),
        (status = 403, description = "Not a district administrator", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Held back: the import would delete more of the directory than allowed (`over_delete_limit` lists the counts); nothing changed; send it again with `force=true` if that is right", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a bundle, or the bundle cannot be imported; nothing changed", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn import_oneroster(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Query(query): Query<ImportQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    if staff.role != Role::DistrictAdmin {
        return Err(ApiError::Forbidden);
    }
    let zip = zip_of(request, &state).await?;
    let bundle = Bundle::from_zip(std::io::Cursor::new(zip))
        .map_err(|e| ApiError::InvalidRoster(e.to_string()))?;
    let upload = RosterUpload {
        bundle: &bundle,
        source_name: "upload",
        dry_run: query.dry_run,
        force: query.force,
        max_delete_percent: state.roster_max_delete_percent,
    };
    let id = match state
        .services()
        .import_roster(&staff, upload, &|_| {})
        .await?
    {
        Imported::Recorded(id, _) => id,
        Imported::DryRun(report) => {
            let dry_run = DryRun {
                dry_run: true,
                report,
            };
            return Ok((StatusCode::OK, axum::Json(dry_run)).into_response());
        }
    };
    let record = state
        .store
        .import_record(staff.district_id, id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok((StatusCode::CREATED, axum::Json(record)).into_response())
}

/// One import of the caller's district: status, report or error.
#[utoipa::path(get, path = "/api/v1/imports/{id}", tag = "imports", security(("bearer" = [])), params(("id" = Uuid, Path, description = "The import")),
    responses(
        (status = 200, description = "The import", body = tidings_core::store::ImportRecord),
        (status = 404, description = "No such import in the caller's district", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_import(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<ImportRecord>, ApiError> {
    if !matches!(staff.role, Role::DistrictAdmin | Role::SchoolAdmin) {
        return Err(ApiError::Forbidden);
    }
    let record = state
        .store
        .import_record(staff.district_id, ImportId::from_uuid(id))
        .await?
        .ok_or(ApiError::NotFound)?;
    // A report names the whole district's rows: a school administrator reads only the
    // reports of imports they made.
    if staff.role == Role::SchoolAdmin && record.staff_id != Some(staff.id) {
        return Err(ApiError::NotFound);
    }
    Ok(axum::Json(record))
}
