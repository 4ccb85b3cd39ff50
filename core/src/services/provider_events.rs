//! Provider events: what SMS, email and push providers report about the deliveries they
//! were given (sent, delivered, failed, bounced, a spam complaint), once the callbacks
//! have verified and kept them in the inbox. Applying them is one use case however the
//! report came: each event's request of its delivery is decided by the state machine,
//! what it means beyond the delivery (a bounce retires the address, a complaint opts the
//! guardian out of email) is recorded, and the event is marked with what it did — all of
//! a round in ONE transaction, so an event is never marked without its effects nor its
//! effects written twice by a round that failed.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::delivery::{Actor, Delivery, Request};
use crate::store::{InboxApply, InboxEffect, InboxItem, Store, StoreResult};
use crate::{Channel, DeliveryEvent, DeliveryId};

/// One verified provider event, as the callbacks keep it in the inbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderEvent {
    pub delivery_id: DeliveryId,
    /// `None`: nothing to apply (a "queued" or "buffered" report), kept for the record.
    pub event: Option<DeliveryEvent>,
    pub detail: Option<String>,
    /// `bounced` (retire the address) or `complaint` (opt the guardian out of email).
    pub effect: Option<String>,
    /// The provider's own fields.
    pub raw: Value,
}

impl ProviderEvent {
    /// Whether applying it can change anything (else it is kept only for the record).
    pub fn is_actionable(&self) -> bool {
        self.event.is_some() || self.effect.is_some()
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Round {
    /// Pending events read (0: the inbox has nothing pending).
    pub read: usize,
    /// Events marked `applied` (their delivery moved, or their effect was recorded).
    pub applied: usize,
    /// Events marked `ignored` (with why).
    pub ignored: usize,
}

/// Applies up to `limit` pending inbox events, oldest first, in one transaction: their
/// deliveries read at once, each event decided in order, an event whose delivery moved
/// meanwhile decided again from what it is then (one still losing stays pending for the
/// next round).
pub async fn apply_provider_events(
    store: &dyn Store,
    at: DateTime<Utc>,
    limit: u32,
) -> StoreResult<Round> {
    let items = store.inbox_pending(limit).await?;
    apply_read_events(store, items, at).await
}

/// Applies inbox events as [`apply_provider_events`] read them. One another worker has
/// marked since it was read is neither applied nor counted again.
#[tracing::instrument(name = "apply_provider_events", skip_all, fields(events = items.len()))]
pub async fn apply_read_events(
    store: &dyn Store,
    items: Vec<InboxItem>,
    at: DateTime<Utc>,
) -> StoreResult<Round> {
    let read = items.len();
    if items.is_empty() {
        return Ok(Round::default());
    }
    let parsed: Vec<(InboxItem, Result<ProviderEvent, serde_json::Error>)> = items
        .into_iter()
        .map(|item| {
            let event = serde_json::from_value::<ProviderEvent>(item.payload.clone());
            (item, event)
        })
        .collect();
    let mut ids: Vec<DeliveryId> = parsed
        .iter()
        .filter_map(|(_, e)| e.as_ref().ok().map(|e| e.delivery_id))
        .collect();
    ids.sort_unstable_by_key(|id| *id.as_uuid());
    ids.dedup();
    let current: std::collections::HashMap<DeliveryId, Delivery> = store
        .deliveries_by_ids(&ids)
        .await?
        .into_iter()
        .map(|d| (d.id, d))
        .collect();
    let mut batch: Vec<InboxApply> = parsed
        .into_iter()
        .map(|(item, event)| match event {
            Err(e) => unapplied(item.id, "ignored", format!("unreadable inbox payload: {e}")),
            Ok(event) => match current.get(&event.delivery_id) {
                None => unapplied(item.id, "ignored", "no such delivery".into()),
                Some(delivery) => plan(&item, &event, delivery, at),
            },
        })
        .collect();
    // In delivery id order (stable: a delivery's events keep theirs), the order in which
    // every writer of several deliveries locks them.
    batch.sort_by_key(|item| item.request.as_ref().map(|(d, _)| *d.id.as_uuid()));
    let marked = store.apply_inbox_batch(&batch, at).await?;
    // A span per event applied, joined to its delivery and message.
    for (item, status) in batch.iter().zip(&marked) {
        if let (Some((delivery, request)), Some("applied")) = (&item.request, status) {
            let _applied = tracing::info_span!(
                "provider_event",
                delivery_id = %delivery.id,
                message_id = %delivery.message_id,
                provider = %request.actor.reference,
                event = ?request.event,
            )
            .entered();
        }
    }
    let mut round = Round {
        read,
        ..Round::default()
    };
    for status in marked.into_iter().flatten() {
        if status == "applied" {
            round.applied += 1;
        } else {
            round.ignored += 1;
        }
    }
    Ok(round)
}

/// What applying `event` (kept as inbox item `item`) to `delivery` writes.
fn plan(
    item: &InboxItem,
    event: &ProviderEvent,
    delivery: &Delivery,
    at: DateTime<Utc>,
) -> InboxApply {
    let effect = event.effect.as_deref().and_then(|e| effect(e, delivery));
    let request = event.event.map(|what| {
        Request::new(
            what,
            &Actor::provider(&item.provider, &item.event_id),
            event.detail.as_deref(),
            at,
        )
    });
    // Marked by what is written, not by what the provider said: a bounce of a delivery
    // that had no address records nothing.
    let (status, outcome) = match (&request, &effect, &event.effect) {
        (Some(_), ..) => ("", String::new()),
        (None, Some(_), Some(said)) => ("applied", format!("{said} recorded")),
        (None, ..) => ("ignored", "nothing to apply".into()),
    };
    InboxApply {
        inbox_id: item.id,
        request: request.map(|r| (delivery.clone(), r)),
        effect,
        district: Some(delivery.district_id),
        status,
        outcome,
    }
}

/// What a provider's `effect` means beyond the delivery; `None` for one we do not act on
/// (a bounce of a delivery that had no address).
fn effect(effect: &str, delivery: &Delivery) -> Option<InboxEffect> {
    match effect {
        "bounced" => delivery
            .address
            .as_ref()
            .map(|address| InboxEffect::RetireAddress {
                guardian: delivery.guardian_id,
                channel: delivery.channel,
                address: address.clone(),
                reason: "bounced",
            }),
        "complaint" => Some(InboxEffect::OptOut {
            district: delivery.district_id,
            guardian: delivery.guardian_id,
            channel: Channel::Email,
            source: "complaint",
        }),
        _ => None,
    }
}

fn unapplied(inbox_id: uuid::Uuid, status: &'static str, outcome: String) -> InboxApply {
    InboxApply {
        inbox_id,
        request: None,
        effect: None,
        district: None,
        status,
        outcome,
    }
}
