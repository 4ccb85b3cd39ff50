//! Planning a message: from the guardians an audience reached to one delivery per
//! guardian and channel, each either ready to send or suppressed with its reason (so the
//! report shows who could not be reached, and why). Pure: the store writes the plan.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audience::AudienceMember;
use crate::{
    Channel, DeliveryGuarantee, DeliveryId, DistrictId, GuardianId, Lane, MessageId, MessageKind,
    RecipientId, StaffId,
};

/// A message with its recipients and deliveries, written in one transaction.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: MessageId,
    pub district_id: DistrictId,
    pub author_id: StaffId,
    pub kind: MessageKind,
    pub lane: Lane,
    pub guarantee: DeliveryGuarantee,
    pub subject: String,
    pub body: String,
    pub channels: Vec<Channel>,
    /// `{"es": {"subject": …, "body": …}}`.
    pub translations: serde_json::Value,
    pub audience: serde_json::Value,
    pub requires_ack: bool,
    pub recipients: Vec<NewRecipient>,
    /// The message this one re-notifies the non-acknowledgers of.
    pub renotify_of: Option<MessageId>,
    /// When it is to go out; `None`: now.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// When acknowledgments are due.
    pub ack_deadline: Option<DateTime<Utc>>,
    /// How long a delivery may go without reaching its guardian before their next channel
    /// is tried; `None`: no fallback.
    pub fallback_after: Option<chrono::Duration>,
    /// At most this many non-emergency messages of the district in the hour before the
    /// send; checked and reserved inside the send's transaction.
    pub hourly_quota: Option<u32>,
    /// Partitions of the log's lanes: each delivery to send gets an entry in partition
    /// `PartitionId::of(guardian, partitions)` of the message's lane.
    pub partitions: u32,
}

impl NewMessage {
    /// The deliveries to put on the log (not the suppressed ones), per partition, in the
    /// order they take offsets. Partitions come in ascending order, which is also the order
    /// their head rows are locked in, so two fan-outs can never deadlock.
    pub fn log_plan(&self) -> std::collections::BTreeMap<crate::log::PartitionId, Vec<DeliveryId>> {
        Self::log_plan_of(&self.recipients, self.partitions)
    }

    /// [`NewMessage::log_plan`] of some of the message's recipients.
    pub fn log_plan_of(
        recipients: &[NewRecipient],
        partitions: u32,
    ) -> std::collections::BTreeMap<crate::log::PartitionId, Vec<DeliveryId>> {
        let mut plan: std::collections::BTreeMap<_, Vec<_>> = std::collections::BTreeMap::new();
        for recipient in recipients {
            let partition = crate::log::PartitionId::of(recipient.guardian_id, partitions);
            for delivery in recipient
                .deliveries
                .iter()
                .filter(|d| d.suppressed_reason.is_none())
            {
                plan.entry(partition).or_default().push(delivery.id);
            }
        }
        plan
    }
}

#[derive(Debug, Clone)]
pub struct NewRecipient {
    pub id: RecipientId,
    pub guardian_id: GuardianId,
    pub language: String,
    pub deliveries: Vec<NewDelivery>,
}

/// One delivery to create. It starts CREATED, or SUPPRESSED when a reason is given.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: DeliveryId,
    pub channel: Channel,
    pub address: Option<String>,
    pub suppressed_reason: Option<String>,
    /// Not to be sent before this (a scheduled message, quiet hours, a standby's deadline).
    pub not_before: Option<DateTime<Utc>>,
    /// A standby: the delivery of this guardian it backs up (see `fanout::FALLBACK_ORDER`).
    pub fallback_of: Option<DeliveryId>,
}

impl NewDelivery {
    /// The state it is written in: SUPPRESSED when it has a reason, else CREATED.
    pub fn initial_state(&self) -> crate::DeliveryState {
        if self.suppressed_reason.is_some() {
            crate::DeliveryState::Suppressed
        } else {
            crate::DeliveryState::Created
        }
    }
}

/// The subject and body in one language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Translation {
    pub subject: String,
    pub body: String,
}

/// A message as staff wrote it, already validated.
#[derive(Debug, Clone)]
pub struct Draft {
    pub district_id: DistrictId,
    pub author_id: StaffId,
    pub kind: MessageKind,
    pub channels: BTreeSet<Channel>,
    pub subject: String,
    pub body: String,
    /// Other languages, keyed by language tag ("es", "vi").
    pub translations: BTreeMap<String, Translation>,
    pub requires_ack: bool,
    pub guarantee: DeliveryGuarantee,
    /// The audience as asked for, kept with the message.
    pub audience: serde_json::Value,
    /// Set when this is a reminder to those who did not acknowledge an earlier message.
    pub renotify_of: Option<MessageId>,
    /// When to send; `None`: now.
    pub scheduled_at: Option<DateTime<Utc>>,
    /// When acknowledgments are due.
    pub ack_deadline: Option<DateTime<Utc>>,
    /// Fall back to the guardian's next channel (see [`FALLBACK_ORDER`]) when a delivery
    /// has not reached them this long after it went out, or fails sooner.
    pub fallback_after: Option<chrono::Duration>,
}

/// Why a delivery is not sent.
pub mod reason {
    /// The guardian texted STOP: carriers forbid any further SMS, emergencies included.
    pub const CARRIER_STOP: &str = "carrier_stop";
    /// The guardian (or staff on their behalf) opted out of this channel.
    pub const OPTED_OUT: &str = "opted_out";
    /// No active address or device for this channel.
    pub const NO_ADDRESS: &str = "no_address";
    /// A standby (a message with fallback) whose channel before it reached the guardian.
    pub const FALLBACK_NOT_NEEDED: &str = "fallback_not_needed";
}

/// One recipient per guardian, one delivery per guardian and channel.
///
/// - A carrier STOP suppresses SMS for every kind of message.
/// - Other opt-outs suppress everything but emergencies.
/// - The guardian's language is used when the message has it, else the district's.
/// - A scheduled message waits for its time; a non-emergency message that would arrive
///   inside the guardian's quiet hours waits until they end. Emergencies never wait for
///   quiet hours.
pub fn plan(
    draft: &Draft,
    default_language: &str,
    members: &[AudienceMember],
    partitions: u32,
    now: DateTime<Utc>,
) -> NewMessage {
    // Partition by partition, as a send plans each chunk (see `PartitionId::sort`).
    let mut members = members.to_vec();
    crate::log::PartitionId::sort(&mut members, partitions, |m| {
        GuardianId::from_uuid(m.guardian_id)
    });
    NewMessage {
        recipients: recipients(draft, default_language, &members, now),
        ..header(draft, partitions)
    }
}

/// The recipients and deliveries of `members` (see [`plan`]); a guardian listed twice is
/// planned once. Planning an audience chunk by chunk gives the same as planning it whole.
pub fn recipients(
    draft: &Draft,
    default_language: &str,
    members: &[AudienceMember],
    now: DateTime<Utc>,
) -> Vec<NewRecipient> {
    let send_at = draft.scheduled_at.filter(|at| *at > now).unwrap_or(now);
    let mut seen = BTreeSet::new();
    members
        .iter()
        .filter(|m| seen.insert(m.guardian_id))
        .map(|member| {
            let language = member
                .preferred_language
                .as_deref()
                .filter(|l| draft.translations.contains_key(*l))
                .unwrap_or(default_language)
                .to_owned();
            let quiet_end = match draft.kind {
                MessageKind::Emergency => None,
                _ => member.quiet.and_then(|q| q.ends_after(send_at)),
            };
            let not_before = quiet_end.or(draft.scheduled_at.filter(|at| *at > now));
            // Why a channel cannot be used for this guardian, if it cannot.
            let blocked = |channel: Channel| {
                let opted_out = |carrier: bool| {
                    member
                        .opt_outs
                        .iter()
                        .any(|(c, source)| *c == channel && (source == "carrier") == carrier)
                };
                if channel == Channel::Sms && opted_out(true) {
                    Some(reason::CARRIER_STOP)
                } else if draft.kind != MessageKind::Emergency && opted_out(false) {
                    Some(reason::OPTED_OUT)
                } else if !member.contacts.iter().any(|c| c.kind == channel) {
                    Some(reason::NO_ADDRESS)
                } else {
                    None
                }
            };
            let address = |channel: Channel| {
                member
                    .contacts
                    .iter()
                    .find(|c| c.kind == channel)
                    .map(|c| c.address.clone())
            };
            let mut deliveries: Vec<NewDelivery> = draft
                .channels
                .iter()
                .map(|&channel| {
                    let suppressed = blocked(channel);
                    NewDelivery {
                        id: DeliveryId::new(),
                        channel,
                        address: address(channel),
                        suppressed_reason: suppressed.map(str::to_owned),
                        not_before: not_before.filter(|_| suppressed.is_none()),
                        fallback_of: None,
                    }
                })
                .collect();
            if let Some(after) = draft.fallback_after {
                let standbys = standbys(&deliveries, after, not_before.unwrap_or(now), |c| {
                    blocked(c).is_none().then(|| address(c)).flatten()
                });
                deliveries.extend(standbys);
            }
            NewRecipient {
                id: RecipientId::new(),
                guardian_id: GuardianId::from_uuid(member.guardian_id),
                language,
                deliveries,
            }
        })
        .collect()
}

/// The order a guardian is tried in when a message asks for fallback: the app, then a
/// text, then email.
pub const FALLBACK_ORDER: [Channel; 3] = [Channel::Push, Channel::Sms, Channel::Email];

/// The standby deliveries behind a guardian's `asked` ones: one for each channel after the
/// last asked one in [`FALLBACK_ORDER`] that the guardian can be reached on (`usable`
/// gives its address), each backing up the one before it. A standby is due `after` the
/// one it backs up is (at once when that one is suppressed already), and goes only if
/// that one has not reached the guardian by then (or fails sooner).
fn standbys(
    asked: &[NewDelivery],
    after: chrono::Duration,
    send_at: DateTime<Utc>,
    usable: impl Fn(Channel) -> Option<String>,
) -> Vec<NewDelivery> {
    let rank = |c: Channel| FALLBACK_ORDER.iter().position(|f| *f == c);
    let Some(last) = asked.iter().max_by_key(|d| rank(d.channel)) else {
        return Vec::new();
    };
    let due = |d: &NewDelivery| {
        let goes_at = d.not_before.unwrap_or(send_at);
        if d.suppressed_reason.is_some() {
            goes_at
        } else {
            goes_at + after
        }
    };
    let (mut behind, mut at) = (last.id, due(last));
    let mut standbys = Vec::new();
    for channel in FALLBACK_ORDER
        .into_iter()
        .skip(rank(last.channel).map_or(FALLBACK_ORDER.len(), |r| r + 1))
    {
        let Some(address) = usable(channel) else {
            continue;
        };
        let standby = NewDelivery {
            id: DeliveryId::new(),
            channel,
            address: Some(address),
            suppressed_reason: None,
            not_before: Some(at),
            fallback_of: Some(behind),
        };
        (behind, at) = (standby.id, due(&standby));
        standbys.push(standby);
    }
    standbys
}

/// The message itself, without recipients.
pub fn header(draft: &Draft, partitions: u32) -> NewMessage {
    NewMessage {
        id: MessageId::new(),
        district_id: draft.district_id,
        author_id: draft.author_id,
        kind: draft.kind,
        lane: draft.kind.lane(),
        guarantee: draft.guarantee.effective(draft.kind),
        subject: draft.subject.clone(),
        body: draft.body.clone(),
        translations: serde_json::to_value(&draft.translations).unwrap_or_default(),
        channels: draft.channels.iter().copied().collect(),
        audience: draft.audience.clone(),
        requires_ack: draft.requires_ack,
        recipients: Vec::new(),
        renotify_of: draft.renotify_of,
        scheduled_at: draft.scheduled_at,
        ack_deadline: draft.ack_deadline,
        fallback_after: draft.fallback_after,
        hourly_quota: None,
        partitions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::MemberContact;
    use crate::log::PartitionId;
    use proptest::prelude::*;
    use uuid::Uuid;

    fn draft(kind: MessageKind, channels: &[Channel]) -> Draft {
        Draft {
            district_id: DistrictId::new(),
            author_id: StaffId::new(),
            kind,
            channels: channels.iter().copied().collect(),
            subject: "Snow day".into(),
            body: "Schools are closed today.".into(),
            translations: [(
                "es".to_owned(),
                Translation {
                    subject: "Día de nieve".into(),
                    body: "Cerrado.".into(),
                },
            )]
            .into(),
            requires_ack: false,
            guarantee: DeliveryGuarantee::AtLeastOnce,
            audience: serde_json::json!({"district": true}),
            renotify_of: None,
            scheduled_at: None,
            ack_deadline: None,
            fallback_after: None,
        }
    }

    fn any_member() -> impl Strategy<Value = AudienceMember> {
        let channel = proptest::sample::select(Channel::ALL.to_vec());
        let source = proptest::sample::select(vec!["carrier", "guardian", "staff", "complaint"]);
        (
            any::<u128>(),
            proptest::option::of(proptest::sample::select(vec!["en", "es", "vi"])),
            proptest::collection::vec(channel.clone(), 0..4),
            proptest::collection::vec((channel, source), 0..3),
        )
            .prop_map(|(id, language, kinds, opt_outs)| AudienceMember {
                guardian_id: Uuid::from_u128(id),
                preferred_language: language.map(str::to_owned),
                contacts: kinds
                    .into_iter()
                    .enumerate()
                    .map(|(i, kind)| MemberContact {
                        id: Uuid::from_u128(i as u128),
                        kind,
                        address: format!("a{i}"),
                    })
                    .collect(),
                opt_outs: opt_outs
                    .into_iter()
                    .map(|(c, s)| (c, s.to_owned()))
                    .collect(),
                quiet: None,
            })
    }

    #[test]
    fn a_guardian_who_texted_stop_gets_no_sms_even_in_an_emergency() {
        let member = AudienceMember {
            guardian_id: Uuid::now_v7(),
            preferred_language: Some("es".into()),
            contacts: vec![
                MemberContact {
                    id: Uuid::now_v7(),
                    kind: Channel::Sms,
                    address: "+12025550143".into(),
                },
                MemberContact {
                    id: Uuid::now_v7(),
                    kind: Channel::Email,
                    address: "a@example.org".into(),
                },
            ],
            opt_outs: vec![
                (Channel::Sms, "carrier".into()),
                (Channel::Email, "guardian".into()),
            ],
            quiet: None,
        };
        let emergency = plan(
            &draft(MessageKind::Emergency, &[Channel::Sms, Channel::Email]),
            "en",
            std::slice::from_ref(&member),
            64,
            chrono::Utc::now(),
        );
        let d = &emergency.recipients[0].deliveries;
        assert_eq!(
            d[0].suppressed_reason.as_deref(),
            Some(reason::CARRIER_STOP)
        );
        assert_eq!(
            d[1].suppressed_reason, None,
            "emergencies reach an email opt-out"
        );
        assert_eq!(emergency.recipients[0].language, "es");
        let general = plan(
            &draft(MessageKind::General, &[Channel::Email]),
            "en",
            &[member],
            64,
            chrono::Utc::now(),
        );
        assert_eq!(
            general.recipients[0].deliveries[0]
                .suppressed_reason
                .as_deref(),
            Some(reason::OPTED_OUT)
        );
    }

    #[test]
    fn inside_quiet_hours_only_non_emergencies_wait_and_a_schedule_is_kept() {
        use crate::quiet_hours::QuietHours;
        let now: DateTime<Utc> = "2026-11-24T03:30:00Z".parse().unwrap(); // 21:30 in Chicago
        let member = AudienceMember {
            guardian_id: Uuid::now_v7(),
            preferred_language: None,
            contacts: vec![MemberContact {
                id: Uuid::now_v7(),
                kind: Channel::Email,
                address: "a@example.org".into(),
            }],
            opt_outs: vec![],
            quiet: Some(QuietHours::new("America/Chicago", 21 * 60, 7 * 60).unwrap()),
        };
        let morning: DateTime<Utc> = "2026-11-24T13:00:00Z".parse().unwrap();
        let general = plan(
            &draft(MessageKind::General, &[Channel::Email]),
            "en",
            std::slice::from_ref(&member),
            64,
            now,
        );
        assert_eq!(
            general.recipients[0].deliveries[0].not_before,
            Some(morning)
        );
        let emergency = plan(
            &draft(MessageKind::Emergency, &[Channel::Email]),
            "en",
            std::slice::from_ref(&member),
            64,
            now,
        );
        assert_eq!(emergency.recipients[0].deliveries[0].not_before, None);
        // Scheduled for noon in Chicago: outside quiet hours, so it waits for its time only.
        let noon: DateTime<Utc> = "2026-11-24T18:00:00Z".parse().unwrap();
        let mut scheduled = draft(MessageKind::General, &[Channel::Email]);
        scheduled.scheduled_at = Some(noon);
        let later = plan(&scheduled, "en", std::slice::from_ref(&member), 64, now);
        assert_eq!(later.recipients[0].deliveries[0].not_before, Some(noon));
        assert_eq!(later.scheduled_at, Some(noon));
    }

    fn contact(kind: Channel) -> MemberContact {
        MemberContact {
            id: Uuid::now_v7(),
            kind,
            address: format!("{kind}-address"),
        }
    }

    #[test]
    fn fallback_puts_standbys_on_the_next_channels_each_behind_the_one_before() {
        let now: DateTime<Utc> = "2026-11-24T15:00:00Z".parse().unwrap();
        let after = chrono::Duration::minutes(10);
        let mut alert = draft(MessageKind::Emergency, &[Channel::Push]);
        alert.fallback_after = Some(after);
        let everything = AudienceMember {
            guardian_id: Uuid::now_v7(),
            preferred_language: None,
            contacts: vec![
                contact(Channel::Email),
                contact(Channel::Sms),
                contact(Channel::Push),
            ],
            opt_outs: vec![],
            quiet: None,
        };
        let no_device = AudienceMember {
            guardian_id: Uuid::now_v7(),
            contacts: vec![contact(Channel::Sms), contact(Channel::Email)],
            ..everything.clone()
        };
        let no_phone = AudienceMember {
            guardian_id: Uuid::now_v7(),
            contacts: vec![contact(Channel::Push), contact(Channel::Email)],
            ..everything.clone()
        };
        let planned = plan(
            &alert,
            "en",
            &[everything, no_device, no_phone.clone()],
            // One partition: the recipients come in the audience's order.
            1,
            now,
        );
        let shape = |r: &NewRecipient| -> Vec<(Channel, Option<DateTime<Utc>>, Option<usize>)> {
            r.deliveries
                .iter()
                .map(|d| {
                    let behind = d
                        .fallback_of
                        .map(|id| r.deliveries.iter().position(|b| b.id == id).unwrap());
                    (d.channel, d.not_before, behind)
                })
                .collect()
        };
        // Push now; SMS ten minutes on, behind the push; email ten more, behind the SMS.
        assert_eq!(
            shape(&planned.recipients[0]),
            vec![
                (Channel::Push, None, None),
                (Channel::Sms, Some(now + after), Some(0)),
                (Channel::Email, Some(now + after * 2), Some(1)),
            ]
        );
        // No device: the push is suppressed, so the SMS goes at once.
        assert_eq!(
            planned.recipients[1].deliveries[0]
                .suppressed_reason
                .as_deref(),
            Some(reason::NO_ADDRESS)
        );
        assert_eq!(
            shape(&planned.recipients[1]),
            vec![
                (Channel::Push, None, None),
                (Channel::Sms, Some(now), Some(0)),
                (Channel::Email, Some(now + after), Some(1)),
            ]
        );
        // No phone: email stands behind the push.
        assert_eq!(
            shape(&planned.recipients[2]),
            vec![
                (Channel::Push, None, None),
                (Channel::Email, Some(now + after), Some(0))
            ]
        );
        // Without fallback, or when the last channel is asked for already: no standbys.
        alert.fallback_after = None;
        let planned = plan(
            &alert,
            "en",
            &[AudienceMember {
                guardian_id: Uuid::now_v7(),
                ..no_phone.clone()
            }],
            64,
            now,
        );
        assert_eq!(planned.recipients[0].deliveries.len(), 1);
        let mut both = draft(MessageKind::Emergency, &[Channel::Sms, Channel::Email]);
        both.fallback_after = Some(after);
        let planned = plan(&both, "en", &[no_phone], 64, now);
        assert!(planned.recipients[0]
            .deliveries
            .iter()
            .all(|d| d.fallback_of.is_none()));
    }

    proptest! {
        /// Whatever the audience: one recipient per guardian, one delivery per channel,
        /// and a delivery is sent exactly when nothing forbids it.
        #[test]
        fn every_guardian_gets_one_delivery_per_channel_sent_or_suppressed_for_a_reason(
            members in proptest::collection::vec(any_member(), 0..20),
            emergency in any::<bool>(),
            channels in proptest::collection::btree_set(proptest::sample::select(Channel::ALL.to_vec()), 1..4),
            fallback in any::<bool>(),
        ) {
            let kind = if emergency { MessageKind::Emergency } else { MessageKind::Attendance };
            let channels: Vec<Channel> = channels.into_iter().collect();
            let mut asked = draft(kind, &channels);
            asked.fallback_after = fallback.then(|| chrono::Duration::minutes(5));
            let message = plan(&asked, "en", &members, 64, chrono::Utc::now());
            let distinct: BTreeSet<Uuid> = members.iter().map(|m| m.guardian_id).collect();
            prop_assert_eq!(message.recipients.len(), distinct.len());
            let partitions: Vec<_> = message.recipients.iter().map(|r| PartitionId::of(r.guardian_id, 64)).collect();
            prop_assert!(partitions.is_sorted(), "recipients partition by partition");
            for recipient in &message.recipients {
                let member = members.iter().find(|m| m.guardian_id == *recipient.guardian_id.as_uuid()).unwrap();
                prop_assert!(recipient.language == "en" || recipient.language == "es");
                // Standbys come after the asked channels: each on a channel not asked for,
                // later in the fallback order than every asked one, usable, and behind the
                // delivery just before it.
                let (asked_ones, standbys) = recipient.deliveries.split_at(channels.len());
                prop_assert!(fallback || standbys.is_empty());
                let rank = |c: Channel| FALLBACK_ORDER.iter().position(|f| *f == c).unwrap();
                let last = channels.iter().map(|c| rank(*c)).max().unwrap();
                for (i, standby) in standbys.iter().enumerate() {
                    prop_assert!(rank(standby.channel) > last);
                    prop_assert!(standby.suppressed_reason.is_none() && standby.address.is_some());
                    let before = if i == 0 {
                        asked_ones.iter().max_by_key(|d| rank(d.channel)).unwrap()
                    } else {
                        &standbys[i - 1]
                    };
                    prop_assert_eq!(standby.fallback_of, Some(before.id));
                    prop_assert!(standby.not_before.is_some());
                }
                prop_assert!(asked_ones.iter().all(|d| d.fallback_of.is_none()));
                for (delivery, channel) in asked_ones.iter().zip(&channels) {
                    prop_assert_eq!(delivery.channel, *channel);
                    let stop = member.opt_outs.iter().any(|(c, s)| c == channel && s == "carrier");
                    let opted = member.opt_outs.iter().any(|(c, s)| c == channel && s != "carrier");
                    let reachable = member.contacts.iter().any(|c| c.kind == *channel);
                    let blocked = (stop && *channel == Channel::Sms) || (opted && !emergency) || !reachable;
                    prop_assert_eq!(delivery.suppressed_reason.is_some(), blocked);
                    prop_assert_eq!(delivery.address.is_some(), reachable);
                }
            }
        }
    }
}
