//! The Kannel adapter against a real Kannel (bearerbox + smsbox) whose SMSC is the SMPP
//! simulator: sends, Unicode, and the delivery reports Kannel posts back for delivered,
//! undeliverable and SMSC-rejected messages.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::Router;
use tidings_channel_adapters::http::Timeouts;
use tidings_channel_adapters::kannel::{Kannel, KannelConfig};
use tidings_channel_adapters::testing::KannelGateway;
use tidings_channel_adapters::{ChannelAdapter, Outgoing, SendOutcome};
use tidings_core::{Channel, DeliveryId, MessageId, MessageKind};

const SECRET: &str = "dlr-secret-0123456789";

type Reports = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// Receives Kannel's delivery reports as our callback endpoint would.
async fn report_receiver() -> (String, Reports) {
    let reports: Reports = Arc::default();
    async fn dlr(
        State(reports): State<Reports>,
        Query(q): Query<Vec<(String, String)>>,
    ) -> &'static str {
        reports.lock().unwrap().push(q);
        "ok"
    }
    let app = Router::new()
        .route("/callbacks/kannel/dlr", get(dlr))
        .with_state(reports.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/callbacks/kannel/dlr",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, reports)
}

fn config(gateway: &KannelGateway, dlr_url: Option<String>) -> KannelConfig {
    KannelConfig {
        sendsms_url: gateway.sendsms_url.clone(),
        username: gateway.username.clone(),
        password: gateway.password.clone(),
        from: Some("5550100".into()),
        smsc: None,
        dlr_url,
        dlr_secret: SECRET.into(),
        timeouts: Timeouts {
            connect: Duration::from_secs(2),
            request: Duration::from_secs(5),
        },
        max_per_second: None,
        concurrency: 4,
    }
}

fn sms(to: &str, body: &str) -> Outgoing {
    let delivery_id = DeliveryId::new();
    Outgoing {
        delivery_id,
        message_id: MessageId::new(),
        idempotency_key: delivery_id.to_string(),
        channel: Channel::Sms,
        address: to.into(),
        kind: MessageKind::Emergency,
        subject: String::new(),
        body: body.into(),
        language: "en".into(),
        ack: None,
        unsubscribe_url: None,
        delivery_reports: true,
        span: tracing::Span::none(),
    }
}

fn field<'a>(report: &'a [(String, String)], name: &str) -> &'a str {
    report
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

#[tokio::test]
async fn kannel_sends_through_smpp_and_reports_every_outcome() {
    let gateway = KannelGateway::start().await;
    let (dlr_url, reports) = report_receiver().await;
    let kannel = Kannel::new(config(&gateway, Some(dlr_url))).unwrap();
    let batch = [
        sms(
            "+12025550100",
            "Lockdown at Lincoln Elementary. Students are safe.",
        ),
        sms(
            "+12025550101",
            "Escuela cerrada hoy – ¡quédense en casa! 学校",
        ),
        sms("+12025551313", "This one is undeliverable."),
        sms("+12025559999", "This one the SMSC refuses."),
    ];
    let outcomes = kannel.send(&batch).await;
    for (send, outcome) in batch.iter().zip(&outcomes) {
        assert_eq!(
            outcome,
            &SendOutcome::Sent {
                provider_ref: send.idempotency_key.clone()
            }
        );
    }

    // Final reports: delivered (1), failed (2), rejected by the SMSC (16), each naming
    // its delivery and carrying the secret.
    let final_type = |send: &Outgoing| {
        reports
            .lock()
            .unwrap()
            .iter()
            .filter(|r| field(r, "delivery") == send.delivery_id.to_string())
            .map(|r| field(r, "type").to_owned())
            .find(|t| ["1", "2", "16"].contains(&t.as_str()))
    };
    for _ in 0..300 {
        if batch.iter().all(|s| final_type(s).is_some()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let finals: Vec<Option<String>> = batch.iter().map(final_type).collect();
    assert_eq!(
        finals,
        [Some("1"), Some("1"), Some("2"), Some("16")].map(|t| t.map(str::to_owned)),
        "{:?}",
        reports.lock().unwrap()
    );
    assert!(reports
        .lock()
        .unwrap()
        .iter()
        .all(|r| field(r, "secret") == SECRET));
    let undelivered = reports
        .lock()
        .unwrap()
        .iter()
        .find(|r| field(r, "type") == "2")
        .cloned()
        .unwrap();
    assert!(
        field(&undelivered, "answer").contains("UNDELIV"),
        "{undelivered:?}"
    );

    // The SMSC got three (the fourth it refused); the Unicode one as UCS-2, intact.
    let submitted = gateway.submitted();
    assert_eq!(submitted.len(), 3, "{submitted:?}");
    let unicode = submitted
        .iter()
        .find(|s| s["to"].as_str().unwrap().ends_with("0101"))
        .unwrap();
    assert_eq!(unicode["data_coding"], 8);
    assert_eq!(unicode["text"], batch[1].body);
    let plain = submitted
        .iter()
        .find(|s| s["to"].as_str().unwrap().ends_with("0100"))
        .unwrap();
    assert_eq!(plain["text"], batch[0].body);
}

#[tokio::test]
async fn a_wrong_password_is_retried_and_a_missing_gateway_is_transient() {
    let gateway = KannelGateway::start().await;
    let wrong = Kannel::new(KannelConfig {
        password: "wrong".into(),
        ..config(&gateway, None)
    })
    .unwrap();
    let outcome = wrong.send(&[sms("+12025550100", "Hello")]).await;
    assert!(
        matches!(&outcome[0], SendOutcome::Transient { error, .. } if error.contains("403")),
        "{outcome:?}"
    );
    assert!(gateway.submitted().is_empty());

    let nowhere = Kannel::new(KannelConfig {
        sendsms_url: "http://127.0.0.1:1/cgi-bin/sendsms".into(),
        ..config(&gateway, None)
    })
    .unwrap();
    let outcome = nowhere.send(&[sms("+12025550100", "Hello")]).await;
    assert!(
        matches!(&outcome[0], SendOutcome::Transient { .. }),
        "{outcome:?}"
    );
}

#[test]
fn a_short_report_secret_is_refused() {
    let config = KannelConfig {
        sendsms_url: "http://127.0.0.1:13013/cgi-bin/sendsms".into(),
        username: "u".into(),
        password: "p".into(),
        from: None,
        smsc: None,
        dlr_url: Some("https://tidings.example.org/callbacks/kannel/dlr".into()),
        dlr_secret: "short".into(),
        timeouts: Timeouts::default(),
        max_per_second: None,
        concurrency: 1,
    };
    assert!(Kannel::new(config).is_err());
}
