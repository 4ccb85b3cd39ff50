//! The guardian app at `/app/`: an installable web app (a manifest, a service worker, an
//! offline page) where a guardian signs in with a one-time code sent to their phone or
//! email, reads the messages the schools sent them — emergencies marked — acknowledges
//! them, and turns on push notifications for the device (Web Push).
//!
//! Server-rendered like the staff pages, over the same guardian services as the guardian
//! API (`tidings_api::guardian`): every page works without JavaScript; the one small
//! script registers the service worker and subscribes to push. A session is the guardian
//! API's session token, kept in an HttpOnly, SameSite=Lax cookie for `/app`; every form
//! carries a CSRF token derived from it (before sign-in, from a random cookie).

use std::sync::{Arc, OnceLock};

use askama::Template;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Extension;
use sha2::{Digest, Sha256};
use tidings_api::extract::ClientAddress;
use tidings_api::guardian::{self, SubscriptionRequest};
use tidings_api::{ApiError, AppState};
use tidings_core::quiet_hours::QuietHours;
use tidings_core::secret::GuardianToken;
use tidings_core::services::guardian_access::{GuardianAccess, SESSION_DAYS};
use tidings_core::services::guardian_settings::Preferences;
use tidings_core::store::guardian::{Child, GuardianMessage, GuardianPreferences};
use tidings_core::{
    Channel, GuardianId, MessageId, MessageKind, PushPlatform, WebPushSubscription,
};

use crate::form::Fields;
use crate::i18n::Lang;
use crate::session::{cookie, csrf_for, csrf_matches, set_cookie};
use crate::sign_in::with_cookies;
use crate::Web;

/// The cookie that holds a guardian's session token.
pub const APP_COOKIE: &str = "tidings_app";
/// The largest form or subscription the app posts.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The app's own files: name, content type, content. Served under `/app/` by name (the
/// service worker must keep its URL); the style sheet and script under names carrying
/// a digest of their content, so browsers may keep them for a year.
const CSS: &str = include_str!("../static/app/app.css");
const JS: &str = include_str!("../static/app/app.js");
const ICON_192: &[u8] = include_bytes!("../static/app/icon-192.png");
const ICON_512: &[u8] = include_bytes!("../static/app/icon-512.png");

/// A digest of `content`, to name it by.
fn digest(content: &[u8]) -> String {
    Sha256::digest(content)
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Assets {
    css: String,
    js: String,
    /// The service worker's cache name: changes whenever any of the files does.
    version: String,
}

fn assets() -> &'static Assets {
    static ASSETS: OnceLock<Assets> = OnceLock::new();
    ASSETS.get_or_init(|| Assets {
        css: format!("/app/app.{}.css", digest(CSS.as_bytes())),
        js: format!("/app/app.{}.js", digest(JS.as_bytes())),
        version: digest(
            &[
                CSS.as_bytes(),
                JS.as_bytes(),
                ICON_192,
                include_str!("../static/app/sw.js").as_bytes(),
                OFFLINE_VERSION.as_bytes(),
            ]
            .concat(),
        ),
    })
}

/// Bumped when the offline page's words change (it is rendered, not a file).
const OFFLINE_VERSION: &str = "1";

/// The app's routes, merged into the web router.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/app", get(|| async { Redirect::permanent("/app/") }))
        .route("/app/", get(inbox))
        .route("/app/sign-in", get(sign_in_page).post(send_code))
        .route("/app/session", post(open_session))
        .route("/app/sign-out", post(sign_out))
        .route("/app/messages/{id}", get(message))
        .route("/app/messages/{id}/ack", post(acknowledge))
        .route("/app/devices", post(register_device))
        .route("/app/devices/{id}/remove", post(remove_device))
        .route("/app/settings", get(settings).post(save_settings))
        .route("/app/sessions/{id}/end", post(end_session))
        .route("/app/offline", get(offline))
        .route("/app/manifest.webmanifest", get(manifest))
        .route("/app/sw.js", get(service_worker))
        .route("/app/{file}", get(file))
}

/// What every page of the app shows around its content.
struct Frame {
    lang: Lang,
    css: &'static str,
    js: &'static str,
    csrf: String,
    signed_in: bool,
    /// This page's path, to come back to after choosing a language.
    here: String,
}

impl Frame {
    fn other_languages(&self) -> Vec<(Lang, String)> {
        self.lang.others(&self.here)
    }
}

fn frame(lang: Lang, csrf: String, signed_in: bool, here: &str) -> Frame {
    let assets = assets();
    Frame {
        lang,
        css: &assets.css,
        js: &assets.js,
        csrf,
        signed_in,
        here: here.to_owned(),
    }
}

fn render(status: StatusCode, page: &impl Template) -> Response {
    match page.render() {
        Ok(body) => (status, [(header::CACHE_CONTROL, "no-store")], Html(body)).into_response(),
        Err(error) => {
            tracing::error!(%error, "rendering a guardian app page failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A cookie for the app's paths only.
fn app_cookie(name: &str, value: &str, max_age: i64, secure: bool) -> String {
    set_cookie(name, value, max_age, secure).replacen("Path=/;", "Path=/app;", 1)
}

/// The signed-in guardian of a page request; without a live session the browser is
/// sent to the sign-in page.
pub struct Guardian {
    access: GuardianAccess,
    token: GuardianToken,
    lang: Lang,
}

impl Guardian {
    fn csrf(&self) -> String {
        csrf_for(&self.token.reveal())
    }

    fn csrf_ok(&self, submitted: &str) -> bool {
        csrf_matches(&self.token.reveal(), submitted)
    }
}

impl FromRequestParts<AppState> for Guardian {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_sign_in = || Redirect::to("/app/sign-in").into_response();
        let Some(token) =
            cookie(&parts.headers, APP_COOKIE).and_then(|v| GuardianToken::parse(v).ok())
        else {
            return Err(to_sign_in());
        };
        match state.services().guardian_access(&token).await {
            Ok(access) => Ok(Guardian {
                access,
                token,
                lang: Lang::of(&parts.headers),
            }),
            Err(tidings_core::services::ServiceError::Refused(_)) => Err(to_sign_in()),
            Err(error) => Err(ApiError::from(error).into_response()),
        }
    }
}

/// A form posted by the signed-in guardian, its CSRF token checked (as `form::Posted` is
/// for staff); a stale one goes back to the app's first page.
pub struct GuardianPosted {
    guardian: Guardian,
    fields: Fields,
}

impl axum::extract::FromRequest<AppState> for GuardianPosted {
    type Rejection = Response;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let guardian = Guardian::from_request_parts(&mut parts, state).await?;
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE.into_response())?;
        let fields = Fields::parse(&body);
        if !guardian.csrf_ok(fields.get("csrf")) {
            return Err(Redirect::to("/app/").into_response());
        }
        Ok(Self { guardian, fields })
    }
}

#[derive(Template)]
#[template(path = "app_sign_in.html")]
struct SignInPage {
    frame: Frame,
    /// The number or email typed.
    address: String,
    /// The code has been sent: ask for it.
    code_step: bool,
    error: Option<String>,
}

fn sign_in_form(
    web: &Web,
    headers: &HeaderMap,
    status: StatusCode,
    address: &str,
    code_step: bool,
    error: Option<String>,
) -> Response {
    // The staff sign-in form's cookie: one secret for every form before sign-in.
    let (secret, set) = crate::sign_in::form_cookie(headers, web.secure_cookies);
    let page = SignInPage {
        frame: frame(Lang::of(headers), csrf_for(&secret), false, "/app/sign-in"),
        address: address.to_owned(),
        code_step,
        error,
    };
    with_cookies(render(status, &page), set)
}

async fn sign_in_page(Extension(web): Extension<Arc<Web>>, headers: HeaderMap) -> Response {
    sign_in_form(&web, &headers, StatusCode::OK, "", false, None)
}

/// The fields of a sign-in form, once its CSRF token is checked against the form cookie;
/// else the sign-in page again, saying why.
async fn sign_in_fields(
    web: &Web,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Fields, Response> {
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|_| StatusCode::PAYLOAD_TOO_LARGE.into_response())?;
    let fields = Fields::parse(&body);
    if !crate::sign_in::form_fresh(headers, fields.get("csrf")) {
        let said = Lang::of(headers).t("This form had expired. Please try again.");
        return Err(sign_in_form(
            web,
            headers,
            StatusCode::FORBIDDEN,
            "",
            false,
            Some(said.to_owned()),
        ));
    }
    Ok(fields)
}

/// Why sign-in did not go on, in the guardian's language.
fn sign_in_error(lang: Lang, error: &ApiError) -> (StatusCode, String) {
    match error {
        ApiError::InvalidBody(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            lang.t("That is not a phone number or an email address.")
                .into(),
        ),
        ApiError::TooManyCodes | ApiError::TooManyRequests => (
            StatusCode::TOO_MANY_REQUESTS,
            lang.t("Too many codes were asked for. Please try again later.")
                .into(),
        ),
        ApiError::InvalidCode => (
            StatusCode::UNAUTHORIZED,
            lang.t("That code is wrong or has expired. Check it, or ask for a new one.")
                .into(),
        ),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            lang.t("Something went wrong on our side. Please try again in a moment.")
                .into(),
        ),
    }
}

async fn send_code(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    ClientAddress(client): ClientAddress,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let fields = match sign_in_fields(&web, &headers, body).await {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let address = fields.get("address").trim().to_owned();
    match guardian::send_sign_in_code(&state, client, &address).await {
        Ok(_) => sign_in_form(&web, &headers, StatusCode::OK, &address, true, None),
        Err(error) => {
            let (status, said) = sign_in_error(Lang::of(&headers), &error);
            sign_in_form(&web, &headers, status, &address, false, Some(said))
        }
    }
}

async fn open_session(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    ClientAddress(client): ClientAddress,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let fields = match sign_in_fields(&web, &headers, body).await {
        Ok(fields) => fields,
        Err(response) => return response,
    };
    let address = fields.get("address").trim().to_owned();
    let code: String = fields
        .get("code")
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    match guardian::open_session(&state, client, &address, &code).await {
        Ok(opened) => {
            let max_age = SESSION_DAYS * 24 * 3600;
            let set = app_cookie(
                APP_COOKIE,
                &opened.token.reveal(),
                max_age,
                web.secure_cookies,
            );
            with_cookies(Redirect::to("/app/").into_response(), Some(set))
        }
        Err(error) => {
            let (status, said) = sign_in_error(Lang::of(&headers), &error);
            sign_in_form(&web, &headers, status, &address, true, Some(said))
        }
    }
}

async fn sign_out(
    State(state): State<AppState>,
    Extension(web): Extension<Arc<Web>>,
    posted: GuardianPosted,
) -> Response {
    let access = &posted.guardian.access;
    if let Err(error) = state.services().end_guardian_session(access).await {
        return ApiError::from(error).into_response();
    }
    let gone = app_cookie(APP_COOKIE, "", 0, web.secure_cookies);
    with_cookies(Redirect::to("/app/sign-in").into_response(), Some(gone))
}

/// A message as a list or page shows it.
struct Shown {
    id: MessageId,
    emergency: bool,
    /// The subject, or the body's first line when the message has none (an SMS).
    headline: String,
    body: String,
    language: String,
    district: String,
    sent_at: String,
    sent_at_iso: String,
    /// Asked to acknowledge, not yet done.
    pending: bool,
    /// When it was acknowledged: as shown (UTC), and for `<time datetime>`.
    acked_at: Option<(String, String)>,
}

impl Shown {
    fn of(m: &GuardianMessage) -> Self {
        let headline = if m.subject.trim().is_empty() {
            let first = m.body.lines().next().unwrap_or_default();
            let mut cut: String = first.chars().take(80).collect();
            if cut.len() < first.len() {
                cut.push('…');
            }
            cut
        } else {
            m.subject.clone()
        };
        Shown {
            id: m.message_id,
            emergency: m.kind == MessageKind::Emergency,
            headline,
            body: m.body.clone(),
            language: m.language.clone(),
            district: m.district_name.clone(),
            sent_at: m.sent_at.format("%Y-%m-%d %H:%M UTC").to_string(),
            sent_at_iso: m.sent_at.to_rfc3339(),
            pending: m.ack_state == "pending",
            acked_at: m
                .acked_at
                .map(|at| (at.format("%Y-%m-%d %H:%M UTC").to_string(), at.to_rfc3339())),
        }
    }
}

/// Messages about the same children.
struct Group {
    /// The children and their schools, as the section's heading.
    label: String,
    messages: Vec<Shown>,
}

#[derive(Template)]
#[template(path = "app_inbox.html")]
struct InboxPage {
    frame: Frame,
    groups: Vec<Group>,
    /// The key to subscribe to push with, when Web Push is on.
    push_key: Option<String>,
}

/// How many messages the inbox shows.
const INBOX_SIZE: u32 = 50;

async fn inbox(State(state): State<AppState>, guardian: Guardian) -> Response {
    let messages = match guardian::messages_of(&state, &guardian.access, None, INBOX_SIZE).await {
        Ok(messages) => messages,
        Err(error) => return error.into_response(),
    };
    let ids = guardian.access.guardian_ids();
    let children = match state.store.guardian_children(&ids).await {
        Ok(children) => children,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let page = InboxPage {
        frame: frame(guardian.lang, guardian.csrf(), true, "/app/"),
        groups: grouped(guardian.lang, &messages, &children),
        push_key: state.web_push_key.clone(),
    };
    render(StatusCode::OK, &page)
}

/// The messages in sections by the children (and their schools) they concern, each
/// section where its newest message falls: a class's message under that child, a school's
/// under the children there, the district's under all of them, one to the guardian by
/// name under "For you". A message that went to two guardians of a shared phone is
/// listed once.
fn grouped(lang: Lang, messages: &[GuardianMessage], children: &[Child]) -> Vec<Group> {
    let mut everyone: Vec<uuid::Uuid> = children.iter().map(|c| c.student_id).collect();
    everyone.sort_unstable();
    everyone.dedup();
    let districts: std::collections::HashSet<_> = messages.iter().map(|m| m.district_id).collect();
    let mut seen = std::collections::HashSet::new();
    let mut groups: Vec<Group> = Vec::new();
    for m in messages {
        if !seen.insert(m.message_id) {
            continue;
        }
        // Every guardian of the session this message went to, and their children in it.
        let mut concerned: Vec<&Child> = Vec::new();
        for entry in messages.iter().filter(|e| e.message_id == m.message_id) {
            for child in children
                .iter()
                .filter(|c| c.guardian_id == entry.guardian_id && c.is_in(&entry.audience))
            {
                if !concerned.iter().any(|c| c.student_id == child.student_id) {
                    concerned.push(child);
                }
            }
        }
        let mut label = if concerned.is_empty() {
            lang.t("For you").to_owned()
        } else if concerned.len() == everyone.len() && everyone.len() > 1 {
            lang.t("All your children").to_owned()
        } else {
            // "Ana, Luis · Lincoln Elementary; Sam · Roosevelt Middle"
            let mut schools: Vec<(&str, Vec<&str>)> = Vec::new();
            for child in &concerned {
                match schools
                    .iter_mut()
                    .find(|(school, _)| *school == child.school_name)
                {
                    Some((_, names)) => names.push(&child.given_name),
                    None => schools.push((&child.school_name, vec![&child.given_name])),
                }
            }
            schools
                .iter()
                .map(|(school, names)| format!("{} · {school}", names.join(", ")))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if districts.len() > 1 {
            label = format!("{label} ({})", m.district_name);
        }
        let shown = Shown::of(m);
        match groups.iter_mut().find(|g| g.label == label) {
            Some(group) => group.messages.push(shown),
            None => groups.push(Group {
                label,
                messages: vec![shown],
            }),
        }
    }
    groups
}

#[derive(Template)]
#[template(path = "app_message.html")]
struct MessagePage {
    frame: Frame,
    message: Shown,
}

async fn message(
    State(state): State<AppState>,
    guardian: Guardian,
    Path(id): Path<String>,
) -> Response {
    let Ok(id) = id.parse::<MessageId>() else {
        return not_found(guardian.lang);
    };
    let found = match guardian::message_of(&state, &guardian.access, id).await {
        Ok(found) => found,
        Err(ApiError::NotFound) => return not_found(guardian.lang),
        Err(error) => return error.into_response(),
    };
    // Pending while any of the signed-in guardians has not acknowledged it.
    let mut shown = Shown::of(&found[0]);
    shown.pending = found.iter().any(|m| m.ack_state == "pending");
    let page = MessagePage {
        frame: frame(
            guardian.lang,
            guardian.csrf(),
            true,
            &format!("/app/messages/{id}"),
        ),
        message: shown,
    };
    render(StatusCode::OK, &page)
}

fn not_found(lang: Lang) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(format!(
            "<!doctype html><html lang=\"{}\"><title>Tidings</title><p>{} <a href=\"/app/\">{}</a></p></html>",
            lang.tag(),
            lang.t("This message is not one of yours."),
            lang.t("All messages"),
        )),
    )
        .into_response()
}

async fn acknowledge(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: GuardianPosted,
) -> Response {
    let guardian = &posted.guardian;
    let Ok(id) = id.parse::<MessageId>() else {
        return not_found(guardian.lang);
    };
    match guardian::acknowledge_as(&state, &guardian.access, id).await {
        // Back to the message, which now says it is acknowledged (a reload posts nothing).
        Ok(_) => Redirect::to(&format!("/app/messages/{id}")).into_response(),
        Err(ApiError::NotFound) => not_found(guardian.lang),
        Err(error) => error.into_response(),
    }
}

/// `POST /app/devices`: the browser's push subscription (`PushSubscription.toJSON()`),
/// with the page's CSRF token in `X-CSRF-Token`.
async fn register_device(
    State(state): State<AppState>,
    guardian: Guardian,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let csrf = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !guardian.csrf_ok(csrf) {
        return ApiError::Forbidden.into_response();
    }
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return ApiError::PayloadTooLarge.into_response();
    };
    let subscription: SubscriptionRequest = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return ApiError::InvalidBody(e.to_string()).into_response(),
    };
    let token = match guardian::subscription_token(&subscription) {
        Ok(token) => token,
        Err(error) => return error.into_response(),
    };
    match state
        .services()
        .register_guardian_device(&guardian.access, PushPlatform::WebPush, &token)
        .await
    {
        Ok(()) => StatusCode::CREATED.into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// The languages a guardian may ask their messages in, by their own names: those most
/// spoken in US schools' families. A district's translations decide what arrives; a
/// message without one in the language comes in the district's own.
const LANGUAGES: &[(&str, &str)] = &[
    ("en", "English"),
    ("es", "Español"),
    ("vi", "Tiếng Việt"),
    ("zh", "中文"),
    ("ar", "العربية"),
    ("ht", "Kreyòl ayisyen"),
    ("pt", "Português"),
    ("fr", "Français"),
    ("ko", "한국어"),
    ("ru", "Русский"),
    ("so", "Soomaali"),
    ("tl", "Tagalog"),
];

/// One channel's switch on the settings page.
struct ChannelChoice {
    channel: Channel,
    label: &'static str,
    on: bool,
    /// Why the guardian cannot turn it on here (a STOP, the school), if so.
    locked: Option<&'static str>,
}

/// One guardian's settings form.
struct GuardianForm {
    id: GuardianId,
    name: String,
    district: String,
    language: String,
    /// The languages offered, the guardian's own first if it is not among them.
    languages: Vec<(String, String)>,
    channels: Vec<ChannelChoice>,
    quiet_start: String,
    quiet_end: String,
}

/// A device signed in or registered for notifications.
struct DeviceRow {
    id: String,
    label: String,
    since: String,
    since_iso: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "app_settings.html")]
struct SettingsPage {
    frame: Frame,
    guardians: Vec<GuardianForm>,
    sessions: Vec<DeviceRow>,
    devices: Vec<DeviceRow>,
    saved: bool,
    error: Option<String>,
}

fn hhmm(minute: Option<u16>) -> String {
    minute.map(QuietHours::format_time).unwrap_or_default()
}

/// An optional `HH:MM` field: none when left empty, an error when it is not a time.
fn minute_of(field: &str) -> Result<Option<u16>, ()> {
    match field.trim() {
        "" => Ok(None),
        time => QuietHours::parse_time(time).map(Some).map_err(|_| ()),
    }
}

fn guardian_form(lang: Lang, p: &GuardianPreferences) -> GuardianForm {
    let language = p.preferred_language.clone().unwrap_or_default();
    let mut languages: Vec<(String, String)> = LANGUAGES
        .iter()
        .map(|(tag, name)| ((*tag).to_owned(), (*name).to_owned()))
        .collect();
    if !language.is_empty() && !LANGUAGES.iter().any(|(tag, _)| *tag == language) {
        languages.insert(0, (language.clone(), language.clone()));
    }
    let channels = Channel::ALL
        .iter()
        .copied()
        .filter(|c| p.reachable.contains(c))
        .map(|channel| {
            let sources: Vec<&str> = p
                .opt_outs
                .iter()
                .filter(|o| o.channel == channel)
                .map(|o| o.source.as_str())
                .collect();
            let locked = if sources.contains(&"carrier") {
                Some(lang.t("You replied STOP to a text: reply START to get texts again."))
            } else if sources.iter().any(|s| *s == "staff" || *s == "complaint") {
                Some(lang.t("Turned off by your school."))
            } else {
                None
            };
            ChannelChoice {
                channel,
                label: match channel {
                    Channel::Sms => lang.t("Text messages (SMS)"),
                    Channel::Email => lang.t("Email"),
                    Channel::Push => lang.t("Notifications"),
                },
                on: sources.is_empty(),
                locked,
            }
        })
        .collect();
    GuardianForm {
        id: p.guardian_id,
        name: format!("{} {}", p.given_name, p.family_name),
        district: p.district_name.clone(),
        language,
        languages,
        channels,
        quiet_start: hhmm(p.quiet_start_minute),
        quiet_end: hhmm(p.quiet_end_minute),
    }
}

fn when(at: chrono::DateTime<chrono::Utc>) -> (String, String) {
    (at.format("%Y-%m-%d %H:%M UTC").to_string(), at.to_rfc3339())
}

async fn settings_page(
    state: &AppState,
    guardian: &Guardian,
    status: StatusCode,
    saved: bool,
    error: Option<String>,
) -> Response {
    let services = state.services();
    let (preferences, sessions) = match tokio::try_join!(
        services.guardian_preferences(&guardian.access),
        services.guardian_sessions(&guardian.access),
    ) {
        Ok(found) => found,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let lang = guardian.lang;
    let mut devices = Vec::new();
    for p in &preferences {
        for d in &p.devices {
            let (since, since_iso) = when(d.registered_at);
            let label = match d.platform {
                PushPlatform::WebPush => WebPushSubscription::parse_token(&d.token)
                    .map(|s| {
                        format!(
                            "{} ({})",
                            lang.t("Browser"),
                            s.endpoint.host_str().unwrap_or_default()
                        )
                    })
                    .unwrap_or_else(|_| lang.t("Browser").to_owned()),
                PushPlatform::Apns => "iPhone".to_owned(),
                PushPlatform::Fcm => "Android".to_owned(),
            };
            let id = d.contact_point_id.to_string();
            if !devices.iter().any(|r: &DeviceRow| r.id == id) {
                devices.push(DeviceRow {
                    id,
                    label,
                    since,
                    since_iso,
                    current: false,
                });
            }
        }
    }
    let sessions = sessions
        .iter()
        .map(|s| {
            let (since, since_iso) = when(s.created_at);
            DeviceRow {
                id: s.id.to_string(),
                label: String::new(),
                since,
                since_iso,
                current: s.id == guardian.access.session,
            }
        })
        .collect();
    let page = SettingsPage {
        frame: frame(lang, guardian.csrf(), true, "/app/settings"),
        guardians: preferences.iter().map(|p| guardian_form(lang, p)).collect(),
        sessions,
        devices,
        saved,
        error,
    };
    render(status, &page)
}

#[derive(serde::Deserialize)]
struct SettingsQuery {
    #[serde(default)]
    saved: Option<String>,
}

async fn settings(
    State(state): State<AppState>,
    guardian: Guardian,
    axum::extract::Query(query): axum::extract::Query<SettingsQuery>,
) -> Response {
    let saved = query.saved.is_some();
    settings_page(&state, &guardian, StatusCode::OK, saved, None).await
}

async fn save_settings(State(state): State<AppState>, posted: GuardianPosted) -> Response {
    let GuardianPosted { guardian, fields } = posted;
    let lang = guardian.lang;
    let Ok(id) = fields.get("guardian").parse::<GuardianId>() else {
        return not_found(lang);
    };
    let (Ok(start), Ok(end)) = (
        minute_of(fields.get("quiet_start")),
        minute_of(fields.get("quiet_end")),
    ) else {
        let said = lang.t("Quiet hours need a start and an end, such as 21:00 and 07:00.");
        return settings_page(
            &state,
            &guardian,
            StatusCode::UNPROCESSABLE_ENTITY,
            false,
            Some(said.into()),
        )
        .await;
    };
    let quiet = match (start, end) {
        (Some(s), Some(e)) => Some((s, e)),
        (None, None) => None,
        _ => {
            let said = lang.t("Quiet hours need a start and an end, such as 21:00 and 07:00.");
            return settings_page(
                &state,
                &guardian,
                StatusCode::UNPROCESSABLE_ENTITY,
                false,
                Some(said.into()),
            )
            .await;
        }
    };
    // A channel the form offered is off unless ticked; one it did not offer (locked, or
    // no address on it) keeps the guardian's own choice as it is.
    let current = match state
        .services()
        .guardian_preferences(&guardian.access)
        .await
    {
        Ok(found) => found.into_iter().find(|p| p.guardian_id == id),
        Err(error) => return ApiError::from(error).into_response(),
    };
    let Some(current) = current else {
        return not_found(lang);
    };
    let offered: Vec<&str> = fields.all("offered").collect();
    let ticked: Vec<&str> = fields.all("channel").collect();
    let channels_off = Channel::ALL
        .iter()
        .copied()
        .filter(|c| {
            if offered.contains(&c.as_str()) {
                !ticked.contains(&c.as_str())
            } else {
                current
                    .opt_outs
                    .iter()
                    .any(|o| o.channel == *c && o.source == "guardian")
            }
        })
        .collect();
    let language = Some(fields.get("language").trim().to_owned()).filter(|l| !l.is_empty());
    let preferences = Preferences {
        language,
        quiet,
        channels_off,
    };
    match state
        .services()
        .set_guardian_preferences(&guardian.access, id, &preferences)
        .await
    {
        // Back to the page by GET: reloading it posts nothing again.
        Ok(()) => Redirect::to("/app/settings?saved=1").into_response(),
        Err(tidings_core::services::ServiceError::Refused(refusal)) => {
            let (status, said) = crate::form::said_in(&refusal, lang);
            settings_page(&state, &guardian, status, false, Some(said)).await
        }
        Err(error) => ApiError::from(error).into_response(),
    }
}

async fn end_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: GuardianPosted,
) -> Response {
    let guardian = posted.guardian;
    let Ok(other) = id.parse::<uuid::Uuid>() else {
        return not_found(guardian.lang);
    };
    match state
        .services()
        .end_other_guardian_session(&guardian.access, other)
        .await
    {
        Ok(()) => Redirect::to("/app/settings").into_response(),
        Err(tidings_core::services::ServiceError::Refused(_)) => not_found(guardian.lang),
        Err(error) => ApiError::from(error).into_response(),
    }
}

async fn remove_device(
    State(state): State<AppState>,
    Path(id): Path<String>,
    posted: GuardianPosted,
) -> Response {
    let guardian = posted.guardian;
    let preferences = match state
        .services()
        .guardian_preferences(&guardian.access)
        .await
    {
        Ok(found) => found,
        Err(error) => return ApiError::from(error).into_response(),
    };
    let Some(device) = preferences
        .iter()
        .flat_map(|p| &p.devices)
        .find(|d| d.contact_point_id.to_string() == id)
    else {
        return not_found(guardian.lang);
    };
    match state
        .services()
        .unregister_guardian_device(&guardian.access, &device.token)
        .await
    {
        Ok(()) => Redirect::to("/app/settings").into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

#[derive(Template)]
#[template(path = "app_offline.html")]
struct OfflinePage {
    frame: Frame,
}

/// The page the service worker shows when the network is gone.
async fn offline(headers: HeaderMap) -> Response {
    let page = OfflinePage {
        frame: frame(Lang::of(&headers), String::new(), false, "/app/"),
    };
    render(StatusCode::OK, &page)
}

/// The web app manifest: what makes the app installable.
async fn manifest(headers: HeaderMap) -> Response {
    let lang = Lang::of(&headers);
    let body = serde_json::json!({
        "name": lang.t("Tidings: messages from school"),
        "short_name": "Tidings",
        "description": lang.t("Messages from your children's schools, with notifications."),
        "lang": lang.tag(),
        "id": "/app/",
        "start_url": "/app/",
        "scope": "/app/",
        "display": "standalone",
        "background_color": "#ffffff",
        "theme_color": "#1d4ed8",
        "icons": [
            {"src": "/app/icon-192.png", "sizes": "192x192", "type": "image/png", "purpose": "any maskable"},
            {"src": "/app/icon-512.png", "sizes": "512x512", "type": "image/png", "purpose": "any maskable"},
        ],
    });
    (
        [(header::CONTENT_TYPE, "application/manifest+json")],
        body.to_string(),
    )
        .into_response()
}

/// The service worker: keeps the offline page and the app's files, shows push
/// notifications and opens the message a notification names.
async fn service_worker() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            // Browsers check for a new worker on each visit; never a stale one.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        worker_script(),
    )
        .into_response()
}

/// The service worker with the names of this version's files.
fn worker_script() -> String {
    let a = assets();
    include_str!("../static/app/sw.js")
        .replace("__VERSION__", &a.version)
        .replace("__CSS__", &a.css)
        .replace("__JS__", &a.js)
}

/// The style sheet, script and icons.
async fn file(Path(name): Path<String>) -> Response {
    let a = assets();
    let asked = format!("/app/{name}");
    let immutable = "public, max-age=31536000, immutable";
    let (content_type, content, cache): (&str, &[u8], &str) = if asked == a.css {
        ("text/css; charset=utf-8", CSS.as_bytes(), immutable)
    } else if asked == a.js {
        ("text/javascript; charset=utf-8", JS.as_bytes(), immutable)
    } else if name == "icon-192.png" {
        ("image/png", ICON_192, "public, max-age=86400")
    } else if name == "icon-512.png" {
        ("image/png", ICON_512, "public, max-age=86400")
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
        ],
        content,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_worker_names_the_files_it_keeps() {
        let a = assets();
        let script = worker_script();
        assert!(
            script.contains(&format!("'{}'", a.css)) && script.contains(&format!("'{}'", a.js))
        );
        assert!(script.contains(&format!("'tidings-app-{}'", a.version)));
        assert!(!script.contains("__"), "every placeholder is filled");
    }

    #[test]
    fn the_app_cookie_is_for_the_app_only() {
        let set = app_cookie(APP_COOKIE, "tgs_x", 60, true);
        assert!(set.starts_with("tidings_app=tgs_x; Path=/app; HttpOnly; SameSite=Lax"));
        assert!(set.ends_with("Secure"));
    }
}
