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

mod effects;
mod follow;
mod intents;
mod observe;
mod persist;
mod trace;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use crate::channels::Board;
use crate::metrics::Metrics;
use crate::reader::{GateRead, RunnerSnapshot};
use crate::retry::RetryPolicy;
use crate::telemetry;
use runner_updater_config::{Config, RunnerConfig};
use runner_updater_core::domain::code::Code;
use runner_updater_core::domain::desired::{
    is_desired_name, settle_fingerprint, DesiredError, DesiredSource, RunnerPolicy,
    RELEASE_PARAMETER,
};
use runner_updater_core::domain::eligibility::{Rule, Verdict};
use runner_updater_core::domain::infra::{self, Creation, StackPlan, StackProgress};
use runner_updater_core::domain::observed::{observe, ObserveError, ATTEMPT_TAG, VERSION_TAG};
use runner_updater_core::domain::resume::consistency_wait;
use runner_updater_core::domain::revision_search::{self, RevisionSearch, SearchStep};
use runner_updater_core::domain::task_definition::TaskDefinition;
use runner_updater_core::domain::{fnv1a, Millis, FNV_OFFSET};
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::machine::{
    self, gate_needs_tasks, phase_of, Command, Ctx, Event, FailureClass, Input, Machine, Note,
    Observation, RunnerMachine, Settings, State, TransitionEntry,
};
use runner_updater_core::record::Record;
use runner_updater_ports::AwsOp;
use runner_updater_ports::{
    ChangeSetRequest, Clock, CloudFormation, Ecs, ErrorKind, LeaseFold, LeaseWritten, Lock,
    LockOutcome, ParameterStore, PortError, StateStore, StoreError, CLOCK_SKEW_TOLERANCE,
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
/// How old a fenced record write may be and still stand for a mutation's fencing check.
const FENCE_PROOF_MAX: Duration = Duration::from_secs(1);

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
#[derive(Debug, Clone, Copy, Default)]
pub struct CrashPlan {
    /// Crash right after the n-th save (1-based), before executing what it asked for.
    pub after_save: Option<u32>,
    /// Crash right after the n-th command (1-based), before its result is handled.
    pub after_command: Option<u32>,
    /// Crash right after the first command this matches (a pattern over [`Command`], checked
    /// by the compiler), before its result is handled.
    pub after_command_where: Option<fn(&Command) -> bool>,
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
pub struct RunnerDriver {
    runner: RunnerConfig,
    prefix: String,
    holder: String,
    settings: Settings,
    policy: RunnerPolicy,
    lease_ttl: Duration,
    /// A lease held here is renewed once less than this is left of it (the lease's floor,
    /// `Config::lease_floor_secs`: the longest a renewal may take to come, so the next pass's
    /// renewal is still in time); until then a pass makes no lease call.
    renew_within: Duration,
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
    /// See `consistency_window_secs`.
    consistency_window: Duration,
    /// When this driver last made (or may have made) a non-idempotent ECS call, and which
    /// command made it.
    last_call: Option<(Millis, &'static str)>,
    /// The epoch whose lease the last record write released (left the attempt, on a store
    /// that folds the lease into its writes): its `ReleaseLock` makes no call.
    released_by_save: Option<u64>,
    /// The last load found the record unreadable.
    unreadable: bool,
    /// The channels' board, when the controller serves channel releases.
    board: Option<Arc<Board>>,
    /// How the runner stood with its channel's release at its last observation.
    following: Following,
    /// The channel's generation this driver last saw (see `channels::Board`).
    channel_generation: u64,
    /// When the last pass ended: a fleet read older than that is not used.
    last_tick_end: Option<Millis>,
    /// The stacks as last read at rest (see `stack_refresh_secs`).
    stack_cache: Option<Box<StackCache>>,
    /// This runner's stack refresh period (`stack_refresh_secs`, spread per runner).
    stack_refresh: Duration,
    /// What the current pass has seen so far (reset when a pass starts).
    this_pass: PassState,
    /// When the lease this driver last took or renewed ends, on this process's monotonic
    /// clock (measured from before the call was sent). Checked right before every fenced
    /// write: a process frozen past its lease (a long pause, SIGSTOP) and thawed between its
    /// fencing check and its write does not write (on the SSM store this only narrows the
    /// window, see README "The lock").
    lease_until: Option<Duration>,
    /// The lease epoch of the attempt this driver last wrote a record of (none at rest, or
    /// after a load): a lease found lost while it is the machine's was this driver's own.
    wrote_epoch: Option<u64>,
    /// The fencing token a conditional record write just proved held (a write the state table
    /// made only because this controller's lease of that epoch was live), and when it was
    /// sent, on the monotonic clock: the fence of a mutation right after it (see `fence`).
    fence_proof: Option<(u64, Duration)>,
    /// The command being executed and its fencing token, if it has one (see `fence`).
    fencing: Option<(&'static str, u64)>,
    /// See `settle_secs`.
    settle: Duration,
    /// The fingerprint of the `desired/*` values last read, and when (by this controller's
    /// clock) they were first read as they are.
    settle_seen: Option<(u64, Millis)>,
    /// The runner's folder (`desired/*`, `release`) as last read, relative names: what the
    /// health gate's passes observe instead of reading it again (the gate does not act on
    /// the desired state; the pass after the attempt reads it afresh).
    desired_read: Option<BTreeMap<String, String>>,
    /// The stacks as last read, likewise kept through an attempt for the health gate (which
    /// does not judge them: they were updated, and checked, before the service).
    stacks_read: Option<Vec<runner_updater_core::domain::observed::StackState>>,
    /// The service as a gate read of the scheduler's saw it (when, what), for the next pass
    /// of a runner in the health gate (see `offer_gate_read`).
    gate_read: Option<Box<(Millis, GateRead)>>,
    /// `DescribeServiceDeployments` refused for good (not offered, access denied): the gate
    /// reads the service instead, without asking again.
    deployments_unreadable: bool,
    /// The health gate's deployment and its running tasks at the gate's last read: a drop is a
    /// task that stopped after it ran (see `gate_needs_tasks`).
    gate_running: Option<(String, u32)>,
    /// When the `desired/*` values of the last observation settle (`None`: nothing to wait
    /// for).
    settles_at: Option<Millis>,
    /// When the runner's update window opens next, when its last observation found it closed.
    window_opens_at: Option<Millis>,
}

/// What one pass has seen so far: reset when a pass starts, read by its later steps (never
/// carried from one pass to the next).
#[derive(Debug, Default)]
struct PassState {
    /// Whether an attempt was under way (under the lock) during the pass.
    attempt_active: bool,
    /// Whether the machine took a transition in the pass (its state's command is then a
    /// first call, not one that may already have been made).
    entered: bool,
    /// The note and verdict of the last event handled at rest in the pass.
    rest_outcome: Option<Box<(Option<Note>, Option<Verdict>)>>,
    /// The pass's observation used a fleet read or kept stacks.
    observed_cached: bool,
    /// The pass's observation, when it was made of the runner's own fresh reads and the store
    /// fences its writes: what the lock's re-check (`Locked`'s `Observe`) is given in the same
    /// pass instead of reading everything again (see `pass`).
    fresh_observation: Option<Box<Observation>>,
}

/// How the runner stood with its channel's release at its last observation.
#[derive(Debug, Clone, Copy, Default)]
struct Following {
    /// Pinned, passed over, or following.
    standing: Standing,
    /// Admitted to the release (its desired state).
    admitted: bool,
    /// Admitted, but it refuses a value of the release.
    refused: bool,
    /// Admitted to the release, and already running it (its desired image).
    running_it: bool,
    /// Its update window is closed: when it opens (`Millis(u64::MAX)`: not in the next days).
    outside_window: Option<Millis>,
}

/// Whether a runner follows its channel's release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Standing {
    /// It does.
    #[default]
    Follows,
    /// Its own `release` or `desired/*` pin it.
    Pinned,
    /// `desired/auto-update` is `false`: passed over.
    Excused,
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
            renew_within: Duration::from_secs(config.lease_floor_secs()),
            fence_proof: None,
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
            last_call: None,
            released_by_save: None,
            consistency_window: Duration::from_secs(config.consistency_window_secs),
            unreadable: false,
            board: None,
            following: Following::default(),
            channel_generation: 0,
            last_tick_end: None,
            stack_cache: None,
            stack_refresh: stack_refresh(config.stack_refresh_secs, &runner.name),
            this_pass: PassState::default(),
            lease_until: None,
            fencing: None,
            settle: Duration::from_secs(config.settle_secs),
            settle_seen: None,
            desired_read: None,
            stacks_read: None,
            gate_read: None,
            deployments_unreadable: false,
            gate_running: None,
            wrote_epoch: None,
            settles_at: None,
            window_opens_at: None,
        }
    }

    /// Plans a crash (tests, demo).
    #[must_use]
    pub fn with_crash(mut self, crash: CrashPlan) -> Self {
        self.crash = crash;
        self
    }

    /// Follows the runner's channel on `board` (see [`crate::channels`]).
    pub fn follow_channels(&mut self, board: Arc<Board>) {
        self.board = Some(board);
    }

    /// Reports into these metrics.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        // Its counters start at zero, so that a first rollback or lost lease is an increase.
        metrics.runner_known(&self.runner.name);
        self.metrics = Some(metrics);
        self
    }

    /// Whether the runner's record has been read: loaded (the machine is in memory), or found
    /// unreadable (the runner is left alone until ops mend it; that is not "still loading").
    #[must_use]
    pub fn loaded(&self) -> bool {
        self.machine.is_some() || self.unreadable
    }

    /// The state store this driver writes to (the scheduler reads the records ahead on it).
    pub(crate) fn store(&self) -> Arc<dyn StateStore> {
        self.ports.store.clone()
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

    /// Whether the runner is in the health gate (its rollout watched, soaking, or rolling
    /// back): its passes read the service alone, which a gate read serves.
    #[must_use]
    pub fn in_gate(&self) -> bool {
        matches!(
            self.phase(),
            Phase::AwaitingRollout | Phase::Soaking | Phase::RollingBack
        )
    }

    /// Offers the service (or its rollout's service deployment) as the scheduler's gate read
    /// saw it at `taken_at`, for the next pass (used when the runner is still in the gate then
    /// and the read is not older than its last pass; otherwise its own read is made).
    pub fn offer_gate_read(&mut self, taken_at: Millis, read: GateRead) {
        self.gate_read = Some(Box::new((taken_at, read)));
    }

    /// The service deployment the health gate reads instead of the service (a rollout in
    /// progress whose service deployment ECS reported), unless the API was refused for good.
    #[must_use]
    pub fn gate_service_deployment(&self) -> Option<String> {
        let machine = self.machine.as_ref()?;
        machine::gate_service_deployment(machine.state())
            .filter(|_| !self.deployments_unreadable)
            .map(str::to_owned)
    }

    /// The last saved record.
    #[must_use]
    pub fn record(&self) -> Option<&Record> {
        self.last_saved.as_ref()
    }

    /// Counts a lease this controller was updating the runner under, found taken or lapsed:
    /// only when this driver wrote a record of the attempt under `epoch` (not a standby
    /// following another's attempt, nor a lease just taken and not yet used).
    fn lease_lost(&self, epoch: Option<u64>) {
        if let (Some(epoch), Some(metrics)) = (epoch, &self.metrics) {
            if self.wrote_epoch == Some(epoch) {
                metrics.lease_lost(&self.runner.name);
            }
        }
    }

    /// The lease epoch the machine's attempt holds, if any.
    fn held(&self) -> Option<u64> {
        self.machine.as_ref().and_then(|m| held_epoch(m.state()))
    }

    /// Whether the desired state last observed is the runner's channel's release (an attempt
    /// for it is the release's, admitted by its coordinator).
    #[must_use]
    pub fn follows_channel_release(&self) -> bool {
        self.machine
            .as_ref()
            .and_then(|machine| machine.inner().memory.seen.as_ref())
            .is_some_and(|seen| seen.channel)
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
    /// `desired/*` parameters it is waiting for settle (its last pass found it `settling`), or
    /// the moment its update window opens (its last pass found it outside the window).
    #[must_use]
    pub fn wake_at(&self) -> Option<Millis> {
        let machine = self.machine.as_ref()?;
        if !phase_of(machine.state()).is_resting() {
            return None;
        }
        let code = machine.inner().memory.note.as_ref().map(|note| &note.code);
        let at = match code {
            Some(Code::Settling) => self.settles_at,
            Some(Code::Ineligible(Rule::UpdateWindow)) => self.window_opens_at,
            _ => None,
        };
        at.filter(|at| *at > self.ports.clock.now())
    }

    /// Whether the runner at rest holds back a change that is still to come without ops'
    /// doing anything (a settle, a closed window, a busy lease, someone else's deployment or
    /// stack update, a stack or service to appear or recover, AWS unreadable, a retry pending):
    /// what an event announced stays announced. Not when nothing is left to do (the desired
    /// version runs), nor when ops must act first (a quarantine, auto-update off, another
    /// channel, a bad value): their next write is an event again.
    #[must_use]
    pub fn change_still_to_come(&self) -> bool {
        let Some(machine) = self.machine.as_ref() else {
            return false;
        };
        let Some(note) = machine.inner().memory.note.as_ref() else {
            return false;
        };
        let done_or_ops = matches!(
            note.code,
            Code::Ineligible(
                Rule::NewerVersion
                    | Rule::DifferentImage
                    | Rule::NotFailed
                    | Rule::AutoUpdate
                    | Rule::Channel
            ) | Code::MissingVersion
                | Code::ValueTooLong
                | Code::InvalidVersion
                | Code::InvalidImage
                | Code::ImageNotAllowed
                | Code::UnknownChannel
                | Code::PreReleaseNotAllowed
        );
        phase_of(machine.state()).is_resting() && !done_or_ops
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
        self.reread_after_channel_takeover();
        let result = self.tick_inner(&mut report, view).await;
        self.last_tick_end = Some(self.ports.clock.now());
        self.report_channel_progress();
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
            metrics.runner_record(
                &self.runner.name,
                self.last_saved
                    .as_ref()
                    .and_then(|record| Some((record.phase().ok()?, Millis(record.since)))),
                self.unreadable,
            );
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
        self.this_pass = PassState::default();
        let result = self.pass(report, view).await;
        // What the pass kept for itself goes with it; the desired folder is kept only through
        // an attempt (the health gate's reads), not at rest.
        self.this_pass.fresh_observation = None;
        if self.phase().is_resting() {
            self.desired_read = None;
            self.stacks_read = None;
        }
        if resting && !self.this_pass.attempt_active && self.phase().is_resting() {
            self.trace_check();
        }
        result
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
            self.this_pass.observed_cached = false;
            let mut observation = self.observe_with(view).await?;
            let mut fresh = !self.this_pass.observed_cached;
            if self.this_pass.observed_cached
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
                fresh = true;
            }
            // On a store whose writes are conditional, the lock's re-check may use these very
            // reads, made a moment before the lease was taken: an attempt another controller
            // ran in between wrote the record, and the write of this one's first state, made
            // on the version read before, is then refused (nothing is acted on). On a store
            // without conditional writes the lock's re-check reads everything again.
            self.this_pass.fresh_observation =
                (fresh && self.phase().is_resting() && self.ports.store.fences_writes())
                    .then(|| Box::new(observation.clone()));
            queue = self
                .handle(Event::Observed(Box::new(observation)), report)
                .await?;
        }
        let mut executed = 0;
        // A refused write drops the machine (another controller has the runner): the commands
        // still queued are not this controller's to run any more.
        while !queue.is_empty() && self.machine.is_some() {
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
                    FailureClass::Fenced => {
                        self.lease_lost(self.held());
                        "fenced"
                    }
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
                || self
                    .crash
                    .after_command_where
                    .is_some_and(|matches| matches(&command))
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

    /// Handles one event, persists if anything changed, and returns the commands to execute:
    /// the write-ahead step (the machine's step and its table check, the trace, then the save
    /// and its guards, in this order).
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
        let phase = phase_of(machine.state());
        if !(phase.is_resting() || phase == Phase::Checking) {
            self.this_pass.attempt_active = true;
        }
        if phase.is_resting() {
            // What a pass at rest concluded, for its check span (kept here: a refused write
            // below drops the machine).
            let memory = &machine.inner().memory;
            self.this_pass.rest_outcome =
                Some(Box::new((memory.note.clone(), memory.verdict.clone())));
        }
        self.trace_step(history_before, last_before.as_ref(), report);
        if phase == Phase::Checking {
            // The lease comes first: nothing is written before it is ours. Taking it changes
            // nothing on the runner; its result leads to Locked (saved) or back to rest.
            return Ok(ctx.commands);
        }
        if phase == Phase::Locked
            && self.this_pass.fresh_observation.is_some()
            && matches!(ctx.commands.as_slice(), [Command::Observe])
        {
            // Locked's only command is its re-check, answered from this pass's own reads (no
            // call): the state it leads to is written before anything is acted on, Locked's
            // transition with it. A crash in between leaves the lease taken and the record at
            // rest: the lease runs out, nothing was changed.
            return Ok(ctx.commands);
        }
        if self.save_step(&ctx.commands, report).await? {
            Ok(ctx.commands)
        } else {
            Ok(Vec::new())
        }
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
        if !checked {
            return None;
        }
        // The call may have been made later than the state was entered: by this process
        // before a failed save or a reload (remembered in `last_call`), or by a crashed
        // process before its lease expired (then the lease's expiry, longer than the window,
        // covers it).
        let since = self.machine.as_ref()?.inner().memory.since;
        consistency_wait(
            self.this_pass.entered,
            since,
            self.last_call.map(|(at, _)| at),
            now,
            self.consistency_window,
        )
    }

    /// Now, by the driver's clock.
    #[must_use]
    pub fn now(&self) -> Millis {
        self.ports.clock.now()
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
