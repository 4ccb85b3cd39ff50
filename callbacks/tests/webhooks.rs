//! Provider webhooks against a real store (both dialects): every signature scheme
//! accepts what is signed and refuses what is not, events are kept before they are
//! answered, duplicates are recognised, and the worker applies them through the state
//! machine with their side effects.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tidings_callbacks::{CallbackConfig, Callbacks};
use tidings_channel_adapters::{twilio, webhooks};
use tidings_core::delivery::{Actor, Transition};
use tidings_core::store::Store;
use tidings_core::testing::{delivery_ids, message_to, seed, Seed};
use tidings_core::time::now;
use tidings_core::{Channel, DeliveryId, DeliveryState};
use tower::ServiceExt as _;

const PUBLIC: &str = "https://tidings.example.org";
const TWILIO_TOKEN: &str = "twilio-auth-token";
const KANNEL_SECRET: &str = "kannel-dlr-secret-0123";
const MAILGUN_KEY: &str = "mailgun-signing-key";

tidings_core::on_both_stores! {
    twilio_reports_are_verified_kept_and_applied_once,
    kannel_reports_need_the_secret,
    email_events_apply_with_their_side_effects,
}

struct Setup {
    store: Arc<dyn Store>,
    callbacks: Callbacks,
    sendgrid: webhooks::SendgridKey,
    seed: Seed,
    /// Two SMS deliveries and two email deliveries, all SENT.
    sms: Vec<DeliveryId>,
    email: Vec<DeliveryId>,
}

async fn setup(store: Arc<dyn Store>) -> Setup {
    let seed = seed(store.as_ref(), 2).await;
    let message = message_to(&seed, &[Channel::Sms, Channel::Email]);
    store.create_message(&message, now()).await.unwrap();
    let ids = delivery_ids(&message);
    for id in &ids {
        for (from, to) in [
            (DeliveryState::Created, DeliveryState::Queued),
            (DeliveryState::Queued, DeliveryState::Sent),
        ] {
            let d = store.delivery(*id).await.unwrap().unwrap();
            store
                .transition(&Transition {
                    delivery_id: *id,
                    from,
                    seen_version: d.version,
                    to,
                    actor: Actor::dispatcher("test"),
                    detail: None,
                    at: now(),
                })
                .await
                .unwrap();
        }
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
    let sendgrid = webhooks::SendgridKey::generate();
    let config = CallbackConfig {
        public_url: Some(PUBLIC.into()),
        twilio_auth_token: Some(TWILIO_TOKEN.into()),
        kannel_dlr_secret: Some(KANNEL_SECRET.into()),
        sendgrid_public_key: Some(sendgrid.public_key()),
        mailgun_signing_key: Some(MAILGUN_KEY.into()),
        ..CallbackConfig::default()
    };
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
    let delivered = [
        ("MessageSid", "SM0000000000000000000000000000000a"),
        ("MessageStatus", "delivered"),
    ];
    // Delivered arrives first and twice, then the stale "sent".
    for _ in 0..2 {
        let (status, _) = call(&s, twilio_request(&path, &delivered, None)).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let sent = [
        ("MessageSid", "SM0000000000000000000000000000000a"),
        ("MessageStatus", "sent"),
    ];
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
    let failed = [
        ("MessageSid", "SM0000000000000000000000000000000b"),
        ("MessageStatus", "failed"),
    ];
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
    let s = setup(store).await;
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
    let message_id = |id: DeliveryId| format!("<{id}@district.example.org>");
    let sendgrid = |events: Value, sign_with: Option<&webhooks::SendgridKey>| {
        let body = serde_json::to_vec(&events).unwrap();
        let key = sign_with.unwrap_or(&s.sendgrid);
        Request::post("/callbacks/email/sendgrid")
            .header("content-type", "application/json")
            .header(webhooks::SENDGRID_TIMESTAMP, "1700000000")
            .header(webhooks::SENDGRID_SIGNATURE, key.sign("1700000000", &body))
            .body(Body::from(body))
            .unwrap()
    };
    let bounce = json!([{"event": "bounce", "type": "bounce", "email": "g0@example.org",
        "smtp-id": message_id(bounced), "sg_event_id": "ev-1", "reason": "550 5.1.1 no such user"}]);
    // Signed with a key that is not SendGrid's: refused.
    let stranger = webhooks::SendgridKey::generate();
    let (status, body) = call(&s, sendgrid(bounce.clone(), Some(&stranger))).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(
        call(&s, sendgrid(bounce, None)).await.0,
        StatusCode::NO_CONTENT
    );

    let timestamp = "1700000001";
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
        mailgun(webhooks::mailgun_signature("not-the-key", timestamp, token)),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let good = webhooks::mailgun_signature(MAILGUN_KEY, timestamp, token);
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
    let detail = |guardian: tidings_core::GuardianId| {
        let store = s.store.clone();
        async move {
            store
                .guardian_detail(
                    &tidings_core::store::Scope::District(district),
                    &tidings_core::store::GuardianRef::Id(*guardian.as_uuid()),
                )
                .await
                .unwrap()
                .unwrap()
        }
    };
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
