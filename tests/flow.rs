//! End-to-end update flows on the simulated AWS: each story from idle to Done or `RolledBack`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

#[path = "common/scoped_tracing.rs"]
mod scoped_tracing;

use std::time::Duration;

use runner_updater_adapters::sim::ImageBehaviour;
use runner_updater_core::domain::observed::{
    DeploymentStatus, RolloutState, ATTEMPT_TAG, VERSION_TAG,
};
use runner_updater_core::domain::task_definition::READ_ONLY_FIELDS;
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::machine::Command;
use runner_updater_interface::scenario::Scenario;
use runner_updater_ports::AwsOp;
use runner_updater_ports::{Ecs, ErrorKind};

const TICKS: usize = 400;

fn scenario() -> Scenario {
    Scenario::new(7).unwrap()
}

/// runner-a's 2.15.0: its tasks exit 20 s after they start.
fn version_2_15_crashes(s: &Scenario) {
    s.image_behaves(
        &s.image_for("runner-a", "2.15.0"),
        ImageBehaviour::Crashing {
            after: Duration::from_secs(20),
        },
    );
}

async fn record(s: &Scenario, runner: &str) -> runner_updater_core::record::Record {
    s.store.load(runner).await.unwrap().unwrap()
}

#[tokio::test]
async fn a_new_version_is_deployed_cloned_field_by_field_and_ends_done() {
    let s = scenario();
    let mut driver = s.driver("runner-a").unwrap();
    s.drive_until(&mut driver, 3, |d| d.phase() == Phase::Idle)
        .await
        .unwrap();
    assert!(
        s.aws.ecs.registrations().is_empty(),
        "nothing happens while desired = running"
    );

    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();

    let registrations = s.aws.ecs.registrations();
    assert_eq!(
        registrations.len(),
        1,
        "exactly one task definition registered"
    );
    let updates = s.aws.ecs.updates();
    assert_eq!(updates.len(), 1, "exactly one service update");
    assert_eq!(updates[0].task_definition_arn, registrations[0]);

    let new = s.aws.ecs.task_definition(&registrations[0]).unwrap();
    let new_document = s.aws.ecs.document(&registrations[0]).unwrap();
    let old_document = s
        .aws
        .ecs
        .document("arn:aws:ecs:eu-west-1:123456789012:task-definition/runner-a:1")
        .unwrap();
    for (key, value) in &old_document {
        if READ_ONLY_FIELDS.contains(&key.as_str()) {
            continue;
        }
        if key == "containerDefinitions" {
            let (before, after) = (
                value.as_array().unwrap(),
                new_document[key].as_array().unwrap(),
            );
            assert_eq!(before.len(), after.len());
            for (b, a) in before.iter().zip(after) {
                for (field, v) in b.as_object().unwrap() {
                    if b["name"] == "runner" && field == "image" {
                        assert_eq!(a[field], "registry.example/runner:2.14.0");
                    } else {
                        assert_eq!(&a[field], v, "container field {field} changed");
                    }
                }
            }
        } else {
            assert_eq!(new_document.get(key), Some(value), "field {key} changed");
        }
    }
    assert_eq!(new.tags[VERSION_TAG], "2.14.0");
    let rec = record(&s, "runner-a").await;
    assert_eq!(new.tags[ATTEMPT_TAG], rec.attempt.as_ref().unwrap().id);

    let service = s
        .aws
        .ecs
        .describe_service("runners", "runner-a")
        .await
        .unwrap();
    let primary = service.primary().unwrap();
    assert_eq!(primary.task_definition_arn, registrations[0]);
    assert_eq!(primary.rollout_state, RolloutState::Completed);
    assert_eq!(
        rec.deployment_id.as_deref(),
        Some(primary.id.as_str()),
        "Done names the attempt's own deployment"
    );
    assert_eq!(rec.phase, "done");
    let path: Vec<(String, String)> = rec
        .transitions
        .iter()
        .map(|t| (t.from.clone(), t.to.clone()))
        .collect();
    let expected = [
        ("idle", "checking"),
        ("checking", "locked"),
        ("locked", "registering_task_definition"),
        ("registering_task_definition", "updating_service"),
        ("updating_service", "awaiting_rollout"),
        ("awaiting_rollout", "soaking"),
        ("soaking", "done"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    assert_eq!(path, expected);

    // A later pass sees version 2.14.0 running and does nothing more.
    s.drive_until(&mut driver, 3, |_| false).await.ok();
    assert_eq!(s.aws.ecs.updates().len(), 1);
    let rec = record(&s, "runner-a").await;
    assert!(rec
        .verdict
        .iter()
        .any(|r| r.rule == "newer-version" && !r.passed));
}

#[tokio::test]
async fn a_crashing_version_fails_fast_rolls_back_and_is_quarantined() {
    let s = scenario();
    version_2_15_crashes(&s);
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.15.0");
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();

    let rec = record(&s, "runner-a").await;
    assert_eq!(rec.failure.as_ref().unwrap().code, "unhealthy-tasks");
    assert_eq!(rec.failed.len(), 1);
    assert_eq!(rec.failed[0].version, "2.15.0");
    let updates = s.aws.ecs.updates();
    assert_eq!(updates.len(), 2, "one forward update and one rollback");
    assert_eq!(
        updates[1].task_definition_arn,
        rec.baseline.as_ref().unwrap().task_definition_arn
    );
    let service = s
        .aws
        .ecs
        .describe_service("runners", "runner-a")
        .await
        .unwrap();
    assert_eq!(
        service.task_definition_arn,
        rec.baseline.as_ref().unwrap().task_definition_arn
    );
    assert!(
        service.deployments.iter().all(|d| d.failed_tasks < 10),
        "rolled back before the circuit breaker's threshold"
    );

    // Not retried while the desired state stays the same.
    s.drive_until(&mut driver, 20, |_| false).await.ok();
    assert_eq!(s.aws.ecs.updates().len(), 2);
    assert_eq!(s.aws.ecs.registrations().len(), 1);
    let rec = record(&s, "runner-a").await;
    assert!(rec
        .verdict
        .iter()
        .any(|r| r.rule == "not-failed" && !r.passed));

    // A changed desired version is eligible again.
    s.set_desired("runner-a", "version", "2.15.1");
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
}

/// Found by the deterministic simulation (seed 1): a foreign writer moving the service after
/// our rollback update made the controller roll back a second time, fighting it.
#[tokio::test]
async fn a_rollback_is_made_once_and_a_foreign_writer_after_it_is_not_fought() {
    let s = scenario();
    version_2_15_crashes(&s);
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.15.0");
    s.drive_to(&mut driver, Phase::RollingBack, TICKS)
        .await
        .unwrap();
    let updates = s.aws.ecs.updates();
    assert_eq!(updates.len(), 2, "the forward update and the rollback");
    // Terraform points the service at the failed revision again, mid-rollback.
    let failed_revision = updates[0].task_definition_arn.clone();
    s.aws
        .ecs
        .update_service_as("runners", "runner-a", &failed_revision, "terraform")
        .unwrap();
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let by_us = s
        .aws
        .ecs
        .updates()
        .iter()
        .filter(|u| u.actor == "controller")
        .count();
    assert_eq!(by_us, 2, "no second rollback: {:?}", s.aws.ecs.updates());
    let rec = record(&s, "runner-a").await;
    assert!(
        rec.failure
            .as_ref()
            .unwrap()
            .reason
            .contains("not fighting it"),
        "{:?}",
        rec.failure
    );
    assert!(!rec.rollback_issued, "the flag belongs to RollingBack only");
}

/// Found by the deterministic simulation (seed 556): a crash right after the rollback call and
/// before its record, then a foreign writer; the restarted controller rolled back again.
#[tokio::test]
async fn a_rollback_made_before_a_crash_is_not_made_again_after_a_foreign_write() {
    let s = scenario();
    // The controller's rollback, not ECS's: the breaker's threshold above the fail-fast gate's
    // (its three tasks are stopped at once, ECS's current threshold being 3).
    s.aws.ecs.set_circuit_breaker_minimum(10);
    s.image_behaves(
        &s.image_for("runner-a", "2.15.0"),
        ImageBehaviour::NeverHealthy,
    );
    let plan = runner_updater_runtime::driver::CrashPlan {
        after_command_where: Some(|c| matches!(c, Command::RollBackService { .. })),
        ..runner_updater_runtime::driver::CrashPlan::default()
    };
    let mut first = s.driver("runner-a").unwrap().with_crash(plan);
    s.set_desired("runner-a", "version", "2.15.0");
    match s.drive_to(&mut first, Phase::RolledBack, TICKS).await {
        Err(runner_updater_interface::scenario::ScenarioError::Driver(
            runner_updater_runtime::driver::DriverError::Crashed(_),
        )) => {}
        other => panic!("expected the planned crash, got {other:?}"),
    }
    drop(first);
    let updates = s.aws.ecs.updates();
    assert_eq!(
        updates.len(),
        2,
        "the forward update and the rollback: {updates:?}"
    );
    s.aws
        .ecs
        .update_service_as(
            "runners",
            "runner-a",
            &updates[0].task_definition_arn,
            "terraform",
        )
        .unwrap();
    let mut second = s.driver_as("runner-a", "controller-2").unwrap();
    s.drive_to(&mut second, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let by_us = s
        .aws
        .ecs
        .updates()
        .iter()
        .filter(|u| u.actor == "controller")
        .count();
    assert_eq!(by_us, 2, "not made again: {:?}", s.aws.ecs.updates());
}

/// Found by the deterministic simulation (seeds 28, 170, 509): ECS's reads are eventually
/// consistent; a service update made just before a crash or a failed save was missing from the
/// next read, and the resumed attempt updated the service a second time.
#[tokio::test]
async fn a_service_update_missing_from_a_stale_read_is_not_made_twice() {
    let s = scenario();
    let plan = runner_updater_runtime::driver::CrashPlan {
        after_command_where: Some(|c| matches!(c, Command::UpdateService { .. })),
        ..runner_updater_runtime::driver::CrashPlan::default()
    };
    let mut first = s.driver("runner-a").unwrap().with_crash(plan);
    s.set_desired("runner-a", "version", "2.14.0");
    assert!(s.drive_to(&mut first, Phase::Done, TICKS).await.is_err());
    drop(first);
    assert_eq!(s.aws.ecs.updates().len(), 1);
    // Reads of the service show it as it was before the update for a while.
    s.aws.ecs.stale_reads(10);
    let mut again = s.driver("runner-a").unwrap();
    again.tick().await.unwrap();
    assert_eq!(s.aws.ecs.updates().len(), 1, "not decided on a stale read");
    assert_eq!(record(&s, "runner-a").await.note.unwrap().code, "retrying");
    s.aws.ecs.stale_reads(0);
    s.drive_to(&mut again, Phase::Done, TICKS).await.unwrap();
    assert_eq!(s.aws.ecs.updates().len(), 1, "{:?}", s.aws.ecs.updates());
}

/// Found in review: a controller at rest keeps its machine in memory; when another controller
/// died mid-attempt and its lease expired, the first one wrote its own state at rest over the
/// attempt in flight, which was then lost with its deployment unwatched.
#[tokio::test]
async fn an_attempt_left_by_a_dead_controller_is_adopted_not_overwritten() {
    let s = scenario();
    let mut idle = s.driver_as("runner-a", "controller-2").unwrap();
    idle.tick().await.unwrap(); // at rest, machine in memory
    let mut first = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(&mut first, Phase::AwaitingRollout, TICKS)
        .await
        .unwrap();
    let attempt = record(&s, "runner-a").await.attempt.unwrap().id;
    drop(first); // dies; its lease runs out
    s.aws.clock.advance(Duration::from_mins(3));
    s.drive_to(&mut idle, Phase::Done, TICKS).await.unwrap();
    let rec = record(&s, "runner-a").await;
    assert_eq!(
        rec.attempt.unwrap().id,
        attempt,
        "the same attempt, finished"
    );
    assert_eq!(s.aws.ecs.registrations().len(), 1);
    assert_eq!(s.aws.ecs.updates().len(), 1);
}

#[tokio::test]
async fn a_circuit_breaker_rollback_is_rolled_back_never_done() {
    let s = scenario();
    let mut config = s.config.clone();
    config.health.fail_fast_tasks = 50; // let ECS's own circuit breaker act first
    let s = Scenario::with_config(9, config).unwrap();
    s.aws.ecs.set_circuit_breaker_minimum(3);
    s.image_behaves(
        &s.image_for("runner-a", "2.15.0"),
        ImageBehaviour::Crashing {
            after: Duration::from_secs(15),
        },
    );
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.15.0");
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let rec = record(&s, "runner-a").await;
    assert_eq!(rec.failure.as_ref().unwrap().code, "circuit-breaker");
    let updates = s.aws.ecs.updates();
    assert_eq!(
        updates.len(),
        1,
        "ECS rolled back by itself: no second update from us"
    );
    assert!(rec.transitions.iter().all(|t| t.to != "done"));
}

#[tokio::test]
async fn tasks_turning_unhealthy_during_the_soak_roll_back() {
    let s = scenario();
    s.image_behaves(
        &s.image_for("runner-a", "2.15.0"),
        ImageBehaviour::UnhealthyAfter {
            after: Duration::from_mins(1),
        },
    );
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.15.0");
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let rec = record(&s, "runner-a").await;
    assert!(rec
        .transitions
        .iter()
        .any(|t| t.from == "awaiting_rollout" && t.to == "soaking"));
    assert!(
        rec.transitions
            .iter()
            .any(|t| t.from == "soaking" && t.to == "rolling_back"),
        "the rollback happened during the soak"
    );
    assert_eq!(rec.failure.unwrap().code, "unhealthy-tasks");
    assert_eq!(rec.failed.len(), 1);
}

#[tokio::test]
async fn a_rollout_that_never_gets_healthy_times_out_and_rolls_back() {
    let mut config = scenario().config;
    config.health.rollout_timeout_secs = 120;
    config.health.fail_fast_tasks = 100;
    let s = Scenario::with_config(3, config).unwrap();
    s.aws.ecs.set_circuit_breaker_minimum(100);
    s.image_behaves(
        &s.image_for("runner-a", "2.15.0"),
        ImageBehaviour::NeverHealthy,
    );
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.15.0");
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    assert_eq!(
        record(&s, "runner-a").await.failure.unwrap().code,
        "health-gate-timeout"
    );
}

#[tokio::test]
async fn auto_update_off_holds_the_runner() {
    let s = scenario();
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "auto-update", "false");
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_until(&mut driver, 10, |_| false).await.ok();
    assert!(s.aws.ecs.updates().is_empty());
    let rec = record(&s, "runner-a").await;
    assert_eq!(rec.note.unwrap().code, "auto-update");
    s.set_desired("runner-a", "auto-update", "true");
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
}

#[tokio::test]
async fn a_bad_value_is_reported_and_the_other_runner_still_updates() {
    let s = scenario();
    let (mut a, mut b) = (s.driver("runner-a").unwrap(), s.driver("runner-b").unwrap());
    s.set_desired("runner-a", "version", "2.14");
    s.set_desired("runner-b", "version", "2.14.0");
    s.drive_until(&mut a, 5, |_| false).await.ok();
    s.drive_to(&mut b, Phase::Done, TICKS).await.unwrap();
    let rec = record(&s, "runner-a").await;
    assert_eq!(rec.phase, "idle");
    let note = rec.note.unwrap();
    assert_eq!(note.code, "invalid-version");
    assert!(note.message.contains("three numbers"), "{}", note.message);
    assert_eq!(s.aws.ecs.updates().len(), 1, "only runner-b changed");
}

#[tokio::test]
async fn a_foreign_writer_stops_the_attempt_instead_of_fighting_it() {
    let s = scenario();
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(&mut driver, Phase::AwaitingRollout, TICKS)
        .await
        .unwrap();
    // Someone points the service at the original revision's clone by hand (Terraform, the console).
    let original = "arn:aws:ecs:eu-west-1:123456789012:task-definition/runner-a:1";
    let ecs = &s.aws.ecs;
    let mut doc = ecs.document(original).unwrap();
    for field in READ_ONLY_FIELDS {
        doc.remove(*field);
    }
    let foreign = ecs
        .register_document(doc, std::collections::BTreeMap::default())
        .unwrap();
    ecs.update_service_as("runners", "runner-a", &foreign, "terraform")
        .unwrap();
    s.drive_to(&mut driver, Phase::Idle, TICKS).await.unwrap();
    let rec = record(&s, "runner-a").await;
    assert_eq!(rec.note.unwrap().code, "foreign-writer");
    assert_eq!(
        ecs.updates()
            .iter()
            .filter(|u| u.actor == "controller")
            .count(),
        1
    );
    let hold = &rec.failed[0];
    assert!(hold.reason.starts_with("foreign-writer"), "{}", hold.reason);
    // The writer is not fought on the next passes: the target is held until the desired state changes.
    s.drive_until(&mut driver, 10, |_| false).await.ok();
    assert_eq!(
        ecs.updates()
            .iter()
            .filter(|u| u.actor == "controller")
            .count(),
        1
    );
    assert_eq!(ecs.updates().last().unwrap().actor, "terraform");
    assert!(record(&s, "runner-a")
        .await
        .verdict
        .iter()
        .any(|r| r.rule == "not-failed" && !r.passed));
}

#[tokio::test]
async fn a_lock_held_elsewhere_keeps_the_runner_idle_until_it_expires() {
    let s = scenario();
    let lock = s.ports().lock;
    let now = s.ports().clock.now();
    lock.acquire("runner-a", "controller-2", now, Duration::from_mins(5))
        .await
        .unwrap();
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    driver.tick().await.unwrap();
    assert!(
        s.store.load("runner-a").await.unwrap().is_none(),
        "nothing is written while another controller holds the runner"
    );
    assert!(s.aws.ecs.registrations().is_empty());
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert!(
        s.ports().clock.now().0 >= now.0 + 300_000,
        "taken only after the lease expired"
    );
}

#[tokio::test]
async fn transient_errors_are_retried_and_permanent_ones_stop_the_attempt() {
    let s = scenario();
    for _ in 0..2 {
        s.aws
            .ecs
            .faults
            .push(AwsOp::RegisterTaskDefinition, ErrorKind::Transient);
    }
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(s.aws.ecs.registrations().len(), 1);
    assert_eq!(
        s.aws.ecs.faults.pending(AwsOp::RegisterTaskDefinition),
        0,
        "the faults were hit"
    );

    // More transient faults than the driver retries: the attempt waits and succeeds later.
    for _ in 0..6 {
        s.aws
            .ecs
            .faults
            .push(AwsOp::RegisterTaskDefinition, ErrorKind::Transient);
    }
    s.set_desired("runner-a", "version", "2.14.1");
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(s.aws.ecs.faults.pending(AwsOp::RegisterTaskDefinition), 0);
    assert_eq!(s.aws.ecs.registrations().len(), 2);
    let rec = record(&s, "runner-a").await;
    assert!(rec.transitions.iter().all(|t| t.to != "rolled_back"));

    s.aws
        .ecs
        .faults
        .push(AwsOp::UpdateService, ErrorKind::Permanent);
    s.set_desired("runner-a", "version", "2.15.0");
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let rec = record(&s, "runner-a").await;
    assert_eq!(rec.failure.unwrap().code, "update-refused");
    assert_eq!(
        s.aws.ecs.updates().len(),
        2,
        "the refused update changed nothing (two earlier successful updates)"
    );
}

#[tokio::test]
async fn deployments_in_the_record_match_ecs() {
    let s = scenario();
    let mut driver = s.driver("runner-b").unwrap();
    s.set_desired("runner-b", "version", "2.14.0");
    s.drive_to(&mut driver, Phase::Soaking, TICKS)
        .await
        .unwrap();
    let rec = record(&s, "runner-b").await;
    let service = s
        .aws
        .ecs
        .describe_service("runners", "runner-b")
        .await
        .unwrap();
    let ours = service
        .deployment(rec.deployment_id.as_deref().unwrap())
        .unwrap();
    assert_eq!(ours.status, DeploymentStatus::Primary);
}

/// Found by the simulation (seed 136): a controller whose lease lapsed, its renewal failing,
/// ended its old attempt (Done) over the attempt another controller had started since.
#[tokio::test]
async fn a_controller_whose_lease_lapsed_does_not_end_an_attempt_replaced_since() {
    let s = scenario();
    s.set_desired("runner-b", "version", "2.14.0");
    let mut first = s.driver_as("runner-b", "c1").unwrap();
    s.drive_until(&mut first, 40, |d| d.phase() == Phase::Soaking)
        .await
        .unwrap();
    // c1 goes silent; its lease lapses; c2 takes the attempt over and ends it.
    s.aws.clock.advance(Duration::from_mins(5));
    let mut second = s.driver_as("runner-b", "c2").unwrap();
    s.drive_until(&mut second, 60, |d| d.phase() == Phase::Done)
        .await
        .unwrap();
    // Ops ask for 2.15.0; c2 starts attempt 2 and dies after registering its task definition.
    s.set_desired("runner-b", "version", "2.15.0");
    let mut second = s.driver_as("runner-b", "c2").unwrap().with_crash(
        runner_updater_runtime::driver::CrashPlan {
            after_command_where: Some(|c| matches!(c, Command::RegisterTaskDefinition { .. })),
            ..Default::default()
        },
    );
    for _ in 0..5 {
        if second.tick().await.is_err() {
            break;
        }
        s.aws.clock.advance(Duration::from_secs(10));
    }
    let replaced = record(&s, "runner-b").await;
    assert_ne!(replaced.phase, "done", "attempt 2 is in flight");
    let attempt = replaced.attempt.clone().unwrap().id;
    // c2's lease lapses too; c1 wakes with attempt 1 in memory and cannot renew its lease.
    s.aws.clock.advance(Duration::from_mins(5));
    for _ in 0..3 {
        s.aws
            .ssm
            .faults
            .push(AwsOp::PutParameter, ErrorKind::Transient);
    }
    let _ = first.tick().await;
    s.aws.ssm.faults.clear();
    let stored = record(&s, "runner-b").await;
    assert_eq!(
        stored.attempt.map(|a| a.id),
        Some(attempt),
        "c1 wrote {} over attempt 2",
        stored.phase
    );
}

#[tokio::test]
async fn a_registration_whose_answer_was_lost_is_found_again_behind_any_number_of_foreign_revisions(
) {
    for foreign in [10, 150] {
        let s = scenario();
        let mut driver = s.driver("runner-a").unwrap();
        s.set_desired("runner-a", "version", "2.14.0");
        s.aws.ecs.faults.lose_answer(AwsOp::RegisterTaskDefinition);
        s.drive_until(&mut driver, 20, |_| {
            s.aws.ecs.faults.answers_lost(AwsOp::RegisterTaskDefinition) == 1
        })
        .await
        .unwrap();
        // Meanwhile a busy family: another tool (a CI job, Terraform) registers revisions, more
        // than a page of ListTaskDefinitions.
        let base = "arn:aws:ecs:eu-west-1:123456789012:task-definition/runner-a:1";
        for _ in 0..foreign {
            s.aws
                .ecs
                .register_clone(
                    base,
                    "runner",
                    "registry.example/runner:ci",
                    std::collections::BTreeMap::new(),
                )
                .await
                .unwrap();
        }
        s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
        let attempt = record(&s, "runner-a").await.attempt.unwrap().id;
        let ours: Vec<String> = s
            .aws
            .ecs
            .registrations()
            .into_iter()
            .filter(|arn| {
                s.aws
                    .ecs
                    .task_definition(arn)
                    .unwrap()
                    .tags
                    .get(ATTEMPT_TAG)
                    == Some(&attempt)
            })
            .collect();
        assert_eq!(ours.len(), 1, "{foreign} foreign revisions: {ours:?}");
        let updates = s.aws.ecs.updates();
        assert_eq!(updates.len(), 1, "{foreign}");
        assert_eq!(updates[0].task_definition_arn, ours[0], "{foreign}");
    }
}

/// A lock whose fencing check answers, and then the process is frozen (SIGSTOP) for as long
/// as armed: a replica paused between its fencing check and its write.
struct FreezingLock {
    inner: std::sync::Arc<dyn runner_updater_ports::Lock>,
    clock: runner_updater_adapters::sim::SimClock,
    freeze: std::sync::Mutex<Option<Duration>>,
}

#[async_trait::async_trait]
impl runner_updater_ports::Lock for FreezingLock {
    async fn acquire(
        &self,
        runner: &str,
        holder: &str,
        now: runner_updater_core::domain::Millis,
        ttl: Duration,
    ) -> Result<runner_updater_ports::LockOutcome, runner_updater_ports::PortError> {
        self.inner.acquire(runner, holder, now, ttl).await
    }
    async fn check(
        &self,
        runner: &str,
        holder: &str,
        epoch: u64,
        now: runner_updater_core::domain::Millis,
    ) -> Result<bool, runner_updater_ports::PortError> {
        let answer = self.inner.check(runner, holder, epoch, now).await;
        if let Some(frozen) = self.freeze.lock().unwrap().take() {
            self.clock.advance(frozen);
        }
        answer
    }
    async fn holder(
        &self,
        runner: &str,
        now: runner_updater_core::domain::Millis,
    ) -> Result<Option<String>, runner_updater_ports::PortError> {
        self.inner.holder(runner, now).await
    }
    async fn release(
        &self,
        runner: &str,
        holder: &str,
        epoch: u64,
    ) -> Result<(), runner_updater_ports::PortError> {
        self.inner.release(runner, holder, epoch).await
    }
}

#[tokio::test]
async fn a_replica_frozen_past_its_lease_between_its_fencing_check_and_its_write_writes_nothing_after_it_thaws(
) {
    let s = scenario();
    let lock = std::sync::Arc::new(FreezingLock {
        inner: s.ports().lock,
        clock: s.aws.clock.clone(),
        freeze: std::sync::Mutex::new(None),
    });
    let ports = runner_updater_runtime::driver::Ports {
        lock: lock.clone(),
        ..s.ports()
    };
    let mut driver = runner_updater_runtime::driver::RunnerDriver::new(
        &s.config,
        s.config.runner("runner-a").unwrap(),
        "controller-1",
        ports,
    );
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(&mut driver, Phase::AwaitingRollout, TICKS)
        .await
        .unwrap();
    // The next fenced write (the pass in which the rollout is seen complete, to Soaking)
    // checks the lease, and the process is frozen right after, past the lease.
    *lock.freeze.lock().unwrap() = Some(Duration::from_secs(s.config.lease_secs + 10));
    let mut thawed = false;
    for _ in 0..50 {
        let before = record(&s, "runner-a").await;
        let updates = s.aws.ecs.updates().len();
        let report = driver.tick().await.unwrap();
        if lock.freeze.lock().unwrap().is_none() {
            assert_eq!(report.saves, 0, "no write after the thaw: {report:?}");
            assert_eq!(
                record(&s, "runner-a").await,
                before,
                "the record is as it was"
            );
            assert_eq!(s.aws.ecs.updates().len(), updates, "no ECS call either");
            thawed = true;
            break;
        }
        s.aws.clock.advance(driver.requeue_after());
    }
    assert!(thawed, "the freeze never came");
    let before = record(&s, "runner-a").await;
    // Nobody took the runner meanwhile: the next pass takes the next epoch itself (its own
    // lease expired: never "busy" with itself), once, and the attempt goes on under it.
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    let done = record(&s, "runner-a").await;
    assert_eq!(
        done.lock_epoch,
        before.lock_epoch.map(|epoch| epoch + 1),
        "one new epoch, no churn"
    );
}

/// Found by an acceptance run (issue 14): a `DescribeTasks` answer the SDK could not read kept
/// an attempt in `updating_service` for over a minute, reported as `update-refused … (will
/// retry)`. The service update reads no task list now.
#[tokio::test]
async fn an_unreadable_describe_tasks_answer_does_not_hold_the_service_update() {
    let s = scenario();
    s.aws.ecs.faults.push_unreadable(AwsOp::DescribeTasks);
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(s.aws.ecs.updates().len(), 1, "the update was made");
    assert_eq!(
        s.aws.ecs.faults.pending(AwsOp::DescribeTasks),
        1,
        "no task read on the way: ECS's completion stands for the essential runner container's health"
    );
    let rec = record(&s, "runner-a").await;
    assert!(rec.failed.is_empty(), "{:?}", rec.failed);
}

/// A read the service update needs fails, however it fails (here: an answer the SDK cannot
/// deserialize, which `aws::classify` calls permanent): it is reported as a read failure, never
/// as `update-refused`, and `updating_service` still ends at its deadline (`rollout_timeout`
/// after it was entered): the baseline is restored to be sure, and the version, about which
/// nothing was learnt, is not quarantined.
#[tokio::test]
async fn a_service_read_that_fails_in_updating_service_is_a_read_failure_and_the_deadline_applies()
{
    let mut config =
        runner_updater_config::Config::from_toml(runner_updater_config::EMBEDDED_CONFIG).unwrap();
    config.health.rollout_timeout_secs = 60;
    let s = Scenario::with_config(7, config).unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    // Stop the first controller right after it saved `updating_service`, before its call: the
    // next controller's update is not a first call (it may have been made), so it reads the
    // service first.
    let mut first =
        s.driver("runner-a")
            .unwrap()
            .with_crash(runner_updater_runtime::driver::CrashPlan {
                after_save: Some(4),
                ..Default::default()
            });
    for _ in 0..5 {
        if first.tick().await.is_err() {
            break;
        }
        s.aws.clock.advance(Duration::from_secs(10));
    }
    assert_eq!(record(&s, "runner-a").await.phase, "updating_service");
    drop(first);
    s.aws.clock.advance(Duration::from_mins(3)); // its lease runs out
    for _ in 0..100 {
        s.aws.ecs.faults.push_unreadable(AwsOp::DescribeServices);
    }
    let mut driver = s.driver_as("runner-a", "controller-2").unwrap();
    let resumed_at = runner_updater_ports::Clock::now(&s.aws.clock).0;
    let mut entered = None;
    for _ in 0..30 {
        driver.tick().await.unwrap();
        let rec = record(&s, "runner-a").await;
        if rec.phase != "updating_service" && entered.is_some() {
            break;
        }
        if rec.phase == "updating_service" {
            entered.get_or_insert(rec.since);
            // No note while the consistency window runs; then the read's failure, never a
            // refusal.
            if let Some(note) = rec.note.clone() {
                assert_ne!(note.code, "update-refused");
                assert!(!note.message.contains("refused"), "{note:?}");
            }
            assert!(rec.failure.is_none() && rec.failed.is_empty(), "{rec:?}");
        }
        s.aws.clock.advance(driver.requeue_after());
    }
    let entered = entered.expect("the attempt reached updating_service");
    let rec = record(&s, "runner-a").await;
    assert_eq!(
        rec.phase, "rolling_back",
        "left updating_service at its deadline"
    );
    let left = rec
        .transitions
        .iter()
        .find(|t| t.from == "updating_service")
        .unwrap();
    assert_eq!(left.to, "rolling_back");
    // Entered by the first controller, which stopped; its deadline had passed when the second
    // took over (its lease ran out first): left at the second's first passes.
    let waited = left.at - entered;
    assert!(
        waited >= 60_000,
        "left {waited} ms after entering, deadline 60 s"
    );
    assert!(
        left.at <= resumed_at + 20_000,
        "left {} ms after the second controller resumed",
        left.at - resumed_at
    );
    assert_eq!(rec.failure.as_ref().unwrap().code, "update-unconfirmed");

    s.aws.ecs.faults.clear();
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let rec = record(&s, "runner-a").await;
    assert_eq!(
        rec.service_after,
        Some(runner_updater_core::record::ServiceAfterRecord::Restored)
    );
    assert!(rec.failed.is_empty(), "not quarantined: {:?}", rec.failed);
    assert!(
        s.aws.ecs.updates().is_empty(),
        "the service was never updated"
    );
    // AWS readable again: the version is tried again and goes through.
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(s.aws.ecs.updates().len(), 1);
}

/// WARN and ERROR events, with their messages, while a guard from [`Warnings::capture`] lives
/// (on this thread: the tests run on a current-thread runtime).
#[derive(Clone, Default)]
struct Warnings(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Warnings {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        use tracing_subscriber::layer::SubscriberExt;
        scoped_tracing::set_default(tracing_subscriber::registry().with(self.clone()))
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if matches!(
            *event.metadata().level(),
            tracing::Level::WARN | tracing::Level::ERROR
        ) {
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(message.0);
        }
    }
}

/// Found by an acceptance run (issue 14): standby replicas logged WARN "the lease is no longer
/// ours" on every pass while another replica updated the runner: a false alarm on a normal
/// situation. WARN stays for a controller that loses its lease in the middle of its attempt.
#[tokio::test]
async fn a_standby_replica_following_another_replicas_attempt_logs_no_warning() {
    let s = scenario();
    let warnings = Warnings::default();
    s.set_desired("runner-b", "version", "2.14.0");
    let mut first = s.driver_as("runner-b", "c1").unwrap();
    s.drive_to(&mut first, Phase::AwaitingRollout, TICKS)
        .await
        .unwrap();
    let mut standby = s.driver_as("runner-b", "c2").unwrap();
    for _ in 0..5 {
        {
            let _guard = warnings.capture();
            standby.tick().await.unwrap();
        }
        first.tick().await.unwrap();
        s.aws.clock.advance(Duration::from_secs(10));
    }
    assert_eq!(standby.phase(), Phase::Idle, "the standby stays out");
    assert_eq!(
        warnings.take(),
        Vec::<String>::new(),
        "the standby's passes"
    );

    // The first controller goes silent mid-attempt; the standby takes the attempt over; the
    // first one, back, finds its lease gone: that is worth a warning.
    s.aws.clock.advance(Duration::from_mins(5));
    standby.tick().await.unwrap();
    assert_ne!(
        standby.phase(),
        Phase::Idle,
        "the standby adopted the attempt"
    );
    {
        let _guard = warnings.capture();
        first.tick().await.unwrap();
    }
    let warned = warnings.take();
    assert!(
        warned.iter().any(|w| w.contains("no longer ours")),
        "{warned:?}"
    );
}

/// Found by an acceptance run (issue 14): after a rollback `status` did not say what runs
/// now, its TARGET column showed the failed version (easily read as the running one), and the
/// reason said "0 are unhealthy" of tasks that never ran.
#[tokio::test]
async fn status_after_a_rollback_says_what_runs_now_and_marks_the_target_failed() {
    use runner_updater_interface::report::{render_status, status_view};
    let s = scenario();
    version_2_15_crashes(&s);
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.15.0");
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let view = status_view(&record(&s, "runner-a").await);
    let running = view.running.clone().unwrap();
    assert_eq!(running.version.as_deref(), Some("2.13.0"));
    assert_eq!(running.revision, Some(1));
    assert_eq!(running.health, "healthy");
    let reason = view.reason.clone().unwrap();
    assert!(!reason.contains(" 0 "), "{reason}");
    assert!(reason.contains("stopped"), "{reason}");
    let text = render_status(std::slice::from_ref(&view), 8);
    assert!(text.contains("2.15.0 (failed)"), "{text}");
    assert!(text.contains("2.13.0 healthy"), "{text}");
    assert!(
        text.contains("running   : 2.13.0 (rev 1), healthy: the rollback's deployment COMPLETED"),
        "{text}"
    );
    assert!(text.contains("2.15.0 is quarantined"), "{text}");
    let json = serde_json::to_value(&view).unwrap();
    assert_eq!(json["running"]["version"], "2.13.0");
    assert_eq!(json["running"]["health"], "healthy");
    assert_eq!(json["target_failed"], true);

    // Done: the target runs, healthy.
    s.set_desired("runner-a", "version", "2.15.1");
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    let view = status_view(&record(&s, "runner-a").await);
    let running = view.running.unwrap();
    assert_eq!(running.version.as_deref(), Some("2.15.1"));
    assert_eq!(running.health, "healthy");
    assert!(!view.target_failed);
}

#[tokio::test]
async fn status_after_a_refused_update_says_the_service_was_left_unchanged() {
    let s = scenario();
    s.aws
        .ecs
        .faults
        .push(AwsOp::UpdateService, ErrorKind::Permanent);
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let view = runner_updater_interface::report::status_view(&record(&s, "runner-a").await);
    let running = view.running.unwrap();
    assert_eq!(running.version.as_deref(), Some("2.13.0"));
    assert_eq!(running.health, "unchanged");
    assert!(
        running.summary.contains("never changed the service"),
        "{}",
        running.summary
    );
}

/// Found by an acceptance run (issue 14): a runner that never had an attempt showed SINCE
/// `1970-01-01T00:00:00Z`.
#[tokio::test]
async fn status_shows_no_since_for_a_runner_that_never_made_a_transition() {
    let s = scenario();
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14"); // a bad value: a record at rest, with a note
    s.drive_until(&mut driver, 3, |_| false).await.ok();
    let rec = record(&s, "runner-a").await;
    assert!(rec.transitions.is_empty());
    let view = runner_updater_interface::report::status_view(&rec);
    assert_eq!(view.since, "-");
    let text = runner_updater_interface::report::render_status(&[view], 8);
    assert!(!text.contains("1970"), "{text}");
}

/// Found by the review of issue 14's change: a registration whose reads (or calls) keep
/// failing held its attempt, and its lease, for ever; it ends within `rollout_timeout`, with
/// the service untouched and the version not quarantined.
#[tokio::test]
async fn a_registration_that_never_gets_through_ends_in_time_untouched_and_not_quarantined() {
    let s = scenario();
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    for _ in 0..2_000 {
        s.aws
            .ecs
            .faults
            .push(AwsOp::RegisterTaskDefinition, ErrorKind::Transient);
    }
    s.drive_to(&mut driver, Phase::RolledBack, TICKS)
        .await
        .unwrap();
    let rec = record(&s, "runner-a").await;
    assert_eq!(
        rec.failure.as_ref().map(|f| f.code.as_str()),
        Some("register-unconfirmed")
    );
    assert!(rec.failed.is_empty(), "not quarantined: {:?}", rec.failed);
    assert!(
        s.aws.ecs.updates().is_empty(),
        "the service was not touched"
    );
    s.aws.ecs.faults.clear();
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
}

/// On the state table, a record write DynamoDB refuses (another controller wrote the record
/// since this one read it) is not a failed pass: the driver drops what it holds, reads the
/// record again and goes on from it, with no side effect made twice.
#[tokio::test]
async fn a_record_write_the_state_table_refuses_is_reloaded_and_nothing_is_made_twice() {
    let mut s = scenario();
    s.use_state_table("controller-1");
    let mut driver = s.driver("runner-a").unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(&mut driver, Phase::AwaitingRollout, TICKS)
        .await
        .unwrap();
    // Another writer's write of the same record: the version this driver read is stale.
    let mut item = s.aws.table.item("runner-a").unwrap();
    let stored = item.record.as_mut().unwrap();
    stored.version += 1;
    let bumped = stored.version;
    s.aws.table.put_item(item);
    let mut refused = false;
    for _ in 0..20 {
        let report = driver.tick().await.unwrap();
        if !driver.loaded() {
            assert_eq!(report.saves, 0, "the refused write is not counted as made");
            assert_eq!(
                s.aws
                    .table
                    .item("runner-a")
                    .unwrap()
                    .record
                    .unwrap()
                    .version,
                bumped,
                "nothing was written over the other write"
            );
            refused = true;
            break;
        }
        s.aws.clock.advance(driver.requeue_after());
    }
    assert!(refused, "the state table never refused the stale write");
    s.drive_to(&mut driver, Phase::Done, TICKS).await.unwrap();
    assert_eq!(s.aws.ecs.registrations().len(), 1, "one registration");
    assert_eq!(s.aws.ecs.updates().len(), 1, "one service update");
}

/// `runner_updater_lease_lost_total` (what `RunnerUpdaterLeaseLost` alerts on) counts a lease
/// lost by the controller that was updating the runner under it — here one frozen past its
/// lease while another adopted the attempt — and nothing else: not the controller that adopted
/// the expired lease, not the attempt's normal end.
#[tokio::test]
async fn a_lease_lost_mid_attempt_is_counted_by_its_holder_only() {
    use runner_updater_runtime::metrics::Metrics;
    use std::sync::Arc;
    let lost = |metrics: &Metrics| {
        metrics
            .render()
            .lines()
            .find_map(|line| {
                line.strip_prefix("runner_updater_lease_lost_total{runner=\"runner-a\"} ")
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("no lease_lost series:\n{}", metrics.render()))
    };
    let s = scenario();
    let (m1, m2) = (Arc::new(Metrics::new()), Arc::new(Metrics::new()));
    let mut holder = s
        .driver_as("runner-a", "controller-1")
        .unwrap()
        .with_metrics(m1.clone());
    let mut standby = s
        .driver_as("runner-a", "controller-2")
        .unwrap()
        .with_metrics(m2.clone());
    standby.tick().await.unwrap();
    s.set_desired("runner-a", "version", "2.14.0");
    s.drive_to(&mut holder, Phase::AwaitingRollout, TICKS)
        .await
        .unwrap();
    assert_eq!(lost(&m1), "0", "counted from zero");
    // The holder freezes past its lease; the standby adopts the attempt and finishes it.
    s.aws.clock.advance(Duration::from_mins(4));
    s.drive_to(&mut standby, Phase::Done, TICKS).await.unwrap();
    assert_eq!(
        lost(&m2),
        "0",
        "adopting an expired lease is not losing one"
    );
    // The holder thaws: its next pass finds the lease gone.
    let _ = holder.tick().await;
    assert_eq!(lost(&m1), "1", "{}", m1.render());
    assert_eq!(lost(&m2), "0");
}
