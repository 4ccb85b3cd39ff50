//! Application services: one module per thing staff do (send a message, remind, recall),
//! shared by every front end — the REST API and the web admin translate to and from them
//! and hold no rules of their own.
//!
//! A service takes the caller and a typed request and runs as ONE write transaction
//! ([`WriteTransaction`]): the idempotency record, the work and the audit row commit
//! together or not at all. A failure anywhere before the commit leaves nothing behind —
//! no half-sent broadcast, no key stuck "in flight" — so the caller's retry is safe; a
//! failure after it (the answer lost on its way back) is answered by replaying what was
//! stored with the key.

pub mod accounts;
pub mod acknowledge;
pub mod cancel;
pub mod directory;
pub mod districts;
pub mod guardian_access;
pub mod guardian_data;
pub mod guardian_settings;
pub mod inbound;
pub mod provider_events;
pub mod renotify;
pub mod replay;
pub mod retention;
pub mod rewind;
pub mod roster;
pub mod send;
pub mod settings;
pub mod tokens;

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::store::{IdempotencyClaim, MessageScope, Store, StoreError, WriteTransaction};
use crate::{Role, Staff};

/// Idempotency keys are kept at least this long.
pub const KEEP_KEYS_HOURS: i64 = 24;

/// What the services need: the store, the clock, and how the log is partitioned.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// Partitions per lane of the delivery log.
    pub partitions: u32,
    /// Region for phone numbers staff type without a country code (ISO 3166, e.g. "US").
    pub default_phone_region: String,
    /// The link keys: the keys secrets kept in the database are sealed under derive from
    /// them (`crate::sealed`).
    pub link_keys: Arc<crate::link::LinkKeys>,
}

/// Why a service did not do what it was asked: the caller's mistake or the rules, never
/// ours. Each has a stable meaning a front end maps to its own words (the API to a
/// problem type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the caller's role does not allow this")]
    Forbidden,
    /// The email and password do not match an account that may sign in.
    #[error("the email address or password is wrong")]
    BadCredentials,
    #[error("no such thing the caller may see")]
    NotFound,
    /// The request is not valid; the text says which part and why.
    #[error("{0}")]
    Invalid(String),
    /// The audience names what the caller may not message (the references).
    #[error("outside what the caller may message: {0}")]
    ForbiddenAudience(String),
    /// The audience names what does not exist (the references).
    #[error("unknown: {0}")]
    UnknownAudience(String),
    #[error("{0}")]
    EmptyAudience(String),
    /// Single sign-on named an email address no staff account of the district has.
    #[error("no staff account of the district has this email address")]
    NoAccount,
    /// The staff account exists but is disabled.
    #[error("this staff account is disabled")]
    AccountDisabled,
    /// The request contradicts what is stored (the text says what).
    #[error("{0}")]
    Conflict(String),
    /// A district quota would be exceeded.
    #[error("{0}")]
    QuotaExceeded(String),
    /// Another request with the same idempotency key is still being handled.
    #[error("a request with this idempotency key is still being handled")]
    IdempotencyInFlight,
    /// The idempotency key was used before for a different request.
    #[error("this idempotency key was used for a different request")]
    IdempotencyMismatch,
    /// The caller's district is suspended by an operator.
    #[error("the district is suspended")]
    DistrictSuspended,
    /// Too many sign-in codes were asked for this address in the past hour.
    #[error("too many sign-in codes for this address in the past hour")]
    TooManyCodes,
    /// A guardian's sign-in code is wrong, used up or expired (or the address is no
    /// guardian's): one answer for all, so that it tells nothing.
    #[error("the code is wrong, used up or expired")]
    InvalidCode,
    /// A roster that cannot be imported: not a bundle, a bad manifest, another
    /// district's export (the text says which).
    #[error("{0}")]
    InvalidRoster(String),
    /// The import would delete more of the directory than allowed: nothing changed.
    /// The report says what it would have done.
    #[error("the import was held back and nothing was changed: {over}")]
    ImportHeldBack {
        over: Box<crate::roster::OverLimit>,
        report: Box<crate::roster::ImportReport>,
    },
}

/// A service's failure: a refusal, or the store failing (ours: the caller may retry).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for ServiceError {
    /// A store failure that is really a refusal becomes one, for every front end alike:
    /// the hourly quota (checked inside the transaction), and a schema rule the request
    /// broke — a duplicate, a row that went away meanwhile, a value the schema does not
    /// allow — named in words ([`describe`](crate::store::constraint::describe)), never
    /// a server error.
    fn from(error: StoreError) -> Self {
        use crate::store::constraint::{describe, Rule};
        let described = |constraint: &str, otherwise: &str| {
            describe(constraint).unwrap_or(otherwise).to_owned()
        };
        match error {
            StoreError::HourlyQuota { .. } => Refusal::QuotaExceeded(error.to_string()).into(),
            StoreError::AlreadyExists(constraint) => {
                Refusal::Conflict(described(&constraint, "it already exists")).into()
            }
            StoreError::Violates {
                rule: Rule::ForeignKey,
                constraint,
            } => Refusal::Conflict(described(
                &constraint,
                "it refers to something that no longer exists",
            ))
            .into(),
            StoreError::Violates { constraint, .. } => Refusal::Invalid(described(
                &constraint,
                "a value is not one this field allows",
            ))
            .into(),
            error => ServiceError::Store(error),
        }
    }
}

/// A request that is to be done at most once: repeats with the same key (by the same
/// staff member, for the same operation) get the first answer again.
#[derive(Debug, Clone, Copy)]
pub struct Once<'a> {
    /// The client's `Idempotency-Key`, or a form's one-time token.
    pub key: &'a str,
    /// Separates the key spaces of different operations (e.g. `""` for sending,
    /// `":renotify:<id>"` for a reminder of one message).
    pub operation: &'a str,
    /// The request as received: a repeat must match it byte for byte.
    pub request: &'a [u8],
}

/// A front end's answer to a request, kept with its key and replayed to repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// What a service did with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<T> {
    /// Done now.
    Done(T),
    /// Done (or refused) before, under the same key: the answer given then.
    Replayed(Answer),
}

/// The messages a staff member may see and act on: the whole district's for district
/// administrators, their own for everyone else.
pub fn message_scope(staff: &Staff) -> MessageScope {
    match staff.role {
        Role::DistrictAdmin => MessageScope::District(staff.district_id),
        _ => MessageScope::Author(staff.district_id, staff.id),
    }
}

/// Claims `once` (when given) in `tx`: `Some(answer)` for a repeat of an answered request.
async fn claim(
    tx: &mut dyn WriteTransaction,
    caller: &Staff,
    once: Option<&Once<'_>>,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Option<Answer>, ServiceError> {
    let Some(once) = once else { return Ok(None) };
    let claim = tx
        .claim_idempotency_key(
            &key_scope(caller, once),
            once.key,
            &Sha256::digest(once.request),
            chrono::Duration::hours(KEEP_KEYS_HOURS),
            at,
        )
        .await?;
    match claim {
        IdempotencyClaim::Claimed => Ok(None),
        IdempotencyClaim::Replay { status, body } => {
            metrics::counter!(crate::telemetry::DUPLICATES_SUPPRESSED, "kind" => "idempotency_replay")
                .increment(1);
            Ok(Some(Answer { status, body }))
        }
        IdempotencyClaim::InFlight => Err(Refusal::IdempotencyInFlight.into()),
        IdempotencyClaim::Mismatch => Err(Refusal::IdempotencyMismatch.into()),
    }
}

/// Stores `answer` with `once`'s key (when given), in `tx`.
async fn remember(
    tx: &mut dyn WriteTransaction,
    caller: &Staff,
    once: Option<&Once<'_>>,
    answer: impl FnOnce() -> Answer,
) -> Result<(), StoreError> {
    let Some(once) = once else { return Ok(()) };
    let answer = answer();
    tx.complete_idempotency_key(
        &key_scope(caller, once),
        once.key,
        answer.status,
        &answer.body,
    )
    .await
}

/// Keys are per staff member and operation.
fn key_scope(caller: &Staff, once: &Once<'_>) -> String {
    format!("staff:{}{}", caller.id, once.operation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::constraint::Rule;

    /// Every front end gets a broken schema rule as the caller's refusal, in words.
    #[test]
    fn broken_schema_rules_are_refusals_and_other_store_failures_are_not() {
        let refusal = |error| match ServiceError::from(error) {
            ServiceError::Refused(refusal) => Some(refusal),
            ServiceError::Store(_) => None,
        };
        assert_eq!(
            refusal(StoreError::AlreadyExists("staff_email_key".into())),
            Some(Refusal::Conflict(
                "a staff member with this email address already exists".into()
            ))
        );
        assert_eq!(
            refusal(StoreError::Violates {
                rule: Rule::ForeignKey,
                constraint: String::new(),
            }),
            Some(Refusal::Conflict(
                "it refers to something that no longer exists".into()
            ))
        );
        assert!(matches!(
            refusal(StoreError::Violates {
                rule: Rule::NotNull,
                constraint: "staff.email".into(),
            }),
            Some(Refusal::Invalid(_))
        ));
        assert_eq!(refusal(StoreError::Corrupt("a bad row".into())), None);
    }
}
