//! A minimal OpenID Connect identity provider, so that single sign-on can be tried and
//! tested with no Google or Microsoft account: discovery, its keys (JWKS), the
//! authorization code flow with PKCE (S256 only), and signed ID tokens (RS256, with an
//! RSA key made at start).
//!
//! Under [`PATH`] (the issuer is `<base>/_sandbox/oidc`):
//! - `GET /.well-known/openid-configuration`, `GET /jwks`;
//! - `GET /authorize`: a small page to type (or confirm the `login_hint`'s) email address
//!   to sign in as, and whether the provider vouches for it; `POST /authorize` sends the
//!   browser back to the client with a code (or `error=access_denied`);
//! - `POST /token`: the code for an ID token, once the client's id and secret (HTTP Basic
//!   or in the form), the `redirect_uri` and the PKCE verifier all match. A code is good
//!   once, for a minute.
//!
//! Anyone may sign in as anyone here: it is a sandbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand_core::{OsRng, RngCore};
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// Where the provider's routes are, on the sandbox's (or `serve --demo`'s) server.
pub const PATH: &str = "/_sandbox/oidc";
/// The client it knows unless told otherwise.
pub const DEFAULT_CLIENT_ID: &str = "tidings-sandbox";
pub const DEFAULT_CLIENT_SECRET: &str = "sandbox-oidc-secret";
/// How long a code may wait to be exchanged.
const CODE_LIFE: Duration = Duration::from_secs(60);
/// How long an ID token is good for.
const TOKEN_SECONDS: i64 = 300;

/// The one client registered with the provider.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// `http://127.0.0.1:8080/_sandbox/oidc`: where it is reached, and what its tokens
    /// say they are from.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
}

impl ProviderConfig {
    /// The provider of a server whose base URL is `base` (`http://127.0.0.1:8080`), with
    /// the default client.
    pub fn at(base: &str) -> Self {
        Self {
            issuer: format!("{}{PATH}", base.trim_end_matches('/')),
            client_id: DEFAULT_CLIENT_ID.into(),
            client_secret: DEFAULT_CLIENT_SECRET.into(),
        }
    }
}

/// A code handed out and not yet exchanged.
struct Grant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    email: String,
    verified: bool,
    issued: Instant,
}

/// The identity provider: its client, its signing key, and the codes outstanding.
pub struct IdentityProvider {
    config: ProviderConfig,
    key: EncodingKey,
    /// The public key as a JWK.
    jwk: serde_json::Value,
    kid: String,
    grants: Mutex<HashMap<String, Grant>>,
}

impl std::fmt::Debug for IdentityProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityProvider")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl IdentityProvider {
    /// A provider with a new 2048-bit RSA key (a fraction of a second of CPU: call it off
    /// the async workers).
    pub fn new(config: ProviderConfig) -> Self {
        let private = rsa::RsaPrivateKey::new(&mut OsRng, 2048).expect("an RSA key generates");
        let public = private.to_public_key();
        let n = URL_SAFE_NO_PAD.encode(public.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(public.e().to_bytes_be());
        let kid = URL_SAFE_NO_PAD.encode(&Sha256::digest(n.as_bytes())[..8]);
        let der = private
            .to_pkcs1_der()
            .expect("an RSA key encodes as PKCS#1");
        Self {
            key: EncodingKey::from_rsa_der(der.as_bytes()),
            jwk: json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e }),
            kid,
            config,
            grants: Mutex::default(),
        }
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The provider's routes, under [`PATH`].
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route(
                &format!("{PATH}/.well-known/openid-configuration"),
                get(discovery),
            )
            .route(&format!("{PATH}/jwks"), get(jwks))
            .route(&format!("{PATH}/authorize"), get(authorize).post(approve))
            .route(&format!("{PATH}/token"), axum::routing::post(token))
            .with_state(self)
    }

    fn grants(&self) -> std::sync::MutexGuard<'_, HashMap<String, Grant>> {
        self.grants.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Idp = State<Arc<IdentityProvider>>;

async fn discovery(State(idp): Idp) -> Json<serde_json::Value> {
    let issuer = &idp.config.issuer;
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "jwks_uri": format!("{issuer}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "email", "email_verified", "name"],
    }))
}

async fn jwks(State(idp): Idp) -> Json<serde_json::Value> {
    Json(json!({ "keys": [idp.jwk] }))
}

/// What an authorization request carries (OpenID Connect Core §3.1.2.1).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AuthorizationRequest {
    response_type: String,
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: String,
    code_challenge_method: String,
    login_hint: Option<String>,
}

impl AuthorizationRequest {
    /// Why the request cannot be answered by redirecting back, if it cannot: an unknown
    /// client or an unusable `redirect_uri` is said on the page (never redirected to).
    fn unanswerable(&self, idp: &IdentityProvider) -> Option<&'static str> {
        if self.client_id != idp.config.client_id {
            return Some("This client is not registered with the sandbox's identity provider.");
        }
        let redirect = self.redirect_uri.parse::<reqwest::Url>();
        if !redirect.is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.fragment().is_none())
        {
            return Some("The redirect_uri is not an http(s) URL.");
        }
        None
    }

    /// Why the request is refused (sent back as `invalid_request`), if it is.
    fn invalid(&self) -> Option<&'static str> {
        if self.response_type != "code" {
            return Some("only response_type=code is supported");
        }
        if !self.scope.split(' ').any(|s| s == "openid") {
            return Some("the scope must include openid");
        }
        if self.code_challenge_method != "S256" || self.code_challenge.len() != 43 {
            return Some("PKCE with S256 is required");
        }
        None
    }
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Sandbox identity provider</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:28rem;margin:10vh auto;padding:0 1rem;color:#1b1f24}}\
         label{{display:block;margin:.75rem 0 .25rem}}input[type=email]{{width:100%;padding:.5rem;font:inherit;border:1px solid #4a5560;border-radius:4px}}\
         button{{margin:1rem .5rem 0 0;padding:.6rem 1.2rem;font:inherit;border-radius:4px;border:1px solid #0b5cad;background:#0b5cad;color:#fff}}\
         button.secondary{{background:#fff;color:#0b5cad}}:focus-visible{{outline:3px solid #f0b400;outline-offset:2px}}\
         .note{{color:#4a5560}}</style></head>\
         <body><main data-page=\"sandbox-idp\"><h1>{title}</h1>{body}</main></body></html>"
    );
    (status, Html(html)).into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// `redirect_uri` with `params` added to its query.
fn back_to(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    let mut url = match reqwest::Url::parse(redirect_uri) {
        Ok(url) => url,
        Err(_) => return redirect_uri.to_owned(),
    };
    {
        let mut query = url.query_pairs_mut();
        for (name, value) in params {
            query.append_pair(name, value);
        }
    }
    url.into()
}

async fn authorize(State(idp): Idp, Query(request): Query<AuthorizationRequest>) -> Response {
    if let Some(why) = request.unanswerable(&idp) {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in refused",
            &format!("<p>{why}</p>"),
        );
    }
    if let Some(why) = request.invalid() {
        let mut params = vec![("error", "invalid_request"), ("error_description", why)];
        if let Some(state) = &request.state {
            params.push(("state", state));
        }
        return Redirect::to(&back_to(&request.redirect_uri, &params)).into_response();
    }
    let hidden = |name: &str, value: &str| {
        format!(
            "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
            escape(value)
        )
    };
    let body = format!(
        "<p class=\"note\">This is the Tidings sandbox's identity provider: it signs anyone in as \
         whoever they say. A real district's provider (Google Workspace, Microsoft Entra) would \
         ask for a password here.</p>\
         <form method=\"post\" action=\"{PATH}/authorize\">{}{}{}{}{}\
         <label for=\"email\">Sign in as (email address)</label>\
         <input id=\"email\" name=\"email\" type=\"email\" required autofocus autocomplete=\"username\" value=\"{}\">\
         <label><input type=\"checkbox\" name=\"verified\" value=\"yes\" checked> The provider vouches for this address (email_verified)</label>\
         <button type=\"submit\" name=\"decision\" value=\"approve\" id=\"approve\">Sign in</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\" class=\"secondary\" formnovalidate>Cancel</button>\
         </form>",
        hidden("client_id", &request.client_id),
        hidden("redirect_uri", &request.redirect_uri),
        hidden("state", request.state.as_deref().unwrap_or_default()),
        hidden("nonce", request.nonce.as_deref().unwrap_or_default()),
        hidden("code_challenge", &request.code_challenge),
        escape(request.login_hint.as_deref().unwrap_or_default()),
    );
    page(StatusCode::OK, "Sandbox sign-in", &body)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Approval {
    client_id: String,
    redirect_uri: String,
    state: String,
    nonce: String,
    code_challenge: String,
    email: String,
    verified: Option<String>,
    decision: String,
}

async fn approve(State(idp): Idp, Form(approval): Form<Approval>) -> Response {
    let request = AuthorizationRequest {
        client_id: approval.client_id.clone(),
        redirect_uri: approval.redirect_uri.clone(),
        ..Default::default()
    };
    if let Some(why) = request.unanswerable(&idp) {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in refused",
            &format!("<p>{why}</p>"),
        );
    }
    let state = approval.state.as_str();
    let with_state = |mut params: Vec<(&'static str, String)>| {
        if !state.is_empty() {
            params.push(("state", state.to_owned()));
        }
        params
    };
    let email = approval.email.trim();
    if approval.decision != "approve" || email.is_empty() {
        let params = with_state(vec![("error", "access_denied".to_owned())]);
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        return Redirect::to(&back_to(&approval.redirect_uri, &params)).into_response();
    }
    let mut code = [0u8; 32];
    OsRng.fill_bytes(&mut code);
    let code = URL_SAFE_NO_PAD.encode(code);
    {
        let mut grants = idp.grants();
        grants.retain(|_, g| g.issued.elapsed() < CODE_LIFE);
        grants.insert(
            code.clone(),
            Grant {
                client_id: approval.client_id.clone(),
                redirect_uri: approval.redirect_uri.clone(),
                challenge: approval.code_challenge.clone(),
                nonce: Some(approval.nonce.clone()).filter(|n| !n.is_empty()),
                email: email.to_owned(),
                verified: approval.verified.as_deref() == Some("yes"),
                issued: Instant::now(),
            },
        );
    }
    let params = with_state(vec![("code", code), ("iss", idp.config.issuer.clone())]);
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Redirect::to(&back_to(&approval.redirect_uri, &params)).into_response()
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// The client's id and secret: HTTP Basic (each part form-encoded, RFC 6749 §2.3.1), or
/// `client_id` and `client_secret` in the form.
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Option<(String, String)> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|v| STANDARD.decode(v.trim()).ok())
        .and_then(|v| String::from_utf8(v).ok());
    if let Some(pair) = basic {
        let (id, secret) = pair.split_once(':')?;
        let decode = |s: &str| {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        };
        return Some((decode(id)?, decode(secret)?));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

async fn token(
    State(idp): Idp,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    let Some((client_id, secret)) = client_credentials(&headers, &form) else {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "no client credentials",
        );
    };
    let known = client_id == idp.config.client_id
        && bool::from(secret.as_bytes().ct_eq(idp.config.client_secret.as_bytes()));
    if !known {
        return token_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    }
    if field("grant_type") != "authorization_code" {
        return token_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only authorization_code",
        );
    }
    // A code is spent by its first use, right or wrong (RFC 6749 §4.1.2).
    let Some(grant) = idp.grants().remove(field("code")) else {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or used code",
        );
    };
    if grant.issued.elapsed() >= CODE_LIFE {
        return token_error(StatusCode::BAD_REQUEST, "invalid_grant", "the code expired");
    }
    if grant.client_id != client_id || grant.redirect_uri != field("redirect_uri") {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the code was issued to another client or redirect_uri",
        );
    }
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(field("code_verifier").as_bytes()));
    if !bool::from(challenge.as_bytes().ct_eq(grant.challenge.as_bytes())) {
        return token_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "the PKCE code_verifier does not match",
        );
    }
    let now = chrono::Utc::now().timestamp();
    let subject =
        URL_SAFE_NO_PAD.encode(&Sha256::digest(grant.email.to_lowercase().as_bytes())[..12]);
    let mut claims = json!({
        "iss": idp.config.issuer,
        "sub": subject,
        "aud": client_id,
        "iat": now,
        "exp": now + TOKEN_SECONDS,
        "email": grant.email,
        "email_verified": grant.verified,
        "name": grant.email.split('@').next().unwrap_or_default(),
    });
    if let Some(nonce) = grant.nonce {
        claims["nonce"] = json!(nonce);
    }
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(idp.kid.clone());
    let id_token = match jsonwebtoken::encode(&header, &claims, &idp.key) {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(error = %error, "the sandbox could not sign an ID token");
            return token_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "signing failed",
            );
        }
    };
    let mut access = [0u8; 24];
    OsRng.fill_bytes(&mut access);
    Json(json!({
        "access_token": URL_SAFE_NO_PAD.encode(access),
        "token_type": "Bearer",
        "expires_in": TOKEN_SECONDS,
        "id_token": id_token,
    }))
    .into_response()
}
