//! Staff accounts: district administrators invite staff with a role, change roles and
//! disable accounts; an invited member accepts with a password of their own; everyone
//! changes their own password.

use askama::Template;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use std::sync::Arc;
use tidings_api::AppState;
use tidings_core::services::accounts::{
    Invitation, LinkKind, MemberChange, NewMember, MIN_PASSWORD_CHARS, SESSION_HOURS,
};
use tidings_core::services::{Refusal, ServiceError};
use tidings_core::store::{PageRequest, SchoolView, Scope, StaffMember};
use tidings_core::{Role, SchoolId, Staff, StaffId};
use uuid::Uuid;

use crate::form::{Fields, Posted};
use crate::i18n::Lang;
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

/// The roles, most powerful first.
pub const ROLES: [Role; 4] = [
    Role::DistrictAdmin,
    Role::SchoolAdmin,
    Role::Teacher,
    Role::Viewer,
];

/// A role's name in `lang`.
pub fn role_name(lang: Lang, role: Role) -> &'static str {
    match role {
        Role::DistrictAdmin => lang.t("District administrator"),
        Role::SchoolAdmin => lang.t("School administrator"),
        Role::Teacher => lang.t("Teacher"),
        Role::Viewer => lang.t("Viewer (reports only)"),
    }
}

/// A one-time password link just made, shown once: for whom, the link, and whether it
/// invites them or resets their password.
pub struct NewLink {
    email: String,
    link: String,
    kind: LinkKind,
}

#[derive(Template)]
#[template(path = "staff.html")]
struct StaffPage {
    frame: Frame,
    me: StaffId,
    members: Vec<StaffMember>,
    /// What the list is searched for.
    q: String,
    /// The last member shown, when there may be more.
    next: Option<StaffId>,
    /// The district's schools, for school administrators and viewers.
    schools: Vec<SchoolView>,
    roles: &'static [Role],
    error: Option<String>,
    link: Option<NewLink>,
}

/// Staff listed per page.
const STAFF_PER_PAGE: u32 = 100;

/// `?q=` searches names and emails; `?after=` is the last member of the previous page.
#[derive(Debug, Default, serde::Deserialize)]
pub struct StaffSearch {
    q: Option<String>,
    after: Option<Uuid>,
}

impl StaffPage {
    fn role_name(&self, role: &Role) -> &'static str {
        role_name(self.frame.lang, *role)
    }

    /// When a member last signed in, or that they have not.
    fn last_sign_in(&self, member: &StaffMember) -> String {
        member.last_sign_in.map_or_else(
            || self.frame.t("never").to_owned(),
            |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
        )
    }

    /// The names of a member's schools, in the order of the district's list.
    fn school_names(&self, member: &StaffMember) -> String {
        let names: Vec<&str> = self
            .schools
            .iter()
            .filter(|school| member.schools.iter().any(|id| id.as_uuid() == &school.id))
            .map(|school| school.name.as_str())
            .collect();
        names.join(", ")
    }
}

async fn staff_page(
    state: &AppState,
    signed_in: &SignedIn,
    search: StaffSearch,
    status: StatusCode,
    error: Option<String>,
    link: Option<NewLink>,
) -> Response {
    let q = search.q.unwrap_or_default().trim().to_owned();
    let request = PageRequest {
        after: search.after,
        limit: STAFF_PER_PAGE,
        search: (!q.is_empty()).then(|| q.clone()),
        ..PageRequest::default()
    };
    let members = match state
        .services()
        .staff_page(&signed_in.staff, &request)
        .await
    {
        Ok(members) => members,
        Err(ServiceError::Refused(refusal)) => {
            let (status, words) = said(&refusal);
            return (status, words).into_response();
        }
        Err(error) => return failed(error),
    };
    let next = (members.len() == STAFF_PER_PAGE as usize)
        .then(|| members.last().map(|m| m.staff.id))
        .flatten();
    let page = PageRequest {
        limit: 1000,
        ..PageRequest::default()
    };
    let scope = Scope::District(signed_in.staff.district_id);
    match state.store.schools(&scope, &page).await {
        Ok(schools) => html(
            status,
            StaffPage {
                frame: Frame::of(signed_in),
                me: signed_in.staff.id,
                members,
                q,
                next,
                schools,
                roles: &ROLES,
                error,
                link,
            },
        ),
        Err(error) => failed(error),
    }
}

/// The district's staff, a page at a time, searched by name or email.
pub async fn list(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(search): Query<StaffSearch>,
) -> Response {
    staff_page(&state, &signed_in, search, StatusCode::OK, None, None).await
}

#[derive(Template)]
#[template(path = "staff_member.html")]
struct MemberPage {
    frame: Frame,
    member: StaffMember,
    schools: Vec<SchoolView>,
    roles: &'static [Role],
}

impl MemberPage {
    fn role_name(&self, role: &Role) -> &'static str {
        role_name(self.frame.lang, *role)
    }

    fn school_names(&self) -> String {
        let names: Vec<&str> = self
            .schools
            .iter()
            .filter(|school| self.assigned(school))
            .map(|school| school.name.as_str())
            .collect();
        names.join(", ")
    }

    fn assigned(&self, school: &SchoolView) -> bool {
        self.member
            .schools
            .iter()
            .any(|id| id.as_uuid() == &school.id)
    }

    fn last_sign_in(&self) -> String {
        self.member.last_sign_in.map_or_else(
            || self.frame.t("never").to_owned(),
            |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
        )
    }
}

/// One staff member's page (district administrators): their role and schools, enabling
/// and disabling, and a password reset link.
pub async fn member(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<Uuid>,
) -> Response {
    let id = StaffId::from_uuid(id);
    let member = match state.services().staff_member(&signed_in.staff, id).await {
        Ok(member) if member.staff.id != signed_in.staff.id => member,
        Ok(_) | Err(ServiceError::Refused(Refusal::NotFound)) => {
            return (
                StatusCode::NOT_FOUND,
                signed_in.lang.t("No such staff member.").to_owned(),
            )
                .into_response()
        }
        Err(ServiceError::Refused(refusal)) => {
            let (status, words) = said(&refusal);
            return (status, words).into_response();
        }
        Err(error) => return failed(error),
    };
    let page = PageRequest {
        limit: 1000,
        ..PageRequest::default()
    };
    let scope = Scope::District(signed_in.staff.district_id);
    match state.store.schools(&scope, &page).await {
        Ok(schools) => html(
            StatusCode::OK,
            MemberPage {
                frame: Frame::of(&signed_in),
                member,
                schools,
                roles: &ROLES,
            },
        ),
        Err(error) => failed(error),
    }
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

fn invitation_link(web: &Web, headers: &axum::http::HeaderMap, invitation: &Invitation) -> NewLink {
    NewLink {
        email: invitation.staff.email.to_string(),
        link: format!(
            "{}/invitation/{}",
            base_url(web, headers),
            invitation.token.reveal()
        ),
        kind: invitation.kind,
    }
}

/// The schools ticked in a form.
fn ticked_schools(fields: &Fields) -> Result<Vec<SchoolId>, Refusal> {
    fields
        .all("schools")
        .map(|id| {
            id.parse::<Uuid>()
                .map(SchoolId::from_uuid)
                .map_err(|_| Refusal::Invalid(format!("{id:?} is not a school")))
        })
        .collect()
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
    let staff = || {
        field("staff")
            .parse::<Uuid>()
            .map(StaffId::from_uuid)
            .map_err(|_| ServiceError::from(Refusal::NotFound))
    };
    let outcome = match field("form").as_str() {
        "invite" => match (role(field("role")), ticked_schools(&fields)) {
            (Ok(role), Ok(schools)) => {
                let new = NewMember {
                    email: field("email"),
                    display_name: field("name"),
                    role,
                    schools,
                };
                services
                    .invite(&signed_in.staff, &new)
                    .await
                    .map(|invitation| Some(invitation_link(&web, &headers, &invitation)))
            }
            (Err(refusal), _) | (_, Err(refusal)) => Err(refusal.into()),
        },
        "reset" => match staff() {
            Ok(staff) => services
                .password_reset(&signed_in.staff, staff)
                .await
                .map(|reset| Some(invitation_link(&web, &headers, &reset))),
            Err(error) => Err(error),
        },
        "change" => {
            let new_role = match field("role").as_str() {
                "" => Ok(None),
                value => role(value.to_owned()).map(Some),
            };
            let disabled = match field("disabled").as_str() {
                "yes" => Some(true),
                "no" => Some(false),
                _ => None,
            };
            // The schools' boxes are sent only where the form shows them.
            let schools = if field("schools_shown") == "yes" {
                ticked_schools(&fields).map(Some)
            } else {
                Ok(None)
            };
            match (staff(), new_role, schools) {
                (Ok(staff), Ok(role), Ok(schools)) => {
                    let change = MemberChange {
                        role,
                        disabled,
                        schools,
                    };
                    services
                        .change_staff(&signed_in.staff, staff, &change)
                        .await
                        .map(|()| None)
                }
                (Err(error), _, _) => Err(error),
                (_, Err(refusal), _) | (_, _, Err(refusal)) => Err(refusal.into()),
            }
        }
        _ => Err(Refusal::Invalid("unknown form".into()).into()),
    };
    match outcome {
        Ok(None) => Redirect::to("/staff").into_response(),
        Ok(link) => {
            staff_page(
                &state,
                &signed_in,
                StaffSearch::default(),
                StatusCode::CREATED,
                None,
                link,
            )
            .await
        }
        Err(ServiceError::Refused(refusal)) => {
            let (status, words) = said(&refusal);
            staff_page(
                &state,
                &signed_in,
                StaffSearch::default(),
                status,
                Some(words),
                None,
            )
            .await
        }
        Err(error) => failed(error),
    }
}

#[derive(Template)]
#[template(path = "invitation.html")]
struct InvitationPage<'a> {
    styles: &'a str,
    lang: Lang,
    staff: Staff,
    kind: LinkKind,
    csrf: String,
    min: usize,
    error: Option<String>,
}

/// The invitation's own token is the secret its form's CSRF token derives from.
pub async fn invitation(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(token): Path<String>,
) -> Response {
    let lang = Lang::of(&headers);
    match state.services().invitation(&token).await {
        Ok((staff, kind)) => html(
            StatusCode::OK,
            InvitationPage {
                styles: crate::assets::styles_url(),
                lang,
                staff,
                kind,
                csrf: session::csrf_for(&token),
                min: MIN_PASSWORD_CHARS,
                error: None,
            },
        ),
        Err(ServiceError::Refused(_)) => used_up(lang),
        Err(error) => failed(error),
    }
}

/// A link that was used, replaced or has expired.
fn used_up(lang: Lang) -> Response {
    (
        StatusCode::NOT_FOUND,
        lang.t("This link has been used or has expired. Ask your district administrator for a new one.")
            .to_owned(),
    )
        .into_response()
}

pub async fn accept(
    State(state): State<AppState>,
    axum::Extension(web): axum::Extension<Arc<Web>>,
    headers: axum::http::HeaderMap,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let lang = Lang::of(&headers);
    // Not a signed-in form: the invitation's token is the secret its CSRF token derives
    // from.
    let fields = Fields::parse(&body);
    let field = |name: &str| fields.get(name).to_owned();
    if !session::csrf_matches(&token, &field("csrf")) {
        return (
            StatusCode::FORBIDDEN,
            lang.t("This form has expired. Please reload it.")
                .to_owned(),
        )
            .into_response();
    }
    let password = field("password");
    if password != field("again") {
        let error = lang.t("The two passwords differ.").to_owned();
        return again(&state, lang, &token, error).await;
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
            let error = lang.tf("Please check: {}.", &[&detail]);
            again(&state, lang, &token, error).await
        }
        Err(ServiceError::Refused(_)) => used_up(lang),
        Err(error) => failed(error),
    }
}

async fn again(state: &AppState, lang: Lang, token: &str, error: String) -> Response {
    match state.services().invitation(token).await {
        Ok((staff, kind)) => html(
            StatusCode::UNPROCESSABLE_ENTITY,
            InvitationPage {
                styles: crate::assets::styles_url(),
                lang,
                staff,
                kind,
                csrf: session::csrf_for(token),
                min: MIN_PASSWORD_CHARS,
                error: Some(error),
            },
        ),
        Err(_) => used_up(lang),
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
