//! SendGrid, as Tidings hears from it: the signed Event Webhook (ECDSA P-256 with SHA-256
//! over the timestamp header followed by the raw body; the signature, ASN.1 DER in base64,
//! in `X-Twilio-Email-Event-Webhook-Signature`, the timestamp in
//! `X-Twilio-Email-Event-Webhook-Timestamp`; the receiver holds the public key, base64
//! SubjectPublicKeyInfo, from the SendGrid console) and its event names. Email itself goes
//! out through the SMTP relay ([`crate::smtp`]).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use tidings_core::DeliveryEvent;

use crate::reports::{delivery_id, unreadable, Report, Unreadable};

pub const SIGNATURE_HEADER: &str = "X-Twilio-Email-Event-Webhook-Signature";
pub const TIMESTAMP_HEADER: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A SendGrid-style Event Webhook signing key (the sandbox's; SendGrid keeps the real one).
pub struct SigningKey(EcdsaKeyPair);

impl SigningKey {
    /// A fresh key.
    pub fn generate() -> Self {
        let rng = SystemRandom::new();
        let alg = &signature::ECDSA_P256_SHA256_ASN1_SIGNING;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key generation");
        Self(EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("a key just generated"))
    }

    /// The verification key as the SendGrid console shows it: base64 of its
    /// SubjectPublicKeyInfo.
    pub fn public_key(&self) -> String {
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(self.0.public_key().as_ref());
        STANDARD.encode(spki)
    }

    /// The signature header's value for `body` sent at `timestamp`.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let signature = self
            .0
            .sign(&SystemRandom::new(), &signed)
            .expect("ECDSA signing with a valid key");
        STANDARD.encode(signature.as_ref())
    }
}

/// Whether a SendGrid event webhook is signed by the holder of `public_key` (base64 SPKI).
pub fn verifies(public_key: &str, timestamp: &str, body: &[u8], signature_b64: &str) -> bool {
    let (Ok(spki), Ok(signature)) = (
        STANDARD.decode(public_key.trim()),
        STANDARD.decode(signature_b64.trim()),
    ) else {
        return false;
    };
    let Some(point) = spki.strip_prefix(&P256_SPKI_PREFIX[..]) else {
        return false;
    };
    let mut signed = timestamp.as_bytes().to_vec();
    signed.extend_from_slice(body);
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, point)
        .verify(&signed, &signature)
        .is_ok()
}

/// SendGrid's event names as delivery events and effects.
pub fn event(event: &serde_json::Value) -> (Option<DeliveryEvent>, Option<&'static str>) {
    match event["event"].as_str().unwrap_or_default() {
        "delivered" => (Some(DeliveryEvent::Delivered), None),
        "bounce" if event["type"] == "blocked" => (Some(DeliveryEvent::Failed), None),
        "bounce" => (Some(DeliveryEvent::Failed), Some("bounced")),
        "dropped" => (Some(DeliveryEvent::Failed), None),
        "spamreport" => (None, Some("complaint")),
        _ => (None, None),
    }
}

/// An event webhook's body: a JSON array of events, each naming our message by its
/// `smtp-id` and itself by `sg_event_id`.
pub fn events(body: &[u8]) -> Result<Vec<Report>, Unreadable> {
    let events: Vec<serde_json::Value> = serde_json::from_slice(body)
        .map_err(|e| unreadable(format!("not a JSON array of events: {e}")))?;
    events
        .into_iter()
        .map(|data| {
            let reference = data["smtp-id"].as_str().map(str::to_owned);
            let delivery = reference
                .as_deref()
                .and_then(delivery_id)
                .ok_or_else(|| unreadable("an event names no message of ours (smtp-id)"))?;
            let event_id = data["sg_event_id"]
                .as_str()
                .ok_or_else(|| unreadable("an event has no sg_event_id"))?
                .to_owned();
            let (what, effect) = event(&data);
            let detail = data["reason"]
                .as_str()
                .or(data["response"].as_str())
                .map(str::to_owned);
            Ok(Report {
                event_id,
                event: tidings_core::services::provider_events::ProviderEvent {
                    delivery_id: delivery,
                    event: what,
                    detail,
                    effect: effect.map(str::to_owned),
                    raw: data,
                },
                reference,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_sendgrid_signature_verifies_only_for_its_key_timestamp_and_body() {
        let key = SigningKey::generate();
        let body = br#"[{"event":"delivered","email":"pat@example.org"}]"#;
        let signature = key.sign("1700000000", body);
        let public = key.public_key();
        assert!(verifies(&public, "1700000000", body, &signature));
        assert!(!verifies(&public, "1700000001", body, &signature));
        assert!(!verifies(&public, "1700000000", b"[]", &signature));
        let other = SigningKey::generate().public_key();
        assert!(!verifies(&other, "1700000000", body, &signature));
        assert!(!verifies("not base64!", "1700000000", body, &signature));
        assert!(!verifies(&public, "1700000000", body, "AAAA"));
    }

    #[test]
    fn its_event_names_map_to_delivery_events_and_effects() {
        assert_eq!(
            event(&json!({"event": "delivered"})),
            (Some(DeliveryEvent::Delivered), None)
        );
        assert_eq!(
            event(&json!({"event": "bounce", "type": "bounce"})),
            (Some(DeliveryEvent::Failed), Some("bounced"))
        );
        assert_eq!(
            event(&json!({"event": "bounce", "type": "blocked"})),
            (Some(DeliveryEvent::Failed), None)
        );
        assert_eq!(
            event(&json!({"event": "spamreport"})),
            (None, Some("complaint"))
        );
        assert_eq!(event(&json!({"event": "open"})), (None, None));
    }
}
