//! Extractors whose rejections are `ApiError`s, so that a malformed body or query is
//! problem+json like every other error.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::ApiError;

/// Longest search text (`?q=`) a listing takes.
pub const MAX_SEARCH_CHARS: usize = 200;

/// A JSON body.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                let media = v.split(';').next().unwrap_or_default().trim();
                media.eq_ignore_ascii_case("application/json")
                    || media.to_ascii_lowercase().ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::InvalidBody(
                "Expected request with `Content-Type: application/json`".into(),
            ));
        }
        let Body(body) = Body::from_request(request, state).await?;
        json_body(&body).map(Json)
    }
}

/// A request body of at most the route's limit (`MAX_BODY_BYTES` unless it says
/// otherwise), its rejections as problems.
pub struct Body(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(request, state)
            .await
            .map(Body)
            .map_err(body_error)
    }
}

/// What a body that could not be read means for the client.
pub(crate) fn body_error(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge
    } else if std::error::Error::source(&rejection)
        .and_then(|e| e.source())
        .is_some_and(|e| e.is::<tower_http::timeout::TimeoutError>())
    {
        ApiError::RequestTimeout
    } else {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// A JSON document parsed as `T`, its text checked first (`storable_json`).
pub(crate) fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    storable_json(body)?;
    serde_json::from_slice(body).map_err(|e| ApiError::InvalidBody(e.to_string()))
}

/// PostgreSQL's text holds no NUL character, so a NUL anywhere in a request's text is
/// refused here, at the edge, and both stores see the same requests. In JSON a NUL can
/// only be the escape `\u0000` inside a string (a raw control character is not JSON).
pub(crate) fn storable_json(body: &[u8]) -> Result<(), ApiError> {
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            if body[i + 1..].starts_with(b"u0000") {
                return Err(ApiError::InvalidBody(
                    "text must not contain the NUL character (\\u0000)".into(),
                ));
            }
            // Whatever the escape, the character after the backslash is part of it.
            i += 2;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// The same for a query string: a NUL arrives as `%00`.
pub(crate) fn storable_query(query: Option<&str>) -> Result<(), ApiError> {
    if query.is_some_and(|q| q.as_bytes().windows(3).any(|w| w == b"%00")) {
        return Err(ApiError::InvalidQuery(
            "text must not contain the NUL character (%00)".into(),
        ));
    }
    Ok(())
}

/// A query string.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        storable_query(parts.uri.query())?;
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Query(value))
            .map_err(|rejection: QueryRejection| ApiError::InvalidQuery(rejection.body_text()))
    }
}

/// A path parameter.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| Path(value))
            .map_err(|_| ApiError::NotFound)
    }
}

/// The client's address (`server::client_address`): the peer, or behind a trusted proxy
/// the address that proxy saw. `None` when the router is driven without a listener.
pub struct ClientAddress(pub Option<std::net::IpAddr>);

impl FromRequestParts<crate::AppState> for ClientAddress {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::AppState,
    ) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|info| info.0);
        Ok(ClientAddress(crate::server::client_address(
            peer,
            &parts.headers,
            &state.trusted_proxies,
        )))
    }
}
