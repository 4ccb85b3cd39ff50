//! The signed tokens push providers want: ES256 for APNs provider tokens, RS256 for the
//! Google OAuth2 assertion FCM's access tokens are exchanged for. Signed with ring (no
//! OpenSSL), keys read from PKCS#8 PEM as Apple and Google hand them out.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use serde::Serialize;

/// Why a key cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// The DER inside a PEM block (`-----BEGIN PRIVATE KEY-----` …).
pub fn pem_der(pem: &str) -> Result<Vec<u8>, KeyError> {
    let body: String = pem
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    if body.is_empty() {
        return Err(KeyError("no PEM block found".into()));
    }
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| KeyError(format!("the PEM block is not base64: {e}")))
}

/// A signing key for one of the two algorithms.
pub enum Signer {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
}

impl Signer {
    /// An ES256 key from a PKCS#8 PEM (Apple's `.p8` file).
    pub fn es256(pem: &str) -> Result<Self, KeyError> {
        let der = pem_der(pem)?;
        EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &SystemRandom::new(),
        )
        .map(Signer::Es256)
        .map_err(|e| KeyError(format!("not a P-256 private key in PKCS#8: {e}")))
    }

    /// An RS256 key from a PKCS#8 PEM (a Google service account's `private_key`).
    pub fn rs256(pem: &str) -> Result<Self, KeyError> {
        let der = pem_der(pem)?;
        RsaKeyPair::from_pkcs8(&der)
            .map(Signer::Rs256)
            .map_err(|e| KeyError(format!("not an RSA private key in PKCS#8: {e}")))
    }

    fn alg(&self) -> &'static str {
        match self {
            Signer::Es256(_) => "ES256",
            Signer::Rs256(_) => "RS256",
        }
    }

    /// A compact JWT of `claims`, with `kid` in the header when given.
    pub fn token(&self, kid: Option<&str>, claims: &impl Serialize) -> Result<String, KeyError> {
        let mut header = serde_json::json!({ "alg": self.alg(), "typ": "JWT" });
        if let Some(kid) = kid {
            header["kid"] = kid.into();
        }
        let claims = serde_json::to_vec(claims)
            .map_err(|e| KeyError(format!("the claims cannot be serialised: {e}")))?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let rng = SystemRandom::new();
        let signature = match self {
            Signer::Es256(key) => key
                .sign(&rng, signing_input.as_bytes())
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError("ES256 signing failed".into()))?,
            Signer::Rs256(key) => {
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &rng,
                    signing_input.as_bytes(),
                    &mut out,
                )
                .map_err(|_| KeyError("RS256 signing failed".into()))?;
                out
            }
        };
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

/// The parts of a compact JWT: header and claims as JSON, and the signature bytes, with
/// the signing input. For checking tokens (the sandbox does, as providers do).
pub struct Parsed {
    pub header: serde_json::Value,
    pub claims: serde_json::Value,
    pub signing_input: String,
    pub signature: Vec<u8>,
}

pub fn parse(token: &str) -> Option<Parsed> {
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = |part: &str| -> Option<serde_json::Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    Some(Parsed {
        header: json(h)?,
        claims: json(c)?,
        signing_input: format!("{h}.{c}"),
        signature: URL_SAFE_NO_PAD.decode(s).ok()?,
    })
}

/// The public point of an ES256 key given as its private PKCS#8 PEM, for checking the
/// tokens it signs.
pub fn es256_public_point(pem: &str) -> Result<Vec<u8>, KeyError> {
    use ring::signature::KeyPair as _;
    match Signer::es256(pem)? {
        Signer::Es256(key) => Ok(key.public_key().as_ref().to_vec()),
        Signer::Rs256(_) => unreachable!("es256 makes an ES256 key"),
    }
}

/// Whether an ES256 token verifies with the P-256 public key `point` (the 65-byte
/// uncompressed point, the tail of its SubjectPublicKeyInfo).
pub fn es256_verifies(parsed: &Parsed, point: &[u8]) -> bool {
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
        .verify(parsed.signing_input.as_bytes(), &parsed.signature)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bodies_are_decoded_and_garbage_is_refused() {
        assert_eq!(
            pem_der("-----BEGIN X-----\nAAEC\nAw==\n-----END X-----\n").unwrap(),
            vec![0, 1, 2, 3]
        );
        assert!(pem_der("").is_err());
        assert!(pem_der("-----BEGIN X-----\n!!!\n-----END X-----").is_err());
        assert!(
            Signer::es256("-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----").is_err()
        );
    }

    #[test]
    fn parse_refuses_what_is_not_a_compact_jwt() {
        assert!(parse("a.b").is_none());
        assert!(parse("a.b.c.d").is_none());
        assert!(parse("e30.e30.AA").is_some());
        assert!(parse("e30.notjson.AA").is_none());
    }
}
