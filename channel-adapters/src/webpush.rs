//! Web Push (RFC 8030) to the guardian app in a browser: each subscription names its push
//! service's endpoint; the payload is encrypted for the browser alone (RFC 8291,
//! `aes128gcm`, pure-Rust crypto from `web-push-native`) and the request is signed with
//! the install's VAPID key (RFC 8292), so no account with any push service is needed.
//!
//! Push services are many (Google's, Mozilla's, Apple's, Microsoft's), so a send's
//! provider is its endpoint's origin: the dispatcher keeps a circuit breaker and sends in
//! flight per origin, and the configured rate applies to each origin. Only origins in
//! `allowed_origins` are ever called: a subscription is what a browser (or whoever holds
//! a guardian session) says it is, and must not make the server POST anywhere it likes.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tidings_core::clock::Clock;
use tidings_core::{MessageKind, WebPushSubscription};
use web_push_native::p256;

use crate::http::{self, Timeouts};
use crate::jwt::{KeyError, Signer};
use crate::{AddressFault, Outgoing, SendOutcome};

/// The push services of the browsers guardians use.
pub const KNOWN_PUSH_SERVICES: &[&str] = &[
    "https://fcm.googleapis.com",
    "https://updates.push.services.mozilla.com",
    "https://web.push.apple.com",
    "https://*.notify.windows.com",
];

/// How long a push service keeps a notification for a browser that is offline: a day
/// for emergencies (stale after that), four weeks for the rest.
pub const EMERGENCY_TTL: Duration = Duration::from_secs(24 * 3600);
pub const TTL: Duration = Duration::from_secs(28 * 24 * 3600);

/// The most an encrypted Web Push body may be (RFC 8030 §7.2 lets a push service refuse
/// more than 4096 bytes), less the `aes128gcm` header (86) and the record's padding
/// delimiter and tag (17): what a payload's JSON may take.
pub const MAX_PAYLOAD: usize = 4096 - 86 - 17;

/// The install's VAPID key: a P-256 key kept as PKCS#8 PEM, like APNs' `.p8` files.
pub struct VapidKey {
    signer: Signer,
    public: Vec<u8>,
}

impl VapidKey {
    /// A new key, as the PKCS#8 PEM to keep.
    pub fn generate_pem() -> String {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let der = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .expect("the system's random source works");
        let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    }

    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let public = crate::jwt::es256_public_point(pem)?;
        Ok(Self {
            signer: Signer::es256(pem)?,
            public,
        })
    }

    /// The public key browsers subscribe with (`applicationServerKey`): the uncompressed
    /// point in URL-safe base64, as the app and the `k` parameter carry it.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(&self.public)
    }

    /// A short fingerprint of the public key, to check that every process of an install
    /// pushes with the same key.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest as _;
        sha2::Sha256::digest(&self.public)
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The `Authorization` header for a request to `origin` (RFC 8292 §3): a JWT for the
    /// origin, valid 12 hours, naming who to contact about the sends.
    pub fn authorization(
        &self,
        origin: &str,
        subject: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<String, KeyError> {
        let claims = serde_json::json!({
            "aud": origin,
            "exp": now.timestamp() + 12 * 3600,
            "sub": subject,
        });
        let token = self.signer.token(None, &claims)?;
        Ok(format!("vapid t={token}, k={}", self.public_key()))
    }
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VapidKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct WebPushConfig {
    pub key: Arc<VapidKey>,
    /// Who push services contact about these sends: `mailto:` an address, or an https
    /// URL (the install's public address).
    pub subject: String,
    /// The push services that may be called, as origins (`https://host[:port]`); a
    /// leading `*.` in the host allows its subdomains.
    pub allowed_origins: Vec<String>,
    /// The public address of the guardian app, for the link a notification opens.
    pub app_url: Option<String>,
    pub timeouts: Timeouts,
    /// Sends a second to each push service (all dispatchers together).
    pub max_per_second: Option<NonZeroU32>,
    pub concurrency: usize,
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, thiserror::Error)]
#[error("web push: {0}")]
pub struct InvalidConfig(String);

pub struct WebPush {
    config: WebPushConfig,
    /// Each allowed origin with its provider name (`webpush:HOST`), in config order.
    origins: Vec<(String, String)>,
    client: reqwest::Client,
}

impl WebPush {
    pub fn new(config: WebPushConfig) -> Result<Self, InvalidConfig> {
        if !(config.subject.starts_with("mailto:") || config.subject.starts_with("https://")) {
            return Err(InvalidConfig(format!(
                "subject {:?} is neither mailto:ADDRESS nor an https:// URL (RFC 8292)",
                config.subject
            )));
        }
        let mut origins = Vec::new();
        for origin in &config.allowed_origins {
            let origin = origin.trim_end_matches('/');
            let host = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .filter(|host| !host.is_empty() && !host.contains('/'));
            let Some(host) = host else {
                return Err(InvalidConfig(format!(
                    "allowed origin {origin:?} is not scheme://host[:port]"
                )));
            };
            origins.push((origin.to_owned(), format!("webpush:{host}")));
        }
        Ok(Self {
            origins,
            client: http::client(config.timeouts),
            config,
        })
    }

    pub fn public_key(&self) -> String {
        self.config.key.public_key()
    }

    /// The allowed origin a subscription's endpoint is at, and its provider name
    /// (`webpush:HOST`, with `*.` for a wildcard).
    pub fn allowed_origin(&self, origin: &str) -> Option<(&str, &str)> {
        self.origins
            .iter()
            .find(|(allowed, _)| origin_matches(allowed, origin))
            .map(|(allowed, name)| (allowed.as_str(), name.as_str()))
    }

    /// The provider a device token goes to: its push service, as allowed.
    pub fn provider_of(&self, token: &str) -> &str {
        WebPushSubscription::origin_of_token(token)
            .and_then(|origin| self.allowed_origin(origin).map(|(_, name)| name))
            .unwrap_or("webpush")
    }

    /// The JSON the app's service worker receives: what to show and which message it
    /// opens. A body too long for one push is cut (the app shows it whole).
    pub fn payload(&self, send: &Outgoing) -> Vec<u8> {
        let url = format!(
            "{}/app/messages/{}",
            self.config
                .app_url
                .as_deref()
                .unwrap_or("")
                .trim_end_matches('/'),
            send.message_id
        );
        let mut payload = serde_json::json!({
            "message_id": send.message_id.to_string(),
            "delivery_id": send.delivery_id.to_string(),
            "kind": send.kind.as_str(),
            "emergency": send.kind == MessageKind::Emergency,
            "lang": send.language,
            "title": send.subject,
            "body": send.body,
            "url": url,
            "requires_ack": send.ack.is_some(),
        });
        let mut bytes = payload.to_string().into_bytes();
        if bytes.len() > MAX_PAYLOAD {
            let over = bytes.len() - MAX_PAYLOAD;
            // Cut at a character boundary, with room for the ellipsis and JSON escapes.
            let mut keep = send.body.len().saturating_sub(over + 64);
            while !send.body.is_char_boundary(keep) {
                keep -= 1;
            }
            payload["body"] = format!("{}…", &send.body[..keep]).into();
            payload["truncated"] = true.into();
            bytes = payload.to_string().into_bytes();
        }
        bytes
    }

    /// `max_per_second` for each allowed push service, by its provider name: the
    /// dispatchers share each among them.
    pub fn rate_limits(&self) -> Vec<(String, NonZeroU32)> {
        self.config
            .max_per_second
            .map(|rate| {
                self.origins
                    .iter()
                    .map(|(_, name)| (name.clone(), rate))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn send_one(&self, send: &Outgoing) -> SendOutcome {
        let subscription = match WebPushSubscription::parse_token(&send.address) {
            Ok(s) => s,
            Err(e) => {
                return SendOutcome::Unreachable {
                    error: format!("webpush: {e}"),
                    fault: AddressFault::Invalid,
                }
            }
        };
        let origin = subscription.origin();
        let Some(_) = self.allowed_origin(&origin) else {
            return SendOutcome::Unreachable {
                error: format!(
                    "webpush: the push service {origin} is not among web_push.allowed_origins"
                ),
                fault: AddressFault::Invalid,
            };
        };
        let (Ok(p256dh), Ok(auth)) = (
            URL_SAFE_NO_PAD.decode(&subscription.p256dh),
            URL_SAFE_NO_PAD.decode(&subscription.auth),
        ) else {
            unreachable!("a parsed subscription's keys are base64");
        };
        let Ok(browser_key) = p256::PublicKey::from_sec1_bytes(&p256dh) else {
            return SendOutcome::Unreachable {
                error: "webpush: keys.p256dh is not a point on P-256".into(),
                fault: AddressFault::Invalid,
            };
        };
        let auth = web_push_native::Auth::clone_from_slice(&auth);
        let body = match web_push_native::encrypt(self.payload(send), &browser_key, &auth) {
            Ok(body) => body,
            Err(e) => {
                return SendOutcome::Permanent {
                    error: format!("webpush: cannot encrypt the payload: {e}"),
                }
            }
        };
        let authorization = match self.config.key.authorization(
            &origin,
            &self.config.subject,
            self.config.clock.now(),
        ) {
            Ok(value) => value,
            Err(e) => return SendOutcome::transient(format!("webpush: {e}")),
        };
        let emergency = send.kind == MessageKind::Emergency;
        let ttl = if emergency { EMERGENCY_TTL } else { TTL };
        let sent = self
            .client
            .post(subscription.endpoint.clone())
            .header("TTL", ttl.as_secs())
            .header("Urgency", if emergency { "high" } else { "normal" })
            // A later send of the same message (a renotify) replaces one still waiting.
            .header("Topic", send.message_id.as_uuid().simple().to_string())
            .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::AUTHORIZATION, authorization)
            .body(body)
            .send()
            .await;
        match http::answer("webpush", sent).await {
            Ok(a) => classify(a.status, a.retry_after, &a.headers, &a.text, send),
            Err(outcome) => outcome,
        }
    }
}

/// Whether `origin` is the allowed one, or one of its subdomains when it reads
/// `scheme://*.host`.
fn origin_matches(allowed: &str, origin: &str) -> bool {
    match allowed.split_once("://*.") {
        Some((scheme, domain)) => origin
            .strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .is_some_and(|host| {
                host.strip_suffix(domain)
                    .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1)
            }),
        None => allowed.eq_ignore_ascii_case(origin),
    }
}

/// Classifies a push service's answer (RFC 8030 §5, §8.3): 201 accepted (its
/// `Location` names the message); 404 and 410 mean the subscription is gone; 413 a
/// payload too large; 429 to slow down; 401 and 403 a VAPID signature refused — the
/// install's key or subject, not the guardian's subscription, so retried, and the
/// breaker opens if it goes on.
pub fn classify(
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    headers: &reqwest::header::HeaderMap,
    body: &str,
    send: &Outgoing,
) -> SendOutcome {
    let error = || format!("webpush {}: {}", status.as_u16(), http::excerpt(body, 200));
    match status.as_u16() {
        200..=299 => SendOutcome::Sent {
            provider_ref: headers
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned)
                .unwrap_or_else(|| send.delivery_id.to_string()),
        },
        404 | 410 => SendOutcome::Unreachable {
            error: error(),
            fault: AddressFault::Gone,
        },
        429 | 503 => SendOutcome::Throttled {
            error: error(),
            retry_after,
        },
        401 | 403 => SendOutcome::Transient {
            error: format!("{} (VAPID key or subject refused: configuration)", error()),
            retry_after: None,
        },
        500..=599 => SendOutcome::Transient {
            error: error(),
            retry_after,
        },
        400..=499 => SendOutcome::Permanent { error: error() },
        _ => SendOutcome::InDoubt {
            error: format!("{} (unexpected status)", error()),
        },
    }
}

crate::one_by_one!(WebPush, "webpush", max_per_second: |a| { let _ = a; None }, concurrency: |a| a.config.concurrency);

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8291 Appendix A: the browser's keys and the encrypted message the
    /// application server sent. Decrypting it with the browser's private key gives the
    /// plaintext back: the key derivation and content coding are the RFC's.
    #[test]
    fn the_rfc_8291_example_decrypts_to_its_plaintext() {
        let ua_private = URL_SAFE_NO_PAD
            .decode("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")
            .unwrap();
        let auth = URL_SAFE_NO_PAD.decode("BTBZMqHH6r4Tts7J_aSIgg").unwrap();
        let body = URL_SAFE_NO_PAD
            .decode(concat!(
                "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml",
                "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT",
                "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN",
            ))
            .unwrap();
        let key = p256::SecretKey::from_slice(&ua_private).unwrap();
        let plain =
            web_push_native::decrypt(body, &key, &web_push_native::Auth::clone_from_slice(&auth))
                .unwrap();
        assert_eq!(plain, b"When I grow up, I want to be a watermelon");
        // The browser's public key the RFC lists is this private key's.
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        assert_eq!(
            URL_SAFE_NO_PAD.encode(key.public_key().to_encoded_point(false).as_bytes()),
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
        );
    }

    #[test]
    fn origins_match_exactly_or_as_subdomains_of_a_wildcard() {
        assert!(origin_matches(
            "https://fcm.googleapis.com",
            "https://fcm.googleapis.com"
        ));
        assert!(!origin_matches(
            "https://fcm.googleapis.com",
            "https://fcm.googleapis.com.evil.net"
        ));
        assert!(!origin_matches(
            "https://fcm.googleapis.com",
            "http://fcm.googleapis.com"
        ));
        assert!(origin_matches(
            "https://*.notify.windows.com",
            "https://wns2-par02p.notify.windows.com"
        ));
        assert!(!origin_matches(
            "https://*.notify.windows.com",
            "https://notify.windows.com"
        ));
        assert!(!origin_matches(
            "https://*.notify.windows.com",
            "https://evilnotify.windows.com"
        ));
        assert!(!origin_matches(
            "https://*.notify.windows.com",
            "http://a.notify.windows.com"
        ));
    }

    #[test]
    fn vapid_authorization_is_a_jwt_for_the_origin_signed_by_the_key_it_names() {
        let key = VapidKey::from_pem(&VapidKey::generate_pem()).unwrap();
        let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let header = key
            .authorization(
                "https://push.example.net",
                "mailto:it@district.example",
                now,
            )
            .unwrap();
        let (t, k) = header
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split_once(", k="))
            .unwrap();
        assert_eq!(k, key.public_key());
        let parsed = crate::jwt::parse(t).unwrap();
        assert_eq!(parsed.header["alg"], "ES256");
        assert_eq!(parsed.claims["aud"], "https://push.example.net");
        assert_eq!(parsed.claims["sub"], "mailto:it@district.example");
        assert_eq!(parsed.claims["exp"], 1_800_000_000 + 12 * 3600);
        let point = URL_SAFE_NO_PAD.decode(k).unwrap();
        assert!(crate::jwt::es256_verifies(&parsed, &point));
        let other = VapidKey::from_pem(&VapidKey::generate_pem()).unwrap();
        assert!(!crate::jwt::es256_verifies(
            &parsed,
            &URL_SAFE_NO_PAD.decode(other.public_key()).unwrap()
        ));
    }
}
