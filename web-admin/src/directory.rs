//! The guardian directory: search guardians, see one with their students, contact points
//! and opt-outs, and (administrators) add or deactivate an address and record or revoke
//! an opt-out — the same services, and the same audit, as the API's.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tidings_api::AppState;
use tidings_core::services::{Refusal, ServiceError};
use tidings_core::store::{GuardianDetail, GuardianView, PageRequest, Scope};
use tidings_core::{ContactPointId, Role};
use uuid::Uuid;

use crate::form::{said, Posted};
use crate::messages::{failed, html, Frame};
use crate::session::SignedIn;

/// Guardians per page.
const PAGE: u32 = 50;

#[derive(Debug, Deserialize)]
pub struct Search {
    q: Option<String>,
    after: Option<Uuid>,
}

#[derive(Template)]
#[template(path = "guardians.html")]
struct GuardiansPage {
    frame: Frame,
    q: String,
    guardians: Vec<GuardianView>,
    next: Option<Uuid>,
}

pub async fn guardians(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(search): Query<Search>,
) -> Response {
    let q = search.q.unwrap_or_default().trim().to_owned();
    let page = PageRequest {
        after: search.after,
        limit: PAGE,
        search: (!q.is_empty()).then(|| q.clone()),
        ..PageRequest::default()
    };
    match state
        .store
        .guardians(&Scope::of(&signed_in.staff), &page)
        .await
    {
        Ok(guardians) => {
            let next = (guardians.len() == PAGE as usize)
                .then(|| guardians.last().map(|g| g.id))
                .flatten();
            html(
                StatusCode::OK,
                GuardiansPage {
                    frame: Frame::of(&signed_in),
                    q,
                    guardians,
                    next,
                },
            )
        }
        Err(error) => failed(error),
    }
}

#[derive(Template)]
#[template(path = "guardian.html")]
struct GuardianPage {
    frame: Frame,
    detail: GuardianDetail,
    may_edit: bool,
    error: Option<String>,
}

async fn guardian_page(
    state: &AppState,
    signed_in: &SignedIn,
    id: Uuid,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    match state
        .services()
        .visible_guardian(&signed_in.staff, &id.to_string())
        .await
    {
        Ok(detail) => html(
            status,
            GuardianPage {
                frame: Frame::of(signed_in),
                detail,
                may_edit: matches!(
                    signed_in.staff.role,
                    Role::DistrictAdmin | Role::SchoolAdmin
                ),
                error,
            },
        ),
        Err(ServiceError::Refused(Refusal::NotFound)) => {
            (StatusCode::NOT_FOUND, "No such guardian.").into_response()
        }
        Err(error) => failed(error),
    }
}

pub async fn guardian(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<Uuid>,
) -> Response {
    guardian_page(&state, &signed_in, id, StatusCode::OK, None).await
}

/// One edit of a guardian, from the forms of their page.
pub async fn edit(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Posted { signed_in, fields }: Posted,
) -> Response {
    let services = state.services();
    let staff = &signed_in.staff;
    let guardian = id.to_string();
    let done = match fields.get("edit") {
        "add_contact" => services
            .add_contact_point(staff, &guardian, fields.get("kind"), fields.get("address"))
            .await
            .map(drop),
        "contact_active" => match fields.get("contact").parse() {
            Ok(contact) => services
                .change_contact_point(
                    staff,
                    &guardian,
                    ContactPointId::from_uuid(contact),
                    fields.get("active") == "yes",
                )
                .await
                .map(drop),
            Err(_) => Err(Refusal::NotFound.into()),
        },
        "add_opt_out" => services
            .add_opt_out(staff, &guardian, fields.get("channel"))
            .await
            .map(drop),
        "revoke_opt_out" => match fields.get("opt_out").parse() {
            Ok(opt_out) => services.revoke_opt_out(staff, &guardian, opt_out).await,
            Err(_) => Err(Refusal::NotFound.into()),
        },
        _ => Err(Refusal::Invalid("unknown change".into()).into()),
    };
    match done {
        Ok(()) => Redirect::to(&format!("/guardians/{id}")).into_response(),
        Err(ServiceError::Refused(refusal)) => {
            let (status, error) = said(&refusal);
            guardian_page(&state, &signed_in, id, status, Some(error)).await
        }
        Err(error) => failed(error),
    }
}
