//! The desired state end to end on the simulated AWS: a half-written `desired/*` state waits
//! until it settles, the one-document `release` is acted on at once and wins, a new image for
//! the running version is a rebuild (deployed), a desired image that is not running is always
//! shown, and pre-releases go only to the channels that accept them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use std::time::Duration;

use runner_updater_config::{Config, EMBEDDED_CONFIG};
use runner_updater_core::domain::observed::VERSION_TAG;
use runner_updater_core::domain::Millis;
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::record::Record;
use runner_updater_interface::report::{plan_view, render_plan, render_status, status_view};
use runner_updater_interface::scenario::Scenario;
use runner_updater_ports::Clock as _;

const TICKS: usize = 400;
const HOTFIX: &str = "registry.example/runner:2.14.0-hotfix";

/// The embedded configuration: `settle_secs` at its default (10 s).
fn scenario() -> Scenario {
    let s = Scenario::new(11).unwrap();
    assert_eq!(s.config.settle_secs, 10, "the default settle");
    s
}

async fn record(s: &Scenario, runner: &str) -> Record {
    s.store.load(runner).await.unwrap().unwrap()
}

fn images_registered(s: &Scenario) -> Vec<String> {
    s.aws
        .ecs
        .registrations()
        .iter()
        .map(|arn| {
            s.aws.ecs.task_definition(arn).unwrap().containers[0]
                .image
                .clone()
                .unwrap()
        })
        .collect()
}

/// When the runner took the lock (its first `idle -> checking`, by the record).
fn attempt_started(record: &Record) -> Millis {
    Millis(
        record
            .transitions
            .iter()
            .find(|t| t.from == "idle" && t.to == "checking")
            .expect("an attempt started")
            .at,
    )
}

#[tokio::test]
async fn a_half_written_desired_state_is_not_deployed_until_it_has_settled() {
    let s = scenario();
    let mut driver = s.driver("runner-b").unwrap();
    driver.tick().await.unwrap();
    s.aws.clock.advance(Duration::from_mins(1));

    // Ops write the version, then (1.5 s later) its image: the controller passes in between.
    s.set_desired("runner-b", "version", "2.14.0");
    let report = driver.tick().await.unwrap();
    assert!(
        !report.commands.contains(&"acquire_lock"),
        "acted on half a desired state: {:?}",
        report.commands
    );
    let waiting = record(&s, "runner-b").await;
    assert_eq!(waiting.note.as_ref().unwrap().code, "settling");
    // status and plan say so.
    assert_eq!(
        status_view(&waiting).reason_code.as_deref(),
        Some("settling")
    );
    let observation = driver.observe_now().await.unwrap();
    let plan = plan_view(
        "runner-b",
        Some(&waiting),
        &observation,
        "stable",
        Millis(0),
    );
    assert!(plan.settling.is_some(), "{plan:?}");
    assert!(
        plan.next.contains("once the desired/* parameters settle"),
        "{plan:?}"
    );
    assert!(render_plan(&plan).contains("settling: "));

    s.aws.clock.advance(Duration::from_millis(1500));
    s.set_desired("runner-b", "image", HOTFIX);
    let image_written = s.aws.clock.now();
    assert_eq!(
        driver.requeue_after(),
        Duration::from_millis(8500),
        "the next pass is when the version settles"
    );
    let report = driver.tick().await.unwrap();
    assert!(!report.commands.contains(&"acquire_lock"), "{report:?}");
    assert_eq!(
        driver.requeue_after(),
        Duration::from_secs(10),
        "the image restarted the settle"
    );
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();

    assert_eq!(
        images_registered(&s),
        [HOTFIX],
        "one task definition, with the image ops meant"
    );
    let done = record(&s, "runner-b").await;
    assert_eq!(
        done.desired, None,
        "at Done the desired image runs: status shows no divergence"
    );
    let started = attempt_started(&done);
    assert!(
        started >= image_written.after(Duration::from_secs(10)),
        "the attempt started at {started}, before the settle ended"
    );
    assert!(
        started <= image_written.after(Duration::from_secs(11)),
        "the attempt started at {started}, not when the settle ended"
    );
}

#[tokio::test]
async fn a_deleted_desired_parameter_restarts_the_settle() {
    let s = scenario();
    let mut driver = s.driver("runner-b").unwrap();
    s.set_desired("runner-b", "version", "2.14.0");
    s.set_desired("runner-b", "image", HOTFIX);
    driver.tick().await.unwrap();
    s.aws.clock.advance(Duration::from_secs(8));
    // Ops change their mind: the default image after all. A deletion leaves no date behind.
    s.clear_desired("runner-b", "image");
    let deleted = s.aws.clock.now();
    driver.tick().await.unwrap();
    s.aws.clock.advance(Duration::from_secs(5));
    let report = driver.tick().await.unwrap();
    assert!(
        !report.commands.contains(&"acquire_lock"),
        "13 s after the first write but 5 s after the deletion: {:?}",
        report.commands
    );
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(images_registered(&s), ["registry.example/runner:2.14.0"]);
    let started = attempt_started(&record(&s, "runner-b").await);
    assert!(
        started >= deleted.after(Duration::from_secs(10)),
        "{started}"
    );
}

#[tokio::test]
async fn a_settle_never_delays_an_attempt_in_flight() {
    let mut config = Config::from_toml(EMBEDDED_CONFIG).unwrap();
    config.settle_secs = 600;
    let s = Scenario::with_config(11, config).unwrap();
    let mut driver = s.driver("runner-b").unwrap();
    s.set_desired("runner-b", "version", "2.14.0");
    s.drive_until(&mut driver, TICKS, |d| d.phase() == Phase::AwaitingRollout)
        .await
        .unwrap();
    // Mid-attempt, ops write a desired/* parameter that changes nothing of the target.
    s.set_desired("runner-b", "channel", "stable");
    let written = s.aws.clock.now();
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    let done = s.aws.clock.now();
    assert!(
        done.since(written) < Duration::from_mins(10),
        "the attempt waited for the settle: Done {}s after the write",
        done.since(written).as_secs()
    );
}

#[tokio::test]
async fn the_release_document_is_acted_on_at_once_and_wins_over_the_desired_parameters() {
    let s = scenario();
    let mut driver = s.driver("runner-b").unwrap();
    driver.tick().await.unwrap();
    s.set_desired("runner-b", "version", "2.14.0");
    s.set_release(
        "runner-b",
        r#"{"version": "2.15.0", "image": "registry.example/runner:2.15.0-b1"}"#,
    );
    let report = driver.tick().await.unwrap();
    assert!(
        report.commands.contains(&"acquire_lock"),
        "the release document waits for nothing: {:?}",
        report.commands
    );
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(images_registered(&s), ["registry.example/runner:2.15.0-b1"]);
    let td = s
        .aws
        .ecs
        .task_definition(&s.aws.ecs.registrations()[0])
        .unwrap();
    assert_eq!(td.tags[VERSION_TAG], "2.15.0");

    // Status says where the desired state came from, and what it ignored.
    s.aws.clock.advance(Duration::from_mins(1));
    driver.tick().await.unwrap();
    let view = status_view(&record(&s, "runner-b").await);
    let desired = view.desired.clone().expect("the release document is shown");
    assert_eq!(desired.source, "release");
    assert_eq!(desired.ignored, ["desired/version"]);
    let text = render_status(&[view], 4);
    assert!(
        text.contains("desired   : runner-b/release; ignored: desired/version"),
        "{text}"
    );
    // So does plan.
    let observation = driver.observe_now().await.unwrap();
    let plan = render_plan(&plan_view(
        "runner-b",
        driver.record(),
        &observation,
        "stable",
        Millis(0),
    ));
    assert!(
        plan.contains("desired: runner-b/release; ignored: desired/version"),
        "{plan}"
    );

    // Without the document, the desired/* parameters apply again (2.14.0 is a downgrade now).
    s.clear_release("runner-b");
    s.aws.clock.advance(Duration::from_mins(1));
    driver.tick().await.unwrap();
    let note = record(&s, "runner-b").await.note.unwrap();
    assert_eq!(note.code, "newer-version", "{note:?}");
}

#[tokio::test]
async fn a_new_image_for_the_running_version_is_deployed_as_a_rebuild() {
    let s = scenario();
    let mut driver = s.driver("runner-b").unwrap();
    driver.tick().await.unwrap();
    // 2.13.0 runs; ops rebuild it (a hotfix under the same version).
    let rebuild = "registry.example/runner:2.13.0-rebuild";
    s.set_desired("runner-b", "image", rebuild);
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(images_registered(&s), [rebuild]);
    let td = s
        .aws
        .ecs
        .task_definition(&s.aws.ecs.registrations()[0])
        .unwrap();
    assert_eq!(td.tags[VERSION_TAG], "2.13.0");
    // Then it is in place: nothing more happens, and status has nothing to flag.
    for _ in 0..3 {
        s.aws.clock.advance(Duration::from_mins(1));
        driver.tick().await.unwrap();
    }
    assert_eq!(s.aws.ecs.registrations().len(), 1);
    let done = record(&s, "runner-b").await;
    assert_eq!(done.phase, "done");
    assert_eq!(done.desired, None, "{:?}", done.desired);
}

/// After a pass: the record's reason is `code`, and status and plan both show `image` against
/// the running 2.13.0.
async fn shows_divergence(
    s: &Scenario,
    driver: &mut runner_updater_runtime::driver::RunnerDriver,
    code: &str,
    image: &str,
) {
    let running = "registry.example/runner:2.13.0";
    s.aws.clock.advance(Duration::from_mins(1));
    driver.tick().await.unwrap();
    let record = record(s, "runner-b").await;
    assert_eq!(record.note.as_ref().unwrap().code, code);
    let text = render_status(&[status_view(&record)], 4);
    let line = format!("image     : desired {image}, running {running}");
    assert!(text.contains(&line), "{line:?} missing:\n{text}");
    let observation = driver.observe_now().await.unwrap();
    let plan = render_plan(&plan_view(
        "runner-b",
        Some(&record),
        &observation,
        "stable",
        Millis(0),
    ));
    let line = format!("image: desired {image}, running {running}");
    assert!(plan.contains(&line), "{line:?} missing:\n{plan}");
}

#[tokio::test]
async fn a_desired_image_that_is_not_running_is_shown_by_status_and_plan_whatever_the_rules_say() {
    let s = scenario();
    let mut driver = s.driver("runner-b").unwrap();
    // A rebuild held by the pause switch.
    s.set_desired("runner-b", "auto-update", "false");
    s.set_desired("runner-b", "image", HOTFIX);
    shows_divergence(&s, &mut driver, "auto-update", HOTFIX).await;
    // A downgrade (refused by rule 4) with its default image.
    s.set_desired("runner-b", "auto-update", "true");
    s.clear_desired("runner-b", "image");
    s.set_desired("runner-b", "version", "2.12.0");
    shows_divergence(
        &s,
        &mut driver,
        "newer-version",
        "registry.example/runner:2.12.0",
    )
    .await;
    assert!(s.aws.ecs.registrations().is_empty());
}

#[tokio::test]
async fn a_pre_release_is_refused_on_stable_and_deployed_on_a_channel_that_accepts_it() {
    let s = scenario();
    let mut driver = s.driver("runner-b").unwrap();
    s.set_desired("runner-b", "version", "2.14.0-rc.1");
    for _ in 0..3 {
        driver.tick().await.unwrap();
        s.aws.clock.advance(Duration::from_mins(1));
    }
    let refused = record(&s, "runner-b").await;
    assert_eq!(
        refused.note.as_ref().unwrap().code,
        "pre-release-not-allowed"
    );
    assert!(s.aws.ecs.registrations().is_empty(), "nothing deployed");

    // A controller of the beta channel, configured to accept pre-releases there.
    let mut config = Config::from_toml(EMBEDDED_CONFIG).unwrap();
    config.channel = "beta".into();
    config.prerelease_channels = vec!["beta".to_owned()].into();
    let mut beta = Scenario::with_config(11, config).unwrap();
    beta.aws = s.aws.clone();
    beta.store = s.store.clone();
    s.set_desired("runner-b", "channel", "beta");
    let mut driver = beta.driver("runner-b").unwrap();
    beta.drive_to(&mut driver, Phase::Done, TICKS)
        .await
        .unwrap();
    assert_eq!(
        images_registered(&s),
        ["registry.example/runner:2.14.0-rc.1"]
    );
}
