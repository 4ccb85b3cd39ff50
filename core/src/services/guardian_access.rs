//! Guardians' own access, for the guardian API and the guardian app alike: a one-time code
//! sent to a phone number or email address on file, traded for a session that sees the
//! guardians that address belongs to (usually one; a shared family phone, several) for as
//! long as staff keep the address in use; signing out; the devices a session registers for
//! push. Sending the code is the front end's (after answering: how long a send takes must
//! not tell who is on file).

use chrono::{DateTime, Duration, Utc};

use super::{Refusal, ServiceError, Services};
use crate::secret::{code_matches, generate_code, hash_code, GuardianToken};
use crate::store::guardian::GuardianSession;
use crate::{Channel, DistrictId, GuardianId, PushPlatform};

/// How long a sign-in code works.
pub const CODE_MINUTES: i64 = 10;
/// Wrong tries before a code is used up.
pub const CODE_ATTEMPTS: u32 = 5;
/// Codes sent to one address per hour.
pub const CODES_PER_HOUR: u32 = 5;
/// How long an app session lasts.
pub const SESSION_DAYS: i64 = 90;

/// A code to send, kept (hashed) under `sign_in`.
#[derive(Debug)]
pub struct IssuedCode {
    pub sign_in: uuid::Uuid,
    /// The code itself: sent to the address, never stored.
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

/// A session just opened: its token (shown once) and whom it sees.
#[derive(Debug)]
pub struct OpenedSession {
    pub token: GuardianToken,
    pub expires_at: DateTime<Utc>,
    pub guardians: Vec<(DistrictId, GuardianId)>,
}

/// A request's live session and the guardians it sees now.
#[derive(Debug, Clone)]
pub struct GuardianAccess {
    pub session: uuid::Uuid,
    pub guardians: Vec<(DistrictId, GuardianId)>,
}

impl GuardianAccess {
    /// The guardians the session sees.
    pub fn guardian_ids(&self) -> Vec<GuardianId> {
        self.guardians.iter().map(|(_, g)| *g).collect()
    }
}

impl Services {
    /// Keeps a new code for `address` — for unknown addresses too, so that the answer
    /// (and when it is "too many") is the same either way. Refused as
    /// [`Refusal::TooManyCodes`] past [`CODES_PER_HOUR`] for the address.
    pub async fn issue_sign_in_code(
        &self,
        channel: Channel,
        address: &str,
    ) -> Result<IssuedCode, ServiceError> {
        let at = self.clock.now();
        let code = generate_code();
        let expires_at = at + Duration::minutes(CODE_MINUTES);
        let kept = self
            .store
            .create_sign_in(
                channel,
                address,
                &hash_code(&code),
                expires_at,
                CODES_PER_HOUR,
                at,
            )
            .await?;
        let sign_in = kept.ok_or(Refusal::TooManyCodes)?;
        Ok(IssuedCode {
            sign_in,
            code,
            expires_at,
        })
    }

    /// Trades the code sent to `address` for a session; every wrong try counts against
    /// the code ([`CODE_ATTEMPTS`]). Refused as [`Refusal::InvalidCode`] whatever is
    /// wrong: no open code, a wrong one, one used up, or an address no guardian has.
    pub async fn redeem_sign_in_code(
        &self,
        channel: Channel,
        address: &str,
        code: &str,
    ) -> Result<OpenedSession, ServiceError> {
        let at = self.clock.now();
        let open = self
            .store
            .open_sign_in(channel, address, at)
            .await?
            .ok_or(Refusal::InvalidCode)?;
        let right = code_matches(&open.code_hash, code);
        if !self
            .store
            .sign_in_attempt(open.id, right, CODE_ATTEMPTS, at)
            .await?
        {
            return Err(Refusal::InvalidCode.into());
        }
        let guardians = self.store.guardians_at(channel, address).await?;
        if guardians.is_empty() {
            return Err(Refusal::InvalidCode.into());
        }
        let token = GuardianToken::generate();
        let expires_at = at + Duration::days(SESSION_DAYS);
        let session = GuardianSession {
            id: token.session,
            channel,
            address: address.to_owned(),
            secret_hash: token.secret_hash(),
            expires_at,
            revoked_at: None,
        };
        self.store.create_guardian_session(&session, at).await?;
        Ok(OpenedSession {
            token,
            expires_at,
            guardians,
        })
    }

    /// The session `token` names, if it is genuine, live and its address still in use
    /// (a number or address staff took out of use signs its sessions out); else
    /// [`Refusal::BadCredentials`].
    pub async fn guardian_access(
        &self,
        token: &GuardianToken,
    ) -> Result<GuardianAccess, ServiceError> {
        let session = self
            .store
            .guardian_session(token.session)
            .await?
            .ok_or(Refusal::BadCredentials)?;
        let live = session.revoked_at.is_none() && session.expires_at > self.clock.now();
        if !token.matches(&session.secret_hash) || !live {
            return Err(Refusal::BadCredentials.into());
        }
        let guardians = self
            .store
            .guardians_at(session.channel, &session.address)
            .await?;
        if guardians.is_empty() {
            return Err(Refusal::BadCredentials.into());
        }
        Ok(GuardianAccess {
            session: session.id,
            guardians,
        })
    }

    /// Signs a session out.
    pub async fn end_guardian_session(&self, access: &GuardianAccess) -> Result<(), ServiceError> {
        let at = self.clock.now();
        self.store.end_guardian_session(access.session, at).await?;
        Ok(())
    }

    /// Registers (again, if it was) a device for push for every guardian the session
    /// sees, for all of them or none.
    pub async fn register_guardian_device(
        &self,
        access: &GuardianAccess,
        platform: PushPlatform,
        token: &str,
    ) -> Result<(), ServiceError> {
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        for &(district, guardian) in &access.guardians {
            tx.register_device(district, guardian, platform, token, at)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stops pushing to a device (the app signed out of push, or was removed), for every
    /// guardian of the session at once.
    pub async fn unregister_guardian_device(
        &self,
        access: &GuardianAccess,
        token: &str,
    ) -> Result<(), ServiceError> {
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        for &(_, guardian) in &access.guardians {
            tx.retire_address(guardian, Channel::Push, token, "unregistered", at)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
