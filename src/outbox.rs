//! The sandbox outbox: in sandbox mode (`serve --demo`, or `sandbox = true`) every text,
//! email and push goes to the in-process sandbox instead of a provider, and
//! `GET /_sandbox/received` shows what it took — recipient, channel and the text with the
//! acknowledgment link or sign-in code inside — so that a newcomer can play the guardian
//! and close the loop without any provider account. District administrators only (the
//! texts go to the roster's real addresses), and only their district's.

use std::collections::HashSet;

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde_json::{json, Value};
use tidings_api::{ApiError, AppState, Caller};
use tidings_core::{DeliveryId, Role};
use tidings_sandbox::InProcessProvider;

/// Sends shown, newest first.
const SHOWN: usize = 200;

/// `GET /_sandbox/received` over `sandbox`.
pub fn router(state: AppState, sandbox: InProcessProvider) -> Router {
    Router::new()
        .route("/_sandbox/received", get(received))
        .layer(Extension(sandbox))
        .with_state(state)
}

async fn received(
    State(state): State<AppState>,
    Extension(sandbox): Extension<InProcessProvider>,
    Caller(staff): Caller,
) -> Result<Json<Value>, ApiError> {
    if staff.role != Role::DistrictAdmin {
        return Err(ApiError::Forbidden);
    }
    let mut items = sandbox.received();
    items.reverse();
    // Sign-in codes name no delivery; deliveries are shown when they are this district's.
    let ids: Vec<DeliveryId> = items.iter().filter_map(|r| r.delivery_id).collect();
    let ours: HashSet<DeliveryId> = state
        .store
        .deliveries_by_ids(&ids)
        .await?
        .into_iter()
        .filter(|d| d.district_id == staff.district_id)
        .map(|d| d.id)
        .collect();
    let items: Vec<_> = items
        .into_iter()
        .filter(|r| r.delivery_id.is_some_and(|id| ours.contains(&id)))
        .take(SHOWN)
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// The in-process sandbox as the web admin's outbox page reads it.
#[derive(Debug)]
pub struct SandboxOutbox(pub InProcessProvider);

impl tidings_web_admin::Outbox for SandboxOutbox {
    fn received(&self) -> Vec<tidings_web_admin::OutboxItem> {
        self.0
            .received()
            .into_iter()
            .map(|r| tidings_web_admin::OutboxItem {
                delivery_id: r.delivery_id,
                channel: r.channel,
                address: r.address,
                body: r.body,
                at: r.at,
            })
            .collect()
    }
}
