//! How a dispatcher runs ([`Config`]) and the provider account of each channel
//! ([`Adapters`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tidings_channel_adapters::ChannelAdapter;
use tidings_core::clock::{Clock, SystemClock};
use tidings_core::Channel;

use crate::{BreakerPolicy, RetryPolicy};

/// How a dispatcher runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// This process's name on its leases, unique among the dispatchers.
    pub owner: String,
    /// Partitions per lane (as configured for the log).
    pub partitions: u32,
    /// A lease lasts this long unless renewed; a dead dispatcher's partitions move after it.
    pub lease_ttl: Duration,
    /// Entries read (and in flight) per partition at a time.
    pub batch: u32,
    /// Sends in hand at once in this process: partitions are worked on side by side,
    /// `max_in_flight / batch` batches at a time (at least one). A batch whose calls have
    /// all been answered leaves its place to the next while it records their outcomes, so
    /// that the providers do not wait on the database. How many of a batch's sends are
    /// out at a provider at once is each provider's own limit (`concurrency`).
    pub max_in_flight: u32,
    /// Sends in flight at once to one provider (a push platform counts as its own): how
    /// the number adapts to the provider's answers, and its ceiling.
    pub concurrency: crate::ConcurrencyPolicy,
    /// Database connections the process has: batches read and write with at most half of
    /// them at once, so that the others stay free for the rest (leases, the API).
    pub connections: u32,
    /// While a more urgent lane has work, a lower lane with work still gets one batch in
    /// this many (1: strict priority).
    pub lower_lane_every: u32,
    /// How long to wait, when there is nothing to do, before looking again: for
    /// deliveries coming due, and for log writes the store could not announce (a new
    /// message wakes the dispatcher at once).
    pub idle_wait: Duration,
    pub retry: RetryPolicy,
    /// An attempt left unfinished this long (its dispatcher stopped mid-call) is taken up
    /// again as in doubt. Longer than any provider call may take.
    pub in_doubt_after: Duration,
    /// Seed for retry jitter.
    pub seed: u64,
    /// When a provider's circuit breaker opens, and for how long.
    pub breaker: BreakerPolicy,
    /// How long a guardian's later delivery on a channel waits behind an earlier one
    /// that is being retried, before it goes anyway.
    pub max_order_wait: Duration,
    /// Signs the acknowledgment and unsubscribe links put in SMS and email; none without
    /// a public address.
    pub links: Option<tidings_core::link::Links>,
    /// The SMS reply that acknowledges, offered in SMS asking for acknowledgment.
    pub sms_ack_keyword: Option<String>,
    /// Where "now" comes from: the wall clock, or a test's hand-moved clock.
    pub clock: Arc<dyn Clock>,
}

impl Config {
    /// Batches worked on side by side: as many as `max_in_flight` holds, at least one.
    pub fn batches_at_once(&self) -> usize {
        (self.max_in_flight / self.batch.max(1)).max(1) as usize
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            owner: format!(
                "dispatch-{}-{}",
                std::process::id(),
                &uuid::Uuid::now_v7().simple().to_string()[24..]
            ),
            partitions: tidings_core::log::DEFAULT_PARTITIONS,
            lease_ttl: Duration::from_secs(15),
            batch: 256,
            max_in_flight: 4096,
            concurrency: crate::ConcurrencyPolicy::default(),
            connections: tidings_core::store::ConnectOptions::default().max_connections,
            lower_lane_every: 8,
            idle_wait: Duration::from_millis(100),
            retry: RetryPolicy::default(),
            in_doubt_after: Duration::from_secs(120),
            seed: rand::random(),
            breaker: BreakerPolicy::default(),
            max_order_wait: Duration::from_secs(600),
            links: None,
            sms_ack_keyword: None,
            clock: Arc::new(SystemClock),
        }
    }
}

/// The provider account for each channel.
#[derive(Clone, Default)]
pub struct Adapters(pub(crate) HashMap<Channel, Arc<dyn ChannelAdapter>>);

impl Adapters {
    pub fn with(mut self, channel: Channel, adapter: Arc<dyn ChannelAdapter>) -> Self {
        self.0.insert(channel, adapter);
        self
    }

    /// Whether `channel` has a provider.
    pub fn has(&self, channel: Channel) -> bool {
        self.0.contains_key(&channel)
    }

    pub fn get(&self, channel: Channel) -> Option<&Arc<dyn ChannelAdapter>> {
        self.0.get(&channel)
    }
}
