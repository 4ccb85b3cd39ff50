//! The Twilio adapter against the sandbox's Twilio API over HTTP, and against servers
//! that misbehave on the wire: every answer ends in one classified outcome.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Form, Router};
use tidings_channel_adapters::http::Timeouts;
use tidings_channel_adapters::twilio::{self, Twilio, TwilioConfig};
use tidings_channel_adapters::{AddressFault, ChannelAdapter, Outgoing, SendOutcome};
use tidings_core::{Channel, DeliveryId, MessageId, MessageKind};
use tidings_sandbox::server::SandboxConfig;
use tidings_sandbox::{Faults, InProcessProvider};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKEN: &str = "test-auth-token";
const PUBLIC_CALLBACK: &str = "https://tidings.example.org/callbacks/twilio/status";

struct Sandbox {
    base: String,
    provider: InProcessProvider,
}

async fn sandbox(faults: Faults, callback_base: Option<String>) -> Sandbox {
    let provider = InProcessProvider::new(faults);
    let config = SandboxConfig {
        twilio_auth_token: TOKEN.into(),
        callback_base,
        hang: Duration::from_secs(30),
        ..SandboxConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = tidings_sandbox::server::router(provider.clone(), config);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Sandbox { base, provider }
}

fn config(api_base: &str) -> TwilioConfig {
    TwilioConfig {
        account_sid: "AC00000000000000000000000000000001".into(),
        api_key_sid: None,
        secret: TOKEN.into(),
        from: Some("+15005550006".into()),
        messaging_service_sid: None,
        api_base: api_base.into(),
        status_callback: Some(PUBLIC_CALLBACK.into()),
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_millis(500),
        },
        max_per_second: None,
        concurrency: 4,
    }
}

fn sms(to: &str) -> Outgoing {
    let delivery_id = DeliveryId::new();
    Outgoing {
        delivery_id,
        message_id: MessageId::new(),
        idempotency_key: delivery_id.to_string(),
        channel: Channel::Sms,
        address: to.into(),
        kind: MessageKind::Emergency,
        subject: String::new(),
        body: "Lockdown at Lincoln Elementary. Students are safe.".into(),
        language: "en".into(),
        ack: None,
        unsubscribe_url: None,
        delivery_reports: true,
        span: tracing::Span::none(),
    }
}

/// Status callbacks as our service receives them: the form, and whether the signature
/// verifies against the public URL.
type Callbacks = Arc<Mutex<Vec<(Vec<(String, String)>, bool)>>>;

async fn callback_receiver() -> (String, Callbacks) {
    let seen: Callbacks = Arc::default();
    async fn status(
        State(seen): State<Callbacks>,
        axum::extract::OriginalUri(uri): axum::extract::OriginalUri,
        headers: HeaderMap,
        Form(form): Form<Vec<(String, String)>>,
    ) -> StatusCode {
        let public = format!("https://tidings.example.org{uri}");
        let given = headers
            .get("X-Twilio-Signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let valid = twilio::signature(TOKEN, &public, &form) == given;
        seen.lock().unwrap().push((form, valid));
        StatusCode::NO_CONTENT
    }
    let app = Router::new()
        .route("/callbacks/twilio/status", post(status))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

fn field<'a>(form: &'a [(String, String)], name: &str) -> &'a str {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not reached in 5 s");
}

#[tokio::test]
async fn sends_are_accepted_and_reported_by_signed_status_callbacks() {
    let (receiver, callbacks) = callback_receiver().await;
    let sandbox = sandbox(Faults::default(), Some(receiver)).await;
    let adapter = Twilio::new(config(&sandbox.base)).unwrap();
    let batch: Vec<Outgoing> = (0..3).map(|n| sms(&format!("+1202555010{n}"))).collect();
    let outcomes = adapter.send(&batch).await;
    let sids: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            SendOutcome::Sent { provider_ref } => provider_ref.clone(),
            other => panic!("not sent: {other:?}"),
        })
        .collect();
    assert!(sids.iter().all(|s| s.starts_with("SM") && s.len() == 34));

    let received = sandbox.provider.received();
    assert_eq!(received.len(), 3);
    for (send, got) in batch.iter().zip(&received) {
        assert_eq!(got.delivery_id, Some(send.delivery_id));
        assert_eq!(got.address, send.address);
        assert_eq!(got.body, send.body);
    }
    assert_eq!(sandbox.provider.duplicates(), 0);

    // Two callbacks per message (sent, delivered), each signed over the public URL that
    // names the delivery, and each naming the sid the send returned.
    until(|| callbacks.lock().unwrap().len() == 6).await;
    let callbacks = callbacks.lock().unwrap().clone();
    assert!(callbacks.iter().all(|(_, valid)| *valid));
    for (send, sid) in batch.iter().zip(&sids) {
        let mut statuses: Vec<&str> = callbacks
            .iter()
            .filter(|(form, _)| field(form, "MessageSid") == sid)
            .map(|(form, _)| field(form, "MessageStatus"))
            .collect();
        statuses.sort();
        assert_eq!(statuses, ["delivered", "sent"], "{}", send.delivery_id);
    }
}

#[tokio::test]
async fn twilios_refusals_are_classified() {
    let sandbox = sandbox(Faults::default(), None).await;
    let adapter = Twilio::new(config(&sandbox.base)).unwrap();
    let batch = [
        sms("+15005550001"),
        sms("+15005550009"),
        sms("+15005550004"),
        sms("+1555"),
        sms("not a number"),
        sms("+15005550002"),
    ];
    let outcomes = adapter.send(&batch).await;
    let expected = [
        ("21211", Some(AddressFault::Invalid)),
        ("21614", Some(AddressFault::Invalid)),
        ("21610", Some(AddressFault::OptedOut)),
        ("21211", Some(AddressFault::Invalid)),
        ("21211", Some(AddressFault::Invalid)),
        // Unreachable now is not a bad number: the delivery fails, the number stays.
        ("21612", None),
    ];
    for (outcome, (code, fault)) in outcomes.iter().zip(expected) {
        let ok = match (outcome, fault) {
            (SendOutcome::Unreachable { error, fault: f }, Some(fault)) => {
                error.contains(code) && *f == fault
            }
            (SendOutcome::Permanent { error }, None) => error.contains(code),
            _ => false,
        };
        assert!(ok, "{outcome:?} should be {code} {fault:?}");
    }
    assert!(sandbox.provider.received().is_empty());

    // Wrong credentials are the account's problem, not the guardian's: retried.
    let wrong = Twilio::new(TwilioConfig {
        secret: "not-the-token".into(),
        ..config(&sandbox.base)
    })
    .unwrap();
    let outcome = wrong.send(&[sms("+12025550100")]).await;
    assert!(
        matches!(&outcome[0], SendOutcome::Transient { error, .. } if error.contains("20003")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn provider_faults_are_transient_throttled_or_in_doubt() {
    let sandbox = sandbox(
        Faults {
            transient: 1.0,
            ..Faults::default()
        },
        None,
    )
    .await;
    let adapter = Twilio::new(config(&sandbox.base)).unwrap();
    let outcome = adapter.send(&[sms("+12025550100")]).await;
    assert!(
        matches!(&outcome[0], SendOutcome::Transient { error, retry_after: None } if error.contains("500")),
        "{outcome:?}"
    );

    sandbox.provider.set_faults(Faults {
        throttled: 1.0,
        ..Faults::default()
    });
    let outcome = adapter.send(&[sms("+12025550100")]).await;
    assert_eq!(
        outcome[0],
        SendOutcome::Throttled {
            error: "twilio 429 error 20429: Too Many Requests".into(),
            retry_after: Some(Duration::from_secs(1)),
        }
    );
    assert!(sandbox.provider.received().is_empty());

    // Taken, never answered: in doubt, and the sandbox has it — sending it again is the
    // duplicate the dispatcher counts.
    sandbox.provider.set_faults(Faults {
        in_doubt: 1.0,
        ..Faults::default()
    });
    let send = sms("+12025550100");
    let outcome = adapter.send(std::slice::from_ref(&send)).await;
    assert!(
        matches!(&outcome[0], SendOutcome::InDoubt { .. }),
        "{outcome:?}"
    );
    sandbox.provider.set_faults(Faults::default());
    let outcome = adapter.send(std::slice::from_ref(&send)).await;
    assert!(matches!(&outcome[0], SendOutcome::Sent { .. }));
    assert_eq!(sandbox.provider.received().len(), 2);
    assert_eq!(sandbox.provider.duplicates(), 1);
}

#[tokio::test]
async fn callback_faults_duplicate_reorder_and_drop() {
    let (receiver, callbacks) = callback_receiver().await;
    let sandbox = sandbox(
        Faults {
            callback_duplicate: 1.0,
            callback_reorder: 1.0,
            ..Faults::default()
        },
        Some(receiver),
    )
    .await;
    let adapter = Twilio::new(config(&sandbox.base)).unwrap();
    adapter.send(&[sms("+12025550100")]).await;
    until(|| callbacks.lock().unwrap().len() == 3).await;
    let statuses: Vec<String> = callbacks
        .lock()
        .unwrap()
        .iter()
        .map(|(form, _)| field(form, "MessageStatus").to_owned())
        .collect();
    assert_eq!(statuses, ["delivered", "sent", "sent"]);

    callbacks.lock().unwrap().clear();
    sandbox.provider.set_faults(Faults {
        callback_drop: 1.0,
        undelivered: 1.0,
        ..Faults::default()
    });
    let finished = sandbox.provider.reports_finished();
    adapter.send(&[sms("+12025550100")]).await;
    // The sandbox says when this message's report is over: everything not dropped
    // has been posted by then, so nothing more can arrive.
    until(|| sandbox.provider.reports_finished() == finished + 1).await;
    let seen = callbacks.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(field(&seen[0].0, "MessageStatus"), "undelivered");
    assert_eq!(field(&seen[0].0, "ErrorCode"), "30003");
}

/// A server that answers every connection with `answer` (then closes), or never answers
/// when `answer` is `None`.
async fn raw_server(answer: Option<&'static [u8]>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let _ = socket.read(&mut buf).await;
                match answer {
                    Some(bytes) => {
                        let _ = socket.write_all(bytes).await;
                        let _ = socket.shutdown().await;
                    }
                    None => tokio::time::sleep(Duration::from_secs(30)).await,
                }
            });
        }
    });
    base
}

#[tokio::test]
async fn broken_servers_are_classified_and_never_panic() {
    let one = |base: String| async move {
        let adapter = Twilio::new(config(&base)).unwrap();
        adapter.send(&[sms("+12025550100")]).await.remove(0)
    };
    // Nothing listens: nothing was sent.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        base
    };
    assert!(
        matches!(one(closed).await, SendOutcome::Transient { ref error, .. } if error.contains("cannot connect"))
    );
    // TLS spoken to a server that does not: the handshake fails before anything is sent.
    let plain = raw_server(Some(b"HTTP/1.1 400 Bad Request\r\n\r\n")).await;
    let https = plain.replace("http://", "https://");
    assert!(matches!(one(https).await, SendOutcome::Transient { .. }));
    // Hangs after taking the request: in doubt.
    let hung = raw_server(None).await;
    assert!(
        matches!(one(hung).await, SendOutcome::InDoubt { ref error } if error.contains("no answer in time"))
    );
    // Closes without answering: in doubt.
    let closes = raw_server(Some(b"")).await;
    assert!(matches!(one(closes).await, SendOutcome::InDoubt { .. }));
    // Not HTTP at all.
    let garbage = raw_server(Some(b"\x00\x01garbage\r\n\r\n")).await;
    assert!(matches!(one(garbage).await, SendOutcome::InDoubt { .. }));
    // Accepted, with a body cut short: Twilio has it.
    let truncated = raw_server(Some(
        b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"sid\":\"SM01",
    ))
    .await;
    assert!(matches!(one(truncated).await, SendOutcome::Sent { .. }));
    // An HTML error page from a proxy in front of the API.
    let proxy = raw_server(Some(
        b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 21\r\n\r\n<html>bad gateway</ht",
    ))
    .await;
    assert!(
        matches!(one(proxy).await, SendOutcome::Transient { ref error, .. } if error.contains("502"))
    );
}

#[tokio::test]
async fn faults_are_set_over_http_and_nonsense_is_refused() {
    let sandbox = sandbox(Faults::default(), None).await;
    let client = reqwest::Client::new();
    let url = format!("{}/_sandbox/faults", sandbox.base);
    let set = client
        .put(&url)
        .json(&serde_json::json!({"permanent": 1.0, "seed": 9}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), reqwest::StatusCode::OK);
    let now: Faults = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(now.permanent, 1.0);
    assert_eq!(now.seed, 9);
    let adapter = Twilio::new(config(&sandbox.base)).unwrap();
    let outcome = adapter.send(&[sms("+12025550100")]).await;
    assert!(
        matches!(&outcome[0], SendOutcome::Unreachable { error, .. } if error.contains("21211"))
    );

    for nonsense in [
        serde_json::json!({"transient": 0.7, "permanent": 0.7}),
        serde_json::json!({"transient": -1}),
        serde_json::json!({"no_such_fault": 1}),
    ] {
        let refused = client.put(&url).json(&nonsense).send().await.unwrap();
        assert!(refused.status().is_client_error(), "{nonsense}");
    }
    let unchanged: Faults = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(unchanged, now);
}
