//! The `Store`: every durable read and write Tidings makes, behind one trait with two
//! implementations — SQLite (embedded, the default) and PostgreSQL (production,
//! scale-out). Both pass the same conformance suite (`core/tests/store_conformance.rs`).
//!
//! SQL lives in the dialect modules and nowhere else. The store enforces invariants
//! through the schema (uniqueness, foreign keys, CHECKs on state names); it never decides
//! what a transition means — that is [`crate::delivery::next`] — it only applies one with a
//! compare-and-swap.

mod api_tokens;
mod audiences;
pub mod constraint;
mod contacts;
mod deliveries;
mod dialect;
pub mod directory;
pub mod dispatch;
mod dispatching;
mod districts;
mod engine;
pub mod guardian;
pub mod guardian_data;
pub mod inbox;
mod keys;
mod leases;
mod messages;
pub mod postgres;
pub mod raw_speed;
pub mod retention;
pub mod rewind;
pub mod roster;
mod schools;
mod sending;
pub mod sqlite;
mod staff;
mod transitions;
mod writes;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

pub use crate::delivery::CasOutcome;
pub use crate::fanout::{NewDelivery, NewMessage, NewRecipient};
pub use deliveries::apply_event;
pub use directory::{
    ClassView, ContactPointView, GradeView, GuardianDetail, GuardianRef, GuardianView, OptOutView,
    PageRequest, SchoolView, Scope, StudentView,
};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::delivery::{Actor, Change, Delivery, DeliveryEventRecord, Transition};
use crate::{
    ApiTokenId, Channel, ContactPointId, DeliveryGuarantee, DeliveryId, DistrictId, EmailAddress,
    GuardianId, ImportId, Lane, MessageId, MessageKind, RecipientId, Role, SchoolId, Staff,
    StaffId,
};

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error("cannot open the database at {url}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A uniqueness rule of the schema refused the write; the name is the constraint's
    /// (or, on SQLite, the columns'): see [`constraint::describe`].
    #[error("already exists ({0})")]
    AlreadyExists(String),
    /// Another rule of the schema (a foreign key, a CHECK, NOT NULL) refused the write.
    #[error("the write breaks a rule of the schema ({constraint})")]
    Violates {
        rule: constraint::Rule,
        constraint: String,
    },
    /// The district's hourly message quota is used up (checked inside the send's
    /// transaction, so it is a reservation, not a race).
    #[error("the district has sent {sent} messages in the last hour and allows {max}; emergencies are not limited")]
    HourlyQuota { sent: i64, max: u32 },
    /// Another dispatcher owns the partition now: the write was refused.
    #[error("the lease on {lane} partition {partition} has passed to another dispatcher")]
    Fenced {
        lane: crate::Lane,
        partition: crate::log::PartitionId,
    },
    #[error("a stored row is not valid: {0}")]
    Corrupt(String),
    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &error {
            match constraint::rule(db.as_ref()) {
                Some(constraint::Rule::Unique) => {
                    return StoreError::AlreadyExists(constraint::name(db.as_ref()))
                }
                Some(rule) => {
                    return StoreError::Violates {
                        rule,
                        constraint: constraint::name(db.as_ref()),
                    }
                }
                None => {}
            }
        }
        StoreError::Database(error)
    }
}

impl StoreError {
    /// Whether trying again may get past this: the database unreachable or the
    /// connection lost, the server shutting down, a write that lost a race (a deadlock, a
    /// serialization failure, a busy or locked SQLite file), or a database that cannot
    /// write for now (its disk full or failing, turned read-only, out of memory or
    /// connections) — trouble of the database, never of what was written, so no log entry
    /// is set aside for it. Classified here, from PostgreSQL's SQLSTATE and SQLite's
    /// result codes, so that no caller needs to know either.
    pub fn is_transient(&self) -> bool {
        let (StoreError::Database(e) | StoreError::Connect { source: e, .. }) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(e) => match e.code().as_deref() {
                // PostgreSQL's SQLSTATE: connection exceptions, shutdowns, lost races.
                // (53: insufficient resources, 58: system errors, 25006: a read-only
                // transaction.)
                Some(code) if code.len() == 5 => {
                    code.starts_with("08")
                        || code.starts_with("57P")
                        || code.starts_with("53")
                        || code.starts_with("58")
                        || code == "25006"
                        || code == "40001"
                        || code == "40P01"
                }
                // SQLite's result code: busy, locked, read-only, I/O error or full (an
                // extended code keeps the primary one in its low byte).
                Some(code) => code
                    .parse::<i32>()
                    .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 8 | 10 | 13)),
                None => false,
            },
            _ => false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Whether the schema is the one this binary expects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    pub backend: Backend,
    /// Migrations this binary carries.
    pub expected_migrations: usize,
    /// Of those, how many the database has applied successfully.
    pub applied_migrations: usize,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.applied_migrations == self.expected_migrations
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct District {
    pub id: DistrictId,
    pub name: String,
    pub default_language: String,
    pub timezone: String,
    pub created_at: DateTime<Utc>,
    /// Largest audience of one non-emergency message; `None`: no limit.
    pub max_recipients_per_message: Option<i32>,
    /// Non-emergency messages per rolling hour; `None`: no limit.
    pub max_messages_per_hour: Option<i32>,
    /// Suspended by an operator: its staff cannot sign in or use the API.
    pub suspended_at: Option<DateTime<Utc>>,
}

/// A district's single sign-on with OpenID Connect as stored: the identity provider, the
/// client Tidings is registered as there, and its secret sealed (`crate::sealed`; only
/// `services::settings` opens it).
#[derive(Clone, PartialEq, Eq)]
pub struct DistrictSso {
    pub district_id: DistrictId,
    pub issuer: String,
    pub client_id: String,
    pub client_secret_sealed: Vec<u8>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for DistrictSso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistrictSso")
            .field("district_id", &self.district_id)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct NewSchool {
    pub district_id: DistrictId,
    pub name: String,
    pub timezone: String,
    pub sourced_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct School {
    pub id: SchoolId,
    pub district_id: DistrictId,
    pub name: String,
    pub timezone: String,
    pub sourced_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewStaff {
    pub district_id: DistrictId,
    pub email: EmailAddress,
    pub display_name: String,
    pub role: Role,
    /// argon2id PHC string; `None` for staff who have not been invited to sign in.
    pub password_hash: Option<String>,
}

/// A staff member as a district administrator manages them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaffMember {
    pub staff: Staff,
    /// Disabled: cannot sign in, and their tokens and sessions stop working.
    pub disabled: bool,
    /// Has set a password (an invited member has not, until they accept).
    pub has_password: bool,
    /// When they last signed in to the web admin (by password or single sign-on).
    pub last_sign_in: Option<DateTime<Utc>>,
    /// The schools they are assigned to (school administrators and viewers see these).
    pub schools: Vec<SchoolId>,
}

/// The district and administrator created on an empty database.
#[derive(Debug, Clone)]
pub struct FirstAdmin {
    pub district_name: String,
    pub email: EmailAddress,
    pub display_name: String,
    pub password_hash: String,
}

/// A district's size as its operators see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DistrictSize {
    pub schools: i64,
    pub students: i64,
    pub guardians: i64,
    pub staff: i64,
}

/// Live (not deleted or disabled) rows of a district's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DirectoryCounts {
    pub schools: i64,
    pub students: i64,
    pub guardians: i64,
    pub staff: i64,
    pub classes: i64,
    pub enrollments: i64,
    pub guardian_links: i64,
    pub active_contact_points: i64,
}

/// What an idempotency key holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyClaim {
    /// New: the caller handles the request and completes or releases the key.
    Claimed,
    /// The same request was answered before: replay this.
    Replay { status: u16, body: Vec<u8> },
    /// The same key is being handled right now.
    InFlight,
    /// The key was used for a different request.
    Mismatch,
}

/// Which messages a staff member may read: the whole district's (district administrators)
/// or their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageScope {
    District(DistrictId),
    Author(DistrictId, StaffId),
}

impl MessageScope {
    /// The district, and the author the scope is limited to (if it is).
    pub fn parts(&self) -> (uuid::Uuid, Option<uuid::Uuid>) {
        match *self {
            MessageScope::District(d) => (*d.as_uuid(), None),
            MessageScope::Author(d, s) => (*d.as_uuid(), Some(*s.as_uuid())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageSummary {
    pub id: MessageId,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub kind: MessageKind,
    pub subject: String,
    pub author_id: StaffId,
    pub requires_ack: bool,
    pub created_at: DateTime<Utc>,
    pub recipients: i64,
    pub acknowledged: i64,
    /// With fallback: how long a delivery may go without reaching its guardian before
    /// their next channel is tried.
    pub fallback_after_minutes: Option<i32>,
    /// Deliveries per channel and state.
    pub counts: Vec<DeliveryCount>,
    /// Suppressed deliveries by reason (`no_address`, `opted_out`, `carrier_stop`,
    /// `fallback_not_needed`).
    pub suppressed: std::collections::BTreeMap<String, i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryCount {
    pub channel: Channel,
    pub state: crate::DeliveryState,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageListItem {
    pub id: MessageId,
    pub kind: MessageKind,
    pub subject: String,
    pub author_id: StaffId,
    pub requires_ack: bool,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecipientView {
    pub id: uuid::Uuid,
    pub guardian_id: uuid::Uuid,
    pub given_name: String,
    pub family_name: String,
    pub language: String,
    /// not_required, pending or acked.
    pub ack_state: String,
    pub acked_at: Option<DateTime<Utc>>,
    pub ack_via: Option<String>,
}

/// What a message said and how it was to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageContent {
    pub kind: MessageKind,
    pub guarantee: DeliveryGuarantee,
    pub subject: String,
    pub body: String,
    pub translations: serde_json::Value,
    pub channels: Vec<Channel>,
    pub requires_ack: bool,
    /// See [`NewMessage::fallback_after`].
    pub fallback_after: Option<chrono::Duration>,
}

/// What a recall did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelOutcome {
    /// Deliveries moved to CANCELLED.
    pub cancelled: u64,
    /// Deliveries already with a provider (or delivered, acknowledged, failed): left as
    /// they are, and shown in the report.
    pub already_sent: u64,
}

/// One row of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub staff_id: Option<StaffId>,
    /// The staff member's sign-in email, for people reading the log.
    pub staff_email: Option<String>,
    pub action: String,
    pub detail: serde_json::Value,
    pub at: DateTime<Utc>,
}

/// An import about to run.
#[derive(Debug, Clone)]
pub struct NewImport {
    pub id: ImportId,
    pub district_id: DistrictId,
    pub staff_id: Option<StaffId>,
    /// The file or directory name, for people reading the history.
    pub source_name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImportRecord {
    pub id: ImportId,
    pub district_id: DistrictId,
    pub staff_id: Option<StaffId>,
    pub source_name: String,
    /// running, succeeded or failed.
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub report: Option<serde_json::Value>,
    pub error: Option<String>,
}

/// An API token as its owner and the district's administrators see it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiTokenView {
    pub id: ApiTokenId,
    pub name: String,
    pub owner_id: StaffId,
    pub owner_email: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A stored API token with its owner, for authenticating a bearer.
#[derive(Debug, Clone)]
pub struct ApiTokenRecord {
    pub id: ApiTokenId,
    /// What the token is: a name its owner gave an API token, or a web session or an
    /// invitation (see `services::accounts`).
    pub name: String,
    pub staff: Staff,
    pub secret_hash: Vec<u8>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    /// The owner's district is suspended: the token does not work until it is resumed.
    pub district_suspended_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewGuardian {
    pub district_id: DistrictId,
    pub given_name: String,
    pub family_name: String,
    pub preferred_language: Option<String>,
    pub sourced_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Guardian {
    pub id: GuardianId,
    pub district_id: DistrictId,
    pub given_name: String,
    pub family_name: String,
    pub preferred_language: Option<String>,
    pub sourced_id: Option<String>,
}

/// The columns `deliveries::from_row` reads, in both dialects.
/// `postgres://…/old` with the database name replaced (options kept).
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// One provider event to keep, as `inbox_put_many` takes it.
#[derive(Debug, Clone)]
pub struct InboxPut {
    pub provider: String,
    pub event_id: String,
    pub payload: serde_json::Value,
    /// `pending`, `ignored` or `rejected`.
    pub status: &'static str,
    pub outcome: Option<String>,
}

/// One kept provider event to apply, as `apply_inbox_batch` takes it.
#[derive(Debug, Clone)]
pub struct InboxApply {
    pub inbox_id: uuid::Uuid,
    /// The delivery as read and what the event asks of it, if it asks anything: decided
    /// by `next()` in the batch's transaction (again, from what the delivery is then, if
    /// it moved meanwhile), and the event marked with what it did.
    pub request: Option<(Delivery, crate::delivery::Request)>,
    /// What the event means beyond its delivery, written in the same transaction.
    pub effect: Option<InboxEffect>,
    /// The district of the delivery it is about, if known: kept with the event, whose
    /// retention is then the district's (`callbacks_days`).
    pub district: Option<DistrictId>,
    /// The mark of an event that asks nothing of a delivery: `applied` or `ignored`,
    /// with what it did.
    pub status: &'static str,
    pub outcome: String,
}

/// What a provider event means beyond its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxEffect {
    /// The address is dead (a hard bounce): its contact points are retired with `reason`.
    RetireAddress {
        guardian: GuardianId,
        channel: Channel,
        address: String,
        reason: &'static str,
    },
    /// The guardian does not want the channel (a spam complaint): an opt-out of `source`.
    OptOut {
        district: DistrictId,
        guardian: GuardianId,
        channel: Channel,
        source: &'static str,
    },
}

/// What an acknowledgment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AckOutcome {
    /// Recorded now: the delivery it came through is ACKED (if it could move), the
    /// guardian's unsent deliveries of the message are cancelled, the rest left as they are.
    Acked {
        delivery: Option<DeliveryId>,
        cancelled: usize,
        untouched: usize,
    },
    /// Acknowledged before: nothing changes.
    AlreadyAcked,
    /// The message asks for no acknowledgment.
    NotRequired,
    NotFound,
}

/// One recipient of a message and what happened to each of their deliveries.
#[derive(Debug, Clone, Serialize)]
pub struct RecipientTimeline {
    pub recipient: RecipientView,
    /// Oldest first, each with its state changes in order.
    pub deliveries: Vec<DeliveryTimeline>,
}

/// A delivery and every state it went through: when, and who or what moved it.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryTimeline {
    pub delivery: Delivery,
    pub events: Vec<DeliveryEventRecord>,
}

/// How many of a message's deliveries were in each state over time, per channel: the
/// counts at the end of each of equal time steps from `start`.
#[derive(Debug, Clone, Serialize)]
pub struct StateSeries {
    pub start: DateTime<Utc>,
    pub step_seconds: i64,
    pub channels: Vec<ChannelSeries>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChannelSeries {
    pub channel: Channel,
    /// The deliveries in each state before the first change.
    pub start: std::collections::BTreeMap<crate::DeliveryState, i64>,
    /// One entry per step: the deliveries in each state then (states with none left out).
    pub steps: Vec<std::collections::BTreeMap<crate::DeliveryState, i64>>,
}

/// A text a guardian sent, as staff see it.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplyView {
    pub id: uuid::Uuid,
    pub guardian_id: uuid::Uuid,
    pub guardian_name: String,
    pub from: String,
    pub body: String,
    /// `stop`, `start` or `help` when it was one.
    pub keyword: Option<String>,
    pub received_at: DateTime<Utc>,
}

/// An SMS a guardian sent to one of the district's numbers.
#[derive(Debug, Clone)]
pub struct InboundSms {
    pub provider: String,
    pub provider_message_id: String,
    /// The sender, E.164.
    pub from: String,
    pub to: String,
    pub body: String,
    /// What it asks for, when it is a keyword; `None` for a reply.
    pub keyword: Option<SmsKeyword>,
}

/// A text that is a keyword: the carriers' STOP, START and HELP (and their equivalents),
/// or the district's acknowledgment keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmsKeyword {
    Stop,
    Start,
    Help,
    Ack,
}

impl SmsKeyword {
    /// As kept with the text (`inbound_messages.keyword`).
    pub fn as_str(self) -> &'static str {
        match self {
            SmsKeyword::Stop => "stop",
            SmsKeyword::Start => "start",
            SmsKeyword::Help => "help",
            SmsKeyword::Ack => "ack",
        }
    }
}

/// What taking a guardian's text did ([`inbox::Inbox::take_inbound`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundTaken {
    /// The guardians (of any district) whose SMS number sent it.
    pub guardians: Vec<(DistrictId, GuardianId)>,
    /// Those of them whose waiting message it acknowledged.
    pub acknowledged: Vec<GuardianId>,
}

/// A provider event waiting in the callback inbox.
#[derive(Debug, Clone)]
pub struct InboxItem {
    pub id: uuid::Uuid,
    pub provider: String,
    pub event_id: String,
    pub payload: serde_json::Value,
}

/// Guardians read, planned and written at a time when a message is sent: memory holds
/// one chunk, whatever the audience.
pub const SEND_CHUNK: usize = 10_000;

/// Plans the recipients and deliveries of a chunk of an audience.
pub type PlanChunk = dyn Fn(&[crate::audience::AudienceMember]) -> Vec<NewRecipient> + Send + Sync;

/// What a sent message came to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SendSummary {
    pub recipients: usize,
    pub deliveries: usize,
    /// Deliveries not sent, by reason.
    pub suppressed: std::collections::BTreeMap<String, usize>,
    /// Deliveries that wait: for `scheduled_at`, or for the end of quiet hours.
    pub deferred: usize,
    /// Standby deliveries on a guardian's next channel, sent only if the one before does
    /// not reach them (a message with fallback).
    pub standby: usize,
}

impl SendSummary {
    fn add(&mut self, recipients: &[NewRecipient]) {
        self.recipients += recipients.len();
        for delivery in recipients.iter().flat_map(|r| &r.deliveries) {
            self.deliveries += 1;
            if delivery.fallback_of.is_some() {
                self.standby += 1;
            } else {
                self.deferred += usize::from(delivery.not_before.is_some());
            }
            if let Some(reason) = &delivery.suppressed_reason {
                *self.suppressed.entry(reason.clone()).or_insert(0) += 1;
            }
        }
    }
}

/// Why a message was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendRefusal {
    Audience(crate::audience::AudienceProblems),
    /// The audience reaches this many guardians, more than allowed.
    TooMany(usize),
    /// The audience exists and is allowed but reaches no guardian (a class without
    /// guardians on file, or a directory emptied by a failed import).
    NoOne,
}

/// One write transaction of an application service: the idempotency record, the work
/// and the audit row commit together or not at all, so a failure anywhere before the
/// commit leaves neither a half-done request nor a key that blocks its retry.
///
/// On SQLite the transaction holds the write lock from its start; on PostgreSQL it is
/// READ COMMITTED, and the uniqueness of `(scope, key)` makes two transactions with one
/// idempotency key wait for each other.
#[async_trait]
pub trait WriteTransaction: Send {
    /// Claims `(scope, key)` for a request with this hash, or says what the key already
    /// holds. Keys older than `keep` are forgotten and can be claimed again. The claim
    /// lasts as long as the transaction: rolled back, the key is free again.
    async fn claim_idempotency_key(
        &mut self,
        scope: &str,
        key: &str,
        request_hash: &[u8],
        keep: chrono::Duration,
        at: DateTime<Utc>,
    ) -> StoreResult<IdempotencyClaim>;

    /// Stores the answer to a claimed key, to be replayed to repeats.
    async fn complete_idempotency_key(
        &mut self,
        scope: &str,
        key: &str,
        status: u16,
        body: &[u8],
    ) -> StoreResult<()>;

    /// Sends `message` (its recipients ignored) to `audience` within `scope`: the audience
    /// is resolved into the database, then read, planned with `plan` and written a chunk
    /// of guardians at a time, so that memory does not grow with the audience. Refused,
    /// with nothing written, when the audience names what does not exist or may not be
    /// messaged, reaches no one, or reaches more than `max_recipients`.
    #[allow(clippy::too_many_arguments)]
    async fn send_message(
        &mut self,
        message: &NewMessage,
        scope: &Scope,
        audience: &crate::audience::Audience,
        max_recipients: Option<usize>,
        plan: &PlanChunk,
        chunk: usize,
        at: DateTime<Utc>,
    ) -> StoreResult<Result<SendSummary, SendRefusal>>;

    /// Appends a staff or system action to the audit log.
    async fn audit(
        &mut self,
        district_id: DistrictId,
        actor: &Actor,
        action: &str,
        detail: serde_json::Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Sets a guardian's language and quiet hours (none: the district's language, the
    /// school's hours), as the guardian chose them; whether the guardian was there.
    async fn set_guardian_preferences(
        &mut self,
        guardian: GuardianId,
        language: Option<&str>,
        quiet: Option<(u16, u16)>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Ends session `other` of the same address as `session` (a guardian signing out a
    /// device from another); whether it was live.
    async fn end_sibling_session(
        &mut self,
        session: uuid::Uuid,
        other: uuid::Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Adds (or reactivates) a contact point entered by staff.
    async fn add_contact_point(
        &mut self,
        district: DistrictId,
        guardian: GuardianId,
        kind: Channel,
        address: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ContactPointView>;

    /// Registers (or reactivates) a guardian's device for push: its deliveries are
    /// addressed `platform:token`.
    async fn register_device(
        &mut self,
        district: DistrictId,
        guardian: GuardianId,
        platform: crate::PushPlatform,
        token: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ContactPointView>;

    /// Takes a guardian's address out of use with `reason` (`invalid`, `unregistered`,
    /// `bounced`), as a provider reported it: later messages suppress it as `no_address`
    /// unless another one is active. Returns how many contact points it retired.
    async fn retire_address(
        &mut self,
        guardian: GuardianId,
        channel: Channel,
        address: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<u64>;

    async fn set_contact_point_active(
        &mut self,
        guardian: GuardianId,
        contact_point: ContactPointId,
        active: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<ContactPointView>>;

    /// Records an opt-out (idempotent: an active one of the same source is returned).
    async fn add_opt_out(
        &mut self,
        district: DistrictId,
        guardian: GuardianId,
        channel: Channel,
        source: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<OptOutView>;

    /// Revokes an opt-out unless it is a carrier STOP (which only the guardian's START
    /// undoes); returns the opt-out found, revoked or not.
    async fn revoke_opt_out(
        &mut self,
        guardian: GuardianId,
        opt_out: uuid::Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<OptOutView>>;

    /// Sets a school's time zone and quiet hours (`None` removes them); the school is named
    /// by id or sourcedId. Returns whether such a school exists.
    async fn set_school_quiet_hours(
        &mut self,
        district: DistrictId,
        school: &str,
        quiet: Option<crate::quiet_hours::QuietHours>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// A new district named `name` in time zone `timezone`.
    async fn create_district(
        &mut self,
        name: &str,
        timezone: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<District>;

    /// Sets the language of guardians who have none, and the time zone staff's times are
    /// read in; whether the district exists.
    async fn set_district_locale(
        &mut self,
        district: DistrictId,
        default_language: &str,
        timezone: &str,
    ) -> StoreResult<bool>;

    /// Renames a district; whether it exists.
    async fn rename_district(&mut self, district: DistrictId, name: &str) -> StoreResult<bool>;

    /// Suspends a district (`Some(at)`) or resumes it (`None`); whether that changed it.
    async fn set_district_suspended(
        &mut self,
        district: DistrictId,
        suspended_at: Option<DateTime<Utc>>,
    ) -> StoreResult<bool>;

    /// Makes a staff member an operator of the install, or no longer one; whether that
    /// changed them.
    async fn set_operator(&mut self, staff: StaffId, operator: bool) -> StoreResult<bool>;

    /// Sets a district's quotas (`None` removes a limit).
    async fn set_district_quotas(
        &mut self,
        district: DistrictId,
        max_recipients_per_message: Option<i32>,
        max_messages_per_hour: Option<i32>,
    ) -> StoreResult<()>;

    /// Moves the dispatchers' offset of a partition back so that `from_offset` is read
    /// again (see [`rewind`]).
    async fn rewind_partition(
        &mut self,
        lane: crate::Lane,
        partition: crate::log::PartitionId,
        from_offset: i64,
        at: DateTime<Utc>,
    ) -> StoreResult<rewind::RewindOutcome>;

    /// Erases a guardian of `district` on request (see [`guardian_data`]), unless
    /// deliveries to them still wait to be sent.
    async fn erase_guardian(
        &mut self,
        district: DistrictId,
        guardian: GuardianId,
        at: DateTime<Utc>,
    ) -> StoreResult<guardian_data::EraseOutcome>;

    /// Sets how long a district keeps its records (`None`: the default); whether the
    /// district exists.
    async fn set_district_retention(
        &mut self,
        district: DistrictId,
        retention: &crate::retention::Retention,
    ) -> StoreResult<bool>;

    /// Sets (or replaces) a district's single sign-on settings, the secret sealed.
    async fn set_district_sso(
        &mut self,
        district: DistrictId,
        issuer: &str,
        client_id: &str,
        client_secret_sealed: &[u8],
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Removes a district's single sign-on settings; whether it had any.
    async fn remove_district_sso(&mut self, district: DistrictId) -> StoreResult<bool>;

    /// Creates a token for `staff` (an API token, a web session, an invitation) that
    /// stops working at `expires_at`, if given.
    async fn create_token(
        &mut self,
        id: ApiTokenId,
        staff: &Staff,
        name: &str,
        secret_hash: &[u8],
        at: DateTime<Utc>,
        expires_at: Option<DateTime<Utc>>,
    ) -> StoreResult<()>;

    /// Revokes one of `staff`'s tokens; whether there was such a token not yet revoked.
    async fn revoke_api_token(
        &mut self,
        id: ApiTokenId,
        staff: StaffId,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    async fn create_staff(&mut self, staff: &NewStaff, at: DateTime<Utc>) -> StoreResult<Staff>;

    /// Assigns a staff member of `district` to exactly these schools of the district.
    async fn set_staff_schools(
        &mut self,
        district: DistrictId,
        staff: StaffId,
        schools: &[SchoolId],
    ) -> StoreResult<()>;

    /// Sets a staff member's role; whether they are of `district`.
    async fn set_staff_role(
        &mut self,
        district: DistrictId,
        staff: StaffId,
        role: Role,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Disables or enables a staff member; whether they are of `district`.
    async fn set_staff_disabled(
        &mut self,
        district: DistrictId,
        staff: StaffId,
        disabled: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    /// Sets a staff member's argon2id password hash.
    async fn set_password_hash(
        &mut self,
        staff: StaffId,
        hash: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Revokes every token of a staff member named `name` (their web sessions, say),
    /// but `keep`; how many.
    async fn revoke_tokens_named(
        &mut self,
        staff: StaffId,
        name: &str,
        keep: Option<ApiTokenId>,
        at: DateTime<Utc>,
    ) -> StoreResult<u64>;

    /// [`Store::apply_transitions`] in this transaction.
    async fn apply_transitions(
        &mut self,
        batch: &[crate::delivery::Change],
    ) -> StoreResult<Vec<CasOutcome>>;

    /// Recalls a message the scope may see (`None` if it may not): every delivery the
    /// state machine lets a cancel move is cancelled, the rest counted.
    async fn cancel_message(
        &mut self,
        scope: &MessageScope,
        message: MessageId,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<CancelOutcome>>;

    /// Makes everything written durable and visible, and wakes the dispatchers if the log
    /// grew.
    async fn commit(self: Box<Self>) -> StoreResult<()>;
}

/// Every durable operation. Implementations are cheap to clone handles on a pool.
#[async_trait]
pub trait Store:
    dispatch::DispatchStore
    + guardian::GuardianAccess
    + inbox::Inbox
    + retention::Purging
    + guardian_data::GuardianData
    + Send
    + Sync
    + 'static
{
    fn backend(&self) -> Backend;

    /// Applies the migrations this binary carries. Safe to run from several processes at
    /// once (PostgreSQL takes an advisory lock).
    async fn migrate(&self) -> StoreResult<()>;

    /// Whether the database answers and has every migration applied.
    async fn readiness(&self) -> StoreResult<Readiness>;

    /// On a database with no staff at all, creates a district and its first administrator
    /// in one transaction and returns them; otherwise changes nothing and returns `None`.
    async fn bootstrap(
        &self,
        first: &FirstAdmin,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<(District, Staff)>>;

    async fn create_district(&self, name: &str, at: DateTime<Utc>) -> StoreResult<District>;

    async fn create_school(&self, school: &NewSchool, at: DateTime<Utc>) -> StoreResult<School>;

    async fn create_staff(&self, staff: &NewStaff, at: DateTime<Utc>) -> StoreResult<Staff>;

    /// An enabled staff member by sign-in email.
    async fn staff_by_email(&self, email: &EmailAddress) -> StoreResult<Option<Staff>>;

    /// The argon2id hash an enabled staff member signs in with, if they have one.
    async fn password_hash(&self, staff: StaffId) -> StoreResult<Option<String>>;

    /// Every staff member of a district, enabled or not, by email.
    async fn staff_members(&self, district: DistrictId) -> StoreResult<Vec<StaffMember>>;

    /// A page of a district's staff members by email: at most `page.limit` after the
    /// member `page.after`, those whose name or email contains `page.search`, or only
    /// `page.only`.
    async fn staff_page(
        &self,
        district: DistrictId,
        page: &PageRequest,
    ) -> StoreResult<Vec<StaffMember>>;

    /// The staff member of a district with this email, enabled or not.
    async fn staff_member_by_email(
        &self,
        district: DistrictId,
        email: &EmailAddress,
    ) -> StoreResult<Option<StaffMember>>;

    /// A token and its owner, if the owner is still enabled. The caller checks the secret,
    /// expiry and revocation.
    async fn api_token(&self, id: ApiTokenId) -> StoreResult<Option<ApiTokenRecord>>;

    /// Records that a token was used at `at`: written at most once a `granularity`, so
    /// that a busy script does not write on every request.
    async fn token_used(
        &self,
        id: ApiTokenId,
        at: DateTime<Utc>,
        granularity: chrono::Duration,
    ) -> StoreResult<()>;

    /// A district's tokens, revoked and expired ones too, but those named one of
    /// `excluding` (web sessions and invitations are not API tokens), newest first; only
    /// `owner`'s when given.
    async fn api_tokens(
        &self,
        district: DistrictId,
        owner: Option<StaffId>,
        excluding: &[&str],
    ) -> StoreResult<Vec<ApiTokenView>>;

    async fn create_guardian(
        &self,
        guardian: &NewGuardian,
        at: DateTime<Utc>,
    ) -> StoreResult<Guardian>;

    /// Writes a message, its recipients, their deliveries and the deliveries' log entries
    /// in one transaction, in bulk: after a crash there is either no message, or one whose
    /// every delivery and entry exists exactly once.
    async fn create_message(&self, message: &NewMessage, at: DateTime<Utc>) -> StoreResult<()>;

    async fn delivery(&self, id: DeliveryId) -> StoreResult<Option<Delivery>>;

    /// Entries of one partition after `after` (all of them for `None`), in offset order.
    async fn read_log(
        &self,
        lane: Lane,
        partition: crate::log::PartitionId,
        after: Option<i64>,
        limit: u32,
    ) -> StoreResult<Vec<crate::log::LogEntry>>;

    /// Compare-and-swap: moves the delivery from `transition.from` at `transition.seen_version`
    /// to `transition.to` and appends the event row, in one transaction — or changes nothing
    /// and reports what the delivery is now. A batch of one for
    /// [`Store::apply_transitions`].
    async fn transition(&self, transition: &Transition) -> StoreResult<CasOutcome> {
        let mut outcomes = self
            .apply_transitions(&[Change::new(transition.clone())])
            .await?;
        Ok(outcomes.remove(0))
    }

    /// The one write of delivery state: applies `batch` in one transaction, each change a
    /// compare-and-swap on the version and state it was decided on, with the columns it
    /// sets and the event row of each state entered. Reports, per change, the delivery
    /// after it, or as it is now when someone moved it first.
    async fn apply_transitions(&self, batch: &[Change]) -> StoreResult<Vec<CasOutcome>>;

    /// The audit trail of one delivery, oldest first.
    async fn delivery_events(&self, id: DeliveryId) -> StoreResult<Vec<DeliveryEventRecord>>;

    /// How many live rows the district's directory has, per table.
    async fn directory_counts(&self, district: DistrictId) -> StoreResult<DirectoryCounts>;

    /// Every district's size (live schools, students, guardians, enabled staff), in one
    /// pass per table.
    async fn district_sizes(
        &self,
    ) -> StoreResult<std::collections::HashMap<DistrictId, DistrictSize>>;

    async fn schools(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Vec<SchoolView>>;
    async fn classes(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Vec<ClassView>>;
    async fn students(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Vec<StudentView>>;
    async fn guardians(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Vec<GuardianView>>;
    /// The grades the scope sees students in, with their students counted.
    async fn grades(&self, scope: &Scope) -> StoreResult<Vec<GradeView>>;

    /// A guardian the scope may see, with the students the scope may see among theirs,
    /// their contact points and their active opt-outs.
    async fn guardian_detail(
        &self,
        scope: &Scope,
        which: &GuardianRef,
    ) -> StoreResult<Option<GuardianDetail>>;

    /// Adds (or reactivates) a contact point entered by staff.
    async fn add_contact_point(
        &self,
        district: DistrictId,
        guardian: GuardianId,
        kind: Channel,
        address: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<ContactPointView> {
        let mut tx = self.begin().await?;
        let done = tx
            .add_contact_point(district, guardian, kind, address, at)
            .await?;
        tx.commit().await?;
        Ok(done)
    }

    async fn set_contact_point_active(
        &self,
        guardian: GuardianId,
        contact_point: ContactPointId,
        active: bool,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<ContactPointView>> {
        let mut tx = self.begin().await?;
        let done = tx
            .set_contact_point_active(guardian, contact_point, active, at)
            .await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Records an opt-out (idempotent: an active one of the same source is returned).
    async fn add_opt_out(
        &self,
        district: DistrictId,
        guardian: GuardianId,
        channel: Channel,
        source: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<OptOutView> {
        let mut tx = self.begin().await?;
        let done = tx
            .add_opt_out(district, guardian, channel, source, at)
            .await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Revokes an opt-out unless it is a carrier STOP (which only the guardian's START
    /// undoes); returns the opt-out found, revoked or not.
    async fn revoke_opt_out(
        &self,
        guardian: GuardianId,
        opt_out: uuid::Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<OptOutView>> {
        let mut tx = self.begin().await?;
        let done = tx.revoke_opt_out(guardian, opt_out, at).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Sets a school's time zone and quiet hours (`None` removes them); the school is named
    /// by id or sourcedId. Returns whether such a school exists.
    async fn set_school_quiet_hours(
        &self,
        district: DistrictId,
        school: &str,
        quiet: Option<crate::quiet_hours::QuietHours>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.begin().await?;
        let done = tx
            .set_school_quiet_hours(district, school, quiet, at)
            .await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Sets a district's quotas (`None` removes a limit).
    async fn set_district_quotas(
        &self,
        district: DistrictId,
        max_recipients_per_message: Option<i32>,
        max_messages_per_hour: Option<i32>,
    ) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        let done = tx
            .set_district_quotas(district, max_recipients_per_message, max_messages_per_hour)
            .await?;
        tx.commit().await?;
        Ok(done)
    }

    /// One district, with its settings.
    async fn district(&self, id: DistrictId) -> StoreResult<Option<District>>;

    /// Every district, oldest first.
    async fn districts(&self) -> StoreResult<Vec<District>>;

    /// A district's single sign-on settings, if it has any.
    async fn district_sso(&self, district: DistrictId) -> StoreResult<Option<DistrictSso>>;

    /// The districts with single sign-on, by name.
    async fn sso_districts(&self) -> StoreResult<Vec<District>>;

    /// Opens the one transaction a roster import runs in.
    async fn begin_roster_import(
        &self,
        district: DistrictId,
    ) -> StoreResult<Box<dyn roster::RosterWriter>>;

    /// Records an import that failed (its own transaction rolled back): its history
    /// entry, with the error that stopped it. A successful import records itself in its
    /// transaction ([`roster::RosterWriter::record_success`]), so no entry is ever left
    /// "running" by a failure or a crash.
    async fn record_failed_import(
        &self,
        import: &NewImport,
        started_at: DateTime<Utc>,
        error: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// One import of a district.
    async fn import_record(
        &self,
        district: DistrictId,
        id: ImportId,
    ) -> StoreResult<Option<ImportRecord>>;

    /// The guardians an audience reaches within the sender's scope, each once, with their
    /// active contact points and opt-outs — or the references that are unknown or outside
    /// the scope.
    async fn resolve_audience(
        &self,
        scope: &Scope,
        audience: &crate::audience::Audience,
    ) -> StoreResult<Result<Vec<crate::audience::AudienceMember>, crate::audience::AudienceProblems>>;

    /// Starts a write transaction: what an application service does in one go (see
    /// [`WriteTransaction`]). Nothing it writes is seen by anyone until it commits; dropped
    /// without a commit, it leaves no trace.
    async fn begin(&self) -> StoreResult<Box<dyn WriteTransaction>>;

    /// [`WriteTransaction::send_message`] in a transaction of its own, committed unless
    /// refused.
    #[allow(clippy::too_many_arguments)]
    async fn send_message(
        &self,
        message: &NewMessage,
        scope: &Scope,
        audience: &crate::audience::Audience,
        max_recipients: Option<usize>,
        plan: &PlanChunk,
        chunk: usize,
        at: DateTime<Utc>,
    ) -> StoreResult<Result<SendSummary, SendRefusal>> {
        let mut tx = self.begin().await?;
        let sent = tx
            .send_message(message, scope, audience, max_recipients, plan, chunk, at)
            .await?;
        if sent.is_ok() {
            tx.commit().await?;
        }
        Ok(sent)
    }

    /// A message with its delivery counts by channel and state, if the scope may see it.
    async fn message_summary(
        &self,
        scope: &MessageScope,
        id: MessageId,
    ) -> StoreResult<Option<MessageSummary>>;

    /// Messages the scope may see, newest first, older than `before`.
    async fn messages(
        &self,
        scope: &MessageScope,
        before: Option<uuid::Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<MessageListItem>>;

    /// Recipients of a message the scope may see (`None` if it may not), optionally by
    /// whether they acknowledged, paged by id.
    async fn recipients(
        &self,
        scope: &MessageScope,
        message: MessageId,
        acked: Option<bool>,
        after: Option<uuid::Uuid>,
        limit: u32,
    ) -> StoreResult<Option<Vec<RecipientView>>>;

    /// What a message said, for sending it again, if the scope may see it.
    async fn message_content(
        &self,
        scope: &MessageScope,
        id: MessageId,
    ) -> StoreResult<Option<MessageContent>>;

    /// Guardians of a message who have not acknowledged it yet.
    async fn pending_guardians(&self, id: MessageId) -> StoreResult<Vec<uuid::Uuid>>;

    /// One recipient of a message the scope may see, with each delivery's state changes
    /// (`None` when the scope may not see the message or it has no such recipient).
    async fn recipient_timeline(
        &self,
        scope: &MessageScope,
        message: MessageId,
        recipient: RecipientId,
    ) -> StoreResult<Option<RecipientTimeline>>;

    /// The message's deliveries per state over time, per channel, in at most `steps`
    /// equal steps, back from `now` — the counts of its summary, read once per page —
    /// (`None` when the scope may not see the message).
    async fn state_series(
        &self,
        scope: &MessageScope,
        message: MessageId,
        now: &[DeliveryCount],
        steps: u32,
    ) -> StoreResult<Option<StateSeries>>;

    /// Texts the message's recipients sent since it was sent, newest first (`None` when
    /// the scope may not see the message).
    async fn message_replies(
        &self,
        scope: &MessageScope,
        message: MessageId,
        limit: u32,
    ) -> StoreResult<Option<Vec<ReplyView>>>;

    /// Recalls a message: deliveries not yet handed to a provider become CANCELLED (each
    /// with its event row); the others are left as they are and counted.
    async fn cancel_message(
        &self,
        scope: &MessageScope,
        message: MessageId,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<CancelOutcome>> {
        let mut tx = self.begin().await?;
        let done = tx.cancel_message(scope, message, actor, at).await?;
        tx.commit().await?;
        Ok(done)
    }

    /// Refreshes the query planner's statistics of the directory tables: after a bulk
    /// import they describe the tables as they were, and the first broadcast after an
    /// import would be planned for a near-empty directory.
    async fn refresh_directory_statistics(&self) -> StoreResult<()>;

    /// Brings the database file up to date with what was written, now rather than in the
    /// background (SQLite copies its journal into the file; nothing to do on PostgreSQL):
    /// a measurement then starts from a settled database, not alongside the copy.
    async fn settle(&self) -> StoreResult<()>;

    /// The district's most recent audit entries, newest first.
    async fn audit_entries(&self, district: DistrictId, limit: u32)
        -> StoreResult<Vec<AuditEntry>>;

    /// Appends a staff action to the audit log.
    async fn audit(
        &self,
        district_id: DistrictId,
        actor: &Actor,
        action: &str,
        detail: serde_json::Value,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Connections in the pool (PostgreSQL) or readers (SQLite).
    pub max_connections: u32,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
        }
    }
}

/// Opens the store a URL names: `sqlite://PATH` (created if missing) or `postgres://…`.
pub async fn connect(url: &str, options: &ConnectOptions) -> StoreResult<Arc<dyn Store>> {
    Ok(match Backend::of_url(url)? {
        Backend::Sqlite => Arc::new(SqliteStore::connect(url, options).await?),
        Backend::Postgres => Arc::new(PostgresStore::connect(url, options).await?),
    })
}

impl Backend {
    /// The database a URL names.
    pub fn of_url(url: &str) -> StoreResult<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::UnsupportedUrl(redact_url(url)))
        }
    }
}

/// An error and its causes on one line, for logs and the CLI. A cause whose text its
/// parent already printed (many drivers' errors include their source) is not repeated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut line = error.to_string();
    let mut last = line.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !last.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        last = text;
        source = cause.source();
    }
    line
}

/// A database URL with its password replaced, fit for an error message or a log line.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let masked = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{masked}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// Counts migrations in `applied` (versions applied successfully) that this binary carries.
fn readiness_from(
    backend: Backend,
    migrator: &sqlx::migrate::Migrator,
    applied: &[i64],
) -> Readiness {
    let expected: Vec<i64> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| m.version)
        .collect();
    Readiness {
        backend,
        expected_migrations: expected.len(),
        applied_migrations: expected.iter().filter(|v| applied.contains(v)).count(),
    }
}

/// A short fingerprint of a migrator's migrations (versions and checksums): test
/// harnesses name template databases with it.
pub fn migrations_fingerprint(migrator: &sqlx::migrate::Migrator) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for migration in migrator.iter() {
        hasher.update(migration.version.to_be_bytes());
        hasher.update(&migration.checksum);
    }
    hasher.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chains_print_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = StoreError::Connect {
            url: "postgres://h/db".into(),
            source: sqlx::Error::Io(io),
        };
        assert_eq!(
            error_chain(&err),
            "cannot open the database at postgres://h/db: error communicating with database: connection refused"
        );
    }

    #[test]
    fn passwords_never_appear_in_redacted_urls() {
        assert_eq!(
            redact_url("postgres://tidings:s3cret@db.example.org:5432/tidings"),
            "postgres://tidings:***@db.example.org:5432/tidings"
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert_eq!(redact_url("sqlite://tidings.db"), "sqlite://tidings.db");
        assert_eq!(
            redact_url("postgres://a:b:c@h/d?x=1"),
            "postgres://a:***@h/d?x=1"
        );
    }
}
