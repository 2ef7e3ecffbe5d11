//! `runner-updater setup`: deploys the repository's CloudFormation template
//! (`setup/runner-updater.yaml`: the state table) through a change set, on the CloudFormation
//! port the controller already has. Create or update, idempotent (a template that changes
//! nothing is "up to date", its empty change set deleted), every wait bounded, each step
//! reported as it happens, a failure told with the resource at fault and CloudFormation's reason.

use std::collections::BTreeMap;
use std::time::Duration;

use runner_updater_core::domain::cfn_status::{StackProgress, StackStatus};
use runner_updater_core::domain::infra::{first_failure, Creation, ResourceChange};
use runner_updater_core::domain::Millis;
use runner_updater_ports::{
    ChangeSetKind, ChangeSetRequest, Clock, CloudFormation, ErrorKind, PortError,
};

/// The template, as the repository holds it (infrastructure-as-code users deploy the same file).
pub const TEMPLATE: &str = include_str!("../../../setup/runner-updater.yaml");

/// The stack's default name.
pub const DEFAULT_STACK: &str = "runner-updater";

/// The template's parameter naming the state table.
pub const TABLE_PARAMETER: &str = "StateTableName";

/// The template's parameter that makes the change events' path (`on` or `off`).
pub const EVENTS_PARAMETER: &str = "Events";

/// The template's parameter naming the controller's SSM prefix (the rule's filter).
pub const PREFIX_PARAMETER: &str = "ParameterPrefix";

/// The stack's output naming the events' queue (`events.queue_url`).
pub const EVENTS_QUEUE_OUTPUT: &str = "EventsQueueUrl";

/// What to deploy, and how long to wait.
#[derive(Debug, Clone)]
pub struct SetupRequest {
    /// The stack.
    pub stack: String,
    /// The template's parameters.
    pub parameters: BTreeMap<String, String>,
    /// The stack's tags.
    pub tags: BTreeMap<String, String>,
    /// The longest the whole set-up may take.
    pub timeout: Duration,
    /// How often CloudFormation is read while waiting.
    pub poll: Duration,
    /// Whether the table the template names exists already (read by the caller): a creation
    /// is refused then, as CloudFormation would fail it and leave the stack to delete.
    pub table_exists: bool,
    /// Whether a change that removes or replaces a resource (a renamed table: a new, empty
    /// one) may be executed.
    pub allow_replacement: bool,
}

/// What the set-up did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetupAction {
    /// The stack was created.
    Created,
    /// The stack was updated.
    Updated,
    /// The stack already matched the template and its parameters: nothing was changed.
    UpToDate,
}

/// The outcome of a set-up that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    /// What was done.
    pub action: SetupAction,
    /// The resources changed (empty when up to date).
    pub changes: Vec<ResourceChange>,
    /// The stack's outputs afterwards.
    pub outputs: BTreeMap<String, String>,
}

/// Why the set-up did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Another operation is running on the stack.
    #[error("stack {stack} is {status}: another operation is running on it; run setup again when it has ended")]
    Busy {
        /// Stack.
        stack: String,
        /// Its status.
        status: String,
    },
    /// The stack is in a state only a human can leave.
    #[error("stack {stack} is {status}: {what}")]
    NeedsHuman {
        /// Stack.
        stack: String,
        /// Its status.
        status: String,
        /// What to do.
        what: &'static str,
    },
    /// CloudFormation refused the change set.
    #[error("CloudFormation refused the change set {change_set} of stack {stack}: {reason}")]
    Refused {
        /// Stack.
        stack: String,
        /// Change set.
        change_set: String,
        /// CloudFormation's reason.
        reason: String,
    },
    /// The change set ran and CloudFormation rolled it back.
    #[error("stack {stack} ended {status}: {cause}")]
    Failed {
        /// Stack.
        stack: String,
        /// Its status afterwards.
        status: String,
        /// The first resource that failed, with CloudFormation's reason.
        cause: String,
    },
    /// The table exists already, outside the stack.
    #[error("table {table} exists already (made by hand, or kept by an earlier stack whose creation failed): the controller can use it as it is (`run` checks it), so setup is not needed for it; or import it into a stack with CloudFormation's resource import; or name another table in state_store.table")]
    TableExists {
        /// The table.
        table: String,
    },
    /// The stack was not made by `runner-updater setup`.
    #[error("stack {stack} has no tag app=runner-updater: it was not made by runner-updater setup, and its template would be replaced; name the set-up stack with --stack")]
    NotOurs {
        /// Stack.
        stack: String,
    },
    /// The change removes or replaces resources.
    #[error("the change set {change_set} of stack {stack} removes or replaces {}: the state table would be replaced by an empty one (records and leases left in the old one, which is retained); not executed (deleted). Run with --allow-replacement if that is what you want", .resources.join(", "))]
    Destructive {
        /// Stack.
        stack: String,
        /// Change set.
        change_set: String,
        /// The resources, with what happens to them.
        resources: Vec<String>,
    },
    /// The wait ran out.
    #[error("gave up after {waited_secs}s waiting for {what} of stack {stack} (last seen: {last}); CloudFormation carries on: run setup again to follow it")]
    TimedOut {
        /// Stack.
        stack: String,
        /// What was awaited.
        what: &'static str,
        /// The last status seen.
        last: String,
        /// Seconds waited.
        waited_secs: u64,
    },
    /// A CloudFormation call failed.
    #[error("CloudFormation: {0}")]
    Aws(#[from] PortError),
}

/// Deploys [`TEMPLATE`] as `request.stack`: a change set (of type `CREATE` when the stack does
/// not exist), reviewed for changes, executed, followed to its end. `progress` receives one line
/// per step.
///
/// # Errors
/// A [`SetupError`]: the stack busy or needing a human, the change set refused, the stack
/// rolled back, a wait that ran out, or CloudFormation unreachable.
pub async fn setup(
    cfn: &dyn CloudFormation,
    clock: &dyn Clock,
    request: &SetupRequest,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<SetupReport, SetupError> {
    let stack = request.stack.as_str();
    let started = clock.now();
    let deadline = started.after(request.timeout);
    let kind = stack_kind(cfn, stack).await?;
    if kind == ChangeSetKind::Create && request.table_exists {
        return Err(SetupError::TableExists {
            table: request
                .parameters
                .get(TABLE_PARAMETER)
                .cloned()
                .unwrap_or_default(),
        });
    }
    let name = format!("runner-updater-setup-{}", started.0);
    progress(format!(
        "stack {stack}: {} change set {name}",
        match kind {
            ChangeSetKind::Create => "creating it with",
            ChangeSetKind::Update => "updating it with",
        }
    ));
    let change_set = ChangeSetRequest {
        stack: stack.to_owned(),
        name: name.clone(),
        kind,
        template_url: None,
        template_body: Some(TEMPLATE.to_owned()),
        parameters: request.parameters.clone(),
        keep_parameters: Vec::new(),
        capabilities: Vec::new(),
        tags: request.tags.clone(),
        client_token: name.clone(),
        description: "runner-updater setup".to_owned(),
    };
    match cfn.create_change_set(&change_set).await {
        Ok(_) => {}
        // Some CloudFormation implementations refuse an empty update at once.
        Err(error) if no_changes(&error.message) => return up_to_date(cfn, stack, progress).await,
        Err(error) if error.kind == ErrorKind::Permanent => {
            return Err(SetupError::Refused {
                stack: stack.to_owned(),
                change_set: name,
                reason: error.message,
            })
        }
        Err(error) => return Err(error.into()),
    }
    let Some(changes) = review(cfn, clock, request, deadline, &name).await? else {
        let _ = cfn.delete_change_set(stack, &name).await;
        return up_to_date(cfn, stack, progress).await;
    };
    for change in &changes {
        progress(format!(
            "  {} {} ({}){}",
            change.action,
            change.logical_id,
            change.resource_type,
            match change.replacement.as_str() {
                "True" => ", replaced",
                "Conditional" => ", maybe replaced",
                _ => "",
            }
        ));
    }
    let destructive: Vec<String> = changes
        .iter()
        .filter(|c| {
            c.action == "Remove" || matches!(c.replacement.as_str(), "True" | "Conditional")
        })
        .map(|c| format!("{} ({})", c.logical_id, c.action))
        .collect();
    if !destructive.is_empty() && !request.allow_replacement {
        let _ = cfn.delete_change_set(stack, &name).await;
        return Err(SetupError::Destructive {
            stack: stack.to_owned(),
            change_set: name,
            resources: destructive,
        });
    }
    cfn.execute_change_set(stack, &name, &name).await?;
    progress(format!("stack {stack}: executing {name}"));
    let outputs = follow(cfn, clock, request, deadline, started, &name, progress).await?;
    Ok(SetupReport {
        action: match kind {
            ChangeSetKind::Create => SetupAction::Created,
            ChangeSetKind::Update => SetupAction::Updated,
        },
        changes,
        outputs,
    })
}

/// Whether CloudFormation's text says the template changes nothing.
fn no_changes(reason: &str) -> bool {
    reason.contains("didn't contain changes") || reason.contains("No updates are to be performed")
}

/// A change set of type `CREATE` when the stack does not exist (or a creation was never
/// executed), `UPDATE` when it is usable; a refusal when it is busy or needs a human.
async fn stack_kind(cfn: &dyn CloudFormation, stack: &str) -> Result<ChangeSetKind, SetupError> {
    let current = match cfn.describe_stack(stack).await {
        Ok(current) => current,
        Err(error) if error.kind == ErrorKind::NotFound => return Ok(ChangeSetKind::Create),
        Err(error) => return Err(error.into()),
    };
    let status = current.status;
    if status == StackStatus::ReviewInProgress {
        // A creation's change set that was never executed (an earlier set-up stopped).
        return Ok(ChangeSetKind::Create);
    }
    match status.progress() {
        StackProgress::Complete | StackProgress::RolledBack
            if current.tags.get("app").map(String::as_str) != Some("runner-updater") =>
        {
            Err(SetupError::NotOurs {
                stack: stack.to_owned(),
            })
        }
        StackProgress::Complete | StackProgress::RolledBack => Ok(ChangeSetKind::Update),
        StackProgress::InProgress => Err(SetupError::Busy {
            stack: stack.to_owned(),
            status: status.to_string(),
        }),
        StackProgress::NeedsHuman => Err(SetupError::NeedsHuman {
            stack: stack.to_owned(),
            status: status.to_string(),
            what: match status {
                StackStatus::RollbackComplete => "its creation failed and was rolled back: read its events for the first failure, delete the stack (aws cloudformation delete-stack), and run setup again; a table the failed creation made is retained (DeletionPolicy: Retain): delete it if it is empty, or keep using it without setup",
                _ => "look at its events in the CloudFormation console, bring it back to a complete state, and run setup again",
            },
        }),
    }
}

/// Waits for the change set to be computed: its changes, or `None` when it changes nothing.
async fn review(
    cfn: &dyn CloudFormation,
    clock: &dyn Clock,
    request: &SetupRequest,
    deadline: Millis,
    name: &str,
) -> Result<Option<Vec<ResourceChange>>, SetupError> {
    let stack = request.stack.as_str();
    loop {
        let change_set = cfn.describe_change_set(stack, name).await?;
        let Some(change_set) = change_set else {
            return Err(SetupError::Refused {
                stack: stack.to_owned(),
                change_set: name.to_owned(),
                reason: "the change set disappeared before it was executed".to_owned(),
            });
        };
        match change_set.creation() {
            Creation::Ready => return Ok(Some(change_set.changes)),
            Creation::NoChanges => return Ok(None),
            Creation::Failed => {
                return Err(SetupError::Refused {
                    stack: stack.to_owned(),
                    change_set: name.to_owned(),
                    reason: change_set
                        .status_reason
                        .unwrap_or_else(|| change_set.status.to_string()),
                })
            }
            Creation::Pending => {
                wait(clock, request, deadline, stack, "the change set", || {
                    change_set.status.to_string()
                })
                .await?;
            }
        }
    }
}

/// Follows the execution to its end: the stack's outputs, or what failed.
async fn follow(
    cfn: &dyn CloudFormation,
    clock: &dyn Clock,
    request: &SetupRequest,
    deadline: Millis,
    started: Millis,
    name: &str,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<BTreeMap<String, String>, SetupError> {
    let stack = request.stack.as_str();
    let mut last: Option<StackStatus> = None;
    // A read right after the execution may still show the stack as it was (UPDATE_COMPLETE of
    // the last update): an end counts once the stack was seen moving, or the change set says
    // it was executed.
    let mut moved = false;
    loop {
        let current = cfn.describe_stack(stack).await?;
        if last.as_ref() != Some(&current.status) {
            progress(format!("stack {stack}: {}", current.status));
            last = Some(current.status.clone());
        }
        let progress_now = current.status.progress();
        moved |= progress_now == StackProgress::InProgress;
        if progress_now != StackProgress::InProgress
            && !moved
            && !executed(cfn, stack, name).await?
        {
            wait(clock, request, deadline, stack, "the execution", || {
                current.status.to_string()
            })
            .await?;
            continue;
        }
        match progress_now {
            StackProgress::Complete => return Ok(current.outputs),
            StackProgress::InProgress => {
                wait(clock, request, deadline, stack, "the execution", || {
                    current.status.to_string()
                })
                .await?;
            }
            StackProgress::RolledBack | StackProgress::NeedsHuman => {
                let events = cfn.stack_events(stack).await.unwrap_or_default();
                let cause = first_failure(&events, stack, name, started).map_or_else(
                    || "CloudFormation gave no failed resource; see the stack's events".to_owned(),
                    |(resource, reason)| format!("{resource}: {reason}"),
                );
                return Err(SetupError::Failed {
                    stack: stack.to_owned(),
                    status: current.status.to_string(),
                    cause,
                });
            }
        }
    }
}

/// Whether the change set's execution ended (CloudFormation says so on the change set).
async fn executed(cfn: &dyn CloudFormation, stack: &str, name: &str) -> Result<bool, SetupError> {
    use runner_updater_core::domain::cfn_status::Execution;
    Ok(cfn
        .describe_change_set(stack, name)
        .await?
        .is_some_and(|c| matches!(c.execution_status, Execution::Complete | Execution::Failed)))
}

/// Sleeps one poll interval, or gives up at the deadline.
async fn wait(
    clock: &dyn Clock,
    request: &SetupRequest,
    deadline: Millis,
    stack: &str,
    what: &'static str,
    last: impl FnOnce() -> String,
) -> Result<(), SetupError> {
    let now = clock.now();
    if now >= deadline {
        return Err(SetupError::TimedOut {
            stack: stack.to_owned(),
            what,
            last: last(),
            waited_secs: request.timeout.as_secs(),
        });
    }
    clock.sleep(request.poll).await;
    Ok(())
}

/// The report of a stack that already matched.
async fn up_to_date(
    cfn: &dyn CloudFormation,
    stack: &str,
    progress: &mut (dyn FnMut(String) + Send),
) -> Result<SetupReport, SetupError> {
    progress(format!("stack {stack}: up to date, nothing to change"));
    let current = cfn.describe_stack(stack).await?;
    Ok(SetupReport {
        action: SetupAction::UpToDate,
        changes: Vec::new(),
        outputs: current.outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use runner_updater_adapters::sim::SimClock;
    use runner_updater_core::domain::cfn_status::{ChangeSetStatus, Execution, ResourceStatus};
    use runner_updater_core::domain::infra::{ChangeSet, StackEvent};
    use runner_updater_core::domain::observed::StackState;
    use runner_updater_ports::TemplateSummary;

    /// CloudFormation as a script: successive answers to `DescribeStacks` and
    /// `DescribeChangeSet` (the last one repeats), the calls made.
    #[derive(Default)]
    struct Script {
        stacks: Mutex<VecDeque<Result<StackState, PortError>>>,
        change_sets: Mutex<VecDeque<ChangeSet>>,
        events: Vec<StackEvent>,
        calls: Mutex<Vec<String>>,
    }

    fn next<T: Clone>(queue: &Mutex<VecDeque<T>>) -> T {
        let mut queue = queue.lock().unwrap();
        if queue.len() > 1 {
            queue.pop_front().unwrap()
        } else {
            queue.front().cloned().unwrap()
        }
    }

    #[async_trait::async_trait]
    impl CloudFormation for Script {
        async fn describe_stack(&self, _name: &str) -> Result<StackState, PortError> {
            self.calls.lock().unwrap().push("DescribeStacks".to_owned());
            next(&self.stacks)
        }
        async fn template_summary(
            &self,
            _stack: &str,
            _url: Option<&str>,
        ) -> Result<TemplateSummary, PortError> {
            unreachable!("setup reads no template summary")
        }
        async fn create_change_set(&self, request: &ChangeSetRequest) -> Result<String, PortError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("CreateChangeSet {:?}", request.kind));
            Ok(request.name.clone())
        }
        async fn describe_change_set(
            &self,
            _stack: &str,
            _name: &str,
        ) -> Result<Option<ChangeSet>, PortError> {
            Ok(Some(next(&self.change_sets)))
        }
        async fn execute_change_set(&self, _s: &str, _n: &str, _t: &str) -> Result<(), PortError> {
            self.calls
                .lock()
                .unwrap()
                .push("ExecuteChangeSet".to_owned());
            Ok(())
        }
        async fn delete_change_set(&self, _stack: &str, _name: &str) -> Result<(), PortError> {
            self.calls
                .lock()
                .unwrap()
                .push("DeleteChangeSet".to_owned());
            Ok(())
        }
        async fn stack_events(&self, _stack: &str) -> Result<Vec<StackEvent>, PortError> {
            Ok(self.events.clone())
        }
    }

    #[allow(clippy::unnecessary_wraps)] // an answer of the script, as `missing` is
    fn stack(status: &str, ours: bool) -> Result<StackState, PortError> {
        let mut tags = BTreeMap::new();
        if ours {
            tags.insert("app".to_owned(), "runner-updater".to_owned());
        }
        Ok(StackState {
            name: "ru".to_owned(),
            status: status.into(),
            tags,
            outputs: BTreeMap::from([("StateTableName".to_owned(), "t".to_owned())]),
            parameters: BTreeMap::new(),
            last_updated: None,
        })
    }

    fn missing() -> Result<StackState, PortError> {
        Err(PortError::new(
            ErrorKind::NotFound,
            runner_updater_ports::AwsOp::DescribeStacks,
            "Stack with id ru does not exist",
        ))
    }

    fn change_set(status: &str, execution: &str, changes: &[(&str, &str)]) -> ChangeSet {
        ChangeSet {
            id: "arn:cs".to_owned(),
            status: ChangeSetStatus::parse(status),
            status_reason: None,
            execution_status: Execution::parse(execution),
            changes: changes
                .iter()
                .map(|(action, replacement)| ResourceChange {
                    action: (*action).to_owned(),
                    logical_id: "StateTable".to_owned(),
                    resource_type: "AWS::DynamoDB::Table".to_owned(),
                    replacement: (*replacement).to_owned(),
                })
                .collect(),
            parameters: BTreeMap::new(),
        }
    }

    fn script(
        stacks: Vec<Result<StackState, PortError>>,
        change_sets: Vec<ChangeSet>,
    ) -> Arc<Script> {
        Arc::new(Script {
            stacks: Mutex::new(stacks.into()),
            change_sets: Mutex::new(change_sets.into()),
            ..Script::default()
        })
    }

    fn request() -> SetupRequest {
        SetupRequest {
            stack: "ru".to_owned(),
            parameters: BTreeMap::from([(TABLE_PARAMETER.to_owned(), "t".to_owned())]),
            tags: BTreeMap::new(),
            timeout: Duration::from_mins(2),
            poll: Duration::from_secs(5),
            table_exists: false,
            allow_replacement: false,
        }
    }

    async fn run(
        cfn: &Script,
        request: &SetupRequest,
    ) -> (Result<SetupReport, SetupError>, Vec<String>) {
        let clock = SimClock::new(Millis(1_000_000));
        let mut lines = Vec::new();
        let mut progress = |line: String| lines.push(line);
        let result = setup(cfn, &clock, request, &mut progress).await;
        (result, lines)
    }

    #[tokio::test]
    async fn a_stack_is_created_followed_to_its_end_and_reported() {
        let cfn = script(
            vec![
                missing(),
                stack("CREATE_IN_PROGRESS", true),
                stack("CREATE_COMPLETE", true),
            ],
            vec![
                change_set("CREATE_PENDING", "UNAVAILABLE", &[]),
                change_set("CREATE_COMPLETE", "AVAILABLE", &[("Add", "")]),
            ],
        );
        let (result, lines) = run(&cfn, &request()).await;
        let report = result.unwrap();
        assert_eq!(report.action, SetupAction::Created);
        assert_eq!(report.outputs["StateTableName"], "t");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("Add StateTable (AWS::DynamoDB::Table)")),
            "{lines:?}"
        );
        assert!(cfn
            .calls
            .lock()
            .unwrap()
            .contains(&"CreateChangeSet Create".to_owned()));
    }

    #[tokio::test]
    async fn an_existing_table_a_foreign_stack_a_busy_or_failed_stack_are_refused_by_name() {
        let exists = SetupRequest {
            table_exists: true,
            ..request()
        };
        let cfn = script(vec![missing()], vec![]);
        assert!(
            matches!(run(&cfn, &exists).await.0, Err(SetupError::TableExists { table }) if table == "t")
        );
        let cfn = script(vec![stack("UPDATE_COMPLETE", false)], vec![]);
        assert!(matches!(
            run(&cfn, &request()).await.0,
            Err(SetupError::NotOurs { .. })
        ));
        let cfn = script(vec![stack("UPDATE_IN_PROGRESS", true)], vec![]);
        assert!(matches!(
            run(&cfn, &request()).await.0,
            Err(SetupError::Busy { .. })
        ));
        let cfn = script(vec![stack("ROLLBACK_COMPLETE", true)], vec![]);
        let refused = run(&cfn, &request()).await.0.unwrap_err();
        assert!(
            refused.to_string().contains("delete the stack"),
            "{refused}"
        );
        // Nothing was created in any of these.
        assert!(!cfn
            .calls
            .lock()
            .unwrap()
            .iter()
            .any(|c| c.starts_with("CreateChangeSet")));
    }

    #[tokio::test]
    async fn a_replacing_change_is_not_executed_unless_allowed() {
        let replacing = change_set("CREATE_COMPLETE", "AVAILABLE", &[("Modify", "True")]);
        let cfn = script(
            vec![stack("UPDATE_COMPLETE", true)],
            vec![replacing.clone()],
        );
        let refused = run(&cfn, &request()).await.0.unwrap_err();
        assert!(
            matches!(refused, SetupError::Destructive { .. }),
            "{refused}"
        );
        let calls = cfn.calls.lock().unwrap().clone();
        assert!(
            calls.contains(&"DeleteChangeSet".to_owned())
                && !calls.contains(&"ExecuteChangeSet".to_owned()),
            "{calls:?}"
        );
        let allowed = SetupRequest {
            allow_replacement: true,
            ..request()
        };
        let cfn = script(
            vec![
                stack("UPDATE_COMPLETE", true),
                stack("UPDATE_IN_PROGRESS", true),
                stack("UPDATE_COMPLETE", true),
            ],
            vec![replacing],
        );
        assert_eq!(
            run(&cfn, &allowed).await.0.unwrap().action,
            SetupAction::Updated
        );
    }

    #[tokio::test]
    async fn an_end_is_not_taken_from_a_read_made_before_the_execution_showed() {
        // The first reads after the execution still show the last update's UPDATE_COMPLETE; the
        // change set is not executed yet: the set-up waits, then sees the rollback.
        let mut cfn = Script {
            stacks: Mutex::new(
                vec![
                    stack("UPDATE_COMPLETE", true),
                    stack("UPDATE_COMPLETE", true),
                    stack("UPDATE_ROLLBACK_IN_PROGRESS", true),
                    stack("UPDATE_ROLLBACK_COMPLETE", true),
                ]
                .into(),
            ),
            change_sets: Mutex::new(
                vec![
                    change_set("CREATE_COMPLETE", "AVAILABLE", &[("Modify", "False")]),
                    change_set("CREATE_COMPLETE", "EXECUTE_IN_PROGRESS", &[]),
                ]
                .into(),
            ),
            ..Script::default()
        };
        cfn.events = vec![StackEvent {
            logical_id: "StateTable".to_owned(),
            resource_type: "AWS::DynamoDB::Table".to_owned(),
            status: ResourceStatus::UpdateFailed,
            reason: Some("Table already exists: t".to_owned()),
            timestamp: Millis(1_000_500),
            token: None,
        }];
        let failed = run(&cfn, &request()).await.0.unwrap_err();
        assert!(
            matches!(&failed, SetupError::Failed { status, cause, .. } if status == "UPDATE_ROLLBACK_COMPLETE" && cause.contains("Table already exists")),
            "{failed}"
        );
    }

    #[tokio::test]
    async fn a_change_set_that_is_never_computed_times_out_with_its_last_status() {
        let cfn = script(
            vec![stack("UPDATE_COMPLETE", true)],
            vec![change_set("CREATE_IN_PROGRESS", "UNAVAILABLE", &[])],
        );
        let timed_out = run(&cfn, &request()).await.0.unwrap_err();
        assert!(
            matches!(&timed_out, SetupError::TimedOut { last, waited_secs: 120, .. } if last == "CREATE_IN_PROGRESS"),
            "{timed_out}"
        );
    }

    #[tokio::test]
    async fn a_template_that_changes_nothing_is_up_to_date_and_its_change_set_deleted() {
        let mut empty = change_set("FAILED", "UNAVAILABLE", &[]);
        empty.status_reason = Some("The submitted information didn't contain changes. Submit different information to create a change set.".to_owned());
        let cfn = script(vec![stack("UPDATE_COMPLETE", true)], vec![empty]);
        assert_eq!(
            run(&cfn, &request()).await.0.unwrap().action,
            SetupAction::UpToDate
        );
        assert!(cfn
            .calls
            .lock()
            .unwrap()
            .contains(&"DeleteChangeSet".to_owned()));
    }

    #[test]
    fn the_template_declares_the_table_and_its_name() {
        assert!(TEMPLATE.contains("AWS::DynamoDB::Table"));
        assert!(TEMPLATE.contains(TABLE_PARAMETER));
        for setting in [
            "BillingMode: PAY_PER_REQUEST",
            "PointInTimeRecoveryEnabled: true",
            "DeletionProtectionEnabled: true",
            "SSEEnabled: true",
            "DeletionPolicy: Retain",
        ] {
            assert!(TEMPLATE.contains(setting), "{setting}");
        }
    }

    #[test]
    fn the_template_declares_the_events_path_behind_its_switch() {
        for part in [
            EVENTS_PARAMETER,
            PREFIX_PARAMETER,
            EVENTS_QUEUE_OUTPUT,
            "EventsOn: !Equals [!Ref Events, \"on\"]",
            "Type: AWS::SQS::Queue",
            "Type: AWS::SQS::QueuePolicy",
            "Type: AWS::Events::Rule",
            "deadLetterTargetArn: !GetAtt EventsDeadLetterQueue.Arn",
            "source: [aws.ssm]",
            "detail-type: [Parameter Store Change]",
            "- prefix: !Sub \"${ParameterPrefix}/\"",
            "source: [aws.ecs]",
            "Service: events.amazonaws.com",
            "aws:SourceArn:",
        ] {
            assert!(TEMPLATE.contains(part), "{part}");
        }
        // Every resource of the path exists only with the switch on.
        let resources = TEMPLATE
            .split("\nResources:\n")
            .nth(1)
            .and_then(|rest| rest.split("\nOutputs:\n").next())
            .unwrap();
        let mut blocks: Vec<String> = Vec::new();
        for line in resources.lines() {
            let header =
                line.starts_with("  ") && !line.starts_with("   ") && !line.starts_with("  #");
            match blocks.last_mut() {
                Some(block) if !header => {
                    block.push_str(line);
                    block.push('\n');
                }
                _ => blocks.push(format!("{line}\n")),
            }
        }
        let events: Vec<&String> = blocks
            .iter()
            .filter(|b| b.contains("Type: AWS::SQS") || b.contains("Type: AWS::Events"))
            .collect();
        assert_eq!(events.len(), 5, "{blocks:?}");
        for block in events {
            assert!(block.contains("Condition: EventsOn"), "{block}");
        }
    }

    #[test]
    fn an_empty_update_is_read_from_either_wording() {
        assert!(no_changes(
            "The submitted information didn't contain changes. Submit different information to create a change set."
        ));
        assert!(no_changes(
            "ValidationError (HTTP 400): No updates are to be performed."
        ));
        assert!(!no_changes("Template format error"));
    }
}
