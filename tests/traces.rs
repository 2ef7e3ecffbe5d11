//! OpenTelemetry traces, asserted through the SDK's in-memory exporter: one trace per attempt,
//! a span per state and per command with their attributes and parents, and the same trace id
//! before and after a crash (the `traceparent` persisted in the record).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

#[path = "common/scoped_tracing.rs"]
mod scoped_tracing;

use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use runner_updater_core::machine::phase::Phase;
use runner_updater_interface::scenario::{Scenario, ScenarioError};
use runner_updater_ports::Clock as _;
use runner_updater_runtime::driver::{CrashPlan, DriverError};
use tracing_subscriber::layer::SubscriberExt;

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// Spans of this thread go to an in-memory exporter until the guard is dropped.
fn capture() -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let guard = scoped_tracing::set_default(subscriber);
    (exporter, provider, guard)
}

#[tokio::test]
async fn one_trace_tells_the_whole_update_across_a_crash() {
    let (exporter, provider, _guard) = capture();

    let s = Scenario::new(3).unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    let plan = CrashPlan {
        after_command_where: Some(|c| {
            matches!(
                c,
                runner_updater_core::machine::Command::UpdateService { .. }
            )
        }),
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
    every_state_is_a_child_of_the_root(&spans, &states, root);
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
        runner_updater_runtime::telemetry::trace_id(&persisted),
        Some(trace.to_string().as_str()),
        "the record carries the trace"
    );
}

/// Every state of the attempt is a span of the root's trace, under the root, with its attempt
/// id; the checking span carries each rule's outcome.
fn every_state_is_a_child_of_the_root(spans: &[SpanData], states: &[&SpanData], root: &SpanData) {
    let trace = root.span_context.trace_id();
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
            .unwrap_or_else(|| panic!("no {phase} span in {:#?}", names(spans)));
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
    let checking = states.iter().find(|s| s.name == "checking").unwrap();
    assert_eq!(
        attribute(checking, "eligibility.eligible").as_deref(),
        Some("true")
    );
    for rule in [
        "channel",
        "auto-update",
        "infrastructure",
        "newer-version",
        "different-image",
        "not-failed",
    ] {
        assert_eq!(
            attribute(checking, &format!("eligibility.{rule}")).as_deref(),
            Some("pass"),
            "each rule's outcome is on the checking span"
        );
    }
}

fn names(spans: &[SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}

fn checks(spans: &[SpanData]) -> Vec<String> {
    spans
        .iter()
        .filter(|s| s.name == "check runner-a")
        .map(|s| attribute(s, "outcome").unwrap())
        .collect()
}

#[tokio::test]
async fn passes_that_lead_nowhere_are_short_sampled_check_spans_of_their_own() {
    let (exporter, provider, _guard) = capture();
    let mut config =
        runner_updater_config::Config::from_toml(runner_updater_config::EMBEDDED_CONFIG).unwrap();
    config.telemetry.check_span_every_passes = 5;
    config.settle_secs = 0; // not about the settle: a new desired version is acted on at once
    let s = Scenario::with_config(3, config).unwrap();
    let mut driver = s.driver("runner-a").unwrap();
    // Nothing to do (desired = running): 12 passes, one span for the first and then one in 5.
    for _ in 0..12 {
        driver.tick().await.unwrap();
        s.aws.clock.sleep(driver.requeue_after()).await;
    }
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(
        checks(&spans),
        ["newer-version", "newer-version", "newer-version"],
        "{:#?}",
        names(&spans)
    );
    let check = spans.iter().find(|s| s.name == "check runner-a").unwrap();
    assert_eq!(check.parent_span_id, SpanId::INVALID, "a trace of its own");
    assert!(attribute(check, "eligibility.newer-version")
        .unwrap()
        .starts_with("fail: "));
    assert_eq!(
        spans.len(),
        3,
        "the reads of a pass at rest are not traced one by one: {:#?}",
        names(&spans)
    );

    // A new reason is traced at once: a bad value, then the lock held by another controller.
    exporter.reset();
    s.set_desired("runner-a", "version", "v2.14");
    driver.tick().await.unwrap();
    let lock = s.ports().lock;
    let now = s.ports().clock.now();
    lock.acquire(
        "runner-a",
        "controller-2",
        now,
        std::time::Duration::from_mins(5),
    )
    .await
    .unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.aws.clock.sleep(driver.requeue_after()).await;
    driver.tick().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(checks(&spans), ["invalid-version", "lock-busy"]);
    let busy = spans
        .iter()
        .find(|s| attribute(s, "outcome").as_deref() == Some("lock-busy"))
        .unwrap();
    assert!(attribute(busy, "reason").unwrap().contains("controller-2"));
    assert_eq!(
        attribute(busy, "eligibility.eligible").as_deref(),
        Some("true")
    );
    assert!(
        !spans.iter().any(|s| s.name.starts_with("update ")),
        "a Checking that does not get the lock starts no update trace: {:#?}",
        names(&spans)
    );
}

#[tokio::test]
async fn change_set_states_name_their_stack_and_change_set() {
    use runner_updater_adapters::sim::{initial_template, SimResource};
    let (exporter, provider, _guard) = capture();
    let s = Scenario::new(5).unwrap();
    let url = |name: &str| format!("https://templates.s3.amazonaws.com/{name}.json");
    let mut iam = initial_template();
    iam.resources[0].properties = "v2".to_owned();
    s.aws.cfn.put_template(&url("iam-2"), iam);
    s.aws.cfn.put_template(
        &url("main-2"),
        initial_template().resource(SimResource::new("Topic", "AWS::SNS::Topic", "v2")),
    );
    s.set_desired("runner-a", "infra-version", "2");
    s.set_desired(
        "runner-a",
        "stacks/runner-a-iam/template-url",
        &url("iam-2"),
    );
    s.set_desired(
        "runner-a",
        "stacks/runner-a-main/template-url",
        &url("main-2"),
    );
    s.set_desired("runner-a", "version", "2.14.0");
    let mut driver = s.driver("runner-a").unwrap();
    s.drive_to(&mut driver, Phase::Done, 400).await.unwrap();
    drop(driver);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let executing: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "executing_change_set")
        .collect();
    let stacks: Vec<String> = executing
        .iter()
        .map(|s| attribute(s, "stack").unwrap())
        .collect();
    assert_eq!(stacks, ["runner-a-iam", "runner-a-main"], "in order");
    for span in executing {
        let name = attribute(span, "change_set.name").unwrap();
        assert!(name.starts_with("ru-"), "{name}");
        assert!(
            attribute(span, "change_set.id").is_some_and(|id| id.contains(&name)),
            "the change set's id, as CloudFormation gave it"
        );
    }
    let main = spans
        .iter()
        .find(|s| {
            s.name == "executing_change_set"
                && attribute(s, "stack").as_deref() == Some("runner-a-main")
        })
        .unwrap();
    assert_eq!(
        attribute(main, "stacks.done").as_deref(),
        Some("runner-a-iam")
    );
}

#[tokio::test]
async fn a_desired_state_still_settling_is_a_check_span_that_says_so() {
    let (exporter, provider, _guard) = capture();
    let s = Scenario::new(3).unwrap();
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    driver.tick().await.unwrap();
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    assert_eq!(checks(&spans), ["settling"], "{:#?}", names(&spans));
    let check = spans.iter().find(|s| s.name == "check runner-a").unwrap();
    assert!(
        attribute(check, "reason")
            .unwrap()
            .contains("acted on once unchanged until"),
        "{check:?}"
    );
    assert!(
        !spans.iter().any(|s| s.name.starts_with("update ")),
        "no attempt while settling: {:#?}",
        names(&spans)
    );
}

#[tokio::test]
async fn a_channel_release_is_a_trace_of_its_own_linked_both_ways_to_each_attempt() {
    use runner_updater_config::Config;
    use runner_updater_interface::scenario::{fleet_config, SimulatedLoop};
    let (exporter, provider, _guard) = capture();
    let mut config = Config::from_toml(&fleet_config(3, 1, 1000)).unwrap();
    config.settle_secs = 0;
    let s = Scenario::with_config(7, config).unwrap();
    s.follow_channels();
    s.set_channel_release(
        "stable",
        r#"{"version": "2.14.0", "plan": {"canary": 1, "waves": [100], "concurrency": 2}}"#,
    );
    let mut scheduler = s.scheduler_as("controller-1");
    let mut control = SimulatedLoop::new(&s, "stable", std::time::Duration::from_hours(2), |r| {
        r.finished_at.is_some()
    });
    scheduler.run(&mut control, None).await;
    assert!(control.finished);
    drop(scheduler);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let roots: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "release stable 2.14.0")
        .collect();
    assert_eq!(roots.len(), 1, "one root per release: {:#?}", names(&spans));
    let release = roots[0].span_context.clone();
    let record = s.store.load_release("stable").await.unwrap().unwrap();
    assert_eq!(
        record
            .traceparent
            .as_deref()
            .and_then(|t| t.split('-').nth(1)),
        Some(release.trace_id().to_string().as_str()),
        "the record keeps the release's trace"
    );
    let in_release = |name: &str| {
        spans
            .iter()
            .filter(|s| s.name == name && s.span_context.trace_id() == release.trace_id())
            .count()
    };
    assert_eq!(in_release("wave 2 of 2 started"), 1, "{:#?}", names(&spans));
    assert_eq!(in_release("finished"), 1);
    // Each attempt: a span in the release's trace linked to the attempt's root, and the
    // attempt's root linked to the release.
    let attempts: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("update runner-"))
        .collect();
    assert_eq!(attempts.len(), 3, "{:#?}", names(&spans));
    for attempt in attempts {
        assert!(
            attempt
                .links
                .iter()
                .any(|l| l.span_context.trace_id() == release.trace_id()),
            "{} links to the release",
            attempt.name
        );
        let runner = attribute(attempt, "runner").unwrap();
        let told: Vec<&SpanData> = spans
            .iter()
            .filter(|s| s.name == format!("{runner} started its attempt").as_str())
            .collect();
        assert_eq!(told.len(), 1, "{runner}: {:#?}", names(&spans));
        assert_eq!(told[0].span_context.trace_id(), release.trace_id());
        assert!(told[0]
            .links
            .iter()
            .any(|l| l.span_context.trace_id() == attempt.span_context.trace_id()));
    }
}
