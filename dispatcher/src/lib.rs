//! The dispatcher: reads the partitioned delivery log, owns partitions by
//! lease, sends through the channel adapters, and records every attempt and outcome before
//! committing an offset. It never decides a transition itself: `tidings_core::delivery::next`
//! does, and the store's compare-and-swap refuses anything stale.
//!
//! One pass of the loop:
//! 1. (alongside, every third of the lease time: renew the leases, take free or expired
//!    partitions, and count the live dispatchers, who share each provider's rate;)
//! 2. for each owned partition with entries past its committed offset, read a batch (an
//!    equal share for every district with entries waiting, [`districts`]), send it,
//!    record the outcomes and commit the offset in one transaction — several
//!    partitions side by side, each next batch from the most urgent lane but for the
//!    lower lanes' share ([`lanes`]), the emergency lane looked at again whenever a
//!    batch finishes;
//! 3. send what has come due: retries, scheduled sends, standbys of messages with
//!    fallback, unfinished attempts of a dispatcher that stopped.
//!
//! A batch ends before the second entry for the same guardian and channel, so a guardian's
//! messages on one channel go out in the order they were written.

pub mod breaker;
pub mod districts;
pub mod lanes;
pub mod retry;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::Serialize;
use tidings_core::clock::{Clock, SystemClock};
use tidings_core::delivery::Delivery;
use tidings_core::log::PartitionId;
use tidings_core::store::dispatch::{
    AttemptResult, AttemptStart, Lease, Outbound, PartitionDistricts,
};
use tidings_core::store::{CasOutcome, Store, StoreError};
use tidings_core::{Channel, DeliveryGuarantee, DeliveryId, DeliveryState, DistrictId, Lane};

pub use breaker::{BreakerPolicy, Breakers};
pub use retry::RetryPolicy;
pub use tidings_channel_adapters::{
    AckInvite, AddressFault, ChannelAdapter, Outgoing, SendOutcome,
};

/// Due deliveries read per pass, in multiples of `max_in_flight`: each partition's share
/// is what one provider call per partition carries (at 4, 64 partitions get 64 each of
/// the default 1,024 × 4); only `batches_at_once` partitions' sends are in flight at once.
const DUE_READ_AHEAD: u32 = 4;

/// The consumer group whose offsets the dispatcher commits.
pub const CONSUMER_GROUP: &str = "dispatcher";

/// How a dispatcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This process's name on its leases, unique among the dispatchers.
    pub owner: String,
    /// Partitions per lane (as configured for the log).
    pub partitions: u32,
    /// A lease lasts this long unless renewed; a dead dispatcher's partitions move after it.
    pub lease_ttl: Duration,
    /// Entries read (and in flight) per partition at a time.
    pub batch: u32,
    /// Sends in flight at once in this process: partitions are worked on side by side,
    /// `max_in_flight / batch` batches at a time (at least one).
    pub max_in_flight: u32,
    /// Sends in flight at once to one provider (a push platform counts as its own).
    pub provider_in_flight: u32,
    /// Database connections the process has: batches worked on side by side are at most
    /// half of them, so that the others stay free for the rest (leases, the API).
    pub connections: u32,
    /// While a more urgent lane has work, a lower lane with work still gets one batch in
    /// this many (1: strict priority).
    pub lower_lane_every: u32,
    /// How long to wait, when there is nothing to do, before looking again: for
    /// deliveries coming due, and for log writes the store could not announce (a new
    /// message wakes the dispatcher at once).
    pub idle_wait: Duration,
    pub retry: RetryPolicy,
    /// An attempt left unfinished this long (its dispatcher stopped mid-call) is taken up
    /// again as in doubt. Longer than any provider call may take.
    pub in_doubt_after: Duration,
    /// Seed for retry jitter.
    pub seed: u64,
    /// When a provider's circuit breaker opens, and for how long.
    pub breaker: BreakerPolicy,
    /// How long a guardian's later delivery on a channel waits behind an earlier one
    /// that is being retried, before it goes anyway.
    pub max_order_wait: Duration,
    /// Signs the acknowledgment and unsubscribe links put in SMS and email; none without
    /// a public address.
    pub links: Option<tidings_core::link::Links>,
    /// The SMS reply that acknowledges, offered in SMS asking for acknowledgment.
    pub sms_ack_keyword: Option<String>,
    /// Where "now" comes from: the wall clock, or a test's hand-moved clock.
    pub clock: Arc<dyn Clock>,
}

impl Config {
    /// Batches worked on side by side: as many as `max_in_flight` holds, at most half the
    /// database connections, at least one.
    pub fn batches_at_once(&self) -> usize {
        let wanted = self.max_in_flight / self.batch.max(1);
        wanted.min(self.connections / 2).max(1) as usize
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            owner: format!(
                "dispatch-{}-{}",
                std::process::id(),
                &uuid::Uuid::now_v7().simple().to_string()[24..]
            ),
            partitions: tidings_core::log::DEFAULT_PARTITIONS,
            lease_ttl: Duration::from_secs(15),
            batch: 256,
            max_in_flight: 1024,
            provider_in_flight: 512,
            connections: tidings_core::store::ConnectOptions::default().max_connections,
            lower_lane_every: 8,
            idle_wait: Duration::from_millis(100),
            retry: RetryPolicy::default(),
            in_doubt_after: Duration::from_secs(120),
            seed: rand::random(),
            breaker: BreakerPolicy::default(),
            max_order_wait: Duration::from_secs(600),
            links: None,
            sms_ack_keyword: None,
            clock: Arc::new(SystemClock),
        }
    }
}

/// The provider account for each channel.
#[derive(Clone, Default)]
pub struct Adapters(HashMap<Channel, Arc<dyn ChannelAdapter>>);

impl Adapters {
    pub fn with(mut self, channel: Channel, adapter: Arc<dyn ChannelAdapter>) -> Self {
        self.0.insert(channel, adapter);
        self
    }

    /// Whether `channel` has a provider.
    pub fn has(&self, channel: Channel) -> bool {
        self.0.contains_key(&channel)
    }

    pub fn get(&self, channel: Channel) -> Option<&Arc<dyn ChannelAdapter>> {
        self.0.get(&channel)
    }
}

/// What a dispatcher has done since it started.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    /// Attempts that may have reached the provider without an answer (timeouts after
    /// sending, and unfinished attempts taken up after a crash): each may be a duplicate.
    pub in_doubt: AtomicU64,
    /// At-most-once deliveries given up because an attempt was in doubt.
    pub lost_in_doubt: AtomicU64,
    /// Writes refused because another dispatcher had taken the partition over.
    pub fenced: AtomicU64,
    /// Writes of sends' outcomes tried again after a passing database error (a dropped
    /// connection, a lost race): the sends are not repeated, their record waits.
    pub record_retried: AtomicU64,
    /// Deliveries held back without an attempt: behind a guardian's earlier delivery
    /// being retried or at the provider, or for a provider whose breaker is open.
    pub deferred: AtomicU64,
    /// Log entries that kept failing the dispatcher itself, set aside (FAILED when their
    /// delivery could be read) so that their partition goes on.
    pub quarantined: AtomicU64,
    /// Deliveries suppressed because the guardian had opted out at the carrier (STOP).
    pub opted_out: AtomicU64,
    /// Contact points taken out of use because a provider refused them for good.
    pub retired: AtomicU64,
    /// Standby deliveries not sent because the guardian's channel before them reached
    /// them (messages with fallback).
    pub standbys_skipped: AtomicU64,
    /// Looks that found nothing to do, after which the dispatcher waited for a write, a
    /// partition taken over, or `idle_wait`.
    pub idle_looks: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub sent: u64,
    pub retried: u64,
    pub failed: u64,
    pub in_doubt: u64,
    pub lost_in_doubt: u64,
    pub fenced: u64,
    pub record_retried: u64,
    pub deferred: u64,
    pub quarantined: u64,
    pub opted_out: u64,
    pub retired: u64,
    pub standbys_skipped: u64,
    pub idle_looks: u64,
}

impl Counters {
    pub fn totals(&self) -> Totals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Totals {
            sent: get(&self.sent),
            retried: get(&self.retried),
            failed: get(&self.failed),
            in_doubt: get(&self.in_doubt),
            lost_in_doubt: get(&self.lost_in_doubt),
            fenced: get(&self.fenced),
            record_retried: get(&self.record_retried),
            deferred: get(&self.deferred),
            quarantined: get(&self.quarantined),
            opted_out: get(&self.opted_out),
            retired: get(&self.retired),
            standbys_skipped: get(&self.standbys_skipped),
            idle_looks: get(&self.idle_looks),
        }
    }

    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Key = (Lane, PartitionId);

/// Sends what is on the log. Cheap to share: clones run the same dispatcher.
pub struct Dispatcher {
    store: Arc<dyn Store>,
    adapters: Adapters,
    config: Config,
    counters: Arc<Counters>,
    rng: Mutex<StdRng>,
    /// Deliveries this process is sending right now: never taken up as unfinished.
    in_flight: Mutex<HashSet<DeliveryId>>,
    breakers: Breakers,
    /// Per provider with a rate limit: sends are taken off the log only as fast as it
    /// allows, so nothing waits in memory or burns an attempt on a 429.
    /// Each live dispatcher takes an equal share of every account's rate.
    limiters: Mutex<RateShares>,
    /// Consecutive failed batches per partition: a poison entry is isolated (batches of
    /// one), then quarantined, instead of stopping its partition forever.
    failures: Mutex<HashMap<Key, u32>>,
    /// Whose turn it is among the lanes.
    shares: Mutex<lanes::LaneShares>,
    /// Sends in flight per provider, bounded by `provider_in_flight`.
    provider_slots: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
    /// Word of writes to the log, subscribed once for the dispatcher's life (see
    /// [`Dispatcher::log_writes`]).
    log_writes: std::sync::OnceLock<tokio::sync::watch::Receiver<()>>,
}

/// Per lane, owned partitions with unread entries and where each district's end.
type Backlog = BTreeMap<Lane, Vec<(Lease, PartitionDistricts)>>;

/// The dispatcher's view of its partitions, shared by the work loop and the renewal
/// loop (locks are never held across an await).
#[derive(Default)]
struct Partitions {
    leases: Mutex<BTreeMap<Key, Lease>>,
    /// Per owned partition: the committed offset (-1: nothing yet) and the districts read
    /// further.
    committed: Mutex<HashMap<Key, districts::Progress<DistrictId>>>,
}

impl Partitions {
    fn leases(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn committed(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Key, districts::Progress<DistrictId>>> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease and committed offset of an owned partition whose offset is known.
    fn get(&self, key: &Key) -> Option<(Lease, i64)> {
        let lease = *self.leases().get(key)?;
        Some((lease, self.committed().get(key)?.committed))
    }

    /// How far an owned partition has been consumed.
    fn progress(&self, key: &Key) -> Option<(Lease, districts::Progress<DistrictId>)> {
        let lease = *self.leases().get(key)?;
        Some((lease, self.committed().get(key)?.clone()))
    }

    /// Moves a partition's committed offset to `offset` (after a single entry).
    fn committed_to(&self, key: Key, offset: i64) {
        if let Some(progress) = self.committed().get_mut(&key) {
            progress.committed = progress.committed.max(offset);
            progress.ahead.retain(|_, o| *o > offset);
        }
    }
}

impl Dispatcher {
    /// The time by the configured clock.
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.config.clock.now()
    }

    pub fn new(store: Arc<dyn Store>, adapters: Adapters, config: Config) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            breakers: Breakers::new(config.breaker),
            failures: Mutex::default(),
            shares: Mutex::new(lanes::LaneShares::new(config.lower_lane_every)),
            provider_slots: Mutex::default(),
            limiters: Mutex::new(RateShares::new(
                adapters
                    .0
                    .values()
                    .filter_map(|a| Some((a.provider().to_owned(), a.max_per_second()?)))
                    .collect(),
            )),
            store,
            adapters,
            config,
            counters: Arc::default(),
            in_flight: Mutex::default(),
            log_writes: std::sync::OnceLock::new(),
        }
    }

    /// Word of writes to the log, from one subscription kept while the dispatcher lives.
    /// A store that hears of other processes' writes tells its subscribers when it
    /// starts (or starts again) to listen, as writes may have gone unheard before: with
    /// a subscription per run, that word would come in the middle of the run's first
    /// look at what is due and cut it short as if an alert had been written.
    fn log_writes(&self) -> tokio::sync::watch::Receiver<()> {
        self.log_writes
            .get_or_init(|| self.store.log_writes())
            .clone()
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// Runs until `stop` turns true, then finishes the batch in hand, records its
    /// outcomes and hands its partitions back. Leases are renewed alongside the work, so
    /// a long batch never lets them lapse; a database error is logged and retried, never
    /// fatal.
    pub async fn run(&self, stop: tokio::sync::watch::Receiver<bool>) -> Result<(), DispatchError> {
        let partitions = Partitions::default();
        tracing::info!(owner = %self.config.owner, "dispatcher started");
        // Partitions taken over are looked at at once, not at the next idle look.
        let taken = tokio::sync::Notify::new();
        let renewing = async {
            loop {
                match self.renew(&partitions).await {
                    Ok(true) => taken.notify_one(),
                    Ok(false) => {}
                    Err(error) => {
                        tracing::error!(owner = %self.config.owner, error = %tidings_core::store::error_chain(&error), "cannot renew partition leases");
                    }
                }
                tokio::time::sleep(self.config.lease_ttl / 3).await;
            }
        };
        let working = async {
            let mut stop = stop.clone();
            let mut written = self.log_writes();
            while !*stop.borrow() {
                // Writes from here on wake the idle wait below.
                written.borrow_and_update();
                let worked = match self.pass(&partitions, &written).await {
                    Ok(worked) => worked,
                    Err(error) => {
                        tracing::error!(owner = %self.config.owner, error = %tidings_core::store::error_chain(&error), "dispatch pass failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        false
                    }
                };
                if !worked {
                    Counters::add(&self.counters.idle_looks);
                    tokio::select! {
                        _ = tokio::time::sleep(self.config.idle_wait) => {}
                        Ok(()) = written.changed() => {}
                        () = taken.notified() => {}
                        _ = stop.changed() => {}
                    }
                }
            }
        };
        tokio::select! {
            () = working => {}
            () = renewing => {}
        }
        self.store
            .release_leases(&self.config.owner, self.now())
            .await?;
        tracing::info!(owner = %self.config.owner, "dispatcher stopped; partitions released");
        Ok(())
    }

    /// Runs passes until the log is drained and nothing is due, then hands the partitions
    /// back (for tests and benches); returns the number of passes.
    pub async fn run_until_idle(&self) -> Result<usize, DispatchError> {
        let partitions = Partitions::default();
        let mut written = self.log_writes();
        let mut passes = 0;
        loop {
            self.renew(&partitions).await?;
            passes += 1;
            written.borrow_and_update();
            if !self.pass(&partitions, &written).await? {
                self.store
                    .release_leases(&self.config.owner, self.now())
                    .await?;
                return Ok(passes);
            }
        }
    }

    /// The log's backlog, then what has come due. Whether there was anything to do.
    /// `written`: writes to the log since the pass began (see `send_due`).
    async fn pass(
        &self,
        partitions: &Partitions,
        written: &tokio::sync::watch::Receiver<()>,
    ) -> Result<bool, DispatchError> {
        self.load_offsets(partitions).await?;
        let drained = self.drain_lanes(partitions).await?;
        Ok(self.send_due(partitions, written).await? > 0 || drained)
    }

    /// Renews and claims leases; whether a partition was newly taken.
    async fn renew(&self, partitions: &Partitions) -> Result<bool, DispatchError> {
        let wanted: Vec<Key> = Lane::ALL
            .iter()
            .flat_map(|&lane| (0..self.config.partitions).map(move |p| (lane, PartitionId::new(p))))
            .collect();
        let ttl = chrono::Duration::from_std(self.config.lease_ttl)
            .unwrap_or(chrono::Duration::seconds(15));
        let held = self
            .store
            .claim_leases(&self.config.owner, &wanted, ttl, self.now())
            .await?;
        let live = self.store.live_dispatchers(self.now()).await?;
        self.limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .share_among(live);
        let held: BTreeMap<Key, Lease> = held
            .into_iter()
            .map(|l| ((l.lane, l.partition), l))
            .collect();
        let mut leases = partitions.leases();
        if leases.len() != held.len() {
            tracing::info!(owner = %self.config.owner, held = held.len(), "partition leases changed");
        }
        // A partition held under a new token is a new hold: its offset is read again.
        partitions.committed().retain(|key, _| {
            held.get(key).map(|l| l.fencing_token) == leases.get(key).map(|l| l.fencing_token)
        });
        let taken = held.iter().any(|(key, lease)| {
            leases.get(key).map(|l| l.fencing_token) != Some(lease.fencing_token)
        });
        *leases = held;
        Ok(taken)
    }

    /// Reads the committed offset of each newly held partition.
    async fn load_offsets(&self, partitions: &Partitions) -> Result<(), DispatchError> {
        let missing: Vec<Key> = {
            let committed = partitions.committed();
            partitions
                .leases()
                .keys()
                .filter(|k| !committed.contains_key(k))
                .copied()
                .collect()
        };
        for key in missing {
            let offset = self
                .store
                .committed_offset(CONSUMER_GROUP, key.0, key.1)
                .await?
                .unwrap_or(-1);
            partitions
                .committed()
                .insert(key, districts::Progress::new(offset));
        }
        Ok(())
    }

    /// Owned partitions with unread entries, per lane, with where each district's entries
    /// in them end.
    async fn backlog(&self, partitions: &Partitions) -> Result<Backlog, DispatchError> {
        let mut backlog = Backlog::new();
        for (lane, partition, heads) in self.store.partition_heads().await? {
            if let Some((lease, committed)) = partitions.get(&(lane, partition)) {
                if heads.last > committed {
                    backlog.entry(lane).or_default().push((lease, heads));
                }
            }
        }
        Ok(backlog)
    }

    /// One batch from every partition with a backlog, several partitions side by side
    /// (as many batches as `max_in_flight` allows). The lane of each next batch is the
    /// most urgent with work, but for the lower lanes' share. Whenever a batch finishes
    /// the log is looked at again: new emergencies go before the rest, and a partition
    /// where a district turned up that this pass has not planned for there (a small
    /// district's message during a large one's broadcast) gets the next batch of its
    /// lane, instead of waiting for the next pass.
    async fn drain_lanes(&self, partitions: &Partitions) -> Result<bool, DispatchError> {
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
        loop {
            while running.len() < slots {
                let Some((lease, heads)) = self.next_partition(&mut backlog, &busy) else {
                    break;
                };
                busy.insert((lease.lane, lease.partition));
                running
                    .push(async move { (lease, self.drain_batch(partitions, lease, heads).await) });
            }
            let Some((lease, result)) = running.next().await else {
                return Ok(worked);
            };
            busy.remove(&(lease.lane, lease.partition));
            match result {
                Ok(drained) => worked |= drained,
                // One partition's trouble is not the others': they go on, and this one is
                // tried again (and isolated, then quarantined, if it keeps failing).
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
            // Before any further batch, look for newcomers; with no emergency waiting,
            // every emergency on the log is one.
            let fresh = self.backlog(partitions).await?;
            if backlog.get(&Lane::Emergency).is_none_or(Vec::is_empty) {
                planned.retain(|(lane, _), _| *lane != Lane::Emergency);
            }
            newcomers_first(&mut backlog, fresh, &mut planned, &busy);
        }
    }

    /// The partition the next batch comes from: of the lane whose turn it is, one that
    /// has no batch in hand.
    fn next_partition(
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

    /// One batch of a partition; whether any entry was taken off the log. A partition
    /// whose batches keep failing with errors that are not outages goes one entry at a
    /// time, and an entry that still fails is quarantined.
    async fn drain_batch(
        &self,
        partitions: &Partitions,
        lease: Lease,
        heads: PartitionDistricts,
    ) -> Result<bool, DispatchError> {
        let key = (lease.lane, lease.partition);
        let failures = self.failures().get(&key).copied().unwrap_or(0);
        if failures >= 2 * POISON_TRIES {
            self.quarantine(partitions, lease).await?;
            self.failures().remove(&key);
            return Ok(true);
        }
        let limit = if failures >= POISON_TRIES {
            1
        } else {
            self.config.batch
        };
        match self.drain_batch_of(partitions, lease, heads, limit).await {
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

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<Key, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets aside the partition's next entry, which keeps failing on its own: its
    /// delivery FAILED (when it can be read) with the reason, the offset moved past it.
    async fn quarantine(&self, partitions: &Partitions, lease: Lease) -> Result<(), DispatchError> {
        let key = (lease.lane, lease.partition);
        let Some((_, after)) = partitions.get(&key) else {
            return Ok(());
        };
        let Some(entry) = self
            .store
            .read_log(lease.lane, lease.partition, Some(after), 1)
            .await?
            .pop()
        else {
            return Ok(());
        };
        tracing::error!(delivery_id = %entry.delivery_id, lane = %key.0, partition = %key.1, offset = entry.offset, "quarantining a log entry that keeps failing the dispatcher");
        let actor = tidings_core::delivery::Actor::dispatcher(self.config.owner.clone());
        let failed = tidings_core::delivery::apply(
            self.store.as_ref(),
            entry.delivery_id,
            tidings_core::DeliveryEvent::Failed,
            &actor,
            Some("quarantined: it failed the dispatcher repeatedly"),
        )
        .await;
        match failed {
            // The database's trouble, not the entry's: it stays, to be tried again, rather
            // than be passed with its delivery never sent nor marked.
            Err(tidings_core::delivery::ApplyError::Store(error)) if is_outage(&error) => {
                return Err(error.into());
            }
            Err(error) => {
                tracing::error!(delivery_id = %entry.delivery_id, error = %error, "the quarantined delivery could not be marked FAILED");
            }
            Ok(_) => {}
        }
        self.store
            .commit_offset(CONSUMER_GROUP, &lease, entry.offset, self.now())
            .await?;
        partitions.committed_to(key, entry.offset);
        Counters::add(&self.counters.quarantined);
        Ok(())
    }

    /// One batch of a partition, read district by district ([`districts`]): every
    /// district with entries up to `heads` gets an equal share. `limit` 1 (a partition
    /// isolating a poison entry) reads the next entry after the committed offset alone.
    async fn drain_batch_of(
        &self,
        partitions: &Partitions,
        lease: Lease,
        heads: PartitionDistricts,
        limit: u32,
    ) -> Result<bool, DispatchError> {
        let key = (lease.lane, lease.partition);
        let Some((_, mut progress)) = partitions.progress(&key) else {
            return Ok(false); // lost since the backlog was read
        };
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
        let kept = self.cut(&per_district, at);
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
            return Ok(false); // held back: nothing taken off the log
        }
        let offset = (committed > before).then_some(committed);
        let outcome = self.send(&lease, ready, offset).await;
        let recorded = match outcome {
            // Committed with the batch's outcomes (or nothing to commit).
            Ok(true) => Ok(()),
            Ok(false) => match offset {
                Some(offset) => {
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
                Ok(true)
            }
            Err(StoreError::Fenced { .. }) => {
                self.lose(partitions, key);
                Ok(true)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Cuts each district's entries before a second one for the same guardian and channel
    /// (it goes after the first one's outcome is recorded) and where a provider's rate
    /// limit says "not yet" (the rest stays on the log). The districts take the rate
    /// limit's tokens in turn, one entry each. Returns how many entries each keeps.
    fn cut(
        &self,
        per_district: &BTreeMap<DistrictId, Vec<Outbound>>,
        at: DateTime<Utc>,
    ) -> HashMap<DistrictId, usize> {
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
                if !first_for_guardian || (self.ready(o, at) && !self.may_send(o.delivery.channel))
                {
                    return false;
                }
                kept.insert(*district, i + 1);
                true
            });
            i += 1;
        }
        kept
    }

    /// Takes a token from the channel's provider's rate limiter, if it has one.
    fn may_send(&self, channel: Channel) -> bool {
        self.limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .may_send(self.provider(channel))
    }

    fn lose(&self, partitions: &Partitions, key: Key) {
        Counters::add(&self.counters.fenced);
        tracing::warn!(owner = %self.config.owner, lane = %key.0, partition = %key.1, "partition taken over by another dispatcher");
        partitions.leases().remove(&key);
        partitions.committed().remove(&key);
    }

    /// Whether a delivery read off the log (or found due) is to be sent now.
    fn ready(&self, o: &Outbound, at: DateTime<Utc>) -> bool {
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

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<DeliveryId>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deliveries whose time has come, in partitions this process owns: read
    /// `DUE_READ_AHEAD` times `max_in_flight` at a time (they come in time order, spread
    /// over every partition), sent per partition, as many partitions side by side as
    /// batches of the log are — so a newsletter held by quiet hours goes out at their end
    /// nearly as fast as one sent straight away.
    async fn send_due(
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
            let ready = self.ready(&o, at) && self.may_send(o.delivery.channel);
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
                    self.send(&lease, std::mem::replace(&mut due, rest), None)
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

    /// Records an attempt for each delivery, calls the providers, records the outcomes:
    /// one store transaction before the calls and one after, for the whole batch.
    /// `offset`: the batch's last log offset, committed before the calls when an
    /// at-most-once delivery is among them.
    async fn send(
        &self,
        lease: &Lease,
        batch: Vec<Outbound>,
        offset: Option<i64>,
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
                Counters::add(&self.counters.in_doubt);
            }
            o.delivery = delivery;
            if self.adapters.get(o.delivery.channel).is_none() {
                // A dead letter staff can see and replay once the channel is configured,
                // rather than a delivery that silently never goes.
                tracing::error!(delivery_id = %o.delivery.id, channel = %o.delivery.channel, "no provider is configured for this channel");
                let error = format!("no provider is configured for {}", o.delivery.channel);
                let result = AttemptResult::Failed {
                    in_doubt: false,
                    permanent: false,
                    error,
                };
                finishing.push((o, attempt, result));
            } else {
                self.lock_in_flight().insert(o.delivery.id);
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
        let calls = per_provider.into_iter().map(|((channel, provider), sends)| async move {
            let outgoing: Vec<Outgoing> = sends
                .iter()
                .map(|(o, _)| outgoing(o, &self.config, self.now()))
                .collect();
            let slots = self.provider_slots(provider);
            let wanted = (outgoing.len() as u32).clamp(1, self.config.provider_in_flight.max(1));
            let _in_flight = slots.acquire_many(wanted).await;
            let mut outcomes = match self.adapters.get(channel) {
                // An adapter that panics is a bug on our side, not the guardian's problem:
                // the sends are in doubt (retried, or failed if at most once), and the
                // dispatcher carries on.
                Some(adapter) => {
                    use futures_util::FutureExt as _;
                    std::panic::AssertUnwindSafe(adapter.send(&outgoing))
                        .catch_unwind()
                        .await
                        .unwrap_or_else(|panic| {
                            let why = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            tracing::error!(provider = adapter.provider(), panic = %why, "channel adapter panicked");
                            let error = format!("the {} adapter failed unexpectedly", adapter.provider());
                            vec![SendOutcome::InDoubt { error }; outgoing.len()]
                        })
                }
                None => Vec::new(),
            };
            outcomes.resize_with(sends.len(), || SendOutcome::InDoubt {
                error: "the adapter answered fewer sends than it was given".into(),
            });
            (provider, sends.into_iter().zip(outcomes).collect::<Vec<_>>())
        });
        let mut retiring = Vec::new();
        for (provider, answered) in futures_util::future::join_all(calls).await {
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
        let finished = self.finish(lease, &finishing, offset).await;
        if finished.is_ok() {
            self.retire(&retiring).await;
        }
        let mut in_flight = self.lock_in_flight();
        for (o, _, _) in &finishing {
            in_flight.remove(&o.delivery.id);
        }
        finished
    }

    /// The bound on sends in flight to `provider`.
    fn provider_slots(&self, provider: &str) -> Arc<tokio::sync::Semaphore> {
        let mut slots = self
            .provider_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        slots
            .entry(provider.to_owned())
            .or_insert_with(|| {
                let permits = self.config.provider_in_flight.max(1) as usize;
                Arc::new(tokio::sync::Semaphore::new(permits))
            })
            .clone()
    }

    fn provider(&self, channel: Channel) -> &str {
        self.adapters
            .get(channel)
            .map_or("unconfigured", |a| a.provider())
    }

    /// The provider a delivery goes to, as its circuit breaker is keyed.
    fn provider_of(&self, delivery: &Delivery) -> &str {
        self.adapters
            .get(delivery.channel)
            .map_or("unconfigured", |a| {
                a.provider_of(delivery.address.as_deref().unwrap_or_default())
            })
    }

    /// Suppresses the standbys (of messages with fallback) whose channel before them
    /// reached the guardian, and puts off for a moment those behind a standby not decided
    /// yet; returns the rest.
    async fn skip_standbys(
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
                Counters::add(&self.counters.standbys_skipped);
            }
        }
        Ok(go)
    }

    /// Holds back, without an attempt, what must not go yet: a guardian's delivery on a
    /// channel where an earlier one of its lane or a more urgent one is waiting for a
    /// retry or at the provider (so a correction never overtakes the alert it corrects;
    /// bounded by `max_order_wait`; see [`wait_behind`]), and sends to a provider whose
    /// circuit breaker is open. Returns the rest. A batch is one lane's.
    async fn hold_back(
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
                Counters::add(&self.counters.deferred);
            }
        }
        Ok(go)
    }

    /// Takes the addresses providers refused for good out of use: an invalid or gone one
    /// is retired with the reason, a carrier STOP becomes the guardian's opt-out. Failures
    /// here are logged, not fatal: the next send to the address would report it again.
    async fn retire(&self, retiring: &[(Delivery, AddressFault)]) {
        for (delivery, fault) in retiring {
            let Some(address) = delivery.address.as_deref() else {
                continue;
            };
            let done = match fault {
                AddressFault::OptedOut => self
                    .store
                    .add_opt_out(
                        delivery.district_id,
                        delivery.guardian_id,
                        delivery.channel,
                        "carrier",
                        self.now(),
                    )
                    .await
                    .map(|_| ()),
                AddressFault::Invalid | AddressFault::Gone => {
                    // A device is addressed platform:token; its contact point holds the token.
                    let stored = match delivery.channel {
                        Channel::Push => tidings_channel_adapters::push::split(address)
                            .map_or(address, |(_, token)| token),
                        _ => address,
                    };
                    self.store
                        .retire_address(
                            delivery.guardian_id,
                            delivery.channel,
                            stored,
                            fault.as_str(),
                            self.now(),
                        )
                        .await
                        .map(|_| ())
                }
            };
            match done {
                Ok(()) => {
                    Counters::add(&self.counters.retired);
                    tracing::info!(delivery_id = %delivery.id, guardian_id = %delivery.guardian_id, channel = %delivery.channel, reason = fault.as_str(), "address taken out of use");
                }
                Err(e) => {
                    tracing::warn!(delivery_id = %delivery.id, error = %e, "could not take the address out of use")
                }
            }
        }
    }

    fn classify(&self, o: &Outbound, attempt: i32, outcome: SendOutcome) -> AttemptResult {
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
            SendOutcome::Transient { error, retry_after } => (error, retry_after, false),
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
    async fn finish(
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
                    Counters::add(&self.counters.fenced);
                    return Ok(false);
                }
                Err(error) if error.is_transient() && started.elapsed() < self.config.lease_ttl => {
                    Counters::add(&self.counters.record_retried);
                    tracing::warn!(owner = %self.config.owner, lane = %lease.lane, partition = %lease.partition, error = %tidings_core::store::error_chain(&error), "could not record the outcomes of sends; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e.into()),
            }
        };
        for ((o, _, result), applied) in finishing.iter().zip(applied) {
            if !matches!(applied, CasOutcome::Applied(_)) {
                continue;
            }
            let counter = match result {
                AttemptResult::Sent { .. } => &self.counters.sent,
                AttemptResult::OptedOut { .. } => &self.counters.opted_out,
                AttemptResult::Retry { .. } => &self.counters.retried,
                AttemptResult::Failed { .. } => &self.counters.failed,
            };
            Counters::add(counter);
            if let AttemptResult::Retry { in_doubt: true, .. }
            | AttemptResult::Failed { in_doubt: true, .. } = result
            {
                Counters::add(&self.counters.in_doubt);
                if o.guarantee == DeliveryGuarantee::AtMostOnce {
                    Counters::add(&self.counters.lost_in_doubt);
                }
            }
        }
        Ok(commit.is_some())
    }
}

/// Provider accounts' rate limits, divided equally among the live dispatchers (each
/// renews its share with its leases), so that together they stay within the account's.
struct RateShares {
    rates: HashMap<String, std::num::NonZeroU32>,
    live: u64,
    limiters: HashMap<String, governor::DefaultDirectRateLimiter>,
}

impl RateShares {
    fn new(rates: HashMap<String, std::num::NonZeroU32>) -> Self {
        let mut shares = Self {
            rates,
            live: 0,
            limiters: HashMap::new(),
        };
        shares.share_among(1);
        shares
    }

    /// One share of each rate for each of `live` dispatchers: a cell every `live / rate`
    /// seconds, bursts of `rate / live` (at least one).
    fn share_among(&mut self, live: u64) {
        let live = live.max(1);
        if live == self.live {
            return;
        }
        self.live = live;
        self.limiters = self
            .rates
            .iter()
            .map(|(provider, rate)| {
                let period = Duration::from_secs_f64(live as f64 / f64::from(rate.get()));
                let burst = u32::try_from(u64::from(rate.get()) / live)
                    .ok()
                    .and_then(std::num::NonZeroU32::new)
                    .unwrap_or(std::num::NonZeroU32::MIN);
                let quota = governor::Quota::with_period(period)
                    .unwrap_or(governor::Quota::per_second(*rate))
                    .allow_burst(burst);
                (provider.clone(), governor::RateLimiter::direct(quota))
            })
            .collect();
    }

    fn may_send(&self, provider: &str) -> bool {
        self.limiters
            .get(provider)
            .is_none_or(|limiter| limiter.check().is_ok())
    }
}

/// Moves to the front of their lane (the end: batches are popped) the partitions of
/// `fresh` where a district has turned up that `planned` does not list for them, with
/// the fresh heads, and notes them as planned. A partition with a batch in hand is left
/// for the next look.
fn newcomers_first(
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
fn in_turn<T, G: Eq + std::hash::Hash>(items: Vec<T>, group: impl Fn(&T) -> G) -> Vec<T> {
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

/// How long a delivery waits, at a time, behind the same guardian's earlier one on its
/// channel while that one is at the provider: about as long as a call takes.
const IN_FLIGHT_WAIT: chrono::Duration = chrono::Duration::seconds(1);

/// Until when a delivery created at `created_at` waits behind `earlier` (the guardian's
/// unfinished deliveries on its channel, of its lane or a more urgent one), looking at
/// `at`: a second past the last retry due, or a moment when they are all at the provider
/// (the call ends soon, and its outcome decides), never past `created_at + max_wait`.
/// None: it goes now.
fn wait_behind(
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

/// Tries of a failing batch before its partition goes one entry at a time, and of a
/// failing single entry before it is quarantined.
const POISON_TRIES: u32 = 3;

/// Whether a store error means the database is out of reach for now or the partition
/// has passed to another dispatcher (wait), rather than something wrong with what was read
/// or written. Never counted against a log entry.
fn is_outage(error: &StoreError) -> bool {
    matches!(error, StoreError::Fenced { .. }) || error.is_transient()
}

fn outgoing(o: &Outbound, config: &Config, now: DateTime<Utc>) -> Outgoing {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tidings_core::time::now;

    proptest! {
        /// Every item once; each group's items in their order; and groups take turns:
        /// up to any point, no group that still had items is more than one turn behind
        /// another.
        #[test]
        fn groups_take_turns_and_keep_their_order(groups in proptest::collection::vec(0u8..5, 0..60)) {
            let items: Vec<(usize, u8)> = groups.into_iter().enumerate().collect();
            let turns = in_turn(items.clone(), |(_, g)| *g);
            let mut sorted = turns.clone();
            sorted.sort();
            prop_assert_eq!(&sorted, &items);
            for g in 0..5u8 {
                let of = |list: &[(usize, u8)]| -> Vec<usize> {
                    list.iter().filter(|(_, x)| *x == g).map(|(i, _)| *i).collect()
                };
                prop_assert_eq!(of(&turns), of(&items));
            }
            let total = |g: u8| items.iter().filter(|(_, x)| *x == g).count();
            for end in 0..=turns.len() {
                let taken = |g: u8| turns[..end].iter().filter(|(_, x)| *x == g).count();
                for a in 0..5u8 {
                    for b in 0..5u8 {
                        if taken(a) < total(a) {
                            prop_assert!(taken(b) <= taken(a) + 1, "{:?}", &turns[..end]);
                        }
                    }
                }
            }
        }

        /// Behind an earlier unfinished delivery a later one waits: past the last retry
        /// when one is waiting, only a moment when they are all at the provider, never
        /// beyond its bounded wait, and not at all behind nothing, behind a later one, or
        /// once the bound has passed.
        #[test]
        fn a_later_delivery_waits_behind_an_earlier_one_within_its_bound(
            earlier_created in -100i64..100,
            retry_due in proptest::option::of(1i64..10_000),
            elapsed in 0i64..2_000,
            max_wait in 0i64..1_000,
            any_earlier in any::<bool>(),
        ) {
            let created_at = now();
            let at = created_at + chrono::Duration::seconds(elapsed);
            let max_wait = chrono::Duration::seconds(max_wait);
            let earlier = tidings_core::store::dispatch::Retrying {
                guardian_id: tidings_core::GuardianId::new(),
                channel: tidings_core::Channel::Sms,
                first_created_at: created_at + chrono::Duration::seconds(earlier_created),
                due: retry_due.map(|s| at + chrono::Duration::seconds(s)),
            };
            let until = wait_behind(any_earlier.then_some(&earlier), created_at, at, max_wait);
            let waits = any_earlier && earlier_created < 0 && at < created_at + max_wait;
            prop_assert_eq!(until.is_some(), waits);
            if let Some(until) = until {
                prop_assert!(until > at && until <= created_at + max_wait);
                let wanted = match earlier.due {
                    Some(due) => due + chrono::Duration::seconds(1),
                    None => at + IN_FLIGHT_WAIT,
                };
                prop_assert_eq!(until, wanted.min(created_at + max_wait));
            }
        }
    }

    #[test]
    fn batches_side_by_side_never_take_more_than_half_the_connections() {
        let config = |max_in_flight, batch, connections| Config {
            max_in_flight,
            batch,
            connections,
            ..Config::default()
        };
        assert_eq!(config(1024, 256, 10).batches_at_once(), 4);
        assert_eq!(config(4096, 256, 10).batches_at_once(), 5);
        assert_eq!(config(4096, 256, 40).batches_at_once(), 16);
        assert_eq!(config(100, 256, 10).batches_at_once(), 1);
        assert_eq!(config(1024, 256, 1).batches_at_once(), 1);
    }

    #[test]
    fn a_partition_where_a_district_turned_up_is_next_in_its_lane() {
        let (large, small) = (DistrictId::new(), DistrictId::new());
        let lease = |p| Lease {
            lane: Lane::Bulk,
            partition: PartitionId::new(p),
            fencing_token: 1,
        };
        let heads = |last, districts: &[DistrictId]| PartitionDistricts {
            last,
            districts: districts.iter().map(|&d| (d, last)).collect(),
        };
        // The pass planned partitions 0-3 for the large district; 3 and 2 are done,
        // 1 and 0 wait (0 is last: batches are popped).
        let mut backlog = Backlog::from([(
            Lane::Bulk,
            vec![
                (lease(0), heads(9, &[large])),
                (lease(1), heads(9, &[large])),
            ],
        )]);
        let mut planned: HashMap<Key, Vec<DistrictId>> = (0..4)
            .map(|p| ((Lane::Bulk, PartitionId::new(p)), vec![large]))
            .collect();
        // The small district writes to partitions 0, 2 and 3; 3 has a batch in hand.
        let fresh = Backlog::from([(
            Lane::Bulk,
            vec![
                (lease(0), heads(12, &[large, small])),
                (lease(1), heads(9, &[large])),
                (lease(2), heads(11, &[large, small])),
                (lease(3), heads(11, &[large, small])),
            ],
        )]);
        let busy = HashSet::from([(Lane::Bulk, PartitionId::new(3))]);
        newcomers_first(&mut backlog, fresh.clone(), &mut planned, &busy);
        let order: Vec<(u32, i64)> = backlog[&Lane::Bulk]
            .iter()
            .rev()
            .map(|(l, h)| (l.partition.get(), h.last))
            .collect();
        // Popped first: 2 (done before, back for the newcomer), then 0 with its fresh
        // heads, then 1 as planned; 3 waits until its batch is in.
        assert_eq!(order, vec![(2, 11), (0, 12), (1, 9)]);
        // Looking again changes nothing but for 3, now free.
        newcomers_first(&mut backlog, fresh, &mut planned, &HashSet::new());
        let order: Vec<u32> = backlog[&Lane::Bulk]
            .iter()
            .rev()
            .map(|(l, _)| l.partition.get())
            .collect();
        assert_eq!(order, vec![3, 2, 0, 1]);
    }
}
