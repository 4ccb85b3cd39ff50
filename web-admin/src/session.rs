//! Web sessions and CSRF tokens.
//!
//! The session cookie holds a staff token (see `tidings_core::services::accounts`); the
//! CSRF token of a session is a digest of that secret, so it is known to the pages the
//! session renders and to no other site. Before sign-in, a random cookie plays the same
//! part for the sign-in form (the double-submit pattern).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tidings_api::AppState;
use tidings_core::secret::ApiToken;
use tidings_core::Staff;

/// The cookie that holds the session's token.
pub const SESSION_COOKIE: &str = "tidings_session";
/// The cookie that holds the sign-in form's CSRF token.
pub const FORM_COOKIE: &str = "tidings_form";

/// The value of cookie `name`, if the request has it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Lax, for the whole site; `Secure` behind
/// HTTPS. `max_age` 0 deletes the cookie.
pub fn set_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}")
}

/// The CSRF token that goes with a secret (a session's token, or the sign-in form's
/// cookie).
pub fn csrf_for(secret: &str) -> String {
    let digest = Sha256::new()
        .chain_update(b"tidings csrf\0")
        .chain_update(secret.as_bytes())
        .finalize();
    URL_SAFE_NO_PAD.encode(digest)
}

/// Whether a submitted CSRF token is the one of `secret` (compared in constant time).
pub fn csrf_matches(secret: &str, submitted: &str) -> bool {
    csrf_for(secret)
        .as_bytes()
        .ct_eq(submitted.as_bytes())
        .into()
}

/// The signed-in staff member of a page request; without a valid session the request is
/// sent to the sign-in page.
pub struct SignedIn {
    pub staff: Staff,
    pub token: ApiToken,
    /// The CSRF token every form of the page carries.
    pub csrf: String,
    /// The language the pages speak to them.
    pub lang: crate::i18n::Lang,
    /// The page asked for (path and query), to come back to after choosing a language.
    pub here: String,
}

impl SignedIn {
    /// Whether a form's CSRF token is this session's.
    pub fn csrf_ok(&self, submitted: &str) -> bool {
        csrf_matches(&self.token.reveal(), submitted)
    }
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_sign_in = || Redirect::to("/sign-in").into_response();
        let Some(token) =
            cookie(&parts.headers, SESSION_COOKIE).and_then(|v| ApiToken::parse(v).ok())
        else {
            return Err(to_sign_in());
        };
        let record = match state.store.api_token(token.id).await {
            Ok(Some(record)) => record,
            Ok(None) => return Err(to_sign_in()),
            Err(error) => {
                tracing::error!(error = %error, "reading a session failed");
                return Err(tidings_api::ApiError::from(error).into_response());
            }
        };
        let now = state.clock.now();
        let live = record.revoked_at.is_none()
            && record.expires_at.is_some_and(|at| at > now)
            && record.name == tidings_core::services::accounts::SESSION_NAME;
        if !token.matches(&record.secret_hash) || !live {
            return Err(to_sign_in());
        }
        if record.district_suspended_at.is_some() {
            return Err((
                axum::http::StatusCode::FORBIDDEN,
                crate::i18n::Lang::of(&parts.headers).t(
                    "Your district's Tidings is suspended. Ask the people who run this Tidings server.",
                ),
            )
                .into_response());
        }
        Ok(SignedIn {
            staff: record.staff,
            csrf: csrf_for(&token.reveal()),
            token,
            lang: crate::i18n::Lang::of(&parts.headers),
            here: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), ToString::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csrf_token_matches_its_secret_only() {
        let token = csrf_for("secret-1");
        assert!(csrf_matches("secret-1", &token));
        assert!(!csrf_matches("secret-2", &token));
        assert!(!csrf_matches("secret-1", ""));
    }

    #[test]
    fn cookies_are_found_by_name_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; tidings_session=xyz; b=2".parse().unwrap(),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("xyz"));
        assert_eq!(cookie(&headers, "c"), None);
        let set = set_cookie(SESSION_COOKIE, "v", 60, true);
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.ends_with("Secure")
        );
    }
}
