//! What a provider's webhook reports about sends, as each provider's module reads it
//! ([`crate::twilio::status_callback`], [`crate::kannel::delivery_report`],
//! [`crate::sendgrid::events`], [`crate::mailgun::webhook_event`]): pure functions of a
//! request whose signature was checked before, so that anything a provider or an
//! attacker could send is read without a panic — the events, or why the request cannot be
//! read (fuzzed in `fuzz/`).

use serde_json::Value;
use tidings_core::services::provider_events::ProviderEvent;
use tidings_core::DeliveryId;

/// One event a provider reported, before it is kept.
#[derive(Debug, Clone)]
pub struct Report {
    /// The provider's id of the event (the inbox's key).
    pub event_id: String,
    pub event: ProviderEvent,
    /// The provider's reference of the message it names (a message SID, a Message-ID),
    /// to match the delivery's.
    pub reference: Option<String>,
}

impl Report {
    /// The provider's id of the event.
    pub fn event_id(&self) -> &str {
        &self.event_id
    }
}

/// Why a verified request cannot be read as the report it claims to be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

pub(crate) fn unreadable(why: impl Into<String>) -> Unreadable {
    Unreadable(why.into())
}

/// The delivery id named in a query or a Message-ID (`<id@domain>`).
pub fn delivery_id(text: &str) -> Option<DeliveryId> {
    let id = text.trim().trim_start_matches('<');
    let id = id.split('@').next()?;
    id.parse::<DeliveryId>().ok()
}

/// The value of the first `name` among form or query pairs.
pub fn field<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Form or query pairs as a JSON object, as a report's raw fields are kept.
pub fn pairs_json(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_read_from_urls_and_message_ids() {
        let id = DeliveryId::new();
        assert_eq!(delivery_id(&id.to_string()), Some(id));
        assert_eq!(
            delivery_id(&format!("<{id}@district.example.org>")),
            Some(id)
        );
        assert_eq!(delivery_id(&format!("{id}@district.example.org")), Some(id));
        assert_eq!(delivery_id("<not-ours@elsewhere.example>"), None);
    }
}
