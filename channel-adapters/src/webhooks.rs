//! Signature schemes of email providers' event webhooks, for the provider sandbox that
//! sends such events and the callbacks that check them.
//!
//! - SendGrid's signed Event Webhook: ECDSA P-256 with SHA-256 over the timestamp header
//!   followed by the raw body; the signature (ASN.1 DER, base64) is in
//!   `X-Twilio-Email-Event-Webhook-Signature`, the timestamp in
//!   `X-Twilio-Email-Event-Webhook-Timestamp`; the receiver holds the public key (base64
//!   SubjectPublicKeyInfo) from the SendGrid console.
//! - Mailgun: HMAC-SHA256, keyed with the webhook signing key, over the timestamp
//!   followed by the token, hex, all three in the body's `signature` object.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};

pub const SENDGRID_SIGNATURE: &str = "X-Twilio-Email-Event-Webhook-Signature";
pub const SENDGRID_TIMESTAMP: &str = "X-Twilio-Email-Event-Webhook-Timestamp";

/// The DER prefix of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A SendGrid-style signing key (the sandbox's; SendGrid keeps the real one).
pub struct SendgridKey(EcdsaKeyPair);

impl SendgridKey {
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
pub fn sendgrid_verifies(
    public_key: &str,
    timestamp: &str,
    body: &[u8],
    signature_b64: &str,
) -> bool {
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

/// Mailgun's signature of a webhook: hex HMAC-SHA256 of `timestamp` + `token`.
pub fn mailgun_signature(signing_key: &str, timestamp: &str, token: &str) -> String {
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
pub fn mailgun_verifies(
    signing_key: &str,
    timestamp: &str,
    token: &str,
    signature_hex: &str,
) -> bool {
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

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sendgrid_signature_verifies_only_for_its_key_timestamp_and_body() {
        let key = SendgridKey::generate();
        let body = br#"[{"event":"delivered","email":"pat@example.org"}]"#;
        let signature = key.sign("1700000000", body);
        let public = key.public_key();
        assert!(sendgrid_verifies(&public, "1700000000", body, &signature));
        assert!(!sendgrid_verifies(&public, "1700000001", body, &signature));
        assert!(!sendgrid_verifies(&public, "1700000000", b"[]", &signature));
        let other = SendgridKey::generate().public_key();
        assert!(!sendgrid_verifies(&other, "1700000000", body, &signature));
        assert!(!sendgrid_verifies(
            "not base64!",
            "1700000000",
            body,
            &signature
        ));
        assert!(!sendgrid_verifies(&public, "1700000000", body, "AAAA"));
    }

    #[test]
    fn a_mailgun_signature_verifies_only_for_its_key_timestamp_and_token() {
        let signature = mailgun_signature("key-secret", "1529006854", "a8ce0edb2dd8301dee6c");
        assert_eq!(signature.len(), 64);
        assert!(mailgun_verifies(
            "key-secret",
            "1529006854",
            "a8ce0edb2dd8301dee6c",
            &signature
        ));
        assert!(!mailgun_verifies(
            "key-other",
            "1529006854",
            "a8ce0edb2dd8301dee6c",
            &signature
        ));
        assert!(!mailgun_verifies(
            "key-secret",
            "1529006855",
            "a8ce0edb2dd8301dee6c",
            &signature
        ));
        assert!(!mailgun_verifies(
            "key-secret",
            "1529006854",
            "a8ce0edb2dd8301dee6c",
            "zz"
        ));
        assert!(!mailgun_verifies(
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
            mailgun_signature("Jefe", "what do ya want ", "for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
