//! Districts of the install, for its operators: each with its directory's size and
//! whether it is suspended; create one (its first administrator is invited, the link
//! shown once), rename one, suspend or resume one. The districts service does the work
//! and the audit, as for `tidings district …`.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use tidings_api::AppState;
use tidings_core::services::districts::{DistrictLine, NewDistrict, Operator};
use tidings_core::services::ServiceError;
use tidings_core::DistrictId;

use crate::form::{said_in, Posted};
use crate::messages::{failed, html, Frame};
use crate::session::SignedIn;
use crate::Web;

#[derive(Template)]
#[template(path = "districts.html")]
struct DistrictsPage {
    frame: Frame,
    own: DistrictId,
    districts: Vec<DistrictLine>,
    error: Option<String>,
    /// Just created: the district's name, its administrator's email and their
    /// invitation link, shown once.
    created: Option<(String, String, String)>,
}

async fn districts_page(
    state: &AppState,
    signed_in: &SignedIn,
    status: StatusCode,
    error: Option<String>,
    created: Option<(String, String, String)>,
) -> Response {
    match state
        .services()
        .districts(Operator::Staff(&signed_in.staff))
        .await
    {
        Ok(districts) => html(
            status,
            DistrictsPage {
                frame: Frame::of(signed_in),
                own: signed_in.staff.district_id,
                districts,
                error,
                created,
            },
        ),
        Err(ServiceError::Refused(refusal)) => {
            let (status, _) = said_in(&refusal, signed_in.lang);
            (
                status,
                signed_in
                    .lang
                    .t("Only operators of this Tidings manage its districts."),
            )
                .into_response()
        }
        Err(error) => failed(error),
    }
}

pub async fn list(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    districts_page(&state, &signed_in, StatusCode::OK, None, None).await
}

/// Creates (`create`), renames (`rename`), suspends (`suspend`) or resumes (`resume`) a
/// district.
pub async fn change(
    State(state): State<AppState>,
    axum::Extension(web): axum::Extension<Arc<Web>>,
    headers: HeaderMap,
    Posted { signed_in, fields }: Posted,
) -> Response {
    let services = state.services();
    let operator = Operator::Staff(&signed_in.staff);
    let district = || fields.get("district").parse().map(DistrictId::from_uuid);
    let done = match fields.get("change") {
        "create" => {
            let new = NewDistrict {
                name: fields.get("name"),
                timezone: fields.get("timezone"),
                admin_email: fields.get("admin_email"),
                admin_name: fields.get("admin_name"),
            };
            match services.create_district(operator, new).await {
                Ok(created) => {
                    let link = format!(
                        "{}/invitation/{}",
                        crate::staff::base_url(&web, &headers),
                        created.invitation.token.reveal()
                    );
                    let shown = (
                        created.district.name,
                        created.invitation.staff.email.to_string(),
                        link,
                    );
                    return districts_page(
                        &state,
                        &signed_in,
                        StatusCode::CREATED,
                        None,
                        Some(shown),
                    )
                    .await;
                }
                Err(error) => Err(error),
            }
        }
        "rename" => match district() {
            Ok(id) => {
                services
                    .rename_district(operator, id, fields.get("name"))
                    .await
            }
            Err(_) => return (StatusCode::NOT_FOUND, "No such district.").into_response(),
        },
        change @ ("suspend" | "resume") => match district() {
            Ok(id) => {
                services
                    .suspend_district(operator, id, change == "suspend")
                    .await
            }
            Err(_) => return (StatusCode::NOT_FOUND, "No such district.").into_response(),
        },
        _ => return (StatusCode::BAD_REQUEST, "Unknown change.").into_response(),
    };
    match done {
        Ok(()) => Redirect::to("/districts").into_response(),
        Err(ServiceError::Refused(refusal)) => {
            let (status, words) = said_in(&refusal, signed_in.lang);
            districts_page(&state, &signed_in, status, Some(words), None).await
        }
        Err(error) => failed(error),
    }
}
