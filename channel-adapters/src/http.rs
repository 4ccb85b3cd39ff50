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

/// A transport failure of a send: before the request left (nothing sent, try again) or
/// after (the provider may have it: in doubt).
pub fn transport_failure(provider: &str, error: &reqwest::Error) -> SendOutcome {
    // Without the URL: it can carry an account id, and the address is in the body.
    let reason = error.without_url_ref();
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

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut text = self.to_string();
        if let Some(url) = self.url() {
            text = text.replace(&format!(" for url ({url})"), "");
            text = text.replace(url.as_str(), "<url>");
        }
        // The innermost cause says what happened ("connection refused", "invalid peer
        // certificate"); the outer ones only repeat that a request failed.
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            if cause.source().is_none() {
                text = format!("{text} ({cause})");
            }
            source = cause.source();
        }
        text
    }
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
