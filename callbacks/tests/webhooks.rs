//! Provider webhooks against a real store (both dialects): every signature scheme
//! accepts what is signed and refuses what is not, events are kept before they are
//! answered, duplicates are recognised, and the worker applies them through the state
//! machine with their side effects.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tidings_callbacks::{CallbackConfig, Callbacks};
use tidings_channel_adapters::{mailgun, sendgrid, twilio};
use tidings_core::clock::ManualClock;
use tidings_core::log::PartitionId;
use tidings_core::store::dispatch::AttemptResult;
use tidings_core::store::Store;
use tidings_core::testing::{delivery_ids, message_to, seed, Seed};
use tidings_core::time::now;
use tidings_core::{Channel, DeliveryId, DeliveryState, Lane};
use tower::ServiceExt as _;

const PUBLIC: &str = "https://tidings.example.org";
const TWILIO_TOKEN: &str = "twilio-auth-token";
const KANNEL_SECRET: &str = "kannel-dlr-secret-0123";
const MAILGUN_KEY: &str = "mailgun-signing-key";

tidings_core::on_both_stores! {
    twilio_reports_are_verified_kept_and_applied_once,
    kannel_reports_need_the_secret,
    email_events_apply_with_their_side_effects,
    a_genuine_mailgun_signature_on_a_forged_event_is_refused,
    mailgun_events_must_be_fresh_and_name_an_email_we_sent_through_it,
    sendgrid_requests_must_be_fresh_and_a_replay_changes_nothing,
    a_captured_twilio_callback_is_harmless_and_bound_to_its_delivery,
    every_route_reads_no_more_than_its_provider_sends,
    refused_requests_are_sampled_then_only_counted,
    the_worker_prunes_the_inbox_by_age,
}

struct Setup {
    store: Arc<dyn Store>,
    callbacks: Callbacks,
    sendgrid: sendgrid::SigningKey,
    seed: Seed,
    /// Two SMS deliveries (through Twilio, message SIDs [`sid`] 10 and 11) and two email
    /// deliveries (through SMTP, Message-IDs [`message_id`]), all SENT.
    sms: Vec<DeliveryId>,
    email: Vec<DeliveryId>,
}

async fn setup(store: Arc<dyn Store>) -> Setup {
    setup_with(store, |_| {}).await
}

/// [`setup`] with the callbacks' configuration changed by `tune`.
async fn setup_with(store: Arc<dyn Store>, tune: impl FnOnce(&mut CallbackConfig)) -> Setup {
    setup_through(store, "twilio", tune).await
}

/// [`setup_with`], the SMS sent through `sms_adapter`.
async fn setup_through(
    store: Arc<dyn Store>,
    sms_adapter: &str,
    tune: impl FnOnce(&mut CallbackConfig),
) -> Setup {
    let seed = seed(store.as_ref(), 2).await;
    let message = message_to(&seed, &[Channel::Sms, Channel::Email]);
    store.create_message(&message, now()).await.unwrap();
    let ids = delivery_ids(&message);
    // Sent as the dispatcher sends: an attempt through the channel's adapter, recorded
    // before the call, then its outcome with the provider's reference.
    let wanted: Vec<_> = s_partitions(&message);
    let leases = store
        .claim_leases("test", &wanted, chrono::Duration::minutes(5), now())
        .await
        .unwrap();
    let mut sms_sid = 10;
    for id in &ids {
        let d = store.delivery(*id).await.unwrap().unwrap();
        let lease = leases
            .iter()
            .find(|l| l.partition == PartitionId::of(d.guardian_id, message.partitions))
            .unwrap();
        let (adapter, reference) = match d.channel {
            Channel::Sms => {
                sms_sid += 1;
                (sms_adapter, sid(sms_sid - 1))
            }
            _ => ("smtp", message_id(*id)),
        };
        let later = now() + chrono::Duration::minutes(2);
        store
            .start_attempt(lease, &d, adapter, "test", later, now())
            .await
            .unwrap();
        let seen = store.delivery(*id).await.unwrap().unwrap();
        let sent = AttemptResult::Sent {
            provider_ref: reference,
        };
        store
            .finish_attempt(lease, &seen, 1, &sent, "test", now())
            .await
            .unwrap();
        assert_eq!(state_of(&store, *id).await, DeliveryState::Sent);
    }
    // The email addresses are the guardians' contact points, so a bounce can retire one.
    for id in &ids {
        let d = store.delivery(*id).await.unwrap().unwrap();
        if d.channel == Channel::Email {
            store
                .add_contact_point(
                    d.district_id,
                    d.guardian_id,
                    Channel::Email,
                    &d.address.unwrap(),
                    now(),
                )
                .await
                .unwrap();
        }
    }
    let sendgrid = sendgrid::SigningKey::generate();
    let mut config = CallbackConfig {
        public_url: Some(PUBLIC.into()),
        twilio_auth_token: Some(TWILIO_TOKEN.into()),
        kannel_dlr_secret: Some(KANNEL_SECRET.into()),
        sendgrid_public_key: Some(sendgrid.public_key()),
        mailgun_signing_key: Some(MAILGUN_KEY.into()),
        ..CallbackConfig::default()
    };
    tune(&mut config);
    let callbacks = Callbacks::new(store.clone(), config);
    // message_to gives each guardian one delivery per channel, in channel order.
    let sms = vec![ids[0], ids[2]];
    let email = vec![ids[1], ids[3]];
    Setup {
        store,
        callbacks,
        sendgrid,
        seed,
        sms,
        email,
    }
}

fn s_partitions(message: &tidings_core::store::NewMessage) -> Vec<(Lane, PartitionId)> {
    let mut wanted = Vec::new();
    for r in &message.recipients {
        let pair = (
            message.lane,
            PartitionId::of(r.guardian_id, message.partitions),
        );
        if !wanted.contains(&pair) {
            wanted.push(pair);
        }
    }
    wanted
}

/// The Twilio message SID of the `n`th SMS sent.
fn sid(n: u32) -> String {
    format!("SM{n:032x}")
}

/// The Message-ID an email delivery was sent with.
fn message_id(id: DeliveryId) -> String {
    format!("<{id}@district.example.org>")
}

async fn state_of(store: &Arc<dyn Store>, id: DeliveryId) -> DeliveryState {
    store.delivery(id).await.unwrap().unwrap().state
}

/// Unix seconds now, as webhooks carry them.
fn fresh() -> String {
    now().timestamp().to_string()
}

async fn call(s: &Setup, request: Request<Body>) -> (StatusCode, Value) {
    let response = s.callbacks.router().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn twilio_request(
    path_and_query: &str,
    form: &[(&str, &str)],
    signature: Option<String>,
) -> Request<Body> {
    let pairs: Vec<(String, String)> = form
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let body = serde_urlencoded::to_string(&pairs).unwrap();
    let signature = signature.unwrap_or_else(|| {
        twilio::signature(TWILIO_TOKEN, &format!("{PUBLIC}{path_and_query}"), &pairs)
    });
    Request::post(path_and_query)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("X-Twilio-Signature", signature)
        .body(Body::from(body))
        .unwrap()
}

async fn state(s: &Setup, id: DeliveryId) -> DeliveryState {
    s.store.delivery(id).await.unwrap().unwrap().state
}

async fn twilio_reports_are_verified_kept_and_applied_once(store: Arc<dyn Store>) {
    let s = setup(store).await;
    let id = s.sms[0];
    let path = format!("/callbacks/twilio/status?delivery={id}");
    let (sid10, sid11) = (sid(10), sid(11));
    let delivered = [
        ("MessageSid", sid10.as_str()),
        ("MessageStatus", "delivered"),
    ];
    // Delivered arrives first and twice, then the stale "sent".
    for _ in 0..2 {
        let (status, _) = call(&s, twilio_request(&path, &delivered, None)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let sent = [("MessageSid", sid10.as_str()), ("MessageStatus", "sent")];
    assert_eq!(
        call(&s, twilio_request(&path, &sent, None)).await.0,
        StatusCode::NO_CONTENT
    );
    // Kept, not yet applied: the answer came before the state changed.
    assert_eq!(state(&s, id).await, DeliveryState::Sent);
    assert_eq!(
        s.store.inbox_counts().await.unwrap().get("pending"),
        Some(&2)
    );
    assert_eq!(s.callbacks.apply_pending().await.unwrap(), 2);
    assert_eq!(state(&s, id).await, DeliveryState::Delivered);
    let inbox = s.store.inbox_counts().await.unwrap();
    assert_eq!(
        (inbox.get("applied"), inbox.get("ignored")),
        (Some(&1), Some(&1)),
        "{inbox:?}"
    );
    assert_eq!(s.callbacks.counters.snapshot()["duplicates"], 1);
    // The trail names the provider's event.
    let events = s.store.delivery_events(id).await.unwrap();
    assert!(
        events
            .last()
            .unwrap()
            .actor
            .reference
            .starts_with("twilio:"),
        "{events:?}"
    );

    // Refused, with the reason, recorded, never applied.
    let other = s.sms[1];
    let other_path = format!("/callbacks/twilio/status?delivery={other}");
    let failed = [("MessageSid", sid11.as_str()), ("MessageStatus", "failed")];
    let cases = [
        (
            twilio_request(&other_path, &failed, Some("Zm9yZ2Vk".into())),
            StatusCode::FORBIDDEN,
            "does not match",
        ),
        (
            {
                let mut r = twilio_request(&other_path, &failed, None);
                r.headers_mut().remove("X-Twilio-Signature");
                r
            },
            StatusCode::FORBIDDEN,
            "missing",
        ),
        // Signed for another URL (a proxy's host, a changed query): refused.
        (
            twilio_request(
                &other_path,
                &failed,
                Some(twilio::signature(
                    TWILIO_TOKEN,
                    "http://internal:8080/callbacks/twilio/status",
                    &[],
                )),
            ),
            StatusCode::FORBIDDEN,
            "does not match",
        ),
        (
            twilio_request("/callbacks/twilio/status", &failed, None),
            StatusCode::BAD_REQUEST,
            "names no delivery",
        ),
        (
            twilio_request(
                &other_path,
                &[("MessageSid", "SMx"), ("MessageStatus", "exploded")],
                None,
            ),
            StatusCode::BAD_REQUEST,
            "unknown MessageStatus",
        ),
    ];
    let n = cases.len() as i64;
    for (request, expected, reason) in cases {
        let (status, body) = call(&s, request).await;
        assert_eq!(status, expected, "{body}");
        assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
    }
    assert_eq!(
        s.store.inbox_counts().await.unwrap().get("rejected"),
        Some(&n)
    );
    s.callbacks.apply_pending().await.unwrap();
    assert_eq!(state(&s, other).await, DeliveryState::Sent);
}

async fn kannel_reports_need_the_secret(store: Arc<dyn Store>) {
    let s = setup_through(store, "kannel", |_| {}).await;
    let id = s.sms[0];
    let dlr = |secret: &str, kind: &str| {
        Request::get(format!(
            "/callbacks/kannel/dlr?secret={secret}&delivery={id}&type={kind}&answer=id%3A1000%20stat%3AUNDELIV&at=1700000000"
        ))
        .body(Body::empty())
        .unwrap()
    };
    let (status, body) = call(&s, dlr("wrong-secret", "2")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("wrong secret"))
    );
    assert_eq!(
        call(&s, dlr(KANNEL_SECRET, "4")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&s, dlr(KANNEL_SECRET, "2")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&s, dlr(KANNEL_SECRET, "2")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&s, dlr(KANNEL_SECRET, "7")).await.0,
        StatusCode::BAD_REQUEST
    );
    s.callbacks.apply_pending().await.unwrap();
    assert_eq!(state(&s, id).await, DeliveryState::Failed);
    let inbox = s.store.inbox_counts().await.unwrap();
    // The buffered report is kept with nothing to apply; the repeat is not kept twice.
    assert_eq!(
        (
            inbox.get("applied"),
            inbox.get("ignored"),
            inbox.get("rejected")
        ),
        (Some(&1), Some(&1), Some(&2)),
        "{inbox:?}"
    );
}

async fn email_events_apply_with_their_side_effects(store: Arc<dyn Store>) {
    let s = setup(store).await;
    let (bounced, complained) = (s.email[0], s.email[1]);
    let now = fresh();
    let sendgrid = |events: Value, sign_with: Option<&sendgrid::SigningKey>| {
        let body = serde_json::to_vec(&events).unwrap();
        let key = sign_with.unwrap_or(&s.sendgrid);
        Request::post("/callbacks/email/sendgrid")
            .header("content-type", "application/json")
            .header(sendgrid::TIMESTAMP_HEADER, &now)
            .header(sendgrid::SIGNATURE_HEADER, key.sign(&now, &body))
            .body(Body::from(body))
            .unwrap()
    };
    let bounce = json!([{"event": "bounce", "type": "bounce", "email": "g0@example.org",
        "smtp-id": message_id(bounced), "sg_event_id": "ev-1", "reason": "550 5.1.1 no such user"}]);
    // Signed with a key that is not SendGrid's: refused.
    let stranger = sendgrid::SigningKey::generate();
    let (status, body) = call(&s, sendgrid(bounce.clone(), Some(&stranger))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        call(&s, sendgrid(bounce, None)).await.0,
        StatusCode::NO_CONTENT
    );

    let timestamp = &fresh();
    let token = "0123456789abcdef0123456789abcdef0123456789abcdef01";
    let mailgun = |signature: String| {
        let payload = json!({
            "signature": {"timestamp": timestamp, "token": token, "signature": signature},
            "event-data": {"event": "complained", "id": "mg-1", "recipient": "g1@example.org",
                "message": {"headers": {"message-id": format!("{complained}@district.example.org")}}},
        });
        Request::post("/callbacks/email/mailgun")
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&payload).unwrap()))
            .unwrap()
    };
    let (status, _) = call(
        &s,
        mailgun(mailgun::signature("not-the-key", timestamp, token)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let good = mailgun::signature(MAILGUN_KEY, timestamp, token);
    assert_eq!(call(&s, mailgun(good)).await.0, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &s,
        Request::post("/callbacks/email/postmark")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    s.callbacks.apply_pending().await.unwrap();
    let district = s.seed.staff.district_id;
    let detail = |guardian| tidings_core::testing::detail_of(s.store.as_ref(), district, guardian);
    // The hard bounce failed the delivery and retired the address.
    assert_eq!(state(&s, bounced).await, DeliveryState::Failed);
    let g0 = detail(s.seed.guardians[0].id).await;
    let email = g0
        .contact_points
        .iter()
        .find(|c| c.kind == Channel::Email)
        .unwrap();
    assert_eq!(
        (email.active, email.inactive_reason.as_deref()),
        (false, Some("bounced"))
    );
    // The complaint opted the guardian out of email, and left the delivery as it was.
    assert_eq!(state(&s, complained).await, DeliveryState::Sent);
    let g1 = detail(s.seed.guardians[1].id).await;
    assert!(
        g1.opt_outs
            .iter()
            .any(|o| o.channel == Channel::Email && o.source == "complaint"),
        "{:?} {:?} {:?}",
        g1.opt_outs,
        s.store.inbox_counts().await.unwrap(),
        s.callbacks.counters.snapshot()
    );
    let inbox = s.store.inbox_counts().await.unwrap();
    assert_eq!(inbox.get("rejected"), Some(&3), "{inbox:?}");
}

/// A Mailgun webhook: `event-data` under a signature object signed (with `key`) for
/// `timestamp` and `token`.
fn mailgun_request(key: &str, timestamp: &str, token: &str, data: Value) -> Request<Body> {
    let signature = mailgun::signature(key, timestamp, token);
    let payload = json!({
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": data,
    });
    Request::post("/callbacks/email/mailgun")
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&payload).unwrap()))
        .unwrap()
}

/// Mailgun's event `name` (`delivered`, `complained`) about the message `message_id`.
fn mailgun_event(name: &str, id: &str, message_id: &str) -> Value {
    json!({"event": name, "id": id, "recipient": "someone@example.org",
        "message": {"headers": {"message-id": message_id.trim_matches(|c| c == '<' || c == '>')}}})
}

fn token(n: u8) -> String {
    format!("{n:02x}").repeat(25)
}

async fn email_opt_outs(s: &Setup, guardian: usize) -> usize {
    let detail = s
        .store
        .guardian_detail(
            &tidings_core::store::Scope::District(s.seed.staff.district_id),
            &tidings_core::store::GuardianRef::Id(*s.seed.guardians[guardian].id.as_uuid()),
        )
        .await
        .unwrap()
        .unwrap();
    detail
        .opt_outs
        .iter()
        .filter(|o| o.channel == Channel::Email)
        .count()
}

/// The finding of issue 20: Mailgun signs only the timestamp and the token, so the
/// signature object of a genuine webhook could carry any event — here a complaint that
/// would opt another guardian out of email. A token is now good for one event.
async fn a_genuine_mailgun_signature_on_a_forged_event_is_refused(store: Arc<dyn Store>) {
    let s = setup(store).await;
    let (ours, theirs) = (s.email[0], s.email[1]);
    let (timestamp, token) = (fresh(), token(1));
    let genuine = mailgun_event("delivered", "mg-genuine", &message_id(ours));
    let request = || mailgun_request(MAILGUN_KEY, &timestamp, &token, genuine.clone());
    assert_eq!(call(&s, request()).await.0, StatusCode::NO_CONTENT);
    // Mailgun retrying the same event: a duplicate, answered 2xx, kept once.
    assert_eq!(call(&s, request()).await.0, StatusCode::NO_CONTENT);
    // The same signature object on a complaint about another guardian's message.
    let forged = mailgun_event("complained", "mg-forged", &message_id(theirs));
    let (status, body) = call(
        &s,
        mailgun_request(MAILGUN_KEY, &timestamp, &token, forged.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("replayed"),
        "{body}"
    );
    // Even under the genuine event's id.
    let mut same_id = forged;
    same_id["id"] = json!("mg-genuine");
    let (status, _) = call(
        &s,
        mailgun_request(MAILGUN_KEY, &timestamp, &token, same_id),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    s.callbacks.apply_pending().await.unwrap();
    assert_eq!(
        email_opt_outs(&s, 1).await,
        0,
        "the forged complaint opted out"
    );
    assert_eq!(state(&s, ours).await, DeliveryState::Delivered);
    assert_eq!(state(&s, theirs).await, DeliveryState::Sent);
    let inbox = s.store.inbox_counts().await.unwrap();
    assert_eq!(
        (inbox.get("applied"), inbox.get("rejected")),
        (Some(&1), Some(&2)),
        "{inbox:?}"
    );
    let counters = s.callbacks.counters.snapshot();
    assert_eq!((counters["duplicates"], counters["rejected"]), (1, 2));
}

async fn mailgun_events_must_be_fresh_and_name_an_email_we_sent_through_it(store: Arc<dyn Store>) {
    let s = setup(store).await;
    let complaint = |about: &str, id: &str| mailgun_event("complained", id, about);
    let target = message_id(s.email[1]);
    let at = now().timestamp();
    let refused = [
        // Properly signed, but in 2001, or an hour ahead.
        (
            mailgun_request(
                MAILGUN_KEY,
                "1000000000",
                &token(2),
                complaint(&target, "a"),
            ),
            StatusCode::FORBIDDEN,
            "stale",
        ),
        (
            mailgun_request(
                MAILGUN_KEY,
                &(at + 3600).to_string(),
                &token(3),
                complaint(&target, "b"),
            ),
            StatusCode::FORBIDDEN,
            "future",
        ),
        // An SMS delivery, a delivery that does not exist, the right delivery under
        // another domain than it was sent with.
        (
            mailgun_request(
                MAILGUN_KEY,
                &fresh(),
                &token(4),
                complaint(&format!("<{}@district.example.org>", s.sms[1]), "c"),
            ),
            StatusCode::BAD_REQUEST,
            "not an email delivery",
        ),
        (
            mailgun_request(
                MAILGUN_KEY,
                &fresh(),
                &token(5),
                complaint(
                    &format!("<{}@district.example.org>", DeliveryId::new()),
                    "d",
                ),
            ),
            StatusCode::BAD_REQUEST,
            "not one of ours",
        ),
        (
            mailgun_request(
                MAILGUN_KEY,
                &fresh(),
                &token(6),
                complaint(&format!("<{}@elsewhere.example>", s.email[1]), "e"),
            ),
            StatusCode::BAD_REQUEST,
            "was sent as",
        ),
    ];
    for (request, expected, reason) in refused {
        let (status, body) = call(&s, request).await;
        assert_eq!(status, expected, "{reason}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(reason),
            "{reason}: {body}"
        );
    }
    s.callbacks.apply_pending().await.unwrap();
    assert_eq!(email_opt_outs(&s, 1).await, 0);

    // A district whose email goes out through another adapter: not Mailgun's to report.
    let other = Callbacks::new(
        s.store.clone(),
        CallbackConfig {
            mailgun_signing_key: Some(MAILGUN_KEY.into()),
            email_adapters: vec!["ses".into()],
            ..CallbackConfig::default()
        },
    );
    let response = other
        .router()
        .oneshot(mailgun_request(
            MAILGUN_KEY,
            &fresh(),
            &token(7),
            complaint(&target, "f"),
        ))
        .await
        .unwrap();
    let status = response.status();
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("never sent through mailgun"),
        "{body}"
    );
}

async fn sendgrid_requests_must_be_fresh_and_a_replay_changes_nothing(store: Arc<dyn Store>) {
    let s = setup(store).await;
    let events = json!([{"event": "spamreport", "email": "g1@example.org",
        "smtp-id": message_id(s.email[1]), "sg_event_id": "sg-1"}]);
    let body = serde_json::to_vec(&events).unwrap();
    let signed = |timestamp: &str| {
        Request::post("/callbacks/email/sendgrid")
            .header("content-type", "application/json")
            .header(sendgrid::TIMESTAMP_HEADER, timestamp)
            .header(
                sendgrid::SIGNATURE_HEADER,
                s.sendgrid.sign(timestamp, &body),
            )
            .body(Body::from(body.clone()))
            .unwrap()
    };
    // Genuinely signed, long ago (a request captured then).
    let (status, reply) = call(&s, signed("1000000000")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{reply}");
    assert!(
        reply["error"].as_str().unwrap().contains("stale"),
        "{reply}"
    );
    let ahead = (now().timestamp() + 3600).to_string();
    assert_eq!(call(&s, signed(&ahead)).await.0, StatusCode::FORBIDDEN);
    // Fresh: kept; the same request again (a replay inside the window) is a duplicate.
    let now = fresh();
    for _ in 0..3 {
        assert_eq!(call(&s, signed(&now)).await.0, StatusCode::NO_CONTENT);
    }
    assert_eq!(s.callbacks.apply_pending().await.unwrap(), 1);
    assert_eq!(email_opt_outs(&s, 1).await, 1);
    assert_eq!(s.callbacks.counters.snapshot()["duplicates"], 2);
    // An event about an SMS delivery, signed by SendGrid itself: refused all the same.
    let sms = serde_json::to_vec(&json!([{"event": "delivered",
        "smtp-id": format!("<{}@district.example.org>", s.sms[0]), "sg_event_id": "sg-2"}]))
    .unwrap();
    let request = Request::post("/callbacks/email/sendgrid")
        .header(sendgrid::TIMESTAMP_HEADER, &now)
        .header(sendgrid::SIGNATURE_HEADER, s.sendgrid.sign(&now, &sms))
        .body(Body::from(sms))
        .unwrap();
    assert_eq!(call(&s, request).await.0, StatusCode::BAD_REQUEST);
}

/// Twilio signs no time, so a captured status callback can be posted again at will:
/// it is a duplicate (kept once, under what the signature covers, whatever its unsigned
/// idempotency header says), and it cannot be pointed at another delivery (the delivery
/// is in the signed URL) nor name one that is not an SMS Twilio sent.
async fn a_captured_twilio_callback_is_harmless_and_bound_to_its_delivery(store: Arc<dyn Store>) {
    let s = setup(store).await;
    let (id, other) = (s.sms[0], s.sms[1]);
    let path = format!("/callbacks/twilio/status?delivery={id}");
    let sid10 = sid(10);
    let failed = [
        ("MessageSid", sid10.as_str()),
        ("MessageStatus", "undelivered"),
    ];
    let captured = || twilio_request(&path, &failed, None);
    let signature = captured()
        .headers()
        .get("X-Twilio-Signature")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(call(&s, captured()).await.0, StatusCode::NO_CONTENT);
    for n in 0..3 {
        let mut replay = captured();
        replay.headers_mut().insert(
            "I-Twilio-Idempotency-Token",
            format!("replay-{n}").parse().unwrap(),
        );
        assert_eq!(call(&s, replay).await.0, StatusCode::NO_CONTENT);
    }
    assert_eq!(s.callbacks.apply_pending().await.unwrap(), 1);
    assert_eq!(s.callbacks.counters.snapshot()["duplicates"], 3);
    assert_eq!(state(&s, id).await, DeliveryState::Failed);
    // The captured signature on another delivery's URL.
    let moved = twilio_request(
        &format!("/callbacks/twilio/status?delivery={other}"),
        &failed,
        Some(signature),
    );
    assert_eq!(call(&s, moved).await.0, StatusCode::FORBIDDEN);
    // Correctly signed, but naming an email delivery, or another message than the one
    // Twilio sent for this delivery.
    let email = s.email[0];
    let (status, body) = call(
        &s,
        twilio_request(
            &format!("/callbacks/twilio/status?delivery={email}"),
            &failed,
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not an sms delivery"),
        "{body}"
    );
    let (status, body) = call(
        &s,
        twilio_request(
            &format!("/callbacks/twilio/status?delivery={other}"),
            &failed,
            None,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("was sent as"),
        "{body}"
    );
    s.callbacks.apply_pending().await.unwrap();
    assert_eq!(state(&s, other).await, DeliveryState::Sent);
    assert_eq!(state(&s, email).await, DeliveryState::Sent);
}

/// The finding of issue 20: 30 unsigned 900 KB posts were kept whole. Each route now
/// reads at most what its provider sends and answers more with 413, keeping nothing of it.
async fn every_route_reads_no_more_than_its_provider_sends(store: Arc<dyn Store>) {
    let s = setup(store).await;
    let big = |path: &str, bytes: usize, content_type: &str| {
        Request::post(path)
            .header("content-type", content_type)
            .body(Body::from(vec![b'a'; bytes]))
            .unwrap()
    };
    let form = "application/x-www-form-urlencoded";
    for (request, expected) in [
        (
            big("/callbacks/twilio/status", 900 * 1024, form),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            big("/callbacks/twilio/inbound", 900 * 1024, form),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            big("/callbacks/email/mailgun", 900 * 1024, "application/json"),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            big(
                "/callbacks/email/sendgrid",
                5 * 1024 * 1024,
                "application/json",
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Request::get(format!(
                "/callbacks/kannel/dlr?secret={KANNEL_SECRET}&delivery={}&type=1&pad={}",
                s.sms[0],
                "a".repeat(20 * 1024)
            ))
            .body(Body::empty())
            .unwrap(),
            StatusCode::URI_TOO_LONG,
        ),
        // What the providers do send still passes the cap (and is refused for itself).
        (
            big("/callbacks/twilio/status", 20 * 1024, form),
            StatusCode::FORBIDDEN,
        ),
        (
            big(
                "/callbacks/email/sendgrid",
                3 * 1024 * 1024,
                "application/json",
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            big("/callbacks/email/mailgun", 60 * 1024, "application/json"),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, body) = call(&s, request).await;
        assert_eq!(status, expected, "{body}");
    }
    assert_eq!(s.callbacks.counters.snapshot()["rejected"], 8);
}

/// Refused requests are kept as a sample: so many per provider in a window, also for a
/// provider that is not configured; beyond that only counted.
async fn refused_requests_are_sampled_then_only_counted(store: Arc<dyn Store>) {
    let s = setup_with(store, |c| {
        c.twilio_auth_token = None;
        c.refused_samples.per_window = 5;
    })
    .await;
    let body = format!("Body={}", "x".repeat(20 * 1024));
    for _ in 0..30 {
        let request = Request::post("/callbacks/twilio/inbound")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Body::from(body.clone()))
            .unwrap();
        assert_eq!(call(&s, request).await.0, StatusCode::NOT_FOUND);
    }
    for _ in 0..30 {
        let request = Request::post("/callbacks/email/postmark")
            .body(Body::from("{}"))
            .unwrap();
        assert_eq!(call(&s, request).await.0, StatusCode::NOT_FOUND);
    }
    let inbox = s.store.inbox_counts().await.unwrap();
    assert_eq!(inbox.get("rejected"), Some(&10), "{inbox:?}");
    let counters = s.callbacks.counters.snapshot();
    assert_eq!(
        (counters["rejected"], counters["rejected_unkept"]),
        (60, 50)
    );
}

/// The worker's pruning round deletes what is past its retention, by age, and nothing
/// pending; a report on one of a district's deliveries is the district's, kept by its
/// own retention and purged with its records.
async fn the_worker_prunes_the_inbox_by_age(store: Arc<dyn Store>) {
    // Ages pass by moving this clock.
    let clock = Arc::new(ManualClock::at(now()));
    let callbacks_clock = clock.clone();
    let s = setup_with(store, move |c| {
        c.clock = callbacks_clock;
        c.retention.finished = std::time::Duration::ZERO;
        c.retention.rejected = std::time::Duration::from_secs(3600);
    })
    .await;
    let id = s.sms[0];
    let path = format!("/callbacks/twilio/status?delivery={id}");
    let sid10 = sid(10);
    let delivered = [
        ("MessageSid", sid10.as_str()),
        ("MessageStatus", "delivered"),
    ];
    assert_eq!(
        call(&s, twilio_request(&path, &delivered, None)).await.0,
        StatusCode::NO_CONTENT
    );
    let sent = [("MessageSid", sid10.as_str()), ("MessageStatus", "sent")];
    s.callbacks.apply_pending().await.unwrap();
    // One more, left pending; one refused (younger than its retention).
    assert_eq!(
        call(&s, twilio_request(&path, &sent, None)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&s, twilio_request(&path, &sent, Some("Zm9yZ2Vk".into())))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    clock.advance(chrono::Duration::seconds(1));
    let pruned = s.callbacks.prune_inbox().await.unwrap();
    // The applied report is about a district's delivery: the district's to keep.
    assert_eq!((pruned.finished, pruned.rejected), (0, 0));
    let inbox = s.store.inbox_counts().await.unwrap();
    assert_eq!(
        (
            inbox.get("applied"),
            inbox.get("pending"),
            inbox.get("rejected")
        ),
        (Some(&1), Some(&1), Some(&1)),
        "{inbox:?}"
    );
    // Past the district's retention, its purge takes it.
    let district = s.store.districts().await.unwrap()[0].id;
    let later =
        tidings_core::retention::Retention::default().cutoffs(now() + chrono::Duration::days(31));
    let purged = s.store.purge_batch(district, &later, 100).await.unwrap();
    assert_eq!(purged.callbacks, 1);
    assert_eq!(s.store.inbox_counts().await.unwrap().get("applied"), None);
}
