//! Sending messages: `POST /api/v1/messages` resolves the audience within what the sender
//! may message, plans one delivery per guardian and channel, and writes the message, its
//! deliveries and their log entries in one transaction. `Idempotency-Key` makes a retried
//! request replay the first answer instead of sending twice.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tidings_core::audience::{Audience, MAX_REFERENCES};
use tidings_core::delivery::Actor;
use tidings_core::fanout::{self, Draft, Translation};
use tidings_core::store::{MessageScope, MessageSummary, Scope, SendRefusal};
use tidings_core::time::now;
use tidings_core::{Channel, DeliveryGuarantee, MessageId, MessageKind, Role, Staff};
use uuid::Uuid;

use crate::extract::{Json, Path, Query};
use crate::idempotency::idempotent;
use crate::{ApiError, AppState, Caller};

/// Longest subject, in characters.
pub const MAX_SUBJECT: usize = 200;
/// Longest body, in characters (about ten SMS segments).
pub const MAX_BODY: usize = 1_600;
/// The longest a message may wait for a channel to reach a guardian before the next is tried.
pub const MAX_FALLBACK_MINUTES: u32 = 24 * 60;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// `{"district": true}` or lists of ids or sourcedIds: `schools`, `grades`, `classes`,
    /// `students`, `guardians`.
    #[schema(value_type = Object)]
    pub audience: Audience,
    /// Any of `sms`, `email`, `push`.
    pub channels: Vec<String>,
    /// `emergency`, `attendance` or `general`.
    pub kind: String,
    pub subject: String,
    pub body: String,
    /// Other languages: `{"es": {"subject": …, "body": …}}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub translations: BTreeMap<String, Translation>,
    #[serde(default)]
    pub requires_ack: bool,
    /// `at_least_once` (default; always for emergencies) or `at_most_once`.
    pub delivery: Option<String>,
    /// When to send (RFC 3339, within a year); now when not given.
    pub scheduled_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When acknowledgments are due (needs `requires_ack`).
    pub ack_deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// Fall back to the guardian's next channel — the app, then SMS, then email — when a
    /// delivery fails, or has not reached them this many minutes after it went out
    /// (1–1440). Not given: no fallback.
    pub fallback_after_minutes: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Sent {
    pub id: MessageId,
    /// Guardians reached.
    pub recipients: usize,
    /// Deliveries created, one per guardian and channel.
    pub deliveries: usize,
    /// Of those, the ones that will not be sent (no address, opted out), by reason.
    pub suppressed: BTreeMap<String, usize>,
    /// Deliveries that wait: for `scheduled_at`, or for the end of quiet hours.
    pub deferred: usize,
    /// Standby deliveries on guardians' next channels (with `fallback_after_minutes`):
    /// sent only to those the channel before does not reach.
    pub standby: usize,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::InvalidBody(message.into())
}

fn text(field: &str, value: &str, max: usize) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if value.chars().count() > max {
        return Err(invalid(format!("{field} is longer than {max} characters")));
    }
    Ok(value.to_owned())
}

fn draft(staff: &Staff, request: SendMessage) -> Result<Draft, ApiError> {
    let at = now();
    if let Some(when) = request.scheduled_at {
        if when < at - chrono::Duration::minutes(1) {
            return Err(invalid("scheduled_at is in the past"));
        }
        if when > at + chrono::Duration::days(366) {
            return Err(invalid("scheduled_at is more than a year away"));
        }
    }
    if let Some(deadline) = request.ack_deadline {
        if !request.requires_ack {
            return Err(invalid("ack_deadline needs requires_ack"));
        }
        if deadline <= request.scheduled_at.unwrap_or(at) {
            return Err(invalid("ack_deadline is before the message goes out"));
        }
    }
    if request
        .fallback_after_minutes
        .is_some_and(|m| !(1..=MAX_FALLBACK_MINUTES).contains(&m))
    {
        return Err(invalid(format!(
            "fallback_after_minutes must be between 1 and {MAX_FALLBACK_MINUTES}"
        )));
    }
    let kind: MessageKind = request
        .kind
        .parse()
        .map_err(|e: tidings_core::UnknownName| invalid(e.to_string()))?;
    let channels = request
        .channels
        .iter()
        .map(|c| c.parse::<Channel>().map_err(|e| invalid(e.to_string())))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if channels.is_empty() {
        return Err(invalid("channels is empty"));
    }
    let guarantee = match request.delivery.as_deref() {
        None => DeliveryGuarantee::AtLeastOnce,
        Some(g) => g
            .parse()
            .map_err(|e: tidings_core::UnknownName| invalid(e.to_string()))?,
    };
    let audience = request.audience;
    if audience.is_empty() {
        return Err(invalid("audience names no one"));
    }
    let lists = [
        &audience.schools,
        &audience.grades,
        &audience.classes,
        &audience.students,
        &audience.guardians,
    ];
    if lists.iter().any(|l| l.len() > MAX_REFERENCES) {
        return Err(invalid(format!(
            "an audience list holds more than {MAX_REFERENCES} references"
        )));
    }
    let mut translations = BTreeMap::new();
    for (language, t) in request.translations {
        let subject = text(
            &format!("translations.{language}.subject"),
            &t.subject,
            MAX_SUBJECT,
        )?;
        let body = text(&format!("translations.{language}.body"), &t.body, MAX_BODY)?;
        translations.insert(language, Translation { subject, body });
    }
    let audience_json = serde_json::json!({
        "district": audience.district, "schools": audience.schools, "grades": audience.grades,
        "classes": audience.classes, "students": audience.students, "guardians": audience.guardians,
    });
    Ok(Draft {
        district_id: staff.district_id,
        author_id: staff.id,
        kind,
        channels,
        subject: text("subject", &request.subject, MAX_SUBJECT)?,
        body: text("body", &request.body, MAX_BODY)?,
        translations,
        requires_ack: request.requires_ack,
        guarantee,
        audience: audience_json,
        renotify_of: None,
        scheduled_at: request.scheduled_at,
        ack_deadline: request.ack_deadline,
        fallback_after: request
            .fallback_after_minutes
            .map(|m| chrono::Duration::minutes(i64::from(m))),
    })
}

async fn send(
    state: &AppState,
    staff: &Staff,
    body: &[u8],
) -> Result<(StatusCode, Sent), ApiError> {
    if staff.role == Role::Viewer {
        return Err(ApiError::Forbidden);
    }
    let request: SendMessage = crate::extract::json_body(body)?;
    let audience = request.audience.clone();
    let draft = draft(staff, request)?;
    deliver(state, staff, draft, &audience).await
}

/// Resolves the audience, checks the district's quotas, and writes the message with its
/// deliveries and log entries, a chunk of guardians at a time in one transaction.
async fn deliver(
    state: &AppState,
    staff: &Staff,
    draft: Draft,
    audience: &Audience,
) -> Result<(StatusCode, Sent), ApiError> {
    let district = state
        .store
        .district(staff.district_id)
        .await?
        .ok_or(ApiError::Forbidden)?;
    // Quotas keep one district's newsletters from swamping everyone's providers; they never
    // hold back an emergency.
    let limited = draft.kind != MessageKind::Emergency;
    let mut message = fanout::header(&draft, state.partitions);
    if limited {
        message.hourly_quota = district
            .max_messages_per_hour
            .and_then(|m| u32::try_from(m).ok());
    }
    let max_recipients = district
        .max_recipients_per_message
        .and_then(|m| usize::try_from(m).ok())
        .filter(|_| limited);
    let default_language = district.default_language.clone();
    let started = now();
    let plan = move |members: &[tidings_core::audience::AudienceMember]| {
        fanout::recipients(&draft, &default_language, members, started)
    };
    let summary = match state
        .store
        .send_message(
            &message,
            &Scope::of(staff),
            audience,
            max_recipients,
            &plan,
            tidings_core::store::SEND_CHUNK,
            now(),
        )
        .await?
    {
        Ok(summary) => summary,
        Err(SendRefusal::Audience(problems)) if !problems.forbidden.is_empty() => {
            return Err(ApiError::ForbiddenAudience(problems.forbidden.join(", ")))
        }
        Err(SendRefusal::Audience(problems)) => {
            return Err(ApiError::UnknownAudience(problems.unknown.join(", ")))
        }
        Err(SendRefusal::NoOne) => return Err(ApiError::EmptyAudience(
            "no guardian on file is linked to the students, classes, schools or guardians named"
                .into(),
        )),
        Err(SendRefusal::TooMany(reached)) => {
            return Err(ApiError::QuotaExceeded(format!(
                "this message would reach {reached} guardians; the district allows {} per message",
                max_recipients.unwrap_or_default()
            )))
        }
    };
    let detail = serde_json::json!({
        "message_id": message.id, "kind": message.kind, "recipients": summary.recipients, "deliveries": summary.deliveries,
    });
    state
        .store
        .audit(
            staff.district_id,
            &Actor::staff(staff.id),
            "message.send",
            detail,
            now(),
        )
        .await?;
    tracing::info!(message_id = %message.id, recipients = summary.recipients, deliveries = summary.deliveries, "message accepted");
    let sent = Sent {
        id: message.id,
        recipients: summary.recipients,
        deliveries: summary.deliveries,
        suppressed: summary.suppressed,
        deferred: summary.deferred,
        standby: summary.standby,
    };
    Ok((StatusCode::CREATED, sent))
}

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
    idempotent(&state, &staff, "", &headers, &body, async || {
        let (status, sent) = send(&state, &staff, &body).await?;
        Ok((status, serde_json::to_vec(&sent).unwrap_or_default()))
    })
    .await
}

pub(crate) fn message_scope(staff: &Staff) -> MessageScope {
    match staff.role {
        Role::DistrictAdmin => MessageScope::District(staff.district_id),
        _ => MessageScope::Author(staff.district_id, staff.id),
    }
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
    if staff.role == Role::Viewer {
        return Err(ApiError::Forbidden);
    }
    let actor = Actor::staff(staff.id);
    let outcome = state
        .store
        .cancel_message(
            &message_scope(&staff),
            MessageId::from_uuid(id),
            &actor,
            now(),
        )
        .await?
        .ok_or(ApiError::NotFound)?;
    let detail = serde_json::json!({ "message_id": id, "cancelled": outcome.cancelled, "already_sent": outcome.already_sent });
    state
        .store
        .audit(staff.district_id, &actor, "message.cancel", detail, now())
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
    idempotent(
        &state,
        &staff,
        &format!(":renotify:{id}"),
        &headers,
        &body,
        async || {
            if staff.role == Role::Viewer {
                return Err(ApiError::Forbidden);
            }
            let original = MessageId::from_uuid(id);
            let content = state
                .store
                .message_content(&message_scope(&staff), original)
                .await?
                .ok_or(ApiError::NotFound)?;
            if !content.requires_ack {
                return Err(invalid(
                    "this message asked for no acknowledgment: there is no one to remind",
                ));
            }
            let pending = state.store.pending_guardians(original).await?;
            if pending.is_empty() {
                return Err(invalid("every recipient has acknowledged"));
            }
            let channels = match &request.channels {
                None => content.channels.iter().copied().collect(),
                Some(asked) => asked
                    .iter()
                    .map(|c| c.parse::<Channel>().map_err(|e| invalid(e.to_string())))
                    .collect::<Result<BTreeSet<_>, _>>()?,
            };
            if channels.is_empty() {
                return Err(invalid("channels is empty"));
            }
            let audience = Audience {
                guardians: pending.iter().map(Uuid::to_string).collect(),
                ..Audience::default()
            };
            let draft = Draft {
                district_id: staff.district_id,
                author_id: staff.id,
                kind: content.kind,
                channels,
                subject: content.subject,
                body: content.body,
                translations: serde_json::from_value(content.translations).unwrap_or_default(),
                requires_ack: true,
                guarantee: content.guarantee,
                audience: serde_json::json!({ "renotify_of": id, "guardians": pending.len() }),
                renotify_of: Some(original),
                scheduled_at: None,
                ack_deadline: None,
                fallback_after: content.fallback_after,
            };
            let (status, sent) = deliver(&state, &staff, draft, &audience).await?;
            Ok((status, serde_json::to_vec(&sent).unwrap_or_default()))
        },
    )
    .await
}
