//! The language of the pages: English or Spanish, chosen by the browser's
//! `Accept-Language` unless the person picked one (a cookie set by `/language/{tag}`).
//!
//! Templates write English and pass each phrase through [`Lang::t`]; the Spanish catalogue
//! (`locales/es.tsv`, one `English<TAB>Spanish` pair a line) is compiled into the binary.
//! A test checks that every phrase the templates translate has a Spanish entry.

use std::collections::HashMap;
use std::sync::LazyLock;

use axum::extract::{Path, Query};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use tidings_core::{Channel, DeliveryState, MessageKind};

/// The cookie that keeps a chosen language (not a secret: readable by scripts is fine,
/// but it is set like every other cookie of the site).
pub const LANGUAGE_COOKIE: &str = "tidings_lang";

/// A language the pages are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lang {
    #[default]
    En,
    Es,
}

static SPANISH: LazyLock<HashMap<&'static str, &'static str>> =
    LazyLock::new(|| catalogue(include_str!("../locales/es.tsv")));

/// The pairs of a catalogue: blank lines and lines starting with `#` are skipped.
fn catalogue(text: &'static str) -> HashMap<&'static str, &'static str> {
    text.lines()
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('\t'))
        .collect()
}

impl Lang {
    pub const ALL: [Lang; 2] = [Lang::En, Lang::Es];

    /// The BCP 47 tag, for `<html lang>`.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Es => "es",
        }
    }

    /// The language's own name, for the switcher.
    pub fn name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Es => "Español",
        }
    }

    fn from_tag(tag: &str) -> Option<Lang> {
        let primary = tag.split(['-', '_']).next()?.trim();
        Lang::ALL
            .into_iter()
            .find(|lang| lang.tag().eq_ignore_ascii_case(primary))
    }

    /// The language of a request: the chosen one, else the browser's first preference
    /// that the pages are written in, else English.
    pub fn of(headers: &HeaderMap) -> Lang {
        if let Some(lang) =
            crate::session::cookie(headers, LANGUAGE_COOKIE).and_then(Lang::from_tag)
        {
            return lang;
        }
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|value| value.to_str().ok())
            .map(accept_language::parse)
            .unwrap_or_default()
            .iter()
            .find_map(|tag| Lang::from_tag(tag))
            .unwrap_or_default()
    }

    /// `english` in this language; a phrase the catalogue lacks stays English.
    pub fn t<'a>(&self, english: &'a str) -> &'a str {
        match self {
            Lang::En => english,
            Lang::Es => SPANISH.get(english).copied().unwrap_or(english),
        }
    }

    /// `english` in this language with each `{}` replaced by the next value, in order:
    /// `lang.tf("{} guardians", &[&count])`.
    pub fn tf(&self, english: &str, values: &[&dyn std::fmt::Display]) -> String {
        let mut parts = self.t(english).split("{}");
        let mut out = parts.next().unwrap_or_default().to_owned();
        let mut values = values.iter();
        for part in parts {
            if let Some(value) = values.next() {
                out.push_str(&value.to_string());
            }
            out.push_str(part);
        }
        out
    }

    /// The other languages, each with the link that switches to it and comes back to
    /// `here` (a path and query of this site).
    pub fn others(self, here: &str) -> Vec<(Lang, String)> {
        let back: String = form_urlencoded::byte_serialize(here.as_bytes()).collect();
        Lang::ALL
            .into_iter()
            .filter(|lang| *lang != self)
            .map(|lang| (lang, format!("/language/{}?back={back}", lang.tag())))
            .collect()
    }
}

/// Tidings' own values as the pages name them; in English, the stored names the pages
/// have always shown (`sms`, `DELIVERED`, `emergency`). They take references, as
/// templates pass them.
impl Lang {
    pub fn channel(self, channel: &Channel) -> &'static str {
        match channel {
            Channel::Sms => self.t("sms"),
            Channel::Email => self.t("email"),
            Channel::Push => self.t("push"),
        }
    }

    pub fn state(self, state: &DeliveryState) -> &'static str {
        match state {
            DeliveryState::Created => self.t("CREATED"),
            DeliveryState::Queued => self.t("QUEUED"),
            DeliveryState::Sent => self.t("SENT"),
            DeliveryState::Delivered => self.t("DELIVERED"),
            DeliveryState::Acked => self.t("ACKED"),
            DeliveryState::Failed => self.t("FAILED"),
            DeliveryState::Cancelled => self.t("CANCELLED"),
            DeliveryState::Suppressed => self.t("SUPPRESSED"),
        }
    }

    pub fn kind(self, kind: &MessageKind) -> &'static str {
        match kind {
            MessageKind::Emergency => self.t("emergency"),
            MessageKind::Attendance => self.t("attendance"),
            MessageKind::General => self.t("general"),
        }
    }
}

#[derive(serde::Deserialize)]
pub struct Back {
    back: Option<String>,
}

/// `GET /language/{tag}?back=/path`: keeps the choice in a cookie for a year and returns
/// to the page (a path on this site only).
pub async fn choose(
    axum::Extension(web): axum::Extension<std::sync::Arc<crate::Web>>,
    Path(tag): Path<String>,
    Query(back): Query<Back>,
) -> Response {
    let back = back
        .back
        .filter(|path| local_path(path))
        .unwrap_or_else(|| "/".to_owned());
    let Some(lang) = Lang::from_tag(&tag) else {
        return Redirect::to(&back).into_response();
    };
    let cookie = crate::session::set_cookie(
        LANGUAGE_COOKIE,
        lang.tag(),
        365 * 24 * 3600,
        web.secure_cookies,
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&back)).into_response()
}

/// A path on this site: `/…` but not `//host…` or `/\host…`, which browsers follow
/// elsewhere.
fn local_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path.starts_with("/\\")
        && !path.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn headers(accept: Option<&str>, cookie: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(header::ACCEPT_LANGUAGE, accept.parse().unwrap());
        }
        if let Some(cookie) = cookie {
            headers.insert(header::COOKIE, cookie.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_browsers_first_known_preference_wins_unless_one_was_chosen() {
        assert_eq!(Lang::of(&headers(None, None)), Lang::En);
        assert_eq!(
            Lang::of(&headers(Some("es-MX,es;q=0.9,en;q=0.8"), None)),
            Lang::Es
        );
        assert_eq!(
            Lang::of(&headers(Some("fr-FR, en;q=0.5, es;q=0.4"), None)),
            Lang::En
        );
        assert_eq!(
            Lang::of(&headers(Some("en;q=0.2, es;q=0.9"), None)),
            Lang::Es
        );
        assert_eq!(Lang::of(&headers(Some("de"), None)), Lang::En);
        assert_eq!(
            Lang::of(&headers(Some("es"), Some("a=b; tidings_lang=en"))),
            Lang::En
        );
        assert_eq!(Lang::of(&headers(None, Some("tidings_lang=es"))), Lang::Es);
        assert_eq!(
            Lang::of(&headers(Some("es"), Some("tidings_lang=xx"))),
            Lang::Es
        );
    }

    #[test]
    fn only_paths_on_this_site_are_returned_to() {
        assert!(local_path("/messages/1?x=y"));
        for elsewhere in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example",
            "",
            "/a\nb",
        ] {
            assert!(!local_path(elsewhere), "{elsewhere:?}");
        }
    }

    /// Every phrase the templates and pages translate has a Spanish entry, and the
    /// catalogue keeps no phrase that nothing uses.
    #[test]
    fn every_translated_phrase_of_the_templates_is_in_the_spanish_catalogue() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut used = std::collections::BTreeSet::new();
        for dir in ["templates", "src"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
                used.extend(phrases(&text));
            }
        }
        assert!(used.len() > 50, "the templates translate their phrases");
        let pairs = include_str!("../locales/es.tsv")
            .lines()
            .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
            .count();
        assert_eq!(
            pairs,
            SPANISH.len(),
            "every line is one English<TAB>Spanish pair, each English once"
        );
        let missing: Vec<_> = used
            .iter()
            .filter(|p| !SPANISH.contains_key(p.as_str()))
            .collect();
        assert!(missing.is_empty(), "no Spanish for {missing:#?}");
        let unused: Vec<_> = SPANISH.keys().filter(|p| !used.contains(**p)).collect();
        assert!(
            unused.is_empty(),
            "the catalogue has phrases nothing uses: {unused:#?}"
        );
        for (english, spanish) in SPANISH.iter() {
            assert!(
                !spanish.trim().is_empty(),
                "{english:?} has an empty translation"
            );
            assert_eq!(
                english.matches("{}").count(),
                spanish.matches("{}").count(),
                "{english:?} and {spanish:?} take the same number of values"
            );
        }
    }

    /// The string literals a template or source file passes to `.t(` or `.tf(` (also on
    /// the next line, where rustfmt puts a long one).
    fn phrases(text: &str) -> Vec<String> {
        let mut found = Vec::new();
        for (at, _) in text.match_indices('(') {
            let before = &text[..at];
            if !(before.ends_with(".t") || before.ends_with(".tf")) {
                continue;
            }
            let Some(rest) = text[at + 1..].trim_start().strip_prefix('"') else {
                continue;
            };
            if let Some(end) = rest.find('"') {
                found.push(rest[..end].to_owned());
            }
        }
        found
    }

    #[test]
    fn values_take_the_places_of_the_braces() {
        let values: [&dyn std::fmt::Display; 2] = [&"Everyone", &100];
        assert_eq!(Lang::En.tf("{}, first {}", &values), "Everyone, first 100");
        assert_eq!(
            Lang::Es.tf("{}, first {}", &values),
            "Everyone, primeros 100"
        );
        assert_eq!(Lang::Es.tf("Nothing yet.", &[]), "Todavía no hay nada.");
        assert_eq!(Lang::En.tf("{}, first {}", &[&1]), "1, first ");
    }

    #[test]
    fn english_names_tidings_values_by_their_stored_names() {
        for channel in Channel::ALL {
            assert_eq!(Lang::En.channel(channel), channel.as_str());
        }
        for state in DeliveryState::ALL {
            assert_eq!(Lang::En.state(&state), state.as_str());
        }
        for kind in MessageKind::ALL {
            assert_eq!(Lang::En.kind(kind), kind.as_str());
        }
        assert_eq!(Lang::Es.state(&DeliveryState::Acked), "CONFIRMADA");
    }

    #[test]
    fn the_switch_comes_back_to_the_page() {
        assert_eq!(
            Lang::En.others("/messages/1?show=all"),
            [(
                Lang::Es,
                "/language/es?back=%2Fmessages%2F1%3Fshow%3Dall".to_owned()
            )]
        );
    }

    proptest! {
        #[test]
        fn any_accept_language_header_gives_a_language(accept in "[ -~]{0,80}") {
            if let Ok(value) = accept.parse() {
                let mut headers = HeaderMap::new();
                headers.insert(header::ACCEPT_LANGUAGE, value);
                let lang = Lang::of(&headers);
                prop_assert!(Lang::ALL.contains(&lang));
            }
        }
    }
}
