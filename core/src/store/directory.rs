//! The guardian directory as staff see it: what each role may see, and the shapes the
//! directory is read in.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::{Channel, DistrictId, Role, Staff, StaffId};

/// What part of a district a staff member may see (DESIGN.md §7). Every directory query
/// takes one; none can be run without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// District administrators: everything in the district.
    District(DistrictId),
    /// School administrators and viewers: the schools they are assigned to.
    Schools(DistrictId, StaffId),
    /// Teachers: the classes they teach, those classes' students and their guardians.
    Teacher(DistrictId, StaffId),
}

impl Scope {
    pub fn of(staff: &Staff) -> Self {
        match staff.role {
            Role::DistrictAdmin => Scope::District(staff.district_id),
            Role::SchoolAdmin | Role::Viewer => Scope::Schools(staff.district_id, staff.id),
            Role::Teacher => Scope::Teacher(staff.district_id, staff.id),
        }
    }

    pub fn district(&self) -> DistrictId {
        match *self {
            Scope::District(d) | Scope::Schools(d, _) | Scope::Teacher(d, _) => d,
        }
    }

    /// The staff member scoped to, or the nil id for the whole district.
    pub fn staff(&self) -> Uuid {
        match *self {
            Scope::District(_) => Uuid::nil(),
            Scope::Schools(_, s) | Scope::Teacher(_, s) => *s.as_uuid(),
        }
    }
}

/// One page of a listing: rows after `after` (ids are time-ordered), at most `limit`,
/// optionally matching `search` in names and sourcedIds, and narrowed to one row, school,
/// class or student. Filters never widen the caller's scope.
#[derive(Debug, Clone, Default)]
pub struct PageRequest {
    pub after: Option<Uuid>,
    pub limit: u32,
    pub search: Option<String>,
    /// Only the row with this id.
    pub only: Option<Uuid>,
    /// Rows of this school (for guardians: guardians of its students).
    pub school: Option<Uuid>,
    /// Rows of this class (students enrolled, their guardians, its school).
    pub class: Option<Uuid>,
    /// Rows of this student (their guardians, classes, school).
    pub student: Option<Uuid>,
}

impl PageRequest {
    /// `%search%`, lower-cased, with LIKE's wildcards escaped.
    pub fn pattern(&self) -> Option<String> {
        self.search
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let escaped = s
                    .to_lowercase()
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_");
                format!("%{escaped}%")
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SchoolView {
    pub id: Uuid,
    pub sourced_id: Option<String>,
    pub name: String,
    pub timezone: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClassView {
    pub id: Uuid,
    pub sourced_id: Option<String>,
    pub school_id: Uuid,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StudentView {
    pub id: Uuid,
    pub sourced_id: Option<String>,
    pub school_id: Uuid,
    pub given_name: String,
    pub family_name: String,
    pub grade: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GuardianView {
    pub id: Uuid,
    pub sourced_id: Option<String>,
    pub given_name: String,
    pub family_name: String,
    pub preferred_language: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContactPointView {
    pub id: Uuid,
    pub kind: Channel,
    pub address: String,
    pub active: bool,
    pub inactive_reason: Option<String>,
    /// roster, staff or app.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OptOutView {
    pub id: Uuid,
    pub channel: Channel,
    /// carrier (an SMS STOP), guardian, staff or complaint.
    pub source: String,
    pub created_at: DateTime<Utc>,
}

/// A guardian with everything staff need to reach them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GuardianDetail {
    #[serde(flatten)]
    pub guardian: GuardianView,
    pub students: Vec<StudentView>,
    pub contact_points: Vec<ContactPointView>,
    pub opt_outs: Vec<OptOutView>,
}

/// How to find one guardian.
#[derive(Debug, Clone)]
pub enum GuardianRef {
    Id(Uuid),
    SourcedId(String),
}
