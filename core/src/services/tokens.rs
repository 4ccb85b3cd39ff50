//! API tokens: each staff member lists, creates and revokes their own; a district admin
//! sees and revokes every token of the district. A token's secret is shown once, when it
//! is created, and never stored (only its SHA-256). Every creation and revocation is
//! audited in the same transaction. Web sessions and invitations are tokens too, but not
//! API tokens: they are neither listed nor made here.

use chrono::{DateTime, Utc};

use super::accounts::{INVITATION_NAME, SESSION_NAME};
use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::secret::ApiToken;
use crate::store::{ApiTokenRecord, ApiTokenView};
use crate::{ApiTokenId, Role, Staff};

/// The longest name a token may have.
const MAX_NAME: usize = 100;

/// What is not an API token, by name.
const NOT_API_TOKENS: [&str; 2] = [SESSION_NAME, INVITATION_NAME];

/// A new token: its secret, to hand over once, and how it is listed.
#[derive(Debug)]
pub struct CreatedToken {
    pub token: ApiToken,
    pub view: ApiTokenView,
}

impl Services {
    /// The tokens `caller` may see: the whole district's for a district admin, their own
    /// for everyone else.
    pub async fn api_tokens(&self, caller: &Staff) -> Result<Vec<ApiTokenView>, ServiceError> {
        let owner = (caller.role != Role::DistrictAdmin).then_some(caller.id);
        Ok(self
            .store
            .api_tokens(caller.district_id, owner, &NOT_API_TOKENS)
            .await?)
    }

    /// Every API token of `district`, for the command line.
    pub async fn district_api_tokens(
        &self,
        district: crate::DistrictId,
    ) -> Result<Vec<ApiTokenView>, ServiceError> {
        Ok(self
            .store
            .api_tokens(district, None, &NOT_API_TOKENS)
            .await?)
    }

    /// Creates an API token of `owner` named `name`, good until `expires_at` (for ever
    /// without one), on behalf of `actor`: the owner themselves, or the command line.
    pub async fn create_api_token(
        &self,
        actor: &Actor,
        owner: &Staff,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<CreatedToken, ServiceError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME {
            return Err(
                Refusal::Invalid(format!("name: between 1 and {MAX_NAME} characters")).into(),
            );
        }
        if NOT_API_TOKENS.contains(&name) {
            return Err(Refusal::Invalid(format!("name: {name:?} is reserved")).into());
        }
        let at = self.clock.now();
        if expires_at.is_some_and(|expires| expires <= at) {
            return Err(Refusal::Invalid("expires_at: must be in the future".into()).into());
        }
        let token = ApiToken::generate();
        let mut tx = self.store.begin().await?;
        tx.create_token(token.id, owner, name, &token.secret_hash(), at, expires_at)
            .await?;
        tx.audit(
            owner.district_id,
            actor,
            "api_token.create",
            serde_json::json!({
                "token_id": token.id,
                "owner": owner.id,
                "name": name,
                "expires_at": expires_at,
            }),
            at,
        )
        .await?;
        tx.commit().await?;
        let view = ApiTokenView {
            id: token.id,
            name: name.to_owned(),
            owner_id: owner.id,
            owner_email: owner.email.to_string(),
            created_at: at,
            last_used_at: None,
            expires_at,
            revoked_at: None,
        };
        Ok(CreatedToken { token, view })
    }

    /// Revokes a token `caller` may see (see [`Services::api_tokens`]); it stops working at
    /// once. Revoking one already revoked changes nothing.
    pub async fn revoke_api_token(
        &self,
        caller: &Staff,
        id: ApiTokenId,
    ) -> Result<(), ServiceError> {
        let token = self.api_token_of(caller.district_id, id).await?;
        if caller.role != Role::DistrictAdmin && token.staff.id != caller.id {
            return Err(Refusal::NotFound.into());
        }
        self.revoke(&Actor::staff(caller.id), &token).await
    }

    /// Revokes any API token of `district` on behalf of the command line.
    pub async fn revoke_api_token_as_operator(
        &self,
        district: crate::DistrictId,
        id: ApiTokenId,
    ) -> Result<(), ServiceError> {
        let token = self.api_token_of(district, id).await?;
        self.revoke(&Actor::system("cli"), &token).await
    }

    /// The API token `id` of `district` (a session or an invitation is not one). A
    /// disabled owner's tokens have stopped already: not found.
    async fn api_token_of(
        &self,
        district: crate::DistrictId,
        id: ApiTokenId,
    ) -> Result<ApiTokenRecord, ServiceError> {
        match self.store.api_token(id).await? {
            Some(token)
                if token.staff.district_id == district
                    && !NOT_API_TOKENS.contains(&token.name.as_str()) =>
            {
                Ok(token)
            }
            _ => Err(Refusal::NotFound.into()),
        }
    }

    async fn revoke(&self, actor: &Actor, token: &ApiTokenRecord) -> Result<(), ServiceError> {
        if token.revoked_at.is_some() {
            return Ok(());
        }
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if tx.revoke_api_token(token.id, token.staff.id, at).await? {
            tx.audit(
                token.staff.district_id,
                actor,
                "api_token.revoke",
                serde_json::json!({
                    "token_id": token.id,
                    "owner": token.staff.id,
                    "name": token.name,
                }),
                at,
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
