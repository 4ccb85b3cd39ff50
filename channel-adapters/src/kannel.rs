//! SMS through a Kannel gateway (`smsbox`'s `sendsms` HTTP interface), which speaks SMPP
//! (or another protocol) to the carriers itself.
//!
//! Kannel answers a send as soon as it has queued it; what the carrier did comes later as
//! delivery reports to the `dlr-url` given with each send, which carries a secret and the
//! delivery id (Kannel keeps no id of its own that the sender sees, and does not
//! deduplicate). `dlr-mask` 31 asks for every report: delivered (1), failed (2),
//! buffered (4), accepted by the SMSC (8) and rejected by the SMSC (16).

use std::num::NonZeroU32;

use crate::http::{self, Timeouts};
use crate::reports::{delivery_id, field, pairs_json, unreadable, Report, Unreadable};
use crate::{Outgoing, SendOutcome};
use tidings_core::DeliveryEvent;

/// A Kannel `sendsms-user` and where its smsbox listens.
#[derive(Clone)]
pub struct KannelConfig {
    /// e.g. `http://127.0.0.1:13013/cgi-bin/sendsms`.
    pub sendsms_url: String,
    pub username: String,
    pub password: String,
    /// Sender number or id; Kannel's `default-sender` of the user if unset.
    pub from: Option<String>,
    /// Route through this `smsc-id` only.
    pub smsc: Option<String>,
    /// Our public delivery-report URL (`https://…/callbacks/kannel/dlr`), if reports are
    /// wanted, and the secret it carries.
    pub dlr_url: Option<String>,
    pub dlr_secret: String,
    pub timeouts: Timeouts,
    pub max_per_second: Option<NonZeroU32>,
    pub concurrency: usize,
}

impl std::fmt::Debug for KannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KannelConfig")
            .field("sendsms_url", &self.sendsms_url)
            .field("username", &self.username)
            .field("from", &self.from)
            .field("smsc", &self.smsc)
            .field("dlr_url", &self.dlr_url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("kannel: {0}")]
pub struct InvalidConfig(String);

/// The Kannel adapter.
pub struct Kannel {
    config: KannelConfig,
    client: reqwest::Client,
}

impl Kannel {
    pub fn new(config: KannelConfig) -> Result<Self, InvalidConfig> {
        if !(config.sendsms_url.starts_with("http://")
            || config.sendsms_url.starts_with("https://"))
        {
            return Err(InvalidConfig(format!(
                "sendsms_url {:?} is not an http(s) URL",
                config.sendsms_url
            )));
        }
        if config.dlr_url.is_some() && config.dlr_secret.len() < 16 {
            return Err(InvalidConfig(
                "the delivery-report secret must be at least 16 characters".into(),
            ));
        }
        Ok(Self {
            client: http::client(config.timeouts),
            config,
        })
    }

    /// The query of the sendsms request for one send.
    pub fn query(&self, send: &Outgoing) -> Vec<(&'static str, String)> {
        let c = &self.config;
        let text = send.sms_text();
        // Outside the GSM alphabet the message goes as UCS-2 (70 characters a part).
        let unicode = !is_gsm7(&text);
        let mut query = vec![
            ("username", c.username.clone()),
            ("password", c.password.clone()),
            ("to", send.address.clone()),
            ("text", text),
            ("charset", "UTF-8".into()),
        ];
        if unicode {
            query.push(("coding", "2".into()));
        }
        if let Some(from) = &c.from {
            query.push(("from", from.clone()));
        }
        if let Some(smsc) = &c.smsc {
            query.push(("smsc", smsc.clone()));
        }
        if let Some(dlr_url) = c.dlr_url.as_ref().filter(|_| send.delivery_reports) {
            let separator = if dlr_url.contains('?') { '&' } else { '?' };
            // Kannel fills in %d (report type), %A (the SMSC's text) and %T (time).
            query.push(("dlr-mask", "31".into()));
            query.push((
                "dlr-url",
                format!(
                    "{dlr_url}{separator}secret={}&delivery={}&type=%d&answer=%A&at=%T",
                    c.dlr_secret, send.delivery_id
                ),
            ));
        }
        query
    }

    async fn send_one(&self, send: &Outgoing) -> SendOutcome {
        let sent = self
            .client
            .get(&self.config.sendsms_url)
            .query(&self.query(send))
            .send()
            .await;
        match http::answer("kannel", sent).await {
            Ok(a) => classify(a.status, &a.text, send),
            Err(outcome) => outcome,
        }
    }
}

/// Kannel took it: reports will name the delivery, which is its reference.
fn accepted(send: &Outgoing) -> SendOutcome {
    SendOutcome::Sent {
        provider_ref: send.idempotency_key.clone(),
    }
}

/// Classifies smsbox's answer: 202 "0: Accepted for delivery" or "3: Queued for later
/// delivery" are sent; 403 is our account (retried); 503 and other 5xx are Kannel's
/// trouble (retried); other 4xx refuse the message itself.
pub fn classify(status: reqwest::StatusCode, body: &str, send: &Outgoing) -> SendOutcome {
    let error = format!(
        "kannel {}: {}",
        status.as_u16(),
        http::excerpt(body.trim(), 200)
    );
    match status.as_u16() {
        200..=299 => accepted(send),
        401 | 403 => SendOutcome::Transient {
            error: format!("{error} (account or configuration problem)"),
            retry_after: None,
        },
        503 => SendOutcome::Throttled {
            error,
            retry_after: None,
        },
        500..=599 => SendOutcome::transient(error),
        400..=499 => SendOutcome::Permanent { error },
        _ => SendOutcome::InDoubt {
            error: format!("{error} (unexpected status)"),
        },
    }
}

/// Whether `text` can go in the GSM 03.38 default alphabet (with its extension table).
pub fn is_gsm7(text: &str) -> bool {
    const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const EXTENSION: &str = "^{}\\[~]|€\u{c}";
    text.chars()
        .all(|c| BASIC.contains(c) || EXTENSION.contains(c))
}

crate::one_by_one!(Kannel, "kannel", max_per_second: |a| a.config.max_per_second, concurrency: |a| a.config.concurrency);

/// Kannel's report types as delivery events.
pub fn event(kind: &str) -> Result<Option<DeliveryEvent>, String> {
    Ok(match kind {
        "1" => Some(DeliveryEvent::Delivered),
        "2" | "16" => Some(DeliveryEvent::Failed),
        "8" => Some(DeliveryEvent::Accepted),
        "4" => None,
        other => return Err(format!("unknown report type {other:?}")),
    })
}

/// A delivery report: all of it in the query of the URL we gave Kannel.
pub fn delivery_report(query: &[(String, String)]) -> Result<Vec<Report>, Unreadable> {
    let delivery = field(query, "delivery")
        .and_then(delivery_id)
        .ok_or_else(|| unreadable("the report names no delivery"))?;
    let kind = field(query, "type").ok_or_else(|| unreadable("no type"))?;
    let event = event(kind).map_err(unreadable)?;
    let at = field(query, "at").unwrap_or_default();
    let answer = field(query, "answer").map(str::to_owned);
    Ok(vec![Report {
        event_id: format!("{delivery}:{kind}:{at}"),
        event: tidings_core::services::provider_events::ProviderEvent {
            delivery_id: delivery,
            event,
            detail: answer,
            effect: None,
            raw: without_secret(query),
        },
        reference: None,
    }])
}

/// A request's parameters as kept: never the secret.
pub fn without_secret(query: &[(String, String)]) -> serde_json::Value {
    pairs_json(
        &query
            .iter()
            .filter(|(k, _)| k != "secret")
            .cloned()
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn its_report_types_map_to_delivery_events() {
        assert_eq!(event("1"), Ok(Some(DeliveryEvent::Delivered)));
        assert_eq!(event("8"), Ok(Some(DeliveryEvent::Accepted)));
        assert_eq!(event("16"), Ok(Some(DeliveryEvent::Failed)));
        assert_eq!(event("4"), Ok(None));
        assert!(event("3").is_err());
    }

    #[test]
    fn the_gsm_alphabet_is_recognised() {
        assert!(is_gsm7(
            "School closed today! Pick-up at 12:30 (gate B) - 50% @ \"Main\""
        ));
        assert!(!is_gsm7("School closed today – no")); // en dash
        assert!(is_gsm7("Ärger über Öffnungszeiten? 5€ {ok} [x] ~^|\\"));
        assert!(!is_gsm7("Escuela cerrada hoy ¿vale? á"));
        assert!(!is_gsm7("学校今天关闭"));
        assert!(!is_gsm7("Stay safe 🙏"));
    }

    #[test]
    fn delivery_reports_are_asked_for_unless_the_send_is_no_delivery() {
        let kannel = Kannel::new(KannelConfig {
            sendsms_url: "http://127.0.0.1:13013/cgi-bin/sendsms".into(),
            username: "tidings".into(),
            password: "secret".into(),
            from: None,
            smsc: None,
            dlr_url: Some("https://t.example/callbacks/kannel/dlr".into()),
            dlr_secret: "0123456789abcdef".into(),
            timeouts: Timeouts::default(),
            max_per_second: None,
            concurrency: 1,
        })
        .unwrap();
        let id = tidings_core::DeliveryId::new();
        let send = Outgoing {
            delivery_id: id,
            message_id: tidings_core::MessageId::new(),
            idempotency_key: id.to_string(),
            channel: tidings_core::Channel::Sms,
            address: "+15005550006".into(),
            kind: tidings_core::MessageKind::General,
            subject: String::new(),
            body: "Your sign-in code is 123456.".into(),
            language: "en".into(),
            ack: None,
            unsubscribe_url: None,
            delivery_reports: true,
            span: tracing::Span::none(),
        };
        let asks = |send: &Outgoing| kannel.query(send).iter().any(|(k, _)| *k == "dlr-url");
        assert!(asks(&send));
        let code = Outgoing {
            delivery_reports: false,
            ..send
        };
        assert!(!asks(&code));
    }

    proptest::proptest! {
        /// ASCII letters, digits and ordinary punctuation always fit GSM-7; a character
        /// from outside Latin-1 never does.
        #[test]
        fn gsm7_accepts_plain_text_and_refuses_other_scripts(
            plain in "[A-Za-z0-9 .,:;!?'()+-]{0,200}",
            foreign in "[\u{0400}-\u{04FF}\u{4E00}-\u{4FFF}]{1,5}",
        ) {
            proptest::prop_assert!(is_gsm7(&plain));
            let mixed = format!("{plain}{foreign}");
            proptest::prop_assert!(!is_gsm7(&mixed));
        }
    }
}
