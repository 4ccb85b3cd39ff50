//! Districts of a multi-district install, managed by its operators: list them with the
//! size of their directories, create one with its first administrator (invited: they
//! choose their own password), rename one, suspend one (its staff cannot sign in or use
//! the API; what it already accepted is still delivered, and guardians' links still
//! work) and resume it. Each change is audited in the district it changes.

use super::accounts::{Invitation, INVITATION_DAYS, INVITATION_NAME};
use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::secret::ApiToken;
use crate::store::{District, DistrictSize, NewStaff, StoreError};
use crate::{DistrictId, EmailAddress, Role, Staff};

/// Who manages districts: a staff member with the operator flag, or the command line
/// (whoever runs `tidings` on the server operates it).
#[derive(Debug, Clone, Copy)]
pub enum Operator<'a> {
    Staff(&'a Staff),
    CommandLine,
}

impl Operator<'_> {
    /// The actor its changes are audited as, if it may manage districts.
    pub(crate) fn actor(&self) -> Result<Actor, Refusal> {
        match self {
            Operator::Staff(staff) if staff.operator => Ok(Actor::staff(staff.id)),
            Operator::Staff(_) => Err(Refusal::Forbidden),
            Operator::CommandLine => Ok(Actor::system("cli")),
        }
    }
}

/// A district as its operators see it.
#[derive(Debug, Clone)]
pub struct DistrictLine {
    pub district: District,
    pub counts: DistrictSize,
}

/// A new district to create.
#[derive(Debug, Clone, Copy)]
pub struct NewDistrict<'a> {
    pub name: &'a str,
    /// IANA time zone ("America/Chicago").
    pub timezone: &'a str,
    /// Its first district administrator.
    pub admin_email: &'a str,
    pub admin_name: &'a str,
}

/// A created district and the invitation of its first administrator (its token shown
/// once, to pass on).
#[derive(Debug)]
pub struct CreatedDistrict {
    pub district: District,
    pub invitation: Invitation,
}

/// The longest district name.
const MAX_NAME: usize = 200;

fn name_of(name: &str) -> Result<&str, Refusal> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(Refusal::Invalid(format!(
            "name: between 1 and {MAX_NAME} characters"
        )));
    }
    Ok(name)
}

impl Services {
    /// Every district of the install, oldest first, with its directory's size.
    pub async fn districts(
        &self,
        operator: Operator<'_>,
    ) -> Result<Vec<DistrictLine>, ServiceError> {
        operator.actor()?;
        let mut sizes = self.store.district_sizes().await?;
        Ok(self
            .store
            .districts()
            .await?
            .into_iter()
            .map(|district| {
                let counts = sizes.remove(&district.id).unwrap_or_default();
                DistrictLine { district, counts }
            })
            .collect())
    }

    /// Creates a district and invites its first district administrator, in one
    /// transaction.
    pub async fn create_district(
        &self,
        operator: Operator<'_>,
        new: NewDistrict<'_>,
    ) -> Result<CreatedDistrict, ServiceError> {
        let actor = operator.actor()?;
        let name = name_of(new.name)?;
        let timezone = new.timezone.trim();
        if timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(Refusal::Invalid(format!(
                "timezone: {timezone:?} is not an IANA time zone such as America/Chicago"
            ))
            .into());
        }
        let email = EmailAddress::parse(new.admin_email)
            .map_err(|e| Refusal::Invalid(format!("administrator's email: {e}")))?;
        let admin_name = new.admin_name.trim();
        let admin_name = if admin_name.is_empty() {
            "District administrator"
        } else {
            admin_name
        };
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        let district = tx.create_district(name, timezone, at).await?;
        let admin = NewStaff {
            district_id: district.id,
            email: email.clone(),
            display_name: admin_name.to_owned(),
            role: Role::DistrictAdmin,
            password_hash: None,
        };
        let staff = match tx.create_staff(&admin, at).await {
            Ok(staff) => staff,
            Err(StoreError::AlreadyExists(_)) => {
                return Err(Refusal::Conflict(format!("{email} already has an account")).into())
            }
            Err(error) => return Err(error.into()),
        };
        let token = ApiToken::generate();
        let expires_at = at + chrono::Duration::days(INVITATION_DAYS);
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
            "name": name,
            "timezone": timezone,
            "administrator": staff.id,
            "invitation": token.id,
        });
        tx.audit(district.id, &actor, "district.create", detail, at)
            .await?;
        tx.commit().await?;
        Ok(CreatedDistrict {
            district,
            invitation: Invitation {
                staff,
                token,
                expires_at,
                kind: super::accounts::LinkKind::Invitation,
            },
        })
    }

    /// Renames a district.
    pub async fn rename_district(
        &self,
        operator: Operator<'_>,
        district: DistrictId,
        name: &str,
    ) -> Result<(), ServiceError> {
        let actor = operator.actor()?;
        let name = name_of(name)?;
        let before = self
            .store
            .district(district)
            .await?
            .ok_or(Refusal::NotFound)?;
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx.rename_district(district, name).await? {
            return Err(Refusal::NotFound.into());
        }
        let detail = serde_json::json!({ "from": before.name, "to": name });
        tx.audit(district, &actor, "district.rename", detail, at)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Suspends a district (`suspend`) or resumes it. An operator cannot suspend their
    /// own district (they would lock themselves out). Doing it twice changes nothing.
    pub async fn suspend_district(
        &self,
        operator: Operator<'_>,
        district: DistrictId,
        suspend: bool,
    ) -> Result<(), ServiceError> {
        let actor = operator.actor()?;
        if let Operator::Staff(staff) = operator {
            if suspend && staff.district_id == district {
                return Err(Refusal::Conflict(
                    "you cannot suspend your own district; another operator or the command line can"
                        .into(),
                )
                .into());
            }
        }
        self.store
            .district(district)
            .await?
            .ok_or(Refusal::NotFound)?;
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        let changed = tx
            .set_district_suspended(district, suspend.then_some(at))
            .await?;
        if changed {
            let action = if suspend {
                "district.suspend"
            } else {
                "district.resume"
            };
            tx.audit(district, &actor, action, serde_json::json!({}), at)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Makes the staff member with `email` an operator of the install, or no longer one
    /// (from the command line only: operators are the server's people).
    pub async fn set_operator(&self, email: &str, operator: bool) -> Result<Staff, ServiceError> {
        let email = EmailAddress::parse(email).map_err(|e| Refusal::Invalid(e.to_string()))?;
        let staff = self
            .store
            .staff_by_email(&email)
            .await?
            .ok_or(Refusal::NotFound)?;
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if tx.set_operator(staff.id, operator).await? {
            let action = if operator {
                "staff.operator.grant"
            } else {
                "staff.operator.revoke"
            };
            let detail = serde_json::json!({ "staff_id": staff.id });
            tx.audit(staff.district_id, &Actor::system("cli"), action, detail, at)
                .await?;
        }
        tx.commit().await?;
        Ok(Staff { operator, ..staff })
    }
}
