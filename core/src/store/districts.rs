//! The districts aggregate: the `districts` row (name, locale, quotas, suspension,
//! retention, the roster's sourcedId) and its `district_sso` settings. Every write to
//! those two tables is here; the services decide what to write, in their transaction.

use chrono::{DateTime, Utc};

use super::dialect::{Args, Columns, Dialect};
use super::{District, DistrictSso, StoreResult};
use crate::retention::Retention;
use crate::DistrictId;

/// A new district, in `timezone` (else the schema's default).
pub(crate) async fn insert<D: Dialect>(
    conn: &mut D::Connection,
    name: &str,
    timezone: Option<&str>,
    at: DateTime<Utc>,
) -> StoreResult<District> {
    let args = Args::new().id(DistrictId::new()).text(name).time(at);
    let (sql, args) = match timezone {
        Some(timezone) => (
            format!(
                "INSERT INTO districts (id, name, created_at, timezone) VALUES ($1, $2, $3, $4) \
                 RETURNING {DISTRICT_COLUMNS}"
            ),
            args.text(timezone),
        ),
        None => (
            format!(
                "INSERT INTO districts (id, name, created_at) VALUES ($1, $2, $3) \
                 RETURNING {DISTRICT_COLUMNS}"
            ),
            args,
        ),
    };
    district_from_row(&D::fetch_one(conn, &sql, args).await?)
}

/// The columns [`district_from_row`] reads.
pub(crate) const DISTRICT_COLUMNS: &str = "id, name, default_language, timezone, created_at, \
     max_recipients_per_message, max_messages_per_hour, suspended_at";

pub(crate) fn district_from_row(row: &impl Columns) -> StoreResult<District> {
    Ok(District {
        id: DistrictId::from_uuid(row.id("id")?),
        name: row.text("name")?,
        default_language: row.text("default_language")?,
        timezone: row.text("timezone")?,
        created_at: row.time("created_at")?,
        max_recipients_per_message: row.opt_i32("max_recipients_per_message")?,
        max_messages_per_hour: row.opt_i32("max_messages_per_hour")?,
        suspended_at: row.opt_time("suspended_at")?,
    })
}

pub(crate) async fn get<D: Dialect>(
    conn: &mut D::Connection,
    id: DistrictId,
) -> StoreResult<Option<District>> {
    let sql = format!("SELECT {DISTRICT_COLUMNS} FROM districts WHERE id = $1");
    D::fetch_optional(conn, &sql, Args::new().id(id))
        .await?
        .as_ref()
        .map(district_from_row)
        .transpose()
}

pub(crate) async fn set_quotas<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    max_recipients_per_message: Option<i32>,
    max_messages_per_hour: Option<i32>,
) -> StoreResult<()> {
    D::execute(
        conn,
        "UPDATE districts SET max_recipients_per_message = $1, max_messages_per_hour = $2 \
         WHERE id = $3",
        Args::new()
            .opt_int(max_recipients_per_message.map(i64::from))
            .opt_int(max_messages_per_hour.map(i64::from))
            .id(district),
    )
    .await?;
    Ok(())
}

/// A district's single sign-on settings, the client secret sealed (`crate::sealed`).
pub(crate) async fn sso<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
) -> StoreResult<Option<DistrictSso>> {
    let Some(row) = D::fetch_optional(
        conn,
        "SELECT district_id, issuer, client_id, client_secret_sealed, updated_at \
         FROM district_sso WHERE district_id = $1",
        Args::new().id(district),
    )
    .await?
    else {
        return Ok(None);
    };
    Ok(Some(DistrictSso {
        district_id: DistrictId::from_uuid(row.id("district_id")?),
        issuer: row.text("issuer")?,
        client_id: row.text("client_id")?,
        client_secret_sealed: row.opt_bytes("client_secret_sealed")?.unwrap_or_default(),
        updated_at: row.time("updated_at")?,
    }))
}

/// The districts whose staff may sign in with single sign-on, by name.
pub(crate) async fn sso_districts<D: Dialect>(
    conn: &mut D::Connection,
) -> StoreResult<Vec<District>> {
    let columns = DISTRICT_COLUMNS
        .split(", ")
        .map(|c| format!("d.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT {columns} FROM districts d JOIN district_sso s ON s.district_id = d.id \
         WHERE d.deleted_at IS NULL AND d.suspended_at IS NULL ORDER BY d.name, d.id"
    );
    D::fetch_all(conn, &sql, Args::new())
        .await?
        .iter()
        .map(district_from_row)
        .collect()
}

/// Sets (or replaces) a district's single sign-on settings.
pub(crate) async fn set_sso<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    issuer: &str,
    client_id: &str,
    client_secret_sealed: &[u8],
    at: DateTime<Utc>,
) -> StoreResult<()> {
    D::execute(
        conn,
        "INSERT INTO district_sso (district_id, issuer, client_id, client_secret_sealed, updated_at) \
         VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (district_id) DO UPDATE SET issuer = excluded.issuer, \
           client_id = excluded.client_id, client_secret_sealed = excluded.client_secret_sealed, \
           updated_at = excluded.updated_at",
        Args::new()
            .id(district)
            .text(issuer)
            .text(client_id)
            .bytes(client_secret_sealed)
            .time(at),
    )
    .await?;
    Ok(())
}

/// Removes a district's single sign-on settings; whether there were any.
pub(crate) async fn remove_sso<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
) -> StoreResult<bool> {
    Ok(D::execute(
        conn,
        "DELETE FROM district_sso WHERE district_id = $1",
        Args::new().id(district),
    )
    .await?
        > 0)
}

/// Every district, oldest first.
pub(crate) async fn all<D: Dialect>(conn: &mut D::Connection) -> StoreResult<Vec<District>> {
    let sql = format!("SELECT {DISTRICT_COLUMNS} FROM districts ORDER BY created_at, id");
    D::fetch_all(conn, &sql, Args::new())
        .await?
        .iter()
        .map(district_from_row)
        .collect()
}

/// Sets a district's default language and time zone; whether it exists.
pub(crate) async fn set_locale<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    default_language: &str,
    timezone: &str,
) -> StoreResult<bool> {
    let changed = D::execute(
        conn,
        "UPDATE districts SET default_language = $2, timezone = $3 WHERE id = $1 \
         AND deleted_at IS NULL",
        Args::new()
            .id(district)
            .text(default_language)
            .text(timezone),
    )
    .await?;
    Ok(changed == 1)
}

/// Renames a district; whether it exists.
pub(crate) async fn rename<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    name: &str,
) -> StoreResult<bool> {
    let changed = D::execute(
        conn,
        "UPDATE districts SET name = $2 WHERE id = $1 AND deleted_at IS NULL",
        Args::new().id(district).text(name),
    )
    .await?;
    Ok(changed == 1)
}

/// Suspends a district (`Some`) or lifts its suspension (`None`); whether that changed
/// anything.
pub(crate) async fn set_suspended<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    suspended_at: Option<DateTime<Utc>>,
) -> StoreResult<bool> {
    let sql = if suspended_at.is_some() {
        "UPDATE districts SET suspended_at = $2 WHERE id = $1 AND deleted_at IS NULL \
         AND suspended_at IS NULL"
    } else {
        "UPDATE districts SET suspended_at = $2 WHERE id = $1 AND deleted_at IS NULL \
         AND suspended_at IS NOT NULL"
    };
    let changed = D::execute(conn, sql, Args::new().id(district).opt_time(suspended_at)).await?;
    Ok(changed == 1)
}

/// Sets a district's retention, in the caller's transaction; whether it exists.
pub(crate) async fn set_retention<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    retention: &Retention,
) -> StoreResult<bool> {
    let days = |d: Option<u32>| d.map(i64::from);
    let changed = D::execute(
        conn,
        "UPDATE districts SET retain_messages_days = $1, retain_replies_days = $2, \
         retain_audit_days = $3, retain_callbacks_days = $4 WHERE id = $5",
        Args::new()
            .opt_int(days(retention.messages_days))
            .opt_int(days(retention.replies_days))
            .opt_int(days(retention.audit_days))
            .opt_int(days(retention.callbacks_days))
            .id(district),
    )
    .await?;
    Ok(changed == 1)
}

/// The district's sourcedId in its roster, once an import has named it.
pub(crate) async fn sourced_id<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
) -> StoreResult<Option<String>> {
    D::fetch_one(
        conn,
        "SELECT sourced_id FROM districts WHERE id = $1",
        Args::new().id(district),
    )
    .await?
    .opt_text("sourced_id")
}

pub(crate) async fn set_sourced_id<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
    sourced_id: &str,
) -> StoreResult<()> {
    D::execute(
        conn,
        "UPDATE districts SET sourced_id = $1 WHERE id = $2",
        Args::new().text(sourced_id).id(district),
    )
    .await?;
    Ok(())
}

/// Locks the district's row until the transaction ends: what a district does one at a
/// time (checking and taking its hourly quota) waits here for the one before.
pub(crate) async fn lock<D: Dialect>(
    conn: &mut D::Connection,
    district: DistrictId,
) -> StoreResult<()> {
    D::execute(
        conn,
        "UPDATE districts SET name = name WHERE id = $1",
        Args::new().id(district),
    )
    .await?;
    Ok(())
}
