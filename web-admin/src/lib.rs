//! The staff web interface: server-rendered pages over the same application services as
//! the REST API (`tidings_core::services`), plain HTML forms that work without
//! JavaScript, templates and styles compiled into the binary.
//!
//! Pages: sign in and out (email and password), the list of messages, compose and send,
//! and each message's report. A session is an expiring token of the staff member kept in
//! an HttpOnly, SameSite=Lax cookie (Secure when Tidings is served over HTTPS); every form
//! carries a CSRF token derived from it.

mod assets;
mod audit;
mod chart;
mod dead_letters;
mod directory;
mod form;
mod messages;
mod outbox;
mod session;
mod settings;
mod sign_in;
mod staff;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Extension, Router};
use tidings_api::AppState;

pub use outbox::{Outbox, OutboxItem};
pub use session::SESSION_COOKIE;

/// What the pages need beyond the API's state.
#[derive(Debug)]
pub struct Web {
    /// Cookies get `Secure`: Tidings is reached over HTTPS.
    pub secure_cookies: bool,
    /// Bounds on sign-in attempts, per account and per client.
    sign_ins: sign_in::Limits,
    /// In sandbox mode, what the sandbox took (the outbox page).
    pub outbox: Option<Arc<dyn Outbox>>,
}

impl Web {
    pub fn new(secure_cookies: bool, outbox: Option<Arc<dyn Outbox>>) -> Self {
        Self {
            secure_cookies,
            sign_ins: sign_in::Limits::default(),
            outbox,
        }
    }
}

/// The web admin's pages, to be merged into the server's router at `/`.
pub fn router(state: AppState, web: Web) -> Router {
    Router::new()
        .route("/", get(messages::list))
        .route("/sign-in", get(sign_in::page).post(sign_in::submit))
        .route("/sign-out", post(sign_in::sign_out))
        .route("/messages/new", get(messages::compose))
        .route("/messages", post(messages::send))
        .route("/messages/{id}", get(messages::report))
        .route("/messages/{id}/renotify", post(messages::renotify))
        .route("/messages/{id}/cancel", post(messages::cancel))
        .route("/messages/{id}/progress", get(messages::progress))
        .route(
            "/messages/{id}/recipients/{recipient}",
            get(messages::recipient),
        )
        .route(
            "/messages/{id}/not-acknowledged.csv",
            get(messages::not_acknowledged_csv),
        )
        .route("/outbox", get(outbox::page))
        .route("/audit", get(audit::page))
        .route("/staff", get(staff::list).post(staff::change))
        .route(
            "/invitation/{token}",
            get(staff::invitation).post(staff::accept),
        )
        .route("/account", get(staff::account).post(staff::change_password))
        .route("/settings", get(settings::show).post(settings::save))
        .route("/dead-letters", get(dead_letters::list))
        .route("/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/guardians", get(directory::guardians))
        .route(
            "/guardians/{id}",
            get(directory::guardian).post(directory::edit),
        )
        .route("/static/{name}", get(assets::serve))
        .layer(Extension(Arc::new(web)))
        .with_state(state)
}
