//! What guardians themselves reach: the message behind a link, their messages in the app,
//! one-time sign-in codes and app sessions.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::dialect::{Args, Columns, Dialect, Pools};
use super::{keys, StoreResult};
use crate::{Channel, DistrictId, GuardianId, MessageId, MessageKind, RecipientId};

/// One message as its guardian sees it, in their language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GuardianMessage {
    pub recipient_id: RecipientId,
    pub message_id: MessageId,
    pub district_id: DistrictId,
    pub district_name: String,
    pub guardian_id: GuardianId,
    pub kind: MessageKind,
    pub subject: String,
    pub body: String,
    /// The language `subject` and `body` are in.
    pub language: String,
    pub sent_at: DateTime<Utc>,
    /// `not_required`, `pending` or `acked`.
    pub ack_state: String,
    pub acked_at: Option<DateTime<Utc>>,
    /// The channel the acknowledgment came through.
    pub ack_via: Option<String>,
    /// Whom staff addressed it to: which of the guardian's children it concerns.
    #[serde(skip)]
    pub audience: crate::audience::Audience,
}

/// One of a guardian's children, with what an audience can name them by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Child {
    pub guardian_id: GuardianId,
    pub student_id: uuid::Uuid,
    pub sourced_id: Option<String>,
    pub given_name: String,
    pub grade: Option<String>,
    pub school_id: uuid::Uuid,
    pub school_sourced_id: Option<String>,
    pub school_name: String,
    /// The classes they are enrolled in: (id, sourcedId).
    pub classes: Vec<(uuid::Uuid, Option<String>)>,
}

impl Child {
    /// Whether `audience` reaches this child (or, for the district, every child). A
    /// message to guardians by name concerns none in particular.
    pub fn is_in(&self, audience: &crate::audience::Audience) -> bool {
        let named = |list: &[String], id: uuid::Uuid, sourced: &Option<String>| {
            list.iter().any(|r| {
                r.parse::<uuid::Uuid>().is_ok_and(|u| u == id) || sourced.as_deref() == Some(r)
            })
        };
        audience.district
            || named(&audience.students, self.student_id, &self.sourced_id)
            || named(&audience.schools, self.school_id, &self.school_sourced_id)
            || self
                .grade
                .as_ref()
                .is_some_and(|g| audience.grades.contains(g))
            || self
                .classes
                .iter()
                .any(|(id, sourced)| named(&audience.classes, *id, sourced))
    }
}

/// What a guardian sets alone in the app, with what it applies to.
#[derive(Debug, Clone, Serialize)]
pub struct GuardianPreferences {
    pub guardian_id: GuardianId,
    pub district_id: DistrictId,
    pub district_name: String,
    pub given_name: String,
    pub family_name: String,
    /// The language messages go in (a BCP 47 tag); none: the district's.
    pub preferred_language: Option<String>,
    /// The guardian's own quiet hours, minutes after midnight in the school's time zone;
    /// none: the school's.
    pub quiet_start_minute: Option<u16>,
    pub quiet_end_minute: Option<u16>,
    /// Active opt-outs.
    pub opt_outs: Vec<ActiveOptOut>,
    /// The channels the guardian has a contact point in use on.
    pub reachable: Vec<Channel>,
    /// Push devices in use (apps and browsers).
    pub devices: Vec<Device>,
}

/// An opt-out in force: the channel and who asked (`guardian`, `staff`, `carrier`,
/// `complaint`).
#[derive(Debug, Clone, Serialize)]
pub struct ActiveOptOut {
    pub id: uuid::Uuid,
    pub channel: Channel,
    pub source: String,
}

/// A push device of a guardian.
#[derive(Debug, Clone, Serialize)]
pub struct Device {
    pub contact_point_id: uuid::Uuid,
    pub platform: crate::PushPlatform,
    pub token: String,
    pub registered_at: DateTime<Utc>,
}

/// A live session of the address a session signed in with.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub id: uuid::Uuid,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Which guardian message to read.
#[derive(Debug, Clone, Copy)]
pub enum GuardianMessageRef {
    /// By the recipient a link names.
    Recipient(RecipientId),
    /// A message, to one of these guardians' (an app session's).
    Message(MessageId),
}

/// An open one-time sign-in code.
#[derive(Debug, Clone)]
pub struct SignIn {
    pub id: uuid::Uuid,
    pub code_hash: String,
    pub attempts: i32,
}

/// A guardian app session, as stored.
#[derive(Debug, Clone)]
pub struct GuardianSession {
    pub id: uuid::Uuid,
    /// The contact point that signed in.
    pub channel: Channel,
    pub address: String,
    pub secret_hash: String,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The store's side of guardian access: links, the app, sign-in.
#[async_trait::async_trait]
pub trait GuardianAccess: Send + Sync {
    /// Guardians (district, id) an active contact point belongs to.
    async fn guardians_at(
        &self,
        channel: Channel,
        address: &str,
    ) -> StoreResult<Vec<(DistrictId, GuardianId)>>;

    /// The message a link names, or one message to any of `guardians` (one per guardian
    /// it went to).
    async fn guardian_message(
        &self,
        which: GuardianMessageRef,
        guardians: &[GuardianId],
    ) -> StoreResult<Vec<GuardianMessage>>;

    /// `guardians`' messages (recalled ones left out), newest first, older than `before`.
    async fn guardian_messages(
        &self,
        guardians: &[GuardianId],
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<Vec<GuardianMessage>>;

    /// Records link-key fingerprints not seen before; returns the key ids whose recorded
    /// fingerprint differs (another process signs with a different key of that id).
    async fn check_link_keys(
        &self,
        keys: &[(u8, String)],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<u8>>;

    /// Records the fingerprint of install key `name` if none is yet; returns the one
    /// recorded when it differs (another process of the install uses another key).
    async fn check_install_key(
        &self,
        name: &str,
        fingerprint: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<String>>;

    /// Keeps a new sign-in code for the address (replacing an open one), unless
    /// `max_per_hour` were issued to it in the past hour: then `None`.
    async fn create_sign_in(
        &self,
        channel: Channel,
        address: &str,
        code_hash: &str,
        expires_at: DateTime<Utc>,
        max_per_hour: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<uuid::Uuid>>;

    /// The address's unused, unexpired code.
    async fn open_sign_in(
        &self,
        channel: Channel,
        address: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<SignIn>>;

    /// Spends a try of code `id`. A right code is used up, true for exactly one caller
    /// and only while fewer than `max_attempts` tries were made; a wrong one counts, and
    /// the last allowed wrong try uses the code up.
    async fn sign_in_attempt(
        &self,
        id: uuid::Uuid,
        right: bool,
        max_attempts: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<bool>;

    async fn create_guardian_session(
        &self,
        session: &GuardianSession,
        at: DateTime<Utc>,
    ) -> StoreResult<()>;

    async fn guardian_session(&self, id: uuid::Uuid) -> StoreResult<Option<GuardianSession>>;

    async fn end_guardian_session(&self, id: uuid::Uuid, at: DateTime<Utc>) -> StoreResult<()>;

    /// What each of `guardians` sets alone, and what it applies to.
    async fn guardian_preferences(
        &self,
        guardians: &[GuardianId],
    ) -> StoreResult<Vec<GuardianPreferences>>;

    /// The children of `guardians`, each with their school and classes.
    async fn guardian_children(&self, guardians: &[GuardianId]) -> StoreResult<Vec<Child>>;

    /// The live sessions (`session` among them) of the address `session` signed in with:
    /// the devices signed in as that phone number or email address.
    async fn sibling_sessions(
        &self,
        session: uuid::Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionView>>;
}

/// The one implementation, for both stores.
#[async_trait::async_trait]
impl<S: Pools> GuardianAccess for S {
    async fn guardians_at(
        &self,
        channel: Channel,
        address: &str,
    ) -> StoreResult<Vec<(DistrictId, GuardianId)>> {
        let mut conn = self.reads().acquire().await?;
        S::Db::fetch_all(
            &mut conn,
            "SELECT c.district_id, c.guardian_id FROM contact_points c \
             JOIN guardians g ON g.id = c.guardian_id \
             WHERE c.kind = $1 AND c.address = $2 AND c.active = $3 AND g.deleted_at IS NULL \
             ORDER BY c.guardian_id",
            Args::new().text(channel.as_str()).text(address).flag(true),
        )
        .await?
        .iter()
        .map(|row| {
            Ok((
                DistrictId::from_uuid(row.id("district_id")?),
                GuardianId::from_uuid(row.id("guardian_id")?),
            ))
        })
        .collect()
    }

    async fn guardian_message(
        &self,
        which: GuardianMessageRef,
        guardians: &[GuardianId],
    ) -> StoreResult<Vec<GuardianMessage>> {
        let mut conn = self.reads().acquire().await?;
        let rows = match which {
            GuardianMessageRef::Recipient(id) => {
                let sql = format!("{MESSAGE_SELECT} WHERE r.id = $1");
                S::Db::fetch_all(&mut conn, &sql, Args::new().id(id)).await?
            }
            GuardianMessageRef::Message(id) => {
                let sql =
                    format!("{MESSAGE_SELECT} WHERE r.message_id = $1 AND r.guardian_id = $2");
                let mut rows = Vec::new();
                for guardian in guardians {
                    let args = Args::new().id(id).id(*guardian);
                    rows.extend(S::Db::fetch_optional(&mut conn, &sql, args).await?);
                }
                rows
            }
        };
        rows.iter().map(message).collect()
    }

    async fn guardian_messages(
        &self,
        guardians: &[GuardianId],
        before: Option<MessageId>,
        limit: u32,
    ) -> StoreResult<Vec<GuardianMessage>> {
        let mut conn = self.reads().acquire().await?;
        let sql = format!(
            "{MESSAGE_SELECT} WHERE r.guardian_id = $1 AND ($2 IS NULL OR r.message_id < $2) \
             AND m.cancelled_at IS NULL ORDER BY r.message_id DESC LIMIT $3"
        );
        // Few guardians per session (usually one): a query each, merged.
        let mut all = Vec::new();
        for guardian in guardians {
            let args = Args::new().id(*guardian).opt_id(before).int(limit);
            for row in S::Db::fetch_all(&mut conn, &sql, args).await? {
                all.push(message(&row)?);
            }
        }
        all.sort_by(|a, b| {
            b.message_id
                .cmp(&a.message_id)
                .then(a.guardian_id.cmp(&b.guardian_id))
        });
        all.truncate(limit as usize);
        Ok(all)
    }

    async fn check_link_keys(
        &self,
        keys: &[(u8, String)],
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<u8>> {
        let mut conn = self.writes().acquire().await?;
        keys::check_link_keys::<S::Db>(&mut conn, keys, at).await
    }

    async fn check_install_key(
        &self,
        name: &str,
        fingerprint: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<String>> {
        let mut conn = self.writes().acquire().await?;
        keys::check_install_key::<S::Db>(&mut conn, name, fingerprint, at).await
    }

    async fn create_sign_in(
        &self,
        channel: Channel,
        address: &str,
        code_hash: &str,
        expires_at: DateTime<Utc>,
        max_per_hour: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<uuid::Uuid>> {
        let mut tx = self.begin_write().await?;
        // A new code replaces any open one. Written first: the write takes SQLite's lock
        // before the count is read, so concurrent requests queue instead of failing on a
        // stale snapshot (nothing of it stays if the cap refuses).
        S::Db::execute(
            &mut tx,
            "UPDATE guardian_sign_ins SET used_at = $1 \
             WHERE channel = $2 AND address = $3 AND used_at IS NULL",
            Args::new().time(at).text(channel.as_str()).text(address),
        )
        .await?;
        let recent = S::Db::fetch_one(
            &mut tx,
            "SELECT count(*) AS n FROM guardian_sign_ins \
             WHERE channel = $1 AND address = $2 AND created_at > $3",
            Args::new()
                .text(channel.as_str())
                .text(address)
                .time(at - chrono::Duration::hours(1)),
        )
        .await?
        .i64("n")?;
        if recent >= i64::from(max_per_hour) {
            return Ok(None);
        }
        let id = uuid::Uuid::now_v7();
        S::Db::execute(
            &mut tx,
            "INSERT INTO guardian_sign_ins (id, channel, address, code_hash, expires_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            Args::new()
                .id(id)
                .text(channel.as_str())
                .text(address)
                .text(code_hash)
                .time(expires_at)
                .time(at),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(id))
    }

    async fn open_sign_in(
        &self,
        channel: Channel,
        address: &str,
        at: DateTime<Utc>,
    ) -> StoreResult<Option<SignIn>> {
        let mut conn = self.reads().acquire().await?;
        let row = S::Db::fetch_optional(
            &mut conn,
            "SELECT id, code_hash, attempts FROM guardian_sign_ins \
             WHERE channel = $1 AND address = $2 AND used_at IS NULL AND expires_at > $3 \
             ORDER BY created_at DESC LIMIT 1",
            Args::new().text(channel.as_str()).text(address).time(at),
        )
        .await?;
        row.map(|row| {
            Ok(SignIn {
                id: row.id("id")?,
                code_hash: row.text("code_hash")?,
                attempts: row.i32("attempts")?,
            })
        })
        .transpose()
    }

    async fn sign_in_attempt(
        &self,
        id: uuid::Uuid,
        right: bool,
        max_attempts: u32,
        at: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let sql = if right {
            "UPDATE guardian_sign_ins SET used_at = $1, attempts = attempts + 1 \
             WHERE id = $2 AND used_at IS NULL AND attempts < $3"
        } else {
            "UPDATE guardian_sign_ins SET attempts = attempts + 1, \
             used_at = CASE WHEN attempts + 1 >= $3 THEN $1 ELSE used_at END \
             WHERE id = $2 AND used_at IS NULL"
        };
        let mut conn = self.writes().acquire().await?;
        let args = Args::new().time(at).id(id).int(max_attempts);
        let changed = S::Db::execute(&mut conn, sql, args).await?;
        Ok(right && changed == 1)
    }

    async fn create_guardian_session(
        &self,
        session: &GuardianSession,
        at: DateTime<Utc>,
    ) -> StoreResult<()> {
        let mut conn = self.writes().acquire().await?;
        S::Db::execute(
            &mut conn,
            "INSERT INTO guardian_sessions (id, channel, address, secret_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            Args::new()
                .id(session.id)
                .text(session.channel.as_str())
                .text(&session.address)
                .text(&session.secret_hash)
                .time(at)
                .time(session.expires_at),
        )
        .await?;
        Ok(())
    }

    async fn guardian_session(&self, id: uuid::Uuid) -> StoreResult<Option<GuardianSession>> {
        let mut conn = self.reads().acquire().await?;
        let row = S::Db::fetch_optional(
            &mut conn,
            "SELECT id, channel, address, secret_hash, expires_at, revoked_at \
             FROM guardian_sessions WHERE id = $1",
            Args::new().id(id),
        )
        .await?;
        row.map(|row| {
            Ok(GuardianSession {
                id: row.id("id")?,
                channel: row.parsed("channel")?,
                address: row.text("address")?,
                secret_hash: row.text("secret_hash")?,
                expires_at: row.time("expires_at")?,
                revoked_at: row.opt_time("revoked_at")?,
            })
        })
        .transpose()
    }

    async fn end_guardian_session(&self, id: uuid::Uuid, at: DateTime<Utc>) -> StoreResult<()> {
        let mut conn = self.writes().acquire().await?;
        S::Db::execute(
            &mut conn,
            "UPDATE guardian_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            Args::new().time(at).id(id),
        )
        .await?;
        Ok(())
    }

    async fn guardian_preferences(
        &self,
        guardians: &[GuardianId],
    ) -> StoreResult<Vec<GuardianPreferences>> {
        let mut conn = self.reads().acquire().await?;
        let mut all = Vec::new();
        // Few guardians per session (usually one): a few queries each.
        for guardian in guardians {
            let Some(row) = S::Db::fetch_optional(
                &mut conn,
                "SELECT g.id, g.district_id, x.name AS district_name, g.given_name, g.family_name, \
                        g.preferred_language, CAST(g.quiet_start_minute AS INTEGER) AS quiet_start, \
                        CAST(g.quiet_end_minute AS INTEGER) AS quiet_end \
                 FROM guardians g JOIN districts x ON x.id = g.district_id \
                 WHERE g.id = $1 AND g.deleted_at IS NULL",
                Args::new().id(*guardian),
            )
            .await?
            else {
                continue;
            };
            let opt_outs = S::Db::fetch_all(
                &mut conn,
                "SELECT id, channel, source FROM opt_outs WHERE guardian_id = $1 \
                 AND revoked_at IS NULL ORDER BY channel, source",
                Args::new().id(*guardian),
            )
            .await?
            .iter()
            .map(|r| {
                Ok(ActiveOptOut {
                    id: r.id("id")?,
                    channel: r.parsed("channel")?,
                    source: r.text("source")?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
            let points = S::Db::fetch_all(
                &mut conn,
                "SELECT id, kind, address, push_platform, created_at FROM contact_points \
                 WHERE guardian_id = $1 AND active = $2 ORDER BY created_at, id",
                Args::new().id(*guardian).flag(true),
            )
            .await?;
            let mut reachable = Vec::new();
            let mut devices = Vec::new();
            for point in &points {
                let kind: Channel = point.parsed("kind")?;
                if !reachable.contains(&kind) {
                    reachable.push(kind);
                }
                if kind == Channel::Push {
                    devices.push(Device {
                        contact_point_id: point.id("id")?,
                        platform: point.parsed("push_platform")?,
                        token: point.text("address")?,
                        registered_at: point.time("created_at")?,
                    });
                }
            }
            all.push(GuardianPreferences {
                guardian_id: GuardianId::from_uuid(row.id("id")?),
                district_id: DistrictId::from_uuid(row.id("district_id")?),
                district_name: row.text("district_name")?,
                given_name: row.text("given_name")?,
                family_name: row.text("family_name")?,
                preferred_language: row.opt_text("preferred_language")?,
                quiet_start_minute: minute(row.opt_i32("quiet_start")?),
                quiet_end_minute: minute(row.opt_i32("quiet_end")?),
                opt_outs,
                reachable,
                devices,
            });
        }
        Ok(all)
    }

    async fn guardian_children(&self, guardians: &[GuardianId]) -> StoreResult<Vec<Child>> {
        let mut conn = self.reads().acquire().await?;
        let mut children = Vec::new();
        for guardian in guardians {
            let rows = S::Db::fetch_all(
                &mut conn,
                "SELECT s.id, s.sourced_id, s.given_name, s.grade, sch.id AS school_id, \
                        sch.sourced_id AS school_sourced_id, sch.name AS school_name \
                 FROM guardian_students gs JOIN students s ON s.id = gs.student_id \
                 JOIN schools sch ON sch.id = s.school_id \
                 WHERE gs.guardian_id = $1 AND gs.deleted_at IS NULL AND s.deleted_at IS NULL \
                 ORDER BY s.given_name, s.id",
                Args::new().id(*guardian),
            )
            .await?;
            for row in rows {
                let student_id = row.id("id")?;
                let classes = S::Db::fetch_all(
                    &mut conn,
                    "SELECT c.id, c.sourced_id FROM enrollments e JOIN classes c ON c.id = e.class_id \
                     WHERE e.student_id = $1 AND e.role = 'student' AND e.deleted_at IS NULL \
                     AND c.deleted_at IS NULL ORDER BY c.id",
                    Args::new().id(student_id),
                )
                .await?
                .iter()
                .map(|c| Ok((c.id("id")?, c.opt_text("sourced_id")?)))
                .collect::<StoreResult<Vec<_>>>()?;
                children.push(Child {
                    guardian_id: *guardian,
                    student_id,
                    sourced_id: row.opt_text("sourced_id")?,
                    given_name: row.text("given_name")?,
                    grade: row.opt_text("grade")?,
                    school_id: row.id("school_id")?,
                    school_sourced_id: row.opt_text("school_sourced_id")?,
                    school_name: row.text("school_name")?,
                    classes,
                });
            }
        }
        Ok(children)
    }

    async fn sibling_sessions(
        &self,
        session: uuid::Uuid,
        at: DateTime<Utc>,
    ) -> StoreResult<Vec<SessionView>> {
        let mut conn = self.reads().acquire().await?;
        S::Db::fetch_all(
            &mut conn,
            "SELECT s.id, s.created_at, s.expires_at FROM guardian_sessions s \
             JOIN guardian_sessions me ON me.channel = s.channel AND me.address = s.address \
             WHERE me.id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2 \
             ORDER BY s.created_at DESC, s.id",
            Args::new().id(session).time(at),
        )
        .await?
        .iter()
        .map(|r| {
            Ok(SessionView {
                id: r.id("id")?,
                created_at: r.time("created_at")?,
                expires_at: r.time("expires_at")?,
            })
        })
        .collect()
    }
}

/// A minute of the day as the schema keeps it (its CHECK holds it to 0–1439).
fn minute(column: Option<i32>) -> Option<u16> {
    column.and_then(|m| u16::try_from(m).ok())
}

/// A guardian created one at a time (the API's and tests'; the roster syncs its own).
pub(crate) async fn insert<D: Dialect>(
    conn: &mut D::Connection,
    guardian: &super::NewGuardian,
    at: DateTime<Utc>,
) -> StoreResult<super::Guardian> {
    let id = crate::GuardianId::new();
    D::execute(
        conn,
        "INSERT INTO guardians (id, district_id, sourced_id, given_name, family_name, \
                                preferred_language, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        Args::new()
            .id(id)
            .id(guardian.district_id)
            .opt_text(guardian.sourced_id.as_deref())
            .text(&guardian.given_name)
            .text(&guardian.family_name)
            .opt_text(guardian.preferred_language.as_deref())
            .time(at),
    )
    .await?;
    Ok(super::Guardian {
        id,
        district_id: guardian.district_id,
        given_name: guardian.given_name.clone(),
        family_name: guardian.family_name.clone(),
        preferred_language: guardian.preferred_language.clone(),
        sourced_id: guardian.sourced_id.clone(),
    })
}

/// Sets a guardian's language and quiet hours (none: the district's language, the
/// school's hours); whether the guardian was there to change.
pub(crate) async fn set_preferences<D: Dialect>(
    conn: &mut D::Connection,
    guardian: uuid::Uuid,
    language: Option<&str>,
    quiet: Option<(u16, u16)>,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let changed = D::execute(
        conn,
        "UPDATE guardians SET preferred_language = $1, quiet_start_minute = $2, \
         quiet_end_minute = $3, updated_at = $4 WHERE id = $5 AND deleted_at IS NULL",
        Args::new()
            .opt_text(language)
            .opt_int(quiet.map(|q| i64::from(q.0)))
            .opt_int(quiet.map(|q| i64::from(q.1)))
            .time(at)
            .id(guardian),
    )
    .await?;
    Ok(changed == 1)
}

/// Ends `other`, a session of the same address as `session`; whether it was live.
pub(crate) async fn end_sibling_session<D: Dialect>(
    conn: &mut D::Connection,
    session: uuid::Uuid,
    other: uuid::Uuid,
    at: DateTime<Utc>,
) -> StoreResult<bool> {
    let changed = D::execute(
        conn,
        "UPDATE guardian_sessions SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL \
         AND EXISTS (SELECT 1 FROM guardian_sessions me WHERE me.id = $3 \
                     AND me.channel = guardian_sessions.channel AND me.address = guardian_sessions.address)",
        Args::new().time(at).id(other).id(session),
    )
    .await?;
    Ok(changed == 1)
}

const MESSAGE_SELECT: &str =
    "SELECT r.id AS recipient_id, r.message_id, r.district_id, x.name AS district_name, r.guardian_id, \
            m.kind, m.subject, m.body, m.translations, m.audience, r.language, m.created_at, r.ack_state, \
            r.acked_at, r.ack_via \
     FROM recipients r JOIN messages m ON m.id = r.message_id JOIN districts x ON x.id = r.district_id ";

/// A message row of [`MESSAGE_SELECT`], in the recipient's language where it has a
/// translation.
fn message(row: &impl Columns) -> StoreResult<GuardianMessage> {
    let words = super::messages::words(row)?;
    Ok(GuardianMessage {
        recipient_id: RecipientId::from_uuid(row.id("recipient_id")?),
        message_id: MessageId::from_uuid(row.id("message_id")?),
        district_id: DistrictId::from_uuid(row.id("district_id")?),
        district_name: row.text("district_name")?,
        guardian_id: GuardianId::from_uuid(row.id("guardian_id")?),
        kind: row.parsed("kind")?,
        subject: words.subject,
        body: words.body,
        sent_at: row.time("created_at")?,
        ack_state: row.text("ack_state")?,
        acked_at: row.opt_time("acked_at")?,
        ack_via: row.opt_text("ack_via")?,
        language: words.language,
        // As asked for (validated then); unreadable only if edited by hand: no child.
        audience: serde_json::from_value(row.json("audience")?).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audience::Audience;

    fn child() -> Child {
        Child {
            guardian_id: GuardianId::new(),
            student_id: uuid::Uuid::now_v7(),
            sourced_id: Some("stu-7".into()),
            given_name: "Ana".into(),
            grade: Some("03".into()),
            school_id: uuid::Uuid::now_v7(),
            school_sourced_id: Some("sch-1".into()),
            school_name: "Lincoln Elementary".into(),
            classes: vec![(uuid::Uuid::now_v7(), Some("cls-9".into()))],
        }
    }

    #[test]
    fn a_child_is_in_an_audience_naming_them_their_school_grade_class_or_district() {
        let ana = child();
        let with = |edit: fn(&mut Audience, &Child)| {
            let mut audience = Audience::default();
            edit(&mut audience, &ana);
            ana.is_in(&audience)
        };
        assert!(with(|a, _| a.district = true));
        assert!(with(|a, c| a.students = vec![c.student_id.to_string()]));
        assert!(with(|a, _| a.students = vec!["stu-7".into()]));
        assert!(with(|a, c| a.schools = vec![c.school_id.to_string()]));
        assert!(with(|a, _| a.schools = vec!["sch-1".into()]));
        assert!(with(|a, _| a.grades = vec!["03".into()]));
        assert!(with(|a, c| a.classes = vec![c.classes[0].0.to_string()]));
        assert!(with(|a, _| a.classes = vec!["cls-9".into()]));
        // Others, and guardians by name, do not concern her.
        assert!(!with(|_, _| {}));
        assert!(!with(|a, _| a.students = vec!["stu-8".into()]));
        assert!(!with(|a, _| a.grades = vec!["04".into()]));
        assert!(!with(|a, _| a.classes = vec!["cls-10".into()]));
        assert!(!with(|a, c| a.guardians = vec![c.guardian_id.to_string()]));
    }
}
