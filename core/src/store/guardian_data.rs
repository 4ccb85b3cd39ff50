//! A guardian's data requests: everything held about one guardian, exported; and the
//! guardian erased — contact points, links to children, opt-outs, the messages they
//! received with every delivery, event and attempt, their texts and app sessions — with
//! one thing kept: a carrier STOP, as a one-way hash of the number
//! ([`stop_hash`], table `erased_stops`), so that a number that opted out is never texted
//! again, even when the next roster import brings it back (the audience reads it as a
//! carrier opt-out: [`erased_stops`]).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::deliveries::DELIVERY_COLUMNS;
use super::deliveries::{self, attempt_from_row, event_from_row, ATTEMPT_COLUMNS, EVENT_COLUMNS};
use super::dialect::{Args, Columns, Dialect, Pools};
use super::directory::{self, GuardianDetail, GuardianRef};
use super::dispatch::AttemptRecord;
use super::{Scope, StoreResult};
use crate::delivery::{Delivery, DeliveryEventRecord};
use crate::{DeliveryId, DistrictId, GuardianId};

/// The one-way hash an erased guardian's STOP is kept as: SHA-256 of the district and
/// the E.164 number, so that the same number in another district does not match.
pub fn stop_hash(district: DistrictId, number: &str) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(b"tidings erased stop v1\0");
    hash.update(district.as_uuid().as_bytes());
    hash.update(number.as_bytes());
    hash.finalize().into()
}

/// Everything Tidings holds about one guardian.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GuardianExport {
    pub exported_at: DateTime<Utc>,
    /// The guardian with their children, contact points and opt-outs.
    pub guardian: GuardianDetail,
    /// Every opt-out, revoked ones too.
    pub opt_out_history: Vec<ExportedOptOut>,
    /// Messages they were sent, newest first, each with its deliveries.
    pub messages: Vec<ExportedMessage>,
    /// Texts they sent (replies and keywords), oldest first.
    pub replies: Vec<ExportedReply>,
    /// App sessions of their SMS numbers and email addresses.
    pub app_sessions: Vec<ExportedSession>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedOptOut {
    pub channel: String,
    pub source: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedMessage {
    pub message_id: Uuid,
    pub kind: String,
    pub subject: String,
    pub body: String,
    pub created_at: DateTime<Utc>,
    /// The language it was sent to them in.
    pub language: String,
    /// not_required, pending or acked.
    pub ack_state: String,
    pub acked_at: Option<DateTime<Utc>>,
    /// The channel or surface the acknowledgment came through.
    pub ack_via: Option<String>,
    pub deliveries: Vec<ExportedDelivery>,
}

/// A delivery as stored, with every transition (oldest first) and every provider call.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedDelivery {
    #[serde(flatten)]
    pub delivery: Delivery,
    pub events: Vec<DeliveryEventRecord>,
    pub attempts: Vec<AttemptRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedReply {
    pub received_at: DateTime<Utc>,
    pub from_address: String,
    pub body: String,
    /// stop, start, help or ack; none for a reply.
    pub keyword: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExportedSession {
    pub channel: String,
    pub address: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// What an erasure removed (counts only: the audit keeps these, never the data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Erased {
    pub guardian_id: Uuid,
    pub contact_points: u64,
    pub children: u64,
    pub opt_outs: u64,
    pub recipients: u64,
    pub deliveries: u64,
    pub replies: u64,
    pub app_sessions: u64,
    /// Numbers whose carrier STOP is kept as a hash.
    pub stops_kept: u64,
}

/// How an erasure went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EraseOutcome {
    Erased(Erased),
    NotFound,
    /// Deliveries to the guardian still wait to be sent (how many): erasing them now
    /// would take them from under a dispatcher. Cancel the message, or wait.
    Sending(u64),
}

#[async_trait]
pub trait GuardianData: Send + Sync {
    /// Everything held about a guardian of `district`; `None` when there is no such
    /// guardian.
    async fn guardian_export(
        &self,
        district: DistrictId,
        which: &GuardianRef,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<GuardianExport>>;
}

#[async_trait]
impl<S: Pools> GuardianData for S {
    async fn guardian_export(
        &self,
        district: DistrictId,
        which: &GuardianRef,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<GuardianExport>> {
        let mut conn = self.reads().acquire().await?;
        let scope = Scope::District(district);
        let Some(guardian) = directory::guardian_detail::<S::Db>(&mut conn, &scope, which).await?
        else {
            return Ok(None);
        };
        let id = guardian.guardian.id;
        let opt_out_history = S::Db::fetch_all(
            &mut conn,
            "SELECT channel, source, created_at, revoked_at FROM opt_outs \
             WHERE guardian_id = $1 ORDER BY created_at, id",
            Args::new().id(id),
        )
        .await?
        .iter()
        .map(|row| {
            Ok(ExportedOptOut {
                channel: row.text("channel")?,
                source: row.text("source")?,
                created_at: row.time("created_at")?,
                revoked_at: row.opt_time("revoked_at")?,
            })
        })
        .collect::<StoreResult<_>>()?;

        let mut messages: Vec<ExportedMessage> = Vec::new();
        let mut at_index: HashMap<Uuid, usize> = HashMap::new();
        for row in S::Db::fetch_all(
            &mut conn,
            "SELECT m.id, m.kind, m.subject, m.body, m.translations, m.created_at, \
                    r.language, r.ack_state, r.acked_at, r.ack_via \
             FROM recipients r JOIN messages m ON m.id = r.message_id \
             WHERE r.guardian_id = $1 ORDER BY m.created_at DESC, m.id",
            Args::new().id(id),
        )
        .await?
        {
            let language = row.text("language")?;
            // The text in the language it went in, where the message has it.
            let translated = row.json("translations")?.get(&language).cloned();
            let text = |field: &str| -> StoreResult<String> {
                Ok(match translated.as_ref().and_then(|t| t.get(field)) {
                    Some(serde_json::Value::String(text)) => text.clone(),
                    _ => row.text(field)?,
                })
            };
            let message_id = row.id("id")?;
            at_index.insert(message_id, messages.len());
            messages.push(ExportedMessage {
                message_id,
                kind: row.text("kind")?,
                subject: text("subject")?,
                body: text("body")?,
                created_at: row.time("created_at")?,
                language,
                ack_state: row.text("ack_state")?,
                acked_at: row.opt_time("acked_at")?,
                ack_via: row.opt_text("ack_via")?,
                deliveries: Vec::new(),
            });
        }

        // Their deliveries in the order they were made, then each one's events and calls.
        let mut deliveries: Vec<ExportedDelivery> = S::Db::fetch_all(
            &mut conn,
            &format!(
                "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE guardian_id = $1 \
                 ORDER BY created_at, id"
            ),
            Args::new().id(id),
        )
        .await?
        .iter()
        .map(|row| {
            Ok(ExportedDelivery {
                delivery: deliveries::from_row(row)?,
                events: Vec::new(),
                attempts: Vec::new(),
            })
        })
        .collect::<StoreResult<_>>()?;
        let place: HashMap<DeliveryId, usize> = deliveries
            .iter()
            .enumerate()
            .map(|(i, d)| (d.delivery.id, i))
            .collect();
        let of_guardian = |table: &str, columns: &str, order: &str| {
            format!(
                "SELECT {columns} FROM {table} WHERE delivery_id IN \
                 (SELECT id FROM deliveries WHERE guardian_id = $1) ORDER BY delivery_id, {order}"
            )
        };
        let sql = of_guardian("delivery_events", EVENT_COLUMNS, "version");
        for row in S::Db::fetch_all(&mut conn, &sql, Args::new().id(id)).await? {
            let event = event_from_row(&row)?;
            if let Some(&i) = place.get(&event.delivery_id) {
                deliveries[i].events.push(event);
            }
        }
        let sql = of_guardian("delivery_attempts", ATTEMPT_COLUMNS, "attempt");
        for row in S::Db::fetch_all(&mut conn, &sql, Args::new().id(id)).await? {
            let delivery = DeliveryId::from_uuid(row.id("delivery_id")?);
            if let Some(&i) = place.get(&delivery) {
                deliveries[i].attempts.push(attempt_from_row(&row)?);
            }
        }
        for delivery in deliveries {
            if let Some(&i) = at_index.get(delivery.delivery.message_id.as_uuid()) {
                messages[i].deliveries.push(delivery);
            }
        }

        let replies = S::Db::fetch_all(
            &mut conn,
            "SELECT received_at, from_address, body, keyword FROM inbound_messages \
             WHERE guardian_id = $1 ORDER BY received_at, id",
            Args::new().id(id),
        )
        .await?
        .iter()
        .map(|row| {
            Ok(ExportedReply {
                received_at: row.time("received_at")?,
                from_address: row.text("from_address")?,
                body: row.text("body")?,
                keyword: row.opt_text("keyword")?,
            })
        })
        .collect::<StoreResult<_>>()?;

        let app_sessions = S::Db::fetch_all(
            &mut conn,
            "SELECT s.channel, s.address, s.created_at, s.expires_at, s.revoked_at \
             FROM guardian_sessions s WHERE EXISTS (SELECT 1 FROM contact_points c \
                 WHERE c.guardian_id = $1 AND c.kind = s.channel AND c.address = s.address) \
             ORDER BY s.created_at, s.id",
            Args::new().id(id),
        )
        .await?
        .iter()
        .map(|row| {
            Ok(ExportedSession {
                channel: row.text("channel")?,
                address: row.text("address")?,
                created_at: row.time("created_at")?,
                expires_at: row.time("expires_at")?,
                revoked_at: row.opt_time("revoked_at")?,
            })
        })
        .collect::<StoreResult<_>>()?;

        Ok(Some(GuardianExport {
            exported_at: at,
            guardian,
            opt_out_history,
            messages,
            replies,
            app_sessions,
        }))
    }
}

/// Erases a guardian of `district`, in the caller's transaction (see the module's doc).
/// App sessions and sign-in codes of an address go with it unless another guardian
/// still has that address (a family's shared phone keeps its session).
pub(crate) async fn erase<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    guardian: GuardianId,
    at: DateTime<Utc>,
) -> StoreResult<EraseOutcome> {
    let (district_id, id) = (*district.as_uuid(), *guardian.as_uuid());
    let found = D::fetch_optional(
        &mut *conn,
        "SELECT id FROM guardians WHERE id = $1 AND district_id = $2",
        Args::new().id(id).id(district_id),
    )
    .await?;
    if found.is_none() {
        return Ok(EraseOutcome::NotFound);
    }
    let waiting = D::fetch_one(
        &mut *conn,
        "SELECT count(*) AS n FROM deliveries WHERE guardian_id = $1 \
         AND state IN ('CREATED', 'QUEUED')",
        Args::new().id(id),
    )
    .await?
    .i64("n")?;
    if waiting > 0 {
        return Ok(EraseOutcome::Sending(waiting as u64));
    }
    let mut erased = Erased {
        guardian_id: id,
        contact_points: 0,
        children: 0,
        opt_outs: 0,
        recipients: 0,
        deliveries: 0,
        replies: 0,
        app_sessions: 0,
        stops_kept: 0,
    };

    // A carrier STOP outlives the guardian, as hashes of their numbers: those on file
    // and any that texted STOP.
    let stopped = D::fetch_one(
        &mut *conn,
        "SELECT count(*) AS n FROM opt_outs WHERE guardian_id = $1 AND channel = 'sms' \
         AND source = 'carrier' AND revoked_at IS NULL",
        Args::new().id(id),
    )
    .await?
    .i64("n")?
        > 0;
    if stopped {
        let mut numbers: HashSet<String> = HashSet::new();
        for row in D::fetch_all(
            &mut *conn,
            "SELECT address FROM contact_points WHERE guardian_id = $1 AND kind = 'sms' \
             UNION SELECT from_address AS address FROM inbound_messages \
             WHERE guardian_id = $1 AND keyword = 'stop'",
            Args::new().id(id),
        )
        .await?
        {
            numbers.insert(row.text("address")?);
        }
        for number in numbers {
            erased.stops_kept += D::execute(
                &mut *conn,
                "INSERT INTO erased_stops (district_id, address_hash, created_at) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                Args::new()
                    .id(district_id)
                    .bytes(stop_hash(district, &number).to_vec())
                    .time(at),
            )
            .await?;
        }
    }

    let mine = Args::new().id(id);
    let of_deliveries = "(SELECT id FROM deliveries WHERE guardian_id = $1)";
    for table in ["delivery_events", "delivery_attempts", "log_entries"] {
        let sql = format!("DELETE FROM {table} WHERE delivery_id IN {of_deliveries}");
        D::execute(&mut *conn, &sql, mine.clone()).await?;
    }
    // A standby points at the delivery it stands in for: both go, in one statement.
    erased.deliveries = D::execute(
        &mut *conn,
        "DELETE FROM deliveries WHERE guardian_id = $1",
        mine.clone(),
    )
    .await?;
    erased.recipients = D::execute(
        &mut *conn,
        "DELETE FROM recipients WHERE guardian_id = $1",
        mine.clone(),
    )
    .await?;
    erased.replies = D::execute(
        &mut *conn,
        "DELETE FROM inbound_messages WHERE guardian_id = $1",
        mine.clone(),
    )
    .await?;
    let only_theirs = "EXISTS (SELECT 1 FROM contact_points c WHERE c.guardian_id = $1 \
             AND c.kind = {t}.channel AND c.address = {t}.address) \
         AND NOT EXISTS (SELECT 1 FROM contact_points o WHERE o.guardian_id <> $1 \
             AND o.kind = {t}.channel AND o.address = {t}.address)";
    erased.app_sessions = D::execute(
        &mut *conn,
        &format!(
            "DELETE FROM guardian_sessions WHERE {}",
            only_theirs.replace("{t}", "guardian_sessions")
        ),
        mine.clone(),
    )
    .await?;
    D::execute(
        &mut *conn,
        &format!(
            "DELETE FROM guardian_sign_ins WHERE {}",
            only_theirs.replace("{t}", "guardian_sign_ins")
        ),
        mine.clone(),
    )
    .await?;
    erased.opt_outs = D::execute(
        &mut *conn,
        "DELETE FROM opt_outs WHERE guardian_id = $1",
        mine.clone(),
    )
    .await?;
    erased.contact_points = D::execute(
        &mut *conn,
        "DELETE FROM contact_points WHERE guardian_id = $1",
        mine.clone(),
    )
    .await?;
    erased.children = D::execute(
        &mut *conn,
        "DELETE FROM guardian_students WHERE guardian_id = $1",
        mine.clone(),
    )
    .await?;
    D::execute(&mut *conn, "DELETE FROM guardians WHERE id = $1", mine).await?;
    Ok(EraseOutcome::Erased(erased))
}

/// The STOP hashes kept for erased guardians of the district `guardian` belongs to
/// (usually none), read once per chunk of an audience.
pub(crate) async fn erased_stops<D: Dialect>(
    conn: &mut D::Connection,
    guardian: Uuid,
) -> StoreResult<(Option<DistrictId>, HashSet<Vec<u8>>)> {
    let mut district = None;
    let mut hashes = HashSet::new();
    for row in D::fetch_all(
        conn,
        "SELECT g.district_id, e.address_hash FROM guardians g \
         LEFT JOIN erased_stops e ON e.district_id = g.district_id WHERE g.id = $1",
        Args::new().id(guardian),
    )
    .await?
    {
        district = Some(DistrictId::from_uuid(row.id("district_id")?));
        if let Some(hash) = row.opt_bytes("address_hash")? {
            hashes.insert(hash);
        }
    }
    Ok((district, hashes))
}

/// Forgets the STOP kept for `number` in `district`: it texted START.
pub(crate) async fn forget_stop<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    number: &str,
) -> StoreResult<()> {
    D::execute(
        conn,
        "DELETE FROM erased_stops WHERE district_id = $1 AND address_hash = $2",
        Args::new()
            .id(*district.as_uuid())
            .bytes(stop_hash(district, number).to_vec()),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_hash_is_the_numbers_and_the_districts_own() {
        let (a, b) = (DistrictId::new(), DistrictId::new());
        assert_eq!(stop_hash(a, "+15555550100"), stop_hash(a, "+15555550100"));
        assert_ne!(stop_hash(a, "+15555550100"), stop_hash(a, "+15555550101"));
        assert_ne!(stop_hash(a, "+15555550100"), stop_hash(b, "+15555550100"));
    }
}
