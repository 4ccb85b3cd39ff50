//! The sandbox over HTTP (`tidings sandbox`): provider endpoints that validate requests
//! as the real ones do and answer in their formats, status callbacks signed as the
//! provider signs them, and the control endpoints
//!
//! - `GET /_sandbox/received`: what was accepted, and how many were duplicates;
//! - `GET|PUT /_sandbox/faults`: the [`Faults`] in force (PUT a JSON object to change
//!   them; the schedule restarts from its seed);
//! - `POST /_sandbox/email-events`: has an email provider report an event about a
//!   message (SendGrid's or Mailgun's format and signature) to the callback base;
//! - `POST /_sandbox/sms-replies`: a guardian's SMS to the district's number, posted as
//!   Twilio's signed inbound webhook;
//! - `GET /_sandbox/keys`: what receivers need to check the sandbox's signatures;
//! - `/_sandbox/oidc/…`: an OpenID Connect identity provider ([`crate::oidc`]), when
//!   [`SandboxConfig::identity_provider`] is set;
//! - `/_sandbox/web-push/…`: browsers' subscriptions to its Web Push service
//!   ([`crate::web_push`]).
//!
//! Provider endpoints:
//! - Twilio: `POST /2010-04-01/Accounts/{sid}/Messages.json`;
//! - APNs: `POST /3/device/{token}` (HTTP/2 only, as Apple's);
//! - FCM: `POST /v1/projects/{project}/messages:send`, with the OAuth2 token endpoint
//!   `POST /token` its service-account files can point at;
//! - Web Push: `POST /push/{subscription}` (RFC 8030, VAPID, RFC 8291 payloads).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use base64::Engine as _;
use serde_json::json;
use subtle::ConstantTimeEq as _;
use tidings_channel_adapters::twilio;
use tidings_core::{Channel, DeliveryId, PhoneNumber};

use crate::{Fate, Faults, InProcessProvider, Received};

/// How the sandbox presents itself.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The auth token of every Twilio account the sandbox plays (any `AC…` sid): requests
    /// must authenticate with it, and status callbacks are signed with it.
    pub twilio_auth_token: String,
    /// Where callbacks really go, when the URLs our service names are public ones this
    /// machine cannot reach (the sandbox then posts to this base with the same path and
    /// query, and signs the URL as given, as a provider behind a proxy would be seen).
    pub callback_base: Option<String>,
    /// How long a send fated to be in doubt hangs before its connection is dropped.
    pub hang: Duration,
    /// The APNs signing key's public point (65 bytes, uncompressed P-256): provider
    /// tokens are verified with it. Without it only their form and age are checked.
    pub apns_public_key: Option<Vec<u8>>,
    /// The Mailgun webhook signing key its email events are signed with.
    pub mailgun_signing_key: String,
    /// The identity provider to serve under `/_sandbox/oidc`, if any.
    pub identity_provider: Option<Arc<crate::oidc::IdentityProvider>>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            twilio_auth_token: "sandbox-auth-token".into(),
            callback_base: None,
            hang: Duration::from_secs(120),
            apns_public_key: None,
            mailgun_signing_key: "sandbox-mailgun-signing-key".into(),
            identity_provider: None,
        }
    }
}

#[derive(Clone)]
struct Shared {
    provider: InProcessProvider,
    config: Arc<SandboxConfig>,
    callbacks: reqwest::Client,
    /// Status callbacks being posted at once, at most [`CALLBACKS_AT_ONCE`]: a provider's
    /// webhook sender keeps a bounded number of requests open, and so does this one.
    callback_slots: Arc<tokio::sync::Semaphore>,
    /// FCM access tokens handed out by `/token`.
    access_tokens: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Signs the SendGrid-style email events; its public key is at `/_sandbox/keys`.
    sendgrid: Arc<tidings_channel_adapters::sendgrid::SigningKey>,
}

/// The sandbox's routes, over `provider` (which holds its faults and what it received).
pub fn router(provider: InProcessProvider, config: SandboxConfig) -> Router {
    let identity = config
        .identity_provider
        .clone()
        .map(|idp| idp.router())
        .unwrap_or_default();
    let web_push = crate::web_push::router(provider.clone(), config.hang);
    let shared = Shared {
        provider,
        config: Arc::new(config),
        callbacks: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("a plain HTTP client builds"),
        callback_slots: Arc::new(tokio::sync::Semaphore::new(CALLBACKS_AT_ONCE)),
        access_tokens: Arc::default(),
        sendgrid: Arc::new(tidings_channel_adapters::sendgrid::SigningKey::generate()),
    };
    Router::new()
        .route(
            "/2010-04-01/Accounts/{sid}/Messages.json",
            post(twilio_messages),
        )
        .route("/3/device/{token}", post(apns_send))
        .route("/token", post(oauth_token))
        .route("/v1/projects/{project}/messages:send", post(fcm_send))
        .route("/_sandbox/received", get(received))
        .route("/_sandbox/faults", get(faults).put(set_faults))
        .route("/_sandbox/keys", get(keys))
        .route("/_sandbox/email-events", post(email_event))
        .route("/_sandbox/sms-replies", post(sms_reply))
        .with_state(shared)
        .merge(identity)
        .merge(web_push)
}

/// Serves the sandbox on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    provider: InProcessProvider,
    config: SandboxConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(provider, config))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn received(State(shared): State<Shared>) -> Json<serde_json::Value> {
    Json(json!({
        "items": shared.provider.received(),
        "duplicates": shared.provider.duplicates(),
        "sends": shared.provider.sends(),
        "status_reports_finished": shared.provider.reports_finished(),
        "over_rate": shared.provider.over_rate(),
    }))
}

async fn faults(State(shared): State<Shared>) -> Json<Faults> {
    Json(shared.provider.faults())
}

async fn set_faults(State(shared): State<Shared>, Json(faults): Json<Faults>) -> Response {
    if let Some(problem) = faults.problem() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": problem })),
        )
            .into_response();
    }
    shared.provider.set_faults(faults);
    Json(faults).into_response()
}

/// A Twilio REST error, in Twilio's body format.
fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
    )
        .into_response()
}

/// The HTTP Basic credentials of a request.
fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Twilio's magic test numbers, answered as Twilio answers them for test credentials.
fn magic_number(to: &str) -> Option<(u32, &'static str)> {
    match to {
        "+15005550001" => Some((21211, "The 'To' number is not a valid phone number.")),
        "+15005550002" => Some((
            21612,
            "The 'To' phone number is not currently reachable via SMS.",
        )),
        "+15005550004" => Some((21610, "Attempt to send to unsubscribed recipient")),
        "+15005550009" => Some((21614, "'To' number is not a valid mobile number")),
        _ => None,
    }
}

async fn twilio_messages(
    State(shared): State<Shared>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    // Authentication: the account SID (or an API key SID) with the auth token.
    let authenticated = basic_auth(&headers).is_some_and(|(user, password)| {
        (user == sid || user.starts_with("SK"))
            && bool::from(
                password
                    .as_bytes()
                    .ct_eq(shared.config.twilio_auth_token.as_bytes()),
            )
    });
    if !sid.starts_with("AC") || !authenticated {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(to) = field("To") else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    if field("From").is_none() && field("MessagingServiceSid").is_none() {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    }
    let body = field("Body").unwrap_or_default();
    if body.is_empty() {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    }
    if body.chars().count() > 1600 {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21617,
            "The concatenated message body exceeds the 1600 character limit.",
        );
    }
    if let Some((code, message)) = magic_number(to) {
        return twilio_error(StatusCode::BAD_REQUEST, code, message);
    }
    if !to.starts_with('+') || PhoneNumber::parse(to).is_err() {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    let callback = field("StatusCallback").map(str::to_owned);
    let delivery_id = callback.as_deref().and_then(delivery_in);
    let fate = fate(&shared).await;
    match fate {
        Fate::Transient => {
            return twilio_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                20500,
                "Internal Server Error",
            )
        }
        Fate::Throttled => {
            let mut response =
                twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return response;
        }
        Fate::Permanent => {
            return twilio_error(
                StatusCode::BAD_REQUEST,
                21211,
                &format!("The 'To' number {to} is not a valid phone number."),
            )
        }
        Fate::InDoubt | Fate::Accepted => {}
    }
    let message_sid = format!("SM{}", uuid::Uuid::now_v7().simple());
    let from = field("From")
        .or(field("MessagingServiceSid"))
        .unwrap_or_default()
        .to_owned();
    shared.provider.record(Received {
        provider: "twilio".into(),
        delivery_id,
        // Twilio keeps no idempotency key: the delivery named in the callback URL is what
        // tells a second send of the same delivery apart from a new one.
        idempotency_key: delivery_id.map_or_else(|| message_sid.clone(), |d| d.to_string()),
        channel: Channel::Sms,
        address: to.to_owned(),
        body: body.to_owned(),
        provider_ref: message_sid.clone(),
        at: shared.provider.now(),
    });
    if let Some(callback) = callback {
        let status = StatusReport {
            account_sid: sid.clone(),
            message_sid: message_sid.clone(),
            from: from.clone(),
            to: to.to_owned(),
            callback,
        };
        tokio::spawn(report_status(shared.clone(), status));
    }
    if fate == Fate::InDoubt {
        // Taken, but the answer never comes: the sender times out not knowing.
        tokio::time::sleep(shared.config.hang).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    (
        StatusCode::CREATED,
        Json(json!({
            "account_sid": sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": chrono::Utc::now().to_rfc2822(),
            "direction": "outbound-api",
            "error_code": null,
            "error_message": null,
            "from": from,
            "num_segments": "1",
            "sid": message_sid,
            "status": "queued",
            "to": to,
            "uri": format!("/2010-04-01/Accounts/{sid}/Messages/{message_sid}.json"),
        })),
    )
        .into_response()
}

/// The delivery id our adapter puts in the status-callback URL.
fn delivery_in(callback: &str) -> Option<DeliveryId> {
    let (_, query) = callback.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "delivery")
        .and_then(|(_, v)| v.parse::<uuid::Uuid>().ok())
        .map(DeliveryId::from_uuid)
}

struct StatusReport {
    account_sid: String,
    message_sid: String,
    from: String,
    to: String,
    callback: String,
}

/// Sends the status callbacks of one accepted message (`sent`, then `delivered` or
/// `undelivered`), signed, with the callback faults in force.
async fn report_status(shared: Shared, report: StatusReport) {
    let _slot = shared.callback_slots.clone().acquire_owned().await;
    let faults = shared.provider.faults();
    let undelivered = shared.provider.chance(faults.undelivered);
    let mut statuses: Vec<&str> = vec![
        "sent",
        if undelivered {
            "undelivered"
        } else {
            "delivered"
        },
    ];
    if shared.provider.chance(faults.callback_reorder) {
        statuses.reverse();
    }
    if shared.provider.chance(faults.callback_drop) {
        statuses.remove(0);
    }
    if shared.provider.chance(faults.callback_duplicate) {
        statuses.push(statuses[statuses.len() - 1]);
    }
    let target = match &shared.config.callback_base {
        Some(base) => rebase(&report.callback, base),
        None => report.callback.clone(),
    };
    for status in statuses {
        let mut params: Vec<(String, String)> = vec![
            ("AccountSid".into(), report.account_sid.clone()),
            ("ApiVersion".into(), "2010-04-01".into()),
            ("From".into(), report.from.clone()),
            ("MessageSid".into(), report.message_sid.clone()),
            ("MessageStatus".into(), status.into()),
            ("SmsSid".into(), report.message_sid.clone()),
            ("SmsStatus".into(), status.into()),
            ("To".into(), report.to.clone()),
        ];
        if status == "undelivered" {
            params.push(("ErrorCode".into(), "30003".into()));
        }
        let signature =
            twilio::signature(&shared.config.twilio_auth_token, &report.callback, &params);
        let sent = shared
            .callbacks
            .post(&target)
            .header("X-Twilio-Signature", signature)
            .form(&params)
            .send()
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "sandbox: a status callback could not be delivered");
        }
    }
    shared.provider.report_finished();
}

/// `url` with its scheme and host replaced by `base`'s.
fn rebase(url: &str, base: &str) -> String {
    let path = url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("/");
    format!("{}{path}", base.trim_end_matches('/'))
}

/// Status callbacks the sandbox posts at once; the rest wait their turn.
const CALLBACKS_AT_ONCE: usize = 64;

/// An APNs error, in Apple's body format.
fn apns_error(status: StatusCode, reason: &str) -> Response {
    (status, Json(json!({ "reason": reason }))).into_response()
}

/// Waits out the configured latency, then rolls the fate of a send.
async fn fate(shared: &Shared) -> Fate {
    fate_of(&shared.provider).await
}

/// Waits out `provider`'s latency, then rolls the fate of a send to it.
pub(crate) async fn fate_of(provider: &InProcessProvider) -> Fate {
    let latency = provider.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if provider.over_account_rate() {
        return Fate::Throttled;
    }
    provider.roll()
}

/// Why an APNs provider token is refused, if it is.
fn apns_token_problem(shared: &Shared, headers: &HeaderMap) -> Option<&'static str> {
    let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("bearer ")
                .or_else(|| v.strip_prefix("Bearer "))
        })
    else {
        return Some("MissingProviderToken");
    };
    let Some(jwt) = tidings_channel_adapters::jwt::parse(token) else {
        return Some("InvalidProviderToken");
    };
    let well_formed = jwt.header["alg"] == "ES256"
        && jwt.header["kid"].is_string()
        && jwt.claims["iss"].is_string();
    if !well_formed {
        return Some("InvalidProviderToken");
    }
    if let Some(point) = &shared.config.apns_public_key {
        if !tidings_channel_adapters::jwt::es256_verifies(&jwt, point) {
            return Some("InvalidProviderToken");
        }
    }
    let issued = jwt.claims["iat"].as_i64().unwrap_or(0);
    if tidings_core::time::now().timestamp() - issued > 3600 {
        return Some("ExpiredProviderToken");
    }
    None
}

async fn apns_send(
    State(shared): State<Shared>,
    Path(token): Path<String>,
    version: axum::http::Version,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if version != axum::http::Version::HTTP_2 {
        return (
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "APNs speaks HTTP/2 only",
        )
            .into_response();
    }
    if let Some(reason) = apns_token_problem(&shared, &headers) {
        return apns_error(StatusCode::FORBIDDEN, reason);
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if header("apns-topic").is_none_or(str::is_empty) {
        return apns_error(StatusCode::BAD_REQUEST, "MissingTopic");
    }
    let apns_id = match header("apns-id") {
        Some(id) => match id.parse::<uuid::Uuid>() {
            Ok(id) => id,
            Err(_) => return apns_error(StatusCode::BAD_REQUEST, "BadMessageId"),
        },
        None => uuid::Uuid::now_v7(),
    };
    if header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return apns_error(StatusCode::BAD_REQUEST, "BadCollapseId");
    }
    if header("apns-priority").is_some_and(|p| !["1", "5", "10"].contains(&p)) {
        return apns_error(StatusCode::BAD_REQUEST, "BadPriority");
    }
    let hex = token.len() >= 64
        && token.len() <= 200
        && token.len() % 2 == 0
        && token.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex {
        return apns_error(StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    if token.starts_with("dead") {
        return (
            StatusCode::GONE,
            Json(json!({ "reason": "Unregistered", "timestamp": chrono::Utc::now().timestamp_millis() })),
        )
            .into_response();
    }
    if body.is_empty() {
        return apns_error(StatusCode::BAD_REQUEST, "PayloadEmpty");
    }
    if body.len() > 4096 {
        return apns_error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    }
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return apns_error(StatusCode::BAD_REQUEST, "BadPayload");
    };
    if !payload["aps"].is_object() {
        return apns_error(StatusCode::BAD_REQUEST, "BadPayload");
    }
    let fate = fate(&shared).await;
    match fate {
        Fate::Transient => {
            return apns_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError")
        }
        Fate::Throttled => {
            let mut response = apns_error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return response;
        }
        Fate::Permanent => return apns_error(StatusCode::BAD_REQUEST, "BadDeviceToken"),
        Fate::InDoubt | Fate::Accepted => {}
    }
    let alert = &payload["aps"]["alert"];
    let text = alert["body"]
        .as_str()
        .or(alert.as_str())
        .unwrap_or_default();
    shared.provider.record(Received {
        provider: "apns".into(),
        // APNs identifies a notification by its apns-id, which our adapter sets to the
        // delivery id: a resend of a delivery carries the same one.
        delivery_id: Some(DeliveryId::from_uuid(apns_id)),
        idempotency_key: apns_id.to_string(),
        channel: Channel::Push,
        address: token,
        body: text.to_owned(),
        provider_ref: apns_id.to_string(),
        at: shared.provider.now(),
    });
    if fate == Fate::InDoubt {
        tokio::time::sleep(shared.config.hang).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    let mut response = StatusCode::OK.into_response();
    if let Ok(value) = header::HeaderValue::from_str(&apns_id.to_string()) {
        response.headers_mut().insert("apns-id", value.clone());
        response.headers_mut().insert("apns-unique-id", value);
    }
    response
}

/// A Google API error, in its body format.
fn google_error(
    status: StatusCode,
    state: &str,
    fcm_code: Option<&str>,
    message: &str,
) -> Response {
    let details = match fcm_code {
        Some(code) => json!([{
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }]),
        None => json!([]),
    };
    (
        status,
        Json(json!({ "error": {
            "code": status.as_u16(),
            "message": message,
            "status": state,
            "details": details,
        }})),
    )
        .into_response()
}

/// Google's OAuth2 token endpoint for service accounts (the JWT-bearer grant). The
/// assertion's form, algorithm, claims and lifetime are checked; its signature is not
/// (the sandbox does not hold the service account's public key).
async fn oauth_token(
    State(shared): State<Shared>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let refuse = |why: &str| {
        (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "invalid_grant", "error_description": why })),
        )
            .into_response()
    };
    if field("grant_type") != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return refuse("unsupported grant_type");
    }
    let Some(jwt) = field("assertion").and_then(tidings_channel_adapters::jwt::parse) else {
        return refuse("the assertion is not a JWT");
    };
    let now = tidings_core::time::now().timestamp();
    let claims = &jwt.claims;
    let valid = jwt.header["alg"] == "RS256"
        && claims["iss"].as_str().is_some_and(|i| i.contains('@'))
        && claims["scope"]
            .as_str()
            .is_some_and(|s| s.contains("firebase.messaging"))
        && claims["aud"]
            .as_str()
            .is_some_and(|a| a.ends_with("/token"))
        && claims["exp"]
            .as_i64()
            .is_some_and(|exp| exp > now && exp <= now + 3600 + 60)
        && jwt.signature.len() >= 128;
    if !valid {
        return refuse("Invalid JWT: the claims or algorithm are wrong, or it has expired");
    }
    let token = format!("ya29.sandbox-{}", uuid::Uuid::now_v7().simple());
    shared
        .access_tokens
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(token.clone());
    Json(json!({ "access_token": token, "expires_in": 3599, "token_type": "Bearer" }))
        .into_response()
}

/// An FCM service-account key file (JSON) whose token endpoint is the sandbox's at
/// `base`, with a fresh RSA key: what `fcm.service_account_file` holds, for tests and
/// benchmarks.
pub fn fcm_service_account(base: &str) -> String {
    use rsa::pkcs8::EncodePrivateKey as _;
    let key = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
        .expect("a 2048-bit RSA key can be generated");
    let pem = key
        .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .expect("an RSA key encodes as PKCS#8");
    json!({
        "type": "service_account",
        "project_id": "tidings-test",
        "private_key_id": "0123",
        "private_key": pem.as_str(),
        "client_email": "push@tidings-test.iam.gserviceaccount.com",
        "token_uri": format!("{base}/token"),
    })
    .to_string()
}

async fn fcm_send(
    State(shared): State<Shared>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| {
            shared
                .access_tokens
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(t)
        });
    if !authorized {
        return google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            None,
            "Request had invalid authentication credentials.",
        );
    }
    let Ok(request) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "Invalid JSON payload received.",
        );
    };
    let message = &request["message"];
    let Some(token) = message["token"].as_str() else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "Recipient of the message is not set.",
        );
    };
    if token.len() < 20 {
        return google_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            Some("INVALID_ARGUMENT"),
            "The registration token is not a valid FCM registration token",
        );
    }
    if token.starts_with("dead") {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            Some("UNREGISTERED"),
            "Requested entity was not found.",
        );
    }
    let fate = fate(&shared).await;
    match fate {
        Fate::Transient => {
            return google_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                Some("INTERNAL"),
                "An internal error occurred.",
            )
        }
        Fate::Throttled => {
            let mut response = google_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                Some("QUOTA_EXCEEDED"),
                "Quota exceeded.",
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return response;
        }
        Fate::Permanent => {
            return google_error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                Some("UNREGISTERED"),
                "Requested entity was not found.",
            )
        }
        Fate::InDoubt | Fate::Accepted => {}
    }
    let delivery_id = message["data"]["delivery_id"]
        .as_str()
        .and_then(|d| d.parse::<uuid::Uuid>().ok())
        .map(DeliveryId::from_uuid);
    let name = format!(
        "projects/{project}/messages/0:{}",
        uuid::Uuid::now_v7().simple()
    );
    shared.provider.record(Received {
        provider: "fcm".into(),
        delivery_id,
        idempotency_key: delivery_id.map_or_else(|| name.clone(), |d| d.to_string()),
        channel: Channel::Push,
        address: token.to_owned(),
        body: message["notification"]["body"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        provider_ref: name.clone(),
        at: shared.provider.now(),
    });
    if fate == Fate::InDoubt {
        tokio::time::sleep(shared.config.hang).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    Json(json!({ "name": name })).into_response()
}

async fn keys(State(shared): State<Shared>) -> Json<serde_json::Value> {
    Json(json!({
        "sendgrid_public_key": shared.sendgrid.public_key(),
        "mailgun_signing_key": shared.config.mailgun_signing_key,
        "twilio_auth_token": shared.config.twilio_auth_token,
    }))
}

/// What `POST /_sandbox/email-events` asks for.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailEvent {
    /// `sendgrid` or `mailgun`.
    provider: String,
    /// The message's `Message-ID`, e.g. `<delivery-id@district.example.org>`.
    message_id: String,
    email: String,
    /// `delivered`, `bounce` (hard), `complaint` or `deferred`.
    event: String,
}

async fn email_event(State(shared): State<Shared>, Json(event): Json<EmailEvent>) -> Response {
    let refuse = |why: String| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": why })),
        )
            .into_response()
    };
    let Some(base) = shared.config.callback_base.clone() else {
        return refuse(
            "the sandbox has no callback base (--callback-base) to send events to".into(),
        );
    };
    if !["delivered", "bounce", "complaint", "deferred"].contains(&event.event.as_str()) {
        return refuse(format!(
            "unknown event {:?}: delivered, bounce, complaint or deferred",
            event.event
        ));
    }
    let now = chrono::Utc::now();
    let timestamp = now.timestamp().to_string();
    let url = format!(
        "{}/callbacks/email/{}",
        base.trim_end_matches('/'),
        event.provider
    );
    let request = match event.provider.as_str() {
        "sendgrid" => {
            let mut body = json!({
                "email": event.email,
                "timestamp": now.timestamp(),
                "smtp-id": event.message_id,
                "sg_event_id": uuid::Uuid::now_v7().simple().to_string(),
                "sg_message_id": format!("{}.filter0001", uuid::Uuid::now_v7().simple()),
            });
            let extra = match event.event.as_str() {
                "delivered" => json!({"event": "delivered", "response": "250 2.0.0 OK"}),
                "bounce" => {
                    json!({"event": "bounce", "type": "bounce", "status": "5.1.1", "reason": "550 5.1.1 The email account that you tried to reach does not exist"})
                }
                "complaint" => json!({"event": "spamreport"}),
                _ => {
                    json!({"event": "deferred", "attempt": "1", "response": "451 4.3.0 Please try again later"})
                }
            };
            if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
                body.extend(extra.clone());
            }
            let raw = serde_json::to_vec(&json!([body])).unwrap_or_default();
            shared
                .callbacks
                .post(&url)
                .header("content-type", "application/json")
                .header(
                    tidings_channel_adapters::sendgrid::TIMESTAMP_HEADER,
                    &timestamp,
                )
                .header(
                    tidings_channel_adapters::sendgrid::SIGNATURE_HEADER,
                    shared.sendgrid.sign(&timestamp, &raw),
                )
                .body(raw)
        }
        "mailgun" => {
            let token: String = {
                use rand::Rng as _;
                let mut rng = rand::thread_rng();
                (0..50)
                    .map(|_| format!("{:x}", rng.gen_range(0..16u8)))
                    .collect()
            };
            let signature = tidings_channel_adapters::mailgun::signature(
                &shared.config.mailgun_signing_key,
                &timestamp,
                &token,
            );
            let (name, extra) = match event.event.as_str() {
                "delivered" => (
                    "delivered",
                    json!({"delivery-status": {"code": 250, "message": "OK"}}),
                ),
                "bounce" => (
                    "failed",
                    json!({"severity": "permanent", "reason": "bounce", "delivery-status": {"code": 550, "message": "5.1.1 No such user"}}),
                ),
                "complaint" => ("complained", json!({})),
                _ => (
                    "failed",
                    json!({"severity": "temporary", "reason": "generic", "delivery-status": {"code": 451, "message": "4.3.0 Try again later"}}),
                ),
            };
            let mut data = json!({
                "event": name,
                "id": uuid::Uuid::now_v7().simple().to_string(),
                "timestamp": now.timestamp_micros() as f64 / 1e6,
                "recipient": event.email,
                "message": {"headers": {"message-id": event.message_id.trim_matches(|c| c == '<' || c == '>')}},
            });
            if let (Some(data), Some(extra)) = (data.as_object_mut(), extra.as_object()) {
                data.extend(extra.clone());
            }
            shared.callbacks.post(&url).json(&json!({
                "signature": {"timestamp": timestamp, "token": token, "signature": signature},
                "event-data": data,
            }))
        }
        other => return refuse(format!("unknown provider {other:?}: sendgrid or mailgun")),
    };
    let times = if shared
        .provider
        .chance(shared.provider.faults().callback_duplicate)
    {
        2
    } else {
        1
    };
    let mut status = None;
    for _ in 0..times {
        let Some(attempt) = request.try_clone() else {
            break;
        };
        status = Some(match attempt.send().await {
            Ok(response) => response.status().as_u16(),
            Err(e) => return refuse(format!("the event could not be delivered to {url}: {e}")),
        });
    }
    Json(json!({ "url": url, "status": status, "sent": times })).into_response()
}

/// What `POST /_sandbox/sms-replies` asks for.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsReply {
    from: String,
    to: String,
    body: String,
    /// The inbound webhook as configured at Twilio (what it signs); posted to the
    /// callback base with the same path. Default: `{callback-base}/callbacks/twilio/inbound`.
    url: Option<String>,
}

async fn sms_reply(State(shared): State<Shared>, Json(reply): Json<SmsReply>) -> Response {
    let refuse = |why: String| {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": why })),
        )
            .into_response()
    };
    let Some(base) = shared.config.callback_base.clone() else {
        return refuse(
            "the sandbox has no callback base (--callback-base) to send replies to".into(),
        );
    };
    let url = reply
        .url
        .unwrap_or_else(|| format!("{}/callbacks/twilio/inbound", base.trim_end_matches('/')));
    let sid = format!("SM{}", uuid::Uuid::now_v7().simple());
    let params: Vec<(String, String)> = vec![
        (
            "AccountSid".into(),
            "AC00000000000000000000000000sandbox".into(),
        ),
        ("ApiVersion".into(), "2010-04-01".into()),
        ("Body".into(), reply.body),
        ("From".into(), reply.from),
        ("MessageSid".into(), sid.clone()),
        ("NumMedia".into(), "0".into()),
        ("SmsMessageSid".into(), sid.clone()),
        ("SmsSid".into(), sid),
        ("To".into(), reply.to),
    ];
    let signature = twilio::signature(&shared.config.twilio_auth_token, &url, &params);
    let answer = shared
        .callbacks
        .post(rebase(&url, &base))
        .header("X-Twilio-Signature", signature)
        .form(&params)
        .send()
        .await;
    match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let body = response.text().await.unwrap_or_default();
            // What Twilio would text back: the TwiML <Message>, if any.
            let message = body
                .split_once("<Message>")
                .and_then(|(_, rest)| rest.split_once("</Message>"))
                .map(|(m, _)| {
                    m.replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&quot;", "\"")
                        .replace("&amp;", "&")
                });
            Json(json!({ "status": status, "reply": message })).into_response()
        }
        Err(e) => refuse(format!("the reply could not be delivered to {url}: {e}")),
    }
}
