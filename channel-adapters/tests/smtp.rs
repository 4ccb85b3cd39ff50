//! The SMTP adapter against a real SMTP server (aiosmtpd, `scripts/smtp-test-server`,
//! installed by `scripts/test-services`), started per test on a free loopback port: plain,
//! STARTTLS with AUTH, implicit TLS, and every answer class.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tidings_channel_adapters::smtp::{Security, Smtp, SmtpConfig};
use tidings_channel_adapters::testing::SmtpServer;
use tidings_channel_adapters::{AddressFault, ChannelAdapter, Outgoing, SendOutcome};
use tidings_core::{Channel, DeliveryId, MessageId, MessageKind};

fn config(port: u16) -> SmtpConfig {
    SmtpConfig {
        host: "localhost".into(),
        port,
        security: Security::None,
        ca_pem: None,
        credentials: None,
        from: "Lincoln District <alerts@district.example.org>".into(),
        unsubscribe_mailto: None,
        timeout: Duration::from_secs(2),
        pool_size: 2,
        max_per_second: None,
    }
}

fn email(to: &str, kind: MessageKind) -> Outgoing {
    let delivery_id = DeliveryId::new();
    Outgoing {
        delivery_id,
        message_id: MessageId::new(),
        idempotency_key: delivery_id.to_string(),
        channel: Channel::Email,
        address: to.into(),
        kind,
        subject: "Snow day: schools closed Friday".into(),
        body: "All schools are closed on Friday because of snow.\nStay safe & warm <3".into(),
        language: "en".into(),
        ack: None,
        unsubscribe_url: None,
        delivery_reports: true,
        span: tracing::Span::none(),
    }
}

/// A self-signed certificate for `localhost`: (certificate PEM file, key PEM file, PEM).
fn certificate(dir: &Path) -> (PathBuf, PathBuf, Vec<u8>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.key_pair.serialize_pem()).unwrap();
    (cert, key, generated.cert.pem().into_bytes())
}

#[tokio::test]
async fn each_recipient_gets_its_own_classified_outcome() {
    let server = SmtpServer::start(&[]).await;
    let smtp = Smtp::new(config(server.port)).unwrap();
    let batch = [
        email("pat.guardian@example.org", MessageKind::Emergency),
        email("busy+451@example.org", MessageKind::General),
        email("gone+550@example.org", MessageKind::General),
        email("not an address", MessageKind::General),
    ];
    let outcomes = smtp.send(&batch).await;
    assert_eq!(
        outcomes[0],
        SendOutcome::Sent {
            provider_ref: format!("<{}@district.example.org>", batch[0].delivery_id)
        }
    );
    assert!(
        matches!(&outcomes[1], SendOutcome::Transient { error, .. } if error.contains("451")),
        "{:?}",
        outcomes[1]
    );
    assert!(
        matches!(&outcomes[2], SendOutcome::Unreachable { error, fault: AddressFault::Invalid } if error.contains("550")),
        "{:?}",
        outcomes[2]
    );
    assert!(
        matches!(&outcomes[3], SendOutcome::Permanent { .. }),
        "{:?}",
        outcomes[3]
    );

    let messages = server.messages();
    assert_eq!(messages.len(), 1, "only the accepted message was kept");
    // Quoted-printable soft breaks and `=3D` undone.
    let m = &messages[0]
        .replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=");
    for header in [
        format!(
            "Message-ID: <{}@district.example.org>",
            batch[0].delivery_id
        ),
        "From: \"Lincoln District\" <alerts@district.example.org>".to_owned(),
        "To: pat.guardian@example.org".to_owned(),
        "Subject: Snow day: schools closed Friday".to_owned(),
        "List-Unsubscribe: <mailto:alerts@district.example.org?subject=unsubscribe>".to_owned(),
        "Importance: high".to_owned(),
        "Content-Type: multipart/alternative".to_owned(),
        "Content-Type: text/plain; charset=utf-8".to_owned(),
        "Content-Type: text/html; charset=utf-8".to_owned(),
    ] {
        assert!(m.contains(&header), "{header} missing from\n{m}");
    }
    assert!(
        m.contains("Stay safe &amp; warm &lt;3"),
        "HTML is escaped:\n{m}"
    );
}

#[tokio::test]
async fn starttls_with_auth_sends_and_an_untrusted_certificate_is_retried() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, pem) = certificate(certs.path());
    let server = SmtpServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--require-tls",
        "--user",
        "tidings",
        "--password",
        "relay-secret",
    ])
    .await;
    let good = SmtpConfig {
        security: Security::StartTls,
        ca_pem: Some(pem.clone()),
        credentials: Some(("tidings".into(), "relay-secret".into())),
        ..config(server.port)
    };
    let sent = Smtp::new(good.clone())
        .unwrap()
        .send(&[email("pat@example.org", MessageKind::General)])
        .await;
    assert!(matches!(sent[0], SendOutcome::Sent { .. }), "{sent:?}");

    // Not our CA: the handshake fails before anything is sent.
    let untrusted = SmtpConfig {
        ca_pem: None,
        ..good
    };
    let refused = Smtp::new(untrusted)
        .unwrap()
        .send(&[email("pat@example.org", MessageKind::General)])
        .await;
    assert!(
        matches!(&refused[0], SendOutcome::Transient { error, .. } if error.contains("UnknownIssuer")),
        "{refused:?}"
    );
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn a_wrong_password_is_the_accounts_problem_and_retried() {
    let server = SmtpServer::start(&["--user", "tidings", "--password", "relay-secret"]).await;
    let wrong_password = SmtpConfig {
        credentials: Some(("tidings".into(), "wrong".into())),
        ..config(server.port)
    };
    let refused = Smtp::new(wrong_password)
        .unwrap()
        .send(&[email("pat@example.org", MessageKind::General)])
        .await;
    assert!(
        matches!(&refused[0], SendOutcome::Transient { error, .. } if error.contains("535") && error.contains("configuration")),
        "{refused:?}"
    );
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn implicit_tls_sends() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, pem) = certificate(certs.path());
    let server = SmtpServer::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--implicit-tls",
    ])
    .await;
    let smtp = Smtp::new(SmtpConfig {
        security: Security::Implicit,
        ca_pem: Some(pem),
        ..config(server.port)
    })
    .unwrap();
    let sent = smtp
        .send(&[email("pat@example.org", MessageKind::General)])
        .await;
    assert!(matches!(sent[0], SendOutcome::Sent { .. }), "{sent:?}");
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn a_relay_that_never_answers_the_data_leaves_the_send_in_doubt() {
    let server = SmtpServer::start(&[]).await;
    let smtp = Smtp::new(SmtpConfig {
        timeout: Duration::from_millis(500),
        ..config(server.port)
    })
    .unwrap();
    let outcome = smtp
        .send(&[email("slow+hang@example.org", MessageKind::General)])
        .await;
    assert!(
        matches!(&outcome[0], SendOutcome::InDoubt { .. }),
        "{outcome:?}"
    );
    // The relay has it: a retry would be a duplicate, which is why it is in doubt.
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn nothing_listening_is_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let smtp = Smtp::new(SmtpConfig {
        host: "127.0.0.1".into(),
        ..config(port)
    })
    .unwrap();
    let outcome = smtp
        .send(&[email("pat@example.org", MessageKind::General)])
        .await;
    assert!(
        matches!(&outcome[0], SendOutcome::Transient { .. }),
        "{outcome:?}"
    );
}

#[test]
fn a_sender_that_is_not_an_address_is_refused() {
    let bad = SmtpConfig {
        from: "District alerts".into(),
        ..config(25)
    };
    assert!(Smtp::new(bad).is_err());
}
