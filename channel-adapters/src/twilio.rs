//! SMS through Twilio's Messages API (`POST /2010-04-01/Accounts/{sid}/Messages.json`).
//!
//! Twilio does not deduplicate message requests, so the delivery id travels in the
//! status-callback URL instead: every callback about a send names its delivery even when
//! the answer to the send (with Twilio's `SM…` sid) was lost. An in-doubt attempt that
//! is retried may reach the guardian twice; the dispatcher counts it.

use std::num::NonZeroU32;

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde::Deserialize;
use tidings_core::DeliveryEvent;

use crate::http::{self, Timeouts};
use crate::reports::{delivery_id, field, pairs_json, unreadable, Report, Unreadable};
use crate::{AddressFault, Outgoing, SendOutcome};

/// Twilio's production API.
pub const API_BASE: &str = "https://api.twilio.com";

/// One Twilio account (or subaccount) and how to send from it.
#[derive(Clone)]
pub struct TwilioConfig {
    /// `AC…`: the account the messages are sent from.
    pub account_sid: String,
    /// `SK…` when authenticating with an API key; `None` authenticates with the account
    /// SID and its auth token.
    pub api_key_sid: Option<String>,
    /// The auth token, or the API key's secret.
    pub secret: String,
    /// Sender: a phone number in E.164 or an alphanumeric sender id…
    pub from: Option<String>,
    /// …or a messaging service (`MG…`), which picks the sender itself.
    pub messaging_service_sid: Option<String>,
    /// Where the API is: [`API_BASE`], or a sandbox.
    pub api_base: String,
    /// Our public status-callback URL (`https://…/callbacks/twilio/status`), if Twilio is
    /// to report delivery.
    pub status_callback: Option<String>,
    pub timeouts: Timeouts,
    /// The account's sending rate (a long code sends 1 a second, a short code 100).
    pub max_per_second: Option<NonZeroU32>,
    /// Requests in flight at once per batch.
    pub concurrency: usize,
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("account_sid", &self.account_sid)
            .field("api_key_sid", &self.api_key_sid)
            .field("secret", &"***")
            .field("from", &self.from)
            .field("messaging_service_sid", &self.messaging_service_sid)
            .field("api_base", &self.api_base)
            .field("status_callback", &self.status_callback)
            .finish_non_exhaustive()
    }
}

/// Why a Twilio configuration cannot work.
#[derive(Debug, thiserror::Error)]
#[error("twilio: {0}")]
pub struct InvalidConfig(String);

/// The Twilio adapter.
pub struct Twilio {
    config: TwilioConfig,
    messages_url: String,
    client: reqwest::Client,
}

impl Twilio {
    pub fn new(config: TwilioConfig) -> Result<Self, InvalidConfig> {
        if !config.account_sid.starts_with("AC") {
            return Err(InvalidConfig("account_sid must start with AC".into()));
        }
        if config.secret.is_empty() {
            return Err(InvalidConfig(
                "the auth token (or API key secret) is empty".into(),
            ));
        }
        if config.from.is_none() == config.messaging_service_sid.is_none() {
            return Err(InvalidConfig(
                "set exactly one of from and messaging_service_sid".into(),
            ));
        }
        let base = config.api_base.trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(InvalidConfig(format!(
                "api_base {base:?} is not an http(s) URL"
            )));
        }
        let messages_url = format!(
            "{base}/2010-04-01/Accounts/{}/Messages.json",
            config.account_sid
        );
        Ok(Self {
            client: http::client(config.timeouts),
            messages_url,
            config,
        })
    }

    /// The Messages API form for one send.
    pub fn form(&self, send: &Outgoing) -> Vec<(&'static str, String)> {
        let mut form: Vec<(&str, String)> =
            vec![("To", send.address.clone()), ("Body", send.sms_text())];
        match (&self.config.from, &self.config.messaging_service_sid) {
            (_, Some(service)) => form.push(("MessagingServiceSid", service.clone())),
            (Some(from), None) => form.push(("From", from.clone())),
            (None, None) => unreachable!("checked by Twilio::new"),
        }
        let reports = self.config.status_callback.as_ref();
        if let Some(callback) = reports.filter(|_| send.delivery_reports) {
            form.push(("StatusCallback", status_callback_url(callback, send)));
        }
        form
    }

    async fn send_one(&self, send: &Outgoing) -> SendOutcome {
        let form = self.form(send);
        let user = self
            .config
            .api_key_sid
            .as_deref()
            .unwrap_or(&self.config.account_sid);
        let sent = self
            .client
            .post(&self.messages_url)
            .basic_auth(user, Some(&self.config.secret))
            .form(&form)
            .send()
            .await;
        match http::answer("twilio", sent).await {
            // A 2xx whose body was cut off classifies as accepted without a sid.
            Ok(a) => classify(a.status, a.retry_after, &a.text, send),
            Err(outcome) => outcome,
        }
    }
}

/// `StatusCallback` for one send: our callback URL with the delivery id added.
pub fn status_callback_url(callback: &str, send: &Outgoing) -> String {
    let separator = if callback.contains('?') { '&' } else { '?' };
    format!("{callback}{separator}delivery={}", send.delivery_id)
}

crate::one_by_one!(Twilio, "twilio", max_per_second: |a| a.config.max_per_second, concurrency: |a| a.config.concurrency);

/// Twilio's error body.
#[derive(Debug, Deserialize)]
struct ApiError {
    code: Option<u32>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Created {
    sid: String,
}

/// A 2xx whose body names no message: Twilio has it, so it is sent; callbacks find the
/// delivery by the id in their URL.
fn accepted_without_sid(send: &Outgoing) -> SendOutcome {
    SendOutcome::Sent {
        provider_ref: send.idempotency_key.clone(),
    }
}

/// Classifies Twilio's answer to one send.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<std::time::Duration>,
    body: &str,
    send: &Outgoing,
) -> SendOutcome {
    if status.is_success() {
        return match serde_json::from_str::<Created>(body) {
            Ok(created) if is_sid(&created.sid) => SendOutcome::Sent {
                provider_ref: created.sid,
            },
            _ => {
                tracing::warn!(delivery_id = %send.delivery_id, "twilio accepted a send with an answer naming no message");
                accepted_without_sid(send)
            }
        };
    }
    let (code, message) = match serde_json::from_str::<ApiError>(body) {
        Ok(e) => (e.code, e.message.unwrap_or_default()),
        Err(_) => (None, http::excerpt(body, 200)),
    };
    let error = match code {
        Some(code) => format!("twilio {} error {code}: {message}", status.as_u16()),
        None => format!("twilio {}: {message}", status.as_u16()),
    };
    match (status.as_u16(), code) {
        (429 | 503, _) => SendOutcome::Throttled { error, retry_after },
        (500..=599, _) => SendOutcome::Transient { error, retry_after },
        // The account, not the guardian: wrong credentials, a sender that is not ours, a
        // suspended account. Retried (and the breaker opens) until someone fixes it,
        // rather than failing every guardian's delivery for good.
        (401 | 403 | 404, _)
        | (_, Some(20003 | 20404 | 21212 | 21603 | 21606 | 21659 | 21701..=21712 | 30002)) => {
            SendOutcome::Transient {
                error: format!("{error} (account or configuration problem)"),
                retry_after: None,
            }
        }
        (_, Some(21211 | 21614)) => SendOutcome::Unreachable {
            error,
            fault: AddressFault::Invalid,
        },
        (_, Some(21610)) => SendOutcome::Unreachable {
            error,
            fault: AddressFault::OptedOut,
        },
        (400..=499, _) => SendOutcome::Permanent { error },
        _ => SendOutcome::InDoubt {
            error: format!("{error} (unexpected status)"),
        },
    }
}

fn is_sid(sid: &str) -> bool {
    sid.len() == 34
        && (sid.starts_with("SM") || sid.starts_with("MM"))
        && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The `X-Twilio-Signature` of a request Twilio makes to `url` with the form `params`:
/// HMAC-SHA1 keyed with the auth token over the full URL followed by every parameter's
/// name and value, sorted by name (a repeated parameter's distinct values sorted too, as
/// Twilio's helper libraries do), base64.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let sorted: std::collections::BTreeSet<&(String, String)> = params.iter().collect();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Twilio's message statuses as delivery events.
pub fn event(status: &str) -> Result<Option<DeliveryEvent>, String> {
    Ok(match status {
        "queued" | "accepted" | "scheduled" | "sending" => None,
        "sent" => Some(DeliveryEvent::Accepted),
        "delivered" | "read" => Some(DeliveryEvent::Delivered),
        "undelivered" | "failed" | "canceled" => Some(DeliveryEvent::Failed),
        other => return Err(format!("unknown MessageStatus {other:?}")),
    })
}

/// A status callback: the delivery from the callback URL's `query` (we put it there),
/// the status from the `form`.
pub fn status_callback(query: &str, form: &[(String, String)]) -> Result<Vec<Report>, Unreadable> {
    let query: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let delivery = field(&query, "delivery")
        .and_then(delivery_id)
        .ok_or_else(|| unreadable("the callback URL names no delivery"))?;
    let sid = field(form, "MessageSid").ok_or_else(|| unreadable("no MessageSid"))?;
    let status = field(form, "MessageStatus").ok_or_else(|| unreadable("no MessageStatus"))?;
    let event = event(status).map_err(unreadable)?;
    // Keyed on what the signature covers (a message has each status once), not on the
    // unsigned I-Twilio-Idempotency-Token header: a replay with that header changed is
    // still the duplicate it is.
    let event_id = format!("{sid}:{status}");
    let detail = field(form, "ErrorCode").map(|c| format!("twilio error {c}"));
    Ok(vec![Report {
        event_id,
        event: tidings_core::services::provider_events::ProviderEvent {
            delivery_id: delivery,
            event,
            detail,
            effect: None,
            raw: pairs_json(form),
        },
        reference: Some(sid.to_owned()),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_message_statuses_map_to_delivery_events() {
        assert_eq!(event("sent"), Ok(Some(DeliveryEvent::Accepted)));
        assert_eq!(event("delivered"), Ok(Some(DeliveryEvent::Delivered)));
        assert_eq!(event("read"), Ok(Some(DeliveryEvent::Delivered)));
        assert_eq!(event("undelivered"), Ok(Some(DeliveryEvent::Failed)));
        assert_eq!(event("queued"), Ok(None));
        assert!(event("exploded").is_err());
    }
    use tidings_core::{Channel, DeliveryId, MessageId, MessageKind};

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The worked example of Twilio's request-validation documentation (auth token
    /// `12345`), which every Twilio helper library tests against.
    #[test]
    fn signature_matches_twilios_documented_example() {
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let form = params(&[
            ("To", "+18005551212"),
            ("Digits", "1234"),
            ("CallSid", "CA1234567890ABCDE"),
            ("From", "+14158675309"),
            ("Caller", "+14158675309"),
        ]);
        assert_eq!(
            signature("12345", url, &form),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        assert_ne!(
            signature("12346", url, &form),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        // A repeated parameter's distinct values are signed in sorted order.
        let repeated = params(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]);
        assert_eq!(
            signature("12345", url, &repeated),
            "IK+Dwps556ElfBT0I3Rgjkr1wJU="
        );
    }

    fn outgoing() -> Outgoing {
        Outgoing {
            delivery_id: DeliveryId::new(),
            message_id: MessageId::new(),
            idempotency_key: "d-1".into(),
            channel: Channel::Sms,
            address: "+15005550006".into(),
            kind: MessageKind::General,
            subject: String::new(),
            body: "School is closed today.".into(),
            language: "en".into(),
            ack: None,
            unsubscribe_url: None,
            delivery_reports: true,
            span: tracing::Span::none(),
        }
    }

    fn classified(status: u16, body: &str) -> SendOutcome {
        let status = reqwest::StatusCode::from_u16(status).unwrap();
        classify(status, None, body, &outgoing())
    }

    #[test]
    fn twilio_answers_are_classified_by_status_and_error_code() {
        let sid = "SM0123456789abcdef0123456789abcdef";
        assert_eq!(
            classified(201, &format!(r#"{{"sid":"{sid}","status":"queued"}}"#)),
            SendOutcome::Sent {
                provider_ref: sid.into()
            }
        );
        let error = |code: u32, status: u16| {
            classified(
                status,
                &format!(r#"{{"code":{code},"message":"m","status":{status}}}"#),
            )
        };
        for (code, fault) in [
            (21211, AddressFault::Invalid),
            (21614, AddressFault::Invalid),
            (21610, AddressFault::OptedOut),
        ] {
            assert!(
                matches!(error(code, 400), SendOutcome::Unreachable { ref error, fault: f } if error.contains(&code.to_string()) && f == fault),
                "{code}"
            );
        }
        assert!(matches!(error(21617, 400), SendOutcome::Permanent { .. }));
        for (code, status) in [(20003, 401), (21606, 400), (21659, 400), (20500, 500)] {
            assert!(
                matches!(error(code, status), SendOutcome::Transient { .. }),
                "{code}"
            );
        }
        // Too many requests: retried, and the dispatcher slows down.
        assert!(matches!(error(20429, 429), SendOutcome::Throttled { .. }));
    }

    #[test]
    fn garbage_answers_are_classified_not_trusted() {
        // Accepted, but no sid: sent, under the delivery's own key.
        assert_eq!(
            classified(201, "<html>oops"),
            SendOutcome::Sent {
                provider_ref: "d-1".into()
            }
        );
        assert_eq!(
            classified(200, r#"{"sid":"not-a-sid"}"#),
            SendOutcome::Sent {
                provider_ref: "d-1".into()
            }
        );
        assert!(
            matches!(classified(502, "<html>Bad gateway"), SendOutcome::Transient { ref error, .. } if error.contains("Bad gateway"))
        );
        assert!(matches!(
            classified(400, "\u{0}\u{1}garbage"),
            SendOutcome::Permanent { .. }
        ));
        assert!(matches!(classified(302, ""), SendOutcome::InDoubt { .. }));
    }

    proptest::proptest! {
        /// Whatever Twilio answers, nothing panics, and the status class decides what no
        /// body can override: a 2xx is sent, a 429 or 503 throttled, another 5xx retried, a
        /// 1xx/3xx in doubt.
        #[test]
        fn any_answer_is_classified(status in 100u16..600, body in ".{0,300}") {
            let outcome = classified(status, &body);
            let expected = match status {
                200..=299 => matches!(outcome, SendOutcome::Sent { .. }),
                429 | 503 => matches!(outcome, SendOutcome::Throttled { .. }),
                500..=599 => matches!(outcome, SendOutcome::Transient { .. }),
                400..=499 => !matches!(outcome, SendOutcome::Sent { .. } | SendOutcome::InDoubt { .. }),
                _ => matches!(outcome, SendOutcome::InDoubt { .. }),
            };
            proptest::prop_assert!(expected, "{status} {body:?} -> {outcome:?}");
        }
    }

    #[test]
    fn the_status_callback_names_the_delivery() {
        let send = outgoing();
        assert_eq!(
            status_callback_url("https://t.example/callbacks/twilio/status", &send),
            format!(
                "https://t.example/callbacks/twilio/status?delivery={}",
                send.delivery_id
            )
        );
        assert_eq!(
            status_callback_url("https://t.example/cb?x=1", &send),
            format!("https://t.example/cb?x=1&delivery={}", send.delivery_id)
        );
    }

    /// A working account sending from a number.
    fn account() -> TwilioConfig {
        TwilioConfig {
            account_sid: "AC0123".into(),
            api_key_sid: None,
            secret: "token".into(),
            from: Some("+15005550006".into()),
            messaging_service_sid: None,
            api_base: API_BASE.into(),
            status_callback: None,
            timeouts: Timeouts::default(),
            max_per_second: None,
            concurrency: 4,
        }
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let good = account();
        assert!(Twilio::new(good.clone()).is_ok());
        let both = TwilioConfig {
            messaging_service_sid: Some("MG1".into()),
            ..good.clone()
        };
        assert!(Twilio::new(both).is_err());
        let no_secret = TwilioConfig {
            secret: String::new(),
            ..good.clone()
        };
        assert!(Twilio::new(no_secret).is_err());
        assert!(!format!("{good:?}").contains("token"));
    }

    #[test]
    fn delivery_reports_are_asked_for_unless_the_send_is_no_delivery() {
        let twilio = Twilio::new(TwilioConfig {
            status_callback: Some("https://t.example/callbacks/twilio/status".into()),
            ..account()
        })
        .unwrap();
        let send = outgoing();
        let asks = |send: &Outgoing| {
            twilio
                .form(send)
                .iter()
                .any(|(k, _)| *k == "StatusCallback")
        };
        assert!(asks(&send));
        let code = Outgoing {
            delivery_reports: false,
            ..send
        };
        assert!(!asks(&code));
    }

    #[test]
    fn a_status_callback_is_read_from_its_url_and_form() {
        let id = tidings_core::DeliveryId::new();
        let form = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let read = status_callback(
            &format!("delivery={id}"),
            &form(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]),
        )
        .unwrap();
        assert_eq!(read[0].event.delivery_id, id);
        assert_eq!(read[0].event_id, "SM1:delivered");
        let refused = status_callback(
            "",
            &form(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]),
        )
        .unwrap_err();
        assert!(refused.0.contains("names no delivery"), "{refused:?}");
        let refused = status_callback(
            &format!("delivery={id}"),
            &form(&[("MessageSid", "SM1"), ("MessageStatus", "lost")]),
        )
        .unwrap_err();
        assert!(refused.0.contains("lost"), "{refused:?}");
    }
}
