//! The demo's fifth story: a fleet release per channel, on a dozen simulated runners run by the
//! controller's own scheduler — a release in three waves; a crashing release halted after its
//! canary wave by its failure budget; a fixed release that completes.

use std::io::Write;
use std::time::Duration;

use runner_updater_adapters::sim::ImageBehaviour;
use runner_updater_config::Config;
use runner_updater_core::domain::rollout::ReleaseRecord;
use runner_updater_core::domain::Millis;
use runner_updater_ports::Clock;

use super::DemoError;
use crate::release::{render_release, view_of};
use crate::scenario::{fleet_config, Scenario, SimulatedLoop};

const STORY: &str = "fleet release";

const GOOD: &str = r#"{"version": "2.14.0", "plan": {"canary": 1, "waves": [50, 100], "concurrency": 3, "bake-secs": 120}, "budget": 0}"#;
const CRASHING: &str = r#"{"version": "2.15.0", "plan": {"canary": 1, "waves": [50, 100], "concurrency": 3, "bake-secs": 120}, "budget": 0}"#;
const FIXED: &str = r#"{"version": "2.15.1", "plan": {"canary": 1, "waves": [50, 100], "concurrency": 3, "bake-secs": 120}, "budget": 0}"#;

/// What story 5 did, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetOutcome {
    /// Runners updated by the first release.
    pub first: usize,
    /// Runners that tried the crashing release (all failed).
    pub crashed: usize,
    /// Runners updated by the fixed release.
    pub fixed: usize,
    /// Simulated time the three releases took.
    pub simulated: Duration,
}

fn wrong(what: String) -> DemoError {
    DemoError::Story { story: STORY, what }
}

fn time(at: u64) -> String {
    Millis(at)
        .to_string()
        .get(11..19)
        .unwrap_or("--:--:--")
        .to_owned()
}

/// Publishes `document` and runs the controller until `done` holds on the channel's record.
async fn release(
    s: &Scenario,
    out: &mut dyn Write,
    document: &str,
    version: &'static str,
    done: fn(&ReleaseRecord) -> bool,
) -> Result<ReleaseRecord, DemoError> {
    writeln!(
        out,
        "  $ aws ssm put-parameter --name {}/_channels/stable/release --overwrite --value '{document}'",
        s.config.prefix
    )?;
    s.set_channel_release("stable", document);
    let mut scheduler = s.scheduler_as("controller-1");
    let mut control = SimulatedLoop::new(s, "stable", Duration::from_hours(6), move |r| {
        r.version == version && done(r)
    });
    scheduler.run(&mut control, None).await;
    if let Some((runner, Err(error))) = control.passes.iter().find(|(_, p)| p.is_err()) {
        return Err(wrong(format!("{runner}'s pass failed: {error}")));
    }
    for record in control.records.iter().filter(|r| r.version == version) {
        let what = if let Some(halt) = &record.halted {
            format!(
                "halted: {} failed ({}) of {} attempted, over the budget of {}; {} quarantined on the channel",
                halt.failed,
                halt.runners.join(", "),
                halt.attempted,
                record.budget,
                record.version
            )
        } else if record.finished_at.is_some() {
            "finished: every wave done and baked".to_owned()
        } else {
            let counts = record.counts.get(record.wave).copied().unwrap_or_default();
            format!(
                "wave {} of {} under way ({} runner(s), {} at once)",
                record.wave + 1,
                record.waves,
                counts.runners,
                3.min(counts.runners)
            )
        };
        writeln!(
            out,
            "  {}  release {version}: {what}",
            time(record.counted_at)
        )?;
    }
    let record = control
        .records
        .last()
        .filter(|r| r.version == version && done(r))
        .cloned()
        .ok_or_else(|| {
            wrong(format!(
                "release {version} did not end as told: {:?}",
                control.records.last()
            ))
        })?;
    Ok(record)
}

/// Story 5 (see the module documentation); prints it and `release status` after the halt.
///
/// # Errors
/// The world failing, or the story ending otherwise than told.
pub async fn fleet_release(seed: u64, out: &mut dyn Write) -> Result<FleetOutcome, DemoError> {
    writeln!(
        out,
        "\n5. A fleet release: one document for channel stable, a dozen runners, three waves (a canary, 50 %, 100 %; 3 at once; 2 minutes' bake), budget 0"
    )?;
    let mut config = Config::from_toml(&fleet_config(12, 2, 1000))
        .map_err(crate::scenario::ScenarioError::from)?;
    config.settle_secs = 0;
    let s = Scenario::with_config(seed, config)?;
    s.follow_channels();
    let start = s.aws.clock.now();
    let runners: Vec<String> = s.config.runners.iter().map(|r| r.name.clone()).collect();
    let updates = || s.aws.ecs.updates().len();

    let before = updates();
    release(&s, out, GOOD, "2.14.0", |r| r.finished_at.is_some()).await?;
    let first = updates() - before;
    if first != runners.len() {
        return Err(wrong(format!(
            "{first} service updates for {} runners",
            runners.len()
        )));
    }
    writeln!(
        out,
        "  → all {first} runners on 2.14.0, one service update each, wave after wave"
    )?;

    writeln!(
        out,
        "\n  A release of a version whose containers crash (2.15.0):"
    )?;
    s.image_behaves(
        &s.image_for("runner-00", "2.15.0"),
        ImageBehaviour::Crashing {
            after: Duration::from_secs(20),
        },
    );
    let before = updates();
    let halted = release(&s, out, CRASHING, "2.15.0", |r| r.halted.is_some()).await?;
    // The canary in flight ends through its own gate and rollback.
    let mut scheduler = s.scheduler_as("controller-1");
    let mut control = SimulatedLoop::new(&s, "stable", Duration::from_hours(1), |r| {
        r.totals().in_flight == 0 && r.totals().rolled_back > 0
    });
    scheduler.run(&mut control, None).await;
    let crashed = halted.halted.as_ref().map_or(0, |h| h.runners.len());
    let touched = updates() - before;
    // ECS's breaker rolls the canary back itself: at most one update of the controller's.
    if crashed != 1 || touched > 2 {
        return Err(wrong(format!(
            "the crashing release should halt after its one canary: {crashed} failed, {touched} service update(s)"
        )));
    }
    writeln!(
        out,
        "  → halted after the canary wave: 1 runner failed and rolled back, the other {} untouched on 2.14.0",
        runners.len() - 1
    )?;
    let record = s.store.load_release("stable").await?;
    writeln!(out, "\n  $ runner-updater release status")?;
    let view = view_of(
        "stable",
        &runners,
        Some(CRASHING),
        record,
        Some("controller-1".to_owned()),
    );
    for line in render_release(&[view]).lines() {
        writeln!(out, "  {line}")?;
    }

    writeln!(
        out,
        "\n  A fixed release (2.15.1), from its own first wave:"
    )?;
    let before = updates();
    release(&s, out, FIXED, "2.15.1", |r| r.finished_at.is_some()).await?;
    let fixed = updates() - before;
    if fixed != runners.len() {
        return Err(wrong(format!(
            "{fixed} service updates for {} runners",
            runners.len()
        )));
    }
    writeln!(
        out,
        "  → all {fixed} runners on 2.15.1 (the canary too: 2.15.1 is another version)"
    )?;
    let simulated = s.aws.clock.now().since(start);
    writeln!(
        out,
        "  result: 3 releases in {}s of simulated time; {} service updates in all",
        simulated.as_secs(),
        first + touched + fixed
    )?;
    Ok(FleetOutcome {
        first,
        crashed,
        fixed,
        simulated,
    })
}
