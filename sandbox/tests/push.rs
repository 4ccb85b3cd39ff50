//! The APNs and FCM adapters against the sandbox's APNs (HTTP/2) and FCM endpoints: the
//! same code paths as production, with real signed tokens.

use std::sync::Arc;
use std::time::Duration;

use tidings_channel_adapters::apns::{Apns, ApnsConfig};
use tidings_channel_adapters::fcm::{Fcm, FcmConfig};
use tidings_channel_adapters::http::Timeouts;
use tidings_channel_adapters::push::Push;
use tidings_channel_adapters::{AddressFault, ChannelAdapter, Outgoing, SendOutcome};
use tidings_core::clock::SystemClock;
use tidings_core::{Channel, DeliveryId, MessageId, MessageKind};
use tidings_sandbox::server::SandboxConfig;
use tidings_sandbox::{Faults, InProcessProvider};

const GOOD: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
const GONE: &str = "dead00d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

/// A P-256 signing key as Apple hands it out (PKCS#8 PEM), and its public point.
fn apple_key() -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    (key.serialize_pem(), key.public_key_raw().to_vec())
}

async fn sandbox(apns_public_key: Option<Vec<u8>>) -> (String, InProcessProvider) {
    let provider = InProcessProvider::new(Faults::default());
    let config = SandboxConfig {
        apns_public_key,
        hang: Duration::from_secs(30),
        ..SandboxConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = tidings_sandbox::server::router(provider.clone(), config);
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, provider)
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(2),
        request: Duration::from_millis(800),
    }
}

fn apns(base: &str, key_pem: String) -> Apns {
    Apns::new(ApnsConfig {
        key_pem,
        key_id: "ABC123DEFG".into(),
        team_id: "DEF123GHIJ".into(),
        topic: "org.example.tidings".into(),
        endpoint: base.into(),
        timeouts: timeouts(),
        max_per_second: None,
        concurrency: 4,
        clock: Arc::new(SystemClock),
    })
    .unwrap()
}

fn push(address: &str, kind: MessageKind) -> Outgoing {
    let delivery_id = DeliveryId::new();
    Outgoing {
        delivery_id,
        message_id: MessageId::new(),
        idempotency_key: delivery_id.to_string(),
        channel: Channel::Push,
        address: address.into(),
        kind,
        subject: "Lockdown".into(),
        body: "All schools are in lockdown. Students are safe.".into(),
        language: "en".into(),
        ack: None,
        unsubscribe_url: None,
        delivery_reports: true,
        span: tracing::Span::none(),
    }
}

#[tokio::test]
async fn apns_sends_over_http2_with_a_verified_provider_token() {
    let (key, public) = apple_key();
    let (base, provider) = sandbox(Some(public)).await;
    let adapter = apns(&base, key);
    let batch = [
        push(GOOD, MessageKind::Emergency),
        push(GONE, MessageKind::General),
        push("not-a-token", MessageKind::General),
    ];
    let outcomes = adapter.send(&batch).await;
    assert_eq!(
        outcomes[0],
        SendOutcome::Sent {
            provider_ref: batch[0].delivery_id.to_string()
        }
    );
    assert!(
        matches!(&outcomes[1], SendOutcome::Unreachable { error, fault: AddressFault::Gone } if error.contains("410") && error.contains("Unregistered")),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], SendOutcome::Unreachable { error, fault: AddressFault::Invalid } if error.contains("BadDeviceToken")),
        "{outcomes:?}"
    );
    let received = provider.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].delivery_id, Some(batch[0].delivery_id));
    assert_eq!(received[0].body, batch[0].body);
    assert_eq!(received[0].address, GOOD);
}

#[tokio::test]
async fn apns_refuses_a_token_signed_with_another_key_and_http1() {
    let (_, public) = apple_key();
    let (other_key, _) = apple_key();
    let (base, provider) = sandbox(Some(public)).await;
    let outcome = apns(&base, other_key)
        .send(&[push(GOOD, MessageKind::General)])
        .await;
    assert!(
        matches!(&outcome[0], SendOutcome::Transient { error, .. } if error.contains("InvalidProviderToken")),
        "{outcome:?}"
    );
    assert!(provider.received().is_empty());
    // Apple speaks HTTP/2 only; so does the sandbox, which is how the test above knows
    // the adapter does.
    let http1 = reqwest::Client::new()
        .post(format!("{base}/3/device/{GOOD}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(
        http1.status(),
        reqwest::StatusCode::HTTP_VERSION_NOT_SUPPORTED
    );
}

/// A service-account key file whose token endpoint is the sandbox's.
fn service_account(base: &str) -> tidings_channel_adapters::fcm::ServiceAccount {
    Fcm::service_account(&tidings_sandbox::server::fcm_service_account(base)).unwrap()
}

fn fcm(base: &str) -> Fcm {
    Fcm::new(FcmConfig {
        account: service_account(base),
        api_base: base.into(),
        timeouts: timeouts(),
        max_per_second: None,
        concurrency: 4,
        clock: Arc::new(SystemClock),
    })
    .unwrap()
}

#[tokio::test]
async fn fcm_exchanges_a_signed_assertion_for_a_token_and_sends() {
    let (base, provider) = sandbox(None).await;
    let adapter = fcm(&base);
    let device = "fGc4Kq9RTx2examplefcmregistrationtoken0123456789";
    let batch = [
        push(device, MessageKind::Emergency),
        push("dead-device-token-0123456789abcdef", MessageKind::General),
        push("short", MessageKind::General),
    ];
    let outcomes = adapter.send(&batch).await;
    assert!(
        matches!(&outcomes[0], SendOutcome::Sent { provider_ref } if provider_ref.starts_with("projects/tidings-test/messages/")),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[1], SendOutcome::Unreachable { error, fault: AddressFault::Gone } if error.contains("UNREGISTERED")),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[2], SendOutcome::Permanent { error } if error.contains("INVALID_ARGUMENT")),
        "{outcomes:?}"
    );
    let received = provider.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].delivery_id, Some(batch[0].delivery_id));

    provider.set_faults(Faults {
        throttled: 1.0,
        ..Faults::default()
    });
    let outcome = adapter.send(&[push(device, MessageKind::General)]).await;
    assert!(
        matches!(&outcome[0], SendOutcome::Throttled { error, retry_after: Some(after) } if error.contains("QUOTA_EXCEEDED") && *after == Duration::from_secs(1)),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn an_fcm_token_endpoint_that_refuses_is_the_accounts_problem() {
    let (base, _) = sandbox(None).await;
    let mut account = service_account(&base);
    account.token_uri = format!("{base}/not-the-token-endpoint");
    let adapter = Fcm::new(FcmConfig {
        account,
        api_base: base.clone(),
        timeouts: timeouts(),
        max_per_second: None,
        concurrency: 1,
        clock: Arc::new(SystemClock),
    })
    .unwrap();
    let outcome = adapter
        .send(&[push(
            "fGc4Kq9RTx2examplefcmregistrationtoken",
            MessageKind::General,
        )])
        .await;
    assert!(
        matches!(&outcome[0], SendOutcome::Transient { error, .. } if error.contains("access token")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn push_goes_to_the_platform_of_each_device() {
    let (key, public) = apple_key();
    let (base, provider) = sandbox(Some(public)).await;
    let router = Push::new(Some(apns(&base, key)), Some(fcm(&base)), None).unwrap();
    let batch = [
        push(
            &format!("fcm:{}", "fGc4Kq9RTx2examplefcmregistrationtoken"),
            MessageKind::General,
        ),
        push(&format!("apns:{GOOD}"), MessageKind::General),
        push("webpush:xyz", MessageKind::General),
        push(&format!("apns:{GONE}"), MessageKind::General),
    ];
    let outcomes = router.send(&batch).await;
    assert!(
        matches!(&outcomes[0], SendOutcome::Sent { provider_ref } if provider_ref.starts_with("projects/")),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[1],
        SendOutcome::Sent {
            provider_ref: batch[1].delivery_id.to_string()
        }
    );
    assert!(
        matches!(&outcomes[2], SendOutcome::Permanent { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(&outcomes[3], SendOutcome::Unreachable { error, fault: AddressFault::Gone } if error.contains("Unregistered")),
        "{outcomes:?}"
    );
    let providers: Vec<String> = provider
        .received()
        .into_iter()
        .map(|r| r.provider)
        .collect();
    assert_eq!(providers.len(), 2);
    assert!(providers.contains(&"apns".to_owned()) && providers.contains(&"fcm".to_owned()));

    // Only APNs configured: Android devices are refused with the reason.
    let (key, _) = apple_key();
    let apple_only = Push::new(Some(apns(&base, key)), None, None).unwrap();
    let outcome = apple_only.send(&batch[..1]).await;
    assert!(
        matches!(&outcome[0], SendOutcome::Permanent { error } if error.contains("fcm")),
        "{outcome:?}"
    );
    assert!(Push::new(None, None, None).is_none());
    // Each platform has its own circuit breaker: the dispatcher keys it by provider_of.
    assert_eq!(router.provider(), "push");
    assert_eq!(router.provider_of(&format!("apns:{GOOD}")), "apns");
    assert_eq!(router.provider_of("fcm:fGc4Kq9RTx2example"), "fcm");
    // A browser's subscription is a platform of its own, configured or not.
    assert_eq!(router.provider_of("webpush:xyz"), "webpush");
    assert_eq!(router.provider_of("mqtt:xyz"), "push");
    assert_eq!(apple_only.provider_of(&format!("apns:{GOOD}")), "apns");
}
