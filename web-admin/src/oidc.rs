//! The web admin as an OpenID Connect relying party: the authorization code flow with
//! PKCE (S256), for districts whose staff sign in with Google Workspace, Microsoft Entra
//! or another provider (OpenID Connect Core 1.0 §3.1).
//!
//! A sign-in keeps its `state`, `nonce` and PKCE verifier in a short-lived cookie
//! ([`Flow`]); the callback must bring the same `state` back, the code is exchanged at the
//! provider's token endpoint with the client secret, and the ID token is believed only
//! once its signature verifies against the provider's published keys (JWKS) and its
//! `iss`, `aud`, `exp` and `nonce` are ours. The provider's discovery document and keys
//! are cached briefly ([`CACHE_FOR`]). Signatures are checked by `jsonwebtoken`, with
//! asymmetric algorithms only.
//!
//! Never logged, never in an error: the client secret, codes, tokens and the verifier.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rand_core::{OsRng, RngCore};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tidings_core::sso::{Issuer, SsoClient};
use tidings_core::DistrictId;

/// How long a provider's discovery document and keys are used before they are fetched
/// again.
pub const CACHE_FOR: Duration = Duration::from_secs(300);
/// A token signed with a key we do not know makes us fetch the keys again (the provider
/// rotated them), at most this often.
const REFETCH_KEYS_AFTER: Duration = Duration::from_secs(30);
/// How long a sign-in may take at the provider (the flow cookie's life).
pub const FLOW_SECONDS: i64 = 600;
/// How long a request to the provider may take.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock difference allowed with the provider when checking `exp` and `nbf`.
const LEEWAY_SECONDS: i64 = 60;
/// The signature algorithms an ID token may use: asymmetric only, so that a published
/// key can never be used as an HMAC secret.
const ALGORITHMS: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

/// Why single sign-on did not sign someone in, in words for the log and the page. None
/// holds a secret, a code or a token.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider could not be reached ({what})")]
    Unreachable {
        what: &'static str,
        #[source]
        source: reqwest::Error,
    },
    #[error("the identity provider answered {status} for its {what}")]
    Status {
        what: &'static str,
        status: reqwest::StatusCode,
    },
    #[error("the identity provider's discovery document is not usable: {0}")]
    Discovery(String),
    #[error("the identity provider refused the sign-in code: {0}")]
    TokenRefused(String),
    #[error("the ID token is not valid: {0}")]
    InvalidToken(String),
    #[error("the identity provider did not vouch for the email address: {0}")]
    Unverified(&'static str),
}

/// What the provider says about itself (OpenID Connect Discovery 1.0 §3).
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

impl Discovery {
    /// How to authenticate at the token endpoint: HTTP Basic unless the provider offers
    /// only posting the secret (RFC 6749 §2.3.1; Basic is Discovery's default).
    fn posts_secret(&self) -> Result<bool, OidcError> {
        match &self.token_endpoint_auth_methods_supported {
            None => Ok(false),
            Some(methods) if methods.iter().any(|m| m == "client_secret_basic") => Ok(false),
            Some(methods) if methods.iter().any(|m| m == "client_secret_post") => Ok(true),
            Some(_) => Err(OidcError::Discovery(
                "its token endpoint takes neither client_secret_basic nor client_secret_post"
                    .into(),
            )),
        }
    }
}

/// A provider's discovery document and keys, as fetched at `fetched`.
#[derive(Debug, Clone)]
struct Cached {
    discovery: Arc<Discovery>,
    keys: Arc<Vec<Jwk>>,
    fetched: Instant,
}

/// Talks to identity providers; clones share the cache.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
}

impl Default for Client {
    fn default() -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(PROVIDER_TIMEOUT)
                // Endpoints come from the discovery document, never from a redirect.
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("an HTTP client with rustls builds"),
            cache: Arc::default(),
        }
    }
}

/// An endpoint the provider names must be `https` (or `http` on this machine, as the
/// sandbox's provider is).
fn check_endpoint(name: &str, url: &str) -> Result<(), OidcError> {
    match url::Url::parse(url) {
        Ok(url) if tidings_core::sso::https_or_loopback(&url) => Ok(()),
        _ => Err(OidcError::Discovery(format!(
            "its {name} is not an https URL"
        ))),
    }
}

impl Client {
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &'static str,
    ) -> Result<T, OidcError> {
        let unreachable = |source| OidcError::Unreachable { what, source };
        let response = self.http.get(url).send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(OidcError::Status {
                what,
                status: response.status(),
            });
        }
        response.json().await.map_err(unreachable)
    }

    async fn fetch(&self, issuer: &Issuer) -> Result<Cached, OidcError> {
        let discovery: Discovery = self
            .get_json(&issuer.discovery_url(), "discovery document")
            .await?;
        // Discovery §4.3: the issuer it states must be the one it was found under.
        if discovery.issuer != issuer.as_str() {
            return Err(OidcError::Discovery(format!(
                "it names its issuer {:?}, not {:?} as configured",
                discovery.issuer,
                issuer.as_str()
            )));
        }
        check_endpoint("authorization_endpoint", &discovery.authorization_endpoint)?;
        check_endpoint("token_endpoint", &discovery.token_endpoint)?;
        check_endpoint("jwks_uri", &discovery.jwks_uri)?;
        discovery.posts_secret()?;
        let keys = self.fetch_keys(&discovery.jwks_uri).await?;
        Ok(Cached {
            discovery: Arc::new(discovery),
            keys: Arc::new(keys),
            fetched: Instant::now(),
        })
    }

    /// The provider's signing keys; keys of a type we cannot use are left out.
    async fn fetch_keys(&self, jwks_uri: &str) -> Result<Vec<Jwk>, OidcError> {
        #[derive(Deserialize)]
        struct Keys {
            keys: Vec<serde_json::Value>,
        }
        let keys: Keys = self.get_json(jwks_uri, "keys (JWKS)").await?;
        Ok(keys
            .keys
            .into_iter()
            .filter_map(|key| serde_json::from_value::<Jwk>(key).ok())
            .collect())
    }

    /// The provider's discovery document, cached for [`CACHE_FOR`].
    pub async fn discovery(&self, issuer: &Issuer) -> Result<Arc<Discovery>, OidcError> {
        Ok(self.cached(issuer, false).await?.discovery)
    }

    async fn cached(&self, issuer: &Issuer, fresh_keys: bool) -> Result<Cached, OidcError> {
        let kept = self.lock().get(issuer.as_str()).cloned();
        if let Some(kept) = kept {
            let age = kept.fetched.elapsed();
            if age < CACHE_FOR && !(fresh_keys && age >= REFETCH_KEYS_AFTER) {
                return Ok(kept);
            }
        }
        let fetched = self.fetch(issuer).await?;
        self.lock()
            .insert(issuer.as_str().to_owned(), fetched.clone());
        Ok(fetched)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Exchanges the code the provider sent back for its ID token (the token endpoint,
    /// authenticated with the client secret and proven with the PKCE verifier).
    pub async fn exchange(
        &self,
        client: &SsoClient,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> Result<String, OidcError> {
        let discovery = self.discovery(&client.issuer).await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let mut request = self.http.post(&discovery.token_endpoint);
        if discovery.posts_secret()? {
            form.push(("client_id", client.client_id.as_str()));
            form.push(("client_secret", client.client_secret.reveal()));
        } else {
            request = request.header(
                reqwest::header::AUTHORIZATION,
                basic_authorization(client.client_id.as_str(), client.client_secret.reveal()),
            );
        }
        let unreachable = |source| OidcError::Unreachable {
            what: "token endpoint",
            source,
        };
        let response = request
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        #[derive(Deserialize)]
        struct TokenAnswer {
            id_token: Option<String>,
            error: Option<String>,
        }
        let answer: Option<TokenAnswer> = response.json().await.ok();
        match answer {
            Some(TokenAnswer {
                id_token: Some(token),
                ..
            }) if status.is_success() => Ok(token),
            // The error code only (RFC 6749 §5.2): its description may echo what we sent.
            Some(TokenAnswer {
                error: Some(error), ..
            }) => Err(OidcError::TokenRefused(short(&error))),
            _ if status.is_success() => Err(OidcError::TokenRefused("no id_token".into())),
            _ => Err(OidcError::Status {
                what: "token endpoint",
                status,
            }),
        }
    }

    /// The identity an ID token vouches for, once its signature, issuer, audience,
    /// lifetime and nonce check out. An unknown signing key makes us fetch the keys again
    /// once (the provider rotated them).
    pub async fn verify(
        &self,
        client: &SsoClient,
        id_token: &str,
        nonce: &str,
        now: i64,
    ) -> Result<Identity, OidcError> {
        let cached = self.cached(&client.issuer, false).await?;
        match verify_id_token(id_token, &cached.keys, client, nonce, now) {
            Err(OidcError::InvalidToken(why)) if why == UNKNOWN_KEY => {
                let fresh = self.cached(&client.issuer, true).await?;
                verify_id_token(id_token, &fresh.keys, client, nonce, now)
            }
            verified => verified,
        }
    }
}

/// `Authorization: Basic` for a client: each part form-encoded first (RFC 6749 §2.3.1).
fn basic_authorization(client_id: &str, secret: &str) -> String {
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret));
    format!("Basic {}", STANDARD.encode(pair))
}

/// At most 100 printable characters of what a provider said.
fn short(said: &str) -> String {
    said.chars().filter(|c| !c.is_control()).take(100).collect()
}

const UNKNOWN_KEY: &str = "it is signed with a key the provider does not publish";

/// Who signed in, as the provider vouches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The email address, as the provider spelled it.
    pub email: String,
}

/// The claims of an ID token we read beyond those `jsonwebtoken` checks.
#[derive(Debug, Deserialize)]
struct Claims {
    /// Required, and a number: a token whose `exp` is anything else does not decode.
    exp: i64,
    nbf: Option<i64>,
    nonce: Option<String>,
    aud: serde_json::Value,
    azp: Option<String>,
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
    /// Microsoft Entra's optional claim "email domain owner verified".
    xms_edov: Option<serde_json::Value>,
}

/// Whether a claim says true (providers send `true`, some `"true"`; Entra's `xms_edov`
/// may come as `1`).
fn says_true(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Bool(b) => *b,
        serde_json::Value::String(s) => s == "true" || s == "1",
        serde_json::Value::Number(n) => n.as_u64() == Some(1),
        _ => false,
    }
}

/// Checks an ID token against the provider's keys and our client and nonce (OpenID
/// Connect Core §3.1.3.7), and its lifetime against `now` (Unix seconds, the server's
/// clock), and returns the verified email address it names.
pub fn verify_id_token(
    id_token: &str,
    keys: &[Jwk],
    client: &SsoClient,
    nonce: &str,
    now: i64,
) -> Result<Identity, OidcError> {
    let invalid = |why: &str| OidcError::InvalidToken(why.to_owned());
    let header = jsonwebtoken::decode_header(id_token).map_err(|_| invalid("it is not a JWT"))?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(invalid("it is not signed with an asymmetric algorithm"));
    }
    let key = match &header.kid {
        Some(kid) => keys
            .iter()
            .find(|k| k.common.key_id.as_deref() == Some(kid)),
        None if keys.len() == 1 => keys.first(),
        None => None,
    }
    .ok_or_else(|| invalid(UNKNOWN_KEY))?;
    let key = DecodingKey::from_jwk(key).map_err(|_| invalid("the provider's key is unusable"))?;
    let mut validation = Validation::new(header.alg);
    validation.set_issuer(&[client.issuer.as_str()]);
    validation.set_audience(&[client.client_id.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    // The lifetime is checked below against the server's clock, not the library's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let claims = jsonwebtoken::decode::<Claims>(id_token, &key, &validation)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => invalid("its signature does not verify"),
                ErrorKind::InvalidIssuer => invalid("it is from another issuer"),
                ErrorKind::InvalidAudience => invalid("it is for another client"),
                ErrorKind::MissingRequiredClaim(_) => invalid("it lacks a required claim"),
                _ => invalid("it does not decode"),
            }
        })?
        .claims;
    if now > claims.exp.saturating_add(LEEWAY_SECONDS) {
        return Err(invalid("it has expired"));
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECONDS))
    {
        return Err(invalid("it is not valid yet"));
    }
    // Several audiences: the authorized party must be us (Core §3.1.3.7, 4 and 5).
    if claims.aud.as_array().is_some_and(|a| a.len() > 1)
        && claims.azp.as_deref() != Some(client.client_id.as_str())
    {
        return Err(invalid(
            "it is for several clients and not authorized for us",
        ));
    }
    let same_nonce = claims
        .nonce
        .as_deref()
        .is_some_and(|n| bool::from(n.as_bytes().ct_eq(nonce.as_bytes())));
    if !same_nonce {
        return Err(invalid("its nonce is not this sign-in's"));
    }
    let email = claims
        .email
        .filter(|e| !e.trim().is_empty())
        .ok_or(OidcError::Unverified(
            "it names no email address (ask for the email scope or claim)",
        ))?;
    // Google says `email_verified`; Entra, with its optional claim, `xms_edov`.
    let verified = match (&claims.email_verified, &claims.xms_edov) {
        (Some(verified), _) => says_true(verified),
        (None, Some(edov)) => says_true(edov),
        (None, None) => false,
    };
    if !verified {
        return Err(OidcError::Unverified(
            "it does not say the email address is verified",
        ));
    }
    Ok(Identity { email })
}

/// A sign-in in progress: what the callback must find again, kept in the flow cookie.
#[derive(Clone, PartialEq, Eq)]
pub struct Flow {
    pub district: DistrictId,
    pub state: String,
    pub nonce: String,
    /// The PKCE code verifier (RFC 7636 §4.1): 43 characters of base64url.
    pub verifier: String,
    /// Unix seconds.
    pub started: i64,
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flow")
            .field("district", &self.district)
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

/// 32 random bytes as base64url (43 characters).
fn random() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl Flow {
    pub fn start(district: DistrictId, now: i64) -> Self {
        Self {
            district,
            state: random(),
            nonce: random(),
            verifier: random(),
            started: now,
        }
    }

    /// The cookie's value: `v1.<district>.<state>.<nonce>.<verifier>.<started>`.
    pub fn to_cookie(&self) -> String {
        format!(
            "v1.{}.{}.{}.{}.{}",
            self.district.as_uuid().simple(),
            self.state,
            self.nonce,
            self.verifier,
            self.started
        )
    }

    pub fn from_cookie(value: &str) -> Option<Self> {
        let mut parts = value.split('.');
        let (
            Some("v1"),
            Some(district),
            Some(state),
            Some(nonce),
            Some(verifier),
            Some(started),
            None,
        ) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        )
        else {
            return None;
        };
        let token = |s: &str| {
            (s.len() == 43
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
            .then(|| s.to_owned())
        };
        Some(Self {
            district: DistrictId::from_uuid(district.parse().ok()?),
            state: token(state)?,
            nonce: token(nonce)?,
            verifier: token(verifier)?,
            started: started.parse().ok()?,
        })
    }

    /// Whether the callback's `state` is this flow's, and it is not too old.
    pub fn answers(&self, state: &str, now: i64) -> bool {
        let fresh = (0..=FLOW_SECONDS).contains(&(now - self.started));
        fresh && bool::from(self.state.as_bytes().ct_eq(state.as_bytes()))
    }

    /// Where to send the browser: the provider's authorization endpoint with this flow.
    pub fn authorization_url(
        &self,
        discovery: &Discovery,
        client_id: &str,
        redirect_uri: &str,
    ) -> Result<String, OidcError> {
        let mut url = url::Url::parse(&discovery.authorization_endpoint)
            .map_err(|_| OidcError::Discovery("its authorization_endpoint is not a URL".into()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", "openid email profile")
            .append_pair("state", &self.state)
            .append_pair("nonce", &self.nonce)
            .append_pair("code_challenge", &challenge(&self.verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use proptest::prelude::*;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    use serde_json::json;
    use tidings_core::sso::{ClientId, ClientSecret};

    #[test]
    fn the_pkce_challenge_is_rfc_7636s_example() {
        // RFC 7636 Appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    proptest! {
        #[test]
        fn a_flow_survives_its_cookie_and_answers_only_its_state(
            started in 0i64..4_000_000_000,
            later in 0i64..=FLOW_SECONDS,
            other in "[A-Za-z0-9_-]{43}",
        ) {
            let flow = Flow::start(DistrictId::new(), started);
            // RFC 7636 §4.1: 43 to 128 unreserved characters.
            prop_assert_eq!(flow.verifier.len(), 43);
            prop_assert_ne!(&flow.state, &flow.nonce);
            let back = Flow::from_cookie(&flow.to_cookie()).unwrap();
            prop_assert_eq!(&back, &flow);
            prop_assert!(back.answers(&flow.state, started + later));
            prop_assert!(!back.answers(&flow.state, started + FLOW_SECONDS + 1), "too old");
            prop_assert!(!back.answers(&other, started + later) || other == flow.state);
        }

        #[test]
        fn anything_else_in_the_cookie_is_no_flow(value in ".{0,200}") {
            if let Some(flow) = Flow::from_cookie(&value) {
                prop_assert_eq!(flow.to_cookie(), value);
            }
        }
    }

    #[test]
    fn a_tampered_cookie_is_no_flow() {
        let flow = Flow::start(DistrictId::new(), 1_700_000_000);
        let cookie = flow.to_cookie();
        assert!(Flow::from_cookie(&cookie.replacen("v1", "v2", 1)).is_none());
        assert!(Flow::from_cookie(&format!("{cookie}.x")).is_none());
        assert!(Flow::from_cookie(&cookie.replace(&flow.nonce, "short")).is_none());
    }

    #[test]
    fn the_authorization_url_carries_the_flow_and_s256() {
        let flow = Flow::start(DistrictId::new(), 0);
        let discovery = Discovery {
            issuer: "https://idp.example".into(),
            authorization_endpoint: "https://idp.example/authorize?tenant=x".into(),
            token_endpoint: "https://idp.example/token".into(),
            jwks_uri: "https://idp.example/jwks".into(),
            token_endpoint_auth_methods_supported: None,
        };
        let url = flow
            .authorization_url(
                &discovery,
                "client 1",
                "https://t.example/sign-in/oidc/callback",
            )
            .unwrap();
        let url = url::Url::parse(&url).unwrap();
        let query: HashMap<_, _> = url.query_pairs().into_owned().collect();
        assert_eq!(query["tenant"], "x", "the endpoint's own query is kept");
        assert_eq!(query["client_id"], "client 1");
        assert_eq!(query["state"], flow.state);
        assert_eq!(query["nonce"], flow.nonce);
        assert_eq!(query["code_challenge"], challenge(&flow.verifier));
        assert_eq!(query["code_challenge_method"], "S256");
        assert!(
            !url.as_str().contains(&flow.verifier),
            "the verifier stays home"
        );
    }

    #[test]
    fn basic_authorization_form_encodes_each_part() {
        assert_eq!(
            basic_authorization("a:b", "s p"),
            format!("Basic {}", STANDARD.encode("a%3Ab:s+p"))
        );
    }

    #[test]
    fn the_token_endpoint_method_follows_the_discovery_document() {
        let with = |methods: Option<&[&str]>| Discovery {
            issuer: String::new(),
            authorization_endpoint: String::new(),
            token_endpoint: String::new(),
            jwks_uri: String::new(),
            token_endpoint_auth_methods_supported: methods
                .map(|m| m.iter().map(|s| s.to_string()).collect()),
        };
        assert!(!with(None).posts_secret().unwrap());
        assert!(!with(Some(&["client_secret_post", "client_secret_basic"]))
            .posts_secret()
            .unwrap());
        assert!(with(Some(&["client_secret_post"])).posts_secret().unwrap());
        assert!(with(Some(&["private_key_jwt"])).posts_secret().is_err());
    }

    /// A provider of our own: an RSA key, its JWK, and ID tokens signed with it.
    struct Provider {
        key: EncodingKey,
        jwk: Jwk,
        client: SsoClient,
    }

    fn provider() -> Provider {
        use std::sync::OnceLock;
        static KEY: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
        let private = KEY.get_or_init(|| rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap());
        let public = private.to_public_key();
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": "k1",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        }))
        .unwrap();
        Provider {
            key: EncodingKey::from_rsa_der(private.to_pkcs1_der().unwrap().as_bytes()),
            jwk,
            client: SsoClient {
                district_id: DistrictId::new(),
                issuer: Issuer::parse("https://idp.example").unwrap(),
                client_id: ClientId::parse("tidings").unwrap(),
                client_secret: ClientSecret::parse("s").unwrap(),
            },
        }
    }

    /// When the tests' tokens are issued and checked.
    const NOW: i64 = 1_800_000_000;

    fn claims(change: impl FnOnce(&mut serde_json::Value)) -> serde_json::Value {
        let now = NOW;
        let mut claims = json!({
            "iss": "https://idp.example", "aud": "tidings", "sub": "1234",
            "iat": now, "exp": now + 300, "nonce": "n-1",
            "email": "Ana@District.example.org", "email_verified": true,
        });
        change(&mut claims);
        claims
    }

    fn signed(p: &Provider, kid: Option<&str>, claims: &serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, claims, &p.key).unwrap()
    }

    fn check(p: &Provider, token: &str) -> Result<Identity, OidcError> {
        check_at(p, token, NOW)
    }

    fn check_at(p: &Provider, token: &str, now: i64) -> Result<Identity, OidcError> {
        verify_id_token(token, std::slice::from_ref(&p.jwk), &p.client, "n-1", now)
    }

    #[test]
    fn a_token_is_good_from_nbf_to_exp_give_or_take_a_minute() {
        let p = provider();
        let token = signed(&p, Some("k1"), &claims(|c| c["nbf"] = json!(NOW + 120)));
        let why = |now| match check_at(&p, &token, now) {
            Ok(_) => "good".to_owned(),
            Err(OidcError::InvalidToken(why)) => why,
            Err(e) => format!("{e:?}"),
        };
        // Issued now, usable from two minutes on, expiring in five: the provider's
        // clock may be a minute off ours either way.
        assert_eq!(why(NOW + 59), "it is not valid yet");
        assert_eq!(why(NOW + 60), "good");
        assert_eq!(why(NOW + 300 + 60), "good");
        assert_eq!(why(NOW + 300 + 61), "it has expired");
    }

    #[test]
    fn a_genuine_id_token_names_its_verified_email() {
        let p = provider();
        let identity = check(&p, &signed(&p, Some("k1"), &claims(|_| {}))).unwrap();
        assert_eq!(identity.email, "Ana@District.example.org");
        // Entra: no email_verified, but its xms_edov optional claim.
        let entra = claims(|c| {
            c.as_object_mut().unwrap().remove("email_verified");
            c["xms_edov"] = json!(true);
        });
        assert!(check(&p, &signed(&p, Some("k1"), &entra)).is_ok());
        // Several audiences, we the authorized party.
        let azp = claims(|c| {
            c["aud"] = json!(["tidings", "other"]);
            c["azp"] = json!("tidings");
        });
        assert!(check(&p, &signed(&p, Some("k1"), &azp)).is_ok());
    }

    #[test]
    fn forged_foreign_stale_or_unverified_id_tokens_are_refused() {
        let p = provider();
        let refused = |token: &str, why: &str| {
            let error = check(&p, token).expect_err(why).to_string();
            assert!(error.contains(why), "{why}: {error}");
        };
        let good = signed(&p, Some("k1"), &claims(|_| {}));
        // A changed payload, the signature kept.
        let parts: Vec<&str> = good.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(&claims(|c| c["email"] = json!("boss@district.example.org")))
                .unwrap(),
        );
        refused(
            &format!("{}.{forged_payload}.{}", parts[0], parts[2]),
            "signature does not verify",
        );
        // Signed with a key the provider does not publish.
        refused(&signed(&p, Some("k2"), &claims(|_| {})), "does not publish");
        // HS256 with the public key as its secret (the classic confusion).
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(|_| {}),
            &EncodingKey::from_secret(b"k1"),
        )
        .unwrap();
        refused(&hs, "asymmetric");
        refused(
            &signed(
                &p,
                Some("k1"),
                &claims(|c| c["iss"] = json!("https://evil.example")),
            ),
            "another issuer",
        );
        refused(
            &signed(
                &p,
                Some("k1"),
                &claims(|c| c["aud"] = json!("someone-else")),
            ),
            "another client",
        );
        refused(
            &signed(
                &p,
                Some("k1"),
                &claims(|c| {
                    c["aud"] = json!(["tidings", "other"]);
                    c["azp"] = json!("other");
                }),
            ),
            "several clients",
        );
        refused(
            &signed(&p, Some("k1"), &claims(|c| c["exp"] = json!(NOW - 3600))),
            "expired",
        );
        // `exp` of the wrong type is not "no exp" (CVE-2026-25537).
        refused(
            &signed(&p, Some("k1"), &claims(|c| c["exp"] = json!("never"))),
            "",
        );
        refused(
            &signed(&p, Some("k1"), &claims(|c| c["nonce"] = json!("n-2"))),
            "nonce",
        );
        refused(
            &signed(
                &p,
                Some("k1"),
                &claims(|c| {
                    c.as_object_mut().unwrap().remove("nonce");
                }),
            ),
            "nonce",
        );
        refused(
            &signed(
                &p,
                Some("k1"),
                &claims(|c| c["email_verified"] = json!(false)),
            ),
            "verified",
        );
        refused(
            &signed(
                &p,
                Some("k1"),
                &claims(|c| {
                    c.as_object_mut().unwrap().remove("email_verified");
                }),
            ),
            "verified",
        );
        refused(
            &signed(
                &p,
                Some("k1"),
                &claims(|c| {
                    c.as_object_mut().unwrap().remove("email");
                }),
            ),
            "no email",
        );
        refused("not.a.jwt", "not a JWT");
    }
}
