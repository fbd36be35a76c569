//! What every service reports about itself: logs on standard error (`RUST_LOG`), its spans
//! as OpenTelemetry traces, a few metrics, and the W3C trace context (`traceparent`) that
//! ties one request's spans together across the gateway, the stream service and the jobs
//! it queues for workers.
//!
//! Traces and metrics are sent over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or the
//! signal's own `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`) is set, with
//! the other standard `OTEL_*` variables (headers, timeout, `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`). Without one, spans still get trace ids, which propagate and
//! show in logs of other services that export, and nothing is sent anywhere.

use http::HeaderMap;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, global};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::collections::HashMap;
use std::time::Duration;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// Trace context as text, carried inside a queued job (`traceparent`, `tracestate`).
pub type TraceCarrier = HashMap<String, String>;

/// The providers `init` installed. Keep it for the life of the process, and `shutdown` it
/// before exiting, so that the last spans and metrics are sent.
#[must_use = "dropping the telemetry handle would lose the spans still buffered"]
pub struct Telemetry {
    tracer: SdkTracerProvider,
    meter: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Sends what is buffered, waiting at most a few seconds, and stops the exporters.
    pub fn shutdown(self) {
        const GRACE: Duration = Duration::from_secs(5);
        if let Err(err) = self.tracer.shutdown_with_timeout(GRACE) {
            tracing::warn!(error = %err, "could not send the last spans");
        }
        if let Some(meter) = self.meter
            && let Err(err) = meter.shutdown_with_timeout(GRACE)
        {
            tracing::warn!(error = %err, "could not send the last metrics");
        }
    }
}

/// Sets up logs, traces and metrics for `service` (`velour-gateway`, ...), the name its
/// spans carry unless `OTEL_SERVICE_NAME` says otherwise.
pub fn init(service: &'static str) -> anyhow::Result<Telemetry> {
    let resource = resource(service);
    let mut tracer = tracer_builder(resource.clone());
    if endpoint_set("TRACES") {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
        tracer = tracer.with_batch_exporter(exporter);
    }
    let tracer = tracer.build();
    let meter = if endpoint_set("METRICS") {
        let exporter = opentelemetry_otlp::MetricExporter::builder().with_http().build()?;
        let reader = PeriodicReader::builder(exporter).build();
        Some(SdkMeterProvider::builder().with_resource(resource).with_reader(reader).build())
    } else {
        None
    };
    install_propagator();
    global::set_tracer_provider(tracer.clone());
    if let Some(meter) = &meter {
        global::set_meter_provider(meter.clone());
    }

    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(logs),
        )
        .with(span_layer(&tracer))
        .try_init()?;
    Ok(Telemetry { tracer, meter })
}

/// A tracer provider for `resource`, without exporters. Every span is recorded whatever
/// a caller's `traceparent` says about sampling: a client must not be able to keep its
/// requests out of traces. Sampling, if wanted, belongs in the collector (tail sampling),
/// which sees whole traces.
fn tracer_builder(resource: Resource) -> opentelemetry_sdk::trace::TracerProviderBuilder {
    SdkTracerProvider::builder().with_resource(resource).with_sampler(Sampler::AlwaysOn)
}

/// Turns the spans of `tracing` (INFO and above, whatever `RUST_LOG` keeps of the logs)
/// into OpenTelemetry spans of `provider`.
pub fn span_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("velour"))
        .with_filter(LevelFilter::INFO)
}

/// W3C trace context (`traceparent`, `tracestate`), as every service reads and writes it.
/// No baggage: Velour sets none, and what a client sends would travel into the stream
/// service and queued jobs on its say-so.
pub fn install_propagator() {
    global::set_text_map_propagator(TraceContextPropagator::new());
}

fn resource(service: &'static str) -> Resource {
    let builder = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.trim().is_empty());
    let builder = if named { builder } else { builder.with_service_name(service) };
    builder
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

fn endpoint_set(signal: &str) -> bool {
    ["OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()))
}

/// Writes the current span's trace context into outgoing request headers.
pub fn inject_headers(headers: &mut HeaderMap) {
    let context = Span::current().context();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// Makes `span` (not yet entered) a child of the trace context the request headers carry,
/// if they carry a valid one.
pub fn adopt_headers(span: &Span, headers: &HeaderMap) {
    let context = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
    adopt(span, context);
}

/// The current span's trace context, to carry in a queued job.
pub fn current_carrier() -> TraceCarrier {
    let context = Span::current().context();
    let mut carrier = TraceCarrier::new();
    global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut carrier);
    });
    carrier
}

/// Makes `span` (not yet entered) a child of the trace context a job carried.
pub fn adopt_carrier(span: &Span, carrier: &TraceCarrier) {
    let context = global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    adopt(span, context);
}

fn adopt(span: &Span, context: Context) {
    if context.span().span_context().is_valid() {
        // Refused only when the span is disabled or already entered; then it keeps the
        // parent it has.
        let _ = span.set_parent(context);
    }
}

/// The trace id of `span`, in the 32 hex digits of `traceparent` (all zeros without one).
pub fn trace_id(span: &Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}

/// A poem middleware: one server span per request, child of the caller's `traceparent`,
/// recording the method, the path (never the query, which may hold a signed URL's
/// signature) and the status; and one log line when the answer is ready.
pub async fn trace_request<E: poem::Endpoint>(
    next: E,
    req: poem::Request,
) -> poem::Result<poem::Response> {
    use poem::IntoResponse;
    use tracing::Instrument as _;
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        otel.name = %method,
        otel.kind = "server",
        http.request.method = %method,
        url.path = %req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    adopt_headers(&span, req.headers());
    let started = std::time::Instant::now();
    let result = next.call(req).instrument(span.clone()).await.map(IntoResponse::into_response);
    let status = match &result {
        Ok(response) => response.status(),
        Err(err) => err.status(),
    };
    span.record("http.response.status_code", status.as_u16());
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(parent: &span, status = status.as_u16(), elapsed_ms, "answered");
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::InMemorySpanExporter;

    #[test]
    fn trace_context_crosses_headers_and_jobs_and_nothing_else() {
        let exporter = InMemorySpanExporter::default();
        let provider =
            tracer_builder(resource("test")).with_simple_exporter(exporter.clone()).build();
        let subscriber = tracing_subscriber::registry().with(span_layer(&provider));
        install_propagator();
        tracing::subscriber::with_default(subscriber, || {
            let caller = tracing::info_span!("caller");
            let mut headers = HeaderMap::new();
            let carrier = caller.in_scope(|| {
                inject_headers(&mut headers);
                current_carrier()
            });
            let trace = trace_id(&caller);
            assert_ne!(trace, "00000000000000000000000000000000");
            let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
            assert!(traceparent.is_some_and(|v| v.contains(&trace)), "{headers:?}");

            let over_http = tracing::info_span!("served");
            adopt_headers(&over_http, &headers);
            assert_eq!(trace_id(&over_http), trace);
            let from_job = tracing::info_span!("job");
            adopt_carrier(&from_job, &carrier);
            assert_eq!(trace_id(&from_job), trace);

            // No context, or a malformed one: a trace of its own.
            let mut bad = HeaderMap::new();
            bad.insert("traceparent", http::HeaderValue::from_static("00-zz-zz-01"));
            let alone = tracing::info_span!("alone");
            adopt_headers(&alone, &bad);
            assert_ne!(trace_id(&alone), trace);

            // A caller that asks not to be sampled is traced all the same, and the baggage
            // it sends goes no further.
            let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
            let mut unsampled = HeaderMap::new();
            let parent = format!("00-{trace}-00f067aa0ba902b7-00");
            unsampled.insert("traceparent", http::HeaderValue::from_str(&parent).unwrap());
            unsampled.insert("baggage", http::HeaderValue::from_static("user=alice"));
            let hidden = tracing::info_span!("hidden");
            adopt_headers(&hidden, &unsampled);
            assert_eq!(trace_id(&hidden), trace);
            let passed_on = hidden.in_scope(current_carrier);
            assert!(!passed_on.contains_key("baggage"), "{passed_on:?}");
            drop((caller, over_http, from_job, alone, hidden));
        });
        let spans = exporter.get_finished_spans().unwrap_or_default();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["caller", "served", "job", "alone", "hidden"]);
    }
}
