//! `Idempotency-Key`, as payment APIs do it: a repeat of a request with the same key and
//! body gets the first answer again instead of doing the work twice; the same key with a
//! different body is refused; a repeat while the first is still running gets 409. Keys
//! are scoped per staff member and endpoint, and kept 24 hours. The services keep the key
//! in the same transaction as the work (`tidings_core::services`); this module reads the
//! header and words the answers that are kept.

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tidings_core::services::{Answer, Once, Refusal, Reply};

use crate::ApiError;

/// The request's `Idempotency-Key`, if it has one, for the operation `operation` of a
/// request with body `body`.
pub fn once<'a>(
    headers: &'a HeaderMap,
    operation: &'a str,
    body: &'a [u8],
) -> Result<Option<Once<'a>>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .map_err(|_| ApiError::InvalidBody("Idempotency-Key is not text".into()))?;
    if key.is_empty() || key.len() > 255 {
        return Err(ApiError::InvalidBody(
            "Idempotency-Key must be 1 to 255 characters".into(),
        ));
    }
    Ok(Some(Once {
        key,
        operation,
        request: body,
    }))
}

/// The answer kept with a key: `created` with the JSON of what was done, or the problem
/// a refusal is answered with.
pub fn words<T: Serialize>(created: StatusCode) -> impl Fn(Result<&T, &Refusal>) -> Answer {
    move |outcome| match outcome {
        Ok(done) => Answer {
            status: created.as_u16(),
            body: serde_json::to_vec(done).unwrap_or_default(),
        },
        Err(refusal) => {
            let error = ApiError::from(refusal.clone());
            Answer {
                status: error.parts().0.as_u16(),
                body: error.problem_body(),
            }
        }
    }
}

/// The response to a service's reply.
pub fn respond<T: Serialize>(created: StatusCode, reply: Reply<T>) -> Response {
    let answer = match reply {
        Reply::Done(done) => words(created)(Ok(&done)),
        Reply::Replayed(answer) => answer,
    };
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    (status, [(header::CONTENT_TYPE, content_type)], answer.body).into_response()
}
