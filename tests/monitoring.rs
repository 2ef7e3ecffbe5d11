//! The alert rules and the dashboard (issue 22) against what the controller really exposes:
//! `promtool` checks and unit-tests the rules (`tests/alerts/alerts.test.yaml`: each alert
//! fired by one series and not by another); a running controller — a channel's release and
//! change events on, on moto — is scraped, and every metric name a rule or a panel
//! uses must be in its exposition with its `HELP` and `TYPE`; the dashboard must parse as one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use common::world::{World, PREFIX, WAIT};

const RULES: &str = "helm/runner-updater/files/alerts.yaml";
const RULE_TESTS: &str = "tests/alerts/alerts.test.yaml";
const DASHBOARD: &str = "helm/runner-updater/files/dashboard.json";

fn root() -> PathBuf {
    common::repository_root()
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(root().join(relative)).unwrap()
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(root())
        .output()
        .expect("promtool (Debian package prometheus; tests/run installs it)");
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_rules_are_valid_and_each_alert_fires_on_its_series_and_not_on_another() {
    promtool(&["check", "rules", RULES]);
    promtool(&["test", "rules", RULE_TESTS]);
    // Every alert has its tests, its runbook entry, a severity, a summary and a description.
    let rules = read(RULES);
    let tests = read(RULE_TESTS);
    let readme = read("README.md");
    // The folded descriptions, one space between words.
    let flat = rules.split_whitespace().collect::<Vec<_>>().join(" ");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 11, "{alerts:?}");
    for alert in &alerts {
        let firing = format!("alertname: {alert}\n");
        assert!(
            tests.matches(&firing).count() >= 2,
            "{alert}: a series that fires it and one that must not, in {RULE_TESTS}"
        );
        assert!(
            readme.contains(&format!("- **{alert}.**"))
                && readme.contains(&format!("| `{alert}` |")),
            "{alert}: its row and its runbook entry in README.md, \"Alerts and dashboard\""
        );
        assert!(
            flat.contains(&format!(
                "Runbook: README.md, \"Alerts and dashboard\", {alert}."
            )),
            "{alert}: its description points at its runbook"
        );
    }
    assert_eq!(
        rules.matches("severity: ").count(),
        alerts.len(),
        "a severity each"
    );
    assert_eq!(rules.matches("summary: ").count(), alerts.len());
    assert_eq!(rules.matches("description: ").count(), alerts.len());
}

/// `runner_updater_…` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("runner_updater_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The family a sample name belongs to in the exposition: a histogram's `_bucket`, `_sum` and
/// `_count` are its family's.
fn declared(exposition: &str, name: &str) -> bool {
    let has = |family: &str| {
        exposition.contains(&format!("# HELP {family} "))
            && exposition.contains(&format!("# TYPE {family} "))
    };
    has(name)
        || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix).is_some_and(|family| {
                has(family) && exposition.contains(&format!("# TYPE {family} histogram"))
            })
        })
}

/// Scrapes a controller on moto — its runners following channel `stable`, change events on
/// (the set-up template's rule and queue) — once a channel's release (announced by its event)
/// has updated its canary: every family of the alerts and the panels has a series by then.
async fn scrape_a_controller_at_work() -> String {
    let world = World::new(&["runner-a", "runner-b", "runner-c"]).await;
    let url = world.setup_events();
    let config = std::fs::read_to_string(&world.config).unwrap()
        + &format!("[events]\nqueue_url = \"{url}\"\nbackstop_interval_secs = 60\nwait_secs = 2\n");
    std::fs::write(&world.config, config).unwrap();
    let (_controller, port) = world.controller_serving("controller-1");
    world.put_announced(
        &format!("{PREFIX}/_channels/stable/release"),
        r#"{"version": "2.14.0", "plan": {"canary": 1, "waves": [100]}}"#,
    );
    let at_work = [
        "runner_updater_release_wave{channel=\"stable\"}",
        "runner_updater_release_wave_since_timestamp_seconds{channel=\"stable\"}",
        "runner_updater_events_enabled 1",
        "runner_updater_events_received_total{kind=\"channel\"}",
        "runner_updater_event_lag_seconds_count",
        "runner_updater_state_since_timestamp_seconds{runner=\"runner-a\",state=",
        "runner_updater_lease_lost_total{runner=\"runner-a\"}",
        "runner_updater_release_finished{channel=\"stable\"}",
        "runner_updater_last_pass_timestamp_seconds ",
        "runner_updater_updates_total{",
        "runner_updater_aws_calls_total{",
    ];
    common::eventually("the controller at work in /metrics", WAIT, || async {
        let Some((200, body)) = common::http(port, "GET", "/metrics", None) else {
            return None;
        };
        at_work
            .iter()
            .all(|line| body.contains(line))
            .then_some(body)
    })
    .await
}

#[tokio::test]
async fn every_metric_the_rules_and_the_dashboard_use_is_exposed_with_help_and_type() {
    let exposition = scrape_a_controller_at_work().await;
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let mut expressions = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            expressions.push_str(target["expr"].as_str().unwrap());
            expressions.push('\n');
        }
    }
    for (source, names) in [
        (RULES, metric_names(&read(RULES))),
        (DASHBOARD, metric_names(&expressions)),
    ] {
        assert!(names.len() >= 10, "{source}: {names:?}");
        let missing: Vec<&String> = names
            .iter()
            .filter(|name| !declared(&exposition, name))
            .collect();
        assert!(
            missing.is_empty(),
            "{source} uses {missing:?}, which the controller does not expose (with HELP and TYPE):\n{exposition}"
        );
    }
}

#[test]
fn the_dashboard_is_a_dashboard_with_a_data_source_variable_and_a_query_per_panel() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    assert_eq!(dashboard["uid"], "runner-updater");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable"
    );
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "ids unique: {panel}"
        );
        let grid = &panel["gridPos"];
        assert!(grid["w"].as_u64().unwrap() <= 24 && grid["h"].as_u64().unwrap() >= 1);
        if panel["type"] == "row" {
            continue;
        }
        assert!(!panel["title"].as_str().unwrap().is_empty());
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            assert!(!target["expr"].as_str().unwrap().trim().is_empty());
            assert_eq!(target["datasource"]["uid"], "${datasource}");
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} queries");
    // The panels the issue names.
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for wanted in [
        "Runners by state",
        "Updates and rollbacks",
        "Release wave",
        "Failure budget used",
        "Reconcile duration",
        "AWS calls by operation",
        "AWS throttling and errors by operation",
        "Lease holders",
        "Event lag",
    ] {
        assert!(titles.contains(&wanted), "{wanted} in {titles:?}");
    }
}
