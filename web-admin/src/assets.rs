//! Static assets, embedded in the binary and served under names that carry a digest of
//! their content, so that browsers may keep them for a year and still never use a stale
//! one after an upgrade.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

const STYLES: &str = include_str!("../static/tidings.css");

/// The URL of the style sheet, e.g. `/static/tidings.3f2a9c1d0b.css`.
pub fn styles_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let digest = Sha256::digest(STYLES.as_bytes());
        let short: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
        format!("/static/tidings.{short}.css")
    })
}

pub async fn serve(Path(name): Path<String>) -> Response {
    if format!("/static/{name}") != styles_url() {
        return StatusCode::NOT_FOUND.into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        STYLES,
    )
        .into_response()
}
