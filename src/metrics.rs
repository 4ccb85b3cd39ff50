//! `/metrics`: what the process has done, in Prometheus' text format. The dispatcher and
//! the callbacks count in their own atomics; each scrape copies those counts (and the
//! callback inbox's backlog) into the `metrics` registry and renders it.

use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tidings_core::store::Store;

#[derive(Clone)]
struct Sources {
    handle: PrometheusHandle,
    store: Arc<dyn Store>,
    dispatcher: Option<Arc<tidings_dispatcher::Counters>>,
    callbacks: Arc<tidings_callbacks::Counters>,
}

/// The `/metrics` route. Installs the process-wide recorder (once per process).
pub fn router(
    store: Arc<dyn Store>,
    dispatcher: Option<Arc<tidings_dispatcher::Counters>>,
    callbacks: Arc<tidings_callbacks::Counters>,
) -> anyhow::Result<Router> {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| anyhow::anyhow!("cannot start the metrics recorder: {e}"))?;
    let sources = Sources {
        handle,
        store,
        dispatcher,
        callbacks,
    };
    Ok(Router::new()
        .route("/metrics", get(scrape))
        .with_state(sources))
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
    if let Some(dispatcher) = &s.dispatcher {
        let t = dispatcher.totals();
        for (outcome, value) in [
            ("sent", t.sent),
            ("retried", t.retried),
            ("failed", t.failed),
            ("in_doubt", t.in_doubt),
            ("lost_in_doubt", t.lost_in_doubt),
            ("fenced", t.fenced),
            ("record_retried", t.record_retried),
            ("deferred", t.deferred),
            ("quarantined", t.quarantined),
            ("opted_out", t.opted_out),
            ("retired", t.retired),
            ("standby_skipped", t.standbys_skipped),
        ] {
            metrics::counter!("tidings_dispatch_total", "outcome" => outcome).absolute(value);
        }
    }
    for (result, value) in s.callbacks.snapshot() {
        metrics::counter!("tidings_callbacks_total", "result" => result).absolute(value);
    }
    match s
        .store
        .consumer_lag(tidings_dispatcher::CONSUMER_GROUP)
        .await
    {
        Ok(lags) => {
            for (lane, partition, lag) in lags {
                metrics::gauge!("tidings_consumer_lag", "lane" => lane.as_str(), "partition" => partition.to_string())
                    .set(lag as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the consumer lag"),
    }
    match s.store.inbox_counts().await {
        Ok(counts) => {
            for status in ["pending", "applied", "ignored", "rejected"] {
                let n = counts.get(status).copied().unwrap_or(0);
                metrics::gauge!("tidings_callback_inbox", "status" => status).set(n as f64);
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read the callback inbox"),
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        s.handle.render(),
    )
}
