//! Fleet releases per channel (issue 19), on the simulated AWS with the real scheduler: a
//! release in waves, a crashing release halted by its budget, a fixed one, pins, bad documents.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failure with a message

use std::collections::BTreeMap;
use std::time::Duration;

use runner_updater_adapters::sim::ImageBehaviour;
use runner_updater_config::Config;
use runner_updater_core::domain::channel::{parse_channel_release, waves, Wave};
use runner_updater_core::domain::rollout::ReleaseRecord;
use runner_updater_core::record::Record;
use runner_updater_interface::scenario::{fleet_config, Scenario, SimulatedLoop};

const GOOD: &str = r#"{"version": "2.14.0", "plan": {"canary": 1, "waves": [50, 100], "concurrency": 3, "bake-secs": 120}, "budget": 0}"#;

fn fleet(runners: usize) -> Scenario {
    let mut config = Config::from_toml(&fleet_config(runners, 2, 1000)).unwrap();
    config.settle_secs = 0;
    let s = Scenario::with_config(11, config).unwrap();
    s.follow_channels();
    s
}

fn names(s: &Scenario) -> Vec<String> {
    s.config.runners.iter().map(|r| r.name.clone()).collect()
}

fn plan_of(s: &Scenario, document: &str) -> Vec<Wave> {
    let release = parse_channel_release(document, "release").unwrap();
    waves(&release.plan, &names(s))
}

async fn records_of(s: &Scenario) -> BTreeMap<String, Record> {
    let mut all = BTreeMap::new();
    for name in names(s) {
        if let Some(record) = s.store.load(&name).await.unwrap() {
            all.insert(name, record);
        }
    }
    all
}

/// Runs the controller until the channel's record satisfies `done` (at most `hours`).
async fn run_until(
    s: &Scenario,
    hours: u64,
    done: impl Fn(&ReleaseRecord) -> bool + Send + 'static,
) -> SimulatedLoop {
    let mut scheduler = s.scheduler_as("controller-1");
    let mut control = SimulatedLoop::new(s, "stable", Duration::from_hours(hours), done);
    scheduler.run(&mut control, None).await;
    for (runner, pass) in &control.passes {
        assert!(pass.is_ok(), "{runner}: {pass:?}");
    }
    control
}

fn on(record: &Record, version: &str) -> bool {
    record
        .attempt
        .as_ref()
        .is_some_and(|a| a.target_version == version)
}

#[tokio::test]
async fn a_release_rolls_out_in_waves_in_order_within_each_waves_concurrency() {
    let s = fleet(12);
    s.set_channel_release("stable", GOOD);
    let control = run_until(&s, 6, |r| r.finished_at.is_some()).await;
    assert!(control.finished, "records: {:#?}", control.records);
    let plan = plan_of(&s, GOOD);
    assert_eq!(plan.len(), 3, "canary, 50 %, 100 %");
    let records = records_of(&s).await;
    // Every runner updated once, to the release.
    for name in names(&s) {
        let record = &records[&name];
        assert!(on(record, "2.14.0"), "{name}: {:?}", record.attempt);
        assert_eq!(record.phase, "done", "{name}");
        assert_eq!(record.attempts_started, 1, "{name}");
    }
    // Waves in order: a wave's first start is after every runner of the wave before it was
    // done and baked (120 s).
    let started = |n: &String| records[n].attempt.as_ref().unwrap().started_at;
    let done = |n: &String| records[n].last_success.unwrap();
    for pair in plan.windows(2) {
        let before_done = pair[0].runners.iter().map(done).max().unwrap();
        let next_start = pair[1].runners.iter().map(started).min().unwrap();
        assert!(
            next_start >= before_done + 120_000,
            "a wave started {} ms after the previous one was done",
            next_start.cast_signed() - before_done.cast_signed()
        );
    }
    // Within a wave, at most its concurrency (3) at once.
    for wave in &plan {
        for runner in &wave.runners {
            let at = started(runner);
            let overlapping = wave
                .runners
                .iter()
                .filter(|other| started(other) <= at && done(other) > at)
                .count();
            assert!(
                overlapping <= 3,
                "{overlapping} in flight at once in {wave:?}"
            );
        }
    }
    let record = s.store.load_release("stable").await.unwrap().unwrap();
    assert_eq!(record.totals().done, 12);
    assert!(record.halted.is_none());
}

#[tokio::test]
async fn a_crashing_release_halts_after_the_canary_and_a_fixed_one_completes() {
    let s = fleet(12);
    s.set_channel_release("stable", GOOD);
    assert!(run_until(&s, 6, |r| r.finished_at.is_some()).await.finished);

    let bad = r#"{"version": "2.15.0", "plan": {"canary": 2, "waves": [100], "concurrency": 4}, "budget": 0}"#;
    s.image_behaves(
        &s.image_for("runner-00", "2.15.0"),
        ImageBehaviour::Crashing {
            after: Duration::from_secs(20),
        },
    );
    s.set_channel_release("stable", bad);
    let control = run_until(&s, 6, |r| r.version == "2.15.0" && r.halted.is_some()).await;
    assert!(
        control.finished,
        "the release halted: {:#?}",
        control.records
    );
    // Let the canaries in flight end through their own gate, then look.
    let _ = run_until(&s, 1, |r| {
        r.version == "2.15.0" && r.totals().in_flight == 0
    })
    .await;
    let records = records_of(&s).await;
    let canary = &plan_of(&s, bad)[0].runners;
    let tried: Vec<&String> = records
        .iter()
        .filter(|(_, r)| on(r, "2.15.0"))
        .map(|(n, _)| n)
        .collect();
    assert!(
        !tried.is_empty() && tried.len() <= 2,
        "only canaries tried it: {tried:?}"
    );
    assert!(
        tried.iter().all(|n| canary.contains(n)),
        "{tried:?} vs {canary:?}"
    );
    let failed = records
        .values()
        .filter(|r| r.failed.iter().any(|f| f.version == "2.15.0"))
        .count();
    assert!(
        (1..=2).contains(&failed),
        "failed ≤ budget (0) + the canary wave's concurrency (2): {failed}"
    );
    for (name, record) in &records {
        if !tried.contains(&name) {
            assert!(
                on(record, "2.14.0") && record.phase == "done",
                "{name} untouched"
            );
            let note = record.note.as_ref().map(|n| n.code.as_str());
            assert_eq!(note, Some("awaiting-wave"), "{name}: {:?}", record.note);
        }
    }
    let record = s.store.load_release("stable").await.unwrap().unwrap();
    assert!(record.is_quarantined("2.15.0", None));

    // A fixed release completes from its own first wave.
    s.set_channel_release(
        "stable",
        r#"{"version": "2.15.1", "plan": {"canary": 2, "waves": [100], "concurrency": 4}}"#,
    );
    let control = run_until(&s, 6, |r| r.version == "2.15.1" && r.finished_at.is_some()).await;
    assert!(control.finished, "{:#?}", control.records);
    for (name, record) in records_of(&s).await {
        assert!(
            on(&record, "2.15.1") && record.phase == "done",
            "{name}: {:?}",
            record.attempt
        );
    }
}

#[tokio::test]
async fn a_pinned_runner_keeps_its_own_release_and_does_not_hold_a_wave() {
    let s = fleet(4);
    s.set_desired("runner-01", "version", "2.13.0");
    s.set_channel_release(
        "stable",
        r#"{"version": "2.14.0", "plan": {"waves": [100]}}"#,
    );
    let control = run_until(&s, 2, |r| r.finished_at.is_some()).await;
    assert!(control.finished);
    let records = records_of(&s).await;
    assert!(
        records.get("runner-01").is_none_or(|r| r.attempt.is_none()),
        "pinned: not updated"
    );
    for name in ["runner-00", "runner-02", "runner-03"] {
        assert!(on(&records[name], "2.14.0"), "{name}");
    }
    let record = s.store.load_release("stable").await.unwrap().unwrap();
    assert_eq!((record.totals().pinned, record.totals().done), (1, 3));
}

#[tokio::test]
async fn a_bad_channel_document_is_refused_by_name_and_nothing_moves() {
    let cases = [
        ("{not json", "not JSON"),
        (r#"{"version": "2.14.0", "colour": "red"}"#, "colour"),
        (
            r#"{"version": "2.14.0", "plan": {"waves": [10, 50]}}"#,
            "100",
        ),
        (r#"{"version": "2.14.0", "budget": 40}"#, "budget"),
        (
            r#"{"version": "2.14.0", "plan": {"canary": ["runner-77"]}}"#,
            "runner-77",
        ),
    ];
    for (document, named) in cases {
        let s = fleet(3);
        s.set_channel_release("stable", document);
        let _ = run_until(&s, 1, |_| false).await;
        let records = records_of(&s).await;
        assert_eq!(
            s.aws
                .ecs
                .faults
                .calls(runner_updater_ports::AwsOp::UpdateService),
            0,
            "{document}"
        );
        for (name, record) in &records {
            assert!(record.attempt.is_none(), "{name} moved on {document}");
            let note = record.note.as_ref().expect("a note");
            assert_eq!(note.code, "awaiting-wave", "{document}");
            assert!(note.message.contains(named), "{document}: {}", note.message);
            assert!(
                note.message.contains("_channels/stable/release"),
                "{}",
                note.message
            );
        }
        assert!(
            s.store.load_release("stable").await.unwrap().is_none(),
            "no release record"
        );
    }
}

#[tokio::test]
async fn a_halted_version_published_again_is_refused_at_every_sweep_until_resumed() {
    let s = fleet(6);
    let bad = r#"{"version": "2.15.0", "plan": {"canary": 1, "waves": [100], "concurrency": 2}, "budget": 0}"#;
    s.image_behaves(
        &s.image_for("runner-00", "2.15.0"),
        ImageBehaviour::Crashing {
            after: Duration::from_secs(20),
        },
    );
    s.set_channel_release("stable", bad);
    let _ = run_until(&s, 2, |r| r.halted.is_some() && r.totals().in_flight == 0).await;
    let updates = s
        .aws
        .ecs
        .faults
        .calls(runner_updater_ports::AwsOp::UpdateService);
    // The same version again, with another plan: another document, the same quarantined
    // version — refused at every sweep (an hour of them), nobody moves.
    let again = r#"{"version": "2.15.0", "plan": {"canary": 2, "waves": [100], "concurrency": 3}, "budget": 3}"#;
    s.set_channel_release("stable", again);
    let _ = run_until(&s, 1, |_| false).await;
    assert_eq!(
        s.aws
            .ecs
            .faults
            .calls(runner_updater_ports::AwsOp::UpdateService),
        updates,
        "no runner moved"
    );
    let record = s.store.load_release("stable").await.unwrap().unwrap();
    assert!(record.halted.is_some() && record.is_quarantined("2.15.0", None));
    for (name, record) in records_of(&s).await {
        if record
            .attempt
            .as_ref()
            .is_some_and(|a| a.target_version == "2.15.0")
        {
            continue;
        }
        let note = record.note.expect("a note");
        assert_eq!(note.code, "awaiting-wave", "{name}");
    }
    // `release status` says why.
    let stored = s.store.load_release("stable").await.unwrap();
    let view = runner_updater_interface::release::view_of(
        "stable",
        &names(&s),
        Some(again),
        stored.clone(),
        None,
    );
    assert_eq!(view.state, "refused");
    assert!(
        view.refused
            .as_deref()
            .unwrap_or_default()
            .contains("2.15.0 is quarantined on this channel"),
        "{view:?}"
    );
    // A resume of the halt lifts it for the edited document: the new release starts (its
    // canaries crash again and it halts in turn, its resume recorded).
    let token = stored.unwrap().resume_token().unwrap();
    s.aws
        .ssm
        .set("/runner-updater/_channels/stable/resume", &token);
    let id = runner_updater_core::domain::channel::release_id(again);
    let control = run_until(&s, 2, move |r| r.release_id == id && r.halted.is_some()).await;
    assert!(control.finished, "{:#?}", control.records);
    let record = s.store.load_release("stable").await.unwrap().unwrap();
    assert_eq!(record.resumes, [token]);
}
