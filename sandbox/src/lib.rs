//! The provider sandbox: stands in for Twilio, APNs, FCM, browsers' Web Push services
//! and email providers on loopback, sends their callbacks signed as they do, and injects
//! faults on demand, so that demos, staging and tests exercise every path without a
//! provider account. It also plays a district's OpenID Connect identity provider
//! ([`oidc`]), for single sign-on.
//!
//! This module is the in-process provider: a [`ChannelAdapter`] per channel that accepts
//! sends like a provider that does *not* deduplicate (so every duplicate is visible),
//! keeps what it accepted, and fails on a seeded schedule.

pub mod oidc;
pub mod server;
pub mod web_push;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tidings_channel_adapters::{ChannelAdapter, Outgoing, SendOutcome};
use tidings_core::clock::{Clock, DirectLimiter, RateClock, SystemClock};
use tidings_core::{Channel, DeliveryId};

/// How often each kind of failure happens, as a fraction of sends (0.0–1.0), and how
/// the provider behaves otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Refused before sending, worth retrying (a 5xx).
    pub transient: f64,
    /// Refused before sending with 429 Too Many Requests and `Retry-After: 1`.
    pub throttled: f64,
    /// Refused for good (invalid number, unregistered device).
    pub permanent: f64,
    /// Accepted, but the answer never arrives (a timeout after the provider took it).
    pub in_doubt: f64,
    /// Accepted, then reported undelivered by the status callback (Twilio error 30003).
    pub undelivered: f64,
    /// Status callbacks sent twice.
    pub callback_duplicate: f64,
    /// Status callbacks sent in the wrong order (delivered before sent).
    pub callback_reorder: f64,
    /// Status callbacks (the first of each send's) never sent.
    pub callback_drop: f64,
    /// Milliseconds every answer waits at least…
    pub latency_ms: u64,
    /// …plus up to this many more, drawn uniformly per send from the seeded schedule.
    pub latency_jitter_ms: u64,
    /// Seed of the schedule: the same seed and the same sequence of sends fail the same way.
    pub seed: u64,
}

/// What the sandbox does with one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Transient,
    Throttled,
    Permanent,
    /// Taken (and received), but never answered.
    InDoubt,
    Accepted,
}

/// One send the sandbox accepted.
#[derive(Debug, Clone, Serialize)]
pub struct Received {
    /// Which provider API took it ("sandbox" in process, "twilio", …).
    pub provider: String,
    /// The delivery, where the request names it.
    pub delivery_id: Option<DeliveryId>,
    pub idempotency_key: String,
    pub channel: Channel,
    pub address: String,
    pub body: String,
    pub provider_ref: String,
    /// When the sandbox took it.
    pub at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug)]
struct State {
    faults: Faults,
    rng: StdRng,
    received: Vec<Received>,
    sends: u64,
    /// Status reports whose callbacks have all been posted or dropped.
    reports_finished: u64,
    /// Requests refused (429) for going over the account's rate.
    over_rate: u64,
    /// Sends taken and never answered (the `in_doubt` fault).
    unanswered: u64,
}

/// The in-process provider; clones share what it received.
#[derive(Debug, Clone)]
pub struct InProcessProvider {
    state: Arc<Mutex<State>>,
    /// Every accepted send's idempotency key, a line each, written before the answer:
    /// what the provider received survives the sender being killed.
    journal: Option<Arc<Mutex<std::fs::File>>>,
    latency: Duration,
    name: &'static str,
    max_per_second: Option<std::num::NonZeroU32>,
    /// The account's rate as the HTTP sandbox enforces it: a request over it is refused
    /// with 429, as a provider does.
    account_rate: Option<Arc<DirectLimiter>>,
    /// When sends are taken ([`Received::at`]) and the account's rate is measured.
    clock: Arc<dyn Clock>,
}

impl Default for InProcessProvider {
    fn default() -> Self {
        Self::new(Faults::default())
    }
}

impl Faults {
    /// Why these faults make no sense, if they do not.
    pub fn problem(&self) -> Option<String> {
        let rates = [
            self.transient,
            self.throttled,
            self.permanent,
            self.in_doubt,
        ];
        let callbacks = [
            self.undelivered,
            self.callback_duplicate,
            self.callback_reorder,
            self.callback_drop,
        ];
        if rates
            .iter()
            .chain(&callbacks)
            .any(|r| !(0.0..=1.0).contains(r))
            || rates.iter().sum::<f64>() > 1.0
        {
            return Some("each rate must be between 0 and 1, and transient, throttled, permanent and in_doubt together at most 1".into());
        }
        if self.latency_ms.saturating_add(self.latency_jitter_ms) > 600_000 {
            return Some("latency_ms and latency_jitter_ms must add up to at most 600000".into());
        }
        None
    }
}

impl InProcessProvider {
    pub fn new(faults: Faults) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                faults,
                rng: StdRng::seed_from_u64(faults.seed),
                received: Vec::new(),
                sends: 0,
                reports_finished: 0,
                over_rate: 0,
                unanswered: 0,
            })),
            journal: None,
            latency: Duration::ZERO,
            name: "sandbox",
            max_per_second: None,
            account_rate: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// Takes the time of sends (and measures the account's rate, if set after this) by
    /// `clock` instead of the wall clock: a test moves it with its dispatcher's.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The time by the provider's clock.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.clock.now()
    }

    /// Appends each accepted send's idempotency key to the file at `path`.
    pub fn with_journal(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.journal = Some(Arc::new(Mutex::new(file)));
        Ok(self)
    }

    /// Declares a sending rate limit, as a provider account has.
    pub fn with_rate(mut self, per_second: std::num::NonZeroU32) -> Self {
        self.max_per_second = Some(per_second);
        self
    }

    /// Enforces an account rate on the HTTP sandbox's send endpoints: up to `per_second`
    /// requests a second, with bursts of one second's worth; more are refused with 429
    /// and counted ([`InProcessProvider::over_rate`]).
    pub fn with_account_rate(mut self, per_second: std::num::NonZeroU32) -> Self {
        let quota = governor::Quota::per_second(per_second);
        let limiter = DirectLimiter::direct_with_clock(quota, RateClock(self.clock.clone()));
        self.account_rate = Some(Arc::new(limiter));
        self
    }

    /// Whether a request now goes over the account rate (counted when it does).
    pub(crate) fn over_account_rate(&self) -> bool {
        let over = self
            .account_rate
            .as_ref()
            .is_some_and(|limiter| limiter.check().is_err());
        if over {
            let mut state = self.lock();
            state.over_rate += 1;
            state.sends += 1;
        }
        over
    }

    /// Sends taken and never answered so far (the `in_doubt` fault).
    pub fn unanswered(&self) -> u64 {
        self.lock().unanswered
    }

    /// Requests refused so far for going over the account rate.
    pub fn over_rate(&self) -> u64 {
        self.lock().over_rate
    }

    /// The provider name its adapters report ("sandbox" unless set), to stand in for
    /// several providers at once.
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Every send waits this long before it is answered.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Changes the faults from now on (the schedule restarts from their seed).
    pub fn set_faults(&self, faults: Faults) {
        let mut state = self.lock();
        state.faults = faults;
        state.rng = StdRng::seed_from_u64(faults.seed);
    }

    /// An adapter for `channel` that sends here.
    pub fn adapter(&self, channel: Channel) -> Arc<dyn ChannelAdapter> {
        Arc::new(SandboxAdapter {
            provider: self.clone(),
            channel,
        })
    }

    /// Everything accepted so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// How many sends were accepted so far (without copying them).
    pub fn received_count(&self) -> usize {
        self.lock().received.len()
    }

    /// Sends accepted more than once for the same idempotency key.
    pub fn duplicates(&self) -> usize {
        let state = self.lock();
        let mut per_key: HashMap<&str, usize> = HashMap::new();
        for r in &state.received {
            *per_key.entry(&r.idempotency_key).or_default() += 1;
        }
        per_key.values().map(|n| n - 1).sum()
    }

    /// Sends asked of the sandbox, accepted or not.
    pub fn sends(&self) -> u64 {
        self.lock().sends
    }

    /// Status reports (the callbacks of one accepted SMS) that are over: every callback
    /// the faults left in was posted, and the dropped ones will never come. A test waits
    /// for this instead of waiting for time to pass before saying nothing more arrives.
    pub fn reports_finished(&self) -> u64 {
        self.lock().reports_finished
    }

    pub(crate) fn report_finished(&self) {
        self.lock().reports_finished += 1;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind: keep going.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Decides the fate of the next send from the seeded schedule.
    pub fn roll(&self) -> Fate {
        let mut state = self.lock();
        state.sends += 1;
        let f = state.faults;
        let roll: f64 = state.rng.gen();
        let mut bound = 0.0;
        for (rate, fate) in [
            (f.transient, Fate::Transient),
            (f.throttled, Fate::Throttled),
            (f.permanent, Fate::Permanent),
            (f.in_doubt, Fate::InDoubt),
        ] {
            bound += rate;
            if roll < bound {
                if fate == Fate::InDoubt {
                    state.unanswered += 1;
                }
                return fate;
            }
        }
        Fate::Accepted
    }

    /// A fresh roll of the schedule against `rate` (for callback faults).
    pub fn chance(&self, rate: f64) -> bool {
        rate > 0.0 && self.lock().rng.gen::<f64>() < rate
    }

    /// How long the next answer waits: `latency_ms` plus a seeded draw of the jitter.
    pub fn latency(&self) -> Duration {
        let mut state = self.lock();
        let f = state.faults;
        let jitter = if f.latency_jitter_ms > 0 {
            state.rng.gen_range(0..=f.latency_jitter_ms)
        } else {
            0
        };
        Duration::from_millis(f.latency_ms + jitter)
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.lock().faults
    }

    /// Keeps `received` (journalled first, when there is a journal).
    pub fn record(&self, received: Received) {
        if let Some(journal) = &self.journal {
            use std::io::Write as _;
            let mut file = journal.lock().unwrap_or_else(|p| p.into_inner());
            // One write per line, so a process killed mid-send never leaves half a line
            // for the next one to append to. Best effort, like any provider's own
            // records: a full disk loses the line.
            let line = format!("{}\n", received.idempotency_key);
            let _ = file.write_all(line.as_bytes());
        }
        self.lock().received.push(received);
    }

    fn take(&self, send: &Outgoing) -> SendOutcome {
        let fate = self.roll();
        let accept = || {
            // Unique across restarts, as a provider's message ids are.
            let provider_ref = format!("SB{}", uuid::Uuid::now_v7().simple());
            self.record(Received {
                provider: self.name.to_owned(),
                delivery_id: Some(send.delivery_id),
                idempotency_key: send.idempotency_key.clone(),
                channel: send.channel,
                address: send.address.clone(),
                body: match send.channel {
                    Channel::Sms => send.sms_text(),
                    _ => send.body.clone(),
                },
                provider_ref: provider_ref.clone(),
                at: self.now(),
            });
            provider_ref
        };
        match fate {
            Fate::Transient => SendOutcome::transient("sandbox: 500 Internal Server Error"),
            Fate::Throttled => SendOutcome::Throttled {
                error: "sandbox: 429 Too Many Requests".into(),
                retry_after: Some(Duration::from_secs(1)),
            },
            Fate::Permanent => SendOutcome::Permanent {
                error: "sandbox: 400 invalid recipient".into(),
            },
            Fate::InDoubt => {
                accept();
                SendOutcome::InDoubt {
                    error: "sandbox: timed out waiting for the answer".into(),
                }
            }
            Fate::Accepted => SendOutcome::Sent {
                provider_ref: accept(),
            },
        }
    }
}

struct SandboxAdapter {
    provider: InProcessProvider,
    channel: Channel,
}

#[async_trait]
impl ChannelAdapter for SandboxAdapter {
    fn provider(&self) -> &str {
        self.provider.name
    }

    fn max_per_second(&self) -> Option<std::num::NonZeroU32> {
        self.provider.max_per_second
    }

    async fn send(&self, batch: &[Outgoing]) -> Vec<SendOutcome> {
        let latency = self.provider.latency.max(self.provider.latency());
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        batch
            .iter()
            .map(|send| {
                debug_assert_eq!(send.channel, self.channel);
                self.provider.take(send)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::{MessageId, MessageKind};

    fn send(n: usize) -> Outgoing {
        Outgoing {
            delivery_id: DeliveryId::new(),
            message_id: MessageId::new(),
            idempotency_key: format!("key-{n}"),
            channel: Channel::Sms,
            address: "+15555550100".into(),
            kind: MessageKind::General,
            subject: String::new(),
            body: "Hello".into(),
            language: "en".into(),
            ack: None,
            unsubscribe_url: None,
            delivery_reports: true,
            span: tracing::Span::none(),
        }
    }

    fn outcomes(faults: Faults) -> Vec<SendOutcome> {
        let provider = InProcessProvider::new(faults);
        (0..200).map(|n| provider.take(&send(n))).collect()
    }

    #[test]
    fn the_same_seed_fails_the_same_sends() {
        let faults = Faults {
            transient: 0.2,
            throttled: 0.1,
            permanent: 0.1,
            in_doubt: 0.1,
            seed: 7,
            ..Faults::default()
        };
        let kinds = |o: &[SendOutcome]| o.iter().map(std::mem::discriminant).collect::<Vec<_>>();
        assert_eq!(kinds(&outcomes(faults)), kinds(&outcomes(faults)));
        let other = kinds(&outcomes(Faults { seed: 8, ..faults }));
        assert_ne!(kinds(&outcomes(faults)), other);
    }

    #[test]
    fn in_doubt_sends_are_received_and_repeats_are_counted_as_duplicates() {
        let provider = InProcessProvider::new(Faults {
            in_doubt: 1.0,
            ..Faults::default()
        });
        let first = send(1);
        assert!(matches!(provider.take(&first), SendOutcome::InDoubt { .. }));
        provider.set_faults(Faults::default());
        assert!(matches!(provider.take(&first), SendOutcome::Sent { .. }));
        assert!(matches!(provider.take(&send(2)), SendOutcome::Sent { .. }));
        assert_eq!(provider.received().len(), 3);
        assert_eq!(provider.received_count(), 3);
        assert_eq!(provider.duplicates(), 1);
        assert_eq!(provider.sends(), 3);
    }

    #[test]
    fn latency_is_drawn_between_its_bounds_on_the_seeded_schedule() {
        let faults = Faults {
            latency_ms: 20,
            latency_jitter_ms: 30,
            seed: 4,
            ..Faults::default()
        };
        let draws = |f: Faults| {
            let provider = InProcessProvider::new(f);
            (0..200).map(|_| provider.latency()).collect::<Vec<_>>()
        };
        let first = draws(faults);
        assert!(first
            .iter()
            .all(|d| (Duration::from_millis(20)..=Duration::from_millis(50)).contains(d)));
        assert!(first.iter().any(|d| *d > Duration::from_millis(40)));
        assert!(first.iter().any(|d| *d < Duration::from_millis(30)));
        assert_eq!(first, draws(faults));
        assert_eq!(
            InProcessProvider::new(Faults::default()).latency(),
            Duration::ZERO
        );
    }

    #[test]
    fn refused_sends_are_not_received() {
        let provider = InProcessProvider::new(Faults {
            transient: 0.5,
            permanent: 0.5,
            ..Faults::default()
        });
        for n in 0..50 {
            assert!(!matches!(provider.take(&send(n)), SendOutcome::Sent { .. }));
        }
        assert!(provider.received().is_empty());
        assert_eq!(provider.received_count(), 0);
    }
}
