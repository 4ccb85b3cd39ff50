//! Secrets Tidings must read back, such as a district's single sign-on client secret:
//! kept in the database only sealed, with AES-256-GCM under a key derived (HKDF-SHA-256)
//! from one of the link keys for one purpose and one owner (a district). The database
//! alone, or a backup of it, reveals nothing; a sealed value copied to another district's
//! row, or to another purpose, does not open.
//!
//! A sealed value is `version (1) | key id (1) | nonce (12) | ciphertext | tag (16)`. It
//! names the link key it was sealed under, so rotating the link keys leaves it readable
//! for as long as that key is kept (new values are sealed under the newest key); once the
//! key is retired, the value is lost and must be entered again. This module never logs,
//! and its errors never hold, any part of a secret.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};

use crate::link::LinkKeys;

const VERSION: u8 = 1;
const HEADER_LEN: usize = 2 + NONCE_LEN;
/// Separates these keys from any other use of the link keys.
const SALT: &[u8] = b"tidings sealed secrets v1";

/// What a sealed value is for: the key is derived for it, so values do not cross over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A district's OpenID Connect client secret.
    SsoClientSecret,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::SsoClientSecret => b"sso client secret",
        }
    }
}

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a sealed value")]
    Malformed,
    /// Sealed under a link key that is no longer kept: enter the secret again.
    #[error("sealed under link key {0}, which is no longer kept")]
    RetiredKey(u8),
    /// Changed, or sealed for another owner or purpose, or under another key of that id.
    #[error("the sealed value does not verify")]
    Forged,
}

fn key(link_key: &[u8; 32], purpose: Purpose, owner: &uuid::Uuid) -> LessSafeKey {
    let info = [purpose.label(), b"\0", owner.as_bytes()];
    let prk = Salt::new(HKDF_SHA256, SALT).extract(link_key);
    let okm = prk
        .expand(&info, &AES_256_GCM)
        .expect("an AES-256 key is a valid HKDF-SHA-256 output length");
    LessSafeKey::new(UnboundKey::from(okm))
}

/// The header and owner, authenticated with the ciphertext.
fn aad(header: &[u8], owner: &uuid::Uuid) -> Vec<u8> {
    let mut aad = header[..2].to_vec();
    aad.extend_from_slice(owner.as_bytes());
    aad
}

/// `secret` sealed for `owner` and `purpose` under the newest link key.
pub fn seal(keys: &LinkKeys, purpose: Purpose, owner: uuid::Uuid, secret: &[u8]) -> Vec<u8> {
    let (id, link_key) = keys.newest();
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system's random source works");
    let mut sealed = Vec::with_capacity(HEADER_LEN + secret.len() + AES_256_GCM.tag_len());
    sealed.extend_from_slice(&[VERSION, id]);
    sealed.extend_from_slice(&nonce);
    let mut body = secret.to_vec();
    key(link_key, purpose, &owner)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(&sealed, &owner)),
            &mut body,
        )
        .expect("AES-GCM seals anything shorter than 64 GiB");
    sealed.extend_from_slice(&body);
    sealed
}

/// The secret `sealed` holds, if it was sealed for `owner` and `purpose` under a link key
/// still kept.
pub fn open(
    keys: &LinkKeys,
    purpose: Purpose,
    owner: uuid::Uuid,
    sealed: &[u8],
) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < HEADER_LEN + AES_256_GCM.tag_len() || sealed[0] != VERSION {
        return Err(OpenError::Malformed);
    }
    let id = sealed[1];
    let link_key = keys.key(id).ok_or(OpenError::RetiredKey(id))?;
    let nonce = Nonce::try_assume_unique_for_key(&sealed[2..HEADER_LEN])
        .map_err(|_| OpenError::Malformed)?;
    let mut body = sealed[HEADER_LEN..].to_vec();
    let opened = key(link_key, purpose, &owner)
        .open_in_place(nonce, Aad::from(aad(sealed, &owner)), &mut body)
        .map_err(|_| OpenError::Forged)?;
    Ok(opened.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PURPOSE: Purpose = Purpose::SsoClientSecret;

    #[test]
    fn a_sealed_secret_opens_for_its_owner_only_and_hides_the_secret() {
        let keys = LinkKeys::generate();
        let district = uuid::Uuid::now_v7();
        let sealed = seal(&keys, PURPOSE, district, b"GOCSPX-very-secret");
        assert!(!sealed
            .windows(b"very-secret".len())
            .any(|w| w == b"very-secret"));
        assert_eq!(
            open(&keys, PURPOSE, district, &sealed).unwrap(),
            b"GOCSPX-very-secret"
        );
        // Copied to another district's row: it does not open there.
        assert_eq!(
            open(&keys, PURPOSE, uuid::Uuid::now_v7(), &sealed),
            Err(OpenError::Forged)
        );
        // Under another installation's keys (same key id, another key).
        assert_eq!(
            open(&LinkKeys::generate(), PURPOSE, district, &sealed),
            Err(OpenError::Forged)
        );
        // Two seals of one secret differ (a fresh nonce each).
        assert_ne!(
            sealed,
            seal(&keys, PURPOSE, district, b"GOCSPX-very-secret")
        );
    }

    #[test]
    fn rotation_keeps_old_values_readable_until_their_key_is_retired() {
        let old = LinkKeys::generate();
        let district = uuid::Uuid::now_v7();
        let sealed = seal(&old, PURPOSE, district, b"secret");
        let rotated = old.rotated().unwrap();
        assert_eq!(
            open(&rotated, PURPOSE, district, &sealed).unwrap(),
            b"secret"
        );
        let resealed = seal(&rotated, PURPOSE, district, b"secret");
        assert_eq!(resealed[1], 2, "new values go under the newest key");
        // Only the new key kept: the old value is lost, and says why.
        let text = rotated.to_file_text();
        let newest_only = text
            .lines()
            .filter(|l| !l.starts_with("1:"))
            .collect::<Vec<_>>();
        let newest_only = LinkKeys::parse(&newest_only.join("\n")).unwrap();
        assert_eq!(
            open(&newest_only, PURPOSE, district, &sealed),
            Err(OpenError::RetiredKey(1))
        );
        assert_eq!(
            open(&newest_only, PURPOSE, district, &resealed).unwrap(),
            b"secret"
        );
    }

    #[test]
    fn short_or_unknown_versions_are_malformed() {
        let keys = LinkKeys::generate();
        let district = uuid::Uuid::now_v7();
        assert_eq!(
            open(&keys, PURPOSE, district, b""),
            Err(OpenError::Malformed)
        );
        let mut sealed = seal(&keys, PURPOSE, district, b"x");
        sealed[0] = 9;
        assert_eq!(
            open(&keys, PURPOSE, district, &sealed),
            Err(OpenError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn any_secret_round_trips_and_any_flipped_bit_is_refused(
            secret in proptest::collection::vec(any::<u8>(), 1..200),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let keys = LinkKeys::generate();
            let district = uuid::Uuid::now_v7();
            let sealed = seal(&keys, PURPOSE, district, &secret);
            prop_assert_eq!(open(&keys, PURPOSE, district, &sealed).unwrap(), secret);
            let mut tampered = sealed.clone();
            let at = flip.index(tampered.len());
            tampered[at] ^= 1 << bit;
            prop_assert!(open(&keys, PURPOSE, district, &tampered).is_err());
        }
    }
}
