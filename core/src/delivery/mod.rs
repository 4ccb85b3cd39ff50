//! Deliveries: one message to one guardian over one channel, and the only way they move.
//!
//! [`apply`] is what the dispatcher, the callbacks and the API call: it reads the delivery,
//! asks [`next`] what the event means, and compare-and-swaps the answer into the store. A
//! lost race is re-read and decided again, never overwritten.

mod state;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use state::{next, Decision, DeliveryEvent, DeliveryState, Ignored, UnknownState};

use crate::store::{CasOutcome, Store, StoreError};
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

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("delivery {0} not found")]
    NotFound(DeliveryId),
    /// Other writers kept winning: something is moving this delivery in a loop.
    #[error("delivery {0} kept changing under us; gave up after {1} rounds")]
    Contended(DeliveryId, u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Races are re-decided this many times; each lost race means another writer made
/// progress, and the happy path is short, so a real conflict ends well before this.
const MAX_ROUNDS: u32 = 16;

/// Reads the delivery, decides with [`next`], and compare-and-swaps the decision in.
pub async fn apply(
    store: &dyn Store,
    id: DeliveryId,
    event: DeliveryEvent,
    actor: &Actor,
    detail: Option<&str>,
) -> Result<Applied, ApplyError> {
    let mut delivery = store.delivery(id).await?.ok_or(ApplyError::NotFound(id))?;
    for _ in 0..MAX_ROUNDS {
        let to = match next(delivery.state, event) {
            Decision::Ignore(reason) => return Ok(Applied::Ignored { reason, delivery }),
            Decision::Move(to) => to,
        };
        let transition = Transition {
            delivery_id: id,
            from: delivery.state,
            seen_version: delivery.version,
            to,
            actor: actor.clone(),
            detail: detail.map(str::to_owned),
            at: crate::time::now(),
        };
        match store.transition(&transition).await? {
            CasOutcome::Applied(moved) => {
                return Ok(Applied::Moved {
                    from: transition.from,
                    delivery: moved,
                })
            }
            CasOutcome::Conflict(current) => delivery = current,
            CasOutcome::NotFound => return Err(ApplyError::NotFound(id)),
        }
    }
    Err(ApplyError::Contended(id, MAX_ROUNDS))
}
