//! What a roster import needs from the database: one transaction per bundle, batched
//! lookups by sourcedId, batched upserts, and a per-import record of which sourcedIds the
//! bundle contained (kept in the database, not in memory, so that an import of any size
//! runs in bounded memory).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::StoreResult;
use crate::{Channel, Role};

/// A directory table that rows are imported into, keyed by sourcedId.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RosterTable {
    Schools,
    Students,
    Guardians,
    Staff,
    Classes,
    Enrollments,
}

impl RosterTable {
    pub const ALL: [RosterTable; 6] = [
        RosterTable::Schools,
        RosterTable::Students,
        RosterTable::Guardians,
        RosterTable::Staff,
        RosterTable::Classes,
        RosterTable::Enrollments,
    ];

    pub const fn table(self) -> &'static str {
        match self {
            RosterTable::Schools => "schools",
            RosterTable::Students => "students",
            RosterTable::Guardians => "guardians",
            RosterTable::Staff => "staff",
            RosterTable::Classes => "classes",
            RosterTable::Enrollments => "enrollments",
        }
    }

    /// Staff are disabled, not deleted: their sign-in must stop but their history stays.
    pub const fn deleted_column(self) -> &'static str {
        match self {
            RosterTable::Staff => "disabled_at",
            _ => "deleted_at",
        }
    }
}

/// A row already in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExistingRow {
    pub sourced_id: String,
    pub id: Uuid,
    pub roster_hash: Option<String>,
    pub deleted: bool,
}

/// A staff member found by email, for matching imported teachers to existing accounts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffByEmail {
    pub email: String,
    pub id: Uuid,
    pub district_id: Uuid,
    pub sourced_id: Option<String>,
    pub role: Role,
}

#[derive(Debug, Clone)]
pub struct SchoolRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub name: String,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct StudentRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub school_id: Uuid,
    pub given_name: String,
    pub family_name: String,
    pub grade: Option<String>,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct GuardianRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub given_name: String,
    pub family_name: String,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct StaffRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub email: String,
    pub display_name: String,
    pub role: Role,
    pub hash: String,
}

#[derive(Debug, Clone)]
pub struct ClassRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub school_id: Uuid,
    pub title: String,
    pub hash: String,
}

/// A class membership: a student, or a teacher (a staff member).
#[derive(Debug, Clone)]
pub struct EnrollmentRow {
    pub id: Uuid,
    pub sourced_id: String,
    pub class_id: Uuid,
    pub student_id: Option<Uuid>,
    pub staff_id: Option<Uuid>,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GuardianLink {
    pub guardian_id: Uuid,
    pub student_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RosterContact {
    pub guardian_id: Uuid,
    pub kind: Channel,
    /// E.164 number or lower-cased email address.
    pub address: String,
}

/// The open transaction of one roster import. Nothing is visible to anyone else until
/// [`RosterWriter::commit`]; dropping the writer rolls everything back.
#[async_trait]
pub trait RosterWriter: Send {
    /// The district's own sourcedId, if an import has set it.
    async fn district_sourced_id(&mut self) -> StoreResult<Option<String>>;

    async fn set_district_sourced_id(&mut self, sourced_id: &str) -> StoreResult<()>;

    /// Records that the bundle contains these keys of `entity`; returns those it already
    /// contained, with the line they were first seen on.
    async fn mark_seen(
        &mut self,
        entity: &str,
        keys: &[(String, u64)],
    ) -> StoreResult<Vec<(String, u64)>>;

    /// The rows of `table` in this district with these sourcedIds, deleted ones included.
    async fn existing(
        &mut self,
        table: RosterTable,
        sourced_ids: &[String],
    ) -> StoreResult<Vec<ExistingRow>>;

    async fn staff_by_emails(&mut self, emails: &[String]) -> StoreResult<Vec<StaffByEmail>>;

    // Inserts or updates by id; an updated row is also undeleted.
    async fn upsert_schools(&mut self, rows: &[SchoolRow], at: DateTime<Utc>) -> StoreResult<()>;
    async fn upsert_students(&mut self, rows: &[StudentRow], at: DateTime<Utc>) -> StoreResult<()>;
    async fn upsert_guardians(
        &mut self,
        rows: &[GuardianRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()>;
    async fn upsert_staff(&mut self, rows: &[StaffRow], at: DateTime<Utc>) -> StoreResult<()>;
    async fn upsert_classes(&mut self, rows: &[ClassRow], at: DateTime<Utc>) -> StoreResult<()>;
    async fn upsert_enrollments(
        &mut self,
        rows: &[EnrollmentRow],
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Assigns school administrators to schools (never removes an assignment).
    async fn add_staff_schools(&mut self, pairs: &[(Uuid, Uuid)]) -> StoreResult<()>;

    /// Links guardians to students, restoring soft-deleted links.
    async fn upsert_links(&mut self, links: &[GuardianLink], at: DateTime<Utc>) -> StoreResult<()>;

    /// Adds or reactivates roster contact points. An address deactivated for a reason
    /// other than leaving the roster (a bounce, an unregistered device) stays inactive.
    async fn upsert_contacts(
        &mut self,
        contacts: &[RosterContact],
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    /// Soft-deletes rows by id (status `tobedeleted`); returns how many were live.
    async fn soft_delete(
        &mut self,
        table: RosterTable,
        ids: &[Uuid],
        at: DateTime<Utc>,
    ) -> StoreResult<u64>;

    /// Soft-deletes the imported rows of `table` the bundle did not contain.
    async fn delete_unseen(&mut self, table: RosterTable, at: DateTime<Utc>) -> StoreResult<u64>;

    /// Soft-deletes links of guardians in the bundle that the bundle no longer makes.
    async fn delete_unseen_links(&mut self, at: DateTime<Utc>) -> StoreResult<u64>;

    /// Deactivates roster contact points of guardians in the bundle that it no longer lists.
    async fn deactivate_unseen_contacts(&mut self, at: DateTime<Utc>) -> StoreResult<u64>;

    /// Live (not deleted, not disabled) rows of `table` in the district, as this
    /// transaction sees them.
    async fn live_count(&mut self, table: RosterTable) -> StoreResult<u64>;

    async fn commit(self: Box<Self>) -> StoreResult<()>;

    /// Undoes everything the import wrote (a dry run, or an import held back).
    async fn rollback(self: Box<Self>) -> StoreResult<()>;
}

/// Keys under which links and contact points are marked seen.
pub fn link_key(link: &GuardianLink) -> String {
    format!(
        "{}|{}",
        link.guardian_id.hyphenated(),
        link.student_id.hyphenated()
    )
}

pub fn contact_key(contact: &RosterContact) -> String {
    format!(
        "{}|{}|{}",
        contact.guardian_id.hyphenated(),
        contact.kind,
        contact.address
    )
}
