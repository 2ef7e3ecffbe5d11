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
            "  {} {} ({})",
            change.action, change.logical_id, change.resource_type
        ));
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
        StackProgress::Complete | StackProgress::RolledBack => Ok(ChangeSetKind::Update),
        StackProgress::InProgress => Err(SetupError::Busy {
            stack: stack.to_owned(),
            status: status.to_string(),
        }),
        StackProgress::NeedsHuman => Err(SetupError::NeedsHuman {
            stack: stack.to_owned(),
            status: status.to_string(),
            what: match status {
                StackStatus::RollbackComplete => "its creation failed and was rolled back; delete the stack (the table, if made, is retained) and run setup again",
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
    loop {
        let current = cfn.describe_stack(stack).await?;
        if last.as_ref() != Some(&current.status) {
            progress(format!("stack {stack}: {}", current.status));
            last = Some(current.status.clone());
        }
        match current.status.progress() {
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
