//! The staff web interface: server-rendered pages over the same application services as
//! the REST API (`tidings_core::services`), plain HTML forms that work without
//! JavaScript, templates and styles compiled into the binary.
//!
//! Pages: sign in and out (email and password, or the district's account with single
//! sign-on), the list of messages, compose and send, each message's report, the
//! directory (schools, classes, students, guardians), staff, API tokens and settings; and
//! the guardian app under `/app/` ([`app`]). A session is an expiring token of the staff member
//! kept in an HttpOnly, SameSite=Lax cookie (Secure when Tidings is served over HTTPS);
//! every form carries a CSRF token derived from it.

mod app;
mod assets;
mod audit;
mod chart;
mod dead_letters;
mod directory;
mod districts;
mod form;
mod i18n;
mod imports;
mod messages;
mod oidc;
mod outbox;
mod session;
mod settings;
mod sign_in;
mod staff;
mod tokens;

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
    /// Where browsers reach Tidings (`https://tidings.example.org`): the base of the
    /// single sign-on redirect URI. Without it, the address the browser used.
    pub public_url: Option<String>,
    /// Bounds on sign-in attempts, per account and per client.
    sign_ins: sign_in::Limits,
    /// Identity providers, their discovery documents and keys cached.
    oidc: oidc::Client,
    /// Roster uploads being imported, for their progress pages.
    imports: imports::Jobs,
    /// In sandbox mode, what the sandbox took (the outbox page).
    pub outbox: Option<Arc<dyn Outbox>>,
    /// In sandbox mode, the sandbox's identity provider, offered on the settings page.
    pub sandbox_identity_provider: Option<SandboxIdentityProvider>,
}

/// The sandbox's OpenID Connect provider as a district administrator would configure it.
#[derive(Debug, Clone)]
pub struct SandboxIdentityProvider {
    pub issuer: String,
    pub client_id: String,
    /// The sandbox's own well-known secret, shown on the settings page (a sandbox only).
    pub client_secret: String,
}

impl Web {
    /// `clock` is the server's ([`AppState::clock`]): sign-in bounds refill by it.
    pub fn new(
        secure_cookies: bool,
        public_url: Option<String>,
        outbox: Option<Arc<dyn Outbox>>,
        clock: Arc<dyn tidings_core::clock::Clock>,
    ) -> Self {
        Self {
            secure_cookies,
            public_url,
            sign_ins: sign_in::Limits::new(clock),
            oidc: oidc::Client::default(),
            imports: imports::Jobs::default(),
            outbox,
            sandbox_identity_provider: None,
        }
    }

    /// Offers the sandbox's identity provider on the settings page.
    pub fn with_sandbox_identity_provider(mut self, provider: SandboxIdentityProvider) -> Self {
        self.sandbox_identity_provider = Some(provider);
        self
    }
}

/// The web admin's pages, to be merged into the server's router at `/`.
pub fn router(state: AppState, web: Web) -> Router {
    Router::new()
        .route("/", get(messages::list))
        .route("/sign-in", get(sign_in::page).post(sign_in::submit))
        .route("/sign-in/oidc", get(sign_in::start_sso))
        .route(sign_in::CALLBACK_PATH, get(sign_in::sso_callback))
        .route("/sign-out", post(sign_in::sign_out))
        .route("/language/{tag}", get(i18n::choose))
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
        .route("/staff/{id}", get(staff::member))
        .route(
            "/invitation/{token}",
            get(staff::invitation).post(staff::accept),
        )
        .route("/account", get(staff::account).post(staff::change_password))
        .route("/tokens", get(tokens::list).post(tokens::change))
        .route("/settings", get(settings::show).post(settings::save))
        .route("/districts", get(districts::list).post(districts::change))
        .route("/dead-letters", get(dead_letters::list))
        .route("/dead-letters/{id}/replay", post(dead_letters::replay))
        .route("/schools", get(directory::schools))
        .route("/schools/{id}", get(directory::school))
        .route("/classes/{id}", get(directory::class))
        .route("/students", get(directory::students))
        .route("/students/{id}", get(directory::student))
        .route("/guardians", get(directory::guardians))
        .route(
            "/guardians/{id}",
            get(directory::guardian).post(directory::edit),
        )
        .route(
            "/imports",
            get(imports::page)
                .post(imports::upload)
                .layer(axum::extract::DefaultBodyLimit::max(
                    tidings_api::MAX_ROSTER_BYTES,
                )),
        )
        .route("/imports/running/{id}", get(imports::running))
        .route("/imports/{id}", get(imports::report))
        .route("/static/{name}", get(assets::serve))
        .merge(app::routes())
        .layer(Extension(Arc::new(web)))
        .with_state(state)
}
