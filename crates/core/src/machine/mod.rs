//! The update state machine: **synchronous, sans-IO**, built on `statig`.
//!
//! The machine only decides. Every input carries the time (`Input::now`); handlers and entry
//! actions write [`Command`]s into the caller-owned [`Ctx`] outbox and never perform IO. The
//! driver (`crate::driver`) persists the new state *before* it executes those commands, and
//! feeds their results back as [`Event`]s.
//!
//! # Expected flow
//! `Idle → Checking → Locked → Deploying{RegisteringTaskDefinition → UpdatingService} →
//! HealthGate{AwaitingRollout → Soaking} → Done`, or `HealthGate{RollingBack} → RolledBack`.
//!
//! # Guarantees
//! - Each state that needs an effect issues its command from its **entry action**. statig
//!   re-runs entry actions when a machine is restored (`init_with_context`), so a restored
//!   machine re-issues exactly the command of the state it stopped in; every command is
//!   idempotent per attempt (see `driver`), so nothing is repeated.
//! - Transitions outside [`phase::TRANSITIONS`] are recorded in [`Ctx::violations`].
//! - A failed version is quarantined in the same transition that leaves the happy path, so a
//!   crash cannot lose the mark.
//!
//! # Caveats
//! statig's `before_transition` hook has its arguments swapped in 0.4.1 (issue #76); only
//! `after_transition` is used.

pub mod phase;

use std::collections::VecDeque;
use std::time::Duration;

use statig::prelude::*;

pub use crate::domain::code::Code;
use crate::domain::desired::{DesiredError, DesiredSource, DesiredState};
use crate::domain::eligibility::{
    attempt_kind, evaluate, AttemptKind, EligibilityInput, FailedMark, Rule, Verdict,
};
use crate::domain::image::ImageRef;
use crate::domain::infra::{self, ApprovalPolicy, Review, StackPlan};
use crate::domain::observed::{
    Deployment, DeploymentStatus, Health, ObserveError, Observed, RolloutState, ServiceDeployment,
    ServiceDeploymentStatus, ServiceState,
};
use crate::domain::retry::{RetryFrom, RetryIntent, RETRIES_KEPT};
use crate::domain::version::Version;
use crate::domain::Millis;
use phase::Phase;

/// Settings that shape decisions (from the configuration; not persisted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The runner's release channel (shared by the runners of a channel: one string for the
    /// fleet).
    pub channel: std::sync::Arc<str>,
    /// Failed or unhealthy tasks of the new revision that trigger a rollback (fail fast).
    pub fail_fast_tasks: u32,
    /// How long the rollout may take to become healthy.
    pub rollout_timeout: Duration,
    /// How long the new revision must stay healthy.
    pub soak: Duration,
    /// How long a rollback may take to be confirmed.
    pub rollback_timeout: Duration,
    /// Transitions kept in the record.
    pub history_max: usize,
    /// When change sets run without a human.
    pub approval: ApprovalPolicy,
    /// How long CloudFormation may take to compute a change set.
    pub change_set_timeout: Duration,
    /// How long a stack update may take before on-call is told it is slow.
    pub stack_update_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            channel: "stable".into(),
            fail_fast_tasks: 2,
            rollout_timeout: Duration::from_mins(30),
            soak: Duration::from_mins(5),
            rollback_timeout: Duration::from_mins(30),
            history_max: 20,
            approval: ApprovalPolicy::Safe,
            change_set_timeout: Duration::from_mins(15),
            stack_update_timeout: Duration::from_hours(1),
        }
    }
}

/// One update attempt: created when the runner becomes eligible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Unique id, carried in tags and idempotency tokens.
    pub id: String,
    /// Version being deployed.
    pub target_version: Version,
    /// Image being deployed.
    pub target_image: ImageRef,
    /// Version running when the attempt started.
    pub from_version: Option<Version>,
    /// Image running when the attempt started.
    pub from_image: ImageRef,
    /// When the attempt started.
    pub started_at: Millis,
    /// What the attempt does.
    pub kind: AttemptKind,
    /// Fingerprint of the desired infrastructure the attempt started with.
    pub infra: Option<String>,
    /// The infrastructure version the attempt brings the stacks to.
    pub infra_version: Option<String>,
}

/// One stack's change set within an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSetStep {
    /// The stack.
    pub stack: String,
    /// The change set's name (deterministic per attempt and stack).
    pub name: String,
    /// Its id, once CloudFormation gave it.
    pub id: Option<String>,
    /// Stacks finished earlier in this attempt, in order.
    pub done: Vec<String>,
    /// The review, once the change set is computed.
    pub review: Option<Review>,
    /// Deadline of the current wait.
    pub deadline: Millis,
    /// CloudFormation reported the stack updated by this change set.
    pub updated: bool,
}

/// What the service looked like under the lock, before any change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Baseline {
    /// The task definition to roll back to.
    pub task_definition_arn: String,
    /// Deployment ids present before our update (a new one means our update happened).
    pub deployment_ids: Vec<String>,
}

/// An attempt holding the lock, with its baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The attempt.
    pub attempt: Attempt,
    /// Fencing token of the lock.
    pub epoch: u64,
    /// The baseline.
    pub baseline: Baseline,
}

/// A rollout under observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    /// The run.
    pub run: Run,
    /// The task definition this attempt registered.
    pub new_task_definition_arn: String,
    /// The ECS deployment this attempt created.
    pub deployment_id: String,
    /// Its service deployment's ARN, where ECS reported one: the health gate then reads the
    /// rollout's progress from `DescribeServiceDeployments`' structured fields.
    pub service_deployment: Option<String>,
    /// When the rollout must be healthy by.
    pub deadline: Millis,
}

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Its code.
    pub code: Code,
    /// Words for on-call.
    pub reason: String,
}

impl Failure {
    fn new(code: Code, reason: impl Into<String>) -> Self {
        Failure {
            code,
            reason: reason.into(),
        }
    }
}

/// What the service runs once an attempt ended in `RolledBack`, as far as the controller
/// knows: what `status` tells on-call instead of leaving them to guess from the failed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceAfter {
    /// The attempt never changed the service (refused before the update, or an infrastructure
    /// failure): it runs the baseline as before.
    Untouched,
    /// The rollback was confirmed: the baseline's deployment is PRIMARY and COMPLETED with
    /// every task running.
    Restored,
    /// The rollback was refused, or not confirmed before its deadline: what runs is unknown.
    Unconfirmed,
    /// After the rollback, someone else pointed the service at this task definition.
    Foreign(String),
    /// Not recorded (a record written before this was kept).
    Unknown,
}

/// An effect the driver performs. Every command is idempotent per attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Read desired and observed state now and feed [`Event::Observed`].
    Observe,
    /// Take the runner's lock.
    AcquireLock {
        /// The attempt that wants it.
        attempt_id: String,
    },
    /// Give the lock back (no-op if it is not ours any more).
    ReleaseLock {
        /// Fencing token held.
        epoch: u64,
    },
    /// Register the clone of the baseline with the target image, tagged with the attempt id
    /// (or find the one registered before a crash).
    RegisterTaskDefinition {
        /// Attempt id (tag).
        attempt_id: String,
        /// Fencing token.
        epoch: u64,
        /// The task definition to clone.
        base_task_definition_arn: String,
        /// Target image.
        image: String,
        /// Target version (tag).
        version: String,
    },
    /// Point the service at the new task definition, unless a deployment not in the baseline
    /// shows that this was already done.
    UpdateService {
        /// Attempt id.
        attempt_id: String,
        /// Fencing token.
        epoch: u64,
        /// New task definition.
        task_definition_arn: String,
        /// Deployment ids before the update.
        baseline_deployment_ids: Vec<String>,
    },
    /// Find the attempt's change set for a stack, or create it; report its creation status and,
    /// once computed, its review.
    PrepareChangeSet {
        /// Attempt id.
        attempt_id: String,
        /// Fencing token.
        epoch: u64,
        /// Change set name.
        name: String,
        /// What to ask for.
        plan: StackPlan,
    },
    /// Execute the change set unless it already was (same token), then report the stack's
    /// progress; on a rollback, read the events for the first failure.
    AwaitChangeSet {
        /// Attempt id.
        attempt_id: String,
        /// Fencing token.
        epoch: u64,
        /// Stack.
        stack: String,
        /// Change set name.
        name: String,
    },
    /// Delete a change set that will not run (absent is fine).
    DeleteChangeSet {
        /// Fencing token.
        epoch: u64,
        /// Stack.
        stack: String,
        /// Change set name.
        name: String,
    },
    /// Point the service back at the baseline task definition, unless it already is.
    RollBackService {
        /// Attempt id.
        attempt_id: String,
        /// Fencing token.
        epoch: u64,
        /// The baseline task definition.
        task_definition_arn: String,
        /// Deployments the service had before the attempt: a deployment of the baseline that
        /// is not among them is a rollback already made (ours before a crash, or ECS's).
        baseline_deployments: Vec<String>,
    },
}

impl Command {
    /// The command's stable name.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Command::Observe => "observe",
            Command::AcquireLock { .. } => "acquire_lock",
            Command::ReleaseLock { .. } => "release_lock",
            Command::RegisterTaskDefinition { .. } => "register_task_definition",
            Command::UpdateService { .. } => "update_service",
            Command::RollBackService { .. } => "roll_back_service",
            Command::PrepareChangeSet { .. } => "prepare_change_set",
            Command::AwaitChangeSet { .. } => "await_change_set",
            Command::DeleteChangeSet { .. } => "delete_change_set",
        }
    }
}

/// Desired and observed state, as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// Parsed desired state, or why it cannot be used.
    pub desired: Result<DesiredState, DesiredError>,
    /// Observed state, or why the runner cannot be acted on.
    pub observed: Result<Observed, ObserveError>,
    /// When the separate `desired/*` parameters will have stayed unchanged for `settle_secs`
    /// (by the controller's clock, from when it first read them as they are): before then, a
    /// pass at rest does not start an attempt on them (`settling`). `None` when nothing needs
    /// to settle (the release document is acted on at once). Attempts in flight ignore it.
    pub settles_at: Option<Millis>,
    /// Retry intents for the runner (its own, and its channel's acknowledged ones): acted on
    /// at rest, each once.
    pub retries: Vec<RetryIntent>,
}

impl Observation {
    /// Whether the desired state is still settling at `now`.
    #[must_use]
    pub fn settling(&self, now: Millis) -> bool {
        self.settles_at.is_some_and(|at| at > now)
    }
}

/// How a command failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Retrying later may succeed (throttling, 5xx, timeouts); retries are exhausted for now.
    Transient,
    /// Retrying will not help (validation, access denied, not found).
    Permanent,
    /// Our fencing token is stale: another controller holds the lock.
    Fenced,
    /// A read the command needs before it acts failed (transient or not: an answer the SDK
    /// cannot read, access denied); nothing was changed. Retried next pass, within the state's
    /// deadline: a read failure is never reported as a refusal.
    Unreadable,
    /// The world changed under the attempt, not by our hand (a foreign writer).
    Conflict,
}

/// The machine's events: observations and command results.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A fresh observation.
    Observed(Box<Observation>),
    /// The lock is ours with this fencing token.
    LockAcquired {
        /// Fencing token.
        epoch: u64,
    },
    /// Someone else holds the lock.
    LockBusy {
        /// Who.
        holder: String,
    },
    /// The lock was released (or was not ours).
    LockReleased,
    /// After a restart, the expired lease of the persisted attempt was taken again with a new
    /// fencing token: the attempt continues under it.
    LeaseAdopted {
        /// The new fencing token.
        epoch: u64,
    },
    /// The new task definition exists.
    TaskDefinitionRegistered {
        /// Its ARN.
        arn: String,
    },
    /// The service points at the new task definition.
    ServiceUpdated {
        /// The deployment this created.
        deployment_id: String,
        /// Its service deployment's ARN, when ECS reported one.
        service_deployment: Option<String>,
    },
    /// The rollback update was issued (or ECS had already rolled back).
    RollbackStarted,
    /// The change set is still being computed.
    ChangeSetPending,
    /// The change set is computed.
    ChangeSetReady {
        /// Its id.
        id: String,
        /// Its review.
        review: Review,
    },
    /// CloudFormation found nothing to change.
    ChangeSetEmpty,
    /// CloudFormation refused the change set.
    ChangeSetFailed {
        /// Its status reason.
        reason: String,
    },
    /// The stack is still updating (or rolling back).
    StackUpdatePending {
        /// Its status.
        status: infra::StackStatus,
    },
    /// The stack update completed.
    StackUpdated,
    /// A change set was deleted (or was already gone).
    ChangeSetDeleted,
    /// The stack update failed.
    StackUpdateFailed {
        /// `UPDATE_ROLLBACK_COMPLETE` or a status that needs a human.
        status: infra::StackStatus,
        /// The first failed resource, when the events name one.
        resource: Option<String>,
        /// Its reason.
        reason: String,
    },
    /// A command failed.
    CommandFailed {
        /// Which command.
        command: &'static str,
        /// How.
        class: FailureClass,
        /// What the port said.
        message: String,
    },
}

/// An event with the time it is handled at.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// Now.
    pub now: Millis,
    /// The event.
    pub event: Event,
}

/// The caller-owned outbox and diagnostics of one `handle`.
#[derive(Debug, Default)]
pub struct Ctx {
    /// Now (set by the caller before each `handle`; used for transition timestamps).
    pub now: Millis,
    /// Commands to execute after the new state is persisted.
    pub commands: Vec<Command>,
    /// Transitions taken that the table does not allow (bugs).
    pub violations: Vec<String>,
}

/// One recorded transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionEntry {
    /// From.
    pub from: Phase,
    /// To.
    pub to: Phase,
    /// When.
    pub at: Millis,
    /// The attempt, when one is in flight.
    pub attempt_id: Option<String>,
    /// Why, when there is something to say.
    pub note: Option<String>,
}

/// The latest reason worth showing on-call (a bad value, an ineligible rule, an abort).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Its code.
    pub code: Code,
    /// Words for on-call.
    pub message: String,
    /// Since when.
    pub at: Millis,
}

/// What a pass at rest saw of the desired state that on-call must see in `status`: where it
/// came from, and a desired image that is not the running one (whatever the rules decide, a
/// divergence is never silent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DesiredSeen {
    /// The desired state came from the release document (`<prefix>/<runner>/release`).
    pub release: bool,
    /// It came from the runner's channel's release.
    pub channel: bool,
    /// The `desired/*` parameters that document made ignored.
    pub ignored: Vec<String>,
    /// The desired image and the running one, when they differ.
    pub image: Option<(String, String)>,
}

impl DesiredSeen {
    /// What there is to say about `desired` against `observed`; `None` when nothing (the
    /// `desired/*` parameters, and the desired image running).
    #[must_use]
    pub fn of(desired: &DesiredState, observed: &Observed) -> Option<DesiredSeen> {
        let seen = DesiredSeen {
            release: desired.source == DesiredSource::Release,
            channel: desired.source == DesiredSource::Channel,
            ignored: desired.ignored.clone(),
            image: (desired.image != observed.running_image).then(|| {
                (
                    desired.image.to_string(),
                    observed.running_image.to_string(),
                )
            }),
        };
        (seen != DesiredSeen::default()).then_some(seen)
    }
}

/// The machine's persisted memory besides the current state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Memory {
    /// Quarantined versions.
    pub failed: Vec<FailedMark>,
    /// Last transitions, oldest first.
    pub history: VecDeque<TransitionEntry>,
    /// Latest reason.
    pub note: Option<Note>,
    /// Latest eligibility verdict.
    pub verdict: Option<Verdict>,
    /// Attempts started so far (part of attempt ids).
    pub attempts_started: u64,
    /// When the current state was entered.
    pub since: Millis,
    /// When the last attempt reached Done.
    pub last_success: Option<Millis>,
    /// W3C traceparent of the current attempt (set by the tracing layer; kept across saves).
    pub traceparent: Option<String>,
    /// Fingerprint of the desired infrastructure last applied. CloudFormation may find nothing
    /// to change in a parameters-only update (a parameter no resource reads) and leave the
    /// stack's value as it was: such a desired state is not applied again and again.
    pub infra_applied: Option<String>,
    /// What the last pass at rest saw of the desired state (see [`DesiredSeen`]).
    pub seen: Option<DesiredSeen>,
    /// Retry intents acknowledged (their ids, the last [`RETRIES_KEPT`]): each acted on once.
    pub retries: Vec<String>,
}

/// Quarantine marks kept at most (the oldest go first; only a return to a very old desired
/// version could be affected).
pub const FAILED_MARKS_MAX: usize = 10;

/// The statig shared storage: one runner's machine.
#[derive(Debug)]
pub struct RunnerMachine {
    /// The runner's name.
    pub runner: String,
    /// Decision settings.
    pub settings: Settings,
    /// Persisted memory.
    pub memory: Memory,
    /// A note for the next recorded transition.
    pending_note: Option<String>,
}

/// What the health gate sees.
#[derive(Debug, Clone, PartialEq, Eq)]
enum GateStatus {
    Healthy,
    Waiting(String),
    Failed(Failure),
    Foreign(String),
}

#[state_machine(
    initial = "State::idle()",
    state(derive(Debug, Clone, PartialEq, Eq)),
    superstate(derive(Debug)),
    event_identifier = "input",
    context_identifier = "ctx",
    after_transition = "Self::after_transition"
)]
impl RunnerMachine {
    /// At rest. Outgoing: `Checking` when eligible.
    #[state]
    fn idle(&mut self, input: &Input) -> Outcome<State> {
        self.consider(input)
    }

    /// Taking the lock. Outgoing: `Locked`, or `Idle` when the lock is busy.
    #[state(entry_action = "enter_checking")]
    fn checking(&mut self, attempt: &mut Attempt, ctx: &mut Ctx, input: &Input) -> Outcome<State> {
        match &input.event {
            Event::LockAcquired { epoch } => Transition(State::locked(attempt.clone(), *epoch)),
            Event::LockBusy { holder } => {
                self.note_now(
                    Code::LockBusy,
                    format!("the lock is held by {holder}"),
                    input.now,
                );
                Transition(State::idle())
            }
            Event::CommandFailed { message, .. } => {
                self.note_now(
                    Code::LockFailed,
                    format!("could not take the lock: {message}"),
                    input.now,
                );
                Transition(State::idle())
            }
            Event::Observed(_) => {
                Self::enter_checking(attempt, ctx);
                Handled
            }
            _ => Handled,
        }
    }

    #[action]
    fn enter_checking(attempt: &mut Attempt, ctx: &mut Ctx) {
        ctx.commands.push(Command::AcquireLock {
            attempt_id: attempt.id.clone(),
        });
    }

    /// Lock held: re-check on a fresh observation. Outgoing: `RegisteringTaskDefinition`, or
    /// `Idle` when no longer eligible.
    #[state(entry_action = "enter_locked")]
    fn locked(
        &mut self,
        attempt: &mut Attempt,
        epoch: &mut u64,
        input: &Input,
        ctx: &mut Ctx,
    ) -> Outcome<State> {
        if let Event::LeaseAdopted { epoch: adopted } = input.event {
            *epoch = adopted;
            return Handled;
        }
        let Event::Observed(observation) = &input.event else {
            return Handled;
        };
        let (desired, observed) = match (&observation.desired, &observation.observed) {
            (Ok(desired), Ok(observed)) => (desired, observed),
            (Err(error), _) => {
                return self.abort(
                    Some(*epoch),
                    error.code(),
                    error.to_string(),
                    ctx,
                    input.now,
                )
            }
            (_, Err(error)) => {
                return self.abort(
                    Some(*epoch),
                    error.code(),
                    error.to_string(),
                    ctx,
                    input.now,
                )
            }
        };
        let verdict = self.verdict(desired, observed, input.now);
        let due = self.infra_due(desired, observed);
        let kind = attempt_kind(&verdict, !due.is_empty());
        if kind.is_none() {
            let (code, message) = verdict.first_failure().map_or_else(
                || {
                    (
                        Code::NotEligible,
                        "no longer eligible under the lock".to_owned(),
                    )
                },
                |failure| {
                    (
                        Code::from(failure.rule),
                        format!("no longer eligible under the lock: {}", failure.reason),
                    )
                },
            );
            self.memory.verdict = Some(verdict);
            return self.abort(Some(*epoch), code, message, ctx, input.now);
        }
        if desired.version != attempt.target_version
            || desired.image != attempt.target_image
            || infra::fingerprint(desired) != attempt.infra
            || kind != Some(attempt.kind)
        {
            let message = format!(
                "the desired state changed to {} ({}) before the update began",
                desired.version, desired.image
            );
            return self.abort(Some(*epoch), Code::DesiredChanged, message, ctx, input.now);
        }
        if let Err((code, message)) = steady(observed) {
            return self.abort(Some(*epoch), code, message, ctx, input.now);
        }
        let run = Run {
            attempt: attempt.clone(),
            epoch: *epoch,
            baseline: baseline_of(observed),
        };
        match due.first() {
            Some(first) => {
                self.pending_note = Some(format!(
                    "infrastructure first: {}",
                    due.iter()
                        .map(StackPlan::describe)
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
                let step = self.step(&run.attempt.id, &first.stack, Vec::new(), input.now);
                Transition(State::creating_change_set(run, step))
            }
            None => Transition(State::registering_task_definition(run)),
        }
    }

    #[action]
    fn enter_locked(ctx: &mut Ctx) {
        ctx.commands.push(Command::Observe);
    }

    /// Groups the sub-states that change the runner.
    #[superstate]
    fn deploying(run: &mut Run, input: &Input) -> Outcome<State> {
        if let Event::LeaseAdopted { epoch } = input.event {
            run.epoch = epoch;
        }
        Handled
    }

    /// Outgoing: `UpdatingService`; `RolledBack` when refused, or not registered within
    /// `rollout_timeout` of entering the state (AWS unreadable: no quarantine); `Idle` on a
    /// foreign writer or a lost lock.
    #[state(
        superstate = "deploying",
        entry_action = "enter_registering_task_definition"
    )]
    fn registering_task_definition(
        &mut self,
        run: &mut Run,
        ctx: &mut Ctx,
        input: &Input,
    ) -> Outcome<State> {
        match &input.event {
            Event::TaskDefinitionRegistered { arn } => {
                Transition(State::updating_service(run.clone(), arn.clone()))
            }
            Event::CommandFailed { class, message, .. } => {
                self.command_failed(run, *class, Code::RegisterRefused, message, ctx, input.now)
            }
            Event::Observed(observation) => {
                if let Ok(observed) = &observation.observed {
                    let current = &observed.service.task_definition_arn;
                    if *current != run.baseline.task_definition_arn {
                        return self.foreign(run, current, ctx, input.now);
                    }
                }
                // AWS unreadable all along (reads failing, even for good): the attempt ends
                // once `rollout_timeout` has passed since the state was entered. A registration
                // does not touch the service, so nothing is restored and nothing is learnt
                // about the version: no quarantine, the next pass tries it again.
                let deadline = self.memory.since.after(self.settings.rollout_timeout);
                if input.now >= deadline {
                    let last = self.last_note_suffix();
                    let failure = Failure::new(
                        Code::RegisterUnconfirmed,
                        format!(
                            "the task definition could not be registered within {}s{last}; the service was not changed",
                            self.settings.rollout_timeout.as_secs()
                        ),
                    );
                    self.pending_note = Some(failure.reason.clone());
                    return Transition(State::rolled_back(
                        run.clone(),
                        failure,
                        ServiceAfter::Untouched,
                    ));
                }
                Self::enter_registering_task_definition(run, ctx);
                Handled
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_registering_task_definition(run: &mut Run, ctx: &mut Ctx) {
        ctx.commands.push(Command::RegisterTaskDefinition {
            attempt_id: run.attempt.id.clone(),
            epoch: run.epoch,
            base_task_definition_arn: run.baseline.task_definition_arn.clone(),
            image: run.attempt.target_image.to_string(),
            version: run.attempt.target_version.to_string(),
        });
    }

    /// Outgoing: `AwaitingRollout`; `RolledBack` when refused; `RollingBack` when the update
    /// is not confirmed within `rollout_timeout` of entering the state (AWS unreadable all
    /// along: whether the call was made is unknown, so the baseline is restored to be sure; the
    /// version is not quarantined, nothing was learnt about it); `Idle` on a foreign writer or
    /// a lost lock.
    #[state(superstate = "deploying", entry_action = "enter_updating_service")]
    fn updating_service(
        &mut self,
        run: &mut Run,
        new_td: &mut String,
        ctx: &mut Ctx,
        input: &Input,
    ) -> Outcome<State> {
        match &input.event {
            Event::ServiceUpdated {
                deployment_id,
                service_deployment,
            } => {
                let deadline = input.now.after(self.settings.rollout_timeout);
                let gate = Gate {
                    run: run.clone(),
                    new_task_definition_arn: new_td.clone(),
                    deployment_id: deployment_id.clone(),
                    service_deployment: service_deployment.clone(),
                    deadline,
                };
                Transition(State::awaiting_rollout(gate))
            }
            Event::CommandFailed { class, message, .. } => {
                self.command_failed(run, *class, Code::UpdateRefused, message, ctx, input.now)
            }
            Event::Observed(observation) => {
                if let Ok(observed) = &observation.observed {
                    let current = &observed.service.task_definition_arn;
                    if *current != run.baseline.task_definition_arn && current != new_td {
                        return self.foreign(run, current, ctx, input.now);
                    }
                }
                let deadline = self.memory.since.after(self.settings.rollout_timeout);
                if input.now >= deadline {
                    let last = self.last_note_suffix();
                    let failure = Failure::new(
                        Code::UpdateUnconfirmed,
                        format!(
                            "the service update was not confirmed within {}s{last}: restoring {} to be sure",
                            self.settings.rollout_timeout.as_secs(),
                            run.baseline.task_definition_arn
                        ),
                    );
                    self.pending_note = Some(failure.reason.clone());
                    let until = input.now.after(self.settings.rollback_timeout);
                    return Transition(State::rolling_back(run.clone(), failure, until, false));
                }
                if let Err(error) = &observation.observed {
                    self.note_now(
                        error.code(),
                        format!("cannot read the service: {error} (will retry until {deadline})"),
                        input.now,
                    );
                }
                Self::enter_updating_service(run, new_td, ctx);
                Handled
            }
            _ => Super,
        }
    }

    // statig hands state-local storage to actions by its declared type (`&mut String`).
    #[allow(clippy::ptr_arg)]
    #[action]
    fn enter_updating_service(run: &mut Run, new_td: &mut String, ctx: &mut Ctx) {
        ctx.commands.push(Command::UpdateService {
            attempt_id: run.attempt.id.clone(),
            epoch: run.epoch,
            task_definition_arn: new_td.clone(),
            baseline_deployment_ids: run.baseline.deployment_ids.clone(),
        });
    }

    /// Creating (or finding) the attempt's change set of one stack and waiting for it to be
    /// computed. Outgoing: `ExecutingChangeSet` when the policy lets it run;
    /// `AwaitingApproval` when it needs a human; the next stack, `RegisteringTaskDefinition` or
    /// `Done` when it has no changes; `RolledBack` when refused or late; `Idle` when ops changed
    /// their mind, a foreign writer, or a lost lock.
    #[state(superstate = "deploying", entry_action = "enter_creating_change_set")]
    #[allow(clippy::too_many_lines)] // a statig state handler: one flat match on the event
    fn creating_change_set(
        &mut self,
        run: &mut Run,
        step: &mut ChangeSetStep,
        ctx: &mut Ctx,
        input: &Input,
    ) -> Outcome<State> {
        let now = input.now;
        match &input.event {
            Event::Observed(observation) => {
                let (desired, observed) = match self.infra_check(run, step, observation, ctx, now) {
                    Ok(pair) => pair,
                    Err(outcome) => return outcome,
                };
                if step.done.contains(&step.stack) {
                    // No changes: delete it (again, after a crash) and go on.
                    ctx.commands.push(delete_command(run, step));
                    return self.advance(run, step.done.clone(), desired, observed, ctx, now);
                }
                let due = match infra::plan(desired, &observed.stacks, &step.done) {
                    Ok(due) => due,
                    Err(gap) => {
                        let failure = Failure::new(Code::InfraVersionNotReached, gap.reason());
                        return self.fail(run, failure, now);
                    }
                };
                let Some(plan) = due.into_iter().find(|p| p.stack == step.stack) else {
                    let busy = observed.stacks.iter().any(|s| {
                        s.name == step.stack
                            && s.status.progress() != infra::StackProgress::Complete
                    });
                    if busy {
                        return Handled; // someone else's update: wait for its outcome
                    }
                    // The stack no longer differs (someone applied it): nothing to do here.
                    ctx.commands.push(delete_command(run, step));
                    let mut done = step.done.clone();
                    done.push(step.stack.clone());
                    return self.advance(run, done, desired, observed, ctx, now);
                };
                if now >= step.deadline {
                    ctx.commands.push(delete_command(run, step));
                    let failure = Failure::new(
                        Code::ChangeSetTimeout,
                        format!(
                            "change set {} of stack {} was not computed within {}s",
                            step.name,
                            step.stack,
                            self.settings.change_set_timeout.as_secs()
                        ),
                    );
                    return self.fail(run, failure, now);
                }
                ctx.commands.push(Command::PrepareChangeSet {
                    attempt_id: run.attempt.id.clone(),
                    epoch: run.epoch,
                    name: step.name.clone(),
                    plan,
                });
                Handled
            }
            Event::ChangeSetPending => Handled,
            Event::ChangeSetReady { id, review } => {
                step.id = Some(id.clone());
                step.review = Some(review.clone());
                let summary = format!(
                    "change set {} of {}: {}",
                    step.name,
                    step.stack,
                    review.summary()
                );
                if infra::needs_approval(self.settings.approval, review) {
                    self.pending_note = Some(format!(
                        "{summary}; held for approval (policy {})",
                        self.settings.approval.name()
                    ));
                    self.note_now(
                        Code::ApprovalNeeded,
                        format!(
                            "{summary}; run `runner-updater approve {}` to execute it",
                            self.runner
                        ),
                        now,
                    );
                    Transition(State::awaiting_approval(run.clone(), step.clone()))
                } else {
                    self.pending_note = Some(format!("{summary}; executing"));
                    let mut step = step.clone();
                    step.deadline = now.after(self.settings.stack_update_timeout);
                    Transition(State::executing_change_set(run.clone(), step))
                }
            }
            Event::ChangeSetEmpty => {
                step.done.push(step.stack.clone());
                ctx.commands.push(delete_command(run, step));
                ctx.commands.push(Command::Observe);
                Handled
            }
            Event::ChangeSetFailed { reason } => {
                let failure = Failure::new(
                    Code::ChangeSetFailed,
                    format!(
                        "CloudFormation refused change set {} of stack {}: {reason}",
                        step.name, step.stack
                    ),
                );
                self.fail(run, failure, now)
            }
            Event::CommandFailed { class, message, .. } => {
                self.command_failed(run, *class, Code::ChangeSetRefused, message, ctx, now)
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_creating_change_set(ctx: &mut Ctx) {
        ctx.commands.push(Command::Observe);
    }

    /// A change set held by the approval policy. Outgoing: `ExecutingChangeSet` once ops run
    /// `runner-updater approve`; `Idle` when ops change the desired state or switch auto-update
    /// off (the change set is deleted), or the lock is lost.
    #[state(superstate = "deploying")]
    fn awaiting_approval(
        &mut self,
        run: &mut Run,
        step: &mut ChangeSetStep,
        ctx: &mut Ctx,
        input: &Input,
    ) -> Outcome<State> {
        let now = input.now;
        match &input.event {
            Event::Observed(observation) => {
                let (desired, _) = match self.infra_check(run, step, observation, ctx, now) {
                    Ok(pair) => pair,
                    Err(outcome) => return outcome,
                };
                if desired.approved_change_set.as_deref() == Some(step.name.as_str()) {
                    self.pending_note = Some(format!("change set {} approved", step.name));
                    self.memory.note = None;
                    let mut step = step.clone();
                    step.deadline = now.after(self.settings.stack_update_timeout);
                    return Transition(State::executing_change_set(run.clone(), step));
                }
                Handled
            }
            Event::CommandFailed { class, message, .. } => {
                self.command_failed(run, *class, Code::ChangeSetRefused, message, ctx, now)
            }
            _ => Super,
        }
    }

    /// Executing the change set and waiting for the stack. Nothing aborts a stack update half
    /// way: a change of the desired state is acted on after it. Outgoing: the next stack,
    /// `RegisteringTaskDefinition` or `Done` on `UPDATE_COMPLETE`; `RolledBack` when
    /// CloudFormation rolled the stack back (or could not); `Idle` on a foreign writer or a lost
    /// lock.
    #[state(superstate = "deploying", entry_action = "enter_executing_change_set")]
    fn executing_change_set(
        &mut self,
        run: &mut Run,
        step: &mut ChangeSetStep,
        ctx: &mut Ctx,
        input: &Input,
    ) -> Outcome<State> {
        let now = input.now;
        match &input.event {
            Event::Observed(observation) => {
                if step.updated {
                    // Updated: go on from a good observation (wait for one otherwise). What ops
                    // changed during the update is acted on now, before anything else starts.
                    let (Ok(desired), Ok(observed)) = (&observation.desired, &observation.observed)
                    else {
                        return Handled;
                    };
                    if let Some((code, why)) = self.halt_reason(run, desired) {
                        let message = format!(
                            "{why} while stack {} was updating: stopping after it; re-planning",
                            step.stack
                        );
                        return self.abort(Some(run.epoch), code, message, ctx, now);
                    }
                    let mut done = step.done.clone();
                    done.push(step.stack.clone());
                    self.pending_note = Some(format!("stack {} updated", step.stack));
                    return self.advance(run, done, desired, observed, ctx, now);
                }
                if now >= step.deadline {
                    self.note_now(
                        Code::StackUpdateSlow,
                        format!(
                            "stack {} has been updating for more than {}s; CloudFormation cannot be left half way, so the controller keeps waiting (see the README runbook)",
                            step.stack,
                            self.settings.stack_update_timeout.as_secs()
                        ),
                        now,
                    );
                }
                Self::enter_executing_change_set(run, step, ctx);
                Handled
            }
            Event::StackUpdatePending { .. } => Handled,
            Event::StackUpdated => {
                step.updated = true;
                ctx.commands.push(Command::Observe);
                Handled
            }
            Event::StackUpdateFailed {
                status,
                resource,
                reason,
            } => {
                let cause = match resource {
                    Some(resource) => format!("{resource} failed: {reason}"),
                    None => reason.clone(),
                };
                let failure = if status.progress() == infra::StackProgress::RolledBack {
                    Failure::new(
                        Code::StackRolledBack,
                        format!("stack {} rolled back ({status}): {cause}", step.stack),
                    )
                } else {
                    Failure::new(
                        Code::StackRollbackFailed,
                        format!(
                            "stack {} is in {status} after {cause}: needs a human (README runbook: a stack in a failed state)",
                            step.stack
                        ),
                    )
                };
                self.fail(run, failure, now)
            }
            Event::CommandFailed { class, message, .. } => {
                self.command_failed(run, *class, Code::ExecuteRefused, message, ctx, now)
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_executing_change_set(run: &mut Run, step: &mut ChangeSetStep, ctx: &mut Ctx) {
        if step.updated {
            ctx.commands.push(Command::Observe);
            return;
        }
        ctx.commands.push(Command::AwaitChangeSet {
            attempt_id: run.attempt.id.clone(),
            epoch: run.epoch,
            stack: step.stack.clone(),
            name: step.name.clone(),
        });
    }

    /// Groups the sub-states that watch a rollout and undo it.
    #[superstate]
    fn health_gate(input: &Input) -> Outcome<State> {
        let _ = input;
        Handled
    }

    /// Outgoing: `Soaking` when healthy; `RollingBack` on failure, unhealthy tasks or timeout;
    /// `Idle` on a foreign writer.
    #[state(superstate = "health_gate")]
    fn awaiting_rollout(
        &mut self,
        gate: &mut Gate,
        ctx: &mut Ctx,
        input: &Input,
    ) -> Outcome<State> {
        if let Event::LeaseAdopted { epoch } = input.event {
            gate.run.epoch = epoch;
            return Handled;
        }
        let Event::Observed(observation) = &input.event else {
            return Super;
        };
        let mut status = self.gate_status(gate, observation);
        let unconfirmed = observation.observed.as_ref().is_ok_and(|o| {
            o.has_health_check && !o.health_gated_by_ecs && o.service.tasks.is_none()
        });
        if status == GateStatus::Healthy && unconfirmed {
            // Health-checked containers ECS does not wait for (not essential) are confirmed
            // HEALTHY on their tasks on the way into the soak (the driver reads them:
            // `gate_needs_tasks`); a read without them waits.
            status = GateStatus::Waiting("the tasks' health is not read yet".to_owned());
        }
        match status {
            GateStatus::Healthy => Transition(State::soaking(
                gate.clone(),
                input.now.after(self.settings.soak),
            )),
            GateStatus::Failed(failure) => self.roll_back(&gate.run, failure, input.now),
            GateStatus::Foreign(current) => self.foreign(&gate.run, &current, ctx, input.now),
            GateStatus::Waiting(_) if input.now >= gate.deadline => {
                let failure = Failure::new(
                    Code::HealthGateTimeout,
                    format!(
                        "the new revision was not healthy within {}s",
                        self.settings.rollout_timeout.as_secs()
                    ),
                );
                self.roll_back(&gate.run, failure, input.now)
            }
            GateStatus::Waiting(_) => Handled,
        }
    }

    /// Outgoing: `Done` after the soak; `AwaitingRollout` when health wavers; `RollingBack` on
    /// failure; `Idle` on a foreign writer.
    #[state(superstate = "health_gate")]
    fn soaking(
        &mut self,
        gate: &mut Gate,
        until: &mut Millis,
        ctx: &mut Ctx,
        input: &Input,
    ) -> Outcome<State> {
        if let Event::LeaseAdopted { epoch } = input.event {
            gate.run.epoch = epoch;
            return Handled;
        }
        let Event::Observed(observation) = &input.event else {
            return Super;
        };
        match self.gate_status(gate, observation) {
            GateStatus::Healthy if input.now >= *until => {
                self.memory.last_success = Some(input.now);
                self.seen_deployed(&gate.run.attempt.target_image);
                self.pending_note = Some(format!("{} is live", gate.run.attempt.target_version));
                Transition(State::done(gate.run.clone(), Some(gate.clone())))
            }
            GateStatus::Healthy => Handled,
            GateStatus::Failed(failure) => self.roll_back(&gate.run, failure, input.now),
            GateStatus::Foreign(current) => self.foreign(&gate.run, &current, ctx, input.now),
            GateStatus::Waiting(why) => {
                if input.now >= gate.deadline {
                    let failure = Failure::new(
                        Code::HealthGateTimeout,
                        format!("health wavered during the soak: {why}"),
                    );
                    self.roll_back(&gate.run, failure, input.now)
                } else {
                    self.pending_note = Some(format!("health wavered during the soak: {why}"));
                    // The service deployment succeeded and no longer moves: the gate reads the
                    // service from here on.
                    let gate = Gate {
                        service_deployment: None,
                        ..gate.clone()
                    };
                    Transition(State::awaiting_rollout(gate))
                }
            }
        }
    }

    /// Outgoing: `RolledBack` once the service runs the baseline again (or the deadline passes,
    /// or a foreign writer moves the service after the rollback was made: it is not fought).
    ///
    /// The service update back to the baseline is made once: `issued` is persisted once it is
    /// done, and a crash before that re-issues it, where the driver skips it when the service
    /// already runs the baseline.
    #[state(superstate = "health_gate", entry_action = "enter_rolling_back")]
    fn rolling_back(
        &mut self,
        run: &mut Run,
        failure: &mut Failure,
        deadline: &mut Millis,
        issued: &mut bool,
        ctx: &mut Ctx,
        input: &Input,
    ) -> Outcome<State> {
        match &input.event {
            Event::RollbackStarted => {
                *issued = true;
                Handled
            }
            Event::LeaseAdopted { epoch } => {
                run.epoch = *epoch;
                Handled
            }
            Event::CommandFailed {
                class: FailureClass::Fenced,
                message,
                ..
            } => {
                self.note_now(Code::LockLost, message.clone(), input.now);
                Transition(State::idle())
            }
            Event::CommandFailed {
                class: FailureClass::Permanent,
                message,
                ..
            } => {
                let mut failure = failure.clone();
                failure.reason = format!(
                    "{}; the rollback itself was refused ({message}): needs a human",
                    failure.reason
                );
                self.pending_note = Some(failure.reason.clone());
                Transition(State::rolled_back(
                    run.clone(),
                    failure,
                    ServiceAfter::Unconfirmed,
                ))
            }
            Event::CommandFailed {
                class: FailureClass::Unreadable,
                message,
                ..
            } => {
                self.note_now(
                    Code::AwsUnavailable,
                    format!("cannot read the service before rolling back: {message} (will retry until {deadline})"),
                    input.now,
                );
                Handled
            }
            Event::Observed(observation) => {
                let restored = observation.observed.as_ref().is_ok_and(|observed| {
                    let service = &observed.service;
                    service.task_definition_arn == run.baseline.task_definition_arn
                        && service.primary().is_some_and(|p| {
                            p.task_definition_arn == run.baseline.task_definition_arn
                                && p.rollout_state == RolloutState::Completed
                                && p.running_count == p.desired_count
                        })
                });
                if restored {
                    self.pending_note = Some(failure.reason.clone());
                    Transition(State::rolled_back(
                        run.clone(),
                        failure.clone(),
                        ServiceAfter::Restored,
                    ))
                } else if input.now >= *deadline {
                    let mut failure = failure.clone();
                    failure.reason = format!(
                        "{}; the rollback was not confirmed within {}s: check the service",
                        failure.reason,
                        self.settings.rollback_timeout.as_secs()
                    );
                    self.pending_note = Some(failure.reason.clone());
                    Transition(State::rolled_back(
                        run.clone(),
                        failure,
                        ServiceAfter::Unconfirmed,
                    ))
                } else if let (true, Ok(observed)) = (*issued, &observation.observed) {
                    let current = &observed.service.task_definition_arn;
                    if *current == run.baseline.task_definition_arn {
                        Handled // the rollback's deployment is under way
                    } else {
                        let mut failure = failure.clone();
                        failure.reason = format!(
                            "{}; after the rollback, someone else pointed the service at {current}: not fighting it",
                            failure.reason
                        );
                        self.pending_note = Some(failure.reason.clone());
                        Transition(State::rolled_back(
                            run.clone(),
                            failure,
                            ServiceAfter::Foreign(current.clone()),
                        ))
                    }
                } else {
                    Self::enter_rolling_back(run, issued, ctx);
                    Handled
                }
            }
            _ => Super,
        }
    }

    #[action]
    fn enter_rolling_back(run: &mut Run, issued: &mut bool, ctx: &mut Ctx) {
        if !*issued {
            ctx.commands.push(Command::RollBackService {
                attempt_id: run.attempt.id.clone(),
                epoch: run.epoch,
                task_definition_arn: run.baseline.task_definition_arn.clone(),
                baseline_deployments: run.baseline.deployment_ids.clone(),
            });
        }
    }

    /// The attempt succeeded. Outgoing: `Checking` when a newer version becomes eligible.
    #[state(entry_action = "enter_done")]
    fn done(&mut self, run: &mut Run, gate: &mut Option<Gate>, input: &Input) -> Outcome<State> {
        // Declared for statig (state data); read by the entry action and the record.
        let _ = (run, gate);
        self.consider(input)
    }

    #[action]
    fn enter_done(run: &mut Run, ctx: &mut Ctx) {
        ctx.commands.push(Command::ReleaseLock { epoch: run.epoch });
    }

    /// The attempt failed and was undone. Outgoing: `Checking` when the desired state changes
    /// to something eligible.
    #[state(entry_action = "enter_rolled_back")]
    fn rolled_back(
        &mut self,
        run: &mut Run,
        failure: &mut Failure,
        service: &mut ServiceAfter,
        input: &Input,
    ) -> Outcome<State> {
        // statig declares a state's data through its handler's arguments; these are read by
        // the entry action and the record, not here.
        let _ = (run, failure, service);
        self.consider(input)
    }

    #[action]
    fn enter_rolled_back(run: &mut Run, ctx: &mut Ctx) {
        ctx.commands.push(Command::ReleaseLock { epoch: run.epoch });
    }
}

impl RunnerMachine {
    /// A machine at rest for a runner.
    #[must_use]
    pub fn new(runner: &str, settings: Settings) -> Self {
        RunnerMachine {
            runner: runner.to_owned(),
            settings,
            memory: Memory::default(),
            pending_note: None,
        }
    }

    /// A machine with restored memory.
    #[must_use]
    pub fn with_memory(runner: &str, settings: Settings, memory: Memory) -> Self {
        RunnerMachine {
            runner: runner.to_owned(),
            settings,
            memory,
            pending_note: None,
        }
    }

    fn after_transition(&mut self, source: &State, target: &State, ctx: &mut Ctx) {
        let (from, to) = (phase_of(source), phase_of(target));
        if !phase::allowed(from, to) {
            ctx.violations.push(format!(
                "transition {from} -> {to} is not in the transition table"
            ));
        }
        self.memory.since = ctx.now;
        self.memory.history.push_back(TransitionEntry {
            from,
            to,
            at: ctx.now,
            attempt_id: attempt_of(target)
                .or_else(|| attempt_of(source))
                .map(|a| a.id.clone()),
            note: self.pending_note.take(),
        });
        while self.memory.history.len() > self.settings.history_max.max(1) {
            self.memory.history.pop_front();
        }
    }

    /// Whether `observation`, handled at rest, would start an attempt (every rule passes and
    /// the service and stacks are steady). Pure: the driver asks before it acts on a fleet
    /// read, which may be seconds old, so that an attempt is started on fresh reads only.
    #[must_use]
    pub fn would_attempt(&self, observation: &Observation, now: Millis) -> bool {
        let (Ok(desired), Ok(observed)) = (&observation.desired, &observation.observed) else {
            return false;
        };
        if observation.settling(now) {
            return false;
        }
        let verdict = self.verdict(desired, observed, now);
        let due = self.infra_due(desired, observed);
        attempt_kind(&verdict, !due.is_empty()).is_some() && steady(observed).is_ok()
    }

    /// Acts on the retry intents not acknowledged yet: lifts the quarantine marks of their
    /// version made up to their acknowledgement (never a later one), and records their ids.
    /// Whether it acknowledged any.
    fn apply_retries(&mut self, intents: &[RetryIntent], now: Millis) -> bool {
        let mut acknowledged = false;
        for intent in intents {
            if self.memory.retries.contains(&intent.id) {
                continue;
            }
            let cutoff = match intent.from {
                RetryFrom::Runner => now,
                RetryFrom::Channel(at) => at,
            };
            let before = self.memory.failed.len();
            self.memory.failed.retain(|mark| {
                !(mark.version == intent.version
                    && intent.image.as_ref().is_none_or(|i| *i == mark.image)
                    && mark.at <= cutoff)
            });
            let lifted = before - self.memory.failed.len();
            if lifted == 0 && matches!(intent.from, RetryFrom::Channel(_)) {
                // The channel's retry of a version this runner has no mark of: nothing to do,
                // nothing to remember (it is offered again while the channel keeps it).
                continue;
            }
            acknowledged = true;
            self.memory.retries.push(intent.id.clone());
            let excess = self.memory.retries.len().saturating_sub(RETRIES_KEPT);
            self.memory.retries.drain(..excess);
            let by = match intent.from {
                RetryFrom::Runner => format!(
                    "retry {} by {}",
                    intent.id,
                    intent.requested_by.as_deref().unwrap_or("ops")
                ),
                RetryFrom::Channel(_) => format!("the channel's retry {}", intent.id),
            };
            let message = if lifted == 0 {
                format!(
                    "{by} of {}: nothing was quarantined (acknowledged, nothing lifted)",
                    intent.version
                )
            } else {
                format!(
                    "{by} of {}: its quarantine lifted ({lifted} mark(s)); it may be tried once more",
                    intent.version
                )
            };
            self.note_now(Code::Retried, message, now);
        }
        acknowledged
    }

    /// Resting states: evaluate eligibility and start an attempt when every rule passes.
    fn consider(&mut self, input: &Input) -> Outcome<State> {
        let Event::Observed(observation) = &input.event else {
            return Handled;
        };
        if self.apply_retries(&observation.retries, input.now) {
            // This pass says so (the note `retried`, in `status` and the pass's check span); the
            // next one decides on fresh reads, the quarantine lifted.
            return Handled;
        }
        let (desired, observed) = match (&observation.desired, &observation.observed) {
            (Ok(desired), Ok(observed)) => (desired, observed),
            (Err(error), _) => {
                if !matches!(error, DesiredError::Unavailable(_)) {
                    self.memory.seen = None;
                }
                self.note_now(error.code(), error.to_string(), input.now);
                return Handled;
            }
            (_, Err(error)) => {
                self.note_now(error.code(), error.to_string(), input.now);
                return Handled;
            }
        };
        self.memory.seen = DesiredSeen::of(desired, observed);
        let verdict = self.verdict(desired, observed, input.now);
        let due = self.infra_due(desired, observed);
        let kind = attempt_kind(&verdict, !due.is_empty());
        if let (Some(failure), None) = (verdict.first_failure(), kind) {
            let (code, reason) = (Code::from(failure.rule), failure.reason.clone());
            self.note_now(code, reason.into_owned(), input.now);
        }
        self.memory.verdict = Some(verdict);
        let Some(kind) = kind else {
            return Handled;
        };
        if let Some(at) = observation.settles_at.filter(|at| *at > input.now) {
            // The desired/* parameters changed lately: ops may be half way through writing
            // them (a version, then its image). Nothing starts until they stay as they are.
            self.note_now(
                Code::Settling,
                format!(
                    "the desired/* parameters changed lately; they are acted on once unchanged until {at} (settle_secs), unless a release document ({}/release) is written, which is acted on at once",
                    self.runner
                ),
                input.now,
            );
            return Handled;
        }
        if let Err((code, reason)) = steady(observed) {
            // Someone else's deployment or stack update is under way: wait for it at rest
            // rather than take the lock only to give it back.
            self.note_now(code, reason, input.now);
            return Handled;
        }
        self.memory.note = None;
        self.memory.attempts_started += 1;
        let attempt = Attempt {
            id: format!(
                "{}-{}-{:x}",
                self.runner,
                self.memory.attempts_started,
                input.now.0 / 1000
            ),
            target_version: desired.version.clone(),
            target_image: desired.image.clone(),
            from_version: observed.current_version.clone(),
            from_image: observed.running_image.clone(),
            started_at: input.now,
            kind,
            infra: infra::fingerprint(desired),
            infra_version: desired.infra_version.clone(),
        };
        self.pending_note = Some(match kind {
            AttemptKind::Runner => format!(
                "update {} -> {}",
                attempt
                    .from_version
                    .as_ref()
                    .map_or_else(|| "unknown".to_owned(), ToString::to_string),
                attempt.target_version
            ),
            AttemptKind::InfrastructureOnly => format!(
                "infrastructure update: {}",
                due.iter()
                    .map(StackPlan::describe)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        });
        Transition(State::checking(attempt))
    }

    fn verdict(&self, desired: &DesiredState, observed: &Observed, now: Millis) -> Verdict {
        evaluate(EligibilityInput {
            desired,
            observed,
            controller_channel: &self.settings.channel,
            failed: &self.memory.failed,
            now,
        })
    }

    /// The attempt's image runs now: a divergence seen before it is over (the next pass at rest
    /// looks again), so `status` does not show it at Done.
    fn seen_deployed(&mut self, image: &ImageRef) {
        if let Some(seen) = &mut self.memory.seen {
            if seen
                .image
                .as_ref()
                .is_some_and(|(desired, _)| *desired == image.to_string())
            {
                seen.image = None;
            }
        }
        if self.memory.seen.as_ref() == Some(&DesiredSeen::default()) {
            self.memory.seen = None;
        }
    }

    /// Records a note; the timestamp only moves when the note changes (no churn in the record).
    fn note_now(&mut self, code: Code, message: String, now: Millis) {
        let unchanged = self
            .memory
            .note
            .as_ref()
            .is_some_and(|n| n.code == code && n.message == message);
        if !unchanged {
            self.memory.note = Some(Note {
                code,
                message,
                at: now,
            });
        }
    }

    /// Stops the attempt without marking anything failed; releases the lock when held.
    fn abort(
        &mut self,
        epoch: Option<u64>,
        code: Code,
        message: String,
        ctx: &mut Ctx,
        now: Millis,
    ) -> Outcome<State> {
        self.pending_note = Some(message.clone());
        self.note_now(code, message, now);
        if let Some(epoch) = epoch {
            ctx.commands.push(Command::ReleaseLock { epoch });
        }
        Transition(State::idle())
    }

    fn foreign(&mut self, run: &Run, current: &str, ctx: &mut Ctx, now: Millis) -> Outcome<State> {
        let message = format!(
            "foreign writer: the service now runs {current}, set outside this attempt; stopping and re-planning from what is observed"
        );
        self.foreign_message(run, message, ctx, now)
    }

    /// Stops the attempt for a foreign writer and holds its target (like a failed version), so
    /// the next pass does not fight the writer; a change of the desired state lifts the hold.
    fn foreign_message(
        &mut self,
        run: &Run,
        message: String,
        ctx: &mut Ctx,
        now: Millis,
    ) -> Outcome<State> {
        self.quarantine(
            &run.attempt,
            &Failure::new(Code::ForeignWriter, message.clone()),
            now,
        );
        self.abort(Some(run.epoch), Code::ForeignWriter, message, ctx, now)
    }

    fn command_failed(
        &mut self,
        run: &Run,
        class: FailureClass,
        code: Code,
        message: &str,
        ctx: &mut Ctx,
        now: Millis,
    ) -> Outcome<State> {
        match class {
            FailureClass::Transient => {
                // Not the state's refusal code: the call was not refused, it did not get an
                // answer yet (the message names the operation).
                self.note_now(Code::Retrying, format!("{message} (will retry)"), now);
                Handled
            }
            FailureClass::Fenced => {
                self.pending_note = Some(format!("lock lost: {message}"));
                self.note_now(Code::LockLost, message.to_owned(), now);
                Transition(State::idle())
            }
            FailureClass::Conflict => {
                self.foreign_message(run, format!("foreign writer: {message}"), ctx, now)
            }
            FailureClass::Unreadable => {
                self.note_now(
                    Code::AwsUnavailable,
                    format!("cannot read AWS before acting, nothing was changed: {message} (will retry)"),
                    now,
                );
                Handled
            }
            FailureClass::Permanent => self.fail(run, Failure::new(code, message.to_owned()), now),
        }
    }

    /// ` (last: CODE: MESSAGE)` of the last note, for a deadline's failure reason ("" for none).
    fn last_note_suffix(&self) -> String {
        self.memory
            .note
            .as_ref()
            .map(|n| format!(" (last: {}: {})", n.code, n.message))
            .unwrap_or_default()
    }

    /// Quarantines the attempt's target and ends it in `RolledBack` (nothing of the runner was
    /// changed, or CloudFormation already put the stack back).
    fn fail(&mut self, run: &Run, failure: Failure, now: Millis) -> Outcome<State> {
        self.quarantine(&run.attempt, &failure, now);
        self.pending_note = Some(failure.reason.clone());
        Transition(State::rolled_back(
            run.clone(),
            failure,
            ServiceAfter::Untouched,
        ))
    }

    /// The stacks an attempt would update now (a gap shows as rule 3 failing instead).
    fn infra_due(&self, desired: &DesiredState, observed: &Observed) -> Vec<StackPlan> {
        let due = infra::plan(desired, &observed.stacks, &[]).unwrap_or_default();
        let parameters_only = due
            .iter()
            .all(|p| p.template_url.is_none() && !p.changes_version());
        if parameters_only
            && self.memory.infra_applied.is_some()
            && self.memory.infra_applied == infra::fingerprint(desired)
        {
            return Vec::new();
        }
        due
    }

    /// A change set step for `stack`.
    fn step(&self, attempt_id: &str, stack: &str, done: Vec<String>, now: Millis) -> ChangeSetStep {
        ChangeSetStep {
            stack: stack.to_owned(),
            name: infra::change_set_name(attempt_id, stack),
            id: None,
            done,
            review: None,
            deadline: now.after(self.settings.change_set_timeout),
            updated: false,
        }
    }

    /// Before a change set runs: the desired state must still be the attempt's, and ops'
    /// switches on. Otherwise the change set is deleted and the attempt stops. An unreadable
    /// AWS is waited out.
    // The error is the handler's answer, returned as is (statig's `Outcome` is large).
    #[allow(clippy::result_large_err)]
    fn infra_check<'o>(
        &mut self,
        run: &Run,
        step: &ChangeSetStep,
        observation: &'o Observation,
        ctx: &mut Ctx,
        now: Millis,
    ) -> Result<(&'o DesiredState, &'o Observed), Outcome<State>> {
        let desired = match &observation.desired {
            Ok(desired) => desired,
            Err(DesiredError::Unavailable(_)) => return Err(Handled),
            Err(error) => {
                let message = format!("{error}; change set {} deleted", step.name);
                return Err(self.abort_change_set(run, step, error.code(), message, ctx, now));
            }
        };
        let observed = match &observation.observed {
            Ok(observed) => observed,
            Err(ObserveError::Unavailable(_)) => return Err(Handled),
            Err(error) => {
                let message = format!("{error}; change set {} deleted", step.name);
                return Err(self.abort_change_set(run, step, error.code(), message, ctx, now));
            }
        };
        match self.halt_reason(run, desired) {
            Some((code, why)) => {
                let message = format!(
                    "{why} before change set {} of {} ran: deleted it; re-planning",
                    step.name, step.stack
                );
                Err(self.abort_change_set(run, step, code, message, ctx, now))
            }
            None => Ok((desired, observed)),
        }
    }

    /// Why the attempt must stop now that ops changed their mind, if they did.
    fn halt_reason(&self, run: &Run, desired: &DesiredState) -> Option<(Code, String)> {
        let attempt = &run.attempt;
        if !desired.auto_update {
            Some((
                Code::Ineligible(Rule::AutoUpdate),
                "auto-update was switched off".to_owned(),
            ))
        } else if *desired.channel != *self.settings.channel {
            Some((
                Code::Ineligible(Rule::Channel),
                format!("the channel changed to {}", desired.channel),
            ))
        } else if desired.version != attempt.target_version
            || desired.image != attempt.target_image
            || infra::fingerprint(desired) != attempt.infra
        {
            Some((Code::DesiredChanged, "the desired state changed".to_owned()))
        } else {
            None
        }
    }

    fn abort_change_set(
        &mut self,
        run: &Run,
        step: &ChangeSetStep,
        code: Code,
        message: String,
        ctx: &mut Ctx,
        now: Millis,
    ) -> Outcome<State> {
        ctx.commands.push(delete_command(run, step));
        self.abort(Some(run.epoch), code, message, ctx, now)
    }

    /// After a stack: the next due stack, or the runner update, or the end of an
    /// infrastructure-only attempt.
    fn advance(
        &mut self,
        run: &Run,
        done: Vec<String>,
        desired: &DesiredState,
        observed: &Observed,
        ctx: &mut Ctx,
        now: Millis,
    ) -> Outcome<State> {
        match infra::plan(desired, &observed.stacks, &done) {
            Err(gap) => self.fail(
                run,
                Failure::new(Code::InfraVersionNotReached, gap.reason()),
                now,
            ),
            Ok(due) => match due.first() {
                Some(next) => {
                    let step = self.step(&run.attempt.id, &next.stack, done, now);
                    Transition(State::creating_change_set(run.clone(), step))
                }
                None => self.infrastructure_done(run, desired, observed, ctx, now),
            },
        }
    }

    fn infrastructure_done(
        &mut self,
        run: &Run,
        desired: &DesiredState,
        observed: &Observed,
        ctx: &mut Ctx,
        now: Millis,
    ) -> Outcome<State> {
        self.memory.infra_applied.clone_from(&run.attempt.infra);
        if run.attempt.kind == AttemptKind::InfrastructureOnly {
            self.memory.last_success = Some(now);
            self.pending_note = Some(format!(
                "infrastructure {} is live",
                run.attempt.infra_version.as_deref().unwrap_or("update")
            ));
            return Transition(State::done(run.clone(), None));
        }
        if let Err(gap) = infra::at_version(desired, &observed.stacks) {
            let failure = Failure::new(
                Code::InfraVersionNotReached,
                format!(
                    "the stacks were updated but {} carries infrastructure {}, not {}",
                    gap.stack,
                    gap.have.as_deref().unwrap_or("unknown"),
                    gap.wanted
                ),
            );
            return self.fail(run, failure, now);
        }
        if let Err((code, message)) = steady(observed) {
            return self.abort(Some(run.epoch), code, message, ctx, now);
        }
        let mut run = run.clone();
        // The stacks may own parts of the service: the runner update starts from what runs now.
        run.baseline = baseline_of(observed);
        self.pending_note = Some(format!(
            "infrastructure ready; update {} -> {}",
            run.attempt
                .from_version
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), ToString::to_string),
            run.attempt.target_version
        ));
        Transition(State::registering_task_definition(run))
    }

    fn roll_back(&mut self, run: &Run, failure: Failure, now: Millis) -> Outcome<State> {
        self.quarantine(&run.attempt, &failure, now);
        self.pending_note = Some(failure.reason.clone());
        let deadline = now.after(self.settings.rollback_timeout);
        Transition(State::rolling_back(run.clone(), failure, deadline, false))
    }

    /// Marks the attempt's target failed (once).
    fn quarantine(&mut self, attempt: &Attempt, failure: &Failure, now: Millis) {
        let known = self.memory.failed.iter().any(|m| {
            m.matches(
                &attempt.target_version,
                &attempt.target_image,
                attempt.infra.as_deref(),
            )
        });
        if !known {
            self.memory.failed.push(FailedMark {
                version: attempt.target_version.to_string(),
                image: attempt.target_image.to_string(),
                reason: format!("{}: {}", failure.code, failure.reason),
                at: now,
                infra: attempt.infra.clone(),
            });
            let excess = self.memory.failed.len().saturating_sub(FAILED_MARKS_MAX);
            self.memory.failed.drain(..excess);
        }
        self.note_now(failure.code.clone(), failure.reason.clone(), now);
    }

    fn gate_status(&self, gate: &Gate, observation: &Observation) -> GateStatus {
        let observed = match &observation.observed {
            Ok(observed) => observed,
            Err(error) => {
                return GateStatus::Waiting(format!("cannot observe the service: {error}"))
            }
        };
        let service = &observed.service;
        let (new_td, baseline_td) = (
            &gate.new_task_definition_arn,
            &gate.run.baseline.task_definition_arn,
        );
        if service.task_definition_arn != *new_td && service.task_definition_arn != *baseline_td {
            return GateStatus::Foreign(service.task_definition_arn.clone());
        }
        let ours = service.deployment(&gate.deployment_id);
        if let Some(deployment) = ours.filter(|d| d.rollout_state == RolloutState::Failed) {
            let reason = deployment
                .rollout_reason
                .clone()
                .unwrap_or_else(|| "no reason given".to_owned());
            return GateStatus::Failed(Failure::new(
                Code::CircuitBreaker,
                format!(
                    "the ECS circuit breaker failed deployment {}: {reason}",
                    deployment.id
                ),
            ));
        }
        if service.task_definition_arn == *baseline_td {
            return GateStatus::Failed(Failure::new(
                Code::CircuitBreaker,
                format!(
                    "ECS rolled the service back to {baseline_td}; deployment {} is gone",
                    gate.deployment_id
                ),
            ));
        }
        let Some(ours) = ours else {
            return GateStatus::Foreign(format!(
                "{} (deployment {} was replaced)",
                service.task_definition_arn, gate.deployment_id
            ));
        };
        let unhealthy = service.tasks_with(new_td, Health::Unhealthy);
        // ECS's `failedTasks` counts only consecutive failures and stops counting once a task
        // ran; stopped tasks of the new revision are counted too (they are unique to the attempt).
        let stopped = service.stopped_tasks(new_td);
        let failed = (ours.failed_tasks as usize).max(stopped);
        let bad = failed + unhealthy;
        if bad >= self.settings.fail_fast_tasks as usize {
            return GateStatus::Failed(Failure::new(
                Code::UnhealthyTasks,
                fail_fast_reason(failed, unhealthy, self.settings.fail_fast_tasks),
            ));
        }
        let primary_is_ours = service.primary().is_some_and(|p| p.id == ours.id);
        if !primary_is_ours {
            return GateStatus::Waiting(format!("deployment {} is not PRIMARY", ours.id));
        }
        if ours.rollout_state != RolloutState::Completed || ours.running_count != ours.desired_count
        {
            return GateStatus::Waiting(format!(
                "rollout in progress: {}/{} running",
                ours.running_count, ours.desired_count
            ));
        }
        // Tasks are read where `gate_needs_tasks` says: a completed deployment's health is
        // confirmed on its tasks once (on the way into the soak); in the soak, ECS's own counts
        // stand for them until they show a task gone or failed.
        if observed.has_health_check && service.tasks.is_some() {
            let healthy = service.tasks_with(new_td, Health::Healthy);
            if healthy < ours.desired_count as usize {
                return GateStatus::Waiting(format!(
                    "{healthy}/{} tasks HEALTHY",
                    ours.desired_count
                ));
            }
        }
        GateStatus::Healthy
    }
}

/// Why the fail-fast threshold was reached, naming only what happened: tasks that stopped
/// (crashed, or never started) and running tasks reported UNHEALTHY.
fn fail_fast_reason(failed: usize, unhealthy: usize, threshold: u32) -> String {
    let stopped =
        format!("{failed} task(s) of the new revision stopped (crashed or never started)");
    let unhealthy_words = format!("{unhealthy} running task(s) of the new revision are UNHEALTHY");
    let what = match (failed, unhealthy) {
        (_, 0) => stopped,
        (0, _) => unhealthy_words,
        _ => format!("{stopped} and {unhealthy} running task(s) are UNHEALTHY"),
    };
    format!("{what}; fail-fast threshold {threshold}")
}

/// Whether the service (and the stacks) are settled enough to start changing them.
fn steady(observed: &Observed) -> Result<(), (Code, String)> {
    let service = &observed.service;
    // No rollout under way: the PRIMARY deployment completed, or it is ECS's own circuit-breaker
    // rollback and failed in turn (ECS does not roll a rollback back: nothing more will move).
    // A failed deployment that is not a rollback may still be rolled back by ECS: wait. The
    // deployments still listed beside a settled PRIMARY (draining) are in the baseline, so
    // never taken for ours.
    let settled = service.primary().is_some_and(|p| match p.rollout_state {
        RolloutState::Completed => true,
        RolloutState::Failed => p.rollout_cause().rolling_back,
        RolloutState::InProgress => false,
    });
    if !settled {
        return Err((
            Code::ServiceNotSteady,
            "the service is not steady (a deployment is in progress): waiting for it to settle"
                .to_owned(),
        ));
    }
    if let Some(stack) = observed
        .stacks
        .iter()
        .find(|s| s.status.progress() == infra::StackProgress::InProgress)
    {
        return Err((
            Code::StackBusy,
            format!(
                "stack {} is {}: waiting for it to settle",
                stack.name, stack.status
            ),
        ));
    }
    Ok(())
}

/// The service as it is before the runner update.
fn baseline_of(observed: &Observed) -> Baseline {
    Baseline {
        task_definition_arn: observed.service.task_definition_arn.clone(),
        deployment_ids: observed
            .service
            .deployments
            .iter()
            .map(|d| d.id.clone())
            .collect(),
    }
}

fn delete_command(run: &Run, step: &ChangeSetStep) -> Command {
    Command::DeleteChangeSet {
        epoch: run.epoch,
        stack: step.stack.clone(),
        name: step.name.clone(),
    }
}

/// The phase of a state.
#[must_use]
pub fn phase_of(state: &State) -> Phase {
    match state {
        State::Idle {} => Phase::Idle,
        State::Checking { .. } => Phase::Checking,
        State::Locked { .. } => Phase::Locked,
        State::CreatingChangeSet { .. } => Phase::CreatingChangeSet,
        State::AwaitingApproval { .. } => Phase::AwaitingApproval,
        State::ExecutingChangeSet { .. } => Phase::ExecutingChangeSet,
        State::RegisteringTaskDefinition { .. } => Phase::RegisteringTaskDefinition,
        State::UpdatingService { .. } => Phase::UpdatingService,
        State::AwaitingRollout { .. } => Phase::AwaitingRollout,
        State::Soaking { .. } => Phase::Soaking,
        State::RollingBack { .. } => Phase::RollingBack,
        State::Done { .. } => Phase::Done,
        State::RolledBack { .. } => Phase::RolledBack,
    }
}

/// The attempt of a state, when one is in flight or just ended.
#[must_use]
pub fn attempt_of(state: &State) -> Option<&Attempt> {
    match state {
        State::Idle {} => None,
        State::Checking { attempt } | State::Locked { attempt, .. } => Some(attempt),
        State::RegisteringTaskDefinition { run }
        | State::CreatingChangeSet { run, .. }
        | State::AwaitingApproval { run, .. }
        | State::ExecutingChangeSet { run, .. }
        | State::UpdatingService { run, .. }
        | State::RollingBack { run, .. }
        | State::Done { run, .. }
        | State::RolledBack { run, .. } => Some(&run.attempt),
        State::AwaitingRollout { gate } | State::Soaking { gate, .. } => Some(&gate.run.attempt),
    }
}

/// The change set a state works on, when it is an infrastructure state.
#[must_use]
pub fn change_set_of(state: &State) -> Option<&ChangeSetStep> {
    match state {
        State::CreatingChangeSet { step, .. }
        | State::AwaitingApproval { step, .. }
        | State::ExecutingChangeSet { step, .. } => Some(step),
        _ => None,
    }
}

/// The run (attempt under lock) of a state, when there is one.
#[must_use]
pub fn run_of(state: &State) -> Option<&Run> {
    match state {
        State::RegisteringTaskDefinition { run }
        | State::CreatingChangeSet { run, .. }
        | State::AwaitingApproval { run, .. }
        | State::ExecutingChangeSet { run, .. }
        | State::UpdatingService { run, .. }
        | State::RollingBack { run, .. }
        | State::Done { run, .. }
        | State::RolledBack { run, .. } => Some(run),
        State::AwaitingRollout { gate } | State::Soaking { gate, .. } => Some(&gate.run),
        State::Idle {} | State::Checking { .. } | State::Locked { .. } => None,
    }
}

/// Whether the health gate needs the service's tasks to judge `service` (read without them) in
/// `state`. Tasks cost ECS three calls a service (`ListTasks` twice, `DescribeTasks`), so the
/// gate reads them only when something calls for them:
/// - the deployment reports failed tasks: the fail-fast count wants the evidence (stopped tasks
///   of the new revision, which ECS's `failedTasks` stops counting once a task has run, and
///   running ones reported UNHEALTHY);
/// - a completed deployment short of its tasks (a task of the new revision went away after it
///   ran: ECS's counts show it, its reason is on the task);
/// - a rollout in progress whose running tasks are fewer than at the gate's previous read
///   (`previous_running`: a task stopped after it ran — ECS's `failedTasks` does not count a
///   task that crashes once running, so its stopped tasks are the only evidence; they stay
///   listed for about an hour, so a read then counts every one so far);
/// - a deployment that claims completion while the gate still awaits it, with a health check
///   ECS does not wait for itself (`confirm_health`: a non-essential runner container; an
///   essential one's tasks are counted by ECS only once HEALTHY, so its completion says so):
///   its tasks confirm they are HEALTHY once, on the way into the soak.
///
/// Nothing else does: a rollout in progress whose running tasks hold or grow, a soak whose
/// counts hold, a deployment the circuit breaker failed, a service on another task definition
/// (foreign, or rolled back) are all judged from the service alone.
#[must_use]
pub fn gate_needs_tasks(
    state: &State,
    service: &ServiceState,
    confirm_health: bool,
    previous_running: Option<u32>,
) -> bool {
    let (gate, soaking) = match state {
        State::AwaitingRollout { gate } => (gate, false),
        State::Soaking { gate, .. } => (gate, true),
        _ => return false,
    };
    if service.task_definition_arn != gate.new_task_definition_arn {
        return false;
    }
    let Some(ours) = service.deployment(&gate.deployment_id) else {
        return false;
    };
    match ours.rollout_state {
        RolloutState::Failed => false,
        _ if ours.failed_tasks > 0 => true,
        RolloutState::InProgress => previous_running.is_some_and(|was| ours.running_count < was),
        RolloutState::Completed => {
            ours.running_count < ours.desired_count || (confirm_health && !soaking)
        }
    }
}

/// The service deployment the health gate reads while the rollout is in progress (where ECS
/// reported one): `DescribeServiceDeployments`, twenty a call, instead of the service. In the
/// soak the service is read (a deployment that succeeded no longer moves; the service shows a
/// task gone, or someone else's deployment).
#[must_use]
pub fn gate_service_deployment(state: &State) -> Option<&str> {
    match state {
        State::AwaitingRollout { gate } => gate.service_deployment.as_deref(),
        _ => None,
    }
}

/// The service as the health gate judges it, from its service deployment alone (read by
/// [`gate_service_deployment`]): the attempt's deployment, PRIMARY, on the new task definition,
/// with ECS's structured counts — rollout state from the deployment's status, failed tasks from
/// the circuit breaker's count. `None` where the deployment alone cannot say (stopped without
/// the breaker: by someone, or by a newer deployment; a status this controller does not know):
/// the service is read instead.
#[must_use]
pub fn gate_view(
    state: &State,
    cluster: &str,
    service: &str,
    read: &ServiceDeployment,
) -> Option<ServiceState> {
    let State::AwaitingRollout { gate } = state else {
        return None;
    };
    if gate.service_deployment.as_deref() != Some(read.arn.as_str()) {
        return None;
    }
    let breaker_fired = read.breaker.is_some_and(|b| b.triggered);
    let (rollout_state, reason) = match read.status {
        status if status.rolling_back() || breaker_fired => {
            let counted = read.breaker.filter(|b| b.triggered).map(|b| {
                format!(
                    "the circuit breaker counted {} failed task(s), threshold {}",
                    b.failure_count, b.threshold
                )
            });
            let why = [
                counted,
                read.rollback_reason
                    .clone()
                    .or_else(|| read.status_reason.clone()),
            ]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join("; ");
            let words = if why.is_empty() {
                format!("service deployment {}", status.name())
            } else {
                format!("service deployment {}: {why}", status.name())
            };
            (RolloutState::Failed, Some(words))
        }
        ServiceDeploymentStatus::Pending | ServiceDeploymentStatus::InProgress => {
            (RolloutState::InProgress, read.status_reason.clone())
        }
        ServiceDeploymentStatus::Successful => {
            (RolloutState::Completed, read.status_reason.clone())
        }
        _ => return None,
    };
    Some(ServiceState {
        cluster: cluster.to_owned(),
        service: service.to_owned(),
        task_definition_arn: gate.new_task_definition_arn.clone(),
        deployments: vec![Deployment {
            id: gate.deployment_id.clone(),
            status: DeploymentStatus::Primary,
            task_definition_arn: gate.new_task_definition_arn.clone(),
            rollout_state,
            rollout_reason: reason,
            desired_count: read.requested,
            running_count: read.running,
            failed_tasks: read.breaker.map_or(0, |b| b.failure_count),
        }],
        tasks: None,
        current_service_deployment: Some(read.arn.clone()),
    })
}

/// The deployment the health gate watches, in a gate state.
#[must_use]
pub fn gate_deployment(state: &State) -> Option<&str> {
    match state {
        State::AwaitingRollout { gate } | State::Soaking { gate, .. } => {
            Some(gate.deployment_id.as_str())
        }
        _ => None,
    }
}

/// A statig machine, initialised.
pub type Machine = statig::blocking::InitializedStateMachine<RunnerMachine>;

/// Builds an initialised machine in `state` (restoring from a record, or fresh in `Idle`).
///
/// statig has no "start in state X" API: the machine is created uninitialised, its state set,
/// and `init_with_context` run, which re-runs the entry actions down to that state. Those entry
/// actions only write commands into `ctx`, so the caller receives the restored state's command
/// to re-issue (idempotently) — that is how a resumed machine picks up where it stopped.
#[must_use]
pub fn restore(machine: RunnerMachine, state: State, ctx: &mut Ctx) -> Machine {
    let mut uninitialized = machine.uninitialized_state_machine();
    *uninitialized.state_mut() = state;
    uninitialized.init_with_context(ctx)
}

#[cfg(test)]
pub(crate) mod transition_tests;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    #[test]
    fn a_retry_lifts_the_marks_of_its_version_made_up_to_its_acknowledgement_once() {
        use crate::domain::retry::{RetryFrom, RetryIntent};
        let mark = |version: &str, at: u64| FailedMark {
            version: version.to_owned(),
            image: format!("registry.example/runner:{version}"),
            reason: "circuit-breaker".to_owned(),
            at: Millis(at),
            infra: None,
        };
        let intent = |id: &str, version: &str, from: RetryFrom| RetryIntent {
            id: id.to_owned(),
            version: version.to_owned(),
            image: None,
            requested_by: None,
            from,
        };
        let mut machine = RunnerMachine::new("runner-a", Settings::default());
        machine.memory.failed = vec![mark("2.15.0", 100), mark("2.15.0", 300), mark("2.16.0", 50)];
        // The channel acknowledged its retry at 200: the mark made at 300 (a failure after it)
        // stays, and so does another version's.
        let channel = intent(
            "channel-stable-a",
            "2.15.0",
            RetryFrom::Channel(Millis(200)),
        );
        assert!(machine.apply_retries(std::slice::from_ref(&channel), Millis(400)));
        let left: Vec<(String, u64)> = machine
            .memory
            .failed
            .iter()
            .map(|m| (m.version.clone(), m.at.0))
            .collect();
        assert_eq!(
            left,
            [("2.15.0".to_owned(), 300), ("2.16.0".to_owned(), 50)]
        );
        assert_eq!(machine.memory.retries, ["channel-stable-a"]);
        assert_eq!(
            machine.memory.note.as_ref().map(|n| n.code.clone()),
            Some(Code::Retried)
        );
        // Offered again (the channel keeps it): nothing more is lifted.
        assert!(!machine.apply_retries(std::slice::from_ref(&channel), Millis(500)));
        assert_eq!(machine.memory.failed.len(), 2);
        // A channel's retry with nothing to lift here is not remembered.
        let other = intent(
            "channel-stable-b",
            "2.17.0",
            RetryFrom::Channel(Millis(600)),
        );
        assert!(!machine.apply_retries(&[other], Millis(700)));
        assert_eq!(machine.memory.retries, ["channel-stable-a"]);
        // The runner's own retry lifts every mark of its version existing when acknowledged,
        // once.
        let own = intent("19a1dec0aa9-dc1178af", "2.15.0", RetryFrom::Runner);
        machine.apply_retries(std::slice::from_ref(&own), Millis(800));
        assert_eq!(machine.memory.failed.len(), 1);
        machine.memory.failed.push(mark("2.15.0", 900));
        machine.apply_retries(&[own], Millis(1_000));
        assert_eq!(
            machine.memory.failed.len(),
            2,
            "the same retry lifts nothing twice"
        );
        assert_eq!(machine.memory.retries.len(), 2);
    }

    use super::*;
    use crate::domain::observed::{Deployment, DeploymentStatus, ServiceState};

    const NOW: Millis = Millis(1_740_823_200_000);

    fn desired(auto_update: bool) -> DesiredState {
        DesiredState {
            version: Version::parse("2.14.0").unwrap(),
            image: ImageRef::parse("registry.example/runner:2.14.0").unwrap(),
            image_given: true,
            channel: "stable".to_owned(),
            auto_update,
            infra_version: None,
            stacks: BTreeMap::new(),
            approved_change_set: None,
            update_windows: None,
            source: DesiredSource::Parameters,
            ignored: Vec::new(),
        }
    }

    fn observed() -> Observed {
        Observed {
            service: ServiceState {
                cluster: "c".to_owned(),
                service: "s".to_owned(),
                task_definition_arn: "td:1".to_owned(),
                deployments: vec![Deployment {
                    id: "ecs-svc/1".to_owned(),
                    status: DeploymentStatus::Primary,
                    task_definition_arn: "td:1".to_owned(),
                    rollout_state: RolloutState::Completed,
                    rollout_reason: None,
                    desired_count: 1,
                    running_count: 1,
                    failed_tasks: 0,
                }],
                tasks: None,
                current_service_deployment: None,
            },
            running_image: ImageRef::parse("registry.example/runner:2.13.0").unwrap(),
            current_version: Some(Version::parse("2.13.0").unwrap()),
            has_health_check: false,
            health_gated_by_ecs: false,
            stacks: vec![],
        }
    }

    fn observation(
        desired: Result<DesiredState, DesiredError>,
        settles_at: Option<Millis>,
    ) -> Event {
        Event::Observed(Box::new(Observation {
            desired,
            observed: Ok(observed()),
            settles_at,
            retries: Vec::new(),
        }))
    }

    fn handle(machine: &mut Machine, event: Event) -> Phase {
        let mut ctx = Ctx {
            now: NOW,
            ..Ctx::default()
        };
        machine.handle_with_context(&Input { now: NOW, event }, &mut ctx);
        assert!(ctx.violations.is_empty(), "{:?}", ctx.violations);
        phase_of(machine.state())
    }

    fn at_rest() -> Machine {
        let mut ctx = Ctx::default();
        restore(
            RunnerMachine::new("runner-a", Settings::default()),
            State::Idle {},
            &mut ctx,
        )
    }

    /// Feeds `events` to a machine at rest, one `handle` each, and says after each the phase
    /// reached and the names of the commands it asked for.
    fn script(events: Vec<Event>) -> Vec<(Phase, Vec<&'static str>)> {
        let mut machine = at_rest();
        events
            .into_iter()
            .map(|event| {
                let mut ctx = Ctx {
                    now: NOW,
                    ..Ctx::default()
                };
                machine.handle_with_context(&Input { now: NOW, event }, &mut ctx);
                assert!(ctx.violations.is_empty(), "{:?}", ctx.violations);
                (
                    phase_of(machine.state()),
                    ctx.commands.iter().map(Command::name).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn each_step_of_an_update_is_a_transition_of_the_table_with_its_one_command() {
        let seen = || observation(Ok(desired(true)), None);
        let check = |name: &str, events: Vec<Event>, expect: &[(Phase, &[&str])]| {
            let got = script(events);
            let expect: Vec<(Phase, Vec<&str>)> =
                expect.iter().map(|(p, c)| (*p, c.to_vec())).collect();
            assert_eq!(got, expect, "{name}");
        };
        check(
            "the forward path up to the rollout",
            vec![
                seen(),
                Event::LockAcquired { epoch: 1 },
                seen(),
                Event::TaskDefinitionRegistered {
                    arn: "td:2".to_owned(),
                },
                Event::ServiceUpdated {
                    deployment_id: "ecs-svc/2".to_owned(),
                    service_deployment: None,
                },
            ],
            &[
                (Phase::Checking, &["acquire_lock"]),
                (Phase::Locked, &["observe"]),
                (
                    Phase::RegisteringTaskDefinition,
                    &["register_task_definition"],
                ),
                (Phase::UpdatingService, &["update_service"]),
                // Waiting is no command: the next pass observes.
                (Phase::AwaitingRollout, &[]),
            ],
        );
        check(
            "a busy lock is no attempt",
            vec![
                seen(),
                Event::LockBusy {
                    holder: "other".to_owned(),
                },
            ],
            &[(Phase::Checking, &["acquire_lock"]), (Phase::Idle, &[])],
        );
    }

    #[test]
    fn at_rest_an_attempt_starts_only_once_the_desired_parameters_settled() {
        /// A name, what was read, when it settles, the phase after the pass, the note.
        type Row = (
            &'static str,
            Result<DesiredState, DesiredError>,
            Option<Millis>,
            Phase,
            Option<&'static str>,
        );
        let second = std::time::Duration::from_secs(1);
        let rows: &[Row] = &[
            (
                "nothing to settle (a release document)",
                Ok(desired(true)),
                None,
                Phase::Checking,
                None,
            ),
            (
                "settles a second from now",
                Ok(desired(true)),
                Some(NOW.after(second)),
                Phase::Idle,
                Some("settling"),
            ),
            (
                "settles now",
                Ok(desired(true)),
                Some(NOW),
                Phase::Checking,
                None,
            ),
            (
                "settled a while ago",
                Ok(desired(true)),
                Some(Millis(NOW.0 - 5_000)),
                Phase::Checking,
                None,
            ),
            (
                "settling, but held anyway",
                Ok(desired(false)),
                Some(NOW.after(second)),
                Phase::Idle,
                Some("auto-update"),
            ),
            (
                "settling, and a bad value",
                Err(DesiredError::MissingVersion {
                    field: "desired/version".to_owned(),
                }),
                Some(NOW.after(second)),
                Phase::Idle,
                Some("missing-version"),
            ),
        ];
        for (name, desired, settles_at, phase, code) in rows {
            let mut machine = at_rest();
            let event = observation(desired.clone(), *settles_at);
            let Event::Observed(seen) = &event else {
                unreachable!()
            };
            let would = machine.inner().would_attempt(seen, NOW);
            assert_eq!(handle(&mut machine, event), *phase, "{name}");
            assert_eq!(would, *phase == Phase::Checking, "{name}: would_attempt");
            let note = machine
                .inner()
                .memory
                .note
                .as_ref()
                .map(|n| n.code.as_str());
            assert_eq!(note, *code, "{name}");
        }
    }

    #[test]
    fn a_settle_is_not_looked_at_once_the_attempt_holds_the_lock() {
        let mut machine = at_rest();
        assert_eq!(
            handle(&mut machine, observation(Ok(desired(true)), None)),
            Phase::Checking
        );
        assert_eq!(
            handle(&mut machine, Event::LockAcquired { epoch: 1 }),
            Phase::Locked
        );
        // Under the lock, the same desired state seen as settling again (a restart) goes on.
        let later = Some(NOW.after(std::time::Duration::from_secs(10)));
        assert_eq!(
            handle(&mut machine, observation(Ok(desired(true)), later)),
            Phase::RegisteringTaskDefinition
        );
    }
}
