//! The OTLP exporter of the product, from the standard variables.
//!
//! OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `…_TRACES_ENDPOINT`) is set: protocol from
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, the default, or `grpc`), service name and
//! resource from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, sampler from
//! `OTEL_TRACES_SAMPLER`. Without an endpoint nothing is exported and nothing is retried. The
//! subscriber itself (logs, the span layer, the span names) is the runtime's
//! ([`runner_updater_runtime::telemetry`]).

use opentelemetry_sdk::trace::SdkTracerProvider;
use runner_updater_runtime::telemetry::{init_with, LogFormat, Telemetry};

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable has a value this build does not support.
    #[error("{0}")]
    Unsupported(String),
    /// The exporter could not be built.
    #[error("OpenTelemetry exporter: {0}")]
    Exporter(String),
}

fn env_value(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
}

/// Builds the exporting tracer provider from the standard variables, or `None` when no
/// endpoint is set.
///
/// # Errors
/// An unsupported protocol, or an exporter that cannot be built.
pub fn provider_from_env() -> Result<Option<SdkTracerProvider>, TelemetryError> {
    if env_value(&[
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ])
    .is_none()
    {
        return Ok(None);
    }
    let protocol = env_value(&[
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ])
    .unwrap_or_else(|| "http/protobuf".to_owned());
    let exporter = match protocol.as_str() {
        "grpc" => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build(),
        "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build(),
        other => {
            return Err(TelemetryError::Unsupported(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={other:?}: use \"http/protobuf\" or \"grpc\""
            )))
        }
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if env_value(&["OTEL_SERVICE_NAME"]).is_none() {
        resource = resource.with_service_name("runner-updater");
    }
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource.build())
            .build(),
    ))
}

/// Installs logging and tracing as the global subscriber, exporting by OTLP when the standard
/// variables ask for it. Call from within the tokio runtime.
///
/// # Errors
/// As [`provider_from_env`].
pub fn init(format: LogFormat, default_level: &str) -> Result<Telemetry, TelemetryError> {
    Ok(init_with(format, default_level, provider_from_env()?))
}
