//! The persisted record: a **separate, versioned** serialisable type (a boundary type), converted
//! from and to the machine. Domain and machine types are not `Serialize`.
//!
//! Decoding checks `schema_version` before anything else, so a record written by a newer
//! controller is refused with a clear reason instead of being misread or overwritten.

use std::borrow::Cow;
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::domain::code::Code;
use crate::domain::eligibility::{AttemptKind, FailedMark, Rule, RuleOutcome, Verdict};
use crate::domain::image::ImageRef;
use crate::domain::infra::Review;
use crate::domain::version::Version;
use crate::domain::Millis;
use crate::machine::phase::Phase;
use crate::machine::{
    attempt_of, phase_of, Attempt, Baseline, ChangeSetStep, DesiredSeen, Failure, Gate, Machine,
    Memory, Note, Run, RunnerMachine, ServiceAfter, Settings, State, TransitionEntry,
};

/// The schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The persisted state of one runner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Schema version ([`SCHEMA_VERSION`]).
    pub schema_version: u32,
    /// Runner name.
    pub runner: String,
    /// Current phase (`snake_case` name).
    pub phase: String,
    /// When the phase was entered (ms since epoch).
    pub since: u64,
    /// The attempt in flight or last finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<AttemptRecord>,
    /// Fencing token of the lock held by the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_epoch: Option<u64>,
    /// Service before the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineRecord>,
    /// Task definition registered by the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_task_definition_arn: Option<String>,
    /// ECS deployment created by the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment_id: Option<String>,
    /// Its service deployment's ARN, when ECS reported one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_deployment_arn: Option<String>,
    /// Deadline of the current wait (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
    /// End of the soak (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soak_until: Option<u64>,
    /// `RollingBack`: the service update back to the baseline was made (never made twice).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback_issued: bool,
    /// Why the attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureRecord>,
    /// Attempts started so far.
    #[serde(default)]
    pub attempts_started: u64,
    /// Quarantined versions.
    #[serde(default)]
    pub failed: Vec<FailedRecord>,
    /// Latest reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<NoteRecord>,
    /// Latest eligibility verdict.
    #[serde(default)]
    pub verdict: Vec<RuleRecord>,
    /// Last transitions, oldest first.
    #[serde(default)]
    pub transitions: Vec<TransitionRecord>,
    /// Last success (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<u64>,
    /// W3C traceparent of the attempt (filled by the tracing layer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The change set in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change_set: Option<ChangeSetRecord>,
    /// Fingerprint of the desired infrastructure last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_applied: Option<String>,
    /// `RolledBack`: what the service runs, as far as the controller knows (absent from
    /// records written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_after: Option<ServiceAfterRecord>,
    /// What the last pass at rest saw of the desired state: the release document in use (and
    /// the `desired/*` it made ignored), a desired image that is not the running one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<DesiredSeenRecord>,
    /// Retry intents acknowledged (their ids, the last few): each acted on once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<String>,
}

/// What the service runs after an attempt that ended in `RolledBack`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum ServiceAfterRecord {
    /// The attempt never changed the service: it runs the baseline as before.
    Untouched,
    /// The rollback to the baseline was confirmed (deployment PRIMARY, COMPLETED, all running).
    Restored,
    /// The rollback was refused or not confirmed in time: unknown.
    Unconfirmed,
    /// Someone else pointed the service at this task definition after the rollback.
    Foreign {
        /// The task definition the service was pointed at.
        task_definition_arn: String,
    },
}

/// What the last pass at rest saw of the desired state (only what on-call must see).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredSeenRecord {
    /// `release` (the document `<prefix>/<runner>/release`) or `parameters` (`desired/*`).
    pub source: String,
    /// The `desired/*` parameters ignored because the release document wins.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
    /// The desired image, when it is not the running one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The running image, when it is not the desired one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_image: Option<String>,
}

/// A stack's change set within the attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSetRecord {
    /// Stack.
    pub stack: String,
    /// Change set name.
    pub name: String,
    /// Change set id (ARN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Stacks finished earlier in the attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub done: Vec<String>,
    /// The review.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<ReviewRecord>,
    /// CloudFormation reported the stack updated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub updated: bool,
}

/// A change set's review.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRecord {
    /// Resources added.
    pub added: u32,
    /// Resources modified.
    pub modified: u32,
    /// Resources removed.
    pub removed: u32,
    /// Replaced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaced: Vec<String>,
    /// IAM resources touched.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub iam: Vec<String>,
    /// Parameters changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<String>,
    /// Warnings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// An attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// Id.
    pub id: String,
    /// Target version.
    pub target_version: String,
    /// Target image.
    pub target_image: String,
    /// Version before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    /// Image before.
    pub from_image: String,
    /// Start (ms).
    pub started_at: u64,
    /// `runner` or `infrastructure` (infrastructure only).
    #[serde(default = "runner_kind", skip_serializing_if = "is_runner_kind")]
    pub kind: String,
    /// Fingerprint of the desired infrastructure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra: Option<String>,
    /// Infrastructure version targeted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra_version: Option<String>,
}

fn runner_kind() -> String {
    "runner".to_owned()
}

fn is_runner_kind(kind: &str) -> bool {
    kind == "runner"
}

/// The baseline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineRecord {
    /// Task definition before.
    pub task_definition_arn: String,
    /// Deployment ids before.
    pub deployment_ids: Vec<String>,
}

/// A failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Code.
    pub code: String,
    /// Reason.
    pub reason: String,
}

impl FailureRecord {
    fn of(failure: &Failure) -> FailureRecord {
        FailureRecord {
            code: failure.code.to_string(),
            reason: failure.reason.clone(),
        }
    }
}

/// A quarantined version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedRecord {
    /// Version.
    pub version: String,
    /// Image.
    pub image: String,
    /// Reason.
    pub reason: String,
    /// When (ms).
    pub at: u64,
    /// Fingerprint of the desired infrastructure of the failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infra: Option<String>,
}

/// A note.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoteRecord {
    /// Code.
    pub code: String,
    /// Message.
    pub message: String,
    /// Since (ms).
    pub at: u64,
}

/// One rule's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    /// Rule name (borrowed from the rule when captured: kept per runner).
    pub rule: Cow<'static, str>,
    /// Passed.
    pub passed: bool,
    /// Reason (a fixed text stays borrowed).
    pub reason: Cow<'static, str>,
}

/// A transition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionRecord {
    /// From phase.
    pub from: String,
    /// To phase.
    pub to: String,
    /// When (ms).
    pub at: u64,
    /// Attempt id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
    /// Note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl From<&Review> for ReviewRecord {
    fn from(r: &Review) -> Self {
        ReviewRecord {
            added: r.added,
            modified: r.modified,
            removed: r.removed,
            replaced: r.replaced.clone(),
            iam: r.iam.clone(),
            parameters: r.parameters.clone(),
            warnings: r.warnings.clone(),
        }
    }
}

impl From<&ReviewRecord> for Review {
    fn from(r: &ReviewRecord) -> Self {
        Review {
            added: r.added,
            modified: r.modified,
            removed: r.removed,
            replaced: r.replaced.clone(),
            iam: r.iam.clone(),
            parameters: r.parameters.clone(),
            warnings: r.warnings.clone(),
        }
    }
}

/// Why a stored record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not JSON, truncated, or the wrong shape.
    #[error("the state record is corrupt: {0}")]
    Corrupt(String),
    /// Written by a newer controller.
    #[error("the state record has schema version {found}; this controller reads up to {SCHEMA_VERSION}: upgrade the controller")]
    NewerSchema {
        /// The record's version.
        found: u64,
    },
    /// Too large for the store even after shortening.
    #[error("the state record needs {bytes} bytes, more than the store's {limit}")]
    TooLarge {
        /// Size.
        bytes: usize,
        /// Limit.
        limit: usize,
    },
    /// A field is missing or invalid for its phase.
    #[error("the state record is invalid: {0}")]
    Invalid(String),
}

impl RecordError {
    /// A stable, kebab-case name.
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            RecordError::Corrupt(_) => Code::RecordCorrupt,
            RecordError::NewerSchema { .. } => Code::RecordNewerSchema,
            RecordError::Invalid(_) => Code::RecordInvalid,
            RecordError::TooLarge { .. } => Code::RecordTooLarge,
        }
    }
}

/// Whether an attempt id (`<runner>-<n>-<hex>`, see the machine) belongs to `runner`.
fn attempt_of_runner(id: &str, runner: &str) -> bool {
    id.strip_prefix(runner)
        .and_then(|rest| rest.strip_prefix('-'))
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(count, stamp)| {
            !count.is_empty()
                && count.bytes().all(|b| b.is_ascii_digit())
                && !stamp.is_empty()
                && stamp.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

impl Record {
    /// Decodes the record stored for `runner`, checking the schema version first, then that
    /// the record is `runner`'s: a record naming another runner, or holding another runner's
    /// attempt (copied by hand, restored to the wrong path), is [`RecordError::Invalid`] —
    /// never adopted, so never written anywhere else. Every store decodes through here.
    ///
    /// # Errors
    /// A [`RecordError`] when the text is not a record this controller can use for `runner`.
    pub fn decode(text: &str, runner: &str) -> Result<Record, RecordError> {
        let record = Self::decode_any(text)?;
        if record.runner != runner {
            return Err(RecordError::Invalid(format!(
                "the record read from runner {runner:?}'s path names runner {:?}: left as it is; restore it to its own path, or delete it",
                record.runner
            )));
        }
        if let Some(attempt) = &record.attempt {
            if !attempt_of_runner(&attempt.id, runner) {
                return Err(RecordError::Invalid(format!(
                    "the record read from runner {runner:?}'s path holds attempt {:?}, which is not {runner:?}'s: left as it is",
                    attempt.id
                )));
            }
        }
        Ok(record)
    }

    /// Decodes a record whoever it names (the schema check only).
    fn decode_any(text: &str) -> Result<Record, RecordError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| RecordError::Corrupt(e.to_string()))?;
        let version = value
            .get("schema_version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| RecordError::Corrupt("no schema_version".to_owned()))?;
        if version > u64::from(SCHEMA_VERSION) {
            return Err(RecordError::NewerSchema { found: version });
        }
        serde_json::from_value(value).map_err(|e| RecordError::Corrupt(e.to_string()))
    }

    /// Encodes as compact JSON.
    ///
    /// # Errors
    /// Never in practice (all fields are plain data); kept typed for the store's sake.
    pub fn encode(&self) -> Result<String, RecordError> {
        serde_json::to_string(self).map_err(|e| RecordError::Corrupt(e.to_string()))
    }

    /// Encodes within `limit` bytes (an SSM Standard parameter holds 4 KB): long texts are
    /// shortened first, then the oldest transitions dropped (at least three are kept), then the
    /// verdict's reasons, the marks' reasons, then the verdict (evaluated again at the next pass).
    /// Quarantine marks and
    /// the retries acknowledged are never dropped (they keep a failed version held, and a retry
    /// from acting twice).
    ///
    /// # Errors
    /// [`RecordError::TooLarge`] when even that is not enough.
    pub fn encode_within(&self, limit: usize) -> Result<String, RecordError> {
        let text = self.encode()?;
        if text.len() <= limit {
            return Ok(text);
        }
        let mut fitted = self.clone();
        if let Some(note) = &mut fitted.note {
            shorten(&mut note.message, 300);
        }
        if let Some(failure) = &mut fitted.failure {
            shorten(&mut failure.reason, 300);
        }
        for mark in &mut fitted.failed {
            shorten(&mut mark.reason, 120);
        }
        for transition in &mut fitted.transitions {
            if let Some(note) = &mut transition.note {
                shorten(note, 100);
            }
        }
        loop {
            let text = fitted.encode()?;
            if text.len() <= limit {
                return Ok(text);
            }
            if fitted.transitions.len() > 3 {
                fitted.transitions.remove(0);
            } else if let Some(review) = fitted
                .change_set
                .as_mut()
                .and_then(|c| c.review.as_mut())
                .filter(|r| {
                    !(r.replaced.len() <= 1 && r.parameters.is_empty() && r.warnings.is_empty())
                })
            {
                // Counts, IAM names and whether anything is replaced stay (they decide the
                // policy); the rest is in the logs and the transition notes.
                if !review.replaced.is_empty() {
                    review.replaced = vec!["(names shortened)".to_owned()];
                }
                review.parameters.clear();
                review.warnings.clear();
            } else if fitted.verdict.iter().any(|r| !r.reason.is_empty()) {
                for rule in &mut fitted.verdict {
                    rule.reason = Cow::Borrowed("");
                }
            } else if fitted
                .failed
                .iter()
                .any(|m| m.reason.len() > 40 + '…'.len_utf8())
            {
                // The marks stay; their reasons (also in the transitions and the trace) shrink
                // (once: a shortened reason is at most 40 bytes and the ellipsis).
                for mark in &mut fitted.failed {
                    shorten(&mut mark.reason, 40);
                }
            } else if !fitted.verdict.is_empty() {
                // The verdict is evaluated again at the next pass.
                fitted.verdict.clear();
            } else {
                return Err(RecordError::TooLarge {
                    bytes: text.len(),
                    limit,
                });
            }
        }
    }

    /// The record's phase.
    ///
    /// # Errors
    /// When the phase name is unknown.
    pub fn phase(&self) -> Result<Phase, RecordError> {
        Phase::from_name(&self.phase)
            .ok_or_else(|| RecordError::Invalid(format!("unknown phase {:?}", self.phase)))
    }

    /// Captures the machine's state and memory.
    #[must_use]
    pub fn capture(machine: &Machine) -> Record {
        let state = machine.state();
        let inner: &RunnerMachine = machine.inner();
        let mut record = Record::of_memory(&inner.runner, state, &inner.memory);
        record.set_state(state);
        record
    }

    /// The record of the machine's memory; the fields of a state left empty.
    fn of_memory(runner: &str, state: &State, memory: &Memory) -> Record {
        Record {
            schema_version: SCHEMA_VERSION,
            runner: runner.to_owned(),
            phase: phase_of(state).name().to_owned(),
            since: memory.since.0,
            attempt: attempt_of(state).map(attempt_record),
            lock_epoch: None,
            baseline: None,
            new_task_definition_arn: None,
            deployment_id: None,
            service_deployment_arn: None,
            deadline: None,
            soak_until: None,
            rollback_issued: false,
            failure: None,
            attempts_started: memory.attempts_started,
            failed: memory
                .failed
                .iter()
                .map(|m| FailedRecord {
                    version: m.version.clone(),
                    image: m.image.clone(),
                    reason: m.reason.clone(),
                    at: m.at.0,
                    infra: m.infra.clone(),
                })
                .collect(),
            note: memory.note.as_ref().map(|n| NoteRecord {
                code: n.code.to_string(),
                message: n.message.clone(),
                at: n.at.0,
            }),
            verdict: memory
                .verdict
                .iter()
                .flat_map(|v| &v.outcomes)
                .map(|o| RuleRecord {
                    rule: Cow::Borrowed(o.rule.name()),
                    passed: o.passed,
                    reason: o.reason.clone(),
                })
                .collect(),
            transitions: memory
                .history
                .iter()
                .map(|t| TransitionRecord {
                    from: t.from.name().to_owned(),
                    to: t.to.name().to_owned(),
                    at: t.at.0,
                    attempt: t.attempt_id.clone(),
                    note: t.note.clone(),
                })
                .collect(),
            last_success: memory.last_success.map(|m| m.0),
            traceparent: memory.traceparent.clone(),
            change_set: None,
            infra_applied: memory.infra_applied.clone(),
            service_after: None,
            desired: memory.seen.as_ref().map(|seen| DesiredSeenRecord {
                source: if seen.channel {
                    "channel"
                } else if seen.release {
                    "release"
                } else {
                    "parameters"
                }
                .to_owned(),
                ignored: seen.ignored.clone(),
                image: seen.image.as_ref().map(|(desired, _)| desired.clone()),
                running_image: seen.image.as_ref().map(|(_, running)| running.clone()),
            }),
            retries: memory.retries.clone(),
        }
    }

    /// The fields of a state, field by field.
    fn set_state(&mut self, state: &State) {
        match state {
            State::Idle {} | State::Checking { .. } => {}
            State::Locked { epoch, .. } => self.lock_epoch = Some(*epoch),
            State::CreatingChangeSet { run, step }
            | State::AwaitingApproval { run, step }
            | State::ExecutingChangeSet { run, step } => self.set_step(run, step),
            State::RegisteringTaskDefinition { run } => self.set_run(run),
            State::UpdatingService { run, new_td } => {
                self.set_run(run);
                self.new_task_definition_arn = Some(new_td.clone());
            }
            State::AwaitingRollout { gate } => self.set_gate(gate),
            State::Done { run, gate } => match gate {
                Some(gate) => self.set_gate(gate),
                None => self.set_run(run),
            },
            State::Soaking { gate, until } => {
                self.set_gate(gate);
                self.soak_until = Some(until.0);
            }
            State::RollingBack {
                run,
                failure,
                deadline,
                issued,
            } => {
                self.set_run(run);
                self.failure = Some(FailureRecord::of(failure));
                self.deadline = Some(deadline.0);
                self.rollback_issued = *issued;
            }
            State::RolledBack {
                run,
                failure,
                service,
            } => {
                self.set_run(run);
                self.failure = Some(FailureRecord::of(failure));
                self.service_after = match service {
                    ServiceAfter::Untouched => Some(ServiceAfterRecord::Untouched),
                    ServiceAfter::Restored => Some(ServiceAfterRecord::Restored),
                    ServiceAfter::Unconfirmed => Some(ServiceAfterRecord::Unconfirmed),
                    ServiceAfter::Foreign(arn) => Some(ServiceAfterRecord::Foreign {
                        task_definition_arn: arn.clone(),
                    }),
                    ServiceAfter::Unknown => None,
                };
            }
        }
    }

    fn set_run(&mut self, run: &Run) {
        self.lock_epoch = Some(run.epoch);
        self.baseline = Some(BaselineRecord {
            task_definition_arn: run.baseline.task_definition_arn.clone(),
            deployment_ids: run.baseline.deployment_ids.clone(),
        });
    }

    fn set_gate(&mut self, gate: &Gate) {
        self.set_run(&gate.run);
        self.new_task_definition_arn = Some(gate.new_task_definition_arn.clone());
        self.deployment_id = Some(gate.deployment_id.clone());
        self.service_deployment_arn
            .clone_from(&gate.service_deployment);
        self.deadline = Some(gate.deadline.0);
    }

    fn set_step(&mut self, run: &Run, step: &ChangeSetStep) {
        self.set_run(run);
        self.deadline = Some(step.deadline.0);
        self.change_set = Some(ChangeSetRecord {
            stack: step.stack.clone(),
            name: step.name.clone(),
            id: step.id.clone(),
            done: step.done.clone(),
            review: step.review.as_ref().map(ReviewRecord::from),
            updated: step.updated,
        });
    }

    /// Rebuilds the machine's shared storage and state from the record.
    ///
    /// # Errors
    /// [`RecordError::Invalid`] when a field the phase needs is missing or malformed.
    pub fn restore(&self, settings: Settings) -> Result<(RunnerMachine, State), RecordError> {
        let phase = self.phase()?;
        let memory = self.memory()?;
        let machine = RunnerMachine::with_memory(&self.runner, settings, memory);
        Ok((machine, self.state(phase)?))
    }

    /// The state of `phase`, from the fields it needs.
    fn state(&self, phase: Phase) -> Result<State, RecordError> {
        Ok(match phase {
            Phase::Idle => State::Idle {},
            Phase::Checking => State::Checking {
                attempt: self.attempt()?,
            },
            Phase::Locked => State::Locked {
                attempt: self.attempt()?,
                epoch: self.epoch()?,
            },
            Phase::CreatingChangeSet => State::CreatingChangeSet {
                run: self.run()?,
                step: self.step()?,
            },
            Phase::AwaitingApproval => State::AwaitingApproval {
                run: self.run()?,
                step: self.step()?,
            },
            Phase::ExecutingChangeSet => State::ExecutingChangeSet {
                run: self.run()?,
                step: self.step()?,
            },
            Phase::RegisteringTaskDefinition => {
                State::RegisteringTaskDefinition { run: self.run()? }
            }
            Phase::UpdatingService => State::UpdatingService {
                run: self.run()?,
                new_td: self.new_td()?,
            },
            Phase::AwaitingRollout => State::AwaitingRollout { gate: self.gate()? },
            Phase::Soaking => State::Soaking {
                gate: self.gate()?,
                until: Millis(*need(self.soak_until.as_ref(), "soak_until")?),
            },
            Phase::RollingBack => State::RollingBack {
                run: self.run()?,
                failure: self.failure()?,
                deadline: self.deadline()?,
                issued: self.rollback_issued,
            },
            Phase::Done => State::Done {
                run: self.run()?,
                gate: if self.new_task_definition_arn.is_some() {
                    Some(self.gate()?)
                } else {
                    None
                },
            },
            Phase::RolledBack => State::RolledBack {
                run: self.run()?,
                failure: self.failure()?,
                service: self.service_after(),
            },
        })
    }

    fn attempt(&self) -> Result<Attempt, RecordError> {
        parse_attempt(need(self.attempt.as_ref(), "attempt")?)
    }

    fn epoch(&self) -> Result<u64, RecordError> {
        need(self.lock_epoch.as_ref(), "lock_epoch").copied()
    }

    fn run(&self) -> Result<Run, RecordError> {
        let baseline = need(self.baseline.as_ref(), "baseline")?;
        Ok(Run {
            attempt: self.attempt()?,
            epoch: self.epoch()?,
            baseline: Baseline {
                task_definition_arn: baseline.task_definition_arn.clone(),
                deployment_ids: baseline.deployment_ids.clone(),
            },
        })
    }

    fn new_td(&self) -> Result<String, RecordError> {
        need(
            self.new_task_definition_arn.as_ref(),
            "new_task_definition_arn",
        )
        .cloned()
    }

    fn deadline(&self) -> Result<Millis, RecordError> {
        need(self.deadline.as_ref(), "deadline").map(|d| Millis(*d))
    }

    fn gate(&self) -> Result<Gate, RecordError> {
        Ok(Gate {
            run: self.run()?,
            new_task_definition_arn: self.new_td()?,
            deployment_id: need(self.deployment_id.as_ref(), "deployment_id")?.clone(),
            service_deployment: self.service_deployment_arn.clone(),
            deadline: self.deadline()?,
        })
    }

    fn failure(&self) -> Result<Failure, RecordError> {
        let f = need(self.failure.as_ref(), "failure")?;
        Ok(Failure {
            code: Code::parse(&f.code),
            reason: f.reason.clone(),
        })
    }

    fn step(&self) -> Result<ChangeSetStep, RecordError> {
        let c = need(self.change_set.as_ref(), "change_set")?;
        Ok(ChangeSetStep {
            stack: c.stack.clone(),
            name: c.name.clone(),
            id: c.id.clone(),
            done: c.done.clone(),
            review: c.review.as_ref().map(Review::from),
            deadline: self.deadline()?,
            updated: c.updated,
        })
    }

    fn service_after(&self) -> ServiceAfter {
        match &self.service_after {
            Some(ServiceAfterRecord::Untouched) => ServiceAfter::Untouched,
            Some(ServiceAfterRecord::Restored) => ServiceAfter::Restored,
            Some(ServiceAfterRecord::Unconfirmed) => ServiceAfter::Unconfirmed,
            Some(ServiceAfterRecord::Foreign {
                task_definition_arn,
            }) => ServiceAfter::Foreign(task_definition_arn.clone()),
            None => ServiceAfter::Unknown,
        }
    }

    fn memory(&self) -> Result<Memory, RecordError> {
        let history = self
            .transitions
            .iter()
            .map(|t| {
                Ok(TransitionEntry {
                    from: phase_named(&t.from)?,
                    to: phase_named(&t.to)?,
                    at: Millis(t.at),
                    attempt_id: t.attempt.clone(),
                    note: t.note.clone(),
                })
            })
            .collect::<Result<VecDeque<_>, RecordError>>()?;
        let outcomes = self
            .verdict
            .iter()
            .map(|r| {
                let rule = Rule::from_name(&r.rule)
                    .ok_or_else(|| RecordError::Invalid(format!("unknown rule {:?}", r.rule)))?;
                Ok(RuleOutcome {
                    rule,
                    passed: r.passed,
                    reason: r.reason.clone(),
                })
            })
            .collect::<Result<Vec<_>, RecordError>>()?;
        Ok(Memory {
            failed: self
                .failed
                .iter()
                .map(|f| FailedMark {
                    version: f.version.clone(),
                    image: f.image.clone(),
                    reason: f.reason.clone(),
                    at: Millis(f.at),
                    infra: f.infra.clone(),
                })
                .collect(),
            history,
            note: self.note.as_ref().map(|n| Note {
                code: Code::parse(&n.code),
                message: n.message.clone(),
                at: Millis(n.at),
            }),
            verdict: (!outcomes.is_empty()).then_some(Verdict { outcomes }),
            attempts_started: self.attempts_started,
            since: Millis(self.since),
            last_success: self.last_success.map(Millis),
            traceparent: self.traceparent.clone(),
            infra_applied: self.infra_applied.clone(),
            seen: self.desired.as_ref().map(|seen| DesiredSeen {
                release: seen.source == "release",
                channel: seen.source == "channel",
                ignored: seen.ignored.clone(),
                image: seen.image.clone().zip(seen.running_image.clone()),
            }),
            retries: self.retries.clone(),
        })
    }
}

fn shorten(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max.saturating_sub(1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
}

fn need<'a, T>(field: Option<&'a T>, name: &str) -> Result<&'a T, RecordError> {
    field.ok_or_else(|| RecordError::Invalid(format!("{name} is missing")))
}

fn phase_named(name: &str) -> Result<Phase, RecordError> {
    Phase::from_name(name).ok_or_else(|| RecordError::Invalid(format!("unknown phase {name:?}")))
}

fn attempt_record(attempt: &Attempt) -> AttemptRecord {
    AttemptRecord {
        id: attempt.id.clone(),
        target_version: attempt.target_version.to_string(),
        target_image: attempt.target_image.to_string(),
        from_version: attempt.from_version.as_ref().map(ToString::to_string),
        from_image: attempt.from_image.to_string(),
        started_at: attempt.started_at.0,
        kind: match attempt.kind {
            AttemptKind::Runner => "runner",
            AttemptKind::InfrastructureOnly => "infrastructure",
        }
        .to_owned(),
        infra: attempt.infra.clone(),
        infra_version: attempt.infra_version.clone(),
    }
}

fn parse_attempt(record: &AttemptRecord) -> Result<Attempt, RecordError> {
    let version = |text: &str| {
        Version::parse(text).map_err(|e| RecordError::Invalid(format!("attempt version: {e}")))
    };
    let image = |text: &str| {
        ImageRef::parse(text).map_err(|e| RecordError::Invalid(format!("attempt image: {e}")))
    };
    Ok(Attempt {
        id: record.id.clone(),
        target_version: version(&record.target_version)?,
        target_image: image(&record.target_image)?,
        from_version: record.from_version.as_deref().map(version).transpose()?,
        from_image: image(&record.from_image)?,
        started_at: Millis(record.started_at),
        kind: match record.kind.as_str() {
            "runner" => AttemptKind::Runner,
            "infrastructure" => AttemptKind::InfrastructureOnly,
            other => {
                return Err(RecordError::Invalid(format!(
                    "unknown attempt kind {other:?}"
                )))
            }
        },
        infra: record.infra.clone(),
        infra_version: record.infra_version.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_naming_another_runner_or_holding_its_attempt_is_invalid() {
        let machine = crate::machine::restore(
            RunnerMachine::new("runner-b", Settings::default()),
            State::Idle {},
            &mut crate::machine::Ctx::default(),
        );
        let text = Record::capture(&machine).encode().unwrap();
        assert!(Record::decode(&text, "runner-b").is_ok());
        let refused = Record::decode(&text, "runner-a").unwrap_err();
        assert_eq!(refused.code(), Code::RecordInvalid);
        assert!(
            refused.to_string().contains("names runner \"runner-b\""),
            "{refused}"
        );
        // "runner-a" is a prefix of "runner-a-b": the attempt id's shape decides.
        for (id, runner, ours) in [
            ("runner-a-3-66f0c1", "runner-a", true),
            ("runner-a-b-3-66f0c1", "runner-a", false),
            ("runner-a-b-3-66f0c1", "runner-a-b", true),
            ("runner-b-3-66f0c1", "runner-a", false),
            ("runner-a-3-", "runner-a", false),
            ("runner-a--66f0c1", "runner-a", false),
            ("runner-a", "runner-a", false),
        ] {
            assert_eq!(attempt_of_runner(id, runner), ours, "{id} of {runner}");
        }
    }

    /// The most acknowledged retries and a verdict of every rule with long reasons.
    fn retries_and_verdict(big: &mut Record) {
        for n in 0..crate::domain::retry::RETRIES_KEPT {
            big.retries
                .push(format!("channel-stable-{}-{n:08x}", "19a1dec0aa9"));
        }
        big.verdict = crate::domain::eligibility::Rule::ALL
            .iter()
            .map(|rule| RuleRecord {
                rule: Cow::Borrowed(rule.name()),
                passed: false,
                reason: Cow::Owned("z".repeat(300)),
            })
            .collect();
    }

    #[test]
    fn truncated_corrupt_and_newer_records_are_named() {
        let machine = crate::machine::restore(
            RunnerMachine::new("runner-a", Settings::default()),
            State::Idle {},
            &mut crate::machine::Ctx::default(),
        );
        let text = Record::capture(&machine).encode().unwrap();
        assert!(Record::decode(&text, "runner-a").is_ok());
        assert_eq!(
            Record::decode(&text[..text.len() / 2], "runner-a")
                .unwrap_err()
                .code(),
            Code::RecordCorrupt
        );
        assert_eq!(
            Record::decode("\u{0}garbage", "runner-a")
                .unwrap_err()
                .code(),
            Code::RecordCorrupt
        );
        let newer = text.replace("\"schema_version\":1", "\"schema_version\":99");
        assert_eq!(
            Record::decode(&newer, "runner-a").unwrap_err(),
            RecordError::NewerSchema { found: 99 }
        );
        let mut big = Record::decode(&text, "runner-a").unwrap();
        for i in 0..40 {
            big.transitions.push(TransitionRecord {
                from: "idle".to_owned(),
                to: "checking".to_owned(),
                at: i,
                attempt: Some("runner-a-1-abc".to_owned()),
                note: Some("x".repeat(400)),
            });
        }
        for n in 0..crate::machine::FAILED_MARKS_MAX {
            big.failed.push(FailedRecord {
                version: format!("2.15.{n}"),
                image: format!("registry.example/runner:2.15.{n}"),
                reason: "y".repeat(2000),
                at: 1,
                infra: Some("0123456789abcdef".to_owned()),
            });
        }
        let long = |n: usize| {
            (0..n)
                .map(|i| format!("{}{i}", "L".repeat(62)))
                .collect::<Vec<_>>()
        };
        big.change_set = Some(ChangeSetRecord {
            stack: "runner-a-main".to_owned(),
            name: "ru-runner-a-1-67c2dd20-runner-a-main".to_owned(),
            id: Some(format!(
                "arn:aws:cloudformation:eu-west-1:123456789012:changeSet/{}",
                "x".repeat(100)
            )),
            done: vec!["runner-a-iam".to_owned()],
            review: Some(ReviewRecord {
                added: 40,
                modified: 30,
                removed: 2,
                replaced: long(9),
                iam: long(9),
                parameters: long(9),
                warnings: vec!["w".repeat(200)],
            }),
            updated: false,
        });
        retries_and_verdict(&mut big);
        let fitted = big.encode_within(4096).unwrap();
        assert!(fitted.len() <= 4096);
        let back = Record::decode(&fitted, "runner-a").unwrap();
        assert_eq!(
            back.failed.len(),
            crate::machine::FAILED_MARKS_MAX,
            "quarantine marks are never dropped"
        );
        assert!(back.transitions.len() >= 3);
        assert_eq!(
            back.retries.len(),
            crate::domain::retry::RETRIES_KEPT,
            "retries acknowledged are never dropped"
        );
        let review = back.change_set.unwrap().review.unwrap();
        assert_eq!(
            (review.added, review.removed, review.iam.len()),
            (40, 2, 9),
            "what decides the policy stays"
        );
        assert!(
            !review.replaced.is_empty(),
            "a replacement is still visible"
        );
        let mut invalid = Record::decode(&text, "runner-a").unwrap();
        invalid.phase = "soaking".to_owned();
        assert_eq!(
            invalid.restore(Settings::default()).unwrap_err().code(),
            Code::RecordInvalid
        );
    }

    /// Capture → encode → decode → restore → capture gives back the same record, codes included:
    /// a plain code, a rule's name and a code this build does not know (written by a newer one).
    #[test]
    fn records_keep_every_kind_of_code_across_a_restore() {
        use crate::machine::transition_tests::{baseline_service, desired, seen, Drive};
        use crate::machine::{restore, Ctx, Event, FailureClass};
        let round_trip = |record: &Record| {
            let text = record.encode().unwrap();
            let (shared, state) = Record::decode(&text, "runner-a")
                .unwrap()
                .restore(Settings::default())
                .unwrap();
            let machine = restore(shared, state, &mut Ctx::default());
            (Record::capture(&machine), machine)
        };
        // A failure (`circuit-breaker`), its note.
        let mut drive = Drive::to_rolling_back();
        drive.send(Event::CommandFailed {
            command: "roll_back_service",
            class: FailureClass::Permanent,
            message: "AccessDenied".to_owned(),
        });
        let record = Record::capture(&drive.machine);
        assert_eq!(record.failure.as_ref().unwrap().code, "circuit-breaker");
        let (again, machine) = round_trip(&record);
        assert_eq!(again, record);
        assert!(matches!(
            machine.state(),
            State::RolledBack { failure, .. } if failure.code == Code::CircuitBreaker
        ));
        // Codes from a newer controller: kept as written.
        let mut newer = record.clone();
        newer.failure.as_mut().unwrap().code = "a-code-from-the-future".to_owned();
        newer.note.as_mut().unwrap().code = "another-new-code".to_owned();
        let (again, machine) = round_trip(&newer);
        assert_eq!(again, newer);
        assert!(matches!(
            machine.state(),
            State::RolledBack { failure, .. }
                if failure.code == Code::Other("a-code-from-the-future".to_owned())
        ));
        // A rule's name as a note's code.
        let mut held = Drive::new();
        let mut off = desired();
        off.auto_update = false;
        assert_eq!(
            held.send(seen(off, baseline_service(), vec![]))
                .note
                .as_deref(),
            Some("auto-update")
        );
        let record = Record::capture(&held.machine);
        let (again, machine) = round_trip(&record);
        assert_eq!(again, record);
        assert_eq!(
            machine.inner().memory.note.as_ref().map(|n| n.code.clone()),
            Some(Code::Ineligible(
                crate::domain::eligibility::Rule::AutoUpdate
            ))
        );
    }
}
