//! Logs and traces of a process: `tracing` to stderr, and to an OTLP/HTTP collector when
//! one is configured.
//!
//! # Mechanism
//! [`init`] installs one global `tracing` subscriber with up to two layers:
//!
//! - **logs**: lines on stderr, as text or JSON ([`LogFormat`]), filtered by `STRATA_LOG`,
//!   else `RUST_LOG`, else the given default (`warn` for the CLI, `info` for a node);
//! - **traces**, only with an `otlp_endpoint`: a `tracing-opentelemetry` layer over an
//!   OpenTelemetry tracer whose batch processor exports to `<endpoint>/v1/traces` from its
//!   own thread (with the blocking HTTP client: the async one must not be used there). It
//!   has its own filter: the `strata.*` request spans of the node and the client, at `info`,
//!   whatever the log filter says.
//!
//! A node handles every request inside a [`request_span`]; when the request carried a trace
//! context (see [`strata_client::trace`]), the span's parent is the caller's span, so a
//! client's call, the owner's handling and each replica's apply share one trace id.
//!
//! # Cost when off
//! Without an endpoint no tracing layer wants the request spans, so their call sites are
//! disabled once and `info_span!` costs a relaxed load and a branch; [`request_span`] then
//! skips the parent lookup, and the client sends no trace context.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use strata_proto::wire::TraceContext;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub use crate::config::LogFormat;

/// What [`init`] sets up.
#[derive(Clone, Debug)]
pub struct TelemetryConfig {
    /// `service.name` of the exported spans (`strata-node`, `strata`).
    pub service_name: String,
    /// `service.instance.id`, when there is one (a node's id).
    pub instance: Option<String>,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter when neither `STRATA_LOG` nor `RUST_LOG` is set.
    pub default_filter: String,
    /// Base URL of the OTLP/HTTP collector; none: no traces.
    pub otlp_endpoint: Option<String>,
}

/// Keeps the trace exporter running; flushes and stops it when dropped.
#[derive(Debug, Default)]
#[must_use = "dropping the guard stops exporting spans"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            // Flushes the spans still queued (bounded by the exporter's timeout).
            if let Err(e) = provider.shutdown() {
                eprintln!("strata: could not flush the last spans: {e}");
            }
        }
    }
}

/// Installs the process's subscriber (see the module docs). A second call changes nothing.
pub fn init(config: &TelemetryConfig) -> anyhow::Result<TelemetryGuard> {
    let filter = EnvFilter::try_from_env("STRATA_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(&config.default_filter));
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let Some(endpoint) = &config.otlp_endpoint else {
        let _ = tracing_subscriber::registry().with(logs).try_init();
        return Ok(TelemetryGuard::default());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(traces_url(endpoint))
        .build()?;
    let mut resource = Resource::builder().with_service_name(config.service_name.clone());
    if let Some(instance) = &config.instance {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.clone(),
        ));
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("strata");
    let spans = tracing_subscriber::filter::Targets::new()
        .with_target("strata_node", tracing::Level::INFO)
        .with_target("strata_client", tracing::Level::INFO);
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(spans);
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

/// Where spans are posted: the OTLP/HTTP traces path under `endpoint`.
fn traces_url(endpoint: &str) -> String {
    format!("{}/v1/traces", endpoint.trim_end_matches('/'))
}

/// The span a node handles one request in; a child of the caller's span when the request
/// carried `trace`.
///
/// The cluster's own chatter — Raft RPCs and lease renewals, several per heartbeat — gets a
/// span only when it is part of a trace, so that traces show requests rather than heartbeats.
pub fn request_span(op: &'static str, node: u64, trace: Option<&TraceContext>) -> tracing::Span {
    if trace.is_none() && matches!(op, "raft" | "lease") {
        return tracing::Span::none();
    }
    let span = tracing::info_span!("strata.node", otel.kind = "server", op, node);
    if !span.is_disabled()
        && let Some(parent) = trace.and_then(strata_client::trace::parent_context)
    {
        let _ = span.set_parent(parent);
    }
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_are_posted_under_the_traces_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
    }
}
