//! The HTTP surface of Tidings: health, the staff REST API under `/api/v1` and its
//! OpenAPI document. Handlers parse input into core types, call the store, and return
//! `Result<_, ApiError>`; they hold no SQL and no provider logic.

mod auth;
mod deliveries;
mod directory;
pub mod error;
pub mod extract;
pub mod guardian;
mod health;
pub mod idempotency;
mod imports;
mod links;
mod log;
mod messages;
mod openapi;
mod replies;
pub mod server;
mod settings;
mod staff;
mod tokens;

pub use imports::MAX_ROSTER_BYTES;

use std::future::Future;
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use tidings_core::store::Store;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;

pub use auth::Caller;
pub use error::ApiError;
pub use openapi::ApiDoc;

/// Largest request body accepted anywhere (roster zips get their own limit).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Region for phone numbers staff type without a country code (ISO 3166, e.g. "US").
    pub default_phone_region: String,
    /// Partitions per lane of the delivery log.
    pub partitions: u32,
    /// The keys acknowledgment and unsubscribe links are checked with.
    pub link_keys: Arc<tidings_core::link::LinkKeys>,
    /// Sends the guardian app's sign-in codes; none without an SMS or email provider.
    pub codes: guardian::Codes,
    /// The bounds on guardians' sign-in (`guardian::sign_in_limiter`).
    pub sign_ins: Arc<guardian::SignInLimits>,
    /// Proxies whose `X-Forwarded-For` names the client (`server::client_address`).
    pub trusted_proxies: Arc<[std::net::IpAddr]>,
    /// The share of the directory (percent of any kind of row) an upload may delete
    /// before it is held back (`roster::ImportOptions::max_delete_percent`).
    pub roster_max_delete_percent: u8,
    /// Where "now" comes from.
    pub clock: Arc<dyn tidings_core::clock::Clock>,
    /// The VAPID public key browsers subscribe to Web Push with (URL-safe base64); none
    /// when Web Push is off.
    pub web_push_key: Option<String>,
}

impl AppState {
    /// The application services, on this state's store and clock.
    pub fn services(&self) -> tidings_core::services::Services {
        tidings_core::services::Services {
            store: self.store.clone(),
            clock: self.clock.clone(),
            partitions: self.partitions,
            default_phone_region: self.default_phone_region.clone(),
            link_keys: self.link_keys.clone(),
        }
    }
}

/// The whole router: operations endpoints, the staff API, and problem+json for
/// everything else.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route(
            "/api/v1/openapi.json",
            get(|| async { Json(ApiDoc::openapi()) }),
        )
        .route("/api/v1/me", get(auth::me))
        .route("/api/v1/schools", get(directory::list_schools))
        .route("/api/v1/classes", get(directory::list_classes))
        .route("/api/v1/students", get(directory::list_students))
        .route("/api/v1/guardians", get(directory::list_guardians))
        .route("/api/v1/schools/{id}", get(directory::get_school))
        .route("/api/v1/classes/{id}", get(directory::get_class))
        .route("/api/v1/students/{id}", get(directory::get_student))
        .route("/api/v1/guardians/{id}", get(directory::get_guardian))
        .route(
            "/api/v1/guardians/{id}/export",
            get(directory::export_guardian),
        )
        .route(
            "/api/v1/guardians/{id}/erase",
            post(directory::erase_guardian),
        )
        .route(
            "/api/v1/guardians/{id}/contact-points",
            post(directory::add_contact_point),
        )
        .route(
            "/api/v1/guardians/{id}/contact-points/{contact_point}",
            patch(directory::change_contact_point),
        )
        .route(
            "/api/v1/guardians/{id}/opt-outs",
            post(directory::add_opt_out),
        )
        .route(
            "/api/v1/guardians/{id}/opt-outs/{opt_out}",
            delete(directory::revoke_opt_out),
        )
        .route(
            "/api/v1/imports/oneroster",
            post(imports::import_oneroster).layer(DefaultBodyLimit::max(imports::MAX_ROSTER_BYTES)),
        )
        .route("/api/v1/imports/{id}", get(imports::get_import))
        .route("/api/v1/log/rewind", post(log::rewind))
        .route(
            "/api/v1/messages",
            post(messages::send_message).get(messages::list_messages),
        )
        .route(
            "/api/v1/messages/{id}/recipients",
            get(messages::list_recipients),
        )
        .route(
            "/api/v1/messages/{id}/cancel",
            post(messages::cancel_message),
        )
        .route("/api/v1/messages/{id}/renotify", post(messages::renotify))
        .route("/api/v1/messages/{id}", get(messages::get_message))
        .route("/api/v1/deliveries/{id}", get(deliveries::get_delivery))
        .route("/api/v1/dead-letters", get(deliveries::list_dead_letters))
        .route("/api/v1/replies", get(replies::list_replies))
        .route(
            "/api/v1/dead-letters/{id}/replay",
            post(deliveries::replay_dead_letter),
        )
        .route(
            "/api/v1/settings/sso",
            get(settings::get_sso)
                .put(settings::put_sso)
                .delete(settings::delete_sso),
        )
        .route(
            "/api/v1/settings/retention",
            get(settings::get_retention).put(settings::put_retention),
        )
        .route("/api/v1/settings/retention/purge", post(settings::purge))
        .route(
            "/api/v1/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/api/v1/tokens/{id}", delete(tokens::revoke_token))
        .route("/api/v1/staff", get(staff::list_staff).post(staff::invite))
        .route("/api/v1/staff/{id}", patch(staff::change_staff))
        .route(
            "/api/v1/staff/{id}/password-reset",
            post(staff::password_reset),
        )
        .route(
            "/api/v1/districts",
            get(staff::list_districts).post(staff::create_district),
        )
        .route("/api/v1/districts/{id}", patch(staff::change_district))
        .route("/api/v1/guardian/sign-in", post(guardian::sign_in))
        .route("/api/v1/guardian/sessions", post(guardian::create_session))
        .route(
            "/api/v1/guardian/sessions/current",
            delete(guardian::end_session),
        )
        .route("/api/v1/guardian/messages", get(guardian::list_messages))
        .route("/api/v1/guardian/messages/{id}", get(guardian::get_message))
        .route(
            "/api/v1/guardian/messages/{id}/ack",
            post(guardian::acknowledge),
        )
        .route("/api/v1/guardian/devices", post(guardian::register_device))
        .route("/api/v1/guardian/web-push", get(guardian::web_push_key))
        .route(
            "/api/v1/guardian/devices/{platform}/{token}",
            delete(guardian::unregister_device),
        )
        .route("/a/{token}", get(links::ack_page).post(links::acknowledge))
        .route(
            "/u/{token}",
            get(links::unsubscribe_page).post(links::unsubscribe),
        )
        .fallback(|| async { ApiError::NotFound })
        .layer(axum::middleware::map_response(error::as_problem))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves `router` on `listener` with the default `server::ServeLimits` until `shutdown`
/// completes, then lets in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    server::serve_with(listener, router, server::ServeLimits::default(), shutdown).await
}
