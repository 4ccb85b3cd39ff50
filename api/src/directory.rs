//! The guardian directory: schools, classes, students and guardians, each listing scoped
//! to what the caller's role may see; contact points and opt-outs edited by
//! administrators, every edit audited.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tidings_core::store::{GuardianDetail, PageRequest, Scope};
use tidings_core::ContactPointId;
use uuid::Uuid;

use crate::extract::{Json, Path, Query};
use crate::{ApiError, AppState, Caller};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

/// `?after=<id>&limit=<n>&q=<search>`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// The `next_after` of the previous page.
    pub after: Option<Uuid>,
    /// Rows per page (default 50, at most 500).
    pub limit: Option<u32>,
    /// Case-insensitive search in names and sourcedIds.
    pub q: Option<String>,
    /// Only rows of this school, by id or sourcedId (guardians: of its students).
    pub school: Option<String>,
    /// Only rows of this class, by id or sourcedId (students enrolled, their guardians).
    pub class: Option<String>,
    /// Only rows of this student, by id or sourcedId (their guardians, their classes).
    pub student: Option<String>,
}

/// The directory's tables, for finding a row by the sourcedId the SIS gave it.
#[derive(Debug, Clone, Copy)]
enum Table {
    Schools,
    Classes,
    Students,
}

/// The id of the row of `table` that staff named by `reference`: a Tidings id as it is,
/// or a sourcedId, looked up among the rows the caller may see. `None`: no such row.
async fn resolve(
    state: &AppState,
    scope: &Scope,
    table: Table,
    reference: &str,
) -> Result<Option<Uuid>, ApiError> {
    if let Ok(id) = reference.parse::<Uuid>() {
        return Ok(Some(id));
    }
    // The search matches names and sourcedIds in part; the exact sourcedId is picked out.
    let mut request = PageRequest {
        limit: MAX_LIMIT,
        search: Some(reference.to_owned()),
        ..PageRequest::default()
    };
    loop {
        let rows: Vec<(Uuid, Option<String>)> = match table {
            Table::Schools => state
                .store
                .schools(scope, &request)
                .await?
                .into_iter()
                .map(|r| (r.id, r.sourced_id))
                .collect(),
            Table::Classes => state
                .store
                .classes(scope, &request)
                .await?
                .into_iter()
                .map(|r| (r.id, r.sourced_id))
                .collect(),
            Table::Students => state
                .store
                .students(scope, &request)
                .await?
                .into_iter()
                .map(|r| (r.id, r.sourced_id))
                .collect(),
        };
        if let Some((id, _)) = rows
            .iter()
            .find(|(_, sid)| sid.as_deref() == Some(reference))
        {
            return Ok(Some(*id));
        }
        match rows.last() {
            Some((last, _)) if rows.len() == request.limit as usize => request.after = Some(*last),
            _ => return Ok(None),
        }
    }
}

/// A filter's row: its id, or the nil id (which matches nothing) when there is no such
/// row, so that the page is empty as for an unknown id.
async fn filter(
    state: &AppState,
    scope: &Scope,
    table: Table,
    reference: Option<&str>,
) -> Result<Option<Uuid>, ApiError> {
    match reference {
        None => Ok(None),
        Some(reference) => Ok(Some(
            resolve(state, scope, table, reference)
                .await?
                .unwrap_or(Uuid::nil()),
        )),
    }
}

impl ListQuery {
    async fn page(&self, state: &AppState, scope: &Scope) -> Result<PageRequest, ApiError> {
        if self
            .q
            .as_ref()
            .is_some_and(|q| q.chars().count() > crate::extract::MAX_SEARCH_CHARS)
        {
            return Err(ApiError::InvalidQuery(format!(
                "q is longer than {} characters",
                crate::extract::MAX_SEARCH_CHARS
            )));
        }
        Ok(PageRequest {
            after: self.after,
            limit: self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
            search: self.q.clone(),
            only: None,
            school: filter(state, scope, Table::Schools, self.school.as_deref()).await?,
            class: filter(state, scope, Table::Classes, self.class.as_deref()).await?,
            student: filter(state, scope, Table::Students, self.student.as_deref()).await?,
        })
    }
}

/// One page of a listing; pass `next_after` back as `after` for the next one.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<Uuid>,
}

fn page<T>(items: Vec<T>, request: &PageRequest, id: impl Fn(&T) -> Uuid) -> axum::Json<Page<T>> {
    let next_after = (items.len() == request.limit as usize)
        .then(|| items.last().map(&id))
        .flatten();
    axum::Json(Page { items, next_after })
}

macro_rules! listing {
    ($name:ident, $path:literal, $method:ident, $row:ty, $tag:literal) => {
        #[utoipa::path(get, path = $path, tag = $tag, params(ListQuery), security(("bearer" = [])),
            responses(
                (status = 200, description = "One page, scoped to what the caller may see", body = Page<$row>),
                (status = 400, description = "Invalid query string", body = crate::error::Problem, content_type = "application/problem+json"),
                (status = 401, description = "No valid credentials", body = crate::error::Problem, content_type = "application/problem+json"),
            ))]
        pub async fn $name(
            State(state): State<AppState>,
            Caller(staff): Caller,
            Query(query): Query<ListQuery>,
        ) -> Result<impl IntoResponse, ApiError> {
            let scope = Scope::of(&staff);
            let request = query.page(&state, &scope).await?;
            let items = state.store.$method(&scope, &request).await?;
            Ok(page(items, &request, |item| item.id))
        }
    };
}

macro_rules! single {
    ($name:ident, $path:literal, $method:ident, $table:expr, $row:ty, $tag:literal) => {
        #[utoipa::path(get, path = $path, tag = $tag, security(("bearer" = [])),
            params(("id" = String, Path, description = "Its id, or the sourcedId of the roster")),
            responses(
                (status = 200, description = "The row", body = $row),
                (status = 404, description = "No such row, or not one the caller may see", body = crate::error::Problem, content_type = "application/problem+json"),
            ))]
        pub async fn $name(
            State(state): State<AppState>,
            Caller(staff): Caller,
            Path(reference): Path<String>,
        ) -> Result<impl IntoResponse, ApiError> {
            let scope = Scope::of(&staff);
            let id = resolve(&state, &scope, $table, &reference).await?.ok_or(ApiError::NotFound)?;
            let request = PageRequest { limit: 1, only: Some(id), ..PageRequest::default() };
            let mut found = state.store.$method(&scope, &request).await?;
            found.pop().map(axum::Json).ok_or(ApiError::NotFound)
        }
    };
}

single!(
    get_school,
    "/api/v1/schools/{id}",
    schools,
    Table::Schools,
    tidings_core::store::SchoolView,
    "directory"
);
single!(
    get_class,
    "/api/v1/classes/{id}",
    classes,
    Table::Classes,
    tidings_core::store::ClassView,
    "directory"
);
single!(
    get_student,
    "/api/v1/students/{id}",
    students,
    Table::Students,
    tidings_core::store::StudentView,
    "directory"
);

listing!(
    list_schools,
    "/api/v1/schools",
    schools,
    tidings_core::store::SchoolView,
    "directory"
);
listing!(
    list_classes,
    "/api/v1/classes",
    classes,
    tidings_core::store::ClassView,
    "directory"
);
listing!(
    list_students,
    "/api/v1/students",
    students,
    tidings_core::store::StudentView,
    "directory"
);
listing!(
    list_guardians,
    "/api/v1/guardians",
    guardians,
    tidings_core::store::GuardianView,
    "directory"
);

/// A guardian with the students (that the caller may see), contact points and opt-outs.
#[utoipa::path(get, path = "/api/v1/guardians/{id}", tag = "directory", security(("bearer" = [])), params(("id" = String, Path, description = "The guardian: its id, or the sourcedId of the roster")), 
    responses(
        (status = 200, description = "The guardian", body = GuardianDetail),
        (status = 404, description = "No such guardian, or not one the caller may see", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_guardian(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<GuardianDetail>, ApiError> {
    Ok(axum::Json(
        state.services().visible_guardian(&staff, &id).await?,
    ))
}

/// Everything Tidings holds about a guardian, for their data request: the guardian with
/// children, contact points and opt-outs (with the revoked ones), every message sent to
/// them with its deliveries, events and provider calls, their texts and their app
/// sessions. District administrators; audited.
#[utoipa::path(get, path = "/api/v1/guardians/{id}/export", tag = "directory", security(("bearer" = [])), params(("id" = String, Path, description = "The guardian: its id, or the sourcedId of the roster")),
    responses(
        (status = 200, description = "Everything held about the guardian", body = tidings_core::store::guardian_data::GuardianExport),
        (status = 403, description = "Not a district administrator", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such guardian in the district", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn export_guardian(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<tidings_core::store::guardian_data::GuardianExport>, ApiError> {
    Ok(axum::Json(
        state.services().export_own_guardian(&staff, &id).await?,
    ))
}

/// Erases a guardian on their request: contact points, links to children, opt-outs,
/// the messages they received with every delivery, their texts and app sessions. A
/// carrier STOP is kept as a one-way hash of the number, so that the number is never
/// texted again even if a roster brings it back. Refused (409) while deliveries to them
/// still wait to be sent. District administrators; audited with the counts.
#[utoipa::path(post, path = "/api/v1/guardians/{id}/erase", tag = "directory", security(("bearer" = [])), params(("id" = String, Path, description = "The guardian: its id, or the sourcedId of the roster")),
    responses(
        (status = 200, description = "What was erased", body = tidings_core::store::guardian_data::Erased),
        (status = 403, description = "Not a district administrator", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such guardian in the district", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Deliveries to the guardian still wait to be sent", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn erase_guardian(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<String>,
) -> Result<axum::Json<tidings_core::store::guardian_data::Erased>, ApiError> {
    Ok(axum::Json(
        state.services().erase_own_guardian(&staff, &id).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewContactPoint {
    /// `sms` or `email` (devices are registered by the guardian app).
    pub kind: String,
    /// A phone number (international form, or national in the district's region) or an
    /// email address.
    pub address: String,
}

/// Adds a contact point (or reactivates it).
#[utoipa::path(post, path = "/api/v1/guardians/{id}/contact-points", tag = "directory", security(("bearer" = [])), params(("id" = String, Path, description = "The guardian: its id, or the sourcedId of the roster")), 
    request_body = NewContactPoint,
    responses(
        (status = 201, description = "The contact point", body = tidings_core::store::ContactPointView),
        (status = 422, description = "Not a valid number or address", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn add_contact_point(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<String>,
    Json(body): Json<NewContactPoint>,
) -> Result<impl IntoResponse, ApiError> {
    let contact = state
        .services()
        .add_contact_point(&staff, &id, &body.kind, &body.address)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(contact)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct ContactPointChange {
    pub active: bool,
}

/// Deactivates or reactivates a contact point.
#[utoipa::path(patch, path = "/api/v1/guardians/{id}/contact-points/{contact_point}", tag = "directory",
    params(("id" = String, Path, description = "The guardian: its id, or the sourcedId of the roster"), ("contact_point" = Uuid, Path, description = "The contact point")),
    security(("bearer" = [])), request_body = ContactPointChange,
    responses((status = 200, description = "The contact point", body = tidings_core::store::ContactPointView)))]
pub async fn change_contact_point(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path((id, contact_point)): Path<(String, Uuid)>,
    Json(body): Json<ContactPointChange>,
) -> Result<impl IntoResponse, ApiError> {
    let changed = state
        .services()
        .change_contact_point(
            &staff,
            &id,
            ContactPointId::from_uuid(contact_point),
            body.active,
        )
        .await?;
    Ok(axum::Json(changed))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct NewOptOut {
    /// `sms`, `email` or `push`.
    pub channel: String,
}

/// Records that the guardian asked not to be contacted on a channel (emergencies still
/// reach them, except by SMS after a carrier STOP).
#[utoipa::path(post, path = "/api/v1/guardians/{id}/opt-outs", tag = "directory", security(("bearer" = [])), params(("id" = String, Path, description = "The guardian: its id, or the sourcedId of the roster")), 
    request_body = NewOptOut,
    responses((status = 201, description = "The opt-out", body = tidings_core::store::OptOutView)))]
pub async fn add_opt_out(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<String>,
    Json(body): Json<NewOptOut>,
) -> Result<impl IntoResponse, ApiError> {
    let opt_out = state
        .services()
        .add_opt_out(&staff, &id, &body.channel)
        .await?;
    Ok((StatusCode::CREATED, axum::Json(opt_out)))
}

/// Revokes an opt-out. A carrier STOP cannot be revoked by staff: only the guardian's
/// START does that (409).
#[utoipa::path(delete, path = "/api/v1/guardians/{id}/opt-outs/{opt_out}", tag = "directory", security(("bearer" = [])),
    params(("id" = String, Path, description = "The guardian: its id, or the sourcedId of the roster"), ("opt_out" = Uuid, Path, description = "The opt-out")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 409, description = "A carrier STOP", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_opt_out(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path((id, opt_out)): Path<(String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    state
        .services()
        .revoke_opt_out(&staff, &id, opt_out)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
