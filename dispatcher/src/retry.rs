//! When to try a delivery again: a schedule of delays with full jitter.

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

/// Delays before each attempt: `schedule[0]` before the first (normally zero),
/// `schedule[n]` before attempt `n + 1`. Its length is the number of attempts.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RetryPolicy {
    #[serde(with = "seconds")]
    pub schedule: Vec<Duration>,
}

impl Default for RetryPolicy {
    /// 0 s, 5 s, 5 min, 30 min, 2 h, 5 h: six attempts over about seven and a half hours.
    fn default() -> Self {
        Self {
            schedule: [0, 5, 300, 1_800, 7_200, 18_000]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
        }
    }
}

impl RetryPolicy {
    /// Attempts allowed in all.
    pub fn max_attempts(&self) -> u32 {
        self.schedule.len().max(1) as u32
    }

    /// How long to wait after attempt `attempt` (1-based) failed, or `None` when that was
    /// the last. Full jitter: uniform between zero and the scheduled delay, so retries of a
    /// broadcast that failed together do not come back together; never less than what the
    /// provider asked for (`Retry-After`).
    pub fn delay_after(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<Duration> {
        let base = *self.schedule.get(attempt as usize)?;
        let jittered = if base.is_zero() {
            base
        } else {
            Duration::from_millis(rng.gen_range(0..=base.as_millis() as u64))
        };
        Some(jittered.max(retry_after.unwrap_or_default()))
    }
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        let secs = Vec::<f64>::deserialize(d)?;
        secs.into_iter()
            .map(|s| {
                Duration::try_from_secs_f64(s).map_err(|_| {
                    serde::de::Error::custom(format!("{s} is not a delay in seconds (0 or more)"))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn policy() -> impl Strategy<Value = RetryPolicy> {
        prop::collection::vec(0u64..100_000, 1..10).prop_map(|ms| RetryPolicy {
            schedule: ms.into_iter().map(Duration::from_millis).collect(),
        })
    }

    proptest! {
        #[test]
        fn delays_stay_within_the_schedule_and_respect_retry_after(
            policy in policy(),
            attempt in 1u32..12,
            retry_after in prop::option::of(0u64..200_000),
            seed in any::<u64>(),
        ) {
            let retry_after = retry_after.map(Duration::from_millis);
            let delay = policy.delay_after(attempt, retry_after, &mut StdRng::seed_from_u64(seed));
            if attempt >= policy.max_attempts() {
                prop_assert_eq!(delay, None);
            } else {
                let delay = delay.expect("attempts left");
                let base = policy.schedule[attempt as usize];
                prop_assert!(delay <= base.max(retry_after.unwrap_or_default()));
                prop_assert!(delay >= retry_after.unwrap_or_default());
            }
        }

        #[test]
        fn the_same_seed_gives_the_same_delay(policy in policy(), attempt in 1u32..10, seed in any::<u64>()) {
            let a = policy.delay_after(attempt, None, &mut StdRng::seed_from_u64(seed));
            let b = policy.delay_after(attempt, None, &mut StdRng::seed_from_u64(seed));
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn jitter_spreads_a_broadcast_over_the_whole_window() {
        let policy = RetryPolicy::default();
        let mut rng = StdRng::seed_from_u64(1);
        let delays: Vec<Duration> = (0..1_000)
            .map(|_| policy.delay_after(2, None, &mut rng).unwrap())
            .collect();
        let (low, high) = (Duration::from_secs(60), Duration::from_secs(240));
        assert!(delays.iter().any(|d| *d < low));
        assert!(delays.iter().any(|d| *d > high));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(300)));
    }

    #[test]
    fn the_default_allows_six_attempts() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.max_attempts(), 6);
        let mut rng = StdRng::seed_from_u64(1);
        assert!(policy.delay_after(5, None, &mut rng).is_some());
        assert_eq!(policy.delay_after(6, None, &mut rng), None);
    }
}
