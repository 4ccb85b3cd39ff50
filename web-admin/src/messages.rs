//! Messages: the list, composing and sending (with a review step, and a confirmation for
//! emergencies), and each message's report.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use tidings_api::AppState;
use tidings_core::audience::Audience;
use tidings_core::delivery::{Actor, ActorKind};
use tidings_core::fanout::Translation;
use tidings_core::segments::Encoding;
use tidings_core::services::message_scope;
use tidings_core::services::send::{Preview, SendMessage, Sent};
use tidings_core::services::{Once, Refusal, Reply, ServiceError};
use tidings_core::store::{
    ClassView, GradeView, GuardianView, MessageContent, MessageListItem, MessageSummary,
    PageRequest, RecipientTimeline, RecipientView, ReplyView, SchoolView, Scope, StudentView,
};
use tidings_core::{Channel, MessageId, RecipientId, Role};
use uuid::Uuid;

use crate::form::{said_in, Fields, Posted};
use crate::i18n::Lang;
use crate::session::SignedIn;

/// Renders a page, or a plain 500 if the template fails.
pub(crate) fn html(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(error) => {
            tracing::error!(error = %error, "rendering a page failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// A store or service failure on our side: logged with what it was, shown as a plain page.
pub(crate) fn failed(error: impl std::fmt::Display) -> Response {
    tracing::error!(error = %error, "a page failed");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        // No language is at hand here (it may be the session that failed): both.
        "Something failed on our side. Please try again.\n\
         Algo falló de nuestro lado. Vuelva a intentarlo.",
    )
        .into_response()
}

/// The parts every signed-in page shows.
pub struct Frame {
    pub styles: &'static str,
    pub staff_name: String,
    pub csrf: String,
    /// An operator of the install: the districts page is linked.
    pub operator: bool,
    pub lang: Lang,
    /// A district administrator: the staff, audit and settings pages are linked.
    pub administrator: bool,
    /// May send messages (not a viewer): compose is linked.
    pub may_send: bool,
    /// This page (path and query), for the language switcher to come back to.
    pub here: String,
}

impl Frame {
    pub(crate) fn of(signed_in: &SignedIn) -> Self {
        Frame {
            styles: crate::assets::styles_url(),
            staff_name: signed_in.staff.display_name.clone(),
            csrf: signed_in.csrf.clone(),
            operator: signed_in.staff.operator,
            lang: signed_in.lang,
            administrator: signed_in.staff.role == Role::DistrictAdmin,
            may_send: signed_in.staff.role != Role::Viewer,
            here: signed_in.here.clone(),
        }
    }

    /// A phrase in the page's language.
    pub fn t<'a>(&self, english: &'a str) -> &'a str {
        self.lang.t(english)
    }

    /// A phrase with values in the page's language.
    pub fn tf(&self, english: &str, values: &[&dyn std::fmt::Display]) -> String {
        self.lang.tf(english, values)
    }

    /// The languages to switch to, with their links.
    pub fn other_languages(&self) -> Vec<(Lang, String)> {
        self.lang.others(&self.here)
    }

    /// The main menu's entries this member may use, the one holding this page marked.
    pub fn menu(&self) -> Vec<MenuEntry> {
        let path = self.path();
        let under = |prefixes: &[&str]| {
            prefixes
                .iter()
                .any(|p| path == *p || path.starts_with(&format!("{p}/")))
        };
        // The compose form is shown again by its own post (review, translate, find).
        let composing = path == "/messages/new" || path == "/messages";
        let mut entries = Vec::with_capacity(8);
        let mut add = |href: &'static str, label: &'static str, holds_this_page: bool| {
            entries.push(MenuEntry {
                href,
                label: self.t(label),
                current: aria_current(holds_this_page, path == href),
            })
        };
        add(
            "/",
            "Messages",
            !composing && (path == "/" || under(&["/messages", "/outbox"])),
        );
        if self.may_send {
            add("/messages/new", "New message", composing);
        }
        add(
            "/schools",
            "Directory",
            under(&[
                "/schools",
                "/classes",
                "/students",
                "/guardians",
                "/imports",
            ]),
        );
        add("/dead-letters", "Dead letters", under(&["/dead-letters"]));
        if self.administrator {
            add("/audit", "Audit log", under(&["/audit"]));
            add("/staff", "Staff", under(&["/staff"]));
            add("/settings", "Settings", under(&["/settings"]));
        }
        if self.operator {
            add("/districts", "Districts", under(&["/districts"]));
        }
        entries
    }

    /// How the member's own account link is marked (its page, or its tokens).
    pub fn account_current(&self) -> Option<&'static str> {
        let path = self.path();
        aria_current(path == "/account" || path == "/tokens", path == "/account")
    }

    fn path(&self) -> &str {
        self.here.split('?').next().unwrap_or_default()
    }
}

/// An `aria-current` value: `page` on the link to the page shown, `true` on the link to
/// the part of the admin it belongs to.
fn aria_current(holds_this_page: bool, is_this_page: bool) -> Option<&'static str> {
    match (holds_this_page, is_this_page) {
        (_, true) => Some("page"),
        (true, false) => Some("true"),
        (false, false) => None,
    }
}

/// One link of the main menu.
pub struct MenuEntry {
    pub href: &'static str,
    pub label: &'static str,
    /// `aria-current`: `page` on the page's own link, `true` on its section's.
    pub current: Option<&'static str>,
}

#[derive(Template)]
#[template(path = "messages.html")]
struct ListPage {
    frame: Frame,
    may_send: bool,
    /// The sandbox is on: link its outbox.
    sandbox: bool,
    messages: Vec<MessageListItem>,
}

pub async fn list(
    State(state): State<AppState>,
    axum::Extension(web): axum::Extension<std::sync::Arc<crate::Web>>,
    signed_in: SignedIn,
) -> Response {
    let scope = message_scope(&signed_in.staff);
    match state.store.messages(&scope, None, 50).await {
        Ok(messages) => html(
            StatusCode::OK,
            ListPage {
                may_send: signed_in.staff.role != Role::Viewer,
                sandbox: web.outbox.is_some() && signed_in.staff.role == Role::DistrictAdmin,
                frame: Frame::of(&signed_in),
                messages,
            },
        ),
        Err(error) => failed(error),
    }
}

/// The compose form's fields, as submitted (and as shown again).
#[derive(Debug, Clone, Default)]
struct Draft {
    /// `district`, `schools`, `grades`, `classes` or `people` (chosen students and
    /// guardians).
    reach: String,
    schools: Vec<String>,
    grades: Vec<String>,
    classes: Vec<String>,
    /// Chosen students and guardians, by id.
    students: Vec<String>,
    guardians: Vec<String>,
    /// What to look for among students and guardians (the `find` action).
    find: String,
    channels: Vec<String>,
    kind: String,
    subject: String,
    body: String,
    requires_ack: bool,
    /// Translations as filled in, in order; the last may be an empty slot.
    translations: Vec<TranslationDraft>,
    /// When to send, in the district's time zone (`YYYY-MM-DDTHH:MM`); empty: now.
    send_at: String,
    /// When acknowledgments are due, likewise.
    ack_by: String,
    /// Minutes before the next channel is tried; empty: no fallback.
    fallback: String,
    /// The one-time key of the rendered form: a resubmission sends once.
    once: String,
    confirmed: bool,
    /// `review`, `send`, `find` (students and guardians) or `translate` (one more
    /// language).
    action: String,
}

/// One translation's fields: its language tag, subject and body.
#[derive(Debug, Clone, Default)]
struct TranslationDraft {
    language: String,
    subject: String,
    body: String,
}

impl TranslationDraft {
    fn is_blank(&self) -> bool {
        self.subject.trim().is_empty() && self.body.trim().is_empty()
    }
}

/// Students and guardians a compose form may choose at most (each is looked up to show
/// its name again).
const MAX_CHOSEN: usize = 200;

impl Draft {
    fn from(fields: &Fields) -> Self {
        let text = |name: &str| fields.get(name).to_owned();
        let list = |name: &str| {
            let mut values: Vec<String> = fields.all(name).map(str::to_owned).collect();
            values.dedup();
            values
        };
        let languages = fields.all("t_language");
        let subjects = fields.all("t_subject");
        let bodies = fields.all("t_body");
        let translations = languages
            .zip(subjects)
            .zip(bodies)
            .map(|((language, subject), body)| TranslationDraft {
                language: language.to_owned(),
                subject: subject.to_owned(),
                body: body.to_owned(),
            })
            .collect();
        Draft {
            reach: text("reach"),
            schools: list("school"),
            grades: list("grade"),
            classes: list("class"),
            students: list("student"),
            guardians: list("guardian"),
            find: text("find"),
            channels: list("channel"),
            kind: text("kind"),
            subject: text("subject"),
            body: text("body"),
            requires_ack: !fields.get("requires_ack").is_empty(),
            translations,
            send_at: text("send_at"),
            ack_by: text("ack_by"),
            fallback: text("fallback"),
            once: text("once"),
            confirmed: fields.get("confirmed") == "yes",
            action: text("action"),
        }
    }

    /// The request to send, with times read in the district's time zone `zone`; what is
    /// wrong with it is said in `lang`.
    fn request(&self, zone: chrono_tz::Tz, lang: Lang) -> Result<SendMessage, Refusal> {
        let audience = match self.reach.as_str() {
            "district" => Audience {
                district: true,
                ..Audience::default()
            },
            "schools" => Audience {
                schools: self.schools.clone(),
                ..Audience::default()
            },
            "grades" => Audience {
                grades: self.grades.clone(),
                ..Audience::default()
            },
            "people" => Audience {
                students: self.students.clone(),
                guardians: self.guardians.clone(),
                ..Audience::default()
            },
            _ => Audience {
                classes: self.classes.clone(),
                ..Audience::default()
            },
        };
        if self.students.len() + self.guardians.len() > MAX_CHOSEN {
            return Err(Refusal::Invalid(lang.tf(
                "choose at most {} students and guardians; for more, choose their classes, grades or schools",
                &[&MAX_CHOSEN],
            )));
        }
        let mut translations = BTreeMap::new();
        for t in self.translations.iter().filter(|t| !t.is_blank()) {
            let language = t.language.trim();
            if language.is_empty() {
                return Err(Refusal::Invalid(
                    lang.t("a translation needs its language").to_owned(),
                ));
            }
            let translation = Translation {
                subject: t.subject.clone(),
                body: t.body.clone(),
            };
            if translations
                .insert(language.to_owned(), translation)
                .is_some()
            {
                return Err(Refusal::Invalid(lang.tf(
                    "there are two translations into {}; keep one",
                    &[&language_name(lang, language)],
                )));
            }
        }
        let fallback_after_minutes = match self.fallback.trim() {
            "" => None,
            minutes => Some(minutes.parse().map_err(|_| {
                Refusal::Invalid(lang.tf(
                    "the fallback {} is not a number of minutes",
                    &[&format!("{minutes:?}")],
                ))
            })?),
        };
        Ok(SendMessage {
            audience,
            channels: self.channels.clone(),
            kind: self.kind.clone(),
            subject: self.subject.clone(),
            body: self.body.clone(),
            translations,
            requires_ack: self.requires_ack,
            delivery: None,
            scheduled_at: local_time(lang.t("the sending time"), &self.send_at, zone, lang)?,
            ack_deadline: local_time(
                lang.t("the acknowledgment deadline"),
                &self.ack_by,
                zone,
                lang,
            )?,
            fallback_after_minutes,
        })
    }

    /// The translations to show: those filled in, and one empty slot to add another
    /// (two when asked for one more).
    fn translation_slots(&self) -> Vec<TranslationDraft> {
        let mut slots: Vec<TranslationDraft> = self
            .translations
            .iter()
            .filter(|t| !t.is_blank())
            .cloned()
            .collect();
        let blank = if self.action == "translate" { 1 } else { 0 };
        if slots.is_empty() || blank == 1 {
            // The next language not yet used, so that a new slot is ready to fill.
            let used: Vec<&str> = slots.iter().map(|t| t.language.as_str()).collect();
            let language = LANGUAGES
                .into_iter()
                .find(|tag| !used.contains(tag))
                .unwrap_or("es");
            slots.push(TranslationDraft {
                language: language.to_owned(),
                ..TranslationDraft::default()
            });
        }
        slots
    }

    fn has_channel(&self, channel: &str) -> bool {
        self.channels.iter().any(|c| c == channel)
    }

    fn has_school(&self, id: &Uuid) -> bool {
        self.schools.contains(&id.to_string())
    }

    fn has_grade(&self, grade: &str) -> bool {
        self.grades.iter().any(|g| g == grade)
    }

    fn has_class(&self, id: &Uuid) -> bool {
        self.classes.contains(&id.to_string())
    }

    fn has_student(&self, id: &Uuid) -> bool {
        self.students.contains(&id.to_string())
    }

    fn has_guardian(&self, id: &Uuid) -> bool {
        self.guardians.contains(&id.to_string())
    }

    /// The details of the form that hold more are open when they hold something.
    fn times_open(&self) -> bool {
        !self.send_at.is_empty() || !self.ack_by.is_empty() || !self.fallback.is_empty()
    }

    fn translations_open(&self) -> bool {
        self.action == "translate" || self.translations.iter().any(|t| !t.is_blank())
    }
}

/// The name in `lang` of a language tag Tidings offers (or English), or the tag itself.
pub fn language_name(lang: Lang, tag: &str) -> &str {
    match tag {
        "en" => lang.t("English"),
        "es" => lang.t("Spanish"),
        "zh" => lang.t("Chinese"),
        "vi" => lang.t("Vietnamese"),
        "ar" => lang.t("Arabic"),
        "ht" => lang.t("Haitian Creole"),
        "pt" => lang.t("Portuguese"),
        "ko" => lang.t("Korean"),
        "ru" => lang.t("Russian"),
        "so" => lang.t("Somali"),
        "fr" => lang.t("French"),
        other => other,
    }
}

/// A `datetime-local` field's value in `zone`, as UTC; `None` when empty. `what` names
/// the field in `lang`.
fn local_time(
    what: &str,
    value: &str,
    zone: chrono_tz::Tz,
    lang: Lang,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Refusal> {
    use chrono::TimeZone;
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    let naive = chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%dT%H:%M").map_err(|_| {
        Refusal::Invalid(lang.tf(
            "{} {} is not a date and time",
            &[&what, &format!("{value:?}")],
        ))
    })?;
    // In a clock change's gap or overlap, the earlier reading.
    zone.from_local_datetime(&naive)
        .earliest()
        .map(|at| Some(at.with_timezone(&chrono::Utc)))
        .ok_or_else(|| {
            Refusal::Invalid(lang.tf(
                "{} {} does not exist in {}",
                &[&what, &format!("{value:?}"), &zone],
            ))
        })
}

/// Languages offered for a translation, by tag: the ones most spoken at home by US
/// families after English. Each has a name in [`language_name`].
pub const LANGUAGES: [&str; 10] = ["es", "zh", "vi", "ar", "ht", "pt", "ko", "ru", "so", "fr"];

/// What the text of one language takes by SMS.
pub struct SmsCost {
    /// The language's name, in the page's language.
    pub language: String,
    pub segments: tidings_core::segments::Segments,
    /// The alphabet the text is sent in, in the page's language.
    pub alphabet: &'static str,
}

impl SmsCost {
    fn of(language: String, text: &str, lang: Lang) -> Self {
        let segments = tidings_core::segments::segments(text);
        let alphabet = match segments.encoding {
            Encoding::Gsm7 => lang.t("plain alphabet"),
            Encoding::Ucs2 => lang.t("Unicode"),
        };
        SmsCost {
            language,
            segments,
            alphabet,
        }
    }
}

/// One language's text as guardians will read it, for the review before sending.
pub struct TextPreview {
    /// The language's name, in the page's language.
    pub language: String,
    /// Its tag, for the text's `lang` (none for the district's own).
    pub tag: Option<String>,
    pub subject: String,
    pub body: String,
}

#[derive(Template)]
#[template(path = "compose.html")]
struct ComposePage {
    frame: Frame,
    draft: Draft,
    district_wide: bool,
    schools: Vec<SchoolView>,
    /// Grades the sender may name whole.
    grades: Vec<GradeView>,
    /// Grades the sender sees only part of (a teacher, or a school administrator when
    /// other schools have the grade too): not offered.
    partial_grades: usize,
    classes: Vec<ClassView>,
    /// The students and guardians chosen so far, and those the search found besides.
    chosen_students: Vec<StudentView>,
    chosen_guardians: Vec<GuardianView>,
    found_students: Vec<StudentView>,
    found_guardians: Vec<GuardianView>,
    /// Translations to show, the last one possibly empty.
    translations: Vec<TranslationDraft>,
    error: Option<String>,
    preview: Option<Preview>,
    /// The preview is of an emergency: sending needs the confirmation button.
    confirm: bool,
    /// With the preview: SMS segments per language.
    sms: Vec<SmsCost>,
    /// With the preview: each language's text, the district's own first.
    texts: Vec<TextPreview>,
    /// The tags of the languages a translation may be in.
    languages: &'static [&'static str],
    /// The district's time zone, in which the form's times are read.
    zone: String,
}

impl ComposePage {
    fn language_name<'a>(&self, tag: &'a str) -> &'a str {
        language_name(self.frame.lang, tag)
    }
}

/// Students and guardians a search on the compose page shows, of each.
const FOUND: u32 = 20;

/// The district's time zone (UTC if it names none Tidings knows).
async fn district_zone(
    state: &AppState,
    staff: &tidings_core::Staff,
) -> Result<chrono_tz::Tz, tidings_core::store::StoreError> {
    Ok(state
        .store
        .district(staff.district_id)
        .await?
        .and_then(|d| d.timezone.parse().ok())
        .unwrap_or(chrono_tz::UTC))
}

/// The ids among `ids` (at most [`MAX_CHOSEN`]); what is not an id is left out (sending
/// names it as unknown).
fn chosen_ids(ids: &[String]) -> impl Iterator<Item = Uuid> + '_ {
    ids.iter()
        .take(MAX_CHOSEN)
        .filter_map(|id| id.parse::<Uuid>().ok())
}

async fn compose_page(
    state: &AppState,
    signed_in: &SignedIn,
    draft: Draft,
    error: Option<String>,
    preview: Option<Preview>,
) -> Result<ComposePage, tidings_core::store::StoreError> {
    let store = &state.store;
    let scope = Scope::of(&signed_in.staff);
    let page = PageRequest {
        limit: 500,
        ..PageRequest::default()
    };
    let schools = store.schools(&scope, &page).await?;
    let classes = store.classes(&scope, &page).await?;
    let (grades, partial): (Vec<GradeView>, Vec<GradeView>) = store
        .grades(&scope)
        .await?
        .into_iter()
        .partition(GradeView::whole);
    // The chosen, in the order chosen, each looked up within the scope.
    let mut chosen_students = Vec::new();
    for id in chosen_ids(&draft.students) {
        chosen_students.extend(store.students(&scope, &PageRequest::only(id)).await?);
    }
    let mut chosen_guardians = Vec::new();
    for id in chosen_ids(&draft.guardians) {
        chosen_guardians.extend(store.guardians(&scope, &PageRequest::only(id)).await?);
    }
    let (mut found_students, mut found_guardians) = (Vec::new(), Vec::new());
    let find = draft.find.trim();
    if !find.is_empty() {
        let search = PageRequest {
            search: Some(find.to_owned()),
            limit: FOUND,
            ..PageRequest::default()
        };
        found_students = store.students(&scope, &search).await?;
        found_students.retain(|s| !draft.has_student(&s.id));
        found_guardians = store.guardians(&scope, &search).await?;
        found_guardians.retain(|g| !draft.has_guardian(&g.id));
    }
    let confirm = preview.is_some() && draft.kind == "emergency";
    let lang = signed_in.lang;
    let mut sms = Vec::new();
    let mut texts = Vec::new();
    if preview.is_some() {
        texts.push(TextPreview {
            language: lang.t("Default").to_owned(),
            tag: None,
            subject: draft.subject.clone(),
            body: draft.body.clone(),
        });
        for t in draft
            .translations
            .iter()
            .filter(|t| !t.body.trim().is_empty())
        {
            texts.push(TextPreview {
                language: language_name(lang, &t.language).to_owned(),
                tag: Some(t.language.clone()),
                subject: t.subject.clone(),
                body: t.body.clone(),
            });
        }
        if draft.has_channel("sms") {
            sms = texts
                .iter()
                .map(|t| SmsCost::of(t.language.clone(), &t.body, lang))
                .collect();
        }
    }
    let zone = district_zone(state, &signed_in.staff)
        .await?
        .name()
        .to_owned();
    Ok(ComposePage {
        sms,
        texts,
        languages: &LANGUAGES,
        zone,
        frame: Frame::of(signed_in),
        district_wide: signed_in.staff.role == Role::DistrictAdmin,
        translations: draft.translation_slots(),
        draft,
        schools,
        grades,
        partial_grades: partial.len(),
        classes,
        chosen_students,
        chosen_guardians,
        found_students,
        found_guardians,
        error,
        preview,
        confirm,
    })
}

/// What a link to the compose page may choose already: "Message this class" on a class
/// page, and the like.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Prefill {
    school: Option<Uuid>,
    grade: Option<String>,
    class: Option<Uuid>,
    student: Option<Uuid>,
    guardian: Option<Uuid>,
}

pub async fn compose(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Query(prefill): Query<Prefill>,
) -> Response {
    if signed_in.staff.role == Role::Viewer {
        return (StatusCode::FORBIDDEN, "Viewers cannot send messages.").into_response();
    }
    let ids = |id: Option<Uuid>| id.map(|id| id.to_string()).into_iter().collect();
    let reach = if prefill.school.is_some() {
        "schools"
    } else if prefill.grade.is_some() {
        "grades"
    } else if prefill.student.is_some() || prefill.guardian.is_some() {
        "people"
    } else {
        "classes"
    };
    let draft = Draft {
        reach: reach.into(),
        schools: ids(prefill.school),
        grades: prefill.grade.into_iter().collect(),
        classes: ids(prefill.class),
        students: ids(prefill.student),
        guardians: ids(prefill.guardian),
        channels: vec!["sms".into(), "email".into()],
        kind: "general".into(),
        requires_ack: true,
        once: Uuid::now_v7().to_string(),
        ..Draft::default()
    };
    match compose_page(&state, &signed_in, draft, None, None).await {
        Ok(page) => html(StatusCode::OK, page),
        Err(error) => failed(error),
    }
}

pub async fn send(State(state): State<AppState>, Posted { signed_in, fields }: Posted) -> Response {
    let draft = Draft::from(&fields);
    let services = state.services();
    let again = async |draft: Draft, status: StatusCode, error: Option<String>, preview| {
        match compose_page(&state, &signed_in, draft, error, preview).await {
            Ok(page) => html(status, page),
            Err(error) => failed(error),
        }
    };
    if draft.action == "find" || draft.action == "translate" {
        // Only the form again: with what the search found, or one more language.
        return again(draft, StatusCode::OK, None, None).await;
    }
    let zone = match district_zone(&state, &signed_in.staff).await {
        Ok(zone) => zone,
        Err(error) => return failed(error),
    };
    let lang = signed_in.lang;
    let request = match draft.request(zone, lang) {
        Ok(request) => request,
        Err(refusal) => {
            let (status, error) = said_in(&refusal, lang);
            return again(draft, status, Some(error), None).await;
        }
    };
    let review = draft.action == "review" || (draft.kind == "emergency" && !draft.confirmed);
    if review {
        return match services.preview(&signed_in.staff, request).await {
            Ok(preview) => again(draft, StatusCode::OK, None, Some(preview)).await,
            Err(ServiceError::Refused(refusal)) => {
                let (status, error) = said_in(&refusal, lang);
                again(draft, status, Some(error), None).await
            }
            Err(error) => failed(error),
        };
    }
    // One key per rendered form: a double click or a resubmitted page sends once, and
    // shows the message sent the first time.
    let once = Once {
        key: &draft.once,
        operation: ":web",
        request: draft.once.as_bytes(),
    };
    let kept = tidings_api::idempotency::words::<Sent>(StatusCode::CREATED);
    let reply = services
        .send_message(&signed_in.staff, request, Some(once), &kept)
        .await;
    match reply {
        Ok(Reply::Done(sent)) => Redirect::to(&format!("/messages/{}", sent.id)).into_response(),
        Ok(Reply::Replayed(answer)) => {
            match serde_json::from_slice::<serde_json::Value>(&answer.body)
                .ok()
                .and_then(|sent| sent["id"].as_str().map(str::to_owned))
            {
                Some(id) if answer.status == 201 => {
                    Redirect::to(&format!("/messages/{id}")).into_response()
                }
                _ => {
                    let error = lang.t("This form was sent before and refused; please review it.");
                    let fresh = Draft {
                        once: Uuid::now_v7().to_string(),
                        ..draft
                    };
                    again(
                        fresh,
                        StatusCode::UNPROCESSABLE_ENTITY,
                        Some(error.into()),
                        None,
                    )
                    .await
                }
            }
        }
        Err(ServiceError::Refused(refusal)) => {
            let error = said_in(&refusal, lang).1;
            let fresh = Draft {
                once: Uuid::now_v7().to_string(),
                ..draft
            };
            again(fresh, StatusCode::UNPROCESSABLE_ENTITY, Some(error), None).await
        }
        Err(error) => failed(error),
    }
}

/// A message's deliveries by state and channel: part of the report, and what the live
/// progress sends again as it changes.
#[derive(Template)]
#[template(path = "counts.html")]
struct Counts {
    lang: Lang,
    summary: MessageSummary,
    channels: Vec<Channel>,
    states: Vec<tidings_core::DeliveryState>,
    /// Deliveries still waiting to go out.
    in_flight: bool,
}

impl Counts {
    fn of(summary: MessageSummary, lang: Lang) -> Self {
        let mut channels: Vec<Channel> = summary.counts.iter().map(|c| c.channel).collect();
        channels.sort();
        channels.dedup();
        let states = tidings_core::DeliveryState::ALL
            .into_iter()
            .filter(|s| summary.counts.iter().any(|c| c.state == *s))
            .collect();
        let in_flight = summary.counts.iter().any(|c| {
            matches!(
                c.state,
                tidings_core::DeliveryState::Created | tidings_core::DeliveryState::Queued
            ) && c.count > 0
        });
        Counts {
            lang,
            summary,
            channels,
            states,
            in_flight,
        }
    }

    fn count(&self, channel: &Channel, state: &tidings_core::DeliveryState) -> i64 {
        self.summary
            .counts
            .iter()
            .filter(|c| c.channel == *channel && c.state == *state)
            .map(|c| c.count)
            .sum()
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct ReportPage {
    frame: Frame,
    /// The one-time key of the re-notify form.
    once: String,
    may_send: bool,
    summary: MessageSummary,
    counts: String,
    in_flight: bool,
    live: &'static str,
    /// The deliveries per state over time, per channel (SVG figures).
    chart: String,
    /// Whose names the list shows.
    show: Show,
    people: Vec<RecipientView>,
    /// The next page of the list, when there is one.
    more: Option<Uuid>,
    replies: Vec<ReplyView>,
}

impl ReportPage {
    fn show_label(&self, show: &Show) -> &'static str {
        show.label(self.frame.lang)
    }
}

/// Steps of the chart of states over time.
const CHART_STEPS: u32 = 60;

/// Recipients a report lists per page.
const PEOPLE_PER_PAGE: u32 = 100;

/// Which recipients a report lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Show {
    Waiting,
    Acked,
    All,
}

impl Show {
    const ALL: [Show; 3] = [Show::Waiting, Show::Acked, Show::All];

    fn as_str(self) -> &'static str {
        match self {
            Show::Waiting => "waiting",
            Show::Acked => "acked",
            Show::All => "all",
        }
    }

    fn label(self, lang: Lang) -> &'static str {
        match self {
            Show::Waiting => lang.t("Not acknowledged"),
            Show::Acked => lang.t("Acknowledged"),
            Show::All => lang.t("Everyone"),
        }
    }

    /// The store's acknowledgment filter.
    fn acked(self) -> Option<bool> {
        match self {
            Show::Waiting => Some(false),
            Show::Acked => Some(true),
            Show::All => None,
        }
    }
}

/// A report's list: which recipients, from where.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    show: Option<Show>,
    after: Option<Uuid>,
}

pub async fn report(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<Uuid>,
    Query(query): Query<ListQuery>,
) -> Response {
    let scope = message_scope(&signed_in.staff);
    let id = MessageId::from_uuid(id);
    let summary = match state.store.message_summary(&scope, id).await {
        Ok(Some(summary)) => summary,
        Ok(None) => return (StatusCode::NOT_FOUND, "No such message.").into_response(),
        Err(error) => return failed(error),
    };
    let now = summary.counts.clone();
    let show = match query.show {
        Some(show) if summary.requires_ack || show == Show::All => show,
        _ if summary.requires_ack => Show::Waiting,
        _ => Show::All,
    };
    let mut people = match state
        .store
        .recipients(&scope, id, show.acked(), query.after, PEOPLE_PER_PAGE + 1)
        .await
    {
        Ok(found) => found.unwrap_or_default(),
        Err(error) => return failed(error),
    };
    let more = (people.len() > PEOPLE_PER_PAGE as usize).then(|| {
        people.truncate(PEOPLE_PER_PAGE as usize);
        people.last().map(|p| p.id)
    });
    let chart = match state
        .store
        .state_series(&scope, id, &now, CHART_STEPS)
        .await
    {
        Ok(series) => series
            .map(|s| crate::chart::figures(&s, signed_in.lang))
            .unwrap_or_default(),
        Err(error) => return failed(error),
    };
    let replies = match state.store.message_replies(&scope, id, 50).await {
        Ok(found) => found.unwrap_or_default(),
        Err(error) => return failed(error),
    };
    let counts = Counts::of(summary.clone(), signed_in.lang);
    let in_flight = counts.in_flight;
    let counts = match counts.render() {
        Ok(counts) => counts,
        Err(error) => return failed(error),
    };
    html(
        StatusCode::OK,
        ReportPage {
            frame: Frame::of(&signed_in),
            once: Uuid::now_v7().to_string(),
            may_send: signed_in.staff.role != Role::Viewer,
            summary,
            counts,
            in_flight,
            live: crate::assets::live_url(),
            chart,
            show,
            people,
            more: more.flatten(),
            replies,
        },
    )
}

#[derive(Template)]
#[template(path = "recipient.html")]
struct RecipientPage {
    frame: Frame,
    message_id: MessageId,
    /// What the message said (not its counts: a broadcast's take time to count).
    message: MessageContent,
    timeline: RecipientTimeline,
}

impl RecipientPage {
    fn moved_by(&self, actor: &Actor) -> String {
        moved_by(actor, self.frame.lang)
    }
}

/// One recipient of a message: each delivery with every state it went through, when, and
/// who or what moved it.
pub async fn recipient(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path((id, recipient)): Path<(Uuid, Uuid)>,
) -> Response {
    let scope = message_scope(&signed_in.staff);
    let id = MessageId::from_uuid(id);
    let recipient = RecipientId::from_uuid(recipient);
    let message = match state.store.message_content(&scope, id).await {
        Ok(Some(content)) => content,
        Ok(None) => return (StatusCode::NOT_FOUND, "No such message.").into_response(),
        Err(error) => return failed(error),
    };
    match state.store.recipient_timeline(&scope, id, recipient).await {
        Ok(Some(timeline)) => html(
            StatusCode::OK,
            RecipientPage {
                frame: Frame::of(&signed_in),
                message_id: id,
                message,
                timeline,
            },
        ),
        Ok(None) => (StatusCode::NOT_FOUND, "No such recipient of this message.").into_response(),
        Err(error) => failed(error),
    }
}

/// Who or what made a state change, in words of `lang`.
fn moved_by(actor: &Actor, lang: Lang) -> String {
    match actor.kind {
        ActorKind::Staff => lang.t("staff").to_owned(),
        ActorKind::Guardian => lang.tf("the guardian ({})", &[&actor.reference]),
        ActorKind::Dispatcher => lang.t("the dispatcher").to_owned(),
        ActorKind::Provider => lang.tf("the provider ({})", &[&actor.reference]),
        ActorKind::System => format!("Tidings ({})", actor.reference),
    }
}

/// How often the live progress looks at the counts.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Live progress of a message: Server-Sent Events `counts` (the counts table, rendered)
/// whenever it changes, then `done` once nothing waits to go out.
pub async fn progress(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<Uuid>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let scope = message_scope(&signed_in.staff);
    let id = MessageId::from_uuid(id);
    let lang = signed_in.lang;
    match state.store.message_summary(&scope, id).await {
        Ok(Some(_)) => {}
        Ok(None) => return (StatusCode::NOT_FOUND, "No such message.").into_response(),
        Err(error) => return failed(error),
    }
    // (the last table sent, finished)
    let events = futures_util::stream::unfold((String::new(), false), move |(last, finished)| {
        let (state, scope) = (state.clone(), scope);
        async move {
            if finished {
                return None;
            }
            loop {
                let summary = match state.store.message_summary(&scope, id).await {
                    Ok(Some(summary)) => summary,
                    _ => return None,
                };
                let now = summary.counts.clone();
                let counts = Counts::of(summary, lang);
                let in_flight = counts.in_flight;
                let table = counts.render().unwrap_or_default();
                if !in_flight || table != last {
                    // The chart moves with the counts.
                    let chart = match state
                        .store
                        .state_series(&scope, id, &now, CHART_STEPS)
                        .await
                    {
                        Ok(Some(series)) => crate::chart::figures(&series, lang),
                        _ => String::new(),
                    };
                    let mut events = vec![
                        Event::default()
                            .event("counts")
                            .data(table.replace('\n', "")),
                        Event::default().event("chart").data(chart),
                    ];
                    if !in_flight {
                        events.push(Event::default().event("done").data(""));
                        return Some((
                            Ok::<_, std::convert::Infallible>(events),
                            (String::new(), true),
                        ));
                    }
                    return Some((Ok(events), (table, false)));
                }
                tokio::time::sleep(PROGRESS_EVERY).await;
            }
        }
    });
    let events = futures_util::StreamExt::flat_map(events, |batch| {
        futures_util::stream::iter(
            batch
                .unwrap_or_default()
                .into_iter()
                .map(Ok::<_, std::convert::Infallible>),
        )
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Reminds those who have not acknowledged, on the channels ticked.
pub async fn renotify(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Posted { signed_in, fields }: Posted,
) -> Response {
    let once = fields.get("once");
    let channels = fields.all("channel").map(str::to_owned).collect();
    let operation = format!(":web:renotify:{id}");
    let once = Once {
        key: once,
        operation: &operation,
        request: once.as_bytes(),
    };
    let kept = tidings_api::idempotency::words::<Sent>(StatusCode::CREATED);
    let request = tidings_core::services::renotify::Renotify {
        channels: Some(channels),
    };
    let reply = state
        .services()
        .renotify(
            &signed_in.staff,
            MessageId::from_uuid(id),
            request,
            Some(once),
            &kept,
        )
        .await;
    let sent_id = match reply {
        Ok(Reply::Done(sent)) => Some(sent.id.to_string()),
        Ok(Reply::Replayed(answer)) => serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|sent| sent["id"].as_str().map(str::to_owned))
            .filter(|_| answer.status == 201),
        Err(ServiceError::Refused(refusal)) => {
            return said_in(&refusal, signed_in.lang).into_response()
        }
        Err(error) => return failed(error),
    };
    match sent_id {
        Some(sent) => Redirect::to(&format!("/messages/{sent}")).into_response(),
        None => (
            StatusCode::UNPROCESSABLE_ENTITY,
            signed_in
                .lang
                .t("This reminder was refused before; reload the report."),
        )
            .into_response(),
    }
}

/// Who has not acknowledged, as a CSV file (every one, not only the first page).
pub async fn not_acknowledged_csv(
    State(state): State<AppState>,
    signed_in: SignedIn,
    Path(id): Path<Uuid>,
) -> Response {
    let scope = message_scope(&signed_in.staff);
    let id = MessageId::from_uuid(id);
    let mut out = csv::Writer::from_writer(Vec::new());
    let _ = out.write_record(["guardian_id", "given_name", "family_name", "language"]);
    let mut after = None;
    loop {
        let page = match state
            .store
            .recipients(&scope, id, Some(false), after, 1000)
            .await
        {
            Ok(Some(page)) => page,
            Ok(None) => return (StatusCode::NOT_FOUND, "No such message.").into_response(),
            Err(error) => return failed(error),
        };
        for r in &page {
            let guardian = r.guardian_id.to_string();
            let _ = out.write_record([
                guardian.as_str(),
                &r.given_name,
                &r.family_name,
                &r.language,
            ]);
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.id),
            _ => break,
        }
    }
    let body = out.into_inner().unwrap_or_default();
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "text/csv; charset=utf-8".to_owned(),
            ),
            (
                axum::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"not-acknowledged-{id}.csv\""),
            ),
        ],
        body,
    )
        .into_response()
}

/// Recalls a message: what has not gone to a provider yet is cancelled.
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    Posted { signed_in, .. }: Posted,
) -> Response {
    match state
        .services()
        .cancel(&signed_in.staff, MessageId::from_uuid(id))
        .await
    {
        Ok(_) => Redirect::to(&format!("/messages/{id}")).into_response(),
        Err(ServiceError::Refused(refusal)) => said_in(&refusal, signed_in.lang).into_response(),
        Err(error) => failed(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_at(here: &str) -> Frame {
        Frame {
            styles: "",
            staff_name: "Dana".into(),
            csrf: String::new(),
            operator: false,
            lang: Lang::En,
            administrator: true,
            may_send: true,
            here: here.into(),
        }
    }

    /// Each entry's `aria-current`, by link.
    fn marked(here: &str) -> Vec<(&'static str, &'static str)> {
        frame_at(here)
            .menu()
            .into_iter()
            .filter_map(|e| e.current.map(|c| (e.href, c)))
            .collect()
    }

    #[test]
    fn the_menu_marks_the_page_itself_and_otherwise_the_part_of_the_admin_it_is_in() {
        assert_eq!(marked("/"), [("/", "page")]);
        assert_eq!(marked("/staff?after=x"), [("/staff", "page")]);
        // Compose, also when its own post shows it again (review, translate, find).
        assert_eq!(marked("/messages/new"), [("/messages/new", "page")]);
        assert_eq!(marked("/messages"), [("/messages/new", "true")]);
        let report = "/messages/01a24dd9-02b3-72b7-860b-6b2f339dd112";
        assert_eq!(marked(report), [("/", "true")]);
        assert_eq!(marked("/outbox"), [("/", "true")]);
        for directory in [
            "/schools/1",
            "/classes/2",
            "/students",
            "/guardians/3",
            "/imports",
        ] {
            assert_eq!(marked(directory), [("/schools", "true")], "{directory}");
        }
        assert_eq!(marked("/account"), []);
        assert_eq!(frame_at("/account").account_current(), Some("page"));
        assert_eq!(frame_at("/tokens").account_current(), Some("true"));
        assert_eq!(frame_at("/staff").account_current(), None);
    }
}
