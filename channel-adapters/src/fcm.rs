//! Push to Android (and iOS apps that use Firebase) through FCM's HTTP v1 API
//! (`POST /v1/projects/{project}/messages:send`), authenticated with an OAuth2 access
//! token exchanged for a JWT signed with the service account's key, cached until shortly
//! before it expires.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use tidings_core::clock::Clock;
use tidings_core::MessageKind;

use crate::http::{self, Timeouts};
use crate::jwt::Signer;
use crate::{AddressFault, Outgoing, SendOutcome};

pub const API_BASE: &str = "https://fcm.googleapis.com";
const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The fields of a Google service-account key file that matter here.
#[derive(Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key: String,
    /// Where access tokens are issued (`https://oauth2.googleapis.com/token`).
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("project_id", &self.project_id)
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct FcmConfig {
    pub account: ServiceAccount,
    /// [`API_BASE`], or a sandbox.
    pub api_base: String,
    pub timeouts: Timeouts,
    pub max_per_second: Option<NonZeroU32>,
    pub concurrency: usize,
    /// When token requests are issued (`iat`, `exp`) and access tokens run out.
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, thiserror::Error)]
#[error("fcm: {0}")]
pub struct InvalidConfig(String);

pub struct Fcm {
    config: FcmConfig,
    signer: Signer,
    client: reqwest::Client,
    /// The access token and when to stop using it; one refresh at a time.
    token: tokio::sync::Mutex<Option<(String, DateTime<Utc>)>>,
}

#[derive(Deserialize)]
struct AccessToken {
    access_token: String,
    expires_in: u64,
}

impl Fcm {
    pub fn new(config: FcmConfig) -> Result<Self, InvalidConfig> {
        let signer = Signer::rs256(&config.account.private_key)
            .map_err(|e| InvalidConfig(format!("the service account's private_key: {e}")))?;
        Ok(Self {
            client: http::client(config.timeouts),
            signer,
            config,
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// Parses a service-account key file.
    pub fn service_account(json: &str) -> Result<ServiceAccount, InvalidConfig> {
        serde_json::from_str(json)
            .map_err(|e| InvalidConfig(format!("not a service-account key file: {e}")))
    }

    /// A valid access token: the cached one, or a new one from the token endpoint.
    async fn access_token(&self) -> Result<String, SendOutcome> {
        let mut cached = self.token.lock().await;
        let at = self.config.clock.now();
        if let Some((token, until)) = cached.as_ref() {
            if at < *until {
                return Ok(token.clone());
            }
        }
        let now = at.timestamp();
        let account = &self.config.account;
        let claims = serde_json::json!({
            "iss": account.client_email,
            "scope": SCOPE,
            "aud": account.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = self
            .signer
            .token(None, &claims)
            .map_err(|e| SendOutcome::transient(format!("fcm: {e}")))?;
        let response = self
            .client
            .post(&account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", &assertion),
            ])
            .send()
            .await
            // Nothing was sent to any device yet: whatever happened, trying again is safe.
            .map_err(|e| SendOutcome::transient(format!("fcm: access token: {e}")))?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        let token: AccessToken = match serde_json::from_str(&body) {
            Ok(token) if status.is_success() => token,
            _ => {
                return Err(SendOutcome::transient(format!(
                    "fcm: access token refused ({}): {} (account or configuration problem)",
                    status.as_u16(),
                    http::excerpt(&body, 200)
                )))
            }
        };
        // Renewed a minute early, so that no request carries one that just expired; and
        // at least daily, whatever a token endpoint says (Google's last an hour).
        let lifetime = i64::try_from(token.expires_in.saturating_sub(60)).unwrap_or(i64::MAX);
        let until = at + chrono::Duration::seconds(lifetime.min(86_400));
        *cached = Some((token.access_token.clone(), until));
        Ok(token.access_token)
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// The request body for one send.
    pub fn body(send: &Outgoing) -> serde_json::Value {
        let emergency = send.kind == MessageKind::Emergency;
        serde_json::json!({
            "message": {
                "token": send.address,
                "notification": { "title": send.subject, "body": send.body },
                "data": {
                    "delivery_id": send.delivery_id.to_string(),
                    "message_id": send.message_id.to_string(),
                },
                "android": {
                    "priority": if emergency { "high" } else { "normal" },
                    "collapse_key": send.message_id.to_string(),
                },
                "apns": { "headers": { "apns-priority": if emergency { "10" } else { "5" } } },
            }
        })
    }

    async fn send_one(&self, send: &Outgoing) -> SendOutcome {
        let token = match self.access_token().await {
            Ok(token) => token,
            Err(outcome) => return outcome,
        };
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.config.api_base.trim_end_matches('/'),
            self.config.account.project_id
        );
        let sent = self
            .client
            .post(url)
            .bearer_auth(token)
            .json(&Self::body(send))
            .send()
            .await;
        let a = match http::answer("fcm", sent).await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        if a.status == reqwest::StatusCode::UNAUTHORIZED {
            self.forget_token().await;
        }
        classify(a.status, a.retry_after, &a.text, send)
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Sent {
    name: String,
}

/// Classifies FCM's answer by its `FcmError` code: `UNREGISTERED` (the app is gone) and
/// `INVALID_ARGUMENT` (a malformed token or message) and `SENDER_ID_MISMATCH` are
/// permanent; `QUOTA_EXCEEDED`, `UNAVAILABLE`, `INTERNAL` and 401 (a token to renew) are
/// retried.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    send: &Outgoing,
) -> SendOutcome {
    if status.is_success() {
        return SendOutcome::Sent {
            provider_ref: serde_json::from_str::<Sent>(body)
                .map(|s| s.name)
                .unwrap_or_else(|_| send.delivery_id.to_string()),
        };
    }
    let (code, message) = match serde_json::from_str::<ErrorBody>(body) {
        Ok(e) => {
            let fcm_code = e
                .error
                .details
                .iter()
                .find_map(|d| d.get("errorCode").and_then(|c| c.as_str()))
                .map(str::to_owned);
            (fcm_code.unwrap_or(e.error.status), e.error.message)
        }
        Err(_) => (String::new(), http::excerpt(body, 200)),
    };
    let error = format!("fcm {} {code}: {message}", status.as_u16());
    match (status.as_u16(), code.as_str()) {
        (429 | 503, _) | (_, "QUOTA_EXCEEDED" | "UNAVAILABLE") => {
            SendOutcome::Throttled { error, retry_after }
        }
        (500..=599, _) | (_, "INTERNAL") => SendOutcome::Transient { error, retry_after },
        (401, _) | (_, "THIRD_PARTY_AUTH_ERROR") => SendOutcome::Transient {
            error: format!("{error} (account or configuration problem)"),
            retry_after: None,
        },
        (_, "UNREGISTERED") => SendOutcome::Unreachable {
            error,
            fault: AddressFault::Gone,
        },
        (400..=499, _) => SendOutcome::Permanent { error },
        _ => SendOutcome::InDoubt {
            error: format!("{error} (unexpected status)"),
        },
    }
}

crate::one_by_one!(Fcm, "fcm", max_per_second: |a| a.config.max_per_second, concurrency: |a| a.config.concurrency);
