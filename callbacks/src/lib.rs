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
//! requests are answered 4xx with the reason and kept as `rejected`, never applied.

pub mod inbound;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq as _;
use tidings_channel_adapters::{twilio, webhooks};
use tidings_core::delivery::{next, Actor, Decision, Transition};
use tidings_core::store::{CasOutcome, Store};
use tidings_core::time::now;
use tidings_core::{Channel, DeliveryEvent, DeliveryId};

/// What the callbacks need to check each provider; a provider left unset is refused.
#[derive(Clone, Default)]
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
}

impl std::fmt::Debug for CallbackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackConfig")
            .field("public_url", &self.public_url)
            .field("twilio", &self.twilio_auth_token.is_some())
            .field("kannel", &self.kannel_dlr_secret.is_some())
            .field("sendgrid", &self.sendgrid_public_key.is_some())
            .field("mailgun", &self.mailgun_signing_key.is_some())
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
}

/// The callbacks of one process: the routes and the worker that applies what they keep.
#[derive(Clone)]
pub struct Callbacks {
    store: Arc<dyn Store>,
    config: Arc<CallbackConfig>,
    wake: Arc<tokio::sync::Notify>,
    pub counters: Arc<Counters>,
    keeper: tokio::sync::mpsc::Sender<Keep>,
}

/// Events of one request to keep, and where to say whether each was new.
type Keep = (
    Vec<tidings_core::store::InboxPut>,
    tokio::sync::oneshot::Sender<Result<Vec<bool>, String>>,
);

/// Keeps what concurrent requests bring in shared transactions (a group commit): each
/// request is answered only once its events are committed.
async fn keeper(store: Arc<dyn Store>, mut queue: tokio::sync::mpsc::Receiver<Keep>) {
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
        match store.inbox_put_many(&events, now()).await {
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

/// One event as kept in the inbox: which delivery, what happened, and what else it means.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Normalized {
    pub delivery_id: DeliveryId,
    /// `None`: nothing to apply (a "queued" or "buffered" report), kept for the record.
    pub event: Option<DeliveryEvent>,
    pub detail: Option<String>,
    /// `bounced` (retire the address) or `complaint` (opt the guardian out of email).
    pub effect: Option<String>,
    /// The provider's own fields.
    pub raw: Value,
}

/// Why a request is refused.
struct Refusal {
    status: StatusCode,
    reason: String,
}

fn refuse(status: StatusCode, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

impl Callbacks {
    /// Must be called inside a Tokio runtime: it starts the task that keeps events.
    pub fn new(store: Arc<dyn Store>, config: CallbackConfig) -> Self {
        let (keeper_queue, queue) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(keeper(store.clone(), queue));
        Self {
            store,
            config: Arc::new(config),
            wake: Arc::default(),
            counters: Arc::default(),
            keeper: keeper_queue,
        }
    }

    /// The webhook routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/callbacks/twilio/status", post(twilio_status))
            .route("/callbacks/kannel/dlr", get(kannel_dlr).post(kannel_dlr))
            .route("/callbacks/twilio/inbound", post(twilio_inbound))
            .route(
                "/callbacks/kannel/inbound",
                get(kannel_inbound).post(kannel_inbound),
            )
            .route("/callbacks/email/{provider}", post(email_events))
            .with_state(self.clone())
    }

    /// Keeps verified events and answers; a store failure is a 503 so the provider
    /// retries (nothing was kept).
    async fn keep(&self, provider: &str, events: Vec<(String, Normalized)>) -> Response {
        let mut puts = Vec::with_capacity(events.len());
        for (event_id, event) in events {
            let actionable = event.event.is_some() || event.effect.is_some();
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
                    Counters::add(if new {
                        &self.counters.received
                    } else {
                        &self.counters.duplicates
                    });
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

    /// Records a refused request (never applied) and answers with the reason.
    async fn reject(&self, provider: &str, refusal: Refusal, raw: Value) -> Response {
        Counters::add(&self.counters.rejected);
        tracing::warn!(provider, reason = %refusal.reason, "provider callback refused");
        let payload = json!({ "reason": refusal.reason, "raw": raw });
        let id = format!("rejected:{}", uuid::Uuid::now_v7());
        if let Err(e) = self
            .store
            .inbox_put(
                provider,
                &id,
                &payload,
                "rejected",
                Some(&refusal.reason),
                now(),
            )
            .await
        {
            tracing::error!(provider, error = %e, "could not record a refused callback");
        }
        (refusal.status, Json(json!({ "error": refusal.reason }))).into_response()
    }

    /// Applies pending inbox events until there are none; returns how many it handled.
    /// A few hundred at a time: their deliveries read at once, decided in order in memory,
    /// and written in one transaction; an event whose delivery moved meanwhile is decided
    /// again in the next round.
    pub async fn apply_pending(&self) -> Result<usize, tidings_core::store::StoreError> {
        use std::collections::HashMap;
        use tidings_core::store::InboxApply;
        let mut handled = 0;
        loop {
            let items = self.store.inbox_pending(500).await?;
            if items.is_empty() {
                return Ok(handled);
            }
            let parsed: Vec<_> = items
                .into_iter()
                .map(|item| {
                    let event = serde_json::from_value::<Normalized>(item.payload.clone());
                    (item, event)
                })
                .collect();
            let mut ids: Vec<DeliveryId> = parsed
                .iter()
                .filter_map(|(_, e)| e.as_ref().ok().map(|e| e.delivery_id))
                .collect();
            ids.sort_unstable_by_key(|id| *id.as_uuid());
            ids.dedup();
            let mut current: HashMap<DeliveryId, tidings_core::delivery::Delivery> = self
                .store
                .deliveries_by_ids(&ids)
                .await?
                .into_iter()
                .map(|d| (d.id, d))
                .collect();
            let mut batch = Vec::with_capacity(parsed.len());
            for (item, event) in parsed {
                let (transition, status, outcome) = match event {
                    Err(e) => (None, "ignored", format!("unreadable inbox payload: {e}")),
                    Ok(event) => match current.get_mut(&event.delivery_id) {
                        None => (None, "ignored", "no such delivery".to_owned()),
                        Some(delivery) => {
                            if let Some(effect) = &event.effect {
                                self.side_effect(delivery, effect).await;
                            }
                            decide(&item.provider, &item.event_id, &event, delivery)
                        }
                    },
                };
                batch.push(InboxApply {
                    inbox_id: item.id,
                    transition,
                    status,
                    outcome,
                });
            }
            // In delivery id order (stable: a delivery's events keep theirs), the order in
            // which every writer of several deliveries locks them.
            batch.sort_by_key(|item| item.transition.as_ref().map(|t| *t.delivery_id.as_uuid()));
            let marked = self.store.apply_inbox_batch(&batch).await?;
            for (item, marked) in batch.iter().zip(&marked) {
                if *marked {
                    handled += 1;
                    Counters::add(if item.status == "applied" {
                        &self.counters.applied
                    } else {
                        &self.counters.ignored
                    });
                }
            }
        }
    }

    /// Applies one event to its delivery (what the worker does with each kept event):
    /// `applied` with the transition, or `ignored` with why.
    pub async fn apply_event(
        &self,
        provider: &str,
        event_id: &str,
        event: Normalized,
    ) -> Result<(&'static str, String), tidings_core::store::StoreError> {
        let Some(mut delivery) = self.store.delivery(event.delivery_id).await? else {
            return Ok(("ignored", "no such delivery".into()));
        };
        if let Some(effect) = &event.effect {
            self.side_effect(&delivery, effect).await;
        }
        // A compare-and-swap that lost a race re-reads and decides again.
        for _ in 0..5 {
            let (transition, status, outcome) = decide(provider, event_id, &event, &mut delivery);
            let Some(transition) = transition else {
                return Ok((status, outcome));
            };
            match self.store.transition(&transition).await? {
                CasOutcome::Applied(_) => return Ok((status, outcome)),
                _ => match self.store.delivery(event.delivery_id).await? {
                    Some(now) => delivery = now,
                    None => return Ok(("ignored", "no such delivery".into())),
                },
            }
        }
        Ok(("ignored", "kept losing the race for the delivery".into()))
    }

    /// What a bounce or a complaint means beyond the delivery.
    async fn side_effect(&self, delivery: &tidings_core::delivery::Delivery, effect: &str) {
        let done = match (effect, delivery.address.as_deref()) {
            ("bounced", Some(address)) => self
                .store
                .retire_address(
                    delivery.guardian_id,
                    delivery.channel,
                    address,
                    "bounced",
                    now(),
                )
                .await
                .map(|_| ()),
            ("complaint", _) => self
                .store
                .add_opt_out(
                    delivery.district_id,
                    delivery.guardian_id,
                    Channel::Email,
                    "complaint",
                    now(),
                )
                .await
                .map(|_| ()),
            _ => Ok(()),
        };
        if let Err(e) = done {
            tracing::warn!(delivery_id = %delivery.id, error = %e, "could not record a bounce or complaint");
        }
    }

    /// Applies what arrives until `stop` turns true; wakes on each kept event, and every
    /// second in any case (events kept by another process, or before a restart).
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.apply_pending().await {
                tracing::error!(error = %e, "applying provider events failed; trying again");
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
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BTreeMap::from([
            ("received", get(&self.received)),
            ("duplicates", get(&self.duplicates)),
            ("rejected", get(&self.rejected)),
            ("applied", get(&self.applied)),
            ("ignored", get(&self.ignored)),
        ])
    }
}

/// What one event does to `delivery` as last seen (updated in place when it moves it):
/// the swap to make, and the inbox mark.
fn decide(
    provider: &str,
    event_id: &str,
    event: &Normalized,
    delivery: &mut tidings_core::delivery::Delivery,
) -> (Option<Transition>, &'static str, String) {
    let Some(what) = event.event else {
        return match &event.effect {
            Some(effect) => (None, "applied", format!("{effect} recorded")),
            None => (None, "ignored", "nothing to apply".into()),
        };
    };
    match next(delivery.state, what) {
        Decision::Ignore(why) => (None, "ignored", format!("{why:?} in {}", delivery.state)),
        Decision::Move(to) => {
            let transition = Transition {
                delivery_id: delivery.id,
                from: delivery.state,
                seen_version: delivery.version,
                to,
                actor: Actor::provider(provider, event_id),
                detail: event.detail.clone(),
                at: now(),
            };
            let outcome = format!("{} -> {to}", delivery.state);
            delivery.state = to;
            delivery.version += 1;
            (Some(transition), "applied", outcome)
        }
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
        keyword: keyword
            .map(inbound::Keyword::as_str)
            .or(is_ack.then_some("ack")),
    };
    let unavailable = |e: tidings_core::store::StoreError| {
        tracing::error!(provider, error = %e, "could not record an inbound SMS: asking the provider to retry");
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Recorded (and its opt-out or resubscription made) before the provider is answered.
    let Some(guardians) = cb
        .store
        .record_inbound(&sms, now())
        .await
        .map_err(unavailable)?
    else {
        // A repeat of a text already taken: it already did what it does.
        return Ok(None);
    };
    let name = &cb.config.district_name;
    if is_ack {
        let mut acknowledged = 0;
        for (_, guardian) in &guardians {
            let Some(recipient) = cb
                .store
                .open_ack(*guardian, now())
                .await
                .map_err(unavailable)?
            else {
                continue;
            };
            let actor =
                tidings_core::delivery::Actor::guardian(format!("sms:{}", sms.provider_message_id));
            let outcome = cb
                .store
                .acknowledge(recipient, Channel::Sms, &actor, now())
                .await
                .map_err(unavailable)?;
            if matches!(outcome, tidings_core::store::AckOutcome::Acked { .. }) {
                acknowledged += 1;
                tracing::info!(guardian_id = %guardian, "acknowledged by SMS");
            }
        }
        return Ok(Some(if acknowledged > 0 {
            format!("{name}: thank you, your acknowledgment is recorded.")
        } else {
            format!("{name}: no message is waiting for your acknowledgment.")
        }));
    }
    for (district, guardian) in &guardians {
        match keyword {
            Some(inbound::Keyword::Stop) => {
                cb.store
                    .add_opt_out(*district, *guardian, Channel::Sms, "carrier", now())
                    .await
                    .map_err(unavailable)?;
                tracing::info!(guardian_id = %guardian, "carrier STOP recorded");
            }
            Some(inbound::Keyword::Start) => {
                cb.store
                    .resubscribe(*guardian, Channel::Sms, now())
                    .await
                    .map_err(unavailable)?;
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
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
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
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let raw = without_secret(&query);
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

/// A Kannel request's parameters as kept with a refusal: never the secret.
fn without_secret(query: &[(String, String)]) -> Value {
    pairs_json(
        &query
            .iter()
            .filter(|(k, _)| k != "secret")
            .cloned()
            .collect::<Vec<_>>(),
    )
}

/// Secrets and signatures are compared in constant time.
fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn pairs_json(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

/// The delivery id named in a query or a Message-ID (`<id@domain>`).
fn delivery_id(text: &str) -> Option<DeliveryId> {
    let id = text.trim().trim_start_matches('<');
    let id = id.split('@').next()?;
    id.parse::<uuid::Uuid>().ok().map(DeliveryId::from_uuid)
}

/// Twilio's message statuses as delivery events.
pub fn twilio_event(status: &str) -> Result<Option<DeliveryEvent>, String> {
    Ok(match status {
        "queued" | "accepted" | "scheduled" | "sending" => None,
        "sent" => Some(DeliveryEvent::Accepted),
        "delivered" | "read" => Some(DeliveryEvent::Delivered),
        "undelivered" | "failed" | "canceled" => Some(DeliveryEvent::Failed),
        other => return Err(format!("unknown MessageStatus {other:?}")),
    })
}

async fn twilio_status(
    State(cb): State<Callbacks>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let raw = pairs_json(&form);
    let verdict = (|| {
        verify_twilio(&cb, &uri, &headers, &form)?;
        let query: Vec<(String, String)> = uri.query().map(url_pairs).unwrap_or_default();
        let delivery = field(&query, "delivery")
            .and_then(delivery_id)
            .ok_or_else(|| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "the callback URL names no delivery",
                )
            })?;
        let sid = field(&form, "MessageSid")
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "no MessageSid"))?;
        let status = field(&form, "MessageStatus")
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "no MessageStatus"))?;
        let event = twilio_event(status).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
        let event_id = headers
            .get("I-Twilio-Idempotency-Token")
            .and_then(|v| v.to_str().ok())
            .map_or_else(|| format!("{sid}:{status}"), str::to_owned);
        let detail = field(&form, "ErrorCode").map(|c| format!("twilio error {c}"));
        Ok((
            event_id,
            Normalized {
                delivery_id: delivery,
                event,
                detail,
                effect: None,
                raw: raw.clone(),
            },
        ))
    })();
    match verdict {
        Ok(event) => cb.keep("twilio", vec![event]).await,
        Err(refusal) => cb.reject("twilio", refusal, raw).await,
    }
}

fn url_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(query).unwrap_or_default()
}

/// Kannel's report types as delivery events.
pub fn kannel_event(kind: &str) -> Result<Option<DeliveryEvent>, String> {
    Ok(match kind {
        "1" => Some(DeliveryEvent::Delivered),
        "2" | "16" => Some(DeliveryEvent::Failed),
        "8" => Some(DeliveryEvent::Accepted),
        "4" => None,
        other => return Err(format!("unknown report type {other:?}")),
    })
}

async fn kannel_dlr(
    State(cb): State<Callbacks>,
    Query(query): Query<Vec<(String, String)>>,
) -> Response {
    let raw = without_secret(&query);
    let verdict = (|| {
        verify_kannel(&cb, &query)?;
        let delivery = field(&query, "delivery")
            .and_then(delivery_id)
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "the report names no delivery"))?;
        let kind =
            field(&query, "type").ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "no type"))?;
        let event = kannel_event(kind).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
        let at = field(&query, "at").unwrap_or_default();
        let answer = field(&query, "answer").map(str::to_owned);
        Ok((
            format!("{delivery}:{kind}:{at}"),
            Normalized {
                delivery_id: delivery,
                event,
                detail: answer,
                effect: None,
                raw: raw.clone(),
            },
        ))
    })();
    match verdict {
        Ok(event) => cb.keep("kannel", vec![event]).await,
        Err(refusal) => cb.reject("kannel", refusal, raw).await,
    }
}

/// SendGrid's event names as delivery events and effects.
pub fn sendgrid_event(event: &Value) -> (Option<DeliveryEvent>, Option<&'static str>) {
    match event["event"].as_str().unwrap_or_default() {
        "delivered" => (Some(DeliveryEvent::Delivered), None),
        "bounce" if event["type"] == "blocked" => (Some(DeliveryEvent::Failed), None),
        "bounce" => (Some(DeliveryEvent::Failed), Some("bounced")),
        "dropped" => (Some(DeliveryEvent::Failed), None),
        "spamreport" => (None, Some("complaint")),
        _ => (None, None),
    }
}

/// Mailgun's event names as delivery events and effects.
pub fn mailgun_event(data: &Value) -> (Option<DeliveryEvent>, Option<&'static str>) {
    match (
        data["event"].as_str().unwrap_or_default(),
        data["severity"].as_str(),
    ) {
        ("delivered", _) => (Some(DeliveryEvent::Delivered), None),
        ("failed", Some("permanent")) => (Some(DeliveryEvent::Failed), Some("bounced")),
        ("complained", _) => (None, Some("complaint")),
        _ => (None, None),
    }
}

async fn email_events(
    State(cb): State<Callbacks>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let raw = serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| {
        Value::String(String::from_utf8_lossy(&body).chars().take(2000).collect())
    });
    let verdict = match provider.as_str() {
        "sendgrid" => sendgrid(&cb, &headers, &body),
        "mailgun" => mailgun(&cb, &body),
        _ => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("unknown email provider {provider:?}"),
        )),
    };
    match verdict {
        Ok(events) => cb.keep(&provider, events).await,
        Err(refusal) => cb.reject(&provider, refusal, raw).await,
    }
}

type Kept = Vec<(String, Normalized)>;

fn sendgrid(cb: &Callbacks, headers: &HeaderMap, body: &[u8]) -> Result<Kept, Refusal> {
    let key = cb
        .config
        .sendgrid_public_key
        .as_deref()
        .ok_or_else(|| refuse(StatusCode::NOT_FOUND, "SendGrid is not configured"))?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(signature), Some(timestamp)) = (
        header(webhooks::SENDGRID_SIGNATURE),
        header(webhooks::SENDGRID_TIMESTAMP),
    ) else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "unsigned: no signature or timestamp header",
        ));
    };
    if !webhooks::sendgrid_verifies(key, timestamp, body, signature) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the signature does not verify",
        ));
    }
    let events: Vec<Value> = serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("not a JSON array of events: {e}"),
        )
    })?;
    events
        .into_iter()
        .map(|event| {
            let delivery = event["smtp-id"]
                .as_str()
                .and_then(delivery_id)
                .ok_or_else(|| {
                    refuse(
                        StatusCode::BAD_REQUEST,
                        "an event names no message of ours (smtp-id)",
                    )
                })?;
            let event_id = event["sg_event_id"]
                .as_str()
                .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "an event has no sg_event_id"))?
                .to_owned();
            let (what, effect) = sendgrid_event(&event);
            let detail = event["reason"]
                .as_str()
                .or(event["response"].as_str())
                .map(str::to_owned);
            Ok((
                event_id,
                Normalized {
                    delivery_id: delivery,
                    event: what,
                    detail,
                    effect: effect.map(str::to_owned),
                    raw: event,
                },
            ))
        })
        .collect()
}

fn mailgun(cb: &Callbacks, body: &[u8]) -> Result<Kept, Refusal> {
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
    if !webhooks::mailgun_verifies(key, timestamp, token, signature) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the signature does not verify",
        ));
    }
    let data = payload["event-data"].clone();
    let delivery = data["message"]["headers"]["message-id"]
        .as_str()
        .and_then(delivery_id)
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "the event names no message of ours",
            )
        })?;
    let event_id = data["id"]
        .as_str()
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "the event has no id"))?
        .to_owned();
    let (what, effect) = mailgun_event(&data);
    let detail = data["delivery-status"]["message"]
        .as_str()
        .map(str::to_owned);
    Ok(vec![(
        event_id,
        Normalized {
            delivery_id: delivery,
            event: what,
            detail,
            effect: effect.map(str::to_owned),
            raw: data,
        },
    )])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_vocabularies_map_to_delivery_events() {
        assert_eq!(twilio_event("sent"), Ok(Some(DeliveryEvent::Accepted)));
        assert_eq!(
            twilio_event("delivered"),
            Ok(Some(DeliveryEvent::Delivered))
        );
        assert_eq!(twilio_event("undelivered"), Ok(Some(DeliveryEvent::Failed)));
        assert_eq!(twilio_event("queued"), Ok(None));
        assert!(twilio_event("exploded").is_err());
        assert_eq!(kannel_event("1"), Ok(Some(DeliveryEvent::Delivered)));
        assert_eq!(kannel_event("16"), Ok(Some(DeliveryEvent::Failed)));
        assert_eq!(kannel_event("4"), Ok(None));
        assert!(kannel_event("3").is_err());
        assert_eq!(
            sendgrid_event(&json!({"event": "bounce", "type": "bounce"})),
            (Some(DeliveryEvent::Failed), Some("bounced"))
        );
        assert_eq!(
            sendgrid_event(&json!({"event": "bounce", "type": "blocked"})),
            (Some(DeliveryEvent::Failed), None)
        );
        assert_eq!(
            sendgrid_event(&json!({"event": "spamreport"})),
            (None, Some("complaint"))
        );
        assert_eq!(
            mailgun_event(&json!({"event": "failed", "severity": "temporary"})),
            (None, None)
        );
    }

    #[test]
    fn delivery_ids_are_read_from_urls_and_message_ids() {
        let id = DeliveryId::new();
        assert_eq!(delivery_id(&id.to_string()), Some(id));
        assert_eq!(
            delivery_id(&format!("<{id}@district.example.org>")),
            Some(id)
        );
        assert_eq!(delivery_id(&format!("{id}@district.example.org")), Some(id));
        assert_eq!(delivery_id("<not-ours@elsewhere.example>"), None);
    }
}
