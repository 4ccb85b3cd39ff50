//! Email through any SMTP relay (Postfix, Exchange, SES SMTP, SendGrid SMTP…) with lettre:
//! a connection pool, STARTTLS or implicit TLS with rustls, AUTH, and one message per
//! delivery with the deterministic `Message-ID: <delivery-id@domain>` so that bounces and
//! event webhooks name the delivery, and a resent message is recognisably the same one.

use std::num::NonZeroU32;
use std::time::Duration;

use html_escape::{encode_double_quoted_attribute, encode_text};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor};
use tidings_core::MessageKind;

use crate::{AddressFault, Outgoing, SendOutcome};

/// How the connection to the relay is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS: only for a relay on the same machine or a trusted network.
    None,
}

/// One SMTP relay and the sender identity.
#[derive(Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    /// Extra trusted root certificate (PEM) for a relay with a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// User name and password for AUTH, if the relay asks for it.
    pub credentials: Option<(String, String)>,
    /// `From:`, e.g. `Lincoln District <alerts@district.example.org>`.
    pub from: String,
    /// Where guardians unsubscribe by email (`List-Unsubscribe: <mailto:…>`); the
    /// sender's address if unset.
    pub unsubscribe_mailto: Option<String>,
    /// For one send, from connecting to the relay's answer to the message. A relay that
    /// has not answered by then leaves the send in doubt.
    pub timeout: Duration,
    /// Connections kept to the relay.
    pub pool_size: u32,
    pub max_per_second: Option<NonZeroU32>,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("smtp: {0}")]
pub struct InvalidConfig(String);

/// The SMTP adapter.
pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The domain of Message-IDs: the sender's.
    domain: String,
    unsubscribe: String,
    pool_size: u32,
    max_per_second: Option<NonZeroU32>,
    timeout: Duration,
}

impl Smtp {
    pub fn new(config: SmtpConfig) -> Result<Self, InvalidConfig> {
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| InvalidConfig(format!("from {:?} is not an address: {e}", config.from)))?;
        let domain = from.email.domain().to_owned();
        let tls = || {
            let mut params = TlsParameters::builder(config.host.clone());
            if let Some(pem) = &config.ca_pem {
                let cert = Certificate::from_pem(pem).map_err(|e| {
                    InvalidConfig(format!("the CA certificate cannot be read: {e}"))
                })?;
                params = params.add_root_certificate(cert);
            }
            params
                .build_rustls()
                .map_err(|e| InvalidConfig(format!("TLS: {e}")))
        };
        let tls = match config.security {
            Security::StartTls => Tls::Required(tls()?),
            Security::Implicit => Tls::Wrapper(tls()?),
            Security::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(config.timeout))
            .hello_name(ClientId::Domain(domain.clone()))
            .pool_config(PoolConfig::new().max_size(config.pool_size.max(1)));
        if let Some((user, password)) = &config.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        let unsubscribe = config
            .unsubscribe_mailto
            .clone()
            .unwrap_or_else(|| from.email.to_string());
        Ok(Self {
            transport: builder.build(),
            from,
            domain,
            unsubscribe,
            pool_size: config.pool_size.max(1),
            max_per_second: config.max_per_second,
            timeout: config.timeout,
        })
    }

    /// The message for one delivery.
    pub fn message(&self, send: &Outgoing) -> Result<Message, String> {
        let to: Mailbox = send
            .address
            .parse()
            .map_err(|e| format!("smtp: {:?} is not an email address: {e}", send.address))?;
        // RFC 8058: the HTTPS link unsubscribes with one POST; the mailto stays for
        // clients that only know that.
        let mailto = format!("<mailto:{}?subject=unsubscribe>", self.unsubscribe);
        let list_unsubscribe = match &send.unsubscribe_url {
            Some(url) => format!("<{url}>, {mailto}"),
            None => mailto,
        };
        let mut builder = Message::builder()
            .message_id(Some(message_id(send, &self.domain)))
            .from(self.from.clone())
            .to(to)
            .subject(send.subject.clone())
            .date_now()
            .raw_header(raw("List-Unsubscribe", list_unsubscribe))
            .raw_header(raw("Auto-Submitted", "auto-generated".into()));
        if send.unsubscribe_url.is_some() {
            builder = builder.raw_header(raw(
                "List-Unsubscribe-Post",
                "List-Unsubscribe=One-Click".into(),
            ));
        }
        if send.kind == MessageKind::Emergency {
            builder = builder
                .raw_header(raw("Importance", "high".into()))
                .raw_header(raw("X-Priority", "1".into()));
        }
        let (text, html) = bodies(send);
        builder
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(text),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(html),
                    ),
            )
            .map_err(|e| format!("smtp: the message cannot be built: {e}"))
    }

    async fn send_one(&self, send: &Outgoing) -> SendOutcome {
        let message = match self.message(send) {
            Ok(message) => message,
            Err(error) => return SendOutcome::Permanent { error },
        };
        // lettre bounds only the connect by its timeout: a relay that stops answering
        // mid-conversation is bounded here.
        match tokio::time::timeout(self.timeout, self.transport.send(message)).await {
            Ok(Ok(_)) => SendOutcome::Sent {
                provider_ref: message_id(send, &self.domain),
            },
            Ok(Err(e)) => classify(&e),
            Err(_) => SendOutcome::InDoubt {
                error: format!("smtp: no answer within {:?}", self.timeout),
            },
        }
    }
}

/// `<delivery-id@domain>`: the same on every attempt of a delivery.
pub fn message_id(send: &Outgoing, domain: &str) -> String {
    format!("<{}@{domain}>", send.delivery_id)
}

fn raw(name: &'static str, value: String) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
}

/// The text and HTML parts: the body, then the acknowledgment link when there is one.
fn bodies(send: &Outgoing) -> (String, String) {
    let paragraph = "font-size:16px;line-height:1.5";
    let mut text = send.body.clone();
    let mut html = format!(
        "<!doctype html><html lang=\"{}\"><body><p style=\"{paragraph}\">{}</p>",
        encode_double_quoted_attribute(&send.language),
        encode_text(&send.body).replace('\n', "<br>")
    );
    if let Some(url) = send.ack.as_ref().and_then(|ack| ack.url.as_ref()) {
        let words = tidings_core::words::words(&send.language);
        text.push_str(&format!("\n\n{}\n{url}\n", words.please_acknowledge));
        html.push_str(&format!(
            "<p style=\"{paragraph}\">{}</p><p><a href=\"{}\" style=\"display:inline-block;padding:12px 20px;\
             background:#1a56db;color:#ffffff;border-radius:6px;font-size:18px;text-decoration:none\">{}</a></p>",
            encode_text(words.please_acknowledge),
            encode_double_quoted_attribute(url),
            encode_text(words.acknowledge_button),
        ));
    }
    html.push_str("</body></html>");
    (text, html)
}

/// Classifies a failed SMTP send.
///
/// - cannot connect, TLS refused: nothing was sent (transient);
/// - 4xx: the relay will not take it now (transient);
/// - 5xx about authentication (530, 534, 535, 538): the account, not the guardian
///   (transient, so that a fixed password sends everything);
/// - 550–553 with enhanced code 5.1.1, 5.1.2, 5.1.3 or 5.1.10 (no such mailbox or
///   domain): the address is retired;
/// - other 5xx (a policy rejection, 554): permanent;
/// - the conversation broke or timed out mid-way: the relay may have the message (in
///   doubt).
pub fn classify(error: &lettre::transport::smtp::Error) -> SendOutcome {
    let text = format!("smtp: {error}");
    if let Some(code) = error.status() {
        let code: u16 = code.to_string().parse().unwrap_or(0);
        return match code {
            530 | 534 | 535 | 538 => SendOutcome::Transient {
                error: format!("{text} (account or configuration problem)"),
                retry_after: None,
            },
            // Enhanced codes for a mailbox or domain that does not exist.
            550..=553
                if [" 5.1.1 ", " 5.1.2 ", " 5.1.3 ", " 5.1.10 "]
                    .iter()
                    .any(|c| format!(" {text} ").contains(c)) =>
            {
                SendOutcome::Unreachable {
                    error: text,
                    fault: AddressFault::Invalid,
                }
            }
            500..=599 => SendOutcome::Permanent { error: text },
            _ => SendOutcome::transient(text),
        };
    }
    let message = error.to_string();
    if error.is_tls() || message.starts_with("Connection error") || error.is_transport_shutdown() {
        SendOutcome::transient(text)
    } else if error.is_client() {
        SendOutcome::Permanent { error: text }
    } else {
        SendOutcome::InDoubt { error: text }
    }
}

crate::one_by_one!(Smtp, "smtp", max_per_second: |a| a.max_per_second, concurrency: |a| a.pool_size as usize);
