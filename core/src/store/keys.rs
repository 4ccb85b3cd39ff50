//! The installation's keys, as every process of it must share them: the fingerprints
//! of the link-signing keys (`link_keys`) and of the other keys kept per install, such as
//! the Web Push key (`install_keys`). Only fingerprints are kept, never a key.

use chrono::{DateTime, Utc};

use super::dialect::{Args, Columns, Dialect};
use super::StoreResult;

/// Records link-key fingerprints not seen before; returns the key ids whose recorded
/// fingerprint differs (another process signs with a different key of that id).
pub(crate) async fn check_link_keys<D: Dialect>(
    conn: &mut D::Connection,
    keys: &[(u8, String)],
    at: DateTime<Utc>,
) -> StoreResult<Vec<u8>> {
    let mut differing = Vec::new();
    for (id, fingerprint) in keys {
        D::execute(
            &mut *conn,
            "INSERT INTO link_keys (key_id, fingerprint, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key_id) DO NOTHING",
            Args::new().int(*id).text(fingerprint).time(at),
        )
        .await?;
        let recorded = D::fetch_one(
            &mut *conn,
            "SELECT fingerprint FROM link_keys WHERE key_id = $1",
            Args::new().int(*id),
        )
        .await?
        .text("fingerprint")?;
        if &recorded != fingerprint {
            differing.push(*id);
        }
    }
    Ok(differing)
}

/// Records the fingerprint of install key `name` if none is yet; returns the one
/// recorded when it differs (another process of the install uses another key).
pub(crate) async fn check_install_key<D: Dialect>(
    conn: &mut D::Connection,
    name: &str,
    fingerprint: &str,
    at: DateTime<Utc>,
) -> StoreResult<Option<String>> {
    D::execute(
        &mut *conn,
        "INSERT INTO install_keys (name, fingerprint, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (name) DO NOTHING",
        Args::new().text(name).text(fingerprint).time(at),
    )
    .await?;
    let recorded = D::fetch_one(
        &mut *conn,
        "SELECT fingerprint FROM install_keys WHERE name = $1",
        Args::new().text(name),
    )
    .await?
    .text("fingerprint")?;
    Ok((recorded != fingerprint).then_some(recorded))
}
