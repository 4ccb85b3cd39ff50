//! Acknowledgments: a guardian says they have read a message — by the link in a text or
//! an email, from the app, or by texting the keyword back. However it comes, it is the
//! same use case: the recipient is marked, the delivery it came through becomes ACKED
//! and the guardian's deliveries of the message not sent yet are cancelled, in one
//! transaction, each move decided by the state machine and audited as the guardian's
//! through the way they used. Twice is once.

use super::{ServiceError, Services};
use crate::delivery::Actor;
use crate::store::AckOutcome;
use crate::{Channel, RecipientId};

/// The way a guardian acknowledged.
#[derive(Debug, Clone, Copy)]
pub enum AckVia<'a> {
    /// The signed link of a text or an email (the channel it came by).
    Link(Channel),
    /// The guardian app, signed in with this session.
    App(uuid::Uuid),
    /// A text back with the acknowledgment keyword; the provider's id of that text.
    SmsReply(&'a str),
}

impl AckVia<'_> {
    /// The delivery channel the acknowledgment counts for.
    pub fn channel(&self) -> Channel {
        match self {
            AckVia::Link(channel) => *channel,
            AckVia::App(_) => Channel::Push,
            AckVia::SmsReply(_) => Channel::Sms,
        }
    }

    /// Who moved the deliveries, as their events name it.
    pub fn actor(&self) -> Actor {
        match self {
            AckVia::Link(channel) => Actor::guardian(format!("link:{channel}")),
            AckVia::App(session) => Actor::guardian(format!("app:{session}")),
            AckVia::SmsReply(provider_message_id) => {
                Actor::guardian(format!("sms:{provider_message_id}"))
            }
        }
    }
}

impl Services {
    /// Records, now, the acknowledgment of `recipient` (a guardian's row of a message):
    /// the one path the link pages and the guardian app take (a text with the keyword is
    /// taken with its acknowledgment by [`super::inbound`]).
    pub async fn acknowledge(
        &self,
        recipient: RecipientId,
        via: AckVia<'_>,
    ) -> Result<AckOutcome, ServiceError> {
        let at = self.clock.now();
        Ok(self
            .store
            .acknowledge(*recipient.as_uuid(), via.channel(), &via.actor(), at)
            .await?)
    }
}
