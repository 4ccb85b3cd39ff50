//! Texts guardians sent to the district's numbers: their STOP/START/HELP and their
//! replies, for staff to read, scoped like the directory (a teacher sees the guardians of
//! the classes they teach).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tidings_core::store::{ReplyView, Scope};
use uuid::Uuid;

use crate::extract::Query;
use crate::{ApiError, AppState, Caller};

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RepliesQuery {
    /// The `next_before` of the previous page.
    pub before: Option<Uuid>,
    /// Rows per page (default 50, at most 500).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RepliesPage {
    pub items: Vec<ReplyView>,
    pub next_before: Option<Uuid>,
}

/// Texts from the guardians the caller may see, newest first.
#[utoipa::path(get, path = "/api/v1/replies", tag = "guardians", params(RepliesQuery), security(("bearer" = [])),
    responses((status = 200, description = "One page, newest first: id, guardian_id, guardian_name, from, body, keyword (stop, start, help or null), received_at", body = RepliesPage)))]
pub async fn list_replies(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Query(query): Query<RepliesQuery>,
) -> Result<axum::Json<RepliesPage>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let items = state
        .store
        .replies(&Scope::of(&staff), query.before, limit)
        .await?;
    let next_before = (items.len() == limit as usize)
        .then(|| items.last().map(|r| r.id))
        .flatten();
    Ok(axum::Json(RepliesPage { items, next_before }))
}
