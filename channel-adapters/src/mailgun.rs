//! Mailgun, as Tidings hears from it: webhook signatures (HMAC-SHA256, keyed with the
//! webhook signing key, over the timestamp followed by the token, hex; all three in the
//! body's `signature` object) and its event names. Email itself goes out through the
//! SMTP relay ([`crate::smtp`]).

use hmac::{Hmac, Mac as _};
use tidings_core::DeliveryEvent;

use crate::reports::{delivery_id, unreadable, Report, Unreadable};

/// Mailgun's signature of a webhook: hex HMAC-SHA256 of `timestamp` + `token`.
pub fn signature(signing_key: &str, timestamp: &str, token: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(signing_key.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether a Mailgun webhook's `signature` object is genuine (compared in constant time).
pub fn verifies(signing_key: &str, timestamp: &str, token: &str, signature_hex: &str) -> bool {
    let Some(given) = decode_hex(signature_hex) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(signing_key.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(token.as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// A digest of a webhook's event (hex SHA-256): what a Mailgun token is remembered with,
/// so that the same event again is told apart from another event under a reused token.
pub fn event_digest(event: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(event)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Mailgun's event names as delivery events and effects.
pub fn event(data: &serde_json::Value) -> (Option<DeliveryEvent>, Option<&'static str>) {
    match (
        data["event"].as_str().unwrap_or_default(),
        data["severity"].as_str(),
    ) {
        ("delivered", _) => (Some(DeliveryEvent::Delivered), None),
        ("failed", Some("permanent")) => (Some(DeliveryEvent::Failed), Some("bounced")),
        ("complained", _) => (None, Some("complaint")),
        _ => (None, None),
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A webhook's event (its `event-data`), with the digest it is remembered by.
pub fn webhook_event(payload: &serde_json::Value) -> Result<(Report, String), Unreadable> {
    let data = payload["event-data"].clone();
    let reference = data["message"]["headers"]["message-id"]
        .as_str()
        .map(str::to_owned);
    let delivery = reference
        .as_deref()
        .and_then(delivery_id)
        .ok_or_else(|| unreadable("the event names no message of ours"))?;
    let event_id = data["id"]
        .as_str()
        .ok_or_else(|| unreadable("the event has no id"))?
        .to_owned();
    let (what, effect) = event(&data);
    let detail = data["delivery-status"]["message"]
        .as_str()
        .map(str::to_owned);
    let digest = event_digest(data.to_string().as_bytes());
    let report = Report {
        event_id,
        event: tidings_core::services::provider_events::ProviderEvent {
            delivery_id: delivery,
            event: what,
            detail,
            effect: effect.map(str::to_owned),
            raw: data,
        },
        reference,
    };
    Ok((report, digest))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_mailgun_signature_verifies_only_for_its_key_timestamp_and_token() {
        let signature = signature("key-secret", "1529006854", "a8ce0edb2dd8301dee6c");
        assert_eq!(signature.len(), 64);
        assert!(verifies(
            "key-secret",
            "1529006854",
            "a8ce0edb2dd8301dee6c",
            &signature
        ));
        assert!(!verifies(
            "key-other",
            "1529006854",
            "a8ce0edb2dd8301dee6c",
            &signature
        ));
        assert!(!verifies(
            "key-secret",
            "1529006855",
            "a8ce0edb2dd8301dee6c",
            &signature
        ));
        assert!(!verifies(
            "key-secret",
            "1529006854",
            "a8ce0edb2dd8301dee6c",
            "zz"
        ));
        assert!(!verifies(
            "key-secret",
            "1529006854",
            "a8ce0edb2dd8301dee6c",
            &signature[1..]
        ));
    }

    /// HMAC-SHA256 test case 2 of RFC 4231 ("Jefe", "what do ya want for nothing?"), split
    /// as Mailgun splits its input: the scheme is plain HMAC-SHA256 over the concatenation.
    #[test]
    fn mailgun_signatures_are_standard_hmac_sha256() {
        assert_eq!(
            signature("Jefe", "what do ya want ", "for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn its_event_names_map_to_delivery_events_and_effects() {
        assert_eq!(
            event(&json!({"event": "delivered"})),
            (Some(DeliveryEvent::Delivered), None)
        );
        assert_eq!(
            event(&json!({"event": "failed", "severity": "permanent"})),
            (Some(DeliveryEvent::Failed), Some("bounced"))
        );
        assert_eq!(
            event(&json!({"event": "failed", "severity": "temporary"})),
            (None, None)
        );
        assert_eq!(
            event(&json!({"event": "complained"})),
            (None, Some("complaint"))
        );
    }
}
