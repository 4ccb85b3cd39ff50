//! Sends in flight per provider, sized by what the provider allows rather than by a fixed
//! number: additive increase while its answers come back about as fast as its fastest,
//! multiplicative decrease when it asks to slow down (429, 503, a quota), stops answering
//! in time, or answers markedly slower — bounded by the configured ceiling and, when the
//! account has a rate, by what that rate can use at the latency seen.
//!
//! The limit moves once per window of answers as many as the limit itself (about one
//! round trip); [`Limit::adjust`] is the whole decision, a pure function of the window.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How a provider's limit moves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConcurrencyPolicy {
    /// Sends in flight to a provider before anything is known of it.
    pub initial: u32,
    /// The limit never goes below this.
    pub min: u32,
    /// Nor above this (`provider_in_flight`).
    pub max: u32,
    /// Answers this many times slower than the fastest seen mean the provider (or the
    /// way to it) is queueing: the limit comes down a little.
    pub slow_factor: f64,
    /// …and only when they are also at least this much slower, in seconds: a provider
    /// answering in microseconds (a gateway on the same machine) varies by multiples
    /// with the scheduler alone, and was cut to one send in flight for it.
    pub slow_margin: f64,
    /// The cut when answers slow down.
    pub slow_cut: f64,
    /// The cut when the provider asks to slow down (it has a rate: a little less will
    /// do).
    pub throttle_cut: f64,
    /// The cut when it stops answering in time (it may be drowning).
    pub timeout_cut: f64,
    /// Share of a window's sends that may go unanswered in time before that counts as the
    /// provider struggling (a few lost answers are the provider's faults, not load).
    pub timeout_share: f64,
}

impl Default for ConcurrencyPolicy {
    fn default() -> Self {
        Self {
            initial: 16,
            min: 1,
            max: 2048,
            slow_factor: 2.0,
            slow_margin: 0.005,
            slow_cut: 0.9,
            throttle_cut: 0.8,
            timeout_cut: 0.5,
            timeout_share: 0.1,
        }
    }
}

/// How one send ended, as the limit sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// The provider answered (whatever it said about the send itself).
    Answered,
    /// The provider asked to slow down.
    Throttled,
    /// No answer in time.
    NoAnswer,
}

impl Signal {
    pub fn of(outcome: &tidings_channel_adapters::SendOutcome) -> Self {
        use tidings_channel_adapters::SendOutcome;
        match outcome {
            SendOutcome::Throttled { .. } => Signal::Throttled,
            SendOutcome::InDoubt { .. } => Signal::NoAnswer,
            _ => Signal::Answered,
        }
    }
}

/// What a window of answers showed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    pub sends: u32,
    pub throttled: u32,
    pub no_answer: u32,
    /// Sum of the answered sends' latencies, in seconds.
    pub latency_sum: f64,
    /// The most sends in flight at once during the window.
    pub busiest: u32,
}

impl Window {
    pub fn add(&mut self, latency: Duration, signal: Signal) {
        self.sends += 1;
        match signal {
            Signal::Throttled => self.throttled += 1,
            Signal::NoAnswer => self.no_answer += 1,
            Signal::Answered => {}
        }
        if signal != Signal::NoAnswer {
            self.latency_sum += latency.as_secs_f64();
        }
    }

    /// Mean latency of the answered sends, in seconds.
    fn mean_latency(&self) -> Option<f64> {
        let answered = self.sends - self.no_answer;
        (answered > 0).then(|| self.latency_sum / f64::from(answered))
    }
}

/// A provider's limit: where it stands, whether it is still doubling (before the first
/// sign of trouble), and the fastest mean latency seen (slowly forgotten).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub limit: f64,
    pub slow_start: bool,
    pub baseline: Option<f64>,
}

impl Limit {
    pub fn new(policy: &ConcurrencyPolicy) -> Self {
        Self {
            limit: f64::from(policy.initial.clamp(policy.min.max(1), policy.max.max(1))),
            slow_start: true,
            baseline: None,
        }
    }

    /// Sends allowed in flight now.
    pub fn current(&self) -> u32 {
        self.limit.floor() as u32
    }

    /// The limit after a window: halved (timeout_cut) when the provider left too many
    /// sends unanswered, cut by a fifth (throttle_cut) when it asked to slow down, cut a
    /// tenth (slow_cut) when answers came
    /// markedly slower than the fastest, otherwise raised — doubled until the first
    /// trouble, one more after — if the window used at least half of it. Never below
    /// `min` nor above `max`, nor above twice what `rate` sends a second can keep busy at
    /// the window's latency. Whether it was cut for trouble (not only held by a bound).
    pub fn adjust(
        &mut self,
        window: &Window,
        policy: &ConcurrencyPolicy,
        rate: Option<NonZeroU32>,
    ) -> bool {
        let mean = window.mean_latency();
        if let Some(mean) = mean {
            // The fastest mean seen, drifting towards slower ones by a twentieth a window,
            // so that a provider that has become slower for good is the new normal.
            self.baseline = Some(match self.baseline {
                Some(b) if mean < b => mean,
                Some(b) => b + (mean - b) * 0.05,
                None => mean,
            });
        }
        let slow = matches!(
            (mean, self.baseline),
            (Some(m), Some(b)) if m > b * policy.slow_factor && m - b > policy.slow_margin
        );
        let unanswered =
            f64::from(window.no_answer) > f64::from(window.sends) * policy.timeout_share;
        let trouble = window.throttled > 0 || unanswered || slow;
        if unanswered {
            self.limit *= policy.timeout_cut;
            self.slow_start = false;
        } else if window.throttled > 0 {
            self.limit *= policy.throttle_cut;
            self.slow_start = false;
        } else if slow {
            self.limit *= policy.slow_cut;
            self.slow_start = false;
        } else if f64::from(window.busiest) * 2.0 >= self.limit {
            self.limit = if self.slow_start {
                self.limit * 2.0
            } else {
                self.limit + 1.0
            };
        }
        let min = f64::from(policy.min.max(1));
        let mut max = f64::from(policy.max.max(1));
        if let (Some(rate), Some(latency)) = (rate, mean) {
            max = max.min((f64::from(rate.get()) * latency * 2.0).ceil().max(min));
        }
        self.limit = self.limit.clamp(min, max.max(min));
        trouble
    }
}

/// The bound on one provider's sends in flight: a semaphore whose permits follow the
/// limit (given back as it grows; taken away as sends return when it shrinks).
pub(crate) struct Concurrency {
    provider: String,
    policy: ConcurrencyPolicy,
    rate: Option<NonZeroU32>,
    slots: Arc<tokio::sync::Semaphore>,
    state: Mutex<State>,
}

struct State {
    limit: Limit,
    /// When the limit was last cut: sends started before it were sent at the old limit
    /// and say nothing about the new one (one cut a round trip, as TCP does).
    cut_at: Option<Instant>,
    /// Permits to take away as sends return (the limit came down below those in hand).
    owed: u32,
    in_flight: u32,
    window: Window,
}

/// One send's place in flight; [`Slot::answered`] tells the limit how it went.
pub(crate) struct Slot {
    owner: Arc<Concurrency>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    started: Instant,
}

impl Concurrency {
    pub(crate) fn new(provider: &str, policy: ConcurrencyPolicy, rate: Option<NonZeroU32>) -> Self {
        let limit = Limit::new(&policy);
        let concurrency = Self {
            provider: provider.to_owned(),
            policy,
            rate,
            slots: Arc::new(tokio::sync::Semaphore::new(limit.current() as usize)),
            state: Mutex::new(State {
                limit,
                cut_at: None,
                owed: 0,
                in_flight: 0,
                window: Window::default(),
            }),
        };
        concurrency.publish(limit.current());
        concurrency
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a place in flight.
    pub(crate) async fn acquire(self: &Arc<Self>) -> Slot {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the provider's semaphore is never closed");
        let mut state = self.state();
        state.in_flight += 1;
        state.window.busiest = state.window.busiest.max(state.in_flight);
        Slot {
            owner: self.clone(),
            permit: Some(permit),
            started: Instant::now(),
        }
    }

    /// Sends allowed in flight now.
    #[cfg(test)]
    pub(crate) fn limit(&self) -> u32 {
        self.state().limit.current()
    }

    fn record(&self, started: Instant, signal: Signal) {
        let mut state = self.state();
        if state.cut_at.is_some_and(|cut| started < cut) {
            return;
        }
        state.window.add(started.elapsed(), signal);
        if state.window.sends < state.limit.current().max(1) {
            return;
        }
        let before = state.limit.current();
        let window = std::mem::take(&mut state.window);
        let trouble = state.limit.adjust(&window, &self.policy, self.rate);
        if trouble {
            state.cut_at = Some(Instant::now());
        }
        state.window.busiest = state.in_flight;
        let after = state.limit.current();
        if after > before {
            let grow = after - before;
            let repaid = grow.min(state.owed);
            state.owed -= repaid;
            self.slots.add_permits((grow - repaid) as usize);
        } else if after < before {
            let shrink = before - after;
            let taken = self.slots.forget_permits(shrink as usize) as u32;
            state.owed += shrink - taken;
        }
        if after != before {
            if trouble {
                tracing::info!(provider = %self.provider, limit = after, "provider is slower or asks to slow down: fewer sends in flight");
            }
            self.publish(after);
        }
    }

    fn publish(&self, limit: u32) {
        metrics::gauge!(tidings_core::telemetry::PROVIDER_CONCURRENCY, "provider" => self.provider.clone())
            .set(f64::from(limit));
    }
}

impl Slot {
    /// The send ended this way: counted in the provider's window.
    pub(crate) fn answered(self, signal: Signal) {
        self.owner.record(self.started, signal);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.owner.state();
        state.in_flight = state.in_flight.saturating_sub(1);
        if state.owed > 0 {
            state.owed -= 1;
            if let Some(permit) = self.permit.take() {
                permit.forget();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn window(sends: u32, latency_ms: f64, throttled: u32, no_answer: u32, busiest: u32) -> Window {
        Window {
            sends,
            throttled,
            no_answer,
            latency_sum: latency_ms / 1000.0 * f64::from(sends - no_answer),
            busiest,
        }
    }

    #[test]
    fn the_limit_doubles_until_trouble_then_grows_by_one() {
        let policy = ConcurrencyPolicy::default();
        let mut limit = Limit::new(&policy);
        assert_eq!(limit.current(), 16);
        for expected in [32, 64, 128] {
            let busy = limit.current();
            assert!(!limit.adjust(&window(busy, 200.0, 0, 0, busy), &policy, None));
            assert_eq!(limit.current(), expected);
        }
        assert!(limit.adjust(&window(128, 200.0, 3, 0, 128), &policy, None));
        assert_eq!(limit.current(), 102, "a 429 cuts a fifth");
        assert!(!limit.slow_start);
        assert!(!limit.adjust(&window(102, 200.0, 0, 0, 102), &policy, None));
        assert_eq!(limit.current(), 103, "then one more a window");
    }

    #[test]
    fn a_limit_not_used_does_not_grow() {
        let policy = ConcurrencyPolicy::default();
        let mut limit = Limit::new(&policy);
        let _ = limit.adjust(&window(16, 200.0, 0, 0, 7), &policy, None);
        assert_eq!(limit.current(), 16);
    }

    #[test]
    fn slower_answers_bring_it_down_a_little_and_a_few_timeouts_do_not() {
        let policy = ConcurrencyPolicy::default();
        let mut limit = Limit::new(&policy);
        let _ = limit.adjust(&window(16, 100.0, 0, 0, 16), &policy, None);
        assert_eq!(limit.current(), 32);
        let _ = limit.adjust(&window(32, 250.0, 0, 0, 32), &policy, None);
        assert_eq!(limit.current(), 28, "2.5 times the fastest: cut by a tenth");
        let _ = limit.adjust(&window(28, 100.0, 0, 1, 28), &policy, None);
        assert_eq!(
            limit.current(),
            29,
            "one timeout in 28 is the provider's fault"
        );
        let _ = limit.adjust(&window(29, 100.0, 0, 5, 29), &policy, None);
        assert_eq!(limit.current(), 14, "one in six unanswered: halved");
    }

    #[test]
    fn jitter_of_a_provider_answering_in_microseconds_is_not_slowness() {
        let policy = ConcurrencyPolicy::default();
        let mut limit = Limit::new(&policy);
        let _ = limit.adjust(&window(16, 0.01, 0, 0, 16), &policy, None);
        assert_eq!(limit.current(), 32);
        // Twenty times slower, yet a fifth of a millisecond: still growing.
        assert!(!limit.adjust(&window(32, 0.2, 0, 0, 32), &policy, None));
        assert_eq!(limit.current(), 64);
    }

    #[test]
    fn an_account_rate_bounds_what_is_worth_keeping_in_flight() {
        let policy = ConcurrencyPolicy::default();
        let mut limit = Limit::new(&policy);
        let rate = NonZeroU32::new(100);
        for _ in 0..10 {
            let busy = limit.current();
            let _ = limit.adjust(&window(busy, 200.0, 0, 0, busy), &policy, rate);
        }
        // 100 a second at 200 ms keeps 20 busy; twice that at most.
        assert_eq!(limit.current(), 40);
    }

    #[tokio::test]
    async fn permits_follow_the_limit_both_ways() {
        let policy = ConcurrencyPolicy {
            initial: 4,
            ..ConcurrencyPolicy::default()
        };
        let limit = Arc::new(Concurrency::new("p", policy, None));
        let mut slots = Vec::new();
        for _ in 0..4 {
            slots.push(limit.acquire().await);
        }
        assert_eq!(limit.slots.available_permits(), 0);
        for slot in slots.drain(..) {
            slot.answered(Signal::Answered);
        }
        assert_eq!(limit.limit(), 8, "a busy window doubles it");
        assert_eq!(limit.slots.available_permits(), 8);
        for _ in 0..8 {
            slots.push(limit.acquire().await);
        }
        // Half of them go unanswered, four more go out in their place, then the
        // rest answer: the window closes halved to 4 while the four new ones are out, so
        // no permit is left over until they return.
        let rest = slots.split_off(4);
        for slot in slots.drain(..) {
            slot.answered(Signal::NoAnswer);
        }
        let again: Vec<_> = futures_util::future::join_all((0..4).map(|_| limit.acquire())).await;
        for slot in rest {
            slot.answered(Signal::NoAnswer);
        }
        assert_eq!(limit.limit(), 4);
        assert_eq!(limit.slots.available_permits(), 0);
        drop(again);
        assert_eq!(limit.slots.available_permits(), 4);
    }

    #[tokio::test]
    async fn sends_started_before_a_cut_do_not_cut_it_again() {
        let policy = ConcurrencyPolicy {
            initial: 10,
            ..ConcurrencyPolicy::default()
        };
        let limit = Arc::new(Concurrency::new("p", policy, None));
        let mut first: Vec<_> =
            futures_util::future::join_all((0..10).map(|_| limit.acquire())).await;
        let rest = first.split_off(5);
        for slot in first {
            slot.answered(Signal::Throttled);
        }
        let older: Vec<_> = futures_util::future::join_all((0..5).map(|_| limit.acquire())).await;
        for slot in rest {
            slot.answered(Signal::Throttled);
        }
        assert_eq!(
            limit.limit(),
            8,
            "ten throttled answers: one cut of a fifth"
        );
        for slot in older {
            slot.answered(Signal::Throttled);
        }
        assert_eq!(limit.limit(), 8, "sent at the old limit: no second cut");
        let after: Vec<_> = futures_util::future::join_all((0..8).map(|_| limit.acquire())).await;
        for slot in after {
            slot.answered(Signal::Answered);
        }
        assert_eq!(limit.limit(), 9, "then one more a round trip");
    }

    proptest! {
        /// Whatever the windows, the limit stays within its bounds, a window with a
        /// throttled send never raises it, and a calm busy window never lowers it.
        #[test]
        fn the_limit_stays_within_bounds(
            windows in proptest::collection::vec((1u32..3000, 1.0f64..2000.0, 0u32..5, 0u32..50, 0u32..3000), 1..60),
            rate in proptest::option::of(1u32..20_000),
        ) {
            let policy = ConcurrencyPolicy::default();
            let rate = rate.and_then(NonZeroU32::new);
            let mut limit = Limit::new(&policy);
            for (sends, latency, throttled, no_answer, busiest) in windows {
                let no_answer = no_answer.min(sends - 1);
                let throttled = throttled.min(sends - no_answer);
                let w = window(sends, latency, throttled, no_answer, busiest);
                let before = limit.limit;
                let baseline = limit.baseline;
                let _ = limit.adjust(&w, &policy, rate);
                prop_assert!(limit.limit >= f64::from(policy.min) && limit.limit <= f64::from(policy.max));
                if throttled > 0 {
                    prop_assert!(limit.limit <= before);
                }
                let calm = throttled == 0 && no_answer == 0
                    && baseline.is_some_and(|b| latency / 1000.0 <= b)
                    && f64::from(busiest) * 2.0 >= before;
                if calm && rate.is_none() {
                    prop_assert!(limit.limit >= before.min(f64::from(policy.max)));
                }
            }
        }
    }
}
