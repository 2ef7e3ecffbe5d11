//! The driver's effects: each command the machine asked for, executed against the ports
//! (idempotently: a registration searched for before it is made again, an update checked
//! against the baseline, change sets by name and token), its answer turned into an event.

#[allow(clippy::wildcard_imports)] // the driver's own vocabulary, shared by its parts
use super::*;
use runner_updater_core::domain::resume::{rollback_made, update_progress, UpdateProgress};
use runner_updater_ports::ChangeSetKind;

impl RunnerDriver {
    /// Executes one command: waits out ECS's consistency window when the call may already
    /// have been made, checks the fence, then makes the call and turns its answer into an
    /// event.
    pub(super) async fn execute(&mut self, command: &Command) -> Result<Event, DriverError> {
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
        let first_call = self.first_call(command, now);
        self.fencing = fencing_epoch(command).map(|epoch| (command.name(), epoch));
        // ECS's mutations are fenced right before their call, after the reads that decide
        // them (a second check here would be the same read twice); what they find already
        // made is saved under the store's own guard. Every other fenced command: here.
        let fenced_at_its_call = matches!(
            command,
            Command::RegisterTaskDefinition { .. }
                | Command::UpdateService { .. }
                | Command::RollBackService { .. }
        );
        if !fenced_at_its_call {
            if let Some(refused) = self.fence().await {
                return Ok(refused);
            }
        }
        let result = self.call(command, first_call, now).await?;
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

    /// Whether this is a first call: its state was entered in this pass and nothing was called
    /// since it was entered, so there is nothing to find again (no search through the family).
    /// Notes the time of an ECS mutation.
    fn first_call(&mut self, command: &Command, now: Millis) -> bool {
        let since = self
            .machine
            .as_ref()
            .map_or(now, |m| m.inner().memory.since);
        // A call of this command made at the very millisecond the state was entered may be
        // this state's own (a simulated clock does not move within a pass); one of another
        // command (the call that led here) is not.
        let first_call = self.this_pass.entered
            && self
                .last_call
                .is_none_or(|(at, name)| at < since || (at == since && name != command.name()));
        if matches!(
            command,
            Command::RegisterTaskDefinition { .. }
                | Command::UpdateService { .. }
                | Command::RollBackService { .. }
        ) {
            self.last_call = Some((now, command.name()));
        }
        first_call
    }

    /// The call a command makes (one flat match over the commands): the outer error stops the
    /// tick (an observation that could not be made), the inner one is the command's failure.
    async fn call(
        &mut self,
        command: &Command,
        first_call: bool,
        now: Millis,
    ) -> Result<Result<Event, PortError>, DriverError> {
        Ok(match command {
            Command::Observe => {
                let kept = self
                    .this_pass
                    .fresh_observation
                    .take()
                    .filter(|_| self.phase() == Phase::Locked);
                match kept {
                    Some(observation) => Ok(Event::Observed(observation)),
                    None => Ok(Event::Observed(Box::new(self.observe().await?))),
                }
            }
            Command::AcquireLock { .. } => self.acquire_lock(now).await,
            // Released already by the write that left the attempt (the state table).
            Command::ReleaseLock { epoch } if self.released_by_save.take() == Some(*epoch) => {
                Ok(Event::LockReleased)
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
                self.update_service(task_definition_arn, baseline_deployment_ids, first_call)
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
        })
    }

    /// Takes the lease; its local expiry counts from when the request was sent.
    async fn acquire_lock(&mut self, now: Millis) -> Result<Event, PortError> {
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
        // AWS's pace for registrations (1 a second) first, then the fence: no limiter's wait between
        // the check and the call.
        self.ports.ecs.pace(AwsOp::RegisterTaskDefinition).await;
        if let Some(refused) = self.fence().await {
            return Ok(refused);
        }
        // Not retried here: RegisterTaskDefinition has no idempotency token. A failure (even one
        // after AWS succeeded) comes back next pass, and the attempt-tag lookup above runs first.
        let arn = self
            .ports
            .ecs
            .register_clone(base_arn, container, image, tags.clone())
            .await?;
        // The new revision is the base with this image and these tags, nothing else: kept as
        // such, the gate's first read of the service needs no `DescribeTaskDefinition`.
        let mut registered = base;
        registered.arn.clone_from(&arn);
        for c in registered
            .containers
            .iter_mut()
            .filter(|c| c.name == *container)
        {
            c.image = Some(image.to_owned());
        }
        registered.tags.extend(tags);
        self.remember_task_definition(registered);
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
        first_call: bool,
    ) -> Result<Event, PortError> {
        let (cluster, service) = (&self.runner.cluster, &self.runner.service);
        let ecs = &self.ports.ecs;
        // A first call (its state entered in this pass, nothing called since) has nothing to
        // find, and a deployment that appeared since the service was read refuses the update
        // itself (`only_over` below). Otherwise the call may have been made: read before
        // calling again.
        let state = if first_call {
            None
        } else {
            // Only the deployments are needed: no task list (three AWS calls fewer).
            match self
                .retrying(|| ecs.describe_service_without_tasks(cluster, service))
                .await
            {
                Ok(state) => Some(state),
                Err(error) => return read_failed("update_service", error),
            }
        };
        if let Some(state) = state {
            if let Some(event) = self.already_updated(&state, task_definition_arn, baseline_ids)? {
                return Ok(event);
            }
        }
        ecs.pace(AwsOp::UpdateService).await;
        if let Some(refused) = self.fence().await {
            return Ok(refused);
        }
        // Not retried here: a lost answer comes back next pass, and the baseline check above
        // finds the deployment instead of updating twice.
        // A first call is made only over the baseline: a deployment that appeared since the
        // service was read (a foreign writer) refuses it, on the read the adapter makes anyway.
        // (Otherwise the read above judged the deployments there are, ours and ECS's rollback
        // of ours included.)
        let only_over = first_call.then_some(baseline_ids);
        let made = ecs
            .update_service(cluster, service, task_definition_arn, only_over)
            .await?;
        Ok(Event::ServiceUpdated {
            deployment_id: made.deployment_id,
            service_deployment: made.service_deployment,
        })
    }

    /// What a read of the service says of an update that may have been made: `Some` event
    /// when it was (by this attempt, or rolled back by ECS since), an error when another
    /// deployment appeared outside the attempt, `None` when it is still to make.
    fn already_updated(
        &self,
        state: &runner_updater_core::domain::observed::ServiceState,
        task_definition_arn: &str,
        baseline_ids: &[String],
    ) -> Result<Option<Event>, PortError> {
        // Only a deployment of *our* task definition is ours. Any other deployment outside the
        // baseline (a console force-deploy, Terraform, or ECS having rolled ours back while we
        // were down) means the world moved under the attempt: a foreign writer, never "done".
        // The one exception: ECS's own circuit-breaker rollback of our deployment, which
        // leaves the service on the baseline; the gate then reports it.
        match update_progress(state, task_definition_arn, baseline_ids) {
            UpdateProgress::NotMade => Ok(None),
            UpdateProgress::Made { deployment_id } => {
                tracing::info!(runner = %self.runner.name, deployment = %deployment_id, "service already updated by this attempt");
                // Its service deployment is the service's current one while ours is PRIMARY.
                let service_deployment = state
                    .primary()
                    .filter(|p| p.id == deployment_id)
                    .and(state.current_service_deployment.clone());
                Ok(Some(Event::ServiceUpdated {
                    deployment_id: deployment_id.to_owned(),
                    service_deployment,
                }))
            }
            UpdateProgress::RolledBackByEcs { deployment_id } => {
                tracing::info!(runner = %self.runner.name, deployment = %deployment_id, "ECS already rolled back this attempt's deployment");
                Ok(Some(Event::ServiceUpdated {
                    deployment_id: deployment_id.to_owned(),
                    service_deployment: None,
                }))
            }
            UpdateProgress::Foreign {
                deployment_id,
                task_definition_arn: theirs,
            } => Err(PortError::new(
                ErrorKind::Conflict,
                AwsOp::UpdateService,
                format!(
                    "deployment {deployment_id} of {theirs} appeared on the service outside this attempt"
                ),
            )),
        }
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
            if let Some(other) = infra::unacknowledged_capability(&summary.capabilities) {
                return Err(PortError::new(
                    ErrorKind::Permanent,
                    AwsOp::GetTemplateSummary,
                    format!("the template of {stack} needs {other} (macros or nested stacks), which the controller does not acknowledge: apply it by hand"),
                ));
            }
            let current = self.retrying(|| cfn.describe_stack(stack)).await?;
            let keep_parameters =
                infra::kept_parameters(&summary.parameters, &current.parameters, &plan.parameters);
            let mut description = format!("runner-updater {attempt_id}: {}", plan.describe());
            description.truncate(description.floor_char_boundary(1024));
            let request = ChangeSetRequest {
                stack: stack.to_owned(),
                name: name.to_owned(),
                kind: ChangeSetKind::Update,
                template_url: plan.template_url.clone(),
                template_body: None,
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
        let execution = set.map(|s| s.execution_status);
        match execution {
            None => {
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    AwsOp::DescribeChangeSet,
                    format!("change set {name} of stack {stack} no longer exists: deleted by someone, or dropped when another update of the stack ran"),
                ))
            }
            Some(infra::Execution::Available) => {
                if let Some(refused) = self.fence().await {
                    return Ok(refused);
                }
                // Not retried blindly: a lost answer or a repeat is settled by asking the change
                // set again (the token makes a resent execution the same request).
                if let Err(error) = cfn.execute_change_set(stack, name, &token).await {
                    let again = self
                        .retrying(|| cfn.describe_change_set(stack, name))
                        .await?;
                    if !again.is_some_and(|s| s.execution_status.executed()) {
                        return Err(error);
                    }
                }
                tracing::info!(runner = %self.runner.name, stack, change_set = name, "change set executed");
                return Ok(Event::StackUpdatePending {
                    status: infra::StackStatus::UpdateInProgress,
                });
            }
            Some(infra::Execution::Obsolete) => {
                return Err(PortError::new(
                    ErrorKind::Conflict,
                    AwsOp::DescribeChangeSet,
                    format!("change set {name} is obsolete: another update of stack {stack} ran"),
                ))
            }
            _ => {}
        }
        let current = self.retrying(|| cfn.describe_stack(stack)).await?;
        let progress = current.status.progress();
        match infra::execution_outcome(execution, progress) {
            infra::ExecutionOutcome::Pending => Ok(Event::StackUpdatePending {
                status: current.status,
            }),
            infra::ExecutionOutcome::Updated => Ok(Event::StackUpdated),
            infra::ExecutionOutcome::Failed => {
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
            infra::ExecutionOutcome::FailedOnCompleteStack => Err(PortError::new(
                ErrorKind::Permanent,
                AwsOp::ExecuteChangeSet,
                format!(
                    "the execution of change set {name} failed and stack {stack} is {}",
                    current.status
                ),
            )),
            infra::ExecutionOutcome::CompletedOnMovedStack => Err(PortError::new(
                ErrorKind::Conflict,
                AwsOp::DescribeStacks,
                format!(
                    "change set {name} completed but stack {stack} is now {}: updated outside this attempt",
                    current.status
                ),
            )),
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
        let made = rollback_made(&state, task_definition_arn, baseline_deployments);
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
        if made || !ours {
            return Ok(Event::RollbackStarted);
        }
        let (cluster, service) = (&self.runner.cluster, &self.runner.service);
        // ECS's own rollback of our service deployment, where it has one: back to the exact
        // service revision before it. Only a deployment still rolling out can be stopped; one
        // that completed (a failure in the soak), an API or a deployment ECS does not offer,
        // falls back to pointing the service at the baseline. A lost answer comes back as an
        // error; the retry reads the service first (the rollback made, or stopped again: a
        // deployment already rolling back takes it as a no-op).
        if let Some(arn) = state.current_service_deployment.as_deref() {
            self.ports.ecs.pace(AwsOp::StopServiceDeployment).await;
            if let Some(refused) = self.fence().await {
                return Ok(refused);
            }
            match self
                .ports
                .ecs
                .stop_service_deployment(cluster, service, arn)
                .await
            {
                Ok(()) => {
                    tracing::info!(runner = %self.runner.name, service_deployment = %arn, "rollback: ECS rolls the service deployment back");
                    return Ok(Event::RollbackStarted);
                }
                Err(error) if error.is_transient() => return Err(error),
                // Refused because ECS is already rolling it back (its own rollback, on a read
                // of the service too old to show it): made.
                Err(error) if error.kind == ErrorKind::Conflict && self.rolling_back(arn).await => {
                    tracing::info!(runner = %self.runner.name, service_deployment = %arn, "rollback: ECS already rolls the service deployment back");
                    return Ok(Event::RollbackStarted);
                }
                Err(error) => {
                    tracing::info!(runner = %self.runner.name, service_deployment = %arn, %error, "rollback: the service deployment cannot be stopped; updating the service to the baseline");
                }
            }
        }
        self.ports.ecs.pace(AwsOp::UpdateService).await;
        if let Some(refused) = self.fence().await {
            return Ok(refused);
        }
        self.ports
            .ecs
            .update_service(cluster, service, task_definition_arn, None)
            .await?;
        Ok(Event::RollbackStarted)
    }
}

impl RunnerDriver {
    /// Whether ECS rolls `arn` back, or has (its status, read now); `false` when it cannot be
    /// read.
    async fn rolling_back(&self, arn: &str) -> bool {
        let arns = [arn.to_owned()];
        matches!(
            self.ports.ecs.describe_service_deployments(&arns).await.as_deref(),
            Ok([Ok(deployment)]) if deployment.status.rolling_back()
        )
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
