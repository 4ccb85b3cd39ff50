//! Email-event webhooks from the sandbox: SendGrid's and Mailgun's formats, signed so
//! that the published verification keys check them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tidings_channel_adapters::{mailgun, sendgrid};
use tidings_sandbox::server::SandboxConfig;
use tidings_sandbox::{Faults, InProcessProvider};

/// (provider, headers, raw body) of each webhook received.
type Seen = Arc<Mutex<Vec<(String, HeaderMap, Vec<u8>)>>>;

async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    async fn take(
        State(seen): State<Seen>,
        Path(provider): Path<String>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> &'static str {
        seen.lock()
            .unwrap()
            .push((provider, headers, body.to_vec()));
        "ok"
    }
    let app = Router::new()
        .route("/callbacks/email/{provider}", post(take))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

async fn sandbox(callback_base: Option<String>, faults: Faults) -> String {
    let config = SandboxConfig {
        callback_base,
        hang: Duration::from_secs(5),
        mailgun_signing_key: "mg-signing-key".into(),
        ..SandboxConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = tidings_sandbox::server::router(InProcessProvider::new(faults), config);
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

async fn emit(sandbox: &str, event: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{sandbox}/_sandbox/email-events"))
        .json(&event)
        .send()
        .await
        .unwrap()
}

const MESSAGE_ID: &str = "<01a219ca-a0f8-74c4-a4a8-7ec99d6445ee@district.example.org>";

#[tokio::test]
async fn sendgrid_events_are_signed_with_the_published_key() {
    let (base, seen) = receiver().await;
    let sandbox = sandbox(Some(base), Faults::default()).await;
    let keys: Value = reqwest::get(format!("{sandbox}/_sandbox/keys"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = keys["sendgrid_public_key"].as_str().unwrap();
    for (event, expected) in [
        ("delivered", "delivered"),
        ("bounce", "bounce"),
        ("complaint", "spamreport"),
        ("deferred", "deferred"),
    ] {
        let answer = emit(
            &sandbox,
            json!({"provider": "sendgrid", "message_id": MESSAGE_ID, "email": "pat@example.org", "event": event}),
        )
        .await;
        assert_eq!(answer.status(), reqwest::StatusCode::OK);
        let (provider, headers, body) = seen.lock().unwrap().pop().unwrap();
        assert_eq!(provider, "sendgrid");
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        let (timestamp, signature) = (
            header(sendgrid::TIMESTAMP_HEADER),
            header(sendgrid::SIGNATURE_HEADER),
        );
        assert!(sendgrid::verifies(public, &timestamp, &body, &signature));
        let mut tampered = body.clone();
        tampered[1] ^= 1;
        assert!(!sendgrid::verifies(
            public, &timestamp, &tampered, &signature
        ));
        let events: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(events[0]["event"], expected);
        assert_eq!(events[0]["smtp-id"], MESSAGE_ID);
        assert_eq!(events[0]["email"], "pat@example.org");
    }
}

#[tokio::test]
async fn mailgun_events_carry_a_valid_signature() {
    let (base, seen) = receiver().await;
    let sandbox = sandbox(
        Some(base),
        Faults {
            callback_duplicate: 1.0,
            ..Faults::default()
        },
    )
    .await;
    let answer = emit(
        &sandbox,
        json!({"provider": "mailgun", "message_id": MESSAGE_ID, "email": "pat@example.org", "event": "bounce"}),
    )
    .await;
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "the duplicate fault sends it twice");
    let body: Value = serde_json::from_slice(&seen[0].2).unwrap();
    let s = &body["signature"];
    assert!(mailgun::verifies(
        "mg-signing-key",
        s["timestamp"].as_str().unwrap(),
        s["token"].as_str().unwrap(),
        s["signature"].as_str().unwrap(),
    ));
    let data = &body["event-data"];
    assert_eq!(data["event"], "failed");
    assert_eq!(data["severity"], "permanent");
    assert_eq!(
        data["message"]["headers"]["message-id"],
        MESSAGE_ID.trim_matches(|c| c == '<' || c == '>')
    );
}

#[tokio::test]
async fn events_without_a_callback_base_or_with_unknown_names_are_refused() {
    let sandbox_without = sandbox(None, Faults::default()).await;
    let answer = emit(
        &sandbox_without,
        json!({"provider": "sendgrid", "message_id": MESSAGE_ID, "email": "pat@example.org", "event": "delivered"}),
    )
    .await;
    assert_eq!(answer.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let (base, seen) = receiver().await;
    let sandbox = sandbox(Some(base), Faults::default()).await;
    for bad in [
        json!({"provider": "postmark", "message_id": MESSAGE_ID, "email": "p@example.org", "event": "delivered"}),
        json!({"provider": "sendgrid", "message_id": MESSAGE_ID, "email": "p@example.org", "event": "opened"}),
    ] {
        let answer = emit(&sandbox, bad.clone()).await;
        assert_eq!(
            answer.status(),
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}"
        );
    }
    assert!(seen.lock().unwrap().is_empty());
}
