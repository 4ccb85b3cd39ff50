//! Refused requests are evidence, not data: the callbacks keep a bounded sample of them
//! (at most so many per provider in a window, each cut to a few KB) and only count the
//! rest. Whoever can reach a public route must not be able to fill the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tidings_core::clock::Clock;

/// How many refused requests are kept, and how much of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SamplePolicy {
    /// Refused requests kept per provider in each window; the rest are only counted.
    pub per_window: u32,
    pub window: Duration,
    /// Bytes of a refused request's payload kept (as JSON text); beyond that it is cut.
    pub payload_bytes: usize,
}

impl Default for SamplePolicy {
    fn default() -> Self {
        Self {
            per_window: 20,
            window: Duration::from_secs(60),
            payload_bytes: 2048,
        }
    }
}

/// Decides which refused requests are kept: the first `per_window` per provider in each
/// window. Providers are the routes' fixed names, so the map stays small.
#[derive(Debug)]
pub struct Sampler {
    policy: SamplePolicy,
    /// Per provider: when its window started ([`Clock::elapsed`]) and how many it kept.
    windows: Mutex<HashMap<String, (Duration, u32)>>,
    clock: Arc<dyn Clock>,
}

impl Sampler {
    pub fn new(policy: SamplePolicy, clock: Arc<dyn Clock>) -> Self {
        Self {
            policy,
            windows: Mutex::default(),
            clock,
        }
    }

    /// Whether a refused request of `provider` is to be kept now.
    pub fn admit(&self, provider: &str) -> bool {
        let now = self.clock.elapsed();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let (started, taken) = windows.entry(provider.to_owned()).or_insert((now, 0));
        if now.saturating_sub(*started) >= self.policy.window {
            (*started, *taken) = (now, 0);
        }
        if *taken < self.policy.per_window {
            *taken += 1;
            true
        } else {
            false
        }
    }

    /// `raw` as kept: whole when its JSON text fits, else its first bytes as a string,
    /// marked as cut, with the size it had.
    pub fn trim(&self, raw: Value) -> Value {
        trim(raw, self.policy.payload_bytes)
    }
}

/// `raw` cut to at most about `limit` bytes of JSON text.
pub fn trim(raw: Value, limit: usize) -> Value {
    let text = raw.to_string();
    if text.len() <= limit {
        return raw;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    json!({ "truncated": true, "bytes": text.len(), "head": &text[..end] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    use tidings_core::clock::ManualClock;

    fn sampler(per_window: u32) -> (Sampler, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at(tidings_core::time::now()));
        let policy = SamplePolicy {
            per_window,
            window: Duration::from_secs(3600),
            payload_bytes: 100,
        };
        (Sampler::new(policy, clock.clone()), clock)
    }

    #[test]
    fn a_provider_gets_so_many_per_window_and_others_are_apart() {
        let (sampler, _) = sampler(3);
        let kept = (0..10).filter(|_| sampler.admit("twilio")).count();
        assert_eq!(kept, 3);
        assert!(sampler.admit("mailgun"));
    }

    #[test]
    fn a_new_window_keeps_again() {
        let (sampler, clock) = sampler(1);
        assert!(sampler.admit("twilio"));
        clock.advance(chrono::Duration::minutes(59));
        assert!(!sampler.admit("twilio"));
        clock.advance(chrono::Duration::minutes(1));
        assert!(sampler.admit("twilio"));
        assert!(!sampler.admit("twilio"));
    }

    proptest! {
        #[test]
        fn what_is_kept_is_bounded_and_whole_when_small(text in ".{0,3000}", limit in 16usize..4096) {
            let kept = trim(Value::String(text.clone()), limit);
            // The envelope adds a few dozen bytes and escaping at most doubles the head.
            prop_assert!(kept.to_string().len() <= 2 * limit + 64);
            if Value::String(text.clone()).to_string().len() <= limit {
                prop_assert_eq!(kept, Value::String(text));
            } else {
                prop_assert_eq!(&kept["truncated"], &Value::Bool(true));
            }
        }
    }
}
