//! Attempts: a batch's sends through its providers, each recorded before the call and
//! its outcome after (with the offset), classified into retries, failures and
//! suppressions; standbys skipped, deliveries held back behind a guardian's earlier one or
//! an open breaker, contact points retired when a provider refuses them for good.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tidings_channel_adapters::{AckInvite, AddressFault, Outgoing, SendOutcome};
use tidings_core::delivery::Delivery;
use tidings_core::store::dispatch::{AttemptResult, AttemptStart, Lease, Outbound};
use tidings_core::store::{CasOutcome, StoreError};
use tidings_core::{Channel, DeliveryGuarantee, DeliveryId};

use crate::concurrency::{self, Concurrency};
use crate::rates::RateShares;
use crate::{Config, Counters, DispatchError, Dispatcher, CONSUMER_GROUP};

/// How long a delivery waits, at a time, behind the same guardian's earlier one on its
/// channel while that one is at the provider: about as long as a call takes.
pub(crate) const IN_FLIGHT_WAIT: chrono::Duration = chrono::Duration::seconds(1);

/// Until when a delivery created at `created_at` waits behind `earlier` (the guardian's
/// unfinished deliveries on its channel, of its lane or a more urgent one), looking at
/// `at`: a second past the last retry due, or a moment when they are all at the provider
/// (the call ends soon, and its outcome decides), never past `created_at + max_wait`.
/// None: it goes now.
pub(crate) fn wait_behind(
    earlier: Option<&tidings_core::store::dispatch::Retrying>,
    created_at: DateTime<Utc>,
    at: DateTime<Utc>,
    max_wait: chrono::Duration,
) -> Option<DateTime<Utc>> {
    let earlier = earlier.filter(|e| e.first_created_at < created_at)?;
    let last = created_at + max_wait;
    if at >= last {
        return None;
    }
    let until = match earlier.due {
        Some(due) => due + chrono::Duration::seconds(1),
        None => at + IN_FLIGHT_WAIT,
    };
    Some(until.min(last))
}

/// One send through `adapter`. An adapter that panics is a bug on our side, not the
/// guardian's problem: the send is in doubt (retried, or failed if at most once), and the
/// dispatcher carries on.
async fn call(
    adapter: &dyn tidings_channel_adapters::ChannelAdapter,
    one: &Outgoing,
) -> SendOutcome {
    use futures_util::FutureExt as _;
    let answered = std::panic::AssertUnwindSafe(adapter.send(std::slice::from_ref(one)))
        .catch_unwind()
        .await;
    match answered {
        Ok(mut outcomes) => outcomes.pop().unwrap_or_else(|| SendOutcome::InDoubt {
            error: "the adapter answered nothing".into(),
        }),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(provider = adapter.provider(), panic = %why, "channel adapter panicked");
            let error = format!("the {} adapter failed unexpectedly", adapter.provider());
            SendOutcome::InDoubt { error }
        }
    }
}

pub(crate) fn outgoing(o: &Outbound, config: &Config, now: DateTime<Utc>) -> Outgoing {
    let recipient = o.delivery.recipient_id;
    let channel = o.delivery.channel;
    let links = config.links.as_ref();
    let ack = (o.requires_ack && channel != Channel::Push).then(|| AckInvite {
        url: links.map(|l| l.ack_url(recipient, channel, now)),
        reply_keyword: config
            .sms_ack_keyword
            .clone()
            .filter(|_| channel == Channel::Sms),
    });
    Outgoing {
        language: o.language.clone(),
        ack,
        unsubscribe_url: links
            .filter(|_| channel == Channel::Email)
            .map(|l| l.unsubscribe_url(recipient, now)),
        delivery_reports: true,
        delivery_id: o.delivery.id,
        message_id: o.delivery.message_id,
        idempotency_key: o.delivery.idempotency_key.clone(),
        channel: o.delivery.channel,
        address: o.delivery.address.clone().unwrap_or_default(),
        kind: o.kind,
        subject: o.subject.clone(),
        body: o.body.clone(),
        span: send_span(o),
    }
}

/// The span of one send: inside the batch's, joined to the delivery and its message, and
/// linked to the request that wrote the message.
fn send_span(o: &Outbound) -> tracing::Span {
    let span = tracing::info_span!(
        "provider_call",
        delivery_id = %o.delivery.id,
        message_id = %o.delivery.message_id,
        channel = %o.delivery.channel,
        attempt = o.delivery.attempts,
    );
    if let Some(request) = &o.traceparent {
        tidings_core::telemetry::link(&span, request);
    }
    span
}

impl Dispatcher {
    /// Takes a token from the rate limiter of the provider the delivery goes to, if it
    /// has one.
    pub(crate) fn may_send(&self, delivery: &Delivery) -> bool {
        self.rate_shares().may_send(self.provider_of(delivery))
    }

    pub(crate) fn rate_shares(&self) -> std::sync::MutexGuard<'_, RateShares> {
        self.limiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<DeliveryId>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an attempt for each delivery, calls the providers, records the outcomes:
    /// one store transaction before the calls and one after, for the whole batch.
    /// `offset`: the batch's last log offset, committed before the calls when an
    /// at-most-once delivery is among them. `calls_ended` is called once every call has
    /// been answered, before the outcomes are recorded.
    #[tracing::instrument(name = "dispatch_batch", skip_all, fields(lane = %lease.lane, partition = %lease.partition, deliveries = batch.len()))]
    pub(crate) async fn send(
        &self,
        lease: &Lease,
        batch: Vec<Outbound>,
        offset: Option<i64>,
        calls_ended: &(dyn Fn() + Sync),
    ) -> Result<bool, DispatchError> {
        let owner = self.config.owner.as_str();
        let at = self.now();
        let recover_at = at
            + chrono::Duration::from_std(self.config.in_doubt_after)
                .unwrap_or(chrono::Duration::minutes(2));
        // At most once: an attempt that may have reached the provider is never repeated.
        let (abandoned, batch): (Vec<Outbound>, Vec<Outbound>) = batch.into_iter().partition(|o| {
            o.unfinished_attempt.is_some() && o.guarantee == DeliveryGuarantee::AtMostOnce
        });
        let mut finishing: Vec<(Outbound, i32, AttemptResult)> = abandoned
            .into_iter()
            .map(|o| {
                let attempt = o.unfinished_attempt.unwrap_or(o.delivery.attempts);
                let result = AttemptResult::Failed {
                    in_doubt: true,
                    permanent: false,
                    error: "in_doubt: the dispatcher stopped before the provider answered".into(),
                };
                (o, attempt, result)
            })
            .collect();

        // The database's turn for the writes before the calls; none while they are out.
        let turn = self.database_turn().await;
        let batch = self.skip_standbys(lease, batch, at).await?;
        let batch = self.hold_back(lease, batch, at).await?;

        // 1. Attempts recorded before any call.
        let items: Vec<(&tidings_core::delivery::Delivery, &str)> = batch
            .iter()
            .map(|o| (&o.delivery, self.provider(o.delivery.channel)))
            .collect();
        let starts = if items.is_empty() {
            Vec::new()
        } else {
            self.store
                .start_attempts(lease, &items, owner, recover_at, at)
                .await?
        };
        let mut started: Vec<(Outbound, i32)> = Vec::new();
        let mut in_flight = InFlight {
            set: &self.in_flight,
            ids: Vec::new(),
        };
        for (mut o, start) in batch.into_iter().zip(starts) {
            let AttemptStart::Started {
                delivery,
                attempt,
                earlier_in_doubt,
            } = start
            else {
                continue; // moved on meanwhile: sent, cancelled, or someone else's
            };
            if earlier_in_doubt {
                Counters::add(&self.counters.in_doubt, "in_doubt");
            }
            o.delivery = delivery;
            if self.adapters.get(o.delivery.channel).is_none() {
                // A dead letter staff can see and replay once the channel is configured,
                // rather than a delivery that silently never goes.
                tracing::error!(delivery_id = %o.delivery.id, message_id = %o.delivery.message_id, channel = %o.delivery.channel, "no provider is configured for this channel");
                let error = format!("no provider is configured for {}", o.delivery.channel);
                let result = AttemptResult::Failed {
                    in_doubt: false,
                    permanent: false,
                    error,
                };
                finishing.push((o, attempt, result));
            } else {
                in_flight.add(o.delivery.id);
                started.push((o, attempt));
            }
        }

        // 2. At most once: the offset moves before the call, so a crash can lose the send
        //    but never repeat it.
        if let Some(offset) = offset {
            if started
                .iter()
                .any(|(o, _)| o.guarantee == DeliveryGuarantee::AtMostOnce)
            {
                self.store
                    .commit_offset(CONSUMER_GROUP, lease, offset, self.now())
                    .await?;
            }
        }

        drop(turn);

        // 3. The calls, one batch per provider, providers side by side, each within its
        //    bound of sends in flight.
        let mut per_provider: BTreeMap<(Channel, &str), Vec<(Outbound, i32)>> = BTreeMap::new();
        for s in started {
            let provider = self.provider_of(&s.0.delivery);
            per_provider
                .entry((s.0.delivery.channel, provider))
                .or_default()
                .push(s);
        }
        let calls = per_provider
            .into_iter()
            .map(|((channel, provider), sends)| async move {
                let outgoing: Vec<Outgoing> = sends
                    .iter()
                    .map(|(o, _)| outgoing(o, &self.config, self.now()))
                    .collect();
                let slots = self.provider_slots(provider);
                let outcomes = match self.adapters.get(channel) {
                    // One call per send, each in its own place among the provider's sends in
                    // flight: a slow answer holds only its own.
                    Some(adapter) => {
                        futures_util::future::join_all(outgoing.iter().map(|one| async {
                            let slot = slots.acquire().await;
                            let outcome = call(adapter.as_ref(), one).await;
                            slot.answered(concurrency::Signal::of(&outcome));
                            outcome
                        }))
                        .await
                    }
                    // Taken out above (a dead letter); one outcome per send all the same.
                    None => {
                        let error = format!("no provider is configured for {channel}");
                        vec![SendOutcome::InDoubt { error }; outgoing.len()]
                    }
                };
                (
                    provider,
                    sends.into_iter().zip(outcomes).collect::<Vec<_>>(),
                )
            });
        let answers = futures_util::future::join_all(calls).await;
        calls_ended();
        let mut retiring = Vec::new();
        for (provider, answered) in answers {
            // A provider asking to slow down is up: fewer sends in flight answer that, not
            // the breaker.
            let failed = answered
                .iter()
                .filter(|(_, outcome)| {
                    matches!(
                        outcome,
                        SendOutcome::Transient { .. } | SendOutcome::InDoubt { .. }
                    )
                })
                .count();
            if let Some(until) = self
                .breakers
                .record(provider, answered.len(), failed, self.now())
            {
                tracing::warn!(provider, %until, "provider keeps failing: its sends pause (circuit breaker open)");
            }
            for ((o, attempt), outcome) in answered {
                if let SendOutcome::Unreachable { fault, .. } = &outcome {
                    retiring.push((o.delivery.clone(), *fault));
                }
                let result = self.classify(&o, attempt, outcome);
                finishing.push((o, attempt, result));
            }
        }

        // 4. Outcomes recorded; addresses the providers refused for good taken out of use.
        let turn = self.database_turn().await;
        let finished = self.finish(lease, &finishing, offset).await;
        if finished.is_ok() {
            self.retire(&retiring).await;
        }
        drop(turn);
        drop(in_flight);
        finished
    }

    /// The bound on sends in flight to `provider`: adapting to its answers, within its
    /// rate.
    pub(crate) fn provider_slots(&self, provider: &str) -> Arc<Concurrency> {
        let mut slots = self
            .provider_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        slots
            .entry(provider.to_owned())
            .or_insert_with(|| {
                let rate = self.rate_shares().rate(provider);
                Arc::new(Concurrency::new(provider, self.config.concurrency, rate))
            })
            .clone()
    }

    pub(crate) fn provider(&self, channel: Channel) -> &str {
        self.adapters
            .get(channel)
            .map_or("unconfigured", |a| a.provider())
    }

    /// The provider a delivery goes to, as its circuit breaker is keyed.
    pub(crate) fn provider_of(&self, delivery: &Delivery) -> &str {
        self.adapters
            .get(delivery.channel)
            .map_or("unconfigured", |a| {
                a.provider_of(delivery.address.as_deref().unwrap_or_default())
            })
    }

    /// Suppresses the standbys (of messages with fallback) whose channel before them
    /// reached the guardian, and puts off for a moment those behind a standby not decided
    /// yet; returns the rest.
    pub(crate) async fn skip_standbys(
        &self,
        lease: &Lease,
        batch: Vec<Outbound>,
        at: DateTime<Utc>,
    ) -> Result<Vec<Outbound>, DispatchError> {
        let (undecided, batch): (Vec<Outbound>, Vec<Outbound>) =
            batch.into_iter().partition(Outbound::fallback_undecided);
        if !undecided.is_empty() {
            let later = at + chrono::Duration::seconds(1);
            let items: Vec<_> = undecided.iter().map(|o| (&o.delivery, later)).collect();
            self.store.defer_deliveries(lease, &items, at).await?;
        }
        let (skipped, go): (Vec<Outbound>, Vec<Outbound>) =
            batch.into_iter().partition(Outbound::fallback_not_needed);
        if !skipped.is_empty() {
            let items: Vec<&Delivery> = skipped.iter().map(|o| &o.delivery).collect();
            let moved = self
                .store
                .skip_standbys(lease, &items, &self.config.owner, at)
                .await?;
            for _ in moved.into_iter().filter(|m| *m) {
                Counters::add(&self.counters.standbys_skipped, "standby_skipped");
            }
        }
        Ok(go)
    }

    /// Holds back, without an attempt, what must not go yet: a guardian's delivery on a
    /// channel where an earlier one of its lane or a more urgent one is waiting for a
    /// retry or at the provider (so a correction never overtakes the alert it corrects;
    /// bounded by `max_order_wait`; see [`wait_behind`]), and sends to a provider whose
    /// circuit breaker is open. Returns the rest. A batch is one lane's.
    pub(crate) async fn hold_back(
        &self,
        lease: &Lease,
        batch: Vec<Outbound>,
        at: DateTime<Utc>,
    ) -> Result<Vec<Outbound>, DispatchError> {
        if batch.is_empty() {
            return Ok(batch);
        }
        let pairs: Vec<_> = batch
            .iter()
            .map(|o| (o.delivery.guardian_id, o.delivery.channel))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let retrying: HashMap<_, _> = self
            .store
            .retrying(&pairs, lease.lane, at)
            .await?
            .into_iter()
            .map(|r| ((r.guardian_id, r.channel), r))
            .collect();
        let max_wait = chrono::Duration::from_std(self.config.max_order_wait)
            .unwrap_or(chrono::Duration::minutes(10));
        let mut go = Vec::with_capacity(batch.len());
        let mut wait = Vec::new();
        for o in batch {
            let d = &o.delivery;
            let earlier = retrying.get(&(d.guardian_id, d.channel));
            let behind = wait_behind(earlier, d.created_at, at, max_wait);
            let paused = self.breakers.held_until(self.provider_of(d), at);
            match behind.max(paused) {
                Some(until) => wait.push((o, until)),
                None => go.push(o),
            }
        }
        if !wait.is_empty() {
            let items: Vec<_> = wait
                .iter()
                .map(|(o, until)| (&o.delivery, *until))
                .collect();
            let moved = self.store.defer_deliveries(lease, &items, at).await?;
            for _ in moved.into_iter().filter(|m| *m) {
                Counters::add(&self.counters.deferred, "deferred");
            }
        }
        Ok(go)
    }

    /// Takes the addresses providers refused for good out of use: an invalid or gone one
    /// is retired with the reason, a carrier STOP becomes the guardian's opt-out, all in one
    /// transaction. A failure here is logged, not fatal: the next send to the address
    /// would report it again.
    pub(crate) async fn retire(&self, retiring: &[(Delivery, AddressFault)]) {
        let retiring: Vec<(&Delivery, &str, AddressFault)> = retiring
            .iter()
            .filter_map(|(d, fault)| Some((d, d.address.as_deref()?, *fault)))
            .collect();
        if retiring.is_empty() {
            return;
        }
        if let Err(e) = self.retire_in_one(&retiring).await {
            tracing::warn!(addresses = retiring.len(), error = %e, "could not take addresses out of use");
            return;
        }
        for (delivery, _, fault) in retiring {
            Counters::add(&self.counters.retired, "retired");
            tracing::info!(delivery_id = %delivery.id, message_id = %delivery.message_id, guardian_id = %delivery.guardian_id, channel = %delivery.channel, reason = fault.as_str(), "address taken out of use");
        }
    }

    async fn retire_in_one(
        &self,
        retiring: &[(&Delivery, &str, AddressFault)],
    ) -> Result<(), StoreError> {
        let at = self.now();
        let mut tx = self.store.begin().await?;
        for &(delivery, address, fault) in retiring {
            let (guardian, channel) = (delivery.guardian_id, delivery.channel);
            match fault {
                AddressFault::OptedOut => {
                    tx.add_opt_out(delivery.district_id, guardian, channel, "carrier", at)
                        .await?;
                }
                AddressFault::Invalid | AddressFault::Gone => {
                    // A device is addressed platform:token; its contact point holds the token.
                    let stored = match channel {
                        Channel::Push => tidings_channel_adapters::push::split(address)
                            .map_or(address, |(_, token)| token),
                        _ => address,
                    };
                    tx.retire_address(guardian, channel, stored, fault.as_str(), at)
                        .await?;
                }
            }
        }
        tx.commit().await
    }

    pub(crate) fn classify(
        &self,
        o: &Outbound,
        attempt: i32,
        outcome: SendOutcome,
    ) -> AttemptResult {
        let at_most_once = o.guarantee == DeliveryGuarantee::AtMostOnce;
        let (error, retry_after, in_doubt) = match outcome {
            SendOutcome::Sent { provider_ref } => return AttemptResult::Sent { provider_ref },
            SendOutcome::Permanent { error } => {
                return AttemptResult::Failed {
                    in_doubt: false,
                    permanent: true,
                    error,
                }
            }
            SendOutcome::Unreachable {
                error,
                fault: AddressFault::OptedOut,
            } => return AttemptResult::OptedOut { error },
            SendOutcome::Unreachable { error, fault } => {
                return AttemptResult::Failed {
                    in_doubt: false,
                    permanent: true,
                    error: format!("{}: {error}", fault.as_str()),
                }
            }
            SendOutcome::Transient { error, retry_after }
            | SendOutcome::Throttled { error, retry_after } => (error, retry_after, false),
            SendOutcome::InDoubt { error } => (error, None, true),
        };
        if at_most_once {
            let error = if in_doubt {
                format!("in_doubt: {error}")
            } else {
                error
            };
            return AttemptResult::Failed {
                in_doubt,
                permanent: false,
                error,
            };
        }
        let delay = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            let counted = (attempt - o.attempt_base).max(1) as u32;
            self.config
                .retry
                .delay_after(counted, retry_after, &mut *rng)
        };
        match delay {
            Some(delay) => AttemptResult::Retry {
                at: self.now()
                    + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::hours(5)),
                in_doubt,
                error,
            },
            None => AttemptResult::Failed {
                in_doubt,
                permanent: false,
                error: format!(
                    "gave up after {} attempts: {error}",
                    attempt - o.attempt_base
                ),
            },
        }
    }

    /// Records the outcomes and counts what they did; with `offset`, commits the log
    /// offset in the same transaction. Whether the offset was committed.
    pub(crate) async fn finish(
        &self,
        lease: &Lease,
        finishing: &[(Outbound, i32, AttemptResult)],
        offset: Option<i64>,
    ) -> Result<bool, DispatchError> {
        if finishing.is_empty() {
            return Ok(false);
        }
        let items: Vec<_> = finishing
            .iter()
            .map(|(o, attempt, result)| (&o.delivery, *attempt, result))
            .collect();
        let commit = offset.map(|offset| (CONSUMER_GROUP, offset));
        // The sends have been made: left unrecorded, they would be taken up as in doubt and
        // sent again. So a passing error is tried again (the write is a compare-and-swap:
        // one that did commit before its answer was lost changes nothing the second time)
        // for as long as the lease would have lasted; after that a new owner would take
        // them up anyway.
        let (started, mut pause) = (std::time::Instant::now(), Duration::from_millis(20));
        let applied = loop {
            match self
                .store
                .finish_attempts(lease, &items, &self.config.owner, commit, self.now())
                .await
            {
                Ok(applied) => break applied,
                Err(StoreError::Fenced { .. }) => {
                    // The new owner takes these attempts up as unfinished.
                    Counters::add(&self.counters.fenced, "fenced");
                    return Ok(false);
                }
                Err(error) if error.is_transient() && started.elapsed() < self.config.lease_ttl => {
                    Counters::add(&self.counters.record_retried, "record_retried");
                    tracing::warn!(owner = %self.config.owner, lane = %lease.lane, partition = %lease.partition, error = %tidings_core::store::error_chain(&error), "could not record the outcomes of sends; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e.into()),
            }
        };
        for ((o, _, result), applied) in finishing.iter().zip(applied) {
            let (counter, outcome) = match result {
                AttemptResult::Sent { .. } => (&self.counters.sent, "sent"),
                AttemptResult::OptedOut { .. } => (&self.counters.opted_out, "opted_out"),
                AttemptResult::Retry { .. } => (&self.counters.retried, "retried"),
                AttemptResult::Failed { .. } => (&self.counters.failed, "failed"),
            };
            let in_doubt = matches!(
                result,
                AttemptResult::Retry { in_doubt: true, .. }
                    | AttemptResult::Failed { in_doubt: true, .. }
            );
            // Every call made, whether or not its outcome still moved the delivery (a
            // provider's report may have overtaken the answer).
            metrics::counter!(
                tidings_core::telemetry::ATTEMPTS,
                "channel" => o.delivery.channel.as_str(),
                "lane" => o.lane.as_str(),
                "outcome" => outcome,
                "in_doubt" => if in_doubt { "true" } else { "false" },
            )
            .increment(1);
            if !matches!(applied, CasOutcome::Applied(_)) {
                continue;
            }
            Counters::add(counter, outcome);
            if in_doubt {
                Counters::add(&self.counters.in_doubt, "in_doubt");
                if o.guarantee == DeliveryGuarantee::AtMostOnce {
                    Counters::add(&self.counters.lost_in_doubt, "lost_in_doubt");
                }
            }
        }
        Ok(commit.is_some())
    }
}

/// The deliveries of a batch this process has at a provider: not read again as due while
/// their calls are out, and let go however the batch ends — its outcomes recorded, an
/// error returned, or the batch's future dropped half way (a pass that gave up on a
/// failed read). Were they kept, this process would pass them over for good, and only
/// another process would ever send them.
struct InFlight<'a> {
    set: &'a std::sync::Mutex<HashSet<DeliveryId>>,
    ids: Vec<DeliveryId>,
}

impl InFlight<'_> {
    fn add(&mut self, id: DeliveryId) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id);
        self.ids.push(id);
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut set = self.set.lock().unwrap_or_else(|p| p.into_inner());
        for id in &self.ids {
            set.remove(id);
        }
    }
}
