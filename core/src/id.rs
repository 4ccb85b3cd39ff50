//! Identifiers. Every row id is a UUIDv7 (time-ordered, so indexes stay append-mostly),
//! wrapped in a newtype per entity so that a guardian id cannot be passed where a
//! delivery id is expected.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A string that should have been an id of ours and is not.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} id {value:?} is not a UUID")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident => $kind:literal;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        /// A UUID in the OpenAPI document.
        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .format(Some(utoipa::openapi::schema::SchemaFormat::KnownFormat(
                        utoipa::openapi::schema::KnownFormat::Uuid,
                    )))
                    .into()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|_| InvalidId { kind: $kind, value: s.to_owned() })
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    )*};
}

ids! {
    /// A district: the tenant. Every row of every table carries one.
    DistrictId => "district";
    SchoolId => "school";
    StaffId => "staff";
    ApiTokenId => "API token";
    StudentId => "student";
    ClassId => "class";
    GuardianId => "guardian";
    ContactPointId => "contact point";
    MessageId => "message";
    /// One guardian's receipt of one message: the unit that is acknowledged.
    RecipientId => "recipient";
    /// One message to one guardian over one channel: the unit that is sent.
    DeliveryId => "delivery";
    /// One run of a roster import.
    ImportId => "import";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_version_7_and_increase_over_time() {
        let first = DeliveryId::new();
        let second = DeliveryId::new();
        assert_eq!(first.as_uuid().get_version_num(), 7);
        assert!(second > first, "UUIDv7 ids sort by creation time");
    }

    #[test]
    fn ids_parse_from_their_display_form_and_reject_garbage() {
        let id = GuardianId::new();
        assert_eq!(id.to_string().parse::<GuardianId>(), Ok(id));
        let err = "not-a-uuid".parse::<GuardianId>().unwrap_err();
        assert_eq!(err.to_string(), r#"guardian id "not-a-uuid" is not a UUID"#);
    }
}
