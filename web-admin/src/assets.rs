//! Static assets, embedded in the binary and served under names that carry a digest of
//! their content, so that browsers may keep them for a year and still never use a stale
//! one after an upgrade.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Each asset: its name, content type and content.
const ASSETS: [(&str, &str, &str); 2] = [
    (
        "tidings",
        "text/css; charset=utf-8",
        include_str!("../static/tidings.css"),
    ),
    (
        "live",
        "text/javascript; charset=utf-8",
        include_str!("../static/live.js"),
    ),
];

/// The URL of an asset: its name, a digest of its content, its kind
/// (e.g. `/static/tidings.3f2a9c1d0b.css`).
fn url_of(name: &str, content_type: &str, content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    let short: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    let extension = if content_type.starts_with("text/css") {
        "css"
    } else {
        "js"
    };
    format!("/static/{name}.{short}.{extension}")
}

fn urls() -> &'static [String; 2] {
    static URLS: OnceLock<[String; 2]> = OnceLock::new();
    URLS.get_or_init(|| ASSETS.map(|(name, kind, content)| url_of(name, kind, content)))
}

/// The style sheet's URL.
pub fn styles_url() -> &'static str {
    &urls()[0]
}

/// The live-progress script's URL.
pub fn live_url() -> &'static str {
    &urls()[1]
}

pub async fn serve(Path(name): Path<String>) -> Response {
    let asked = format!("/static/{name}");
    let Some(index) = urls().iter().position(|url| *url == asked) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (_, content_type, content) = ASSETS[index];
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        content,
    )
        .into_response()
}
