//! Forms posted by signed-in staff: the fields, read once, and the CSRF check every such
//! form needs, made by the extractor rather than by each page; and how a refusal reads on
//! a page.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tidings_api::AppState;
use tidings_core::services::Refusal;

use crate::i18n::Lang;
use crate::session::SignedIn;

/// The largest form a page posts (a message with a translation is a few KiB).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The fields of a URL-encoded form, in order (a name may repeat: ticked checkboxes).
#[derive(Debug, Default)]
pub struct Fields(Vec<(String, String)>);

impl Fields {
    pub fn parse(body: &[u8]) -> Self {
        Fields(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value named `name`, or "" when there is none.
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map_or("", |(_, value)| value.as_str())
    }

    /// Every value named `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// A form posted by a signed-in staff member, with the session's CSRF token.
pub struct Posted {
    pub signed_in: SignedIn,
    pub fields: Fields,
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let signed_in = SignedIn::from_request_parts(&mut parts, state).await?;
        let body = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    signed_in.lang.t("This form is too large."),
                )
                    .into_response()
            })?;
        let fields = Fields::parse(&body);
        if !signed_in.csrf_ok(fields.get("csrf")) {
            return Err((
                StatusCode::FORBIDDEN,
                signed_in.lang.t("This form has expired. Please reload it."),
            )
                .into_response());
        }
        Ok(Posted { signed_in, fields })
    }
}

/// A refusal as a page says it in English, with the status to answer with.
pub fn said(refusal: &Refusal) -> (StatusCode, String) {
    said_in(refusal, Lang::En)
}

/// A refusal as a page says it in `lang`, with the status to answer with. The details
/// some refusals carry are the services' words, in English unless this crate made them.
pub fn said_in(refusal: &Refusal, lang: Lang) -> (StatusCode, String) {
    match refusal {
        Refusal::Forbidden => (
            StatusCode::FORBIDDEN,
            lang.t("Your role does not allow this.").to_owned(),
        ),
        Refusal::BadCredentials => (
            StatusCode::UNAUTHORIZED,
            lang.t("The password is wrong.").to_owned(),
        ),
        Refusal::NotFound => (
            StatusCode::NOT_FOUND,
            lang.t("It is not there (any more), or not yours to see.").to_owned(),
        ),
        Refusal::Invalid(detail) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.tf("Please check: {}.", &[detail]),
        ),
        Refusal::ForbiddenAudience(_) => (
            StatusCode::FORBIDDEN,
            lang.t("You may not message some of the people chosen.").to_owned(),
        ),
        Refusal::UnknownAudience(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.t("Some of the schools, grades, classes or people chosen no longer exist.").to_owned(),
        ),
        Refusal::EmptyAudience(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.t("No guardian on file is linked to who you chose.").to_owned(),
        ),
        Refusal::NoAccount => (
            StatusCode::FORBIDDEN,
            lang.t("No staff account of your district has this email address. Ask your district's administrator to invite you.").to_owned(),
        ),
        Refusal::AccountDisabled => (
            StatusCode::FORBIDDEN,
            lang.t("Your staff account is disabled. Ask your district's administrator.").to_owned(),
        ),
        Refusal::TooManyCodes => (
            StatusCode::TOO_MANY_REQUESTS,
            lang.t("Too many codes were asked for. Please try again later.").to_owned(),
        ),
        Refusal::InvalidCode => (
            StatusCode::UNAUTHORIZED,
            lang.t("The code is wrong, used up or expired.").to_owned(),
        ),
        Refusal::Conflict(detail) => (StatusCode::CONFLICT, format!("{detail}.")),
        Refusal::QuotaExceeded(detail) => (
            StatusCode::TOO_MANY_REQUESTS,
            lang.tf("The district's limit stops this: {}.", &[detail]),
        ),
        Refusal::IdempotencyInFlight => (
            StatusCode::CONFLICT,
            lang.t("This is being sent right now; its report appears in a moment.").to_owned(),
        ),
        Refusal::IdempotencyMismatch => (
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.t("This form was already used for something else; please reload it.").to_owned(),
        ),
        Refusal::DistrictSuspended => (
            StatusCode::FORBIDDEN,
            lang.t("Your district's Tidings is suspended. Ask the people who run this Tidings server.")
                .to_owned(),
        ),
        Refusal::InvalidRoster(detail) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.tf("This roster cannot be imported: {}.", &[detail]),
        ),
        Refusal::ImportHeldBack { over, .. } => (
            StatusCode::CONFLICT,
            lang.tf("The import was held back and nothing was changed: {}.", &[over]),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_keep_repeats_and_decode() {
        let fields = Fields::parse(b"class=a&class=b&subject=Snow+day%21&empty=");
        assert_eq!(fields.all("class").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(fields.get("subject"), "Snow day!");
        assert_eq!(fields.get("empty"), "");
        assert_eq!(fields.get("missing"), "");
    }
}
