//! `Idempotency-Key`, as payment APIs do it: a repeat of a request with the same key and
//! body gets the first answer again instead of doing the work twice; the same key with a
//! different body is refused; a repeat while the first is still running gets 409. Keys
//! are scoped per staff member and endpoint, and kept 24 hours.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tidings_core::store::IdempotencyClaim;
use tidings_core::time::now;
use tidings_core::Staff;

use crate::{ApiError, AppState};

/// Idempotency keys are kept at least this long.
pub const KEEP_KEYS_HOURS: i64 = 24;

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Runs `work` at most once per `Idempotency-Key` (when the request has one). `endpoint`
/// separates the key spaces of different operations. `work` answers with a status and a
/// JSON body; answers to bad requests are kept and replayed like successes, failures on
/// our side release the key so that the client can retry.
pub async fn idempotent(
    state: &AppState,
    staff: &Staff,
    endpoint: &str,
    headers: &HeaderMap,
    body: &[u8],
    work: impl AsyncFnOnce() -> Result<(StatusCode, Vec<u8>), ApiError>,
) -> Result<Response, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        let (status, answer) = work().await?;
        return Ok(json_response(status, answer));
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::InvalidBody("Idempotency-Key is not text".into()))?;
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::InvalidBody(
            "Idempotency-Key must be 1 to 255 characters".into(),
        ));
    }
    let scope = format!("staff:{}{endpoint}", staff.id);
    let hash = Sha256::digest(body);
    let keep = chrono::Duration::hours(KEEP_KEYS_HOURS);
    match state
        .store
        .claim_idempotency_key(&scope, key, &hash, keep, now())
        .await?
    {
        IdempotencyClaim::Replay { status, body } => {
            return Ok(json_response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                body,
            ))
        }
        IdempotencyClaim::InFlight => return Err(ApiError::IdempotencyInFlight),
        IdempotencyClaim::Mismatch => return Err(ApiError::IdempotencyMismatch),
        IdempotencyClaim::Claimed => {}
    }
    let (status, answer) = match work().await {
        Ok(done) => done,
        Err(error) if error.parts().0.is_server_error() => {
            state.store.release_idempotency_key(&scope, key).await?;
            return Err(error);
        }
        Err(error) => (error.parts().0, error.problem_body()),
    };
    state
        .store
        .complete_idempotency_key(&scope, key, status.as_u16(), &answer)
        .await?;
    Ok(json_response(status, answer))
}
