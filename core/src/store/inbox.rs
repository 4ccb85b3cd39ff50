//! Where providers' events and guardians' texts land: the callback inbox, inbound SMS,
//! acknowledgment. Its SQL is in `directory_sql` (written once for both dialects); the
//! `inbox_store!` macro implements the trait for a store from it.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{
    AckOutcome, InboundSms, InboxApply, InboxItem, InboxPut, ReplyView, Scope, StoreResult,
};
use crate::delivery::Delivery;
use crate::{Channel, DeliveryId, DistrictId, GuardianId};

/// How a provider event's request ended, as its inbox mark (`applied` or `ignored`, with
/// what it did); `None` leaves it pending, to be decided again.
pub fn inbox_mark(
    result: &Result<crate::delivery::Applied, crate::delivery::ApplyError>,
) -> Option<(&'static str, String)> {
    use crate::delivery::{Applied, ApplyError};
    match result {
        Ok(Applied::Moved { from, delivery }) => {
            Some(("applied", format!("{from} -> {}", delivery.state)))
        }
        Ok(Applied::Ignored { reason, delivery }) => {
            Some(("ignored", format!("{reason:?} in {}", delivery.state)))
        }
        Err(ApplyError::NotFound(_)) => Some(("ignored", "no such delivery".into())),
        Err(ApplyError::Contended(..) | ApplyError::Store(_)) => None,
    }
}

#[async_trait]
pub trait Inbox: Send + Sync {
    /// Keeps an inbound SMS; `None` when the provider's message id was kept before (a
    /// repeat), else the guardians (district, guardian) whose SMS number sent it.
    async fn record_inbound(
        &self,
        sms: &InboundSms,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Vec<(DistrictId, GuardianId)>>>;

    /// A guardian acknowledges a message (their recipient row) through `via`: in one
    /// transaction the recipient is marked, the delivery on `via` moves to ACKED and the
    /// guardian's other not-yet-sent deliveries of the message are cancelled (each a
    /// compare-and-swap with its audit row). A second acknowledgment changes nothing.
    async fn acknowledge(
        &self,
        recipient: uuid::Uuid,
        via: Channel,
        actor: &crate::delivery::Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<AckOutcome>;

    /// The guardian's most recent message still waiting for their acknowledgment (its
    /// recipient row), if any.
    async fn open_ack(
        &self,
        guardian: GuardianId,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<uuid::Uuid>>;

    /// Texts from guardians the scope may see, newest first, older than `before`.
    async fn replies(
        &self,
        scope: &Scope,
        before: Option<uuid::Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<ReplyView>>;

    /// Undoes a guardian's carrier opt-out on `channel` (their START); returns how many
    /// opt-outs it revoked.
    async fn resubscribe(
        &self,
        guardian: GuardianId,
        channel: Channel,
        at: DateTime<Utc>,
    ) -> StoreResult<u64>;

    /// Keeps a provider event in the callback inbox with `status` (`pending` to be
    /// applied, `rejected` with the reason as `outcome`). False when the same
    /// (provider, event id) was kept before: a duplicate.
    async fn inbox_put(
        &self,
        provider: &str,
        event_id: &str,
        payload: &serde_json::Value,
        status: &'static str,
        outcome: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let event = InboxPut {
            provider: provider.to_owned(),
            event_id: event_id.to_owned(),
            payload: payload.clone(),
            status,
            outcome: outcome.map(str::to_owned),
        };
        Ok(self.inbox_put_many(&[event], at).await?.first() == Some(&true))
    }

    /// Applies kept events in one transaction, in order: each one's request decided and
    /// written through [`crate::delivery::decide_and_apply`] (compare-and-swap, audit
    /// row), and its inbox mark ([`inbox_mark`]). An event whose delivery kept moving
    /// under it stays pending. Returns, per item, the status it was marked with.
    async fn apply_inbox_batch(
        &self,
        items: &[InboxApply],
    ) -> StoreResult<Vec<Option<&'static str>>>;

    /// Deliveries by id (those that exist), in no particular order.
    async fn deliveries_by_ids(&self, ids: &[DeliveryId]) -> StoreResult<Vec<Delivery>>;

    /// Keeps several provider events in one transaction (one commit for many requests);
    /// per event, false when it was kept before.
    async fn inbox_put_many(
        &self,
        events: &[InboxPut],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>>;

    /// Pending inbox events, oldest first.
    async fn inbox_pending(&self, limit: u32) -> StoreResult<Vec<InboxItem>>;

    /// Inbox events by status.
    async fn inbox_counts(&self) -> StoreResult<std::collections::BTreeMap<String, i64>>;

    /// What each delivery of `ids` that exists was sent as: its channel, the provider's
    /// reference and every provider it was handed to (its attempts, recorded before each
    /// provider call, so before any report about it can come). A provider's event is
    /// believed only about a delivery that provider was given.
    async fn sent_through(&self, ids: &[DeliveryId]) -> StoreResult<Vec<SentThrough>>;

    /// Remembers a webhook token (Mailgun's `signature.token`) with a digest of the event
    /// it came with: [`TokenClaim::New`] the first time, [`TokenClaim::Repeat`] for the same
    /// event again (a provider's retry), [`TokenClaim::Reused`] for another event (a
    /// captured signature on forged content).
    async fn claim_webhook_token(
        &self,
        provider: &str,
        token: &str,
        event_key: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<TokenClaim>;

    /// Deletes, oldest first and at most `retention.limit` of each kind, applied and
    /// ignored events received before `finished_before`, rejected ones received before
    /// `rejected_before`, and webhook tokens seen before `tokens_before`. Pending events
    /// are never pruned.
    async fn prune_inbox(&self, retention: &InboxRetention) -> StoreResult<Pruned>;
}

/// A delivery as a provider's event about it must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentThrough {
    pub delivery_id: DeliveryId,
    pub channel: Channel,
    /// The provider's reference (Twilio's message SID, the email's Message-ID), once known.
    pub provider_ref: Option<String>,
    /// Every provider the delivery was handed to, sorted, without repeats.
    pub providers: Vec<String>,
}

/// What remembering a webhook token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenClaim {
    New,
    /// Seen before with the same event.
    Repeat,
    /// Seen before with another event.
    Reused,
}

/// What [`Inbox::prune_inbox`] deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRetention {
    pub finished_before: DateTime<Utc>,
    pub rejected_before: DateTime<Utc>,
    pub tokens_before: DateTime<Utc>,
    /// Rows of each kind deleted at most in one call.
    pub limit: u32,
}

/// What one [`Inbox::prune_inbox`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub finished: u64,
    pub rejected: u64,
    pub tokens: u64,
}

/// Expands to `impl Inbox for $store` (a store with a `pool`) over the `$queries` module
/// of `directory_queries!`.
macro_rules! inbox_store {
    ($store:ty, $queries:path) => {
        #[async_trait::async_trait]
        impl $crate::store::inbox::Inbox for $store {
            async fn record_inbound(
                &self,
                sms: &$crate::store::InboundSms,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<Vec<($crate::DistrictId, $crate::GuardianId)>>>
            {
                use $queries as q;
                Ok(q::record_inbound(self.write_pool(), sms, at)
                    .await?
                    .map(|found| {
                        found
                            .into_iter()
                            .map(|(d, g)| {
                                (
                                    $crate::DistrictId::from_uuid(d),
                                    $crate::GuardianId::from_uuid(g),
                                )
                            })
                            .collect()
                    }))
            }

            async fn acknowledge(
                &self,
                recipient: uuid::Uuid,
                via: $crate::Channel,
                actor: &$crate::delivery::Actor,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<$crate::store::AckOutcome> {
                use $queries as q;
                q::acknowledge(self.write_pool(), recipient, via, actor, at).await
            }

            async fn open_ack(
                &self,
                guardian: $crate::GuardianId,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<Option<uuid::Uuid>> {
                use $queries as q;
                q::open_ack(&self.pool, guardian.into(), at).await
            }

            async fn replies(
                &self,
                scope: &$crate::store::Scope,
                before: Option<uuid::Uuid>,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::ReplyView>> {
                use $queries as q;
                q::replies(&self.pool, scope, before, limit).await
            }

            async fn resubscribe(
                &self,
                guardian: $crate::GuardianId,
                channel: $crate::Channel,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<u64> {
                use $queries as q;
                q::resubscribe(self.write_pool(), guardian.into(), channel, at).await
            }

            async fn apply_inbox_batch(
                &self,
                items: &[$crate::store::InboxApply],
            ) -> $crate::store::StoreResult<Vec<Option<&'static str>>> {
                use $queries as q;
                q::apply_inbox_batch(self.write_pool(), items).await
            }

            async fn deliveries_by_ids(
                &self,
                ids: &[$crate::DeliveryId],
            ) -> $crate::store::StoreResult<Vec<$crate::delivery::Delivery>> {
                use $queries as q;
                q::deliveries_by_ids(&mut *self.pool.acquire().await?, ids).await
            }

            async fn inbox_put_many(
                &self,
                events: &[$crate::store::InboxPut],
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<Vec<bool>> {
                use $queries as q;
                q::inbox_put_many(self.write_pool(), events, at).await
            }

            async fn inbox_pending(
                &self,
                limit: u32,
            ) -> $crate::store::StoreResult<Vec<$crate::store::InboxItem>> {
                use $queries as q;
                q::inbox_pending(&self.pool, limit).await
            }

            async fn inbox_counts(
                &self,
            ) -> $crate::store::StoreResult<std::collections::BTreeMap<String, i64>> {
                use $queries as q;
                q::inbox_counts(&self.pool).await
            }

            async fn sent_through(
                &self,
                ids: &[$crate::DeliveryId],
            ) -> $crate::store::StoreResult<Vec<$crate::store::inbox::SentThrough>> {
                use $queries as q;
                q::sent_through(&self.pool, ids).await
            }

            async fn claim_webhook_token(
                &self,
                provider: &str,
                token: &str,
                event_key: &str,
                at: chrono::DateTime<chrono::Utc>,
            ) -> $crate::store::StoreResult<$crate::store::inbox::TokenClaim> {
                use $queries as q;
                q::claim_webhook_token(self.write_pool(), provider, token, event_key, at).await
            }

            async fn prune_inbox(
                &self,
                retention: &$crate::store::inbox::InboxRetention,
            ) -> $crate::store::StoreResult<$crate::store::inbox::Pruned> {
                use $queries as q;
                q::prune_inbox(self.write_pool(), retention).await
            }
        }
    };
}

pub(crate) use inbox_store;
