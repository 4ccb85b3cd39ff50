//! Addresses that messages go to, parsed at the edge. Once you hold a [`PhoneNumber`] it
//! is E.164; once you hold an [`EmailAddress`] it is a syntactically valid address.

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
    }
}
