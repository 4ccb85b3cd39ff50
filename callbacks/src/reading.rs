//! What a verified request says: the events of a Twilio status callback, a Kannel
//! delivery report, a SendGrid batch or a Mailgun event, read from what the provider
//! sent. Pure functions of the request's parts (the signature is checked before), so
//! that anything a provider or an attacker could send is read without a panic — a
//! refusal with its reason, or the events (fuzzed in `fuzz/`).

use axum::http::StatusCode;
use serde_json::Value;
use tidings_channel_adapters::{kannel, mailgun, sendgrid, twilio};
use tidings_core::services::provider_events::ProviderEvent;
use tidings_core::DeliveryId;

use crate::{field, pairs_json, refuse, Incoming, Refusal};

/// The delivery id named in a query or a Message-ID (`<id@domain>`).
pub fn delivery_id(text: &str) -> Option<DeliveryId> {
    let id = text.trim().trim_start_matches('<');
    let id = id.split('@').next()?;
    id.parse::<uuid::Uuid>().ok().map(DeliveryId::from_uuid)
}

/// A Twilio status callback: the delivery from the callback URL's `query` (we put it
/// there), the status from the `form`.
pub fn twilio_status(query: &str, form: &[(String, String)]) -> Result<Vec<Incoming>, Refusal> {
    let query: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let delivery = field(&query, "delivery")
        .and_then(delivery_id)
        .ok_or_else(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                "the callback URL names no delivery",
            )
        })?;
    let sid = field(form, "MessageSid")
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "no MessageSid"))?;
    let status = field(form, "MessageStatus")
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "no MessageStatus"))?;
    let event = twilio::event(status).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
    // Keyed on what the signature covers (a message has each status once), not on the
    // unsigned I-Twilio-Idempotency-Token header: a replay with that header changed is
    // still the duplicate it is.
    let event_id = format!("{sid}:{status}");
    let detail = field(form, "ErrorCode").map(|c| format!("twilio error {c}"));
    Ok(vec![Incoming {
        event_id,
        event: ProviderEvent {
            delivery_id: delivery,
            event,
            detail,
            effect: None,
            raw: pairs_json(form),
        },
        reference: Some(sid.to_owned()),
    }])
}

/// A Kannel delivery report: all of it in the query of the URL we gave Kannel.
pub fn kannel_dlr(query: &[(String, String)]) -> Result<Vec<Incoming>, Refusal> {
    let delivery = field(query, "delivery")
        .and_then(delivery_id)
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "the report names no delivery"))?;
    let kind = field(query, "type").ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "no type"))?;
    let event = kannel::event(kind).map_err(|e| refuse(StatusCode::BAD_REQUEST, e))?;
    let at = field(query, "at").unwrap_or_default();
    let answer = field(query, "answer").map(str::to_owned);
    Ok(vec![Incoming {
        event_id: format!("{delivery}:{kind}:{at}"),
        event: ProviderEvent {
            delivery_id: delivery,
            event,
            detail: answer,
            effect: None,
            raw: without_secret(query),
        },
        reference: None,
    }])
}

/// A Kannel request's parameters as kept: never the secret.
pub fn without_secret(query: &[(String, String)]) -> Value {
    pairs_json(
        &query
            .iter()
            .filter(|(k, _)| k != "secret")
            .cloned()
            .collect::<Vec<_>>(),
    )
}

/// A SendGrid event webhook's body: a JSON array of events, each naming our message by
/// its `smtp-id` and itself by `sg_event_id`.
pub fn sendgrid_events(body: &[u8]) -> Result<Vec<Incoming>, Refusal> {
    let events: Vec<Value> = serde_json::from_slice(body).map_err(|e| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("not a JSON array of events: {e}"),
        )
    })?;
    events
        .into_iter()
        .map(|event| {
            let reference = event["smtp-id"].as_str().map(str::to_owned);
            let delivery = reference.as_deref().and_then(delivery_id).ok_or_else(|| {
                refuse(
                    StatusCode::BAD_REQUEST,
                    "an event names no message of ours (smtp-id)",
                )
            })?;
            let event_id = event["sg_event_id"]
                .as_str()
                .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "an event has no sg_event_id"))?
                .to_owned();
            let (what, effect) = sendgrid::event(&event);
            let detail = event["reason"]
                .as_str()
                .or(event["response"].as_str())
                .map(str::to_owned);
            Ok(Incoming {
                event_id,
                event: ProviderEvent {
                    delivery_id: delivery,
                    event: what,
                    detail,
                    effect: effect.map(str::to_owned),
                    raw: event,
                },
                reference,
            })
        })
        .collect()
}

/// A Mailgun webhook's event (its `event-data`), with the digest it is remembered by.
pub fn mailgun_event(payload: &Value) -> Result<(Incoming, String), Refusal> {
    let data = payload["event-data"].clone();
    let reference = data["message"]["headers"]["message-id"]
        .as_str()
        .map(str::to_owned);
    let delivery = reference.as_deref().and_then(delivery_id).ok_or_else(|| {
        refuse(
            StatusCode::BAD_REQUEST,
            "the event names no message of ours",
        )
    })?;
    let event_id = data["id"]
        .as_str()
        .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, "the event has no id"))?
        .to_owned();
    let (what, effect) = mailgun::event(&data);
    let detail = data["delivery-status"]["message"]
        .as_str()
        .map(str::to_owned);
    let digest = mailgun::event_digest(data.to_string().as_bytes());
    let event = Incoming {
        event_id,
        event: ProviderEvent {
            delivery_id: delivery,
            event: what,
            detail,
            effect: effect.map(str::to_owned),
            raw: data,
        },
        reference,
    };
    Ok((event, digest))
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

    #[test]
    fn a_status_callback_is_read_from_its_url_and_form() {
        let id = DeliveryId::new();
        let form = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let read = twilio_status(
            &format!("delivery={id}"),
            &form(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]),
        )
        .unwrap();
        assert_eq!(read[0].event.delivery_id, id);
        assert_eq!(read[0].event_id, "SM1:delivered");
        let refused = twilio_status(
            "",
            &form(&[("MessageSid", "SM1"), ("MessageStatus", "delivered")]),
        )
        .unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(refused.reason.contains("names no delivery"), "{refused:?}");
        let refused = twilio_status(
            &format!("delivery={id}"),
            &form(&[("MessageSid", "SM1"), ("MessageStatus", "lost")]),
        )
        .unwrap_err();
        assert_eq!(refused.class, "malformed");
    }
}
