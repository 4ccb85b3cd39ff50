//! Liveness and readiness for load balancers and orchestrators.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use tidings_core::store::Backend;
use utoipa::ToSchema;

use crate::{ApiError, AppState};

#[derive(Debug, Serialize, ToSchema)]
pub struct Alive {
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    pub status: &'static str,
    #[schema(value_type = String, example = "sqlite")]
    pub backend: Backend,
    pub migrations: usize,
}

/// The process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Alive)))]
pub async fn healthz() -> Json<Alive> {
    Json(Alive { status: "ok" })
}

/// The database answers and every migration this binary carries is applied.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Ready),
        (status = 503, description = "Database unreachable or migrations missing", body = crate::error::Problem,
         content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let readiness = state.store.readiness().await.map_err(|error| {
        tracing::warn!(error = %tidings_core::store::error_chain(&error), "readiness check failed");
        ApiError::NotReady("the database does not answer".into())
    })?;
    if !readiness.is_ready() {
        return Err(ApiError::NotReady(format!(
            "{} of {} migrations applied; run `tidings migrate`",
            readiness.applied_migrations, readiness.expected_migrations
        )));
    }
    Ok(Json(Ready {
        status: "ready",
        backend: readiness.backend,
        migrations: readiness.applied_migrations,
    }))
}
