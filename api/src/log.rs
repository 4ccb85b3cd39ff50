//! The delivery log, for the install's operators: rewinding a partition.

use axum::extract::State;
use serde::Deserialize;
use tidings_core::services::districts::Operator;
use tidings_core::services::Refusal;
use tidings_core::store::rewind::Rewound;
use tidings_core::Lane;

use crate::extract::Json;
use crate::{ApiError, AppState, Caller};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RewindRequest {
    /// emergency, normal or bulk.
    pub lane: String,
    pub partition: u32,
    /// The first offset to read again.
    pub from_offset: i64,
}

/// Moves the dispatchers' offset of a partition back so that its entries from
/// `from_offset` on are read again: what among them still waits to be sent goes (an
/// unfinished attempt under its idempotency key); what was sent, failed or cancelled is
/// left alone. Refused for a range holding an at-most-once delivery already attempted,
/// for entries no longer on the log, and within 10 minutes of the partition's last
/// rewind. Operators of the install; audited in each district with entries in the range.
#[utoipa::path(post, path = "/api/v1/log/rewind", tag = "operators", security(("bearer" = [])),
    request_body = RewindRequest,
    responses(
        (status = 200, description = "Rewound: the entries read again, and how many of their deliveries wait to be sent", body = Rewound),
        (status = 403, description = "Not an operator of the install", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "An at-most-once delivery attempted in the range, entries purged, or rewound too recently", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "An unknown lane, or nothing consumed from that offset", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn rewind(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Json(body): Json<RewindRequest>,
) -> Result<axum::Json<Rewound>, ApiError> {
    let lane: Lane = body
        .lane
        .parse()
        .map_err(|_| Refusal::Invalid(format!("unknown lane {:?}", body.lane)))?;
    Ok(axum::Json(
        state
            .services()
            .rewind_partition(
                Operator::Staff(&caller),
                lane,
                body.partition,
                body.from_offset,
            )
            .await?,
    ))
}
