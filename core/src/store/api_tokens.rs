//! The API tokens aggregate: `api_tokens` rows created, revoked and marked used. Their
//! secrets are kept only as hashes.

use chrono::{DateTime, Utc};

use super::dialect::{Args, Dialect};
use super::StoreResult;
use crate::{ApiTokenId, Staff, StaffId};

pub(crate) async fn insert<D: Dialect>(
    conn: &mut D::Connection,
    id: ApiTokenId,
    staff: &Staff,
    name: &str,
    secret_hash: &[u8],
    at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
) -> StoreResult<()> {
    D::execute(
        conn,
        "INSERT INTO api_tokens (id, district_id, staff_id, name, secret_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        Args::new()
            .id(id)
            .id(staff.district_id)
            .id(staff.id)
            .text(name)
            .bytes(secret_hash)
            .time(at)
            .opt_time(expires_at),
    )
    .await?;
    Ok(())
}

/// Revokes one of `staff`'s tokens; whether it was live.
pub(crate) async fn revoke<D: Dialect>(
    conn: &mut D::Connection,
    id: ApiTokenId,
    staff: StaffId,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let revoked = D::execute(
        conn,
        "UPDATE api_tokens SET revoked_at = $1 \
         WHERE id = $2 AND staff_id = $3 AND revoked_at IS NULL",
        Args::new().time(at).id(id).id(staff),
    )
    .await?;
    Ok(revoked == 1)
}

/// Revokes `staff`'s live tokens named `name` but `keep`; how many.
pub(crate) async fn revoke_named<D: Dialect>(
    conn: &mut D::Connection,
    staff: StaffId,
    name: &str,
    keep: Option<ApiTokenId>,
    at: DateTime<Utc>,
) -> StoreResult<u64> {
    D::execute(
        conn,
        "UPDATE api_tokens SET revoked_at = $1 \
         WHERE staff_id = $2 AND name = $3 AND revoked_at IS NULL AND ($4 IS NULL OR id <> $4)",
        Args::new().time(at).id(staff).text(name).opt_id(keep),
    )
    .await
}

/// Notes a token's use at `at`, unless it was noted within `granularity` before.
pub(crate) async fn mark_used<D: Dialect>(
    conn: &mut D::Connection,
    id: ApiTokenId,
    at: DateTime<Utc>,
    granularity: chrono::Duration,
) -> StoreResult<()> {
    D::execute(
        conn,
        "UPDATE api_tokens SET last_used_at = $1 \
         WHERE id = $2 AND (last_used_at IS NULL OR last_used_at <= $3)",
        Args::new().time(at).id(id).time(at - granularity),
    )
    .await?;
    Ok(())
}
