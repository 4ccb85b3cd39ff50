//! District settings over the API (district administrators): single sign-on with OpenID
//! Connect. The client secret goes in and never comes out: reads say only that one is
//! kept. Every change is audited by the settings service.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tidings_core::services::settings::SsoChange;
use tidings_core::sso::SsoSettings;

use crate::extract::Json;
use crate::{ApiError, AppState, Caller};

/// A district's single sign-on: the identity provider and the client Tidings is
/// registered as there. Register `<public_url>/sign-in/oidc/callback` as its redirect URI.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SsoRequest {
    /// The provider's issuer: `https://accounts.google.com` (Google Workspace),
    /// `https://login.microsoftonline.com/<tenant id>/v2.0` (Microsoft Entra).
    pub issuer: String,
    pub client_id: String,
    /// The client secret; leave it out to keep the one already set.
    pub client_secret: Option<String>,
}

/// Whether the district's staff sign in with single sign-on, and with what.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SsoState {
    pub enabled: bool,
    /// The settings when enabled; the client secret is never returned.
    pub settings: Option<SsoSettings>,
}

/// The district's single sign-on.
#[utoipa::path(get, path = "/api/v1/settings/sso", tag = "settings", security(("bearer" = [])),
    responses(
        (status = 200, description = "Whether single sign-on is on, and its settings without the secret", body = SsoState),
    ))]
pub async fn get_sso(
    State(state): State<AppState>,
    Caller(staff): Caller,
) -> Result<axum::Json<SsoState>, ApiError> {
    let settings = state.services().district_sso(&staff).await?;
    Ok(axum::Json(SsoState {
        enabled: settings.is_some(),
        settings,
    }))
}

/// Turns single sign-on on, or changes it.
#[utoipa::path(put, path = "/api/v1/settings/sso", tag = "settings", security(("bearer" = [])),
    request_body = SsoRequest,
    responses(
        (status = 200, description = "Saved", body = SsoSettings),
        (status = 422, description = "The issuer is not an https URL, a value is empty, or no client secret was ever given", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_sso(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Json(body): Json<SsoRequest>,
) -> Result<axum::Json<SsoSettings>, ApiError> {
    let change = SsoChange {
        issuer: &body.issuer,
        client_id: &body.client_id,
        client_secret: body.client_secret.as_deref(),
    };
    Ok(axum::Json(
        state.services().set_district_sso(&staff, &change).await?,
    ))
}

/// Turns single sign-on off; the kept client secret is deleted.
#[utoipa::path(delete, path = "/api/v1/settings/sso", tag = "settings", security(("bearer" = [])),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "The district has no single sign-on", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_sso(
    State(state): State<AppState>,
    Caller(staff): Caller,
) -> Result<StatusCode, ApiError> {
    state.services().remove_district_sso(&staff).await?;
    Ok(StatusCode::NO_CONTENT)
}
