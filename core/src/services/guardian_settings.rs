//! What a guardian sets alone from the app: the language their messages come in, the
//! channels that carry what is not an emergency (an opt-out of source `guardian`; an
//! emergency still goes by DESIGN §6: everywhere but an SMS number that replied STOP),
//! their own quiet hours, and the devices signed in as them. Each change is one
//! transaction with its audit row, the app session as the actor.

use super::guardian_access::GuardianAccess;
use super::{Refusal, ServiceError, Services};
use crate::delivery::Actor;
use crate::store::guardian::{GuardianPreferences, SessionView};
use crate::{Channel, GuardianId};

/// A guardian's choices, as the settings form sends them whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preferences {
    /// A BCP 47 tag (`es`, `vi`, `zh-Hant`); none: the district's language.
    pub language: Option<String>,
    /// Quiet hours, minutes after midnight (start, end) in the school's time zone; none:
    /// the school's.
    pub quiet: Option<(i64, i64)>,
    /// Channels the guardian does not want what is not an emergency on.
    pub channels_off: Vec<Channel>,
}

/// Whether `tag` reads as a language tag: a 2–3 letter language, then subtags of 2–8
/// letters or digits.
fn language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let first = parts.next().unwrap_or_default();
    (2..=3).contains(&first.len())
        && first.bytes().all(|b| b.is_ascii_lowercase())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_alphanumeric()))
        && tag.len() <= 35
}

impl Preferences {
    fn check(&self) -> Result<(), Refusal> {
        if let Some(tag) = &self.language {
            if !language_tag(tag) {
                return Err(Refusal::Invalid(format!(
                    "language: {tag:?} is not a language tag such as es or zh-Hant"
                )));
            }
        }
        if let Some((start, end)) = self.quiet {
            let minute = 0..1440;
            if !minute.contains(&start) || !minute.contains(&end) || start == end {
                return Err(Refusal::Invalid(
                    "quiet hours: a start and an end between 00:00 and 23:59 that differ".into(),
                ));
            }
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
        let ids: Vec<GuardianId> = access.guardians.iter().map(|(_, g)| *g).collect();
        Ok(self.store.guardian_preferences(&ids).await?)
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
    fn language_tags_and_quiet_hours_are_checked() {
        for good in ["es", "vi", "zh-Hant", "pt-BR", "hmn"] {
            assert!(language_tag(good), "{good}");
        }
        for bad in ["", "e", "ES", "english", "es_MX", "es-", "es-a", "<b>"] {
            assert!(!language_tag(bad), "{bad}");
        }
        let with = |quiet| Preferences {
            language: None,
            quiet,
            channels_off: Vec::new(),
        };
        assert!(with(Some((21 * 60, 7 * 60))).check().is_ok());
        assert!(with(Some((0, 1439))).check().is_ok());
        assert!(with(Some((600, 600))).check().is_err());
        assert!(with(Some((-1, 600))).check().is_err());
        assert!(with(Some((600, 1440))).check().is_err());
    }
}
