//! What a dispatcher has done since it started, counted as it happens (and recorded in
//! the process's metrics at the same moment).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// What a dispatcher has done since it started.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub retried: AtomicU64,
    pub failed: AtomicU64,
    /// Attempts that may have reached the provider without an answer (timeouts after
    /// sending, and unfinished attempts taken up after a crash): each may be a duplicate.
    pub in_doubt: AtomicU64,
    /// At-most-once deliveries given up because an attempt was in doubt.
    pub lost_in_doubt: AtomicU64,
    /// Writes refused because another dispatcher had taken the partition over.
    pub fenced: AtomicU64,
    /// Writes of sends' outcomes tried again after a passing database error (a dropped
    /// connection, a lost race): the sends are not repeated, their record waits.
    pub record_retried: AtomicU64,
    /// Deliveries held back without an attempt: behind a guardian's earlier delivery
    /// being retried or at the provider, or for a provider whose breaker is open.
    pub deferred: AtomicU64,
    /// Log entries that kept failing the dispatcher itself, set aside (FAILED when their
    /// delivery could be read) so that their partition goes on.
    pub quarantined: AtomicU64,
    /// Deliveries suppressed because the guardian had opted out at the carrier (STOP).
    pub opted_out: AtomicU64,
    /// Contact points taken out of use because a provider refused them for good.
    pub retired: AtomicU64,
    /// Standby deliveries not sent because the guardian's channel before them reached
    /// them (messages with fallback).
    pub standbys_skipped: AtomicU64,
    /// Looks that found nothing to do, after which the dispatcher waited for a write, a
    /// partition taken over, or `idle_wait`.
    pub idle_looks: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub sent: u64,
    pub retried: u64,
    pub failed: u64,
    pub in_doubt: u64,
    pub lost_in_doubt: u64,
    pub fenced: u64,
    pub record_retried: u64,
    pub deferred: u64,
    pub quarantined: u64,
    pub opted_out: u64,
    pub retired: u64,
    pub standbys_skipped: u64,
    pub idle_looks: u64,
}

impl Counters {
    pub fn totals(&self) -> Totals {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Totals {
            sent: get(&self.sent),
            retried: get(&self.retried),
            failed: get(&self.failed),
            in_doubt: get(&self.in_doubt),
            lost_in_doubt: get(&self.lost_in_doubt),
            fenced: get(&self.fenced),
            record_retried: get(&self.record_retried),
            deferred: get(&self.deferred),
            quarantined: get(&self.quarantined),
            opted_out: get(&self.opted_out),
            retired: get(&self.retired),
            standbys_skipped: get(&self.standbys_skipped),
            idle_looks: get(&self.idle_looks),
        }
    }

    /// Counts one `outcome` here and in the process's metrics (`tidings_dispatch_total`).
    pub(crate) fn add(counter: &AtomicU64, outcome: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(tidings_core::telemetry::DISPATCH, "outcome" => outcome).increment(1);
    }
}
