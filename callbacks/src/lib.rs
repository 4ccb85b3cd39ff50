//! Provider webhooks: verified, stored in the callback inbox before they are answered, then
//! applied to deliveries through the state machine by a worker that survives restarts.
//!
//! - `POST /callbacks/twilio/status`: Twilio status callbacks (`X-Twilio-Signature` over
//!   the public URL and the sorted form);
//! - `GET|POST /callbacks/kannel/dlr`: Kannel delivery reports (the secret in the URL);
//! - `POST /callbacks/email/sendgrid`, `POST /callbacks/email/mailgun`: email events
//!   (SendGrid's ECDSA-signed event webhook, Mailgun's HMAC).
//!
//! A verified event is kept under its provider's event id (a duplicate is recognised
//! there) and only then answered 2xx. Unsigned, mis-signed, malformed or unknown-reference
//! requests are answered 4xx with the reason and never applied; a bounded sample of them
//! is kept as `rejected` (see [`sampling`]), the rest only counted.
//!
//! A signature proves who sent a request, not that it is new nor what it is about, so
//! beyond it: a signed timestamp must be within [`CallbackConfig::max_age`] of now
//! (Mailgun, SendGrid); a Mailgun token is good for one event (its signature does not
//! cover the event); and an event must name a delivery on the provider's channel that
//! was handed to that provider. Each route reads at most what its provider sends
//! ([`BodyCaps`]); the worker prunes the inbox by age ([`Retention`]).

pub mod freshness;
pub mod inbound;
pub mod sampling;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{BytesRejection, FormRejection};
use axum::extract::{DefaultBodyLimit, OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde_json::{json, Value};
use subtle::ConstantTimeEq as _;
use tidings_channel_adapters::reports::{field, pairs_json, Report, Unreadable};
use tidings_channel_adapters::{kannel, mailgun, sendgrid, twilio};
use tidings_core::clock::{Clock, SystemClock};
use tidings_core::services::inbound::take_inbound_sms;
use tidings_core::services::provider_events::apply_provider_events;
use tidings_core::store::Store;
use tidings_core::{Channel, DeliveryId};

/// What the callbacks need to check each provider; a provider left unset is refused.
#[derive(Clone)]
pub struct CallbackConfig {
    /// This service's public base URL, as providers call it (signatures cover it).
    pub public_url: Option<String>,
    pub twilio_auth_token: Option<String>,
    pub kannel_dlr_secret: Option<String>,
    /// SendGrid's verification key (base64 SubjectPublicKeyInfo, from its console).
    pub sendgrid_public_key: Option<String>,
    pub mailgun_signing_key: Option<String>,
    /// The answer to HELP.
    pub help_text: String,
    /// Who the opt-out confirmations speak for.
    pub district_name: String,
    /// A text that acknowledges the guardian's latest message waiting for it ("1", "OK").
    pub ack_keyword: Option<String>,
    /// How far a signed webhook's timestamp may be from now, either way (Mailgun,
    /// SendGrid): a captured request is refused once this has passed.
    pub max_age: Duration,
    /// The adapters (as recorded on attempts) whose email the email webhooks report on:
    /// `smtp`, and `sandbox` when the in-process sandbox sends.
    pub email_adapters: Vec<String>,
    /// How long finished inbox events are kept.
    pub retention: Retention,
    /// How many refused requests are kept, and how much of each.
    pub refused_samples: sampling::SamplePolicy,
    /// The most each route reads of a request.
    pub body_caps: BodyCaps,
    /// Where "now" comes from: the wall clock, or a test's hand-moved clock.
    pub clock: Arc<dyn Clock>,
}

impl Default for CallbackConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            twilio_auth_token: None,
            kannel_dlr_secret: None,
            sendgrid_public_key: None,
            mailgun_signing_key: None,
            help_text: String::new(),
            district_name: String::new(),
            ack_keyword: None,
            max_age: DEFAULT_MAX_AGE,
            email_adapters: vec!["smtp".to_owned()],
            retention: Retention::default(),
            refused_samples: sampling::SamplePolicy::default(),
            body_caps: BodyCaps::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

/// Five minutes: what Stripe and Slack allow for the same check, well above the seconds a
/// provider takes to post, well below a captured request being of use.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// How long the inbox keeps what it no longer needs; pending events are always kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Applied and ignored events (the delivery's own events keep the audit trail).
    pub finished: Duration,
    /// The sample of refused requests.
    pub rejected: Duration,
    /// Rows of each kind one pruning round deletes at most.
    pub batch: u32,
    /// Time between pruning rounds (a full round is followed by another at once).
    pub every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            finished: Duration::from_secs(30 * 86_400),
            rejected: Duration::from_secs(7 * 86_400),
            batch: 1000,
            every: Duration::from_secs(60),
        }
    }
}

/// The most each route reads: what its provider really sends, with room to spare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyCaps {
    /// Twilio's form posts (status callbacks and inbound texts: a few KB at most, even a
    /// 1,600-character text percent-encoded with its media fields).
    pub twilio: usize,
    /// Kannel's reports and texts come in the query string; a body is not read.
    pub kannel_query: usize,
    /// SendGrid posts events in batches (of up to some thousands).
    pub sendgrid: usize,
    /// Mailgun posts one event per request.
    pub mailgun: usize,
}

impl Default for BodyCaps {
    fn default() -> Self {
        Self {
            twilio: 32 * 1024,
            kannel_query: 16 * 1024,
            sendgrid: 4 * 1024 * 1024,
            mailgun: 64 * 1024,
        }
    }
}

impl std::fmt::Debug for CallbackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackConfig")
            .field("public_url", &self.public_url)
            .field("twilio", &self.twilio_auth_token.is_some())
            .field("kannel", &self.kannel_dlr_secret.is_some())
            .field("sendgrid", &self.sendgrid_public_key.is_some())
            .field("mailgun", &self.mailgun_signing_key.is_some())
            .field("max_age", &self.max_age)
            .field("email_adapters", &self.email_adapters)
            .field("retention", &self.retention)
            .field("refused_samples", &self.refused_samples)
            .field("body_caps", &self.body_caps)
            .finish()
    }
}

/// What the callbacks have seen since start.
#[derive(Debug, Default)]
pub struct Counters {
    pub received: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub applied: AtomicU64,
    pub ignored: AtomicU64,
    /// Refused requests beyond the sample: counted in `rejected`, not kept.
    pub rejected_unkept: AtomicU64,
    /// Inbox rows and webhook tokens deleted by age.
    pub pruned: AtomicU64,
}

/// The callbacks of one process: the routes and the worker that applies what they keep.
#[derive(Clone)]
pub struct Callbacks {
    store: Arc<dyn Store>,
    config: Arc<CallbackConfig>,
    wake: Arc<tokio::sync::Notify>,
    pub counters: Arc<Counters>,
    keeper: tokio::sync::mpsc::Sender<Keep>,
    sampler: Arc<sampling::Sampler>,
}

/// Events of one request to keep, and where to say whether each was new.
type Keep = (
    Vec<tidings_core::store::InboxPut>,
    tokio::sync::oneshot::Sender<Result<Vec<bool>, String>>,
);

/// Keeps what concurrent requests bring in shared transactions (a group commit): each
/// request is answered only once its events are committed.
async fn keeper(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    mut queue: tokio::sync::mpsc::Receiver<Keep>,
) {
    const MOST: usize = 256;
    while let Some(first) = queue.recv().await {
        let mut requests = vec![first];
        let mut count = requests[0].0.len();
        while count < MOST {
            match queue.try_recv() {
                Ok(more) => {
                    count += more.0.len();
                    requests.push(more);
                }
                Err(_) => break,
            }
        }
        let events: Vec<_> = requests
            .iter()
            .flat_map(|(e, _)| e.iter().cloned())
            .collect();
        match store.inbox_put_many(&events, clock.now()).await {
            Ok(kept) => {
                let mut kept = kept.into_iter();
                for (events, answer) in requests {
                    let _ = answer.send(Ok(kept.by_ref().take(events.len()).collect()));
                }
            }
            Err(e) => {
                for (_, answer) in requests {
                    let _ = answer.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// Why a request is refused.
#[derive(Debug)]
pub struct Refusal {
    status: StatusCode,
    reason: String,
    /// The reason's class, as `tidings_callback_rejects_total` counts it.
    class: &'static str,
}

/// The events of one request.
type Kept = Vec<Report>;

pub(crate) fn refuse(status: StatusCode, reason: impl Into<String>) -> Refusal {
    let class = match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => "unverified",
        StatusCode::NOT_FOUND => "not_configured",
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::URI_TOO_LONG => "too_large",
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "malformed",
        _ => "other",
    };
    Refusal {
        status,
        reason: reason.into(),
        class,
    }
}

/// A verified request that cannot be read as the report it claims to be.
fn unreadable(why: Unreadable) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, why.0)
}

impl Callbacks {
    /// The time by the configured clock.
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.config.clock.now()
    }

    /// Must be called inside a Tokio runtime: it starts the task that keeps events.
    pub fn new(store: Arc<dyn Store>, config: CallbackConfig) -> Self {
        let (keeper_queue, queue) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(keeper(store.clone(), config.clock.clone(), queue));
        Self {
            store,
            wake: Arc::default(),
            counters: Arc::default(),
            keeper: keeper_queue,
            sampler: Arc::new(sampling::Sampler::new(
                config.refused_samples,
                config.clock.clone(),
            )),
            config: Arc::new(config),
        }
    }

    /// The webhook routes.
    /// The webhook routes, each reading at most its [`BodyCaps`] (more is answered 413
    /// before anything is kept).
    pub fn router(&self) -> Router {
        let caps = self.config.body_caps;
        let cap = DefaultBodyLimit::max;
        Router::new()
            .route(
                "/callbacks/twilio/status",
                post(twilio_status).layer(cap(caps.twilio)),
            )
            .route("/callbacks/kannel/dlr", get(kannel_dlr).post(kannel_dlr))
            .route(
                "/callbacks/twilio/inbound",
                post(twilio_inbound).layer(cap(caps.twilio)),
            )
            .route(
                "/callbacks/kannel/inbound",
                get(kannel_inbound).post(kannel_inbound),
            )
            .route(
                "/callbacks/email/sendgrid",
                post(sendgrid_events).layer(cap(caps.sendgrid)),
            )
            .route(
                "/callbacks/email/mailgun",
                post(mailgun_events).layer(cap(caps.mailgun)),
            )
            // Any other provider is refused; its body is never read.
            .route("/callbacks/email/{provider}", post(unknown_email_provider))
            .with_state(self.clone())
    }

    /// Keeps verified events and answers; a store failure is a 503 so the provider
    /// retries (nothing was kept).
    async fn keep(&self, provider: &str, events: Kept) -> Response {
        let mut puts = Vec::with_capacity(events.len());
        for Report {
            event_id, event, ..
        } in events
        {
            let actionable = event.is_actionable();
            let status = if actionable { "pending" } else { "ignored" };
            let Ok(payload) = serde_json::to_value(&event) else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            puts.push(tidings_core::store::InboxPut {
                provider: provider.to_owned(),
                event_id,
                payload,
                status,
                outcome: (status == "ignored").then(|| "nothing to apply".to_owned()),
            });
        }
        let (answer, kept) = tokio::sync::oneshot::channel();
        if self.keeper.send((puts, answer)).await.is_err() {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        match kept.await {
            Ok(Ok(kept)) => {
                for new in kept {
                    if new {
                        Counters::add(&self.counters.received, "received");
                    } else {
                        Counters::add(&self.counters.duplicates, "duplicates");
                        metrics::counter!(tidings_core::telemetry::DUPLICATES_SUPPRESSED, "kind" => "provider_event")
                            .increment(1);
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::error!(provider, error = %e, "could not keep a provider event: asking the provider to retry");
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            Err(_) => return StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
        self.wake.notify_one();
        StatusCode::NO_CONTENT.into_response()
    }

    /// Answers a refused request (never applied) with the reason, and keeps it (cut to a
    /// few KB) if the sample of its provider has room, else only counts it.
    async fn reject(&self, provider: &str, refusal: Refusal, raw: Value) -> Response {
        if refusal.status == StatusCode::SERVICE_UNAVAILABLE {
            // Our failure, not the request's: the provider retries.
            return (refusal.status, Json(json!({ "error": refusal.reason }))).into_response();
        }
        Counters::add(&self.counters.rejected, "rejected");
        metrics::counter!(
            tidings_core::telemetry::CALLBACK_REJECTS,
            "provider" => provider.to_owned(),
            "reason" => refusal.class,
        )
        .increment(1);
        if !self.sampler.admit(provider) {
            Counters::add(&self.counters.rejected_unkept, "rejected_unkept");
            tracing::debug!(provider, reason = %refusal.reason, "provider callback refused (not kept: sample full)");
            return (refusal.status, Json(json!({ "error": refusal.reason }))).into_response();
        }
        tracing::warn!(provider, reason = %refusal.reason, "provider callback refused");
        let payload = json!({ "reason": refusal.reason, "raw": self.sampler.trim(raw) });
        let id = format!("rejected:{}", uuid::Uuid::now_v7());
        if let Err(e) = self
            .store
            .inbox_put(
                provider,
                &id,
                &payload,
                "rejected",
                Some(&refusal.reason),
                self.now(),
            )
            .await
        {
            tracing::error!(provider, error = %e, "could not record a refused callback");
        }
        (refusal.status, Json(json!({ "error": refusal.reason }))).into_response()
    }

    /// A request whose body could not be read (over its route's cap: 413; not a form):
    /// refused before anything of it is kept.
    async fn unreadable(&self, provider: &str, status: StatusCode, why: String) -> Response {
        let reason = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!("the body is larger than {provider} sends ({why})")
        } else {
            why
        };
        self.reject(provider, refuse(status, reason), Value::Null)
            .await
    }

    /// Refuses events about deliveries the provider was never given: each must name an
    /// existing delivery on the provider's channel, handed to one of its adapters (for
    /// SMS, whose callback URL is signed by the provider or carries our secret, a
    /// delivery not attempted yet passes), with the provider's reference when known.
    async fn check_sent(&self, provider: &str, events: &[Report]) -> Result<(), Refusal> {
        let email = self.config.email_adapters.iter().map(String::as_str);
        let (channel, adapters, attempted): (Channel, Vec<&str>, bool) = match provider {
            "twilio" => (Channel::Sms, vec!["twilio"], false),
            "kannel" => (Channel::Sms, vec!["kannel"], false),
            _ => (Channel::Email, email.collect(), true),
        };
        let ids: Vec<DeliveryId> = events.iter().map(|e| e.event.delivery_id).collect();
        let found = self.store.sent_through(&ids).await.map_err(|e| {
            tracing::error!(provider, error = %e, "could not read deliveries: asking the provider to retry");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "try again later")
        })?;
        let found: std::collections::HashMap<DeliveryId, _> =
            found.into_iter().map(|s| (s.delivery_id, s)).collect();
        for incoming in events {
            let id = incoming.event.delivery_id;
            let not_ours = |why: &str| Refusal {
                class: "unknown_delivery",
                ..refuse(StatusCode::BAD_REQUEST, format!("delivery {id} {why}"))
            };
            let Some(sent) = found.get(&id) else {
                return Err(not_ours("is not one of ours"));
            };
            if sent.channel != channel {
                return Err(not_ours(&format!("is not an {channel} delivery")));
            }
            let handed = sent
                .providers
                .iter()
                .any(|p| adapters.contains(&p.as_str()));
            if (attempted || !sent.providers.is_empty()) && !handed {
                return Err(not_ours(&format!("was never sent through {provider}")));
            }
            if let (Some(ours), Some(theirs)) = (&sent.provider_ref, &incoming.reference) {
                let bare = |r: &str| {
                    r.trim()
                        .trim_start_matches('<')
                        .trim_end_matches('>')
                        .to_ascii_lowercase()
                };
                if bare(ours) != bare(theirs) {
                    return Err(not_ours(&format!("was sent as {ours}, not {theirs}")));
                }
            }
        }
        Ok(())
    }

    /// `verdict`'s events if they pass [`Callbacks::check_sent`].
    async fn checked(
        &self,
        provider: &str,
        verdict: Result<Kept, Refusal>,
    ) -> Result<Kept, Refusal> {
        let events = verdict?;
        self.check_sent(provider, &events).await?;
        Ok(events)
    }

    /// Remembers a webhook token with a digest of its event: a token seen with another
    /// event is a captured signature on forged content, refused; the same event again
    /// (the provider retrying) goes on to the inbox, which knows it as a duplicate.
    async fn claim_token(&self, provider: &str, token: &str, digest: &str) -> Result<(), Refusal> {
        use tidings_core::store::inbox::TokenClaim;
        match self
            .store
            .claim_webhook_token(provider, token, digest, self.now())
            .await
        {
            Ok(TokenClaim::New | TokenClaim::Repeat) => Ok(()),
            Ok(TokenClaim::Reused) => Err(refuse(
                StatusCode::FORBIDDEN,
                "replayed: the signature's token came before with another event",
            )),
            Err(e) => {
                tracing::error!(provider, error = %e, "could not remember a webhook token: asking the provider to retry");
                Err(refuse(StatusCode::SERVICE_UNAVAILABLE, "try again later"))
            }
        }
    }

    /// A Kannel request whose query string is longer than Kannel sends: refused (414).
    async fn query_over_cap(&self, uri: &axum::http::Uri) -> Option<Response> {
        let length = uri.query().map_or(0, str::len);
        let cap = self.config.body_caps.kannel_query;
        if length <= cap {
            return None;
        }
        let refusal = refuse(
            StatusCode::URI_TOO_LONG,
            format!("the query string ({length} bytes) is longer than Kannel sends ({cap})"),
        );
        Some(self.reject("kannel", refusal, Value::Null).await)
    }

    /// Deletes, in one bounded round, what the inbox keeps past its [`Retention`] (and
    /// webhook tokens whose timestamps can no longer pass); returns what it deleted.
    pub async fn prune_inbox(
        &self,
    ) -> Result<tidings_core::store::inbox::Pruned, tidings_core::store::StoreError> {
        let at = self.now();
        let ago =
            |d: Duration| at - chrono::Duration::from_std(d).unwrap_or(chrono::TimeDelta::MAX);
        let retention = self.config.retention;
        let pruned = self
            .store
            .prune_inbox(&tidings_core::store::inbox::InboxRetention {
                finished_before: ago(retention.finished),
                rejected_before: ago(retention.rejected),
                // A token is needed while its timestamp can pass: up to max_age ahead of
                // its arrival, then max_age old.
                tokens_before: ago(2 * self.config.max_age + Duration::from_secs(60)),
                limit: retention.batch,
            })
            .await?;
        Counters::add_many(
            &self.counters.pruned,
            "pruned",
            pruned.finished + pruned.rejected + pruned.tokens,
        );
        Ok(pruned)
    }

    /// Applies pending inbox events until there are none; returns how many it handled.
    /// A few hundred at a time, each round one transaction
    /// ([`apply_provider_events`]); an event whose delivery moved meanwhile is decided
    /// again in the next round.
    pub async fn apply_pending(&self) -> Result<usize, tidings_core::store::StoreError> {
        let mut handled = 0;
        loop {
            let round = apply_provider_events(&*self.store, self.now(), 500).await?;
            if round.read == 0 {
                return Ok(handled);
            }
            handled += round.applied + round.ignored;
            Counters::add_many(&self.counters.applied, "applied", round.applied as u64);
            Counters::add_many(&self.counters.ignored, "ignored", round.ignored as u64);
            // An event that changes nothing: its delivery is already past it (a late
            // or repeated report).
            metrics::counter!(tidings_core::telemetry::DUPLICATES_SUPPRESSED, "kind" => "stale_event")
                .increment(round.ignored as u64);
        }
    }

    /// Applies what arrives until `stop` turns true; wakes on each kept event, and every
    /// second in any case (events kept by another process, or before a restart).
    /// Between rounds it prunes the inbox every [`Retention::every`], at once again after
    /// a round that hit its bound.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut prune_at = tokio::time::Instant::now();
        loop {
            if let Err(e) = self.apply_pending().await {
                tracing::error!(error = %e, "applying provider events failed; trying again");
            }
            if tokio::time::Instant::now() >= prune_at {
                let every = self.config.retention.every;
                prune_at = tokio::time::Instant::now()
                    + match self.prune_inbox().await {
                        Ok(p) => {
                            let full = u64::from(self.config.retention.batch);
                            if p.finished >= full || p.rejected >= full || p.tokens >= full {
                                Duration::ZERO
                            } else {
                                every
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "pruning the callback inbox failed; trying again later");
                            every
                        }
                    };
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

impl Counters {
    /// Counts one `result` here and in the process's metrics (`tidings_callbacks_total`).
    fn add(counter: &AtomicU64, result: &'static str) {
        Self::add_many(counter, result, 1);
    }

    fn add_many(counter: &AtomicU64, result: &'static str, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(tidings_core::telemetry::CALLBACKS, "result" => result).increment(n);
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BTreeMap::from([
            ("received", get(&self.received)),
            ("duplicates", get(&self.duplicates)),
            ("rejected", get(&self.rejected)),
            ("applied", get(&self.applied)),
            ("ignored", get(&self.ignored)),
            ("rejected_unkept", get(&self.rejected_unkept)),
            ("pruned", get(&self.pruned)),
        ])
    }
}

/// What an inbound SMS did: the reply to send back, if any.
async fn take_inbound(
    cb: &Callbacks,
    provider: &str,
    message_id: String,
    from: &str,
    to: &str,
    body: &str,
    replies_to_stop: bool,
) -> Result<Option<String>, StatusCode> {
    let keyword = inbound::keyword(body);
    let is_ack = keyword.is_none()
        && cb
            .config
            .ack_keyword
            .as_deref()
            .is_some_and(|k| inbound::is_ack(body, k));
    // Kannel passes numbers without the `+` of E.164, as the SMSC gave them.
    let from =
        if !from.starts_with('+') && !from.is_empty() && from.bytes().all(|b| b.is_ascii_digit()) {
            format!("+{from}")
        } else {
            from.to_owned()
        };
    let sms = tidings_core::store::InboundSms {
        provider: provider.to_owned(),
        provider_message_id: message_id,
        from,
        to: to.to_owned(),
        body: body.to_owned(),
        keyword: keyword.or(is_ack.then_some(inbound::Keyword::Ack)),
    };
    let unavailable = |e: tidings_core::store::StoreError| {
        tracing::error!(provider, error = %e, "could not record an inbound SMS: asking the provider to retry");
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Taken, with the opt-out, resubscription or acknowledgment it asks for, in one
    // transaction before the provider is answered.
    let Some(taken) = take_inbound_sms(cb.store.as_ref(), &sms, cb.now())
        .await
        .map_err(unavailable)?
    else {
        // A repeat of a text already taken: it already did what it does.
        return Ok(None);
    };
    let name = &cb.config.district_name;
    if is_ack {
        for guardian in &taken.acknowledged {
            tracing::info!(guardian_id = %guardian, "acknowledged by SMS");
        }
        return Ok(Some(if taken.acknowledged.is_empty() {
            format!("{name}: no message is waiting for your acknowledgment.")
        } else {
            format!("{name}: thank you, your acknowledgment is recorded.")
        }));
    }
    for (_, guardian) in &taken.guardians {
        match keyword {
            Some(inbound::Keyword::Stop) => {
                tracing::info!(guardian_id = %guardian, "carrier STOP recorded");
            }
            Some(inbound::Keyword::Start) => {
                tracing::info!(guardian_id = %guardian, "carrier START recorded");
            }
            _ => {}
        }
    }
    Ok(match keyword {
        Some(inbound::Keyword::Help) => Some(cb.config.help_text.clone()),
        Some(inbound::Keyword::Stop) if replies_to_stop => Some(format!(
            "{name}: you will receive no more text messages. Reply START to receive them again."
        )),
        Some(inbound::Keyword::Start) if replies_to_stop => Some(format!(
            "{name}: you will receive text messages again. Reply STOP to stop."
        )),
        _ => None,
    })
}

/// A TwiML answer: Twilio sends `reply` back to the guardian.
fn twiml(reply: Option<String>) -> Response {
    let body = match reply {
        Some(text) => format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>{}</Message></Response>",
            xml_escape(&text)
        ),
        None => "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>".to_owned(),
    };
    ([("content-type", "application/xml")], body).into_response()
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

async fn twilio_inbound(
    State(cb): State<Callbacks>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) => return cb.unreadable("twilio", e.status(), e.body_text()).await,
    };
    let raw = pairs_json(&form);
    let verdict = (|| {
        verify_twilio(&cb, &uri, &headers, &form)?;
        let need = |name: &str| {
            field(&form, name)
                .map(str::to_owned)
                .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, format!("no {name}")))
        };
        Ok((
            need("MessageSid")?,
            need("From")?,
            need("To")?,
            need("Body")?,
        ))
    })();
    match verdict {
        // Twilio answers STOP and START itself (its own opt-out handling): only HELP and
        // nothing else gets our reply.
        Ok((sid, from, to, body)) => {
            match take_inbound(&cb, "twilio", sid, &from, &to, &body, false).await {
                Ok(reply) => twiml(reply),
                Err(status) => status.into_response(),
            }
        }
        Err(refusal) => cb.reject("twilio", refusal, raw).await,
    }
}

/// Kannel's sms-service `get-url`, e.g.
/// `{public_url}/callbacks/kannel/inbound?secret=…&id=%I&from=%p&to=%P&text=%a`. The
/// answer's body is what Kannel sends back (nothing, when empty and `omit-empty`).
async fn kannel_inbound(
    State(cb): State<Callbacks>,
    OriginalUri(uri): OriginalUri,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Some(refused) = cb.query_over_cap(&uri).await {
        return refused;
    }
    let raw = kannel::without_secret(&query);
    let verdict = (|| {
        verify_kannel(&cb, &query)?;
        let need = |name: &str| {
            field(&query, name)
                .map(str::to_owned)
                .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, format!("no {name}")))
        };
        Ok((need("id")?, need("from")?, need("to")?, need("text")?))
    })();
    match verdict {
        Ok((id, from, to, text)) => {
            match take_inbound(&cb, "kannel", id, &from, &to, &text, true).await {
                Ok(reply) => reply.unwrap_or_default().into_response(),
                Err(status) => status.into_response(),
            }
        }
        Err(refusal) => cb.reject("kannel", refusal, raw).await,
    }
}

/// A Twilio request's signature: HMAC-SHA1 with the auth token over the public URL the
/// request was made to (path and query as received) and the sorted form.
fn verify_twilio(
    cb: &Callbacks,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Result<(), Refusal> {
    let token = cb
        .config
        .twilio_auth_token
        .as_deref()
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "Twilio is not configured"))?;
    let base = cb.config.public_url.as_deref().ok_or_else(|| {
        refuse(
            StatusCode::NOT_FOUND,
            "public_url is not set: signatures cannot be checked",
        )
    })?;
    let given = headers
        .get("X-Twilio-Signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| refuse(StatusCode::FORBIDDEN, "missing X-Twilio-Signature"))?;
    let url = format!("{}{uri}", base.trim_end_matches('/'));
    if !same(&twilio::signature(token, &url, form), given) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "X-Twilio-Signature does not match",
        ));
    }
    Ok(())
}

/// A Kannel request's secret (the one in the URLs we gave it).
fn verify_kannel(cb: &Callbacks, query: &[(String, String)]) -> Result<(), Refusal> {
    let secret = cb
        .config
        .kannel_dlr_secret
        .as_deref()
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "Kannel is not configured"))?;
    let given = field(query, "secret").ok_or_else(|| refuse(StatusCode::FORBIDDEN, "no secret"))?;
    if !same(secret, given) {
        return Err(refuse(StatusCode::FORBIDDEN, "wrong secret"));
    }
    Ok(())
}

/// Secrets and signatures are compared in constant time.
fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

async fn twilio_status(
    State(cb): State<Callbacks>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(e) => return cb.unreadable("twilio", e.status(), e.body_text()).await,
    };
    let raw = pairs_json(&form);
    let verdict = (|| {
        verify_twilio(&cb, &uri, &headers, &form)?;
        twilio::status_callback(uri.query().unwrap_or_default(), &form).map_err(unreadable)
    })();
    match cb.checked("twilio", verdict).await {
        Ok(events) => cb.keep("twilio", events).await,
        Err(refusal) => cb.reject("twilio", refusal, raw).await,
    }
}

async fn kannel_dlr(
    State(cb): State<Callbacks>,
    OriginalUri(uri): OriginalUri,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    if let Some(refused) = cb.query_over_cap(&uri).await {
        return refused;
    }
    let raw = kannel::without_secret(&query);
    let verdict = (|| {
        verify_kannel(&cb, &query)?;
        kannel::delivery_report(&query).map_err(unreadable)
    })();
    match cb.checked("kannel", verdict).await {
        Ok(events) => cb.keep("kannel", events).await,
        Err(refusal) => cb.reject("kannel", refusal, raw).await,
    }
}

/// A refused email request's body as kept: its JSON, or the start of its text.
fn email_raw(body: &[u8]) -> Value {
    serde_json::from_slice::<Value>(body).unwrap_or_else(|_| {
        Value::String(String::from_utf8_lossy(&body[..body.len().min(4096)]).into_owned())
    })
}

async fn sendgrid_events(
    State(cb): State<Callbacks>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return cb.unreadable("sendgrid", e.status(), e.body_text()).await,
    };
    let verdict = sendgrid(&cb, &headers, &body);
    match cb.checked("sendgrid", verdict).await {
        Ok(events) => cb.keep("sendgrid", events).await,
        Err(refusal) => cb.reject("sendgrid", refusal, email_raw(&body)).await,
    }
}

async fn mailgun_events(
    State(cb): State<Callbacks>,
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return cb.unreadable("mailgun", e.status(), e.body_text()).await,
    };
    let verdict = match mailgun(&cb, &body) {
        Ok((events, token, digest)) => match cb.checked("mailgun", Ok(events)).await {
            Ok(events) => cb
                .claim_token("mailgun", &token, &digest)
                .await
                .map(|()| events),
            Err(refusal) => Err(refusal),
        },
        Err(refusal) => Err(refusal),
    };
    match verdict {
        Ok(events) => cb.keep("mailgun", events).await,
        Err(refusal) => cb.reject("mailgun", refusal, email_raw(&body)).await,
    }
}

/// Any other email provider: refused without reading the body, its refusals sampled
/// under one name (the path is the caller's choice, the sample's names are not).
async fn unknown_email_provider(
    State(cb): State<Callbacks>,
    Path(provider): Path<String>,
) -> Response {
    let shown: String = provider.chars().take(40).collect();
    cb.reject(
        "email",
        refuse(
            StatusCode::NOT_FOUND,
            format!("unknown email provider {shown:?}"),
        ),
        json!({ "provider": shown }),
    )
    .await
}

fn sendgrid(cb: &Callbacks, headers: &HeaderMap, body: &[u8]) -> Result<Kept, Refusal> {
    let key = cb
        .config
        .sendgrid_public_key
        .as_deref()
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "SendGrid is not configured"))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header(sendgrid::SIGNATURE_HEADER),
        header(sendgrid::TIMESTAMP_HEADER),
    ) else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "unsigned: no signature or timestamp header",
        ));
    };
    if !sendgrid::verifies(key, timestamp, body, signature) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the signature does not verify",
        ));
    }
    // The signature covers the timestamp and the body: within the window a replay is
    // byte for byte the request it copies, each event a duplicate by its sg_event_id;
    // after it, refused.
    freshness::check(timestamp, cb.now(), cb.config.max_age)
        .map_err(|e| refuse(StatusCode::FORBIDDEN, e.to_string()))?;
    sendgrid::events(body).map_err(unreadable)
}

/// A Mailgun request's event, with the signature's token and the digest of the event
/// (to remember them by). Its signature covers only the timestamp and the token.
fn mailgun(cb: &Callbacks, body: &[u8]) -> Result<(Kept, String, String), Refusal> {
    let key = cb
        .config
        .mailgun_signing_key
        .as_deref()
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "Mailgun is not configured"))?;
    let payload: Value = serde_json::from_slice(body)
        .map_err(|e| refuse(StatusCode::BAD_REQUEST, format!("not JSON: {e}")))?;
    let s = &payload["signature"];
    let (Some(timestamp), Some(token), Some(signature)) = (
        s["timestamp"].as_str(),
        s["token"].as_str(),
        s["signature"].as_str(),
    ) else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "unsigned: no signature object",
        ));
    };
    if !mailgun::verifies(key, timestamp, token, signature) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the signature does not verify",
        ));
    }
    freshness::check(timestamp, cb.now(), cb.config.max_age)
        .map_err(|e| refuse(StatusCode::FORBIDDEN, e.to_string()))?;
    let (event, digest) = mailgun::webhook_event(&payload).map_err(unreadable)?;
    Ok((vec![event], token.to_owned(), digest))
}
