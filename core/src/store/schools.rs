//! The schools aggregate as the services and the API write it one school at a time:
//! created, and its time zone and quiet hours. The roster's bulk sync of schools is the
//! roster's (`roster.rs`).

use chrono::{DateTime, Utc};

use super::dialect::{Args, Dialect};
use super::{NewSchool, School, StoreResult};
use crate::quiet_hours::QuietHours;
use crate::{DistrictId, SchoolId};

pub(crate) async fn insert<D: Dialect>(
    conn: &mut D::Connection,
    school: &NewSchool,
    at: DateTime<Utc>,
) -> StoreResult<School> {
    let id = SchoolId::new();
    D::execute(
        conn,
        "INSERT INTO schools (id, district_id, sourced_id, name, timezone, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
        Args::new()
            .id(id)
            .id(school.district_id)
            .opt_text(school.sourced_id.as_deref())
            .text(&school.name)
            .text(&school.timezone)
            .time(at),
    )
    .await?;
    Ok(School {
        id,
        district_id: school.district_id,
        name: school.name.clone(),
        timezone: school.timezone.clone(),
        sourced_id: school.sourced_id.clone(),
    })
}

/// Sets a school's time zone and quiet hours; the school by id or sourcedId.
pub(crate) async fn set_quiet_hours<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    school: &str,
    quiet: Option<QuietHours>,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let sql = format!(
        "UPDATE schools SET timezone = COALESCE($1, timezone), quiet_start_minute = $2, \
         quiet_end_minute = $3, updated_at = $4 \
         WHERE district_id = $5 AND deleted_at IS NULL AND (id{} = $6 OR sourced_id = $7)",
        D::AS_TEXT
    );
    let args = Args::new()
        .opt_text(quiet.map(|q| q.timezone.name().to_owned()))
        .opt_int(quiet.map(|q| i64::from(q.start_minute)))
        .opt_int(quiet.map(|q| i64::from(q.end_minute)))
        .time(at)
        .id(district)
        .text(school.trim().to_lowercase())
        .text(school.trim());
    Ok(D::execute(conn, &sql, args).await? > 0)
}
