//! What Tidings reads from outside, read from arbitrary bytes as the service reads it:
//! provider callbacks, OneRoster CSV, signed link tokens, and the guardian sign-in and
//! message API bodies. The fuzz targets in `fuzz/` call these; `tests/fuzz_corpus.rs`
//! runs every seed and every input a fuzzer found a fault with through them, so what
//! was found stays fixed.
//!
//! Each returns whether the input was accepted (read as the request it claims to be),
//! and panics only where a property of what it read does not hold.

use std::io::Cursor;

use tidings_channel_adapters::{kannel, mailgun, sendgrid, twilio};
use tidings_core::contact::{EmailAddress, PhoneNumber};
use tidings_core::link::{LinkClaims, LinkKeys, LinkPurpose};
use tidings_core::roster::oneroster::{self, CsvFile};

/// A target: reads the bytes, says whether it accepted them.
pub type Target = fn(&[u8]) -> bool;

/// Every target, by the name of its folder under `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("twilio_status", twilio_status),
    ("kannel_dlr", kannel_dlr),
    ("sendgrid_events", sendgrid_events),
    ("mailgun_event", mailgun_event),
    ("oneroster_csv", oneroster_csv),
    ("link_token", link_token),
    ("guardian_sign_in", guardian_sign_in),
    ("message_body", message_body),
];

/// The part of `data` before the first newline, and the rest.
fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// A Twilio status callback: the callback URL's query on the first line, the form body
/// after it (decoded as axum's `Form` does).
pub fn twilio_status(data: &[u8]) -> bool {
    let (query, body) = split_line(data);
    let Ok(query) = std::str::from_utf8(query) else {
        return false;
    };
    let Ok(form) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body) else {
        return false;
    };
    match twilio::status_callback(query, &form) {
        Ok(events) => {
            assert_eq!(events.len(), 1);
            assert!(events[0].event_id().contains(':'));
            true
        }
        Err(_) => false,
    }
}

/// A Kannel delivery report: its query string (decoded as axum's `Query` does).
pub fn kannel_dlr(data: &[u8]) -> bool {
    let Ok(query) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(data) else {
        return false;
    };
    let read = kannel::delivery_report(&query);
    // Whatever it says, the secret is never kept with it.
    let kept = kannel::without_secret(&query);
    assert!(kept.get("secret").is_none());
    read.is_ok()
}

/// A SendGrid event webhook's body.
pub fn sendgrid_events(data: &[u8]) -> bool {
    sendgrid::events(data).is_ok()
}

/// A Mailgun webhook's body.
pub fn mailgun_event(data: &[u8]) -> bool {
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(data) else {
        return false;
    };
    match mailgun::webhook_event(&payload) {
        Ok((_, digest)) => {
            assert_eq!(digest.len(), 64, "a SHA-256 digest in hex");
            true
        }
        Err(_) => false,
    }
}

/// A OneRoster `users.csv`: every record read (or refused with its line), each field
/// through the readers the import uses.
pub fn oneroster_csv(data: &[u8]) -> bool {
    let Ok(mut file) = CsvFile::open("users.csv", Cursor::new(data), &["sourcedId", "role"]) else {
        return false;
    };
    let mut lines = 0u64;
    let mut read = 0usize;
    while let Some(record) = file.next_record() {
        match record {
            Ok(record) => {
                assert!(record.line > lines, "lines go forward");
                lines = record.line;
                read += 1;
                let _ = oneroster::status(file.get(&record, "status"));
                let _ = oneroster::list(file.get(&record, "orgSourcedIds"));
                let _ = PhoneNumber::parse_in(file.get(&record, "phone"), "US");
                let _ = PhoneNumber::parse(file.get(&record, "sms"));
                let _ = EmailAddress::parse(file.get(&record, "email"));
            }
            Err((line, why)) => {
                assert!(!why.is_empty());
                assert!(line >= 1);
            }
        }
        if read > 10_000 {
            break;
        }
    }
    read > 0
}

/// The key the link targets sign and verify with.
fn link_keys() -> &'static LinkKeys {
    static KEYS: std::sync::OnceLock<LinkKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(LinkKeys::generate)
}

/// A link token: any text verifies without a panic (and, not signed with the key, is
/// refused); 22 bytes or more are also read as claims, signed, and must verify back to
/// the same claims — accepted when they have not expired.
pub fn link_token(data: &[u8]) -> bool {
    let keys = link_keys();
    let now = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(
            keys.verify(text, now).is_err(),
            "a token nobody signed verifies"
        );
    }
    let Some(bytes) = data.get(..22) else {
        return false;
    };
    {
        let channels = tidings_core::Channel::ALL;
        let purpose = if bytes[0] % 2 == 0 {
            LinkPurpose::Acknowledge
        } else {
            LinkPurpose::Unsubscribe
        };
        let channel = channels[usize::from(bytes[1]) % channels.len()];
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&bytes[2..18]);
        let seconds = u32::from_be_bytes([bytes[18], bytes[19], bytes[20], bytes[21]]);
        let expires = chrono::DateTime::from_timestamp(i64::from(seconds), 0).unwrap_or_default();
        let claims = LinkClaims {
            purpose,
            recipient: tidings_core::RecipientId::from_uuid(uuid::Uuid::from_bytes(uuid)),
            channel,
            expires,
        };
        let token = keys.sign(&claims);
        match keys.verify(&token, now) {
            Ok(read) => {
                assert_eq!(read, claims);
                assert!(expires >= now);
                true
            }
            Err(tidings_core::link::LinkError::Expired(_)) => {
                assert!(expires < now);
                false
            }
            Err(other) => panic!("a token just signed does not verify: {other:?}"),
        }
    }
}

/// The guardian app's sign-in body, and the address in it read as the API reads it.
pub fn guardian_sign_in(data: &[u8]) -> bool {
    let Ok(request) = serde_json::from_slice::<tidings_api::guardian::SignInRequest>(data) else {
        return false;
    };
    let address = request.address.trim();
    if address.contains('@') {
        EmailAddress::parse(address).is_ok()
    } else {
        match PhoneNumber::parse_in(address, "US") {
            Ok(phone) => {
                assert!(phone.as_str().starts_with('+'), "E.164");
                true
            }
            Err(_) => false,
        }
    }
}

/// A `POST /api/v1/messages` body, checked as the send service checks it.
pub fn message_body(data: &[u8]) -> bool {
    let Ok(request) = serde_json::from_slice::<tidings_core::services::send::SendMessage>(data)
    else {
        return false;
    };
    let staff = tidings_core::staff::Staff {
        id: tidings_core::StaffId::new(),
        district_id: tidings_core::DistrictId::new(),
        email: EmailAddress::parse("staff@district.example.org").expect("a valid address"),
        display_name: "Staff".into(),
        role: tidings_core::staff::Role::DistrictAdmin,
        created_at: chrono::DateTime::UNIX_EPOCH,
        operator: false,
    };
    let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
    match tidings_core::services::send::draft(&staff, request, at) {
        Ok(draft) => {
            assert!(!draft.channels.is_empty());
            assert!(!draft.subject.is_empty() && !draft.body.is_empty());
            true
        }
        Err(_) => false,
    }
}
