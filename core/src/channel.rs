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

stored_enum! {
    /// The push service of a guardian's device: its token is only good there.
    PushPlatform("push_platform") {
        Apns => "apns",
        Fcm => "fcm",
        /// A browser's (the guardian app's) Web Push subscription.
        WebPush => "webpush",
    }
}
