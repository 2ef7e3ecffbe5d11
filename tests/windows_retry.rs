//! Update windows and retries (issue 20), on the simulated AWS: a runner outside its window is
//! not updated and says when it opens; a bad window is refused by name; `retry` lifts a
//! quarantine once, through an intent the controller acknowledges and deletes; a retry of
//! something not quarantined is refused; a channel release waits for windows a while and goes
//! on, and `release retry` lifts a halt once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use std::time::Duration;

use runner_updater_adapters::sim::{ImageBehaviour, SIM_EPOCH};
use runner_updater_config::Config;
use runner_updater_core::domain::rollout::ReleaseRecord;
use runner_updater_core::domain::Millis;
use runner_updater_core::machine::phase::Phase;
use runner_updater_interface::report::{plan_view, render_plan};
use runner_updater_interface::retry::{retry_channel, retry_runner, Requester, RetryError};
use runner_updater_interface::scenario::{fleet_config, Scenario, SimulatedLoop};
use runner_updater_ports::{Clock as _, ParameterStore as _};

/// `SIM_EPOCH` is Saturday 2025-03-01T10:00:00Z.
const SATURDAY_NOON: Millis = Millis(SIM_EPOCH.0 + 2 * 3_600_000);

fn requester(s: &Scenario, salt: u64) -> Requester {
    Requester {
        now: s.aws.clock.now(),
        salt,
        by: Some("ops@test".to_owned()),
    }
}

fn note(record: Option<&runner_updater_core::record::Record>) -> (String, String) {
    record
        .and_then(|r| r.note.as_ref())
        .map(|n| (n.code.clone(), n.message.clone()))
        .unwrap_or_default()
}

#[tokio::test]
async fn a_runner_outside_its_window_waits_says_when_it_opens_and_updates_inside_it() {
    let s = Scenario::new(3).unwrap();
    s.set_desired("runner-b", "update-window", "Sat 12:00-13:00 UTC");
    s.set_desired("runner-b", "version", "2.14.0");
    let mut driver = s.driver("runner-b").unwrap();
    // Let the desired/* settle: every pass before noon stays idle, naming the window.
    for _ in 0..10 {
        driver.tick().await.unwrap();
        s.aws.clock.sleep(Duration::from_mins(1)).await;
    }
    assert_eq!(driver.phase(), Phase::Idle);
    let (code, message) = note(driver.record());
    assert_eq!(code, "update-window", "{message}");
    assert!(
        message.contains("opens at 2025-03-01T12:00:00Z"),
        "{message}"
    );
    let observation = driver.observe_now().await.unwrap();
    let plan = render_plan(&plan_view(
        "runner-b",
        driver.record(),
        &observation,
        "stable",
        s.aws.clock.now(),
    ));
    assert!(plan.contains("7. update-window"), "{plan}");
    assert!(
        plan.contains("once its update window opens: outside its update window (Sat 12:00-13:00 UTC): it opens at 2025-03-01T12:00:00Z"),
        "{plan}"
    );
    assert!(driver.record().unwrap().attempt.is_none());

    // Noon: the attempt starts inside the window, and finishes even past it.
    s.aws
        .clock
        .sleep(Duration::from_millis(SATURDAY_NOON.0 - s.aws.clock.now().0))
        .await;
    s.drive_to(&mut driver, Phase::Done, 400).await.unwrap();
    let attempt = driver.record().unwrap().attempt.clone().unwrap();
    assert!(
        (SATURDAY_NOON.0..SATURDAY_NOON.0 + 3_600_000).contains(&attempt.started_at),
        "started at {}",
        Millis(attempt.started_at)
    );
}

#[tokio::test]
async fn a_bad_window_is_refused_by_name_and_nothing_moves() {
    let s = Scenario::new(4).unwrap();
    s.set_desired("runner-b", "version", "2.14.0");
    for (bad, words) in [
        (
            "Sat 02:00-05:00 Mars/Olympus",
            "\"Mars/Olympus\" is not a time zone",
        ),
        ("Sat 02:00-02:00 UTC", "an empty window"),
        ("", "an empty window"),
        ("weekends at night", "is not a window"),
    ] {
        s.set_desired("runner-b", "update-window", bad);
        let mut driver = s.driver("runner-b").unwrap();
        for _ in 0..3 {
            driver.tick().await.unwrap();
            s.aws.clock.sleep(Duration::from_mins(1)).await;
        }
        assert_eq!(driver.phase(), Phase::Idle, "{bad:?}");
        let (code, message) = note(driver.record());
        assert_eq!(code, "invalid-update-window", "{bad:?}: {message}");
        assert!(message.starts_with("desired/update-window: "), "{message}");
        assert!(message.contains(words), "{bad:?}: {message}");
        assert!(driver.record().unwrap().attempt.is_none());
    }
    // A bad window in the configuration is refused when it is loaded.
    let text = runner_updater_config::EMBEDDED_CONFIG.replace(
        "name = \"runner-b\"",
        "name = \"runner-b\"\nupdate_window = \"Sat 02:00-05:00 Europe/Nowhere\"",
    );
    let error = Config::from_toml(&text).unwrap_err().to_string();
    assert!(error.contains("Europe/Nowhere"), "{error}");
}

#[tokio::test]
async fn a_retry_lifts_a_quarantine_once_through_an_intent_the_controller_acknowledges() {
    let s = Scenario::new(5).unwrap();
    s.image_behaves(
        &s.image_for("runner-b", "2.14.0"),
        ImageBehaviour::Crashing {
            after: Duration::from_secs(20),
        },
    );
    s.set_desired("runner-b", "version", "2.14.0");
    let mut driver = s.driver("runner-b").unwrap();
    s.drive_to(&mut driver, Phase::RolledBack, 400)
        .await
        .unwrap();
    let ssm = &s.aws.ssm;
    let store = s.store.as_ref();

    let folder = format!("{}/runner-b/retry", s.config.prefix);
    refused_when_not_quarantined(&s, &folder).await;

    // Written once; a second while it waits is refused.
    let written = retry_runner(&s.config, store, ssm, "runner-b", None, &requester(&s, 2))
        .await
        .unwrap();
    assert_eq!(written.version, "2.14.0");
    let pending = retry_runner(
        &s.config,
        store,
        ssm,
        "runner-b",
        Some("2.14.0"),
        &requester(&s, 3),
    )
    .await
    .unwrap_err();
    assert!(matches!(pending, RetryError::Pending(_)), "{pending}");

    // The controller acknowledges it, tries the version once more (it fails again), and
    // quarantines it again: no third attempt, whatever the passes.
    s.drive_until(&mut driver, 400, |d| {
        d.record().unwrap().attempts_started == 2
    })
    .await
    .unwrap();
    let record = driver.record().unwrap();
    let id = written.parameter.rsplit('/').next().unwrap();
    assert!(
        record.retries.iter().any(|r| r == id),
        "{:?}",
        record.retries
    );
    assert!(
        record.transitions.iter().any(|t| t
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("update 2.13.0 -> 2.14.0")),
        "{:?}",
        record.transitions
    );
    s.drive_to(&mut driver, Phase::RolledBack, 400)
        .await
        .unwrap();
    for _ in 0..30 {
        driver.tick().await.unwrap();
        s.aws.clock.sleep(Duration::from_mins(1)).await;
    }
    let record = driver.record().unwrap();
    assert_eq!(record.attempts_started, 2, "at most once per retry");
    assert!(record.failed.iter().any(|f| f.version == "2.14.0"));
    assert_eq!(note(Some(record)).0, "not-failed");
    // The acknowledged intent is deleted; a new retry may be written.
    assert!(ssm.get_by_path(&folder).await.unwrap().is_empty());
    retry_runner(
        &s.config,
        store,
        ssm,
        "runner-b",
        Some("2.14.0"),
        &requester(&s, 4),
    )
    .await
    .unwrap();
}

/// A retry of a version that is not quarantined (or of a runner with nothing quarantined) is
/// refused by name, and nothing is written.
async fn refused_when_not_quarantined(s: &Scenario, folder: &str) {
    let (ssm, store) = (&s.aws.ssm, s.store.as_ref());
    let refused = retry_runner(
        &s.config,
        store,
        ssm,
        "runner-b",
        Some("2.13.5"),
        &requester(s, 1),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(refused, RetryError::NotQuarantined(_)),
        "{refused}"
    );
    assert!(
        refused
            .to_string()
            .contains("2.13.5 is not quarantined on runner runner-b (quarantined: 2.14.0)"),
        "{refused}"
    );
    let nothing = retry_runner(&s.config, store, ssm, "runner-a", None, &requester(s, 1))
        .await
        .unwrap_err();
    assert!(
        nothing
            .to_string()
            .contains("nothing is quarantined on runner runner-a"),
        "{nothing}"
    );
    assert!(ssm.get_by_path(folder).await.unwrap().is_empty());
}

fn fleet(runners: usize) -> Scenario {
    let mut config = Config::from_toml(&fleet_config(runners, 1, 1000)).unwrap();
    config.settle_secs = 0;
    let s = Scenario::with_config(13, config).unwrap();
    s.follow_channels();
    s
}

async fn run_until(
    s: &Scenario,
    hours: u64,
    done: impl Fn(&ReleaseRecord) -> bool + Send + 'static,
) -> SimulatedLoop {
    let mut scheduler = s.scheduler_as("controller-1");
    let mut control = SimulatedLoop::new(s, "stable", Duration::from_hours(hours), done);
    scheduler.run(&mut control, None).await;
    control
}

#[tokio::test]
async fn a_wave_waits_for_closed_windows_a_while_then_goes_on_and_they_update_inside_them() {
    let s = fleet(6);
    // Two runners open on Sunday 03:00-04:00 UTC only (17 hours after the start).
    for runner in ["runner-03", "runner-04"] {
        s.set_desired(runner, "update-window", "Sun 03:00-04:00 UTC");
    }
    s.set_channel_release(
        "stable",
        r#"{"version": "2.14.0", "plan": {"canary": ["runner-00"], "waves": [100], "concurrency": 2, "window-wait-secs": 3600}}"#,
    );
    let control = run_until(&s, 6, |r| r.finished_at.is_some()).await;
    assert!(control.finished, "{:#?}", control.records);
    let record = s.store.load_release("stable").await.unwrap().unwrap();
    assert!(record.halted.is_none());
    assert_eq!(record.totals().outside_window, 2, "{:?}", record.counts);
    assert_eq!(record.totals().done, 4);
    for runner in ["runner-03", "runner-04"] {
        let r = s.store.load(runner).await.unwrap();
        assert!(r.as_ref().is_none_or(|r| r.attempt.is_none()), "{runner}");
    }
    // Sunday 03:00: they update, inside their window.
    let control = run_until(&s, 24, |r| r.totals().done == 6).await;
    assert!(control.finished, "{:#?}", control.records);
    let sunday_3 = SIM_EPOCH.0 + 17 * 3_600_000;
    for runner in ["runner-03", "runner-04"] {
        let record = s.store.load(runner).await.unwrap().unwrap();
        let started = record.attempt.unwrap().started_at;
        assert!(
            (sunday_3..sunday_3 + 3_600_000).contains(&started),
            "{runner} started at {}",
            Millis(started)
        );
    }
}

#[tokio::test]
async fn a_channel_retry_lifts_a_halt_once_and_a_fixed_image_then_completes() {
    let s = fleet(6);
    let document = r#"{"version": "2.15.0", "plan": {"canary": ["runner-00"], "waves": [100], "concurrency": 3}, "budget": 0}"#;
    let no_release = retry_channel(
        &s.config,
        s.store.as_ref(),
        &s.aws.ssm,
        "stable",
        None,
        &requester(&s, 9),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(no_release, RetryError::NoRelease(_)),
        "nothing would acknowledge it: {no_release}"
    );
    let image = s.image_for("runner-00", "2.15.0");
    s.image_behaves(
        &image,
        ImageBehaviour::Crashing {
            after: Duration::from_secs(20),
        },
    );
    s.set_channel_release("stable", document);
    let halted = |r: &ReleaseRecord| r.halted.is_some() && r.totals().in_flight == 0;
    assert!(run_until(&s, 6, halted).await.finished);
    let (ssm, store) = (&s.aws.ssm, s.store.as_ref());
    let refused = retry_channel(
        &s.config,
        store,
        ssm,
        "stable",
        Some("2.14.0"),
        &requester(&s, 1),
    )
    .await
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("2.14.0 is not quarantined on channel stable (quarantined: 2.15.0)"),
        "{refused}"
    );

    // Retried while still crashing: the canary tries once more, and the release halts again.
    let first = retry_channel(&s.config, store, ssm, "stable", None, &requester(&s, 2))
        .await
        .unwrap();
    assert_eq!(first.version, "2.15.0");
    let control = run_until(&s, 6, move |r| {
        r.retries.len() == 1 && r.halted.is_some() && r.totals().in_flight == 0
    })
    .await;
    assert!(control.finished, "{:#?}", control.records);
    let canary = s.store.load("runner-00").await.unwrap().unwrap();
    assert_eq!(canary.attempts_started, 2, "once more per retry");
    for runner in [
        "runner-01",
        "runner-02",
        "runner-03",
        "runner-04",
        "runner-05",
    ] {
        let r = s.store.load(runner).await.unwrap();
        assert!(r.as_ref().is_none_or(|r| r.attempt.is_none()), "{runner}");
    }
    let folder = format!("{}/_channels/stable/retry", s.config.prefix);
    assert!(
        ssm.get_by_path(&folder).await.unwrap().is_empty(),
        "deleted once acknowledged"
    );

    // The image fixed (a bad node, a registry hiccup), retried again: the release completes.
    s.image_behaves(&image, ImageBehaviour::Healthy);
    retry_channel(
        &s.config,
        store,
        ssm,
        "stable",
        Some("2.15.0"),
        &requester(&s, 3),
    )
    .await
    .unwrap();
    let control = run_until(&s, 6, |r| r.finished_at.is_some() && r.totals().done == 6).await;
    assert!(control.finished, "{:#?}", control.records);
    let record = s.store.load_release("stable").await.unwrap().unwrap();
    assert!(
        record.halted.is_none() && record.quarantined.is_empty(),
        "{record:?}"
    );
    assert_eq!(record.retries.len(), 2);
    let canary = s.store.load("runner-00").await.unwrap().unwrap();
    assert_eq!(canary.attempts_started, 3);
}
