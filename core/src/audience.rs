//! Who a message goes to. Staff name an audience — the district, schools, grades, classes,
//! students or guardians, by id or sourcedId — and it resolves to a set of guardians,
//! each once however many of their children it reaches, within what the sender may see.

use serde::Deserialize;
use uuid::Uuid;

use crate::Channel;

/// An audience as asked for (DESIGN.md §11). The lists hold ids or sourcedIds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Audience {
    pub district: bool,
    pub schools: Vec<String>,
    pub grades: Vec<String>,
    pub classes: Vec<String>,
    pub students: Vec<String>,
    pub guardians: Vec<String>,
}

/// References per list an audience may hold.
pub const MAX_REFERENCES: usize = 10_000;

impl Audience {
    pub fn is_empty(&self) -> bool {
        !self.district
            && self.schools.is_empty()
            && self.grades.is_empty()
            && self.classes.is_empty()
            && self.students.is_empty()
            && self.guardians.is_empty()
    }
}

/// Why an audience cannot be resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct AudienceProblems {
    /// References that match nothing in the district ("classes:c-99").
    pub unknown: Vec<String>,
    /// References that exist but are outside what the sender may message.
    pub forbidden: Vec<String>,
}

impl AudienceProblems {
    pub fn is_empty(&self) -> bool {
        self.unknown.is_empty() && self.forbidden.is_empty()
    }
}

/// A guardian the audience reaches, with what is needed to plan their deliveries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudienceMember {
    pub guardian_id: Uuid,
    pub preferred_language: Option<String>,
    /// Active contact points, oldest first.
    pub contacts: Vec<MemberContact>,
    /// Active opt-outs: (channel, source).
    pub opt_outs: Vec<(Channel, String)>,
    /// The guardian's quiet hours: their own if set, else their (first) school's.
    pub quiet: Option<crate::quiet_hours::QuietHours>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberContact {
    pub id: Uuid,
    pub kind: Channel,
    pub address: String,
}
