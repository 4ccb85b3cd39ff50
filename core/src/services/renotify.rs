//! Reminding: a message that asked for acknowledgment is sent again, as a new message
//! linked to it, to the guardians who have not acknowledged it yet.

use super::send::{channels, refuse, Sent, Words};
use super::{claim, message_scope, Once, Refusal, Reply, ServiceError, Services};
use crate::audience::Audience;
use crate::fanout::Draft;
use crate::{MessageId, Role, Staff};

/// A reminder of one message.
#[derive(Debug, Clone, Default)]
pub struct Renotify {
    /// Channels for the reminder; the original message's when not given.
    pub channels: Option<Vec<String>>,
}

impl Services {
    /// Reminds the guardians who have not acknowledged `original`, at most once per
    /// `once` key.
    pub async fn renotify(
        &self,
        caller: &Staff,
        original: MessageId,
        request: Renotify,
        once: Option<Once<'_>>,
        words: Words<'_>,
    ) -> Result<Reply<Sent>, ServiceError> {
        if caller.role == Role::Viewer {
            return Err(Refusal::Forbidden.into());
        }
        let asked = request.channels.as_deref().map(channels).transpose()?;
        // Who is reminded depends on who has acknowledged by now: a repeat must replay
        // the first answer before anything is read.
        let mut tx = self.store.begin().await?;
        if let Some(answer) = claim(tx.as_mut(), caller, once.as_ref(), self.clock.now()).await? {
            return Ok(Reply::Replayed(answer));
        }
        match self.reminder(caller, original, asked).await? {
            Ok((draft, audience)) => {
                self.deliver_in(tx, caller, draft, &audience, once, words)
                    .await
            }
            Err(refusal) => refuse(tx, caller, once, refusal, words).await,
        }
    }

    /// The reminder's draft and audience, or why there is none.
    async fn reminder(
        &self,
        caller: &Staff,
        original: MessageId,
        channels: Option<std::collections::BTreeSet<crate::Channel>>,
    ) -> Result<Result<(Draft, Audience), Refusal>, ServiceError> {
        let Some(content) = self
            .store
            .message_content(&message_scope(caller), original)
            .await?
        else {
            return Ok(Err(Refusal::NotFound));
        };
        if !content.requires_ack {
            return Ok(Err(Refusal::Invalid(
                "this message asked for no acknowledgment: there is no one to remind".into(),
            )));
        }
        let pending = self.store.pending_guardians(original).await?;
        if pending.is_empty() {
            return Ok(Err(Refusal::Invalid(
                "every recipient has acknowledged".into(),
            )));
        }
        let audience = Audience {
            guardians: pending.iter().map(uuid::Uuid::to_string).collect(),
            ..Audience::default()
        };
        let draft = Draft {
            district_id: caller.district_id,
            author_id: caller.id,
            kind: content.kind,
            channels: channels.unwrap_or_else(|| content.channels.iter().copied().collect()),
            subject: content.subject,
            body: content.body,
            translations: serde_json::from_value(content.translations).unwrap_or_default(),
            requires_ack: true,
            guarantee: content.guarantee,
            audience: serde_json::json!({ "renotify_of": original, "guardians": pending.len() }),
            renotify_of: Some(original),
            scheduled_at: None,
            ack_deadline: None,
            fallback_after: content.fallback_after,
        };
        Ok(Ok((draft, audience)))
    }
}
