//! `/metrics`: what the process has done, in Prometheus' text format. Counters and
//! histograms are recorded where things happen (see `tidings_core::telemetry` for every
//! name); each scrape adds the state only the database knows — the log's backlog per
//! partition and its age, partitions no dispatcher holds, the dead letters, the callback
//! inbox — and renders the registry.

use std::sync::Arc;

use axum::extract::{MatchedPath, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tidings_core::store::Store;
use tidings_core::telemetry as names;

#[derive(Clone)]
struct Sources {
    handle: PrometheusHandle,
    store: Arc<dyn Store>,
    /// What leases are judged live by at a scrape.
    clock: Arc<dyn tidings_core::clock::Clock>,
    /// Districts with dead letters at an earlier scrape: set to 0 once they have none.
    dead_letter_districts: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
}

/// The process-wide recorder, installed once: metrics recorded before it are not kept.
fn recorder() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(names::DELIVERY_STAGE_SECONDS.into()),
            names::STAGE_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::HTTP_REQUEST_SECONDS.into()),
                names::REQUEST_BUCKETS,
            )
        })
        .map_err(|e| anyhow::anyhow!("cannot set the metrics' buckets: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot start the metrics recorder: {e}"))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// Installs the process-wide recorder (once per process), so that what happens from now
/// on is counted; call before starting the dispatcher and the callbacks.
pub fn install() -> anyhow::Result<()> {
    recorder().map(|_| ())
}

/// The `/metrics` route.
pub fn router(
    store: Arc<dyn Store>,
    clock: Arc<dyn tidings_core::clock::Clock>,
) -> anyhow::Result<Router> {
    let sources = Sources {
        handle: recorder()?,
        store,
        clock,
        dead_letter_districts: Arc::default(),
    };
    Ok(Router::new()
        .route("/metrics", get(scrape))
        .with_state(sources))
}

/// Times every request by its route's pattern (never its path: no ids in labels), method
/// and status, in `tidings_http_request_seconds`, and serves it in a span of its own: the
/// child of the caller's span when the request carries a W3C `traceparent` header.
pub async fn timed(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument as _;
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method: &'static str = match request.method().as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
    );
    if let Some(caller) = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
    {
        tidings_core::telemetry::continue_trace(&span, caller);
    }
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    metrics::histogram!(
        names::HTTP_REQUEST_SECONDS,
        "route" => route,
        "method" => method,
        "status" => response.status().as_u16().to_string(),
    )
    .record(started.elapsed().as_secs_f64());
    response
}

/// `/metrics` on the public listener: answered only to a client on this machine that
/// connects directly — from a loopback address and without a proxy's `Forwarded` or
/// `X-Forwarded-For` header (a reverse proxy on the same machine connects from loopback
/// too, on behalf of anyone). Anyone else finds no such page.
pub fn local_only(metrics: Router) -> Router {
    metrics.layer(axum::middleware::from_fn(
        |request: axum::extract::Request, next: axum::middleware::Next| async move {
            let direct = request
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .is_some_and(|peer| peer.0.ip().is_loopback())
                && !request.headers().contains_key("forwarded")
                && !request.headers().contains_key("x-forwarded-for");
            if direct {
                next.run(request).await
            } else {
                tidings_api::ApiError::NotFound.into_response()
            }
        },
    ))
}

async fn scrape(State(s): State<Sources>) -> impl IntoResponse {
    let at = s.clock.now();
    match s
        .store
        .watch_partitions(tidings_dispatcher::CONSUMER_GROUP, at)
        .await
    {
        Ok(partitions) => {
            let mut unheld: std::collections::BTreeMap<&str, u32> = Default::default();
            for p in partitions {
                let (lane, partition) = (p.lane.as_str(), p.partition.to_string());
                metrics::gauge!(names::CONSUMER_LAG, "lane" => lane, "partition" => partition.clone())
                    .set(p.waiting as f64);
                let age = p.oldest.map_or(0.0, |oldest| {
                    (at - oldest).num_milliseconds().max(0) as f64 / 1000.0
                });
                metrics::gauge!(names::CONSUMER_LAG_SECONDS, "lane" => lane, "partition" => partition)
                    .set(age);
                *unheld.entry(lane).or_default() += u32::from(p.waiting > 0 && !p.held);
            }
            for (lane, n) in unheld {
                metrics::gauge!(names::PARTITIONS_UNHELD, "lane" => lane).set(f64::from(n));
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the log's partitions"),
    }
    match s.store.dead_letter_counts().await {
        Ok(counts) => {
            let now: std::collections::BTreeMap<String, u64> = counts
                .into_iter()
                .map(|(district, n)| (district.to_string(), n))
                .collect();
            let mut known = s
                .dead_letter_districts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            known.extend(now.keys().cloned());
            for district in known.iter() {
                let n = now.get(district).copied().unwrap_or(0);
                metrics::gauge!(names::DEAD_LETTERS, "district" => district.clone()).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count the dead letters"),
    }
    match s.store.inbox_counts().await {
        Ok(counts) => {
            for status in ["pending", "applied", "ignored", "rejected"] {
                let n = counts.get(status).copied().unwrap_or(0);
                metrics::gauge!(names::CALLBACK_INBOX, "status" => status).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the callback inbox"),
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.handle.render(),
    )
}
