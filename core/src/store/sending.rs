//! Sending a message: resolving its audience into `audience_targets`, then writing the
//! message and its recipients with their deliveries and log entries, a chunk of
//! guardians at a time, so that memory holds one chunk whatever the audience size.
//! Written once over [`Dialect`]; the bulk writes are each database's fast path
//! ([`Sending`]).

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::dialect::{Args, Dialect};
use super::{
    audiences, NewMessage, NewRecipient, PlanChunk, Scope, SendRefusal, SendSummary, StoreError,
    StoreResult,
};
use crate::audience::Audience;
use crate::log::PartitionId;
use crate::{Channel, DeliveryState, GuardianId};

/// The bulk writes of a send, each database its fastest way.
#[async_trait]
pub(crate) trait Sending: Dialect {
    /// The message row (after reserving the hourly quota, when it has one).
    async fn write_message(
        conn: &mut Self::Connection,
        message: &NewMessage,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// A chunk of recipients with their deliveries and log entries.
    async fn write_recipients(
        conn: &mut Self::Connection,
        message: &NewMessage,
        recipients: &[NewRecipient],
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
}

/// The body of [`super::WriteTransaction::send_message`], in the caller's transaction,
/// which it leaves open. It reads the audience before it writes: on SQLite the
/// transaction must hold the write lock from its start (`BEGIN IMMEDIATE`), or a commit by
/// another connection after the first read would make the first write fail (a read
/// snapshot cannot become a write).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn send_streamed<D: Sending>(
    conn: &mut D::Connection,
    message: &NewMessage,
    scope: &Scope,
    target: &Audience,
    max_recipients: Option<usize>,
    plan: &PlanChunk,
    chunk: usize,
    at: DateTime<Utc>,
) -> StoreResult<Result<SendSummary, SendRefusal>> {
    let sent = match audiences::resolve_targets::<D>(conn, scope, target).await? {
        Err(problems) => Err(SendRefusal::Audience(problems)),
        Ok(0) => Err(SendRefusal::NoOne),
        Ok(reached) if max_recipients.is_some_and(|max| reached > max) => {
            Err(SendRefusal::TooMany(reached))
        }
        Ok(_) => match write_streamed::<D>(conn, message, plan, chunk, at).await {
            Ok(summary) => Ok(summary),
            // A refusal, with the transaction still usable: on to the cleanup.
            Err(quota @ StoreError::HourlyQuota { .. }) => {
                audiences::drop_targets::<D>(conn).await?;
                return Err(quota);
            }
            Err(error) => return Err(error),
        },
    };
    // Temporary tables outlive a commit on their connection, and a refusal may be
    // committed too (with the idempotency record that remembers it).
    audiences::drop_targets::<D>(conn).await?;
    Ok(sent)
}

/// The message, then its recipients a chunk of `audience_targets` at a time.
async fn write_streamed<D: Sending>(
    conn: &mut D::Connection,
    message: &NewMessage,
    plan: &PlanChunk,
    chunk: usize,
    at: DateTime<Utc>,
) -> StoreResult<SendSummary> {
    D::write_message(conn, message, at).await?;
    let mut summary = SendSummary::default();
    let mut after = None;
    loop {
        let mut members = audiences::members::<D>(conn, after, chunk.max(1)).await?;
        let Some(last) = members.last() else { break };
        after = Some(last.guardian_id);
        // Planned partition by partition, so that ids follow the order the deliveries are
        // written in (see `PartitionId::sort`).
        PartitionId::sort(&mut members, message.partitions, |m| {
            GuardianId::from_uuid(m.guardian_id)
        });
        let recipients = plan(&members);
        drop(members);
        summary.add(&recipients);
        let span = tracing::info_span!("fanout_chunk", message_id = %message.id, recipients = recipients.len());
        tracing::Instrument::instrument(write_chunk::<D>(conn, message, &recipients, at), span)
            .await?;
    }
    Ok(summary)
}

/// A chunk of recipients with their deliveries and log entries ([`Sending::write_recipients`]),
/// and how many deliveries it wrote per channel and state (`message_starts`): the report
/// counts a message's deliveries from these and the recorded moves, not by reading them.
pub(crate) async fn write_chunk<D: Sending>(
    conn: &mut D::Connection,
    message: &NewMessage,
    recipients: &[NewRecipient],
    at: DateTime<Utc>,
) -> StoreResult<()> {
    D::write_recipients(conn, message, recipients, at).await?;
    let mut starts: std::collections::BTreeMap<(Channel, DeliveryState), i64> =
        std::collections::BTreeMap::new();
    for delivery in recipients.iter().flat_map(|r| &r.deliveries) {
        *starts
            .entry((delivery.channel, delivery.initial_state()))
            .or_insert(0) += 1;
    }
    if starts.is_empty() {
        return Ok(());
    }
    let mut args = Args::new();
    let rows: Vec<String> = starts
        .iter()
        .map(|((channel, state), n)| {
            args.row(|a| {
                a.id(*message.id.as_uuid())
                    .id(*message.district_id.as_uuid())
                    .text(channel.as_str())
                    .text(state.as_str())
                    .int(*n)
            })
        })
        .collect();
    let sql = format!(
        "INSERT INTO message_starts (message_id, district_id, channel, state, n) VALUES {}",
        rows.join(", ")
    );
    D::execute(conn, &sql, args).await?;
    Ok(())
}
