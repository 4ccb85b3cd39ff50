//! The ways a message reaches a guardian.

use crate::stored_enum::stored_enum;

stored_enum! {
    /// A delivery channel. A message fans out to one delivery per guardian and channel.
    Channel("channel") {
        Sms => "sms",
        Email => "email",
        Push => "push",
    }
}
