//! API tokens: staff make tokens for the systems that call the API on their behalf (a
//! student information system, a script), see when each was last used, and revoke them;
//! district administrators see and revoke every token of the district. The same service,
//! and the same audit, as `/api/v1/tokens`. A new token's secret is shown once.

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{Duration, Utc};
use tidings_api::AppState;
use tidings_core::delivery::Actor;
use tidings_core::services::ServiceError;
use tidings_core::store::ApiTokenView;
use tidings_core::{ApiTokenId, Role, StaffId};

use crate::form::{said, Posted};
use crate::messages::{failed, html, Frame};
use crate::session::SignedIn;

/// How long a new token may be good for, in days (0: until revoked).
pub const LIFETIMES: [u32; 5] = [7, 30, 90, 365, 0];

/// The lifetime the form offers first.
const USUAL_DAYS: u32 = 90;

#[derive(Template)]
#[template(path = "tokens.html")]
struct TokensPage {
    frame: Frame,
    me: StaffId,
    /// The caller sees the whole district's tokens.
    everyone: bool,
    tokens: Vec<ApiTokenView>,
    lifetimes: &'static [u32],
    usual_days: u32,
    /// Now, by the server's clock: which tokens have expired.
    now: chrono::DateTime<Utc>,
    error: Option<String>,
    /// Just made: the token's name and its secret, shown this once.
    made: Option<(String, String)>,
}

impl TokensPage {
    fn state(&self, token: &ApiTokenView) -> &'static str {
        if token.revoked_at.is_some() {
            self.frame.t("revoked")
        } else if token.expires_at.is_some_and(|at| at <= self.now) {
            self.frame.t("expired")
        } else {
            self.frame.t("active")
        }
    }

    /// A lifetime in words.
    fn lifetime(&self, days: &u32) -> String {
        match days {
            0 => self.frame.t("until revoked").to_owned(),
            365 => self.frame.t("a year").to_owned(),
            days => self.frame.tf("{} days", &[days]),
        }
    }
}

async fn tokens_page(
    state: &AppState,
    signed_in: &SignedIn,
    status: StatusCode,
    error: Option<String>,
    made: Option<(String, String)>,
) -> Response {
    match state.services().api_tokens(&signed_in.staff).await {
        Ok(tokens) => html(
            status,
            TokensPage {
                frame: Frame::of(signed_in),
                me: signed_in.staff.id,
                everyone: signed_in.staff.role == Role::DistrictAdmin,
                tokens,
                lifetimes: &LIFETIMES,
                usual_days: USUAL_DAYS,
                now: state.clock.now(),
                error,
                made,
            },
        ),
        Err(error) => failed(error),
    }
}

pub async fn list(State(state): State<AppState>, signed_in: SignedIn) -> Response {
    tokens_page(&state, &signed_in, StatusCode::OK, None, None).await
}

/// Makes a token (`make`) or revokes one (`revoke`).
pub async fn change(
    State(state): State<AppState>,
    Posted { signed_in, fields }: Posted,
) -> Response {
    let services = state.services();
    let staff = &signed_in.staff;
    let refused = |error: ServiceError| async {
        match error {
            ServiceError::Refused(refusal) => {
                let (status, words) = said(&refusal);
                tokens_page(&state, &signed_in, status, Some(words), None).await
            }
            error => failed(error),
        }
    };
    match fields.get("change") {
        "make" => {
            let days: i64 = fields.get("days").parse().unwrap_or(0);
            let expires_at = (days > 0).then(|| state.clock.now() + Duration::days(days));
            let name = fields.get("name");
            match services
                .create_api_token(&Actor::staff(staff.id), staff, name, expires_at)
                .await
            {
                Ok(created) => {
                    let made = (created.view.name, created.token.reveal());
                    tokens_page(&state, &signed_in, StatusCode::CREATED, None, Some(made)).await
                }
                Err(error) => refused(error).await,
            }
        }
        "revoke" => {
            let Ok(id) = fields.get("token").parse() else {
                return (StatusCode::NOT_FOUND, "No such token.").into_response();
            };
            match services
                .revoke_api_token(staff, ApiTokenId::from_uuid(id))
                .await
            {
                Ok(()) => Redirect::to("/tokens").into_response(),
                Err(error) => refused(error).await,
            }
        }
        _ => (StatusCode::BAD_REQUEST, "Unknown change.").into_response(),
    }
}
