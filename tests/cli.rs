//! The real binary: demo, diagram, status and configuration errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use std::process::Command;

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_runner-updater"))
}

#[test]
fn demo_tells_the_four_stories_and_exits_zero() {
    let output = binary().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for needle in [
        "1. A clean update",
        "soaking → done",
        "2. A bad version",
        "rolling_back → rolled_back",
        "rule not-failed fails",
        "3. A crash in the middle",
        "process killed",
        "restarted",
        "4. Infrastructure first",
        "creating_change_set → awaiting_approval",
        "replaces Queue",
        "warning: the availability-zone parameter changes but no subnet parameter does",
        "runner-updater approve runner-a",
        "stacks updated in order: runner-a-iam → runner-a-main",
        "Summary",
        "$ runner-updater status",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
}

#[test]
fn status_reads_the_records_a_demo_left_behind() {
    let directory = tempfile::tempdir().unwrap();
    let state = directory.path().join("state");
    let demo = binary()
        .args(["demo", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(demo.status.success());
    let output = binary()
        .args(["status", "--json"])
        .env("RUNNER_UPDATER_STATE_DIR", &state)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let views: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let views = views.as_array().unwrap();
    assert_eq!(views.len(), 2);
    assert_eq!(views[0]["runner"], "runner-a");
    assert_eq!(views[0]["state"], "Done");
    assert_eq!(views[1]["state"], "RolledBack");
    assert_eq!(views[1]["reason_code"], "unhealthy-tasks");
    let human = binary()
        .args(["status", "runner-b"])
        .env("RUNNER_UPDATER_STATE_DIR", &state)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        text.contains("quarantined") && text.contains("last transitions"),
        "{text}"
    );
}

#[test]
fn diagram_prints_the_top_level_states() {
    let output = binary().arg("diagram").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for state in [
        "Idle",
        "Checking",
        "Locked",
        "Deploying",
        "HealthGate",
        "Done",
        "RolledBack",
    ] {
        assert!(text.contains(state), "{state} missing");
    }
    let dot = binary()
        .args(["diagram", "--format", "dot", "--level", "full"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&dot.stdout).contains("subgraph cluster_HealthGate"));
}

#[test]
fn a_bad_configuration_is_refused_with_its_reason() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bad.toml");
    std::fs::write(&path, "channel = \"nightly\"\n").unwrap();
    let output = binary()
        .args(["status", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("known_channels"), "{stderr}");
}

#[test]
fn plan_shows_every_rule_and_the_next_step() {
    let directory = tempfile::tempdir().unwrap();
    let output = binary()
        .args([
            "plan",
            "runner-a",
            "--simulated",
            "--desired",
            "runner-a=2.14.0",
        ])
        .env("RUNNER_UPDATER_STATE_DIR", directory.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for rule in [
        "channel",
        "auto-update",
        "infrastructure",
        "newer-version",
        "different-image",
        "not-failed",
    ] {
        assert!(text.contains(rule), "{rule} missing:\n{text}");
    }
    assert!(text.contains("next: update 2.13.0 -> 2.14.0"), "{text}");
}

#[test]
fn run_on_the_simulated_aws_updates_and_persists() {
    let directory = tempfile::tempdir().unwrap();
    let output = binary()
        .args([
            "run",
            "--simulated",
            "--passes",
            "1",
            "--desired",
            "runner-b=2.14.0",
        ])
        .env("RUNNER_UPDATER_STATE_DIR", directory.path())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let record = std::fs::read_to_string(directory.path().join("runner-b.json")).unwrap();
    assert!(
        record.contains("\"phase\":\"awaiting_rollout\""),
        "{record}"
    );
    let refused = binary()
        .args(["run", "--desired", "runner-b=2.14.0"])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "--desired is for the simulation only"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--simulated only"));
}
