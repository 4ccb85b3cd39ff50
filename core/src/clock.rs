//! The `Clock`: where library code gets "now" from, so that tests move time by hand
//! instead of sleeping. Production passes [`SystemClock`]; tests pass a [`ManualClock`].
//! Rate limits measure time on it too ([`RateClock`]), so a test moves them as well.

use std::sync::{Arc, Mutex, OnceLock};

use chrono::{DateTime, Duration, Utc};

/// A source of the current time (UTC, microsecond precision: see [`crate::time::now`]).
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Time passed since a fixed point of this clock, never going back: what intervals
    /// (rate limits) are measured in. The wall clock can be stepped back and forth by
    /// its owner; this cannot.
    fn elapsed(&self) -> std::time::Duration;
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        crate::time::now()
    }

    fn elapsed(&self) -> std::time::Duration {
        static START: OnceLock<std::time::Instant> = OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed()
    }
}

/// A clock that stands still until it is moved.
#[derive(Debug)]
pub struct ManualClock {
    now: Mutex<DateTime<Utc>>,
    /// Where [`Clock::elapsed`] counts from: the time it was set at first.
    start: DateTime<Utc>,
}

impl ManualClock {
    pub fn at(at: DateTime<Utc>) -> Self {
        Self {
            now: Mutex::new(at),
            start: at,
        }
    }

    /// Moves the clock forward (or back, with a negative duration).
    pub fn advance(&self, by: Duration) {
        *self.lock() += by;
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.lock() = at;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DateTime<Utc>> {
        self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.lock()
    }

    /// Since the time it was made at; before that (set back), none.
    fn elapsed(&self) -> std::time::Duration {
        (self.now() - self.start).to_std().unwrap_or_default()
    }
}

/// A [`Clock`] as a rate limiter's clock: `governor`'s limiters built with it
/// (`RateLimiter::direct_with_clock`, `hashmap_with_clock`) measure time by
/// [`Clock::elapsed`], so that a test's [`ManualClock`] refills them.
#[derive(Debug, Clone)]
pub struct RateClock(pub Arc<dyn Clock>);

impl governor::clock::Clock for RateClock {
    type Instant = std::time::Duration;

    fn now(&self) -> Self::Instant {
        self.0.elapsed()
    }
}

/// A rate limiter on a [`RateClock`].
pub type DirectLimiter = governor::RateLimiter<
    governor::state::NotKeyed,
    governor::state::InMemoryState,
    RateClock,
    governor::middleware::NoOpMiddleware<std::time::Duration>,
>;

/// A limiter per key on a [`RateClock`].
pub type KeyedLimiter<K> = governor::RateLimiter<
    K,
    governor::state::keyed::DefaultKeyedStateStore<K>,
    RateClock,
    governor::middleware::NoOpMiddleware<std::time::Duration>,
>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = crate::time::now();
        let clock = ManualClock::at(start);
        assert_eq!(clock.now(), start);
        clock.advance(Duration::minutes(5));
        assert_eq!(clock.now(), start + Duration::minutes(5));
        assert_eq!(clock.elapsed(), std::time::Duration::from_secs(300));
        clock.set(start);
        assert_eq!(clock.now(), start);
        assert_eq!(clock.elapsed(), std::time::Duration::ZERO);
    }

    #[test]
    fn a_rate_limit_on_a_manual_clock_refills_only_when_the_clock_moves() {
        let clock = Arc::new(ManualClock::at(crate::time::now()));
        let quota = governor::Quota::per_second(std::num::NonZeroU32::new(2).unwrap());
        let limiter = DirectLimiter::direct_with_clock(quota, RateClock(clock.clone()));
        assert!(limiter.check().is_ok() && limiter.check().is_ok());
        // However long the test takes, the burst is spent until the clock moves.
        assert!(limiter.check().is_err());
        clock.advance(Duration::milliseconds(499));
        assert!(limiter.check().is_err());
        clock.advance(Duration::milliseconds(1));
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
    }
}
