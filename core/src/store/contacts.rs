//! A guardian's ways to be reached and what they asked not to get: `contact_points`
//! (addresses staff entered, devices registered, addresses providers retired) and
//! `opt_outs` (by staff, the guardian, a complaint or a carrier STOP, and their revoking).
//! The roster's bulk sync of contact points is the roster's (`roster.rs`), a guardian's
//! erasure is `guardian_data.rs`.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::dialect::{Args, Dialect};
use super::directory::{contact, opt_out, CONTACT_COLUMNS, OPT_OUT_COLUMNS};
use super::{ContactPointView, OptOutView, StoreResult};
use crate::{Channel, PushPlatform};

/// Adds a contact point staff entered (or reactivates the same one).
pub(crate) async fn add_contact_point<D: Dialect>(
    conn: &mut D::Connection,
    district: Uuid,
    guardian: Uuid,
    kind: Channel,
    address: &str,
    at: DateTime<Utc>,
) -> StoreResult<ContactPointView> {
    let sql = format!(
        "INSERT INTO contact_points (id, district_id, guardian_id, kind, address, source, verified, \
         created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'staff', false, $6, $6) \
         ON CONFLICT (guardian_id, kind, address) DO UPDATE SET active = true, inactive_reason = NULL, \
         updated_at = excluded.updated_at RETURNING {CONTACT_COLUMNS}"
    );
    let args = Args::new()
        .id(Uuid::now_v7())
        .id(district)
        .id(guardian)
        .text(kind.as_str())
        .text(address)
        .time(at);
    contact(&D::fetch_one(conn, &sql, args).await?)
}

/// Retires an address a provider said is dead; returns how many contact points it was.
pub(crate) async fn retire_address<D: Dialect>(
    conn: &mut D::Connection,
    guardian: Uuid,
    kind: Channel,
    address: &str,
    reason: &str,
    at: DateTime<Utc>,
) -> StoreResult<u64> {
    D::execute(
        conn,
        "UPDATE contact_points SET active = false, inactive_reason = $1, updated_at = $2 \
         WHERE guardian_id = $3 AND kind = $4 AND address = $5 AND active",
        Args::new()
            .text(reason)
            .time(at)
            .id(guardian)
            .text(kind.as_str())
            .text(address),
    )
    .await
}

/// Registers (or reactivates) a guardian's device for push.
pub(crate) async fn register_device<D: Dialect>(
    conn: &mut D::Connection,
    district: Uuid,
    guardian: Uuid,
    platform: PushPlatform,
    token: &str,
    at: DateTime<Utc>,
) -> StoreResult<ContactPointView> {
    let sql = format!(
        "INSERT INTO contact_points (id, district_id, guardian_id, kind, address, push_platform, \
         source, verified, created_at, updated_at) VALUES ($1, $2, $3, 'push', $4, $5, 'app', true, $6, $6) \
         ON CONFLICT (guardian_id, kind, address) DO UPDATE SET active = true, inactive_reason = NULL, \
         push_platform = excluded.push_platform, updated_at = excluded.updated_at \
         RETURNING {CONTACT_COLUMNS}"
    );
    let args = Args::new()
        .id(Uuid::now_v7())
        .id(district)
        .id(guardian)
        .text(token)
        .text(platform.as_str())
        .time(at);
    contact(&D::fetch_one(conn, &sql, args).await?)
}

/// Turns a guardian's contact point on or off (staff's edit).
pub(crate) async fn set_contact_point_active<D: Dialect>(
    conn: &mut D::Connection,
    guardian: Uuid,
    contact_point: Uuid,
    active: bool,
    at: DateTime<Utc>,
) -> StoreResult<Option<ContactPointView>> {
    let sql = format!(
        "UPDATE contact_points SET active = $1, \
         inactive_reason = CASE WHEN $1 THEN NULL ELSE 'deactivated by staff' END, updated_at = $2 \
         WHERE id = $3 AND guardian_id = $4 RETURNING {CONTACT_COLUMNS}"
    );
    let args = Args::new()
        .flag(active)
        .time(at)
        .id(contact_point)
        .id(guardian);
    D::fetch_optional(conn, &sql, args)
        .await?
        .as_ref()
        .map(contact)
        .transpose()
}

/// Records an opt-out (once per guardian, channel and source) and returns it.
pub(crate) async fn add_opt_out<D: Dialect>(
    conn: &mut D::Connection,
    district: Uuid,
    guardian: Uuid,
    channel: Channel,
    source: &str,
    at: DateTime<Utc>,
) -> StoreResult<OptOutView> {
    D::execute(
        conn,
        "INSERT INTO opt_outs (id, district_id, guardian_id, channel, source, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (guardian_id, channel, source) WHERE revoked_at IS NULL DO NOTHING",
        Args::new()
            .id(Uuid::now_v7())
            .id(district)
            .id(guardian)
            .text(channel.as_str())
            .text(source)
            .time(at),
    )
    .await?;
    let sql = format!(
        "SELECT {OPT_OUT_COLUMNS} FROM opt_outs \
         WHERE guardian_id = $1 AND channel = $2 AND source = $3 AND revoked_at IS NULL"
    );
    let args = Args::new().id(guardian).text(channel.as_str()).text(source);
    opt_out(&D::fetch_one(conn, &sql, args).await?)
}

/// Revokes an opt-out that is not a carrier STOP; returns the opt-out as it was.
pub(crate) async fn revoke_opt_out<D: Dialect>(
    conn: &mut D::Connection,
    guardian: Uuid,
    id: Uuid,
    at: DateTime<Utc>,
) -> StoreResult<Option<OptOutView>> {
    let sql = format!(
        "SELECT {OPT_OUT_COLUMNS} FROM opt_outs WHERE id = $1 AND guardian_id = $2 AND revoked_at IS NULL"
    );
    let row = D::fetch_optional(conn, &sql, Args::new().id(id).id(guardian)).await?;
    let Some(found) = row.as_ref().map(opt_out).transpose()? else {
        return Ok(None);
    };
    if found.source != "carrier" {
        D::execute(
            conn,
            "UPDATE opt_outs SET revoked_at = $1 WHERE id = $2",
            Args::new().time(at).id(id),
        )
        .await?;
    }
    Ok(Some(found))
}

/// Undoes a guardian's carrier opt-out on `channel` (their START: the one way a carrier
/// STOP is revoked, as [`revoke_opt_out`] refuses to); returns how many it revoked.
pub(crate) async fn resubscribe<D: Dialect>(
    conn: &mut D::Connection,
    guardian: Uuid,
    channel: Channel,
    at: DateTime<Utc>,
) -> StoreResult<u64> {
    D::execute(
        conn,
        "UPDATE opt_outs SET revoked_at = $1 WHERE guardian_id = $2 AND channel = $3 \
         AND source = 'carrier' AND revoked_at IS NULL",
        Args::new().time(at).id(guardian).text(channel.as_str()),
    )
    .await
}
