//! A circuit breaker per provider: a run of failed sends opens it, and while it is open
//! that provider's deliveries wait (without spending an attempt) instead of hammering a
//! provider that is down; the others go on. When the pause is over one batch goes through
//! as a probe: a success closes the breaker, a failure opens it again for twice as long.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failed sends (transient or in doubt) that open the breaker.
    pub failures: u32,
    /// The first pause; each failed probe doubles it.
    pub pause: Duration,
    pub max_pause: Duration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            failures: 20,
            pause: Duration::from_secs(30),
            max_pause: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: DateTime<Utc>,
        pause: Duration,
    },
    /// The pause is over: the next batch is a probe.
    Probing {
        pause: Duration,
    },
}

/// The breakers of every provider.
#[derive(Debug, Default)]
pub struct Breakers {
    policy: BreakerPolicy,
    states: Mutex<HashMap<String, State>>,
}

impl Breakers {
    pub fn new(policy: BreakerPolicy) -> Self {
        Self {
            policy,
            states: Mutex::default(),
        }
    }

    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Some(until)` while the provider's breaker is open: hold its sends until then.
    pub fn held_until(&self, provider: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut states = self.states();
        let state = states.get_mut(provider)?;
        match *state {
            State::Open { until, pause } if now >= until => {
                *state = State::Probing { pause };
                None
            }
            State::Open { until, .. } => Some(until),
            _ => None,
        }
    }

    /// Records a batch's sends to the provider: `failed` of `total` failed in a way that
    /// may pass (transient, in doubt). Returns the time until which the breaker has just
    /// opened, if it did.
    pub fn record(
        &self,
        provider: &str,
        total: usize,
        failed: usize,
        now: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        if total == 0 {
            return None;
        }
        let policy = self.policy;
        let mut states = self.states();
        let state = states
            .entry(provider.to_owned())
            .or_insert(State::Closed { failures: 0 });
        let open = |pause: Duration| {
            let pause = pause.min(policy.max_pause);
            let until = now + chrono::Duration::from_std(pause).unwrap_or(chrono::Duration::MAX);
            (State::Open { until, pause }, until)
        };
        let succeeded = failed < total;
        let (next, opened) = match *state {
            _ if succeeded && failed == 0 => (State::Closed { failures: 0 }, None),
            State::Probing { .. } if succeeded => (State::Closed { failures: 0 }, None),
            State::Probing { pause } => {
                let (s, until) = open(pause * 2);
                (s, Some(until))
            }
            State::Closed { failures } => {
                // A batch with some successes ends the run, but its failures start a new one.
                let failures = if succeeded {
                    failed as u32
                } else {
                    failures + failed as u32
                };
                if failures >= policy.failures {
                    let (s, until) = open(policy.pause);
                    (s, Some(until))
                } else {
                    (State::Closed { failures }, None)
                }
            }
            open_state @ State::Open { .. } => (open_state, None),
        };
        *state = next;
        // Open until a probe succeeds.
        let open = !matches!(next, State::Closed { .. });
        metrics::gauge!(tidings_core::telemetry::BREAKER_OPEN, "provider" => provider.to_owned())
            .set(if open { 1.0 } else { 0.0 });
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> BreakerPolicy {
        BreakerPolicy {
            failures: 5,
            pause: Duration::from_secs(10),
            max_pause: Duration::from_secs(40),
        }
    }

    #[test]
    fn a_run_of_failures_opens_the_breaker_and_a_probe_decides() {
        let breakers = Breakers::new(policy());
        let t0 = tidings_core::time::now();
        assert_eq!(breakers.record("twilio", 4, 4, t0), None);
        assert_eq!(breakers.held_until("twilio", t0), None);
        let until = breakers.record("twilio", 1, 1, t0).expect("opened");
        assert_eq!(until, t0 + chrono::Duration::seconds(10));
        assert_eq!(breakers.held_until("twilio", t0), Some(until));
        // Other providers are not held.
        assert_eq!(breakers.held_until("smtp", t0), None);
        // The pause over, a failed probe opens it for twice as long...
        let t1 = until;
        assert_eq!(breakers.held_until("twilio", t1), None);
        let until = breakers.record("twilio", 3, 3, t1).expect("reopened");
        assert_eq!(until, t1 + chrono::Duration::seconds(20));
        // ...and a successful one closes it.
        assert_eq!(breakers.held_until("twilio", until), None);
        assert_eq!(breakers.record("twilio", 3, 1, until), None);
        assert_eq!(breakers.held_until("twilio", until), None);
        assert_eq!(
            breakers.record("twilio", 4, 4, until),
            None,
            "the run starts over"
        );
    }

    #[test]
    fn pauses_stop_doubling_at_the_maximum() {
        let breakers = Breakers::new(policy());
        let mut t = tidings_core::time::now();
        breakers.record("fcm", 5, 5, t);
        let mut pauses = Vec::new();
        for _ in 0..5 {
            t = breakers.held_until("fcm", t).expect("open");
            assert_eq!(breakers.held_until("fcm", t), None);
            let until = breakers.record("fcm", 1, 1, t).expect("reopened");
            pauses.push((until - t).num_seconds());
        }
        assert_eq!(pauses, [20, 40, 40, 40, 40]);
    }

    proptest! {
        /// Whatever the sequence of batches, the breaker is never open after a batch with
        /// no failure, and it opens only after at least `failures` failed sends in a row
        /// (or a failed probe).
        #[test]
        fn it_opens_only_on_enough_failures(batches in prop::collection::vec((1usize..10, 0usize..10), 1..60)) {
            let breakers = Breakers::new(policy());
            let t = tidings_core::time::now();
            let mut run = 0usize;
            for (total, failed) in batches {
                let failed = failed.min(total);
                if breakers.held_until("p", t).is_some() {
                    continue; // held: nothing is sent
                }
                let opened = breakers.record("p", total, failed, t);
                run = if failed < total { failed } else { run + failed };
                if failed == 0 {
                    prop_assert!(opened.is_none());
                    prop_assert!(breakers.held_until("p", t).is_none());
                }
                if opened.is_some() {
                    prop_assert!(run >= 5 || failed == total, "run {run}");
                    run = 0;
                }
            }
        }
    }
}
