//! Channel adapters: one module per provider (Twilio, Kannel, SMTP, APNs, FCM, Web Push), each
//! carrying the delivery's idempotency key the way that provider deduplicates, and
//! classifying every outcome. Adapters know nothing about the log or the store.
//!
//! The dispatcher sees every provider through [`ChannelAdapter`]: a batch of
//! [`Outgoing`] sends in, one [`SendOutcome`] per send out, in the same order.

pub mod apns;
pub mod fcm;
pub mod http;
pub mod jwt;
pub mod kannel;
pub mod mailgun;
pub mod push;
pub mod reports;
pub mod sendgrid;
pub mod smtp;
#[cfg(feature = "testing")]
pub mod testing;
pub mod twilio;
pub mod webpush;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use tidings_core::words::fill;
use tidings_core::{Channel, DeliveryId, MessageId, MessageKind};

/// Implements [`ChannelAdapter`] for an adapter that sends a batch as its sends one by
/// one (its own `send_one`), at most `concurrency` at a time. `|a| expr` names the adapter
/// in the expressions for its rate limit and concurrency.
macro_rules! one_by_one {
    ($adapter:ty, $provider:literal,
     max_per_second: |$a:ident| $max:expr,
     concurrency: |$c:ident| $concurrency:expr $(,)?) => {
        #[async_trait::async_trait]
        impl $crate::ChannelAdapter for $adapter {
            fn provider(&self) -> &str {
                $provider
            }

            fn max_per_second(&self) -> Option<std::num::NonZeroU32> {
                let $a = self;
                $max
            }

            async fn send(&self, batch: &[$crate::Outgoing]) -> Vec<$crate::SendOutcome> {
                let $c = self;
                use tracing::Instrument as _;
                $crate::each(batch.len(), $concurrency, |i| {
                    self.send_one(&batch[i]).instrument(batch[i].span.clone())
                })
                .await
            }
        }
    };
}
pub(crate) use one_by_one;

/// One send, as a provider needs it.
#[derive(Debug, Clone, Serialize)]
pub struct Outgoing {
    pub delivery_id: DeliveryId,
    pub message_id: MessageId,
    /// The same on every attempt of the delivery: the provider deduplicates on it.
    pub idempotency_key: String,
    pub channel: Channel,
    /// E.164 number, email address or device token.
    pub address: String,
    pub kind: MessageKind,
    pub subject: String,
    pub body: String,
    /// The guardian's language, for the words Tidings adds around the body.
    pub language: String,
    /// How the guardian can acknowledge, when the message asks them to.
    pub ack: Option<AckInvite>,
    /// The one-click unsubscribe link of an email (RFC 8058).
    pub unsubscribe_url: Option<String>,
    /// Ask the provider for delivery reports (status callbacks, DLRs). Off for sends that
    /// are no delivery, such as the guardian app's sign-in codes: a report would name
    /// nothing.
    pub delivery_reports: bool,
    /// The span the call is made in: the dispatcher's span of this send, carrying its
    /// delivery and message ids (none for a send that is no delivery).
    #[serde(skip)]
    pub span: tracing::Span,
}

/// The ways a send offers its guardian to acknowledge.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AckInvite {
    /// The signed `/a/{token}` page, when the service has a public address.
    pub url: Option<String>,
    /// The SMS reply that acknowledges (`sms_ack_keyword`).
    pub reply_keyword: Option<String>,
}

impl Outgoing {
    /// An SMS: the body, then how to acknowledge, one line each, in the guardian's
    /// language.
    pub fn sms_text(&self) -> String {
        let mut text = self.body.clone();
        let Some(ack) = &self.ack else {
            return text;
        };
        let words = tidings_core::words::words(&self.language);
        if let Some(keyword) = &ack.reply_keyword {
            text.push('\n');
            text.push_str(&fill(words.reply_to_acknowledge, &[("keyword", keyword)]));
        }
        if let Some(url) = &ack.url {
            text.push('\n');
            text.push_str(&fill(words.acknowledge_link, &[("url", url)]));
        }
        text
    }
}

/// How one send ended, as far as the caller can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Accepted; `provider_ref` is what the provider's callbacks will name it by.
    Sent { provider_ref: String },
    /// Not sent, and trying again may work (timeout before sending, 5xx, 429, 4xx SMTP).
    /// `retry_after` is the provider's own wish, when it said one.
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Not sent: the provider asks to slow down (429, 503, a quota). Retried like
    /// [`SendOutcome::Transient`]; the dispatcher also keeps fewer sends in flight to it.
    Throttled {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Not sent, and it never will be (a message the provider refuses, an account that
    /// may not send there).
    Permanent { error: String },
    /// Not sent, and it never will be to this address: the contact point is retired
    /// (invalid number, unregistered device, hard bounce), or the guardian has opted out
    /// at the carrier (STOP).
    Unreachable { error: String, fault: AddressFault },
    /// The request may or may not have reached the provider (connection lost after the
    /// request went out, timeout waiting for the answer).
    InDoubt { error: String },
}

/// Why an address cannot be used again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFault {
    /// It does not exist or cannot receive this channel (invalid number, not a mobile,
    /// no such mailbox, a malformed device token).
    Invalid,
    /// It existed and is gone (an app uninstalled: unregistered device token).
    Gone,
    /// The guardian replied STOP at the carrier: nothing more may be sent until START.
    OptedOut,
}

impl AddressFault {
    /// The reason recorded on the contact point (or the delivery, for an opt-out).
    pub fn as_str(self) -> &'static str {
        match self {
            AddressFault::Invalid => "invalid",
            AddressFault::Gone => "unregistered",
            AddressFault::OptedOut => "opted_out",
        }
    }
}

impl SendOutcome {
    pub fn transient(error: impl Into<String>) -> Self {
        SendOutcome::Transient {
            error: error.into(),
            retry_after: None,
        }
    }
}

/// Runs `send(0)` … `send(count - 1)`, started in order and `concurrency` at a time
/// (one ends, the next starts, whichever it was: a slow answer holds only its own slot);
/// the outcomes in order. By index: a closure taking `&Outgoing` is not general enough for
/// the `Send` future async_trait needs.
pub(crate) async fn each<F, Fut>(count: usize, concurrency: usize, send: F) -> Vec<SendOutcome>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = SendOutcome>,
{
    use futures_util::StreamExt as _;
    let mut answered: Vec<(usize, SendOutcome)> = futures_util::stream::iter(0..count)
        .map(|i| {
            let sending = send(i);
            async move { (i, sending.await) }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    answered.sort_unstable_by_key(|(i, _)| *i);
    answered.into_iter().map(|(_, outcome)| outcome).collect()
}

/// A provider account able to send on one channel.
#[async_trait]
pub trait ChannelAdapter: Send + Sync {
    /// The provider's name as recorded on deliveries and attempts ("twilio", "smtp", …).
    fn provider(&self) -> &str;

    /// The provider a send to `address` goes to: the same as [`provider`](Self::provider)
    /// unless the adapter fronts several (push: APNs or FCM by the device's platform).
    /// The dispatcher keeps a circuit breaker per provider, so one that fails pauses only
    /// its own sends.
    fn provider_of(&self, address: &str) -> &str {
        let _ = address;
        self.provider()
    }

    /// The account's sending rate limit, if it has one (a Twilio long code sends 1 SMS a
    /// second, a short code 100): the dispatcher never calls faster.
    fn max_per_second(&self) -> Option<std::num::NonZeroU32> {
        None
    }

    /// Each provider this adapter sends to that has a rate limit, named as
    /// [`ChannelAdapter::provider_of`] names it, with its rate: the dispatchers take
    /// sends off the log no faster, sharing each among them. By default the one
    /// account's [`ChannelAdapter::max_per_second`].
    fn rate_limits(&self) -> Vec<(String, std::num::NonZeroU32)> {
        self.max_per_second()
            .map(|rate| (self.provider().to_owned(), rate))
            .into_iter()
            .collect()
    }

    /// Sends each of `batch`; returns exactly one outcome per send, in order. Never
    /// panics on what a provider answers: garbage is classified, not trusted.
    async fn send(&self, batch: &[Outgoing]) -> Vec<SendOutcome>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A send that is slow to answer keeps only its own slot: the ones after it go on
    /// (here the first answers only once every other has, which never happens if the
    /// finished ones wait behind it for their turn), and the outcomes come back in order.
    #[tokio::test]
    async fn a_slow_answer_holds_only_its_own_slot_and_outcomes_keep_their_order() {
        let others_done = AtomicUsize::new(0);
        let wake = tokio::sync::Notify::new();
        let count = 20;
        let sending = each(count, 4, |i| {
            let (others_done, wake) = (&others_done, &wake);
            async move {
                if i == 0 {
                    while others_done.load(Ordering::SeqCst) < count - 1 {
                        let woken = wake.notified();
                        if others_done.load(Ordering::SeqCst) >= count - 1 {
                            break;
                        }
                        woken.await;
                    }
                } else {
                    others_done.fetch_add(1, Ordering::SeqCst);
                    wake.notify_waiters();
                }
                SendOutcome::Sent {
                    provider_ref: format!("ref-{i}"),
                }
            }
        });
        // A hang guard only: a correct run ends as soon as the sends do.
        let outcomes = tokio::time::timeout(Duration::from_secs(60), sending)
            .await
            .expect("the sends behind the slow one never started");
        let refs: Vec<String> = outcomes
            .into_iter()
            .map(|o| match o {
                SendOutcome::Sent { provider_ref } => provider_ref,
                other => panic!("{other:?}"),
            })
            .collect();
        let expected: Vec<String> = (0..count).map(|i| format!("ref-{i}")).collect();
        assert_eq!(refs, expected);
    }
}
