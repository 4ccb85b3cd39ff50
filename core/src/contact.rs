//! Addresses that messages go to, parsed at the edge. Once you hold a [`PhoneNumber`] it
//! is E.164; once you hold an [`EmailAddress`] it is a syntactically valid address; once
//! you hold a [`WebPushSubscription`] its endpoint is a URL and its keys have the sizes
//! RFC 8291 gives them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a phone number was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPhoneNumber {
    #[error("{0:?} is not a phone number")]
    Unparseable(String),
    #[error("{0:?} is not a valid number for its region")]
    NotValid(String),
    #[error("unknown default region {0:?} (expected an ISO 3166 code such as US)")]
    UnknownRegion(String),
}

/// A phone number in E.164 form (`+15551234567`), validated against the numbering plan
/// of its country.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses a number written in international form (`+1 555 123 4567`, `+44 20 …`).
    pub fn parse(input: &str) -> Result<Self, InvalidPhoneNumber> {
        Self::parse_with_region(input, None)
    }

    /// Parses a number that may be written nationally (`(555) 123-4567`), reading it in
    /// `region` (ISO 3166 alpha-2, e.g. "US") when it has no country code.
    pub fn parse_in(input: &str, region: &str) -> Result<Self, InvalidPhoneNumber> {
        let id = region
            .to_ascii_uppercase()
            .parse::<phonenumber::country::Id>()
            .map_err(|_| InvalidPhoneNumber::UnknownRegion(region.to_owned()))?;
        Self::parse_with_region(input, Some(id))
    }

    fn parse_with_region(
        input: &str,
        region: Option<phonenumber::country::Id>,
    ) -> Result<Self, InvalidPhoneNumber> {
        let trimmed = input.trim();
        let number = phonenumber::parse(region, trimmed)
            .map_err(|_| InvalidPhoneNumber::Unparseable(trimmed.to_owned()))?;
        if !phonenumber::is_valid(&number) {
            return Err(InvalidPhoneNumber::NotValid(trimmed.to_owned()));
        }
        Ok(Self(
            number.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    /// The E.164 form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for PhoneNumber {
    type Err = InvalidPhoneNumber;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for PhoneNumber {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PhoneNumber {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// An address that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an email address")]
pub struct InvalidEmailAddress(pub String);

/// An email address, trimmed and lower-cased (staff sign in with it; mailbox providers
/// treat the local part case-insensitively in practice).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EmailAddress(String);

/// A string of email format in the OpenAPI document.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for EmailAddress {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .format(Some(utoipa::openapi::schema::SchemaFormat::Custom(
                "email".into(),
            )))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for EmailAddress {}

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, InvalidEmailAddress> {
        let normalized = input.trim().to_lowercase();
        let parsed = email_address::EmailAddress::from_str(&normalized)
            .map_err(|_| InvalidEmailAddress(input.trim().to_owned()))?;
        // A bare `user@host` is valid per RFC 5321 but never a guardian's or staff member's
        // mailbox; a display name ("Ann <ann@x.org>") is not an address.
        if !parsed.domain().contains('.') || parsed.email() != normalized {
            return Err(InvalidEmailAddress(input.trim().to_owned()));
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map_or("", |(_, domain)| domain)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for EmailAddress {
    type Err = InvalidEmailAddress;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for EmailAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EmailAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

/// Why a browser's push subscription was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a Web Push subscription: {0}")]
pub struct InvalidWebPushSubscription(pub &'static str);

/// A browser's Web Push subscription (`PushSubscription.toJSON()` in the guardian app):
/// the push service's endpoint to POST to, and the keys the payload is encrypted for
/// (RFC 8291): `p256dh`, the browser's P-256 public key (65 bytes, uncompressed), and
/// `auth`, its 16-byte secret, both URL-safe base64.
///
/// Kept as one device token, `ENDPOINT#p256dh=KEY&auth=SECRET` ([`token`](Self::token)):
/// the endpoint stays readable first, and a fragment is never sent to the push service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebPushSubscription {
    pub endpoint: url::Url,
    pub p256dh: String,
    pub auth: String,
}

impl WebPushSubscription {
    /// The longest endpoint taken (browsers' are under 600 characters).
    pub const MAX_ENDPOINT: usize = 2048;

    pub fn new(
        endpoint: &str,
        p256dh: &str,
        auth: &str,
    ) -> Result<Self, InvalidWebPushSubscription> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let endpoint = endpoint.trim();
        if endpoint.len() > Self::MAX_ENDPOINT {
            return Err(InvalidWebPushSubscription(
                "the endpoint is longer than 2048 characters",
            ));
        }
        let url = url::Url::parse(endpoint)
            .map_err(|_| InvalidWebPushSubscription("the endpoint is not a URL"))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(InvalidWebPushSubscription(
                "the endpoint is not an http(s) URL",
            ));
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(InvalidWebPushSubscription(
                "the endpoint has a fragment or credentials",
            ));
        }
        // Browsers give the keys URL-safe and unpadded; padding is forgiven.
        let decode = |key: &str| URL_SAFE_NO_PAD.decode(key.trim().trim_end_matches('='));
        let p256dh = p256dh.trim().trim_end_matches('=');
        match decode(p256dh) {
            Ok(key) if key.len() == 65 && key[0] == 4 => {}
            _ => {
                return Err(InvalidWebPushSubscription(
                    "keys.p256dh is not an uncompressed P-256 public key in URL-safe base64",
                ))
            }
        }
        let auth = auth.trim().trim_end_matches('=');
        match decode(auth) {
            Ok(secret) if secret.len() == 16 => {}
            _ => {
                return Err(InvalidWebPushSubscription(
                    "keys.auth is not a 16-byte secret in URL-safe base64",
                ))
            }
        }
        Ok(Self {
            endpoint: url,
            p256dh: p256dh.to_owned(),
            auth: auth.to_owned(),
        })
    }

    /// Reads a device token written by [`token`](Self::token).
    pub fn parse_token(token: &str) -> Result<Self, InvalidWebPushSubscription> {
        let (endpoint, keys) = token
            .split_once('#')
            .ok_or(InvalidWebPushSubscription("the token has no keys"))?;
        let mut p256dh = None;
        let mut auth = None;
        for pair in keys.split('&') {
            match pair.split_once('=') {
                Some(("p256dh", key)) => p256dh = Some(key),
                Some(("auth", secret)) => auth = Some(secret),
                _ => {
                    return Err(InvalidWebPushSubscription(
                        "the token's keys are unreadable",
                    ))
                }
            }
        }
        match (p256dh, auth) {
            (Some(p256dh), Some(auth)) => Self::new(endpoint, p256dh, auth),
            _ => Err(InvalidWebPushSubscription("the token lacks p256dh or auth")),
        }
    }

    /// The device token a contact point keeps.
    pub fn token(&self) -> String {
        format!(
            "{}#p256dh={}&auth={}",
            self.endpoint, self.p256dh, self.auth
        )
    }

    /// The push service this subscription belongs to, `scheme://host[:port]`: its rate
    /// limit and circuit breaker are this origin's.
    pub fn origin(&self) -> String {
        self.endpoint.origin().ascii_serialization()
    }

    /// The origin of a token [`token`](Self::token) wrote, read off its text without
    /// parsing the subscription (the dispatcher asks for it on every send): the token's
    /// endpoint is a normalised URL, so this is [`origin`](Self::origin).
    pub fn origin_of_token(token: &str) -> Option<&str> {
        let endpoint = token.split('#').next()?;
        let host_at = endpoint.find("://")? + 3;
        let end = endpoint[host_at..]
            .find('/')
            .map_or(endpoint.len(), |i| host_at + i);
        Some(&endpoint[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn international_numbers_become_e164() {
        let n = PhoneNumber::parse("+1 (202) 555-0143").unwrap();
        assert_eq!(n.as_str(), "+12025550143");
        let uk = PhoneNumber::parse("+44 20 7946 0958").unwrap();
        assert_eq!(uk.as_str(), "+442079460958");
    }

    #[test]
    fn national_numbers_are_read_in_the_default_region() {
        let n = PhoneNumber::parse_in("(202) 555-0143", "us").unwrap();
        assert_eq!(n.as_str(), "+12025550143");
        assert_eq!(
            PhoneNumber::parse_in("020 7946 0958", "GB")
                .unwrap()
                .as_str(),
            "+442079460958"
        );
    }

    #[test]
    fn invalid_numbers_are_refused_with_the_reason() {
        assert!(matches!(
            PhoneNumber::parse("call me maybe"),
            Err(InvalidPhoneNumber::Unparseable(_))
        ));
        assert!(matches!(
            PhoneNumber::parse("+1 202 555"),
            Err(InvalidPhoneNumber::NotValid(_) | InvalidPhoneNumber::Unparseable(_))
        ));
        assert!(
            PhoneNumber::parse("(202) 555-0143").is_err(),
            "no region, no country code"
        );
        assert_eq!(
            PhoneNumber::parse_in("5550143", "XX"),
            Err(InvalidPhoneNumber::UnknownRegion("XX".into()))
        );
    }

    #[test]
    fn email_addresses_are_normalised_and_checked() {
        let e = EmailAddress::parse("  Ann.Lee@Example.ORG ").unwrap();
        assert_eq!(e.as_str(), "ann.lee@example.org");
        assert_eq!(e.domain(), "example.org");
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.org",
            "ann@localhost",
            "Ann <ann@example.org>",
            "a b@example.org",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    const P256DH: &str =
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4";
    const AUTH: &str = "BTBZMqHH6r4Tts7J_aSIgg";

    #[test]
    fn a_web_push_subscription_round_trips_through_its_token() {
        let s = WebPushSubscription::new(
            "https://push.example.net/push/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV",
            P256DH,
            AUTH,
        )
        .unwrap();
        let token = s.token();
        assert!(token
            .starts_with("https://push.example.net/push/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV#p256dh="));
        assert_eq!(WebPushSubscription::parse_token(&token), Ok(s.clone()));
        assert_eq!(s.origin(), "https://push.example.net");
        assert_eq!(
            WebPushSubscription::origin_of_token(&token),
            Some("https://push.example.net")
        );
        let with_port =
            WebPushSubscription::new("HTTP://127.0.0.1:8090/push/x", P256DH, AUTH).unwrap();
        assert_eq!(
            WebPushSubscription::origin_of_token(&with_port.token()),
            Some(with_port.origin().as_str())
        );
        // Padding is forgiven and dropped, so one subscription has one token.
        let padded =
            WebPushSubscription::new(s.endpoint.as_str(), P256DH, &format!("{AUTH}==")).unwrap();
        assert_eq!(padded.token(), token);
    }

    #[test]
    fn a_web_push_subscription_with_bad_parts_is_refused_with_the_reason() {
        let refused = |endpoint: &str, p256dh: &str, auth: &str| {
            WebPushSubscription::new(endpoint, p256dh, auth)
                .unwrap_err()
                .0
        };
        assert!(refused("ftp://push.example.net/x", P256DH, AUTH).contains("http(s)"));
        assert!(refused("https://push.example.net/x#frag", P256DH, AUTH).contains("fragment"));
        assert!(refused("https://user:pw@push.example.net/x", P256DH, AUTH).contains("credentials"));
        assert!(refused("not a url", P256DH, AUTH).contains("not a URL"));
        assert!(refused("https://push.example.net/x", &P256DH[..40], AUTH).contains("p256dh"));
        assert!(refused("https://push.example.net/x", P256DH, "c2hvcnQ").contains("auth"));
        let long = format!("https://push.example.net/{}", "a".repeat(2048));
        assert!(refused(&long, P256DH, AUTH).contains("2048"));
        assert!(WebPushSubscription::parse_token("https://push.example.net/x").is_err());
        assert!(
            WebPushSubscription::parse_token("https://push.example.net/x#p256dh=AAAA").is_err()
        );
    }

    proptest! {
        /// The parser never panics, and whatever it accepts is canonical: E.164 that
        /// parses back to itself.
        #[test]
        fn phone_parser_is_total_and_its_output_is_a_fixed_point(input in ".{0,24}") {
            if let Ok(n) = PhoneNumber::parse(&input) {
                prop_assert!(n.as_str().starts_with('+'));
                prop_assert!(n.as_str()[1..].bytes().all(|b| b.is_ascii_digit()));
                prop_assert_eq!(PhoneNumber::parse(n.as_str()), Ok(n.clone()));
            }
        }

        #[test]
        fn national_us_numbers_round_trip(area in 201u32..990, exchange in 200u32..999, line in 0u32..9999) {
            let raw = format!("({area}) {exchange}-{line:04}");
            if let Ok(n) = PhoneNumber::parse_in(&raw, "US") {
                prop_assert_eq!(n.as_str(), format!("+1{area}{exchange}{line:04}"));
            }
        }

        #[test]
        fn email_parser_is_total_and_its_output_is_a_fixed_point(input in "[ -~]{0,40}") {
            if let Ok(e) = EmailAddress::parse(&input) {
                prop_assert_eq!(EmailAddress::parse(e.as_str()), Ok(e.clone()));
                prop_assert!(!e.domain().is_empty());
            }
        }
        /// Any subscription's token reads back as itself, and its origin read off the
        /// text is the one the URL parser gives.
        #[test]
        fn a_subscriptions_token_gives_back_it_and_its_origin(
            scheme in "(https|http|HTTPS)",
            host in "[a-zA-Z][a-z0-9-]{0,11}(\\.[a-z]{2,6}){0,2}",
            port in proptest::option::of(1u16..),
            path in "(/[A-Za-z0-9_-]{0,20}){0,3}",
        ) {
            // A label starting "xn--" is punycode, which these hosts are not (CI drew "Xn--").
            prop_assume!(!host.to_ascii_lowercase().split('.').any(|l| l.starts_with("xn--")));
            let port = port.map(|p| format!(":{p}")).unwrap_or_default();
            let endpoint = format!("{scheme}://{host}{port}{path}");
            let s = WebPushSubscription::new(&endpoint, P256DH, AUTH).unwrap();
            let token = s.token();
            prop_assert_eq!(WebPushSubscription::parse_token(&token), Ok(s.clone()));
            let origin = s.origin();
            prop_assert_eq!(WebPushSubscription::origin_of_token(&token), Some(origin.as_str()));
        }

        #[test]
        fn web_push_token_parser_is_total_and_its_output_is_a_fixed_point(input in "[ -~]{0,120}") {
            if let Ok(s) = WebPushSubscription::parse_token(&input) {
                prop_assert_eq!(WebPushSubscription::parse_token(&s.token()), Ok(s.clone()));
            }
        }
    }
}
