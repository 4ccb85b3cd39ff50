//! A Web Push service (RFC 8030) in the sandbox, playing the browser's side too: it hands
//! out subscriptions as a browser's `pushManager.subscribe()` would (an endpoint here and
//! the keys the payload is encrypted for), and its push endpoint checks a request as the
//! push services do — the VAPID JWT (RFC 8292) for this origin, signed by the key it
//! names, the headers RFC 8030 requires — then decrypts the payload with the
//! subscription's private key (RFC 8291) and keeps it, so a test reads what the guardian
//! would see.
//!
//! - `POST /_sandbox/web-push/subscriptions` (optional JSON body
//!   `{"application_server_key": "…"}`, which pushes must then be signed with):
//!   `201 {"id", "endpoint", "keys": {"p256dh", "auth"}}`, the shape of
//!   `PushSubscription.toJSON()`;
//! - `DELETE /_sandbox/web-push/subscriptions/{id}`: the browser unsubscribed; pushes to
//!   it are answered 410 Gone from then on;
//! - `GET /_sandbox/web-push`: the subscriptions and every push taken, decrypted;
//! - `POST /push/{id}`: the push endpoint itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tidings_core::{Channel, DeliveryId};
use web_push_native::p256;

use crate::{Fate, InProcessProvider, Received};

/// One subscription the sandbox handed out.
struct Subscription {
    secret: p256::SecretKey,
    auth: [u8; 16],
    endpoint: String,
    /// The VAPID public key pushes must be signed with, when the subscriber named one.
    application_server_key: Option<String>,
    /// Unsubscribed: pushes are answered 410.
    gone: bool,
}

/// One push the service took, decrypted.
#[derive(Debug, Clone, Serialize)]
pub struct Pushed {
    pub subscription: String,
    /// The decrypted payload, as text.
    pub payload: String,
    pub ttl: u64,
    pub urgency: String,
    pub topic: Option<String>,
    /// The VAPID subject (`sub`) the push was signed with.
    pub subject: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Default)]
struct Service {
    subscriptions: HashMap<String, Subscription>,
    pushed: Vec<Pushed>,
    refused: u64,
}

#[derive(Clone)]
struct Shared {
    provider: InProcessProvider,
    service: Arc<Mutex<Service>>,
    /// How long a push fated to be in doubt hangs before its connection is dropped.
    hang: std::time::Duration,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Service> {
        self.service.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub(crate) fn router(provider: InProcessProvider, hang: std::time::Duration) -> Router {
    let shared = Shared {
        provider,
        service: Arc::default(),
        hang,
    };
    Router::new()
        .route("/_sandbox/web-push/subscriptions", post(subscribe))
        .route(
            "/_sandbox/web-push/subscriptions/{id}",
            axum::routing::delete(unsubscribe),
        )
        .route("/_sandbox/web-push", get(state))
        .route("/push/{id}", post(push))
        .with_state(shared)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeRequest {
    #[serde(default)]
    application_server_key: Option<String>,
}

/// The origin the request was sent to, as the sender saw it (`Host`).
fn origin(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    Some(format!("http://{host}"))
}

async fn subscribe(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let request: SubscribeRequest = if body.is_empty() {
        SubscribeRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => return problem(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    };
    let Some(origin) = origin(&headers) else {
        return problem(StatusCode::BAD_REQUEST, "no Host header");
    };
    let mut rng = rand::thread_rng();
    let secret = loop {
        let mut bytes = [0u8; 32];
        rng.fill_bytes(&mut bytes);
        if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
            break secret;
        }
    };
    let mut auth = [0u8; 16];
    rng.fill_bytes(&mut auth);
    let id = uuid::Uuid::now_v7().simple().to_string();
    let endpoint = format!("{origin}/push/{id}");
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    let p256dh = URL_SAFE_NO_PAD.encode(secret.public_key().to_encoded_point(false).as_bytes());
    let answer = json!({
        "id": id,
        "endpoint": endpoint,
        "expirationTime": null,
        "keys": { "p256dh": p256dh, "auth": URL_SAFE_NO_PAD.encode(auth) },
    });
    shared.lock().subscriptions.insert(
        id,
        Subscription {
            secret,
            auth,
            endpoint,
            application_server_key: request.application_server_key,
            gone: false,
        },
    );
    (StatusCode::CREATED, Json(answer)).into_response()
}

async fn unsubscribe(State(shared): State<Shared>, Path(id): Path<String>) -> Response {
    match shared.lock().subscriptions.get_mut(&id) {
        Some(s) => {
            s.gone = true;
            StatusCode::NO_CONTENT.into_response()
        }
        None => problem(StatusCode::NOT_FOUND, "no such subscription"),
    }
}

async fn state(State(shared): State<Shared>) -> Json<serde_json::Value> {
    let service = shared.lock();
    let subscriptions: Vec<_> = service
        .subscriptions
        .iter()
        .map(|(id, s)| json!({ "id": id, "endpoint": s.endpoint, "gone": s.gone }))
        .collect();
    Json(json!({
        "subscriptions": subscriptions,
        "pushed": service.pushed,
        "refused": service.refused,
    }))
}

/// A push service's refusal: a status and a reason (the services differ in their body;
/// a plain JSON reason is what Mozilla's gives).
fn problem(status: StatusCode, reason: &str) -> Response {
    (
        status,
        Json(json!({ "code": status.as_u16(), "error": reason })),
    )
        .into_response()
}

/// The VAPID subject of a request, or why its `Authorization` is refused (401: missing
/// or malformed; 403: signed by another key than the subscription's).
fn vapid_subject(
    headers: &HeaderMap,
    origin: &str,
    application_server_key: Option<&str>,
    now: i64,
) -> Result<String, (StatusCode, String)> {
    let unauthorized = |why: &str| (StatusCode::UNAUTHORIZED, why.to_owned());
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| unauthorized("no Authorization header"))?;
    let params = value
        .strip_prefix("vapid ")
        .ok_or_else(|| unauthorized("Authorization is not the vapid scheme (RFC 8292)"))?;
    let mut token = None;
    let mut key = None;
    for param in params.split(',') {
        match param.trim().split_once('=') {
            Some(("t", t)) => token = Some(t),
            Some(("k", k)) => key = Some(k),
            _ => return Err(unauthorized("vapid parameters are t=JWT, k=KEY")),
        }
    }
    let (Some(token), Some(key)) = (token, key) else {
        return Err(unauthorized("vapid needs both t and k"));
    };
    let jwt = tidings_channel_adapters::jwt::parse(token)
        .ok_or_else(|| unauthorized("t is not a compact JWT"))?;
    if jwt.header["alg"] != "ES256" {
        return Err(unauthorized("the JWT is not ES256"));
    }
    let point = URL_SAFE_NO_PAD
        .decode(key)
        .map_err(|_| unauthorized("k is not URL-safe base64"))?;
    if !tidings_channel_adapters::jwt::es256_verifies(&jwt, &point) {
        return Err(unauthorized("the JWT's signature does not verify with k"));
    }
    if jwt.claims["aud"].as_str() != Some(origin) {
        return Err(unauthorized(
            "the JWT's aud is not this push service's origin",
        ));
    }
    let exp = jwt.claims["exp"].as_i64().unwrap_or(0);
    if exp <= now || exp > now + 24 * 3600 {
        return Err(unauthorized(
            "the JWT's exp is past or more than 24 hours away",
        ));
    }
    let subject = jwt.claims["sub"].as_str().unwrap_or_default();
    if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
        return Err(unauthorized("the JWT's sub is not mailto: or https:"));
    }
    if application_server_key.is_some_and(|expected| expected != key) {
        return Err((
            StatusCode::FORBIDDEN,
            "signed by another key than the subscription's applicationServerKey".into(),
        ));
    }
    Ok(subject.to_owned())
}

async fn push(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let refuse = |status: StatusCode, reason: &str| {
        shared.lock().refused += 1;
        problem(status, reason)
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (secret, auth, expected_key, gone) = {
        let service = shared.lock();
        match service.subscriptions.get(&id) {
            Some(s) => (
                s.secret.clone(),
                s.auth,
                s.application_server_key.clone(),
                s.gone,
            ),
            None => {
                drop(service);
                return refuse(StatusCode::NOT_FOUND, "no such subscription");
            }
        }
    };
    if gone {
        return refuse(
            StatusCode::GONE,
            "the subscription has expired or was unsubscribed",
        );
    }
    let Some(origin) = origin(&headers) else {
        return refuse(StatusCode::BAD_REQUEST, "no Host header");
    };
    let now = tidings_core::time::now();
    let subject = match vapid_subject(&headers, &origin, expected_key.as_deref(), now.timestamp()) {
        Ok(subject) => subject,
        Err((status, reason)) => return refuse(status, &reason),
    };
    let Some(ttl) = header("ttl").and_then(|t| t.trim().parse::<u64>().ok()) else {
        return refuse(StatusCode::BAD_REQUEST, "TTL is required (RFC 8030 §5.2)");
    };
    let urgency = header("urgency").unwrap_or("normal");
    if !["very-low", "low", "normal", "high"].contains(&urgency) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Urgency is very-low, low, normal or high",
        );
    }
    let topic = header("topic");
    if topic.is_some_and(|t| {
        t.len() > 32
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Topic is at most 32 URL-safe base64 characters",
        );
    }
    if header("content-encoding") != Some("aes128gcm") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Content-Encoding must be aes128gcm (RFC 8291)",
        );
    }
    if body.len() > 4096 {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the payload is over 4096 bytes",
        );
    }
    let payload = match web_push_native::decrypt(
        body.to_vec(),
        &secret,
        &web_push_native::Auth::clone_from_slice(&auth),
    ) {
        Ok(plain) => String::from_utf8_lossy(&plain).into_owned(),
        Err(e) => return refuse(StatusCode::BAD_REQUEST, &format!("cannot decrypt: {e}")),
    };
    let fate = crate::server::fate_of(&shared.provider).await;
    match fate {
        Fate::Transient => return problem(StatusCode::INTERNAL_SERVER_ERROR, "try again"),
        Fate::Throttled => {
            let mut response = problem(StatusCode::TOO_MANY_REQUESTS, "too many requests");
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            return response;
        }
        Fate::Permanent => return problem(StatusCode::BAD_REQUEST, "refused"),
        Fate::InDoubt | Fate::Accepted => {}
    }
    let delivery_id = serde_json::from_str::<serde_json::Value>(&payload)
        .ok()
        .and_then(|p| p["delivery_id"].as_str().and_then(|d| d.parse().ok()))
        .map(DeliveryId::from_uuid);
    let message_ref = format!("{origin}/messages/{}", uuid::Uuid::now_v7().simple());
    shared.provider.record(Received {
        provider: "webpush".into(),
        delivery_id,
        // A push service does not deduplicate: every push is a new message, so each
        // resend of a delivery shows as a duplicate by its delivery id.
        idempotency_key: delivery_id.map_or_else(|| message_ref.clone(), |d| d.to_string()),
        channel: Channel::Push,
        address: format!("webpush:{id}"),
        body: payload.clone(),
        provider_ref: message_ref.clone(),
        at: now,
    });
    shared.lock().pushed.push(Pushed {
        subscription: id,
        payload,
        ttl,
        urgency: urgency.to_owned(),
        topic: topic.map(str::to_owned),
        subject,
        at: now,
    });
    if fate == Fate::InDoubt {
        tokio::time::sleep(shared.hang).await;
        return StatusCode::GATEWAY_TIMEOUT.into_response();
    }
    let mut response = StatusCode::CREATED.into_response();
    if let Ok(location) = header::HeaderValue::from_str(&message_ref) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}
