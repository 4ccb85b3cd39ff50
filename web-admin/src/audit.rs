//! The audit log: every staff action of the district, newest first (district
//! administrators).

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tidings_api::AppState;
use tidings_core::store::AuditEntry;
use tidings_core::Role;

use crate::messages::{failed, html, Frame};
use crate::session::SignedIn;

/// Entries shown.
const SHOWN: u32 = 200;

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    frame: Frame,
    entries: Vec<AuditEntry>,
}

pub async fn page(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    if signed_in.staff.role != Role::DistrictAdmin {
        return (
            StatusCode::FORBIDDEN,
            signed_in
                .lang
                .t("The audit log is for district administrators."),
        )
            .into_response();
    }
    match state
        .store
        .audit_entries(signed_in.staff.district_id, SHOWN)
        .await
    {
        Ok(entries) => html(
            StatusCode::OK,
            AuditPage {
                frame: Frame::of(&signed_in),
                entries,
            },
        ),
        Err(error) => failed(error),
    }
}
