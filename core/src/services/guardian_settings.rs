//! What a guardian sets alone from the app: the language their messages come in, the
//! channels that carry what is not an emergency (an opt-out of source `guardian`; an
//! emergency still goes by DESIGN §6: everywhere but an SMS number that replied STOP),
//! their own quiet hours, and the devices signed in as them. Each change is one
//! transaction with its audit row, the app session as the actor.

use super::guardian_access::GuardianAccess;
use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::quiet_hours::QuietHours;
use crate::store::guardian::{GuardianPreferences, SessionView};
use crate::{Channel, GuardianId};

/// A guardian's choices, as the settings form sends them whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    /// A BCP 47 tag (`es`, `vi`, `zh-Hant`); none: the district's language.
    pub language: Option<String>,
    /// Quiet hours, minutes after midnight (start, end) in the school's time zone; none:
    /// the school's.
    pub quiet: Option<(u16, u16)>,
    /// Channels the guardian does not want what is not an emergency on.
    pub channels_off: Vec<Channel>,
}

impl Preferences {
    fn check(&self) -> Result<(), Refusal> {
        if let Some(tag) = &self.language {
            if !crate::words::is_language_tag(tag) {
                return Err(Refusal::Invalid(format!(
                    "language: {tag:?} is not a language tag such as es or zh-Hant"
                )));
            }
        }
        if let Some((start, end)) = self.quiet {
            QuietHours::check_window(start, end)
                .map_err(|e| Refusal::Invalid(format!("quiet hours: {e}")))?;
        }
        Ok(())
    }
}

/// The actor of a guardian's own change: the app session.
fn actor(access: &GuardianAccess) -> Actor {
    Actor::guardian(format!("app:{}", access.session))
}

impl Services {
    /// What each guardian of the session has set, and what it applies to.
    pub async fn guardian_preferences(
        &self,
        access: &GuardianAccess,
    ) -> Result<Vec<GuardianPreferences>, ServiceError> {
        Ok(self
            .store
            .guardian_preferences(&access.guardian_ids())
            .await?)
    }

    /// Sets a guardian's language, quiet hours and channels, all at once, with an audit
    /// row `guardian.preferences` naming what changed. A channel turned back on revokes
    /// only the guardian's own opt-out: one by staff, a complaint or a carrier STOP stays.
    pub async fn set_guardian_preferences(
        &self,
        access: &GuardianAccess,
        guardian: GuardianId,
        preferences: &Preferences,
    ) -> Result<(), ServiceError> {
        let Some(&(district, _)) = access.guardians.iter().find(|(_, g)| *g == guardian) else {
            return Err(Refusal::NotFound.into());
        };
        preferences.check()?;
        let before = self
            .store
            .guardian_preferences(&[guardian])
            .await?
            .pop()
            .ok_or(Refusal::NotFound)?;
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx
            .set_guardian_preferences(
                guardian,
                preferences.language.as_deref(),
                preferences.quiet,
                at,
            )
            .await?
        {
            return Err(Refusal::NotFound.into());
        }
        let mut turned_off = Vec::new();
        let mut turned_on = Vec::new();
        for channel in Channel::ALL.iter().copied() {
            let own = before
                .opt_outs
                .iter()
                .find(|o| o.channel == channel && o.source == "guardian");
            let off = preferences.channels_off.contains(&channel);
            match (off, own) {
                (true, None) => {
                    tx.add_opt_out(district, guardian, channel, "guardian", at)
                        .await?;
                    turned_off.push(channel);
                }
                (false, Some(opt_out)) => {
                    tx.revoke_opt_out(guardian, opt_out.id, at).await?;
                    turned_on.push(channel);
                }
                _ => {}
            }
        }
        let detail = serde_json::json!({
            "guardian_id": guardian,
            "language": preferences.language,
            "quiet_hours": preferences.quiet.map(|(s, e)| [s, e]),
            "channels_off": turned_off,
            "channels_on": turned_on,
        });
        tx.audit(district, &actor(access), "guardian.preferences", detail, at)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The devices signed in as the session's phone number or email address (this one
    /// among them).
    pub async fn guardian_sessions(
        &self,
        access: &GuardianAccess,
    ) -> Result<Vec<SessionView>, ServiceError> {
        let at = self.clock.now();
        Ok(self.store.sibling_sessions(access.session, at).await?)
    }

    /// Signs another device of the same address out, with an audit row
    /// `guardian.sign_out` in each district the session sees.
    pub async fn end_other_guardian_session(
        &self,
        access: &GuardianAccess,
        other: uuid::Uuid,
    ) -> Result<(), ServiceError> {
        let at = self.clock.now();
        let mut tx = self.store.begin().await?;
        if !tx.end_sibling_session(access.session, other, at).await? {
            return Err(Refusal::NotFound.into());
        }
        let mut districts: Vec<_> = access.guardians.iter().map(|(d, _)| *d).collect();
        districts.dedup();
        for district in districts {
            let detail = serde_json::json!({ "session_id": other });
            tx.audit(district, &actor(access), "guardian.sign_out", detail, at)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_language_tag_and_a_window_are_asked_of_preferences() {
        let with = |language: Option<&str>, quiet| Preferences {
            language: language.map(str::to_owned),
            quiet,
            channels_off: Vec::new(),
        };
        assert!(with(Some("zh-Hant"), Some((21 * 60, 7 * 60)))
            .check()
            .is_ok());
        assert!(with(None, Some((0, 1439))).check().is_ok());
        assert!(with(Some("<b>"), None).check().is_err());
        assert!(with(None, Some((600, 600))).check().is_err());
        assert!(with(None, Some((600, 1440))).check().is_err());
    }
}
