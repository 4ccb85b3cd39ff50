//! Which lane the next batch comes from: the most urgent lane with work, except that a
//! lane passed over while it had work gets a turn after a while, so a long emergency
//! never starves attendance notices and a newsletter still trickles out.

use std::collections::BTreeMap;

use tidings_core::Lane;

/// Turns between lanes. `every`: a lane with work passed over `every - 1` times in a row
/// gets the next batch (so a lower lane gets at least one batch in `every` while it has
/// work); 1 or 0 means strict priority never yields.
#[derive(Debug, Clone)]
pub struct LaneShares {
    every: u32,
    passed_over: BTreeMap<Lane, u32>,
}

impl LaneShares {
    pub fn new(every: u32) -> Self {
        Self {
            every,
            passed_over: BTreeMap::new(),
        }
    }

    /// The lane of the next batch among `waiting` (lanes that have work), or `None` when
    /// none has.
    pub fn pick(&mut self, waiting: &[Lane]) -> Option<Lane> {
        let most_urgent = waiting.iter().min().copied()?;
        let due = |lane: &Lane| {
            self.every > 1 && self.passed_over.get(lane).copied().unwrap_or(0) + 1 >= self.every
        };
        // The longest-waiting of the lanes whose turn has come; ties go to the more urgent.
        let pick = waiting
            .iter()
            .filter(|l| due(l))
            .max_by_key(|l| {
                (
                    self.passed_over.get(l).copied().unwrap_or(0),
                    std::cmp::Reverse(**l),
                )
            })
            .copied()
            .unwrap_or(most_urgent);
        for lane in waiting {
            let count = self.passed_over.entry(*lane).or_default();
            *count = if *lane == pick {
                0
            } else {
                count.saturating_add(1)
            };
        }
        // A lane without work is not waiting: it starts over when work arrives.
        self.passed_over.retain(|lane, _| waiting.contains(lane));
        Some(pick)
    }
}

/// Divides `share` (what one look at due deliveries reads of a district) among the
/// lanes of `waiting` (how many each has due, most urgent first): the lower lanes with
/// something due are first set aside `share / every` between them, most urgent first,
/// so a run of emergency retries never holds a district's newsletter back entirely;
/// the rest goes to the most urgent lane first. 1 or 0 for `every` is strict priority.
pub fn split_share(share: u32, waiting: &[(Lane, u32)], every: u32) -> Vec<(Lane, u32)> {
    let mut split: Vec<(Lane, u32)> = waiting.iter().map(|(lane, _)| (*lane, 0)).collect();
    let mut left = share;
    let urgent = waiting.iter().position(|(_, n)| *n > 0);
    let mut set_aside = if every > 1 { share / every } else { 0 };
    for (i, (_, n)) in waiting.iter().enumerate() {
        if urgent.is_some_and(|u| i > u) {
            let given = (*n).min(set_aside);
            split[i].1 = given;
            set_aside -= given;
            left -= given;
        }
    }
    for (i, (_, n)) in waiting.iter().enumerate() {
        let given = (n - split[i].1).min(left);
        split[i].1 += given;
        left -= given;
    }
    split
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(shares: &mut LaneShares, waiting: &[Lane], turns: usize) -> BTreeMap<Lane, usize> {
        let mut served = BTreeMap::new();
        for _ in 0..turns {
            *served.entry(shares.pick(waiting).unwrap()).or_default() += 1;
        }
        served
    }

    #[test]
    fn the_most_urgent_lane_gets_most_batches_and_the_others_their_share() {
        let mut shares = LaneShares::new(8);
        let served = run(
            &mut shares,
            &[Lane::Emergency, Lane::Normal, Lane::Bulk],
            800,
        );
        // One batch in eight each for the lower lanes (give or take the first round).
        assert!((99..=100).contains(&served[&Lane::Normal]), "{served:?}");
        assert!((99..=100).contains(&served[&Lane::Bulk]), "{served:?}");
        assert!(served[&Lane::Emergency] >= 600, "{served:?}");
    }

    #[test]
    fn strict_priority_when_sharing_is_off() {
        let mut shares = LaneShares::new(1);
        let served = run(&mut shares, &[Lane::Emergency, Lane::Bulk], 50);
        assert_eq!(served, BTreeMap::from([(Lane::Emergency, 50)]));
    }

    #[test]
    fn nothing_waiting_picks_nothing() {
        assert_eq!(LaneShares::new(8).pick(&[]), None);
    }

    #[test]
    fn a_lane_that_ran_dry_waits_its_whole_turn_again() {
        let mut shares = LaneShares::new(4);
        run(&mut shares, &[Lane::Emergency, Lane::Bulk], 2);
        // Bulk has nothing for a while: its waiting does not count.
        run(&mut shares, &[Lane::Emergency], 10);
        let served = run(&mut shares, &[Lane::Emergency, Lane::Bulk], 3);
        assert_eq!(served, BTreeMap::from([(Lane::Emergency, 3)]));
    }

    #[test]
    fn a_districts_share_goes_to_its_emergencies_first_but_for_a_little() {
        let waiting = [(Lane::Emergency, 40), (Lane::Normal, 0), (Lane::Bulk, 800)];
        assert_eq!(
            split_share(128, &waiting, 8),
            vec![(Lane::Emergency, 40), (Lane::Normal, 0), (Lane::Bulk, 88)]
        );
        let waiting = [(Lane::Emergency, 500), (Lane::Normal, 3), (Lane::Bulk, 800)];
        assert_eq!(
            split_share(128, &waiting, 8),
            vec![(Lane::Emergency, 112), (Lane::Normal, 3), (Lane::Bulk, 13)]
        );
        assert_eq!(
            split_share(128, &waiting, 1),
            vec![(Lane::Emergency, 128), (Lane::Normal, 0), (Lane::Bulk, 0)]
        );
        // Only bulk due: all of the share is bulk's.
        assert_eq!(
            split_share(128, &[(Lane::Bulk, 800)], 8),
            vec![(Lane::Bulk, 128)]
        );
    }

    proptest! {
        /// Never more than the share nor more than a lane has; the share is used up when
        /// there is enough due; the most urgent lane with something due gets all of it or
        /// at least all but `share / every`; and the lanes below it get at least that
        /// part between them, or everything they have.
        #[test]
        fn a_share_is_split_most_urgent_first_with_a_part_set_aside(
            due in (0u32..600, 0u32..600, 0u32..600),
            share in 0u32..2_000,
            every in 0u32..12,
        ) {
            let waiting = [(Lane::Emergency, due.0), (Lane::Normal, due.1), (Lane::Bulk, due.2)];
            let split = split_share(share, &waiting, every);
            let given: Vec<u32> = split.iter().map(|(_, n)| *n).collect();
            let total: u32 = given.iter().sum();
            prop_assert_eq!(total, share.min(due.0 + due.1 + due.2));
            for (i, (lane, n)) in split.iter().enumerate() {
                prop_assert_eq!(*lane, waiting[i].0);
                prop_assert!(*n <= waiting[i].1);
            }
            let aside = if every > 1 { share / every } else { 0 };
            if let Some(u) = waiting.iter().position(|(_, n)| *n > 0) {
                prop_assert!(given[u] >= waiting[u].1.min(share - aside.min(share)));
                let below: u32 = given[u + 1..].iter().sum();
                let below_due: u32 = waiting[u + 1..].iter().map(|(_, n)| n).sum();
                prop_assert!(below >= below_due.min(aside).min(share - given[u]));
            }
        }

        /// Whatever has work when: every lane with work is served at least once in any
        /// `every` turns in which it had work all along, and the most urgent lane is never
        /// passed over twice in a row.
        #[test]
        fn no_lane_with_work_starves(
            every in 2u32..12,
            rounds in prop::collection::vec((any::<bool>(), any::<bool>(), any::<bool>()), 1..300),
        ) {
            let mut shares = LaneShares::new(every);
            let mut waited: BTreeMap<Lane, u32> = BTreeMap::new();
            let mut urgent_skipped = (Lane::Emergency, 0);
            for (e, n, b) in rounds {
                let waiting: Vec<Lane> = [(e, Lane::Emergency), (n, Lane::Normal), (b, Lane::Bulk)]
                    .into_iter()
                    .filter_map(|(has, lane)| has.then_some(lane))
                    .collect();
                let Some(pick) = shares.pick(&waiting) else {
                    prop_assert!(waiting.is_empty());
                    continue;
                };
                prop_assert!(waiting.contains(&pick));
                // Passed over in a row while it stayed the most urgent lane with work.
                let skipped = if urgent_skipped.0 == waiting[0] { urgent_skipped.1 } else { 0 };
                urgent_skipped = (waiting[0], if pick == waiting[0] { 0 } else { skipped + 1 });
                prop_assert!(urgent_skipped.1 <= 2, "the most urgent lane was passed over {} times", urgent_skipped.1);
                waited.retain(|lane, _| waiting.contains(lane));
                for lane in &waiting {
                    let w = waited.entry(*lane).or_default();
                    *w = if *lane == pick { 0 } else { *w + 1 };
                    prop_assert!(*w < every + 2, "{lane} waited {w} turns");
                }
            }
        }
    }
}
