//! District settings (district administrators): the default language and time zone,
//! quotas, each school's quiet hours, and single sign-on (whose client secret goes in and is never shown again: the page says
//! only that one is set).

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use tidings_api::AppState;
use tidings_core::delivery::Actor;
use tidings_core::quiet_hours::QuietHours;
use tidings_core::services::settings::SsoChange;
use tidings_core::services::{Refusal, ServiceError};
use tidings_core::sso::SsoSettings;
use tidings_core::store::{District, PageRequest, SchoolView, Scope};
use tidings_core::Role;

use crate::form::{said_in, Posted};
use crate::i18n::Lang;
use crate::messages::{failed, html, Frame};
use crate::session::SignedIn;
use crate::{SandboxIdentityProvider, Web};

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    frame: Frame,
    district: District,
    schools: Vec<SchoolView>,
    error: Option<String>,
    saved: bool,
    sso: Option<SsoSettings>,
    /// The single sign-on fields as the form shows them (what was typed, after a refusal).
    issuer: String,
    client_id: String,
    /// What to register at the identity provider.
    redirect_uri: String,
    sandbox: Option<SandboxIdentityProvider>,
    /// Languages a district may default to, by tag: English and those compose offers.
    languages: Vec<&'static str>,
}

/// What the page shows besides the stored settings.
struct Shown<'a> {
    status: StatusCode,
    error: Option<String>,
    saved: bool,
    /// Single sign-on fields typed but not saved: (issuer, client id).
    typed: Option<(&'a str, &'a str)>,
}

impl SettingsPage {
    fn limit(value: &Option<i32>) -> String {
        value.map(|v| v.to_string()).unwrap_or_default()
    }

    fn language_name<'a>(&self, tag: &'a str) -> &'a str {
        crate::messages::language_name(self.frame.lang, tag)
    }
}

async fn page(
    state: &AppState,
    web: &Web,
    headers: &HeaderMap,
    signed_in: &SignedIn,
    shown: Shown<'_>,
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
    let sso = match state.services().district_sso(&signed_in.staff).await {
        Ok(sso) => sso,
        Err(error) => return failed(error),
    };
    let (issuer, client_id) = match (shown.typed, &sso) {
        (Some((issuer, client_id)), _) => (issuer.to_owned(), client_id.to_owned()),
        (None, Some(sso)) => (sso.issuer.clone(), sso.client_id.clone()),
        (None, None) => Default::default(),
    };
    html(
        shown.status,
        SettingsPage {
            frame: Frame::of(signed_in),
            district,
            schools,
            error: shown.error,
            saved: shown.saved,
            sso,
            issuer,
            client_id,
            redirect_uri: crate::sign_in::redirect_uri(web, headers),
            sandbox: web.sandbox_identity_provider.clone(),
            languages: std::iter::once("en")
                .chain(crate::messages::LANGUAGES)
                .collect(),
        },
    )
}

fn admin_only(signed_in: &SignedIn) -> Option<Response> {
    (signed_in.staff.role != Role::DistrictAdmin).then(|| {
        (
            StatusCode::FORBIDDEN,
            signed_in
                .lang
                .t("District settings are for district administrators."),
        )
            .into_response()
    })
}

pub async fn show(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    signed_in: SignedIn,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Response {
    if let Some(refused) = admin_only(&signed_in) {
        return refused;
    }
    let shown = Shown {
        status: StatusCode::OK,
        error: None,
        saved: query.contains_key("saved"),
        typed: None,
    };
    page(&state, &web, &headers, &signed_in, shown).await
}

/// A limit field: empty or 0 is no limit. `what` names it in `lang`.
fn limit(what: &str, value: &str, lang: Lang) -> Result<Option<i32>, Refusal> {
    match value.trim() {
        "" | "0" => Ok(None),
        n => n
            .parse::<i32>()
            .ok()
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| Refusal::Invalid(lang.tf("{} must be a whole number", &[&what]))),
    }
}

pub async fn save(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    Posted { signed_in, fields }: Posted,
) -> Response {
    if let Some(refused) = admin_only(&signed_in) {
        return refused;
    }
    let field = |name: &str| fields.get(name);
    let services = state.services();
    let by = Actor::staff(signed_in.staff.id);
    let district = signed_in.staff.district_id;
    let lang = signed_in.lang;
    let done: Result<(), ServiceError> = match field("form") {
        "quotas" => match (
            limit(
                lang.t("the recipients per message"),
                field("max_recipients"),
                lang,
            ),
            limit(lang.t("the messages per hour"), field("max_per_hour"), lang),
        ) {
            (Ok(recipients), Ok(hourly)) => {
                services
                    .set_district_quotas(&by, district, recipients, hourly)
                    .await
            }
            (Err(refusal), _) | (_, Err(refusal)) => Err(refusal.into()),
        },
        "locale" => {
            services
                .set_district_locale(&signed_in.staff, field("language"), field("timezone"))
                .await
        }
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
        "sso" => {
            let change = SsoChange {
                issuer: field("issuer"),
                client_id: field("client_id"),
                client_secret: Some(field("client_secret")),
            };
            services
                .set_district_sso(&signed_in.staff, &change)
                .await
                .map(drop)
        }
        "sso-remove" => services.remove_district_sso(&signed_in.staff).await,
        _ => Err(Refusal::Invalid(lang.t("unknown form").into()).into()),
    };
    match done {
        Ok(()) => Redirect::to("/settings?saved").into_response(),
        Err(ServiceError::Refused(refusal)) => {
            let (status, error) = said_in(&refusal, lang);
            // What was typed stays in the form, but never the secret.
            let typed = (field("form") == "sso").then(|| (field("issuer"), field("client_id")));
            let shown = Shown {
                status,
                error: Some(error),
                saved: false,
                typed,
            };
            page(&state, &web, &headers, &signed_in, shown).await
        }
        Err(error) => failed(error),
    }
}
