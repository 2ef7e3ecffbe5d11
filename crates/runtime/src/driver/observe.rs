//! The driver's reads: the observation a pass hands the machine (its own reads, or its part
//! of a fleet read; stacks kept at rest), the settle of the desired values, bounded retries.

#[allow(clippy::wildcard_imports)] // the driver's own vocabulary, shared by its parts
use super::*;
use runner_updater_core::domain::retry::is_retry_name;

impl RunnerDriver {
    /// Runs an operation with bounded, jittered retries on transient errors.
    pub(super) async fn retrying<T, F, Fut>(&self, operation: F) -> Result<T, PortError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PortError>>,
    {
        let seed = self.jitter_seed ^ u64::from(self.commands);
        let on_retry = |error: &PortError, delay: Duration| {
            tracing::info!(runner = %self.runner.name, %error, ?delay, "retrying");
            if let Some(metrics) = &self.metrics {
                metrics.retry(&self.runner.name);
            }
        };
        self.retry
            .run(seed, self.ports.clock.as_ref(), on_retry, operation)
            .await
    }

    /// Reads the desired and observed state.
    pub(super) async fn observe(&mut self) -> Result<Observation, DriverError> {
        self.observe_with(None).await
    }

    /// Reads the desired and observed state, the desired folder and the service from `view`
    /// when given (a fleet read), else fresh.
    pub(super) async fn observe_with(
        &mut self,
        view: Option<RunnerSnapshot>,
    ) -> Result<Observation, DriverError> {
        let in_gate = self.in_gate();
        // A gate read is used once, by the pass that follows it, if no pass ended since.
        let last_end = self.last_tick_end;
        // Nor one older than two active intervals (a pass that waited long for a place reads
        // its own).
        let oldest = Millis(
            self.ports.clock.now().0.saturating_sub(
                u64::try_from(self.active_interval.as_millis())
                    .unwrap_or(0)
                    .saturating_mul(2),
            ),
        );
        let gate_read = self
            .gate_read
            .take()
            .map(|read| *read)
            .filter(|(taken_at, _)| {
                in_gate && last_end.is_none_or(|end| *taken_at >= end) && *taken_at >= oldest
            });
        let (desired_read, service_read, read_at) = if let Some(view) = view {
            self.this_pass.observed_cached = true;
            (view.desired, Some(view.service), view.taken_at)
        } else if let Some(kept) = self.desired_read.clone().filter(|_| in_gate) {
            // The health gate does not act on the desired state (a change is acted on once the
            // attempt ends, from a fresh read): one SSM call fewer a gate pass. Its service
            // comes from the scheduler's gate read when there was one (its rollout's service
            // deployment, judged as the service; one that cannot say: the service is read).
            let service = match gate_read.map(|(_, read)| read) {
                Some(GateRead::Service(service)) => Some(Ok(service)),
                Some(GateRead::Deployment(deployment)) => {
                    if let Some(view) = self.gate_view_of(&deployment) {
                        Some(Ok(view))
                    } else {
                        let (cluster, service) = (&self.runner.cluster, &self.runner.service);
                        let ecs = &self.ports.ecs;
                        Some(
                            self.retrying(|| ecs.describe_service_without_tasks(cluster, service))
                                .await,
                        )
                    }
                }
                None => None,
            };
            (Ok(kept), service, self.ports.clock.now())
        } else {
            // The runner's folder: `desired/…` and the `release` document (the status record
            // and the lease, read past, are read by their own paths).
            let folder = format!("{}/{}", self.prefix, self.runner.name);
            let read_at = self.ports.clock.now();
            let read = self
                .retrying(|| self.ports.ssm.get_by_path(&folder))
                .await
                .map(|parameters| {
                    parameters
                        .into_iter()
                        .filter_map(|(name, value)| {
                            let relative = name.strip_prefix(&folder)?.strip_prefix('/')?;
                            (is_desired_name(relative) || is_retry_name(relative))
                                .then(|| (relative.to_owned(), value))
                        })
                        .collect::<BTreeMap<String, String>>()
                });
            (read, None, read_at)
        };
        // An unreadable AWS is an observation too: the machine still sees time pass and checks
        // its deadlines.
        let mut retries = Vec::new();
        let desired = match desired_read {
            Ok(relative) => {
                retries = self.retry_intents(&relative).await;
                self.desired_read = Some(relative.clone());
                // First seen when the answer is here, not when the read began (a fleet read's
                // pages take a while): later, never earlier.
                let seen_at = self.ports.clock.now().max(read_at);
                self.settles_at = self.settle_of(&relative, seen_at);
                let desired = self.desired_following(&relative);
                if matches!(&desired, Ok(d) if d.source == DesiredSource::Channel) {
                    // A channel's release is one document: acted on at once.
                    self.settles_at = None;
                }
                let now = self.ports.clock.now();
                self.window_opens_at = desired
                    .as_ref()
                    .ok()
                    .and_then(|d| d.update_windows.as_ref())
                    .filter(|windows| !windows.is_open(now))
                    .and_then(|windows| windows.next_open(now));
                desired
            }
            Err(error) => Err(DesiredError::Unavailable(error.to_string())),
        };
        // What the stacks are read under ("" for no desired infrastructure); none when the
        // desired state is unusable (the stacks are then not kept).
        let fingerprint = desired
            .as_ref()
            .ok()
            .map(|d| infra::fingerprint(d).unwrap_or_default());
        let observed = match self.observe_runner(service_read, fingerprint).await {
            Ok(observed) => observed,
            Err(error) => Err(ObserveError::Unavailable(error.to_string())),
        };
        self.note_running(&desired, &observed);
        self.aws_readable = !matches!(desired, Err(DesiredError::Unavailable(_)))
            && !matches!(observed, Err(ObserveError::Unavailable(_)));
        Ok(Observation {
            desired,
            observed,
            settles_at: self.settles_at,
            retries,
        })
    }

    /// When the `desired/*` values just read (at `read_at`) settle: `settle_secs` after this
    /// controller first read them as they are (a restart, or another replica, waits one settle
    /// again: safe). AWS's clock (`LastModifiedDate`) is not used: a skew between it and ours
    /// cannot shorten the wait, and a deletion, which leaves no date behind, moves the
    /// fingerprint like any write. `None` with a release document, acted on at once.
    fn settle_of(
        &mut self,
        relative: &BTreeMap<String, String>,
        read_at: Millis,
    ) -> Option<Millis> {
        let fingerprint = settle_fingerprint(relative);
        let first_seen = match self.settle_seen {
            Some((seen, at)) if seen == fingerprint => at,
            _ => {
                self.settle_seen = Some((fingerprint, read_at));
                read_at
            }
        };
        (!relative.contains_key(RELEASE_PARAMETER)).then(|| first_seen.after(self.settle))
    }

    async fn observe_runner(
        &mut self,
        service_read: Option<
            Result<runner_updater_core::domain::observed::ServiceState, PortError>,
        >,
        fingerprint: Option<String>,
    ) -> Result<Result<runner_updater_core::domain::observed::Observed, ObserveError>, PortError>
    {
        let (cluster, service) = (self.runner.cluster.clone(), self.runner.service.clone());
        let ecs = Arc::clone(&self.ports.ecs);
        let read = match service_read {
            Some(read) => read,
            None => match self.read_service_deployment().await {
                Some(state) => Ok(state),
                None => {
                    self.retrying(|| ecs.describe_service_without_tasks(&cluster, &service))
                        .await
                }
            },
        };
        let state = match read {
            Ok(state) => state,
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Ok(Err(ObserveError::ServiceNotFound {
                    cluster: cluster.clone(),
                    service: service.clone(),
                }))
            }
            Err(e) => return Err(e),
        };
        let task_definition = self.task_definition(&state.task_definition_arn).await?;
        let kept = self.stacks_read.clone().filter(|_| self.in_gate());
        let stacks = if let Some(stacks) = kept {
            stacks
        } else if let Some(stacks) = self.cached_stacks(fingerprint.as_ref()) {
            self.this_pass.observed_cached = true;
            stacks
        } else {
            let mut stacks = Vec::with_capacity(self.runner.stacks.len());
            for name in &self.runner.stacks {
                match self.retrying(|| self.ports.cfn.describe_stack(name)).await {
                    Ok(stack) => stacks.push(stack),
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        return Ok(Err(ObserveError::StackNotFound(name.clone())))
                    }
                    Err(e) => return Err(e),
                }
            }
            self.stacks_read = Some(stacks.clone());
            // Kept for the passes at rest to come; anything read under the lock is not,
            // and an attempt leaves no cache behind.
            self.stack_cache = match fingerprint {
                Some(fingerprint) if self.phase().is_resting() && !stacks.is_empty() => {
                    Some(Box::new(StackCache {
                        fingerprint,
                        read_at: self.ports.clock.now(),
                        stacks: stacks.clone(),
                    }))
                }
                _ => None,
            };
            stacks
        };
        let mut observed = observe(state, &task_definition, &self.runner.container, &stacks);
        // Tasks are read only where the health gate judges them, and only when something
        // calls for it (`gate_needs_tasks`): most gate passes are one `DescribeServices`.
        if let (Ok(observed), Some(machine)) = (observed.as_mut(), self.machine.as_ref()) {
            // The running tasks of the gate's deployment at its previous read, and now.
            let deployment = machine::gate_deployment(machine.state());
            let previous = self
                .gate_running
                .as_ref()
                .filter(|(id, _)| Some(id.as_str()) == deployment)
                .map(|(_, running)| *running);
            // Kept once this read is complete (a failed task read keeps the count it had, so a
            // drop is still seen next pass).
            let now_running = deployment.and_then(|id| {
                let ours = observed.service.deployment(id)?;
                Some((id.to_owned(), ours.running_count))
            });
            if gate_needs_tasks(
                machine.state(),
                &observed.service,
                observed.has_health_check && !observed.health_gated_by_ecs,
                previous,
            ) {
                match self
                    .retrying(|| ecs.list_service_tasks(&cluster, &service))
                    .await
                {
                    Ok(tasks) => observed.service.tasks = Some(tasks),
                    Err(e) if e.kind == ErrorKind::NotFound => {
                        return Ok(Err(ObserveError::ServiceNotFound {
                            cluster: cluster.clone(),
                            service: service.clone(),
                        }))
                    }
                    Err(e) => return Err(e),
                }
            }
            self.gate_running = now_running;
        }
        Ok(observed)
    }

    /// The service as the health gate judges it from its rollout's service deployment (one
    /// `DescribeServiceDeployments` call: structured status and counts), where the gate reads
    /// one; `None` where it does not, or the deployment cannot say (the service is read). A
    /// refusal for good (the API not offered, access denied) turns these reads off.
    async fn read_service_deployment(
        &mut self,
    ) -> Option<runner_updater_core::domain::observed::ServiceState> {
        let arn = self.gate_service_deployment()?;
        let arns = [arn];
        let read = self
            .retrying(|| self.ports.ecs.describe_service_deployments(&arns))
            .await
            .and_then(|mut answers| {
                answers.pop().unwrap_or_else(|| {
                    Err(PortError::new(
                        ErrorKind::Permanent,
                        AwsOp::DescribeServiceDeployments,
                        "no answer for the service deployment",
                    ))
                })
            });
        match read {
            Ok(deployment) => self.gate_view_of(&deployment),
            Err(error) => {
                if error.kind == ErrorKind::Permanent {
                    tracing::warn!(runner = %self.runner.name, %error, "service deployments cannot be read: the health gate reads the service instead");
                    self.deployments_unreadable = true;
                } else {
                    tracing::debug!(runner = %self.runner.name, %error, "service deployment not read: reading the service");
                }
                None
            }
        }
    }

    /// [`machine::gate_view`] of a service deployment read for this runner.
    pub(super) fn gate_view_of(
        &self,
        deployment: &runner_updater_core::domain::observed::ServiceDeployment,
    ) -> Option<runner_updater_core::domain::observed::ServiceState> {
        let machine = self.machine.as_ref()?;
        machine::gate_view(
            machine.state(),
            &self.runner.cluster,
            &self.runner.service,
            deployment,
        )
    }

    /// The stacks as last read at rest, if they still serve: at rest, under the same desired
    /// infrastructure, none of them moving, and read less than `stack_refresh` ago.
    fn cached_stacks(
        &self,
        fingerprint: Option<&String>,
    ) -> Option<Vec<runner_updater_core::domain::observed::StackState>> {
        let cache = self.stack_cache.as_ref()?;
        let fresh = self.phase().is_resting()
            && fingerprint == Some(&cache.fingerprint)
            && self.ports.clock.now().since(cache.read_at) < self.stack_refresh
            && cache
                .stacks
                .iter()
                .all(|s| s.status.progress() != StackProgress::InProgress);
        fresh.then(|| cache.stacks.clone())
    }

    /// A task definition, from the cache when possible (revisions are immutable).
    pub(super) async fn task_definition(&mut self, arn: &str) -> Result<TaskDefinition, PortError> {
        if let Some(cached) = self.task_definitions.iter().find(|td| td.arn == arn) {
            return Ok(cached.clone());
        }
        let fetched = self
            .retrying(|| self.ports.ecs.describe_task_definition(arn))
            .await?;
        self.remember_task_definition(fetched.clone());
        Ok(fetched)
    }

    /// Keeps a task definition (revisions are immutable) for the reads to come.
    pub(super) fn remember_task_definition(&mut self, definition: TaskDefinition) {
        if self
            .task_definitions
            .iter()
            .any(|td| td.arn == definition.arn)
        {
            return;
        }
        if self.task_definitions.len() >= TASK_DEFINITION_CACHE_MAX {
            self.task_definitions.remove(0);
        }
        self.task_definitions.push(definition);
    }

    /// Reads the desired and observed state now (for `plan`).
    ///
    /// # Errors
    /// When AWS cannot be read after the retries.
    pub async fn observe_now(&mut self) -> Result<Observation, DriverError> {
        self.observe().await
    }
}
