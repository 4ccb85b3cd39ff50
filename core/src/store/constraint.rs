//! Schema rules a write can break, classified inside the store (PostgreSQL's SQLSTATE and
//! SQLite's extended result codes, through sqlx's `ErrorKind`) and named the same way on
//! both: PostgreSQL by constraint name, SQLite by the columns or expression its message
//! gives. Front ends turn them into the right answer (a conflict, an invalid request) with
//! [`describe`], never into a server error.

/// The kind of schema rule a write broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// A row with the same key exists.
    Unique,
    /// The row refers to one that does not exist (any more).
    ForeignKey,
    /// A value is outside what the column allows.
    Check,
    /// A required value is missing.
    NotNull,
}

/// Constraints a request can run into, by their PostgreSQL name and their SQLite spelling,
/// with what to tell the person who made the request.
const KNOWN: &[(&str, &str, &str)] = &[
    (
        "staff_email_key",
        "staff.email",
        "a staff member with this email address already exists",
    ),
    (
        "staff_email_check",
        "email = lower(email)",
        "a staff email address must be stored lower-cased",
    ),
    (
        "schools_district_id_sourced_id_key",
        "schools.district_id, schools.sourced_id",
        "a school with this sourcedId already exists in the district",
    ),
    (
        "classes_district_id_sourced_id_key",
        "classes.district_id, classes.sourced_id",
        "a class with this sourcedId already exists in the district",
    ),
    (
        "students_district_id_sourced_id_key",
        "students.district_id, students.sourced_id",
        "a student with this sourcedId already exists in the district",
    ),
    (
        "guardians_district_id_sourced_id_key",
        "guardians.district_id, guardians.sourced_id",
        "a guardian with this sourcedId already exists in the district",
    ),
    (
        "contact_points_guardian_id_kind_address_key",
        "contact_points.guardian_id, contact_points.kind, contact_points.address",
        "the guardian already has this address",
    ),
    (
        "messages_pkey",
        "messages.id",
        "a message with this id already exists",
    ),
    (
        "recipients_message_id_guardian_id_key",
        "recipients.message_id, recipients.guardian_id",
        "a message reaches each guardian once",
    ),
];

/// What to tell a person whose request broke `constraint` (as a [`super::StoreError`]
/// names it), if it is one a request can break.
pub fn describe(constraint: &str) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|(postgres, sqlite, _)| *postgres == constraint || *sqlite == constraint)
        .map(|(_, _, description)| *description)
}

/// The constraint a database error names: PostgreSQL's constraint name, or what follows
/// SQLite's "… constraint failed: " (empty for SQLite's foreign keys, which name none).
pub(crate) fn name(error: &dyn sqlx::error::DatabaseError) -> String {
    if let Some(name) = error.constraint() {
        return name.to_owned();
    }
    let message = error.message();
    message
        .split_once("constraint failed: ")
        .map_or(message, |(_, name)| name)
        .trim()
        .to_owned()
}

/// The rule a database error broke, if it is a constraint violation.
pub(crate) fn rule(error: &dyn sqlx::error::DatabaseError) -> Option<Rule> {
    match error.kind() {
        sqlx::error::ErrorKind::UniqueViolation => Some(Rule::Unique),
        sqlx::error::ErrorKind::ForeignKeyViolation => Some(Rule::ForeignKey),
        sqlx::error::ErrorKind::CheckViolation => Some(Rule::Check),
        sqlx::error::ErrorKind::NotNullViolation => Some(Rule::NotNull),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_spellings_of_a_constraint_are_described_alike() {
        for (postgres, sqlite, description) in KNOWN {
            assert_eq!(describe(postgres), Some(*description));
            assert_eq!(describe(sqlite), Some(*description));
        }
        assert_eq!(describe("no_such_constraint"), None);
    }
}
