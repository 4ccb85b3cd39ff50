//! The messages repository: a district's messages as staff read them (list, summary,
//! content, recipients), their recall, the hourly quota and idempotency keys. Written
//! once for both databases over [`Dialect`].

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use uuid::Uuid;

use super::deliveries::DELIVERY_COLUMNS;
use super::dialect::{Args, Columns, Dialect};
use super::transitions::{InTx, Transitions};
use super::{ChannelSeries, DeliveryTimeline, RecipientTimeline, ReplyView, StateSeries};
use super::{
    DeliveryCount, IdempotencyClaim, MessageContent, MessageListItem, MessageScope, MessageSummary,
    RecipientView, StoreError, StoreResult,
};
use crate::delivery::{self, Actor, Applied, Request};
use crate::{Channel, Decision, DeliveryEvent, DeliveryState, MessageId, StaffId};

/// The scope's filter on `messages`, with the message id as `$1`.
const IN_SCOPE: &str = "id = $1 AND district_id = $2 AND ($3 IS NULL OR author_id = $3)";

fn scoped(message: Uuid, scope: &MessageScope) -> Args {
    let (district, author) = scope.parts();
    Args::new().id(message).id(district).opt_id(author)
}

/// Whether the scope may see the message.
async fn visible<D: Dialect>(
    conn: &mut D::Connection,
    scope: &MessageScope,
    message: Uuid,
) -> StoreResult<bool> {
    let sql = format!("SELECT id FROM messages WHERE {IN_SCOPE}");
    Ok(D::fetch_optional(conn, &sql, scoped(message, scope))
        .await?
        .is_some())
}

/// The scope's messages, newest first, before `before` (ids are time-ordered).
pub(crate) async fn list<D: Dialect>(
    conn: &mut D::Connection,
    scope: &MessageScope,
    before: Option<Uuid>,
    limit: u32,
) -> StoreResult<Vec<MessageListItem>> {
    let (district, author) = scope.parts();
    let rows = D::fetch_all(
        conn,
        "SELECT id, kind, subject, author_id, requires_ack, created_at, cancelled_at FROM messages \
         WHERE district_id = $1 AND ($2 IS NULL OR author_id = $2) AND ($3 IS NULL OR id < $3) \
         ORDER BY id DESC LIMIT $4",
        Args::new()
            .id(district)
            .opt_id(author)
            .opt_id(before)
            .int(limit),
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(MessageListItem {
                id: MessageId::from_uuid(row.id("id")?),
                kind: row.parsed("kind")?,
                subject: row.text("subject")?,
                author_id: StaffId::from_uuid(row.id("author_id")?),
                requires_ack: row.flag("requires_ack")?,
                created_at: row.time("created_at")?,
                cancelled_at: row.opt_time("cancelled_at")?,
            })
        })
        .collect()
}

const RECIPIENT_SELECT: &str =
    "SELECT r.id, r.guardian_id, g.given_name, g.family_name, r.language, \
     r.ack_state, r.acked_at, r.ack_via FROM recipients r JOIN guardians g ON g.id = r.guardian_id";

fn recipient(row: &impl Columns) -> StoreResult<RecipientView> {
    Ok(RecipientView {
        id: row.id("id")?,
        guardian_id: row.id("guardian_id")?,
        given_name: row.text("given_name")?,
        family_name: row.text("family_name")?,
        language: row.text("language")?,
        ack_state: row.text("ack_state")?,
        acked_at: row.opt_time("acked_at")?,
        ack_via: row.opt_text("ack_via")?,
    })
}

/// Recipients of a message the scope may see (`None` otherwise), optionally only the
/// acknowledged (`Some(true)`) or not yet acknowledged (`Some(false)`) ones.
pub(crate) async fn recipients<D: Dialect>(
    conn: &mut D::Connection,
    scope: &MessageScope,
    message: Uuid,
    acked: Option<bool>,
    after: Option<Uuid>,
    limit: u32,
) -> StoreResult<Option<Vec<RecipientView>>> {
    let sql = format!("SELECT requires_ack FROM messages WHERE {IN_SCOPE}");
    let Some(row) = D::fetch_optional(conn, &sql, scoped(message, scope)).await? else {
        return Ok(None);
    };
    // Each filter spelled so that an index in id order serves it: of a message asking
    // for acknowledgment, the not yet acknowledged are the pending (`recipients_open`);
    // of one that does not, nobody is acknowledged.
    let which = match (acked, row.flag("requires_ack")?) {
        (None, _) | (Some(false), false) => "",
        (Some(true), _) => "AND r.ack_state = 'acked'",
        (Some(false), true) => "AND r.ack_state = 'pending'",
    };
    let sql = format!(
        "{RECIPIENT_SELECT} WHERE r.message_id = $1 {which} \
         AND ($2 IS NULL OR r.id > $2) ORDER BY r.id LIMIT $3"
    );
    let args = Args::new().id(message).opt_id(after).int(limit);
    D::fetch_all(conn, &sql, args)
        .await?
        .iter()
        .map(recipient)
        .collect::<StoreResult<Vec<_>>>()
        .map(Some)
}

/// One recipient of a message the scope may see, with each delivery's state changes.
pub(crate) async fn recipient_timeline<D: Dialect>(
    conn: &mut D::Connection,
    scope: &MessageScope,
    message: Uuid,
    recipient_id: Uuid,
) -> StoreResult<Option<RecipientTimeline>> {
    if !visible::<D>(conn, scope, message).await? {
        return Ok(None);
    }
    let sql = format!("{RECIPIENT_SELECT} WHERE r.message_id = $1 AND r.id = $2");
    let Some(row) = D::fetch_optional(conn, &sql, Args::new().id(message).id(recipient_id)).await?
    else {
        return Ok(None);
    };
    let found = recipient(&row)?;
    // By the guardian's deliveries (indexed), not the message's (a broadcast has
    // hundreds of thousands).
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries \
         WHERE guardian_id = $3 AND message_id = $1 AND recipient_id = $2 ORDER BY created_at, id"
    );
    let args = Args::new()
        .id(message)
        .id(recipient_id)
        .id(found.guardian_id);
    let deliveries = D::fetch_all(conn, &sql, args)
        .await?
        .iter()
        .map(super::deliveries::from_row)
        .collect::<StoreResult<Vec<_>>>()?;
    let mut timelines = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        let events = super::deliveries::events::<D>(conn, *delivery.id.as_uuid()).await?;
        timelines.push(DeliveryTimeline { delivery, events });
    }
    Ok(Some(RecipientTimeline {
        recipient: found,
        deliveries: timelines,
    }))
}

/// Texts the recipients of a message the scope may see sent since it was sent.
pub(crate) async fn replies<D: Dialect>(
    conn: &mut D::Connection,
    scope: &MessageScope,
    message: Uuid,
    limit: u32,
) -> StoreResult<Option<Vec<ReplyView>>> {
    if !visible::<D>(conn, scope, message).await? {
        return Ok(None);
    }
    D::fetch_all(
        conn,
        "SELECT i.id, i.guardian_id, g.given_name, g.family_name, i.from_address, i.body, i.keyword, \
                i.received_at \
         FROM inbound_messages i JOIN guardians g ON g.id = i.guardian_id \
         JOIN messages m ON m.id = $1 \
         WHERE i.district_id = m.district_id AND i.received_at >= m.created_at \
         AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = $1 AND r.guardian_id = i.guardian_id) \
         ORDER BY i.received_at DESC, i.id DESC LIMIT $2",
        Args::new().id(message).int(limit),
    )
    .await?
    .iter()
    .map(|row| {
        Ok(ReplyView {
            id: row.id("id")?,
            guardian_id: row.id("guardian_id")?,
            guardian_name: format!("{} {}", row.text("given_name")?, row.text("family_name")?),
            from: row.text("from_address")?,
            body: row.text("body")?,
            keyword: row.opt_text("keyword")?,
            received_at: row.time("received_at")?,
        })
    })
    .collect::<StoreResult<Vec<_>>>()
    .map(Some)
}

/// What a message the scope may see said and how it was to be sent.
pub(crate) async fn content<D: Dialect>(
    conn: &mut D::Connection,
    scope: &MessageScope,
    message: Uuid,
) -> StoreResult<Option<MessageContent>> {
    let sql = format!(
        "SELECT kind, delivery_guarantee, subject, body, translations, channels, requires_ack, \
                fallback_after_seconds FROM messages WHERE {IN_SCOPE}"
    );
    let Some(row) = D::fetch_optional(conn, &sql, scoped(message, scope)).await? else {
        return Ok(None);
    };
    let channels: Vec<Channel> = serde_json::from_value(row.json("channels")?)
        .map_err(|e| StoreError::Corrupt(format!("channels: {e}")))?;
    Ok(Some(MessageContent {
        kind: row.parsed("kind")?,
        guarantee: row.parsed("delivery_guarantee")?,
        subject: row.text("subject")?,
        body: row.text("body")?,
        translations: row.json("translations")?,
        channels,
        requires_ack: row.flag("requires_ack")?,
        fallback_after: row
            .opt_i32("fallback_after_seconds")?
            .map(|s| Duration::seconds(i64::from(s))),
    }))
}

/// The guardians who still owe an acknowledgment, by id.
pub(crate) async fn pending_guardians<D: Dialect>(
    conn: &mut D::Connection,
    message: Uuid,
) -> StoreResult<Vec<Uuid>> {
    D::fetch_all(
        conn,
        "SELECT guardian_id FROM recipients WHERE message_id = $1 AND ack_state = 'pending' \
         ORDER BY guardian_id",
        Args::new().id(message),
    )
    .await?
    .iter()
    .map(|row| row.id("guardian_id"))
    .collect()
}

/// Recalls a message in the caller's transaction: every delivery the state machine lets a
/// cancel move is moved to CANCELLED through the one transition path, with its event
/// row. Returns `None` if the scope may not see the message, else the (cancelled, left as
/// they were) counts.
pub(crate) async fn cancel<D: Dialect + Transitions>(
    conn: &mut D::Connection,
    scope: &MessageScope,
    message: Uuid,
    actor: &Actor,
    at: DateTime<Utc>,
) -> StoreResult<Option<(u64, u64)>> {
    if !visible::<D>(conn, scope, message).await? {
        return Ok(None);
    }
    D::execute(
        conn,
        "UPDATE messages SET cancelled_at = COALESCE(cancelled_at, $1) WHERE id = $2",
        Args::new().time(at).id(message),
    )
    .await?;
    // Only the deliveries a cancel can move, by the states `next` lets it move (bound as
    // names, not spelled here); each is then decided by `next` itself.
    let mut args = Args::new().id(message);
    let movable = args.texts(
        DeliveryState::ALL
            .into_iter()
            .filter(|from| {
                matches!(
                    delivery::next(*from, DeliveryEvent::Cancel),
                    Decision::Move(_)
                )
            })
            .map(DeliveryState::as_str),
    );
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE message_id = $1 AND state IN ({movable}) ORDER BY id"
    );
    let mut requests = Vec::new();
    for row in D::fetch_all(conn, &sql, args).await? {
        let delivery = super::deliveries::from_row(&row)?;
        requests.push((
            delivery,
            Request::new(DeliveryEvent::Cancel, actor, None, at),
        ));
    }
    let results = delivery::decide_and_apply(&mut InTx::<D>(conn), requests).await?;
    let cancelled = results
        .iter()
        .filter(|r| matches!(r, Ok(Applied::Moved { .. })))
        .count() as u64;
    let left = D::fetch_one(
        conn,
        "SELECT count(*) AS n FROM deliveries WHERE message_id = $1 \
         AND state NOT IN ('CANCELLED', 'SUPPRESSED')",
        Args::new().id(message),
    )
    .await?
    .i64("n")?;
    Ok(Some((cancelled, left as u64)))
}

/// Claims an idempotency key, or says what it already holds (see `WriteTransaction`).
pub(crate) async fn claim_idempotency_key<D: Dialect>(
    conn: &mut D::Connection,
    scope: &str,
    key: &str,
    request_hash: &[u8],
    keep: Duration,
    at: DateTime<Utc>,
) -> StoreResult<IdempotencyClaim> {
    // A key older than `keep` is forgotten: the next request with it is a new one.
    D::execute(
        conn,
        "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < $3",
        Args::new().text(scope).text(key).time(at - keep),
    )
    .await?;
    let claimed = D::execute(
        conn,
        "INSERT INTO idempotency_keys (scope, key, request_hash, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (scope, key) DO NOTHING",
        Args::new().text(scope).text(key).bytes(request_hash).time(at),
    )
    .await?;
    if claimed == 1 {
        return Ok(IdempotencyClaim::Claimed);
    }
    let Some(row) = D::fetch_optional(
        conn,
        "SELECT request_hash, CAST(response_status AS INTEGER) AS response_status, response_body \
         FROM idempotency_keys WHERE scope = $1 AND key = $2",
        Args::new().text(scope).text(key),
    )
    .await?
    else {
        // Forgotten (expired) between our insert and read: the caller may simply try again.
        return Ok(IdempotencyClaim::InFlight);
    };
    if row.opt_bytes("request_hash")?.as_deref() != Some(request_hash) {
        return Ok(IdempotencyClaim::Mismatch);
    }
    Ok(match row.opt_i32("response_status")? {
        None => IdempotencyClaim::InFlight,
        Some(status) => IdempotencyClaim::Replay {
            status: status as u16,
            body: row.opt_bytes("response_body")?.unwrap_or_default(),
        },
    })
}

/// Stores the answer a claimed key replays from now on.
pub(crate) async fn complete_idempotency_key<D: Dialect>(
    conn: &mut D::Connection,
    scope: &str,
    key: &str,
    status: u16,
    body: &[u8],
) -> StoreResult<()> {
    D::execute(
        conn,
        "UPDATE idempotency_keys SET response_status = $1, response_body = $2 \
         WHERE scope = $3 AND key = $4",
        Args::new().int(status).bytes(body).text(scope).text(key),
    )
    .await?;
    Ok(())
}

/// A message the scope may see, with its recipients' acknowledgments and its deliveries
/// counted by channel and state.
pub(crate) async fn summary<D: Dialect>(
    conn: &mut D::Connection,
    scope: &MessageScope,
    message: Uuid,
) -> StoreResult<Option<MessageSummary>> {
    let sql = format!(
        "SELECT id, kind, subject, author_id, requires_ack, created_at, scheduled_at, fallback_after_seconds, \
                (SELECT count(*) FROM recipients r WHERE r.message_id = m.id) AS recipients, \
                (SELECT count(*) FROM recipients r WHERE r.message_id = m.id AND r.ack_state = 'pending') AS pending \
         FROM messages m WHERE {IN_SCOPE}"
    );
    // Both counts read indexes only; only a pending recipient is ever acknowledged
    // (`ack_state` moves pending → acked and nothing else), so the acknowledged are the
    // rest of a message that asks for acknowledgment.
    let Some(row) = D::fetch_optional(conn, &sql, scoped(message, scope)).await? else {
        return Ok(None);
    };
    // The deliveries per channel and state: what the message started with, plus every
    // recorded move in, less every move out — a few rows per batch of the dispatcher,
    // never the deliveries of a broadcast themselves.
    let counts = D::fetch_all(
        conn,
        "SELECT channel, state, CAST(sum(n) AS BIGINT) AS n FROM ( \
           SELECT channel, state, n FROM message_starts WHERE message_id = $1 \
           UNION ALL SELECT channel, to_state, n FROM message_moves WHERE message_id = $1 \
           UNION ALL SELECT channel, from_state, -n FROM message_moves WHERE message_id = $1 \
         ) AS changes GROUP BY channel, state HAVING sum(n) <> 0 ORDER BY channel, state",
        Args::new().id(message),
    )
    .await?
    .iter()
    .map(|row| {
        Ok(DeliveryCount {
            channel: row.parsed("channel")?,
            state: row.parsed("state")?,
            count: row.i64("n")?,
        })
    })
    .collect::<StoreResult<Vec<_>>>()?;
    let mut suppressed = std::collections::BTreeMap::new();
    for reason in D::fetch_all(
        conn,
        "SELECT suppressed_reason, count(*) AS n FROM deliveries \
         WHERE message_id = $1 AND state = 'SUPPRESSED' GROUP BY suppressed_reason",
        Args::new().id(message),
    )
    .await?
    {
        let why = reason.opt_text("suppressed_reason")?;
        suppressed.insert(why.unwrap_or_else(|| "unknown".into()), reason.i64("n")?);
    }
    Ok(Some(MessageSummary {
        id: MessageId::from_uuid(message),
        scheduled_at: row.opt_time("scheduled_at")?,
        kind: row.parsed("kind")?,
        subject: row.text("subject")?,
        author_id: StaffId::from_uuid(row.id("author_id")?),
        requires_ack: row.flag("requires_ack")?,
        created_at: row.time("created_at")?,
        recipients: row.i64("recipients")?,
        acknowledged: if row.flag("requires_ack")? {
            row.i64("recipients")? - row.i64("pending")?
        } else {
            0
        },
        fallback_after_minutes: row.opt_i32("fallback_after_seconds")?.map(|s| s / 60),
        counts,
        suppressed,
    }))
}

/// Takes the district's row lock (held to commit) and refuses the send when the district
/// already has `max` non-emergency messages in the hour before `at`: two concurrent sends
/// at the limit cannot both pass.
pub(crate) async fn reserve_hourly_quota<D: Dialect>(
    conn: &mut D::Connection,
    district: Uuid,
    max: u32,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    super::districts::lock::<D>(conn, crate::DistrictId::from_uuid(district)).await?;
    let sent = D::fetch_one(
        conn,
        "SELECT count(*) AS n FROM messages WHERE district_id = $1 AND created_at >= $2 \
         AND kind <> 'emergency'",
        Args::new().id(district).time(at - Duration::hours(1)),
    )
    .await?
    .i64("n")?;
    if sent >= i64::from(max) {
        return Err(StoreError::HourlyQuota { sent, max });
    }
    Ok(())
}

/// The deliveries of a message the scope may see in each state over time, per channel, in
/// at most `steps` equal steps from its first state change to its last, going back from
/// the counts `now` (its summary's, so that a page counts the deliveries once) by each
/// recorded move from its `from` state to its `to` state.
pub(crate) async fn state_series<D: Dialect>(
    conn: &mut D::Connection,
    scope: &MessageScope,
    message: Uuid,
    now: &[DeliveryCount],
    steps: u32,
) -> StoreResult<Option<StateSeries>> {
    if !visible::<D>(conn, scope, message).await? {
        return Ok(None);
    }
    // The moves of each second, per channel, as every batch of transitions counted them
    // (a few rows per batch, not one per event).
    let moves = "SELECT channel, from_state, to_state, second, CAST(sum(n) AS BIGINT) AS n FROM message_moves \
                 WHERE message_id = $1 GROUP BY channel, from_state, to_state, second";
    let moved = D::fetch_all(conn, moves, Args::new().id(message))
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.parsed::<Channel>("channel")?,
                row.parsed::<DeliveryState>("from_state")?,
                row.parsed::<DeliveryState>("to_state")?,
                row.i64("second")?,
                row.i64("n")?,
            ))
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let seconds = moved.iter().map(|(_, _, _, second, _)| *second);
    let (first, last) = match (seconds.clone().min(), seconds.max()) {
        (Some(first), Some(last)) => (first, last),
        // Nothing has moved yet: one step, everything CREATED.
        _ => (0, 0),
    };
    let steps = i64::from(steps.max(1));
    let step_seconds = ((last - first) / steps + 1).max(1);
    let count = ((last - first) / step_seconds + 1) as usize;
    // Per channel: the counts now, then (below) the change in each step; the counts at
    // the start are those now less every change (a delivery need not start CREATED: one
    // nobody could be reached by is written SUPPRESSED).
    type Counts = BTreeMap<DeliveryState, i64>;
    let mut channels: Vec<(Channel, Vec<Counts>, Counts)> = Vec::new();
    for current in now {
        let channel = current.channel;
        let at = match channels.iter().position(|(c, ..)| *c == channel) {
            Some(at) => at,
            None => {
                channels.push((channel, vec![BTreeMap::new(); count], BTreeMap::new()));
                channels.len() - 1
            }
        };
        *channels[at].2.entry(current.state).or_insert(0) += current.count;
    }
    // Per channel and step: the net change of each state in that step.
    for (channel, from, to, second, n) in moved {
        let Some((_, deltas, _)) = channels.iter_mut().find(|(c, ..)| *c == channel) else {
            continue;
        };
        let step = (((second - first) / step_seconds).max(0) as usize).min(count - 1);
        *deltas[step].entry(from).or_insert(0) -= n;
        *deltas[step].entry(to).or_insert(0) += n;
    }
    let began = chrono::DateTime::from_timestamp(first, 0).unwrap_or_default();
    let channels = channels
        .into_iter()
        .map(|(channel, deltas, now)| {
            let mut start = now;
            for (state, n) in deltas.iter().flatten() {
                *start.entry(*state).or_insert(0) -= n;
            }
            start.retain(|_, n| *n != 0);
            let mut then = start.clone();
            let steps = deltas
                .into_iter()
                .map(|delta| {
                    for (state, n) in delta {
                        *then.entry(state).or_insert(0) += n;
                    }
                    then.retain(|_, n| *n != 0);
                    then.clone()
                })
                .collect();
            ChannelSeries {
                channel,
                start,
                steps,
            }
        })
        .collect();
    Ok(Some(StateSeries {
        start: began,
        step_seconds,
        channels,
    }))
}

/// A message's words as one recipient reads them.
pub(crate) struct Words {
    pub language: String,
    pub subject: String,
    pub body: String,
}

/// From a row with the recipient's `language` and the message's `translations`, `subject`
/// and `body`: the translation into that language where the message has one, else the
/// message's own words.
pub(crate) fn words(row: &impl Columns) -> StoreResult<Words> {
    let language = row.text("language")?;
    let translations = row.json("translations")?;
    let translated = |field: &str| -> StoreResult<String> {
        match translations
            .get(&language)
            .and_then(|t| t.get(field))
            .and_then(|v| v.as_str())
        {
            Some(text) => Ok(text.to_owned()),
            None => row.text(field),
        }
    };
    Ok(Words {
        subject: translated("subject")?,
        body: translated("body")?,
        language,
    })
}
