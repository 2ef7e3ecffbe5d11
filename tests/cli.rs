//! The real binary: demo, diagram, status and configuration errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

mod common;

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
    assert_eq!(views[1]["reason_code"], "circuit-breaker");
    assert_eq!(
        views[0]["lease"]["state"], "not-read",
        "the file store is read without AWS"
    );
    assert!(
        views[0]["trace_id"].as_str().is_some_and(|t| t.len() == 32),
        "each attempt names its trace, with no exporter configured"
    );
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

/// The crash hook is the dev tools' binary's (`runner-updater-dev`): the product ignores
/// `RUNNER_UPDATER_TEST_CRASH` (a stray variable in a pod must not make it abort), and its
/// help names none of the dev tools.
#[test]
fn the_product_ignores_the_crash_hook_and_ships_no_dev_tool() {
    let directory = tempfile::tempdir().unwrap();
    let output = binary()
        .args(["run", "--simulated", "--passes", "1", "--listen", "off"])
        .args(["--desired", "runner-b=2.14.0"])
        .env("RUNNER_UPDATER_STATE_DIR", directory.path())
        .env("RUNNER_UPDATER_TEST_CRASH", "after_save:2")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("RUNNER_UPDATER_TEST_CRASH"), "{stderr}");
    let record = std::fs::read_to_string(directory.path().join("runner-b.json")).unwrap();
    assert!(
        record.contains("\"phase\":\"awaiting_rollout\""),
        "the update went on past the second save: {record}"
    );
    let help = binary().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for command in ["run", "status", "plan", "approve", "diagram", "demo"] {
        assert!(
            help.contains(&format!("  {command} ")),
            "{command} missing:\n{help}"
        );
    }
    for dev in ["simulate", "bench"] {
        assert!(
            !help.contains(&format!("  {dev} ")),
            "{dev} in the product's help:\n{help}"
        );
        let refused = binary().arg(dev).output().unwrap();
        assert!(!refused.status.success(), "the product ran `{dev}`");
    }
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
            "--listen",
            "off",
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
        .args(["run", "--desired", "runner-b=2.14.0", "--listen", "off"])
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "--desired is for the simulation only"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--simulated only"));
    let no_port = binary()
        .args([
            "run",
            "--simulated",
            "--listen",
            "off",
            "--listen-port-file",
        ])
        .arg(directory.path().join("port"))
        .output()
        .unwrap();
    assert!(
        !no_port.status.success(),
        "no port to report without --listen"
    );
    assert!(
        String::from_utf8_lossy(&no_port.stderr).contains("--listen-port-file needs --listen"),
        "{}",
        String::from_utf8_lossy(&no_port.stderr)
    );
}

/// `GET path` over HTTP/1.1 on 127.0.0.1; (status, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    common::http(port, "GET", path, None)
}

/// `runner-updater run --simulated --listen 127.0.0.1:0`, which reports the port it bound in
/// a file: the child, its port, and the file its log (stderr) goes to.
/// A controller process started by a test, killed when the test ends however it ends (a
/// failed assertion included): no process outlives its test.
struct Running(std::process::Child);

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_listening(
    directory: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Running, u16, std::path::PathBuf) {
    let port_file = directory.join("listen.port");
    let log = directory.join("controller.log");
    let mut child = Running(
        binary()
            .args(["run", "--simulated"])
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--listen-port-file"])
            .arg(&port_file)
            .env("RUNNER_UPDATER_STATE_DIR", directory.join("state"))
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let port = common::reported_port(&mut child, &port_file, "runner-updater run", Some(&log));
    (child, port, log)
}

#[test]
#[allow(clippy::disallowed_methods)] // polls a real process, with a deadline
fn run_serves_metrics_health_and_readiness() {
    let directory = tempfile::tempdir().unwrap();
    let (mut child, port, log) =
        run_listening(directory.path(), &["--desired", "runner-b=2.14.0"], &[]);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains(&format!("listen=127.0.0.1:{port}")),
        "the bound address is logged before the port file is written:\n{logged}"
    );
    // A scrape may fall inside a pass (the state gauge moves at each transition, the lease
    // gauge at the end of the pass): poll until every line is there.
    let expected = [
        "runner_updater_state{runner=\"runner-b\",state=\"awaiting_rollout\"} 1",
        "runner_updater_transitions_total{runner=\"runner-b\",from=\"idle\",to=\"checking\"} 1",
        "runner_updater_commands_total{runner=\"runner-b\",command=\"update_service\",outcome=\"ok\"} 1",
        "runner_updater_lease_held{runner=\"runner-b\"} 1",
        "runner_updater_lease_held{runner=\"runner-a\"} 0",
        "runner_updater_aws_reachable{runner=\"runner-a\"} 1",
        "# TYPE runner_updater_reconcile_duration_seconds histogram",
    ];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let metrics = loop {
        let body = match http_get(port, "/metrics") {
            Some((200, body)) => body,
            _ => String::new(),
        };
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|line| !body.contains(line))
            .collect();
        if missing.is_empty() {
            break body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "missing {missing:?} within 30 s in:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(http_get(port, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(port, "/readyz").unwrap().0, 200);
    assert_eq!(http_get(port, "/nothing").unwrap().0, 404);

    // The exposition is valid for Prometheus itself.
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; tests/run installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let terminated = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "no exit on SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        http_get(port, "/healthz").is_none(),
        "the server stopped with the controller"
    );
}

/// The number of passes a controller has made, from its metrics (`reconcile_duration_seconds`
/// counts one per runner per pass).
fn passes(port: u16, runner: &str) -> Option<u64> {
    let (_, body) = http_get(port, "/metrics")?;
    let prefix = format!("runner_updater_reconcile_duration_seconds_count{{runner=\"{runner}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
#[allow(clippy::disallowed_methods)] // polls a real process, with a deadline
fn a_pass_can_be_triggered_now_by_http_or_sighup() {
    let directory = tempfile::tempdir().unwrap();
    // An hour between passes: only a trigger makes the next one.
    let (mut child, port, _) = run_listening(
        directory.path(),
        &[],
        &[("RUNNER_UPDATER_POLL_INTERVAL_SECS", "3600")],
    );
    let wait_for = |at_least: u64, what: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if passes(port, "runner-a").is_some_and(|n| n >= at_least) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    wait_for(1, "no first pass within 30 s");
    let first = passes(port, "runner-a").unwrap();
    let (status, body) = common::http(port, "POST", "/trigger", None).unwrap();
    assert_eq!(status, 202, "{body}");
    wait_for(first + 1, "POST /trigger made no pass");
    let second = passes(port, "runner-a").unwrap();
    let hangup = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    wait_for(second + 1, "SIGHUP made no pass");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop the controller"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `run` counts the SSM parameters the fleet needs before it starts: above the account's
/// limit it refuses by name, with what to do; near it, it warns and runs.
#[test]
fn run_refuses_a_fleet_that_does_not_fit_in_the_ssm_parameter_limit() {
    let directory = tempfile::tempdir().unwrap();
    let config = |max: usize| {
        let path = directory.path().join(format!("config-{max}.toml"));
        let text = runner_updater_config::EMBEDDED_CONFIG
            .replace("backend = \"file\"", "backend = \"ssm\"")
            + &format!("\n[aws]\nssm_parameters_max = {max}\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let run = |max: usize| {
        binary()
            .arg("--config")
            .arg(config(max))
            .args(["run", "--simulated", "--passes", "1", "--listen", "off"])
            .env("RUNNER_UPDATER_STATE_DIR", directory.path().join("state"))
            .output()
            .unwrap()
    };
    // Two runners on the SSM store: a record and two lease epochs each, still to create.
    let refused = run(5);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("needs up to 8 SSM parameters (2 under the prefix now, up to 6")
            && stderr.contains("ParameterLimitExceeded")
            && stderr.contains("state_store.backend = \"dynamodb\""),
        "{stderr}"
    );
    let near = run(9);
    let stderr = String::from_utf8_lossy(&near.stderr);
    assert!(near.status.success(), "{stderr}");
    assert!(stderr.contains("near the limit"), "{stderr}");
}
