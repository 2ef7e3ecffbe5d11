//! End to end with the real binary against moto (plus our harness): `runner-updater run` is
//! started as a process, ops write desired values with the real AWS CLI, and the tests read the
//! outcome from ECS and from the record in SSM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

mod common;

use common::world::{kill, Proc, World, ATTEMPT_TIMEOUT_SECS, PREFIX, WAIT};
use runner_updater_ports::AwsOp;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

#[tokio::test]
async fn the_controller_updates_rolls_back_holds_and_reports_on_moto() {
    let world = World::new(&["runner-a", "runner-b"]).await;
    let controller = world.controller("controller-1", None);

    // A clean update.
    world.put("runner-a", "version", "2.14.0");
    let done = world.wait_for_phase("runner-a", "done", 1).await;
    assert_eq!(
        world.revisions("runner-a").await,
        2,
        "one new task definition"
    );
    assert_eq!(world.updates("runner-a").len(), 1, "one service update");
    assert_eq!(
        done.new_task_definition_arn.as_deref(),
        Some(world.updates("runner-a")[0].as_str())
    );

    // A failed update (the harness fails tasks of images tagged -crash): rolled back, quarantined.
    // The image first, the version last (no version yet: nothing to do in between).
    world.put("runner-b", "image", "registry.example/runner:2.15.0-crash");
    world.put("runner-b", "version", "2.15.0");
    let rolled_back = world.wait_for_phase("runner-b", "rolled_back", 1).await;
    assert_eq!(
        rolled_back.failure.as_ref().unwrap().code,
        "unhealthy-tasks",
        "{rolled_back:?}"
    );
    assert_eq!(rolled_back.failed.len(), 1, "{:?}", rolled_back.failed);
    assert_eq!(world.updates("runner-b").len(), 2, "forward and rollback");
    retry_once_more(&world).await;

    // auto-update=false holds.
    world.put("runner-a", "auto-update", "false");
    world.put("runner-a", "version", "2.16.0");
    common::eventually("the hold to be reported", WAIT, || async {
        world
            .record("runner-a")
            .await
            .filter(|r| r.note.as_ref().is_some_and(|n| n.code == "auto-update"))
    })
    .await;
    assert_eq!(
        world.revisions("runner-a").await,
        2,
        "held: nothing registered"
    );

    // A bad value is reported and ignored.
    world.put("runner-a", "version", "2.17");
    world.put("runner-a", "auto-update", "true");
    let bad = common::eventually("the bad value to be reported", WAIT, || async {
        world
            .record("runner-a")
            .await
            .filter(|r| r.note.as_ref().is_some_and(|n| n.code == "invalid-version"))
    })
    .await;
    assert_eq!(bad.phase, "done");
    assert_eq!(world.updates("runner-a").len(), 1);

    an_unreadable_record_and_a_refused_image(&world).await;
    kill(controller);
}

/// Ops retry runner-b's quarantined version with the real binary (issue 20): a version that
/// is not quarantined is refused by name; the intent is written once, acknowledged by the
/// controller, which tries the version once more (it fails again: rolled back, quarantined
/// again, no third attempt) and deletes the intent; `status` shows the retry.
async fn retry_once_more(world: &World) {
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let refused = world.cli(&["retry", "runner-b", "2.99.0"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused)
            .contains("2.99.0 is not quarantined on runner runner-b (quarantined: 2.15.0)"),
        "{}",
        stderr(&refused)
    );
    assert!(intents(world, "runner-b").is_empty(), "nothing written");
    let written = world.cli(&["retry", "runner-b"]);
    assert!(written.status.success(), "{}", stderr(&written));
    let again = common::eventually(
        "the retry acknowledged and tried once more",
        WAIT,
        || async {
            world.record("runner-b").await.filter(|r| {
                r.retries.len() == 1 && r.attempts_started == 2 && r.phase == "rolled_back"
            })
        },
    )
    .await;
    assert_eq!(
        again.failed.len(),
        1,
        "quarantined again: {:?}",
        again.failed
    );
    common::eventually("the acknowledged intent deleted", WAIT, || async {
        intents(world, "runner-b").is_empty().then_some(())
    })
    .await;
    assert_eq!(
        world.updates("runner-b").len(),
        4,
        "forward and rollback, twice"
    );
    let status = String::from_utf8_lossy(&world.cli(&["status", "runner-b"]).stdout).into_owned();
    assert!(status.contains("retries   : 1 acknowledged"), "{status}");
    assert_eq!(
        world.record("runner-b").await.map(|r| r.attempts_started),
        Some(2),
        "once per retry"
    );
}

/// The retry intents under a runner's folder, read with the real AWS CLI.
fn intents(world: &World, runner: &str) -> Vec<String> {
    let output = Command::new(common::venv_bin().join("aws"))
        .args(["ssm", "get-parameters-by-path", "--recursive"])
        .args(["--path", &format!("{PREFIX}/{runner}/retry")])
        .args(["--query", "Parameters[].Name", "--output", "text"])
        .args(["--endpoint-url", &world.moto.url])
        .envs(world.moto.env())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// From the catalogue of bad input (`tests/bad_input.rs`), on moto: runner-b's record made
/// unreadable, then an image outside runner-a's allow-list; `status` still shows every runner.
async fn an_unreadable_record_and_a_refused_image(world: &World) {
    let ssm = world.moto.clients().await.ssm;
    let garbage = "{\"schema_version\":1,\"runner\":\"runner-b\",\"pha";
    runner_updater_ports::ParameterStore::put(
        &ssm,
        &format!("{PREFIX}/runner-b/status"),
        garbage,
        true,
    )
    .await
    .unwrap();
    // The image first, the version last: every state in between is one the controller must
    // not act on (here: the bad version 2.17 still stands), whenever its pass comes.
    world.put("runner-a", "image", "evil.example/runner:2.18.0");
    world.put("runner-a", "version", "2.18.0");
    common::eventually("the image to be refused", WAIT, || async {
        world.record("runner-a").await.filter(|r| {
            r.note
                .as_ref()
                .is_some_and(|n| n.code == "image-not-allowed")
        })
    })
    .await;
    assert_eq!(world.updates("runner-a").len(), 1, "nothing deployed");
    let kept =
        runner_updater_ports::ParameterStore::get(&ssm, &format!("{PREFIX}/runner-b/status"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(
        kept.value, garbage,
        "the unreadable record is left as it was"
    );
    let status = world.cli(&["status", "--json"]);
    assert!(
        status.status.success(),
        "one unreadable record does not hide the others: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let views: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let b = views
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["runner"] == "runner-b")
        .unwrap();
    assert_eq!(b["state"], "Unreadable");
    assert_eq!(b["reason_code"], "record-corrupt");
}

fn signal(process: &Proc, signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(process.0.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn five_controllers_update_a_runner_once_and_a_frozen_holder_is_fenced() {
    // A long rollout so the holder is frozen mid-rollout, not after it.
    let world = World::with_timing(&["shared"], 8, 1).await;
    five_controllers_and_a_frozen_holder(&world).await;
}

/// The same story with the records and leases in the DynamoDB state table: every write
/// conditional, the frozen holder's writes refused by DynamoDB itself.
#[tokio::test]
async fn five_controllers_on_the_state_table_update_a_runner_once_and_a_frozen_holder_is_fenced() {
    let world = World::on_state_table(&["shared"], 8, 1).await;
    five_controllers_and_a_frozen_holder(&world).await;
}

/// Five replicas update a runner exactly once; its holder frozen mid-rollout, another takes
/// the attempt over with a new fencing token, and the thawed one changes nothing.
#[allow(clippy::disallowed_methods)] // waits on a real process, with a deadline
async fn five_controllers_and_a_frozen_holder(world: &World) {
    let controllers: Vec<Proc> = (0..5)
        .map(|i| world.controller(&format!("replica-{i}"), None))
        .collect();
    world.put("shared", "version", "2.14.0");
    world.wait_for_phase("shared", "done", 1).await;
    assert_eq!(
        world.revisions("shared").await,
        2,
        "exactly one controller registered\n{}",
        world.logs()
    );
    assert_eq!(
        world.updates("shared").len(),
        1,
        "exactly one controller updated\n{}",
        world.logs()
    );

    // Freeze the holder in the middle of the next rollout.
    world.put("shared", "version", "2.15.0");
    world.wait_for_phase("shared", "awaiting_rollout", 2).await;
    let holder = world.lease_holder("shared").await.unwrap();
    // Holder ids are `<HOSTNAME>-<pid>`.
    let index: usize = holder.split('-').nth(1).unwrap().parse().unwrap();
    signal(&controllers[index], "STOP");

    // Another replica takes over after the lease expires and finishes the same attempt.
    let frozen = world.record("shared").await.unwrap();
    assert_eq!(frozen.phase, "awaiting_rollout", "frozen mid-rollout");
    let done = world.wait_for_phase("shared", "done", 2).await;
    assert_eq!(
        done.attempts_started, 2,
        "the attempt was adopted, not restarted"
    );
    assert!(
        done.lock_epoch > frozen.lock_epoch,
        "another replica took over with a new fencing token"
    );
    signal(&controllers[index], "CONT");
    // The thawed replica must not act on its stale state: give it several passes.
    let settled = world.record("shared").await.unwrap();
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = world.record("shared").await.unwrap();
        assert_eq!(
            now.phase,
            "done",
            "the stale holder changed the record\n{}",
            world.logs()
        );
        assert_eq!(now.attempts_started, settled.attempts_started);
    }
    assert_eq!(
        world.revisions("shared").await,
        3,
        "one task definition per attempt\n{}",
        world.logs()
    );
    assert_eq!(
        world.updates("shared").len(),
        2,
        "one service update per attempt\n{}",
        world.logs()
    );
    for child in controllers {
        kill(child);
    }
}

const STACK_V1: &str = r#"{"AWSTemplateFormatVersion": "2010-09-09",
  "Resources": {"Config": {"Type": "AWS::SSM::Parameter", "Properties": {"Name": "/e2e-stack/NAME", "Type": "String", "Value": "v1"}}}}"#;

const ROLE: &str = r#""Role": {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]}}}"#;

fn stack_template(name: &str, extra: Option<&str>) -> String {
    let body = STACK_V1.replace("NAME", name);
    match extra {
        None => body,
        Some(extra) => body.replacen("}}}}", &format!("}}}}, {extra}}}}}"), 1),
    }
}

#[tokio::test]
async fn infrastructure_first_with_a_held_change_set_approved_through_the_cli_on_moto() {
    let world = World::new(&["runner-c"]).await;
    let (iam, main) = ("runner-c-iam", "runner-c-main");
    let mut config = std::fs::read_to_string(&world.config).unwrap();
    let _ = write!(
        config,
        "stacks = [\"{iam}\", \"{main}\"]\nauto_execute = \"safe\"\n"
    );
    std::fs::write(&world.config, config).unwrap();
    let cfn = aws_sdk_cloudformation::Client::new(&world.moto.sdk_config().await);
    for stack in [iam, main] {
        cfn.create_stack()
            .stack_name(stack)
            .template_body(stack_template(stack, None))
            .tags(
                aws_sdk_cloudformation::types::Tag::builder()
                    .key("runner-updater:infra-version")
                    .value("1")
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }
    // Version 2: the IAM stack gains a role (held for approval), the main stack a topic (safe).
    let iam_url =
        world
            .moto
            .put_template("templates", "iam-2.json", &stack_template(iam, Some(ROLE)));
    let main_url = world.moto.put_template(
        "templates",
        "main-2.json",
        &stack_template(main, Some(r#""Topic": {"Type": "AWS::SNS::Topic"}"#)),
    );
    let controller = world.controller("controller-1", None);
    world.put("runner-c", "infra-version", "2");
    world.put("runner-c", &format!("stacks/{iam}/template-url"), &iam_url);
    world.put(
        "runner-c",
        &format!("stacks/{main}/template-url"),
        &main_url,
    );
    world.put("runner-c", "version", "2.14.0");

    let held = world
        .wait_for_phase("runner-c", "awaiting_approval", 1)
        .await;
    let change_set = held.change_set.clone().unwrap();
    assert_eq!(change_set.stack, iam, "{held:?}");
    assert!(change_set.review.unwrap().iam.contains(&"Role".to_owned()));
    assert_eq!(
        world.revisions("runner-c").await,
        1,
        "the runner waits for its infrastructure"
    );

    on_call_sees_the_held_change_set(&world, &change_set.name);
    let approve = world.cli(&["approve", "runner-c"]);
    assert!(
        approve.status.success(),
        "{}",
        String::from_utf8_lossy(&approve.stderr)
    );
    assert!(String::from_utf8_lossy(&approve.stdout).contains(&change_set.name));

    let done = world.wait_for_phase("runner-c", "done", 1).await;
    stacks_updated_in_order(&world, &cfn, &[iam, main]).await;
    assert_eq!(
        world.revisions("runner-c").await,
        2,
        "then the runner: {done:?}"
    );
    assert_eq!(world.updates("runner-c").len(), 1);
    kill(controller);
}

/// One execution per stack, in the configured order, and every stack tagged with the new
/// infrastructure version.
async fn stacks_updated_in_order(
    world: &World,
    cfn: &aws_sdk_cloudformation::Client,
    stacks: &[&str; 2],
) {
    let [iam, main] = *stacks;
    let executions: Vec<String> = std::fs::read_to_string(&world.updates_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("cfn-execute ").map(str::to_owned))
        .collect();
    assert_eq!(
        executions.len(),
        2,
        "one execution per stack: {executions:?}"
    );
    assert!(
        executions[0].starts_with(iam) && executions[1].starts_with(main),
        "{executions:?}"
    );
    for stack in [iam, main] {
        let described = cfn
            .describe_stacks()
            .stack_name(stack)
            .send()
            .await
            .unwrap();
        let tags = described.stacks()[0].tags();
        assert!(
            tags.iter()
                .any(|t| t.key() == Some("runner-updater:infra-version") && t.value() == Some("2")),
            "{stack}: {tags:?}"
        );
    }
}

/// On-call's view while it waits: the held change set, the trace and the lease's holder,
/// read from SSM by `status` with no controller involved.
fn on_call_sees_the_held_change_set(world: &World, change_set: &str) {
    let status = world.cli(&["status", "runner-c", "--json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let views: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let view = &views[0];
    assert_eq!(view["phase"], "awaiting_approval");
    assert_eq!(view["lease"]["state"], "held", "{view}");
    assert!(
        view["lease"]["detail"]
            .as_str()
            .is_some_and(|h| h.starts_with("controller-1-")),
        "the holder is named: {view}"
    );
    assert!(
        view["trace_id"].as_str().is_some_and(|t| t.len() == 32),
        "the attempt's trace id, without any exporter: {view}"
    );
    assert!(view["change_set"]
        .as_str()
        .is_some_and(|c| c.contains(change_set)));
}

/// A receiver of OTLP traces over HTTP or gRPC (`tests/otlp_receiver/receiver.py`), killed on
/// drop.
struct Receiver {
    process: Proc,
    url: String,
    out: PathBuf,
}

impl Receiver {
    /// Starts the receiver on a port it binds itself (port 0) and reports in a file; ready
    /// once it answers a real request (HTTP: `GET /ready`; gRPC: the receiver reports its
    /// port only after a real Export to itself was answered).
    fn start(dir: &std::path::Path, protocol: &str) -> Receiver {
        let out = dir.join("spans.jsonl");
        let port_file = dir.join("receiver.port");
        let output = dir.join("receiver.out");
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/otlp_receiver/receiver.py"
        );
        let file = std::fs::File::create(&output).unwrap();
        let mut child = Command::new(common::python())
            .arg(script)
            .arg(&out)
            .arg(protocol)
            .arg("--port-file")
            .arg(&port_file)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        let port =
            common::reported_port(&mut child, &port_file, "the OTLP receiver", Some(&output));
        let process = Proc(child);
        if protocol == "http" {
            common::wait_until_answers(port, "/ready", 200, "the OTLP receiver");
        }
        Receiver {
            process,
            url: format!("http://127.0.0.1:{port}"),
            out,
        }
    }

    fn spans(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

#[tokio::test]
async fn traces_reach_a_real_otlp_http_receiver_and_are_flushed_on_shutdown() {
    traces_reach_a_real_otlp_receiver("http", "http/protobuf").await;
}

#[tokio::test]
async fn traces_reach_a_real_otlp_grpc_receiver_and_are_flushed_on_shutdown() {
    traces_reach_a_real_otlp_receiver("grpc", "grpc").await;
}

/// The controller, configured only by the standard `OTEL_*` variables, exports one trace per
/// attempt to a real receiver over `protocol`, and flushes it on SIGTERM.
async fn traces_reach_a_real_otlp_receiver(receiver_protocol: &str, otel_protocol: &str) {
    let world = World::new(&["runner-a"]).await;
    let receiver = Receiver::start(world.dir.path(), receiver_protocol);
    let controller = world.controller_with(
        "controller-1",
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", otel_protocol),
            ("OTEL_SERVICE_NAME", "runner-updater-e2e"),
        ],
    );
    world.put("runner-a", "version", "2.14.0");
    let done = world.wait_for_phase("runner-a", "done", 1).await;
    let status = controller.terminate();
    assert!(status.success(), "clean exit on SIGTERM: {status}");

    let spans = receiver.spans();
    let root = spans
        .iter()
        .find(|s| s["name"] == "update runner-a 2.13.0 → 2.14.0")
        .unwrap_or_else(|| panic!("no root span among {spans:#?}"));
    assert_eq!(root["service"], "runner-updater-e2e");
    assert!(
        spans.iter().all(|s| s["protocol"] == receiver_protocol),
        "every span came over {receiver_protocol}"
    );
    let trace = root["trace_id"].as_str().unwrap();
    for state in [
        "checking",
        "locked",
        "registering_task_definition",
        "updating_service",
        "awaiting_rollout",
        "soaking",
        "done",
    ] {
        let span = spans
            .iter()
            .find(|s| s["name"] == state)
            .unwrap_or_else(|| panic!("no {state} span among {spans:#?}"));
        assert_eq!(span["trace_id"], trace, "{state}");
        assert_eq!(span["parent_span_id"], root["span_id"], "{state}");
        assert_eq!(span["attributes"]["runner"], "runner-a");
    }
    let checking = spans.iter().find(|s| s["name"] == "checking").unwrap();
    assert_eq!(checking["attributes"]["eligibility.newer-version"], "pass");
    let command = spans
        .iter()
        .find(|s| s["name"] == "update_service" && s["attributes"]["outcome"] == "ok")
        .expect("command spans arrive too");
    let call = spans
        .iter()
        .find(|s| {
            s["name"] == AwsOp::UpdateService.name() && s["parent_span_id"] == command["span_id"]
        })
        .expect("the AWS call is a span under its command");
    assert_eq!(call["attributes"]["outcome"], "ok");
    assert!(
        call["attributes"]["aws.request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "the request id AWS support asks for: {call}"
    );
    assert_eq!(
        done.traceparent
            .as_deref()
            .and_then(runner_updater_runtime::telemetry::trace_id),
        Some(trace),
        "the record names the trace"
    );
    drop(receiver.process);
}

// --- Lost answers: the call takes effect at AWS, then its answer is lost ----------------------

/// What a lost-answer case's runner goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Story {
    /// `desired/version` 2.14.0: one task definition, one service update, Done.
    Update,
    /// An image tagged `-crash`: the update, the health gate fails, our rollback; `RolledBack`.
    Rollback,
    /// Infrastructure 2 first (a change set that adds a topic: run at once), then the runner.
    Infrastructure,
    /// Infrastructure 2 whose change set adds an IAM role (held for approval), then ops set
    /// `auto-update=false`: the held change set is deleted, the runner stays where it is.
    Cancelled,
}

/// One mutating call whose answer the harness loses once.
struct LostCase {
    /// The case (and, with `lost-` and hyphens, its runner's name).
    name: &'static str,
    runner: &'static str,
    operation: AwsOp,
    /// `reset` (connection closed without an answer) or `delay` (answered after the client's
    /// attempt timeout).
    mode: &'static str,
    /// Substrings of the request body that pick the call, given the runner.
    matching: fn(&str) -> Vec<String>,
    story: Story,
    /// Released lease epochs seeded before the controller starts (their housekeeping delete
    /// is the call lost).
    old_epochs: u64,
}

fn quoted(runner: &str) -> Vec<String> {
    vec![format!("\"{runner}\"")]
}
fn forward_revision(runner: &str) -> Vec<String> {
    vec![format!("{runner}:2\"")]
}
fn service_deployment(runner: &str) -> Vec<String> {
    vec![format!("service-deployment/"), format!("/{runner}/")]
}
fn main_stack(runner: &str) -> Vec<String> {
    vec![format!("StackName={runner}-main")]
}
fn lock(runner: &str) -> Vec<String> {
    vec![format!("{PREFIX}/{runner}/lock/")]
}
fn lock_renewal(runner: &str) -> Vec<String> {
    // A renewal overwrites the lease with a later expiry (epoch milliseconds, 1…); a release
    // with 0.
    vec![
        format!("{PREFIX}/{runner}/lock/"),
        "\"Overwrite\":true".to_owned(),
        r#"expires_at\":1"#.to_owned(),
    ]
}
fn lock_release(runner: &str) -> Vec<String> {
    vec![
        format!("{PREFIX}/{runner}/lock/"),
        r#"expires_at\":0}"#.to_owned(),
    ]
}
fn oldest_lock(runner: &str) -> Vec<String> {
    vec![format!("{PREFIX}/{runner}/lock/000000000001")]
}
fn record(runner: &str) -> Vec<String> {
    vec![format!("{PREFIX}/{runner}/status")]
}
fn record_done(runner: &str) -> Vec<String> {
    vec![
        format!("{PREFIX}/{runner}/status"),
        r#"\"phase\":\"done\""#.to_owned(),
    ]
}

#[rustfmt::skip]
const LOST: &[LostCase] = &[
    LostCase { name: "register_task_definition", runner: "lost-register", operation: AwsOp::RegisterTaskDefinition, mode: "reset", matching: quoted, story: Story::Update, old_epochs: 0 },
    LostCase { name: "register_task_definition_delayed", runner: "lost-register-delay", operation: AwsOp::RegisterTaskDefinition, mode: "delay", matching: quoted, story: Story::Update, old_epochs: 0 },
    LostCase { name: "update_service_forward", runner: "lost-update", operation: AwsOp::UpdateService, mode: "reset", matching: forward_revision, story: Story::Update, old_epochs: 0 },
    LostCase { name: "update_service_forward_delayed", runner: "lost-update-delay", operation: AwsOp::UpdateService, mode: "delay", matching: forward_revision, story: Story::Update, old_epochs: 0 },
    LostCase { name: "stop_service_deployment_rollback", runner: "lost-rollback", operation: AwsOp::StopServiceDeployment, mode: "reset", matching: service_deployment, story: Story::Rollback, old_epochs: 0 },
    LostCase { name: "create_change_set", runner: "lost-cs-create", operation: AwsOp::CreateChangeSet, mode: "reset", matching: main_stack, story: Story::Infrastructure, old_epochs: 0 },
    LostCase { name: "execute_change_set", runner: "lost-cs-execute", operation: AwsOp::ExecuteChangeSet, mode: "reset", matching: main_stack, story: Story::Infrastructure, old_epochs: 0 },
    LostCase { name: "execute_change_set_delayed", runner: "lost-cs-execute-delay", operation: AwsOp::ExecuteChangeSet, mode: "delay", matching: main_stack, story: Story::Infrastructure, old_epochs: 0 },
    LostCase { name: "delete_change_set", runner: "lost-cs-delete", operation: AwsOp::DeleteChangeSet, mode: "reset", matching: main_stack, story: Story::Cancelled, old_epochs: 0 },
    LostCase { name: "lease_create", runner: "lost-lease-create", operation: AwsOp::PutParameter, mode: "reset", matching: lock, story: Story::Update, old_epochs: 0 },
    LostCase { name: "lease_release", runner: "lost-lease-release", operation: AwsOp::PutParameter, mode: "reset", matching: lock_release, story: Story::Update, old_epochs: 0 },
    LostCase { name: "lease_delete_of_an_old_epoch", runner: "lost-lease-delete", operation: AwsOp::DeleteParameter, mode: "reset", matching: oldest_lock, story: Story::Update, old_epochs: 2 },
    LostCase { name: "record_first_write", runner: "lost-record-first", operation: AwsOp::PutParameter, mode: "reset", matching: record, story: Story::Update, old_epochs: 0 },
    LostCase { name: "record_write_of_done", runner: "lost-record-done", operation: AwsOp::PutParameter, mode: "reset", matching: record_done, story: Story::Update, old_epochs: 0 },
];

/// A renewal's lost answer, on a world of its own: a lease is renewed once less than its floor
/// is left, so this runner's attempt is given a lease just above the floor and a soak longer
/// than the difference (the other cases keep a lease longer than a delayed answer).
#[rustfmt::skip]
const LOST_RENEWAL: &[LostCase] = &[
    LostCase { name: "lease_renewal", runner: "lost-lease-renew", operation: AwsOp::PutParameter, mode: "reset", matching: lock_renewal, story: Story::Update, old_epochs: 0 },
];

impl World {
    /// Lines of the harness log (`HARNESS_LOG`) starting with `prefix`, the prefix removed.
    fn harness_lines(&self, prefix: &str) -> Vec<String> {
        std::fs::read_to_string(&self.updates_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix(prefix).map(str::to_owned))
            .collect()
    }

    /// The revisions of `family` tagged with `attempt` (`runner-updater:attempt`).
    async fn tagged_revisions(&self, family: &str, attempt: &str) -> Vec<String> {
        let ecs = aws_sdk_ecs::Client::new(&self.moto.sdk_config().await);
        let mut arns = Vec::new();
        let mut token = None;
        loop {
            let page = ecs
                .list_task_definitions()
                .family_prefix(family)
                .set_next_token(token)
                .send()
                .await
                .unwrap();
            arns.extend(page.task_definition_arns().iter().cloned());
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        let mut tagged = Vec::new();
        for arn in arns {
            let described = ecs
                .describe_task_definition()
                .task_definition(&arn)
                .include(aws_sdk_ecs::types::TaskDefinitionField::Tags)
                .send()
                .await
                .unwrap();
            if described.tags().iter().any(|t| {
                t.key() == Some(runner_updater_core::domain::observed::ATTEMPT_TAG)
                    && t.value() == Some(attempt)
            }) {
                tagged.push(arn);
            }
        }
        tagged
    }

    /// The runner's lease epochs and their expiry (0: released).
    async fn leases(&self, runner: &str) -> Vec<(u64, u64)> {
        let ssm = self.moto.clients().await.ssm;
        let folder = format!("{PREFIX}/{runner}/lock/");
        runner_updater_ports::ParameterStore::get_by_path(&ssm, &folder)
            .await
            .unwrap()
            .into_iter()
            .map(|(name, value)| {
                let value: serde_json::Value = serde_json::from_str(&value).unwrap();
                (
                    name.strip_prefix(&folder).unwrap().parse().unwrap(),
                    value["expires_at"].as_u64().unwrap(),
                )
            })
            .collect()
    }

    /// Writes a parameter through the SDK (many at once: faster than one AWS CLI per value).
    async fn put_now(&self, name: &str, value: &str) {
        let ssm = self.moto.clients().await.ssm;
        runner_updater_ports::ParameterStore::put(&ssm, name, value, true)
            .await
            .unwrap();
    }
}

/// What went wrong in one case, or nothing.
#[allow(clippy::disallowed_methods)] // waits on a real process, with a deadline
async fn check_lost_case(world: &World, case: &LostCase, lost: u64) -> Vec<String> {
    let runner = case.runner;
    let mut wrong = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            wrong.push(what);
        }
    };
    expect(lost == 1, format!("the harness lost {lost} answers, not 1"));
    let (phase, revisions, updates, executions) = match case.story {
        Story::Update | Story::Infrastructure => ("done", 1, 1, 1),
        Story::Rollback => ("rolled_back", 1, 2, 0),
        Story::Cancelled => ("idle", 0, 0, 0),
    };
    let end = if case.story == Story::Cancelled {
        common::eventually(&format!("{runner} cancelled"), WAIT, || async {
            world.record(runner).await.filter(|r| {
                r.phase == phase && r.note.as_ref().is_some_and(|n| n.code == "auto-update")
            })
        })
        .await
    } else {
        world.wait_for_phase(runner, phase, 1).await
    };
    expect(
        end.attempts_started == 1,
        format!("{} attempts started", end.attempts_started),
    );
    if case.story == Story::Rollback {
        let code = end.failure.as_ref().map(|f| f.code.as_str());
        expect(code == Some("unhealthy-tasks"), format!("failure {code:?}"));
    } else {
        expect(end.failure.is_none(), format!("failure {:?}", end.failure));
    }
    // Exactly one task definition revision of the attempt.
    let attempt = end
        .attempt
        .as_ref()
        .map(|a| a.id.clone())
        .unwrap_or_default();
    let tagged = world.tagged_revisions(runner, &attempt).await;
    expect(
        tagged.len() == revisions,
        format!(
            "{} revisions tagged with attempt {attempt:?}: {tagged:?}",
            tagged.len()
        ),
    );
    // Exactly one forward UpdateService to it (and one rollback to the baseline).
    let seen = world.updates(runner);
    expect(
        seen.len() == updates,
        format!(
            "{} service updates, {updates} expected: {seen:?}",
            seen.len()
        ),
    );
    if let Some(new) = tagged.first() {
        let forward = seen.iter().filter(|u| *u == new).count();
        expect(
            forward == 1,
            format!("{forward} forward updates to {new}: {seen:?}"),
        );
        if case.story != Story::Rollback {
            expect(
                end.new_task_definition_arn.as_deref() == Some(new.as_str()),
                format!(
                    "the record names {:?}, not {new}",
                    end.new_task_definition_arn
                ),
            );
        }
    }
    if case.story == Story::Rollback {
        let back = seen
            .iter()
            .filter(|u| u.ends_with(&format!("{runner}:1")))
            .count();
        expect(back == 1, format!("{back} rollback updates: {seen:?}"));
    }
    wrong.extend(check_lost_change_sets(world, case, executions).await);
    wrong.extend(check_lost_lease(world, case).await);
    wrong
}

/// One change set per stack, executed at most once; a cancelled one deleted.
async fn check_lost_change_sets(world: &World, case: &LostCase, executions: usize) -> Vec<String> {
    let runner = case.runner;
    let mut wrong = Vec::new();
    let mut expect = |ok: bool, what: String| {
        if !ok {
            wrong.push(what);
        }
    };
    if matches!(case.story, Story::Infrastructure | Story::Cancelled) {
        let stack = format!("{runner}-main");
        let created = world
            .harness_lines(&format!("cfn-create {stack} "))
            .into_iter()
            .filter(|l| l.ends_with(" new"))
            .count();
        expect(
            created == 1,
            format!("{created} change sets created on {stack}"),
        );
        let begun = world.harness_lines(&format!("cfn-begin {stack} ")).len();
        expect(
            begun == executions,
            format!("{begun} executions of change sets on {stack}, {executions} expected"),
        );
        if case.story == Story::Cancelled {
            let name = world
                .harness_lines(&format!("cfn-create {stack} "))
                .first()
                .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
                .unwrap_or_default();
            let cfn = aws_sdk_cloudformation::Client::new(&world.moto.sdk_config().await);
            let described = cfn
                .describe_change_set()
                .stack_name(&stack)
                .change_set_name(&name)
                .send()
                .await;
            expect(
                described.is_err(),
                format!("the held change set {name} is still there"),
            );
        }
    }
    wrong
}

/// The lease: taken once (one new epoch), released (the release follows the last save).
#[allow(clippy::disallowed_methods)] // waits on a real process, with a deadline
async fn check_lost_lease(world: &World, case: &LostCase) -> Option<String> {
    let runner = case.runner;
    let taken = case.old_epochs + 1;
    let released = |leases: &[(u64, u64)]| {
        leases
            .last()
            .is_some_and(|(epoch, expires)| *epoch == taken && *expires == 0)
            && (case.old_epochs == 0 || leases.iter().all(|(epoch, _)| *epoch > 1))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let leases = loop {
        let leases = world.leases(runner).await;
        if released(&leases) || std::time::Instant::now() > deadline {
            break leases;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (!released(&leases)).then(|| {
        format!("the lease is not epoch {taken} released (older epochs but the last deleted): {leases:?}")
    })
}

/// The harness loses the answer of one mutating call per runner, once, after AWS applied it
/// (a dropped connection, or an answer after the client's timeout): the real controller on
/// moto completes every story, and nothing is done twice.
#[tokio::test]
async fn a_lost_answer_to_any_mutating_call_is_never_acted_on_twice() {
    // A lease longer than a delayed answer.
    lost_answers(LOST, 30, 1).await;
}

#[tokio::test]
async fn a_lost_answer_to_a_lease_renewal_is_never_acted_on_twice() {
    // The lease's floor in these worlds is 6 s (README, "The lock"): a lease of 8 s is renewed
    // from 2 s on, within the 6 s soak.
    lost_answers(LOST_RENEWAL, 8, 6).await;
}

#[allow(clippy::disallowed_methods)] // waits on a real process, with a deadline
async fn lost_answers(cases: &'static [LostCase], lease_secs: u32, soak_secs: u32) {
    let runners: Vec<&str> = cases.iter().map(|c| c.runner).collect();
    let infra = |runner: &str| {
        cases
            .iter()
            .find(|c| c.runner == runner)
            .is_some_and(|c| matches!(c.story, Story::Infrastructure | Story::Cancelled))
    };
    // ECS's own circuit breaker out of the way (the controller's fail-fast rolls back, with
    // the call lost).
    let world = World::custom(
        &runners,
        1,
        soak_secs,
        lease_secs,
        1,
        &[("HARNESS_BREAKER_THRESHOLD", "1000")],
        |runner| {
            if infra(runner) {
                format!("stacks = [\"{runner}-main\"]\nauto_execute = \"safe\"\n")
            } else {
                String::new()
            }
        },
    )
    .await;

    let (templates, urls) = lost_case_stacks(&world, cases, infra).await;
    plant_lost_cases(&world, cases, &templates, &urls).await;

    let started = std::time::Instant::now();
    let controller = world.controller("controller-1", None);
    for case in cases.iter().filter(|c| c.story == Story::Cancelled) {
        world
            .wait_for_phase(case.runner, "awaiting_approval", 1)
            .await;
        world
            .put_now(
                &format!("{PREFIX}/{}/desired/auto-update", case.runner),
                "false",
            )
            .await;
    }
    let rules = |world: &World| world.moto.lost_answers();
    let mut failures = Vec::new();
    for (case, rule) in cases.iter().zip(rules(&world)) {
        // The rule fires at some point of the case's story (a release after Done, say).
        let lost = loop {
            let now = rules(&world)
                .into_iter()
                .find(|r| r["id"] == rule["id"])
                .unwrap();
            let lost = now["lost"].as_u64().unwrap();
            if lost > 0 || started.elapsed() > WAIT {
                break lost;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for wrong in check_lost_case(&world, case, lost).await {
            failures.push(format!(
                "{} ({} {}): {wrong}",
                case.name, case.operation, case.mode
            ));
        }
    }
    let elapsed = started.elapsed();
    kill(controller);
    assert!(
        failures.is_empty(),
        "{} problem(s):\n{}\n\nharness log:\n{}\n\ncontroller:\n{}",
        failures.len(),
        failures.join("\n"),
        std::fs::read_to_string(&world.updates_log).unwrap_or_default(),
        world.logs()
    );
    eprintln!("{} lost-answer cases in {elapsed:?}", cases.len());
}

/// Stacks at infrastructure 1, and their version 2 templates in S3: the runners whose story
/// is infrastructure, with their template's key and body, and the templates' URLs.
async fn lost_case_stacks(
    world: &World,
    cases: &'static [LostCase],
    infra: impl Fn(&str) -> bool,
) -> (Vec<(&'static str, String, String)>, Vec<String>) {
    let cfn = aws_sdk_cloudformation::Client::new(&world.moto.sdk_config().await);
    let mut templates = Vec::new();
    for case in cases.iter().filter(|c| infra(c.runner)) {
        let stack = format!("{}-main", case.runner);
        cfn.create_stack()
            .stack_name(&stack)
            .template_body(stack_template(&stack, None))
            .tags(
                aws_sdk_cloudformation::types::Tag::builder()
                    .key("runner-updater:infra-version")
                    .value("1")
                    .build(),
            )
            .send()
            .await
            .unwrap();
        let extra = if case.story == Story::Cancelled {
            ROLE
        } else {
            r#""Topic": {"Type": "AWS::SNS::Topic"}"#
        };
        templates.push((
            case.runner,
            format!("{stack}-2.json"),
            stack_template(&stack, Some(extra)),
        ));
    }
    let keys: Vec<(&str, String)> = templates
        .iter()
        .map(|(_, k, b)| (k.as_str(), b.clone()))
        .collect();
    let urls = world.moto.put_templates("templates", &keys);

    (templates, urls)
}

/// Ops' desired state, complete before the controller starts; old leases; the faults (one
/// lost answer per runner).
async fn plant_lost_cases(
    world: &World,
    cases: &[LostCase],
    templates: &[(&'static str, String, String)],
    urls: &[String],
) {
    for (case, rule) in cases.iter().zip(0..) {
        let desired = |key: &str| format!("{PREFIX}/{}/desired/{key}", case.runner);
        if case.story == Story::Rollback {
            world
                .put_now(&desired("image"), "registry.example/runner:2.14.0-crash")
                .await;
        }
        if let Some(index) = templates.iter().position(|(r, _, _)| *r == case.runner) {
            world.put_now(&desired("infra-version"), "2").await;
            let stack = format!("{}-main", case.runner);
            world
                .put_now(
                    &desired(&format!("stacks/{stack}/template-url")),
                    &urls[index],
                )
                .await;
        }
        world.put_now(&desired("version"), "2.14.0").await;
        for epoch in 1..=case.old_epochs {
            world
                .put_now(
                    &format!("{PREFIX}/{}/lock/{epoch:012}", case.runner),
                    r#"{"holder":"an-old-controller","expires_at":0}"#,
                )
                .await;
        }
        let armed = world.moto.lose_answer(&serde_json::json!({
            "operation": case.operation.name(),
            "match": (case.matching)(case.runner),
            "mode": case.mode,
            // Past the controller's attempt timeout: the SDK has given up on it.
            "delay_seconds": 2 * ATTEMPT_TIMEOUT_SECS + 1,
        }));
        assert_eq!(armed["id"], rule + 1, "{}", case.name);
    }
}

/// A registration whose answer was lost, then ten revisions of the same family registered by
/// another tool (the AWS CLI) before the controller's retry: the retry finds the attempt's own
/// revision below them and registers nothing.
#[tokio::test]
async fn a_lost_registration_is_found_below_ten_newer_revisions_of_its_family() {
    let runner = "busy-family";
    // A long consistency window: the controller's retry waits 20 s after the lost call, time
    // enough for ten AWS CLI calls.
    let world = World::custom(&[runner], 1, 1, 30, 20, &[], |_| String::new()).await;
    world.moto.lose_answer(&serde_json::json!({
        "operation": AwsOp::RegisterTaskDefinition.name(),
        "match": quoted(runner),
    }));
    let controller = world.controller("controller-1", None);
    world.put(runner, "version", "2.14.0");
    common::eventually("the registration's answer to be lost", WAIT, || async {
        (!world
            .harness_lines("lost-answer RegisterTaskDefinition")
            .is_empty())
        .then_some(())
    })
    .await;
    let containers =
        r#"[{"name": "runner", "image": "registry.example/runner:another-tool", "memory": 256}]"#;
    for _ in 0..10 {
        let output = Command::new(common::venv_bin().join("aws"))
            .args(["ecs", "register-task-definition", "--family", runner])
            .args(["--container-definitions", containers])
            .envs(world.moto.env())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let between = world.record(runner).await.unwrap();
    assert_eq!(
        between.phase,
        "registering_task_definition",
        "the ten registrations must land before the controller's retry\n{}",
        world.logs()
    );
    let done = world.wait_for_phase(runner, "done", 1).await;
    kill(controller);
    let attempt = done.attempt.as_ref().unwrap().id.clone();
    let ours = world.tagged_revisions(runner, &attempt).await;
    assert_eq!(
        ours.len(),
        1,
        "one revision of the attempt, not {ours:?}\n{}",
        world.logs()
    );
    assert_eq!(
        done.new_task_definition_arn.as_deref(),
        Some(ours[0].as_str())
    );
    assert_eq!(
        world.updates(runner),
        [ours[0].clone()],
        "one service update, to it"
    );
    assert_eq!(
        world.revisions(runner).await,
        12,
        "the baseline, ours and ten others"
    );
}

#[tokio::test]
async fn a_release_document_written_in_one_command_is_deployed_and_status_says_so_on_moto() {
    let world = World::new(&["runner-a"]).await;
    let controller = world.controller("controller-1", None);
    world.put_release(
        "runner-a",
        r#"{"version": "2.15.0", "image": "registry.example/runner:2.15.0-b1"}"#,
    );
    // A desired/* value beside it is ignored: the document wins.
    world.put("runner-a", "version", "2.14.0");
    let done = world.wait_for_phase("runner-a", "done", 1).await;
    let attempt = done.attempt.as_ref().unwrap();
    assert_eq!(attempt.target_version, "2.15.0");
    assert_eq!(attempt.target_image, "registry.example/runner:2.15.0-b1");
    assert_eq!(world.updates("runner-a").len(), 1, "one service update");
    let seen = common::eventually("status to show the release document", WAIT, || async {
        world
            .record("runner-a")
            .await
            .and_then(|r| r.desired)
            .filter(|d| d.source == "release" && !d.ignored.is_empty())
    })
    .await;
    assert_eq!(seen.ignored, ["desired/version"]);
    let status = world.cli(&["status", "runner-a"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("desired   : runner-a/release; ignored: desired/version"),
        "{text}"
    );
    kill(controller);
}

/// The DynamoDB backend with a table that cannot be used: `status`, `plan` and `run` refuse by
/// name, saying what to do, and write nothing.
#[tokio::test]
async fn a_state_table_that_cannot_be_used_is_refused_by_name() {
    let world = World::new(&["runner-a"]).await;
    let config = std::fs::read_to_string(&world.config).unwrap().replace(
        "[state_store]\nbackend = \"ssm\"\n",
        "[state_store]\nbackend = \"dynamodb\"\ntable = \"no-such-table\"\n",
    );
    std::fs::write(&world.config, &config).unwrap();
    let refused = |args: &[&str], why: &str| {
        let output = world.cli(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} went on: {stderr}");
        assert!(
            stderr.contains("state_store.table") && stderr.contains(why),
            "{args:?}: {stderr}"
        );
    };
    refused(&["status"], "does not exist");
    refused(
        &["run", "--passes", "1", "--listen", "off"],
        "does not exist",
    );
    // A table whose key is not `runner`.
    world.moto.create_table("wrong-key", "id").await;
    std::fs::write(&world.config, config.replace("no-such-table", "wrong-key")).unwrap();
    refused(&["status"], "another key schema");
    refused(&["plan"], "another key schema");
    assert_eq!(world.updates("runner-a").len(), 0, "nothing deployed");
}

/// `runner-updater setup` creates the state table from the repository's template through a
/// change set, reports each step, is idempotent, and the controller then uses the table.
#[tokio::test(flavor = "multi_thread")]
async fn setup_creates_the_state_table_from_the_template_once() {
    let world = World::new(&["runner-a"]).await;
    let config = std::fs::read_to_string(&world.config).unwrap().replace(
        "[state_store]\nbackend = \"ssm\"\n",
        "[state_store]\nbackend = \"dynamodb\"\ntable = \"made-by-setup\"\n",
    );
    std::fs::write(&world.config, &config).unwrap();
    let setup = || {
        let output = world.cli(&[
            "setup",
            "--stack",
            "ru-setup",
            "--poll-secs",
            "1",
            "--tag",
            "team=ops",
        ]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "setup failed: {stdout}{stderr}");
        stdout
    };
    let first = setup();
    for line in [
        "stack ru-setup: creating it with change set runner-updater-setup-",
        "Add StateTable (AWS::DynamoDB::Table)",
        "stack ru-setup: created",
        "state table made-by-setup: ready",
    ] {
        assert!(first.contains(line), "{line:?} not in:\n{first}");
    }
    let sdk = world.moto.sdk_config().await;
    let table = aws_sdk_dynamodb::Client::new(&sdk)
        .describe_table()
        .table_name("made-by-setup")
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    assert_eq!(table.key_schema()[0].attribute_name(), "runner");
    assert_eq!(
        table.billing_mode_summary().and_then(|b| b.billing_mode()),
        Some(&aws_sdk_dynamodb::types::BillingMode::PayPerRequest)
    );
    assert_eq!(table.deletion_protection_enabled(), Some(true));
    let second = setup();
    assert!(
        second.contains("stack ru-setup: up to date") && !second.contains("Add "),
        "a second setup changes nothing:\n{second}"
    );
    // The controller works on the table setup made.
    let status = world.cli(&["status"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
}

/// `runner-updater migrate-state --from ssm --to dynamodb`: refused while an attempt's lease is
/// live in SSM (nothing copied), told and not written with `--dry-run`, then every record
/// copied; the controller's `status` reads them from the table; a second run changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn migrate_state_copies_the_ssm_records_into_the_state_table() {
    let world = World::with_timing(&["runner-a", "runner-b"], 1, 1).await;
    let controller = world.controller("controller-1", None);
    world.put("runner-a", "version", "2.14.0");
    world.wait_for_phase("runner-a", "done", 1).await;
    common::eventually("runner-b's record", WAIT, || async {
        world.record("runner-b").await
    })
    .await;
    assert!(controller.terminate().success());
    world.moto.create_table("migrated", "runner").await;
    let config = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        config.replace(
            "[state_store]\nbackend = \"ssm\"\n",
            "[state_store]\nbackend = \"ssm\"\ntable = \"migrated\"\n",
        ),
    )
    .unwrap();
    let migrate = |extra: &[&str]| {
        let output = world.cli(
            &[
                &["migrate-state", "--from", "ssm", "--to", "dynamodb"][..],
                extra,
            ]
            .concat(),
        );
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    let clients = world.moto.clients().await;
    let table = clients.table("migrated");
    // An attempt in flight elsewhere: its lease is live in SSM.
    let (lease, epoch) = hold_ssm_lease(&world, "runner-b").await;
    let (ok, said) = migrate(&[]);
    assert!(
        !ok && said.contains("attempts are in flight: runner-b (its lease is held by elsewhere"),
        "{said}"
    );
    assert!(runner_updater_ports::StateTable::get(&table, "runner-a")
        .await
        .unwrap()
        .is_none());
    runner_updater_ports::Lock::release(&lease, "runner-b", "elsewhere", epoch)
        .await
        .unwrap();
    let (ok, said) = migrate(&["--dry-run"]);
    assert!(
        ok && said.contains("runner-a: would copy (phase done)"),
        "{said}"
    );
    assert!(runner_updater_ports::StateTable::get(&table, "runner-a")
        .await
        .unwrap()
        .is_none());
    let (ok, said) = migrate(&[]);
    assert!(
        ok && said.contains("runner-a: copied (phase done)")
            && said.contains("runner-b: copied")
            && said.contains("0 left behind"),
        "{said}"
    );
    // The table's lease: released, at an epoch above every one the runner had on SSM.
    let lease = runner_updater_ports::StateTable::get(&table, "runner-a")
        .await
        .unwrap()
        .unwrap()
        .lease
        .unwrap();
    let record_epoch = world.record("runner-a").await.unwrap().lock_epoch.unwrap();
    assert!(
        lease.epoch > record_epoch && lease.expires_at.0 == 0,
        "{lease:?} after epoch {record_epoch}"
    );
    let (ok, said) = migrate(&[]);
    assert!(
        ok && said.contains("runner-a: already in the table"),
        "{said}"
    );
    // The controller's own reader, on the table.
    let config = std::fs::read_to_string(&world.config).unwrap();
    std::fs::write(
        &world.config,
        config.replace("backend = \"ssm\"", "backend = \"dynamodb\""),
    )
    .unwrap();
    let status = world.cli(&["status", "--json"]);
    let shown = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{shown}");
    assert!(
        shown.contains("\"done\"") && shown.contains("2.14.0"),
        "{shown}"
    );
}

/// Takes the runner's SSM lease as another controller would (an attempt in flight).
async fn hold_ssm_lease(
    world: &World,
    runner: &str,
) -> (runner_updater_adapters::lease::SsmLease, u64) {
    let clients = world.moto.clients().await;
    let ssm: std::sync::Arc<dyn runner_updater_ports::ParameterStore> =
        std::sync::Arc::new(clients.ssm.clone());
    let lease = runner_updater_adapters::lease::SsmLease::new(ssm, PREFIX);
    let now = runner_updater_ports::Clock::now(&runner_updater_adapters::clock::SystemClock);
    let outcome = runner_updater_ports::Lock::acquire(
        &lease,
        runner,
        "elsewhere",
        now,
        Duration::from_mins(5),
    )
    .await
    .unwrap();
    let runner_updater_ports::LockOutcome::Acquired { epoch } = outcome else {
        panic!("{outcome:?}");
    };
    (lease, epoch)
}

/// Ops: a channel's release in one command, with the real AWS CLI, as the README shows it.
fn put_channel_release(world: &World, document: &str) {
    let status = Command::new(common::venv_bin().join("aws"))
        .args(["ssm", "put-parameter", "--overwrite", "--type", "String"])
        .args(["--name", &format!("{PREFIX}/_channels/stable/release")])
        .args(["--value", document, "--endpoint-url", &world.moto.url])
        .envs(world.moto.env())
        .env("AWS_CONFIG_FILE", world.cli_config())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "aws ssm put-parameter failed");
}

/// `release status --json` of channel stable, from the real binary.
fn release_status(world: &World) -> serde_json::Value {
    let output = world.cli(&["release", "status", "stable", "--json"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let views: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    views[0].clone()
}

/// Twenty runners follow channel stable on the state table, with two controllers contending for
/// the channel: a good release rolls out in its waves, in order, each runner once; a crashing one
/// halts after its canary wave within its budget, the others untouched.
#[tokio::test]
async fn a_channel_release_rolls_out_in_waves_and_a_crashing_one_halts_within_its_budget() {
    let names: Vec<String> = (0..20).map(|i| format!("runner-{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let world = World::on_state_table(&refs, 1, 1).await;
    let first = world.controller("controller-1", None);
    let second = world.controller("controller-2", None);
    let good = r#"{"version": "2.15.0", "plan": {"canary": 2, "waves": [25, 100], "concurrency": 5, "bake-secs": 2}, "budget": 1}"#;
    good_release_in_waves(&world, &names, good).await;
    crashing_release_halts(&world, &names, good).await;
    kill(first);
    kill(second);
}

/// A good release: every runner once, wave after wave (bake 2 s), at most five at once.
async fn good_release_in_waves(world: &World, names: &[String], good: &str) {
    put_channel_release(world, good);
    let release =
        runner_updater_core::domain::channel::parse_channel_release(good, "release").unwrap();
    let plan = runner_updater_core::domain::channel::waves(&release.plan, names);
    assert_eq!(plan.len(), 3);
    let mut records = std::collections::BTreeMap::new();
    for name in names {
        let record = common::eventually(
            &format!("{name} on 2.15.0"),
            Duration::from_mins(5),
            || async {
                world.record(name).await.filter(|r| {
                    r.phase == "done"
                        && r.attempt
                            .as_ref()
                            .is_some_and(|a| a.target_version == "2.15.0")
                })
            },
        )
        .await;
        assert_eq!(record.attempts_started, 1, "{name}");
        assert_eq!(world.updates(name).len(), 1, "{name}: one service update");
        records.insert(name.clone(), record);
    }
    let started = |n: &String| records[n].attempt.as_ref().unwrap().started_at;
    let done = |n: &String| records[n].last_success.unwrap();
    for pair in plan.windows(2) {
        let before = pair[0].runners.iter().map(done).max().unwrap();
        let next = pair[1].runners.iter().map(started).min().unwrap();
        assert!(
            next >= before + 2_000,
            "a wave began {} ms after the previous one was done",
            next.cast_signed() - before.cast_signed()
        );
    }
    for wave in &plan {
        for runner in &wave.runners {
            let at = started(runner);
            let at_once = wave
                .runners
                .iter()
                .filter(|o| started(o) <= at && done(o) > at)
                .count();
            assert!(at_once <= 5, "{at_once} of a wave at once");
        }
    }
    let finished = common::eventually("the release finished", WAIT, || async {
        Some(release_status(world)).filter(|v| v["state"] == "finished")
    })
    .await;
    assert_eq!(
        finished["waves"][2]["counts"]["done"],
        plan[2].runners.len()
    );
}

/// A release whose containers crash: the canary wave fails, the release halts (budget 1, the
/// canary wave's two runners), nobody else starts it; `release status`, `status`, a resume.
async fn crashing_release_halts(world: &World, names: &[String], good: &str) {
    let bad = r#"{"version": "2.16.0", "image": "registry.example/runner:2.16.0-crash", "plan": {"canary": 2, "waves": [25, 100], "concurrency": 5}, "budget": 1}"#;
    put_channel_release(world, bad);
    let halted = common::eventually(
        "the crashing release halted",
        Duration::from_mins(3),
        || async { Some(release_status(world)).filter(|v| v["state"] == "halted") },
    )
    .await;
    assert_eq!(halted["failed"], 2, "{halted:#}");
    let canary = &runner_updater_core::domain::channel::waves(
        &runner_updater_core::domain::channel::parse_channel_release(bad, "release")
            .unwrap()
            .plan,
        names,
    )[0]
    .runners;
    for name in names {
        let record = common::eventually(&format!("{name} at rest"), WAIT, || async {
            world
                .record(name)
                .await
                .filter(|r| matches!(r.phase.as_str(), "done" | "rolled_back" | "idle"))
        })
        .await;
        let tried = record
            .attempt
            .as_ref()
            .is_some_and(|a| a.target_version == "2.16.0");
        if canary.contains(name) {
            assert!(
                tried && record.phase == "rolled_back",
                "{name}: {:?}",
                record.phase
            );
        } else {
            assert!(!tried, "{name} started the halted release");
            assert_eq!(
                record.note.as_ref().map(|n| n.code.as_str()),
                Some("awaiting-wave"),
                "{name}"
            );
        }
    }
    let text =
        String::from_utf8_lossy(&world.cli(&["release", "status", "stable"]).stdout).into_owned();
    assert!(
        text.contains("channel stable: halted (20 runners)")
            && text.contains("quarantined: 2.16.0"),
        "{text}"
    );
    let status = String::from_utf8_lossy(&world.cli(&["status"]).stdout).into_owned();
    assert!(
        status.contains("RELEASE") && status.contains("2.16.0 w"),
        "{status}"
    );
    // A resume is acknowledged by the controller (the token recorded); one on a release that
    // is not halted is refused by name.
    let resume = world.cli(&["release", "resume", "stable"]);
    assert!(
        resume.status.success(),
        "{}",
        String::from_utf8_lossy(&resume.stderr)
    );
    common::eventually("the resume acknowledged", WAIT, || async {
        Some(release_status(world)).filter(|v| v["resumes"] == 1)
    })
    .await;
    put_channel_release(world, good.replace("2.15.0", "2.15.1").as_str());
    common::eventually("the fixed release taken", WAIT, || async {
        Some(release_status(world))
            .filter(|v| v["version"] == "2.15.1" && v["state"] != "not-started")
    })
    .await;
    let stranger = world.cli(&["release", "status", "beta"]);
    assert!(!stranger.status.success());
    assert!(
        String::from_utf8_lossy(&stranger.stderr)
            .contains("no runner of this configuration follows channel beta"),
        "{}",
        String::from_utf8_lossy(&stranger.stderr)
    );
    let refused = world.cli(&["release", "resume", "stable"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("is not halted"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

/// Ops write a runner's release document; AWS then publishes SSM's event (see
/// `World::put_announced`). Returns when the parameter was written (ms).
fn put_release_announced(world: &World, runner: &str, document: &str) -> u64 {
    world.put_announced(&format!("{PREFIX}/{runner}/release"), document)
}

/// Change events on moto: `setup --events` deploys the template's `EventBridge` rule (a `prefix`
/// pattern) and SQS queue, which deliver SSM's change events; with sweeps every 300 s, an update starts within seconds of the
/// `put-parameter` (the reaction time is printed, not asserted: the issue's ≤ 2 s p95). A
/// poison message is counted and deleted; a deleted queue is named in the logs, and the sweeps
/// carry on without events.
#[tokio::test]
async fn change_events_start_updates_within_seconds_and_sweeps_carry_on_without_them_on_moto() {
    let world = World::new(&["runner-a", "runner-b"]).await;
    // The rules, the queue, its dead-letter queue and policy, from the repository's template.
    let url = world.setup_events();
    assert!(url.ends_with("/ru-events"), "{url}");
    let config = std::fs::read_to_string(&world.config).unwrap();
    let with_events = config.replacen("poll_interval_secs = 1\n", "poll_interval_secs = 300\n", 1)
        + &format!(
            "[events]\nqueue_url = \"{url}\"\nbackstop_interval_secs = 600\nwait_secs = 5\n"
        );
    std::fs::write(&world.config, &with_events).unwrap();
    let controller = world.controller("controller-1", None);
    common::eventually("the controller reading the events", WAIT, || async {
        world
            .logs()
            .contains("reading change events; sweeps are the backstop")
            .then_some(())
    })
    .await;
    // Its first sweep is over once both records exist.
    for runner in ["runner-a", "runner-b"] {
        common::eventually("the first sweep", WAIT, || async {
            world.record(runner).await
        })
        .await;
    }
    let mut reactions = Vec::new();
    for (round, version) in (1..).zip(["2.14.0", "2.15.0", "2.16.0"]) {
        for runner in ["runner-a", "runner-b"] {
            let written =
                put_release_announced(&world, runner, &format!("{{\"version\": \"{version}\"}}"));
            let done = world.wait_for_phase(runner, "done", round).await;
            let attempt = done.attempt.unwrap();
            assert_eq!(attempt.target_version, version);
            let reaction = attempt.started_at.saturating_sub(written);
            // Far below the 300 s between sweeps: the event started it.
            assert!(reaction < 60_000, "{runner} {version}: {reaction} ms");
            reactions.push(reaction);
        }
    }
    reactions.sort_unstable();
    let p95 = reactions[(reactions.len() * 95).div_ceil(100) - 1];
    println!(
        "reaction time, put-parameter -> attempt started (events on moto, {} updates): p50 {} ms, p95 {} ms, max {} ms (target: p95 <= 2000 ms)",
        reactions.len(),
        reactions[reactions.len() / 2],
        p95,
        reactions[reactions.len() - 1]
    );
    // Poison: counted, logged and deleted.
    world.boto(&format!(
        "boto3.client('sqs', **kw).send_message(QueueUrl={url:?}, MessageBody='poison')"
    ));
    common::eventually("the poison message named and deleted", WAIT, || async {
        let logs = world.logs();
        let named = logs.contains("not a change event this controller reads: deleted");
        let left = world.boto(&format!("print(boto3.client('sqs', **kw).get_queue_attributes(QueueUrl={url:?}, AttributeNames=['All'])['Attributes']['ApproximateNumberOfMessagesNotVisible'])"),
        );
        (named && left == "0").then_some(())
    })
    .await;
    // The queue deleted: named in the logs; the controller carries on.
    world.boto(&format!(
        "boto3.client('sqs', **kw).delete_queue(QueueUrl={url:?})"
    ));
    common::eventually("the deleted queue named", WAIT, || async {
        world
            .logs()
            .contains("the events' queue does not exist")
            .then_some(())
    })
    .await;
    kill(controller);
    // Restarted with short sweeps and the queue still gone: polling carries the update.
    std::fs::write(
        &world.config,
        with_events.replacen("poll_interval_secs = 300\n", "poll_interval_secs = 1\n", 1),
    )
    .unwrap();
    let controller = world.controller("controller-2", None);
    world.put_release("runner-a", r#"{"version": "2.17.0"}"#);
    let done = world.wait_for_phase("runner-a", "done", 4).await;
    assert_eq!(done.attempt.unwrap().target_version, "2.17.0");
    assert!(world
        .logs()
        .contains("the events' queue cannot be read (not-found): sweeps every poll_interval_secs until it can"));
    kill(controller);
}
