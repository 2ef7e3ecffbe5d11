//! The machine's transitions, one path at a time, with the clock moving: the health gate and
//! its deadlines, the rollback and how it ends, the foreign writer, the infrastructure steps.
//! Each step says the phase reached, the commands asked for and the note's code.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::domain::desired::DesiredStack;
use crate::domain::infra::StackStatus;
use crate::domain::observed::{
    BreakerCount, Deployment, DeploymentStatus, ServiceDeployment, ServiceDeploymentStatus,
    ServiceState, StackState, Task, TaskStatus, INFRA_VERSION_TAG,
};

const START: Millis = Millis(1_740_823_200_000);
const BASE: &str = "td:1";
const NEW: &str = "td:2";
const SD: &str = "arn:aws:ecs:eu-west-1:123456789012:service-deployment/c/s/sd2";

pub(crate) fn desired() -> DesiredState {
    DesiredState {
        version: Version::parse("2.14.0").unwrap(),
        image: ImageRef::parse("registry.example/runner:2.14.0").unwrap(),
        image_given: true,
        channel: "stable".to_owned(),
        auto_update: true,
        infra_version: None,
        stacks: BTreeMap::new(),
        approved_change_set: None,
        update_windows: None,
        source: DesiredSource::Parameters,
        ignored: Vec::new(),
    }
}

/// Desired: infrastructure 2 for stack `main`, from a new template.
fn desired_with_infra() -> DesiredState {
    DesiredState {
        infra_version: Some("2".to_owned()),
        stacks: BTreeMap::from([(
            "main".to_owned(),
            DesiredStack {
                template_url: Some("https://bucket.example/main-2.json".to_owned()),
                parameters: BTreeMap::new(),
            },
        )]),
        ..desired()
    }
}

fn deployment(id: &str, status: DeploymentStatus, td: &str, state: RolloutState) -> Deployment {
    Deployment {
        id: id.to_owned(),
        status,
        task_definition_arn: td.to_owned(),
        rollout_state: state,
        rollout_reason: None,
        desired_count: 1,
        running_count: u32::from(state == RolloutState::Completed),
        failed_tasks: 0,
    }
}

/// The service as it is before the attempt: the baseline, steady.
pub(crate) fn baseline_service() -> ServiceState {
    service(
        BASE,
        vec![deployment(
            "ecs-svc/1",
            DeploymentStatus::Primary,
            BASE,
            RolloutState::Completed,
        )],
    )
}

fn service(td: &str, deployments: Vec<Deployment>) -> ServiceState {
    ServiceState {
        cluster: "c".to_owned(),
        service: "s".to_owned(),
        task_definition_arn: td.to_owned(),
        deployments,
        tasks: None,
        current_service_deployment: None,
    }
}

/// Our deployment in a given state, the baseline's draining beside it.
fn ours(state: RolloutState, failed_tasks: u32) -> ServiceState {
    let mut new = deployment("ecs-svc/2", DeploymentStatus::Primary, NEW, state);
    new.failed_tasks = failed_tasks;
    service(
        NEW,
        vec![
            new,
            deployment(
                "ecs-svc/1",
                DeploymentStatus::Active,
                BASE,
                RolloutState::Completed,
            ),
        ],
    )
}

fn stack(version: &str, status: StackStatus) -> StackState {
    StackState {
        name: "main".to_owned(),
        status,
        tags: BTreeMap::from([(INFRA_VERSION_TAG.to_owned(), version.to_owned())]),
        outputs: BTreeMap::new(),
        parameters: BTreeMap::new(),
        last_updated: None,
    }
}

pub(crate) fn seen(desired: DesiredState, service: ServiceState, stacks: Vec<StackState>) -> Event {
    Event::Observed(Box::new(Observation {
        desired: Ok(desired),
        observed: Ok(Observed {
            service,
            running_image: ImageRef::parse("registry.example/runner:2.13.0").unwrap(),
            current_version: Some(Version::parse("2.13.0").unwrap()),
            has_health_check: false,
            health_gated_by_ecs: false,
            stacks,
        }),
        settles_at: None,
        retries: Vec::new(),
    }))
}

/// What one step came to.
#[derive(Debug, PartialEq)]
pub(crate) struct Step {
    pub(crate) phase: Phase,
    pub(crate) commands: Vec<&'static str>,
    pub(crate) note: Option<String>,
}

/// A machine fed events while the clock moves.
pub(crate) struct Drive {
    pub(crate) machine: Machine,
    now: Millis,
}

impl Drive {
    pub(crate) fn new() -> Drive {
        let mut ctx = Ctx::default();
        Drive {
            machine: restore(
                RunnerMachine::new("runner-a", Settings::default()),
                State::Idle {},
                &mut ctx,
            ),
            now: START,
        }
    }

    fn wait(&mut self, duration: Duration) -> &mut Drive {
        self.now = self.now.after(duration);
        self
    }

    pub(crate) fn send(&mut self, event: Event) -> Step {
        let mut ctx = Ctx {
            now: self.now,
            ..Ctx::default()
        };
        self.machine.handle_with_context(
            &Input {
                now: self.now,
                event,
            },
            &mut ctx,
        );
        assert!(ctx.violations.is_empty(), "{:?}", ctx.violations);
        Step {
            phase: phase_of(self.machine.state()),
            commands: ctx.commands.iter().map(Command::name).collect(),
            note: self
                .machine
                .inner()
                .memory
                .note
                .as_ref()
                .map(|n| n.code.to_string()),
        }
    }

    fn phase(&self) -> Phase {
        phase_of(self.machine.state())
    }

    fn quarantined(&self) -> Vec<String> {
        self.machine
            .inner()
            .memory
            .failed
            .iter()
            .map(|m| m.version.clone())
            .collect()
    }

    fn service_after(&self) -> Option<ServiceAfter> {
        match self.machine.state() {
            State::RolledBack { service, .. } => Some(service.clone()),
            _ => None,
        }
    }

    fn failure_code(&self) -> Option<Code> {
        match self.machine.state() {
            State::RollingBack { failure, .. } | State::RolledBack { failure, .. } => {
                Some(failure.code.clone())
            }
            _ => None,
        }
    }

    /// From rest to `AwaitingRollout` on the forward path.
    fn to_the_gate() -> Drive {
        let mut drive = Drive::new();
        let at_rest = || seen(desired(), baseline_service(), vec![]);
        drive.send(at_rest());
        drive.send(Event::LockAcquired { epoch: 1 });
        drive.send(at_rest());
        drive.send(Event::TaskDefinitionRegistered {
            arn: NEW.to_owned(),
        });
        let step = drive.send(Event::ServiceUpdated {
            deployment_id: "ecs-svc/2".to_owned(),
            service_deployment: Some(SD.to_owned()),
        });
        assert_eq!(step.phase, Phase::AwaitingRollout);
        drive
    }

    /// From the gate to `RollingBack` on a circuit breaker's failure.
    pub(crate) fn to_rolling_back() -> Drive {
        let mut drive = Drive::to_the_gate();
        let step = drive.send(seen(desired(), ours(RolloutState::Failed, 0), vec![]));
        assert_eq!(step.phase, Phase::RollingBack);
        drive
    }
}

fn step(phase: Phase, commands: &[&'static str], note: Option<&str>) -> Step {
    Step {
        phase,
        commands: commands.to_vec(),
        note: note.map(str::to_owned),
    }
}

#[test]
fn a_healthy_rollout_soaks_then_is_done_and_gives_the_lock_back() {
    let mut drive = Drive::to_the_gate();
    let healthy = || seen(desired(), ours(RolloutState::Completed, 0), vec![]);
    assert_eq!(
        drive.send(seen(desired(), ours(RolloutState::InProgress, 0), vec![])),
        step(Phase::AwaitingRollout, &[], None)
    );
    assert_eq!(
        drive.send(healthy()).phase,
        Phase::Soaking,
        "healthy: the soak starts"
    );
    assert_eq!(
        drive.wait(Duration::from_mins(2)).send(healthy()).phase,
        Phase::Soaking,
        "before the soak's end"
    );
    // Health wavers during the soak, before the gate's deadline: back to the gate.
    assert_eq!(
        drive
            .wait(Duration::from_secs(1))
            .send(seen(desired(), ours(RolloutState::InProgress, 0), vec![]))
            .phase,
        Phase::AwaitingRollout
    );
    // The service deployment succeeded and no longer moves: from here the gate reads the
    // service, not the deployment that would say "successful" again.
    assert_eq!(gate_service_deployment(drive.machine.state()), None);
    assert_eq!(drive.send(healthy()).phase, Phase::Soaking);
    assert_eq!(
        drive.wait(Duration::from_mins(5)).send(healthy()),
        step(Phase::Done, &["release_lock"], None)
    );
    assert!(drive.quarantined().is_empty());
}

#[test]
fn the_gate_fails_on_the_breaker_on_failed_tasks_and_at_its_deadline() {
    let cases: [(&str, ServiceState, Duration, Code); 4] = [
        (
            "the circuit breaker failed our deployment",
            ours(RolloutState::Failed, 0),
            Duration::ZERO,
            Code::CircuitBreaker,
        ),
        (
            "ECS put the baseline back",
            baseline_service(),
            Duration::ZERO,
            Code::CircuitBreaker,
        ),
        (
            "as many failed tasks as the fail-fast count",
            ours(RolloutState::InProgress, 2),
            Duration::ZERO,
            Code::UnhealthyTasks,
        ),
        (
            "still in progress at the rollout deadline",
            ours(RolloutState::InProgress, 1),
            Duration::from_mins(30),
            Code::HealthGateTimeout,
        ),
    ];
    for (name, service, after, code) in cases {
        let mut drive = Drive::to_the_gate();
        let got = drive.wait(after).send(seen(desired(), service, vec![]));
        assert_eq!(
            got,
            step(
                Phase::RollingBack,
                &["roll_back_service"],
                Some(code.as_str())
            ),
            "{name}"
        );
        assert_eq!(drive.failure_code(), Some(code), "{name}");
        assert_eq!(drive.quarantined(), ["2.14.0"], "{name}: quarantined");
    }
    // One failed task is not enough, and a second before the deadline is not late.
    let mut drive = Drive::to_the_gate();
    let got = drive
        .wait(Duration::from_mins(30) - Duration::from_secs(1))
        .send(seen(desired(), ours(RolloutState::InProgress, 1), vec![]));
    assert_eq!(got.phase, Phase::AwaitingRollout);
}

#[test]
fn a_rollback_is_issued_once_and_ends_restored_refused_late_or_foreign() {
    // Confirmed: the baseline is PRIMARY and COMPLETED again.
    let mut drive = Drive::to_rolling_back();
    assert_eq!(
        drive.send(Event::RollbackStarted),
        step(Phase::RollingBack, &[], Some("circuit-breaker"))
    );
    // Issued: a pass that sees the rollback under way asks for nothing more.
    let rolling = service(
        BASE,
        vec![
            deployment(
                "ecs-svc/3",
                DeploymentStatus::Primary,
                BASE,
                RolloutState::InProgress,
            ),
            deployment(
                "ecs-svc/2",
                DeploymentStatus::Active,
                NEW,
                RolloutState::Failed,
            ),
        ],
    );
    assert_eq!(
        drive.send(seen(desired(), rolling, vec![])).commands,
        Vec::<&str>::new()
    );
    assert_eq!(
        drive.send(seen(desired(), baseline_service(), vec![])),
        step(
            Phase::RolledBack,
            &["release_lock"],
            Some("circuit-breaker")
        )
    );
    assert_eq!(drive.service_after(), Some(ServiceAfter::Restored));

    // Not yet issued (a restart before the update): a pass issues it again.
    let mut drive = Drive::to_rolling_back();
    assert_eq!(
        drive
            .send(seen(desired(), ours(RolloutState::Failed, 0), vec![]))
            .commands,
        ["roll_back_service"]
    );

    // Refused by ECS: ended, the service's state unknown.
    let mut drive = Drive::to_rolling_back();
    let refused = drive.send(Event::CommandFailed {
        command: "roll_back_service",
        class: FailureClass::Permanent,
        message: "AccessDenied".to_owned(),
    });
    assert_eq!(refused.phase, Phase::RolledBack);
    assert_eq!(drive.service_after(), Some(ServiceAfter::Unconfirmed));

    // Not confirmed by the rollback deadline.
    let mut drive = Drive::to_rolling_back();
    drive.send(Event::RollbackStarted);
    let late = drive.wait(Duration::from_mins(30)).send(seen(
        desired(),
        ours(RolloutState::Failed, 0),
        vec![],
    ));
    assert_eq!(late.phase, Phase::RolledBack);
    assert_eq!(drive.service_after(), Some(ServiceAfter::Unconfirmed));

    // Someone else moved the service after the rollback was made: not fought.
    let mut drive = Drive::to_rolling_back();
    drive.send(Event::RollbackStarted);
    let moved = drive.send(seen(
        desired(),
        service(
            "td:9",
            vec![deployment(
                "ecs-svc/9",
                DeploymentStatus::Primary,
                "td:9",
                RolloutState::InProgress,
            )],
        ),
        vec![],
    ));
    assert_eq!(moved.phase, Phase::RolledBack);
    assert_eq!(
        drive.service_after(),
        Some(ServiceAfter::Foreign("td:9".to_owned()))
    );

    // AWS unreadable while rolling back: a note, the rollback still to be confirmed.
    let mut drive = Drive::to_rolling_back();
    let unreadable = drive.send(Event::CommandFailed {
        command: "roll_back_service",
        class: FailureClass::Unreadable,
        message: "timeout".to_owned(),
    });
    assert_eq!(
        unreadable,
        step(Phase::RollingBack, &[], Some("aws-unavailable"))
    );

    // The lease lost while rolling back: back to rest, nothing more written by this attempt.
    let mut drive = Drive::to_rolling_back();
    let fenced = drive.send(Event::CommandFailed {
        command: "roll_back_service",
        class: FailureClass::Fenced,
        message: "epoch 2 holds the lease".to_owned(),
    });
    assert_eq!(fenced, step(Phase::Idle, &[], Some("lock-lost")));
}

#[test]
fn a_foreign_writer_at_the_gate_stops_the_attempt_and_holds_its_target() {
    let mut drive = Drive::to_the_gate();
    let foreign = drive.send(seen(
        desired(),
        service(
            "td:9",
            vec![deployment(
                "ecs-svc/9",
                DeploymentStatus::Primary,
                "td:9",
                RolloutState::InProgress,
            )],
        ),
        vec![],
    ));
    assert_eq!(
        foreign,
        step(Phase::Idle, &["release_lock"], Some("foreign-writer"))
    );
    assert_eq!(drive.quarantined(), ["2.14.0"]);
}

#[test]
fn the_desired_state_changing_before_the_update_aborts_without_a_quarantine() {
    let mut drive = Drive::new();
    drive.send(seen(desired(), baseline_service(), vec![]));
    drive.send(Event::LockAcquired { epoch: 1 });
    let mut newer = desired();
    newer.version = Version::parse("2.15.0").unwrap();
    newer.image = ImageRef::parse("registry.example/runner:2.15.0").unwrap();
    assert_eq!(
        drive.send(seen(newer, baseline_service(), vec![])),
        step(Phase::Idle, &["release_lock"], Some("desired-changed"))
    );
    assert!(drive.quarantined().is_empty());
}

#[test]
fn a_registration_never_confirmed_ends_at_its_deadline_without_touching_the_service() {
    let mut drive = Drive::new();
    let at_rest = || seen(desired(), baseline_service(), vec![]);
    drive.send(at_rest());
    drive.send(Event::LockAcquired { epoch: 1 });
    assert_eq!(
        drive.send(at_rest()).phase,
        Phase::RegisteringTaskDefinition
    );
    let unanswered = || Event::CommandFailed {
        command: "register_task_definition",
        class: FailureClass::Transient,
        message: "timeout".to_owned(),
    };
    assert_eq!(
        drive.send(unanswered()),
        step(Phase::RegisteringTaskDefinition, &[], Some("retrying"))
    );
    // Decided on the next observation once `rollout_timeout` has passed since the state was
    // entered (a second before, the registration is asked for again).
    let again = drive
        .wait(Duration::from_mins(30) - Duration::from_secs(1))
        .send(at_rest());
    assert_eq!(again.commands, ["register_task_definition"]);
    let late = drive.wait(Duration::from_secs(1)).send(at_rest());
    assert_eq!(late.phase, Phase::RolledBack);
    assert_eq!(drive.failure_code(), Some(Code::RegisterUnconfirmed));
    assert_eq!(drive.service_after(), Some(ServiceAfter::Untouched));
    // Nothing was learnt about the version: it is not quarantined.
    assert!(drive.quarantined().is_empty());
}

#[test]
fn infrastructure_goes_first_and_a_failed_stack_update_ends_the_attempt() {
    let at_rest = |status: StackStatus| {
        seen(
            desired_with_infra(),
            baseline_service(),
            vec![stack("1", status)],
        )
    };
    let to_executing = || {
        let mut drive = Drive::new();
        assert_eq!(
            drive.send(at_rest(StackStatus::UpdateComplete)).phase,
            Phase::Checking
        );
        drive.send(Event::LockAcquired { epoch: 1 });
        assert_eq!(
            drive.send(at_rest(StackStatus::UpdateComplete)),
            step(Phase::CreatingChangeSet, &["observe"], None)
        );
        assert_eq!(
            drive.send(at_rest(StackStatus::UpdateComplete)).commands,
            ["prepare_change_set"]
        );
        assert_eq!(
            drive.send(Event::ChangeSetPending).phase,
            Phase::CreatingChangeSet
        );
        let ready = drive.send(Event::ChangeSetReady {
            id: "arn:cs".to_owned(),
            review: Review::default(),
        });
        assert_eq!(
            ready.phase,
            Phase::ExecutingChangeSet,
            "a safe change set runs"
        );
        assert_eq!(ready.commands, ["await_change_set"]);
        drive
    };
    for (status, code) in [
        (StackStatus::UpdateRollbackComplete, Code::StackRolledBack),
        (StackStatus::UpdateRollbackFailed, Code::StackRollbackFailed),
    ] {
        let mut drive = to_executing();
        let failed = drive.send(Event::StackUpdateFailed {
            status: status.clone(),
            resource: Some("Queue".to_owned()),
            reason: "quota exceeded".to_owned(),
        });
        assert_eq!(failed.phase, Phase::RolledBack, "{status}");
        assert_eq!(drive.failure_code(), Some(code), "{status}");
        assert_eq!(drive.service_after(), Some(ServiceAfter::Untouched));
    }

    // A change set that replaces a resource waits for a human under policy `safe`.
    let mut drive = Drive::new();
    drive.send(at_rest(StackStatus::UpdateComplete));
    drive.send(Event::LockAcquired { epoch: 1 });
    drive.send(at_rest(StackStatus::UpdateComplete));
    drive.send(at_rest(StackStatus::UpdateComplete));
    let review = Review {
        replaced: vec!["Queue".to_owned()],
        ..Review::default()
    };
    let held = drive.send(Event::ChangeSetReady {
        id: "arn:cs".to_owned(),
        review,
    });
    assert_eq!(held.phase, Phase::AwaitingApproval);
    assert_eq!(held.note.as_deref(), Some("approval-needed"));

    // A change set not computed by its deadline is deleted and the attempt ends.
    let mut drive = Drive::new();
    drive.send(at_rest(StackStatus::UpdateComplete));
    drive.send(Event::LockAcquired { epoch: 1 });
    drive.send(at_rest(StackStatus::UpdateComplete));
    drive.send(at_rest(StackStatus::UpdateComplete));
    drive.send(Event::ChangeSetPending);
    let late = drive
        .wait(Duration::from_mins(15))
        .send(at_rest(StackStatus::UpdateComplete));
    assert_eq!(late.phase, Phase::RolledBack);
    assert!(late.commands.contains(&"delete_change_set"), "{late:?}");
    assert_eq!(drive.failure_code(), Some(Code::ChangeSetTimeout));
    assert_eq!(drive.phase(), Phase::RolledBack);
}

#[test]
fn the_gate_reads_tasks_only_when_something_calls_for_them() {
    let mut drive = Drive::to_the_gate();
    let needs = |drive: &Drive, service: &ServiceState, health_check: bool| {
        gate_needs_tasks(drive.machine.state(), service, health_check, None)
    };
    let in_progress = ours(RolloutState::InProgress, 0);
    let completed = ours(RolloutState::Completed, 0);
    let mut short = completed.clone();
    short.deployments[0].running_count = 0;
    // Awaiting the rollout.
    assert!(!needs(&drive, &in_progress, true), "a rollout in progress");
    // A rollout in progress that lost a running task since the gate's previous read: a task
    // crashed after it ran (ECS's failedTasks does not count it).
    let mut one_running = in_progress.clone();
    one_running.deployments[0].running_count = 1;
    let state = drive.machine.state();
    assert!(
        gate_needs_tasks(state, &in_progress, false, Some(1)),
        "a task gone"
    );
    assert!(
        !gate_needs_tasks(state, &one_running, false, Some(1)),
        "running holds"
    );
    assert!(
        !gate_needs_tasks(state, &one_running, false, Some(0)),
        "running grows"
    );
    assert!(
        needs(&drive, &ours(RolloutState::InProgress, 1), false),
        "failed tasks: the fail-fast count wants the evidence"
    );
    assert!(
        !needs(&drive, &ours(RolloutState::Failed, 3), true),
        "the breaker failed it: decided"
    );
    assert!(!needs(&drive, &baseline_service(), true), "rolled back");
    assert!(
        needs(&drive, &completed, true),
        "completed, with health checks: confirmed once"
    );
    assert!(
        !needs(&drive, &completed, false),
        "completed, no health check"
    );
    // Soaking: ECS's counts stand for the tasks until they show one gone or failed.
    assert_eq!(
        drive.send(seen(desired(), completed.clone(), vec![])).phase,
        Phase::Soaking
    );
    assert!(!needs(&drive, &completed, true), "soaking, counts hold");
    assert!(needs(&drive, &short, false), "soaking, a task gone");
    assert!(
        needs(&drive, &ours(RolloutState::Completed, 1), false),
        "soaking, a task failed"
    );
    // At rest and elsewhere: never.
    assert!(!needs(&Drive::new(), &completed, true));
}

#[test]
fn a_soak_read_without_tasks_stays_healthy_with_health_checks() {
    let mut drive = Drive::to_the_gate();
    let with_health_check = |service: ServiceState| {
        let Event::Observed(mut observation) = seen(desired(), service, vec![]) else {
            unreachable!()
        };
        if let Ok(observed) = observation.observed.as_mut() {
            // A health check ECS does not wait for (the runner container not essential).
            observed.has_health_check = true;
            observed.health_gated_by_ecs = false;
        }
        Event::Observed(observation)
    };
    // Into the soak on tasks that confirm health (one task, HEALTHY).
    let mut confirmed = ours(RolloutState::Completed, 0);
    confirmed.tasks = Some(vec![Task {
        task_definition_arn: NEW.to_owned(),
        status: TaskStatus::Running,
        health: Health::Healthy,
        failed: false,
    }]);
    assert_eq!(
        drive.send(with_health_check(confirmed)).phase,
        Phase::Soaking
    );
    // A soak read without tasks: still healthy (not "0/1 HEALTHY").
    assert_eq!(
        drive
            .send(with_health_check(ours(RolloutState::Completed, 0)))
            .phase,
        Phase::Soaking
    );
    // Not into the soak on a read without tasks: with health checks, completion is confirmed
    // on the tasks (the driver reads them here).
    let mut drive = Drive::to_the_gate();
    assert_eq!(
        drive
            .send(with_health_check(ours(RolloutState::Completed, 0)))
            .phase,
        Phase::AwaitingRollout,
        "tasks not read: waiting"
    );
    // Nor on tasks that are not HEALTHY.
    let mut unhealthy = ours(RolloutState::Completed, 0);
    unhealthy.tasks = Some(vec![Task {
        task_definition_arn: NEW.to_owned(),
        status: TaskStatus::Running,
        health: Health::Unknown,
        failed: false,
    }]);
    assert_eq!(
        drive.send(with_health_check(unhealthy)).phase,
        Phase::AwaitingRollout,
        "0/1 HEALTHY: waiting"
    );
}

#[test]
fn a_completion_ecs_counted_on_health_checks_goes_into_the_soak_without_a_task_read() {
    // An essential runner container with a health check: ECS counts a task toward the
    // deployment only once HEALTHY, so a COMPLETED deployment ran healthy tasks.
    let mut drive = Drive::to_the_gate();
    let Event::Observed(mut observation) =
        seen(desired(), ours(RolloutState::Completed, 0), vec![])
    else {
        unreachable!()
    };
    if let Ok(observed) = observation.observed.as_mut() {
        observed.has_health_check = true;
        observed.health_gated_by_ecs = true;
    }
    let state = drive.machine.state();
    assert!(!gate_needs_tasks(
        state,
        &ours(RolloutState::Completed, 0),
        false,
        None
    ));
    assert_eq!(
        drive.send(Event::Observed(observation)).phase,
        Phase::Soaking
    );
}

/// A read of the attempt's service deployment.
fn service_deployment(
    status: ServiceDeploymentStatus,
    running: u32,
    failures: u32,
    triggered: bool,
) -> ServiceDeployment {
    ServiceDeployment {
        arn: SD.to_owned(),
        status,
        status_reason: None,
        requested: 1,
        running,
        breaker: Some(BreakerCount {
            triggered,
            failure_count: failures,
            threshold: 3,
        }),
        rollback_reason: triggered.then(|| "tasks failed to start".to_owned()),
    }
}

#[test]
fn the_gate_judges_a_rollout_in_progress_from_its_service_deployment() {
    use ServiceDeploymentStatus as S;
    let drive = Drive::to_the_gate();
    assert_eq!(gate_service_deployment(drive.machine.state()), Some(SD));
    // (status, running, breaker's failures, triggered) → the phase after the read, the code.
    let cases: [(S, u32, u32, bool, Phase, Option<Code>); 8] = [
        (S::Pending, 0, 0, false, Phase::AwaitingRollout, None),
        (S::InProgress, 0, 1, false, Phase::AwaitingRollout, None),
        (
            S::InProgress,
            0,
            2,
            false,
            Phase::RollingBack,
            Some(Code::UnhealthyTasks),
        ),
        (
            S::InProgress,
            0,
            3,
            true,
            Phase::RollingBack,
            Some(Code::CircuitBreaker),
        ),
        (
            S::RollbackRequested,
            0,
            0,
            false,
            Phase::RollingBack,
            Some(Code::CircuitBreaker),
        ),
        (
            S::RollbackSuccessful,
            0,
            3,
            true,
            Phase::RollingBack,
            Some(Code::CircuitBreaker),
        ),
        (S::Successful, 1, 0, false, Phase::Soaking, None),
        (S::Successful, 0, 0, false, Phase::AwaitingRollout, None),
    ];
    for (status, running, failures, triggered, phase, code) in cases {
        let name = format!("{status:?} running {running} failures {failures} {triggered}");
        let mut drive = Drive::to_the_gate();
        let read = service_deployment(status, running, failures, triggered);
        let view = gate_view(drive.machine.state(), "c", "s", &read).expect(&name);
        assert_eq!(view.task_definition_arn, NEW, "{name}");
        assert_eq!(
            view.current_service_deployment.as_deref(),
            Some(SD),
            "{name}"
        );
        let got = drive.send(seen(desired(), view, vec![]));
        assert_eq!(got.phase, phase, "{name}");
        assert_eq!(drive.failure_code(), code, "{name}");
    }
    // Stopped without the breaker (by someone, or by a newer deployment), or a status not
    // known: the deployment alone cannot say; the service is read instead.
    let drive = Drive::to_the_gate();
    for status in [S::Stopped, S::StopRequested, S::Other] {
        let read = service_deployment(status, 0, 0, false);
        assert_eq!(
            gate_view(drive.machine.state(), "c", "s", &read),
            None,
            "{status:?}"
        );
    }
    // Stopped by the breaker (rollback off): failed, from the structured fields.
    let read = service_deployment(S::Stopped, 0, 3, true);
    let view = gate_view(drive.machine.state(), "c", "s", &read).unwrap();
    let reason = view.deployments[0]
        .rollout_reason
        .clone()
        .unwrap_or_default();
    assert!(
        reason.contains("counted 3 failed task(s), threshold 3"),
        "{reason}"
    );
    // Another deployment's read is not the gate's; nor is any read outside the rollout.
    let mut other = service_deployment(S::InProgress, 0, 0, false);
    other.arn.push_str("-other");
    assert_eq!(gate_view(drive.machine.state(), "c", "s", &other), None);
    let at_rest = Drive::new();
    let read = service_deployment(S::InProgress, 0, 0, false);
    assert_eq!(gate_view(at_rest.machine.state(), "c", "s", &read), None);
    assert_eq!(gate_service_deployment(at_rest.machine.state()), None);
}
