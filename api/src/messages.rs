//! Messages over HTTP: sending, reminding and recalling translate requests to the
//! application services (`tidings_core::services`) and their replies back; reading the
//! reports goes to the store. `Idempotency-Key` makes a retried request replay the first
//! answer instead of sending twice.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
pub use tidings_core::services::message_scope;
use tidings_core::services::renotify::Renotify as RenotifyRequest;
pub use tidings_core::services::send::{SendMessage, Sent};
use tidings_core::store::{MessageScope, MessageSummary};
use tidings_core::{MessageId, Role};
use uuid::Uuid;

use crate::extract::{Json, Path, Query};
use crate::idempotency::{once, respond, words};
use crate::{ApiError, AppState, Caller};

/// Sends a message to an audience, or replays the answer to an earlier request with the
/// same `Idempotency-Key`.
#[utoipa::path(post, path = "/api/v1/messages", tag = "messages", security(("bearer" = [])),
    request_body = SendMessage,
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeats with the same key and body replay the first answer; kept 24 h, per staff member")),
    responses(
        (status = 201, description = "Accepted: the message and every delivery are on the log", body = Sent),
        (status = 403, description = "The audience reaches beyond what the sender may message", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "A request with this Idempotency-Key is still being handled", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid body, unknown audience references, an audience that reaches no guardian, or an Idempotency-Key reused for a different body", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn send_message(
    State(state): State<AppState>,
    Caller(staff): Caller,
    headers: HeaderMap,
    crate::extract::Body(body): crate::extract::Body,
) -> Result<Response, ApiError> {
    let once = once(&headers, "", &body)?;
    let request: SendMessage = crate::extract::json_body(&body)?;
    let reply = state
        .services()
        .send_message(&staff, request, once, &words(StatusCode::CREATED))
        .await?;
    Ok(respond(StatusCode::CREATED, reply))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// The `next_before` of the previous page.
    pub before: Option<Uuid>,
    /// Rows per page (default 50, at most 500).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagePage {
    pub items: Vec<tidings_core::store::MessageListItem>,
    pub next_before: Option<Uuid>,
}

/// Messages the caller may see, newest first.
#[utoipa::path(get, path = "/api/v1/messages", tag = "messages", params(MessagesQuery), security(("bearer" = [])),
    responses((status = 200, description = "One page, newest first", body = MessagePage)))]
pub async fn list_messages(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Query(query): Query<MessagesQuery>,
) -> Result<axum::Json<MessagePage>, ApiError> {
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let items = state
        .store
        .messages(&message_scope(&staff), query.before, limit)
        .await?;
    let next_before = (items.len() == limit as usize)
        .then(|| items.last().map(|m| *m.id.as_uuid()))
        .flatten();
    Ok(axum::Json(MessagePage { items, next_before }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RecipientsQuery {
    /// `false`: only those who have not acknowledged; `true`: only those who have.
    pub acked: Option<bool>,
    pub after: Option<Uuid>,
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecipientPage {
    pub items: Vec<tidings_core::store::RecipientView>,
    pub next_after: Option<Uuid>,
}

/// The guardians a message went to, e.g. `?acked=false` for who still has to acknowledge.
#[utoipa::path(get, path = "/api/v1/messages/{id}/recipients", tag = "messages", params(("id" = Uuid, Path, description = "The message"), RecipientsQuery), security(("bearer" = [])),
    responses(
        (status = 200, description = "One page of recipients", body = RecipientPage),
        (status = 404, description = "No such message the caller may see", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_recipients(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<Uuid>,
    Query(query): Query<RecipientsQuery>,
) -> Result<axum::Json<RecipientPage>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let items = state
        .store
        .recipients(
            &message_scope(&staff),
            MessageId::from_uuid(id),
            query.acked,
            query.after,
            limit,
        )
        .await?
        .ok_or(ApiError::NotFound)?;
    let next_after = (items.len() == limit as usize)
        .then(|| items.last().map(|r| r.id))
        .flatten();
    Ok(axum::Json(RecipientPage { items, next_after }))
}

/// Recalls a message: deliveries not yet handed to a provider are cancelled; those
/// already sent cannot be unsent and are counted in `already_sent`.
#[utoipa::path(post, path = "/api/v1/messages/{id}/cancel", tag = "messages", security(("bearer" = [])), params(("id" = Uuid, Path, description = "The message")), 
    responses(
        (status = 200, description = "What was cancelled and what had already gone", body = tidings_core::store::CancelOutcome),
        (status = 404, description = "No such message the caller may see", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel_message(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<tidings_core::store::CancelOutcome>, ApiError> {
    let outcome = state
        .services()
        .cancel(&staff, MessageId::from_uuid(id))
        .await?;
    Ok(axum::Json(outcome))
}

/// A message with its delivery counts by channel and state. District administrators see
/// every message of the district; other staff the messages they sent.
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages", security(("bearer" = [])), params(("id" = Uuid, Path, description = "The message")), 
    responses(
        (status = 200, description = "The message and its counts", body = MessageSummary),
        (status = 404, description = "No such message the caller may see", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_message(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<MessageSummary>, ApiError> {
    let scope = match staff.role {
        Role::DistrictAdmin => MessageScope::District(staff.district_id),
        _ => MessageScope::Author(staff.district_id, staff.id),
    };
    let summary = state
        .store
        .message_summary(&scope, MessageId::from_uuid(id))
        .await?;
    summary.map(axum::Json).ok_or(ApiError::NotFound)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Renotify {
    /// Channels for the reminder; the original message's when not given.
    pub channels: Option<Vec<String>>,
}

/// Sends the message again, as a new message linked to it, to the guardians who have not
/// acknowledged it yet (only for messages that asked for acknowledgment).
#[utoipa::path(post, path = "/api/v1/messages/{id}/renotify", tag = "messages", security(("bearer" = [])),
    request_body = Renotify,
    params(("id" = Uuid, Path, description = "The message"), ("Idempotency-Key" = Option<String>, Header, description = "As for sending")),
    responses(
        (status = 201, description = "The reminder", body = Sent),
        (status = 404, description = "No such message the caller may see", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The message asked for no acknowledgment, or everyone acknowledged", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn renotify(
    State(state): State<AppState>,
    Caller(staff): Caller,
    Path(id): Path<Uuid>,
    headers: HeaderMap,
    Json(request): Json<Renotify>,
) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(&request.channels).unwrap_or_default();
    let operation = format!(":renotify:{id}");
    let once = once(&headers, &operation, &body)?;
    let request = RenotifyRequest {
        channels: request.channels,
    };
    let reply = state
        .services()
        .renotify(
            &staff,
            MessageId::from_uuid(id),
            request,
            once,
            &words(StatusCode::CREATED),
        )
        .await?;
    Ok(respond(StatusCode::CREATED, reply))
}
