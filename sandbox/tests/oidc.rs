//! The sandbox's OpenID Connect provider over HTTP, as a relying party uses it:
//! discovery, the authorization page, the code for an ID token with PKCE, and the token's
//! signature against the published keys.

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tidings_sandbox::oidc::{IdentityProvider, ProviderConfig};
use tidings_sandbox::server::SandboxConfig;
use tidings_sandbox::InProcessProvider;

const REDIRECT: &str = "https://tidings.example.org/sign-in/oidc/callback";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

struct Idp {
    issuer: String,
    config: ProviderConfig,
    http: reqwest::Client,
}

async fn start() -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let config = ProviderConfig::at(&base);
    let provider = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || IdentityProvider::new(config))
            .await
            .unwrap()
    };
    let settings = SandboxConfig {
        identity_provider: Some(Arc::new(provider)),
        ..SandboxConfig::default()
    };
    let app = tidings_sandbox::server::router(InProcessProvider::default(), settings);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Idp {
        issuer: config.issuer.clone(),
        config,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
    }
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn query_of(location: &str) -> HashMap<String, String> {
    reqwest::Url::parse(location)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect()
}

impl Idp {
    async fn discovery(&self) -> Value {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The authorization page for a request with these parameters changed.
    async fn authorize(&self, change: &[(&str, &str)]) -> reqwest::Response {
        let challenge = challenge(VERIFIER);
        let mut params: Vec<(&str, &str)> = vec![
            ("response_type", "code"),
            ("client_id", &self.config.client_id),
            ("redirect_uri", REDIRECT),
            ("scope", "openid email profile"),
            ("state", "state-1"),
            ("nonce", "nonce-1"),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("login_hint", "ana@district.example.org"),
        ];
        for (name, value) in change {
            params.retain(|(n, _)| n != name);
            if !value.is_empty() {
                params.push((name, value));
            }
        }
        self.http
            .get(format!("{}/authorize", self.issuer))
            .query(&params)
            .send()
            .await
            .unwrap()
    }

    /// Approves as `email` (as the page's form posts) and returns where the browser goes.
    async fn approve(&self, email: &str, decision: &str) -> HashMap<String, String> {
        let challenge = challenge(VERIFIER);
        let answer = self
            .http
            .post(format!("{}/authorize", self.issuer))
            .form(&[
                ("client_id", self.config.client_id.as_str()),
                ("redirect_uri", REDIRECT),
                ("state", "state-1"),
                ("nonce", "nonce-1"),
                ("code_challenge", &challenge),
                ("email", email),
                ("verified", "yes"),
                ("decision", decision),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let location = answer.headers()["location"].to_str().unwrap();
        assert!(location.starts_with(REDIRECT), "{location}");
        query_of(location)
    }

    async fn exchange(
        &self,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.post(format!("{}/token", self.issuer)).form(form);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let answer = request.send().await.unwrap();
        (answer.status(), answer.json().await.unwrap())
    }
}

#[tokio::test]
async fn the_discovery_document_and_keys_describe_a_code_flow_with_pkce() {
    let idp = start().await;
    let discovery = idp.discovery().await;
    assert_eq!(discovery["issuer"], idp.issuer);
    assert_eq!(
        discovery["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    for endpoint in ["authorization_endpoint", "token_endpoint", "jwks_uri"] {
        assert!(
            discovery[endpoint]
                .as_str()
                .unwrap()
                .starts_with(&idp.issuer),
            "{endpoint}"
        );
    }
    let keys: JwkSet = idp
        .http
        .get(discovery["jwks_uri"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(keys.keys.len(), 1);
    assert!(keys.keys[0].common.key_id.is_some());
}

#[tokio::test]
async fn a_code_is_exchanged_once_for_an_id_token_signed_with_the_published_key() {
    let idp = start().await;
    let page = idp.authorize(&[]).await;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        html.contains("value=\"ana@district.example.org\""),
        "login_hint prefills"
    );
    assert!(html.contains("name=\"state\" value=\"state-1\""));

    let back = idp.approve("Ana@District.example.org", "approve").await;
    assert_eq!(back["state"], "state-1");
    assert_eq!(back["iss"], idp.issuer);
    let code = back["code"].clone();
    let config = &idp.config;
    let form = |verifier: &'static str, redirect: &'static str| {
        vec![
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", redirect),
            ("code_verifier", verifier),
        ]
    };
    // The client secret is checked, whichever way it comes.
    let (status, refused) = idp
        .exchange(
            &form(VERIFIER, REDIRECT),
            Some((&config.client_id, "wrong")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused["error"], "invalid_client");

    let (status, answer) = idp
        .exchange(
            &form(VERIFIER, REDIRECT),
            Some((&config.client_id, &config.client_secret)),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let id_token = answer["id_token"].as_str().unwrap();

    // Signed with the key the JWKS publishes, for this client, with the nonce.
    let keys: JwkSet = idp
        .http
        .get(format!("{}/jwks", idp.issuer))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(id_token).unwrap();
    assert_eq!(header.alg, Algorithm::RS256);
    let jwk = keys.find(header.kid.as_deref().unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_issuer(&[&idp.issuer]);
    validation.set_audience(&[&config.client_id]);
    let claims =
        jsonwebtoken::decode::<Value>(id_token, &DecodingKey::from_jwk(jwk).unwrap(), &validation)
            .unwrap()
            .claims;
    assert_eq!(claims["nonce"], "nonce-1");
    assert_eq!(claims["email"], "Ana@District.example.org");
    assert_eq!(claims["email_verified"], true);

    // Used once.
    let (status, again) = idp
        .exchange(
            &form(VERIFIER, REDIRECT),
            Some((&config.client_id, &config.client_secret)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(again["error"], "invalid_grant");
}

#[tokio::test]
async fn a_wrong_verifier_or_redirect_uri_spends_the_code_for_nothing() {
    let idp = start().await;
    let config = idp.config.clone();
    let with_secret = |code: String, verifier: &'static str, redirect: &'static str| {
        vec![
            ("grant_type".to_owned(), "authorization_code".to_owned()),
            ("code".to_owned(), code),
            ("redirect_uri".to_owned(), redirect.to_owned()),
            ("code_verifier".to_owned(), verifier.to_owned()),
            ("client_id".to_owned(), config.client_id.clone()),
            ("client_secret".to_owned(), config.client_secret.clone()),
        ]
    };
    for (verifier, redirect, why) in [
        (
            "another-verifier-another-verifier-another-v",
            REDIRECT,
            "PKCE",
        ),
        (VERIFIER, "https://evil.example/callback", "redirect_uri"),
    ] {
        let code = idp.approve("ana@district.example.org", "approve").await["code"].clone();
        let form = with_secret(code.clone(), verifier, redirect);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, refused) = idp.exchange(&form, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(refused["error"], "invalid_grant");
        assert!(
            refused["error_description"].as_str().unwrap().contains(why),
            "{refused}"
        );
        // The right request now finds the code spent.
        let form = with_secret(code, VERIFIER, REDIRECT);
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (status, _) = idp.exchange(&form, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn bad_authorization_requests_are_refused_and_cancelling_says_access_denied() {
    let idp = start().await;
    // An unknown client is never redirected to.
    let unknown = idp.authorize(&[("client_id", "someone-else")]).await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    // Without PKCE (or with plain), back with invalid_request and the state.
    for change in [
        [("code_challenge", ""), ("code_challenge_method", "")],
        [("code_challenge_method", "plain"), ("state", "state-1")],
    ] {
        let answer = idp.authorize(&change).await;
        assert_eq!(answer.status(), StatusCode::SEE_OTHER);
        let back = query_of(answer.headers()["location"].to_str().unwrap());
        assert_eq!(back["error"], "invalid_request");
        assert_eq!(back["state"], "state-1");
    }
    let no_openid = idp.authorize(&[("scope", "email")]).await;
    assert_eq!(no_openid.status(), StatusCode::SEE_OTHER);

    let cancelled = idp.approve("ana@district.example.org", "deny").await;
    assert_eq!(cancelled["error"], "access_denied");
    assert_eq!(cancelled["state"], "state-1");
    assert!(!cancelled.contains_key("code"));
}
