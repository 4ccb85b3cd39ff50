//! How long a district keeps what Tidings holds about its families, and what a purge
//! takes away. Districts sign data-privacy agreements that cap how long student and
//! family data is kept; each kind of record has a default, which a district may shorten
//! or lengthen, and a minimum below which the record would no longer do its job (a
//! report staff still read, the audit trail of a school year).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// A kind of record kept for a while and then purged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    /// Its name in settings, the API and the CLI (`messages_days`, …).
    pub setting: &'static str,
    /// What it covers, for people.
    pub what: &'static str,
    pub default_days: u32,
    pub minimum_days: u32,
}

/// Messages with their recipients, deliveries, delivery events and attempts: kept a
/// school year and a summer by default.
pub const MESSAGES: Kept = Kept {
    setting: "messages_days",
    what: "messages, with their recipients, deliveries, delivery events and attempts",
    default_days: 400,
    minimum_days: 30,
};

/// Texts guardians sent (replies, STOP, HELP, acknowledgments by SMS). The opt-outs they
/// made are kept apart and stay.
pub const REPLIES: Kept = Kept {
    setting: "replies_days",
    what: "guardians' texts (replies and keywords; their opt-outs stay)",
    default_days: 400,
    minimum_days: 30,
};

/// Providers' reports on the district's deliveries, kept in the callback inbox once
/// applied. (A refused request belongs to no district: the install keeps those, for less
/// time, under `callback_rejected_retention_days`.)
pub const CALLBACKS: Kept = Kept {
    setting: "callbacks_days",
    what: "providers' delivery reports on its deliveries, as received",
    default_days: 30,
    minimum_days: 7,
};

/// The audit log of what staff and guardians did.
pub const AUDIT: Kept = Kept {
    setting: "audit_days",
    what: "the audit log",
    default_days: 730,
    minimum_days: 180,
};

/// The longest any kind can be kept: a century.
pub const MAXIMUM_DAYS: u32 = 36_500;

/// Every kind, in the order they are shown.
pub const KINDS: [Kept; 4] = [MESSAGES, REPLIES, CALLBACKS, AUDIT];

/// Hours a consumed entry of the delivery log is kept by default (install-wide): how far
/// back a partition's offset can be moved to send again.
pub const LOG_DEFAULT_HOURS: u32 = 168;

/// A district's retention as set, in days of each kind: `None` (`null`, or left out)
/// keeps the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Messages, with their recipients, deliveries, delivery events and attempts (at
    /// least 30).
    #[serde(default)]
    pub messages_days: Option<u32>,
    /// Guardians' texts; their opt-outs stay (at least 30).
    #[serde(default)]
    pub replies_days: Option<u32>,
    /// Providers' reports on the district's deliveries, as received (at least 7).
    #[serde(default)]
    pub callbacks_days: Option<u32>,
    /// The audit log (at least 180).
    #[serde(default)]
    pub audit_days: Option<u32>,
}

/// Why a retention cannot be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{setting} must be at least {minimum} days ({what}) and at most {MAXIMUM_DAYS}, not {given}"
)]
pub struct TooShort {
    pub setting: &'static str,
    pub what: &'static str,
    pub minimum: u32,
    pub given: u32,
}

/// When records become old enough to purge: those before each time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cutoffs {
    pub messages: DateTime<Utc>,
    pub replies: DateTime<Utc>,
    pub callbacks: DateTime<Utc>,
    pub audit: DateTime<Utc>,
}

impl Retention {
    fn each(&self) -> [(Kept, Option<u32>); 4] {
        [
            (MESSAGES, self.messages_days),
            (REPLIES, self.replies_days),
            (CALLBACKS, self.callbacks_days),
            (AUDIT, self.audit_days),
        ]
    }

    /// An error for the first setting under its minimum (or over [`MAXIMUM_DAYS`]).
    pub fn check(&self) -> Result<(), TooShort> {
        for (kind, days) in self.each() {
            if let Some(given) = days.filter(|d| !(kind.minimum_days..=MAXIMUM_DAYS).contains(d)) {
                return Err(TooShort {
                    setting: kind.setting,
                    what: kind.what,
                    minimum: kind.minimum_days,
                    given,
                });
            }
        }
        Ok(())
    }

    /// Days kept of `kind`: as set, or its default; never under its minimum (a value
    /// set before a minimum was raised counts as the minimum).
    pub fn days(&self, kind: Kept) -> u32 {
        let set = self
            .each()
            .into_iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, days)| days);
        set.unwrap_or(kind.default_days)
            .clamp(kind.minimum_days, MAXIMUM_DAYS)
    }

    /// What is older than it should be kept, looking at `now`.
    pub fn cutoffs(&self, now: DateTime<Utc>) -> Cutoffs {
        let before = |kind| now - Duration::days(i64::from(self.days(kind)));
        Cutoffs {
            messages: before(MESSAGES),
            replies: before(REPLIES),
            callbacks: before(CALLBACKS),
            audit: before(AUDIT),
        }
    }
}

/// What a purge took away (or, in a dry run, would).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Purged {
    pub messages: u64,
    pub recipients: u64,
    pub deliveries: u64,
    pub replies: u64,
    /// Provider reports of the callback inbox.
    pub callbacks: u64,
    pub audit_entries: u64,
}

impl Purged {
    pub fn add(&mut self, other: Purged) {
        self.messages += other.messages;
        self.recipients += other.recipients;
        self.deliveries += other.deliveries;
        self.replies += other.replies;
        self.callbacks += other.callbacks;
        self.audit_entries += other.audit_entries;
    }

    pub fn is_empty(&self) -> bool {
        *self == Purged::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn defaults_hold_until_set_and_minimums_always() {
        let now = "2026-12-08T12:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let default = Retention::default();
        assert_eq!(default.days(MESSAGES), 400);
        assert_eq!(default.days(AUDIT), 730);
        assert_eq!(default.days(CALLBACKS), 30);
        assert_eq!(default.cutoffs(now).callbacks, now - Duration::days(30));
        assert_eq!(default.cutoffs(now).replies, now - Duration::days(400));
        let set = Retention {
            messages_days: Some(90),
            ..Default::default()
        };
        assert_eq!(set.check(), Ok(()));
        assert_eq!(set.cutoffs(now).messages, now - Duration::days(90));
        assert_eq!(set.days(REPLIES), 400);
        let short = Retention {
            audit_days: Some(30),
            ..Default::default()
        };
        let refused = short.check().unwrap_err();
        assert_eq!((refused.setting, refused.minimum), ("audit_days", 180));
        assert!(refused.to_string().contains("at least 180 days"));
        // Read back from a database written before a minimum was raised.
        assert_eq!(short.days(AUDIT), 180);
    }

    #[test]
    fn unknown_settings_are_refused_when_read() {
        let read: Result<Retention, _> = serde_json::from_str(r#"{"message_days": 40}"#);
        assert!(read.is_err());
        let read: Retention = serde_json::from_str(r#"{"messages_days": 40}"#).unwrap();
        assert_eq!(read.messages_days, Some(40));
    }

    proptest! {
        /// Whatever is set, what is kept is at least the minimum, exactly what was set
        /// when allowed, and a setting passes the check exactly when it is allowed.
        #[test]
        fn kept_days_never_go_under_a_minimum(
            messages in proptest::option::of(0u32..40_000),
            replies in proptest::option::of(0u32..40_000),
            callbacks in proptest::option::of(0u32..100),
            audit in proptest::option::of(any::<u32>()),
        ) {
            let r = Retention {
                messages_days: messages,
                replies_days: replies,
                callbacks_days: callbacks,
                audit_days: audit,
            };
            let allowed = r
                .each()
                .iter()
                .all(|(k, d)| d.is_none_or(|d| (k.minimum_days..=MAXIMUM_DAYS).contains(&d)));
            prop_assert_eq!(r.check().is_ok(), allowed);
            for (kind, set) in r.each() {
                prop_assert!((kind.minimum_days..=MAXIMUM_DAYS).contains(&r.days(kind)));
                if let Some(days) = set.filter(|d| (kind.minimum_days..=MAXIMUM_DAYS).contains(d)) {
                    prop_assert_eq!(r.days(kind), days);
                }
            }
        }
    }
}
