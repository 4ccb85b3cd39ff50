//! The guardian app's API under `/api/v1/guardian/`: sign in with a one-time code sent to
//! a phone number or email address on file, then list messages, acknowledge them, and
//! register the device for push.
//!
//! A session belongs to the contact point that signed in: it sees the guardians that
//! number or address belongs to (usually one; a shared family phone, several) for as long
//! as staff keep it active. Sign-in answers the same whether or not the address is on
//! file, so it cannot be used to find out who is.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tidings_core::clock::{Clock, DirectLimiter, KeyedLimiter, RateClock};
use tidings_core::secret::GuardianToken;
use tidings_core::services::acknowledge::AckVia;
use tidings_core::services::guardian_access::GuardianAccess;
use tidings_core::store::guardian::{GuardianMessage, GuardianMessageRef};
use tidings_core::store::AckOutcome;
use tidings_core::{Channel, EmailAddress, GuardianId, MessageId, PhoneNumber, PushPlatform};

use crate::extract::{ClientAddress, Json, Path, Query};
use crate::{ApiError, AppState};

pub use tidings_core::services::guardian_access::{
    CODES_PER_HOUR, CODE_ATTEMPTS, CODE_MINUTES, SESSION_DAYS,
};
/// Sign-in codes one process sends per second, whatever the addresses.
pub const SIGN_INS_PER_SECOND: u32 = 20;
/// Sign-in codes one client address may ask for per minute (a burst of this many, then
/// one each `60 / n` seconds). Guardians behind one address (a school's Wi-Fi at an open
/// evening) share it; a script on one address cannot use up the process-wide bound.
pub const SIGN_INS_PER_CLIENT_PER_MINUTE: u32 = 10;
/// Tries at a code one client address may make per minute.
pub const CODE_TRIES_PER_CLIENT_PER_MINUTE: u32 = 20;

type PerClient = KeyedLimiter<std::net::IpAddr>;

/// How fast guardians' sign-in may be used: per client address first, so that one script
/// cannot use up the process-wide bound and keep every real guardian out; then the
/// process-wide bound on codes sent (they cost money); the store counts codes per
/// destination address (`CODES_PER_HOUR`), across processes.
pub struct SignInLimits {
    overall: DirectLimiter,
    codes_per_client: PerClient,
    tries_per_client: PerClient,
}

/// The bounds above, fresh, refilled as `clock` moves.
pub fn sign_in_limiter(clock: Arc<dyn Clock>) -> Arc<SignInLimits> {
    let per_minute =
        |n: u32| governor::Quota::per_minute(std::num::NonZeroU32::new(n).expect("not zero"));
    let rate = std::num::NonZeroU32::new(SIGN_INS_PER_SECOND).expect("not zero");
    let clock = RateClock(clock);
    Arc::new(SignInLimits {
        overall: DirectLimiter::direct_with_clock(governor::Quota::per_second(rate), clock.clone()),
        codes_per_client: PerClient::hashmap_with_clock(
            per_minute(SIGN_INS_PER_CLIENT_PER_MINUTE),
            clock.clone(),
        ),
        tries_per_client: PerClient::hashmap_with_clock(
            per_minute(CODE_TRIES_PER_CLIENT_PER_MINUTE),
            clock,
        ),
    })
}

/// Clients are counted by address; an IPv6 client by its /64, which one subscriber
/// usually holds whole.
fn client_key(client: Option<std::net::IpAddr>) -> std::net::IpAddr {
    match client {
        Some(std::net::IpAddr::V6(v6)) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            std::net::IpAddr::V6(std::net::Ipv6Addr::from(segments))
        }
        Some(v4) => v4,
        None => std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    }
}

fn within(limiter: &PerClient, client: Option<std::net::IpAddr>) -> bool {
    // Clients that have waited long enough are forgotten, so the map stays small.
    if limiter.len() > 100_000 {
        limiter.retain_recent();
        limiter.shrink_to_fit();
    }
    limiter.check_key(&client_key(client)).is_ok()
}

impl SignInLimits {
    /// May this client have a code sent now? Counts against the client, then the process.
    pub fn code(&self, client: Option<std::net::IpAddr>) -> Result<(), ApiError> {
        if !within(&self.codes_per_client, client) {
            return Err(ApiError::TooManyRequests);
        }
        self.overall.check().map_err(|_| ApiError::TooManyCodes)
    }

    /// May this client try a code now?
    pub fn try_code(&self, client: Option<std::net::IpAddr>) -> Result<(), ApiError> {
        if within(&self.tries_per_client, client) {
            Ok(())
        } else {
            Err(ApiError::TooManyRequests)
        }
    }
}

/// Sends sign-in codes: the binary wires it to the configured SMS and email providers.
#[async_trait::async_trait]
pub trait CodeSender: Send + Sync {
    async fn send_code(&self, channel: Channel, address: &str, text: &str) -> Result<(), String>;
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SignInRequest {
    /// A phone number (E.164, or national in the district's region) or an email address
    /// on file for the guardian.
    pub address: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignInAnswer {
    /// `sms` or `email`: where the code went, if the address is on file.
    #[schema(value_type = String)]
    pub channel: Channel,
    pub expires_in_seconds: i64,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SessionRequest {
    pub address: String,
    /// The six digits sent.
    pub code: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionAnswer {
    /// `Authorization: Bearer <token>` for the other guardian endpoints; shown once.
    pub token: String,
    pub expires_at: DateTime<Utc>,
    #[schema(value_type = Vec<String>)]
    pub guardian_ids: Vec<GuardianId>,
}

/// An address as typed, as the directory keeps it.
fn contact(state: &AppState, input: &str) -> Result<(Channel, String), ApiError> {
    let input = input.trim();
    if input.contains('@') {
        let email = EmailAddress::parse(input).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
        Ok((Channel::Email, email.as_str().to_owned()))
    } else {
        let phone = PhoneNumber::parse_in(input, &state.default_phone_region)
            .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
        Ok((Channel::Sms, phone.as_str().to_owned()))
    }
}

/// Sends a one-time code to a phone number or email address on file.
#[utoipa::path(post, path = "/api/v1/guardian/sign-in", tag = "guardian app", request_body = SignInRequest,
    responses(
        (status = 202, description = "A code is on its way if the address is on file (the answer is the same if it is not)", body = SignInAnswer),
        (status = 422, description = "Not a phone number or email address", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many codes for this address in the past hour (`too-many-codes`), or too many requests from this client (`too-many-requests`)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn sign_in(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    Json(request): Json<SignInRequest>,
) -> Result<(StatusCode, axum::Json<SignInAnswer>), ApiError> {
    let channel = send_sign_in_code(&state, client, &request.address).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(SignInAnswer {
            channel,
            expires_in_seconds: CODE_MINUTES * 60,
        }),
    ))
}

/// Sends a one-time code to `input` (a phone number or email address) if it is on file,
/// within the client's and the process's bounds: where it would go. The API and the
/// guardian web app both sign in through here.
pub async fn send_sign_in_code(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    input: &str,
) -> Result<Channel, ApiError> {
    let (channel, address) = contact(state, input)?;
    // Codes cost money to send and must not be a way to message guardians in bulk.
    state.sign_ins.code(client)?;
    // A code is kept (and counted) for unknown addresses too: the answer, and when it
    // says 429, are the same either way.
    let issued = state
        .services()
        .issue_sign_in_code(channel, &address)
        .await?;
    let (sign_in, code) = (issued.sign_in, issued.code);
    // Sent after answering: the time a send takes must not tell who is on file.
    let (store, codes) = (state.store.clone(), state.codes.clone());
    tokio::spawn(async move {
        let guardians = match store.guardians_at(channel, &address).await {
            Ok(guardians) => guardians,
            Err(error) => {
                tracing::error!(sign_in = %sign_in, %error, "sign-in code not sent");
                return;
            }
        };
        let Some((district, _)) = guardians.first() else {
            return;
        };
        let name = match store.district(*district).await {
            Ok(found) => found.map(|d| d.name).unwrap_or_default(),
            Err(_) => String::new(),
        };
        let text = format!(
            "{name}: your sign-in code is {code}. It works for {CODE_MINUTES} minutes. If you did not ask for it, ignore this message."
        );
        match codes {
            Some(sender) => {
                if let Err(error) = sender.send_code(channel, &address, &text).await {
                    tracing::warn!(sign_in = %sign_in, %error, "sign-in code not sent");
                }
            }
            None => tracing::warn!(sign_in = %sign_in, "no provider to send sign-in codes with"),
        }
    });
    Ok(channel)
}

/// Trades the code sent to `input` for a session, within the client's bound on tries.
pub async fn open_session(
    state: &AppState,
    client: Option<std::net::IpAddr>,
    input: &str,
    code: &str,
) -> Result<tidings_core::services::guardian_access::OpenedSession, ApiError> {
    state.sign_ins.try_code(client)?;
    let (channel, address) = contact(state, input)?;
    let opened = state
        .services()
        .redeem_sign_in_code(channel, &address, code)
        .await?;
    tracing::info!(session = %opened.token.session, guardians = opened.guardians.len(), "guardian signed in");
    Ok(opened)
}

/// Trades a code for a session token.
#[utoipa::path(post, path = "/api/v1/guardian/sessions", tag = "guardian app", request_body = SessionRequest,
    responses(
        (status = 201, description = "Signed in", body = SessionAnswer),
        (status = 401, description = "Wrong, used or expired code", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 429, description = "Too many tries from this client", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_session(
    State(state): State<AppState>,
    ClientAddress(client): ClientAddress,
    Json(request): Json<SessionRequest>,
) -> Result<(StatusCode, axum::Json<SessionAnswer>), ApiError> {
    let opened = open_session(&state, client, &request.address, &request.code).await?;
    let (token, expires_at, guardians) = (opened.token, opened.expires_at, opened.guardians);
    Ok((
        StatusCode::CREATED,
        axum::Json(SessionAnswer {
            token: token.reveal(),
            expires_at,
            guardian_ids: guardians.into_iter().map(|(_, g)| g).collect(),
        }),
    ))
}

/// The signed-in guardian(s) of a request: the session as the services checked it.
pub struct GuardianCaller(pub GuardianAccess);

impl std::ops::Deref for GuardianCaller {
    type Target = GuardianAccess;

    fn deref(&self) -> &GuardianAccess {
        &self.0
    }
}

/// The signed-in guardians' messages, newest first, `limit` before `before`.
pub async fn messages_of(
    state: &AppState,
    access: &GuardianAccess,
    before: Option<MessageId>,
    limit: u32,
) -> Result<Vec<GuardianMessage>, ApiError> {
    Ok(state
        .store
        .guardian_messages(&access.guardian_ids(), before, limit)
        .await?)
}

/// Message `id` as it went to the signed-in guardians (one entry each); not found if it
/// went to none of them.
pub async fn message_of(
    state: &AppState,
    access: &GuardianAccess,
    id: MessageId,
) -> Result<Vec<GuardianMessage>, ApiError> {
    let found = state
        .store
        .guardian_message(GuardianMessageRef::Message(id), &access.guardian_ids())
        .await?;
    if found.is_empty() {
        return Err(ApiError::NotFound);
    }
    Ok(found)
}

/// Acknowledges message `id` for each signed-in guardian it went to, from the app.
pub async fn acknowledge_as(
    state: &AppState,
    access: &GuardianAccess,
    id: MessageId,
) -> Result<Vec<AckResult>, ApiError> {
    let found = message_of(state, access, id).await?;
    let mut results = Vec::new();
    for message in found {
        let outcome = state
            .services()
            .acknowledge(message.recipient_id, AckVia::App(access.session))
            .await?;
        let result = match outcome {
            AckOutcome::Acked { .. } => "acked",
            AckOutcome::AlreadyAcked => "already_acked",
            AckOutcome::NotRequired => "not_required",
            AckOutcome::NotFound => return Err(ApiError::NotFound),
        };
        results.push(AckResult {
            guardian_id: message.guardian_id,
            result,
        });
    }
    Ok(results)
}

impl FromRequestParts<AppState> for GuardianCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .and_then(|bearer| GuardianToken::parse(bearer.trim()).ok())
            .ok_or(ApiError::Unauthorized)?;
        let access = state.services().guardian_access(&token).await?;
        Ok(Self(access))
    }
}

/// Signs this session out.
#[utoipa::path(delete, path = "/api/v1/guardian/sessions/current", tag = "guardian app", security(("bearer" = [])),
    responses((status = 204, description = "Signed out")))]
pub async fn end_session(
    State(state): State<AppState>,
    caller: GuardianCaller,
) -> Result<StatusCode, ApiError> {
    state.services().end_guardian_session(&caller.0).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessagesQuery {
    /// The `next_before` of the previous page.
    #[param(value_type = Option<String>)]
    pub before: Option<MessageId>,
    /// Messages per page (default 20, at most 100).
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessagesPage {
    pub items: Vec<GuardianMessage>,
    pub next_before: Option<MessageId>,
}

/// The guardian's messages, newest first, in their language.
#[utoipa::path(get, path = "/api/v1/guardian/messages", operation_id = "guardian_list_messages", tag = "guardian app", params(MessagesQuery), security(("bearer" = [])),
    responses((status = 200, description = "One page, newest first: recipient_id, message_id, district_id, district_name, guardian_id, kind, subject, body, language, sent_at, ack_state (not_required, pending, acked), acked_at, ack_via", body = MessagesPage)))]
pub async fn list_messages(
    State(state): State<AppState>,
    caller: GuardianCaller,
    Query(query): Query<MessagesQuery>,
) -> Result<axum::Json<MessagesPage>, ApiError> {
    let limit = query.limit.unwrap_or(20).clamp(1, 100);
    let items = messages_of(&state, &caller.0, query.before, limit).await?;
    let next_before = (items.len() == limit as usize)
        .then(|| items.last().map(|m| m.message_id))
        .flatten();
    Ok(axum::Json(MessagesPage { items, next_before }))
}

/// One message (one entry per signed-in guardian it went to).
#[utoipa::path(get, path = "/api/v1/guardian/messages/{id}", operation_id = "guardian_get_message", tag = "guardian app", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "The message as in the list", body = Vec<GuardianMessage>),
        (status = 404, description = "Not a message to this guardian", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn get_message(
    State(state): State<AppState>,
    caller: GuardianCaller,
    Path(id): Path<MessageId>,
) -> Result<axum::Json<Vec<GuardianMessage>>, ApiError> {
    Ok(axum::Json(message_of(&state, &caller.0, id).await?))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AckAnswer {
    pub message_id: MessageId,
    /// Per guardian: `acked` now, `already_acked`, or `not_required`.
    pub results: Vec<AckResult>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AckResult {
    pub guardian_id: GuardianId,
    pub result: &'static str,
}

/// Acknowledges a message from the app: the push delivery becomes ACKED, the guardian's
/// deliveries of it not sent yet are cancelled. Twice is once.
#[utoipa::path(post, path = "/api/v1/guardian/messages/{id}/ack", tag = "guardian app", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses((status = 200, description = "message_id, and per guardian the result: acked, already_acked or not_required", body = AckAnswer),
        (status = 404, description = "Not a message to this guardian", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn acknowledge(
    State(state): State<AppState>,
    caller: GuardianCaller,
    Path(id): Path<MessageId>,
) -> Result<axum::Json<AckAnswer>, ApiError> {
    let results = acknowledge_as(&state, &caller.0, id).await?;
    Ok(axum::Json(AckAnswer {
        message_id: id,
        results,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct DeviceRequest {
    /// `apns`, `fcm` or `webpush`.
    #[schema(value_type = String)]
    pub platform: PushPlatform,
    /// The device token the platform gave the app (`apns`, `fcm`).
    #[serde(default)]
    pub token: Option<String>,
    /// The browser's subscription (`webpush`): `PushSubscription.toJSON()`.
    #[serde(default)]
    pub subscription: Option<SubscriptionRequest>,
}

/// A browser's push subscription as `PushSubscription.toJSON()` gives it.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SubscriptionRequest {
    pub endpoint: String,
    pub keys: SubscriptionKeys,
    /// Ignored: browsers renew a subscription before it lapses.
    #[serde(default, rename = "expirationTime")]
    #[schema(value_type = Option<f64>)]
    pub expiration_time: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SubscriptionKeys {
    pub p256dh: String,
    pub auth: String,
}

/// What a registration answers: the token the device is known by, which unregistering
/// takes (for Web Push, `ENDPOINT#p256dh=…&auth=…`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeviceAnswer {
    #[schema(value_type = String)]
    pub platform: PushPlatform,
    pub token: String,
}

/// A device token as the platforms issue them: printable, no spaces, of sane length.
fn device_token(token: &str) -> Result<&str, ApiError> {
    let token = token.trim();
    let printable = token.bytes().all(|b| b.is_ascii_graphic());
    if !(8..=4096).contains(&token.len()) || !printable {
        return Err(ApiError::InvalidBody(
            "token: a device token is 8 to 4096 printable characters".into(),
        ));
    }
    Ok(token)
}

/// A browser's subscription as the device token it is kept by (the guardian app posts
/// the same).
pub fn subscription_token(s: &SubscriptionRequest) -> Result<String, ApiError> {
    tidings_core::WebPushSubscription::new(&s.endpoint, &s.keys.p256dh, &s.keys.auth)
        .map(|s| s.token())
        .map_err(|e| ApiError::InvalidBody(format!("subscription: {e}")))
}

/// The token of a registration: the platform's token, or the browser's subscription as
/// one.
fn registration_token(request: &DeviceRequest) -> Result<String, ApiError> {
    match (request.platform, &request.token, &request.subscription) {
        (PushPlatform::WebPush, None, Some(s)) => subscription_token(s),
        (PushPlatform::WebPush, Some(token), None) => {
            tidings_core::WebPushSubscription::parse_token(token)
                .map(|s| s.token())
                .map_err(|e| ApiError::InvalidBody(format!("token: {e}")))
        }
        (PushPlatform::WebPush, _, _) => Err(ApiError::InvalidBody(
            "webpush: give the browser's subscription (or its token), not both".into(),
        )),
        (_, Some(token), None) => device_token(token).map(str::to_owned),
        (platform, _, _) => Err(ApiError::InvalidBody(format!(
            "{platform}: give the device token alone"
        ))),
    }
}

/// Registers the app's device for push, for every signed-in guardian.
#[utoipa::path(post, path = "/api/v1/guardian/devices", tag = "guardian app", request_body = DeviceRequest, security(("bearer" = [])),
    responses((status = 201, description = "Registered (again, if it was)", body = DeviceAnswer)))]
pub async fn register_device(
    State(state): State<AppState>,
    caller: GuardianCaller,
    Json(request): Json<DeviceRequest>,
) -> Result<(StatusCode, axum::Json<DeviceAnswer>), ApiError> {
    let token = registration_token(&request)?;
    state
        .services()
        .register_guardian_device(&caller.0, request.platform, &token)
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(DeviceAnswer {
            platform: request.platform,
            token,
        }),
    ))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebPushKey {
    /// The `applicationServerKey` to subscribe with: the install's VAPID public key, an
    /// uncompressed P-256 point in URL-safe base64.
    pub public_key: String,
}

/// The key the app subscribes to Web Push with; 404 when Web Push is off.
#[utoipa::path(get, path = "/api/v1/guardian/web-push", tag = "guardian app",
    responses((status = 200, body = WebPushKey), (status = 404, description = "Web Push is off")))]
pub async fn web_push_key(
    State(state): State<AppState>,
) -> Result<axum::Json<WebPushKey>, ApiError> {
    let public_key = state.web_push_key.clone().ok_or(ApiError::NotFound)?;
    Ok(axum::Json(WebPushKey { public_key }))
}

/// Unregisters a device (the app signed out of push, or was removed).
#[utoipa::path(delete, path = "/api/v1/guardian/devices/{platform}/{token}", tag = "guardian app", security(("bearer" = [])),
    params(("platform" = String, Path), ("token" = String, Path)),
    responses((status = 204, description = "No longer used")))]
pub async fn unregister_device(
    State(state): State<AppState>,
    caller: GuardianCaller,
    Path((platform, token)): Path<(PushPlatform, String)>,
) -> Result<StatusCode, ApiError> {
    let token = match platform {
        PushPlatform::WebPush => tidings_core::WebPushSubscription::parse_token(&token)
            .map(|s| s.token())
            .map_err(|e| ApiError::InvalidBody(format!("token: {e}")))?,
        _ => device_token(&token)?.to_owned(),
    };
    state
        .services()
        .unregister_guardian_device(&caller.0, &token)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Shared handle on a sender, as `AppState` holds it.
pub type Codes = Option<Arc<dyn CodeSender>>;

#[cfg(test)]
mod tests {
    use super::*;

    use tidings_core::clock::ManualClock;

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::at(tidings_core::time::now()))
    }

    #[test]
    fn the_process_bound_lets_a_burst_through_and_refuses_a_flood() {
        let clock = clock();
        let limits = sign_in_limiter(clock.clone());
        // Each from its own address, so only the process-wide bound applies.
        let flood = |from: u32| {
            (from..from + 200)
                .filter(|i| {
                    limits
                        .code(Some(std::net::Ipv4Addr::from(0x0a00_0000 + i).into()))
                        .is_ok()
                })
                .count()
        };
        // The burst is one second's worth, and then nothing until time passes.
        assert_eq!(flood(0), SIGN_INS_PER_SECOND as usize);
        assert_eq!(flood(200), 0);
        clock.advance(chrono::Duration::milliseconds(500));
        assert_eq!(flood(400), SIGN_INS_PER_SECOND as usize / 2);
    }

    #[test]
    fn one_client_is_held_to_its_own_share_and_leaves_the_rest_to_others() {
        let clock = clock();
        let limits = sign_in_limiter(clock.clone());
        let script: std::net::IpAddr = "198.51.100.7".parse().unwrap();
        let refused: Vec<_> = (0..50).map(|_| limits.code(Some(script))).collect();
        let passed = refused.iter().filter(|r| r.is_ok()).count();
        assert_eq!(passed, SIGN_INS_PER_CLIENT_PER_MINUTE as usize);
        assert!(matches!(
            refused.last(),
            Some(Err(ApiError::TooManyRequests))
        ));
        // The process-wide bound is untouched by the refused ones: others still get codes.
        let parent: std::net::IpAddr = "203.0.113.20".parse().unwrap();
        assert!(limits.code(Some(parent)).is_ok());
        // The script gets one more code each 60 / 10 seconds.
        clock.advance(chrono::Duration::seconds(5));
        assert!(limits.code(Some(script)).is_err());
        clock.advance(chrono::Duration::seconds(1));
        assert!(limits.code(Some(script)).is_ok());
        assert!(limits.code(Some(script)).is_err());
        // An IPv6 client cannot dodge the bound by moving inside its /64 (fresh bounds:
        // the process-wide 20 a second must not be what stops it).
        let limits = sign_in_limiter(clock);
        let v6 = |last: u16| -> std::net::IpAddr {
            std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last).into()
        };
        let passed = (0..50)
            .filter(|i| limits.code(Some(v6(*i))).is_ok())
            .count();
        assert_eq!(passed, SIGN_INS_PER_CLIENT_PER_MINUTE as usize);
    }
}
