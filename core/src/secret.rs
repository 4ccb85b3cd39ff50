//! Passwords and API tokens. Passwords are hashed with argon2id; API tokens are random,
//! stored only as a SHA-256 of their secret part, and compared in constant time.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ApiTokenId;

#[derive(Debug, thiserror::Error)]
#[error("could not hash the password")]
pub struct PasswordHashError(#[source] argon2::password_hash::Error);

/// An argon2id PHC string for `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, PasswordHashError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(PasswordHashError)
}

/// Whether `candidate` matches the stored PHC string. A malformed hash never matches.
pub fn verify_password(stored_hash: &str, candidate: &str) -> bool {
    PasswordHash::new(stored_hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(candidate.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A random password for a first login: 20 characters from an alphabet without
/// look-alikes (no 0/O, 1/l/I), about 113 bits.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    OsRng.fill_bytes(&mut bytes);
    // 256 is not a multiple of 56: the bias is under 2% per character and harmless at
    // this length.
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

const TOKEN_PREFIX: &str = "tid_";

/// A bearer token as handed to its owner once: `tid_<token id>_<secret>`. The id finds the
/// stored row; the secret is checked against its stored hash in constant time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: ApiTokenId,
    secret: String,
}

/// A bearer string that is not one of our tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Tidings API token")]
pub struct MalformedToken;

impl ApiToken {
    /// A new token with 256 random bits of secret.
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        Self {
            id: ApiTokenId::new(),
            secret: URL_SAFE_NO_PAD.encode(secret),
        }
    }

    pub fn parse(bearer: &str) -> Result<Self, MalformedToken> {
        let rest = bearer.strip_prefix(TOKEN_PREFIX).ok_or(MalformedToken)?;
        let (id, secret) = rest.split_once('_').ok_or(MalformedToken)?;
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(MalformedToken);
        }
        let id = id.parse().map_err(|_| MalformedToken)?;
        if secret.len() != 43 || URL_SAFE_NO_PAD.decode(secret).is_err() {
            return Err(MalformedToken);
        }
        Ok(Self {
            id,
            secret: secret.to_owned(),
        })
    }

    /// What the store keeps.
    pub fn secret_hash(&self) -> Vec<u8> {
        Sha256::digest(self.secret.as_bytes()).to_vec()
    }

    /// Whether this token's secret is the one whose hash was stored.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        self.secret_hash().ct_eq(stored_hash).into()
    }

    /// The string to give the owner. It is shown once and never stored or logged.
    pub fn reveal(&self) -> String {
        format!(
            "{TOKEN_PREFIX}{}_{}",
            self.id.as_uuid().simple(),
            self.secret
        )
    }
}

const GUARDIAN_PREFIX: &str = "tgs_";

/// A guardian app session's bearer token: `tgs_<session id>_<secret>`. Like [`ApiToken`],
/// the store keeps only a hash of the secret, compared in constant time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardianToken {
    pub session: uuid::Uuid,
    secret: String,
}

impl GuardianToken {
    pub fn generate() -> Self {
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        Self {
            session: uuid::Uuid::now_v7(),
            secret: URL_SAFE_NO_PAD.encode(secret),
        }
    }

    pub fn parse(bearer: &str) -> Result<Self, MalformedToken> {
        let rest = bearer.strip_prefix(GUARDIAN_PREFIX).ok_or(MalformedToken)?;
        let (id, secret) = rest.split_once('_').ok_or(MalformedToken)?;
        if id.len() != 32 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(MalformedToken);
        }
        if secret.len() != 43 || URL_SAFE_NO_PAD.decode(secret).is_err() {
            return Err(MalformedToken);
        }
        Ok(Self {
            session: id.parse().map_err(|_| MalformedToken)?,
            secret: secret.to_owned(),
        })
    }

    /// What the store keeps.
    pub fn secret_hash(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.secret.as_bytes()))
    }

    pub fn matches(&self, stored_hash: &str) -> bool {
        self.secret_hash()
            .as_bytes()
            .ct_eq(stored_hash.as_bytes())
            .into()
    }

    /// The string the app is given once.
    pub fn reveal(&self) -> String {
        format!("{GUARDIAN_PREFIX}{}_{}", self.session.simple(), self.secret)
    }
}

/// A six-digit one-time code.
pub fn generate_code() -> String {
    // Rejection sampling keeps every code equally likely.
    loop {
        let n = OsRng.next_u32();
        if n < 4_294_000_000 {
            return format!("{:06}", n % 1_000_000);
        }
    }
}

/// What the store keeps of a one-time code: a random salt and SHA-256 of salt and code.
/// A code lives minutes and allows a few tries; the hash keeps it from being read off
/// the database (or a backup) while it does.
pub fn hash_code(code: &str) -> String {
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(code.trim())
        .finalize();
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(salt),
        URL_SAFE_NO_PAD.encode(digest)
    )
}

/// Whether `code` is the one `stored` was made from (constant time).
pub fn code_matches(stored: &str, code: &str) -> bool {
    let Some((salt, digest)) = stored.split_once('.') else {
        return false;
    };
    let (Ok(salt), Ok(digest)) = (URL_SAFE_NO_PAD.decode(salt), URL_SAFE_NO_PAD.decode(digest))
    else {
        return false;
    };
    let candidate = Sha256::new()
        .chain_update(salt)
        .chain_update(code.trim())
        .finalize();
    candidate.as_slice().ct_eq(&digest).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_password_verifies_against_its_hash_and_nothing_else() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horse "));
        assert!(!verify_password("not a hash", "correct horse"));
    }

    #[test]
    fn generated_passwords_are_long_and_differ() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }

    #[test]
    fn a_token_parses_back_from_what_its_owner_is_given() {
        let token = ApiToken::generate();
        let parsed = ApiToken::parse(&token.reveal()).unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.matches(&token.secret_hash()));
        assert!(!ApiToken::generate().matches(&token.secret_hash()));
    }

    #[test]
    fn a_token_with_a_changed_secret_does_not_match() {
        let token = ApiToken::generate();
        // A character in the middle of the secret: the last one carries padding bits and
        // some replacements would not even parse.
        let mut chars: Vec<char> = token.reveal().chars().collect();
        let at = chars.len() - 10;
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        let forged = ApiToken::parse(&chars.into_iter().collect::<String>()).unwrap();
        assert_eq!(forged.id, token.id);
        assert!(!forged.matches(&token.secret_hash()));
    }

    #[test]
    fn a_guardian_token_parses_back_and_only_its_secret_matches() {
        let token = GuardianToken::generate();
        let parsed = GuardianToken::parse(&token.reveal()).unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.matches(&token.secret_hash()));
        assert!(!GuardianToken::generate().matches(&token.secret_hash()));
        // Staff tokens and guardian tokens are not interchangeable.
        assert!(GuardianToken::parse(&ApiToken::generate().reveal()).is_err());
        assert!(ApiToken::parse(&token.reveal()).is_err());
    }

    #[test]
    fn a_code_matches_its_hash_only() {
        let code = generate_code();
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        let stored = hash_code(&code);
        assert!(code_matches(&stored, &code));
        assert!(code_matches(&stored, &format!(" {code}\n")));
        let other = format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
        assert!(!code_matches(&stored, &other));
        assert_ne!(hash_code(&code), stored, "salted");
        assert!(!code_matches("garbage", &code));
    }

    proptest! {
        #[test]
        fn guardian_token_parser_never_panics_and_round_trips(input in ".{0,90}") {
            if let Ok(token) = GuardianToken::parse(&input) {
                prop_assert_eq!(token.reveal(), input);
            }
        }

        #[test]
        fn token_parser_never_panics_and_rejects_what_it_did_not_issue(input in ".{0,90}") {
            if let Ok(token) = ApiToken::parse(&input) {
                prop_assert_eq!(token.reveal(), input);
            }
        }

        #[test]
        fn any_one_character_change_is_rejected_or_does_not_match(at in 0usize..80, with in "[0-9a-zA-Z_-]") {
            let token = ApiToken::generate();
            let mut chars: Vec<char> = token.reveal().chars().collect();
            let at = at % chars.len();
            let replacement = with.chars().next().unwrap();
            prop_assume!(chars[at] != replacement);
            chars[at] = replacement;
            let changed: String = chars.into_iter().collect();
            if let Ok(parsed) = ApiToken::parse(&changed) {
                prop_assert!(parsed.id != token.id || !parsed.matches(&token.secret_hash()));
            }
        }
    }
}
