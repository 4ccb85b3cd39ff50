//! The HTTP surface of Tidings: health, the staff REST API under `/api/v1` and its
//! OpenAPI document. Handlers parse input into core types, call the store, and return
//! `Result<_, ApiError>`; they hold no SQL and no provider logic.

mod auth;
pub mod error;
mod health;
mod openapi;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use tidings_core::store::Store;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

pub use auth::Caller;
pub use error::ApiError;
pub use openapi::ApiDoc;

/// Largest request body accepted anywhere (roster zips get their own limit).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
}

/// The whole router: operations endpoints, the staff API, and problem+json for
/// everything else.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(
            "/api/v1/openapi.json",
            get(|| async { Json(ApiDoc::openapi()) }),
        )
        .route("/api/v1/me", get(auth::me))
        .fallback(|| async { ApiError::NotFound })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` completes, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
