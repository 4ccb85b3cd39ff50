//! API tokens over the API: each staff member lists, creates and revokes their own; a
//! district administrator lists and revokes every token of the district. The secret is
//! in the creation's answer only. Every creation and revocation is audited by the tokens
//! service.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidings_core::delivery::Actor;
use tidings_core::store::ApiTokenView;
use tidings_core::ApiTokenId;

use crate::extract::Json;
use crate::{ApiError, AppState, Caller};

/// A token to create for the caller.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for ("attendance system"), 1 to 100 characters.
    pub name: String,
    /// When it stops working; it never does without one.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A created token: its secret, shown this once, and how it is listed from now on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The bearer token (`Authorization: Bearer <token>`). Tidings keeps only its hash:
    /// it cannot be shown again.
    pub token: String,
    #[serde(flatten)]
    pub view: ApiTokenView,
}

/// The API tokens the caller may see: a district administrator's district, everyone
/// else their own. Revoked and expired tokens are listed with their dates.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens", security(("bearer" = [])),
    responses(
        (status = 200, description = "The tokens, newest first, without their secrets", body = [ApiTokenView]),
    ))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Caller(staff): Caller,
) -> Result<axum::Json<Vec<ApiTokenView>>, ApiError> {
    Ok(axum::Json(state.services().api_tokens(&staff).await?))
}

/// Creates an API token of the caller's.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", security(("bearer" = [])),
    request_body = NewToken,
    responses(
        (status = 201, description = "Created; the answer holds the secret, once", body = CreatedToken),
        (status = 422, description = "The name is empty, too long or reserved, or the expiry is not in the future", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_token(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Json(body): Json<NewToken>,
) -> Result<(StatusCode, axum::Json<CreatedToken>), ApiError> {
    let created = state
        .services()
        .create_api_token(&Actor::staff(staff.id), &staff, &body.name, body.expires_at)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedToken {
            token: created.token.reveal(),
            view: created.view,
        }),
    ))
}

/// Revokes a token the caller may see; it stops working at once. Revoking a revoked
/// token again changes nothing.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "The token's id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such token the caller may see", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<uuid::Uuid>,
) -> Result<StatusCode, ApiError> {
    state
        .services()
        .revoke_api_token(&staff, ApiTokenId::from_uuid(id))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
