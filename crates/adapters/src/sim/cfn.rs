//! Simulated `CloudFormation`: stacks made of named resources, change sets computed from
//! templates registered by URL, executions that progress over simulated time, roll back when a
//! resource is marked to fail, and stack events.
//!
//! Modelled: change set creation (`CREATE_PENDING` for [`CREATE_DELAY`], then
//! `CREATE_COMPLETE` or `FAILED`), Add / Modify / Remove with replacement, parameter changes,
//! tag-only change sets and changes of parameters no resource reads (created with an empty
//! change list, as AWS does), "didn't contain changes" (nothing differs), missing or undeclared
//! parameters, capabilities, execution tokens, `UPDATE_*` and
//! `UPDATE_ROLLBACK_*` statuses, the deletion of the stack's other change sets on execution,
//! and events with the execution's token. Not modelled: drift, nested stacks, stack policies,
//! resource-level timing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{guard, Faults, SimClock};
use runner_updater_core::domain::infra::{
    ChangeSet, ChangeSetStatus, Execution, ResourceChange, ResourceStatus, StackEvent,
    StackProgress, StackStatus,
};
use runner_updater_core::domain::observed::StackState;
use runner_updater_core::domain::Millis;
use runner_updater_ports::AwsOp;
use runner_updater_ports::{
    ChangeSetKind, ChangeSetRequest, Clock, CloudFormation, ErrorKind, PortError, TemplateSummary,
};

/// How long a change set takes to be computed.
pub const CREATE_DELAY: Duration = Duration::from_secs(5);
/// How long an update (and a rollback) takes.
pub const UPDATE_DURATION: Duration = Duration::from_secs(30);

/// One resource of a simulated template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimResource {
    /// Logical id.
    pub logical_id: String,
    /// Type (`AWS::IAM::Role` needs `CAPABILITY_IAM`).
    pub resource_type: String,
    /// Its properties, reduced to a text: a different text is a modification.
    pub properties: String,
    /// Parameters it reads: a change of their value modifies it.
    pub uses: Vec<String>,
    /// Whether a modification replaces it.
    pub replace_on_change: bool,
    /// Creating or updating it fails with this reason (the stack rolls back).
    pub fails: Option<String>,
    /// Its rollback fails too (the stack ends in `UPDATE_ROLLBACK_FAILED`).
    pub rollback_fails: bool,
}

impl SimResource {
    /// A resource with properties.
    #[must_use]
    pub fn new(logical_id: &str, resource_type: &str, properties: &str) -> Self {
        SimResource {
            logical_id: logical_id.to_owned(),
            resource_type: resource_type.to_owned(),
            properties: properties.to_owned(),
            uses: Vec::new(),
            replace_on_change: false,
            fails: None,
            rollback_fails: false,
        }
    }

    /// Reads these parameters.
    #[must_use]
    pub fn using(mut self, parameters: &[&str]) -> Self {
        self.uses = parameters.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// Replaced when modified.
    #[must_use]
    pub fn replaced(mut self) -> Self {
        self.replace_on_change = true;
        self
    }

    /// Fails when created or updated.
    #[must_use]
    pub fn failing(mut self, reason: &str) -> Self {
        self.fails = Some(reason.to_owned());
        self
    }

    /// Fails, and fails to roll back.
    #[must_use]
    pub fn failing_rollback(mut self, reason: &str) -> Self {
        self.fails = Some(reason.to_owned());
        self.rollback_fails = true;
        self
    }
}

/// A simulated template.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SimTemplate {
    /// Declared parameters with their defaults (`None`: required).
    pub parameters: BTreeMap<String, Option<String>>,
    /// Resources.
    pub resources: Vec<SimResource>,
    /// Outputs.
    pub outputs: BTreeMap<String, String>,
}

impl SimTemplate {
    /// Declares a parameter.
    #[must_use]
    pub fn parameter(mut self, name: &str, default: Option<&str>) -> Self {
        self.parameters
            .insert(name.to_owned(), default.map(str::to_owned));
        self
    }

    /// Adds a resource.
    #[must_use]
    pub fn resource(mut self, resource: SimResource) -> Self {
        self.resources.push(resource);
        self
    }

    fn capabilities(&self) -> Vec<String> {
        if self
            .resources
            .iter()
            .any(|r| r.resource_type.starts_with("AWS::IAM::"))
        {
            vec!["CAPABILITY_IAM".to_owned()]
        } else {
            Vec::new()
        }
    }
}

#[derive(Debug, Clone)]
struct SimChangeSet {
    id: String,
    created_at: Millis,
    template: SimTemplate,
    parameters: BTreeMap<String, String>,
    tags: BTreeMap<String, String>,
    changes: Vec<ResourceChange>,
    /// Why creation fails, decided at creation.
    failure: Option<String>,
    execution: Execution,
    token: Option<String>,
}

#[derive(Debug, Clone)]
struct Operation {
    change_set: String,
    token: String,
    started: Millis,
    /// The resource that fails, with its reason and whether its rollback fails too.
    failure: Option<(SimResource, String)>,
    previous: (
        SimTemplate,
        BTreeMap<String, String>,
        BTreeMap<String, String>,
    ),
}

#[derive(Debug, Clone)]
struct SimStack {
    state: StackState,
    template: SimTemplate,
    change_sets: BTreeMap<String, SimChangeSet>,
    events: Vec<StackEvent>,
    operation: Option<Operation>,
}

#[derive(Debug, Default)]
struct World {
    stacks: BTreeMap<String, SimStack>,
    templates: BTreeMap<String, SimTemplate>,
    next_id: u64,
    executions: Vec<(String, String)>,
    creations: Vec<(String, String)>,
}

/// Simulated `CloudFormation`.
#[derive(Debug, Clone)]
pub struct SimCfn {
    clock: SimClock,
    world: Arc<Mutex<World>>,
    /// Faults to inject.
    pub faults: Faults,
}

const REGION_ACCOUNT: &str = "us-east-1:000000000000";

impl SimCfn {
    /// An empty `CloudFormation` on `clock`.
    #[must_use]
    pub fn new(clock: SimClock) -> Self {
        SimCfn {
            clock,
            world: Arc::new(Mutex::new(World::default())),
            faults: Faults::default(),
        }
    }

    /// Publishes a template at `url` (the simulation's S3).
    pub fn put_template(&self, url: &str, template: SimTemplate) {
        if let Ok(mut world) = self.world.lock() {
            world.templates.insert(url.to_owned(), template);
        }
    }

    /// Creates a stack (`CREATE_COMPLETE`) from a template, with parameter values and tags.
    pub fn create_stack(
        &self,
        name: &str,
        template: SimTemplate,
        parameters: &[(&str, &str)],
        tags: &[(&str, &str)],
    ) {
        let mut values: BTreeMap<String, String> = template
            .parameters
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect();
        for (k, v) in parameters {
            values.insert((*k).to_owned(), (*v).to_owned());
        }
        let state = StackState {
            name: name.to_owned(),
            status: StackStatus::CreateComplete,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            outputs: template.outputs.clone(),
            parameters: values,
            last_updated: None,
        };
        if let Ok(mut world) = self.world.lock() {
            world.stacks.insert(
                name.to_owned(),
                SimStack {
                    state,
                    template,
                    change_sets: BTreeMap::new(),
                    events: Vec::new(),
                    operation: None,
                },
            );
        }
    }

    /// Sets a stack's status by hand (a stack already broken when the controller looks).
    pub fn set_status(&self, name: &str, status: StackStatus) {
        if let Ok(mut world) = self.world.lock() {
            if let Some(stack) = world.stacks.get_mut(name) {
                stack.state.status = status;
            }
        }
    }

    /// `(stack, change set)` of every `ExecuteChangeSet` that started an update.
    #[must_use]
    pub fn executions(&self) -> Vec<(String, String)> {
        self.world
            .lock()
            .map(|w| w.executions.clone())
            .unwrap_or_default()
    }

    /// `(stack, change set)` of every change set created.
    #[must_use]
    pub fn creations(&self) -> Vec<(String, String)> {
        self.world
            .lock()
            .map(|w| w.creations.clone())
            .unwrap_or_default()
    }

    /// Names of the change sets a stack has now.
    #[must_use]
    pub fn change_sets(&self, stack: &str) -> Vec<String> {
        self.world
            .lock()
            .ok()
            .and_then(|w| {
                w.stacks
                    .get(stack)
                    .map(|s| s.change_sets.keys().cloned().collect())
            })
            .unwrap_or_default()
    }

    /// A stack as it is now (after advancing simulated time).
    #[must_use]
    pub fn stack(&self, name: &str) -> Option<StackState> {
        let now = self.clock.now();
        let mut world = self.world.lock().ok()?;
        let stack = world.stacks.get_mut(name)?;
        advance(stack, now);
        Some(stack.state.clone())
    }
}

fn not_found(operation: AwsOp, what: String) -> PortError {
    PortError::new(ErrorKind::NotFound, operation, what)
}

fn validation(operation: AwsOp, message: &str) -> PortError {
    PortError::new(
        ErrorKind::Permanent,
        operation,
        format!("ValidationError: {message}"),
    )
}

fn event(
    logical_id: &str,
    kind: &str,
    status: ResourceStatus,
    reason: Option<&str>,
    at: Millis,
    token: &str,
) -> StackEvent {
    StackEvent {
        logical_id: logical_id.to_owned(),
        resource_type: kind.to_owned(),
        status,
        reason: reason.map(str::to_owned),
        timestamp: at,
        token: Some(token.to_owned()),
    }
}

/// Moves an execution forward to `now`.
fn advance(stack: &mut SimStack, now: Millis) {
    let Some(operation) = stack.operation.clone() else {
        return;
    };
    let name = stack.state.name.clone();
    let token = operation.token.as_str();
    let finished = operation.started.after(UPDATE_DURATION);
    if now < finished {
        return;
    }
    match &operation.failure {
        None => {
            stack.state.status = StackStatus::UpdateComplete;
            stack.state.outputs = stack.template.outputs.clone();
            stack.events.insert(
                0,
                event(
                    &name,
                    "AWS::CloudFormation::Stack",
                    ResourceStatus::UpdateComplete,
                    None,
                    finished,
                    token,
                ),
            );
            if let Some(set) = stack.change_sets.get_mut(&operation.change_set) {
                set.execution = Execution::Complete;
            }
            stack.operation = None;
        }
        Some((resource, reason)) => {
            if stack.state.status == StackStatus::UpdateInProgress {
                stack.state.status = StackStatus::UpdateRollbackInProgress;
                stack.events.insert(
                    0,
                    event(
                        &resource.logical_id,
                        &resource.resource_type,
                        ResourceStatus::UpdateFailed,
                        Some(reason),
                        finished,
                        token,
                    ),
                );
                stack.events.insert(
                    0,
                    event(
                        &name,
                        "AWS::CloudFormation::Stack",
                        ResourceStatus::UpdateRollbackInProgress,
                        Some("The following resource(s) failed to update"),
                        finished,
                        token,
                    ),
                );
            }
            let rolled = finished.after(UPDATE_DURATION);
            if now < rolled {
                return;
            }
            if resource.rollback_fails {
                stack.state.status = StackStatus::UpdateRollbackFailed;
            } else {
                let (template, parameters, tags) = operation.previous.clone();
                stack.template = template;
                stack.state.parameters = parameters;
                stack.state.tags = tags;
                stack.state.status = StackStatus::UpdateRollbackComplete;
            }
            let status = ResourceStatus::parse(stack.state.status.as_str());
            stack.events.insert(
                0,
                event(
                    &name,
                    "AWS::CloudFormation::Stack",
                    status,
                    None,
                    rolled,
                    token,
                ),
            );
            if let Some(set) = stack.change_sets.get_mut(&operation.change_set) {
                set.execution = Execution::Failed;
            }
            stack.operation = None;
        }
    }
}

/// What CloudFormation checks before it creates a change set, in its order: the name is free,
/// the stack is not updating, every parameter given is the template's, the capabilities
/// needed are acknowledged.
fn refusal(
    stack: &SimStack,
    new_template: &SimTemplate,
    request: &ChangeSetRequest,
) -> Result<(), PortError> {
    const OP: AwsOp = AwsOp::CreateChangeSet;
    if stack.change_sets.contains_key(&request.name) {
        return Err(PortError::new(
            ErrorKind::Conflict,
            OP,
            format!(
                "AlreadyExistsException: ChangeSet {} already exists",
                request.name
            ),
        ));
    }
    if stack.state.status.progress() == StackProgress::InProgress {
        return Err(validation(
            OP,
            &format!(
                "Stack:{} is in {} state and can not be updated.",
                request.stack, stack.state.status
            ),
        ));
    }
    for key in request.parameters.keys().chain(&request.keep_parameters) {
        if !new_template.parameters.contains_key(key) {
            return Err(validation(
                OP,
                &format!("Parameters: [{key}] do not exist in the template"),
            ));
        }
    }
    let needed = new_template.capabilities();
    if !needed.is_empty()
        && !request
            .capabilities
            .iter()
            .any(|c| c == "CAPABILITY_IAM" || c == "CAPABILITY_NAMED_IAM")
    {
        return Err(PortError::new(
            ErrorKind::Permanent,
            OP,
            "InsufficientCapabilitiesException: Requires capabilities : [CAPABILITY_IAM]",
        ));
    }
    Ok(())
}

/// The change set's parameters: given, kept from the stack, or the template's default; a
/// parameter with none of these fails the change set.
fn resolve_parameters(
    stack: &SimStack,
    new_template: &SimTemplate,
    request: &ChangeSetRequest,
) -> (BTreeMap<String, String>, Option<String>) {
    let mut parameters = BTreeMap::new();
    let mut failure = None;
    for (key, default) in &new_template.parameters {
        let value = request
            .parameters
            .get(key)
            .cloned()
            .or_else(|| {
                request
                    .keep_parameters
                    .contains(key)
                    .then(|| stack.state.parameters.get(key).cloned())
                    .flatten()
            })
            .or_else(|| default.clone());
        match value {
            Some(value) => {
                parameters.insert(key.clone(), value);
            }
            None => failure = Some(format!("Parameters: [{key}] must have values")),
        }
    }
    (parameters, failure)
}

/// The changes from (`template`, `parameters`) to (`new`, `new_parameters`).
fn diff(
    template: &SimTemplate,
    parameters: &BTreeMap<String, String>,
    new: &SimTemplate,
    new_parameters: &BTreeMap<String, String>,
) -> Vec<ResourceChange> {
    let mut changes = Vec::new();
    let change = |action: &str, r: &SimResource, replacement: &str| ResourceChange {
        action: action.to_owned(),
        logical_id: r.logical_id.clone(),
        resource_type: r.resource_type.clone(),
        replacement: replacement.to_owned(),
    };
    for resource in &new.resources {
        match template
            .resources
            .iter()
            .find(|r| r.logical_id == resource.logical_id)
        {
            None => changes.push(change("Add", resource, "")),
            Some(old) => {
                let parameter_changed = resource
                    .uses
                    .iter()
                    .any(|p| parameters.get(p) != new_parameters.get(p));
                if old.properties != resource.properties
                    || old.resource_type != resource.resource_type
                    || parameter_changed
                {
                    let replacement = if resource.replace_on_change {
                        "True"
                    } else {
                        "False"
                    };
                    changes.push(change("Modify", resource, replacement));
                }
            }
        }
    }
    for old in &template.resources {
        if !new.resources.iter().any(|r| r.logical_id == old.logical_id) {
            changes.push(change("Remove", old, ""));
        }
    }
    changes
}

#[async_trait]
impl CloudFormation for SimCfn {
    async fn describe_stack(&self, name: &str) -> Result<StackState, PortError> {
        self.faults.check(AwsOp::DescribeStacks)?;
        let now = self.clock.now();
        let mut world = guard(&self.world, AwsOp::DescribeStacks)?;
        let stack = world.stacks.get_mut(name).ok_or_else(|| {
            not_found(
                AwsOp::DescribeStacks,
                format!("Stack with id {name} does not exist"),
            )
        })?;
        advance(stack, now);
        Ok(stack.state.clone())
    }

    async fn template_summary(
        &self,
        stack: &str,
        template_url: Option<&str>,
    ) -> Result<TemplateSummary, PortError> {
        self.faults.check(AwsOp::GetTemplateSummary)?;
        let world = guard(&self.world, AwsOp::GetTemplateSummary)?;
        let template = match template_url {
            Some(url) => world.templates.get(url).ok_or_else(|| {
                validation(
                    AwsOp::GetTemplateSummary,
                    &format!("TemplateURL must be a supported URL: {url} not found"),
                )
            })?,
            None => {
                &world
                    .stacks
                    .get(stack)
                    .ok_or_else(|| {
                        not_found(
                            AwsOp::GetTemplateSummary,
                            format!("Stack with id {stack} does not exist"),
                        )
                    })?
                    .template
            }
        };
        Ok(TemplateSummary {
            capabilities: template.capabilities(),
            parameters: template.parameters.keys().cloned().collect(),
        })
    }

    async fn create_change_set(&self, request: &ChangeSetRequest) -> Result<String, PortError> {
        const OP: AwsOp = AwsOp::CreateChangeSet;
        self.faults.mutate(OP, || {
            let now = self.clock.now();
            let mut guard = guard(&self.world, OP)?;
            let world = &mut *guard;
            if request.kind == ChangeSetKind::Create || request.template_body.is_some() {
                // The simulated world's stacks are made by the scenario (the runners' own);
                // `runner-updater setup` runs against AWS (and moto in the tests).
                return Err(validation(
                    OP,
                    "the simulated CloudFormation creates no stack and reads no inline template",
                ));
            }
            let new_template = match &request.template_url {
                Some(url) => world.templates.get(url).cloned().ok_or_else(|| {
                    validation(
                        OP,
                        &format!("TemplateURL must be a supported URL: {url} not found"),
                    )
                })?,
                None => world
                    .stacks
                    .get(&request.stack)
                    .map(|s| s.template.clone())
                    .ok_or_else(|| {
                        not_found(OP, format!("Stack [{}] does not exist", request.stack))
                    })?,
            };
            world.next_id += 1;
            let id = format!(
                "arn:aws:cloudformation:{REGION_ACCOUNT}:changeSet/{}/{:08x}",
                request.name, world.next_id
            );
            let stack = world
                .stacks
                .get_mut(&request.stack)
                .ok_or_else(|| not_found(OP, format!("Stack [{}] does not exist", request.stack)))?;
            advance(stack, now);
            refusal(stack, &new_template, request)?;
            let (parameters, mut failure) = resolve_parameters(stack, &new_template, request);
            let changes = diff(
                &stack.template,
                &stack.state.parameters,
                &new_template,
                &parameters,
            );
            // Nothing differs at all: AWS refuses the change set. (A tag-only or an unread
            // parameter's change is created with an empty change list, as AWS does.)
            if failure.is_none()
                && changes.is_empty()
                && request.tags == stack.state.tags
                && parameters == stack.state.parameters
            {
                failure = Some("The submitted information didn't contain changes. Submit different information to create a change set.".to_owned());
            }
            stack.change_sets.insert(
                request.name.clone(),
                SimChangeSet {
                    id: id.clone(),
                    created_at: now,
                    template: new_template,
                    parameters,
                    tags: request.tags.clone(),
                    changes,
                    failure,
                    execution: Execution::Available,
                    token: None,
                },
            );
            world
                .creations
                .push((request.stack.clone(), request.name.clone()));
            Ok(id)
        })
    }

    async fn describe_change_set(
        &self,
        stack: &str,
        name: &str,
    ) -> Result<Option<ChangeSet>, PortError> {
        const OP: AwsOp = AwsOp::DescribeChangeSet;
        self.faults.check(OP)?;
        let now = self.clock.now();
        let mut world = guard(&self.world, OP)?;
        let Some(sim) = world.stacks.get_mut(stack) else {
            return Ok(None);
        };
        advance(sim, now);
        let Some(set) = sim.change_sets.get(name) else {
            return Ok(None);
        };
        let ready = now >= set.created_at.after(CREATE_DELAY);
        let (status, reason, execution) = match (&set.failure, ready) {
            (_, false) => (
                ChangeSetStatus::CreateInProgress,
                None,
                Execution::Unavailable,
            ),
            (Some(reason), true) => (
                ChangeSetStatus::Failed,
                Some(reason.clone()),
                Execution::Unavailable,
            ),
            (None, true) => (ChangeSetStatus::CreateComplete, None, set.execution.clone()),
        };
        Ok(Some(ChangeSet {
            id: set.id.clone(),
            status,
            status_reason: reason,
            execution_status: execution,
            changes: if ready {
                set.changes.clone()
            } else {
                Vec::new()
            },
            parameters: set.parameters.clone(),
        }))
    }

    async fn execute_change_set(
        &self,
        stack: &str,
        name: &str,
        token: &str,
    ) -> Result<(), PortError> {
        const OP: AwsOp = AwsOp::ExecuteChangeSet;
        self.faults.mutate(OP, || {
            let now = self.clock.now();
            let mut guard = guard(&self.world, OP)?;
            let world = &mut *guard;
            let sim = world
                .stacks
                .get_mut(stack)
                .ok_or_else(|| not_found(OP, format!("Stack [{stack}] does not exist")))?;
            advance(sim, now);
            let set = sim
                .change_sets
                .get(name)
                .cloned()
                .ok_or_else(|| not_found(OP, format!("ChangeSet [{name}] does not exist")))?;
            if set.execution != Execution::Available {
                if set.token.as_deref() == Some(token) {
                    return Ok(()); // the same request again
                }
                return Err(PortError::new(
                    ErrorKind::Permanent,
                    OP,
                    format!("InvalidChangeSetStatus: ChangeSet [{name}] cannot be executed in its current status"),
                ));
            }
            if set.failure.is_some() || now < set.created_at.after(CREATE_DELAY) {
                return Err(PortError::new(
                    ErrorKind::Permanent,
                    OP,
                    format!("InvalidChangeSetStatus: ChangeSet [{name}] is not available"),
                ));
            }
            if sim.state.status.progress() == StackProgress::InProgress {
                return Err(validation(
                    OP,
                    &format!(
                        "Stack:{stack} is in {} state and can not be updated.",
                        sim.state.status
                    ),
                ));
            }
            let failure = set
                .template
                .resources
                .iter()
                .filter(|r| {
                    set.changes
                        .iter()
                        .any(|c| c.logical_id == r.logical_id && c.action != "Remove")
                })
                .find_map(|r| r.fails.clone().map(|reason| (r.clone(), reason)));
            let previous = (
                sim.template.clone(),
                sim.state.parameters.clone(),
                sim.state.tags.clone(),
            );
            sim.template = set.template.clone();
            sim.state.parameters = set.parameters.clone();
            sim.state.tags = set.tags.clone();
            sim.state.status = StackStatus::UpdateInProgress;
            sim.state.last_updated = Some(now);
            sim.events.insert(
                0,
                event(
                    stack,
                    "AWS::CloudFormation::Stack",
                    ResourceStatus::UpdateInProgress,
                    Some("User Initiated"),
                    now,
                    token,
                ),
            );
            for (other_name, other) in &mut sim.change_sets {
                if other_name != name && other.execution == Execution::Available {
                    other.execution = Execution::Obsolete;
                }
            }
            sim.change_sets.retain(|n, _| n == name);
            if let Some(set) = sim.change_sets.get_mut(name) {
                set.execution = Execution::InProgress;
                set.token = Some(token.to_owned());
            }
            sim.operation = Some(Operation {
                change_set: name.to_owned(),
                token: token.to_owned(),
                started: now,
                failure,
                previous,
            });
            world.executions.push((stack.to_owned(), name.to_owned()));
            Ok(())
        })
    }

    async fn delete_change_set(&self, stack: &str, name: &str) -> Result<(), PortError> {
        const OP: AwsOp = AwsOp::DeleteChangeSet;
        self.faults.mutate(OP, || {
            let now = self.clock.now();
            let mut world = guard(&self.world, OP)?;
            if let Some(sim) = world.stacks.get_mut(stack) {
                let busy = sim.change_sets.get(name).is_some_and(|s| {
                    s.execution == Execution::InProgress || now < s.created_at.after(CREATE_DELAY)
                });
                if busy {
                    return Err(PortError::new(
                        ErrorKind::Permanent,
                        OP,
                        format!(
                            "InvalidChangeSetStatus: ChangeSet [{name}] is being created or executed"
                        ),
                    ));
                }
                sim.change_sets.remove(name);
            }
            Ok(())
        })
    }

    async fn stack_events(&self, stack: &str) -> Result<Vec<StackEvent>, PortError> {
        const OP: AwsOp = AwsOp::DescribeStackEvents;
        self.faults.check(OP)?;
        let now = self.clock.now();
        let mut world = guard(&self.world, OP)?;
        let sim = world
            .stacks
            .get_mut(stack)
            .ok_or_else(|| not_found(OP, format!("Stack [{stack}] does not exist")))?;
        advance(sim, now);
        Ok(sim.events.clone())
    }
}
