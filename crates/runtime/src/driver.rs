//! The driver: the only place where the machine meets IO.
//!
//! One [`RunnerDriver`] per runner. A [`tick`](RunnerDriver::tick) is one pass:
//! load (first time) → re-issue the restored state's command, or observe → `handle` →
//! **persist** → execute the commands → feed their results back → persist → …
//!
//! # Guarantees
//! - **Write-ahead**: a command is executed only after the state that asked for it is saved.
//!   If the save fails, the commands are dropped and the machine is reloaded from the store.
//! - **Idempotent effects**: registering finds a task definition already tagged with the
//!   attempt id; updating the service is skipped when a deployment that is not in the baseline
//!   exists; rolling back is skipped when the service already runs the baseline; the lock is
//!   re-entrant for its holder.
//! - **Fencing**: before every mutating call the lease is checked with the attempt's epoch.
//! - Every loop and retry is bounded.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::metrics::Metrics;
use crate::reader::RunnerSnapshot;
use crate::retry::RetryPolicy;
use crate::telemetry;
use runner_updater_config::{Config, RunnerConfig};
use runner_updater_core::domain::desired::{
    is_desired_name, parse_desired, settle_fingerprint, DesiredError, RunnerPolicy,
    RELEASE_PARAMETER,
};
use runner_updater_core::domain::eligibility::{Rule, Verdict};
use runner_updater_core::domain::infra::{self, Creation, StackPlan, StackProgress};
use runner_updater_core::domain::observed::{observe, ObserveError, ATTEMPT_TAG, VERSION_TAG};
use runner_updater_core::domain::revision_search::{self, RevisionSearch, SearchStep};
use runner_updater_core::domain::task_definition::TaskDefinition;
use runner_updater_core::domain::{fnv1a, Millis, FNV_OFFSET};
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::machine::{
    self, phase_of, Command, Ctx, Event, FailureClass, Input, Machine, Note, Observation,
    RunnerMachine, Settings, State, TransitionEntry,
};
use runner_updater_core::record::Record;
use runner_updater_ports::AwsOp;
use runner_updater_ports::{
    ChangeSetRequest, Clock, CloudFormation, Ecs, ErrorKind, Lock, LockOutcome, ParameterStore,
    PortError, StateStore, StoreError,
};

/// Tag naming the runner on task definitions the controller registers.
pub const RUNNER_TAG: &str = "runner-updater:runner";
/// Commands executed per tick at most (a bound, far above a real pass's needs).
const COMMANDS_PER_TICK_MAX: usize = 64;
/// Checks of a change set still being created before deleting it, and the wait between them.
const DELETE_WAITS_MAX: usize = 12;
const DELETE_WAIT: Duration = Duration::from_secs(5);
/// Task definitions kept in the per-runner cache (they are immutable).
const TASK_DEFINITION_CACHE_MAX: usize = 8;

/// The ports a driver uses.
#[derive(Clone)]
pub struct Ports {
    /// SSM.
    pub ssm: Arc<dyn ParameterStore>,
    /// ECS.
    pub ecs: Arc<dyn Ecs>,
    /// `CloudFormation`.
    pub cfn: Arc<dyn CloudFormation>,
    /// The runner lock.
    pub lock: Arc<dyn Lock>,
    /// The state store.
    pub store: Arc<dyn StateStore>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
}

/// Where to stop the process on purpose (crash tests and the demo).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CrashPlan {
    /// Crash right after the n-th save (1-based), before executing what it asked for.
    pub after_save: Option<u32>,
    /// Crash right after the n-th command (1-based), before its result is handled.
    pub after_command: Option<u32>,
    /// Crash right after the first command of this name, before its result is handled.
    pub after_command_named: Option<&'static str>,
}

impl CrashPlan {
    /// One plan per crash point of a run that saved `saves` times and ran `commands` commands:
    /// after each save, then after each command.
    pub fn every_step(saves: u32, commands: u32) -> impl Iterator<Item = CrashPlan> {
        (1..=saves)
            .map(|k| CrashPlan {
                after_save: Some(k),
                ..CrashPlan::default()
            })
            .chain((1..=commands).map(|k| CrashPlan {
                after_command: Some(k),
                ..CrashPlan::default()
            }))
    }
}

/// Why a tick stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The state store failed or holds an unusable record.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The lock could not be read.
    #[error("lock: {0}")]
    Lock(#[source] PortError),
    /// A crash injected by a [`CrashPlan`].
    #[error("injected crash: {0}")]
    Crashed(String),
    /// The machine took a transition that is not in the table (a bug).
    #[error("bug: {0}")]
    Bug(String),
}

/// What one tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Transitions taken.
    pub transitions: Vec<TransitionEntry>,
    /// Commands executed, by name.
    pub commands: Vec<&'static str>,
    /// Records saved.
    pub saves: u32,
}

/// Drives one runner's machine.
// Independent per-pass facts (AWS readable, an attempt active, a transition taken, the record
// unreadable), not a state machine in disguise: the machine is statig's.
#[allow(clippy::struct_excessive_bools)]
pub struct RunnerDriver {
    runner: RunnerConfig,
    prefix: String,
    holder: String,
    settings: Settings,
    policy: RunnerPolicy,
    lease_ttl: Duration,
    rest_interval: Duration,
    active_interval: Duration,
    retry: RetryPolicy,
    ports: Ports,
    machine: Option<Machine>,
    pending: Vec<Command>,
    last_saved: Option<Record>,
    failed_report: Option<Box<TickReport>>,
    /// The task definitions last read (revisions are immutable), newest last.
    task_definitions: Vec<TaskDefinition>,
    crash: CrashPlan,
    saves: u32,
    commands: u32,
    jitter_seed: u64,
    /// W3C traceparent of the current (or last) attempt's trace.
    traceparent: Option<String>,
    /// The span of the state the attempt is in (ended when the state is left).
    state_span: Option<tracing::Span>,
    metrics: Option<Arc<Metrics>>,
    /// Whether the last observation could read AWS.
    aws_readable: bool,
    /// Which passes at rest that lead nowhere get a `check` span.
    check_sampler: telemetry::CheckSampler,
    /// Whether the machine took a transition in the current pass (its state's command is
    /// then a first call, not one that may already have been made).
    entered_this_pass: bool,
    /// See `consistency_window_secs`.
    consistency_window: Duration,
    /// When this driver last made (or may have made) a non-idempotent ECS call.
    last_call_at: Option<Millis>,
    /// Whether an attempt was under way (under the lock) during the current pass.
    attempt_active: bool,
    /// The last load found the record unreadable.
    unreadable: bool,
    /// The note and verdict of the last event handled at rest in the current pass.
    rest_outcome: Option<Box<(Option<Note>, Option<Verdict>)>>,
    /// When the last pass ended: a fleet read older than that is not used.
    last_tick_end: Option<Millis>,
    /// The stacks as last read at rest (see `stack_refresh_secs`).
    stack_cache: Option<Box<StackCache>>,
    /// This runner's stack refresh period (`stack_refresh_secs`, spread per runner).
    stack_refresh: Duration,
    /// The current pass's observation used a fleet read or kept stacks.
    observed_cached: bool,
    /// When the lease this driver last took or renewed ends, on this process's monotonic
    /// clock (measured from before the call was sent). Checked right before every fenced
    /// write: a process frozen past its lease (a long pause, SIGSTOP) and thawed between its
    /// fencing check and its write does not write (on the SSM store this only narrows the
    /// window, see README "The lock").
    lease_until: Option<Duration>,
    /// The command being executed and its fencing token, if it has one (see `fence`).
    fencing: Option<(&'static str, u64)>,
    /// See `settle_secs`.
    settle: Duration,
    /// The fingerprint of the `desired/*` values last read, and when (by this controller's
    /// clock) they were first read as they are.
    settle_seen: Option<(u64, Millis)>,
    /// When the `desired/*` values of the last observation settle (`None`: nothing to wait
    /// for).
    settles_at: Option<Millis>,
}

/// The stacks of a runner as read at rest, with what they were read for.
struct StackCache {
    /// The fingerprint of the desired infrastructure they were read under ("" for none).
    fingerprint: String,
    read_at: Millis,
    stacks: Vec<runner_updater_core::domain::observed::StackState>,
}

impl RunnerDriver {
    /// A driver for `runner` as `holder` (this controller's identity in the lock).
    #[must_use]
    pub fn new(config: &Config, runner: &RunnerConfig, holder: &str, ports: Ports) -> Self {
        RunnerDriver {
            runner: runner.clone(),
            prefix: config.prefix.clone(),
            holder: holder.to_owned(),
            settings: config.settings(runner),
            policy: config.policy(runner),
            lease_ttl: Duration::from_secs(config.lease_secs),
            rest_interval: Duration::from_secs(config.poll_interval_secs),
            active_interval: Duration::from_secs(config.active_poll_interval_secs),
            retry: RetryPolicy::default(),
            ports,
            machine: None,
            pending: Vec::new(),
            last_saved: None,
            failed_report: None,
            task_definitions: Vec::new(),
            crash: CrashPlan::default(),
            saves: 0,
            commands: 0,
            jitter_seed: fnv1a(FNV_OFFSET, runner.name.as_bytes()),
            traceparent: None,
            state_span: None,
            metrics: None,
            aws_readable: true,
            check_sampler: telemetry::CheckSampler::new(config.telemetry.check_span_every_passes),
            entered_this_pass: false,
            last_call_at: None,
            consistency_window: Duration::from_secs(config.consistency_window_secs),
            attempt_active: false,
            unreadable: false,
            rest_outcome: None,
            last_tick_end: None,
            stack_cache: None,
            stack_refresh: stack_refresh(config.stack_refresh_secs, &runner.name),
            observed_cached: false,
            lease_until: None,
            fencing: None,
            settle: Duration::from_secs(config.settle_secs),
            settle_seen: None,
            settles_at: None,
        }
    }

    /// Plans a crash (tests, demo).
    #[must_use]
    pub fn with_crash(mut self, crash: CrashPlan) -> Self {
        self.crash = crash;
        self
    }

    /// Reports into these metrics.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether the runner's record has been read: loaded (the machine is in memory), or found
    /// unreadable (the runner is left alone until ops mend it; that is not "still loading").
    #[must_use]
    pub fn loaded(&self) -> bool {
        self.machine.is_some() || self.unreadable
    }

    /// Overrides the retry policy.
    #[must_use]
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The runner's name.
    #[must_use]
    pub fn runner(&self) -> &str {
        &self.runner.name
    }

    /// The runner's configuration.
    #[must_use]
    pub fn runner_config(&self) -> &RunnerConfig {
        &self.runner
    }

    /// The current phase (Idle before the first tick).
    #[must_use]
    pub fn phase(&self) -> Phase {
        self.machine
            .as_ref()
            .map_or(Phase::Idle, |m| phase_of(m.state()))
    }

    /// The last saved record.
    #[must_use]
    pub fn record(&self) -> Option<&Record> {
        self.last_saved.as_ref()
    }

    /// Whether the runner is at rest: its machine rests, or (dropped after a failed or fenced
    /// pass, to be reloaded) its last record did. A runner mid-attempt whose machine was dropped
    /// is not at rest: it keeps its own, short, time (its lease is running).
    #[must_use]
    pub fn at_rest(&self) -> bool {
        match &self.machine {
            Some(machine) => phase_of(machine.state()).is_resting(),
            None => self
                .last_saved
                .as_ref()
                .is_none_or(|r| r.phase().map_or(true, Phase::is_resting)),
        }
    }

    /// How long to wait before the next tick: the rest interval, or less when a desired
    /// state the runner waits for settles before it.
    #[must_use]
    pub fn requeue_after(&self) -> Duration {
        if let Some(at) = self.wake_at() {
            return at.since(self.ports.clock.now()).min(self.rest_interval);
        }
        if self.at_rest() {
            self.rest_interval
        } else {
            self.active_interval
        }
    }

    /// When this runner at rest wants its next pass before the next sweep: the moment the
    /// `desired/*` parameters it is waiting for settle (its last pass found it `settling`).
    #[must_use]
    pub fn wake_at(&self) -> Option<Millis> {
        let machine = self.machine.as_ref()?;
        let settling = phase_of(machine.state()).is_resting()
            && machine
                .inner()
                .memory
                .note
                .as_ref()
                .is_some_and(|note| note.code == "settling");
        self.settles_at
            .filter(|at| settling && *at > self.ports.clock.now())
    }

    /// One pass.
    ///
    /// # Errors
    /// A [`DriverError`]; the next tick starts again from the store when the machine may be
    /// ahead of it.
    pub async fn tick(&mut self) -> Result<TickReport, DriverError> {
        self.tick_with(None).await
    }

    /// One pass, observing from `view` (this runner's part of a fleet read) when the runner is
    /// at rest and the read is not older than its last pass; otherwise (under the lock, or no
    /// usable read) from its own fresh reads.
    ///
    /// # Errors
    /// As [`RunnerDriver::tick`].
    pub async fn tick_with(
        &mut self,
        view: Option<RunnerSnapshot>,
    ) -> Result<TickReport, DriverError> {
        let view = view.filter(|v| self.last_tick_end.is_none_or(|end| v.taken_at >= end));
        let mut report = TickReport::default();
        let started = self.ports.clock.now();
        let result = self.tick_inner(&mut report, view).await;
        self.last_tick_end = Some(self.ports.clock.now());
        if let Some(metrics) = &self.metrics {
            let now = self.ports.clock.now();
            metrics.pass(
                &self.runner.name,
                now.since(started).as_secs_f64(),
                now,
                self.aws_readable,
            );
            if let Some(machine) = &self.machine {
                metrics.runner_status(
                    &self.runner.name,
                    held_epoch(machine.state()).is_some(),
                    machine.inner().memory.last_success,
                );
            }
        }
        if result.is_err() {
            // Whatever happened, the store is the truth: rebuild from it next time.
            self.machine = None;
            self.pending.clear();
            self.failed_report = Some(Box::new(report));
            return result.map(|()| TickReport::default());
        }
        result.map(|()| report)
    }

    /// What the last failed tick did before it failed (transitions it saved, commands it ran).
    pub fn take_failed_report(&mut self) -> Option<TickReport> {
        self.failed_report.take().map(|report| *report)
    }

    async fn tick_inner(
        &mut self,
        report: &mut TickReport,
        view: Option<RunnerSnapshot>,
    ) -> Result<(), DriverError> {
        let resting = self.phase().is_resting();
        if resting {
            // The attempt's last state (Done, RolledBack) ended with the previous pass.
            self.state_span = None;
        }
        self.attempt_active = false;
        self.entered_this_pass = false;
        self.rest_outcome = None;
        let result = self.pass(report, view).await;
        if resting && !self.attempt_active && self.phase().is_resting() {
            self.trace_check();
        }
        result
    }

    /// A pass at rest that led nowhere: a short `check` span, when sampled.
    fn trace_check(&mut self) {
        let Some(outcome) = self.rest_outcome.take() else {
            return;
        };
        let (note, verdict) = *outcome;
        let (outcome, reason) = note.as_ref().map_or(("idle", ""), |note| {
            (note.code.as_str(), note.message.as_str())
        });
        if !self.check_sampler.sample(outcome) {
            return;
        }
        // The verdict is this pass's only when the rules ran (not on a bad value or an
        // unreadable AWS, which stop before them).
        let verdict = verdict.as_ref().filter(|_| {
            matches!(outcome, "idle" | "lock-busy" | "lock-failed")
                || Rule::from_name(outcome).is_some()
        });
        telemetry::check_span(&self.runner.name, outcome, reason, verdict);
    }

    async fn pass(
        &mut self,
        report: &mut TickReport,
        view: Option<RunnerSnapshot>,
    ) -> Result<(), DriverError> {
        let fresh = self.machine.is_none();
        if fresh {
            self.load().await?;
        }
        if !self.secure_lease(fresh, report).await? {
            return Ok(());
        }
        let mut queue = std::mem::take(&mut self.pending);
        if queue.is_empty() {
            // The fleet read serves a pass at rest only: under the lock every read is fresh.
            let view = view.filter(|_| self.phase().is_resting());
            self.observed_cached = false;
            let mut observation = self.observe_with(view).await?;
            if self.observed_cached
                && self.machine.as_ref().is_some_and(|m| {
                    m.inner()
                        .would_attempt(&observation, self.ports.clock.now())
                })
            {
                // An attempt starts on the runner's own fresh reads only: the fleet read may
                // be a sweep old (or served stale by ECS, which is eventually consistent), and
                // the stacks kept at rest may have been changed since by another controller.
                self.stack_cache = None;
                observation = self.observe().await?;
            }
            queue = self
                .handle(Event::Observed(Box::new(observation)), report)
                .await?;
        }
        let mut executed = 0;
        while !queue.is_empty() {
            executed += 1;
            if executed > COMMANDS_PER_TICK_MAX {
                return Err(DriverError::Bug(format!(
                    "more than {COMMANDS_PER_TICK_MAX} commands in one pass"
                )));
            }
            let command = queue.remove(0);
            report.commands.push(command.name());
            let span = self.command_span(&command);
            let event = self.execute(&command).instrument(span.clone()).await?;
            let outcome = match &event {
                Event::CommandFailed { class, .. } => match class {
                    FailureClass::Transient => "transient-error",
                    FailureClass::Permanent => "permanent-error",
                    FailureClass::Fenced => "fenced",
                    FailureClass::Conflict => "conflict",
                    FailureClass::Unreadable => "read-error",
                },
                _ => "ok",
            };
            span.record("outcome", outcome);
            drop(span);
            if let Some(metrics) = &self.metrics {
                metrics.command(&self.runner.name, command.name(), outcome);
            }
            if matches!(
                event,
                Event::CommandFailed {
                    class: FailureClass::Fenced,
                    ..
                }
            ) {
                // The runner is someone else's now: write nothing, reload from the store.
                tracing::warn!(runner = %self.runner.name, command = command.name(), "fenced: another controller holds the runner; reloading next pass");
                self.machine = None;
                self.pending.clear();
                return Ok(());
            }
            self.commands += 1;
            if self.crash.after_command == Some(self.commands)
                || self.crash.after_command_named == Some(command.name())
            {
                return Err(DriverError::Crashed(format!(
                    "after command #{} ({})",
                    self.commands,
                    command.name()
                )));
            }
            queue.extend(self.handle(event, report).await?);
        }
        Ok(())
    }

    async fn load(&mut self) -> Result<(), DriverError> {
        let loaded =
            self.ports
                .store
                .load(&self.runner.name)
                .await
                .and_then(|record| match record {
                    Some(record) => {
                        let restored = record
                            .restore(self.settings.clone())
                            .map_err(StoreError::from)?;
                        Ok((Some(record), restored))
                    }
                    None => Ok((
                        None,
                        (
                            RunnerMachine::new(&self.runner.name, self.settings.clone()),
                            State::Idle {},
                        ),
                    )),
                });
        let (record, (shared, state)) = match loaded {
            Ok(loaded) => loaded,
            Err(error) => {
                if let StoreError::Record(unusable) = &error {
                    // Nothing is done with (or written over) a record this controller cannot
                    // read; the pass says why, by name.
                    self.unreadable = true;
                    self.rest_outcome = Some(Box::new((
                        Some(Note {
                            code: unusable.code().to_owned(),
                            message: unusable.to_string(),
                            at: self.ports.clock.now(),
                        }),
                        None,
                    )));
                }
                return Err(error.into());
            }
        };
        self.unreadable = false;
        let mut ctx = Ctx {
            now: self.ports.clock.now(),
            ..Ctx::default()
        };
        let machine = machine::restore(shared, state, &mut ctx);
        tracing::info!(runner = %self.runner.name, phase = %phase_of(machine.state()), resumed = record.is_some(), "loaded");
        self.traceparent = record.as_ref().and_then(|r| r.traceparent.clone());
        let phase = phase_of(machine.state());
        self.attempt_active |= !phase.is_resting();
        if let Some(metrics) = &self.metrics {
            metrics.set_state(&self.runner.name, phase);
        }
        self.state_span = machine::attempt_of(machine.state())
            .filter(|_| !phase.is_resting())
            .map(|attempt| {
                telemetry::state_span(
                    &self.runner.name,
                    phase,
                    attempt,
                    held_epoch(machine.state()),
                    self.traceparent.as_deref(),
                    true,
                )
            });
        if let (Some(span), Some(step)) =
            (&self.state_span, machine::change_set_of(machine.state()))
        {
            telemetry::record_change_set(span, step);
        }
        self.machine = Some(machine);
        self.last_saved = record;
        self.pending = ctx.commands;
        Ok(())
    }

    /// Handles one event, persists if anything changed, and returns the commands to execute.
    async fn handle(
        &mut self,
        event: Event,
        report: &mut TickReport,
    ) -> Result<Vec<Command>, DriverError> {
        let now = self.ports.clock.now();
        let Some(machine) = self.machine.as_mut() else {
            return Err(DriverError::Bug("handle without a machine".to_owned()));
        };
        let history_before = machine.inner().memory.history.len();
        let last_before = machine.inner().memory.history.back().cloned();
        let mut ctx = Ctx {
            now,
            ..Ctx::default()
        };
        machine.handle_with_context(&Input { now, event }, &mut ctx);
        if let Some(violation) = ctx.violations.first() {
            return Err(DriverError::Bug(violation.clone()));
        }
        if !matches!(phase_of(machine.state()), p if p.is_resting() || p == Phase::Checking) {
            self.attempt_active = true;
        }
        if phase_of(machine.state()).is_resting() {
            // What a pass at rest concluded, for its check span (kept here: a refused write
            // below drops the machine).
            let memory = &machine.inner().memory;
            self.rest_outcome = Some(Box::new((memory.note.clone(), memory.verdict.clone())));
        }
        let history = &machine.inner().memory.history;
        if history.back() != last_before.as_ref() || history.len() != history_before {
            let new = history
                .iter()
                .rev()
                .take_while(|t| Some(*t) != last_before.as_ref())
                .cloned()
                .collect::<Vec<_>>();
            self.entered_this_pass = true;
            let state = machine.state();
            let phase = phase_of(state);
            let attempt = machine::attempt_of(state).cloned();
            let epoch = held_epoch(state);
            if let (Some(attempt), true) = (
                &attempt,
                new.iter()
                    .any(|t| t.from == Phase::Checking && t.to == Phase::Locked),
            ) {
                // An attempt under the lock: its root span, ended at once (a crash cannot lose
                // it), then its `checking` span with the verdict that started it. A Checking
                // that ends without the lock is not an attempt: it is told by a check span.
                let root = telemetry::attempt_span(&self.runner.name, attempt);
                self.traceparent = telemetry::traceparent(&root);
                let checking = telemetry::state_span(
                    &self.runner.name,
                    Phase::Checking,
                    attempt,
                    epoch,
                    self.traceparent.as_deref(),
                    false,
                );
                if let Some(verdict) = &machine.inner().memory.verdict {
                    telemetry::record_verdict(&checking, verdict);
                }
            }
            // Leaving a state ends its span; entering one opens the next.
            self.state_span = attempt
                .as_ref()
                .filter(|_| !matches!(phase, Phase::Idle | Phase::Checking))
                .map(|attempt| {
                    telemetry::state_span(
                        &self.runner.name,
                        phase,
                        attempt,
                        epoch,
                        self.traceparent.as_deref(),
                        false,
                    )
                });
            let span = self.state_span.clone().unwrap_or_else(tracing::Span::none);
            if let Some(metrics) = &self.metrics {
                for t in &new {
                    metrics.transition(&self.runner.name, t.from, t.to);
                }
                metrics.set_state(&self.runner.name, phase);
            }
            for transition in new.into_iter().rev() {
                tracing::info!(parent: &span, runner = %self.runner.name, from = %transition.from, to = %transition.to, note = transition.note.as_deref().unwrap_or(""), "transition");
                report.transitions.push(transition);
            }
        }
        if let (Some(span), Some(step)) =
            (&self.state_span, machine::change_set_of(machine.state()))
        {
            telemetry::record_change_set(span, step);
        }
        if phase_of(machine.state()) == Phase::Checking {
            // The lease comes first: nothing is written before it is ours. Taking it changes
            // nothing on the runner; its result leads to Locked (saved) or back to rest.
            return Ok(ctx.commands);
        }
        let mut record = Record::capture(machine);
        if self.traceparent.is_some() {
            record.traceparent.clone_from(&self.traceparent);
        }
        if self.last_saved.as_ref() != Some(&record) {
            if self.written_by_another().await? {
                tracing::info!(runner = %self.runner.name, "the record changed since this controller read it (another controller's attempt): reloading");
                self.machine = None;
                self.pending.clear();
                return Ok(Vec::new());
            }
            if !self.may_write().await? {
                tracing::info!(runner = %self.runner.name, "another controller holds the runner: not writing; reloading next pass");
                self.machine = None;
                self.pending.clear();
                return Ok(Vec::new());
            }
            if self.fenced_save() && self.lease_lapsed() {
                // Checked last, right before the write: a controller paused between its
                // fencing check and here must not write (issue 14, 7b).
                tracing::info!(runner = %self.runner.name, "the lease ended on this controller's own clock before the record was written: not writing; reloading next pass");
                self.machine = None;
                self.pending.clear();
                return Ok(Vec::new());
            }
            self.ports.store.save(&record).await?;
            self.last_saved = Some(record);
            self.saves += 1;
            report.saves += 1;
            if self.crash.after_save == Some(self.saves) {
                return Err(DriverError::Crashed(format!("after save #{}", self.saves)));
            }
        }
        Ok(ctx.commands)
    }

    /// How long to wait before a non-idempotent ECS call may be decided, if at all: only when
    /// its state was not entered in this pass (a restore, a retry) and was entered, or the call
    /// last tried, less than the consistency window (`consistency_window_secs`: the call's
    /// own time, up to the SDK's 30 s operation timeout, plus ECS's eventual consistency) ago.
    fn settling(&self, command: &Command, now: Millis) -> Option<Duration> {
        let checked = matches!(
            command,
            Command::RegisterTaskDefinition { .. }
                | Command::UpdateService { .. }
                | Command::RollBackService { .. }
        );
        let since = self.machine.as_ref()?.inner().memory.since;
        // The call may have been made later than the state was entered: by this process
        // before a failed save or a reload (remembered here), or by a crashed process before
        // its lease expired (then the lease's expiry, longer than the window, covers it).
        let reference = self.last_call_at.map_or(since, |at| at.max(since));
        let age = now.since(reference);
        (checked && !self.entered_this_pass && age < self.consistency_window)
            .then(|| self.consistency_window.saturating_sub(age))
    }

    /// Whether another controller wrote the record since this one last read or wrote it, while
    /// this one was at rest (at rest nothing fences the record: a controller whose lease
    /// expired mid-attempt, crashed or frozen, left its attempt there, and a stale at-rest
    /// machine must adopt it, not overwrite it). During an attempt the fencing token keeps
    /// everyone else out, so the extra read is made only from rest.
    async fn written_by_another(&self) -> Result<bool, DriverError> {
        let from_rest = self
            .last_saved
            .as_ref()
            .is_none_or(|r| r.phase().is_ok_and(Phase::is_resting));
        if !from_rest {
            return Ok(false);
        }
        let stored = self.ports.store.load(&self.runner.name).await?;
        // The store may shorten what it keeps (the 4 KB fit): compare what identifies a state.
        let key = |r: &Record| {
            (
                r.phase.clone(),
                r.since,
                r.attempt.as_ref().map(|a| a.id.clone()),
                r.lock_epoch,
            )
        };
        Ok(stored.as_ref().map(key) != self.last_saved.as_ref().map(key))
    }

    /// The fence of the command being executed (`fencing`): the lease's highest epoch is still
    /// its token, and the lease has not ended on this controller's own clock. Checked before
    /// the command starts and again right before its mutating call, after the reads that
    /// decide it (they may take long: a search through a busy family, retried reads). `Some`
    /// is the event that refuses the command.
    async fn fence(&self) -> Option<Event> {
        let (command, epoch) = self.fencing?;
        let now = self.ports.clock.now();
        let held = self
            .ports
            .lock
            .check(&self.runner.name, &self.holder, epoch, now)
            .await;
        let (class, message) = match held {
            Ok(true) if self.lease_lapsed() => (
                FailureClass::Fenced,
                format!("the lease of fencing token {epoch} ended on this controller's own clock (a pause?): not acting on it"),
            ),
            Ok(true) => return None,
            Ok(false) => (
                FailureClass::Fenced,
                format!("fencing token {epoch} is no longer valid: another controller may hold the lock"),
            ),
            // Not knowing is not losing: try again next pass, without acting now.
            Err(error) => (
                FailureClass::Transient,
                format!("cannot check the lease: {error}"),
            ),
        };
        Some(Event::CommandFailed {
            command,
            class,
            message,
        })
    }

    /// Whether the lease this driver holds ended on its own monotonic clock.
    fn lease_lapsed(&self) -> bool {
        self.lease_until
            .is_some_and(|until| self.ports.clock.monotonic() >= until)
    }

    /// Whether the save about to be made is fenced by a lease (during an attempt, or leaving
    /// one), as [`RunnerDriver::may_write`] decides.
    fn fenced_save(&self) -> bool {
        let in_attempt = self
            .machine
            .as_ref()
            .is_some_and(|m| held_epoch(m.state()).is_some());
        let leaving = self
            .last_saved
            .as_ref()
            .is_some_and(|r| r.phase().is_ok_and(|p| !p.is_resting()) && r.lock_epoch.is_some());
        in_attempt || leaving
    }

    /// Whether this controller may write the runner's record now: during an attempt only with
    /// a valid fencing token; at rest only when no other controller holds a live lease. The
    /// record is shared (the SSM store): a controller that lost the runner must not overwrite
    /// the holder's progress.
    async fn may_write(&self) -> Result<bool, DriverError> {
        let Some(machine) = self.machine.as_ref() else {
            return Ok(false);
        };
        let now = self.ports.clock.now();
        let (lock, runner) = (&self.ports.lock, &self.runner.name);
        // Leaving an attempt for rest (Done, RolledBack, an abort) is fenced by the token of
        // the attempt being left: a controller whose lease lapsed (a failed renewal, a long
        // pause) must not end an attempt that another controller has since taken over or
        // replaced (found by the simulation, seed 136).
        let leaving = self
            .last_saved
            .as_ref()
            .filter(|r| r.phase().is_ok_and(|p| !p.is_resting()))
            .and_then(|r| r.lock_epoch);
        if let Some(epoch) = held_epoch(machine.state()).or(leaving) {
            return lock
                .check(runner, &self.holder, epoch, now)
                .await
                .map_err(DriverError::Lock);
        }
        let holder = lock.holder(runner, now).await.map_err(DriverError::Lock)?;
        Ok(holder.is_none_or(|h| h == self.holder))
    }

    /// Renews the lease of an attempt in flight. Returns whether this pass may act.
    ///
    /// A machine just loaded from the store whose lease expired takes it again and adopts the
    /// new fencing token (a restarted controller resuming its attempt). A machine that was
    /// already in memory and finds its lease gone is dropped and reloaded from the store next
    /// pass: the store, not a stale memory, says what happens next.
    async fn secure_lease(
        &mut self,
        fresh: bool,
        report: &mut TickReport,
    ) -> Result<bool, DriverError> {
        let Some(epoch) = self.machine.as_ref().and_then(|m| held_epoch(m.state())) else {
            return Ok(true);
        };
        let now = self.ports.clock.now();
        let sent = self.ports.clock.monotonic();
        match self
            .ports
            .lock
            .acquire(&self.runner.name, &self.holder, now, self.lease_ttl)
            .await
        {
            Ok(LockOutcome::Acquired { epoch: held }) if held == epoch => {
                self.lease_until = Some(sent + self.lease_ttl);
                Ok(true)
            }
            Ok(LockOutcome::Acquired { epoch: adopted }) => {
                // A new epoch: the persisted attempt's lease had expired — another
                // controller's (this one just loaded the record after a restart), or this
                // one's own, renewed too late (a slow pass, a pause), which is taken again
                // by atomic create rather than renewed in place.
                self.lease_until = Some(sent + self.lease_ttl);
                // The record may have moved on between our load and this take-over (its holder
                // finished and released): read it again, under the new lease.
                self.load().await?;
                let still = self.machine.as_ref().and_then(|m| held_epoch(m.state()));
                if still != Some(epoch) {
                    if !fresh {
                        tracing::warn!(runner = %self.runner.name, epoch, "the lease is no longer ours: it lapsed and another controller moved the attempt on; reloading from the store");
                    }
                    self.ports
                        .lock
                        .release(&self.runner.name, &self.holder, adopted)
                        .await
                        .map_err(DriverError::Lock)?;
                    self.machine = None;
                    self.pending.clear();
                    return Ok(false);
                }
                tracing::info!(runner = %self.runner.name, old = epoch, new = adopted, "adopted the expired lease of the persisted attempt");
                self.handle(Event::LeaseAdopted { epoch: adopted }, report)
                    .await?;
                // The commands issued on restore carry the old token: reload the record just
                // saved with the new one, which re-issues them.
                self.load().await?;
                Ok(true)
            }
            Ok(outcome) => {
                if fresh {
                    // Just loaded: this controller did not hold the attempt's lease in memory
                    // (a standby, or one that already said why it let go): another controller
                    // running the attempt is the normal situation, not an alarm.
                    tracing::info!(runner = %self.runner.name, ?outcome, "another controller holds the runner's attempt; following it from the store");
                } else {
                    tracing::warn!(runner = %self.runner.name, ?outcome, "the lease is no longer ours; reloading from the store next pass");
                }
                self.machine = None;
                self.pending.clear();
                Ok(false)
            }
            Err(error) => {
                // Acting is still safe: every mutation is fenced by a fresh check.
                tracing::warn!(runner = %self.runner.name, %error, "lease renewal failed");
                Ok(true)
            }
        }
    }

    /// A span for one command, under the current state's span.
    fn command_span(&self, command: &Command) -> tracing::Span {
        let Some(parent) = &self.state_span else {
            return tracing::Span::none(); // at rest: no trace
        };
        tracing::info_span!(
            parent: parent,
            "command",
            otel.name = command.name(),
            runner = %self.runner.name,
            command = command.name(),
            outcome = tracing::field::Empty,
        )
    }

    /// Runs an operation with bounded, jittered retries on transient errors.
    async fn retrying<T, F, Fut>(&self, operation: F) -> Result<T, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PortError>>,
    {
        let seed = self.jitter_seed ^ u64::from(self.commands);
        let on_retry = |error: &PortError, delay: Duration| {
            tracing::info!(runner = %self.runner.name, %error, ?delay, "retrying");
            if let Some(metrics) = &self.metrics {
                metrics.retry(&self.runner.name);
            }
        };
        self.retry
            .run(seed, self.ports.clock.as_ref(), on_retry, operation)
            .await
    }

    /// Reads the desired and observed state.
    async fn observe(&mut self) -> Result<Observation, DriverError> {
        self.observe_with(None).await
    }

    /// Reads the desired and observed state, the desired folder and the service from `view`
    /// when given (a fleet read), else fresh.
    async fn observe_with(
        &mut self,
        view: Option<RunnerSnapshot>,
    ) -> Result<Observation, DriverError> {
        let (desired_read, service_read, read_at) = if let Some(view) = view {
            self.observed_cached = true;
            (view.desired, Some(view.service), view.taken_at)
        } else {
            // The runner's folder: `desired/…` and the `release` document (the status record
            // and the lease, read past, are read by their own paths).
            let folder = format!("{}/{}", self.prefix, self.runner.name);
            let read_at = self.ports.clock.now();
            let read = self
                .retrying(|| self.ports.ssm.get_by_path(&folder))
                .await
                .map(|parameters| {
                    parameters
                        .into_iter()
                        .filter_map(|(name, value)| {
                            let relative = name.strip_prefix(&folder)?.strip_prefix('/')?;
                            is_desired_name(relative).then(|| (relative.to_owned(), value))
                        })
                        .collect::<BTreeMap<String, String>>()
                });
            (read, None, read_at)
        };
        // An unreadable AWS is an observation too: the machine still sees time pass and checks
        // its deadlines.
        let desired = match desired_read {
            Ok(relative) => {
                // First seen when the answer is here, not when the read began (a fleet read's
                // pages take a while): later, never earlier.
                let seen_at = self.ports.clock.now().max(read_at);
                self.settles_at = self.settle_of(&relative, seen_at);
                parse_desired(&relative, &self.policy)
            }
            Err(error) => Err(DesiredError::Unavailable(error.to_string())),
        };
        // What the stacks are read under ("" for no desired infrastructure); none when the
        // desired state is unusable (the stacks are then not kept).
        let fingerprint = desired
            .as_ref()
            .ok()
            .map(|d| infra::fingerprint(d).unwrap_or_default());
        let observed = match self.observe_runner(service_read, fingerprint).await {
            Ok(observed) => observed,
            Err(error) => Err(ObserveError::Unavailable(error.to_string())),
        };
        self.aws_readable = !matches!(desired, Err(DesiredError::Unavailable(_)))
            && !matches!(observed, Err(ObserveError::Unavailable(_)));
        Ok(Observation {
            desired,
            observed,
            settles_at: self.settles_at,
        })
    }

    /// When the `desired/*` values just read (at `read_at`) settle: `settle_secs` after this
    /// controller first read them as they are (a restart, or another replica, waits one settle
    /// again: safe). AWS's clock (`LastModifiedDate`) is not used: a skew between it and ours
    /// cannot shorten the wait, and a deletion, which leaves no date behind, moves the
    /// fingerprint like any write. `None` with a release document, acted on at once.
    fn settle_of(
        &mut self,
        relative: &BTreeMap<String, String>,
        read_at: Millis,
    ) -> Option<Millis> {
        let fingerprint = settle_fingerprint(relative);
        let first_seen = match self.settle_seen {
            Some((seen, at)) if seen == fingerprint => at,
            _ => {
                self.settle_seen = Some((fingerprint, read_at));
                read_at
            }
        };
        (!relative.contains_key(RELEASE_PARAMETER)).then(|| first_seen.after(self.settle))
    }

    async fn observe_runner(
        &mut self,
        service_read: Option<
            Result<runner_updater_core::domain::observed::ServiceState, PortError>,
        >,
        fingerprint: Option<String>,
    ) -> Result<Result<runner_updater_core::domain::observed::Observed, ObserveError>, PortError>
    {
        let (cluster, service) = (&self.runner.cluster, &self.runner.service);
        // Tasks are read only where they are judged: in the health gate.
        let gate = matches!(self.phase(), Phase::AwaitingRollout | Phase::Soaking);
        let ecs = &self.ports.ecs;
        let read = match service_read {
            Some(read) => read,
            None => {
                self.retrying(|| async move {
                    if gate {
                        ecs.describe_service(cluster, service).await
                    } else {
                        ecs.describe_service_without_tasks(cluster, service).await
                    }
                })
                .await
            }
        };
        let state = match read {
            Ok(state) => state,
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Ok(Err(ObserveError::ServiceNotFound {
                    cluster: cluster.clone(),
                    service: service.clone(),
                }))
            }
            Err(e) => return Err(e),
        };
        let task_definition = self.task_definition(&state.task_definition_arn).await?;
        let stacks = if let Some(stacks) = self.cached_stacks(fingerprint.as_ref()) {
            self.observed_cached = true;
            stacks
        } else {
            let mut stacks = Vec::with_capacity(self.runner.stacks.len());
            for name in &self.runner.stacks {
                match self.retrying(|| self.ports.cfn.describe_stack(name)).await {
                    Ok(stack) => stacks.push(stack),
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        return Ok(Err(ObserveError::StackNotFound(name.clone())))
                    }
                    Err(e) => return Err(e),
                }
            }
            // Kept for the passes at rest to come; anything read under the lock is not,
            // and an attempt leaves no cache behind.
            self.stack_cache = match fingerprint {
                Some(fingerprint) if self.phase().is_resting() && !stacks.is_empty() => {
                    Some(Box::new(StackCache {
                        fingerprint,
                        read_at: self.ports.clock.now(),
                        stacks: stacks.clone(),
                    }))
                }
                _ => None,
            };
            stacks
        };
        Ok(observe(
            state,
            &task_definition,
            &self.runner.container,
            &stacks,
        ))
    }

    /// The stacks as last read at rest, if they still serve: at rest, under the same desired
    /// infrastructure, none of them moving, and read less than `stack_refresh` ago.
    fn cached_stacks(
        &self,
        fingerprint: Option<&String>,
    ) -> Option<Vec<runner_updater_core::domain::observed::StackState>> {
        let cache = self.stack_cache.as_ref()?;
        let fresh = self.phase().is_resting()
            && fingerprint == Some(&cache.fingerprint)
            && self.ports.clock.now().since(cache.read_at) < self.stack_refresh
            && cache
                .stacks
                .iter()
                .all(|s| infra::progress(&s.status) != StackProgress::InProgress);
        fresh.then(|| cache.stacks.clone())
    }

    /// A task definition, from the cache when possible (revisions are immutable).
    async fn task_definition(&mut self, arn: &str) -> Result<TaskDefinition, PortError> {
        if let Some(cached) = self.task_definitions.iter().find(|td| td.arn == arn) {
            return Ok(cached.clone());
        }
        let fetched = self
            .retrying(|| self.ports.ecs.describe_task_definition(arn))
            .await?;
        if self.task_definitions.len() >= TASK_DEFINITION_CACHE_MAX {
            self.task_definitions.remove(0);
        }
        self.task_definitions.push(fetched.clone());
        Ok(fetched)
    }

    async fn execute(&mut self, command: &Command) -> Result<Event, DriverError> {
        let now = self.ports.clock.now();
        tracing::debug!(runner = %self.runner.name, command = command.name(), "executing");
        if let Some(wait) = self.settling(command, now) {
            // A call that may already have been made (its state was entered in an earlier
            // pass: a crash, a failed save, a retry) is decided on a read of ECS, which is
            // eventually consistent: a read just after the call may not show it yet, and
            // would make us call again. Wait until the read can be trusted.
            return Ok(Event::CommandFailed {
                command: command.name(),
                class: FailureClass::Transient,
                message: format!(
                    "waiting {}s more for ECS's view to settle before checking whether the last {} was made",
                    wait.as_secs().max(1),
                    command.name()
                ),
            });
        }
        // A first call: its state was entered in this pass and nothing was called since it
        // was entered, so there is nothing to find again (no search through the family).
        let since = self
            .machine
            .as_ref()
            .map_or(now, |m| m.inner().memory.since);
        let first_call = self.entered_this_pass && self.last_call_at.is_none_or(|at| at < since);
        if matches!(
            command,
            Command::RegisterTaskDefinition { .. }
                | Command::UpdateService { .. }
                | Command::RollBackService { .. }
        ) {
            self.last_call_at = Some(now);
        }
        self.fencing = fencing_epoch(command).map(|epoch| (command.name(), epoch));
        if let Some(refused) = self.fence().await {
            return Ok(refused);
        }
        let result = match command {
            Command::Observe => return Ok(Event::Observed(Box::new(self.observe().await?))),
            Command::AcquireLock { .. } => {
                let sent = self.ports.clock.monotonic();
                let outcome = self
                    .ports
                    .lock
                    .acquire(&self.runner.name, &self.holder, now, self.lease_ttl)
                    .await;
                if let Ok(LockOutcome::Acquired { .. }) = outcome {
                    self.lease_until = Some(sent + self.lease_ttl);
                }
                outcome.map(|outcome| match outcome {
                    LockOutcome::Acquired { epoch } => Event::LockAcquired { epoch },
                    LockOutcome::Busy { holder, .. } => Event::LockBusy { holder },
                })
            }
            Command::ReleaseLock { epoch } => self
                .ports
                .lock
                .release(&self.runner.name, &self.holder, *epoch)
                .await
                .map(|()| Event::LockReleased),
            Command::RegisterTaskDefinition {
                attempt_id,
                base_task_definition_arn,
                image,
                version,
                ..
            } => {
                self.register(
                    attempt_id,
                    base_task_definition_arn,
                    image,
                    version,
                    first_call,
                )
                .await
            }
            Command::UpdateService {
                task_definition_arn,
                baseline_deployment_ids,
                ..
            } => {
                self.update_service(task_definition_arn, baseline_deployment_ids)
                    .await
            }
            Command::RollBackService {
                attempt_id,
                task_definition_arn,
                baseline_deployments,
                ..
            } => {
                self.roll_back_service(attempt_id, task_definition_arn, baseline_deployments)
                    .await
            }
            Command::PrepareChangeSet {
                attempt_id,
                name,
                plan,
                ..
            } => self.prepare_change_set(attempt_id, name, plan).await,
            Command::AwaitChangeSet {
                attempt_id,
                stack,
                name,
                ..
            } => self.await_change_set(attempt_id, stack, name).await,
            Command::DeleteChangeSet { stack, name, .. } => {
                self.delete_change_set(stack, name).await
            }
        };
        Ok(result.unwrap_or_else(|error| Event::CommandFailed {
            command: command.name(),
            class: match error.kind {
                ErrorKind::Transient | ErrorKind::Throttled => FailureClass::Transient,
                ErrorKind::Conflict => FailureClass::Conflict,
                ErrorKind::Permanent | ErrorKind::NotFound => FailureClass::Permanent,
            },
            message: error.to_string(),
        }))
    }

    async fn register(
        &mut self,
        attempt_id: &str,
        base_arn: &str,
        image: &str,
        version: &str,
        first_call: bool,
    ) -> Result<Event, PortError> {
        const COMMAND: &str = "register_task_definition";
        // The reads before the call: a failed one is a read failure (retried within the
        // state's deadline), never the registration refused.
        let base = match self.task_definition(base_arn).await {
            Ok(base) => base,
            Err(error) => return read_failed(COMMAND, error),
        };
        // Our revision, if the registration was made (its answer lost to a crash, a timeout,
        // a reset connection), is newer than the baseline's.
        let floor = revision_search::family_revision(base_arn).map_or(0, |(_, revision)| revision);
        let found = if first_call {
            None
        } else {
            match self.find_registered(&base.family, attempt_id, floor).await {
                Ok(found) => found,
                Err(Unsearchable::Read(error)) => return read_failed(COMMAND, error),
                Err(Unsearchable::Exhausted(error)) => return Err(error),
            }
        };
        if let Some(arn) = found {
            let found = match self.task_definition(&arn).await {
                Ok(found) => found,
                Err(error) => return read_failed(COMMAND, error),
            };
            let same_image = found
                .container(&self.runner.container)
                .and_then(|c| c.image.as_deref())
                == Some(image);
            if same_image {
                tracing::info!(runner = %self.runner.name, arn = %found.arn, "task definition of this attempt already registered");
                return Ok(Event::TaskDefinitionRegistered { arn: found.arn });
            }
        }
        if base.container(&self.runner.container).is_none() {
            let message = format!(
                "{base_arn} has no container named {:?}",
                self.runner.container
            );
            return Err(PortError::new(
                ErrorKind::Permanent,
                AwsOp::RegisterTaskDefinition,
                message,
            ));
        }
        let tags = BTreeMap::from([
            (VERSION_TAG.to_owned(), version.to_owned()),
            (ATTEMPT_TAG.to_owned(), attempt_id.to_owned()),
            (RUNNER_TAG.to_owned(), self.runner.name.clone()),
        ]);
        let container = &self.runner.container;
        if let Some(refused) = self.fence().await {
            return Ok(refused);
        }
        // Not retried here: RegisterTaskDefinition has no idempotency token. A failure (even one
        // after AWS succeeded) comes back next pass, and the attempt-tag lookup above runs first.
        let arn = self
            .ports
            .ecs
            .register_clone(base_arn, container, image, tags)
            .await?;
        Ok(Event::TaskDefinitionRegistered { arn })
    }

    /// The revision of `family` newer than `floor` tagged with `attempt_id`, if any: every
    /// such revision is looked at, however many other tools registered since, across pages
    /// (see [`revision_search`]). A search that cannot finish is an error, never "not found":
    /// not knowing must not lead to a second registration.
    async fn find_registered(
        &self,
        family: &str,
        attempt_id: &str,
        floor: u64,
    ) -> Result<Option<String>, Unsearchable> {
        let mut search = RevisionSearch::new(family, attempt_id, floor);
        let ecs = &self.ports.ecs;
        loop {
            match search.step() {
                SearchStep::List { token } => {
                    let page = self
                        .retrying(|| ecs.list_task_definitions(family, token.as_deref()))
                        .await
                        .map_err(Unsearchable::Read)?;
                    search.listed(&page.arns, page.next);
                }
                SearchStep::Describe { arn } => {
                    match self.retrying(|| ecs.describe_task_definition(&arn)).await {
                        Ok(definition) => search.described(&arn, &definition),
                        Err(error) if error.kind == ErrorKind::NotFound => search.missing(&arn),
                        Err(error) => return Err(Unsearchable::Read(error)),
                    }
                }
                SearchStep::Found { arn } => return Ok(Some(arn)),
                SearchStep::NotFound => return Ok(None),
                SearchStep::Exhausted => {
                    return Err(Unsearchable::Exhausted(PortError::new(
                        ErrorKind::Permanent,
                        AwsOp::ListTaskDefinitions,
                        format!(
                            "more than {} revisions of {family} were registered since revision {floor}: cannot rule out that this attempt's registration was made, so it is not made again",
                            revision_search::DESCRIBES_MAX
                        ),
                    )))
                }
            }
        }
    }

    async fn update_service(
        &self,
        task_definition_arn: &str,
        baseline_ids: &[String],
    ) -> Result<Event, PortError> {
        let (cluster, service) = (&self.runner.cluster, &self.runner.service);
        let ecs = &self.ports.ecs;
        // Only the deployments are needed: no task list (three AWS calls fewer).
        let state = match self
            .retrying(|| ecs.describe_service_without_tasks(cluster, service))
            .await
        {
            Ok(state) => state,
            Err(error) => return read_failed("update_service", error),
        };
        let new: Vec<_> = state
            .deployments
            .iter()
            .filter(|d| !baseline_ids.contains(&d.id))
            .collect();
        // Only a deployment of *our* task definition is ours. Any other deployment outside the
        // baseline (a console force-deploy, Terraform, or ECS having rolled ours back while we
        // were down) means the world moved under the attempt: a foreign writer, never "done".
        // The one exception: ECS's own circuit-breaker rollback of our deployment (its reason
        // says so), which leaves the service on the baseline; the gate then reports it.
        let ours_rolled_back = new.iter().find(|d| d.rollout_cause().is_circuit_breaker());
        if let (Some(rollback), false) = (
            ours_rolled_back,
            new.iter()
                .any(|d| d.task_definition_arn == task_definition_arn),
        ) {
            tracing::info!(runner = %self.runner.name, deployment = %rollback.id, "ECS already rolled back this attempt's deployment");
            return Ok(Event::ServiceUpdated {
                deployment_id: rollback.id.clone(),
            });
        }
        if let Some(other) = new
            .iter()
            .find(|d| d.task_definition_arn != task_definition_arn)
        {
            if !new
                .iter()
                .any(|d| d.task_definition_arn == task_definition_arn)
            {
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    AwsOp::UpdateService,
                    format!(
                        "deployment {} of {} appeared on the service outside this attempt",
                        other.id, other.task_definition_arn
                    ),
                ));
            }
        }
        if let Some(deployment) = new
            .iter()
            .find(|d| d.task_definition_arn == task_definition_arn)
        {
            tracing::info!(runner = %self.runner.name, deployment = %deployment.id, "service already updated by this attempt");
            return Ok(Event::ServiceUpdated {
                deployment_id: deployment.id.clone(),
            });
        }
        if let Some(refused) = self.fence().await {
            return Ok(refused);
        }
        // Not retried here: a lost answer comes back next pass, and the baseline check above
        // finds the deployment instead of updating twice.
        let deployment_id = ecs
            .update_service(cluster, service, task_definition_arn)
            .await?;
        Ok(Event::ServiceUpdated { deployment_id })
    }

    /// Finds the attempt's change set or creates it, and reports where its creation stands.
    async fn prepare_change_set(
        &self,
        attempt_id: &str,
        name: &str,
        plan: &StackPlan,
    ) -> Result<Event, PortError> {
        let cfn = &self.ports.cfn;
        let stack = plan.stack.as_str();
        let mut found = self
            .retrying(|| cfn.describe_change_set(stack, name))
            .await?;
        if found.is_none() {
            let template_url = plan.template_url.as_deref();
            let summary = self
                .retrying(|| cfn.template_summary(stack, template_url))
                .await?;
            if let Some(other) = summary
                .capabilities
                .iter()
                .find(|c| !matches!(c.as_str(), "CAPABILITY_IAM" | "CAPABILITY_NAMED_IAM"))
            {
                return Err(PortError::new(
                    ErrorKind::Permanent,
                    AwsOp::GetTemplateSummary,
                    format!("the template of {stack} needs {other} (macros or nested stacks), which the controller does not acknowledge: apply it by hand"),
                ));
            }
            let current = self.retrying(|| cfn.describe_stack(stack)).await?;
            let keep_parameters = summary
                .parameters
                .iter()
                .filter(|p| {
                    current.parameters.contains_key(*p) && !plan.parameters.contains_key(*p)
                })
                .cloned()
                .collect();
            let mut description = format!("runner-updater {attempt_id}: {}", plan.describe());
            description.truncate(description.floor_char_boundary(1024));
            let request = ChangeSetRequest {
                stack: stack.to_owned(),
                name: name.to_owned(),
                template_url: plan.template_url.clone(),
                parameters: plan.parameters.clone(),
                keep_parameters,
                capabilities: summary.capabilities,
                tags: plan.tags.clone(),
                client_token: name.to_owned(),
                description,
            };
            if let Some(refused) = self.fence().await {
                return Ok(refused);
            }
            // The client token makes a resent creation the same request.
            match self.retrying(|| cfn.create_change_set(&request)).await {
                Ok(id) => {
                    tracing::info!(runner = %self.runner.name, stack, change_set = name, %id, "change set created");
                }
                Err(error) if error.kind == ErrorKind::Conflict => {
                    tracing::info!(runner = %self.runner.name, stack, change_set = name, "change set already created by this attempt");
                }
                Err(error) => return Err(error),
            }
            found = self
                .retrying(|| cfn.describe_change_set(stack, name))
                .await?;
        }
        let Some(set) = found else {
            return Ok(Event::ChangeSetPending);
        };
        Ok(match set.creation() {
            Creation::Pending => Event::ChangeSetPending,
            Creation::NoChanges => Event::ChangeSetEmpty,
            Creation::Failed => Event::ChangeSetFailed {
                reason: set
                    .status_reason
                    .unwrap_or_else(|| format!("status {}", set.status)),
            },
            Creation::Ready if infra::changes_nothing(&set, plan) => {
                tracing::info!(runner = %self.runner.name, stack, change_set = name, "the change set changes no resource and no version: not executed");
                Event::ChangeSetEmpty
            }
            Creation::Ready => {
                let current = self.retrying(|| cfn.describe_stack(stack)).await?;
                let review = infra::review(&set, &current.parameters);
                tracing::info!(runner = %self.runner.name, stack, change_set = name, id = %set.id, review = %review.summary(), "change set reviewed");
                Event::ChangeSetReady { id: set.id, review }
            }
        })
    }

    /// Executes the change set unless it already ran (the token makes a resent execution the
    /// same request), then reports the stack's progress.
    async fn await_change_set(
        &self,
        attempt_id: &str,
        stack: &str,
        name: &str,
    ) -> Result<Event, PortError> {
        let cfn = &self.ports.cfn;
        let token = infra::execution_token(attempt_id, stack);
        let set = self
            .retrying(|| cfn.describe_change_set(stack, name))
            .await?;
        let execution = set.as_ref().map(|s| s.execution_status.clone());
        match execution.as_deref() {
            None => {
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    AwsOp::DescribeChangeSet,
                    format!("change set {name} of stack {stack} no longer exists: deleted by someone, or dropped when another update of the stack ran"),
                ))
            }
            Some("AVAILABLE") => {
                if let Some(refused) = self.fence().await {
                    return Ok(refused);
                }
                // Not retried blindly: a lost answer or a repeat is settled by asking the change
                // set again (the token makes a resent execution the same request).
                if let Err(error) = cfn.execute_change_set(stack, name, &token).await {
                    let again = self
                        .retrying(|| cfn.describe_change_set(stack, name))
                        .await?;
                    if !again.is_some_and(|s| s.execution_status.starts_with("EXECUTE_")) {
                        return Err(error);
                    }
                }
                tracing::info!(runner = %self.runner.name, stack, change_set = name, "change set executed");
                return Ok(Event::StackUpdatePending {
                    status: "UPDATE_IN_PROGRESS".to_owned(),
                });
            }
            Some("OBSOLETE") => {
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    AwsOp::DescribeChangeSet,
                    format!("change set {name} is obsolete: another update of stack {stack} ran"),
                ))
            }
            _ => {}
        }
        let current = self.retrying(|| cfn.describe_stack(stack)).await?;
        let progress = infra::progress(&current.status);
        match (execution.as_deref(), progress) {
            (_, StackProgress::InProgress) => Ok(Event::StackUpdatePending {
                status: current.status,
            }),
            (Some("EXECUTE_COMPLETE"), StackProgress::Complete) => Ok(Event::StackUpdated),
            (Some("EXECUTE_FAILED"), StackProgress::RolledBack | StackProgress::NeedsHuman) => {
                let events = self.retrying(|| cfn.stack_events(stack)).await?;
                let since = current.last_updated.unwrap_or_default();
                let (resource, reason) = infra::first_failure(&events, stack, &token, since)
                    .map_or(
                        (None, "no failed resource in the stack events".to_owned()),
                        |(r, why)| (Some(r), why),
                    );
                Ok(Event::StackUpdateFailed {
                    status: current.status,
                    resource,
                    reason,
                })
            }
            (Some("EXECUTE_FAILED"), StackProgress::Complete) => Err(PortError::new(
                ErrorKind::Permanent,
                AwsOp::ExecuteChangeSet,
                format!(
                    "the execution of change set {name} failed and stack {stack} is {}",
                    current.status
                ),
            )),
            (Some("EXECUTE_COMPLETE"), _) => Err(PortError::new(
                ErrorKind::Conflict,
                AwsOp::DescribeStacks,
                format!(
                    "change set {name} completed but stack {stack} is now {}: updated outside this attempt",
                    current.status
                ),
            )),
            // EXECUTE_IN_PROGRESS, UNAVAILABLE: CloudFormation has not reported yet.
            _ => Ok(Event::StackUpdatePending {
                status: current.status,
            }),
        }
    }

    /// Deletes a change set, first letting CloudFormation finish computing it (it refuses to
    /// delete one being created); bounded.
    async fn delete_change_set(&self, stack: &str, name: &str) -> Result<Event, PortError> {
        let cfn = &self.ports.cfn;
        for _ in 0..DELETE_WAITS_MAX {
            let found = self
                .retrying(|| cfn.describe_change_set(stack, name))
                .await?;
            match found {
                None => return Ok(Event::ChangeSetDeleted),
                Some(set) if set.creation() == Creation::Pending => {
                    self.ports.clock.sleep(DELETE_WAIT).await;
                }
                Some(_) => {
                    self.retrying(|| cfn.delete_change_set(stack, name)).await?;
                    return Ok(Event::ChangeSetDeleted);
                }
            }
        }
        Err(PortError::new(
            ErrorKind::Transient,
            AwsOp::DeleteChangeSet,
            format!("change set {name} of stack {stack} is still being created; not deleted"),
        ))
    }

    /// Points the service back at the baseline, unless that was done already: the service
    /// runs it, or a deployment of it exists that the service did not have before the attempt
    /// (our rollback before a crash, since moved on by someone else, or ECS's own). The
    /// machine then sees where the service is and does not fight a foreign writer.
    async fn roll_back_service(
        &mut self,
        attempt_id: &str,
        task_definition_arn: &str,
        baseline_deployments: &[String],
    ) -> Result<Event, PortError> {
        let read = {
            let (cluster, service) = (&self.runner.cluster, &self.runner.service);
            let ecs = &self.ports.ecs;
            self.retrying(|| ecs.describe_service_without_tasks(cluster, service))
                .await
        };
        let state = match read {
            Ok(state) => state,
            Err(error) => return read_failed("roll_back_service", error),
        };
        let made = state.task_definition_arn == task_definition_arn
            || state.deployments.iter().any(|d| {
                d.task_definition_arn == task_definition_arn
                    && !baseline_deployments.contains(&d.id)
            });
        // Only our own revision is rolled back: a service on a third one was moved by someone
        // else (the machine then ends the attempt, saying so, without fighting them).
        let current = match self.task_definition(&state.task_definition_arn).await {
            Ok(current) => current,
            Err(error) => return read_failed("roll_back_service", error),
        };
        let ours = current
            .tags
            .get(ATTEMPT_TAG)
            .is_some_and(|tag| tag == attempt_id);
        if !made && ours {
            if let Some(refused) = self.fence().await {
                return Ok(refused);
            }
            let (cluster, service) = (&self.runner.cluster, &self.runner.service);
            self.ports
                .ecs
                .update_service(cluster, service, task_definition_arn)
                .await?;
        }
        Ok(Event::RollbackStarted)
    }

    /// Reads the desired and observed state now (for `plan`).
    ///
    /// # Errors
    /// When AWS cannot be read after the retries.
    pub async fn observe_now(&mut self) -> Result<Observation, DriverError> {
        self.observe().await
    }

    /// Now, by the driver's clock.
    #[must_use]
    pub fn now(&self) -> Millis {
        self.ports.clock.now()
    }
}

/// Why the search for an attempt's registration gave no answer.
enum Unsearchable {
    /// A read failed.
    Read(PortError),
    /// Too many revisions to look at: the registration is neither found nor ruled out.
    Exhausted(PortError),
}

/// A read that a command needs before it acts failed: reported as a read failure (never as the
/// command being refused, however the read failed: an answer the SDK cannot read is classified
/// permanent), and retried next pass within the state's deadline. A resource not found, or a
/// conflict, is an answer, not a read failure.
fn read_failed(command: &'static str, error: PortError) -> Result<Event, PortError> {
    match error.kind {
        ErrorKind::Transient | ErrorKind::Throttled | ErrorKind::Permanent => {
            Ok(Event::CommandFailed {
                command,
                class: FailureClass::Unreadable,
                message: error.to_string(),
            })
        }
        ErrorKind::NotFound | ErrorKind::Conflict => Err(error),
    }
}

/// A runner's stack refresh period: `secs` plus up to half of it, spread by the runner's name
/// so that a fleet started at once does not re-read every stack in the same pass.
fn stack_refresh(secs: u64, runner: &str) -> Duration {
    let spread = fnv1a(FNV_OFFSET, runner.as_bytes()) % 1000;
    Duration::from_millis(
        secs.saturating_mul(1000)
            .saturating_add(secs.saturating_mul(spread) / 2),
    )
}

/// The lease epoch held in a state, if the state holds the lock.
fn held_epoch(state: &State) -> Option<u64> {
    match state {
        State::Locked { epoch, .. } => Some(*epoch),
        State::Done { .. } | State::RolledBack { .. } => None,
        other => machine::run_of(other).map(|run| run.epoch),
    }
}

fn fencing_epoch(command: &Command) -> Option<u64> {
    match command {
        Command::RegisterTaskDefinition { epoch, .. }
        | Command::UpdateService { epoch, .. }
        | Command::RollBackService { epoch, .. }
        | Command::PrepareChangeSet { epoch, .. }
        | Command::AwaitChangeSet { epoch, .. }
        | Command::DeleteChangeSet { epoch, .. } => Some(*epoch),
        Command::Observe | Command::AcquireLock { .. } | Command::ReleaseLock { .. } => None,
    }
}
