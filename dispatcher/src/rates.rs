//! Rates: each provider account's rate, shared evenly among the live dispatchers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tidings_core::clock::{Clock, DirectLimiter, RateClock};

/// A burst is this fraction of a second's share (see [`RateShares::share_among`]).
const BURST_PARTS: u64 = 10;

/// Provider accounts' rate limits, divided equally among the live dispatchers (each
/// renews its share with its leases), so that together they stay within the account's.
pub(crate) struct RateShares {
    rates: HashMap<String, std::num::NonZeroU32>,
    live: u64,
    limiters: HashMap<String, DirectLimiter>,
    /// What the limiters measure time by: the dispatcher's clock.
    clock: Arc<dyn Clock>,
}

impl RateShares {
    pub(crate) fn new(rates: HashMap<String, std::num::NonZeroU32>, clock: Arc<dyn Clock>) -> Self {
        let mut shares = Self {
            rates,
            live: 0,
            limiters: HashMap::new(),
            clock,
        };
        shares.share_among(1);
        shares
    }

    /// One share of each rate for each of `live` dispatchers: a cell every `live / rate`
    /// seconds, bursts of a tenth of a second's share (at least one). Sends are let
    /// through when they are read off the log and reach the provider a little later, some
    /// batches later than others (a slower database write between); a small burst keeps
    /// sends bunched that way within the provider's own allowance, which is commonly a
    /// second's worth.
    pub(crate) fn share_among(&mut self, live: u64) {
        let live = live.max(1);
        if live == self.live {
            return;
        }
        self.live = live;
        self.limiters = self
            .rates
            .iter()
            .map(|(provider, rate)| {
                let period = Duration::from_secs_f64(live as f64 / f64::from(rate.get()));
                let burst = u32::try_from(u64::from(rate.get()) / live / BURST_PARTS)
                    .ok()
                    .and_then(std::num::NonZeroU32::new)
                    .unwrap_or(std::num::NonZeroU32::MIN);
                let quota = governor::Quota::with_period(period)
                    .unwrap_or(governor::Quota::per_second(*rate))
                    .allow_burst(burst);
                let limiter =
                    DirectLimiter::direct_with_clock(quota, RateClock(self.clock.clone()));
                (provider.clone(), limiter)
            })
            .collect();
    }

    /// The whole rate of `provider` (every dispatcher's share together), if it has one.
    pub(crate) fn rate(&self, provider: &str) -> Option<std::num::NonZeroU32> {
        self.rates.get(provider).copied()
    }

    pub(crate) fn may_send(&self, provider: &str) -> bool {
        let may = self
            .limiters
            .get(provider)
            .is_none_or(|limiter| limiter.check().is_ok());
        if !may {
            metrics::counter!(tidings_core::telemetry::RATE_LIMIT_WAITS, "provider" => provider.to_owned())
                .increment(1);
        }
        may
    }
}
