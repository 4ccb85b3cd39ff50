//! Partitions and leases: which (lane, partition)s this dispatcher holds, renewing and
//! balancing them among the live dispatchers, the offsets committed in each, and the
//! poison entries a partition sets aside instead of stopping.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tidings_core::log::PartitionId;
use tidings_core::store::dispatch::{Lease, PartitionDistricts};
use tidings_core::{DistrictId, Lane};

use crate::draining::is_outage;
use crate::{districts, Counters, DispatchError, Dispatcher, Key, CONSUMER_GROUP};

/// Per lane, owned partitions with unread entries and where each district's end.
pub(crate) type Backlog = BTreeMap<Lane, Vec<(Lease, PartitionDistricts)>>;

/// The dispatcher's view of its partitions, shared by the work loop and the renewal
/// loop (locks are never held across an await).
#[derive(Default)]
pub(crate) struct Partitions {
    leases: Mutex<BTreeMap<Key, Lease>>,
    /// Per owned partition: the committed offset (-1: nothing yet) and the districts read
    /// further.
    committed: Mutex<HashMap<Key, districts::Progress<DistrictId>>>,
}

impl Partitions {
    pub(crate) fn leases(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn committed(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<Key, districts::Progress<DistrictId>>> {
        self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lease and committed offset of an owned partition whose offset is known.
    pub(crate) fn get(&self, key: &Key) -> Option<(Lease, i64)> {
        let lease = *self.leases().get(key)?;
        Some((lease, self.committed().get(key)?.committed))
    }

    /// How far an owned partition has been consumed.
    pub(crate) fn progress(&self, key: &Key) -> Option<(Lease, districts::Progress<DistrictId>)> {
        let lease = *self.leases().get(key)?;
        Some((lease, self.committed().get(key)?.clone()))
    }

    /// Moves a partition's committed offset to `offset` (after a single entry).
    pub(crate) fn committed_to(&self, key: Key, offset: i64) {
        if let Some(progress) = self.committed().get_mut(&key) {
            progress.committed = progress.committed.max(offset);
            progress.ahead.retain(|_, o| *o > offset);
        }
    }
}

/// Tries of a failing batch before its partition goes one entry at a time, and of a
/// failing single entry before it is quarantined.
pub(crate) const POISON_TRIES: u32 = 3;

impl Dispatcher {
    /// Renews and claims leases; whether a partition was newly taken.
    pub(crate) async fn renew(&self, partitions: &Partitions) -> Result<bool, DispatchError> {
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
        self.rate_shares().share_among(live);
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
    pub(crate) async fn load_offsets(&self, partitions: &Partitions) -> Result<(), DispatchError> {
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
    pub(crate) async fn backlog(&self, partitions: &Partitions) -> Result<Backlog, DispatchError> {
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

    pub(crate) fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<Key, u32>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets aside the partition's next entry, which keeps failing on its own: its
    /// delivery FAILED (when it can be read) with the reason, the offset moved past it.
    pub(crate) async fn quarantine(
        &self,
        partitions: &Partitions,
        lease: Lease,
    ) -> Result<(), DispatchError> {
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
        let failed = tidings_core::store::apply_event(
            self.store.as_ref(),
            entry.delivery_id,
            tidings_core::DeliveryEvent::Failed,
            &actor,
            Some("quarantined: it failed the dispatcher repeatedly"),
            self.now(),
        )
        .await;
        match failed {
            // The database's trouble, not the entry's: it stays, to be tried again, rather
            // than be passed with its delivery never sent nor marked.
            Err(tidings_core::delivery::ApplyError::Write(error)) if is_outage(&error) => {
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
        Counters::add(&self.counters.quarantined, "quarantined");
        Ok(())
    }

    pub(crate) fn lose(&self, partitions: &Partitions, key: Key) {
        Counters::add(&self.counters.fenced, "fenced");
        tracing::warn!(owner = %self.config.owner, lane = %key.0, partition = %key.1, "partition taken over by another dispatcher");
        partitions.leases().remove(&key);
        partitions.committed().remove(&key);
    }
}
