//! What on-call reads: `status` (from the persisted record alone — it works without the
//! controller running) and `plan` (a dry run of the eligibility rules). Pure rendering.

use std::fmt::Write;

use serde::Serialize;

use runner_updater_core::domain::code::Code;
use runner_updater_core::domain::desired::DesiredSource;
use runner_updater_core::domain::eligibility::{evaluate, EligibilityInput, FailedMark, Rule};
use runner_updater_core::domain::Millis;
use runner_updater_core::machine::phase::Phase;
use runner_updater_core::machine::Observation;
use runner_updater_core::record::{DesiredSeenRecord, Record, RuleRecord, ServiceAfterRecord};

/// One runner's status, for humans and for `--json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusView {
    /// Runner.
    pub runner: String,
    /// Top-level state (the card's name).
    pub state: String,
    /// Sub-state (phase).
    pub phase: String,
    /// Since (RFC 3339).
    pub since: String,
    /// Attempt id.
    pub attempt: Option<String>,
    /// Version before the attempt.
    pub from_version: Option<String>,
    /// Target version.
    pub target_version: Option<String>,
    /// Target image.
    pub target_image: Option<String>,
    /// The attempt ended in `RolledBack`: its target is not what runs (see `running`).
    pub target_failed: bool,
    /// What the service runs, when the attempt is over (Done, `RolledBack`); `None` during an
    /// attempt (it is moving) or without one.
    pub running: Option<RunningView>,
    /// Why it is where it is (code and words).
    pub reason_code: Option<String>,
    /// Reason.
    pub reason: Option<String>,
    /// What happens next.
    pub next_step: String,
    /// Trace id of the attempt (from the persisted traceparent).
    pub trace_id: Option<String>,
    /// Lock fencing token held by the attempt.
    pub lock_epoch: Option<u64>,
    /// The change set in progress: stack, name and review.
    pub change_set: Option<String>,
    /// What the last pass at rest saw of the desired state: the release document in use (and
    /// the `desired/*` it made ignored), a desired image that is not the running one.
    pub desired: Option<DesiredSeenRecord>,
    /// Who holds the runner's lease now (read from SSM by `status`, not from the record).
    pub lease: LeaseView,
    /// Its channel's release and its wave, when the channel has one (read by `status` from
    /// SSM and the channel's record).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<RunnerReleaseView>,
    /// The full record (`None` when it cannot be read: see the reason).
    pub record: Option<Record>,
}

/// A runner's place in its channel's release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunnerReleaseView {
    /// The channel.
    pub channel: String,
    /// The release's version.
    pub version: String,
    /// The runner's wave (1-based) and the release's waves.
    pub wave: usize,
    /// The waves.
    pub waves: usize,
    /// `following` (its desired state is the release), `waiting` (its wave has not come, or
    /// the release halted or is refused), `pinned` (its own `release` or `desired/*` wins).
    pub standing: String,
}

impl RunnerReleaseView {
    /// The table's short form: `2.14.0 w2/3`, `pinned`.
    #[must_use]
    pub fn short(&self) -> String {
        match self.standing.as_str() {
            "pinned" => "pinned".to_owned(),
            "waiting" => format!("{} w{}/{} waits", self.version, self.wave, self.waves),
            _ => format!("{} w{}/{}", self.version, self.wave, self.waves),
        }
    }
}

/// What the service runs after an attempt, as far as the record tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunningView {
    /// The version, when known.
    pub version: Option<String>,
    /// The task definition, when known.
    pub task_definition_arn: Option<String>,
    /// Its revision (the ARN's last number).
    pub revision: Option<u64>,
    /// `healthy` (confirmed by the health gate, or by the rollback's completed deployment),
    /// `unchanged` (the attempt never changed the service: what ran before runs on) or
    /// `unknown`.
    pub health: &'static str,
    /// In words: `2.13.0 (rev 41), healthy: …`.
    pub summary: String,
}

impl RunningView {
    /// The table's short form: `2.13.0 healthy`, `unknown`.
    #[must_use]
    pub fn short(&self) -> String {
        match (&self.version, self.revision) {
            (Some(version), _) => format!("{version} {}", self.health),
            (None, Some(revision)) if self.health != "unknown" => {
                format!("rev {revision} {}", self.health)
            }
            _ => "unknown".to_owned(),
        }
    }
}

/// The revision of a task-definition ARN (`…:task-definition/family:41` → 41).
fn revision(arn: &str) -> Option<u64> {
    arn.rsplit_once(':').and_then(|(_, r)| r.parse().ok())
}

/// `2.13.0 (rev 41)`, or what is known of it.
fn version_and_revision(version: Option<&str>, arn: Option<&str>) -> String {
    let revision = arn.and_then(revision).map(|r| format!("rev {r}"));
    match (version, revision) {
        (Some(v), Some(r)) => format!("{v} ({r})"),
        (Some(v), None) => v.to_owned(),
        (None, Some(r)) => format!("version unknown ({r})"),
        (None, None) => "version unknown".to_owned(),
    }
}

/// What runs once the attempt is over: Done runs the target (what it registered, or the
/// baseline when only infrastructure changed); `RolledBack` runs what the record says the
/// attempt left.
fn running_view(record: &Record, phase: Option<Phase>) -> Option<RunningView> {
    let attempt = record.attempt.as_ref()?;
    let baseline = record
        .baseline
        .as_ref()
        .map(|b| b.task_definition_arn.as_str());
    let from = attempt.from_version.as_deref();
    let view =
        |version: Option<&str>, arn: Option<&str>, health: &'static str, why: &str| RunningView {
            version: version.map(str::to_owned),
            task_definition_arn: arn.map(str::to_owned),
            revision: arn.and_then(revision),
            health,
            summary: format!("{}, {health}: {why}", version_and_revision(version, arn)),
        };
    match phase? {
        Phase::Done => Some(match record.new_task_definition_arn.as_deref() {
            Some(arn) => view(
                Some(&attempt.target_version),
                Some(arn),
                "healthy",
                "it passed the health gate and the soak",
            ),
            None => view(
                from,
                baseline,
                "unchanged",
                "only the infrastructure was updated",
            ),
        }),
        Phase::RolledBack => Some(match &record.service_after {
            Some(ServiceAfterRecord::Restored) => view(
                from,
                baseline,
                "healthy",
                "the rollback's deployment COMPLETED with every task running",
            ),
            Some(ServiceAfterRecord::Untouched) => view(
                from,
                baseline,
                "unchanged",
                "this attempt never changed the service",
            ),
            Some(ServiceAfterRecord::Unconfirmed) => RunningView {
                version: None,
                task_definition_arn: None,
                revision: None,
                health: "unknown",
                summary: format!(
                    "unknown: the rollback to {} was not confirmed; check the service",
                    version_and_revision(from, baseline)
                ),
            },
            Some(ServiceAfterRecord::Foreign {
                task_definition_arn,
            }) => view(
                None,
                Some(task_definition_arn),
                "unknown",
                &format!("{task_definition_arn}, set by someone else after the rollback"),
            ),
            None => RunningView {
                version: None,
                task_definition_arn: None,
                revision: None,
                health: "unknown",
                summary: "unknown: not recorded (a record written by an older controller)"
                    .to_owned(),
            },
        }),
        _ => None,
    }
}

/// The runner's lease as `status` found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "detail", rename_all = "kebab-case")]
pub enum LeaseView {
    /// A live lease, by this holder.
    Held(String),
    /// No live lease.
    Free,
    /// Not read, and why (the file store is read without AWS; SSM could not be read).
    NotRead(String),
}

impl LeaseView {
    /// A short form for the table.
    #[must_use]
    pub fn short(&self) -> &str {
        match self {
            LeaseView::Held(holder) => holder,
            LeaseView::Free => "free",
            LeaseView::NotRead(_) => "?",
        }
    }
}

/// Builds the status of one record.
#[must_use]
pub fn status_view(record: &Record) -> StatusView {
    let phase = record.phase().ok();
    let attempt = record.attempt.as_ref();
    let (reason_code, reason) = match (&record.failure, &record.note) {
        (Some(f), _) if matches!(phase, Some(Phase::RollingBack | Phase::RolledBack)) => {
            (Some(f.code.clone()), Some(f.reason.clone()))
        }
        (_, Some(n)) => (Some(n.code.clone()), Some(n.message.clone())),
        _ => (None, None),
    };
    StatusView {
        runner: record.runner.clone(),
        state: phase
            .map_or("Unknown", |p| p.top_level().title())
            .to_owned(),
        phase: record.phase.clone(),
        // A runner that never made a transition has no "since" (not the epoch).
        since: if record.since == 0 {
            "-".to_owned()
        } else {
            Millis(record.since).to_string()
        },
        attempt: attempt.map(|a| a.id.clone()),
        from_version: attempt.and_then(|a| a.from_version.clone()),
        target_version: attempt.map(|a| a.target_version.clone()),
        target_image: attempt.map(|a| a.target_image.clone()),
        target_failed: phase == Some(Phase::RolledBack),
        running: running_view(record, phase),
        reason_code,
        reason,
        next_step: next_step(record, phase),
        trace_id: record
            .traceparent
            .as_deref()
            .and_then(|t| t.split('-').nth(1))
            .map(str::to_owned),
        lock_epoch: record.lock_epoch,
        change_set: record.change_set.as_ref().map(|c| {
            let review = c.review.as_ref().map_or_else(
                || "not reviewed yet".to_owned(),
                |r| runner_updater_core::domain::infra::Review::from(r).summary(),
            );
            let done = if c.done.is_empty() {
                String::new()
            } else {
                format!("; done before: {}", c.done.join(", "))
            };
            format!("{} on stack {}: {review}{done}", c.name, c.stack)
        }),
        desired: record.desired.clone(),
        lease: LeaseView::NotRead("not read".to_owned()),
        release: None,
        record: Some(record.clone()),
    }
}

/// The status of a runner whose record cannot be read (corrupt, truncated, from a newer
/// controller): the controller does nothing to that runner until ops mend it.
#[must_use]
pub fn unreadable_view(runner: &str, prefix: &str, code: &Code, reason: &str) -> StatusView {
    StatusView {
        runner: runner.to_owned(),
        state: "Unreadable".to_owned(),
        phase: "-".to_owned(),
        since: "-".to_owned(),
        attempt: None,
        from_version: None,
        target_version: None,
        target_image: None,
        target_failed: false,
        running: None,
        reason_code: Some(code.to_string()),
        reason: Some(reason.to_owned()),
        next_step: format!(
            "nothing: the controller leaves {runner} alone until its record ({prefix}/{runner}/status) is mended, or deleted to start afresh (see the runbook)"
        ),
        trace_id: None,
        lock_epoch: None,
        change_set: None,
        desired: None,
        lease: LeaseView::NotRead("not read".to_owned()),
        release: None,
        record: None,
    }
}

/// The status of a configured runner without a record: the controller has not written one
/// (it has not run for it, or another controller holds the runner's lease: see the lease).
#[must_use]
pub fn no_record_view(runner: &str) -> StatusView {
    StatusView {
        runner: runner.to_owned(),
        state: "NoRecord".to_owned(),
        phase: "-".to_owned(),
        since: "-".to_owned(),
        attempt: None,
        from_version: None,
        target_version: None,
        target_image: None,
        target_failed: false,
        running: None,
        reason_code: Some(Code::NoRecord.to_string()),
        reason: Some("no record has been written for this runner yet".to_owned()),
        next_step: "wait for the controller's first pass (if the lease is held by someone else, or unreadable, see the lease)".to_owned(),
        trace_id: None,
        lock_epoch: None,
        change_set: None,
        desired: None,
        lease: LeaseView::NotRead("not read".to_owned()),
        release: None,
        record: None,
    }
}

fn next_step(record: &Record, phase: Option<Phase>) -> String {
    let at = |ms: Option<u64>| ms.map_or_else(|| "?".to_owned(), |m| Millis(m).to_string());
    let target = record
        .attempt
        .as_ref()
        .map_or("?", |a| a.target_version.as_str());
    match phase {
        None => format!(
            "unknown phase {:?}: the record needs attention",
            record.phase
        ),
        Some(Phase::Idle) => match &record.note {
            Some(note) => format!("polling; not updating because {}", note.message),
            None => "polling for a new desired version".to_owned(),
        },
        Some(Phase::Checking) => format!("taking the lock for {target}"),
        Some(Phase::Locked) => "re-checking eligibility under the lock".to_owned(),
        Some(Phase::CreatingChangeSet) => format!(
            "waiting for CloudFormation to compute change set {} (deadline {})",
            record.change_set.as_ref().map_or("?", |c| c.name.as_str()),
            at(record.deadline)
        ),
        Some(Phase::AwaitingApproval) => format!(
            "waiting for approval: review change set {} on stack {}, then run `runner-updater approve {}` (or switch desired/auto-update off to cancel)",
            record.change_set.as_ref().map_or("?", |c| c.name.as_str()),
            record.change_set.as_ref().map_or("?", |c| c.stack.as_str()),
            record.runner
        ),
        Some(Phase::ExecutingChangeSet) => format!(
            "waiting for stack {} to be UPDATE_COMPLETE (slow after {})",
            record.change_set.as_ref().map_or("?", |c| c.stack.as_str()),
            at(record.deadline)
        ),
        Some(Phase::RegisteringTaskDefinition) => format!(
            "registering a task definition cloned from {} with {}",
            record
                .baseline
                .as_ref()
                .map_or("?", |b| b.task_definition_arn.as_str()),
            record
                .attempt
                .as_ref()
                .map_or("?", |a| a.target_image.as_str())
        ),
        Some(Phase::UpdatingService) => format!(
            "pointing the service at {}",
            record.new_task_definition_arn.as_deref().unwrap_or("?")
        ),
        Some(Phase::AwaitingRollout) => format!(
            "waiting for deployment {} to complete healthy (deadline {})",
            record.deployment_id.as_deref().unwrap_or("?"),
            at(record.deadline)
        ),
        Some(Phase::Soaking) => format!("holding healthy until {}", at(record.soak_until)),
        Some(Phase::RollingBack) => format!(
            "restoring {} (deadline {})",
            record
                .baseline
                .as_ref()
                .map_or("?", |b| b.task_definition_arn.as_str()),
            at(record.deadline)
        ),
        Some(Phase::Done) if record.new_task_definition_arn.is_none() => format!(
            "infrastructure {} is live; polling",
            record
                .attempt
                .as_ref()
                .and_then(|a| a.infra_version.as_deref())
                .unwrap_or("update")
        ),
        Some(Phase::Done) => format!("{target} is live; polling for the next version"),
        Some(Phase::RolledBack) => {
            let quarantined = record.attempt.as_ref().is_some_and(|a| {
                record
                    .failed
                    .iter()
                    .any(|f| f.version == a.target_version && f.image == a.target_image)
            });
            if quarantined {
                format!("{target} is quarantined; change desired/version or desired/image, or `runner-updater retry {}` to try it once more", record.runner)
            } else {
                format!("{target} is not quarantined (nothing was learnt about it): the next pass tries it again")
            }
        }
    }
}

/// The human status table, then a detail block per runner.
#[must_use]
pub fn render_status(views: &[StatusView], transitions_max: usize) -> String {
    if views.is_empty() {
        return "no runner has a record yet (has the controller run?)\n".to_owned();
    }
    let mut out = String::new();
    status_table(&mut out, views);
    for v in views {
        status_detail(&mut out, v, transitions_max);
    }
    out
}

/// One line per runner.
fn status_table(out: &mut String, views: &[StatusView]) {
    let releases = views.iter().any(|v| v.release.is_some());
    let release_column = |v: Option<&StatusView>| {
        if !releases {
            return String::new();
        }
        let text = v.map_or_else(
            || "RELEASE".to_owned(),
            |v| {
                v.release
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), RunnerReleaseView::short)
            },
        );
        format!("{text:<20} ")
    };
    let _ = writeln!(
        out,
        "{:<16} {:<12} {:<28} {:<22} {:<16} {:<18} {:<20} {}REASON",
        "RUNNER",
        "STATE",
        "PHASE",
        "SINCE",
        "TARGET",
        "RUNNING",
        "LEASE",
        release_column(None)
    );
    for v in views {
        let target = match (&v.target_version, v.target_failed) {
            (Some(target), true) => format!("{target} (failed)"),
            (Some(target), false) => target.clone(),
            (None, _) => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{:<16} {:<12} {:<28} {:<22} {:<16} {:<18} {:<20} {}{}",
            v.runner,
            v.state,
            v.phase,
            v.since,
            target,
            v.running
                .as_ref()
                .map_or_else(|| "-".to_owned(), RunningView::short),
            v.lease.short(),
            release_column(Some(v)),
            v.reason_code.as_deref().unwrap_or("-")
        );
    }
}

/// A runner's detail block: where it runs, what is next, why, its attempt, lease, quarantines
/// and last transitions.
fn status_detail(out: &mut String, v: &StatusView, transitions_max: usize) {
    let _ = writeln!(out, "\n{}", v.runner);
    if let Some(running) = &v.running {
        let _ = writeln!(out, "  running   : {}", running.summary);
    }
    let _ = writeln!(out, "  next step : {}", v.next_step);
    if let Some(release) = &v.release {
        let _ = writeln!(
            out,
            "  release   : channel {}'s {}, wave {} of {} ({})",
            release.channel, release.version, release.wave, release.waves, release.standing
        );
    }
    if let Some(reason) = &v.reason {
        let _ = writeln!(out, "  reason    : {reason}");
    }
    if let Some(desired) = &v.desired {
        for line in desired_lines(&v.runner, desired) {
            let _ = writeln!(out, "  {line}");
        }
    }
    if let Some(attempt) = &v.attempt {
        let _ = writeln!(
            out,
            "  attempt   : {attempt} ({} -> {})",
            v.from_version.as_deref().unwrap_or("unknown"),
            v.target_version.as_deref().unwrap_or("?")
        );
    }
    if let Some(change_set) = &v.change_set {
        let _ = writeln!(out, "  change set: {change_set}");
    }
    let _ = writeln!(
        out,
        "  trace id  : {}",
        v.trace_id.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        out,
        "  lock epoch: {}",
        v.lock_epoch
            .map_or_else(|| "-".to_owned(), |e| e.to_string())
    );
    let _ = writeln!(
        out,
        "  lease     : {}",
        match &v.lease {
            LeaseView::Held(holder) => format!("held by {holder}"),
            LeaseView::Free => "free".to_owned(),
            LeaseView::NotRead(why) => format!("not read ({why})"),
        }
    );
    let (failed, transitions) = v
        .record
        .as_ref()
        .map_or((&[][..], &[][..]), |r| (&r.failed[..], &r.transitions[..]));
    for failed in failed {
        let _ = writeln!(
            out,
            "  failed    : {} ({}) at {}: {}",
            failed.version,
            failed.image,
            Millis(failed.at),
            failed.reason
        );
    }
    if let Some(retries) = v
        .record
        .as_ref()
        .map(|r| &r.retries)
        .filter(|r| !r.is_empty())
    {
        let _ = writeln!(
            out,
            "  retries   : {} acknowledged (last {})",
            retries.len(),
            retries.last().map_or("", String::as_str)
        );
    }
    if !transitions.is_empty() {
        let _ = writeln!(out, "  last transitions:");
        for t in transitions.iter().rev().take(transitions_max).rev() {
            let note = t
                .note
                .as_deref()
                .map(|n| format!("  ({n})"))
                .unwrap_or_default();
            let _ = writeln!(out, "    {}  {} -> {}{note}", Millis(t.at), t.from, t.to);
        }
    }
}

/// The lines `status` shows about the desired state: a desired image that is not the running
/// one, whatever the rules decided (a divergence is never silent), and the release document in
/// use with the `desired/*` it made ignored.
fn desired_lines(runner: &str, desired: &DesiredSeenRecord) -> Vec<String> {
    let mut lines = Vec::new();
    if let (Some(image), Some(running)) = (&desired.image, &desired.running_image) {
        lines.push(format!("image     : desired {image}, running {running}"));
    }
    if desired.source == "release" {
        let ignored = if desired.ignored.is_empty() {
            String::new()
        } else {
            format!("; ignored: {}", desired.ignored.join(", "))
        };
        lines.push(format!("desired   : {runner}/release{ignored}"));
    }
    if desired.source == "channel" {
        lines.push("desired   : its channel's release (_channels/<channel>/release)".to_owned());
    }
    lines
}

/// A dry run's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanView {
    /// Runner.
    pub runner: String,
    /// The persisted phase.
    pub phase: String,
    /// Each rule (empty when the desired or observed state is unusable).
    pub rules: Vec<RuleRecord>,
    /// Why nothing can be evaluated, if so.
    pub blocked: Option<String>,
    /// Where the desired state comes from: `release` (the document) or `parameters`.
    pub source: Option<String>,
    /// The `desired/*` parameters ignored because the release document wins.
    pub ignored: Vec<String>,
    /// `desired X, running Y` when the desired image is not the running one.
    pub image: Option<String>,
    /// Why the controller waits for the desired state to settle (its last pass at rest, from
    /// the record).
    pub settling: Option<String>,
    /// What the controller would do next.
    pub next: String,
}

/// Evaluates the rules against a fresh observation, with the failed marks of the record.
#[must_use]
pub fn plan_view(
    runner: &str,
    record: Option<&Record>,
    observation: &Observation,
    channel: &str,
    now: Millis,
) -> PlanView {
    let phase = record.map_or_else(|| "idle".to_owned(), |r| r.phase.clone());
    let failed: Vec<FailedMark> = record
        .map(|r| {
            r.failed
                .iter()
                .map(|f| FailedMark {
                    version: f.version.clone(),
                    image: f.image.clone(),
                    reason: f.reason.clone(),
                    at: Millis(f.at),
                    infra: f.infra.clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut view = PlanView {
        runner: runner.to_owned(),
        phase: phase.clone(),
        rules: Vec::new(),
        blocked: None,
        source: None,
        ignored: Vec::new(),
        image: None,
        settling: record
            .and_then(|r| r.note.as_ref())
            .filter(|note| Code::parse(&note.code) == Code::Settling)
            .map(|note| note.message.clone()),
        next: String::new(),
    };
    let (desired, observed) = match (&observation.desired, &observation.observed) {
        (Ok(d), Ok(o)) => (d, o),
        (Err(e), _) => {
            view.blocked = Some(format!("{}: {e}", e.code()));
            view.next = "nothing: the desired state is invalid".to_owned();
            return view;
        }
        (_, Err(e)) => {
            view.blocked = Some(format!("{}: {e}", e.code()));
            view.next = "nothing: the runner cannot be observed".to_owned();
            return view;
        }
    };
    view.source = Some(
        match desired.source {
            DesiredSource::Release => "release",
            DesiredSource::Channel => "channel",
            DesiredSource::Parameters => "parameters",
        }
        .to_owned(),
    );
    view.ignored.clone_from(&desired.ignored);
    view.image = (desired.image != observed.running_image).then(|| {
        format!(
            "desired {}, running {}",
            desired.image, observed.running_image
        )
    });
    if desired.source != DesiredSource::Parameters {
        view.settling = None; // the document is acted on at once
    }
    let verdict = evaluate(EligibilityInput {
        desired,
        observed,
        controller_channel: channel,
        failed: &failed,
        now,
    });
    view.rules = verdict
        .outcomes
        .iter()
        .map(|o| RuleRecord {
            rule: o.rule.name().into(),
            passed: o.passed,
            reason: o.reason.clone(),
        })
        .collect();
    let resting = Phase::from_name(&phase).is_none_or(Phase::is_resting);
    view.next = if !resting {
        format!("continue the attempt in progress ({phase})")
    } else if verdict.eligible() && view.settling.is_some() {
        format!(
            "update to {} once the desired/* parameters settle (settle_secs)",
            desired.version
        )
    } else if verdict.eligible() {
        format!(
            "update {} -> {}: take the lock, register a task definition cloned from {} with image {}, update service {}/{} with the circuit breaker, gate on health",
            observed.current_version.as_ref().map_or_else(|| "unknown".to_owned(), ToString::to_string),
            desired.version,
            observed.service.task_definition_arn,
            desired.image,
            observed.service.cluster,
            observed.service.service
        )
    } else {
        match verdict.first_failure() {
            Some(failure) if failure.rule == Rule::UpdateWindow => format!(
                "update to {} once its update window opens: {}",
                desired.version, failure.reason
            ),
            first => format!(
                "nothing: rule {} fails",
                first.map_or(Rule::Channel, |o| o.rule)
            ),
        }
    };
    view
}

/// The human plan.
#[must_use]
pub fn render_plan(view: &PlanView) -> String {
    let mut out = format!("{} (persisted phase: {})\n", view.runner, view.phase);
    if let Some(blocked) = &view.blocked {
        let _ = writeln!(out, "  blocked: {blocked}");
    }
    if let Some(image) = &view.image {
        let _ = writeln!(out, "  image: {image}");
    }
    if view.source.as_deref() == Some("release") {
        let ignored = if view.ignored.is_empty() {
            String::new()
        } else {
            format!("; ignored: {}", view.ignored.join(", "))
        };
        let _ = writeln!(out, "  desired: {}/release{ignored}", view.runner);
    }
    if let Some(settling) = &view.settling {
        let _ = writeln!(out, "  settling: {settling}");
    }
    for (index, rule) in view.rules.iter().enumerate() {
        let mark = if rule.passed { "pass" } else { "FAIL" };
        let _ = writeln!(
            out,
            "  {}. {:<16} {mark}  {}",
            index + 1,
            rule.rule,
            rule.reason
        );
    }
    let _ = writeln!(out, "  next: {}", view.next);
    out
}
