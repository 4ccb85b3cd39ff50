//! District settings (district administrators): quotas, and each school's quiet hours.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use tidings_api::AppState;
use tidings_core::delivery::Actor;
use tidings_core::quiet_hours::QuietHours;
use tidings_core::services::{Refusal, ServiceError};
use tidings_core::store::{District, PageRequest, SchoolView, Scope};
use tidings_core::Role;

use crate::form::{said, Posted};
use crate::messages::{failed, html, Frame};
use crate::session::SignedIn;

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    frame: Frame,
    district: District,
    schools: Vec<SchoolView>,
    error: Option<String>,
    saved: bool,
}

impl SettingsPage {
    fn limit(value: &Option<i32>) -> String {
        value.map(|v| v.to_string()).unwrap_or_default()
    }
}

async fn page(
    state: &AppState,
    signed_in: &SignedIn,
    status: StatusCode,
    error: Option<String>,
    saved: bool,
) -> Response {
    let district = match state.store.district(signed_in.staff.district_id).await {
        Ok(Some(district)) => district,
        Ok(None) => return (StatusCode::NOT_FOUND, "No such district.").into_response(),
        Err(error) => return failed(error),
    };
    let all = PageRequest {
        limit: 500,
        ..PageRequest::default()
    };
    let schools = match state
        .store
        .schools(&Scope::of(&signed_in.staff), &all)
        .await
    {
        Ok(schools) => schools,
        Err(error) => return failed(error),
    };
    html(
        status,
        SettingsPage {
            frame: Frame::of(signed_in),
            district,
            schools,
            error,
            saved,
        },
    )
}

fn admin_only(signed_in: &SignedIn) -> Option<Response> {
    (signed_in.staff.role != Role::DistrictAdmin).then(|| {
        (
            StatusCode::FORBIDDEN,
            "District settings are for district administrators.",
        )
            .into_response()
    })
}

pub async fn show(
    State(state): State<AppState>,
    signed_in: SignedIn,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Some(refused) = admin_only(&signed_in) {
        return refused;
    }
    let saved = query.contains_key("saved");
    page(&state, &signed_in, StatusCode::OK, None, saved).await
}

/// A limit field: empty or 0 is no limit.
fn limit(what: &str, value: &str) -> Result<Option<i32>, Refusal> {
    match value.trim() {
        "" | "0" => Ok(None),
        n => n
            .parse::<i32>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| Refusal::Invalid(format!("{what} must be a whole number"))),
    }
}

pub async fn save(State(state): State<AppState>, Posted { signed_in, fields }: Posted) -> Response {
    if let Some(refused) = admin_only(&signed_in) {
        return refused;
    }
    let field = |name: &str| fields.get(name);
    let services = state.services();
    let by = Actor::staff(signed_in.staff.id);
    let district = signed_in.staff.district_id;
    let done: Result<(), ServiceError> = match field("form") {
        "quotas" => match (
            limit("the recipients per message", field("max_recipients")),
            limit("the messages per hour", field("max_per_hour")),
        ) {
            (Ok(recipients), Ok(hourly)) => {
                services
                    .set_district_quotas(&by, district, recipients, hourly)
                    .await
            }
            (Err(refusal), _) | (_, Err(refusal)) => Err(refusal.into()),
        },
        "quiet" => {
            let quiet = if field("off") == "yes" {
                Ok(None)
            } else {
                QuietHours::parse_time(field("start"))
                    .and_then(|start| {
                        QuietHours::parse_time(field("end"))
                            .and_then(|end| QuietHours::new(field("timezone"), start, end))
                    })
                    .map(Some)
                    .map_err(|e| Refusal::Invalid(e.to_string()))
            };
            match quiet {
                Ok(quiet) => {
                    services
                        .set_school_quiet_hours(&by, district, field("school"), quiet)
                        .await
                }
                Err(refusal) => Err(refusal.into()),
            }
        }
        _ => Err(Refusal::Invalid("unknown form".into()).into()),
    };
    match done {
        Ok(()) => Redirect::to("/settings?saved").into_response(),
        Err(ServiceError::Refused(refusal)) => {
            let (status, error) = said(&refusal);
            page(&state, &signed_in, status, Some(error), false).await
        }
        Err(error) => failed(error),
    }
}
