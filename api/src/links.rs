//! The pages behind the links guardians get: `/a/{token}` shows the message with an
//! Acknowledge button, `/u/{token}` offers to stop email. Only POST changes anything: mail
//! scanners and link previews fetch every link they see, and must never acknowledge or
//! unsubscribe anyone. Pages are small, server-rendered, script-free and in the guardian's
//! language; a bad or expired link gets a page saying so, never an error dump.

use axum::extract::{FromRequestParts, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use html_escape::{encode_double_quoted_attribute, encode_text};
use tidings_core::link::{LinkClaims, LinkError, LinkPurpose};
use tidings_core::services::acknowledge::AckVia;
use tidings_core::store::guardian::{GuardianMessage, GuardianMessageRef};
use tidings_core::store::AckOutcome;
use tidings_core::words::{fill, words, Words};

use crate::AppState;

/// `GET /a/{token}`: the message and, while it waits for one, an Acknowledge button.
pub async fn ack_page(Link { message, .. }: Link) -> Response {
    let w = words(&message.language);
    let action = match message.ack_state.as_str() {
        "pending" => format!(
            "<form method=\"post\"><button type=\"submit\">{}</button></form>",
            encode_text(w.acknowledge_button)
        ),
        "acked" => notice(w.already_acknowledged),
        _ => notice(w.no_acknowledgment_needed),
    };
    message_page(StatusCode::OK, &message, &action)
}

/// `POST /a/{token}`: acknowledges, through the channel the link came by.
pub async fn acknowledge(
    State(state): State<AppState>,
    Link {
        claims,
        mut message,
    }: Link,
) -> Response {
    let outcome = state
        .services()
        .acknowledge(claims.recipient, AckVia::Link(claims.channel))
        .await;
    let w = words(&message.language);
    let said = match outcome {
        Ok(AckOutcome::Acked { .. }) => {
            tracing::info!(recipient_id = %claims.recipient, via = %claims.channel, "acknowledged by link");
            message.ack_state = "acked".into();
            w.acknowledged
        }
        Ok(AckOutcome::AlreadyAcked) => w.already_acknowledged,
        Ok(AckOutcome::NotRequired) => w.no_acknowledgment_needed,
        Ok(AckOutcome::NotFound) => return problem_page(StatusCode::NOT_FOUND, w, w.link_invalid),
        Err(error) => {
            tracing::error!(%error, recipient_id = %claims.recipient, "acknowledgment not recorded");
            return unavailable(w);
        }
    };
    message_page(StatusCode::OK, &message, &notice(said))
}

/// `GET /u/{token}`: asks before stopping email.
pub async fn unsubscribe_page(Link { message, .. }: Link) -> Response {
    let w = words(&message.language);
    let district = [("district", message.district_name.as_str())];
    let body = format!(
        "<h1>{}</h1><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">{}</button></form>",
        encode_text(&fill(w.unsubscribe_question, &district)),
        encode_text(w.unsubscribe_button),
    );
    page(StatusCode::OK, w, &message.district_name, &body)
}

/// `POST /u/{token}`: stops email to the guardian, from the page's button or a mail
/// client's one-click unsubscribe (RFC 8058). Emergencies still reach them: only a
/// carrier STOP silences those.
pub async fn unsubscribe(State(state): State<AppState>, Link { message, .. }: Link) -> Response {
    let w = words(&message.language);
    let recorded = state
        .services()
        .unsubscribe_by_link(
            message.district_id,
            message.guardian_id,
            message.recipient_id,
        )
        .await;
    if let Err(error) = recorded {
        tracing::error!(%error, recipient_id = %message.recipient_id, "unsubscribe not recorded");
        return unavailable(w);
    }
    tracing::info!(guardian_id = %message.guardian_id, "unsubscribed from email by link");
    let district = [("district", message.district_name.as_str())];
    let body = format!(
        "<p class=\"notice\">{}</p>",
        encode_text(&fill(w.unsubscribed, &district))
    );
    page(StatusCode::OK, w, &message.district_name, &body)
}

/// A link as followed: its genuine, unexpired claims and the message it names. Its
/// purpose is the path's (`/a/` acknowledges, `/u/` unsubscribes). A link that is not one
/// is answered with a page saying so, never an error dump.
pub struct Link {
    claims: LinkClaims,
    message: GuardianMessage,
}

impl FromRequestParts<AppState> for Link {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let purpose = if parts.uri.path().starts_with("/u/") {
            LinkPurpose::Unsubscribe
        } else {
            LinkPurpose::Acknowledge
        };
        let token = parts
            .uri
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let (claims, message) = open(state, &token, purpose, &parts.headers).await?;
        Ok(Link { claims, message })
    }
}

/// The claims and message of a link, or the page to answer instead.
async fn open(
    state: &AppState,
    token: &str,
    purpose: LinkPurpose,
    headers: &HeaderMap,
) -> Result<(LinkClaims, GuardianMessage), Response> {
    // Before the token is trusted, the browser's language is all there is.
    let browser = words(
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default(),
    );
    let (claims, expired) = match state.link_keys.verify(token, state.clock.now()) {
        Ok(claims) => (claims, false),
        // Genuine but old: say so in the guardian's own language.
        Err(LinkError::Expired(claims)) => (claims, true),
        Err(error) => {
            tracing::info!(reason = %error, "link refused");
            return Err(problem_page(
                StatusCode::NOT_FOUND,
                browser,
                browser.link_invalid,
            ));
        }
    };
    if claims.purpose != purpose {
        return Err(problem_page(
            StatusCode::NOT_FOUND,
            browser,
            browser.link_invalid,
        ));
    }
    let found = state
        .store
        .guardian_message(GuardianMessageRef::Recipient(claims.recipient), &[])
        .await;
    let message = match found {
        Ok(mut messages) if !messages.is_empty() => messages.swap_remove(0),
        Ok(_) => {
            return Err(problem_page(
                StatusCode::NOT_FOUND,
                browser,
                browser.link_invalid,
            ))
        }
        Err(error) => {
            tracing::error!(%error, recipient_id = %claims.recipient, "link page unavailable");
            return Err(unavailable(browser));
        }
    };
    if expired {
        let w = words(&message.language);
        return Err(problem_page(StatusCode::GONE, w, w.link_expired));
    }
    Ok((claims, message))
}

/// Our failure, said plainly.
fn unavailable(w: &Words) -> Response {
    problem_page(
        StatusCode::SERVICE_UNAVAILABLE,
        w,
        "Something went wrong on our side. Please try again in a minute.",
    )
}

fn notice(text: &str) -> String {
    format!("<p class=\"notice\">{}</p>", encode_text(text))
}

fn message_page(status: StatusCode, message: &GuardianMessage, action: &str) -> Response {
    let w = words(&message.language);
    let paragraphs: String = message
        .body
        .split("\n\n")
        .map(|p| format!("<p>{}</p>", encode_text(p).replace('\n', "<br>")))
        .collect();
    let body = format!(
        "<h1>{}</h1>{paragraphs}{action}",
        encode_text(&message.subject)
    );
    page(status, w, &message.district_name, &body)
}

fn problem_page(status: StatusCode, w: &Words, text: &str) -> Response {
    page(status, w, "Tidings", &notice(text))
}

/// A whole page: mobile-first, readable on a small screen, no scripts, nothing fetched
/// from elsewhere, not cached, not indexed, no referrer leaking the token.
fn page(status: StatusCode, w: &Words, site: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{site}</title><style>\
         body{{font-family:system-ui,sans-serif;font-size:1.125rem;line-height:1.5;margin:0 auto;\
         max-width:36rem;padding:1rem;color:#111;background:#fff}}\
         header{{font-weight:600;color:#444;border-bottom:1px solid #ddd;padding-bottom:.5rem}}\
         h1{{font-size:1.4rem}}button{{font-size:1.25rem;padding:.8rem 1.5rem;width:100%;border:0;\
         border-radius:.4rem;background:#1a56db;color:#fff}}button:focus{{outline:3px solid #f59e0b}}\
         .notice{{font-weight:600;background:#eef6ee;border-left:4px solid #2e7d32;padding:.75rem}}\
         </style></head><body><header>{site}</header><main>{body}</main></body></html>",
        lang = encode_double_quoted_attribute(w.lang),
        site = encode_text(site),
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert("x-robots-tag", HeaderValue::from_static("noindex"));
    response
}
