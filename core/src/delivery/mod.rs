//! Deliveries: one message to one guardian over one channel, and the only way they move.
//!
//! Every writer asks [`next`] what an event means and writes the answer as a [`Change`]
//! through the store's one batch operation (`Store::apply_transitions`), a
//! compare-and-swap per delivery. [`decide_and_apply`] is the one read-decide-swap loop:
//! a lost race is decided again from what the delivery is now, never overwritten. [`apply`]
//! is it for one event; acknowledgments, recalls and provider events in bulk run it in
//! their store transaction. The dispatcher's attempts decide with [`next`] and report a
//! lost race instead of re-deciding (the delivery moved on without them).

mod state;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use state::{next, Decision, DeliveryEvent, DeliveryState, Ignored, UnknownState};

use crate::stored_enum::stored_enum;
use crate::{Channel, DeliveryId, DistrictId, GuardianId, MessageId, RecipientId};

/// A delivery as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Delivery {
    pub id: DeliveryId,
    pub district_id: DistrictId,
    pub message_id: MessageId,
    pub recipient_id: RecipientId,
    pub guardian_id: GuardianId,
    pub channel: Channel,
    pub address: Option<String>,
    pub state: DeliveryState,
    /// Incremented by every transition; the compare-and-swap guard.
    pub version: i64,
    pub attempts: i32,
    /// Not to be sent (or retried) before this.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub idempotency_key: String,
    pub provider_ref: Option<String>,
    pub last_error: Option<String>,
    pub suppressed_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

stored_enum! {
    /// Who moved a delivery.
    ActorKind("actor kind") {
        Dispatcher => "dispatcher",
        Provider => "provider",
        Guardian => "guardian",
        Staff => "staff",
        System => "system",
    }
}

/// Who moved a delivery, and the reference that proves it: a dispatcher process, a
/// provider's event id, the guardian's link or app, a staff id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Actor {
    pub kind: ActorKind,
    pub reference: String,
}

impl Actor {
    pub fn dispatcher(process: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Dispatcher,
            reference: process.into(),
        }
    }

    pub fn provider(provider: &str, event_id: &str) -> Self {
        Self {
            kind: ActorKind::Provider,
            reference: format!("{provider}:{event_id}"),
        }
    }

    pub fn guardian(via: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::Guardian,
            reference: via.into(),
        }
    }

    pub fn staff(id: crate::StaffId) -> Self {
        Self {
            kind: ActorKind::Staff,
            reference: id.to_string(),
        }
    }

    pub fn system(reason: impl Into<String>) -> Self {
        Self {
            kind: ActorKind::System,
            reference: reason.into(),
        }
    }
}

/// One compare-and-swap to attempt.
#[derive(Debug, Clone)]
pub struct Transition {
    pub delivery_id: DeliveryId,
    /// The state and version the caller read; the swap happens only if both still hold.
    pub from: DeliveryState,
    pub seen_version: i64,
    pub to: DeliveryState,
    pub actor: Actor,
    /// Why, for the audit trail (a provider error, a suppression reason).
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
    /// When the delivery was last written, as read (its `updated_at`): where the stage
    /// this transition ends began, for the stage-time histograms on `/metrics`.
    pub since: DateTime<Utc>,
}

/// What a write of a delivery sets besides its state, version and the timestamp of the
/// state it enters. Values are computed in Rust from the row as read: the compare-and-swap
/// guarantees the row is still that one when they are written. `None`: left as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub attempts: Option<i32>,
    pub attempt_base: Option<i32>,
    pub provider: Option<String>,
    pub provider_ref: Option<String>,
    pub suppressed_reason: Option<String>,
    /// `Some(None)` clears it.
    pub last_error: Option<Option<String>>,
    /// `Some(None)` clears it.
    pub next_attempt_at: Option<Option<DateTime<Utc>>>,
}

/// One write of a delivery, as the store applies it in a batch: a transition decided by
/// [`next`], with the columns it sets. A change whose `to` is its `from` keeps the state
/// (a new attempt of a QUEUED delivery, a deferral): the version still moves and guards
/// it, but no state was entered, so no event row is written.
#[derive(Debug, Clone)]
pub struct Change {
    pub transition: Transition,
    pub effects: Effects,
}

impl Change {
    /// The change a bare transition makes: a move to FAILED records its detail as the
    /// delivery's last error.
    pub fn new(transition: Transition) -> Self {
        let effects = Effects {
            last_error: (transition.to == DeliveryState::Failed
                && transition.from != transition.to)
                .then(|| transition.detail.clone()),
            ..Effects::default()
        };
        Self {
            transition,
            effects,
        }
    }

    pub fn with(transition: Transition, effects: Effects) -> Self {
        Self {
            transition,
            effects,
        }
    }

    /// Whether the change enters a new state (and so writes an event row).
    pub fn moves(&self) -> bool {
        self.transition.from != self.transition.to
    }
}

impl Transition {
    /// The swap of `seen`, as read, to `to`.
    pub fn of(
        seen: &Delivery,
        to: DeliveryState,
        actor: &Actor,
        detail: Option<String>,
        at: DateTime<Utc>,
    ) -> Self {
        Transition {
            delivery_id: seen.id,
            from: seen.state,
            seen_version: seen.version,
            to,
            actor: actor.clone(),
            detail,
            at,
            since: seen.updated_at,
        }
    }
}

/// One row of a delivery's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryEventRecord {
    pub delivery_id: DeliveryId,
    pub from: DeliveryState,
    pub to: DeliveryState,
    /// The version the delivery reached with this transition.
    pub version: i64,
    pub at: DateTime<Utc>,
    pub actor: Actor,
    pub detail: Option<String>,
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Moved {
        from: DeliveryState,
        delivery: Delivery,
    },
    Ignored {
        reason: Ignored,
        delivery: Delivery,
    },
}

/// Why a request did not move its delivery: `E` is the error of where the changes are
/// written ([`WriteChanges::Error`]).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError<E>
where
    E: std::error::Error + 'static,
{
    #[error("delivery {0} not found")]
    NotFound(DeliveryId),
    /// Other writers kept winning: something is moving this delivery in a loop.
    #[error("delivery {0} kept changing under us; gave up after {1} rounds")]
    Contended(DeliveryId, u32),
    /// Writing failed.
    #[error(transparent)]
    Write(#[from] E),
}

/// Races are re-decided this many times; each lost race means another writer made
/// progress, and the happy path is short, so a real conflict ends well before this.
const MAX_ROUNDS: u32 = 16;

/// What a writer asks of one delivery: an event, who saw it, why, and the columns to set
/// should [`next`] move the delivery.
#[derive(Debug, Clone)]
pub struct Request {
    pub event: DeliveryEvent,
    pub actor: Actor,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
    pub effects: Effects,
}

impl Request {
    pub fn new(
        event: DeliveryEvent,
        actor: &Actor,
        detail: Option<&str>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            event,
            actor: actor.clone(),
            detail: detail.map(str::to_owned),
            at,
            effects: Effects::default(),
        }
    }

    /// The change this request makes to `seen`, as [`next`] decides it, or why it makes
    /// none. A move to FAILED records its detail as the last error unless the request
    /// says otherwise.
    pub fn decide(&self, seen: &Delivery) -> Result<Change, Ignored> {
        let to = match next(seen.state, self.event) {
            Decision::Ignore(reason) => return Err(reason),
            Decision::Move(to) => to,
        };
        let transition = Transition::of(seen, to, &self.actor, self.detail.clone(), self.at);
        let mut effects = self.effects.clone();
        if to == DeliveryState::Failed && effects.last_error.is_none() {
            effects.last_error = Some(self.detail.clone());
        }
        Ok(Change::with(transition, effects))
    }
}

/// The result of a compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CasOutcome {
    /// The delivery moved; this is it afterwards.
    Applied(Delivery),
    /// Someone moved it first (or it is not in the expected state): this is what it is now.
    Conflict(Delivery),
    NotFound,
}

/// Where a batch of changes is written: the store (a transaction per batch) or a
/// transaction a store operation holds open.
#[async_trait::async_trait]
pub trait WriteChanges: Send {
    /// Why a batch could not be written.
    type Error: std::error::Error + Send + Sync + 'static;

    async fn write_changes(&mut self, batch: &[Change]) -> Result<Vec<CasOutcome>, Self::Error>;
}

/// The read-decide-swap loop, the only one: decides each request against its delivery
/// (as read) with [`next`], writes the moves as one batch, and decides the ones that lost
/// a race again from the delivery as it is now, until each has moved or is ignored.
/// Several requests for one delivery are decided in order, each seeing the one before.
pub async fn decide_and_apply<W: WriteChanges + ?Sized>(
    writer: &mut W,
    items: Vec<(Delivery, Request)>,
) -> Result<Vec<Result<Applied, ApplyError<W::Error>>>, W::Error> {
    use std::collections::HashMap;
    let mut results: Vec<Option<Result<Applied, ApplyError<W::Error>>>> =
        std::iter::repeat_with(|| None).take(items.len()).collect();
    let mut seen: HashMap<DeliveryId, Delivery> = HashMap::new();
    for (delivery, _) in &items {
        seen.entry(delivery.id).or_insert_with(|| delivery.clone());
    }
    for _ in 0..MAX_ROUNDS {
        let pending: Vec<usize> = (0..items.len()).filter(|&i| results[i].is_none()).collect();
        if pending.is_empty() {
            break;
        }
        // Decided in order, each against the delivery as the ones before leave it.
        let mut view = seen.clone();
        let mut batch = Vec::new();
        let mut batched = Vec::new();
        for &i in &pending {
            let (delivery, request) = &items[i];
            let current = view.get_mut(&delivery.id).expect("every delivery is seen");
            match request.decide(current) {
                Err(reason) => {
                    results[i] = Some(Ok(Applied::Ignored {
                        reason,
                        delivery: current.clone(),
                    }))
                }
                Ok(change) => {
                    current.state = change.transition.to;
                    current.version += 1;
                    batch.push(change);
                    batched.push(i);
                }
            }
        }
        if batch.is_empty() {
            break;
        }
        let outcomes = writer.write_changes(&batch).await?;
        for ((&i, change), outcome) in batched.iter().zip(&batch).zip(outcomes) {
            let id = change.transition.delivery_id;
            match outcome {
                CasOutcome::Applied(moved) => {
                    seen.insert(id, moved.clone());
                    results[i] = Some(Ok(Applied::Moved {
                        from: change.transition.from,
                        delivery: moved,
                    }));
                }
                // Decided again next round, from what it is now.
                CasOutcome::Conflict(now) => {
                    seen.insert(id, now);
                }
                CasOutcome::NotFound => results[i] = Some(Err(ApplyError::NotFound(id))),
            }
        }
    }
    Ok(results
        .into_iter()
        .zip(&items)
        .map(|(result, (delivery, _))| {
            result.unwrap_or(Err(ApplyError::Contended(delivery.id, MAX_ROUNDS)))
        })
        .collect())
}
