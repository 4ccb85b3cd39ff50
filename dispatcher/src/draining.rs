//! Draining: reading the next batch of a held partition (each district its share, the
//! most urgent lane first) and the deliveries that have come due, and cutting a batch so
//! that a guardian's messages on one channel go out in order.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use tidings_core::store::dispatch::{Lease, Outbound, PartitionDistricts};
use tidings_core::store::StoreError;
use tidings_core::{DeliveryState, DistrictId, Lane};

use crate::partitions::{Backlog, Partitions, POISON_TRIES};
use crate::{districts, DispatchError, Dispatcher, Key, CONSUMER_GROUP};

/// Due deliveries read per pass, in multiples of `max_in_flight`: each partition's share
/// is what one provider call per partition carries (at 4, 64 partitions get 64 each of
/// the default 1,024 × 4); only `batches_at_once` partitions' sends are in flight at once.
pub(crate) const DUE_READ_AHEAD: u32 = 4;

/// What a batch of a partition came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Entries were taken off the log.
    pub(crate) worked: bool,
    /// A provider's rate limit held entries back: worth another look as soon as it lets
    /// more through, while the pass's other batches are still out.
    pub(crate) rate_held: bool,
}

/// How soon a partition a rate limit held back is looked at again during a pass: a
/// quarter of the time a burst's worth of the rate takes to come back (a tenth of a
/// second, see `rates::BURST_PARTS`), so that what comes back is taken before the
/// bucket is full and none of the rate goes unused (measured at 500/s with 200 ms
/// answers: 84 % of the rate used looking again after 100 ms, 99 % after 25 ms).
const RATE_LOOK_AGAIN: std::time::Duration = std::time::Duration::from_millis(25);

/// Moves to the front of their lane (the end: batches are popped) the partitions of
/// `fresh` where a district has turned up that `planned` does not list for them, with
/// the fresh heads, and notes them as planned. A partition in `busy` (a batch in hand,
/// or held by a rate limit) is left for the next look.
pub(crate) fn newcomers_first(
    backlog: &mut Backlog,
    fresh: Backlog,
    planned: &mut HashMap<Key, Vec<DistrictId>>,
    busy: &HashSet<Key>,
) {
    for (lane, waiting) in fresh {
        for (lease, heads) in waiting {
            let key = (lease.lane, lease.partition);
            if busy.contains(&key) {
                continue;
            }
            let known = planned.entry(key).or_default();
            if heads.district_ids().all(|d| known.contains(&d)) {
                continue;
            }
            *known = heads.district_ids().collect();
            let queue = backlog.entry(lane).or_default();
            queue.retain(|(l, _)| (l.lane, l.partition) != key);
            queue.push((lease, heads));
        }
    }
}

/// `items` with the groups `group` puts them in taking turns, one item each, in the order
/// the groups first appear; each group's own items keep their order.
pub(crate) fn in_turn<T, G: Eq + std::hash::Hash>(
    items: Vec<T>,
    group: impl Fn(&T) -> G,
) -> Vec<T> {
    let total = items.len();
    let mut place: HashMap<G, usize> = HashMap::new();
    let mut queues: Vec<std::collections::VecDeque<T>> = Vec::new();
    for item in items {
        let next = queues.len();
        let at = *place.entry(group(&item)).or_insert(next);
        if at == next {
            queues.push(std::collections::VecDeque::new());
        }
        queues[at].push_back(item);
    }
    let mut turns = Vec::with_capacity(total);
    while turns.len() < total {
        for queue in &mut queues {
            turns.extend(queue.pop_front());
        }
    }
    turns
}

/// Whether a store error means the database is out of reach for now or the partition
/// has passed to another dispatcher (wait), rather than something wrong with what was read
/// or written. Never counted against a log entry.
pub(crate) fn is_outage(error: &StoreError) -> bool {
    matches!(error, StoreError::Fenced { .. }) || error.is_transient()
}

impl Dispatcher {
    /// One batch from every partition with a backlog, several partitions side by side
    /// (as many batches at the providers as `max_in_flight` allows; a batch whose calls
    /// have all been answered records their outcomes while the next one goes out). The
    /// lane of each next batch is the most urgent with work, but for the lower lanes'
    /// share. Whenever a batch's place comes free the log is looked at again: new
    /// emergencies go before the rest, and a partition where a district turned up that
    /// this pass has not planned for there (a small district's message during a large
    /// one's broadcast) gets the next batch of its lane, instead of waiting for the next
    /// pass.
    pub(crate) async fn drain_lanes(&self, partitions: &Partitions) -> Result<bool, DispatchError> {
        use futures_util::StreamExt as _;
        let slots = self.config.batches_at_once();
        let mut worked = false;
        let mut backlog = self.backlog(partitions).await?;
        let mut planned: HashMap<Key, Vec<DistrictId>> = backlog
            .values()
            .flatten()
            .map(|(l, heads)| ((l.lane, l.partition), heads.district_ids().collect()))
            .collect();
        let mut running = futures_util::stream::FuturesUnordered::new();
        let mut busy: HashSet<Key> = HashSet::new();
        // The batches (by number) whose sends are not all answered yet: `slots` at a time.
        // A batch whose calls have ended frees its slot while it records their outcomes,
        // so that the next batch is read, started and sent meanwhile.
        let mut calling: HashSet<u64> = HashSet::new();
        let mut numbered = 0u64;
        let (calls_ended, mut ended_calls) = tokio::sync::mpsc::unbounded_channel::<u64>();
        // Partitions a rate limit held back, looked at again while other batches are out
        // (a pass with none out ends, and the next starts after what has come due).
        let mut rate_held: Vec<(Lease, PartitionDistricts)> = Vec::new();
        loop {
            while calling.len() < slots {
                let Some((lease, heads)) = self.next_partition(&mut backlog, &busy) else {
                    break;
                };
                busy.insert((lease.lane, lease.partition));
                numbered += 1;
                let number = numbered;
                calling.insert(number);
                let calls_ended = calls_ended.clone();
                running.push(async move {
                    let ended = move || {
                        let _ = calls_ended.send(number);
                    };
                    let drained = self
                        .drain_batch(partitions, lease, heads.clone(), &ended)
                        .await;
                    (number, lease, heads, drained)
                });
            }
            if running.is_empty() {
                return Ok(worked);
            }
            let look_again = !rate_held.is_empty();
            tokio::select! {
                Some(number) = ended_calls.recv() => {
                    // Its slot is free (if the batch has not ended and freed it already).
                    if !calling.remove(&number) {
                        continue;
                    }
                }
                () = tokio::time::sleep(RATE_LOOK_AGAIN), if look_again => {
                    for (lease, heads) in rate_held.drain(..) {
                        let key = (lease.lane, lease.partition);
                        let queue = backlog.entry(lease.lane).or_default();
                        queue.retain(|(l, _)| (l.lane, l.partition) != key);
                        queue.push((lease, heads));
                    }
                    continue;
                }
                Some((number, lease, heads, result)) = running.next() => {
                    busy.remove(&(lease.lane, lease.partition));
                    match result {
                        Ok(drained) => {
                            worked |= drained.worked;
                            if drained.rate_held {
                                rate_held.retain(|(l, _)| {
                                    (l.lane, l.partition) != (lease.lane, lease.partition)
                                });
                                rate_held.push((lease, heads));
                            }
                        }
                        // One partition's trouble is not the others': they go on, and this
                        // one is tried again (and isolated, then quarantined, if it keeps
                        // failing).
                        Err(DispatchError::Store(error)) if !is_outage(&error) => {
                            tracing::error!(owner = %self.config.owner, lane = %lease.lane, partition = %lease.partition, error = %tidings_core::store::error_chain(&error), "a batch failed");
                            worked = true;
                        }
                        Err(error) => {
                            // Let the batches in hand record their outcomes before giving up.
                            while running.next().await.is_some() {}
                            return Err(error);
                        }
                    }
                    // A batch whose calls ended freed its slot then, and the log was
                    // looked at then.
                    if !calling.remove(&number) {
                        continue;
                    }
                }
            }
            // A slot is free. Before any further batch, look for newcomers; with no
            // emergency waiting, every emergency on the log is one. Should the look fail,
            // the batches in hand still record their outcomes before the pass gives up.
            let fresh = match self.backlog(partitions).await {
                Ok(fresh) => fresh,
                Err(error) => {
                    while running.next().await.is_some() {}
                    return Err(error);
                }
            };
            if backlog.get(&Lane::Emergency).is_none_or(Vec::is_empty) {
                planned.retain(|(lane, _), _| *lane != Lane::Emergency);
            }
            // A partition a rate limit holds is not a newcomer: it is looked at again
            // after `RATE_LOOK_AGAIN`, not at once (that would read it again and again,
            // as fast as the database answers, until the limit lets a send through).
            let waiting: HashSet<Key> = busy
                .iter()
                .copied()
                .chain(rate_held.iter().map(|(l, _)| (l.lane, l.partition)))
                .collect();
            newcomers_first(&mut backlog, fresh, &mut planned, &waiting);
        }
    }

    /// The partition the next batch comes from: of the lane whose turn it is, one that
    /// has no batch in hand.
    pub(crate) fn next_partition(
        &self,
        backlog: &mut Backlog,
        busy: &HashSet<Key>,
    ) -> Option<(Lease, PartitionDistricts)> {
        backlog.retain(|_, leases| {
            leases.retain(|(l, _)| !busy.contains(&(l.lane, l.partition)));
            !leases.is_empty()
        });
        let waiting: Vec<Lane> = backlog.keys().copied().collect();
        let lane = self
            .shares
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pick(&waiting)?;
        backlog.get_mut(&lane).and_then(Vec::pop)
    }

    /// One batch of a partition: whether any entry was taken off the log, and whether a
    /// rate limit held some back. A partition
    /// whose batches keep failing with errors that are not outages goes one entry at a
    /// time, and an entry that still fails is quarantined.
    pub(crate) async fn drain_batch(
        &self,
        partitions: &Partitions,
        lease: Lease,
        heads: PartitionDistricts,
        calls_ended: &(dyn Fn() + Sync),
    ) -> Result<Drained, DispatchError> {
        let key = (lease.lane, lease.partition);
        let failures = self.failures().get(&key).copied().unwrap_or(0);
        if failures >= 2 * POISON_TRIES {
            self.quarantine(partitions, lease).await?;
            self.failures().remove(&key);
            return Ok(Drained {
                worked: true,
                rate_held: false,
            });
        }
        let limit = if failures >= POISON_TRIES {
            1
        } else {
            self.config.batch
        };
        match self
            .drain_batch_of(partitions, lease, heads, limit, calls_ended)
            .await
        {
            Ok(worked) => {
                self.failures().remove(&key);
                Ok(worked)
            }
            Err(DispatchError::Store(error)) if !is_outage(&error) => {
                *self.failures().entry(key).or_default() += 1;
                Err(error.into())
            }
            Err(error) => Err(error),
        }
    }

    /// One batch of a partition, read district by district ([`districts`]): every
    /// district with entries up to `heads` gets an equal share. `limit` 1 (a partition
    /// isolating a poison entry) reads the next entry after the committed offset alone.
    pub(crate) async fn drain_batch_of(
        &self,
        partitions: &Partitions,
        lease: Lease,
        heads: PartitionDistricts,
        limit: u32,
        calls_ended: &(dyn Fn() + Sync),
    ) -> Result<Drained, DispatchError> {
        let key = (lease.lane, lease.partition);
        let Some((_, mut progress)) = partitions.progress(&key) else {
            return Ok(Drained::default()); // lost since the backlog was read
        };
        let turn = self.database_turn().await;
        let (plan, read) = if limit == 1 {
            let read = self
                .store
                .read_outbound(lease.lane, lease.partition, Some(progress.committed), 1)
                .await?;
            let plan = districts::Plan {
                through: read
                    .last()
                    .and_then(|o| o.offset)
                    .unwrap_or(progress.committed),
                reads: read
                    .iter()
                    .map(|o| (o.delivery.district_id, progress.committed))
                    .collect(),
                each: 1,
                unread_from: None,
            };
            (plan, read)
        } else {
            let plan = progress.plan(heads.last, &heads.districts, limit);
            let read = self
                .store
                .read_outbound_of_districts(
                    lease.lane,
                    lease.partition,
                    plan.through,
                    &plan.reads,
                    plan.each,
                )
                .await?;
            (plan, read)
        };
        drop(turn);
        let mut per_district: BTreeMap<DistrictId, Vec<Outbound>> = BTreeMap::new();
        for o in read {
            per_district
                .entry(o.delivery.district_id)
                .or_default()
                .push(o);
        }
        for entries in per_district.values_mut() {
            entries.sort_by_key(|o| o.offset);
        }
        let at = self.now();
        let (kept, rate_held) = self.cut(&per_district, at);
        // How far each district got: all it read (and, with fewer than its share, all it
        // has up to `through`), or up to where it was cut.
        let reached: HashMap<DistrictId, Option<i64>> = plan
            .reads
            .iter()
            .map(|&(district, after)| {
                let read: Vec<i64> = per_district
                    .get(&district)
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o.offset)
                    .collect();
                let kept = kept.get(&district).copied().unwrap_or(0);
                let got = plan.reached(after, &read, kept);
                (district, got)
            })
            .collect();
        let before = progress.committed;
        let committed = progress.advance(&plan, &reached);
        let ready: Vec<Outbound> = per_district
            .into_iter()
            .flat_map(|(district, mut entries)| {
                entries.truncate(kept.get(&district).copied().unwrap_or(0));
                entries
            })
            .filter(|o| self.ready(o, at))
            .collect();
        if committed == before && kept.values().all(|&n| n == 0) {
            // Held back: nothing taken off the log.
            return Ok(Drained {
                worked: false,
                rate_held,
            });
        }
        let offset = (committed > before).then_some(committed);
        let outcome = self.send(&lease, ready, offset, calls_ended).await;
        let recorded = match outcome {
            // Committed with the batch's outcomes (or nothing to commit).
            Ok(true) => Ok(()),
            Ok(false) => match offset {
                Some(offset) => {
                    let _turn = self.database_turn().await;
                    self.store
                        .commit_offset(CONSUMER_GROUP, &lease, offset, self.now())
                        .await
                }
                None => Ok(()),
            },
            Err(DispatchError::Store(error)) => Err(error),
        };
        match recorded {
            Ok(()) => {
                if let Some(held) = partitions.committed().get_mut(&key) {
                    *held = progress;
                }
                Ok(Drained {
                    worked: true,
                    rate_held,
                })
            }
            Err(StoreError::Fenced { .. }) => {
                self.lose(partitions, key);
                Ok(Drained {
                    worked: true,
                    rate_held: false,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Cuts each district's entries before a second one for the same guardian and channel
    /// (it goes after the first one's outcome is recorded) and where a provider's rate
    /// limit says "not yet" (the rest stays on the log). The districts take the rate
    /// limit's tokens in turn, one entry each. Returns how many entries each keeps, and
    /// whether a rate limit cut any.
    pub(crate) fn cut(
        &self,
        per_district: &BTreeMap<DistrictId, Vec<Outbound>>,
        at: DateTime<Utc>,
    ) -> (HashMap<DistrictId, usize>, bool) {
        let mut rate_held = false;
        let mut seen = HashSet::new();
        let mut kept: HashMap<DistrictId, usize> = HashMap::new();
        let mut open: Vec<DistrictId> = per_district.keys().copied().collect();
        let mut i = 0;
        while !open.is_empty() {
            open.retain(|district| {
                let entries = &per_district[district];
                let Some(o) = entries.get(i) else {
                    return false;
                };
                let first_for_guardian = seen.insert((o.delivery.guardian_id, o.delivery.channel));
                if !first_for_guardian {
                    return false;
                }
                if self.ready(o, at) && !self.may_send(&o.delivery) {
                    rate_held = true;
                    return false;
                }
                kept.insert(*district, i + 1);
                true
            });
            i += 1;
        }
        (kept, rate_held)
    }

    /// Whether a delivery read off the log (or found due) is to be sent now.
    pub(crate) fn ready(&self, o: &Outbound, at: DateTime<Utc>) -> bool {
        let d = &o.delivery;
        if !matches!(d.state, DeliveryState::Created | DeliveryState::Queued) {
            return false; // sent, cancelled, suppressed or finished already
        }
        if self.lock_in_flight().contains(&d.id) {
            return false;
        }
        // An unfinished attempt found on the log is taken up now (we own the partition, so
        // whoever started it has lost it); otherwise wait for the scheduled time.
        o.unfinished_attempt.is_some() || d.next_attempt_at.is_none_or(|t| t <= at)
    }

    /// Deliveries whose time has come, in partitions this process owns: read
    /// `DUE_READ_AHEAD` times `max_in_flight` at a time (they come in time order, spread
    /// over every partition), sent per partition, as many partitions side by side as
    /// batches of the log are — so a newsletter held by quiet hours goes out at their end
    /// nearly as fast as one sent straight away.
    pub(crate) async fn send_due(
        &self,
        partitions: &Partitions,
        written: &tokio::sync::watch::Receiver<()>,
    ) -> Result<usize, DispatchError> {
        use futures_util::StreamExt as _;
        let at = self.now();
        let limit =
            (self.config.max_in_flight.max(self.config.batch)).saturating_mul(DUE_READ_AHEAD);
        // Districts share the read: one district's scheduled broadcast coming due does not
        // hold up another district's retries or scheduled notice; inside a district's
        // share its emergencies go first.
        let waiting = self.store.due_counts(at, limit).await?;
        if waiting.is_empty() {
            return Ok(0);
        }
        let shares = districts::due_shares(&waiting, limit, self.config.lower_lane_every);
        let due = self.store.due_outbound(at, &shares).await?;
        let mut per_lease: BTreeMap<Key, (Lease, Vec<Outbound>)> = BTreeMap::new();
        for o in due {
            let key = (o.lane, o.partition);
            let lease = partitions.leases().get(&key).copied();
            let ready = self.ready(&o, at) && self.may_send(&o.delivery);
            if let Some(lease) = lease.filter(|_| ready) {
                per_lease
                    .entry(key)
                    .or_insert((lease, Vec::new()))
                    .1
                    .push(o);
            }
        }
        // Districts take turns inside a partition's share too, as they did in the look.
        for (_, due) in per_lease.values_mut() {
            *due = in_turn(std::mem::take(due), |o| o.delivery.district_id);
        }
        let read = per_lease.values().map(|(_, batch)| batch.len()).sum();
        // A write to the log (an alert, say) does not wait for the rest of the look: after
        // the first round of batches (always sent, so a steady stream of messages cannot
        // hold what is due back for ever) no further batch starts, and what was not sent
        // is still due, to be read first next time. A partition's share of a look goes in
        // batches of `batch`, one after another: a broadcast is written partition by
        // partition, so one look may hold a few partitions' hundreds.
        let first_round = self.config.batches_at_once();
        let cut = || written.has_changed().unwrap_or(false);
        let mut sending = futures_util::stream::iter(per_lease.into_values().enumerate())
            .take_while(|(i, _)| std::future::ready(*i < first_round || !cut()))
            .map(|(_, (lease, mut due))| async move {
                let mut sent = false;
                while !(due.is_empty() || sent && cut()) {
                    let rest = due.split_off(due.len().min(self.config.batch.max(1) as usize));
                    self.send(&lease, std::mem::replace(&mut due, rest), None, &|| {})
                        .await?;
                    sent = true;
                }
                Ok::<_, DispatchError>(())
            })
            .buffer_unordered(self.config.batches_at_once());
        let mut failed = None;
        while let Some(result) = sending.next().await {
            match result {
                Ok(_) | Err(DispatchError::Store(StoreError::Fenced { .. })) => {}
                // The other partitions' sends in hand still record their outcomes.
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(read),
        }
    }
}
