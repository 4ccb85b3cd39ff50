//! The metrics Tidings records where things happen, through the `metrics` crate's facade
//! (the binary installs the Prometheus recorder that `/metrics` renders; without one,
//! recording costs next to nothing). Every name is listed in [`METRICS`] once, with what
//! it counts, so that the alert rules and the dashboard in `docs/` are checked against
//! them. Labels name districts, channels, lanes, providers and routes — never a guardian
//! or an address.

use chrono::{DateTime, Utc};

use crate::delivery::{Change, Delivery};
use crate::DeliveryState;

/// Moves of deliveries into a state: `state`, `channel`, `district`.
pub const DELIVERY_MOVES: &str = "tidings_delivery_moves_total";
/// How long a delivery spent in a stage of its way: `stage` (`created_to_sent`,
/// `sent_to_delivered`, `delivered_to_acked`, `sent_to_acked`), `channel`. Histogram.
pub const DELIVERY_STAGE_SECONDS: &str = "tidings_delivery_stage_seconds";
/// Provider calls and how they ended: `channel`, `lane`, `outcome` (`sent`, `retried`,
/// `failed`, `opted_out`), `in_doubt` (`true` when the call may have reached the
/// provider unanswered).
pub const ATTEMPTS: &str = "tidings_attempts_total";
/// What the dispatchers did, by `outcome` (see the runbooks).
pub const DISPATCH: &str = "tidings_dispatch_total";
/// Times a provider's rate held sends back for a moment (a batch read off the log cut
/// short, a due delivery left for the next look): `provider`.
pub const RATE_LIMIT_WAITS: &str = "tidings_rate_limit_waits_total";
/// 1 while a provider's circuit breaker is open (its sends paused), else 0: `provider`.
pub const BREAKER_OPEN: &str = "tidings_provider_breaker_open";
/// Sends a dispatcher lets be in flight to a provider at once, as it adapts to the
/// provider's answers: `provider`.
pub const PROVIDER_CONCURRENCY: &str = "tidings_provider_concurrency";
/// Requests and events the callbacks handled, by `result`.
pub const CALLBACKS: &str = "tidings_callbacks_total";
/// Callback requests refused: `provider`, `reason`.
pub const CALLBACK_REJECTS: &str = "tidings_callback_rejects_total";
/// Repeats that were recognised and not acted on twice: `kind` (`idempotency_replay`,
/// `provider_event`, `stale_event`).
pub const DUPLICATES_SUPPRESSED: &str = "tidings_duplicates_suppressed_total";
/// HTTP requests served: `route` (the pattern, not the path), `method`, `status`.
/// Histogram of seconds.
pub const HTTP_REQUEST_SECONDS: &str = "tidings_http_request_seconds";
/// Log entries not yet consumed: `lane`, `partition`. Read at each scrape.
pub const CONSUMER_LAG: &str = "tidings_consumer_lag";
/// Age of the oldest entry not yet consumed, in seconds (0 when none): `lane`,
/// `partition`. Read at each scrape.
pub const CONSUMER_LAG_SECONDS: &str = "tidings_consumer_lag_seconds";
/// Partitions no live dispatcher holds a lease on while their entries wait: `lane`.
/// Read at each scrape.
pub const PARTITIONS_UNHELD: &str = "tidings_partitions_unheld";
/// Deliveries that failed for good (the dead letters staff can replay): `district`.
/// Read at each scrape.
pub const DEAD_LETTERS: &str = "tidings_dead_letters";
/// Provider events in the callback inbox, by `status`. Read at each scrape.
pub const CALLBACK_INBOX: &str = "tidings_callback_inbox";

/// Every metric name, with its Prometheus type.
pub const METRICS: &[(&str, &str)] = &[
    (DELIVERY_MOVES, "counter"),
    (DELIVERY_STAGE_SECONDS, "histogram"),
    (ATTEMPTS, "counter"),
    (DISPATCH, "counter"),
    (RATE_LIMIT_WAITS, "counter"),
    (BREAKER_OPEN, "gauge"),
    (PROVIDER_CONCURRENCY, "gauge"),
    (CALLBACKS, "counter"),
    (CALLBACK_REJECTS, "counter"),
    (DUPLICATES_SUPPRESSED, "counter"),
    (HTTP_REQUEST_SECONDS, "histogram"),
    (CONSUMER_LAG, "gauge"),
    (CONSUMER_LAG_SECONDS, "gauge"),
    (PARTITIONS_UNHELD, "gauge"),
    (DEAD_LETTERS, "gauge"),
    (CALLBACK_INBOX, "gauge"),
];

/// The bucket bounds of the stage histograms, in seconds: from a fast send to a guardian
/// who acknowledges the next day.
pub const STAGE_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 10800.0,
    43200.0, 86400.0,
];

/// The bucket bounds of request latency, in seconds.
pub const REQUEST_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The stage a move from `from` to `to` ends, and when it began (`created`: the
/// delivery's creation; `since`: when it was last written).
fn stage(
    from: DeliveryState,
    to: DeliveryState,
    created: DateTime<Utc>,
    since: DateTime<Utc>,
) -> Option<(&'static str, DateTime<Utc>)> {
    use DeliveryState::*;
    match (from, to) {
        (Created | Queued, Sent) => Some(("created_to_sent", created)),
        (Sent, Delivered) => Some(("sent_to_delivered", since)),
        (Delivered, Acked) => Some(("delivered_to_acked", since)),
        (Sent, Acked) => Some(("sent_to_acked", since)),
        _ => None,
    }
}

/// Records a written change that moved its delivery (now `after`) into another state.
pub fn moved(change: &Change, after: &Delivery) {
    let t = &change.transition;
    if !change.moves() {
        return;
    }
    metrics::counter!(
        DELIVERY_MOVES,
        "state" => t.to.as_str(),
        "channel" => after.channel.as_str(),
        "district" => after.district_id.to_string(),
    )
    .increment(1);
    if let Some((name, began)) = stage(t.from, t.to, after.created_at, t.since) {
        let seconds = (t.at - began).num_milliseconds().max(0) as f64 / 1000.0;
        metrics::histogram!(
            DELIVERY_STAGE_SECONDS,
            "stage" => name,
            "channel" => after.channel.as_str(),
        )
        .record(seconds);
    }
}

/// The W3C `traceparent` of the current span (`00-<trace id>-<span id>-<flags>`), when
/// spans are exported; kept with what a request writes (a message), so that the work
/// done for it later, elsewhere, links back to it.
pub fn traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let context = tracing::Span::current().context();
    let span = context.span();
    let span = span.span_context();
    span.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span.trace_id(),
            span.span_id(),
            span.trace_flags().to_u8()
        )
    })
}

/// The span context a W3C `traceparent` names, when it is well formed (version 00).
fn span_context(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00"
        || parts.next().is_some()
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// Makes `span` the child of the caller's span a `traceparent` header names (W3C trace
/// context); a malformed one is ignored.
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if let Some(parent) = span_context(traceparent) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// Links `span` to the span a `traceparent` names (a delivery's work to the request that
/// created its message).
pub fn link(span: &tracing::Span, traceparent: &str) {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    if let Some(to) = span_context(traceparent) {
        span.add_link(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_stage_is_timed_from_where_it_began() {
        let created = DateTime::from_timestamp(1_000, 0).unwrap();
        let since = DateTime::from_timestamp(2_000, 0).unwrap();
        use DeliveryState::*;
        assert_eq!(
            stage(Queued, Sent, created, since),
            Some(("created_to_sent", created))
        );
        assert_eq!(
            stage(Sent, Delivered, created, since),
            Some(("sent_to_delivered", since))
        );
        assert_eq!(
            stage(Delivered, Acked, created, since),
            Some(("delivered_to_acked", since))
        );
        assert_eq!(stage(Created, Queued, created, since), None);
        assert_eq!(stage(Sent, Failed, created, since), None);
    }

    #[test]
    fn only_a_well_formed_traceparent_names_a_span() {
        let given = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = span_context(given).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled() && context.is_remote());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(span_context(bad).is_none(), "{bad}");
        }
    }

    proptest::proptest! {
        /// Any valid trace and span ids with any flags read back as written.
        #[test]
        fn a_traceparent_reads_back_as_written(
            trace in 1u128..,
            span in 1u64..,
            flags in proptest::num::u8::ANY,
        ) {
            let text = format!("00-{trace:032x}-{span:016x}-{flags:02x}");
            let context = span_context(&text).unwrap();
            proptest::prop_assert_eq!(context.trace_id().to_string(), format!("{trace:032x}"));
            proptest::prop_assert_eq!(context.span_id().to_string(), format!("{span:016x}"));
            proptest::prop_assert_eq!(context.trace_flags().to_u8(), flags);
        }

        /// Whatever a caller sends, reading it never panics, and what is read names the
        /// ids the text holds.
        #[test]
        fn any_header_is_read_without_panic(text in "\\PC{0,80}|00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}") {
            if let Some(context) = span_context(&text) {
                let trace = context.trace_id().to_string();
                let span = context.span_id().to_string();
                let ids = format!("{trace}-{span}");
                proptest::prop_assert!(text.to_lowercase().contains(&ids), "{} not in {}", ids, text);
            }
        }
    }

    #[test]
    fn every_name_is_a_prometheus_name_listed_once() {
        let mut names: Vec<&str> = METRICS.iter().map(|(n, _)| *n).collect();
        assert!(names
            .iter()
            .all(|n| n.starts_with("tidings_")
                && n.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
        names.sort();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
    }
}
