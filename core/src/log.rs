//! The durable internal log: one entry per delivery to send, in a lane by urgency and a
//! partition by guardian, with offsets that increase strictly per (lane, partition).
//!
//! Order is kept per guardian (all of a guardian's deliveries share a partition), never
//! globally. Offsets are allocated under the partition's head row, which the allocating
//! transaction holds until it commits: within a partition, entries become visible in
//! offset order, so a reader that has seen offset `k` has seen everything before it and
//! can never skip an entry that commits late.

use std::fmt;

use serde::Serialize;

use crate::{DeliveryId, DistrictId, GuardianId, Lane};

/// Partitions per lane unless configured otherwise.
pub const DEFAULT_PARTITIONS: u32 = 64;

/// The consumer group whose offsets the dispatchers commit.
pub const CONSUMER_GROUP: &str = "dispatcher";

/// A partition of a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct PartitionId(u32);

impl PartitionId {
    /// The partition a guardian's deliveries go to, out of `partitions`. Stable: it
    /// depends only on the guardian id, so a guardian's messages stay in order.
    ///
    /// # Panics
    /// If `partitions` is zero (configuration refuses it before it gets here).
    pub fn of(guardian: GuardianId, partitions: u32) -> Self {
        assert!(partitions > 0, "a lane has at least one partition");
        // The last 8 bytes of a UUIDv7 are random: uniform, and independent of creation time.
        let bytes = guardian.as_uuid().as_bytes();
        let tail = u64::from_be_bytes(bytes[8..16].try_into().expect("16-byte uuid"));
        Self((tail % u64::from(partitions)) as u32)
    }

    /// Puts `items` (each a guardian's) in partition order, keeping their order within a
    /// partition. A dispatcher sends a partition's deliveries together, and in a broadcast
    /// only one delivery in `partitions` is a given partition's: written (and given ids)
    /// in this order, a batch's deliveries lie together in the table and its indexes, so
    /// its updates touch a few pages rather than one per delivery.
    pub fn sort<T>(items: &mut [T], partitions: u32, guardian: impl Fn(&T) -> GuardianId) {
        items.sort_by_key(|item| Self::of(guardian(item), partitions));
    }

    pub const fn new(index: u32) -> Self {
        Self(index)
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for PartitionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    pub lane: Lane,
    pub partition: PartitionId,
    pub offset: i64,
    pub district_id: DistrictId,
    pub delivery_id: DeliveryId,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_guardian_always_lands_in_the_same_partition_in_range(bytes in any::<[u8; 16]>(), partitions in 1u32..1024) {
            let guardian = GuardianId::from_uuid(uuid::Uuid::from_bytes(bytes));
            let p = PartitionId::of(guardian, partitions);
            prop_assert!(p.get() < partitions);
            prop_assert_eq!(p, PartitionId::of(guardian, partitions));
        }

        /// Sorting keeps every item, puts them partition by partition, and keeps their
        /// order within a partition.
        #[test]
        fn sorting_groups_by_partition_and_keeps_the_order_within_one(
            guardians in proptest::collection::vec(any::<[u8; 16]>(), 0..200),
            partitions in 1u32..16,
        ) {
            let items: Vec<(usize, GuardianId)> = guardians
                .iter()
                .map(|b| GuardianId::from_uuid(uuid::Uuid::from_bytes(*b)))
                .enumerate()
                .collect();
            let mut sorted = items.clone();
            PartitionId::sort(&mut sorted, partitions, |(_, g)| *g);
            let partition = |(_, g): &(usize, GuardianId)| PartitionId::of(*g, partitions);
            prop_assert!(sorted.iter().map(partition).is_sorted());
            for p in 0..partitions {
                let of = |list: &[(usize, GuardianId)]| -> Vec<usize> {
                    list.iter().filter(|i| partition(i).get() == p).map(|(n, _)| *n).collect()
                };
                prop_assert_eq!(of(&sorted), of(&items));
            }
        }
    }

    #[test]
    fn guardians_spread_over_the_partitions() {
        let mut counts = [0u32; 64];
        for _ in 0..64_000 {
            counts[PartitionId::of(GuardianId::new(), 64).get() as usize] += 1;
        }
        // 1,000 expected per partition; a partition under 800 or over 1,200 would mean a
        // skewed hash (the chance of that by luck is far below one in a billion).
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
