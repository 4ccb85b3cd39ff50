//! The staff aggregate: a member's `staff` row (created, role, disabled, password,
//! operator) and the schools they are limited to (`staff_schools`), as the services
//! write them one member at a time. The roster's bulk sync of staff is the roster's
//! (`roster.rs`).

use chrono::{DateTime, Utc};

use super::dialect::{Args, Columns, Dialect};
use super::{NewStaff, StoreResult};
use crate::{DistrictId, EmailAddress, Role, SchoolId, Staff, StaffId};

/// The columns [`staff_from_row`] reads.
pub(crate) const STAFF_COLUMNS: &str =
    "id, district_id, email, display_name, role, created_at, operator";

pub(crate) fn staff_from_row(row: &impl Columns) -> StoreResult<Staff> {
    Ok(Staff {
        id: StaffId::from_uuid(row.id("id")?),
        district_id: DistrictId::from_uuid(row.id("district_id")?),
        email: row.parsed::<EmailAddress>("email")?,
        display_name: row.text("display_name")?,
        role: row.parsed("role")?,
        created_at: row.time("created_at")?,
        operator: row.flag("operator")?,
    })
}

/// Creates a staff account on `conn`.
pub(crate) async fn insert<D: Dialect>(
    conn: &mut D::Connection,
    staff: &NewStaff,
    at: DateTime<Utc>,
) -> StoreResult<Staff> {
    let sql = format!(
        "INSERT INTO staff (id, district_id, email, display_name, role, password_hash, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {STAFF_COLUMNS}"
    );
    let args = Args::new()
        .id(StaffId::new())
        .id(staff.district_id)
        .text(staff.email.as_str())
        .text(&staff.display_name)
        .text(staff.role.as_str())
        .opt_text(staff.password_hash.as_deref())
        .time(at);
    staff_from_row(&D::fetch_one(conn, &sql, args).await?)
}

/// Makes a member an operator of the install (or no longer one); false when they already
/// were (or were not).
pub(crate) async fn set_operator<D: Dialect>(
    conn: &mut D::Connection,
    staff: StaffId,
    operator: bool,
) -> StoreResult<bool> {
    let changed = D::execute(
        conn,
        "UPDATE staff SET operator = $2 WHERE id = $1 AND operator <> $2",
        Args::new().id(staff).flag(operator),
    )
    .await?;
    Ok(changed == 1)
}

/// Limits a member to `schools` (none: the whole district).
pub(crate) async fn set_schools<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    staff: StaffId,
    schools: &[SchoolId],
) -> StoreResult<()> {
    D::execute(
        conn,
        "DELETE FROM staff_schools WHERE staff_id = $1 AND district_id = $2",
        Args::new().id(staff).id(district),
    )
    .await?;
    for school in schools {
        D::execute(
            conn,
            "INSERT INTO staff_schools (district_id, staff_id, school_id) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
            Args::new().id(district).id(staff).id(*school),
        )
        .await?;
    }
    Ok(())
}

/// Whether the member (of `district`) exists.
pub(crate) async fn set_role<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    staff: StaffId,
    role: Role,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let changed = D::execute(
        conn,
        "UPDATE staff SET role = $1, updated_at = $2 WHERE id = $3 AND district_id = $4",
        Args::new()
            .text(role.as_str())
            .time(at)
            .id(staff)
            .id(district),
    )
    .await?;
    Ok(changed == 1)
}

/// Disables a member (kept since the first time) or enables them; whether they exist.
pub(crate) async fn set_disabled<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    staff: StaffId,
    disabled: bool,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let changed = D::execute(
        conn,
        "UPDATE staff SET disabled_at = CASE WHEN $1 THEN COALESCE(disabled_at, $2) END, \
         updated_at = $2 WHERE id = $3 AND district_id = $4",
        Args::new().flag(disabled).time(at).id(staff).id(district),
    )
    .await?;
    Ok(changed == 1)
}

pub(crate) async fn set_password_hash<D: Dialect>(
    conn: &mut D::Connection,
    staff: StaffId,
    hash: &str,
    at: DateTime<Utc>,
) -> StoreResult<()> {
    D::execute(
        conn,
        "UPDATE staff SET password_hash = $1, updated_at = $2 WHERE id = $3",
        Args::new().text(hash).time(at).id(staff),
    )
    .await?;
    Ok(())
}
