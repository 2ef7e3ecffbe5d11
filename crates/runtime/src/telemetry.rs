//! Telemetry: logs (`tracing-subscriber`, text or JSON) and OpenTelemetry traces.
//!
//! # Traces
//! - One trace per update attempt. Its root span, `update <runner> <from> → <to>`, is short: it
//!   is created when the attempt starts and ended at once, so it is exported even if the process
//!   dies later. Its W3C `traceparent` is persisted in the record.
//! - Each state the attempt passes through is a span, a child of that root, opened when the
//!   state is entered and ended when it is left. After a restart the restored state's span is
//!   parented to the persisted `traceparent`: one trace tells the whole update, crash included.
//! - Each command is a span under its state's span.
//!
//! # Export
//! The exporter is the product's (`runner-updater`'s `telemetry` module builds OTLP from the
//! standard `OTEL_*` variables); this module assembles the subscriber around whatever provider
//! it is given, and names the spans.

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry::Context;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use runner_updater_core::domain::eligibility::Verdict;
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::machine::{Attempt, ChangeSetStep};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// The installed telemetry; [`shutdown`](Telemetry::shutdown) flushes the spans.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether traces are exported.
    #[must_use]
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter (bounded by the SDK's own export timeout).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(error) = provider.shutdown() {
                tracing::warn!(%error, "flushing spans at shutdown failed");
            }
        }
    }
}

/// Installs logging and tracing as the global subscriber, with `provider` exporting the spans
/// (the product builds an OTLP one from the standard variables; the demo passes none). Call
/// from within the tokio runtime.
///
/// Without a provider, spans still get trace ids (a tracer provider with no exporter): the
/// record, `status` and the log lines name each attempt's trace all the same, and nothing is
/// sent or retried.
#[must_use]
pub fn init_with(
    format: LogFormat,
    default_level: &str,
    provider: Option<SdkTracerProvider>,
) -> Telemetry {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let tracer = provider.as_ref().map_or_else(
        || {
            SdkTracerProvider::builder()
                .build()
                .tracer("runner-updater")
        },
        |p| p.tracer("runner-updater"),
    );
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    // `RUST_LOG` (or the default level) filters the log lines only: spans are recorded for the
    // traces whatever the log level, so quiet commands still name their traces.
    let logs = match format {
        // Colour only on a terminal, and never with `NO_COLOR` set: a pod's log file, a
        // pipe or a collector gets plain text.
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    // A second initialisation only happens in tests of main; ignoring it is harmless.
    let _ = tracing_subscriber::registry()
        .with(logs)
        .with(otel)
        .try_init();
    Telemetry { provider }
}

use tracing_subscriber::Layer as _;

/// The W3C `traceparent` of a span, when it is recorded by OpenTelemetry.
#[must_use]
pub fn traceparent(span: &Span) -> Option<String> {
    let context = span.context();
    let span_ref = context.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The trace id in a `traceparent`.
#[must_use]
pub fn trace_id(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1)
}

/// Parses a W3C `traceparent` into a remote parent context.
#[must_use]
pub fn parent_context(traceparent: &str) -> Option<Context> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 {
        return None;
    }
    let context = SpanContext::new(
        TraceId::from_hex(trace).ok()?,
        SpanId::from_hex(span).ok()?,
        TraceFlags::new(u8::from_str_radix(flags, 16).ok()?),
        true,
        TraceState::default(),
    );
    context
        .is_valid()
        .then(|| Context::new().with_remote_span_context(context))
}

/// The root span of an attempt (ended by the caller at once, so a crash cannot lose it).
#[must_use]
pub fn attempt_span(runner: &str, attempt: &Attempt) -> Span {
    let from = attempt
        .from_version
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), ToString::to_string);
    let name = format!("update {runner} {from} → {}", attempt.target_version);
    tracing::info_span!(
        parent: None,
        "attempt",
        otel.name = %name,
        runner = %runner,
        attempt.id = %attempt.id,
        version.from = %from,
        version.to = %attempt.target_version,
        image.to = %attempt.target_image,
        infra.version = attempt.infra_version.as_deref().unwrap_or(""),
    )
}

/// The span of one state of an attempt, parented to the attempt's trace. It carries the trace
/// id as a field too, so every log line inside the update names its trace.
#[must_use]
pub fn state_span(
    runner: &str,
    phase: Phase,
    attempt: &Attempt,
    epoch: Option<u64>,
    traceparent: Option<&str>,
    resumed: bool,
) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "state",
        otel.name = phase.name(),
        runner = %runner,
        state = phase.name(),
        attempt.id = %attempt.id,
        version.to = %attempt.target_version,
        lock.epoch = epoch.unwrap_or_default(),
        resumed,
        trace_id = tracing::field::Empty,
    );
    if let Some(id) = traceparent.and_then(trace_id) {
        span.record("trace_id", id);
    }
    if let Some(context) = traceparent.and_then(parent_context) {
        let _ = span.set_parent(context);
    }
    span
}

/// The root span of a channel's release (ended by the caller at once): every step of the
/// release that changes it is a span of this trace, and each runner's attempt on it a span
/// linked to the attempt's own trace.
#[must_use]
pub fn release_span(channel: &str, release_id: &str, version: &str) -> Span {
    tracing::info_span!(
        parent: None,
        "release",
        otel.name = %format!("release {channel} {version}"),
        channel = %channel,
        release.id = %release_id,
        version.to = %version,
    )
}

/// A step of a channel's release (`events`: what changed), in the release's trace.
#[must_use]
pub fn release_step_span(
    channel: &str,
    traceparent: Option<&str>,
    event: &str,
    wave: usize,
    halted: bool,
) -> Span {
    let span = tracing::info_span!(
        parent: None,
        "release step",
        otel.name = %event,
        channel = %channel,
        event = %event,
        release.wave = wave + 1,
        release.halted = halted,
        trace_id = tracing::field::Empty,
    );
    if let Some(id) = traceparent.and_then(trace_id) {
        span.record("trace_id", id);
    }
    if let Some(context) = traceparent.and_then(parent_context) {
        let _ = span.set_parent(context);
    }
    span
}

/// A runner's attempt on a channel's release, in the release's trace, linked to the attempt's
/// own trace (`attempt`: its root's `traceparent`).
pub fn release_attempt_span(
    channel: &str,
    release_traceparent: Option<&str>,
    wave: usize,
    runner: &str,
    attempt: &str,
) {
    let span = release_step_span(
        channel,
        release_traceparent,
        &format!("{runner} started its attempt"),
        wave,
        false,
    );
    span.set_attribute("runner", runner.to_owned());
    link(&span, attempt);
}

/// Links `span` to the span of `traceparent` (another trace: a release and its attempts).
pub fn link(span: &Span, traceparent: &str) {
    if let Some(context) = parent_context(traceparent) {
        let remote = context.span().span_context().clone();
        span.add_link(remote);
    }
}

/// Records each eligibility rule's outcome on a span: `eligibility.<rule>` = `pass` or
/// `fail: <reason>`, and `eligibility.eligible`.
pub fn record_verdict(span: &Span, verdict: &Verdict) {
    for outcome in &verdict.outcomes {
        let value = if outcome.passed {
            "pass".to_owned()
        } else {
            format!("fail: {}", outcome.reason)
        };
        span.set_attribute(format!("eligibility.{}", outcome.rule.name()), value);
    }
    span.set_attribute("eligibility.eligible", verdict.eligible());
}

/// Records the change set a state works on: `stack`, `change_set.name`, `change_set.id`
/// (once CloudFormation gave it) and the stacks done before it.
pub fn record_change_set(span: &Span, step: &ChangeSetStep) {
    span.set_attribute("stack", step.stack.clone());
    span.set_attribute("change_set.name", step.name.clone());
    if let Some(id) = &step.id {
        span.set_attribute("change_set.id", id.clone());
    }
    if !step.done.is_empty() {
        span.set_attribute("stacks.done", step.done.join(","));
    }
}

/// A pass at rest that led nowhere (nothing to do, a rule failed, a bad value, the lock busy):
/// a short root span of its own, `check <runner>`, created and ended at once. Emitted only
/// when [`CheckSampler`] says so, so that they do not drown the update traces.
pub fn check_span(runner: &str, outcome: &str, reason: &str, verdict: Option<&Verdict>) {
    let span = tracing::info_span!(
        parent: None,
        "check",
        otel.name = %format!("check {runner}"),
        runner = %runner,
        outcome = %outcome,
        reason = %reason,
    );
    if let Some(verdict) = verdict {
        record_verdict(&span, verdict);
    }
}

/// Decides which passes at rest get a [`check_span`]: every change of outcome, and otherwise
/// one pass in `every` (so a steady "nothing to do" shows up about once an hour at the default
/// poll interval, and a new reason at once). `every` = 0 emits only changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSampler {
    every: u32,
    last: Option<String>,
    skipped: u32,
}

impl CheckSampler {
    /// One in `every` unchanged passes, and every change.
    #[must_use]
    pub fn new(every: u32) -> Self {
        CheckSampler {
            every,
            last: None,
            skipped: 0,
        }
    }

    /// Whether this pass, with this outcome, is traced.
    pub fn sample(&mut self, outcome: &str) -> bool {
        let changed = self.last.as_deref() != Some(outcome);
        self.skipped += 1;
        if changed || (self.every > 0 && self.skipped >= self.every) {
            self.last = Some(outcome.to_owned());
            self.skipped = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_spans_are_sampled_on_change_and_one_in_n() {
        let mut sampler = CheckSampler::new(3);
        let picks: Vec<bool> = [
            "newer-version",
            "newer-version",
            "newer-version",
            "newer-version",
            "lock-busy",
            "newer-version",
            "newer-version",
        ]
        .iter()
        .map(|o| sampler.sample(o))
        .collect();
        assert_eq!(picks, [true, false, false, true, true, true, false]);
        let mut changes_only = CheckSampler::new(0);
        let picks: Vec<bool> = ["a", "a", "a", "b", "b"]
            .iter()
            .map(|o| changes_only.sample(o))
            .collect();
        assert_eq!(picks, [true, false, false, true, false]);
    }

    #[test]
    fn traceparents_parse_and_refuse_garbage() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = parent_context(good).unwrap();
        let span = context.span();
        let sc = span.span_context();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_remote());
        assert_eq!(trace_id(good), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(parent_context(bad).is_none(), "{bad:?}");
        }
    }
}
