//! Observed state: what ECS and `CloudFormation` say right now, reduced to what decisions need.

use super::code::Code;
use super::image::ImageRef;
use super::task_definition::TaskDefinition;
use super::version::Version;

/// Tag carrying the runner version on task definitions the controller registers.
pub const VERSION_TAG: &str = "runner-updater:version";
/// Tag carrying the attempt id on task definitions the controller registers.
pub const ATTEMPT_TAG: &str = "runner-updater:attempt";
/// Stack tag carrying the infrastructure version.
pub const INFRA_VERSION_TAG: &str = "runner-updater:infra-version";
/// Stack output read when the tag is absent.
pub const INFRA_VERSION_OUTPUT: &str = "InfrastructureVersion";

/// ECS deployment status within a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentStatus {
    /// The deployment the service converges to.
    Primary,
    /// An older deployment still draining.
    Active,
    /// Finished and drained.
    Inactive,
}

/// ECS rollout state of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    /// Still converging.
    InProgress,
    /// Reached steady state.
    Completed,
    /// The circuit breaker failed it.
    Failed,
}

/// One ECS deployment of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// The deployment id (`ecs-svc/…`).
    pub id: String,
    /// PRIMARY / ACTIVE / INACTIVE.
    pub status: DeploymentStatus,
    /// Its task definition.
    pub task_definition_arn: String,
    /// Rollout state.
    pub rollout_state: RolloutState,
    /// ECS's reason text for the rollout state, when any.
    pub rollout_reason: Option<String>,
    /// Desired tasks.
    pub desired_count: u32,
    /// Running tasks.
    pub running_count: u32,
    /// Tasks of this deployment that failed to start or stopped unexpectedly.
    pub failed_tasks: u32,
}

/// What ECS's reason for a deployment's rollout state says, read once, here: ECS writes it for
/// people (`ECS deployment circuit breaker: tasks failed to start.`, `… rolling back to
/// deploymentId ecs-svc/…`), so no other layer parses it. Read without regard to case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RolloutCause {
    /// The deployment circuit breaker is behind it (a failure, or its rollback).
    pub circuit_breaker: bool,
    /// The deployment is ECS rolling back a failed one.
    pub rolling_back: bool,
}

impl RolloutCause {
    /// Reads ECS's reason text.
    #[must_use]
    pub fn of(reason: Option<&str>) -> RolloutCause {
        let reason = reason.map(str::to_ascii_lowercase).unwrap_or_default();
        RolloutCause {
            circuit_breaker: reason.contains("circuit breaker"),
            rolling_back: reason.contains("rolling back"),
        }
    }
}

impl Deployment {
    /// What its rollout reason says.
    #[must_use]
    pub fn rollout_cause(&self) -> RolloutCause {
        RolloutCause::of(self.rollout_reason.as_deref())
    }
}

/// ECS task lifecycle, reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskStatus {
    /// Provisioning / pending / activating.
    Pending,
    /// Running.
    Running,
    /// Stopping or stopped.
    Stopped,
}

/// Container health as ECS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No health check, or not yet decided.
    Unknown,
    /// Health check passing.
    Healthy,
    /// Health check failing.
    Unhealthy,
}

/// One task of the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task's task definition.
    pub task_definition_arn: String,
    /// Lifecycle.
    pub status: TaskStatus,
    /// Health.
    pub health: Health,
    /// Stopped because it failed (exited, failed to start, failed its health check) — not
    /// because of scale-in or a deployment draining it.
    pub failed: bool,
}

/// A service as seen through `DescribeServices` and `DescribeTasks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceState {
    /// Cluster name.
    pub cluster: String,
    /// Service name.
    pub service: String,
    /// The service's current task definition.
    pub task_definition_arn: String,
    /// Its deployments, PRIMARY first.
    pub deployments: Vec<Deployment>,
    /// Its tasks, when they were read (`None`: not read — three ECS calls a service, made only
    /// where the health gate needs them).
    pub tasks: Option<Vec<Task>>,
    /// The ARN of its most recent service deployment (`currentServiceDeployment`), where ECS
    /// reports one: what `DescribeServiceDeployments` and `StopServiceDeployment` take.
    pub current_service_deployment: Option<String>,
}

impl ServiceState {
    /// The PRIMARY deployment, if any.
    #[must_use]
    pub fn primary(&self) -> Option<&Deployment> {
        self.deployments
            .iter()
            .find(|d| d.status == DeploymentStatus::Primary)
    }

    /// A deployment by id.
    #[must_use]
    pub fn deployment(&self, id: &str) -> Option<&Deployment> {
        self.deployments.iter().find(|d| d.id == id)
    }

    /// Failed stopped tasks of a task definition (ECS lists stopped tasks for about an hour).
    #[must_use]
    pub fn stopped_tasks(&self, task_definition_arn: &str) -> usize {
        self.tasks
            .iter()
            .flatten()
            .filter(|t| {
                t.task_definition_arn == task_definition_arn
                    && t.status == TaskStatus::Stopped
                    && t.failed
            })
            .count()
    }

    /// Running tasks of a task definition with the given health.
    #[must_use]
    pub fn tasks_with(&self, task_definition_arn: &str, health: Health) -> usize {
        self.tasks
            .iter()
            .flatten()
            .filter(|t| {
                t.task_definition_arn == task_definition_arn && t.status == TaskStatus::Running
            })
            .filter(|t| t.health == health)
            .count()
    }
}

/// Where an ECS service deployment stands (`DescribeServiceDeployments`' `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceDeploymentStatus {
    /// Created, not started.
    Pending,
    /// Rolling out.
    InProgress,
    /// Reached steady state.
    Successful,
    /// A stop was asked for.
    StopRequested,
    /// Stopped: by someone, by a newer deployment, or by a failure detector with rollback off.
    Stopped,
    /// A rollback was asked for (`StopServiceDeployment(ROLLBACK)`, the circuit breaker, an
    /// alarm).
    RollbackRequested,
    /// Rolling back to the previous service revision.
    RollbackInProgress,
    /// Rolled back.
    RollbackSuccessful,
    /// The rollback failed in turn.
    RollbackFailed,
    /// A status this controller does not know (a newer API).
    Other,
}

impl ServiceDeploymentStatus {
    /// From AWS's name (`IN_PROGRESS`, …); unknown names are [`ServiceDeploymentStatus::Other`].
    #[must_use]
    pub fn parse(name: &str) -> ServiceDeploymentStatus {
        match name {
            "PENDING" => ServiceDeploymentStatus::Pending,
            "IN_PROGRESS" => ServiceDeploymentStatus::InProgress,
            "SUCCESSFUL" => ServiceDeploymentStatus::Successful,
            "STOP_REQUESTED" => ServiceDeploymentStatus::StopRequested,
            "STOPPED" => ServiceDeploymentStatus::Stopped,
            "ROLLBACK_REQUESTED" => ServiceDeploymentStatus::RollbackRequested,
            "ROLLBACK_IN_PROGRESS" => ServiceDeploymentStatus::RollbackInProgress,
            "ROLLBACK_SUCCESSFUL" => ServiceDeploymentStatus::RollbackSuccessful,
            "ROLLBACK_FAILED" => ServiceDeploymentStatus::RollbackFailed,
            _ => ServiceDeploymentStatus::Other,
        }
    }

    /// AWS's name (`OTHER` for one not known).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ServiceDeploymentStatus::Pending => "PENDING",
            ServiceDeploymentStatus::InProgress => "IN_PROGRESS",
            ServiceDeploymentStatus::Successful => "SUCCESSFUL",
            ServiceDeploymentStatus::StopRequested => "STOP_REQUESTED",
            ServiceDeploymentStatus::Stopped => "STOPPED",
            ServiceDeploymentStatus::RollbackRequested => "ROLLBACK_REQUESTED",
            ServiceDeploymentStatus::RollbackInProgress => "ROLLBACK_IN_PROGRESS",
            ServiceDeploymentStatus::RollbackSuccessful => "ROLLBACK_SUCCESSFUL",
            ServiceDeploymentStatus::RollbackFailed => "ROLLBACK_FAILED",
            ServiceDeploymentStatus::Other => "OTHER",
        }
    }

    /// ECS is rolling it back, or has.
    #[must_use]
    pub fn rolling_back(self) -> bool {
        matches!(
            self,
            ServiceDeploymentStatus::RollbackRequested
                | ServiceDeploymentStatus::RollbackInProgress
                | ServiceDeploymentStatus::RollbackSuccessful
                | ServiceDeploymentStatus::RollbackFailed
        )
    }
}

/// The deployment circuit breaker's count on one service deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerCount {
    /// It fired (`TRIGGERED`).
    pub triggered: bool,
    /// Failed tasks counted.
    pub failure_count: u32,
    /// The count at which it fires (ECS: `clamp(ceil(desired / 2), 3, 200)` unless the
    /// service's `thresholdConfiguration` says otherwise).
    pub threshold: u32,
}

/// One ECS service deployment as `DescribeServiceDeployments` reports it: the structured
/// fields the health gate reads while a rollout is in progress (no text to parse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceDeployment {
    /// Its ARN.
    pub arn: String,
    /// Where it stands.
    pub status: ServiceDeploymentStatus,
    /// ECS's words for the status, when any (shown, never parsed).
    pub status_reason: Option<String>,
    /// Tasks the revision it deploys asks for.
    pub requested: u32,
    /// Of those, running.
    pub running: u32,
    /// The circuit breaker's count, when the breaker watches it.
    pub breaker: Option<BreakerCount>,
    /// Why it is being rolled back, when it is (ECS's words).
    pub rollback_reason: Option<String>,
}

/// Infrastructure as seen through `DescribeStacks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackState {
    /// Stack name.
    pub name: String,
    /// Its status.
    pub status: super::cfn_status::StackStatus,
    /// Tags.
    pub tags: std::collections::BTreeMap<String, String>,
    /// Outputs.
    pub outputs: std::collections::BTreeMap<String, String>,
    /// Current parameter values (`****` for `NoEcho` ones).
    pub parameters: std::collections::BTreeMap<String, String>,
    /// When the stack was last updated (`LastUpdatedTime`), if ever.
    pub last_updated: Option<super::Millis>,
}

/// Everything the decisions need about the running runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// The service.
    pub service: ServiceState,
    /// The runner container's image in the service's current task definition.
    pub running_image: ImageRef,
    /// The current version: the task definition's version tag, else the image tag.
    pub current_version: Option<Version>,
    /// Whether the runner container has a health check (then HEALTHY is required).
    pub has_health_check: bool,
    /// Whether ECS itself waits for that health check before it counts a task toward a
    /// deployment (an essential container with a health check): a deployment ECS reports
    /// COMPLETED then ran HEALTHY tasks by ECS's own rule, and the gate need not read them to
    /// confirm it. A non-essential runner container with a health check is confirmed on its
    /// tasks.
    pub health_gated_by_ecs: bool,
    /// The runner's stacks, in the configured order.
    pub stacks: Vec<StackState>,
}

/// Why the running runner cannot be observed well enough to act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObserveError {
    /// AWS could not be read (after retries).
    #[error("the runner cannot be observed: {0}")]
    Unavailable(String),
    /// The cluster or service does not exist.
    #[error("service {service} not found in cluster {cluster}")]
    ServiceNotFound {
        /// Cluster.
        cluster: String,
        /// Service.
        service: String,
    },
    /// The task definition has no container of the configured name.
    #[error("task definition {task_definition} has no container named {container:?}")]
    ContainerNotFound {
        /// Task definition ARN.
        task_definition: String,
        /// The configured container.
        container: String,
    },
    /// The running image is not a parseable reference.
    #[error("the running image {0:?} is not an image reference")]
    BadRunningImage(String),
    /// A configured stack does not exist.
    #[error("stack {0} not found")]
    StackNotFound(String),
    /// A stack is in a failed or rollback state: no action until a human looks.
    #[error(
        "stack {name} is in {status}: no action until it is repaired (see the README runbook)"
    )]
    StackFailed {
        /// Stack.
        name: String,
        /// Its status.
        status: super::cfn_status::StackStatus,
    },
}

impl ObserveError {
    /// A stable, kebab-case name for status, traces and metrics.
    #[must_use]
    pub fn code(&self) -> Code {
        match self {
            ObserveError::Unavailable(_) => Code::AwsUnavailable,
            ObserveError::ServiceNotFound { .. } => Code::ServiceNotFound,
            ObserveError::ContainerNotFound { .. } => Code::ContainerNotFound,
            ObserveError::BadRunningImage(_) => Code::BadRunningImage,
            ObserveError::StackNotFound(_) => Code::StackNotFound,
            ObserveError::StackFailed { .. } => Code::StackFailed,
        }
    }
}

/// Combines the service, its task definition and the stacks into an [`Observed`].
///
/// # Errors
/// An [`ObserveError`] when the runner is not in a state the controller can act on.
pub fn observe(
    service: ServiceState,
    task_definition: &TaskDefinition,
    container: &str,
    stacks: &[StackState],
) -> Result<Observed, ObserveError> {
    let runner =
        task_definition
            .container(container)
            .ok_or_else(|| ObserveError::ContainerNotFound {
                task_definition: task_definition.arn.clone(),
                container: container.to_owned(),
            })?;
    let image_text = runner.image.as_deref().unwrap_or_default();
    let running_image = ImageRef::parse(image_text)
        .map_err(|_| ObserveError::BadRunningImage(image_text.to_owned()))?;
    let current_version = task_definition
        .tags
        .get(VERSION_TAG)
        .and_then(|v| Version::parse(v).ok())
        .or_else(|| running_image.tag().and_then(|t| Version::parse(t).ok()));
    for stack in stacks {
        if stack.status.needs_human() {
            return Err(ObserveError::StackFailed {
                name: stack.name.clone(),
                status: stack.status.clone(),
            });
        }
    }
    Ok(Observed {
        service,
        has_health_check: runner.has_health_check,
        health_gated_by_ecs: runner.has_health_check && runner.essential,
        running_image,
        current_version,
        stacks: stacks.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecs_rollout_reasons_are_read_once_into_a_cause() {
        let check = |reason: Option<&str>, circuit_breaker: bool, rolling_back: bool| {
            assert_eq!(
                RolloutCause::of(reason),
                RolloutCause {
                    circuit_breaker,
                    rolling_back
                },
                "{reason:?}"
            );
        };
        check(None, false, false);
        check(Some("ECS deployment ecs-svc/1 completed."), false, false);
        check(
            Some("ECS deployment circuit breaker: tasks failed to start."),
            true,
            false,
        );
        check(
            Some("ECS deployment circuit breaker: rolling back to deploymentId ecs-svc/1"),
            true,
            true,
        );
        // An alarm-based rollback is a rollback, not the circuit breaker's.
        check(Some("Rolling back: alarm fired"), false, true);
    }
}
