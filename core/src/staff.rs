//! School and district staff: who they are and what their role lets them address.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::stored_enum::stored_enum;
use crate::{DistrictId, EmailAddress, StaffId};

stored_enum! {
    /// What a staff member may see and message.
    Role("staff role") {
        /// Everything in the district.
        DistrictAdmin => "district_admin",
        /// The schools they are assigned to.
        SchoolAdmin => "school_admin",
        /// The guardians of students in the classes they teach.
        Teacher => "teacher",
        /// Read-only reports.
        Viewer => "viewer",
    }
}

/// A staff member as stored (never with the password hash: that stays in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Staff {
    pub id: StaffId,
    pub district_id: DistrictId,
    pub email: EmailAddress,
    pub display_name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Manages the districts of the install (creates, renames, suspends them), besides
    /// their role in their own district.
    pub operator: bool,
}
