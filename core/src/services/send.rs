//! Sending a message: the request is checked, the audience resolved within what the
//! sender may message, the district's quotas applied, and the message, one delivery per
//! guardian and channel, their log entries, the audit row and the idempotency record
//! written in one transaction.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{claim, remember, Answer, Once, Refusal, Reply, ServiceError, Services};
use crate::audience::{Audience, MAX_REFERENCES};
use crate::delivery::Actor;
use crate::fanout::{self, Draft, Translation};
use crate::store::{Scope, SendRefusal, WriteTransaction, SEND_CHUNK};
use crate::{Channel, DeliveryGuarantee, MessageId, MessageKind, Role, Staff};

/// Longest subject, in characters.
pub const MAX_SUBJECT: usize = 200;
/// Longest body, in characters (about ten SMS segments).
pub const MAX_BODY: usize = 1_600;
/// The longest a message may wait for a channel to reach a guardian before the next is tried.
pub const MAX_FALLBACK_MINUTES: u32 = 24 * 60;

/// A message as staff compose it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// `{"district": true}` or lists of ids or sourcedIds: `schools`, `grades`, `classes`,
    /// `students`, `guardians`.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub audience: Audience,
    /// Any of `sms`, `email`, `push`.
    pub channels: Vec<String>,
    /// `emergency`, `attendance` or `general`.
    pub kind: String,
    pub subject: String,
    pub body: String,
    /// Other languages: `{"es": {"subject": …, "body": …}}`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub translations: BTreeMap<String, Translation>,
    #[serde(default)]
    pub requires_ack: bool,
    /// `at_least_once` (default; always for emergencies) or `at_most_once`.
    pub delivery: Option<String>,
    /// When to send (RFC 3339, within a year); now when not given.
    pub scheduled_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When acknowledgments are due (needs `requires_ack`).
    pub ack_deadline: Option<chrono::DateTime<chrono::Utc>>,
    /// Fall back to the guardian's next channel — the app, then SMS, then email — when a
    /// delivery fails, or has not reached them this many minutes after it went out
    /// (1–1440). Not given: no fallback.
    pub fallback_after_minutes: Option<u32>,
}

/// What a sent message came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sent {
    pub id: MessageId,
    /// Guardians reached.
    pub recipients: usize,
    /// Deliveries created, one per guardian and channel.
    pub deliveries: usize,
    /// Of those, the ones that will not be sent (no address, opted out), by reason.
    pub suppressed: BTreeMap<String, usize>,
    /// Deliveries that wait: for `scheduled_at`, or for the end of quiet hours.
    pub deferred: usize,
    /// Standby deliveries on guardians' next channels (with `fallback_after_minutes`):
    /// sent only to those the channel before does not reach.
    pub standby: usize,
}

/// How a front end words the outcome of a send, to be kept with its idempotency key.
pub type Words<'a> = &'a (dyn Fn(Result<&Sent, &Refusal>) -> Answer + Send + Sync);

impl Services {
    /// Sends `request` from `caller`, at most once per `once` key.
    #[tracing::instrument(name = "send_message", skip_all, fields(district_id = %caller.district_id, message_id = tracing::field::Empty))]
    pub async fn send_message(
        &self,
        caller: &Staff,
        request: SendMessage,
        once: Option<Once<'_>>,
        words: Words<'_>,
    ) -> Result<Reply<Sent>, ServiceError> {
        if caller.role == Role::Viewer {
            return Err(Refusal::Forbidden.into());
        }
        let audience = request.audience.clone();
        let draft = draft(caller, request, self.clock.now())?;
        self.deliver(caller, draft, &audience, once, words).await
    }

    /// Claims `once`, then [`Services::deliver_in`] the claiming transaction.
    async fn deliver(
        &self,
        caller: &Staff,
        draft: Draft,
        audience: &Audience,
        once: Option<Once<'_>>,
        words: Words<'_>,
    ) -> Result<Reply<Sent>, ServiceError> {
        let mut tx = self.store.begin().await?;
        if let Some(answer) = claim(tx.as_mut(), caller, once.as_ref(), self.clock.now()).await? {
            return Ok(Reply::Replayed(answer));
        }
        self.deliver_in(tx, caller, draft, audience, once, words)
            .await
    }

    /// Resolves the audience, checks the district's quotas, and writes the message with
    /// its deliveries, log entries, audit row and idempotency record in `tx` (which has
    /// claimed `once`), then commits.
    pub(super) async fn deliver_in(
        &self,
        mut tx: Box<dyn WriteTransaction>,
        caller: &Staff,
        draft: Draft,
        audience: &Audience,
        once: Option<Once<'_>>,
        words: Words<'_>,
    ) -> Result<Reply<Sent>, ServiceError> {
        let district = self
            .store
            .district(caller.district_id)
            .await?
            .ok_or(Refusal::Forbidden)?;
        // Quotas keep one district's newsletters from swamping everyone's providers; they
        // never hold back an emergency.
        let limited = draft.kind != MessageKind::Emergency;
        let mut message = fanout::header(&draft, self.partitions);
        tracing::Span::current().record("message_id", tracing::field::display(message.id));
        if limited {
            message.hourly_quota = district
                .max_messages_per_hour
                .and_then(|m| u32::try_from(m).ok());
        }
        let max_recipients = district
            .max_recipients_per_message
            .and_then(|m| usize::try_from(m).ok())
            .filter(|_| limited);
        let started = self.clock.now();
        let default_language = district.default_language.clone();
        let plan = move |members: &[crate::audience::AudienceMember]| {
            fanout::recipients(&draft, &default_language, members, started)
        };
        let sent = tx
            .send_message(
                &message,
                &Scope::of(caller),
                audience,
                max_recipients,
                &plan,
                SEND_CHUNK,
                started,
            )
            .await
            .map_err(ServiceError::from);
        let summary = match sent {
            Ok(Ok(summary)) => summary,
            Ok(Err(refusal)) => {
                let refusal = refused(refusal, max_recipients);
                return refuse(tx, caller, once, refusal, words).await;
            }
            Err(ServiceError::Refused(refusal)) => {
                return refuse(tx, caller, once, refusal, words).await;
            }
            Err(error) => return Err(error),
        };
        let sent = Sent {
            id: message.id,
            recipients: summary.recipients,
            deliveries: summary.deliveries,
            suppressed: summary.suppressed,
            deferred: summary.deferred,
            standby: summary.standby,
        };
        let detail = serde_json::json!({
            "message_id": message.id, "kind": message.kind, "recipients": sent.recipients,
            "deliveries": sent.deliveries,
        });
        tx.audit(
            caller.district_id,
            &Actor::staff(caller.id),
            "message.send",
            detail,
            started,
        )
        .await?;
        remember(tx.as_mut(), caller, once.as_ref(), || words(Ok(&sent))).await?;
        tx.commit().await?;
        tracing::info!(message_id = %message.id, recipients = sent.recipients, deliveries = sent.deliveries, "message accepted");
        Ok(Reply::Done(sent))
    }
}

/// Who a message would reach, before it is sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Preview {
    /// Unique guardians in the audience.
    pub guardians: usize,
    /// Of the deliveries it would make, the ones that would go out, per channel (not the
    /// suppressed: no address, opted out, carrier STOP).
    pub reachable: BTreeMap<Channel, usize>,
}

impl Services {
    /// What sending `request` would reach now, without sending anything.
    pub async fn preview(
        &self,
        caller: &Staff,
        request: SendMessage,
    ) -> Result<Preview, ServiceError> {
        let audience = request.audience.clone();
        let draft = draft(caller, request, self.clock.now())?;
        let district = self
            .store
            .district(caller.district_id)
            .await?
            .ok_or(Refusal::Forbidden)?;
        let members = match self
            .store
            .resolve_audience(&Scope::of(caller), &audience)
            .await?
        {
            Ok(members) => members,
            Err(problems) => return Err(refused(SendRefusal::Audience(problems), None).into()),
        };
        let planned = fanout::recipients(
            &draft,
            &district.default_language,
            &members,
            self.clock.now(),
        );
        let mut reachable: BTreeMap<Channel, usize> =
            draft.channels.iter().map(|c| (*c, 0)).collect();
        for delivery in planned.iter().flat_map(|r| &r.deliveries) {
            if delivery.suppressed_reason.is_none() && delivery.fallback_of.is_none() {
                *reachable.entry(delivery.channel).or_insert(0) += 1;
            }
        }
        Ok(Preview {
            guardians: members.len(),
            reachable,
        })
    }
}

/// Ends a refused request: a keyed one keeps its refusal (so that a repeat is refused the
/// same way, even after the directory changed); nothing else is written.
pub(super) async fn refuse<T>(
    mut tx: Box<dyn WriteTransaction>,
    caller: &Staff,
    once: Option<Once<'_>>,
    refusal: Refusal,
    words: &(dyn Fn(Result<&T, &Refusal>) -> Answer + Send + Sync),
) -> Result<Reply<T>, ServiceError> {
    if once.is_some() {
        remember(tx.as_mut(), caller, once.as_ref(), || words(Err(&refusal))).await?;
        tx.commit().await?;
    }
    Err(refusal.into())
}

fn refused(refusal: SendRefusal, max_recipients: Option<usize>) -> Refusal {
    match refusal {
        SendRefusal::Audience(problems) if !problems.forbidden.is_empty() => {
            Refusal::ForbiddenAudience(problems.forbidden.join(", "))
        }
        SendRefusal::Audience(problems) => Refusal::UnknownAudience(problems.unknown.join(", ")),
        SendRefusal::NoOne => Refusal::EmptyAudience(
            "no guardian on file is linked to the students, classes, schools or guardians named"
                .into(),
        ),
        SendRefusal::TooMany(reached) => Refusal::QuotaExceeded(format!(
            "this message would reach {reached} guardians; the district allows {} per message",
            max_recipients.unwrap_or_default()
        )),
    }
}

fn invalid(message: impl Into<String>) -> Refusal {
    Refusal::Invalid(message.into())
}

fn text(field: &str, value: &str, max: usize) -> Result<String, Refusal> {
    let value = value.trim();
    if value.is_empty() {
        return Err(invalid(format!("{field} is empty")));
    }
    if value.chars().count() > max {
        return Err(invalid(format!("{field} is longer than {max} characters")));
    }
    Ok(value.to_owned())
}

/// Channel names, at least one.
pub(super) fn channels(names: &[String]) -> Result<BTreeSet<Channel>, Refusal> {
    let channels = names
        .iter()
        .map(|c| c.parse::<Channel>().map_err(|e| invalid(e.to_string())))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if channels.is_empty() {
        return Err(invalid("channels is empty"));
    }
    Ok(channels)
}

/// Checks a request and turns it into a [`Draft`] by `staff`, at `at`.
pub fn draft(
    staff: &Staff,
    request: SendMessage,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Draft, Refusal> {
    if let Some(when) = request.scheduled_at {
        if when < at - chrono::Duration::minutes(1) {
            return Err(invalid("scheduled_at is in the past"));
        }
        if when > at + chrono::Duration::days(366) {
            return Err(invalid("scheduled_at is more than a year away"));
        }
    }
    if let Some(deadline) = request.ack_deadline {
        if !request.requires_ack {
            return Err(invalid("ack_deadline needs requires_ack"));
        }
        if deadline <= request.scheduled_at.unwrap_or(at) {
            return Err(invalid("ack_deadline is before the message goes out"));
        }
    }
    if request
        .fallback_after_minutes
        .is_some_and(|m| !(1..=MAX_FALLBACK_MINUTES).contains(&m))
    {
        return Err(invalid(format!(
            "fallback_after_minutes must be between 1 and {MAX_FALLBACK_MINUTES}"
        )));
    }
    let kind: MessageKind = request
        .kind
        .parse()
        .map_err(|e: crate::UnknownName| invalid(e.to_string()))?;
    let channels = channels(&request.channels)?;
    let guarantee = match request.delivery.as_deref() {
        None => DeliveryGuarantee::AtLeastOnce,
        Some(g) => g
            .parse()
            .map_err(|e: crate::UnknownName| invalid(e.to_string()))?,
    };
    let audience = request.audience;
    if audience.is_empty() {
        return Err(invalid("audience names no one"));
    }
    let lists = [
        &audience.schools,
        &audience.grades,
        &audience.classes,
        &audience.students,
        &audience.guardians,
    ];
    if lists.iter().any(|l| l.len() > MAX_REFERENCES) {
        return Err(invalid(format!(
            "an audience list holds more than {MAX_REFERENCES} references"
        )));
    }
    let mut translations = BTreeMap::new();
    for (language, t) in request.translations {
        let subject = text(
            &format!("translations.{language}.subject"),
            &t.subject,
            MAX_SUBJECT,
        )?;
        let body = text(&format!("translations.{language}.body"), &t.body, MAX_BODY)?;
        translations.insert(language, Translation { subject, body });
    }
    let audience_json = serde_json::json!({
        "district": audience.district, "schools": audience.schools, "grades": audience.grades,
        "classes": audience.classes, "students": audience.students, "guardians": audience.guardians,
    });
    Ok(Draft {
        district_id: staff.district_id,
        author_id: staff.id,
        kind,
        channels,
        subject: text("subject", &request.subject, MAX_SUBJECT)?,
        body: text("body", &request.body, MAX_BODY)?,
        translations,
        requires_ack: request.requires_ack,
        guarantee,
        audience: audience_json,
        renotify_of: None,
        scheduled_at: request.scheduled_at,
        ack_deadline: request.ack_deadline,
        fallback_after: request
            .fallback_after_minutes
            .map(|m| chrono::Duration::minutes(i64::from(m))),
    })
}
