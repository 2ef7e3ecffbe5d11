//! `runner-updater demo`: the whole story on the simulated AWS, in simulated time, with
//! visible progress. It checks its own outcomes and fails if a story does not end as told.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::report::{render_status, status_view};
use crate::scenario::{Scenario, ScenarioError, START_VERSION};
use runner_updater_adapters::sim::{initial_template, ImageBehaviour, SimResource};
use runner_updater_core::domain::eligibility::Rule;
use runner_updater_core::domain::Millis;
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::machine::Command;
use runner_updater_ports::{Clock, StateStore};
use runner_updater_runtime::driver::{CrashPlan, DriverError, RunnerDriver, TickReport};

mod fleet;

pub use fleet::FleetOutcome;

/// Where the demo's templates are published (the simulation's S3).
const TEMPLATES: &str = "https://runner-templates.s3.amazonaws.com/";

/// Ticks a story may take at most.
const TICKS_MAX: usize = 500;

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The simulated world failed.
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] runner_updater_ports::StoreError),
    /// Writing the output failed.
    #[error("writing the demo output: {0}")]
    Output(#[from] std::io::Error),
    /// A story ended otherwise than told.
    #[error("story {story:?} ended wrongly: {what}")]
    Story {
        /// The story.
        story: &'static str,
        /// What went wrong.
        what: String,
    },
}

/// One story's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoryOutcome {
    /// Title.
    pub title: &'static str,
    /// End phase.
    pub end: Phase,
    /// Simulated time taken.
    pub simulated: Duration,
    /// Task definitions registered during the story.
    pub registrations: usize,
    /// Service updates during the story.
    pub service_updates: usize,
}

struct Demo<'a> {
    scenario: Scenario,
    out: &'a mut dyn Write,
}

impl Demo<'_> {
    fn clock(&self) -> Millis {
        self.scenario.aws.clock.now()
    }

    fn time(at: Millis) -> String {
        Millis(at.0)
            .to_string()
            .get(11..19)
            .unwrap_or("--:--:--")
            .to_owned()
    }

    fn ops(&mut self, runner: &str, key: &str, value: &str) -> Result<(), DemoError> {
        self.scenario.set_desired(runner, key, value);
        writeln!(
            self.out,
            "  {}  ops       aws ssm put-parameter --name {}/{runner}/desired/{key} --value {value} --overwrite",
            Self::time(self.clock()),
            self.scenario.config.prefix
        )?;
        Ok(())
    }

    fn print(&mut self, runner: &str, report: &TickReport) -> Result<(), DemoError> {
        for t in &report.transitions {
            let note = t
                .note
                .as_deref()
                .map(|n| format!("  — {n}"))
                .unwrap_or_default();
            writeln!(
                self.out,
                "  {}  {runner:<9} {} → {}{note}",
                Self::time(t.at),
                t.from,
                t.to
            )?;
        }
        Ok(())
    }

    /// Ticks until `end`, printing transitions; returns the error that stopped it early, if any.
    async fn drive(
        &mut self,
        driver: &mut RunnerDriver,
        end: Phase,
    ) -> Result<Option<DriverError>, DemoError> {
        for _ in 0..TICKS_MAX {
            let report = match driver.tick().await {
                Ok(report) => report,
                Err(error @ DriverError::Crashed(_)) => {
                    if let Some(partial) = driver.take_failed_report() {
                        self.print(driver.runner(), &partial)?;
                    }
                    return Ok(Some(error));
                }
                Err(error) => return Err(DemoError::Scenario(ScenarioError::Driver(error))),
            };
            self.print(driver.runner(), &report)?;
            if report.transitions.iter().any(|t| t.to == end) {
                return Ok(None);
            }
            self.scenario.aws.clock.sleep(driver.requeue_after()).await;
        }
        Err(DemoError::Story {
            story: "drive",
            what: format!("{} did not reach {end}", driver.runner()),
        })
    }

    async fn story(
        &mut self,
        title: &'static str,
        end: Phase,
        body: impl AsyncFnOnce(&mut Self) -> Result<(), DemoError>,
    ) -> Result<StoryOutcome, DemoError> {
        writeln!(self.out, "\n{title}")?;
        let (start, registrations, updates) = (
            self.clock(),
            self.scenario.aws.ecs.registrations().len(),
            self.scenario.aws.ecs.updates().len(),
        );
        body(self).await?;
        let outcome = StoryOutcome {
            title,
            end,
            simulated: self.clock().since(start),
            registrations: self.scenario.aws.ecs.registrations().len() - registrations,
            service_updates: self.scenario.aws.ecs.updates().len() - updates,
        };
        writeln!(
            self.out,
            "  result: {} after {}s of simulated time; {} task definition(s) registered, {} service update(s)",
            end,
            outcome.simulated.as_secs(),
            outcome.registrations,
            outcome.service_updates
        )?;
        Ok(outcome)
    }
}

/// Runs the four stories and prints the summary and the final status.
///
/// # Errors
/// A [`DemoError`] when the world fails or a story ends otherwise than told.
pub async fn run(
    seed: u64,
    store: Option<Arc<dyn StateStore>>,
    out: &mut dyn Write,
) -> Result<Vec<StoryOutcome>, DemoError> {
    let mut scenario = Scenario::new(seed)?;
    if let Some(store) = store {
        scenario.store = store;
    }
    writeln!(out, "runner-updater demo: the simulated AWS (seed {seed}), simulated time; no AWS account is used.")?;
    writeln!(
        out,
        "Runners runner-a and runner-b run {START_VERSION} (3 tasks each, with health checks). Desired versions live in SSM under {}/.",
        scenario.config.prefix
    )?;
    let mut demo = Demo { scenario, out };
    let outcomes = vec![
        demo.story(
            "1. A clean update: runner-a 2.13.0 → 2.14.0",
            Phase::Done,
            clean_update,
        )
        .await?,
        demo.story(
            "2. A bad version: runner-b 2.13.0 → 2.15.0, whose containers crash",
            Phase::RolledBack,
            bad_version,
        )
        .await?,
        demo.story(
            "3. A crash in the middle: runner-a 2.14.0 → 2.14.1, the process dies right after UpdateService",
            Phase::Done,
            crash_in_the_middle,
        )
        .await?,
        demo.story(
            "4. Infrastructure first: runner-a 2.14.1 → 2.16.0 needs infrastructure 2 (IAM stack, then main stack)",
            Phase::Done,
            infrastructure_first,
        )
        .await?,
    ];
    let Demo { scenario, out } = demo;
    summary(out, &outcomes)?;
    final_status(&scenario, out).await?;
    fleet::fleet_release(seed, out).await?;
    Ok(outcomes)
}

/// Checks each story ended as told, then prints the summary table.
fn summary(out: &mut dyn Write, outcomes: &[StoryOutcome]) -> Result<(), DemoError> {
    let expected = [
        (Phase::Done, 1, 1),
        (Phase::RolledBack, 1, 1),
        (Phase::Done, 1, 1),
        (Phase::Done, 1, 1),
    ];
    for (outcome, (end, registrations, updates)) in outcomes.iter().zip(expected) {
        if (outcome.end, outcome.registrations, outcome.service_updates)
            != (end, registrations, updates)
        {
            return Err(DemoError::Story {
                story: outcome.title,
                what: format!("{outcome:?}"),
            });
        }
    }
    writeln!(out, "\nSummary")?;
    writeln!(
        out,
        "  {:<4} {:<12} {:>14} {:>10} {:>16}",
        "", "result", "simulated time", "task defs", "service updates"
    )?;
    for (index, o) in outcomes.iter().enumerate() {
        writeln!(
            out,
            "  {:<4} {:<12} {:>13}s {:>10} {:>16}",
            index + 1,
            o.end.name(),
            o.simulated.as_secs(),
            o.registrations,
            o.service_updates
        )?;
    }
    writeln!(out, "  (story 2: ECS's circuit breaker rolled the deployment back itself — threshold 3 at 3 tasks, its current rule — so the controller made no update of its own; story 3 registered and updated once despite the crash; story 4 executed one change set per stack before the runner update)")?;
    Ok(())
}

/// `runner-updater status` at the end of the demo.
async fn final_status(scenario: &Scenario, out: &mut dyn Write) -> Result<(), DemoError> {
    writeln!(out, "\n$ runner-updater status")?;
    let mut views = Vec::new();
    for runner in ["runner-a", "runner-b"] {
        if let Some(record) = scenario.store.load(runner).await? {
            let mut view = status_view(&record);
            let ports = scenario.ports();
            view.lease =
                crate::ops::lease_view(ports.lock.as_ref(), runner, ports.clock.now()).await;
            views.push(view);
        }
    }
    write!(out, "{}", render_status(&views, 4))?;
    Ok(())
}

/// Story: A clean update.
async fn clean_update(d: &mut Demo<'_>) -> Result<(), DemoError> {
    let mut driver = runner_driver(&d.scenario, "runner-a", CrashPlan::default())?;
    d.ops("runner-a", "version", "2.14.0")?;
    d.drive(&mut driver, Phase::Done).await?;
    Ok(())
}

/// Story: A bad version: rolled back and quarantined.
async fn bad_version(d: &mut Demo<'_>) -> Result<(), DemoError> {
    let image = d.scenario.image_for("runner-b", "2.15.0");
    d.scenario.image_behaves(
        &image,
        ImageBehaviour::Crashing {
            after: Duration::from_secs(10),
        },
    );
    writeln!(d.out, "  (simulation: tasks of {image} exit 10 s after they start, before their health check passes)")?;
    let mut driver = runner_driver(&d.scenario, "runner-b", CrashPlan::default())?;
    d.ops("runner-b", "version", "2.15.0")?;
    d.drive(&mut driver, Phase::RolledBack).await?;
    // The next passes leave the quarantined version alone.
    for _ in 0..3 {
        d.scenario.aws.clock.sleep(driver.requeue_after()).await;
        let report = driver.tick().await.map_err(ScenarioError::Driver)?;
        d.print("runner-b", &report)?;
    }
    let record = d.scenario.store.load("runner-b").await?;
    let quarantined = record.as_ref().and_then(|r| {
        r.verdict
            .iter()
            .find(|v| Rule::from_name(&v.rule) == Some(Rule::NotFailed) && !v.passed)
            .cloned()
    });
    match quarantined {
        Some(rule) => writeln!(
            d.out,
            "  next passes: rule not-failed fails — {}",
            rule.reason
        )?,
        None => {
            return Err(DemoError::Story {
                story: "bad version",
                what: "the version was not quarantined".to_owned(),
            })
        }
    }
    Ok(())
}

/// Story: A crash right after `UpdateService`, then a restart that resumes.
async fn crash_in_the_middle(d: &mut Demo<'_>) -> Result<(), DemoError> {
    let plan = CrashPlan {
        after_command_where: Some(|c| matches!(c, Command::UpdateService { .. })),
        ..CrashPlan::default()
    };
    let mut driver = runner_driver(&d.scenario, "runner-a", plan)?;
    d.ops("runner-a", "version", "2.14.1")?;
    let crashed = d.drive(&mut driver, Phase::Done).await?;
    let Some(crash) = crashed else {
        return Err(DemoError::Story {
            story: "crash",
            what: "the planned crash did not happen".to_owned(),
        });
    };
    drop(driver);
    writeln!(
        d.out,
        "  {}  ✗ process killed ({crash}); the service update was sent, its result never recorded",
        Demo::time(d.clock())
    )?;
    let mut restarted = runner_driver(&d.scenario, "runner-a", CrashPlan::default())?;
    writeln!(
        d.out,
        "  {}  ↻ restarted: loading the record and resuming where it stopped",
        Demo::time(d.clock())
    )?;
    d.drive(&mut restarted, Phase::Done).await?;
    Ok(())
}

/// Story: Infrastructure first: the stacks in order, one held for approval, then the runner.
async fn infrastructure_first(d: &mut Demo<'_>) -> Result<(), DemoError> {
    let (iam, main) = (
        TEMPLATES.to_owned() + "iam-2.json",
        TEMPLATES.to_owned() + "main-2.json",
    );
    let mut iam_template = initial_template();
    if let Some(config) = iam_template.resources.first_mut() {
        "v2".clone_into(&mut config.properties);
    }
    let mut main_template = initial_template().parameter("AvailabilityZones", Some("a,b"));
    if let Some(queue) = main_template.resources.get_mut(1) {
        *queue = SimResource::new("Queue", "AWS::SQS::Queue", "v2")
            .using(&["Size"])
            .replaced();
    }
    d.scenario.aws.cfn.put_template(&iam, iam_template);
    d.scenario.aws.cfn.put_template(&main, main_template);
    writeln!(d.out, "  (simulation: templates published in S3; the main one replaces the queue, so policy `safe` holds it for a human)")?;
    let mut driver = runner_driver(&d.scenario, "runner-a", CrashPlan::default())?;
    d.ops("runner-a", "infra-version", "2")?;
    d.ops("runner-a", "stacks/runner-a-iam/template-url", &iam)?;
    d.ops("runner-a", "stacks/runner-a-main/template-url", &main)?;
    d.ops(
        "runner-a",
        "stacks/runner-a-main/parameters",
        r#"{"AvailabilityZones":"a,b,c"}"#,
    )?;
    d.ops("runner-a", "version", "2.16.0")?;
    d.drive(&mut driver, Phase::AwaitingApproval).await?;
    if let Some(record) = d.scenario.store.load("runner-a").await? {
        let view = status_view(&record);
        writeln!(d.out, "  status    {}", view.change_set.unwrap_or_default())?;
        writeln!(d.out, "  next step {}", view.next_step)?;
    }
    for _ in 0..3 {
        d.scenario.aws.clock.sleep(driver.requeue_after()).await;
        let report = driver.tick().await.map_err(ScenarioError::Driver)?;
        d.print("runner-a", &report)?;
    }
    let approval = d
        .scenario
        .approve("runner-a")
        .await
        .map_err(|e| DemoError::Story {
            story: "infrastructure",
            what: e.to_string(),
        })?;
    writeln!(
        d.out,
        "  {}  ops       runner-updater approve runner-a   (approves {})",
        Demo::time(d.clock()),
        approval.change_set
    )?;
    d.drive(&mut driver, Phase::Done).await?;
    let executed: Vec<String> = d
        .scenario
        .aws
        .cfn
        .executions()
        .into_iter()
        .map(|(stack, _)| stack)
        .collect();
    if executed != ["runner-a-iam", "runner-a-main"] {
        return Err(DemoError::Story {
            story: "infrastructure",
            what: format!("executions {executed:?}"),
        });
    }
    writeln!(
        d.out,
        "  stacks updated in order: {}; then the runner",
        executed.join(" → ")
    )?;
    Ok(())
}

fn runner_driver(
    scenario: &Scenario,
    runner: &str,
    crash: CrashPlan,
) -> Result<RunnerDriver, DemoError> {
    scenario
        .driver(runner)
        .map(|d| d.with_crash(crash))
        .ok_or_else(|| DemoError::Story {
            story: "set-up",
            what: format!("runner {runner} is not configured"),
        })
}
