//! The Web Push adapter against the sandbox's Web Push service: a subscription made as a
//! browser makes one, the payload encrypted for it (RFC 8291) and decrypted by the
//! service, the VAPID signature (RFC 8292) checked, and the service's answers (410 for a
//! subscription that is gone, 429, a refused key) classified.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tidings_channel_adapters::http::Timeouts;
use tidings_channel_adapters::push::Push;
use tidings_channel_adapters::webpush::{VapidKey, WebPush, WebPushConfig};
use tidings_channel_adapters::{AddressFault, ChannelAdapter, Outgoing, SendOutcome};
use tidings_core::{Channel, DeliveryId, MessageId, MessageKind, WebPushSubscription};
use tidings_sandbox::server::SandboxConfig;
use tidings_sandbox::{Faults, InProcessProvider};

async fn sandbox() -> (String, InProcessProvider) {
    let provider = InProcessProvider::new(Faults::default());
    let config = SandboxConfig {
        hang: Duration::from_secs(30),
        ..SandboxConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = tidings_sandbox::server::router(provider.clone(), config);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, provider)
}

fn web_push(key: Arc<VapidKey>, allowed: &str) -> WebPush {
    WebPush::new(WebPushConfig {
        key,
        subject: "mailto:it@district.example".into(),
        allowed_origins: vec![allowed.into()],
        app_url: Some("https://tidings.district.example".into()),
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
        },
        max_per_second: None,
        concurrency: 4,
        clock: Arc::new(tidings_core::clock::SystemClock),
    })
    .unwrap()
}

fn key() -> Arc<VapidKey> {
    Arc::new(VapidKey::from_pem(&VapidKey::generate_pem()).unwrap())
}

/// A browser subscribing at the sandbox, with `application_server_key` when given: the
/// subscription's id and its device token.
async fn subscribe(base: &str, application_server_key: Option<&str>) -> (String, String) {
    let body = match application_server_key {
        Some(k) => json!({ "application_server_key": k }),
        None => json!({}),
    };
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/_sandbox/web-push/subscriptions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let subscription = WebPushSubscription::new(
        answer["endpoint"].as_str().unwrap(),
        answer["keys"]["p256dh"].as_str().unwrap(),
        answer["keys"]["auth"].as_str().unwrap(),
    )
    .unwrap();
    (
        answer["id"].as_str().unwrap().to_owned(),
        subscription.token(),
    )
}

fn send(address: &str, kind: MessageKind, body: &str) -> Outgoing {
    let delivery_id = DeliveryId::new();
    Outgoing {
        delivery_id,
        message_id: MessageId::new(),
        idempotency_key: delivery_id.to_string(),
        channel: Channel::Push,
        address: address.into(),
        kind,
        subject: "Lockdown".into(),
        body: body.into(),
        language: "es".into(),
        ack: Some(Default::default()),
        unsubscribe_url: None,
        delivery_reports: false,
        span: tracing::Span::none(),
    }
}

async fn pushed(base: &str) -> Value {
    reqwest::get(format!("{base}/_sandbox/web-push"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_push_reaches_the_browser_encrypted_signed_and_marked_by_urgency() {
    let (base, provider) = sandbox().await;
    let key = key();
    let adapter = web_push(key.clone(), &base);
    let (id, token) = subscribe(&base, Some(&key.public_key())).await;

    let emergency = send(
        &token,
        MessageKind::Emergency,
        "Todas las escuelas están cerradas.",
    );
    let general = send(&token, MessageKind::General, "Día de fotos el martes.");
    let outcomes = adapter.send(&[emergency.clone(), general.clone()]).await;
    for outcome in &outcomes {
        let SendOutcome::Sent { provider_ref } = outcome else {
            panic!("{outcome:?}");
        };
        assert!(
            provider_ref.starts_with(&format!("{base}/messages/")),
            "{provider_ref}"
        );
    }

    let state = pushed(&base).await;
    let items = state["pushed"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{state}");
    let payload = |i: usize| -> Value {
        serde_json::from_str(items[i]["payload"].as_str().unwrap()).unwrap()
    };
    let first = payload(0);
    assert_eq!(first["body"], "Todas las escuelas están cerradas.");
    assert_eq!(first["title"], "Lockdown");
    assert_eq!(first["lang"], "es");
    assert_eq!(first["emergency"], true);
    assert_eq!(first["requires_ack"], true);
    assert_eq!(first["delivery_id"], emergency.delivery_id.to_string());
    assert_eq!(
        first["url"],
        format!(
            "https://tidings.district.example/app/messages/{}",
            emergency.message_id
        )
    );
    assert_eq!(items[0]["subscription"], id);
    assert_eq!(items[0]["urgency"], "high");
    assert_eq!(items[0]["ttl"], 24 * 3600);
    assert_eq!(items[0]["subject"], "mailto:it@district.example");
    assert_eq!(
        items[0]["topic"],
        emergency.message_id.as_uuid().simple().to_string()
    );
    assert_eq!(payload(1)["emergency"], false);
    assert_eq!(items[1]["urgency"], "normal");
    assert_eq!(items[1]["ttl"], 28 * 24 * 3600);
    assert_eq!(state["refused"], 0);
    // The sandbox counts them as pushes of their deliveries.
    let received = provider.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].delivery_id, Some(emergency.delivery_id));

    // Through the push channel, a webpush: address goes to this push service.
    let push = Push::new(None, None, Some(adapter)).unwrap();
    let address = format!("webpush:{token}");
    assert_eq!(push.provider(), "webpush");
    assert_eq!(
        push.provider_of(&address),
        format!("webpush:{}", base.trim_start_matches("http://"))
    );
    let outcome = push
        .send(&[send(&address, MessageKind::General, "Hola")])
        .await;
    assert!(
        matches!(outcome[0], SendOutcome::Sent { .. }),
        "{outcome:?}"
    );
    assert_eq!(pushed(&base).await["pushed"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn a_body_too_long_for_one_push_is_cut_and_still_decrypts() {
    let (base, _) = sandbox().await;
    let key = key();
    let adapter = web_push(key.clone(), &base);
    let (_, token) = subscribe(&base, Some(&key.public_key())).await;
    let long = "ñ".repeat(3000);
    let outcome = adapter
        .send(&[send(&token, MessageKind::General, &long)])
        .await;
    assert!(
        matches!(outcome[0], SendOutcome::Sent { .. }),
        "{outcome:?}"
    );
    let state = pushed(&base).await;
    let payload: Value =
        serde_json::from_str(state["pushed"][0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["truncated"], true);
    let body = payload["body"].as_str().unwrap();
    assert!(body.ends_with('…') && body.starts_with("ññ"), "{body}");
    assert!(body.len() < long.len());
}

#[tokio::test]
async fn a_gone_subscription_is_unreachable_and_other_refusals_are_classified() {
    let (base, provider) = sandbox().await;
    let key = key();
    let adapter = web_push(key.clone(), &base);
    let (id, token) = subscribe(&base, Some(&key.public_key())).await;

    // The browser unsubscribed: 410, the device is gone.
    let removed = reqwest::Client::new()
        .delete(format!("{base}/_sandbox/web-push/subscriptions/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    let outcome = adapter
        .send(&[send(&token, MessageKind::General, "x")])
        .await;
    assert!(
        matches!(&outcome[0], SendOutcome::Unreachable { fault: AddressFault::Gone, error } if error.contains("410")),
        "{outcome:?}"
    );

    // Subscribed with another application server's key: the push service refuses ours
    // (403), which says the install's key is wrong — retried, not the subscription's end.
    let (_, other) = subscribe(&base, Some(&self::key().public_key())).await;
    let outcome = adapter
        .send(&[send(&other, MessageKind::General, "x")])
        .await;
    assert!(
        matches!(&outcome[0], SendOutcome::Transient { error, .. } if error.contains("403") && error.contains("VAPID")),
        "{outcome:?}"
    );

    // A push service that is not allowed is never called, and the subscription retired.
    let (_, fine) = subscribe(&base, None).await;
    let elsewhere = web_push(key.clone(), "https://fcm.googleapis.com");
    let sends_before = provider.sends();
    let outcome = elsewhere
        .send(&[send(&fine, MessageKind::General, "x")])
        .await;
    assert!(
        matches!(&outcome[0], SendOutcome::Unreachable { fault: AddressFault::Invalid, error } if error.contains("allowed_origins")),
        "{outcome:?}"
    );
    assert_eq!(provider.sends(), sends_before);

    // A token that is no subscription is refused for good.
    let outcome = adapter
        .send(&[send("not-a-subscription", MessageKind::General, "x")])
        .await;
    assert!(
        matches!(
            &outcome[0],
            SendOutcome::Unreachable {
                fault: AddressFault::Invalid,
                ..
            }
        ),
        "{outcome:?}"
    );

    // The push service asks to slow down: throttled, with its Retry-After.
    provider.set_faults(Faults {
        throttled: 1.0,
        ..Faults::default()
    });
    let outcome = adapter
        .send(&[send(&fine, MessageKind::General, "x")])
        .await;
    assert_eq!(
        outcome[0],
        SendOutcome::Throttled {
            error: outcome_error(&outcome[0]),
            retry_after: Some(Duration::from_secs(1)),
        }
    );
    provider.set_faults(Faults {
        transient: 1.0,
        ..Faults::default()
    });
    let outcome = adapter
        .send(&[send(&fine, MessageKind::General, "x")])
        .await;
    assert!(
        matches!(&outcome[0], SendOutcome::Transient { error, .. } if error.contains("500")),
        "{outcome:?}"
    );
}

fn outcome_error(outcome: &SendOutcome) -> String {
    match outcome {
        SendOutcome::Throttled { error, .. } => error.clone(),
        other => panic!("{other:?}"),
    }
}

/// What the push service checks, request by request: each refusal names its reason.
#[tokio::test]
async fn the_push_service_refuses_requests_that_break_rfc_8030_or_8292() {
    let (base, _) = sandbox().await;
    let key = key();
    let (id, _) = subscribe(&base, None).await;
    let endpoint = format!("{base}/push/{id}");
    let now = chrono::Utc::now();
    let good_auth = key
        .authorization(&base, "mailto:it@district.example", now)
        .unwrap();
    let client = reqwest::Client::new();
    let post = |authorization: Option<String>, ttl: Option<&str>, encoding: &str| {
        let mut request = client
            .post(&endpoint)
            .header("Content-Encoding", encoding)
            .body(vec![0u8; 100]);
        if let Some(a) = authorization {
            request = request.header("Authorization", a);
        }
        if let Some(ttl) = ttl {
            request = request.header("TTL", ttl);
        }
        request.send()
    };
    let refusal = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        (
            status,
            r.json::<Value>().await.unwrap()["error"]
                .as_str()
                .unwrap()
                .to_owned(),
        )
    };
    let (status, why) = refusal(post(None, Some("60"), "aes128gcm").await.unwrap()).await;
    assert_eq!((status, why.as_str()), (401, "no Authorization header"));
    let wrong_audience = key
        .authorization("https://elsewhere.example", "mailto:a@b.example", now)
        .unwrap();
    let (status, why) = refusal(
        post(Some(wrong_audience), Some("60"), "aes128gcm")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    assert!(why.contains("aud"), "{why}");
    let expired = key
        .authorization(
            &base,
            "mailto:it@district.example",
            now - chrono::Duration::hours(13),
        )
        .unwrap();
    let (status, why) = refusal(post(Some(expired), Some("60"), "aes128gcm").await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(why.contains("exp"), "{why}");
    let (status, why) = refusal(
        post(Some(good_auth.clone()), None, "aes128gcm")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(why.contains("TTL"), "{why}");
    let (status, why) = refusal(
        post(Some(good_auth.clone()), Some("60"), "aesgcm")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(why.contains("aes128gcm"), "{why}");
    let (status, why) = refusal(
        post(Some(good_auth.clone()), Some("60"), "aes128gcm")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(why.contains("decrypt"), "{why}");
    let tampered = good_auth.replacen("vapid t=", "vapid t=x", 1);
    let (status, _) = refusal(post(Some(tampered), Some("60"), "aes128gcm").await.unwrap()).await;
    assert_eq!(status, 401);
    let unknown = client
        .post(format!("{base}/push/nosuchsubscription"))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(pushed(&base).await["refused"], 8);
}

/// A push service's rate is given under the name its sends go by (`provider_of`), so the
/// dispatchers hold each service to its own rate, shared among them.
#[tokio::test]
async fn each_push_service_has_its_rate_under_the_name_its_sends_go_by() {
    let (base, _) = sandbox().await;
    let fifty = std::num::NonZeroU32::new(50).unwrap();
    let web_push = WebPush::new(WebPushConfig {
        key: key(),
        subject: "mailto:it@district.example".into(),
        allowed_origins: vec![base.clone(), "https://*.notify.windows.com".into()],
        app_url: None,
        timeouts: Timeouts::default(),
        max_per_second: Some(fifty),
        concurrency: 4,
        clock: Arc::new(tidings_core::clock::SystemClock),
    })
    .unwrap();
    let (_, token) = subscribe(&base, None).await;
    let keys = token.split_once('#').unwrap().1;
    let windows = format!("https://wns2-par02p.notify.windows.com/w/?token=abc#{keys}");
    let host = base.trim_start_matches("http://");
    assert_eq!(web_push.provider_of(&token), format!("webpush:{host}"));
    assert_eq!(
        web_push.provider_of(&windows),
        "webpush:*.notify.windows.com"
    );
    let push = Push::new(None, None, Some(web_push)).unwrap();
    assert_eq!(
        push.rate_limits(),
        vec![
            (format!("webpush:{host}"), fifty),
            ("webpush:*.notify.windows.com".to_owned(), fifty)
        ]
    );
    assert_eq!(
        push.provider_of(&format!("webpush:{windows}")),
        "webpush:*.notify.windows.com"
    );
}
