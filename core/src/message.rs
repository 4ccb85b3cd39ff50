//! What kind of message it is, and what follows from that: its lane on the log and the
//! delivery guarantee it may ask for.

use crate::stored_enum::stored_enum;

stored_enum! {
    /// Why a message is sent. Emergencies bypass quiet hours and non-carrier opt-outs.
    MessageKind("message kind") {
        Emergency => "emergency",
        Attendance => "attendance",
        General => "general",
    }
}

stored_enum! {
    /// A priority lane of the log. Dispatchers drain emergency before normal before bulk.
    Lane("lane") {
        Emergency => "emergency",
        Normal => "normal",
        Bulk => "bulk",
    }
}

stored_enum! {
    /// What the dispatcher promises about a delivery when a provider call is in doubt.
    DeliveryGuarantee("delivery guarantee") {
        /// Retry in-doubt attempts with the same idempotency key (the default; always
        /// for emergencies).
        AtLeastOnce => "at_least_once",
        /// Never retry an in-doubt attempt: a duplicate is worse than a miss.
        AtMostOnce => "at_most_once",
    }
}

impl MessageKind {
    /// The lane a message of this kind travels in: emergencies first, attendance notices
    /// (time-sensitive, one family at a time) next, general news (newsletters, closures
    /// announced ahead) last, so a district-wide newsletter never delays a lockdown alert
    /// or an absence call.
    pub const fn lane(self) -> Lane {
        match self {
            MessageKind::Emergency => Lane::Emergency,
            MessageKind::Attendance => Lane::Normal,
            MessageKind::General => Lane::Bulk,
        }
    }
}

impl Lane {
    /// This lane and the more urgent ones (the declaration order is the order of urgency).
    pub fn and_more_urgent(self) -> impl Iterator<Item = Lane> {
        Lane::ALL.iter().copied().filter(move |lane| *lane <= self)
    }
}

impl DeliveryGuarantee {
    /// The guarantee actually used: emergencies are always at-least-once, whatever was
    /// asked, because a missed lockdown alert is worse than a duplicate.
    pub const fn effective(self, kind: MessageKind) -> DeliveryGuarantee {
        match kind {
            MessageKind::Emergency => DeliveryGuarantee::AtLeastOnce,
            _ => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_and_the_more_urgent_ones() {
        let of = |lane: Lane| lane.and_more_urgent().collect::<Vec<_>>();
        assert_eq!(of(Lane::Emergency), [Lane::Emergency]);
        assert_eq!(of(Lane::Normal), [Lane::Emergency, Lane::Normal]);
        assert_eq!(of(Lane::Bulk), [Lane::Emergency, Lane::Normal, Lane::Bulk]);
    }

    #[test]
    fn emergencies_travel_in_the_emergency_lane_at_least_once() {
        assert_eq!(MessageKind::Emergency.lane(), Lane::Emergency);
        assert_eq!(MessageKind::Attendance.lane(), Lane::Normal);
        assert_eq!(MessageKind::General.lane(), Lane::Bulk);
        assert_eq!(
            DeliveryGuarantee::AtMostOnce.effective(MessageKind::Emergency),
            DeliveryGuarantee::AtLeastOnce
        );
        assert_eq!(
            DeliveryGuarantee::AtMostOnce.effective(MessageKind::Attendance),
            DeliveryGuarantee::AtMostOnce
        );
    }

    #[test]
    fn names_round_trip_and_unknown_names_say_what_was_expected() {
        for kind in MessageKind::ALL {
            assert_eq!(kind.as_str().parse::<MessageKind>(), Ok(*kind));
        }
        let err = "fax".parse::<crate::Channel>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown channel "fax" (expected one of: sms, email, push)"#
        );
        assert_eq!(
            serde_json::from_str::<DeliveryGuarantee>(r#""at_most_once""#).unwrap(),
            DeliveryGuarantee::AtMostOnce
        );
    }
}
