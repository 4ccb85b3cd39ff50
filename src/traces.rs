//! Traces through OpenTelemetry, off unless `otlp_endpoint` is set: every `tracing` span
//! of the process (a staff request, a service call, a fan-out chunk, a dispatch batch, a
//! provider call, a provider's report) is exported over OTLP/HTTP (protobuf) to a
//! collector. A caller's W3C `traceparent` header makes its request the parent of the
//! request's span, and the message a request writes keeps its span's context, which the
//! deliveries' spans link to.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use tracing_subscriber::registry::LookupSpan;

/// The exporter of a process; spans still buffered are sent when it is dropped.
pub struct Traces {
    provider: opentelemetry_sdk::trace::SdkTracerProvider,
}

impl Drop for Traces {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            eprintln!("tidings: could not send the last traces: {e}");
        }
    }
}

/// The layer that turns spans into OpenTelemetry spans sent to `endpoint` (a collector's
/// OTLP/HTTP base address, e.g. `http://127.0.0.1:4318`), and the exporter to keep alive.
pub fn layer<S>(
    endpoint: &str,
    service_name: &str,
) -> anyhow::Result<(impl tracing_subscriber::Layer<S>, Traces)>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .with_context(|| format!("cannot export traces to {endpoint} (otlp_endpoint)"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service_name.to_owned())
        .build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let tracer = provider.tracer("tidings");
    let layer = tracing_opentelemetry::layer().with_tracer(tracer);
    Ok((layer, Traces { provider }))
}
