//! Staff accounts: signing in to the web admin with email and password, or with the
//! district's single sign-on (the identity provider vouching for the email; no account is
//! ever created by it), and signing out. A web session is an expiring token of the staff
//! member (the same kind an API client holds), created and audited in one transaction,
//! revoked on sign-out.

use std::sync::OnceLock;

use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::secret::{self, ApiToken};
use crate::{ApiTokenId, DistrictId, EmailAddress, Staff};

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
        self.start_session(staff, "password").await
    }

    /// Signs in the staff member of `district` with `email`, whose identity provider (the
    /// district's single sign-on) vouched for that address. No account is created: an
    /// address without one, or a disabled account, is refused and says which.
    pub async fn sign_in_sso(
        &self,
        district: DistrictId,
        email: &str,
    ) -> Result<Session, ServiceError> {
        let email = EmailAddress::parse(email).map_err(|_| Refusal::NoAccount)?;
        let member = self
            .store
            .staff_member_by_email(district, &email)
            .await?
            .ok_or(Refusal::NoAccount)?;
        if member.disabled {
            return Err(Refusal::AccountDisabled.into());
        }
        self.start_session(member.staff, "sso").await
    }

    /// A new web session of `staff`, audited as a sign-in by `method`.
    async fn start_session(&self, staff: Staff, method: &str) -> Result<Session, ServiceError> {
        let district = self.store.district(staff.district_id).await?;
        if district.is_none_or(|d| d.suspended_at.is_some()) {
            return Err(Refusal::DistrictSuspended.into());
        }
        let at = self.clock.now();
        let expires_at = at + chrono::Duration::hours(SESSION_HOURS);
        let token = ApiToken::generate();
        let mut tx = self.store.begin().await?;
        tx.create_token(
            token.id,
            &staff,
            SESSION_NAME,
            &token.secret_hash(),
            at,
            Some(expires_at),
        )
        .await?;
        tx.audit(
            staff.district_id,
            &Actor::staff(staff.id),
            "staff.sign_in",
            serde_json::json!({ "session": token.id, "method": method }),
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

/// What an invitation's token is called; it is good for one password, for
/// [`INVITATION_DAYS`].
pub const INVITATION_NAME: &str = "invitation";

/// How long an invitation can be accepted.
pub const INVITATION_DAYS: i64 = 7;

/// Shortest password staff may set.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// What a password reset link's token is called; it is good for one password, for
/// [`RESET_HOURS`].
pub const RESET_NAME: &str = "password reset";

/// How long a password reset link works.
pub const RESET_HOURS: i64 = 24;

/// What a one-time password link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkKind {
    /// A new account's first password.
    Invitation,
    /// A new password chosen for someone who lost theirs; their sessions end when it is
    /// used.
    Reset,
}

/// A one-time link with which a staff member chooses a password (an invitation or a
/// password reset) and its token, shown once to the administrator, who passes it on.
#[derive(Debug)]
pub struct Invitation {
    pub staff: Staff,
    pub token: ApiToken,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub kind: LinkKind,
}

/// Someone to invite: their email, name, role and, for school administrators and
/// viewers, the schools they see.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct NewMember {
    pub email: String,
    pub display_name: String,
    pub role: crate::Role,
    #[serde(default)]
    pub schools: Vec<crate::SchoolId>,
}

/// What changes about a staff member; `None` leaves it as it is.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct MemberChange {
    pub role: Option<crate::Role>,
    pub disabled: Option<bool>,
    pub schools: Option<Vec<crate::SchoolId>>,
}

/// Whether a role sees schools by assignment (and so needs at least one).
fn assigned_to_schools(role: crate::Role) -> bool {
    matches!(role, crate::Role::SchoolAdmin | crate::Role::Viewer)
}

pub(super) fn administrator(caller: &Staff) -> Result<(), Refusal> {
    if caller.role == crate::Role::DistrictAdmin {
        Ok(())
    } else {
        Err(Refusal::Forbidden)
    }
}

fn strong_enough(password: &str) -> Result<(), Refusal> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Refusal::Invalid(format!(
            "a password needs at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    Ok(())
}

async fn hash(password: &str) -> Result<String, ServiceError> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || secret::hash_password(&password))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ServiceError::Store(crate::store::StoreError::Corrupt(
                "the password could not be hashed".into(),
            ))
        })
}

impl Services {
    /// Every staff member of the caller's district (district administrators).
    pub async fn staff_members(
        &self,
        caller: &Staff,
    ) -> Result<Vec<crate::store::StaffMember>, ServiceError> {
        administrator(caller)?;
        Ok(self.store.staff_members(caller.district_id).await?)
    }

    /// A page of the caller's district's staff by email, searched by name or email
    /// (district administrators).
    pub async fn staff_page(
        &self,
        caller: &Staff,
        page: &crate::store::PageRequest,
    ) -> Result<Vec<crate::store::StaffMember>, ServiceError> {
        administrator(caller)?;
        Ok(self.store.staff_page(caller.district_id, page).await?)
    }

    /// One staff member of the caller's district (district administrators).
    pub async fn staff_member(
        &self,
        caller: &Staff,
        staff: crate::StaffId,
    ) -> Result<crate::store::StaffMember, ServiceError> {
        administrator(caller)?;
        let only = crate::store::PageRequest::only(*staff.as_uuid());
        let found = self.store.staff_page(caller.district_id, &only).await?;
        Ok(found.into_iter().next().ok_or(Refusal::NotFound)?)
    }

    /// Invites someone to the caller's district with a role: their account exists at
    /// once (without a password), and the invitation's link lets them choose one.
    pub async fn invite(
        &self,
        caller: &Staff,
        new: &NewMember,
    ) -> Result<Invitation, ServiceError> {
        administrator(caller)?;
        let role = new.role;
        let email = EmailAddress::parse(&new.email).map_err(|e| Refusal::Invalid(e.to_string()))?;
        self.check_schools(caller.district_id, role, &new.schools)
            .await?;
        let display_name = new.display_name.trim();
        if display_name.is_empty() || display_name.chars().count() > 200 {
            return Err(Refusal::Invalid("a name of 1 to 200 characters is needed".into()).into());
        }
        let at = self.clock.now();
        let expires_at = at + chrono::Duration::days(INVITATION_DAYS);
        let token = ApiToken::generate();
        let mut tx = self.store.begin().await?;
        let staff = match tx
            .create_staff(
                &crate::store::NewStaff {
                    district_id: caller.district_id,
                    email: email.clone(),
                    display_name: display_name.to_owned(),
                    role,
                    password_hash: None,
                },
                at,
            )
            .await
        {
            Ok(staff) => staff,
            Err(crate::store::StoreError::AlreadyExists(_)) => {
                return Err(Refusal::Conflict(format!("{email} already has an account")).into())
            }
            Err(error) => return Err(error.into()),
        };
        if !new.schools.is_empty() {
            tx.set_staff_schools(caller.district_id, staff.id, &new.schools)
                .await?;
        }
        tx.create_token(
            token.id,
            &staff,
            INVITATION_NAME,
            &token.secret_hash(),
            at,
            Some(expires_at),
        )
        .await?;
        let detail = serde_json::json!({
            "staff_id": staff.id, "role": role, "schools": new.schools, "invitation": token.id,
        });
        tx.audit(
            caller.district_id,
            &Actor::staff(caller.id),
            "staff.invite",
            detail,
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(Invitation {
            staff,
            token,
            expires_at,
            kind: LinkKind::Invitation,
        })
    }

    /// Refuses schools that a role does not take, a school administrator or viewer
    /// without any, and schools not of the district.
    async fn check_schools(
        &self,
        district: DistrictId,
        role: crate::Role,
        schools: &[crate::SchoolId],
    ) -> Result<(), ServiceError> {
        if assigned_to_schools(role) && schools.is_empty() {
            return Err(Refusal::Invalid(format!(
                "a {} sees the schools they are assigned to: choose at least one",
                role.as_str().replace('_', " ")
            ))
            .into());
        }
        if !assigned_to_schools(role) && !schools.is_empty() {
            return Err(Refusal::Invalid(
                "only school administrators and viewers are assigned to schools".into(),
            )
            .into());
        }
        let scope = crate::store::Scope::District(district);
        for school in schools {
            let page = crate::store::PageRequest::only(*school.as_uuid());
            if self.store.schools(&scope, &page).await?.is_empty() {
                return Err(Refusal::Invalid(format!("no school {school} in the district")).into());
            }
        }
        Ok(())
    }

    /// A one-time link with which a staff member of the caller's district chooses a new
    /// password (district administrators). Earlier reset links of theirs stop working;
    /// when it is used, their sessions end.
    pub async fn password_reset(
        &self,
        caller: &Staff,
        staff: crate::StaffId,
    ) -> Result<Invitation, ServiceError> {
        administrator(caller)?;
        let member = self.staff_member(caller, staff).await?;
        if member.disabled {
            return Err(Refusal::Conflict(
                "the account is disabled: enable it before resetting its password".into(),
            )
            .into());
        }
        let at = self.clock.now();
        let expires_at = at + chrono::Duration::hours(RESET_HOURS);
        let token = ApiToken::generate();
        let mut tx = self.store.begin().await?;
        tx.revoke_tokens_named(staff, RESET_NAME, None, at).await?;
        tx.create_token(
            token.id,
            &member.staff,
            RESET_NAME,
            &token.secret_hash(),
            at,
            Some(expires_at),
        )
        .await?;
        tx.audit(
            caller.district_id,
            &Actor::staff(caller.id),
            "staff.password_reset",
            serde_json::json!({ "staff_id": staff, "link": token.id }),
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(Invitation {
            staff: member.staff,
            token,
            expires_at,
            kind: LinkKind::Reset,
        })
    }

    /// The staff member a one-time password link (an invitation or a reset) is for, and
    /// which it is, if it can still be used.
    pub async fn invitation(&self, token: &str) -> Result<(Staff, LinkKind), ServiceError> {
        let token = ApiToken::parse(token).map_err(|_| Refusal::NotFound)?;
        let record = self
            .store
            .api_token(token.id)
            .await?
            .ok_or(Refusal::NotFound)?;
        let kind = match record.name.as_str() {
            INVITATION_NAME => LinkKind::Invitation,
            RESET_NAME => LinkKind::Reset,
            _ => return Err(Refusal::NotFound.into()),
        };
        let live = record.revoked_at.is_none()
            && record.expires_at.is_some_and(|at| at > self.clock.now())
            && token.matches(&record.secret_hash);
        if !live {
            return Err(Refusal::NotFound.into());
        }
        Ok((record.staff, kind))
    }

    /// Uses a one-time password link: sets the password, uses the link up (and any other
    /// of theirs), ends their sessions after a reset, and signs in.
    pub async fn accept_invitation(
        &self,
        token: &str,
        password: &str,
    ) -> Result<Session, ServiceError> {
        let (staff, kind) = self.invitation(token).await?;
        strong_enough(password)?;
        let hashed = hash(password).await?;
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        tx.set_password_hash(staff.id, &hashed, at).await?;
        for name in [INVITATION_NAME, RESET_NAME] {
            tx.revoke_tokens_named(staff.id, name, None, at).await?;
        }
        let (action, detail) = match kind {
            LinkKind::Invitation => ("staff.accept_invitation", serde_json::json!({})),
            LinkKind::Reset => {
                let ended = tx
                    .revoke_tokens_named(staff.id, SESSION_NAME, None, at)
                    .await?;
                (
                    "staff.reset_password",
                    serde_json::json!({ "sessions_ended": ended }),
                )
            }
        };
        tx.audit(
            staff.district_id,
            &Actor::staff(staff.id),
            action,
            detail,
            at,
        )
        .await?;
        tx.commit().await?;
        let email = staff.email.to_string();
        self.sign_in(&email, password).await
    }

    /// Changes the caller's password, given the current one; their other web sessions
    /// end.
    pub async fn change_password(
        &self,
        caller: &Staff,
        session: ApiTokenId,
        current: &str,
        new: &str,
    ) -> Result<(), ServiceError> {
        let stored = self
            .store
            .password_hash(caller.id)
            .await?
            .unwrap_or_default();
        let candidate = current.to_owned();
        let matches =
            tokio::task::spawn_blocking(move || secret::verify_password(&stored, &candidate))
                .await
                .unwrap_or(false);
        if !matches {
            return Err(Refusal::BadCredentials.into());
        }
        strong_enough(new)?;
        let hashed = hash(new).await?;
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        tx.set_password_hash(caller.id, &hashed, at).await?;
        let ended = tx
            .revoke_tokens_named(caller.id, SESSION_NAME, Some(session), at)
            .await?;
        tx.audit(
            caller.district_id,
            &Actor::staff(caller.id),
            "staff.change_password",
            serde_json::json!({ "other_sessions_ended": ended }),
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets a staff member's role or schools, or disables or enables them (district
    /// administrators; not themselves).
    pub async fn change_staff(
        &self,
        caller: &Staff,
        staff: crate::StaffId,
        change: &MemberChange,
    ) -> Result<(), ServiceError> {
        administrator(caller)?;
        let MemberChange {
            role,
            disabled,
            schools,
        } = change.clone();
        if staff == caller.id {
            return Err(Refusal::Conflict(
                "you cannot change your own role or disable yourself; ask another administrator"
                    .into(),
            )
            .into());
        }
        let member = self.staff_member(caller, staff).await?;
        let new_role = role.unwrap_or(member.staff.role);
        // The schools they keep: those given, their own if the role still takes schools,
        // none for a role that does not.
        let schools = match schools {
            Some(schools) => Some(schools),
            None if assigned_to_schools(new_role) => None,
            None if member.schools.is_empty() => None,
            None => Some(Vec::new()),
        };
        let kept = schools.as_deref().unwrap_or(&member.schools);
        self.check_schools(caller.district_id, new_role, kept)
            .await?;
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if let Some(role) = role {
            if !tx
                .set_staff_role(caller.district_id, staff, role, at)
                .await?
            {
                return Err(Refusal::NotFound.into());
            }
        }
        if let Some(schools) = &schools {
            tx.set_staff_schools(caller.district_id, staff, schools)
                .await?;
        }
        if let Some(disabled) = disabled {
            if !tx
                .set_staff_disabled(caller.district_id, staff, disabled, at)
                .await?
            {
                return Err(Refusal::NotFound.into());
            }
        }
        let detail = serde_json::json!({
            "staff_id": staff, "role": role, "disabled": disabled, "schools": schools,
        });
        tx.audit(
            caller.district_id,
            &Actor::staff(caller.id),
            "staff.change",
            detail,
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_needs_twelve_characters() {
        assert!(matches!(
            strong_enough("eleven char"),
            Err(Refusal::Invalid(_))
        ));
        assert!(strong_enough("twelve chars").is_ok());
        assert!(
            strong_enough("ñandú ñandú ñ").is_ok(),
            "characters, not bytes"
        );
        assert!(matches!(
            strong_enough("ñandúñandú"),
            Err(Refusal::Invalid(_))
        ));
    }
}
