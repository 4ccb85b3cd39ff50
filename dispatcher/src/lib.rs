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

mod attempts;
pub mod breaker;
pub mod concurrency;
mod config;
mod counters;
pub mod districts;
mod draining;
pub mod lanes;
mod partitions;
mod rates;
pub mod retry;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tidings_core::log::PartitionId;
use tidings_core::store::{Store, StoreError};
use tidings_core::{DeliveryId, Lane};

use self::partitions::Partitions;
use self::rates::RateShares;
pub use breaker::{BreakerPolicy, Breakers};
pub use concurrency::ConcurrencyPolicy;
pub use config::{Adapters, Config};
pub use counters::{Counters, Totals};
pub use retry::RetryPolicy;
pub use tidings_channel_adapters::{
    AckInvite, AddressFault, ChannelAdapter, Outgoing, SendOutcome,
};

pub use tidings_core::log::CONSUMER_GROUP;

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
    /// Sends in flight per provider, as many as it allows ([`concurrency`]).
    provider_slots: Mutex<HashMap<String, Arc<concurrency::Concurrency>>>,
    /// Batches' turns at the database: half its connections (see
    /// [`Dispatcher::database_turn`]).
    database_turns: tokio::sync::Semaphore,
    /// Word of writes to the log, subscribed once for the dispatcher's life (see
    /// [`Dispatcher::log_writes`]).
    log_writes: std::sync::OnceLock<tokio::sync::watch::Receiver<()>>,
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
            database_turns: tokio::sync::Semaphore::new((config.connections / 2).max(1) as usize),
            limiters: Mutex::new(RateShares::new(
                adapters.0.values().flat_map(|a| a.rate_limits()).collect(),
                config.clock.clone(),
            )),
            store,
            adapters,
            config,
            counters: Arc::default(),
            in_flight: Mutex::default(),
            log_writes: std::sync::OnceLock::new(),
        }
    }

    /// A batch's turn to read or write: at most half the database connections are
    /// batches' at once, so that the rest stay free for leases and the API. A batch whose
    /// sends are out at the providers holds none, so that many can be.
    pub(crate) async fn database_turn(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.database_turns
            .acquire()
            .await
            .expect("the database turns are never closed")
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
                    Counters::add(&self.counters.idle_looks, "idle_look");
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
}

#[cfg(test)]
mod tests {
    use super::attempts::{wait_behind, IN_FLIGHT_WAIT};
    use super::draining::{in_turn, newcomers_first};
    use super::partitions::Backlog;
    use super::*;
    use proptest::prelude::*;
    use tidings_core::store::dispatch::{Lease, PartitionDistricts};
    use tidings_core::time::now;
    use tidings_core::DistrictId;

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
    fn batches_side_by_side_are_as_many_as_the_sends_in_hand_hold() {
        let config = |max_in_flight, batch| Config {
            max_in_flight,
            batch,
            connections: 2,
            ..Config::default()
        };
        assert_eq!(config(1024, 256).batches_at_once(), 4);
        assert_eq!(config(4096, 256).batches_at_once(), 16);
        assert_eq!(config(100, 256).batches_at_once(), 1);
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
