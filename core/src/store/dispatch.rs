//! What the dispatcher asks of a store: partition leases with fencing tokens, consumer
//! offsets, the deliveries to send with their content, and attempts recorded before and
//! after each provider call.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::delivery::{next, Actor, Change, Decision, Delivery, Effects, Ignored, Transition};
use crate::log::PartitionId;
use crate::store::{CasOutcome, MessageScope, StoreResult};
use crate::{
    Channel, DeliveryEvent, DeliveryGuarantee, DeliveryState, DistrictId, Lane, MessageKind,
};

/// Tells of writes to the log that this process made or (on PostgreSQL) heard of, so
/// that an idle dispatcher wakes at once instead of at its next look.
#[derive(Debug, Clone)]
pub struct LogWrites(std::sync::Arc<tokio::sync::watch::Sender<()>>);

impl Default for LogWrites {
    fn default() -> Self {
        Self(std::sync::Arc::new(tokio::sync::watch::Sender::new(())))
    }
}

impl LogWrites {
    /// Entries may have been written: every subscriber's `changed()` resolves.
    pub fn wrote(&self) {
        self.0.send_replace(());
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<()> {
        self.0.subscribe()
    }

    /// Resolves once no subscriber is left.
    pub async fn unwatched(&self) {
        self.0.closed().await
    }
}

/// A guardian's deliveries on one channel that are not finished with an attempt: waiting
/// for a retry, or at the provider now. A later delivery to the guardian on that channel
/// waits behind them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retrying {
    pub guardian_id: crate::GuardianId,
    pub channel: Channel,
    /// When the earliest of them was created.
    pub first_created_at: DateTime<Utc>,
    /// When the last of those waiting for a retry is due; none when every one of them is
    /// at the provider now (an attempt started and not finished).
    pub due: Option<DateTime<Utc>>,
}

/// Deliveries of one district and lane whose time has come: how many are waiting, or
/// how many one look reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueCount {
    pub district: DistrictId,
    pub lane: Lane,
    pub deliveries: u32,
}

/// One partition of the log as an operator watches it (`/metrics`): entries the group has
/// not committed, when the oldest of them was written, and whether a lease on it is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionWatch {
    pub lane: Lane,
    pub partition: PartitionId,
    pub waiting: i64,
    /// When the first entry past the committed offset was written; none when nothing waits.
    pub oldest: Option<DateTime<Utc>>,
    /// Whether a dispatcher's lease on it has not expired.
    pub held: bool,
}

/// A dispatcher's hold on one (lane, partition). Writes made under it carry the fencing
/// token; once another process has taken the partition over they are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Lease {
    pub lane: Lane,
    pub partition: PartitionId,
    pub fencing_token: i64,
}

/// A partition of the log as seen at one moment: the offset of its last visible entry
/// (-1: none yet) and, per district with entries in it, the offset of that district's last
/// one (never past `last`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionDistricts {
    pub last: i64,
    pub districts: Vec<(DistrictId, i64)>,
}

impl PartitionDistricts {
    /// The districts with entries in the partition.
    pub fn district_ids(&self) -> impl Iterator<Item = DistrictId> + '_ {
        self.districts.iter().map(|(district, _)| *district)
    }
}

/// A delivery with everything a provider call needs: the address, the words in the
/// recipient's language, and how the message asked to be sent.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub delivery: Delivery,
    pub lane: Lane,
    pub partition: PartitionId,
    /// The entry's offset, for deliveries read off the log; `None` when a due retry or
    /// a scheduled send found it.
    pub offset: Option<i64>,
    pub kind: MessageKind,
    pub guarantee: DeliveryGuarantee,
    pub requires_ack: bool,
    pub subject: String,
    pub body: String,
    /// The language `subject` and `body` are in (the guardian's, or the district's).
    pub language: String,
    /// The latest attempt, if it was started and never finished: whoever made it may have
    /// reached the provider before it stopped.
    pub unfinished_attempt: Option<i32>,
    /// Attempts made before the delivery was last replayed; the retry schedule counts
    /// from here.
    pub attempt_base: i32,
    /// For a standby delivery (a message with fallback): the delivery it backs up, as it
    /// is now.
    pub backs_up: Option<BackedUp>,
    /// The trace context of the request that wrote the message, when traces were
    /// exported then: the send's span links to it.
    pub traceparent: Option<String>,
}

/// The delivery a standby backs up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackedUp {
    pub channel: Channel,
    pub state: DeliveryState,
    pub suppressed_reason: Option<String>,
    /// Whether it is a standby itself.
    pub standby: bool,
}

impl Outbound {
    /// Whether this is a standby behind a standby that has not been decided yet: it waits
    /// for that decision.
    pub fn fallback_undecided(&self) -> bool {
        self.backs_up.as_ref().is_some_and(|before| {
            before.standby && matches!(before.state, DeliveryState::Created | DeliveryState::Queued)
        })
    }

    /// Whether this is a standby whose delivery before it reached the guardian, so it is
    /// not to be sent: delivered or acknowledged; or, for push, which reports no delivery,
    /// handed to APNs or FCM when no acknowledgment was asked for. (A cancelled one was
    /// recalled or acknowledged elsewhere; a standby that was itself not needed means
    /// the guardian was reached further up: nothing to fall back for either.)
    pub fn fallback_not_needed(&self) -> bool {
        let Some(before) = &self.backs_up else {
            return false;
        };
        match before.state {
            DeliveryState::Delivered | DeliveryState::Acked | DeliveryState::Cancelled => true,
            DeliveryState::Sent => before.channel == Channel::Push && !self.requires_ack,
            DeliveryState::Suppressed => {
                before.suppressed_reason.as_deref()
                    == Some(crate::fanout::reason::FALLBACK_NOT_NEEDED)
            }
            DeliveryState::Created | DeliveryState::Queued | DeliveryState::Failed => false,
        }
    }
}

/// What a provider call came to, as the dispatcher records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptResult {
    /// The provider accepted the send.
    Sent { provider_ref: String },
    /// Try again at `at`; the attempt failed (or ended in doubt) for a reason that may pass.
    Retry {
        at: DateTime<Utc>,
        in_doubt: bool,
        error: String,
    },
    /// The guardian opted out at the carrier (STOP): the delivery is SUPPRESSED with
    /// reason `carrier_stop`, not a failure to replay.
    OptedOut { error: String },
    /// No more attempts: a permanent error, the last attempt spent, or an in-doubt attempt
    /// of an at-most-once message.
    Failed {
        in_doubt: bool,
        permanent: bool,
        error: String,
    },
}

impl AttemptResult {
    /// How it is written: the attempt's outcome (`sent`, `transient`, `permanent`,
    /// `in_doubt`), the kind of delivery update (`sent`, `retry`, `failed`, `opted_out`),
    /// its text (the provider reference, or the error) and the retry time.
    pub(crate) fn parts(&self) -> (&'static str, &'static str, &str, Option<DateTime<Utc>>) {
        match self {
            AttemptResult::Sent { provider_ref } => ("sent", "sent", provider_ref.as_str(), None),
            AttemptResult::Retry {
                at,
                in_doubt,
                error,
            } => (
                if *in_doubt { "in_doubt" } else { "transient" },
                "retry",
                error.as_str(),
                Some(*at),
            ),
            AttemptResult::Failed {
                in_doubt,
                permanent,
                error,
            } => {
                let outcome = match (in_doubt, permanent) {
                    (true, _) => "in_doubt",
                    (false, true) => "permanent",
                    (false, false) => "transient",
                };
                (outcome, "failed", error.as_str(), None)
            }
            AttemptResult::OptedOut { error } => ("permanent", "opted_out", error.as_str(), None),
        }
    }
}

impl AttemptResult {
    /// What recording this outcome does to `seen`, a delivery QUEUED with the attempt in
    /// flight, as [`next`] decides it: SENT with the provider's reference, FAILED, or
    /// SUPPRESSED (`carrier_stop`) with the error; a retry keeps it QUEUED with the error
    /// and the time it comes due again.
    pub(crate) fn change(&self, seen: &Delivery, actor: &Actor, at: DateTime<Utc>) -> Change {
        let event = match self {
            AttemptResult::Sent { .. } => Some(DeliveryEvent::Accepted),
            AttemptResult::Retry { .. } => None,
            AttemptResult::OptedOut { .. } => Some(DeliveryEvent::Suppress),
            AttemptResult::Failed { .. } => Some(DeliveryEvent::Failed),
        };
        // An attempt is finished from QUEUED only: a delivery in another state is no
        // longer the one the attempt was made for, and the swap does not happen.
        let from = DeliveryState::Queued;
        let to = match event.map(|e| next(from, e)) {
            Some(Decision::Move(to)) => to,
            Some(Decision::Ignore(_)) | None => from,
        };
        let (_, _, text, retry) = self.parts();
        let error = match self {
            AttemptResult::Sent { .. } => None,
            _ => Some(text.to_owned()),
        };
        let effects = Effects {
            provider_ref: matches!(self, AttemptResult::Sent { .. }).then(|| text.to_owned()),
            suppressed_reason: matches!(self, AttemptResult::OptedOut { .. })
                .then(|| crate::fanout::reason::CARRIER_STOP.to_owned()),
            last_error: error.clone().map(Some),
            next_attempt_at: Some(retry),
            ..Effects::default()
        };
        Change::with(
            Transition {
                delivery_id: seen.id,
                from,
                seen_version: seen.version,
                to,
                actor: actor.clone(),
                detail: error,
                at,
                since: seen.updated_at,
            },
            effects,
        )
    }
}

/// What starting an attempt on `seen` (as read) does, as [`next`] decides it: a CREATED
/// delivery is QUEUED, a QUEUED one (a retry) stays so; either gets the attempt counted
/// and `recover_at` as when it comes due again should the outcome never be recorded.
/// `None` for a delivery past being sent.
pub(crate) fn start_change(
    seen: &Delivery,
    provider: &str,
    actor: &Actor,
    recover_at: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Option<Change> {
    let to = match next(seen.state, DeliveryEvent::Enqueue) {
        Decision::Move(to) => to,
        Decision::Ignore(Ignored::Duplicate) => seen.state,
        Decision::Ignore(_) => return None,
    };
    Some(Change::with(
        Transition::of(seen, to, actor, None, at),
        Effects {
            attempts: Some(seen.attempts + 1),
            provider: Some(provider.to_owned()),
            next_attempt_at: Some(Some(recover_at)),
            ..Effects::default()
        },
    ))
}

/// What suppressing a standby (reason `fallback_not_needed`) does to `seen`, as [`next`]
/// decides it; `None` when it cannot be suppressed any more.
pub(crate) fn skip_change(seen: &Delivery, actor: &Actor, at: DateTime<Utc>) -> Option<Change> {
    let Decision::Move(to) = next(seen.state, DeliveryEvent::Suppress) else {
        return None;
    };
    Some(Change::with(
        Transition::of(
            seen,
            to,
            actor,
            Some("fallback not needed: the channel before reached the guardian".into()),
            at,
        ),
        Effects {
            suppressed_reason: Some(crate::fanout::reason::FALLBACK_NOT_NEEDED.to_owned()),
            next_attempt_at: Some(None),
            ..Effects::default()
        },
    ))
}

/// What deferring `seen` to `until` does: the same state (CREATED or QUEUED) at a later
/// `next_attempt_at`; `None` for a delivery in another state.
pub(crate) fn defer_change(
    seen: &Delivery,
    until: DateTime<Utc>,
    actor: &Actor,
    at: DateTime<Utc>,
) -> Option<Change> {
    if !matches!(seen.state, DeliveryState::Created | DeliveryState::Queued) {
        return None;
    }
    Some(Change::with(
        Transition::of(seen, seen.state, actor, None, at),
        Effects {
            next_attempt_at: Some(Some(until)),
            ..Effects::default()
        },
    ))
}

/// What replaying a dead letter does to `seen`, as [`next`] decides it: back to QUEUED,
/// due at `at`, with the retry schedule counted afresh from here; `None` when it is not
/// a failed delivery.
pub fn replay_change(seen: &Delivery, actor: &Actor, at: DateTime<Utc>) -> Option<Change> {
    let Decision::Move(to) = next(seen.state, DeliveryEvent::Replay) else {
        return None;
    };
    Some(Change::with(
        Transition::of(
            seen,
            to,
            actor,
            Some("replayed from the dead letters".into()),
            at,
        ),
        Effects {
            attempt_base: Some(seen.attempts),
            next_attempt_at: Some(Some(at)),
            ..Effects::default()
        },
    ))
}

/// A batch's outcomes by id: the deliveries that moved, and the others as they are now.
pub(crate) fn split_outcomes(
    outcomes: Vec<CasOutcome>,
) -> (
    std::collections::HashMap<uuid::Uuid, Delivery>,
    std::collections::HashMap<uuid::Uuid, Delivery>,
) {
    let (mut moved, mut now) = (
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    );
    for outcome in outcomes {
        match outcome {
            CasOutcome::Applied(d) => {
                moved.insert(*d.id.as_uuid(), d);
            }
            CasOutcome::Conflict(d) => {
                now.insert(*d.id.as_uuid(), d);
            }
            CasOutcome::NotFound => {}
        }
    }
    (moved, now)
}

/// What starting an attempt did.
#[derive(Debug, Clone)]
pub enum AttemptStart {
    /// Recorded: the delivery is QUEUED with `attempt` in flight.
    Started {
        delivery: Delivery,
        attempt: i32,
        /// An earlier attempt was found unfinished and is now recorded as in doubt.
        earlier_in_doubt: bool,
    },
    /// The delivery is no longer what the caller read (sent, cancelled, or retried by
    /// someone else): nothing was written.
    Moved(Delivery),
}

/// One provider call, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttemptRecord {
    pub attempt: i32,
    pub provider: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// `in_flight`, `sent`, `transient`, `permanent` or `in_doubt`.
    pub outcome: String,
    pub error: Option<String>,
}

/// What a replay of a dead letter did.
#[derive(Debug, Clone)]
pub enum Replay {
    /// Back in the queue, due now, with the whole retry schedule ahead of it.
    Requeued(Delivery),
    /// Only failed deliveries are replayed; this one is in another state.
    NotFailed(Delivery),
    /// No such delivery in the caller's scope.
    NotFound,
}

/// The dispatcher's side of a store; every `Store` is one.
#[async_trait]
pub trait DispatchStore: Send + Sync {
    /// Changes whenever entries may have been written to the log: by this process, and
    /// on PostgreSQL by any process on the database (a notification on commit). Writes
    /// can be missed (a lost connection): it wakes a dispatcher early, it does not
    /// replace looking.
    fn log_writes(&self) -> tokio::sync::watch::Receiver<()>;

    /// Renews `owner`'s presence and its leases for `ttl`, hands back what is over its
    /// fair share of `wanted` (live dispatchers divide it evenly), and takes free or
    /// expired partitions up to that share. Returns the leases of `wanted` it holds.
    async fn claim_leases(
        &self,
        owner: &str,
        wanted: &[(Lane, PartitionId)],
        ttl: chrono::Duration,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<Lease>>;

    /// Every partition of the log as of `at`, for the group (see [`PartitionWatch`]).
    async fn watch_partitions(
        &self,
        group: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<PartitionWatch>>;

    /// Deliveries FAILED for good, per district with any: the dead letters' depth.
    async fn dead_letter_counts(&self) -> StoreResult<Vec<(DistrictId, u64)>>;

    /// Dispatchers whose presence has not expired at `at` (each renews it with its leases).
    async fn live_dispatchers(&self, at: DateTime<Utc>) -> StoreResult<u64>;

    /// Ends `owner`'s leases now (a graceful stop), so others take them at once.
    async fn release_leases(&self, owner: &str, at: DateTime<Utc>) -> StoreResult<()>;

    /// The last offset of the partition the group has finished with.
    async fn committed_offset(
        &self,
        group: &str,
        lane: Lane,
        partition: PartitionId,
    ) -> StoreResult<Option<i64>>;

    /// Moves the group's offset forward; `StoreError::Fenced` if the lease is stale.
    async fn commit_offset(
        &self,
        group: &str,
        lease: &Lease,
        offset: i64,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// A partition's entries after `after`, with their deliveries and content.
    async fn read_outbound(
        &self,
        lane: Lane,
        partition: PartitionId,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<Outbound>>;

    /// Per partition of the log: where its entries end and, per district with entries in
    /// it, the offset of its last one (as one consistent reading).
    async fn partition_heads(&self) -> StoreResult<Vec<(Lane, PartitionId, PartitionDistricts)>>;

    /// Per district of `after`, the partition's entries after that district's offset and
    /// up to `through`: at most `limit_each` of each district, in offset order per
    /// district.
    async fn read_outbound_of_districts(
        &self,
        lane: Lane,
        partition: PartitionId,
        through: i64,
        after: &[(DistrictId, i64)],
        limit_each: u32,
    ) -> StoreResult<Vec<Outbound>>;

    /// Per district and lane with deliveries whose `next_attempt_at` has come by `at`:
    /// how many, counted up to `cap`.
    async fn due_counts(&self, at: DateTime<Utc>, cap: u32) -> StoreResult<Vec<DueCount>>;

    /// Per district and lane of `shares`, its deliveries whose `next_attempt_at` has come
    /// by `at`, oldest first and at most its share; all of them by lane, most urgent
    /// first, then oldest first.
    async fn due_outbound(
        &self,
        at: DateTime<Utc>,
        shares: &[DueCount],
    ) -> StoreResult<Vec<Outbound>>;

    /// Records a new attempt as in flight for each of `items` (the delivery as read and
    /// the provider to call), before the provider calls, in one transaction under the
    /// lease: compare and swap to QUEUED on the version read, an unfinished earlier
    /// attempt recorded as in doubt, `recover_at` as when the delivery comes due again
    /// should its outcome never be recorded. `StoreError::Fenced` if the lease is stale.
    async fn start_attempts(
        &self,
        lease: &Lease,
        items: &[(&Delivery, &str)],
        actor: &str,
        recover_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<AttemptStart>>;

    /// Records how each attempt of `items` ended and moves its delivery (compare and
    /// swap on the version read), in one transaction under the lease, which also moves
    /// the consumer offset `commit` (group, offset) when given. An attempt someone else
    /// already closed changes nothing (`Conflict`).
    async fn finish_attempts(
        &self,
        lease: &Lease,
        items: &[(&Delivery, i32, &AttemptResult)],
        actor: &str,
        commit: Option<(&str, i64)>,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<CasOutcome>>;

    /// Moves each of `items` (delivery as read, new time) to a later `next_attempt_at`,
    /// without an attempt, under the lease; whether each moved (compare and swap).
    async fn defer_deliveries(
        &self,
        lease: &Lease,
        items: &[(&Delivery, DateTime<Utc>)],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>>;

    /// Suppresses (reason `fallback_not_needed`) each standby of `items` (as read), under
    /// the lease; whether each moved (compare and swap).
    async fn skip_standbys(
        &self,
        lease: &Lease,
        items: &[&Delivery],
        actor: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>>;

    /// For each (guardian, channel) of `pairs` with deliveries in `lane` or a more urgent
    /// one that wait for a retry after `at` or are at the provider now: when the earliest
    /// of them was created and when the last retry is due. A delivery waits behind these
    /// only: an alert never waits for the guardian's newsletter.
    async fn retrying(
        &self,
        pairs: &[(crate::GuardianId, Channel)],
        lane: crate::Lane,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<Retrying>>;

    /// [`DispatchStore::start_attempts`] for one delivery.
    async fn start_attempt(
        &self,
        lease: &Lease,
        seen: &Delivery,
        provider: &str,
        actor: &str,
        recover_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> StoreResult<AttemptStart> {
        let mut started = self
            .start_attempts(lease, &[(seen, provider)], actor, recover_at, at)
            .await?;
        Ok(started.remove(0))
    }

    /// [`DispatchStore::finish_attempts`] for one delivery.
    async fn finish_attempt(
        &self,
        lease: &Lease,
        seen: &Delivery,
        attempt: i32,
        result: &AttemptResult,
        actor: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<CasOutcome> {
        let mut finished = self
            .finish_attempts(lease, &[(seen, attempt, result)], actor, None, at)
            .await?;
        Ok(finished.remove(0))
    }

    /// Attempts recorded, by outcome (`sent`, `in_doubt`, …).
    async fn attempt_outcomes(&self) -> StoreResult<std::collections::BTreeMap<String, i64>>;

    /// A delivery in the caller's scope with its attempts, oldest first.
    async fn delivery_attempts(
        &self,
        scope: &MessageScope,
        id: crate::DeliveryId,
    ) -> StoreResult<Option<(Delivery, Vec<AttemptRecord>)>>;

    /// Failed deliveries in the caller's scope, newest first, before the id `before`.
    async fn dead_letters(
        &self,
        scope: &MessageScope,
        before: Option<crate::DeliveryId>,
        limit: u32,
    ) -> StoreResult<Vec<Delivery>>;

    /// Puts a failed delivery back in the queue (compare and swap FAILED → QUEUED, with
    /// an event naming `actor`).
    async fn replay_dead_letter(
        &self,
        scope: &MessageScope,
        id: crate::DeliveryId,
        actor: &crate::delivery::Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<Replay>;
}

/// The result of each of a batch's attempt starts, in order: started (the delivery as
/// moved), or moved by someone else (as it is now).
pub(crate) fn starts_in_order(
    ids: impl Iterator<Item = uuid::Uuid>,
    mut moved: std::collections::HashMap<uuid::Uuid, Delivery>,
    in_doubt: &std::collections::HashSet<uuid::Uuid>,
    mut now: std::collections::HashMap<uuid::Uuid, Delivery>,
) -> super::StoreResult<Vec<AttemptStart>> {
    ids.map(|id| match moved.remove(&id) {
        Some(delivery) => Ok(AttemptStart::Started {
            attempt: delivery.attempts,
            earlier_in_doubt: in_doubt.contains(&id),
            delivery,
        }),
        None => now
            .remove(&id)
            .map(AttemptStart::Moved)
            .ok_or_else(|| super::StoreError::Corrupt(format!("delivery {id} vanished"))),
    })
    .collect()
}

/// The result of each of a batch's attempt finishes, in order: applied (the delivery as
/// moved), or a conflict (the delivery as it is now).
pub(crate) fn finishes_in_order(
    ids: impl Iterator<Item = uuid::Uuid>,
    mut applied: std::collections::HashMap<uuid::Uuid, Delivery>,
    mut now: std::collections::HashMap<uuid::Uuid, Delivery>,
) -> super::StoreResult<Vec<CasOutcome>> {
    ids.map(|id| match applied.remove(&id) {
        Some(d) => Ok(CasOutcome::Applied(d)),
        None => now
            .remove(&id)
            .map(CasOutcome::Conflict)
            .ok_or_else(|| super::StoreError::Corrupt(format!("delivery {id} vanished"))),
    })
    .collect()
}
