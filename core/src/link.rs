//! Signed links guardians follow from an SMS or an email: `/a/{token}` to acknowledge a
//! message, `/u/{token}` to stop email. The token names the recipient (one guardian's
//! receipt of one message), the channel the link was sent over, what it is for and when it
//! expires, signed with HMAC-SHA-256 under one of the district's link keys.
//!
//! A token is 34 bytes, 46 characters of URL-safe base64, short enough for an SMS:
//!
//! ```text
//! key id (1) | purpose << 4 | channel (1) | recipient (16) | expiry, Unix seconds (4) | MAC (12)
//! ```
//!
//! Keys rotate: the newest key signs, every key listed verifies, so links already sent stay
//! good until their own expiry while a new key takes over. The MAC is compared in constant
//! time (`hmac`'s `verify_truncated_left`); 96 bits of it are far more than an attacker
//! guessing online can try.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::{Channel, RecipientId};

type HmacSha256 = Hmac<Sha256>;

const SIGNED_LEN: usize = 22;
const MAC_LEN: usize = 12;
const TOKEN_LEN: usize = SIGNED_LEN + MAC_LEN;
/// Separates these MACs from any other use of the same key.
const CONTEXT: &[u8] = b"tidings link v1\0";

/// What a link does when followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPurpose {
    Acknowledge,
    Unsubscribe,
}

impl LinkPurpose {
    fn code(self) -> u8 {
        match self {
            Self::Acknowledge => 1,
            Self::Unsubscribe => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Self::Acknowledge),
            2 => Some(Self::Unsubscribe),
            _ => None,
        }
    }
}

/// What a valid token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkClaims {
    pub purpose: LinkPurpose,
    pub recipient: RecipientId,
    /// The channel the link was sent over: an acknowledgment moves that delivery.
    pub channel: Channel,
    pub expires: DateTime<Utc>,
}

/// Why a token was not accepted. Guardians see a page for each, never a stack trace.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("not a link token")]
    Malformed,
    #[error("signed with a key that is no longer kept")]
    UnknownKey,
    #[error("the signature does not match")]
    Forged,
    /// Genuine, but past its expiry.
    #[error("expired")]
    Expired(LinkClaims),
}

/// A link-keys file or value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkKeyError {
    #[error("line {line}: expected `<key id 1-255>:<32 bytes, URL-safe base64>`")]
    BadLine { line: usize },
    #[error("key id {0} is listed twice")]
    Duplicate(u8),
    #[error("no keys")]
    Empty,
    #[error("all 255 key ids are used: remove retired keys before rotating")]
    Exhausted,
}

/// The keys links are signed and checked with. The highest id signs.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkKeys {
    /// Sorted by id.
    keys: Vec<(u8, [u8; 32])>,
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u8> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("LinkKeys").field("ids", &ids).finish()
    }
}

impl LinkKeys {
    /// One fresh random key, id 1.
    pub fn generate() -> Self {
        Self {
            keys: vec![(1, random_key())],
        }
    }

    /// Reads the keys file format: one `id:key` per line, `#` comments and blank lines
    /// ignored.
    pub fn parse(text: &str) -> Result<Self, LinkKeyError> {
        let mut keys: Vec<(u8, [u8; 32])> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = LinkKeyError::BadLine { line: index + 1 };
            let (id, key) = line.split_once(':').ok_or(bad.clone())?;
            let id: u8 = id.trim().parse().map_err(|_| bad.clone())?;
            let key: [u8; 32] = URL_SAFE_NO_PAD
                .decode(key.trim())
                .ok()
                .and_then(|k| k.try_into().ok())
                .ok_or(bad.clone())?;
            if id == 0 {
                return Err(bad);
            }
            if keys.iter().any(|(seen, _)| *seen == id) {
                return Err(LinkKeyError::Duplicate(id));
            }
            keys.push((id, key));
        }
        if keys.is_empty() {
            return Err(LinkKeyError::Empty);
        }
        keys.sort_by_key(|(id, _)| *id);
        Ok(Self { keys })
    }

    /// These keys and a new one that signs from now on; the old ones still verify.
    pub fn rotated(&self) -> Result<Self, LinkKeyError> {
        let newest = self.signing().0;
        let id = newest.checked_add(1).ok_or(LinkKeyError::Exhausted)?;
        let mut keys = self.keys.clone();
        keys.push((id, random_key()));
        Ok(Self { keys })
    }

    /// The keys file format, newest key first.
    pub fn to_file_text(&self) -> String {
        let mut text = String::from(
            "# Tidings link keys: the first (highest id) signs acknowledgment and unsubscribe\n\
             # links, every one listed verifies them. Keep this file secret and the same on\n\
             # every Tidings process. Rotate with `tidings link-keys rotate`.\n",
        );
        for (id, key) in self.keys.iter().rev() {
            text.push_str(&format!("{id}:{}\n", URL_SAFE_NO_PAD.encode(key)));
        }
        text
    }

    /// Per key id, a fingerprint (a SHA-256 prefix) that tells whether two processes hold
    /// the same key without revealing it.
    pub fn fingerprints(&self) -> Vec<(u8, String)> {
        self.keys
            .iter()
            .map(|(id, key)| {
                let digest = Sha256::new()
                    .chain_update(b"tidings link key fingerprint\0")
                    .chain_update(key)
                    .finalize();
                (*id, URL_SAFE_NO_PAD.encode(&digest[..12]))
            })
            .collect()
    }

    fn signing(&self) -> &(u8, [u8; 32]) {
        self.keys.last().expect("LinkKeys holds at least one key")
    }

    /// The newest key and its id: what new secrets are sealed under (`crate::sealed`).
    pub(crate) fn newest(&self) -> (u8, &[u8; 32]) {
        let (id, key) = self.signing();
        (*id, key)
    }

    /// The key of id `id`, while it is kept.
    pub(crate) fn key(&self, id: u8) -> Option<&[u8; 32]> {
        self.keys.iter().find(|(k, _)| *k == id).map(|(_, key)| key)
    }

    /// A token for `claims`, signed with the newest key.
    pub fn sign(&self, claims: &LinkClaims) -> String {
        let (id, key) = self.signing();
        let mut token = [0u8; TOKEN_LEN];
        token[0] = *id;
        token[1] = claims.purpose.code() << 4 | channel_code(claims.channel);
        token[2..18].copy_from_slice(claims.recipient.as_uuid().as_bytes());
        let expires = u32::try_from(claims.expires.timestamp().max(0)).unwrap_or(u32::MAX);
        token[18..22].copy_from_slice(&expires.to_be_bytes());
        let mac = mac(key, &token[..SIGNED_LEN]).finalize().into_bytes();
        token[SIGNED_LEN..].copy_from_slice(&mac[..MAC_LEN]);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The claims of a genuine token, checked against `now`.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<LinkClaims, LinkError> {
        if token.len() != 46 {
            return Err(LinkError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| LinkError::Malformed)?;
        let bytes: [u8; TOKEN_LEN] = bytes.try_into().map_err(|_| LinkError::Malformed)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == bytes[0])
            .ok_or(LinkError::UnknownKey)?;
        mac(key, &bytes[..SIGNED_LEN])
            .verify_truncated_left(&bytes[SIGNED_LEN..])
            .map_err(|_| LinkError::Forged)?;
        // Signed by us: the fields were written by `sign` and parse.
        let purpose = LinkPurpose::from_code(bytes[1] >> 4).ok_or(LinkError::Malformed)?;
        let channel = channel_from_code(bytes[1] & 0x0f).ok_or(LinkError::Malformed)?;
        let uuid = uuid::Uuid::from_slice(&bytes[2..18]).map_err(|_| LinkError::Malformed)?;
        let expires = u32::from_be_bytes(bytes[18..22].try_into().expect("four bytes"));
        let claims = LinkClaims {
            purpose,
            recipient: RecipientId::from_uuid(uuid),
            channel,
            expires: DateTime::from_timestamp(i64::from(expires), 0).ok_or(LinkError::Malformed)?,
        };
        if claims.expires <= now {
            return Err(LinkError::Expired(claims));
        }
        Ok(claims)
    }
}

/// How long acknowledgment links stay good unless configured.
pub const DEFAULT_ACK_LINK_DAYS: u32 = 30;
/// How long one-click unsubscribe links stay good: old emails keep working for a year.
pub const UNSUBSCRIBE_LINK_DAYS: u32 = 365;

/// The links of one Tidings service: its public address and keys.
#[derive(Debug, Clone)]
pub struct Links {
    /// `https://tidings.example.org`, without a trailing slash.
    base_url: String,
    pub keys: std::sync::Arc<LinkKeys>,
    /// How long an acknowledgment link stays good.
    pub ack_ttl: chrono::Duration,
}

impl Links {
    pub fn new(base_url: &str, keys: std::sync::Arc<LinkKeys>, ack_days: u32) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            keys,
            ack_ttl: chrono::Duration::days(i64::from(ack_days)),
        }
    }

    /// `{base}/a/{token}`: the page where the guardian acknowledges what came on `channel`.
    pub fn ack_url(&self, recipient: RecipientId, channel: Channel, now: DateTime<Utc>) -> String {
        let token = self.keys.sign(&LinkClaims {
            purpose: LinkPurpose::Acknowledge,
            recipient,
            channel,
            expires: now + self.ack_ttl,
        });
        format!("{}/a/{token}", self.base_url)
    }

    /// `{base}/u/{token}`: one-click unsubscribe from email.
    pub fn unsubscribe_url(&self, recipient: RecipientId, now: DateTime<Utc>) -> String {
        let token = self.keys.sign(&LinkClaims {
            purpose: LinkPurpose::Unsubscribe,
            recipient,
            channel: Channel::Email,
            expires: now + chrono::Duration::days(i64::from(UNSUBSCRIBE_LINK_DAYS)),
        });
        format!("{}/u/{token}", self.base_url)
    }
}

fn mac(key: &[u8; 32], signed: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(CONTEXT);
    mac.update(signed);
    mac
}

fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    key
}

fn channel_code(channel: Channel) -> u8 {
    match channel {
        Channel::Sms => 0,
        Channel::Email => 1,
        Channel::Push => 2,
    }
}

fn channel_from_code(code: u8) -> Option<Channel> {
    match code {
        0 => Some(Channel::Sms),
        1 => Some(Channel::Email),
        2 => Some(Channel::Push),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;
    use proptest::prelude::*;

    fn claims(purpose: LinkPurpose, channel: Channel, expires: DateTime<Utc>) -> LinkClaims {
        LinkClaims {
            purpose,
            recipient: RecipientId::new(),
            channel,
            expires: DateTime::from_timestamp(expires.timestamp(), 0).unwrap(),
        }
    }

    #[test]
    fn a_signed_token_verifies_to_its_claims_until_it_expires() {
        let keys = LinkKeys::generate();
        let now = Utc::now();
        let c = claims(
            LinkPurpose::Acknowledge,
            Channel::Sms,
            now + Duration::days(30),
        );
        let token = keys.sign(&c);
        assert_eq!(token.len(), 46);
        assert_eq!(keys.verify(&token, now), Ok(c));
        assert_eq!(
            keys.verify(&token, now + Duration::days(31)),
            Err(LinkError::Expired(c))
        );
    }

    #[test]
    fn other_keys_forged_bytes_and_garbage_are_refused() {
        let keys = LinkKeys::generate();
        let now = Utc::now();
        let c = claims(
            LinkPurpose::Unsubscribe,
            Channel::Email,
            now + Duration::days(1),
        );
        let token = keys.sign(&c);
        // Another district's (or an attacker's) key with the same id.
        assert_eq!(
            LinkKeys::generate().verify(&token, now),
            Err(LinkError::Forged)
        );
        // A key id nobody holds.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[0] = 9;
        assert_eq!(
            keys.verify(&URL_SAFE_NO_PAD.encode(&bytes), now),
            Err(LinkError::UnknownKey)
        );
        // An unsubscribe link turned into an acknowledgment: the MAC covers the purpose.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[1] = LinkPurpose::Acknowledge.code() << 4 | channel_code(Channel::Email);
        assert_eq!(
            keys.verify(&URL_SAFE_NO_PAD.encode(&bytes), now),
            Err(LinkError::Forged)
        );
        for garbage in [
            "",
            "abc",
            &"A".repeat(46),
            &format!("{token}x"),
            "é".repeat(23).as_str(),
        ] {
            assert!(
                matches!(
                    keys.verify(garbage, now),
                    Err(LinkError::Malformed | LinkError::UnknownKey)
                ),
                "{garbage:?}"
            );
        }
    }

    #[test]
    fn after_rotation_the_new_key_signs_and_old_links_still_verify() {
        let old = LinkKeys::generate();
        let now = Utc::now();
        let c = claims(
            LinkPurpose::Acknowledge,
            Channel::Email,
            now + Duration::days(1),
        );
        let sent_before = old.sign(&c);
        let rotated = old.rotated().unwrap();
        let sent_after = rotated.sign(&c);
        assert_eq!(rotated.verify(&sent_before, now), Ok(c));
        assert_eq!(rotated.verify(&sent_after, now), Ok(c));
        // Processes still on the old keys do not accept the new key's links.
        assert_eq!(old.verify(&sent_after, now), Err(LinkError::UnknownKey));
        // The file keeps both, newest first, and reads back the same.
        let text = rotated.to_file_text();
        assert_eq!(LinkKeys::parse(&text), Ok(rotated.clone()));
        let first_key_line = text.lines().find(|l| !l.starts_with('#')).unwrap();
        assert!(first_key_line.starts_with("2:"), "{first_key_line}");
        assert_ne!(rotated.fingerprints()[0].1, rotated.fingerprints()[1].1);
        assert_eq!(old.fingerprints()[0], rotated.fingerprints()[0]);
    }

    #[test]
    fn the_keys_file_reports_its_bad_lines() {
        let key = URL_SAFE_NO_PAD.encode([7u8; 32]);
        assert_eq!(
            LinkKeys::parse("# only a comment\n\n"),
            Err(LinkKeyError::Empty)
        );
        assert_eq!(
            LinkKeys::parse(&format!("1:{key}\nnonsense\n")),
            Err(LinkKeyError::BadLine { line: 2 })
        );
        assert_eq!(
            LinkKeys::parse(&format!("0:{key}")),
            Err(LinkKeyError::BadLine { line: 1 })
        );
        assert_eq!(
            LinkKeys::parse("1:c2hvcnQ"),
            Err(LinkKeyError::BadLine { line: 1 })
        );
        assert_eq!(
            LinkKeys::parse(&format!("3:{key}\n3:{key}")),
            Err(LinkKeyError::Duplicate(3))
        );
        let keys = LinkKeys::parse(&format!("  5 : {key} \n")).unwrap();
        assert_eq!(keys.signing().0, 5);
        assert!(
            !format!("{keys:?}").contains(&key),
            "Debug must not show key bytes"
        );
    }

    proptest! {
        #[test]
        fn any_string_is_answered_without_panicking_and_any_bit_flip_is_refused(
            garbage in ".{0,80}",
            flip in 0usize..(TOKEN_LEN * 8),
            secs in 1u32..u32::MAX,
        ) {
            let keys = LinkKeys::generate();
            let now = DateTime::from_timestamp(0, 0).unwrap();
            prop_assert!(keys.verify(&garbage, now).is_err());
            let c = LinkClaims {
                purpose: LinkPurpose::Acknowledge,
                recipient: RecipientId::new(),
                channel: Channel::Push,
                expires: DateTime::from_timestamp(i64::from(secs), 0).unwrap(),
            };
            let token = keys.sign(&c);
            prop_assert_eq!(keys.verify(&token, now), Ok(c));
            let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
            bytes[flip / 8] ^= 1 << (flip % 8);
            prop_assert!(keys.verify(&URL_SAFE_NO_PAD.encode(&bytes), now).is_err());
        }
    }
}
