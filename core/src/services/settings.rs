//! District settings: quotas, schools' quiet hours, and single sign-on, each change with
//! its audit row.

use super::accounts::administrator;
use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::quiet_hours::QuietHours;
use crate::sealed::{self, Purpose};
use crate::sso::{ClientId, ClientSecret, InvalidSso, Issuer, SsoClient, SsoSettings};
use crate::store::StoreError;
use crate::{DistrictId, Staff};

impl Services {
    /// Sets a district's quotas (`None` removes a limit).
    pub async fn set_district_quotas(
        &self,
        by: &Actor,
        district: DistrictId,
        max_recipients_per_message: Option<i32>,
        max_messages_per_hour: Option<i32>,
    ) -> Result<(), ServiceError> {
        let mut tx = self.store.begin().await?;
        tx.set_district_quotas(district, max_recipients_per_message, max_messages_per_hour)
            .await?;
        let detail = serde_json::json!({
            "max_recipients_per_message": max_recipients_per_message,
            "max_messages_per_hour": max_messages_per_hour,
        });
        tx.audit(district, by, "district.quotas", detail, self.clock.now())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets the caller's district's default language (for guardians who have none) and
    /// its time zone (in which staff read and type times); district administrators.
    pub async fn set_district_locale(
        &self,
        caller: &Staff,
        default_language: &str,
        timezone: &str,
    ) -> Result<(), ServiceError> {
        administrator(caller)?;
        let language = default_language.trim();
        if !crate::words::is_language_tag(language) {
            return Err(Refusal::Invalid(format!(
                "the language {language:?} is not a language tag such as en, es or pt-BR"
            ))
            .into());
        }
        let timezone = timezone.trim();
        if timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err(Refusal::Invalid(format!(
                "the time zone {timezone:?} is not an IANA time zone such as America/Chicago"
            ))
            .into());
        }
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx
            .set_district_locale(caller.district_id, language, timezone)
            .await?
        {
            return Err(Refusal::NotFound.into());
        }
        let detail = serde_json::json!({ "default_language": language, "timezone": timezone });
        tx.audit(
            caller.district_id,
            &Actor::staff(caller.id),
            "district.locale",
            detail,
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets a school's time zone and quiet hours (`None` removes them); the school named
    /// by id or sourcedId.
    pub async fn set_school_quiet_hours(
        &self,
        by: &Actor,
        district: DistrictId,
        school: &str,
        quiet: Option<QuietHours>,
    ) -> Result<(), ServiceError> {
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx
            .set_school_quiet_hours(district, school, quiet, at)
            .await?
        {
            return Err(Refusal::NotFound.into());
        }
        let detail = serde_json::json!({
            "school": school,
            "quiet_hours": quiet.map(|q| serde_json::json!({"timezone": q.timezone.name(), "start_minute": q.start_minute, "end_minute": q.end_minute})),
        });
        tx.audit(district, by, "school.quiet_hours", detail, at)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// What an administrator sets for single sign-on.
#[derive(Debug, Clone)]
pub struct SsoChange<'a> {
    pub issuer: &'a str,
    pub client_id: &'a str,
    /// A new client secret; `None` (or blank) keeps the one already kept.
    pub client_secret: Option<&'a str>,
}

fn invalid(error: InvalidSso) -> ServiceError {
    Refusal::Invalid(error.0).into()
}

impl Services {
    /// The caller's district's single sign-on, if configured (district administrators):
    /// never the secret.
    pub async fn district_sso(&self, caller: &Staff) -> Result<Option<SsoSettings>, ServiceError> {
        administrator(caller)?;
        let Some(stored) = self.store.district_sso(caller.district_id).await? else {
            return Ok(None);
        };
        let readable = sealed::open(
            &self.link_keys,
            Purpose::SsoClientSecret,
            stored.district_id.into(),
            &stored.client_secret_sealed,
        )
        .is_ok();
        Ok(Some(SsoSettings {
            issuer: stored.issuer,
            client_id: stored.client_id,
            client_secret_set: true,
            client_secret_readable: readable,
            updated_at: stored.updated_at,
        }))
    }

    /// Configures single sign-on for the caller's district (district administrators): the
    /// client secret is sealed before it is stored, and the audit row names the provider
    /// and client, never the secret.
    #[tracing::instrument(skip_all, fields(district = %caller.district_id))]
    pub async fn set_district_sso(
        &self,
        caller: &Staff,
        change: &SsoChange<'_>,
    ) -> Result<SsoSettings, ServiceError> {
        administrator(caller)?;
        let issuer = Issuer::parse(change.issuer).map_err(invalid)?;
        let client_id = ClientId::parse(change.client_id).map_err(invalid)?;
        let district = caller.district_id;
        let new_secret = change
            .client_secret
            .filter(|s| !s.trim().is_empty())
            .map(ClientSecret::parse)
            .transpose()
            .map_err(invalid)?;
        let sealed = match &new_secret {
            Some(secret) => sealed::seal(
                &self.link_keys,
                Purpose::SsoClientSecret,
                district.into(),
                secret.reveal().as_bytes(),
            ),
            None => match self.store.district_sso(district).await? {
                Some(kept) => kept.client_secret_sealed,
                None => {
                    return Err(Refusal::Invalid(
                        "the client secret is needed to turn single sign-on on".into(),
                    )
                    .into())
                }
            },
        };
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        tx.set_district_sso(district, issuer.as_str(), client_id.as_str(), &sealed, at)
            .await?;
        let detail = serde_json::json!({
            "issuer": issuer.as_str(),
            "client_id": client_id.as_str(),
            "client_secret_changed": new_secret.is_some(),
        });
        tx.audit(
            district,
            &Actor::staff(caller.id),
            "district.sso",
            detail,
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(SsoSettings {
            issuer: issuer.as_str().to_owned(),
            client_id: client_id.as_str().to_owned(),
            client_secret_set: true,
            client_secret_readable: true,
            updated_at: at,
        })
    }

    /// Turns single sign-on off for the caller's district (district administrators); the
    /// sealed secret is deleted with it. Not found when it was not on.
    #[tracing::instrument(skip_all, fields(district = %caller.district_id))]
    pub async fn remove_district_sso(&self, caller: &Staff) -> Result<(), ServiceError> {
        administrator(caller)?;
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx.remove_district_sso(caller.district_id).await? {
            return Err(Refusal::NotFound.into());
        }
        tx.audit(
            caller.district_id,
            &Actor::staff(caller.id),
            "district.sso_removed",
            serde_json::json!({}),
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What signing in to `district` with single sign-on takes, its secret opened; `None`
    /// when the district has no single sign-on. A secret that no longer opens (its link
    /// key retired) is the store's corruption to report, never a refusal.
    pub async fn sso_client(
        &self,
        district: DistrictId,
    ) -> Result<Option<SsoClient>, ServiceError> {
        let Some(stored) = self.store.district_sso(district).await? else {
            return Ok(None);
        };
        let corrupt = |why: String| ServiceError::Store(StoreError::Corrupt(why));
        let secret = sealed::open(
            &self.link_keys,
            Purpose::SsoClientSecret,
            district.into(),
            &stored.client_secret_sealed,
        )
        .map_err(|e| {
            corrupt(format!(
                "district {district}'s single sign-on client secret: {e}"
            ))
        })?;
        let secret = String::from_utf8(secret)
            .ok()
            .and_then(|s| ClientSecret::parse(&s).ok())
            .ok_or_else(|| corrupt("a single sign-on client secret is not text".into()))?;
        Ok(Some(SsoClient {
            district_id: district,
            issuer: Issuer::parse(&stored.issuer).map_err(|e| corrupt(e.0))?,
            client_id: ClientId::parse(&stored.client_id).map_err(|e| corrupt(e.0))?,
            client_secret: secret,
        }))
    }
}
