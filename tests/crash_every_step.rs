//! Crash at every step: for every save (stop right after it, before the next effect) and every
//! command (stop right after the effect, before its result is recorded) of a full update, on
//! the success path and on both rollback paths, the controller is rebuilt from the store and
//! must converge to the same end with exactly one task definition registered and one forward
//! service update (plus at most one rollback update) for the attempt.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use std::time::Duration;

use runner_updater_adapters::sim::ImageBehaviour;
use runner_updater_core::machine::phase::Phase;
use runner_updater_interface::scenario::{Scenario, ScenarioError};
use runner_updater_runtime::driver::{CrashPlan, DriverError};

const RUNNER: &str = "runner-a";
const TICKS: usize = 400;

#[derive(Clone, Copy)]
struct Story {
    name: &'static str,
    version: &'static str,
    behaviour: Option<ImageBehaviour>,
    fail_fast_tasks: u32,
    breaker_minimum: u32,
    end: Phase,
    rollback_updates: usize,
}

const STORIES: [Story; 3] = [
    Story {
        name: "success",
        version: "2.14.0",
        behaviour: None,
        fail_fast_tasks: 2,
        breaker_minimum: 10,
        end: Phase::Done,
        rollback_updates: 0,
    },
    Story {
        name: "fail-fast rollback",
        version: "2.15.0",
        behaviour: Some(ImageBehaviour::Crashing {
            after: Duration::from_secs(20),
        }),
        fail_fast_tasks: 2,
        breaker_minimum: 10,
        end: Phase::RolledBack,
        rollback_updates: 1,
    },
    Story {
        name: "circuit-breaker rollback",
        version: "2.15.0",
        behaviour: Some(ImageBehaviour::Crashing {
            after: Duration::from_secs(15),
        }),
        fail_fast_tasks: 50,
        breaker_minimum: 3,
        end: Phase::RolledBack,
        rollback_updates: 0,
    },
];

fn scenario(story: &Story, on_table: bool) -> Scenario {
    let mut config = Scenario::new(1).unwrap().config;
    config.health.fail_fast_tasks = story.fail_fast_tasks;
    let mut s = Scenario::with_config(11, config).unwrap();
    if on_table {
        // Records and leases in the state table: every write conditional, the driver making
        // no read of its own before a save, the lease renewed in one write.
        s.use_state_table("reader");
    }
    s.aws.ecs.set_circuit_breaker_minimum(story.breaker_minimum);
    if let Some(behaviour) = story.behaviour {
        s.image_behaves(&s.image_for(RUNNER, story.version), behaviour);
    }
    s.set_desired(RUNNER, "version", story.version);
    s
}

/// Runs the story once without a crash and returns (saves, commands).
async fn measure(story: &Story, on_table: bool) -> (u32, u32) {
    let s = scenario(story, on_table);
    let mut driver = s.driver(RUNNER).unwrap();
    let reports = s.drive_to(&mut driver, story.end, TICKS).await.unwrap();
    let saves = reports.iter().map(|r| r.saves).sum();
    let commands = reports
        .iter()
        .map(|r| u32::try_from(r.commands.len()).unwrap())
        .sum();
    (saves, commands)
}

/// Crashes per `plan`, restarts as `restart_holder`, and checks the end state and effect counts.
async fn crash_and_resume(
    story: &Story,
    plan: CrashPlan,
    restart_holder: &str,
    on_table: bool,
) -> Result<bool, String> {
    let s = scenario(story, on_table);
    let context = format!(
        "story {:?}, {plan:?}, restart as {restart_holder}{}",
        story.name,
        if on_table { ", on the state table" } else { "" }
    );
    let mut first = s.driver(RUNNER).unwrap().with_crash(plan);
    let crashed = match s.drive_to(&mut first, story.end, TICKS).await {
        Ok(_) => false,
        Err(ScenarioError::Driver(DriverError::Crashed(_))) => true,
        Err(other) => return Err(format!("{context}: first run failed: {other}")),
    };
    drop(first);
    let mut second = s.driver_as(RUNNER, restart_holder).unwrap();
    let end = story.end;
    s.drive_until(&mut second, TICKS, |d| d.phase() == end)
        .await
        .map_err(|e| format!("{context}: resume failed: {e}"))?;
    // A few more passes must not repeat anything.
    for _ in 0..5 {
        second.tick().await.map_err(|e| format!("{context}: {e}"))?;
    }

    let registrations = s.aws.ecs.registrations();
    if registrations.len() != 1 {
        return Err(format!(
            "{context}: {} task definitions registered: {registrations:?}",
            registrations.len()
        ));
    }
    let updates = s.aws.ecs.updates();
    let forward = updates
        .iter()
        .filter(|u| u.task_definition_arn == registrations[0])
        .count();
    let rollback = updates.len() - forward;
    if forward != 1 || rollback != story.rollback_updates {
        return Err(format!(
            "{context}: {forward} forward and {rollback} rollback updates: {updates:?}"
        ));
    }
    let record = s
        .store
        .load(RUNNER)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no record")?;
    if record.phase != story.end.name() {
        return Err(format!("{context}: ended in {}", record.phase));
    }
    let failed_expected = usize::from(story.end == Phase::RolledBack);
    if record.failed.len() != failed_expected {
        return Err(format!("{context}: {} failed marks", record.failed.len()));
    }
    Ok(crashed)
}

#[tokio::test]
async fn every_crash_point_of_every_story_converges_without_repeating_a_side_effect() {
    every_crash_point(false).await;
}

#[tokio::test]
async fn every_crash_point_of_every_story_on_the_state_table_converges_without_repeating_a_side_effect(
) {
    every_crash_point(true).await;
}

async fn every_crash_point(on_table: bool) {
    let mut failures = Vec::new();
    let mut crash_points = 0;
    for story in &STORIES {
        let (saves, commands) = measure(story, on_table).await;
        assert!(
            saves >= 6,
            "story {:?} saved only {saves} times",
            story.name
        );
        let plans = CrashPlan::every_step(saves, commands);
        for plan in plans {
            for holder in ["controller-1", "controller-2"] {
                match crash_and_resume(story, plan, holder, on_table).await {
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
    println!("{crash_points} crash points exercised");
}
