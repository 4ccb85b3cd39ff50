//! Staff accounts: district administrators invite staff with a role, change roles and
//! disable accounts; an invited member accepts with a password of their own; everyone
//! changes their own password.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;
use tidings_api::AppState;
use tidings_core::services::accounts::{Invitation, MIN_PASSWORD_CHARS, SESSION_HOURS};
use tidings_core::services::{Refusal, ServiceError};
use tidings_core::store::StaffMember;
use tidings_core::{Role, Staff, StaffId};
use uuid::Uuid;

use crate::form::{Fields, Posted};
use crate::messages::{failed, html, Frame};
use crate::session::{self, set_cookie, SignedIn};
use crate::Web;

/// A refusal on the staff and account pages, which say who may manage staff and which
/// password was wrong; the rest as every page says it.
fn said(refusal: &Refusal) -> (StatusCode, String) {
    match refusal {
        Refusal::Forbidden => (
            StatusCode::FORBIDDEN,
            "Only district administrators manage staff.".to_owned(),
        ),
        Refusal::BadCredentials => (
            StatusCode::UNAUTHORIZED,
            "The current password is wrong.".to_owned(),
        ),
        other => crate::form::said(other),
    }
}

pub const ROLES: [(Role, &str); 4] = [
    (Role::DistrictAdmin, "District administrator"),
    (Role::SchoolAdmin, "School administrator"),
    (Role::Teacher, "Teacher"),
    (Role::Viewer, "Viewer (reports only)"),
];

#[derive(Template)]
#[template(path = "staff.html")]
struct StaffPage {
    frame: Frame,
    me: StaffId,
    members: Vec<StaffMember>,
    roles: &'static [(Role, &'static str)],
    error: Option<String>,
    /// Just invited: the link to pass on, shown once.
    invited: Option<(String, String)>,
}

async fn staff_page(
    state: &AppState,
    signed_in: &SignedIn,
    status: StatusCode,
    error: Option<String>,
    invited: Option<(String, String)>,
) -> Response {
    match state.services().staff_members(&signed_in.staff).await {
        Ok(members) => html(
            status,
            StaffPage {
                frame: Frame::of(signed_in),
                me: signed_in.staff.id,
                members,
                roles: &ROLES,
                error,
                invited,
            },
        ),
        Err(ServiceError::Refused(refusal)) => {
            let (status, words) = said(&refusal);
            (status, words).into_response()
        }
        Err(error) => failed(error),
    }
}

pub async fn list(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    staff_page(&state, &signed_in, StatusCode::OK, None, None).await
}

/// The address of an invitation's page, from the request's own origin.
/// Where browsers reach Tidings: the configured public URL, or else the address this
/// request came to.
pub(crate) fn base_url(web: &Web, headers: &axum::http::HeaderMap) -> String {
    if let Some(url) = &web.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let scheme = if headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        == Some("https")
    {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{host}")
}

fn invitation_link(web: &Web, headers: &axum::http::HeaderMap, invitation: &Invitation) -> String {
    format!(
        "{}/invitation/{}",
        base_url(web, headers),
        invitation.token.reveal()
    )
}

pub async fn change(
    State(state): State<AppState>,
    axum::Extension(web): axum::Extension<Arc<Web>>,
    headers: axum::http::HeaderMap,
    Posted { signed_in, fields }: Posted,
) -> Response {
    let field = |name: &str| fields.get(name).to_owned();
    let services = state.services();
    let role = |value: String| {
        value
            .parse::<Role>()
            .map_err(|e| Refusal::Invalid(e.to_string()))
    };
    let outcome = match field("form").as_str() {
        "invite" => match role(field("role")) {
            Ok(role) => services
                .invite(&signed_in.staff, &field("email"), &field("name"), role)
                .await
                .map(|invitation| {
                    Some((
                        invitation.staff.email.to_string(),
                        invitation_link(&web, &headers, &invitation),
                    ))
                }),
            Err(refusal) => Err(refusal.into()),
        },
        "change" => {
            let staff = field("staff").parse::<Uuid>().map(StaffId::from_uuid);
            let new_role = match field("role").as_str() {
                "" => Ok(None),
                value => role(value.to_owned()).map(Some),
            };
            let disabled = match field("disabled").as_str() {
                "yes" => Some(true),
                "no" => Some(false),
                _ => None,
            };
            match (staff, new_role) {
                (Ok(staff), Ok(new_role)) => services
                    .change_staff(&signed_in.staff, staff, new_role, disabled)
                    .await
                    .map(|()| None),
                (Err(_), _) => Err(Refusal::NotFound.into()),
                (_, Err(refusal)) => Err(refusal.into()),
            }
        }
        _ => Err(Refusal::Invalid("unknown form".into()).into()),
    };
    match outcome {
        Ok(None) => Redirect::to("/staff").into_response(),
        Ok(invited) => staff_page(&state, &signed_in, StatusCode::CREATED, None, invited).await,
        Err(ServiceError::Refused(refusal)) => {
            let (status, words) = said(&refusal);
            staff_page(&state, &signed_in, status, Some(words), None).await
        }
        Err(error) => failed(error),
    }
}

#[derive(Template)]
#[template(path = "invitation.html")]
struct InvitationPage<'a> {
    styles: &'a str,
    staff: Staff,
    csrf: String,
    min: usize,
    error: Option<String>,
}

/// The invitation's own token is the secret its form's CSRF token derives from.
pub async fn invitation(State(state): State<AppState>, Path(token): Path<String>) -> Response {
    match state.services().invitation(&token).await {
        Ok(staff) => html(
            StatusCode::OK,
            InvitationPage {
                styles: crate::assets::styles_url(),
                staff,
                csrf: session::csrf_for(&token),
                min: MIN_PASSWORD_CHARS,
                error: None,
            },
        ),
        Err(ServiceError::Refused(_)) => (
            StatusCode::NOT_FOUND,
            "This invitation has been used or has expired. Ask your district administrator for a new one.",
        )
            .into_response(),
        Err(error) => failed(error),
    }
}

pub async fn accept(
    State(state): State<AppState>,
    axum::Extension(web): axum::Extension<Arc<Web>>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    // Not a signed-in form: the invitation's token is the secret its CSRF token derives
    // from.
    let fields = Fields::parse(&body);
    let field = |name: &str| fields.get(name).to_owned();
    if !session::csrf_matches(&token, &field("csrf")) {
        return (
            StatusCode::FORBIDDEN,
            "This form has expired. Please reload it.",
        )
            .into_response();
    }
    let password = field("password");
    if password != field("again") {
        return again(&state, &token, "The two passwords differ.".into()).await;
    }
    match state.services().accept_invitation(&token, &password).await {
        Ok(session) => {
            let set = set_cookie(
                session::SESSION_COOKIE,
                &session.token.reveal(),
                SESSION_HOURS * 3600,
                web.secure_cookies,
            );
            let mut response = Redirect::to("/").into_response();
            if let Ok(value) = set.parse() {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
        Err(ServiceError::Refused(Refusal::Invalid(detail))) => {
            again(&state, &token, format!("Please check: {detail}.")).await
        }
        Err(ServiceError::Refused(_)) => (
            StatusCode::NOT_FOUND,
            "This invitation has been used or has expired.",
        )
            .into_response(),
        Err(error) => failed(error),
    }
}

async fn again(state: &AppState, token: &str, error: String) -> Response {
    match state.services().invitation(token).await {
        Ok(staff) => html(
            StatusCode::UNPROCESSABLE_ENTITY,
            InvitationPage {
                styles: crate::assets::styles_url(),
                staff,
                csrf: session::csrf_for(token),
                min: MIN_PASSWORD_CHARS,
                error: Some(error),
            },
        ),
        Err(_) => (
            StatusCode::NOT_FOUND,
            "This invitation has been used or has expired.",
        )
            .into_response(),
    }
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    frame: Frame,
    email: String,
    min: usize,
    error: Option<String>,
    saved: bool,
}

pub async fn account(State(_state): State<AppState>, signed_in: SignedIn) -> Response {
    html(
        StatusCode::OK,
        AccountPage {
            frame: Frame::of(&signed_in),
            email: signed_in.staff.email.to_string(),
            min: MIN_PASSWORD_CHARS,
            error: None,
            saved: false,
        },
    )
}

pub async fn change_password(
    State(state): State<AppState>,
    Posted { signed_in, fields }: Posted,
) -> Response {
    let field = |name: &str| fields.get(name).to_owned();
    let page = |status, error, saved| {
        html(
            status,
            AccountPage {
                frame: Frame::of(&signed_in),
                email: signed_in.staff.email.to_string(),
                min: MIN_PASSWORD_CHARS,
                error,
                saved,
            },
        )
    };
    let new = field("new");
    if new != field("again") {
        return page(
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("The two new passwords differ.".to_owned()),
            false,
        );
    }
    match state
        .services()
        .change_password(
            &signed_in.staff,
            signed_in.token.id,
            &field("current"),
            &new,
        )
        .await
    {
        Ok(()) => page(StatusCode::OK, None, true),
        Err(ServiceError::Refused(refusal)) => {
            let (status, words) = said(&refusal);
            page(status, Some(words), false)
        }
        Err(error) => failed(error),
    }
}
