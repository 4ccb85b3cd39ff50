//! Push to iOS through Apple's APNs provider API, with token (ES256 JWT) authentication.
//!
//! The payload is built with a2's `DefaultNotificationBuilder`; it is sent with reqwest's
//! HTTP/2 client and a cached provider token of our own, because a2's client only talks
//! to Apple's two hosts and the same code must reach the sandbox in tests. One request per
//! device: `apns-id` = the delivery id (Apple reports errors by it), `apns-collapse-id` =
//! the message id (a resend replaces, not repeats, the notification on the phone),
//! priority 10 for emergencies.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use a2::request::notification::{
    CollapseId, DefaultNotificationBuilder, NotificationBuilder as _, NotificationOptions,
    Priority, PushType,
};
use a2::request::payload::PayloadLike as _;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tidings_core::clock::Clock;
use tidings_core::MessageKind;

use crate::http::{self, Timeouts};
use crate::jwt::{KeyError, Signer};
use crate::{AddressFault, Outgoing, SendOutcome};

pub const PRODUCTION: &str = "https://api.push.apple.com";
pub const DEVELOPMENT: &str = "https://api.sandbox.push.apple.com";

/// Apple accepts a provider token for an hour and refuses refreshes more often than every
/// 20 minutes: a new one every 40.
const TOKEN_LIFETIME: chrono::Duration = chrono::Duration::minutes(40);

#[derive(Clone)]
pub struct ApnsConfig {
    /// The `.p8` key's contents (PKCS#8 PEM).
    pub key_pem: String,
    /// The key's id (10 characters, from the developer account).
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// [`PRODUCTION`], [`DEVELOPMENT`], or a sandbox.
    pub endpoint: String,
    pub timeouts: Timeouts,
    pub max_per_second: Option<NonZeroU32>,
    pub concurrency: usize,
    /// When provider tokens are issued (`iat`) and renewed.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for ApnsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsConfig")
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("topic", &self.topic)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("apns: {0}")]
pub struct InvalidConfig(String);

impl From<KeyError> for InvalidConfig {
    fn from(e: KeyError) -> Self {
        InvalidConfig(format!("the signing key: {e}"))
    }
}

pub struct Apns {
    config: ApnsConfig,
    signer: Signer,
    client: reqwest::Client,
    /// The provider token and when it was signed.
    token: Mutex<Option<(String, DateTime<Utc>)>>,
}

impl Apns {
    pub fn new(config: ApnsConfig) -> Result<Self, InvalidConfig> {
        let signer = Signer::es256(&config.key_pem)?;
        if config.key_id.is_empty() || config.team_id.is_empty() || config.topic.is_empty() {
            return Err(InvalidConfig(
                "key_id, team_id and topic are required".into(),
            ));
        }
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .connect_timeout(config.timeouts.connect)
            .timeout(config.timeouts.request)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| InvalidConfig(format!("HTTP/2 client: {e}")))?;
        let apns = Self {
            config,
            signer,
            client,
            token: Mutex::new(None),
        };
        apns.provider_token()?;
        Ok(apns)
    }

    /// The cached provider token, signed anew when it is 40 minutes old.
    fn provider_token(&self) -> Result<String, KeyError> {
        let mut cached = self.token.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.config.clock.now();
        if let Some((token, at)) = cached.as_ref() {
            if now - *at < TOKEN_LIFETIME {
                return Ok(token.clone());
            }
        }
        let claims = serde_json::json!({
            "iss": self.config.team_id,
            "iat": now.timestamp(),
        });
        let token = self.signer.token(Some(&self.config.key_id), &claims)?;
        *cached = Some((token.clone(), now));
        Ok(token)
    }

    /// Forgets the token (Apple said it expired or is invalid): the next send signs anew.
    fn drop_token(&self) {
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The request body and headers for one send.
    pub fn request(&self, send: &Outgoing) -> Result<(String, Headers), String> {
        let apns_id = send.delivery_id.to_string();
        let collapse = send.message_id.to_string();
        let emergency = send.kind == MessageKind::Emergency;
        let options = NotificationOptions {
            apns_id: Some(&apns_id),
            apns_push_type: Some(PushType::Alert),
            apns_priority: Some(if emergency {
                Priority::High
            } else {
                Priority::Normal
            }),
            apns_topic: Some(&self.config.topic),
            apns_collapse_id: Some(CollapseId::new(&collapse).map_err(|e| e.to_string())?),
            apns_expiration: None,
        };
        let mut builder = DefaultNotificationBuilder::new()
            .set_body(&send.body)
            .set_sound("default");
        if !send.subject.is_empty() {
            builder = builder.set_title(&send.subject);
        }
        let mut payload = builder.build(&send.address, options);
        let ids = serde_json::json!({ "delivery_id": apns_id, "message_id": collapse });
        payload
            .add_custom_data("tidings", &ids)
            .map_err(|e| e.to_string())?;
        let body = payload.to_json_string().map_err(|e| e.to_string())?;
        let headers = vec![
            ("apns-id", apns_id.clone()),
            ("apns-push-type", "alert".to_owned()),
            (
                "apns-priority",
                if emergency { "10" } else { "5" }.to_owned(),
            ),
            ("apns-topic", self.config.topic.clone()),
            ("apns-collapse-id", collapse.clone()),
        ];
        Ok((body, headers))
    }

    async fn send_one(&self, send: &Outgoing) -> SendOutcome {
        let (body, headers) = match self.request(send) {
            Ok(request) => request,
            Err(e) => {
                return SendOutcome::Permanent {
                    error: format!("apns: the notification cannot be built: {e}"),
                }
            }
        };
        let token = match self.provider_token() {
            Ok(token) => token,
            Err(e) => return SendOutcome::transient(format!("apns: {e}")),
        };
        let url = format!(
            "{}/3/device/{}",
            self.config.endpoint.trim_end_matches('/'),
            send.address
        );
        let mut request = self
            .client
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let a = match http::answer("apns", request.send().await).await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        let apns_id = a
            .headers
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let outcome = classify(a.status, a.retry_after, apns_id, &a.text, send);
        if matches!(&outcome, SendOutcome::Transient { error, .. } if error.contains("ProviderToken"))
        {
            self.drop_token();
        }
        outcome
    }
}

/// Request headers: name and value.
pub type Headers = Vec<(&'static str, String)>;

#[derive(Deserialize)]
struct Reason {
    reason: String,
}

/// Classifies APNs' answer: 200 sent (by its `apns-id`); 410 `Unregistered` and 400
/// `BadDeviceToken`/`DeviceTokenNotForTopic` are the device's end (permanent); 403 about
/// our provider token or certificate, 429 and 5xx are retried; other 4xx refuse the
/// notification itself.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    apns_id: Option<String>,
    body: &str,
    send: &Outgoing,
) -> SendOutcome {
    if status.is_success() {
        return SendOutcome::Sent {
            provider_ref: apns_id.unwrap_or_else(|| send.delivery_id.to_string()),
        };
    }
    let reason = serde_json::from_str::<Reason>(body)
        .map(|r| r.reason)
        .unwrap_or_else(|_| http::excerpt(body, 120));
    let error = format!("apns {}: {reason}", status.as_u16());
    match (status.as_u16(), reason.as_str()) {
        (429 | 503, _) => SendOutcome::Throttled { error, retry_after },
        (500..=599, _) => SendOutcome::Transient { error, retry_after },
        (403, _) | (400, "MissingTopic" | "TopicDisallowed" | "BadTopic") => {
            SendOutcome::Transient {
                error: format!("{error} (account or configuration problem)"),
                retry_after: None,
            }
        }
        (410, _) => SendOutcome::Unreachable {
            error,
            fault: AddressFault::Gone,
        },
        (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => SendOutcome::Unreachable {
            error,
            fault: AddressFault::Invalid,
        },
        (400..=499, _) => SendOutcome::Permanent { error },
        _ => SendOutcome::InDoubt {
            error: format!("{error} (unexpected status)"),
        },
    }
}

crate::one_by_one!(Apns, "apns", max_per_second: |a| a.config.max_per_second, concurrency: |a| a.config.concurrency);

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::clock::ManualClock;

    fn claims(token: &str) -> serde_json::Value {
        crate::jwt::parse(token).expect("a compact JWT").claims
    }

    #[test]
    fn a_provider_token_is_kept_forty_minutes_and_then_signed_anew() {
        let start = tidings_core::time::now();
        let clock = Arc::new(ManualClock::at(start));
        let apns = Apns::new(ApnsConfig {
            key_pem: crate::webpush::VapidKey::generate_pem(),
            key_id: "ABC123DEFG".into(),
            team_id: "DEF123GHIJ".into(),
            topic: "org.example.tidings".into(),
            endpoint: DEVELOPMENT.into(),
            timeouts: crate::http::Timeouts::default(),
            max_per_second: None,
            concurrency: 1,
            clock: clock.clone(),
        })
        .unwrap();
        let first = apns.provider_token().unwrap();
        assert_eq!(claims(&first)["iat"], start.timestamp());
        assert_eq!(claims(&first)["iss"], "DEF123GHIJ");
        // Apple refuses a refresh sooner than 20 minutes: the same token until 40.
        clock.advance(chrono::Duration::minutes(39));
        assert_eq!(apns.provider_token().unwrap(), first);
        clock.advance(chrono::Duration::minutes(1));
        let second = apns.provider_token().unwrap();
        assert_ne!(second, first);
        assert_eq!(claims(&second)["iat"], clock.now().timestamp());
        // Apple said it is no good: the next send signs one at once.
        apns.drop_token();
        clock.advance(chrono::Duration::seconds(1));
        assert_eq!(
            claims(&apns.provider_token().unwrap())["iat"],
            clock.now().timestamp()
        );
    }
}
