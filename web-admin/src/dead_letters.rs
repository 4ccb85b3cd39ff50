//! Dead letters: deliveries that failed for good (permanent provider errors, retries
//! spent, at-most-once sends in doubt), newest first, each with a Replay button.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use tidings_api::AppState;
use tidings_core::delivery::Delivery;
use tidings_core::services::message_scope;
use tidings_core::services::ServiceError;
use tidings_core::{DeliveryId, Role};
use uuid::Uuid;

use crate::form::{said_in, Posted};
use crate::messages::{failed, html, Frame};
use crate::session::SignedIn;

/// Dead letters shown.
const SHOWN: u32 = 200;

#[derive(Template)]
#[template(path = "dead_letters.html")]
struct DeadLettersPage {
    frame: Frame,
    may_replay: bool,
    deliveries: Vec<Delivery>,
    error: Option<String>,
}

async fn page(
    state: &AppState,
    signed_in: &SignedIn,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    match state
        .store
        .dead_letters(&message_scope(&signed_in.staff), None, SHOWN)
        .await
    {
        Ok(deliveries) => html(
            status,
            DeadLettersPage {
                frame: Frame::of(signed_in),
                may_replay: signed_in.staff.role != Role::Viewer,
                deliveries,
                error,
            },
        ),
        Err(error) => failed(error),
    }
}

pub async fn list(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    page(&state, &signed_in, StatusCode::OK, None).await
}

pub async fn replay(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Posted { signed_in, .. }: Posted,
) -> Response {
    match state
        .services()
        .replay_dead_letter(&signed_in.staff, DeliveryId::from_uuid(id))
        .await
    {
        Ok(_) => Redirect::to("/dead-letters").into_response(),
        Err(ServiceError::Refused(refusal)) => {
            let (status, error) = said_in(&refusal, signed_in.lang);
            page(&state, &signed_in, status, Some(error)).await
        }
        Err(error) => failed(error),
    }
}
