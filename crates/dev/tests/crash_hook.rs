//! The crash hook of the dev tools' binary (`runner-updater-dev run` with
//! `RUNNER_UPDATER_TEST_CRASH`): a controller killed at any step resumes without repeating a
//! side effect, end to end on moto; and the hook itself, on the simulated AWS.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::process::Command;

use common::world::{kill, World, WAIT};

#[tokio::test]
async fn a_controller_killed_at_any_step_resumes_without_repeating_a_side_effect() {
    killed_at_any_step(false).await;
}

/// The same on the DynamoDB state table: the lease and the record in one item, every write
/// conditional (runs beside the SSM one: most of the time is rollouts and soaks, waited out).
#[tokio::test]
async fn a_controller_killed_at_any_step_on_the_state_table_resumes_without_repeating_a_side_effect(
) {
    killed_at_any_step(true).await;
}

async fn killed_at_any_step(on_state_table: bool) {
    // Instant steps are reached with the abort hook; the long ones (rollout, soak) with SIGKILL.
    let crashes = [
        "after_save:1",
        "after_save:2",
        "after_save:3",
        "after_command:register_task_definition",
        "after_command:update_service",
        "after_save:4",
    ];
    let runners: Vec<String> = (0..crashes.len() + 2)
        .map(|i| format!("kill-{i}"))
        .collect();
    let names: Vec<&str> = runners.iter().map(String::as_str).collect();
    // Rollout and soak long enough that SIGKILL lands in the phase it names.
    let mut world = if on_state_table {
        World::on_state_table(&names, 4, 4).await
    } else {
        World::with_timing(&names, 4, 4).await
    };
    // The crash hook is the dev tools' binary's: the product's ignores it.
    world.binary = PathBuf::from(env!("CARGO_BIN_EXE_runner-updater-dev"));
    let mut cases: Vec<(String, Option<&str>)> = runners
        .iter()
        .zip(crashes.iter().map(|c| Some(*c)))
        .map(|(r, c)| (r.clone(), c))
        .collect();
    cases.push((runners[crashes.len()].clone(), None)); // SIGKILL in awaiting_rollout
    cases.push((runners[crashes.len() + 1].clone(), None)); // SIGKILL in soaking
                                                            // Only one runner at a time is given a new version, so each crash hits its own update.
    for (index, (runner, crash)) in cases.iter().enumerate() {
        let victim = world.controller(&format!("victim-{index}"), *crash);
        world.put(runner, "version", "2.14.0");
        if crash.is_some() {
            {
                let mut victim = victim;
                let status = common::eventually("the planned crash", WAIT, || {
                    let exited = victim.0.try_wait().unwrap();
                    async move { exited }
                })
                .await;
                assert!(
                    !status.success(),
                    "{runner}: the victim should have aborted"
                );
            }
        } else {
            {
                let phase = if index == crashes.len() {
                    "awaiting_rollout"
                } else {
                    "soaking"
                };
                world.wait_for_phase(runner, phase, 1).await;
                kill(victim);
                let at_kill = world.record(runner).await.unwrap();
                assert_eq!(at_kill.phase, phase, "{runner}: killed in {phase}");
            }
        }
        let survivor = world.controller(&format!("survivor-{index}"), None);
        world.wait_for_phase(runner, "done", 1).await;
        kill(survivor);
        assert_eq!(
            world.revisions(runner).await,
            2,
            "{runner} ({crash:?}): one task definition registered\n{}",
            world.logs()
        );
        assert_eq!(
            world.updates(runner).len(),
            1,
            "{runner} ({crash:?}): one service update\n{}",
            world.logs()
        );
    }
}

/// `runner-updater-dev run --simulated` with a planned crash aborts right after the save it
/// names, that record written: the hook works on its own, without moto.
#[test]
fn the_dev_binary_aborts_at_the_planned_crash_after_persisting() {
    let directory = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_runner-updater-dev"))
        .args(["run", "--simulated", "--passes", "1", "--listen", "off"])
        .args(["--desired", "runner-b=2.14.0"])
        .env("RUNNER_UPDATER_STATE_DIR", directory.path())
        .env("RUNNER_UPDATER_TEST_CRASH", "after_save:2")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the planned crash did not happen:\n{stderr}"
    );
    assert!(
        stderr.contains("aborting (RUNNER_UPDATER_TEST_CRASH)"),
        "not the hook's abort:\n{stderr}"
    );
    assert!(
        stderr.contains("runner-b saved in registering_task_definition"),
        "the second save of runner-b is Locked → RegisteringTaskDefinition:\n{stderr}"
    );
    let record = std::fs::read_to_string(directory.path().join("runner-b.json")).unwrap();
    assert!(
        record.contains("\"phase\":\"registering_task_definition\""),
        "the record saved right before the crash: {record}"
    );
}
