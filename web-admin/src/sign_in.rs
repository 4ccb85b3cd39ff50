//! Signing in and out.

use std::num::NonZeroU32;
use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use tidings_api::extract::ClientAddress;
use tidings_api::AppState;
use tidings_core::services::accounts::SESSION_HOURS;
use tidings_core::services::{Refusal, ServiceError};

use crate::form::Posted;
use crate::session::{self, cookie, csrf_for, csrf_matches, set_cookie};
use crate::Web;

type Keyed<K> = governor::DefaultKeyedRateLimiter<K>;

/// Sign-in attempts allowed per account and per client address, each a minute.
pub const TRIES_PER_ACCOUNT_PER_MINUTE: u32 = 5;
pub const TRIES_PER_CLIENT_PER_MINUTE: u32 = 20;

#[derive(Debug)]
pub struct Limits {
    per_account: Keyed<String>,
    per_client: Keyed<Option<std::net::IpAddr>>,
}

impl Default for Limits {
    fn default() -> Self {
        let per_minute = |n| governor::Quota::per_minute(NonZeroU32::new(n).expect("not zero"));
        Self {
            per_account: governor::RateLimiter::keyed(per_minute(TRIES_PER_ACCOUNT_PER_MINUTE)),
            per_client: governor::RateLimiter::keyed(per_minute(TRIES_PER_CLIENT_PER_MINUTE)),
        }
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    styles: &'a str,
    csrf: String,
    email: String,
    error: Option<&'a str>,
}

/// A random value for the sign-in form's cookie.
fn form_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn render(status: StatusCode, page: SignInPage<'_>, set: Option<String>) -> Response {
    let body = match page.render() {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(error = %error, "rendering the sign-in page failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let mut response = (status, Html(body)).into_response();
    if let Some(set) = set.and_then(|s| s.parse().ok()) {
        response.headers_mut().append(header::SET_COOKIE, set);
    }
    response
}

pub async fn page(Extension(web): Extension<Arc<Web>>, headers: HeaderMap) -> Response {
    let (secret, set) = match cookie(&headers, session::FORM_COOKIE) {
        Some(secret) => (secret.to_owned(), None),
        None => {
            let secret = form_secret();
            let set = set_cookie(session::FORM_COOKIE, &secret, 3600, web.secure_cookies);
            (secret, Some(set))
        }
    };
    let page = SignInPage {
        styles: crate::assets::styles_url(),
        csrf: csrf_for(&secret),
        email: String::new(),
        error: None,
    };
    render(StatusCode::OK, page, set)
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    email: String,
    password: String,
    csrf: String,
}

pub async fn submit(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    ClientAddress(client): ClientAddress,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let secret = cookie(&headers, session::FORM_COOKIE).unwrap_or_default();
    let again = |status, error| {
        let page = SignInPage {
            styles: crate::assets::styles_url(),
            csrf: csrf_for(secret),
            email: form.email.clone(),
            error: Some(error),
        };
        render(status, page, None)
    };
    if secret.is_empty() || !csrf_matches(secret, &form.csrf) {
        return again(
            StatusCode::FORBIDDEN,
            "This form has expired. Please sign in again.",
        );
    }
    let account = form.email.trim().to_lowercase();
    if web.sign_ins.per_client.check_key(&client).is_err()
        || web.sign_ins.per_account.check_key(&account).is_err()
    {
        return again(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts. Please wait a minute and try again.",
        );
    }
    match state.services().sign_in(&form.email, &form.password).await {
        Ok(session) => {
            let max_age = SESSION_HOURS * 3600;
            let set = set_cookie(
                session::SESSION_COOKIE,
                &session.token.reveal(),
                max_age,
                web.secure_cookies,
            );
            let mut response = Redirect::to("/").into_response();
            if let Ok(value) = set.parse() {
                response.headers_mut().append(header::SET_COOKIE, value);
            }
            response
        }
        Err(ServiceError::Refused(Refusal::BadCredentials)) => again(
            StatusCode::UNAUTHORIZED,
            "The email address or password is wrong.",
        ),
        Err(error) => {
            tracing::error!(error = %error, "signing in failed");
            again(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Signing in failed on our side. Please try again.",
            )
        }
    }
}

pub async fn sign_out(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    Posted { signed_in, .. }: Posted,
) -> Response {
    if let Err(error) = state
        .services()
        .sign_out(&signed_in.staff, signed_in.token.id)
        .await
    {
        tracing::error!(error = %error, "signing out failed");
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let mut response = Redirect::to("/sign-in").into_response();
    let clear = set_cookie(session::SESSION_COOKIE, "", 0, web.secure_cookies);
    if let Ok(value) = clear.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}
