//! Infrastructure updates through CloudFormation change sets, on the simulated AWS: two stacks
//! in order before the runner, a parameters-only update, a held change set approved (and one
//! cancelled), a failing change set rolled back, a rollback that fails, a change set with no
//! changes, a stack that cannot reach the version, a foreign writer, and a crash at every step.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use runner_updater_adapters::sim::{initial_template, SimResource, SimTemplate};
use runner_updater_core::domain::infra::{change_set_name, StackStatus};
use runner_updater_core::domain::observed::{ATTEMPT_TAG, INFRA_VERSION_TAG};
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::record::Record;
use runner_updater_interface::ops::ApproveError;
use runner_updater_interface::report::status_view;
use runner_updater_interface::scenario::{Scenario, ScenarioError};
use runner_updater_ports::{ChangeSetRequest, CloudFormation};
use runner_updater_runtime::driver::{CrashPlan, DriverError, RunnerDriver, TickReport};

const RUNNER: &str = "runner-a";
const IAM: &str = "runner-a-iam";
const MAIN: &str = "runner-a-main";
const TICKS: usize = 400;

fn url(name: &str) -> String {
    format!("https://templates.s3.amazonaws.com/{name}.json")
}

/// IAM stack v2: a property change, no replacement.
fn iam_v2() -> SimTemplate {
    let mut template = initial_template();
    template.resources[0].properties = "v2".to_owned();
    template
}

/// Main stack v2: adds a topic.
fn main_v2() -> SimTemplate {
    initial_template().resource(SimResource::new("Topic", "AWS::SNS::Topic", "v2"))
}

/// Main stack v2 that replaces the queue (held under the `safe` policy).
fn main_v2_replacing() -> SimTemplate {
    let mut template = initial_template();
    template.resources[1] = SimResource::new("Queue", "AWS::SQS::Queue", "v2")
        .using(&["Size"])
        .replaced();
    template
}

/// Main stack v2 whose new resource fails to create.
fn main_v2_failing() -> SimTemplate {
    initial_template().resource(
        SimResource::new("Broken", "AWS::SQS::Queue", "v2")
            .failing("Resource handler returned message: quota exceeded"),
    )
}

fn scenario() -> Scenario {
    let s = Scenario::new(5).unwrap();
    s.aws.cfn.put_template(&url("iam-2"), iam_v2());
    s.aws.cfn.put_template(&url("main-2"), main_v2());
    s.aws
        .cfn
        .put_template(&url("main-2-replacing"), main_v2_replacing());
    s.aws
        .cfn
        .put_template(&url("main-2-failing"), main_v2_failing());
    s
}

/// Ops: the runner 2.14.0 needs infrastructure 2, with a template for each stack.
fn want_infra_2(s: &Scenario, main: &str) {
    s.set_desired(RUNNER, "infra-version", "2");
    s.set_desired(RUNNER, &format!("stacks/{IAM}/template-url"), &url("iam-2"));
    s.set_desired(RUNNER, &format!("stacks/{MAIN}/template-url"), &url(main));
    s.set_desired(RUNNER, "version", "2.14.0");
}

async fn record(s: &Scenario) -> Record {
    s.store.load(RUNNER).await.unwrap().unwrap()
}

fn hops(record: &Record) -> Vec<(String, String)> {
    record
        .transitions
        .iter()
        .map(|t| (t.from.clone(), t.to.clone()))
        .collect()
}

fn stacks_of(executions: &[(String, String)]) -> Vec<&str> {
    executions.iter().map(|(stack, _)| stack.as_str()).collect()
}

#[tokio::test]
async fn two_stacks_are_updated_in_order_before_the_runner() {
    let s = scenario();
    let mut driver = s.driver(RUNNER).unwrap();
    want_infra_2(&s, "main-2");
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();

    assert_eq!(stacks_of(&s.aws.cfn.creations()), [IAM, MAIN]);
    assert_eq!(stacks_of(&s.aws.cfn.executions()), [IAM, MAIN]);
    let rec = record(&s).await;
    for stack in [IAM, MAIN] {
        let state = s.aws.cfn.stack(stack).unwrap();
        assert_eq!(state.status, StackStatus::UpdateComplete);
        assert_eq!(state.tags[INFRA_VERSION_TAG], "2");
        assert!(
            !state.tags.contains_key(ATTEMPT_TAG),
            "nothing per attempt is tagged (tags propagate to every resource)"
        );
    }
    let expected = [
        ("locked", "creating_change_set"),
        ("creating_change_set", "executing_change_set"),
        ("executing_change_set", "creating_change_set"),
        ("creating_change_set", "executing_change_set"),
        ("executing_change_set", "registering_task_definition"),
        ("registering_task_definition", "updating_service"),
    ];
    let hops = hops(&rec);
    let at = hops
        .iter()
        .position(|(f, t)| f == "locked" && t == "creating_change_set")
        .expect("infrastructure first");
    for (i, (from, to)) in expected.iter().enumerate() {
        assert_eq!(
            (hops[at + i].0.as_str(), hops[at + i].1.as_str()),
            (*from, *to),
            "{hops:?}"
        );
    }
    assert_eq!(s.aws.ecs.registrations().len(), 1, "then the runner");
    assert_eq!(s.aws.ecs.updates().len(), 1);
    assert!(
        rec.change_set.is_none(),
        "no change set left in the record once done"
    );
    assert!(
        s.aws.cfn.change_sets(MAIN).len() <= 1,
        "only the executed change set remains"
    );
}

#[tokio::test]
async fn the_runner_waits_while_a_stack_lacks_a_template_for_the_required_version() {
    let s = scenario();
    let mut driver = s.driver(RUNNER).unwrap();
    s.set_desired(RUNNER, "infra-version", "2");
    s.set_desired(
        RUNNER,
        &format!("stacks/{MAIN}/template-url"),
        &url("main-2"),
    );
    s.set_desired(RUNNER, "version", "2.14.0");
    for _ in 0..5 {
        driver.tick().await.unwrap();
    }
    assert_eq!(driver.phase(), Phase::Idle);
    let rec = record(&s).await;
    let note = rec.note.unwrap();
    assert_eq!(note.code, "infrastructure");
    assert!(
        note.message
            .contains("desired/stacks/runner-a-iam/template-url"),
        "{}",
        note.message
    );
    assert!(s.aws.cfn.creations().is_empty());
    assert!(s.aws.ecs.registrations().is_empty());
}

#[tokio::test]
async fn a_parameters_only_update_keeps_the_template_and_touches_no_runner() {
    let s = scenario();
    let mut driver = s.driver(RUNNER).unwrap();
    s.drive_until(&mut driver, 3, |d| d.phase() == Phase::Idle)
        .await
        .unwrap();
    s.set_desired(
        RUNNER,
        &format!("stacks/{MAIN}/parameters"),
        r#"{"Size": 3}"#,
    );
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();

    assert_eq!(stacks_of(&s.aws.cfn.executions()), [MAIN]);
    let main = s.aws.cfn.stack(MAIN).unwrap();
    assert_eq!(main.parameters["Size"], "3");
    assert_eq!(
        main.parameters["Owner"], "ops",
        "parameters not named keep their value"
    );
    assert_eq!(
        main.tags[INFRA_VERSION_TAG], "1",
        "the version is unchanged"
    );
    assert!(
        s.aws.ecs.registrations().is_empty(),
        "the runner is not touched"
    );
    let rec = record(&s).await;
    assert_eq!(rec.attempt.as_ref().unwrap().kind, "infrastructure");
    for _ in 0..5 {
        driver.tick().await.unwrap();
    }
    assert_eq!(record(&s).await.attempts_started, 1, "applied once");
}

#[tokio::test]
async fn a_change_set_without_changes_is_deleted_and_not_retried() {
    let s = scenario();
    let mut driver = s.driver(RUNNER).unwrap();
    s.drive_until(&mut driver, 3, |d| d.phase() == Phase::Idle)
        .await
        .unwrap();
    // Owner is read by no resource: CloudFormation finds nothing to change.
    s.set_desired(
        RUNNER,
        &format!("stacks/{MAIN}/parameters"),
        r#"{"Owner": "team-b"}"#,
    );
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(s.aws.cfn.creations().len(), 1);
    assert!(s.aws.cfn.executions().is_empty());
    assert!(
        s.aws.cfn.change_sets(MAIN).is_empty(),
        "the empty change set is deleted"
    );
    for _ in 0..5 {
        driver.tick().await.unwrap();
    }
    assert_eq!(
        s.aws.cfn.creations().len(),
        1,
        "not tried again: {:#?}",
        record(&s).await
    );
    assert_eq!(record(&s).await.attempts_started, 1);
}

#[tokio::test]
async fn a_held_change_set_runs_only_once_approved() {
    let s = scenario();
    let mut driver = s.driver(RUNNER).unwrap();
    let early = s.approve(RUNNER).await.unwrap_err();
    assert!(matches!(early, ApproveError::NoRecord(_)), "{early}");
    want_infra_2(&s, "main-2-replacing");
    s.drive_to(&mut driver, Phase::AwaitingApproval, TICKS)
        .await
        .unwrap();
    let rec = record(&s).await;
    let held = rec.change_set.clone().unwrap();
    assert_eq!(
        held.stack, MAIN,
        "the IAM stack's safe change set ran first"
    );
    assert_eq!(held.review.as_ref().unwrap().replaced, ["Queue"]);
    let view = status_view(&rec);
    assert!(
        view.next_step.contains("runner-updater approve runner-a"),
        "{}",
        view.next_step
    );
    assert!(view.change_set.unwrap().contains("replaces Queue"));
    for _ in 0..10 {
        driver.tick().await.unwrap();
        s.aws.clock.advance(std::time::Duration::from_secs(10));
    }
    assert_eq!(
        driver.phase(),
        Phase::AwaitingApproval,
        "held until approved"
    );
    assert_eq!(stacks_of(&s.aws.cfn.executions()), [IAM]);

    let approval = s.approve(RUNNER).await.unwrap();
    assert_eq!(approval.change_set, held.name);
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(stacks_of(&s.aws.cfn.executions()), [IAM, MAIN]);
    assert_eq!(s.aws.ecs.registrations().len(), 1);
    let late = s.approve(RUNNER).await.unwrap_err();
    assert!(matches!(late, ApproveError::NotAwaiting { .. }), "{late}");
}

/// On both stores: on the state table the write that leaves the attempt would release the lease
/// with it, but a change set still to delete keeps it until the (fenced) deletion is made
/// (found by review: the release folded into that write fenced the deletion out).
#[tokio::test]
async fn switching_auto_update_off_cancels_a_held_change_set() {
    for on_table in [false, true] {
        let mut s = scenario();
        if on_table {
            s.use_state_table("controller-1");
        }
        let mut driver = s.driver(RUNNER).unwrap();
        want_infra_2(&s, "main-2-replacing");
        s.drive_to(&mut driver, Phase::AwaitingApproval, TICKS)
            .await
            .unwrap();
        let held = record(&s).await.change_set.unwrap().name;
        s.set_desired(RUNNER, "auto-update", "false");
        s.drive_to(&mut driver, Phase::Idle, TICKS).await.unwrap();
        assert!(
            !s.aws.cfn.change_sets(MAIN).contains(&held),
            "deleted (state table: {on_table})"
        );
        assert_eq!(stacks_of(&s.aws.cfn.executions()), [IAM]);
        assert_eq!(record(&s).await.note.unwrap().code, "auto-update");
        assert!(
            record(&s).await.failed.is_empty(),
            "a cancel is not a failure"
        );
        if on_table {
            let lease = s.aws.table.item(RUNNER).unwrap().lease.unwrap();
            assert_eq!(lease.expires_at.0, 0, "released after the deletion");
        }
    }
}

#[tokio::test]
async fn a_failing_change_set_is_rolled_back_by_cloudformation_and_quarantined() {
    let s = scenario();
    let mut driver = s.driver(RUNNER).unwrap();
    want_infra_2(&s, "main-2-failing");
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let rec = record(&s).await;
    let failure = rec.failure.clone().unwrap();
    assert_eq!(failure.code, "stack-rolled-back");
    assert!(
        failure.reason.contains("Broken (AWS::SQS::Queue)"),
        "{}",
        failure.reason
    );
    assert!(
        failure.reason.contains("quota exceeded"),
        "{}",
        failure.reason
    );
    let main = s.aws.cfn.stack(MAIN).unwrap();
    assert_eq!(main.status, StackStatus::UpdateRollbackComplete);
    assert_eq!(
        main.tags[INFRA_VERSION_TAG], "1",
        "CloudFormation put the stack back"
    );
    assert!(
        s.aws.ecs.registrations().is_empty(),
        "the runner was never touched"
    );
    assert_eq!(rec.failed.len(), 1);
    for _ in 0..5 {
        driver.tick().await.unwrap();
    }
    assert_eq!(
        record(&s).await.attempts_started,
        1,
        "quarantined: not retried"
    );

    // A corrected template is a new desired state: the quarantine lifts.
    s.aws.cfn.put_template(&url("main-3"), main_v2());
    s.set_desired(
        RUNNER,
        &format!("stacks/{MAIN}/template-url"),
        &url("main-3"),
    );
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(s.aws.cfn.stack(MAIN).unwrap().tags[INFRA_VERSION_TAG], "2");
    assert_eq!(s.aws.ecs.registrations().len(), 1);
}

#[tokio::test]
async fn a_failed_rollback_stops_everything_and_says_so() {
    let s = scenario();
    s.aws.cfn.put_template(
        &url("main-2-stuck"),
        initial_template().resource(
            SimResource::new("Stuck", "AWS::SQS::Queue", "v2").failing_rollback("internal failure"),
        ),
    );
    let mut driver = s.driver(RUNNER).unwrap();
    want_infra_2(&s, "main-2-stuck");
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let failure = record(&s).await.failure.unwrap();
    assert_eq!(failure.code, "stack-rollback-failed");
    assert!(
        failure.reason.contains("needs a human"),
        "{}",
        failure.reason
    );
    driver.tick().await.unwrap();
    let rec = record(&s).await;
    assert_eq!(
        rec.note.unwrap().code,
        "stack-failed",
        "no action on a failed stack"
    );
    assert!(s.aws.ecs.registrations().is_empty());
}

#[tokio::test]
async fn a_stack_updated_by_someone_else_stops_the_attempt() {
    let s = scenario();
    let mut driver = s.driver(RUNNER).unwrap();
    want_infra_2(&s, "main-2-replacing");
    s.drive_to(&mut driver, Phase::AwaitingApproval, TICKS)
        .await
        .unwrap();
    // Someone updates the main stack from the console meanwhile.
    let cfn = &s.aws.cfn;
    let current = cfn.stack(MAIN).unwrap();
    cfn.create_change_set(&ChangeSetRequest {
        stack: MAIN.to_owned(),
        name: "console".to_owned(),
        kind: runner_updater_ports::ChangeSetKind::Update,
        template_url: Some(url("main-2")),
        template_body: None,
        parameters: std::collections::BTreeMap::default(),
        keep_parameters: vec!["Size".to_owned(), "Owner".to_owned()],
        capabilities: vec![],
        tags: current.tags.clone(),
        client_token: "console".to_owned(),
        description: String::new(),
    })
    .await
    .unwrap();
    s.aws.clock.advance(std::time::Duration::from_secs(10));
    cfn.execute_change_set(MAIN, "console", "console")
        .await
        .unwrap();
    s.approve(RUNNER).await.unwrap();
    s.drive_to(&mut driver, Phase::Idle, TICKS).await.unwrap();
    let rec = record(&s).await;
    assert_eq!(rec.note.unwrap().code, "foreign-writer");
    assert_eq!(
        stacks_of(&s.aws.cfn.executions()),
        [IAM, MAIN],
        "ours never ran"
    );
    assert!(s.aws.ecs.registrations().is_empty());
}

#[tokio::test]
async fn a_desired_change_during_a_stack_update_is_acted_on_after_it() {
    let s = scenario();
    let mut driver = s.driver(RUNNER).unwrap();
    want_infra_2(&s, "main-2");
    s.drive_to(&mut driver, Phase::ExecutingChangeSet, TICKS)
        .await
        .unwrap();
    // Ops pause the runner while the IAM stack is updating.
    s.set_desired(RUNNER, "auto-update", "false");
    s.drive_to(&mut driver, Phase::Idle, TICKS).await.unwrap();
    assert_eq!(
        s.aws.cfn.stack(IAM).unwrap().status,
        StackStatus::UpdateComplete,
        "the running update was not abandoned"
    );
    assert_eq!(
        stacks_of(&s.aws.cfn.executions()),
        [IAM],
        "nothing started after it"
    );
    assert!(s.aws.ecs.registrations().is_empty());
    let rec = record(&s).await;
    assert_eq!(rec.note.unwrap().code, "auto-update");
    assert!(rec.failed.is_empty());
}

#[tokio::test]
async fn a_change_set_still_being_computed_is_deleted_once_computed_when_ops_cancel() {
    let s = scenario();
    let mut driver = s.driver(RUNNER).unwrap();
    want_infra_2(&s, "main-2");
    s.drive_to(&mut driver, Phase::CreatingChangeSet, TICKS)
        .await
        .unwrap();
    assert_eq!(
        s.aws.cfn.change_sets(IAM).len(),
        1,
        "created, still being computed"
    );
    s.set_desired(RUNNER, "version", "2.14.1");
    s.drive_to(&mut driver, Phase::Idle, TICKS).await.unwrap();
    assert!(
        s.aws.cfn.change_sets(IAM).is_empty(),
        "deleted, not orphaned"
    );
    assert!(s.aws.cfn.executions().is_empty());
    assert_eq!(record(&s).await.note.unwrap().code, "desired-changed");
}

#[tokio::test]
async fn approving_by_name_refuses_another_change_set() {
    let s = scenario();
    let mut driver = s.driver(RUNNER).unwrap();
    want_infra_2(&s, "main-2-replacing");
    s.drive_to(&mut driver, Phase::AwaitingApproval, TICKS)
        .await
        .unwrap();
    let held = record(&s).await.change_set.unwrap().name;
    let wrong = runner_updater_interface::ops::approve(
        s.store.as_ref(),
        &s.aws.ssm,
        &s.config.prefix,
        RUNNER,
        Some("ru-an-older-attempt-runner-a-main"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(wrong, ApproveError::OtherChangeSet { .. }),
        "{wrong}"
    );
    let right = runner_updater_interface::ops::approve(
        s.store.as_ref(),
        &s.aws.ssm,
        &s.config.prefix,
        RUNNER,
        Some(&held),
    )
    .await
    .unwrap();
    assert_eq!(right.change_set, held);
}

#[test]
fn change_set_names_come_from_the_attempt() {
    assert_eq!(
        change_set_name("runner-a-1-67c2dd20", MAIN),
        "ru-runner-a-1-67c2dd20-runner-a-main"
    );
}

// ---- crash at every step ----

#[derive(Clone, Copy)]
struct Story {
    name: &'static str,
    main: &'static str,
    end: Phase,
    executions: &'static [&'static str],
    registrations: usize,
}

const STORIES: [Story; 3] = [
    Story {
        name: "two stacks then the runner",
        main: "main-2",
        end: Phase::Done,
        executions: &[IAM, MAIN],
        registrations: 1,
    },
    Story {
        name: "held, approved",
        main: "main-2-replacing",
        end: Phase::Done,
        executions: &[IAM, MAIN],
        registrations: 1,
    },
    Story {
        name: "main stack rolled back",
        main: "main-2-failing",
        end: Phase::RolledBack,
        executions: &[IAM, MAIN],
        registrations: 0,
    },
];

/// Ticks until `end`, approving whatever is held (ops answering quickly).
async fn drive(
    s: &Scenario,
    driver: &mut RunnerDriver,
    end: Phase,
) -> Result<Vec<TickReport>, ScenarioError> {
    let mut reports = Vec::new();
    for _ in 0..TICKS {
        let report = driver.tick().await?;
        let arrived = report.transitions.iter().any(|t| t.to == end);
        reports.push(report);
        if arrived || (driver.phase() == end && reports.len() > 1 && end != Phase::Idle) {
            return Ok(reports);
        }
        if driver.phase() == Phase::AwaitingApproval {
            s.approve(RUNNER).await.unwrap();
        }
        s.aws.clock.advance(driver.requeue_after());
    }
    Err(ScenarioError::Timeout(format!(
        "still in {}",
        driver.phase()
    )))
}

fn story_scenario(story: &Story) -> Scenario {
    let s = scenario();
    want_infra_2(&s, story.main);
    s
}

async fn crash_and_resume(story: &Story, plan: CrashPlan, holder: &str) -> Result<bool, String> {
    let s = story_scenario(story);
    let context = format!("story {:?}, {plan:?}, restart as {holder}", story.name);
    let mut first = s.driver(RUNNER).unwrap().with_crash(plan);
    let crashed = match drive(&s, &mut first, story.end).await {
        Ok(_) => false,
        Err(ScenarioError::Driver(DriverError::Crashed(_))) => true,
        Err(other) => return Err(format!("{context}: first run failed: {other}")),
    };
    drop(first);
    let mut second = s.driver_as(RUNNER, holder).unwrap();
    if second.phase() != story.end || !crashed {
        drive(&s, &mut second, story.end)
            .await
            .map_err(|e| format!("{context}: resume failed: {e}"))?;
    }
    for _ in 0..5 {
        second.tick().await.map_err(|e| format!("{context}: {e}"))?;
        s.aws.clock.advance(std::time::Duration::from_secs(10));
    }
    let executions = s.aws.cfn.executions();
    if stacks_of(&executions) != story.executions {
        return Err(format!("{context}: executions {executions:?}"));
    }
    let creations = s.aws.cfn.creations();
    if stacks_of(&creations) != story.executions {
        return Err(format!("{context}: change sets created {creations:?}"));
    }
    let registrations = s.aws.ecs.registrations().len();
    if registrations != story.registrations {
        return Err(format!("{context}: {registrations} registrations"));
    }
    let rec = s
        .store
        .load(RUNNER)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no record")?;
    if rec.phase != story.end.name() {
        return Err(format!("{context}: ended in {}", rec.phase));
    }
    Ok(crashed)
}

#[tokio::test]
async fn every_crash_point_of_every_infrastructure_story_converges_without_repeating_a_side_effect()
{
    let mut failures = Vec::new();
    let mut crash_points = 0;
    for story in &STORIES {
        let s = story_scenario(story);
        let mut driver = s.driver(RUNNER).unwrap();
        let reports = drive(&s, &mut driver, story.end).await.unwrap();
        let saves: u32 = reports.iter().map(|r| r.saves).sum();
        let commands: u32 = reports
            .iter()
            .map(|r| u32::try_from(r.commands.len()).unwrap())
            .sum();
        assert!(
            saves >= 5,
            "story {:?} saved only {saves} times",
            story.name
        );
        let plans = CrashPlan::every_step(saves, commands);
        for plan in plans {
            for holder in ["controller-1", "controller-2"] {
                match crash_and_resume(story, plan, holder).await {
                    Ok(true) => crash_points += 1,
                    Ok(false) => failures.push(format!(
                        "{:?} {plan:?}: the planned crash never happened",
                        story.name
                    )),
                    Err(error) => failures.push(error),
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        crash_points > 60,
        "only {crash_points} crash points exercised"
    );
    println!("{crash_points} infrastructure crash points exercised");
}
