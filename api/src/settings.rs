//! District settings over the API (district administrators): single sign-on with OpenID
//! Connect. The client secret goes in and never comes out: reads say only that one is
//! kept. Every change is audited by the settings service.

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tidings_core::retention::{self, Retention};
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

/// One kind of record the district keeps for a while.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeptView {
    /// Days kept now: as set, or the default.
    pub days: u32,
    /// As the district set it; `null` keeps the default.
    pub set: Option<u32>,
    pub default_days: u32,
    pub minimum_days: u32,
    /// What it covers.
    pub covers: &'static str,
}

/// How long the district keeps its records; older ones are purged (every hour, and on
/// request).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RetentionView {
    pub messages_days: KeptView,
    pub replies_days: KeptView,
    pub callbacks_days: KeptView,
    pub audit_days: KeptView,
}

impl From<Retention> for RetentionView {
    fn from(r: Retention) -> Self {
        let view = |kind: retention::Kept, set: Option<u32>| KeptView {
            days: r.days(kind),
            set,
            default_days: kind.default_days,
            minimum_days: kind.minimum_days,
            covers: kind.what,
        };
        Self {
            messages_days: view(retention::MESSAGES, r.messages_days),
            replies_days: view(retention::REPLIES, r.replies_days),
            callbacks_days: view(retention::CALLBACKS, r.callbacks_days),
            audit_days: view(retention::AUDIT, r.audit_days),
        }
    }
}

/// The district's retention.
#[utoipa::path(get, path = "/api/v1/settings/retention", tag = "settings", security(("bearer" = [])),
    responses(
        (status = 200, description = "Days kept of each kind of record, with defaults and minimums", body = RetentionView),
        (status = 403, description = "Not a district administrator", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_retention(
    State(state): State<AppState>,
    Caller(staff): Caller,
) -> Result<axum::Json<RetentionView>, ApiError> {
    let retention = state.services().own_retention(&staff).await?;
    Ok(axum::Json(retention.into()))
}

/// Sets the district's retention (audited); what is older goes at the next purge.
#[utoipa::path(put, path = "/api/v1/settings/retention", tag = "settings", security(("bearer" = [])),
    request_body = Retention,
    responses(
        (status = 200, description = "Saved", body = RetentionView),
        (status = 403, description = "Not a district administrator", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A value under its minimum", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_retention(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Json(retention): Json<Retention>,
) -> Result<axum::Json<RetentionView>, ApiError> {
    let services = state.services();
    services.set_own_retention(&staff, retention).await?;
    Ok(axum::Json(services.own_retention(&staff).await?.into()))
}

/// What to purge.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// Only count what would go.
    #[serde(default)]
    pub dry_run: bool,
}

/// Records taken away (or, in a dry run, that would be).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurgedView {
    pub messages: u64,
    pub recipients: u64,
    pub deliveries: u64,
    pub replies: u64,
    pub audit_entries: u64,
}

/// What a purge did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PurgeView {
    pub dry_run: bool,
    pub purged: PurgedView,
    /// Transactions it took, each short (0 in a dry run).
    pub batches: u32,
}

/// Purges now what the district keeps past its retention, in short batches (audited as
/// `district.purge`), or with `dry_run` counts what would go.
#[utoipa::path(post, path = "/api/v1/settings/retention/purge", tag = "settings", security(("bearer" = [])),
    request_body = PurgeRequest,
    responses(
        (status = 200, description = "What went, or would go", body = PurgeView),
        (status = 403, description = "Not a district administrator", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn purge(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Json(body): Json<PurgeRequest>,
) -> Result<axum::Json<PurgeView>, ApiError> {
    let report = state.services().purge_own(&staff, body.dry_run).await?;
    let p = report.purged;
    Ok(axum::Json(PurgeView {
        dry_run: report.dry_run,
        purged: PurgedView {
            messages: p.messages,
            recipients: p.recipients,
            deliveries: p.deliveries,
            replies: p.replies,
            audit_entries: p.audit_entries,
        },
        batches: report.batches,
    }))
}
