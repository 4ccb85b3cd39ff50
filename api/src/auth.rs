//! Who is calling: a staff member, proven by a bearer API token (web sessions come with
//! the web admin). Secrets are compared in constant time and never logged.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::Json;
use tidings_core::secret::ApiToken;
use tidings_core::Staff;

use crate::{ApiError, AppState};

/// How precisely a token's last use is kept: one write a minute at most per token.
const LAST_USED_GRANULARITY: chrono::Duration = chrono::Duration::minutes(1);

/// The authenticated staff member of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Staff);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let bearer = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(ApiError::Unauthorized)?;
        let token = ApiToken::parse(bearer.trim()).map_err(|_| ApiError::Unauthorized)?;
        let record = state
            .store
            .api_token(token.id)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let now = state.clock.now();
        let expired = record.expires_at.is_some_and(|at| at <= now);
        // An invitation's token only sets a password (`services::accounts`).
        let invitation = record.name == tidings_core::services::accounts::INVITATION_NAME;
        if !token.matches(&record.secret_hash)
            || record.revoked_at.is_some()
            || expired
            || invitation
        {
            return Err(ApiError::Unauthorized);
        }
        if record.district_suspended_at.is_some() {
            return Err(ApiError::DistrictSuspended);
        }
        // When the token was last used, to the minute: bookkeeping, never a reason to
        // refuse a request that is otherwise good.
        if record
            .last_used_at
            .is_none_or(|used| used <= now - LAST_USED_GRANULARITY)
        {
            if let Err(error) = state
                .store
                .token_used(record.id, now, LAST_USED_GRANULARITY)
                .await
            {
                tracing::warn!(token = %record.id, error = %error, "cannot record a token's use");
            }
        }
        Ok(Caller(record.staff))
    }
}

/// The staff member the credentials belong to.
#[utoipa::path(get, path = "/api/v1/me", tag = "staff",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller", body = tidings_core::Staff),
        (status = 401, description = "Missing or invalid credentials", body = crate::error::Problem,
         content_type = "application/problem+json"),
    ))]
pub async fn me(Caller(staff): Caller) -> Json<Staff> {
    Json(staff)
}
