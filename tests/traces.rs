//! OpenTelemetry traces, asserted through the SDK's in-memory exporter: one trace per attempt,
//! a span per state and per command with their attributes and parents, and the same trace id
//! before and after a crash (the `traceparent` persisted in the record).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use runner_updater::driver::{CrashPlan, DriverError};
use runner_updater::machine::phase::Phase;
use runner_updater::sim::scenario::{Scenario, ScenarioError};
use tracing_subscriber::layer::SubscriberExt;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test]
async fn one_trace_tells_the_whole_update_across_a_crash() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let s = Scenario::new(3).unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    let plan = CrashPlan {
        after_command_named: Some("update_service"),
        ..CrashPlan::default()
    };
    let mut first = s.driver("runner-a").unwrap().with_crash(plan);
    match s.drive_to(&mut first, Phase::Done, 400).await {
        Err(ScenarioError::Driver(DriverError::Crashed(_))) => {}
        other => panic!("expected the planned crash, got {other:?}"),
    }
    drop(first);
    let mut second = s.driver_as("runner-a", "controller-2").unwrap();
    s.drive_to(&mut second, Phase::Done, 400).await.unwrap();
    drop(second);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let roots: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "update runner-a 2.13.0 → 2.14.0")
        .collect();
    assert_eq!(roots.len(), 1, "one root per attempt: {:#?}", names(&spans));
    let root = roots[0];
    assert_eq!(root.parent_span_id, SpanId::INVALID);
    let trace = root.span_context.trace_id();
    assert_eq!(attribute(root, "runner").as_deref(), Some("runner-a"));
    assert_eq!(attribute(root, "version.to").as_deref(), Some("2.14.0"));

    let states: Vec<&SpanData> = spans
        .iter()
        .filter(|s| attribute(s, "state").is_some())
        .collect();
    for phase in [
        "checking",
        "locked",
        "registering_task_definition",
        "updating_service",
        "awaiting_rollout",
        "soaking",
        "done",
    ] {
        let span = states
            .iter()
            .find(|s| s.name == phase)
            .unwrap_or_else(|| panic!("no {phase} span in {:#?}", names(&spans)));
        assert_eq!(span.span_context.trace_id(), trace, "{phase}: same trace");
        assert_eq!(
            span.parent_span_id,
            root.span_context.span_id(),
            "{phase}: child of the root"
        );
        assert_eq!(
            attribute(span, "attempt.id"),
            attribute(root, "attempt.id"),
            "{phase}"
        );
    }
    let resumed: Vec<&&SpanData> = states
        .iter()
        .filter(|s| attribute(s, "resumed").as_deref() == Some("true"))
        .collect();
    assert!(
        !resumed.is_empty(),
        "the restored state is a span of its own"
    );
    assert!(
        resumed.iter().all(|s| s.span_context.trace_id() == trace),
        "after the crash: the same trace"
    );

    let register = spans
        .iter()
        .find(|s| s.name == "register_task_definition")
        .expect("a command span");
    let registering = states
        .iter()
        .find(|s| s.name == "registering_task_definition")
        .unwrap();
    assert_eq!(register.parent_span_id, registering.span_context.span_id());
    assert_eq!(attribute(register, "outcome").as_deref(), Some("ok"));

    let record = s.store.load("runner-a").await.unwrap().unwrap();
    let persisted = record.traceparent.unwrap();
    assert_eq!(
        runner_updater::telemetry::trace_id(&persisted),
        Some(trace.to_string().as_str()),
        "the record carries the trace"
    );
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}
