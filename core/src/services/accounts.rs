//! Staff accounts: signing in to the web admin with email and password, and signing
//! out. A web session is an expiring token of the staff member (the same kind an API
//! client holds), created and audited in one transaction, revoked on sign-out.

use std::sync::OnceLock;

use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::secret::{self, ApiToken};
use crate::{ApiTokenId, EmailAddress, Staff};

/// How long a web session lasts from sign-in.
pub const SESSION_HOURS: i64 = 12;

/// What a web session's token is called in the staff member's list of tokens.
pub const SESSION_NAME: &str = "web session";

/// A signed-in staff member and the session's token (its secret goes to the browser in a
/// cookie and nowhere else).
#[derive(Debug)]
pub struct Session {
    pub staff: Staff,
    pub token: ApiToken,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// A hash to check a password against when there is no account, so that a wrong email
/// takes as long to refuse as a wrong password.
fn stand_in_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| secret::hash_password("no account has this password").unwrap_or_default())
}

impl Services {
    /// Signs a staff member in with their email and password. Unknown, disabled and
    /// password-less accounts are refused exactly like a wrong password.
    pub async fn sign_in(&self, email: &str, password: &str) -> Result<Session, ServiceError> {
        let staff = match EmailAddress::parse(email) {
            Ok(email) => self.store.staff_by_email(&email).await?,
            Err(_) => None,
        };
        let hash = match &staff {
            Some(staff) => self.store.password_hash(staff.id).await?,
            None => None,
        };
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| stand_in_hash().to_owned());
        let candidate = password.to_owned();
        // argon2 takes tens of milliseconds of CPU: off the async workers.
        let matches =
            tokio::task::spawn_blocking(move || secret::verify_password(&hash, &candidate))
                .await
                .unwrap_or(false);
        let (Some(staff), true, true) = (staff, known, matches) else {
            return Err(Refusal::BadCredentials.into());
        };
        let at = self.clock.now();
        let expires_at = at + chrono::Duration::hours(SESSION_HOURS);
        let token = ApiToken::generate();
        let mut tx = self.store.begin().await?;
        tx.create_expiring_token(
            token.id,
            &staff,
            SESSION_NAME,
            &token.secret_hash(),
            at,
            expires_at,
        )
        .await?;
        tx.audit(
            staff.district_id,
            &Actor::staff(staff.id),
            "staff.sign_in",
            serde_json::json!({ "session": token.id }),
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(Session {
            staff,
            token,
            expires_at,
        })
    }

    /// Ends one of the caller's sessions.
    pub async fn sign_out(&self, caller: &Staff, session: ApiTokenId) -> Result<(), ServiceError> {
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if tx.revoke_api_token(session, caller.id, at).await? {
            tx.audit(
                caller.district_id,
                &Actor::staff(caller.id),
                "staff.sign_out",
                serde_json::json!({ "session": session }),
                at,
            )
            .await?;
            tx.commit().await?;
        }
        Ok(())
    }
}
