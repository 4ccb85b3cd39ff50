//! One delivery with its trail, and the dead letters: deliveries that failed for good,
//! which staff can put back in the queue once the cause is fixed.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use tidings_core::delivery::{Delivery, DeliveryEventRecord};
use tidings_core::store::dispatch::AttemptRecord;
use tidings_core::DeliveryId;
use uuid::Uuid;

use crate::extract::{Path, Query};
use crate::messages::message_scope;
use crate::{ApiError, AppState, Caller};

/// A delivery with every transition it went through and every provider call made for it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub events: Vec<DeliveryEventRecord>,
    pub attempts: Vec<AttemptRecord>,
}

/// A delivery, its transitions (who moved it, when, why) and its provider calls.
#[utoipa::path(get, path = "/api/v1/deliveries/{id}", tag = "deliveries", security(("bearer" = [])), params(("id" = Uuid, Path, description = "The delivery")), 
    responses(
        (status = 200, description = "The delivery, its events and attempts", body = DeliveryDetail),
        (status = 404, description = "No such delivery the caller may see", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_delivery(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<DeliveryDetail>, ApiError> {
    let id = DeliveryId::from_uuid(id);
    let (delivery, attempts) = state
        .store
        .delivery_attempts(&message_scope(&staff), id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let events = state.store.delivery_events(id).await?;
    Ok(axum::Json(DeliveryDetail {
        delivery,
        events,
        attempts,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLettersQuery {
    /// The `next_before` of the previous page.
    pub before: Option<Uuid>,
    /// Rows per page (default 50, at most 500).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetterPage {
    pub items: Vec<Delivery>,
    pub next_before: Option<Uuid>,
}

/// Deliveries that failed for good (permanent provider errors, retries spent, at-most-once
/// sends in doubt), newest first, with the last error. District administrators see the
/// district's; other staff those of their own messages.
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "deliveries", params(DeadLettersQuery), security(("bearer" = [])),
    responses((status = 200, description = "One page, newest first", body = DeadLetterPage)))]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Query(query): Query<DeadLettersQuery>,
) -> Result<axum::Json<DeadLetterPage>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let items = state
        .store
        .dead_letters(
            &message_scope(&staff),
            query.before.map(DeliveryId::from_uuid),
            limit,
        )
        .await?;
    let next_before = (items.len() == limit as usize)
        .then(|| items.last().map(|d| *d.id.as_uuid()))
        .flatten();
    Ok(axum::Json(DeadLetterPage { items, next_before }))
}

/// Puts a failed delivery back in the queue: it is sent again at once, with the whole
/// retry schedule ahead of it, and the replay is in the audit log.
#[utoipa::path(post, path = "/api/v1/dead-letters/{id}/replay", tag = "deliveries", security(("bearer" = [])), params(("id" = Uuid, Path, description = "The failed delivery")), 
    responses(
        (status = 200, description = "Requeued; the delivery as it is now", body = Delivery),
        (status = 404, description = "No such delivery the caller may see", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The delivery is not failed", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn replay_dead_letter(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Delivery>, ApiError> {
    let delivery = state
        .services()
        .replay_dead_letter(&staff, DeliveryId::from_uuid(id))
        .await?;
    Ok(axum::Json(delivery))
}
