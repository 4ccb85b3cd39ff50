//! Single sign-on for staff with OpenID Connect (Google Workspace, Microsoft Entra, or any
//! provider that speaks it): what a district administrator configures — the identity
//! provider's issuer and the client Tidings is registered as there — parsed at the edge.
//! The protocol itself (discovery, the authorization code flow, checking ID tokens) is
//! the web admin's; this module holds no HTTP.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A value of the settings that cannot be used; the text says which and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSso(pub String);

/// An identity provider's issuer identifier: an `https` URL without query or fragment
/// (`http` only on this machine, for the sandbox's provider). Kept exactly as given, since
/// ID tokens must name it exactly (`iss`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer(String);

impl Issuer {
    pub fn parse(value: &str) -> Result<Self, InvalidSso> {
        let value = value.trim();
        let bad = |why: &str| Err(InvalidSso(format!("the issuer {why}")));
        if value.chars().count() > 500 {
            return bad("is longer than 500 characters");
        }
        if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return bad("holds a space or a control character");
        }
        let Ok(url) = url::Url::parse(value) else {
            return bad("is not a URL (such as https://accounts.google.com)");
        };
        if !https_or_loopback(&url) {
            return bad("must be an https:// URL");
        }
        if url.host().is_none() || url.query().is_some() || url.fragment().is_some() {
            return bad("must name a host and have no ? or # part");
        }
        if !url.username().is_empty() || url.password().is_some() {
            return bad("must not hold a user name or password");
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Where the provider's discovery document is (OpenID Connect Discovery 1.0 §4).
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.0.trim_end_matches('/')
        )
    }
}

impl std::fmt::Display for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a provider's URL may be trusted with a sign-in: `https`, or `http` on this
/// machine only (the sandbox's provider).
pub fn https_or_loopback(url: &url::Url) -> bool {
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => loopback,
        _ => false,
    }
}

/// Printable text of 1 to `max` characters, trimmed.
fn printable(what: &str, value: &str, max: usize) -> Result<String, InvalidSso> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max {
        return Err(InvalidSso(format!("{what} needs 1 to {max} characters")));
    }
    if value.chars().any(char::is_control) {
        return Err(InvalidSso(format!("{what} holds a control character")));
    }
    Ok(value.to_owned())
}

/// The client id Tidings is registered as at the identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientId(String);

impl ClientId {
    pub fn parse(value: &str) -> Result<Self, InvalidSso> {
        printable("the client id", value, 500).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The client's secret. Never printed: `Debug` hides it, and [`ClientSecret::reveal`] is
/// for the one request to the provider's token endpoint.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    pub fn parse(value: &str) -> Result<Self, InvalidSso> {
        printable("the client secret", value, 2000).map(Self)
    }

    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(…)")
    }
}

/// A district's single sign-on as its administrators see it: never the secret, only that
/// one is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SsoSettings {
    pub issuer: String,
    pub client_id: String,
    /// A client secret is kept (always, once configured).
    pub client_secret_set: bool,
    /// The kept secret can be read with this installation's link keys; false once the key
    /// it was sealed under is retired (enter it again).
    pub client_secret_readable: bool,
    pub updated_at: DateTime<Utc>,
}

/// What signing a district's staff in takes: the provider and the client, its secret
/// opened.
#[derive(Debug, Clone)]
pub struct SsoClient {
    pub district_id: crate::DistrictId,
    pub issuer: Issuer,
    pub client_id: ClientId,
    pub client_secret: ClientSecret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuers_are_https_urls_or_loopback_http() {
        for good in [
            "https://accounts.google.com",
            "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
            "https://tenant.example.auth0.com/",
            "http://127.0.0.1:8080/_sandbox/oidc",
            "http://localhost:9000/_sandbox/oidc",
            "  https://accounts.google.com  ",
        ] {
            let issuer = Issuer::parse(good).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert_eq!(issuer.as_str(), good.trim(), "kept exactly");
        }
        for bad in [
            "",
            "accounts.google.com",
            "http://accounts.google.com",
            "ftp://accounts.google.com",
            "https://accounts.google.com/?x=1",
            "https://accounts.google.com/#top",
            "https://user:pw@accounts.google.com",
            "http://10.0.0.1/oidc",
            "https://accounts.google.com/\0",
            "https://accounts.google.com/a b",
        ] {
            assert!(Issuer::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            Issuer::parse("https://tenant.example.auth0.com/")
                .unwrap()
                .discovery_url(),
            "https://tenant.example.auth0.com/.well-known/openid-configuration"
        );
    }

    #[test]
    fn a_client_secret_never_prints() {
        let secret = ClientSecret::parse("GOCSPX-abc").unwrap();
        assert!(!format!("{secret:?}").contains("GOCSPX"));
        assert_eq!(secret.reveal(), "GOCSPX-abc");
        assert!(ClientSecret::parse(" ").is_err());
        assert!(ClientId::parse("a\nb").is_err());
        assert!(ClientId::parse(&"x".repeat(501)).is_err());
    }
}
