//! What the HTTP adapters share: one client per adapter with timeouts everywhere, and
//! the classification of transport failures.

use std::time::Duration;

use crate::SendOutcome;

/// Timeouts of an HTTP provider account. A provider that hangs costs at most `request`
/// per send; one that cannot be reached costs at most `connect`.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(15),
        }
    }
}

/// A client for one provider account: rustls with the webpki roots, no redirects (a
/// provider API never redirects a send; following one could send twice), the timeouts.
pub fn client(timeouts: Timeouts) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.request)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tidings/", env!("CARGO_PKG_VERSION")))
        .build()
        // Only a broken TLS backend fails here, and then nothing could be sent at all.
        .expect("the HTTP client's TLS configuration is valid")
}

/// What a provider answered: the status, its `Retry-After`, the headers, and the body
/// (`<unreadable: …>` when it was cut off: the status alone then decides).
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub retry_after: Option<Duration>,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

/// Reads the answer to a send, or classifies why there is none.
pub async fn answer(
    provider: &str,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<Answer, SendOutcome> {
    let response = sent.map_err(|e| transport_failure(provider, &e))?;
    let status = response.status();
    let headers = response.headers().clone();
    let text = match response.text().await {
        Ok(text) => text,
        Err(e) => format!("<unreadable: {e}>"),
    };
    Ok(Answer {
        status,
        retry_after: retry_after(&headers),
        headers,
        text,
    })
}

/// A transport failure of a send: before the request left (nothing sent, try again) or
/// after (the provider may have it: in doubt).
pub fn transport_failure(provider: &str, error: &reqwest::Error) -> SendOutcome {
    let reason = describe(error);
    if error.is_connect() || error.is_builder() {
        SendOutcome::transient(format!("{provider}: cannot connect: {reason}"))
    } else if error.is_timeout() {
        SendOutcome::InDoubt {
            error: format!("{provider}: no answer in time: {reason}"),
        }
    } else {
        SendOutcome::InDoubt {
            error: format!("{provider}: the connection failed after the request: {reason}"),
        }
    }
}

/// The error without its URL (it can carry an account id; the address is in the body),
/// ending with the innermost cause ("connection refused", "invalid peer certificate"):
/// the outer ones only repeat that a request failed.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(&format!(" for url ({url})"), "");
        text = text.replace(url.as_str(), "<url>");
    }
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if cause.source().is_none() {
            text = format!("{text} ({cause})");
        }
        source = cause.source();
    }
    text
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the providers we speak).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// At most `max` characters of a provider's answer, for an error message.
pub fn excerpt(body: &str, max: usize) -> String {
    let flat: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if body.chars().count() > max {
        format!("{flat}…")
    } else {
        flat
    }
}
