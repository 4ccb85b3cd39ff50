//! Tidings' domain: the types every other crate speaks, the delivery state machine, and
//! the [`Store`](store::Store) with its SQLite and PostgreSQL implementations.
//!
//! Nothing here knows about HTTP, providers or the CLI. Values are parsed at the edge into
//! the newtypes below; once a crate holds a [`PhoneNumber`] or a [`DeliveryId`], it is valid.

pub mod audience;
pub mod channel;
pub mod clock;
pub mod contact;
pub mod delivery;
pub mod fanout;
pub mod id;
pub mod link;
pub mod log;
pub mod message;
pub mod quiet_hours;
pub mod retention;
pub mod roster;
pub mod sealed;
pub mod secret;
pub mod segments;
pub mod services;
pub mod sso;
pub mod staff;
pub mod store;
mod stored_enum;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod words;

pub use channel::{Channel, PushPlatform};
pub use contact::{
    EmailAddress, InvalidEmailAddress, InvalidPhoneNumber, InvalidWebPushSubscription, PhoneNumber,
    WebPushSubscription,
};
pub use delivery::{Decision, DeliveryEvent, DeliveryState};
pub use id::*;
pub use message::{DeliveryGuarantee, Lane, MessageKind};
pub use staff::{Role, Staff};
pub use stored_enum::UnknownName;
