//! `ApiError`: every error the HTTP surface returns, rendered as RFC 9457
//! `application/problem+json` with a stable `type` per variant. Handlers return
//! `Result<_, ApiError>` and never build error responses by hand.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tidings_core::services::{Refusal, ServiceError};
use tidings_core::store::StoreError;
use utoipa::ToSchema;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid bearer token or session is required")]
    Unauthorized,
    #[error("you may not do this")]
    Forbidden,
    #[error("no such resource")]
    NotFound,
    #[error("the request body is not valid: {0}")]
    InvalidBody(String),
    #[error("the query string is not valid: {0}")]
    InvalidQuery(String),
    #[error("the request body is larger than this endpoint accepts")]
    PayloadTooLarge,
    #[error("{0}")]
    Conflict(String),
    #[error("the roster could not be imported: {0}")]
    InvalidRoster(String),
    #[error("the audience names what does not exist in this district: {0}")]
    UnknownAudience(String),
    #[error("the audience reaches beyond what you may message: {0}")]
    ForbiddenAudience(String),
    #[error("a request with this Idempotency-Key is still being handled; retry shortly")]
    IdempotencyInFlight,
    #[error("this Idempotency-Key was used for a different request")]
    IdempotencyMismatch,
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("the code is wrong, used or expired: ask for a new one")]
    InvalidCode,
    #[error("too many sign-in codes for this address in the past hour: try again later")]
    TooManyCodes,
    #[error("too many requests from your address: try again in a minute")]
    TooManyRequests,
    #[error("the audience reaches no guardian: {0}")]
    EmptyAudience(String),
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error("the request body's media type is not accepted here: {0}")]
    UnsupportedMediaType(String),
    #[error("the request is malformed: {0}")]
    BadRequest(String),
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// Something failed on our side. The cause is logged with the request id, never
    /// returned: it may name tables, hosts or data.
    #[error("internal error")]
    Internal(#[source] StoreError),
    /// A roster import that would delete more of the directory than allowed: nothing
    /// changed. The problem lists the counts (`over_delete_limit`).
    #[error("the roster import was held back and nothing was changed: {0}; if the export is right, send it again with force=true")]
    ImportHeldBack(Box<tidings_core::roster::OverLimit>),
    /// The caller's district is suspended by an operator of the install.
    #[error(
        "this district is suspended; its staff cannot use Tidings until an operator resumes it"
    )]
    DistrictSuspended,
}

impl From<StoreError> for ApiError {
    /// As the services classify it: a schema rule the request broke or the hourly quota
    /// is the caller's problem (409, 422, 429), anything else ours.
    fn from(error: StoreError) -> Self {
        ServiceError::from(error).into()
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Forbidden => ApiError::Forbidden,
            Refusal::BadCredentials => ApiError::Unauthorized,
            Refusal::NotFound => ApiError::NotFound,
            Refusal::Invalid(detail) => ApiError::InvalidBody(detail),
            Refusal::ForbiddenAudience(references) => ApiError::ForbiddenAudience(references),
            Refusal::UnknownAudience(references) => ApiError::UnknownAudience(references),
            Refusal::EmptyAudience(detail) => ApiError::EmptyAudience(detail),
            Refusal::NoAccount => ApiError::Unauthorized,
            Refusal::AccountDisabled => ApiError::Forbidden,
            Refusal::Conflict(detail) => ApiError::Conflict(detail),
            Refusal::QuotaExceeded(detail) => ApiError::QuotaExceeded(detail),
            Refusal::IdempotencyInFlight => ApiError::IdempotencyInFlight,
            Refusal::IdempotencyMismatch => ApiError::IdempotencyMismatch,
            Refusal::DistrictSuspended => ApiError::DistrictSuspended,
            Refusal::TooManyCodes => ApiError::TooManyCodes,
            Refusal::InvalidCode => ApiError::InvalidCode,
            Refusal::InvalidRoster(detail) => ApiError::InvalidRoster(detail),
            Refusal::ImportHeldBack { over, .. } => ApiError::ImportHeldBack(over),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        match error {
            ServiceError::Refused(refusal) => refusal.into(),
            ServiceError::Store(error) => ApiError::Internal(error),
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `/problems/unauthorized`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Short, human-readable summary of the kind of problem.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong this time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl ApiError {
    /// The status, stable `type` and title of each variant. The README lists these.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "/problems/unauthorized",
                "Authentication required",
            ),
            ApiError::Forbidden => (StatusCode::FORBIDDEN, "/problems/forbidden", "Forbidden"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "/problems/not-found", "Not found"),
            ApiError::InvalidBody(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/invalid-body",
                "Invalid request body",
            ),
            ApiError::InvalidQuery(_) => (
                StatusCode::BAD_REQUEST,
                "/problems/invalid-query",
                "Invalid query string",
            ),
            ApiError::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "/problems/payload-too-large",
                "Request body too large",
            ),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "/problems/conflict", "Conflict"),
            ApiError::InvalidRoster(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/invalid-roster",
                "Roster not imported",
            ),
            ApiError::UnknownAudience(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/unknown-audience",
                "Unknown audience",
            ),
            ApiError::ForbiddenAudience(_) => (
                StatusCode::FORBIDDEN,
                "/problems/forbidden-audience",
                "Audience not allowed",
            ),
            ApiError::IdempotencyInFlight => (
                StatusCode::CONFLICT,
                "/problems/idempotency-key-in-flight",
                "Request in progress",
            ),
            ApiError::IdempotencyMismatch => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/idempotency-key-reused",
                "Idempotency-Key reused",
            ),
            ApiError::QuotaExceeded(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/quota-exceeded",
                "District quota exceeded",
            ),
            ApiError::NotReady(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/not-ready",
                "Not ready",
            ),
            ApiError::InvalidCode => (
                StatusCode::UNAUTHORIZED,
                "/problems/invalid-code",
                "Sign-in code not accepted",
            ),
            ApiError::TooManyCodes => (
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/too-many-codes",
                "Too many sign-in codes",
            ),
            ApiError::TooManyRequests => (
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/too-many-requests",
                "Too many requests",
            ),
            ApiError::EmptyAudience(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/empty-audience",
                "Audience reaches no one",
            ),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "/problems/method-not-allowed",
                "Method not allowed",
            ),
            ApiError::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "/problems/unsupported-media-type",
                "Unsupported media type",
            ),
            ApiError::BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "/problems/bad-request",
                "Bad request",
            ),
            ApiError::RequestTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "/problems/request-timeout",
                "Request timeout",
            ),
            ApiError::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "/problems/internal",
                "Internal error",
            ),
            ApiError::ImportHeldBack(_) => (
                StatusCode::CONFLICT,
                "/problems/import-held-back",
                "Roster import held back",
            ),
            ApiError::DistrictSuspended => (
                StatusCode::FORBIDDEN,
                "/problems/district-suspended",
                "District suspended",
            ),
        }
    }
}

impl ApiError {
    /// The problem document, serialised. An internal error's cause is not in it.
    pub fn problem_body(&self) -> Vec<u8> {
        let (status, kind, title) = self.parts();
        let detail = match self {
            ApiError::Internal(_) => None,
            other => Some(other.to_string()),
        };
        let problem = Problem {
            kind,
            title,
            status: status.as_u16(),
            detail,
        };
        let mut body = serde_json::to_value(&problem).unwrap_or_default();
        // An extension member (RFC 9457 §3.2): what the import would have deleted.
        if let ApiError::ImportHeldBack(over) = self {
            body["over_delete_limit"] = serde_json::to_value(over).unwrap_or_default();
        }
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, _) = self.parts();
        if let ApiError::Internal(source) = &self {
            tracing::error!(error = %tidings_core::store::error_chain(source), "request failed");
        }
        let body = self.problem_body();
        let mut response = (status, body).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Errors that axum or a layer answered on its own (a body over the limit, a method the
/// route does not have, a media type it does not read) become problem+json like every
/// other error, with the same status. Pages (`text/html`) and problems pass unchanged.
pub(crate) async fn as_problem(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/problem+json") || content_type.starts_with("text/html")
    {
        return response;
    }
    let (parts, body) = response.into_parts();
    // axum's own rejections say what went wrong in a short text body.
    let detail = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let error = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(detail),
        StatusCode::REQUEST_TIMEOUT => ApiError::RequestTimeout,
        StatusCode::NOT_FOUND => ApiError::NotFound,
        StatusCode::UNAUTHORIZED => ApiError::Unauthorized,
        StatusCode::FORBIDDEN => ApiError::Forbidden,
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::InvalidBody(detail),
        status if status.is_server_error() => {
            tracing::error!(%status, detail, "request failed outside a handler");
            ApiError::Internal(StoreError::Corrupt(format!("{status}: {detail}")))
        }
        _ => ApiError::BadRequest(detail),
    };
    let mut problem = error.into_response();
    // Keep what else the answer said (`Allow` on a 405, for one).
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            problem.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;
    use tidings_core::store::constraint::Rule;

    /// Every problem type is documented in the README's errors table, with its status.
    #[test]
    fn the_readme_lists_every_problem_type() {
        let readme = include_str!("../../README.md");
        let every = [
            ApiError::Unauthorized,
            ApiError::Forbidden,
            ApiError::NotFound,
            ApiError::InvalidBody(String::new()),
            ApiError::InvalidQuery(String::new()),
            ApiError::PayloadTooLarge,
            ApiError::Conflict(String::new()),
            ApiError::InvalidRoster(String::new()),
            ApiError::UnknownAudience(String::new()),
            ApiError::ForbiddenAudience(String::new()),
            ApiError::IdempotencyInFlight,
            ApiError::IdempotencyMismatch,
            ApiError::NotReady(String::new()),
            ApiError::InvalidCode,
            ApiError::TooManyCodes,
            ApiError::TooManyRequests,
            ApiError::EmptyAudience(String::new()),
            ApiError::MethodNotAllowed,
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::BadRequest(String::new()),
            ApiError::RequestTimeout,
            ApiError::ImportHeldBack(Box::new(tidings_core::roster::OverLimit {
                max_delete_percent: 10,
                entities: Vec::new(),
            })),
            ApiError::DistrictSuspended,
            ApiError::Internal(StoreError::Corrupt(String::new())),
        ];
        for error in every {
            let (status, kind, _) = error.parts();
            let row = format!("| `{kind}` | {} |", status.as_u16());
            assert!(readme.contains(&row), "README.md lacks {row}");
        }
    }

    /// A schema rule broken by a request is the caller's conflict or invalid value, told
    /// in words, never a server error.
    #[test]
    fn broken_schema_rules_are_conflicts_or_invalid_values() {
        let duplicate = ApiError::from(StoreError::AlreadyExists("staff.email".into()));
        assert_eq!(duplicate.parts().0, StatusCode::CONFLICT);
        assert_eq!(
            duplicate.to_string(),
            "a staff member with this email address already exists"
        );
        let gone = ApiError::from(StoreError::Violates {
            rule: Rule::ForeignKey,
            constraint: String::new(),
        });
        assert_eq!(gone.parts().0, StatusCode::CONFLICT);
        let lower = ApiError::from(StoreError::Violates {
            rule: Rule::Check,
            constraint: "staff_email_check".into(),
        });
        assert_eq!(lower.parts().0, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(matches!(
            ApiError::from(StoreError::Corrupt(String::new())),
            ApiError::Internal(_)
        ));
    }
}
