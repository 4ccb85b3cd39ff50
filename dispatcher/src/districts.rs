//! Fairness between districts inside a lane. A partition's entries are read district by
//! district: each batch gives every district with unread entries an equal share, so a
//! small district's message goes out alongside a large district's broadcast instead of
//! behind it. A guardian belongs to one district, so a guardian's entries keep their
//! order.
//!
//! The committed offset still means "every entry up to here has a durable outcome": it is
//! the least of what each district has read through. A district that is ahead keeps its
//! own offset here, in memory; after a restart its finished entries are read again and
//! passed over (their deliveries are no longer waiting to be sent).

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use tidings_core::store::dispatch::DueCount;
use tidings_core::{DistrictId, Lane};

/// How far a partition has been consumed.
#[derive(Debug, Clone)]
pub struct Progress<D> {
    /// Every entry up to here has an outcome (-1: none yet).
    pub committed: i64,
    /// Districts that have read further than `committed`: each one's entries up to its
    /// offset have outcomes.
    pub ahead: HashMap<D, i64>,
}

/// The districts one batch reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan<D> {
    /// The partition's last visible entry when the batch was planned: nothing past it is
    /// read, nor is anything past it known to be finished.
    pub through: i64,
    /// Per district read: the offset its entries are read after.
    pub reads: Vec<(D, i64)>,
    /// Entries read per district at most.
    pub each: u32,
    /// The lowest offset among districts with entries that this batch does not read (more
    /// districts than the batch has room for); the committed offset stays below it.
    pub unread_from: Option<i64>,
}

impl<D> Plan<D> {
    /// How far one district of the plan got, for [`Progress::advance`]: of the entries it
    /// read after `after` (their offsets, in order), the first `kept` have outcomes. `None`
    /// when it kept all and they were fewer than its share: it has nothing more up to
    /// `through`.
    pub fn reached(&self, after: i64, read: &[i64], kept: usize) -> Option<i64> {
        if kept == read.len() && read.len() < self.each as usize {
            None
        } else {
            Some(kept.checked_sub(1).map_or(after, |i| read[i]))
        }
    }
}

impl<D: Copy + Eq + Hash + Ord> Progress<D> {
    pub fn new(committed: i64) -> Self {
        Self {
            committed,
            ahead: HashMap::new(),
        }
    }

    /// Where a district's unread entries start after.
    pub fn cursor(&self, district: &D) -> i64 {
        self.ahead
            .get(district)
            .copied()
            .unwrap_or(self.committed)
            .max(self.committed)
    }

    /// The next batch of at most `limit` entries: every district whose last entry (from
    /// `districts`, read with `through`, none past it) is past its cursor, furthest behind
    /// first, at most `limit` of them, each with an equal share.
    pub fn plan(&self, through: i64, districts: &[(D, i64)], limit: u32) -> Plan<D> {
        let mut waiting: Vec<(D, i64)> = districts
            .iter()
            .filter_map(|&(d, last)| {
                let cursor = self.cursor(&d);
                (last > cursor).then_some((d, cursor))
            })
            .collect();
        waiting.sort_by_key(|&(d, cursor)| (cursor, d));
        let room = (limit.max(1) as usize).min(waiting.len());
        let unread = waiting.split_off(room);
        Plan {
            through,
            each: (limit.max(1) / room.max(1) as u32).max(1),
            unread_from: unread.iter().map(|&(_, cursor)| cursor).min(),
            reads: waiting,
        }
    }

    /// Records how far each district of `plan` got and returns the new committed offset.
    /// `reached` per district read: the offset up to which its entries have outcomes, or
    /// `None` when it read all its entries up to `plan.through`.
    pub fn advance(&mut self, plan: &Plan<D>, reached: &HashMap<D, Option<i64>>) -> i64 {
        let mut committed = plan.through.min(plan.unread_from.unwrap_or(i64::MAX));
        for &(district, after) in &plan.reads {
            let got = match reached.get(&district) {
                Some(Some(offset)) => (*offset).max(after),
                Some(None) => plan.through,
                None => after,
            };
            committed = committed.min(got);
            let ahead = self.ahead.entry(district).or_insert(got);
            *ahead = (*ahead).max(got);
        }
        self.committed = self.committed.max(committed);
        let floor = self.committed;
        self.ahead.retain(|_, offset| *offset > floor);
        self.committed
    }
}

/// Divides `limit` among districts by how much each has waiting (`counts`), max-min fair:
/// a district with less than an equal share gets all of it, and what it leaves is shared
/// equally among the others. Used for deliveries coming due, which are read across
/// partitions: a district's scheduled broadcast no longer holds up another's retries.
pub fn fair_shares<D: Copy>(counts: &[(D, u32)], limit: u32) -> Vec<(D, u32)> {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&i| counts[i].1);
    let mut shares: Vec<(D, u32)> = counts.iter().map(|(d, _)| (*d, 0)).collect();
    let mut left = limit;
    for (placed, &i) in order.iter().enumerate() {
        let others = (order.len() - placed) as u32;
        // The first `left % others` of the rest get one more, so nothing is left over.
        let equal = left / others + u32::from(left % others > 0);
        let share = counts[i].1.min(equal);
        shares[i].1 = share;
        left -= share;
    }
    shares
}

/// What one look at due deliveries reads of each district and lane (`waiting`: how
/// many each has due): `limit` shared fairly between districts ([`fair_shares`]), then
/// each district's share split among its lanes, most urgent first
/// ([`crate::lanes::split_share`], `every` as there).
pub fn due_shares(waiting: &[DueCount], limit: u32, every: u32) -> Vec<DueCount> {
    let mut by_district: BTreeMap<DistrictId, Vec<(Lane, u32)>> = BTreeMap::new();
    for due in waiting {
        by_district
            .entry(due.district)
            .or_default()
            .push((due.lane, due.deliveries));
    }
    let totals: Vec<(DistrictId, u32)> = by_district
        .iter()
        .map(|(district, lanes)| (*district, lanes.iter().map(|(_, n)| n).sum()))
        .collect();
    let mut shares = Vec::new();
    for (district, share) in fair_shares(&totals, limit) {
        let mut lanes = by_district.remove(&district).unwrap_or_default();
        lanes.sort();
        for (lane, deliveries) in crate::lanes::split_share(share, &lanes, every) {
            if deliveries > 0 {
                shares.push(DueCount {
                    district,
                    lane,
                    deliveries,
                });
            }
        }
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_district_with_entries_gets_an_equal_share_furthest_behind_first() {
        let mut progress = Progress::<u8>::new(9);
        progress.ahead.insert(2, 40);
        let plan = progress.plan(50, &[(1, 50), (2, 45), (3, 12), (4, 8)], 256);
        // District 4's last entry is before the committed offset: nothing to read.
        assert_eq!(plan.reads, vec![(1, 9), (3, 9), (2, 40)]);
        assert_eq!(plan.each, 85);
        assert_eq!(plan.unread_from, None);

        let plan = progress.plan(50, &[(1, 50), (2, 45), (3, 12)], 2);
        assert_eq!(plan.reads, vec![(1, 9), (3, 9)]);
        assert_eq!((plan.each, plan.unread_from), (1, Some(40)));
    }

    #[test]
    fn the_committed_offset_is_the_least_any_district_has_read_through() {
        let mut progress = Progress::<u8>::new(-1);
        let plan = progress.plan(99, &[(1, 99), (2, 30)], 20);
        // District 1 read ten of its entries (up to offset 60), district 2 all of its own.
        let reached = HashMap::from([(1, Some(60)), (2, None)]);
        assert_eq!(progress.advance(&plan, &reached), 60);
        // District 2 has nothing left, so it no longer holds anything back.
        let plan = progress.plan(99, &[(1, 99), (2, 30)], 20);
        assert_eq!(plan.reads, vec![(1, 60)]);
        assert_eq!(progress.advance(&plan, &HashMap::from([(1, None)])), 99);
        assert!(progress.ahead.is_empty());
    }

    #[test]
    fn a_district_that_read_nothing_holds_the_offset_where_it_was() {
        let mut progress = Progress::<u8>::new(5);
        let plan = progress.plan(50, &[(1, 50), (2, 50)], 10);
        // District 2 was held back (a provider's rate limit): no entry of it done.
        let reached = HashMap::from([(1, None), (2, Some(5))]);
        assert_eq!(progress.advance(&plan, &reached), 5);
        assert_eq!(progress.cursor(&1), 50);
        assert_eq!(
            progress.plan(50, &[(1, 50), (2, 50)], 10).reads,
            vec![(2, 5)]
        );
    }

    /// A partition of the log as a list of districts by offset, consumed batch by batch
    /// with random hold-backs: the committed offset never passes an entry without an
    /// outcome, never goes back, and reaches the end; every batch reads every district
    /// with work (when there is room).
    fn consume(log: &[u8], limit: u32, cuts: &[u8]) -> Result<(), TestCaseError> {
        let through = log.len() as i64 - 1;
        let mut districts: Vec<(u8, i64)> = Vec::new();
        for (offset, d) in log.iter().enumerate() {
            match districts.iter_mut().find(|(x, _)| x == d) {
                Some(head) => head.1 = offset as i64,
                None => districts.push((*d, offset as i64)),
            }
        }
        let mut done = vec![false; log.len()];
        let mut progress = Progress::<u8>::new(-1);
        let mut cuts = cuts.iter().cycle();
        for round in 0..(log.len() * 4 + 8) {
            let plan = progress.plan(through, &districts, limit);
            if plan.reads.is_empty() {
                // Every district has read all it has: the offset moves to the end.
                progress.advance(&plan, &HashMap::new());
                break;
            }
            let with_work = districts
                .iter()
                .filter(|(d, last)| *last > progress.cursor(d))
                .count();
            prop_assert_eq!(plan.reads.len(), with_work.min(limit as usize));
            let mut reached = HashMap::new();
            for &(district, after) in &plan.reads {
                let entries: Vec<usize> = (0..log.len())
                    .filter(|&o| log[o] == district && o as i64 > after)
                    .take(plan.each as usize)
                    .collect();
                prop_assert!(!entries.is_empty());
                // Keep a prefix; the rest is held back (at least one kept now and then,
                // so the partition moves).
                let keep = match cuts.next() {
                    Some(c) if *c % 3 == 0 => entries.len().min(usize::from(*c) % 4),
                    _ => entries.len(),
                };
                let keep = if round % 2 == 1 { keep.max(1) } else { keep };
                for &o in &entries[..keep] {
                    done[o] = true;
                }
                let read: Vec<i64> = entries.iter().map(|&o| o as i64).collect();
                reached.insert(district, plan.reached(after, &read, keep));
            }
            let before = progress.committed;
            let committed = progress.advance(&plan, &reached);
            prop_assert!(committed >= before);
            let first_undone = done.iter().position(|d| !d).map_or(i64::MAX, |o| o as i64);
            prop_assert!(
                committed < first_undone,
                "committed {} past undone {}",
                committed,
                first_undone
            );
        }
        prop_assert!(done.iter().all(|d| *d));
        prop_assert_eq!(progress.committed, through);
        Ok(())
    }

    proptest! {
        #[test]
        fn consuming_by_district_never_commits_past_an_unfinished_entry(
            log in proptest::collection::vec(0u8..6, 1..200),
            limit in 1u32..40,
            cuts in proptest::collection::vec(any::<u8>(), 1..20),
        ) {
            consume(&log, limit, &cuts)?;
        }
    }

    #[test]
    fn districts_with_little_due_get_all_of_it_and_the_rest_is_shared() {
        let shares = fair_shares(&[('a', 4096), ('b', 3), ('c', 900), ('d', 0)], 1024);
        assert_eq!(shares, vec![('a', 510), ('b', 3), ('c', 511), ('d', 0)]);
        assert_eq!(
            fair_shares(&[('a', 10), ('b', 20)], 1024),
            vec![('a', 10), ('b', 20)]
        );
        assert_eq!(fair_shares::<char>(&[], 1024), vec![]);
    }

    #[test]
    fn a_look_at_due_deliveries_is_shared_by_district_then_by_lane() {
        let (large, small) = (DistrictId::new(), DistrictId::new());
        let due = |district, lane, deliveries| DueCount {
            district,
            lane,
            deliveries,
        };
        let mut shares = due_shares(
            &[
                due(large, Lane::Bulk, 4096),
                due(large, Lane::Emergency, 10),
                due(small, Lane::Normal, 20),
            ],
            1024,
            8,
        );
        shares.sort_by_key(|d| (d.district == small, d.lane));
        assert_eq!(
            shares,
            vec![
                due(large, Lane::Emergency, 10),
                due(large, Lane::Bulk, 994),
                due(small, Lane::Normal, 20),
            ]
        );
    }

    proptest! {
        /// Never more than the limit nor more than a district has; the limit is used up
        /// when there is enough waiting; a district held below what it has gets at least
        /// as much as any other (max-min fairness).
        #[test]
        fn fair_shares_are_bounded_and_max_min_fair(
            counts in proptest::collection::vec(0u32..5_000, 0..40),
            limit in 0u32..10_000,
        ) {
            let named: Vec<(usize, u32)> = counts.iter().copied().enumerate().collect();
            let shares = fair_shares(&named, limit);
            let total: u64 = shares.iter().map(|(_, s)| u64::from(*s)).sum();
            let waiting: u64 = counts.iter().map(|c| u64::from(*c)).sum();
            prop_assert!(total <= u64::from(limit));
            prop_assert_eq!(total, waiting.min(u64::from(limit)));
            for (i, (d, share)) in shares.iter().enumerate() {
                prop_assert_eq!(*d, i);
                prop_assert!(*share <= counts[i]);
                if *share < counts[i] {
                    for (_, other) in &shares {
                        prop_assert!(*share + 1 >= *other, "{} held to {} while another got {}", i, share, other);
                    }
                }
            }
        }
    }
}
