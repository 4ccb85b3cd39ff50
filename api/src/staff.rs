//! Staff accounts and districts over the API, over the same services as the web admin:
//! district administrators list, invite and change their district's staff and make
//! password reset links; operators of the install list, create, rename, suspend and
//! resume districts. A link's token is in the creating answer only; all of it is audited
//! by the services.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidings_core::services::accounts::{Invitation, MemberChange, NewMember};
use tidings_core::services::districts::{NewDistrict, Operator};
use tidings_core::store::{PageRequest, StaffMember};
use tidings_core::{DistrictId, Role, SchoolId, StaffId};

use crate::extract::{Json, Query};
use crate::{ApiError, AppState, Caller};

/// A staff member as district administrators see them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StaffView {
    pub id: StaffId,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    /// Assigned schools (school administrators and viewers see only these).
    pub schools: Vec<SchoolId>,
    /// Cannot sign in; their sessions and tokens stopped working.
    pub disabled: bool,
    /// Has chosen a password (an invited member has not until they accept).
    pub has_password: bool,
    pub last_sign_in: Option<DateTime<Utc>>,
    /// Operates the install (manages its districts).
    pub operator: bool,
    pub created_at: DateTime<Utc>,
}

impl From<StaffMember> for StaffView {
    fn from(member: StaffMember) -> Self {
        StaffView {
            id: member.staff.id,
            email: member.staff.email.to_string(),
            display_name: member.staff.display_name,
            role: member.staff.role,
            schools: member.schools,
            disabled: member.disabled,
            has_password: member.has_password,
            last_sign_in: member.last_sign_in,
            operator: member.staff.operator,
            created_at: member.staff.created_at,
        }
    }
}

/// Someone to invite.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    pub email: String,
    pub display_name: String,
    pub role: Role,
    /// Required, at least one, for school administrators and viewers; none for the other
    /// roles.
    #[serde(default)]
    pub schools: Vec<SchoolId>,
}

/// A one-time link with which a staff member chooses a password.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PasswordLink {
    pub staff_id: StaffId,
    /// The page to open on this Tidings server, e.g.
    /// `https://tidings.example.org/invitation/…`; shown this once.
    pub path: String,
    pub expires_at: DateTime<Utc>,
}

impl From<Invitation> for PasswordLink {
    fn from(link: Invitation) -> Self {
        PasswordLink {
            staff_id: link.staff.id,
            path: format!("/invitation/{}", link.token.reveal()),
            expires_at: link.expires_at,
        }
    }
}

/// What to change about a staff member; absent fields stay as they are.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffChange {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    pub schools: Option<Vec<SchoolId>>,
}

/// `?limit=<n>&after=<id>&q=<search>`: all optional.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StaffQuery {
    /// Members per page (at most 500). Without it (and without `after` and `q`) the
    /// answer lists every member.
    pub limit: Option<u32>,
    /// The id of the last member of the previous page (from the `Link` header).
    pub after: Option<uuid::Uuid>,
    /// Case-insensitive search in names and email addresses.
    pub q: Option<String>,
}

/// Members per page when `after` or `q` is given without `limit`.
const STAFF_PAGE: u32 = 100;
const MAX_STAFF_PAGE: u32 = 500;

/// The district's staff by email (district administrators): every member, or one page
/// with `limit`/`after`/`q`, the next page named by a `Link: <…>; rel="next"` header.
#[utoipa::path(get, path = "/api/v1/staff", tag = "staff", security(("bearer" = [])),
    params(StaffQuery),
    responses(
        (status = 200, description = "The district's staff, by email; when paged and more follow, a `Link` header with `rel=\"next\"`", body = [StaffView]),
        (status = 400, description = "Invalid query string", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not a district administrator", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_staff(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Query(query): Query<StaffQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse as _;
    if query.limit.is_none() && query.after.is_none() && query.q.is_none() {
        let members = state.services().staff_members(&caller).await?;
        let all: Vec<StaffView> = members.into_iter().map(StaffView::from).collect();
        return Ok(axum::Json(all).into_response());
    }
    if query
        .q
        .as_ref()
        .is_some_and(|q| q.chars().count() > crate::extract::MAX_SEARCH_CHARS)
    {
        return Err(ApiError::InvalidQuery(format!(
            "q is longer than {} characters",
            crate::extract::MAX_SEARCH_CHARS
        )));
    }
    let request = PageRequest {
        after: query.after,
        limit: query.limit.unwrap_or(STAFF_PAGE).clamp(1, MAX_STAFF_PAGE),
        search: query.q.clone().filter(|q| !q.trim().is_empty()),
        ..PageRequest::default()
    };
    let members = state.services().staff_page(&caller, &request).await?;
    let next = (members.len() == request.limit as usize)
        .then(|| {
            members
                .last()
                .map(|m| next_link(&request, *m.staff.id.as_uuid()))
        })
        .flatten();
    let page: Vec<StaffView> = members.into_iter().map(StaffView::from).collect();
    let mut response = axum::Json(page).into_response();
    if let Some(link) = next.and_then(|l| axum::http::HeaderValue::try_from(l).ok()) {
        response
            .headers_mut()
            .insert(axum::http::header::LINK, link);
    }
    Ok(response)
}

/// The `Link` header naming the page after the one that ends with `last`.
fn next_link(request: &PageRequest, last: uuid::Uuid) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("limit", &request.limit.to_string());
    query.append_pair("after", &last.to_string());
    if let Some(q) = &request.search {
        query.append_pair("q", q);
    }
    format!("</api/v1/staff?{}>; rel=\"next\"", query.finish())
}

/// Invites someone to the caller's district with a role: the account exists at once,
/// without a password; the answer's link (7 days, once) lets them choose one.
#[utoipa::path(post, path = "/api/v1/staff", tag = "staff", security(("bearer" = [])),
    request_body = InviteRequest,
    responses(
        (status = 201, description = "Invited; the link is in this answer only", body = PasswordLink),
        (status = 403, description = "Not a district administrator", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The email already has an account", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad email or name, or schools that do not fit the role", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn invite(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<InviteRequest>,
) -> Result<(StatusCode, axum::Json<PasswordLink>), ApiError> {
    let new = NewMember {
        email: body.email,
        display_name: body.display_name,
        role: body.role,
        schools: body.schools,
    };
    let invitation = state.services().invite(&caller, &new).await?;
    Ok((StatusCode::CREATED, axum::Json(invitation.into())))
}

/// Changes a staff member's role or schools, or disables or enables them. A disabled
/// member's sessions and tokens stop working at once. Not oneself.
#[utoipa::path(patch, path = "/api/v1/staff/{id}", tag = "staff", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The staff member's id")),
    request_body = StaffChange,
    responses(
        (status = 204, description = "Changed"),
        (status = 404, description = "No such staff member in the district", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The caller's own account", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn change_staff(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<uuid::Uuid>,
    Json(body): Json<StaffChange>,
) -> Result<StatusCode, ApiError> {
    let change = MemberChange {
        role: body.role,
        disabled: body.disabled,
        schools: body.schools,
    };
    state
        .services()
        .change_staff(&caller, StaffId::from_uuid(id), &change)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A one-time link (24 hours) with which a staff member chooses a new password; their
/// earlier reset links stop working, and their sessions end when it is used.
#[utoipa::path(post, path = "/api/v1/staff/{id}/password-reset", tag = "staff", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The staff member's id")),
    responses(
        (status = 201, description = "The link, in this answer only", body = PasswordLink),
        (status = 404, description = "No such staff member in the district", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The account is disabled", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn password_reset(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<uuid::Uuid>,
) -> Result<(StatusCode, axum::Json<PasswordLink>), ApiError> {
    let link = state
        .services()
        .password_reset(&caller, StaffId::from_uuid(id))
        .await?;
    Ok((StatusCode::CREATED, axum::Json(link.into())))
}

/// A district as operators see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DistrictView {
    pub id: DistrictId,
    pub name: String,
    pub timezone: String,
    pub default_language: String,
    pub created_at: DateTime<Utc>,
    pub suspended_at: Option<DateTime<Utc>>,
    pub schools: i64,
    pub students: i64,
    pub guardians: i64,
    pub staff: i64,
}

/// A district to create, with its first administrator (invited).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DistrictRequest {
    pub name: String,
    /// IANA time zone, e.g. `America/Chicago`.
    pub timezone: String,
    pub admin_email: String,
    pub admin_name: String,
}

/// A created district and its first administrator's invitation.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedDistrictView {
    pub id: DistrictId,
    pub name: String,
    pub invitation: PasswordLink,
}

/// What to change about a district.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DistrictChange {
    pub name: Option<String>,
    /// `true` suspends (its staff are refused at once), `false` resumes.
    pub suspended: Option<bool>,
}

/// Every district of the install (operators).
#[utoipa::path(get, path = "/api/v1/districts", tag = "districts", security(("bearer" = [])),
    responses(
        (status = 200, description = "The districts, oldest first, with their directory's size", body = [DistrictView]),
        (status = 403, description = "Not an operator of the install", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_districts(
    State(state): State<AppState>,
    Caller(caller): Caller,
) -> Result<axum::Json<Vec<DistrictView>>, ApiError> {
    let lines = state.services().districts(Operator::Staff(&caller)).await?;
    Ok(axum::Json(
        lines
            .into_iter()
            .map(|line| DistrictView {
                id: line.district.id,
                name: line.district.name,
                timezone: line.district.timezone,
                default_language: line.district.default_language,
                created_at: line.district.created_at,
                suspended_at: line.district.suspended_at,
                schools: line.counts.schools,
                students: line.counts.students,
                guardians: line.counts.guardians,
                staff: line.counts.staff,
            })
            .collect(),
    ))
}

/// Creates a district and invites its first district administrator (operators).
#[utoipa::path(post, path = "/api/v1/districts", tag = "districts", security(("bearer" = [])),
    request_body = DistrictRequest,
    responses(
        (status = 201, description = "Created; the administrator's link is in this answer only", body = CreatedDistrictView),
        (status = 403, description = "Not an operator of the install", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The administrator's email already has an account", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad name, time zone or email", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_district(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<DistrictRequest>,
) -> Result<(StatusCode, axum::Json<CreatedDistrictView>), ApiError> {
    let new = NewDistrict {
        name: &body.name,
        timezone: &body.timezone,
        admin_email: &body.admin_email,
        admin_name: &body.admin_name,
    };
    let created = state
        .services()
        .create_district(Operator::Staff(&caller), new)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedDistrictView {
            id: created.district.id,
            name: created.district.name,
            invitation: created.invitation.into(),
        }),
    ))
}

/// Renames, suspends or resumes a district (operators; not suspending their own).
#[utoipa::path(patch, path = "/api/v1/districts/{id}", tag = "districts", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The district's id")),
    request_body = DistrictChange,
    responses(
        (status = 204, description = "Changed"),
        (status = 403, description = "Not an operator of the install", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such district", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Suspending the caller's own district", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn change_district(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<uuid::Uuid>,
    Json(body): Json<DistrictChange>,
) -> Result<StatusCode, ApiError> {
    let operator = Operator::Staff(&caller);
    let district = DistrictId::from_uuid(id);
    let services = state.services();
    if let Some(name) = &body.name {
        services.rename_district(operator, district, name).await?;
    }
    if let Some(suspend) = body.suspended {
        services
            .suspend_district(operator, district, suspend)
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
