//! Simulated ECS: task definitions (immutable revisions with tags) and services whose
//! deployments progress over simulated time, in fixed steps of [`STEP`].
//!
//! Timeline of a task (all simulated): launched → RUNNING after 10–15 s → HEALTHY 15 s later
//! when a container has a health check. An image's [`ImageBehaviour`] can make its tasks crash,
//! never become healthy, or turn unhealthy later; ECS stops a task that stays UNHEALTHY for
//! 30 s and counts it as failed. The deployment circuit breaker fails a deployment once its
//! failed tasks reach ECS's current threshold, `clamp(ceil(desired / 2), 3, 200)` (the minimum
//! is configurable: [`SimEcs::set_circuit_breaker_minimum`]; ECS's pre-2024 one was 10), and
//! rolls back to the last completed task definition by creating a new PRIMARY deployment.
//!
//! Every deployment belongs to a service deployment (`DescribeServiceDeployments`):
//! `IN_PROGRESS` while it rolls out, `SUCCESSFUL` once complete, `STOPPED` when a newer one replaces it (or the
//! breaker fails it with nothing to roll back to), `ROLLBACK_IN_PROGRESS` then
//! `ROLLBACK_SUCCESSFUL` when the breaker or `StopServiceDeployment(ROLLBACK)` rolls it back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{guard, Faults, Rng, SimClock, SimRunnerSpec};
use runner_updater_core::domain::observed::{
    BreakerCount, Deployment, DeploymentStatus, Health, RolloutState, ServiceDeployment,
    ServiceDeploymentStatus, ServiceState, Task, TaskStatus, VERSION_TAG,
};
use runner_updater_core::domain::task_definition::{
    clone_with_image, TaskDefinition, READ_ONLY_FIELDS,
};
use runner_updater_core::domain::Millis;
use runner_updater_ports::AwsOp;
use runner_updater_ports::{
    Clock, Ecs, ErrorKind, PortError, ServiceUpdate as Updated, TaskDefinitionPage,
    DESCRIBE_SERVICE_DEPLOYMENTS_MAX, TASK_DEFINITIONS_PAGE_MAX,
};

/// The simulation's time step.
pub const STEP: Duration = Duration::from_secs(5);
const START_DELAY: Duration = Duration::from_secs(10);
const START_JITTER_MS: u64 = 5_000;
const HEALTHY_AFTER: Duration = Duration::from_secs(15);
const UNHEALTHY_GRACE: Duration = Duration::from_secs(30);
/// The circuit breaker's least threshold (ECS's current rule; its pre-2024 one was 10).
pub const BREAKER_MINIMUM: u32 = 3;
/// Service deployments kept per service (the most recent).
const SERVICE_DEPLOYMENTS_KEPT: usize = 5;
/// Stopped tasks listed per service at most.
const STOPPED_KEPT: usize = 50;
const ACCOUNT: &str = "123456789012";
const REGION: &str = "eu-west-1";

/// How tasks of an image behave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageBehaviour {
    /// Start and become healthy.
    #[default]
    Healthy,
    /// Start, then exit after a while (the container crashes).
    Crashing {
        /// How long a task runs before exiting.
        after: Duration,
    },
    /// Start but never pass the health check (without a health check ECS cannot tell).
    NeverHealthy,
    /// Become healthy, then fail the health check after a while.
    UnhealthyAfter {
        /// Time from RUNNING to UNHEALTHY.
        after: Duration,
    },
}

/// A service update as recorded by the simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceUpdate {
    /// Cluster.
    pub cluster: String,
    /// Service.
    pub service: String,
    /// The task definition it was pointed at.
    pub task_definition_arn: String,
    /// Who: `controller` through the port, or a foreign writer's name.
    pub actor: String,
    /// When.
    pub at: Millis,
}

#[derive(Debug, Clone)]
struct SimTask {
    deployment: String,
    task_definition_arn: String,
    running_at: Millis,
    status: TaskStatus,
    health: Health,
    unhealthy_since: Option<Millis>,
}

#[derive(Debug, Clone)]
struct SimDeployment {
    id: String,
    status: DeploymentStatus,
    task_definition_arn: String,
    rollout_state: RolloutState,
    reason: Option<String>,
    failed_tasks: u32,
    /// The service deployment it belongs to (a rollback's: the one it rolls back).
    service_deployment: String,
}

/// A service deployment as the simulation keeps it (listed after its deployments are gone).
#[derive(Debug, Clone)]
struct SimServiceDeployment {
    cluster: String,
    service: String,
    /// The deployment that rolls it out.
    deployment: String,
    status: ServiceDeploymentStatus,
    status_reason: Option<String>,
    requested: u32,
    /// Running tasks when it ended (while it rolls out: counted from its deployment).
    running: u32,
    failures: u32,
    threshold: u32,
    triggered: bool,
    rollback_reason: Option<String>,
}

/// A simulated service.
#[derive(Debug, Clone)]
pub struct SimService {
    /// Cluster.
    pub cluster: String,
    /// Name.
    pub name: String,
    /// Current task definition.
    pub task_definition_arn: String,
    /// Desired tasks.
    pub desired_count: u32,
    deployments: Vec<SimDeployment>,
    tasks: Vec<SimTask>,
    last_completed_task_definition: String,
    last_step: Millis,
}

/// A registered task definition as the simulation keeps it: the full API-shaped document.
#[derive(Debug, Clone)]
struct StoredTaskDefinition {
    document: Map<String, Value>,
    tags: BTreeMap<String, String>,
}

impl StoredTaskDefinition {
    fn summary(&self, arn: &str) -> TaskDefinition {
        TaskDefinition::from_document(arn, &self.document, self.tags.clone())
    }

    fn revision(&self) -> Option<u64> {
        self.document.get("revision").and_then(Value::as_u64)
    }
}

#[derive(Debug)]
struct EcsWorld {
    services: BTreeMap<(String, String), SimService>,
    task_definitions: BTreeMap<String, StoredTaskDefinition>,
    revisions: BTreeMap<String, u32>,
    behaviours: BTreeMap<String, ImageBehaviour>,
    updates: Vec<ServiceUpdate>,
    registrations: Vec<String>,
    next_id: u64,
    rng: Rng,
    breaker_minimum: u32,
    /// Service deployments by ARN.
    service_deployments: BTreeMap<String, SimServiceDeployment>,
    /// Each service as it was just before its last `UpdateService`, and when: what a stale
    /// read returns.
    before_update: BTreeMap<(String, String), (Millis, SimService)>,
    /// `DescribeServices` reads still to answer stale (when an update is recent enough).
    stale_reads: u32,
}

/// How long after an `UpdateService` a read may still show the service as it was before
/// (ECS's `DescribeServices` is eventually consistent).
pub const STALE_WINDOW: Duration = Duration::from_secs(5);

/// Simulated ECS.
#[derive(Debug, Clone)]
pub struct SimEcs {
    world: Arc<Mutex<EcsWorld>>,
    clock: SimClock,
    /// Faults to inject.
    pub faults: Faults,
}

impl EcsWorld {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn behaviour_of(&self, task_definition_arn: &str) -> (ImageBehaviour, bool) {
        let Some(td) = self.task_definitions.get(task_definition_arn) else {
            return (ImageBehaviour::Healthy, false);
        };
        let containers = td
            .document
            .get("containerDefinitions")
            .and_then(Value::as_array);
        let mut behaviour = ImageBehaviour::Healthy;
        let mut health_check = false;
        for container in containers.into_iter().flatten() {
            if container.get("healthCheck").is_some_and(|h| !h.is_null()) {
                health_check = true;
            }
            if let Some(b) = container
                .get("image")
                .and_then(Value::as_str)
                .and_then(|i| self.behaviours.get(i))
            {
                behaviour = *b;
            }
        }
        (behaviour, health_check)
    }

    fn advance(&mut self, key: &(String, String), now: Millis) {
        let Some(mut service) = self.services.remove(key) else {
            return;
        };
        while service.last_step.after(STEP) <= now {
            let t = service.last_step.after(STEP);
            self.step(&mut service, t);
            service.last_step = t;
            if is_steady(&service) {
                service.last_step = now;
                break;
            }
        }
        self.services.insert(key.clone(), service);
    }

    /// One step of a simulated rollout, in the order ECS applies its rules: the tasks, the
    /// circuit breaker, then the primary deployment.
    fn step(&mut self, service: &mut SimService, t: Millis) {
        self.step_tasks(service, t);
        self.circuit_breaker(service);
        self.step_primary(service, t);
    }

    /// Tasks start, turn healthy or unhealthy, crash or are stopped; each deployment counts
    /// its failed tasks; only the most recent stopped tasks stay listed.
    fn step_tasks(&mut self, service: &mut SimService, t: Millis) {
        let mut failed_by_deployment: BTreeMap<String, u32> = BTreeMap::new();
        for task in service
            .tasks
            .iter_mut()
            .filter(|task| task.status != TaskStatus::Stopped)
        {
            let (behaviour, health_check) = self.behaviour_of(&task.task_definition_arn);
            if task.status == TaskStatus::Pending && t >= task.running_at {
                task.status = TaskStatus::Running;
            }
            if task.status != TaskStatus::Running {
                continue;
            }
            let running_for = t.since(task.running_at);
            match behaviour {
                ImageBehaviour::Crashing { after } if running_for >= after => {
                    task.status = TaskStatus::Stopped;
                    *failed_by_deployment
                        .entry(task.deployment.clone())
                        .or_default() += 1;
                    continue;
                }
                ImageBehaviour::NeverHealthy if health_check && running_for >= HEALTHY_AFTER => {
                    task.health = Health::Unhealthy;
                }
                ImageBehaviour::UnhealthyAfter { after }
                    if health_check && running_for >= after =>
                {
                    task.health = Health::Unhealthy;
                }
                _ if health_check
                    && running_for >= HEALTHY_AFTER
                    && task.health == Health::Unknown =>
                {
                    task.health = Health::Healthy;
                }
                _ => {}
            }
            if task.health == Health::Unhealthy {
                let since = *task.unhealthy_since.get_or_insert(t);
                if t.since(since) >= UNHEALTHY_GRACE {
                    task.status = TaskStatus::Stopped;
                    *failed_by_deployment
                        .entry(task.deployment.clone())
                        .or_default() += 1;
                }
            }
        }
        for deployment in &mut service.deployments {
            deployment.failed_tasks += failed_by_deployment
                .get(&deployment.id)
                .copied()
                .unwrap_or(0);
        }
        // ECS lists stopped tasks for a while; keep the most recent ones.
        let stopped = service
            .tasks
            .iter()
            .filter(|t| t.status == TaskStatus::Stopped)
            .count();
        let mut excess = stopped.saturating_sub(STOPPED_KEPT);
        service.tasks.retain(|task| {
            let drop = task.status == TaskStatus::Stopped && excess > 0;
            excess -= usize::from(drop);
            !drop
        });
    }

    /// The breaker's threshold for a service: ECS's `clamp(ceil(desired / 2), minimum, 200)`.
    fn threshold(&self, service: &SimService) -> u32 {
        service
            .desired_count
            .div_ceil(2)
            .clamp(self.breaker_minimum, 200.max(self.breaker_minimum))
    }

    /// A primary deployment in progress with as many failed tasks as the threshold is failed
    /// and rolled back to the last completed task definition (or, with nothing to roll back
    /// to, marked failed and left primary).
    fn circuit_breaker(&mut self, service: &mut SimService) {
        let threshold = self.threshold(service);
        let tripped = service.deployments.iter().position(|d| {
            d.status == DeploymentStatus::Primary
                && d.rollout_state == RolloutState::InProgress
                && d.failed_tasks >= threshold
        });
        let Some(index) = tripped else {
            return;
        };
        let failed = service.deployments[index].failed_tasks;
        if let Some(sd) = self
            .service_deployments
            .get_mut(&service.deployments[index].service_deployment)
        {
            sd.failures = failed;
            sd.triggered = true;
        }
        // Nothing to roll back to: the failing deployment runs the last completed task
        // definition (a rollback that fails in turn). The deployment is marked FAILED and
        // stays PRIMARY, as with the rollback option off, instead of rolling back into itself
        // for ever.
        if service.deployments[index].task_definition_arn == service.last_completed_task_definition
        {
            let deployment = &mut service.deployments[index];
            deployment.rollout_state = RolloutState::Failed;
            deployment.reason = Some(format!(
                "{}; failed in turn ({} failed tasks): nothing left to roll back to",
                deployment.reason.as_deref().unwrap_or("ECS deployment"),
                deployment.failed_tasks
            ));
            let arn = deployment.service_deployment.clone();
            self.end_service_deployment(
                &arn,
                ServiceDeploymentStatus::Stopped,
                Some("the circuit breaker failed it: nothing left to roll back to".to_owned()),
                0,
            );
            return;
        }
        let reason = format!(
            "ECS deployment circuit breaker: tasks failed to start ({failed} failed, threshold {threshold})"
        );
        self.roll_back(service, index, reason, "tasks failed to start".to_owned());
    }

    /// Rolls `service`'s deployment at `index` back to the last completed task definition: the
    /// deployment failed, a new PRIMARY deployment of that revision, its service deployment
    /// `ROLLBACK_IN_PROGRESS` (the breaker's rollback, or `StopServiceDeployment(ROLLBACK)`).
    fn roll_back(&mut self, service: &mut SimService, index: usize, reason: String, why: String) {
        let failed_id = service.deployments[index].id.clone();
        let arn = service.deployments[index].service_deployment.clone();
        service.deployments[index].rollout_state = RolloutState::Failed;
        service.deployments[index].status = DeploymentStatus::Active;
        service.deployments[index].reason = Some(reason);
        service.tasks.retain(|task| task.deployment != failed_id);
        if let Some(sd) = self.service_deployments.get_mut(&arn) {
            sd.status = ServiceDeploymentStatus::RollbackInProgress;
            sd.rollback_reason = Some(why);
        }
        let rollback_id = format!("ecs-svc/{:019}", self.id());
        service.task_definition_arn = service.last_completed_task_definition.clone();
        service.deployments.insert(
            0,
            SimDeployment {
                id: rollback_id,
                status: DeploymentStatus::Primary,
                task_definition_arn: service.last_completed_task_definition.clone(),
                rollout_state: RolloutState::InProgress,
                reason: Some("ECS deployment circuit breaker: rolling back".to_owned()),
                failed_tasks: 0,
                service_deployment: arn,
            },
        );
    }

    /// A service deployment ends (its counts kept as they were).
    fn end_service_deployment(
        &mut self,
        arn: &str,
        status: ServiceDeploymentStatus,
        reason: Option<String>,
        running: u32,
    ) {
        if let Some(sd) = self.service_deployments.get_mut(arn) {
            sd.status = status;
            sd.status_reason = reason;
            sd.running = running;
        }
    }

    /// The primary deployment starts the tasks it misses, and completes once enough are
    /// running (and healthy, with a health check).
    fn step_primary(&mut self, service: &mut SimService, t: Millis) {
        let Some(primary) = service
            .deployments
            .iter()
            .find(|d| d.status == DeploymentStatus::Primary)
            .cloned()
        else {
            return;
        };
        let alive = service
            .tasks
            .iter()
            .filter(|task| task.deployment == primary.id && task.status != TaskStatus::Stopped)
            .count();
        let missing = (service.desired_count as usize).saturating_sub(alive);
        for _ in 0..missing {
            let jitter = Duration::from_millis(self.rng.below(START_JITTER_MS));
            service.tasks.push(SimTask {
                deployment: primary.id.clone(),
                task_definition_arn: primary.task_definition_arn.clone(),
                running_at: t.after(START_DELAY + jitter),
                status: TaskStatus::Pending,
                health: Health::Unknown,
                unhealthy_since: None,
            });
        }
        let (_, health_check) = self.behaviour_of(&primary.task_definition_arn);
        let ready = service
            .tasks
            .iter()
            .filter(|task| task.deployment == primary.id && task.status == TaskStatus::Running)
            .filter(|task| !health_check || task.health == Health::Healthy)
            .count();
        if primary.rollout_state == RolloutState::InProgress
            && ready >= service.desired_count as usize
        {
            service.tasks.retain(|task| task.deployment == primary.id);
            service.deployments.retain(|d| d.id == primary.id);
            if let Some(d) = service.deployments.first_mut() {
                d.rollout_state = RolloutState::Completed;
            }
            service.last_completed_task_definition = primary.task_definition_arn.clone();
            // Its service deployment succeeded — or, for a rollback, rolled back.
            let rolled_back = self
                .service_deployments
                .get(&primary.service_deployment)
                .is_some_and(|sd| sd.deployment != primary.id);
            let (status, reason) = if rolled_back {
                (ServiceDeploymentStatus::RollbackSuccessful, None)
            } else {
                (ServiceDeploymentStatus::Successful, None)
            };
            self.end_service_deployment(
                &primary.service_deployment,
                status,
                reason,
                if rolled_back {
                    0
                } else {
                    service.desired_count
                },
            );
        }
    }

    fn register(
        &mut self,
        mut document: Map<String, Value>,
        tags: BTreeMap<String, String>,
        now: Millis,
    ) -> Result<String, PortError> {
        let refuse = |message: String| {
            PortError::new(ErrorKind::Permanent, AwsOp::RegisterTaskDefinition, message)
        };
        if let Some(field) = READ_ONLY_FIELDS.iter().find(|f| document.contains_key(**f)) {
            return Err(refuse(format!(
                "ClientException: unexpected read-only field {field}"
            )));
        }
        let family = document
            .get("family")
            .and_then(Value::as_str)
            .filter(|f| !f.is_empty())
            .ok_or_else(|| refuse("ClientException: family is required".to_owned()))?
            .to_owned();
        let containers = document
            .get("containerDefinitions")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| {
                refuse("ClientException: containerDefinitions is required".to_owned())
            })?;
        let task_memory = document.contains_key("memory");
        for container in containers {
            let has = |key: &str| container.get(key).is_some_and(|v| !v.is_null());
            if !has("name") || !has("image") {
                return Err(refuse(
                    "ClientException: every container needs a name and an image".to_owned(),
                ));
            }
            if !task_memory && !has("memory") && !has("memoryReservation") {
                return Err(refuse(
                    "ClientException: a container needs memory when the task has none".to_owned(),
                ));
            }
        }
        let revision = self.revisions.entry(family.clone()).or_insert(0);
        *revision += 1;
        let arn = format!("arn:aws:ecs:{REGION}:{ACCOUNT}:task-definition/{family}:{revision}");
        document.insert("taskDefinitionArn".to_owned(), Value::String(arn.clone()));
        document.insert("revision".to_owned(), Value::from(*revision));
        document.insert("status".to_owned(), Value::String("ACTIVE".to_owned()));
        document.insert("registeredAt".to_owned(), Value::from(now.0));
        document.insert(
            "registeredBy".to_owned(),
            Value::String(format!("arn:aws:iam::{ACCOUNT}:role/controller")),
        );
        self.task_definitions
            .insert(arn.clone(), StoredTaskDefinition { document, tags });
        self.registrations.push(arn.clone());
        Ok(arn)
    }
}

fn is_steady(service: &SimService) -> bool {
    service.deployments.len() == 1
        && service
            .deployments
            .iter()
            .all(|d| d.rollout_state == RolloutState::Completed)
        && service
            .tasks
            .iter()
            .filter(|t| t.status != TaskStatus::Stopped)
            .all(|t| t.status == TaskStatus::Running && t.health != Health::Unhealthy)
}

impl SimEcs {
    /// An empty ECS.
    #[must_use]
    pub fn new(clock: SimClock, seed: u64) -> Self {
        SimEcs {
            world: Arc::new(Mutex::new(EcsWorld {
                services: BTreeMap::new(),
                task_definitions: BTreeMap::new(),
                revisions: BTreeMap::new(),
                behaviours: BTreeMap::new(),
                updates: Vec::new(),
                registrations: Vec::new(),
                next_id: 0,
                rng: Rng::new(seed),
                breaker_minimum: BREAKER_MINIMUM,
                service_deployments: BTreeMap::new(),
                before_update: BTreeMap::new(),
                stale_reads: 0,
            })),
            clock,
            faults: Faults::default(),
        }
    }

    /// The same ECS without fault injection (for checkers).
    #[must_use]
    pub fn without_faults(&self) -> SimEcs {
        SimEcs {
            world: self.world.clone(),
            clock: self.clock.clone(),
            faults: Faults::default(),
        }
    }

    /// The next `count` reads of a service updated less than [`STALE_WINDOW`] ago answer
    /// with the service as it was before that update (eventual consistency); 0 stops them.
    pub fn stale_reads(&self, count: u32) {
        if let Ok(mut world) = self.world.lock() {
            world.stale_reads = if count == 0 {
                0
            } else {
                world.stale_reads + count
            };
        }
    }

    /// Sets how tasks of `image` behave.
    pub fn set_behaviour(&self, image: &str, behaviour: ImageBehaviour) {
        if let Ok(mut world) = self.world.lock() {
            world.behaviours.insert(image.to_owned(), behaviour);
        }
    }

    /// Sets the circuit breaker's minimum failure threshold ([`BREAKER_MINIMUM`] by default, as
    /// ECS's current rule; its pre-2024 one was 10).
    pub fn set_circuit_breaker_minimum(&self, minimum: u32) {
        if let Ok(mut world) = self.world.lock() {
            world.breaker_minimum = minimum.max(1);
        }
    }

    /// Service updates so far, every actor.
    #[must_use]
    pub fn updates(&self) -> Vec<ServiceUpdate> {
        self.world
            .lock()
            .map(|w| w.updates.clone())
            .unwrap_or_default()
    }

    /// Task definitions registered so far (after the initial ones), in order.
    #[must_use]
    pub fn registrations(&self) -> Vec<String> {
        self.world
            .lock()
            .map(|w| w.registrations.clone())
            .unwrap_or_default()
    }

    /// A registered task definition.
    #[must_use]
    pub fn task_definition(&self, arn: &str) -> Option<TaskDefinition> {
        Some(
            self.world
                .lock()
                .ok()?
                .task_definitions
                .get(arn)?
                .summary(arn),
        )
    }

    /// The full document of a registered task definition (as `DescribeTaskDefinition` returns it).
    #[must_use]
    pub fn document(&self, arn: &str) -> Option<Map<String, Value>> {
        Some(
            self.world
                .lock()
                .ok()?
                .task_definitions
                .get(arn)?
                .document
                .clone(),
        )
    }

    /// Registers a document as someone else would (a foreign writer in tests).
    ///
    /// # Errors
    /// When the document is refused, as ECS would.
    pub fn register_document(
        &self,
        document: Map<String, Value>,
        tags: BTreeMap<String, String>,
    ) -> Result<String, PortError> {
        let now = self.clock.now();
        guard(&self.world, AwsOp::RegisterTaskDefinition)?.register(document, tags, now)
    }

    /// Creates a settled service running `spec.image` (the world's set-up, not a call the
    /// controller makes: its errors name the registration it makes).
    ///
    /// # Errors
    /// When the initial task definition is refused.
    pub fn create_service(&self, spec: &SimRunnerSpec) -> Result<(), PortError> {
        let now = self.clock.now();
        let mut world = guard(&self.world, AwsOp::RegisterTaskDefinition)?;
        let mut runner = serde_json::json!({
            "name": spec.container,
            "image": spec.image,
            "essential": true,
            "memory": 1024,
            "environment": [{"name": "RUNNER_MODE", "value": "production"}],
            "secrets": [{"name": "RUNNER_TOKEN", "valueFrom": format!("arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{}/token", spec.service)}],
            "logConfiguration": {"logDriver": "awslogs", "options": {"awslogs-group": format!("/ecs/{}", spec.service)}}
        });
        if spec.health_check {
            runner["healthCheck"] = serde_json::json!({"command": ["CMD-SHELL", "wget -qO- http://localhost:8080/healthz"], "interval": 10, "retries": 3});
        }
        let document = serde_json::json!({
            "family": spec.family,
            "taskRoleArn": format!("arn:aws:iam::{ACCOUNT}:role/{}-task", spec.service),
            "executionRoleArn": format!("arn:aws:iam::{ACCOUNT}:role/{}-execution", spec.service),
            "networkMode": "awsvpc",
            "cpu": "512",
            "memory": "2048",
            "requiresCompatibilities": ["FARGATE"],
            "volumes": [{"name": "work"}],
            "containerDefinitions": [runner, {"name": "log-router", "image": "public.ecr.aws/aws-observability/aws-for-fluent-bit:stable", "essential": false, "memory": 128}]
        });
        let Value::Object(document) = document else {
            return Err(PortError::new(
                ErrorKind::Permanent,
                AwsOp::RegisterTaskDefinition,
                "document is not an object",
            ));
        };
        let tags = BTreeMap::from([(VERSION_TAG.to_owned(), spec.version.clone())]);
        let arn = world.register(document, tags, now)?;
        world.registrations.clear();
        let deployment_id = format!("ecs-svc/{:019}", world.id());
        let service_deployment =
            service_deployment_arn(&spec.cluster, &spec.service, &deployment_id);
        world.service_deployments.insert(
            service_deployment.clone(),
            SimServiceDeployment {
                cluster: spec.cluster.clone(),
                service: spec.service.clone(),
                deployment: deployment_id.clone(),
                status: ServiceDeploymentStatus::Successful,
                status_reason: None,
                requested: spec.desired_count,
                running: spec.desired_count,
                failures: 0,
                threshold: BREAKER_MINIMUM,
                triggered: false,
                rollback_reason: None,
            },
        );
        let tasks = (0..spec.desired_count)
            .map(|_| SimTask {
                deployment: deployment_id.clone(),
                task_definition_arn: arn.clone(),
                running_at: now,
                status: TaskStatus::Running,
                health: if spec.health_check {
                    Health::Healthy
                } else {
                    Health::Unknown
                },
                unhealthy_since: None,
            })
            .collect();
        world.services.insert(
            (spec.cluster.clone(), spec.service.clone()),
            SimService {
                cluster: spec.cluster.clone(),
                name: spec.service.clone(),
                task_definition_arn: arn.clone(),
                desired_count: spec.desired_count,
                deployments: vec![SimDeployment {
                    id: deployment_id,
                    status: DeploymentStatus::Primary,
                    task_definition_arn: arn.clone(),
                    rollout_state: RolloutState::Completed,
                    reason: None,
                    failed_tasks: 0,
                    service_deployment,
                }],
                tasks,
                last_completed_task_definition: arn,
                last_step: now,
            },
        );
        Ok(())
    }

    /// Points a service at a task definition, as `actor` (a foreign writer in tests).
    ///
    /// # Errors
    /// When the service or task definition does not exist.
    pub fn update_service_as(
        &self,
        cluster: &str,
        service: &str,
        task_definition_arn: &str,
        actor: &str,
    ) -> Result<String, PortError> {
        let now = self.clock.now();
        let mut world = guard(&self.world, AwsOp::UpdateService)?;
        let key = (cluster.to_owned(), service.to_owned());
        world.advance(&key, now);
        if !world.task_definitions.contains_key(task_definition_arn) {
            return Err(PortError::new(
                ErrorKind::Permanent,
                AwsOp::UpdateService,
                format!(
                    "InvalidParameterException: TaskDefinition not found: {task_definition_arn}"
                ),
            ));
        }
        let id = format!("ecs-svc/{:019}", world.id());
        let Some(before) = world.services.get(&key).cloned() else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                AwsOp::UpdateService,
                format!("ServiceNotFoundException: {service}"),
            ));
        };
        world.before_update.insert(key.clone(), (now, before));
        let Some(svc) = world.services.get_mut(&key) else {
            return Err(PortError::new(
                ErrorKind::NotFound,
                AwsOp::UpdateService,
                format!("ServiceNotFoundException: {service}"),
            ));
        };
        let mut replaced = Vec::new();
        for deployment in &mut svc.deployments {
            if deployment.status == DeploymentStatus::Primary {
                deployment.status = DeploymentStatus::Active;
                if deployment.rollout_state == RolloutState::InProgress {
                    replaced.push(deployment.service_deployment.clone());
                }
            }
        }
        let arn = service_deployment_arn(cluster, service, &id);
        svc.deployments.insert(
            0,
            SimDeployment {
                id: id.clone(),
                status: DeploymentStatus::Primary,
                task_definition_arn: task_definition_arn.to_owned(),
                rollout_state: RolloutState::InProgress,
                reason: None,
                failed_tasks: 0,
                service_deployment: arn.clone(),
            },
        );
        svc.task_definition_arn = task_definition_arn.to_owned();
        let svc = svc.clone();
        // A deployment still rolling out (or rolling back) is stopped by the new one.
        for earlier in replaced {
            world.end_service_deployment(
                &earlier,
                ServiceDeploymentStatus::Stopped,
                Some("a newer service deployment replaced it".to_owned()),
                0,
            );
        }
        let threshold = world.threshold(&svc);
        world.service_deployments.insert(
            arn,
            SimServiceDeployment {
                cluster: cluster.to_owned(),
                service: service.to_owned(),
                deployment: id.clone(),
                status: ServiceDeploymentStatus::InProgress,
                status_reason: None,
                requested: svc.desired_count,
                running: 0,
                failures: 0,
                threshold,
                triggered: false,
                rollback_reason: None,
            },
        );
        // Only the most recent ones of a service stay described (ids rise with time).
        let prefix = service_deployment_arn(cluster, service, "");
        let kept: Vec<String> = world
            .service_deployments
            .range(prefix.clone()..)
            .take_while(|(arn, _)| arn.starts_with(&prefix))
            .map(|(arn, _)| arn.clone())
            .collect();
        for old in kept
            .iter()
            .take(kept.len().saturating_sub(SERVICE_DEPLOYMENTS_KEPT))
        {
            world.service_deployments.remove(old);
        }
        world.updates.push(ServiceUpdate {
            cluster: cluster.to_owned(),
            service: service.to_owned(),
            task_definition_arn: task_definition_arn.to_owned(),
            actor: actor.to_owned(),
            at: now,
        });
        Ok(id)
    }
}

/// A service as `DescribeServices` shows it (stale right after an update when the world is told
/// to serve stale reads).
fn read_service(
    world: &mut EcsWorld,
    cluster: &str,
    service: &str,
    now: Millis,
) -> Result<ServiceState, PortError> {
    let key = (cluster.to_owned(), service.to_owned());
    world.advance(&key, now);
    let stale = world.stale_reads > 0
        && world
            .before_update
            .get(&key)
            .is_some_and(|(at, _)| now.since(*at) < STALE_WINDOW);
    if stale {
        world.stale_reads -= 1;
    }
    let svc = match world.before_update.get(&key) {
        Some((_, before)) if stale => before,
        _ => world.services.get(&key).ok_or_else(|| {
            PortError::new(
                ErrorKind::NotFound,
                AwsOp::DescribeServices,
                format!("MISSING: service {service} in cluster {cluster}"),
            )
        })?,
    };
    Ok(ServiceState {
        cluster: svc.cluster.clone(),
        service: svc.name.clone(),
        task_definition_arn: svc.task_definition_arn.clone(),
        deployments: svc
            .deployments
            .iter()
            .map(|d| {
                let of_d = || svc.tasks.iter().filter(|t| t.deployment == d.id);
                Deployment {
                    id: d.id.clone(),
                    status: d.status,
                    task_definition_arn: d.task_definition_arn.clone(),
                    rollout_state: d.rollout_state,
                    rollout_reason: d.reason.clone(),
                    desired_count: if d.status == DeploymentStatus::Primary {
                        svc.desired_count
                    } else {
                        0
                    },
                    running_count: u32::try_from(
                        of_d().filter(|t| t.status == TaskStatus::Running).count(),
                    )
                    .unwrap_or(u32::MAX),
                    failed_tasks: d.failed_tasks,
                }
            })
            .collect(),
        tasks: Some(
            svc.tasks
                .iter()
                .map(|t| Task {
                    task_definition_arn: t.task_definition_arn.clone(),
                    status: t.status,
                    health: t.health,
                    // The simulation stops tasks only when they fail.
                    failed: t.status == TaskStatus::Stopped,
                })
                .collect(),
        ),
        current_service_deployment: svc
            .deployments
            .iter()
            .find(|d| d.status == DeploymentStatus::Primary)
            .map(|d| d.service_deployment.clone()),
    })
}

/// A service deployment's ARN, as ECS writes them (its id here: the deployment's).
fn service_deployment_arn(cluster: &str, service: &str, deployment_id: &str) -> String {
    let id = deployment_id.trim_start_matches("ecs-svc/");
    format!("arn:aws:ecs:{REGION}:{ACCOUNT}:service-deployment/{cluster}/{service}/{id}")
}

/// A service deployment as `DescribeServiceDeployments` shows it (its service advanced first).
fn read_service_deployment(
    world: &mut EcsWorld,
    arn: &str,
    now: Millis,
) -> Result<ServiceDeployment, PortError> {
    let missing = || {
        PortError::new(
            ErrorKind::NotFound,
            AwsOp::DescribeServiceDeployments,
            format!("MISSING: service deployment {arn}"),
        )
    };
    let key = {
        let sd = world.service_deployments.get(arn).ok_or_else(missing)?;
        (sd.cluster.clone(), sd.service.clone())
    };
    world.advance(&key, now);
    let sd = world.service_deployments.get(arn).ok_or_else(missing)?;
    // While it rolls out, its counts are its deployment's.
    let live = world
        .services
        .get(&key)
        .and_then(|svc| {
            svc.deployments
                .iter()
                .find(|d| d.id == sd.deployment)
                .map(|d| (svc, d))
        })
        .filter(|_| sd.status == ServiceDeploymentStatus::InProgress);
    let (running, failures) = match live {
        Some((svc, d)) => (
            u32::try_from(
                svc.tasks
                    .iter()
                    .filter(|t| t.deployment == d.id && t.status == TaskStatus::Running)
                    .count(),
            )
            .unwrap_or(u32::MAX),
            d.failed_tasks,
        ),
        None => (sd.running, sd.failures),
    };
    Ok(ServiceDeployment {
        arn: arn.to_owned(),
        status: sd.status,
        status_reason: sd.status_reason.clone(),
        requested: sd.requested,
        running,
        breaker: Some(BreakerCount {
            triggered: sd.triggered,
            failure_count: failures,
            threshold: sd.threshold,
        }),
        rollback_reason: sd.rollback_reason.clone(),
    })
}

#[async_trait]
impl Ecs for SimEcs {
    async fn pace(&self, _op: AwsOp) {}

    async fn describe_service(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceState, PortError> {
        self.faults.check(AwsOp::DescribeServices)?;
        // Against AWS the task list takes `ListTasks` and `DescribeTasks`: a fault on the
        // latter (an answer the SDK cannot read) fails the whole read, as in the adapter.
        self.faults.check(AwsOp::DescribeTasks)?;
        let now = self.clock.now();
        let mut world = guard(&self.world, AwsOp::DescribeServices)?;
        read_service(&mut world, cluster, service, now)
    }

    async fn describe_services_without_tasks(
        &self,
        cluster: &str,
        services: &[String],
    ) -> Result<Vec<Result<ServiceState, PortError>>, PortError> {
        // One call as against AWS: a fault fails the whole batch.
        self.faults.check(AwsOp::DescribeServices)?;
        let now = self.clock.now();
        let mut world = guard(&self.world, AwsOp::DescribeServices)?;
        Ok(services
            .iter()
            .map(|service| {
                read_service(&mut world, cluster, service, now).map(|mut state| {
                    state.tasks = None;
                    state
                })
            })
            .collect())
    }

    async fn describe_service_without_tasks(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<ServiceState, PortError> {
        // As against AWS: no task list (nothing at rest may depend on one), no task calls.
        self.faults.check(AwsOp::DescribeServices)?;
        let now = self.clock.now();
        let mut world = guard(&self.world, AwsOp::DescribeServices)?;
        let mut state = read_service(&mut world, cluster, service, now)?;
        state.tasks = None;
        Ok(state)
    }

    async fn list_service_tasks(
        &self,
        cluster: &str,
        service: &str,
    ) -> Result<Vec<Task>, PortError> {
        self.faults.check(AwsOp::ListTasks)?;
        self.faults.check(AwsOp::DescribeTasks)?;
        let now = self.clock.now();
        let mut world = guard(&self.world, AwsOp::ListTasks)?;
        let state = read_service(&mut world, cluster, service, now).map_err(|mut error| {
            error.operation = AwsOp::ListTasks;
            error
        })?;
        Ok(state.tasks.unwrap_or_default())
    }

    async fn describe_task_definition(&self, arn: &str) -> Result<TaskDefinition, PortError> {
        self.faults.check(AwsOp::DescribeTaskDefinition)?;
        let world = guard(&self.world, AwsOp::DescribeTaskDefinition)?;
        let stored = world.task_definitions.get(arn).ok_or_else(|| {
            PortError::new(
                ErrorKind::NotFound,
                AwsOp::DescribeTaskDefinition,
                format!("ClientException: Unable to describe task definition {arn}"),
            )
        })?;
        Ok(stored.summary(arn))
    }

    async fn list_task_definitions(
        &self,
        family_prefix: &str,
        token: Option<&str>,
    ) -> Result<TaskDefinitionPage, PortError> {
        self.faults.check(AwsOp::ListTaskDefinitions)?;
        let world = guard(&self.world, AwsOp::ListTaskDefinitions)?;
        // As AWS with `sort=DESC`: families in reverse order, each newest first, in pages.
        let mut listed: Vec<(&str, u64, &String)> = world
            .task_definitions
            .iter()
            .filter_map(|(arn, td)| {
                let family = td.document.get("family").and_then(Value::as_str)?;
                family.starts_with(family_prefix).then_some((
                    family,
                    td.revision().unwrap_or(0),
                    arn,
                ))
            })
            .collect();
        listed.sort_by(|a, b| (b.0, b.1).cmp(&(a.0, a.1)));
        let start = match token {
            None => 0,
            Some(token) => token.parse::<usize>().map_err(|_| {
                PortError::new(
                    ErrorKind::Permanent,
                    AwsOp::ListTaskDefinitions,
                    format!("InvalidParameterException: bad nextToken {token:?}"),
                )
            })?,
        };
        let end = start
            .saturating_add(TASK_DEFINITIONS_PAGE_MAX)
            .min(listed.len());
        Ok(TaskDefinitionPage {
            arns: listed
                .get(start..end)
                .unwrap_or_default()
                .iter()
                .map(|(_, _, arn)| (*arn).clone())
                .collect(),
            next: (end < listed.len()).then(|| end.to_string()),
        })
    }

    async fn register_clone(
        &self,
        base_arn: &str,
        container: &str,
        image: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<String, PortError> {
        self.faults.mutate(AwsOp::RegisterTaskDefinition, || {
            let now = self.clock.now();
            let mut world = guard(&self.world, AwsOp::RegisterTaskDefinition)?;
            let base = world
                .task_definitions
                .get(base_arn)
                .cloned()
                .ok_or_else(|| {
                    PortError::new(
                        ErrorKind::NotFound,
                        AwsOp::DescribeTaskDefinition,
                        format!("ClientException: Unable to describe task definition {base_arn}"),
                    )
                })?;
            let document = clone_with_image(&base.document, container, image).map_err(|e| {
                PortError::new(
                    ErrorKind::Permanent,
                    AwsOp::RegisterTaskDefinition,
                    e.to_string(),
                )
            })?;
            let mut merged = base.tags;
            merged.extend(tags);
            world.register(document, merged, now)
        })
    }

    async fn update_service(
        &self,
        cluster: &str,
        service: &str,
        task_definition_arn: &str,
        only_over: Option<&[String]>,
    ) -> Result<Updated, PortError> {
        self.faults.mutate(AwsOp::UpdateService, || {
            if let Some(expected) = only_over {
                let now = self.clock.now();
                let mut world = guard(&self.world, AwsOp::UpdateService)?;
                let key = (cluster.to_owned(), service.to_owned());
                world.advance(&key, now);
                let appeared = world.services.get(&key).and_then(|svc| {
                    svc.deployments
                        .iter()
                        .find(|d| !expected.contains(&d.id))
                        .map(|d| (d.id.clone(), d.task_definition_arn.clone()))
                });
                if let Some((id, theirs)) = appeared {
                    return Err(PortError::new(
                        ErrorKind::Conflict,
                        AwsOp::UpdateService,
                        format!("deployment {id} of {theirs} appeared on the service outside this attempt"),
                    ));
                }
            }
            let deployment_id =
                self.update_service_as(cluster, service, task_definition_arn, "controller")?;
            Ok(Updated {
                service_deployment: Some(service_deployment_arn(cluster, service, &deployment_id)),
                deployment_id,
            })
        })
    }

    async fn describe_service_deployments(
        &self,
        arns: &[String],
    ) -> Result<Vec<Result<ServiceDeployment, PortError>>, PortError> {
        let mut answers = Vec::with_capacity(arns.len());
        for chunk in arns.chunks(DESCRIBE_SERVICE_DEPLOYMENTS_MAX) {
            // One call as against AWS: a fault fails the whole batch.
            self.faults.check(AwsOp::DescribeServiceDeployments)?;
            let now = self.clock.now();
            let mut world = guard(&self.world, AwsOp::DescribeServiceDeployments)?;
            answers.extend(
                chunk
                    .iter()
                    .map(|arn| read_service_deployment(&mut world, arn, now)),
            );
        }
        Ok(answers)
    }

    async fn stop_service_deployment(
        &self,
        cluster: &str,
        service: &str,
        arn: &str,
    ) -> Result<(), PortError> {
        self.faults.mutate(AwsOp::StopServiceDeployment, || {
            let now = self.clock.now();
            let mut world = guard(&self.world, AwsOp::StopServiceDeployment)?;
            let refuse = |kind, message: String| {
                PortError::new(kind, AwsOp::StopServiceDeployment, message)
            };
            let key = (cluster.to_owned(), service.to_owned());
            world.advance(&key, now);
            let Some(sd) = world
                .service_deployments
                .get(arn)
                .filter(|sd| sd.cluster == cluster && sd.service == service)
                .cloned()
            else {
                return Err(refuse(
                    ErrorKind::NotFound,
                    format!("ServiceDeploymentNotFoundException: {arn}"),
                ));
            };
            match sd.status {
                ServiceDeploymentStatus::Pending | ServiceDeploymentStatus::InProgress => {}
                // Already stopping or rolling back: it goes on.
                ServiceDeploymentStatus::StopRequested
                | ServiceDeploymentStatus::RollbackRequested
                | ServiceDeploymentStatus::RollbackInProgress => return Ok(()),
                done => {
                    return Err(refuse(
                        ErrorKind::Conflict,
                        format!(
                            "ConflictException: service deployment {arn} is {} and cannot be stopped",
                            done.name()
                        ),
                    ))
                }
            }
            let Some(mut svc) = world.services.remove(&key) else {
                return Err(refuse(
                    ErrorKind::NotFound,
                    format!("ServiceNotFoundException: {service}"),
                ));
            };
            let index = svc.deployments.iter().position(|d| {
                d.id == sd.deployment && d.task_definition_arn != svc.last_completed_task_definition
            });
            let result = match index {
                Some(index) => {
                    world.before_update.insert(key.clone(), (now, svc.clone()));
                    world.roll_back(
                        &mut svc,
                        index,
                        "stopped by StopServiceDeployment: rolling back".to_owned(),
                        "rollback requested (StopServiceDeployment)".to_owned(),
                    );
                    let target = svc.task_definition_arn.clone();
                    world.updates.push(ServiceUpdate {
                        cluster: cluster.to_owned(),
                        service: service.to_owned(),
                        task_definition_arn: target,
                        actor: "controller".to_owned(),
                        at: now,
                    });
                    Ok(())
                }
                None => Err(refuse(
                    ErrorKind::Conflict,
                    format!("ConflictException: service deployment {arn} has no earlier revision to roll back to"),
                )),
            };
            world.services.insert(key, svc);
            result
        })
    }
}
