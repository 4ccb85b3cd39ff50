//! Where providers' events and guardians' texts land: the callback inbox, inbound SMS,
//! acknowledgment, implemented once for both stores over [`Pools`].

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::contacts;
use super::deliveries::{delivery_columns, DELIVERY_COLUMNS};
use super::dialect::{Args, Columns, Dialect, Pools, Value};
use super::directory::guardian_filter;
use super::dispatching;
use super::transitions::{InTx, Transitions};
use super::{
    AckOutcome, InboundSms, InboundTaken, InboxApply, InboxEffect, InboxItem, InboxPut, ReplyView,
    Scope, SmsKeyword, StoreResult,
};
use crate::delivery::{decide_and_apply, Actor, Applied, Delivery, Request};
use crate::{Channel, DeliveryEvent, DeliveryId, DeliveryState, DistrictId, GuardianId};

/// How a provider event's request ended, as its inbox mark (`applied` or `ignored`, with
/// what it did); `None` leaves it pending, to be decided again.
pub fn inbox_mark(
    result: &Result<crate::delivery::Applied, crate::delivery::ApplyError<super::StoreError>>,
) -> Option<(&'static str, String)> {
    use crate::delivery::{Applied, ApplyError};
    match result {
        Ok(Applied::Moved { from, delivery }) => {
            Some(("applied", format!("{from} -> {}", delivery.state)))
        }
        Ok(Applied::Ignored { reason, delivery }) => {
            Some(("ignored", format!("{reason:?} in {}", delivery.state)))
        }
        Err(ApplyError::NotFound(_)) => Some(("ignored", "no such delivery".into())),
        Err(ApplyError::Contended(..) | ApplyError::Write(_)) => None,
    }
}

#[async_trait]
pub trait Inbox: Send + Sync {
    /// Keeps an inbound SMS; `None` when the provider's message id was kept before (a
    /// repeat), else the guardians (district, guardian) whose SMS number sent it.
    async fn record_inbound(
        &self,
        sms: &InboundSms,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Vec<(DistrictId, GuardianId)>>>;

    /// A guardian acknowledges a message (their recipient row) through `via`: in one
    /// transaction the recipient is marked, the delivery on `via` moves to ACKED and the
    /// guardian's other not-yet-sent deliveries of the message are cancelled (each a
    /// compare-and-swap with its audit row). A second acknowledgment changes nothing.
    async fn acknowledge(
        &self,
        recipient: uuid::Uuid,
        via: Channel,
        actor: &crate::delivery::Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<AckOutcome>;

    /// The guardian's most recent message still waiting for their acknowledgment (its
    /// recipient row), if any.
    async fn open_ack(
        &self,
        guardian: GuardianId,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<uuid::Uuid>>;

    /// Texts from guardians the scope may see, newest first, older than `before`.
    async fn replies(
        &self,
        scope: &Scope,
        before: Option<uuid::Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<ReplyView>>;

    /// Takes a guardian's text in ONE transaction: keeps it, and unless it repeats one
    /// kept before (`None`: it already did what it does), does what its keyword asks for
    /// each guardian whose SMS number sent it — `stop`: a carrier opt-out of SMS; `start`:
    /// that opt-out revoked; `ack`: their most recent message waiting for acknowledgment
    /// acknowledged by `ack_actor`. A failure leaves nothing behind, so the provider's
    /// retry is taken afresh: a STOP is never kept without its opt-out.
    async fn take_inbound(
        &self,
        sms: &InboundSms,
        ack_actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<InboundTaken>>;

    /// Keeps a provider event in the callback inbox with `status` (`pending` to be
    /// applied, `rejected` with the reason as `outcome`). False when the same
    /// (provider, event id) was kept before: a duplicate.
    async fn inbox_put(
        &self,
        provider: &str,
        event_id: &str,
        payload: &serde_json::Value,
        status: &'static str,
        outcome: Option<&str>,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let event = InboxPut {
            provider: provider.to_owned(),
            event_id: event_id.to_owned(),
            payload: payload.clone(),
            status,
            outcome: outcome.map(str::to_owned),
        };
        Ok(self.inbox_put_many(&[event], at).await?.first() == Some(&true))
    }

    /// Applies kept events in one transaction, in order: each one's request decided and
    /// written through [`crate::delivery::decide_and_apply`] (compare-and-swap, audit
    /// row), and its inbox mark ([`inbox_mark`]). An event whose delivery kept moving
    /// under it stays pending; one no longer pending (another worker marked it) is left
    /// alone, nothing of it written again. Returns, per item, the status it was marked
    /// with by this call.
    async fn apply_inbox_batch(
        &self,
        items: &[InboxApply],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<Option<&'static str>>>;

    /// Deliveries by id (those that exist), in no particular order.
    async fn deliveries_by_ids(&self, ids: &[DeliveryId]) -> StoreResult<Vec<Delivery>>;

    /// Keeps several provider events in one transaction (one commit for many requests);
    /// per event, false when it was kept before.
    async fn inbox_put_many(
        &self,
        events: &[InboxPut],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>>;

    /// Pending inbox events, oldest first.
    async fn inbox_pending(&self, limit: u32) -> StoreResult<Vec<InboxItem>>;

    /// Inbox events by status.
    async fn inbox_counts(&self) -> StoreResult<std::collections::BTreeMap<String, i64>>;

    /// What each delivery of `ids` that exists was sent as: its channel, the provider's
    /// reference and every provider it was handed to (its attempts, recorded before each
    /// provider call, so before any report about it can come). A provider's event is
    /// believed only about a delivery that provider was given.
    async fn sent_through(&self, ids: &[DeliveryId]) -> StoreResult<Vec<SentThrough>>;

    /// Remembers a webhook token (Mailgun's `signature.token`) with a digest of the event
    /// it came with: [`TokenClaim::New`] the first time, [`TokenClaim::Repeat`] for the same
    /// event again (a provider's retry), [`TokenClaim::Reused`] for another event (a
    /// captured signature on forged content).
    async fn claim_webhook_token(
        &self,
        provider: &str,
        token: &str,
        event_key: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<TokenClaim>;

    /// Deletes, oldest first and at most `retention.limit` of each kind, applied and
    /// ignored events received before `finished_before`, rejected ones received before
    /// `rejected_before`, and webhook tokens seen before `tokens_before`. Pending events
    /// are never pruned.
    async fn prune_inbox(&self, retention: &InboxRetention) -> StoreResult<Pruned>;
}

/// A delivery as a provider's event about it must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentThrough {
    pub delivery_id: DeliveryId,
    pub channel: Channel,
    /// The provider's reference (Twilio's message SID, the email's Message-ID), once known.
    pub provider_ref: Option<String>,
    /// Every provider the delivery was handed to, sorted, without repeats.
    pub providers: Vec<String>,
}

/// What remembering a webhook token found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenClaim {
    New,
    /// Seen before with the same event.
    Repeat,
    /// Seen before with another event.
    Reused,
}

/// What [`Inbox::prune_inbox`] deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboxRetention {
    pub finished_before: DateTime<Utc>,
    pub rejected_before: DateTime<Utc>,
    pub tokens_before: DateTime<Utc>,
    /// Rows of each kind deleted at most in one call.
    pub limit: u32,
}

/// What one [`Inbox::prune_inbox`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub finished: u64,
    pub rejected: u64,
    pub tokens: u64,
}

/// The one implementation, for both stores.
#[async_trait]
impl<S: Pools> Inbox for S {
    async fn take_inbound(
        &self,
        sms: &InboundSms,
        ack_actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<InboundTaken>> {
        // It reads before it writes: on SQLite, with the write lock from its start.
        let mut tx = self.begin_write().await?;
        let Some(guardians) = record_inbound::<S::Db>(&mut tx, sms, at).await? else {
            return Ok(None);
        };
        let mut acknowledged = Vec::new();
        // An acknowledgment from a number several guardians share (a family phone)
        // acknowledges each one's waiting message; their deliveries are then decided and
        // written together, in delivery id order like every writer of several deliveries.
        let mut requests = Vec::new();
        for &(district, guardian) in &guardians {
            match sms.keyword {
                Some(SmsKeyword::Stop) => {
                    let (district, guardian) = (district.into(), guardian.into());
                    contacts::add_opt_out::<S::Db>(
                        &mut tx,
                        district,
                        guardian,
                        Channel::Sms,
                        "carrier",
                        at,
                    )
                    .await?;
                }
                Some(SmsKeyword::Start) => {
                    contacts::resubscribe::<S::Db>(&mut tx, guardian.into(), Channel::Sms, at)
                        .await?;
                    super::guardian_data::forget_stop::<S::Db>(&mut tx, district, &sms.from)
                        .await?;
                }
                Some(SmsKeyword::Ack) => {
                    let Some(recipient) = open_ack::<S::Db>(&mut tx, guardian, at).await? else {
                        continue;
                    };
                    let marked =
                        mark_acknowledged::<S::Db>(&mut tx, recipient, Channel::Sms, ack_actor, at)
                            .await?;
                    if let Ok(asked) = marked {
                        requests.extend(asked);
                        acknowledged.push(guardian);
                    }
                }
                _ => {}
            }
        }
        requests.sort_by_key(|(delivery, _)| *delivery.id.as_uuid());
        decide_and_apply(&mut InTx::<S::Db>(&mut tx), requests).await?;
        tx.commit().await?;
        Ok(Some(InboundTaken {
            guardians,
            acknowledged,
        }))
    }

    async fn record_inbound(
        &self,
        sms: &InboundSms,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<Vec<(DistrictId, GuardianId)>>> {
        let mut conn = self.writes().acquire().await?;
        record_inbound::<S::Db>(&mut conn, sms, at).await
    }

    async fn acknowledge(
        &self,
        recipient: uuid::Uuid,
        via: Channel,
        actor: &Actor,
        at: DateTime<Utc>,
    ) -> StoreResult<AckOutcome> {
        let mut tx = self.begin_write().await?;
        let outcome = acknowledge::<S::Db>(&mut tx, recipient, via, actor, at).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    async fn open_ack(
        &self,
        guardian: GuardianId,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<uuid::Uuid>> {
        let mut conn = self.reads().acquire().await?;
        open_ack::<S::Db>(&mut conn, guardian, at).await
    }

    async fn replies(
        &self,
        scope: &Scope,
        before: Option<uuid::Uuid>,
        limit: u32,
    ) -> StoreResult<Vec<ReplyView>> {
        let mut conn = self.reads().acquire().await?;
        let sql = format!(
            "SELECT m.id, m.guardian_id, x.given_name, x.family_name, m.from_address, m.body, \
                    m.keyword, m.received_at \
             FROM inbound_messages m JOIN guardians x ON x.id = m.guardian_id \
             WHERE m.district_id = $1 AND x.deleted_at IS NULL AND ({}) \
             AND ($3 IS NULL OR m.id < $3) ORDER BY m.id DESC LIMIT $4",
            guardian_filter(scope)
        );
        let args = Args::new()
            .id(*scope.district().as_uuid())
            .id(scope.staff())
            .opt_id(before)
            .int(limit);
        S::Db::fetch_all(&mut conn, &sql, args)
            .await?
            .iter()
            .map(|row| {
                Ok(ReplyView {
                    id: row.id("id")?,
                    guardian_id: row.id("guardian_id")?,
                    guardian_name: format!(
                        "{} {}",
                        row.text("given_name")?,
                        row.text("family_name")?
                    ),
                    from: row.text("from_address")?,
                    body: row.text("body")?,
                    keyword: row.opt_text("keyword")?,
                    received_at: row.time("received_at")?,
                })
            })
            .collect()
    }

    async fn apply_inbox_batch(
        &self,
        all: &[InboxApply],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<Option<&'static str>>> {
        let mut tx = self.writes().begin().await?;
        // First the events are claimed: each still pending is locked to commit, and one
        // another worker holds or has marked meanwhile is left to it (skipped, not waited
        // for: two workers never deadlock on a shared round). Its effects and its
        // delivery's move are then written once, not only idempotently twice.
        let mut claimed = HashSet::with_capacity(all.len());
        let mut ids: Vec<uuid::Uuid> = all.iter().map(|item| item.inbox_id).collect();
        ids.sort_unstable();
        for chunk in ids.chunks(CHUNK) {
            let mut args = Args::new();
            let listed = args.ids(chunk);
            let sql = format!(
                "SELECT id FROM callback_inbox WHERE id IN ({listed}) AND status = 'pending' \
                 ORDER BY id {}",
                <S::Db as super::dialect::Binder>::CLAIM
            );
            for row in S::Db::fetch_all(&mut tx, &sql, args).await? {
                claimed.insert(row.id("id")?);
            }
        }
        let items: Vec<&InboxApply> = all
            .iter()
            .filter(|item| claimed.contains(&item.inbox_id))
            .collect();
        for effect in items.iter().filter_map(|item| item.effect.as_ref()) {
            match effect {
                InboxEffect::RetireAddress {
                    guardian,
                    channel,
                    address,
                    reason,
                } => {
                    contacts::retire_address::<S::Db>(
                        &mut tx,
                        (*guardian).into(),
                        *channel,
                        address,
                        reason,
                        at,
                    )
                    .await?;
                }
                InboxEffect::OptOut {
                    district,
                    guardian,
                    channel,
                    source,
                } => {
                    contacts::add_opt_out::<S::Db>(
                        &mut tx,
                        (*district).into(),
                        (*guardian).into(),
                        *channel,
                        source,
                        at,
                    )
                    .await?;
                }
            }
        }
        let asking: Vec<usize> = (0..items.len())
            .filter(|&i| items[i].request.is_some())
            .collect();
        let requests: Vec<_> = asking
            .iter()
            .filter_map(|&i| items[i].request.clone())
            .collect();
        let results = decide_and_apply(&mut InTx::<S::Db>(&mut tx), requests).await?;
        // A report that moves a delivery still queued: the provider took a send whose
        // outcome its dispatcher never recorded (killed at the provider, or the database
        // away when the answer came), and nothing sends the delivery again. Its attempt
        // left open is closed as sent, or the delivery's history would show it at the
        // provider for ever. (A dispatcher whose answer comes after this finds its
        // attempt closed and changes nothing: the report has moved the delivery on.)
        let reported: Vec<uuid::Uuid> = results
            .iter()
            .filter_map(|result| match result {
                Ok(Applied::Moved {
                    from: DeliveryState::Queued,
                    delivery,
                }) => Some(*delivery.id.as_uuid()),
                _ => None,
            })
            .collect();
        dispatching::close_as_sent::<S::Db>(&mut tx, &reported, at).await?;
        let mut marks: Vec<Option<(&'static str, String)>> = items
            .iter()
            .map(|item| Some((item.status, item.outcome.clone())))
            .collect();
        for (&index, result) in asking.iter().zip(&results) {
            marks[index] = inbox_mark(result);
        }
        // Each event marked with its delivery's district, whose retention then keeps it.
        let done: Vec<(uuid::Uuid, &'static str, &str, Option<uuid::Uuid>)> = items
            .iter()
            .zip(&marks)
            .filter_map(|(item, mark)| {
                let district = item.district.map(|d| *d.as_uuid());
                mark.as_ref()
                    .map(|(status, outcome)| (item.inbox_id, *status, outcome.as_str(), district))
            })
            .collect();
        // A statement per chunk, not per event.
        for chunk in done.chunks(CHUNK) {
            let mut args = Args::new().time(at);
            let rows: Vec<String> = chunk
                .iter()
                .map(|(id, status, outcome, district)| {
                    let id = args.ids(&[*id]);
                    let texts = args.texts([*status, *outcome]);
                    args.push(super::dialect::Value::Id(*district));
                    format!("({id}, {texts}, ${})", args.len())
                })
                .collect();
            let sql = format!(
                "WITH v (iid, new_status, new_outcome, new_district) AS (VALUES {}) \
                 UPDATE callback_inbox SET status = v.new_status, outcome = v.new_outcome, \
                 applied_at = $1, district_id = v.new_district \
                 FROM v WHERE id = v.iid AND status = 'pending'",
                rows.join(", ")
            );
            S::Db::execute(&mut tx, &sql, args).await?;
        }
        tx.commit().await?;
        let mut by_id: std::collections::HashMap<uuid::Uuid, &'static str> = items
            .iter()
            .zip(marks)
            .filter_map(|(item, mark)| mark.map(|(status, _)| (item.inbox_id, status)))
            .collect();
        Ok(all
            .iter()
            .map(|item| by_id.remove(&item.inbox_id))
            .collect())
    }

    async fn deliveries_by_ids(&self, ids: &[DeliveryId]) -> StoreResult<Vec<Delivery>> {
        let mut conn = self.reads().acquire().await?;
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(CHUNK) {
            let mut args = Args::new();
            let listed = args.ids(&chunk.iter().map(|id| *id.as_uuid()).collect::<Vec<_>>());
            let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id IN ({listed})");
            for row in S::Db::fetch_all(&mut conn, &sql, args).await? {
                found.push(super::deliveries::from_row(&row)?);
            }
        }
        Ok(found)
    }

    async fn inbox_put_many(
        &self,
        events: &[InboxPut],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<bool>> {
        let mut tx = self.writes().begin().await?;
        let mut inserted: HashSet<(String, String)> = HashSet::new();
        for chunk in events.chunks(CHUNK) {
            let mut args = Args::new().time(at);
            let rows: Vec<String> = chunk
                .iter()
                .map(|e| {
                    let id = args.ids(&[uuid::Uuid::now_v7()]);
                    let names = args.texts([e.provider.as_str(), e.event_id.as_str()]);
                    args.push(Value::Json(Some(e.payload.clone())));
                    let payload = args.len();
                    args.push(Value::Text(Some(e.status.to_owned())));
                    args.push(Value::Time((e.status != "pending").then_some(at)));
                    args.push(Value::Text(e.outcome.clone()));
                    let n = args.len();
                    format!(
                        "({id}, {names}, $1, ${payload}, ${}, ${}, ${n})",
                        n - 2,
                        n - 1
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO callback_inbox (id, provider, event_id, received_at, payload, status, \
                 applied_at, outcome) VALUES {} \
                 ON CONFLICT (provider, event_id) DO NOTHING RETURNING provider, event_id",
                rows.join(", ")
            );
            for row in S::Db::fetch_all(&mut tx, &sql, args).await? {
                inserted.insert((row.text("provider")?, row.text("event_id")?));
            }
        }
        tx.commit().await?;
        // The same event twice in one batch: the first is new, the second a duplicate.
        Ok(events
            .iter()
            .map(|e| inserted.remove(&(e.provider.clone(), e.event_id.clone())))
            .collect())
    }

    async fn inbox_pending(&self, limit: u32) -> StoreResult<Vec<InboxItem>> {
        let mut conn = self.reads().acquire().await?;
        S::Db::fetch_all(
            &mut conn,
            "SELECT id, provider, event_id, payload FROM callback_inbox WHERE status = 'pending' \
             ORDER BY received_at, id LIMIT $1",
            Args::new().int(limit),
        )
        .await?
        .iter()
        .map(|row| {
            Ok(InboxItem {
                id: row.id("id")?,
                provider: row.text("provider")?,
                event_id: row.text("event_id")?,
                payload: row.json("payload")?,
            })
        })
        .collect()
    }

    async fn inbox_counts(&self) -> StoreResult<BTreeMap<String, i64>> {
        let mut conn = self.reads().acquire().await?;
        S::Db::fetch_all(
            &mut conn,
            "SELECT status, count(*) AS n FROM callback_inbox GROUP BY status",
            Args::new(),
        )
        .await?
        .iter()
        .map(|row| Ok((row.text("status")?, row.i64("n")?)))
        .collect()
    }

    async fn sent_through(&self, ids: &[DeliveryId]) -> StoreResult<Vec<SentThrough>> {
        let mut conn = self.reads().acquire().await?;
        let mut found: BTreeMap<uuid::Uuid, SentThrough> = BTreeMap::new();
        for chunk in ids.chunks(CHUNK) {
            let mut args = Args::new();
            let listed = args.ids(&chunk.iter().map(|id| *id.as_uuid()).collect::<Vec<_>>());
            let sql = format!(
                "SELECT d.id, d.channel, d.provider_ref, d.provider AS recorded, a.provider AS attempted \
                 FROM deliveries d LEFT JOIN delivery_attempts a ON a.delivery_id = d.id \
                 WHERE d.id IN ({listed})"
            );
            for row in S::Db::fetch_all(&mut conn, &sql, args).await? {
                let id = row.id("id")?;
                let entry = match found.entry(id) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => e.insert(SentThrough {
                        delivery_id: DeliveryId::from_uuid(id),
                        channel: row.parsed("channel")?,
                        provider_ref: row.opt_text("provider_ref")?,
                        providers: Vec::new(),
                    }),
                };
                for column in ["recorded", "attempted"] {
                    entry.providers.extend(row.opt_text(column)?);
                }
            }
        }
        Ok(found
            .into_values()
            .map(|mut s| {
                s.providers.sort_unstable();
                s.providers.dedup();
                s
            })
            .collect())
    }

    async fn claim_webhook_token(
        &self,
        provider: &str,
        token: &str,
        event_key: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<TokenClaim> {
        let mut conn = self.writes().acquire().await?;
        let inserted = S::Db::execute(
            &mut conn,
            "INSERT INTO webhook_tokens (provider, token, event_key, seen_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (provider, token) DO NOTHING",
            Args::new()
                .text(provider)
                .text(token)
                .text(event_key)
                .time(at),
        )
        .await?;
        if inserted == 1 {
            return Ok(TokenClaim::New);
        }
        let seen = S::Db::fetch_optional(
            &mut conn,
            "SELECT event_key FROM webhook_tokens WHERE provider = $1 AND token = $2",
            Args::new().text(provider).text(token),
        )
        .await?
        .map(|row| row.text("event_key"))
        .transpose()?;
        Ok(match seen {
            Some(key) if key == event_key => TokenClaim::Repeat,
            // Pruned between the two statements: it was stale anyway.
            Some(_) | None => TokenClaim::Reused,
        })
    }

    async fn prune_inbox(&self, retention: &InboxRetention) -> StoreResult<Pruned> {
        let mut conn = self.writes().acquire().await?;
        let limit = i64::from(retention.limit);
        let events = |which: &str| {
            format!(
                "DELETE FROM callback_inbox WHERE id IN (SELECT id FROM callback_inbox \
                 WHERE {which} AND received_at < $1 ORDER BY received_at LIMIT $2)"
            )
        };
        // A report applied to a district's delivery is the district's to keep (its
        // `callbacks_days`, purged with its other records).
        let finished = S::Db::execute(
            &mut conn,
            &events("status IN ('applied', 'ignored') AND district_id IS NULL"),
            Args::new().time(retention.finished_before).int(limit),
        )
        .await?;
        let rejected = S::Db::execute(
            &mut conn,
            &events("status = 'rejected'"),
            Args::new().time(retention.rejected_before).int(limit),
        )
        .await?;
        let tokens = S::Db::execute(
            &mut conn,
            "DELETE FROM webhook_tokens WHERE seen_at < $1 AND token IN \
             (SELECT token FROM webhook_tokens WHERE seen_at < $2 ORDER BY seen_at LIMIT $3)",
            Args::new()
                .time(retention.tokens_before)
                .time(retention.tokens_before)
                .int(limit),
        )
        .await?;
        Ok(Pruned {
            finished,
            rejected,
            tokens,
        })
    }
}

/// Rows per multi-row statement.
const CHUNK: usize = 500;

/// Keeps an inbound SMS, in the caller's connection (see [`Inbox::record_inbound`]).
async fn record_inbound<D: Dialect>(
    conn: &mut D::Connection,
    sms: &InboundSms,
    at: DateTime<Utc>,
) -> StoreResult<Option<Vec<(DistrictId, GuardianId)>>> {
    let guardians = D::fetch_all(
        &mut *conn,
        "SELECT DISTINCT district_id, guardian_id FROM contact_points \
         WHERE kind = 'sms' AND address = $1",
        Args::new().text(&sms.from),
    )
    .await?
    .iter()
    .map(|row| {
        Ok((
            DistrictId::from_uuid(row.id("district_id")?),
            GuardianId::from_uuid(row.id("guardian_id")?),
        ))
    })
    .collect::<StoreResult<Vec<_>>>()?;
    let first = guardians.first().copied();
    let inserted = D::execute(
        &mut *conn,
        "INSERT INTO inbound_messages (id, provider, provider_message_id, district_id, guardian_id, \
         from_address, to_address, body, keyword, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (provider, provider_message_id) DO NOTHING",
        Args::new()
            .id(uuid::Uuid::now_v7())
            .text(&sms.provider)
            .text(&sms.provider_message_id)
            .opt_id(first.map(|(d, _)| d))
            .opt_id(first.map(|(_, g)| g))
            .text(&sms.from)
            .text(&sms.to)
            .text(&sms.body)
            .opt_text(sms.keyword.map(SmsKeyword::as_str))
            .time(at),
    )
    .await?;
    Ok((inserted == 1).then_some(guardians))
}

/// Records an acknowledgment in the caller's transaction (see [`Inbox::acknowledge`]).
async fn acknowledge<D: Transitions>(
    conn: &mut D::Connection,
    recipient: uuid::Uuid,
    via: Channel,
    actor: &Actor,
    at: DateTime<Utc>,
) -> StoreResult<AckOutcome> {
    match mark_acknowledged::<D>(&mut *conn, recipient, via, actor, at).await? {
        Err(outcome) => Ok(outcome),
        Ok(requests) => {
            let results = decide_and_apply(&mut InTx::<D>(&mut *conn), requests).await?;
            Ok(acknowledged(results))
        }
    }
}

/// Marks `recipient` acknowledged (with the same message's re-sendings to the guardian)
/// and returns what that asks of their deliveries, in delivery id order, for the caller
/// to decide and write; `Err` with why when there was nothing to acknowledge.
async fn mark_acknowledged<D: Dialect>(
    conn: &mut D::Connection,
    recipient: uuid::Uuid,
    via: Channel,
    actor: &Actor,
    at: DateTime<Utc>,
) -> StoreResult<Result<Vec<(Delivery, Request)>, AckOutcome>> {
    let mark = "UPDATE recipients SET ack_state = 'acked', acked_at = $1, ack_via = $2 \
                WHERE id = $3 AND ack_state = 'pending'";
    let marked = D::execute(
        &mut *conn,
        mark,
        Args::new().time(at).text(via.as_str()).id(recipient),
    )
    .await?;
    if marked == 0 {
        let state = D::fetch_optional(
            &mut *conn,
            "SELECT ack_state FROM recipients WHERE id = $1",
            Args::new().id(recipient),
        )
        .await?
        .map(|row| row.text("ack_state"))
        .transpose()?;
        return Ok(Err(match state.as_deref() {
            None => AckOutcome::NotFound,
            Some("acked") => AckOutcome::AlreadyAcked,
            Some(_) => AckOutcome::NotRequired,
        }));
    }
    // The same message re-sent (re-notifications of it, or the message a
    // re-notification re-sends): acknowledged once is acknowledged for all of them.
    let related: Vec<uuid::Uuid> = D::fetch_all(
        &mut *conn,
        "WITH RECURSIVE up (id, parent) AS ( \
             SELECT m.id, m.renotify_of FROM messages m JOIN recipients r ON r.message_id = m.id \
             WHERE r.id = $1 \
             UNION ALL SELECT m.id, m.renotify_of FROM messages m JOIN up ON m.id = up.parent), \
         down (id) AS ( \
             SELECT id FROM up WHERE parent IS NULL \
             UNION ALL SELECT m.id FROM messages m JOIN down ON m.renotify_of = down.id) \
         SELECT r.id FROM recipients r \
         WHERE r.guardian_id = (SELECT guardian_id FROM recipients WHERE id = $1) \
         AND r.message_id IN (SELECT id FROM down) AND r.ack_state = 'pending' AND r.id <> $1",
        Args::new().id(recipient),
    )
    .await?
    .iter()
    .map(|row| row.id("id"))
    .collect::<StoreResult<_>>()?;
    for other in &related {
        let args = Args::new().time(at).text(via.as_str()).id(*other);
        D::execute(&mut *conn, mark, args).await?;
    }
    // Found by message and guardian, through the index that keeps them unique per
    // channel: deliveries have no index of their own on the recipient.
    let mut args = Args::new();
    let recipients = args.ids(&[&[recipient][..], &related].concat());
    let sql = format!(
        "SELECT {} FROM recipients r JOIN deliveries d \
              ON d.message_id = r.message_id AND d.guardian_id = r.guardian_id AND d.recipient_id = r.id \
         WHERE r.id IN ({recipients}) ORDER BY d.id",
        delivery_columns("d")
    );
    let mut requests = Vec::new();
    for row in D::fetch_all(&mut *conn, &sql, args).await? {
        let delivery = super::deliveries::from_row(&row)?;
        // The delivery the acknowledgment came through is ACKED; the guardian's other
        // deliveries of the message (and of its re-sends) that have not gone out are
        // cancelled.
        let event = if *delivery.recipient_id.as_uuid() == recipient && delivery.channel == via {
            DeliveryEvent::Acknowledged
        } else {
            DeliveryEvent::Cancel
        };
        let why = format!("acknowledged by {via}");
        let mut request = Request::new(event, actor, Some(&why), at);
        request.effects.next_attempt_at = Some(None);
        requests.push((delivery, request));
    }
    Ok(Ok(requests))
}

/// What deciding and writing an acknowledgment's requests did.
fn acknowledged(
    results: Vec<Result<Applied, crate::delivery::ApplyError<super::StoreError>>>,
) -> AckOutcome {
    let (mut acked_delivery, mut cancelled, mut untouched) = (None, 0, 0);
    for result in results {
        match result {
            Ok(Applied::Moved { delivery, .. }) if delivery.state == DeliveryState::Acked => {
                acked_delivery = Some(delivery.id);
            }
            Ok(Applied::Moved { .. }) => cancelled += 1,
            Ok(Applied::Ignored { .. }) | Err(_) => untouched += 1,
        }
    }
    AckOutcome::Acked {
        delivery: acked_delivery,
        cancelled,
        untouched,
    }
}

/// The guardian's most recent message waiting for their acknowledgment, read in the
/// caller's connection (see [`Inbox::open_ack`]).
async fn open_ack<D: Dialect>(
    conn: &mut D::Connection,
    guardian: GuardianId,
    at: DateTime<Utc>,
) -> StoreResult<Option<uuid::Uuid>> {
    D::fetch_optional(
        &mut *conn,
        "SELECT r.id FROM recipients r JOIN messages m ON m.id = r.message_id \
         WHERE r.guardian_id = $1 AND r.ack_state = 'pending' AND m.requires_ack = $2 \
         AND (m.ack_deadline IS NULL OR m.ack_deadline > $3) \
         ORDER BY m.created_at DESC, m.id DESC LIMIT 1",
        Args::new().id(guardian).flag(true).time(at),
    )
    .await?
    .map(|row| row.id("id"))
    .transpose()
}
