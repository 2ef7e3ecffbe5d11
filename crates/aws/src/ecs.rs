//! ECS on the SDK, including the typed task-definition clone.
//!
//! The clone copies every writable top-level field of the described task definition into
//! `RegisterTaskDefinition`, from one list ([`COPIED_FIELDS`]) that a test compares with the
//! SDK's own `TaskDefinition` fields: an SDK upgrade that adds a field fails that test instead
//! of silently dropping the field.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_ecs::operation::register_task_definition::builders::RegisterTaskDefinitionFluentBuilder;
use aws_sdk_ecs::types::{
    DeploymentCircuitBreaker, DeploymentConfiguration, DeploymentRolloutState, DesiredStatus,
    SortOrder, StopServiceDeploymentStopType, Tag, TaskDefinitionField,
};

use super::{classify, Traced};
use runner_updater_core::domain::observed::{
    BreakerCount, Deployment, DeploymentStatus, Health, RolloutState, ServiceDeployment,
    ServiceDeploymentStatus, ServiceState, Task, TaskStatus,
};
use runner_updater_core::domain::task_definition::{ContainerSummary, TaskDefinition};
use runner_updater_ports::AwsOp;
use runner_updater_ports::{
    Ecs, ErrorKind, PortError, ServiceUpdate, TaskDefinitionPage, DESCRIBE_SERVICES_MAX,
    DESCRIBE_SERVICE_DEPLOYMENTS_MAX, TASK_DEFINITIONS_PAGE_MAX,
};

/// Task pages read per service at most (100 tasks a page).
const TASK_PAGES_MAX: usize = 20;

/// Fields of the SDK's `TaskDefinition` that `RegisterTaskDefinition` does not take.
pub const READ_ONLY_SDK_FIELDS: &[&str] = &[
    "task_definition_arn",
    "revision",
    "status",
    "requires_attributes",
    "compatibilities",
    "registered_at",
    "deregistered_at",
    "delete_requested_at",
    "registered_by",
];

macro_rules! copied_fields {
    ($($field:ident => $setter:ident),* $(,)?) => {
        /// Every field the clone copies, by its SDK name.
        pub const COPIED_FIELDS: &[&str] = &[$(stringify!($field)),*];

        // `inference_accelerators` is deprecated (Elastic Inference is gone) but a task definition
        // that still carries it must keep it: the clone never drops a field.
        #[allow(deprecated)]
        fn copy_fluent(builder: RegisterTaskDefinitionFluentBuilder, base: &aws_sdk_ecs::types::TaskDefinition) -> RegisterTaskDefinitionFluentBuilder {
            builder$(.$setter(base.$field.clone()))*
        }

        /// The same copy into an input builder (tests compare it with the source).
        #[cfg(test)]
        #[allow(deprecated)]
        fn copy_input(base: &aws_sdk_ecs::types::TaskDefinition) -> aws_sdk_ecs::operation::register_task_definition::builders::RegisterTaskDefinitionInputBuilder {
            aws_sdk_ecs::operation::register_task_definition::RegisterTaskDefinitionInput::builder()$(.$setter(base.$field.clone()))*
        }
    };
}

copied_fields!(
    family => set_family,
    task_role_arn => set_task_role_arn,
    execution_role_arn => set_execution_role_arn,
    network_mode => set_network_mode,
    container_definitions => set_container_definitions,
    volumes => set_volumes,
    placement_constraints => set_placement_constraints,
    requires_compatibilities => set_requires_compatibilities,
    cpu => set_cpu,
    memory => set_memory,
    pid_mode => set_pid_mode,
    ipc_mode => set_ipc_mode,
    proxy_configuration => set_proxy_configuration,
    inference_accelerators => set_inference_accelerators,
    ephemeral_storage => set_ephemeral_storage,
    runtime_platform => set_runtime_platform,
    enable_fault_injection => set_enable_fault_injection,
);

/// ECS through the SDK.
#[derive(Debug, Clone)]
pub struct AwsEcs {
    client: aws_sdk_ecs::Client,
}

impl AwsEcs {
    /// Wraps a client.
    #[must_use]
    pub fn new(client: aws_sdk_ecs::Client) -> Self {
        AwsEcs { client }
    }

    async fn describe_raw(
        &self,
        arn: &str,
    ) -> Result<(aws_sdk_ecs::types::TaskDefinition, Vec<Tag>), PortError> {
        let output = self
            .client
            .describe_task_definition()
            .task_definition(arn)
            .include(TaskDefinitionField::Tags)
            .send()
            .traced(AwsOp::DescribeTaskDefinition)
            .await
            .map_err(|e| {
                let mut error = classify(AwsOp::DescribeTaskDefinition, &e);
                if error.message.contains("Unable to describe task definition") {
                    error.kind = ErrorKind::NotFound;
                }
                error
            })?;
        let definition = output.task_definition().cloned().ok_or_else(|| {
            PortError::new(
                ErrorKind::NotFound,
                AwsOp::DescribeTaskDefinition,
                format!("no task definition {arn}"),
            )
        })?;
        Ok((definition, output.tags().to_vec()))
    }

    async fn describe_services_raw(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<aws_sdk_ecs::operation::describe_services::DescribeServicesOutput, PortError> {
        self.client
            .describe_services()
            .cluster(cluster)
            .set_services(Some(services.to_vec()))
            .send()
            .traced(AwsOp::DescribeServices)
            .await
            .map_err(|e| classify(AwsOp::DescribeServices, &e))
    }

    async fn tasks(&self, cluster: &str, service: &str) -> Result<Vec<Task>, PortError> {
        // Running and stopped tasks: ECS lists stopped ones for about an hour, and the health
        // gate counts stopped tasks of the new revision (ECS's own `failedTasks` stops counting
        // once a task has run).
        let mut arns = Vec::new();
        for desired in [DesiredStatus::Running, DesiredStatus::Stopped] {
            let mut token: Option<String> = None;
            for _ in 0..TASK_PAGES_MAX {
                let page = self
                    .client
                    .list_tasks()
                    .cluster(cluster)
                    .service_name(service)
                    .desired_status(desired.clone())
                    .set_next_token(token.take())
                    .send()
                    .traced(AwsOp::ListTasks)
                    .await
                    .map_err(|e| classify(AwsOp::ListTasks, &e))?;
                arns.extend(page.task_arns().iter().cloned());
                match page.next_token() {
                    Some(next) if !next.is_empty() => token = Some(next.to_owned()),
                    _ => break,
                }
            }
        }
        arns.sort();
        arns.dedup();
        let group = format!("service:{service}");
        let mut tasks = Vec::new();
        for chunk in arns.chunks(100) {
            let output = self
                .client
                .describe_tasks()
                .cluster(cluster)
                .set_tasks(Some(chunk.to_vec()))
                .send()
                .traced(AwsOp::DescribeTasks)
                .await
                .map_err(|e| classify(AwsOp::DescribeTasks, &e))?;
            // Filter by group as well: some emulators ignore ListTasks' serviceName filter.
            for task in output
                .tasks()
                .iter()
                .filter(|t| t.group() == Some(group.as_str()))
            {
                tasks.push(Task {
                    task_definition_arn: task.task_definition_arn().unwrap_or_default().to_owned(),
                    status: match task.last_status().unwrap_or_default() {
                        "RUNNING" => TaskStatus::Running,
                        "PROVISIONING" | "PENDING" | "ACTIVATING" => TaskStatus::Pending,
                        _ => TaskStatus::Stopped,
                    },
                    health: match task
                        .health_status()
                        .map(aws_sdk_ecs::types::HealthStatus::as_str)
                    {
                        Some("HEALTHY") => Health::Healthy,
                        Some("UNHEALTHY") => Health::Unhealthy,
                        _ => Health::Unknown,
                    },
                    failed: stopped_by_failure(task),
                });
            }
        }
        Ok(tasks)
    }
}

/// Whether a stopped task failed, from its stop code and reason (scale-in and deployment drains
/// are `ServiceSchedulerInitiated` too, but their reason does not mention a failed health check).
fn stopped_by_failure(task: &aws_sdk_ecs::types::Task) -> bool {
    use aws_sdk_ecs::types::TaskStopCode;
    let reason = task
        .stopped_reason()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match task.stop_code() {
        Some(TaskStopCode::EssentialContainerExited | TaskStopCode::TaskFailedToStart) => true,
        Some(TaskStopCode::ServiceSchedulerInitiated) => reason.contains("health check"),
        _ => false,
    }
}

/// `RegisterTaskDefinition` and `UpdateService` are not idempotent: the SDK must not resend them
/// (a timeout after AWS acted would duplicate the effect). The driver's next pass re-checks
/// what happened first (attempt tag, baseline deployments) and only then calls again.
fn no_retries() -> aws_sdk_ecs::config::Builder {
    aws_sdk_ecs::config::Builder::default()
        .retry_config(aws_sdk_ecs::config::retry::RetryConfig::disabled())
}

fn summary(definition: &aws_sdk_ecs::types::TaskDefinition, tags: &[Tag]) -> TaskDefinition {
    TaskDefinition {
        arn: definition
            .task_definition_arn()
            .unwrap_or_default()
            .to_owned(),
        family: definition.family().unwrap_or_default().to_owned(),
        containers: definition
            .container_definitions()
            .iter()
            .map(|c| ContainerSummary {
                name: c.name().unwrap_or_default().to_owned(),
                image: c.image().map(str::to_owned),
                has_health_check: c.health_check().is_some(),
                essential: c.essential().unwrap_or(true),
            })
            .collect(),
        tags: tags
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect(),
    }
}

/// The base's container definitions with `container`'s image replaced.
///
/// # Errors
/// When there is no such container.
pub fn with_image(
    base: &aws_sdk_ecs::types::TaskDefinition,
    container: &str,
    image: &str,
) -> Result<Vec<aws_sdk_ecs::types::ContainerDefinition>, PortError> {
    let mut containers = base.container_definitions.clone().unwrap_or_default();
    let target = containers
        .iter_mut()
        .find(|c| c.name() == Some(container))
        .ok_or_else(|| {
            PortError::new(
                ErrorKind::Permanent,
                AwsOp::RegisterTaskDefinition,
                format!("no container named {container:?}"),
            )
        })?;
    target.image = Some(image.to_owned());
    Ok(containers)
}

/// A missing service, as `DescribeServices` reports it (in `failures`, not as an error).
fn missing(cluster: &str, service: &str, reason: &str) -> PortError {
    PortError::new(
        ErrorKind::NotFound,
        AwsOp::DescribeServices,
        format!("{reason}: service {service} in cluster {cluster}"),
    )
}

/// The service and its deployments (no tasks).
fn service_state(
    cluster: &str,
    service: &str,
    found: &aws_sdk_ecs::types::Service,
) -> ServiceState {
    let mut deployments: Vec<Deployment> = found
        .deployments()
        .iter()
        .map(|d| Deployment {
            id: d.id().unwrap_or_default().to_owned(),
            status: match d.status() {
                Some("PRIMARY") => DeploymentStatus::Primary,
                Some("ACTIVE") => DeploymentStatus::Active,
                _ => DeploymentStatus::Inactive,
            },
            task_definition_arn: d.task_definition().unwrap_or_default().to_owned(),
            rollout_state: match d.rollout_state() {
                Some(DeploymentRolloutState::Completed) => RolloutState::Completed,
                Some(DeploymentRolloutState::Failed) => RolloutState::Failed,
                // Absent or unknown: never treated as completed.
                _ => RolloutState::InProgress,
            },
            rollout_reason: d.rollout_state_reason().map(str::to_owned),
            desired_count: u32::try_from(d.desired_count()).unwrap_or(0),
            running_count: u32::try_from(d.running_count()).unwrap_or(0),
            failed_tasks: u32::try_from(d.failed_tasks()).unwrap_or(0),
        })
        .collect();
    deployments.sort_by_key(|d| d.status != DeploymentStatus::Primary);
    ServiceState {
        cluster: cluster.to_owned(),
        service: service.to_owned(),
        task_definition_arn: found.task_definition().unwrap_or_default().to_owned(),
        deployments,
        tasks: None,
        current_service_deployment: found.current_service_deployment().map(str::to_owned),
    }
}

/// A service deployment's structured fields: status, the target revision's counts, the
/// circuit breaker's count and the rollback's reason.
fn service_deployment(found: &aws_sdk_ecs::types::ServiceDeployment) -> ServiceDeployment {
    let target = found.target_service_revision();
    let count = |n: i32| u32::try_from(n).unwrap_or(0);
    ServiceDeployment {
        arn: found
            .service_deployment_arn()
            .unwrap_or_default()
            .to_owned(),
        status: found.status().map_or(ServiceDeploymentStatus::Other, |s| {
            ServiceDeploymentStatus::parse(s.as_str())
        }),
        status_reason: found.status_reason().map(str::to_owned),
        requested: target.map_or(0, |t| count(t.requested_task_count())),
        running: target.map_or(0, |t| count(t.running_task_count())),
        breaker: found.deployment_circuit_breaker().map(|b| BreakerCount {
            triggered: b
                .status()
                .map(aws_sdk_ecs::types::ServiceDeploymentRollbackMonitorsStatus::as_str)
                == Some("TRIGGERED"),
            failure_count: count(b.failure_count()),
            threshold: count(b.threshold()),
        }),
        rollback_reason: found
            .rollback()
            .and_then(aws_sdk_ecs::types::Rollback::reason)
            .map(str::to_owned),
    }
}

#[async_trait]
impl Ecs for AwsEcs {
    async fn pace(&self, _op: AwsOp) {}

    async fn describe_service(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceState, PortError> {
        let mut state = self
            .describe_service_without_tasks(cluster, service)
            .await?;
        state.tasks = Some(self.tasks(cluster, service).await?);
        Ok(state)
    }

    async fn list_service_tasks(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<Vec<Task>, PortError> {
        self.tasks(cluster, service).await
    }

    async fn describe_service_without_tasks(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceState, PortError> {
        let mut found = self
            .describe_services_without_tasks(cluster, &[service.to_owned()])
            .await?;
        found
            .pop()
            .unwrap_or_else(|| Err(missing(cluster, service, "MISSING")))
    }

    async fn describe_services_without_tasks(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<Result<ServiceState, PortError>>, PortError> {
        let mut states = Vec::with_capacity(services.len());
        for chunk in services.chunks(DESCRIBE_SERVICES_MAX) {
            let output = self.describe_services_raw(cluster, chunk).await?;
            for service in chunk {
                // Asked by name or ARN (old or new format: the name is the ARN's last part); an
                // INACTIVE (deleted) service of that name is ignored.
                let name = service.rsplit('/').next().unwrap_or(service);
                let found = output.services().iter().find(|s| {
                    s.status() != Some("INACTIVE")
                        && (s.service_name() == Some(name) || s.service_arn() == Some(service))
                });
                states.push(if let Some(found) = found {
                    Ok(service_state(cluster, service, found))
                } else {
                    let reason = output
                        .failures()
                        .iter()
                        .find(|f| {
                            f.arn().is_some_and(|arn| {
                                arn == service || arn.ends_with(&format!("/{service}"))
                            })
                        })
                        .and_then(|f| f.reason())
                        .unwrap_or("MISSING");
                    Err(missing(cluster, service, reason))
                });
            }
        }
        Ok(states)
    }

    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinition, PortError> {
        let (definition, tags) = self.describe_raw(arn).await?;
        Ok(summary(&definition, &tags))
    }

    async fn list_task_definitions(
        &self,
        family_prefix: &str,
        token: Option<&str>,
    ) -> Result<TaskDefinitionPage, PortError> {
        let output = self
            .client
            .list_task_definitions()
            .family_prefix(family_prefix)
            .sort(SortOrder::Desc)
            .max_results(i32::try_from(TASK_DEFINITIONS_PAGE_MAX).unwrap_or(100))
            .set_next_token(token.map(str::to_owned))
            .send()
            .traced(AwsOp::ListTaskDefinitions)
            .await
            .map_err(|e| classify(AwsOp::ListTaskDefinitions, &e))?;
        Ok(TaskDefinitionPage {
            arns: output.task_definition_arns().to_vec(),
            next: output.next_token().map(str::to_owned),
        })
    }

    async fn register_clone(
        &self,
        base_arn: &str,
        container: &str,
        image: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<String, PortError> {
        let (base, base_tags) = self.describe_raw(base_arn).await?;
        let containers = with_image(&base, container, image)?;
        let mut merged: BTreeMap<String, String> = base_tags
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect();
        merged.extend(tags);
        let tags = merged
            .into_iter()
            .map(|(key, value)| Tag::builder().key(key).value(value).build())
            .collect::<Vec<_>>();
        let output = copy_fluent(self.client.register_task_definition(), &base)
            .set_container_definitions(Some(containers))
            .set_tags(Some(tags))
            .customize()
            .config_override(no_retries())
            .send()
            .traced(AwsOp::RegisterTaskDefinition)
            .await
            .map_err(|e| classify(AwsOp::RegisterTaskDefinition, &e))?;
        output
            .task_definition()
            .and_then(|t| t.task_definition_arn())
            .map(str::to_owned)
            .ok_or_else(|| {
                PortError::new(
                    ErrorKind::Permanent,
                    AwsOp::RegisterTaskDefinition,
                    "no ARN in the answer",
                )
            })
    }

    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition_arn: &str,
        only_over: Option<&[String]>,
    ) -> Result<ServiceUpdate, PortError> {
        // Keep the service's deployment configuration (min/max percent, alarms, …); only make sure
        // the circuit breaker is on with rollback.
        let current = self
            .describe_services_raw(cluster, &[service.to_owned()])
            .await?;
        if let Some(expected) = only_over {
            let appeared = current
                .services()
                .first()
                .into_iter()
                .flat_map(aws_sdk_ecs::types::Service::deployments)
                .find(|d| !expected.iter().any(|id| Some(id.as_str()) == d.id()));
            if let Some(d) = appeared {
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    AwsOp::UpdateService,
                    format!(
                        "deployment {} of {} appeared on the service outside this attempt",
                        d.id().unwrap_or("?"),
                        d.task_definition().unwrap_or("?")
                    ),
                ));
            }
        }
        let configuration = current
            .services()
            .first()
            .and_then(|s| s.deployment_configuration().cloned());
        let mut configuration =
            configuration.unwrap_or_else(|| DeploymentConfiguration::builder().build());
        configuration.deployment_circuit_breaker = Some(with_rollback(
            configuration.deployment_circuit_breaker.as_ref(),
        ));
        let output = self
            .client
            .update_service()
            .cluster(cluster)
            .service(service)
            .task_definition(task_definition_arn)
            .deployment_configuration(configuration)
            .customize()
            .config_override(no_retries())
            .send()
            .traced(AwsOp::UpdateService)
            .await
            .map_err(|e| classify(AwsOp::UpdateService, &e))?;
        let updated = output.service();
        let deployment_id = updated
            .and_then(|s| {
                s.deployments().iter().find(|d| {
                    d.status() == Some("PRIMARY")
                        && d.task_definition() == Some(task_definition_arn)
                })
            })
            .and_then(|d| d.id())
            .map(str::to_owned)
            .ok_or_else(|| {
                PortError::new(
                    ErrorKind::Transient,
                    AwsOp::UpdateService,
                    "the answer shows no PRIMARY deployment of the new task definition yet",
                )
            })?;
        // The new deployment's service deployment: the service's current one, unless it is
        // still the one from before the update (then it is not known yet: the gate reads the
        // service, and a resumed attempt finds it there).
        let before = current
            .services()
            .first()
            .and_then(aws_sdk_ecs::types::Service::current_service_deployment);
        let service_deployment = updated
            .and_then(aws_sdk_ecs::types::Service::current_service_deployment)
            .filter(|arn| Some(*arn) != before)
            .map(str::to_owned);
        Ok(ServiceUpdate {
            deployment_id,
            service_deployment,
        })
    }

    async fn describe_service_deployments(
        &self,
        arns: &[String],
    ) -> Result<Vec<Result<ServiceDeployment, PortError>>, PortError> {
        let mut answers = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(DESCRIBE_SERVICE_DEPLOYMENTS_MAX) {
            let output = self
                .client
                .describe_service_deployments()
                .set_service_deployment_arns(Some(chunk.to_vec()))
                .send()
                .traced(AwsOp::DescribeServiceDeployments)
                .await
                .map_err(|e| classify(AwsOp::DescribeServiceDeployments, &e))?;
            let found: Vec<ServiceDeployment> = output
                .service_deployments()
                .iter()
                .map(service_deployment)
                .collect();
            for arn in chunk {
                answers.push(
                    found
                        .iter()
                        .find(|d| d.arn == *arn)
                        .cloned()
                        .ok_or_else(|| {
                            let reason = output
                                .failures()
                                .iter()
                                .find(|f| f.arn() == Some(arn.as_str()))
                                .and_then(|f| f.reason())
                                .unwrap_or("not in the answer");
                            PortError::new(
                                ErrorKind::NotFound,
                                AwsOp::DescribeServiceDeployments,
                                format!("{reason}: service deployment {arn}"),
                            )
                        }),
                );
            }
        }
        Ok(answers)
    }

    async fn stop_service_deployment(
        &self,
        _cluster: &str,
        _service: &str,
        arn: &str,
    ) -> Result<(), PortError> {
        self.client
            .stop_service_deployment()
            .service_deployment_arn(arn)
            .stop_type(StopServiceDeploymentStopType::Rollback)
            .customize()
            .config_override(no_retries())
            .send()
            .traced(AwsOp::StopServiceDeployment)
            .await
            .map_err(|e| classify(AwsOp::StopServiceDeployment, &e))?;
        Ok(())
    }
}

/// The service's circuit breaker, on with rollback: its own settings (`thresholdConfiguration`,
/// `resetOnHealthyTask`) kept as ops set them.
fn with_rollback(current: Option<&DeploymentCircuitBreaker>) -> DeploymentCircuitBreaker {
    DeploymentCircuitBreaker::builder()
        .enable(true)
        .rollback(true)
        .set_reset_on_healthy_task(current.and_then(|b| b.reset_on_healthy_task))
        .set_threshold_configuration(current.and_then(|b| b.threshold_configuration.clone()))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_circuit_breaker_is_turned_on_with_rollback_and_its_own_settings_kept() {
        use aws_sdk_ecs::types::{ThresholdConfiguration, ThresholdType};
        let threshold = ThresholdConfiguration::builder()
            .r#type(ThresholdType::Count)
            .value(7)
            .build()
            .unwrap();
        let ops = DeploymentCircuitBreaker::builder()
            .enable(false)
            .rollback(false)
            .reset_on_healthy_task(false)
            .threshold_configuration(threshold.clone())
            .build();
        let ours = with_rollback(Some(&ops));
        assert!(ours.enable && ours.rollback);
        assert_eq!(ours.reset_on_healthy_task, Some(false));
        assert_eq!(ours.threshold_configuration, Some(threshold));
        // None set: ECS's defaults stay ECS's (nothing sent for them).
        let none = with_rollback(None);
        assert!(none.enable && none.rollback);
        assert_eq!(none.reset_on_healthy_task, None);
        assert_eq!(none.threshold_configuration, None);
    }

    /// Top-level field names in a derived `Debug` of an SDK struct.
    fn debug_fields(debug: &str) -> Vec<String> {
        let inner = debug.split_once('{').map_or("", |(_, rest)| rest);
        let mut fields = Vec::new();
        let mut depth = 0;
        let mut token = String::new();
        for c in inner.chars() {
            match c {
                '{' | '[' | '(' => depth += 1,
                '}' | ']' | ')' => depth -= 1,
                ':' if depth == 0
                    && !token.trim().is_empty()
                    && token
                        .trim()
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_') =>
                {
                    fields.push(token.trim().to_owned());
                    token.clear();
                    continue;
                }
                ',' if depth == 0 => {
                    token.clear();
                    continue;
                }
                _ => {}
            }
            if depth == 0 {
                token.push(c);
            }
        }
        fields
    }

    #[test]
    fn the_clone_copies_every_writable_field_the_sdk_knows() {
        let described = format!(
            "{:?}",
            aws_sdk_ecs::types::TaskDefinition::builder().build()
        );
        let mut writable: Vec<String> = debug_fields(&described)
            .into_iter()
            .filter(|f| !READ_ONLY_SDK_FIELDS.contains(&f.as_str()))
            .collect();
        writable.sort();
        let mut copied: Vec<String> = COPIED_FIELDS.iter().map(|f| (*f).to_owned()).collect();
        copied.sort();
        assert_eq!(
            writable, copied,
            "the SDK's TaskDefinition has fields the clone does not copy (or the reverse)"
        );
    }

    #[test]
    fn only_failures_count_as_failed_stopped_tasks() {
        use aws_sdk_ecs::types::TaskStopCode;
        let task = |code: TaskStopCode, reason: &str| {
            aws_sdk_ecs::types::Task::builder()
                .stop_code(code)
                .stopped_reason(reason)
                .build()
        };
        assert!(stopped_by_failure(&task(
            TaskStopCode::EssentialContainerExited,
            "Essential container in task exited"
        )));
        assert!(stopped_by_failure(&task(
            TaskStopCode::TaskFailedToStart,
            "CannotPullContainerError"
        )));
        assert!(stopped_by_failure(&task(
            TaskStopCode::ServiceSchedulerInitiated,
            "Task failed container health checks"
        )));
        assert!(!stopped_by_failure(&task(
            TaskStopCode::ServiceSchedulerInitiated,
            "Scaling activity initiated by deployment ecs-svc/1"
        )));
        assert!(!stopped_by_failure(&task(
            TaskStopCode::UserInitiated,
            "stopped by ops"
        )));
    }

    #[test]
    fn the_clone_changes_only_the_runner_image() {
        use aws_sdk_ecs::types::{ContainerDefinition, NetworkMode, Secret};
        let base = aws_sdk_ecs::types::TaskDefinition::builder()
            .family("runner")
            .task_role_arn("arn:aws:iam::1:role/task")
            .execution_role_arn("arn:aws:iam::1:role/exec")
            .network_mode(NetworkMode::Awsvpc)
            .cpu("512")
            .memory("1024")
            .container_definitions(
                ContainerDefinition::builder()
                    .name("runner")
                    .image("r:1")
                    .secrets(
                        Secret::builder()
                            .name("T")
                            .value_from("arn:x")
                            .build()
                            .unwrap(),
                    )
                    .build(),
            )
            .container_definitions(
                ContainerDefinition::builder()
                    .name("sidecar")
                    .image("s:1")
                    .build(),
            )
            .build();
        let containers = with_image(&base, "runner", "r:2").unwrap();
        let input = copy_input(&base)
            .set_container_definitions(Some(containers))
            .build()
            .unwrap();
        let expected = format!("{:?}", base.container_definitions.as_ref().unwrap())
            .replace("\"r:1\"", "\"r:2\"");
        assert_eq!(
            format!("{:?}", input.container_definitions.as_ref().unwrap()),
            expected
        );
        assert_eq!(
            input.execution_role_arn.as_deref(),
            Some("arn:aws:iam::1:role/exec")
        );
        assert_eq!(
            input.task_role_arn.as_deref(),
            Some("arn:aws:iam::1:role/task")
        );
        assert_eq!(input.cpu.as_deref(), Some("512"));
        assert!(with_image(&base, "absent", "x:1").is_err());
    }
}
