//! Signing in and out: with email and password, or with the district's account through
//! its identity provider (single sign-on with OpenID Connect, `crate::oidc`). Both end in
//! the same kind of session, and both are bounded per account and per client.

use std::num::NonZeroU32;
use std::sync::Arc;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use tidings_api::extract::ClientAddress;
use tidings_api::AppState;
use tidings_core::services::accounts::{Session, SESSION_HOURS};
use tidings_core::services::{Refusal, ServiceError};
use tidings_core::store::District;
use tidings_core::DistrictId;

use crate::form::Posted;
use crate::i18n::Lang;
use crate::oidc::{self, Flow, OidcError};
use crate::session::{self, cookie, csrf_for, csrf_matches, set_cookie};
use crate::Web;

type Keyed<K> = tidings_core::clock::KeyedLimiter<K>;

/// Sign-in attempts allowed per account and per client address, each a minute.
pub const TRIES_PER_ACCOUNT_PER_MINUTE: u32 = 5;
pub const TRIES_PER_CLIENT_PER_MINUTE: u32 = 20;

#[derive(Debug)]
pub struct Limits {
    per_account: Keyed<String>,
    per_client: Keyed<Option<std::net::IpAddr>>,
}

impl Limits {
    /// Fresh bounds, refilled as `clock` moves.
    pub fn new(clock: std::sync::Arc<dyn tidings_core::clock::Clock>) -> Self {
        let per_minute = |n| governor::Quota::per_minute(NonZeroU32::new(n).expect("not zero"));
        let clock = tidings_core::clock::RateClock(clock);
        Self {
            per_account: Keyed::hashmap_with_clock(
                per_minute(TRIES_PER_ACCOUNT_PER_MINUTE),
                clock.clone(),
            ),
            per_client: Keyed::hashmap_with_clock(per_minute(TRIES_PER_CLIENT_PER_MINUTE), clock),
        }
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage<'a> {
    lang: Lang,
    styles: &'a str,
    csrf: String,
    email: String,
    error: Option<&'a str>,
    /// Districts whose staff may sign in with their district account.
    sso: Vec<District>,
}

impl SignInPage<'_> {
    /// The languages to switch to, with their links back to this page.
    fn other_languages(&self) -> Vec<(Lang, String)> {
        self.lang.others("/sign-in")
    }
}

/// A random value for the sign-in form's cookie.
fn form_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The CSRF secret of a form shown before sign-in (staff's, and the guardian app's): the
/// browser's form cookie, or a new one with the `Set-Cookie` that keeps it.
pub(crate) fn form_cookie(headers: &HeaderMap, secure: bool) -> (String, Option<String>) {
    match cookie(headers, session::FORM_COOKIE) {
        Some(secret) => (secret.to_owned(), None),
        None => {
            let secret = form_secret();
            let set = set_cookie(session::FORM_COOKIE, &secret, 3600, secure);
            (secret, Some(set))
        }
    }
}

/// Whether a form posted before sign-in carries the CSRF token of its form cookie.
pub(crate) fn form_fresh(headers: &HeaderMap, submitted: &str) -> bool {
    cookie(headers, session::FORM_COOKIE).is_some_and(|secret| csrf_matches(secret, submitted))
}

pub(crate) fn with_cookies(
    mut response: Response,
    cookies: impl IntoIterator<Item = String>,
) -> Response {
    for cookie in cookies {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// The sign-in page, in the request's language, with `error` said when there is one
/// (already in that language): its form's cookie is set when the browser has none yet.
async fn sign_in_page(
    state: &AppState,
    web: &Web,
    headers: &HeaderMap,
    status: StatusCode,
    email: &str,
    error: Option<&str>,
) -> Response {
    let (secret, set) = form_cookie(headers, web.secure_cookies);
    let sso = match state.store.sso_districts().await {
        Ok(districts) => districts,
        Err(error) => {
            // The password form still works without them.
            tracing::error!(error = %error, "reading the districts with single sign-on failed");
            Vec::new()
        }
    };
    let page = SignInPage {
        lang: Lang::of(headers),
        styles: crate::assets::styles_url(),
        csrf: csrf_for(&secret),
        email: email.to_owned(),
        error,
        sso,
    };
    let body = match page.render() {
        Ok(body) => body,
        Err(error) => {
            tracing::error!(error = %error, "rendering the sign-in page failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    with_cookies((status, Html(body)).into_response(), set)
}

pub async fn page(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
) -> Response {
    sign_in_page(&state, &web, &headers, StatusCode::OK, "", None).await
}

#[derive(Debug, Deserialize)]
pub struct SignInForm {
    email: String,
    password: String,
    csrf: String,
}

/// The answer to a successful sign-in: the session's cookie, and on to the messages.
fn signed_in(web: &Web, session: &Session, also: Option<String>) -> Response {
    let set = set_cookie(
        session::SESSION_COOKIE,
        &session.token.reveal(),
        SESSION_HOURS * 3600,
        web.secure_cookies,
    );
    with_cookies(
        Redirect::to("/").into_response(),
        std::iter::once(set).chain(also),
    )
}

/// Whether this client, or this account, tried too often in the past minute (each try
/// counts, for either).
fn too_many(web: &Web, client: Option<std::net::IpAddr>, account: Option<&str>) -> bool {
    web.sign_ins.per_client.check_key(&client).is_err()
        || account.is_some_and(|account| {
            web.sign_ins
                .per_account
                .check_key(&account.trim().to_lowercase())
                .is_err()
        })
}

fn too_many_tries(lang: Lang) -> &'static str {
    lang.t("Too many attempts. Please wait a minute and try again.")
}

pub async fn submit(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    ClientAddress(client): ClientAddress,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let lang = Lang::of(&headers);
    let again =
        |status, error| sign_in_page(&state, &web, &headers, status, &form.email, Some(error));
    if !form_fresh(&headers, &form.csrf) {
        return again(
            StatusCode::FORBIDDEN,
            lang.t("This form has expired. Please sign in again."),
        )
        .await;
    }
    if too_many(&web, client, Some(&form.email)) {
        return again(StatusCode::TOO_MANY_REQUESTS, too_many_tries(lang)).await;
    }
    match state.services().sign_in(&form.email, &form.password).await {
        Ok(session) => signed_in(&web, &session, None),
        Err(ServiceError::Refused(Refusal::BadCredentials)) => {
            again(
                StatusCode::UNAUTHORIZED,
                lang.t("The email address or password is wrong."),
            )
            .await
        }
        Err(error) => {
            tracing::error!(error = %error, "signing in failed");
            again(
                StatusCode::INTERNAL_SERVER_ERROR,
                lang.t("Signing in failed on our side. Please try again."),
            )
            .await
        }
    }
}

/// The cookie that holds a single sign-on in progress (`oidc::Flow`).
pub const FLOW_COOKIE: &str = "tidings_oidc";

/// Where the identity provider sends the browser back to.
pub const CALLBACK_PATH: &str = "/sign-in/oidc/callback";

/// `https://tidings.example.org/sign-in/oidc/callback`: from `public_url`, else from the
/// address the browser used (fine on this machine; set `public_url` behind a proxy).
pub fn redirect_uri(web: &Web, headers: &HeaderMap) -> String {
    match &web.public_url {
        Some(base) => format!("{}{CALLBACK_PATH}", base.trim_end_matches('/')),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}{CALLBACK_PATH}")
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct StartQuery {
    district: String,
}

/// "Sign in with your district account": off to the district's identity provider, the
/// flow's state, nonce and PKCE verifier kept in a cookie for the way back.
pub async fn start_sso(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    headers: HeaderMap,
    Query(query): Query<StartQuery>,
) -> Response {
    let lang = Lang::of(&headers);
    let refuse = |status, error| sign_in_page(&state, &web, &headers, status, "", Some(error));
    let Ok(district) = query.district.parse().map(DistrictId::from_uuid) else {
        return refuse(StatusCode::NOT_FOUND, no_sso(lang)).await;
    };
    let client = match district_client(&state, district, lang).await {
        Ok(client) => client,
        Err((status, said)) => return refuse(status, said).await,
    };
    let discovery = match web.oidc.discovery(&client.issuer).await {
        Ok(discovery) => discovery,
        Err(error) => {
            tracing::warn!(error = %error, %district, issuer = %client.issuer, "single sign-on: the provider is not usable");
            return refuse(StatusCode::BAD_GATEWAY, out_of_reach(lang)).await;
        }
    };
    let flow = Flow::start(district, state.clock.now().timestamp());
    let to = match flow.authorization_url(
        &discovery,
        client.client_id.as_str(),
        &redirect_uri(&web, &headers),
    ) {
        Ok(to) => to,
        Err(error) => {
            tracing::warn!(error = %error, %district, "single sign-on: the provider is not usable");
            return refuse(StatusCode::BAD_GATEWAY, out_of_reach(lang)).await;
        }
    };
    let keep = set_cookie(
        FLOW_COOKIE,
        &flow.to_cookie(),
        oidc::FLOW_SECONDS,
        web.secure_cookies,
    );
    with_cookies(Redirect::to(&to).into_response(), [keep])
}

/// The district's single sign-on, or how to refuse: it has none, or it cannot be read.
async fn district_client(
    state: &AppState,
    district: DistrictId,
    lang: Lang,
) -> Result<tidings_core::sso::SsoClient, (StatusCode, &'static str)> {
    match state.services().sso_client(district).await {
        Ok(Some(client)) => Ok(client),
        Ok(None) => Err((StatusCode::NOT_FOUND, no_sso(lang))),
        Err(error) => {
            tracing::error!(error = %error, %district, "reading a district's single sign-on failed");
            Err((StatusCode::INTERNAL_SERVER_ERROR, broken(lang)))
        }
    }
}

// Why single sign-on cannot go on, as the sign-in page says it in `lang`.

fn no_sso(lang: Lang) -> &'static str {
    lang.t("This district does not use single sign-on. Please sign in with your password.")
}

fn broken(lang: Lang) -> &'static str {
    lang.t("Single sign-on is not working for your district right now. Please tell your district's administrator, or sign in with your password.")
}

fn out_of_reach(lang: Lang) -> &'static str {
    lang.t("Your district's sign-in service cannot be reached right now. Please try again, or sign in with your password.")
}

fn stale(lang: Lang) -> &'static str {
    lang.t("This sign-in did not start here, or took too long. Please start again.")
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    /// RFC 9207: the provider that answers, when it says.
    iss: Option<String>,
}

/// The identity provider's answer: the code exchanged for an ID token, the token checked,
/// and the staff member of that district with that email signed in (never created).
pub async fn sso_callback(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    ClientAddress(client_address): ClientAddress,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let lang = Lang::of(&headers);
    // The flow is good for one answer, whatever it is.
    let forget = set_cookie(FLOW_COOKIE, "", 0, web.secure_cookies);
    let refuse = |status, error: &str| {
        let error = error.to_owned();
        let forget = forget.clone();
        let (state, web, headers) = (&state, &web, &headers);
        async move {
            let page = sign_in_page(state, web, headers, status, "", Some(&error)).await;
            with_cookies(page, [forget])
        }
    };
    let now = state.clock.now().timestamp();
    let flow = cookie(&headers, FLOW_COOKIE).and_then(Flow::from_cookie);
    let Some(flow) = flow.filter(|f| f.answers(query.state.as_deref().unwrap_or_default(), now))
    else {
        return refuse(StatusCode::BAD_REQUEST, stale(lang)).await;
    };
    let district = flow.district;
    if let Some(error) = &query.error {
        tracing::info!(%district, error = %error.chars().take(100).collect::<String>(), "single sign-on: the provider did not sign in");
        return refuse(
            StatusCode::FORBIDDEN,
            lang.t("Your district's sign-in service did not sign you in. Please try again."),
        )
        .await;
    }
    let Some(code) = query.code.as_deref().filter(|c| !c.is_empty()) else {
        return refuse(StatusCode::BAD_REQUEST, stale(lang)).await;
    };
    if too_many(&web, client_address, None) {
        return refuse(StatusCode::TOO_MANY_REQUESTS, too_many_tries(lang)).await;
    }
    let client = match district_client(&state, district, lang).await {
        Ok(client) => client,
        Err((status, said)) => return refuse(status, said).await,
    };
    if query
        .iss
        .as_deref()
        .is_some_and(|iss| iss != client.issuer.as_str())
    {
        tracing::warn!(%district, "single sign-on: the answer names another issuer");
        return refuse(StatusCode::BAD_REQUEST, stale(lang)).await;
    }
    let redirect_uri = redirect_uri(&web, &headers);
    let identity = match web
        .oidc
        .exchange(&client, code, &redirect_uri, &flow.verifier)
        .await
    {
        Ok(id_token) => {
            let now = state.clock.now().timestamp();
            web.oidc.verify(&client, &id_token, &flow.nonce, now).await
        }
        Err(error) => Err(error),
    };
    let identity = match identity {
        Ok(identity) => identity,
        Err(error) => {
            tracing::warn!(error = %error, %district, issuer = %client.issuer, "single sign-on failed");
            let said = match error {
                OidcError::Unverified(_) => lang.t("Your district's sign-in service did not confirm your email address, so Tidings cannot tell who you are."),
                OidcError::Unreachable { .. } | OidcError::Status { .. } => out_of_reach(lang),
                _ => broken(lang),
            };
            return refuse(StatusCode::FORBIDDEN, said).await;
        }
    };
    if too_many(&web, None, Some(&identity.email)) {
        return refuse(StatusCode::TOO_MANY_REQUESTS, too_many_tries(lang)).await;
    }
    match state
        .services()
        .sign_in_sso(district, &identity.email)
        .await
    {
        Ok(session) => signed_in(&web, &session, Some(forget)),
        Err(ServiceError::Refused(refusal)) => {
            tracing::info!(%district, refusal = %refusal, "single sign-on: refused");
            let (status, said) = crate::form::said_in(&refusal, lang);
            refuse(status, &said).await
        }
        Err(error) => {
            tracing::error!(error = %error, "signing in failed");
            refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                lang.t("Signing in failed on our side. Please try again."),
            )
            .await
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
