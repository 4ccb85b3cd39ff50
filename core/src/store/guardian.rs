//! What guardians themselves reach: the message behind a link, their messages in the app,
//! one-time sign-in codes and app sessions.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::StoreResult;
use crate::{Channel, DistrictId, GuardianId, MessageId, MessageKind, RecipientId};

/// One message as its guardian sees it, in their language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GuardianMessage {
    pub recipient_id: RecipientId,
    pub message_id: MessageId,
    pub district_id: DistrictId,
    pub district_name: String,
    pub guardian_id: GuardianId,
    pub kind: MessageKind,
    pub subject: String,
    pub body: String,
    /// The language `subject` and `body` are in.
    pub language: String,
    pub sent_at: DateTime<Utc>,
    /// `not_required`, `pending` or `acked`.
    pub ack_state: String,
    pub acked_at: Option<DateTime<Utc>>,
    /// The channel the acknowledgment came through.
    pub ack_via: Option<String>,
}

/// Which guardian message to read.
#[derive(Debug, Clone, Copy)]
pub enum GuardianMessageRef {
    /// By the recipient a link names.
    Recipient(RecipientId),
    /// A message, to one of these guardians' (an app session's).
    Message(MessageId),
}

/// An open one-time sign-in code.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub id: uuid::Uuid,
    pub code_hash: String,
    pub attempts: i32,
}

/// A guardian app session, as stored.
#[derive(Debug, Clone)]
pub struct GuardianSession {
    pub id: uuid::Uuid,
    /// The contact point that signed in.
    pub channel: Channel,
    pub address: String,
    pub secret_hash: String,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The store's side of guardian access: links, the app, sign-in.
#[async_trait::async_trait]
pub trait GuardianAccess: Send + Sync {
    /// Guardians (district, id) an active contact point belongs to.
    async fn guardians_at(
        &self,
        channel: Channel,
        address: &str,
    ) -> StoreResult<Vec<(DistrictId, GuardianId)>>;

    /// The message a link names, or one message to any of `guardians` (one per guardian
    /// it went to).
    async fn guardian_message(
        &self,
        which: GuardianMessageRef,
        guardians: &[GuardianId],
    ) -> StoreResult<Vec<GuardianMessage>>;

    /// `guardians`' messages (recalled ones left out), newest first, older than `before`.
    async fn guardian_messages(
        &self,
        guardians: &[GuardianId],
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<Vec<GuardianMessage>>;

    /// Records link-key fingerprints not seen before; returns the key ids whose recorded
    /// fingerprint differs (another process signs with a different key of that id).
    async fn check_link_keys(
        &self,
        keys: &[(u8, String)],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<u8>>;

    /// Keeps a new sign-in code for the address (replacing an open one), unless
    /// `max_per_hour` were issued to it in the past hour: then `None`.
    async fn create_sign_in(
        &self,
        channel: Channel,
        address: &str,
        code_hash: &str,
        expires_at: DateTime<Utc>,
        max_per_hour: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<uuid::Uuid>>;

    /// The address's unused, unexpired code.
    async fn open_sign_in(
        &self,
        channel: Channel,
        address: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<SignIn>>;

    /// Spends a try of code `id`. A right code is used up, true for exactly one caller
    /// and only while fewer than `max_attempts` tries were made; a wrong one counts, and
    /// the last allowed wrong try uses the code up.
    async fn sign_in_attempt(
        &self,
        id: uuid::Uuid,
        right: bool,
        max_attempts: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    async fn create_guardian_session(
        &self,
        session: &GuardianSession,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    async fn guardian_session(&self, id: uuid::Uuid) -> StoreResult<Option<GuardianSession>>;

    async fn end_guardian_session(&self, id: uuid::Uuid, at: DateTime<Utc>) -> StoreResult<()>;
}
