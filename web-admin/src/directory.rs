//! The directory: schools with their classes, classes with their students, students with
//! their classes and guardians; search guardians, see one with their students, contact
//! points and opt-outs, and (administrators) add or deactivate an address and record or
//! revoke an opt-out — the same services, and the same audit, as the API's.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use tidings_api::AppState;
use tidings_core::services::{Refusal, ServiceError};
use tidings_core::store::{
    ClassView, GuardianDetail, GuardianView, PageRequest, SchoolView, Scope, StoreError,
    StudentView,
};
use tidings_core::{ContactPointId, Role};
use uuid::Uuid;

use crate::form::{said_in, Posted};
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
    tab: Tab,
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
                    tab: Tab::Guardians,
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
        _ => Err(Refusal::Invalid(signed_in.lang.t("unknown change").into()).into()),
    };
    match done {
        Ok(()) => Redirect::to(&format!("/guardians/{id}")).into_response(),
        Err(ServiceError::Refused(refusal)) => {
            let (status, error) = said_in(&refusal, signed_in.lang);
            guardian_page(&state, &signed_in, id, status, Some(error)).await
        }
        Err(error) => failed(error),
    }
}

/// The directory's listing pages: which of them a tab bar marks as current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Schools,
    Students,
    Guardians,
}

#[derive(Template)]
#[template(path = "schools.html")]
struct SchoolsPage {
    frame: Frame,
    tab: Tab,
    schools: Vec<SchoolView>,
    /// A district administrator: the roster imports are theirs.
    may_import: bool,
}

/// The schools the caller may see.
pub async fn schools(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    let page = PageRequest {
        limit: 500,
        ..PageRequest::default()
    };
    match state
        .store
        .schools(&Scope::of(&signed_in.staff), &page)
        .await
    {
        Ok(schools) => html(
            StatusCode::OK,
            SchoolsPage {
                frame: Frame::of(&signed_in),
                tab: Tab::Schools,
                schools,
                may_import: signed_in.staff.role == Role::DistrictAdmin,
            },
        ),
        Err(error) => failed(error),
    }
}

#[derive(Template)]
#[template(path = "school.html")]
struct SchoolPage {
    frame: Frame,
    tab: Tab,
    school: SchoolView,
    classes: Vec<ClassView>,
    may_send: bool,
}

/// One school: its classes, and the link to its students.
pub async fn school(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<Uuid>,
) -> Response {
    let store = &state.store;
    let scope = Scope::of(&signed_in.staff);
    let read = async {
        let Some(school) = store.schools(&scope, &PageRequest::only(id)).await?.pop() else {
            return Ok(None);
        };
        let classes = PageRequest {
            school: Some(id),
            limit: 500,
            ..PageRequest::default()
        };
        let classes = store.classes(&scope, &classes).await?;
        Ok::<_, StoreError>(Some((school, classes)))
    };
    match read.await {
        Ok(Some((school, classes))) => html(
            StatusCode::OK,
            SchoolPage {
                frame: Frame::of(&signed_in),
                tab: Tab::Schools,
                school,
                classes,
                may_send: signed_in.staff.role != Role::Viewer,
            },
        ),
        Ok(None) => (StatusCode::NOT_FOUND, "No such school.").into_response(),
        Err(error) => failed(error),
    }
}

#[derive(Template)]
#[template(path = "class.html")]
struct ClassPage {
    frame: Frame,
    tab: Tab,
    class: ClassView,
    school: Option<SchoolView>,
    students: Vec<StudentView>,
    may_send: bool,
}

/// Students a class page lists at most.
const CLASS_SIZE: u32 = 500;

/// One class: its school and its students.
pub async fn class(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<Uuid>,
) -> Response {
    let store = &state.store;
    let scope = Scope::of(&signed_in.staff);
    let read = async {
        let Some(class) = store.classes(&scope, &PageRequest::only(id)).await?.pop() else {
            return Ok(None);
        };
        let school = store
            .schools(&scope, &PageRequest::only(class.school_id))
            .await?
            .pop();
        let students = PageRequest {
            class: Some(id),
            limit: CLASS_SIZE,
            ..PageRequest::default()
        };
        let mut students = store.students(&scope, &students).await?;
        students
            .sort_by(|a, b| (&a.family_name, &a.given_name).cmp(&(&b.family_name, &b.given_name)));
        Ok::<_, StoreError>(Some((class, school, students)))
    };
    match read.await {
        Ok(Some((class, school, students))) => html(
            StatusCode::OK,
            ClassPage {
                frame: Frame::of(&signed_in),
                tab: Tab::Schools,
                class,
                school,
                students,
                may_send: signed_in.staff.role != Role::Viewer,
            },
        ),
        Ok(None) => (StatusCode::NOT_FOUND, "No such class.").into_response(),
        Err(error) => failed(error),
    }
}

#[derive(Debug, Deserialize)]
pub struct StudentSearch {
    q: Option<String>,
    school: Option<Uuid>,
    after: Option<Uuid>,
}

#[derive(Template)]
#[template(path = "students.html")]
struct StudentsPage {
    frame: Frame,
    tab: Tab,
    q: String,
    /// The school the list is narrowed to, if any.
    school: Option<SchoolView>,
    students: Vec<StudentView>,
    next: Option<Uuid>,
}

/// Students the caller may see, searched by name or roster id, optionally of one school.
pub async fn students(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(search): Query<StudentSearch>,
) -> Response {
    let store = &state.store;
    let scope = Scope::of(&signed_in.staff);
    let q = search.q.unwrap_or_default().trim().to_owned();
    let read = async {
        let school = match search.school {
            Some(id) => match store.schools(&scope, &PageRequest::only(id)).await?.pop() {
                Some(school) => Some(school),
                None => return Ok(None),
            },
            None => None,
        };
        let page = PageRequest {
            after: search.after,
            limit: PAGE,
            search: (!q.is_empty()).then(|| q.clone()),
            school: search.school,
            ..PageRequest::default()
        };
        let students = store.students(&scope, &page).await?;
        Ok::<_, StoreError>(Some((school, students)))
    };
    match read.await {
        Ok(Some((school, students))) => {
            let next = (students.len() == PAGE as usize)
                .then(|| students.last().map(|s| s.id))
                .flatten();
            html(
                StatusCode::OK,
                StudentsPage {
                    frame: Frame::of(&signed_in),
                    tab: Tab::Students,
                    q,
                    school,
                    students,
                    next,
                },
            )
        }
        Ok(None) => (StatusCode::NOT_FOUND, "No such school.").into_response(),
        Err(error) => failed(error),
    }
}

#[derive(Template)]
#[template(path = "student.html")]
struct StudentPage {
    frame: Frame,
    tab: Tab,
    student: StudentView,
    school: Option<SchoolView>,
    classes: Vec<ClassView>,
    guardians: Vec<GuardianView>,
    may_send: bool,
}

/// One student: their school, classes and guardians.
pub async fn student(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<Uuid>,
) -> Response {
    let store = &state.store;
    let scope = Scope::of(&signed_in.staff);
    let read = async {
        let Some(student) = store.students(&scope, &PageRequest::only(id)).await?.pop() else {
            return Ok(None);
        };
        let school = store
            .schools(&scope, &PageRequest::only(student.school_id))
            .await?
            .pop();
        let of_student = PageRequest {
            student: Some(id),
            limit: 100,
            ..PageRequest::default()
        };
        let classes = store.classes(&scope, &of_student).await?;
        let guardians = store.guardians(&scope, &of_student).await?;
        Ok::<_, StoreError>(Some((student, school, classes, guardians)))
    };
    match read.await {
        Ok(Some((student, school, classes, guardians))) => html(
            StatusCode::OK,
            StudentPage {
                frame: Frame::of(&signed_in),
                tab: Tab::Students,
                student,
                school,
                classes,
                guardians,
                may_send: signed_in.staff.role != Role::Viewer,
            },
        ),
        Ok(None) => (StatusCode::NOT_FOUND, "No such student.").into_response(),
        Err(error) => failed(error),
    }
}
